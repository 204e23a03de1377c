"""Service settings: one :class:`Settings`, read from ``PREEMPT_*`` environment variables (docs/deploy.md)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from preempt.request import MAX_ITERATIONS


class Settings(BaseSettings):
    """What the API, the workers and ``preempt serve`` read from the environment; each field is ``PREEMPT_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="PREEMPT_", frozen=True, extra="ignore")

    redis_url: Optional[str] = Field(None, description="redis://, rediss:// or unix:///path; unset: "
                                                       "`preempt serve` starts an embedded Redis")
    queue: str = Field("preempt", min_length=1, description="the Celery queue jobs are sent to")
    result_ttl: int = Field(24 * 3600, ge=1, description="seconds a result (and its job) is kept after the end")
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1, description="largest upload")
    max_pixels: int = Field(40_000_000, ge=1, description="largest image (width x height)")
    max_iterations: int = Field(MAX_ITERATIONS, ge=1, le=MAX_ITERATIONS,
                                description="the largest `iterations` a request may ask for")
    lease_seconds: float = Field(30.0, gt=0, description="a worker silent this long is presumed dead")
    max_attempts: int = Field(3, ge=1, description="runs of one job before it fails as 'worker lost'")
    visibility_timeout: int = Field(6 * 3600, ge=1, description="the broker's last-resort redelivery; "
                                                                "longer than the longest job")
    batch_wait: float = Field(0.5, ge=0, description="seconds a worker waits for compatible jobs to batch")
    max_batch: int = Field(32, ge=1, description="most jobs robustified together")
    redis_maxmemory: str = Field("1gb", pattern=r"^[0-9]+(b|kb|mb|gb)?$",
                                 description="memory of the embedded Redis (0: no limit); when it is full, uploads "
                                             "are refused with 503 and no job is ever evicted")
    heartbeat_seconds: float = Field(5.0, gt=0, description="how often a worker says it is alive; a silent one "
                                                             "stops counting as ready after 2 of these")
    stall_seconds: float = Field(60.0, gt=0, description="a job queued this long while every worker is idle "
                                                         "means the workers stopped consuming: not ready")
    auth: Literal["auto", "required", "off"] = Field(
        "auto", description="required: every route but /healthz, /readyz and the docs needs an API key; auto: "
                            "required when `preempt serve` listens beyond loopback, off otherwise")
    webhook_allow: str = Field("", description="comma-separated hosts, addresses or networks in private ranges "
                                                "that callback URLs may point at (e.g. 127.0.0.1 for tests)")
    webhook_retry_seconds: float = Field(300.0, ge=0, description="how long a webhook delivery is retried")
    webhook_secret: str = Field("", description="the signing secret of webhooks of jobs without an API key "
                                                "(auth off); empty: unsigned")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="the classifier's precision while robustifying")

    def require_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("PREEMPT_REDIS_URL is not set (`preempt serve` sets it for its embedded Redis)")
        return self.redis_url
