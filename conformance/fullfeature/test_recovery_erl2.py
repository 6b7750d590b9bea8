"""FullFeature.Recovery.Erl2: connection recovery at ErrorRecoveryLevel 2 (RFC 7143 7.2.2,
11.5.1, 11.5.6, 11.6, 11.14.1).

At ErrorRecoveryLevel 2 a session outlives a connection: the initiator removes the
failed connection (a Logout with reason 2, "remove the connection for recovery", or
implicitly by logging in again with the same CID), then moves each of its tasks to a
connection of the same session (same ISID and TSIH) with a TASK REASSIGN (function 8).
The target answers, and only then (11.6: the new allegiance MUST ONLY take effect
after the Task Management response) continues the task on the new connection: a WRITE
gets its R2Ts again (7.2.2, SHOULD), a READ gets its Data-In from the ExpDataSN the
request names and its status (11.5.6, MUST).

Each test offers ErrorRecoveryLevel=2 and skips where the target agrees to less (its
right: the result function is Minimum). Where the target offers a dedicated instance
(the reference target), that instance is configured to agree to 2, with
DefaultTime2Wait=0 so the reassignment need not wait. The negotiated Time2Wait is
honoured before the new connection is used for recovery (13.15).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.probe import FullFeature, full_feature, join_session
from iscsi_conformance.harness.profiles import capability_satisfied
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

BLOCK = 512
BLOCKS = 32  # 16 KiB: several Data-In PDUs at a 4 KiB segment length
LBA = 512  # inside the 1 MiB logical unit of a dedicated instance
TASK_REASSIGN = 8  # RFC 7143 11.5.1
REMOVE_FOR_RECOVERY = 2  # RFC 7143 11.14.1
SESSION_DOES_NOT_EXIST = 0x0A  # Login status 020Ah (RFC 7143 11.13.5)
MAX_TIME2WAIT = 5  # seconds we are ready to wait before recovery; more skips
KEYS = [
    ("ErrorRecoveryLevel", "2"),
    ("MaxConnections", "2"),
    ("DefaultTime2Wait", "0"),
    ("DefaultTime2Retain", "20"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "No"),
    ("MaxRecvDataSegmentLength", "8192"),  # what join_session declares: the same
]
PARAMETERS = (("ErrorRecoveryLevel", "2"), ("DefaultTime2Wait", "0"))


@contextlib.asynccontextmanager
async def _erl2_session(target: Any) -> AsyncIterator[tuple[Any, FullFeature]]:
    """A session offering ErrorRecoveryLevel=2 (on a dedicated instance configured for it
    where the target offers one); skips unless the target agrees to 2."""
    with contextlib.ExitStack() as stack:
        if not target.external and capability_satisfied(target.manifest, "dedicated_instance"):
            lu = stack.enter_context(target.dedicated(parameters=PARAMETERS))
        else:
            lu = target
        async with full_feature(lu, keys=KEYS) as ffp:
            agreed = ffp.probe.negotiated.get("ErrorRecoveryLevel", "0")
            if agreed != "2":
                pytest.skip(f"the target agreed ErrorRecoveryLevel={agreed}: recovery needs 2")
            wait = int(ffp.probe.negotiated.get("DefaultTime2Wait", "2"))
            if wait > MAX_TIME2WAIT:
                pytest.skip(f"the target negotiated DefaultTime2Wait={wait} (> {MAX_TIME2WAIT} s)")
            yield lu, ffp


async def _new_connection(
    lu: Any, stack: contextlib.AsyncExitStack, first: FullFeature, cid: int, wait: float = 0.0
) -> FullFeature:
    """Connection ``cid`` of ``first``'s session (same ISID and TSIH), after ``wait``
    seconds; its CmdSN continues the session's."""
    await asyncio.sleep(wait)
    raw = await stack.enter_async_context(lu.raw())
    probe = await join_session(lu, raw, first.probe, cid=cid)
    if not probe.in_full_feature:
        last = probe.steps[-1].response if probe.steps else None
        if isinstance(last, P.LoginResponse) and (last.status_class, last.status_detail) == (
            2,
            SESSION_DOES_NOT_EXIST,
        ):
            # The session was ended with its connection although ERL 2 was agreed: none
            # of its tasks can be continued (7.2.2; 6.3.4: it is kept for Time2Retain).
            raise violation(
                "R7143-7.2.2-1",
                f"at ErrorRecoveryLevel 2 the session (TSIH {first.probe.tsih}) was gone "
                f"once its connection was removed: the login of CID {cid} was answered "
                "'session does not exist'",
                sent=probe.sent,
                received=probe.received,
            )
        pytest.skip(f"connection {cid} could not join the session for recovery")
    raw.set_digests(header=False, data=False)
    second = FullFeature(raw, probe)
    second.cmdsn = first.cmdsn
    return second


def _reassign(ffp: FullFeature, cmd: Any, expdatasn: int = 0) -> Any:
    return P.TaskManagementRequest(
        immediate=True,
        function=TASK_REASSIGN,
        lun=cmd.lun,
        itt=ffp.next_itt(),
        referenced_task_tag=cmd.itt,
        cmdsn=ffp.cmdsn,
        expstatsn=ffp.expstatsn,
        refcmdsn=cmd.cmdsn,
        expdatasn=expdatasn,
    )


async def _tmf_response(ffp: FullFeature, req: Any, itt: int) -> tuple[Any, list[Any]]:
    """Read until the Task Management response to ``req``; every PDU read comes back,
    so a PDU of task ``itt`` before the response is seen."""
    got: list[Any] = []
    for _ in range(32):
        p = await ffp.recv()
        if p is None:
            return None, got
        got.append(p)
        if isinstance(p, P.TaskManagementResponse) and p.itt == req.itt:
            return p, got
    return None, got


async def _continued_anyway(ffp: FullFeature, itt: int) -> str:
    """After a TASK REASSIGN answered other than 'function complete': what the target
    sends for the task within a second. Some targets continue it although their
    response says otherwise (LIO 6.1: see the Erl2 entry of targets/lio/manifest.toml)."""
    got: list[Any] = []
    for _ in range(64):
        try:
            p = await asyncio.wait_for(ffp.recv(), 1.0)
        except TimeoutError:
            break
        if p is None:
            break
        if getattr(p, "itt", None) == itt:
            got.append(p)
    if not got:
        return ""
    names = sorted({type(p).__name__ for p in got})
    return (
        f"; yet the target then sent {len(got)} PDU(s) of the task ({', '.join(names)}): "
        "the reassignment took effect although the response says it did not"
    )


async def _read_back(ffp: FullFeature, lun: int, length: int) -> bytes:
    out = await ffp.command(cdb.read10(LBA, BLOCKS), lun=lun, read_length=length)
    if out.status != 0:
        raise violation(
            "harness",
            f"the READ that checks the data ended {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
    return out.data


@spec(
    "FullFeature.Recovery.Erl2.WriteReassigned",
    "RFC 7143 7.2.2",
    "RFC 7143 11.5.1",
    "RFC 7143 11.6",
    "RFC 7143 11.14.1",
    requirements=["R7143-11.6-1", "R7143-7.2.2-1"],
    dataloss=True,
)
async def test_write_reassigned_after_logout_for_recovery(target: Any) -> None:
    """A WRITE waiting on its R2T; a second connection of the session logs the first
    out with reason 2 ('remove the connection for recovery') and sends TASK REASSIGN,
    answered 'function complete' before any R2T of the task; the task then solicits its
    data again on the second connection and ends GOOD, and the data read back as sent."""
    async with _erl2_session(target) as (lu, first), contextlib.AsyncExitStack() as stack:
        payload = os.urandom(BLOCKS * BLOCK)
        cmd, r2t, got = await first.hold_write(lu.lun, cdb.write10(LBA, BLOCKS), len(payload))
        if r2t is None:
            raise violation(
                "harness",
                "the WRITE under InitialR2T=Yes, ImmediateData=No got no R2T",
                sent=[cmd],
                received=first.shown(*got, None),
            )
        second = await _new_connection(lu, stack, first, first.probe.cid + 1)
        logout = P.LogoutRequest(
            immediate=True,
            reason=REMOVE_FOR_RECOVERY,
            itt=second.next_itt(),
            cid=first.probe.cid,
            cmdsn=second.cmdsn,
            expstatsn=second.expstatsn,
        )
        await second.send(logout)
        answer = None
        for _ in range(8):
            answer = await second.recv()
            if answer is None or isinstance(answer, P.LogoutResponse):
                break
        require(
            isinstance(answer, P.LogoutResponse) and answer.response == 0,
            "R7143-7.2.2-1",
            f"Logout 'remove the connection for recovery' of CID {first.probe.cid}, sent on "
            f"CID {second.probe.cid} at ErrorRecoveryLevel 2, answered "
            f"{getattr(answer, 'response', None) if answer is not None else second.no_answer}",
            sent=[cmd, logout],
            received=second.shown(answer),
        )
        assert isinstance(answer, P.LogoutResponse)
        await asyncio.sleep(min(answer.time2wait, MAX_TIME2WAIT))  # 11.15.3
        req = _reassign(second, cmd)
        await second.send(req)
        resp, seen = await _tmf_response(second, req, cmd.itt)
        early = [p for p in seen[:-1] if getattr(p, "itt", None) == cmd.itt]
        require(
            not early,
            "R7143-11.6-1",
            f"{type(early[0]).__name__ if early else ''} of the reassigned task came before "
            "the Task Management response: the new allegiance took effect too soon",
            sent=[req],
            received=second.shown(*seen),
        )
        if not isinstance(resp, P.TaskManagementResponse) or resp.response != 0:
            anyway = await _continued_anyway(second, cmd.itt) if resp is not None else ""
            require(
                False,
                "R7143-7.2.2-1",
                "TASK REASSIGN of a WRITE after the logout for recovery answered "
                f"{getattr(resp, 'response', None) if resp is not None else second.no_answer}"
                + anyway,
                sent=[req],
                received=second.shown(*seen),
            )
        sent: list[Any] = []
        received: list[Any] = []
        status = await second.answer_r2ts(cmd, payload, sent=sent, received=received)
        require(
            status is not None and status.status == 0,
            "R7143-7.2.2-1",
            "the reassigned WRITE did not continue to a GOOD status on the new connection: "
            f"{getattr(status, 'status', None) if status is not None else second.no_answer}",
            sent=[req, *sent],
            received=second.shown(*received, status),
        )
        data = await _read_back(second, lu.lun, len(payload))
        require(
            data == payload,
            "R7143-7.2.2-1",
            "the reassigned WRITE ended GOOD but the data read back differ from those sent",
        )


@spec(
    "FullFeature.Recovery.Erl2.ReadReassigned",
    "RFC 7143 11.5.6",
    "RFC 7143 7.2.2",
    requirements=["R7143-11.5.6-1", "R7143-11.6-1"],
    dataloss=True,
)
async def test_read_reassigned_after_connection_drop(target: Any) -> None:
    """A READ whose Data-In and status are never acknowledged; the connection drops; a
    new connection with the same CID (an implicit logout, RFC 7143 6.3.4) reassigns it
    with ExpDataSN 0: the target sends every Data-In PDU from DataSN 0 and the status,
    after the Task Management response, and the data are those written."""
    async with _erl2_session(target) as (lu, first), contextlib.AsyncExitStack() as stack:
        payload = os.urandom(BLOCKS * BLOCK)
        wrote = await first.command(cdb.write10(LBA, BLOCKS), lun=lu.lun, data_out=payload)
        if wrote.status != 0:
            raise violation(
                "harness",
                f"the WRITE that sets the data up ended {wrote.status!r}",
                sent=wrote.sent,
                received=wrote.shown(),
            )
        read = P.ScsiCommand(
            final=True,
            read=True,
            attr=1,
            lun=P.lun_to_field(lu.lun),
            itt=first.next_itt(),
            expected_data_transfer_length=len(payload),
            cmdsn=first.take_cmdsn(),
            expstatsn=first.expstatsn,
            cdb=cdb.read10(LBA, BLOCKS),
        )
        await first.send(read)
        await asyncio.sleep(0.2)  # the target answers; nothing of it is acknowledged
        await first.raw.__aexit__(None, None, None)  # the connection fails
        wait = int(first.probe.negotiated.get("DefaultTime2Wait", "2"))
        second = await _new_connection(lu, stack, first, first.probe.cid, wait)
        req = _reassign(second, read, expdatasn=0)
        await second.send(req)
        resp, seen = await _tmf_response(second, req, read.itt)
        early = [p for p in seen[:-1] if getattr(p, "itt", None) == read.itt]
        require(
            not early,
            "R7143-11.6-1",
            f"{type(early[0]).__name__ if early else ''} of the reassigned READ came before "
            "the Task Management response: the new allegiance took effect too soon",
            sent=[req],
            received=second.shown(*seen),
        )
        if not isinstance(resp, P.TaskManagementResponse) or resp.response != 0:
            anyway = await _continued_anyway(second, read.itt) if resp is not None else ""
            require(
                False,
                "R7143-7.2.2-1",
                "TASK REASSIGN of a READ after its connection failed answered "
                f"{getattr(resp, 'response', None) if resp is not None else second.no_answer}"
                + anyway,
                sent=[req],
                received=second.shown(*seen),
            )
        pdus: list[Any] = []
        status = None
        for _ in range(256):
            p = await second.recv()
            if p is None:
                break
            pdus.append(p)
            if isinstance(p, P.ScsiResponse) and p.itt == read.itt:
                status = p.status
                break
            if isinstance(p, P.ScsiDataIn) and p.itt == read.itt and p.status_present:
                status = p.status
                break
        data_in = [p for p in pdus if isinstance(p, P.ScsiDataIn) and p.itt == read.itt]
        data = b"".join(p.data for p in sorted(data_in, key=lambda p: p.buffer_offset))
        require(
            bool(data_in) and data_in[0].datasn == 0 and data == payload,
            "R7143-11.5.6-1",
            f"after TASK REASSIGN with ExpDataSN 0 the target sent {len(data_in)} Data-In "
            f"PDU(s) (first DataSN {data_in[0].datasn if data_in else None}), "
            f"{len(data)} of {len(payload)} bytes"
            + (", not the data written" if len(data) == len(payload) else ""),
            sent=[req],
            received=second.shown(*pdus),
        )
        require(
            status == 0,
            "R7143-11.5.6-1",
            f"the reassigned READ's status did not follow its data: {status!r}",
            received=second.shown(*pdus, None),
        )


@spec(
    "FullFeature.Recovery.Erl2.BidiReassigned",
    "RFC 7143 11.5.6",
    "RFC 7143 4.2.2.4",
    requirements=["R7143-11.5.6-1"],
    needs=("bidirectional", "xdwriteread"),
)
async def test_bidi_reassigned_from_expdatasn(target: Any) -> None:
    """A bidirectional XDWRITEREAD(10) (DISABLE WRITE one: the blocks stay) ends with its
    read part and status never acknowledged; the connection drops; a new connection
    with the same CID reassigns it with ExpDataSN the DataSN of its last Data-In. The
    target sends that Data-In again (same DataSN in the sequence R2T and Data-In share,
    4.2.2.4; same offset and data) and then the status (11.5.6, MUST)."""
    async with _erl2_session(target) as (lu, first), contextlib.AsyncExitStack() as stack:
        new = os.urandom(BLOCKS * BLOCK)
        out = await first.command(
            cdb.xdwriteread10(LBA, BLOCKS, disable_write=True),
            lun=lu.lun,
            data_out=new,
            bidi_read_length=len(new),
        )
        if out.status != 0 or len(out.data_ins) < 2 or out.response is None:
            raise violation(
                "harness",
                f"the XDWRITEREAD(10) to reassign ended {out.status!r} with "
                f"{len(out.data_ins)} Data-In PDU(s) (two or more wanted)",
                sent=out.sent,
                received=out.shown(),
            )
        # Nothing acknowledges the status: the connection fails at once.
        await first.raw.__aexit__(None, None, None)
        wait = int(first.probe.negotiated.get("DefaultTime2Wait", "2"))
        second = await _new_connection(lu, stack, first, first.probe.cid, wait)
        last = max(out.data_ins, key=lambda p: p.datasn)
        req = _reassign(second, out.command, expdatasn=last.datasn)
        await second.send(req)
        resp, seen = await _tmf_response(second, req, out.command.itt)
        if not isinstance(resp, P.TaskManagementResponse) or resp.response != 0:
            anyway = await _continued_anyway(second, out.command.itt) if resp is not None else ""
            require(
                False,
                "R7143-7.2.2-1",
                "TASK REASSIGN of a bidirectional command after its connection failed "
                f"answered {getattr(resp, 'response', None) if resp is not None else second.no_answer}"
                + anyway,
                sent=[req],
                received=second.shown(*seen),
            )
        pdus: list[Any] = []
        status = None
        for _ in range(64):
            p = await second.recv()
            if p is None:
                break
            pdus.append(p)
            if isinstance(p, P.ScsiResponse) and p.itt == out.command.itt:
                status = p.status
                break
        again = [p for p in pdus if isinstance(p, P.ScsiDataIn) and p.itt == out.command.itt]
        data = b"".join(p.data for p in sorted(again, key=lambda p: p.buffer_offset))
        require(
            bool(again)
            and again[0].datasn == last.datasn
            and again[0].buffer_offset == last.buffer_offset
            and data == last.data,
            "R7143-11.5.6-1",
            f"after TASK REASSIGN with ExpDataSN {last.datasn} (the last of "
            f"{len(out.data_ins)} Data-In, after {len(out.r2ts)} R2T(s)) the target sent "
            f"{len(again)} Data-In PDU(s)"
            + (
                f" (first DataSN {again[0].datasn}, offset {again[0].buffer_offset}, "
                f"{len(data)} bytes; wanted DataSN {last.datasn}, offset "
                f"{last.buffer_offset}, {len(last.data)} bytes, the same data)"
                if again
                else ""
            )
            + ("" if status is not None else f"; {second.no_answer}"),
            sent=[req],
            received=second.shown(*pdus),
        )
        require(
            status == 0,
            "R7143-11.5.6-1",
            f"the reassigned command's status did not follow its data: {status!r}",
            received=second.shown(*pdus, None),
        )
