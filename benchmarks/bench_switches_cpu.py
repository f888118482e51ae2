"""Benchmark: what each speed switch costs or saves on CPU, and what it does to accuracy, side by side.

Trains the built-in regime's run (TextureMNIST, small CNN, test domain 0, `--steps` steps, 1 torch
thread) once per variant, in its own process, the variants interleaved over `--repeats` rounds: fp32
(the default), bf16, channels_last, bf16 + channels_last, compile. Prints per variant the median
training steps/s over the second half of the run (after warm-up: compile's included) relative to fp32,
and the held-out accuracy (test domain's `in` split) at the end, for seeds 0 and 1.

The GPU figures are `benchmarks/bench_gpu.py`'s; this one says what the switches do where most of this
project's tests and the built-in benchmark run.

Usage: `python benchmarks/bench_switches_cpu.py [--steps 300] [--repeats 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fp32 (default)": [],
    "bf16": ["--precision", "bf16"],
    "channels_last": ["--channels_last"],
    "bf16+channels_last": ["--precision", "bf16", "--channels_last"],
    "compile": ["--compile"],
}


def train(out: Path, steps: int, seed: int, flags: list[str]) -> tuple[float, float]:
    """(steps/s over the second half, held-out accuracy) of one run."""
    command = [sys.executable, "-m", "domainbed_recycle.cli", "train", "--dataset", "TextureMNIST", "--test_envs", "0",
               "--steps", str(steps), "--checkpoint_freq", str(steps // 2), "--threads", "1", "--seed", str(seed),
               "--skip_model_save", "--no_progress", "--output_dir", str(out), *flags]
    subprocess.run(command, check=True, capture_output=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    return 1.0 / record["step_time"], record["env0_in_acc"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (speed: the median)")
    args = parser.parse_args()
    speed: dict[str, list[float]] = {name: [] for name in VARIANTS}
    accuracy: dict[str, dict[int, float]] = {name: {} for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for name, flags in VARIANTS.items():
                seed = round_ % 2
                rate, acc = train(Path(tmp) / f"{round_}-{len(speed[name])}-{name}", args.steps, seed, flags)
                speed[name].append(rate)
                accuracy[name][seed] = acc
    print(f"TextureMNIST, small CNN, test domain 0, {args.steps} steps, 1 torch thread, {args.repeats} interleaved "
          f"round(s); load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'variant':22s} {'steps/s':>8s} {'x fp32':>7s} {'held-out acc (seed 0, 1)':>26s}")
    reference = statistics.median(speed["fp32 (default)"])
    for name in VARIANTS:
        rate = statistics.median(speed[name])
        accs = ", ".join(f"{accuracy[name][s]:.3f}" for s in sorted(accuracy[name]))
        print(f"{name:22s} {rate:8.2f} {rate / reference:7.2f} {accs:>26s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
