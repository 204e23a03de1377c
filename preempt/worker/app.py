"""The Celery worker: one process per device, prefetch 1, late acknowledgement, leases.

``preempt worker --device cuda:0`` (or ``cpu``) runs :func:`run_worker`: a solo-pool Celery worker,
so the model is loaded in this process (never before a fork) and its device is the one given; for
``cuda:N`` ``CUDA_VISIBLE_DEVICES`` is set to ``N`` before torch starts, so each worker sees one GPU.

Fault tolerance, beyond Celery's late acknowledgement:

* A task claims its job with a lease in Redis (:meth:`JobStore.claim`); a heartbeat thread renews
  the leases of the jobs it runs every ``lease_seconds / 3``.
* A janitor thread in every worker looks at running jobs every ``lease_seconds / 2``: a job whose
  lease lapsed lost its worker (killed, OOM, machine gone) and is queued again, at most
  ``max_attempts`` runs in all, after which it fails with "worker lost". A killed worker's job so
  finishes once any worker is alive, within seconds, without waiting for the broker's visibility
  timeout (which stays as the last resort and is longer than the longest job).
* Duplicate messages (redelivery after a requeue) find the job ended or running and do nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import List, Optional, Set

from preempt.queue import TASK_NAME, enqueue, make_celery
from preempt.settings import Settings
from preempt.keys import KeyStore
from preempt.store import ENDED, JobStore, redis_client
from preempt.webhooks import deliver_later

log = logging.getLogger("preempt.worker")


class Heartbeat(threading.Thread):
    """Renews the leases of the jobs this worker holds; announces the worker; runs the janitor."""

    def __init__(self, store: JobStore, celery_app, settings: Settings, owner: str, info: dict):
        super().__init__(daemon=True, name="preempt-heartbeat")
        self.store, self.celery_app, self.settings, self.owner, self.info = store, celery_app, settings, owner, info
        self.held: Set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def hold(self, job_ids: List[str]) -> None:
        with self.lock:
            self.held.update(job_ids)

    def drop(self, job_ids: List[str]) -> None:
        with self.lock:
            self.held.difference_update(job_ids)
        for j in job_ids:
            self.store.release_lease(j, self.owner)

    def run(self) -> None:
        lease, beat = self.settings.lease_seconds, self.settings.heartbeat_seconds
        last_janitor = 0.0
        waiting_since: Optional[float] = None  # since when messages wait in the queue while this worker idles
        first = True
        while first or not self.stop.wait(min(lease / 3, beat / 2)):
            first = False
            try:
                with self.lock:
                    held = list(self.held)
                for j in held:
                    self.store.renew_lease(j, self.owner, lease)
                # A worker that stops beating stops counting as alive within `beat` seconds.
                self.store.beat(self.owner, {**self.info, "jobs": held, "time": time.time()}, beat)
                if time.monotonic() - last_janitor >= lease / 2:
                    last_janitor = time.monotonic()
                    janitor(self.store, self.celery_app, self.settings)
                waiting = not held and self.store.r.llen(self.settings.queue) > 0
                waiting_since = (waiting_since or time.monotonic()) if waiting else None
                if waiting_since is not None and time.monotonic() - waiting_since > self.settings.stall_seconds:
                    # The known failure of a Celery consumer after a broker outage: connected, yet it takes
                    # nothing. Exit; `preempt serve` (or the container's restart policy) starts a fresh one.
                    log.error("messages have waited %.0f s while this worker was idle: its consumer is stuck; "
                              "exiting to be restarted", time.monotonic() - waiting_since)
                    os._exit(3)
            except Exception:  # noqa: BLE001 - a Redis hiccup must not kill the heartbeat
                log.exception("heartbeat failed; retrying")


def janitor(store: JobStore, celery_app, settings: Settings) -> int:
    """Queue again the running jobs whose worker is gone; returns how many were requeued."""
    requeued = 0
    for job_id in store.active_ids():
        job = store.get(job_id)
        if job is None or job["status"] != "running" or store.lease_held(job_id):
            continue
        if job["attempts"] >= settings.max_attempts:
            store.end(job_id, "failed", ["running"],
                      error=f"worker lost {job['attempts']} times while running this job; giving up")
            log.warning("job %s failed after %d lost runs", job_id, job["attempts"])
            notify(store, settings, [job_id])
        elif store.requeue(job_id):
            enqueue(celery_app, job_id, settings.queue)
            requeued += 1
            log.warning("job %s lost its worker %s; queued again", job_id, job.get("worker"))
    return requeued


def notify(store: JobStore, settings: Settings, job_ids: List[str]) -> None:
    """Deliver the webhook of each ended job that asked for one (in the background)."""
    keys = KeyStore(store.r)
    for job_id in job_ids:
        try:
            job = store.get(job_id)
            if job and job.get("callback_url") and job["status"] in ENDED:
                secret = keys.secret_of(job.get("owner", "")) or settings.webhook_secret
                deliver_later(store, job_id, secret, settings.webhook_retry_seconds)
        except Exception:  # noqa: BLE001 - a webhook never takes the worker down
            log.exception("webhook of job %s not started", job_id)


def create_worker_app(settings: Settings, device: str, owner: str):
    """The Celery app with the job task bound to this process's store, models and heartbeat."""
    from preempt.worker.tasks import RUNNERS, ModelCache, release_memory, run_robustify  # torch is imported here

    app = make_celery(settings)
    store = JobStore(redis_client(settings.require_url()), settings.result_ttl)
    models = ModelCache(device, settings.precision)
    beat = Heartbeat(store, app, settings, owner, {"device": device, "pid": os.getpid(), "host": socket.gethostname()})

    @app.task(name=TASK_NAME)
    def run_job(job_id: str) -> str:
        job = store.get(job_id)
        if job is None or job["status"] in ENDED:
            return "ended"
        if job["status"] != "queued" or not store.claim(job_id, owner, settings.lease_seconds):
            return "taken"
        claimed = [job_id]
        if job["kind"] == "robustify" and job.get("batch"):
            # Take the compatible jobs already queued; keep looking while more keep arriving
            # (every 0.1 s), for at most batch_wait seconds in all. A lone job starts at once.
            deadline = time.monotonic() + settings.batch_wait
            while len(claimed) < settings.max_batch:
                grabbed = 0
                for other in store.queued_in_batch(job["batch"], settings.max_batch):
                    if len(claimed) < settings.max_batch and other not in claimed and \
                            store.claim(other, owner, settings.lease_seconds):
                        claimed.append(other)
                        grabbed += 1
                if not grabbed or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        beat.hold(claimed)
        jobs = [j for j in (store.get(i) for i in claimed) if j is not None]
        log.info("running %s job(s) %s", job["kind"], claimed)
        try:
            if job["kind"] == "robustify":
                run_robustify(store, models, jobs, settings.max_pixels)
            else:
                RUNNERS[job["kind"]](store, models, jobs[0], settings.max_pixels)
        except Exception as e:  # noqa: BLE001 - a job's failure is reported on the job, never kills the worker
            log.exception("job(s) %s failed", claimed)
            for j in claimed:
                store.end(j, "failed", ["running"], error=f"internal error: {type(e).__name__}: {e}")
        finally:
            beat.drop(claimed)
            release_memory()
        notify(store, settings, claimed)
        return "done"

    app.preempt_heartbeat = beat
    return app


def run_worker(device: str = "cpu", name: Optional[str] = None, loglevel: str = "INFO") -> None:
    """Run one worker in this process until it is stopped."""
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda:0"
    settings = Settings()
    owner = name or f"worker-{socket.gethostname()}-{os.getpid()}"
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_worker_app(settings, device, owner)
    app.preempt_heartbeat.start()
    try:
        app.worker_main(argv=["worker", "--pool=solo", "--concurrency=1", "-Q", settings.queue, "-n", f"{owner}@%h",
                              f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])
    finally:
        app.preempt_heartbeat.stop.set()
        try:
            app.preempt_heartbeat.store.forget_worker(owner)  # no longer counted as alive, at once
        except Exception:  # noqa: BLE001 - Redis may be what stopped us
            pass
