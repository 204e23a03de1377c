"""What platforms do to images (core/transforms.py, transformspec.py): the specs, the differentiable stand-in
against the real codec, and protection that survives re-encoding."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from preempt.core.attacks import pgd
from preempt.core.images import decode, encode_png
from preempt.core.models import load_classifier
from preempt.core.protect import protect_images
from preempt.core.threat import ThreatModel
from preempt.core.transforms import Transform, Transformed, enlarge
from preempt.transformspec import SpecError, check_points, normalize_spec, parse_spec

PHOTO = "examples/photos/chelsea.jpg"


def test_specs_parse_canonically_and_bad_ones_say_why_in_one_line():
    assert normalize_spec(" JPEG:75 ") == "jpeg:75"
    assert normalize_spec("resize:0.50-1+jpeg:75-95") == "resize:0.5-1+jpeg:75-95"
    assert parse_spec("none") == ()
    for bad, words in (("jpeg", "needs a value"), ("jpeg:0", "out of range"), ("jpeg:75.5", "not a JPEG quality"),
                       ("blur:2", "unknown transform"), ("jpeg:95-75", "runs backwards"), ("", "empty"),
                       ("resize:9", "out of range"), ("jpeg:75+jpeg:80+jpeg:85+jpeg:90+jpeg:95", "at most"),
                       ("resize:4+resize:2", "enlarge the image 8 times")):
        with pytest.raises(SpecError, match=words) as e:
            parse_spec(bad)
        assert "\n" not in str(e.value)


def test_a_check_runs_at_the_ends_and_the_middle_of_each_range():
    assert [Transform(p).spec for p in check_points(parse_spec("jpeg:75-95"))] == ["jpeg:75", "jpeg:85", "jpeg:95"]
    points = [t.spec for t in Transform("resize:0.5-1+jpeg:80").points()]
    assert points == ["resize:0.5+jpeg:80", "resize:0.75+jpeg:80", "resize:1+jpeg:80"]
    assert [t.spec for t in Transform("jpeg:90").points()] == ["jpeg:90"]


def _pillow_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """The platform's re-encoding written out with Pillow alone (not through core/transforms.py)."""
    out = []
    for img in x:
        a = np.round(img.numpy() * 255).astype(np.uint8)
        pil = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=quality)
        r = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).astype(np.float32) / 255
        out.append(torch.from_numpy(r[None] if r.ndim == 2 else r.transpose(2, 0, 1).copy()))
    return torch.stack(out)


@pytest.mark.parametrize("quality", [75, 85, 95])
def test_the_real_codec_is_pillows_and_the_stand_in_stays_close_to_it(fmnist_test, quality):
    """Fashion-MNIST (grayscale) and a colour photo: the forward pass is exactly Pillow's JPEG; the
    differentiable stand-in that gives the gradient is within a bounded error of it."""
    photo = decode(open(PHOTO, "rb").read()).pixels[None]
    for x, mean_bound in ((fmnist_test[0][:64], 0.004), (photo, 0.005)):
        t = Transform(f"jpeg:{quality}")
        real = t.real(x)
        assert torch.equal(real, _pillow_jpeg(x, quality))
        xg = x.clone().requires_grad_(True)
        assert torch.equal(t(xg).detach(), real)  # straight through: the real output, forward
        err = (t.approx(x) - real).abs()
        assert float(err.mean()) <= mean_bound, float(err.mean())
        assert float(err.max()) <= 0.12
        assert float(err.mean()) < float((real - x).abs().mean())  # closer to the codec than doing nothing


@pytest.mark.parametrize("scale", [0.5, 0.75])
def test_resizing_matches_pillows_bicubic_within_a_level(fmnist_test, scale):
    x = enlarge(fmnist_test[0][:32], 4)
    assert x.shape[-2:] == (112, 112) and torch.equal(x, torch.round(x * 255) / 255)
    t = Transform(f"resize:{scale}")
    real = t.real(x)
    assert real.shape[-1] == round(112 * scale)
    err = (t.approx(x) - real).abs()
    assert float(err.mean()) <= 0.002 and float(err.max()) <= 0.02


def test_gradients_through_the_stand_in_attack_the_real_codec(fmnist_test):
    """One signed-gradient step taken through ``jpeg:75`` raises the loss the classifier has on the real
    codec's output, on average: the gradient is useful to an adaptive attacker and to the robustifier."""
    model = load_classifier("fmnist-linf-ours-12ep").model
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    judged = Transformed(model, Transform("jpeg:75"))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(judged(xg), y), xg)
    assert float(grad.abs().sum()) > 0
    with torch.no_grad():
        before = F.cross_entropy(judged(x), y, reduction="none")
        after = F.cross_entropy(judged((x + 0.03 * grad.sign()).clamp(0, 1)), y, reduction="none")
    assert float((after - before).mean()) > 0


def test_protection_verified_under_jpeg_survives_pillow_at_any_quality_of_the_range(fmnist_test):
    """``survive="jpeg:75-95"``: every output stays inside delta with its label; every image the report calls
    verified stays classified right when the man in the middle attacks it and Pillow then re-encodes it at
    75, 80, 85, 90 or 95 (80 and 90 were never checked), by a fresh adaptive PGD-20 x 3 through the codec and
    by a PGD-20 x 3 that ignores the codec. The same attacks break originals, and more of them."""
    model = load_classifier("fmnist-linf-ours-12ep").model
    x, y = fmnist_test[0][:12], fmnist_test[1][:12]
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    out = protect_images(model, [decode(encode_png(xi)) for xi in x], threat, survive=Transform("jpeg:75-95"))
    xr = torch.stack([r.pixels for r in out])
    for r in out:
        assert r.report["linf"] <= threat.delta + 1e-6 and r.report["label_kept"]
        assert r.report["survive"] == "jpeg:75-95"
        assert r.report["verified"]["after"] == ["jpeg:75", "jpeg:85", "jpeg:95"]
    verified = torch.tensor([r.report["verified"]["robust"] for r in out])
    labels = torch.tensor([r.report["label"] for r in out])
    assert int(verified.sum()) >= 6, [r.report for r in out]

    def broken(images, quality):
        judged = Transformed(model, Transform(f"jpeg:{quality}"))
        torch.manual_seed(quality)
        adaptive = pgd(judged, images, labels, threat.geometry, threat.epsilon, restarts=3)
        blind = pgd(model, images, labels, threat.geometry, threat.epsilon, restarts=3)
        with torch.no_grad():
            return ((model(_pillow_jpeg(adaptive, quality)).argmax(1) != labels)
                    | (model(_pillow_jpeg(blind, quality)).argmax(1) != labels))

    originals_broken = protected_broken = 0
    for quality in (75, 80, 85, 90, 95):
        hit = broken(xr, quality)
        assert not (hit & verified).any(), (quality, hit, verified)
        protected_broken += int(hit.sum())
        originals_broken += int(broken(x, quality).sum())
    assert originals_broken > protected_broken


def test_survive_optimising_only_rejected_images_first_robustifies_as_without_it(fmnist_test):
    """``survive_optimise="rejected"``: the first try is the plain robustification (each image the check through
    JPEG 75 passes first time is the very file written without ``survive``, pixel for pixel); only images that
    check rejects go on through the codec. Every output keeps delta and its label, and every image called verified
    withstands a fresh adaptive PGD-20 x 3 through Pillow's JPEG 75 and one that ignores the codec."""
    model = load_classifier("fmnist-linf-ours-12ep").model
    x = fmnist_test[0][20:30]
    threat = ThreatModel("linf", 0.1)
    images = [decode(encode_png(xi)) for xi in x]
    torch.manual_seed(0)
    plain = protect_images(model, images, threat, strength="high")
    torch.manual_seed(0)
    late = protect_images(model, images, threat, strength="high", survive=Transform("jpeg:75"),
                          survive_optimise="rejected")
    first_try = [i for i, r in enumerate(late) if not r.report["continued"]]
    assert first_try, [r.report for r in late]
    for i in first_try:
        assert torch.equal(late[i].pixels, plain[i].pixels), i
        assert late[i].report["passes"] == plain[i].report["passes"]
    for r in late:
        assert r.report["linf"] <= threat.delta + 1e-6 and r.report["label_kept"]
        assert r.report["verified"]["after"] == ["jpeg:75"]
    verified = torch.tensor([r.report["verified"]["robust"] for r in late])
    labels = torch.tensor([r.report["label"] for r in late])
    xr = torch.stack([r.pixels for r in late])
    torch.manual_seed(75)
    adaptive = pgd(Transformed(model, Transform("jpeg:75")), xr, labels, threat.geometry, threat.epsilon, restarts=3)
    blind = pgd(model, xr, labels, threat.geometry, threat.epsilon, restarts=3)
    with torch.no_grad():
        hit = ((model(_pillow_jpeg(adaptive, 75)).argmax(1) != labels)
               | (model(_pillow_jpeg(blind, 75)).argmax(1) != labels))
    assert int(verified.sum()) >= 5 and not (hit & verified).any(), (hit, verified)
    with pytest.raises(ValueError, match="survive_optimise"):
        protect_images(model, images[:1], threat, survive=Transform("jpeg:75"), survive_optimise="later")


def test_jpeg_output_is_checked_on_the_jpeg_written(fmnist_test):
    """``output="jpeg"``: each file is a JPEG at the quality asked; the pixels reported are the JPEG's decoded;
    the pixels encoded keep delta and the label; every image the report calls verified withstands a fresh
    PGD-20 x 3 on the JPEG's own pixels (what the man in the middle intercepts)."""
    model = load_classifier("fmnist-linf-ours-12ep").model
    x = fmnist_test[0][:8]
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    out = protect_images(model, [decode(encode_png(xi)) for xi in x], threat, output="jpeg", quality=85)
    labels = torch.tensor([r.report["label"] for r in out])
    sent = torch.stack([r.pixels for r in out])
    for r in out:
        assert r.data[:3] == b"\xff\xd8\xff" and decode(r.data).pixels.equal(r.pixels)
        assert (r.report["format"], r.report["quality"]) == ("jpeg", 85)
        assert r.report["linf_before_encoding"] <= threat.delta + 1e-6 and r.report["label_kept"]
    verified = torch.tensor([r.report["verified"]["robust"] for r in out])
    assert int(verified.sum()) >= 4
    torch.manual_seed(1)
    adv = pgd(model, sent, labels, threat.geometry, threat.epsilon, restarts=3)
    with torch.no_grad():
        assert not ((model(adv).argmax(1) != labels) & verified).any()
    with pytest.raises(ValueError, match="quality"):
        protect_images(model, [decode(encode_png(x[0]))], threat, output="jpeg", quality=0)
