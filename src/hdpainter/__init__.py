"""hdpainter: prompt-faithful, high-resolution text-guided inpainting (HD-Painter, arXiv 2312.14091).

Importing the package is cheap; the heavy classes load on first use:
    from hdpainter import HDPainter, InpaintRequest, InpaintResult, HDPainterPipeline, HDUpscalePipeline
    from hdpainter import HDPainterXLPipeline  # SDXL inpainting models
"""

__version__ = "0.1.0"

_LAZY = {
    "HDPainterPipeline": "hdpainter.inpaint",
    "HDPainterXLPipeline": "hdpainter.inpaint",
    "HDUpscalePipeline": "hdpainter.upscale",
    "HDPainter": "hdpainter.painter",
    "InpaintResult": "hdpainter.painter",
    "InpaintRequest": "hdpainter.request",
    "GuidanceConfig": "hdpainter.request",
    "SRConfig": "hdpainter.request",
    "HDPainterError": "hdpainter.errors",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hdpainter' has no attribute {name!r}")


__all__ = list(_LAZY)
