"""Image operations used to synthesise the built-in datasets, and DomainBed's real-image transforms
(on PIL images, and on uint8 tensors for images cached in memory).

Synthesis works on whole batches of uint8 tensors [N, C, H, W] so generating a dataset takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rotate_batch(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate every image counter-clockwise by `angle` degrees about its centre.

    Bilinear, zero fill, same size: the recipe of DomainBed's RotatedMNIST.
    Args: images uint8 [N, C, H, W]. Returns uint8 [N, C, H, W].
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if angle % 360 == 0:
        return images.clone()
    return F.rotate(images, float(angle), interpolation=InterpolationMode.BILINEAR, fill=[0.0])


def random_patches(
    image: torch.Tensor, n: int, side: tuple[float, float], rng: np.random.Generator, size: int = 28
) -> torch.Tensor:
    """`n` random square crops of `image`, each of side U(side) pixels, resized to `size` x `size`.

    Crops are area-averaged (antialiased shrink of the image for large crops, then torchvision's
    roi_align with adaptive sampling), so large crops are downscaled without aliasing.
    Args: image uint8 [C, H, W]. Returns uint8 [n, C, size, size].
    """
    from torchvision.ops import roi_align

    _, height, width = image.shape
    sides = rng.uniform(side[0], side[1], n).clip(4, min(height, width))
    x0 = rng.uniform(0, 1, n) * (width - sides)
    y0 = rng.uniform(0, 1, n) * (height - sides)
    boxes = np.stack([np.zeros(n), x0, y0, x0 + sides, y0 + sides], axis=1)
    source = image[None].float()
    # Large crops: shrink the image first (antialiased) so roi_align averages only a few samples a bin.
    factor = max(1.0, float(sides.min()) / (2 * size))
    if factor > 1.0:
        source = torch.nn.functional.interpolate(
            source, scale_factor=1 / factor, mode="bilinear", antialias=True, align_corners=False
        )
        boxes[:, 1:] *= source.shape[-1] / width
    crops = roi_align(source, torch.as_tensor(boxes, dtype=torch.float32), output_size=size, aligned=True)
    return crops.round_().clamp_(0, 255).to(torch.uint8)


class GlyphRenderer:
    """Renders characters of one TrueType font as MNIST-like 28x28 grayscale images.

    Like MNIST, the glyph is fitted in a box (keeping its aspect) and placed with its centre of mass
    at the canvas centre; each sample gets a random box size (60-80% of the side), a small rotation
    (+-12 degrees) and a shift of up to 2 pixels.
    """

    def __init__(self, font_path: Path, render_px: int = 96) -> None:
        from PIL import ImageFont

        self.font = ImageFont.truetype(str(font_path), render_px)
        self._cache: dict[str, object] = {}

    def _master(self, char: str):
        """The glyph rendered large and cropped to its ink (a PIL 'L' image)."""
        from PIL import Image, ImageDraw

        if char not in self._cache:
            left, top, right, bottom = self.font.getbbox(char)
            canvas = Image.new("L", (right - left + 8, bottom - top + 8), 0)
            ImageDraw.Draw(canvas).text((4 - left, 4 - top), char, fill=255, font=self.font)
            bbox = canvas.getbbox()
            if bbox is None:
                raise ValueError(f"font {self.font.path} has no ink for {char!r}")
            self._cache[char] = canvas.crop(bbox)
        return self._cache[char]

    def render(self, char: str, rng: np.random.Generator, size: int = 28) -> np.ndarray:
        """One sample of `char`: uint8 [size, size], white on black, centre of mass near the centre."""
        from PIL import Image

        glyph = self._master(char).rotate(
            rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0
        )
        box = rng.uniform(0.6, 0.8) * size
        scale = box / max(glyph.size)
        width, height = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
        ink = np.asarray(glyph.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float64)
        ys, xs = np.indices(ink.shape)
        mass = max(ink.sum(), 1e-9)
        shift = rng.integers(-2, 3, 2)
        top = int(round(size / 2 - (ys * ink).sum() / mass)) + int(shift[0])
        left = int(round(size / 2 - (xs * ink).sum() / mass)) + int(shift[1])
        canvas = np.zeros((size, size), dtype=np.float64)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + height, size), min(left + width, size)
        canvas[y0:y1, x0:x1] = ink[y0 - top : y1 - top, x0 - left : x1 - left]
        return canvas.round().clip(0, 255).astype(np.uint8)


def domainbed_transform(size: int = 224):
    """DomainBed's evaluation transform for real images: Resize((size, size)), ToTensor, Normalize."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def domainbed_augment_transform(size: int = 224):
    """DomainBed's training augmentation for real images (its `augment_transform`)."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 [B, 3, H, W]: ToTensor's /255 then Normalize with ImageNet's statistics."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return images.float().div_(255.0).sub_(mean).div_(std)


def domainbed_augment_uint8(size: int):
    """DomainBed's training augmentation for one uint8 image tensor [3, H, W] -> uint8 [3, size, size]
    (crop, flip, colour jitter, grayscale; no ToTensor/Normalize). Draws from torch's global RNG."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.3, 0.3, 0.3, 0.3),
            v2.RandomGrayscale(),
        ]
    )


def augment_batch(images: torch.Tensor, transform) -> torch.Tensor:
    """`transform` applied to each image of uint8 [B, 3, H, W] on its own (own crop, own jitter)."""
    return torch.stack([transform(image) for image in images])


BLEND_MODES = ("contrast", "difference")


def blend_digits(digits: torch.Tensor, backgrounds: torch.Tensor, mode: str, rng: np.random.Generator) -> torch.Tensor:
    """Draw grayscale digits over colour backgrounds; the digit's gray level w in [0, 1] is the weight.

    Modes (the stroke style is part of a domain's look):
      - "contrast": strokes in a colour opposed to the background's mean, per image and channel
        (bright 200..255 on dark channels, dark 0..55 on bright ones), so they stay visible anywhere;
      - "difference": |background - 255 w|, MNIST-M's blend (strokes invert the background).
    Args: digits uint8 [N, H, W]; backgrounds uint8 [N, 3, H, W]. Returns uint8 [N, 3, H, W].
    """
    weight = digits.float().div(255.0)[:, None]  # [N, 1, H, W]
    background = backgrounds.float()
    if mode == "contrast":
        mean = background.mean(dim=(2, 3), keepdim=True)  # [N, 3, 1, 1]
        offset = torch.as_tensor(rng.uniform(0, 55, tuple(mean.shape)), dtype=torch.float32)
        stroke = torch.where(mean < 128, 255.0 - offset, offset)
        out = background * (1 - weight) + stroke * weight
    elif mode == "difference":
        out = (background - 255.0 * weight).abs()
    else:
        raise ValueError(f"unknown blend mode {mode!r}; known: {BLEND_MODES}")
    return out.round_().clamp_(0, 255).to(torch.uint8)
