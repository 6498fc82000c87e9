"""Stage 2: the inpainting-specialised ×4 super-resolution (docs/method.md §5), on the tiny upscaler."""

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from hdpainter.upscale import (
    CROP_ALIGN,
    HDUpscalePipeline,
    SRConfig,
    blur_sigma,
    crop_box,
    make_canvas,
    soft_mask,
    super_resolve,
    to_unit_range,
)


@pytest.fixture(scope="session")
def upscaler_dir(tiny_upscaler_dir):
    return tiny_upscaler_dir


@pytest.fixture(scope="session")
def sr(upscaler_dir):
    pipe = HDUpscalePipeline.from_pretrained(upscaler_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_spy(pipe):
    """Record every UNet call's input and output (a forward hook: the UNet itself is untouched)."""
    calls = []
    handle = pipe.unet.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(
            dict(x=args[0].detach().clone(), t=args[1], labels=kwargs["class_labels"], out=out[0].detach().clone())
        ),
        with_kwargs=True,
    )
    return calls, handle


def test_soft_mask_is_bicubic_then_torchvision_gaussian_blur():
    mask = np.zeros((96, 128), bool)
    mask[30:60, 40:90] = True
    out = soft_mask(mask, (32, 24), 19)
    # independent: PIL bicubic of 0/255, then a normalised exp(−x²/2σ²) kernel with reflect padding, separably
    small = (
        np.asarray(PIL.Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).resize((32, 24), PIL.Image.BICUBIC))
        / 255.0
    )
    sigma = 0.3 * ((19 - 1) * 0.5 - 1) + 0.8
    assert blur_sigma(19) == pytest.approx(sigma) == pytest.approx(3.2)
    x = torch.arange(19, dtype=torch.float64) - 9
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    t = F.pad(torch.from_numpy(small)[None, None], (9, 9, 9, 9), mode="reflect")
    t = F.conv2d(F.conv2d(t, k.view(1, 1, 1, 19)), k.view(1, 1, 19, 1))[0, 0].numpy()
    np.testing.assert_allclose(out, t, atol=1e-5)
    assert out.max() <= 1.0 and out[0, 0] < 0.01 and np.unravel_index(out.argmax(), out.shape) == (11, 16)


def test_canvas_is_the_references_geometry():
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(0)
    original = PIL.Image.fromarray(rng.integers(0, 255, (300, 410, 3), dtype=np.uint8))
    mask = np.zeros((300, 410), np.uint8)
    mask[100:180, 0:50] = 255  # touches the left border
    low_res = PIL.Image.fromarray(rng.integers(0, 255, (75, 102, 3), dtype=np.uint8))
    canvas = make_canvas(original, PIL.Image.fromarray(mask), low_res, SRConfig())
    assert canvas.size == (408, 300)  # 4 × the low-res size
    assert (
        canvas.padded_size == (512, 512)
        and canvas.low_res.shape == (128, 128, 3)
        and canvas.blend_mask.shape == (128, 128)
    )
    hr = np.asarray(original.resize((408, 300), PIL.Image.BICUBIC))
    np.testing.assert_array_equal(canvas.image[:300, :408], hr)
    np.testing.assert_array_equal(
        canvas.image[300:, :408], np.pad(hr, ((0, 212), (0, 0), (0, 0)), mode="reflect")[300:]
    )
    np.testing.assert_array_equal(canvas.low_res[:75, :102], np.asarray(low_res))
    # the reference: bicubic mask, reflect pad to ×256, scipy binary_dilation 19 iterations (cross), any non-zero
    hr_mask = np.asarray(PIL.Image.fromarray(mask).resize((408, 300), PIL.Image.BICUBIC)) > 0
    expected = binary_dilation(np.pad(hr_mask, ((0, 212), (0, 104)), mode="reflect"), iterations=19)
    np.testing.assert_array_equal(canvas.painted, expected)


def test_crop_box_is_aligned_and_inside():
    assert crop_box((300, 200, 340, 260), 128, (1024, 768)) == (160, 64, 480, 416)
    x0, y0, x1, y1 = crop_box((5, 700, 60, 768), 100, (1024, 768))
    assert (x0, y1) == (0, 768) and x1 % CROP_ALIGN == 0 and y0 % CROP_ALIGN == 0 and x1 >= 160 and y0 <= 600


def test_a_crop_box_stops_at_the_image_not_at_the_end_of_its_padding(sr):
    """A 580×434 high-res image is padded to 768×512; a crop reaching its right and bottom edges ends at 608×448
    (its size aligned up to 32 px), not in the padding beyond, and its pixels are all the image's."""
    original = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (434, 580, 3), dtype=np.uint8))
    mask = np.zeros((434, 580), np.uint8)
    mask[300:400, 450:560] = 255
    low_res = original.resize((145, 108), PIL.Image.BICUBIC)  # ×4: 580×432
    canvas = make_canvas(original, PIL.Image.fromarray(mask), low_res, SRConfig())
    assert canvas.size == (580, 432) and canvas.padded_size == (768, 512) and canvas.crop_limit == (608, 448)
    calls, handle = unet_spy(sr)
    try:
        patch = super_resolve(sr, original, PIL.Image.fromarray(mask), low_res, "a", SRConfig(num_inference_steps=1))
    finally:
        handle.remove()
    x0, y0, x1, y1 = patch.box
    assert (x1, y1) == (580, 432) and x0 % CROP_ALIGN == 0 and y0 % CROP_ALIGN == 0
    assert calls[0]["x"].shape[-2:] == ((448 - y0) // 4, (608 - x0) // 4)  # the UNet saw no more than that


def test_plain_sr_equals_diffusers_upscale_pipeline(upscaler_dir, sr):
    """Without Eq. 10 the sampler is diffusers' StableDiffusionUpscalePipeline with DDIM trailing, η = 0."""
    from diffusers import DDIMScheduler, StableDiffusionUpscalePipeline

    ref = StableDiffusionUpscalePipeline.from_pretrained(upscaler_dir)
    ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config, timestep_spacing="trailing")
    ref.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    low = torch.rand(1, 3, 24, 32, generator=g) * 2 - 1
    latents = torch.randn(1, 4, 24, 32, generator=g)
    steps = []
    # diffusers draws the low-res noise from the generator first: hand it the same draw
    theirs = ref(
        "a cat",
        image=(low + 1) / 2,
        num_inference_steps=4,
        guidance_scale=7.5,
        noise_level=20,
        latents=latents,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).images
    ref_noise = torch.randn(1, 3, 24, 32, generator=torch.Generator().manual_seed(5))
    ours = sr(
        "a cat",
        low,
        num_inference_steps=4,
        latents=latents,
        low_res_noise=ref_noise,
        output_type="latent",
        callback_on_step_end=lambda p, i, t, d: steps.append(d),
    ).images
    # diffusers' last step goes on to ᾱ_0 (set_alpha_to_one=False); ours stops at x̂0 (the reference's)
    a0 = float(sr.scheduler.alphas_cumprod[0])
    last = steps[-1]
    torch.testing.assert_close(a0**0.5 * ours + (1 - a0) ** 0.5 * last["eps"], theirs, atol=1e-4, rtol=1e-4)


def test_eq10_blend_at_every_step(sr):
    """A spy on the UNet: every x_{t−Δ} is the DDIM step from the *blended* x̂0, computed here from the formulas."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(1, 3, 16, 24, generator=g) * 2 - 1
    known = torch.randn(1, 4, 16, 24, generator=g)
    blend = torch.zeros(1, 1, 16, 24)
    blend[..., 4:12, 6:18] = 1.0
    blend[..., 4:12, 10:14] = 0.5  # soft values too
    calls, handle = unet_spy(sr)
    try:
        x0_final = sr("a boat", low, known, blend, num_inference_steps=5, generator=g, output_type="latent").images
    finally:
        handle.remove()
    ts = [999, 799, 599, 399, 199]
    assert [int(c["t"][0]) for c in calls] == ts
    assert all(int(c["labels"][0]) == 20 for c in calls)
    ab = sr.scheduler.alphas_cumprod.double()
    for i, call in enumerate(calls):
        x_t = call["x"][:1, :4].double()
        v_uncond, v_cond = call["out"].double().chunk(2)
        v = v_uncond + 7.5 * (v_cond - v_uncond)
        a, s = ab[ts[i]].sqrt(), (1 - ab[ts[i]]).sqrt()
        x0 = a * x_t - s * v  # v-prediction
        eps = a * v + s * x_t
        x0 = blend * x0 + (1 - blend) * known  # Eq. 10
        if i + 1 < len(calls):
            nxt = ts[i + 1]
            expected = ab[nxt].sqrt() * x0 + (1 - ab[nxt]).sqrt() * eps
            torch.testing.assert_close(calls[i + 1]["x"][:1, :4].double(), expected, atol=1e-4, rtol=1e-4)
        else:
            torch.testing.assert_close(x0_final.double(), x0, atol=1e-4, rtol=1e-4)
    outside = (blend == 0).expand_as(x0_final)
    torch.testing.assert_close(x0_final[outside], known[outside])


def test_known_latents_are_the_vae_posterior_mean(sr):
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    known = sr.encode_known(image)
    # the encoder gets the reference's channels_last layout (convolutions round by layout)
    expected = sr.vae.encode(image.contiguous(memory_format=torch.channels_last)).latent_dist.mean * 0.08333
    torch.testing.assert_close(known, expected, rtol=0, atol=0)
    assert known.is_contiguous()


def layouts(pipe):
    """The memory layout of every input to the VAE encoder and the UNet (pre-hooks: the modules are untouched)."""
    seen = {"vae": [], "unet": []}

    def record(name):
        def hook(module, args):
            x = args[0]
            seen[name].append("channels_last" if not x.is_contiguous() else "contiguous")
            assert x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)

        return hook

    handles = [
        pipe.vae.encoder.register_forward_pre_hook(record("vae")),
        pipe.unet.register_forward_pre_hook(record("unet")),
    ]
    return seen, handles


def test_the_vae_encoder_gets_channels_last_and_the_unet_contiguous_inputs_as_in_the_reference(sr, scene):
    original, mask, low_res = scene
    seen, handles = layouts(sr)
    try:
        super_resolve(
            sr, original, mask, low_res, "a ball", SRConfig(num_inference_steps=2), torch.Generator().manual_seed(0)
        )
    finally:
        for handle in handles:
            handle.remove()
    assert seen["vae"] and set(seen["vae"]) == {"channels_last"}
    assert len(seen["unet"]) == 2 and set(seen["unet"]) == {"contiguous"}


@pytest.fixture(scope="module")
def scene():
    """A real photo at 1024x768 (4 × a 256x192 stage-1 result) and a small mask (about 0.7 % of it)."""
    from skimage import data

    original = PIL.Image.fromarray(data.chelsea()).resize((1024, 768), PIL.Image.BICUBIC)
    mask = np.zeros((768, 1024), np.uint8)
    mask[260:330, 380:460] = 255
    low_res = original.resize((256, 192), PIL.Image.BICUBIC)
    return original, PIL.Image.fromarray(mask), low_res


def run_region(sr, scene, region, seed=0, context=128):
    """Stage 2 on the scene; returns the patch, the latent pixels the UNet processed and the final x̂0."""
    original, mask, low_res = scene
    calls, handle = unet_spy(sr)
    steps = []
    try:
        patch = super_resolve(
            sr,
            original,
            mask,
            low_res,
            "a ball",
            SRConfig(num_inference_steps=3, region=region, context=context),
            torch.Generator().manual_seed(seed),
            callback_on_step_end=lambda p, i, t, d, steps=steps: steps.append(d["x0"]),
        )
    finally:
        handle.remove()
    return patch, sum(c["x"].shape[-1] * c["x"].shape[-2] for c in calls), steps[-1][0]


@pytest.mark.slow
def test_crop_equals_whole_away_from_the_crop_edges_and_costs_less(sr, scene):
    crop, crop_cost, crop_x0 = run_region(sr, scene, "crop")
    whole, whole_cost, whole_x0 = run_region(sr, scene, "whole")
    other, _, other_x0 = run_region(sr, scene, "whole", seed=1)
    full, _, full_x0 = run_region(sr, scene, "crop", context=2048)  # a crop as large as the canvas
    assert whole.box == (0, 0, 1024, 768) and whole.pixels.shape == (768, 1024, 3)
    assert full.box == whole.box and np.array_equal(full.pixels, whole.pixels) and torch.equal(full_x0, whole_x0)
    x0, y0, x1, y1 = crop.box
    assert (x0, y0, x1, y1) == (224, 96, 608, 480)  # mask 380..460 × 260..330, dilated 19, 128 context, out to ×32
    assert (
        whole_cost == 1024 * 768 // 16 * 3 and crop_cost == 384 * 384 // 16 * 3
    )  # latent pixels × 3 steps: 5.3× less
    # the same noise reaches the same pixels: inside the mask the crop's x̂0 is the whole run's up to the
    # UNet's global parts (group norms, the lowest level's self-attention), which see less of the photo.
    # Stated tolerance (random weights): under 30 % of what another seed changes.
    inside = (slice(None), slice(260 // 4, 330 // 4), slice(380 // 4, 460 // 4))
    shifted = (slice(None), slice((260 - y0) // 4, (330 - y0) // 4), slice((380 - x0) // 4, (460 - x0) // 4))
    crop_error = (crop_x0[shifted] - whole_x0[inside]).abs().mean()
    assert crop_error < 0.3 * (other_x0[inside] - whole_x0[inside]).abs().mean()


def test_specialized_keeps_the_known_latents_and_baseline_does_not(sr, scene):
    original, mask, low_res = scene
    canvas = make_canvas(original, mask, low_res, SRConfig())
    results = {}
    for method in ("specialized", "baseline"):
        steps = []
        patch = super_resolve(
            sr,
            original,
            mask,
            low_res,
            "a ball",
            SRConfig(method=method, num_inference_steps=2),
            torch.Generator().manual_seed(0),
            callback_on_step_end=lambda p, i, t, d, steps=steps: steps.append(d["x0"]),
        )
        results[method] = (patch, steps)
    patch, steps = results["specialized"]
    x0, y0, x1, y1 = patch.box
    known = sr.encode_known(to_unit_range(canvas.image[y0:y1, x0:x1]))
    far = torch.from_numpy(canvas.blend_mask[y0 // 4 : y1 // 4, x0 // 4 : x1 // 4] == 0)
    assert far.float().mean() > 0.3
    for x0_step in steps:
        torch.testing.assert_close(x0_step[0][:, far], known[0][:, far])
    _, base_steps = results["baseline"]
    assert (base_steps[-1][0][:, far] - known[0][:, far]).abs().mean() > 0.1


@pytest.mark.parametrize(
    "setting, own, threshold, tiled",
    [
        (True, False, None, True),
        (False, True, None, False),
        (None, False, None, False),
        (None, True, None, True),
        (None, False, 100_000, True),  # auto: a 384x384 crop is over a 0.1 MP threshold
    ],
)
def test_vae_tiling_setting_is_used_and_the_pipelines_own_is_restored(
    sr, scene, monkeypatch, setting, own, threshold, tiled
):
    from unittest import mock

    import hdpainter.upscale

    if threshold:
        monkeypatch.setattr(hdpainter.upscale, "VAE_TILING_AUTO_PIXELS", threshold)
    original, mask, low_res = scene
    sr.vae.use_tiling = own
    try:
        with mock.patch.object(sr.vae, "tiled_decode", wraps=sr.vae.tiled_decode) as spy:
            super_resolve(
                sr,
                original,
                mask,
                low_res,
                "a ball",
                SRConfig(num_inference_steps=1, vae_tiling=setting),
                torch.Generator().manual_seed(0),
            )
        assert spy.called == tiled
        assert sr.vae.use_tiling is own
    finally:
        sr.vae.use_tiling = False
