"""HDPainterXLPipeline (SDXL inpainting) on a tiny random-weight SDXL model, checked against diffusers'
StableDiffusionXLInpaintPipeline and a plainly written reference-style loop."""

import numpy as np
import PIL.Image
import pytest
import torch

from hdpainter import images as imgs
from hdpainter.attention import STATE_KEY, AttentionGuidance, guided_attention
from hdpainter.errors import HDPainterError

from .test_pipeline import reference_loop

SIZE = 256  # latent 32x32; PAIntA grids 16x16 (H/16) and 8x8 (H/32, also the middle block's)
PROMPT = "a red boat"
WORDS = [1, 2, 3]  # "a red boat": three whole tokens after SOT in both tiny tokenizers


@pytest.fixture()
def xl(xl_pipe):
    return xl_pipe


def run(pipe, photo, seed=0, prompt=PROMPT, **kwargs):
    image, mask = photo
    kwargs.setdefault("num_inference_steps", 4)
    kwargs.setdefault("output_type", "latent")
    kwargs.setdefault("working_size", SIZE)
    return pipe(prompt, image, mask, generator=torch.Generator().manual_seed(seed), **kwargs).images


def from_noise(pipe, photo, noise, steps, method, negative_prompt="", **kwargs):
    """x̂0 of a run from the given x_T at the test size, no positive prompt (the equivalence tests' call)."""
    kwargs = dict(num_inference_steps=steps, latents=noise, working_size=SIZE, output_type="latent") | kwargs
    return pipe(PROMPT, *photo, method=method, negative_prompt=negative_prompt, positive_prompt="", **kwargs).images


def latent_inputs(pipe, photo):
    """The mask on the latent grid and E(masked image), as stage 1 computes them (docs/method.md §1)."""
    prepared = imgs.prepare(*photo, SIZE)
    mask_latent = torch.from_numpy(imgs.grid_mask(prepared.mask, 8, "any")).float()[None, None]
    return prepared, mask_latent, pipe._encode_images([prepared], "cpu", torch.float32)


def test_loader_picks_the_sdxl_pipeline_and_its_native_size(xl, tiny_xl_dir, tiny_model_dir):
    from hdpainter.inpaint import HDPainterXLPipeline
    from hdpainter.models import INPAINT_MODELS, inpaint_model_facts

    assert isinstance(xl, HDPainterXLPipeline)
    assert inpaint_model_facts(str(tiny_xl_dir)) == ("sdxl", 128 * 8)  # the UNet's sample size × the VAE's ×8
    assert inpaint_model_facts(str(tiny_model_dir)) == ("sd", 64 * 8)
    assert xl.native_working_size == 1024
    assert INPAINT_MODELS["sdxl"] == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"


@pytest.mark.parametrize("negative", [None, "blurry, ugly"])
def test_baseline_equals_diffusers_sdxl_inpaint_pipeline_with_ddim_trailing(xl, photo, negative):
    """Same weights, noise, E(masked image) and latent mask; diffusers' DDIM (trailing, η = 0, a last step to
    ᾱ = 1) against ours. No negative prompt is zeros in both (force_zeros_for_empty_prompt)."""
    from diffusers import DDIMScheduler, StableDiffusionXLInpaintPipeline

    steps = 5
    prepared, mask_latent, image_latents = latent_inputs(xl, photo)
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(7))
    ours = from_noise(xl, photo, noise, steps, "baseline", negative)

    scheduler = DDIMScheduler.from_config(
        xl.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    reference = StableDiffusionXLInpaintPipeline(**{**xl.components, "scheduler": scheduler}, add_watermarker=False)
    reference.set_progress_bar_config(disable=True)
    mask_full = PIL.Image.fromarray((mask_latent[0, 0].numpy() * 255).astype(np.uint8)).resize(
        (SIZE, SIZE), PIL.Image.NEAREST
    )
    theirs = reference(
        PROMPT,
        image=PIL.Image.fromarray(prepared.image),
        mask_image=mask_full,
        masked_image_latents=image_latents,
        height=SIZE,
        width=SIZE,
        strength=1.0,
        num_inference_steps=steps,
        guidance_scale=7.5,
        negative_prompt=negative,
        eta=0.0,
        latents=noise.clone(),
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    other = from_noise(xl, photo, noise, steps, "baseline", "a green dog" if negative is None else None)
    assert (other - ours).abs().max() > 1e-3  # the negative conditioning reaches the UNet


@pytest.mark.parametrize("variant, eta", [("reference", 8.0), ("paper", 1.0)])
def test_guided_sampler_matches_a_reference_style_loop(xl, photo, variant, eta):
    """The reference's RASG loop written plainly for SDXL: one batched [uncond; cond] UNet call with gradients,
    the pooled embeddings and hand-written size ids as added conditioning, ind(τ) by hand, RASG's objective on
    the H/32 logits (the middle block's included), the generalised DDIM step with either σ."""
    steps, scale = 4, 7.5
    prepared, mask_latent, image_latents = latent_inputs(xl, photo)
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(11))
    ours = from_noise(xl, photo, noise, steps, "rasg", rasg_eta=eta, rasg_sigma=variant)

    cond, uncond, pooled, uncond_pooled = xl.encode_prompt(PROMPT, device="cpu", negative_prompt=None)
    assert not uncond.any() and not uncond_pooled.any()  # no negative prompt: zeros, as diffusers' SDXL
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32).repeat(2, 1)
    added = {"text_embeds": torch.cat([uncond_pooled, pooled]), "time_ids": time_ids}
    token_mask = torch.zeros(1, 77, dtype=torch.bool)
    token_mask[0, WORDS + [4]] = True  # the words and the EOT after them
    masks = {32: torch.from_numpy(imgs.grid_mask(prepared.mask, 32, "half")).flatten()[None]}
    condition = torch.cat([mask_latent, image_latents], 1)
    z = reference_loop(
        xl, noise, condition, (uncond, cond), added, token_mask, masks, "rasg", variant, eta, steps, scale
    )
    torch.testing.assert_close(ours, z, rtol=1e-3, atol=5e-4)
    baseline = from_noise(xl, photo, noise, steps, "baseline")
    assert (ours - baseline).abs().max() > 1e-3


def test_rasg_collects_every_h32_cross_attention_layer_the_middle_block_included(xl, photo):
    """SDXL's H/32 level has cross-attention in the down and up blocks and in the middle block (SD 2's middle block
    is at H/64): RASG's mean runs over all of their heads, counted here from the UNet's own modules."""
    expected_heads = sum(
        module.attn2.heads
        for name, module in xl.unet.named_modules()
        if hasattr(module, "attn2") and name.startswith(("down_blocks.2.", "mid_block.", "up_blocks.0."))
    )
    assert expected_heads == (3 + 3 + 2 * 3) * 8  # 12 transformer layers of 8 heads (testing.py's geometry)
    prepared, mask_latent, image_latents = latent_inputs(xl, photo)
    cond, _, pooled, _ = xl.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    token_mask = torch.zeros(1, 77, dtype=torch.bool)
    token_mask[0, WORDS + [4]] = True
    masks = {32: torch.from_numpy(imgs.grid_mask(prepared.mask, 32, "half")).flatten()[None]}
    state = AttentionGuidance((SIZE // 8, SIZE // 8), "cond", token_mask, masks, rasg_divisors=(32,), latent_factor=8)
    with guided_attention(xl.unet, xl.vae_scale_factor):
        xl.unet(
            torch.cat([torch.randn(1, 4, SIZE // 8, SIZE // 8), mask_latent, image_latents], 1),
            torch.tensor([999]),
            encoder_hidden_states=cond,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]])},
            cross_attention_kwargs={STATE_KEY: state},
        )
    assert state.rasg_heads == expected_heads
    assert state.rasg_logits().shape == (1, (SIZE // 32) ** 2, 77)


def test_painta_acts_on_both_grids_and_only_while_t_above_500(xl, photo):
    from hdpainter.inpaint import GuidanceConfig

    base = run(xl, photo, method="baseline")
    for grids in ((16,), (32,)):  # each grid alone changes the result: both have self-attention to rescale
        assert (run(xl, photo, method="painta", guidance=GuidanceConfig(painta_grids=grids)) - base).abs().max() > 1e-4
    never = run(xl, photo, method="painta", guidance=GuidanceConfig(painta_until_t=999))
    torch.testing.assert_close(never, base, rtol=0, atol=0)


def test_mixed_negative_prompts_zero_only_the_empty_ones(xl, photo):
    """A batch where one prompt has a negative prompt and one has none: each row as its single run gives it."""
    image, mask = photo
    kwargs = dict(method="baseline", num_inference_steps=3, working_size=SIZE, output_type="latent")
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    batched = xl(["a red boat", "a dog"], image, mask, negative_prompt=["", "blurry"], generator=gens, **kwargs)
    for row, (prompt, negative) in enumerate((("a red boat", ""), ("a dog", "blurry"))):
        single = xl(
            prompt, image, mask, negative_prompt=negative, generator=torch.Generator().manual_seed(row + 1), **kwargs
        )
        torch.testing.assert_close(batched.images[row], single.images[0], rtol=1e-3, atol=5e-4)


def test_the_diffusers_sdxl_cfg_cutoff_callback_ends_the_unconditional_pass(xl, photo):
    """SDXLCFGCutoffCallback keeps the last rows of prompt_embeds, add_text_embeds and add_time_ids and sets the
    guidance scale to 0: from then on the UNet sees one row, with its pooled embedding and size ids."""
    from diffusers.callbacks import SDXLCFGCutoffCallback

    sizes = []
    handle = xl.unet.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(args[0].shape[0]), with_kwargs=True
    )
    try:
        cut = run(xl, photo, method="painta", callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=0.5))
    finally:
        handle.remove()
    assert sizes == [2, 2, 2, 1]
    assert not xl.do_classifier_free_guidance
    assert not torch.equal(cut, run(xl, photo, method="painta"))


def test_the_pipelines_ind_tau_is_the_union_of_its_tokenizers(xl):
    """SDXL's tokenizers pad differently (EOT, "!") but place the prompt's tokens alike (each is checked by hand
    in test_pipeline's token-mask test), so the union is either one's."""
    from hdpainter.inpaint import tokenizer_token_mask

    prompts, full = ["a red boat", ""], ["a red boat, full hd", ", full hd"]
    first, second = (tokenizer_token_mask(t, prompts, full) for t in (xl.tokenizer, xl.tokenizer_2))
    assert xl.tokenizer.pad_token != xl.tokenizer_2.pad_token
    assert torch.equal(first, second) and torch.equal(xl.token_mask(prompts, full), first)


def test_the_painter_runs_sdxl_end_to_end_and_keeps_the_known_region(tiny_xl_dir, tiny_upscaler_dir):
    """Both stages on an SDXL model: stage 1 at 128 px, ×4 specialised SR on the crop, Poisson blend; the pixels
    outside the blend's dilated mask are the photo's, byte for byte; an automatic working size is the model's own."""
    from skimage import data

    from hdpainter.defaults import POISSON_DILATION
    from hdpainter.painter import HDPainter, InpaintRequest, SRConfig

    painter = HDPainter.from_pretrained(str(tiny_xl_dir), upscaler=str(tiny_upscaler_dir), device="cpu")
    photo = PIL.Image.fromarray(data.coffee()).resize((320, 240), PIL.Image.BICUBIC)
    mask = np.zeros((240, 320), np.uint8)
    mask[100:160, 120:200] = 255
    assert painter.prepare(photo, PIL.Image.fromarray(mask), InpaintRequest("a boat")).request.working_size == 1024
    request = InpaintRequest(
        "a red boat", num_inference_steps=2, working_size=128, num_samples=2, sr=SRConfig(num_inference_steps=2)
    )
    result = painter(photo, PIL.Image.fromarray(mask), request, progress=False)
    assert [im.size for im in result.images] == [(320, 240)] * 2
    assert result.metadata[0]["working_size"] == 128 and result.metadata[0]["upscaler"] == str(tiny_upscaler_dir)
    dilation = POISSON_DILATION * 320 // 2048 + 1  # generous: the blend's kernel scaled to this size
    outside = np.ones((240, 320), bool)
    outside[100 - dilation : 160 + dilation, 120 - dilation : 200 + dilation] = False
    for image in result.images:
        assert np.array_equal(np.asarray(image)[outside], np.asarray(photo)[outside])
        assert not np.array_equal(np.asarray(image)[100:160, 120:200], np.asarray(photo)[100:160, 120:200])
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))  # two seeds


def _save_variant(directory, **unet_overrides):
    """A tiny SDXL inpainting folder whose UNet is rebuilt with other settings (same text encoders and VAE)."""
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    from hdpainter.testing import make_xl_inpaint_components

    components = make_xl_inpaint_components()
    config = dict(components["unet"].config) | unet_overrides
    components["unet"] = UNet2DConditionModel.from_config(config)
    StableDiffusionXLInpaintPipeline(**components, add_watermarker=False).save_pretrained(directory)
    return directory


def test_an_sdxl_base_model_is_refused_in_one_line(tmp_path):
    from hdpainter.models import load_inpaint_pipeline

    folder = _save_variant(tmp_path / "base", in_channels=4)
    with pytest.raises(HDPainterError, match="not an inpainting model: its UNet takes 4 channels, not 9") as info:
        load_inpaint_pipeline(str(folder))
    assert "\n" not in str(info.value)


def test_mixed_family_components_are_refused_in_one_line(tmp_path, tiny_model_dir):
    import shutil

    from hdpainter.inpaint import HDPainterPipeline, HDPainterXLPipeline
    from hdpainter.models import load_inpaint_pipeline
    from hdpainter.testing import make_inpaint_components, make_xl_inpaint_components

    folder = _save_variant(tmp_path / "mixed")  # an SDXL folder with an SD 2 UNet dropped in
    shutil.rmtree(folder / "unet")
    shutil.copytree(tiny_model_dir / "unet", folder / "unet")
    with pytest.raises(HDPainterError, match="not an SDXL model") as info:
        load_inpaint_pipeline(str(folder))
    assert "\n" not in str(info.value) and str(info.value).startswith(str(folder))

    sd, xl_parts = make_inpaint_components(), make_xl_inpaint_components()
    wrong_unet = HDPainterPipeline(**{**sd, "unet": xl_parts["unet"]}, requires_safety_checker=False)
    with pytest.raises(HDPainterError, match="SDXL UNet"):
        wrong_unet.check_components()
    narrow = HDPainterXLPipeline(**{**xl_parts, "text_encoder": sd["text_encoder"]}, add_watermarker=False)
    narrow.text_encoder.config.hidden_size = 16  # a text encoder of another width
    with pytest.raises(HDPainterError, match="mixed components: the text encoders give 48-wide"):
        narrow.check_components()


def test_single_file_checkpoints_are_told_apart_by_their_tensor_names(tmp_path):
    from safetensors.torch import save_file

    from hdpainter.models import checkpoint_family

    def tensor():
        return torch.zeros(1)

    save_file(
        {"conditioner.embedders.1.model.ln_final.weight": tensor(), "model.diffusion_model.x": tensor()},
        tmp_path / "xl.safetensors",
    )
    save_file(
        {"cond_stage_model.transformer.x": tensor(), "model.diffusion_model.x": tensor()}, tmp_path / "sd.safetensors"
    )
    torch.save({"state_dict": {"conditioner.embedders.1.model.x": tensor()}}, tmp_path / "xl.ckpt")
    assert checkpoint_family(str(tmp_path / "xl.safetensors")) == "sdxl"
    assert checkpoint_family(str(tmp_path / "sd.safetensors")) == "sd"
    assert checkpoint_family(str(tmp_path / "xl.ckpt")) == "sdxl"


def test_half_precision_keeps_the_sdxl_vae_in_float32(tiny_xl_dir):
    """SDXL's VAE overflows in float16 (its config says force_upcast): loaded in float16, it stays float32."""
    from hdpainter.models import load_inpaint_pipeline

    pipe = load_inpaint_pipeline(str(tiny_xl_dir), dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder_2.dtype == torch.float16
    assert pipe.vae.dtype == torch.float32


@pytest.mark.slow
def test_the_command_line_paints_with_an_sdxl_folder_at_its_own_working_size(tmp_path, tiny_xl_dir, capsys):
    """`hdpainter inpaint --model DIR` on the tiny SDXL folder, no --working-size: stage 1 at the model's 1024 px
    (an 800 px photo: stage 2 is a resize, then the blend), recorded in the PNG's metadata; known pixels kept."""
    import json

    from skimage import data

    from hdpainter import cli

    photo = PIL.Image.fromarray(data.astronaut()).resize((800, 600), PIL.Image.BICUBIC)
    photo.save(tmp_path / "in.png")
    mask = np.zeros((600, 800), np.uint8)
    mask[200:360, 300:480] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    argv = ["inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "a boat"]
    argv += ["--output", str(out), "--model", str(tiny_xl_dir), "--steps", "2", "--device", "cpu"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    result = PIL.Image.open(out)
    params = json.loads(result.info["parameters"])
    assert params["working_size"] == 1024 and params["model"] == str(tiny_xl_dir) and "upscaler" not in params
    assert result.size == (800, 600)
    kept = np.ones((600, 800), bool)
    kept[120:440, 220:560] = False  # the mask's box and the blend's dilation around it
    assert np.array_equal(np.asarray(result.convert("RGB"))[kept], np.asarray(photo)[kept])


def test_the_web_ui_prepares_an_sdxl_job_at_the_models_own_size(tiny_xl_dir, tiny_model_dir):
    """The UI's working-size slider at 0 (auto): each offered model's own size, read before loading it."""
    from hdpainter.ui import InpaintApp, UIConfig, UIRequest

    app = InpaintApp(UIConfig(models=[str(tiny_xl_dir), str(tiny_model_dir)], upscaler=None))
    try:
        image = PIL.Image.new("RGB", (640, 480), (90, 120, 150))
        mask = PIL.Image.new("L", (640, 480), 0)
        mask.paste(255, (100, 100, 300, 260))
        sizes = {}
        for model in (str(tiny_xl_dir), str(tiny_model_dir)):
            form = UIRequest({"background": image, "layers": []}, mask, "a boat", model)  # the form's defaults
            sizes[model] = app.job(form).request.working_size
        assert sizes == {str(tiny_xl_dir): 1024, str(tiny_model_dir): 512}
        assert app.cache.current() is None  # nothing was loaded to find out
    finally:
        app.close()
