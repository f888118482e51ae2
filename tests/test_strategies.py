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
