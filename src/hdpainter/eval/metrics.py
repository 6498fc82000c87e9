"""The evaluation's metrics, each a small class with one interface (docs/method.md §7).

`metric.load(device, local_files_only)` loads its models (from the hub cache like any other model), then
`metric.score(sample, results)` returns {method: value} for one pair, given every method's result.
`kind` says how the table summarises it: "mean" (a mean with a normal 95 % interval) or "rate" (a
proportion of 0/1 values with a Wilson interval). Adding ImageReward or HPS is one more class here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image

from ..errors import HDPainterError
from .coco import Sample, mask_box, square_crop

CLIP_MODEL = "openai/clip-vit-base-patch16"  # the reference's CLIP score model
DETECTOR = "PekingU/rtdetr_r50vd"  # RT-DETR R50 (COCO, 53 AP): transformers-native, no torchvision or timm
DETECTOR_THRESHOLD = 0.3  # the reference's score threshold
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD = "camenduru/improved-aesthetic-predictor:sac+logos+ava1-l14-linearMSE.pth"  # LAION's MLP, ViT-L/14
CLIP_CROP = 224
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # older and newer transformers
PSNR_CAP = 100.0  # dB, for a known region reproduced exactly (an infinite PSNR would swamp the mean)


class Metric:
    name = "metric"
    kind = "mean"  # or "rate"
    higher_is_better = True

    def load(self, device, local_files_only: bool = False) -> None:
        self.device = device

    def score(self, sample: Sample, results: dict[str, PIL.Image.Image]) -> dict[str, float]:
        return {method: self.score_one(sample, image) for method, image in results.items()}

    def score_one(self, sample: Sample, image: PIL.Image.Image) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def sources(self) -> list[tuple[str, tuple[str, ...], str]]:
        """(model id or folder, files of which it must hold one, the option that names it) per model it loads."""
        return []

    def check_available(self, local_files_only: bool = False) -> None:
        """Fail early, with one line, where a model cannot be had: a missing folder, or a hub model absent
        from the local cache when the hub may not be used. (Online, the hub is asked when loading.)"""
        from huggingface_hub import try_to_load_from_cache

        from ..models import hub_offline

        offline = local_files_only or hub_offline()
        for source, filenames, flag in self.sources():
            path = Path(source).expanduser()
            if path.exists() or source.startswith((".", "/", "~")):
                if not any((path / f).is_file() for f in filenames):
                    raise HDPainterError(f"{flag} {source}: {path / filenames[0]} not found")
            elif offline and not any(isinstance(try_to_load_from_cache(source, f), str) for f in filenames):
                raise HDPainterError(
                    f"{flag} {source} is not in the local hub cache and the hub may not be used: "
                    f"download it on a connected machine or pass a local folder with {flag} DIR"
                )


def _load(cls, source: str, local_files_only: bool, what: str, **kwargs):
    from ..models import load_pretrained

    return load_pretrained(cls, source, local_files_only, what, **kwargs)


def clip_features(model, processor, device, images=None, texts=None):
    """L2-normalised CLIP embeddings (projection of the pooled output, as `get_*_features` in every version)."""
    import torch

    with torch.no_grad():
        if images is not None:
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device, model.dtype)
            features = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        else:
            tokens = processor(
                text=texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=model.config.text_config.max_position_embeddings,
            ).to(device)
            features = model.text_projection(
                model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
            )
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ClipScore(Metric):
    """100 · max(cos(CLIP(crop), CLIP(prompt)), 0) on the mask's box, padded square with black, 224 px bicubic."""

    name = "clip"

    def __init__(self, model: str = CLIP_MODEL):
        self.model_id = model

    def load(self, device, local_files_only: bool = False) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        self.model = _load(CLIPModel, self.model_id, local_files_only, "--clip-model").to(device).eval()
        self.processor = _load(CLIPProcessor, self.model_id, local_files_only, "--clip-model")

    def score(self, sample, results):
        box = mask_box(sample.mask)
        methods = list(results)
        crops = [square_crop(results[m], box, CLIP_CROP) for m in methods]
        images = clip_features(self.model, self.processor, self.device, images=crops)
        text = clip_features(self.model, self.processor, self.device, texts=[sample.prompt])
        cos = (images @ text.T)[:, 0].tolist()
        return {m: 100.0 * max(c, 0.0) for m, c in zip(methods, cos)}

    def sources(self):
        return [(self.model_id, ("config.json",), "--clip-model")]

    def describe(self):
        return f"CLIP score ({self.model_id}, mask box padded square, {CLIP_CROP} px)"


class Accuracy(Metric):
    """1 if a COCO detector finds the prompt's class in the mask's box (score > 0.3), else 0."""

    name = "accuracy"
    kind = "rate"

    def __init__(self, model: str = DETECTOR, threshold: float = DETECTOR_THRESHOLD):
        self.model_id = model
        self.threshold = threshold

    def load(self, device, local_files_only: bool = False) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.device = device
        self.model = (
            _load(AutoModelForObjectDetection, self.model_id, local_files_only, "--detector").to(device).eval()
        )
        self.processor = _load(AutoImageProcessor, self.model_id, local_files_only, "--detector")
        self.labels = {int(k): v for k, v in self.model.config.id2label.items()}

    def detect(self, crop: PIL.Image.Image) -> list[str]:
        """Class names detected in `crop` above the threshold."""
        import torch

        inputs = self.processor(images=crop, return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.model.dtype))
        found = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(crop.height, crop.width)]
        )[0]
        return [self.labels[int(label)] for label in found["labels"]]

    def score_one(self, sample, image):
        x0, y0, x1, y1 = mask_box(sample.mask)
        return 1.0 if sample.prompt in self.detect(image.convert("RGB").crop((x0, y0, x1, y1))) else 0.0

    def sources(self):
        return [(self.model_id, ("config.json",), "--detector"), (self.model_id, PROCESSOR_FILES, "--detector")]

    def describe(self):
        return f"accuracy ({self.model_id}, class found in the mask box, score > {self.threshold})"


class PickScore(Metric):
    """P(method preferred over the reference method) by PickScore: softmax of exp(logit_scale)·cos(text, image)
    over the two images, with the class name as the prompt; 0.5 for the reference itself."""

    name = "pickscore"

    def __init__(
        self, model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR, reference: str = "baseline"
    ):
        self.model_id, self.processor_id, self.reference = model, processor, reference

    def load(self, device, local_files_only: bool = False) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        self.model = _load(CLIPModel, self.model_id, local_files_only, "--pickscore-model").to(device).eval()
        self.processor = _load(CLIPProcessor, self.processor_id, local_files_only, "--pickscore-processor")

    def score(self, sample, results):
        if self.reference not in results:
            raise HDPainterError(f"PickScore compares with {self.reference!r}, which is not among the methods")
        methods = list(results)
        images = clip_features(self.model, self.processor, self.device, images=[results[m] for m in methods])
        text = clip_features(self.model, self.processor, self.device, texts=[sample.prompt])
        scale = float(self.model.logit_scale.detach().exp())
        scores = dict(zip(methods, (scale * (images @ text.T)[:, 0]).tolist()))
        ref = scores[self.reference]
        return {m: 1.0 / (1.0 + math.exp(ref - s)) for m, s in scores.items()}  # 2-way softmax

    def sources(self):
        return [
            (self.model_id, ("config.json",), "--pickscore-model"),
            (self.processor_id, PROCESSOR_FILES, "--pickscore-processor"),
        ]

    def describe(self):
        return f"PickScore preference over {self.reference} ({self.model_id})"


class AestheticHead:
    """LAION's improved aesthetic predictor: an MLP (768 → 1024 → 128 → 64 → 16 → 1, no activations) on the
    L2-normalised CLIP ViT-L/14 image embedding. Dropouts sit between the first layers (identity at eval)."""

    def __new__(cls, dim: int = 768):
        import torch.nn as nn

        return nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )


class Aesthetic(Metric):
    """LAION aesthetic score of the whole image."""

    name = "aesthetic"

    def __init__(self, clip: str = AESTHETIC_CLIP, head: str = AESTHETIC_HEAD):
        self.clip_id, self.head_id = clip, head

    def load(self, device, local_files_only: bool = False) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        self.model = _load(CLIPModel, self.clip_id, local_files_only, "--aesthetic-clip").to(device).eval()
        self.processor = _load(CLIPProcessor, self.clip_id, local_files_only, "--aesthetic-clip")
        path = fetch_file(self.head_id, local_files_only, "--aesthetic-head")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k.removeprefix("layers."): v for k, v in state.items()}
            self.head = AestheticHead(self.model.config.projection_dim)
            self.head.load_state_dict(state)
        except Exception as exc:
            raise HDPainterError(
                f"{self.head_id} is not LAION's aesthetic MLP for this CLIP: {type(exc).__name__}: {exc}"[:300]
            ) from None
        self.head.to(device).eval()

    def score(self, sample, results):
        import torch

        methods = list(results)
        features = clip_features(self.model, self.processor, self.device, images=[results[m] for m in methods])
        with torch.no_grad():
            values = self.head(features.to(next(self.head.parameters()).dtype))[:, 0].tolist()
        return dict(zip(methods, values))

    def sources(self):
        source, _, filename = self.head_id.rpartition(":")
        head = [(source, (filename,), "--aesthetic-head")] if source and not Path(self.head_id).is_file() else []
        return [(self.clip_id, ("config.json",), "--aesthetic-clip")] + head

    def describe(self):
        return f"LAION aesthetic ({self.clip_id} + {self.head_id})"


def fetch_file(spec: str, local_files_only: bool, flag: str) -> Path:
    """A file path, `DIR:FILE`, or `REPO:FILE` on the hub (through the local cache) → a local file."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    source, sep, filename = spec.rpartition(":")
    if not sep or not source or not filename:
        raise HDPainterError(f"{flag} {spec}: neither a file nor REPO:FILE")
    local = Path(source).expanduser()
    if (local / filename).is_file():
        return local / filename
    if local.exists() or source.startswith((".", "/", "~")):
        raise HDPainterError(f"{flag}: {local / filename} not found")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename, local_files_only=local_files_only))
    except Exception as exc:
        from ..models import load_error

        raise HDPainterError(load_error(spec, source, exc, flag)) from exc


class KnownPSNR(Metric):
    """PSNR (dB) of the known region (mask == 0) against the input: how well the rest of the image is kept."""

    name = "psnr_known"

    def score_one(self, sample, image):
        known = np.asarray(sample.mask.convert("L")) == 0
        a = np.asarray(image.convert("RGB"), dtype=np.float64)[known]
        b = np.asarray(sample.image.convert("RGB"), dtype=np.float64)[known]
        mse = float(np.mean((a - b) ** 2)) if a.size else 0.0
        return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))

    def describe(self):
        return f"PSNR of the known region against the input (dB, capped at {PSNR_CAP:g})"


class KnownLPIPS(Metric):
    """LPIPS (AlexNet) between the result and the input with the mask's region blacked out in both.
    Needs the `lpips` package (and with it torchvision), which is not a dependency of hdpainter."""

    name = "lpips_known"
    higher_is_better = False

    def load(self, device, local_files_only: bool = False) -> None:
        try:
            import lpips
        except ImportError:
            raise HDPainterError(
                "the lpips metric needs the lpips package (and torchvision): pip install lpips"
            ) from None
        self.device = device
        self.net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    def score_one(self, sample, image):
        import torch

        known = (np.asarray(sample.mask.convert("L")) == 0)[..., None]

        def tensor(picture):
            array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
            return torch.from_numpy(array * known).permute(2, 0, 1)[None].to(self.device)

        with torch.no_grad():
            return float(self.net(tensor(image), tensor(sample.image)))

    def describe(self):
        return "LPIPS (AlexNet) of the known region against the input"


METRICS = {
    "clip": ClipScore,
    "accuracy": Accuracy,
    "pickscore": PickScore,
    "aesthetic": Aesthetic,
    "psnr": KnownPSNR,
    "lpips": KnownLPIPS,
}
DEFAULT_METRICS = ("clip", "accuracy", "pickscore", "aesthetic", "psnr")


def lpips_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lpips") is not None


def make_metrics(
    names: list[str],
    clip: str = CLIP_MODEL,
    detector: str = DETECTOR,
    pickscore: str = PICKSCORE_MODEL,
    pickscore_processor: str = PICKSCORE_PROCESSOR,
    aesthetic_clip: str = AESTHETIC_CLIP,
    aesthetic_head: str = AESTHETIC_HEAD,
    reference: str = "baseline",
) -> list[Metric]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise HDPainterError(f"unknown metric {unknown[0]!r}: use {', '.join(METRICS)}")
    built = {
        "clip": lambda: ClipScore(clip),
        "accuracy": lambda: Accuracy(detector),
        "pickscore": lambda: PickScore(pickscore, pickscore_processor, reference),
        "aesthetic": lambda: Aesthetic(aesthetic_clip, aesthetic_head),
        "psnr": KnownPSNR,
        "lpips": KnownLPIPS,
    }
    return [built[n]() for n in names]
