"""The per-image verification of the protection report (core/protect.py)."""

import pytest
import torch

from preempt.core.images import decode, encode_png
from bench.variants import RETRY_CONFIGS
from preempt.core.protect import RETRY_CONFIG, VERIFY_ATTACKS, check_margins, protect_images, verify_robust
from preempt.core.robustify import RobustifyConfig
from preempt.core.threat import ThreatModel


def test_strong_verification_is_stricter_than_pgd(adv_model, fmnist_test):
    """The default check (PGD-20, then APGD-CE and APGD-T, close calls rechecked) passes only images its PGD stage
    passes, never a misclassified one, and on a weakly trained model it rejects images the PGD-20 x 5 check would
    pass (the checks without their recheck, whose other draws would make them incomparable)."""
    x, y = fmnist_test
    x, y = x[:200], y[:200]
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    first_stage = verify_robust(adv_model, x, y, threat, attack="pgd", restarts=1, recheck_below=0.0)
    torch.manual_seed(0)
    strong = verify_robust(adv_model, x, y, threat, attack="apgd")
    torch.manual_seed(0)
    weak = verify_robust(adv_model, x, y, threat, attack="pgd", recheck_below=0.0)
    with torch.no_grad():
        correct = adv_model(x).argmax(1) == y
    assert not (strong & ~first_stage).any()
    assert not (strong & ~correct).any()
    assert not (weak & ~first_stage).any()  # 5 starts reject at least what the first one does
    assert int(weak.sum()) - int(strong.sum()) >= 2, (int(weak.sum()), int(strong.sum()))


def test_the_recheck_of_close_calls_only_takes_verdicts_away_and_needs_a_clear_second_pass(adv_model, fmnist_test):
    """``check_margins`` is the check itself (same verdicts) with, for each image it
    passes, a margin that is positive and no larger than the image's own; ``recheck_below`` runs the check once
    more (other draws) on the images passed with a margin below it, and such an image stays robust only if that
    run passes it with a margin of at least ``recheck_below``."""
    x, y = fmnist_test
    x, y = x[200:296], y[200:296]
    threat = ThreatModel("linf", 0.1)
    plain = verify_robust(adv_model, x, y, threat, recheck_below=0.0)
    robust, margin = check_margins(adv_model, x, y, threat)
    assert torch.equal(robust, plain) and 10 < int(robust.sum()) < len(y)
    with torch.no_grad():
        z = adv_model(x)
    own = z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -float("inf")).max(1).values
    assert (margin[robust] > 0).all() and (margin <= own + 1e-6).all()
    tau = float(margin[robust].median())
    rechecked = verify_robust(adv_model, x, y, threat, recheck_below=tau)
    close = plain & (margin < tau)
    again = torch.zeros_like(plain)
    r2, m2 = check_margins(adv_model, x[close], y[close], threat, seed=1)
    again[close] = r2 & (m2 >= tau)
    assert torch.equal(rechecked, plain & (~close | again))
    assert int(close.sum()) >= 5 and not (rechecked & ~plain).any()


def test_the_check_depends_on_its_images_and_seed_only_and_leaves_the_generator_as_it_was(adv_model, fmnist_test):
    """The check seeds its own draws: the same images and ``seed`` give the same verdicts and margins whatever the
    caller drew before, another ``seed`` other draws, and torch's generator is left as the check found it (a
    caller's later draws, e.g. the next robustification of a retry, do not depend on whether a check ran)."""
    x, y = fmnist_test
    x, y = x[200:224], y[200:224]
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    robust, margin = check_margins(adv_model, x, y, threat)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.rand(7)
    again, again_margin = check_margins(adv_model, x, y, threat)
    assert torch.equal(robust, again) and torch.equal(margin, again_margin)
    _, other_margin = check_margins(adv_model, x, y, threat, seed=1)
    assert not torch.equal(margin[robust], other_margin[robust])


def test_the_decided_check_runs_the_long_attacks_only_on_close_images(adv_model, fmnist_test):
    """With ``decide_above`` the check's short APGD-T toward every class runs first; its 100-iteration runs toward
    the three most likely classes then run only on the images whose margin is under the floor. A floor of 0
    decides every image the screen passes; a floor never reached sends all of them on: it only takes verdicts away
    from the screen's, leaves the decided images' verdicts and margins as the screen's, and costs more passes."""
    x, y = fmnist_test
    x, y = x[300:348], y[300:348]
    threat = ThreatModel("linf", 0.1)
    passes = []

    class Counted(torch.nn.Module):
        def forward(self, xs):
            passes[-1] += xs.shape[0]
            return adv_model(xs)

    counted = Counted()
    runs = {}

    def run(floor):
        passes.append(0)
        torch.manual_seed(5)
        runs[floor] = check_margins(counted, x, y, threat, decide_above=floor)

    run(0.0)
    screen, screen_margin = runs[0.0]
    assert 5 < int(screen.sum()) < len(y)
    middle = float(screen_margin[screen].median())  # decides about half the images the screen passes
    run(middle)
    run(1e9)
    for floor in (middle, 1e9):
        robust, margin = runs[floor]
        assert not (robust & ~screen).any()  # the long runs only take verdicts away
        decided = screen & (screen_margin >= floor)
        assert torch.equal(robust[decided], screen[decided]) and torch.equal(margin[decided], screen_margin[decided])
    assert passes[0] < passes[1] < passes[2]
    with torch.no_grad():
        correct = adv_model(x).argmax(1) == y
    assert not (runs[middle][0] & ~correct).any()


def test_unknown_verification_attack_is_refused(adv_model, fmnist_test):
    x, y = fmnist_test
    with pytest.raises(ValueError, match="verify must be one of"):
        verify_robust(adv_model, x[:2], y[:2], ThreatModel("linf", 0.1), attack="fgsm")
    assert set(VERIFY_ATTACKS) == {"pgd", "apgd"}


def test_retry_only_touches_rejected_images_and_only_keeps_what_passes(adv_model, fmnist_test):
    """``retry=True`` robustifies again exactly the images the check rejected; an image the first try
    protected keeps its PNG, every output stays inside delta with its label, and the number of
    verified images can only grow."""
    x, _ = fmnist_test
    images = [decode(encode_png(x[i])) for i in range(48)]
    threat = ThreatModel("linf", 0.1)
    cfg = RobustifyConfig(iterations=8)
    torch.manual_seed(0)
    first = protect_images(adv_model, images, threat, cfg)
    torch.manual_seed(0)
    again = protect_images(adv_model, images, threat, cfg, retry=True)
    rejected = [i for i, r in enumerate(first) if r.report["label_kept"] and not r.report["verified"]["robust"]]
    assert rejected, "the weak fixture model should leave images the check rejects"
    assert [i for i, r in enumerate(again) if r.report["retried"]] == rejected
    for i, (a, b) in enumerate(zip(first, again)):
        assert b.report["linf"] <= threat.delta + 1e-6
        assert b.report["label"] == a.report["label"]
        if i not in rejected:
            assert b.data == a.data and b.report["passes"] == a.report["passes"]
            assert b.report["verified"] == a.report["verified"]
        else:
            assert b.report["passes"] > a.report["passes"]
            assert b.report["label_kept"]
            if not b.report["verified"]["robust"]:
                assert b.data == a.data  # a failed second try does not replace the first output
    assert sum(r.report["verified"]["robust"] for r in again) >= sum(r.report["verified"]["robust"] for r in first)


def test_images_cut_short_that_the_check_rejects_run_on_from_where_they_stopped(adv_model, fmnist_test):
    """Early stopping that trusts too weak an attack (here: any loss under 3 after one iteration) leaves images
    the check rejects; those run on, warm, for the rest of the loop, and a continued file replaces the first only
    if it passes: every file stays inside delta with its label, some continued files pass the check, and an image
    the first try protected is not touched."""
    x, _ = fmnist_test
    images = [decode(encode_png(x[i])) for i in range(32)]
    threat = ThreatModel("linf", 0.1)
    cfg = RobustifyConfig(iterations=30, stop_patience=1, stop_loss=3.0)
    torch.manual_seed(0)
    out = protect_images(adv_model, images, threat, cfg, strength="high")
    continued = [r.report for r in out if r.report["continued"]]
    assert continued, "the weak fixture model should leave images the check rejects"
    first_try = 2 * 21 + 1  # one iteration, the confirming attack, the label
    for r in out:
        rep = r.report
        assert rep["linf"] <= threat.delta + 1e-6 and rep["label_kept"]
        if rep["continued"]:
            assert rep["passes"] >= first_try + (cfg.iterations - 2) * 21  # it ran on from iteration 2, no stopping
        elif rep["iterations_run"] == 1:  # stopped after one iteration and not continued: it passed the check
            assert rep["verified"]["robust"] and rep["passes"] <= first_try
    assert any(rep["verified"]["robust"] for rep in continued)
    assert any(rep["verified"]["robust"] and rep["iterations_run"] == cfg.iterations for rep in continued)


def test_retry_config_sets_the_second_tries_cost(adv_model, fmnist_test):
    """A cheaper second try (``retry_config``) runs on the same rejected images for its own number of
    passes: the full loop's T + 1 passes per outer iteration times its number of starts (1 for
    ``paper-full``, 3 for ``targeted3-max-full``, the default ``RETRY_CONFIG``)."""
    x, _ = fmnist_test
    images = [decode(encode_png(x[i])) for i in range(12)]
    threat = ThreatModel("linf", 0.1)
    cfg = RobustifyConfig(iterations=3)
    assert RETRY_CONFIGS["targeted3-max-full"] == RETRY_CONFIG and RETRY_CONFIGS["targeted9-max-full"]["samples"] == 9
    torch.manual_seed(0)
    first = protect_images(adv_model, images, threat, cfg, verify_attack="pgd")
    rejected = [i for i, r in enumerate(first) if r.report["label_kept"] and not r.report["verified"]["robust"]]
    assert rejected, "the weak fixture model should leave images the check rejects"
    for name, starts in (("paper-full", 1), ("targeted3-max-full", 3)):
        torch.manual_seed(0)
        out = protect_images(adv_model, images, threat, cfg, verify_attack="pgd", retry=True,
                             retry_config=RETRY_CONFIGS[name])
        assert [i for i, r in enumerate(out) if r.report["retried"]] == rejected, name
        for i, (a, b) in enumerate(zip(first, out)):
            added = starts * cfg.iterations * (cfg.steps + 1) if i in rejected else 0
            assert b.report["passes"] - a.report["passes"] == added, (name, i)
            assert b.report["linf"] <= threat.delta + 1e-6


def test_retry_reports_progress_that_stays_within_the_total_and_can_stop_it(adv_model, fmnist_test):
    """During the retry the callback sees the first try's end (a bar stays full, never past it), and
    a callback that raises (a cancelled job) stops the retry instead of being ignored by it."""
    x, _ = fmnist_test
    images = [decode(encode_png(x[i])) for i in range(48)]
    threat = ThreatModel("linf", 0.1)
    cfg = RobustifyConfig(iterations=8)
    calls = []
    torch.manual_seed(0)
    out = protect_images(adv_model, images, threat, cfg, retry=True, progress=lambda i, n, loss: calls.append((i, n)))
    assert any(r.report["retried"] for r in out)
    assert all(n == 8 and 1 <= i <= 8 for i, n in calls)
    first_end = calls.index((8, 8))
    assert len(calls) > first_end + 1 and set(calls[first_end:]) == {(8, 8)}  # the retry called it, held at the end

    class Cancelled(Exception):
        pass

    def cancel_after_first_try(i, n, loss, seen=[]):
        if seen:
            raise Cancelled()
        if i == n:
            seen.append(True)

    torch.manual_seed(0)
    with pytest.raises(Cancelled):
        protect_images(adv_model, images, threat, cfg, retry=True, progress=cancel_after_first_try)


def _images(x):
    from preempt.core.images import DecodedImage

    return [DecodedImage(pixels=xi, alpha=None, format="png") for xi in x]


def test_lower_strength_keeps_less_of_the_same_change_and_the_same_guarantee(adv_model, fmnist_test):
    """On real test images: from the same robustification, ``medium`` and ``low`` keep a scale of the change
    (pixel by pixel no larger), every output stays inside delta, and every verified image is still verified by
    the same check on the written file, with its label."""
    x, _ = fmnist_test
    x = x[:24]
    threat = ThreatModel("linf", 0.1)
    runs = {}
    for strength in ("high", "medium", "low"):
        torch.manual_seed(0)
        runs[strength] = protect_images(adv_model, _images(x), threat, RobustifyConfig(iterations=20, steps=5),
                                        verify_attack="pgd", strength=strength)
    high = runs["high"]
    for strength in ("medium", "low"):
        for orig, h, r in zip(x, high, runs[strength]):
            assert (r.pixels - orig).abs().max() <= 0.1 + 1e-6
            assert ((r.pixels - orig).abs() <= (h.pixels - orig).abs() + 1e-6).all()
            assert r.report["label"] == h.report["label"] and r.report["label_kept"] >= h.report["label_kept"]
            assert 0.0 <= r.report["scale"] <= 1.0 and r.report["strength"] == strength
            if r.report["scale"] < 1:
                assert r.report["verified"]["robust"] and decode(r.data).pixels.equal(r.pixels)
        # a smaller change that the whole check rejects falls back to the whole change, checked again (its
        # random starts differ from high's run, so a marginal image may be judged differently, rarely)
        verified = sum(r.report["verified"]["robust"] for r in runs[strength])
        assert verified >= sum(h.report["verified"]["robust"] for h in high) - 1
        scales = [r.report["scale"] for r in runs[strength]]
        assert min(scales) < 1  # it found smaller changes on this sample
    mean_low = sum(r.report["scale"] for r in runs["low"]) / len(x)
    mean_medium = sum(r.report["scale"] for r in runs["medium"]) / len(x)
    assert mean_low <= mean_medium  # medium keeps a step more
    assert "scale" not in high[0].report


def test_a_photo_larger_than_the_model_gets_a_smooth_change_inside_the_budget():
    """A real photograph (matplotlib's public-domain portrait, 112x96) against the shipped 28x28 model: with the
    change at the model's resolution, upsampled, it stays inside delta and keeps the label, its high-frequency
    energy (total variation of the change) is under half the per-pixel change's, and SSIM is higher."""
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        photo = img.convert("RGB").resize((96, 112), Image.BICUBIC)
    x = decode(encode_png(torch.from_numpy(__import__("numpy").asarray(photo)).permute(2, 0, 1) / 255.0, None)).pixels
    from preempt.core.models import load_classifier

    model = load_classifier("fmnist-linf-ours-12ep").model  # preprocessing: grey, resized to 28x28
    threat = ThreatModel("linf", 0.1)

    def tv(d):
        return float((d[..., 1:, :] - d[..., :-1, :]).abs().mean() + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())

    out = {}
    for size in (None, (28, 28)):
        torch.manual_seed(0)
        r = protect_images(model, _images(x[None]), threat, RobustifyConfig(iterations=10, steps=5, smooth_size=size),
                           verify_attack="pgd")[0]
        assert (r.pixels - x).abs().max() <= 0.1 + 1e-6 and r.report["label_kept"]
        out[size] = r.pixels - x, r.report["ssim"]
    assert tv(out[(28, 28)][0]) < 0.5 * tv(out[None][0]), (tv(out[(28, 28)][0]), tv(out[None][0]))
    assert out[(28, 28)][1] > out[None][1]


def test_texture_mask_gives_flat_areas_the_floor_and_edges_the_whole_budget(fmnist_test):
    """On real test images: the mask lies in [floor, 1], a pixel whose whole neighbourhood is one grey (the black
    background away from the garment) gets the floor, and the garment's outline (the strongest local contrast)
    the whole budget."""
    import torch.nn.functional as F

    from preempt.core.robustify import texture_mask

    x, _ = fmnist_test
    x = x[:16]
    m = texture_mask(x, 0.25)
    assert m.shape == (16, 1, 28, 28)
    assert float(m.min()) >= 0.25 - 1e-6 and float(m.max()) <= 1 + 1e-6
    padded = F.pad(x, (5, 5, 5, 5), mode="replicate")
    spread = F.max_pool2d(padded, 11, stride=1) + F.max_pool2d(-padded, 11, stride=1)
    flat = spread == 0
    assert int(flat.sum()) > 500
    assert torch.allclose(m[flat], torch.full_like(m[flat], 0.25))
    assert bool((m.flatten(1).max(1).values > 0.999).all())


def test_texture_masked_change_keeps_budget_label_and_check_and_changes_less(adv_model, fmnist_test):
    """On real test images, linf (tanh-RMSprop) and l2 (projected steps): the masked robustifier moves each pixel
    by at most its share of delta (so the whole change stays in the ball), and through the product's pipeline
    a shaped change is written only when the check passes it (else the whole budget, as without masking), every
    file stays inside delta with its label kept where verified, and the shaped files change the image less."""
    from preempt.core.robustify import robustify, texture_mask

    x, _ = fmnist_test
    x = x[:24]
    m = texture_mask(x, 0.25)
    for threat in (ThreatModel("linf", 0.1), ThreatModel("l2", 1.0)):
        torch.manual_seed(0)
        r = robustify(adv_model, x, threat, RobustifyConfig(iterations=10, steps=5, texture_floor=0.25))
        d = r.x_rob - x
        assert float((d.abs() - threat.delta * m).max()) <= 1e-6 if threat.norm == "linf" else True
        assert float(r.x_rob.min()) >= 0 and float(r.x_rob.max()) <= 1
        assert float(r.linf.max() if threat.norm == "linf" else r.l2.max()) <= threat.delta + 1e-5
    threat = ThreatModel("linf", 0.1)
    runs = {}
    for floor in (None, 0.25):
        torch.manual_seed(0)
        runs[floor] = protect_images(adv_model, _images(x), threat,
                                     RobustifyConfig(iterations=20, steps=5, texture_floor=floor),
                                     verify_attack="pgd", strength="high")
    for orig, r in zip(x, runs[0.25]):
        assert (r.pixels - orig).abs().max() <= 0.1 + 1e-6 and decode(r.data).pixels.equal(r.pixels)
        if r.report["texture"]:
            assert r.report["verified"]["robust"] and r.report["label_kept"]
    assert "texture" not in runs[None][0].report
    assert any(r.report["texture"] for r in runs[0.25])
    verified = [sum(r.report["verified"]["robust"] for r in runs[f]) for f in (None, 0.25)]
    assert verified[1] >= verified[0] - 1  # a rejected shaped change falls back to the whole budget
    shaped = [i for i, r in enumerate(runs[0.25]) if r.report["texture"]]
    mean_ssim = [sum(runs[f][i].report["ssim"] for i in shaped) / len(shaped) for f in (None, 0.25)]
    assert mean_ssim[1] > mean_ssim[0], mean_ssim


def test_texture_masking_on_a_photo_keeps_flat_areas_nearly_untouched():
    """A real photograph (matplotlib's public-domain portrait) against the shipped 28x28 model, its change at the
    model's resolution upsampled, with texture masking: inside delta, label kept, each pixel moved by at most its
    share of delta, so the flattest tenth of the portrait (its background) by at most about a third of delta."""
    import matplotlib.cbook
    import numpy
    from PIL import Image

    from preempt.core.models import load_classifier
    from preempt.core.robustify import texture_mask

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        photo = img.convert("RGB").resize((96, 112), Image.BICUBIC)
    x = decode(encode_png(torch.from_numpy(numpy.array(photo)).permute(2, 0, 1) / 255.0, None)).pixels
    model = load_classifier("fmnist-linf-ours-12ep").model
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    r = protect_images(model, _images(x[None]), threat,
                       RobustifyConfig(iterations=10, steps=5, smooth_size=(28, 28), texture_floor=0.25),
                       verify_attack="pgd")[0]
    d = (r.pixels - x).abs()
    assert d.max() <= 0.1 + 1e-6 and r.report["label_kept"]
    assert r.report["texture"]  # this portrait's shaped change passes the check
    m = texture_mask(x[None], 0.25)[0]
    assert float((d - 0.1 * m).max()) <= 1 / 255 + 1e-6  # its share of delta, and the 8-bit rounding
    flat = m[0] < 0.3
    assert flat.float().mean() > 0.1
    assert float(d[:, flat].max()) <= 0.03 + 1 / 255 + 1e-6
