"""Image fuzz (issue 25): byte mutations of valid PNG, JPEG, GIF, TIFF, WebP and BMP files, with a fixed seed,
through every decode path: ``vitlab.load_image``, the folder data set in memory and streamed, ``predict`` and
``attention``, and the explorer (upload, ``--images`` and ``--export``).

Whatever the bytes, each path gives a decoded image or one error naming the file (``UndecodableImage``, a
``DataError``): never another exception, and never a stop before the next image. PIL raises OSError, SyntaxError
and ValueError for most broken files, but TypeError, struct.error, IndexError, NotImplementedError... for some;
the mutations find them. The non-slow tier runs a few derandomized mutants per format; ``-m slow`` many.
``VITLAB_FUZZ_EXAMPLES=N`` sets the slow tier's mutants per format (default 60).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitlab
from vitlab.cli import main
from vitlab.data import load_dataset
from vitlab.data.datasets import SMALL_IMAGE_MAX
from vitlab.errors import DataError, UndecodableImage

FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "tif": "TIFF", "webp": "WEBP", "bmp": "BMP"}
FAST, DEEP = 6, int(os.environ.get("VITLAB_FUZZ_EXAMPLES", "60"))
ERROR_LINE = re.compile(r"^vitlab: error: [^\n]+$")


def valid_bytes(suffix: str, size: tuple[int, int] = (24, 20)) -> bytes:
    """A small valid image file of the format, with enough structure (a gradient, noise) to mutate."""
    rng = np.random.default_rng(0)
    h, w = size
    pixels = (np.arange(h * w * 3).reshape(h, w, 3) * 7 % 256).astype(np.uint8) ^ rng.integers(0, 32, (h, w, 3),
                                                                                                 dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, FORMATS[suffix])
    return buffer.getvalue()


def mutate(data: bytes, seed: int) -> bytes:
    """One mutant of ``data``: byte flips, a truncation, a repeated or inserted chunk, or a header field set to an
    extreme value, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    kind = seed % 5
    if kind == 0:  # flip a few bytes anywhere
        for i in rng.integers(0, len(buf), rng.integers(1, 9)):
            buf[i] = int(rng.integers(0, 256))
    elif kind == 1:  # truncate
        del buf[int(rng.integers(1, len(buf))):]
    elif kind == 2:  # a chunk repeated or random bytes inserted
        at = int(rng.integers(0, len(buf)))
        n = int(rng.integers(1, 64))
        buf[at:at] = bytes(buf[at:at + n]) if rng.random() < 0.5 else rng.bytes(n)
    elif kind == 3:  # the header: a field set to 0x00, 0x7f or 0xff
        for i in rng.integers(0, min(64, len(buf)), rng.integers(1, 4)):
            buf[i] = int(rng.choice([0x00, 0x7F, 0xFF]))
    else:  # flips after the header: the pixel data
        start = min(32, len(buf) - 1)
        for i in rng.integers(start, len(buf), rng.integers(1, 17)):
            buf[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf)


def check_load(path: Path) -> bool:
    """``load_image`` gives an RGB image or an error naming the file; True when it decoded."""
    try:
        img = vitlab.load_image(path)
    except (UndecodableImage, DataError) as e:
        assert path.name in str(e) and "\n" not in str(e), str(e)
        return False
    assert img.mode == "RGB" and img.size[0] > 0 and img.size[1] > 0
    return True


def fuzz_settings(examples: int):
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def fuzz_load_image(tmp_path: Path, suffix: str, examples: int) -> None:
    original = valid_bytes(suffix)

    @fuzz_settings(examples)
    @given(seed=st.integers(0, 2**31))
    def draw(seed):
        path = tmp_path / f"m{seed}.{suffix}"
        path.write_bytes(mutate(original, seed))
        check_load(path)

    draw()


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_load_image_on_mutants_decodes_or_names_the_file(tmp_path, suffix):
    fuzz_load_image(tmp_path, suffix, FAST * 4)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_load_image_on_many_mutants(tmp_path, suffix):
    fuzz_load_image(tmp_path, suffix, DEEP * 10)


def mutant_folder(root: Path, count: int, seed: int, size: tuple[int, int]) -> tuple[Path, dict[str, bool]]:
    """``root/train/{a,b}/`` with ``count`` mutants (every format) per class beside a valid image each, and
    ``root/val`` with one valid image per class; returns the folder and {file name: decodes}."""
    decodes = {}
    for c in ("a", "b"):
        folder = root / "train" / c
        folder.mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for name in ("good.png",):
            (folder / name).write_bytes(valid_bytes("png", size))
            (root / "val" / c / name).write_bytes(valid_bytes("png", size))
        suffixes = sorted(FORMATS)
        for i in range(count):
            suffix = suffixes[i % len(suffixes)]
            path = folder / f"m{i}.{suffix}"
            path.write_bytes(mutate(valid_bytes(suffix, size), seed * 1000 + i))
            decodes[f"{c}/{path.name}"] = check_load(path)
    return root, decodes


@pytest.mark.parametrize("where", ["memory", "streamed"])
def test_the_folder_data_set_skips_mutants_that_do_not_decode_in_one_warning(tmp_path, where):
    side = 24 if where == "memory" else SMALL_IMAGE_MAX + 8  # larger images stream from disk
    root, decodes = mutant_folder(tmp_path, 12, seed=1, size=(side, side))
    with pytest.warns(UserWarning, match="skipped") if not all(decodes.values()) else _nothing():
        train = load_dataset(f"folder:{root}", "train")
    if where == "memory":
        assert train.images.shape[0] == sum(decodes.values()) + 2  # the good images and the mutants that decode
        return
    from vitlab.data import make_stream_loader

    pre = vitlab.Preprocessing(img_size=(32, 32), crop_pct=1.0)
    seen = 0
    with pytest.warns(UserWarning) if not all(decodes.values()) else _nothing():
        for x, _ in make_stream_loader(train, 4, train=False, preprocessing=pre):
            seen += x.shape[0]
    assert seen >= 2  # the good images at least; a mutant whose header reads may still fail in its pixels


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    model = vitlab.create_model("Ti/4@32", depth=1, num_classes=3)
    model.class_names = ["x", "y", "z"]
    return vitlab.save(model, tmp_path_factory.mktemp("model") / "m.safetensors")


def check_cli_over_mutants(capsys, tmp_path, model_file, command: str, count: int, seed: int) -> None:
    """``command`` over a valid image and ``count`` mutants: one error line per file that does not decode, each
    naming it, a summary line, exit 1 (0 if all decode); every image that decodes is classified (or drawn)."""
    folder = tmp_path / "images"
    folder.mkdir(parents=True)
    suffixes = sorted(FORMATS)
    paths = [folder / "good.png"]
    paths[0].write_bytes(valid_bytes("png"))
    for i in range(count):
        suffix = suffixes[i % len(suffixes)]
        path = folder / f"m{i}.{suffix}"
        path.write_bytes(mutate(valid_bytes(suffix), seed * 1000 + i))
        paths.append(path)
    decodes = {p.name: check_load(p) for p in paths}
    extra = ["--out", str(tmp_path / "figures")] if command == "attention" else []
    code = main([command, *map(str, paths), "--model", str(model_file), *extra])
    out, err = capsys.readouterr()
    bad = [name for name, ok in decodes.items() if not ok]
    assert code == (1 if bad else 0) and "Traceback" not in err, err
    lines = err.splitlines()
    assert all(ERROR_LINE.match(line) for line in lines), err
    assert len(lines) == len(bad) + (1 if bad else 0), err
    for name in bad:
        assert any(name in line for line in lines), (name, err)
    for path in paths:
        if decodes[path.name]:
            assert str(path) in out


def test_predict_over_mutants_reports_each_bad_file_and_classifies_the_rest(capsys, tmp_path, model_file):
    check_cli_over_mutants(capsys, tmp_path, model_file, "predict", count=18, seed=2)


@pytest.mark.slow
def test_predict_and_attention_over_many_mutants(capsys, tmp_path, model_file):
    check_cli_over_mutants(capsys, tmp_path / "p", model_file, "predict", count=DEEP, seed=3)
    check_cli_over_mutants(capsys, tmp_path / "a", model_file, "attention", count=DEEP // 4, seed=4)


def test_attention_over_mutants_reports_each_bad_file_and_draws_the_rest(capsys, tmp_path, model_file):
    check_cli_over_mutants(capsys, tmp_path, model_file, "attention", count=4, seed=5)


# Exceptions PIL raises for some files that are neither OSError nor ValueError: every path catches them per file.
ODD_ERRORS = [TypeError("unsupported operand type(s)"), NotImplementedError("not implemented for this mode"),
              IndexError("tuple index out of range"), KeyError("missing tag"), ZeroDivisionError("division by zero")]


@pytest.fixture
def odd_file(monkeypatch, tmp_path, request):
    """``odd.png``, a valid file on whose decoding PIL raises the exception of the test's parameter."""
    path = tmp_path / "images" / "odd.png"
    path.parent.mkdir()
    path.write_bytes(valid_bytes("png"))
    from PIL import ImageFile

    real_load = ImageFile.ImageFile.load

    def load(self, *args, **kwargs):
        if str(getattr(self, "filename", "")).endswith("odd.png"):
            raise request.param
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return path


@pytest.mark.parametrize("odd_file", ODD_ERRORS, indirect=True, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("command", ["predict", "attention"])
def test_an_odd_decoder_exception_is_one_line_and_the_next_image_still_runs(capsys, tmp_path, model_file, odd_file,
                                                                            command):
    good = odd_file.parent / "good.png"
    good.write_bytes(valid_bytes("png"))
    extra = ["--out", str(tmp_path / "figures")] if command == "attention" else []
    code = main([command, str(odd_file), str(good), "--model", str(model_file), *extra])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 1 and "Traceback" not in err, err
    assert len(lines) == 2 and "odd.png is not an image that can be decoded" in lines[0], err
    assert str(good) in out


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 40 wide x 20 high JPEG whose EXIF says: rotate 90 degrees clockwise to view (as a phone writes a portrait
    photo); its left half is red, its right half blue."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20, 0] = 255
    pixels[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    Image.fromarray(pixels).save(path, "JPEG", exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_by_every_decode_path(tmp_path):
    from vitlab.data.folder import decode_rgb

    path = exif_rotated_jpeg(tmp_path / "phone.jpg")
    upright = np.asarray(vitlab.load_image(path))
    assert upright.shape == (40, 20, 3)  # rotated: 20 wide, 40 high
    assert upright[2, 10, 0] > 200 and upright[-3, 10, 2] > 200  # clockwise: the red left half is now on top
    assert decode_rgb(path).shape == (40, 20, 3)
    from vitlab.preprocess import decode_image

    assert decode_image(path.read_bytes(), "phone.jpg").size == (20, 40)


def check_explorer_over_mutants(tmp_path, model_file, count: int, seed: int, export_good: bool) -> None:
    """Upload, ``--images`` and ``--export`` over mutants: a mutant that decodes is served (200), one that does not
    is a JSON 415 naming the file as the user knows it, and the server serves on; the export of a set with a bad
    file writes nothing and names the file in one error (before any work), that of good ones writes the page."""
    from starlette.testclient import TestClient

    from vitlab.explore import Explorer, export_page
    from vitlab.explore.server import create_app

    folder = tmp_path / "in"
    folder.mkdir()
    suffixes = sorted(FORMATS)
    mutants = {}
    for i in range(count):
        suffix = suffixes[i % len(suffixes)]
        path = folder / f"m{i}.{suffix}"
        path.write_bytes(mutate(valid_bytes(suffix), seed * 1000 + i))
        mutants[path] = check_load(path)
    model = vitlab.load(model_file)
    client = TestClient(create_app(Explorer(model, "m", images_dir=folder, shapes_samples=0)))
    listed = {item["name"]: item["id"] for item in client.get("/api/images").json()["images"]}
    for path, decodes in mutants.items():
        for response in (client.post("/api/images", content=path.read_bytes(), headers={"X-Filename": path.name}),
                         client.get(f"/api/images/{listed[path.name]}")):
            assert response.status_code == (200 if decodes else 415), (path.name, response.text[:300])
            assert response.headers["content-type"].startswith("application/json")
            if not decodes:
                error = response.json()["error"]
                assert path.name in error and str(tmp_path) not in error, error
    good = [str(p) for p, ok in mutants.items() if ok][:2]
    bad = [str(p) for p, ok in mutants.items() if not ok][:1]
    explorer = Explorer(model, "m", shapes_samples=0)
    if bad:
        with pytest.raises(DataError, match=re.escape(Path(bad[0]).name)):
            export_page(explorer, [*good, *bad], tmp_path / "bad.html")
        assert not (tmp_path / "bad.html").exists()
    if good and export_good:
        assert export_page(explorer, good, tmp_path / "good.html").stat().st_size > 0


def test_the_explorer_over_mutants_serves_or_names_each_file(tmp_path, model_file):
    check_explorer_over_mutants(tmp_path, model_file, count=6, seed=6, export_good=False)


@pytest.mark.slow
def test_the_explorer_over_many_mutants(tmp_path, model_file):
    check_explorer_over_mutants(tmp_path, model_file, count=DEEP, seed=7, export_good=True)
