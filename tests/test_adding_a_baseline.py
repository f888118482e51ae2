"""The README's "Adding a baseline" recipe, run as written: its Python block becomes a user module
outside the package, `DRECYCLE_PLUGINS` names it, its `drecycle sweep launch` command runs (pool
launcher: separate worker processes that must import the module themselves) and `drecycle collect`
prints a row for the new algorithm with a number in the test-domain column.

The section is read from README.md when it has it, else from docs/adding_a_baseline.md, so the
test breaks if the text and the code drift apart.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_NET

from domainbed_recycle import cli, hparams_registry
from domainbed_recycle.algorithms import ALGORITHMS, get_algorithm_class
from domainbed_recycle.algorithms.erm import ERM
from domainbed_recycle.collect import load_records
from domainbed_recycle.errors import UserError
from domainbed_recycle.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Adding a baseline"
MODULE = "my_baselines"  # the module name the section uses
FAST = ["--hparams", json.dumps(TINY_NET), "--checkpoint_freq", "10", "--no_progress"]  # speed only


def section_text() -> str:
    """The README's section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(HEADING):]
    following = re.search(r"^## ", section[len(HEADING):], flags=re.M)
    return section[: len(HEADING) + following.start()] if following else section


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def drecycle_commands(bash: str) -> list[list[str]]:
    """Each `drecycle ...` command of a bash block as argv (after `drecycle`), env prefixes dropped."""
    commands = []
    for line in bash.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words.pop(0)
        if words and words[0] == "drecycle":
            commands.append(words[1:])
    return commands


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The section's module written to tmp_path/my_baselines.py, exposed as its text says (PYTHONPATH,
    DRECYCLE_PLUGINS); the registry is a copy, restored (and the module forgotten) afterwards."""
    (tmp_path / f"{MODULE}.py").write_text(code_blocks(section_text(), "python")[0], encoding="utf-8")
    monkeypatch.setattr(ALGORITHMS, "_items", dict(ALGORITHMS._items))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("DRECYCLE_PLUGINS", MODULE)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def test_the_section_fits_its_budget():
    assert len(section_text().rstrip("\n").splitlines()) < 39


def test_the_new_baseline_is_found_by_name_with_its_hyper_parameter(plugin):
    cls = get_algorithm_class("LabelSmoothing")  # imports $DRECYCLE_PLUGINS
    assert issubclass(cls, ERM) and "LabelSmoothing" in ALGORITHMS
    assert hparams_registry.default_hparams("LabelSmoothing")["smoothing"] == 0.1
    draws = [hparams_registry.random_hparams("LabelSmoothing", "small", seed)["smoothing"] for seed in (1, 2, 3)]
    assert all(0.0 <= d <= 0.2 for d in draws) and len(set(draws)) == 3
    assert "smoothing" not in hparams_registry.default_hparams("ERM")
    assert hparams_registry.default_hparams("LabelSmoothing").keys() > hparams_registry.default_hparams("ERM").keys()
    with pytest.raises(UserError, match="'smoothing' must be a finite number >= 0 and <= 1, got 2"):
        hparams_registry.get_hparams("LabelSmoothing", "small", 0, {"smoothing": 2})


@pytest.mark.slow
def test_sweep_and_collect_as_the_section_says(plugin, capsys):
    sweep_argv, collect_argv = drecycle_commands(code_blocks(section_text(), "bash")[0])
    assert sweep_argv[:2] == ["sweep", "launch"] and collect_argv[0] == "collect"
    sweep_dir = str(plugin / "runs" / "ls")
    sweep_argv = with_option(sweep_argv, "--output_dir", sweep_dir) + ["--launcher", "pool", "--n_workers", "2"]
    assert cli.main(sweep_argv + FAST) == 0
    capsys.readouterr()

    records, _ = load_records(sweep_dir, only_done=True)
    ours = records[records["algorithm"] == "LabelSmoothing"]
    assert sorted(set(ours["trial_seed"])) == [0, 1]
    assert set(records["algorithm"]) == {"ERM", "LabelSmoothing"}
    run = next(p for p in Path(sweep_dir).iterdir() if '"LabelSmoothing"' in (p / RunDir.ARGS).read_text())
    assert '"smoothing": 0.1' in (run / RunDir.RESULTS).read_text()  # hparams seed 0: the default

    assert cli.main(with_option(collect_argv, "--input_dir", sweep_dir) + ["--markdown", "--selection", "iid"]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| Algorithm") and "| 0 " in line)
    row = next(line for line in table.splitlines() if line.startswith("| LabelSmoothing"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")], strict=True))
    mean = float(cells["0"].split("+/-")[0])  # test domain 0: a number, not X
    assert 0.0 < mean <= 100.0 and not math.isnan(mean)


@pytest.mark.slow
def test_a_fresh_drecycle_sweep_accepts_the_plugin_algorithm(plugin):
    command = [sys.executable, "-m", "domainbed_recycle.cli", "sweep", "launch", "--datasets", "RotatedDigits",
               "--algorithms", "LabelSmoothing", "--test_envs", "0", "--dry_run", "--output_dir", str(plugin / "d")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_unimportable_plugin_is_a_user_error(monkeypatch):
    monkeypatch.setenv("DRECYCLE_PLUGINS", "ERM_no_such_module_xyz")
    with pytest.raises(UserError, match="DRECYCLE_PLUGINS: no module named 'ERM_no_such_module_xyz'"):
        get_algorithm_class("ERM")
