"""TrivialAugment (Müller & Hutter, 2021) and RandAugment (Cubuk et al., 2020) on uint8 batches, per image.

Each image draws its own op and magnitude, exactly as ``torchvision.transforms.v2.TrivialAugmentWide`` and
``RandAugment`` draw them for one image (same 14 ops, same magnitude tables, ``num_magnitude_bins=31``, nearest
interpolation, fill 0). The batch is then grouped by op and every op runs once on its group, with a magnitude per
image: the geometric ops build one affine grid per image and share one ``grid_sample``; the colour ops blend with a
per-image factor; AutoContrast and Equalize are torchvision's own (already batched) kernels. Each op equals
torchvision's on a single image (tested), up to float rounding before the uint8 cast (a few pixels off by one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from vitlab.errors import DataError

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
SIGNED = torch.tensor([op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                              "Contrast", "Sharpness") for op in OPS])
NUM_BINS = 31  # torchvision's num_magnitude_bins default for both policies


def magnitude_table(policy: str, height: int, width: int) -> torch.Tensor:
    """(len(OPS), NUM_BINS) float64 magnitudes, torchvision's ``_AUGMENTATION_SPACE`` (0 for ops without one)."""
    lin = lambda hi: torch.linspace(0.0, hi, NUM_BINS)  # noqa: E731 - float32, as torchvision computes them
    if policy == "trivial":  # TrivialAugmentWide
        shear, tx, ty, rot, enh, post_bits = lin(0.99), lin(32.0), lin(32.0), lin(135.0), lin(0.99), 6
    elif policy == "randaugment":
        shear, tx, ty = lin(0.3), lin(150.0 / 331.0 * width), lin(150.0 / 331.0 * height)
        rot, enh, post_bits = lin(30.0), lin(0.9), 4
    else:
        raise DataError(f"auto_augment policy {policy!r} is not one of 'trivial', 'randaugment'")
    posterize = (8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / post_bits))).round()
    table = torch.zeros(len(OPS), NUM_BINS, dtype=torch.float64)
    for name, values in (("ShearX", shear), ("ShearY", shear), ("TranslateX", tx), ("TranslateY", ty),
                         ("Rotate", rot), ("Brightness", enh), ("Color", enh), ("Contrast", enh), ("Sharpness", enh),
                         ("Posterize", posterize), ("Solarize", torch.linspace(1.0, 0.0, NUM_BINS))):
        table[OPS.index(name)] = values.double()
    return table


def sample_ops(policy: str, n: int, height: int, width: int, g: torch.Generator, *, num_ops: int = 1,
               magnitude: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ops (n, num_ops) int64 and signed magnitudes (n, num_ops) float64 for n images.

    ``magnitude=None`` draws the magnitude bin per image (TrivialAugment), else uses that bin (RandAugment).
    """
    table = magnitude_table(policy, height, width)
    ops = torch.randint(len(OPS), (n, num_ops), generator=g)
    if magnitude is None:
        bins = torch.randint(NUM_BINS, (n, num_ops), generator=g)
    else:
        bins = torch.full((n, num_ops), magnitude)
    flip_sign = SIGNED[ops] & (torch.rand((n, num_ops), generator=g) <= 0.5)
    mags = table[ops, bins]
    return ops, torch.where(flip_sign, -mags, mags)


def _affine(x: torch.Tensor, angle, translate_x, translate_y, shear_x, shear_y, center_x, center_y) -> torch.Tensor:
    """torchvision's ``affine_image`` (nearest, fill 0, scale 1) with one set of float64 (n,) parameters per image.

    Angles and shears in degrees; the centre in pixels relative to the image centre.
    """
    n, _, h, w = x.shape
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)  # the rotate-shear matrix [[a, b], [c, d]], det 1
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d, -b, -c, a  # its inverse
    ctx, cty = center_x + translate_x, center_y + translate_y
    m2 = center_x - m0 * ctx - m1 * cty
    m5 = center_y - m3 * ctx - m4 * cty
    theta = torch.stack([m0, m1, m2, m3, m4, m5], 1).view(n, 2, 3).float().to(x.device)
    # torchvision's _affine_grid: pixel-centre coordinates relative to the centre, mapped, then normalised.
    base = torch.empty(1, h, w, 3, device=x.device)
    base[..., 0] = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device)
    base[..., 1] = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device).unsqueeze(-1)
    base[..., 2] = 1
    scale = torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale).view(n, h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` with a (n,) float64 ratio per image: x * r + other * (1 - r), clamped, truncated."""
    r = ratio.float().view(-1, 1, 1, 1).to(x.device)
    r1 = (1.0 - ratio).float().view(-1, 1, 1, 1).to(x.device)
    return (x.float() * r).addcmul_(other, r1).clamp_(0, 255).to(torch.uint8)  # addcmul rounds as add_(alpha=)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.float().unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)  # (n, 1, H, W)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
    out = x.float()
    blurred = F.conv2d(out, kernel.expand(c, 1, 3, 3), groups=c).round_()  # (n, c, H-2, W-2)
    inner = out[..., 1:-1, 1:-1]  # borders keep the original pixels
    inner.add_((blurred - inner) * (1.0 - factor).float().view(n, 1, 1, 1).to(x.device))
    return out.clamp_(0, 255).to(torch.uint8)


def apply_op(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    """Op ``op`` on a uint8 (n, 3, H, W) batch with float64 (n,) magnitudes (CPU), one per image."""
    zeros = torch.zeros_like(m)
    h, w = x.shape[-2:]
    if op == "Identity":
        return x
    if op in ("ShearX", "ShearY"):  # torchvision shears about the top-left corner: center=[0, 0]
        shear = torch.rad2deg(torch.atan(m))
        sx, sy = (shear, zeros) if op == "ShearX" else (zeros, shear)
        return _affine(x, zeros, zeros, zeros, sx, sy, zeros - w * 0.5, zeros - h * 0.5)
    if op == "TranslateX":
        return _affine(x, zeros, m.trunc(), zeros, zeros, zeros, zeros, zeros)  # int(magnitude) pixels
    if op == "TranslateY":
        return _affine(x, zeros, zeros, m.trunc(), zeros, zeros, zeros, zeros)
    if op == "Rotate":  # F.rotate turns counter-clockwise: the affine angle is -(angle % 360)
        return _affine(x, -(m % 360), zeros, zeros, zeros, zeros, zeros, zeros)
    if op == "Brightness":
        return (x.float() * (1.0 + m).float().view(-1, 1, 1, 1).to(x.device)).clamp_(0, 255).to(torch.uint8)
    if op == "Color":
        return _blend(x, _gray(x), 1.0 + m)
    if op == "Contrast":
        return _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), 1.0 + m)
    if op == "Sharpness":
        return _sharpness(x, 1.0 + m)
    if op == "Posterize":  # keep the top `bits` bits
        bits = m.round().long().clamp(0, 8)
        mask = ((255 << (8 - bits)) & 255).to(torch.uint8).view(-1, 1, 1, 1).to(x.device)
        return x & mask
    if op == "Solarize":
        threshold = (255.0 * m).float().view(-1, 1, 1, 1).to(x.device)
        return torch.where(x.float() >= threshold, 255 - x, x)
    if op == "AutoContrast":
        return TF.autocontrast(x)
    if op == "Equalize":
        return TF.equalize(x)
    raise DataError(f"unknown op {op!r}; ops are {OPS}")


def apply_ops(x: torch.Tensor, ops: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
    """Apply op ``ops[i, j]`` with magnitude ``mags[i, j]`` to image i, for j = 0, 1, ... in turn.

    x: uint8 (n, 3, H, W) on any device; ops (n, k) and mags (n, k) on the CPU. Returns a new tensor.
    """
    x = x.clone()
    for j in range(ops.shape[1]):
        for k, name in enumerate(OPS):
            if name == "Identity":
                continue
            idx = (ops[:, j] == k).nonzero().squeeze(1)
            if len(idx):
                dev_idx = idx.to(x.device)
                x[dev_idx] = apply_op(x[dev_idx], name, mags[idx, j])
    return x


def check_policy(name: str) -> None:
    if name not in ("none", "trivial", "randaugment"):
        raise DataError(f"auto_augment={name!r} is not one of 'none', 'trivial', 'randaugment'")


__all__ = ["NUM_BINS", "OPS", "apply_op", "apply_ops", "check_policy", "magnitude_table", "sample_ops"]
