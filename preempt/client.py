"""A Python client of the Preempt service (httpx; sync and async). Imports no torch.

    from preempt.client import Client

    with Client("http://127.0.0.1:8000") as preempt:
        job = preempt.robustify("photo.jpg", preset="low")    # submit: a Job, queued
        job = preempt.wait(job, timeout=120)                   # poll until it ends
        open("protected.png", "wb").write(preempt.result(job))
        print(job.report["verified"])

Results are the API's own models (:mod:`preempt.schemas`); every error answer raises an
:class:`ApiError` (one subclass per status family) carrying the server's ``code`` and ``detail``.
:class:`AsyncClient` has the same methods as coroutines.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Union

import httpx

from preempt.schemas import Job, ModelList

Image = Union[str, Path, bytes]


class ApiError(Exception):
    """An error answer: ``status`` (HTTP), ``code`` (the body's ``error``) and ``detail``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class BadRequest(ApiError):
    """4xx: the request can be fixed (a bad parameter, an unreadable image, an unknown job)."""


class NotFound(BadRequest):
    """404: no such job (unknown, deleted or expired), or no result."""


class ServiceUnavailable(ApiError):
    """5xx: the service cannot take the job now; try again later."""


class JobFailed(Exception):
    """``wait`` saw the job end without success (``job.status``: failed or cancelled; ``job.error``)."""

    def __init__(self, job: Job):
        super().__init__(f"job {job.job_id} {job.status}: {job.error}")
        self.job = job


class Timeout(Exception):
    """``wait`` ran out of time; ``job`` is its last state."""

    def __init__(self, job: Job, timeout: float):
        super().__init__(f"job {job.job_id} still {job.status} after {timeout:g} s")
        self.job = job


def verify_signature(secret: str, body: bytes, header: str, tolerance: float = 300.0) -> bool:
    """Whether a webhook's ``Preempt-Signature`` header signs ``body`` with ``secret`` (the key's
    ``webhook_secret``), made at most ``tolerance`` seconds ago (a replay of an old delivery fails)."""
    import hashlib
    import hmac

    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
    except (ValueError, KeyError):
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - t) <= tolerance and hmac.compare_digest(expected, fields.get("v1", ""))


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        code, detail = body["error"], body["detail"]
    except (ValueError, KeyError, TypeError):
        code, detail = "http_error", response.text[:200]
    kind = NotFound if response.status_code == 404 else BadRequest if response.status_code < 500 else ServiceUnavailable
    raise kind(response.status_code, code, detail)


def _upload(image: Image) -> tuple:
    """``(filename, bytes)`` of a path or of bytes."""
    if isinstance(image, (bytes, bytearray)):
        return "image", bytes(image)
    path = Path(image)
    return path.name, path.read_bytes()


def _fields(params: dict) -> dict:
    """Form fields as the API reads them (booleans as true/false, ``None`` left out)."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items() if v is not None}


def _job_id(job: Union[Job, str]) -> str:
    return job.job_id if isinstance(job, Job) else job


class Client:
    """The service at ``base_url``; ``api_key`` is sent as ``Authorization: Bearer KEY`` when given."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: Optional[str] = None,
                 timeout: float = 60.0, poll_interval: float = 0.5, transport: Optional[httpx.BaseTransport] = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self.poll_interval = poll_interval

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        _raise_for(response)
        return response.json()

    def robustify(self, image: Image, **params: Any) -> Job:
        """Submit ``image`` (a path or bytes) with the form fields ``params`` (model, preset, norm, epsilon,
        delta, iterations, verify, retry, strength, smooth, texture, survive, format, quality); returns the job (queued, or ended if ``wait`` was given)."""
        wait = params.pop("wait", None)
        response = self.http.post("/v1/robustify", files={"file": _upload(image)}, data=_fields(params),
                                  params={"wait": wait} if wait else None)
        body = self._json(response)
        return Job.model_validate(body) if response.status_code == 200 else self.job(body["job_id"])

    def job(self, job: Union[Job, str]) -> Job:
        return Job.model_validate(self._json(self.http.get(f"/v1/jobs/{_job_id(job)}")))

    def wait(self, job: Union[Job, str], timeout: float = 600.0) -> Job:
        """Poll until the job ends; the ended job, or :class:`JobFailed` / :class:`Timeout`."""
        deadline = time.monotonic() + timeout
        current = self.job(job)
        while not current.ended:
            if time.monotonic() >= deadline:
                raise Timeout(current, timeout)
            time.sleep(self.poll_interval)
            current = self.job(current)
        if current.status != "succeeded":
            raise JobFailed(current)
        return current

    def result(self, job: Union[Job, str]) -> bytes:
        """The PNG of a succeeded job."""
        response = self.http.get(f"/v1/jobs/{_job_id(job)}/result")
        _raise_for(response)
        return response.content

    def cancel(self, job: Union[Job, str]) -> None:
        _raise_for(self.http.delete(f"/v1/jobs/{_job_id(job)}"))

    def models(self) -> ModelList:
        return ModelList.model_validate(self._json(self.http.get("/v1/models")))

    def robustify_many(self, images: Iterable[Image], concurrency: int = 4, timeout: float = 600.0,
                       progress: Optional[Callable[[int, int], None]] = None, **params: Any) -> List[Job]:
        """Protect many images, at most ``concurrency`` jobs in flight; the ended jobs in the order given.
        ``progress(done, total)`` after each one. A job that fails is returned as it ended."""
        images = list(images)
        done: List[Optional[Job]] = [None] * len(images)
        pending: dict = {}
        queue = list(enumerate(images))
        finished = 0
        deadline = time.monotonic() + timeout
        while queue or pending:
            while queue and len(pending) < concurrency:
                i, image = queue.pop(0)
                pending[i] = self.robustify(image, **params)
            for i, job in list(pending.items()):
                current = self.job(job)
                if current.ended:
                    done[i] = current
                    del pending[i]
                    finished += 1
                    if progress is not None:
                        progress(finished, len(images))
                else:
                    pending[i] = current
            if pending:
                if time.monotonic() >= deadline:
                    raise Timeout(next(iter(pending.values())), timeout)
                time.sleep(self.poll_interval)
        return done  # type: ignore[return-value]


class AsyncClient:
    """:class:`Client` for asyncio: the same methods, as coroutines."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: Optional[str] = None,
                 timeout: float = 60.0, poll_interval: float = 0.5,
                 transport: Optional[httpx.AsyncBaseTransport] = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self.poll_interval = poll_interval

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def robustify(self, image: Image, **params: Any) -> Job:
        wait = params.pop("wait", None)
        response = await self.http.post("/v1/robustify", files={"file": _upload(image)}, data=_fields(params),
                                        params={"wait": wait} if wait else None)
        _raise_for(response)
        body = response.json()
        return Job.model_validate(body) if response.status_code == 200 else await self.job(body["job_id"])

    async def job(self, job: Union[Job, str]) -> Job:
        response = await self.http.get(f"/v1/jobs/{_job_id(job)}")
        _raise_for(response)
        return Job.model_validate(response.json())

    async def wait(self, job: Union[Job, str], timeout: float = 600.0) -> Job:
        deadline = time.monotonic() + timeout
        current = await self.job(job)
        while not current.ended:
            if time.monotonic() >= deadline:
                raise Timeout(current, timeout)
            await asyncio.sleep(self.poll_interval)
            current = await self.job(current)
        if current.status != "succeeded":
            raise JobFailed(current)
        return current

    async def result(self, job: Union[Job, str]) -> bytes:
        response = await self.http.get(f"/v1/jobs/{_job_id(job)}/result")
        _raise_for(response)
        return response.content

    async def cancel(self, job: Union[Job, str]) -> None:
        _raise_for(await self.http.delete(f"/v1/jobs/{_job_id(job)}"))

    async def models(self) -> ModelList:
        response = await self.http.get("/v1/models")
        _raise_for(response)
        return ModelList.model_validate(response.json())

    async def robustify_many(self, images: Iterable[Image], concurrency: int = 4, timeout: float = 600.0,
                             progress: Optional[Callable[[int, int], None]] = None, **params: Any) -> List[Job]:
        images = list(images)
        gate = asyncio.Semaphore(concurrency)
        finished = 0

        async def one(image: Image) -> Job:
            nonlocal finished
            async with gate:
                job = await self.robustify(image, **params)
                try:
                    job = await self.wait(job, timeout)
                except JobFailed as e:
                    job = e.job
            finished += 1
            if progress is not None:
                progress(finished, len(images))
            return job

        return list(await asyncio.gather(*(one(image) for image in images)))
