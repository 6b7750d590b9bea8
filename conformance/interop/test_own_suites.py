"""Interop: an initiator's own conformance suite against every target of the run.

libiscsi ships ``iscsi-test-cu`` (families ``SCSI`` and ``iSCSI``); an initiator whose
manifest says ``own_suite = true`` has a driver with ``run_own_suite``. Each of its
cases is recorded as a result of its own in the pairing's cell, with the ID
``<initiator>.<Family>.<Suite>.<Test>`` (plugin/own_suite.py), and known deviations
are declared in the target's manifest under that ID like any other test's.
"""

from __future__ import annotations

from typing import Any

import pytest

from iscsi_conformance.plugin import require, spec
from iscsi_conformance.plugin.own_suite import record_cases

FAMILIES = ("SCSI", "iSCSI")
# Seconds per family before a hung test is given up on (the tests after it still run):
# a whole family takes 30 s on tgt and about 2 min on LIO in a TCG micro-VM.
SUITE_TIMEOUT = 360.0


@spec(
    "Interop.OwnSuite.Run",
    "SBC-3 5.16",
    "SPC-4 6.4",
    "RFC 7143 11.3",
    pairing="all",
    role="target",
    needs=("initiator:own_suite",),
    dataloss=True,
)
def test_own_suite(request: pytest.FixtureRequest, initiator: Any, target: Any) -> None:
    """The initiator's own suite runs against the target; every case is recorded, and
    none fails unless a manifest declares it."""
    ep = target.endpoint()
    cases = initiator.driver.run_own_suite(
        ep, families=FAMILIES, allow_dataloss=True, lun=target.lun, timeout=SUITE_TIMEOUT
    )
    verdicts = record_cases(request, initiator.name, cases, entries=(target.entry, initiator.entry))
    target.evidence.note(
        f"{initiator.name}'s own suite against {target.name}: {verdicts.summary()}"
    )
    shown = "; ".join(verdicts.unexpected[:20])
    if len(verdicts.unexpected) > 20:
        shown += f"; ... and {len(verdicts.unexpected) - 20} more"
    require(
        cases and not verdicts.unexpected,
        f"{initiator.name}.own-suite",
        f"{initiator.name}'s own suite against {target.name}: "
        f"{verdicts.summary() or 'no case ran'}; {shown}",
    )
