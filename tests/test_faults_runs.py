"""The fault campaign's run cases (issue 25, on 017cab9), through the command line where a user meets them: two
processes in one run folder, a resume after config.json was edited, contradicting model settings, and image files
on which the decoder raises something other than an OSError.

Each case asserts what a user sees (the exit status; for an error exactly one ``vitlab: error: ...`` line; for a
skipped file one ``vitlab: warning: ...`` line; never a traceback) and that a refused command changed nothing in
the run folder (every file byte-identical). On 017cab9: two resumes of one run both trained (metrics.jsonl got
each step twice); a resume after config.json changed the model died in load_state_dict with a traceback, and one
after it changed the learning rate said nothing; model.init silently overrode model.name; an error about
model.overrides blamed "the metadata"; a file on which PIL raised TypeError stopped training with a traceback, and
a streamed run that ended mid-epoch never reported the files it skipped.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import PIL.ImageFile
import pytest
import torch
from test_train import write_shapes_folder

import vitlab
from vitlab.cli import main
from vitlab.train.config import load_config, to_dict
from vitlab.train.rundir import LOCK_FILE, check_resume_config, hold_run_dir
from vitlab.train.state import list_checkpoints, load_state
from vitlab.train.trainer import train

ONE_LINE_ERROR = re.compile(r"^vitlab: error: [^\n]+$")
TINY = ["model.overrides={embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 32}", "data.batch_size=16",
        "log_every_steps=1", "ckpt_every_steps=1", "keep_last=3", "optim.warmup_steps=1"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 training images of `shapes` (32 px, held in memory): 2 steps of 16 per epoch."""
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"), sizes={"train": 32, "val": 8})


def cli_train(data, run_dir, *overrides, progress=False):
    sets = [f"data.dataset='folder:{data}'", *TINY, *overrides]
    return main(["train", "--recipe", "demo", "--out", str(run_dir.parent), "--name", run_dir.name,
                 *([] if progress else ["--no-progress"]), *[a for o in sets for a in ("--set", o)]])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished 2-step run (checkpoints at steps 1 and 2), copied by each test that changes it."""
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    train(load_config("demo", overrides=[f"data.dataset='folder:{data}'", *TINY, "max_steps=2"]), run_dir=run_dir,
          progress=False)
    return run_dir


@pytest.fixture
def run(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir


def edit_config(run_dir, **changes):
    """Edit the run's config.json as a user would: ``section__key=value`` (``model__overrides__depth=2``)."""
    path = run_dir / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        *sections, last = key.split("__")
        node = cfg
        for section in sections:
            node = node[section]
        node[last] = value
    path.write_text(json.dumps(cfg, indent=2))


def files(folder):
    """Every file of a folder and its bytes (what a refused command must leave as it was)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vitlab: error:")]
    assert len(lines) == 1 and ONE_LINE_ERROR.match(lines[0]), err
    assert "Traceback" not in err, err
    return lines[0]


def warning_lines(err: str) -> list[str]:
    """The ``vitlab: warning:`` lines of stderr (a progress bar's carriage returns end a line too)."""
    assert "Traceback" not in err and "warnings.warn(" not in err and "UserWarning" not in err, err
    return [line for line in re.split(r"[\r\n]", err) if line.startswith("vitlab: warning:")]


def metric_steps(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


# ------------------------------------------------------------------ 1: two processes in one run folder


@pytest.mark.slow  # trains a tiny run
def test_a_resume_while_the_run_is_alive_is_refused_naming_its_process(run, capsys):
    edit_config(run, max_steps=4)
    with hold_run_dir(run, new=False):  # this test process is the live run
        before = files(run)
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        err = one_error_line(capsys)
        assert f"run folder {run} is in use by process {os.getpid()} (started " in err, err
        assert "wait for it" in err
        assert files(run) == before  # nothing truncated, no checkpoint written
    assert not (run / LOCK_FILE).exists()  # the live run ended: its lock went with it
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert metric_steps(run) == [1, 2, 3, 4]  # every step once
    assert not (run / LOCK_FILE).exists()


def test_a_new_run_into_a_folder_in_use_is_refused_naming_its_process(data, tmp_path, capsys):
    run_dir = tmp_path / "busy"
    with hold_run_dir(run_dir, new=True):  # a new run that has not written its config.json yet
        assert cli_train(data, run_dir, "max_steps=1") == 2
        err = one_error_line(capsys)
        assert f"is in use by process {os.getpid()}" in err, err
        assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]
    assert not run_dir.exists()  # a run that wrote nothing leaves no folder


@pytest.mark.slow  # trains a tiny run
def test_a_lock_file_left_by_a_dead_run_is_stale(run, capsys):
    """What a run killed with SIGKILL leaves: run.lock naming a process, but no process holds its flock."""
    (run / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "2026-12-01T00:00:00"}))
    edit_config(run, max_steps=3)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert metric_steps(run) == [1, 2, 3]
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow  # a child Python process that imports torch: about 3 s
def test_a_run_killed_with_sigkill_leaves_no_lock_and_a_resume_then_works(run, capsys):
    edit_config(run, max_steps=3)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from vitlab.train.rundir import hold_run_dir
        with hold_run_dir({str(run)!r}, new=False):
            print("holding", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        before = files(run)
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2  # another process's live run
        assert f"is in use by process {holder.pid} " in one_error_line(capsys)
        assert files(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (run / LOCK_FILE).exists()  # left behind by the kill, and stale
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert metric_steps(run) == [1, 2, 3]


# --------------------------------------------------- 2 and 5: a resume after config.json was edited


@pytest.mark.slow  # trains a tiny run (the finished fixture)
def test_a_resume_after_config_json_changed_the_model_is_one_error_naming_the_change(run, capsys):
    edit_config(run, model__overrides__depth=2, max_steps=4)
    before = files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = one_error_line(capsys)
    assert "model.overrides.depth: the checkpoint has 1, config.json now says 2" in err, err
    assert "restore config.json" in err and "start a new run" in err
    assert files(run) == before


@pytest.mark.slow  # trains a tiny run (the finished fixture)
def test_a_resume_whose_data_no_longer_fits_the_weights_is_one_error(run, capsys):
    """data.img_size=16: the in-memory images at 16 px, a model with a 4x4 position table against the
    checkpoint's 8x8 one (what a config comparison alone cannot call a model change)."""
    edit_config(run, data__img_size=16, max_steps=4)
    before = files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = one_error_line(capsys)
    assert "does not fit the model" in err and "pos_embed" in err, err
    assert files(run) == before


@pytest.mark.slow  # trains a tiny run
def test_a_resume_with_an_edited_learning_rate_says_so(run, capsys):
    edit_config(run, optim__lr=0.003, max_steps=4)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    said = warning_lines(capsys.readouterr().err)
    assert said == ["vitlab: warning: resume: max_steps changed from 2 to 4 since step 2",
                    "vitlab: warning: resume: optim.lr changed from 0.002 to 0.003 since step 2"], said
    assert load_state(list_checkpoints(run)[0])["config"]["optim"]["lr"] == 0.003  # the next resume: no warning
    assert metric_steps(run) == [1, 2, 3, 4]


@pytest.mark.slow  # trains a tiny run (the finished fixture)
def test_a_checkpoint_of_an_older_vitlab_is_compared_without_false_changes(finished):
    """A checkpoint's config written before keys were added (here: distill, budget_minutes) reads with their
    defaults: no change to announce. One that this vitlab cannot read compares the keys both have."""
    state = load_state(list_checkpoints(finished)[0])
    cfg = load_config("demo", overrides=[*TINY, "max_steps=2", f"data.dataset='folder:{finished.parent}'"])
    old = {k: v for k, v in state["config"].items() if k not in ("distill", "budget_minutes")}
    old["data"] = dict(old["data"], dataset=to_dict(cfg)["data"]["dataset"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_resume_config(old, cfg, 2, finished)
        check_resume_config({**old, "a_key_from_the_future": 1}, cfg, 2, finished)
    assert not caught, [str(w.message) for w in caught]


# ------------------------------------------------------------- 3 and 4: contradicting model settings


@pytest.fixture(scope="module")
def resnet_init(tmp_path_factory):
    model = vitlab.create_model("resnet20", num_classes=6)
    return vitlab.save(model, tmp_path_factory.mktemp("init") / "r20.safetensors")


@pytest.fixture(scope="module")
def vit_init(tmp_path_factory):
    model = vitlab.create_model("Ti/4@32", num_classes=6, embed_dim=32, depth=2, num_heads=2, mlp_dim=64)
    return vitlab.save(model, tmp_path_factory.mktemp("init") / "vit.safetensors")


@pytest.mark.parametrize("name", ["vit_tiny_patch4_32", "resnet32"])
def test_model_init_with_a_contradicting_model_name_is_refused_naming_both(data, tmp_path, resnet_init, capsys, name):
    """The demo recipe names a ViT; model.init gives a ResNet-20's weights (or model.name another ResNet)."""
    code = cli_train(data, tmp_path / "r", f"model.init='{resnet_init}'", f"model.name='{name}'",
                     "model.overrides={}", "max_steps=1")
    assert code == 2
    err = one_error_line(capsys)
    assert f"model.name='{name}' contradicts model.init='{resnet_init}', which is a ResNet (resnet20)" in err, err
    assert "set model.name='resnet20'" in err
    assert list(tmp_path.iterdir()) == []  # no run folder was started


@pytest.mark.slow  # trains a tiny run
def test_model_init_without_a_model_name_takes_the_inits_architecture(data, tmp_path, resnet_init, capsys):
    config = tmp_path / "ft.toml"
    config.write_text(f"max_steps = 1\n[model]\ninit = '{resnet_init}'\n[data]\nbatch_size = 16\n")
    assert main(["train", "--config", str(config), "--set", f"data.dataset='folder:{data}'", "--out", str(tmp_path),
                 "--name", "ft", "--no-progress"]) == 0
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["name"] == ""
    assert vitlab.load(tmp_path / "ft" / "model.safetensors").config.arch == "resnet20"
    assert load_config(overrides=[]).model.name == "vit_tiny_patch4_32"  # no init: the default model


@pytest.mark.parametrize(("overrides", "message"), [
    ("{dept = 3}", r"model\.overrides\.dept: model\.init='.*' is a ViT, whose config has no field 'dept'"),
    ("{depth = 3}", r"model\.overrides\.depth=3 does not fit model\.init='.*', whose depth is 2: the weights hold "
                    r"blocks\.0 to blocks\.1"),
    ("{num_heads = 3}", r"model\.overrides\.num_heads=3 does not fit .* whose num_heads is 2: embed_dim=32 is not "
                        r"divisible by num_heads=3"),
], ids=["unknown-field", "depth", "heads"])
def test_a_model_overrides_value_the_init_refuses_names_the_config_key(data, tmp_path, vit_init, capsys, overrides,
                                                                        message):
    code = cli_train(data, tmp_path / "r", f"model.init='{vit_init}'", "model.name='Ti/4@32'",
                     f"model.overrides={overrides}", "max_steps=1")
    assert code == 2
    err = one_error_line(capsys)
    assert re.search(message, err), err
    assert "metadata" not in err and "the arguments" not in err, err


def test_resnet_weights_with_vit_overrides_name_the_override(data, tmp_path, resnet_init, capsys):
    code = cli_train(data, tmp_path / "r", f"model.init='{resnet_init}'", "model.name='resnet20'", "max_steps=1")
    assert code == 2  # the demo recipe's ViT overrides (embed_dim = 32, ...) on a ResNet's weights
    err = one_error_line(capsys)
    assert "model.overrides.embed_dim: model.init=" in err and "is a ResNet (resnet20)" in err, err


# ------------------------------------------------ 6 and 7: files the decoder fails on, warnings from workers


def fail_to_decode(monkeypatch, name, error=None, warn=None):
    """PIL raises ``error`` (or warns ``warn``) when it decodes the file ``name``; the header still reads, as for
    the files the image fuzz finds. Forked DataLoader workers inherit the patch."""
    real = PIL.ImageFile.ImageFile.load

    def load(self):
        if Path(getattr(self, "filename", "") or "").name == name:
            if error is not None:
                raise error
            warnings.warn(warn, UserWarning, stacklevel=2)
        return real(self)

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", load)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """72 px images, streamed (side > 64): 8 training and 4 validation images per class, 2 classes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("large")
    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(0, 40, (72, 72, 3), generator=rng, dtype=torch.uint8)
                Image.fromarray((torch.tensor(colour, dtype=torch.uint8) + noise).numpy()).save(
                    folder / f"{split}{c}{i}.png")
    return root


STREAMED = ["data.img_size=72", "data.batch_size=4", "max_steps=4", "data.num_workers=2",
            "model.name='vit_tiny_patch8_224'", "model.overrides={embed_dim = 32, depth = 1, num_heads = 2, "
            "mlp_dim = 32, stem = 'patch'}", "log_every_steps=1", "ckpt_every_steps=100"]


@pytest.mark.slow  # trains a tiny run
def test_a_file_pil_raises_typeerror_on_is_skipped_with_one_warning_in_memory(data, tmp_path, monkeypatch, capsys):
    bad = sorted((data / "train").rglob("*.png"))[3]
    fail_to_decode(monkeypatch, bad.name, error=TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'"))
    assert cli_train(data, tmp_path / "r", "max_steps=2") == 0
    said = warning_lines(capsys.readouterr().err)
    assert len(said) == 1 and "skipped 1 of 32 files" in said[0] and bad.name in said[0], said
    assert "TypeError: unsupported operand" in said[0]
    assert (tmp_path / "r" / "model.safetensors").is_file()


@pytest.mark.slow  # trains a tiny run
def test_a_file_pil_raises_typeerror_on_is_skipped_with_one_warning_streamed(large, tmp_path, monkeypatch, capsys):
    """Decoded in two DataLoader worker processes; the run ends at its last step, before the epoch's iterator is
    exhausted, and the skipped file is still reported (once, by the main process)."""
    fail_to_decode(monkeypatch, "train12.png", error=NotImplementedError("a mode PIL does not decode"))
    sets = [f"data.dataset='folder:{large}'", *STREAMED]
    assert main(["train", "--recipe", "demo", "--out", str(tmp_path), "--name", "r", "--no-progress",
                 *[a for o in sets for a in ("--set", o)]]) == 0
    said = warning_lines(capsys.readouterr().err)
    assert len(said) == 1 and "skipped 1 of 16 files" in said[0] and "class1/train12.png" in said[0], said
    assert "NotImplementedError" in said[0]


@pytest.mark.slow  # trains a tiny run
def test_a_warning_in_a_data_loader_worker_reaches_the_user_as_one_line_beside_the_bar(large, tmp_path, monkeypatch,
                                                                                        capsys):
    """A decoder's warning in a worker process (a forked worker's stderr is not the user's once captured, a
    spawned one would print it raw) is raised again in the main process: one line, the progress bar cleared for
    it, over two epochs still one line."""
    fail_to_decode(monkeypatch, "train03.png", warn="Possibly corrupt EXIF data in train03.png")
    sets = [f"data.dataset='folder:{large}'", *STREAMED, "max_steps=8"]
    assert main(["train", "--recipe", "demo", "--out", str(tmp_path), "--name", "r",
                 *[a for o in sets for a in ("--set", o)]]) == 0
    said = warning_lines(capsys.readouterr().err)
    assert said == ["vitlab: warning: Possibly corrupt EXIF data in train03.png"], said
