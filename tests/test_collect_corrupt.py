"""Broken results files are skipped, counted and named; the tables are still computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainbed_recycle.collect import collect, format_table, jsonl, load_records, parse_lines
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
    assert report.skipped == {"truncated_line": 1, "bad_json": 2, "not_text": 1, "missing_keys": 3}
    assert report.files["truncated_line"] == [str(files["truncated"])]
    assert report.files["bad_json"] == [str(files["garbage"])]
    assert report.files["missing_keys"] == [str(files["keys"])]
    assert report.files["not_text"] == [str(files["binary"])]
    assert report.n_runs_not_done == 1
    assert report.empty_done_runs == [str(files["binary"].parent)]
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


def test_trailing_binary_garbage_keeps_the_valid_lines(tmp_path):
    # what a crash can leave: NUL blocks and bytes that are not UTF-8 after the last record
    good = line(vlcs_record(0, 0)) + line(vlcs_record(0, 1))
    for name, tail in [("nul", b"\x00" * 64), ("binary", b"\xff\xfe\x00\x9c garbage\n\x00\x01")]:
        make_run(tmp_path / name, "run", good.encode() + tail)
        records, report = load_records(tmp_path / name)
        assert len(records) == 2 and list(records["step"]) == [0, 1], name
        assert report.skipped == {"not_text": 1 if name == "nul" else 2}, name
        assert report.files["not_text"] == [str(tmp_path / name / "run" / "results.jsonl")]
        assert "binary garbage" in report.warning() and report.empty_done_runs == []


def test_garbage_between_lines_and_invalid_utf8_line(tmp_path):
    text = line(vlcs_record(0, 0)).encode() + b"\xc3\x28\n" + line(vlcs_record(0, 1)).encode()
    records, numbers, problems = parse_lines(text)
    assert numbers == [1, 3] and problems == [(2, "not_text")] and len(records) == 2


def test_nan_and_big_integers_read_like_the_standard_library(tmp_path):
    # json.dumps writes a diverged loss as NaN, which orjson alone refuses
    record = vlcs_record(0, 0) | {"loss": float("nan"), "seed": 2**70}
    records, numbers, problems = parse_lines(line(record) + line(vlcs_record(0, 1)))
    assert problems == [] and numbers == [1, 2]
    assert records[0]["loss"] != records[0]["loss"] and records[0]["seed"] == 2**70
    records, numbers, problems = parse_lines(line(vlcs_record(0, 1)) + "{oops\n" + line(record))
    assert numbers == [1, 3] and problems == [(2, "bad_json")] and records[1]["seed"] == 2**70


def test_done_runs_without_records_are_named(tmp_path):
    make_run(tmp_path, "a_ok", line(vlcs_record(0, 0)))
    make_run(tmp_path, "b_empty", "")
    (tmp_path / "c_no_file").mkdir()
    (tmp_path / "c_no_file" / "done").write_text("")
    make_run(tmp_path, "d_all_bad", "{oops\n")
    make_run(tmp_path, "e_running", "", done=False)  # not finished: nothing to warn about
    records, report = load_records(tmp_path)
    assert len(records) == 1
    expected = [str(tmp_path / name) for name in ("c_no_file", "b_empty", "d_all_bad")]
    assert sorted(report.empty_done_runs) == sorted(expected)
    text = report.empty_runs_warning()
    assert "\n" not in text and text.startswith("warning: 3 finished run(s) have no valid record")
    assert all(name in text for name in expected)
    assert report.warnings() == [report.warning(), text]
    assert load_records(tmp_path / "a_ok")[1].empty_runs_warning() is None


@pytest.mark.parametrize("decoder", ["fast", "json"])
def test_both_decoders_read_the_same(monkeypatch, decoder):
    # the standard library's path is what users without the `fast` extra get
    if decoder == "json":
        monkeypatch.setattr(jsonl, "_fast_loads", None)
    elif jsonl._fast_loads is None:
        pytest.skip("orjson is not installed")
    fixture = Path(__file__).parent / "data" / "domainbed_vlcs_sweep" / "sweep"
    texts = [path.read_bytes() for path in sorted(fixture.glob("*/results.jsonl"))]
    odd = line(vlcs_record(0, 1) | {"x": float("inf")})
    texts.append(line(vlcs_record(0, 0)).encode() + b"{oops\n\xff\n" + odd.encode())
    parsed = [parse_lines(text) for text in texts]
    assert sum(len(p[0]) for p in parsed) == 200 + 2
    assert parsed[-1][1:] == ([1, 4], [(2, "bad_json"), (3, "not_text")])
    expected = [[json.loads(raw) for raw in text.decode("utf-8", "replace").splitlines()] for text in texts[:-1]]
    assert [p[0] for p in parsed[:-1]] == expected
