"""Findings of the fuzzer in third-party peers, each with its reproducer under
fixtures/fuzz/peers/: each replays against the peer and must still show what was
recorded. When a peer's new version no longer does, this fails: the finding goes (its
file and this case), as a deviation that no longer holds does (issue 14)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.fuzz.campaign import (
    _connect,
    _next_pdu,
    default_login_keys,
    login,
    replay_once,
)
from iscsi_conformance.fuzz.peer import DriverSubject
from iscsi_conformance.fuzz.repro import load

PEERS = Path(__file__).parents[2] / "fixtures" / "fuzz" / "peers"
IQN = "iqn.2024-01.org.iscsi-conformance:fuzz-finding"
INITIATOR = "iqn.2024-01.org.iscsi-conformance:fuzzer"


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


@pytest.mark.peer
def test_tgt_keeps_serving_a_connection_it_let_be_reinstated() -> None:
    """tgt 1.0.85: a login with the ISID, TSIH and CID of the only connection of a
    session (ErrorRecoveryLevel 0) succeeds, and the old connection still answers a
    NOP-Out (R7143-6.3.4-1). Two connections: run here, not by ``replay_once``."""
    finding = load(PEERS / "tgt-1.0.85--connection-reinstatement--old-connection-answers.py")
    assert finding["requirement"] == "R7143-6.3.4-1"

    async def reinstate(host: str, port: int) -> str:
        keys = [*default_login_keys(INITIATOR, IQN, 8192), ("MaxConnections", "1"),
                ("ErrorRecoveryLevel", "0")]  # fmt: skip
        old = await _connect(host, port, 5.0)
        new = await _connect(host, port, 5.0)
        try:
            got: list[Any] = []
            rsp, _ = await login(old, keys, isid=0x80_0000_4242, timeout=5.0, result=got)
            await login(new, keys, isid=0x80_0000_4242, timeout=5.0, tsih=got[0].tsih, cid=0,
                        session=got[0].negotiated)  # fmt: skip
            nop = P.NopOut(immediate=True, itt=0x77, cmdsn=rsp.expcmdsn,
                           expstatsn=(rsp.statsn + 1) & 0xFFFFFFFF, data=b"ping")  # fmt: skip
            old.writer.write(P.encode(nop))
            try:
                while True:
                    pdu = await _next_pdu(old, 3.0)
                    if isinstance(pdu, P.NopIn) and pdu.itt == 0x77:
                        return "old connection answered"
            except (ConnectionError, TimeoutError, OSError) as exc:
                return f"old connection ended: {type(exc).__name__}"
        finally:
            old.close()
            new.close()

    with DriverSubject("tgt", IQN) as tgt:
        version = tgt.version()
        if not version.startswith("1.0.85"):
            pytest.fail(f"tgt {version}: run the finding again and update its record")
        outcome = asyncio.run(reinstate(tgt.host, tgt.port))
    assert outcome == "old connection answered", outcome


@pytest.mark.peer
def test_tgt_aborts_on_a_nop_out_with_a_foreign_ttt_then_a_command() -> None:
    """tgt 1.0.85: a NOP-Out with a valid ITT and a Target Transfer Tag tgtd never
    issued, then a SCSI Command, right after login, and tgtd aborts (SIGABRT)."""
    finding = load(PEERS / "tgt-1.0.85--nop-out-foreign-ttt-then-command--abort.py")
    iqn = dict(finding["login_keys"])["TargetName"]  # the login is the campaign's own
    with DriverSubject("tgt", iqn) as tgt:
        version = tgt.version()
        if not version.startswith("1.0.85"):
            pytest.fail(f"tgt {version}: replay the finding and update its record")
        seen = asyncio.run(
            replay_once(tgt.host, tgt.port, iqn, finding["phase"], finding["login_keys"],
                        finding["pdus"], health=tgt, timeout=3.0)
        )  # fmt: skip
    assert (finding["kind"], finding["place"]) in seen, seen
