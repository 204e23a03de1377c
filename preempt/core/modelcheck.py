"""Checks a classifier must pass before Preempt protects images against it, and what one pass costs.

The algorithms need a model that maps an image batch to logits, deterministically, with a useful input
gradient; a model that silently breaks one of these makes every robustification meaningless (a zero
gradient: nothing moves; dropout left on: every attack a coin toss). :func:`check_model` runs each check
on the model as Preempt will run it (preprocessing included) and says in one line what failed:

1. ``loads``: the file loads on the CPU;
2. ``runs``: a batch ``[2, C, H, W]`` of the declared shape runs;
3. ``logits``: the output is float ``[B, K]`` with the declared class count, not probabilities;
4. ``gradient``: the gradient of a margin loss reaches the input, finite and non-zero;
5. ``deterministic``: two passes agree, and an image's logits do not depend on its batch (dropout or
   batch norm left in training mode fail this);
6. ``onnxruntime`` (ONNX only): the converted model agrees with onnxruntime on random and on real
   images, to :data:`ONNX_TOLERANCE` relative to the logits' scale;
7. ``cost``: the seconds of one forward + input-gradient pass (batch 1 and batch 8, on this CPU), and
   what an image costs at the default settings (:func:`default_passes`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn as nn

from .models import ModelSpec, Preprocess, load_model_file, model_format
from .protect import APGD_T_CLOSE, APGD_T_SCREEN

ONNX_TOLERANCE = 1e-4  # max |torch - onnxruntime| <= ONNX_TOLERANCE * max(1, max |logit|)
DETERMINISM_TOLERANCE = 1e-4  # the same, between two passes (and batch vs alone)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass
class CheckReport:
    checks: List[Check] = field(default_factory=list)
    num_classes: Optional[int] = None
    cost: Optional[dict] = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> List[str]:
        return [c.line() for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok


def default_passes(num_classes: int, iterations: int = 100, steps: int = 20, patience: int = 3) -> dict:
    """Forward-backward passes of one image at the defaults (medium preset, verify=apgd): robustification
    of an image that is robust from the start (``patience + 1`` iterations and one confirming attack) and of
    one that runs every iteration; the check of the written file (PGD-20, APGD-CE 100, APGD-T toward at
    most 9 runner-up classes at :data:`~preempt.core.protect.APGD_T_SCREEN` iterations each, and for an image
    whose margin stays close, :data:`~preempt.core.protect.APGD_T_CLOSE` more): ``verify_decided`` and
    ``verify`` (close)."""
    classes = min(9, max(num_classes - 1, 1))
    decided = steps + 100 + sum(APGD_T_SCREEN[:classes])
    return {"robust_from_start": (patience + 2) * (steps + 1), "full_loop": iterations * (steps + 1),
            "verify_decided": decided, "verify": decided + sum(APGD_T_CLOSE[:classes])}


def _margin(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]).sum()


def _seconds_per_pass(model: nn.Module, shape: tuple, batch: int, budget: float = 3.0) -> float:
    x = torch.rand(batch, *shape)
    times = []
    for i in range(12):
        xi = x.clone().requires_grad_(True)
        start = time.perf_counter()
        _margin(model(xi)).backward()
        if i >= 2:  # the first passes warm caches and allocators
            times.append(time.perf_counter() - start)
        if i >= 4 and sum(times) > budget:
            break
    return statistics.median(times) / batch


def _scale_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def check_model(path: Path, spec: ModelSpec, num_classes: Optional[int] = None, arch: Optional[str] = None,
                real_images: Optional[torch.Tensor] = None, measure: bool = True) -> CheckReport:
    """Runs the checks of the module docstring on the model file ``path`` with the declared ``spec``
    (``input_size`` and ``channels`` required) and class count (``None``: whatever the model returns).
    ``real_images`` ``[N, C, H, W]`` in [0, 1] (any size; preprocessed like uploads) feed the onnxruntime
    comparison besides random inputs. Stops at the first failed check that the next ones need."""
    report = CheckReport(num_classes=num_classes)
    card = {k: v for k, v in spec.to_dict().items()}
    if arch:
        card["arch"] = arch
    if num_classes:
        card["num_classes"] = num_classes
    try:
        raw = load_model_file(path, card, arch=arch, device="cpu", num_classes=num_classes)
    except ValueError as e:
        report.add("loads", False, str(e))
        return report
    try:
        raw.eval()
    except NotImplementedError:
        pass  # torch.export programs refuse eval(); they are in inference form already
    for p in raw.parameters():
        p.requires_grad_(False)
    fmt = model_format(path)
    report.add("loads", True, f"{fmt} on the CPU")
    model = Preprocess(raw, spec)
    c, (h, w) = spec.channels, spec.input_size
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, c, h, w, generator=gen)

    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - whatever the model raises
        hint = ("; a torch.export program fixed to one batch size? export with dynamic_shapes={'x': {0: "
                "torch.export.Dim('batch')}}") if fmt == "export" else ""
        report.add("runs", False, f"a batch of shape [2, {c}, {h}, {w}] fails: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''}{hint}")
        return report
    report.add("runs", True, f"a batch of shape [2, {c}, {h}, {w}]")

    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or not out.is_floating_point():
        got = (f"shape {list(out.shape)} ({str(out.dtype).replace('torch.', '')})" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        report.add("logits", False, f"the output is {got}, not float logits [batch, classes]: export the "
                                    "network up to its last linear layer (no argmax, no softmax)")
        return report
    k = out.shape[1]
    if num_classes is not None and k != num_classes:
        report.add("logits", False, f"the model returns {k} classes; {num_classes} were declared "
                                    "(--class-names / --num-classes)")
        return report
    if k < 2:
        report.add("logits", False, f"the model returns {k} class; a classifier needs at least 2")
        return report
    if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(2), atol=1e-4):
        report.add("logits", False, "the outputs are probabilities (non-negative, rows sum to 1): export the "
                                    "logits, before the softmax")
        return report
    report.num_classes = k
    report.add("logits", True, f"float [2, {k}]")

    xg = x.clone().requires_grad_(True)
    try:
        loss = _margin(model(xg))
        grad = torch.autograd.grad(loss, xg, allow_unused=True)[0] if loss.requires_grad else None
    except RuntimeError as e:
        grad, why = None, str(e).splitlines()[0][:200]
    else:
        why = "the output does not depend on the input through differentiable operations"
    if grad is None:
        report.add("gradient", False, f"no gradient reaches the input ({why}): the attacks and the robustifier "
                                      "need one")
        return report
    if not bool(torch.isfinite(grad).all()):
        report.add("gradient", False, "the input gradient has NaN or infinite values")
        return report
    if float(grad.abs().max()) == 0.0:
        report.add("gradient", False, "the input gradient is zero everywhere (a step function such as argmax, "
                                      "rounding or a comparison in the graph)")
        return report
    report.add("gradient", True, f"finite, non-zero (mean |grad| {float(grad.abs().mean()):.3g})")

    with torch.no_grad():
        again = model(x)
        alone = model(x[:1])
    drift, batch_drift = _scale_error(again, out), _scale_error(alone, out[:1])
    if drift > DETERMINISM_TOLERANCE:
        report.add("deterministic", False, f"two passes on the same batch differ (by {drift:.3g} of the logits' "
                                           "scale): dropout or another random layer is active; export in eval mode")
        return report
    if batch_drift > DETERMINISM_TOLERANCE:
        report.add("deterministic", False, f"an image's logits depend on the other images of its batch (by "
                                           f"{batch_drift:.3g}): batch norm in training mode? export in eval mode")
        return report
    report.add("deterministic", True, "two passes agree, and an image alone agrees with it in a batch")

    if fmt == "onnx":
        from .onnxconv import onnxruntime_logits

        to_input = Preprocess(nn.Identity(), spec)  # what the ONNX graph itself receives
        inputs = {"random": to_input(torch.rand(4, c, h, w, generator=gen))}
        if real_images is not None and len(real_images):
            inputs["real"] = torch.cat([to_input(img[None]) for img in real_images])
        errors = {}
        try:
            for kind, z in inputs.items():
                with torch.no_grad():
                    errors[kind] = _scale_error(raw(z), onnxruntime_logits(path, z))
        except Exception as e:  # noqa: BLE001 - onnxruntime's own failures
            report.add("onnxruntime", False, f"onnxruntime cannot run the file ({type(e).__name__}: "
                                             f"{str(e).splitlines()[0][:200]})")
            return report
        worst = max(errors.values())
        detail = ", ".join(f"{kind} {n} images {errors[kind]:.2g}" for kind, n in
                           ((k_, len(z)) for k_, z in inputs.items()))
        if worst > ONNX_TOLERANCE:
            report.add("onnxruntime", False, f"the converted model disagrees with onnxruntime (max |difference| / "
                                             f"logit scale: {detail}; tolerance {ONNX_TOLERANCE:g})")
            return report
        report.add("onnxruntime", True, f"the converted model agrees with onnxruntime (max |difference| / logit "
                                        f"scale: {detail}; tolerance {ONNX_TOLERANCE:g})")

    if measure:
        shape = (c, h, w)
        one, eight = _seconds_per_pass(model, shape, 1), _seconds_per_pass(model, shape, 8)
        passes = default_passes(k)
        best = min(one, eight)
        report.cost = {
            "device": "cpu", "threads": torch.get_num_threads(),
            "seconds_per_pass_batch1": round(one, 6), "seconds_per_pass_batch8": round(eight, 6),
            "passes_at_defaults": passes,
            "seconds_per_image_at_defaults": {
                "robust_from_start": round(best * (passes["robust_from_start"] + passes["verify_decided"]), 3),
                "full_loop": round(best * (passes["full_loop"] + passes["verify"]), 3)},
            "input": list(shape),
        }
        report.add("cost", True, f"{one * 1000:.3g} ms per forward+backward pass (batch 1), "
                                 f"{eight * 1000:.3g} ms per image in a batch of 8, on {torch.get_num_threads()} "
                                 f"CPU threads: about {report.cost['seconds_per_image_at_defaults']['robust_from_start']:.3g}"
                                 f"-{report.cost['seconds_per_image_at_defaults']['full_loop']:.3g} s per image "
                                 f"at the defaults, verification included")
    return report
