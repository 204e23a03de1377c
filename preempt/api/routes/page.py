"""``GET /``: the web page (``preempt/web``), and its files under ``/ui``. Open without a key (the page asks for
one and sends it with its API calls); left out of the OpenAPI schema, which describes the API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
# The page and its files load nothing from any other origin: the browser enforces it.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def page():
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={**HEADERS, "Cache-Control": "no-cache"})


class PageFiles(StaticFiles):
    """The page's script and style sheet, with the page's security headers."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app) -> None:
    app.include_router(router)
    app.mount("/ui", PageFiles(directory=WEB_DIR), name="ui")
