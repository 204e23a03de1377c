"""Prometheus metrics of the API: its own requests, and the job store's state read at scrape time."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from preempt.store import JobStore


class _StoreCollector:
    """Jobs queued/running, jobs ended by outcome, live workers, robustification time: from Redis."""

    def __init__(self, store: JobStore):
        self.store = store

    def collect(self):
        try:
            counts = self.store.status_counts()
            stats = self.store.stats()
            workers = len(self.store.workers())
        except Exception:  # noqa: BLE001 - a scrape while Redis is down reports what it can
            return
        g = GaugeMetricFamily("preempt_jobs", "Jobs not yet ended, by status", labels=["status"])
        for status, n in counts.items():
            g.add_metric([status], n)
        yield g
        c = CounterMetricFamily("preempt_jobs_ended", "Jobs ended, by outcome", labels=["status"])
        for status in ("succeeded", "failed", "cancelled"):
            c.add_metric([status], stats.get(f"jobs_{status}", 0.0))
        yield c
        yield CounterMetricFamily("preempt_jobs_requeued", "Jobs queued again after their worker was lost",
                                  value=stats.get("jobs_requeued", 0.0))
        yield CounterMetricFamily("preempt_robustify_seconds", "Worker seconds spent robustifying",
                                  value=stats.get("robustify_seconds_total", 0.0))
        yield CounterMetricFamily("preempt_robustified_images", "Images robustified",
                                  value=stats.get("robustify_images_total", 0.0))
        yield GaugeMetricFamily("preempt_workers", "Workers whose heartbeat is live", value=workers)


class Metrics:
    def __init__(self, store: JobStore):
        self.registry = CollectorRegistry()
        self.requests = Counter("preempt_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("preempt_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.jobs = Counter("preempt_jobs_submitted", "Jobs accepted", ["kind", "key"], registry=self.registry)
        self.limited = Counter("preempt_requests_limited", "Requests answered 429, by API key and limit",
                               ["key", "limit"], registry=self.registry)
        self.registry.register(_StoreCollector(store))

    def observe(self, request, status: int, seconds: float) -> None:
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.requests.labels(request.method, path, str(status)).inc()
        self.latency.labels(request.method, path).observe(seconds)

    def submitted(self, kind: str, key: str = "") -> None:
        self.jobs.labels(kind, key).inc()

    def refused(self, key: str, limit: str) -> None:
        self.limited.labels(key, limit).inc()

    def render(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
