"""Run folders: where a run's name comes from, the check that a new run never writes into an old one, and the
files that make a run reproducible (``config.json``: the resolved config; ``environment.json``: library versions
and git revision).

A run folder holds everything a run writes: those two files, ``metrics.jsonl`` (and ``curves.png``,
``tensorboard/``), the training checkpoints ``ckpt-step*.pt``, ``best.safetensors`` and ``model.safetensors``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

import vitlab
from vitlab.train.config import TrainConfig, TrainingError, from_dict, to_dict

_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")  # vitlab.checkpoint.atomic_write's temporary files


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
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise TrainingError(f"run folder {run_dir} already exists and is not empty; pick another run folder "
                            f"(--name), or continue this run (--resume {run_dir})")


def load_resume_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with (what ``--resume`` continues)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainingError(f"{run_dir} has no config.json: not a vitlab run folder")
    return from_dict(TrainConfig, json.loads(path.read_text()))


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes that never finished (``.<name>.tmp-<pid>``, see
    ``vitlab.checkpoint.atomic_write``: a process killed mid-write leaves one). Called when a run resumes, when no
    other process writes in its folder; returns what was removed."""
    stale = [p for p in run_dir.glob(".*.tmp-*") if _TEMPORARY.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_run_info(run_dir: Path, cfg: TrainConfig, world_size: int) -> None:
    """Create the run folder with its ``config.json`` and ``environment.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    (run_dir / "environment.json").write_text(json.dumps({**environment(), "world_size": world_size}, indent=2))


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
