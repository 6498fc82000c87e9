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

import inspect
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
from .defaults import SAM_MODEL, WORKING_SIZE
from .errors import HDPainterError
from .outputs import save_image
from .request import InpaintRequest, Option, OptionError, options

DEFAULT_HOST = "127.0.0.1"
LAN_HOST = "0.0.0.0"
DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 25  # per uploaded file; a 24 MP PNG is about this size
QUEUE_SIZE = 16  # jobs waiting beyond this are refused ("queue full") instead of piling up
OUTPUT_MAX_AGE_S = 3600  # result files older than this are removed from the app's folder
BRUSH_COLOR = "rgba(255, 0, 255, 0.6)"  # see-through, so the photo shows under the stroke
CAPPED = ("steps", "num_samples")  # the server refuses more than their sliders offer (work per request)
MAIN_OPTIONS = ("method", "steps", "seed", "guidance_scale", "rasg_eta", "num_samples", "upscale")  # beside the image
GROUP_TITLES = {
    "stage 1": "More",
    "mask": "Mask",
    "outpaint": "Outpaint",
    "guidance": "PAIntA and RASG",
    "stage 2": "Stage 2",
}
LABELS = {
    "steps": "Steps",
    "seed": "Seed",
    "num_samples": "Samples",
    "rasg_eta": "RASG η",
    "guidance_scale": "Guidance scale",
    "method": "Method",
    "upscale": "Upscale and blend (stage 2); off: a fast preview",
    "sr_method": "Super-resolution",
    "positive_prompt": "Positive prompt (appended)",
    "negative_prompt": "Negative prompt",
    "mask_grow": "Grow mask (px; negative shrinks)",
    "mask_feather": "Feather the mask's edge (px; 0: the blend's own)",
}


def form_options() -> list[Option]:
    """The options the form offers, in its order: all of the schema's."""
    return list(options())


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
    working_size: int | None = None  # the form's default working size (None: each model's own)
    max_upload_mb: int = MAX_UPLOAD_MB
    sam_model: str = SAM_MODEL  # loaded by the first request with "SAM refine" ticked


@dataclass
class UIRequest:
    """The form's fields, as the browser sends them (validated by `InpaintApp.run`)."""

    editor: dict | None  # gr.ImageEditor value: background (the photo) and layers (the brush strokes)
    mask_upload: PIL.Image.Image | None
    prompt: str
    model: str
    options: dict = field(default_factory=dict)  # option key → the widget's value; missing: the form's default


@dataclass
class UIResult:
    image: PIL.Image.Image  # the input, as the gallery shows it beside the results
    paths: list[Path]  # one PNG per sample, parameters in the metadata
    seeds: list[int]
    notes: list[str]  # said to the user (e.g. the mask was empty, so the result is the input)


@dataclass
class UIPreview:
    """A preview kept in the browser session's state until one of its samples is upscaled."""

    preview: object  # hdpainter.painter.Preview
    model: str
    run_id: str

    @property
    def images(self) -> list[PIL.Image.Image]:
        return self.preview.images

    @property
    def seeds(self) -> list[int]:
        return self.preview.seeds


class PainterCache:
    """One HDPainter, loaded on first use and reused across requests. Choosing another model frees the
    inpainting model, then loads the new one and keeps the upscaler. Its lock serialises loading and painting."""

    def __init__(self, config: UIConfig):
        self.config = config
        self.lock = threading.Lock()
        self.painter = None

    def check(self, model: str) -> None:
        if model not in self.config.models:  # never a name (or a path) the server was not started with
            raise HDPainterError(f"unknown model {model!r}: this server offers {', '.join(self.config.models)}")

    def current(self):
        """The painter loaded now, whichever its model (None before the first request)."""
        return self.painter

    def native_size(self, model: str) -> int:
        """`model`'s own working size: the loaded pipeline's, or read from its config files before loading it."""
        from .models import native_working_size

        if self.painter is not None and self.painter.model_name == model:
            return self.painter.pipeline.native_working_size
        return native_working_size(model, self.config.local_files_only) or WORKING_SIZE

    def get(self, model: str):
        from .painter import HDPainter

        self.check(model)
        if self.painter is None:
            c = self.config
            self.painter = HDPainter.from_pretrained(
                model,
                upscaler=c.upscaler,
                device=c.device,
                dtype=c.dtype,
                local_files_only=c.local_files_only,
                cpu_offload=c.cpu_offload,
                attention_slicing=c.attention_slicing,
                sam_model=c.sam_model,
            )
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
            raise HDPainterError(
                f"a mask layer is {layer.size[0]}x{layer.size[1]} but the image is {size[0]}x{size[1]}"
            )
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
                raise HDPainterError(
                    f"the uploaded mask is {mask.size[0]}x{mask.size[1]} but the image is "
                    f"{image.size[0]}x{image.size[1]}: they must match"
                )
        else:
            mask = editor_mask(form.editor, image.size)
        return image, mask

    def defaults(self) -> dict:
        """The form's initial values by key: the schema's, with this server's working size and stage 2."""
        values = {opt.key: opt.default for opt in form_options()}
        values["working_size"] = self.config.working_size
        if self.config.upscaler is None:
            values["sr_method"] = "bicubic"
        return values

    def request(self, form: UIRequest) -> InpaintRequest:
        if not form.prompt or not form.prompt.strip():
            raise HDPainterError("type a prompt: what should fill the masked region?")
        values = self.defaults() | form.options
        if self.config.upscaler is None:
            values["sr_method"] = "bicubic"  # this server has no upscaler
        try:
            request = InpaintRequest.from_options(values | {"prompt": form.prompt.strip()})
            for opt in form_options():
                if opt.key in CAPPED and request.get(opt) > opt.ui_max:  # this server's limits: the sliders' ends
                    raise OptionError(opt, f"must be in {opt.range[0]}..{opt.ui_max:g} here, got {request.get(opt)}")
        except OptionError as exc:  # named as the form's API names it
            raise HDPainterError(f"{exc.option.key} {exc.detail}") from None
        return request

    def job(self, form: UIRequest):
        """The form as a painter job (`hdpainter.painter.prepare_job`): every input check, before any model work."""
        from .painter import prepare_job

        image, mask = self.inputs(form)
        request = self.request(form)
        self.cache.check(form.model)
        try:
            job = prepare_job(image, mask, request, self.cache.native_size(form.model))
        except OptionError as exc:  # bounded by the image's size: named as the form's API names it
            raise HDPainterError(f"{exc.option.key} {exc.detail}") from None
        return job

    def run(self, form: UIRequest, on_step=None) -> UIResult:
        """Inpaint; returns the input and the result files (PNG, parameters in the metadata)."""
        job = self.job(form)
        if job.empty:  # nothing to paint: no model work at all
            result = job.unchanged(form.model)
        else:
            with self.cache.lock:
                result = self.cache.get(form.model).run(job, progress=False, on_step=on_step)
        self._remove_old_outputs()
        run_id = uuid.uuid4().hex[:12]  # our own names: nothing from the request names a file
        paths = [
            self._save(output, metadata, f"{run_id}-{k + 1}")
            for k, (output, metadata) in enumerate(zip(result.images, result.metadata))
        ]
        return UIResult(job.image, paths, result.seeds, result.notes)

    def preview(self, form: UIRequest, on_step=None) -> UIPreview:
        """Stage 1 only, for every sample: the results to choose from, and what `upscale` needs to finish one."""
        job = self.job(form)
        if job.empty:
            raise HDPainterError("the mask is empty: paint the region to fill first")
        with self.cache.lock:
            painter = self.cache.get(form.model)
            preview = painter.preview(job, progress=False, on_step=on_step)
        return UIPreview(preview, form.model, uuid.uuid4().hex[:12])

    def upscale(self, kept: UIPreview | None, index: int | None, on_step=None) -> Path:
        """Stage 2 and the blend for sample `index` (0-based) of a kept preview, from its stage-1 result (nothing
        recomputed): a full-size PNG with the parameters in its metadata, as `run` writes for that sample."""
        if kept is None:
            raise HDPainterError("make a preview first (Preview: stage 1 only), then pick one of its results")
        if index is None or not 0 <= index < len(kept.preview.images):
            raise HDPainterError(f"pick one of the {len(kept.preview.images)} preview results first")
        with self.cache.lock:
            painter = self.cache.current() or self.cache.get(kept.model)  # stage 2 needs only the upscaler
            image = painter.upscale(kept.preview, index, progress=False, on_step=on_step)
        self._remove_old_outputs()
        return self._save(image, kept.preview.metadata[index], f"{kept.run_id}-{index + 1}")

    def _save(self, image: PIL.Image.Image, metadata: dict, name: str) -> Path:
        path = self.output_dir / f"hdpainter-{name}.png"  # our own names: nothing from the request names a file
        save_image(image, path, metadata)
        return path

    def _remove_old_outputs(self) -> None:
        limit = time.time() - OUTPUT_MAX_AGE_S
        for path in self.output_dir.glob("hdpainter-*.png"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
            except OSError:
                pass

    def build(self):
        """The Gradio Blocks app (queued one job at a time), its option widgets built from the schema."""
        import gradio as gr

        models = self.config.models
        defaults = self.defaults()
        with gr.Blocks(
            title="hdpainter", analytics_enabled=False, delete_cache=(OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)
        ) as demo:
            gr.Markdown(
                "## hdpainter: prompt-faithful inpainting (HD-Painter)\n"
                "Upload an image, paint over the region to fill, say what should be there."
            )
            widgets = {}
            with gr.Row():
                with gr.Column(scale=3):
                    editor = gr.ImageEditor(
                        label="Image: paint the region to fill",
                        type="pil",
                        image_mode="RGBA",
                        format="png",
                        sources=("upload", "clipboard"),
                        layers=False,
                        transforms=(),
                        elem_id="editor",
                        brush=gr.Brush(default_size=24, colors=[BRUSH_COLOR], color_mode="fixed"),
                    )
                    prompt = gr.Textbox(label="Prompt", placeholder="a boat", elem_id="prompt")
                    with gr.Row():
                        run = gr.Button("Inpaint", variant="primary", elem_id="run")
                        preview = gr.Button("Preview (stage 1 only)", elem_id="preview")
                with gr.Column(scale=2):
                    model = gr.Dropdown(models, value=models[0], label="Model", elem_id="model")
                    by_key = {opt.key: opt for opt in form_options()}
                    for key in MAIN_OPTIONS:
                        widgets[key] = widget(gr, by_key[key], defaults[key])
                    for group, title in GROUP_TITLES.items():
                        with gr.Accordion(title, open=False):
                            for opt in form_options():
                                if opt.group == group and opt.key not in MAIN_OPTIONS:
                                    widgets[opt.key] = widget(
                                        gr,
                                        opt,
                                        defaults[opt.key],
                                        interactive=opt.key != "sr_method" or self.config.upscaler is not None,
                                    )
                            if group == "mask":
                                mask_upload = gr.Image(
                                    label="Or upload a mask (white = fill)",
                                    type="pil",
                                    image_mode=None,
                                    sources=("upload",),
                                    elem_id="mask-upload",
                                )
            gallery = gr.Gallery(
                label="Input and results",
                columns=5,
                object_fit="contain",
                format="png",
                elem_id="results",
                interactive=False,
            )
            with gr.Row():
                upscale = gr.Button("Upscale this one", elem_id="upscale", interactive=False)
                picked = gr.Markdown("Preview, then pick a result to upscale it (stage 2 and the blend).")
            files = gr.File(
                label="Full-resolution PNGs (parameters in the metadata)",
                file_count="multiple",
                interactive=False,
                elem_id="downloads",
            )
            kept = gr.State(None)  # the last preview of this browser session (UIPreview)
            chosen = gr.State(None)  # the preview sample picked in the gallery (0-based)
            keys = [opt.key for opt in form_options()]

            def form_of(editor_value, mask_upload_value, prompt_value, model_value, values):
                options = {key: from_widget(by_key[key], v) for key, v in zip(keys, values)}
                return UIRequest(editor_value, mask_upload_value, prompt_value, model_value, options)

            def submit(editor_value, mask_upload_value, prompt_value, model_value, *values):
                progress = values[-1]
                form = form_of(editor_value, mask_upload_value, prompt_value, model_value, values[:-1])
                progress(0, desc="loading the model")
                try:
                    result = self.run(form, on_step=progress_reporter(progress, form))
                except HDPainterError as exc:
                    raise gr.Error(str(exc)) from None
                for note in result.notes:
                    gr.Warning(note)
                items = [(result.image, "input")] + [
                    (str(p), f"seed {seed}") for p, seed in zip(result.paths, result.seeds)
                ]
                return items, [str(p) for p in result.paths], None, None, gr.update(interactive=False)

            def submit_preview(editor_value, mask_upload_value, prompt_value, model_value, *values):
                progress = values[-1]
                form = form_of(editor_value, mask_upload_value, prompt_value, model_value, values[:-1])
                progress(0, desc="loading the model")
                try:
                    result = self.preview(form, on_step=progress_reporter(progress, form, stages=(1,)))
                except HDPainterError as exc:
                    raise gr.Error(str(exc)) from None
                items = [(result.preview.job.image, "input")] + [
                    (image, f"preview {k + 1}, seed {seed}")
                    for k, (image, seed) in enumerate(zip(result.images, result.seeds))
                ]
                return items, None, result, None, gr.update(interactive=False)

            def pick(current, event: gr.SelectData):
                sample = event.index - 1  # the gallery's first item is the input
                if current is None or not 0 <= sample < len(current.images):
                    return None, gr.update(interactive=False), "Pick one of the preview results (not the input)."
                return (
                    sample,
                    gr.update(interactive=True),
                    f"Upscale preview {sample + 1} (seed {current.seeds[sample]}).",
                )

            pick.__annotations__ = {"event": gr.SelectData}  # real types (this module's are strings): Gradio fills it

            def submit_upscale(current, sample, progress=gr.Progress()):
                progress(0, desc="stage 2")
                try:
                    path = self.upscale(current, sample, on_step=progress_reporter(progress, None, stages=(2,)))
                except HDPainterError as exc:
                    raise gr.Error(str(exc)) from None
                return [str(path)]

            # the API's parameters are named after the form's fields (editor, …, then every option by its key)
            names = ["editor", "mask_upload", "prompt", "model"] + keys
            parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
            parameters.append(
                inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())
            )
            submit.__signature__ = submit_preview.__signature__ = inspect.Signature(parameters)
            form_inputs = [editor, mask_upload, prompt, model] + [widgets[k] for k in keys]
            outputs = [gallery, files, kept, chosen, upscale]
            run.click(submit, form_inputs, outputs, api_name="inpaint", concurrency_limit=1)
            preview.click(submit_preview, form_inputs, outputs, api_name="preview", concurrency_limit=1)
            gallery.select(pick, [kept], [chosen, upscale, picked], api_name=False, queue=False)
            upscale.click(
                submit_upscale, [kept, chosen], [files], api_name=False, concurrency_limit=1
            )  # needs the session's pick
        demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
        return demo


def widget(gr, opt: Option, value, interactive: bool = True):
    """The Gradio component for one schema option."""
    label = LABELS.get(opt.key, opt.key.replace("_", " ").capitalize())
    common = dict(label=label, info=None if opt.key in LABELS else opt.help, interactive=interactive)
    if opt.type is bool:
        return gr.Checkbox(value=value, **common)
    if opt.labels is not None:
        return gr.Dropdown(list(opt.labels), value=opt.label(value), **common)
    if opt.sequence and opt.choices is not None:
        return gr.CheckboxGroup(list(opt.choices), value=list(value), **common)
    if opt.sequence:
        return gr.Textbox(opt.label(value), **common)
    if opt.choices is not None:
        return gr.Dropdown(list(opt.choices), value=value, **common)
    if opt.type is str:
        return gr.Textbox(value, **common)
    if opt.optional:  # None means automatic: 0 on a slider from 0 (below the option's range)
        common["label"] += " (0: auto)"
        return gr.Slider(0, max(opt.ui_max, value or 0), value=value or 0, step=opt.multiple_of or 1, **common)
    if opt.ui_max is not None:  # Gradio refuses values beyond a slider's ends: they are the form's limits
        low = opt.range[0] if opt.range else -opt.ui_max
        step = opt.multiple_of or (2 if opt.odd else 1) if opt.type is int else opt.ui_max / 40
        return gr.Slider(low, max(opt.ui_max, value), value=value, step=step, **common)
    return gr.Number(value, precision=0 if opt.type is int else None, **common)


def from_widget(opt: Option, value):
    """A widget's value as the schema parses it (0 on an automatic option's slider: None, automatic)."""
    if opt.optional and not value:
        return None
    if value is None and opt.labels is None:
        return opt.default
    return value


def progress_reporter(progress, form: UIRequest | None, stages: tuple[int, ...] = (1, 2)):
    """on_step for HDPainter that moves a Gradio progress bar over the steps of `stages`: both (a run), (1,)
    (a preview) or (2,) (upscaling one sample)."""
    samples = 1 if form is None else int(form.options.get("num_samples", 1))

    def on_step(stage, sample, step, total):
        if stages != (1, 2):  # one stage: the whole bar is its steps
            progress(step / total, desc=f"stage {stage}: step {step}/{total}")
        elif stage == 1:
            progress(step / total * 0.5, desc=f"stage 1: step {step}/{total}")
        else:
            done = (sample + step / total) / samples
            progress(0.5 + 0.5 * done, desc=f"stage 2, sample {sample + 1}: step {step}/{total}")

    return on_step


def launch(app: InpaintApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True):
    """Serve `app` on host:port; returns the Blocks (block=False: the server runs in a thread until demo.close())."""
    import sys

    demo = app.build()
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=True,
        quiet=True,
        max_file_size=f"{app.config.max_upload_mb}mb",
        ssr_mode=False,
        mcp_server=False,
        prevent_thread_lock=True,
        footer_links=[],
    )
    shown = "127.0.0.1" if host == LAN_HOST else host
    print(f"hdpainter UI on http://{shown}:{demo.server_port} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if block:
        demo.block_thread()
    return demo
