"""Findings of the fuzzer in third-party peers, each with its reproducer under
fixtures/fuzz/peers/: each replays against the peer and must still show what was
recorded. When a peer's new version no longer does, this fails: the finding goes (its
file and this case), as a deviation that no longer holds does (issue 14)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from iscsi_conformance.fuzz.campaign import replay_once
from iscsi_conformance.fuzz.repro import load
from iscsi_conformance.peers.base import LunSpec, TargetSpec
from iscsi_conformance.peers.registry import get_target_driver

PEERS = Path(__file__).parents[2] / "fixtures" / "fuzz" / "peers"
IQN = "iqn.2024-01.org.iscsi-conformance:fuzz-finding"


@pytest.mark.peer
def test_tgt_dies_on_a_read_with_an_edtl_above_2_31() -> None:
    """tgt 1.0.85: one SCSI Command with the R bit and an Expected Data Transfer Length
    above 2**31 right after login, and tgtd dies (SIGSEGV) for every initiator."""
    finding = load(PEERS / "tgt-1.0.85--read-edtl-above-2-31--dead.py")
    driver = get_target_driver("tgt")
    driver.start()
    try:
        version = driver.version()
        if not version.startswith("1.0.85"):
            pytest.fail(f"tgt {version}: replay the finding and update its record")
        ep = driver.configure(TargetSpec(iqn=IQN, luns=(LunSpec(8 * 1024 * 1024),)))
        seen = asyncio.run(
            replay_once(ep.host, ep.port, IQN, finding["phase"], finding["login_keys"],
                        finding["pdus"], timeout=3.0)
        )  # fmt: skip
        assert (finding["kind"], finding["place"]) in seen, seen
        assert driver.health() is not None  # the daemon is gone, not just this session
    finally:
        driver.stop()
