"""What a platform does to an image before its classifier sees it, as a spec string (torch-free).

A spec is one or more stages joined by ``+``, applied left to right::

    jpeg:75            JPEG at quality 75 (Pillow's encoder on the 8-bit image, then decoded)
    jpeg:75-95         any quality from 75 to 95
    resize:0.5         both sides scaled by 0.5 (bicubic, antialiased, as Pillow's resize)
    resize:0.5-1.0     any scale from 0.5 to 1.0
    resize:0.5+jpeg:75 a thumbnail re-encoded
    none               nothing (the file as sent)

:func:`parse_spec` turns a spec into :class:`Stage` tuples and raises :class:`SpecError` with a one-line
message for anything else; the API validates requests with it without importing torch, and
:mod:`preempt.core.transforms` builds the codecs from its result. :func:`check_points` lists the settings a
verification runs at: the ends and the middle of every range.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Tuple

# name -> (lowest, highest, integer-valued, what a value is)
KINDS = {
    "jpeg": (1, 100, True, "a JPEG quality from 1 to 100"),
    "resize": (0.05, 4.0, False, "a scale of both sides from 0.05 to 4"),
}
MAX_STAGES = 4
MAX_GROWTH = 4.0  # how many times the stages together may enlarge each side (a bound on the work a spec can ask)


class SpecError(ValueError):
    """A transform spec that does not parse; the message is one line and says what would."""


@dataclass(frozen=True)
class Stage:
    """One step of a transform: ``kind`` with a value anywhere in ``[lo, hi]`` (``lo == hi``: fixed)."""

    kind: str
    lo: float
    hi: float

    @property
    def fixed(self) -> bool:
        return self.lo == self.hi

    def at(self, value: float) -> "Stage":
        return Stage(self.kind, value, value)

    def points(self) -> List[float]:
        """The values a check runs at: the value, or the ends and the middle of the range."""
        if self.fixed:
            return [self.lo]
        mid = (self.lo + self.hi) / 2
        if KINDS[self.kind][2]:
            mid = float(round(mid))
        return sorted({self.lo, mid, self.hi})

    def __str__(self) -> str:
        fmt = (lambda v: str(int(v))) if KINDS[self.kind][2] else (lambda v: f"{v:g}")
        return f"{self.kind}:{fmt(self.lo)}" + ("" if self.fixed else f"-{fmt(self.hi)}")


def _number(text: str, kind: str, spec: str) -> float:
    lo, hi, integer, what = KINDS[kind]
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise SpecError(f"{spec!r}: {text!r} is not {what}") from None
    if not lo <= value <= hi:
        raise SpecError(f"{spec!r}: {text} is out of range; {kind} takes {what}")
    return float(value)


def parse_spec(spec: str) -> Tuple[Stage, ...]:
    """The stages of ``spec`` (empty for ``none``); :class:`SpecError` for anything that is not a spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("an empty transform spec; use e.g. jpeg:75, resize:0.5-1.0, resize:0.5+jpeg:85 or none")
    text = spec.strip().lower()
    if text == "none":
        return ()
    stages = []
    for part in text.split("+"):
        kind, sep, value = part.strip().partition(":")
        if kind not in KINDS:
            raise SpecError(f"{spec!r}: unknown transform {kind!r}; choose from {', '.join(KINDS)} (e.g. jpeg:75)")
        if not sep or not value.strip():
            raise SpecError(f"{spec!r}: {kind} needs a value, e.g. {kind}:{'75' if kind == 'jpeg' else '0.5'}")
        lo_text, dash, hi_text = value.strip().partition("-")
        lo = _number(lo_text.strip(), kind, spec)
        hi = _number(hi_text.strip(), kind, spec) if dash else lo
        if hi < lo:
            raise SpecError(f"{spec!r}: the range {value.strip()} runs backwards; write the smaller value first")
        stages.append(Stage(kind, lo, hi))
    if len(stages) > MAX_STAGES:
        raise SpecError(f"{spec!r}: at most {MAX_STAGES} stages")
    growth = 1.0
    for s in stages:
        growth *= s.hi if s.kind == "resize" else 1.0
    if growth > MAX_GROWTH:
        raise SpecError(f"{spec!r}: the resizes enlarge the image {growth:g} times; at most {MAX_GROWTH:g}")
    return tuple(stages)


def format_spec(stages: Tuple[Stage, ...]) -> str:
    """The canonical spec of ``stages`` (``parse_spec(format_spec(s)) == s``)."""
    return "+".join(str(s) for s in stages) or "none"


def normalize_spec(spec: str) -> str:
    """``spec`` validated and written canonically (``JPEG:75 `` -> ``jpeg:75``)."""
    return format_spec(parse_spec(spec))


def check_points(stages: Tuple[Stage, ...]) -> List[Tuple[Stage, ...]]:
    """Every combination of each stage's :meth:`Stage.points`: the fixed transforms a check must pass."""
    return [tuple(s.at(v) for s, v in zip(stages, values))
            for values in itertools.product(*(s.points() for s in stages))]
