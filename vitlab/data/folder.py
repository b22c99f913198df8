"""``folder:PATH``: images in class sub-folders (``PATH/<split>/<class>/*.jpg``, or ``PATH/<class>/*.jpg``).

Splits:

- ``PATH/train`` and ``PATH/val`` and/or ``PATH/test`` exist: ``"train"`` reads ``PATH/train``; ``"val"`` reads
  ``PATH/val`` (``PATH/test`` when there is no ``val``); ``"test"`` reads ``PATH/test`` (else ``PATH/val``).
- Only ``PATH/train``, or class folders directly under ``PATH``: that folder is split per class, a seeded
  ``val_fraction`` of each class (at least one image of any class with two or more) held out as ``"val"``
  (also returned for ``"test"``); ``"train"`` gets the rest, disjoint from it.

Class names are the sorted sub-folder names of the training folder; an evaluation folder may lack a class but may
not add one. Files are taken recursively within a class folder when their extension is an image's
(:data:`IMAGE_EXTENSIONS`), in sorted order.

Small images (side <= 64: ``img_size`` if given, else the first image decides) are decoded once into an
:class:`ImageDataset` (every image resized to ``img_size``, or to the first image's size when they differ).
So are small source images upsampled for a pretrained model (CIFAR's 32 px at ``img_size`` 84 or 112) while
the resized set fits in :data:`IN_MEMORY_MAX_BYTES`. Larger ones give a :class:`StreamingDataset` that decodes
per item.

Bad data: a file that does not decode is skipped, and all skipped files are reported in one warning naming a
few (``strict=True``: an error naming the file). Grayscale, palette, RGBA and CMYK images become RGB (alpha is
dropped). A class folder without images, or a split without class folders, is a ValueError naming the folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vitlab.data.datasets import SMALL_IMAGE_MAX, ImageDataset, generator
from vitlab.errors import DataError, NotFoundError, UndecodableImage  # noqa: F401 (re-exported)
from vitlab.preprocess import image_size_of, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def decode_rgb(path: Path) -> np.ndarray:
    """Decode one image file into an upright uint8 (H, W, 3) RGB array (:func:`vitlab.load_image`); raises
    :class:`UndecodableImage` naming the file, whatever the decoder raised.

    PIL, not torchvision.io (whose decoders torchvision 0.29 deprecates): 8,000 32 px JPEGs/s on one core.
    """
    return np.asarray(open_image(path, path))  # 16-bit grayscale keeps its top 8 bits (see to_rgb)


def decode_image_file(path: Path) -> torch.Tensor:
    """Decode one image file into an upright uint8 (3, H, W) RGB tensor; raises :class:`UndecodableImage`."""
    return torch.from_numpy(decode_rgb(path).copy()).permute(2, 0, 1)


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image files>")
    return names


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    if not files:
        raise DataError(f"class folder {class_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                         "remove it or add images")
    return files


def _samples(folder: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    present = _class_folders(folder)
    extra = sorted(set(present) - set(class_names))
    if extra:
        raise DataError(f"{folder} has class folders the training folder lacks: {', '.join(extra[:5])}")
    return [(f, class_names.index(c)) for c in present for f in _image_files(folder / c)]


def folder_samples(root: Path, split: str, val_fraction: float = 0.1, seed: int = 0
                   ) -> tuple[list[tuple[Path, int]], list[str], Path]:
    """The (file, label) pairs of ``split``, the class names, and the folder they come from."""
    if not root.is_dir():
        raise NotFoundError(f"data folder not found: {root}")
    evals = [root / s for s in (("val", "test") if split != "test" else ("test", "val")) if (root / s).is_dir()]
    base = root / "train" if (root / "train").is_dir() else root
    if base == root and evals:
        raise DataError(f"{root} has {evals[0].name}/ but no train/ folder; expected {root}/train/<class>/...")
    class_names = _class_folders(base)
    if len(class_names) < 2:
        raise DataError(f"{base} has {len(class_names)} class folder ({', '.join(class_names)}); a classifier needs "
                         f"at least two: add a folder per class, {base}/<class>/<image files>")
    if base != root and evals:  # explicit splits
        folder = base if split == "train" else evals[0]
        return _samples(folder, class_names), class_names, folder
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1) to hold out a validation split of {base}, "
                         f"got {val_fraction}")
    picked = []
    for label, name in enumerate(class_names):
        files = _image_files(base / name)
        n_val = min(max(round(len(files) * val_fraction), 1), len(files) - 1) if len(files) >= 2 else 0
        perm = torch.randperm(len(files), generator=generator("folder-split", seed, name)).tolist()
        chosen = perm[:n_val] if split != "train" else perm[n_val:]
        picked += [(files[i], label) for i in sorted(chosen)]
    if not picked:
        raise DataError(f"the {split!r} split of {base} is empty (val_fraction={val_fraction})")
    return picked, class_names, base


def report_bad(bad: list[tuple[Path, str]], total: int, where: Path | None, stacklevel: int = 3) -> None:
    """One warning for the ``(file, error)`` pairs in ``bad``, skipped out of ``total`` files under ``where``."""
    if bad:
        names = ", ".join(_relative(Path(p), where) for p, _ in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"{where or 'StreamingDataset'}: skipped {len(bad)} of {total} files that do not decode: "
                      f"{names}{more} (first error: {bad[0][1]}); strict=True makes this an error",
                      stacklevel=stacklevel)


def _relative(path: Path, where: Path | None) -> str:
    return str(path.relative_to(where)) if where is not None and path.is_relative_to(where) else str(path)


def load_in_memory(samples: list[tuple[Path, int]], class_names: list[str], where: Path,
                   size: tuple[int, int] | None, strict: bool = False) -> ImageDataset:
    """Decode every file into one uint8 (N, 3, H, W) tensor, resized to ``size`` (default: the first image's)."""
    images: np.ndarray | None = None  # (N, H, W, 3), filled in place
    keep = torch.zeros(len(samples), dtype=torch.bool)
    bad: list[tuple[Path, str]] = []
    for i, (path, _) in enumerate(tqdm(samples, desc=f"decoding {where.name}", unit="img", disable=None)):
        try:
            arr = decode_rgb(path)
        except UndecodableImage as e:
            if strict:
                raise
            bad.append((path, e.reason))
            continue
        if images is None:
            size = size or arr.shape[:2]
            images = np.empty((len(samples), *size, 3), dtype=np.uint8)
        if arr.shape[:2] != tuple(size):
            img = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float()
            img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
            arr = img[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
        images[i] = arr
        keep[i] = True
    report_bad(bad, len(samples), where)
    if images is None:
        raise DataError(f"{where}: none of the {len(samples)} image files decodes")
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2)[keep].contiguous(), labels[keep], class_names)


class StreamingDataset(Dataset):
    """Images decoded from disk per item, for data sets too large to hold in memory.

    ``ds[i]`` is ``(image, label)``: ``image`` is ``transform(uint8 (3, H, W) RGB tensor at its stored size)``,
    or that tensor itself when ``transform`` is None. Resizing, cropping and augmentation are the loader's job
    (:func:`vitlab.data.make_stream_loader` sets ``transform``). Files whose header does not read are dropped when
    the data set is built (one warning). A file that fails later, while decoding, raises :class:`UndecodableImage`
    from ``ds[i]`` and :meth:`load`; the stream loader skips such files (never replacing them by another image) and
    reports them in one warning per epoch with their count, or raises with ``strict``.
    """

    def __init__(self, samples: list[tuple[Path, int]], class_names: list[str], *, root: Path | None = None,
                 img_size: int | None = None, strict: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not samples:
            raise DataError(f"{root or 'StreamingDataset'}: no images")
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.root = root
        self.img_size = img_size
        self.strict = strict
        self.transform = transform
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def with_transform(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> StreamingDataset:
        """A copy sharing the file list, with another transform."""
        return StreamingDataset(self.samples, self.class_names, root=self.root, img_size=self.img_size,
                                strict=self.strict, transform=transform)

    def subset(self, indices: torch.Tensor) -> StreamingDataset:
        """The examples at ``indices``, in that order (as ``ImageDataset.subset``)."""
        return StreamingDataset([self.samples[i] for i in indices.tolist()], self.class_names, root=self.root,
                                img_size=self.img_size, strict=self.strict, transform=self.transform)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        """The decoded uint8 (3, H, W) image ``i`` and its label, without the transform; raises
        :class:`UndecodableImage` naming the file when it does not decode."""
        path, label = self.samples[i]
        return decode_image_file(path), label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.load(i)
        return (img if self.transform is None else self.transform(img)), label


def _readable_headers(samples: list[tuple[Path, int]], where: Path, strict: bool) -> list[tuple[Path, int]]:
    kept, bad = [], []
    for path, label in tqdm(samples, desc=f"checking {where.name}", unit="img", disable=None):
        try:
            image_size_of(path)  # reading the header is the check
            kept.append((path, label))
        except UndecodableImage as e:
            if strict:
                raise
            bad.append((path, e.reason))
    report_bad(bad, len(samples), where)
    if not kept:
        raise DataError(f"{where}: none of the {len(samples)} image files decodes")
    return kept


IN_MEMORY_MAX_BYTES = 4 * 2**30  # small source images upsampled to img_size stay in memory up to this (uint8)


def load_folder(root: Path, split: str, *, val_fraction: float = 0.1, seed: int = 0, strict: bool = False,
                img_size: int | None = None) -> ImageDataset | StreamingDataset:
    """``folder:PATH`` (see the module docstring)."""
    samples, class_names, where = folder_samples(root, split, val_fraction, seed)
    small_source = False
    for path, _ in samples[:16]:  # the first image that opens decides
        try:
            small_source = max(image_size_of(path)) <= SMALL_IMAGE_MAX
            break
        except UndecodableImage:
            continue
    small = small_source
    if img_size is not None:  # upsampled small images stay in memory while they fit
        small = img_size <= SMALL_IMAGE_MAX or (small_source and len(samples) * 3 * img_size**2 <= IN_MEMORY_MAX_BYTES)
    if small:
        size = (img_size, img_size) if img_size is not None else None
        return load_in_memory(samples, class_names, where, size, strict)
    samples = _readable_headers(samples, where, strict)
    return StreamingDataset(samples, class_names, root=where, img_size=img_size, strict=strict)
