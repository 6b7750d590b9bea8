"""Findings of the fuzzer in third-party peers, each with its reproducer under
fixtures/fuzz/peers/: each replays against the peer and must still show what was
recorded. When a peer's new version no longer does, this fails: the finding goes (its
file and this case), as a deviation that no longer holds does (issue 14)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from iscsi_conformance.fuzz.campaign import replay_once
from iscsi_conformance.fuzz.peer import DriverSubject
from iscsi_conformance.fuzz.repro import load

PEERS = Path(__file__).parents[2] / "fixtures" / "fuzz" / "peers"
IQN = "iqn.2024-01.org.iscsi-conformance:fuzz-finding"


@pytest.mark.peer
def test_tgt_dies_on_a_read_with_an_edtl_above_2_31() -> None:
    """tgt 1.0.85: one SCSI Command with the R bit and an Expected Data Transfer Length
    above 2**31 right after login, and tgtd dies by SIGSEGV for every initiator."""
    finding = load(PEERS / "tgt-1.0.85--read-edtl-above-2-31--dead.py")
    with DriverSubject("tgt", IQN) as tgt:
        version = tgt.version()
        if not version.startswith("1.0.85"):
            pytest.fail(f"tgt {version}: replay the finding and update its record")
        seen = asyncio.run(
            replay_once(tgt.host, tgt.port, IQN, finding["phase"], finding["login_keys"],
                        finding["pdus"], health=tgt, timeout=3.0)
        )  # fmt: skip
    assert (finding["kind"], finding["place"]) in seen, seen
    assert ("liveness", "dead: tgtd exited with status -11 (SIGSEGV)") in seen, seen
