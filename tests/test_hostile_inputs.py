"""Nothing read from disk or a spec is trusted: the harness deletes only what it can prove it made, bounds
the work every value asks for, never turns data silently wrong, checks in the dry run what a run would,
and tells every mistake in one line (exit 2). One test per case of the audit; no training here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from domainbed_recycle import cli, rundir
from domainbed_recycle.checkpoints import save_checkpoint
from domainbed_recycle.errors import UserError
from domainbed_recycle.locks import Lock
from domainbed_recycle.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = ROOT / "sweeps" / "recycle_tiny.toml"
TRAIN = ["--dataset", "ColoredDigits", "--test_envs", "0", "--steps", "2", "--checkpoint_freq", "2",
         "--hparams", '{"cnn_width": 8}', "--no_progress", "--threads", "1"]


def _one_error_line(capsys) -> str:
    """The one line a refused command printed on stderr (no traceback, no usage block)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _tree(path: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def _spec(tmp_path: Path, **changes) -> Path:
    """The tiny recycle spec as JSON in `tmp_path`, with `changes` (section.key=value) applied."""
    import tomllib

    values = tomllib.loads(TINY_SPEC.read_text())
    values["output_dir"] = str(tmp_path / "out")
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (values.setdefault(section, {}) if section else values)[name] = value
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(values))
    return path


# ------------------------------------------------------------------------ 1. deletes only what it made


def _finished_run(path: Path) -> RunDir:
    run = RunDir(path).create()
    run.results_file.write_text('{"step": 1}\n')
    run.mark_done()
    return run


def test_a_combine_marker_naming_a_folder_outside_the_table_is_refused_and_nothing_deleted(tmp_path):
    from domainbed_recycle.recycle import combine
    from domainbed_recycle.recycle.pipeline import Pipeline
    from domainbed_recycle.recycle.spec import load_recycle_spec

    victim = _finished_run(tmp_path / "victim")
    spec = load_recycle_spec(_spec(tmp_path))
    pipeline = Pipeline(spec)
    plan = pipeline.plan()
    cell = next(iter(plan.cells))
    marker = pipeline.out / combine.COMBINED / f"{cell.dataset}_env{cell.test_env}_trial{cell.trial_seed}_ERM.json"
    combine.write_marker(marker, {"runs": {}, "table_folders": ["../../victim"]})
    before = _tree(tmp_path / "victim")
    with pytest.raises(UserError, match="'table_folders' names '../../victim'.*nothing was deleted") as error:
        combine.combine_jobs(plan.cells, spec, pipeline.out)  # the parent reads every marker first
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(UserError, match="nothing was deleted"):
        combine._forget(pipeline.out, marker)
    assert _tree(tmp_path / "victim") == before and victim.is_done and marker.is_file()


def test_a_table_folder_that_links_elsewhere_is_not_followed(tmp_path):
    from domainbed_recycle.recycle import combine

    victim = _finished_run(tmp_path / "victim")
    out = tmp_path / "out"
    name = "0" * 32
    (out / combine.TABLE).mkdir(parents=True)
    (out / combine.TABLE / name).symlink_to(victim.path, target_is_directory=True)
    marker = out / combine.COMBINED / "cell_ERM.json"
    combine.write_marker(marker, {"runs": {}, "table_folders": [name]})
    with pytest.raises(UserError, match="leads out of"):
        combine._forget(out, marker)
    assert victim.is_done and victim.results_file.read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("names", [("out.txt", "results.jsonl"), ("out.txt",), ("done",), ("args.json", "lock")])
def test_train_never_cleans_a_folder_it_did_not_make_whatever_its_file_names(tmp_path, capsys, names):
    userout = tmp_path / "userout"
    userout.mkdir()
    for name in names:
        (userout / name).write_text(f"the user's own {name}\n")
    before = _tree(userout)
    assert cli.main(["train", *TRAIN, "--output_dir", str(userout)]) == 2
    line = _one_error_line(capsys)
    assert str(userout) in line and rundir.MADE_BY in line
    assert _tree(userout) == before


def test_a_sweep_job_never_cleans_a_folder_it_did_not_make(tmp_path):
    from domainbed_recycle.sweep import make_jobs, run_job

    (job,) = make_jobs(["ColoredDigits"], ["ERM"], [[0]], 1, 1, 2, None, tmp_path, checkpoint_freq=2,
                       hparams={"cnn_width": 8})
    job.output_dir.mkdir()
    (job.output_dir / "out.txt").write_text("mine")
    outcome = run_job(job.args, echo=False)
    assert outcome.status == "failed" and rundir.MADE_BY in outcome.error
    assert [p.name for p in job.output_dir.iterdir()] == ["out.txt"]


def test_recycle_writes_nothing_into_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text("my own spec.json\n")
    before = _tree(tmp_path)
    assert cli.main(["recycle", str(_spec(tmp_path))]) == 2
    assert "was not made by this harness" in _one_error_line(capsys)
    assert _tree(tmp_path) == before | {"spec.json": (tmp_path / "spec.json").read_bytes()}
    assert (out / "spec.json").read_text() == "my own spec.json\n"


def test_an_empty_output_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, output_dir="")
    before = _tree(tmp_path)
    for extra in ([], ["--dry_run"]):
        assert cli.main(["recycle", str(spec), *extra]) == 2
        assert "'output_dir' is empty" in _one_error_line(capsys)
    assert cli.main(["train", *TRAIN, "--output_dir", ""]) == 2
    assert "output_dir is empty" in _one_error_line(capsys)
    assert _tree(tmp_path) == before


def test_existing_outputs_are_refused_without_force(tmp_path, capsys):
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"not yours")
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]  # never read: the output is checked first
    for argv in (["lmc", *runs, "--plot", str(precious)], ["diversity", *runs, "--plot", str(precious)],
                 ["recycle", str(_spec(tmp_path)), "--table_only", "--markdown", str(notes)],
                 ["recycle", str(_spec(tmp_path)), "--table_only", "--latex", str(notes)]):
        assert cli.main(argv) == 2, argv
        line = _one_error_line(capsys)
        assert "exists" in line and "--force" in line, line
    assert precious.read_bytes() == b"not yours" and notes.read_text() == "my notes"
    out = tmp_path / "out" / "table"  # an empty table, written over the notes on purpose
    out.mkdir(parents=True)
    assert cli.main(["recycle", str(_spec(tmp_path)), "--table_only", "--markdown", str(notes), "--force"]) == 0
    assert notes.read_text() != "my notes"


# ------------------------------------------------------------------------------ 2. bounded work


@pytest.mark.parametrize("key, value, limit", [
    ("target__n_trials", 2**63, "DRECYCLE_MAX_JOBS"), ("target__n_trials", 10**7, "DRECYCLE_MAX_JOBS"),
    ("target__n_runs", 10**6, "DRECYCLE_MAX_JOBS"), ("target__n_trials", 1e7, "an integer"),
    ("auxiliary__n_runs", 2**40, "DRECYCLE_MAX_JOBS"), ("target__steps", 10**12, "DRECYCLE_MAX_STEPS"),
    ("n_workers", 10**5, "DRECYCLE_MAX_WORKERS"), ("target__n_trials", 30_000, "DRECYCLE_MAX_JOBS"),
])
def test_a_dry_run_refuses_huge_counts_at_once(tmp_path, capsys, key, value, limit):
    start = time.time()
    assert cli.main(["recycle", str(_spec(tmp_path, **{key: value})), "--dry_run"]) == 2
    assert limit in _one_error_line(capsys)
    assert time.time() - start < 20  # refused before planning (it took minutes and gigabytes)


def test_the_total_of_planned_jobs_is_bounded_as_the_plan_grows(tmp_path, capsys, monkeypatch):
    # the tiny spec: 12 earlier jobs, 13 target jobs per cell (Fusing trains M runs, issue 19)
    monkeypatch.setenv("DRECYCLE_MAX_JOBS", "60")
    assert cli.main(["recycle", str(_spec(tmp_path, target__n_trials=50)), "--dry_run"]) == 2
    line = _one_error_line(capsys)  # projected from the first cell: 12 + 50 x 13
    assert "the jobs this plan makes (13 target job(s) per cell of TextureMNIST, 50 cells): 662" in line, line
    assert "limit of 60" in line and "DRECYCLE_MAX_JOBS" in line
    monkeypatch.setenv("DRECYCLE_MAX_JOBS", "20")  # past the limit within the first cell
    assert cli.main(["recycle", str(_spec(tmp_path)), "--dry_run"]) == 2
    assert "the jobs planned (so far)" in _one_error_line(capsys)
    monkeypatch.setenv("DRECYCLE_MAX_JOBS", "25")  # the plan's 25 jobs exactly: valid (unique jobs counted)
    assert cli.main(["recycle", str(_spec(tmp_path)), "--dry_run"]) == 0
    assert "valid" in capsys.readouterr().out
    monkeypatch.setenv("DRECYCLE_MAX_JOBS", "24")
    assert cli.main(["recycle", str(_spec(tmp_path)), "--dry_run"]) == 2
    assert "limit of 24" in _one_error_line(capsys)


def test_a_sweep_of_too_many_jobs_is_refused_before_it_is_made(tmp_path, capsys):
    start = time.time()
    assert cli.main(["sweep", "launch", "--datasets", "ColoredDigits", "--n_hparams", str(10**8),
                     "--output_dir", str(tmp_path / "s"), "--dry_run"]) == 2
    assert "DRECYCLE_MAX_JOBS" in _one_error_line(capsys)
    assert cli.main(["sweep", "launch", "--datasets", "ColoredDigits", "RotatedDigits", "--n_hparams", "50000",
                     "--output_dir", str(tmp_path / "s"), "--dry_run"]) == 2
    assert "the sweep's jobs" in _one_error_line(capsys)
    assert time.time() - start < 20 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("extra, limit", [(["--hparams", '{"cnn_width": 100000}'], "DRECYCLE_MAX_WIDTH"),
                                          (["--threads", "100000"], "DRECYCLE_MAX_THREADS"),
                                          (["--hparams", '{"batch_size": 100000000}'], "DRECYCLE_MAX_BATCH"),
                                          (["--steps", str(10**9)], "DRECYCLE_MAX_STEPS")])
def test_widths_threads_and_batches_are_bounded_before_anything_is_allocated(tmp_path, capsys, extra, limit):
    out = tmp_path / "run"
    assert cli.main(["train", *TRAIN, *extra, "--output_dir", str(out)]) == 2
    assert limit in _one_error_line(capsys)
    assert not out.exists()  # no folder, no lock left behind (--threads 100000 crashed, leaving its lock)


def _finishes(function, fifo: Path, seconds: float = 60) -> None:
    """Run `function` in a thread; fail (after unblocking it by writing to `fifo`) if it hangs."""
    worker = threading.Thread(target=function, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        with open(fifo, "w") as handle:  # a reader blocked on the FIFO gets its end of file
            handle.write("")
        pytest.fail(f"{function} blocked on the FIFO {fifo}")


def test_special_files_are_refused_not_waited_on(tmp_path, capsys):
    run = tmp_path / "sweep" / "r1"
    run.mkdir(parents=True)
    os.mkfifo(run / rundir.RESULTS)
    codes = []
    _finishes(lambda: codes.append(cli.main(["collect", "--input_dir", str(tmp_path / "sweep")])),
              run / rundir.RESULTS)
    assert codes == [0] and "FIFO" in capsys.readouterr().err
    spec = tmp_path / "fifo.toml"
    os.mkfifo(spec)
    _finishes(lambda: codes.append(cli.main(["recycle", str(spec), "--dry_run"])), spec)
    assert codes[-1] == 2 and "a FIFO (named pipe)" in _one_error_line(capsys)
    lock = tmp_path / "lockdir" / "lock"
    lock.parent.mkdir()
    os.mkfifo(lock)
    _finishes(lambda: codes.append(Lock(lock, "x").read()), lock)
    assert codes[-1] == {}
    args = RunDir(tmp_path / "r2").create().args_file
    os.mkfifo(args)
    _finishes(lambda: codes.append(RunDir(tmp_path / "r2").is_ours), args)
    assert codes[-1] is True  # its marker says so; the FIFO named args.json is never opened for a read


# ------------------------------------------------------------------------ 3. no silent wrong data


def _png16(path: Path, pixels: np.ndarray) -> None:
    """Write a 16-bit PNG (grey [H, W, 1] or RGB [H, W, 3] uint16) by hand: PIL cannot write 16-bit RGB."""
    import struct
    import zlib

    h, w, c = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path, channels):
    from domainbed_recycle.datasets.image_files import load_array

    pixels = np.random.default_rng(0).integers(0, 65536, (16, 16, channels)).astype(np.uint16)
    _png16(tmp_path / "x.png", pixels)
    got = load_array(tmp_path / "x.png", 16).transpose(1, 2, 0).astype(float)
    expected = np.broadcast_to(pixels / 257.0, got.shape)
    assert np.abs(got - expected).max() <= 1.0  # was 255 almost everywhere (PIL clips 16-bit grey)
    assert abs(got.mean() - expected.mean()) < 1.0


def test_pixels_of_no_known_range_are_refused_naming_the_file(tmp_path):
    from domainbed_recycle.datasets.image_files import load_rgb

    Image.fromarray(np.random.default_rng(0).random((8, 8)).astype(np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(UserError, match=f"unsupported image {tmp_path / 'f.tif'}: its pixels are floats"):
        load_rgb(tmp_path / "f.tif")


def _tree_of_images(root: Path, domains: list[str]) -> None:
    from conftest import make_tree

    make_tree(root, domains, ["a", "b"], per_class=2)


def test_a_symlinked_domain_folder_is_reported_like_every_skipped_entry(tmp_path, capsys, isolated_caches):
    from domainbed_recycle.datasets import get_dataset

    root = tmp_path / "data"
    _tree_of_images(root, ["d0", "d1"])
    _tree_of_images(tmp_path / "elsewhere", ["d2"])
    (root / "d2").symlink_to(tmp_path / "elsewhere" / "d2", target_is_directory=True)
    dataset = get_dataset(f"folder:{root}?resolution=16", None, [0], {})
    assert dataset.ENVIRONMENTS == ["d0", "d1"]
    err = capsys.readouterr().err
    assert "warning: skipped 1 entry" in err and str(root / "d2") in err


def test_a_replaced_image_of_the_same_size_and_mtime_is_decoded_again(tmp_path, isolated_caches):
    from domainbed_recycle.datasets.image_cache import cached_images
    from domainbed_recycle.datasets.image_files import scan_tree

    root = tmp_path / "domain"
    (root / "a").mkdir(parents=True)
    image = root / "a" / "0.bmp"  # uncompressed: another image of the same shape has the same size
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    first = cached_images(scan_tree(root), 8, tmp_path / "cache")
    stat = image.stat()
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "white.bmp")
    image.write_bytes((tmp_path / "white.bmp").read_bytes())  # in place: same inode, same size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime, as `cp -p` or rsync -t
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    second = cached_images(scan_tree(root), 8, tmp_path / "cache")
    assert int(first.max()) == 0 and int(second.min()) == 255  # was the stale black image


def _weights(path: Path, value, dtype=torch.float32) -> Path:
    """A safetensors file of the small CNN's keys shape-free ({"featurizer.w": ..., "classifier.b": ...}),
    written with safetensors itself, as a file made elsewhere would be."""
    save_file({"featurizer.w": torch.full((4,), value, dtype=dtype), "classifier.b": torch.ones(2)}, str(path))
    return path


@pytest.mark.parametrize("value, dtype, what", [(float("nan"), torch.float32, "not finite"),
                                                (float("inf"), torch.float32, "not finite"),
                                                (3, torch.int64, "int64 values")])
def test_non_finite_and_non_float_weights_are_refused_at_every_entry_point(tmp_path, capsys, value, dtype, what):
    bad = _weights(tmp_path / "bad.safetensors", value, dtype)
    good = _weights(tmp_path / "good.safetensors", 1.0)
    out = tmp_path / "out"
    commands = [["import", str(bad), "--reference", str(good), "--output_dir", str(out)],
                ["merge", str(bad), str(good), "--method", "uniform", "--out", str(tmp_path / "m.safetensors")],
                ["train", *TRAIN, "--init", str(bad), "--output_dir", str(tmp_path / "r1")],
                ["train", *TRAIN, "--pretrained", str(bad), "--output_dir", str(tmp_path / "r2")]]
    for argv in commands:
        assert cli.main(argv) == 2, argv
        line = _one_error_line(capsys)
        assert str(bad) in line and what in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "good.safetensors"]


def test_a_merge_that_overflows_writes_nothing(tmp_path, capsys):
    base, tuned = _weights(tmp_path / "base.safetensors", 1.0), _weights(tmp_path / "ft.safetensors", 2.0)
    out = tmp_path / "merged.safetensors"
    assert cli.main(["merge", str(tuned), "--base", str(base), "--method", "wise_ft", "--alpha", "1e308",
                     "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and "not finite" in line and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "ft.safetensors"]


@pytest.mark.parametrize("key, value, message", [
    ("strategies", [], "'strategies' is empty"), ("selection", [], "'selection' is empty"),
    ("strategies", ["ERM", "ERM"], "'strategies' lists 'ERM' twice"),
    ("target__datasets", ["TextureMNIST", "TextureMNIST"], "lists 'TextureMNIST' twice"),
])
def test_empty_and_repeated_lists_are_refused_at_validation(tmp_path, capsys, key, value, message):
    for extra in (["--dry_run"], []):
        assert cli.main(["recycle", str(_spec(tmp_path, **{key: value})), *extra]) == 2
        assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------- 4. the dry run checks what a run would


@pytest.mark.parametrize("key, value", [
    ("target__holdout_fraction", float("nan")), ("target__holdout_fraction", -0.5),
    ("target__holdout_fraction", 1.0), ("foundation__steps", -5), ("foundation__steps", 0),
    ("target__checkpoint_freq", 0), ("probe__checkpoint_freq", -3), ("foundation__checkpoint_freq", 0),
    ("n_workers", 0), ("n_workers", -2), ("slurm", {"partition": 5}), ("slurm", {"cpus_per_task": 100000}),
    ("target__steps", {"TextureMNIST": 0}), ("target__lp_steps", -1), ("target__test_envs", [9]),
    ("auxiliary__checkpoint", "first"), ("launcher", "cloud"),
])
def test_the_dry_run_refuses_what_the_run_would(tmp_path, capsys, key, value):
    spec = _spec(tmp_path, **{key: value})
    assert cli.main(["recycle", str(spec), "--dry_run"]) == 2
    dry = _one_error_line(capsys)
    assert cli.main(["recycle", str(spec)]) == 2
    assert _one_error_line(capsys) == dry  # the same validator, the same line
    assert not (tmp_path / "out").exists()


def test_a_missing_foundation_checkpoint_stops_the_dry_run_and_the_run_before_anything_is_written(tmp_path, capsys):
    spec = _spec(tmp_path, foundation__checkpoint=str(tmp_path / "missing.safetensors"))
    assert cli.main(["recycle", str(spec), "--dry_run"]) == 1
    assert "MISSING [foundation] checkpoint" in capsys.readouterr().out
    assert cli.main(["recycle", str(spec)]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_zero_steps_is_refused_like_negative_steps(tmp_path, capsys, steps):
    out = tmp_path / "run"
    assert cli.main(["train", *TRAIN, "--output_dir", str(out), "--steps", steps]) == 2
    assert "steps must be an integer >= 1" in _one_error_line(capsys) and not out.exists()


# ------------------------------------------------------------------------- 5. every mistake one line


def test_a_spec_that_is_not_utf8_is_one_line_everywhere(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_bytes(TINY_SPEC.read_bytes() + b"\n# caf\xe9 in Latin-1\n")
    for argv in (["recycle", str(spec), "--dry_run"], ["import", str(spec), "--spec", str(spec)],
                 ["sweep", "launch", "--spec", str(spec), "--dry_run"]):
        assert cli.main(argv) == 2
        assert "not UTF-8" in _one_error_line(capsys)


@pytest.mark.parametrize("key, value, message", [
    ("foundation", 5, "[foundation] must be a table"), ("target", "x", "[target] must be a table"),
    ("target__fusing_range", float("nan"), "'fusing_range' must be a finite number"),
    ("target__fusing_range", float("inf"), "'fusing_range' must be a finite number"),
    ("output_dir", "a\u0000b", "NUL byte"), ("output_dir", "\ud800", "lone surrogate"),
    ("data_dir", ["a"], "'data_dir' must be"), ("extends", "a\u0000b", "'extends' must be"),
])
def test_former_tracebacks_of_a_recycle_spec_are_one_line(tmp_path, capsys, key, value, message):
    assert cli.main(["recycle", str(_spec(tmp_path, **{key: value})), "--dry_run"]) == 2
    assert message in _one_error_line(capsys)


def test_former_tracebacks_of_a_sweep_spec_and_flags_are_one_line(tmp_path, capsys):
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"datasets": ["ColoredDigits"], "output_dir": ["a"]}))
    assert cli.main(["sweep", "launch", "--spec", str(spec), "--dry_run"]) == 2
    assert "'output_dir' must be a string" in _one_error_line(capsys)
    for seed in ("1e20", str(10**20)):
        assert cli.main(["train", *TRAIN, "--seed", seed, "--output_dir", str(tmp_path / "r")]) == 2
        assert "seed" in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_write_errors_of_checkpoints_and_resume_states_name_the_path(tmp_path):
    from domainbed_recycle import resume

    for folder in ("/proc", "/sys"):
        with pytest.raises((UserError, OSError)) as error:
            save_checkpoint(f"{folder}/m.safetensors", {"w": torch.ones(3)}, {})
        assert f"{folder}/m.safetensors" in str(error.value) or folder in str(error.value)
        assert len(str(error.value).splitlines()) == 1
        with pytest.raises((UserError, OSError)) as error:
            resume.save(Path(f"{folder}/resume.pt"), {"x": torch.ones(3)})
        assert folder in str(error.value) and len(str(error.value).splitlines()) == 1


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
from domainbed_recycle import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_part_of_it(tmp_path):
    big = {"featurizer.w": torch.ones(4000), "classifier.b": torch.ones(2)}  # 16 kB: past the 2 kB limit
    save_file(big, str(tmp_path / "a.safetensors"))
    save_file(big, str(tmp_path / "b.safetensors"))
    out = tmp_path / "merged.safetensors"
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, "merge", str(tmp_path / "a.safetensors"),
                           str(tmp_path / "b.safetensors"), "--method", "uniform", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert str(out) in lines[0] and "too large" in lines[0].lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


@pytest.mark.parametrize("content", ["garbage", '{"a": 1}', "[]"])
def test_a_garbage_lock_names_its_file_and_how_to_remove_it(tmp_path, content):
    path = tmp_path / "lock"
    path.write_text(content)
    with pytest.raises(UserError) as error:
        Lock(path, "run folder X").acquire()
    message = str(error.value)
    assert f"rm {path}" in message and "not a lock this harness wrote" in message and "?" not in message
    assert path.read_text() == content  # never taken over or deleted


# ------------------------------------------------------------------ more cases (issue 21, second pass)


def test_sweep_deletes_never_clean_a_job_folder_they_did_not_make(tmp_path, capsys):
    from domainbed_recycle import sweep

    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"datasets": ["ColoredDigits"], "algorithms": ["ERM"], "test_envs": [0], "n_hparams": 2,
                                "n_trials": 1, "steps": 2,
                                "output_dir": str(tmp_path / "s")}))
    first, second = sweep.load_spec(spec).jobs()
    first.run.create()  # a killed attempt of the harness: deleted
    first.run.results_file.write_text('{"step": 1}\n')
    second.output_dir.mkdir(parents=True)  # a user's folder that happens to be named like a job
    (second.output_dir / rundir.RESULTS).write_text("the user's own results\n")
    (second.output_dir / rundir.OUT).write_text("the user's own log\n")
    before = _tree(tmp_path / "s")
    for action in ("delete_incomplete", "delete_all"):
        assert cli.main(["sweep", action, "--spec", str(spec), "--skip_confirmation"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "was not made by this harness" in err[0] and str(second.output_dir) in err[0]
        assert _tree(tmp_path / "s") == before  # refused before any folder was touched, the harness's included


def test_a_fifo_named_like_an_image_is_skipped_and_reported_not_read(tmp_path, capsys, isolated_caches):
    from domainbed_recycle.datasets import get_dataset

    root = tmp_path / "data"
    _tree_of_images(root, ["d0", "d1"])
    fifo = root / "d1" / "a" / "9.png"
    os.mkfifo(fifo)
    loaded = []
    _finishes(lambda: loaded.append(get_dataset(f"folder:{root}?resolution=16", None, [0], {})), fifo)
    assert [len(d) for d in loaded[0].datasets] == [4, 4]  # the FIFO is no image of class a
    err = capsys.readouterr().err
    assert "warning: skipped 1 entry" in err and str(fifo) in err


@pytest.mark.parametrize("out", ["afile/m.safetensors", "afile/sub/m.safetensors", "/proc/m.safetensors"])
def test_a_checkpoint_that_cannot_be_written_is_one_line_naming_it(tmp_path, capsys, out):
    a, b = _weights(tmp_path / "a.safetensors", 1.0), _weights(tmp_path / "b.safetensors", 2.0)
    (tmp_path / "afile").write_text("a file where a folder is asked for")
    out = out if out.startswith("/") else str(tmp_path / out)
    before = _tree(tmp_path)
    assert cli.main(["merge", str(a), str(b), "--method", "uniform", "--out", out]) == 2
    line = _one_error_line(capsys)
    assert out in line, line
    if "afile" in out:  # refused before anything is loaded, and by the writer itself too
        assert f"{tmp_path / 'afile'} is a file, not a folder" in line
        with pytest.raises(UserError, match=f"^cannot write {out}: {tmp_path / 'afile'} is a file, not a folder$"):
            save_checkpoint(out, {"w": torch.ones(3)}, {})
    else:
        assert f"cannot write {out}" in line
    assert _tree(tmp_path) == before  # no temp file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line_naming_the_checkpoint(tmp_path, capsys):
    a, b = _weights(tmp_path / "a.safetensors", 1.0), _weights(tmp_path / "b.safetensors", 2.0)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert cli.main(["merge", str(a), str(b), "--method", "uniform", "--out", str(locked / "m.safetensors")]) == 2
        assert f"cannot write {locked / 'm.safetensors'}" in _one_error_line(capsys)
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_a_table_that_cannot_be_written_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "out" / "table").mkdir(parents=True)  # an empty table: --table_only prints it
    (tmp_path / "afile").write_text("a file")
    target = tmp_path / "afile" / "sub" / "notes.md"  # refused before anything runs
    assert cli.main(["recycle", str(_spec(tmp_path)), "--table_only", "--markdown", str(target)]) == 2
    assert f"{tmp_path / 'afile'} is a file, not a folder" in _one_error_line(capsys)
    assert cli.main(["recycle", str(_spec(tmp_path)), "--table_only", "--latex", "/proc/notes.tex"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the table, on stdout
    assert line.startswith("drecycle recycle: error: /proc/notes.tex") and "Traceback" not in line
    assert (tmp_path / "afile").read_text() == "a file"


def test_a_garbage_lock_in_a_run_folder_is_one_line_naming_it_from_the_cli(tmp_path, capsys):
    run = RunDir(tmp_path / "run").create()
    run.lock_file.write_text("garbage")
    assert cli.main(["train", *TRAIN, "--output_dir", str(run.path)]) == 2
    line = _one_error_line(capsys)
    assert f"rm {run.lock_file}" in line and "?" not in line
    assert run.lock_file.read_text() == "garbage"
    assert sorted(os.listdir(run.path)) == sorted([rundir.LOCK, rundir.MADE_BY])


def test_a_fifo_given_as_weights_is_refused_not_opened(tmp_path, capsys):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    good = _weights(tmp_path / "good.safetensors", 1.0)
    for argv in (["train", *TRAIN, "--init", str(fifo), "--output_dir", str(tmp_path / "r1")],
                 ["train", *TRAIN, "--pretrained", str(fifo), "--output_dir", str(tmp_path / "r2")],
                 ["import", str(fifo), "--reference", str(good), "--output_dir", str(tmp_path / "out")],
                 ["merge", str(fifo), str(good), "--method", "uniform", "--out", str(tmp_path / "m.safetensors")]):
        codes: list[int] = []
        _finishes(lambda argv=argv, codes=codes: codes.append(cli.main(argv)), fifo)
        assert codes == [2], argv
        assert f"{fifo} is a FIFO (named pipe), not a checkpoint file" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors", "weights.safetensors"]


@pytest.mark.parametrize("points, message", [("100000", "DRECYCLE_MAX_POINTS"),
                                             ("1", "--points must be an integer >= 2")])
def test_lmc_points_are_bounded_before_any_run_is_read(tmp_path, capsys, points, message):
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]  # never read: the flags are checked first
    assert cli.main(["lmc", *runs, "--points", points]) == 2
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
