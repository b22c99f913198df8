"""The fault campaign's image, usage and run-folder cases that vitlab already handled (issue 12), kept as a corpus
of regression guards run through the command line.

Each case is made in tmp_path and asserts what a user sees: the exit status, one error line per problem
(``vitlab: error: ...``, no traceback) naming it, and that nothing else changed (every file in the folder as it
was). Images that do not decode make ``predict`` and ``attention`` go on with the others and exit 1; every other
user error exits 2.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import randomize_
from PIL import Image

import vitlab
from vitlab.cli import main

ERROR_LINE = re.compile(r"^vitlab: error: [^\n]+$")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model(tmp_path) -> Path:
    return vitlab.save(randomize_(vitlab.create_model("Ti/4@32", depth=1)), tmp_path / "m.safetensors")


def good(tmp_path: Path, name: str = "good.png") -> Path:
    path = tmp_path / name
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(path)
    return path


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Images that do not decode: one error line each, the good image still classified, exit 1.
BAD_IMAGES = {
    "text_file": lambda d: write(d / "notes.png", b"this is not an image\n"),
    "empty_file": lambda d: write(d / "empty.jpg", b""),
    "truncated_jpeg": lambda d: write(d / "cut.jpg", (good(d, "full.jpg").read_bytes()[:200])),
    "missing_file": lambda d: d / "nowhere.png",
    "a_folder": lambda d: (d / "folder.png").mkdir() or d / "folder.png",
}


@pytest.mark.parametrize("command", ["predict", "attention"])
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_an_image_that_does_not_decode_is_one_line_and_the_rest_still_run(capsys, tmp_path, model, command, case):
    images = tmp_path / "images"
    images.mkdir()
    ok, bad = good(images), BAD_IMAGES[case](images)
    before = snapshot(tmp_path)
    argv = [command, str(ok), str(bad), "--model", str(model)]
    code = main(argv + (["--out", str(tmp_path / "figures")] if command == "attention" else []))
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 1 and "Traceback" not in err, err
    assert len(lines) == 2 and all(ERROR_LINE.match(line) for line in lines), err  # the file's line, the summary
    assert bad.name in lines[0] and "1 of 2 image(s) could not be read" in lines[1]
    assert str(ok) in out  # the good image was classified (or drawn)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("figures")} == before


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16"])
def test_any_image_mode_is_classified(capsys, tmp_path, model, mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    img = rgb.convert("L").convert(mode) if mode in ("LA", "I;16") else rgb.convert(mode)
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    img.save(path)
    assert main(["predict", str(path), "--model", str(model)]) == 0
    assert capsys.readouterr().err == ""


USAGE_ERRORS = [
    (["predict", "x.png", "--model", "vit_gigantic_patch16_224"], "vit_gigantic_patch16_224"),
    (["predict", "x.png", "--model", "B/16", "--device", "cuda:7"], "--device"),
    (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["train", "--recipe", "demo", "--set", "optim.lrr=1"], "unknown key 'optim.lrr'"),
    (["train", "--recipe", "demo", "--set", "epochs=ten"], "epochs: expected an integer"),
    (["train", "--config", "{tmp}/missing.toml"], "missing.toml' (no such file or folder)"),
    (["train", "--resume", "{tmp}"], "config.json"),
    (["eval", "--checkpoint", "{model}", "--data", "folder:{tmp}/no-such-folder"], "no-such-folder"),
    (["eval", "--checkpoint", "{model}", "--data", "imagenet-22k"], "imagenet-22k"),
    (["fewshot", "--checkpoint", "{model}", "--data", "shapes", "--shots", "one"],
     "argument --shots: expected comma-separated shot counts such as 1,5,10,25, got 'one'"),
    (["convert", "{model}", "{tmp}/out.txt"], "cannot tell the output format"),
    (["complexity", "--model", "B/16", "--img-size", "100"], "not divisible by the patch size 16"),
]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in
                                                            enumerate(USAGE_ERRORS)])
def test_a_usage_error_is_one_line_and_changes_nothing(capsys, tmp_path, model, argv, message):
    before = snapshot(tmp_path)
    code = main([a.format(tmp=tmp_path, model=model) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert ERROR_LINE.match(err.rstrip("\n")) and err.count("\n") == 1, err
    assert message in err, err
    assert snapshot(tmp_path) == before


def test_a_run_folder_that_is_not_empty_is_refused_and_left_alone(capsys, tmp_path):
    run = write(tmp_path / "runs" / "mine" / "notes.txt", b"my notes").parent
    before = snapshot(tmp_path)
    code = main(["train", "--recipe", "demo", "--out", str(tmp_path / "runs"), "--name", "mine", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not empty" in err and f"--resume {run}" in err, err
    assert snapshot(tmp_path) == before
