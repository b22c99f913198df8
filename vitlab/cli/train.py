"""``vitlab train``, ``vitlab demo``, ``vitlab eval``, ``vitlab fewshot`` and ``vitlab probe``: train a model and
measure it."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import vitlab
from vitlab.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_device,
    beside,
    parse_device,
    with_warnings,
)
from vitlab.cli.domains import (
    DATA,
    IMAGE_SIZE,
    INPUT_FILE,
    INPUT_FOLDER,
    MODEL,
    OUTPUT_FILE,
    OUTPUT_FOLDER,
    OVERRIDE,
    POSITIVE_REAL,
    RECIPE,
    RUN_NAME,
    SHOT_COUNTS,
    integer,
)
from vitlab.errors import DataError, UsageError
from vitlab.evaluate import FEATURES

DATA_HELP = "shapes, cifar10, cifar100 or folder:PATH"


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a ViT (recipes, config files, overrides, resume)",
                       description="Train from scratch or fine-tune. The config is a built-in recipe "
                                   "(vitlab/recipes/*.toml, copy one to start your own) or --config FILE, then "
                                   "--set overrides. Checkpoints are written atomically; Ctrl-C or SIGTERM "
                                   "writes one and stops; --resume RUN_DIR continues exactly.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--recipe", "-r", type=RECIPE, metavar="NAME", help="a built-in recipe: demo, finetune, ...")
    src.add_argument("--config", "-c", type=INPUT_FILE, metavar="FILE", help="a TOML config file (a recipe's format)")
    p.add_argument("--set", "-s", dest="overrides", action="append", type=OVERRIDE, default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 --set data.dataset=cifar10 (repeatable)")
    p.add_argument("--out", type=OUTPUT_FOLDER, metavar="DIR",
                   help="parent folder of run folders (default: the config's out_dir)")
    p.add_argument("--name", type=RUN_NAME, metavar="NAME", help="run folder name (default: <recipe>-<timestamp>)")
    p.add_argument("--resume", type=INPUT_FOLDER, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=train)


def train(recipe: str | None = None, config: str | None = None, overrides: Sequence[str] = (), out: str | None = None,
          name: str | None = None, resume: str | None = None, progress: bool = True) -> int:
    """Train per a recipe / config file / overrides into a new run folder, or continue one (``resume``)."""
    from vitlab.train.config import load_config
    from vitlab.train.rundir import load_resume_config, new_run_dir
    from vitlab.train.trainer import train as run_training

    if resume:
        if recipe or config or overrides:
            raise UsageError("--resume continues a run with the config it was started with; drop --recipe, "
                             "--config and --set")
        cfg, run_dir = load_resume_config(resume), Path(resume)
    else:
        cfg = load_config(recipe, config, list(overrides))
        run_dir = new_run_dir(cfg, out=out, name=name, source=recipe or (Path(config).stem if config else "run"))
    result = run_training(cfg, run_dir=run_dir, resume=bool(resume), progress=progress)
    if result.interrupted:
        return EXIT_FAILED
    acc = f"{result.val_acc:.4f}" if result.val_acc is not None else "n/a"
    print(f"done: {result.step} steps, {result.epoch} epochs, val accuracy {acc}; run folder {run_dir}")
    return EXIT_OK


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small ViT on the built-in shapes data, offline, and show what it learned",
                       description="Train the `demo` recipe on the synthetic shapes data set (no download), "
                                   "evaluate it, and leave a run folder with the model, curves, confusion matrix "
                                   "and attention overlays.")
    p.add_argument("--out", type=OUTPUT_FOLDER, default="runs", metavar="DIR",
                   help="parent folder of the run folder (default: runs)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=demo)


def demo(out: str = "runs", progress: bool = True) -> int:
    """Train the demo recipe on `shapes` (offline), evaluate it and draw what it learned."""
    from vitlab.analysis.attention import last_layer_attention, upsample_map
    from vitlab.data import load_dataset
    from vitlab.evaluate import evaluate_model
    from vitlab.plots import plot_attention_overlays, plot_confusion
    from vitlab.train.config import load_config
    from vitlab.train.rundir import new_run_dir
    from vitlab.train.trainer import train as run_training

    cfg = load_config("demo")
    run_dir = new_run_dir(cfg, out=out, source="demo")
    started = time.perf_counter()
    run_training(cfg, run_dir=run_dir, progress=progress)
    model = vitlab.load(run_dir / "model.safetensors")
    test = load_dataset("shapes", "test")
    result = evaluate_model(model, test)
    result.save_json(run_dir / "eval.json")
    plot_confusion(result.confusion, result.class_names, run_dir / "confusion.png")
    images = test.images[:8]
    x = model.preprocessing.normalize(images.float() / 255)
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


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of a checkpoint on a data set (top-1/5, per class, confusion)",
                       description="Evaluate a checkpoint on a data set: top-1, top-5 and per-class accuracy, "
                                   "written with the confusion matrix to eval.json and confusion.png.")
    p.add_argument("--checkpoint", required=True, type=MODEL, metavar="CHECKPOINT",
                   help="a checkpoint of any supported format")
    p.add_argument("--data", required=True, type=DATA, metavar="DATASET", help=DATA_HELP)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="which split (default: test)")
    p.add_argument("--data-dir", type=INPUT_FOLDER, metavar="DIR", help="an existing copy of the data set")
    p.add_argument("--out", type=OUTPUT_FOLDER, metavar="DIR", help="where to write eval.json and confusion.png "
                                                 "(default: eval-<data>-<split> beside the checkpoint)")
    p.add_argument("--batch-size", type=integer(1, 65536), default=256, metavar="N",
                   help="images per batch (default: 256)")
    add_device(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="bfloat16: the fast inference path, to measure its accuracy cost (default: float32)")
    p.set_defaults(func=evaluate)


def evaluate(checkpoint: str, data: str, split: str = "test", data_dir: str | None = None, out: str | None = None,
             batch_size: int = 256, device: str = "cpu", dtype: str = "float32") -> int:
    """Top-1/top-5 and per-class accuracy of a checkpoint on a data set; writes eval.json and confusion.png."""
    from vitlab.data import load_dataset
    from vitlab.evaluate import evaluate_model
    from vitlab.plots import plot_confusion

    model = with_warnings(vitlab.load, checkpoint)
    dataset = load_dataset(data, split, data_dir=data_dir)
    result = evaluate_model(model, dataset, batch_size=batch_size, device=parse_device(device), dtype=dtype)
    label = data.replace(":", "_").replace("/", "_")
    out_dir = Path(out) if out else beside(checkpoint, f"eval-{label}-{split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result.save_json(out_dir / "eval.json")
    plot_confusion(result.confusion, result.class_names, out_dir / "confusion.png")
    print(f"{checkpoint} on {data} ({split}, {result.num_images} images, {dtype}): top-1 {result.top1:.4f}, "
          f"top-5 {result.top5:.4f}")
    worst = sorted(result.per_class.items(), key=lambda kv: kv[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{n} {a:.3f}" for n, a in worst))
    print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'confusion.png'}")
    return EXIT_OK


def add_fewshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fewshot", help="linear few-shot accuracy of frozen features (ViT paper Sec. 4.1)",
                       description="Closed-form regularised least squares from the frozen pooled features of "
                                   "N images per class to {-1, 1} targets, evaluated on the test split; mean and "
                                   "std over several random subsets.")
    p.add_argument("--checkpoint", required=True, type=MODEL, metavar="CHECKPOINT",
                   help="a checkpoint of any supported format")
    p.add_argument("--data", required=True, type=DATA, metavar="DATASET", help=DATA_HELP)
    p.add_argument("--shots", type=SHOT_COUNTS, default="1,5,10,25", metavar="N,N,...",
                   help="images per class (default: 1,5,10,25)")
    p.add_argument("--seeds", type=integer(1, 1000), default=5, metavar="S",
                   help="random subsets per shot count (default 5)")
    p.add_argument("--l2-reg", type=POSITIVE_REAL, default=1.0, metavar="L", help="ridge regularisation (default: 1.0)")
    p.add_argument("--data-dir", type=INPUT_FOLDER, metavar="DIR", help="an existing copy of the data set")
    p.add_argument("--batch-size", type=integer(1, 65536), default=256, metavar="N",
                   help="images per batch (default: 256)")
    add_feature_options(p)
    add_device(p)
    p.set_defaults(func=fewshot)


def fewshot(checkpoint: str, data: str, shots: Sequence[int] = (1, 5, 10, 25), seeds: int = 5, l2_reg: float = 1.0,
            data_dir: str | None = None, batch_size: int = 256, device: str = "cpu", img_size: int | None = None,
            features: str = "head", dtype: str = "float32") -> int:
    """Linear few-shot accuracy of a checkpoint's frozen features (the ViT paper's evaluation). Only the training
    images some subset draws are run through the model (at most shots x classes x seeds), then the test set."""
    from vitlab.data import load_dataset
    from vitlab.evaluate import extract_features, fewshot_indices
    from vitlab.evaluate import fewshot as run_fewshot

    counts = sorted(set(shots))
    model = with_warnings(vitlab.load, checkpoint, img_size=img_size)
    train_set, test_set = load_dataset(data, "train", data_dir=data_dir), load_dataset(data, "test", data_dir=data_dir)
    dev = parse_device(device)
    start = time.perf_counter()
    names = train_set.class_names
    drawn = torch.cat([fewshot_indices(train_set.labels, n, s, names) for n in counts for s in range(seeds)]).unique()
    some_x, some_y = extract_features(model, train_set.subset(drawn), batch_size=batch_size, device=dev,
                                      features=features, dtype=dtype)
    if len(some_y) != len(drawn):  # a streamed file that failed while decoding (its name was in a warning above)
        raise DataError(f"{len(drawn) - len(some_y)} of the {len(drawn)} drawn training images did not decode (see "
                        "the warning above); fix or remove them, and run again")
    train_x = some_x.new_zeros(len(train_set.labels), some_x.shape[1])  # only the drawn rows are read
    train_x[drawn] = some_x
    seconds = time.perf_counter() - start
    test_x, test_y = extract_features(model, test_set, batch_size=batch_size, device=dev, features=features,
                                      dtype=dtype)
    if not len(test_y):
        raise DataError(f"no test image of {data} decodes: nothing to score")
    results = run_fewshot(train_x, train_set.labels, test_x, test_y, counts, seeds, l2_reg, names)
    size = model.config.img_size
    print(f"{checkpoint} on {data}: linear few-shot top-1 ({seeds} seeds, l2_reg {l2_reg}, {features} features at "
          f"{size[0]}x{size[1]} in {dtype}, {len(test_y)} test images, chance {1 / len(train_set.class_names):.3f})")
    for n, (mean, std) in results.items():
        print(f"  {n:>3}-shot  {mean:.4f} +- {std:.4f}")
    print(f"features of the {len(drawn)} drawn training images: {seconds:.1f} s")
    return EXIT_OK


def add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="linear probe of frozen features (logistic regression, DINOv2's protocol)",
                       description="Extract frozen features of every training and test image (the class token, the "
                                   "mean patch token, both, or the head's input), fit a multinomial logistic "
                                   "regression on the training features (weight decay chosen on a held-out 10%%), "
                                   "and report test top-1 with the time each stage took.")
    p.add_argument("--checkpoint", required=True, type=MODEL, metavar="CHECKPOINT",
                   help="a checkpoint of any supported format")
    p.add_argument("--data", required=True, type=DATA, metavar="DATASET", help=DATA_HELP)
    add_feature_options(p)
    p.add_argument("--train-images", type=integer(2, 10**9), default=None, metavar="N",
                   help="probe on a seeded random N of the training images (default: all)")
    p.add_argument("--data-dir", type=INPUT_FOLDER, metavar="DIR", help="an existing copy of the data set")
    p.add_argument("--batch-size", type=integer(1, 65536), default=256, metavar="N",
                   help="images per batch (default: 256)")
    p.add_argument("--out", type=OUTPUT_FILE, metavar="FILE.json", help="also write the figures as JSON")
    add_device(p)
    p.set_defaults(func=probe)


def add_feature_options(p: argparse.ArgumentParser) -> None:
    """--img-size, --features and --dtype: how frozen features are taken (fewshot, probe)."""
    p.add_argument("--img-size", type=IMAGE_SIZE, default=None, metavar="N",
                   help="run the model at this input size (the position table resampled as its source does; "
                        "default: the checkpoint's)")
    p.add_argument("--features", choices=FEATURES, default="head",
                   help="head: the head's input; cls: the class token; mean: the mean patch token; cls+mean: both "
                        "(DINOv2's linear evaluation) (default: head)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: a bf16 copy of the model, several times faster on CPUs with AMX (default: float32)")


def probe(checkpoint: str, data: str, img_size: int | tuple[int, int] | None = None, features: str = "head",
          dtype: str = "float32", train_images: int | None = None, data_dir: str | None = None,
          batch_size: int = 256, out: str | None = None, device: str = "cpu") -> int:
    """A logistic-regression linear probe of a checkpoint's frozen features; prints test top-1 and the seconds of
    each stage (training features and fit: the budget; test features: the final evaluation)."""
    from vitlab.data import load_dataset
    from vitlab.evaluate import extract_features, linear_probe

    model = with_warnings(vitlab.load, checkpoint, img_size=img_size)
    train_set, test_set = load_dataset(data, "train", data_dir=data_dir), load_dataset(data, "test", data_dir=data_dir)
    if train_images is not None and train_images < len(train_set.labels):
        train_set = train_set.subset(torch.randperm(len(train_set.labels),
                                                    generator=torch.Generator().manual_seed(0))[:train_images])
    dev = parse_device(device)
    start = time.perf_counter()
    train_x, train_y = extract_features(model, train_set, batch_size=batch_size, device=dev, features=features,
                                        dtype=dtype)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    test_x, test_y = extract_features(model, test_set, batch_size=batch_size, device=dev, features=features,
                                      dtype=dtype)
    test_seconds = time.perf_counter() - start
    if not len(test_y):
        raise DataError(f"no test image of {data} decodes: nothing to score")
    result = linear_probe(train_x, train_y, test_x, test_y, class_names=train_set.class_names)
    size = model.config.img_size
    print(f"{checkpoint} on {data}: linear probe top-1 {result.top1:.4f} ({features} features at {size[0]}x{size[1]} "
          f"in {dtype}; {len(train_y)} training, {len(test_y)} test images; weight decay {result.l2:g} chosen on a "
          f"held-out 10%: " + ", ".join(f"{k:g} -> {v:.4f}" for k, v in result.val_top1.items()) + ")")
    print(f"seconds: training features {train_seconds:.1f} + fit {result.fit_seconds:.1f} = "
          f"{train_seconds + result.fit_seconds:.1f} (the budget); test features {test_seconds:.1f}")
    if out:
        from vitlab.checkpoint import atomic_write

        figures = json.dumps({
            "checkpoint": checkpoint, "data": data, "features": features, "img_size": list(size), "dtype": dtype,
            "train_images": len(train_y), "test_images": len(test_y), "top1": result.top1, "l2": result.l2,
            "val_top1": {str(k): v for k, v in result.val_top1.items()}, "train_feature_seconds": train_seconds,
            "fit_seconds": result.fit_seconds, "test_feature_seconds": test_seconds}, indent=1)
        atomic_write(Path(out), lambda tmp: tmp.write_text(figures))
        print(f"wrote {out}")
    return EXIT_OK
