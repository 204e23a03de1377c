"""Reproduction of the paper's Section 4 on Fashion-MNIST: ``preempt reproduce``.

Three settings (:data:`SETTINGS`):

* ``linf`` (Table 1 analogue): eps = delta = 0.1, models ADV (PGD adversarial training) and Ours
  (preemptively robust training, Algorithm 2);
* ``l2`` (Table 2 analogue): eps = delta = 1.5, the same two kinds of model;
* ``smoothing`` (Tables 5-7 analogue): a Gaussian-noise model (sigma = 0.25) smoothed, l2
  eps = delta = 0.5; empirical accuracy under randomized PGD (1 and 10 restarts), grey-box and
  white-box, and the certified accuracy at radius 0.5.

Rows are ``(model, preempt)`` with ``preempt`` in ``none`` (the originals) and ``ours`` (Preempt's
robustification at its defaults, evaluated on the 8-bit image a user would transmit). The work is
split into chunks of images whose results are cached in a work folder: an interrupted run picks up
where it stopped, and a run on more images reuses the chunks it has.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .attacks import pgd, smoothed_loss
from .data import fashion_mnist
from .evaluate import EvalConfig, evaluate, gap_closure
from .images import quantize_within_budget
from .reconstruct import default_eps_sweep, reconstruct, whitebox_attack
from .registry import MODELS_DIR, registered_models
from .robustify import RobustifyConfig, predict_labels, robustify
from .smoothing import Smooth
from .threat import ThreatModel

PAPER_GAP_CLOSURE = {  # the paper's CIFAR-10 Tables 1-2, (ADV, Ours) row, computed as in the issue
    "linf": {"greybox_pgd": 0.98, "greybox_aa": 0.86},
    "l2": {"greybox_pgd": 0.68, "greybox_aa": 0.63},
}


@dataclass
class Setting:
    key: str
    norm: str
    epsilon: float
    delta: float
    models: Dict[str, str]  # role (adv, ours, gaussian) -> registered model name
    sigma: Optional[float] = None
    columns: tuple = ("clean", "greybox_pgd", "greybox_aa", "whitebox_pgd", "whitebox_aa")


SETTINGS = {
    "linf": Setting("linf", "linf", 0.1, 0.1, {"adv": "fmnist-linf-adv-8ep", "ours": "fmnist-linf-ours-12ep"}),
    "l2": Setting("l2", "l2", 1.5, 1.5, {"adv": "fmnist-l2-adv-8ep", "ours": "fmnist-l2-ours-8ep"}),
    "smoothing": Setting("smoothing", "l2", 0.5, 0.5, {"gaussian": "fmnist-gaussian-0.25"}, sigma=0.25,
                         columns=("clean", "greybox_pgd", "greybox_pgd10", "whitebox_pgd", "whitebox_pgd10",
                                  "certified")),
}

# The exact `preempt train` command of every shipped model (also in its model card). Each ran
# within 60 minutes on the project's 2-core reference machine.
_COMMON = ["--epochs", "3", "--limit", "30000", "--attack-steps", "7", "--val-size", "2000", "--seed", "0"]


def _full(method: str, norm: str, epochs: int) -> list:
    """The longer runs: the whole training set, a cosine schedule; linf with PGD steps of 0.03, l2 with
    the default step."""
    epsilon, step = {"linf": ("0.1", ["--attack-step", "0.03"]), "l2": ("1.5", [])}[norm]
    return ["--method", method, "--norm", norm, "--epsilon", epsilon, "--epochs", str(epochs), "--lr-schedule",
            "cosine", "--attack-steps", "7", *step, "--val-size", "2000", "--seed", "0"]


TRAIN_COMMANDS = {
    "fmnist-linf-adv": ["--method", "adversarial", "--norm", "linf", "--epsilon", "0.1", "--epochs", "3",
                        "--limit", "30000", "--attack-steps", "7", "--attack-step", "0.03", "--val-size", "2000",
                        "--seed", "0"],
    "fmnist-linf-ours": ["--method", "preemptive", "--norm", "linf", "--epsilon", "0.1", "--epochs", "3",
                         "--limit", "30000", "--attack-steps", "7", "--attack-step", "0.03", "--val-size", "2000",
                         "--seed", "0"],
    "fmnist-linf-adv-8ep": _full("adversarial", "linf", 8),
    "fmnist-linf-ours-6ep": _full("preemptive", "linf", 6),
    "fmnist-linf-ours-12ep": _full("preemptive", "linf", 12),
    "fmnist-l2-adv": ["--method", "adversarial", "--norm", "l2", "--epsilon", "1.5", *_COMMON],
    "fmnist-l2-ours": ["--method", "preemptive", "--norm", "l2", "--epsilon", "1.5", *_COMMON],
    "fmnist-l2-adv-8ep": _full("adversarial", "l2", 8),
    "fmnist-l2-ours-8ep": _full("preemptive", "l2", 8),
    "fmnist-gaussian-0.25": ["--method", "gaussian", "--sigma", "0.25", "--epochs", "5", "--limit", "30000",
                             "--val-size", "2000", "--seed", "0"],
}


@dataclass
class ReproduceConfig:
    n: int = 1000
    chunk: int = 100
    attacks: tuple = ("pgd", "aa")
    whitebox: bool = True
    whitebox_attacks: Optional[tuple] = None  # None: every attack also runs white-box
    device: str = "cpu"
    seed: int = 0
    robustify: RobustifyConfig = field(default_factory=RobustifyConfig)
    # smoothing
    noise_samples: int = 8  # M, Gaussian draws per randomized-PGD step (attack and robustification)
    predict_samples: int = 100  # draws of the Monte-Carlo smoothed prediction used for accuracy
    certify_n0: int = 100
    certify_n: int = 10000
    certify_alpha: float = 0.001


def model_path(name: str, work: Path) -> Path:
    """The checkpoint of ``name``: the shipped one, else one trained earlier into ``work/models``."""
    registered = registered_models()
    if name in registered:
        return registered[name]
    return work / "models" / f"{name}.pt"


def ensure_model(name: str, work: Path, train: bool, log: Callable[[str], None]) -> Path:
    """Return the checkpoint of ``name``, training it with its recorded command when asked."""
    path = model_path(name, work)
    if path.exists():
        return path
    cmd = [sys.executable, "-m", "preempt.cli", "train", *TRAIN_COMMANDS[name], "-o", str(path)]
    if not train:
        raise FileNotFoundError(f"model {name} is not shipped in {MODELS_DIR} and not in {path.parent}; "
                                f"rerun with --train, or train it: preempt {' '.join(cmd[3:])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"training {name}: preempt {' '.join(cmd[3:])}")
    subprocess.run(cmd, check=True)
    return path


def _robustify_identity(rcfg, setting, threat: ThreatModel) -> dict:
    """The robustifier's settings as a chunk's identity records them, with ``stop_loss`` resolved: the
    threshold a config leaves at ``None`` depends on the norm (0.1 for l2 since session 8). Chunks made
    when ``None`` meant ln 2 keep their keys: a resolved ln 2 (0 for the margin outer loss) is written
    as ``None``, so they are reused exactly when the same threshold runs again."""
    from .robustify import default_stop_loss, legacy_stop_loss

    ident = asdict(rcfg)
    stop = rcfg.stop_loss if rcfg.stop_loss is not None else default_stop_loss(replace(rcfg, sigma=setting.sigma), threat)
    ident["stop_loss"] = None if stop == legacy_stop_loss(rcfg) else stop
    return ident


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ smoothing
def evaluate_smoothed(model, x, y, threat: ThreatModel, sigma: float, cfg: ReproduceConfig) -> list:
    """Rows (none, ours) of the smoothing table on one chunk, as fractions of ``len(x)``."""
    m, pred_m = cfg.noise_samples, cfg.predict_samples
    loss = smoothed_loss(sigma, m)

    def predict(z):
        return predict_labels(model, z, sigma, noise_samples=pred_m)

    def attack(restarts):
        return lambda z, yy, eps: pgd(model, z, yy, threat.geometry, eps, steps=20, step_size=eps / 4,
                                      restarts=restarts, loss_fn=loss, predict=predict)

    rcfg = RobustifyConfig(**{**asdict(cfg.robustify), "sigma": sigma, "noise_samples": m})
    start = time.perf_counter()
    res = robustify(model, x, threat, rcfg, y=predict(x))
    seconds = time.perf_counter() - start
    x_rob = quantize_within_budget(res.x_rob, x, threat.norm, threat.delta)
    smooth = Smooth(model, 10, sigma)
    rows = []
    x_hat = None  # Algorithm 3's reconstruction, shared by both white-box attacks
    for preempt, xb in (("none", x), ("ours", x_rob)):
        acc = predict(xb) == y
        row = {"preempt": preempt, "clean": float(acc.float().mean())}
        for name, restarts in (("pgd", 1), ("pgd10", 10)):
            x_adv = attack(restarts)(xb, y, threat.epsilon)
            grey = acc & (predict(x_adv) == y)
            row[f"greybox_{name}"] = float(grey.float().mean())
            if preempt == "none":
                row[f"whitebox_{name}"] = row[f"greybox_{name}"]
            elif cfg.whitebox:
                if x_hat is None:
                    x_hat = reconstruct(model, x_rob, threat, iterations=rcfg.iterations, steps=rcfg.steps,
                                        sigma=sigma, noise_samples=m)
                wb = whitebox_attack(model, x_rob, x, y, threat, attack=attack(restarts), predict=predict, x_hat=x_hat,
                                     count=acc)
                row[f"whitebox_{name}"] = float((acc & wb["robust_worst"]).float().mean())
                row[f"whitebox_{name}_by_eps"] = {f"{e:g}": float((acc & ok).float().mean())
                                                  for e, ok in wb["robust"].items()}
        certified = 0
        for i in range(len(xb)):
            c, r = smooth.certify(xb[i], cfg.certify_n0, cfg.certify_n, cfg.certify_alpha, batch_size=1000)
            certified += int(c == int(y[i]) and r >= threat.epsilon)
        row["certified"] = certified / len(xb)
        if preempt == "ours":
            row.update(passes=res.passes, seconds_per_image=seconds / len(x),
                       linf=float(res.linf.max()), l2=float(res.l2.max()))
        else:
            row["passes"] = 0
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ the run
def _combine(parts: List[dict]) -> dict:
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


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def _cached_chunk(folder: Path, start: int, n: int) -> Optional[tuple]:
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


def run_setting(key: str, cfg: ReproduceConfig, work: Path, train: bool = False,
                log: Callable[[str], None] = print, models: Optional[Dict[str, str]] = None,
                roles: Optional[Sequence[str]] = None) -> dict:
    """Evaluate every row of setting ``key`` on the first ``cfg.n`` test images; returns the report dict.

    ``models`` (role -> registered name or checkpoint) replaces some of the setting's models, e.g.
    ``{"ours": "fmnist-linf-ours-6ep"}``; each row records the name it used (``model_name``).
    ``roles`` evaluates only those models (the report has their rows alone): one process per role
    can then share ``work``, and a last run over every role finds all chunks cached.
    """
    setting = SETTINGS[key]
    unknown = (set(models or {}) | set(roles or ())) - set(setting.models)
    if unknown:
        raise ValueError(f"setting {key} has the models {', '.join(setting.models)}, not {', '.join(sorted(unknown))}")
    merged = {**setting.models, **(models or {})}
    if roles is not None:
        if not roles:
            raise ValueError("roles: name at least one model role")
        merged = {role: name for role, name in merged.items() if role in roles}
    setting = replace(setting, models=merged)
    threat = ThreatModel(setting.norm, setting.epsilon, setting.delta)
    x_all, y_all = fashion_mnist("test", limit=cfg.n)
    from .models import load_classifier  # torch-heavy import kept local

    rows, wall = [], {}
    for role, name in setting.models.items():
        path = ensure_model(name, work, train, log)
        clf = load_classifier(str(path), device=cfg.device)
        card = clf.card or {}
        # What decides this model's figures: not the models of the other roles.
        ident = {"model": name, "role": role, "model_sha": hashlib.sha256(path.read_bytes()).hexdigest()[:12],
                 "setting": {k: v for k, v in asdict(setting).items() if k != "models"},
                 "robustify": _robustify_identity(cfg.robustify, setting, threat), "attacks": list(cfg.attacks),
                 "whitebox": cfg.whitebox, "whitebox_attacks": cfg.whitebox_attacks, "seed": cfg.seed,
                 **({"noise_samples": cfg.noise_samples, "predict_samples": cfg.predict_samples,
                     "certify": [cfg.certify_n0, cfg.certify_n, cfg.certify_alpha]} if setting.sigma else {})}
        folder = work / key / f"{name}-{_key(ident)}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "identity.json").write_text(json.dumps(ident, indent=2, default=str) + "\n")
        parts = {"none": [], "ours": []}
        seconds, devices = 0.0, {}
        start = 0
        while start < cfg.n:
            cached = _cached_chunk(folder, start, cfg.n)
            if cached is not None:
                stop, done = cached
                log(f"{key} {name} images {start}-{stop}: cached")
            else:
                stop = min(start + cfg.chunk, cfg.n)
                cache = folder / f"{start:05d}-{stop:05d}.json"
                torch.manual_seed(cfg.seed + start)
                x, y = x_all[start:stop].to(cfg.device), y_all[start:stop].to(cfg.device)
                t0 = time.perf_counter()
                if setting.sigma is None:
                    ecfg = EvalConfig(attacks=tuple(cfg.attacks), whitebox=cfg.whitebox,
                                      whitebox_attacks=cfg.whitebox_attacks, batch_size=cfg.chunk,
                                      robustify=cfg.robustify, quantize=True)
                    chunk_rows = evaluate(clf.model, x, y, threat, ecfg, model_name=role, device=cfg.device)
                else:
                    chunk_rows = evaluate_smoothed(clf.model, x, y, threat, setting.sigma, cfg)
                done = {"n": stop - start, "seconds": time.perf_counter() - t0, "rows": chunk_rows,
                        "device": _device_name(cfg.device), "torch": torch.__version__}
                cache.write_text(json.dumps(done, indent=1) + "\n")
                log(f"{key} {name} images {start}-{stop}: {done['seconds']:.0f} s " + ", ".join(
                    f"{r['preempt']} " + " ".join(f"{c}={r[c]:.3f}" for c in setting.columns if c in r)
                    for r in chunk_rows))
            seconds += done["seconds"]
            # chunks from before devices were recorded ran on the GPU of bench/gpu_reproduce.sh
            where = done.get("device", "unrecorded")
            devices[where] = devices.get(where, 0) + done["n"]
            for r in done["rows"]:
                parts[r["preempt"]].append({"n": done["n"], "row": r})
            start = stop
        wall[name] = {"evaluation_seconds": round(seconds, 1), "images_by_device": devices,
                      "training_seconds": card.get("wall_seconds"),
                      "training_command": card.get("command")}
        for preempt in ("none", "ours"):
            row = _combine(parts[preempt])
            row.update(model=role, preempt=preempt, model_name=name)
            rows.append(row)
    order = {"adv": 0, "ours": 1, "gaussian": 2}
    rows.sort(key=lambda r: (order[r["model"]], r["preempt"] != "none"))
    for r in rows:
        if r["preempt"] == "ours":
            none = next(o for o in rows if o["model"] == r["model"] and o["preempt"] == "none")
            r["gap_closure"] = {c: gap_closure(none, r, c) for c in setting.columns
                                if c.startswith("greybox") and gap_closure(none, r, c) is not None}
    return {"dataset": "fashion-mnist", "setting": key, "n_images": cfg.n, "norm": setting.norm,
            "epsilon": setting.epsilon, "delta": setting.delta, "sigma": setting.sigma,
            "eps_sweep": default_eps_sweep(setting.epsilon), "robustify": asdict(cfg.robustify),
            "attacks": list(cfg.attacks), "device": cfg.device, "threads": torch.get_num_threads(),
            "device_name": _device_name(cfg.device),
            "torch": torch.__version__,
            "wall": wall, "rows": rows, "paper_gap_closure": PAPER_GAP_CLOSURE.get(key)}


# ------------------------------------------------------------------------------------ reports
_TITLES = {"clean": "Clean", "greybox_pgd": "Grey-box PGD", "greybox_aa": "Grey-box AA", "whitebox_pgd": "White-box PGD",
           "whitebox_aa": "White-box AA", "greybox_pgd10": "Grey-box PGD x10", "whitebox_pgd10": "White-box PGD x10",
           "certified": "Certified (r = 0.5)"}
_NAMES = {"adv": "ADV", "ours": "Ours", "gaussian": "Gaussian"}


def markdown(report: dict) -> str:
    """The report as markdown: the table in the paper's layout, gap closure, costs."""
    s = SETTINGS[report["setting"]]
    cols = [c for c in s.columns if any(c in r for r in report["rows"])]
    head = (f"# Fashion-MNIST, {report['setting']}: {report['norm']} epsilon = {report['epsilon']}, "
            f"delta = {report['delta']}" + (f", sigma = {report['sigma']}" if report["sigma"] else "") + "\n\n"
            f"{report['n_images']} test images (the first of the test set). Accuracy in %; an image counts when it "
            "is correctly classified and the attack does not change that. `Ours` rows are Preempt's robustification "
            "at its defaults, evaluated on the 8-bit image. White-box: reconstruction (Algorithm 3) and the attack "
            f"swept over eps' in {{{', '.join(f'{e:g}' for e in report['eps_sweep'])}}} (Algorithm 4), an attack "
            "counting only inside B_eps(x_o); the column is the lowest over the sweep. " + _where(report) + "\n\n")
    lines = ["| Model | Preempt. | " + " | ".join(_TITLES[c] for c in cols) + " | passes/image |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for r in report["rows"]:
        lines.append(f"| {_NAMES[r['model']]} | {'Ours' if r['preempt'] == 'ours' else 'None'} | " + " | ".join(
            f"{100 * r[c]:.2f}" if c in r else "-" for c in cols) + f" | {r.get('passes', 0):.0f} |")
    gaps = [r for r in report["rows"] if r.get("gap_closure")]
    out = head + "\n".join(lines) + "\n"
    if gaps:
        gcols = sorted({c for r in gaps for c in r["gap_closure"]}, key=cols.index)
        out += "\nGap closure (grey-box accuracy of robustified - of originals) / (clean - grey-box of originals):\n\n"
        out += "| Model | " + " | ".join(_TITLES[c] for c in gcols) + " |\n|---|" + "---|" * len(gcols) + "\n"
        for r in gaps:
            out += f"| {_NAMES[r['model']]} | " + " | ".join(f"{r['gap_closure'][c]:.2f}" if c in r["gap_closure"]
                                                         else "-" for c in gcols) + " |\n"
        if report.get("paper_gap_closure"):
            out += ("\nThe paper's CIFAR-10 (ADV, Ours) row gives " + ", ".join(
                f"{_TITLES[c]} {v:.2f}" for c, v in report["paper_gap_closure"].items()) + ".\n")
    out += ("\n| Model | training command | training s | evaluation s | images by device |\n"
            "|---|---|---|---|---|\n")
    for name, w in report["wall"].items():
        where = ", ".join(f"{k}: {v}" for k, v in w.get("images_by_device", {}).items())
        out += (f"| {name} | `{w.get('training_command')}` | {w.get('training_seconds')} | {w['evaluation_seconds']} "
                f"| {where} |\n")
    return out


def _where(report: dict) -> str:
    """Which machine evaluated the images: one sentence."""
    here = f"{report.get('device_name', report['device'])} (torch {report.get('torch', '?')})"
    devices = {d for w in report["wall"].values() for d in w.get("images_by_device", {})}
    if devices <= {report.get("device_name", report["device"])}:
        return f"Ran on {here}."
    return (f"This run was on {here}; some chunks of images came from earlier runs on other machines "
            "(the last column of the cost table).")


def plot(report: dict, path: Path) -> None:
    """White-box accuracy against the reconstruction attack's budget eps' (Algorithm 4's sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in report["rows"]:
        for key, v in r.items():
            if not key.endswith("_by_eps"):
                continue
            atk = key[len("whitebox_"):-len("_by_eps")]
            eps = sorted(v, key=float)
            ax.plot([float(e) for e in eps], [100 * v[e] for e in eps], marker="o",
                    label=f"({_NAMES[r['model']]}, Ours) white-box {atk.upper()}")
            none = next(o for o in report["rows"] if o["model"] == r["model"] and o["preempt"] == "none")
            if f"greybox_{atk}" in none:
                ax.axhline(100 * none[f"greybox_{atk}"], ls="--", lw=1, color=ax.lines[-1].get_color(),
                           label=f"({_NAMES[r['model']]}, None) {atk.upper()} at eps")
    ax.set_xlabel("eps' of the white-box attack on the reconstruction")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Fashion-MNIST {report['setting']}, eps = delta = {report['epsilon']}, {report['n_images']} images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    key = report["setting"]
    paths = [out_dir / f"{key}.json", out_dir / f"{key}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    if any(k.endswith("_by_eps") for r in report["rows"] for k in r):
        paths.append(out_dir / f"{key}_whitebox.png")
        plot(report, paths[-1])
    return paths
