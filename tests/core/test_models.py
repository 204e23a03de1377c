import json

import pytest
import torch

from preempt.core.models import ModelSpec, Preprocess, build_model, load_classifier, save_checkpoint
from tests.conftest import accuracy


def test_state_dict_with_dataparallel_prefix_loads(tmp_path, adv_model, fmnist_test):
    sd = {"module." + k: v for k, v in adv_model.state_dict().items()}
    torch.save(sd, tmp_path / "m.pt")
    clf = load_classifier(str(tmp_path / "m.pt"), arch="small-cnn")
    x, y = fmnist_test[0][:100], fmnist_test[1][:100]
    assert accuracy(clf.model, x, y) == accuracy(adv_model, x, y)


def test_bare_network_state_dict_loads_into_normalized_model(tmp_path, adv_model, fmnist_test):
    torch.save(adv_model[1].state_dict(), tmp_path / "bare.pt")
    clf = load_classifier(str(tmp_path / "bare.pt"), arch="small-cnn")
    x = fmnist_test[0][:10]
    assert torch.allclose(clf.model(x), adv_model(x), atol=1e-5)


def test_torchscript_and_export_programs_load(tmp_path, adv_model, fmnist_test):
    x = fmnist_test[0][:10]
    torch.jit.trace(adv_model, x[:1]).save(str(tmp_path / "ts.pt"))
    torch.export.save(torch.export.export(adv_model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("b")},)),
                      str(tmp_path / "ep.pt2"))
    for name in ("ts.pt", "ep.pt2"):
        clf = load_classifier(str(tmp_path / name))
        assert torch.allclose(clf.model(x), adv_model(x), atol=1e-5), name


def test_checkpoint_with_card_loads_by_path(tmp_path, adv_model):
    save_checkpoint(adv_model, tmp_path / "c.pt", {"arch": "small-cnn", "dataset": "fashion-mnist", "num_classes": 10})
    assert json.loads((tmp_path / "c.json").read_text())["arch"] == "small-cnn"
    assert load_classifier(str(tmp_path / "c.pt")).num_classes == 10


def test_unusable_models_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a file nor a registered model"):
        load_classifier(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither a TorchScript file nor a state_dict"):
        load_classifier(str(tmp_path / "junk.pt"))
    torch.save(build_model("small-cnn").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="architecture"):
        load_classifier(str(tmp_path / "sd.pt"))


def test_preprocess_resizes_and_converts_differentiably(adv_model):
    spec = ModelSpec.from_dict({"input_size": [28, 28], "channels": 1})
    model = Preprocess(adv_model, spec)
    x = torch.rand(2, 3, 57, 43, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("arch,shape", [("preact-resnet18", (1, 3, 32, 32)), ("small-cnn", (1, 1, 28, 28))])
def test_architectures_build(arch, shape):
    assert build_model(arch)(torch.rand(shape)).shape == (1, 10)


def test_bf16_classifier_returns_fp32_logits_that_agree_with_fp32(fmnist_test):
    """``precision="bf16"`` runs the convolutions in bf16 but hands the algorithms fp32 logits;
    its predictions match the fp32 model's on real test images (up to a rare tie)."""
    fp32 = load_classifier("fmnist-linf-adv-8ep")
    bf16 = load_classifier("fmnist-linf-adv-8ep", precision="bf16")
    x = fmnist_test[0][:200]
    with torch.no_grad():
        a, b = fp32.model(x), bf16.model(x)
    assert b.dtype == torch.float32
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.98
    assert (a - b).abs().max() < 0.5  # bf16 has 8 mantissa bits: close, not equal
    with pytest.raises(ValueError, match="precision"):
        load_classifier("fmnist-linf-adv-8ep", precision="fp8")


def test_channels_last_is_chosen_by_device_and_precision():
    """Default layout: NHWC weights on a CPU (measured faster there), as asked otherwise."""
    def conv_weight(clf):
        return next(p for p in clf.model.parameters() if p.dim() == 4)

    assert conv_weight(load_classifier("fmnist-linf-adv-8ep")).is_contiguous(memory_format=torch.channels_last)
    assert conv_weight(load_classifier("fmnist-linf-adv-8ep", channels_last=False)).is_contiguous()
