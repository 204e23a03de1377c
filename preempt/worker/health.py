"""``python -m preempt.worker.health [NAME]``: exit 0 if a worker's heartbeat is live in Redis.

The container healthcheck of a worker (reads ``PREEMPT_REDIS_URL``). Without NAME it looks for
a live worker on this host (a container's hostname is its own), so scaled services need no names.
"""

from __future__ import annotations

import socket
import sys

from preempt.settings import Settings
from preempt.store import JobStore, redis_client


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1:
        print("usage: python -m preempt.worker.health [WORKER_NAME]", file=sys.stderr)
        return 2
    workers = JobStore(redis_client(Settings().require_url())).workers()
    if argv:
        alive = argv[0] in workers
    else:
        alive = any(info.get("host") == socket.gethostname() for info in workers.values())
    print("alive" if alive else "no live worker heartbeat " + (f"for {argv[0]!r}" if argv else "on this host"))
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
