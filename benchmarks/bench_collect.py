"""Benchmark: `drecycle collect`'s code path vs the floor and vs a per-record Python collector.

Writes a synthetic sweep (default 10,000 run folders × 5 records: 2 datasets × 5 algorithms ×
5 trial seeds × 20 hparams seeds × 10 test-env sets of 4 domains) to a temporary folder, then
times, interleaved, best of `--repeats`:

- floor: reading every `results.jsonl` and decoding every line, with `json.loads` (the floor as
  issue 10 defines it) and with the collector's decoder (orjson when installed);
- ours: `load_records` + all three selection methods + all tables (`collect`), with the fast
  decoder when installed and with the standard library's `json` only;
- naive (once): one loop over the records, DomainBed-style dicts, training-domain validation only.

It checks that every variant prints identical tables and that the naive loop gives the same
training-domain-validation cells, then prints the times and the ratios.
Usage: `python benchmarks/bench_collect.py [--runs N] [--records R] [--repeats K] [--keep DIR]`.
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
from contextlib import contextmanager
from pathlib import Path

from domainbed_recycle.collect import collect, format_table, jsonl, load_records, render

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


def floor(input_dir: str, loads=json.loads) -> int:
    """Read every results file and decode every line with `loads`; the number of records."""
    n = 0
    for name in sorted(os.listdir(input_dir)):
        try:
            with open(os.path.join(input_dir, name, "results.jsonl"), "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            continue
        for line in data.splitlines():
            if line.strip():
                loads(line)
                n += 1
    return n


@contextmanager
def stdlib_json():
    """The collector as users without the `fast` extra run it (decoder: `json` only)."""
    saved = jsonl._fast_loads
    jsonl._fast_loads = None
    try:
        yield
    finally:
        jsonl._fast_loads = saved


def our_collect_stdlib(input_dir: str):
    with stdlib_json():
        return our_collect(input_dir)


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
        folder = str(root)
        n_lines = floor(folder)  # warms the page cache for all
        variants = {
            "floor, json.loads per line": lambda: floor(folder),
            f"floor, {jsonl.DECODER} per line": lambda: floor(folder, jsonl.loads),
            f"ours ({jsonl.DECODER}): load + iid + loo + oracle + tables": lambda: our_collect(folder),
            "ours (json only): load + iid + loo + oracle + tables": lambda: our_collect_stdlib(folder),
        }
        wall = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        results = {}
        for _ in range(args.repeats):  # interleaved, so that load from other processes hits all
            for name, fn in variants.items():
                results[name], w, c = timed(fn)
                wall[name].append(w)
                cpu[name].append(c)
        floor_json, floor_fast, ours, ours_json = variants
        texts = {render(results[name], "text") for name in (ours, ours_json)}
        assert len(texts) == 1, "the two decoders give different tables"
        assert results[ours].total_records == n_lines == results[floor_json], "records lost"

        naive, naive_wall, naive_cpu = timed(naive_iid_cells, folder)
        mine = our_iid_cells(results[ours])
        assert not [k for k, v in mine.items() if v == "X"], "X cells in our table"
        assert mine == naive, "ours and the naive collector disagree"

        n_runs = sum(1 for path in root.iterdir() if path.is_dir())
        print(f"{n_runs} runs, {n_lines} records; tables identical with {jsonl.DECODER} and json only;")
        print(f"IID cells equal to the naive collector's ({len(mine)} cells)")
        print(f"best of {args.repeats}, interleaved, wall / CPU seconds:")
        for name in variants:
            print(f"  {name:58s} {min(wall[name]):6.3f} / {min(cpu[name]):6.3f}")
        print(f"  {'naive (load + iid only, per-record loops), once':58s} {naive_wall:6.3f} / {naive_cpu:6.3f}")
        best = {name: min(cpu[name]) for name in variants}
        print("ratios (CPU):")
        print(f"  ours ({jsonl.DECODER}) / floor (json.loads):   {best[ours] / best[floor_json]:.2f}x")
        print(f"  ours ({jsonl.DECODER}) / floor ({jsonl.DECODER}):  {best[ours] / best[floor_fast]:.2f}x")
        print(f"  ours (json only) / floor (json.loads): {best[ours_json] / best[floor_json]:.2f}x")
        print(f"  naive / ours ({jsonl.DECODER}):            {naive_cpu / best[ours]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
