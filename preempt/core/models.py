"""Classifiers: architectures, the platform's preprocessing, and loading of user models.

Every classifier Preempt optimises against maps a float batch ``[B, C, H, W]`` in [0, 1] to
logits ``[B, K]``: normalisation lives inside the model (:class:`Normalize`), so all of the
paper's algorithms work in pixel space, where epsilon and delta are defined.

Architectures: :class:`SmallCNN` (Fashion-MNIST), :class:`PreActResNet18` and
:class:`WideResNet` (34-10, CIFAR-10), torchvision ResNet-50 (ImageNet).

:func:`load_classifier` accepts a registered name, a checkpoint written by ``preempt train``
(``.pt`` with a model card beside it), a TorchScript file, a ``torch.export`` program (``.pt2``),
or a torchvision-style state_dict with ``arch``. A sidecar ``MODEL.json`` declares the input
size, channels, normalisation and class names; :class:`Preprocess` then makes any image size
and channel count fit the model, differentiably.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from preempt.registry import DEFAULT_MODEL, MODELS_DIR, read_sidecar, registered_models  # noqa: F401 - re-exported


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, so the wrapped network sees its training statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers for 28x28 grayscale images (about 0.4 M parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class _PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al. 2016) for 32x32 inputs, as in Rice et al. (2020)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_PreActBlock(cin, cout, stride), _PreActBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + skip


class WideResNet(nn.Module):
    """WideResNet-depth-widen (Zagoruyko and Komodakis 2016); 34-10 is the usual CIFAR-10 robust model."""

    def __init__(self, depth: int = 34, widen: int = 10, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                blocks.append(_WideBlock(cin, widths[i + 1], stride if j == 0 else 1))
                cin = widths[i + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _resnet50(num_classes=1000, in_channels=3):
    import torchvision

    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


ARCHS = {
    "small-cnn": SmallCNN,
    "preact-resnet18": PreActResNet18,
    "wrn-34-10": lambda num_classes=10, in_channels=3: WideResNet(34, 10, num_classes, in_channels),
    "resnet50": _resnet50,
}

# Normalisation statistics of the datasets (pixel space [0, 1]).
DATASET_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class ModelSpec:
    """What a classifier expects: the sidecar ``MODEL.json`` and the model card share these fields.

    ``input_size`` is ``[H, W]`` or None (the image is fed at its own size); ``channels`` is 1 or 3
    or None (the image's own channel count). ``mean``/``std`` are applied by :class:`Normalize`
    when the model does not normalise itself (registered architectures carry their own).
    """

    input_size: Optional[list] = None
    channels: Optional[int] = None
    mean: Optional[list] = None
    std: Optional[list] = None
    class_names: Optional[list] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {k: d[k] for k in ("input_size", "channels", "mean", "std", "class_names") if k in d}
        spec = cls(**known, extra={k: v for k, v in d.items() if k not in known})
        if spec.input_size is not None:
            if isinstance(spec.input_size, int):
                spec.input_size = [spec.input_size, spec.input_size]
            if len(spec.input_size) != 2 or min(spec.input_size) < 1:
                raise ValueError(f"input_size must be [H, W] of positive integers, got {spec.input_size!r}")
        if spec.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {spec.channels!r}")
        return spec

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**{k: v for k, v in d.items() if v is not None}, **extra}


class Preprocess(nn.Module):
    """The platform's preprocessing, differentiable: channel conversion, resize, normalisation.

    Maps an image batch at native resolution ``[B, C_img, H_img, W_img]`` in [0, 1] to what the
    wrapped classifier expects, so that robustification and attacks act on the transmitted file.
    Grayscale to RGB repeats the channel; RGB to grayscale uses ITU-R 601 luma weights (as PIL's
    ``convert("L")``); resizing is bilinear with antialiasing.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model, self.spec = model, spec
        self.normalize = Normalize(spec.mean, spec.std) if spec.mean is not None and spec.std is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = self.spec.channels
        if want is not None and x.shape[1] != want:
            if want == 1:
                w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                x = (x[:, :3] * w).sum(dim=1, keepdim=True)
            else:
                x = x[:, :1].expand(-1, 3, -1, -1)
        size = self.spec.input_size
        if size is not None and list(x.shape[-2:]) != list(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        if self.normalize is not None:
            x = self.normalize(x)
        return self.model(x)


class Autocast(nn.Module):
    """Runs the wrapped classifier under ``torch.autocast`` in ``dtype`` and returns fp32 logits.

    Inputs, the loss and the gradients the algorithms read stay fp32; only the classifier's own
    convolutions and matrix products run in reduced precision (bf16: fp32's exponent range, so no
    loss scaling). ``channels_last_input`` also lays the input out NHWC, which cuDNN's fastest
    mixed-precision convolutions want.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16, channels_last_input: bool = True):
        super().__init__()
        self.model, self.dtype, self.channels_last_input = model, dtype, channels_last_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_input and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


PRECISIONS = ("fp32", "bf16")


def build_model(arch: str, num_classes: int = 10, dataset: Optional[str] = None, in_channels: Optional[int] = None) -> nn.Module:
    """A fresh ``arch`` network in [0, 1] pixel space (normalisation of ``dataset`` built in)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
    dataset = dataset or {"small-cnn": "fashion-mnist", "resnet50": "imagenet"}.get(arch, "cifar10")
    mean, std = DATASET_STATS[dataset]
    channels = in_channels or len(mean)
    return nn.Sequential(Normalize(mean, std), ARCHS[arch](num_classes=num_classes, in_channels=channels))


def strip_prefixes(state_dict: dict) -> dict:
    """Drop ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes from keys."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_dict_into(model: nn.Module, state_dict: dict) -> nn.Module:
    """Load ``state_dict`` tolerant of wrapper prefixes and of a missing/extra ``Normalize`` wrapper."""
    sd = strip_prefixes(state_dict)
    for key in ("state_dict", "model", "model_state_dict"):
        if key in sd and isinstance(sd[key], dict):
            sd = strip_prefixes(sd[key])
    try:
        model.load_state_dict(sd)
    except RuntimeError:
        # A bare network's keys ("conv1.weight") against our Sequential(Normalize, net) ("1.conv1.weight").
        if isinstance(model, nn.Sequential) and isinstance(model[0], Normalize):
            model[1].load_state_dict(sd)
        else:
            raise
    return model


@dataclass
class LoadedClassifier:
    """A ready classifier: ``model`` in eval mode on [0, 1] input, with what is known about it."""

    model: nn.Module
    name: str
    spec: ModelSpec
    card: dict

    @property
    def num_classes(self) -> Optional[int]:
        return self.card.get("num_classes") or (len(self.spec.class_names) if self.spec.class_names else None)


def save_checkpoint(model: nn.Module, path: Path, card: dict) -> None:
    """Write ``path`` (state_dict) and ``path.json`` (the model card: arch, dataset, threat, figures...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold serialized code (``*/code/``); ``torch.save`` archives do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def model_format(path: Path) -> str:
    """``onnx``, ``export`` (a ``torch.export`` ``.pt2``), ``torchscript`` or ``state_dict``, by the file's kind."""
    path = Path(path)
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".pt2":
        return "export"
    return "torchscript" if _is_torchscript(path) else "state_dict"


def load_model_file(path: Path, card: dict, arch: Optional[str] = None, device: str = "cpu",
                    num_classes: Optional[int] = None) -> nn.Module:
    """The network in ``path`` as saved (no preprocessing, not yet in eval mode); ``card`` gives a
    state_dict's ``arch``, ``num_classes``, ``dataset`` and ``channels``. ``ValueError`` says what is wrong."""
    path = Path(path)
    arch = arch or card.get("arch")
    fmt = model_format(path)
    model: nn.Module
    if fmt == "onnx":
        from .onnxconv import load_onnx

        model = load_onnx(path)
    elif fmt == "export":
        try:
            model = torch.export.load(str(path)).module()
        except Exception as e:  # noqa: BLE001 - any failure here means "not an exported program"
            raise ValueError(f"{path}: not a torch.export program ({type(e).__name__}: {e})") from e
    elif fmt == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
                model = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: unreadable TorchScript file ({type(e).__name__}: {e})") from e
    else:
        try:
            sd = torch.load(str(path), map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: neither a TorchScript file nor a state_dict ({type(e).__name__})") from e
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a state_dict, found {type(sd).__name__}")
        if not arch:
            raise ValueError(f"{path} is a state_dict: say which architecture it is for (arch, one of {sorted(ARCHS)})")
        k = num_classes or card.get("num_classes", 10)
        model = build_model(arch, k, dataset=card.get("dataset"), in_channels=card.get("channels"))
        try:
            load_state_dict_into(model, sd)
        except RuntimeError as e:
            raise ValueError(f"{path}: the state_dict does not fit {arch} with {k} classes "
                             f"({str(e).splitlines()[0][:200]})") from e
    return model


def load_classifier(name_or_path: str, arch: Optional[str] = None, device: str = "cpu",
                    num_classes: Optional[int] = None, channels_last: Optional[bool] = None,
                    precision: str = "fp32") -> LoadedClassifier:
    """Load a classifier by registered name or file path; see the module docstring for formats.

    ``channels_last`` stores 4-D weights in NHWC order. ``None`` (the default) decides by what was
    measured (``bench/passes.py``, ``docs/performance.md``): on for a CPU (the small CNN's passes are
    1.4x faster on this project's 2-core reference machine) and for bf16 on a GPU (cuDNN's
    tensor-core kernels want NHWC), off for fp32 on a GPU (0.76x for ResNet-50, 0.94x for
    WideResNet-34-10 on an H200).

    ``precision="bf16"`` runs the classifier under bf16 autocast (:class:`Autocast`), for GPUs
    (``bench/passes.py`` and ``docs/performance.md`` have what it buys and what it costs).

    Raises ``ValueError`` with a message that says what to do when the model cannot be loaded.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    registered = registered_models()
    if name_or_path in registered:
        path = registered[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.exists():
            names = ", ".join(sorted(registered)) or "none"
            raise ValueError(f"model {name_or_path!r} is neither a file nor a registered model (registered: {names})")
    card = read_sidecar(path)
    spec = ModelSpec.from_dict(card)
    model = load_model_file(path, card, arch=arch, device=device, num_classes=num_classes)
    if spec.mean is not None or spec.input_size is not None or spec.channels is not None:
        model = Preprocess(model, spec)
    model = model.to(device)
    if channels_last is None:
        channels_last = torch.device(device).type == "cpu" or precision != "fp32"
    if channels_last:
        try:
            model = model.to(memory_format=torch.channels_last)
        except (RuntimeError, TypeError):
            pass  # a module whose parameters cannot take that layout runs as it was saved
    try:
        model.eval()
    except NotImplementedError:
        pass  # torch.export programs are already in inference form and refuse eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if precision == "bf16":
        model = Autocast(model, torch.bfloat16, channels_last_input=channels_last)
    check_classifier(model, spec)
    return LoadedClassifier(model=model, name=path.stem if name_or_path not in registered else name_or_path,
                            spec=spec, card=card)


def check_classifier(model: nn.Module, spec: ModelSpec) -> None:
    """Warn about models the algorithms will misjudge: randomized ones, or ones returning probabilities."""
    h, w = spec.input_size or (28, 28)
    c = spec.channels or 1
    x = torch.rand(2, c, h, w, device=next(iter(model.buffers()), torch.empty(0)).device)
    try:
        with torch.no_grad():
            a, b = model(x), model(x)
    except Exception:  # noqa: BLE001 - the probe shape may not fit a model without a spec
        return
    if a.dim() != 2:
        raise ValueError(f"the classifier must return logits [B, K]; it returned shape {list(a.shape)}")
    if not torch.allclose(a, b, atol=1e-5):
        warnings.warn("the classifier is randomized (two forward passes differ): attack results are not deterministic")
    if torch.allclose(a.sum(1), torch.ones(2, device=a.device), atol=1e-4) and (a >= 0).all():
        warnings.warn("the classifier seems to return probabilities; Preempt expects logits")
