"""Image codecs: real files in, lossless 8-bit PNGs out, the delta budget kept after rounding.

:func:`decode` reads PNG, JPEG or WebP bytes (EXIF orientation applied) into a float tensor
``[C, H, W]`` in [0, 1] holding the colour channels (1 for grayscale, 3 for colour) and the alpha
channel separately, untouched. :func:`quantize_within_budget` rounds a robustified float image
to the 8-bit grid so that the distance to the (8-bit) original never exceeds delta, and
:func:`encode_png` writes the result with its alpha channel restored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ssim as _ssim

from preempt.imagefile import FORMATS, MAX_PIXELS, ImageError, open_image  # noqa: F401 - re-exported
from .threat import flat_norm


@dataclass
class DecodedImage:
    """Colour channels ``pixels`` ``[C, H, W]`` float32 in [0, 1] (C = 1 or 3), ``alpha`` ``[H, W]`` uint8 or None."""

    pixels: torch.Tensor
    alpha: Optional[np.ndarray]
    format: str

    @property
    def size(self):
        return tuple(self.pixels.shape[-2:])


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode PNG/JPEG/WebP bytes; raise :class:`ImageError` for anything else or anything broken."""
    img = open_image(data, max_pixels)
    fmt = img.format or "PNG"
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA" if img.mode != "LA" else "LA")
        alpha = np.array(img.getchannel("A"), dtype=np.uint8)
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    elif img.mode in ("L", "1", "I", "I;16", "F"):
        img = img.convert("L")
    else:
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    pixels = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    return DecodedImage(pixels=pixels, alpha=alpha, format=fmt)


def quantize_within_budget(x_rob: torch.Tensor, x_orig: torch.Tensor, norm: str, delta: float) -> torch.Tensor:
    """Round ``x_rob`` to multiples of 1/255 without leaving ``B_delta(x_orig)``.

    ``x_orig`` must lie on the 8-bit grid (a decoded file). Each coordinate of the perturbation is
    rounded to the nearest level; if that breaks the budget, coordinates are rounded toward
    ``x_orig`` instead (truncation never increases any coordinate's distance, so the truncated
    perturbation is within the budget whenever the float one was), largest excess first for l2.
    Shapes ``[B, C, H, W]`` or ``[C, H, W]``; returns the same shape.
    """
    single = x_rob.dim() == 3
    if single:
        x_rob, x_orig = x_rob[None], x_orig[None]
    base = torch.round(x_orig * 255)
    d = x_rob * 255 - base
    nearest = torch.round(d)
    toward = torch.trunc(d)
    out = nearest.clone()
    budget = delta * 255 * (1 + 1e-6)
    if norm == "linf":
        lim = float(np.floor(budget))
        out = torch.clamp(out, -lim, lim)
    else:
        for i in range(out.shape[0]):
            if float(out[i].norm()) <= budget:
                continue
            # Switch the coordinates whose rounding went away from x_orig, biggest gain first.
            flat, fl_tw = out[i].flatten(), toward[i].flatten()
            gain = flat.pow(2) - fl_tw.pow(2)
            order = torch.argsort(gain, descending=True)
            excess = float(flat.pow(2).sum()) - budget ** 2
            cum = torch.cumsum(gain[order], 0)
            k = int(torch.searchsorted(cum, torch.tensor(excess, dtype=cum.dtype, device=cum.device))) + 1
            flat[order[:k]] = fl_tw[order[:k]]
            out[i] = flat.view_as(out[i])
    result = ((base + out).clamp(0, 255)) / 255
    return result[0] if single else result


def to_pil(arr: np.ndarray) -> Image.Image:
    """The Pillow image of an 8-bit array ``[H, W, C]`` (C = 1: greyscale "L", 3: "RGB")."""
    return Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [0, 1] -> ``[B, H, W, C]`` uint8 (rounded, as a file holds it)."""
    return np.round(x.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)


def _to_pil(pixels: torch.Tensor) -> Image.Image:
    """``pixels`` ``[C, H, W]`` in [0, 1], rounded to 8 bits, as a Pillow image."""
    return to_pil(to_uint8(pixels[None])[0])


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    """Pillow's JPEG of ``img`` at ``quality`` (greyscale as one component, colour with Pillow's default 4:2:0
    chroma subsampling): the one encoder the product writes and the transforms re-encode with."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def encode_png(pixels: torch.Tensor, alpha: Optional[np.ndarray] = None) -> bytes:
    """Lossless PNG of ``pixels`` ``[C, H, W]`` in [0, 1] (C = 1 or 3), with ``alpha`` if given."""
    img = _to_pil(pixels)
    if alpha is not None:
        img = Image.merge(img.mode + "A", (*img.split(), Image.fromarray(alpha, mode="L")))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_jpeg(pixels: torch.Tensor, quality: int) -> bytes:
    """JPEG of ``pixels`` ``[C, H, W]`` in [0, 1] at ``quality`` (:func:`jpeg_bytes`). JPEG holds no
    transparency."""
    return jpeg_bytes(_to_pil(pixels), quality)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K = 0.01, 0.03) of two images
    ``[C, H, W]`` in [0, 1], averaged over channels, by pytorch-msssim. Images under 11 pixels on a side use the
    largest odd window that fits."""
    side = min(a.shape[-2:])
    win = min(11, side if side % 2 else side - 1)
    if win < 1:
        return 1.0 if torch.equal(a, b) else 0.0
    return float(_ssim(a[None].double(), b[None].double(), data_range=1.0, win_size=win))


def budget_used(x_rob: torch.Tensor, x_orig: torch.Tensor) -> dict:
    """``{"linf", "l2", "psnr", "ssim"}`` of a single image pair ``[C, H, W]`` in [0, 1]; ``psnr`` is ``None``
    for an unchanged image (infinite, which JSON cannot hold)."""
    d = (x_rob - x_orig)[None]
    mse = float(d.pow(2).mean())
    psnr = None if mse == 0 else float(10 * np.log10(1.0 / mse))
    return {"linf": float(flat_norm(d, "linf")[0]), "l2": float(flat_norm(d, "l2")[0]), "psnr": psnr,
            "ssim": round(ssim(x_rob, x_orig), 6)}
