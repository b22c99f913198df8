"""The explorer's page in a real browser: headless Chromium (Debian's ``chromium`` package, driven by Playwright's
Python package with the system browser; nothing is downloaded). It opens the page served on loopback, uploads an
image, waits for the map, hovers two patches and checks the map changed, switches method, measures deletion and
insertion, uploads a non-image and reads the message, saves a screenshot; then opens an exported page from a
file:// URL and does the same without a server. Both pages run under their Content-Security-Policy (so the waits
below are functions, which Playwright runs without eval). Image and class names that end a script, open an HTML
comment or a nested script, or hold line separators render as text in both pages, with no error and no dialog.

Skipped where Chromium or Playwright is missing, except in CI (CI=true), where that is a failure: .ci/run installs
both, and the browser test must run there.
"""

import os
import shutil

import pytest
from conftest import randomize_

import vitlab

PHOTOS = os.path.join(os.path.dirname(__file__), "data", "photos")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _require(what: str, how: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {how}")
    pytest.skip(f"{what} is missing ({how})")


def chromium_path() -> str:
    path = os.environ.get("VITLAB_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not path:
        _require("Chromium", "apt-get install chromium, or set VITLAB_CHROMIUM to a Chromium binary")
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("Playwright", "pip install -e '.[dev]'")
    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served():
    """The explorer of a small random ViT (6 x 8 patches, a register token), served on a free loopback port."""
    pytest.importorskip("uvicorn")
    from vitlab.explore import Explorer
    from vitlab.explore.server import BackgroundServer

    model = randomize_(vitlab.create_model("Ti/8@224", img_size=(48, 64), depth=3, embed_dim=48, num_heads=3,
                                           mlp_dim=96, num_classes=6, num_register_tokens=1), std=0.2).eval()
    explorer = Explorer(model, "tiny test ViT", shapes_samples=2)
    with BackgroundServer(explorer) as server:
        yield explorer, server.url


def shown(page, n: int) -> None:
    """Wait until the page has shown its n-th image."""
    page.wait_for_function(f"() => window.vitlabStats.imageShownMs.length >= {n}", timeout=30_000)


def view_pixels(page) -> str:
    return page.evaluate("document.getElementById('view').toDataURL()")


def hover(page, fx: float, fy: float, expect: str) -> str:
    """Move the pointer to (fx, fy) of the image and wait for that patch's map; return the canvas."""
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.wait_for_function(f"() => window.vitlabStats.lastShown.includes({expect!r})", timeout=10_000)
    return view_pixels(page)


def leave_and_pick(page, method: str) -> str:
    page.mouse.move(1, 1)  # off the image: the map of the controls again
    page.select_option("#method", method)
    page.wait_for_function(f"() => window.vitlabStats.lastShown.startsWith({method!r})", timeout=30_000)
    return view_pixels(page)


def check_errors(errors: list) -> None:
    assert not errors, f"the page raised: {errors}"


def test_the_page_in_a_real_browser(browser, served, tmp_path):
    _, url = served
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    shown(page, 1)  # the first listed image comes up by itself
    page.set_input_files("#upload", os.path.join(PHOTOS, "camera.jpg"))
    shown(page, 2)
    assert "camera.jpg" in page.text_content("#status")
    assert page.locator("#prediction tr").count() == 5
    raw = view_pixels(page)
    # 6 x 8 patches: (0.1, 0.1) is patch (row 0, col 0), (0.7, 0.6) is patch (row 3, col 5)
    first = hover(page, 0.1, 0.1, "patch (row 0, col 0)")
    second = hover(page, 0.7, 0.6, "patch (row 3, col 5)")
    assert len({raw, first, second}) == 3, "hovering two patches must change the map"
    rollout = leave_and_pick(page, "rollout")
    assert rollout != raw
    grad = leave_and_pick(page, "grad-rollout")
    top = page.locator("#prediction tr td:first-child").all_text_contents()
    assert grad != rollout and f"for class {top[0]}" in page.text_content("#caption")
    page.select_option("#target", index=1)  # the second class of the top-5
    page.wait_for_function(f"() => window.vitlabStats.lastShown.endsWith('for class {top[1]}')", timeout=30_000)
    assert view_pixels(page) != grad
    page.click("#measure")
    page.wait_for_function("() => document.querySelectorAll('#faithfulness tr').length === 3", timeout=30_000)
    assert "deletion AUC" in page.text_content("#faithfulness")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    page.set_input_files("#upload", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "notes.png" in page.text_content("#error") and "not an image" in page.text_content("#error")
    page.select_option("#image-select", index=0)  # the server still serves
    shown(page, 3)
    with open(os.path.join(PHOTOS, "clock.jpg"), "rb") as f:  # drag and drop
        page.evaluate("""(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
            document.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""", list(f.read()))
    shown(page, 4)
    assert "dropped.jpg" in page.text_content("#status")
    page.screenshot(path=str(tmp_path / "explore.png"), full_page=True)
    assert (tmp_path / "explore.png").stat().st_size > 10_000
    check_errors(errors)
    hover_ms = page.evaluate("window.vitlabStats.hoverMs")
    print(f"\nbrowser: image shown in {page.evaluate('window.vitlabStats.imageShownMs')} ms; hover {hover_ms} ms")
    page.close()


def test_the_exported_page_works_from_a_file(browser, served, tmp_path):
    from vitlab.explore import export_page

    explorer, _ = served
    path = export_page(explorer, [os.path.join(PHOTOS, "clock.jpg"), os.path.join(PHOTOS, "coffee.jpg")],
                       tmp_path / "page.html")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors, requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.goto(path.as_uri())
    shown(page, 1)
    raw = view_pixels(page)
    first = hover(page, 0.1, 0.1, "patch (row 0, col 0)")
    second = hover(page, 0.7, 0.6, "patch (row 3, col 5)")
    assert len({raw, first, second}) == 3
    rollout = leave_and_pick(page, "rollout")
    assert rollout != raw
    page.fill("#discard", "2")  # the third embedded discard ratio (0.9)
    page.dispatch_event("#discard", "input")
    page.wait_for_function("() => window.vitlabStats.lastShown.includes('discard 0.9')", timeout=10_000)
    leave_and_pick(page, "grad-rollout")
    page.select_option("#block", "0")  # the export has gradient rollout up to the last block only
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "is not embedded in this exported page" in page.text_content("#error")
    page.select_option("#block", "2")  # back to a map the page has: the message goes
    page.wait_for_selector("#error", state="hidden", timeout=10_000)
    page.select_option("#method", "raw")
    page.click("#measure")
    page.wait_for_function("() => document.querySelectorAll('#faithfulness tr').length === 3", timeout=10_000)
    page.select_option("#image-select", index=1)
    shown(page, 2)
    assert "coffee.jpg" in page.text_content("#status")
    page.screenshot(path=str(tmp_path / "exported.png"), full_page=True)
    check_errors(errors)
    assert not requests, f"the exported page fetched {requests}"
    page.close()


def test_a_resnet_page_says_why_attention_is_off(browser):
    from vitlab.explore import Explorer
    from vitlab.explore.server import BackgroundServer

    explorer = Explorer(vitlab.create_model("resnet20").eval(), "resnet20", shapes_samples=1)
    with BackgroundServer(explorer) as server:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        shown(page, 1)
        assert page.locator("#prediction tr").count() == 5
        assert "has no attention" in page.text_content("#attention-off") and page.is_hidden("#controls")
        check_errors(errors)
        page.close()


# names that end a <script>, open an HTML comment or a nested script, break a JavaScript string, or are not ASCII
# (issue 25): the page must render them as text and run nothing
HOSTILE_FILES = ("a<!--<script>.png", "<img src=x onerror=alert(1)>.png", "line\u2028sep\u2029.png",
                 "\"quoted\" & 'single' é 日本 🙂.png")
HOSTILE_CLASSES = ("</script><img src=x onerror=alert(1)>", "a<!--<script>", "line\u2028sep\u2029",
                   "\"quoted\" & 'single' é 日本 🙂")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder of images with hostile names, and a 4-class ViT whose class names are hostile."""
    import shutil as sh

    folder = tmp_path_factory.mktemp("hostile")
    for name, photo in zip(HOSTILE_FILES, ("camera.jpg", "clock.jpg", "coffee.jpg", "camera.jpg"), strict=True):
        sh.copyfile(os.path.join(PHOTOS, photo), folder / name)
    model = randomize_(vitlab.create_model("Ti/8@224", img_size=(48, 64), depth=2, embed_dim=48, num_heads=3,
                                           mlp_dim=96, num_classes=4), std=0.2).eval()
    model.class_names = list(HOSTILE_CLASSES)
    return folder, model


def check_hostile_page(page, names: list[str], errors: list, dialogs: list) -> None:
    """The page rendered: every image listed by its name as text, the prediction shown with the class names as
    text, no element made from a name, no script error, no dialog."""
    shown(page, 1)
    assert page.locator("#image-select option").all_text_contents() == names
    assert page.locator("#prediction tr").count() == 4
    assert set(page.locator("#prediction tr td:first-child").all_text_contents()) == set(HOSTILE_CLASSES)
    for i in range(1, len(names)):
        page.select_option("#image-select", index=i)
        shown(page, i + 1)
        assert page.text_content("#status").startswith(names[i])
    assert page.evaluate("document.querySelectorAll('img').length") == 0  # no element made from a name
    assert page.evaluate("document.scripts.length") <= 2  # the page's own: the data and explorer.js
    assert not dialogs, f"the page opened a dialog: {dialogs}"
    check_errors(errors)


def hostile_page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors, dialogs = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text)  # a CSP violation is reported here (a 4xx is expected)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return page, errors, dialogs


def test_an_exported_page_with_hostile_names_renders_them_as_text(browser, hostile, tmp_path):
    from vitlab.explore import Explorer, export_page

    folder, model = hostile
    path = export_page(Explorer(model, "a<!--<script>", shapes_samples=0), [folder / n for n in HOSTILE_FILES],
                       tmp_path / "page.html")
    page, errors, dialogs = hostile_page(browser)
    page.goto(path.as_uri())
    check_hostile_page(page, list(HOSTILE_FILES), errors, dialogs)
    assert page.text_content("#model-name").startswith("a<!--<script>")
    page.close()


def test_the_served_page_with_hostile_names_renders_them_as_text(browser, hostile):
    from vitlab.explore import Explorer
    from vitlab.explore.server import BackgroundServer

    folder, model = hostile
    with BackgroundServer(Explorer(model, "a<!--<script>", images_dir=folder, shapes_samples=0)) as server:
        page, errors, dialogs = hostile_page(browser)
        page.goto(server.url)
        check_hostile_page(page, sorted(HOSTILE_FILES), errors, dialogs)
        page.set_input_files("#upload", files=[{"name": "</script><img src=x onerror=alert(1)>.png",
                                                "mimeType": "image/png", "buffer": b"not an image"}])
        page.wait_for_selector("#error:not([hidden])", timeout=10_000)
        assert page.text_content("#error").startswith("</script><img src=x onerror=alert(1)>.png: ")
        assert page.evaluate("document.querySelectorAll('img').length") == 0 and not dialogs
        check_errors(errors)
        page.close()
