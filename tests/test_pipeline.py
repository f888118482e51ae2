"""The recycling pipeline end to end on a tiny spec: every strategy's row, resumption, imports, dry runs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_NET

from domainbed_recycle.collect import load_records
from domainbed_recycle.errors import UserError
from domainbed_recycle.recycle.imports import import_finetuning
from domainbed_recycle.recycle.pipeline import Pipeline
from domainbed_recycle.recycle.spec import load_recycle_spec, spec_from_dict
from domainbed_recycle.rundir import RunDir

TINY = {
    "launcher": "inprocess",
    "strategies": ["ERM", "LP-FT", "MovingAverage", "Soup", "Ensemble", "InterTraining", "Fusing", "Ratatouille"],
    "foundation": {"dataset": "Textures", "steps": 30, "checkpoint_freq": 30, "hparams": TINY_NET},
    "auxiliary": {"datasets": ["Glyphs", "RotatedFashion"], "n_runs": 1, "steps": 10, "checkpoint_freq": 10,
                  "hparams": TINY_NET, "hparams_profile": "small_finetune"},
    "probe": {"steps": 10, "checkpoint_freq": 10, "hparams": TINY_NET},
    "target": {"datasets": ["RotatedDigits"], "test_envs": [5], "n_trials": 1, "n_runs": 3, "n_runs_small": 1,
               "steps": 10, "checkpoint_freq": 10, "hparams": TINY_NET | {"ma_start_step": 4},
               "hparams_profile": "small_finetune", "lp_steps": 3},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("recycle")
    spec = spec_from_dict(TINY | {"output_dir": str(out)})
    pipeline = Pipeline(spec)
    table = pipeline.run()
    return pipeline, table


@pytest.mark.slow
def test_every_strategy_variant_gets_a_number(finished):
    pipeline, table = finished
    rows = {line.split()[0]: line for line in table.splitlines() if line and line.split()[0] in pipeline.variants()}
    assert set(rows) == set(pipeline.variants())
    for variant, line in rows.items():
        cell = line.split()[1:4]
        assert cell[1] == "+/-", (variant, line)  # "mean +/- se": a number, not X
        assert 0.0 <= float(cell[0]) <= 100.0


@pytest.mark.slow
def test_shared_runs_train_once_and_a_rerun_trains_nothing(finished):
    pipeline, _ = finished
    target_runs = sorted((pipeline.out / "target").glob("*/done"))
    # ERM 3 + LP-FT pool 3 + MA 1 + aux pool: 2 new (its phi0 run is LP-FT's) + Fusing 3 (M, as the pools)
    assert len(target_runs) == 12
    stamps = {p: p.stat().st_mtime_ns for p in (pipeline.out / "target").glob(f"*/{RunDir.RESULTS}")}
    stamps[pipeline.out / "analysis.json"] = (pipeline.out / "analysis.json").stat().st_mtime_ns
    table_again = pipeline.run()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run trained, no analysis redone
    assert "Ratatouille-greedy" in table_again


@pytest.mark.slow
def test_combined_records_are_readable_by_the_collector_cli(finished):
    pipeline, _ = finished
    result = subprocess.run([sys.executable, "-m", "domainbed_recycle.cli", "collect", "--input_dir",
                             str(pipeline.out / "table"), "--selection", "iid", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Soup-greedy" in result.stdout and "Ensemble" in result.stdout
    json.loads(result.stdout)


@pytest.mark.slow
def test_import_checks_architecture_and_refuses_code(finished, tmp_path):
    pipeline, _ = finished
    foundation = pipeline.foundation_checkpoint()
    wrong = {"featurizer.layers.0.weight": torch.zeros(3, 3, 3, 3)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="does not match the architecture"):
        import_finetuning(tmp_path / "wrong.pt", foundation, tmp_path / "pool")

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model_dict": Evil()}))
    with pytest.raises(UserError, match="refused"):
        import_finetuning(tmp_path / "evil.pkl", foundation, tmp_path / "pool")
    assert not marker.exists()

    # A DomainBed-style model.pkl of the right architecture is accepted (featurizer only kept).
    from domainbed_recycle.checkpoints import load_checkpoint

    state, _ = load_checkpoint(foundation)
    torch.save({"model_dict": state, "args": {}}, tmp_path / "model.pkl")
    target = import_finetuning(tmp_path / "model.pkl", foundation, tmp_path / "pool", name="from_domainbed")
    imported, meta = load_checkpoint(target)
    assert meta["origin"] == "domainbed" and all(k.startswith("featurizer.") for k in imported)


def test_builtin_and_paper_specs_validate_and_dry_run(tmp_path):
    root = Path(__file__).resolve().parent.parent
    for name in sorted(p.name for p in (root / "sweeps").glob("recycle_*.toml")):
        spec = load_recycle_spec(root / "sweeps" / name, {"output_dir": str(tmp_path / name)})
        listing, _ = Pipeline(spec).dry_run()
        assert "stage 4 target runs" in listing


def test_bad_spec_keys_and_names_fail_clearly():
    with pytest.raises(UserError, match=r"\[target\]: unknown key\(s\) n_run"):
        spec_from_dict(TINY | {"output_dir": "x", "target": TINY["target"] | {"n_run": 3}})
    with pytest.raises(UserError, match="unknown strategy 'Soupp'"):
        spec_from_dict(TINY | {"output_dir": "x", "strategies": ["Soupp"]})
    with pytest.raises(UserError, match="unknown dataset"):
        spec_from_dict(TINY | {"output_dir": "x", "target": TINY["target"] | {"datasets": ["Nope"]}})


def test_spec_hparams_follow_the_one_override_rule():
    # ma_start_step is MovingAverage's: used through the MovingAverage strategy, a note (not an error) once
    # that strategy is removed from the spec; a name no algorithm declares is an error.
    assert not spec_from_dict(TINY | {"output_dir": "x"}).notes
    spec = spec_from_dict(TINY | {"output_dir": "x", "strategies": ["ERM", "Soup"]})
    assert len(spec.notes) == 1 and "ma_start_step: no target run uses them" in spec.notes[0]
    with pytest.raises(UserError, match=r"\[target\] hparams: unknown hyper-parameter\(s\) ma_start_stepp for "):
        spec_from_dict(TINY | {"output_dir": "x", "target": TINY["target"] | {"hparams": {"ma_start_stepp": 1}}})
    with pytest.raises(UserError, match=r"\[target\] hparams: hyper-parameter 'batch_size' must be an integer >= 1"):
        spec_from_dict(TINY | {"output_dir": "x", "target": TINY["target"] | {"hparams": {"batch_size": 0}}})
    with pytest.raises(UserError, match=r"\[probe\] hparams: unknown hyper-parameter\(s\) mmd_gamma for ERM"):
        spec_from_dict(TINY | {"output_dir": "x", "probe": TINY["probe"] | {"hparams": {"mmd_gamma": 1}}})
    with pytest.raises(UserError, match=r"\[foundation\] hparams: hyper-parameter 'lr' must be a finite number > 0"):
        spec_from_dict(TINY | {"output_dir": "x", "foundation": TINY["foundation"] | {"hparams": {"lr": -1}}})
    with pytest.raises(UserError, match=r"\[auxiliary\] hparams: hyper-parameter 'dropout' must be"):
        spec_from_dict(TINY | {"output_dir": "x", "auxiliary": TINY["auxiliary"] | {"hparams": {"dropout": 2.0}}})


def test_target_objective_is_a_spec_key(tmp_path):
    spec = spec_from_dict(TINY | {"output_dir": str(tmp_path), "target": TINY["target"] | {"algorithm": "CORAL"}})
    listing, _ = Pipeline(spec).dry_run()
    target_lines = [line for line in listing.splitlines() if line.startswith("  RotatedDigits")]
    assert target_lines and all(" CORAL " in line or " MovingAverage " in line for line in target_lines)
    assert any(" CORAL " in line for line in target_lines)


def _combine(pipeline, cells):
    """Stage 5 as the pipeline runs it (in this process); returns the number of combine jobs run."""
    from domainbed_recycle.recycle import combine
    from domainbed_recycle.sweep import launch

    jobs = combine.combine_jobs(cells, pipeline.spec, pipeline.out)
    if jobs:
        assert launch(jobs, launcher="inprocess", skip_done=False, progress=False).ok
    return len(jobs)


@pytest.mark.slow
def test_a_changed_plan_is_recombined_and_the_old_answer_removed(finished):
    """Issue: a marker keyed only by (cell, strategy) kept showing the old runs' table for a new spec."""
    pipeline, _ = finished
    plan = pipeline.plan()
    assert _combine(pipeline, plan.cells) == 0  # same plan: nothing to redo
    cell = next(iter(plan.cells))
    fewer = {c: dict(per) for c, per in plan.cells.items()}
    fewer[cell]["LP-FT"] = {name: runs[:1] for name, runs in plan.cells[cell]["LP-FT"].items()}
    before = {p.parent.name for p in (pipeline.out / "table").glob("*/done")}
    assert _combine(pipeline, fewer) == 1
    after = {p.parent.name for p in (pipeline.out / "table").glob("*/done")}
    assert len(before - after) == 2  # the two LP-FT runs no longer planned left the table
    records, _ = load_records(pipeline.out / "table")
    assert len(set(records[records["algorithm"] == "LP-FT"]["run_dir"])) == 1
    assert _combine(pipeline, plan.cells) == 1
    assert {p.parent.name for p in (pipeline.out / "table").glob("*/done")} == before  # and back


@pytest.mark.slow
def test_combine_runs_on_the_pool_in_parallel_workers_resumes_and_gives_the_same_table(finished, capsys):
    """Issue 10: the combine stage is one job per (cell, strategy) on the spec's launcher."""
    import shutil

    from domainbed_recycle.recycle import combine

    pipeline, table = finished
    for folder in ("combined", "table", "combine_jobs"):
        shutil.rmtree(pipeline.out / folder)
    pooled = Pipeline(spec_from_dict(TINY | {"output_dir": str(pipeline.out), "launcher": "pool", "n_workers": 2}))
    assert pooled.run() == table  # same numbers from worker processes as from this process
    said = capsys.readouterr().err
    assert "stage 5/5 combine: 1 job(s)" in said  # one cell
    ran = [line for line in said.splitlines() if "pool:" in line and " 0 ran" not in line]
    assert len(ran) == 1 and "pool: 1 jobs" in ran[0]  # only the combine stage ran: nothing retrained
    logs = sorted((pipeline.out / "combine_jobs").glob("*/out.txt"))
    assert len(logs) == 1 and RunDir(logs[0].parent).is_done
    # a combine killed after some strategies (their markers written) redoes only the others
    markers = sorted((pipeline.out / "combined").glob("*_trial0_*.json"))  # not a pooled variant's
    assert len(markers) == len(pipeline.strategies)
    stamps = {m: m.stat().st_mtime_ns for m in markers[1:]}
    markers[0].unlink()
    (job,) = combine.combine_jobs(pooled.plan().cells, pooled.spec, pooled.out)
    assert len(job.args["strategies"]) == 1
    assert pooled.run() == table
    assert "stage 5/5 combine: 1 job(s)" in capsys.readouterr().err
    assert markers[0].is_file() and {m: m.stat().st_mtime_ns for m in stamps} == stamps


def test_a_task_job_runs_only_this_packages_functions(tmp_path):
    from domainbed_recycle.sweep import run_job
    from domainbed_recycle.sweep.jobs import TASK_KEY

    outcome = run_job({TASK_KEY: "os:system", "output_dir": str(tmp_path / "job")}, echo=False)
    assert outcome.status == "failed" and "expected 'domainbed_recycle.<module>:<function>'" in outcome.error
    outcome = run_job({TASK_KEY: "domainbed_recycle.recycle.combine:no_such", "output_dir": str(tmp_path / "j2")},
                      echo=False)
    assert outcome.status == "failed" and "not found" in outcome.error


@pytest.mark.slow
def test_a_run_the_registry_now_resolves_differently_stops_the_pipeline(finished):
    pipeline, table = finished
    run = RunDir(next((pipeline.out / "target").glob("*/done")).parent)
    original = run.args_file.read_text()
    static = json.loads(original)
    static["hparams"]["lr"] *= 2  # as a registry with another default learning rate would have left it
    run.args_file.write_text(json.dumps(static))
    try:
        with pytest.raises(UserError, match=r"stage 4/5 target runs: 1 finished run\(s\) used other hyper-param"):
            pipeline.run()
    finally:
        run.args_file.write_text(original)
    assert pipeline.run() == table


def test_pooled_rows_are_one_model_evaluated_once_on_the_whole_test_domain(finished):
    """The † rows follow the reference's `--trial_seed -1` inference: the average of every trial's runs,
    one record per test domain, its accuracy measured on the whole domain (in + out splits)."""
    from domainbed_recycle.collect.records import load_records
    from domainbed_recycle.datasets import get_dataset
    from domainbed_recycle.datasets.splits import make_splits

    pipeline, _ = finished
    records, _ = load_records(pipeline.out / "table")
    pooled = records[records["algorithm"] == "Soup-uniform†"]
    assert len(pooled) == 1 and pooled.iloc[0]["trial_seed"] == -1
    soup = records[records["algorithm"] == "Soup-uniform"].iloc[0]  # one trial: the same runs averaged
    dataset = get_dataset("RotatedDigits", None, [5], {"data_augmentation": False})
    ins, outs = make_splits(dataset, 0.2, 0)
    whole = (len(ins[5]) * soup["env5_in_acc"] + len(outs[5]) * soup["env5_out_acc"]) / len(dataset[5])
    assert pooled.iloc[0]["env5_in_acc"] == pytest.approx(whole, abs=1.5 / len(dataset[5]))
    assert pooled.iloc[0]["env5_in_acc"] == pooled.iloc[0]["env5_out_acc"]


def test_the_reading_judges_every_claim_and_is_recorded_in_analysis_json(finished):
    pipeline, _ = finished
    text = pipeline.reading()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("- ")]
    assert len(lines) > 10
    assert all(any(f": {v} (" in line for v in ("supported", "contradicted", "inconclusive")) for line in lines)
    analysis = json.loads((pipeline.out / "analysis.json").read_text())["RotatedDigits"]
    assert len(analysis["claims"]) == len(lines)
    assert {run["pool"] for run in analysis["runs"]} == {"LP-FT pool", "auxiliary pool"}
    assert (pipeline.out / "plots" / "RotatedDigits_claims.png").is_file()
