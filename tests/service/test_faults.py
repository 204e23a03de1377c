"""Faults injected into the real stack: Redis killed (embedded and Debian's redis-server), `preempt serve`
killed, a second `preempt serve` on the same data directory. After each: no job lost, each ends once with
one result, no 500 from the API, readiness honest, no orphan process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.service.conftest import Stack, free_port, png_bytes, photo

CHEAP = {"preset": "low", "iterations": "3", "verify": "false"}


def children_of(pid: int) -> list:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def submit_mix(stack: Stack) -> list:
    """One job that runs a few seconds, then five queued behind it; returns their ids once the first runs."""
    slow = stack.submit(png_bytes(photo(64, 64, seed=1)), "slow.png", iterations=60, verify="pgd")
    assert slow.status_code == 202, slow.text
    ids = [slow.json()["job_id"]]
    deadline = time.monotonic() + 60
    while stack.http.get(f"/v1/jobs/{ids[0]}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    for i in range(5):
        r = stack.submit(png_bytes(photo(30 + i, 30, seed=i)), f"q{i}.png", **CHEAP)
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    time.sleep(1.5)  # the append-only file is fsynced every second
    return ids


def poll_without_500(stack: Stack, ids: list, seconds: float) -> set:
    """GET every job and POST once, for ``seconds``; the status codes seen (a 500 is a failure)."""
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for job_id in ids:
            try:
                seen.add(stack.http.get(f"/v1/jobs/{job_id}", timeout=10).status_code)
            except httpx.TransportError:
                pass
        try:
            r = stack.submit(png_bytes(photo(20, 20)), "p.png", **CHEAP)
            seen.add(r.status_code)
            if r.status_code == 202:
                ids.append(r.json()["job_id"])
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return seen


def assert_all_end_once(stack: Stack, ids: list, timeout: float = 300) -> None:
    for job_id in ids:
        job = stack.wait_job(job_id, timeout=timeout)
        assert job["status"] == "succeeded", job
        assert stack.http.get(job["result_url"]).content[:4] == b"\x89PNG"
        assert not stack.redis.exists(f"preempt:upload:{job_id}")


def wait_ready(stack: Stack, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while stack.http.get("/readyz").status_code != 200:
        assert time.monotonic() - t0 < timeout, stack.http.get("/readyz").json()
        time.sleep(0.2)
    return time.monotonic() - t0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_embedded_redis_killed_with_running_and_queued_jobs_loses_nothing(tmp_path, sig):
    stack = Stack(tmp_path)
    try:
        ids = submit_mix(stack)
        redis_pid = next(p for p in children_of(stack.proc.pid) if "redis-server" in cmdline(p))
        killed = time.monotonic()
        os.kill(redis_pid, sig)
        seen = poll_without_500(stack, ids, 3)
        assert 500 not in seen, seen
        recovered = wait_ready(stack)
        assert_all_end_once(stack, ids)
        new_redis = [p for p in children_of(stack.proc.pid) if "redis-server" in cmdline(p)]
        assert new_redis and new_redis[0] != redis_pid  # serve started it again
        print(f"\n{sig.name} of Redis: ready again {recovered:.1f} s after the checks, all "
              f"{len(ids)} jobs ended {time.monotonic() - killed:.1f} s after the kill; codes seen {sorted(seen)}")
    finally:
        stack.close()


def test_an_outage_of_debian_redis_server_during_a_running_job(tmp_path):
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port, folder = free_port(), tmp_path / "redis"
    folder.mkdir()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--appendonly", "yes",
            "--appendfsync", "everysec", "--save", ""]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    (tmp_path / "serve").mkdir()
    stack = Stack(tmp_path / "serve", redis_url=url)
    try:
        ids = submit_mix(stack)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        down = time.monotonic()
        seen = poll_without_500(stack, ids, 26)  # the outage after which a Celery consumer was seen stuck
        assert 500 not in seen and 503 in seen, seen
        assert stack.http.get("/readyz").status_code == 503  # honest while Redis is away
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        back = time.monotonic()
        recovered = wait_ready(stack)
        assert_all_end_once(stack, ids)
        stuck = sum("consumer is stuck" in line for line in stack.log_text().splitlines())
        print(f"\nDebian redis-server down {back - down:.1f} s: ready {recovered:.1f} s after its restart, all "
              f"{len(ids)} jobs ended {time.monotonic() - back:.1f} s after it; stuck consumers restarted: {stuck}")
    finally:
        stack.close()
        server.terminate()
        server.wait(timeout=30)


def test_killed_serve_leaves_no_orphans_and_a_new_serve_finishes_its_jobs(tmp_path):
    stack = Stack(tmp_path)
    restarted = None
    try:
        ids = submit_mix(stack)
        kids = children_of(stack.proc.pid)
        assert any("redis-server" in cmdline(p) for p in kids) and any("worker" in cmdline(p) for p in kids)
        os.kill(stack.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        while any(alive(p) for p in kids):
            assert time.monotonic() - killed < 10, [cmdline(p) for p in kids if alive(p)]
            time.sleep(0.1)
        gone = time.monotonic() - killed
        stack.proc.wait(timeout=10)
        restarted = Stack(tmp_path)  # the same data directory: its append-only file has the jobs
        assert_all_end_once(restarted, ids)
        print(f"\nSIGKILL of preempt serve: its {len(kids)} children gone in {gone:.1f} s; the jobs ended after a "
              "restart on the same data directory")
    finally:
        if restarted is not None:
            restarted.close()
        stack.close()


def test_a_second_serve_on_the_same_data_directory_is_refused_and_the_first_lives_on(tmp_path):
    stack = Stack(tmp_path)
    try:
        r = subprocess.run([sys.executable, "-m", "preempt.cli", "serve", "--port", str(free_port()), "--data-dir",
                            str(stack.data_dir)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and str(stack.proc.pid) in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert stack.http.get("/readyz").status_code == 200
        job = stack.wait_job(stack.submit(png_bytes(photo(24, 24)), **CHEAP).json()["job_id"])
        assert job["status"] == "succeeded"
    finally:
        stack.close()
