"""Running one setting of ``preempt reproduce``: every model of it, chunk by chunk, through
:func:`preempt.core.evaluate.evaluate`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from ..attacks import pgd, smoothed_loss
from ..data import fashion_mnist
from ..evaluate import EvalConfig, evaluate, gap_closure
from ..models import load_classifier
from ..reconstruct import default_eps_sweep
from ..robustify import predict_labels
from ..smoothing import Smooth
from ..threat import ThreatModel
from .cache import cached_chunk, chunk_identity, combine, ensure_model, key
from .settings import PAPER_GAP_CLOSURE, SETTINGS, ReproduceConfig


def evaluate_chunk(model, x, y, threat: ThreatModel, sigma: Optional[float], cfg: ReproduceConfig,
                   role: str) -> list:
    """Rows (none, ours) of one chunk. A smoothed setting (``sigma``) predicts with the Monte-Carlo smoothed
    classifier, attacks with randomized PGD (1 and 10 restarts) and adds the certified accuracy at eps."""
    ecfg = EvalConfig(attacks=tuple(cfg.attacks), whitebox=cfg.whitebox, whitebox_attacks=cfg.whitebox_attacks,
                      batch_size=len(x), robustify=cfg.robustify, quantize=True)
    if sigma is None:
        return evaluate(model, x, y, threat, ecfg, model_name=role, device=cfg.device)
    m = cfg.noise_samples
    loss = smoothed_loss(sigma, m)

    def predict(z):
        return predict_labels(model, z, sigma, noise_samples=cfg.predict_samples)

    def attack(restarts):
        return lambda z, yy, eps: pgd(model, z, yy, threat.geometry, eps, steps=20, step_size=eps / 4,
                                      restarts=restarts, loss_fn=loss, predict=predict)

    smooth = Smooth(model, 10, sigma)

    def certified(xb, yb) -> dict:
        hits = 0
        for i in range(len(xb)):
            c, r = smooth.certify(xb[i], cfg.certify_n0, cfg.certify_n, cfg.certify_alpha, batch_size=1000)
            hits += int(c == int(yb[i]) and r >= threat.epsilon)
        return {"certified": hits}

    ecfg = replace(ecfg, whitebox_attacks=None, robustify=replace(cfg.robustify, sigma=sigma, noise_samples=m))
    return evaluate(model, x, y, threat, ecfg, model_name=role, device=cfg.device, predict=predict,
                    attacks={"pgd": attack(1), "pgd10": attack(10)}, extra=certified)


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def run_setting(name: str, cfg: ReproduceConfig, work: Path, train: bool = False,
                log: Callable[[str], None] = print, models: Optional[Dict[str, str]] = None,
                roles: Optional[Sequence[str]] = None) -> dict:
    """Evaluate every row of setting ``name`` on the first ``cfg.n`` test images; returns the report dict.

    ``models`` (role -> registered name or checkpoint) replaces some of the setting's models, e.g.
    ``{"ours": "fmnist-l2-ours-8ep"}``; each row records the name it used (``model_name``).
    ``roles`` evaluates only those models (the report has their rows alone): one process per role
    can then share ``work``, and a last run over every role finds all chunks cached.
    """
    setting = SETTINGS[name]
    unknown = (set(models or {}) | set(roles or ())) - set(setting.models)
    if unknown:
        raise ValueError(f"setting {name} has the models {', '.join(setting.models)}, not {', '.join(sorted(unknown))}")
    merged = {**setting.models, **(models or {})}
    if roles is not None:
        if not roles:
            raise ValueError("roles: name at least one model role")
        merged = {role: model for role, model in merged.items() if role in roles}
    setting = replace(setting, models=merged)
    threat = ThreatModel(setting.norm, setting.epsilon, setting.delta)
    x_all, y_all = fashion_mnist("test", limit=cfg.n)
    rows, wall = [], {}
    for role, model_name in setting.models.items():
        path = ensure_model(model_name, work, train, log)
        clf = load_classifier(str(path), device=cfg.device)
        card = clf.card or {}
        ident = chunk_identity(model_name, role, path, setting, cfg, threat)
        folder = work / name / f"{model_name}-{key(ident)}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "identity.json").write_text(json.dumps(ident, indent=2, default=str) + "\n")
        parts = {"none": [], "ours": []}
        seconds, devices = 0.0, {}
        start = 0
        while start < cfg.n:
            cached = cached_chunk(folder, start, cfg.n)
            if cached is not None:
                stop, done = cached
                log(f"{name} {model_name} images {start}-{stop}: cached")
            else:
                stop = min(start + cfg.chunk, cfg.n)
                torch.manual_seed(cfg.seed + start)
                x, y = x_all[start:stop].to(cfg.device), y_all[start:stop].to(cfg.device)
                t0 = time.perf_counter()
                chunk_rows = evaluate_chunk(clf.model, x, y, threat, setting.sigma, cfg, role)
                done = {"n": stop - start, "seconds": time.perf_counter() - t0, "rows": chunk_rows,
                        "device": _device_name(cfg.device), "torch": torch.__version__}
                (folder / f"{start:05d}-{stop:05d}.json").write_text(json.dumps(done, indent=1) + "\n")
                log(f"{name} {model_name} images {start}-{stop}: {done['seconds']:.0f} s " + ", ".join(
                    f"{r['preempt']} " + " ".join(f"{c}={r[c]:.3f}" for c in setting.columns if c in r)
                    for r in chunk_rows))
            seconds += done["seconds"]
            where = done.get("device", "unrecorded")  # the oldest chunks did not record it
            devices[where] = devices.get(where, 0) + done["n"]
            for r in done["rows"]:
                parts[r["preempt"]].append({"n": done["n"], "row": r})
            start = stop
        wall[model_name] = {"evaluation_seconds": round(seconds, 1), "images_by_device": devices,
                            "training_seconds": card.get("wall_seconds"), "training_command": card.get("command")}
        for preempt in ("none", "ours"):
            row = combine(parts[preempt])
            row.update(model=role, preempt=preempt, model_name=model_name)
            rows.append(row)
    order = {"adv": 0, "ours": 1, "gaussian": 2}
    rows.sort(key=lambda r: (order[r["model"]], r["preempt"] != "none"))
    for r in rows:
        if r["preempt"] == "ours":
            none = next(o for o in rows if o["model"] == r["model"] and o["preempt"] == "none")
            r["gap_closure"] = {c: gap_closure(none, r, c) for c in setting.columns
                                if c.startswith("greybox") and gap_closure(none, r, c) is not None}
    return {"dataset": "fashion-mnist", "setting": name, "n_images": cfg.n, "norm": setting.norm,
            "epsilon": setting.epsilon, "delta": setting.delta, "sigma": setting.sigma,
            "eps_sweep": default_eps_sweep(setting.epsilon), "robustify": asdict(cfg.robustify),
            "attacks": list(cfg.attacks), "device": cfg.device, "threads": torch.get_num_threads(),
            "device_name": _device_name(cfg.device), "torch": torch.__version__,
            "wall": wall, "rows": rows, "paper_gap_closure": PAPER_GAP_CLOSURE.get(name)}
