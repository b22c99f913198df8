"""Print the data throughput (images/s) of vitlab's batched augmentation against per-image torchvision.

vitlab's :class:`~vitlab.data.BatchLoader` gathers and augments whole batches of 32 px uint8 images on the device.
The reference is the same pipeline done the usual way, one image at a time with ``torchvision.transforms.v2`` (on
uint8 tensors, and on PIL images), then Mixup/CutMix on the collated batch: what each DataLoader worker does.

    python benchmarks/data_throughput.py                      # shapes (no download), CPU
    python benchmarks/data_throughput.py --device cuda --data folder:/data/cifar10

Images per second, mean ± std over ``--repeats`` timed runs after a warm-up. Beside them it prints the training
img/s of a model (default: the `demo` recipe's) on batches of the same shape (forward, backward, AdamW step), so
the ratio says how far the data pipeline is from being the bottleneck.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from datetime import date

import torch
from PIL import Image
from torchvision.transforms import v2 as T

import vitlab
from vitlab.data import AugmentConfig, BatchLoader, load_dataset
from vitlab.train.config import load_config

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10 train statistics

PIPELINES = {
    "crop+flip": AugmentConfig(crop_padding=4, hflip=True),
    "crop+flip+TrivialAugment+erasing+mixup/cutmix+smoothing": AugmentConfig(
        crop_padding=4, hflip=True, auto_augment="trivial", random_erasing=0.25, mixup_alpha=0.8, cutmix_alpha=1.0,
        label_smoothing=0.1),
    "crop+flip+RandAugment(2, 9)": AugmentConfig(crop_padding=4, hflip=True, auto_augment="randaugment"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batched(ds, cfg: AugmentConfig, batch_size: int, n_images: int, device: torch.device, repeats: int) -> list[float]:
    loader = BatchLoader(ds, batch_size, train=True, augment=cfg, mean=MEAN, std=STD, num_classes=ds.num_classes,
                         device=device)
    steps = min(len(loader), max(1, n_images // batch_size))
    rates = []
    for r in range(repeats + 1):  # run 0 is the warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _batch in itertools.islice(loader.epoch(r), steps):
            pass
        _sync(device)
        if r:
            rates.append(steps * batch_size / (time.perf_counter() - t0))
    return rates


def reference(ds, cfg: AugmentConfig, batch_size: int, n_images: int, repeats: int, pil: bool) -> list[float]:
    size = ds.images.shape[-1]
    ops = [T.RandomCrop(size, padding=cfg.crop_padding, padding_mode="reflect")] if cfg.crop_padding else []
    ops += [T.RandomHorizontalFlip()] if cfg.hflip else []
    if cfg.auto_augment == "trivial":
        ops.append(T.TrivialAugmentWide())
    elif cfg.auto_augment == "randaugment":
        ops.append(T.RandAugment(cfg.randaugment_n, cfg.randaugment_m))
    ops += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]
    ops += [T.RandomErasing(cfg.random_erasing, value=0)] if cfg.random_erasing else []
    transform = T.Compose(ops)
    mixes = [m for m, a in ((T.MixUp, cfg.mixup_alpha), (T.CutMix, cfg.cutmix_alpha)) if a > 0]
    k = ds.num_classes
    batch_mix = T.RandomChoice([m(alpha=a, num_classes=k) for m, a in zip(mixes, (cfg.mixup_alpha,
                                                                                  cfg.cutmix_alpha), strict=False)]) \
        if mixes else None
    n = min(n_images, len(ds)) // batch_size * batch_size
    items = [Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()) if pil else ds.images[i] for i in range(n)]
    labels = ds.labels[:n]
    rates = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for b in range(0, n, batch_size):
            x = torch.stack([transform(img) for img in items[b:b + batch_size]])
            y = labels[b:b + batch_size]
            if batch_mix is not None:
                x, y = batch_mix(x, y)
        if r:
            rates.append(n / (time.perf_counter() - t0))
    return rates


def training(ds, recipe: str, batch_size: int, device: torch.device, repeats: int, steps: int = 5) -> list[float]:
    """Training img/s of the recipe's model: forward, backward and an AdamW step on batches of the data's shape."""
    cfg = load_config(recipe)
    model = vitlab.create_model(cfg.model.name, num_classes=ds.num_classes, img_size=tuple(ds.images.shape[-2:]),
                                **cfg.model.overrides).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, *ds.images.shape[1:], device=device)
    y = torch.randint(0, ds.num_classes, (batch_size,), device=device)
    rates = []
    for r in range(repeats + 1):  # run 0 is the warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        if r:
            rates.append(steps * batch_size / (time.perf_counter() - t0))
    return rates


def _fmt(rates: list[float]) -> str:
    sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
    return f"{statistics.mean(rates):>9,.0f} ± {sd:,.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="shapes", help="a data set name for vitlab.data.load_dataset (32 px images)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--images", type=int, default=8192, help="images per timed run (batched pipeline)")
    p.add_argument("--ref-images", type=int, default=2048, help="images per timed run (per-image reference)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recipe", default="demo", help="whose model's training img/s to print beside (default: demo)")
    args = p.parse_args()
    device = torch.device(args.device)
    ds = load_dataset(args.data, "train")
    print(f"data {args.data}: {len(ds)} images {tuple(ds.images.shape[1:])}, batch {args.batch_size}, device "
          f"{device}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {date.today()}")
    print(f"{'pipeline':58} {'vitlab batched':>16} {'tv v2 per tensor':>16} {'tv v2 per PIL':>16}  (img/s)")
    slowest_data = float("inf")
    for name, cfg in PIPELINES.items():
        ours = batched(ds, cfg, args.batch_size, args.images, device, args.repeats)
        tensor = reference(ds, cfg, args.batch_size, args.ref_images, args.repeats, pil=False)
        pil = reference(ds, cfg, args.batch_size, args.ref_images, args.repeats, pil=True)
        print(f"{name:58} {_fmt(ours):>16} {_fmt(tensor):>16} {_fmt(pil):>16}", flush=True)
        slowest_data = min(slowest_data, statistics.mean(ours))
    train_rates = training(ds, args.recipe, args.batch_size, device, args.repeats)
    print(f"\ntraining, the `{args.recipe}` recipe's model (forward + backward + AdamW): {_fmt(train_rates)} img/s")
    print(f"the slowest batched pipeline is {slowest_data / statistics.mean(train_rates):.1f}x faster than training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
