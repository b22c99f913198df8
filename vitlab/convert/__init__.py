"""Checkpoint formats -> one canonical state dict, and the architecture read back from the weights.

Every reader in this package returns a :class:`Converted`: a state dict with vitlab's parameter names
(which are timm's), the config fields the source states outright (``hints``), and, where the source
records them, the preprocessing and class names. :func:`infer_config` then reads the rest of the
architecture off the tensor shapes, and :func:`canonical_pos_embed` puts the position table into
vitlab's layout (a class-token row if there is a class token, then the grid; registers have none).
vitlab's own formats (``vitlab.checkpoint``'s .safetensors, ``convert.train``'s training checkpoints) state the
whole config instead (``Converted.complete``); :func:`config_of` builds the config either way.

Errors are :class:`CheckpointError`, one line each (``first_line`` keeps a library's multi-line message short).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitlab.config import ViTConfig, check_field
from vitlab.errors import CheckpointError, ConfigError  # noqa: F401 (re-exported)
from vitlab.preprocess import Preprocessing
from vitlab.registry import SIZES

# Heads by width for the standard sizes (the registry's size table); head counts are not in the weights.
HEADS_BY_WIDTH = {width: heads for width, _, heads, _ in SIZES.values()}


FORMAT = "vitlab"  # vitlab's .safetensors: the model's metadata (model_metadata) beside its weights
FORMAT_VERSION = 1
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz", ".ckpt")  # what a model spec reads as a file
# Fields an argument may set whatever the checkpoint states: they do not change what the weights compute at the
# stored size (training-only regularisation, the initialisation, how the position table is resampled for another).
SETTABLE_FIELDS = ("dropout", "attn_dropout", "drop_path_rate", "patch_drop_rate", "attn_init", "pos_resample")


class AssumedSettingsNotice(UserWarning):
    """A checkpoint without a config: the settings vitlab assumed for what its weights cannot show (heads, QuickGELU
    or GELU, LayerNorm eps, the family's preprocessing), in one line that names each value assumed and what to pass
    to ``vitlab.load`` if it differs. ``fields`` names the ViTConfig fields assumed (empty when only the
    preprocessing is)."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.fields = tuple(fields)


@dataclass
class Converted:
    state_dict: dict[str, torch.Tensor]
    format: str  # "vitlab" | "vitlab-train" | "timm" | "hf" | "torchvision" | "npz" | "npz-big_vision" | "dinov2"
    # | "openclip" | "openai-clip"
    hints: dict[str, Any] = field(default_factory=dict)  # ViTConfig fields the source states outright
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    complete: bool = False  # hints are the whole config (a ViTConfig, or a ResNetConfig with its "arch")
    stated_by: str = "the architecture read from the checkpoint"  # hints' source in messages: "the metadata", ...
    # the hints the source states outright (a config.json's), as opposed to assumed for a bare state dict; a
    # complete config states every field
    stated: frozenset[str] = frozenset()
    # fields no rule can settle (a head count two known architectures of these tensors disagree on): field -> the
    # known answers, for the message; loading needs the field as an argument (or a config that states it)
    undetermined: dict[str, str] = field(default_factory=dict)

    def stated_fields(self) -> dict[str, Any]:
        """The ViTConfig fields this checkpoint states, with their values (less :data:`SETTABLE_FIELDS`)."""
        if self.complete:  # a field an older vitlab did not write is its default
            values = {f.name: self.hints.get(f.name, f.default) for f in dataclasses.fields(ViTConfig)}
        else:
            values = {k: v for k, v in self.hints.items() if k in self.stated}
        return {k: v for k, v in values.items() if k not in SETTABLE_FIELDS}


class OverriddenSetting(UserWarning):
    """An argument to ``vitlab.load`` that changes a field the checkpoint states (its metadata, a config.json): the
    model built is not the one the file describes. ``vitlab convert --set`` refuses it as an error."""

    def __init__(self, source: str, field: str, stated: Any, given: Any):
        self.source, self.field, self.stated, self.given = source, field, stated, given
        super().__init__(f"{source} states {field}={stated!r}; the argument {field}={given!r} overrides it, so the "
                         "model is not the one the file describes")


def first_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (libraries' messages run long)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")


def parse_json(text: str | bytes, where: str) -> Any:
    """JSON text -> a value; ``where`` names its file and field in the error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where} is not valid JSON (not UTF-8 text: {e.reason} at byte {e.start})") from None


def read_json(path: Path) -> Any:
    """A JSON file (config.json, preprocessor_config.json, a shard index) -> a value, errors naming the file."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path} could not be read ({e.strerror or first_line(e)})") from e
    return parse_json(text, str(path))


def json_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} is a JSON {type(value).__name__}, expected an object of fields")
    return value


def metadata_fields(meta: dict[str, str], where: str) -> tuple[dict[str, Any], Preprocessing | None,
                                                                 list[str] | None]:
    """vitlab's model metadata (``vitlab.checkpoint.model_metadata``: JSON strings) -> the config as a dict, the
    preprocessing and the class names. ``where`` names the file (and the part of it) the metadata sits in."""
    if "config" not in meta:
        raise CheckpointError(f"{where} has no 'config' field")
    config = json_object(parse_json(meta["config"], f"{where} field 'config'"), f"{where} field 'config'")
    pre = None
    if "preprocessing" in meta:
        field_where = f"{where} field 'preprocessing'"
        try:
            pre = Preprocessing.from_dict(json_object(parse_json(meta["preprocessing"], field_where), field_where))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{field_where} is not a valid preprocessing ({first_line(e)})") from e
    names = None
    if "class_names" in meta:
        names = parse_json(meta["class_names"], f"{where} field 'class_names'")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{where} field 'class_names' is not a list of strings")
    return config, pre, names


def _grid_for(n: int, patch: int, hint_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if hint_size is not None:
        g = (hint_size[0] // patch, hint_size[1] // patch)
        return g if g[0] * g[1] == n else None
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def infer_config(sd: dict[str, torch.Tensor], hints: dict[str, Any]) -> ViTConfig:
    """Read a ViTConfig off a canonical (timm-named) state dict; ``hints`` win over what is inferred."""
    if "patch_embed.proj.weight" not in sd:
        raise CheckpointError("no patch embedding ('patch_embed.proj.weight') in the state dict: not a ViT")
    if sd["patch_embed.proj.weight"].ndim != 4:
        raise CheckpointError(f"patch_embed.proj.weight is {tuple(sd['patch_embed.proj.weight'].shape)}, not a "
                              "(width, channels, patch, patch) convolution: a patch embedding vitlab does not have")
    D, C, P, P2 = sd["patch_embed.proj.weight"].shape
    if P != P2:
        raise CheckpointError(f"non-square patches ({P}x{P2}) are not supported")
    blocks = [int(k.split(".")[1]) for k in sd if re.match(r"blocks\.\d+\.norm1\.weight$", k)]
    if not blocks or "blocks.0.mlp.fc1.weight" not in sd or "blocks.0.attn.qkv.weight" not in sd:
        sample = ", ".join(sorted(k for k in sd if k.startswith("blocks.0."))[:6]) or "none"
        raise CheckpointError("the blocks are not a ViT's pre-norm blocks (norm1, attn.qkv, norm2, mlp.fc1, mlp.fc2; "
                              f"block 0 has {sample}): parallel, gated-MLP or other block layouts are not supported")
    depth = 1 + max(blocks)
    fc1, fc2 = sd["blocks.0.mlp.fc1.weight"], sd.get("blocks.0.mlp.fc2.weight")
    # A gated MLP (SwiGLU) packs its gate and value layers into fc1: twice the rows fc2 has columns.
    swiglu = fc2 is not None and fc2.ndim == 2 and fc1.shape[0] == 2 * fc2.shape[1]
    cfg: dict[str, Any] = dict(
        patch_size=P, in_chans=C, embed_dim=D, depth=depth, mlp_dim=fc2.shape[1] if swiglu else fc1.shape[0],
        mlp_layer="swiglu" if swiglu else "mlp", mlp_inner_norm="blocks.0.mlp.norm.weight" in sd,
        attn_inner_norm="blocks.0.attn.norm.weight" in sd, patch_norm="patch_embed.norm.weight" in sd,
        proj_bias="blocks.0.attn.proj.bias" in sd, mlp_bias="blocks.0.mlp.fc2.bias" in sd,
        # a norm without a bias: RMSNorm (timm's, transformers' RMSNorm); a LayerNorm always has one in these sources
        norm_layer="layernorm" if "blocks.0.norm1.bias" in sd else "rmsnorm",
        qkv_bias="blocks.0.attn.qkv.bias" in sd, qk_norm="blocks.0.attn.q_norm.weight" in sd,
        class_token="cls_token" in sd, num_register_tokens=sd["reg_token"].shape[1] if "reg_token" in sd else 0,
        distill_token="dist_token" in sd, pos_embed="learned" if "pos_embed" in sd else "none",
        fc_norm="fc_norm.weight" in sd, norm_pre="norm_pre.weight" in sd, patch_bias="patch_embed.proj.bias" in sd,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
    )
    if "blocks.0.ls1.gamma" in sd:
        cfg["layer_scale_init"] = 1e-5  # the value is only an init; the trained gammas are loaded
    if "pre_logits.0.weight" in sd:
        cfg["representation_size"] = sd["pre_logits.0.weight"].shape[0]
    if "attn_pool.latent" in sd:
        cfg["pool"] = "map"
        pool_fc1 = sd.get("attn_pool.mlp.fc1.weight")
        if pool_fc1 is None:  # AIMv2's pool: no norm and MLP after the projection
            cfg["attn_pool_mlp"] = False
        elif pool_fc1.shape[0] != cfg["mlp_dim"]:  # Perception Encoder gigantic's 4 D
            cfg["attn_pool_mlp_dim"] = pool_fc1.shape[0]
    elif cfg["distill_token"]:
        cfg["pool"] = "distill"  # timm's VisionTransformerDistilled
    else:
        cfg["pool"] = "gap" if (cfg["fc_norm"] or not cfg["class_token"]) else "token"
    if "rope.freqs" in sd:  # RoPE-Mixed's learned frequencies, (2, depth, heads, Dh/2)
        freqs = tuple(sd["rope.freqs"].shape)
        if len(freqs) != 4 or freqs[0] != 2 or freqs[1] != depth or freqs[2] * freqs[3] * 2 != D:
            raise CheckpointError(f"rope.freqs is {freqs}, not RoPE-Mixed's (2, depth {depth}, heads, head width / 2) "
                                  f"for width {D}")
        cfg.update(rope="mixed", num_heads=freqs[2])
    elif cfg["qk_norm"]:
        cfg["num_heads"] = D // sd["blocks.0.attn.q_norm.weight"].shape[0]
    elif "num_heads" not in hints:  # no reader's rule settled it: say what is assumed
        cfg["num_heads"] = HEADS_BY_WIDTH.get(D, D // 64 if D % 64 == 0 else 0)
        if cfg["num_heads"]:
            warnings.warn(AssumedSettingsNotice(
                f"the tensors do not show the head count: vitlab assumes num_heads={cfg['num_heads']} (heads of "
                f"{D // cfg['num_heads']} at width {D}); pass num_heads= to vitlab.load if it differs",
                ("num_heads",)), stacklevel=5)
    cfg.update(hints)
    if not cfg["num_heads"]:
        raise CheckpointError(f"cannot tell the number of heads of a width-{D} model from its weights; "
                              "pass num_heads=... to vitlab.load")
    n_rows = sd["pos_embed"].shape[1] if "pos_embed" in sd else 0
    n_embedded = int(cfg["class_token"]) + int(cfg["distill_token"])  # prefix tokens a table may give a row
    grid, n_prefix = None, 0
    prefixes = (n_embedded + cfg["num_register_tokens"], n_embedded, 0)
    if hints.get("no_embed_class") is False and n_embedded:  # the source gives its class token a row, for certain
        prefixes = prefixes[:2]
    for n_prefix in dict.fromkeys(prefixes):
        grid = _grid_for(n_rows - n_prefix, P, hints.get("img_size")) if n_rows else None
        if grid:
            break
    if n_rows and grid is None and "img_size" not in hints:
        e = CheckpointError(f"the position table's {n_rows} rows are no square grid after {n_embedded} prefix "
                            "rows: pass img_size=... to vitlab.load, the (height, width) it was trained at")
        e.needs_img_size = True  # type: ignore[attr-defined] (vitlab.load's img_size then names the stored size)
        raise e
    if "no_embed_class" not in hints and grid is not None:
        cfg["no_embed_class"] = n_prefix == 0 and n_embedded > 0  # a table of the patches only (timm's name)
    if "img_size" not in hints:
        cfg["img_size"] = (grid[0] * P, grid[1] * P) if grid else (224, 224)
    try:
        return ViTConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's architecture is not a valid ViTConfig ({first_line(e)})") from e


def check_overrides(conv: Converted, overrides: dict[str, Any], source: str) -> None:
    """Each override on its own: a value no ViTConfig takes is a ConfigError naming the field; one that changes a
    field the checkpoint states (``source`` names it) is an :class:`OverriddenSetting` warning."""
    stated = conv.stated_fields()
    for name, value in overrides.items():
        given = check_field(name, value)
        if name not in stated:
            continue
        try:
            said = check_field(name, stated[name])
        except ConfigError:  # the file's own value is not valid: config_of says so
            continue
        if said != given:
            warnings.warn(OverriddenSetting(f"{source} ({conv.stated_by})", name, said, given), stacklevel=5)


def config_of(conv: Converted, overrides: dict[str, Any]) -> ViTConfig:
    """The ViTConfig of a converted checkpoint with ``overrides`` applied: the config it states whole (vitlab's own
    formats), else the one :func:`infer_config` reads off its shapes and hints. (Each override's value is checked
    on its own by :func:`check_overrides` first.)"""
    if not conv.complete:
        hints = {**conv.hints, **overrides}
        for name, answers in conv.undetermined.items():
            if name not in hints:
                raise CheckpointError(f"the tensors do not show {name} ({answers}); pass {name}=... to vitlab.load, "
                                      "or load a folder whose config.json states it")
        return infer_config(conv.state_dict, hints)
    try:
        return ViTConfig.from_dict({**conv.hints, **overrides})
    except (TypeError, ValueError) as e:
        given = f" with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}" if overrides else ""
        raise CheckpointError(f"{conv.stated_by}{given} is not a valid ViTConfig ({first_line(e)})") from e


def canonical_pos_embed(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Put ``pos_embed`` into vitlab's layout for ``cfg`` (its img_size as stored in the checkpoint).

    Sources differ in which prefix tokens get a row: timm gives class, distillation and register tokens one each
    (or none, with ``no_embed_class``); big_vision gives none. Register rows are added into the register tokens
    (a token plus a constant is the same model), so every source ends as [class row, distillation row, grid], or
    the grid alone with ``cfg.no_embed_class``. A table without prefix rows for a config that wants them gets
    zero rows (the tokens had no position).
    """
    if "pos_embed" not in sd:
        return sd
    sd = dict(sd)
    pos = sd["pos_embed"]
    n_grid = cfg.grid_size[0] * cfg.grid_size[1]
    n_prefix = pos.shape[1] - n_grid
    n_pos, R = cfg.num_pos_prefix, cfg.num_register_tokens
    n_embedded = int(cfg.class_token) + int(cfg.distill_token)
    if n_prefix not in (0, n_embedded, n_embedded + R):
        raise CheckpointError(f"pos_embed has {pos.shape[1]} rows, which does not fit a {cfg.grid_size} grid with "
                              f"{n_embedded} class/distillation and {R} register tokens; for a non-square grid pass "
                              "img_size=...")
    if n_prefix == n_embedded + R and R:
        sd["reg_token"] = sd["reg_token"] + pos[:, n_embedded:n_embedded + R]
        pos = torch.cat([pos[:, :n_embedded], pos[:, n_embedded + R:]], dim=1)
        n_prefix = n_embedded
    if n_prefix and cfg.no_embed_class:  # the prefix tokens' rows go into the tokens themselves
        for name, i in (("cls_token", 0), ("dist_token", 1))[:n_prefix]:
            sd[name] = sd[name] + pos[:, i:i + 1]
        pos = pos[:, n_prefix:]
    elif n_prefix == 0 and n_pos:
        pos = torch.cat([torch.zeros_like(pos[:, :n_pos]), pos], dim=1)  # the tokens had no position
    sd["pos_embed"] = pos
    return sd
