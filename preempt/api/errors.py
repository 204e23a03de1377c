"""Every failure the API answers, one type each, mapped to its status code by type.

An error is JSON ``{"error": CODE, "detail": MESSAGE}``; the detail names the field at fault and
says what to do.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from preempt import imagefile
from preempt.request import RequestError


class ApiError(Exception):
    """Answered as ``status`` with ``{"error": code, "detail": detail}``."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, headers: Optional[dict] = None):
        super().__init__(detail)
        self.detail, self.headers = detail, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "detail": self.detail}, status_code=self.status, headers=self.headers)


class InvalidParameter(ApiError):
    status, code = 422, "invalid_parameter"


class InvalidRequest(ApiError):
    status, code = 422, "invalid_request"


class CorruptImage(ApiError):
    status, code = 400, "bad_image"


class ImageTooLarge(ApiError):
    status, code = 413, "too_many_pixels"


class BodyTooLarge(ApiError):
    status, code = 413, "too_large"


class UnsupportedImage(ApiError):
    status, code = 415, "unsupported_media_type"


class JobNotFound(ApiError):
    status, code = 404, "not_found"


class NoResult(ApiError):
    status, code = 404, "no_result"


class NotReady(ApiError):
    status, code = 409, "not_ready"


class QueueUnavailable(ApiError):
    status, code = 503, "queue_unavailable"


class Internal(ApiError):
    status, code = 500, "internal"


# What an upload that is not a usable image is answered with, by the type of the check that refused it.
IMAGE_ERRORS = {imagefile.UnsupportedImage: UnsupportedImage, imagefile.ImageTooLarge: ImageTooLarge,
                imagefile.CorruptImage: CorruptImage}


def image_error(field: str, e: imagefile.ImageError) -> ApiError:
    return IMAGE_ERRORS.get(type(e), CorruptImage)(f"{field}: {e}")


def install(app: FastAPI) -> None:
    """Answer every error as JSON: ours by type, parameter errors as 422, the framework's as they come."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        return InvalidParameter(str(e)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'request'}: {err['msg']}" for err in e.errors())
        return InvalidRequest(detail).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": "http_error", "detail": str(e.detail)}, status_code=e.status_code)


class BodyLimit:
    """ASGI middleware: refuses bodies over ``limit`` bytes (declared or streamed) with a JSON 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = BodyTooLarge(f"request body over {self.limit} bytes")
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                return await too_big.response()(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_big
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge as e:
            await e.response()(scope, receive, send)
