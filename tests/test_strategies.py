"""The strategy contract, checked on every registered strategy (combining is exercised end to end in
test_pipeline.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from domainbed_recycle.strategies import STRATEGIES, Cell, Inits, TargetSettings
from domainbed_recycle.strategies.base import AuxSource
from domainbed_recycle.sweep import jobs_from_configs

CELL = Cell("RotatedDigits", 5, 0)
SETTINGS = TargetSettings(n_runs=3, n_runs_small=2, steps=5, checkpoint_freq=5)
INITS = Inits(foundation="f.safetensors", probe="p.safetensors",
              auxiliary=(AuxSource("aux:A", ("a0.safetensors", "a1.safetensors")),
                         AuxSource("aux:B", ("b.safetensors",))),
              work_dir=Path("inits"))


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_plans_valid_jobs_purely(name):
    strategy = STRATEGIES.get(name)()
    settings = copy.deepcopy(SETTINGS)
    pools = strategy.pools(CELL, INITS, settings)
    assert pools and all(isinstance(pool, list) and pool for pool in pools.values())
    for pool in pools.values():
        jobs = jobs_from_configs(pool, "target")  # every config is a valid TrainConfig
        assert {tuple(job.args["test_envs"]) for job in jobs} == {(CELL.test_env,)}
    assert strategy.pools(CELL, INITS, settings) == pools  # planning is deterministic
    assert settings == SETTINGS  # and mutates nothing
    for init in strategy.derived_inits(CELL, INITS, settings):
        assert Path(init.path).parent == INITS.work_dir and not Path(init.path).exists()


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_declared_metadata_is_consistent(name):
    strategy = STRATEGIES.get(name)
    assert strategy.name == name and strategy.variants
    assert set(strategy.pooled.values()) <= set(strategy.variants)
    if strategy.analysis_pool is not None:
        pool, label = strategy.analysis_pool
        assert pool and label
    if not strategy.needs_auxiliary:  # it must plan without any auxiliary fine-tuning
        bare = Inits(foundation="f.safetensors", probe="p.safetensors")
        labels = {c["init_label"] for pool in strategy().pools(CELL, bare, SETTINGS).values() for c in pool}
        assert not any(label.startswith("aux:") for label in labels)


def test_variant_names_are_unique_across_strategies():
    names = [v for n in STRATEGIES.names() for s in [STRATEGIES.get(n)] for v in (*s.variants, *s.pooled)]
    assert len(names) == len(set(names))


def test_auxiliary_strategies_start_runs_from_auxiliary_featurizers():
    for name in STRATEGIES.names():
        strategy = STRATEGIES.get(name)
        if not strategy.needs_auxiliary:
            continue
        configs = [c for pool in strategy().pools(CELL, INITS, SETTINGS).values() for c in pool]
        starts = {c["init_featurizer"] for c in configs}
        assert starts - {INITS.foundation}, name  # at least one run starts elsewhere than phi_0


def test_a_run_with_non_finite_weights_is_refused_by_name(tmp_path):
    import torch
    from safetensors.torch import save_file

    from domainbed_recycle.errors import UserError
    from domainbed_recycle.rundir import RunDir
    from domainbed_recycle.strategies.base import RunRef

    run = RunRef({}, RunDir(tmp_path / "run"))
    run.run.create()  # written by safetensors itself: `save_checkpoint` refuses non-finite weights
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(run.checkpoint))
    with pytest.raises(UserError, match="run/model_best.safetensors: its weights are not finite"):
        run.weights()


@pytest.mark.parametrize(("n", "k"), [(2, 3), (4, 4), (3, 2), (1, 3)])
def test_the_auxiliary_pool_uses_every_auxiliary_run_whatever_n_and_k(n, k):
    """M = (K+1)·n target runs start from every run of every task once (the reference's h mod n would
    use only n / gcd(n, K+1) of each task's runs: one of two with n = 2, K+1 = 4)."""
    sources = tuple(AuxSource(f"aux:{t}", tuple(f"{t}{r}.safetensors" for r in range(n))) for t in range(k))
    inits = Inits(foundation="f.safetensors", probe="p.safetensors", auxiliary=sources)
    starts = [inits.featurizer_for(h) for h in range((k + 1) * n)]
    used = [path for label, path in starts if label != "phi0"]
    assert sorted(used) == sorted(p for s in sources for p in s.checkpoints)
    assert [label for label, _ in starts].count("phi0") == n


def test_with_coprime_n_and_k_both_rules_use_each_run_equally_often():
    """n = 4, K+1 = 5 (the reference's sizes): over 20 runs, ⌊h/5⌋ mod 4 and the reference's h mod 4 use
    each run of each task exactly once, in another order."""
    sources = tuple(AuxSource(f"aux:{t}", tuple(f"{t}{r}" for r in range(4))) for t in range(4))
    inits = Inits(foundation="f", probe="p", auxiliary=sources)
    ours = sorted(inits.featurizer_for(h) for h in range(20) if h % 5)
    reference = sorted((sources[h % 5 - 1].label, sources[h % 5 - 1].pick(h)) for h in range(20) if h % 5)
    assert ours == reference
