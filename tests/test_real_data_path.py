"""What a real-data user meets first: spec paths, `--set`, `extends`, dry runs that check every folder and
checkpoint, `drecycle data check`, auxiliary tasks that equal the target, Slurm options."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PACS_CLASSES, VLCS_CLASSES, make_domainbed_dataset

from domainbed_recycle.errors import UserError
from domainbed_recycle.recycle.pipeline import Pipeline
from domainbed_recycle.recycle.spec import load_recycle_spec
from domainbed_recycle.sweep.launchers import SlurmOptions

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "sweeps" / "recycle_paper.toml"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domainbed_recycle.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_spec_paths_are_read_against_the_spec_folder_and_flags_against_the_current_one(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    spec_file = tmp_path / "project" / "mine.toml"
    spec_file.write_text(f'extends = "{PAPER}"\noutput_dir = "out"\ndata_dir = "data"\n'
                         '[foundation]\ncheckpoint = "weights/r50.pth"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_recycle_spec(spec_file)
    assert spec.output_dir == str(tmp_path / "project" / "out") and spec.data_dir == str(tmp_path / "project" / "data")
    assert spec.foundation.checkpoint == str(tmp_path / "project" / "weights" / "r50.pth")
    assert spec.target.n_runs == 20 and spec.strategies[-1] == "Ratatouille"  # the rest comes from the paper spec
    spec = load_recycle_spec(spec_file, {"output_dir": "mine", "data_dir": None}, ["foundation.checkpoint=w.pth"])
    assert spec.output_dir == str(elsewhere / "mine") and spec.foundation.checkpoint == str(elsewhere / "w.pth")
    spec = load_recycle_spec(PAPER)  # the shipped spec: a named foundation, data next to the repository
    assert spec.foundation.checkpoint == "torchvision:ResNet50_Weights.IMAGENET1K_V1"
    assert spec.data_dir == str(REPO / "data")


def test_set_changes_nested_keys_and_bad_settings_are_one_line(tmp_path):
    spec = load_recycle_spec(PAPER, {"output_dir": str(tmp_path)},
                             ["target.steps=3", "target.hparams.batch_size=4", 'target.datasets=["PACS", "VLCS"]',
                              "launcher=pool", "slurm.account=mylab"])
    assert spec.target.steps == 3 and spec.target.datasets == ["PACS", "VLCS"] and spec.launcher == "pool"
    assert spec.target.hparams == {"ma_start_step": 100, "batch_size": 4}  # tables are merged, not replaced
    assert spec.slurm["account"] == "mylab" and spec.slurm["partition"] == "gpu"
    for bad, message in (("target.steps", "expected KEY=VALUE"), ("target.n_runs.x=1", "'n_runs' must be an integer"),
                         ("target.n_runz=3", r"unknown key\(s\) n_runz"), ("target.steps=-1", "'steps' must be")):
        with pytest.raises(UserError, match=message):
            load_recycle_spec(PAPER, {"output_dir": str(tmp_path)}, [bad])


@pytest.mark.slow
def test_dry_run_names_each_missing_folder_and_the_missing_weights(tmp_path):
    data = tmp_path / "data"
    make_domainbed_dataset(data, "PACS", PACS_CLASSES, per_class=1)
    make_domainbed_dataset(data, "VLCS", VLCS_CLASSES, per_class=1)
    env_home = tmp_path / "torch_home"
    result = subprocess.run(
        [sys.executable, "-m", "domainbed_recycle.cli", "recycle", str(PAPER), "--dry_run", "--data_dir", str(data),
         "--output_dir", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TORCH_HOME": str(env_home)})
    assert result.returncode == 1, result.stdout + result.stderr
    missing = [line for line in result.stdout.splitlines() if line.startswith("MISSING ")]
    assert len(missing) == 4, missing
    for folder in ("office_home", "terra_incognita", "domain_net"):
        assert any(str(data / folder) in line for line in missing)
    assert any(str(env_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in line for line in missing)
    assert "stage 4 target runs: 5346 unique job(s)" in result.stdout  # the plan is still listed
    assert not (tmp_path / "out").exists()


def test_data_check_names_a_missing_domain_and_counts(tmp_path, capsys):
    from domainbed_recycle import cli

    data = tmp_path / "data"
    root = make_domainbed_dataset(data, "PACS", PACS_CLASSES, per_class=1)
    shutil.rmtree(root / "sketch")
    assert cli.main(["data", "check", "PACS", "--data_dir", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"MISSING PACS: domain folder {root / 'sketch'} is missing" in out
    assert f"DIFFERS PACS: {root / 'photo'} holds 7 images, DomainBed's 1,670" in out
    assert cli.main(["data", "check", "VLCS", "--data_dir", str(data)]) == 1
    assert f"MISSING VLCS: {data / 'VLCS'} not found" in capsys.readouterr().out


def test_an_auxiliary_task_equal_to_the_only_target_is_skipped_with_a_note(tmp_path):
    spec = load_recycle_spec(PAPER, {"output_dir": str(tmp_path)}, ['target.datasets=["PACS"]'])
    plan = Pipeline(spec).plan()
    assert "PACS" not in plan.auxiliary_jobs and "PACS" not in plan.auxiliary_probe_jobs
    assert sorted(plan.auxiliary_jobs) == ["DomainNet", "OfficeHome", "TerraIncognita", "VLCS"]
    assert any("[auxiliary] PACS skipped" in note for note in spec.notes)


def test_the_paper_probes_follow_the_reference_lp_recipe(tmp_path):
    """The reference's LP: default hparams (lr 5e-5), the dataset's training length (DomainNet 15001)."""
    spec = load_recycle_spec(PAPER, {"output_dir": str(tmp_path)})
    plan = Pipeline(spec).plan()
    from domainbed_recycle.training import TrainConfig, resolved_hparams

    for (dataset, _), job in plan.probe_jobs.items():
        assert job.args["steps"] == (15001 if dataset == "DomainNet" else 5001)
        hparams = resolved_hparams(TrainConfig(**job.args))
        assert hparams["lr"] == 5e-5 and hparams["batch_size"] == 32 and hparams["freeze_bn"] is True
    assert {j.args["steps"] for j in plan.auxiliary_jobs["DomainNet"]} == {15001}


def test_slurm_options_reach_the_sbatch_script(tmp_path):
    """The same keys in sweep and recycle specs; rendered by submitit's own sbatch writer."""
    from submitit.slurm.slurm import _make_sbatch_string

    values = {"partition": "gpu", "account": "lab", "qos": "high", "constraint": "a100", "gres": "gpu:1",
              "sbatch": {"mail-type": "END"}, "setup": ["module load cuda/12.1", "source ~/env/bin/activate"]}
    options = SlurmOptions.from_dict(values)
    params = options.executor_parameters()
    script = _make_sbatch_string(command="python job.py", folder=str(tmp_path), **{
        key[len("slurm_"):] if key.startswith("slurm_") else key: value for key, value in params.items()
        if key not in ("name", "timeout_min", "mem_gb", "cpus_per_task", "gpus_per_node", "slurm_array_parallelism")})
    for line in ("#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --gres=gpu:1",
                 "#SBATCH --mail-type=END", "module load cuda/12.1", "source ~/env/bin/activate"):
        assert line in script.splitlines(), script
    load_recycle_spec(PAPER, {"output_dir": str(tmp_path)}, [f"slurm.{k}={v!r}".replace("'", '"')
                                                              for k, v in values.items() if isinstance(v, str)])
    from domainbed_recycle.sweep.spec import spec_from_dict

    spec_from_dict({"datasets": ["PACS"], "slurm": values})
    for bad in ({"account": 5}, {"setup": "module load cuda"}, {"gres": ""}, {"poll_s": 0}):
        with pytest.raises(UserError, match="Slurm option"):
            spec_from_dict({"datasets": ["PACS"], "slurm": bad})
