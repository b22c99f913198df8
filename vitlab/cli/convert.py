"""``vitlab convert`` and ``vitlab export``: write a model in another format."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import vitlab
from vitlab.cli.common import (
    EXIT_OK,
    MODEL_HELP,
    add_pretrained,
    load_model_spec,
    millions,
    require_vit,
    with_warnings,
)
from vitlab.cli.domains import (
    CONFIG_SETTING,
    IMAGE_SIZE,
    IMAGE_SIZES,
    MODEL,
    OPSET,
    OUTPUT_FILE,
    POSITIVE_REAL,
    integer,
)
from vitlab.errors import UsageError

SUFFIX_FORMATS = {".safetensors": "vitlab", ".npz": "npz", ".pth": "timm", ".pt": "timm", ".bin": "timm"}


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to vitlab, timm or npz format",
                       description="Load any supported checkpoint and write it in vitlab's format (.safetensors "
                                   "with config, preprocessing and class names), as a timm state dict or as "
                                   "Google's .npz.")
    p.add_argument("src", type=MODEL, metavar="SRC",
                   help="the checkpoint to read (file, folder, pretrained name or hf-hub id)")
    p.add_argument("dst", type=OUTPUT_FILE, metavar="DST", help="the file to write")
    p.add_argument("--to", choices=("vitlab", "timm", "npz"),
                   help="output format; default from DST's suffix: .safetensors -> vitlab, .npz -> npz, "
                        ".pth/.pt/.bin -> timm")
    p.add_argument("--img-size", type=IMAGE_SIZE, metavar="N",
                   help="resample the position embedding for this input size (N or HxW)")
    p.add_argument("--num-classes", type=integer(0, 10**6), metavar="N",
                   help="replace the head by a fresh zero-initialised one with N classes (0: no head)")
    p.add_argument("--set", dest="settings", type=CONFIG_SETTING, action="append", default=[], metavar="FIELD=VALUE",
                   help="a config field the checkpoint does not state, as vitlab.load(..., FIELD=VALUE) takes it "
                        "(repeatable): e.g. mlp_act=quick_gelu for OpenAI CLIP weights in a bare state dict, "
                        "num_heads=16, pos_resample=bicubic")
    p.set_defaults(func=convert)


def convert(src: str, dst: str, to: str | None = None, img_size: int | tuple[int, int] | None = None,
            num_classes: int | None = None, settings: Sequence[tuple[str, object]] = ()) -> int:
    """Load any supported checkpoint and write it as vitlab, timm or npz (by ``to``, else by dst's suffix). For
    timm, print the class and the non-default arguments that build the model the state dict is for. A setting
    (``--set``) of img_size or num_classes is --img-size or --num-classes; one of a field the file states is an
    error."""
    import json
    import warnings

    from vitlab.checkpoint import suffix_problem
    from vitlab.config import check_field
    from vitlab.convert import SETTABLE_FIELDS, OverriddenSetting
    from vitlab.errors import CheckpointError, check_writable

    dst_path = Path(dst)
    if num_classes is not None and num_classes < 0:
        raise UsageError(f"--num-classes must be >= 0 (0: no head), got {num_classes}")
    check_writable(dst_path, "DST")  # before the work of loading
    settings, sizes = dict(settings), {"img_size": img_size, "num_classes": num_classes}
    for name, flag in (("img_size", "--img-size"), ("num_classes", "--num-classes")):
        if name in settings:  # what the flag does: resample the position table, or a fresh head
            value = check_field(name, settings.pop(name))  # a ConfigError for a value no config takes
            if sizes[name] is not None and check_field(name, sizes[name]) != value:
                raise UsageError(f"{flag} {sizes[name]} and --set {name}={json.dumps(value)} disagree; give one")
            sizes[name] = value
    if to is None:
        to = SUFFIX_FORMATS.get(dst_path.suffix)
        if to is None:
            raise UsageError(f"cannot tell the output format from {dst_path.name!r}: pass --to vitlab|timm|npz "
                             f"or use one of the suffixes {', '.join(SUFFIX_FORMATS)}")
    writers = {"vitlab": vitlab.save, "timm": vitlab.export_timm, "npz": vitlab.export_npz}
    if to not in writers:  # argparse restricts the choices; this is for callers of the function
        raise UsageError(f"--to must be one of {', '.join(writers)}, got {to!r}")
    if problem := suffix_problem(to, dst_path):  # a file vitlab.load would read as another format
        raise UsageError(f"--to {to}: {problem}")

    def load() -> vitlab.VisionTransformer:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverriddenSetting)  # --set is for what the file does not state
            return vitlab.load(src, **sizes, **settings)

    try:
        model = with_warnings(load)
    except OverriddenSetting as w:
        def text(v: object) -> str:
            return v if isinstance(v, str) else json.dumps(v)

        raise CheckpointError(f"{w.source} states {w.field}={text(w.stated)}; --set {w.field}={text(w.given)} "
                              "contradicts it (drop --set: it is for fields a bare state dict cannot state, and "
                              f"for {', '.join(SETTABLE_FIELDS)})") from None
    writers[to](model, dst_path)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {dst_path} ({to}; from {getattr(model, 'source_format', '?')}; {millions(n_params)} params, "
          f"image {model.config.img_size[0]}x{model.config.img_size[1]}, {model.config.num_classes} classes)")
    if to == "timm":
        print(f"timm model: {_timm_recipe(model.config)}")
    return EXIT_OK


def _timm_recipe(cfg: vitlab.ViTConfig) -> str:
    """How to build the timm model an exported state dict is for, e.g. ``timm.models.deit.VisionTransformerDistilled
    (img_size=(224, 224), ..., act_layer='quick_gelu')``: what a bare state dict cannot tell its reader."""
    from vitlab.convert.timm import timm_model_args, timm_model_class

    args = timm_model_args(cfg)
    norm = args.pop("norm_layer", None)
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    if norm is not None:  # a functools.partial: shown as the code that makes it
        text += f", norm_layer=partial(nn.LayerNorm, eps={cfg.norm_eps!r})"
    return f"{timm_model_class(cfg)}({text})"


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX (dynamic batch and H x W), checked against PyTorch",
                       description="Export a model to ONNX with its preprocessing and class names in the file's "
                                   "metadata. Before the file is written, ONNX Runtime runs it beside PyTorch on "
                                   "random images (at two sizes with --dynamic); a max |logit difference| above "
                                   "--atol is an error and leaves no file. Needs: pip install \"vitlab[export]\"")
    p.add_argument("--model", "-m", required=True, type=MODEL, metavar="NAME_OR_CHECKPOINT", help=MODEL_HELP)
    add_pretrained(p)
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch, height and width (any multiple of the patch size; the position table is "
                        "resampled inside the graph); default: the model's own size and --batch only")
    p.add_argument("--out", "-o", required=True, type=OUTPUT_FILE, metavar="FILE.onnx", help="the file to write")
    p.add_argument("--check-size", dest="check_sizes", type=IMAGE_SIZES, default=[], metavar="S[,S...]",
                   help="sizes of the parity check, each 224 or 256x192 (default: the model's own and, with "
                        "--dynamic, a non-square one)")
    p.add_argument("--batch", type=integer(1, 4096), default=2, metavar="N",
                   help="images per parity check; the fixed batch size without --dynamic (default: 2)")
    p.add_argument("--opset", type=OPSET, default=None, metavar="N",
                   help="ONNX opset, >= 18 (default: torch.onnx's own, at least 18)")
    p.add_argument("--atol", type=POSITIVE_REAL, default=1e-4,
                   help="largest |logit difference| accepted (default: 1e-4)")
    p.set_defaults(func=export)


def export(model: str, out: str, format: str = "onnx", dynamic: bool = False,
           check_sizes: Sequence[int | tuple[int, int]] = (), batch: int = 2, opset: int | None = None,
           atol: float = 1e-4, pretrained: bool = False) -> int:
    """Export to ONNX and print the parity check ONNX Runtime vs PyTorch that ran before the file was kept."""
    from vitlab.export import export_onnx

    if format != "onnx":
        raise UsageError(f"--format {format!r}: vitlab exports onnx")
    net, trained = load_model_spec(model, pretrained)
    require_vit(net, model, "vitlab export writes ViTs")
    if not trained:
        print(f"note: {model} is a registered name without --pretrained: exporting random weights", file=sys.stderr)
    sizes = [(s, s) if isinstance(s, int) else tuple(s) for s in check_sizes] or None
    print(export_onnx(net, out, dynamic=dynamic, opset=opset, check_sizes=sizes, batch=batch, atol=atol).summary())
    return EXIT_OK
