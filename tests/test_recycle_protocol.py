"""The recycling protocol follows the reference code (facebookresearch/ModelRatatouille): each point
checked on the pure plan of a spec (nothing runs, no data is read)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from domainbed_recycle.hparams_registry import get_hparams
from domainbed_recycle.recycle import stages
from domainbed_recycle.recycle.pipeline import Pipeline
from domainbed_recycle.recycle.spec import load_recycle_spec, spec_from_dict
from domainbed_recycle.strategies.base import PHI0

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper's spec (real datasets, ResNet-50): 5 targets, each with the 4 others as auxiliaries."""
    out = tmp_path_factory.mktemp("paper")
    spec = load_recycle_spec(ROOT / "sweeps" / "recycle_paper.toml", {"output_dir": str(out)})
    pipeline = Pipeline(spec)
    return pipeline, pipeline.plan()


def _runs(plan, strategy):
    return {cell: [run for pool in per[strategy].values() for run in pool] for cell, per in plan.cells.items()}


def test_fused_inits_are_per_run_and_never_contain_the_target_dataset(paper):
    pipeline, plan = paper
    by_dataset: dict[str, set[Path]] = {}
    for cell, runs in _runs(plan, "Fusing").items():
        for run in runs:
            by_dataset.setdefault(cell.dataset, set()).add(Path(run.config["init_featurizer"]))
    assert len(by_dataset) == 5
    datasets = list(by_dataset)
    for i, a in enumerate(datasets):  # two target datasets never share a fused init
        for b in datasets[i + 1:]:
            assert not by_dataset[a] & by_dataset[b]
    fused = {init.path: init for init in plan.derived}
    for cell, runs in _runs(plan, "Fusing").items():
        for run in runs:
            init = fused[Path(run.config["init_featurizer"])]
            labels = [label for label, _ in init.sources]
            assert labels[0] == PHI0 and f"aux:{cell.dataset}" not in labels  # phi_0 in, own dataset out
            assert len(labels) == 5 and abs(sum(init.weights) - 1) < 1e-9
    # kappas are drawn per run: two runs of one cell get different mixtures
    cell = next(iter(plan.cells))
    inits = {fused[Path(r.config["init_featurizer"])].weights for r in _runs(plan, "Fusing")[cell]}
    assert len(inits) == pipeline.spec.target.n_runs  # Fusing has as many runs as the other pools


def test_auxiliary_pool_follows_the_reference_indexing(paper):
    pipeline, plan = paper
    n_aux_runs = pipeline.spec.auxiliary.n_runs
    aux_paths = {dataset: [str(job.run.last_checkpoint) for job in jobs]
                 for dataset, jobs in plan.auxiliary_jobs.items()}
    for cell, runs in _runs(plan, "Ratatouille").items():
        sources = [d for d in aux_paths if d != cell.dataset]  # sorted as in the spec
        for h, run in enumerate(runs):
            index = h % (len(sources) + 1)
            if index == 0:
                assert run.init_label == PHI0 and run.config["init_featurizer"] == str(plan.foundation)
                assert "lp_steps" not in run.config["hparams"]  # phi_0 runs start from their own probe
            else:
                dataset = sources[index - 1]
                assert run.init_label == f"aux:{dataset}"
                visit = h // (len(sources) + 1)  # the k-th visit of a source takes its run k mod n
                assert run.config["init_featurizer"] == aux_paths[dataset][visit % n_aux_runs]  # last featurizer
                assert run.config["hparams"]["lp_steps"] == pipeline.spec.target.lp_steps == 200


def test_auxiliary_tasks_are_lp_ft(paper):
    _, plan = paper
    for dataset, jobs in plan.auxiliary_jobs.items():
        probe = plan.auxiliary_probe_jobs[dataset]
        assert probe.args["linear_probe"] is True and probe.args["dataset"] == dataset
        assert [job.args["hparams_seed"] for job in jobs] == [0, 1, 2, 3]
        for job in jobs:
            assert job.args["init_classifier"] == str(probe.run.best_checkpoint)
            assert job.args["init_featurizer"] == str(plan.foundation)


def test_one_target_probe_per_dataset_and_test_domain_shared_by_trials(paper):
    pipeline, plan = paper
    n_cells = len(plan.cells)
    assert len(plan.probe_jobs) * pipeline.spec.target.n_trials == n_cells
    for cell, per in plan.cells.items():
        probe = str(plan.probe_jobs[(cell.dataset, cell.test_env)].run.best_checkpoint)
        for pools in per.values():
            for pool in pools.values():
                assert all(run.config["init_classifier"] in (probe, None) for run in pool)


def test_paper_spec_uses_the_reference_schedule(paper):
    _, plan = paper
    expected = {"PACS": (5001, 100), "VLCS": (5001, 50), "OfficeHome": (5001, 100),
                "TerraIncognita": (5001, 100), "DomainNet": (15001, 500)}
    for cell, per in plan.cells.items():
        for pools in per.values():
            for pool in pools.values():
                assert {(r.config["steps"], r.config["checkpoint_freq"]) for r in pool} == {expected[cell.dataset]}


def test_random_hparams_are_seeded_by_hparams_and_trial_seed():
    assert get_hparams("ERM", "resnet", 0, trial_seed=0) == get_hparams("ERM", "resnet", 0, trial_seed=2)
    draws = {tuple(sorted(get_hparams("ERM", "small_finetune", 3, trial_seed=t).items())) for t in range(4)}
    assert len(draws) > 1  # each trial draws its own hyper-parameters, as DomainBed's train.py does


def test_intertraining_selects_over_the_whole_auxiliary_pool_and_pooled_rows(tmp_path):
    spec = spec_from_dict({
        "output_dir": str(tmp_path), "strategies": ["Soup", "InterTraining", "Ratatouille"],
        "auxiliary": {"datasets": ["Glyphs", "RotatedFashion"], "n_runs": 2},
        "target": {"datasets": ["RotatedDigits"], "test_envs": [5], "n_runs": 6, "n_trials": 2},
    })
    pipeline = Pipeline(spec)
    plan = pipeline.plan()
    for per in plan.cells.values():
        assert per["InterTraining"] == per["Ratatouille"]
        assert {run.init_label for pool in per["InterTraining"].values() for run in pool} == {
            PHI0, "aux:Glyphs", "aux:RotatedFashion"}
    variants = pipeline.variants()
    assert variants.index("Soup-uniform†") == variants.index("Soup-uniform") + 1
    assert variants.index("Ratatouille-uniform†") == variants.index("Ratatouille-uniform") + 1
    assert stages.describe(plan, variants).count("stage ") == 5


@pytest.mark.parametrize("bad, message", [
    ({"output_dir": 42}, "'output_dir' must be a string, got 42"),
    ({"strategies": "ERM"}, "'strategies' must be a non-empty list of strings"),
    ({"target": {"datasets": ["RotatedDigits"], "n_runs": "three"}}, "'n_runs' must be an integer"),
    ({"target": {"datasets": ["RotatedDigits"], "steps": "many"}},
     "'steps' must be an integer >= 1 and <= 10,000,000 (set DRECYCLE_MAX_STEPS to raise this limit) or a table"),
    ({"target": {"datasets": ["RotatedDigits"], "test_envs": 0}}, "'test_envs' must be a non-empty list of integers"),
])
def test_spec_fields_of_the_wrong_type_are_one_clear_error(bad, message):
    from domainbed_recycle.errors import UserError

    base = {"output_dir": "x", "strategies": ["ERM"], "target": {"datasets": ["RotatedDigits"]}}
    with pytest.raises(UserError, match=re.escape(message)):
        spec_from_dict(base | bad)


def test_target_settings_carry_every_run_setting_of_the_spec_declared_once(tmp_path):
    """The [target] run settings are declared once (`TargetRunSettings`): the spec's table and the strategies'
    settings both extend it, and every value given in a spec reaches the strategies."""
    from dataclasses import fields

    from domainbed_recycle.recycle.spec import TargetSpec
    from domainbed_recycle.strategies.base import TargetRunSettings, TargetSettings

    shared = [f.name for f in fields(TargetRunSettings)]
    assert "lp_steps" in shared and "holdout_fraction" in shared and "checkpoint_freq" in shared
    for cls in (TargetSpec, TargetSettings):  # none re-declared: same default everywhere
        assert {f.name: f.default for f in fields(cls) if f.name in shared} == \
            {f.name: f.default for f in fields(TargetRunSettings)}
    spec = load_recycle_spec(ROOT / "sweeps" / "recycle_paper.toml", {"output_dir": str(tmp_path)})
    given = {"n_runs": 5, "n_runs_small": 3, "steps": 7, "checkpoint_freq": 7, "holdout_fraction": 0.3,
             "hparams": {"lr": 0.001}, "fusing_range": 2.0, "lp_steps": 11, "hparams_profile": "resnet"}
    assert set(given) | {"algorithm"} == set(shared)
    for key, value in given.items():
        setattr(spec.target, key, value)
    settings = stages.target_settings(spec)
    assert {name: getattr(settings, name) for name in given} == given
    assert settings.algorithm == spec.target.algorithm and settings.data_dir == spec.data_dir
    assert settings.hparams is not spec.target.hparams  # a copy: a strategy never edits the spec
