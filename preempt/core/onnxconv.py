"""ONNX classifiers as PyTorch modules, so that gradients flow through them (onnx2torch).

onnx2torch converts each ONNX node to a torch module. It expects every weight to be a graph initializer
and knows operator versions up to opset 17; what exporters write today often differs. :func:`prepare`
rewrites a model into the form it reads, without changing what the model computes:

* ``Constant`` nodes holding a tensor become initializers (some exporters store weights that way);
* ``Identity`` nodes of an initializer become a copy of it (PyTorch's TorchScript-based exporter shares
  equal weights through ``Identity``, and onnx2torch then finds no weight for the convolution);
* ``Reshape`` with ``allowzero=1`` and a constant target shape without a zero becomes ``allowzero=0``
  (the two are the same for such a shape; PyTorch's torch.export-based exporter writes ``allowzero=1``);
* a model above opset 17 is converted down to 17 with ONNX's own version converter.

:func:`onnxruntime_logits` runs the original file in onnxruntime, the reference the conversion is checked
against before a model is accepted (``preempt models add``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17  # the highest opset whose operators onnx2torch 1.5 converts


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ValueError("ONNX models need the onnx and onnx2torch packages (pip install onnx onnx2torch)") from e
    return onnx


def prepare(model):
    """``model`` (an ``onnx.ModelProto``) in the form onnx2torch converts; see the module docstring."""
    onnx = _onnx()
    from onnx import numpy_helper, version_converter

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}

    def add_initializer(source, name):
        t = onnx.TensorProto()
        t.CopyFrom(source)
        t.name = name
        graph.initializer.append(t)
        initializers[name] = t

    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            add_initializer(node.attribute[0].t, node.output[0])
        elif node.op_type == "Identity" and node.input[0] in initializers:
            add_initializer(initializers[node.input[0]], node.output[0])
        else:
            kept.append(node)
    for node in kept:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in initializers:
            shape = numpy_helper.to_array(initializers[node.input[1]])
            for a in node.attribute:
                if a.name == "allowzero" and a.i == 1 and not (shape == 0).any():
                    a.i = 0
    del graph.node[:]
    graph.node.extend(kept)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=OPSET)
    if opset > OPSET:
        try:
            model = version_converter.convert_version(model, OPSET)
        except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError and others
            raise ValueError(f"opset {opset} could not be converted to opset {OPSET}, which the ONNX-to-PyTorch "
                             f"converter reads ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                             f"export with opset_version={OPSET}") from e
    return model


def load_onnx(path: Path) -> nn.Module:
    """The classifier in ``path`` (ONNX) as a PyTorch module in eval mode; ``ValueError`` says why not."""
    onnx = _onnx()
    from onnx2torch import convert

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - DecodeError, ValidationError, OSError...
        raise ValueError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if len(model.graph.input) - len({t.name for t in model.graph.initializer} & {i.name for i in model.graph.input}) != 1:
        raise ValueError(f"{path}: the model must take one input (an image batch)")
    try:
        module = convert(prepare(model))
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - NotImplementedError for an operator, KeyError...
        raise ValueError(f"{path}: the ONNX-to-PyTorch conversion failed ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from e
    return module.eval()


def onnxruntime_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    """What onnxruntime (CPU) computes for the model input ``x`` ``[B, C, H, W]``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
    return torch.from_numpy(np.asarray(out))
