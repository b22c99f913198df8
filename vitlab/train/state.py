"""Training checkpoints that never lose work: atomic, self-describing, resumable exactly.

A training checkpoint (``ckpt-step00001234.pt``) holds the model, optimizer and EMA state, the run's
``TrainState`` (optimizer step, position in the data, training time spent, best accuracy; stored as flat
keys), every RNG state and the resolved config. It is written to a temporary file, flushed to disk and
renamed, so a process killed mid-write (or a full disk) leaves the previous checkpoint intact; only the last
``keep_last`` are kept. It holds only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitlab.checkpoint import atomic_write
from vitlab.convert import CheckpointError

TRAIN_FORMAT = "vitlab-train"
TRAIN_FORMAT_VERSION = 1
_CKPT = re.compile(r"^ckpt-step(\d+)\.pt$")


@dataclass
class TrainState:
    """Where a run stands: exactly what a checkpoint stores besides the weights, optimizer, RNG and config."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch consumed: where a resume continues in the data
    train_seconds: float = 0.0  # time spent in training steps (evaluation and checkpoint writes excluded)
    warmup_seconds: float = 0.0  # train_seconds at the end of warmup (where a time budget's schedule starts)
    best_acc: float = -1.0  # best validation accuracy so far (-1: not evaluated yet)
    log_records: int = -1  # records in metrics.jsonl when the checkpoint was written (-1: not stored, older runs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """From a checkpoint's flat keys (other keys ignored); keys that format 1 did not always have default."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"ckpt-step{step:08d}.pt"


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's name (``ckpt-step00001234.pt``: 1234)."""
    return int(_CKPT.match(path.name)[1])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Training checkpoints of a run folder, newest (highest step) first."""
    found = [(int(m[1]), p) for p in run_dir.glob("ckpt-step*.pt") if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_state(run_dir: Path, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` as the checkpoint of its step, atomically; prune all but the newest ``keep_last``."""
    path = checkpoint_path(run_dir, state["step"])
    state = {"format": TRAIN_FORMAT, "format_version": TRAIN_FORMAT_VERSION, **state, "rng": rng_state()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    # Only older ones are pruned: a newer file is a damaged checkpoint a resume skipped, and it must not push
    # this one out (it is replaced when the run reaches its step).
    older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) < state["step"]]
    for old in older[max(keep_last, 1) - 1:]:
        old.unlink(missing_ok=True)
    return path


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means: not a usable checkpoint
        raise CheckpointError(f"{path} is not a readable training checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a vitlab training checkpoint")
    if state["format_version"] > TRAIN_FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer vitlab; upgrade to resume it")
    return state


def latest_state(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run folder that reads back; a damaged one is skipped with a warning."""
    for path in list_checkpoints(run_dir):
        try:
            return path, load_state(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {path.name}: {e}", stacklevel=2)
    return None
