"""What training jobs will cost before they run: steps, images, and GPU-hours from measured throughput.

`estimate(jobs)` sums, over training jobs: steps (the job's, else its dataset's N_STEPS), training
images (steps x batch size x training domains, from the hyper-parameters the job resolves to), and
evaluation images (every split of every domain at each evaluation, when the dataset's size is known
without loading it: built-ins once prepared, folder datasets by listing their files). GPU-hours come
from the images/s that `benchmarks/bench_gpu.py` last measured on each GPU kind (a JSON table, see
`THROUGHPUT_FILE`), for ResNet-50 at 224 px only: other jobs are counted, not priced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainbed_recycle import performance
from domainbed_recycle.datasets import get_dataset_class
from domainbed_recycle.errors import UserError
from domainbed_recycle.sweep.jobs import TASK_KEY, Job
from domainbed_recycle.training import TrainConfig, resolved_hparams

# Images/s per GPU kind, written by benchmarks/bench_gpu.py (in a source checkout); $DRECYCLE_GPU_THROUGHPUT wins.
THROUGHPUT_FILE = Path(__file__).resolve().parents[2] / "results" / "perf" / "gpu_throughput.json"
PRICED = ("resnet50", 224)  # the (architecture, resolution) the benchmark measures


@dataclass
class Cost:
    """Totals over the jobs of a plan. `priced` holds the part measured GPU throughput can price:
    {settings name: [training images, evaluation images]} of ResNet-50 jobs at 224 px."""

    runs: int = 0
    steps: int = 0
    train_images: int = 0
    eval_images: int = 0
    unsized: set[str] = field(default_factory=set)  # datasets whose evaluation images are not counted
    priced: dict[str, list[int]] = field(default_factory=dict)
    unpriced_runs: int = 0


def _evaluations(steps: int, checkpoint_freq: int) -> int:
    """How many evaluations a run of `steps` steps makes (training's rule: every `checkpoint_freq`
    steps and after the last; one at step 0 for a run of 0 steps)."""
    return steps // checkpoint_freq + (1 if steps % checkpoint_freq else 0) if steps else 1


def estimate(jobs: Iterable[Job]) -> Cost:
    """The cost of the training jobs among `jobs` (task jobs are free)."""
    cost = Cost()
    sizes: dict[tuple[str, str | None], int | None] = {}
    for job in jobs:
        args = job.args
        if args.get(TASK_KEY):
            continue
        config = TrainConfig(**{key: value for key, value in args.items() if key not in ("progress", "threads")})
        dataset_class = get_dataset_class(config.dataset)
        hparams = resolved_hparams(config, dataset_class)
        stored = config.stored_args(dataset_class)
        steps, freq = int(stored["steps"]), int(stored["checkpoint_freq"])
        n_train = len(dataset_class.ENVIRONMENTS) - len(config.test_envs)
        train_images = steps * int(hparams["batch_size"]) * n_train
        key = (config.dataset, config.data_dir)
        if key not in sizes:
            sizes[key] = _dataset_size(dataset_class, key[1])
        eval_images = _evaluations(steps, freq) * (sizes[key] or 0)
        if sizes[key] is None:
            cost.unsized.add(config.dataset)
        cost.runs += 1
        cost.steps += steps
        cost.train_images += train_images
        cost.eval_images += eval_images
        if (hparams.get("arch"), dataset_class.input_shape[-1]) == PRICED:
            totals = cost.priced.setdefault(performance.describe(config.switches()), [0, 0])
            totals[0] += train_images
            totals[1] += eval_images
        else:
            cost.unpriced_runs += 1
    return cost


def _dataset_size(dataset_class: Any, data_dir: str | None) -> int | None:
    """Images in every domain of a dataset, when known without loading it (else None)."""
    summary = getattr(dataset_class, "summary", None)
    if summary is None:
        return None
    try:
        return sum(summary(data_dir)["domains"].values())
    except (UserError, OSError):  # not prepared, or its folder is not here
        return None


def throughput_table(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """{GPU name: measurement} from the benchmark's JSON table ({} when there is none yet)."""
    path = Path(path or os.environ.get("DRECYCLE_GPU_THROUGHPUT") or THROUGHPUT_FILE)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def gpu_hours(priced: Mapping[str, list[int]], measurement: Mapping[str, Any]) -> tuple[float, list[str]]:
    """(GPU-hours, notes) of the priced images on one GPU kind's measurement: images / (images/s) per
    settings name; settings the benchmark did not measure are priced at its fp32 figures (noted)."""
    train, evaluation = measurement.get("train_images_per_s", {}), measurement.get("eval_images_per_s", {})
    seconds, notes = 0.0, []
    for name, (train_images, eval_images) in priced.items():
        used = name if name in train else "fp32"
        if used != name:
            notes.append(f"{name} not measured: priced as fp32")
        if used not in train:
            return float("nan"), [f"no {used} figure"]
        seconds += train_images / float(train[used])
        eval_rate = evaluation.get(used) or evaluation.get("fp32")
        if eval_images and eval_rate:
            seconds += eval_images / float(eval_rate)
    return seconds / 3600.0, notes


def describe(cost: Cost, gpu: str | None = None, table: Mapping[str, Any] | None = None) -> str:
    """The cost as a few lines: runs, steps, images; GPU-hours per measured GPU kind (or `gpu` only)."""
    lines = [f"cost: {cost.runs:,} training run(s), {cost.steps:,} steps, {cost.train_images:,} training images, "
             f"{cost.eval_images:,} evaluation images"
             + (f" (evaluation of {', '.join(sorted(cost.unsized))} not counted: size unknown without its data)"
                if cost.unsized else "")]
    if not cost.priced:
        lines.append("GPU-hours: not estimated (only ResNet-50 runs at 224 px are measured, and there are none here)")
        return "\n".join(lines)
    table = throughput_table() if table is None else table
    kinds = [gpu] if gpu else sorted(table)
    settings = ", ".join(f"{name}: {images[0]:,} training images" for name, images in cost.priced.items())
    if cost.unpriced_runs:
        settings += f"; {cost.unpriced_runs} other run(s) not priced"
    lines.append(f"GPU-hours of the ResNet-50 runs at 224 px ({settings}):")
    for kind in kinds:
        measurement = table.get(kind)
        if not measurement:
            lines.append(f"  {kind}: no measurement (run benchmarks/bench_gpu.py on that GPU)")
            continue
        hours, notes = gpu_hours(cost.priced, measurement)
        lines.append(f"  {kind} (measured {measurement.get('date', '?')}): {hours:,.1f} GPU-hours"
                     + (f" ({'; '.join(notes)})" if notes else ""))
    if not kinds:
        lines.append("  no GPU measurement yet: run `python benchmarks/bench_gpu.py --domainbed PATH` on a GPU "
                     "node (it records images/s per GPU kind in results/perf/gpu_throughput.json)")
    return "\n".join(lines)
