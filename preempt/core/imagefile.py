"""Reading image files without torch: what the API checks before it accepts an upload.

:func:`open_image` is the single gate every upload and every command-line input passes: it
accepts PNG, JPEG and WebP only, refuses images over ``max_pixels`` *before* decoding their
pixels (decompression bombs are caught from the header), decodes fully so truncated files are
caught, and applies the EXIF orientation. :mod:`images` turns the result into tensors.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An input that is not a usable image; the message says what is wrong."""


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes into a loaded, upright PIL image; :class:`ImageError` otherwise."""
    Image.MAX_IMAGE_PIXELS = None  # our own limit below applies, before any pixel is decoded
    if not data:
        raise ImageError("the file is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image this service reads (PNG, JPEG or WebP expected)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image header is corrupt ({e})") from None
    if img.format not in FORMATS:
        raise ImageError(f"unsupported image format {img.format}; use PNG, JPEG or WebP")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"image has {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    fmt = img.format
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"image data is truncated or corrupt ({e})") from None
    img.format = fmt
    return img
