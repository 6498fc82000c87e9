"""`hdpainter batch`: folders and manifests, per-item failures, resuming, and a two-process distributed run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest

from hdpainter import cli

FAST = ["--steps", "2", "--working-size", "64", "--sr-method", "bicubic", "--device", "cpu"]


def make_folder(folder, count=5, bad=()):
    """`count` photos img0..img{count-1} with masks; "no mask" and "broken" in `bad` spoil img3 and img4."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    photo = PIL.Image.fromarray(data.astronaut()).resize((96, 72), PIL.Image.BICUBIC)
    mask = np.zeros((72, 96), np.uint8)
    mask[20:50, 30:60] = 255
    for k in range(count):
        photo.rotate(10 * k).save(folder / f"img{k}.png")
        PIL.Image.fromarray(mask).save(folder / f"img{k}_mask.png")
    if "no mask" in bad:
        (folder / "img3_mask.png").unlink()
    if "broken" in bad:
        (folder / "img4.png").write_bytes(b"not an image")
    return folder


def run(capsys, *argv):
    code = cli.main(["batch", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folder_batch_reports_bad_items_and_finishes_the_others(capsys, tmp_path, tiny_model_dir):
    folder = make_folder(tmp_path / "in", bad=("no mask", "broken"))
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, folder, "--output", out, "--prompt", "a red ball", "--model", tiny_model_dir, *FAST
    )
    assert code == 1  # some items failed
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert stdout.split() == [str(out / f"img{k}.png") for k in range(3)]
    assert "failed: img3: no mask img3_mask.png" in err and "failed: img4: cannot read image" in err
    assert "batch: 3 written, 0 already done, 2 failed, of 5" in err
    params = json.loads(PIL.Image.open(out / "img1.png").info["parameters"])
    assert params["prompt"] == "a red ball" and params["image"] == "img1.png" and params["seed"] == 1
    assert PIL.Image.open(out / "img1.png").size == (96, 72)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_rows_carry_their_own_prompt_and_seed(capsys, tmp_path, tiny_model_dir, kind):
    folder = make_folder(tmp_path / "in", count=3)
    rows = [
        {"image": "img0.png", "mask": "img0_mask.png", "prompt": "a boat", "seed": 7},
        {"image": "img1.png", "mask": "img1_mask.png", "prompt": "", "seed": ""},  # falls back to --prompt, --seed
        {"image": "img2.png", "mask": "", "prompt": "a dog"},  # no mask: reported
    ]
    manifest = folder / f"list.{kind}"
    if kind == "csv":
        lines = ["image,mask,prompt,seed"] + [
            f"{r['image']},{r['mask']},{r['prompt']},{r.get('seed', '')}" for r in rows
        ]
        manifest.write_text("\n".join(lines) + "\n")
    else:
        manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, manifest, "--output", out, "--prompt", "a cat", "--seed", "3", "--model", tiny_model_dir, *FAST
    )
    assert code == 1 and "failed: img2: row 3: image and mask are both needed" in err
    first, second = (json.loads(PIL.Image.open(out / f"img{k}.png").info["parameters"]) for k in (0, 1))
    assert (first["prompt"], first["seed"]) == ("a boat", 7)
    assert (second["prompt"], second["seed"]) == ("a cat", 3)


def test_manifest_rows_may_carry_any_option_and_bad_cells_fail_their_row(capsys, tmp_path, tiny_model_dir):
    from hdpainter.painter import HDPainter
    from hdpainter.request import InpaintRequest

    folder = make_folder(tmp_path / "in", count=3)
    rows = [
        {
            "image": "img0.png",
            "mask": "img0_mask.png",
            "prompt": "a boat",
            "method": "baseline",
            "mask_grow": 3,
            "num_samples": 2,
            "guidance_scale": 1.0,
            "upscale": False,
        },
        {"image": "img1.png", "mask": "img1_mask.png", "prompt": "a cat", "steps": 0},
        {"image": "img2.png", "mask": "img2_mask.png", "prompt": "a dog", "colour": "red"},
    ]
    manifest = folder / "list.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, _, err = run(capsys, manifest, "--output", tmp_path / "out", "--model", tiny_model_dir, *FAST)
    assert code == 1 and "batch: 2 written, 0 already done, 1 failed, of 3" in err
    assert "failed: img1: row 2: steps must be in 1..1000, got 0" in err  # named by its column
    assert "note: manifest column 'colour' is not an option of inpaint: ignored" in err
    painter = HDPainter.from_pretrained(str(tiny_model_dir), upscaler=None, device="cpu")
    options = {k: v for k, v in rows[0].items() if k not in ("image", "mask")}  # the row's own, over the flags
    request = InpaintRequest.from_options({"steps": 2, "working_size": 64, "sr_method": "bicubic"} | options)
    want = painter(
        PIL.Image.open(folder / "img0.png"), PIL.Image.open(folder / "img0_mask.png"), request, progress=False
    )
    for k in (1, 2):
        with PIL.Image.open(tmp_path / "out" / f"img0-{k}.png") as saved:
            params = json.loads(saved.info["parameters"])
            assert (params["mask_grow"], params["guidance_scale"], params["upscale"], params["sample"]) == (
                3,
                1.0,
                False,
                k,
            )
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(want[k - 1]))


def test_empty_cells_fall_back_and_other_columns_are_noted(capsys, tmp_path, tiny_model_dir):
    """An empty `method` cell is the command line's method; a result's own metadata columns are not options and
    are passed over silently; any other column is noted once and ignored; a scalar fills a list option."""
    folder = make_folder(tmp_path / "in", count=2)
    lines = [
        "image,mask,prompt,method,model,sample,notes",
        "img0.png,img0_mask.png,a boat,,sd2,1,first",
        "img1.png,img1_mask.png,a cat,rasg,,,",
    ]
    (folder / "list.csv").write_text("\n".join(lines) + "\n")
    (folder / "grids.jsonl").write_text(
        json.dumps({"image": "img0.png", "mask": "img0_mask.png", "prompt": "a boat", "painta_grids": 32}) + "\n"
    )
    code, _, err = run(
        capsys,
        folder / "list.csv",
        "--output",
        tmp_path / "out",
        "--model",
        tiny_model_dir,
        "--method",
        "painta",
        *FAST,
    )
    assert code == 0 and "batch: 2 written" in err
    assert (
        err.count("note: manifest column 'notes' is not an option of inpaint: ignored") == 1 and "'model'" not in err
    )
    methods = [
        json.loads(PIL.Image.open(tmp_path / "out" / f"img{k}.png").info["parameters"])["method"] for k in (0, 1)
    ]
    assert methods == ["painta", "rasg"]
    code, _, err = run(
        capsys, folder / "grids.jsonl", "--output", tmp_path / "grids", "--model", tiny_model_dir, *FAST
    )
    assert code == 0 and json.loads(PIL.Image.open(tmp_path / "grids" / "img0.png").info["parameters"])[
        "painta_grids"
    ] == [32]


def test_rerun_redoes_exactly_the_missing_items(capsys, tmp_path, tiny_model_dir):
    folder = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    args = [folder, "--output", out, "--prompt", "a red ball", "--model", tiny_model_dir, *FAST]
    assert run(capsys, *args)[0] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "img1.png").unlink()
    (out / "img3.png").unlink()
    (out / ".img3.png.abc123.tmp").write_bytes(b"half a png")  # what a killed run leaves
    time.sleep(0.01)
    code, stdout, err = run(capsys, *args)
    assert code == 0 and stdout.split() == [str(out / "img1.png"), str(out / "img3.png")]
    assert "batch: 2 written, 3 already done, 0 failed, of 5" in err
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(5)]
    for name in ("img0.png", "img2.png", "img4.png"):
        assert (out / name).stat().st_mtime_ns == stamps[name]


@pytest.mark.slow
def test_a_killed_batch_leaves_no_corrupt_output_and_resumes(tmp_path, tiny_model_dir):
    folder = make_folder(tmp_path / "in", count=6)
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "hdpainter.cli",
        "batch",
        str(folder),
        "--output",
        str(out),
        "--prompt",
        "a red ball",
        "--model",
        str(tiny_model_dir),
        "--steps",
        "12",
        "--working-size",
        "64",
        "--sr-method",
        "bicubic",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not any(out.glob("img*.png")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("img*.png"))
    assert 1 <= len(done) < 6
    for path in done:  # every output there is whole
        with PIL.Image.open(path) as image:
            image.load()
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(6)]  # no temporaries left
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    assert f"{len(done)} already done" in finished.stderr


@pytest.mark.slow
def test_two_processes_split_the_items_and_write_each_once(tmp_path, tiny_model_dir):
    folder = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hdpainter.cli",
            "batch",
            str(folder),
            "--output",
            str(out),
            "--prompt",
            "a red ball",
            "--model",
            str(tiny_model_dir),
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = proc.stdout.split()
    assert sorted(written) == sorted(str(out / f"img{k}.png") for k in range(5))  # each item once, by one rank
    assert "rank 0/2" in proc.stderr and "rank 1/2" in proc.stderr
    assert "batch: 5 written, 0 already done, 0 failed, of 5" in proc.stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("no prompt", "a folder batch needs --prompt"),
        ("duplicate names", "would both write img0.png"),
        ("missing input", "batch input not found"),
    ],
)
def test_batch_input_mistakes_are_one_line(capsys, tmp_path, case, message):
    folder = make_folder(tmp_path / "in", count=2)
    source, extra = folder, ["--prompt", "x"]
    if case == "no prompt":
        extra = []
    elif case == "duplicate names":
        source = folder / "list.jsonl"
        row = json.dumps({"image": "img0.png", "mask": "img0_mask.png", "prompt": "a"})
        source.write_text(row + "\n" + row + "\n")
    elif case == "missing input":
        source = tmp_path / "nowhere"
    code, stdout, err = run(capsys, source, "--output", tmp_path / "out", "--model", "never-loaded", *extra)
    assert code == 2 and err.startswith("hdpainter: error: ") and message in err and err.count("\n") == 1
