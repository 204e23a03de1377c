"""The queue between the API and the workers: Celery on the Redis of the job store, carrying job ids only.

The API sends a job id by task name (:func:`enqueue`), so it never imports the workers' torch code.
"""

from __future__ import annotations

from urllib.parse import urlparse

from preempt.settings import Settings


def celery_broker_url(url: str) -> str:
    """Celery spells a Unix socket ``redis+socket:///path``; redis-py spells it ``unix:///path``."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return "redis+socket://" + parsed.path + (f"?{parsed.query}" if parsed.query else "")
    return url


TASK_NAME = "preempt.run_job"


def make_celery(settings: Settings):
    """The Celery app both sides use: Redis broker, late acks, prefetch 1, no result backend.

    Jobs live in the :class:`JobStore`, so Celery carries only job ids. The visibility timeout is
    the broker's last-resort redelivery of an unacknowledged message; the job leases (see the
    docstring of :mod:`preempt.store`) bring a dead worker's job back within seconds.
    """
    from celery import Celery

    app = Celery("preempt", broker=celery_broker_url(settings.require_url()))
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue(celery_app, job_id: str, queue: str) -> None:
    celery_app.send_task(TASK_NAME, args=[job_id], queue=queue)
