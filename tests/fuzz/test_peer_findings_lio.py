"""The fuzzer's finding in LIO (fixtures/fuzz/peers/lio-6.1--*), replayed against LIO in
its micro-VM: it must still show, or its record goes (issue 14). Not in the default
run, which would pay a micro-VM boot for it (the fuzz env's LIO campaign meets the
same SNACK class on its own): ``ISCSI_CONFORMANCE_FUZZ_REPLAY_LIO=1 pytest
tests/fuzz/test_peer_findings_lio.py -m peer``."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from iscsi_conformance.fuzz.campaign import Campaign, replay_once
from iscsi_conformance.fuzz.peer import DriverSubject
from iscsi_conformance.fuzz.repro import load

PEERS = Path(__file__).parents[2] / "fixtures" / "fuzz" / "peers"
_ASKED = os.environ.get("ISCSI_CONFORMANCE_FUZZ_REPLAY_LIO") == "1"
pytestmark = [
    # a peer test only where asked for: in CI a skipped peer test is a failure
    *([pytest.mark.peer] if _ASKED else []),
    pytest.mark.skipif(
        not _ASKED, reason="boots LIO's micro-VM: set ISCSI_CONFORMANCE_FUZZ_REPLAY_LIO=1"
    ),
]


def test_lio_stops_answering_after_a_status_snack_for_statsns_never_sent() -> None:
    """LIO 6.1: one Status SNACK (BegRun 128, RunLength 3491153888) right after a login
    at ErrorRecoveryLevel 1, and the target answers neither that connection's ping nor
    a fresh login 10 s later (RFC 7143 11.16: it MUST be rejected, Protocol Error)."""
    finding = load(PEERS / "lio-6.1--status-snack-huge-runlength--unresponsive.py")
    iqn = dict(finding["login_keys"])["TargetName"]
    with DriverSubject("lio", iqn) as lio:
        if "6.1." not in lio.version():
            pytest.fail(f"LIO {lio.version()}: replay the finding and update its record")
        seen = asyncio.run(
            replay_once(lio.host, lio.port, iqn, finding["phase"], finding["login_keys"],
                        finding["pdus"], health=lio, timeout=3.0)
        )  # fmt: skip
        assert (finding["kind"], finding["place"]) in seen, seen
        time.sleep(10)
        camp = Campaign(lio.host, lio.port, iqn, seconds=20)
        camp._deadline = time.monotonic() + 20
        assert asyncio.run(camp.alive(timeout=5.0)) is not None, "LIO answers again"
