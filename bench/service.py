"""Service benchmark: the real stack (`preempt serve`, embedded Redis, one CPU worker) on loopback.

    python -m bench.service [--photo-size 512] [--concurrent 50] [--batch-jobs 32] [--json F]

Measures, in one run on one machine:

1. upload-to-result time of one photo (``--photo-size`` square RGB JPEG) at the default settings
   (preset medium = the paper's 100 x (20 + 1) passes, verification on), with the queue empty;
2. what a POST /v1/robustify costs the API: latency of ``--concurrent`` uploads sent at once
   (median, p95, max); the jobs they create are cancelled so they do not load the worker;
3. worker throughput for small jobs (Fashion-MNIST 28x28, preset low): ``--batch-jobs`` jobs
   submitted at once (cross-request batching applies) against the same number submitted one
   at a time, each waited for before the next;
4. load: ``--load-uploads`` cheap jobs (28x28, 2 iterations, no check) posted by ``--load-clients``
   concurrent clients: the POST latency (median, p95), the count of 5xx answers, and the jobs lost
   (accepted but never ended as succeeded).

``--parts 4`` runs only the load part (``--parts 1,2,3,4`` is the default).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HEADERS: dict = {}  # the API key's header with --auth


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([120 + 80 * np.sin(6 * xx), 100 + 90 * yy, 140 - 60 * xx * yy], -1)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _example(i: int) -> bytes:
    files = sorted((ROOT / "examples" / "fashion-mnist").glob("*.png"))
    return files[i % len(files)].read_bytes()


def _wait(http: httpx.Client, job_id: str, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not end")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo-size", type=int, default=512)
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--batch-jobs", type=int, default=32)
    ap.add_argument("--load-uploads", type=int, default=200)
    ap.add_argument("--load-clients", type=int, default=50)
    ap.add_argument("--parts", default="1,2,3,4", help="which measurements to run (comma list of 1-4)")
    ap.add_argument("--auth", action="store_true", help="run the service with PREEMPT_AUTH=required and one API key")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    parts = {int(p) for p in args.parts.split(",") if p}

    tmp = Path(tempfile.mkdtemp(prefix="preempt-bench-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREEMPT_REDIS_URL"}
    if args.auth:
        env["PREEMPT_AUTH"] = "required"
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "preempt.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp / "data"), "--log-level", "warning"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    out = {"machine": f"{os.cpu_count()} CPUs", "photo_size": args.photo_size, "auth": args.auth}
    try:
        for _ in range(600):
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        if args.auth:
            import redis

            from preempt.keys import KeyStore

            url = (tmp / "data" / "redis-url").read_text().strip()
            key, _ = KeyStore(redis.Redis.from_url(url)).create("bench")
            HEADERS["Authorization"] = f"Bearer {key}"
            http.headers.update(HEADERS)
        # warm the worker (model load) so the first figure is not the start-up
        _wait(http, http.post("/v1/robustify", files={"file": ("w.png", _example(0))},
                              data={"preset": "low", "iterations": "2"}).json()["job_id"])

        data = _photo(args.photo_size)
        if 1 in parts:
            _one_photo(http, data, args, out)
        if 2 in parts:
            _post_latency(http, port, data, args, out)
        if 3 in parts:
            _throughput(http, port, args, out)
        if 4 in parts:
            _load(http, port, args, out)
    finally:
        http.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _one_photo(http, data, args, out) -> None:
    """1. one photo, default settings."""
    t0 = time.perf_counter()
    job_id = http.post("/v1/robustify", files={"file": ("photo.jpg", data)}).json()["job_id"]
    job = _wait(http, job_id)
    png = http.get(f"/v1/jobs/{job_id}/result").content
    out["photo_upload_to_result_s"] = round(time.perf_counter() - t0, 3)
    out["photo_report"] = job["report"]
    out["photo_result_size"] = Image.open(io.BytesIO(png)).size
    print(f"{args.photo_size}x{args.photo_size} photo, default settings: upload to result "
          f"{out['photo_upload_to_result_s']} s (worker {job['timings']['run_seconds']} s)", flush=True)



def _post_latency(http, port, data, args, out) -> None:
    """2. POST latency under concurrent uploads."""
    def post(i):
        t = time.perf_counter()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/robustify", files={"file": ("p.jpg", data)},
                       data={"preset": "low"}, timeout=120, headers=HEADERS)
        return time.perf_counter() - t, r.status_code, r.json().get("job_id")

    with ThreadPoolExecutor(args.concurrent) as pool:
        results = list(pool.map(post, range(args.concurrent)))
    lat = sorted(r[0] for r in results)
    for _, _, jid in results:
        if jid:
            http.delete(f"/v1/jobs/{jid}")
    out["post_latency_ms"] = {"n": len(lat), "median": round(1000 * statistics.median(lat), 1),
                              "p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1),
                              "max": round(1000 * lat[-1], 1),
                              "status_codes": sorted({r[1] for r in results})}
    print(f"POST /v1/robustify with {args.concurrent} concurrent uploads: {out['post_latency_ms']}", flush=True)
    time.sleep(2)  # let the worker drop the cancelled jobs



def _throughput(http, port, args, out) -> None:
    """3. small-job throughput: all at once (batched) vs one at a time."""
    n = args.batch_jobs
    t = time.perf_counter()
    for i in range(n):
        _wait(http, http.post("/v1/robustify", files={"file": ("x.png", _example(i))},
                              data={"preset": "low"}).json()["job_id"])
    serial = n / (time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        ids = list(pool.map(lambda i: httpx.post(f"http://127.0.0.1:{port}/v1/robustify",
                                                 files={"file": ("x.png", _example(i))},
                                                 data={"preset": "low"}, timeout=120,
                                                 headers=HEADERS).json()["job_id"], range(n)))
    jobs = [_wait(http, j) for j in ids]
    concurrent = n / (time.perf_counter() - t)
    out["throughput_jobs_per_s"] = {"one_at_a_time": round(serial, 3), "all_at_once": round(concurrent, 3),
                                    "ratio": round(concurrent / serial, 2),
                                    "largest_batch": max(j["report"]["batch_size"] for j in jobs),
                                    "all_succeeded": all(j["status"] == "succeeded" for j in jobs)}
    print(f"{n} small jobs (preset low): {out['throughput_jobs_per_s']}", flush=True)


def _load(http, port, args, out) -> None:
    """4. many cheap uploads from many clients: latency, 5xx, lost jobs."""
    def post(i):
        t = time.perf_counter()
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/robustify", files={"file": ("x.png", _example(i))},
                           data={"preset": "low", "iterations": "2", "verify": "false"}, timeout=120, headers=HEADERS)
            return time.perf_counter() - t, r.status_code, (r.json().get("job_id") if r.status_code == 202 else None)
        except httpx.HTTPError as e:
            return time.perf_counter() - t, type(e).__name__, None

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.load_clients) as pool:
        results = list(pool.map(post, range(args.load_uploads)))
    posted = time.perf_counter() - t0
    accepted = [jid for _, _, jid in results if jid]
    ended = {jid: _wait(http, jid, timeout=1800) for jid in accepted}
    lat = sorted(r[0] for r in results)
    codes: dict = {}
    for _, code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    out["load"] = {"uploads": args.load_uploads, "clients": args.load_clients,
                   "status_codes": codes, "server_errors_5xx": sum(n for c, n in codes.items() if c.startswith("5")),
                   "accepted": len(accepted),
                   "jobs_lost": sum(1 for j in ended.values() if j["status"] != "succeeded"),
                   "post_latency_ms": {"median": round(1000 * statistics.median(lat), 1),
                                       "p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1),
                                       "max": round(1000 * lat[-1], 1)},
                   "seconds_to_post_all": round(posted, 2),
                   "seconds_to_finish_all": round(time.perf_counter() - t0, 2)}
    print(f"load, {args.load_uploads} uploads from {args.load_clients} clients: {out['load']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
