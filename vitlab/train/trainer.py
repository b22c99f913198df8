"""The training loop behind ``vitlab train``: from scratch or fine-tuning, one process or torchrun.

Never loses work: checkpoints every ``ckpt_every_steps`` optimizer steps and at the end, written
atomically; SIGINT/SIGTERM finish the current step, write a checkpoint and return; a non-finite loss
stops the run with the last good checkpoint intact. ``resume`` continues exactly: the data order and
augmentation are functions of (seed, epoch, batch), and the model, optimizer, EMA and RNG states are
restored, so N steps straight and N/2 + kill + resume give the same weights on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import vitlab
from vitlab.cnn import ResNet
from vitlab.data import AugmentConfig, ImageDataset, load_dataset, make_loader
from vitlab.model import VisionTransformer
from vitlab.train.config import TrainConfig, TrainingError, to_dict
from vitlab.train.optim import build_optimizer, set_lr
from vitlab.train.state import latest_state, save_state, set_rng_state


@dataclass
class RunResult:
    run_dir: Path
    step: int
    epoch: int
    val_acc: float | None
    interrupted: bool
    train_seconds: float = 0.0  # time spent in training steps (evaluation and checkpoint writes excluded)


class ModelEMA:
    """Exponential moving average of the weights (Polyak averaging), kept in fp32 on the model's device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if e.is_floating_point():
                e.lerp_(m.detach(), 1 - self.decay)
            else:
                e.copy_(m)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _environment() -> dict[str, str]:
    import numpy
    import torchvision

    return {"vitlab": vitlab.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "python": sys.version.split()[0], "git": _git_revision()}


def _build_model(cfg: TrainConfig, train_set: Any) -> VisionTransformer | ResNet:
    """The model for the data: its classes, and its resolution (the images' own when held in memory). A ResNet
    name (vitlab.cnn.RESNETS) builds the CNN baseline, trained the same way."""
    n = len(train_set.class_names)
    if isinstance(train_set, ImageDataset):
        size: Any = tuple(train_set.images.shape[-2:])
    else:
        size = cfg.data.image_size or None  # None: the model's own img_size
    if cfg.model.init:  # fine-tuning: resample the position table, fresh zero head if the class count differs
        model = vitlab.load(cfg.model.init, num_classes=n, img_size=size, **cfg.model.overrides)
    else:
        model = vitlab.create_model(cfg.model.name, num_classes=n, img_size=size, **cfg.model.overrides)
    pre = model.preprocessing
    crop = 1.0 if isinstance(train_set, ImageDataset) else pre.crop_pct
    model.preprocessing = pre.replace(input_size=model.config.img_size, crop_pct=crop)
    model.class_names = list(train_set.class_names)
    return model


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, device: torch.device, amp: str = "none") -> dict[str, float]:
    """Top-1 accuracy and mean loss over the loader's data (every rank's share, summed across ranks)."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for x, y in loader.epoch(0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    stats = torch.tensor([correct, total, loss_sum], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(stats)
    correct, total, loss_sum = stats.tolist()
    return {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, *, run_dir: str | Path, resume: bool = False, progress: bool = True) -> RunResult:
    """Train (or fine-tune) per ``cfg`` into ``run_dir``; with ``resume``, continue its newest checkpoint."""
    run_dir = Path(run_dir)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_proc = rank == 0
    torch.manual_seed(cfg.seed + rank)
    found = latest_state(run_dir) if resume else None
    if resume and found is None:
        raise TrainingError(f"--resume: no readable checkpoint in {run_dir}")

    d = cfg.data
    common = dict(data_dir=d.data_dir or None, val_fraction=d.val_fraction, seed=cfg.seed, strict=d.strict,
                  image_size=d.image_size or None)
    train_set = load_dataset(d.dataset, "train", **common)
    val_set = load_dataset(d.dataset, "val", **common)
    model = _build_model(cfg, train_set).to(device)
    n_classes = len(train_set.class_names)
    accum = cfg.optim.accum_steps
    if d.batch_size % (world * accum):
        raise TrainingError(f"data.batch_size={d.batch_size} is not divisible by processes x accum_steps = "
                            f"{world} x {accum}")
    micro = d.batch_size // (world * accum)
    aug = AugmentConfig(crop_padding=d.crop_padding, hflip=d.hflip, auto_augment=d.auto_augment,
                        randaugment_n=d.randaugment_n, randaugment_m=d.randaugment_m,
                        random_erasing=d.random_erasing, mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha,
                        mix_prob=d.mix_prob, label_smoothing=d.label_smoothing)
    shared = dict(preprocessing=model.preprocessing, num_classes=n_classes, seed=cfg.seed, device=device, rank=rank,
                  world_size=world, num_workers=d.num_workers)
    loader = make_loader(train_set, micro, train=True, augment=aug, **shared)
    val_loader = make_loader(val_set, max(micro, 256), train=False, augment=None, **shared)
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch == 0:
        raise TrainingError(f"the training set ({len(train_set)} images) is smaller than one batch of {d.batch_size}")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    optimizer = build_optimizer(model, cfg.optim)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    step = epoch = batch_in_epoch = 0
    best_acc = -1.0
    budget_s = cfg.budget_minutes * 60
    train_s = warmup_s = 0.0  # seconds spent in training steps; at the end of warmup
    if found is not None:
        ckpt_path, state = found
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        best_acc = state.get("best_acc", -1.0)
        train_s, warmup_s = state.get("train_seconds", 0.0), state.get("warmup_seconds", 0.0)
        set_rng_state(state["rng"])
        if main_proc:
            print(f"resumed from {ckpt_path} (step {step}, epoch {epoch}, batch {batch_in_epoch})")
    elif main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        (run_dir / "environment.json").write_text(json.dumps({**_environment(), "world_size": world}, indent=2))

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    step_fn = torch.compile(net) if cfg.compile else net
    log = (run_dir / "metrics.jsonl").open("a") if main_proc else None
    tb = None
    if cfg.tensorboard and main_proc:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrainingError("tensorboard=true needs the tensorboard package: pip install tensorboard") from e
        tb = SummaryWriter(str(run_dir / "tensorboard"))

    def snapshot() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else {}, "step": step, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "best_acc": best_acc, "config": to_dict(cfg),
                "train_seconds": train_s, "warmup_seconds": warmup_s}

    def checkpoint() -> None:
        if main_proc:
            save_state(run_dir, snapshot(), cfg.keep_last)

    def write(record: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch"):
                    tb.add_scalar(key if key.startswith(("val_", "train_")) else f"train_{key}", value, record["step"])

    bar = None
    if main_proc and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=None if budget_s > 0 else total_steps, initial=step, unit="step", dynamic_ncols=True)

    def time_progress() -> float:
        """The fraction of the budget spent after warmup (0 without a budget)."""
        if budget_s <= 0 or step < cfg.optim.warmup_steps:
            return 0.0
        return (train_s - warmup_s) / max(budget_s - warmup_s, 1e-9)

    def finished() -> bool:
        return step >= total_steps or (budget_s > 0 and train_s >= budget_s)

    val_acc = None
    interrupted = False
    with _StopFlag() as stop:
        while not finished():
            net.train()
            t0, seen, loss_acc, correct = time.perf_counter(), 0, 0.0, 0
            clock = t0  # the step timer: evaluation and checkpoint writes are not counted in train_s
            batches = loader.epoch(epoch, start_step=batch_in_epoch)
            for i, (x, y) in enumerate(batches, start=batch_in_epoch):
                if i // accum >= steps_per_epoch:
                    break
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                    logits = step_fn(x)
                loss = F.cross_entropy(logits.float(), y)
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite loss ({loss.item()}) at step {step} (epoch {epoch}, batch {i}); "
                                        f"the last good checkpoint in {run_dir} is intact. Lower optim.lr, enable "
                                        "optim.clip_grad, or check the data")
                (loss / accum).backward()
                seen += x.shape[0]
                loss_acc += loss.item() * x.shape[0]
                correct += (logits.argmax(-1) == (y if y.ndim == 1 else y.argmax(-1))).sum().item()
                if (i + 1) % accum:
                    continue
                lr = set_lr(optimizer, cfg.optim, step, total_steps, time_progress())
                if cfg.optim.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                step, batch_in_epoch = step + 1, i + 1
                now = time.perf_counter()
                train_s, clock = train_s + (now - clock), now
                if budget_s > 0 and world > 1:  # every rank must stop at the same step: the slowest one's clock
                    t = torch.tensor([train_s], dtype=torch.float64, device=device)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    train_s = t.item()
                if step == cfg.optim.warmup_steps:
                    warmup_s = train_s
                if step % cfg.log_every_steps == 0 or finished():
                    rate = seen * world / max(time.perf_counter() - t0, 1e-9)
                    record = {"step": step, "epoch": epoch, "lr": lr, "loss": loss_acc / seen,
                              "train_acc": correct / seen, "img_per_s": rate, "train_seconds": train_s}
                    write(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.3f}",
                                        img_s=f"{rate:.0f}", refresh=False)
                    t0, seen, loss_acc, correct = time.perf_counter(), 0, 0.0, 0  # each record: its own window
                if bar is not None:
                    bar.update(1)
                if step % cfg.ckpt_every_steps == 0:
                    checkpoint()
                    clock = time.perf_counter()
                if stop.signal is not None or finished():
                    break
            if stop.signal is not None:
                checkpoint()
                interrupted = True
                if main_proc:
                    print(f"\nstopped by signal {stop.signal}: checkpoint at step {step} in {run_dir}; "
                          "continue with --resume", file=sys.stderr)
                break
            if batch_in_epoch // accum >= steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            if (epoch % cfg.eval_every_epochs == 0 and batch_in_epoch == 0) or finished():
                stats = evaluate(ema.module if ema is not None else model, val_loader, device, cfg.amp)
                val_acc = stats["acc"]
                write({"step": step, "epoch": epoch, "val_acc": val_acc, "val_loss": stats["loss"],
                       "train_seconds": train_s})
                if main_proc and val_acc > best_acc:
                    best_acc = val_acc
                    vitlab.save(ema.module if ema is not None else model, run_dir / "best.safetensors",
                                extra_metadata={"step": str(step), "val_acc": f"{val_acc:.6f}"})
            if finished():
                break
    if bar is not None:
        bar.close()
    if not interrupted:
        checkpoint()
        if main_proc:
            final = ema.module if ema is not None else model
            final.preprocessing, final.class_names = model.preprocessing, model.class_names
            vitlab.save(final, run_dir / "model.safetensors")
    if tb is not None:
        tb.close()
    if log is not None:
        log.close()
        from vitlab.plot import plot_curves, read_metrics

        plot_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "curves.png")
    return RunResult(run_dir, step, epoch, val_acc, interrupted, train_s)


def load_resume_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with (what ``--resume`` continues)."""
    from vitlab.train.config import from_dict

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainingError(f"{run_dir} has no config.json: not a vitlab run folder")
    return from_dict(TrainConfig, json.loads(path.read_text()))
