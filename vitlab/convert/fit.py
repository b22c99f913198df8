"""Does a config fit the weights? What the shapes of a canonical (timm-named) state dict say about the
architecture, and one line saying where a stated config contradicts them.

A config is stated by vitlab's metadata, a training checkpoint's config, a ``config.json`` or the caller's
arguments (``num_heads=...``). Left to ``load_state_dict``, a contradiction comes back as one line per tensor
(62 lines for a width that is off); here it is the first contradicted field, with both values:

    the metadata says embed_dim=384 but blocks.0.attn.qkv.weight is (576, 192) (embed_dim 192)

The fields are checked from the most basic (width, depth) on, so the message names the cause, not a symptom.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vitlab.config import ViTConfig
from vitlab.convert import CheckpointError

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def weights_say(sd: dict[str, torch.Tensor]) -> dict[str, tuple[Any, str]]:
    """ViTConfig fields the shapes of the tensors present determine -> (value, evidence), in the order they are
    checked. The patch projection's fields (``patch_size``, ``in_chans``) are those of a plain patch stem."""
    says: dict[str, tuple[Any, str]] = {}

    def by(key: str, name: str, value: Any) -> None:
        says[name] = (value, f"{key} is {_shape(sd[key])}")

    if "blocks.0.attn.qkv.weight" in sd:
        by("blocks.0.attn.qkv.weight", "embed_dim", sd["blocks.0.attn.qkv.weight"].shape[1])  # (3D, D)
    blocks = {int(m[1]) for k in sd if (m := _BLOCK.match(k))}
    if blocks:
        says["depth"] = (max(blocks) + 1, f"the weights hold blocks.0 to blocks.{max(blocks)}")
    if "patch_embed.proj.weight" in sd:
        _, C, P, _ = sd["patch_embed.proj.weight"].shape  # (D, C, P, P)
        by("patch_embed.proj.weight", "patch_size", P)
        by("patch_embed.proj.weight", "in_chans", C)
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc2.ndim == 2 and fc1.shape[0] == 2 * fc2.shape[1]:
        by("blocks.0.mlp.fc2.weight", "mlp_dim", fc2.shape[1])  # SwiGLU: fc1 (2 mlp_dim, D), fc2 (D, mlp_dim)
    elif fc1 is not None:
        by("blocks.0.mlp.fc1.weight", "mlp_dim", fc1.shape[0])  # (mlp_dim, D)
    if "blocks.0.attn.q_norm.weight" in sd and "embed_dim" in says:  # qk_norm: LayerNorm over one head's width
        head_dim = sd["blocks.0.attn.q_norm.weight"].shape[0]  # (Dh,)
        by("blocks.0.attn.q_norm.weight", "num_heads", says["embed_dim"][0] // head_dim)
    if "head.weight" in sd:
        by("head.weight", "num_classes", sd["head.weight"].shape[0])  # (classes, D)
    if "pre_logits.0.weight" in sd:
        by("pre_logits.0.weight", "representation_size", sd["pre_logits.0.weight"].shape[0])
    if "reg_token" in sd:
        by("reg_token", "num_register_tokens", sd["reg_token"].shape[1])  # (1, R, D)
    return says  # a tensor that is absent says nothing here: load reports it as a missing key


def _position_rows(cfg: ViTConfig) -> set[int]:
    """The lengths of a position table laid out for cfg that vitlab reads (``canonical_pos_embed``)."""
    n_grid = cfg.grid_size[0] * cfg.grid_size[1]
    n_embedded = int(cfg.class_token) + int(cfg.distill_token)
    return {n_grid, n_grid + n_embedded, n_grid + n_embedded + cfg.num_register_tokens}


def check_fits(sd: dict[str, torch.Tensor], cfg: ViTConfig, stated_by: str, given: dict[str, Any]) -> None:
    """Raise a one-line CheckpointError at the first field of ``cfg`` the weights contradict. ``stated_by`` says
    where cfg comes from ("the metadata", "config.json"); a field in ``given`` is blamed on the arguments."""
    skip = set() if cfg.stem == "patch" else {"patch_size", "in_chans"}  # a conv stem's last conv is 1x1
    for name, (found, evidence) in weights_say(sd).items():
        stated = getattr(cfg, name)
        if name not in skip and stated != found:
            who = "the arguments say" if name in given else f"{stated_by} says"
            raise CheckpointError(f"{who} {name}={stated!r} but {evidence} ({name} {found})")
    pos = sd.get("pos_embed")
    if pos is not None and cfg.pos_embed == "learned" and pos.shape[1] not in _position_rows(cfg):
        who = "the arguments say" if "img_size" in given else f"{stated_by} says"
        h, w = cfg.grid_size
        raise CheckpointError(f"{who} img_size={cfg.img_size} (a {h}x{w} grid of patch {cfg.patch_size}: "
                              f"{h * w + cfg.num_pos_prefix} position rows) but pos_embed is {_shape(pos)}")


def first_mismatch(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], described_by: str) -> str | None:
    """One line for the tensors whose shapes differ from ``expected``, the model's that ``described_by`` describes
    (what the field checks let through), or None."""
    bad = [k for k, v in sd.items() if k in expected and v.shape != expected[k].shape]
    if not bad:
        return None
    k = bad[0]
    more = f"; {len(bad) - 1} more tensors differ" if len(bad) > 1 else ""
    return f"{k} is {_shape(sd[k])} but {described_by} gives it {_shape(expected[k])}{more}"
