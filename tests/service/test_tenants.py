"""Many platforms on the real stack (`preempt serve`, embedded Redis and Debian's redis-server): keys
required, each job readable only by its key, and webhooks delivered signed, retried after a 500."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import redis

from preempt.client import verify_signature
from preempt.keys import KeyStore
from tests.service.conftest import Stack, png_bytes, photo

AUTH = {"PREEMPT_AUTH": "required", "PREEMPT_WEBHOOK_ALLOW": "127.0.0.1", "PREEMPT_WEBHOOK_RETRY_SECONDS": "60"}
CHEAP = {"preset": "low", "iterations": "2", "verify": "false"}


class Receiver(BaseHTTPRequestHandler):
    """A loopback webhook receiver: answers 500 to the first delivery, 200 after; keeps what it got."""

    got: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.got.append((self.headers.get("Preempt-Signature", ""), body))
        self.send_response(500 if len(Receiver.got) == 1 else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.got = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


@pytest.mark.parametrize("backend", ["embedded", "debian"])
def test_keys_isolate_jobs_and_webhooks_arrive_signed_after_a_retry(tmp_path, receiver, backend, request):
    url = request.getfixturevalue("system_redis_url") if backend == "debian" else None
    stack = Stack(tmp_path, redis_url=url, env=AUTH)
    try:
        keys = KeyStore(redis.Redis.from_url(url) if url else stack.redis)
        key_a, a = keys.create(f"a-{backend}")
        key_b, _ = keys.create(f"b-{backend}")
        head_a, head_b = ({"Authorization": f"Bearer {k}"} for k in (key_a, key_b))
        assert stack.submit(png_bytes(photo(24, 24))).status_code == 401
        r = stack.http.post("/v1/robustify", headers=head_a, data={**CHEAP, "callback_url": receiver},
                            files={"file": ("x.png", png_bytes(photo(24, 24, seed=2)))})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        reads = [stack.http.get(f"/v1/jobs/{job_id}", headers=head_b).status_code,
                 stack.http.get(f"/v1/jobs/{job_id}/result", headers=head_b).status_code,
                 stack.http.delete(f"/v1/jobs/{job_id}", headers=head_b).status_code]
        assert reads == [404, 404, 404]
        stack.http.headers.update(head_a)
        job = stack.wait_job(job_id)
        assert job["status"] == "succeeded", job
        for _ in range(100):
            if len(Receiver.got) >= 2:
                break
            time.sleep(0.1)
        assert len(Receiver.got) == 2  # a 500, then a retry that was taken
        header, body = Receiver.got[-1]
        assert verify_signature(a.webhook_secret, body, header)
        assert not verify_signature(a.webhook_secret, body + b" ", header)
        assert json.loads(body)["job_id"] == job_id and json.loads(body)["status"] == "succeeded"
        record = stack.http.get(f"/v1/jobs/{job_id}").json()["webhook"]
        assert record == {"attempts": 2, "last_status": 200, "delivered": True}
        assert key_a not in (tmp_path / "serve.log").read_text()
        refused = stack.http.post("/v1/robustify", data={**CHEAP, "callback_url": "http://10.0.0.1/x"},
                                  files={"file": ("x.png", png_bytes(photo(24, 24)))})
        assert refused.status_code == 422 and "private" in refused.json()["detail"]
        # a replayed POST with the same Idempotency-Key is the same job
        again = [stack.http.post("/v1/robustify", headers={"Idempotency-Key": "same"}, data=CHEAP,
                                 files={"file": ("x.png", png_bytes(photo(24, 24, seed=5)))}) for _ in range(2)]
        assert [r.status_code for r in again] == [202, 200] and again[0].json() == again[1].json()
        # a key over its rate: 429 with Retry-After
        key_c, _ = keys.create(f"c-{backend}", rate=2)
        codes = [stack.http.get("/v1/models", headers={"Authorization": f"Bearer {key_c}"}) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429] and int(codes[-1].headers["Retry-After"]) >= 1
        # revoked: refused at once
        keys.revoke(f"b-{backend}")
        assert stack.http.get("/v1/models", headers=head_b).status_code == 403
        # no key in clear in Redis's dump
        server = redis.Redis.from_url(url) if url else stack.redis
        server.save()
        folder, name = server.config_get("dir")["dir"], server.config_get("dbfilename")["dbfilename"]
        dump = open(f"{folder}/{name}", "rb").read()
        assert all(k.encode() not in dump for k in (key_a, key_b, key_c))
    finally:
        stack.close()


def test_a_batch_of_several_keys_jobs_gives_each_result_to_its_owner_only(tmp_path):
    stack = Stack(tmp_path, env={**AUTH, "PREEMPT_BATCH_WAIT": "1.5"})
    try:
        keys = KeyStore(stack.redis)
        heads = [{"Authorization": f"Bearer {keys.create(name)[0]}"} for name in ("p1", "p2", "p3")]
        image = png_bytes(photo(26, 26, seed=4))
        # a long job first keeps the worker busy while the same-settings jobs of three keys queue up together
        blocker = stack.http.post("/v1/robustify", headers=heads[0], files={"file": ("b.png", png_bytes(photo(64, 64)))},
                                  data={"iterations": "40", "verify": "false"}).json()["job_id"]
        owned = [(h, stack.http.post("/v1/robustify", headers=h, files={"file": (f"{i}.png", image)},
                                     data=CHEAP).json()["job_id"]) for i, h in enumerate(heads * 2)]
        stack.http.headers.update(heads[0])
        stack.wait_job(blocker)
        sizes = []
        for head, job_id in owned:
            stack.http.headers.update(head)
            job = stack.wait_job(job_id)
            assert job["status"] == "succeeded", job
            sizes.append(job["report"]["batch_size"])
            assert stack.http.get(job["result_url"]).content[:4] == b"\x89PNG"
            for other in heads:
                if other is not head:
                    assert stack.http.get(f"/v1/jobs/{job_id}/result", headers=other).status_code == 404
                    assert stack.http.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
        assert max(sizes) >= 3, sizes  # jobs of different keys ran in one batch
    finally:
        stack.close()
