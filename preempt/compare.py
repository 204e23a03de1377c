"""Before / after / difference pictures of a protected image, without torch.

:func:`comparison` puts the original, the protected image and their difference side by side; the
difference is amplified so that the full budget ``delta`` (linf) shows as full brightness: mid-grey is
"unchanged", lighter and darker pixels moved up and down. Small images are enlarged (nearest
neighbour, so pixels stay pixels) to at least ``min_height``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def comparison(original: bytes, protected: bytes, delta: float, min_height: int = 224, gap: int = 8) -> bytes:
    """A PNG: ``original | protected | difference x (0.5 / delta)``, each captioned."""
    a, b = _rgb(original), _rgb(protected)
    if a.shape != b.shape:
        raise ValueError(f"the images differ in size: {a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]}")
    diff = np.clip(0.5 + (b - a) * (0.5 / max(delta, 1e-12)), 0.0, 1.0)
    scale = max(1, -(-min_height // a.shape[0]))
    panels = [Image.fromarray(np.round(p * 255).astype(np.uint8), "RGB").resize(
        (a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST) for p in (a, b, diff)]
    w, h, caption = panels[0].width, panels[0].height, 16
    sheet = Image.new("RGB", (3 * w + 2 * gap, h + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (panel, title) in enumerate(zip(panels, ("original", "protected", f"difference (x{0.5 / delta:.3g})"))):
        sheet.paste(panel, (k * (w + gap), caption))
        draw.text((k * (w + gap) + 2, 2), title, fill="black")
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()
