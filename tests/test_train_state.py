"""The trainer's parts on their own: the TrainState a checkpoint stores, the wall-clock budget on a fake clock
(no timing), and the run-folder rules. None of these trains a model."""

import re

import pytest
import torch

import vitlab.train.budget as budget_module
from vitlab.train.budget import Budget
from vitlab.train.config import TrainConfig, TrainingError
from vitlab.train.rundir import check_new_run_dir, new_run_dir
from vitlab.train.state import TRAIN_FORMAT_VERSION, TrainState, latest_state, save_state
from vitlab.train.trainer import train


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def take_step(budget: Budget, state: TrainState, clock: FakeClock, seconds: float) -> None:
    clock.now += seconds
    state.step += 1
    budget.count_step(state)


# --------------------------------------------------------------------------------------------------- TrainState


def test_train_state_round_trips_through_a_checkpoint(tmp_path):
    state = TrainState(step=7, epoch=2, batch_in_epoch=3, train_seconds=12.5, warmup_seconds=1.25, best_acc=0.75)
    save_state(tmp_path, {**state.to_dict(), "model": {"w": torch.ones(2)}}, keep_last=2)
    path, checkpoint = latest_state(tmp_path)
    assert path.name == "ckpt-step00000007.pt"
    assert TrainState.from_dict(checkpoint) == state
    # Format 1 stores the state as flat keys beside the weights: run folders written before TrainState resume.
    assert checkpoint["format_version"] == TRAIN_FORMAT_VERSION == 1
    assert {k: checkpoint[k] for k in state.to_dict()} == state.to_dict()
    torch.testing.assert_close(checkpoint["model"]["w"], torch.ones(2))


def test_an_early_format_1_checkpoint_without_the_time_keys_reads_with_defaults():
    early = {"format": "vitlab-train", "format_version": 1, "step": 4, "epoch": 0, "batch_in_epoch": 4,
             "model": {}, "optimizer": {}, "ema": {}, "config": {}, "rng": {}}
    assert TrainState.from_dict(early) == TrainState(step=4, epoch=0, batch_in_epoch=4, train_seconds=0.0,
                                                     warmup_seconds=0.0, best_acc=-1.0)


# ------------------------------------------------------------------------------------------------------ Budget


def test_the_budget_counts_step_time_only_and_its_schedule_starts_after_warmup():
    clock, state = FakeClock(), TrainState()
    budget = Budget(seconds=10.0, warmup_steps=2, clock=clock)
    budget.restart()
    take_step(budget, state, clock, 1.0)
    assert budget.time_progress(state) == 0.0  # still warming up
    take_step(budget, state, clock, 1.0)
    assert state.train_seconds == 2.0 and state.warmup_seconds == 2.0  # warmup ended at 2 s
    clock.now += 50.0  # an evaluation or a checkpoint write ...
    budget.restart()  # ... is not training time
    take_step(budget, state, clock, 4.0)
    assert state.train_seconds == 6.0
    assert budget.time_progress(state) == pytest.approx(0.5)  # 4 of the 8 s left after warmup
    assert not budget.exhausted(state)
    take_step(budget, state, clock, 4.0)
    assert budget.exhausted(state) and budget.time_progress(state) == pytest.approx(1.0)


def test_a_resumed_run_continues_its_budget():
    clock = FakeClock()
    state = TrainState(step=3, train_seconds=6.0, warmup_seconds=2.0)  # as read from a checkpoint
    budget = Budget(seconds=10.0, warmup_steps=2, clock=clock)
    assert budget.time_progress(state) == pytest.approx(0.5)
    budget.restart()
    take_step(budget, state, clock, 3.0)
    assert state.train_seconds == 9.0 and state.warmup_seconds == 2.0 and not budget.exhausted(state)


def test_without_a_budget_time_is_counted_but_never_runs_out():
    clock, state = FakeClock(), TrainState()
    budget = Budget(seconds=0.0, warmup_steps=1, clock=clock)
    for _ in range(3):
        take_step(budget, state, clock, 1000.0)
    assert state.train_seconds == 3000.0 and state.warmup_seconds == 1000.0
    assert budget.time_progress(state) == 0.0 and not budget.exhausted(state)


def test_under_torch_distributed_every_process_counts_the_slowest_clock(monkeypatch):
    """Two processes, simulated: the other one has spent 5 s. The budget adopts the maximum of the two."""
    reduced = []

    def all_reduce(t, op):
        assert op == budget_module.dist.ReduceOp.MAX and t.dtype == torch.float64
        reduced.append(t.item())
        t.fill_(max(t.item(), 5.0))

    monkeypatch.setattr(budget_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(budget_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(budget_module.dist, "all_reduce", all_reduce)
    clock, state = FakeClock(), TrainState()
    budget = Budget(seconds=6.0, warmup_steps=0, clock=clock)
    budget.restart()
    take_step(budget, state, clock, 1.0)
    assert reduced == [1.0] and state.train_seconds == 5.0
    take_step(budget, state, clock, 1.0)
    assert reduced == [1.0, 6.0] and budget.exhausted(state)
    # Without a budget the processes need not agree: no collective per step.
    Budget(seconds=0.0, warmup_steps=0, clock=clock).count_step(state)
    assert len(reduced) == 2


# ----------------------------------------------------------------------------------------------- run folders


def test_new_run_dir_names_the_folder(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "runs"))
    assert new_run_dir(cfg, out=tmp_path, name="a") == tmp_path / "a"
    assert re.fullmatch(r"demo-\d{8}-\d{6}", new_run_dir(cfg, source="demo").name)
    assert new_run_dir(cfg, source="demo").parent == tmp_path / "runs"
    cfg.run_name = "named"
    assert new_run_dir(cfg) == tmp_path / "runs" / "named"
    assert not (tmp_path / "runs").exists()  # naming creates nothing: train() does


def test_a_new_run_refuses_a_folder_that_holds_something(tmp_path):
    (tmp_path / "empty").mkdir()
    check_new_run_dir(tmp_path / "empty")  # an empty folder is fine, and so is an absent one
    check_new_run_dir(tmp_path / "absent")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "ckpt-step00000004.pt").write_bytes(b"an earlier run")
    with pytest.raises(TrainingError, match=r"old already exists and is not empty.*--resume .*old"):
        new_run_dir(TrainConfig(), out=tmp_path, name="old")
    # From Python too: train() refuses before it reads any data, and writes nothing.
    with pytest.raises(TrainingError, match="already exists and is not empty"):
        train(TrainConfig(), run_dir=tmp_path / "old", progress=False)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["ckpt-step00000004.pt"]
    with pytest.raises(TrainingError, match="resume=True needs the run_dir"):
        train(TrainConfig(), resume=True, progress=False)


def test_a_run_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(TrainingError, match="is a file; pick another run folder"):
        check_new_run_dir(tmp_path / "run")
    assert (tmp_path / "run").read_text() == "not a folder"
