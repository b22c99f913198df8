"""Issue 25's cases in fewshot, probe, the option domains and the command line's error handling, each through the
command line (each failed on 017cab9). The other cases are in tests/test_faults_{runs,explore,convert}.py, the
decode paths in tests/test_fuzz_images.py, every option in tests/test_fuzz_cli.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitlab
from vitlab.cli import main
from vitlab.errors import DataError, UsageError

ERROR_LINE = re.compile(r"^vitlab: error: [^\n]+$")
pytestmark = pytest.mark.usefixtures("one_thread")


def one_error(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]) and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = vitlab.create_model("Ti/4@32", depth=1, num_classes=3)
    model.class_names = ["cat", "dog", "eel"]
    return vitlab.save(model, tmp_path_factory.mktemp("model") / "m.safetensors")


def folder3(root: Path, broken: dict[str, int] | None = None, per_class: int = 6) -> Path:
    """``root/{train,test}/{cat,dog,eel}/`` of 24 px images; ``broken[c]`` training files of class c are text."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in ("cat", "dog", "eel"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                path = root / split / c / f"{i}.png"
                if split == "train" and i < (broken or {}).get(c, 0):
                    path.write_text("not an image")
                else:
                    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return root


# fewshot: silent wrong numbers


@pytest.mark.parametrize("shots", ["-1", "0", "1,-1", "", "1.5"])
def test_fewshot_refuses_a_shot_count_below_one(capsys, tmp_path, checkpoint, shots):
    """017cab9: --shots -1 printed '-1-shot 1.0000' (it used all but one image per class)."""
    assert main(["fewshot", "--checkpoint", str(checkpoint), "--data", f"folder:{folder3(tmp_path)}",
                 "--shots", shots]) == 2
    assert f"argument --shots: expected comma-separated shot counts such as 1,5,10,25, got {shots!r}" in \
        one_error(capsys)


@pytest.mark.parametrize("l2", ["nan", "-1", "0", "inf"])
def test_fewshot_refuses_an_l2_reg_that_is_not_a_finite_positive_number(capsys, tmp_path, checkpoint, l2):
    """017cab9: nan printed chance for every shot count, -1 printed 0.0000, 0 was a traceback (singular matrix)."""
    assert main(["fewshot", "--checkpoint", str(checkpoint), "--data", f"folder:{folder3(tmp_path)}",
                 "--l2-reg", l2]) == 2
    assert f"argument --l2-reg: expected a finite number > 0, got {l2!r}" in one_error(capsys)


def test_the_fewshot_functions_refuse_what_the_command_line_refuses():
    import torch

    from vitlab.evaluate import fewshot, ridge_probe_accuracy

    x, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    for l2 in (float("nan"), -1.0, 0.0):
        with pytest.raises(UsageError, match="l2_reg must be a finite number > 0"):
            ridge_probe_accuracy(x, y, x, y, l2)
    with pytest.raises(UsageError, match="shots must be >= 1"):
        fewshot(x, y, x, y, [-1])


@pytest.mark.parametrize("broken_class", ["eel", "dog"])  # the last class and a middle one: one rule
@pytest.mark.parametrize("command", ["fewshot", "probe"])
def test_a_class_whose_training_images_all_fail_to_decode_is_an_error_naming_it(capsys, tmp_path, checkpoint,
                                                                                 command, broken_class):
    """017cab9: fewshot with the last class broken exited 0 with '1-shot 0.6667' (fit for 2 of 3 classes, that
    class's test images counted wrong), a middle class was an error naming 'class 1'; probe silently made a
    class it could never predict."""
    data = folder3(tmp_path / "d", broken={broken_class: 6})
    before = snapshot(tmp_path)
    extra = ["--shots", "1", "--seeds", "1"] if command == "fewshot" else []
    assert main([command, "--checkpoint", str(checkpoint), "--data", f"folder:{data}", *extra]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0].startswith("vitlab: warning: ") and "skipped 6 of 18 files that do not decode" in lines[0], err
    assert len(lines) == 2 and ERROR_LINE.match(lines[1]) and "Traceback" not in err, err
    assert f"'{broken_class}' has 0" in lines[1] and "class 2" not in lines[1] and "class 1" not in lines[1]
    assert "shot" not in out and "top-1" not in out  # no figure printed
    assert snapshot(tmp_path) == before


def test_a_class_with_fewer_decodable_images_than_shots_is_named_by_its_folder(capsys, tmp_path, checkpoint):
    data = folder3(tmp_path, broken={"dog": 4})  # 2 of 6 decode
    assert main(["fewshot", "--checkpoint", str(checkpoint), "--data", f"folder:{data}", "--shots", "1,3"]) == 2
    out, err = capsys.readouterr()
    assert "3-shot needs 3 training image(s) per class" in err and "'dog' has 2" in err and "shot " not in out


def test_a_skipped_file_is_one_warning_line_and_the_figures_follow(capsys, tmp_path, checkpoint):
    """017cab9 printed the skip as a raw Python warning with its source line."""
    data = folder3(tmp_path, broken={"cat": 1})
    assert main(["fewshot", "--checkpoint", str(checkpoint), "--data", f"folder:{data}", "--shots", "1,2",
                 "--seeds", "2"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("vitlab: warning: ") and "cat/0.png" in err, err
    figures = [float(v) for v in re.findall(r"-shot\s+([0-9.]+)", out)]
    assert len(figures) == 2 and all(0 <= f <= 1 for f in figures)


def test_linear_probe_refuses_a_class_without_training_images():
    import torch

    from vitlab.evaluate import linear_probe

    x, y = torch.randn(8, 4), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(DataError, match="'c' has 0"):
        linear_probe(x, y, x, y, class_names=["a", "b", "c"])
    with pytest.raises(DataError, match="at least 2 training images"):
        linear_probe(x[:1], y[:1], x, y)


# tracebacks at the command line, now one line at parse time (before any model loads)


@pytest.mark.parametrize("argv,message", [
    (["fewshot", "--checkpoint", "{ckpt}", "--data", "shapes", "--img-size", "1000000"],
     "argument --img-size: expected an image size like 384 or 384x512 (at most 4096 a side), got '1000000' "
     "(one 1000000x1000000 image alone is 11,175.9 GiB as float32"),
    (["probe", "--checkpoint", "{ckpt}", "--data", "shapes", "--train-images", "1"],
     "argument --train-images: expected an integer 2..1000000000, got '1'"),
    (["explore", "--model", "{ckpt}", "--port", "70000"], "argument --port: expected a port number 0..65535"),
    (["explore", "--model", "{ckpt}", "--port", "-1"], "argument --port: expected a port number 0..65535"),
    (["explore", "--model", "{ckpt}", "--shapes", "100000000000"], "argument --shapes: expected an integer 0..1000"),
    (["explore", "--model", "{ckpt}", "--host", "no-such-host.invalid"], "argument --host: expected an address"),
    (["attention", "x.png", "--model", "{ckpt}", "--discard-ratio", "nan"], "argument --discard-ratio: expected a "
     "fraction in [0, 1)"),
    (["complexity", "--model", "B/16", "--plot", "{tmp}/cost.txt"], "argument --plot: expected a figure file"),
    (["predict", "x.png", "--model", "{ckpt}", "--topk", "0"], "argument --topk/-k: expected a positive integer"),
])
def test_a_value_outside_an_options_domain_is_one_line_naming_option_value_and_domain(capsys, tmp_path, checkpoint,
                                                                                      argv, message):
    before = snapshot(tmp_path)
    argv = [a.replace("{ckpt}", str(checkpoint)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    line = one_error(capsys)
    assert line.startswith(f"vitlab: error: {argv[0]}: ") and message in line, line
    assert line.endswith(f"(see `vitlab {argv[0]} --help`)")
    assert snapshot(tmp_path) == before


# the command line's error handling: a VitlabError is the user's, anything else a bug


def test_a_bug_is_an_internal_error_with_its_traceback(capsys, monkeypatch, checkpoint):
    import vitlab.cli.models as models

    def broken(**kwargs):
        return {}["a bug"]

    monkeypatch.setattr(models, "info", broken)
    monkeypatch.setattr("vitlab.cli.build_parser", _parser_with(models, "info", broken))
    assert main(["info", str(checkpoint)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("vitlab: internal error: KeyError: 'a bug'. This is a bug in vitlab; please report it")
    assert "Traceback (most recent call last)" in err


def _parser_with(module, name, fn):
    from vitlab.cli import build_parser as real

    def build():
        parser = real()
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        sub.choices[name].set_defaults(func=fn)
        return parser

    return build


@pytest.mark.parametrize("raised,code,expected", [
    (DataError("the data set is empty; add images"), 2, "vitlab: error: the data set is empty; add images"),
    (PermissionError(13, "Permission denied", "/root/x"), 2, "vitlab: error: /root/x: Permission denied"),
    (MemoryError(), 2, "vitlab: error: out of memory"),
    (OSError(5, "Input/output error"), 3, "vitlab: internal error: OSError"),  # names no file: not the user's
    (ValueError("a plain ValueError"), 3, "vitlab: internal error: ValueError: a plain ValueError"),
])
def test_what_the_command_line_makes_of_each_kind_of_exception(capsys, monkeypatch, checkpoint, raised, code,
                                                                expected):
    def fail(**kwargs):
        raise raised

    import vitlab.cli.models as models

    monkeypatch.setattr("vitlab.cli.build_parser", _parser_with(models, "info", fail))
    assert main(["info", str(checkpoint)]) == code
    err = capsys.readouterr().err
    assert err.startswith(expected), err
    assert ("Traceback" in err) == (code == 3)


@pytest.mark.slow  # starts a Python process, as a terminal runs the command
def test_a_file_name_that_is_not_utf8_prints_escaped(tmp_path, checkpoint):
    """A real terminal's stdout is strict UTF-8: printing such a name was a UnicodeEncodeError."""
    name = os.fsencode(tmp_path) + b"/caf\xe9.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(os.fsdecode(name))
    result = subprocess.run([sys.executable, "-m", "vitlab", "predict", name, "--model", str(checkpoint)],
                            capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=120)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert b"caf\\udce9.png" in result.stdout


@pytest.mark.parametrize("where", ["/proc/vitlab-test/figures.json", "{tmp}/a-file/figures.json"])
def test_an_unwritable_probe_out_is_found_before_any_work(capsys, tmp_path, checkpoint, where):
    """017cab9 found it after extracting every feature and fitting, and named the hidden temporary file."""
    (tmp_path / "a-file").write_text("a file, not a folder")
    out = where.replace("{tmp}", str(tmp_path))
    before = snapshot(tmp_path)
    assert main(["probe", "--checkpoint", str(checkpoint), "--data", "folder:/no/such/data", "--out", out]) == 2
    line = one_error(capsys)
    assert "argument --out: expected a file path that can be written" in line and out in line and ".tmp" not in line
    assert snapshot(tmp_path) == before
