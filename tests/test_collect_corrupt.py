"""Broken results files are skipped, counted and named; the tables are still computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainbed_recycle.collect import collect, format_table
from domainbed_recycle.records import load_records, parse_lines
from domainbed_recycle.rundir import RunDir


def vlcs_record(test_env: int, step: int, trial: int = 0, acc: float = 0.5) -> dict:
    args = {
        "dataset": "VLCS",
        "algorithm": "ERM",
        "test_envs": [test_env],
        "hparams_seed": 0,
        "trial_seed": trial,
    }
    r = {"args": {**args, "unknown_key": 1}, "step": step, "strategy": "erm", "versions": {}}
    for i in range(4):
        r[f"env{i}_in_acc"] = acc
        r[f"env{i}_out_acc"] = acc
    return r


def line(r: dict) -> str:
    return json.dumps(r) + "\n"


def make_run(root: Path, name: str, text: str | bytes, done: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    path = folder / RunDir.RESULTS
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    if done:
        (folder / RunDir.DONE).write_text("")
    return path


@pytest.fixture
def corrupt_sweep(tmp_path):
    no_trial = vlcs_record(1, 0)
    del no_trial["args"]["trial_seed"]
    no_acc = vlcs_record(1, 5)
    del no_acc["env3_in_acc"]  # VLCS has 4 domains
    bad_env = vlcs_record(1, 6)
    bad_env["args"]["test_envs"] = [7]
    files = {
        "good": make_run(
            tmp_path, "a_good", line(vlcs_record(0, 0, acc=0.6)) + line(vlcs_record(0, 1, acc=0.8))
        ),
        "truncated": make_run(
            tmp_path, "b_killed", line(vlcs_record(1, 0, acc=0.7)) + '{"args": {"data', done=False
        ),
        "garbage": make_run(
            tmp_path,
            "c_garbage",
            line(vlcs_record(2, 0)) + "not json at all\n[1, 2]\n" + line(vlcs_record(2, 1)),
        ),
        "keys": make_run(
            tmp_path, "d_keys", line(no_trial) + line(no_acc) + line(bad_env) + line(vlcs_record(1, 9))
        ),
        "binary": make_run(tmp_path, "e_binary", b"\xff\xfe\x00garbage\n"),
        "no_newline": make_run(tmp_path, "f_no_newline", line(vlcs_record(3, 0, acc=0.9)).rstrip("\n")),
    }
    (tmp_path / "g_empty_folder").mkdir()
    (tmp_path / "stray_file.txt").write_text("hello")
    return tmp_path, files


def test_problems_are_counted_per_kind_with_files(corrupt_sweep):
    root, files = corrupt_sweep
    records, report = load_records(root)
    assert report.n_files == 6
    assert report.skipped == {"truncated_line": 1, "bad_json": 2, "missing_keys": 3, "unreadable": 1}
    assert report.files["truncated_line"] == [str(files["truncated"])]
    assert report.files["bad_json"] == [str(files["garbage"])]
    assert report.files["missing_keys"] == [str(files["keys"])]
    assert report.files["unreadable"] == [str(files["binary"])]
    assert report.n_runs_not_done == 1
    # 2 good + 1 before the truncation + 2 around the garbage + 1 valid in d_keys + 1 without newline
    assert len(records) == report.n_records == 7
    assert list(records["run_dir"].unique()) == ["a_good", "b_killed", "c_garbage", "d_keys", "f_no_newline"]


def test_tables_still_computed(corrupt_sweep):
    records, report = load_records(corrupt_sweep[0])
    header, rows = format_table(collect(records, methods=["iid"], report=report).tables[0])
    # L: the killed run's complete line (val 0.7) and d_keys' valid record (0.5) form one run
    assert header == ["Algorithm", "C", "L", "S", "V", "Avg"]
    assert rows == [["ERM", "80.0 +/- 0.0", "70.0 +/- 0.0", "50.0 +/- 0.0", "90.0 +/- 0.0", "72.5"]]


def test_warning_is_one_paragraph_with_counts_and_some_names(corrupt_sweep):
    _, report = load_records(corrupt_sweep[0])
    text = report.warning(max_files=5)
    assert "\n" not in text
    assert "skipped 7 line(s)" in text
    assert "1 truncated last line" in text and "2 line that is not a JSON object" in text
    assert "b_killed" in text and "e_binary" in text


def test_warning_lists_at_most_n_files(tmp_path):
    for k in range(8):
        make_run(tmp_path, f"run{k}", line(vlcs_record(0, 0)) + "{trunc")
    _, report = load_records(tmp_path)
    text = report.warning(max_files=3)
    assert "8 truncated last line" in text and "8 file(s)" in text and "and 5 more" in text
    assert "run0" in text and "run7" not in text


def test_only_done_skips_unfinished_runs(corrupt_sweep):
    records, report = load_records(corrupt_sweep[0], only_done=True)
    assert report.n_runs_excluded == 1
    assert "truncated_line" not in report.skipped
    assert "b_killed" not in set(records["run_dir"])
    assert len(records) == 6


def test_no_problem_no_warning(tmp_path):
    make_run(tmp_path, "ok", line(vlcs_record(0, 0)))
    records, report = load_records(tmp_path)
    assert report.warning() is None and len(records) == 1


def test_results_file_in_the_folder_itself_is_read(tmp_path):
    (tmp_path / RunDir.RESULTS).write_text(line(vlcs_record(0, 0)))
    make_run(tmp_path, "sub", line(vlcs_record(1, 0)))
    records, _ = load_records(tmp_path)
    assert list(records["run_dir"]) == [".", "sub"]


def test_parse_lines_kinds():
    good = line(vlcs_record(0, 0))
    records, numbers, problems = parse_lines(good + "\n\n" + "{oops\n" + good + '{"a": ')
    assert numbers == [1, 5] and len(records) == 2
    assert problems == [(4, "bad_json"), (6, "truncated_line")]
    # a broken last line that does end with a newline was written whole: not a truncation
    assert parse_lines(good + "{oops\n")[2] == [(2, "bad_json")]
    # the fast path: whole lines only
    assert parse_lines(good + good) == ([vlcs_record(0, 0)] * 2, [1, 2], [])
    assert parse_lines("") == ([], [], [])


def test_odd_values_are_missing_keys(tmp_path):
    odd = [vlcs_record(0, 0) for _ in range(5)]
    odd[0]["step"] = "ten"
    odd[1]["env2_out_acc"] = [0.5]
    odd[2]["args"]["test_envs"] = [[0]]
    odd[3]["args"]["hparams_seed"] = "0"
    odd[4]["args"] = None
    make_run(tmp_path, "odd", "".join(line(r) for r in odd) + line(vlcs_record(0, 1)))
    records, report = load_records(tmp_path)
    assert report.skipped == {"missing_keys": 5} and len(records) == 1
