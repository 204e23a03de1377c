"""Per-key request rates with the ``limits`` library, counted in the job store's Redis so that every API
process shares them (moving window: a key's rate per minute is never exceeded in any 60 s)."""

from __future__ import annotations

import time
from urllib.parse import urlparse

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from preempt.api.errors import RateLimited
from preempt.keys import Caller


def limits_url(redis_url: str) -> str:
    """``limits`` spells a Unix socket ``redis+unix:///path``; redis-py spells it ``unix:///path``."""
    parsed = urlparse(redis_url)
    return f"redis+unix://{parsed.path}" if parsed.scheme == "unix" else redis_url


class RateLimiter:
    def __init__(self, redis_url: str):
        self.limiter = MovingWindowRateLimiter(storage_from_string(limits_url(redis_url)))

    def check(self, caller: Caller) -> None:
        """Count one request of ``caller``; :class:`RateLimited` with ``Retry-After`` over its rate."""
        if not caller.rate:
            return
        item = RateLimitItemPerMinute(caller.rate)
        if not self.limiter.hit(item, "preempt", caller.name):
            reset = self.limiter.get_window_stats(item, "preempt", caller.name).reset_time
            wait = max(1, int(reset - time.time() + 0.999))
            raise RateLimited(f"more than {caller.rate} requests per minute for key {caller.name!r}; retry in {wait} s",
                              headers={"Retry-After": str(wait)})
