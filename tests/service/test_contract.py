"""The contract against the live `preempt serve`: schemathesis over every route of the OpenAPI schema
(0 server errors, 0 responses outside the schema), the Python client, and the README's examples as written."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from preempt.client import AsyncClient, BadRequest, Client, NotFound
from tests.service.conftest import EXAMPLES, png_bytes, photo

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CASES = {"run": 0}


@pytest.fixture(scope="session")
def api_schema(stack):
    return schemathesis.openapi.from_url(stack.base + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_within_its_schema_and_never_5xx(case, stack):
    CASES["run"] += 1
    case.call_and_validate(base_url=stack.base, checks=CHECKS)


def test_client_protects_waits_downloads_and_raises_typed_errors(stack):
    with Client(stack.base, poll_interval=0.2) as preempt:
        job = preempt.robustify(sorted(EXAMPLES.glob("*.png"))[1], preset="low", verify="pgd")
        assert job.status in ("queued", "running") or job.ended
        job = preempt.wait(job, timeout=300)
        png = preempt.result(job)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and job.report["verified"]["attack"] == "pgd-20x5"
        assert job.timings.finished is not None and job.timings.finished.tzinfo is not None
        with pytest.raises(BadRequest) as e:
            preempt.robustify(b"not an image at all")
        assert (e.value.status, e.value.code) == (415, "unsupported_media_type")
        with pytest.raises(BadRequest) as e:
            preempt.robustify(png, delta=5)
        assert e.value.code == "invalid_parameter" and e.value.detail.startswith("delta")
        with pytest.raises(NotFound):
            preempt.job("0" * 32)
        seen = []
        jobs = preempt.robustify_many([png_bytes(photo(40, 30, seed=s)) for s in range(3)], concurrency=2,
                                      progress=lambda done, total: seen.append((done, total)), preset="low")
        assert [j.status for j in jobs] == ["succeeded"] * 3 and seen[-1] == (3, 3)


def test_async_client_does_the_same(stack):
    async def go():
        async with AsyncClient(stack.base, poll_interval=0.2) as preempt:
            jobs = await preempt.robustify_many([png_bytes(photo(36, 36, seed=9))], preset="low")
            return jobs[0], await preempt.result(jobs[0])

    job, png = asyncio.run(go())
    assert job.status == "succeeded" and png[:4] == b"\x89PNG"


def test_prefer_wait_answers_200_with_the_ended_job(stack):
    r = stack.http.post("/robustify", files={"file": ("x.png", png_bytes(photo(28, 28, seed=3)))},
                        data={"preset": "low", "verify": "false"}, headers={"Prefer": "wait=60"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded" and r.headers["Preference-Applied"] == "wait=60"


def test_cli_server_mode_writes_the_same_kind_of_outputs(stack, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "preempt.cli", "robustify", str(EXAMPLES), "-o", str(out),
                        "--server", stack.base, "--preset", "low", "--verify", "pgd"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*.png"))) == len(list(EXAMPLES.glob("*.png")))
    r = subprocess.run([sys.executable, "-m", "preempt.cli", "robustify", str(EXAMPLES), "-o", str(out),
                        "--server", stack.base, "--steps", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--steps" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _readme_block(language: str, needle: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if needle in b)


def test_readme_examples_work_as_written(stack, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    curl = _readme_block("sh", "curl").replace("http://127.0.0.1:8000", stack.base)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", curl], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "protected.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "protected.png").unlink()
    python = _readme_block("python", "preempt.client").replace("http://127.0.0.1:8000", stack.base)
    r = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "['succeeded', 'succeeded']" in r.stdout and (tmp_path / "protected.png").exists()
