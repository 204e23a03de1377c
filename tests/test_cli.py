"""The ``preempt`` command line, run as a real subprocess on real image files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from preempt.core.images import decode
from preempt.core.threat import flat_norm


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "preempt.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def torchscript_model(tmp_path_factory, adv_model, fmnist_test):
    d = tmp_path_factory.mktemp("model")
    path = d / "fmnist.pt"
    torch.jit.trace(adv_model, fmnist_test[0][:1]).save(str(path))
    (d / "fmnist.json").write_text(json.dumps({"input_size": [28, 28], "channels": 1,
                                               "class_names": [str(i) for i in range(10)]}))
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, fmnist_test):
    d = tmp_path_factory.mktemp("images")
    x = (fmnist_test[0][:4, 0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(x[0], "L").save(d / "a.png")
    Image.fromarray(x[1], "L").save(d / "b.png")
    Image.fromarray(x[2], "L").save(d / "c.jpg", quality=90)
    big = np.array(Image.fromarray(x[3], "L").resize((44, 37))).astype(np.uint8)
    Image.fromarray(np.stack([big, big // 2, big], -1), "RGB").save(d / "photo.jpg", quality=92)
    return d


@pytest.mark.parametrize("norm,eps,extra", [("linf", 0.1, ()), ("l2", 1.5, ()), ("linf", 0.1, ("--texture",))])
def test_robustify_writes_pngs_within_budget(tmp_path, torchscript_model, image_folder, norm, eps, extra):
    out = tmp_path / "out"
    r = run("robustify", str(image_folder), "-o", str(out), "--model", str(torchscript_model), "--norm", norm,
            "--epsilon", str(eps), "--iterations", "8", "--steps", "5", *extra)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png", "photo.png"]
    for entry in report["images"]:
        src = decode(open(entry["input"], "rb").read()).pixels
        dst = decode((out / entry["output"].split("/")[-1]).read_bytes()).pixels
        assert dst.shape == src.shape  # native size and channels kept
        assert float(flat_norm((dst - src)[None], norm)[0]) <= eps + 1e-6
        assert entry[norm] <= eps + 1e-6
        assert entry["label_kept"] and "robust" in entry["verified"]
        assert entry["label_name"] == str(entry["label"])
        assert ("texture" in entry) == bool(extra)  # with --texture: whether the shaped change was written


def test_bad_arguments_get_one_line_and_nonzero_exit(tmp_path, torchscript_model, image_folder):
    for args in (
        ["robustify", str(tmp_path / "nope.png"), "-o", str(tmp_path), "--model", str(torchscript_model)],
        ["robustify", str(image_folder / "a.png"), "-o", str(tmp_path), "--model", str(tmp_path / "none.pt")],
        ["robustify", str(image_folder / "a.png"), "-o", str(tmp_path), "--epsilon", "-1"],
        ["robustify", str(image_folder / "a.png"), "-o", str(tmp_path), "--device", "cuda:7"],
        ["robustify", str(image_folder / "a.png"), "-o", str(tmp_path), "--retry", "--no-verify"],
        ["robustify", str(image_folder / "a.png"), "-o", str(tmp_path), "--survive", "jpeg:0-90"],
        ["robustify", str(image_folder / "a.png"), "-o", str(tmp_path), "--survive", "gif"],
        ["evaluate", "-n", "2", "--transform", "resize:-1"],
        ["evaluate", "-n", "2", "--transform", "jpeg:75", "--survive", "jpeg:75-"],
    ):
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") <= 2, r.stderr


def test_unreadable_image_is_reported_and_others_still_written(tmp_path, torchscript_model, image_folder):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = run("robustify", str(bad), str(image_folder / "a.png"), "-o", str(tmp_path / "o"), "--model",
            str(torchscript_model), "--iterations", "2", "--steps", "2", "--no-verify")
    assert r.returncode == 1
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "o" / "a.png").exists()


def test_evaluate_writes_a_table_whose_json_matches(tmp_path, torchscript_model):
    r = run("evaluate", "--model", str(torchscript_model), "-n", "24", "--attacks", "pgd", "--iterations", "5",
            "--steps", "5", "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md"))
    assert r.returncode == 0, r.stderr
    table = json.loads((tmp_path / "t.json").read_text())
    none, ours = table["rows"]
    assert (none["preempt"], ours["preempt"]) == ("none", "ours") and table["n_images"] == 24
    assert abs(ours["clean"] - none["clean"]) <= 0.05  # robustification keeps c(x_orig)
    assert 0 <= none["greybox_pgd"] <= none["clean"] and ours["linf"] <= 0.1 + 1e-6
    assert f"{100 * ours['greybox_pgd']:.2f}" in (tmp_path / "t.md").read_text()
    # what the robustified images cost in visibility: a change inside 0.1 is at least 20 dB, and visible
    assert 20 <= ours["psnr"] < 60 and 0 < ours["ssim"] < 1 and "visibility" in r.stdout


def test_certify_reports_certified_accuracy(tmp_path, torchscript_model):
    r = run("certify", "--model", str(torchscript_model), "-n", "3", "--n0", "20", "--samples", "200",
            "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "c.json").read_text())
    assert len(out["images"]) == 3 and 0 <= out["certified_accuracy"] <= 1
    assert all(img["radius"] >= 0 for img in out["images"])


def test_robustify_in_bf16_keeps_budget_and_fp32_label(tmp_path, image_folder):
    """``--precision bf16`` robustifies against the bf16 classifier; the budget holds, and the label
    and the verification come from the fp32 classifier."""
    out = tmp_path / "out"
    r = run("robustify", str(image_folder / "a.png"), str(image_folder / "b.png"), "-o", str(out),
            "--precision", "bf16", "--iterations", "6", "--steps", "5")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    from preempt.core.models import DEFAULT_MODEL, load_classifier

    fp32 = load_classifier(DEFAULT_MODEL)
    for entry in report["images"]:
        src = decode(open(entry["input"], "rb").read()).pixels
        with torch.no_grad():
            assert entry["label"] == int(fp32.model(src[None]).argmax(1))
        assert entry["linf"] <= 0.1 + 1e-6 and entry["label_kept"]


def test_train_writes_a_checkpoint_that_loads_and_its_card(tmp_path):
    """`preempt train` end to end on real Fashion-MNIST (600 images, one epoch): the checkpoint loads as a
    classifier, the card records the training (Algorithm 2 with --original-fraction) and its test accuracy;
    bad options exit 2 with one line."""
    from preempt.core.data import fashion_mnist
    from preempt.core.models import load_classifier

    out = tmp_path / "m.pt"
    r = run("train", "--method", "preemptive", "--norm", "l2", "--epsilon", "1.5", "--epochs", "1",
            "--attack-steps", "2", "--descent-steps", "2", "--original-fraction", "0.5", "--limit", "600",
            "--val-size", "100", "--test-size", "300", "--device", "cpu", "-o", str(out))
    assert r.returncode == 0, r.stderr
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["original_fraction"] == 0.5 and card["training"]["descent_steps"] == 2
    assert card["device"] == "cpu" and card["threat"] == {"norm": "l2", "epsilon": 1.5, "delta": 1.5}
    clf = load_classifier(str(out))
    x, y = fashion_mnist("test", limit=300)
    with torch.no_grad():
        acc = float((clf.model(x).argmax(1) == y).float().mean())
    assert abs(acc - card["test_clean_accuracy"]) < 1e-6 and acc > 0.3
    for bad in (["--original-fraction", "1"], ["--epochs", "0"]) + (() if torch.cuda.is_available() else (["--device", "cuda"],)):
        r = run("train", "--method", "preemptive", "--limit", "600", "-o", str(tmp_path / "x.pt"), *bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (bad, r.stderr)
        assert r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "x.pt").exists()
