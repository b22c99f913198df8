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
    config_setting,
    image_size,
    image_sizes,
    load_model_spec,
    millions,
    positive,
    require_vit,
    with_warnings,
)
from vitlab.errors import UsageError

SUFFIX_FORMATS = {".safetensors": "vitlab", ".npz": "npz", ".pth": "timm", ".pt": "timm", ".bin": "timm"}


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to vitlab, timm or npz format",
                       description="Load any supported checkpoint and write it in vitlab's format (.safetensors "
                                   "with config, preprocessing and class names), as a timm state dict or as "
                                   "Google's .npz.")
    p.add_argument("src", metavar="SRC", help="the checkpoint to read (file, folder, pretrained name or hf-hub id)")
    p.add_argument("dst", metavar="DST", help="the file to write")
    p.add_argument("--to", choices=("vitlab", "timm", "npz"),
                   help="output format; default from DST's suffix: .safetensors -> vitlab, .npz -> npz, "
                        ".pth/.pt/.bin -> timm")
    p.add_argument("--img-size", type=image_size, metavar="N",
                   help="resample the position embedding for this input size (N or HxW)")
    p.add_argument("--num-classes", type=int, metavar="N",
                   help="replace the head by a fresh zero-initialised one with N classes (0: no head)")
    p.add_argument("--set", dest="settings", type=config_setting, action="append", default=[], metavar="FIELD=VALUE",
                   help="a config field the checkpoint does not state, as vitlab.load(..., FIELD=VALUE) takes it "
                        "(repeatable): e.g. mlp_act=quick_gelu for OpenAI CLIP weights in a bare state dict, "
                        "num_heads=16, pos_resample=bicubic")
    p.set_defaults(func=convert)


def convert(src: str, dst: str, to: str | None = None, img_size: int | tuple[int, int] | None = None,
            num_classes: int | None = None, settings: Sequence[tuple[str, object]] = ()) -> int:
    """Load any supported checkpoint and write it as vitlab, timm or npz (by ``to``, else by dst's suffix). For
    timm, print the class and the non-default arguments that build the model the state dict is for."""
    dst_path = Path(dst)
    if num_classes is not None and num_classes < 0:
        raise UsageError(f"--num-classes must be >= 0 (0: no head), got {num_classes}")
    if to is None:
        to = SUFFIX_FORMATS.get(dst_path.suffix)
        if to is None:
            raise UsageError(f"cannot tell the output format from {dst_path.name!r}: pass --to vitlab|timm|npz "
                             f"or use one of the suffixes {', '.join(SUFFIX_FORMATS)}")
    writers = {"vitlab": vitlab.save, "timm": vitlab.export_timm, "npz": vitlab.export_npz}
    if to not in writers:  # argparse restricts the choices; this is for callers of the function
        raise UsageError(f"--to must be one of {', '.join(writers)}, got {to!r}")
    model = with_warnings(vitlab.load, src, img_size=img_size, num_classes=num_classes, **dict(settings))
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
    p.add_argument("--model", "-m", required=True, metavar="NAME_OR_CHECKPOINT", help=MODEL_HELP)
    add_pretrained(p)
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch, height and width (any multiple of the patch size; the position table is "
                        "resampled inside the graph); default: the model's own size and --batch only")
    p.add_argument("--out", "-o", required=True, metavar="FILE.onnx", help="the file to write")
    p.add_argument("--check-size", dest="check_sizes", type=image_sizes, default=[], metavar="S[,S...]",
                   help="sizes of the parity check, each 224 or 256x192 (default: the model's own and, with "
                        "--dynamic, a non-square one)")
    p.add_argument("--batch", type=positive, default=2, metavar="N",
                   help="images per parity check; the fixed batch size without --dynamic (default: 2)")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset, >= 18 (default: torch.onnx's own, at least 18)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest |logit difference| accepted (default: 1e-4)")
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
