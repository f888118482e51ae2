"""`drecycle merge`: the registered operators on run folders, checkpoint files and named weights, from the
command line or a merge config; torchvision/timm key names; what a merged file records."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_NET

from domainbed_recycle import averaging, cli, merge_ops, merging
from domainbed_recycle.checkpoints import load_checkpoint, read_metadata, save_checkpoint
from domainbed_recycle.merge_ops.config import read_config
from domainbed_recycle.networks import build_model
from domainbed_recycle.sweep import jobs_from_configs, launch

SMALL_ARCH = {"featurizer": "small_cnn", "input_shape": [3, 28, 28], "num_classes": 4, "width": 4,
              "classes": ["a", "b", "c", "d"]}
R18_ARCH = {"featurizer": "resnet18", "input_shape": [3, 32, 32], "num_classes": 3, "freeze_bn": True}
TRAINING = {"step": 7, "val_acc": 0.5, "seed": 11, "hparams": {"lr": 1.0}, "hparams_seed": 3, "algorithm": "ERM"}


def _files(folder, arch, k=3, seed=0):
    """θ0 and K 'fine-tuned' checkpoints of `arch` (θ0 + noise), with a run's metadata."""
    torch.manual_seed(seed)
    base = build_model(arch).state_dict()
    paths = [save_checkpoint(folder / "base.safetensors", base, {"arch": arch, **TRAINING})]
    for i in range(k):
        state = {key: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for key, v in base.items()}
        paths.append(save_checkpoint(folder / f"m{i}.safetensors", state,
                                     {"arch": arch, "dataset": "X", "test_envs": [1], **TRAINING, "seed": i}))
    return paths[0], paths[1:]


def _weights(path):
    return load_checkpoint(path)[0]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_options_and_a_config_give_the_operator_tensors_and_a_record_without_training_fields(tmp_path, capsys):
    base, models = _files(tmp_path, SMALL_ARCH)
    out = tmp_path / "ties.safetensors"
    argv = ["merge", *map(str, models), "--method", "ties", "--base", str(base), "--keep", "0.5",
            "--weight", "1", "2", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    expected = merging.ties_merge(_weights(base), [_weights(m) for m in models], 1.0, 0.5, weights=[1, 2, 3])
    assert _equal(_weights(out), expected)
    meta = read_metadata(out)
    assert meta["arch"] == SMALL_ARCH and meta["dataset"] == "X" and meta["test_envs"] == [1]
    assert not {"step", "val_acc", "seed", "hparams", "hparams_seed", "algorithm"} & set(meta), meta
    record = meta["merge"]
    assert record["method"] == "ties" and record["base"]["model"] == str(base) and record["config"] is None
    assert [m["weight"] for m in record["members"]] == [1.0, 2.0, 3.0] and record["members"][0]["keep"] == 0.5
    assert record["parameters"] == {"lambda": 1.0, "trim": "model"} and meta["key_format"] == "harness"

    # the same merge as a YAML config (paths read against its folder) and as a TOML one
    (tmp_path / "cfg").mkdir()
    yaml_file = tmp_path / "cfg" / "merge.yaml"
    yaml_file.write_text("merge_method: ties\nbase_model: ../base.safetensors\nparameters: {keep: 0.5}\nmodels:\n"
                         + "".join(f"  - model: ../m{i}.safetensors\n    parameters: {{weight: {i + 1}}}\n"
                                   for i in range(3)))
    toml_file = tmp_path / "cfg" / "merge.toml"
    toml_file.write_text('merge_method = "ties"\nbase_model = "../base.safetensors"\n[parameters]\nkeep = 0.5\n'
                         + "".join(f'[[models]]\nmodel = "../m{i}.safetensors"\nparameters = {{ weight = {i + 1} }}\n'
                                   for i in range(3)))
    for config in (yaml_file, toml_file):
        from_config = tmp_path / f"{config.suffix[1:]}.safetensors"
        assert cli.main(["merge", "--config", str(config), "--out", str(from_config)]) == 0
        assert _equal(_weights(from_config), expected)
        assert read_metadata(from_config)["merge"]["config"] == str(config)
    assert "wrote" in capsys.readouterr().out


def test_a_merge_config_in_mergekit_shape_reads_named_weights_as_they_are(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text("merge_method: slerp\nbase_model: torchvision:ResNet18_Weights.IMAGENET1K_V1\n"
                      "models: [ft.pth]\nparameters: {t: 0.25}\n")
    job = read_config(config)
    assert job.method == "slerp" and job.base == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert job.models == (str(tmp_path / "ft.pth"),) and job.parameters == {"t": 0.25} and job.per_model == ({},)


def test_torchvision_and_timm_key_names_load_into_those_libraries(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    base, models = _files(tmp_path, R18_ARCH, k=2)
    harness, exported = tmp_path / "h.safetensors", tmp_path / "tv.safetensors"
    common = ["merge", *map(str, models), "--method", "task_arithmetic", "--base", str(base)]
    assert cli.main([*common, "--out", str(harness)]) == 0
    assert cli.main([*common, "--format", "torchvision", "--out", str(exported)]) == 0
    from safetensors.torch import load_file

    raw = load_file(str(exported))
    assert "conv1.weight" in raw and "fc.weight" in raw and not any(k.startswith("featurizer.") for k in raw)
    ours = build_model(R18_ARCH).eval()
    ours.load_state_dict(_weights(harness))
    x = torch.randn(2, 3, 32, 32)
    for library_model in (torchvision.models.resnet18(num_classes=3), timm.create_model("resnet18", num_classes=3)):
        library_model.load_state_dict(raw, strict=True)
        assert torch.allclose(library_model.eval()(x), ours(x), atol=1e-5)
    assert _equal(_weights(exported), _weights(harness))  # read back under our names
    assert read_metadata(exported)["key_format"] == "torchvision"


def test_named_weights_serve_as_base_and_member(isolated_caches, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    pretrained = torchvision.models.resnet18().state_dict()
    cached = isolated_caches / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(pretrained, cached)
    tuned = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in pretrained.items()}
    torch.save(tuned, tmp_path / "tuned.pth")
    out = tmp_path / "slerp.safetensors"
    assert cli.main(["merge", str(tmp_path / "tuned.pth"), "--method", "slerp", "--t", "0.5",
                     "--base", "torchvision:ResNet18_Weights.IMAGENET1K_V1", "--format", "torchvision",
                     "--out", str(out)]) == 0
    from safetensors.torch import load_file

    merged = load_file(str(out))
    expected = merging.slerp(pretrained, tuned, 0.5)
    assert all(torch.equal(merged[k], expected[k]) for k in merged) and set(expected) - set(merged) == {
        "fc.weight", "fc.bias"}  # the ImageNet head is not a featurizer's: dropped on reading, as everywhere


def test_bad_requests_fail_with_one_line_and_write_nothing(tmp_path, capsys):
    base, models = _files(tmp_path, SMALL_ARCH, k=2)
    wide, _ = _files(tmp_path / "wide", dict(SMALL_ARCH, width=8), k=0)  # another architecture
    out = tmp_path / "x.safetensors"
    config = tmp_path / "c.yaml"
    config.write_text(f"merge_method: ties\nmodels: [{models[0]}]\nbase_model: {base}\ncolour: red\n")
    m = list(map(str, models))
    cases = [
        ([*m, "--method", "ties"], "needs --base"),
        ([*m, str(wide), "--method", "uniform"], "does not match the architecture"),
        ([*m, "--method", "wise_ft", "--base", str(base)], "takes 1 fine-tuned model"),
        ([*m, "--method", "ties", "--base", str(base), "--keep", "0"], "keep must be in (0, 1]"),
        ([*m, "--method", "ties", "--base", str(base), "--alpha", "0.3"], "ties has no parameter 'alpha'"),
        ([*m, "--method", "ties", "--base", str(base), "--weight", "1", "2", "3"], "got 3 values for 2 models"),
        ([*m, "--method", "uniform", "--base", str(base)], "reads no base model"),
        ([*m, "--method", "uniform", "--format", "torchvision"], "key names exist for a ResNet"),
        ([str(tmp_path / "nothing"), "--method", "uniform"], "no such run folder or checkpoint file"),
        ([*m, "--config", str(config)], "drop MODEL"),
        (["--config", str(config)], "unknown key 'colour'"),
        (["--method", "uniform"], "give MODELs and --method"),
    ]
    for argv, message in cases:
        assert cli.main(["merge", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists()


def test_list_prints_every_operator_with_its_parameters(capsys):
    assert cli.main(["merge", "--list"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == merge_ops.markdown_table(merge_ops.operators())
    for op in merge_ops.operators():
        assert f"`{op.name}`" in printed and all(f"`{p.name}`" in printed for p in op.params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base run, then two fine-tunings of it (different hparams seeds)."""
    root = tmp_path_factory.mktemp("merge")
    common = {"dataset": "ColoredDigits", "test_envs": [2], "steps": 4, "checkpoint_freq": 2, "hparams": TINY_NET}
    (base,) = jobs_from_configs([common], root / "base")
    assert launch([base], "inprocess", progress=False).ok
    start = str(base.run.best_checkpoint)
    members = jobs_from_configs([common | {"hparams_seed": h, "init_featurizer": start, "init_classifier": start}
                                 for h in (1, 2)], root / "members")
    assert launch(members, "inprocess", progress=False).ok
    return base.output_dir, [job.output_dir for job in members]


@pytest.mark.slow
def test_run_folders_merge_and_evaluate(runs, tmp_path, capsys):
    base, members = runs
    out = tmp_path / "soup.safetensors"
    assert cli.main(["merge", *map(str, members), "--method", "uniform", "--out", str(out), "--evaluate"]) == 0
    printed = capsys.readouterr().out
    assert "test domain 2 accuracy:" in printed and "merged (2 models)" in printed
    expected = averaging.uniform_average([_weights(m / "model_best.safetensors") for m in members])
    assert _equal(_weights(out), expected)
    meta = read_metadata(out)
    assert meta["merge"]["method"] == "uniform" and len(meta["merge"]["members"]) == 2 and "arch" in meta
    assert meta["trial_seed"] == 0 and "val_acc" not in meta and "step" not in meta

    out = tmp_path / "ties.safetensors"
    argv = ["merge", *map(str, members), "--method", "ties", "--base", str(base), "--keep", "0.5", "--out", str(out)]
    assert cli.main(argv) == 0
    theta0 = _weights(base / "model_best.safetensors")
    assert _equal(_weights(out), merging.ties_merge(theta0, [_weights(m / "model_best.safetensors")
                                                             for m in members], 1.0, 0.5))
    assert cli.main(argv) == 2  # never overwrites a file unless asked
    assert "exists" in capsys.readouterr().err
    assert cli.main([*argv, "--force"]) == 0


@pytest.mark.slow
def test_dare_ties_is_seeded_and_differs_from_plain_ties(runs, tmp_path):
    base, members = runs
    outs = []
    for name, method, seed in (("a", "dare_ties", "0"), ("b", "dare_ties", "0"), ("c", "dare_ties", "1"),
                               ("d", "ties", None)):
        outs.append(tmp_path / f"{name}.safetensors")
        seeded = [] if seed is None else ["--seed", seed]  # ties has no seed: the option is refused there
        assert cli.main(["merge", *map(str, members), "--method", method, "--base", str(base), *seeded,
                         "--out", str(outs[-1])]) == 0
    a, b, c, d = (_weights(path) for path in outs)
    assert _equal(a, b)  # same seed, same masks
    assert not _equal(a, c) and not _equal(a, d)
