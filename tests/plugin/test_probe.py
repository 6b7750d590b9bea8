"""The conformance probe (harness/probe.py) against the reference target, in-process.

The common paths run ``core.login.InitiatorLogin``; what they put on the wire is still
the probe's: its names once per connection, a test's keys verbatim (values the
negotiator refuses to hold included), CHAP by ``ChapClient`` with the target's mutual
proof checked. ``FullFeature`` cuts Data-Out with ``core.pdu.data_out_pdus``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.login import FULL_FEATURE, OPERATIONAL, SECURITY
from iscsi_conformance.core.text import parse_pairs
from iscsi_conformance.harness.probe import FullFeature, LoginProbe, ProbeConnection
from iscsi_conformance.initiator.raw import RawConnection
from iscsi_conformance.scsi import cdb

PREFIX = "iqn.2024-01.org.iscsi-conformance.test-probe"
INITIATOR = "iqn.2024-01.org.iscsi-conformance:probe-test"
CHAP = ("carol", "carol-secret-12")
TARGET_CHAP = ("refsrv", "refsrv-secret-9")


@pytest.fixture(scope="module")
def portal() -> Iterator[tuple[str, int]]:
    from iscsi_conformance.target import config as c
    from iscsi_conformance.target.server import TargetServer

    lun = (c.LunConfig(lun=0, size=1024 * 1024),)
    config = c.ServerConfig(
        portal_groups=(c.PortalGroupConfig(tag=1, portals=(("127.0.0.1", 0),)),),
        targets=(
            c.TargetConfig(name=f"{PREFIX}:plain", luns=lun),
            c.TargetConfig(name=f"{PREFIX}:mutual", luns=lun, chap=c.ChapConfig(*CHAP),
                           mutual_chap=c.ChapConfig(*TARGET_CHAP)),
            c.TargetConfig(name=f"{PREFIX}:small", luns=lun,
                           parameters={"MaxRecvDataSegmentLength": "1024",
                                       "InitialR2T": "No", "ImmediateData": "Yes"}),
        ),
    )  # fmt: skip
    server = TargetServer(config)
    server.start_in_thread()
    try:
        yield server.portal(1)
    finally:
        server.stop_thread()


def _run(portal: tuple[str, int], body: Any) -> Any:
    async def main() -> Any:
        async with ProbeConnection(RawConnection(*portal, timeout=5)) as raw:
            return await body(raw)

    return asyncio.run(asyncio.wait_for(main(), 30))


def _probe(raw: Any, name: str = "plain", **kw: Any) -> LoginProbe:
    kw.setdefault("initiator_name", INITIATOR)
    return LoginProbe(raw, target_name=f"{PREFIX}:{name}", **kw)


def _texts(probe: LoginProbe) -> list[list[tuple[str, str]]]:
    return [list(parse_pairs(r.data)) if r.data else [] for r in probe.sent]


def test_whole_login_declares_names_once(portal: tuple[str, int]) -> None:
    async def body(raw: Any) -> LoginProbe:
        probe = _probe(raw)
        await probe.to_full_feature([("MaxBurstLength", "65536")])
        return probe

    probe = _run(portal, body)
    assert probe.in_full_feature
    first, second = _texts(probe)
    assert first == [
        ("InitiatorName", INITIATOR),
        ("TargetName", f"{PREFIX}:plain"),
        ("SessionType", "Normal"),
        ("AuthMethod", "None"),
    ]
    assert second == [
        ("MaxBurstLength", "65536"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "8192"),
    ]
    assert [(r.csg, r.nsg, r.transit) for r in probe.sent] == [
        (SECURITY, OPERATIONAL, True),
        (OPERATIONAL, FULL_FEATURE, True),
    ]
    assert probe.negotiated["MaxBurstLength"] == "65536"
    assert "MaxRecvDataSegmentLength" in probe.negotiated  # the target's declaration


def test_keys_go_out_verbatim(portal: tuple[str, int]) -> None:
    """An out-of-range value and a repeated key reach the target as the test wrote them."""

    async def body(raw: Any) -> LoginProbe:
        probe = _probe(raw)
        await probe.security_none()
        await probe.operational([("MaxBurstLength", str(1 << 24)), ("X-probe.Key", "1")])
        return probe

    probe = _run(portal, body)
    assert _texts(probe)[1] == [("MaxBurstLength", str(1 << 24)), ("X-probe.Key", "1")]
    assert probe.steps[1].keys.get("X-probe.Key") == "NotUnderstood"


def test_malformed_name_is_sent_as_given(portal: tuple[str, int]) -> None:
    async def body(raw: Any) -> LoginProbe:
        probe = _probe(raw, initiator_name="")
        await probe.to_full_feature([])
        return probe

    probe = _run(portal, body)
    assert _texts(probe)[0][0] == ("InitiatorName", "")
    assert not probe.in_full_feature


def test_mutual_chap(portal: tuple[str, int]) -> None:
    async def body(raw: Any) -> LoginProbe:
        probe = _probe(raw, "mutual")
        await probe.to_full_feature([], chap=CHAP, mutual=TARGET_CHAP)
        return probe

    probe = _run(portal, body)
    assert probe.in_full_feature
    keys = [[k for k, _ in t] for t in _texts(probe)]
    assert keys[:3] == [
        ["InitiatorName", "TargetName", "SessionType", "AuthMethod"],
        ["CHAP_A"],
        ["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"],
    ]
    assert "CHAP_R" in probe.steps[2].keys


def test_mutual_chap_wrong_target_secret(portal: tuple[str, int]) -> None:
    async def body(raw: Any) -> None:
        await _probe(raw, "mutual").chap(*CHAP, mutual=(TARGET_CHAP[0], "not-the-secret"))

    with pytest.raises(AssertionError, match=r"R7143-12\.1\.3-9"):
        _run(portal, body)


def test_data_out_within_the_target_segment_length(portal: tuple[str, int]) -> None:
    """Unsolicited Data-Out after immediate data, each PDU within the target's 1024 bytes."""

    async def body(raw: Any) -> Any:
        probe = _probe(raw, "small")
        await probe.to_full_feature([("InitialR2T", "No"), ("ImmediateData", "Yes")])
        assert probe.in_full_feature
        ffp = FullFeature(raw, probe)
        await ffp.clear_unit_attention(0)
        return await ffp.command(cdb.write10(0, 8), data_out=os.urandom(8 * 512), lun=0)

    out = _run(portal, body)
    assert out.status == 0
    cmd, *data_outs = out.sent
    assert len(cmd.data) == 1024
    assert all(isinstance(d, P.ScsiDataOut) and len(d.data) <= 1024 for d in data_outs)
    assert sum(len(d.data) for d in data_outs) + len(cmd.data) == 8 * 512
    unsolicited = [d for d in data_outs if d.ttt == 0xFFFFFFFF]
    assert [d.datasn for d in unsolicited] == list(range(len(unsolicited)))
    assert unsolicited and unsolicited[-1].final


def test_answer_r2ts_completes_a_held_write(portal: tuple[str, int]) -> None:
    """``hold_write`` stops at the WRITE's first R2T; ``answer_r2t`` sends what that R2T
    asks for and ``answer_r2ts`` the rest, each PDU within the target's 1024 bytes, until
    the SCSI Response; the data reads back."""
    data = os.urandom(8 * 512)
    keys = [
        ("ImmediateData", "No"),
        ("InitialR2T", "Yes"),
        ("MaxBurstLength", "2048"),
        ("FirstBurstLength", "2048"),
    ]

    async def body(raw: Any) -> Any:
        probe = _probe(raw, "small")
        await probe.to_full_feature(keys)
        assert probe.in_full_feature
        ffp = FullFeature(raw, probe)
        await ffp.clear_unit_attention(0)
        cmd, r2t, _ = await ffp.hold_write(0, cdb.write10(16, 8), len(data))
        assert r2t is not None
        sent = await ffp.answer_r2t(cmd, r2t, data)
        received: list[Any] = []
        resp = await ffp.answer_r2ts(cmd, data, sent=sent, received=received)
        back = await ffp.command(cdb.read10(16, 8), read_length=len(data), lun=0)
        return r2t, sent, received, resp, back

    r2t, sent, received, resp, back = _run(portal, body)
    assert (r2t.buffer_offset, r2t.desired_data_transfer_length) == (0, 2048)
    assert [p.r2tsn for p in received if isinstance(p, P.R2T)] == [1]
    assert resp is not None and resp.status == 0
    assert [d.buffer_offset for d in sent] == [0, 1024, 2048, 3072]
    assert [(d.datasn, d.final) for d in sent] == [(0, False), (1, True)] * 2
    assert back.status == 0 and back.data == data
