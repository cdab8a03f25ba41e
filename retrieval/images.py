"""Opening images: one decoder for catalog photos, query uploads, encoder input and the page's tiles."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

ImageSource = Image.Image | str | Path | bytes


class ImageUnreadable(ValueError):
    """Something given as an image cannot be decoded; the message names it and says why."""


def open_rgb(image: ImageSource) -> Image.Image:
    """``image`` (a PIL image, a file path or encoded bytes) decoded in full, as RGB.

    ``ImageUnreadable`` for a missing file, another type, or data PIL cannot decode (a truncated file
    included: the pixels are loaded, not just the header).
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        source: Any = io.BytesIO(image)
        name = "the uploaded data"
    elif isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageUnreadable(f"image file not found: {path}")
        source, name = path, str(path)
    else:
        raise ImageUnreadable(f"expected an image (PIL image, file path or bytes), got {type(image).__name__}")
    try:
        with Image.open(source) as img:
            img.load()
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on data that is not an image
        raise ImageUnreadable(f"{name} is not an image that can be opened (PNG, JPEG, ...): {exc}") from exc


def image_problem(path: Path) -> str | None:
    """Why the image file at ``path`` is unusable, or None when it decodes in full (a catalog check).

    ``load()``, not ``verify()``: verify passes a truncated JPEG that the encoder then fails on.
    """
    if not path.exists():
        return f"image file not found: {path}"
    if not path.is_file():
        return f"image path is not a file: {path}"
    try:
        with Image.open(path) as img:
            pixels = img.width * img.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                return (f"image too large (possible decompression bomb): {path}: {pixels} pixels, "
                        f"the limit is {Image.MAX_IMAGE_PIXELS}")
            img.load()
    except Image.DecompressionBombError as e:
        return f"image too large (possible decompression bomb): {path}: {e}"
    except Exception as e:  # noqa: BLE001 - PIL raises many types on corrupt data (OSError, SyntaxError, ...)
        return f"image unreadable or corrupt: {path}: {e}"
    return None
