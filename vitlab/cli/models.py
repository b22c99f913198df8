"""``vitlab models``, ``vitlab info`` and ``vitlab complexity``: what a model is and what it costs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import vitlab
from vitlab.cli.common import (
    EXIT_OK,
    load_model_spec,
    millions,
    print_table,
    require_vit,
    with_warnings,
)
from vitlab.cli.domains import FIGURE_FILE, IMAGE_SIZES, MODEL, TEXT, integer
from vitlab.errors import UsageError
from vitlab.factory import parse_spec
from vitlab.flops import COST_PARTS, cost_at, count_flops, count_params
from vitlab.registry import DEFAULT_PRETRAINED_TAGS, get_config, resolve_name

ALIAS_HELP = "aliases: Ti|S|B|L|H/<patch>[@<img_size>], e.g. B/16 = vit_base_patch16_224, B/16@384, Ti/4@32"


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models with their size and cost",
                       description="List the registered models: parameters, GFLOPs per image, image size, "
                                   "patch size, tokens and the default pretrained weights. " + ALIAS_HELP + ".")
    p.add_argument("pattern", nargs="?", type=TEXT, metavar="PATTERN",
                   help="show only names matching this glob ('vit_base*') or substring ('patch16'), or an alias")
    p.set_defaults(func=models)


def models(pattern: str | None = None) -> int:
    """Print the registered models matching ``pattern`` (glob or substring; an alias names one model)."""
    names = vitlab.list_models(pattern)
    if not names and pattern:
        try:
            names = [resolve_name(pattern)]  # "B/16" is not a substring of any name, but is an alias
        except ValueError:
            names = []
    if not names:
        raise UsageError(f"no registered model matches {pattern!r}; `vitlab models` lists them all")
    header = ("name", "params", "GFLOPs", "image", "patch", "tokens", "default weights")
    rows = []
    for name in names:
        cfg = get_config(name)
        rows.append((name, millions(count_params(cfg)), f"{count_flops(cfg) / 1e9:.2f}",
                     "x".join(map(str, cfg.img_size)), str(cfg.patch_size), str(cfg.num_tokens),
                     DEFAULT_PRETRAINED_TAGS.get(name, "-")))
    print_table(header, rows, left={0, 6})  # text columns; numbers are right-aligned
    print(f"\n{len(names)} model(s). GFLOPs: one image forward, 1 multiply-add = 2 FLOPs (timm lists MACs, half "
          "these). tokens: patches + class token.")
    print(ALIAS_HELP + ".")
    print("Weights: `vitlab predict --model NAME --pretrained` (or NAME.<timm tag>) fetches them from the "
          "Hugging Face Hub.")
    if not pattern:
        from vitlab.cnn import RESNETS

        print(f"CNN baselines for ViT-vs-CNN comparisons (vitlab.cnn, no pretrained weights): {', '.join(RESNETS)}.")
    return EXIT_OK


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint: format, config, params, preprocessing, classes",
                       description="Load a checkpoint of any supported format (missing or unexpected keys are "
                                   "warnings here) and print what it holds.")
    p.add_argument("checkpoint", type=MODEL, metavar="CHECKPOINT",
                   help="a checkpoint file or folder, a pretrained name (vit_base_patch16_224.augreg2_in21k_ft_in1k) "
                        "or an hf-hub:org/repo id")
    p.set_defaults(func=info)


def info(checkpoint: str) -> int:
    """Print what a checkpoint holds: its format, full config, size, preprocessing and class names."""
    model = with_warnings(vitlab.load, checkpoint, strict=False)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"checkpoint     {checkpoint}")
    print(f"format         {getattr(model, 'source_format', 'unknown')}")
    print(f"params         {millions(n_params)} ({n_params:,})")
    if isinstance(model, vitlab.VisionTransformer):
        print(f"GFLOPs         {count_flops(cfg) / 1e9:.3f} per image at {cfg.img_size[0]}x{cfg.img_size[1]}")
        print(f"tokens         {cfg.num_tokens} ({cfg.grid_size[0]}x{cfg.grid_size[1]} patches + "
              f"{cfg.num_prefix_tokens} prefix)")
    else:
        print(f"architecture   {type(model).__name__} (vitlab.cnn), {cfg.depth} residual blocks, {cfg.stem} stem")
    print("config")
    for key, value in cfg.to_dict().items():
        print(f"  {key:<20} {value}")
    print("preprocessing")
    for key, value in model.preprocessing.to_dict().items():
        print(f"  {key:<20} {value}")
    names = model.class_names
    if names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        print(f"class names    {len(names)} ({shown})")
    else:
        fallback = "ImageNet-1k names are assumed by `predict`" if cfg.num_classes == 1000 else "none stored"
        print(f"class names    0 ({fallback})")
    return EXIT_OK


def add_complexity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("complexity", help="parameters, FLOPs by part and attention cost against resolution",
                       description="Parameters and FLOPs broken down by part at each image size, the attention "
                                   "matrix's memory, and global self-attention against Swin's windowed W-MSA.")
    p.add_argument("--model", "-m", required=True, type=MODEL, metavar="NAME_OR_CHECKPOINT",
                   help="a registered name or alias, or a checkpoint file")
    p.add_argument("--img-size", dest="img_sizes", type=IMAGE_SIZES, default=[], metavar="S[,S...]",
                   help="image sizes, comma-separated, each 384 or 384x512 (default: the model's own)")
    p.add_argument("--window", type=integer(1, 1024), default=7, help="W-MSA window size M in patches (default: 7)")
    p.add_argument("--plot", type=FIGURE_FILE, default=None, metavar="FILE.png",
                   help="also plot attention cost against resolution")
    p.set_defaults(func=complexity)


def complexity(model: str, img_sizes: Sequence[int | tuple[int, int]] = (), window: int = 7,
               plot: str | None = None) -> int:
    """Print parameters and FLOPs by part at each image size, the attention matrix's memory, and global MSA
    against windowed W-MSA (Swin); optionally plot the attention cost against the resolution."""
    spec = parse_spec(model)
    if spec.weights is not None or spec.kind == "resnet":
        net = load_model_spec(model)[0]
        require_vit(net, model, "the complexity breakdown is for ViTs")
        net_cfg = net.config
    else:
        net_cfg = get_config(spec.name)
    costs = [cost_at(net_cfg, size, window) for size in (list(img_sizes) or [net_cfg.img_size])]
    print(f"{model}: {millions(count_params(net_cfg))} parameters, D={net_cfg.embed_dim}, {net_cfg.depth} blocks, "
          f"{net_cfg.num_heads} heads, patch {net_cfg.patch_size}\n")
    labels = ["x".join(map(str, c.img_size)) for c in costs]
    print_table(("image", "tokens", "GFLOPs", *(f"{p} %" for p in COST_PARTS), "attn matrix MiB"),
                [(lab, str(c.tokens), f"{c.flops / 1e9:.2f}", *(f"{c.share[p]:.1f}" for p in COST_PARTS),
                  f"{c.attention_matrix_bytes / 2**20:.2f}") for lab, c in zip(labels, costs, strict=True)], left={0})
    print("\nGFLOPs: one image forward, 1 multiply-add = 2 FLOPs. attn matrix: one block's (B=1, heads, N, N) "
          "probabilities in fp32, what the explicit attention path holds (the fused kernel never stores it).\n")
    print(f"Self-attention over the patches, all blocks, GMACs (Swin's count; W-MSA window M={window}):")
    print_table(("image", "global MSA", "W-MSA", "MSA / W-MSA"),
                [(lab, f"{c.msa_macs / 1e9:.3f}", f"{c.wmsa_macs / 1e9:.3f}", f"{c.msa_macs / c.wmsa_macs:.2f}x")
                 for lab, c in zip(labels, costs, strict=True)], left={0})
    print("MSA: 4 hw C^2 + 2 (hw)^2 C; W-MSA: 4 hw C^2 + 2 M^2 hw C (Liu et al. 2021, Eq. 1-2).")
    if plot:
        from vitlab.plots import plot_attention_cost

        pixels = [c.img_size[0] * c.img_size[1] for c in costs]
        path = plot_attention_cost(pixels, [c.msa_macs for c in costs], [c.wmsa_macs for c in costs], window, plot)
        print(f"plot: {path}")
    return EXIT_OK
