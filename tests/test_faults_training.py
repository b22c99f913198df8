"""The fault campaign's training cases (issue 12): a run whose weights blow up, a full disk, and what a stopped run
leaves behind, run through the command line where a user would meet them.

Each case asserts what a user sees (exit status 2, exactly one ``vitlab: error: ...`` line, no traceback) and that
nothing was lost: every checkpoint on disk loads with finite weights, the previous checkpoint's bytes are
unchanged, no temporary file is left, and ``--resume`` continues. All of them failed on e97456e: item 2 (the
newest checkpoint held NaN/inf and the message called it intact), item 7 (a traceback on a full disk) and
item 12 (a stale ``.tmp`` file; a duplicate step in metrics.jsonl after resuming past a damaged checkpoint).
"""

import errno
import json
import re

import pytest
import torch
from test_train import write_shapes_folder

import vitlab
import vitlab.train.state as S
import vitlab.train.trainer as T
from vitlab.cli import main
from vitlab.train.config import TrainingError, load_config
from vitlab.train.runlog import truncate_metrics
from vitlab.train.state import latest_state, list_checkpoints, load_state
from vitlab.train.trainer import train

ONE_LINE_ERROR = re.compile(r"^vitlab: error: [^\n]+\n$")
TINY = ["model.overrides={embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 32}", "data.batch_size=16",
        "log_every_steps=1", "keep_last=3"]
DISK_FULL = [OSError(errno.ENOSPC, "No space left on device"),  # a writer that reports the errno
             RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                          "data/3: No space left on device")]  # torch.save's way


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """64 training images: 4 steps of 16 per epoch."""
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"), sizes={"train": 64, "val": 12})


def cli_train(data, run_dir, *overrides, model=TINY[0]):
    overrides = [model, *TINY[1:], *overrides]
    return main(["train", "--recipe", "demo", "--no-progress", "--out", str(run_dir.parent), "--name", run_dir.name,
                 "--set", f"data.dataset='folder:{data}'", *[a for o in overrides for a in ("--set", o)]])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert ONE_LINE_ERROR.match(err), err
    return err


def assert_checkpoints_finite(run_dir):
    for path in list_checkpoints(run_dir):
        state = load_state(path)
        for part in ("model", "ema"):
            for key, t in state[part].items():
                assert torch.isfinite(t).all(), f"{path.name}: {part}.{key}"


def temporaries(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def metric_steps(run_dir, key="loss"):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if key in r]


# ---------------------------------------------------------------------------- item 2: weights that blow up


@pytest.mark.slow  # trains a tiny run
def test_a_nan_run_writes_no_non_finite_checkpoint_and_names_the_one_it_leaves(data, tmp_path, capsys):
    """The campaign's case: the demo model (one block) at lr 1e6 has inf/NaN weights after its second step."""
    run_dir = tmp_path / "nan"
    status = cli_train(data, run_dir, "optim.lr=1e6", "optim.warmup_steps=0", "ckpt_every_steps=1", "max_steps=5",
                       model="model.overrides.depth=1")
    assert status == 2
    err = one_error_line(capsys)
    assert "non-finite" in err
    assert_checkpoints_finite(run_dir)
    named = re.search(r"the last good checkpoint, (\S+) \(step \d+\), is intact", err)
    if named:
        assert (tmp_path / "nan" / named[1].rsplit("/", 1)[-1]).is_file(), err
    else:
        assert "no checkpoint was written yet" in err and not list_checkpoints(run_dir), err
    # A resume meets the same blow-up; it still writes nothing non-finite and says so in one line.
    if list_checkpoints(run_dir):
        assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
        one_error_line(capsys)
        assert_checkpoints_finite(run_dir)


def poison_weights_after(monkeypatch, step):
    """Make the weights NaN right after optimizer step ``step`` (the loss of that step was finite)."""
    real = T.Trainer.optimizer_step

    def step_then_poison(self, batches_done):
        if self.state.step + 1 == step:
            self.optimizer.step = lambda: [p.data.fill_(float("nan")) for p in self.model.parameters()][:0]
        real(self, batches_done)

    monkeypatch.setattr(T.Trainer, "optimizer_step", step_then_poison)


@pytest.mark.slow  # trains a tiny run
def test_weights_that_turn_nan_stop_the_run_before_their_checkpoint(data, tmp_path, monkeypatch):
    poison_weights_after(monkeypatch, 3)
    cfg = load_config("demo", overrides=[*TINY, f"data.dataset='folder:{data}'", "ckpt_every_steps=1",
                                         "max_steps=6", "ema_decay=0.9"])
    newest = tmp_path / "ckpt-step00000002.pt"
    with pytest.raises(TrainingError, match=rf"non-finite weights after step 3 .*last good checkpoint, {newest} "
                                            r"\(step 2\), is intact"):
        train(cfg, run_dir=tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-step00000002.pt", "ckpt-step00000001.pt"]
    assert_checkpoints_finite(tmp_path)


@pytest.mark.slow  # trains a tiny run
def test_with_no_checkpoint_yet_the_message_claims_none(data, tmp_path, monkeypatch):
    poison_weights_after(monkeypatch, 1)
    cfg = load_config("demo", overrides=[*TINY, f"data.dataset='folder:{data}'", "ckpt_every_steps=1",
                                         "max_steps=3"])
    with pytest.raises(TrainingError, match="no checkpoint was written yet") as e:
        train(cfg, run_dir=tmp_path, progress=False)
    assert "intact" not in str(e.value) and not list_checkpoints(tmp_path)


# ---------------------------------------------------------------------------- item 7: a full disk


@pytest.mark.slow  # trains a tiny run
@pytest.mark.parametrize("failure", DISK_FULL, ids=["OSError", "RuntimeError"])
def test_a_full_disk_during_a_checkpoint_stops_the_run_resumably(data, tmp_path, monkeypatch, capsys, failure):
    run_dir, real, seen = tmp_path / "full", S.torch.save, {}

    def save_on_a_full_disk(obj, f):
        if obj["step"] == 4:
            seen["before"] = (run_dir / "ckpt-step00000002.pt").read_bytes()
            with open(f, "wb") as out:
                out.write(b"the first bytes of a checkpoint")
            raise failure
        real(obj, f)

    monkeypatch.setattr(S.torch, "save", save_on_a_full_disk)
    assert cli_train(data, run_dir, "ckpt_every_steps=2", "max_steps=6") == 2
    err = one_error_line(capsys)
    assert str(run_dir / "ckpt-step00000004.pt") in err and " free in " in err and "--resume" in err
    assert "ckpt-step00000002.pt (step 2), is intact" in err
    assert (run_dir / "ckpt-step00000002.pt").read_bytes() == seen["before"]
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-step00000002.pt"]
    assert not temporaries(run_dir)

    monkeypatch.setattr(S.torch, "save", real)  # space freed
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert latest_state(run_dir)[1]["step"] == 6 and (run_dir / "model.safetensors").is_file()
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("failure", DISK_FULL, ids=["OSError", "RuntimeError"])
def test_a_full_disk_during_convert_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, capsys, suffix,
                                                                         failure):
    import vitlab.checkpoint as C

    cfg = vitlab.ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, mlp_dim=32, num_classes=3)
    src = vitlab.save(vitlab.VisionTransformer(cfg), tmp_path / "src.safetensors")
    dst = tmp_path / f"out{suffix}"
    dst.write_bytes(b"an older conversion")

    def write_then_fail(obj, f, **kw):
        with open(f, "wb") as out:
            out.write(b"part of the file")
        raise failure

    monkeypatch.setattr(C, "save_file", write_then_fail)
    monkeypatch.setattr(C.torch, "save", write_then_fail)
    assert main(["convert", str(src), str(dst)]) == 2
    err = one_error_line(capsys)
    assert str(dst) in err and " free in " in err
    assert dst.read_bytes() == b"an older conversion"
    assert not temporaries(tmp_path)


# ---------------------------------------------------------------------------- item 12: leftovers


@pytest.mark.slow  # trains a tiny run
def test_a_resume_clears_stale_temporaries_and_logs_each_step_once(data, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert cli_train(data, run_dir, "ckpt_every_steps=2", "max_steps=6") == 0
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6] and metric_steps(run_dir, "val_acc") == [4, 6]
    (run_dir / "ckpt-step00000006.pt").write_bytes(b"damaged")  # the newest checkpoint is unreadable ...
    (run_dir / ".ckpt-step00000006.pt.tmp-4242").write_bytes(b"")  # ... and a kill -9 mid-write left this
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^vitlab: warning: .*skipping ckpt-step00000006.pt", err, re.M), err  # one line on stderr
    assert "resumed from " + str(run_dir / "ckpt-step00000004.pt") in out
    assert not temporaries(run_dir)
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 once, though run twice
    assert metric_steps(run_dir, "val_acc") == [4, 6]
    assert_checkpoints_finite(run_dir)


@pytest.mark.slow  # trains a tiny run
def test_a_checkpoint_newer_than_the_resumed_one_does_not_push_it_out(data, tmp_path):
    """keep_last=1, resumed from step 2 past a damaged step-4 file: the step-3 checkpoint it writes stays."""
    cfg = load_config("demo", overrides=[*TINY, f"data.dataset='folder:{data}'", "ckpt_every_steps=1",
                                         "max_steps=2", "keep_last=1"])
    train(cfg, run_dir=tmp_path, progress=False)
    (tmp_path / "ckpt-step00000004.pt").write_bytes(b"damaged")
    cfg = load_config("demo", overrides=[*TINY, f"data.dataset='folder:{data}'", "ckpt_every_steps=1",
                                         "max_steps=3", "keep_last=1"])
    with pytest.warns(UserWarning, match="skipping ckpt-step00000004.pt"):
        train(cfg, run_dir=tmp_path, resume=True, progress=False)
    assert (tmp_path / "ckpt-step00000003.pt").is_file() and not (tmp_path / "ckpt-step00000002.pt").exists()


def test_truncating_the_log_of_a_checkpoint_that_stored_no_record_count(tmp_path):
    """Checkpoints written before the count (log_records=-1) keep the records up to their step; a torn line goes."""
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)] + ['{"step": 4, "lo']
    path.write_text("\n".join(lines))
    truncate_metrics(path, step=2, records=-1)
    assert path.read_text().splitlines() == lines[:2]
    path.write_text("\n".join(lines))
    truncate_metrics(path, step=9, records=3)
    assert path.read_text().splitlines() == lines[:3]
