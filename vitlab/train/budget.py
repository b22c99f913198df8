"""The wall-clock budget of a run (``budget_minutes``): how much training time is spent, and when it is up.

Only training steps count: the clock is restarted after evaluation and checkpoint writes, so a run's budget
buys the same number of steps whatever its evaluation and checkpoint settings. The time spent lives in the
run's ``TrainState`` (``train_seconds``, and ``warmup_seconds`` at the end of warmup), which checkpoints carry,
so a resumed run continues its budget. The learning-rate schedule follows the budget through
``time_progress`` (see ``vitlab.train.optim``). Under torch.distributed every process counts the slowest
process's time, so all stop at the same step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from vitlab.train.state import TrainState


class Budget:
    """Counts training time into a ``TrainState``; ``seconds=0`` means no budget (time is still counted)."""

    def __init__(self, seconds: float, warmup_steps: int, device: torch.device | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.seconds = seconds
        self.warmup_steps = warmup_steps
        self.device = device or torch.device("cpu")  # where the cross-process reduction runs (cuda for nccl)
        self.clock = clock
        self._started = clock()

    def restart(self) -> None:
        """Start timing from now: what happened since the last step (evaluation, a checkpoint) is not counted."""
        self._started = self.clock()

    def count_step(self, state: TrainState) -> None:
        """Add the time since the last step (or restart) to ``state.train_seconds``; call after ``state.step``
        moved on. At the last warmup step, remember the time spent so far: the schedule starts there."""
        now = self.clock()
        state.train_seconds += now - self._started
        self._started = now
        if self.seconds > 0:
            state.train_seconds = self._slowest_process(state.train_seconds)
        if state.step == self.warmup_steps:
            state.warmup_seconds = state.train_seconds

    def time_progress(self, state: TrainState) -> float:
        """The fraction of the budget spent after warmup (0 without a budget, and during warmup)."""
        if self.seconds <= 0 or state.step < self.warmup_steps:
            return 0.0
        return (state.train_seconds - state.warmup_seconds) / max(self.seconds - state.warmup_seconds, 1e-9)

    def exhausted(self, state: TrainState) -> bool:
        return self.seconds > 0 and state.train_seconds >= self.seconds

    def _slowest_process(self, seconds: float) -> float:
        """The largest ``seconds`` over all processes: every one must stop at the same step."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()
