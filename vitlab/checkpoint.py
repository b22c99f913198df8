"""One loader for every ViT checkpoint format, and vitlab's own format.

``load_local`` reads a local file or folder, without ever executing code from the file:
    - vitlab's own ``.safetensors`` (config, preprocessing and class names in its metadata);
    - timm state dicts (``.pth`` / ``.bin`` / ``.safetensors``) and timm hub folders;
    - Hugging Face transformers ViT folders (``save_pretrained``), with or without a classifier;
    - Google's official ``.npz`` (vision_transformer and big_vision layouts);
    - torchvision ``vit_*`` state dicts.
It infers the architecture from the checkpoint, resamples the position embedding to ``img_size``,
gives a fresh head for another ``num_classes``, and reports every missing or unexpected key.
``vitlab.load`` (``vitlab.factory``) also takes pretrained names and ``hf-hub:`` ids: it downloads them
through ``vitlab.hub``, then reads the folder here.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vitlab.cnn import RESNETS, ResNet, ResNetConfig
from vitlab.config import ViTConfig
from vitlab.convert import CheckpointError, Converted, canonical_pos_embed, infer_config
from vitlab.convert import hf as hf_convert
from vitlab.convert import npz as npz_convert
from vitlab.convert import timm as timm_convert
from vitlab.convert import torchvision as tv_convert
from vitlab.model import VisionTransformer
from vitlab.pos_embed import resample_pos_embed
from vitlab.preprocess import Preprocessing

FORMAT = "vitlab"
FORMAT_VERSION = 1
FORMATS = "vitlab .safetensors, timm (.pth/.bin/.safetensors or hub folder), Hugging Face ViT folder, " \
          "Google .npz (vision_transformer or big_vision), torchvision vit_* state dict"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz", ".ckpt")  # what a model spec reads as a file
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it is a pickle holding objects other than tensors and plain containers, "
            "and unpickling those can execute code. vitlab never does. If you trust the file, re-save its "
            "state dict in Python (torch.save(obj['model'].state_dict(), 'clean.pth')) or as .safetensors"
        ) from e
    except Exception as e:  # garbage bytes make the weights-only unpickler raise KeyError, IndexError, struct.error...
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside common training-checkpoint wrappers; strip a DDP 'module.' prefix."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if key is None:
                break
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_state_dict(sd: dict[str, torch.Tensor], path: Path) -> Converted:
    """Recognise a bare state dict's format by its key names."""
    for fmt in (timm_convert, hf_convert, tv_convert):
        if fmt.is_format(sd):
            return fmt.read_state_dict(sd)
    sample = ", ".join(list(sd)[:6])
    raise CheckpointError(f"{path} is not a ViT checkpoint vitlab recognises (keys start: {sample}). "
                          f"Readable formats: {FORMATS}")


def _read_safetensors(path: Path) -> Converted:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable .safetensors file (truncated or corrupt?): {e}") from e
    if meta.get("format") != FORMAT:
        return read_state_dict(sd, path)
    version = int(meta.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer vitlab (format {version} > {FORMAT_VERSION}); upgrade")
    conv = Converted(sd, FORMAT, hints=json.loads(meta["config"]))
    if "preprocessing" in meta:
        conv.preprocessing = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
    if "class_names" in meta:
        conv.class_names = json.loads(meta["class_names"])
    return conv


def _read_folder(path: Path) -> Converted:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} is a folder without config.json: pass the weights file itself")
    hub_cfg = json.loads(cfg_path.read_text())
    if "model_type" in hub_cfg and "architecture" not in hub_cfg:  # transformers; read_folder checks the type
        return hf_convert.read_folder(path, hub_cfg)
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} has a config.json but no model.safetensors or pytorch_model.bin")
    conv = read_file(weights)
    if "architecture" in hub_cfg:
        hints, conv.preprocessing, conv.class_names = timm_convert.hints_from_hub_config(hub_cfg)
        conv.hints.update(hints)
    return conv


def read_file(path: str | Path) -> Converted:
    """Read any supported checkpoint into a :class:`Converted` (canonical names, hints, preprocessing)."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".npz":
        return npz_convert.read_npz(path)
    return read_state_dict(_unwrap(_torch_load(path), path), path)


def load_local(
    path: Path,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    strict: bool = True,
    **overrides: Any,
) -> VisionTransformer | ResNet:
    """Build a model from a local checkpoint file or folder in any supported format; the architecture comes
    from the checkpoint itself (a VisionTransformer, or a ResNet baseline saved by vitlab from ``vitlab.cnn``).
    ``vitlab.load`` (``vitlab.factory``) takes pretrained names and hub ids too, and ends here.

    num_classes: another class count gets a fresh zero-initialised head (a warning says so); 0 = no head.
    img_size: resample the position embedding in 2D for this input size.
    strict: raise on missing or unexpected keys (default); False downgrades them to a warning.
    overrides: ViTConfig fields the checkpoint cannot state (num_heads for an unusual width) or that do
        not change the weights (drop_path_rate, dropout, ...).
    The model carries ``model.preprocessing`` and ``model.class_names`` from the checkpoint.
    """
    conv = read_file(path)
    if conv.format == FORMAT and conv.hints.get("arch") in RESNETS:
        return _load_resnet(conv, path, num_classes, img_size, overrides)
    if conv.format == FORMAT:
        cfg = ViTConfig.from_dict({**conv.hints, **overrides})
    else:
        cfg = infer_config(conv.state_dict, {**conv.hints, **overrides})
    sd = canonical_pos_embed(conv.state_dict, cfg)
    pre = conv.preprocessing or Preprocessing.default_for(cfg)
    class_names = conv.class_names

    if img_size is not None:
        new = ViTConfig(**{**cfg.to_dict(), "img_size": img_size})
        if "pos_embed" in sd:
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], new.grid_size, cfg.grid_size,
                                                 num_prefix=int(cfg.class_token))
        cfg, pre = new, pre.replace(input_size=new.img_size)
    reset_head = num_classes is not None and num_classes != cfg.num_classes
    if reset_head:
        warnings.warn(f"{path}: the checkpoint has {cfg.num_classes} classes, {num_classes} were asked for: "
                      "the head is new and zero-initialised (train it before use)", stacklevel=2)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        cfg, class_names = cfg.replace(num_classes=num_classes), None

    # Build without memory or random init (meta device), then take the checkpoint's tensors as they are.
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        result = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not fit the architecture read from it ({e}). If the checkpoint has "
                              "an unusual head count or image size, pass num_heads=... or img_size=...") from e
    missing = [k for k in result.missing_keys if not (reset_head and k.startswith("head."))]
    if missing or result.unexpected_keys:
        msg = f"{path} ({conv.format}): missing keys {missing}, unexpected keys {result.unexpected_keys}"
        if strict:
            raise CheckpointError(msg + "; pass strict=False to load anyway (missing tensors keep their init)")
        warnings.warn(msg, stacklevel=2)
    if reset_head:
        model.reset_classifier(num_classes)  # a real, zero-initialised head
    if missing:  # only with strict=False: give those tensors the model's own init
        fresh = VisionTransformer(cfg).state_dict()
        model.load_state_dict({k: fresh[k] for k in missing}, strict=False, assign=True)
    model.preprocessing = pre
    model.class_names = class_names
    model.source_format = conv.format
    return model


def _load_resnet(conv: Converted, path: Path, num_classes: int | None, img_size: Any,
                 overrides: dict[str, Any]) -> ResNet:
    """A vitlab ResNet baseline checkpoint (vitlab.cnn): the same options as a ViT, less the resampling."""
    cfg = ResNetConfig.from_dict({**conv.hints, **overrides})
    pre = conv.preprocessing or Preprocessing.default_for(cfg)
    if img_size is not None:  # convolutions take any size; the stem stays the one the weights were trained with
        cfg = cfg.replace(img_size=img_size)
        pre = pre.replace(input_size=cfg.img_size)
    model = ResNet(cfg)
    sd = conv.state_dict
    reset_head = num_classes is not None and num_classes != cfg.num_classes
    if reset_head:
        warnings.warn(f"{path}: the checkpoint has {cfg.num_classes} classes, {num_classes} were asked for: "
                      "the head is new (train it before use)", stacklevel=3)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the ResNet its metadata describes ({e})") from e
    missing = [k for k in result.missing_keys if not (reset_head and k.startswith("head."))]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: missing keys {missing}, unexpected keys {result.unexpected_keys}")
    if reset_head:
        model.reset_classifier(num_classes)
    model.preprocessing = pre
    model.class_names = None if reset_head else conv.class_names
    model.source_format = conv.format
    return model


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash or a full disk leaves the
    previous file intact and no partial file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def model_metadata(model: VisionTransformer | ResNet, preprocessing: Preprocessing | None = None,
                   class_names: list[str] | None = None) -> dict[str, str]:
    """What a vitlab file says about its model, as strings (safetensors and ONNX metadata): the format, the
    config, the preprocessing (the model's, else the default for its config) and the class names, if any."""
    pre = preprocessing or getattr(model, "preprocessing", None) or Preprocessing.default_for(model.config)
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    if names is not None and len(names) != model.config.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.config.num_classes} classes")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(model.config.to_dict()),
            "preprocessing": json.dumps(pre.to_dict())}
    if names is not None:
        meta["class_names"] = json.dumps(list(names))
    return meta


def save(
    model: VisionTransformer | ResNet,
    path: str | Path,
    *,
    preprocessing: Preprocessing | None = None,
    class_names: list[str] | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Save weights as .safetensors with the config, preprocessing and class names in its metadata (a ViT, or a
    ResNet baseline from vitlab.cnn: ``load`` tells them apart by the config's ``arch``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"vitlab checkpoints are .safetensors files, got {path.name!r}")
    meta = {**model_metadata(model, preprocessing, class_names), **(extra_metadata or {})}
    sd = _plain_state_dict(model)
    atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))
    return path


def export_timm(model: VisionTransformer, path: str | Path) -> Path:
    """Save a state dict that timm's VisionTransformer (``timm_model_args(model.config)``) loads strictly.
    ``.safetensors`` or ``.pth`` by the suffix of ``path``."""
    path = Path(path)
    sd = timm_convert.to_timm(_plain_state_dict(model), model.config)
    if path.suffix == ".safetensors":
        atomic_write(path, lambda tmp: save_file(sd, str(tmp)))
    else:
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    return path


def export_npz(model: VisionTransformer, path: str | Path) -> Path:
    """Save Google's .npz layout (vision_transformer), readable by the official JAX code and timm."""
    path = Path(path)
    arrays = npz_convert.to_npz(_plain_state_dict(model), model.config)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path
