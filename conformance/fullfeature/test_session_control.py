"""FullFeature.Logout / TaskManagement / Reject / Scsi: logout reasons, task management
responses, Reject for malformed PDUs, and the SCSI basics every target must answer
(RFC 7143 11.5, 11.6, 11.14, 11.15, 11.17; SPC-4; SBC-3)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.digest import crc32c
from iscsi_conformance.harness.probe import (
    DEFAULT_TIMEOUT,
    FullFeature,
    NoAnswer,
    Outcome,
    full_feature,
    join_session,
)
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

BLOCK = 512


async def _logout(ffp: Any, reason: int, cid: int) -> tuple[Any, Any]:
    req = P.LogoutRequest(
        immediate=True,
        reason=reason,
        itt=ffp.next_itt(),
        cid=cid,
        cmdsn=ffp.cmdsn,
        expstatsn=ffp.expstatsn,
    )
    await ffp.send(req)
    return req, await ffp.recv()


def _what(ffp: Any, resp: Any) -> str:
    """The answer as a message names it: its PDU type, or what happened instead."""
    return type(resp).__name__ if resp is not None else str(ffp.no_answer or "no answer")


def _code(ffp: Any, resp: Any) -> str:
    """A response's code, or what came instead of a response."""
    code = getattr(resp, "response", None)
    return f"response {code}" if code is not None else _what(ffp, resp)


@spec(
    "FullFeature.Logout.CloseSession",
    "RFC 7143 11.14",
    "RFC 7143 11.15",
    requirements=["R7143-11.14-1"],
)
async def test_logout_close_session(target: Any) -> None:
    """Logout 'close the session': response 0, then the target closes the connection."""
    async with full_feature(target) as ffp:
        req, resp = await _logout(ffp, 0, ffp.probe.cid)
        require(
            isinstance(resp, P.LogoutResponse),
            "R7143-11.14-1",
            f"no Logout Response: {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            resp.response == 0 and resp.itt == req.itt,
            "R7143-11.14-1",
            f"Logout response {resp.response}",
            sent=[req],
            received=[resp],
        )
        require(
            await ffp.raw.expect_closed(timeout=10),
            "R7143-11.14-1",
            "the connection stayed open after logout (RFC 7143 11.15: after Logout the "
            "connection is closed at both ends)",
            sent=[req],
            received=[resp],
        )


@spec("FullFeature.Logout.CloseConnection", "RFC 7143 11.14", requirements=["R7143-11.14-1"])
async def test_logout_close_connection(target: Any) -> None:
    """Logout 'close the connection' for our own CID is answered 0."""
    async with full_feature(target) as ffp:
        req, resp = await _logout(ffp, 1, ffp.probe.cid)
        require(
            isinstance(resp, P.LogoutResponse) and resp.response == 0,
            "R7143-11.14-1",
            f"close-connection logout answered {_code(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )


@spec(
    "FullFeature.Logout.UnknownCid",
    "RFC 7143 11.15.1",
    level="INFORMATIONAL",
    requirements=["R7143-11.14-2"],
)
async def test_logout_unknown_cid(target: Any) -> None:
    """Logout 'close the connection' for a CID that does not exist is answered 1 (CID not found)."""
    async with full_feature(target) as ffp:
        req, resp = await _logout(ffp, 1, 0x7777)
        require(
            isinstance(resp, P.LogoutResponse),
            "R7143-11.14-2",
            f"no Logout Response: {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            resp.response == 1,
            "R7143-11.14-2",
            f"expected 1 (CID not found), got {resp.response}",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.Logout.RecoveryAtErl0",
    "RFC 7143 11.14.1",
    level="INFORMATIONAL",
    requirements=["R7143-11.14-3"],
)
async def test_logout_recovery_erl0(target: Any) -> None:
    """'Remove the connection for recovery' at ErrorRecoveryLevel 0 is answered 2 (not supported)."""
    async with full_feature(target, keys=[("ErrorRecoveryLevel", "0")]) as ffp:
        req, resp = await _logout(ffp, 2, ffp.probe.cid)
        require(
            isinstance(resp, P.LogoutResponse) and resp.response == 2,
            "R7143-11.14-3",
            f"expected response 2, got {_code(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )


_join = join_session  # one connection more in a session (harness/probe.py)


@spec(
    "FullFeature.Logout.CloseSessionAllConnections",
    "RFC 7143 11.15",
    "RFC 7143 11.14",
    requirements=["R7143-11.14-1"],
)
async def test_logout_close_session_two_connections(target: Any) -> None:
    """In a session of two connections, Logout 'close the session' sent on one of them
    is answered 0 and closes both: RFC 7143 11.15 has the connection the Logout names
    closed at both ends after it, and every connection when the reason is 'close the
    session' (11.14.1 reason 0: the session is closed). The other connection staying
    open leaves the session alive."""
    async with target.raw() as raw:
        lead = await target.login(raw, keys=[("MaxConnections", "2")])
        agreed = lead.negotiated.get("MaxConnections", "1")
        if not agreed.isdigit() or int(agreed) < 2:
            pytest.skip(f"the target agreed MaxConnections={agreed}: no second connection")
        ffp = FullFeature(raw, lead)
        await ffp.clear_unit_attention(target.lun)
        lead.cmdsn = ffp.cmdsn
        async with target.raw() as raw1:
            probe = await _join(target, raw1, lead, cid=1)
            if not probe.in_full_feature:
                pytest.skip("a second connection could not join the session")
            second = FullFeature(raw1, probe)
            req, resp = await _logout(ffp, 0, ffp.probe.cid)
            require(
                isinstance(resp, P.LogoutResponse) and resp.response == 0,
                "R7143-11.14-1",
                f"close-the-session logout answered {_code(ffp, resp)}",
                sent=[req],
                received=ffp.shown(resp),
            )
            require(
                await second.raw.expect_closed(timeout=10),
                "R7143-11.14-1",
                "after Logout 'close the session' was answered 0 on connection 0, the "
                "session's connection 1 stayed open; RFC 7143 11.15: after Logout all "
                "connections are closed when the reason was to close the session",
                sent=[req],
                received=[resp],
            )


def _tmf_request(
    ffp: Any, function: int, *, lun: int = 0, ref: int = 0xFFFFFFFF, refcmdsn: int | None = None
) -> Any:
    """An immediate Task Management Function Request on ``ffp``'s session: RefCmdSN is
    ``refcmdsn``, or for ABORT TASK the request's own CmdSN (RFC 7143 11.5.5: that of an
    immediate command), else 0."""
    if refcmdsn is None:
        refcmdsn = ffp.cmdsn if function == ABORT_TASK else 0
    return P.TaskManagementRequest(
        immediate=True,
        function=function,
        lun=P.lun_to_field(lun),
        itt=ffp.next_itt(),
        referenced_task_tag=ref,
        cmdsn=ffp.cmdsn,
        expstatsn=ffp.expstatsn,
        refcmdsn=refcmdsn,
    )


async def _tmf(ffp: Any, function: int, *, lun: int = 0, ref: int = 0xFFFFFFFF) -> tuple[Any, Any]:
    req = _tmf_request(ffp, function, lun=lun, ref=ref)
    await ffp.send(req)
    for _ in range(64):
        resp = await ffp.recv()
        if resp is None or isinstance(resp, P.TaskManagementResponse | P.Reject):
            return req, resp
    return req, None


@spec(
    "FullFeature.TaskManagement.AbortUnknownTask", "RFC 7143 11.6.1", requirements=["R7143-11.5-1"]
)
async def test_abort_unknown_task(target: Any) -> None:
    """ABORT TASK for a tag never used is answered 'task does not exist' (1) or 'function complete' (0)."""
    async with full_feature(target) as ffp:
        req, resp = await _tmf(ffp, 1, lun=target.lun, ref=0x0BADF00D)
        require(
            isinstance(resp, P.TaskManagementResponse),
            "R7143-11.5-1",
            f"no Task Management Function Response: {_what(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            resp.response in (0, 1),
            "R7143-11.5-1",
            f"ABORT TASK of an unknown task answered {resp.response}",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.TaskManagement.AbortTaskOutsideWindow",
    "RFC 7143 11.6.1",
    "RFC 7143 11.5.1",
    requirements=["R7143-11.5-6"],
)
async def test_abort_task_outside_window(target: Any) -> None:
    """ABORT TASK naming a tag that no task has, with a RefCmdSN outside the CmdSN
    window (4096 past MaxCmdSN), is answered 1 (Task does not exist): RFC 7143 11.6.1
    gives that case 'Task does not exist' (a lower-case must), and 11.5.1 says the
    Task Management Function Response MUST be returned as 11.6 details it. 'Function
    complete' (0) is only for a RefCmdSN inside the window (a command not yet seen)."""
    async with full_feature(target) as ffp:
        ref = (ffp.maxcmdsn + 4096) & 0xFFFFFFFF
        req = _tmf_request(ffp, ABORT_TASK, lun=target.lun, ref=0x0BADF00D, refcmdsn=ref)
        reply = await ffp.exchange(req)
        resp = reply.pdu
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response == 1,
            "R7143-11.5-6",
            f"ABORT TASK of an unknown tag with RefCmdSN {ref} (MaxCmdSN {ffp.maxcmdsn}) "
            f"answered {_code(ffp, resp) if resp is not None else reply.missing()}; "
            "RFC 7143 11.6.1: outside the CmdSN window it is 1 (Task does not exist)",
            sent=[req],
            received=reply.shown(),
        )


@spec("FullFeature.TaskManagement.AbortTaskSet", "RFC 7143 11.5.1", requirements=["R7143-11.5-2"])
async def test_abort_task_set(target: Any) -> None:
    """ABORT TASK SET is answered 'function complete' (0) or 'not supported' (5)."""
    async with full_feature(target) as ffp:
        req, resp = await _tmf(ffp, 2, lun=target.lun)
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response in (0, 5),
            "R7143-11.5-2",
            f"ABORT TASK SET answered {_code(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )


@spec(
    "FullFeature.TaskManagement.ReassignAtErl0",
    "RFC 7143 7.2.2",
    "RFC 7143 11.5.1",
    requirements=["R7143-11.5-3"],
)
async def test_task_reassign_erl0(target: Any) -> None:
    """TASK REASSIGN at ErrorRecoveryLevel 0 is answered 4 (Task allegiance reassignment
    not supported): RFC 7143 7.2.2 negotiates reassignment through ErrorRecoveryLevel, and
    a target that does not support it MUST answer 4."""
    async with full_feature(target, keys=[("ErrorRecoveryLevel", "0")]) as ffp:
        req, resp = await _tmf(
            ffp, 8, lun=target.lun, ref=0x1234
        )  # TASK REASSIGN (RFC 7143 11.5.1)
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response == 4,
            "R7143-11.5-3",
            f"TASK REASSIGN at ERL 0 answered {_code(ffp, resp)}, not 4 (Task allegiance "
            "reassignment not supported), which RFC 7143 7.2.2 requires when reassignment "
            "is not supported",
            sent=[req],
            received=ffp.shown(resp),
        )


@spec(
    "FullFeature.TaskManagement.UnknownFunction", "RFC 7143 11.6.1", requirements=["R7143-11.5-2"]
)
async def test_unknown_tmf_function(target: Any) -> None:
    """An unassigned function code (20) is answered 5 (not supported) or 255 (rejected),
    or rejected, or ends the connection; it is never left unanswered.

    RFC 7143 11.5.1 assigns functions 1-8 (9-12 in RFC 7144) and leaves the rest
    unassigned; 11.6.1 gives the answers 5 (Task management function not supported)
    and 255 (Function rejected). An unassigned value is also an illegal header field,
    a format error (7.7) on which the target may end the session's connections, and
    11.17.1 has a Reject for an invalid field. Silence is none of these."""
    async with full_feature(target) as ffp:
        req, resp = await _tmf(ffp, 20, lun=target.lun)
        gone = ffp.no_answer
        if resp is None and gone is not None and gone.outcome is Outcome.CLOSED:
            return  # a format error ends the connection (RFC 7143 7.7)
        if isinstance(resp, P.Reject):
            require(
                resp.data[:48] == P.bhs_of(req),
                "R7143-11.17-1",
                "the Reject does not carry the rejected request's header",
                sent=[req],
                received=[resp],
            )
            return
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response in (5, 255),
            "R7143-11.5-2",
            f"function 20 (unassigned) answered {_code(ffp, resp)}; "
            "RFC 7143 allows response 5 or 255 (11.6.1), a Reject (11.17.1) or the end of "
            "the connection (7.7)",
            sent=[req],
            received=ffp.shown(resp),
        )


@spec(
    "FullFeature.TaskManagement.LunResetUnknownLun",
    "RFC 7143 11.6.1",
    requirements=["R7143-11.5-4"],
    dataloss=True,
)
async def test_lun_reset_unknown_lun(target: Any) -> None:
    """LOGICAL UNIT RESET for a LUN that does not exist is answered 2 (LUN does not exist), 5 or 255."""
    async with full_feature(target) as ffp:
        req, resp = await _tmf(ffp, 5, lun=200)
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response in (2, 5, 255),
            "R7143-11.5-4",
            f"LUN RESET of LUN 200 answered {_code(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )


@spec(
    "FullFeature.TaskManagement.LunReset",
    "RFC 7143 11.5.1",
    requirements=["R7143-11.5-2"],
    dataloss=True,
)
async def test_lun_reset(target: Any) -> None:
    """LOGICAL UNIT RESET of an existing LUN completes (0) or is not supported (5); the LUN then answers."""
    async with full_feature(target) as ffp:
        req, resp = await _tmf(ffp, 5, lun=target.lun)
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response in (0, 5),
            "R7143-11.5-2",
            f"LUN RESET answered {_code(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        out = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        require(
            out.status is not None,
            "R7143-11.5-2",
            f"the LUN did not answer after a reset: {out.missing()}",
            sent=out.sent,
            received=out.shown(),
        )


# A task held open: a one-block WRITE with no immediate or unsolicited data waits for
# its Data-Out after the target's R2T. The block is read first and written back
# unchanged, so whether the write is aborted or completes, the LUN's data stays.
HELD_LBA = 3072
HELD_KEYS = [("ImmediateData", "No"), ("InitialR2T", "Yes")]
ABORT_TASK, ABORT_TASK_SET, LOGICAL_UNIT_RESET, TARGET_COLD_RESET = 1, 2, 5, 7
CLEAR_TASK_SET, TARGET_WARM_RESET = 4, 6


async def _read_then_hold_write(
    ffp: Any, lun: int, lba: int, flip: int
) -> tuple[bytes, bytes, Any, Any, list[Any]]:
    """Read block ``lba`` (once more after a unit attention), then hold a one-block WRITE
    of it with every byte XORed with ``flip`` open by its R2T: (block as read, the data
    to write, the command, its R2T, what came with it). The tests of a second session's
    TMF on this WRITE share it."""
    before = await ffp.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
    if before.status == 0x02 and before.sense_key == 0x06:
        before = await ffp.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
    block = before.data if before.status == 0 and len(before.data) == BLOCK else None
    require(
        block is not None,
        "RSBC3-5.16-1",
        f"READ(10) of LBA {lba} answered status {before.status!r} ({before.outcome})",
        sent=before.sent,
        received=before.shown(),
    )
    assert block is not None
    changed = bytes(b ^ flip for b in block)
    cmd, r2t, got = await ffp.hold_write(lun, cdb.write10(lba, 1), BLOCK)
    require(
        r2t is not None,
        "RSBC3-5.16-1",
        "a one-block WRITE with ImmediateData=No and InitialR2T=Yes got no R2T",
        sent=[cmd],
        received=[*got, *ffp.shown(None)],
    )
    assert r2t is not None
    return block, changed, cmd, r2t, got


async def _abort_held_write(
    target: Any,
    function: int,
    name: str,
    allowed: tuple[int, ...],
    *,
    skip_unsupported: bool = False,
    lba: int = HELD_LBA,
) -> None:
    """WRITE -> R2T, then the task management ``function`` (immediate, so it covers
    the WRITE: RFC 7143 11.5.1 has it act on every command of the session with a
    lower CmdSN), then the Data-Out the R2T asked for: the issuing initiator keeps
    answering the Target Transfer Tags of the affected tasks (11.5.1 for ABORT TASK
    SET and CLEAR TASK SET; 4.2.3.3). Once the target answers 'Function complete',
    no response for the WRITE may follow the Task Management Function Response
    (11.5.1: the target MUST ensure it)."""
    async with full_feature(target, keys=HELD_KEYS) as ffp:
        lun = target.lun
        before = await ffp.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
        if before.status == 0x02 and before.sense_key == 0x06:
            # a unit attention (e.g. power on of a fresh instance) is reported once
            before = await ffp.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
        block = before.data if before.status == 0 and len(before.data) == BLOCK else None
        require(
            block is not None,
            "RSBC3-5.16-1",
            f"READ(10) of LBA {lba} answered status {before.status!r} ({before.outcome}) "
            f"with {len(before.data)} bytes",
            sent=before.sent,
            received=before.shown(),
        )
        assert block is not None
        cmd, r2t, got = await ffp.hold_write(lun, cdb.write10(lba, 1), BLOCK)
        require(
            r2t is not None,
            "RSBC3-5.16-1",
            "a one-block WRITE with ImmediateData=No and InitialR2T=Yes got no R2T "
            "(the target can only have its data by asking for it)",
            sent=[cmd],
            received=[*got, *ffp.shown(None)],
        )
        assert r2t is not None
        aborted = function == ABORT_TASK
        tmf = _tmf_request(
            ffp,
            function,
            lun=lun,
            ref=cmd.itt if aborted else 0xFFFFFFFF,
            refcmdsn=cmd.cmdsn if aborted else 0,
        )
        await ffp.send(tmf)
        # The Data-Out goes once the target has had time to answer the request: a
        # target that acts at once answers first (the WRITE must then be aborted), one
        # that waits for the affected Target Transfer Tags (11.5.1, 4.2.3.3) answers
        # after the Data-Out. Either way the order on the wire is fixed, not a race.
        earlier: list[Any] = []

        async def await_response(timeout: float | None) -> Any:
            for _ in range(64):
                p = await ffp.recv(timeout=timeout)
                if p is None:
                    return None
                if isinstance(p, P.TaskManagementResponse) and p.itt == tmf.itt:
                    return p
                earlier.append(p)
            return None

        resp = await await_response(0.5)
        data_out = await ffp.answer_r2t(cmd, r2t, block)
        sent = [cmd, tmf, *data_out]
        gone = ffp.no_answer
        if resp is None and (gone is None or gone.outcome is Outcome.SILENT):
            resp = await await_response(None)
        require(
            isinstance(resp, P.TaskManagementResponse),
            "R7143-11.5-1" if function == ABORT_TASK else "R7143-11.5-2",
            f"no Task Management Function Response to {name} of a WRITE waiting for "
            f"its Data-Out: {_what(ffp, resp)}",
            sent=sent,
            received=[*got, *earlier, *ffp.shown(resp)],
        )
        assert resp is not None

        def status_of(p: Any) -> bool:
            return getattr(p, "itt", None) == cmd.itt and (
                isinstance(p, P.ScsiResponse) or (isinstance(p, P.ScsiDataIn) and p.status_present)
            )

        completed_first = any(status_of(p) for p in earlier)
        later = await ffp.drain(1.0)
        late = [p for p in later if status_of(p)]
        require(
            resp.response in allowed or (resp.response == 1 and completed_first),
            "R7143-11.5-1" if function == ABORT_TASK else "R7143-11.5-2",
            f"{name} of a WRITE waiting for its Data-Out answered {resp.response}"
            + (f", and the WRITE then got status {late[0].status}" if late else ""),
            sent=sent,
            received=[*got, *earlier, resp, *later],
        )
        if resp.response == 5 and skip_unsupported:
            pytest.skip(f"{name} is not supported (response 5): no task was covered")
        if resp.response != 0:
            return  # not performed (5) or the task was already done (1): nothing covered
        require(
            not late,
            "R7143-11.5-5",
            f"{name} answered 'Function complete' (0), then the WRITE it covered got its "
            f"status {late[0].status if late else ''} after the Task Management Function "
            "Response; RFC 7143 11.5.1: the target MUST ensure that no responses for the "
            "tasks covered by a task management function are delivered after it",
            sent=sent,
            received=[*got, *earlier, resp, *later],
        )


@spec(
    "FullFeature.TaskManagement.AbortTaskOutstanding",
    "RFC 7143 11.5.1",
    "RFC 7143 11.6.1",
    requirements=["R7143-11.5-1", "R7143-11.5-5"],
    dataloss=True,
)
async def test_abort_task_outstanding(target: Any) -> None:
    """ABORT TASK of a WRITE waiting for its Data-Out: 'Function complete', and the
    WRITE gets no response after the Task Management Function Response."""
    await _abort_held_write(target, ABORT_TASK, "ABORT TASK", (0,))


@spec(
    "FullFeature.TaskManagement.AbortTaskSetOutstanding",
    "RFC 7143 11.5.1",
    "RFC 7143 11.6.1",
    requirements=["R7143-11.5-2", "R7143-11.5-5"],
    dataloss=True,
)
async def test_abort_task_set_outstanding(target: Any) -> None:
    """ABORT TASK SET with a WRITE waiting for its Data-Out: 'Function complete' (or
    'not supported'), and the WRITE gets no response after the TMF Response."""
    await _abort_held_write(target, ABORT_TASK_SET, "ABORT TASK SET", (0, 5))


@spec(
    "FullFeature.TaskManagement.LunResetOutstanding",
    "RFC 7143 11.5.1",
    "RFC 7143 11.6.1",
    requirements=["R7143-11.5-2", "R7143-11.5-5"],
    dataloss=True,
)
async def test_lun_reset_outstanding(target: Any) -> None:
    """LOGICAL UNIT RESET with a WRITE waiting for its Data-Out: 'Function complete'
    (or 'not supported'), and the WRITE gets no response after the TMF Response."""
    await _abort_held_write(target, LOGICAL_UNIT_RESET, "LOGICAL UNIT RESET", (0, 5))


@spec(
    "FullFeature.TaskManagement.ClearTaskSetOutstanding",
    "RFC 7143 11.5.1",
    "RFC 7143 11.6.1",
    requirements=["R7143-11.5-2", "R7143-11.5-5"],
    dataloss=True,
)
async def test_clear_task_set_outstanding(target: Any) -> None:
    """CLEAR TASK SET (function 4) with a WRITE waiting for its Data-Out: once the
    target answers 'Function complete', the WRITE gets no response after the Task
    Management Function Response (RFC 7143 11.5.1 MUST; RFC 3720 10.6.2 has the target
    wait for the affected Target Transfer Tags, so the Data-Out is still sent). A
    target that answers 5 (not supported) covered no task: the test skips."""
    await _abort_held_write(target, CLEAR_TASK_SET, "CLEAR TASK SET", (0, 5), skip_unsupported=True)


@spec(
    "FullFeature.TaskManagement.TargetWarmResetOutstanding",
    "RFC 7143 11.5.1",
    "RFC 7143 11.6.1",
    requirements=["R7143-11.5-2", "R7143-11.5-5"],
    needs=("dedicated_instance",),
    dataloss=True,
)
async def test_target_warm_reset_outstanding(target: Any) -> None:
    """TARGET WARM RESET (function 6) with a WRITE waiting for its Data-Out, on a
    reference instance of this test alone (a target reset reaches every initiator of
    the target): once answered 'Function complete', the WRITE gets no response after
    the Task Management Function Response (RFC 7143 11.5.1: a task management request
    acts on the session's commands with a lower CmdSN, and the target MUST ensure that
    no response for a covered task follows the TMF Response). Only TARGET COLD RESET
    is required to end the connections (R7143-11.5-8), so none is asked of a warm
    reset. The function is OPTIONAL: an answer 5 (not supported) skips. Third-party targets skip (no dedicated instance):
    a target reset there would end other tests' tasks."""
    with target.dedicated() as inst:
        await _abort_held_write(
            inst, TARGET_WARM_RESET, "TARGET WARM RESET", (0, 5), skip_unsupported=True, lba=8
        )


@spec(
    "FullFeature.TaskManagement.LunResetOtherSessionTask",
    "RFC 7143 11.5.1",
    requirements=["R7143-11.5-9"],
    dataloss=True,
)
async def test_lun_reset_other_session_task(target: Any) -> None:
    """A LOGICAL UNIT RESET from a second session aborts the first session's WRITE
    that waits for its Data-Out: once the reset is answered 'Function complete', the
    Data-Out the first session then sends for its R2T writes nothing, and the WRITE
    gets no status (TASK ABORTED at most): it is no longer running.

    RFC 7143 11.5.1: for LOGICAL UNIT RESET the target MUST behave as SAM's logical
    unit reset; SAM-2 5.9.7 (quoted on the T10 reflector) has the logical unit abort
    all tasks to process it, whichever I_T nexus sent them. The block is read back
    through the second session and compared, so a write carried out in silence fails
    too; the original block is written back afterwards."""
    await _other_session_aborts(
        target,
        LOGICAL_UNIT_RESET,
        "LOGICAL UNIT RESET",
        "R7143-11.5-9",
        "RFC 7143 11.5.1: the target MUST behave as SAM's logical unit reset, which aborts "
        "all tasks",
        lba=HELD_LBA + 8,
        flip=0xA5,
    )


async def _other_session_aborts(
    target: Any,
    function: int,
    name: str,
    row: str,
    why: str,
    *,
    lba: int,
    flip: int,
    before_tmf: Callable[[FullFeature, int], Awaitable[None]] | None = None,
) -> None:
    """A second session's task management ``function`` aborts the first session's
    WRITE that waits for its Data-Out: once answered 'Function complete', the Data-Out
    the first session then sends writes nothing and the WRITE gets no status (TASK
    ABORTED at most). The block is read back through the second session and compared,
    so a write carried out in silence fails too; the original block is written back.
    ``before_tmf`` may look at the second session first (and skip)."""
    lun = target.lun
    async with full_feature(target, keys=HELD_KEYS) as ffp, full_feature(target) as other:
        if before_tmf is not None:
            await before_tmf(other, lun)
        block, changed, cmd, r2t, got = await _read_then_hold_write(ffp, lun, lba, flip)
        req, resp = await _tmf(other, function, lun=lun)
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response in (0, 5),
            "R7143-11.5-2",
            f"{name} from a second session answered {_code(other, resp)}",
            sent=[req],
            received=other.shown(resp),
        )
        if resp.response == 5:
            pytest.skip(f"{name} is not supported (response 5)")
        data_out = await ffp.answer_r2t(cmd, r2t, changed)
        later = await ffp.drain(1.0)
        # An aborted task gets no status, or TASK ABORTED (40h) where the logical unit
        # reports aborts to other nexuses; any other status means it went on running.
        ran = [
            p
            for p in later
            if getattr(p, "itt", None) == cmd.itt
            and (isinstance(p, P.ScsiResponse) or getattr(p, "status_present", False))
            and p.status != 0x40
        ]
        after = await other.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
        for _ in range(3):
            if not (after.status == 0x02 and after.sense_key == 0x06):
                break
            after = await other.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
        written = after.status == 0 and after.data == changed
        if written:  # put the block back
            await other.command(cdb.write10(lba, 1), data_out=block, lun=lun)
        require(
            not ran and not written,
            row,
            f"a {name} from a second session answered 'Function complete', yet "
            "the first session's WRITE waiting for its Data-Out "
            + (f"then got status {ran[0].status:#04x}" if ran else "did not")
            + (" and wrote its data" if written else "")
            + f" after it (not aborted); {why}",
            sent=[cmd, req, *data_out, *after.sent],
            received=[*got, resp, *later, *after.shown()],
        )


async def _shared_task_set(other: FullFeature, lun: int) -> None:
    """Skip unless the Control mode page (MODE SENSE(6) page 0Ah, SPC-4 7.5.8) says
    TST=000b, one task set for every I_T nexus."""
    out = await other.command(cdb.mode_sense6(0x0A, alloc=64), read_length=64, lun=lun)
    for _ in range(2):
        if not (out.status == 0x02 and out.sense_key == 0x06):
            break
        out = await other.command(cdb.mode_sense6(0x0A, alloc=64), read_length=64, lun=lun)
    data = out.data
    page = 4 + (data[3] if len(data) > 3 else 0)  # after the header and block descriptors
    if out.status != 0 or len(data) < page + 3 or (data[page] & 0x3F) != 0x0A:
        pytest.skip(f"the Control mode page could not be read (status {out.status!r})")
    tst = data[page + 2] >> 5
    if tst != 0:
        # SAM-2 had CLEAR TASK SET abort every initiator's tasks whatever the TST; SAM-5
        # words it as one task set, the issuing nexus's own under TST=001b (T10
        # reflector, 2013-01): the text does not settle which.
        pytest.skip(f"TST={tst:03b}b (a task set per I_T nexus): SAM-2 and SAM-5 differ")


@spec(
    "FullFeature.TaskManagement.ClearTaskSetOtherSessionTask",
    "RFC 7143 11.5.1",
    requirements=["R7143-11.5-11"],
    dataloss=True,
)
async def test_clear_task_set_other_session_task(target: Any) -> None:
    """With TST=000b (one task set for every I_T nexus), a CLEAR TASK SET from a second
    session aborts the first session's WRITE that waits for its Data-Out: once
    answered 'Function complete', its Data-Out writes nothing and it gets no status
    (TASK ABORTED at most). RFC 7143 11.5.1 has CLEAR TASK SET abort the task set the
    TST field defines; SAM-2 (quoted on the T10 reflector) makes it a series of ABORT
    TASKs from each initiator. A target that answers 5 (not supported), or reports
    TST=001b, skips."""
    await _other_session_aborts(
        target,
        CLEAR_TASK_SET,
        "CLEAR TASK SET",
        "R7143-11.5-11",
        "RFC 7143 11.5.1: CLEAR TASK SET aborts the task set the Control mode page's "
        "TST defines, here (000b) every I_T nexus's tasks",
        lba=HELD_LBA + 24,
        flip=0x3C,
        before_tmf=_shared_task_set,
    )


@spec(
    "FullFeature.TaskManagement.AbortTaskSetSparesOtherSession",
    "RFC 7143 11.5.1",
    requirements=["R7143-11.5-10"],
    dataloss=True,
)
async def test_abort_task_set_spares_other_session(target: Any) -> None:
    """An ABORT TASK SET from a second session leaves the first session's WRITE (held
    open by its R2T) running: the Data-Out then sent completes it with GOOD and the
    block reads back as written (RFC 7143 11.5.1: ABORT TASK SET aborts the tasks
    issued via this session on the logical unit; no RFC 2119 keyword, so informational).
    The original block is written back afterwards."""
    lun, lba = target.lun, HELD_LBA + 16
    async with full_feature(target, keys=HELD_KEYS) as ffp, full_feature(target) as other:
        block, changed, cmd, r2t, got = await _read_then_hold_write(ffp, lun, lba, 0x5A)
        req, resp = await _tmf(other, ABORT_TASK_SET, lun=lun)
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response in (0, 5),
            "R7143-11.5-2",
            f"ABORT TASK SET from a second session answered {_code(other, resp)}",
            sent=[req],
            received=other.shown(resp),
        )
        data_out = await ffp.answer_r2t(cmd, r2t, changed)
        status = None
        seen: list[Any] = []
        for _ in range(16):
            p = await ffp.recv(timeout=5)
            if p is None:
                break
            seen.append(p)
            if getattr(p, "itt", None) == cmd.itt and (
                isinstance(p, P.ScsiResponse) or getattr(p, "status_present", False)
            ):
                status = p.status
                break
        after = await other.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
        written = after.status == 0 and after.data == changed
        if written:
            await other.command(cdb.write10(lba, 1), data_out=block, lun=lun)
        require(
            status == 0 and written,
            "R7143-11.5-10",
            f"an ABORT TASK SET from another session (response {resp.response}) reached "
            "this session's WRITE: after its Data-Out the WRITE got "
            + (f"status {status:#04x}" if status is not None else _what(ffp, None))
            + (", and the block was written" if written else ", and the block was not written")
            + "; RFC 7143 11.5.1: ABORT TASK SET aborts the tasks issued via the issuing "
            "session",
            sent=[cmd, req, *data_out, *after.sent],
            received=[*got, resp, *seen, *after.shown()],
        )


@spec(
    "FullFeature.TaskManagement.LunResetUnitAttention",
    "RFC 7143 11.5.1",
    requirements=["R7143-11.5-7"],
    dataloss=True,
)
async def test_lun_reset_unit_attention(target: Any) -> None:
    """After a LOGICAL UNIT RESET answered 'Function complete', the logical unit has a
    unit attention condition: the next TEST UNIT READY of the issuing I_T nexus or of
    another one (logged in before the reset, its own power-on unit attention already
    cleared) ends in CHECK CONDITION, UNIT ATTENTION.

    RFC 7143 11.5.1: for LOGICAL UNIT RESET the target MUST behave as SAM's logical
    unit reset, which shall establish a unit attention condition. Which nexuses get it
    is SAM's 5.14 (not read here), so either one seeing it conforms."""
    async with full_feature(target) as ffp, full_feature(target) as other:
        req, resp = await _tmf(ffp, LOGICAL_UNIT_RESET, lun=target.lun)
        require(
            isinstance(resp, P.TaskManagementResponse) and resp.response in (0, 5),
            "R7143-11.5-2",
            f"LUN RESET answered {_code(ffp, resp)}",
            sent=[req],
            received=ffp.shown(resp),
        )
        if resp.response == 5:
            pytest.skip("LOGICAL UNIT RESET is not supported (response 5): no reset, no UA")
        mine = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        theirs = await other.command(cdb.test_unit_ready(), lun=target.lun)

        def unit_attention(out: Any) -> bool:
            return bool(out.status == 0x02 and out.sense_key == 0x06)

        require(
            unit_attention(mine) or unit_attention(theirs),
            "R7143-11.5-7",
            "after LOGICAL UNIT RESET (Function complete) no I_T nexus saw a unit "
            f"attention: the issuer's TEST UNIT READY got status {mine.status!r} "
            f"({mine.outcome}), another nexus's got {theirs.status!r} ({theirs.outcome}); "
            "SAM's logical unit reset shall establish a unit attention condition and RFC "
            "7143 11.5.1 says the target MUST behave as it dictates",
            sent=[req, *mine.sent, *theirs.sent],
            received=[resp, *mine.shown(), *theirs.shown()],
        )


@spec(
    "FullFeature.TaskManagement.TargetColdReset",
    "RFC 7143 11.5.1",
    "RFC 7143 11.6.1",
    requirements=["R7143-11.5-8"],
    needs=("cold_reset_target",),
)
async def test_target_cold_reset(target: Any) -> None:
    """TARGET COLD RESET ends every connection of the target: the issuing one (after the
    Task Management Function Response, which may be lost) and another session's.

    RFC 7143 11.5.1: the target MUST treat TARGET COLD RESET as a power-on event and
    terminate all of its TCP connections to all initiators; 11.6.1: it MUST then close
    them. The function is OPTIONAL: 'not supported' (5) with the connections kept
    conforms. Run only on the "cold-reset" profile, a target of its own, so that the
    reset ends no other test's session."""
    async with (
        full_feature(target, "cold-reset") as ffp,
        full_feature(target, "cold-reset") as other,
    ):
        req = _tmf_request(ffp, TARGET_COLD_RESET)
        await ffp.send(req)
        resp = await ffp.recv()
        if isinstance(resp, P.TaskManagementResponse) and resp.response == 5:
            pytest.skip("TARGET COLD RESET is not supported (response 5; it is OPTIONAL)")
        gone = ffp.no_answer
        if resp is None and gone is not None and gone.outcome is Outcome.CLOSED:
            closed = True
        else:
            closed = await ffp.raw.expect_closed(timeout=5)
        other_closed = await other.raw.expect_closed(timeout=5)
        require(
            closed and other_closed,
            "R7143-11.5-8",
            f"after TARGET COLD RESET ({_what(ffp, resp)}"
            + (f", response {resp.response}" if resp is not None else "")
            + f") the issuing connection {'closed' if closed else 'stayed open'} and "
            f"another session's {'closed' if other_closed else 'stayed open'}; RFC 7143 "
            "11.5.1: the target MUST terminate all of its TCP connections to all initiators",
            sent=[req],
            received=ffp.shown(resp),
        )


# ---------------------------------------------------------------- RFC 7144 functions
# QUERY TASK (9), QUERY TASK SET (10), I_T NEXUS RESET (11) and QUERY ASYNCHRONOUS
# EVENT (12) exist only on a session that negotiated iSCSIProtocolLevel 2 (RFC 7144 4.1,
# 6.3). Each test offers 2; a target that answers less (or NotUnderstood, 7.1.1) did
# not agree to them, and the test says so and judges nothing. Once 2 is negotiated a
# target may still answer 5 (not supported, 4.1) but MUST NOT Reject the request.
QUERY_TASK, QUERY_TASK_SET, I_T_NEXUS_RESET, QUERY_ASYNC_EVENT = 9, 10, 11, 12
LEVEL2 = [("iSCSIProtocolLevel", "2")]
FUNCTION_SUCCEEDED = 7


def _require_level2(ffp: Any) -> None:
    """Skip, saying why, unless the login settled iSCSIProtocolLevel at 2 or more."""
    level = ffp.probe.negotiated.get("iSCSIProtocolLevel")
    if level is None or not level.isdigit() or int(level) < 2:
        pytest.skip(
            f"not negotiated: offered iSCSIProtocolLevel=2, the target answered {level!r}; "
            "RFC 7144 4.1: its task management functions need level 2"
        )


async def _level2_tmf(
    ffp: Any, function: int, name: str, *, lun: int = 0, ref: int = 0xFFFFFFFF, refcmdsn: int = 0
) -> tuple[Any, Any]:
    """Send RFC 7144 function ``function`` (immediate) and return (request, response):
    a Reject or no answer fails (4.1, 6.3), 5 (not supported) skips."""
    req = _tmf_request(ffp, function, lun=lun, ref=ref, refcmdsn=refcmdsn)
    reply = await ffp.exchange(req)
    resp = reply.pdu
    require(
        not isinstance(resp, P.Reject),
        "R7144-4.1-1",
        f"{name} was answered by a Reject (reason {getattr(resp, 'reason', None)}) on a "
        "session at iSCSIProtocolLevel 2; RFC 7144 4.1: the target MUST NOT reject it",
        sent=[req],
        received=reply.shown(),
    )
    require(
        isinstance(resp, P.TaskManagementResponse),
        "R7144-6.3-1",
        f"no Task Management Function Response to {name}: "
        f"{resp if resp is not None else reply.missing()}; RFC 7144 6.3: the response "
        "MUST be returned as 6.4 details",
        sent=[req],
        received=reply.shown(),
    )
    if resp.response == 5:
        pytest.skip(f"{name} is not supported (response 5; RFC 7144 4.1 allows it)")
    return req, resp


@spec(
    "FullFeature.TaskManagement.QueryTask",
    "RFC 7144 6.4.2",
    "RFC 7144 6.3",
    requirements=["R7144-6.4.2-1", "R7144-4.1-1", "R7144-6.3-1"],
    dataloss=True,
)
async def test_query_task(target: Any) -> None:
    """QUERY TASK at iSCSIProtocolLevel 2: for a tag no task has, 'Function complete'
    (0); for a WRITE held open by its R2T, 'Function succeeded' (7); for the same WRITE
    once its Data-Out completed it, 0 again (RFC 7144 6.4.2: succeeded if the task is
    in the task set, complete if not). The block is written back unchanged."""
    lun, lba = target.lun, HELD_LBA + 40
    async with full_feature(target, keys=[*HELD_KEYS, *LEVEL2]) as ffp:
        _require_level2(ffp)
        name = "QUERY TASK"
        req, resp = await _level2_tmf(ffp, QUERY_TASK, name, lun=lun, ref=0x0BADF00D)
        require(
            resp.response == 0,
            "R7144-6.4.2-1",
            f"QUERY TASK of a tag no task has answered {resp.response}, not 0 (Function "
            "complete); RFC 7144 6.4.2: complete when the task is not in the task set",
            sent=[req],
            received=[resp],
        )
        block, _changed, cmd, r2t, got = await _read_then_hold_write(ffp, lun, lba, 0)
        held_req, held = await _level2_tmf(
            ffp, QUERY_TASK, name, lun=lun, ref=cmd.itt, refcmdsn=cmd.cmdsn
        )
        data_out = await ffp.answer_r2t(cmd, r2t, block)
        later = await ffp.drain(1.0)
        require(
            held.response == FUNCTION_SUCCEEDED,
            "R7144-6.4.2-1",
            f"QUERY TASK of a WRITE waiting for its Data-Out (R2T received) answered "
            f"{held.response}, not 7 (Function succeeded); RFC 7144 6.4.2: succeeded when "
            "the task is in the task set",
            sent=[cmd, held_req],
            received=[*got, held],
        )
        done_req, done = await _level2_tmf(
            ffp, QUERY_TASK, name, lun=lun, ref=cmd.itt, refcmdsn=cmd.cmdsn
        )
        require(
            done.response == 0,
            "R7144-6.4.2-1",
            f"QUERY TASK of a WRITE that had its Data-Out and status answered "
            f"{done.response}, not 0 (Function complete): the task is no longer in the "
            "task set (RFC 7144 6.4.2)",
            sent=[cmd, *data_out, done_req],
            received=[*later, done],
        )


@spec(
    "FullFeature.TaskManagement.QueryTaskOfTaskManagement",
    "RFC 7144 6.3",
    requirements=["R7144-6.3-2", "R7144-4.1-1", "R7144-6.3-1"],
)
async def test_query_task_of_task_management(target: Any) -> None:
    """QUERY TASK whose Referenced Task Tag is its own Initiator Task Tag, a task
    management request, is answered 255 (Function rejected): RFC 7144 6.3 says a QUERY
    TASK MUST NOT be executed on a Task Management request and MUST then result in
    'Function rejected'."""
    async with full_feature(target, keys=LEVEL2) as ffp:
        _require_level2(ffp)
        itt = ffp.itt + 1  # the tag _tmf_request gives the request
        req, resp = await _level2_tmf(
            ffp, QUERY_TASK, "QUERY TASK", lun=target.lun, ref=itt, refcmdsn=ffp.cmdsn
        )
        require(
            resp.response == 255,
            "R7144-6.3-2",
            f"QUERY TASK of a task management request (its own tag {itt:#x}) answered "
            f"{resp.response}, not 255 (Function rejected); RFC 7144 6.3: it MUST NOT be "
            "executed on a Task Management request",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.TaskManagement.QueryTaskSet",
    "RFC 7144 6.4.2",
    requirements=["R7144-6.4.2-2", "R7144-4.1-1", "R7144-6.3-1"],
    dataloss=True,
)
async def test_query_task_set(target: Any) -> None:
    """QUERY TASK SET at iSCSIProtocolLevel 2: with no command of this I_T_L nexus in
    the task set, 'Function complete' (0); with a WRITE held open by its R2T, 'Function
    succeeded' (7) (RFC 7144 6.4.2). The block is written back unchanged."""
    lun, lba = target.lun, HELD_LBA + 48
    async with full_feature(target, keys=[*HELD_KEYS, *LEVEL2]) as ffp:
        _require_level2(ffp)
        name = "QUERY TASK SET"
        req, resp = await _level2_tmf(ffp, QUERY_TASK_SET, name, lun=lun)
        require(
            resp.response == 0,
            "R7144-6.4.2-2",
            f"QUERY TASK SET with no command of this nexus outstanding answered "
            f"{resp.response}, not 0 (Function complete); RFC 7144 6.4.2",
            sent=[req],
            received=[resp],
        )
        block, _changed, cmd, r2t, got = await _read_then_hold_write(ffp, lun, lba, 0)
        held_req, held = await _level2_tmf(ffp, QUERY_TASK_SET, name, lun=lun)
        data_out = await ffp.answer_r2t(cmd, r2t, block)
        later = await ffp.drain(1.0)
        require(
            held.response == FUNCTION_SUCCEEDED,
            "R7144-6.4.2-2",
            f"QUERY TASK SET with a WRITE of this nexus waiting for its Data-Out answered "
            f"{held.response}, not 7 (Function succeeded); RFC 7144 6.4.2: succeeded when "
            "a command of the I_T_L nexus is in the task set",
            sent=[cmd, held_req, *data_out],
            received=[*got, held, *later],
        )


def _unit_attention(out: Any) -> bool:
    return bool(out.status == 0x02 and out.sense_key == 0x06)


@spec(
    "FullFeature.TaskManagement.QueryAsyncEvent",
    "RFC 7144 6.4.2",
    requirements=["R7144-6.4.2-4", "R7144-4.1-1", "R7144-6.3-1"],
)
async def test_query_async_event(target: Any) -> None:
    """QUERY ASYNCHRONOUS EVENT at iSCSIProtocolLevel 2 agrees with what the next
    command of the nexus meets: a new nexus asks first, then sends TEST UNIT READY, and
    repeats until a TEST UNIT READY is GOOD. Each time the answer must be 7 (Function
    succeeded) when that TEST UNIT READY then reports a UNIT ATTENTION, and 0 (Function
    complete) when it is GOOD (RFC 7144 6.4.2: succeeded if a unit attention condition
    or deferred error is pending for the I_T_L nexus, complete if none is). A unit
    attention raised by another test between the two is told apart by asking again."""
    profile, lun = "default", target.lun
    async with target.raw(profile) as raw:
        probe = await target.login(raw, profile, LEVEL2)
        ffp = FullFeature(raw, probe)  # no clear_unit_attention: a new nexus's UA is the point
        _require_level2(ffp)
        sent: list[Any] = []
        received: list[Any] = []
        for _ in range(6):
            req, resp = await _level2_tmf(
                ffp, QUERY_ASYNC_EVENT, "QUERY ASYNCHRONOUS EVENT", lun=lun
            )
            out = await ffp.command(cdb.test_unit_ready(), lun=lun)
            sent += [req, *out.sent]
            received += [resp, *out.shown()]
            pending = _unit_attention(out)
            said = resp.response == FUNCTION_SUCCEEDED
            if said != pending and pending:
                # A unit attention may have come between the two (another test's reset):
                # then it is pending still, or reported; ask once more before judging.
                again_req, again = await _level2_tmf(
                    ffp, QUERY_ASYNC_EVENT, "QUERY ASYNCHRONOUS EVENT", lun=lun
                )
                retry = await ffp.command(cdb.test_unit_ready(), lun=lun)
                sent += [again_req, *retry.sent]
                received += [again, *retry.shown()]
                said, pending = again.response == FUNCTION_SUCCEEDED, _unit_attention(retry)
                resp, out = again, retry
            require(
                said == pending and resp.response in (0, FUNCTION_SUCCEEDED),
                "R7144-6.4.2-4",
                f"QUERY ASYNCHRONOUS EVENT answered {resp.response} and the next TEST UNIT "
                f"READY got status {out.status!r}"
                + (f" sense key {out.sense_key:#x}" if out.status == 0x02 else "")
                + f" ({out.outcome.value}); RFC 7144 6.4.2: 7 (Function succeeded) when a "
                "unit attention is pending for the I_T_L nexus, 0 (Function complete) when "
                "none is",
                sent=sent,
                received=received,
            )
            if out.status == 0:
                return
        raise violation(
            "harness",
            "TEST UNIT READY never ended in GOOD after six tries: nothing left to compare",
            sent=sent,
            received=received,
        )


@spec(
    "FullFeature.TaskManagement.ItNexusReset",
    "RFC 7144 6.3",
    "RFC 7144 6.4.2",
    requirements=["R7144-6.3-3", "R7144-6.3-4", "R7144-6.4.2-3", "R7144-4.1-1"],
    dataloss=True,
)
async def test_i_t_nexus_reset(target: Any) -> None:
    """I_T NEXUS RESET at iSCSIProtocolLevel 2, while a second session (another I_T
    nexus) holds a WRITE open by its R2T: the issuing session's connection is dropped
    (RFC 7144 6.3: the target MUST drop all connections of the session; the response,
    0 Function complete by 6.4.2, may be lost on the way); the other nexus is not
    touched, its WRITE completes with GOOD once its Data-Out comes and the block reads
    back as written (6.3: the I_T nexus loss is that of the nexus on which the function
    came); and the issuing nexus, logging in again with its ISID, meets a unit
    attention on its first command (6.3: each logical unit MUST behave as SAM-5's I_T
    nexus loss, which leaves one). The other session's block is written back."""
    lun, lba, profile = target.lun, HELD_LBA + 56, "default"
    isid = 0x8011_4400_0000 | (os.getpid() & 0xFFFF)  # this test's own nexus (random type)
    async with (
        full_feature(target, keys=[*HELD_KEYS, *LEVEL2], isid=isid) as ffp,
        full_feature(target, keys=HELD_KEYS) as other,
    ):
        _require_level2(ffp)
        block, changed, cmd, r2t, got = await _read_then_hold_write(other, lun, lba, 0x66)
        req = _tmf_request(ffp, I_T_NEXUS_RESET)
        reply = await ffp.exchange(req)
        resp = reply.pdu
        if isinstance(resp, P.TaskManagementResponse) and resp.response == 5:
            await other.answer_r2t(cmd, r2t, block)
            pytest.skip("I_T NEXUS RESET is not supported (response 5; RFC 7144 4.1 allows it)")
        require(
            not isinstance(resp, P.Reject),
            "R7144-4.1-1",
            "I_T NEXUS RESET was answered by a Reject on a session at iSCSIProtocolLevel 2; "
            "RFC 7144 4.1: the target MUST NOT reject it",
            sent=[req],
            received=reply.shown(),
        )
        require(
            resp is None or (isinstance(resp, P.TaskManagementResponse) and resp.response == 0),
            "R7144-6.4.2-3",
            f"I_T NEXUS RESET answered {_code(ffp, resp)}, not 0 (Function complete); RFC "
            "7144 6.4.2: after the reset the logical unit returns Function complete",
            sent=[req],
            received=reply.shown(),
        )
        closed = reply.outcome is Outcome.CLOSED or await ffp.raw.expect_closed(timeout=5)
        data_out = await other.answer_r2t(cmd, r2t, changed)
        status = None
        seen: list[Any] = []
        for _ in range(16):
            p = await other.recv(timeout=5)
            if p is None:
                break
            seen.append(p)
            if getattr(p, "itt", None) == cmd.itt and (
                isinstance(p, P.ScsiResponse) or getattr(p, "status_present", False)
            ):
                status = p.status
                break
        after = await other.command(cdb.read10(lba, 1), read_length=BLOCK, lun=lun)
        written = after.status == 0 and after.data == changed
        if written:
            await other.command(cdb.write10(lba, 1), data_out=block, lun=lun)
        require(
            closed,
            "R7144-6.3-3",
            f"after I_T NEXUS RESET ({_what(ffp, resp)}) the issuing connection stayed open "
            "for 5 s; RFC 7144 6.3: the target MUST drop all connections of the session",
            sent=[req],
            received=reply.shown(),
        )
        require(
            status == 0 and written,
            "R7144-6.3-4",
            "an I_T NEXUS RESET of another nexus reached this session's WRITE: after its "
            "Data-Out it got "
            + (f"status {status:#04x}" if status is not None else _what(other, None))
            + (", and the block was written" if written else ", and the block was not written")
            + "; RFC 7144 6.3: the I_T nexus loss is that of the nexus the function came on",
            sent=[cmd, req, *data_out, *after.sent],
            received=[*got, *reply.shown(), *seen, *after.shown()],
        )
    async with target.raw(profile) as raw:
        probe = await target.login(raw, profile, (), isid=isid)
        again = FullFeature(raw, probe)
        first = await again.command(cdb.test_unit_ready(), lun=lun)
        require(
            _unit_attention(first),
            "R7144-6.3-4",
            f"the nexus that sent I_T NEXUS RESET, logged in again with its ISID, got "
            f"status {first.status!r} ({first.outcome.value}) for its first command, no "
            "UNIT ATTENTION; RFC 7144 6.3: each logical unit MUST behave as SAM-5's I_T "
            "nexus loss, which establishes a unit attention (I_T NEXUS LOSS OCCURRED)",
            sent=[req, *first.sent],
            received=first.shown(),
        )


@spec(
    "FullFeature.Reject.UnknownOpcode",
    "RFC 7143 11.17.1",
    "RFC 7143 11.17.4",
    level="INFORMATIONAL",
    requirements=["R7143-11.2.1-3", "R7143-11.17-1"],
)
async def test_unknown_opcode_rejected(target: Any) -> None:
    """An unknown initiator opcode (0x1f) is answered with a Reject carrying its header."""
    async with full_feature(target) as ffp:
        bogus = P.UnknownPDU(
            opcode=0x1F,
            bhs=bytes([0x1F | 0x40, 0x80]) + bytes(14) + (0x9999).to_bytes(4, "big") + bytes(28),
        )
        wire = P.encode(bogus, strict=False)
        await ffp.send(bogus)
        resp = await ffp.recv()
        if resp is None:
            raise violation(
                "R7143-11.2.1-3",
                f"an unknown opcode was not rejected: {_what(ffp, resp)}",
                sent=[bogus],
                received=ffp.shown(resp),
            )
        require(
            isinstance(resp, P.Reject),
            "R7143-11.2.1-3",
            f"expected Reject, got {type(resp).__name__}",
            sent=[bogus],
            received=[resp],
        )
        require(
            resp.reason in (0x04, 0x05),
            "R7143-11.2.1-3",
            f"Reject reason {resp.reason:#x}",
            sent=[bogus],
            received=[resp],
        )
        require(
            resp.data[:48] == wire[:48],
            "R7143-11.17-1",
            "the Reject does not carry the rejected header",
            sent=[bogus],
            received=[resp],
        )


@spec(
    "FullFeature.Reject.PayloadDigestReason",
    "RFC 7143 7.8",
    "RFC 7143 11.17.1",
    requirements=["R7143-7.8-6", "R7143-11.17-1"],
)
async def test_reject_reason_payload_digest(target: Any) -> None:
    """A Reject names its cause: a NOP-Out whose data digest fails is answered with a
    Reject of reason 02h (Data (payload) digest error) carrying the NOP-Out's header,
    which RFC 7143 7.8 requires at every ErrorRecoveryLevel. Ending the connection
    without a Reject (escalation to session recovery, which 7.8 allows) also conforms;
    silence, another answer or another reason does not."""
    async with target.raw() as raw:
        probe = await target.login(raw, keys=[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")])
        raw.set_digests(header=True, data=True)
        payload = os.urandom(64)
        nop = P.NopOut(
            immediate=True,
            itt=0x7070,
            ttt=0xFFFFFFFF,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            data=payload,
        )
        bad = P.Tamper(data_digest_value=crc32c(payload) ^ 0xFFFFFFFF)
        wire = P.encode(nop, header_digest=True, data_digest=True, strict=False, tamper=bad)
        await raw.send(wire)
        started = time.monotonic()
        resp = await raw.recv(timeout=DEFAULT_TIMEOUT)
        if resp is None and raw.last_outcome is Outcome.CLOSED:
            return  # escalated to session recovery (RFC 7143 7.8)
        gone = None
        if resp is None:
            gone = NoAnswer(raw.last_outcome, time.monotonic() - started, DEFAULT_TIMEOUT)
        require(
            isinstance(resp, P.Reject),
            "R7143-7.8-6",
            "a NOP-Out with a wrong data digest got "
            f"{type(resp).__name__ if resp is not None else gone}, not a Reject (02h) and "
            "not the end of the connection",
            sent=[nop],
            received=[resp] if resp is not None else [],
        )
        require(
            resp.reason == 0x02,
            "R7143-7.8-6",
            f"the Reject of a payload digest error gives reason {resp.reason:#04x}; RFC 7143 "
            "7.8 requires 02h (Data (payload) digest error)",
            sent=[nop],
            received=[resp],
        )
        require(
            resp.data[:48] == wire[:48],
            "R7143-11.17-1",
            "the Reject does not carry the rejected NOP-Out's header",
            sent=[nop],
            received=[resp],
        )


@spec(
    "FullFeature.Reject.DataSegmentTooLong",
    "RFC 7143 13.12",
    level="INFORMATIONAL",
    requirements=["R7143-11.2.1-2"],
)
async def test_data_segment_over_mrdsl(target: Any) -> None:
    """A NOP-Out carrying more data than the target's MaxRecvDataSegmentLength is refused."""
    async with full_feature(target) as ffp:
        data = os.urandom(ffp.target_mrdsl + 4096)
        req = P.NopOut(
            immediate=True,
            itt=0x6060,
            ttt=0xFFFFFFFF,
            cmdsn=ffp.cmdsn,
            expstatsn=ffp.expstatsn,
            data=data,
        )
        await ffp.send(req)
        resp = await ffp.recv()
        require(
            not isinstance(resp, P.NopIn),
            "R7143-11.2.1-2",
            f"{len(data)} bytes (> MaxRecvDataSegmentLength {ffp.target_mrdsl}) were accepted",
            sent=[req],
            received=[resp],
        )
        # The NOP-Out has a valid ITT, so it is owed an answer (11.18); having broken
        # the receiver's limit (13.12), it may instead be rejected (11.17, 7.11) or, the
        # framing being lost, end the connection. Silence is none of these.
        gone = ffp.no_answer
        require(
            isinstance(resp, P.Reject) or (gone is not None and gone.outcome is Outcome.CLOSED),
            "R7143-11.2.1-2",
            f"a NOP-Out of {len(data)} bytes (> MaxRecvDataSegmentLength "
            f"{ffp.target_mrdsl}) got {_what(ffp, resp)}; expected a Reject or the end of "
            "the connection",
            sent=[req],
            received=ffp.shown(resp),
        )


@spec(
    "FullFeature.Scsi.ExtendedCdb",
    "RFC 7143 11.2.2.3",
    level="INFORMATIONAL",
    requirements=["R7143-11.3-1"],
)
async def test_extended_cdb(target: Any) -> None:
    """A 32-byte CDB (Extended CDB AHS) gets a SCSI status, not a dropped connection."""
    async with full_feature(target) as ffp:
        long_cdb = bytes([0x7F, 0, 0, 0, 0, 0, 0, 24]) + bytes(
            24
        )  # variable-length CDB, no service action
        out = await ffp.command(long_cdb, lun=target.lun)
        require(
            out.status is not None or any(isinstance(p, P.Reject) for p in out.received),
            "R7143-11.3-1",
            f"no answer to a command with an Extended CDB AHS: {out.missing()}",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Scsi.InquiryStandard", "SPC-4 6.6", "RFC 7143 11.7", requirements=["RSPC4-6.6-1"]
)
async def test_inquiry(target: Any) -> None:
    """INQUIRY returns at least 36 bytes, truncated to the allocation length."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.inquiry(alloc=255), read_length=255, lun=target.lun)
        require(
            out.status == 0 and len(out.data) >= 36,
            "RSPC4-6.6-1",
            f"INQUIRY: status {out.status!r}, {len(out.data)} bytes",
            sent=out.sent,
            received=out.shown(),
        )
        short = await ffp.command(cdb.inquiry(alloc=8), read_length=8, lun=target.lun)
        require(
            short.status == 0 and len(short.data) <= 8,
            "RSPC4-6.6-1",
            f"INQUIRY alloc 8 returned {len(short.data)} bytes",
            sent=short.sent,
            received=short.shown(),
        )


@spec(
    "FullFeature.Scsi.InquiryIscsiVersion",
    "RFC 7144 4.2",
    requirements=["R7144-4.2-1"],
)
async def test_inquiry_iscsi_version(target: Any) -> None:
    """The iSCSI version descriptor of standard INQUIRY data follows the session's
    iSCSIProtocolLevel: two sessions, one offering 2 and one offering 1, each read the
    descriptors; one in 0960h-097Fh (the iSCSI range T10 gave RFC 7144) must be 0960h
    plus the level that session negotiated (RFC 7144 4.2: MUST, for a device server that
    returns one). A session whose offer got NotUnderstood negotiated no level (7.1.1) and
    judges nothing; a device server that returns no iSCSI descriptor conforms."""
    judged = []
    for offer in ("2", "1"):
        async with full_feature(target, keys=[("iSCSIProtocolLevel", offer)]) as ffp:
            level = ffp.probe.negotiated.get("iSCSIProtocolLevel")
            out = await ffp.command(cdb.inquiry(alloc=96), read_length=96, lun=target.lun)
            require(
                out.status == 0 and len(out.data) >= 36,
                "RSPC4-6.6-1",
                f"INQUIRY: status {out.status!r}, {len(out.data)} bytes",
                sent=out.sent,
                received=out.shown(),
            )
            if level is None or not level.isdigit():
                continue
            found = [
                d for d in cdb.parse_inquiry(out.data).version_descriptors if 0x0960 <= d <= 0x097F
            ]
            if not found:
                continue
            judged.append(offer)
            require(
                found == [0x0960 + int(level)],
                "R7144-4.2-1",
                f"the session that offered iSCSIProtocolLevel={offer} negotiated {level}, and "
                "INQUIRY's iSCSI version descriptor is "
                + ", ".join(f"{d:04X}h" for d in found)
                + f", not {0x0960 + int(level):04X}h; RFC 7144 4.2: a returned iSCSI version "
                "descriptor MUST be 0960h plus the negotiated iSCSIProtocolLevel",
                sent=[*ffp.probe.sent, *out.sent],
                received=[*ffp.probe.received, *out.shown()],
            )
    if not judged:
        pytest.skip(
            "not negotiated or not returned: no session settled a numeric iSCSIProtocolLevel "
            "with an iSCSI version descriptor (0960h-097Fh) in its INQUIRY data"
        )


@spec(
    "FullFeature.Scsi.CommandPriorityIgnored",
    "RFC 7144 5.1.1",
    requirements=["R7144-5.1.1-1"],
)
async def test_command_priority_ignored(target: Any) -> None:
    """On a session that did not negotiate iSCSIProtocolLevel 2 (this one offers 1), a
    TEST UNIT READY whose Command Priority field (PRI, byte 2) is 15 is answered as if
    it were 0: GOOD, not a Reject or CHECK CONDITION (RFC 7144 5.1.1: the target MUST
    ignore the field unless level 2 was negotiated). The field is one a sender must
    leave 0 below level 2; this test sets it on purpose to see the receiver's side."""
    keys = [("iSCSIProtocolLevel", "1"), ("HeaderDigest", "None"), ("DataDigest", "None")]
    async with full_feature(target, keys=keys) as ffp:
        level = ffp.probe.negotiated.get("iSCSIProtocolLevel")
        if level is not None and level.isdigit() and int(level) >= 2:
            pytest.skip(f"iSCSIProtocolLevel={level} was negotiated: the field may count")
        sent: list[Any] = []
        received: list[Any] = []
        for _ in range(3):  # a unit attention another test raised is reported first
            cmd = P.ScsiCommand(
                final=True,
                attr=1,
                lun=P.lun_to_field(target.lun),
                itt=ffp.next_itt(),
                cmdsn=ffp.take_cmdsn(),
                expstatsn=ffp.expstatsn,
                cdb=cdb.test_unit_ready(),
            )
            wire = P.encode(cmd, strict=False, tamper=P.Tamper(bhs_patch={2: 0xF0}))  # PRI 15

            def answers(p: Any, itt: int = cmd.itt) -> bool:
                return isinstance(p, P.ScsiResponse) and p.itt == itt

            reply = await ffp.exchange(wire, answers=answers)
            sent.append(cmd)
            received += reply.shown()
            resp = reply.pdu
            if not (isinstance(resp, P.ScsiResponse) and resp.status == 0x02):
                break
            sense = resp.sense
            if len(sense) < 3 or sense[2] & 0x0F != 0x06:
                break
        require(
            isinstance(resp, P.ScsiResponse) and resp.status == 0,
            "R7144-5.1.1-1",
            "a TEST UNIT READY with Command Priority 15 on a session at iSCSIProtocolLevel "
            f"{level!r} was answered "
            + (
                f"status {resp.status:#04x}"
                if isinstance(resp, P.ScsiResponse)
                else (type(resp).__name__ if resp is not None else str(reply.missing()))
            )
            + ", not GOOD; RFC 7144 5.1.1: below level 2 the target MUST ignore the field "
            "(the PDU's byte 2 was F0h, the rest as an ordinary TEST UNIT READY)",
            sent=sent,
            received=received,
        )


@spec(
    "FullFeature.Scsi.InquiryInvalidPage",
    "SPC-4 6.6",
    "RFC 7143 11.4.7",
    requirements=["RSPC4-6.6-2", "R7143-11.4-3"],
)
async def test_inquiry_invalid_field(target: Any) -> None:
    """INQUIRY with EVPD=0 and PAGE CODE 1 ends in CHECK CONDITION, ILLEGAL REQUEST, with SenseLength-prefixed sense."""
    async with full_feature(target) as ffp:
        bad = bytes([0x12, 0x00, 0x01, 0x00, 0xFF, 0x00])
        out = await ffp.command(bad, read_length=255, lun=target.lun)
        require(
            out.status == 0x02,
            "RSPC4-6.6-2",
            f"status {out.status!r}, expected CHECK CONDITION",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            out.sense_key == 0x05,
            "R7143-11.4-3",
            f"sense key {out.sense_key!r}, expected ILLEGAL REQUEST (5)",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            out.asc == (0x24, 0x00),
            "RSPC4-6.6-2",
            f"ASC/ASCQ {out.asc!r}, expected INVALID FIELD IN CDB (24h/00h)",
            sent=out.sent,
            received=out.shown(),
        )


@spec("FullFeature.Scsi.ReportLuns", "SPC-4 6.33", requirements=["RSPC4-6.33-1"])
async def test_report_luns(target: Any) -> None:
    """REPORT LUNS lists the LUN we use."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.report_luns(4096), read_length=4096, lun=0)
        require(
            out.status == 0 and len(out.data) >= 8,
            "RSPC4-6.33-1",
            f"REPORT LUNS status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        n = int.from_bytes(out.data[:4], "big") // 8
        luns = [
            P.field_to_lun(int.from_bytes(out.data[8 + 8 * i : 16 + 8 * i], "big"))
            for i in range(min(n, (len(out.data) - 8) // 8))
        ]
        require(
            target.lun in luns,
            "RSPC4-6.33-1",
            f"LUN {target.lun} not in REPORT LUNS {luns}",
            sent=out.sent,
            received=out.shown(),
        )


@spec("FullFeature.Scsi.TestUnitReady", "SPC-4 6.47", requirements=["RSPC4-6.37-1"])
async def test_test_unit_ready(target: Any) -> None:
    """TEST UNIT READY returns GOOD (after at most one unit attention)."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        if out.status == 0x02 and out.sense_key == 0x06:
            out = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        require(
            out.status == 0,
            "RSPC4-6.37-1",
            f"TEST UNIT READY status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )


@spec("FullFeature.Scsi.ReadCapacity16", "SBC-3 5.16", requirements=["RSBC3-5.16-3"])
async def test_read_capacity16(target: Any) -> None:
    """READ CAPACITY (16) reports a last LBA and a block length that a READ of the last block accepts."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.read_capacity16(32), read_length=32, lun=target.lun)
        require(
            out.status == 0 and len(out.data) >= 12,
            "RSBC3-5.16-3",
            f"READ CAPACITY(16) status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        last = int.from_bytes(out.data[:8], "big")
        size = int.from_bytes(out.data[8:12], "big")
        require(
            size in (512, 1024, 2048, 4096),
            "RSBC3-5.16-3",
            f"block length {size}",
            sent=out.sent,
            received=out.shown(),
        )
        rd = await ffp.command(cdb.read16(last, 1), read_length=size, lun=target.lun)
        require(
            rd.status == 0,
            "RSBC3-5.16-3",
            f"READ of the reported last LBA {last} failed ({rd.status!r})",
            sent=rd.sent,
            received=rd.shown(),
        )
        beyond = await ffp.command(cdb.read16(last + 1, 1), read_length=size, lun=target.lun)
        require(
            beyond.status == 0x02 and beyond.asc == (0x21, 0x00),
            "RSBC3-5.16-2",
            f"READ past the end: status {beyond.status!r}, ASC {beyond.asc!r}; expected LBA OUT OF RANGE (21h/00h)",
            sent=beyond.sent,
            received=beyond.shown(),
        )


@pytest.mark.parametrize("size_blocks", [1, 8, 129, 2048])
@spec("FullFeature.Scsi.WriteReadBack", "SBC-3 5.11", requirements=["RSBC3-5.16-1"], dataloss=True)
async def test_write_read_back(target: Any, size_blocks: int) -> None:
    """Data written with WRITE(16) reads back identical with READ(16)."""
    async with full_feature(target) as ffp:
        payload = os.urandom(size_blocks * BLOCK)
        w = await ffp.command(cdb.write16(4096, size_blocks), data_out=payload, lun=target.lun)
        require(
            w.status == 0,
            "RSBC3-5.16-1",
            f"WRITE status {w.status!r}",
            sent=w.sent,
            received=w.shown(),
        )
        r = await ffp.command(
            cdb.read16(4096, size_blocks), read_length=len(payload), lun=target.lun
        )
        require(
            r.status == 0 and r.data == payload,
            "RSBC3-5.16-1",
            "read-back differs from what was written",
            sent=r.sent,
            received=r.shown(),
        )
