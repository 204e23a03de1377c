"""What a worker does with a claimed job: the torch side of the service.

Three kinds of job, each reading its upload from the :class:`preempt.store.JobStore` and writing a
report (and for two of them a PNG) back:

* ``robustify``: decode -> robustify at native resolution through the model's preprocessing ->
  8-bit PNG inside the budget -> decode -> verification attack on the decoded file
  (:func:`preempt.pipeline.protect`). Jobs of one batch key (same settings, same image
  shape) run as one batch and end independently.
* ``attack``: the grey-box attack (PGD-20 or AutoAttack) of the submitted image, and with an
  ``original`` upload the adaptive white-box attack (Algorithms 3-4, validity judged against it).
  The result PNG is the grey-box adversarial example rounded to 8 bits inside eps.
* ``certify``: randomized-smoothing PREDICT and CERTIFY (Cohen et al.) of the submitted image.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from typing import Callable, Dict, List, Optional

import redis
import torch

from preempt.core.evaluate import attack_fn
from preempt.core.images import ImageError, decode, encode_png, quantize_within_budget
from preempt.core.protect import batches_by_shape
from preempt.core.reconstruct import whitebox_attack
from preempt.core.smoothing import ABSTAIN, Smooth
from preempt.core.threat import ThreatModel
from preempt.pipeline import Protector, load_protector, protect
from preempt.registry import model_card
from preempt.request import AttackRequest, CertifyRequest, RobustifyRequest
from preempt.store import JobStore

log = logging.getLogger("preempt.worker")


class Cancelled(Exception):
    """Every job of the batch was cancelled while it ran."""


class ModelCache:
    """Models loaded once per worker process, on its device (fp32 for checks, ``precision`` to robustify)."""

    def __init__(self, device: str, precision: str = "fp32"):
        self.device, self.precision = device, precision
        self._models: Dict[tuple, Protector] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Protector:
        """The model ``name``, loaded again if it was replaced since (``preempt models add --force``)."""
        try:
            version = model_card(name).get("sha256")
        except (KeyError, OSError, ValueError):
            version = None  # unknown now: load_protector says so
        with self._lock:
            if (name, version) not in self._models:
                for key in [k for k in self._models if k[0] == name]:
                    del self._models[key]
                self._models[(name, version)] = load_protector(name, device=self.device, precision=self.precision)
            return self._models[(name, version)]


def release_memory() -> None:
    """Give the memory of a finished job back: Python's garbage, then the C allocator's free pages (glibc
    keeps freed blocks of every image size in its arenas, and a worker sees many sizes)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def persist(write: Callable, *args, patience: float = 120.0, **kwargs):
    """A job-store write retried through a Redis outage of up to ``patience`` seconds, so that a computed
    result is not thrown away because Redis restarted (if the job was queued again meanwhile, the write
    finds it no longer running and the job runs again: it still ends once)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return write(*args, **kwargs)
        except redis.RedisError as e:
            if time.monotonic() > deadline:
                raise
            log.warning("job store unavailable (%s); retrying", type(e).__name__)
            time.sleep(1.0)


class ProgressWriter:
    """Writes (iteration, total, loss) of a batch to its jobs at most every ``interval`` seconds,
    and notices cancellations (raising :class:`Cancelled` once every job is cancelled)."""

    def __init__(self, store: JobStore, job_ids: List[str], interval: float = 0.5):
        self.store, self.job_ids, self.interval = store, job_ids, interval
        self._last, self._sent = 0.0, None

    def __call__(self, iteration: int, total: int, loss: float) -> None:
        now = time.monotonic()
        # the end of a pass is written at once, the same figures again (a retry holds them) at the interval
        if now - self._last < self.interval and (iteration < total or (iteration, total) == self._sent):
            return
        self._last, self._sent = now, (iteration, total)
        try:
            live = [j for j in self.job_ids if self.store.status(j) == "running"]
            for j in live:
                self.store.progress(j, iteration, total, loss)
        except redis.RedisError as e:  # progress can wait for Redis to come back; the work goes on
            log.warning("progress not written (%s)", type(e).__name__)
            return
        if not live:
            raise Cancelled()


def _decode_upload(store: JobStore, job_id: str, max_pixels: int, name: Optional[str] = None):
    """The job's upload decoded, or ``None`` after failing the job (the API checked it; Redis may not have kept it)."""
    try:
        return decode(store.upload(job_id, name) or b"", max_pixels)
    except ImageError as e:
        store.end(job_id, "failed", ["running"], error=f"bad image: {e}")
        return None


def run_robustify(store: JobStore, models: ModelCache, jobs: List[dict], max_pixels: int) -> None:
    """Robustify claimed jobs of one batch key; each job ends on its own (succeeded or failed)."""
    request = RobustifyRequest.from_json(jobs[0]["request"])
    protector = models.get(request.model)
    decoded = [(job, _decode_upload(store, job["job_id"], max_pixels)) for job in jobs]
    decoded = [(job, img) for job, img in decoded if img is not None]
    for batch in batches_by_shape([img.pixels.shape for _, img in decoded], len(decoded)):
        group = [decoded[i] for i in batch]
        ids = [job["job_id"] for job, _ in group]
        started = time.perf_counter()
        try:
            results = protect(request, protector, [img for _, img in group], progress=ProgressWriter(store, ids))
        except Cancelled:
            log.info("batch %s cancelled", ids)
            continue
        seconds = time.perf_counter() - started
        store.count("robustify_seconds_total", seconds)
        store.count("robustify_images_total", len(group))
        for (job, _), res in zip(group, results):
            report = {**res.report, "batch_size": len(group), "seconds": round(seconds, 3)}
            persist(store.progress, job["job_id"], request.iterations, request.iterations, res.report["robust_loss"])
            persist(store.end, job["job_id"], "succeeded", ["running"], result=res.data, report=report)


def run_attack(store: JobStore, models: ModelCache, job: dict, max_pixels: int) -> None:
    """Grey-box (and with an original, white-box) attack of one submitted image."""
    p = AttackRequest.from_json(job["request"])
    protector = models.get(p.model)
    model, dev = protector.judge.model, models.device
    threat = ThreatModel(p.norm, p.epsilon)
    img = _decode_upload(store, job["job_id"], max_pixels)
    orig = _decode_upload(store, job["job_id"], max_pixels, "original") if p.whitebox else None
    if img is None or (p.whitebox and orig is None):
        return
    x = img.pixels[None].to(dev)
    with torch.no_grad():
        pred = int(model(x).argmax(1))
    label = p.label if p.label is not None else pred
    y = torch.tensor([label], device=dev)
    attack = attack_fn(p.attack, model, threat, protector.judge.num_classes or 10)
    total = 2 if orig is not None else 1
    store.progress(job["job_id"], 0, total, 0.0)
    x_adv = attack(x, y, threat.epsilon)
    x_q = quantize_within_budget(x_adv, x, threat.norm, threat.epsilon)
    png = encode_png(x_q[0], img.alpha)
    x_file = decode(png).pixels[None].to(dev)
    with torch.no_grad():
        adv_label = int(model(x_file).argmax(1))
    report = {
        "model": p.model, "norm": threat.norm, "epsilon": threat.epsilon, "attack": p.attack,
        "prediction": pred, "label": label, "label_name": protector.class_name(label),
        "greybox": {"robust": bool(pred == label and adv_label == label), "adversarial_label": adv_label},
    }
    store.progress(job["job_id"], 1, total, 0.0)
    if orig is not None:
        if orig.pixels.shape != img.pixels.shape:
            store.end(job["job_id"], "failed", ["running"],
                      error=f"original has shape {list(orig.pixels.shape)}, image has {list(img.pixels.shape)}")
            return
        wb = whitebox_attack(model, x, orig.pixels[None].to(dev), y, threat, attack=attack,
                             iterations=p.iterations)
        report["whitebox"] = {
            "robust": bool(wb["robust_worst"][0]),
            "robust_at": {f"{e:g}": bool(v[0]) for e, v in wb["robust"].items()},
            "reconstruction_distance": float(wb["dist_hat"][0]),
        }
        store.progress(job["job_id"], 2, total, 0.0)
    persist(store.end, job["job_id"], "succeeded", ["running"], result=png, report=report)


def run_certify(store: JobStore, models: ModelCache, job: dict, max_pixels: int) -> None:
    """Smoothed PREDICT and CERTIFY of one submitted image."""
    p = CertifyRequest.from_json(job["request"])
    protector = models.get(p.model)
    img = _decode_upload(store, job["job_id"], max_pixels)
    if img is None:
        return
    x = img.pixels.to(models.device)
    smooth = Smooth(protector.judge.model, protector.judge.num_classes or 10, p.sigma)
    store.progress(job["job_id"], 0, 2, 0.0)
    prediction = smooth.predict(x, p.n, p.alpha)
    store.progress(job["job_id"], 1, 2, 0.0)
    c_a, radius = smooth.certify(x, p.n0, p.n, p.alpha)
    report = {
        "model": p.model, "sigma": p.sigma, "n0": p.n0, "n": p.n, "alpha": p.alpha,
        "prediction": None if prediction == ABSTAIN else prediction,
        "certified_label": None if c_a == ABSTAIN else c_a,
        "certified_label_name": None if c_a == ABSTAIN else protector.class_name(c_a),
        "radius": radius, "abstained": c_a == ABSTAIN,
    }
    store.progress(job["job_id"], 2, 2, 0.0)
    persist(store.end, job["job_id"], "succeeded", ["running"], report=report)


RUNNERS: Dict[str, Callable] = {"attack": run_attack, "certify": run_certify}
