"""The web UI in a real headless browser (Debian's chromium driven by Playwright), served by `hdpainter ui`.

Load the page, upload a photo, paint a stroke on the mask canvas, type a prompt, run, and check the result:
its full-resolution PNG has the parameters, and the photo changed only around the stroke. A screenshot is
saved to test-artifacts/ui.png (or $HDPAINTER_ARTIFACTS/ui.png).

Without a chromium the test is skipped, unless HDPAINTER_REQUIRE_BROWSER=1 (CI sets it) makes it fail.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("HDPAINTER_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
STROKE = 40  # screen px each side of the canvas centre, horizontally


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("HDPAINTER_REQUIRE_BROWSER") == "1":
            pytest.fail("HDPAINTER_REQUIRE_BROWSER=1 but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium: apt-get install chromium")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_upscaler_dir):
    """`hdpainter ui` in its own process, on a free port; yields its URL once it listens."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hdpainter.cli",
            "ui",
            "--model",
            str(tiny_model_dir),
            "--upscaler",
            str(tiny_upscaler_dir),
            "--port",
            str(port),
            "--working-size",
            "64",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"TRANSFORMERS_VERBOSITY": "error"},
    )
    lines, ready = [], threading.Event()

    def read():
        for line in process.stderr:
            lines.append(line)
            if "hdpainter UI on http://" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout=180)
    if not ready.is_set():
        process.kill()
        pytest.fail("hdpainter ui did not start:\n" + "".join(lines[-20:]))
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


@contextlib.contextmanager
def browser_page(url, photo_path, height):
    """A headless chromium page on the app at `url`, with `photo_path` uploaded into the editor."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            open_page(page, url)
            upload_photo(page, photo_path)
            yield page
        finally:
            browser.close()


def open_page(page, url):
    """Load the app until its editor is there (not "networkidle": a session's state keeps a heartbeat stream open)."""
    page.goto(url, wait_until="load")
    for selector in ("#editor input[type=file]", "#run", "#preview"):
        page.locator(selector).first.wait_for(state="attached", timeout=60_000)
    page.wait_for_timeout(1_500)  # the editor's canvas initialises after it is attached


def upload_photo(page, path, attempts=3):
    """Upload through the editor's file input until the photo is on the canvas (an upload made while the
    page is still starting can be dropped)."""
    placeholder = page.locator("#editor").get_by_text("Upload an image")
    for attempt in range(attempts):
        page.locator("#editor input[type=file]").first.set_input_files(str(path))
        try:
            placeholder.wait_for(state="hidden", timeout=15_000)
            return
        except playwright.TimeoutError:
            if attempt == attempts - 1:
                raise


@pytest.mark.slow
def test_paint_a_stroke_and_get_a_result(server, tmp_path):
    import httpx
    from skimage import data

    photo = PIL.Image.fromarray(data.coffee()).resize((300, 200), PIL.Image.BICUBIC)  # > working size: stage 2 runs
    photo.save(tmp_path / "coffee.png")
    with browser_page(server, tmp_path / "coffee.png", height=1000) as page:
        page.wait_for_timeout(500)
        zoom = float(page.locator("#editor .zoom-number").inner_text().rstrip("%")) / 100
        box = page.locator("#editor canvas").first.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2  # the photo is centred on the canvas
        page.mouse.move(cx - STROKE, cy)
        page.mouse.down()
        for k in range(1, 11):
            page.mouse.move(cx - STROKE + 2 * STROKE * k / 10, cy, steps=2)
        page.mouse.up()
        page.locator("#prompt textarea").fill("a red rose")
        page.get_by_label("Steps").first.fill("3")
        page.locator("#run").click()
        try:
            page.wait_for_selector("#downloads a", timeout=240_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
        page.wait_for_function("document.querySelectorAll('#results img').length >= 2")
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
        shown = [page.locator("#results img").nth(i).get_attribute("src") for i in range(2)]
        link = page.locator("#downloads a").first.get_attribute("href")

    assert "hdpainter-" in shown[1] and shown[1].endswith(".png")
    response = httpx.get(link if link.startswith("http") else server + "/" + link.lstrip("/"), timeout=60)
    assert response.status_code == 200
    (tmp_path / "result.png").write_bytes(response.content)
    with PIL.Image.open(tmp_path / "result.png") as result:
        params = json.loads(result.text["parameters"])
        assert result.size == photo.size  # full resolution, not the preview
        changed = np.any(np.asarray(result.convert("RGB")) != np.asarray(photo), axis=-1)
    assert params["prompt"] == "a red rose" and params["steps"] == 3 and "upscaler" in params

    # the stroke in photo pixels; changes lie within it grown by the brush radius and the blend's dilation
    w, h = photo.size
    x0, x1 = w / 2 - STROKE / zoom, w / 2 + STROKE / zoom
    margin = 24 + 7 + 3  # brush radius (at most its 24 px size) + blend dilation (48 per 2048 px) + rounding
    ys, xs = np.nonzero(changed)
    assert changed[int(h / 2), int(w / 2)], "the stroke's middle was not inpainted"
    assert xs.min() >= x0 - margin and xs.max() <= x1 + margin, (xs.min(), xs.max(), x0, x1)
    assert ys.min() >= h / 2 - margin and ys.max() <= h / 2 + margin, (ys.min(), ys.max())
    assert changed.sum() > 0.5 * (x1 - x0) * 10  # a band around the stroke, not a dot


@pytest.fixture(scope="module")
def served_app(tiny_model_dir, tiny_upscaler_dir, tmp_path_factory):
    """The UI served from this process, so the test can run the Python API on the very models it uses."""
    from hdpainter.ui import InpaintApp, UIConfig, launch

    config = UIConfig(models=[str(tiny_model_dir)], upscaler=str(tiny_upscaler_dir), working_size=64)
    app = InpaintApp(config, output_dir=tmp_path_factory.mktemp("browser-out"))
    port = free_port()
    demo = launch(app, "127.0.0.1", port, block=False)
    yield app, f"http://127.0.0.1:{port}"
    demo.close()
    app.close()


@pytest.mark.slow
def test_preview_two_samples_then_upscale_the_second(served_app, tmp_path):
    import httpx
    from skimage import data

    from hdpainter.painter import InpaintRequest

    app, url = served_app
    photo = PIL.Image.fromarray(data.coffee()).resize((240, 160), PIL.Image.BICUBIC)  # > working size
    mask = np.zeros((160, 240), np.uint8)
    mask[50:110, 90:150] = 255
    photo.save(tmp_path / "coffee.png")
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    with browser_page(url, tmp_path / "coffee.png", height=1100) as page:
        page.get_by_text("Mask", exact=True).first.click()  # the accordion with the mask upload
        page.locator("#mask-upload input[type=file]").first.set_input_files(str(tmp_path / "mask.png"))
        page.locator("#mask-upload img").first.wait_for(timeout=15_000)
        page.locator("#prompt textarea").fill("a red rose")
        page.get_by_label("Steps").first.fill("2")
        page.get_by_label("Samples").first.fill("2")
        page.locator("#preview").click()
        page.wait_for_function("document.querySelectorAll('#results img').length >= 3", timeout=120_000)
        assert page.locator("#downloads a").count() == 0  # stage 1 only: no full-size file yet
        page.locator("#results img").nth(2).click()  # the second preview (the first item is the input)
        upscale = page.locator("#upscale")
        page.wait_for_function("!document.querySelector('#upscale').disabled", timeout=15_000)
        upscale.click()
        try:
            page.wait_for_selector("#downloads a", timeout=240_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "ui-preview-upscale.png"), full_page=True)
        link = page.locator("#downloads a").first.get_attribute("href")

    response = httpx.get(link if link.startswith("http") else url + "/" + link.lstrip("/"), timeout=60)
    assert response.status_code == 200
    (tmp_path / "result.png").write_bytes(response.content)
    painter = app.cache.get(app.config.models[0])
    request = InpaintRequest.from_options(dict(prompt="a red rose", steps=2, num_samples=2, working_size=64))
    expected = painter(photo, PIL.Image.fromarray(mask), request, progress=False)
    with PIL.Image.open(tmp_path / "result.png") as result:
        params = json.loads(result.text["parameters"])
        assert result.size == photo.size
        assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(expected[1]))
    assert params["seed"] == expected.seeds[1] and params["sample"] == 2 and params["prompt"] == "a red rose"
