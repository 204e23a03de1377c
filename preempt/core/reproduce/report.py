"""Reports of ``preempt reproduce``: markdown in the layout of the paper's tables, JSON, the white-box plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from .settings import SETTINGS


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
