"""Protecting files on disk: what ``preempt robustify`` does with a folder of people's photos.

* :func:`plan` finds the inputs (a folder's files; with ``recursive`` its sub-folders' too, the
  structure kept under the output folder), maps each to its output (``OUT/<path in the folder>.png``, or ``.jpg``)
  and refuses, before any work, an output folder that is or lies inside an input folder, an output
  path that is a file, an output that would overwrite an input, and two inputs that would write one
  output. Hidden files (``.name``) are passed over.
* :class:`Report` is ``report.json``: rewritten atomically after every batch, so an interrupted run
  leaves a valid report; a rerun reuses each image whose report entry and output file exist and were
  made with the same request and seed.
  Every input that is not an image, or cannot be read, is kept with its reason.
* :func:`protect_files` runs a request over a plan in batches of one shape, on this machine
  (:func:`local_runner`) or on a Preempt service (:func:`remote_runner`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from preempt.compare import comparison
from preempt.imagefile import ImageError, inspect_image
from preempt.request import RobustifyRequest


class PlanError(ValueError):
    """Inputs and output that cannot be protected as given; the message says what to change."""


@dataclass(frozen=True)
class Item:
    source: Path
    output: Path
    picture: Path  # the before/after/difference picture, when asked for
    shape: tuple = ()  # (C, H, W) of the decoded image


@dataclass
class Plan:
    items: List[Item]  # the readable images
    unreadable: List[tuple]  # (path, reason): inputs that are not images or cannot be read
    skipped: List[tuple]  # (path, reason): what the inputs hold that is not protected (sub-folders)


def _item(source: Path, rel: Path, out_dir: Path) -> Item:
    return Item(source, out_dir / rel, out_dir / "compare" / rel.with_name(rel.stem + ".compare.png"))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def plan(inputs: Sequence, out_dir: Path, recursive: bool = False, suffix: str = ".png") -> Plan:
    """The images to protect and where each goes (its comparison picture under ``OUT/compare/``), each file
    read and checked once (:func:`~preempt.imagefile.inspect_image`); :class:`PlanError` for anything
    unsafe or missing. ``suffix``: of the outputs (``.png``, or ``.jpg`` for JPEG output)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PlanError(f"{out_dir} is a file; -o names the folder the protected images go to")
    out = out_dir.resolve()
    items, skipped = [], []
    for given in map(Path, inputs):
        if not given.exists():
            raise PlanError(f"{given}: no such file or directory")
        if given.is_file():
            items.append(_item(given, Path(given.with_suffix(suffix).name), out_dir))
            continue
        if _inside(out, given.resolve()):
            raise PlanError(f"the output folder {out_dir} is inside the input folder {given}: the protected "
                            "images would mix with the originals (and could replace them); choose another -o")
        for path in sorted(given.rglob("*") if recursive else given.iterdir()):
            rel = path.relative_to(given)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if path.is_dir():
                if not recursive:
                    skipped.append((path, "a folder; --recursive protects the images in sub-folders"))
            elif path.is_file():
                items.append(_item(path, rel.with_suffix(suffix), out_dir))
    readable, unreadable = [], []
    for item in items:
        if item.output.resolve() == item.source.resolve():
            raise PlanError(f"{item.source} would be overwritten by its protected version; choose another -o")
        try:
            readable.append(replace(item, shape=inspect_image(item.source.read_bytes()).shape))
        except (ImageError, OSError) as e:
            unreadable.append((item.source, str(e)))
    items = readable
    seen: dict = {}
    for item in items:
        for written in (item.output, item.picture):
            if written in seen:
                raise PlanError(f"{seen[written]} and {item.source} would both be written to {written}")
            seen[written] = item.source
    if not items and not unreadable and not skipped:
        raise PlanError("no input files given")
    return Plan(items, unreadable, skipped)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old content or all of the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class Report:
    """``report.json`` of a run: the request, one entry per protected image, the failures and the skipped."""

    path: Path
    request: RobustifyRequest
    seed: int = 0
    images: dict = field(default_factory=dict)  # str(source) -> entry
    failed: dict = field(default_factory=dict)  # str(source) -> reason
    skipped: dict = field(default_factory=dict)  # str(path) -> reason
    _previous: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            old = json.loads(self.path.read_text())
            self._previous = {e["input"]: e for e in old.get("images", []) if isinstance(e, dict) and "input" in e}
        except (OSError, ValueError, AttributeError, TypeError):
            self._previous = {}

    @property
    def settings_key(self) -> str:
        """What an entry must have been made with to be reused: the request and the seed."""
        return _sha256(json.dumps({"request": self.request.model_dump(), "seed": self.seed}, sort_keys=True).encode())

    def reusable(self, item: Item) -> Optional[dict]:
        """The earlier entry of ``item`` if its output is still the file that run wrote, with these settings."""
        entry = self._previous.get(str(item.source))
        if not entry or entry.get("settings") != self.settings_key or entry.get("output") != str(item.output):
            return None
        try:
            return entry if _sha256(item.output.read_bytes()) == entry.get("output_sha256") else None
        except OSError:
            return None

    def add(self, entry: dict) -> None:
        self.images[entry["input"]] = entry

    def summary(self) -> dict:
        verified = [e["verified"]["robust"] for e in self.images.values() if "verified" in e]
        return {"images": len(self.images), "verified_robust": sum(verified),
                "not_robust": len(verified) - sum(verified), "verified": self.request.verify != "off",
                "failed": len(self.failed), "skipped": len(self.skipped)}

    def save(self) -> None:
        body = {"request": self.request.model_dump(), "seed": self.seed, "summary": self.summary(),
                "images": list(self.images.values()),
                "failed": [{"input": k, "error": v} for k, v in self.failed.items()],
                "skipped": [{"input": k, "reason": v} for k, v in self.skipped.items()]}
        _write_atomic(self.path, (json.dumps(body, indent=2) + "\n").encode())


@dataclass
class Outcome:
    written: int = 0
    reused: int = 0
    failed: int = 0


Progress = Callable[[int, int, int, int], None]  # (images done, images to do, iteration, iterations)
# A batch of original files in, for each a (PNG, report) out, or (None, {"error": reason}) when it failed;
# the callable reports (iteration, iterations) of the batch as it goes.
Runner = Callable[[List[bytes], Callable[[int, int], None]], List[tuple]]


def local_runner(request: RobustifyRequest, protector) -> Runner:
    """Robustify on this machine (:func:`preempt.pipeline.protect`)."""
    from preempt.core.images import decode
    from preempt.pipeline import protect

    def run(originals: List[bytes], progress: Callable[[int, int], None]) -> List[tuple]:
        results = protect(request, protector, [decode(data) for data in originals],
                          progress=lambda i, n, loss: progress(i, n))
        return [(r.data, r.report) for r in results]

    return run


def remote_runner(client, request: RobustifyRequest, concurrency: int = 4) -> Runner:
    """Robustify on a Preempt service through :class:`preempt.client.Client` (the request's form fields)."""
    fields = request.model_dump(include={"model", "preset", "norm", "epsilon", "delta", "iterations", "verify",
                                         "retry", "strength", "smooth", "texture", "survive", "format",
                                         "quality"})

    def run(originals: List[bytes], progress: Callable[[int, int], None]) -> List[tuple]:
        jobs = client.robustify_many(originals, concurrency=concurrency,
                                     progress=lambda done, total: progress(done, total), **fields)
        return [(client.result(job), job.report) if job.status == "succeeded"
                else (None, {"error": f"job {job.job_id} {job.status}: {job.error}"}) for job in jobs]

    return run


def protect_files(request: RobustifyRequest, run: Runner, work: Plan, report: Report, *, batch_size: int = 64,
                  force: bool = False, compare: bool = False, progress: Optional[Progress] = None) -> Outcome:
    """Protect the files of ``work`` with ``run`` (:func:`local_runner` or :func:`remote_runner`), saving
    ``report`` after every batch.

    ``force`` redoes images a previous run finished; ``compare`` also writes ``NAME.compare.png`` (original,
    protected, amplified difference) under ``OUT/compare/``. The plan's unreadable inputs are reported as
    failed. Ctrl-C (``KeyboardInterrupt``) leaves the report of the batches done.
    """
    from preempt.core.protect import batches_by_shape

    outcome = Outcome(failed=len(work.unreadable))
    for path, reason in work.skipped:
        report.skipped[str(path)] = reason
    for path, reason in work.unreadable:
        report.failed[str(path)] = reason
    todo = []
    for item in work.items:
        previous = None if force else report.reusable(item)
        if previous is not None:
            report.add(previous)
            outcome.reused += 1
        else:
            todo.append(item)
    report.save()
    done = 0
    for batch in batches_by_shape([item.shape for item in todo], batch_size):
        items = [todo[i] for i in batch]
        originals = [item.source.read_bytes() for item in items]
        results = run(originals, lambda i, n: progress and progress(done, len(todo), i, n))
        for item, data, (png, job_report) in zip(items, originals, results):
            if png is None:
                report.failed[str(item.source)] = job_report["error"]
                outcome.failed += 1
                continue
            _write_atomic(item.output, png)
            entry = {"input": str(item.source), "output": str(item.output), **job_report,
                     "output_sha256": _sha256(png), "settings": report.settings_key}
            if compare:
                _write_atomic(item.picture, comparison(data, png, request.delta))
                entry["compare"] = str(item.picture)
            report.add(entry)
            outcome.written += 1
        done += len(items)
        report.save()
        if progress is not None:
            progress(done, len(todo), request.iterations, request.iterations)
    return outcome
