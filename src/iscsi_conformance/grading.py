"""Graded verdicts: what a broken requirement weighs.

Theory of operation: a conformance test that fails broke a requirement, and the
requirement's level (RFC 2119) decides what the failure means, as h2spec's strict
mode and Autobahn|Testsuite's NON-STRICT do:

- ``must``: a MUST, MUST NOT, REQUIRED, SHALL or SHALL NOT was broken: a failure;
- ``should``: a SHOULD, SHOULD NOT or RECOMMENDED was broken: a *non-strict* result,
  shown apart, which fails a run only in strict mode (``--iscsi-strict``);
- ``informational``: behaviour the specification leaves open (MAY, OPTIONAL, or a row
  the catalog marks INFORMATIONAL): recorded with what was observed, never a failure.

A level this module does not know grades as ``must``: an unknown word never turns a
failure into a pass. This module is a leaf: it imports nothing of ours, so the plugin,
the results model, the verdict and the reports share one table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = [
    "FAILED",
    "GRADES",
    "INFORMATIONAL",
    "LEVEL_GRADE",
    "MUST",
    "NON_STRICT",
    "SHOULD",
    "Grade",
    "failed_outcome",
    "grade_of",
    "strongest",
]

Grade = Literal["must", "should", "informational"]
MUST: Grade = "must"
SHOULD: Grade = "should"
INFORMATIONAL: Grade = "informational"
GRADES: tuple[Grade, ...] = (MUST, SHOULD, INFORMATIONAL)  # strongest first

#: Outcomes of a failed test, by grade (the results format's ``outcome`` values).
FAILED = "failed"
NON_STRICT = "non-strict"

LEVEL_GRADE: dict[str, Grade] = {
    "MUST": MUST,
    "MUST NOT": MUST,
    "REQUIRED": MUST,
    "SHALL": MUST,
    "SHALL NOT": MUST,
    "SHOULD": SHOULD,
    "SHOULD NOT": SHOULD,
    "RECOMMENDED": SHOULD,
    "NOT RECOMMENDED": SHOULD,
    "MAY": INFORMATIONAL,
    "OPTIONAL": INFORMATIONAL,
    "INFORMATIONAL": INFORMATIONAL,
}


#: Every level a catalog row or a test reference may carry, strongest first.
LEVELS: tuple[str, ...] = tuple(LEVEL_GRADE)
#: The levels whose breach is a failure (graded must).
MANDATORY_LEVELS = frozenset(level for level, grade in LEVEL_GRADE.items() if grade == MUST)


def grade_of(level: str) -> Grade:
    """The grade of one level (``"SHOULD NOT"`` -> ``"should"``); unknown -> ``"must"``."""
    return LEVEL_GRADE.get(level.strip().upper(), MUST)


def strongest(levels: Iterable[str]) -> Grade | None:
    """The strongest grade among ``levels`` (None when there is none)."""
    grades = {grade_of(lv) for lv in levels}
    return next((g for g in GRADES if g in grades), None)


def failed_outcome(grade: str, *, strict: bool = False) -> str:
    """What a failed test of ``grade`` is reported as: ``failed`` (a MUST, or a SHOULD
    in strict mode), ``non-strict`` (a SHOULD) or ``informational`` (never a failure)."""
    if grade == INFORMATIONAL:
        return INFORMATIONAL
    if grade == SHOULD and not strict:
        return NON_STRICT
    return FAILED
