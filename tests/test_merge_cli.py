"""`drecycle merge`: the operators of `merging.py` on run folders and checkpoint files, from the CLI."""

from __future__ import annotations

import pytest
import torch

from domainbed_recycle import averaging, cli, merging
from domainbed_recycle.checkpoints import load_checkpoint, read_metadata
from domainbed_recycle.sweep import jobs_from_configs, launch

SMALL = {"cnn_width": 8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base run, then two fine-tunings of it (different hparams seeds), and a wider run."""
    root = tmp_path_factory.mktemp("merge")
    common = {"dataset": "ColoredDigits", "test_envs": [2], "steps": 4, "checkpoint_freq": 2, "hparams": SMALL}
    (base,) = jobs_from_configs([common], root / "base")
    assert launch([base], "inprocess", progress=False).ok
    start = str(base.run.best_checkpoint)
    members = jobs_from_configs([common | {"hparams_seed": h, "init_featurizer": start, "init_classifier": start}
                                 for h in (1, 2)], root / "members")
    (wide,) = jobs_from_configs([common | {"hparams": {"cnn_width": 16}}], root / "wide")
    assert launch([*members, wide], "inprocess", progress=False).ok
    return base.output_dir, [job.output_dir for job in members], wide.output_dir


def _weights(path):
    return load_checkpoint(path)[0]


def test_uniform_and_ties_merges_equal_the_operators_and_record_what_they_merged(runs, tmp_path, capsys):
    base, members, _ = runs
    out = tmp_path / "soup.safetensors"
    assert cli.main(["merge", *map(str, members), "--method", "uniform", "--out", str(out), "--evaluate"]) == 0
    printed = capsys.readouterr().out
    assert "test domain 2 accuracy:" in printed and "merged (2 models)" in printed
    expected = averaging.uniform_average([_weights(m / "model_best.safetensors") for m in members])
    merged = _weights(out)
    assert all(torch.equal(merged[key], value) for key, value in expected.items())
    meta = read_metadata(out)
    assert meta["merge"]["method"] == "uniform" and len(meta["merge"]["members"]) == 2 and "arch" in meta

    out = tmp_path / "ties.safetensors"
    argv = ["merge", *map(str, members), "--method", "ties", "--base", str(base), "--keep", "0.5", "--out", str(out)]
    assert cli.main(argv) == 0
    theta0 = _weights(base / "model_best.safetensors")
    expected = merging.ties_merge(theta0, [_weights(m / "model_best.safetensors") for m in members], 1.0, 0.5)
    assert all(torch.equal(_weights(out)[key], value) for key, value in expected.items())
    assert cli.main(argv) == 2  # never overwrites a file unless asked
    assert "exists" in capsys.readouterr().err
    assert cli.main([*argv, "--force"]) == 0


def test_dare_ties_is_seeded_and_differs_from_plain_ties(runs, tmp_path):
    base, members, _ = runs
    outs = []
    for name, method, seed in (("a", "dare_ties", 0), ("b", "dare_ties", 0), ("c", "dare_ties", 1), ("d", "ties", 0)):
        outs.append(tmp_path / f"{name}.safetensors")
        assert cli.main(["merge", *map(str, members), "--method", method, "--base", str(base), "--seed", str(seed),
                         "--out", str(outs[-1])]) == 0
    a, b, c, d = (_weights(path) for path in outs)
    assert all(torch.equal(a[key], b[key]) for key in a)  # same seed, same masks
    assert any(not torch.equal(a[key], c[key]) for key in a) and any(not torch.equal(a[key], d[key]) for key in a)


def test_bad_merges_fail_with_one_line_and_write_nothing(runs, tmp_path, capsys):
    base, members, wide = runs
    out = tmp_path / "x.safetensors"
    cases = [
        ([], ["--method", "ties"], "needs --base"),
        ([str(wide)], ["--method", "uniform"], "does not match the architecture"),
        ([], ["--method", "wise_ft", "--base", str(base)], "ONE fine-tuned model"),
        ([], ["--method", "ties", "--base", str(base), "--keep", "0"], "keep must be in (0, 1]"),
        ([str(tmp_path / "nothing")], ["--method", "uniform"], "no such run folder or checkpoint file"),
    ]
    for more, options, message in cases:
        assert cli.main(["merge", *map(str, members), *more, *options, "--out", str(out)]) == 2, options
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
