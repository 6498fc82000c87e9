"""`hdpainter eval`: the COCO test set, the metrics against hand computations, and whole runs on tiny models
(resuming, two processes, the table) with tiny random-weight CLIP, RT-DETR and aesthetic stand-ins."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from hdpainter import cli
from hdpainter.errors import HDPainterError
from hdpainter.eval import metrics as M
from hdpainter.eval.coco import Coco, Pair, Sample, instance_mask, mask_box, read_pairs, sample_pairs, square_crop
from hdpainter.eval.stats import mean_interval, rate_interval
from tests.cocofake import make_coco, polygon_area_mask

REFERENCE_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference" / "mscoco_testset_10000.csv"


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    from hdpainter.testing import save_aesthetic_head, save_clip_model, save_detector

    root = tmp_path_factory.mktemp("metric-models")
    save_clip_model(root / "clip", projection_dim=16)
    save_clip_model(root / "pick", seed=3, projection_dim=16)
    save_detector(root / "detector", ["person", "boat", "cat", "dog"])
    save_aesthetic_head(root / "aesthetic" / "head.pth", dim=16)
    return root


# ---- the test set -------------------------------------------------------------------------------------------


def test_pairs_index_sorted_image_ids_and_polygon_annotations_in_file_order(coco_dir):
    coco = Coco(coco_dir)
    assert coco.image_ids == [3, 7, 42, 139]
    # image 7 has person, a crowd region (RLE: left out), boat; image 3 has none
    assert coco.all_pairs() == [Pair(1, 0), Pair(1, 1), Pair(2, 0), Pair(2, 1), Pair(3, 0)]
    assert coco.sample(Pair(1, 1), size=128).prompt == "boat"
    assert coco.sample(Pair(2, 1), size=128).prompt == "cat"
    for bad, message in (
        (Pair(4, 0), "image_idx 4 is out of 0..3"),
        (Pair(0, 0), "segment_idx 0 is out of 0..-1"),
        (Pair(1, 2), "segment_idx 2 is out of 0..1"),
    ):
        with pytest.raises(HDPainterError, match=message.replace(".", r"\.")):
            coco.check(bad)


def test_reference_pair_list_format(tmp_path):
    (tmp_path / "pairs.csv").write_text("image_idx,segment_idx\n241,5\n3478,8\n")
    assert read_pairs(tmp_path / "pairs.csv") == [Pair(241, 5), Pair(3478, 8)]
    (tmp_path / "bad.csv").write_text("image_idx,segment_idx\n241,x\n")
    with pytest.raises(HDPainterError, match="line 2: expected integer columns"):
        read_pairs(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("image_idx,segment_idx\n")
    with pytest.raises(HDPainterError, match="lists no pairs"):
        read_pairs(tmp_path / "empty.csv")


@pytest.mark.skipif(not REFERENCE_PAIRS.exists(), reason="the reference's pair list is not on this machine")
def test_the_references_own_list_parses():
    pairs = read_pairs(REFERENCE_PAIRS)
    assert len(pairs) == 10000 and pairs[:2] == [Pair(241, 5), Pair(3478, 8)]
    assert max(p.image_idx for p in pairs) < 5000  # val2017 has 5,000 images


def same_up_to_edge_pixels(a, b):
    """Equal but for pixels on b's boundary (OpenCV and PIL rasterise slanted edges differently)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    edge = binary_dilation(b) & ~binary_erosion(b)
    return not ((a ^ b) & ~edge).any() and (a ^ b).sum() <= 0.05 * edge.sum()


def test_convex_hull_masks_against_hand_made_polygons():
    # a concave polygon: its hull fills the notch, the polygon itself does not
    concave = [[40, 20, 110, 20, 110, 90, 75, 50, 40, 90]]
    hull = np.asarray(instance_mask(concave, (150, 100), hull=True)) > 0
    exact = np.asarray(instance_mask(concave, (150, 100), hull=False)) > 0
    rectangle = polygon_area_mask([40, 20, 110, 20, 110, 90, 40, 90], (150, 100))
    assert np.array_equal(hull, rectangle)  # axis-aligned: pixel-exact
    assert same_up_to_edge_pixels(exact, polygon_area_mask(concave[0], (150, 100)))
    assert hull[70, 75] and not exact[70, 75]
    # two parts: one hull over both, the gap between them included. By hand: (140, 60) lies inside the
    # edge (150, 50)–(125, 100) (x = 145 there), (110, 60) outside the edge (125, 100)–(100, 10) (x = 113.9)
    parts = [[100, 10, 150, 10, 150, 50], [110, 60, 140, 60, 125, 100]]
    two = np.asarray(instance_mask(parts, (160, 120))) > 0
    assert same_up_to_edge_pixels(two, polygon_area_mask([100, 10, 150, 10, 150, 50, 125, 100, 110, 60], (160, 120)))
    assert two[55, 125] and not (np.asarray(instance_mask(parts, (160, 120), hull=False)) > 0)[55, 125]
    # coordinates are truncated to integers (70.9 → 70), as the reference's np.int32
    truncated = np.asarray(instance_mask([[20, 20, 70.9, 25, 60, 80, 25, 70]], (160, 120))) > 0
    assert truncated[25, 70] and not truncated[25, 71]


def test_seeded_sampler_is_deterministic_and_distinct(coco_dir):
    coco = Coco(coco_dir)
    a, b = sample_pairs(coco, 4, seed=0), sample_pairs(coco, 4, seed=0)
    assert a == b and len(set(a)) == 4 and set(a) <= set(coco.all_pairs())
    orders = {tuple(sample_pairs(coco, 5, seed=s)) for s in range(6)}
    assert len(orders) > 1  # other seeds, other draws
    with pytest.raises(HDPainterError, match="only 5 polygon instances"):
        sample_pairs(coco, 6)


def test_samples_are_resized_like_the_reference(coco_dir):
    sample = Coco(coco_dir).sample(Pair(2, 0), size=512)  # 160x120 → long side 512, short side truncated
    assert sample.image.size == (512, 384) == sample.mask.size
    values = np.unique(np.asarray(sample.mask))
    assert values[0] == 0 and values[-1] == 255 and len(values) > 2  # bicubic leaves a soft edge, as the reference


def test_box_and_square_crop_geometry():
    mask = np.zeros((40, 50), np.uint8)
    mask[10:14, 5:15] = 255
    mask[14, 7] = 3  # a faint soft-edge pixel counts
    assert mask_box(PIL.Image.fromarray(mask)) == (5, 10, 15, 15)
    image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3) | 1  # no zero pixels of its own
    crop = np.asarray(
        square_crop(PIL.Image.fromarray(image), (5, 10, 15, 15), size=10)
    )  # 10x5 box: pad 2 above, 3 below
    assert np.array_equal(crop[2:7], image[10:15, 5:15])
    assert not crop[:2].any() and not crop[7:].any()
    import cv2

    wide = np.asarray(square_crop(PIL.Image.fromarray(image), (5, 10, 15, 15), size=224))
    padded = np.zeros((10, 10, 3), np.uint8)
    padded[2:7] = image[10:15, 5:15]
    assert np.array_equal(wide, cv2.resize(padded, (224, 224), interpolation=cv2.INTER_CUBIC))
    with pytest.raises(HDPainterError, match="empty"):
        mask_box(PIL.Image.new("L", (8, 8)))


# ---- metrics against hand computations ----------------------------------------------------------------------


def test_intervals_against_hand_computed_values():
    mean, low, high = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * math.sqrt(5 / 3) / 2  # s² = (2.25 + 0.25 + 0.25 + 2.25) / 3
    assert mean == 2.5 and math.isclose(low, 2.5 - half) and math.isclose(high, 2.5 + half)
    assert math.isnan(mean_interval([7.0])[1]) and mean_interval([7.0])[0] == 7.0
    p, low, high = rate_interval(5, 10)
    assert p == 0.5 and math.isclose(low, 0.2365931, abs_tol=1e-6) and math.isclose(high, 0.7634069, abs_tol=1e-6)
    p, low, high = rate_interval(0, 10)
    assert p == 0 and low == 0 and math.isclose(high, 0.2775328, abs_tol=1e-6)
    assert rate_interval(10, 10)[1:] == pytest.approx((1 - 0.2775328, 1.0), abs=1e-6)


def tiny_sample(seed=0):
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    mask = np.zeros((96, 128), np.uint8)
    mask[20:60, 30:90] = 255
    return Sample(Pair(0, 0), 1, image, PIL.Image.fromarray(mask), "dog")


def reference_features(model, processor, images=None, text=None):
    """CLIP embeddings the plain transformers way (get_*_features), normalised."""
    import torch

    with torch.no_grad():
        if images is not None:
            out = model.get_image_features(**processor(images=images, return_tensors="pt"))
        else:
            out = model.get_text_features(**processor(text=text, return_tensors="pt", padding=True))
    out = getattr(out, "pooler_output", out)
    return out / out.norm(dim=-1, keepdim=True)


def test_clip_score_is_100_max_cos_0_on_the_padded_box(stand_ins):
    from transformers import CLIPModel, CLIPProcessor

    metric = M.ClipScore(str(stand_ins / "clip"))
    metric.load("cpu")
    model, processor = CLIPModel.from_pretrained(stand_ins / "clip"), CLIPProcessor.from_pretrained(stand_ins / "clip")
    sample = tiny_sample(0)
    sample.prompt = "cat"
    results = {"photo": sample.image} | {
        c: PIL.Image.new("RGB", sample.image.size, c) for c in ("red", "green", "blue")
    }
    got = metric.score(sample, results)
    crops = [square_crop(x, mask_box(sample.mask), 224) for x in results.values()]
    cos = (reference_features(model, processor, images=crops) @ reference_features(model, processor, text=["cat"]).T)[
        :, 0
    ]
    for method, c in zip(results, cos.tolist()):
        assert got[method] == pytest.approx(100 * max(c, 0.0), abs=1e-4)
    assert min(cos.tolist()) < 0 and max(cos.tolist()) > 0
    assert 0.0 in got.values()  # a crop pointing away from the text scores 0, not a negative number


def test_pickscore_is_a_two_way_softmax_against_the_reference(stand_ins):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    metric = M.PickScore(str(stand_ins / "pick"), str(stand_ins / "clip"), reference="baseline")
    metric.load("cpu")
    model, processor = CLIPModel.from_pretrained(stand_ins / "pick"), CLIPProcessor.from_pretrained(stand_ins / "clip")
    sample = tiny_sample(1)
    results = {"baseline": sample.image, "rasg": tiny_sample(2).image, "painta": tiny_sample(3).image}
    got = metric.score(sample, results)
    images = reference_features(model, processor, images=list(results.values()))
    scores = model.logit_scale.exp().item() * (images @ reference_features(model, processor, text=["dog"]).T)[:, 0]
    for k, method in enumerate(results):
        want = torch.softmax(torch.stack([scores[k], scores[0]]), 0)[0].item()
        assert got[method] == pytest.approx(want, abs=1e-5)
    assert got["baseline"] == 0.5
    with pytest.raises(HDPainterError, match="not among the methods"):
        metric.score(sample, {"rasg": sample.image})


def test_aesthetic_is_the_mlp_on_the_normalised_embedding(stand_ins):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    metric = M.Aesthetic(str(stand_ins / "clip"), f"{stand_ins / 'aesthetic'}:head.pth")
    metric.load("cpu")
    sample = tiny_sample(4)
    got = metric.score(sample, {"x": sample.image})["x"]
    model, processor = CLIPModel.from_pretrained(stand_ins / "clip"), CLIPProcessor.from_pretrained(stand_ins / "clip")
    v = reference_features(model, processor, images=[sample.image])[0].double().numpy()
    state = torch.load(stand_ins / "aesthetic" / "head.pth", weights_only=True)
    for k in (0, 2, 4, 6, 7):  # linear layers, no activations; dropouts are identity at evaluation
        v = state[f"layers.{k}.weight"].double().numpy() @ v + state[f"layers.{k}.bias"].double().numpy()
    assert got == pytest.approx(float(v[0]), abs=1e-5)


def test_accuracy_counts_the_prompts_class_in_the_box(stand_ins):
    class Seen(M.Accuracy):
        def __init__(self, found):
            super().__init__("unused")
            self.found, self.crops = found, []

        def detect(self, crop):
            self.crops.append(crop.size)
            return self.found

    sample = tiny_sample()
    assert Seen(["cat", "dog"]).score(sample, {"m": sample.image}) == {"m": 1.0}
    metric = Seen(["cat", "person"])
    assert metric.score(sample, {"m": sample.image}) == {"m": 0.0} and metric.crops == [(60, 40)]  # the box, unpadded
    real = M.Accuracy(str(stand_ins / "detector"), threshold=0.0)  # the tiny RT-DETR: every query above 0
    real.load("cpu")
    names = real.detect(sample.image)
    assert names and set(names) <= {"person", "boat", "cat", "dog"}
    assert real.score_one(sample, sample.image) == (
        1.0 if "dog" in real.detect(sample.image.crop((30, 20, 90, 60))) else 0.0
    )


def test_known_region_psnr_by_hand():
    sample = tiny_sample()
    base = np.asarray(sample.image).astype(int)
    shifted = base.copy()
    shifted[np.asarray(sample.mask) == 0] += np.where(base[np.asarray(sample.mask) == 0] < 250, 5, -5)
    shifted[np.asarray(sample.mask) > 0] = 0  # the inpainted region does not count
    value = M.KnownPSNR().score_one(sample, PIL.Image.fromarray(shifted.astype(np.uint8)))
    assert value == pytest.approx(10 * math.log10(255**2 / 25))
    assert M.KnownPSNR().score_one(sample, sample.image) == M.PSNR_CAP


def test_unknown_metric_and_missing_lpips_are_clear():
    with pytest.raises(HDPainterError, match="unknown metric 'fid'"):
        M.make_metrics(["clip", "fid"])
    if not M.lpips_available():
        with pytest.raises(HDPainterError, match="pip install lpips"):
            M.KnownLPIPS().load("cpu")


# ---- whole runs ---------------------------------------------------------------------------------------------


def eval_args(coco_dir, out, model, stand_ins, *extra):
    return [
        "eval",
        "--coco",
        str(coco_dir),
        "--out",
        str(out),
        "--model",
        str(model),
        "--size",
        "64",
        "--steps",
        "2",
        "--clip-model",
        str(stand_ins / "clip"),
        "--detector",
        str(stand_ins / "detector"),
        "--pickscore-model",
        str(stand_ins / "pick"),
        "--pickscore-processor",
        str(stand_ins / "clip"),
        "--aesthetic-clip",
        str(stand_ins / "clip"),
        "--aesthetic-head",
        f"{stand_ins / 'aesthetic'}:head.pth",
        "--device",
        "cpu",
        *extra,
    ]


def read_table(out):
    with open(out / "table.csv") as handle:
        return {(r["method"], r["metric"]): r for r in csv.DictReader(handle)}


def test_eval_end_to_end_resumes_and_tabulates(capsys, coco_dir, tiny_model_dir, stand_ins, tmp_path):
    out = tmp_path / "run"
    argv = eval_args(coco_dir, out, tiny_model_dir, stand_ins, "--sample", "4", "--methods", "baseline,rasg")
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    pairs = read_pairs(out / "pairs.csv")
    assert pairs == sample_pairs(Coco(coco_dir), 4, seed=0)
    results = sorted(out.glob("results/*/*.png"))
    assert len(results) == 8 and len(list(out.glob("scores/*.json"))) == 4
    with PIL.Image.open(out / "results" / "rasg" / f"{pairs[0].name}.png") as image:
        meta = json.loads(image.text["parameters"])
        assert meta["method"] == "rasg" and meta["rasg_eta"] == 0.25 and max(image.size) == 64
    # the table's numbers are the score files' means; the printed table is table.md
    table = read_table(out)
    scores = [json.loads((out / "scores" / f"{p.name}.json").read_text()) for p in pairs]
    for method in ("baseline", "rasg"):
        for metric in ("clip", "accuracy", "aesthetic", "psnr_known"):
            values = [s[method][metric] for s in scores]
            assert float(table[(method, metric)]["mean"]) == pytest.approx(sum(values) / 4)
            assert int(table[(method, metric)]["n"]) == 4
    assert printed.strip() == (out / "table.md").read_text().strip()
    assert "| rasg |" in printed and "(reference)" in printed  # PickScore against baseline
    assert PIL.Image.open(out / "contact_sheet.png").size[0] == 192 * 3

    # resume: a lost result and a lost score file are redone, nothing else is touched
    lost_result, lost_score = (
        out / "results" / "rasg" / f"{pairs[1].name}.png",
        out / "scores" / f"{pairs[2].name}.json",
    )
    lost_result.unlink()
    lost_score.unlink()
    kept = {p: p.stat().st_mtime_ns for p in results if p != lost_result}
    assert cli.main(argv) == 0
    assert lost_result.exists() and lost_score.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert read_table(out) == table  # the same numbers (generation is deterministic)
    # another method later: only its results and scores are added
    assert (
        cli.main(
            eval_args(coco_dir, out, tiny_model_dir, stand_ins, "--sample", "4", "--methods", "baseline,rasg,painta")
        )
        == 0
    )
    assert len(list(out.glob("results/painta/*.png"))) == 4
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert float(read_table(out)[("rasg", "clip")]["mean"]) == float(table[("rasg", "clip")]["mean"])


@pytest.mark.slow
def test_two_processes_split_the_pairs_and_rank_0_merges(coco_dir, tiny_model_dir, stand_ins, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    common = ["--sample", "5", "--methods", "baseline,painta+rasg", "--contact-sheet", "0"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}  # the same arithmetic in both runs
    alone = subprocess.run(
        [sys.executable, "-m", "hdpainter.cli", *eval_args(coco_dir, single, tiny_model_dir, stand_ins, *common)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hdpainter.cli",
            *eval_args(coco_dir, double, tiny_model_dir, stand_ins, *common),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # each process generated its own share: 3 pairs on rank 0, 2 on rank 1, together every pair once
    assert "generate (rank 0/2): 100%" in run.stderr and "| 3/3" in run.stderr and "| 2/2" in run.stderr
    assert run.stdout.count("# hdpainter eval") == 1  # one table, from rank 0
    for path in sorted(single.glob("results/*/*.png")):
        twin = double / path.relative_to(single)
        assert np.array_equal(np.asarray(PIL.Image.open(path)), np.asarray(PIL.Image.open(twin)))
    a, b = read_table(single), read_table(double)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["n"] == b[key]["n"] == "5"
        assert float(a[key]["mean"]) == pytest.approx(float(b[key]["mean"]), abs=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (["--coco", "/no/such/coco"], "instances_val2017.json not found"),
        (["--methods", "baseline,magic"], "unknown method 'magic'"),
        (["--metrics", "clip,fid"], "unknown metric 'fid'"),
        (["--pick-reference", "rasg", "--methods", "baseline"], "--pick-reference 'rasg' is not among --methods"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--size", "500"], "--size must be a multiple of 8 in 64..2048, got 500"),
        (["--steps", "0"], "--steps must be in 1..1000, got 0"),
        (["--sample", "50"], "only 5 polygon instances"),
        (["--pairs", "PAIRS"], "image_idx 99 is out of 0..3"),
        (["--clip-model", "/no/such/clip"], "--clip-model /no/such/clip: /no/such/clip/config.json not found"),
        (
            ["--detector", "openai/some-detector", "--local-files-only"],
            "--detector openai/some-detector is not in the local hub cache and the hub may not be used",
        ),
        (
            ["--aesthetic-head", "camenduru/improved-aesthetic-predictor:head.pth", "--local-files-only"],
            "--aesthetic-head camenduru",
        ),
    ],
)
def test_bad_eval_input_is_one_line(capsys, coco_dir, tiny_model_dir, stand_ins, tmp_path, change, message):
    (tmp_path / "pairs.csv").write_text("image_idx,segment_idx\n1,0\n99,0\n")
    change = [str(tmp_path / "pairs.csv") if c == "PAIRS" else c for c in change]
    argv = eval_args(coco_dir, tmp_path / "run", tiny_model_dir, stand_ins)
    if change[0] == "--coco":
        argv[2] = change[1]
        change = []
    code = cli.main(argv + change)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not list((tmp_path / "run").glob("results/*/*.png"))  # nothing generated before the error


def test_lpips_compares_the_known_region_only():
    """Our part of LPIPS (the lpips package itself needs torchvision and downloads AlexNet, so it is not
    installed here): inputs scaled to [-1, 1] with the mask's region zeroed in both images."""
    import torch

    seen = []

    class Net(torch.nn.Module):
        def forward(self, a, b):
            seen.append((a.clone(), b.clone()))
            return (a - b).abs().mean()

    metric = M.KnownLPIPS()
    metric.device, metric.net = "cpu", Net()
    sample = tiny_sample()
    changed = np.asarray(sample.image).copy()
    changed[np.asarray(sample.mask) > 0] = 0  # only inside the mask: invisible to the metric
    assert metric.score_one(sample, PIL.Image.fromarray(changed)) == 0.0
    a, b = seen[-1]
    inside = torch.from_numpy(np.asarray(sample.mask) > 0)
    assert a.shape == (1, 3, 96, 128) and a[0][:, inside].abs().max() == 0 and b[0][:, inside].abs().max() == 0
    assert a.min() >= -1 and a.max() <= 1 and a[0][:, ~inside].abs().max() > 0.5
    changed[0, 0] = 255 - changed[0, 0]  # outside the mask: seen
    assert metric.score_one(sample, PIL.Image.fromarray(changed)) > 0
