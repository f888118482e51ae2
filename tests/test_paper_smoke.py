"""The paper's protocol on DomainBed-layout folders, end to end, as a user with real data runs it.

A user's spec `extends` the shipped paper spec (not a copy) and sets its own paths, relative to its own
folder: PACS and VLCS folders made here, a random torchvision ResNet-50 saved with `torch.save` (the `.pth`
path that crashed before). It is run from another folder, cut down on the command line with `--set`
(2 target datasets, 1 test domain, 1 trial, 2 runs per pool, 3 steps at 32 px), through all five stages
and every strategy of the paper spec; the table is printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import PACS_CLASSES, VLCS_CLASSES, make_domainbed_dataset

pytestmark = pytest.mark.slow  # runs a recycling pipeline (every stage trains)

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "sweeps" / "recycle_paper.toml"
SMALL = ["PACS?resolution=32,cache=yes", "VLCS?resolution=32,cache=yes"]
CUT_DOWN = [
    f"target.datasets={json.dumps(SMALL)}", f"auxiliary.datasets={json.dumps(SMALL)}",
    "target.test_envs=[0]", "target.n_trials=1", "target.n_runs=2", "target.n_runs_small=1", "target.steps=3",
    "target.checkpoint_freq=3", "target.lp_steps=1", "target.hparams.batch_size=2", "target.hparams.ma_start_step=1",
    "auxiliary.n_runs=1", "auxiliary.steps=3", "auxiliary.checkpoint_freq=3", "auxiliary.hparams.batch_size=2",
    "probe.steps=3", "probe.checkpoint_freq=3", "probe.hparams.batch_size=2",
]


@pytest.mark.slow
def test_paper_spec_runs_all_five_stages_on_domainbed_folders_with_a_pth_foundation(isolated_caches):
    project = isolated_caches / "project"
    make_domainbed_dataset(project / "data", "PACS", PACS_CLASSES, per_class=2)
    make_domainbed_dataset(project / "data", "VLCS", VLCS_CLASSES, per_class=2, seed=1)
    (project / "weights").mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), project / "weights" / "resnet50_random.pth")
    (project / "paper_here.toml").write_text(
        f'extends = "{PAPER}"\noutput_dir = "runs"\ndata_dir = "data"\nlauncher = "pool"\nn_workers = 2\n'
        '[foundation]\ncheckpoint = "weights/resnet50_random.pth"\n')
    elsewhere = isolated_caches / "elsewhere"
    elsewhere.mkdir()
    argv = [sys.executable, "-m", "domainbed_recycle.cli", "recycle", "../project/paper_here.toml"]
    for setting in CUT_DOWN:
        argv += ["--set", setting]

    dry = subprocess.run([*argv, "--dry_run"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "spec ../project/paper_here.toml: valid" in dry.stdout and "MISSING" not in dry.stdout

    start = time.time()
    result = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True, timeout=1800)
    print(f"paper spec, cut down: {time.time() - start:.0f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = project / "runs"
    for stage in ("auxiliary", "probes", "target", "combined", "table"):
        assert (out / stage).is_dir(), stage
    rows = [line.split()[0] for line in result.stdout.splitlines() if line.startswith(("ERM", "LP-FT", "Moving",
                                                                                       "Soup", "Ensemble", "Inter",
                                                                                       "Fusing", "Ratatouille"))]
    variants = ["ERM", "LP-FT", "MovingAverage", "Soup-uniform", "Soup-uniform†", "Soup-greedy", "Ensemble",
                "Ensemble-aux", "InterTraining", "Fusing", "Fusing-uniform", "Ratatouille-uniform",
                "Ratatouille-uniform†", "Ratatouille-greedy"]
    assert set(variants) <= set(rows), result.stdout
    # the summary table (a column per target dataset) has a number for both datasets in every row
    summary = {line.split()[0]: line for line in result.stdout.splitlines()
               if line.split()[:1] and line.split()[0] in variants and line.count("+/-") == 2}
    assert set(summary) == set(variants) and not any(" X " in f" {line} " for line in summary.values()), result.stdout
    # the auxiliary pool of each target is the other dataset only; target runs started from the .pth
    record = json.loads(next((out / "target").glob("*/results.jsonl")).read_text().splitlines()[-1])
    assert record["hparams"]["freeze_bn"] is True and record["hparams"]["arch"] == "resnet50"
    fused = [json.loads(p.read_text().splitlines()[-1]) for p in (out / "target").glob("*/results.jsonl")]
    labels = {r["args"]["init_label"] for r in fused}
    assert {"phi0", "phi0/random-head", "fused", f"aux:{SMALL[1]}", f"aux:{SMALL[0]}"} <= labels, labels
    # combine jobs log one short line each, their arguments in a file
    for log in (out / "combine_jobs").glob("*/out.txt"):
        first = log.read_text().splitlines()[0]
        assert len(first) < 400 and "arguments in" in first
