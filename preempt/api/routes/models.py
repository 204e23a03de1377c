"""``GET /v1/models``: the classifiers this service protects against, and the effort presets."""

from __future__ import annotations

from fastapi import APIRouter

from preempt.api import errors
from preempt.api.deps import CallerDep, CardsDep
from preempt.registry import DEFAULT_MODEL
from preempt.request import PRESETS
from preempt.schemas import ModelInfo, ModelList

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList, summary="The classifiers this service protects against",
            responses=errors.documented(errors.Unauthorized, errors.Forbidden))
async def list_models(cards: CardsDep, caller: CallerDep):
    return ModelList(models=[ModelInfo(name=name, default=name == DEFAULT_MODEL,
                                       **{k: card.get(k) for k in ModelInfo.model_fields
                                          if card.get(k) is not None and k not in ("name", "default")})
                             for name, card in cards.items()],
                     presets=PRESETS)
