"""The web UI's logic (InpaintApp) against the Python API, and the served app over HTTP: queue, limits, paths.

The browser test is in test_ui_browser.py.
"""

import io
import json
import socket
import uuid
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("gradio")

from hdpainter.errors import HDPainterError  # noqa: E402
from hdpainter.painter import HDPainter, InpaintRequest  # noqa: E402
from hdpainter.ui import InpaintApp, UIConfig, UIRequest, form_options, launch, progress_reporter  # noqa: E402

WORKING = 64


def photo(size=(96, 64)):
    from skimage import data

    return PIL.Image.fromarray(data.coffee()).resize(size, PIL.Image.BICUBIC)


def stroke_layer(size, box, alpha=150):
    """A brush layer as the editor sends it: transparent, with a see-through stroke over `box`."""
    layer = np.zeros((size[1], size[0], 4), np.uint8)
    x0, y0, x1, y1 = box
    layer[y0:y1, x0:x1] = (255, 0, 255, alpha)
    return PIL.Image.fromarray(layer, "RGBA")


def box_mask(size, box):
    mask = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return PIL.Image.fromarray(mask)


def form(image, layers=(), model="m", **kw):
    """The form as the browser sends it: the editor, a mask upload, the prompt, the model, options by key."""
    editor = {"background": image.convert("RGBA"), "layers": list(layers), "composite": None}
    defaults = dict(method="painta+rasg", steps=2, seed=3)
    return UIRequest(editor, kw.pop("mask_upload", None), kw.pop("prompt", "a red ball"), model, defaults | kw)


@pytest.fixture(scope="module")
def app(tiny_model_dir, tiny_upscaler_dir, tmp_path_factory):
    config = UIConfig(models=[str(tiny_model_dir)], upscaler=str(tiny_upscaler_dir), working_size=WORKING)
    app = InpaintApp(config, output_dir=tmp_path_factory.mktemp("ui-out"))
    yield app
    app.close()


def api_result(app, image, mask, **kw):
    """The same job through the Python API, on the app's own loaded models."""
    painter = app.cache.get(app.config.models[0])
    defaults = dict(prompt="a red ball", method="painta+rasg", steps=2, seed=3, working_size=WORKING, sr_steps=20)
    return painter(image, mask, InpaintRequest.from_options(defaults | kw), progress=False)


def test_results_equal_the_python_api_with_parameters_in_the_png(app):
    image, box = photo(), (30, 20, 60, 44)
    model = app.config.models[0]
    result = app.run(form(image, [stroke_layer(image.size, box)], model=model, num_samples=2, upscale=False))
    shown, paths = result.image, result.paths
    assert np.array_equal(np.asarray(shown), np.asarray(image))
    expected = api_result(app, image, box_mask(image.size, box), num_samples=2, upscale=False)
    assert len(paths) == 2
    for k, (path, want) in enumerate(zip(paths, expected)):
        with PIL.Image.open(path) as saved:
            params = json.loads(saved.text["parameters"])
            assert saved.size == image.size
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(want))
        assert params["prompt"] == "a red ball" and params["seed"] == 3 + 1000 * k and params["model"] == model
        assert params["steps"] == 2 and params["upscale"] is False
    assert not np.array_equal(np.asarray(expected[0]), np.asarray(expected[1]))  # two seeds, two results


def test_stage_two_runs_for_large_images_with_progress_over_both_stages(app):
    image, box = photo((200, 150)), (80, 50, 130, 100)  # larger than the working size: ×4 SR, then blend
    calls = []

    def progress(fraction, desc=None):
        calls.append((fraction, desc))

    f = form(image, [stroke_layer(image.size, box)], model=app.config.models[0])
    paths = app.run(f, on_step=progress_reporter(progress, f)).paths
    expected = api_result(app, image, box_mask(image.size, box))[0]
    with PIL.Image.open(paths[0]) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected))
        assert json.loads(saved.text["parameters"])["upscaler"] == app.config.upscaler
    fractions = [c[0] for c in calls]
    assert len(calls) == 2 + 20  # every stage-1 step, then every SR step
    assert fractions == sorted(fractions) and fractions[1] == 0.5 and fractions[-1] == 1.0
    assert calls[0][1] == "stage 1: step 1/2" and calls[-1][1] == "stage 2, sample 1: step 20/20"


def test_an_uploaded_mask_takes_precedence_over_the_strokes(app):
    image, box = photo(), (10, 10, 40, 30)
    f = form(
        image,
        [stroke_layer(image.size, (50, 30, 90, 60))],
        model=app.config.models[0],
        upscale=False,
        mask_upload=box_mask(image.size, box).convert("RGB"),
    )
    paths = app.run(f).paths
    expected = api_result(app, image, box_mask(image.size, box), upscale=False)[0]
    with PIL.Image.open(paths[0]) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected))


def test_mask_grow_is_applied(app):
    from hdpainter.images import grow_mask

    image, box = photo(), (30, 20, 50, 40)
    paths = app.run(
        form(image, [stroke_layer(image.size, box)], model=app.config.models[0], upscale=False, mask_grow=6)
    ).paths
    expected = api_result(app, image, grow_mask(box_mask(image.size, box), 6), upscale=False)[0]
    with PIL.Image.open(paths[0]) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected))
        assert json.loads(saved.text["parameters"])["mask_grow"] == 6


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prompt="   "), "type a prompt"),
        (dict(model="/etc"), "unknown model '/etc'"),
        (dict(model="sd2"), "unknown model 'sd2'"),  # a known short name, but not one this server offers
        (dict(mask_upload=box_mask((10, 10), (0, 0, 5, 5))), "the uploaded mask is 10x10 but the image is 96x64"),
        (dict(steps=0), "steps must be in"),
        (dict(num_samples=9), "samples must be in"),
        (dict(method="rasg; rm -rf"), "method must be one of"),
        (dict(background=None), "upload an image first"),
    ],
)
def test_bad_requests_are_one_sentence_errors(app, change, message):
    image = photo()
    layers = change.pop("layers", [stroke_layer(image.size, (30, 20, 60, 44))])
    no_image = "background" in change and change.pop("background") is None
    f = form(image, layers, model=change.pop("model", app.config.models[0]), **change)
    if no_image:
        f.editor["background"] = None
    with pytest.raises(HDPainterError, match=message.replace("(", r"\(")):
        app.run(f)


def test_an_empty_mask_gives_the_input_back_with_a_note(app):
    """The painter's one policy for an empty mask, as the CLI and the API follow it: the input unchanged, a note."""
    image = photo()
    result = app.run(form(image, [], model=app.config.models[0], num_samples=2))
    assert result.notes == ["the mask is empty: nothing to inpaint; the output is the input, unchanged"]
    assert len(result.paths) == 2
    for path in result.paths:
        with PIL.Image.open(path) as saved:
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(image))
            assert json.loads(saved.text["parameters"])["unchanged"] is True


def test_outpainting_from_the_form_needs_no_strokes(app):
    image = photo()
    result = app.run(form(image, [], model=app.config.models[0], upscale=False, outpaint="0,0,32,0"))
    with PIL.Image.open(result.paths[0]) as saved:
        assert saved.size == (image.size[0] + 32, image.size[1]) and not result.notes
        assert json.loads(saved.text["parameters"])["outpaint"] == [0, 0, 32, 0]


def test_another_model_replaces_the_first_and_keeps_the_upscaler(tiny_model_dir, tiny_upscaler_dir, tmp_path):
    from hdpainter.testing import save_inpaint_model

    other = save_inpaint_model(tmp_path / "other", family="sd2", seed=7)
    config = UIConfig(models=[str(tiny_model_dir), str(other)], upscaler=str(tiny_upscaler_dir), working_size=WORKING)
    app = InpaintApp(config, output_dir=tmp_path / "out")
    first = app.cache.get(str(tiny_model_dir))
    assert app.cache.get(str(tiny_model_dir)) is first  # loaded once, reused
    upscaler = first.upscaler
    image, box = photo(), (30, 20, 60, 44)
    a = app.run(form(image, [stroke_layer(image.size, box)], model=str(other), upscale=False)).paths
    second = app.cache.painter
    assert second.model_name == str(other) and second.upscaler is upscaler and first.pipeline is None
    direct = HDPainter.from_pretrained(str(other), upscaler=None)
    want = direct(
        image,
        box_mask(image.size, box),
        InpaintRequest("a red ball", num_inference_steps=2, seed=3, working_size=WORKING, upscale=False),
        progress=False,
    )[0]
    with PIL.Image.open(a[0]) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(want))


# ---- the served app, over HTTP --------------------------------------------------------------------------


def form_value(opt, value):
    """A default as its widget holds it (labels for tri-states, lists for grids)."""
    if opt.labels is not None or (opt.sequence and opt.choices is None):
        return opt.label(value)
    value = 0 if opt.optional and value is None else value
    return list(value) if isinstance(value, tuple) else value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_upscaler_dir, tmp_path_factory):
    config = UIConfig(
        models=[str(tiny_model_dir)], upscaler=str(tiny_upscaler_dir), working_size=WORKING, max_upload_mb=1
    )
    app = InpaintApp(config, output_dir=tmp_path_factory.mktemp("served-out"))
    port = free_port()
    demo = launch(app, "127.0.0.1", port, block=False)
    yield app, f"http://127.0.0.1:{port}"
    demo.close()
    app.close()


def upload(url, name, data):
    import httpx

    return httpx.post(f"{url}/gradio_api/upload", files=[("files", (name, data, "image/png"))], timeout=30)


def client_args(app, image_path, layer_path, prompt, seed):
    from gradio_client import handle_file

    editor = {"background": handle_file(str(image_path)), "layers": [handle_file(str(layer_path))], "composite": None}
    return dict(
        editor=editor,
        mask_upload=None,
        prompt=prompt,
        model=app.config.models[0],
        method="painta+rasg",
        steps=2,
        seed=seed,
        positive_prompt="",
        negative_prompt="",
        upscale=False,
        api_name="/inpaint",
    )


def test_two_concurrent_requests_each_get_their_own_result(server, tmp_path):
    from gradio_client import Client

    app, url = server
    image, box = photo(), (30, 20, 60, 44)
    image.save(tmp_path / "photo.png")
    stroke_layer(image.size, box).save(tmp_path / "layer.png")
    client = Client(url, verbose=False)
    jobs = [
        client.submit(**client_args(app, tmp_path / "photo.png", tmp_path / "layer.png", prompt, seed))
        for prompt, seed in (("a red ball", 5), ("a blue car", 6))
    ]
    results = [job.result(timeout=120) for job in jobs]
    painter = app.cache.get(app.config.models[0])
    for (prompt, seed), (gallery, files) in zip((("a red ball", 5), ("a blue car", 6)), results):
        want = painter(
            image,
            box_mask(image.size, box),
            InpaintRequest(
                prompt,
                num_inference_steps=2,
                seed=seed,
                working_size=WORKING,
                upscale=False,
                positive_prompt="",
                negative_prompt="",
            ),
            progress=False,
        )[0]
        with PIL.Image.open(files[0]) as saved:
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(want))
            assert json.loads(saved.text["parameters"])["prompt"] == prompt
        assert len(gallery) == 2  # the input beside the result


def test_an_upload_named_with_a_path_stays_in_the_upload_folder(server):
    _, url = server
    target = Path("/tmp") / f"hdpainter-escape-{uuid.uuid4().hex}.png"
    name = "../../../../../../.." + str(target)
    response = upload(url, name, png_bytes(photo()))
    assert response.status_code == 200
    stored = Path(response.json()[0])
    assert not target.exists()
    assert ".." not in stored.parts and stored.name != name
    import gradio.utils

    assert stored.resolve().is_relative_to(Path(gradio.utils.get_upload_folder()).resolve())


def test_an_upload_over_the_limit_is_refused(server):
    _, url = server
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)  # incompressible: > 1 MB
    data = png_bytes(PIL.Image.fromarray(noise))
    assert len(data) > 2**20
    response = upload(url, "big.png", data)
    assert response.status_code == 413


def test_a_non_image_upload_is_an_error_and_the_server_goes_on(server, tmp_path):
    from gradio_client import Client

    app, url = server
    (tmp_path / "notes.png").write_bytes(b"this is not an image\n" * 10)
    stroke_layer((96, 64), (30, 20, 60, 44)).save(tmp_path / "layer.png")
    photo().save(tmp_path / "photo.png")
    client = Client(url, verbose=False)
    with pytest.raises(Exception) as failure:
        client.predict(**client_args(app, tmp_path / "notes.png", tmp_path / "layer.png", "a red ball", 1))
    assert "Traceback" not in str(failure.value)
    gallery, files = client.predict(
        **client_args(app, tmp_path / "photo.png", tmp_path / "layer.png", "a red ball", 1)
    )
    assert len(files) == 1 and PIL.Image.open(files[0]).size == (96, 64)


def test_no_request_reaches_files_outside_the_app(server, tiny_model_dir):
    import httpx

    app, url = server
    for path in ("/etc/passwd", str(Path(tiny_model_dir) / "model_index.json"), "../../../../etc/passwd"):
        response = httpx.get(f"{url}/gradio_api/file={path}", timeout=30)
        assert response.status_code in (403, 404), path
    # an editor value that names a server file instead of an upload is refused before our code runs
    widgets = [form_value(opt, app.defaults()[opt.key]) for opt in form_options()]
    payload = {
        "data": [
            {
                "background": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
                "layers": [],
                "composite": None,
            },
            None,
            "x",
            app.config.models[0],
            *widgets,
        ]
    }
    response = httpx.post(f"{url}/gradio_api/call/inpaint", json=payload, timeout=30)
    event = response.json()["event_id"]
    stream = httpx.get(f"{url}/gradio_api/call/inpaint/{event}", timeout=60).text
    assert "event: error" in stream and "root:" not in stream


def test_the_model_is_one_the_server_offers(server, tiny_upscaler_dir, tmp_path):
    from gradio_client import Client

    app, url = server
    photo().save(tmp_path / "photo.png")
    stroke_layer((96, 64), (30, 20, 60, 44)).save(tmp_path / "layer.png")
    args = client_args(app, tmp_path / "photo.png", tmp_path / "layer.png", "a red ball", 1)
    args["model"] = str(tiny_upscaler_dir)  # a real folder on the server, not offered
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not in the list of choices|unknown model"):  # Gradio refuses it first
        Client(url, verbose=False).predict(**args)
    loaded = app.cache.painter  # nothing yet when this test runs alone; never the folder that was asked for
    assert loaded is None or loaded.model_name == app.config.models[0]


def test_a_preview_then_upscaling_the_second_sample_equals_the_one_shot_result(app):
    image, box = photo((200, 150)), (80, 50, 130, 100)  # larger than the working size: stage 2 diffuses
    f = form(image, [stroke_layer(image.size, box)], model=app.config.models[0], num_samples=2, sr_steps=3)
    fractions = []
    kept = app.preview(f, on_step=progress_reporter(lambda x, desc=None: fractions.append(x), f, (1,)))
    assert len(kept.images) == 2 and kept.seeds == [3, 1003] and fractions == [0.5, 1.0]
    assert max(kept.images[0].size) == WORKING  # stage 1's own result, at the working size
    painter = app.cache.get(app.config.models[0])
    stage1_calls = []
    handle = painter.pipeline.unet.register_forward_hook(lambda *a: stage1_calls.append(1))
    try:
        path = app.upscale(kept, 1)
    finally:
        handle.remove()
    assert stage1_calls == []  # from the kept stage-1 result: nothing recomputed
    expected = api_result(app, image, box_mask(image.size, box), num_samples=2, sr_steps=3)
    with PIL.Image.open(path) as saved:
        assert saved.size == image.size
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected[1]))
        params = json.loads(saved.text["parameters"])
    assert params == json.loads(json.dumps(expected.metadata[1])) and params["seed"] == 1003 and params["sample"] == 2
    with pytest.raises(HDPainterError, match="make a preview first"):
        app.upscale(None, 0)
    with pytest.raises(HDPainterError, match="pick one of the 2 preview results"):
        app.upscale(kept, 2)
    empty = form(image, [], model=app.config.models[0])
    with pytest.raises(HDPainterError, match="mask is empty"):
        app.preview(empty)
