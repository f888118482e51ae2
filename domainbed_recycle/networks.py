"""Featurizers and classifiers: a small CNN for the built-in 28x28 datasets, DomainBed's MNIST_CNN for its
MNIST datasets, ResNet-18/50 for real ones.

A model is `Model(featurizer, classifier)`; its state dict keys start with `featurizer.` and
`classifier.`, so featurizers and heads can be swapped between checkpoints (recycling needs that).
The architecture is described by a small JSON-able dict (`arch`), stored in every checkpoint.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from domainbed_recycle.errors import UserError

ARCHITECTURES = ("small_cnn", "mnist_cnn", "resnet18", "resnet50")  # the featurizers `build_featurizer` knows
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precision name -> autocast dtype


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to `precision` ("bf16", "fp16") on `device_type` ("cpu", "cuda"); "fp32" changes nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES[precision])


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks with GroupNorm (no BatchNorm buffers, so weight averaging is exact).

    Input [B, C, H, W] (built-ins: 3x28x28) -> features [B, 4 * width].
    Width 16 trains at ~90 steps/s (batch 64, one CPU thread) on this project's machines.
    """

    def __init__(self, input_shape: tuple[int, int, int], width: int = 16) -> None:
        super().__init__()
        channels = [input_shape[0], width, 2 * width, 2 * width, 4 * width]
        strides = [2, 2, 1, 1]
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(8, c_out), c_out), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.n_outputs = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(x)).flatten(1)


class MNISTCNN(nn.Module):
    """DomainBed's `MNIST_CNN` (372k parameters with its 10-class head): four 3x3 convolutions (64, 128
    stride 2, 128, 128 channels), each followed by ReLU then GroupNorm(8), and a global average pool.

    Input [B, C, 28, 28] (DomainBed: 1 channel for RotatedMNIST, 2 for ColoredMNIST) -> features [B, 128].
    Same layers, names and creation order as DomainBed's, so a run seeded alike starts from the same
    weights, and DomainBed's checkpoints load by renaming their keys only.
    """

    n_outputs = 128

    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in ((self.conv1, self.bn0), (self.conv2, self.bn1), (self.conv3, self.bn2),
                           (self.conv4, self.bn3)):
            x = norm(torch.relu(conv(x)))
        return self.avgpool(x).flatten(1)


class ResNetFeaturizer(nn.Module):
    """torchvision ResNet-18/50 without its fc layer: [B, 3, H, W] -> [B, 512 or 2048].

    With `freeze_bn`, BatchNorm layers stay in eval mode, as in DomainBed: the running statistics of
    the pre-trained weights are never updated (their affine parameters still train). This is the
    paper's ResNet-50 setting; it also keeps BatchNorm buffers identical across runs that share a
    pre-trained model, so weight averaging leaves them unchanged.
    """

    def __init__(self, depth: int = 50, freeze_bn: bool = True) -> None:
        super().__init__()
        import torchvision

        builders = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}
        if depth not in builders:
            raise UserError(f"unsupported ResNet depth {depth}; choose 18 or 50")
        network = builders[depth](weights=None)
        self.n_outputs = network.fc.in_features
        network.fc = nn.Identity()
        self.network = network
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> ResNetFeaturizer:
        super().train(mode)
        if self.freeze_bn:
            for module in self.network.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class Model(nn.Module):
    """featurizer -> dropout -> linear classifier. `forward` returns logits [B, num_classes]."""

    def __init__(self, featurizer: nn.Module, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.featurizer = featurizer
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(featurizer.n_outputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.featurizer(x)))


def architecture(input_shape: tuple[int, int, int], num_classes: int, hparams: dict[str, Any]) -> dict:
    """The JSON-able description of the model a run builds (stored in its checkpoints)."""
    name = hparams.get("arch", "small_cnn")
    arch: dict[str, Any] = {"featurizer": name, "input_shape": list(input_shape), "num_classes": num_classes}
    if name == "small_cnn":
        arch["width"] = int(hparams.get("cnn_width", 16))
    elif name == "mnist_cnn":
        pass  # fixed architecture: the input shape says it all
    elif name in ("resnet18", "resnet50"):
        arch["freeze_bn"] = bool(hparams.get("freeze_bn", True))
    else:
        raise UserError(f"unknown architecture '{name}'; known: {', '.join(ARCHITECTURES)}")
    return arch


def build_featurizer(arch: dict[str, Any]) -> nn.Module:
    """Instantiate the featurizer described by `arch` (see `architecture`), randomly initialised."""
    name = arch["featurizer"]
    if name == "small_cnn":
        return SmallCNN(tuple(arch["input_shape"]), width=arch.get("width", 16))
    if name == "mnist_cnn":
        return MNISTCNN(tuple(arch["input_shape"]))
    if name in ("resnet18", "resnet50"):
        return ResNetFeaturizer(depth=int(name[len("resnet"):]), freeze_bn=arch.get("freeze_bn", True))
    raise UserError(f"unknown architecture '{name}'; known: {', '.join(ARCHITECTURES)}")


def build_model(arch: dict[str, Any], dropout: float = 0.0) -> Model:
    """A randomly initialised `Model` for `arch` (seed torch before calling for reproducibility)."""
    return Model(build_featurizer(arch), int(arch["num_classes"]), dropout=dropout)


def same_featurizer(arch_a: dict[str, Any], arch_b: dict[str, Any]) -> bool:
    """Whether two architectures have interchangeable featurizers (the head may differ)."""
    ignore = {"num_classes", "classes"}
    return {k: v for k, v in arch_a.items() if k not in ignore} == {
        k: v for k, v in arch_b.items() if k not in ignore
    }
