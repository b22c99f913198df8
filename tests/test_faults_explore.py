"""Fault campaign, the explorer (issue 25): hostile image and class names in the exported page and the server's
answers, decoder exceptions that are not OSErrors, a port in use and a host that does not resolve, the name a
decode error gives, an unwritable --export, and a phone photo's EXIF orientation.

Each command-line case asserts what a user sees: the exit status, exactly one ``vitlab: error:`` line naming the
problem, no traceback, nothing on stdout, and no file changed outside the command's output. The pages' behaviour in
a real browser (hostile names rendered as text, nothing run) is in tests/test_explore_browser.py.
"""

import io
import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import randomize_
from PIL import Image

import vitlab
from vitlab.cli import main
from vitlab.explore import Explorer, export_page

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from vitlab.explore.server import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; the machine may be busy
ERROR_LINE = re.compile(r"^vitlab: error: [^\n]+$")
# names that end a <script>, open an HTML comment or a nested script, break a JavaScript string, or are not ASCII
HOSTILE_FILES = ("a<!--<script>.png", "<img src=x onerror=alert(1)>.png", "line\u2028sep\u2029.png",
                 "\"quoted\" & 'single' é 日本 🙂.png")
HOSTILE_CLASSES = ("</script><img src=x onerror=alert(1)>", "a<!--<script>", "line\u2028sep\u2029",
                   "\"quoted\" & 'single' é 日本 🙂")
BAD_SIZE = (41, 31)  # the size of the image the patched decoder raises TypeError on


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(capsys, *, out: str = "") -> str:
    """The single error line of a command that failed; stdout must be ``out``."""
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("vitlab: error:")]
    assert len(errors) == 1 and ERROR_LINE.match(errors[0]), captured.err
    assert "Traceback" not in captured.err and captured.out == out, captured
    return errors[0]


def picture(size=(40, 24), seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png(size=(40, 24), seed: int = 0) -> bytes:
    buf = io.BytesIO()
    picture(size, seed).save(buf, "PNG")
    return buf.getvalue()


def tiny_model(num_classes: int = 4) -> vitlab.VisionTransformer:
    return randomize_(vitlab.create_model("Ti/4@32", depth=1, embed_dim=32, num_heads=2, mlp_dim=64,
                                          num_classes=num_classes), std=0.2)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return vitlab.save(tiny_model(), tmp_path / "m.safetensors", class_names=list(HOSTILE_CLASSES))


@pytest.fixture
def type_error_decoder(monkeypatch):
    """PIL raises TypeError (not an OSError) on every image of size BAD_SIZE, as it does on some real files."""
    real_open = Image.open

    def open_(fp, *args, **kwargs):
        img = real_open(fp, *args, **kwargs)
        if img.size == BAD_SIZE:
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
        return img

    monkeypatch.setattr(Image, "open", open_)


def embedded_data(html: str) -> dict:
    return json.loads(re.search(r"window.VITLAB_DATA = (.*?);</script>", html, re.S).group(1))


# case 1: hostile names cannot change how the page parses


def test_the_exported_page_embeds_hostile_names_as_inert_data(tmp_path, checkpoint, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(HOSTILE_FILES):
        (folder / name).write_bytes(png(seed=i))
    page = tmp_path / "page.html"
    # the command line refuses a file name with a line separator (not printable); export_page takes it
    named = [n for n in HOSTILE_FILES if n.isprintable()]
    assert main(["explore", "--model", str(checkpoint), "--export", str(page), *[str(folder / n) for n in named]]) == 0
    assert "wrote" in capsys.readouterr().out
    html = page.read_text(encoding="utf-8")
    # the page's own markup only: two scripts, one style, no comment, and the data has no <, > or & at all
    assert html.count("<script") == 2 and html.count("</script>") == 2 and "<!--" not in html
    script = re.search(r"<script>(window.VITLAB_DATA = .*?)</script>", html, re.S).group(1)
    assert not set(script) & set("<>&\u2028\u2029")
    data = embedded_data(html)
    assert [i["name"] for i in data["images"]] == named
    assert {t["name"] for t in data["images"][0]["top"]} == set(HOSTILE_CLASSES)
    assert "Content-Security-Policy" in html and "'unsafe-inline'" not in html


def test_the_server_answers_hostile_names_as_json_that_no_browser_reads_as_a_page(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(HOSTILE_FILES):
        (folder / name).write_bytes(png(seed=i))
    model = tiny_model()
    model.class_names = list(HOSTILE_CLASSES)
    client = TestClient(create_app(Explorer(model, "a<!--<script>", images_dir=folder, shapes_samples=0)))
    r = client.get("/api/images")
    assert r.headers["content-type"] == "application/json" and r.headers["x-content-type-options"] == "nosniff"
    images = r.json()["images"]
    assert sorted(i["name"] for i in images) == sorted(HOSTILE_FILES)
    for image in images:
        r = client.get(f"/api/images/{image['id']}")
        assert r.status_code == 200 and r.json()["name"] == image["name"]
        assert {t["name"] for t in r.json()["top"]} == set(HOSTILE_CLASSES)
    up = client.post("/api/images", content=png(), headers={"X-Filename": "%3C%2Fscript%3E%3C!--x.png"}).json()
    assert up["name"] == "script><!--x.png"  # the part after the last '/': a name, never a path
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script can run


def test_embedded_json_has_no_character_that_html_or_javascript_reads_specially():
    from vitlab.explore.export import embed_json

    data = {"names": [*HOSTILE_FILES, *HOSTILE_CLASSES, "&amp; ]]> <![CDATA[ <\\/script>"], "<key>": 1}
    text = embed_json(data)
    assert not set(text) & set("<>&\u2028\u2029") and json.loads(text) == data


def test_a_file_name_that_is_not_utf8_is_listed_and_exported(tmp_path):
    """Linux allows any bytes in a name: the page shows the others as U+FFFD, and nothing fails to encode."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png")))
    path.write_bytes(png())
    explorer = Explorer(tiny_model(), "m", images_dir=folder, shapes_samples=0)
    client = TestClient(create_app(explorer))
    assert client.get("/api/images").json()["images"] == [{"id": "f0", "name": "caf\ufffd.png", "kind": "file"}]
    assert client.get("/api/images/f0").status_code == 200
    html = export_page(explorer, [path], tmp_path / "page.html").read_text(encoding="utf-8")
    assert embedded_data(html)["images"][0]["name"] == "caf\ufffd.png"


# case 2: decoder exceptions that are not OSErrors are the file's problem, named, on every path


def test_an_upload_pil_raises_type_error_on_is_a_json_415_naming_it(type_error_decoder):
    client = TestClient(create_app(Explorer(tiny_model(), "m", shapes_samples=1)))
    r = client.post("/api/images", content=png(BAD_SIZE), headers={"X-Filename": "holiday.png"})
    assert r.status_code == 415 and r.headers["content-type"] == "application/json"
    assert r.json()["error"].startswith("holiday.png is not an image that can be decoded (TypeError")
    assert client.post("/api/images", content=png(), headers={"X-Filename": "ok.png"}).status_code == 200
    assert client.get("/api/images/s0").status_code == 200  # still serving


def test_a_listed_file_pil_raises_type_error_on_is_a_json_error_and_the_others_serve(tmp_path, type_error_decoder):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png())
    (folder / "sub" / "bad.png").write_bytes(png(BAD_SIZE))
    (folder / "z.png").write_bytes(png(seed=1))
    client = TestClient(create_app(Explorer(tiny_model(), "m", images_dir=folder, shapes_samples=0)))
    ids = {i["name"]: i["id"] for i in client.get("/api/images").json()["images"]}
    r = client.get(f"/api/images/{ids['sub/bad.png']}")
    assert r.status_code == 415 and "sub/bad.png is not an image that can be decoded (TypeError" in r.json()["error"]
    assert client.get(f"/api/images/{ids['a.png']}").status_code == 200
    assert client.get(f"/api/images/{ids['z.png']}").status_code == 200


def test_export_with_a_file_pil_raises_type_error_on_writes_nothing_and_names_it(tmp_path, checkpoint, capsys,
                                                                                   type_error_decoder):
    """The page is one file: it has every image asked for or is not written. Every image is decoded before the
    model runs, so the error comes at once (exit 2), not after minutes of work (documented in the README)."""
    Image.open(io.BytesIO(png())).close()  # the patched decoder passes a good image
    good = tmp_path / "good.png"
    good.write_bytes(png())
    bad = tmp_path / "bad.png"
    bad.write_bytes(png(BAD_SIZE))
    before = snapshot(tmp_path)
    page = tmp_path / "page.html"
    assert main(["explore", "--model", str(checkpoint), "--export", str(page), str(good), str(bad)]) == 2
    line = one_error(capsys)
    assert f"{bad} is not an image that can be decoded (TypeError" in line and "1 of 2 image(s)" in line
    assert str(good) not in line
    assert snapshot(tmp_path) == before and not page.exists()


# case 3: a port in use, a host that does not resolve


def test_a_port_in_use_is_one_error_line_before_anything_is_printed(tmp_path, checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        before = snapshot(tmp_path)
        assert main(["explore", "--model", str(checkpoint), "--shapes", "0", "--port", str(port)]) == 2
    line = one_error(capsys)  # nothing on stdout: the address is announced only once it is bound
    assert f"cannot listen on 127.0.0.1:{port}: address already in use; pass --port" in line
    assert snapshot(tmp_path) == before


def test_a_host_that_does_not_resolve_is_one_error_line_naming_host(tmp_path, checkpoint, capsys):
    before = snapshot(tmp_path)
    assert main(["explore", "--model", str(checkpoint), "--host", "no-such-host.invalid", "--port", "0"]) == 2
    assert "--host" in one_error(capsys) and snapshot(tmp_path) == before


def test_listen_names_the_option_to_change():
    from vitlab.errors import UsageError
    from vitlab.explore.server import listen

    with pytest.raises(UsageError, match=r"^--host no-such-host.invalid: cannot resolve it"):
        listen("no-such-host.invalid", 0)
    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        taken.listen(1)
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}: address already in use"):
            listen("127.0.0.1", port)


def test_serve_serves_on_the_socket_it_bound_first(tmp_path, checkpoint, capsys, monkeypatch):
    """The command's real serving loop on port 0, stopped from the test once the page has been fetched."""
    import threading
    import urllib.request

    from vitlab.explore import server

    servers = []
    make = server._server
    monkeypatch.setattr(server, "_server", lambda explorer: servers.append(make(explorer)) or servers[-1])
    status = []
    thread = threading.Thread(target=lambda: status.append(main(["explore", "--model", str(checkpoint), "--shapes",
                                                                  "1", "--port", "0"])))
    thread.start()
    try:
        for _ in range(500):
            if servers and servers[0].started:
                break
            threading.Event().wait(0.01)
        url = re.search(r"at (http://\S+) ", capsys.readouterr().out).group(1)
        with urllib.request.urlopen(url + "api/images", timeout=10) as r:
            assert json.load(r)["images"][0]["id"] == "s0"
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(timeout=10)
    assert status == [0]


# case 4: a decode error names the file as the page's user knows it


def test_a_decode_error_names_the_file_as_the_user_knows_it(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "notes.png").write_text("not an image at all")
    client = TestClient(create_app(Explorer(tiny_model(), "m", images_dir=folder, shapes_samples=0)))
    messages = [client.get("/api/images/f0").json()["error"],
                client.post("/api/images", content=b"%PDF-1.4", headers={"X-Filename": "notes.pdf"}).json()["error"]]
    assert messages[0].startswith("sub/notes.png is not an image that can be decoded (")
    assert messages[1].startswith("notes.pdf is not an image that can be decoded (")
    for message in messages:
        assert str(tmp_path) not in message and "the data" not in message and "_io." not in message, message


# case 5: an unwritable --export is found before any work, named as given


@pytest.mark.parametrize("where", ["proc", "parent is a file"])
def test_an_unwritable_export_is_one_line_naming_it_before_any_work(tmp_path, checkpoint, capsys, where):
    image = tmp_path / "a.png"
    image.write_bytes(png())
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    page = "/proc/vitlab-test/page.html" if where == "proc" else str(tmp_path / "notes.txt" / "page.html")
    before = snapshot(tmp_path)
    assert main(["explore", "--model", str(checkpoint), "--export", page, str(image)]) == 2
    line = one_error(capsys)  # no "[1/1]" line: nothing was computed
    assert page in line and ".tmp-" not in line
    assert snapshot(tmp_path) == before


def test_export_page_checks_its_output_before_computing(tmp_path, monkeypatch):
    explorer = Explorer(tiny_model(), "m", shapes_samples=0)
    monkeypatch.setattr(explorer, "analyze", lambda *a: pytest.fail("computed before the output was checked"))
    image = tmp_path / "a.png"
    image.write_bytes(png())
    (tmp_path / "notes.txt").write_text("a file")
    for out in ("/proc/vitlab-test/page.html", tmp_path / "notes.txt" / "page.html"):
        with pytest.raises(OSError, match=re.escape(str(out))) as e:
            export_page(explorer, [image], out)
        assert ".tmp-" not in str(e.value)


# case 6: a phone photo is shown upright


def test_a_photo_with_exif_orientation_is_shown_upright(tmp_path):
    """Stored 64 x 32, left half red, right half blue, EXIF orientation 6 (rotate 90 degrees clockwise to view):
    upright it is 32 x 64, red on top. The explorer lists and uploads it upright, and the model sees it so."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32, 0] = 255
    stored[:, 32:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "phone.jpg").write_bytes(buf.getvalue())
    explorer = Explorer(tiny_model(), "m", images_dir=folder, shapes_samples=0)
    client = TestClient(create_app(explorer))
    upload = client.post("/api/images", content=buf.getvalue(), headers={"X-Filename": "phone.jpg"}).json()
    for image_id in ("f0", upload["id"]):
        assert explorer._pil(explorer.sources[image_id]).size == (32, 64)  # width and height swapped
        url = client.get(f"/api/images/{image_id}").json()["image"]
        import base64

        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
        top, bottom = shown[: shown.shape[0] // 4].mean(axis=(0, 1)), shown[-shown.shape[0] // 4:].mean(axis=(0, 1))
        assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0], (top, bottom)  # red above blue
