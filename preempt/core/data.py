"""Fashion-MNIST as float tensors in [0, 1] pixel space, from the idx files of Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``; override with ``PREEMPT_FASHION_MNIST_DIR``).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown idx element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated ({arr.size} elements for shape {shape})")
    return arr.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(
        f"{root / stem}[.gz] not found: install Debian's dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist) or set PREEMPT_FASHION_MNIST_DIR")


def held_out_size(images: int, val_size: int) -> int:
    """How many of the first ``images`` training images ``preempt train --val-size`` holds out: at most a fifth."""
    return min(val_size, images // 5)


def fashion_mnist(split: str = "test", root: Optional[Path] = None, limit: Optional[int] = None):
    """``(x, y)``: images ``[N, 1, 28, 28]`` float32 in [0, 1] and labels ``[N]`` int64."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    root = Path(root or os.environ.get("PREEMPT_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))
