"""The work folder of ``preempt reproduce``: trained models and finished chunks of images.

A chunk's results are cached under ``WORK/SETTING/MODEL-KEY/START-STOP.json``, where KEY hashes
everything that decides the figures (:func:`chunk_identity`): an interrupted run picks up where it
stopped, a run on more images reuses the chunks it has, and chunks of any size are reused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Optional

from preempt.registry import MODELS_DIR, registered_models

from ..robustify import default_stop_loss
from ..threat import ThreatModel
from ..train import train_fashion_mnist
from .settings import TRAIN_RECIPES, ReproduceConfig, Setting, train_command


def model_path(name: str, work: Path) -> Path:
    """The checkpoint of ``name``: the shipped one, else one trained earlier into ``work/models``."""
    registered = registered_models()
    if name in registered:
        return registered[name]
    return work / "models" / f"{name}.pt"


def ensure_model(name: str, work: Path, train: bool, log: Callable[[str], None]) -> Path:
    """Return the checkpoint of ``name``, training it with its recipe when asked."""
    path = model_path(name, work)
    if path.exists():
        return path
    command = f"{train_command(name)} -o {path}"
    if not train:
        raise FileNotFoundError(f"model {name} is not shipped in {MODELS_DIR} and not in {path.parent}; "
                                f"rerun with --train, or train it: {command}")
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"training {name}: {command}")
    train_fashion_mnist(path, **TRAIN_RECIPES[name], command=command)
    return path


def robustify_identity(rcfg, setting: Setting, threat: ThreatModel) -> dict:
    """The robustifier's settings as a chunk's identity records them.

    The identity format names the outer loss (always the cross-entropy) and writes a ``stop_loss`` of
    ln 2 as ``None``; any other threshold, resolved for the norm (0.1 for l2 on plain classifiers), is
    written out. A chunk is so reused exactly when the same threshold runs again. ``smooth_size`` and
    ``texture_floor`` appear only when set (the reproduction uses neither), so older chunks keep their keys.
    """
    ident = {**asdict(rcfg), "outer_loss": "ce"}
    for later in ("smooth_size", "texture_floor"):  # fields added later: their defaults leave the identity as it was
        if ident.get(later) is None:
            ident.pop(later, None)
    stop = rcfg.stop_loss if rcfg.stop_loss is not None else default_stop_loss(threat, setting.sigma)
    ident["stop_loss"] = None if stop == math.log(2) else stop
    return ident


def chunk_identity(name: str, role: str, path: Path, setting: Setting, cfg: ReproduceConfig,
                   threat: ThreatModel) -> dict:
    """What decides one model's figures (not the models of the other roles)."""
    return {"model": name, "role": role, "model_sha": hashlib.sha256(path.read_bytes()).hexdigest()[:12],
            "setting": {k: v for k, v in asdict(setting).items() if k != "models"},
            "robustify": robustify_identity(cfg.robustify, setting, threat), "attacks": list(cfg.attacks),
            "whitebox": cfg.whitebox, "whitebox_attacks": cfg.whitebox_attacks, "seed": cfg.seed,
            **({"noise_samples": cfg.noise_samples, "predict_samples": cfg.predict_samples,
                "certify": [cfg.certify_n0, cfg.certify_n, cfg.certify_alpha]} if setting.sigma else {})}


def key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_chunk(folder: Path, start: int, n: int) -> Optional[tuple]:
    """``(stop, result)`` of the longest finished chunk that begins at image ``start`` and ends by ``n``.

    Chunks of any size are reused, so a run with ``--chunk 100`` resumes from chunks of 500 that
    another machine finished (the same images; the model and settings are in the folder's key).
    """
    best = None
    for f in folder.glob(f"{start:05d}-*.json"):
        try:
            stop = int(f.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        if start < stop <= n and (best is None or stop > best[0]):
            best = (stop, f)
    return None if best is None else (best[0], json.loads(best[1].read_text()))


def combine(parts: List[dict]) -> dict:
    """Image-weighted mean of every numeric field (and of ``*_by_eps`` dicts) over chunks."""
    n = sum(p["n"] for p in parts)
    out: dict = {}
    for p in parts:
        w = p["n"] / n
        for k, v in p["row"].items():
            if isinstance(v, bool) or k in ("model", "preempt"):
                out[k] = v
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0.0) + w * v
            elif isinstance(v, dict):
                d = out.setdefault(k, {})
                for e, a in v.items():
                    d[e] = d.get(e, 0.0) + w * a
    for k in ("linf", "l2"):  # budgets: the largest, not the mean
        vals = [p["row"][k] for p in parts if k in p["row"]]
        if vals:
            out[k] = max(vals)
    return out
