"""Speed switches (precision, channels_last, compile, cudnn_benchmark, loader settings) on CPU: each runs,
is recorded, leaves ids and records of default runs unchanged, and a switch this machine cannot honour
is refused in one line. Also the keyed loader streams, one-pass evaluation, GPU assignment of the
launchers, packed Slurm tasks (run here as the task would run them) and the dry run's cost estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domainbed_recycle import performance
from domainbed_recycle.datasets import get_dataset
from domainbed_recycle.datasets.loading import LoaderSettings, StepBatches, StepStream
from domainbed_recycle.datasets.splits import make_splits
from domainbed_recycle.errors import UserError
from domainbed_recycle.evaluation import Inference, SplitEvaluator, accuracy
from domainbed_recycle.rundir import RunDir
from domainbed_recycle.sweep import Job, job_id_of, jobs_from_configs, make_jobs
from domainbed_recycle.sweep import cost as sweep_cost
from domainbed_recycle.sweep.jobs import TASK_KEY
from domainbed_recycle.sweep.launchers import PackedJobs, gpu_of_worker, visible_gpus, worker_environment
from domainbed_recycle.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"cnn_width": 4}


def _train(tmp_path: Path, name: str, **switches) -> list[dict]:
    out = tmp_path / name
    train(TrainConfig(dataset="ColoredDigits", output_dir=str(out), test_envs=[0], steps=4, checkpoint_freq=2,
                      hparams=TINY, progress=False, threads=1, skip_model_save=True, **switches))
    return RunDir(out).read_records()


def _numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith("env") or k in ("loss", "step")} for r in records]


# ------------------------------------------------------------------------------ defaults and ids


def test_a_switch_at_its_default_is_left_out_of_job_ids_and_stored_args():
    args = {"dataset": "ColoredDigits", "test_envs": [0], "seed": 3}
    spelled = args | {"precision": "fp32", "channels_last": False, "compile": False, "cudnn_benchmark": False,
                      "loader_workers": None, "pin_memory": None}
    assert job_id_of(spelled) == job_id_of(args)
    assert job_id_of(args | {"precision": "bf16"}) != job_id_of(args)
    assert job_id_of(args | {"channels_last": True}) != job_id_of(args)
    # loader settings say how batches arrive, not what is computed: kept for the run, not in its id
    job = Job(args | {"loader_workers": 4, "pin_memory": False}, "sweep")
    assert job.job_id == job_id_of(args) and job.args["loader_workers"] == 4 and job.args["pin_memory"] is False
    stored = TrainConfig(dataset="ColoredDigits", output_dir="x").to_args()
    assert not set(stored) & set(performance.DEFAULTS)
    assert TrainConfig(dataset="ColoredDigits", output_dir="x", precision="bf16").to_args()["precision"] == "bf16"


def test_switch_tables_are_checked_in_one_line():
    assert performance.problems({"precision": "bf16", "channels_last": True, "loader_workers": 0}) == []
    found = performance.problems({"precision": "fp8", "compile": "yes", "prefetch_factor": 0, "warp": 1})
    assert len(found) == 4 and "unknown switch(es) warp" in found[0]
    with pytest.raises(UserError, match=r"^s \[performance\]: precision must be one of fp32, bf16, fp16"):
        performance.check({"precision": "half"}, "s [performance]")
    assert performance.describe({"precision": "bf16", "channels_last": True, "compile": True}) == \
        "bf16+channels_last+compile"


# ------------------------------------------------------------------------------------ switches run


def test_each_switch_runs_on_cpu_and_is_recorded(tmp_path):
    reference = _train(tmp_path, "fp32")
    assert "precision" not in reference[-1]["args"]
    for switches in ({"precision": "bf16"}, {"channels_last": True}, {"loader_workers": 1}):
        records = _train(tmp_path, "_".join(switches), **switches)
        assert {k: records[-1]["args"][k] for k in switches} == switches
        assert all(np.isfinite(r["loss"]) for r in records)
        stored = json.loads((tmp_path / "_".join(switches) / "args.json").read_text())["args"]
        assert {k: stored[k] for k in switches} == switches
    # numerics: channels_last is another memory layout of the same fp32 arithmetic (close, maybe not
    # bit-equal); the built-ins' batches never go through loader workers, so 1 worker changes nothing
    layout = _train(tmp_path, "layout2", channels_last=True)
    assert np.allclose([r["loss"] for r in layout], [r["loss"] for r in reference], atol=1e-4)
    assert _numbers(_train(tmp_path, "workers2", loader_workers=1)) == _numbers(reference)


def test_bf16_autocast_really_runs_the_forward_pass_in_bf16(tmp_path):
    from domainbed_recycle.algorithms import get_algorithm_class
    from domainbed_recycle.networks import architecture

    arch = architecture((3, 28, 28), 2, {"arch": "small_cnn", "cnn_width": 4})
    algorithm = get_algorithm_class("ERM")(arch, 2, {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 4})
    algorithm.set_precision("cpu", "bf16")
    seen = []
    algorithm.network.classifier.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    batch = [(torch.rand(4, 3, 28, 28), torch.randint(2, (4,))) for _ in range(2)]
    before = algorithm.network.classifier.weight.detach().clone()
    out = algorithm.train_step(batch)
    assert seen == [torch.bfloat16] and np.isfinite(out["loss"])
    assert algorithm.network.classifier.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(before, algorithm.network.classifier.weight)


@pytest.mark.slow
def test_compile_runs_on_cpu_with_a_compiler(tmp_path):
    from domainbed_recycle.training import compile_unavailable

    if compile_unavailable("cpu"):
        pytest.skip(compile_unavailable("cpu"))
    records = _train(tmp_path, "compiled", compile=True)
    assert records[-1]["args"]["compile"] is True and all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.parametrize(("switches", "message"), [
    ({"precision": "fp16"}, "precision fp16 needs a CUDA GPU"),
    ({"cudnn_benchmark": True}, "cudnn_benchmark needs a CUDA GPU"),
    ({"pin_memory": True}, "pin_memory needs a CUDA GPU"),
])
def test_a_switch_this_cpu_cannot_honour_is_one_line_and_writes_nothing(tmp_path, switches, message):
    if torch.cuda.is_available():
        pytest.skip("a GPU honours these switches")
    out = tmp_path / "run"
    with pytest.raises(UserError, match=message) as error:
        train(TrainConfig(dataset="ColoredDigits", output_dir=str(out), steps=1, progress=False, **switches))
    assert "\n" not in str(error.value) and not out.exists()


def test_compile_without_a_compiler_is_one_line_from_the_cli(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU compile needs triton, not a C++ compiler")
    env = os.environ | {"CXX": "no-such-compiler-here", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "domainbed_recycle.cli", "train", "--dataset", "ColoredDigits",
                             "--steps", "1", "--compile", "--output_dir", str(tmp_path / "run")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "drecycle train: error: compile on CPU needs a C++ compiler, and no-such-compiler-here is not found "
        "(install g++, or set CXX)"]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- keyed loader streams


def _write_tree(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for d in range(3):
        for c in range(2):
            folder = root / f"d{d}" / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 80, (20, 24, 3)) + 100 * c + 20 * d
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("cache", ["yes", "no"])
def test_keyed_batches_do_not_depend_on_the_workers_or_on_resuming(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DRECYCLE_CACHE", str(tmp_path / "cache"))
    _write_tree(tmp_path / "tree")
    dataset = get_dataset(f"folder:{tmp_path / 'tree'}?resolution=16,cache={cache}", None, [0], {})
    in_splits, _ = make_splits(dataset, 0.2, 0)
    batches = StepBatches(in_splits[1:], 5, [11, 12])

    def draw(settings: LoaderSettings, start: int, n: int) -> list:
        stream = StepStream(batches, settings)
        stream.load_state(torch.tensor(start))
        try:
            return [next(stream) for _ in range(n)]
        finally:
            stream.close()

    serial = draw(LoaderSettings(), 0, 6)
    parallel = draw(LoaderSettings(workers=2, prefetch_factor=3), 0, 6)
    resumed = draw(LoaderSettings(workers=1), 4, 2)
    for a, b in zip(serial, parallel + [], strict=True):
        assert all(torch.equal(x, y) for (xa, ya), (xb, yb) in zip(a, b, strict=True) for x, y in ((xa, xb), (ya, yb)))
    for a, b in zip(serial[4:], resumed, strict=True):
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not torch.equal(serial[0][0][0], serial[1][0][0])  # steps differ
    # augmentation is drawn from the step's key, not from the caller's RNG, which is left untouched
    state = torch.get_rng_state()
    batches[0]
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------------------- evaluation


def test_one_pass_evaluates_several_models_as_separate_passes_would():
    dataset = get_dataset("ColoredDigits", None, [0], {})
    in_splits, out_splits = make_splits(dataset, 0.2, 0)
    torch.manual_seed(0)
    models = {"": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 2)).eval(),
              "_other": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 2)).eval()}
    splits = {"env0_in": in_splits[0], "env1_out": out_splits[1]}
    evaluator = SplitEvaluator(splits, Inference())
    got = evaluator.accuracies(models, {"_other": ["env1_out"]})
    evaluator.close()
    assert got[""] == {name: accuracy(models[""], split) for name, split in splits.items()}
    assert got["_other"] == {"env1_out": accuracy(models["_other"], out_splits[1])}
    bf16 = SplitEvaluator(splits, Inference(precision="bf16", channels_last=True)).accuracies({"": models[""]})[""]
    assert all(abs(bf16[name] - got[""][name]) < 0.05 for name in splits)


# ----------------------------------------------------------------------------------- launchers


def test_gpus_are_found_and_handed_out_as_domainbeds_multi_gpu_launcher_does():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2,3,"}, 8) == ["0", "1", "2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 8) == []
    assert visible_gpus({}, 3) == ["0", "1", "2"]
    assert visible_gpus({}, 0) == []
    assert [gpu_of_worker(i, ["4", "6"]) for i in range(5)] == ["4", "6", "4", "6", "4"]
    assert gpu_of_worker(0, []) is None
    env = worker_environment({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "4,6"}, 3, "6")
    assert env["CUDA_VISIBLE_DEVICES"] == "6" and env["OMP_NUM_THREADS"] == "3" and env["PATH"] == "/bin"
    assert worker_environment({"CUDA_VISIBLE_DEVICES": "4,6"}, 1, None)["CUDA_VISIBLE_DEVICES"] == "4,6"


def test_a_requeued_packed_task_releases_the_locks_its_workers_held(tmp_path):
    from domainbed_recycle.locks import release_if_mine

    lock = tmp_path / "lock"
    code = ("import sys, time; from domainbed_recycle.locks import Lock; Lock(sys.argv[1], 'x').acquire(); "
            "print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True,
                             env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "held"
        assert not release_if_mine(lock) and lock.exists()  # held by another process
        assert release_if_mine(lock, children=True) and not lock.exists()  # by this process's child
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_a_packed_slurm_task_runs_its_jobs_side_by_side(tmp_path):
    jobs = make_jobs(["ColoredDigits"], ["ERM"], [[0], [1]], 1, 1, 2, None, tmp_path, checkpoint_freq=2,
                     hparams=TINY, extra={"precision": "bf16"})
    outcomes = PackedJobs()([job.args for job in jobs], False)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert [o.job_id for o in outcomes] == [job.job_id for job in jobs]
    assert all(job.run.read_records()[-1]["args"]["precision"] == "bf16" for job in jobs)
    assert [o.status for o in PackedJobs()([job.args for job in jobs], False)] == ["skipped", "skipped"]


# ------------------------------------------------------------------------------------- specs, cost


def test_sweep_and_recycle_specs_give_their_switches_to_every_training_job(tmp_path):
    from domainbed_recycle.recycle import stages
    from domainbed_recycle.recycle.spec import spec_from_dict as recycle_spec
    from domainbed_recycle.strategies import STRATEGIES
    from domainbed_recycle.sweep import spec_from_dict

    spec = spec_from_dict({"datasets": ["ColoredDigits"], "algorithms": ["ERM"], "n_hparams": 1, "n_trials": 1,
                           "test_envs": [0], "output_dir": str(tmp_path),
                           "performance": {"precision": "bf16", "loader_workers": 2}})
    (job,) = spec.jobs()
    assert job.args["precision"] == "bf16" and job.args["loader_workers"] == 2
    with pytest.raises(UserError, match=r"\[performance\]: unknown switch\(es\) fast"):
        spec_from_dict({"datasets": ["ColoredDigits"], "performance": {"fast": True}})

    values = {"output_dir": str(tmp_path / "r"), "strategies": ["ERM", "Ratatouille"],
              "auxiliary": {"datasets": ["Glyphs"], "n_runs": 1},
              "target": {"datasets": ["ColoredDigits"], "test_envs": [0], "n_trials": 1, "n_runs": 2}}
    plain = recycle_spec(values)
    fast = recycle_spec(values | {"performance": {"precision": "bf16", "channels_last": True}})
    strategies = [STRATEGIES.get(name)() for name in plain.strategies]
    plain_jobs = stages.training_jobs(stages.plan(plain, strategies, tmp_path / "r"))
    fast_jobs = stages.training_jobs(stages.plan(fast, strategies, tmp_path / "r"))
    assert len(fast_jobs) == len(plain_jobs) >= 5
    assert all(j.args["precision"] == "bf16" and j.args["channels_last"] for j in fast_jobs)
    assert not any("precision" in j.args for j in plain_jobs)
    assert not {j.job_id for j in plain_jobs} & {j.job_id for j in fast_jobs}
    with pytest.raises(UserError, match=r"\[performance\]: channels_last must be true or false"):
        recycle_spec(values | {"performance": {"channels_last": "yes"}})


def test_the_cost_estimate_sums_steps_images_and_prices_measured_gpus(tmp_path):
    size = sum(len(domain) for domain in get_dataset("ColoredDigits", None, [], {}).datasets)  # prepared
    jobs = jobs_from_configs([
        {"dataset": "ColoredDigits", "test_envs": [0], "steps": 10, "checkpoint_freq": 4},  # batch 64 x 2 domains
        {"dataset": "PACS", "test_envs": [0], "steps": 100, "precision": "bf16", "channels_last": True,
         "data_dir": str(tmp_path / "absent")},
        {"dataset": "PACS", "test_envs": [0, 1], "steps": 100, "hparams": {"batch_size": 16}},
    ], tmp_path) + [Job({TASK_KEY: "domainbed_recycle.recycle.combine:run_cell", "label": "a cell"}, tmp_path)]
    cost = sweep_cost.estimate(jobs)
    assert cost.runs == 3 and cost.steps == 210
    assert cost.train_images == 10 * 64 * 2 + 100 * 32 * 3 + 100 * 16 * 2
    assert cost.priced == {"bf16+channels_last": [100 * 32 * 3, 0], "fp32": [100 * 16 * 2, 0]}
    assert cost.unsized == {"PACS"} and cost.unpriced_runs == 1
    assert cost.eval_images == 3 * size  # evaluations after steps 4, 8 and 10
    table = {"GPU X": {"date": "d", "train_images_per_s": {"fp32": 100.0, "bf16+channels_last": 300.0},
                       "eval_images_per_s": {"fp32": 400.0}}}
    hours, notes = sweep_cost.gpu_hours(cost.priced, table["GPU X"])
    assert hours == pytest.approx((9600 / 300 + 3200 / 100) / 3600) and notes == []
    text = sweep_cost.describe(cost, table=table)
    assert "3 training run(s), 210 steps" in text and "GPU X (measured d): 0.0 GPU-hours" in text
    assert "no GPU measurement yet" in sweep_cost.describe(cost, table={})
    assert "GPU Y: no measurement" in sweep_cost.describe(cost, gpu="GPU Y", table=table)


def test_a_cache_that_would_fill_the_disk_is_refused_in_one_line(tmp_path):
    from domainbed_recycle.datasets.image_cache import cache_bytes, check_space

    assert cache_bytes(9991, 224) == 9991 * 150528  # PACS at 224 px: 1.4 GiB
    check_space(tmp_path, 1, "a tiny cache")
    with pytest.raises(UserError, match=r"needs 1048576\.0 GiB in .* free: decode on the fly instead"):
        check_space(tmp_path, 2**50, "a huge cache")


# ------------------------------------------------------------------------------------- benchmark


@pytest.mark.slow
def test_the_gpu_benchmark_runs_its_two_step_cpu_check(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU this is the real benchmark (minutes)")
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--variants", "bf16+channels_last",
               "--out", str(tmp_path / "gpu.txt"), "--keep", str(tmp_path / "work")]
    if os.environ.get("DRECYCLE_DOMAINBED"):  # a DomainBed checkout: its train.py runs too
        command += ["--domainbed", os.environ["DRECYCLE_DOMAINBED"]]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "gpu.txt").read_text().splitlines()
    assert any("NO GPU" in line for line in lines)
    assert [line.split()[0] for line in lines if line.startswith(("fp32", "bf16"))] == \
        ["bf16+channels_last", "fp32", "bf16+channels_last"]  # the training row, then evaluation rows
    assert lines[-1].startswith("ratio_vs_domainbed_bf16: ")


def test_the_collector_says_when_runs_of_different_settings_share_a_table(tmp_path):
    from domainbed_recycle.collect import load_records

    _train(tmp_path / "sweep", "a")
    frame, report = load_records(tmp_path / "sweep")
    assert report.settings == {"fp32": 2} and report.settings_warning() is None
    _train(tmp_path / "sweep", "b", precision="bf16", channels_last=True)
    frame, report = load_records(tmp_path / "sweep")
    assert report.settings == {"fp32": 2, "bf16+channels_last": 2}
    assert list(frame["settings"]) == ["fp32", "fp32", "bf16+channels_last", "bf16+channels_last"]
    assert "different speed settings are tabulated together (bf16+channels_last: 2 record(s), fp32: 2" \
        in report.warnings()[-1]


def test_the_collector_names_every_numeric_switch():
    from domainbed_recycle.collect.records import _file_settings

    records = [{"args": {key: not value if isinstance(value, bool) else "bf16"}} for key, value in
               performance.NUMERIC_SWITCHES.items()] + [{"args": {"dataset": "PACS"}}, {"args": None}]
    column = _file_settings(records, [1] * len(records), np.arange(len(records)))
    assert list(column) == ["bf16", "fp32+channels_last", "fp32+compile", "fp32+cudnn_benchmark", "fp32", "fp32"]


def test_sweep_flags_set_switches_and_the_dry_run_prints_the_cost(tmp_path, capsys):
    from domainbed_recycle import cli

    common = ["sweep", "launch", "--datasets", "ColoredDigits", "--algorithms", "ERM", "--n_hparams", "1",
              "--n_trials", "1", "--test_envs", "0", "--single_test_envs",
              "--steps", "10", "--output_dir", str(tmp_path), "--dry_run"]
    assert cli.main(common) == 0
    plain = capsys.readouterr().out
    assert cli.main([*common, "--precision", "bf16", "--loader_workers", "2"]) == 0
    switched = capsys.readouterr().out
    assert plain.split()[0] != switched.split()[0]  # bf16 is another job; loader workers are not
    assert "cost: 1 training run(s), 10 steps, 1,280 training images" in switched
    assert "GPU-hours: not estimated" in switched  # a small CNN at 28 px: not what the benchmark prices
    assert cli.main([*common, "--loader_workers", "2"]) == 0
    assert capsys.readouterr().out.split()[0] == plain.split()[0]
    assert cli.main([*common, "--prefetch_factor", "0"]) == 2
    assert "speed switches: prefetch_factor must be an integer >= 1, got 0" in capsys.readouterr().err
