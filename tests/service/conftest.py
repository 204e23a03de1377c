"""The real stack on loopback: `preempt serve` (uvicorn API + Celery worker + embedded Redis).

A second stack against Debian's `redis-server` (through PREEMPT_REDIS_URL) is started only by
the tests that ask for it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "fashion-mnist"

# Short leases so a killed worker's job comes back within seconds; small limits so the
# bad-input corpus stays small.
SERVICE_ENV = {
    "PREEMPT_LEASE_SECONDS": "3",
    "PREEMPT_BATCH_WAIT": "0.5",
    "PREEMPT_MAX_UPLOAD_BYTES": "2000000",
    "PREEMPT_MAX_PIXELS": "4000000",
    "PREEMPT_RESULT_TTL": "600",
    "PREEMPT_HEARTBEAT_SECONDS": "2",
    "PREEMPT_STALL_SECONDS": "10",
    "OMP_NUM_THREADS": "2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """A running `preempt serve`: its base URL, its Redis and its process."""

    def __init__(self, tmp: Path, redis_url: str | None = None, env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "data"
        env = {**os.environ, **SERVICE_ENV, **(env or {})}
        env.pop("PREEMPT_REDIS_URL", None)
        if redis_url:
            env["PREEMPT_REDIS_URL"] = redis_url
        self.log = open(tmp / "serve.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "preempt.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--log-level", "warning"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.base, timeout=60)
        self.wait_ready()
        url = redis_url or (self.data_dir / "redis-url").read_text().strip()
        self.redis = redis.Redis.from_url(url)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"preempt serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"preempt serve not ready after {timeout} s; see {self.log.name}")

    def log_text(self) -> str:
        """What `preempt serve` and its workers have logged so far."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def submit(self, data: bytes, filename: str = "x.png", path: str = "/v1/robustify", files=None, **fields):
        files = files or {"file": (filename, data, "application/octet-stream")}
        return self.http.post(path, files=files, data={k: str(v) for k, v in fields.items()})

    def wait_job(self, job_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not end in {timeout} s: {job}")

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("serve"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def system_redis_url(tmp_path_factory):
    """Debian's redis-server on a free port (installed by .ci/run)."""
    exe = "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def example_image(i: int = 1) -> Image.Image:
    return Image.open(sorted(EXAMPLES.glob("*.png"))[i]).copy()


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A photo-like picture: a Fashion-MNIST item upscaled onto a smooth coloured background."""
    rng = np.random.default_rng(seed)
    item = np.asarray(example_image(seed % 8).resize((min(width, height),) * 2, Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx / width) * 120 + 40, (yy / height) * 100 + 60, np.full((height, width), 90.0)], axis=-1)
    base += rng.normal(0, 3, base.shape)
    oy, ox = (height - item.shape[0]) // 2, (width - item.shape[1]) // 2
    base[oy:oy + item.shape[0], ox:ox + item.shape[1]] = np.maximum(base[oy:oy + item.shape[0], ox:ox + item.shape[1]],
                                                                     item[..., None])
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray((np.clip(xx / width, 0, 1) * 255).astype(np.uint8), "L")
        img.putalpha(alpha)
    elif mode == "L":
        img = img.convert("L")
    return img
