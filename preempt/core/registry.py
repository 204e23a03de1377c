"""What the shipped models and presets are, without torch (the API reads this too).

Each shipped model is ``preempt/models/NAME.pt`` with its model card ``NAME.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "fmnist-linf-ours-12ep"  # preemptively robust training (Algorithm 2), linf 0.1; docs/reproduction.md

# Robustification effort: outer iterations MAXITER, inner steps T, random starts N.
# "medium" is the paper's official setting (100 x (20 + 1) passes per image).
PRESETS = {
    "low": {"iterations": 30, "steps": 10, "samples": 1},
    "medium": {"iterations": 100, "steps": 20, "samples": 1},
    "high": {"iterations": 200, "steps": 20, "samples": 2},
}


def registered_models() -> dict:
    """Name -> checkpoint path of the models shipped in ``preempt/models`` (``NAME.pt`` + ``NAME.json``)."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.pt")) if p.with_suffix(".json").exists()}


def model_card(name: str) -> dict:
    """The card of a registered model (``KeyError`` for an unknown name)."""
    return json.loads(registered_models()[name].with_suffix(".json").read_text())
