"""vitlab's own training checkpoints (``runs/<run>/ckpt-step00001234.pt``, format "vitlab-train") -> Converted.

The trainer (``vitlab.train.state.save_state``) writes one dict per checkpoint: the "model" and "ema" state dicts
("ema" is empty when the run kept no EMA), the optimizer and RNG states, the step, and "config", the run's
``TrainConfig`` as a dict. ``vitlab.load`` reads it, and so does every command that takes a checkpoint and
fine-tuning with ``model.init``:

weights        the EMA weights when the run kept them (``ema_decay > 0``: the weights the run evaluated and
               saved as best.safetensors and model.safetensors), else "model".
config         the checkpoint's "model_meta" when it holds one (what ``vitlab.checkpoint.model_metadata``
               writes into a .safetensors: config, preprocessing and class names as trained). Otherwise the
               training config: ``model.init`` (fine-tuning) or ``model.name``, read as a registered name or
               alias (``vitlab.registry``), a ResNet baseline (``vitlab.cnn``) or a local checkpoint, with
               ``model.overrides``; an init vitlab cannot find here leaves the architecture to the weights.
               The class count is the head's and the image size the position table's (without a table:
               ``data.img_size``, else the model's own).
preprocessing  model_meta's; otherwise the init checkpoint's or the default for the config, at the trained size
               and, for images held in memory, without a crop (as the trainer sets it).
class names    model_meta's or a "class_names" list; otherwise those of the ``shapes`` data set; else none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vitlab.cnn import RESNETS, ResNetConfig
from vitlab.config import ViTConfig
from vitlab.convert import (
    CHECKPOINT_SUFFIXES,
    CheckpointError,
    Converted,
    config_of,
    first_line,
    infer_config,
    metadata_fields,
)
from vitlab.preprocess import Preprocessing
from vitlab.registry import get_config, split_pretrained_tag

TRAIN_FORMAT = "vitlab-train"  # what vitlab.train.state.save_state writes as "format"
TRAIN_FORMAT_VERSION = 1
STATED_BY = "the training config"

ModelConfig = ViTConfig | ResNetConfig
ReadInit = Callable[[Path], Converted]  # reads the init checkpoint of a fine-tuning run (without its own init)


def is_format(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT


def read_checkpoint(state: dict[str, Any], path: Path, read_init: ReadInit | None) -> Converted:
    """A training checkpoint's dict (``torch.load(weights_only=True)``) -> its weights, config, preprocessing
    and class names. ``read_init`` reads a fine-tuning run's init checkpoint; None: the weights decide."""
    version = state.get("format_version", 1)
    if not isinstance(version, int) or version > TRAIN_FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer vitlab (training checkpoint format {version!r} > "
                              f"{TRAIN_FORMAT_VERSION}); upgrade vitlab to read it")
    sd = _weights(state, path)
    meta = state.get("model_meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: model_meta is a {type(meta).__name__}, expected a dict of strings")
        config, pre, names = metadata_fields(meta, f"{path}: model_meta")
        return Converted(sd, TRAIN_FORMAT, hints=config, preprocessing=pre, class_names=names, complete=True,
                         stated_by="model_meta")
    train_cfg = state.get("config")
    if not isinstance(train_cfg, dict) or not isinstance(train_cfg.get("model", {}), dict):
        raise CheckpointError(f"{path}: the training checkpoint holds no training config ('config' with a "
                              "'model' table)")
    model_cfg, data_cfg = train_cfg.get("model", {}), train_cfg.get("data") or {}
    cfg, pre = _model_config(model_cfg, data_cfg, sd, path, read_init)
    pre = (pre or Preprocessing.default_for(cfg)).replace(img_size=cfg.img_size)
    if _in_memory(data_cfg, cfg.img_size):
        pre = pre.replace(crop_pct=1.0)
    return Converted(sd, TRAIN_FORMAT, hints=cfg.to_dict(), preprocessing=pre,
                     class_names=_class_names(state, data_cfg, cfg.num_classes), complete=True, stated_by=STATED_BY)


def _weights(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The EMA weights when the run kept them, else the model's."""
    ema = state.get("ema")
    which = "ema" if isinstance(ema, dict) and ema else "model"
    sd = state.get(which)
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: the training checkpoint's {which!r} entry holds no weights")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _model_config(model_cfg: dict[str, Any], data_cfg: dict[str, Any], sd: dict[str, torch.Tensor], path: Path,
                  read_init: ReadInit | None) -> tuple[ModelConfig, Preprocessing | None]:
    """The trained model's config: its spec's (init, else name) with the overrides, sized as the weights are."""
    spec = str(model_cfg.get("init") or model_cfg.get("name") or "")
    overrides = dict(model_cfg.get("overrides") or {})
    n_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    base, pre = _spec_config(spec, path, read_init)
    if base is None:  # an init that is not here (a hub id, a file gone): the weights decide, the overrides help
        try:
            return infer_config(sd, overrides), None
        except CheckpointError as e:
            raise CheckpointError(f"{path}: the run's model {spec!r} is neither a registered name nor a checkpoint "
                                  f"found here, and {e}") from e
    try:
        if isinstance(base, ResNetConfig):
            return _resnet_config(base, spec, overrides, n_classes, data_cfg), pre
        base = base.replace(**overrides)
        return base.replace(num_classes=n_classes, img_size=_trained_size(sd, base, data_cfg)), pre
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {STATED_BY} (model {spec!r}, overrides {overrides}) is not a valid model "
                              f"config ({first_line(e)})") from e


def _spec_config(spec: str, path: Path, read_init: ReadInit | None) -> tuple[ModelConfig | None, Preprocessing | None]:
    """The config (and preprocessing) a model spec of the training config names, or None where it is unknown
    here: a hub id, or a file that is gone or unreadable."""
    if not spec.endswith(CHECKPOINT_SUFFIXES):
        arch, _ = split_pretrained_tag(spec)
        if arch in RESNETS:
            return ResNetConfig(arch=arch), None
        try:
            return get_config(arch), None  # a tagged name: timm's weights of that name share its architecture
        except ValueError:
            pass
    local = Path(spec).expanduser()
    if read_init is None or not local.exists() or local.resolve() == path.resolve():
        return None, None
    try:
        conv = read_init(local)
        if conv.complete and conv.hints.get("arch") in RESNETS:
            return ResNetConfig.from_dict(conv.hints), conv.preprocessing
        return config_of(conv, {}), conv.preprocessing
    except (CheckpointError, OSError):
        return None, None


def _resnet_config(base: ResNetConfig, spec: str, overrides: dict[str, Any], n_classes: int,
                   data_cfg: dict[str, Any]) -> ResNetConfig:
    """As the trainer builds it: a name anew (its stem follows the image size), an init checkpoint's config with
    the new size (its stem kept)."""
    size = _data_img_size(data_cfg) or overrides.get("img_size") or base.img_size
    if split_pretrained_tag(spec)[0] in RESNETS:
        return ResNetConfig(**{**overrides, "arch": base.arch, "num_classes": n_classes, "img_size": size})
    return base.replace(**overrides).replace(num_classes=n_classes, img_size=size)


def _trained_size(sd: dict[str, torch.Tensor], base: ViTConfig, data_cfg: dict[str, Any]) -> Any:
    """The image size the run trained at: the one whose grid fits the position table (vitlab's layout: a class
    row, then the grid), preferring data.img_size and the model's own; without a table, those two."""
    image_size = _data_img_size(data_cfg)
    if "pos_embed" not in sd or base.pos_embed != "learned":
        return image_size or base.img_size
    n_grid = sd["pos_embed"].shape[1] - base.num_pos_prefix  # (1, [1 +] h*w, D)
    P = base.patch_size
    for size in ((image_size, image_size), base.img_size):
        if size[0] and (size[0] // P) * (size[1] // P) == n_grid:
            return size
    side = math.isqrt(max(n_grid, 0))
    return (side * P, side * P) if side and side * side == n_grid else base.img_size  # else: load names the misfit


def _in_memory(data_cfg: dict[str, Any], img_size: tuple[int, int]) -> bool:
    """Whether the run held its images in memory (no crop in its preprocessing), as vitlab.data decides."""
    from vitlab.data.datasets import SMALL_IMAGE_MAX

    return not str(data_cfg.get("dataset", "")).startswith("folder:") or max(img_size) <= SMALL_IMAGE_MAX


def _class_names(state: dict[str, Any], data_cfg: dict[str, Any], n_classes: int) -> list[str] | None:
    names = state.get("class_names")
    if names is None and data_cfg.get("dataset") == "shapes":
        from vitlab.data.shapes import CLASS_NAMES

        names = CLASS_NAMES
    if isinstance(names, list) and len(names) == n_classes and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _data_img_size(data_cfg: dict[str, Any]) -> int:
    """The run's data.img_size (``image_size`` in runs written before vitlab 0.2); 0 = not set."""
    return data_cfg.get("img_size") or data_cfg.get("image_size") or 0
