"""Every failure the API answers, one type each, mapped to its status code by type.

An error is JSON ``{"error": CODE, "detail": MESSAGE}``; the detail names the field at fault and
says what to do.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import redis

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from preempt import imagefile
from preempt.request import RequestError
from preempt.schemas import ErrorBody


class ApiError(Exception):
    """Answered as ``status`` with ``{"error": code, "detail": detail}``."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    example: ClassVar[str] = ""

    def __init__(self, detail: str, headers: Optional[dict] = None):
        super().__init__(detail)
        self.detail, self.headers = detail, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "detail": self.detail}, status_code=self.status, headers=self.headers)


class InvalidParameter(ApiError):
    """a parameter out of range, unknown, or given in the wrong place"""
    status, code = 422, "invalid_parameter"
    example = "delta: 5 is out of range for linf; allowed (0, 1]"


class InvalidRequest(ApiError):
    """a malformed request (no file, a broken multipart body)"""
    status, code = 422, "invalid_request"
    example = "file: an image file is required (multipart field 'file')"


class CorruptImage(ApiError):
    """an empty, truncated or corrupt image"""
    status, code = 400, "bad_image"
    example = "file: image data is truncated or corrupt (image file is truncated)"


class ImageTooLarge(ApiError):
    """an image with more pixels than PREEMPT_MAX_PIXELS"""
    status, code = 413, "too_many_pixels"
    example = "file: image has 8000x8000 = 64000000 pixels; the limit is 40000000"


class BodyTooLarge(ApiError):
    """a body larger than PREEMPT_MAX_UPLOAD_BYTES"""
    status, code = 413, "too_large"
    example = "request body over 27262976 bytes"


class UnsupportedImage(ApiError):
    """not an image, or not PNG, JPEG or WebP"""
    status, code = 415, "unsupported_media_type"
    example = "file: not an image this service reads (PNG, JPEG or WebP expected)"


class JobNotFound(ApiError):
    """no such job: unknown, deleted or expired"""
    status, code = 404, "not_found"
    example = "no job '3f2a9c0e4b8d4e6f9a1b2c3d4e5f6a7b' (unknown, deleted or expired)"


class NoResult(ApiError):
    """the job has no image result, or it expired"""
    status, code = 404, "no_result"
    example = "this job has no image result, or it expired"


class NotReady(ApiError):
    """the job has not succeeded (yet)"""
    status, code = 409, "not_ready"
    example = "job is running; the result exists once it has succeeded"


class Unauthorized(ApiError):
    """no API key, or an unknown one (Authorization: Bearer KEY)"""
    status, code = 401, "unauthorized"
    example = "an API key is required: send Authorization: Bearer KEY"


class Forbidden(ApiError):
    """a revoked API key, or a route for admin keys"""
    status, code = 403, "forbidden"
    example = "this API key was revoked"


class RateLimited(ApiError):
    """more requests than the key's rate, or more queued and running jobs than its cap (see Retry-After)"""
    status, code = 429, "rate_limited"
    example = "more than 60 requests per minute for key 'acme'; retry in 12 s"


class IdempotencyConflict(ApiError):
    """the Idempotency-Key was used before with another request"""
    status, code = 409, "idempotency_conflict"
    example = "Idempotency-Key 'upload-42' was used with a different request"


class QueueUnavailable(ApiError):
    """the job queue cannot be reached; nothing was kept"""
    status, code = 503, "queue_unavailable"
    example = "the job queue is unavailable (ConnectionError)"


class StoreUnavailable(ApiError):
    """the job store (Redis) cannot be reached; try again after Retry-After seconds"""
    status, code = 503, "store_unavailable"
    example = "the job store is unavailable (ConnectionError); try again in 5 s"


class StoreFull(ApiError):
    """the job store is full (PREEMPT_REDIS_MAXMEMORY); try again after Retry-After seconds"""
    status, code = 503, "store_full"
    example = "the job store is full; try again in 30 s"


class Internal(ApiError):
    """a fault of the service"""
    status, code = 500, "internal"
    example = "internal error; see the API log"


# What an upload that is not a usable image is answered with, by the type of the check that refused it.
IMAGE_ERRORS = {imagefile.UnsupportedImage: UnsupportedImage, imagefile.ImageTooLarge: ImageTooLarge,
                imagefile.CorruptImage: CorruptImage}


def image_error(field: str, e: imagefile.ImageError) -> ApiError:
    return IMAGE_ERRORS.get(type(e), CorruptImage)(f"{field}: {e}")


def describe(errors: list) -> str:
    """FastAPI's validation errors as one sentence per field: ``"epsilon: Input should be greater than 0"``."""
    parts = []
    for err in errors:
        field = ".".join(str(p) for p in err["loc"][1:]) or "request"
        if err["type"] == "extra_forbidden":
            where = "query parameter" if err["loc"][0] == "query" else "form field"
            parts.append(f"{field}: unknown {where}" + (" (robustify parameters go in the multipart form)"
                                                        if err["loc"][0] == "query" else ""))
        else:
            parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def documented(*errors: type) -> dict:
    """The ``responses`` of a route that may answer ``errors``: each status with the real error body."""
    out: dict = {}
    for error in errors:
        entry = out.setdefault(error.status, {"model": ErrorBody, "description": "", "content": {
            "application/json": {"examples": {}}}})
        entry["description"] = "; ".join(filter(None, [entry["description"], error.__doc__ or error.code]))
        entry["content"]["application/json"]["examples"][error.code] = {"value": {"error": error.code,
                                                                                 "detail": error.example}}
    return out


def install(app: FastAPI) -> None:
    """Answer every error as JSON: ours by type, parameter errors as 422, the framework's as they come."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(redis.RedisError)
    async def _store_error(request: Request, e: redis.RedisError):
        if isinstance(e, redis.exceptions.OutOfMemoryError):
            return StoreFull("the job store is full; try again in 30 s", headers={"Retry-After": "30"}).response()
        return StoreUnavailable(f"the job store is unavailable ({type(e).__name__}); try again in 5 s",
                                headers={"Retry-After": "5"}).response()

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        return InvalidParameter(str(e)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        named = all(len(err["loc"]) > 1 for err in e.errors())
        return (InvalidParameter if named else InvalidRequest)(describe(e.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": "http_error", "detail": str(e.detail)}, status_code=e.status_code)


class BodyLimit:
    """ASGI middleware: refuses bodies over ``limit`` bytes with a JSON 413, whether the size is declared
    (``Content-Length``) or only seen while the body streams in (chunked uploads)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = BodyTooLarge(f"request body over {self.limit} bytes")
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                return await too_big.response()(scope, receive, send)
        seen, answered = 0, False

        async def limited():
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not answered:
                    answered = True
                    await too_big.response()(scope, receive, send)
                if answered:  # the app reads no more of it: for the app the client went away
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not answered:
                await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:  # noqa: BLE001 - what the app raises after the 413 was sent is moot
            if not answered:
                raise
