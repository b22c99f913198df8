"""Training configuration: dataclasses, named recipes (TOML files users can copy), and overrides.

A run is configured in three layers, later ones winning:
    1. a named recipe (``vitlab/recipes/<name>.toml``) or ``--config FILE`` (same format);
    2. ``--set section.key=value`` overrides, parsed by the type of the field they set;
    3. nothing else: the resolved config is written into the run folder, so a run can be repeated.
Unknown keys and values of the wrong type are errors that name the key and list the valid ones.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitlab.cnn import RESNETS, ResNetConfig
from vitlab.errors import ConfigError, TrainingError  # noqa: F401 (re-exported)
from vitlab.precision import AMP_CHOICES
from vitlab.registry import get_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_MODEL = "vit_tiny_patch4_32"  # model.name when a run names no model and has no model.init


@dataclass
class ModelConfig:
    # A registered name or alias (vitlab models); "" = DEFAULT_MODEL from scratch, and with init the init's own
    # architecture. With init the weights decide the architecture: a name of another kind is refused when the run
    # starts (a ViT name for a ResNet's weights; another ResNet; another registered ViT than init's name).
    name: str = ""
    # Fine-tuning: a model spec with weights (a path, name.tag, hf-hub:org/repo; a bare name: its default
    # pretrained weights); "" = from scratch.
    init: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)  # ViTConfig fields, e.g. {depth = 6}
    # Fine-tuning: freeze the embeddings and the first N blocks (a cheaper step: no backward through them); 0 = none.
    freeze_blocks: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.freeze_blocks, int) or self.freeze_blocks < 0:
            raise ConfigError(f"model.freeze_blocks must be an integer >= 0, got {self.freeze_blocks!r}")
        for key, instead in (("img_size", "data.img_size"), ("num_classes", "the data set")):
            if key in self.overrides:
                raise ConfigError(f"model.overrides.{key}: the trained model's {key} comes from {instead}; "
                                  f"remove model.overrides.{key}")
        if self.init:  # a fine-tuning source is resolved (and checked) when the run starts: it may be a download
            return
        self.name = self.name or DEFAULT_MODEL
        try:
            if self.name in RESNETS:
                ResNetConfig(arch=self.name, **self.overrides)
            else:
                get_config(self.name, **self.overrides)
        except (TypeError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"model: {first} (model.name={self.name!r}, model.overrides={self.overrides})") from e


@dataclass
class DataConfig:
    dataset: str = "shapes"  # shapes | cifar10 | cifar100 | folder:PATH
    data_dir: str = ""  # an existing copy of the data set ("" = the cache folder, downloading if needed)
    batch_size: int = 128  # global batch (all processes, before gradient accumulation)
    val_fraction: float = 0.1  # folder data sets without a val/ or test/ folder
    strict: bool = False  # images that do not decode: error instead of skip-and-warn
    num_workers: int = 2  # streaming (large-image) data sets only
    img_size: int = 0  # training resolution; 0 = the images' own size (in memory) or the model's (streamed)
    # Augmentation (applied in batches on the training device for small images).
    crop_padding: int = 4
    hflip: bool = True
    auto_augment: str = "none"  # none | trivial | randaugment
    randaugment_n: int = 2
    randaugment_m: int = 9
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    label_smoothing: float = 0.0
    # Progressive resizing (as FFCV's ResNet recipes): smaller training images first. The side grows linearly from
    # progressive_min_size to the full size over the first progressive_until of the run (of the budget with
    # budget_minutes, of the steps without), in whole patches for a ViT; 0 = off. Evaluation is at the full size.
    progressive_min_size: int = 0
    progressive_until: float = 0.5

    def __post_init__(self) -> None:
        _check(self, "data", positive=("batch_size",), at_least_0=("num_workers", "img_size", "crop_padding",
               "randaugment_n", "randaugment_m", "mixup_alpha", "cutmix_alpha", "progressive_min_size"),
               fractions=("val_fraction", "label_smoothing"),
               closed_fractions=("random_erasing", "mix_prob", "progressive_until"))
        _check_choice("data.auto_augment", self.auto_augment, ("none", "trivial", "randaugment"))


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # peak learning rate, for the global batch
    weight_decay: float = 0.05  # not applied to norms, biases, position embeddings and tokens
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd
    warmup_steps: int = 200  # linear warmup from 0, then cosine to min_lr
    min_lr: float = 0.0
    clip_grad: float = 0.0  # max global gradient norm; 0 = off
    accum_steps: int = 1  # gradient accumulation
    layer_decay: float = 1.0  # layer-wise lr decay (fine-tuning); 1.0 = off

    def __post_init__(self) -> None:
        _check(self, "optim", positive=("lr", "accum_steps", "layer_decay"),
               at_least_0=("weight_decay", "warmup_steps", "min_lr", "clip_grad"), fractions=("momentum",))
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ConfigError(f"optim.betas[{i}] must be in [0, 1), got {beta}")
        if self.layer_decay > 1:
            raise ConfigError(f"optim.layer_decay must be in (0, 1] (1 = off), got {self.layer_decay}")
        _check_choice("optim.optimizer", self.optimizer, ("adamw", "sgd"))


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained teacher (Hinton et al. 2015; DeiT, Touvron et al. 2021). With a
    student of pool "distill" (class and distillation tokens), the class token's head learns the labels and the
    distillation token's head the teacher; any other student learns both through its one head."""

    teacher: str = ""  # a trained model's checkpoint (any format vitlab.load reads: a ResNet, a ViT); "" = off
    kind: str = "hard"  # hard: the teacher's top class as the target (DeiT's hard distillation) | soft: its softmax
    alpha: float = 0.5  # weight of the distillation loss; 1 - alpha goes to the labels' loss
    tau: float = 1.0  # soft: the temperature of both softmaxes (the loss is scaled by tau^2)

    def __post_init__(self) -> None:
        _check(self, "distill", positive=("tau",), closed_fractions=("alpha",))
        _check_choice("distill.kind", self.kind, ("hard", "soft"))


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    epochs: int = 10
    max_steps: int = 0  # stop after this many optimizer steps (0 = epochs decide)
    # Wall-clock budget for the training steps (evaluation and checkpoint writes excluded); 0 = none. With a
    # budget the cosine schedule spans the budget and the run stops when it is spent (or at the step limit).
    budget_minutes: float = 0.0
    seed: int = 0
    # none (fp32) | bf16 (autocast) | auto (bf16 where the device runs it natively, else fp32; vitlab.precision)
    amp: str = "none"
    compile: bool = False
    ema_decay: float = 0.0  # 0 = no EMA; e.g. 0.999
    eval_every_epochs: int = 1
    ckpt_every_steps: int = 500
    keep_last: int = 2
    log_every_steps: int = 20
    out_dir: str = "runs"
    run_name: str = ""  # "" = <recipe or dataset>-<timestamp>
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _check(self, "", positive=("epochs", "eval_every_epochs", "ckpt_every_steps", "keep_last", "log_every_steps"),
               at_least_0=("max_steps", "budget_minutes", "seed"), fractions=("ema_decay",))
        _check_choice("amp", self.amp, AMP_CHOICES)


def _check(cfg: Any, section: str, positive: tuple[str, ...] = (), at_least_0: tuple[str, ...] = (),
           fractions: tuple[str, ...] = (), closed_fractions: tuple[str, ...] = ()) -> None:
    """Range checks of numeric fields, each failure a ConfigError naming the key (``section.key``)."""
    rules = [(positive, lambda v: v > 0, "> 0"), (at_least_0, lambda v: v >= 0, ">= 0"),
             (fractions, lambda v: 0 <= v < 1, "in [0, 1)"), (closed_fractions, lambda v: 0 <= v <= 1, "in [0, 1]")]
    for names, ok, what in rules:
        for name in names:
            value = getattr(cfg, name)
            if not ok(value):
                raise ConfigError(f"{section + '.' if section else ''}{name} must be {what}, got {value!r}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(repr(c) for c in choices)}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and convert where lossless) a value against a field's type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table/dict, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of {', '.join(_fields(tp))}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    kwargs = {}
    if cls is DataConfig and "image_size" in d and "img_size" not in d:  # run folders before vitlab 0.2
        d = {("img_size" if k == "image_size" else k): v for k, v in d.items()}
    for key, value in d.items():
        if key not in fields:
            raise ConfigError(f"unknown key {prefix + key!r}; valid keys here: {', '.join(prefix + f for f in fields)}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["optim"]["betas"] = list(cfg.optim.betas)
    return d


def _parse_value(text: str) -> Any:
    """A --set value: TOML syntax (numbers, true/false, "strings", [lists], {tables}); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(d: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` to the nested dict ``d`` (validated later by ``from_dict``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. optim.lr=3e-4")
    key, text = assignment.split("=", 1)
    *path, last = key.strip().split(".")
    node = d
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is a value, not a section")
    node[last] = _parse_value(text.strip())


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}; built-in recipes: {', '.join(list_recipes())} "
                          "(or pass --config FILE)")
    return path


def load_config(recipe: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Resolve a TrainConfig from a recipe name or a TOML file, then ``key=value`` overrides."""
    d: dict[str, Any] = {}
    if recipe and config_file:
        raise ConfigError("give a recipe or --config FILE, not both (copy the recipe's file and edit it)")
    source = recipe_path(recipe) if recipe else Path(config_file) if config_file else None
    if source is not None:
        try:
            d = tomllib.loads(source.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {source}: {e}") from e
    for assignment in overrides:
        apply_override(d, assignment)
    return from_dict(TrainConfig, d)
