"""The shipped models and their cards, without torch (the API reads this too).

Each shipped model is ``preempt/models/NAME.pt`` with its model card ``NAME.json``; a model file
given by path may have a sidecar card ``MODEL.json`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "fmnist-linf-ours-12ep"  # preemptively robust training (Algorithm 2), linf 0.1; docs/models.md


def registered_models() -> dict:
    """Name -> checkpoint path of the models shipped in ``preempt/models`` (``NAME.pt`` + ``NAME.json``)."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.pt")) if p.with_suffix(".json").exists()}


def model_card(name: str) -> dict:
    """The card of a registered model (``KeyError`` for an unknown name)."""
    return json.loads(registered_models()[name].with_suffix(".json").read_text())


def read_sidecar(path: Path) -> dict:
    """The card beside a model file: ``MODEL.json`` or ``MODEL.pt.json`` (``{}`` without one)."""
    for side in (path.with_suffix(".json"), Path(str(path) + ".json")):
        if side.exists():
            try:
                return json.loads(side.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{side}: not valid JSON ({e})") from e
    return {}


def card_for(name_or_path: str) -> dict:
    """The card of a registered model, or the sidecar card of a model file."""
    if name_or_path in registered_models():
        return model_card(name_or_path)
    return read_sidecar(Path(name_or_path))
