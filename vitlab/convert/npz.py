"""Google's JAX/Flax ``.npz`` checkpoints <-> vitlab, both ways.

Two layouts are read (flax keys joined with '/'):

vision_transformer (google-research/vision_transformer, the paper's and augreg's weights; format "npz"),
optionally under ``opt/target/``:
    embedding/kernel (P, P, C, D), embedding/bias, cls (1, 1, D)   -> patch_embed.proj, cls_token
    Transformer/posembed_input/pos_embedding (1, 1 + h*w, D)       -> pos_embed
    Transformer/encoderblock_{i}/LayerNorm_0, LayerNorm_2          -> blocks.{i}.norm1, norm2
        MultiHeadDotProductAttention_1/{query,key,value}           -> blocks.{i}.attn.qkv (rows [q; k; v])
            kernel (D, Nh, Dh), bias (Nh, Dh)
        MultiHeadDotProductAttention_1/out: kernel (Nh, Dh, D)     -> blocks.{i}.attn.proj
        MlpBlock_3/Dense_0, Dense_1: kernel (in, out)              -> blocks.{i}.mlp.fc1, fc2
    Transformer/encoder_norm, pre_logits (then tanh), head         -> norm, pre_logits.0, head

big_vision (format "npz-big_vision"), under ``params/``, ``params/img/`` or no prefix: the same tensors, but
the position table is ``pos_embedding`` at the top level with no class row (absent: fixed sincos2d), the
blocks use ``MultiHeadDotProductAttention_0``, ``LayerNorm_0/1`` and ``MlpBlock_0``, and may be scanned
(one ``Transformer/encoderblock`` whose tensors carry a leading depth axis). A model without ``cls``
pools by global average after the final LayerNorm (vitlab pool='gap', fc_norm=False). ``MAPHead_0``
(attention pooling) is not supported.

Flax Dense kernels are (in, out), the transpose of torch's Linear weight; Flax convs are (kh, kw, in, out).
The head count is in the file (the query kernel's middle axis). The official JAX models use flax's
``nn.gelu``, the tanh approximation; timm (and vitlab, by default) run these weights with exact GELU,
which is how their published accuracies were measured: pass mlp_act="gelu_tanh" to vitlab.load for the
JAX numerics.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitlab.config import ViTConfig
from vitlab.convert import CheckpointError, Converted, first_line
from vitlab.preprocess import INCEPTION_MEAN, INCEPTION_STD, Preprocessing

FLAX_LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default epsilon
NPZ_CROP_PCT = 0.9  # timm's pretrained_cfg for the augreg / original npz weights
PREFIXES = ("opt/target/", "params/img/", "params/", "")
# Per-block module names: (attention, first LayerNorm, second LayerNorm, MLP).
VT_BLOCK = ("MultiHeadDotProductAttention_1", "LayerNorm_0", "LayerNorm_2", "MlpBlock_3")
BV_BLOCK = ("MultiHeadDotProductAttention_0", "LayerNorm_0", "LayerNorm_1", "MlpBlock_0")
_BLOCK_INDEX = re.compile(r"^Transformer/encoderblock_(\d+)/")


def _to_numpy_float(key: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # bfloat16 saved without ml_dtypes: its top 16 bits
        return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if a.dtype.kind != "f":
        raise CheckpointError(f"npz array {key!r} has dtype {a.dtype}; expected floating point weights")
    return a.astype(np.float32)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file, read now, so that a truncated member fails here with the file's name."""
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable .npz file (truncated or corrupt?): {first_line(e)}") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} holds a single array, not a .npz archive of named weights")
    try:
        with f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise CheckpointError(f"{path}: an array could not be read (truncated or corrupt?): {first_line(e)}") from e


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def read_npz(path: str | Path) -> Converted:
    path = Path(path)
    arrays = _load_arrays(path)
    prefix = next((p for p in PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError(f"{path} has no 'embedding/kernel' (under any of {', '.join(p for p in PREFIXES if p)} "
                              f"or none): not a JAX ViT checkpoint (keys start: {', '.join(list(arrays)[:6])})")
    # Only the model's tensors: optimizer state ("opt/...") and other towers live beside them in training saves.
    w = {k[len(prefix):]: _to_numpy_float(k, v) for k, v in arrays.items()
         if k.startswith(prefix) and not (prefix == "" and k.startswith("opt/"))}
    if any(k.startswith("MAPHead_0/") for k in w):
        raise CheckpointError(f"{path}: map pooling not supported (MAPHead_0, big_vision's attention-pooling head); "
                              "vitlab pools by class token or global average")
    if "conv_root/kernel" in w:
        raise CheckpointError(f"{path} is a hybrid ResNet + ViT (conv_root, block*/unit*): not supported")

    scanned = "Transformer/encoderblock/LayerNorm_0/scale" in w
    if scanned or "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in w:
        fmt, names = "npz-big_vision", BV_BLOCK
    elif "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in w:
        fmt, names = "npz", VT_BLOCK
    else:
        raise CheckpointError(f"{path}: no encoder blocks in the vision_transformer or big_vision layout "
                              "(Transformer/encoderblock_0/... or a scanned Transformer/encoderblock/...)")
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in w:
            raise CheckpointError(f"{path}: {prefix}{key} is missing ({fmt} layout)")
        used.add(key)
        return w[key]

    if scanned:
        depth = w["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        block = lambda i, name: take(f"Transformer/encoderblock/{name}")[i]  # (L, ...) -> block i
    else:
        depth = 1 + max(int(m.group(1)) for k in w if (m := _BLOCK_INDEX.match(k)))
        block = lambda i, name: take(f"Transformer/encoderblock_{i}/{name}")

    sd: dict[str, torch.Tensor] = {}
    kernel = take("embedding/kernel")
    if kernel.ndim != 4:
        raise CheckpointError(f"{path}: embedding/kernel has shape {kernel.shape}; expected a conv (P, P, C, D)")
    P = kernel.shape[0]
    sd["patch_embed.proj.weight"] = _t(kernel.transpose(3, 2, 0, 1))  # (P, P, C, D) -> (D, C, P, P)
    sd["patch_embed.proj.bias"] = _t(take("embedding/bias"))
    if "cls" in w:
        sd["cls_token"] = _t(take("cls").reshape(1, 1, -1))  # (1, 1, D)

    hints: dict[str, Any] = dict(norm_eps=FLAX_LAYER_NORM_EPS, pool="token" if "cls" in w else "gap")
    pos_key = "pos_embedding" if fmt == "npz-big_vision" else "Transformer/posembed_input/pos_embedding"
    if pos_key in w:
        pos = take(pos_key)
        if pos.ndim == 4:  # (1, h, w, D): the grid is stated, so is the image size
            hints["img_size"] = (pos.shape[1] * P, pos.shape[2] * P)
            pos = pos.reshape(1, -1, pos.shape[-1])
        sd["pos_embed"] = _t(pos)  # (1, [1 +] h*w, D)
    elif fmt == "npz-big_vision":
        hints["pos_embed"] = "sincos2d"  # big_vision's posemb='sincos2d' stores no table
    else:
        raise CheckpointError(f"{path}: no position table ({pos_key})")

    attn, ln1, ln2, mlp = names
    hints["num_heads"] = block(0, f"{attn}/query/kernel").shape[1]  # (D, Nh, Dh)
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = _t(block(i, f"{ln1}/scale")), _t(block(i, f"{ln1}/bias"))
        qkv_w, qkv_b = [], []
        for part in ("query", "key", "value"):
            k = block(i, f"{attn}/{part}/kernel")  # (D, Nh, Dh)
            qkv_w.append(k.reshape(k.shape[0], -1).T)  # (Nh*Dh, D)
            qkv_b.append(block(i, f"{attn}/{part}/bias").reshape(-1))  # (Nh, Dh) -> (Nh*Dh,)
        sd[b + "attn.qkv.weight"] = _t(np.concatenate(qkv_w, axis=0))  # (3D, D), rows [q; k; v]
        sd[b + "attn.qkv.bias"] = _t(np.concatenate(qkv_b, axis=0))
        out = block(i, f"{attn}/out/kernel")  # (Nh, Dh, D)
        sd[b + "attn.proj.weight"] = _t(out.reshape(-1, out.shape[-1]).T)  # (D, Nh*Dh)
        sd[b + "attn.proj.bias"] = _t(block(i, f"{attn}/out/bias"))
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = _t(block(i, f"{ln2}/scale")), _t(block(i, f"{ln2}/bias"))
        for j in (0, 1):
            sd[b + f"mlp.fc{j + 1}.weight"] = _t(block(i, f"{mlp}/Dense_{j}/kernel").T)  # (in, out) -> (out, in)
            sd[b + f"mlp.fc{j + 1}.bias"] = _t(block(i, f"{mlp}/Dense_{j}/bias"))
    for src, dst in (("Transformer/encoder_norm", "norm"), ("pre_logits", "pre_logits.0"), ("head", "head")):
        if f"{src}/kernel" in w:
            sd[f"{dst}.weight"] = _t(take(f"{src}/kernel").T)  # (in, out) -> (out, in)
            sd[f"{dst}.bias"] = _t(take(f"{src}/bias"))
        elif f"{src}/scale" in w:
            sd[f"{dst}.weight"], sd[f"{dst}.bias"] = _t(take(f"{src}/scale")), _t(take(f"{src}/bias"))
    for key in sorted(set(w) - used):
        sd[key] = _t(w[key])  # not a ViT tensor vitlab knows: vitlab.load reports it as unexpected

    return Converted(sd, fmt, hints=hints, preprocessing=_preprocessing(sd, P, hints))


def _preprocessing(sd: dict[str, torch.Tensor], P: int, hints: dict[str, Any]) -> Preprocessing | None:
    """mean = std = 0.5, bicubic, crop 0.9 (timm's choice for these weights), at the table's image size."""
    size = hints.get("img_size")
    if size is None and "pos_embed" in sd:
        n_grid = sd["pos_embed"].shape[1] - int("cls_token" in sd)
        side = round(n_grid**0.5)
        size = (side * P, side * P) if side * side == n_grid else None
    if size is None:
        return None  # no table, or a non-square one: vitlab.load falls back to the model's own default
    return Preprocessing(img_size=size, mean=INCEPTION_MEAN, std=INCEPTION_STD, interpolation="bicubic",
                         crop_pct=NPZ_CROP_PCT)


def to_npz(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """vitlab state dict -> the vision_transformer layout (what the official JAX code and timm read)."""
    unsupported = [
        (cfg.stem != "patch", "a conv stem"),
        (cfg.num_register_tokens > 0, "register tokens"),
        (cfg.qk_norm, "qk_norm"),
        (cfg.layer_scale_init is not None, "layer scale"),
        (cfg.pos_embed != "learned", f"pos_embed={cfg.pos_embed!r} (the layout holds a learned table)"),
        (cfg.fc_norm, "fc_norm"),
        (cfg.pool == "gap" and cfg.class_token, "a class token on a gap model (the layout's 'gap' has none)"),
        (cfg.pool not in ("token", "gap"), f"pool={cfg.pool!r}"),
        (cfg.distill_token, "a distillation token"),
        (cfg.norm_pre, "a LayerNorm before the blocks (norm_pre)"),
        (cfg.mlp_act == "quick_gelu", "QuickGELU"),
    ]
    found = [what for bad, what in unsupported if bad]
    if found:
        raise CheckpointError(f"the vision_transformer .npz layout cannot hold {', '.join(found)}; save this model "
                              "with vitlab.save instead")
    a = {k: v.detach().cpu().float().numpy() for k, v in sd.items()}
    D, Nh, Dh = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    out: dict[str, np.ndarray] = {
        "embedding/kernel": a["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # (D, C, P, P) -> (P, P, C, D)
        "embedding/bias": a.get("patch_embed.proj.bias", np.zeros(D, np.float32)),  # the layout has a bias
        "Transformer/posembed_input/pos_embedding": a["pos_embed"],  # (1, [1 +] h*w, D)
    }
    if cfg.no_embed_class and cfg.class_token:  # the layout's table has a class row: zero (the token had none)
        pos = out["Transformer/posembed_input/pos_embedding"]
        out["Transformer/posembed_input/pos_embedding"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
    if cfg.class_token:
        out["cls"] = a["cls_token"]  # (1, 1, D)
    for i in range(cfg.depth):
        b, t = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        attn = t + VT_BLOCK[0] + "/"
        out[t + "LayerNorm_0/scale"], out[t + "LayerNorm_0/bias"] = a[b + "norm1.weight"], a[b + "norm1.bias"]
        qkv_w = a[b + "attn.qkv.weight"].reshape(3, D, D)  # (3D, D) -> ([q, k, v], Nh*Dh, D)
        qkv_b = a.get(b + "attn.qkv.bias", np.zeros(3 * D, np.float32)).reshape(3, Nh, Dh)  # the layout has biases
        for j, part in enumerate(("query", "key", "value")):
            out[attn + f"{part}/kernel"] = qkv_w[j].T.reshape(D, Nh, Dh)
            out[attn + f"{part}/bias"] = qkv_b[j]
        out[attn + "out/kernel"] = a[b + "attn.proj.weight"].T.reshape(Nh, Dh, D)
        out[attn + "out/bias"] = a[b + "attn.proj.bias"]
        out[t + "LayerNorm_2/scale"], out[t + "LayerNorm_2/bias"] = a[b + "norm2.weight"], a[b + "norm2.bias"]
        for j in (0, 1):
            out[t + f"MlpBlock_3/Dense_{j}/kernel"] = a[b + f"mlp.fc{j + 1}.weight"].T  # (out, in) -> (in, out)
            out[t + f"MlpBlock_3/Dense_{j}/bias"] = a[b + f"mlp.fc{j + 1}.bias"]
    out["Transformer/encoder_norm/scale"], out["Transformer/encoder_norm/bias"] = a["norm.weight"], a["norm.bias"]
    for src, dst in (("pre_logits.0", "pre_logits"), ("head", "head")):
        if f"{src}.weight" in a:
            out[f"{dst}/kernel"], out[f"{dst}/bias"] = a[f"{src}.weight"].T, a[f"{src}.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
