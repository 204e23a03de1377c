"""The API in-process (TestClient, dependency overrides): requests are typed and resolved once, errors
map to status codes by type, a job is stored with its request and batch key and sent to the queue."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from preempt.api.deps import get_enqueue
from preempt.registry import DEFAULT_MODEL, model_card
from preempt.request import RobustifyRequest


def png(width=28, height=28, mode="L", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def post(client, data: bytes, path="/v1/robustify", **fields):
    return client.post(path, files={"file": ("x.png", data)}, data={k: str(v) for k, v in fields.items()})


def test_a_job_is_stored_with_its_resolved_request_and_sent_to_the_queue(client):
    r = post(client, png(), model="fmnist-l2-ours-8ep", preset="low")
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert client.sent == [job_id]
    job = client.app.state.store.get(job_id)
    request = RobustifyRequest.from_json(job["request"])
    # the card's threat (l2 1.5), the preset's effort
    assert (request.norm, request.epsilon, request.delta) == ("l2", 1.5, 1.5)
    assert (request.iterations, request.steps, request.samples) == (30, 10, 1)
    assert job["batch"] == request.batch_key((1, 28, 28)) and job["image"]["width"] == 28
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "queued" and view["params"] == request.model_dump()
    assert (request.strength, request.smooth) == ("medium", True)
    other = post(client, png(), strength="low", smooth="false").json()["job_id"]
    params = client.get(f"/v1/jobs/{other}").json()["params"]
    assert (params["strength"], params["smooth"]) == ("low", False)
    assert request.texture is False and params["texture"] is False
    shaped = post(client, png(), texture="true").json()["job_id"]
    assert client.get(f"/v1/jobs/{shaped}").json()["params"]["texture"] is True


def test_image_errors_map_to_status_codes_by_type(client):
    whole = png(64, 64, "RGB")
    cases = [(b"hello, not an image", 415, "unsupported_media_type"),
             (whole[: len(whole) // 2], 400, "bad_image"),
             (png(400, 400), 413, "too_many_pixels"),  # over the settings' 100,000 pixels
             (b"", 400, "bad_image")]
    for data, status, code in cases:
        r = post(client, data)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
        assert r.json()["detail"].startswith("file: ")
    assert client.sent == []


def test_parameter_errors_name_the_field_and_create_no_job(client):
    for fields, field in (({"delta": "5"}, "delta"), ({"norm": "l3"}, "norm"), ({"iterations": "2001"}, "iterations"),
                          ({"verify": "maybe"}, "verify"), ({"model": "nope"}, "model"),
                          ({"strength": "max"}, "strength"), ({"survive": "jpeg:101"}, "survive"),
                          ({"survive": "blur:3"}, "survive"), ({"survive": "resize:1-0.5"}, "survive"),
                          ({"texture": "maybe"}, "texture")):
        r = post(client, png(), **fields)
        assert r.status_code == 422 and r.json()["error"] == "invalid_parameter", r.text
        assert r.json()["detail"].startswith(field + ":")
    assert client.sent == []


def test_a_queue_that_refuses_fails_the_job_with_503(client):
    def broken(job_id):
        raise ConnectionError("broker down")

    client.app.dependency_overrides[get_enqueue] = lambda: broken
    r = post(client, png())
    assert r.status_code == 503 and r.json()["error"] == "queue_unavailable"


def test_unknown_job_is_404_and_result_of_a_queued_job_is_409(client):
    assert client.get("/v1/jobs/" + "0" * 32).json()["error"] == "not_found"
    job_id = post(client, png()).json()["job_id"]
    r = client.get(f"/v1/jobs/{job_id}/result")
    assert r.status_code == 409 and r.json()["error"] == "not_ready"
    assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert client.app.state.store.upload(job_id) is None  # the original is gone the moment the job ends


def test_compatible_jobs_share_a_batch_and_others_do_not(client):
    store = client.app.state.store
    a = post(client, png(seed=1), delta="0.05").json()["job_id"]
    b = post(client, png(seed=2), delta="0.05").json()["job_id"]
    c = post(client, png(seed=3), delta="0.06").json()["job_id"]
    d = post(client, png(32, 28, seed=4), delta="0.05").json()["job_id"]
    batch = store.get(a)["batch"]
    assert store.get(b)["batch"] == batch and store.get(c)["batch"] != batch and store.get(d)["batch"] != batch
    assert set(store.queued_in_batch(batch, 10)) == {a, b}


def test_models_route_lists_the_default(client):
    models = client.get("/v1/models").json()
    assert any(m["name"] == DEFAULT_MODEL and m["default"] for m in models["models"])
    assert model_card(DEFAULT_MODEL)["threat"] == next(m for m in models["models"] if m["default"])["threat"]
