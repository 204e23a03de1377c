"""``GET /v1/models``: the classifiers this service protects against, and the effort presets."""

from __future__ import annotations

from fastapi import APIRouter

from preempt.api.deps import CardsDep
from preempt.registry import DEFAULT_MODEL
from preempt.request import PRESETS

router = APIRouter(prefix="/v1", tags=["models"])
CARD_FIELDS = ("arch", "dataset", "threat", "input_size", "channels", "class_names", "figures", "method")


@router.get("/models", summary="The classifiers this service protects against")
async def list_models(cards: CardsDep):
    return {"models": [{"name": name, "default": name == DEFAULT_MODEL, **{k: card.get(k) for k in CARD_FIELDS}}
                       for name, card in cards.items()],
            "presets": PRESETS}
