"""Our merging operators give mergekit's and FusionBench's tensors where the definitions agree (the cases of
`scripts/merging_crosscheck.py`, whose record is in results/merging_crosscheck/). Runs only where a library
is installed (`pip install -e '.[crosscheck]'`); skipped with the reason otherwise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "merging_crosscheck.py"


def _script():
    spec = importlib.util.spec_from_file_location("merging_crosscheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # imports transformers, lightning and the libraries' own stacks
@pytest.mark.parametrize("library, module", [("mergekit", "mergekit"), ("FusionBench", "fusion_bench")])
def test_operators_equal_the_library_where_the_definitions_agree(library, module):
    pytest.importorskip(module, reason=f"{library} is not installed (pip install -e '.[crosscheck]')")
    results = _script().run_cases(library)
    agreeing = [r for r in results if r["definitions_agree"]]
    assert agreeing, library
    for r in agreeing:
        assert r["equal"] and r["max_moved_from_theta0"] > 1e-3, r  # equal, and not two copies of θ0
    for r in results:
        if not r["definitions_agree"]:  # a documented difference must show on these inputs
            assert not r["equal"] and r["note"], r
