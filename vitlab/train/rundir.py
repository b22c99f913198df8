"""Run folders: where a run's name comes from, the check that a new run never writes into an old one, and the
files that make a run reproducible (``config.json``: the resolved config; ``environment.json``: library versions
and git revision).

A run folder holds everything a run writes: those two files, ``metrics.jsonl`` (and ``curves.png``,
``tensorboard/``), the training checkpoints ``ckpt-step*.pt``, ``best.safetensors`` and ``model.safetensors``.
While a run trains, the folder also holds ``run.lock`` (``hold_run_dir``): one process trains in a folder at a time.

A resume continues with the folder's ``config.json``; ``check_resume_config`` compares it with the config the
checkpoint was trained with: a changed model is an error, any other changed setting one warning line each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

import vitlab
from vitlab.errors import ConfigError, RunLockedError
from vitlab.precision import Precision
from vitlab.train.config import TrainConfig, TrainingError, from_dict, to_dict

try:  # POSIX: an flock is dropped by the operating system when its process ends, however it ends
    import fcntl
except ImportError:  # pragma: no cover - Windows: run folders are not locked (two runs in one folder are not refused)
    fcntl = None

_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")  # vitlab.checkpoint.atomic_write's temporary files
LOCK_FILE = "run.lock"  # held by the process that trains in the folder (hold_run_dir); removed when it ends


def new_run_dir(cfg: TrainConfig, out: str | Path | None = None, name: str | None = None, source: str = "run"
                ) -> Path:
    """The folder of a new run: ``<out or cfg.out_dir>/<name or cfg.run_name or <source>-<timestamp>>``, checked
    to be absent or empty (``TrainingError`` otherwise). ``source`` names the config (a recipe, a config file's
    stem). The folder itself is created by ``train``."""
    label = name or cfg.run_name or f"{source}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(out or cfg.out_dir) / label
    check_new_run_dir(run_dir)
    return run_dir


def check_new_run_dir(run_dir: str | Path) -> None:
    """A new run never writes into a folder that holds something already (an earlier run's checkpoints)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise TrainingError(f"run folder {run_dir} is a file; pick another run folder")
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun's other processes belong to the main one's run and lock
        _refuse_if_locked(run_dir)  # a run in progress: say whose
    _check_empty(run_dir)


def _check_empty(run_dir: Path) -> None:
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):  # a stale lock is not a run
        raise TrainingError(f"run folder {run_dir} already exists and is not empty; pick another run folder "
                            f"(--name), or continue this run (--resume {run_dir})")


def load_resume_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with, as its ``config.json`` says now (what ``--resume`` continues; the
    trainer compares it with the checkpoint's, ``check_resume_config``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainingError(f"{run_dir} has no config.json: not a vitlab run folder")
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); restore it (a checkpoint holds the config it was trained "
                          "with)") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{path} holds a JSON {type(d).__name__}, expected an object of config sections")
    return from_dict(TrainConfig, d)


# ------------------------------------------------------------------------------------------- the run's lock


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path, *, new: bool) -> Iterator[None]:
    """Hold the run folder's lock while a run trains in it (the main process of a run calls this): another process
    that would train there, new or resumed, gets a ``RunLockedError`` naming this one, before it reads or writes
    anything. A new run's folder is checked (``check_new_run_dir``) and created here; one that the run leaves empty
    (it failed before writing) is removed again.

    The lock is an ``fcntl.flock`` on ``run.lock``, which records the holder (process id, host, start time). The
    operating system drops an flock when its process ends, however it ends, so the file that a run killed with
    SIGKILL leaves behind is stale and never refuses anyone; a run that ends normally removes it. Where fcntl is
    missing (Windows) runs are not locked. On a network file system flock works where the server supports it."""
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_FILE
    created = not run_dir.exists()
    if new:
        check_new_run_dir(run_dir)  # before touching anything
        run_dir.mkdir(parents=True, exist_ok=True)
    fd = _lock(lock, run_dir) if fcntl is not None and run_dir.is_dir() else None  # no folder: nothing to resume
    try:
        if new:
            _check_empty(run_dir)  # under the lock: nobody started a run here since the first check
        yield
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)  # while holding it: whoever opens the file next finds it gone (see _lock)
            os.close(fd)
        if new and created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # the run failed before writing anything


def _lock(lock: Path, run_dir: Path) -> int:
    """Take ``lock`` (an open file descriptor holding its flock) and record this process in it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:  # EWOULDBLOCK: another live process holds it
            holder = _holder(fd)
            os.close(fd)
            raise _locked(run_dir, holder) from e
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the one there now
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


def _refuse_if_locked(run_dir: Path) -> None:
    """A ``RunLockedError`` naming the holder when a live process holds ``run_dir``'s lock; the lock is not kept."""
    if fcntl is None:
        return
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    except OSError:  # no lock file (or none we may open): no run in progress
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        raise _locked(run_dir, _holder(fd)) from e
    finally:
        os.close(fd)  # drops the flock if it was taken


def _locked(run_dir: Path, holder: str) -> RunLockedError:
    return RunLockedError(f"run folder {run_dir} is in use by {holder}; wait for it to finish or stop it, then try "
                          "again (a run killed outright leaves no lock behind)")


def _holder(fd: int) -> str:
    """Who holds a run's lock, for a message: ``process 1234 (started 2026-12-03T10:00:00)``. A holder that has just
    taken the lock may not have written itself yet: a few tries."""
    for _ in range(20):
        try:
            record = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:  # being written
            record = None
        if isinstance(record, dict) and "pid" in record:
            host = record.get("host")
            where = f" on {host}" if host and host != socket.gethostname() else ""
            return f"process {record['pid']}{where} (started {record.get('started', '?')})"
        time.sleep(0.05)
    return "another process"


# -------------------------------------------------------------------------- what a resume continues with

_MISSING = object()


def check_resume_config(saved: dict[str, Any] | None, cfg: TrainConfig, step: int, run_dir: str | Path,
                        announce: bool = True) -> None:
    """Compare the config a resume continues with (``cfg``, from the run's config.json) with ``saved``, the one
    the checkpoint of ``step`` was trained with. A changed model (``model.*``) cannot take the checkpoint's
    weights: ``ConfigError`` naming each change and what to do. Any other change is announced (``announce``) as a
    warning per setting, ``resume: optim.lr changed from 0.001 to 0.003 since step 1200``, and the run continues
    with it. ``saved=None`` (no config in the checkpoint): nothing to compare."""
    if not isinstance(saved, dict):
        return
    now = _flatten(to_dict(cfg))
    try:  # the checkpoint's config as this vitlab reads it: keys added since then take their defaults
        then = _flatten(to_dict(from_dict(TrainConfig, saved)))
        keys = then.keys() | now.keys()  # differ only in tables (model.overrides): a key set or removed is a change
    except (ConfigError, TypeError, ValueError):  # written by another vitlab: compare the keys both have
        then = _flatten(saved)
        keys = then.keys() & now.keys()
    changed = [(k, then.get(k, _MISSING), now.get(k, _MISSING)) for k in sorted(keys)
               if then.get(k, _MISSING) != now.get(k, _MISSING)]
    # With model.init the weights decide the architecture: model.name is then only a label.
    same_init = then.get("model.init") and then.get("model.init") == now.get("model.init")
    model = [c for c in changed if c[0].startswith("model.") and not (c[0] == "model.name" and same_init)]
    if model:
        what = "; ".join(f"{k}: the checkpoint has {_show(a, k)}, config.json now says {_show(b, k)}"
                         for k, a, b in model)
        raise ConfigError(f"{Path(run_dir) / 'config.json'} changed the model since the checkpoint of step {step} "
                          f"({what}): the checkpoint's weights do not fit another model; restore config.json (the "
                          "checkpoint's values), or start a new run with the new model")
    if announce:
        for key, a, b in changed:
            warnings.warn(f"resume: {key} changed from {_show(a, key)} to {_show(b, key)} since step {step}",
                          stacklevel=2)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"optim.lr": 0.001, "model.overrides.depth": 4, ...}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):  # an empty table adds no key
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _show(value: Any, key: str) -> str:
    return f"no {key}" if value is _MISSING else repr(value)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes that never finished (``.<name>.tmp-<pid>``, see
    ``vitlab.checkpoint.atomic_write``: a process killed mid-write leaves one). Called when a run resumes, when no
    other process writes in its folder; returns what was removed."""
    stale = [p for p in run_dir.glob(".*.tmp-*") if _TEMPORARY.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_run_info(run_dir: Path, cfg: TrainConfig, world_size: int, precision: Precision | None = None) -> None:
    """Create the run folder with its ``config.json`` and ``environment.json`` (with ``precision``: what the run's
    ``amp`` resolved to on this hardware, and why)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    extra = {"precision": precision.to_dict()} if precision is not None else {}
    (run_dir / "environment.json").write_text(json.dumps({**environment(), "world_size": world_size, **extra},
                                                         indent=2))


def environment() -> dict[str, str]:
    """Library versions and the git revision of the code that ran."""
    import numpy
    import torchvision

    return {"vitlab": vitlab.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "python": sys.version.split()[0], "git": _git_revision()}


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
