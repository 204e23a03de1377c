"""One real image in, one protected 8-bit file (PNG, or JPEG) and its protection report out.

The pipeline the command line and the service share:

1. the decoded image ``[C, H, W]`` at its native resolution is robustified against the classifier
   *including* the platform's preprocessing (:class:`models.Preprocess`), so the robustness is of
   the transmitted file itself;
2. the result is rounded to the 8-bit grid inside the delta budget (:func:`images.quantize_within_budget`);
3. the PNG is written, decoded again, and the verification attack runs on those decoded pixels:
   the report tells what a man in the middle would face, not what a float tensor did.

The verification (``verify``): ``"apgd"`` (the default) is PGD-20 from one random start, then on the
images that survive it the gradient half of AutoAttack: APGD-CE (100 iterations, as AutoAttack) and
APGD-T toward each of the 9 runner-up classes at 25 iterations, then AutoAttack's 100 toward the three most
likely on the images whose margin (the label's logit minus the next, at the points the attacks ended on) is
still under :data:`DECIDED_MARGIN`; an image it passes with a margin below :data:`RECHECK_MARGIN` (a close call)
gets the check once more and must clear that margin there. Robustification
defeats untargeted PGD more easily than targeted attacks (docs/science.md), so the PGD check alone
would call images robust that AutoAttack still breaks. ``"pgd"`` is the PGD-20 x 5 check alone
(cheaper, weaker).

An image that early stopping cut short (its own attack's loss below the stopping loss) but that the check
rejects runs on from the point where it stopped, for the rest of the outer iterations without early stopping;
the new file replaces the first only if it passes the check (report: ``"continued"``). The paper's full loop
makes most of these images robust; the ones that stopped on a plateau of high loss have no robust point a
longer search finds (docs/science.md, finding 2), so they are not continued.

``retry=True`` sends the images the check rejects (label kept, not verified) back once, robustified
again from the original with :data:`RETRY_CONFIG` (every outer iteration, no early stopping, with a
targeted inner attack toward each of the 3 runner-up classes, the worst start driving the update); a
new output replaces the first only if it passes the same check. It costs passes only on the rejected
images, 3 x (T + 1) per outer iteration (docs/science.md measures it).

What the platform does to the file before classifying it (``survive``, a :class:`transforms.Transform`:
JPEG re-encoding, resizing) enters both the robustification (through the codec, an expectation over its
range) and the check (:func:`verify_through`: the same attacks through the real codec at the ends and the
middle of each range). A client that must send JPEG (``output="jpeg"``) gets the protection optimised for
and checked on the JPEG it sends (docs/transforms.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch

from .attacks import pgd
from .autoattack import apgd_single, apgd_t_margins, logit_margin, margin_of
from .images import DecodedImage, budget_used, decode, encode_jpeg, encode_png, quantize_within_budget
from .robustify import Progress, RobustifyConfig, robustify
from .threat import ThreatModel
from .transforms import Transform, Transformed

VERIFY_ATTACKS = {
    "pgd": "pgd-20x5",  # PGD-20, step eps/4, 5 random restarts
    "apgd": "pgd-20+apgd-ce+apgd-t",  # PGD-20 (1 start), then APGD-CE and APGD-T (9 targets; DECIDED_MARGIN)
}
# PGD's random starts in each check: in "apgd" PGD only filters the easy cases for the APGD stages (4 more starts
# rejected no image those stages pass, on 1000 protected files: docs/performance.md).
PGD_RESTARTS = {"pgd": 5, "apgd": 1}
# APGD-T's iterations toward the runner-up classes by rank (the most likely wrong class first): AutoAttack's 100
# toward the three that AutoAttack's breaks concentrate on, 25 toward the other six. In two studies of 1000
# protected files each (bench.check; the second on the very files of the pipeline's 1000-image run) it called
# robust exactly as few files that full AutoAttack breaks as 100 toward all nine did (4 of 914, 4 of 918: the
# files only FAB-T or Square break), at 56% of the passes; 100 toward two let a fifth through on the second
# (docs/performance.md, "Protect-and-verify").
APGD_T_STEPS = (100, 100, 100) + (25,) * 6
# The decided check (check_margins' decide_above): APGD-T at 25 iterations toward every runner-up class first, then
# AutoAttack's 100 toward the three most likely only on the images whose lowest margin after that is under
# DECIDED_MARGIN. On the 1000 files of two models' pipeline runs, the product's check with 0.5 called robust as few
# files that full AutoAttack breaks as the tiered check on every file (1 of 836 against 1 of 837; 0 of 776 against
# 1 of 779) for 20-25% fewer check passes (427 against 572; 450 against 566); below 0.5 one more broken file passed
# on the l2 model (bench.decide, docs/performance.md). None or inf: the tiered APGD_T_STEPS on every image.
APGD_T_SCREEN = (25,) * 9
APGD_T_CLOSE = (100, 100, 100)
DECIDED_MARGIN: Optional[float] = 0.5
DEFAULT_VERIFY = "apgd"
# The margin (the label's logit minus the next, at the points the check's attacks end on) below which an image the
# check passes gets the check once more from other random draws, and must clear it there (verify_robust's
# recheck_below; 0: never). The files full AutoAttack breaks among those the check passes end within 0.03 of zero on
# every draw; at 0.02 the trust error on 1000 files went from 0.77% to 0.26% (l2-adv) and 0.47% to 0.36% (default
# linf) for about 20 more passes per file (docs/performance.md, "The recheck of close calls").
RECHECK_MARGIN = 0.02
# The second try: the full loop (no early stopping: the first try's stop just below ln 2 is what AutoAttack
# overturns) with targeted inner attacks toward the 3 runner-up classes, the worst start driving the update:
# 3 x (T + 1) passes per outer iteration. On 200 images of the default models it verified as many rejected
# images as 9 targeted starts at 40-55% of their passes; the untargeted full loop bought nothing (docs/science.md).
RETRY_CONFIG = {"inner_loss": "targeted", "samples": 3, "aggregate": "max", "stop_patience": 0, "plateau_window": 0}


# The scales of the change x_rob - x that smallest_scale() tries, smallest first (1: the whole change).
SHRINK_SCALES = (0.0, 0.25, 0.5, 0.75)
STRENGTHS = ("high", "medium", "low")


OUTPUT_FORMATS = ("png", "jpeg")
# When the robustifier optimises through ``survive``: on every try ("always"), or only on the tries after the check
# through it rejected the first, plain one ("rejected"; the scale search and the check go through it either way).
SURVIVE_OPTIMISE = ("always", "rejected")


@dataclass
class ProtectResult:
    data: bytes  # the file written: PNG, or JPEG with output="jpeg"
    pixels: torch.Tensor  # the decoded output [C, H, W]
    report: dict


@dataclass
class _Written:
    """A batch's files as written and checked: the bytes, the pixels encoded, the pixels decoded again, whether
    each keeps its label and (with a check) passes it."""

    data: list
    sent: torch.Tensor
    decoded: torch.Tensor
    kept: torch.Tensor
    robust: Optional[torch.Tensor]

    def take(self, rows: List[int], other: "_Written", only: Optional[torch.Tensor] = None) -> None:
        """Replace the images ``rows`` by ``other``'s (in order), those where ``only`` is true if given."""
        for j, i in enumerate(rows):
            if only is None or bool(only[j]):
                self.data[i] = other.data[j]
                self.sent[i], self.decoded[i], self.kept[i] = other.sent[j], other.decoded[j], other.kept[j]
                if self.robust is not None:
                    self.robust[i] = other.robust[j]


def batches_by_shape(shapes: Sequence[tuple], batch_size: int) -> List[List[int]]:
    """Indices of images grouped by their pixel shape ``(C, H, W)`` (in order of first appearance), each
    group cut into batches of at most ``batch_size``: what :func:`protect_images` can take at once."""
    groups: dict = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


def check_margins(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, threat: ThreatModel,
                  attack: str = DEFAULT_VERIFY, restarts: Optional[int] = None, seed: int = 0,
                  decide_above: Optional[float] = None) -> tuple:
    """One run of the check ``attack`` (see :func:`verify_robust`): ``(robust, margin)``, where ``margin`` is, for
    each image the check leaves robust, the lowest margin (the label's logit minus the next) that any of its attacks
    ended on: how close it came to calling the image broken. ``seed`` seeds every stage's random draws (the PGD
    starts and the APGD stages), and the check leaves torch's generator as it found it: its verdicts are a function
    of the images and ``seed`` alone, and a caller's later draws do not depend on whether it ran.

    ``decide_above`` (default :data:`DECIDED_MARGIN`; ``None`` there or ``inf``: the tiered APGD-T of
    :data:`APGD_T_STEPS` on every image): APGD-T runs :data:`APGD_T_SCREEN` toward every runner-up class, then :data:`APGD_T_CLOSE` only on
    the images whose lowest margin so far is under ``decide_above``; an image above it is decided."""
    if attack not in VERIFY_ATTACKS:
        raise ValueError(f"verify must be one of {sorted(VERIFY_ATTACKS)}, got {attack!r}")
    restarts = PGD_RESTARTS[attack] if restarts is None else restarts
    decide_above = DECIDED_MARGIN if decide_above is None else decide_above
    with torch.no_grad():
        logits = model(x)
    classes = logits.shape[1]
    margin = logit_margin(logits, label)
    robust = logits.argmax(1) == label

    def pgd_stage(xs, y):
        m = margin_of(model, pgd(model, xs, y, threat.geometry, threat.epsilon, steps=20, restarts=restarts), y)
        return m > 0, m

    def ce_stage(xs, y):
        torch.random.manual_seed(seed)  # as AutoAttack's APGD-CE seeds itself
        fooled, m = apgd_single(model, xs, y, threat.norm, threat.epsilon, classes, 100, seed=seed)
        return ~fooled, m

    def apgd_t(steps):
        return lambda xs, y: apgd_t_margins(model, xs, y, threat.norm, threat.epsilon, classes, steps, seed)

    stages = [(pgd_stage, None)]  # (stage, the margin under which an image left needs it: None, every image)
    if attack == "apgd":
        stages.append((ce_stage, None))
        if decide_above is None or decide_above == float("inf"):
            stages.append((apgd_t(APGD_T_STEPS), None))
        else:
            stages += [(apgd_t(APGD_T_SCREEN), None), (apgd_t(APGD_T_CLOSE), decide_above)]
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.random.manual_seed(seed)
        for stage, below in stages:
            idx = (robust if below is None else robust & (margin < below)).nonzero().flatten()
            if idx.numel() == 0:
                continue
            robust[idx], m = stage(x[idx], label[idx])
            margin[idx] = torch.minimum(margin[idx], m)
    return robust, margin


def verify_robust(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, threat: ThreatModel,
                  attack: str = DEFAULT_VERIFY, restarts: Optional[int] = None,
                  recheck_below: Optional[float] = None, decide_above: Optional[float] = None) -> torch.Tensor:
    """Grey-box check ``attack`` (a key of :data:`VERIFY_ATTACKS`) on a batch: ``True`` where the label survives.

    An image counts as robust only if it is classified ``label`` and no attack of the check finds a
    point inside ``B_eps`` that is not; each stage runs only on the images the previous ones left.

    ``recheck_below`` (default :data:`RECHECK_MARGIN`): an image the check passes although one of its attacks ended
    with a margin below this (a close call) gets the whole check once more, from other random draws, and stays
    robust only if that run passes it with a margin of at least ``recheck_below``. The files AutoAttack breaks
    among those the check passes are such close calls, coin flips for any one draw (docs/performance.md). 0 turns
    it off. ``decide_above``: :func:`check_margins`' (default :data:`DECIDED_MARGIN`).
    """
    recheck_below = RECHECK_MARGIN if recheck_below is None else recheck_below
    robust, margin = check_margins(model, x, label, threat, attack, restarts, seed=0, decide_above=decide_above)
    close = (robust & (margin < recheck_below)).nonzero().flatten()
    if close.numel():
        again, again_margin = check_margins(model, x[close], label[close], threat, attack, restarts, seed=1,
                                            decide_above=decide_above)
        robust[close] = again & (again_margin >= recheck_below)
    return robust


def verify_through(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, threat: ThreatModel,
                   attack: str = DEFAULT_VERIFY, survive: Optional[Transform] = None,
                   restarts: Optional[int] = None) -> torch.Tensor:
    """:func:`verify_robust` on the file as sent and, with ``survive``, on the file the platform transforms: at
    each fixed point of the transform (the ends and the middle of each range) the same check attacks
    ``model(T(x))`` with the real codec in the forward pass, on the images still robust."""
    robust = verify_robust(model, x, label, threat, attack, restarts)
    for point in ([] if survive is None else survive.points()):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            break
        robust[idx] = verify_robust(Transformed(model, point), x[idx], label[idx], threat, attack, restarts)
    return robust


def protect_images(model: torch.nn.Module, images: List[DecodedImage], threat: ThreatModel,
                   config: Optional[RobustifyConfig] = None, device: str = "cpu", verify: bool = True,
                   progress: Optional[Progress] = None, judge: Optional[torch.nn.Module] = None,
                   verify_attack: str = DEFAULT_VERIFY, retry: bool = False,
                   retry_config: Optional[dict] = None, strength: str = "high",
                   survive: Optional[Transform] = None, output: str = "png",
                   quality: int = 90, survive_optimise: str = "always") -> List[ProtectResult]:
    """Robustify decoded images of one shape as one batch; return the file written (PNG bytes) and a report for each.

    ``judge`` (default: ``model``) is the classifier the label, the label check and the
    verification attack use: the fp32 model when ``model`` runs in reduced precision. ``retry``:
    robustify the images the check rejects once more with :data:`RETRY_CONFIG` (needs ``verify``;
    not for smoothed classifiers); each report then says ``"retried"`` and counts both tries' passes.
    ``retry_config``: the second try's :class:`RobustifyConfig` fields over ``config`` (default
    :data:`RETRY_CONFIG`).

    ``config.texture_floor`` (texture masking) with ``verify``: an image whose shaped change the check rejects is
    robustified again with the whole budget everywhere, so masking never costs an image its verification; each
    report says ``"texture"``: whether the change written is the shaped one.

    ``strength`` (with ``verify``): ``"high"`` writes the robustified image; ``"medium"`` and ``"low"`` write
    the smallest scale of its change that passes the same check (:func:`smallest_scale`); each report says
    the ``scale`` kept.

    ``survive`` (a :class:`~transforms.Transform`): the platform re-encodes or resizes the file before its
    classifier; the robustifier optimises through it (``robustify(transform=...)``) and the check passes only
    if the file is robust both as sent and after the transform at each of its fixed points (real codec).
    ``survive_optimise="rejected"``: the first try robustifies without the transform (no codec in its passes); only
    the tries after the check through it rejects an image (continuation, retry) optimise through it.

    ``output="jpeg"`` (a client that can only send JPEG): the file written is a JPEG at ``quality``; the
    robustifier optimises the pixels the JPEG will hold (``robustify(sent_as=...)``), every check runs on the
    JPEG decoded again, and each report says ``"format"``, ``"quality"`` and ``"linf_before_encoding"`` (the
    budget holds for the pixels encoded; the JPEG's own loss comes on top, as it would without Preempt).
    Transparency is dropped (JPEG has none).
    """
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {STRENGTHS}, got {strength!r}")
    if survive_optimise not in SURVIVE_OPTIMISE:
        raise ValueError(f"survive_optimise must be one of {SURVIVE_OPTIMISE}, got {survive_optimise!r}")
    if output not in OUTPUT_FORMATS:
        raise ValueError(f"output must be one of {OUTPUT_FORMATS}, got {output!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be from 1 to 100, got {quality}")
    sent_as = Transform(f"jpeg:{int(quality)}") if output == "jpeg" else None
    judge = judge if judge is not None else model
    shapes = {tuple(img.pixels.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(f"protect_images needs images of one shape, got {sorted(shapes)}")
    x_orig = torch.stack([img.pixels for img in images]).to(device)
    y = None  # a smoothed classifier's label is the smoothed prediction (robustify computes it)
    if config is None or config.sigma is None:
        with torch.no_grad():
            y = judge(x_orig).argmax(1)
    def write_and_check(x_rob, x_o, alphas, label) -> _Written:
        """8-bit files of ``x_rob``, decoded again; whether each keeps ``label``; the check's verdict."""
        x_q = quantize_within_budget(x_rob, x_o, threat.norm, threat.delta)
        data = [encode_jpeg(x_q[i], quality) if sent_as else encode_png(x_q[i], alpha) for i, alpha in enumerate(alphas)]
        decoded = torch.stack([decode(d).pixels for d in data]).to(device)
        with torch.no_grad():
            kept = judge(decoded).argmax(1) == label
        robust = verify_through(judge, decoded, label, threat, verify_attack, survive) if verify else None
        return _Written(data, x_q, decoded, kept, robust)

    alphas = [img.alpha for img in images]

    first_through = survive if survive_optimise == "always" else None

    def attempt(cfg: Optional[RobustifyConfig], idx: torch.Tensor, labels, report_progress, x_init=None,
                through=survive):
        """Robustify the images ``idx`` under ``cfg`` (from ``x_init`` if given; optimising through ``through``),
        keep the strength's scale of the change, write and check: ``(RobustifyResult, _Written, scale)``."""
        x_o, al = x_orig[idx], [alphas[i] for i in idx.tolist()]
        res = robustify(model, x_o, threat, cfg, y=labels, progress=report_progress, transform=through,
                        sent_as=sent_as, x_init=x_init)
        x_out, sc = res.x_rob, torch.ones(len(al))
        if strength != "high" and verify:
            x_full = quantize_within_budget(res.x_rob, x_o, threat.norm, threat.delta)
            sc = smallest_scale(judge, x_o, x_full, res.label, threat, margin=strength == "medium", survive=survive,
                                sent_as=sent_as)
            x_out = x_o + sc.to(x_o.device).view(-1, 1, 1, 1) * (x_full - x_o)
        w = write_and_check(x_out, x_o, al, res.label)
        back = ((sc < 1) & ~w.robust.cpu()).nonzero().flatten() if w.robust is not None else torch.zeros(0, dtype=torch.long)
        if back.numel():  # a smaller change the whole check rejects: the whole change, checked in turn
            rows = back.tolist()
            w.take(rows, write_and_check(res.x_rob[back], x_o[back], [al[i] for i in rows], res.label[back]))
            sc[back] = 1.0
        return res, w, sc

    def holding(done: int):
        # A second try reports the first try's end (the bar stays full) so that a caller that stops work from
        # its progress callback (a cancelled service job) still can during it.
        return None if progress is None else (lambda i, n, loss: progress(done, done, loss))

    every = torch.arange(len(images), device=x_orig.device)
    result, written, scale = attempt(config, every, y, progress, through=first_through)
    label = result.label
    robust = written.robust
    robust_loss, stopped_at = result.robust_loss.clone(), result.stopped_at.clone()
    passes = result.passes_per_image.clone()
    x_float = result.x_rob.clone()  # each image's robustified point before rounding and scaling
    shaping = config is not None and config.texture_floor is not None
    shaped = torch.full((len(images),), shaping)
    if shaping and robust is not None:  # texture masking the check rejects: the whole budget, as without it
        idx = (~robust).nonzero().flatten()
        if idx.numel():
            again, second, sc = attempt(replace(config, texture_floor=None), idx, label[idx],
                                        holding(config.iterations), through=first_through)
            rows = idx.tolist()
            written.take(rows, second)
            scale[idx.cpu()] = sc
            passes[idx] += again.passes_per_image.to(passes.device)
            robust_loss[idx], stopped_at[idx] = again.robust_loss, again.stopped_at
            x_float[idx] = again.x_rob
            shaped[idx.cpu()] = False
    continued = torch.zeros(len(images), dtype=torch.bool)
    if robust is not None and (config is None or config.sigma is None):
        # An image that early stopping cut short with its own attack's loss low, but that the check rejects: the
        # stop trusted a PGD start the check's stronger attacks overturn. It runs on from where it stopped, for
        # the rest of the loop without early stopping, and the new file replaces the first if it passes.
        full = replace(config or RobustifyConfig(), texture_floor=None).resolved(threat)
        idx = (written.kept & ~robust & (robust_loss < full.stop_loss) & (stopped_at < full.iterations)).nonzero().flatten()
        if idx.numel():
            cfg2 = replace(full, stop_patience=0, plateau_window=0,
                           iterations=full.iterations - int(stopped_at[idx].min()))
            again, second, sc = attempt(cfg2, idx, label[idx], holding(full.iterations), x_init=x_float[idx])
            rows = idx.tolist()
            written.take(rows, second, only=second.robust)
            took = second.robust.to(idx.device)
            scale[idx[took].cpu()] = sc[took.cpu()]
            passes[idx] += again.passes_per_image.to(passes.device)
            robust_loss[idx[took]] = again.robust_loss[took]
            stopped_at[idx[took]] += again.stopped_at[took]
            continued[idx.cpu()] = True
    retried = torch.zeros(len(images), dtype=torch.bool)
    if retry and robust is not None and (config is None or config.sigma is None):
        idx = (written.kept & ~robust).nonzero().flatten()
        if idx.numel():
            cfg2 = replace(config or RobustifyConfig(), texture_floor=None,
                           **(RETRY_CONFIG if retry_config is None else retry_config))
            again = robustify(model, x_orig[idx], threat, cfg2, y=label[idx],
                              progress=holding((config or RobustifyConfig()).iterations), transform=survive,
                              sent_as=sent_as)
            rows = idx.tolist()
            second = write_and_check(again.x_rob, x_orig[idx], [alphas[i] for i in rows], label[idx])
            # the check also requires the label, so a second output that passes keeps it
            written.take(rows, second, only=second.robust)
            passes[idx] += again.passes_per_image.to(passes.device)
            retried[idx.cpu()] = True
    kept, decoded = written.kept, written.decoded
    after = [p.spec for p in survive.points()] if survive is not None else None
    out = []
    for i, data in enumerate(written.data):
        report = {
            "norm": threat.norm, "epsilon": threat.epsilon, "delta": threat.delta,
            **budget_used(decoded[i], x_orig[i]),
            "label": int(label[i]),
            "label_kept": bool(kept[i]),
            "robust_loss": float(robust_loss[i]),
            "passes": int(passes[i]),
            "iterations_run": int(stopped_at[i]),
        }
        if robust is not None:
            report["verified"] = {"attack": VERIFY_ATTACKS[verify_attack], "robust": bool(robust[i])}
            if survive is not None:
                report["verified"]["after"] = list(after)
        if survive is not None:
            report["survive"] = survive.spec
        if sent_as is not None:
            report.update({"format": "jpeg", "quality": int(quality),
                           "linf_before_encoding": float((written.sent[i] - x_orig[i]).abs().max())})
        if robust is not None:
            report["continued"] = bool(continued[i])
        if retry:
            report["retried"] = bool(retried[i])
        if shaping:
            report["texture"] = bool(shaped[i])
        if strength != "high" and verify:
            report["strength"], report["scale"] = strength, float(scale[i])
        out.append(ProtectResult(data=data, pixels=decoded[i].cpu(), report=report))
    return out


def smallest_scale(judge, x_orig, x_full, label, threat, margin: bool, survive=None, sent_as=None) -> torch.Tensor:
    """Spend less of the budget: for each image, the smallest scale ``a`` of its change ``x_full - x_orig``
    (from :data:`SHRINK_SCALES`, each rounded to 8 bits as it would be written) that the check's first stage
    (PGD-20 from one random start, through each fixed point of ``survive`` too) cannot break, with the label kept;
    1 where none can. With ``margin``, the next larger scale
    instead (a point further inside the robust region). :func:`protect_images` then runs the whole check on
    the output at that scale, and falls back to the whole change where it fails: the guarantee is unchanged
    (every output is inside the delta ball, as a scaled change is, and passed the same check as written).
    Costs at most ``len(SHRINK_SCALES)`` x 21 passes per image, fewer for images decided early."""
    found = torch.ones(x_orig.shape[0])
    change = x_full - x_orig
    for a in SHRINK_SCALES:
        rows = (found == 1).nonzero().flatten()
        if rows.numel() == 0:
            break
        r = rows.to(x_orig.device)
        x_a = quantize_within_budget(x_orig[r] + a * change[r], x_orig[r], threat.norm, threat.delta)
        if sent_as is not None:
            x_a = sent_as.real(x_a)  # the pixels the JPEG written at this scale holds
        passed = verify_through(judge, x_a, label[r], threat, "pgd", survive, restarts=1).cpu()
        found[rows[passed]] = a
    if margin:
        steps = list(SHRINK_SCALES) + [1.0]
        found = torch.tensor([steps[steps.index(float(f)) + 1] if f < 1 else 1.0 for f in found])
    return found
