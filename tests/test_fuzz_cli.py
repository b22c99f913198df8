"""A fuzz harness over every option of every subcommand (issue 25), with Hypothesis.

The parser is enumerated, not listed by hand: a new option without a domain (vitlab/cli/domains.py), ``choices``
or a flag fails :func:`test_every_option_has_a_domain`, and every option is fuzzed the day it lands. For each
option, values are drawn from its domain's examples, from hostile values (0, negative, NaN, inf, huge, empty,
non-UTF-8 and HTML/JS text, paths that are missing, folders, under a regular file, on /proc) and from arbitrary
text, and put into a cheap valid command line of its subcommand. Whatever is drawn, the command must:

- exit 0, 1 or 2, with no traceback (an internal error fails the test);
- on exit 2, print exactly one ``vitlab: error:`` line, the last line on stderr;
- print only finite accuracies in [0, 1] and finite losses;
- change no file it was not asked to write (the inputs: checkpoint, images, data folder, config, run folder).

Tiers: the non-slow tier runs a few derandomized examples per option, the subcommands that take more than a
second (attention, probe, explore, train, demo, analyze, export) only through the parser; the slow tier
(``-m slow``) runs many examples of every option
through the whole command. ``VITLAB_FUZZ_EXAMPLES=N`` sets the number of examples per option of the slow tier
(default 6) for a longer campaign.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitlab
from vitlab.cli import build_parser, main
from vitlab.cli.domains import Domain

pytestmark = pytest.mark.usefixtures("one_thread")

# Run whole in the non-slow tier (each well under a second); the others there only through the parser.
CHEAP = {"models", "info", "complexity", "convert", "predict", "eval", "fewshot"}
HOSTILE = ["", " ", "0", "-1", "-0", "1.5", "1e309", "nan", "inf", "-inf", "99999999999999999999999", "abc",
           "a<!--<script>.png", "</script><img src=x onerror=alert(1)>", "\u2028\u2029", "\udcff\udcfe.png",
           "Ωmega ✓", "x" * 300, "a=b", "{tmp}/missing.png", "{tmp}", "{file}/below-a-file", "/proc/vitlab-fuzz/x",
           "/proc/self/status", "/dev/null"]
NUMBER = r"([-+]?(?:\d[\d.]*(?:e[-+]?\d+)?|nan|inf))"
ACCURACY = re.compile(r"(?:top-1|top-5|accuracy|\d+-shot)\s+" + NUMBER, re.IGNORECASE)
LOSS = re.compile(r"\bloss[ =:]+" + NUMBER, re.IGNORECASE)


def parser_options() -> list[tuple[str, argparse.Action]]:
    """(subcommand, action) for every option and positional of every subcommand, help excluded."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [(name, action) for name, parser in sub.choices.items() for action in parser._actions
            if not isinstance(action, argparse._HelpAction)]


def option_id(command: str, action: argparse.Action) -> str:
    return f"{command} {action.option_strings[0] if action.option_strings else action.dest}"


OPTIONS = parser_options()


def is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0


def test_every_option_has_a_domain():
    """Every option is a flag, has choices, or its type is a Domain: a new option without one fails here."""
    missing = [option_id(c, a) for c, a in OPTIONS
               if not (is_flag(a) or a.choices is not None or isinstance(a.type, Domain))]
    assert not missing, f"options without a domain (give them a type from vitlab/cli/domains.py): {missing}"
    assert len({c for c, _ in OPTIONS}) == 14  # every subcommand enumerated


# ------------------------------------------------------------------------------------------------ the world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """A tiny ViT checkpoint with class names, a 3-class image folder, an image, a training config and a run."""
    root = tmp_path_factory.mktemp("fuzz")
    model = vitlab.create_model("Ti/4@32", depth=1, num_classes=3)
    model.class_names = ["circle", "square", "<b>tri</b>"]
    ckpt = vitlab.save(model, root / "m.safetensors")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("circle", "square", "tri"):
            (root / "folder3" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    root / "folder3" / split / c / f"{i}.png")
    image = root / "image.png"
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(image)
    (root / "a-file").write_text("a regular file")
    toml = root / "tiny.toml"  # 2 steps of a 1-block ViT
    toml.write_text(f'epochs = 1\nmax_steps = 2\nlog_every_steps = 1\n[model]\nname = "vit_tiny_patch4_32"\n'
                    f'overrides = {{ embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 32 }}\n'
                    f'[data]\ndataset = "folder:{root / "folder3"}"\nbatch_size = 4\n')
    return {"tmp": str(root), "ckpt": str(ckpt), "folder": str(root / "folder3"), "img": str(image),
            "toml": str(toml), "run": str(root / "run"), "file": str(root / "a-file")}


BASE = {  # a cheap valid command line of each subcommand; {out} is the command's own output folder
    "models": ["models"],
    "info": ["info", "{ckpt}"],
    "complexity": ["complexity", "--model", "Ti/4@32"],
    "convert": ["convert", "{ckpt}", "{out}/c.safetensors"],
    "export": ["export", "--model", "{ckpt}", "--out", "{out}/m.onnx"],
    "predict": ["predict", "{img}", "--model", "{ckpt}"],
    "attention": ["attention", "{img}", "--model", "{ckpt}", "--out", "{out}/a.png"],
    "train": ["train", "--config", "{toml}", "--out", "{out}", "--no-progress"],
    "eval": ["eval", "--checkpoint", "{ckpt}", "--data", "folder:{folder}", "--out", "{out}/eval"],
    "fewshot": ["fewshot", "--checkpoint", "{ckpt}", "--data", "folder:{folder}", "--shots", "1,2", "--seeds", "2"],
    "probe": ["probe", "--checkpoint", "{ckpt}", "--data", "folder:{folder}"],
    "analyze": ["analyze", "--checkpoint", "{ckpt}", "--data", "folder:{folder}", "--images", "6",
                "--probe-images", "6", "--out", "{out}/an", "--no-progress"],
    "explore": ["explore", "--model", "{ckpt}", "--export", "{out}/p.html", "{img}"],
    "demo": ["demo", "--out", "{out}", "--no-progress"],
}
ALTERNATIVE_BASE = {  # options that make sense only without something of BASE
    ("train", "--recipe"): ["train", "--out", "{out}", "--no-progress", "--set", "max_steps=1"],
    ("train", "--resume"): ["train", "--no-progress", "--resume", "{run}"],
    **{("explore", o): ["explore", "--model", "{ckpt}"] for o in ("--host", "--port", "--images", "--shapes")},
}
POSITIONAL = {  # where each positional stands in its BASE (None: added at the end)
    ("models", "pattern"): None, ("info", "checkpoint"): 1, ("convert", "src"): 1, ("convert", "dst"): 2,
    ("predict", "images"): 1, ("attention", "images"): 1, ("explore", "export_images"): 5,
}


def fill(text: str, fields: dict[str, str]) -> str:
    for key, value in fields.items():
        text = text.replace("{" + key + "}", value)
    return text


def command_line(command: str, action: argparse.Action, value: str | None, fields: dict[str, str]) -> list[str]:
    """BASE of ``command`` with ``action`` set to ``value`` (replaced where BASE has it, else added)."""
    name = action.option_strings[0] if action.option_strings else action.dest
    argv = [fill(a, fields) for a in ALTERNATIVE_BASE.get((command, name), BASE[command])]
    value = None if value is None else fill(value, fields)
    if not action.option_strings:
        index = POSITIONAL[(command, action.dest)]  # a KeyError: a new positional, to be placed here
        if index is None:
            return [*argv, value]
        argv[index] = value
        return argv
    for i, a in enumerate(argv):
        if a in action.option_strings:
            if not is_flag(action):
                argv[i + 1] = value
            return argv
    return argv + ([name] if is_flag(action) else [name, value])


def world_examples(domain: Domain) -> list[str]:
    """Valid values of a domain in the harness's world: its files stand in for the generic examples."""
    from vitlab.cli import domains as d

    return {d.DATA: ["folder:{folder}", "shapes"], d.MODEL: ["{ckpt}", "Ti/4@32"], d.INPUT_FOLDER: ["{folder}"],
            d.INPUT_FILE: ["{toml}"], d.IMAGE_FILE: ["{img}"], d.OUTPUT_FILE: ["{out}/new.file"],
            d.OUTPUT_FOLDER: ["{out}/new-folder"], d.FIGURE_FILE: ["{out}/fig.png"],
            d.FIGURE_PATH: ["{out}/fig.png", "{out}/figures"]}.get(domain, list(domain.examples))


def values(action: argparse.Action) -> st.SearchStrategy[str | None]:
    if is_flag(action):
        return st.none()
    valid = list(action.choices) if action.choices is not None else world_examples(action.type)
    return st.one_of(st.sampled_from(valid + HOSTILE) if valid else st.sampled_from(HOSTILE),
                     st.text(max_size=12))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "out-" not in str(p)}


def check_run(capsys, world: dict[str, str], argv: list[str], run: bool) -> None:
    """Run (or, with ``run`` False, only parse) ``argv`` and assert what every command must do."""
    root = Path(world["tmp"])
    before = snapshot(root)
    if run:
        code = main(argv)
    else:
        try:
            build_parser().parse_args(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    out, err = capsys.readouterr()
    shown = f"argv={argv!r}\nexit {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
    assert code in (0, 1, 2), shown
    assert "Traceback" not in err and "internal error" not in err, shown
    lines = err.splitlines()
    if code == 2:
        errors = [line for line in lines if line.startswith("vitlab: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], shown
    for match in ACCURACY.finditer(out):
        value = float(match.group(1))
        assert math.isfinite(value) and 0 <= value <= 1, shown
    for match in LOSS.finditer(out):
        assert math.isfinite(float(match.group(1))), shown
    assert not re.search(r"\b(nan|inf)\b", out.lower()) or "nan" in " ".join(argv).lower(), shown
    after = snapshot(root)
    changed = [p for p in before if after.get(p) != before[p] and not p.startswith(world["run"])]
    assert not changed, f"{shown}\nchanged inputs: {changed}"


def fuzz(capsys, monkeypatch, world, command, action, value, run) -> None:
    out = Path(world["tmp"]) / f"out-{os.urandom(4).hex()}"
    cwd = out / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)  # default outputs (attention-*.png, runs/) land in the command's own folder
    fields = {**world, "out": str(out)}
    if command == "train" and run:  # a resume writes into its run: a copy of its own
        shutil.copytree(trained_run(world), out / "run")
        fields["run"] = str(out / "run")
    check_run(capsys, world, command_line(command, action, value, fields), run)


def trained_run(world: dict[str, str]) -> str:
    """A run folder of the tiny config (trained once, on first use)."""
    run = Path(world["tmp"]) / "run"
    if not run.exists():
        assert main(["train", "--config", world["toml"], "--out", world["tmp"], "--name", "run", "--no-progress"]) == 0
    return str(run)


def _no_serving(*args, **kwargs) -> None:
    """The explorer's server loop, replaced: the harness checks everything up to serving, then stops."""


@pytest.fixture
def offline(monkeypatch):
    """No hub, no serving loop, and a demo of two steps of a 1-block ViT (the demo recipe trains for a minute)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # --pretrained and hub ids fail at once, as without internet
    import vitlab.train.config as train_config

    real_load_config = train_config.load_config

    def short_demo(recipe=None, config_file=None, overrides=()):
        extra = ["max_steps=2", "model.overrides={embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 32}"]
        return real_load_config(recipe, config_file, [*overrides, *(extra if recipe == "demo" else [])])

    monkeypatch.setattr(train_config, "load_config", short_demo)
    import vitlab.explore.server as server

    monkeypatch.setattr(server, "run_server", _no_serving, raising=False)
    monkeypatch.setattr(server, "serve", _no_serving)


@pytest.mark.parametrize("command,action", OPTIONS, ids=[option_id(c, a) for c, a in OPTIONS])
def test_fuzz_every_option(capsys, monkeypatch, world, offline, command, action):
    """A few derandomized draws per option; the expensive subcommands only through the parser."""

    @settings(max_examples=3, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(value=values(action))
    def draw(value):
        fuzz(capsys, monkeypatch, world, command, action, value, run=command in CHEAP)

    draw()


@pytest.mark.slow
@pytest.mark.parametrize("command,action", OPTIONS, ids=[option_id(c, a) for c, a in OPTIONS])
def test_fuzz_every_option_deep(capsys, monkeypatch, world, offline, command, action):
    """Many draws per option, every subcommand run whole."""
    examples = int(os.environ.get("VITLAB_FUZZ_EXAMPLES", "6"))
    examples = min(examples, 3) if command in ("demo", "analyze", "export") else examples

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(value=values(action))
    def draw(value):
        fuzz(capsys, monkeypatch, world, command, action, value, run=True)

    draw()
