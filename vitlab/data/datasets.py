"""Data sets by name: ``cifar10``, ``cifar100``, ``shapes``, ``folder:PATH``.

:func:`load_dataset` is the one entry point. Small images (up to :data:`SMALL_IMAGE_MAX` px) come back as an
:class:`ImageDataset`: every image decoded once into one uint8 tensor, so that batches are gathered and augmented
on the training device (:class:`vitlab.data.BatchLoader`). Larger images come back as a
:class:`vitlab.data.StreamingDataset`, decoded per item by a DataLoader's workers
(:func:`vitlab.data.make_stream_loader`).

Splits. ``"train"``, ``"val"`` and ``"test"``:

- ``cifar10`` / ``cifar100``: ``"train"`` is the official train set (50,000 images). CIFAR has no official
  validation set; ``"val"`` and ``"test"`` both return the official test set (10,000 images), which is what
  CIFAR papers report on. Tune hyper-parameters on a ``folder:`` copy with a held-out fraction if that matters.
- ``shapes``: three independent draws of the synthetic generator (10,000 / 2,000 / 2,000 images).
- ``folder:PATH``: see :mod:`vitlab.data.folder`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vitlab.errors import DataError

if TYPE_CHECKING:
    from vitlab.data.folder import StreamingDataset

SPLITS = ("train", "val", "test")
NAMES = ("cifar10", "cifar100", "shapes", "folder:PATH")
SMALL_IMAGE_MAX = 64  # images up to this side are loaded into memory; larger ones stream from disk


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts, the same on every machine and Python (no ``hash()``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def default_cache_dir() -> Path:
    """Where downloads go: ``$VITLAB_DATA`` if set, else ``~/.cache/vitlab/data``."""
    env = os.environ.get("VITLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitlab" / "data"


@dataclass
class ImageDataset:
    """A data set held in memory as one uint8 tensor.

    images: uint8 (N, 3, H, W); labels: int64 (N,) in [0, len(class_names)); masks: optional bool (N, H, W)
    object masks (``shapes`` only), True on the object's pixels.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        im, lb = self.images, self.labels
        if im.dtype != torch.uint8 or im.ndim != 4 or im.shape[1] != 3:
            raise DataError(f"images must be a uint8 (N, 3, H, W) tensor, got {im.dtype} {tuple(im.shape)}")
        if lb.dtype != torch.int64 or lb.shape != (im.shape[0],):
            raise DataError(f"labels must be an int64 ({im.shape[0]},) tensor, got {lb.dtype} {tuple(lb.shape)}")
        if len(lb) and not 0 <= int(lb.min()) <= int(lb.max()) < len(self.class_names):
            raise DataError(f"labels must lie in [0, {len(self.class_names)}), got [{int(lb.min())}, "
                             f"{int(lb.max())}]")
        if self.masks is not None and (self.masks.dtype != torch.bool
                                       or self.masks.shape != (im.shape[0], *im.shape[2:])):
            raise DataError(f"masks must be a bool {(im.shape[0], *im.shape[2:])} tensor, got {self.masks.dtype} "
                             f"{tuple(self.masks.shape)}")
        self.class_names = list(self.class_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        n, _, h, w = self.images.shape
        return (f"ImageDataset({n} images {h}x{w}, {len(self.class_names)} classes"
                f"{', with masks' if self.masks is not None else ''})")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """The images at ``indices`` (a new data set sharing nothing with this one)."""
        masks = None if self.masks is None else self.masks[indices]
        return ImageDataset(self.images[indices], self.labels[indices], self.class_names, masks)


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 (N, 3, H, W) images to (N, 3, size, size), bilinear with antialiasing, in chunks."""
    if images.shape[2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not one of {SPLITS}")


def load_dataset(name: str, split: str, *, data_dir: str | Path | None = None, download: bool = True,
                 val_fraction: float = 0.1, seed: int = 0, strict: bool = False, img_size: int | None = None
                 ) -> ImageDataset | StreamingDataset:
    """Load a data set by name; returns an :class:`ImageDataset` or a :class:`vitlab.data.StreamingDataset`.

    Args:
        name: ``"cifar10"``, ``"cifar100"``, ``"shapes"`` or ``"folder:PATH"``.
        split: ``"train"``, ``"val"`` or ``"test"`` (see the module docstring for what each means per data set).
        data_dir: cifar only: a folder holding (or to receive) ``cifar-10-batches-py/`` /
            ``cifar-100-python/``, or that folder itself. Default :func:`default_cache_dir`.
        download: cifar only: download the official archive when no copy is found.
        val_fraction: folder only, when PATH has no train/val/test sub-folders: the fraction of each class
            held out as ``"val"`` (seeded by ``seed``, disjoint from ``"train"``).
        seed: shapes: the generator seed; folder: the seed of the held-out split.
        strict: folder only: a file that does not decode is an error instead of a warning.
        img_size: the side the images are resized to (square). For ``folder:``, it also decides between
            in memory (<= 64) and streaming (> 64); by default the first image's size decides. For cifar the
            resized set is held in memory (N x 3 x S x S bytes). ``shapes`` is drawn at this size.
    """
    _check_split(split)
    if img_size is not None and (not isinstance(img_size, int) or img_size < 8):
        raise DataError(f"img_size must be an int >= 8 or None, got {img_size!r}")
    if name in ("cifar10", "cifar100"):
        from vitlab.data.cifar import load_cifar

        ds = load_cifar(name, split, data_dir=data_dir, download=download)
        if img_size is not None:
            ds.images = resize_images(ds.images, img_size)
        return ds
    if name == "shapes":
        from vitlab.data.shapes import make_shapes

        return make_shapes(split, seed=seed, img_size=img_size or 32)
    if name.startswith("folder:"):
        from vitlab.data.folder import load_folder

        path = name[len("folder:"):]
        if not path:
            raise DataError("folder: needs a path, e.g. 'folder:/data/pets'")
        return load_folder(Path(path).expanduser(), split, val_fraction=val_fraction, seed=seed, strict=strict,
                           img_size=img_size)
    raise DataError(f"unknown data set {name!r}; valid names: {', '.join(NAMES)}")
