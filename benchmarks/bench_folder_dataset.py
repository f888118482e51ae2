"""Benchmark: training on a user's `folder:` dataset, before (224 px, every image decoded every step)
and after (64 px from the decode-once cache), side by side in one run.

Writes a synthetic tree like the one of the report that motivated the cache (4 domains x 4 classes x
40 small PNGs of varied sizes: class = where a bright patch sits, domain = background tint and noise),
then trains the small CNN (hparams profile "small", ERM, test domain 0) for `--steps` steps on each
variant and prints, per variant: wall time of the whole `train` call (dataset build, training, one
final evaluation of every split), training steps/s, held-out accuracy, and the ratio after/before.

Usage: `python benchmarks/bench_folder_dataset.py [--steps 20] [--threads T] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from domainbed_recycle.training import TrainConfig, train

N_DOMAINS, N_CLASSES, PER_CLASS = 4, 4, 40


def write_tree(root: Path, seed: int = 0) -> None:
    """root/d<k>/c<j>/<i>.png: 40-80 px RGB images; class j puts a bright patch in quadrant j."""
    rng = np.random.default_rng(seed)
    for d in range(N_DOMAINS):
        tint = rng.integers(0, 160, 3)
        for c in range(N_CLASSES):
            folder = root / f"d{d}" / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(PER_CLASS):
                h, w = rng.integers(40, 81, 2)
                pixels = tint + rng.normal(0, 10 + 15 * d, (h, w, 3))
                y0, x0 = (c // 2) * h // 2, (c % 2) * w // 2
                ph, pw = h // 2 - rng.integers(0, h // 6 + 1), w // 2 - rng.integers(0, w // 6 + 1)
                pixels[y0 : y0 + ph, x0 : x0 + pw] += 90
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def run_variant(name: str, out: Path, steps: int, threads: int | None) -> dict[str, float]:
    """Train once on dataset `name`; wall seconds, steps/s (training steps only), held-out accuracy."""
    start = time.perf_counter()
    config = TrainConfig(
        dataset=name, output_dir=str(out), test_envs=[0], hparams_profile="small", steps=steps,
        checkpoint_freq=steps, skip_model_save=True, progress=False, threads=threads,
    )
    train(config)
    wall = time.perf_counter() - start
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    return {"wall_s": wall, "steps_per_s": 1.0 / record["step_time"], "test_acc": record["env0_in_acc"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--keep", default=None, help="write the tree and runs here instead of a temp folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        os.environ["DRECYCLE_CACHE"] = str(base / "cache")  # a cold cache: its build is timed too
        write_tree(base / "tree")
        variants = {
            "before: 224 px, decoded every step": f"folder:{base / 'tree'}?cache=no",
            "after: 64 px, decode-once cache": f"folder:{base / 'tree'}?resolution=64",
        }
        rows = {label: run_variant(name, base / f"run{k}", args.steps, args.threads)
                for k, (label, name) in enumerate(variants.items())}
    print(f"{N_DOMAINS} domains x {N_CLASSES} classes x {PER_CLASS} PNGs, small CNN, {args.steps} steps, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':38s} {'wall s':>8s} {'steps/s':>8s} {'test acc':>9s}")
    for label, row in rows.items():
        print(f"{label:38s} {row['wall_s']:8.1f} {row['steps_per_s']:8.2f} {row['test_acc']:9.3f}")
    before, after = rows.values()
    print(f"after/before: {after['steps_per_s'] / before['steps_per_s']:.1f}x steps/s, "
          f"{before['wall_s'] / after['wall_s']:.1f}x less wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
