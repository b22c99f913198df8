"""``vitlab explore``: the explorer's answers through Starlette's test client, checked against the library's own
analysis functions; uploads, paths and concurrent requests; the exported page; the command line. The real-browser
test is tests/test_explore_browser.py."""

import base64
import io
import json
import os
import re
import threading

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image
from test_families import FAMILIES, family_model

import vitlab
from vitlab.analysis import figure7
from vitlab.analysis.attention import attention_maps, fuse_heads, head_query, patch_rows
from vitlab.analysis.faithfulness import faithfulness
from vitlab.cli import main
from vitlab.explore import Explorer, MapParams, export_page
from vitlab.explore import compute as explore_compute
from vitlab.explore.compute import to_uint8

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from vitlab.explore.server import create_app  # noqa: E402

PHOTOS = os.path.join(os.path.dirname(__file__), "data", "photos")
pytestmark = pytest.mark.usefixtures("one_thread")  # small models: a second thread only waits on a busy machine


def u8(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8)


def client_for(model, max_upload_bytes: int = 1 << 20, **kwargs) -> tuple[Explorer, TestClient]:
    explorer = Explorer(model, "test model", **kwargs)
    return explorer, TestClient(create_app(explorer, max_upload_bytes=max_upload_bytes))


@pytest.fixture(scope="module")
def tiny():
    """A non-square ViT with a register token (an image id s0 drawn at its input size)."""
    model = randomize_(vitlab.create_model("Ti/8@224", img_size=(32, 48), depth=3, embed_dim=32, num_heads=2,
                                           mlp_dim=64, num_classes=7, num_register_tokens=1), std=0.2).eval()
    explorer, client = client_for(model, images_dir=PHOTOS)
    return model, explorer, client


def test_model_info_and_image_list(tiny):
    model, explorer, client = tiny
    info = client.get("/api/model").json()
    assert info["grid"] == [4, 6] and info["depth"] == 3 and info["heads"] == 2 and info["num_prefix"] == 2
    assert info["variants"] == ["0", "1", "mean", "max", "min"]
    assert info["methods"] == ["raw", "rollout", "grad-rollout"]
    sim = figure7.model_position_similarity(model).reshape(24, 24)
    assert np.array_equal(u8(info["position"]["data"]).reshape(24, 24),
                          ((sim.clamp(-1, 1) + 1) * 127.5).round().byte().numpy())
    comps, variance = figure7.patch_embedding_components(model, 28)
    assert info["filters"]["count"] == comps.shape[0] and info["filters"]["size"] == 8
    assert info["filters"]["variance"] == pytest.approx(variance.tolist(), abs=1e-5)
    names = [i["name"] for i in client.get("/api/images").json()["images"]]
    assert names[:4] == ["astronaut.jpg", "camera.jpg", "clock.jpg", "coffee.jpg"]
    assert len(names) == 10 and all(n.startswith("shapes ") for n in names[4:])


def test_analysis_matches_the_library(tiny):
    model, explorer, client = tiny
    a = client.get("/api/images/f1").json()
    x = explorer.transform(Image.open(os.path.join(PHOTOS, "camera.jpg")).convert("RGB")).unsqueeze(0)
    assert a["size"] == [32, 48] and a["image"].startswith("data:image/png;base64,")
    probs = model(x).softmax(-1)[0]
    assert [t["index"] for t in a["top"]] == probs.topk(5).indices.tolist()
    assert [t["prob"] for t in a["top"]] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-5)
    raw = u8(a["raw"]).reshape(3, 5, 24)  # (blocks, head choices, patches)
    for block in range(3):
        for v, head in enumerate([0, 1, "mean", "max", "min"]):
            expected = attention_maps(model, x, "raw", layer=block, head=head).maps.reshape(1, 24)
            assert np.array_equal(raw[block, v], to_uint8(expected)[0].numpy()), (block, head)
    out = model.forward_intermediates(x, return_attention=True)
    distances = [figure7.mean_attention_distance(out.attention[b], (4, 6), 8, 2).tolist() for b in range(3)]
    assert np.allclose(a["distances"], distances, atol=1e-3)


@pytest.mark.parametrize("params", [
    dict(method="rollout", block=2, head="mean", discard=0.0),
    dict(method="rollout", block=1, head="max", first=1, discard=0.5),
    dict(method="grad-rollout", block=2, target=3, discard=0.2),
    dict(method="grad-rollout", block=2, first=1),
])
def test_maps_match_attention_maps(tiny, params):
    model, explorer, client = tiny
    m = client.get("/api/images/f0/map", params=params).json()
    x = explorer._entry("f0").x
    expected = attention_maps(model, x, params["method"], layer=params["block"], head=params.get("head", "mean"),
                              discard_ratio=params.get("discard", 0.0), target=params.get("target"),
                              first_layer=params.get("first", 0))
    assert np.array_equal(u8(m["data"]), to_uint8(expected.maps.reshape(1, -1))[0].numpy())
    predicted = int(model(x).argmax())
    assert m["target"] == params.get("target", predicted)


def test_hover_rows_are_each_patch_attention(tiny):
    model, explorer, client = tiny
    rows = u8(client.get("/api/images/f0/rows", params={"block": 1}).json()["data"]).reshape(5, 24, 24)
    attn = model.forward_intermediates(explorer._entry("f0").x, return_attention=True).attention[1]
    expected = torch.cat([attn, torch.stack([fuse_heads(attn, f) for f in ("mean", "max", "min")], 1)], 1)
    assert np.array_equal(rows, to_uint8(patch_rows(expected, 2))[0].numpy())
    one = client.get("/api/images/f0/row", params={"block": 1, "head": "max", "patch": 7}).json()
    assert np.array_equal(u8(one["data"]), rows[3, 7])
    assert client.get("/api/images/f0/row", params={"block": 1, "head": "0", "patch": 24}).status_code == 400


def test_faithfulness_is_the_library_measure(tiny):
    model, explorer, client = tiny
    f = client.get("/api/images/f2/faithfulness", params={"method": "raw", "block": 2, "steps": 8}).json()
    x = explorer._entry("f2").x
    maps = attention_maps(model, x, "raw", layer=2).maps
    target = model(x).argmax(-1)
    expected = faithfulness(model, x, maps, target, 8, steps=8)
    assert f["deletion"] == pytest.approx(expected.deletion_auc, abs=1e-4)
    assert f["random_insertion"] == pytest.approx(expected.random_insertion_auc, abs=1e-4)
    assert f["target"] == int(target)


@pytest.mark.parametrize("query, message", [
    ({"method": "pool"}, "method='pool' is not one of raw, rollout, grad-rollout"),
    ({"method": "raw", "block": 3}, "block=3 is out of range for 3 blocks"),
    ({"method": "raw", "head": "2"}, "head='2': expected 0..1"),
    ({"method": "rollout", "head": "0"}, "rollout fuses the heads"),
    ({"method": "rollout", "block": 1, "first": 2}, "first=2 must be in 0..1"),
    ({"method": "rollout", "discard": 1.0}, "discard=1.0 must be in [0, 1)"),
    ({"method": "grad-rollout", "target": 7}, "target=7: the model has 7 classes"),
    ({"block": "x"}, "block='x' is not an integer"),
])
def test_bad_parameters_get_a_message(tiny, query, message):
    _, _, client = tiny
    r = client.get("/api/images/f0/map", params=query)
    assert r.status_code == 400 and message in r.json()["error"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_explorable(family):
    model = family_model(family)
    explorer, client = client_for(model, shapes_samples=1)
    info = client.get("/api/model").json()
    a = client.get("/api/images/s0").json()
    n = 64  # Ti/4@32: 8 x 8 patches
    assert u8(a["raw"]).shape == (2 * len(info["variants"]) * n,)
    x = explorer._entry("s0").x
    for method in info["methods"]:
        m = client.get("/api/images/s0/map", params={"method": method, "block": 1}).json()
        expected = attention_maps(model, x, method, layer=1).maps
        assert np.array_equal(u8(m["data"]), to_uint8(expected.reshape(1, n))[0].numpy()), method
    if model.config.pool == "map":
        assert "pool" in info["methods"] and u8(a["pool"]).shape == (len(info["variants"]) * n,)


def test_a_resnet_shows_its_prediction_and_says_why_attention_is_off():
    model = vitlab.create_model("resnet20").eval()
    _, client = client_for(model, shapes_samples=1)
    info = client.get("/api/model").json()
    assert info["attention"] is False and "no attention" in info["reason"]
    a = client.get("/api/images/s0").json()
    assert len(a["top"]) == 5 and "raw" not in a
    r = client.get("/api/images/s0/map", params={"method": "raw"})
    assert r.status_code == 400 and "convolutional network" in r.json()["error"]


def test_large_token_counts_send_one_row_at_a_time(monkeypatch):
    monkeypatch.setattr(explore_compute, "ROWS_INLINE_BYTES", 1000)
    model = family_model("dinov2")
    _, client = client_for(model, shapes_samples=1)
    assert client.get("/api/model").json()["rows_inline"] is False
    r = client.get("/api/images/s0/rows", params={"block": 0})
    assert r.status_code == 413 and "ask for one row" in r.json()["error"]
    assert u8(client.get("/api/images/s0/row", params={"block": 0, "patch": 63}).json()["data"]).shape == (64,)


def png_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_uploads_are_checked_and_the_server_keeps_serving(tiny, monkeypatch):
    _, explorer, client = tiny
    ok = client.post("/api/images", content=png_bytes(), headers={"X-Filename": "../../my%20photo.png"}).json()
    assert ok["name"] == "my photo.png" and ok["id"].startswith("u")
    assert client.get(f"/api/images/{ok['id']}").json()["name"] == "my photo.png"
    r = client.post("/api/images", content=b"%PDF-1.4 not an image", headers={"X-Filename": "notes.pdf"})
    assert r.status_code == 415 and "notes.pdf is not an image that can be decoded" in r.json()["error"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40 x 30 = 1200 pixels > 2 x 100: PIL's bomb error
    r = client.post("/api/images", content=png_bytes(), headers={"X-Filename": "bomb.png"})
    assert r.status_code == 415 and "too large to decode safely" in r.json()["error"]
    monkeypatch.undo()
    monkeypatch.setattr(explore_compute, "MAX_UPLOAD_PIXELS", 1000)  # 40 x 30 = 1200 pixels
    r = client.post("/api/images", content=png_bytes(), headers={"X-Filename": "big.png"})
    assert r.status_code == 413 and "big.png is 40 x 30" in r.json()["error"]
    monkeypatch.undo()
    r = client.post("/api/images", content=b"x" * ((1 << 20) + 1))
    assert r.status_code == 413 and "larger than 1 MB" in r.json()["error"]
    assert client.post("/api/images", content=b"").status_code == 400
    assert client.get("/api/model").status_code == 200  # still serving


def test_no_path_outside_the_images_folder_is_readable(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    (folder / "link.png").symlink_to(secret)
    _, client = client_for(family_model("mae"), images_dir=folder, shapes_samples=0)
    images = {i["name"]: i["id"] for i in client.get("/api/images").json()["images"]}
    assert set(images) == {"a.png", "link.png"}
    assert client.get(f"/api/images/{images['a.png']}").status_code == 200
    r = client.get(f"/api/images/{images['link.png']}")
    assert r.status_code == 404 and "outside the images folder" in r.json()["error"]
    for path in ("/api/images/..%2Fsecret.png", "/api/images/%2Fetc%2Fpasswd", "/static/..%2Fcompute.py",
                 "/static/index.html%00", "/api/images/../../secret.png"):
        assert client.get(path).status_code == 404, path


def test_concurrent_requests_do_not_corrupt_each_other(tiny):
    _, explorer, client = tiny
    jobs = [("f0", {"method": "rollout", "block": 2, "discard": 0.3}), ("f1", {"method": "raw", "block": 0}),
            ("f2", {"method": "grad-rollout", "block": 2}), ("f3", {"method": "rollout", "block": 1, "head": "max"})]
    expected = {i: client.get(f"/api/images/{img}/map", params=p).json() for i, (img, p) in enumerate(jobs)}
    explorer._cache.clear()
    results, errors = {}, []

    def worker(i: int) -> None:
        try:
            for k in range(3):
                img, p = jobs[(i + k) % len(jobs)]
                results[(i, k)] = ((i + k) % len(jobs), client.get(f"/api/images/{img}/map", params=p).json())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 24
    for job, got in results.values():
        assert got == expected[job]


def test_exported_page_embeds_what_the_server_answers(tiny, tmp_path):
    model, explorer, client = tiny
    photo = os.path.join(PHOTOS, "clock.jpg")
    path = export_page(explorer, [photo], tmp_path / "page.html")
    html = path.read_text()
    assert "<script src=" not in html and "<link rel=\"stylesheet\"" not in html  # nothing to fetch
    assert not re.search(r"https?://", html)
    data = json.loads(re.search(r"window.VITLAB_DATA = (.*?);</script>", html, re.S).group(1))
    image = data["images"][0]
    assert image["name"] == "clock.jpg" and set(data["rows"][image["id"]]) == {"0", "1", "2"}
    server = client.get(f"/api/images/{image['id']}").json()
    assert image["raw"] == server["raw"] and image["top"] == server["top"]
    maps = data["maps"][image["id"]]
    key = MapParams("rollout", 2, "max", 1, 0.5).key()
    assert maps[key]["data"] == client.get(f"/api/images/{image['id']}/map", params={
        "method": "rollout", "block": 2, "head": "max", "first": 1, "discard": 0.5}).json()["data"]
    assert len([k for k in maps if k.startswith("grad-rollout|2|mean|0|0|")]) == 5  # one per top-5 class
    assert set(data["faithfulness"][image["id"]]) == {"raw|2|mean|0|0|-1", "rollout|2|mean|0|0|-1",
                                                      f"grad-rollout|2|mean|0|0|{image['top'][0]['index']}"}


def test_cli_export_and_errors(tmp_path, capsys):
    model = randomize_(vitlab.create_model("Ti/8@224", img_size=(32, 48), depth=2, embed_dim=32, num_heads=2,
                                           mlp_dim=64, num_classes=3))
    ckpt = vitlab.save(model, tmp_path / "m.safetensors")
    page = tmp_path / "out" / "page.html"
    assert main(["explore", "--model", str(ckpt), "--export", str(page), os.path.join(PHOTOS, "coffee.jpg")]) == 0
    out = capsys.readouterr().out
    assert "[1/1] " in out and "wrote" in out and page.stat().st_size > 10_000
    assert main(["explore", "--model", str(ckpt), os.path.join(PHOTOS, "coffee.jpg")]) == 2
    assert "are for --export PAGE.html" in capsys.readouterr().err
    assert main(["explore", "--model", str(ckpt), "--export", str(page)]) == 2
    assert "--export needs at least one image file" in capsys.readouterr().err
    assert main(["explore", "--model", str(ckpt), "--images", str(tmp_path / "nowhere")]) == 2
    assert re.search(r"--images.*(not a folder|existing folder)", capsys.readouterr().err)


def test_cli_warns_when_binding_beyond_this_machine(tmp_path, capsys, monkeypatch):
    from vitlab.explore import server

    served = {}
    def serve(explorer, sock):  # the serving loop, as serve() ends it: the socket closed
        with sock:
            served.update(address=sock.getsockname()[:2])

    monkeypatch.setattr(server, "serve", serve)
    model = vitlab.create_model("Ti/8@224", depth=1, embed_dim=32, num_heads=2, mlp_dim=64, num_classes=3)
    ckpt = vitlab.save(model, tmp_path / "m.safetensors")
    assert main(["explore", "--model", str(ckpt), "--port", "0", "--shapes", "0"]) == 0  # 0: a free port
    captured = capsys.readouterr()
    host, port = served["address"]
    assert host == "127.0.0.1" and port > 0 and "warning" not in captured.err
    assert f"at http://127.0.0.1:{port}/" in captured.out  # the port bound, not the 0 asked for
    assert main(["explore", "--model", str(ckpt), "--host", "0.0.0.0", "--port", "0", "--shapes", "0"]) == 0
    assert "reachable from other machines" in capsys.readouterr().err


def test_head_query_reads_the_registered_tokens(tiny):
    """The explorer's maps read the tokens as the head does (class token here; registers excluded)."""
    model, explorer, _ = tiny
    entry = explorer._entry("f0")
    out = model.forward_intermediates(entry.x, return_attention=True)
    assert torch.equal(entry.query, head_query(model, out))


def test_the_predicted_class_is_the_first_listed_even_on_a_tie():
    """A fresh zero head gives every class the same logit: the default class of gradient rollout and of
    deletion/insertion is still the one the page lists first."""
    model = vitlab.create_model("Ti/8@224", depth=1, embed_dim=32, num_heads=2, mlp_dim=64, num_classes=10).eval()
    _, client = client_for(model, shapes_samples=1)
    first = client.get("/api/images/s0").json()["top"][0]["index"]
    assert client.get("/api/images/s0/map", params={"method": "grad-rollout", "block": 0}).json()["target"] == first
    assert client.get("/api/images/s0/faithfulness", params={"steps": 2}).json()["target"] == first
