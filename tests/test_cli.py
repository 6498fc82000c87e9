"""The command line: real runs on the tiny model, and one clear line (no traceback, no file) for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from hdpainter import cli
from hdpainter.painter import prepare_job

STEPS = ["--steps", "2", "--device", "cpu"]


@pytest.fixture()
def files(tmp_path, photo):
    image, mask = photo
    image.save(tmp_path / "image.png")
    mask.save(tmp_path / "mask.png")
    return tmp_path


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_subprocess_run_keeps_size_metadata_and_known_pixels(tmp_path, tiny_model_dir):
    """A real process, as a user runs it: odd-sized RGBA input, two samples."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (207, 301, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    mask = np.zeros((207, 301), np.uint8)
    mask[60:140, 100:220] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdpainter.cli",
            "inpaint",
            "--image",
            str(tmp_path / "in.png"),
            "--mask",
            str(tmp_path / "mask.png"),
            "--prompt",
            "a red boat",
            "--output",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--num-samples",
            "2",
            *STEPS,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    paths = [tmp_path / "out-1.png", tmp_path / "out-2.png"]
    assert proc.stdout.split() == [str(p) for p in paths]
    results = [PIL.Image.open(p) for p in paths]
    params = [json.loads(r.info["parameters"]) for r in results]
    assert [p["seed"] for p in params] == [1, 1001]
    assert params[0]["prompt"] == "a red boat" and params[0]["method"] == "painta+rasg" and params[0]["steps"] == 2
    original = rgba[..., :3]
    far = ~np.asarray(PIL.Image.fromarray(mask).resize((301, 207))).astype(bool)
    far[50:150, 90:230] = False  # away from the mask (grown by the compositing margin)
    for r in results:
        pixels = np.asarray(r.convert("RGB"))
        assert r.size == (301, 207)
        assert (pixels[far] == original[far]).all()
        assert (pixels[60:140, 100:220] != original[60:140, 100:220]).any()
    assert not (np.asarray(results[0]) == np.asarray(results[1])).all()


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_greyscale_and_16_bit_inputs(capsys, tmp_path, tiny_model_dir, photo, mode):
    grey = np.asarray(photo[0].convert("L"))
    image = PIL.Image.fromarray(grey.astype(np.uint16) * 257) if mode == "I;16" else PIL.Image.fromarray(grey)
    image.save(tmp_path / "grey.png")
    photo[1].save(tmp_path / "mask.png")
    code, out, err = run_cli(
        capsys,
        "inpaint",
        "--image",
        str(tmp_path / "grey.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--prompt",
        "a cat",
        "--output",
        str(tmp_path / "o.png"),
        "--model",
        str(tiny_model_dir),
        *STEPS,
    )
    assert code == 0, err
    result = np.asarray(PIL.Image.open(tmp_path / "o.png"))
    assert result.shape == (256, 256, 3)
    assert (result[:40, :40, 0] == grey[:40, :40]).all()  # a known corner keeps the (rescaled) input


def corrupt(path):
    path.write_bytes(b"not an image at all")
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing image", "image not found"),
        ("corrupt image", "cannot read image"),
        ("mask size", "must match"),
        ("full mask", "whole image"),
        ("unknown model", "unknown model 'nonsense'"),
        ("missing folder", "model path not found"),
        ("bad extension", "image format"),
        ("no output folder", "output folder does not exist"),
        ("too many steps", "--steps must be in 1..1000"),
        ("bad working size", "--working-size must be a multiple of 8"),
        ("unknown upscaler", "unknown model 'nonsense'"),
        ("cpu offload without a GPU", "it needs a CUDA device"),
        ("huge blend dilation", "--blend-dilation must be in 1..256"),
        ("negative feather", "--mask-feather must be at least 0"),
    ],
)
def test_bad_input_gives_one_line_and_no_file(capsys, files, tiny_model_dir, case, message):
    image, mask, model, out = files / "image.png", files / "mask.png", str(tiny_model_dir), files / "out.png"
    if case == "missing image":
        image = files / "missing.png"
    elif case == "corrupt image":
        image = corrupt(files / "corrupt.png")
    elif case == "mask size":
        PIL.Image.new("L", (100, 80), 255).save(mask)
    elif case == "full mask":
        PIL.Image.new("L", (256, 256), 255).save(mask)
    elif case == "unknown model":
        model = "nonsense"
    elif case == "missing folder":
        model = str(files / "no-such-model")
    elif case == "bad extension":
        out = files / "out.xyz"
    elif case == "no output folder":
        out = files / "missing" / "out.png"
    steps = ["--steps", "2000", "--device", "cpu"] if case == "too many steps" else STEPS
    if case == "bad working size":
        steps = [*steps, "--working-size", "100"]
    if case == "cpu offload without a GPU":
        steps = [*steps, "--cpu-offload"]
    if case == "huge blend dilation":
        steps = [*steps, "--blend-dilation", "100000"]
    if case == "negative feather":
        steps = [*steps, "--mask-feather", "-2"]
    if case == "unknown upscaler":
        steps = [*steps, "--upscaler", "nonsense", "--working-size", "128"]  # 256 px > 128: stage 2 needs the upscaler
    code, stdout, err = run_cli(
        capsys,
        "inpaint",
        "--image",
        str(image),
        "--mask",
        str(mask),
        "--prompt",
        "a boat",
        "--output",
        str(out),
        "--model",
        model,
        *steps,
    )
    assert code == 2
    assert err.startswith("hdpainter: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in files.iterdir())


@pytest.mark.slow
def test_offline_hub_model_suggests_a_local_folder(files):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(files / "hf-home"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdpainter.cli",
            "inpaint",
            "--image",
            str(files / "image.png"),
            "--mask",
            str(files / "mask.png"),
            "--prompt",
            "a boat",
            "--output",
            str(files / "out.png"),
            "--model",
            "sd2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "hdpainter: error: model 'sd2' (stabilityai/stable-diffusion-2-inpainting) is not in the local cache"
    )
    assert "--model DIR" in proc.stderr and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not (files / "out.png").exists()


def test_empty_mask_writes_the_input_unchanged_and_says_so(capsys, files):
    PIL.Image.new("L", (256, 256), 0).save(files / "mask.png")
    out = files / "out.png"
    code, stdout, err = run_cli(
        capsys,
        "inpaint",
        "--image",
        str(files / "image.png"),
        "--mask",
        str(files / "mask.png"),
        "--prompt",
        "a boat",
        "--output",
        str(out),
        "--model",
        "nonsense-never-loaded",
    )
    assert code == 0 and "mask is empty" in err and stdout.split() == [str(out)]
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(files / "image.png")))


@pytest.mark.slow
def test_offline_upscaler_is_a_clear_error_before_any_work(files, tiny_model_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(files / "hf-home"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdpainter.cli",
            "inpaint",
            "--image",
            str(files / "image.png"),
            "--mask",
            str(files / "mask.png"),
            "--prompt",
            "a boat",
            "--output",
            str(files / "out.png"),
            "--model",
            str(tiny_model_dir),
            "--working-size",
            "128",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "hdpainter: error: model 'x4' (stabilityai/stable-diffusion-x4-upscaler) is not in the local cache"
    )
    assert "--upscaler DIR" in proc.stderr and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not (files / "out.png").exists()


def test_stage2_run_with_the_tiny_upscaler(capsys, files, tiny_model_dir, tiny_upscaler_dir):
    """256 px photo at a 128 px working size: stage 1, ×4 specialised SR on a crop, resize to 256, Poisson blend."""
    out = files / "out.png"
    code, stdout, err = run_cli(
        capsys,
        "inpaint",
        "--image",
        str(files / "image.png"),
        "--mask",
        str(files / "mask.png"),
        "--prompt",
        "a boat",
        "--output",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--upscaler",
        str(tiny_upscaler_dir),
        "--working-size",
        "128",
        "--sr-steps",
        "2",
        *STEPS,
    )
    assert code == 0, err
    result = PIL.Image.open(out)
    params = json.loads(result.info["parameters"])
    assert (
        params["sr_method"] == "specialized"
        and params["sr_steps"] == 2
        and params["upscaler"] == str(tiny_upscaler_dir)
    )
    original, pixels = np.asarray(PIL.Image.open(files / "image.png")), np.asarray(result)
    assert pixels.shape == original.shape
    from hdpainter.core.blend import blend_region

    x0, y0, x1, y1 = blend_region(np.asarray(PIL.Image.open(files / "mask.png")), 32, 6)  # 48 × 256 / 2048 = 6
    outside = np.ones(original.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(pixels[outside], original[outside])
    assert (pixels[70:170, 100:190] != original[70:170, 100:190]).any()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    image = PIL.Image.new("RGB", (64, 64))
    target = tmp_path / "x.png"

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        cli.save_image(image, target, {"prompt": "x"})
    assert list(tmp_path.iterdir()) == []


def test_models_lists_short_names_and_what_the_local_cache_holds(tmp_path):
    """A fake hub cache under HF_HOME with sd2's model_index.json: sd2 is listed as cached, the others not."""
    repo = tmp_path / "hf-home" / "hub" / "models--stabilityai--stable-diffusion-2-inpainting"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "model_index.json").write_text("{}")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "hdpainter.cli", "models"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "stabilityai/stable-diffusion-2-inpainting" in lines["sd2"] and lines["sd2"].rstrip().endswith("yes")
    assert lines["sd15"].rstrip().endswith("no") and lines["x4"].rstrip().endswith("no")
    assert "diffusers/stable-diffusion-xl-1.0-inpainting-0.1" in lines["sdxl"] and lines["sdxl"].rstrip().endswith(
        "no"
    )
    assert "upscaler" in lines["x4"] and str(tmp_path / "hf-home" / "hub") in proc.stdout
    assert "(shipped with hdpainter)" in lines["toy"] and lines["toy"].rstrip().endswith("yes (in the package)")


def test_mask_conveniences_apply_colour_then_invert_then_grow(tmp_path):
    picture = np.full((40, 60, 3), 90, np.uint8)
    picture[10:20, 10:30] = (255, 0, 0)
    PIL.Image.fromarray(picture).save(tmp_path / "painted.png")
    base = [
        "inpaint",
        "--image",
        "x.png",
        "--mask",
        str(tmp_path / "painted.png"),
        "--prompt",
        "p",
        "--output",
        "o.png",
    ]
    red = np.zeros((40, 60), bool)
    red[10:20, 10:30] = True
    args = cli._parser().parse_args([*base, "--mask-color", "255,0,0"])
    assert np.array_equal(np.asarray(cli.load_mask(args)) > 0, red)
    args = cli._parser().parse_args([*base, "--mask-color", "#ff0000", "--mask-invert", "--mask-grow", "2"])
    grown_outside = np.ones((40, 60), bool)
    grown_outside[12:18, 12:28] = False  # the unmasked hole shrinks by 2 on each side
    job = prepare_job(PIL.Image.fromarray(picture), cli.load_mask(args), cli.make_request(args, "p"))  # invert, grow
    assert np.array_equal(np.asarray(job.mask) > 0, grown_outside)
    args = cli._parser().parse_args([*base, "--mask-feather", "4"])
    assert cli.make_request(args, "p").mask_feather == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "/no/such/folder"], "model path not found"),
        (["--lan", "--host", "10.0.0.1"], "give --host or --lan, not both"),
        (["--port", "70000"], "--port must be in 1..65535"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be at least 1"),
        (["--upscaler", "nope"], "unknown model 'nope'"),
        (["--working-size", "50"], "--working-size must be in 64..2048"),
    ],
)
def test_ui_bad_options_are_one_line_before_any_loading(capsys, tiny_model_dir, extra, message):
    import socket

    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["ui", "--model", str(tiny_model_dir), "--upscaler", "none", "--port", str(port)]
    if "--model" in extra:
        argv = argv[:1] + argv[3:]
    code, out, err = run_cli(capsys, *argv, *extra)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_ui_port_in_use_is_one_line_before_any_loading(capsys, tiny_model_dir):
    import socket

    pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run_cli(
            capsys, "ui", "--model", str(tiny_model_dir), "--upscaler", "none", "--port", str(port)
        )
    assert (
        code == 2
        and err
        == f"hdpainter: error: cannot listen on 127.0.0.1:{port}: the port is in use; "
        "choose another with --port or --host\n"
    )


def test_vanilla_guidance_ablation_from_the_command_line(capsys, files, tiny_model_dir):
    """--method vanilla-guidance --vanilla-scale s reaches the sampler: s = 0 is plain DDIM (the baseline,
    up to the split of the CFG halves), a large s changes the fill; both are recorded in the metadata."""
    outputs = {}
    for method, scale in (("baseline", "0"), ("vanilla-guidance", "0"), ("vanilla-guidance", "30000")):
        out = files / f"{method}-{scale}.png"
        code, _, err = run_cli(
            capsys,
            "inpaint",
            "--image",
            str(files / "image.png"),
            "--mask",
            str(files / "mask.png"),
            "--prompt",
            "a boat",
            "--output",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--method",
            method,
            "--vanilla-scale",
            scale,
            "--working-size",
            "256",
            *STEPS,
        )
        assert code == 0, err
        params = json.loads(PIL.Image.open(out).info["parameters"])
        assert params["method"] == method and params["vanilla_scale"] == float(scale)
        outputs[method, scale] = np.asarray(PIL.Image.open(out), dtype=int)
    base = outputs["baseline", "0"]
    assert np.abs(outputs["vanilla-guidance", "0"] - base).max() <= 2
    assert np.abs(outputs["vanilla-guidance", "30000"] - base).max() > 20
