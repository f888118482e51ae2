"""Decode-once cache of a folder domain, and the in-memory domain that trains from it.

Every image of a domain is decoded and resized to R x R once, into a uint8 [N, 3, R, R] `.npy` file
opened memory-mapped; the file name carries a hash of the domain's file list (relative paths, sizes,
mtimes, ctimes and inodes: `ImageTree.fingerprint` says why), labels and R, so any change to the folder
or the resolution makes a new cache. Batches are
gathered from the map, augmented (training draws of training domains only) and normalised as
DomainBed's transforms do: training reads no image file after the first run.

Cost on disk: 3 R^2 bytes an image, 147 KiB at 224 px (PACS 1.4 GiB, VLCS 1.5, OfficeHome 2.2,
TerraIncognita 3.5, DomainNet 82 GiB). A cache is only built when the disk keeps `FREE_MARGIN` free
after it; otherwise one line says what it needs and what to do instead (decode on the fly with
`cache=no`, a smaller resolution, or $DRECYCLE_CACHE on a larger disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from domainbed_recycle.datasets.base import InMemoryDomain
from domainbed_recycle.datasets.image_files import ImageTree, load_array
from domainbed_recycle.datasets.transforms import augment_batch, imagenet_normalize
from domainbed_recycle.errors import UserError
from domainbed_recycle.misc import available_cores

CACHE_FORMAT = 2  # 2: the key holds ctimes and inodes (a replaced image of the same size and mtime)
FREE_MARGIN = 2**30  # bytes a cache build leaves free on its disk


def cache_bytes(n_images: int, resolution: int) -> int:
    """Size of the cache of `n_images` images at `resolution` px: uint8 [N, 3, R, R] (plus a small header)."""
    return n_images * 3 * resolution * resolution


class CachedImageDomain(InMemoryDomain):
    """One folder domain (or a split of it) read from its cache.

    Args:
        images: uint8 [N_all, 3, R, R], usually memory-mapped (shared by the domain's splits).
        labels: int64 [n], the labels of `rows`.
        rows: int64 [n], which images of `images` this domain holds (default: all).
        augment: per-image uint8 transform applied to training draws (`batch(..., augment=True)`), or None.
    Items and batches are float32 [3, R, R] normalised with ImageNet's statistics, as DomainBed's.
    """

    HEAVY_BATCHES = True  # 224 px images augmented one by one: built by loader workers

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.rows = torch.arange(len(images)) if rows is None else rows.long()
        if len(self.rows) != len(labels):
            raise ValueError(f"{len(self.rows)} rows but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.augment = augment

    def batch(self, indices: torch.Tensor, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[self.rows[indices]]
        if augment and self.augment is not None:
            x = augment_batch(x, self.augment)
        return imagenet_normalize(x), self.labels[indices]

    def subset(self, indices: torch.Tensor) -> CachedImageDomain:
        """The items `indices` of this domain, sharing its (memory-mapped) images."""
        return CachedImageDomain(self.images, self.labels[indices], self.rows[indices], self.augment)


def cache_path(tree: ImageTree, resolution: int, folder: Path) -> Path:
    """`folder/<domain>-<R>px-<hash>.npy`, the hash covering the files, their labels and R."""
    key = json.dumps(
        {"format": CACHE_FORMAT, "resolution": resolution, "classes": tree.classes,
         "labels": [label for _, label in tree.samples], "files": tree.fingerprint()},
    )
    digest = hashlib.sha256(f"{tree.root}\n{key}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", tree.root.name) or "domain"
    return folder / f"{name}-{resolution}px-{digest}.npy"


def cached_images(tree: ImageTree, resolution: int, folder: Path) -> torch.Tensor:
    """uint8 [N, 3, R, R] of the tree's samples (in order), memory-mapped from the cache; built first
    if absent (every image decoded once: a corrupt one is a CorruptImage naming it, before training)."""
    path = cache_path(tree, resolution, folder)
    expected = (len(tree.samples), 3, resolution, resolution)
    if path.exists():
        try:
            array = np.load(path, mmap_mode="c")  # copy-on-write: writable for torch, file never changed
            if array.shape == expected and array.dtype == np.uint8:
                return torch.from_numpy(array)
        except ValueError:  # a damaged cache file is rebuilt
            pass
    _build(tree, resolution, path)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def check_space(folder: Path, needed: int, what: str) -> None:
    """UserError (one line) unless `folder`'s disk keeps `FREE_MARGIN` bytes free after `needed` more."""
    free = shutil.disk_usage(folder).free
    if needed + FREE_MARGIN > free:
        raise UserError(f"{what} needs {needed / 2**30:.1f} GiB in {folder}, which has {free / 2**30:.1f} GiB "
                        f"free: decode on the fly instead (dataset option cache=no), use a smaller resolution "
                        f"(option resolution=...), or point DRECYCLE_CACHE at a larger disk")


def _build(tree: ImageTree, resolution: int, path: Path) -> None:
    """Decode and resize every image (threads: PIL decodes without the GIL) into `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = cache_bytes(len(tree.samples), resolution)
    what = f"the cache of {tree.root} ({len(tree.samples)} images at {resolution} px)"
    check_space(path.parent, needed, what)
    if needed >= 2**30:
        print(f"building {what}: {needed / 2**30:.1f} GiB in {path.parent}", file=sys.stderr, flush=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    shape = (len(tree.samples), 3, resolution, resolution)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        paths = [p for p, _ in tree.samples]
        workers = min(8, available_cores())
        bar = tqdm(total=len(paths), desc=f"caching {tree.root.name} at {resolution}px", file=sys.stderr,
                   disable=len(paths) < 2000, leave=False)
        with ThreadPoolExecutor(workers) as pool, bar:
            for start in range(0, len(paths), 256):  # chunks: a corrupt image stops the build soon
                chunk = list(pool.map(lambda p: load_array(p, resolution), paths[start : start + 256]))
                array[start : start + len(chunk)] = np.stack(chunk)
                bar.update(len(chunk))
        array.flush()
        del array
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
