"""The job store the API and the workers share: Redis, no torch. (:mod:`preempt.queue` carries job ids.)

Keys (all under ``preempt:``):

``job:{id}``      hash: kind, status, request (the typed request as JSON, :mod:`preempt.request`), image
                  (what the upload is, JSON), batch (its batch key), progress, timings, error, report (JSON), attempts
``upload:{id}``   the original upload; deleted the moment its job ends, whatever the ending
``result:{id}``   the protected PNG; expires ``result_ttl`` seconds after the job ends (as does the job)
``lease:{id}``    held by the worker running the job, renewed by a heartbeat thread; when it lapses
                  while the job is ``running``, the worker died and the job is queued again
``active``        set of jobs not yet ended (what the janitor scans)
``queued``        sorted set of the queued jobs by creation time (a job's rank is its queue position)
``worker:{name}`` a live worker's heartbeat (expires when the worker stops beating)
``stat:{name}``   counters behind ``/metrics``

Status moves ``queued -> running -> succeeded | failed``, and to ``cancelled`` from either of the
first two. Every move is a compare-and-set (a Lua script), so a cancel racing a finish has one
winner and an ended job never comes back to life.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Iterable, Optional

import redis

PREFIX = "preempt:"
ENDED = ("succeeded", "failed", "cancelled")

_CAS = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
for i = 1, tonumber(ARGV[1]) do
  if ARGV[1 + i] == status then
    for j = 2 + tonumber(ARGV[1]), #ARGV, 2 do
      redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
    end
    return 1
  end
end
return 0
"""


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10, health_check_interval=30)


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Typed access to the keys above; one instance per process (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, result_ttl: int = 24 * 3600):
        self.r = client
        self.result_ttl = result_ttl
        self._cas = self.r.register_script(_CAS)

    # keys
    @staticmethod
    def key(kind: str, job_id: str) -> str:
        """``preempt:{kind}:{id}`` for kind job, upload, result, lease or batch."""
        return f"{PREFIX}{kind}:{job_id}"

    ACTIVE = PREFIX + "active"
    QUEUED = PREFIX + "queued"

    # creation and reading
    def create(self, job_id: str, kind: str, request: str, upload: Optional[bytes] = None,
               extra_uploads: Optional[dict] = None, batch: str = "", image: Optional[dict] = None,
               owner: str = "", callback_url: str = "") -> None:
        """A queued job of ``kind`` for ``request`` (its JSON); ``batch`` is the key of the jobs it may be
        robustified together with (:meth:`preempt.request.RobustifyRequest.batch_key`)."""
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key("job", job_id), mapping={
            "job_id": job_id, "kind": kind, "status": "queued", "request": request,
            "image": json.dumps(image or {}), "created": repr(now), "attempts": 0, "iteration": 0, "total": 0,
            "batch": batch, "owner": owner, "callback_url": callback_url,
        })
        pipe.zadd(f"{PREFIX}owner:{owner}", {job_id: now})
        pipe.sadd(f"{PREFIX}owner-active:{owner}", job_id)
        if batch:
            pipe.rpush(self.key("batch", batch), job_id)
        if upload is not None:
            pipe.set(self.key("upload", job_id), upload)
        for name, data in (extra_uploads or {}).items():
            pipe.set(self.key("upload", job_id) + f":{name}", data)
        if extra_uploads:
            pipe.hset(self.key("job", job_id), "extra_uploads", ",".join(extra_uploads))
        pipe.sadd(self.ACTIVE, job_id)
        pipe.zadd(self.QUEUED, {job_id: now})
        pipe.execute()

    def active_of(self, owner: str) -> int:
        """Queued and running jobs of ``owner``."""
        return self.r.scard(f"{PREFIX}owner-active:{owner}")

    def jobs_of(self, owner: str, offset: int, limit: int) -> list:
        """Ids of ``owner``'s jobs, newest first, from ``offset`` (expired ones are dropped from the index)."""
        ids = [m.decode() for m in self.r.zrevrange(f"{PREFIX}owner:{owner}", offset, offset + limit - 1)]
        gone = [i for i in ids if not self.r.exists(self.key("job", i))]
        if gone:
            self.r.zrem(f"{PREFIX}owner:{owner}", *gone)
        return [i for i in ids if i not in gone]

    def claim_idempotency(self, owner: str, key: str, job_id: str, fingerprint: str, ttl: int = 86400):
        """Record ``key`` for ``job_id``; ``None`` if new, else ``(first job id, its fingerprint)``."""
        name = f"{PREFIX}idempotency:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"
        if self.r.set(name, json.dumps([job_id, fingerprint]), nx=True, ex=ttl):
            return None
        first = self.r.get(name)
        return tuple(json.loads(first)) if first else None

    def oldest_queued_age(self) -> float:
        """Seconds the longest-queued job has waited since it was created (0 when none is queued)."""
        first = self.r.zrange(self.QUEUED, 0, 0, withscores=True)
        return max(time.time() - first[0][1], 0.0) if first else 0.0

    def queue_position(self, job_id: str) -> Optional[int]:
        """How many queued jobs are ahead of this one (``None`` when it is not queued)."""
        return self.r.zrank(self.QUEUED, job_id)

    def get(self, job_id: str) -> Optional[dict]:
        raw = self.r.hgetall(self.key("job", job_id))
        if not raw:
            return None
        job = {k.decode(): v.decode() for k, v in raw.items()}
        for k in ("image", "report", "webhook"):
            if k in job:
                job[k] = json.loads(job[k])
        for k in ("created", "started", "finished", "loss", "heartbeat"):
            if k in job:
                job[k] = float(job[k])
        for k in ("attempts", "iteration", "total"):
            job[k] = int(job.get(k, 0))
        return job

    def status(self, job_id: str) -> Optional[str]:
        s = self.r.hget(self.key("job", job_id), "status")
        return s.decode() if s is not None else None

    def upload(self, job_id: str, name: Optional[str] = None) -> Optional[bytes]:
        return self.r.get(self.key("upload", job_id) + (f":{name}" if name else ""))

    def result(self, job_id: str) -> Optional[bytes]:
        return self.r.get(self.key("result", job_id))

    def active_ids(self) -> list:
        return [m.decode() for m in self.r.smembers(self.ACTIVE)]

    # transitions
    def transition(self, job_id: str, from_statuses: Iterable[str], **fields) -> bool:
        """Set ``fields`` if the job's status is one of ``from_statuses``; ``True`` if it was."""
        froms = list(from_statuses)
        args = [len(froms), *froms]
        for k, v in fields.items():
            args += [k, v if isinstance(v, (str, bytes)) else (json.dumps(v) if isinstance(v, dict) else repr(v))]
        return bool(self._cas(keys=[self.key("job", job_id)], args=args))

    def progress(self, job_id: str, iteration: int, total: int, loss: float) -> None:
        self.r.hset(self.key("job", job_id), mapping={"iteration": iteration, "total": total, "loss": repr(float(loss))})

    def end(self, job_id: str, status: str, from_statuses: Iterable[str] = ("queued", "running"),
            result: Optional[bytes] = None, **fields) -> bool:
        """Move to an ended ``status``; delete the upload, store the result, start the expiry clocks."""
        assert status in ENDED
        if not self.transition(job_id, from_statuses, status=status, finished=time.time(), **fields):
            return False
        pipe = self.r.pipeline(transaction=True)
        if result is not None:
            pipe.set(self.key("result", job_id), result, ex=self.result_ttl)
        self._forget_upload(pipe, job_id)
        pipe.delete(self.key("lease", job_id))
        pipe.srem(self.ACTIVE, job_id)
        pipe.zrem(self.QUEUED, job_id)
        owner = self.r.hget(self.key("job", job_id), "owner")
        pipe.srem(f"{PREFIX}owner-active:{(owner or b'').decode()}", job_id)
        batch = self.r.hget(self.key("job", job_id), "batch")
        if batch:
            pipe.lrem(self.key("batch", batch.decode()), 0, job_id)
        pipe.expire(self.key("job", job_id), self.result_ttl)
        pipe.hincrby(PREFIX + "stats", f"jobs_{status}", 1)
        pipe.execute()
        return True

    def _forget_upload(self, pipe, job_id: str) -> None:
        """Queue the deletion of the upload and of the extra uploads the job hash names."""
        extra = self.r.hget(self.key("job", job_id), "extra_uploads")
        names = extra.decode().split(",") if extra else []
        pipe.delete(self.key("upload", job_id), *(self.key("upload", job_id) + f":{n}" for n in names))

    def delete(self, job_id: str) -> None:
        owner = (self.r.hget(self.key("job", job_id), "owner") or b"").decode()
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(f"{PREFIX}owner:{owner}", job_id)
        pipe.srem(f"{PREFIX}owner-active:{owner}", job_id)
        self._forget_upload(pipe, job_id)
        pipe.delete(self.key("job", job_id), self.key("result", job_id), self.key("lease", job_id))
        pipe.srem(self.ACTIVE, job_id)
        pipe.zrem(self.QUEUED, job_id)
        pipe.execute()

    # claiming: who runs a job
    def claim(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Take a queued job: hold its lease and mark it running. ``False`` if it is not ours to run."""
        batch = self.r.hget(self.key("job", job_id), "batch")
        if batch:
            self.r.lrem(self.key("batch", batch.decode()), 0, job_id)
        if not self.acquire_lease(job_id, owner, lease_seconds):
            return False
        if not self.transition(job_id, ["queued"], status="running", started=time.time(), worker=owner,
                               heartbeat=time.time()):
            self.release_lease(job_id, owner)
            return False
        self.r.hincrby(self.key("job", job_id), "attempts", 1)
        self.r.zrem(self.QUEUED, job_id)
        return True

    def queued_in_batch(self, batch: str, limit: int) -> list:
        return [m.decode() for m in self.r.lrange(self.key("batch", batch), 0, max(limit - 1, 0))]

    def requeue(self, job_id: str) -> bool:
        """A running job whose worker is gone goes back to ``queued`` (the caller sends its message)."""
        if not self.transition(job_id, ["running"], status="queued", iteration=0):
            return False
        batch = self.r.hget(self.key("job", job_id), "batch")
        if batch:
            self.r.rpush(self.key("batch", batch.decode()), job_id)
        created = self.r.hget(self.key("job", job_id), "created")
        self.r.zadd(self.QUEUED, {job_id: float(created or time.time())})
        self.r.hincrby(PREFIX + "stats", "jobs_requeued", 1)
        return True

    # leases
    def acquire_lease(self, job_id: str, owner: str, seconds: float) -> bool:
        return bool(self.r.set(self.key("lease", job_id), owner, nx=True, px=int(seconds * 1000)))

    def renew_lease(self, job_id: str, owner: str, seconds: float) -> bool:
        """Extend our lease; ``False`` if it is no longer ours (it lapsed and someone took the job)."""
        key = self.key("lease", job_id)
        held = self.r.get(key)
        if held is None or held.decode() != owner:
            return False
        self.r.pexpire(key, int(seconds * 1000))
        self.r.hset(self.key("job", job_id), "heartbeat", repr(time.time()))
        return True

    def lease_held(self, job_id: str) -> bool:
        return bool(self.r.exists(self.key("lease", job_id)))

    def release_lease(self, job_id: str, owner: str) -> None:
        key = self.key("lease", job_id)
        held = self.r.get(key)
        if held is not None and held.decode() == owner:
            self.r.delete(key)

    # workers and metrics
    def beat(self, worker: str, info: dict, ttl: float) -> None:
        self.r.set(f"{PREFIX}worker:{worker}", json.dumps(info), px=int(ttl * 1000))

    def forget_worker(self, worker: str) -> None:
        self.r.delete(f"{PREFIX}worker:{worker}")

    def workers(self) -> dict:
        out = {}
        for key in self.r.scan_iter(match=f"{PREFIX}worker:*"):
            raw = self.r.get(key)
            if raw is not None:
                out[key.decode()[len(PREFIX) + 7:]] = json.loads(raw)
        return out

    def count(self, name: str, amount: float = 1) -> None:
        self.r.hincrbyfloat(PREFIX + "stats", name, amount)

    def stats(self) -> dict:
        return {k.decode(): float(v) for k, v in self.r.hgetall(PREFIX + "stats").items()}

    def status_counts(self) -> dict:
        counts = {s: 0 for s in ("queued", "running")}
        ids = self.active_ids()
        if ids:
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                pipe.hget(self.key("job", i), "status")
            for s in pipe.execute():
                if s is not None and s.decode() in counts:
                    counts[s.decode()] += 1
        return counts
