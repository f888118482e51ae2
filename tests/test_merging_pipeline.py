"""The merging strategies end to end on a tiny recycling spec: a number in every row, hyper-parameters
chosen on training-domain validation with their grid curve kept, the gate's verdicts recorded."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_NET

from domainbed_recycle import merge_ops
from domainbed_recycle.recycle.pipeline import Pipeline
from domainbed_recycle.recycle.spec import spec_from_dict

pytestmark = pytest.mark.slow  # runs a recycling pipeline (every stage trains)

MERGING = ["WiSE-FT", "TaskArithmetic", "TIES", "DARE", "Fisher", "ModelStock", "EoA", "Ratatouille-gated", "SLERP"]
SPEC = {
    "launcher": "inprocess",
    "strategies": ["LP-FT", "MovingAverage", "Ratatouille", *MERGING],
    "foundation": {"dataset": "Textures", "steps": 30, "checkpoint_freq": 30, "hparams": TINY_NET},
    "auxiliary": {"datasets": ["Glyphs"], "steps": 10, "checkpoint_freq": 10,
                  "hparams": TINY_NET, "hparams_profile": "small_finetune"},
    "probe": {"steps": 10, "checkpoint_freq": 10, "hparams": TINY_NET},
    "target": {"datasets": ["RotatedDigits"], "test_envs": [5], "n_trials": 1, "n_runs": 2, "n_runs_small": 1,
               "steps": 10, "checkpoint_freq": 10, "hparams": TINY_NET | {"ma_start_step": 4},
               "hparams_profile": "small_finetune"},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("merging")
    pipeline = Pipeline(spec_from_dict(SPEC | {"output_dir": str(out)}))
    return pipeline, pipeline.run()


def _combined(pipeline, variant):
    for path in (pipeline.out / "combined").glob("*.json"):
        content = json.loads(path.read_text())
        for outcome in content.get("outcomes", []) if isinstance(content, dict) else []:
            if isinstance(outcome, dict) and outcome.get("variant") == variant:
                return outcome
    raise AssertionError(f"{variant} not combined")


def test_every_merging_row_gets_a_number_and_reuses_the_runs(finished):
    pipeline, table = finished
    rows = {line.split()[0]: line for line in table.splitlines() if line.split() and line.split()[0] in MERGING}
    assert set(rows) == set(MERGING)
    for line in rows.values():
        assert line.split()[2] == "+/-" and 0.0 <= float(line.split()[1]) <= 100.0
    # LP-FT pool 2 + MA 1 + aux pool: 1 new (its phi0 run is LP-FT's): no run of their own
    assert len(list((pipeline.out / "target").glob("*/done"))) == 4


def test_hyper_parameters_are_chosen_on_validation_from_the_grid(finished):
    pipeline, _ = finished
    wise = _combined(pipeline, "WiSE-FT")["info"]
    assert [p["alpha"] for p in wise["grid"]] == list(merge_ops.get("wise_ft").param("alpha").grid)
    best = max(wise["grid"], key=lambda p: p["val_acc"])
    assert wise["chosen"] == {"alpha": best["alpha"]} and "test_acc" in best and wise["fine_tuned"] in wise["members"]
    for variant, name in [("TaskArithmetic", "task_arithmetic"), ("TIES", "ties"), ("DARE", "dare")]:
        info = _combined(pipeline, variant)["info"]
        assert len(info["grid"]) == len(merge_ops.strategy_grid(merge_ops.get(name)))
        chosen = max(info["grid"], key=lambda p: p["val_acc"])
        assert {k: chosen[k] for k in info["chosen"]} == info["chosen"]
    gated = _combined(pipeline, "Ratatouille-gated")["info"]
    assert len(gated["selected"]) + len(gated["refused"]) == len(gated["members"]) == 2
    assert 0.0 <= _combined(pipeline, "ModelStock")["info"]["ratio_mean"] <= 1.0
