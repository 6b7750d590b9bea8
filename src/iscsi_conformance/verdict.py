"""Summaries and verdicts computed from a results document.

The certification verdict: a target passes when every test it could be given whose
strongest reference is a MUST (or MUST NOT / SHALL / REQUIRED) for the target role
passed. Skipped tests (capability or profile not available, writes not allowed) are
counted and listed, never silently dropped; a known deviation (xfailed) is still a
failure of the requirement for certification purposes.

Verdicts are graded (``grading.py``): a failure that broke a MUST counts against
certification; a SHOULD broken is a *non-strict* result, counted apart, and fails
certification only in strict mode; an *informational* result (behaviour the RFC
leaves open) is counted and listed, never a failure.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path
from typing import Any, TextIO

from iscsi_conformance import grading

MUST_LEVELS = grading.MANDATORY_LEVELS


def _is_target_must(test: Any) -> bool:
    return any(s.level in MUST_LEVELS and s.role in ("target", "both") for s in test.spec)


@dataclasses.dataclass
class Verdict:
    target: str
    must_tested: int
    must_passed: int
    must_failed: list[str]
    skipped: int
    total: int
    non_strict: list[str] = dataclasses.field(default_factory=list)  # SHOULDs broken
    informational: list[str] = dataclasses.field(default_factory=list)
    strict: bool = False

    @property
    def certified(self) -> bool:
        """Every MUST it was tested on passed (and, strict, every SHOULD too)."""
        if self.strict and self.non_strict:
            return False
        return self.must_tested > 0 and not self.must_failed


def _line(t: Any) -> str:
    text = t.message or t.deviation or ""
    return f"{t.id}: {t.outcome}: {text.splitlines()[0] if text else ''}"


def certification_verdict(results: Any, target: str, *, strict: bool = False) -> Verdict:
    """The verdict on ``target`` from ``results``: MUST failures, non-strict results
    (a SHOULD broken; a failed result graded ``should`` in a strict run counts here too)
    and informational results, each counted apart."""
    tested = passed = skipped = total = 0
    failed: list[str] = []
    non_strict: list[str] = []
    informational: list[str] = []
    for t in results.tests:
        pairing = results.pairing(t.pairing)
        if pairing is None or pairing.target != target:
            continue
        total += 1
        if t.outcome == "skipped":
            skipped += 1
            continue
        grade = getattr(t, "grade", None)
        if t.outcome == grading.NON_STRICT or (t.outcome == "failed" and grade == grading.SHOULD):
            non_strict.append(_line(t))
            continue
        if t.outcome == grading.INFORMATIONAL or (
            t.outcome == "failed" and grade == grading.INFORMATIONAL
        ):
            informational.append(_line(t))
            continue
        if not (_is_target_must(t) or (t.outcome == "failed" and grade == grading.MUST)):
            continue
        tested += 1
        if t.outcome in ("passed",):
            passed += 1
        else:
            failed.append(_line(t))
    return Verdict(
        target, tested, passed, failed, skipped, total, non_strict, informational, strict
    )


def print_verdict(verdict: Verdict, out: TextIO = sys.stdout) -> None:
    """The graded summary of ``certify``: MUST failures, non-strict results (SHOULDs
    broken) and informational results, each counted and listed apart, then the verdict."""
    print(
        f"MUST requirements tested: {verdict.must_tested}, passed: {verdict.must_passed}, "
        f"failed: {len(verdict.must_failed)}; "
        f"non-strict (SHOULD broken): {len(verdict.non_strict)}; "
        f"informational: {len(verdict.informational)}; skipped tests: {verdict.skipped}",
        file=out,
    )
    for title, lines, shown in (
        ("FAILED", verdict.must_failed, 20),
        ("NON-STRICT", verdict.non_strict, 20),
        ("INFORMATIONAL", verdict.informational, 10),
    ):
        for line in lines[:shown]:
            print(f"  {title} {line}", file=out)
        if len(lines) > shown:
            print(f"  ... {len(lines) - shown} more {title.lower()} (see the report)", file=out)
    mode = " (strict: a SHOULD broken fails)" if verdict.strict else ""
    verdict_word = "CERTIFIED" if verdict.certified else "NOT CERTIFIED"
    print(f"{verdict_word}{mode}: {verdict.target}", file=out)


#: Failed tests named under each pairing's line of the run summary, at most.
SUMMARY_FAILURES = 10


def print_summary(results: Any, report_dir: Path, out: TextIO = sys.stdout) -> None:
    """One line per pairing with its counts, then where the report is."""
    by_pairing: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for t in results.tests:
        by_pairing[t.pairing][t.outcome] += 1
    print("", file=out)
    print("iSCSI conformance summary", file=out)
    for pid in sorted(by_pairing):
        c = by_pairing[pid]
        parts = [
            f"{c[k]} {k}"
            for k in (
                "passed",
                "failed",
                "error",
                "non-strict",
                "informational",
                "skipped",
                "xfailed",
                "xpassed",
            )
            if c[k]
        ]
        print(f"  {pid:<40} {', '.join(parts)}", file=out)
        # the failures by name, so that a log that keeps only this summary (a CI
        # excerpt) still says which tests broke, not only how many
        broke = [t for t in results.tests if t.pairing == pid and t.outcome in ("failed", "error")]
        for t in broke[:SUMMARY_FAILURES]:
            text = (t.message or "").strip().splitlines()
            print(f"    {t.outcome.upper()} {t.id}: {text[0][:200] if text else ''}", file=out)
        if len(broke) > SUMMARY_FAILURES:
            print(f"    ... {len(broke) - SUMMARY_FAILURES} more (see the report)", file=out)
    for run in getattr(results, "runs", []):
        phases = dict(getattr(run, "phases", None) or {})
        if phases:
            order = ["images", "startup", "tests", "restarts", "total"]
            shown = [f"{k} {phases[k]:.1f} s" for k in order if k in phases]
            shown += [f"{k} {v:.1f} s" for k, v in phases.items() if k not in order]
            print(f"  time: {', '.join(shown)}", file=out)
    html = report_dir / "index.html"
    if html.exists():
        print(f"HTML report: {html.resolve()}", file=out)
