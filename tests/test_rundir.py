"""RunDir, the run-folder contract: names, states, a reset that deletes only the harness's files,
records, an atomic `done`, checkpoints and stored arguments. No training: plain files only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import package_literals

from domainbed_recycle import rundir
from domainbed_recycle.errors import UserError
from domainbed_recycle.rundir import RunDir


def _harness_run(path):
    """A folder holding one of each harness file (contents do not matter here), without `done`."""
    run = RunDir(path).create()
    for name in (rundir.ARGS, rundir.RESULTS, rundir.BEST, rundir.LAST, rundir.OUT, rundir.ERR):
        (run.path / name).write_text("x")
    (run.path / f".{rundir.BEST}.123.tmp").write_text("a killed checkpoint write")
    return run


def test_states_follow_the_folder(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.state == rundir.NOT_LAUNCHED and not run.is_done and run.is_fresh
    run.create()
    assert run.state == rundir.INCOMPLETE and run.is_fresh
    run.out_file.write_text("log")
    assert run.is_fresh  # a launcher's logs only
    run.results_file.write_text("{}\n")
    assert not run.is_fresh
    run.mark_done()
    assert run.state == rundir.STATE_DONE and run.is_done
    assert run.done_file.read_text() == "done\n"
    assert sorted(p.name for p in run.path.iterdir()) == sorted([rundir.MADE_BY, rundir.DONE, rundir.OUT,
                                                                 rundir.RESULTS])
    assert RunDir(str(tmp_path / "r")) == run and run.name == "r" and RunDir.RESULTS == "results.jsonl"


def test_reset_deletes_only_the_harness_files(tmp_path):
    run = _harness_run(tmp_path / "r")
    run.mark_done()
    run.reset()
    assert run.path.is_dir() and [p.name for p in run.path.iterdir()] == [rundir.MADE_BY]
    assert run.state == rundir.INCOMPLETE and run.is_fresh
    run = _harness_run(tmp_path / "r2")
    run.remove()
    assert run.state == rundir.NOT_LAUNCHED
    RunDir(tmp_path / "never").reset()  # nothing there: nothing to do


@pytest.mark.parametrize("foreign", [".git", "notes.txt", "src", ".done.tmp", "results.jsonl.bak", "done"])
def test_a_folder_with_anything_else_is_refused_and_kept_whole(tmp_path, foreign):
    run = _harness_run(tmp_path / "r")
    if foreign in (".git", "src", "done"):  # a folder, even one named like a harness file
        (run.path / foreign).mkdir()
        (run.path / foreign / "HEAD").write_text("ref: refs/heads/main\n")
    else:
        (run.path / foreign).write_text("mine")
    before = sorted(p.name for p in run.path.rglob("*"))
    for action in (run.reset, run.remove, run.check_is_run):
        with pytest.raises(UserError, match=f"did not write \\('{foreign}'") as error:
            action()
        assert len(str(error.value).splitlines()) == 1
    assert sorted(p.name for p in run.path.rglob("*")) == before
    assert run.foreign_entries() == [foreign]


def test_only_a_folder_the_harness_made_is_ever_cleaned(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / rundir.OUT).write_text("the user's own log")  # named like a harness file
    (mine / rundir.RESULTS).write_text('{"mine": 1}\n')
    run = RunDir(mine)
    assert not run.is_ours and not run.is_fresh
    for action in (run.reset, run.remove, run.check_is_run, run.create):
        with pytest.raises(UserError, match="was not made by this harness") as error:
            action()
        assert len(str(error.value).splitlines()) == 1
    assert sorted(p.name for p in mine.iterdir()) == [rundir.OUT, rundir.RESULTS]
    empty = RunDir(tmp_path / "empty")
    empty.path.mkdir()
    assert empty.is_fresh and empty.create().is_ours  # an empty folder is claimed
    empty.remove()
    assert not empty.path.exists()


def test_a_run_folder_of_an_older_version_is_recognised_by_its_provenance(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / rundir.RESULTS).write_text(json.dumps({"step": 1, "versions": {"torch": "2"}, "git_commit": "abc"}) + "\n")
    (old / rundir.OUT).write_text("log")
    run = RunDir(old)
    assert run.is_ours and not rundir.is_made_by_harness(old)
    run.reset()
    assert [p.name for p in old.iterdir()] == [rundir.MADE_BY] or not any(old.iterdir())


def test_a_file_where_the_folder_should_be_is_one_clear_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a folder")
    with pytest.raises(UserError, match="is not a folder"):
        RunDir(path).reset()
    assert path.read_text() == "not a folder"


def test_records_are_appended_flushed_and_read_back(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert run.read_records() == []
    with run.open_records() as log:
        log.append({"step": 1, "b": 2.5, "a": [1]})
        assert json.loads(run.results_file.read_text()) == {"a": [1], "b": 2.5, "step": 1}  # flushed
        log.extend([{"step": 2}])
    assert run.results_file.read_text().splitlines()[0] == '{"a": [1], "b": 2.5, "step": 1}'  # sorted keys
    assert [r["step"] for r in run.read_records()] == [1, 2]
    with open(run.results_file, "a") as handle:
        handle.write('{"trunc')
    with pytest.raises(UserError, match=r"results.jsonl:3: not a JSON record"):
        run.read_records()


def test_mark_done_is_atomic_and_leaves_no_temp_file(tmp_path):
    run = RunDir(tmp_path / "r").create()
    run.mark_done()
    run.mark_done()  # idempotent
    assert sorted(p.name for p in run.path.iterdir()) == [rundir.MADE_BY, rundir.DONE]


def test_model_checkpoint_is_best_else_last(tmp_path):
    run = RunDir(tmp_path / "r").create()
    assert run.model_checkpoint is None
    run.last_checkpoint.write_text("x")
    assert run.model_checkpoint == run.path / "model.safetensors"
    run.best_checkpoint.write_text("x")
    assert run.model_checkpoint == run.path / "model_best.safetensors"


def test_args_come_from_args_json_else_the_first_record(tmp_path):
    run = RunDir(tmp_path / "r").create()
    with pytest.raises(UserError, match="cannot read the run's arguments"):
        _ = run.args
    run.results_file.write_text(json.dumps({"args": {"dataset": "A", "steps": 3}, "step": 3}) + "\n")
    assert run.args == {"dataset": "A", "steps": 3}
    run.write_args({"args": {"dataset": "B", "steps": 3, "test_envs": [0], "output_dir": "x", "threads": 1},
                    "hparams": {}})
    assert run.args["dataset"] == "B" and run.read_static()["hparams"] == {}
    same = {"dataset": "B", "steps": 3, "test_envs": (0,), "output_dir": "elsewhere", "threads": 4}
    assert run.differing_args(same) == []  # tuples compare as the JSON lists they are stored as
    assert run.differing_args(same | {"steps": 4, "seed": 1}) == ["seed", "steps"]


def test_rundir_imports_no_torch():
    code = ("import sys, domainbed_recycle.rundir; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_run_folder_file_names_are_spelled_in_rundir_only():
    """The run folder's file names (those with an extension: `done`, `diverged` and `lock` are also the
    words of states and outcomes) appear as literals in rundir.py only, and in weights.py, whose
    "model.safetensors" is the file of a Hugging Face Hub repository, not of a run folder."""
    names = {name for name in rundir.FILES if "." in name}
    modules = {path for path, _, value in package_literals() if value in names}
    assert {rundir.BEST, rundir.RESULTS, rundir.ARGS} <= names  # the check looks for the real names
    assert modules <= {"rundir.py", "weights.py"} and "rundir.py" in modules, modules
