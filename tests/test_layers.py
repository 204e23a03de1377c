"""The layering the tree shows: api/ and worker/ above the store, core/ at the bottom.

Each check runs in a fresh interpreter, so what one module imports cannot hide behind another's.
"""

from __future__ import annotations

import os
import subprocess
import sys

ABOVE_CORE = ("preempt.api", "preempt.worker", "preempt.store", "preempt.queue", "preempt.request",
              "preempt.settings", "preempt.pipeline", "preempt.cli", "preempt.serve")


def imports_of(package: str) -> set:
    """The modules loaded by importing every module of ``package``."""
    code = ("import importlib, pkgutil, sys\n"
            f"pkg = importlib.import_module({package!r})\n"
            "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('\\n'.join(sys.modules))")
    env = {**os.environ, "PREEMPT_REDIS_URL": "redis://127.0.0.1:1/0"}
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True).stdout
    return set(out.split())


def test_core_imports_nothing_of_the_service():
    loaded = imports_of("preempt.core")
    assert not [m for m in loaded if m.startswith(ABOVE_CORE)]


def test_the_api_never_imports_torch_nor_core():
    loaded = imports_of("preempt.api")
    assert "torch" not in loaded and not [m for m in loaded if m.startswith(("preempt.core", "preempt.worker"))]
