"""Benchmark: `drecycle collect`'s code path vs a straightforward per-record Python collector.

Writes a synthetic sweep (default 10,000 run folders × 5 records: 2 datasets × 5 algorithms ×
5 trial seeds × 20 hparams seeds × 10 test-env sets of 4 domains) to a temporary folder, then times

- ours: `load_records` + all three selection methods + all tables (`collect`);
- naive: one loop over the records, DomainBed-style dicts, training-domain validation only.

It checks that both give the same training-domain-validation cells, and prints both times and
their ratio. Usage: `python benchmarks/bench_collect.py [--runs N] [--records R] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from domainbed_recycle.collect import collect, format_table, load_records

N_ENVS = 4
DATASETS = ("VLCS", "PACS")
ALGORITHMS = ("ERM", "CORAL", "Soup-uniform", "Ratatouille-uniform", "Ensemble")
TEST_ENVS = [[e] for e in range(N_ENVS)] + [list(p) for p in itertools.combinations(range(N_ENVS), 2)]


def write_sweep(root: Path, n_runs: int, n_records: int, seed: int = 0) -> None:
    """`n_runs` run folders of `n_records` records each, DomainBed's keys plus some of ours."""
    rng = random.Random(seed)
    # spread the runs over trials and hparams seeds so that every (dataset, algorithm) gets whole sweeps
    per_alg = max(1, n_runs // (len(DATASETS) * len(ALGORITHMS) * len(TEST_ENVS)))
    n_trials = 5
    n_hparams = max(1, per_alg // n_trials)
    combos = itertools.product(DATASETS, ALGORITHMS, range(n_trials), range(n_hparams), TEST_ENVS)
    for k, (dataset, algorithm, trial, hseed, test_envs) in enumerate(itertools.islice(combos, n_runs)):
        folder = root / f"{k:06d}"
        folder.mkdir()
        args = {
            "dataset": dataset,
            "algorithm": algorithm,
            "test_envs": test_envs,
            "hparams_seed": hseed,
            "trial_seed": trial,
            "output_dir": str(folder),
            "steps": 1000,
        }
        lines = []
        for r in range(n_records):
            record = {"args": args, "step": r * 250, "epoch": r * 0.5, "loss": rng.random(), "step_time": 0.1}
            record.update({"mem_gb": 1.0, "hparams": {"lr": 1e-4, "batch_size": 32}, "strategy": algorithm})
            for i in range(N_ENVS):
                record[f"env{i}_in_acc"] = round(rng.random(), 4)
                record[f"env{i}_out_acc"] = round(rng.random(), 4)
            lines.append(json.dumps(record, sort_keys=True) + "\n")
        (folder / "results.jsonl").write_text("".join(lines))
        (folder / "done").write_text("done")


def naive_load(input_dir: str) -> list[dict]:
    """Every record of every run folder, one `json.loads` a line."""
    records = []
    for name in sorted(os.listdir(input_dir)):
        path = os.path.join(input_dir, name, "results.jsonl")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                if line.strip():
                    records.append(json.loads(line))
    return records


def naive_iid_cells(input_dir: str) -> dict[tuple[str, str, int], str]:
    """Load + training-domain validation cells, per record in plain Python."""
    return naive_iid_cells_from(naive_load(input_dir))


def naive_iid_cells_from(records: list[dict]) -> dict[tuple[str, str, int], str]:
    """Training-domain validation cells {(dataset, algorithm, env): cell}, one Python loop per stage."""
    # best record per run (first on ties), runs = (trial, dataset, algorithm, test env, hparams seed)
    runs: dict[tuple, tuple[float, float]] = {}
    for r in records:
        a = r["args"]
        if len(a["test_envs"]) != 1:
            continue
        env = a["test_envs"][0]
        n = 0
        while f"env{n}_out_acc" in r:
            n += 1
        val = sum(r[f"env{i}_out_acc"] for i in range(n) if i != env) / (n - 1)
        key = (a["trial_seed"], a["dataset"], a["algorithm"], env, a["hparams_seed"])
        if key not in runs or val > runs[key][0]:
            runs[key] = (val, r[f"env{env}_in_acc"])
    # best run per (trial, dataset, algorithm, test env): ties -> larger hparams seed
    best: dict[tuple, tuple[float, int, float]] = {}
    for (trial, dataset, algorithm, env, hseed), (val, test) in runs.items():
        key = (trial, dataset, algorithm, env)
        if key not in best or (val, hseed) > best[key][:2]:
            best[key] = (val, hseed, test)
    trials: dict[tuple, list[float]] = defaultdict(list)
    for (_trial, dataset, algorithm, env), (_, _, test) in sorted(best.items()):
        trials[(dataset, algorithm, env)].append(test)
    cells = {}
    for key, accs in trials.items():
        mean = sum(accs) / len(accs)
        se = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs)) / math.sqrt(len(accs))
        cells[key] = f"{100 * mean:.1f} +/- {100 * se:.1f}"
    return cells


def our_collect(input_dir: str):
    """Load + all three selection methods + all tables."""
    records, report = load_records(input_dir)
    return collect(records, report=report)


def our_iid_cells(result) -> dict[tuple[str, str, int], str]:
    cells = {}
    for table in result.tables:
        if table.selection != "iid" or table.dataset is None:
            continue
        _, rows = format_table(table)
        for row in rows:
            for env, cell in enumerate(row[1:-1]):
                cells[(table.dataset, row[0], env)] = cell
    return cells


def timed(fn, *args):
    """(value, wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many")
    parser.add_argument("--keep", help="write the sweep here (and keep it) instead of a temp folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not any(root.iterdir()):
            _, write_s, _ = timed(write_sweep, root, args.runs, args.records)
            print(f"wrote {args.runs} runs x {args.records} records in {write_s:.1f}s")
        naive_iid_cells(str(root))  # warm the page cache for both
        ours_wall, ours_cpu, naive_wall, naive_cpu, load_cpu = [], [], [], [], []
        for _ in range(args.repeats):  # interleaved, so that load from other processes hits both
            (records, _), _, cpu = timed(load_records, str(root))
            load_cpu.append(cpu)
            result, wall, cpu = timed(our_collect, str(root))
            ours_wall.append(wall)
            ours_cpu.append(cpu)
            naive, wall, cpu = timed(naive_iid_cells, str(root))
            naive_wall.append(wall)
            naive_cpu.append(cpu)
        ours = our_iid_cells(result)
        missing = [k for k, v in ours.items() if v == "X"]
        assert not missing, f"X cells in our table: {missing[:5]}"
        assert ours == naive, "the two collectors disagree"

        # the selection itself, records already in memory (ours: a DataFrame; naive: dicts)
        raw = naive_load(str(root))
        hot_ours, hot_iid, hot_naive = [], [], []
        for _ in range(args.repeats):
            _, _, cpu = timed(collect, records)
            hot_ours.append(cpu)
            iid_only, _, cpu = timed(collect, records, ["iid"])
            hot_iid.append(cpu)
            naive_hot, _, cpu = timed(naive_iid_cells_from, raw)
            hot_naive.append(cpu)
        assert our_iid_cells(iid_only) == naive_hot == naive

        print(f"records: {len(records)}; IID cells compared: {len(ours)} (all equal)")
        print(f"end to end (from the folder), best of {args.repeats}, wall / CPU seconds:")
        print(
            f"  ours  (load + iid + loo + oracle + tables): {min(ours_wall):.2f} / {min(ours_cpu):.2f}"
            f"  (load alone: {min(load_cpu):.2f} CPU)"
        )
        print(f"  naive (load + iid only, per-record loops):  {min(naive_wall):.2f} / {min(naive_cpu):.2f}")
        print(
            f"  ratio naive / ours: {min(naive_wall) / min(ours_wall):.2f}x wall, "
            f"{min(naive_cpu) / min(ours_cpu):.2f}x CPU"
        )
        print("selection + tables only (records in memory), CPU seconds:")
        print(f"  ours iid + loo + oracle + tables: {min(hot_ours):.3f}")
        print(f"  ours iid + tables:                {min(hot_iid):.3f}")
        print(f"  naive iid (per-record loops):     {min(hot_naive):.3f}")
        print(
            f"  ratio naive / ours: {min(hot_naive) / min(hot_iid):.2f}x (iid vs iid), "
            f"{min(hot_naive) / min(hot_ours):.2f}x (iid vs all three)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
