"""Combine costs, measured side by side in one run (issue: "O(M) combine, streaming ensembles").

1. Accuracy-vs-M curve of a uniform soup: the prefix averages folded forward
   (`averaging.prefix_averages`: M checkpoint reads; live accumulators as the combine stage uses them, or
   copies) vs rebuilding every prefix from scratch (the former code: M(M+1)/2 reads), against the cost of
   ONE average of the M checkpoints; then the same with every average loaded into a model.
2. Memory of a prediction ensemble: `evaluation.ProbabilityEnsemble` (a running sum) vs keeping every
   member's probabilities, as peak RSS of a fresh process, for several M.

Usage: python benchmarks/bench_combine.py [--models 16] [--arch resnet18] [--samples 20000 --classes 345]
Checkpoints are random weights of the named torchvision architecture, saved as safetensors in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from domainbed_recycle.averaging import prefix_averages, uniform_average
from domainbed_recycle.checkpoints import load_checkpoint, save_checkpoint


def _write_models(folder: Path, arch: str, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = getattr(torchvision.models, arch)(weights=None)
        paths.append(save_checkpoint(folder / f"m{i}.safetensors", model.state_dict(), {"arch": arch}))
    return paths


def _timed(fn, repeats: int = 7) -> float:
    """Best of `repeats` wall times (s): the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def curve_costs(paths: list[Path], arch: str) -> dict[str, float]:
    """Wall times (s) of one average and of the curve's M prefix averages, each way; `+ model` rows also
    load every average produced into a model (what evaluating it needs), so the last rows compare
    what a curve really costs with what one evaluated average costs."""
    load = lambda path: load_checkpoint(path)[0]  # noqa: E731
    model = getattr(torchvision.models, arch)(weights=None)
    loads = lambda states: [model.load_state_dict(s) for s in states]  # noqa: E731
    return {
        "one average": _timed(lambda: uniform_average(load(p) for p in paths)),
        "curve, folded live (now)": _timed(lambda: [None for _ in prefix_averages((load(p) for p in paths),
                                                                                     copies=False)]),
        "curve, folded copies": _timed(lambda: [None for _ in prefix_averages(load(p) for p in paths)]),
        "curve, rebuilt (before)": _timed(
            lambda: [uniform_average(load(p) for p in paths[:k]) for k in range(1, len(paths) + 1)]),
        "one average + model": _timed(lambda: loads([uniform_average(load(p) for p in paths)])),
        "curve live + model": _timed(lambda: loads(prefix_averages((load(p) for p in paths), copies=False))),
    }


_CHILD = """
import sys, torch
from domainbed_recycle.evaluation import ProbabilityEnsemble
mode, m, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
labels = torch.randint(c, (n,))
ensemble, kept = ProbabilityEnsemble(), []
for i in range(m):
    member = {"env0_in": (torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(i)), 1), labels)}
    if mode == "streaming":
        ensemble.add(member)
    else:
        kept.append(member)
if mode != "streaming":
    torch.stack([k["env0_in"][0] for k in kept]).mean(0).argmax(1)
# VmHWM: this process's own peak (getrusage's ru_maxrss survives exec, so it would report the parent's)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024)
"""


def ensemble_memory(m: int, samples: int, classes: int, mode: str, fixed_mmap_threshold: bool = False) -> float:
    """Peak RSS (MiB, VmHWM) of a fresh process building an ensemble of `m` members.

    `fixed_mmap_threshold`: run the child with glibc's mmap threshold fixed at 1 MiB. By default glibc
    raises the threshold after freeing a large block, so later member-sized blocks come from the heap and
    fragment it: the peak then creeps up with M for reasons of the allocator, not of the algorithm."""
    env = os.environ | ({"MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if fixed_mmap_threshold else {})
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(m), str(samples), str(classes)],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--samples", type=int, default=20000, help="examples per split (ensemble memory)")
    parser.add_argument("--classes", type=int, default=345, help="classes (DomainNet has 345)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_models(Path(tmp), args.arch, args.models)
        costs = curve_costs(paths, args.arch)
    print(f"1. accuracy-vs-M curve, M = {args.models} {args.arch} checkpoints (s, and x one average; "
          f"'+ model' rows: x one average loaded into a model):")
    for name, seconds in costs.items():
        base = costs["one average + model" if "model" in name else "one average"]
        print(f"   {name:<26} {seconds:7.2f} s  {seconds / base:5.2f}x")
    print(f"2. prediction ensemble, {args.samples} examples x {args.classes} classes, peak RSS (MiB) of a fresh "
          f"process; glibc default / mmap threshold fixed at 1 MiB:")
    print(f"   {'M':>4} {'streaming (now)':>22} {'all members (before)':>24}")
    for m in (2, 8, 32):
        now = [ensemble_memory(m, args.samples, args.classes, "streaming", fixed) for fixed in (False, True)]
        before = [ensemble_memory(m, args.samples, args.classes, "kept", fixed) for fixed in (False, True)]
        print(f"   {m:>4} {now[0]:11.0f} / {now[1]:6.0f} {before[0]:13.0f} / {before[1]:6.0f}")


if __name__ == "__main__":
    main()
