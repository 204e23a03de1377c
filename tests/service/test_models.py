"""A classifier added while the service runs: the API lists it at once, a worker loads it from the shared data
directory and protects against it, and once removed it is refused."""

from __future__ import annotations

import warnings

import torch

from preempt.modeladd import add_model, remove_model
from tests.service.conftest import EXAMPLES
from tests.test_models_add import CLASSES, TinyCNN


def test_a_model_added_to_the_running_service_is_listed_used_and_removed(stack, tmp_path):
    torch.manual_seed(1)
    onnx_file = tmp_path / "shop.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyCNN().eval(), (torch.rand(1, 1, 28, 28),), str(onnx_file), dynamo=False,
                          opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    folder = stack.data_dir / "models"
    add_model(onnx_file, "shop-cnn", class_names=CLASSES, norm="linf", epsilon=0.05, delta=0.06,
              description="the shop's clothing classifier", folder=folder)

    models = {m["name"]: m for m in stack.http.get("/v1/models").json()["models"]}
    assert models["shop-cnn"]["source"] == "added" and models["shop-cnn"]["format"] == "onnx"
    assert models["shop-cnn"]["threat"] == {"norm": "linf", "epsilon": 0.05, "delta": 0.06}
    assert models["shop-cnn"]["description"] == "the shop's clothing classifier"

    image = sorted(EXAMPLES.glob("*.png"))[1].read_bytes()
    created = stack.submit(image, model="shop-cnn", preset="low").json()
    job = stack.wait_job(created["job_id"])
    assert job["status"] == "succeeded", job
    assert job["params"]["model"] == "shop-cnn" and job["params"]["delta"] == 0.06
    report = job["report"]
    assert report["model"] == "shop-cnn" and report["label_name"] in CLASSES
    assert report["linf"] <= 0.06 + 1e-6

    remove_model("shop-cnn", folder=folder)
    assert "shop-cnn" not in {m["name"] for m in stack.http.get("/v1/models").json()["models"]}
    refused = stack.submit(image, model="shop-cnn")
    assert refused.status_code in (404, 422) and "shop-cnn" in refused.json()["detail"]
