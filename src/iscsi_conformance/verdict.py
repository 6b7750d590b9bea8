"""Summaries and verdicts computed from a results document.

The certification verdict: a target passes when every test it could be given whose
strongest reference is a MUST (or MUST NOT / SHALL / REQUIRED) for the target role
passed. Skipped tests (capability or profile not available, writes not allowed) are
counted and listed, never silently dropped; a known deviation (xfailed) is still a
failure of the requirement for certification purposes.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path
from typing import Any, TextIO

MUST_LEVELS = frozenset({"MUST", "MUST NOT", "REQUIRED", "SHALL", "SHALL NOT"})


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

    @property
    def certified(self) -> bool:
        return self.must_tested > 0 and not self.must_failed


def certification_verdict(results: Any, target: str) -> Verdict:
    tested = passed = skipped = total = 0
    failed: list[str] = []
    for t in results.tests:
        pairing = results.pairing(t.pairing)
        if pairing is None or pairing.target != target:
            continue
        total += 1
        if t.outcome == "skipped":
            skipped += 1
            continue
        if not _is_target_must(t):
            continue
        tested += 1
        if t.outcome in ("passed",):
            passed += 1
        else:
            failed.append(
                f"{t.id}: {t.outcome}: {(t.message or t.deviation or '').splitlines()[0] if (t.message or t.deviation) else ''}"
            )
    return Verdict(target, tested, passed, failed, skipped, total)


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
            for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
            if c[k]
        ]
        print(f"  {pid:<40} {', '.join(parts)}", file=out)
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
