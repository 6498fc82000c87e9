"""The one sampler (core/sampling.py) reproduces the two loops it replaced, bit for bit, on the tiny models.

The old loops are frozen in tests/legacy (a copy of inpaint.py, upscale.py and attention.py as they were);
each case runs the same weights through both and asks for torch.equal, not closeness.
"""

import numpy as np
import PIL.Image
import pytest
import torch

from hdpainter.upscale import HDUpscalePipeline, SRConfig, super_resolve

from .legacy.inpaint import HDPainterPipeline as LegacyInpaint
from .legacy.upscale import HDUpscalePipeline as LegacyUpscale
from .legacy.upscale import SRConfig as LegacySRConfig
from .legacy.upscale import super_resolve as legacy_super_resolve

SIZE = 256


def _latents(result):
    return result.images if hasattr(result, "images") else result


@pytest.fixture(scope="module")
def legacy_pipe(pipe):
    old = LegacyInpaint(**pipe.components, requires_safety_checker=False)
    old.set_progress_bar_config(disable=True)
    return old


@pytest.fixture(scope="module")
def sr(tiny_upscaler_dir):
    pipe = HDUpscalePipeline.from_pretrained(tiny_upscaler_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def legacy_sr(sr):
    old = LegacyUpscale(**sr.components)
    old.set_progress_bar_config(disable=True)
    return old


STAGE1_CASES = {
    "baseline": dict(method="baseline"),
    "painta": dict(method="painta"),
    "rasg": dict(method="rasg"),
    "painta+rasg": dict(method="painta+rasg"),
    "sigma-paper": dict(method="painta+rasg", rasg_sigma="paper", rasg_eta=0.25),
    "vanilla": dict(method="vanilla-guidance", vanilla_scale=1000.0),
    "no-cfg": dict(method="painta+rasg", guidance_scale=1.0),
    "two-samples": dict(method="painta+rasg", num_images_per_prompt=2),
}


@pytest.mark.parametrize("case", list(STAGE1_CASES))
def test_stage1_latents_equal_the_old_loop(pipe, legacy_pipe, photo, case):
    kwargs = dict(num_inference_steps=4, working_size=SIZE, output_type="latent", **STAGE1_CASES[case])
    n = kwargs.get("num_images_per_prompt", 1)
    new = pipe("a red boat", *photo, generator=[torch.Generator().manual_seed(3 + k) for k in range(n)], **kwargs)
    old = legacy_pipe(
        "a red boat", *photo, generator=[torch.Generator().manual_seed(3 + k) for k in range(n)], **kwargs
    )
    assert torch.equal(_latents(new), _latents(old))


def test_stage1_batch_of_prompts_callback_and_decode_equal_the_old_loop(pipe, legacy_pipe, photo):
    """Two prompts with their own masks, a callback that rewrites the latents, decoded to PIL."""
    image, mask = photo
    other = PIL.Image.fromarray(np.where(np.asarray(mask) > 0, 0, 255).astype(np.uint8))
    seen = {"new": [], "old": []}

    def callback(key):
        def fn(p, i, t, tensors):
            seen[key].append((i, t, tensors["x0"].clone()))
            return {"latents": tensors["latents"] * 0.99}

        return fn

    common = dict(
        method="painta+rasg",
        num_inference_steps=3,
        working_size=SIZE,
        callback_on_step_end_tensor_inputs=("latents", "x0"),
    )
    prompts = ["a red boat", "a dog"]
    new = pipe(
        prompts,
        [image, image],
        [mask, other],
        generator=torch.Generator().manual_seed(5),
        callback_on_step_end=callback("new"),
        **common,
    ).images
    old = legacy_pipe(
        prompts,
        [image, image],
        [mask, other],
        generator=torch.Generator().manual_seed(5),
        callback_on_step_end=callback("old"),
        **common,
    ).images
    assert [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(new, old)] == [True, True]
    assert [(i, t) for i, t, _ in seen["new"]] == [(i, t) for i, t, _ in seen["old"]] == [(0, 999), (1, 666), (2, 332)]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(seen["new"], seen["old"]))


@pytest.mark.parametrize("blend", [True, False], ids=["specialized", "plain"])
def test_stage2_equals_the_old_loop(sr, legacy_sr, blend):
    g = torch.Generator().manual_seed(2)
    low = torch.rand(1, 3, 16, 24, generator=g) * 2 - 1
    known = torch.randn(1, 4, 16, 24, generator=g) if blend else None
    mask = torch.zeros(1, 1, 16, 24)
    mask[..., 4:12, 6:18] = 0.7
    mask = mask if blend else None
    x0s = {"new": [], "old": []}
    for key, pipe in (("new", sr), ("old", legacy_sr)):
        out = pipe(
            "a boat",
            low,
            known,
            mask,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(9),
            output_type="latent",
            callback_on_step_end=lambda p, i, t, d, key=key: x0s[key].append(d["x0"].clone()),
        )
        x0s[key].append(_latents(out))
    assert len(x0s["new"]) == len(x0s["old"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(x0s["new"], x0s["old"]))


@pytest.mark.parametrize("method", ["specialized", "baseline"])
def test_super_resolve_patch_equals_the_old_one(sr, legacy_sr, method):
    from skimage import data

    original = PIL.Image.fromarray(data.coffee()).resize((300, 200), PIL.Image.BICUBIC)
    low_res = original.resize((64, 42), PIL.Image.BICUBIC)
    mask = np.zeros((200, 300), np.uint8)
    mask[60:120, 100:180] = 255
    mask = PIL.Image.fromarray(mask)
    new = super_resolve(
        sr,
        original,
        mask,
        low_res,
        "a ball",
        SRConfig(method=method, num_inference_steps=2),
        torch.Generator().manual_seed(1),
    )
    old = legacy_super_resolve(
        legacy_sr,
        original,
        mask,
        low_res,
        "a ball",
        LegacySRConfig(method=method, num_inference_steps=2),
        torch.Generator().manual_seed(1),
    )
    assert new.box == old.box and np.array_equal(new.pixels, old.pixels)
