"""Image operations used to synthesise the built-in datasets, and DomainBed's real-image transforms.

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

    Crops are area-averaged (torchvision's roi_align with adaptive sampling), so large crops are
    downscaled without aliasing.
    Args: image uint8 [C, H, W]. Returns uint8 [n, C, size, size].
    """
    from torchvision.ops import roi_align

    _, height, width = image.shape
    sides = rng.uniform(side[0], side[1], n).clip(4, min(height, width))
    x0 = rng.uniform(0, 1, n) * (width - sides)
    y0 = rng.uniform(0, 1, n) * (height - sides)
    boxes = np.stack([np.zeros(n), x0, y0, x0 + sides, y0 + sides], axis=1)
    crops = roi_align(
        image[None].float(), torch.as_tensor(boxes, dtype=torch.float32), output_size=size, aligned=True
    )
    return crops.round_().clamp_(0, 255).to(torch.uint8)


class GlyphRenderer:
    """Renders characters of one TrueType font as MNIST-like 28x28 grayscale images.

    Like MNIST, the glyph is fitted in a box (of side `box` pixels, keeping its aspect) and centred
    in the canvas; each sample gets a random box size, small rotation and shift.
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
        """One sample of `char`: uint8 [size, size], white on black."""
        from PIL import Image

        glyph = self._master(char).rotate(
            rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0
        )
        box = rng.uniform(0.6, 0.8) * size
        scale = box / max(glyph.size)
        width, height = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
        glyph = glyph.resize((width, height), Image.Resampling.LANCZOS)
        canvas = Image.new("L", (size, size), 0)
        dx, dy = rng.integers(-2, 3, 2)
        canvas.paste(glyph, ((size - width) // 2 + int(dx), (size - height) // 2 + int(dy)))
        return np.asarray(canvas, dtype=np.uint8)


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


def paint_digits(digits: torch.Tensor, backgrounds: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Paint grayscale digits over colour backgrounds in a colour that contrasts with each background.

    Per image and channel the stroke colour is bright (200..255) where the background's mean is dark
    and dark (0..55) where it is bright, so the digit stays visible on any texture or photo; the
    digit's gray level is the blending weight (anti-aliased edges stay soft).
    Args: digits uint8 [N, H, W]; backgrounds uint8 [N, 3, H, W]. Returns uint8 [N, 3, H, W].
    """
    n = len(digits)
    weight = digits.float().div(255.0)[:, None]  # [N, 1, H, W]
    mean = backgrounds.float().mean(dim=(2, 3), keepdim=True)  # [N, 3, 1, 1]
    offset = torch.as_tensor(rng.uniform(0, 55, (n, 3, 1, 1)), dtype=torch.float32)
    stroke = torch.where(mean < 128, 255.0 - offset, offset)
    out = backgrounds.float() * (1 - weight) + stroke * weight
    return out.round_().clamp_(0, 255).to(torch.uint8)
