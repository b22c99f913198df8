"""The domain of every command-line option: an argparse ``type`` that parses the text, checks it against what the
option allows, and says so in one line naming the value and what is allowed.

Each domain is a :class:`Domain`: callable as argparse's ``type``, with a ``kind`` (what it is, for messages and
``--help``) and ``examples`` (valid texts, which the fuzz harness of tests/test_fuzz_cli.py draws beside hostile
ones). Every option of every subcommand has a domain, ``choices`` or is a flag; tests/test_fuzz_cli.py enumerates
the parser and fails on an option without one, so a new option is checked by construction::

    p.add_argument("--port", type=PORT, default=8000)
    p.add_argument("--l2-reg", type=real(0, math.inf, low_open=True), default=1.0)

A value outside the domain is a usage error at parse time, before any model is loaded: ``vitlab: error: explore:
argument --port: expected a port number 0..65535 (0: any free port), got '70000' (out of range) (see `vitlab
explore --help`)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitlab.errors import OutputError, VitlabError, check_writable

MAX_IMAGE_SIDE = 4096  # px; ViT-B/16 at 4096^2 has 65,536 tokens, whose (N, N) attention matrix is 16 GiB per head


@dataclass(frozen=True)
class Domain:
    """An argparse ``type`` that knows what it accepts: ``parse(text)`` returns the value or raises ValueError (or
    a VitlabError) with the reason; ``kind`` says what is allowed; ``examples`` are valid texts."""

    kind: str
    parse: Callable[[str], Any]
    examples: tuple[str, ...]

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.kind

    def __call__(self, text: str) -> Any:
        try:
            return self.parse(text)
        except (ValueError, OverflowError, OSError, VitlabError) as e:
            python_says = str(e).startswith(("invalid literal", "could not convert"))  # int("big"): says no more
            why = f" ({e})" if str(e) and not python_says else ""
            raise argparse.ArgumentTypeError(f"expected {self.kind}, got {text!r}{why}") from e


# ------------------------------------------------------------------------------------------------ numbers


def integer(low: int, high: int | None = None, kind: str | None = None, examples: Sequence[str] = ()) -> Domain:
    """An integer in [low, high] (no upper bound when high is None)."""
    def parse(text: str) -> int:
        value = int(text.strip())
        if value < low or (high is not None and value > high):
            raise ValueError("out of range")
        return value

    kind = kind or (f"an integer >= {low}" if high is None else f"an integer {low}..{high}")
    return Domain(kind, parse, tuple(examples) or (str(low), str(low + 1)))


def real(low: float, high: float, low_open: bool = False, high_open: bool = False, kind: str | None = None,
         examples: Sequence[str] = ()) -> Domain:
    """A finite float in the interval from low to high (open at an end when asked)."""
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise ValueError("out of range")
        return value

    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Domain(kind or f"a finite number in {interval}", parse, tuple(examples) or (f"{low:g}",))


POSITIVE = integer(1, 10**9, kind="a positive integer")
NON_NEGATIVE = integer(0, 10**9, kind="an integer >= 0")
LAYER = integer(-1000, 999, kind="a block index (negative counts from the end)", examples=("-1", "0"))
PORT = integer(0, 65535, kind="a port number 0..65535 (0: any free port)", examples=("8000", "0"))
FRACTION = real(0, 1, high_open=True, kind="a fraction in [0, 1)", examples=("0", "0.5"))
POSITIVE_REAL = real(0, 1e30, low_open=True, kind="a finite number > 0", examples=("1", "0.01"))
OPSET = integer(18, 30, kind="an ONNX opset 18..30", examples=("18",))


def _shot_counts(text: str) -> list[int]:
    counts = sorted({int(t) for t in text.split(",") if t.strip()})
    if not counts or counts[0] < 1 or counts[-1] > 100_000:
        raise ValueError("each a whole number of images per class, 1..100000")
    return counts


SHOT_COUNTS = Domain("comma-separated shot counts such as 1,5,10,25", _shot_counts, ("1,5", "2"))


# ------------------------------------------------------------------------------------------------ image sizes


def _image_size(text: str) -> int | tuple[int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise ValueError("sides must be positive")
    h, w = parts[0], parts[-1]
    if max(h, w) > MAX_IMAGE_SIDE:
        gib = 3 * h * w * 4 / 2**30
        raise ValueError(f"one {h}x{w} image alone is {gib:,.1f} GiB as float32, before any token; at most "
                         f"{MAX_IMAGE_SIDE} px a side")
    return h if len(parts) == 1 else (h, w)


IMAGE_SIZE = Domain(f"an image size like 384 or 384x512 (at most {MAX_IMAGE_SIDE} a side)", _image_size,
                    ("32", "32x48"))


def _image_sizes(text: str) -> list[int | tuple[int, int]]:
    sizes = [_image_size(t) for t in text.split(",") if t.strip()]
    if not sizes:
        raise ValueError("no size given")
    return sizes


IMAGE_SIZES = Domain(f"comma-separated image sizes like 224,384x512 (at most {MAX_IMAGE_SIDE} a side)", _image_sizes,
                     ("32", "32,48x32"))


# ------------------------------------------------------------------------------------------------ text and names


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    if any(unicodedata.category(c) == "Cc" for c in text):  # NUL, newline, escape...: no name has them
        raise ValueError("it holds control characters")
    return text


TEXT = Domain("a non-empty name", _text, ("vit_tiny_patch16_224", "B/16"))
MODEL = Domain("a checkpoint path, a registered model name or alias, or an hf-hub:org/repo id", _text,
               ("Ti/4@32",))


def _run_name(text: str) -> str:
    _text(text)
    if "/" in text or os.sep in text or text in (".", ".."):
        raise ValueError("a run folder's name, without '/'")
    return text


RUN_NAME = Domain("a run folder name (no '/')", _run_name, ("run1", "my-run"))


def _head(text: str) -> int | str:
    if text in ("mean", "max", "min"):
        return text
    value = int(text)
    if not 0 <= value < 1000:
        raise ValueError("a head index 0..999")
    return value


HEAD = Domain("a head index, or mean, max or min", _head, ("mean", "0", "max"))


def _data(text: str) -> str:
    from vitlab.data import NAMES

    if text in NAMES:
        return text
    if text.startswith("folder:") and text[len("folder:"):].strip():
        return text
    raise ValueError(f"one of {', '.join(NAMES)} or folder:PATH")


DATA = Domain("a data set: shapes, cifar10, cifar100 or folder:PATH", _data, ("shapes",))


def _setting(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` with FIELD a ViTConfig field; VALUE read as JSON when it parses (``none``: None), else as a
    string."""
    from vitlab.config import ViTConfig

    field, sep, value = text.partition("=")
    fields = [f.name for f in dataclasses.fields(ViTConfig)]
    if not sep or field not in fields:
        raise ValueError(f"FIELD one of {', '.join(fields)}")
    try:
        parsed = None if value in ("none", "None") else json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    from vitlab.config import check_field

    check_field(field, parsed)  # its type and range, as vitlab.load checks them (a ConfigError says which)
    return field, parsed


CONFIG_SETTING = Domain("FIELD=VALUE with FIELD a ViTConfig field", _setting, ("mlp_act=quick_gelu",))


def _recipe(text: str) -> str:
    from vitlab.train.config import recipe_path

    recipe_path(_text(text))  # a ConfigError lists the built-in recipes
    return text


RECIPE = Domain("a built-in recipe name (vitlab/recipes/*.toml)", _recipe, ("demo", "finetune"))


def _override(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip() or any(not c.isprintable() for c in text):
        raise ValueError("KEY=VALUE, e.g. optim.lr=3e-4")
    return text


OVERRIDE = Domain("KEY=VALUE, e.g. optim.lr=3e-4", _override, ("seed=1", "amp=auto", "optim.lr=3e-4"))


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a torch device this machine has, or None."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        return "not a device name"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine; use --device cpu"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine; use --device cpu"
    return None


def _device(text: str) -> str:
    if problem := device_problem(text):
        raise ValueError(problem)
    return text


DEVICE = Domain("a torch device this machine has: cpu, cuda, cuda:1, mps", _device, ("cpu",))


def _host(text: str) -> str:
    _text(text)
    try:
        socket.getaddrinfo(text, None)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"not an address or a name this machine resolves: {e}") from e
    return text


HOST = Domain("an address or host name to listen on", _host, ("127.0.0.1", "localhost"))


# ------------------------------------------------------------------------------------------------ paths


def _existing(text: str, want: str) -> str:
    _text(text)
    path = Path(text)
    if not path.exists():
        raise ValueError("no such file or folder")
    if want == "file" and not path.is_file():
        raise ValueError("not a file")
    if want == "folder" and not path.is_dir():
        raise ValueError("not a folder")
    return text


INPUT_FILE = Domain("an existing file", lambda text: _existing(text, "file"), ())
INPUT_FOLDER = Domain("an existing folder", lambda text: _existing(text, "folder"), ())
IMAGE_FILE = Domain("an image file", _text, ())  # a missing or bad one is reported per file, the others run


def _output_file(text: str) -> str:
    _text(text)
    check_writable(text, "output file")
    return text


def _output_folder(text: str) -> str:
    _text(text)
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder")
    check_writable(path / ".vitlab-write-check", "output folder")
    return text


OUTPUT_FILE = Domain("a file path that can be written", _output_file, ())
OUTPUT_FOLDER = Domain("a folder that can be made or written to", _output_folder, ())

FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps")  # matplotlib writes


def _figure_file(text: str) -> str:
    if Path(text).suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"a figure's suffix is one of {', '.join(FIGURE_SUFFIXES)}")
    return _output_file(text)


def _figure_path(text: str) -> str:
    return _figure_file(text) if Path(text).suffix else _output_folder(text)


FIGURE_FILE = Domain("a figure file to write (.png, .pdf, .svg, ...)", _figure_file, ())
FIGURE_PATH = Domain("a figure file to write (.png, .pdf, .svg, ...) or a folder for several", _figure_path, ())
