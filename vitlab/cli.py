"""The ``vitlab`` command: list models, inspect and convert checkpoints, classify images.

Every subcommand is a plain function of its arguments (``models``, ``info``, ``convert``, ``predict``);
``main`` only parses the command line and turns a user error (a bad checkpoint, an unknown model name,
a missing file) into one line on stderr, ``vitlab: error: <message>``, and exit status 2.

    vitlab models 'vit_base*'
    vitlab info model.safetensors
    vitlab convert timm_model.pth model.safetensors
    vitlab predict cat.jpg dog.png --model vit_base_patch16_224 --pretrained
    vitlab export --model model.safetensors --format onnx --dynamic --out model.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import vitlab
from vitlab.export import ExportError
from vitlab.flops import count_flops, count_params
from vitlab.hub import CHECKPOINT_SUFFIXES, HubError
from vitlab.registry import DEFAULT_PRETRAINED_TAGS, get_config, resolve_name, split_pretrained_tag
from vitlab.train.config import TrainingError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # 1: some images of `predict` failed; 2: user error (as argparse)
# CheckpointError and ConfigError are ValueErrors, FileNotFoundError an OSError.
USER_ERRORS = (ValueError, HubError, OSError, TrainingError, ExportError)
ALIAS_HELP = "aliases: Ti|S|B|L|H/<patch>[@<img_size>], e.g. B/16 = vit_base_patch16_224, B/16@384, Ti/4@32"
SUFFIX_FORMATS = {".safetensors": "vitlab", ".npz": "npz", ".pth": "timm", ".pt": "timm", ".bin": "timm"}


def _err(message: str) -> None:
    print(f"vitlab: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"vitlab: warning: {message}", file=sys.stderr)


def _cli_warnings(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn, printing its Python warnings (a fresh head, missing keys) as one-line CLI warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    for w in caught:
        _warn(str(w.message))
    return out


def _size(text: str) -> int | tuple[int, int]:
    """argparse type for an image size: ``384`` or ``384x512`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size like 384 or 384x512, got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> None:
    """Print aligned columns: the ``left`` ones left-aligned (text), the others right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())


# ---------------------------------------------------------------------------------------------- models


def models(pattern: str | None = None) -> int:
    """Print the registered models matching ``pattern`` (glob or substring; an alias names one model)."""
    names = vitlab.list_models(pattern)
    if not names and pattern:
        try:
            names = [resolve_name(pattern)]  # "B/16" is not a substring of any name, but is an alias
        except ValueError:
            names = []
    if not names:
        raise ValueError(f"no registered model matches {pattern!r}; `vitlab models` lists them all")
    header = ("name", "params", "GFLOPs", "image", "patch", "tokens", "default weights")
    rows = []
    for name in names:
        cfg = get_config(name)
        rows.append((name, _millions(count_params(cfg)), f"{count_flops(cfg) / 1e9:.2f}",
                     "x".join(map(str, cfg.img_size)), str(cfg.patch_size), str(cfg.num_tokens),
                     DEFAULT_PRETRAINED_TAGS.get(name, "-")))
    _table(header, rows, left={0, 6})  # text columns; numbers are right-aligned
    print(f"\n{len(names)} model(s). GFLOPs: one image forward, 1 multiply-add = 2 FLOPs (timm lists MACs, half "
          "these). tokens: patches + class token.")
    print(ALIAS_HELP + ".")
    print("Weights: `vitlab predict --model NAME --pretrained` (or NAME.<timm tag>) fetches them from the "
          "Hugging Face Hub.")
    if not pattern:
        from vitlab.cnn import RESNETS

        print(f"CNN baselines for ViT-vs-CNN comparisons (vitlab.cnn, no pretrained weights): {', '.join(RESNETS)}.")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ complexity


def complexity(model: str, img_sizes: Sequence[int | tuple[int, int]] = (), window: int = 7,
               plot: str | None = None) -> int:
    """Print parameters and FLOPs by part at each image size, the attention matrix's memory, and global MSA
    against windowed W-MSA (Swin); optionally plot the attention cost against the resolution."""
    from vitlab.flops import attention_macs, attention_matrix_bytes, flops_breakdown

    if _is_checkpoint_path(model):
        net = load_model_spec(model)[0]
        _require_vit(net, model, "the complexity breakdown is for ViTs")
        net_cfg = net.config
    else:
        net_cfg = get_config(model)
    sizes = list(img_sizes) or [net_cfg.img_size]
    print(f"{model}: {_millions(count_params(net_cfg))} parameters, D={net_cfg.embed_dim}, {net_cfg.depth} blocks, "
          f"{net_cfg.num_heads} heads, patch {net_cfg.patch_size}\n")
    parts = ("patch_embed", "qkv", "attention_matrix", "proj", "mlp", "head")
    header = ("image", "tokens", "GFLOPs", *(f"{p} %" for p in parts), "attn matrix MiB")
    rows, msa, wmsa, labels = [], [], [], []
    for size in sizes:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        terms = flops_breakdown(net_cfg, hw)
        total = sum(terms.values())
        n = (hw[0] // net_cfg.patch_size) * (hw[1] // net_cfg.patch_size) + net_cfg.num_prefix_tokens
        share = [f"{100 * (terms[p] + (terms['pre_logits'] if p == 'head' else 0)) / total:.1f}" for p in parts]
        mib = attention_matrix_bytes(net_cfg, hw) / 2**20
        rows.append(("x".join(map(str, hw)), str(n), f"{total / 1e9:.2f}", *share, f"{mib:.2f}"))
        msa.append(attention_macs(net_cfg, hw) * net_cfg.depth)
        wmsa.append(attention_macs(net_cfg, hw, window) * net_cfg.depth)
        labels.append("x".join(map(str, hw)))
    _table(header, rows, left={0})
    print("\nGFLOPs: one image forward, 1 multiply-add = 2 FLOPs. attn matrix: one block's (B=1, heads, N, N) "
          "probabilities in fp32, what the explicit attention path holds (the fused kernel never stores it).\n")
    print(f"Self-attention over the patches, all blocks, GMACs (Swin's count; W-MSA window M={window}):")
    _table(("image", "global MSA", "W-MSA", "MSA / W-MSA"),
           [(lab, f"{a / 1e9:.3f}", f"{b / 1e9:.3f}", f"{a / b:.2f}x") for lab, a, b in zip(labels, msa, wmsa,
                                                                                            strict=True)], left={0})
    print("MSA: 4 hw C^2 + 2 (hw)^2 C; W-MSA: 4 hw C^2 + 2 M^2 hw C (Liu et al. 2021, Eq. 1-2).")
    if plot:
        from vitlab.plot import plot_attention_cost

        pixels = [int(lab.split("x")[0]) * int(lab.split("x")[-1]) for lab in labels]
        print(f"plot: {plot_attention_cost(pixels, msa, wmsa, window, plot)}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ info


def info(checkpoint: str) -> int:
    """Print what a checkpoint holds: its format, full config, size, preprocessing and class names."""
    model = _cli_warnings(vitlab.load, checkpoint, strict=False)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"checkpoint     {checkpoint}")
    print(f"format         {getattr(model, 'source_format', 'unknown')}")
    print(f"params         {_millions(n_params)} ({n_params:,})")
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


# --------------------------------------------------------------------------------------------- convert


def convert(src: str, dst: str, to: str | None = None, img_size: int | tuple[int, int] | None = None,
            num_classes: int | None = None) -> int:
    """Load any supported checkpoint and write it as vitlab, timm or npz (by ``to``, else by dst's suffix)."""
    dst_path = Path(dst)
    if to is None:
        to = SUFFIX_FORMATS.get(dst_path.suffix)
        if to is None:
            raise ValueError(f"cannot tell the output format from {dst_path.name!r}: pass --to vitlab|timm|npz "
                             f"or use one of the suffixes {', '.join(SUFFIX_FORMATS)}")
    model = _cli_warnings(vitlab.load, src, img_size=img_size, num_classes=num_classes)
    if to == "vitlab":
        vitlab.save(model, dst_path)
    elif to == "timm":
        vitlab.export_timm(model, dst_path)
    elif to == "npz":
        vitlab.export_npz(model, dst_path)
    else:  # argparse restricts the choices; this is for callers of the function
        raise ValueError(f"--to must be one of vitlab, timm, npz, got {to!r}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {dst_path} ({to}; from {getattr(model, 'source_format', '?')}; {_millions(n_params)} params, "
          f"image {model.config.img_size[0]}x{model.config.img_size[1]}, {model.config.num_classes} classes)")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- predict


def _is_checkpoint_path(spec: str) -> bool:
    return Path(spec).exists() or spec.endswith(CHECKPOINT_SUFFIXES)


def _require_vit(model: Any, spec: str, what: str) -> None:
    """The commands that look at patches, tokens or attention take ViTs; the ResNet baseline gets a clear error."""
    if not isinstance(model, vitlab.VisionTransformer):
        raise ValueError(f"{spec} is a {type(model).__name__} (vitlab's CNN baseline): {what}")


def load_model_spec(spec: str, pretrained: bool = False) -> tuple[vitlab.VisionTransformer, bool]:
    """A model from a checkpoint path, an ``hf-hub:`` id, ``name.tag`` or a registered name / alias.

    Returns the model and whether its weights are trained (False: a registered name built randomly).
    """
    if spec.startswith("hf-hub:") or _is_checkpoint_path(spec):
        return _cli_warnings(vitlab.load, spec), True
    arch, tag = split_pretrained_tag(spec)
    try:
        resolve_name(arch)
    except ValueError as e:
        raise ValueError(f"--model {spec!r} is neither an existing checkpoint file nor a model name: {e}") from e
    trained = pretrained or tag is not None
    return _cli_warnings(vitlab.create_model, spec, pretrained=trained), trained


def class_names_for(model: vitlab.VisionTransformer) -> list[str]:
    """The checkpoint's class names; else ImageNet-1k's for a 1000-class head; else ``class_<i>``."""
    k = model.config.num_classes
    names = getattr(model, "class_names", None)
    if names and len(names) == k:
        return list(names)
    if k == 1000:
        from torchvision.models import ViT_B_16_Weights  # the names ship with torchvision: no download

        return list(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])
    return [f"class_{i}" for i in range(k)]


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps): {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def predict(images: Sequence[str], model: str, topk: int = 5, device: str = "cpu", pretrained: bool = False,
            dtype: str = "float32") -> int:
    """Print the top-k classes and probabilities of each image. A file that cannot be decoded gets an
    error line and the rest are still classified; the exit status is then 1. ``dtype="bfloat16"``: the fast
    inference path (vitlab.inference), several times faster on CPUs with AMX and on GPUs, at bf16 precision."""
    dev = _device(device)
    net, trained = load_model_spec(model, pretrained)
    if not net.config.num_classes:
        raise ValueError(f"--model {model!r} has no classification head (num_classes=0): nothing to predict")
    if not trained:
        _warn(f"{model!r} has random weights (its head is zero-initialised): the predictions below are "
              "meaningless. Pass --pretrained, a name with a pretrained tag, or a checkpoint file")
    names = class_names_for(net)
    k = min(topk, len(names))
    transform = net.preprocessing.transform()
    net = net.eval().to(dev)
    if dtype != "float32":
        from vitlab.inference import prepare_for_inference

        net = prepare_for_inference(net, dtype)
    failed = 0
    for image in images:
        try:
            x = transform(vitlab.load_image(image)).unsqueeze(0).to(dev)  # (1, C, H, W)
        except (ValueError, OSError) as e:
            _err(str(e))
            failed += 1
            continue
        with torch.inference_mode():
            probs = net(x).float().softmax(dim=-1)[0]  # (K,)
        top = probs.topk(k)
        print(image)
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
            print(f"  {rank:>2}. {p:.4f}  {names[i]}")
    if failed:
        _err(f"{failed} of {len(images)} image(s) could not be read")
        return EXIT_FAILED
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- attention


def _attention_input(image: Any, preprocessing: vitlab.Preprocessing, whole: bool, patch: int) -> torch.Tensor:
    """(1, C, H, W): the weights' own preprocessing (resize + centre crop), or with ``whole`` the whole image,
    its shorter side resized to the model's input size and both sides rounded to a multiple of the patch size."""
    if not whole:
        return preprocessing.transform()(image).unsqueeze(0)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    w, h = image.size
    scale = min(preprocessing.input_size) / min(h, w)
    size = [max(patch, round(s * scale / patch) * patch) for s in (h, w)]
    t = T.Compose([T.ToImage(), T.Resize(size, InterpolationMode(preprocessing.interpolation), antialias=True),
                   T.ToDtype(torch.float32, scale=True), T.Normalize(preprocessing.mean, preprocessing.std)])
    return t(image).unsqueeze(0)


def attention(images: Sequence[str], model: str, method: str = "raw", layer: int = -1, head: str = "mean",
              discard_ratio: float = 0.0, target: int | None = None, out: str | None = None, whole: bool = False,
              device: str = "cpu", pretrained: bool = False) -> int:
    """Write, per image, a figure of the image, its saliency map by ``method`` and the per-head maps of ``layer``,
    with the predicted class; print the prediction and the figure's path."""
    from vitlab.attention import attention_maps, upsample_map
    from vitlab.plot import plot_attention_figure

    dev = _device(device)
    net, trained = load_model_spec(model, pretrained)
    _require_vit(net, model, "attention maps are for ViTs")
    if not trained:
        _warn(f"{model!r} has random weights: its attention shows no learned structure. Pass --pretrained, a name "
              "with a pretrained tag, or a checkpoint file")
    names = class_names_for(net) if net.config.num_classes else []
    if target is not None and not 0 <= target < len(names):
        raise ValueError(f"--target {target}: the model has {len(names)} classes (0..{len(names) - 1})")
    head_arg: str | int = int(head) if head.isdigit() else head
    net = net.eval().to(dev)
    several = len(images) > 1
    folder = Path(out or "attention") if several else None
    failed = 0
    for image in images:
        try:
            img = vitlab.load_image(image)
        except (ValueError, OSError) as e:
            _err(str(e))
            failed += 1
            continue
        x = _attention_input(img, net.preprocessing, whole, net.config.patch_size).to(dev)
        result = attention_maps(net, x, method, layer, head_arg, discard_ratio, target)
        heads = result.head_maps if result.head_maps is not None else attention_maps(net, x, "raw", layer).head_maps
        size = tuple(x.shape[-2:])
        mean = torch.tensor(net.preprocessing.mean, device=dev).view(3, 1, 1)
        std = torch.tensor(net.preprocessing.std, device=dev).view(3, 1, 1)
        shown = ((x[0] * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        title = Path(image).name
        if names:
            p, c = result.logits.float().softmax(-1)[0].max(0)
            title += f"\npredicted: {names[c]} ({p:.2f})"
        block = layer % net.config.depth
        map_title = f"{method}, " + (f"block {block}" if method == "raw" else f"blocks 0-{block}")
        if method == "raw":
            map_title += f", head {head}" if isinstance(head_arg, int) else f", heads {head}"
        if result.target is not None:
            map_title += f"\nfor class {names[int(result.target[0])]}"
        path = folder / f"{Path(image).stem}.png" if folder else Path(out or f"attention-{Path(image).stem}.png")
        plot_attention_figure(shown, upsample_map(result.maps, size)[0].cpu().numpy(),
                              upsample_map(heads[0], size).cpu().numpy(), title, map_title, f"block {block}", path)
        print(f"{image}: {title.split(chr(10))[-1] if names else 'no head'} -> {path}")
    if failed:
        _err(f"{failed} of {len(images)} image(s) could not be read")
        return EXIT_FAILED
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- train


def train(recipe: str | None, config: str | None, overrides: Sequence[str], out: str | None, name: str | None,
          resume: str | None, progress: bool = True) -> int:
    """Train per a recipe / config file / overrides into a new run folder, or continue one (``resume``)."""
    from datetime import datetime

    from vitlab.train.config import load_config
    from vitlab.train.trainer import load_resume_config
    from vitlab.train.trainer import train as run_training

    if resume:
        if recipe or config or overrides:
            raise ValueError("--resume continues a run with the config it was started with; drop --recipe, "
                             "--config and --set")
        cfg, run_dir = load_resume_config(resume), Path(resume)
    else:
        cfg = load_config(recipe, config, list(overrides))
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        source = recipe or (Path(config).stem if config else "run")
        label = name or cfg.run_name or f"{source}-{stamp}"
        run_dir = Path(out or cfg.out_dir) / label
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(f"run folder {run_dir} already exists and is not empty; pick another --name, "
                             f"or continue it with --resume {run_dir}")
    result = run_training(cfg, run_dir=run_dir, resume=bool(resume), progress=progress)
    if result.interrupted:
        return EXIT_FAILED
    acc = f"{result.val_acc:.4f}" if result.val_acc is not None else "n/a"
    print(f"done: {result.step} steps, {result.epoch} epochs, val accuracy {acc}; run folder {run_dir}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ eval, demo


def evaluate(checkpoint: str, data: str, split: str = "test", data_dir: str | None = None, out: str | None = None,
             batch_size: int = 256, device: str = "cpu", dtype: str = "float32") -> int:
    """Top-1/top-5 and per-class accuracy of a checkpoint on a data set; writes eval.json and confusion.png."""
    from vitlab.data import load_dataset
    from vitlab.evaluate import evaluate_model
    from vitlab.plot import plot_confusion

    model = _cli_warnings(vitlab.load, checkpoint)
    dataset = load_dataset(data, split, data_dir=data_dir)
    result = evaluate_model(model, dataset, batch_size=batch_size, device=_device(device), dtype=dtype)
    ckpt = Path(checkpoint)
    label = data.replace(":", "_").replace("/", "_")
    default_out = (ckpt.parent if ckpt.is_file() else Path(".")) / f"eval-{label}-{split}"
    out_dir = Path(out) if out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    result.save_json(out_dir / "eval.json")
    plot_confusion(result.confusion, result.class_names, out_dir / "confusion.png")
    print(f"{checkpoint} on {data} ({split}, {result.num_images} images, {dtype}): top-1 {result.top1:.4f}, "
          f"top-5 {result.top5:.4f}")
    worst = sorted(result.per_class.items(), key=lambda kv: kv[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{n} {a:.3f}" for n, a in worst))
    print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'confusion.png'}")
    return EXIT_OK


def export(model: str, out: str, dynamic: bool = False, check_sizes: Sequence[int | tuple[int, int]] = (),
           batch: int = 2, opset: int | None = None, atol: float = 1e-4, pretrained: bool = False) -> int:
    """Export to ONNX and print the parity check ONNX Runtime vs PyTorch that ran before the file was kept."""
    from vitlab.export import export_onnx

    net, trained = load_model_spec(model, pretrained)
    _require_vit(net, model, "vitlab export writes ViTs")
    if not trained:
        print(f"note: {model} is a registered name without --pretrained: exporting random weights", file=sys.stderr)
    sizes = [(s, s) if isinstance(s, int) else tuple(s) for s in check_sizes] or None
    print(export_onnx(net, out, dynamic=dynamic, opset=opset, check_sizes=sizes, batch=batch, atol=atol).summary())
    return EXIT_OK


def _short_name(path: str) -> str:
    """A checkpoint's name for titles: run folders' files are all model.safetensors, so with its folder."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def analyze(checkpoint: str, data: str, out: str | None = None, compare: str | None = None, split: str = "test",
            data_dir: str | None = None, images: int = 512, probe_images: int = 2000, progress: bool = True) -> int:
    """Write the analysis report (HTML, figures, JSON) of a checkpoint on a data set, optionally beside a second."""
    from vitlab.analysis.report import analyze as run_analysis
    from vitlab.data import load_dataset

    model = _cli_warnings(vitlab.load, checkpoint)
    _require_vit(model, checkpoint, "the report analyses a ViT; pass the CNN as --compare to set it beside one")
    other = _cli_warnings(vitlab.load, compare) if compare else None
    test_set = load_dataset(data, split, data_dir=data_dir)
    train_set = load_dataset(data, "train", data_dir=data_dir)
    ckpt = Path(checkpoint)
    out_dir = Path(out) if out else (ckpt.parent if ckpt.is_file() else Path(".")) / "analysis"
    path = run_analysis(model, test_set, train_set, out_dir, compare=other,
                        names=(_short_name(checkpoint), _short_name(compare) if compare else ""), n_images=images,
                        n_probe_train=probe_images, progress=progress)
    print(f"wrote {path}, {path.parent / 'report.json'} and the figures beside them")
    return EXIT_OK


def fewshot(checkpoint: str, data: str, shots: str = "1,5,10,25", seeds: int = 5, l2_reg: float = 1.0,
            data_dir: str | None = None, batch_size: int = 256, device: str = "cpu") -> int:
    """Linear few-shot accuracy of a checkpoint's frozen features (the ViT paper's evaluation)."""
    from vitlab.data import load_dataset
    from vitlab.evaluate import extract_features
    from vitlab.evaluate import fewshot as run_fewshot

    try:
        counts = sorted({int(n) for n in shots.split(",")})
    except ValueError as e:
        raise ValueError(f"--shots {shots!r}: expected comma-separated integers such as 1,5,10,25") from e
    model = _cli_warnings(vitlab.load, checkpoint)
    train_set, test_set = load_dataset(data, "train", data_dir=data_dir), load_dataset(data, "test", data_dir=data_dir)
    dev = _device(device)
    train_x = extract_features(model, train_set, batch_size=batch_size, device=dev)
    test_x = extract_features(model, test_set, batch_size=batch_size, device=dev)
    results = run_fewshot(train_x, train_set.labels, test_x, test_set.labels, counts, seeds, l2_reg)
    print(f"{checkpoint} on {data}: linear few-shot top-1 ({seeds} seeds, l2_reg {l2_reg}, "
          f"{len(test_set)} test images, chance {1 / len(train_set.class_names):.3f})")
    for n, (mean, std) in results.items():
        print(f"  {n:>3}-shot  {mean:.4f} +- {std:.4f}")
    return EXIT_OK


def demo(out: str = "runs", progress: bool = True) -> int:
    """Train the demo recipe on `shapes` (offline), evaluate it and draw what it learned."""
    from datetime import datetime

    from vitlab.attention import last_layer_attention, upsample_map
    from vitlab.data import load_dataset
    from vitlab.evaluate import evaluate_model
    from vitlab.plot import plot_attention_overlays, plot_confusion
    from vitlab.train.config import load_config
    from vitlab.train.trainer import train as run_training

    run_dir = Path(out) / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    run_training(load_config("demo"), run_dir=run_dir, progress=progress)
    model = vitlab.load(run_dir / "model.safetensors")
    test = load_dataset("shapes", "test")
    result = evaluate_model(model, test)
    result.save_json(run_dir / "eval.json")
    plot_confusion(result.confusion, result.class_names, run_dir / "confusion.png")
    pre = model.preprocessing
    images = test.images[:8]
    x = (images.float() / 255 - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]
    maps = upsample_map(last_layer_attention(model, x), tuple(images.shape[-2:]))
    pred = model(x).argmax(-1).tolist()
    titles = [f"{test.class_names[t]} -> {model.class_names[p]}" for t, p in zip(test.labels[:8].tolist(), pred,
                                                                                 strict=True)]
    plot_attention_overlays(images.permute(0, 2, 3, 1).numpy(), maps.numpy(), titles, run_dir / "attention.png")
    minutes = (time.perf_counter() - started) / 60
    print(f"\nshapes test accuracy: top-1 {result.top1:.4f} ({result.num_images} images) after {minutes:.1f} min")
    print(f"run folder {run_dir}: model.safetensors, metrics.jsonl, curves.png, confusion.png, attention.png")
    print("next: vitlab predict IMAGE --model " + str(run_dir / "model.safetensors"))
    print("      vitlab train --recipe demo --set data.dataset=cifar10   (or folder:PATH for your own images)")
    print("      vitlab eval --checkpoint " + str(run_dir / "model.safetensors") + " --data shapes")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitlab", description="Build, load, convert and run Vision Transformers.",
        epilog="Exit status: 0 success, 1 some images of `predict` failed, 2 a usage, file or checkpoint error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {vitlab.__version__}",
                        help="print vitlab's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                help="`vitlab COMMAND --help` describes each")

    p = sub.add_parser("models", help="list the registered models with their size and cost",
                       description="List the registered models: parameters, GFLOPs per image, image size, "
                                   "patch size, tokens and the default pretrained weights. " + ALIAS_HELP + ".")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="show only names matching this glob ('vit_base*') or substring ('patch16'), or an alias")
    p.set_defaults(func=lambda a: models(a.pattern))

    p = sub.add_parser("complexity", help="parameters, FLOPs by part and attention cost against resolution",
                       description="Parameters and FLOPs broken down by part at each image size, the attention "
                                   "matrix's memory, and global self-attention against Swin's windowed W-MSA.")
    p.add_argument("--model", "-m", required=True, metavar="NAME_OR_CHECKPOINT",
                   help="a registered name or alias, or a checkpoint file")
    p.add_argument("--img-size", default="", metavar="S[,S...]",
                   help="image sizes, comma-separated, each 384 or 384x512 (default: the model's own)")
    p.add_argument("--window", type=_positive, default=7, help="W-MSA window size M in patches (default: 7)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also plot attention cost against resolution")
    p.set_defaults(func=lambda a: complexity(a.model, [_size(t) for t in a.img_size.split(",") if t.strip()],
                                             a.window, a.plot))

    p = sub.add_parser("export", help="export to ONNX (dynamic batch and H x W), checked against PyTorch",
                       description="Export a model to ONNX with its preprocessing and class names in the file's "
                                   "metadata. Before the file is written, ONNX Runtime runs it beside PyTorch on "
                                   "random images (at two sizes with --dynamic); a max |logit difference| above "
                                   "--atol is an error and leaves no file. Needs: pip install \"vitlab[export]\"")
    p.add_argument("--model", "-m", required=True, metavar="NAME_OR_CHECKPOINT",
                   help="a checkpoint path, an hf-hub:org/repo id, a name with a pretrained tag, or a registered name")
    p.add_argument("--pretrained", action="store_true", help="with a registered name: its default pretrained weights")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch, height and width (any multiple of the patch size; the position table is "
                        "resampled inside the graph); default: the model's own size and --batch only")
    p.add_argument("--out", "-o", required=True, metavar="FILE.onnx", help="the file to write")
    p.add_argument("--check-size", default="", metavar="S[,S...]",
                   help="sizes of the parity check, each 224 or 256x192 (default: the model's own and, with "
                        "--dynamic, a non-square one)")
    p.add_argument("--batch", type=_positive, default=2, metavar="N",
                   help="images per parity check; the fixed batch size without --dynamic (default: 2)")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset, >= 18 (default: torch.onnx's own, at least 18)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest |logit difference| accepted (default: 1e-4)")
    p.set_defaults(func=lambda a: export(a.model, a.out, a.dynamic,
                                         [_size(t) for t in a.check_size.split(",") if t.strip()], a.batch, a.opset,
                                         a.atol, a.pretrained))

    p = sub.add_parser("info", help="describe a checkpoint: format, config, params, preprocessing, classes",
                       description="Load a checkpoint of any supported format (missing or unexpected keys are "
                                   "warnings here) and print what it holds.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint file or folder, a pretrained name (vit_base_patch16_224.augreg2_in21k_ft_in1k) "
                        "or an hf-hub:org/repo id")
    p.set_defaults(func=lambda a: info(a.checkpoint))

    p = sub.add_parser("convert", help="convert a checkpoint to vitlab, timm or npz format",
                       description="Load any supported checkpoint and write it in vitlab's format (.safetensors "
                                   "with config, preprocessing and class names), as a timm state dict or as "
                                   "Google's .npz.")
    p.add_argument("src", metavar="SRC", help="the checkpoint to read (file, folder, pretrained name or hf-hub id)")
    p.add_argument("dst", metavar="DST", help="the file to write")
    p.add_argument("--to", choices=("vitlab", "timm", "npz"),
                   help="output format; default from DST's suffix: .safetensors -> vitlab, .npz -> npz, "
                        ".pth/.pt/.bin -> timm")
    p.add_argument("--img-size", type=_size, metavar="N",
                   help="resample the position embedding for this input size (N or HxW)")
    p.add_argument("--num-classes", type=int, metavar="N",
                   help="replace the head by a fresh zero-initialised one with N classes (0: no head)")
    p.set_defaults(func=lambda a: convert(a.src, a.dst, a.to, a.img_size, a.num_classes))

    p = sub.add_parser("predict", help="classify images and print the top-k classes",
                       description="Classify images with a registered model or a checkpoint, using the "
                                   "preprocessing that belongs to its weights.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--model", "-m", required=True, metavar="NAME_OR_CHECKPOINT",
                   help="a checkpoint path, an hf-hub:org/repo id, a name with a pretrained tag "
                        "(vit_base_patch16_224.augreg2_in21k_ft_in1k), or a registered name or alias "
                        "(random weights unless --pretrained)")
    p.add_argument("--pretrained", action="store_true",
                   help="with a registered name: download its default pretrained weights")
    p.add_argument("--topk", "-k", type=_positive, default=5, metavar="K",
                   help="how many classes to print per image (default: 5)")
    p.add_argument("--device", default="cpu", help="torch device to run on: cpu, cuda, cuda:1, mps (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="weights and activations: bfloat16 is the fast path (AMX CPUs, GPUs) at bf16 precision; "
                        "float16 for GPUs (default: float32)")
    p.set_defaults(func=lambda a: predict(a.images, a.model, a.topk, a.device, a.pretrained, a.dtype))
    p = sub.add_parser("attention", help="attention maps, rollout or gradient rollout of images, as figures",
                       description="Overlay where the model looks on each image: one block's attention (raw), "
                                   "attention rollout over the blocks up to --layer (Abnar & Zuidema 2020), or "
                                   "gradient rollout for a class; with the per-head maps of --layer and the "
                                   "predicted class. Fused attention stays on for every block not needed.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--model", "-m", required=True, metavar="NAME_OR_CHECKPOINT",
                   help="a checkpoint path, an hf-hub:org/repo id, a name with a pretrained tag, or a registered name")
    p.add_argument("--pretrained", action="store_true", help="with a registered name: its default pretrained weights")
    p.add_argument("--method", choices=("raw", "rollout", "grad-rollout"), default="raw",
                   help="raw: one block's attention; rollout: attention rollout; grad-rollout: rollout weighted by "
                        "the gradient of a class's logit (default: raw)")
    p.add_argument("--layer", type=int, default=-1,
                   help="the block (raw), or the last block rolled out; negative counts from the end (default: -1)")
    p.add_argument("--head", default="mean", metavar="H|mean|max|min",
                   help="one head (raw only) or how heads are fused (default: mean)")
    p.add_argument("--discard-ratio", type=float, default=0.0,
                   help="rollout: zero this fraction of the weakest attention weights per block first (default: 0)")
    p.add_argument("--target", type=int, default=None, metavar="CLASS",
                   help="grad-rollout: the class index to explain (default: the predicted class)")
    p.add_argument("--whole", action="store_true",
                   help="use the whole image at its aspect ratio (shorter side = the model's input size) instead "
                        "of the weights' resize + centre crop")
    p.add_argument("--out", "-o", default=None, metavar="PATH",
                   help="the figure (one image; default attention-<image>.png) or a folder (several images; "
                        "default attention/)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default: cpu)")
    p.set_defaults(func=lambda a: attention(a.images, a.model, a.method, a.layer, a.head, a.discard_ratio,
                                            a.target, a.out, a.whole, a.device, a.pretrained))
    p = sub.add_parser("train", help="train or fine-tune a ViT (recipes, config files, overrides, resume)",
                       description="Train from scratch or fine-tune. The config is a built-in recipe "
                                   "(vitlab/recipes/*.toml, copy one to start your own) or --config FILE, then "
                                   "--set overrides. Checkpoints are written atomically; Ctrl-C or SIGTERM "
                                   "writes one and stops; --resume RUN_DIR continues exactly.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--recipe", "-r", metavar="NAME", help="a built-in recipe: demo, finetune, ...")
    src.add_argument("--config", "-c", metavar="FILE", help="a TOML config file (a recipe's format)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 --set data.dataset=cifar10 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="parent folder of run folders (default: the config's out_dir)")
    p.add_argument("--name", metavar="NAME", help="run folder name (default: <recipe>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=lambda a: train(a.recipe, a.config, a.overrides, a.out, a.name, a.resume, a.progress))
    p = sub.add_parser("analyze", help="one HTML report: attention maps, faithfulness, Figure 7, CKA, probes",
                       description="Every analysis of a checkpoint on a data set: attention maps, rollout and "
                                   "gradient rollout with their deletion/insertion AUC (and the pointing game on "
                                   "data with masks), the paper's Figure 7, and per-block linear probes, CKA, soft "
                                   "nearest-neighbour loss and residual ablation; --compare adds CKA across models.")
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT", help="a checkpoint of any supported format")
    p.add_argument("--data", required=True, metavar="DATASET", help="shapes, cifar10, cifar100 or folder:PATH")
    p.add_argument("--compare", metavar="CHECKPOINT", help="a second checkpoint: CKA between the two models' blocks")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="analysed split (default: test)")
    p.add_argument("--data-dir", metavar="DIR", help="an existing copy of the data set")
    p.add_argument("--images", type=_positive, default=512, metavar="N", help="images analysed (default: 512)")
    p.add_argument("--probe-images", type=_positive, default=2000, metavar="N",
                   help="training images for the linear probes (default: 2000)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: analysis/ beside the checkpoint)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=lambda a: analyze(a.checkpoint, a.data, a.out, a.compare, a.split, a.data_dir, a.images,
                                          a.probe_images, a.progress))
    p = sub.add_parser("eval", help="accuracy of a checkpoint on a data set (top-1/5, per class, confusion)",
                       description="Evaluate a checkpoint on a data set: top-1, top-5 and per-class accuracy, "
                                   "written with the confusion matrix to eval.json and confusion.png.")
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT", help="a checkpoint of any supported format")
    p.add_argument("--data", required=True, metavar="DATASET", help="shapes, cifar10, cifar100 or folder:PATH")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="which split (default: test)")
    p.add_argument("--data-dir", metavar="DIR", help="an existing copy of the data set")
    p.add_argument("--out", metavar="DIR", help="where to write eval.json and confusion.png "
                                                 "(default: eval-<data>-<split> beside the checkpoint)")
    p.add_argument("--batch-size", type=_positive, default=256, metavar="N", help="images per batch (default: 256)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="bfloat16: the fast inference path, to measure its accuracy cost (default: float32)")
    p.set_defaults(func=lambda a: evaluate(a.checkpoint, a.data, a.split, a.data_dir, a.out, a.batch_size, a.device,
                                           a.dtype))

    p = sub.add_parser("demo", help="train a small ViT on the built-in shapes data, offline, and show what it learned",
                       description="Train the `demo` recipe on the synthetic shapes data set (no download), "
                                   "evaluate it, and leave a run folder with the model, curves, confusion matrix "
                                   "and attention overlays.")
    p.add_argument("--out", default="runs", metavar="DIR", help="parent folder of the run folder (default: runs)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=lambda a: demo(a.out, a.progress))
    p = sub.add_parser("fewshot", help="linear few-shot accuracy of frozen features (ViT paper Sec. 4.1)",
                       description="Closed-form regularised least squares from the frozen pooled features of "
                                   "N images per class to {-1, 1} targets, evaluated on the test split; mean and "
                                   "std over several random subsets.")
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT", help="a checkpoint of any supported format")
    p.add_argument("--data", required=True, metavar="DATASET", help="shapes, cifar10, cifar100 or folder:PATH")
    p.add_argument("--shots", default="1,5,10,25", metavar="N,N,...", help="images per class (default: 1,5,10,25)")
    p.add_argument("--seeds", type=_positive, default=5, metavar="S", help="random subsets per shot count (default 5)")
    p.add_argument("--l2-reg", type=float, default=1.0, metavar="L", help="ridge regularisation (default: 1.0)")
    p.add_argument("--data-dir", metavar="DIR", help="an existing copy of the data set")
    p.add_argument("--batch-size", type=_positive, default=256, metavar="N", help="images per batch (default: 256)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=lambda a: fewshot(a.checkpoint, a.data, a.shots, a.seeds, a.l2_reg, a.data_dir,
                                          a.batch_size, a.device))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse already printed
        return EXIT_OK if e.code is None else e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except BrokenPipeError:  # `vitlab models | head`: the reader left; stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError):
            pass
        return EXIT_FAILED
    except USER_ERRORS as e:
        _err(str(e))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
