"""One router per resource. :data:`v1` is the API of version 1 under ``/v1``; the same routes answer
without the prefix (``POST /robustify``): the unversioned paths follow the current version and are left
out of the OpenAPI schema, which names each operation once."""

from fastapi import APIRouter

from preempt.api.routes import evaluation, health, jobs, models, robustify

RESOURCES = (robustify, evaluation, jobs, models)


def api_router() -> APIRouter:
    router = APIRouter()
    for module in RESOURCES:
        router.include_router(module.router, prefix="/v1")
    for module in RESOURCES:
        router.include_router(module.router, include_in_schema=False)
    router.include_router(health.router)
    return router
