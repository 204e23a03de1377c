import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from preempt.core.images import ImageError, decode, encode_png, quantize_within_budget
from preempt.core.threat import flat_norm

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), delta=st.floats(0.005, 2.0))
def test_quantized_output_never_exceeds_delta(norm, seed, delta):
    g = torch.Generator().manual_seed(seed)
    x_orig = torch.randint(0, 256, (2, 3, 6, 6), generator=g).float() / 255
    d = torch.rand(x_orig.shape, generator=g) * 2 - 1
    d = d / flat_norm(d, norm).view(-1, 1, 1, 1) * delta  # exactly on the budget's boundary
    x_rob = (x_orig + d).clamp(0, 1)
    q = quantize_within_budget(x_rob, x_orig, norm, delta)
    assert torch.equal(torch.round(q * 255), q * 255) or torch.allclose(torch.round(q * 255), q * 255, atol=1e-4)
    assert (flat_norm(q - x_orig, norm) <= delta + 1e-6).all()
    assert q.min() >= 0 and q.max() <= 1


def _png(arr, mode):
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_png_roundtrip_keeps_alpha_and_pixels():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    img = decode(_png(rgba, "RGBA"))
    assert img.pixels.shape == (3, 5, 7) and img.alpha is not None
    out = Image.open(io.BytesIO(encode_png(img.pixels, img.alpha)))
    assert out.mode == "RGBA" and np.array_equal(np.array(out), rgba)


def test_grayscale_png_is_one_channel():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    img = decode(_png(gray, "L"))
    assert img.pixels.shape == (1, 3, 4)
    assert Image.open(io.BytesIO(encode_png(img.pixels))).mode == "L"


def test_exif_orientation_is_applied():
    arr = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif.tobytes())
    assert decode(buf.getvalue()).size == (4, 2)  # displayed as 2 wide, 4 high


@pytest.mark.parametrize("data,match", [
    (b"hello world", "not an image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image"),
])
def test_bad_inputs_raise_image_error(data, match):
    with pytest.raises(ImageError, match=match):
        decode(data)


def test_truncated_png_raises_image_error():
    data = _png(np.zeros((64, 64), dtype=np.uint8) + 7, "L")
    with pytest.raises(ImageError):
        decode(data[: len(data) // 2])


def test_too_many_pixels_refused_before_decoding():
    data = _png(np.zeros((100, 100), dtype=np.uint8), "L")
    with pytest.raises(ImageError, match="pixels"):
        decode(data, max_pixels=5000)


def test_gif_is_unsupported():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(buf, format="GIF")
    with pytest.raises(ImageError, match="unsupported"):
        decode(buf.getvalue())


def test_the_budget_of_an_unchanged_image_is_valid_json():
    import json

    from preempt.core.images import budget_used

    x = torch.zeros(1, 8, 8)
    used = budget_used(x, x)
    assert used["psnr"] is None and used["linf"] == 0.0
    json.dumps(used, allow_nan=False)  # Infinity would not be JSON


def test_ssim_is_one_for_the_same_image_and_falls_as_the_change_grows():
    from preempt.core.images import budget_used

    x = decode(sorted((ROOT / "examples" / "fashion-mnist").glob("*.png"))[0].read_bytes()).pixels
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g).sign()
    values = [budget_used((x + s * noise).clamp(0, 1), x)["ssim"] for s in (0.0, 0.02, 0.05, 0.1)]
    assert values[0] == 1.0
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert 0 < values[-1] < 0.99
