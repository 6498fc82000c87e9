"""`python -m hdpainter.testing DIR`: the tiny models load through the real from_pretrained paths."""

import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch


@pytest.mark.slow
def test_cli_writes_loadable_inpaint_and_upscaler_folders(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hdpainter.testing", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    from diffusers import StableDiffusionUpscalePipeline

    from hdpainter.inpaint import HDPainterPipeline

    inpaint = HDPainterPipeline.from_pretrained(tmp_path / "inpaint")
    assert inpaint.unet.config.in_channels == 9
    assert 2 ** (len(inpaint.vae.config.block_out_channels) - 1) == 8  # VAE ×8, as Stable Diffusion
    assert inpaint.tokenizer("a red boat").input_ids[1:-1] == [
        inpaint.tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("a", "red", "boat")
    ]

    from hdpainter.inpaint import HDPainterXLPipeline

    xl = HDPainterXLPipeline.from_pretrained(tmp_path / "inpaint-xl")
    xl.check_components()  # 9 channels, two text encoders whose widths the UNet takes, pooled + size embeddings
    assert xl.tokenizer.pad_token == "<|endoftext|>" and xl.tokenizer_2.pad_token == "!"  # as SDXL's two
    attention = {n.split(".attentions")[0] for n, m in xl.unet.named_modules() if hasattr(m, "attn2")}
    assert attention == {"down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1"}  # H/16, H/32
    assert xl.native_working_size == 1024 and xl.vae.config.force_upcast

    upscaler = StableDiffusionUpscalePipeline.from_pretrained(tmp_path / "upscaler")
    upscaler.set_progress_bar_config(disable=True)
    assert (
        upscaler.vae.config.scaling_factor == 0.08333 and upscaler.scheduler.config.prediction_type == "v_prediction"
    )
    low = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
    out = upscaler(
        "a cat", image=low, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert out.shape == (1, 96, 160, 3)  # exactly ×4, through diffusers' own upscale pipeline
