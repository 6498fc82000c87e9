"""Writing results: file names for several samples, and atomic writes with the parameters embedded."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import HDPainterError

TEMP_SUFFIX = ".tmp"  # a write in progress is `.{name}.XXXX.tmp` in the output's folder


def output_paths(output: str, count: int) -> list[Path]:
    out = Path(output)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(1, count + 1)]


def save_image(image, path: Path, metadata: dict) -> None:
    """Write atomically (temporary name in the same folder, then rename) with the parameters embedded."""
    import PIL.PngImagePlugin

    suffix = path.suffix.lower()
    params = json.dumps(metadata, ensure_ascii=False)
    kwargs = {}
    if suffix == ".png":
        info = PIL.PngImagePlugin.PngInfo()
        info.add_text("parameters", params)
        kwargs["pnginfo"] = info
    elif suffix in (".jpg", ".jpeg"):
        kwargs.update(quality=95, comment=params.encode())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format=image_format(path), **kwargs)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; an output file should not be
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def image_format(path: Path) -> str:
    import PIL.Image

    PIL.Image.init()
    fmt = PIL.Image.EXTENSION.get(path.suffix.lower())
    if fmt is None:
        raise HDPainterError(f"cannot tell the image format of {path} from its extension; use .png or .jpg")
    return fmt
