"""DomainBed's three selection methods on hand-made sweeps whose answers are worked out by hand,
plus a randomised comparison with a plain per-record implementation of DomainBed's rules."""

from __future__ import annotations

import itertools
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from domainbed_recycle.collect import METHODS, collect, format_table, load_records, mean_and_se, select
from domainbed_recycle.rundir import RunDir


def record(test_envs, step, n_envs, *, h=0, t=0, acc_in=None, acc_out=None, dataset="Toy", names=None):
    """One record: every accuracy 0.5 unless given in `acc_in` / `acc_out` ({domain: acc})."""
    args = {
        "dataset": dataset,
        "algorithm": "ERM",
        "test_envs": list(test_envs),
        "hparams_seed": h,
        "trial_seed": t,
    }
    if names:
        args["environments"] = list(names)
    r = {"args": args, "step": step, "hparams": {}, "loss": 0.0}
    for i in range(n_envs):
        r[f"env{i}_in_acc"] = (acc_in or {}).get(i, 0.5)
        r[f"env{i}_out_acc"] = (acc_out or {}).get(i, 0.5)
    return r


def write_sweep(root: Path, runs: list[list[dict]]) -> Path:
    """One folder per run (names sort in list order), each with results.jsonl and done."""
    for k, run in enumerate(runs):
        folder = root / f"run{k:04d}"
        folder.mkdir(parents=True)
        (folder / RunDir.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in run))
        (folder / RunDir.DONE).write_text("")
    return root


def chosen(records, method):
    """{(test_env, trial_seed): (hparams_seed, step, test_acc)} of one method."""
    frame = select(records, method)
    return {
        (int(row.test_env), int(row.trial_seed)): (
            int(row.hparams_seed),
            int(row.step),
            round(row.test_acc, 9),
        )
        for row in frame.itertuples()
    }


# --- training-domain validation and oracle ---------------------------------------------------


@pytest.fixture
def iid_sweep(tmp_path):
    names = ("a", "b", "c")
    r = lambda *a, **k: record(*a, n_envs=3, names=names, **k)  # noqa: E731
    runs = [
        # trial 0, hparams 0: val 0.6, 0.7, 0.7 -> first best (step 1); last step 2 for the oracle
        [
            r([0], 0, h=0, acc_in={0: 0.10}, acc_out={0: 0.9, 1: 0.5, 2: 0.7}),
            r([0], 1, h=0, acc_in={0: 0.41}, acc_out={0: 0.0, 1: 0.8, 2: 0.6}),
            r([0], 2, h=0, acc_in={0: 0.99}, acc_out={0: 1.0, 1: 0.6, 2: 0.8}),
        ],
        # trial 0, hparams 1: val 0.65 < 0.7; oracle val (last step) 0.95 < 1.0
        [r([0], 0, h=1, acc_in={0: 0.50}, acc_out={0: 0.95, 1: 0.6, 2: 0.7})],
        # a two-test-env run: neither IID nor oracle may use it, however good
        [r([0, 1], 0, h=2, acc_in={0: 1.0}, acc_out={0: 1.0, 1: 1.0, 2: 1.0})],
        # trial 1: hparams 0 and 1 tie (val 0.8, oracle val 0.7) -> the larger hparams seed
        [r([0], 0, h=0, t=1, acc_in={0: 0.30}, acc_out={0: 0.7, 1: 0.8, 2: 0.8})],
        [r([0], 0, h=1, t=1, acc_in={0: 0.20}, acc_out={0: 0.7, 1: 0.9, 2: 0.7})],
    ]
    return load_records(write_sweep(tmp_path, runs))[0]


def test_iid_first_best_step_and_largest_hparams_on_ties(iid_sweep):
    assert chosen(iid_sweep, "iid") == {(0, 0): (0, 1, 0.41), (0, 1): (1, 0, 0.20)}


def test_oracle_last_step_no_early_stopping(iid_sweep):
    assert chosen(iid_sweep, "oracle") == {(0, 0): (0, 2, 0.99), (0, 1): (1, 0, 0.20)}


def test_iid_table_cells_and_x(iid_sweep):
    result = collect(iid_sweep, methods=["iid"])
    dataset, averages = result.tables
    header, rows = format_table(dataset)
    assert header == ["Algorithm", "a", "b", "c", "Avg"]
    # mean(0.41, 0.20) = 30.5; SE = 100 * std([.41, .20] / sqrt 2) = 100 * 0.105 / sqrt 2 = 7.42
    assert rows == [["ERM", "30.5 +/- 7.4", "X", "X", "X"]]
    # DomainBed averages a trial over the domains it has: here domain a only
    assert format_table(averages)[1] == [["ERM", "30.5 +/- 7.4", "30.5"]]
    strict = collect(iid_sweep, methods=["iid"], strict=True).tables[1]
    assert format_table(strict)[1] == [["ERM", "X", "X"]]


def test_oracle_ties_at_last_step_take_the_last_record_read(tmp_path):
    runs = [
        [
            record([1], 0, 2, acc_in={1: 0.1}),
            record([1], 5, 2, acc_in={1: 0.2}, acc_out={1: 0.3}),
            record([1], 5, 2, acc_in={1: 0.4}, acc_out={1: 0.1}),  # a restarted run wrote step 5 again
        ]
    ]
    records = load_records(write_sweep(tmp_path, runs))[0]
    assert chosen(records, "oracle") == {(1, 0): (0, 5, 0.4)}


def test_mean_and_se_is_population_std_over_sqrt_n():
    mean, se = mean_and_se([0.5, 0.7, 0.9])
    assert mean == pytest.approx(70.0)
    assert se == pytest.approx(100 * np.std([0.5, 0.7, 0.9]) / np.sqrt(3))
    assert np.isnan(mean_and_se([])[0])


# --- leave-one-domain-out ---------------------------------------------------------------------


@pytest.fixture
def loo_sweep(tmp_path):
    r = lambda *a, **k: record(*a, n_envs=4, dataset="Quad", **k)  # noqa: E731
    runs = [
        # test env 0, hparams 0: val(step 0) = mean(.6, .6, .6) = .6 = val(step 10) = mean(.8, .5, .5)
        # -> tie -> the earliest step: test acc 0.30
        [r([0], 0, acc_in={0: 0.30}), r([0], 10, acc_in={0: 0.40})],
        [r([0, 1], 0, acc_in={1: 0.6}), r([0, 1], 10, acc_in={1: 0.8})],
        [r([0, 2], 0, acc_in={2: 0.6}), r([0, 2], 10, acc_in={2: 0.5})],
        [r([3, 0], 0, acc_in={3: 0.6}), r([3, 0], 10, acc_in={3: 0.5})],  # pair written (3, 0)
        # test env 0, hparams 1: step 10 would score .9 but (0, 3) has no step 10 -> only step 0 (.5)
        [r([0], 0, h=1, acc_in={0: 0.50}), r([0], 10, h=1, acc_in={0: 0.70})],
        [r([0, 1], 0, h=1, acc_in={1: 0.5}), r([0, 1], 10, h=1, acc_in={1: 0.9})],
        [r([0, 2], 0, h=1, acc_in={2: 0.5}), r([0, 2], 10, h=1, acc_in={2: 0.9})],
        [r([0, 3], 0, h=1, acc_in={3: 0.5})],
        # test env 0, hparams 2: step 0 twice in the single run -> that step is dropped; nothing left
        [r([0], 0, h=2, acc_in={0: 0.9}), r([0], 0, h=2, acc_in={0: 0.9})],
        [r([0, 1], 0, h=2, acc_in={1: 1.0})],
        [r([0, 2], 0, h=2, acc_in={2: 1.0})],
        [r([0, 3], 0, h=2, acc_in={3: 1.0})],
        # test env 1: every pair exists ((0,1) above, (1,2), (1,3)) but the single run logged step 5
        [r([1], 5, acc_in={1: 0.77})],
        [r([1, 2], 0), r([1, 2], 10)],
        [r([1, 3], 0), r([1, 3], 11)],
        # test env 3: pairs (3,0) above, (1,3) above, (2,3) at steps 0 and 11; single at 0 and 10
        # -> only step 0 matches: val = mean(in0 of (3,0)@0 = .5, in1 of (1,3)@0 = .5, in2 of (2,3)@0 = .7)
        [r([3], 0, acc_in={3: 0.33}), r([3], 10, acc_in={3: 0.99})],
        [r([2, 3], 0, acc_in={2: 0.7}), r([2, 3], 11, acc_in={2: 1.0})],
        # test env 2 has no single-test-env run at all -> X
    ]
    return load_records(write_sweep(tmp_path, runs))[0]


def test_loo_semantics(loo_sweep):
    assert chosen(loo_sweep, "loo") == {(0, 0): (0, 0, 0.30), (3, 0): (0, 0, 0.33)}
    scores = METHODS["loo"].run_scores(loo_sweep)
    by_run = {(int(s.test_env), int(s.hparams_seed)): (int(s.step), s.val_acc) for s in scores.itertuples()}
    assert by_run[(0, 0)] == (0, pytest.approx(0.6))
    assert by_run[(0, 1)] == (0, pytest.approx(0.5))
    assert (0, 2) not in by_run  # duplicated single record at its only step
    assert not any(env == 1 for env, _ in by_run)  # step 5 has no matching pairs
    assert by_run[(3, 0)] == (0, pytest.approx((0.5 + 0.5 + 0.7) / 3))


def test_loo_table_marks_missing_domains_x(loo_sweep):
    header, rows = format_table(collect(loo_sweep, methods=["loo"]).tables[0])
    assert header == ["Algorithm", "env0", "env1", "env2", "env3", "Avg"]
    assert rows == [["ERM", "30.0 +/- 0.0", "X", "X", "33.0 +/- 0.0", "X"]]


def test_loo_without_paired_runs_is_all_x(iid_sweep):
    # DomainBed issue #127: a sweep launched with --single_test_envs has no LOO result at all
    single_only = iid_sweep[iid_sweep["n_test_envs"] == 1]
    assert select(single_only, "loo").empty
    header, rows = format_table(collect(single_only, methods=["loo"]).tables[0])
    assert rows == [["ERM", "X", "X", "X", "X"]]


def test_loo_two_domains(tmp_path):
    runs = [
        [record([0], 0, 2, acc_in={0: 0.2}), record([0], 1, 2, acc_in={0: 0.3})],
        [record([0, 1], 0, 2, acc_in={1: 0.9}), record([0, 1], 1, 2, acc_in={1: 0.4})],
    ]
    records = load_records(write_sweep(tmp_path, runs))[0]
    assert chosen(records, "loo") == {(0, 0): (0, 0, 0.2)}


# --- randomised comparison with a per-record implementation ----------------------------------


def reference_select(raw: list[dict], method: str) -> dict:
    """DomainBed's rules written as plain loops over records in reading order."""
    groups = defaultdict(list)
    for r in raw:
        for env in r["args"]["test_envs"]:
            groups[(env, r["args"]["trial_seed"])].append(r)
    result = {}
    for (env, trial), group in groups.items():
        by_seed = defaultdict(list)
        for r in group:
            by_seed[r["args"]["hparams_seed"]].append(r)
        best = None
        for seed in sorted(by_seed):
            score = RUN_SCORE[method](by_seed[seed], env)
            if score is not None and (best is None or score[0] >= best[0]):
                best = (*score, seed)
        if best is not None:
            result[(env, trial)] = (best[3], best[1], round(best[2], 9))
    return result


def _n_envs(r):
    return next(i for i in itertools.count() if f"env{i}_out_acc" not in r)


def _iid(run, env):
    best = None
    for r in run:
        if len(r["args"]["test_envs"]) != 1:
            continue
        n = _n_envs(r)
        val = float(np.mean([r[f"env{i}_out_acc"] for i in range(n) if i != env]))
        if best is None or val > best[0]:
            best = (val, r["step"], r[f"env{env}_in_acc"])
    return best


def _oracle(run, env):
    best = None
    for r in run:
        if len(r["args"]["test_envs"]) == 1 and (best is None or r["step"] >= best[1]):
            best = (r[f"env{env}_out_acc"], r["step"], r[f"env{env}_in_acc"])
    return best


def _loo(run, env):
    best = None
    for step in sorted({r["step"] for r in run}):
        at_step = [r for r in run if r["step"] == step]
        singles = [r for r in at_step if len(r["args"]["test_envs"]) == 1]
        if len(singles) != 1:
            continue
        n = _n_envs(singles[0])
        vals = {}
        for r in at_step:
            if len(r["args"]["test_envs"]) == 2:
                other = [v for v in r["args"]["test_envs"] if v != env][0]
                vals[other] = r[f"env{other}_in_acc"]
        if any(v not in vals for v in range(n) if v != env):
            continue
        val = sum(vals[v] for v in range(n) if v != env) / (n - 1)
        if best is None or val > best[0]:
            best = (val, step, singles[0][f"env{env}_in_acc"])
    return best


RUN_SCORE = {"iid": _iid, "oracle": _oracle, "loo": _loo}


def random_sweep(rng: random.Random, n_envs: int) -> list[list[dict]]:
    """Runs with coarse accuracies (many ties), dropped runs, shifted and duplicated steps."""
    runs = []
    envsets = [(e,) for e in range(n_envs)] + list(itertools.combinations(range(n_envs), 2))
    for test_envs, h, t in itertools.product(envsets, range(3), range(2)):
        if rng.random() < 0.15:
            continue
        steps = [s for s in (0, 10, 20) if rng.random() < 0.85] or [0]
        run = []
        for step in steps:
            if rng.random() < 0.1:
                step += 1
            envs = list(test_envs) if rng.random() < 0.5 else list(reversed(test_envs))
            acc = {i: rng.choice([0.2, 0.4, 0.6, 0.8]) for i in range(n_envs)}
            out = {i: rng.choice([0.2, 0.4, 0.6, 0.8]) for i in range(n_envs)}
            run.append(record(envs, step, n_envs, h=h, t=t, acc_in=acc, acc_out=out))
            if rng.random() < 0.05:
                run.append(record(envs, step, n_envs, h=h, t=t, acc_in=out, acc_out=acc))
        runs.append(run)
    return runs


@pytest.mark.parametrize("seed", range(12))
def test_matches_per_record_reference(tmp_path, seed):
    rng = random.Random(seed)
    runs = random_sweep(rng, n_envs=3 + seed % 2)
    records = load_records(write_sweep(tmp_path, runs))[0]
    raw = [r for run in runs for r in run]
    for method in METHODS:
        assert chosen(records, method) == reference_select(raw, method), method
