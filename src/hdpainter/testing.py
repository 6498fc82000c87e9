"""Tiny random-weight models for tests and smoke runs, built offline: `python -m hdpainter.testing DIR`.

They keep Stable Diffusion's geometry (VAE ×8; cross-attention transformer blocks at H/16 and H/32 and
in the H/64 middle block; 9-channel inpainting UNet; CLIP text encoder with a real BPE tokenizer)
with a few hundred thousand weights, so a 512 px run takes seconds on a CPU. The SDXL one keeps SDXL's
(two text encoders, pooled text and micro-conditioning embeddings, attention only at H/16 and H/32).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

SOT, EOT = "<|startoftext|>", "<|endoftext|>"

# Words the tiny tokenizer learns as whole tokens; anything else splits into sub-word pieces, as in CLIP.
_CORPUS = """
a an the of and with on in at to by for from photo picture image painting drawing high quality resolution full hd 4k
professional detailed realistic text bad anatomy proportions blurry cropped deformed disfigured duplicate error extra
limbs gross jpeg artifacts long neck low lowres malformed morbid mutated mutilated out frame ugly worst
red green blue yellow white black orange purple pink brown grey gray
circle square triangle boat cat dog bird horse sheep cow elephant bear zebra giraffe person car bicycle motorcycle
airplane bus train truck bench umbrella bottle cup bowl banana apple orange pizza cake chair couch bed table
tv laptop phone book clock vase flower tree house sky sea water grass kangaroo hat ball
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable character map (the GPT-2 scheme)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learned greedily (most frequent pair, ties broken by order) until every word is one token."""
    byte_map = bytes_to_unicode()
    seqs = [[byte_map[b] for b in w.encode()] for w in words]
    seqs = [s[:-1] + [s[-1] + "</w>"] for s in seqs]
    merges = []
    while True:
        pairs = Counter(p for s in seqs for p in zip(s, s[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i : i + 2] = [s[i] + s[i + 1]]
                i += 1


def make_tokenizer(family: str = "sd2"):
    """A CLIPTokenizer with CLIP's byte-level BPE scheme and a small learned vocabulary.

    family "sd1" pads with EOT (as SD 1.x); "sd2" pads with "!" (as SD 2's OpenCLIP-derived tokenizer).
    """
    from transformers import CLIPTokenizer

    base = list(bytes_to_unicode().values())
    merges = learn_merges(sorted(set(_CORPUS)))
    vocab_list = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    pad = EOT if family == "sd1" else "!"
    with tempfile.TemporaryDirectory() as folder:  # the files CLIP ships, loaded the ordinary way
        Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        Path(folder, "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
        )
        return CLIPTokenizer.from_pretrained(folder, pad_token=pad, model_max_length=77)


def tiny_text_encoder(tokenizer, activation: str, with_projection: bool = False):
    """A 2-layer CLIP text encoder (width 32) over `tokenizer`'s vocabulary; SD 1.x uses quick_gelu, SD 2 gelu;
    `with_projection`: with its pooled projection (width 32), as SDXL's second text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act=activation,
            projection_dim=32,
        )
    )


def tiny_vae(**config):
    """A ×8 autoencoder with 4 latent channels, as Stable Diffusion's (and SDXL's), a few thousand weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        **config,
    )


def make_inpaint_components(family: str = "sd2", seed: int = 0) -> dict:
    """Components of a tiny 9-channel SD inpainting pipeline, random weights from `seed`."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    tokenizer = make_tokenizer(family)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 4, 4) if family == "sd2" else 4,
        use_linear_projection=family == "sd2",
        norm_num_groups=8,
    )
    vae = tiny_vae(sample_size=64)
    text_encoder = tiny_text_encoder(tokenizer, "gelu" if family == "sd2" else "quick_gelu")
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
    )


def save_inpaint_model(directory: str | Path, family: str = "sd2", seed: int = 0) -> Path:
    """Write a tiny inpainting model as a diffusers folder loadable by `from_pretrained`."""
    from diffusers import StableDiffusionInpaintPipeline

    directory = Path(directory)
    pipe = StableDiffusionInpaintPipeline(**make_inpaint_components(family, seed), requires_safety_checker=False)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def make_xl_inpaint_components(seed: int = 0) -> dict:
    """Components of a tiny 9-channel SDXL inpainting pipeline shaped like
    diffusers/stable-diffusion-xl-1.0-inpainting-0.1 where hdpainter relies on it: two CLIP text encoders (the
    first pads with EOT, the second with "!", as SDXL's), their penultimate layers concatenated (width 64) and the
    second's pooled projection, a "text_time" addition embedding over six size ids, transformer blocks only at
    H/16 (2 layers each) and H/32 (3 layers each, and the middle block there), a ×8 VAE with SDXL's scaling
    factor that asks to be upcast in float16, and the checkpoint's Euler scheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    tokenizer, tokenizer_2 = make_tokenizer("sd1"), make_tokenizer("sd2")
    torch.manual_seed(seed)
    time_dim, projection = 8, 32  # the second text encoder's pooled projection is tiny_text_encoder's 32
    unet = UNet2DConditionModel(
        sample_size=128,  # 1024 px: SDXL's native size
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 8),  # diffusers reads these as head counts, as SDXL's config (5, 10, 20) is read
        use_linear_projection=True,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        norm_num_groups=8,
    )
    vae = tiny_vae(sample_size=128, scaling_factor=0.13025, force_upcast=True)  # SDXL's scale; upcast in fp16
    text_encoder = tiny_text_encoder(tokenizer, "quick_gelu")
    text_encoder_2 = tiny_text_encoder(tokenizer_2, "gelu", with_projection=True)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
    )


def save_xl_inpaint_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny SDXL inpainting model as a diffusers folder loadable by `from_pretrained`."""
    from diffusers import StableDiffusionXLInpaintPipeline

    directory = Path(directory)
    pipe = StableDiffusionXLInpaintPipeline(**make_xl_inpaint_components(seed), add_watermarker=False)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def make_upscaler_components(seed: int = 0) -> dict:
    """Components of a tiny ×4 upscaler shaped like stabilityai/stable-diffusion-x4-upscaler: a ×4 VAE
    (scaling 0.08333), a 7-channel UNet (latents + low-res RGB) with a noise-level class embedding,
    v-prediction DDIM, and the DDPM low-res noise scheduler."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    tokenizer = make_tokenizer("sd2")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=7,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        use_linear_projection=True,
        num_class_embeds=1000,
        only_cross_attention=(True, True, True, False),  # no self-attention above the lowest level, as the real one
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.08333,
    )
    text_encoder = tiny_text_encoder(tokenizer, "gelu")
    # the upscaler's LDM "linear" schedule (β 1e-4 … 2e-2 on a square-root scale) for both schedulers
    scheduler = DDIMScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    low_res_scheduler = DDPMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", clip_sample=False
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        low_res_scheduler=low_res_scheduler,
        max_noise_level=350,
    )


def save_upscaler_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny ×4 upscaler as a diffusers folder loadable by `StableDiffusionUpscalePipeline.from_pretrained`."""
    from diffusers import StableDiffusionUpscalePipeline

    directory = Path(directory)
    StableDiffusionUpscalePipeline(**make_upscaler_components(seed)).save_pretrained(
        directory, safe_serialization=True
    )
    return directory


def save_clip_model(directory: str | Path, seed: int = 0, projection_dim: int = 16) -> Path:
    """A tiny CLIP (text and vision towers, 224 px input) with its processor, for the evaluation's metrics."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = make_tokenizer("sd1")
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=224,
            patch_size=32,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
        ),
        projection_dim=projection_dim,
    )
    directory = Path(directory)
    CLIPModel(config).save_pretrained(directory)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224), tokenizer=tokenizer
    )
    processor.save_pretrained(directory)
    return directory


def save_detector(directory: str | Path, labels: list[str], seed: int = 0) -> Path:
    """A tiny RT-DETR (the evaluation's detector family) over `labels`, with its image processor at 128 px."""
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    config = RTDetrConfig(
        backbone_config=backbone,
        encoder_in_channels=[32, 64, 128],
        encoder_hidden_dim=32,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        d_model=32,
        decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=64,
        decoder_layers=2,
        decoder_attention_heads=2,
        num_queries=30,
        num_denoising=0,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    directory = Path(directory)
    RTDetrForObjectDetection(config).save_pretrained(directory)
    RTDetrImageProcessor(size={"height": 128, "width": 128}).save_pretrained(directory)
    return directory


def save_sam_model(directory: str | Path, seed: int = 0, image_size: int = 256) -> Path:
    """A tiny random-weight SAM (transformers' SamModel with SamProcessor), shaped like facebook/sam-vit-base
    where the pipeline relies on it (ViT image encoder with windowed and global attention, box prompts, three
    candidate masks), at `image_size` instead of 1024 px."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    patch = 16
    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=16,
        mlp_dim=64,
        initializer_range=0.02,
    )
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=patch, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    torch.manual_seed(seed)
    directory = Path(directory)
    SamModel(config).save_pretrained(directory)
    processor = SamProcessor(
        SamImageProcessor(size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size})
    )
    processor.save_pretrained(directory)
    return directory


def save_aesthetic_head(path: str | Path, dim: int = 16, seed: int = 0) -> Path:
    """LAION's aesthetic MLP shape over a `dim`-wide CLIP embedding, random weights, saved as LAION's .pth is."""
    import torch

    from .eval.metrics import AestheticHead

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"layers.{k}": v for k, v in AestheticHead(dim).state_dict().items()}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hdpainter.testing", description=__doc__.splitlines()[0])
    parser.add_argument(
        "directory", help="where to write the model folders (DIR/inpaint, DIR/inpaint-xl, DIR/upscaler, DIR/sam)"
    )
    parser.add_argument("--family", choices=("sd1", "sd2"), default="sd2", help="tokenizer/UNet flavour")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = save_inpaint_model(Path(args.directory) / "inpaint", args.family, args.seed)
    print(f"tiny inpainting model written to {path}")
    path = save_xl_inpaint_model(Path(args.directory) / "inpaint-xl", args.seed)
    print(f"tiny SDXL inpainting model written to {path}")
    path = save_upscaler_model(Path(args.directory) / "upscaler", args.seed)
    print(f"tiny x4 upscaler written to {path}")
    path = save_sam_model(Path(args.directory) / "sam", args.seed)
    print(f"tiny SAM written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
