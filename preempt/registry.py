"""The models Preempt knows by name and their cards, without torch (the API reads this too).

* Shipped: ``preempt/models/NAME.pt`` with its model card ``NAME.json``.
* Added (``preempt models add``): ``MODELS_DIR/NAME.{onnx,pt,pt2}`` with ``NAME.json``, in the data
  directory (:func:`user_models_dir`), which the API and every worker of one deployment share.

A model file given by path may have a sidecar card ``MODEL.json`` beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "fmnist-linf-ours-12ep"  # preemptively robust training (Algorithm 2), linf 0.1; docs/models.md


def user_models_dir() -> Path:
    """Where added models live: ``PREEMPT_MODELS_DIR``, else ``PREEMPT_DATA_DIR/models``, else
    ``~/.local/share/preempt/models`` (the default data directory of ``preempt serve``)."""
    if os.environ.get("PREEMPT_MODELS_DIR"):
        return Path(os.environ["PREEMPT_MODELS_DIR"])
    return Path(os.environ.get("PREEMPT_DATA_DIR") or Path.home() / ".local/share/preempt") / "models"


def shipped_models() -> dict:
    """Name -> checkpoint path of the models shipped in ``preempt/models`` (``NAME.pt`` + ``NAME.json``)."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.pt")) if p.with_suffix(".json").exists()}


def added_models(folder: Optional[Path] = None) -> dict:
    """Name -> model file of the models added to ``folder`` (default :func:`user_models_dir`): each card
    ``NAME.json`` names its file (``"file"``), which must be there."""
    folder = folder or user_models_dir()
    found = {}
    if folder.is_dir():
        for card_path in sorted(folder.glob("*.json")):
            try:
                card = json.loads(card_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a card being written, or not one of ours
            model = folder / str(card.get("file", ""))
            if card.get("file") and model.is_file() and card_path.stem not in found:
                found[card_path.stem] = model
    return found


def registered_models() -> dict:
    """Name -> model file of every model known by name: the shipped ones, then the added ones."""
    shipped = shipped_models()
    return {**shipped, **{k: v for k, v in added_models().items() if k not in shipped}}


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


class Catalog:
    """Name -> card of every model known by name, read again only when the added models' folder changes
    (its modification time: adding, replacing or removing a model renames or deletes a file in it)."""

    def __init__(self):
        self._stamp: object = ()
        self._cards: dict = {}

    def cards(self) -> dict:
        folder = user_models_dir()
        try:
            stamp = (str(folder), folder.stat().st_mtime_ns)
        except OSError:
            stamp = (str(folder), None)
        if stamp != self._stamp:
            cards = {}
            for name in registered_models():
                try:
                    cards[name] = model_card(name)
                except (OSError, ValueError, KeyError):
                    continue  # removed meanwhile
            self._cards, self._stamp = cards, stamp
        return self._cards
