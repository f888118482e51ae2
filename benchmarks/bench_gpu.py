"""Benchmark: GPU throughput of training and evaluation, ResNet-50 at 224 px, this harness against
DomainBed's own `train.py` on the same generated data, side by side in one run.

Writes a DomainBed-layout folder (`PACS/<domain>/<class>/<n>.jpg`: 4 domains x 7 classes of 227 px
JPEGs; class = colour and place of a patch, domain = background style) and one random ResNet-50
state dict, the initialisation of every run (DomainBed reads it as its "pretrained" weights from a
private TORCH_HOME: no download). Then, each in its own process, for `--steps` steps with test domain 0
and batch 32 x 3 training domains:
  - DomainBed's `python -m domainbed.scripts.train` (fp32, its only mode; its checkout given with
    `--domainbed`, run with empty `wilds`/`timm` stand-ins when those are not installed), with
    hparams `resnet50_augmix` false and `freeze_bn` true: torchvision's ResNet-50 with frozen BatchNorm,
    the paper's model and this harness's "resnet" profile (recent DomainBed defaults to timm's AugMix
    ResNet-50, which needs a download, and to training BatchNorm);
  - `drecycle train` in fp32 (seeds 0 and 1: the second is the noise reference for accuracies),
    fp32 + channels_last, bf16, bf16 + channels_last, the same + compile, the same + cuDNN autotuning,
    and bf16 + channels_last from the decode-once cache (`PACS?cache=yes`); names in `VARIANTS`, any
    subset with `--variants`.
Training images/s = batch x training domains / mean step time over the second half of the run (after
warm-up, cuDNN's and torch.compile's included), read from each run's last record (both harnesses
time a step the same way: fetching the batch, copying it to the GPU, the update). Held-out accuracy =
test domain's `in` accuracy at the end. Evaluation images/s: one timed pass (after a warm-up pass)
over every split with DomainBed's `misc.accuracy` on its loaders, and with this harness's
`SplitEvaluator` in fp32 and in bf16 + channels_last.

Output: a table in `--out` (default results/perf/gpu.txt) naming the GPU, ending with
`ratio_vs_domainbed_bf16: X` (bf16 + channels_last training images/s over DomainBed's); the figures per
GPU kind also go to results/perf/gpu_throughput.json, which `--dry_run` cost estimates read.
On a machine without a GPU it runs a 2-step version of every path on tiny data (no compile) and says
that the figures need a GPU; it then writes results only where `--out` says.

Usage: `python benchmarks/bench_gpu.py --domainbed PATH/TO/DomainBed [--steps 150] [--out F] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["art_painting", "cartoon", "photo", "sketch"]  # DomainBed's PACS folders
CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
HUES = [(230, 40, 40), (40, 200, 40), (40, 60, 230), (230, 210, 40), (200, 40, 220), (40, 210, 210), (250, 250, 250)]
# name -> extra `drecycle train` flags; the dataset option "?cache=yes" is added for the cached row
VARIANTS = {
    "fp32": [],
    "fp32 seed 1": ["--seed", "1"],
    "fp32+channels_last": ["--channels_last"],
    "bf16": ["--precision", "bf16"],
    "bf16+channels_last": ["--precision", "bf16", "--channels_last"],
    "bf16+channels_last+compile": ["--precision", "bf16", "--channels_last", "--compile"],
    "bf16+channels_last+cudnn_benchmark": ["--precision", "bf16", "--channels_last", "--cudnn_benchmark"],
    "bf16+channels_last cache=yes": ["--precision", "bf16", "--channels_last"],
}
EVAL_VARIANTS = {"fp32": ("fp32", False), "bf16+channels_last": ("bf16", True)}

DOMAINBED_EVAL = r"""
import json, sys, time
import torch
from domainbed import algorithms, datasets, hparams_registry
from domainbed.lib import misc
from domainbed.lib.fast_data_loader import FastDataLoader
data_dir, batch = sys.argv[1], int(sys.argv[2])
hparams = hparams_registry.default_hparams("ERM", "PACS")
hparams.update({"batch_size": batch, "resnet50_augmix": False, "freeze_bn": True})
dataset = datasets.PACS(data_dir, [0], hparams)
splits = []
for i, env in enumerate(dataset):  # train.py's split (holdout 0.2, trial seed 0)
    out, in_ = misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(0, i))
    splits += [in_, out]
loaders = [FastDataLoader(dataset=s, batch_size=64, num_workers=dataset.N_WORKERS) for s in splits]
device = "cuda" if torch.cuda.is_available() else "cpu"
algorithm = algorithms.ERM(dataset.input_shape, dataset.num_classes, len(dataset) - 1, hparams).to(device)
for _ in range(2):  # a warm-up pass, then the timed one
    start = time.time()
    for loader in loaders:
        misc.accuracy(algorithm, loader, None, device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start
print(json.dumps({"images": sum(len(s) for s in splits), "seconds": seconds}))
"""


def write_data(root: Path, per_class: int, seed: int = 0) -> int:
    """root/PACS/<domain>/<class>/<i>.jpg; returns the number of images."""
    rng = np.random.default_rng(seed)
    size, count = 227, 0
    yy, xx = np.mgrid[0:size, 0:size]
    for d, domain in enumerate(DOMAINS):
        tint = rng.integers(30, 200, 3)
        for c, name in enumerate(CLASSES):
            folder = root / "PACS" / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                background = tint + rng.normal(0, 12 + 12 * d, (size, size, 3))
                if d % 2:  # stripes: a domain's style
                    background += 40 * np.sin((xx + yy * d) / (6 + d))[..., None]
                side = int(rng.integers(70, 120))
                y0, x0 = (c // 3) * 60 + int(rng.integers(0, 40)), (c % 3) * 60 + int(rng.integers(0, 40))
                background[y0:y0 + side, x0:x0 + side] = np.asarray(HUES[c]) + rng.normal(0, 10, (1, 1, 3))
                Image.fromarray(background.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
                count += 1
    return count


def write_init(path: Path) -> None:
    """A randomly initialised torchvision ResNet-50 state dict (ImageNet's layout): every run starts from it."""
    import torchvision

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)


def last_record(run: Path) -> dict:
    lines = (run / "results.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def run(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run `command`; its output goes to `log`; a failure stops the benchmark with the log's tail."""
    start = time.time()
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"failed ({code}): {' '.join(command)}\n{tail}")
    return time.time() - start


def harness_train(name: str, base: Path, steps: int, batch: int, env: dict[str, str]) -> dict:
    out = base / "runs" / name.replace(" ", "_").replace("=", "")
    dataset = "PACS?cache=yes" if "cache=yes" in name else "PACS"
    hparams = json.dumps({"batch_size": batch})
    command = [sys.executable, "-m", "domainbed_recycle.cli", "train", "--dataset", dataset,
               "--data_dir", str(base / "data"), "--test_envs", "0", "--steps", str(steps),
               "--checkpoint_freq", str(max(1, steps // 2)), "--hparams_profile", "resnet", "--hparams", hparams,
               "--pretrained", str(base / "init" / "resnet50.pth"), "--skip_model_save", "--no_progress",
               "--output_dir", str(out), *VARIANTS[name]]
    wall = run(command, ROOT, env, base / f"{out.name}.log")
    record = last_record(out)
    return {"images_per_s": batch * 3 / record["step_time"], "test_acc": record["env0_in_acc"], "wall_s": wall}


def domainbed_env(checkout: Path, base: Path, env: dict[str, str]) -> dict[str, str]:
    """PYTHONPATH with the checkout and, for what is not installed, empty wilds/timm stand-ins;
    TORCH_HOME holding the shared initialisation as torchvision's ResNet-50 "pretrained" file."""
    stubs = base / "stubs"
    if importlib.util.find_spec("timm") is None:
        (stubs / "timm").mkdir(parents=True, exist_ok=True)
        (stubs / "timm" / "__init__.py").write_text("")
    if importlib.util.find_spec("wilds") is None:
        (stubs / "wilds" / "datasets").mkdir(parents=True, exist_ok=True)
        (stubs / "wilds" / "__init__.py").write_text("")
        (stubs / "wilds" / "datasets" / "__init__.py").write_text("")
        (stubs / "wilds" / "datasets" / "camelyon17_dataset.py").write_text("Camelyon17Dataset = None\n")
        (stubs / "wilds" / "datasets" / "fmow_dataset.py").write_text("FMoWDataset = None\n")
    import torchvision

    hub = base / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    weights = hub / Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url).name
    if not weights.exists():
        weights.symlink_to(base / "init" / "resnet50.pth")
    return env | {"PYTHONPATH": os.pathsep.join([str(stubs), str(checkout)]), "TORCH_HOME": str(base / "torch_home")}


def domainbed_train(checkout: Path, base: Path, steps: int, batch: int, env: dict[str, str]) -> dict:
    out = base / "runs" / "domainbed"
    command = [sys.executable, "-m", "domainbed.scripts.train", "--data_dir", str(base / "data"),
               "--dataset", "PACS", "--algorithm", "ERM", "--test_envs", "0", "--steps", str(steps),
               "--checkpoint_freq", str(max(1, steps // 2)),
               "--hparams", json.dumps({"batch_size": batch, "resnet50_augmix": False, "freeze_bn": True}),
               "--output_dir", str(out), "--skip_model_save"]
    wall = run(command, checkout, domainbed_env(checkout, base, env), base / "domainbed.log")
    record = last_record(out)
    return {"images_per_s": batch * 3 / record["step_time"], "test_acc": record["env0_in_acc"], "wall_s": wall}


def domainbed_eval(checkout: Path, base: Path, batch: int, env: dict[str, str]) -> float:
    script = base / "domainbed_eval.py"
    script.write_text(DOMAINBED_EVAL)
    log = base / "domainbed_eval.log"
    command = [sys.executable, str(script), str(base / "data"), str(batch)]
    run(command, checkout, domainbed_env(checkout, base, env), log)
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return result["images"] / result["seconds"]


def harness_eval(base: Path, batch: int, precision: str, channels_last: bool) -> float:
    """Images/s of one timed pass (after a warm-up pass) over every split of the generated PACS."""
    from domainbed_recycle.datasets import get_dataset
    from domainbed_recycle.datasets.splits import make_splits
    from domainbed_recycle.evaluation import Inference, SplitEvaluator
    from domainbed_recycle.networks import architecture, build_model
    from domainbed_recycle.training import TrainConfig, resolve_loader, resolved_hparams

    config = TrainConfig(dataset="PACS", output_dir="", data_dir=str(base / "data"), hparams_profile="resnet",
                         hparams={"batch_size": batch})
    hparams = resolved_hparams(config)
    dataset = get_dataset("PACS", config.data_dir, [0], hparams)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    in_splits, out_splits = make_splits(dataset, 0.2, 0)
    splits = {}
    for i in range(len(in_splits)):
        splits[f"env{i}_in"], splits[f"env{i}_out"] = in_splits[i], out_splits[i]
    model = build_model(architecture(dataset.input_shape, dataset.num_classes, hparams)).to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    inference = Inference(device, precision, channels_last, resolve_loader(config, dataset, device))
    evaluator = SplitEvaluator(splits, inference)
    try:
        for _ in range(2):  # a warm-up pass, then the timed one
            start = time.time()
            evaluator.accuracies({"": model})
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.time() - start
    finally:
        evaluator.close()
    return sum(len(split) for split in splits.values()) / seconds


def update_table(path: Path, gpu: str, entry: dict) -> None:
    """Record `entry` as the last measurement of GPU kind `gpu` in the JSON table."""
    table = json.loads(path.read_text()) if path.exists() else {}
    table[gpu] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def report(header: list[str], rows: dict[str, dict], evals: dict[str, float], done: bool) -> str:
    """The result table (rows so far, marked partial until `done`), ending with the ratio line."""
    reference = rows.get("DomainBed train.py", {}).get("images_per_s")
    lines = list(header)
    lines.append(f"{'training':34s} {'images/s':>10s} {'x DomainBed':>12s} {'held-out acc':>13s} {'wall s':>8s}")
    for name, row in rows.items():
        ratio = f"{row['images_per_s'] / reference:.2f}" if reference else "-"
        lines.append(f"{name:34s} {row['images_per_s']:10.1f} {ratio:>12s} {row['test_acc']:13.3f} "
                     f"{row['wall_s']:8.1f}")
    if evals:
        lines.append(f"{'evaluation (every split, one pass)':34s} {'images/s':>10s}")
        lines += [f"{name:34s} {rate:10.1f}" for name, rate in evals.items()]
    if not done:
        lines.append("# partial: the benchmark is still running (or was stopped)")
        return "\n".join(lines) + "\n"
    bf16 = rows.get("bf16+channels_last", {}).get("images_per_s")
    lines.append(f"ratio_vs_domainbed_bf16: {bf16 / reference:.2f}" if bf16 and reference
                 else "ratio_vs_domainbed_bf16: n/a (needs --domainbed and the bf16+channels_last variant)")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domainbed", type=Path, default=None, help="a DomainBed checkout (its train.py is run)")
    parser.add_argument("--steps", type=int, default=150, help="training steps per run (GPU; 2 on CPU)")
    parser.add_argument("--per_class", type=int, default=None,
                        help="generated images per class and domain (default: 50 on a GPU, 1 on CPU)")
    parser.add_argument("--variants", default=None, help="comma-separated harness variants (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="result table (default on a GPU: results/perf/gpu.txt)")
    parser.add_argument("--table", type=Path, default=ROOT / "results" / "perf" / "gpu_throughput.json",
                        help="JSON table of images/s per GPU kind that a GPU run updates (read by --dry_run)")
    parser.add_argument("--keep", type=Path, default=None, help="write data and runs here instead of a temp folder")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    steps, per_class, batch = (args.steps, args.per_class or 50, 32) if gpu else (2, args.per_class or 1, 2)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if not gpu:
        # minutes of compiling ResNet-50 on CPU; no cuDNN
        names = [name for name in names if "compile" not in name and "cudnn" not in name]
    if args.domainbed is not None and not (args.domainbed / "domainbed" / "scripts" / "train.py").is_file():
        parser.error(f"--domainbed {args.domainbed}: not a DomainBed checkout (no domainbed/scripts/train.py)")
    out = args.out or (ROOT / "results" / "perf" / "gpu.txt" if gpu else None)
    device = torch.cuda.get_device_name() if gpu else "CPU (no GPU)"
    header = [f"# command: python benchmarks/{Path(__file__).name} " + " ".join(sys.argv[1:]),
              f"# GPU: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} cores; "
              f"{datetime.date.today().isoformat()}",
              f"# data: generated PACS layout, 4 domains x 7 classes x {per_class} JPEGs (227 px), test domain 0; "
              f"ResNet-50 at 224 px from one random initialisation, batch {batch} x 3 training domains, {steps} "
              f"steps; images/s over the second half of each run"]
    if not gpu:
        header.append("# NO GPU: a 2-step check of every path on tiny data; the figures below are not measurements "
                      "(they need a GPU)")
    rows: dict[str, dict] = {}
    evals: dict[str, float] = {}

    def progress(done: bool = False) -> None:
        text = report(header, rows, evals, done)
        if out is not None:  # rewritten after each row: a benchmark stopped early still leaves its rows
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        if done:
            print(text, end="", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        base = (args.keep or Path(tmp)).resolve()
        env = os.environ | {"DRECYCLE_CACHE": str(base / "cache"), "PYTHONPATH": str(ROOT)}
        write_data(base / "data", per_class)
        write_init(base / "init" / "resnet50.pth")
        checkout = args.domainbed.resolve() if args.domainbed is not None else None
        if checkout is not None:
            rows["DomainBed train.py"] = domainbed_train(checkout, base, steps, batch, env)
            print(f"DomainBed train.py: {rows['DomainBed train.py']}", flush=True)
            progress()
        for name in names:
            rows[name] = harness_train(name, base, steps, batch, env)
            print(f"{name}: {rows[name]}", flush=True)
            progress()
        if checkout is not None:
            evals["DomainBed misc.accuracy"] = domainbed_eval(checkout, base, batch, env)
        for name, setting in EVAL_VARIANTS.items():
            evals[name] = harness_eval(base, batch, *setting)
        progress(done=True)
    if gpu:
        reference = rows.get("DomainBed train.py", {}).get("images_per_s")
        update_table(args.table, device, {
            "date": datetime.date.today().isoformat(), "command": header[0][len("# command: "):],
            "torch": torch.__version__, "model": "resnet50", "resolution": 224,
            "train_images_per_s": {name: round(row["images_per_s"], 1) for name, row in rows.items()
                                   if name in VARIANTS and " " not in name},
            "eval_images_per_s": {name: round(rate, 1) for name, rate in evals.items() if name in EVAL_VARIANTS},
            "domainbed_train_images_per_s": round(reference, 1) if reference else None})
    elif out is None:
        print("no GPU here: figures need a GPU (nothing written; --out FILE writes this check)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
