"""The preprocessing that belongs to a set of weights, and image decoding.

Weights are only right with the preprocessing they were trained with: the official augreg weights use
mean = std = 0.5, DeiT and torchvision use the ImageNet statistics. A :class:`Preprocessing` travels
inside every checkpoint vitlab writes and is read from every format that records one.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from vitlab.errors import DataError, ImageTooLarge, NotFoundError, UndecodableImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the official ViT / augreg weights, SigLIP
INCEPTION_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's own statistics (its preprocess(); OpenCLIP's too)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The eval preprocessing each family's weights were published with, for a checkpoint that does not state its own
# (a bare state dict): (mean, std, crop_pct, interpolation). Sources: DeiT's and DINOv2's eval transforms (resize
# 256, crop 224 = 0.875, bicubic, ImageNet statistics), MAE's fine-tuning eval (the same), OpenAI CLIP's
# preprocess (resize 224 bicubic, crop 224, its statistics), SigLIP (resize straight to the size, mean = std = 0.5),
# the paper's ViT (timm's augreg configs: crop 0.9, mean = std = 0.5).
FAMILY_PREPROCESSING = {
    "vit": (INCEPTION_MEAN, INCEPTION_STD, 0.9, "bicubic"),
    "deit": (IMAGENET_MEAN, IMAGENET_STD, 0.875, "bicubic"),
    "dino": (IMAGENET_MEAN, IMAGENET_STD, 0.875, "bicubic"),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD, 0.875, "bicubic"),
    "mae": (IMAGENET_MEAN, IMAGENET_STD, 0.875, "bicubic"),
    "clip": (CLIP_MEAN, CLIP_STD, 1.0, "bicubic"),
    "siglip": (INCEPTION_MEAN, INCEPTION_STD, 1.0, "bicubic"),
}
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's modes of 16-bit grayscale (PNG, PGM, TIFF)


@dataclass(frozen=True)
class Preprocessing:
    """Eval-time preprocessing: resize the shorter side to img_size / crop_pct, centre-crop to
    img_size, scale to [0, 1], normalise with mean and std (timm's ``crop_pct`` convention)."""

    img_size: tuple[int, int] = (224, 224)  # (H, W) the model's input, as ViTConfig.img_size
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", tuple(int(s) for s in self.img_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or min(self.std, default=0) <= 0:
            raise DataError(f"mean and std need one value per channel each (std > 0), got {self.mean} and {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"interpolation={self.interpolation!r} is not one of {INTERPOLATIONS}")
        if not 0 < self.crop_pct <= 1:
            raise DataError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def default_for(cls, config) -> Preprocessing:
        """For a model without pretrained weights: its input size, mean = std = 0.5 for each of its input channels,
        no crop for small images."""
        small = max(config.img_size) <= 64
        half = (0.5,) * config.in_chans
        return cls(img_size=config.img_size, mean=half, std=half, crop_pct=1.0 if small else 0.9)

    @classmethod
    def for_family(cls, family: str, img_size: tuple[int, int]) -> Preprocessing:
        """The preprocessing a family's weights were published with (``FAMILY_PREPROCESSING``), at ``img_size``."""
        if family not in FAMILY_PREPROCESSING:
            raise DataError(f"unknown family {family!r}; known: {', '.join(FAMILY_PREPROCESSING)}")
        mean, std, crop_pct, interpolation = FAMILY_PREPROCESSING[family]
        return cls(img_size=img_size, mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation)

    def replace(self, **changes: Any) -> Preprocessing:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(img_size=list(self.img_size), mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {f.name for f in dataclasses.fields(cls)}
        if "input_size" in d and "img_size" not in d:  # files written before vitlab 0.2 name it input_size
            d = {**d, "img_size": d["input_size"]}
        return cls(**{k: v for k, v in d.items() if k in known})

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (..., C, H, W) in [0, 1] -> (x - mean) / std per channel, on x's device and in its dtype."""
        mean, std = self._channel_stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`: (..., C, H, W) -> x * std + mean (in [0, 1] for images it normalised)."""
        mean, std = self._channel_stats(x)
        return x * std + mean

    def _channel_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as (C, 1, 1) tensors on x's device and in its dtype, after checking x's channels."""
        if not x.is_floating_point():
            raise TypeError(f"expected float images scaled to [0, 1], got dtype {x.dtype}; convert uint8 images "
                            "with x.float() / 255")
        if x.ndim < 3 or x.shape[-3] != len(self.mean):
            raise DataError(f"expected images (..., {len(self.mean)}, H, W) for the {len(self.mean)} channel(s) of "
                             f"mean {self.mean} and std {self.std}, got shape {tuple(x.shape)}")
        return _stats_tensors(self.mean, self.std, x.device, x.dtype)

    def transform(self):
        """A torchvision.transforms.v2 pipeline: PIL image or uint8 tensor -> normalised float tensor."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        mode = InterpolationMode(self.interpolation)
        h, w = self.img_size
        if h == w:
            resize = T.Resize(math.floor(h / self.crop_pct), interpolation=mode, antialias=True)  # shorter side
        else:
            resize = T.Resize((math.floor(h / self.crop_pct), math.floor(w / self.crop_pct)), interpolation=mode,
                              antialias=True)
        return T.Compose([
            resize,  # on a PIL image this is PIL's resampling, as in timm and torchvision's references
            T.CenterCrop((h, w)),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(self.mean, self.std),
        ])

    def transform_whole(self, patch_size: int) -> Callable[[Any], torch.Tensor]:
        """Like :meth:`transform` without the crop, for a model that takes any size divisible by ``patch_size``:
        PIL image or uint8 tensor -> normalised float tensor (C, H', W') of the whole image, its shorter side resized
        to the shorter side of ``img_size`` and both sides rounded to a multiple of ``patch_size``."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        mode = InterpolationMode(self.interpolation)

        def apply(image: Any) -> torch.Tensor:
            x = T.ToImage()(image)  # (C, H, W) uint8
            h, w = x.shape[-2:]
            scale = min(self.img_size) / min(h, w)
            size = [max(patch_size, round(s * scale / patch_size) * patch_size) for s in (h, w)]
            x = T.ToDtype(torch.float32, scale=True)(T.Resize(size, mode, antialias=True)(x))
            return self.normalize(x.as_subclass(torch.Tensor))

        return apply


@functools.lru_cache(maxsize=16)
def _stats_tensors(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, 1, 1) tensors of mean and std, made once per device and dtype (a batch loader normalises every batch)."""
    return (torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grayscale becomes R = G = B, palette and RGBA lose their alpha, CMYK converts.

    16-bit grayscale (modes ``I;16*``, and ``I`` as PIL opens 16-bit PNG/PGM) keeps its top 8 bits (value >> 8):
    PIL's own ``convert("RGB")`` clips such values at 255 and turns almost every pixel white.
    """
    if img.mode in SIXTEEN_BIT_MODES:
        high = np.clip(np.asarray(img, dtype=np.int64), 0, 2**16 - 1) >> 8  # (H, W) 16-bit -> its top 8 bits
        img = Image.fromarray(high.astype(np.uint8))  # mode "L"
    elif img.mode == "P":  # palette transparency needs RGBA first, or PIL warns
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file as upright RGB: the EXIF orientation a phone camera writes is applied (as a photo
    viewer shows it), and grayscale, 16-bit grayscale, palette, RGBA and CMYK are converted (see :func:`to_rgb`).

    Raises :class:`~vitlab.errors.NotFoundError` for a missing file, and
    :class:`~vitlab.errors.UndecodableImage` naming the file for anything PIL cannot decode (not an image,
    truncated, corrupt, an unsupported variant of a format, a header claiming more pixels than PIL's
    decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"image file not found: {path}" if not path.exists() else f"{path} is not a file")
    return open_image(path, path)


def decode_image(data: bytes, name: str = "the image") -> Image.Image:
    """:func:`load_image` for bytes in memory (an upload): upright RGB, or an UndecodableImage naming ``name``."""
    return open_image(io.BytesIO(data), name)


def open_image(source: Any, name: str | Path) -> Image.Image:
    """Open, decode and orient ``source``. Any exception of the decoder is this file's problem, never the caller's:
    PIL raises OSError, SyntaxError and ValueError for most bad files, but also TypeError, struct.error,
    NotImplementedError, IndexError... for some (the image fuzz of tests/test_fuzz_images.py finds them)."""
    try:
        with Image.open(source) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(name, e) from e
    except MemoryError as e:
        raise UndecodableImage(name, e, then="the decoded image does not fit in memory") from e
    except Exception as e:  # noqa: BLE001 - see the docstring
        reason = f"{type(e).__name__}: {str(e).replace(repr(source), 'the data')}"  # PIL names a BytesIO by its repr
        raise UndecodableImage(name, reason, then="pass a JPEG, PNG, WebP, BMP or other PIL-readable file") from e


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding the pixels; UndecodableImage if the header
    does not read."""
    try:
        with Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(path, e) from e
    except Exception as e:  # noqa: BLE001 - as open_image
        raise UndecodableImage(path, e) from e
