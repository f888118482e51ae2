"""`drecycle collect`: errors exit 2 with one line; every output format parses."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from domainbed_recycle.cli import main
from domainbed_recycle.rundir import RunDir

FIXTURE = Path(__file__).parent / "data" / "domainbed_vlcs_sweep"
ONE_RUN = "06db52bd7fcbb8172f97f11a62015261"  # test env 0, trial seed 1


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> str:
    """A copy of DomainBed's test sweep: collect writes its tables into the input folder, as DomainBed's."""
    copy = tmp_path_factory.mktemp("vlcs") / "sweep"
    shutil.copytree(FIXTURE / "sweep", copy)
    (copy / "results.txt").unlink()  # the one DomainBed's collector wrote: collect would keep it
    return str(copy)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["collect", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_bad_input_dir_exits_2_with_one_line(tmp_path, capsys, make):
    target = tmp_path / "sweep"
    if make == "file":
        target.write_text("")
    elif make == "empty":
        target.mkdir()
    code, out, err = run_cli(capsys, "--input_dir", str(target))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("drecycle collect: error: ")
    assert str(target) in err


def test_text_output(sweep, capsys):
    code, out, err = run_cli(capsys, "--input_dir", sweep)
    assert code == 0 and err == ""
    assert out.startswith("Total records: 200\n")
    assert len(re.findall(r"^-------- [A-Z]", out, re.M)) == 6
    assert "98.0 +/- 0.2" in out and "77.8 +/- 0.3" in out


def test_domainbed_output_is_identical(sweep, capsys):
    code, out, _ = run_cli(capsys, "--input_dir", sweep, "--domainbed")
    assert code == 0 and out == (FIXTURE / "expected_tables.txt").read_text()


def test_csv_parses(sweep, capsys):
    code, out, _ = run_cli(capsys, "--input_dir", sweep, "--csv")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 0
    assert list(frame.columns) == [
        "selection",
        "table",
        "algorithm",
        "column",
        "mean",
        "se",
        "n_trials",
        "cell",
    ]
    assert len(frame) == 3 * (5 + 2)
    row = frame[(frame.selection == "loo") & (frame.table == "VLCS") & (frame.column == "S")].iloc[0]
    assert row.cell == "70.5 +/- 0.5" and row["mean"] == pytest.approx(70.506, abs=1e-3) and row.n_trials == 2


def test_json_parses(sweep, capsys):
    code, out, _ = run_cli(capsys, "--input_dir", sweep, "--json")
    document = json.loads(out)
    assert code == 0
    assert document["total_records"] == 200
    assert document["load_report"]["n_files"] == 40
    assert [t["selection"] for t in document["tables"]] == ["iid", "iid", "loo", "loo", "oracle", "oracle"]
    assert document["tables"][0]["rows"] == [
        ["ERM", "98.0 +/- 0.2", "64.2 +/- 0.8", "74.1 +/- 0.4", "77.1 +/- 0.2", "78.3"]
    ]


def test_markdown_and_latex(sweep, capsys):
    _, markdown, _ = run_cli(capsys, "--input_dir", sweep, "--markdown")
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 6 * 3 and all(line.endswith("|") for line in table_lines)
    _, latex, _ = run_cli(capsys, "--input_dir", sweep, "--latex")
    assert latex.startswith("\\documentclass{article}") and latex.rstrip().endswith("\\end{document}")
    assert latex.count("\\begin{tabular}") == 6 and "98.0 $\\pm$ 0.2" in latex


def test_one_selection_method(sweep, capsys):
    _, out, _ = run_cli(capsys, "--input_dir", sweep, "--selection", "loo")
    assert len(re.findall(r"^-------- [A-Z]", out, re.M)) == 2 and "leave-one-domain-out cross-validation" in out
    assert "training-domain" not in out


def test_formats_are_exclusive(sweep, capsys):
    assert main(["collect", "--input_dir", sweep, "--csv", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not allowed with argument" in err[0] and "drecycle collect --help" in err[0]


def test_warning_on_stderr_tables_on_stdout(tmp_path, capsys):
    run = tmp_path / "killed"
    run.mkdir()
    good = (FIXTURE / "sweep" / ONE_RUN / RunDir.RESULTS).read_text()
    (run / RunDir.RESULTS).write_text(good + '{"args": {"dataset": "VL')
    code, out, err = run_cli(capsys, "--input_dir", str(tmp_path), "--only_done")
    assert code == 0 and "Total records: 0" in out and "left out 1 run(s)" in err
    code, out, err = run_cli(capsys, "--input_dir", str(tmp_path))
    assert code == 0 and "Total records: 5" in out
    warning, note = err.splitlines()
    assert "1 truncated last line" in warning and "killed" in warning
    assert note.startswith("note: 1 run(s) have no `done` file")


def test_done_run_without_records_is_one_warning_line(tmp_path, capsys):
    run = tmp_path / "ok"
    run.mkdir()
    (run / "results.jsonl").write_text((FIXTURE / "sweep" / ONE_RUN / "results.jsonl").read_text())
    (run / "done").write_text("")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    (empty / "done").write_text("")
    code, out, err = run_cli(capsys, "--input_dir", str(tmp_path))
    assert code == 0 and "Total records: 5" in out
    assert err.count("\n") == 1 and err.startswith("warning: 1 finished run(s)") and str(empty) in err


def test_strict_averages_flag(tmp_path, capsys):
    # one run of one domain: DomainBed averages the trial over that domain alone; strict says X
    run = tmp_path / "run"
    run.mkdir()
    (run / RunDir.RESULTS).write_text((FIXTURE / "sweep" / ONE_RUN / RunDir.RESULTS).read_text())
    (run / RunDir.DONE).write_text("")
    _, loose, _ = run_cli(capsys, "--input_dir", str(tmp_path), "--selection", "iid", "--csv")
    _, strict, _ = run_cli(capsys, "--input_dir", str(tmp_path), "--selection", "iid", "--csv", "--strict_averages")
    averages = lambda text: pd.read_csv(io.StringIO(text)).query("table == 'Averages' and column == 'VLCS'")  # noqa: E731
    assert averages(loose)["cell"].iloc[0] != "X"
    assert averages(strict)["cell"].iloc[0] == "X"


def test_parser_and_collect_wing_do_not_import_torch():
    # a fresh interpreter: this one has torch loaded by other tests
    code = (
        "import pkgutil, sys, importlib\n"
        "from domainbed_recycle.cli import build_parser\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'build_parser imports torch/pandas'\n"
        "import domainbed_recycle.collect as wing\n"
        "names = [m.name for m in pkgutil.iter_modules(wing.__path__, wing.__name__ + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert len(names) >= 4, names\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 4


def test_tables_are_written_into_the_input_folder_as_domainbed_does(capsys, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(FIXTURE / "sweep", folder)
    (folder / "results.txt").unlink()  # the fixture holds the one DomainBed's collector wrote
    _, out, _ = run_cli(capsys, "--input_dir", str(folder), "--domainbed")
    assert (folder / "results.txt").read_text() == out == (FIXTURE / "expected_tables.txt").read_text()
    _, latex, _ = run_cli(capsys, "--input_dir", str(folder), "--latex")
    assert (folder / "results.tex").read_text() == latex
    _, text, _ = run_cli(capsys, "--input_dir", str(folder))  # its own earlier file: replaced
    assert (folder / "results.txt").read_text() == text != out
    (folder / "results.txt").unlink()
    run_cli(capsys, "--input_dir", str(folder), "--print_only")
    assert not (folder / "results.txt").exists()


def test_collect_never_writes_over_a_results_file_it_did_not_write(capsys, tmp_path):
    """Issue 21: DomainBed's own results.txt, or one edited since collect wrote it, is kept (a note says
    so, the tables are still printed); --force overwrites it."""
    folder = tmp_path / "copy"
    shutil.copytree(FIXTURE / "sweep", folder)
    theirs = (folder / "results.txt").read_bytes()
    code, out, err = run_cli(capsys, "--input_dir", str(folder))
    assert code == 0 and out.startswith("Total records: 200")
    assert (folder / "results.txt").read_bytes() == theirs
    assert err.count("\n") == 1 and "was not written by drecycle collect" in err and "--force" in err
    code, out, _ = run_cli(capsys, "--input_dir", str(folder), "--force")
    assert code == 0 and (folder / "results.txt").read_text() == out
    (folder / "results.txt").write_text(out + "my own notes\n")  # edited by hand after collect wrote it
    run_cli(capsys, "--input_dir", str(folder))
    assert (folder / "results.txt").read_text().endswith("my own notes\n")


def test_a_folder_where_the_tables_cannot_be_written_still_prints_them(tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURE / "sweep", copy)
    (copy / "results.txt").unlink()
    (copy / "results.txt").mkdir()  # unwritable for every user, root included
    code, out, err = run_cli(capsys, "--input_dir", str(copy))
    assert code == 0 and out.startswith("Total records: 200")
    assert err.count("\n") == 1 and err.startswith("note: tables not written to") and "--print_only" in err


def test_auto_lr_is_refused_in_one_line(sweep, capsys):
    code, out, err = run_cli(capsys, "--input_dir", sweep, "--auto_lr")
    assert code == 2 and out == "" and err.count("\n") == 1 and "train_autolr.py" in err
