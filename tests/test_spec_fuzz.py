"""Property-style test of the spec validator: random values of the wrong type, sign, size or encoding, put
into a random key of a valid recycle or sweep spec, are refused in one line (exit 2), with nothing printed
on stdout and nothing written. Seeded (the same cases every run), in-process, about 10 s.

The bad values are made here from each key's declared Python type alone (what JSON kinds it takes), not
from the validator's rules: a value of another JSON kind, a negative or huge number (every number of these
specs is >= 0 and bounded), a non-finite one, a string with a NUL byte or a lone surrogate, a list or table
holding one of those. A spec file that is not UTF-8 is the last kind of case.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import pytest
import tomllib

from domainbed_recycle import cli
from domainbed_recycle.recycle import spec as recycle_spec
from domainbed_recycle.sweep.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]
SEED = 21
CASES = 160

# Valid specs (their output folder read against the spec's folder: work/out), each key then spoilt in turn.
BASE_RECYCLE = tomllib.loads((ROOT / "sweeps" / "recycle_tiny.toml").read_text()) | {"output_dir": "work/out"}
BASE_SWEEP = {"datasets": ["ColoredDigits"], "algorithms": ["ERM"], "test_envs": [0], "n_hparams": 1, "steps": 2,
              "output_dir": "work/out"}
SKIPPED = {"source", "notes"}  # filled in by the harness, not read from a spec


def _kinds(hint: Any) -> set[str]:
    """The JSON kinds a field of type `hint` takes: int, float, str, bool, list, dict, null."""
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) is Union or type(hint).__name__ == "UnionType":
        return set().union(*(_kinds(arg) for arg in get_args(hint)))
    origin = get_origin(hint) or hint
    if dataclasses.is_dataclass(hint) or origin is dict:
        return {"dict"}
    return {int: {"int"}, float: {"int", "float"}, str: {"str"}, bool: {"bool"}, list: {"list"},
            type(None): {"null"}}.get(origin, {"any"})


EXAMPLES = {"int": [3, -7, 2**63, 10**400], "float": [0.5, float("nan"), float("inf"), -1e300],
            "str": ["x", "a\x00b", "\ud800"], "bool": [True, False], "list": [[], ["x"], [1.5], ["\x00"]],
            "dict": [{}, {"x": 1}], "null": [None]}


def _bad_value(rng: random.Random, kinds: set[str]) -> Any:
    """A value no field of these kinds may hold (see the module docstring)."""
    wrong_kind = [v for kind, values in EXAMPLES.items() if kind not in kinds and kind != "null" for v in values
                  if not (kind == "int" and "float" in kinds)]
    numbers = [-1, -(2**63), 2**63, 10**400, float("nan"), float("inf"), -0.5] if kinds & {"int", "float"} else []
    numbers = [v for v in numbers if "float" in kinds or isinstance(v, int)] + (
        [float("nan"), 1e300, -1e-9] if "float" in kinds else [])
    text = ["a\x00b", "\ud800", "x\x00"] if "str" in kinds else []
    nested = [["a\x00"], [float("nan")], ["\ud800"], [-(2**70)]] if "list" in kinds else []
    tables = [{"x\x00": 1}, {"\ud800": 2}] if "dict" in kinds else []
    return rng.choice(wrong_kind + numbers + text + nested + tables)


def _fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in SKIPPED}


RECYCLE_KEYS = [(None, name, hint) for name, hint in _fields(recycle_spec.RecycleSpec).items()] + [
    (section, name, hint) for section, cls in recycle_spec._SECTIONS.items() for name, hint in _fields(cls).items()]
SWEEP_KEYS = [(None, name, hint) for name, hint in _fields(SweepSpec).items()]


def _cases() -> list[tuple[str, str | None, str, Any]]:
    rng = random.Random(SEED)
    cases = []
    for index in range(CASES):
        kind, keys = ("recycle", RECYCLE_KEYS) if index % 3 else ("sweep", SWEEP_KEYS)
        section, name, hint = rng.choice(keys)
        kinds = _kinds(hint)
        if "any" in kinds:  # an open table (hparams, slurm): a value it cannot take instead
            kinds = {"dict"}
        cases.append((kind, section, name, _bad_value(rng, kinds)))
    return cases


def _tree(path: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def _run(tmp_path: Path, kind: str, text: bytes, capsys) -> tuple[int, str, str, bool]:
    """Run the dry run of spec `text` in an empty folder: (exit code, stdout, stderr, nothing written)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    spec = tmp_path / "spec.json"
    spec.write_bytes(text)
    before = _tree(work)
    argv = ["recycle", str(spec), "--dry_run"] if kind == "recycle" else ["sweep", "launch", "--spec", str(spec),
                                                                         "--dry_run"]
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err, _tree(work) == before


@pytest.mark.parametrize("case", range(CASES))
def test_a_bad_value_in_any_key_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    kind, section, name, value = _cases()[case]
    values = json.loads(json.dumps(BASE_RECYCLE if kind == "recycle" else BASE_SWEEP))
    (values.setdefault(section, {}) if section else values)[name] = value
    text = json.dumps(values).encode("utf-8", "surrogatepass")
    code, out, err, untouched = _run(tmp_path, kind, text, capsys)
    where = f"{kind} spec, {section or 'top level'}.{name} = {value!r:.80}"
    lines = err.strip().splitlines()
    assert code == 2, f"{where}: exit {code}\n{out[-500:]}{err[-500:]}"
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith(f"drecycle {kind}: error: "), (where, err)
    assert out == "" and untouched, where


@pytest.mark.parametrize("kind", ["recycle", "sweep"])
def test_a_spec_file_that_is_not_utf8_is_one_line_exit_2(tmp_path, capsys, kind):
    rng = random.Random(SEED)
    base = json.dumps(BASE_RECYCLE if kind == "recycle" else BASE_SWEEP).encode()
    for _ in range(10):
        at = rng.randrange(len(base))
        text = base[:at] + bytes([rng.choice([0x80, 0xC3, 0xE9, 0xFF, 0xFE])]) + base[at:]
        code, out, err, untouched = _run(tmp_path, kind, text, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "not UTF-8" in err, err
        assert out == "" and untouched


# `drecycle train`'s flags: each case spoils one flag of a valid command (values refused by their type,
# sign, size or encoding), chosen at random (seeded). Refused before anything is loaded or written.
TRAIN_OK = {"--dataset": "ColoredDigits", "--test_envs": ["0"], "--steps": "2", "--checkpoint_freq": "2",
            "--hparams": '{"cnn_width": 8}', "--threads": "1"}
TRAIN_BAD = {
    "--steps": ["-1", "0", str(10**12), "x", "1.5", "nan"],
    "--checkpoint_freq": ["0", "-3", str(2**63), "1e3"],
    "--threads": ["0", "-1", str(10**6), "x"],
    "--seed": ["-1", str(2**64), "1e20"],
    "--hparams_seed": ["-1", str(2**64)],
    "--trial_seed": ["-5", str(2**70)],
    "--holdout_fraction": ["nan", "inf", "-0.5", "1", "0", "x"],
    "--hparams": ['{"cnn_width": 0}', '{"cnn_width": 1000000000}', "[1]", "nan", '{"lr": NaN}',
                  '{"batch_size": -1}', '{"lr": Infinity}', '{"dropout": "x"}', "{"],
    "--test_envs": [["-1"], ["99"], ["x"], ["0", "0"]],
    "--dataset": ["", "NoSuchDataset", "a\x00b", "\ud800"],
    "--output_dir": ["", "a\x00b"],
    "--algorithm": ["", "NoSuchAlgorithm"],
    "--uda_holdout_fraction": ["nan", "1", "-0.1", "inf"],
    "--loader_workers": ["-1", str(10**6)],
    "--prefetch_factor": ["0", str(10**6)],
    "--precision": ["fp8", ""],
}
TRAIN_CASES = 50


def _train_cases() -> list[tuple[str, Any]]:
    rng = random.Random(SEED)
    flags = sorted(TRAIN_BAD)  # each flag once, then flags at random
    chosen = flags + [rng.choice(flags) for _ in range(TRAIN_CASES - len(flags))]
    return [(flag, rng.choice(TRAIN_BAD[flag])) for flag in chosen]


@pytest.mark.parametrize("case", range(TRAIN_CASES))
def test_a_bad_train_flag_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    flag, value = _train_cases()[case]
    values = dict(TRAIN_OK, **{"--output_dir": "run"}) | {flag: value}
    argv = ["train"] + [item for key, v in values.items() for item in [key, *(v if isinstance(v, list) else [v])]]
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    where = f"train {flag} {value!r}"
    assert code == 2, f"{where}: exit {code}\n{captured.out[-500:]}{captured.err[-500:]}"
    assert len(lines) == 1 and "Traceback" not in captured.err and lines[0].startswith("drecycle train"), (where, lines)
    assert list(tmp_path.iterdir()) == [], where


def test_an_output_dir_that_is_not_utf8_is_a_path_like_any_other(tmp_path, capsys, monkeypatch):
    """A byte such as 0xff in a folder name (Python's "\\udcff") names a folder the system can make: the run
    trains, and its summary prints the name escaped (it once crashed after training)."""
    monkeypatch.chdir(tmp_path)
    argv = ["train"] + [item for key, v in TRAIN_OK.items() for item in [key, *(v if isinstance(v, list) else [v])]]
    assert cli.main([*argv, "--no_progress", "--output_dir", "\udcff"]) == 0
    assert "run folder: \\udcff" in capsys.readouterr().out
    assert os.listdir(b".") == [b"\xff"] and (tmp_path / "\udcff" / "done").is_file()
