"""Reading image files without torch: the checks every upload and every command-line input passes.

:func:`open_image` accepts PNG, JPEG and WebP only, refuses images over ``max_pixels`` *before*
decoding their pixels (decompression bombs are caught from the header), decodes fully so truncated
files are caught, and applies the EXIF orientation. Each refusal is an :class:`ImageError` of the
type that says why (:class:`UnsupportedImage`, :class:`ImageTooLarge`, :class:`CorruptImage`), so
callers act on the type, never on the message. :mod:`preempt.core.images` turns the result into tensors.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 40_000_000
ONE_CHANNEL_MODES = ("1", "L", "LA", "I", "I;16", "F", "La")


class ImageError(ValueError):
    """An input that is not a usable image; the message says what is wrong."""


class UnsupportedImage(ImageError):
    """Not an image, or an image in a format Preempt does not read."""


class ImageTooLarge(ImageError):
    """More pixels than the limit (known from the header, before any pixel is decoded)."""


class CorruptImage(ImageError):
    """An empty, truncated or otherwise broken file of a supported format."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header and the decoded image say: format, size and colour channels (1 or 3)."""

    format: str
    width: int
    height: int
    channels: int

    @property
    def shape(self) -> tuple:
        """``(C, H, W)``: the shape of the image's pixel tensor."""
        return (self.channels, self.height, self.width)


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes into a loaded, upright PIL image; an :class:`ImageError` otherwise."""
    Image.MAX_IMAGE_PIXELS = None  # our own limit below applies, before any pixel is decoded
    if not data:
        raise CorruptImage("the file is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedImage("not an image this service reads (PNG, JPEG or WebP expected)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImage(f"image header is corrupt ({e})") from None
    if img.format not in FORMATS:
        raise UnsupportedImage(f"unsupported image format {img.format}; use PNG, JPEG or WebP")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"image has {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    if w < 1 or h < 1:
        raise CorruptImage(f"image has no pixels ({w}x{h})")
    if getattr(img, "n_frames", 1) > 1:
        raise UnsupportedImage(f"animated {img.format} images are not protected (each frame would need its own "
                               "protection); send one frame as a still PNG, JPEG or WebP")
    fmt = img.format
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImage(f"image data is truncated or corrupt ({e})") from None
    img.format = fmt
    return img


def inspect_image(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """:func:`open_image`, then what a job needs to know of the image before a worker decodes it."""
    img = open_image(data, max_pixels)
    return ImageInfo(format=img.format, width=img.size[0], height=img.size[1],
                     channels=1 if img.mode in ONE_CHANNEL_MODES else 3)
