"""What a run reports, from the main process only: ``metrics.jsonl`` (one JSON record per line, appended, so a
resumed run continues it), TensorBoard scalars (``tensorboard=true``), a progress bar, and ``curves.png`` at the end.

A resumed run first drops the records written after the checkpoint it continues (``truncate_metrics``), so
each step is logged once however often the run was stopped.

Training records average the loss, accuracy and throughput over the steps since the previous record (a window);
evaluation records carry ``val_acc`` and ``val_loss``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from vitlab.checkpoint import atomic_write
from vitlab.train.config import TrainingError


class RunLog:
    def __init__(self, run_dir: Path, *, main_process: bool, world_size: int, tensorboard: bool = False,
                 progress: bool = True, total_steps: int | None = None, initial_step: int = 0):
        """``total_steps=None``: the length is not known ahead (a time budget); the bar counts steps."""
        self.run_dir = run_dir
        self.world_size = world_size
        path = run_dir / "metrics.jsonl"
        self.records = len(path.read_text().splitlines()) if main_process and path.is_file() else 0  # in the file
        self.file = path.open("a") if main_process else None
        self.tb = _summary_writer(run_dir / "tensorboard") if tensorboard and main_process else None
        self.bar = None
        if main_process and progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)
        self._showwarning = warnings.showwarning
        if self.bar is not None:  # a warning (a skipped file) on a line of its own, not after the bar's text
            warnings.showwarning = self._show_warning_beside_bar
        self.start_window()

    def _show_warning_beside_bar(self, *args, **kwargs) -> None:
        with type(self.bar).external_write_mode(file=sys.stderr):  # clears the bar, then draws it again
            self._showwarning(*args, **kwargs)

    def start_window(self) -> None:
        """Start averaging anew (a new epoch, or after a record)."""
        self._started, self._images, self._loss_sum, self._correct = time.perf_counter(), 0, 0.0, 0

    def add_batch(self, images: int, mean_loss: float, correct: int) -> None:
        self._images += images
        self._loss_sum += mean_loss * images
        self._correct += correct

    def write_train(self, step: int, epoch: int, lr: float, train_seconds: float) -> None:
        """A training record over the window; then a new window."""
        seen = max(self._images, 1)
        rate = self._images * self.world_size / max(time.perf_counter() - self._started, 1e-9)
        record = {"step": step, "epoch": epoch, "lr": lr, "loss": self._loss_sum / seen,
                  "train_acc": self._correct / seen, "img_per_s": rate, "train_seconds": train_seconds}
        self.write(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.3f}", img_s=f"{rate:.0f}",
                                 refresh=False)
        self.start_window()

    def write(self, record: dict[str, Any]) -> None:
        """One record (``step`` and ``epoch`` plus metrics) to metrics.jsonl and TensorBoard."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            self.records += 1
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch"):
                    self.tb.add_scalar(key if key.startswith(("val_", "train_")) else f"train_{key}", value,
                                       record["step"])

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, plot: bool = True) -> None:
        """Close everything; draw ``curves.png`` from the whole of metrics.jsonl (unless the run failed)."""
        if self.bar is not None:
            self.bar.close()
            if warnings.showwarning == self._show_warning_beside_bar:
                warnings.showwarning = self._showwarning
        if self.tb is not None:
            self.tb.close()
        if self.file is not None and not self.file.closed:
            self.file.close()
            if not plot:
                return
            from vitlab.plots.training import plot_curves, read_metrics

            plot_curves(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png")


def truncate_metrics(path: Path, step: int, records: int) -> None:
    """Keep the records of ``metrics.jsonl`` that a resume from the checkpoint of ``step`` does not write again:
    the first ``records`` (the count the checkpoint stored), or with ``records=-1`` (a checkpoint that did not
    store it) those up to ``step``. A line torn by a kill goes too."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = lines[:records] if records >= 0 else [line for line in lines if 0 <= _step_of(line) <= step]
    if keep != lines:
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


def _step_of(line: str) -> int:
    """The step of a metrics.jsonl line; -1 for a line that is not a whole record."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) else -1


def _summary_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TrainingError("tensorboard=true needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(str(folder))
