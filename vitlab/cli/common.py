"""What every subcommand shares: exit codes, one-line errors and warnings, argument types, tables, devices,
and the model a ``--model`` argument names."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import vitlab
from vitlab.cli.domains import DEVICE, device_problem
from vitlab.errors import UsageError
from vitlab.factory import model_from_spec, parse_spec

# 1: some inputs failed (images of predict/attention) and the others ran; 2: a user error (as argparse's);
# 3: an internal error (a bug in vitlab); 130: interrupted (Ctrl-C).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MODEL_HELP = ("a checkpoint path, an hf-hub:org/repo id, a name with a pretrained tag "
              "(vit_base_patch16_224.augreg2_in21k_ft_in1k), or a registered name or alias "
              "(random weights unless --pretrained)")


def error(message: str) -> None:
    print(f"vitlab: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"vitlab: warning: {one_line(message)}", file=sys.stderr)


def one_line(message: str) -> str:
    """A message on one line (a library's multi-line text joined), without characters that move the terminal."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def os_error_message(e: OSError) -> str | None:
    """An operating-system error on a file as one line naming the file (``cannot write /x/y: Permission denied``),
    or None when it names no file (then it is not about the user's input)."""
    if e.filename is None:
        return None
    names = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{names}: {e.strerror or e}"


def with_warnings(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn, printing its Python warnings (a fresh head, missing keys) as one-line CLI warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    for w in caught:
        warn(str(w.message))
    return out


# ---------------------------------------------------------------------------------------- arguments


class Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, as every other error: ``vitlab: error: predict: argument
    --topk: expected a positive integer, got '0' (see `vitlab predict --help`)``, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("vitlab").strip()
        where = f"{command}: " if command else ""
        print(f"vitlab: error: {where}{one_line(message)} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=DEVICE, default="cpu",
                   help="torch device to run on: cpu, cuda, cuda:1, mps (default: cpu)")


def add_pretrained(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", action="store_true",
                   help="with a registered name: download its default pretrained weights")


# ---------------------------------------------------------------------------------------------- output


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> None:
    """Print aligned columns: the ``left`` ones left-aligned (text), the others right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())


def short_name(path: str) -> str:
    """A checkpoint's name for titles: run folders' files are all model.safetensors, so with its folder."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def beside(checkpoint: str, folder: str) -> Path:
    """``folder`` next to a checkpoint file (or in the current folder for a name or a checkpoint folder)."""
    ckpt = Path(checkpoint)
    return (ckpt.parent if ckpt.is_file() else Path(".")) / folder


# ---------------------------------------------------------------------------------------- devices, models


def parse_device(name: str) -> torch.device:
    """The torch device ``--device`` names, or a UsageError saying why this machine has none such."""
    if problem := device_problem(name):
        raise UsageError(f"--device {name!r}: {problem}")
    return torch.device(name)


def require_vit(model: Any, spec: str, what: str) -> None:
    """The commands that look at patches, tokens or attention take ViTs; the ResNet baseline gets a clear error."""
    if not isinstance(model, vitlab.VisionTransformer):
        raise UsageError(f"{spec} is a {type(model).__name__} (vitlab's CNN baseline): {what}")


def load_model_spec(spec: str, pretrained: bool = False) -> tuple[vitlab.VisionTransformer, bool]:
    """The model a ``--model`` spec names (``vitlab.factory``) and whether its weights are trained (False: a
    registered name built with random weights)."""
    try:
        parse_spec(spec)
    except ValueError as e:
        raise UsageError(f"--model {e}") from e
    return tuple(with_warnings(model_from_spec, spec, pretrained=pretrained))
