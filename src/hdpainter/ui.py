"""`hdpainter ui`: a local web UI (Gradio) over `hdpainter.painter`.

A person uploads an image, paints the mask with a brush (or uploads one), types a prompt and gets the
results beside the input, each a full-resolution PNG with its parameters in the metadata.

Safety: the app runs with Gradio's queue at one job at a time (models are shared and loaded once),
binds to 127.0.0.1 unless told otherwise and caps uploads. No file path from a request reaches the file
system: Gradio stores uploads under names of its own in its upload folder and hands the app decoded
images; the model is one of the names the server was started with; results are written to names the app
makes in a folder it owns.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from . import images as imgs
from .defaults import REFERENCE_NEGATIVE_PROMPT, REFERENCE_POSITIVE_PROMPT, SEED_STRIDE
from .errors import HDPainterError
from .outputs import save_image

DEFAULT_HOST = "127.0.0.1"
LAN_HOST = "0.0.0.0"
DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 25  # per uploaded file; a 24 MP PNG is about this size
MAX_SAMPLES = 4
MAX_STEPS = 200
QUEUE_SIZE = 16  # jobs waiting beyond this are refused ("queue full") instead of piling up
OUTPUT_MAX_AGE_S = 3600  # result files older than this are removed from the app's folder
METHODS = ("painta+rasg", "painta", "rasg", "baseline")
SR_METHODS = ("specialized", "baseline", "bicubic")
BRUSH_COLOR = "rgba(255, 0, 255, 0.6)"  # see-through, so the photo shows under the stroke


@dataclass
class UIConfig:
    """What the server was started with; requests may choose only among these models."""

    models: list[str] = field(default_factory=lambda: ["sd2"])
    upscaler: str | None = "x4"  # None: stage 2 never diffuses (bicubic)
    device: str | None = None
    dtype: str | None = None
    local_files_only: bool = False
    cpu_offload: bool = False
    attention_slicing: bool = False
    working_size: int = imgs.WORKING_SIZE
    max_upload_mb: int = MAX_UPLOAD_MB


@dataclass
class UIRequest:
    """The form's fields, as the browser sends them (validated by `InpaintApp.run`)."""

    editor: dict | None  # gr.ImageEditor value: background (the photo) and layers (the brush strokes)
    mask_upload: PIL.Image.Image | None
    prompt: str
    model: str
    method: str = "painta+rasg"
    steps: int = 50
    seed: int = 1
    guidance_scale: float = 7.5
    rasg_eta: float = 0.1
    positive_prompt: str = REFERENCE_POSITIVE_PROMPT
    negative_prompt: str = REFERENCE_NEGATIVE_PROMPT
    num_samples: int = 1
    upscale: bool = True
    sr_method: str = "specialized"
    mask_grow: int = 0
    mask_feather: int = 0


class PainterCache:
    """One HDPainter, loaded on first use and reused across requests. Choosing another model frees the
    inpainting model, then loads the new one and keeps the upscaler. Its lock serialises loading and painting."""

    def __init__(self, config: UIConfig):
        self.config = config
        self.lock = threading.Lock()
        self.painter = None

    def get(self, model: str):
        from .painter import HDPainter

        if model not in self.config.models:  # never a name (or a path) the server was not started with
            raise HDPainterError(f"unknown model {model!r}: this server offers {', '.join(self.config.models)}")
        if self.painter is None:
            c = self.config
            self.painter = HDPainter.from_pretrained(model, upscaler=c.upscaler, device=c.device, dtype=c.dtype,
                                                     local_files_only=c.local_files_only, cpu_offload=c.cpu_offload,
                                                     attention_slicing=c.attention_slicing)
        elif self.painter.model_name != model:
            previous, self.painter = self.painter, None
            previous.pipeline = None  # the old model's memory goes before the new one arrives
            _free_memory()
            self.painter = previous.with_model(model)
        return self.painter


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def editor_mask(editor: dict, size: tuple[int, int]) -> PIL.Image.Image:
    """The union of the brush layers (any painted pixel) as a binary 'L' mask of `size`."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        layer = imgs.as_pil(layer, "mask layer")
        if layer.size != size:
            raise HDPainterError(f"a mask layer is {layer.size[0]}x{layer.size[1]} but the image is {size[0]}x{size[1]}")
        rgba = np.asarray(layer.convert("RGBA"))
        painted |= rgba[..., 3] > 0
    return PIL.Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), "L")


class InpaintApp:
    """The UI's logic, separate from its layout so it can be tested without a browser."""

    def __init__(self, config: UIConfig, output_dir: str | os.PathLike | None = None):
        self.config = config
        self.cache = PainterCache(config)
        self._own_dir = output_dir is None
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="hdpainter-ui-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    def inputs(self, form: UIRequest) -> tuple[PIL.Image.Image, PIL.Image.Image]:
        """The photo and the binary mask from the form; HDPainterError with a sentence for the user otherwise."""
        if not form.editor or form.editor.get("background") is None:
            raise HDPainterError("upload an image first")
        background = imgs.as_pil(form.editor["background"], "image")
        imgs.check_size(background.size, "the image")
        image = imgs.to_rgb(background)
        if form.mask_upload is not None:
            mask = imgs.to_mask(imgs.as_pil(form.mask_upload, "mask"))
            if mask.size != image.size:
                raise HDPainterError(f"the uploaded mask is {mask.size[0]}x{mask.size[1]} but the image is "
                                     f"{image.size[0]}x{image.size[1]}: they must match")
        else:
            mask = editor_mask(form.editor, image.size)
        mask = imgs.grow_mask(mask, int(form.mask_grow))
        if not np.any(np.asarray(mask)):
            raise HDPainterError("the mask is empty: paint over the region to fill (or upload a mask)")
        return image, mask

    def request(self, form: UIRequest, image: PIL.Image.Image):
        from .painter import InpaintRequest, check_request

        if not form.prompt or not form.prompt.strip():
            raise HDPainterError("type a prompt: what should fill the masked region?")
        if form.method not in METHODS:
            raise HDPainterError(f"unknown method {form.method!r}")
        if form.sr_method not in SR_METHODS:
            raise HDPainterError(f"unknown super-resolution method {form.sr_method!r}")
        if not 1 <= int(form.steps) <= MAX_STEPS:
            raise HDPainterError(f"steps must be in 1..{MAX_STEPS}")
        if not 1 <= int(form.num_samples) <= MAX_SAMPLES:
            raise HDPainterError(f"samples must be in 1..{MAX_SAMPLES}")
        sr_method = form.sr_method if self.config.upscaler is not None else "bicubic"
        request = InpaintRequest(
            prompt=form.prompt.strip(), method=form.method, num_inference_steps=int(form.steps),
            guidance_scale=float(form.guidance_scale), rasg_eta=float(form.rasg_eta),
            negative_prompt=form.negative_prompt or "", positive_prompt=form.positive_prompt or "",
            seed=int(form.seed), num_samples=int(form.num_samples), working_size=self.config.working_size,
            upscale=bool(form.upscale), sr_method=sr_method, mask_feather=max(int(form.mask_feather), 0),
            extra={"model": form.model} | ({"mask_grow": int(form.mask_grow)} if form.mask_grow else {}),
        )
        if request.upscale:
            check_request(image.size, request)
        diffuse = (request.upscale and sr_method != "bicubic"
                   and max(image.size) > max(imgs.working_size(image.size, self.config.working_size)))
        if diffuse:
            request.extra["upscaler"] = self.config.upscaler
        return request

    def run(self, form: UIRequest, on_step=None) -> tuple[PIL.Image.Image, list[Path]]:
        """Inpaint; returns the input and the result files (PNG, parameters in the metadata)."""
        image, mask = self.inputs(form)
        request = self.request(form, image)
        imgs.prepare(image, mask, self.config.working_size)  # the input checks, before any model work
        with self.cache.lock:
            painter = self.cache.get(form.model)
            results = painter(image, mask, request, progress=False, on_step=on_step)
        self._remove_old_outputs()
        job = uuid.uuid4().hex[:12]  # our own names: nothing from the request names a file
        paths = []
        for k, result in enumerate(results):
            path = self.output_dir / f"hdpainter-{job}-{k + 1}.png"
            save_image(result, path, request.metadata() | {"seed": request.seed + SEED_STRIDE * k, "sample": k + 1})
            paths.append(path)
        return image, paths

    def _remove_old_outputs(self) -> None:
        limit = time.time() - OUTPUT_MAX_AGE_S
        for path in self.output_dir.glob("hdpainter-*.png"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
            except OSError:
                pass

    def build(self):
        """The Gradio Blocks app (queued one job at a time)."""
        import gradio as gr

        models = self.config.models
        with gr.Blocks(title="hdpainter", analytics_enabled=False, delete_cache=(OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)) as demo:
            gr.Markdown("## hdpainter: prompt-faithful inpainting (HD-Painter)\n"
                        "Upload an image, paint over the region to fill, say what should be there.")
            with gr.Row():
                with gr.Column(scale=3):
                    editor = gr.ImageEditor(
                        label="Image: paint the region to fill", type="pil", image_mode="RGBA", format="png",
                        sources=("upload", "clipboard"), layers=False, transforms=(), elem_id="editor",
                        brush=gr.Brush(default_size=24, colors=[BRUSH_COLOR], color_mode="fixed"),
                    )
                    prompt = gr.Textbox(label="Prompt", placeholder="a boat", elem_id="prompt")
                    run = gr.Button("Inpaint", variant="primary", elem_id="run")
                with gr.Column(scale=2):
                    model = gr.Dropdown(models, value=models[0], label="Model", elem_id="model")
                    method = gr.Dropdown(list(METHODS), value="painta+rasg", label="Method")
                    with gr.Row():
                        steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
                        seed = gr.Number(1, precision=0, label="Seed")
                    with gr.Row():
                        guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance scale")
                        eta = gr.Slider(0, 1, value=0.1, step=0.05, label="RASG η")
                    samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="Samples")
                    upscale = gr.Checkbox(True, label="Upscale and blend (stage 2); off: a fast preview")
                    with gr.Accordion("More", open=False):
                        sr_method = gr.Dropdown(list(SR_METHODS), value="specialized" if self.config.upscaler else "bicubic",
                                                label="Super-resolution", interactive=self.config.upscaler is not None)
                        positive = gr.Textbox(REFERENCE_POSITIVE_PROMPT, label="Positive prompt (appended)")
                        negative = gr.Textbox(REFERENCE_NEGATIVE_PROMPT, label="Negative prompt")
                        grow = gr.Slider(-32, 32, value=0, step=1, label="Grow mask (px; negative shrinks)")
                        feather = gr.Slider(0, 32, value=0, step=1, label="Feather the mask's edge (px; 0: the blend's own)")
                        mask_upload = gr.Image(label="Or upload a mask (white = fill)", type="pil",
                                               image_mode=None, sources=("upload",))
            gallery = gr.Gallery(label="Input and results", columns=MAX_SAMPLES + 1, object_fit="contain",
                                 format="png", elem_id="results", interactive=False)
            files = gr.File(label="Full-resolution PNGs (parameters in the metadata)", file_count="multiple",
                            interactive=False, elem_id="downloads")

            def submit(editor_value, mask_value, prompt_value, model_value, method_value, steps_value, seed_value,
                       guidance_value, eta_value, positive_value, negative_value, samples_value, upscale_value,
                       sr_value, grow_value, feather_value, progress=gr.Progress()):
                form = UIRequest(editor_value, mask_value, prompt_value, model_value, method_value, steps_value,
                                 seed_value, guidance_value, eta_value, positive_value, negative_value, samples_value,
                                 upscale_value, sr_value, grow_value, feather_value)
                progress(0, desc="loading the model")
                try:
                    image, paths = self.run(form, on_step=progress_reporter(progress, form))
                except HDPainterError as exc:
                    raise gr.Error(str(exc)) from None
                items = [(image, "input")] + [(str(p), f"seed {int(form.seed) + SEED_STRIDE * k}") for k, p in enumerate(paths)]
                return items, [str(p) for p in paths]

            run.click(submit, [editor, mask_upload, prompt, model, method, steps, seed, guidance, eta, positive,
                               negative, samples, upscale, sr_method, grow, feather], [gallery, files],
                      api_name="inpaint", concurrency_limit=1)
        demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
        return demo


def progress_reporter(progress, form: UIRequest):
    """on_step for HDPainter that moves a Gradio progress bar over both stages' steps."""
    steps1 = int(form.steps)

    def on_step(stage, sample, step, total):
        if stage == 1:
            progress(step / steps1 * 0.5, desc=f"stage 1: step {step}/{total}")
        else:
            done = (sample + step / total) / int(form.num_samples)
            progress(0.5 + 0.5 * done, desc=f"stage 2, sample {sample + 1}: step {step}/{total}")

    return on_step


def launch(app: InpaintApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True):
    """Serve `app` on host:port; returns the Blocks (block=False: the server runs in a thread until demo.close())."""
    import sys

    demo = app.build()
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True, quiet=True,
                max_file_size=f"{app.config.max_upload_mb}mb", ssr_mode=False, mcp_server=False,
                prevent_thread_lock=True, footer_links=[])
    shown = "127.0.0.1" if host == LAN_HOST else host
    print(f"hdpainter UI on http://{shown}:{demo.server_port} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if block:
        demo.block_thread()
    return demo
