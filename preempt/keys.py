"""API keys, stored hashed in Redis (never in clear): who may call the service, and each caller's limits.

``preempt:apikey:{sha256(key)}`` is a hash (name, rate per minute, max queued+running jobs, admin,
webhook secret, revoked); ``preempt:apikey-name:{name}`` points at it. A key is shown once, when created.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import redis

PREFIX = "preempt:apikey:"
NAMES = "preempt:apikey-name:"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Whoever a request comes from: a key's name and limits (``name`` "" when auth is off)."""

    name: str = ""
    rate: int = 0  # requests per minute; 0: no limit
    max_queued: int = 0  # queued + running jobs at once; 0: no limit
    admin: bool = False
    webhook_secret: str = ""
    revoked: bool = False


ANONYMOUS = Caller()


class KeyStore:
    def __init__(self, client: redis.Redis):
        self.r = client

    def create(self, name: str, rate: int = 0, max_queued: int = 0, admin: bool = False) -> tuple:
        """``(key, caller)`` for a new key; ``ValueError`` if ``name`` is taken or malformed."""
        if not name or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
            raise ValueError(f"key name {name!r}: use 1-64 letters, digits, - and _")
        key = "pk_" + secrets.token_urlsafe(32)
        caller = Caller(name=name, rate=rate, max_queued=max_queued, admin=admin,
                        webhook_secret="whsec_" + secrets.token_urlsafe(24))
        if not self.r.set(NAMES + name, digest(key), nx=True):
            raise ValueError(f"a key named {name!r} exists; revoke it first or choose another name")
        self.r.hset(PREFIX + digest(key), mapping={**{k: str(int(v)) if isinstance(v, bool) else str(v)
                                                      for k, v in asdict(caller).items()},
                                                   "created": repr(time.time())})
        return key, caller

    def lookup(self, key: str) -> Optional[Caller]:
        raw = self.r.hgetall(PREFIX + digest(key))
        return self._caller(raw) if raw else None

    @staticmethod
    def _caller(raw: dict) -> Caller:
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return Caller(name=d["name"], rate=int(d["rate"]), max_queued=int(d["max_queued"]), admin=d["admin"] == "1",
                      webhook_secret=d["webhook_secret"], revoked=d["revoked"] == "1")

    def secret_of(self, name: str) -> str:
        """The webhook secret of the key named ``name`` ("" if there is none)."""
        hashed = self.r.get(NAMES + name) if name else None
        secret = self.r.hget(PREFIX + hashed.decode(), "webhook_secret") if hashed else None
        return secret.decode() if secret else ""

    def revoke(self, name: str) -> bool:
        hashed = self.r.get(NAMES + name)
        if hashed is None:
            return False
        self.r.hset(PREFIX + hashed.decode(), "revoked", "1")
        self.r.delete(NAMES + name)  # the name may be used again; the old key stays refused
        return True

    def list(self) -> List[Caller]:
        out = []
        for name_key in self.r.scan_iter(match=NAMES + "*"):
            hashed = self.r.get(name_key)
            raw = self.r.hgetall(PREFIX + hashed.decode()) if hashed else None
            if raw:
                out.append(self._caller(raw))
        return sorted(out, key=lambda c: c.name)
