"""End to end over real processes: uvicorn, a Celery worker, a real Redis, real image files."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import numpy as np
import pytest

from preempt.registry import DEFAULT_MODEL
from PIL import Image, ImageOps

from .conftest import SERVICE_ENV, Stack, example_image, photo, png_bytes

FAST = {"preset": "low", "iterations": 5}


def _pixels(data: bytes):
    """Colour channels in [0, 1] and alpha, as the service decodes a file (EXIF applied)."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    alpha = np.asarray(img.getchannel("A")) if img.mode in ("RGBA", "LA") else None
    img = img.convert("L" if img.mode in ("L", "LA") else "RGB")
    return np.asarray(img, dtype=np.float64) / 255.0, alpha


CASES = [
    ("gray-28.png", lambda: png_bytes(example_image(1)), (28, 28), "L"),
    ("photo-96x64.jpg", lambda: png_bytes(photo(96, 64), "JPEG", quality=90), (96, 64), "RGB"),
    ("alpha-50x40.png", lambda: png_bytes(photo(50, 40, "RGBA", seed=2)), (50, 40), "RGBA"),
    ("photo-40x30.webp", lambda: png_bytes(photo(40, 30, seed=3), "WEBP", lossless=True), (40, 30), "RGB"),
]


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    return png_bytes(photo(60, 36, seed=4), "JPEG", quality=92, exif=exif)


@pytest.mark.parametrize("name,make,size,mode", CASES + [("exif-6.jpg", _exif_rotated_jpeg, (36, 60), "RGB")])
def test_robustify_roundtrip_keeps_size_mode_and_budget(stack, name, make, size, mode):
    data = make()
    r = stack.submit(data, name, **FAST)
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"job_id", "status_url", "result_url"}
    job = stack.wait_job(body["job_id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["iteration"] == job["progress"]["total"] == 5
    png = stack.http.get(body["result_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(png.content))
    assert out.format == "PNG" and out.size == size and out.mode == mode
    x_in, a_in = _pixels(data)
    x_out, a_out = _pixels(png.content)
    report = job["report"]
    measured = float(np.abs(x_out - x_in).max())
    assert measured <= report["delta"] + 1e-9  # the 8-bit file keeps the budget
    assert abs(measured - report["linf"]) < 1e-4  # and the report tells the budget the file uses
    assert abs(float(np.sqrt(((x_out - x_in) ** 2).sum())) - report["l2"]) < 1e-3
    if a_in is not None:
        assert np.array_equal(a_in, a_out)  # alpha kept untouched
    assert report["model"] == DEFAULT_MODEL and report["norm"] == "linf"
    assert isinstance(report["label"], int) and report["verified"]["attack"] == "pgd-20+apgd-ce+apgd-t"
    assert isinstance(report["verified"]["robust"], bool) and report["psnr"] > 20
    assert "retried" not in report  # retry is opt-in


def test_original_upload_deleted_and_result_expires(stack):
    r = stack.submit(png_bytes(example_image(2)), **FAST)
    job_id = r.json()["job_id"]
    assert stack.redis.exists(f"preempt:upload:{job_id}")  # kept while queued or running
    assert stack.wait_job(job_id)["status"] == "succeeded"
    assert not stack.redis.exists(f"preempt:upload:{job_id}")  # gone as soon as the job ended
    ttl = stack.redis.ttl(f"preempt:result:{job_id}")
    assert 0 < ttl <= 600  # PREEMPT_RESULT_TTL
    assert 0 < stack.redis.ttl(f"preempt:job:{job_id}") <= 600


def _attack(stack, data: bytes, label: int) -> bool:
    job = stack.wait_job(stack.submit(data, path="/v1/attack", attack="pgd", label=label).json()["job_id"])
    assert job["status"] == "succeeded", job
    return job["report"]["greybox"]["robust"]


def test_robustified_image_resists_attack_more_than_original(stack):
    """Through the service: images that PGD breaks are robust once the service has protected them."""
    from preempt.core.data import fashion_mnist

    x, y = fashion_mnist("test", limit=60)
    files = [png_bytes(Image.fromarray((255 * x[i, 0].numpy()).round().astype(np.uint8), "L")) for i in range(60)]
    broken = [i for i in range(60) if not _attack(stack, files[i], int(y[i]))]
    ids = [stack.submit(files[i]).json()["job_id"] for i in broken]  # default settings
    protected = []
    for i, job_id in zip(broken, ids):
        job = stack.wait_job(job_id)
        assert job["status"] == "succeeded"
        if job["report"]["label"] == int(y[i]):  # PGD breaks misclassified originals trivially; skip those
            protected.append(_attack(stack, stack.http.get(job["result_url"]).content, int(y[i])))
    assert len(protected) >= 3
    assert sum(protected) >= len(protected) / 2  # the attack now fails on most of them (on none before)


def test_jpeg_output_that_survives_resizing(stack):
    """format=jpeg with survive: the result is the JPEG (image/jpeg, the upload's size), the report's budget is
    the JPEG's own, its pixels before encoding keep delta, and the check names the transforms it ran after."""
    data = png_bytes(photo(96, 64), "JPEG", quality=95)
    r = stack.submit(data, "p.jpg", **FAST, format="jpeg", quality="85", survive="resize:0.5-1")
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["job_id"])
    assert job["status"] == "succeeded", job
    out = stack.http.get(r.json()["result_url"])
    assert out.status_code == 200 and out.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(out.content)).format == "JPEG" and Image.open(io.BytesIO(out.content)).size == (96, 64)
    report = job["report"]
    assert (report["format"], report["quality"], report["survive"]) == ("jpeg", 85, "resize:0.5-1")
    assert report["verified"]["after"] == ["resize:0.5", "resize:0.75", "resize:1"]
    assert report["linf_before_encoding"] <= report["delta"] + 1e-9
    x_in, _ = _pixels(data)
    x_out, _ = _pixels(out.content)
    assert abs(float(np.abs(x_out - x_in).max()) - report["linf"]) < 1e-4


def test_wait_parameter_returns_finished_job(stack):
    r = stack.http.post("/v1/robustify?wait=60", files={"file": ("a.png", png_bytes(example_image(3)))},
                        data={"preset": "low", "iterations": "3", "verify": "false"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded" and "verified" not in r.json()["report"]


def test_retry_job_reports_whether_it_was_retried(stack):
    r = stack.submit(png_bytes(example_image(4)), preset="low", iterations=3, retry="true")
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["job_id"])
    assert job["status"] == "succeeded", job
    report = job["report"]  # which images retry touches and keeps: tests/core/test_protect.py
    assert isinstance(report["retried"], bool) and isinstance(report["verified"]["robust"], bool)
    assert report["linf"] <= report["delta"] + 1e-9 and report["label_kept"]


def test_compatible_jobs_are_batched(stack):
    ids = [stack.submit(png_bytes(example_image(i)), preset="low", iterations=20).json()["job_id"] for i in range(6)]
    jobs = [stack.wait_job(j) for j in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert max(j["report"]["batch_size"] for j in jobs) > 1


def test_cancel_running_job_and_delete(stack):
    r = stack.submit(png_bytes(photo(256, 256, seed=5)), preset="high", iterations=2000)
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while stack.http.get(f"/v1/jobs/{job_id}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    d = stack.http.delete(f"/v1/jobs/{job_id}")
    assert d.status_code == 200 and d.json()["status"] == "cancelled"
    assert not stack.redis.exists(f"preempt:upload:{job_id}")
    assert stack.http.get(f"/v1/jobs/{job_id}/result").status_code == 409
    assert stack.http.delete(f"/v1/jobs/{job_id}").json() == {"job_id": job_id, "deleted": True}
    assert stack.http.get(f"/v1/jobs/{job_id}").status_code == 404
    # the worker noticed the cancellation and is free again
    assert stack.wait_job(stack.submit(png_bytes(example_image(0)), **FAST).json()["job_id"], 120)["status"] == "succeeded"


def test_job_survives_worker_sigkill(stack):
    """SIGKILL the worker mid-run: `preempt serve` starts a new one, whose janitor requeues the job."""
    r = stack.submit(png_bytes(photo(128, 128, seed=6)), preset="low", iterations=300, verify="false")
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = stack.http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["iteration"] >= 1:
            break
        time.sleep(0.1)
    assert job["status"] == "running", job
    owner = stack.redis.hget(f"preempt:job:{job_id}", "worker").decode()
    pid = json.loads(stack.redis.get(f"preempt:worker:{owner}"))["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    # Dead: not counted as alive after one heartbeat TTL. `preempt serve` restarts the worker under the same
    # name, so the key may come back at once: what must go is the killed process's record.
    while (beat := stack.redis.get(f"preempt:worker:{owner}")) is not None and json.loads(beat)["pid"] == pid:
        assert time.monotonic() - killed < 2 * float(SERVICE_ENV["PREEMPT_HEARTBEAT_SECONDS"]) + 1
        time.sleep(0.05)
    gone = time.monotonic() - killed
    job = stack.wait_job(job_id, timeout=400)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    print(f"\nSIGKILL of a worker: not alive after {gone:.1f} s; its job ended {time.monotonic() - killed:.1f} s "
          "after the kill, on its second attempt")
    assert stack.redis.hget("preempt:stats", "jobs_requeued") is not None
    assert Image.open(io.BytesIO(stack.http.get(job["result_url"]).content)).size == (128, 128)


BOMB = None


def _bomb() -> bytes:
    """A 3 KB PNG that decodes to 25 million pixels."""
    global BOMB
    if BOMB is None:
        BOMB = png_bytes(Image.new("L", (5000, 5000)), optimize=True)
    return BOMB


BAD_FILES = [
    ("text.png", b"hello, I am not an image\n", 415),
    ("empty.png", b"", 400),
    ("truncated.png", png_bytes(photo(64, 64))[:300], 400),
    ("image.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>', 415),
    ("anim.gif", png_bytes(Image.new("P", (8, 8)), "GIF"), 415),
    ("image.bmp", png_bytes(Image.new("RGB", (8, 8)), "BMP"), 415),
    ("bomb.png", None, 413),
    ("huge.bin", os.urandom(2_100_000), 413),
]

BAD_FIELDS = [
    {"epsilon": "-1"}, {"epsilon": "abc"}, {"epsilon": "nan"}, {"epsilon": "2"}, {"delta": "0"},
    {"norm": "l3"}, {"preset": "ultra"}, {"iterations": "0"}, {"iterations": "1000000000"}, {"iterations": "2.5"},
    {"model": "nope"}, {"verify": "maybe"}, {"retry": "maybe"}, {"retry": "true", "verify": "false"},
    {"survive": "jpeg:101"}, {"survive": "sharpen:2"}, {"format": "gif"}, {"quality": "0", "format": "jpeg"},
    {"quality": "80"},
]


@pytest.mark.parametrize("name,data,status", BAD_FILES)
def test_bad_files_get_4xx_json(stack, name, data, status):
    r = stack.submit(data if data is not None else _bomb(), name)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] and body["detail"]


@pytest.mark.parametrize("fields", BAD_FIELDS)
def test_bad_parameters_get_422_json_naming_the_field(stack, fields):
    r = stack.submit(png_bytes(example_image(0)), **fields)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_parameter" and next(iter(fields)) in r.json()["detail"]


def test_malformed_requests_and_service_lives_on(stack):
    assert stack.http.post("/v1/robustify").status_code == 422  # no file at all
    assert stack.http.post("/v1/robustify", content=b"garbage", headers={"content-type": "multipart/form-data"}
                           ).status_code in (400, 422)
    assert stack.http.post("/v1/robustify", files={"other": ("a.png", png_bytes(example_image(0)))}).status_code == 422
    assert stack.http.get("/v1/jobs/../../etc").status_code == 404
    assert stack.http.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert stack.http.post("/v1/attack", files={"file": ("a.png", png_bytes(example_image(0)))},
                           data={"attack": "magic"}).status_code == 422
    assert stack.http.post("/v1/certify", files={"file": ("a.png", png_bytes(example_image(0)))},
                           data={"alpha": "0.9"}).status_code == 422
    # after the whole corpus: healthy, ready, and a good job still succeeds
    assert stack.http.get("/healthz").json() == {"status": "ok"}
    assert stack.http.get("/readyz").status_code == 200
    job = stack.wait_job(stack.submit(png_bytes(example_image(4)), **FAST).json()["job_id"])
    assert job["status"] == "succeeded"


def test_whitebox_attack_and_certify_jobs(stack):
    data = png_bytes(example_image(5))
    job = stack.wait_job(stack.submit(data, preset="low").json()["job_id"])
    rob = stack.http.get(job["result_url"]).content
    files = {"file": ("rob.png", rob), "original": ("orig.png", data)}
    a = stack.wait_job(stack.submit(None, path="/v1/attack", files=files, attack="pgd", iterations=10).json()["job_id"])
    assert a["status"] == "succeeded", a
    for key in (f"preempt:upload:{a['job_id']}", f"preempt:upload:{a['job_id']}:original"):
        assert not stack.redis.exists(key)  # both uploads gone once the job ended
    wb = a["report"]["whitebox"]
    assert isinstance(wb["robust"], bool) and set(wb["robust_at"]) == {"0.025", "0.05", "0.075", "0.1"}
    adv = stack.http.get(a["result_url"]).content
    assert float(np.abs(_pixels(adv)[0] - _pixels(rob)[0]).max()) <= 0.1 + 1e-9
    c = stack.wait_job(stack.submit(data, path="/v1/certify", n0=20, n=200, alpha=0.01).json()["job_id"])
    assert c["status"] == "succeeded", c
    rep = c["report"]
    assert rep["radius"] >= 0 and (rep["abstained"] or rep["certified_label"] in range(10))


def test_models_metrics_and_docs(stack):
    models = stack.http.get("/v1/models").json()
    assert any(m["name"] == DEFAULT_MODEL and m["default"] for m in models["models"])
    assert set(models["presets"]) == {"low", "medium", "high"}
    metrics = stack.http.get("/metrics").text
    for name in ("preempt_http_requests_total", "preempt_jobs_ended_total", "preempt_workers", "preempt_jobs{"):
        assert name in metrics
    assert stack.http.get("/docs").status_code == 200
    assert "/v1/robustify" in stack.http.get("/openapi.json").json()["paths"]


def test_same_stack_on_debian_redis_server(system_redis_url, tmp_path):
    """`preempt serve` with PREEMPT_REDIS_URL uses that server instead of the embedded one."""
    s = Stack(tmp_path, redis_url=system_redis_url)
    try:
        job = s.wait_job(s.submit(png_bytes(photo(48, 32, seed=7), "JPEG"), "p.jpg", **FAST).json()["job_id"])
        assert job["status"] == "succeeded", job
        assert Image.open(io.BytesIO(s.http.get(job["result_url"]).content)).size == (48, 32)
        assert s.redis.exists(f"preempt:job:{job['job_id']}")  # the job lives in that server
        assert not (tmp_path / "data" / "redis-url").exists()  # no embedded Redis was started
    finally:
        s.close()
