"""One loader for every ViT checkpoint format, and vitlab's own format.

``load_local`` reads a local file or folder, without ever executing code from the file:
    - vitlab's own ``.safetensors`` (config, preprocessing and class names in its metadata);
    - timm state dicts (``.pth`` / ``.bin`` / ``.safetensors``) and timm hub folders: ViT, DeiT (distilled and
      III), DINO, DINOv2 (with registers), CLIP, SigLIP, MAE;
    - Hugging Face transformers folders (``save_pretrained``) and state dicts: ViT, DeiT, DINOv2 (with registers),
      CLIP, SigLIP, ViT-MAE (``vitlab.convert.hf``);
    - OpenAI CLIP / OpenCLIP ``visual.*`` state dicts (the image tower; its head is the projection);
    - original DINOv2 (facebookresearch/dinov2) state dicts;
    - Google's official ``.npz`` (vision_transformer and big_vision layouts);
    - torchvision ``vit_*`` state dicts;
    - vitlab's training checkpoints (``runs/<run>/ckpt-step*.pt``, format "vitlab-train"): the EMA weights when
      the run kept them, else the model's, with the model config of the run (see ``vitlab.convert.train``).
It infers the architecture from the checkpoint, resamples the position embedding to ``img_size``,
gives a fresh head for another ``num_classes``, and reports every missing or unexpected key. A config that the
weights contradict (vitlab's metadata, a config.json, a training config, an argument) is an error that names
the file, the field and both values, in one line, as every ``CheckpointError`` is.
``vitlab.load`` (``vitlab.factory``) also takes pretrained names and ``hf-hub:`` ids: it downloads them
through ``vitlab.hub``, then reads the folder here.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vitlab.cnn import RESNETS, ResNet, ResNetConfig
from vitlab.config import ViTConfig
from vitlab.convert import (
    FORMAT,
    FORMAT_VERSION,
    AssumedSettingsNotice,
    CheckpointError,
    Converted,
    canonical_pos_embed,
    check_overrides,
    config_of,
    first_line,
    metadata_fields,
    read_json,
)
from vitlab.convert import dinov2 as dinov2_convert
from vitlab.convert import hf as hf_convert
from vitlab.convert import npz as npz_convert
from vitlab.convert import openclip as openclip_convert
from vitlab.convert import timm as timm_convert
from vitlab.convert import torchvision as tv_convert
from vitlab.convert import train as train_convert
from vitlab.convert.fit import check_fits, first_mismatch
from vitlab.errors import DiskFullError, NotFoundError, OutputError, VitlabError  # noqa: F401 (re-exported)
from vitlab.model import VisionTransformer
from vitlab.pos_embed import resample_pos_embed
from vitlab.preprocess import Preprocessing

FORMATS = "vitlab .safetensors, timm (.pth/.bin/.safetensors or hub folder), Hugging Face transformers folder or " \
          "state dict (ViT, DeiT, DINOv2, CLIP, SigLIP, ViT-MAE), " \
          "Google .npz (vision_transformer or big_vision), torchvision vit_* state dict, OpenAI CLIP / OpenCLIP " \
          "visual.* state dict, original DINOv2 (facebookresearch/dinov2) state dict, vitlab training checkpoint"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it is not a plain pickle of tensors and containers (the weights-only "
            f"unpickler stopped at: {_unpickler_reason(e)}), and unpickling anything more can execute code. vitlab "
            "never does. If you trust the file, re-save its state dict in Python "
            "(torch.save(obj['model'].state_dict(), 'clean.pth')) or as .safetensors"
        ) from e
    except Exception as e:  # garbage bytes make the weights-only unpickler raise KeyError, IndexError, struct.error...
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{first_line(e)}") from e


def _unpickler_reason(e: pickle.UnpicklingError) -> str:
    """The line of torch's multi-line weights-only error that says what stopped it ("Unsupported global: ...")."""
    lines = [line.strip() for line in str(e).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
    return lines[0] if lines else first_line(e)


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
    """Recognise a bare state dict's format by its key names. The original DINOv2's names are timm's plus its own
    (mask_token, register_tokens, chunked blocks), so it is asked first."""
    for fmt in (dinov2_convert, openclip_convert, timm_convert, hf_convert, tv_convert):
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
        raise CheckpointError(f"{path} is not a readable .safetensors file (truncated or corrupt?): "
                              f"{first_line(e)}") from e
    if meta.get("format") != FORMAT:
        return read_state_dict(sd, path)
    version = meta.get("format_version", "0")
    if not version.isdigit():
        raise CheckpointError(f"{path}: the metadata field 'format_version' is {version!r}, not a number")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer vitlab (format {version} > {FORMAT_VERSION}); upgrade")
    config, pre, names = metadata_fields(meta, f"{path}: the metadata")
    return Converted(sd, FORMAT, hints=config, preprocessing=pre, class_names=names, complete=True,
                     stated_by="the metadata")


def _read_folder(path: Path) -> Converted:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} is a folder without config.json: pass the weights file itself")
    hub_cfg = read_json(cfg_path)
    if not isinstance(hub_cfg, dict):
        raise CheckpointError(f"{cfg_path} is a JSON {type(hub_cfg).__name__}, expected an object of fields")
    if "model_type" in hub_cfg and "architecture" not in hub_cfg:  # transformers; read_folder checks the type
        return hf_convert.read_folder(path, hub_cfg)
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} has a config.json but no model.safetensors or pytorch_model.bin")
    with warnings.catch_warnings():
        if "architecture" in hub_cfg:  # a timm folder: config.json states what a bare state dict's notices assume
            warnings.simplefilter("ignore", AssumedSettingsNotice)
        conv = read_file(weights)
    if "architecture" in hub_cfg:
        try:
            hints, conv.preprocessing, conv.class_names = timm_convert.hints_from_hub_config(hub_cfg)
        except CheckpointError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as e:  # a field of another type than timm writes
            raise CheckpointError(f"{cfg_path}: a field has an unexpected value ({first_line(e)})") from e
        conv.hints.update(hints)
        conv.stated_by = "config.json"
        conv.stated = frozenset(hints) - timm_convert.hub_config_leaves_open(hub_cfg, hints)
    return conv


@contextmanager
def _about(path: Path) -> Iterator[None]:
    """Name the file in a CheckpointError raised inside (the readers' and infer_config's messages may not), and
    make any other error of reading a layout (a tensor a reader expected and did not find, ...) one line saying
    that this checkpoint is not one vitlab reads."""
    try:
        yield
    except CheckpointError as e:
        if str(path) in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from e
    except VitlabError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: vitlab cannot read this checkpoint's layout ({first_line(e)}); it reads "
                              f"{FORMATS}") from e


def _read(path: Path, follow_init: bool) -> Converted:
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".npz":
        return npz_convert.read_npz(path)
    obj = _torch_load(path)
    if train_convert.is_format(obj):  # a fine-tuning run's init is read one level deep, no further
        return train_convert.read_checkpoint(obj, path, (lambda init: _read(init, False)) if follow_init else None)
    return read_state_dict(_unwrap(obj, path), path)


def read_file(path: str | Path) -> Converted:
    """Read any supported checkpoint into a :class:`Converted` (canonical names, hints, preprocessing)."""
    path = Path(path)
    with _about(path):
        return _read(path, follow_init=True)


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
    ``vitlab.load`` (``vitlab.factory``) takes pretrained names and hub ids too, ends here, and documents the
    arguments.
    """
    path = Path(path)
    conv = read_file(path)
    with _about(path):
        if conv.complete and conv.hints.get("arch") in RESNETS:
            return _load_resnet(conv, path, num_classes, img_size, overrides)
        return _load_vit(conv, path, num_classes, img_size, strict, overrides)


def _class_names(conv: Converted, num_classes: int) -> list[str] | None:
    names = conv.class_names
    if names is not None and len(names) != num_classes:
        raise CheckpointError(f"{conv.stated_by} has {len(names)} class names for a head of {num_classes} classes")
    return names


def _keys(keys: list[str]) -> str:
    """A list of key names for a one-line message: all of a short one, the first few of a long one."""
    return repr(keys) if len(keys) <= 8 else f"[{', '.join(map(repr, keys[:8]))}, ... ({len(keys)} in all)]"


def _load_vit(conv: Converted, path: Path, num_classes: int | None, img_size: Any, strict: bool,
              overrides: dict[str, Any]) -> VisionTransformer:
    check_overrides(conv, overrides, str(path))  # a value no config takes, or one the file states otherwise
    try:
        cfg = config_of(conv, overrides)
    except CheckpointError as e:
        if img_size is None or not getattr(e, "needs_img_size", False):
            raise
        cfg = config_of(conv, {**overrides, "img_size": img_size})  # a table no rule reads: img_size says its size
    check_fits(conv.state_dict, cfg, conv.stated_by, overrides)  # one line for a config the weights contradict
    class_names = _class_names(conv, cfg.num_classes) if conv.complete else conv.class_names
    sd = canonical_pos_embed(conv.state_dict, cfg)
    pre = conv.preprocessing or Preprocessing.default_for(cfg)

    if img_size is not None:
        new = ViTConfig(**{**cfg.to_dict(), "img_size": img_size})
        if "pos_embed" in sd:
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], new.grid_size, cfg.grid_size,
                                                 num_prefix=cfg.num_pos_prefix, method=cfg.pos_resample)
        cfg, pre = new, pre.replace(img_size=new.img_size)
    reset_head = num_classes is not None and num_classes != cfg.num_classes
    if reset_head:
        warnings.warn(f"{path}: the checkpoint has {cfg.num_classes} classes, {num_classes} were asked for: "
                      "the head is new and zero-initialised (train it before use)", stacklevel=4)
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dist."))}
        cfg, class_names = cfg.replace(num_classes=num_classes), None

    # Build without memory or random init (meta device), then take the checkpoint's tensors as they are.
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    mismatch = first_mismatch(sd, model.state_dict(), conv.stated_by)
    if mismatch:  # what the field checks let through, e.g. a tensor that disagrees with its siblings
        raise CheckpointError(mismatch)
    result = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (reset_head and k.startswith(("head.", "head_dist.")))]
    if missing or result.unexpected_keys:
        msg = f"{path} ({conv.format}): missing keys {_keys(missing)}, unexpected keys {_keys(result.unexpected_keys)}"
        if strict:
            raise CheckpointError(msg + "; pass strict=False to load anyway (missing tensors keep their init)")
        warnings.warn(msg, stacklevel=4)
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
    try:
        cfg = ResNetConfig.from_dict({**conv.hints, **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{conv.stated_by} is not a valid ResNetConfig ({first_line(e)})") from e
    class_names = _class_names(conv, cfg.num_classes)
    pre = conv.preprocessing or Preprocessing.default_for(cfg)
    if img_size is not None:  # convolutions take any size; the stem stays the one the weights were trained with
        cfg = cfg.replace(img_size=img_size)
        pre = pre.replace(img_size=cfg.img_size)
    model = ResNet(cfg)
    sd = conv.state_dict
    if "head.weight" in sd and sd["head.weight"].shape[0] != cfg.num_classes:
        raise CheckpointError(f"{conv.stated_by} says num_classes={cfg.num_classes} but head.weight is "
                              f"{tuple(sd['head.weight'].shape)} (num_classes {sd['head.weight'].shape[0]})")
    reset_head = num_classes is not None and num_classes != cfg.num_classes
    if reset_head:
        warnings.warn(f"{path}: the checkpoint has {cfg.num_classes} classes, {num_classes} were asked for: "
                      "the head is new (train it before use)", stacklevel=4)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    mismatch = first_mismatch(sd, model.state_dict(), f"{conv.stated_by} ({cfg.arch}, {cfg.stem} stem)")
    if mismatch:
        raise CheckpointError(mismatch)
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not (reset_head and k.startswith("head."))]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: missing keys {_keys(missing)}, unexpected keys {_keys(result.unexpected_keys)}")
    if reset_head:
        model.reset_classifier(num_classes)
    model.preprocessing = pre
    model.class_names = None if reset_head else class_names
    model.source_format = conv.format
    return model


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC, as an OSError or inside another error's message (torch.save raises a RuntimeError)."""
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, ``.<name>.tmp-<pid>``, then rename: a crash or a full disk
    leaves the previous file intact and no partial file behind. A process killed outright leaves its temporary
    file; the next write to the same path removes it once that process is gone. The file keeps the mode of the one
    it replaces; a new one gets the mode a plain ``open()`` gives (0666 less the umask). A full disk raises
    ``DiskFullError``, a path that cannot be written (a folder, no permission) ``OutputError``: both OSErrors."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot make the folder of {path}: {e.strerror or e}; choose another path") from e
    remove_dead_writers_temporaries(path)
    tmp = temporary_name(path, os.getpid())
    try:
        # Made as open() makes a file, for its mode; the writer writes into it (or makes its own, as safetensors
        # does with 0600), so the mode is set again below.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        mode = (path if path.is_file() else tmp).stat().st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - each writer reports a full disk its own way
        if _is_disk_full(e):
            tmp.unlink(missing_ok=True)  # its space first: the message reports what is free without it
            raise DiskFullError(path) from e
        if isinstance(e, OSError) and e.errno in _UNWRITABLE:
            raise OutputError(f"cannot write {path}: {e.strerror}; choose another path") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR)


def temporary_name(path: Path, pid: int) -> Path:
    """The temporary file process ``pid`` writes ``path`` through (``atomic_write``)."""
    return path.with_name(f".{path.name}.tmp-{pid}")


def remove_dead_writers_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of ``path`` that processes no longer alive left (killed mid-write); the ones of a
    live process, this one included, may be writes in progress and stay. Returns what was removed."""
    prefix = temporary_name(path, 0).name[:-1]  # ".<name>.tmp-"
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n[len(prefix):].isdigit()]
    except OSError:
        return []
    stale = [path.parent / n for n in names if not _alive(int(n[len(prefix):]))]
    for tmp in stale:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
    return stale


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (pid 0 and this process's own count as alive)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists, another user's
        return True
    return True


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def model_metadata(model: VisionTransformer | ResNet, preprocessing: Preprocessing | None = None,
                   class_names: list[str] | None = None) -> dict[str, str]:
    """What a vitlab file says about its model, as strings (safetensors and ONNX metadata): the format, the
    config, the preprocessing (the model's, else the default for its config) and the class names, if any."""
    pre = preprocessing or getattr(model, "preprocessing", None) or Preprocessing.default_for(model.config)
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    if names is not None and len(names) != model.config.num_classes:
        raise CheckpointError(f"{len(names)} class names for a model with {model.config.num_classes} classes")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(model.config.to_dict()),
            "preprocessing": json.dumps(pre.to_dict())}
    if names is not None:
        meta["class_names"] = json.dumps(list(names))
    return meta


def suffix_problem(fmt: str, path: Path) -> str | None:
    """Why ``load`` would not read back a file of format ``fmt`` ("vitlab", "timm", "npz") named ``path``, or None:
    it reads a .safetensors file as vitlab's format or a state dict, a .npz file as Google's, any other with
    torch.load."""
    if fmt == "vitlab" and path.suffix != ".safetensors":
        return f"vitlab checkpoints are .safetensors files, got {path.name!r}"
    if fmt == "npz" and path.suffix != ".npz":
        return f"Google's checkpoints are .npz files, got {path.name!r}"
    if fmt == "timm" and path.suffix == ".npz":
        return f"a timm state dict is a .safetensors, .pth, .pt or .bin file, got {path.name!r}"
    return None


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
    if problem := suffix_problem("vitlab", path):
        raise CheckpointError(problem)
    meta = {**model_metadata(model, preprocessing, class_names), **(extra_metadata or {})}
    sd = _plain_state_dict(model)
    atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))
    return path


def export_timm(model: VisionTransformer, path: str | Path) -> Path:
    """Save a state dict that timm loads strictly into ``timm_model_class(cfg)(**timm_model_args(cfg))``
    (``vitlab.convert.timm``; ``cfg = model.config``): timm's VisionTransformer, or for DeiT's distilled models
    (pool "distill") its VisionTransformerDistilled. ``.safetensors`` or ``.pth`` by the suffix of ``path``.
    A model timm has no counterpart for (pool "token_gap", norm_pre with a patch bias, ...) is a CheckpointError;
    timm resamples position tables with antialiased bicubic whatever the model's ``pos_resample``."""
    path = Path(path)
    if problem := suffix_problem("timm", path):
        raise CheckpointError(problem)
    sd = timm_convert.to_timm(_plain_state_dict(model), model.config)
    if path.suffix == ".safetensors":
        atomic_write(path, lambda tmp: save_file(sd, str(tmp)))
    else:
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    return path


def export_npz(model: VisionTransformer, path: str | Path) -> Path:
    """Save Google's .npz layout (vision_transformer), readable by the official JAX code and timm."""
    path = Path(path)
    if problem := suffix_problem("npz", path):
        raise CheckpointError(problem)
    arrays = npz_convert.to_npz(_plain_state_dict(model), model.config)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path
