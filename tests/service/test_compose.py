"""docker-compose.yml: valid for Compose, and shaped as the design asks (no Docker engine here)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_validates():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose; .ci/run does)")
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert {"redis", "api", "worker-gpu0"} <= set(resolved["services"])


def test_compose_shape():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and any(v.endswith(":/data") for v in redis["volumes"])
    assert "noeviction" in redis["command"]  # a full Redis refuses writes, never drops a job
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
    assert services["api"]["build"]["dockerfile"] == "docker/api.Dockerfile"
    workers = {n: s for n, s in services.items() if n.startswith("worker")}
    assert workers
    seen = set()
    for name, svc in workers.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert len(devices[0]["device_ids"]) == 1  # one GPU per worker service
        seen.add(devices[0]["device_ids"][0])
        assert svc["environment"]["PREEMPT_REDIS_URL"].startswith("redis://redis:")
    assert len(seen) == len(workers)  # no two workers share a GPU
    # added models (preempt models add) live in one volume that the API and every worker mount at PREEMPT_DATA_DIR
    for name in ["api", *workers]:
        svc = services[name]
        assert svc["environment"]["PREEMPT_DATA_DIR"] == "/data" and "preempt-data:/data" in svc["volumes"], name
    api_docker = (ROOT / "docker/api.Dockerfile").read_text()
    installs = [line for line in api_docker.replace("\\\n", " ").splitlines() if "pip install" in line]
    assert installs and all("torch" not in line for line in installs)  # the API image has no torch
    assert any("--no-deps" in line for line in installs)
