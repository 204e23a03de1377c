"""One router per resource, gathered in :data:`api_router`."""

from fastapi import APIRouter

from preempt.api.routes import evaluation, health, jobs, models, robustify

api_router = APIRouter()
for module in (robustify, evaluation, jobs, models, health):
    api_router.include_router(module.router)
