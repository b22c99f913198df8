"""The training loop behind ``vitlab train``: from scratch or fine-tuning, one process or torchrun.

Never loses work: checkpoints every ``ckpt_every_steps`` optimizer steps and at the end, written
atomically; SIGINT/SIGTERM finish the current step, write a checkpoint and return; a non-finite loss, or
weights that are no longer finite when a checkpoint is due, stop the run with the newest checkpoint intact (a
checkpoint never holds NaN or inf), and so does a full disk (``DiskFullError``). ``resume`` continues
exactly: the data order and augmentation are functions of (seed, epoch, batch), and the model, optimizer,
EMA, RNG and ``TrainState`` are restored, so N steps straight and N/2 + kill + resume give the same weights on
the CPU.

A run, step by step (``Trainer``): set up (processes, data, model, optimizer, the newest checkpoint or a new
run folder); then epochs of ``train_epoch`` (``forward_backward`` per micro-batch, ``optimizer_step`` per
``accum_steps`` of them, with logging and periodic ``save_checkpoint``), each followed by ``end_epoch``
(``validate`` when due, keeping ``best.safetensors``); then ``finish`` (last checkpoint, ``model.safetensors``).
A new run never writes into a folder that holds something already (``rundir.check_new_run_dir``), and one process
trains in a folder at a time (``rundir.hold_run_dir``). A resume continues with the folder's config.json: a model
it changed since the checkpoint is an error, any other change a warning (``rundir.check_resume_config``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import vitlab
from vitlab.checkpoint import DiskFullError, model_metadata
from vitlab.cnn import ResNet
from vitlab.data import AugmentConfig, ImageDataset, load_dataset, make_loader
from vitlab.errors import CheckpointError
from vitlab.evaluate import count_correct
from vitlab.factory import parse_spec
from vitlab.model import VisionTransformer
from vitlab.precision import resolve_precision
from vitlab.registry import resolve_name, split_pretrained_tag
from vitlab.train.budget import Budget
from vitlab.train.config import ConfigError, ModelConfig, TrainConfig, TrainingError, to_dict
from vitlab.train.optim import build_optimizer, freeze_early_layers, set_lr
from vitlab.train.rundir import (
    check_new_run_dir,
    check_resume_config,
    hold_run_dir,
    load_resume_config,
    new_run_dir,
    remove_stale_temporaries,
    write_run_info,
)
from vitlab.train.runlog import RunLog, truncate_metrics
from vitlab.train.state import TrainState, checkpoint_path, checkpoint_step, latest_state, save_state, set_rng_state

__all__ = ["ModelEMA", "RunResult", "Trainer", "TrainState", "evaluate", "load_resume_config", "new_run_dir",
           "train"]


@dataclass
class RunResult:
    run_dir: Path
    step: int
    epoch: int
    val_acc: float | None
    interrupted: bool
    train_seconds: float = 0.0  # time spent in training steps (evaluation and checkpoint writes excluded)


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True
          ) -> RunResult:
    """Train (or fine-tune) per ``cfg`` into ``run_dir``; with ``resume``, continue its newest checkpoint.

    A new run needs an absent or empty ``run_dir`` (``TrainingError`` otherwise); without one it gets
    ``new_run_dir(cfg)``: ``<cfg.out_dir>/<cfg.run_name or run-<timestamp>>``. The main process holds the run
    folder's lock throughout (``rundir.hold_run_dir``): a second run in the same folder is a ``RunLockedError``."""
    if run_dir is None:
        if resume:
            raise TrainingError("resume=True needs the run_dir of the run to continue")
        run_dir = new_run_dir(cfg)
    run_dir = Path(run_dir)
    main_process = int(os.environ.get("RANK", 0)) == 0  # as _join_processes reads it
    if not resume and not main_process:
        check_new_run_dir(run_dir)  # by every process, before any of them writes (see Trainer._start_run_folder)
    with hold_run_dir(run_dir, new=not resume) if main_process else contextlib.nullcontext():
        return Trainer(cfg, run_dir, resume=resume, progress=progress).run()


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


class Trainer:
    """One run: everything set up from the config (and the newest checkpoint when resuming), then ``run()``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir = cfg, run_dir
        self.device, self.world, self.rank = _join_processes(cfg.device)
        self.main_process = self.rank == 0
        # amp = "auto": bf16 where the device runs it natively, else fp32 (vitlab.precision); said in the log and
        # environment.json
        self.precision = resolve_precision(cfg.amp, self.device, warn=self.main_process)
        if self.main_process:
            print(f"precision {self.precision.describe()}")
        torch.manual_seed(cfg.seed + self.rank)
        found = latest_state(run_dir) if resume else None
        if resume and found is None:
            raise TrainingError(f"--resume: no readable checkpoint in {run_dir}")
        if found is not None:  # config.json as edited since: a model change is an error, others a warning each
            check_resume_config(found[1].get("config"), cfg, found[1]["step"], run_dir, announce=self.main_process)

        train_set, val_set = _datasets(cfg)
        self.model = _build_model(cfg, train_set).to(self.device)
        self.loader, self.val_loader = _loaders(cfg, train_set, val_set, self.model, self.device, self.world,
                                                self.rank)
        self.steps_per_epoch = len(self.loader) // cfg.optim.accum_steps
        if self.steps_per_epoch == 0:
            raise TrainingError(f"the training set ({len(train_set)} images) is smaller than one batch of "
                                f"{cfg.data.batch_size}")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.teacher, self.teacher_input = _teacher(cfg, self.model, self.device)
        self.size_step = _check_progressive(cfg, self.model)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.state = TrainState()
        self.last_checkpoint: Path | None = None  # the newest checkpoint on disk that this run can continue from
        if found is not None:
            self._restore(*found)
        else:
            self._start_run_folder()

        self.net: torch.nn.Module = self.model  # what the training step calls: DDP-wrapped, compiled
        if self.world > 1:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.budget = Budget(cfg.budget_minutes * 60, cfg.optim.warmup_steps, self.device)
        self.log = RunLog(run_dir, main_process=self.main_process, world_size=self.world,
                          tensorboard=cfg.tensorboard, progress=progress, initial_step=self.state.step,
                          total_steps=None if self.budget.seconds > 0 else self.total_steps)
        self.val_acc: float | None = None

    # ---------------------------------------------------------------------------------------------- the loop

    def run(self) -> RunResult:
        interrupted = False
        try:
            with _StopFlag() as stop:
                while not self.finished():
                    self.train_epoch(stop)
                    if stop.signal is not None:
                        self.save_checkpoint()
                        interrupted = True
                        if self.main_process:
                            print(f"\nstopped by signal {stop.signal}: checkpoint at step {self.state.step} in "
                                  f"{self.run_dir}; continue with --resume", file=sys.stderr)
                        break
                    self.end_epoch()
            return self.finish(interrupted)
        except BaseException:  # a stopped run: its files closed (the progress bar ended) before the error is shown
            self.log.close(plot=False)
            raise

    def finished(self) -> bool:
        return self.state.step >= self.total_steps or self.budget.exhausted(self.state)

    def train_epoch(self, stop: _StopFlag) -> None:
        """Optimizer steps from the current position in the data to the end of the epoch, the end of the run,
        or a stop signal."""
        s, accum = self.state, self.cfg.optim.accum_steps
        self.net.train()
        self.log.start_window()
        self.budget.restart()
        batches = self.loader.epoch(s.epoch, start_step=s.batch_in_epoch)
        for i, (x, y) in enumerate(batches, start=s.batch_in_epoch):
            if i // accum >= self.steps_per_epoch:  # the last micro-batches, too few for an optimizer step
                break
            self.forward_backward(x, y, batch=i)
            if (i + 1) % accum:
                continue
            self.optimizer_step(batches_done=i + 1)
            if stop.signal is not None or self.finished():
                break

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        """One micro-batch: x (B, C, H, W); y (B,) class indices, or (B, classes) soft targets (mixup/cutmix)."""
        if self.cfg.data.progressive_min_size:
            x = self.progressive_resize(x)
        d = self.cfg.distill
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.autocast):
            logits = self.net(x)  # (B, classes); a DeiT student: its (class, distillation) heads' logits
            if self.teacher is not None:
                with torch.no_grad():
                    taught = self.teacher(self.teacher_input(x))  # (B, classes)
        logits, learner = logits if isinstance(logits, tuple) else (logits, logits)
        loss = F.cross_entropy(logits.float(), y)
        if self.teacher is not None:
            loss = (1 - d.alpha) * loss + d.alpha * distillation_loss(learner.float(), taught.float(), d.kind, d.tau)
            logits = (logits + learner) / 2  # what the student predicts (the same tensor without a distillation token)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss.item()}) at step {self.state.step} (epoch "
                                f"{self.state.epoch}, batch {batch}); {self._newest_checkpoint()}. Lower optim.lr, "
                                "enable optim.clip_grad, or check the data")
        (loss / self.cfg.optim.accum_steps).backward()
        self.log.add_batch(x.shape[0], loss.item(), count_correct(logits, y))  # soft targets: their largest share

    def progressive_resize(self, x: torch.Tensor) -> torch.Tensor:
        """The batch at this point of the run's side (``data.progressive_min_size``), bilinear with antialiasing."""
        d, s = self.cfg.data, self.state
        progress = max(s.step / self.total_steps, s.train_seconds / self.budget.seconds if self.budget.seconds else 0)
        side = progressive_side(x.shape[-1], d.progressive_min_size, d.progressive_until, progress, self.size_step)
        if side == x.shape[-1]:
            return x
        height = max(round(x.shape[-2] * side / x.shape[-1] / self.size_step), 1) * self.size_step
        return F.interpolate(x, size=(height, side), mode="bilinear", antialias=True, align_corners=False)

    def optimizer_step(self, batches_done: int) -> None:
        """Step on the accumulated gradients; then count the time, log, and checkpoint when due."""
        cfg, s = self.cfg, self.state
        lr = set_lr(self.optimizer, cfg.optim, s.step, self.total_steps, self.budget.time_progress(s))
        if cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        s.step, s.batch_in_epoch = s.step + 1, batches_done
        self.budget.count_step(s)
        if s.step % cfg.log_every_steps == 0 or self.finished():
            self.log.write_train(s.step, s.epoch, lr, s.train_seconds)
        self.log.step_done()
        if s.step % cfg.ckpt_every_steps == 0:
            self.save_checkpoint()
            self.budget.restart()  # the checkpoint write is not training time

    def end_epoch(self) -> None:
        """At the end of the data, move to the next epoch; validate when due (and at the end of the run)."""
        s = self.state
        if s.batch_in_epoch // self.cfg.optim.accum_steps >= self.steps_per_epoch:
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        if (s.epoch % self.cfg.eval_every_epochs == 0 and s.batch_in_epoch == 0) or self.finished():
            self.validate()

    def validate(self) -> None:
        """Accuracy on the validation data, logged; a new best is saved as ``best.safetensors``."""
        s = self.state
        stats = evaluate(self.averaged_model, self.val_loader, self.device, self.precision.dtype)
        self.val_acc = stats["acc"]
        self.log.write({"step": s.step, "epoch": s.epoch, "val_acc": self.val_acc, "val_loss": stats["loss"],
                        "train_seconds": s.train_seconds})
        if self.val_acc > s.best_acc:
            self._check_finite()
            s.best_acc = self.val_acc
            if self.main_process:
                with self._stop_when_disk_full():
                    vitlab.save(self.averaged_model, self.run_dir / "best.safetensors",
                                extra_metadata={"step": str(s.step), "val_acc": f"{self.val_acc:.6f}"})

    def save_checkpoint(self) -> None:
        """The whole run (``TrainState`` as flat keys, weights, optimizer, EMA, config; RNG added by save_state).
        Weights that are not all finite stop the run instead (``TrainingError``): no checkpoint holds NaN or inf."""
        self._check_finite()  # by every process (their weights are the same), so that all of them stop
        if self.main_process:
            self.state.log_records = self.log.records  # what a resume from here keeps of metrics.jsonl
            ema = self.ema.module.state_dict() if self.ema is not None else {}
            # model_meta: what vitlab.load needs to rebuild the model exactly (config, preprocessing, class names).
            meta = model_metadata(self.model)
            checkpoint = {**self.state.to_dict(), "model": self.model.state_dict(),
                          "optimizer": self.optimizer.state_dict(), "ema": ema, "config": to_dict(self.cfg),
                          "model_meta": meta}
            with self._stop_when_disk_full():
                save_state(self.run_dir, checkpoint, self.cfg.keep_last)
        self.last_checkpoint = checkpoint_path(self.run_dir, self.state.step)

    def _check_finite(self) -> None:
        """Raise ``TrainingError`` if a weight of the model (or of its EMA) is NaN or inf."""
        models = {"model": self.model, **({"ema": self.ema.module} if self.ema is not None else {})}
        bad = [f"{name}.{key}" for name, model in models.items() for key, t in model.state_dict().items()
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise TrainingError(f"non-finite weights after step {self.state.step} ({len(bad)} tensors, the first "
                                f"{bad[0]}): no checkpoint was written for it; {self._newest_checkpoint()}. Lower "
                                "optim.lr, enable optim.clip_grad, or check the data")

    def _newest_checkpoint(self) -> str:
        """What a run that stops now leaves to continue from, for a message."""
        if self.last_checkpoint is None:
            return f"no checkpoint was written yet in {self.run_dir}"
        step = checkpoint_step(self.last_checkpoint)
        return f"the last good checkpoint, {self.last_checkpoint} (step {step}), is intact"

    @contextlib.contextmanager
    def _stop_when_disk_full(self) -> Iterator[None]:
        """A full disk stops the run as a signal does, but with an error: the newest checkpoint intact, to resume."""
        try:
            yield
        except DiskFullError as e:
            raise DiskFullError(e.path, f"the run stopped at step {self.state.step} and "
                                        f"{self._newest_checkpoint()}: free some space, then continue with "
                                        f"--resume {self.run_dir}") from e

    def finish(self, interrupted: bool) -> RunResult:
        """A finished run writes its last checkpoint and ``model.safetensors``; an interrupted one has already."""
        if not interrupted:
            self.save_checkpoint()
            if self.main_process:
                final = self.averaged_model
                final.preprocessing, final.class_names = self.model.preprocessing, self.model.class_names
                with self._stop_when_disk_full():
                    vitlab.save(final, self.run_dir / "model.safetensors")
        self.log.close()
        s = self.state
        return RunResult(self.run_dir, s.step, s.epoch, self.val_acc, interrupted, s.train_seconds)

    # ---------------------------------------------------------------------------------------------- set-up

    @property
    def averaged_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _restore(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint; first clear what the stopped run left after it (temporary files of an
        unfinished write, metrics.jsonl records past it), so nothing is left behind or logged twice."""
        self.last_checkpoint = path
        self.state = s = TrainState.from_dict(checkpoint)
        if self.main_process:
            remove_stale_temporaries(self.run_dir)
            truncate_metrics(self.run_dir / "metrics.jsonl", s.step, s.log_records)
        try:  # what check_resume_config cannot see: a data set with another class count, another image size
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.ema is not None and checkpoint.get("ema"):
                self.ema.module.load_state_dict(checkpoint["ema"])
        except (RuntimeError, ValueError, KeyError) as e:
            problem = " ".join(str(e).split())
            raise CheckpointError(f"{path} does not fit the model and optimizer that {self.run_dir}/config.json "
                                  f"builds now ({problem[:300]}); restore config.json and the data as they were at "
                                  f"step {s.step}, or start a new run") from e
        if self.ema is not None and not checkpoint.get("ema"):  # ema_decay set since: the average starts here
            self.ema = ModelEMA(self.model, self.cfg.ema_decay)
        set_rng_state(checkpoint["rng"])
        if self.main_process:
            print(f"resumed from {path} (step {s.step}, epoch {s.epoch}, batch {s.batch_in_epoch})")

    def _start_run_folder(self) -> None:
        if self.world > 1:  # every process has checked that the folder is new before the main one writes in it
            if _uses_nccl(self.device):
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()
        if self.main_process:
            write_run_info(self.run_dir, self.cfg, self.world, self.precision)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, device: torch.device, amp: str = "none") -> dict[str, float]:
    """Top-1 accuracy and mean loss over the loader's data (every rank's share, summed across ranks), in bf16
    autocast for ``amp`` "bf16" (and "auto" where ``device`` runs bf16 natively), else in fp32."""
    autocast = amp == "bf16" or (amp == "auto" and resolve_precision(amp, device).autocast)
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for x, y in loader.epoch(0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += count_correct(logits, y)
        total += y.numel()
    stats = torch.tensor([correct, total, loss_sum], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(stats)
    correct, total, loss_sum = stats.tolist()
    return {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """The student's (B, classes) logits against the teacher's: cross-entropy with the teacher's top class (hard),
    or the KL divergence between their softmaxes at temperature ``tau``, times tau^2 (soft; Hinton et al. 2015)."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    return F.kl_div(F.log_softmax(student / tau, dim=-1), F.log_softmax(teacher / tau, dim=-1), reduction="batchmean",
                    log_target=True) * tau**2


def _teacher(cfg: TrainConfig, student: torch.nn.Module, device: torch.device
             ) -> tuple[torch.nn.Module | None, Any]:
    """The frozen teacher of ``distill.teacher`` (None without one), and the map from the student's normalised
    batch to the teacher's (its own mean and std). A DeiT student (pool "distill") then trains both its heads."""
    path = cfg.distill.teacher
    if not path:
        return None, None
    try:
        teacher = vitlab.load(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"distill.teacher={path!r}: {e}") from e
    if teacher.config.num_classes != student.config.num_classes or (
            teacher.class_names and teacher.class_names != student.class_names):
        raise ConfigError(f"distill.teacher={path!r} predicts {teacher.config.num_classes} classes "
                          f"({teacher.class_names}), the student {student.config.num_classes} ({student.class_names}): "
                          "a teacher must be trained on the same classes, in the same order")
    teacher.requires_grad_(False).eval().to(device)
    if getattr(student.config, "pool", None) == "distill":
        student.distilled_training = True
    s, t = student.preprocessing, teacher.preprocessing  # vitlab.load always sets one
    s_mean, s_std, t_mean, t_std = (torch.tensor(v, device=device).view(1, -1, 1, 1)
                                    for v in (s.mean, s.std, t.mean, t.std))
    scale, shift = s_std / t_std, (s_mean - t_mean) / t_std  # x_t = (x_s * std_s + mean_s - mean_t) / std_t
    return teacher, lambda x: x * scale + shift


def progressive_side(full: int, min_side: int, until: float, progress: float, step: int) -> int:
    """The training images' side at ``progress`` (0..1) of the run: ``min_side`` growing linearly to ``full`` at
    ``until``, rounded down to a multiple of ``step``."""
    if progress >= until:
        return full
    return max(min_side, int((min_side + (full - min_side) * progress / until) // step * step))


def _check_progressive(cfg: TrainConfig, model: torch.nn.Module) -> int:
    """The step in px between progressive sizes (a ViT's patch size, else 1); a ConfigError if the sizes do not fit."""
    d, side = cfg.data, model.config.img_size[1]
    step = model.config.patch_size if isinstance(model, VisionTransformer) else 1
    if d.progressive_min_size and (d.progressive_min_size >= side or d.progressive_min_size % step):
        raise ConfigError(f"data.progressive_min_size={d.progressive_min_size}: the smallest training side must be "
                          f"below the model's {side} px and, for a ViT, a multiple of its patch size {step}")
    return step


def _join_processes(device_name: str) -> tuple[torch.device, int, int]:
    """This process's device, the number of processes and this one's rank (torchrun sets the environment)."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_name == "auto":
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(device_name)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, world, rank


def _uses_nccl(device: torch.device) -> bool:
    return device.type == "cuda" and device.index is not None and dist.get_backend() == "nccl"


def _datasets(cfg: TrainConfig) -> tuple[Any, Any]:
    """The training and validation sets (the validation split is carved out of train where there is none)."""
    d = cfg.data
    common = dict(data_dir=d.data_dir or None, val_fraction=d.val_fraction, seed=cfg.seed, strict=d.strict,
                  img_size=d.img_size or None)
    return load_dataset(d.dataset, "train", **common), load_dataset(d.dataset, "val", **common)


def _build_model(cfg: TrainConfig, train_set: Any) -> VisionTransformer | ResNet:
    """The model for the data: its classes, and its resolution (the images' own when held in memory). A ResNet
    name (vitlab.cnn.RESNETS) builds the CNN baseline, trained the same way."""
    n = len(train_set.class_names)
    if isinstance(train_set, ImageDataset):
        size: Any = tuple(train_set.images.shape[-2:])
    else:
        size = cfg.data.img_size or None  # None: the model's own img_size
    if cfg.model.init:
        model = _fine_tuning_model(cfg.model, n, size)
    else:
        model = vitlab.create_model(cfg.model.name, num_classes=n, img_size=size, **cfg.model.overrides)
    pre = model.preprocessing
    crop = 1.0 if isinstance(train_set, ImageDataset) else pre.crop_pct
    model.preprocessing = pre.replace(img_size=model.config.img_size, crop_pct=crop)
    model.class_names = list(train_set.class_names)
    if cfg.model.freeze_blocks:
        freeze_early_layers(model, cfg.model.freeze_blocks)
    return model


def _fine_tuning_model(m: ModelConfig, num_classes: int, size: Any) -> VisionTransformer | ResNet:
    """The weights of ``model.init`` (any model spec with weights, or a name's default weights; vitlab.factory reads
    it) with ``model.overrides``, for ``num_classes`` at ``size``: the position table is resampled, and the head is
    fresh (zero) if the class count differs. The weights decide the architecture, so a ``model.name`` of another
    kind (a ViT name for a ResNet's weights, another ResNet; another registered ViT than an init given by name) is
    a ConfigError naming both, and so is an override the weights refuse, naming ``model.overrides.<field>``."""
    create = functools.partial(vitlab.create_model, m.init, pretrained=True, num_classes=num_classes, img_size=size)
    try:
        model = create(**m.overrides)
    except (TypeError, ValueError) as e:
        if not m.overrides:
            raise
        with warnings.catch_warnings():  # the fresh head's notice, given (or not) by the first try
            warnings.simplefilter("ignore")
            base = create()  # the init's own error, if the weights themselves do not load
            _check_name(m, base)
            raise _overrides_error(m, base, e, create) from e
    _check_name(m, model)
    return model


def _check_name(m: ModelConfig, model: torch.nn.Module) -> None:
    """A ConfigError when ``model.name`` names another model than the one ``model.init``'s weights built."""
    if not m.name:
        return
    init = parse_spec(m.init)
    if isinstance(model, ResNet):
        built, fix = f"a ResNet ({model.config.arch})", f"set model.name={model.config.arch!r}"
        contradicts = m.name != model.config.arch
    else:
        built, fix = "a ViT", "remove model.name (the weights decide the architecture)"
        try:
            named = resolve_name(split_pretrained_tag(m.name)[0])
        except ValueError:
            named = None  # a ResNet name (or none vitlab knows): another kind than a ViT
        contradicts = named is None or (init.kind == "name" and init.name != named)
        if init.kind == "name":
            built, fix = f"a ViT ({init.name})", f"set model.name={init.name!r}"
    if contradicts:
        raise ConfigError(f"model.name={m.name!r} contradicts model.init={m.init!r}, which is {built}: a fine-tuned "
                          f"model is built from model.init's weights; {fix}, or remove model.init to train "
                          f"{m.name} from scratch")


def _overrides_error(m: ModelConfig, base: torch.nn.Module, e: Exception, create: Any) -> ConfigError:
    """A one-line ConfigError naming the field of ``model.overrides`` that model.init's weights (``base``, built
    without the overrides) refuse, and why."""
    fields = sorted(f.name for f in dataclasses.fields(base.config))
    kind = f"a ResNet ({base.config.arch})" if isinstance(base, ResNet) else "a ViT"
    for key in m.overrides:
        if key not in fields:
            return ConfigError(f"model.overrides.{key}: model.init={m.init!r} is {kind}, whose config has no field "
                               f"{key!r} (its fields: {', '.join(fields)}); remove model.overrides.{key}")
    for key, value in m.overrides.items():
        try:
            create(**{key: value})
        except (TypeError, ValueError) as one:
            return ConfigError(f"model.overrides.{key}={value!r} does not fit model.init={m.init!r}, whose {key} is "
                               f"{getattr(base.config, key)!r}: {_reason(one)}; change or remove "
                               f"model.overrides.{key}")
    return ConfigError(f"model.overrides={m.overrides} do not fit model.init={m.init!r} together: {_reason(e)}; "
                       "change or remove them")


def _reason(e: Exception) -> str:
    """Why a loader refused a config, without its framing (the file's name, "the arguments say ...")."""
    text = " ".join(str(e).split())
    inner = re.search(r" is not a valid \w+ \((?:\w+: )?(.*)\)$", text)
    if inner:
        return inner[1]
    return text.split(" but ", 1)[1] if " but " in text else text


def _loaders(cfg: TrainConfig, train_set: Any, val_set: Any, model: torch.nn.Module, device: torch.device,
             world: int, rank: int) -> tuple[Any, Any]:
    """This process's share of the training data (augmented, in micro-batches) and of the validation data."""
    d, accum = cfg.data, cfg.optim.accum_steps
    if d.batch_size % (world * accum):
        raise TrainingError(f"data.batch_size={d.batch_size} is not divisible by processes x accum_steps = "
                            f"{world} x {accum}")
    micro = d.batch_size // (world * accum)
    aug = AugmentConfig(crop_padding=d.crop_padding, hflip=d.hflip, auto_augment=d.auto_augment,
                        randaugment_n=d.randaugment_n, randaugment_m=d.randaugment_m,
                        random_erasing=d.random_erasing, mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha,
                        mix_prob=d.mix_prob, label_smoothing=d.label_smoothing)
    shared = dict(preprocessing=model.preprocessing, num_classes=len(train_set.class_names), seed=cfg.seed,
                  device=device, rank=rank, world_size=world, num_workers=d.num_workers)
    loader = make_loader(train_set, micro, train=True, augment=aug, **shared)
    val_loader = make_loader(val_set, max(micro, 256), train=False, augment=None, **shared)
    return loader, val_loader


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
