"""The built-in regime is chosen on a development domain that no shipped result reports (issue 19).

sweeps/recycle_pilot.toml holds out only TextureMNIST's `plain`, the development domain, and is where
the regime was chosen; sweeps/recycle_builtin.toml and sweeps/recycle_demo.toml report other domains
only, with the same regime (so the regime reported is the regime chosen)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from domainbed_recycle.datasets import DATASETS
from domainbed_recycle.recycle.spec import load_recycle_spec

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
DEVELOPMENT = "plain"
# what may differ between the pilot and the reported specs: which cells and how many runs, not how runs train
SCALE = {"auxiliary": {"n_runs"}, "target": {"test_envs", "n_trials", "n_runs"}}


def _spec(name: str):
    return load_recycle_spec(SWEEPS / f"recycle_{name}.toml")


def _held_out(spec) -> set[str]:
    (dataset,) = spec.target.datasets
    envs = DATASETS.get(dataset).ENVIRONMENTS
    return {envs[e] for e in (spec.target.test_envs if spec.target.test_envs is not None else range(len(envs)))}


def _regime(spec) -> dict:
    return {section: {k: v for k, v in asdict(getattr(spec, section)).items() if k not in SCALE.get(section, set())}
            for section in ("foundation", "auxiliary", "probe", "target")}


def test_the_pilot_holds_out_only_the_development_domain_and_the_reported_specs_never_do():
    assert _held_out(_spec("pilot")) == {DEVELOPMENT}
    for name in ("builtin", "demo"):
        held_out = _held_out(_spec(name))
        assert held_out and DEVELOPMENT not in held_out, name


def test_the_reported_specs_run_the_regime_the_pilot_chose():
    pilot = _regime(_spec("pilot"))
    for name in ("builtin", "demo"):
        assert _regime(_spec(name)) == pilot, name
