import numpy as np
import PIL.Image
import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD2-style inpainting model written as a diffusers folder (the real from_pretrained path)."""
    from hdpainter.testing import save_inpaint_model

    return save_inpaint_model(tmp_path_factory.mktemp("models") / "inpaint", family="sd2")


@pytest.fixture(scope="session")
def tiny_upscaler_dir(tmp_path_factory):
    """A tiny ×4 upscaler shaped like stabilityai/stable-diffusion-x4-upscaler, as a diffusers folder."""
    from hdpainter.testing import save_upscaler_model

    return save_upscaler_model(tmp_path_factory.mktemp("models") / "upscaler")


@pytest.fixture(scope="session")
def pipe(tiny_model_dir):
    from hdpainter.inpaint import HDPainterPipeline

    pipeline = HDPainterPipeline.from_pretrained(tiny_model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_xl_dir(tmp_path_factory):
    """A tiny SDXL inpainting model (two text encoders, pooled and size embeddings) as a diffusers folder."""
    from hdpainter.testing import save_xl_inpaint_model

    return save_xl_inpaint_model(tmp_path_factory.mktemp("models") / "inpaint-xl")


@pytest.fixture(scope="session")
def xl_pipe(tiny_xl_dir):
    """HDPainterXLPipeline on the tiny SDXL model, loaded as users load models (hdpainter.models)."""
    from hdpainter.models import load_inpaint_pipeline

    pipeline = load_inpaint_pipeline(str(tiny_xl_dir), device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(params=["sd2", "sdxl"])
def family_pipe(request):
    """Stage 1 of each family: tests that hold for both run on both."""
    return request.getfixturevalue("pipe" if request.param == "sd2" else "xl_pipe")


@pytest.fixture(scope="session")
def photo():
    """A real photo (skimage's astronaut), 256x256, and a rectangular mask over part of it."""
    from skimage import data

    image = PIL.Image.fromarray(data.astronaut()).resize((256, 256), PIL.Image.BICUBIC)
    mask = np.zeros((256, 256), np.uint8)
    mask[70:170, 100:190] = 255
    return image, PIL.Image.fromarray(mask)
