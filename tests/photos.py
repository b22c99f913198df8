"""The real test photos in ``tests/data/photos/`` and a hand-drawn box around each one's main object.

Coordinates: a box is ``(x0, y0, x1, y1)`` in pixels of the saved JPEG, x to the right, y down, the origin at the
top-left corner of the image, ``x0``/``y0`` inclusive and ``x1``/``y1`` exclusive (so ``x1 - x0`` is the box's
width, and ``(0, 0, W, H)`` is the whole image). ``boxes.json`` also records each file's ``size`` as ``[W, H]``
(PIL's order); :func:`box_mask` takes sizes as ``(H, W)`` (torch's order). Sources and licences:
``tests/data/photos/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

PHOTOS_DIR = Path(__file__).resolve().parent / "data" / "photos"


@dataclass(frozen=True)
class Photo:
    name: str  # file name in PHOTOS_DIR, e.g. "coffee.jpg"
    path: Path
    image: Image.Image  # RGB
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels of `image`, x1/y1 exclusive
    object: str  # what the box marks, e.g. "coffee cup"

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.height, self.image.width

    @property
    def share(self) -> float:
        """The box's share of the image's area."""
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0) / (self.image.width * self.image.height)

    def mask(self, grid: tuple[int, int]) -> torch.Tensor:
        """:func:`box_mask` of this photo's box for a patch grid ``grid`` (h, w)."""
        return box_mask(self.box, self.size, grid)


def load_photos() -> list[Photo]:
    """Every photo listed in ``boxes.json``, in name order."""
    meta = json.loads((PHOTOS_DIR / "boxes.json").read_text())
    photos = []
    for name in sorted(meta):
        path = PHOTOS_DIR / name
        with Image.open(path) as im:
            image = im.convert("RGB")
        if list(image.size) != meta[name]["size"]:
            raise ValueError(f"{name}: size {list(image.size)} != boxes.json's {meta[name]['size']}")
        box = tuple(int(v) for v in meta[name]["box"])
        photos.append(Photo(name, path, image, box, meta[name]["object"]))
    return photos


def _cover(lo: float, hi: float, n: int, extent: float) -> torch.Tensor:
    """The fraction of each of ``n`` equal cells of [0, extent) that [lo, hi) covers."""
    edges = torch.linspace(0.0, float(extent), n + 1, dtype=torch.float64)
    overlap = edges[1:].clamp(max=float(hi)) - edges[:-1].clamp(min=float(lo))
    return overlap.clamp(min=0.0) / (float(extent) / n)


def box_mask(box, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The fraction of each patch covered by ``box``, as an (h, w) float32 tensor.

    ``box`` is ``(x0, y0, x1, y1)`` (x1/y1 exclusive) in the pixel frame of an image of ``size`` (H, W): the
    photo's own frame (``Photo.size``), or the model input's if the box has been scaled to it. The image is
    assumed resized directly (no crop, no padding) to the model input, which is split into a ``grid`` (h, w) of
    equal patches; as a direct resize scales each axis uniformly, the mask is the same in either frame. Patch
    (i, j) covers rows [i H/h, (i+1) H/h) and columns [j W/w, (j+1) W/w); its value is the covered share of its
    area, so ``mask.mean()`` is the box's share of the image (for a box inside the image) and ``mask.sum()`` is
    the number of patches' worth of area inside the box.
    """
    x0, y0, x1, y1 = box
    H, W = size
    h, w = grid
    return (_cover(y0, y1, h, H)[:, None] * _cover(x0, x1, w, W)[None, :]).float()
