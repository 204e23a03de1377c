"""`preempt models add|list|show|remove` on real models made here: a small CNN exported to ONNX by PyTorch's
TorchScript-based exporter, a torchvision ResNet-18 (random weights) exported to ONNX by the torch.export-based
exporter (weights in a separate .data file) and to TorchScript; and models each of the checks must refuse."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from preempt.core.models import load_classifier
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel
from preempt.modeladd import ModelRejected, add_model, real_images, remove_model
from preempt.registry import Catalog, added_models, registered_models

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class TinyCNN(nn.Module):
    def __init__(self, dropout: float = 0.0, out: str = "logits"):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 14 * 14, 10)
        self.drop = nn.Dropout(dropout)
        self.out = out

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        z = self.fc(self.drop(h.flatten(1)))
        if self.out == "argmax":
            return z.argmax(1)
        if self.out == "onehot":
            return 10 * F.one_hot(z.argmax(1), 10).float()  # logits-shaped, through argmax
        return z


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "preempt.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The model files, made once."""
    d = tmp_path_factory.mktemp("made")
    torch.manual_seed(0)
    cnn = TinyCNN().eval()
    x = torch.rand(1, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cnn, (x,), str(d / "cnn.onnx"), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
        torch.jit.trace(TinyCNN(dropout=0.5).train(), x, check_trace=False).save(str(d / "dropout.pt"))
        torch.jit.trace(TinyCNN().train(), x).save(str(d / "batchnorm.pt"))
        onehot = TinyCNN(out="onehot").eval()
        onehot.load_state_dict(cnn.state_dict())
        torch.jit.trace(onehot, x).save(str(d / "onehot.pt"))
        torch.jit.trace(TinyCNN(out="argmax").eval(), x).save(str(d / "argmax.pt"))
        resnet = torchvision.models.resnet18(num_classes=10).eval()
        r = torch.rand(1, 3, 64, 64)
        torch.onnx.export(resnet, (r,), str(d / "resnet18.onnx"), dynamo=True, verbose=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.jit.trace(resnet, r).save(str(d / "resnet18.pt"))
        x2 = torch.rand(2, 1, 28, 28)
        torch.export.save(torch.export.export(cnn, (x2,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}),
                          str(d / "cnn.pt2"))
        torch.export.save(torch.export.export(cnn, (x,)), str(d / "cnn_batch1.pt2"))
    (d / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 100)
    (d / "corrupt.pt").write_bytes((d / "resnet18.pt").read_bytes()[:5000])
    (d / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return d


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PREEMPT_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data" / "models"


IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def test_an_onnx_cnn_is_checked_registered_listed_served_and_removed(made, models_dir):
    lines = []
    card = add_model(made / "cnn.onnx", "shop-cnn", class_names=CLASSES, norm="linf", epsilon=0.05,
                     mean=[0.286], std=[0.353], say=lines.append)
    # channels and input size come from the ONNX file itself
    assert card["channels"] == 1 and card["input_size"] == [28, 28] and card["num_classes"] == 10
    assert card["format"] == "onnx" and card["threat"] == {"norm": "linf", "epsilon": 0.05, "delta": 0.05}
    names = [line.split(":")[0] for line in lines]
    assert names == ["ok   loads", "ok   runs", "ok   logits", "ok   gradient", "ok   deterministic",
                     "ok   onnxruntime", "ok   cost"], lines
    assert "real 4 images" in card["checks"]["onnxruntime"]
    assert card["cost"]["seconds_per_pass_batch1"] > 0
    assert card["cost"]["seconds_per_image_at_defaults"]["full_loop"] > card["cost"]["seconds_per_image_at_defaults"]["robust_from_start"]
    assert (models_dir / "shop-cnn.onnx").is_file() and "shop-cnn" in registered_models()

    # the API lists it (read again when the folder changes), and a request takes its threat
    catalog = Catalog()
    assert catalog.cards()["shop-cnn"]["source"] == "added"
    clf = load_classifier("shop-cnn")
    assert clf.num_classes == 10 and clf.spec.class_names == CLASSES
    x = torch.rand(3, 1, 28, 28)
    assert clf.model(x).shape == (3, 10)

    # the same name again needs --force; a shipped name never
    with pytest.raises(ModelRejected, match="already added"):
        add_model(made / "cnn.onnx", "shop-cnn", mean=[0.286], std=[0.353])
    with pytest.raises(ModelRejected, match="shipped model"):
        add_model(made / "cnn.onnx", "fmnist-linf-ours-12ep")

    remove_model("shop-cnn")
    assert "shop-cnn" not in catalog.cards() and not list(models_dir.glob("shop-cnn*"))
    with pytest.raises(ModelRejected, match="shipped"):
        remove_model("fmnist-linf-ours-12ep")


@pytest.mark.parametrize("file, flags, says", [
    ("dropout.pt", ["--input-size", "28", "28", "--channels", "1"], "FAIL deterministic: two passes on the same batch differ"),
    ("batchnorm.pt", ["--input-size", "28", "28", "--channels", "1"], "FAIL deterministic: an image's logits depend on the other images"),
    ("onehot.pt", ["--input-size", "28", "28", "--channels", "1"], "FAIL gradient: no gradient reaches the input"),
    ("argmax.pt", ["--input-size", "28", "28", "--channels", "1"], "FAIL logits: the output is shape [2] (int64)"),
    ("cnn.onnx", ["--num-classes", "5"], "FAIL logits: the model returns 10 classes; 5 were declared"),
    ("corrupt.onnx", [], "FAIL loads:"),
    ("cnn_batch1.pt2", ["--input-size", "28", "28", "--channels", "1"], "export with dynamic_shapes"),
    ("corrupt.pt", ["--input-size", "64", "64", "--channels", "3"], "FAIL loads:"),
    ("resnet18.pt", ["--channels", "3"], "input size: the torchscript file does not fix it; give --input-size H W"),
    ("resnet18.pt", ["--input-size", "64", "64", "--channels", "1"], "FAIL runs: a batch of shape [2, 1, 64, 64] fails"),
])
def test_each_failed_check_is_one_clear_line_and_nothing_is_added(made, tmp_path, file, flags, says):
    env = {**__import__("os").environ, "PREEMPT_DATA_DIR": str(tmp_path / "data")}
    r = run("models", "add", str(made / file), "--name", "bad", *flags, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    failures = [line for line in r.stderr.splitlines() if line.startswith("preempt: ")]
    assert len(failures) == 1 and says in failures[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "models").exists() or not list((tmp_path / "data" / "models").iterdir())


def test_onnx_and_torchscript_exports_of_one_resnet18_robustify_alike(made, models_dir):
    onnx_card = add_model(made / "resnet18.onnx", "r18-onnx", epsilon=4 / 255, **IMAGENET)
    ts_card = add_model(made / "resnet18.pt", "r18-ts", input_size=[64, 64], channels=3, epsilon=4 / 255, **IMAGENET)
    # the exporter wrote the weights beside the .onnx; the registered copy holds them in one file
    assert (made / "resnet18.onnx.data").exists() and not list(models_dir.glob("*.data"))
    assert onnx_card["input_size"] == ts_card["input_size"] == [64, 64]
    listed = json.loads(run("models", "list", "--json", env={**__import__("os").environ,
                                                             "PREEMPT_DATA_DIR": str(models_dir.parent)}).stdout)
    assert {(m["name"], m["source"], m["format"]) for m in listed} >= {("r18-onnx", "added", "onnx"),
                                                                        ("r18-ts", "added", "torchscript")}
    a, b = load_classifier("r18-onnx").model, load_classifier("r18-ts").model
    x = real_images()[:2]  # photographs at 256x256: preprocessing resizes them to 64x64
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = a(xa), b(xb)
    assert (la - lb).abs().max() < 1e-4
    F.cross_entropy(la, la.argmax(1)).backward()
    F.cross_entropy(lb, lb.argmax(1)).backward()
    assert F.cosine_similarity(xa.grad.flatten(), xb.grad.flatten(), dim=0) > 0.999
    threat = ThreatModel("linf", 4 / 255)
    config = RobustifyConfig(iterations=2, steps=5, stop_patience=0, plateau_window=0)
    results = []
    for model in (a, b):
        torch.manual_seed(0)
        results.append(robustify(model, x, threat, config))
    ra, rb = results
    assert torch.equal(ra.label, rb.label)
    assert (ra.robust_loss - rb.robust_loss).abs().max() < 0.02
    # sign steps amplify 1e-6 logit differences where a gradient is near zero: few pixels may part ways
    assert ((ra.x_rob - rb.x_rob).abs() > 1 / 255).float().mean() < 0.1
    for r in results:
        assert (r.x_rob - x).abs().max() <= 4 / 255 + 1e-6
    remove_model("r18-onnx")
    assert set(added_models()) == {"r18-ts"}


def test_a_torch_export_program_is_registered_and_loads_by_name(made, models_dir):
    card = add_model(made / "cnn.pt2", "shop-export", input_size=[28, 28], channels=1, num_classes=10)
    assert card["format"] == "export" and card["file"] == "shop-export.pt2"
    clf = load_classifier("shop-export")
    assert clf.model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
