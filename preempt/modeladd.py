"""Adding the platform's own classifier: ``preempt models add|list|show|remove``.

``add`` checks the file first (:func:`preempt.core.modelcheck.check_model`), then copies it into the models
directory of the data directory (:func:`preempt.registry.user_models_dir`) as ``NAME.<ext>`` beside its card
``NAME.json`` (the declared input, normalisation, classes and threat, the checks' results and the measured
cost). The card is written last and atomically, so a reader (the API, a worker) sees a model whole or not at
all. Files, not Redis: a ResNet-50 is 100 MB, and the embedded Redis keeps everything in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from preempt.registry import MODELS_DIR, added_models, shipped_models, user_models_dir

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SUFFIX = {"onnx": ".onnx", "export": ".pt2", "torchscript": ".pt", "state_dict": ".pt"}


class ModelRejected(ValueError):
    """The model was not added; ``lines`` says why, one line per failure."""

    def __init__(self, lines: Sequence[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def read_class_names(path: Path) -> List[str]:
    """Class names from a file: a JSON list, or one name per line (blank lines ignored)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ModelRejected([f"class names: cannot read {path} ({e.strerror})"]) from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelRejected([f"class names: {path} is not a valid JSON list ({e})"]) from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or not all(isinstance(n, str) for n in names):
        raise ModelRejected([f"class names: {path} holds no list of names"])
    return names


def onnx_input_shape(path: Path) -> tuple:
    """``(channels, [H, W])`` of an ONNX model's input where the file fixes them (``None`` where not)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the checks report an unreadable file
        return None, None
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        return None, None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        return None, None
    size = [dims[2], dims[3]] if dims[2] and dims[3] else None
    return dims[1], size


def _unreadable(path: Path, fmt: str) -> Optional[str]:
    """Why the file cannot be what its kind says (``None`` if it can), before any declaration is asked for."""
    if fmt == "onnx":
        try:
            import onnx

            onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - DecodeError and others
            return f"{path.name} is not a valid ONNX model ({type(e).__name__})"
    elif fmt == "state_dict":
        import torch

        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            return (f"{path.name} is neither a TorchScript file, a torch.export program (.pt2), an ONNX model (.onnx) "
                    f"nor a state_dict ({type(e).__name__})")
        if not isinstance(sd, dict):
            return f"{path.name} holds a {type(sd).__name__}, not a state_dict"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def real_images():
    """Four real photographs for the onnxruntime comparison: crops of the public-domain portrait of Grace
    Hopper that matplotlib ships, ``[4, 3, 256, 256]`` in [0, 1]."""
    import matplotlib.cbook
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    crops = [a[y:y + 256, x:x + 256] for y, x in ((0, 0), (0, 256), (300, 0), (300, 256))]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def add_model(path: Path, name: str, *, input_size: Optional[Sequence[int]] = None, channels: Optional[int] = None,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
              class_names: Optional[Sequence[str]] = None, num_classes: Optional[int] = None,
              arch: Optional[str] = None, norm: Optional[str] = None, epsilon: Optional[float] = None,
              delta: Optional[float] = None, description: Optional[str] = None, force: bool = False,
              folder: Optional[Path] = None, say: Callable[[str], None] = lambda line: None) -> dict:
    """Checks the model in ``path`` and registers it as ``name``; the card it wrote. ``say`` gets each check's
    line as it ends. Raises :class:`ModelRejected` with one line per failure."""
    from preempt.core.modelcheck import check_model
    from preempt.core.models import ARCHS, ModelSpec, model_format
    from preempt.request import MAX_BUDGET

    path, folder = Path(path), Path(folder or user_models_dir())
    problems = []
    if not NAME.match(name):
        problems.append(f"name: {name!r} must be 1-64 lower-case letters, digits, '.', '_' or '-', starting with "
                        "a letter or digit")
    if name in shipped_models():
        problems.append(f"name: {name!r} is a shipped model; choose another name")
    elif name in added_models(folder) and not force:
        problems.append(f"name: {name!r} is already added; --force replaces it")
    if not path.is_file():
        raise ModelRejected(problems + [f"file: {path} does not exist"])
    fmt = model_format(path)
    unreadable = _unreadable(path, fmt)
    if unreadable:
        raise ModelRejected(problems + [f"FAIL loads: {unreadable}"])
    if fmt == "onnx":
        onnx_channels, onnx_size = onnx_input_shape(path)
        channels = channels or onnx_channels
        input_size = input_size or onnx_size
    if fmt == "state_dict" and not arch:
        problems.append(f"arch: {path.name} is a state_dict; --arch names its architecture ({', '.join(sorted(ARCHS))})")
    if arch and (mean or std):
        problems.append("mean/std: an --arch network normalises its input itself; leave out --mean/--std")
    if not input_size:
        problems.append(f"input size: the {fmt} file does not fix it; give --input-size H W")
    elif len(input_size) != 2 or min(input_size) < 1:
        problems.append(f"input size: {list(input_size)} is not H W of positive integers")
    if channels not in (1, 3):
        problems.append(f"channels: {'not given' if channels is None else channels}; give --channels 1 or 3")
    if (mean is None) != (std is None):
        problems.append("mean/std: give both or neither")
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and channels in (1, 3) and len(values) not in (1, channels):
            problems.append(f"{label}: {len(values)} values for {channels} channels")
    if std is not None and any(v <= 0 for v in std):
        problems.append("std: every value must be positive")
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            problems.append(f"classes: --num-classes {num_classes} but {len(class_names)} class names")
        num_classes = len(class_names)
    threat = None
    if norm or epsilon or delta:
        norm = norm or "linf"
        if epsilon is None:
            problems.append("epsilon: --norm/--delta need --epsilon, the adversary's budget")
        else:
            delta = delta or epsilon
            for label, v in (("epsilon", epsilon), ("delta", delta)):
                if not 0 < v <= MAX_BUDGET[norm]:
                    problems.append(f"{label}: {v:g} is out of range for {norm}; allowed (0, {MAX_BUDGET[norm]:g}]")
            threat = {"norm": norm, "epsilon": epsilon, "delta": delta}
    if problems:
        raise ModelRejected(problems)

    def expand(v):
        return list(v) * channels if v is not None and len(v) == 1 else (list(v) if v is not None else None)

    spec = ModelSpec(input_size=list(input_size), channels=channels, mean=expand(mean), std=expand(std),
                     class_names=list(class_names) if class_names else None)
    report = check_model(path, spec, num_classes=num_classes, arch=arch,
                         real_images=real_images() if fmt == "onnx" else None)
    for check in report.checks:
        say(check.line())
    if not report.ok:
        raise ModelRejected(report.failures())

    folder.mkdir(parents=True, exist_ok=True)
    file_name = name + SUFFIX[fmt]
    card = {
        **spec.to_dict(), "name": name, "source": "added", "format": fmt, "file": file_name,
        "sha256": _sha256(path), "bytes": path.stat().st_size, "origin": str(path.resolve()),
        "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "num_classes": report.num_classes,
        "checks": {c.name: c.detail for c in report.checks}, "cost": report.cost,
    }
    if arch:
        card["arch"] = arch
    if threat:
        card["threat"] = threat
    if description:
        card["description"] = description
    if fmt == "onnx":
        _save_onnx(path, folder / file_name)
    else:
        _atomic_copy(path, folder / file_name)
    for old in folder.glob(name + ".*"):  # a replaced model of another format
        if old.name not in (file_name, name + ".json", file_name + ".data"):
            old.unlink()
    _atomic_write(folder / f"{name}.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def remove_model(name: str, folder: Optional[Path] = None) -> None:
    """Removes an added model (its card first, so that no reader sees a card without its file)."""
    folder = Path(folder or user_models_dir())
    if name in shipped_models():
        raise ModelRejected([f"{name!r} is a shipped model (in {MODELS_DIR}); only added models can be removed"])
    models = added_models(folder)
    if name not in models:
        raise ModelRejected([f"no added model {name!r} in {folder}"])
    (folder / f"{name}.json").unlink()
    models[name].unlink(missing_ok=True)
    Path(str(models[name]) + ".data").unlink(missing_ok=True)


def _atomic(dst: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``dst``, made readable by the workers (which may run as
    another user), then renamed over ``dst``: a reader sees the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_copy(src: Path, dst: Path) -> None:
    _atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def _save_onnx(src: Path, dst: Path) -> None:
    """The ONNX model as one file: exporters write the weights beside it (``MODEL.onnx.data``), which a copy
    of the file alone would lose. Past protobuf's 2 GB the weights stay external, as ``NAME.onnx.data``."""
    import onnx

    model = onnx.load(str(src))  # with its external data
    big = model.ByteSize() > 1_800_000_000
    _atomic(dst, lambda tmp: onnx.save_model(model, tmp, save_as_external_data=big,
                                             location=dst.name + ".data" if big else None))


def _atomic_write(dst: Path, text: str) -> None:
    _atomic(dst, lambda tmp: Path(tmp).write_text(text))
