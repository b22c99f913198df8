"""Batched training augmentation, as tensor ops on the device.

The random choices of a batch are drawn first, on the CPU, from one ``torch.Generator``
(:func:`sample_params`); the ops then apply them to any subset of the batch's rows (:func:`augment_rows`). So a
batch can be split across processes and every process reproduces its rows of the single-process batch exactly.

Per image, in order (the order of torchvision's and timm's recipes):

1. random crop with ``crop_padding`` (reflect padding: no black borders) and horizontal flip, in one gather;
2. TrivialAugmentWide or RandAugment (:mod:`vitlab.data.autoaugment`) on uint8;
3. scale to [0, 1] and normalise with mean and std;
4. random erasing (Zhong et al., 2017): a rectangle set to 0, i.e. the mean colour after normalisation.

Per batch: label smoothing, then Mixup (Zhang et al., 2017) or CutMix (Yun et al., 2019), each image mixed with
the previous one in the batch (torchvision's ``roll(1)`` pairing), one lambda per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vitlab.data.autoaugment import apply_ops, check_policy, sample_ops
from vitlab.errors import DataError
from vitlab.preprocess import Preprocessing

ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults: area fraction and aspect ratio ranges
ERASE_RATIO = (0.3, 3.3)


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 4  # random crop with this much reflect padding per side (0: no crop)
    hflip: bool = True
    auto_augment: str = "none"  # "none" | "trivial" (TrivialAugmentWide) | "randaugment"
    randaugment_n: int = 2  # RandAugment ops per image (Cubuk et al. 2020; torchvision's default)
    randaugment_m: int = 9  # RandAugment magnitude bin, 0..30
    random_erasing: float = 0.0  # probability per image
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for Mixup's lambda; 0: off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for CutMix's lambda; 0: off
    mix_prob: float = 1.0  # probability a batch is mixed (when either alpha > 0); Mixup or CutMix 50/50 when both
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_policy(self.auto_augment)
        if self.crop_padding < 0 or self.randaugment_n < 0:
            raise DataError(f"crop_padding and randaugment_n must be >= 0, got {self.crop_padding}, "
                             f"{self.randaugment_n}")
        if not 0 <= self.randaugment_m <= 30:
            raise DataError(f"randaugment_m must be in [0, 30] (31 magnitude bins), got {self.randaugment_m}")
        for name in ("random_erasing", "mix_prob", "label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                raise DataError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise DataError(f"mixup_alpha and cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def soft_targets(self) -> bool:
        """True when training targets are (B, num_classes) probabilities instead of class indices."""
        return self.mixes or self.label_smoothing > 0


@dataclass
class BatchParams:
    """The random choices of one batch of n images (CPU tensors, one row per image)."""

    crop: torch.Tensor  # int64 (n, 2): (dy, dx) offsets into the padded image, in [0, 2 * padding]
    flip: torch.Tensor  # bool (n,)
    ops: torch.Tensor  # int64 (n, k) auto-augment op indices (k = 0 when off)
    mags: torch.Tensor  # float64 (n, k) signed magnitudes
    erase: torch.Tensor  # bool (n,)
    erase_box: torch.Tensor  # int64 (n, 4): top, left, height, width
    mix: str  # "none" | "mixup" | "cutmix"
    lam: float  # weight of each image itself; for CutMix the kept-area fraction
    cut_box: tuple[int, int, int, int]  # CutMix: y1, y2, x1, x2 (pasted from the partner)


def sample_params(cfg: AugmentConfig, n: int, height: int, width: int, g: torch.Generator) -> BatchParams:
    """Draw every random choice of an n-image batch from ``g``, in a fixed order."""
    p = cfg.crop_padding
    crop = torch.randint(2 * p + 1, (n, 2), generator=g)
    flip = torch.rand(n, generator=g) < 0.5 if cfg.hflip else torch.zeros(n, dtype=torch.bool)
    if cfg.auto_augment == "none":
        ops, mags = torch.zeros((n, 0), dtype=torch.int64), torch.zeros((n, 0), dtype=torch.float64)
    elif cfg.auto_augment == "trivial":
        ops, mags = sample_ops("trivial", n, height, width, g, num_ops=1)
    else:
        ops, mags = sample_ops("randaugment", n, height, width, g, num_ops=cfg.randaugment_n,
                               magnitude=cfg.randaugment_m)
    erase = torch.rand(n, generator=g) < cfg.random_erasing
    u = torch.rand((n, 4), generator=g, dtype=torch.float64)
    area = height * width * (ERASE_SCALE[0] + u[:, 0] * (ERASE_SCALE[1] - ERASE_SCALE[0]))
    ratio = torch.exp(math.log(ERASE_RATIO[0]) + u[:, 1] * (math.log(ERASE_RATIO[1]) - math.log(ERASE_RATIO[0])))
    eh = torch.sqrt(area * ratio).round().long().clamp(1, height)  # clamped where torchvision re-draws
    ew = torch.sqrt(area / ratio).round().long().clamp(1, width)
    top = (u[:, 2] * (height - eh + 1)).long()
    left = (u[:, 3] * (width - ew + 1)).long()
    erase_box = torch.stack([top, left, eh, ew], 1)

    mix, lam, cut_box = "none", 1.0, (0, 0, 0, 0)
    if cfg.mixes:
        u_mix, u_kind = torch.rand(2, generator=g).tolist()
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=g)))  # Beta has no torch.Generator
        if u_mix < cfg.mix_prob:
            both = cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0
            mix = "mixup" if (cfg.mixup_alpha > 0 and (not both or u_kind < 0.5)) else "cutmix"
            alpha = cfg.mixup_alpha if mix == "mixup" else cfg.cutmix_alpha
            lam = float(rng.beta(alpha, alpha))
            if mix == "cutmix":  # torchvision's CutMix box: centre uniform, sides sqrt(1 - lam), clipped
                cy, cx = int(rng.integers(height)), int(rng.integers(width))
                r = 0.5 * math.sqrt(1.0 - lam)
                rh, rw = int(r * height), int(r * width)
                y1, y2 = max(cy - rh, 0), min(cy + rh, height)
                x1, x2 = max(cx - rw, 0), min(cx + rw, width)
                cut_box = (y1, y2, x1, x2)
                lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
    return BatchParams(crop, flip, ops, mags, erase, erase_box, mix, lam, cut_box)


def crop_flip(x: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop with reflect padding, then horizontal flip, as one gather.

    x: (n, C, H, W); crop: (n, 2) offsets (dy, dx) in [0, 2 * padding] into the padded image; flip: (n,) bool.
    """
    n, c, h, w = x.shape
    if padding >= min(h, w):
        raise DataError(f"crop_padding={padding} must be smaller than the image side {min(h, w)}")
    crop, flip = crop.to(x.device), flip.to(x.device)
    rows = crop[:, :1] - padding + torch.arange(h, device=x.device)  # (n, H) source rows in the padded frame
    cols = crop[:, 1:] - padding + torch.arange(w, device=x.device)  # (n, W)
    rows = (h - 1) - ((h - 1) - rows.abs()).abs()  # reflect: -1 -> 1, h -> h - 2
    cols = (w - 1) - ((w - 1) - cols.abs()).abs()
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


def erase(x: torch.Tensor, apply: torch.Tensor, box: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Set rectangle ``box`` (n, 4: top, left, height, width) of the images where ``apply`` (n,) to ``value``."""
    n, _, h, w = x.shape
    apply, box = apply.to(x.device), box.to(x.device)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys >= box[:, :1]) & (ys < box[:, :1] + box[:, 2:3])  # (n, H)
    in_cols = (xs >= box[:, 1:2]) & (xs < box[:, 1:2] + box[:, 3:4])  # (n, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]  # (n, H, W)
    return x.masked_fill(mask[:, None], value)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(n, K) float32 targets: 1 - smoothing + smoothing / K on the label, smoothing / K elsewhere."""
    t = torch.full((labels.shape[0], num_classes), smoothing / num_classes, device=labels.device)
    return t.scatter_(1, labels[:, None], 1.0 - smoothing + smoothing / num_classes)


def mix(x: torch.Tensor, t: torch.Tensor, x_partner: torch.Tensor, t_partner: torch.Tensor,
        params: BatchParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of images x (n, C, H, W) and targets t (n, K) with their partners (same shapes)."""
    lam = params.lam
    if params.mix == "mixup":
        x = x * lam + x_partner * (1.0 - lam)
    elif params.mix == "cutmix":
        y1, y2, x1, x2 = params.cut_box
        x = x.clone()
        x[:, :, y1:y2, x1:x2] = x_partner[:, :, y1:y2, x1:x2]
    else:
        return x, t
    return x, t * lam + t_partner * (1.0 - lam)


def augment_rows(images: torch.Tensor, rows: torch.Tensor, params: BatchParams, cfg: AugmentConfig,
                 preprocessing: Preprocessing) -> torch.Tensor:
    """Per-image steps 1-4 for ``images`` (uint8 (m, C, H, W)), which are rows ``rows`` (m,) of the batch;
    normalised with ``preprocessing``'s mean and std."""
    rows = rows.cpu()
    x = images
    if cfg.crop_padding > 0 or cfg.hflip:
        x = crop_flip(x, params.crop[rows], params.flip[rows], cfg.crop_padding)
    if params.ops.shape[1]:
        x = apply_ops(x, params.ops[rows], params.mags[rows])
    x = preprocessing.normalize(x.float() / 255.0)
    if cfg.random_erasing > 0:
        x = erase(x, params.erase[rows], params.erase_box[rows])
    return x
