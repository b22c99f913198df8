"""timm ``VisionTransformer`` state dicts and hub folders, both ways.

vitlab's parameter names are timm's, so reading is mostly unwrapping; the position table is brought to
vitlab's layout by ``canonical_pos_embed``. A timm hub folder (``config.json`` with ``architecture``
and ``pretrained_cfg``, beside ``model.safetensors`` or ``pytorch_model.bin``) also gives the exact
architecture and the preprocessing of the weights.
"""

from __future__ import annotations

from typing import Any

import torch

from vitlab.config import ViTConfig
from vitlab.convert import CheckpointError, Converted
from vitlab.preprocess import Preprocessing
from vitlab.registry import MODELS

TIMM_POOLS = {"token": "token", "avg": "gap"}


def is_format(sd: dict[str, Any]) -> bool:
    return "patch_embed.proj.weight" in sd and any(k.startswith("blocks.") for k in sd)


def read_state_dict(sd: dict[str, torch.Tensor]) -> Converted:
    return Converted(dict(sd), "timm")


def hints_from_hub_config(hub_cfg: dict[str, Any]) -> tuple[dict[str, Any], Preprocessing | None, list | None]:
    """Config fields, preprocessing and class names from a timm hub ``config.json``."""
    hints: dict[str, Any] = {}
    arch = hub_cfg.get("architecture", "")
    if arch in MODELS:
        base = MODELS[arch]
        hints.update(img_size=base.img_size, num_heads=base.num_heads)
    args = hub_cfg.get("model_args", {}) or {}
    for timm_key, key in (("num_heads", "num_heads"), ("img_size", "img_size"), ("reg_tokens", "num_register_tokens")):
        if timm_key in args:
            hints[key] = args[timm_key]
    pool = hub_cfg.get("global_pool", args.get("global_pool"))
    if pool is not None:
        if pool not in TIMM_POOLS:
            raise CheckpointError(f"timm global_pool={pool!r} is not supported (vitlab has 'token' and 'avg')")
        hints["pool"] = TIMM_POOLS[pool]
    pre = None
    pcfg = hub_cfg.get("pretrained_cfg") or {}
    if "mean" in pcfg:
        size = pcfg.get("input_size", (3, 224, 224))[-2:]
        pre = Preprocessing(img_size=tuple(size), mean=pcfg["mean"], std=pcfg["std"],
                            interpolation=pcfg.get("interpolation", "bicubic"), crop_pct=pcfg.get("crop_pct", 0.9))
        hints.setdefault("img_size", tuple(size))
    names = hub_cfg.get("label_names") or None
    return hints, pre, names


def to_timm(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """vitlab state dict -> one timm's ``VisionTransformer(**timm_model_args(cfg))`` loads strictly."""
    if cfg.stem != "patch" or cfg.representation_size or cfg.pos_embed == "sincos2d":
        raise CheckpointError("timm's VisionTransformer has no conv stem, pre-logits layer or sincos2d table; "
                              "save this model in vitlab's format instead")
    sd = {k: v.detach().clone() for k, v in sd.items()}
    if "pos_embed" in sd and cfg.num_register_tokens:  # timm gives registers a row: zeros (they had none)
        n_cls, pos = int(cfg.class_token), sd["pos_embed"]
        zeros = pos.new_zeros(1, cfg.num_register_tokens, pos.shape[-1])
        sd["pos_embed"] = torch.cat([pos[:, :n_cls], zeros, pos[:, n_cls:]], dim=1)
    return sd


def timm_model_args(cfg: ViTConfig) -> dict[str, Any]:
    """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` of the same architecture."""
    args = dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.embed_dim,
        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, init_values=cfg.layer_scale_init,
        class_token=cfg.class_token, reg_tokens=cfg.num_register_tokens, no_embed_class=False,
        global_pool="token" if cfg.pool == "token" else "avg", fc_norm=cfg.fc_norm,
        pos_embed="learn" if cfg.pos_embed == "learned" else "none",
    )
    if cfg.mlp_act == "gelu_tanh":
        args["act_layer"] = "gelu_tanh"
    return args
