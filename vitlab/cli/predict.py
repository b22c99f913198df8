"""``vitlab predict`` and ``vitlab attention``: run a model on image files."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import vitlab
from vitlab.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    MODEL_HELP,
    add_device,
    add_pretrained,
    error,
    load_model_spec,
    parse_device,
    require_vit,
    warn,
)
from vitlab.cli.domains import FIGURE_PATH, FRACTION, HEAD, IMAGE_FILE, LAYER, MODEL, NON_NEGATIVE, POSITIVE, integer
from vitlab.errors import UsageError
from vitlab.inference import class_names_for, prepare_for_inference


def _read_images(paths: Sequence[str]) -> Any:
    """Yield (path, PIL image) for each file that decodes; print one error line for each that does not."""
    for path in paths:
        try:
            yield path, vitlab.load_image(path)
        except (ValueError, OSError) as e:
            error(str(e))
            yield path, None


def _finish(failed: int, total: int) -> int:
    if failed:
        error(f"{failed} of {total} image(s) could not be read")
        return EXIT_FAILED
    return EXIT_OK


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images and print the top-k classes",
                       description="Classify images with a registered model or a checkpoint, using the "
                                   "preprocessing that belongs to its weights.")
    p.add_argument("images", nargs="+", type=IMAGE_FILE, metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--model", "-m", required=True, type=MODEL, metavar="NAME_OR_CHECKPOINT", help=MODEL_HELP)
    add_pretrained(p)
    p.add_argument("--topk", "-k", type=POSITIVE, default=5, metavar="K",
                   help="how many classes to print per image (default: 5)")
    add_device(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="weights and activations: bfloat16 is the fast path (AMX CPUs, GPUs) at bf16 precision; "
                        "float16 for GPUs (default: float32)")
    p.set_defaults(func=predict)


def predict(images: Sequence[str], model: str, topk: int = 5, device: str = "cpu", pretrained: bool = False,
            dtype: str = "float32") -> int:
    """Print the top-k classes and probabilities of each image. A file that cannot be decoded gets an
    error line and the rest are still classified; the exit status is then 1. ``dtype="bfloat16"``: the fast
    inference path (vitlab.inference), several times faster on CPUs with AMX and on GPUs, at bf16 precision."""
    dev = parse_device(device)
    net, trained = load_model_spec(model, pretrained)
    if not net.config.num_classes:
        raise UsageError(f"--model {model!r} has no classification head (num_classes=0): nothing to predict")
    if not trained:
        warn(f"{model!r} has random weights (its head is zero-initialised): the predictions below are "
             "meaningless. Pass --pretrained, a name with a pretrained tag, or a checkpoint file")
    names = class_names_for(net)
    k = min(topk, len(names))
    transform = net.preprocessing.transform()
    net = net.eval().to(dev)
    if dtype != "float32":
        net = prepare_for_inference(net, dtype)
    failed = 0
    for path, img in _read_images(images):
        if img is None:
            failed += 1
            continue
        x = transform(img).unsqueeze(0).to(dev)  # (1, C, H, W)
        with torch.inference_mode():
            probs = net(x).float().softmax(dim=-1)[0]  # (K,)
        top = probs.topk(k)
        print(path)
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
            print(f"  {rank:>2}. {p:.4f}  {names[i]}")
    return _finish(failed, len(images))


def add_attention(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="attention maps, rollout or gradient rollout of images, as figures",
                       description="Overlay where the model looks on each image: one block's attention (raw), "
                                   "attention rollout over the blocks up to --layer (Abnar & Zuidema 2020), or "
                                   "gradient rollout for a class; with the per-head maps of --layer and the "
                                   "predicted class. Fused attention stays on for every block not needed.")
    p.add_argument("images", nargs="+", type=IMAGE_FILE, metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--model", "-m", required=True, type=MODEL, metavar="NAME_OR_CHECKPOINT", help=MODEL_HELP)
    add_pretrained(p)
    p.add_argument("--method", choices=("raw", "rollout", "grad-rollout", "pool"), default="raw",
                   help="raw: one block's attention; rollout: attention rollout; grad-rollout: rollout weighted by "
                        "the gradient of a class's logit; pool: an attention-pooled model's (SigLIP's) pool "
                        "attention. raw and rollout read the tokens the head reads (default: raw)")
    p.add_argument("--layer", type=LAYER, default=-1,
                   help="the block (raw), or the last block rolled out; negative counts from the end (default: -1)")
    p.add_argument("--head", type=HEAD, default="mean", metavar="H|mean|max|min",
                   help="one head (raw and pool only) or how heads are fused (default: mean)")
    p.add_argument("--first-layer", type=integer(0, 999), default=0, metavar="L",
                   help="rollout: the first block multiplied (default: 0); a later start leaves out an early block "
                        "that piles its attention onto one patch (see the README's DINOv2 figures)")
    p.add_argument("--discard-ratio", type=FRACTION, default=0.0,
                   help="rollout: zero this fraction of the weakest attention weights per block first (default: 0)")
    p.add_argument("--target", type=NON_NEGATIVE, default=None, metavar="CLASS",
                   help="grad-rollout: the class index to explain (default: the predicted class)")
    p.add_argument("--whole", action="store_true",
                   help="use the whole image at its aspect ratio (shorter side = the model's input size) instead "
                        "of the weights' resize + centre crop")
    p.add_argument("--out", "-o", type=FIGURE_PATH, default=None, metavar="PATH",
                   help="the figure (one image; default attention-<image>.png), or a folder (a path without a suffix, "
                        "or several images; default attention/)")
    add_device(p)
    p.set_defaults(func=attention)


def attention(images: Sequence[str], model: str, method: str = "raw", layer: int = -1, head: int | str = "mean",
              discard_ratio: float = 0.0, target: int | None = None, out: str | None = None, whole: bool = False,
              device: str = "cpu", pretrained: bool = False, first_layer: int = 0) -> int:
    """Write, per image, a figure of the image, its saliency map by ``method`` and the per-head maps of ``layer``,
    with the predicted class; print the prediction and the figure's path."""
    from vitlab.analysis.attention import attention_figure

    dev = parse_device(device)
    net, trained = load_model_spec(model, pretrained)
    require_vit(net, model, "attention maps are for ViTs")
    if not trained:
        warn(f"{model!r} has random weights: its attention shows no learned structure. Pass --pretrained, a name "
             "with a pretrained tag, or a checkpoint file")
    names = class_names_for(net) if net.config.num_classes else []
    if target is not None and not 0 <= target < len(names):
        raise UsageError(f"--target {target}: the model has {len(names)} classes (0..{len(names) - 1})")
    pre = net.preprocessing
    transform = pre.transform_whole(net.config.patch_size) if whole else pre.transform()
    net = net.eval().to(dev)
    # several images, or an --out without a suffix: a folder of figures, one per image
    folder = Path(out or "attention") if len(images) > 1 or (out and not Path(out).suffix) else None
    failed = 0
    for image, img in _read_images(images):
        if img is None:
            failed += 1
            continue
        path = folder / f"{Path(image).stem}.png" if folder else Path(out or f"attention-{Path(image).stem}.png")
        fig = attention_figure(net, transform(img).unsqueeze(0).to(dev), path, method=method, layer=layer,
                               head=int(head) if str(head).isdigit() else head, discard_ratio=discard_ratio,
                               target=target, title=Path(image).name, class_names=names, first_layer=first_layer)
        print(f"{image}: {'predicted: ' + fig.prediction if fig.prediction else 'no head'} -> {fig.path}")
    return _finish(failed, len(images))
