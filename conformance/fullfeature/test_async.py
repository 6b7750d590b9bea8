"""FullFeature.Async: the Asynchronous Messages a target sends of its own accord
(RFC 7143 11.9, 11.9.1 to 11.9.4).

Every event of 11.9.1 is the target's own initiative: a logout request, a connection
or session drop, a renegotiation request, a SCSI asynchronous event, a vendor event.
No request of the initiator asks for one, so these tests run where the suite can make
the target send them: on a dedicated reference target instance, whose test API sends
the event on the session the test logged in (``DedicatedTarget.send_async``). Other
targets skip them as not supported (capability ``dedicated_instance``). What a target
must do is checked at the level 11.9 gives it: the logout request goes on the
connection to be logged out and a SCSI event names its LUN (MUST); the Parameter
fields, the StatSN it advances and the layout of its data segment are definitions
without keyword (informational).
"""

from __future__ import annotations

from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.serial import add_mod as sn_add
from iscsi_conformance.harness.probe import FullFeature, full_feature, join_session
from iscsi_conformance.plugin import require, spec

#: AsyncEvent codes (RFC 7143 11.9.1).
SCSI_EVENT, LOGOUT, CONNECTION_DROP, SESSION_DROP, RENEGOTIATE, VENDOR = 0, 1, 2, 3, 4, 255
#: REPORTED LUNS DATA HAS CHANGED, fixed format (SPC-4 4.5.3): a unit attention's sense.
SENSE = bytes([0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x3F, 0x0E, 0, 0, 0, 0])
WAIT = 3.0  # seconds for an Async Message asked of the target to arrive


async def _next_async(ffp: FullFeature, event: int) -> tuple[Any, list[Any]]:
    """Read until the Async Message ``event`` (None when the connection went quiet or
    closed first); every PDU read meanwhile comes back too."""
    got: list[Any] = []
    for _ in range(16):
        pdu = await ffp.recv(timeout=WAIT)
        if pdu is None:
            return None, got
        got.append(pdu)
        if isinstance(pdu, P.AsyncMessage) and pdu.async_event == event:
            return pdu, got
    return None, got


def _expected_statsn(ffp: FullFeature) -> int:
    """The StatSN the next status-numbered PDU of the connection carries."""
    return ffp.expstatsn


async def _closed(ffp: FullFeature, seconds: float = 5.0) -> tuple[bool, list[Any]]:
    """Whether the target closes the connection within ``seconds`` (PDUs read meanwhile)."""
    got = await ffp.drain(seconds)
    gone = ffp.no_answer
    return gone is not None and gone.outcome.name == "CLOSED", got


@spec(
    "FullFeature.Async.LogoutRequest",
    "RFC 7143 11.9.1",
    "RFC 7143 11.14",
    requirements=["R7143-11.9-1", "R7143-11.14-1"],
    needs=("dedicated_instance", "async_messages"),
)
async def test_logout_request(target: Any) -> None:
    """An Async Message requesting the logout of one connection of a two-connection
    session comes on that connection, not on the other; the Logout the initiator then
    sends is answered and the connection closes."""
    with target.dedicated() as inst:
        async with full_feature(inst, keys=[("MaxConnections", "2")]) as first, inst.raw() as raw2:
            probe2 = await join_session(inst, raw2, first.probe, cid=first.probe.cid + 1)
            if not probe2.in_full_feature:
                pytest.skip("a second connection could not join the session")
            raw2.set_digests(header=False, data=False)
            second = FullFeature(raw2, probe2)
            before = _expected_statsn(second)
            inst.send_async(first.probe.tsih, LOGOUT, cid=probe2.cid, time_to_logout=7)
            msg, got = await _next_async(second, LOGOUT)
            require(
                msg is not None,
                "R7143-11.9-1",
                f"asked to request the logout of CID {probe2.cid}, the target sent no "
                "Async Message (event 1) on that connection",
                received=second.shown(*got, None),
            )
            stray, on_first = await _next_async(first, LOGOUT)
            require(
                stray is None,
                "R7143-11.9-1",
                f"the logout request of CID {probe2.cid} came on CID {first.probe.cid}, "
                "a connection not to be logged out",
                received=on_first,
            )
            require(
                msg.parameter3 == 7 and msg.statsn == before,
                "R7143-11.9-7",
                f"Async Message event 1 carries Parameter3 {msg.parameter3} (asked: 7) "
                f"and StatSN {msg.statsn} (next of the connection: {before})",
                received=[msg],
                level="INFORMATIONAL",
            )
            req = P.LogoutRequest(
                immediate=True,
                reason=1,  # close the connection (RFC 7143 11.14.1)
                itt=second.next_itt(),
                cid=probe2.cid,
                cmdsn=second.cmdsn,
                expstatsn=second.expstatsn,
            )
            reply = await second.exchange(req)
            require(
                isinstance(reply.pdu, P.LogoutResponse) and reply.pdu.response == 0,
                "R7143-11.14-1",
                f"the Logout the target asked for was answered {type(reply.pdu).__name__ if reply.pdu is not None else reply.missing()}",
                sent=[req],
                received=[msg, *reply.shown()],
            )
            closed, after = await _closed(second)
            require(
                closed,
                "R7143-11.14-1",
                "after the Logout Response the target did not close the connection "
                f"({second.no_answer})",
                sent=[req],
                received=[reply.pdu, *after],
            )


@spec(
    "FullFeature.Async.ScsiEvent",
    "RFC 7143 11.9.3",
    "RFC 7143 11.9.4",
    requirements=["R7143-11.9-2", "R7143-11.9-8"],
    needs=("dedicated_instance", "async_messages"),
)
async def test_scsi_event(target: Any) -> None:
    """A SCSI asynchronous event (event 0) about LUN 1 carries LUN 1 in its LUN field
    (MUST) and, in its data segment, SenseLength then the sense data (a definition)."""
    with target.dedicated(luns=2) as inst:
        async with full_feature(inst) as ffp:
            inst.send_async(ffp.probe.tsih, SCSI_EVENT, lun=1, sense=SENSE)
            msg, got = await _next_async(ffp, SCSI_EVENT)
            require(
                msg is not None,
                "harness",
                "asked to report a SCSI event, the reference target sent no Async Message",
                received=ffp.shown(*got, None),
            )
            require(
                msg.lun == P.lun_to_field(1),
                "R7143-11.9-2",
                f"a SCSI event about LUN 1 carries LUN field {msg.lun:#018x} "
                f"(expected {P.lun_to_field(1):#018x})",
                received=[msg],
            )
            length = int.from_bytes(msg.data[:2], "big") if len(msg.data) >= 2 else -1
            require(
                length == len(SENSE) and msg.data[2 : 2 + length] == SENSE,
                "R7143-11.9-8",
                f"the data segment ({len(msg.data)} bytes) is not SenseLength "
                f"{len(SENSE)} then the event's sense data (SenseLength read: {length})",
                received=[msg],
                level="INFORMATIONAL",
            )


@pytest.mark.parametrize("event", [CONNECTION_DROP, SESSION_DROP], ids=["connection", "session"])
@spec(
    "FullFeature.Async.Drop",
    "RFC 7143 11.9.1",
    level="INFORMATIONAL",
    requirements=["R7143-11.9-6", "R7143-11.9-7", "R7143-4.2.2.2-1"],
    needs=("dedicated_instance", "async_messages"),
)
async def test_drop(target: Any, event: int) -> None:
    """A connection drop (event 2) names the CID in Parameter1, a session drop (event 3)
    leaves it 0; both carry Time2Wait and Time2Retain in Parameters 2 and 3 and the next
    StatSN, and the connection closes after them."""
    with target.dedicated() as inst:
        async with full_feature(inst) as ffp:
            before = _expected_statsn(ffp)
            cid = ffp.probe.cid
            inst.send_async(ffp.probe.tsih, event, cid=cid, time2wait=2, time2retain=9)
            msg, got = await _next_async(ffp, event)
            require(
                msg is not None,
                "harness",
                f"asked for event {event}, the reference target sent no Async Message",
                received=ffp.shown(*got, None),
            )
            p1 = cid if event == CONNECTION_DROP else 0
            require(
                (msg.parameter1, msg.parameter2, msg.parameter3) == (p1, 2, 9),
                "R7143-11.9-6",
                f"event {event} carries Parameters ({msg.parameter1}, {msg.parameter2}, "
                f"{msg.parameter3}), expected ({p1}, 2, 9): the CID (event 2; reserved in "
                "event 3), Time2Wait and Time2Retain",
                received=[msg],
            )
            require(
                msg.statsn == before,
                "R7143-4.2.2.2-1",
                f"the Async Message carries StatSN {msg.statsn}, the connection's next is {before}",
                received=[msg],
            )
            closed, after = await _closed(ffp)
            require(
                closed,
                "R7143-11.9-6",
                f"after announcing event {event} the target kept the connection ({ffp.no_answer})",
                received=[msg, *after],
            )


@spec(
    "FullFeature.Async.Renegotiation",
    "RFC 7143 11.9.1",
    "RFC 7143 11.10",
    level="INFORMATIONAL",
    requirements=["R7143-11.9-7", "R7143-4.2.2.2-1"],
    needs=("dedicated_instance", "async_messages"),
)
async def test_renegotiation(target: Any) -> None:
    """After a renegotiation request (event 4) the empty Text Request an initiator owes
    it is answered with a final Text Response, and the session goes on."""
    with target.dedicated() as inst:
        async with full_feature(inst) as ffp:
            before = _expected_statsn(ffp)
            inst.send_async(ffp.probe.tsih, RENEGOTIATE)
            msg, got = await _next_async(ffp, RENEGOTIATE)
            require(
                msg is not None,
                "harness",
                "asked for a renegotiation request, the reference target sent no Async Message",
                received=ffp.shown(*got, None),
            )
            require(
                msg.statsn == before,
                "R7143-4.2.2.2-1",
                f"the Async Message carries StatSN {msg.statsn}, the connection's next is {before}",
                received=[msg],
            )
            req = P.TextRequest(
                final=True,
                itt=ffp.next_itt(),
                ttt=0xFFFFFFFF,
                cmdsn=ffp.take_cmdsn(),
                expstatsn=ffp.expstatsn,
            )
            reply = await ffp.exchange(req)
            require(
                isinstance(reply.pdu, P.TextResponse) and reply.pdu.final,
                "R7143-11.9-7",
                f"the empty Text Request that answers event 4 got {type(reply.pdu).__name__ if reply.pdu is not None else reply.missing()}",
                sent=[req],
                received=[msg, *reply.shown()],
            )
            _, pong = await ffp.nop()
            require(
                isinstance(pong, P.NopIn),
                "R7143-11.9-7",
                f"the session did not go on after the renegotiation: {ffp.no_answer}",
                received=ffp.shown(pong),
            )


@spec(
    "FullFeature.Async.VendorEvent",
    "RFC 7143 11.9.2",
    "RFC 7143 11.9.4",
    level="INFORMATIONAL",
    requirements=["R7143-11.9-8", "R7143-11.9-7", "R7143-4.2.2.2-1"],
    needs=("dedicated_instance", "async_messages"),
)
async def test_vendor_event(target: Any) -> None:
    """A vendor-specific event (255) carries its AsyncVCode and its data, counts a
    StatSN, and the session goes on."""
    with target.dedicated() as inst:
        async with full_feature(inst) as ffp:
            before = _expected_statsn(ffp)
            data = (0).to_bytes(2, "big") + b"vendor event data"
            inst.send_async(ffp.probe.tsih, VENDOR, vcode=0x5A, data=data)
            msg, got = await _next_async(ffp, VENDOR)
            require(
                msg is not None,
                "harness",
                "asked for a vendor event, the reference target sent no Async Message",
                received=ffp.shown(*got, None),
            )
            require(
                msg.statsn == before,
                "R7143-4.2.2.2-1",
                f"the vendor event carries StatSN {msg.statsn}, the connection's next is {before}",
                received=[msg],
            )
            require(
                msg.async_vcode == 0x5A and msg.data == data,
                "R7143-11.9-8",
                f"vendor event: AsyncVCode {msg.async_vcode:#x} (asked 0x5a), data {msg.data!r}",
                received=[msg],
            )
            _, pong = await ffp.nop()
            require(
                not isinstance(pong, P.NopIn) or pong.statsn == sn_add(before, 1),
                "R7143-4.2.2.2-1",
                f"the ping after the vendor event carries StatSN {pong.statsn if pong else None}, "
                f"not {sn_add(before, 1)}: the Async Message counts a StatSN of its own (11.9)",
                received=ffp.shown(msg, pong),
            )
            require(
                isinstance(pong, P.NopIn) and pong.statsn == sn_add(before, 1),
                "R7143-11.9-7",
                "after the vendor event the session did not go on with the next StatSN: "
                f"{pong if pong is not None else ffp.no_answer}",
                received=ffp.shown(msg, pong),
            )
