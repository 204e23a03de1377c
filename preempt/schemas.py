"""The JSON the HTTP API answers, as pydantic models: the API's response models and the client's results.

Torch-free and FastAPI-free, so that :mod:`preempt.client` can use the same types the service
documents in its OpenAPI schema. Timestamps are ISO-8601 (UTC); durations are seconds.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

JobKind = Literal["robustify", "attack", "certify"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ENDED = ("succeeded", "failed", "cancelled")


def utc(seconds: Optional[float]) -> Optional[datetime]:
    """Unix seconds as an aware UTC datetime (``None`` stays ``None``)."""
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


class ErrorBody(BaseModel):
    """Every error: a code to branch on and a sentence naming the field at fault."""

    error: str = Field(examples=["invalid_parameter"])
    detail: str = Field(examples=["delta: 5 is out of range for linf; allowed (0, 1]"])


class JobCreated(BaseModel):
    """A job was accepted: where to poll it and where its result will be."""

    job_id: str = Field(examples=["3f2a9c0e4b8d4e6f9a1b2c3d4e5f6a7b"])
    status_url: str = Field(examples=["/v1/jobs/3f2a9c0e4b8d4e6f9a1b2c3d4e5f6a7b"])
    result_url: Optional[str] = Field(examples=["/v1/jobs/3f2a9c0e4b8d4e6f9a1b2c3d4e5f6a7b/result"])


class Progress(BaseModel):
    iteration: int = Field(ge=0, description="outer iterations done")
    total: int = Field(ge=0, description="outer iterations the job runs at most (0 until it starts)")
    loss: Optional[float] = Field(None, description="the robust loss at the last iteration")


class Timings(BaseModel):
    created: datetime
    started: Optional[datetime] = None
    finished: Optional[datetime] = None
    queued_seconds: float = Field(ge=0, description="seconds from creation to start (or to now)")
    run_seconds: Optional[float] = Field(None, ge=0, description="seconds from start to end (or to now)")


class Job(BaseModel):
    """A job's state; ``report`` once it succeeded (its fields depend on ``kind``: docs/api.md)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "3f2a9c0e4b8d4e6f9a1b2c3d4e5f6a7b", "kind": "robustify", "status": "succeeded",
        "queue_position": None, "progress": {"iteration": 100, "total": 100, "loss": 0.21}, "error": None,
        "result_url": "/v1/jobs/3f2a9c0e4b8d4e6f9a1b2c3d4e5f6a7b/result",
        "timings": {"created": "2026-12-03T12:00:00.100000Z", "started": "2026-12-03T12:00:00.300000Z",
                    "finished": "2026-12-03T12:00:02.000000Z", "queued_seconds": 0.2, "run_seconds": 1.7},
        "attempts": 1,
        "params": {"model": "fmnist-linf-ours-12ep", "norm": "linf", "epsilon": 0.1, "delta": 0.1, "preset": "medium",
                   "iterations": 100, "steps": 20, "samples": 1, "stop_patience": 3, "stop_loss": None,
                   "plateau_window": 20, "verify": "apgd", "retry": False, "strength": "medium", "smooth": True,
                   "texture": False},
        "report": {"model": "fmnist-linf-ours-12ep", "norm": "linf", "epsilon": 0.1, "delta": 0.1, "linf": 0.098,
                   "l2": 1.18, "psnr": 26.0, "ssim": 0.93, "label": 2, "label_name": "Pullover", "label_kept": True,
                   "verified": {"attack": "pgd-20+apgd-ce+apgd-t", "robust": True}, "passes": 168,
                   "iterations_run": 8, "robust_loss": 0.21, "batch_size": 1, "seconds": 1.7}}]})

    job_id: str
    kind: JobKind
    status: JobStatus
    queue_position: Optional[int] = Field(None, ge=0, description="jobs ahead of this one while it is queued")
    progress: Progress
    error: Optional[str] = None
    result_url: Optional[str] = None
    timings: Timings
    attempts: int = Field(ge=0, description="runs started (a lost worker's job runs again)")
    params: Dict[str, Any] = Field(description="the request as resolved, every default filled in")
    report: Optional[Dict[str, Any]] = None

    webhook: Optional[Dict[str, Any]] = Field(None, description="deliveries to callback_url: attempts, "
                                                                 "last_status, delivered")

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @classmethod
    def from_record(cls, job: dict, queue_position: Optional[int] = None) -> "Job":
        """The public view of a job record of the job store (``JobStore.get``)."""
        started, finished, created = job.get("started"), job.get("finished"), job["created"]
        now = time.time()
        return cls(
            job_id=job["job_id"], kind=job["kind"], status=job["status"], queue_position=queue_position,
            progress=Progress(iteration=job["iteration"], total=job["total"], loss=job.get("loss")),
            error=job.get("error"),
            result_url=f"/v1/jobs/{job['job_id']}/result" if job["kind"] != "certify" else None,
            timings=Timings(created=utc(created), started=utc(started), finished=utc(finished),
                            queued_seconds=round(max((started or finished or now) - created, 0.0), 3),
                            run_seconds=round(max((finished or now) - started, 0.0), 3) if started else None),
            attempts=job["attempts"], params=json.loads(job["request"]), report=job.get("report"),
            webhook=job.get("webhook"))


class JobList(BaseModel):
    """The caller's jobs, newest first; ``next_cursor`` fetches the next page (``None``: the last)."""

    jobs: List[Job]
    next_cursor: Optional[str] = None


class Deleted(BaseModel):
    job_id: str
    deleted: Literal[True] = True


class ModelInfo(BaseModel):
    name: str
    default: bool
    arch: Optional[str] = None
    dataset: Optional[str] = None
    threat: Optional[Dict[str, Any]] = Field(None, description="the default threat of requests for this model")
    input_size: Optional[List[int]] = None
    channels: Optional[int] = None
    class_names: Optional[List[str]] = None
    num_classes: Optional[int] = None
    method: Optional[str] = None
    source: Literal["shipped", "added"] = Field("shipped", description="shipped with Preempt, or added with "
                                                                        "preempt models add")
    format: Optional[str] = Field(None, description="onnx, torchscript, export or state_dict")
    description: Optional[str] = Field(None, description="what the model is for, in words")


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "models": [{"name": "fmnist-linf-ours-12ep", "default": True, "arch": "small-cnn", "dataset": "fashion-mnist",
                    "threat": {"norm": "linf", "epsilon": 0.1, "delta": 0.1}, "input_size": [28, 28], "channels": 1,
                    "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                    "Sneaker", "Bag", "Ankle boot"], "method": "preemptive"}],
        "presets": {"low": {"iterations": 30, "steps": 10, "samples": 1}}}]})

    models: List[ModelInfo]
    presets: Dict[str, Dict[str, int]]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unready"]
    workers: List[str] = Field(default_factory=list, description="the live workers")
    detail: Optional[str] = Field(None, description="why it is not ready")
