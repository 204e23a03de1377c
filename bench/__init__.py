"""Benchmarks: ``python -m bench.robustify``, ``bench.passes``, ``bench.service``, ``bench.protection``."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, cols: list, json_path=None, markdown_path=None) -> str:
    """Print ``result["rows"]`` as a markdown table of ``cols``; write the JSON and the markdown when asked."""
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in result["rows"]:
        md += "| " + " | ".join("-" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]))
                                for c in cols) + " |\n"
    print(md)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(md)
    return md
