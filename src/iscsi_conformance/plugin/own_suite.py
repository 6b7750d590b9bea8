"""A peer's own conformance suite inside a pairing: one result per case.

Theory of operation: some peers ship a conformance suite of their own (libiscsi's
``iscsi-test-cu``, about 230 cases). A conformance test
(``conformance/interop/test_own_suites.py``) runs it once per pairing through the
initiator's driver and hands the cases to :func:`record_cases`. Each case becomes a
result of its own in that pairing's cell, with the stable ID ``<peer>.<case name>``
(``libiscsi.SCSI.Read16.Simple``), and the pairing's manifests apply to it exactly as
to any other test: a deviation makes a failing case an expected failure, a case that
passes despite a deviation is an unexpected pass (strict, like ``xfail(strict=True)``),
and ``effect = "skip"`` records it as skipped. The results travel as the test's
``user_properties`` (``SUBRESULTS_KEY``), so they survive pytest-xdist.

The test that ran the suite fails when any case failed without a deviation, errored,
or passed unexpectedly; its message lists them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest

__all__ = ["CaseVerdicts", "record_cases"]

_OUTCOMES = {"passed": "passed", "failed": "failed", "error": "error"}


@dataclasses.dataclass
class CaseVerdicts:
    """What :func:`record_cases` decided, by outcome."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    unexpected: list[str] = dataclasses.field(default_factory=list)  # failed, error, xpassed

    def summary(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))


def _deviation(entries: Iterable[Any], test_id: str) -> tuple[str | None, str]:
    """(reason, effect) of the deviation that covers ``test_id`` on either side."""
    from iscsi_conformance.plugin.deviations import deviation_for, matching_deviation

    for entry in entries:
        if entry is None:
            continue
        version = str((entry.description or {}).get("version", ""))
        found = matching_deviation(entry.manifest, test_id, version)
        if found is not None:
            reason = deviation_for(entry.manifest, test_id, version)
            return f"known deviation of {entry.name}: {reason}", str(found.get("effect", "xfail"))
    return None, ""


def record_cases(
    request: pytest.FixtureRequest,
    peer: str,
    cases: Iterable[Any],
    *,
    entries: Iterable[Any],
    summary: str = "",
) -> CaseVerdicts:
    """Record every case (``.name``, ``.outcome`` passed/failed/error, ``.message``) of
    ``peer``'s own suite as a result of the running test's pairing."""
    from iscsi_conformance.plugin import SUBRESULTS_KEY

    entries = list(entries)
    verdicts = CaseVerdicts()
    records: list[dict[str, Any]] = request.node.stash.setdefault(SUBRESULTS_KEY, [])
    for case in cases:
        test_id = f"{peer}.{case.name}"
        outcome = _OUTCOMES.get(case.outcome, "error")
        reason, effect = _deviation(entries, test_id)
        skip_reason = None
        if reason is not None and effect == "skip":
            outcome, skip_reason = "skipped", reason
        elif reason is not None and effect == "intermittent":
            outcome = "passed" if outcome == "passed" else "xfailed"  # may pass: not strict
        elif reason is not None:
            outcome = "xpassed" if outcome == "passed" else "xfailed"
        verdicts.counts[outcome] = verdicts.counts.get(outcome, 0) + 1
        if outcome in ("failed", "error", "xpassed"):
            verdicts.unexpected.append(
                f"{test_id}: {outcome}" + (f" ({case.message})" if case.message else "")
            )
        records.append(
            {
                "id": test_id,
                "outcome": outcome,
                "summary": summary or f"{peer}'s own suite: {case.name}",
                "spec": [],
                "requirements": [],
                "message": case.message if outcome != "passed" else "",
                "details": "",
                "deviation": reason,
                "skip_reason": skip_reason,
                "duration": 0.0,
                "pdus": [],
                "notes": [],
            }
        )
    return verdicts
