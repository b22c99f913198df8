"""Where a training step's time goes for a recipe's model: forward, backward, optimizer, under each precision mode.

A script that prints figures, not a timed test. For each recipe (a built-in name or a .toml file) and each mode
it builds the recipe's model and optimizer as the trainer does, and times training steps on random 32 px images
(the recipe's batch size, label smoothing and gradient clipping): the median of ``--steps`` steps after
``--warmup``, split into forward + loss, backward, and clip + optimizer step. Data loading and augmentation are
left out (on CIFAR-10 they are a small share; ``benchmarks/data_throughput.py`` measures them).

    python benchmarks/step_time.py --recipes cifar10-resnet20,cifar10-hybrid --modes fp32,bf16,compile

Modes: ``fp32``; ``bf16`` (autocast, as ``amp = "bf16"``); ``auto`` (as ``amp = "auto"``: bf16 where the CPU runs it
natively, else fp32; the table says which, and the first line why, see vitlab.precision); ``channels-last`` (model
and input in NHWC); ``compile`` and ``compile-bf16`` (``torch.compile``; the first step, which compiles, is reported
apart).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vitlab
from vitlab.precision import resolve_precision
from vitlab.train.config import load_config
from vitlab.train.optim import build_optimizer

MODES = ("fp32", "bf16", "auto", "channels-last", "compile", "compile-bf16")


def time_steps(recipe: str, mode: str, steps: int, warmup: int, img_size: int = 32) -> dict:
    """Median forward / backward / optimizer seconds of one training step of ``recipe``'s model in ``mode``."""
    cfg = load_config(None if recipe.endswith(".toml") else recipe, recipe if recipe.endswith(".toml") else None)
    torch.manual_seed(cfg.seed)
    model = vitlab.create_model(cfg.model.name, num_classes=10, img_size=img_size, **cfg.model.overrides).train()
    optimizer = build_optimizer(model, cfg.optim)
    x = torch.randn(cfg.data.batch_size, 3, img_size, img_size)
    y = torch.randint(0, 10, (cfg.data.batch_size,))
    if mode == "channels-last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if mode.startswith("compile") else model
    bf16 = mode.endswith("bf16") or (mode == "auto" and resolve_precision("auto", "cpu").autocast)
    label = f"auto ({'bf16' if bf16 else 'fp32'})" if mode == "auto" else mode
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    first = 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.data.label_smoothing)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        t3 = time.perf_counter()
        if i == 0:
            first = t3 - t0
        if i >= warmup:
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[name].append(dt)
    step = [sum(ts) for ts in zip(*parts.values(), strict=True)]
    return {"recipe": Path(recipe).stem, "mode": label, "batch": cfg.data.batch_size, "first_step_s": first,
            "step_ms": 1e3 * statistics.median(step), "img_per_s": cfg.data.batch_size / statistics.median(step),
            **{f"{name}_ms": 1e3 * statistics.median(ts) for name, ts in parts.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="cifar10-resnet20,cifar10-hybrid",
                   help="comma-separated built-in recipe names or .toml files")
    p.add_argument("--modes", default="fp32,bf16", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; modes: {', '.join(MODES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.steps} steps after "
          f"{args.warmup}")
    print(f"amp {resolve_precision('auto', 'cpu').describe()}\n")
    print("| recipe | mode | batch | forward + loss | backward | clip + optimizer | step | img/s | first step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe in (r.strip() for r in args.recipes.split(",")):
        base = None
        for mode in modes:
            r = time_steps(recipe, mode, args.steps, args.warmup)
            base = base or r["step_ms"]
            print(f"| {r['recipe']} | {r['mode']} | {r['batch']} | {r['forward_ms']:.1f} ms | "
                  f"{r['backward_ms']:.1f} ms | {r['optimizer_ms']:.1f} ms | "
                  f"{r['step_ms']:.1f} ms ({base / r['step_ms']:.2f}x) | {r['img_per_s']:,.0f} | "
                  f"{r['first_step_s']:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
