"""Named ViT variants: one size table, timm's names and short aliases. Names and configs only: building a
model from a name (or a path, or a hub id) is ``vitlab.factory``'s.

Sizes (width D, depth, heads, MLP size) come from the ViT paper, Table 1 (Base, Large, Huge) and the
DeiT paper, Table 1 (Tiny, Small). Every size is registered with patch 8, 14, 16 and 32 at 224 px and
at 384 px (336 px for patch 14, since 384 is not a multiple of 14), under timm's names such as
``vit_base_patch16_224``, plus small-image variants for 32 x 32 inputs (CIFAR-size data) with patch 2
and 4 such as ``vit_tiny_patch4_32``. Short aliases: ``"B/16"`` (224 px), ``"B/16@384"``, ``"Ti/4@32"``.
"""

from __future__ import annotations

import re
from typing import Any

from vitlab.config import ViTConfig
from vitlab.errors import ConfigError

# name: (D, depth, heads, MLP size)  -- ViT Table 1 (base/large/huge), DeiT Table 1 (tiny/small)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}
SHORT_NAMES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}
IMAGENET_PATCHES = {8: (224, 384), 14: (224, 336), 16: (224, 384), 32: (224, 384)}
SMALL_IMAGE_SIZES = ("tiny", "small", "base")  # patch 2 and 4 at 32 px, 10 classes by default

# Pretrained weights used for pretrained=True: the timm tag of an ImageNet-1k classifier where one exists.
DEFAULT_PRETRAINED_TAGS = {
    "vit_tiny_patch16_224": "augreg_in21k_ft_in1k",
    "vit_tiny_patch16_384": "augreg_in21k_ft_in1k",
    "vit_small_patch16_224": "augreg_in21k_ft_in1k",
    "vit_small_patch16_384": "augreg_in21k_ft_in1k",
    "vit_small_patch32_224": "augreg_in21k_ft_in1k",
    "vit_small_patch32_384": "augreg_in21k_ft_in1k",
    "vit_small_patch8_224": "dino",
    "vit_base_patch8_224": "augreg2_in21k_ft_in1k",
    "vit_base_patch16_224": "augreg2_in21k_ft_in1k",
    "vit_base_patch16_384": "augreg_in21k_ft_in1k",
    "vit_base_patch32_224": "augreg_in21k_ft_in1k",
    "vit_base_patch32_384": "augreg_in21k_ft_in1k",
    "vit_large_patch16_224": "augreg_in21k_ft_in1k",
    "vit_large_patch16_384": "augreg_in21k_ft_in1k",
    "vit_large_patch32_384": "orig_in21k_ft_in1k",
    "vit_huge_patch14_224": "orig_in21k",
}


def _build_registry() -> dict[str, ViTConfig]:
    reg = {}
    for size, (dim, depth, heads, mlp) in SIZES.items():
        arch = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp)
        for patch, resolutions in IMAGENET_PATCHES.items():
            for res in resolutions:
                reg[f"vit_{size}_patch{patch}_{res}"] = ViTConfig(img_size=res, patch_size=patch, **arch)
        if size in SMALL_IMAGE_SIZES:
            for patch in (2, 4):
                reg[f"vit_{size}_patch{patch}_32"] = ViTConfig(img_size=32, patch_size=patch, num_classes=10, **arch)
    return reg


MODELS: dict[str, ViTConfig] = _build_registry()
_ALIAS = re.compile(r"^(Ti|S|B|L|H)/(\d+)(?:@(\d+))?$")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, optionally filtered by a glob-like pattern (``*`` wildcard) or substring."""
    names = sorted(MODELS, key=lambda n: (list(SIZES).index(n.split("_")[1]), n))
    if not pattern:
        return names
    if "*" in pattern or "?" in pattern:
        rx = re.compile("^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$")
        return [n for n in names if rx.match(n)]
    return [n for n in names if pattern in n]


def is_alias(name: str) -> bool:
    """Whether ``name`` has the form of a short alias (``"B/16"``, ``"Ti/4@32"``), registered or not."""
    return bool(_ALIAS.match(name))


def resolve_name(name: str) -> str:
    """Map an alias (``"B/16"``, ``"Ti/4@32"``) or a registered name to the registered name."""
    m = _ALIAS.match(name)
    if m:
        size, patch, res = SHORT_NAMES[m[1]], int(m[2]), m[3]
        res = int(res) if res else (32 if patch in (2, 4) else 224)
        name = f"vit_{size}_patch{patch}_{res}"
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}. Valid names: {', '.join(list_models())}; "
            "aliases: Ti|S|B|L|H/<patch>[@<img_size>], e.g. 'B/16', 'B/16@384', 'Ti/4@32'"
        )
    return name


def get_config(name: str, **overrides: Any) -> ViTConfig:
    """The config of a named variant with any field overridden, e.g. ``get_config("B/16", pool="gap")``."""
    return MODELS[resolve_name(name)].replace(**overrides)


def split_pretrained_tag(name: str) -> tuple[str, str | None]:
    """``"vit_base_patch16_224.augreg2_in21k_ft_in1k"`` -> (architecture, tag)."""
    arch, _, tag = name.partition(".")
    return arch, tag or None
