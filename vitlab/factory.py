"""One place that decides what a model spec names, and builds the model from it (as timm's ``_factory``).

A model spec is one of:
    a registered name or alias   "vit_base_patch16_224", "B/16", "Ti/4@32"        (random weights by default)
    a name with a pretrained tag "vit_base_patch16_224.augreg2_in21k_ft_in1k"     (that timm hub repo's weights)
    a ResNet baseline            "resnet20" (``vitlab.cnn.RESNETS``; vitlab has no pretrained ResNet weights)
    a local checkpoint           a file or folder in any format ``vitlab.checkpoint`` reads, such as
                                 "model.safetensors", "runs/x/ckpt-step00001000.pt", a transformers folder
    a hub id                     "hf-hub:org/repo", or a timm "architecture.tag" vitlab has no name for

``parse_spec`` classifies a spec. ``create_model``, ``load`` and ``model_from_spec`` build on it; the CLI's
``--model`` and the trainer's ``model.init`` go through them, so every entry point reads a spec the same way.
The checks, in order: an ``hf-hub:`` prefix; a checkpoint suffix (``CHECKPOINT_SUFFIXES``); a registered name,
alias or ResNet, with an optional tag; an existing file or folder; a timm ``architecture.tag``; anything else
shaped like a path. A string that is a model name means the model, even where a file of that name exists: pass
such a file as ``./name`` or as a ``pathlib.Path`` (a ``Path`` is always a path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from vitlab import hub
from vitlab.checkpoint import load_local
from vitlab.cnn import RESNETS, ResNet, create_resnet
from vitlab.convert import CHECKPOINT_SUFFIXES
from vitlab.errors import ConfigError
from vitlab.model import VisionTransformer
from vitlab.preprocess import Preprocessing
from vitlab.registry import DEFAULT_PRETRAINED_TAGS, get_config, is_alias, resolve_name, split_pretrained_tag

Model = VisionTransformer | ResNet
SpecKind = Literal["name", "resnet", "path", "hub"]
ACCEPTED = ("a registered name or alias (vitlab.list_models()), optionally with a pretrained tag "
            "('vit_base_patch16_224.augreg2_in21k_ft_in1k'), a ResNet baseline (" + ", ".join(RESNETS) + "), "
            "a checkpoint file or folder, or a hub id ('hf-hub:org/repo')")
_TIMM_NAME = re.compile(r"^[a-z0-9_]+\.[A-Za-z0-9_]+$")  # a timm hub repo: "architecture.tag"
_TAG = re.compile(r"^[A-Za-z0-9_]+$")  # a pretrained tag on its own: "augreg2_in21k_ft_in1k"


@dataclass(frozen=True)
class ModelSpec:
    """What a model spec names (see the module docstring)."""

    kind: SpecKind  # "name": a registered ViT; "resnet": a CNN baseline; "path": a local file or folder; "hub"
    text: str  # the spec as given
    name: str | None = None  # "name": the registered name (an alias resolved); "resnet": the ResNet's name
    tag: str | None = None  # the pretrained tag written after the name, if any
    path: Path | None = None  # "path": the file or folder (it may not exist: loading then says so)
    hub_id: str | None = None  # "hub", and a tagged "name": what vitlab.hub.download fetches

    @property
    def weights(self) -> Path | str | None:
        """Where the spec's own trained weights are: a local path, a hub id, or None (a name without a tag)."""
        return self.path if self.path is not None else self.hub_id


class SpecModel(NamedTuple):
    """``model_from_spec``'s answer."""

    model: Model
    trained: bool  # False: a name built with random weights (its head zero-initialised)


def _as_path(text: str) -> Path:
    return Path(text).expanduser() if text.startswith("~/") else Path(text)


def parse_spec(spec: str | Path) -> ModelSpec:
    """Classify a model spec: a name (alias, pretrained tag), a ResNet baseline, a local path or a hub id.

    Raises ValueError for a string that is none of them, saying what is accepted and listing the valid names.
    """
    if isinstance(spec, Path):
        return ModelSpec("path", str(spec), path=spec)
    if not isinstance(spec, str):
        raise TypeError(f"a model spec is a string or a pathlib.Path, got {type(spec).__name__}")
    if not spec.strip():
        raise ConfigError(f"the model spec is empty; a model is {ACCEPTED}")
    if spec.startswith(hub.HF_HUB_PREFIX):
        if not spec[len(hub.HF_HUB_PREFIX):]:
            raise ConfigError(f"{spec!r} names no repo: write it as 'hf-hub:org/repo'")
        return ModelSpec("hub", spec, hub_id=spec)
    if spec.endswith(CHECKPOINT_SUFFIXES):
        return ModelSpec("path", spec, path=_as_path(spec))
    arch, tag = split_pretrained_tag(spec)
    if arch in RESNETS:
        return ModelSpec("resnet", spec, name=arch, tag=tag)
    try:
        name = resolve_name(arch)
    except ValueError as e:
        unknown = e
    else:
        return ModelSpec("name", spec, name=name, tag=tag, hub_id=f"{name}.{tag}" if tag else None)
    path = _as_path(spec)
    if not is_alias(arch):  # "B/17" is a misspelt alias, not a folder B with a file 17
        if path.exists():
            return ModelSpec("path", spec, path=path)
        if _TIMM_NAME.match(spec):  # "deit_tiny_patch16_224.fb_in1k": weights vitlab can read, under no vitlab name
            return ModelSpec("hub", spec, hub_id=spec)
        if "/" in spec or "\\" in spec or spec.startswith(("~", ".")):
            return ModelSpec("path", spec, path=path)
    raise ConfigError(f"{spec!r} is neither an existing checkpoint file or folder, nor a hub id, nor a model name. "
                     f"A model is {ACCEPTED}. {unknown}") from None


def _local_weights(spec: ModelSpec) -> Path:
    """The local file or folder holding a spec's weights; a hub id is downloaded (or found in the cache) first."""
    if spec.path is not None:
        return spec.path
    if spec.hub_id is not None:
        return hub.download(spec.hub_id)
    raise ConfigError(f"{spec.text!r} is a model name, not a checkpoint: vitlab.create_model({spec.text!r}) builds "
                     "it (pretrained=True: with its default weights)")


def load(
    source: str | Path,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    strict: bool = True,
    **overrides: Any,
) -> Model:
    """Build a model from trained weights: a checkpoint file or folder, a name with a pretrained tag or a hub id
    (downloaded through huggingface_hub's cache). The architecture comes from the checkpoint itself (a
    VisionTransformer, or a ResNet baseline saved by vitlab).

    num_classes: another class count gets a fresh zero-initialised head (a warning says so); 0 = no head.
    img_size: resample the position embedding in 2D for this input size.
    strict: raise on missing or unexpected keys (default); False downgrades them to a warning.
    overrides: ViTConfig fields the checkpoint cannot state (num_heads for an unusual width) or that do
        not change the weights (drop_path_rate, dropout, ...).
    The model carries ``model.preprocessing`` and ``model.class_names`` from the checkpoint.
    """
    path = _local_weights(parse_spec(source))
    return load_local(path, num_classes=num_classes, img_size=img_size, strict=strict, **overrides)


def _weights_for(spec: ModelSpec, pretrained: bool | str) -> ModelSpec | None:
    """The spec whose weights ``create_model`` loads for ``spec`` and ``pretrained``; None: random weights."""
    if isinstance(pretrained, str):  # a tag of this name, or weights of their own (a path, a hub id, name.tag)
        if spec.kind == "name" and _TAG.match(pretrained) and not Path(pretrained).exists():
            return parse_spec(f"{spec.name}.{pretrained}")
        weights = parse_spec(pretrained)
        if weights.weights is None:
            raise ConfigError(f"pretrained={pretrained!r} names no weights: pass a pretrained tag, a checkpoint "
                             "path or an 'hf-hub:org/repo' id")
        return weights
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be a bool or a string, got {type(pretrained).__name__}")
    if spec.weights is not None:  # a path, a hub id or a tagged name: its weights, whatever pretrained says
        return spec
    if not pretrained:
        return None
    tag = DEFAULT_PRETRAINED_TAGS.get(spec.name)
    if tag is None:
        raise ConfigError(f"no default pretrained weights are known for {spec.name!r}; pass pretrained='<tag>', "
                         "an 'hf-hub:org/repo' id or a local checkpoint path")
    return parse_spec(f"{spec.name}.{tag}")


def _create_resnet(spec: ModelSpec, pretrained: bool | str, num_classes: int | None,
                   img_size: int | tuple[int, int] | None, overrides: dict[str, Any]) -> ResNet:
    if pretrained is not False or spec.tag:
        raise ConfigError(f"{spec.text!r}: vitlab has no pretrained ResNet weights; train one with the recipe "
                         "cifar10-resnet20 or load a checkpoint you trained with vitlab.load")
    sizes = {k: v for k, v in (("num_classes", num_classes), ("img_size", img_size)) if v is not None}
    model = create_resnet(spec.name, **sizes, **overrides)
    model.preprocessing = Preprocessing.default_for(model.config)
    return model


def _create_vit(name: str, num_classes: int | None, img_size: int | tuple[int, int] | None,
                overrides: dict[str, Any]) -> VisionTransformer:
    changes = dict(overrides)
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if img_size is not None:
        changes["img_size"] = img_size
    model = VisionTransformer(get_config(name, **changes))
    model.preprocessing = Preprocessing.default_for(model.config)
    model.class_names = None
    return model


def _create(spec: ModelSpec, pretrained: bool | str, num_classes: int | None,
            img_size: int | tuple[int, int] | None, overrides: dict[str, Any]) -> Model:
    if spec.kind == "resnet":
        return _create_resnet(spec, pretrained, num_classes, img_size, overrides)
    weights = _weights_for(spec, pretrained)
    if weights is None:
        return _create_vit(spec.name, num_classes, img_size, overrides)
    return load_local(_local_weights(weights), num_classes=num_classes, img_size=img_size, **overrides)


def create_model(
    name: str | Path,
    *,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    **overrides: Any,
) -> Model:
    """Build a named ViT, randomly initialised or with pretrained weights.

    name: a registered name or alias (``vitlab.list_models()``), optionally with a timm pretrained tag
        (``"vit_base_patch16_224.augreg2_in21k_ft_in1k"``, which implies ``pretrained=True``). A ResNet name
        (``vitlab.cnn.RESNETS``: resnet20, resnet18, ...) builds the CNN baseline instead. A checkpoint path or
        a hub id (any spec ``parse_spec`` reads) loads its weights, as ``vitlab.load`` does.
    pretrained: False; True for the default weights of ``name``; or a source for ``vitlab.load``: a
        pretrained tag, an ``hf-hub:org/repo`` id or a local checkpoint path.
    num_classes, img_size: change the head (fresh, zero-initialised) or the input size (position
        embedding resampled in 2D) of pretrained weights; set them directly for a new model.
    overrides: any other ``ViTConfig`` field (``drop_path_rate=0.1``, ``pool="gap"``, ...).
    """
    return _create(parse_spec(name), pretrained, num_classes, img_size, overrides)


def model_from_spec(
    spec: str | Path,
    *,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    **overrides: Any,
) -> SpecModel:
    """Any model spec -> the model and whether its weights are trained: a checkpoint or hub id loads its
    weights; a name is built as ``create_model(spec, pretrained=...)`` builds it. Python warnings (a fresh head,
    missing keys) stay warnings."""
    parsed = parse_spec(spec)
    model = _create(parsed, pretrained, num_classes, img_size, overrides)
    return SpecModel(model, trained=parsed.weights is not None or pretrained is not False)
