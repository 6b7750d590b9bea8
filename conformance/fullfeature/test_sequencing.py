"""FullFeature.Sequencing / Nop: CmdSN window, immediate delivery, StatSN, NOP-Out/NOP-In
(RFC 7143 4.2.2, 11.18, 11.19)."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.serial import lt as serial_lt
from iscsi_conformance.harness.probe import FullFeature, full_feature
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

WRAP_START = 0xFFFFFFF8  # the login's CmdSN: a few commands before 2**32 wraps to 0
WRAP_COMMANDS = 16  # NOP-Outs sent after login: the CmdSN passes 0xffffffff, then 0


@spec("FullFeature.Nop.PingEchoed", "RFC 7143 11.18", requirements=["R7143-11.18-1"])
async def test_nop_ping_echoed(target: Any) -> None:
    """A NOP-Out with a valid ITT gets a NOP-In with the same ITT and the same data."""
    async with full_feature(target) as ffp:
        data = os.urandom(300)
        req, resp = await ffp.nop(data)
        require(
            isinstance(resp, P.NopIn),
            "R7143-11.18-1",
            f"no NOP-In answered the ping: {ffp.no_answer or type(resp).__name__}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            resp.itt == req.itt,
            "R7143-11.18-1",
            f"NOP-In ITT {resp.itt:#x} != {req.itt:#x}",
            sent=[req],
            received=[resp],
        )
        require(
            resp.ttt == 0xFFFFFFFF,
            "R7143-11.18-1",
            "a NOP-In answering a ping must carry TTT 0xffffffff",
            sent=[req],
            received=[resp],
        )
        require(
            resp.data == data,
            "R7143-11.18-1",
            "the ping data was not echoed",
            sent=[req],
            received=[resp],
        )


@spec(
    "FullFeature.Nop.NoAnswerToReservedTag",
    "RFC 7143 11.18.1",
    ("RFC 7143", "11.19", "SHOULD NOT", "target"),
    requirements=["R7143-11.18-2", "R7143-11.18-1"],
)
async def test_nop_reserved_itt_not_answered(target: Any) -> None:
    """An immediate NOP-Out with ITT 0xffffffff (no answer wanted) gets no NOP-In (RFC 7143
    11.19: SHOULD NOT), and the session goes on: the next ping is answered (11.18.1, MUST)."""
    async with full_feature(target) as ffp:
        req = P.NopOut(
            immediate=True, itt=0xFFFFFFFF, ttt=0xFFFFFFFF, cmdsn=ffp.cmdsn, expstatsn=ffp.expstatsn
        )
        await ffp.send(req)
        resp = await ffp.recv(timeout=2)
        require(
            not isinstance(resp, P.NopIn) or resp.ttt != 0xFFFFFFFF,
            "R7143-11.18-2",
            "the target answered a NOP-Out whose ITT says no answer is wanted",
            sent=[req],
            received=ffp.shown(resp),
        )
        # No answer is not a hang-up: the NOP-Out is legal (11.18), and the session
        # goes on, so a ping with a valid ITT after it is answered.
        ping, alive = await ffp.nop(b"alive")
        require(
            isinstance(alive, P.NopIn),
            "R7143-11.18-1",
            "after a NOP-Out with ITT 0xffffffff the session did not go on: a ping got "
            f"{type(alive).__name__ if alive is not None else ffp.no_answer}",
            sent=[req, ping],
            received=ffp.shown(resp, alive) if resp is not None else ffp.shown(alive),
        )


@spec(
    "FullFeature.Sequencing.StatSNIncrements", "RFC 7143 4.2.2.2", requirements=["R7143-4.2.2.2-1"]
)
async def test_statsn_increments(target: Any) -> None:
    """Consecutive status-bearing responses carry StatSN, StatSN + 1, ..."""
    async with full_feature(target) as ffp:
        seen, sent, received = [], [], []
        for _ in range(4):
            req, resp = await ffp.nop(b"")
            sent.append(req)
            if resp is not None:
                received.append(resp)
                seen.append(resp.statsn)
        require(
            len(seen) == 4,
            "R7143-11.18-1",
            f"not every ping was answered: {ffp.no_answer}",
            sent=sent,
            received=[*received, *ffp.shown(None)],
        )
        steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(seen)]
        require(
            all(s == 1 for s in steps),
            "R7143-4.2.2.2-1",
            f"StatSN sequence {seen} does not advance by one",
            sent=sent,
            received=received,
        )


@spec(
    "FullFeature.Sequencing.ExpCmdSNAdvances",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-4.2.2.1-4", "R7143-4.2.2.1-5"],
)
async def test_expcmdsn_advances(target: Any) -> None:
    """A non-immediate command advances ExpCmdSN; an immediate one does not; MaxCmdSN >= ExpCmdSN - 1."""
    async with full_feature(target) as ffp:
        start = ffp.cmdsn
        req1, r1 = await ffp.nop(b"", immediate=False)
        require(
            r1 is not None and r1.expcmdsn == (start + 1) & 0xFFFFFFFF,
            "R7143-4.2.2.1-4",
            f"after CmdSN {start} ExpCmdSN is {getattr(r1, 'expcmdsn', None)}",
            sent=[req1],
            received=ffp.shown(r1),
        )
        req2, r2 = await ffp.nop(b"", immediate=True)
        require(
            r2 is not None and r2.expcmdsn == (start + 1) & 0xFFFFFFFF,
            "R7143-4.2.2.1-5",
            f"an immediate NOP moved ExpCmdSN to {getattr(r2, 'expcmdsn', None)}",
            sent=[req2],
            received=ffp.shown(r2),
        )
        for r in (r1, r2):
            require(
                not serial_lt(r.maxcmdsn, (r.expcmdsn - 1) & 0xFFFFFFFF),
                "R7143-4.2.2.1-4",
                f"MaxCmdSN {r.maxcmdsn} < ExpCmdSN - 1 ({r.expcmdsn})",
                sent=[req1, req2],
                received=[r1, r2],
            )


@spec(
    "FullFeature.Sequencing.OutOfWindowIgnored",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-4.2.2.1-2"],
)
async def test_out_of_window_command_ignored(target: Any) -> None:
    """A non-immediate command with CmdSN beyond MaxCmdSN is ignored, and the session goes on."""
    async with full_feature(target) as ffp:
        _, r = await ffp.nop(b"")
        far = (r.maxcmdsn + 1000) & 0xFFFFFFFF
        bad = P.NopOut(
            immediate=False, itt=0x4444, ttt=0xFFFFFFFF, cmdsn=far, expstatsn=ffp.expstatsn
        )
        await ffp.send(bad)
        answer = await ffp.recv(timeout=2)
        require(
            not (isinstance(answer, P.NopIn) and answer.itt == 0x4444),
            "R7143-4.2.2.1-2",
            "a command outside the CmdSN window was executed",
            sent=[bad],
            received=ffp.shown(answer),
        )
        req, ok = await ffp.nop(b"x")
        require(
            isinstance(ok, P.NopIn),
            "R7143-4.2.2.1-2",
            "the session did not survive an out-of-window command",
            sent=[bad, req],
            received=ffp.shown(ok),
        )


@spec(
    "FullFeature.Sequencing.DeliveredInCmdSNOrder",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-4.2.2.1-1"],
)
async def test_commands_reordered(target: Any) -> None:
    """CmdSN n+1 sent before n: both complete, and ExpCmdSN ends past both."""
    async with full_feature(target) as ffp:
        await _reordered_pair(ffp)


@spec(
    "FullFeature.Sequencing.DeliveredInCmdSNOrderAcrossWrap",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-4.2.2.1-1"],
)
async def test_commands_reordered_across_wrap(target: Any) -> None:
    """CmdSN 0 sent before CmdSN 0xffffffff: 0 lies inside the window in serial
    arithmetic, so the target holds it until 0xffffffff arrives, then both complete in
    CmdSN order."""
    async with full_feature(target, cmdsn=WRAP_START) as ffp:
        for _ in range(WRAP_COMMANDS):
            if ffp.cmdsn == 0xFFFFFFFF:
                break
            req, r = await ffp.nop(b"", immediate=False)
            require(
                isinstance(r, P.NopIn),
                "R7143-4.2.2.1-2",
                f"the NOP-Out with CmdSN {req.cmdsn:#010x} got "
                f"{type(r).__name__ if r is not None else ffp.no_answer}",
                sent=[req],
                received=ffp.shown(r),
            )
        require(ffp.cmdsn == 0xFFFFFFFF, "harness", f"CmdSN is {ffp.cmdsn:#010x}, not 0xffffffff")
        await _reordered_pair(ffp)


async def _reordered_pair(ffp: FullFeature) -> None:
    """Send TEST UNIT READYs with CmdSN n+1 then n; both complete, n first."""
    n = ffp.take_cmdsn()
    m = ffp.take_cmdsn()
    second = P.ScsiCommand(
        final=True,
        lun=0,
        itt=0x501,
        cmdsn=m,
        expstatsn=ffp.expstatsn,
        cdb=cdb.test_unit_ready(),
    )
    first = P.ScsiCommand(
        final=True,
        lun=0,
        itt=0x500,
        cmdsn=n,
        expstatsn=ffp.expstatsn,
        cdb=cdb.test_unit_ready(),
    )
    await ffp.send(second)
    await ffp.send(first)
    got = []
    for _ in range(4):
        p = await ffp.recv(timeout=5)
        if p is None:
            break
        got.append(p)
        if len([x for x in got if isinstance(x, P.ScsiResponse)]) == 2:
            break
    responses = [p for p in got if isinstance(p, P.ScsiResponse)]
    require(
        sorted(r.itt for r in responses) == [0x500, 0x501],
        "R7143-4.2.2.1-1",
        "both commands must complete when the gap is filled",
        sent=[second, first],
        received=[*got, *ffp.shown(None)],
    )
    require(
        responses[-1].expcmdsn == (m + 1) & 0xFFFFFFFF,
        "R7143-4.2.2.1-1",
        f"ExpCmdSN {responses[-1].expcmdsn} after CmdSN {n}, {m}",
        sent=[second, first],
        received=got,
    )
    if responses[0].itt == 0x501:
        raise violation(
            "R7143-4.2.2.1-1",
            "CmdSN n+1 completed before CmdSN n arrived",
            sent=[second, first],
            received=got,
        )


@spec(
    "FullFeature.Sequencing.StatSNContinuesLogin",
    "RFC 7143 4.2.2.2",
    requirements=["R7143-4.2.2.2-1"],
)
async def test_statsn_continues_login(target: Any) -> None:
    """StatSN counts from the first Login Response on: each further Login Response, then
    the first full-feature response, carries the previous StatSN + 1."""
    async with target.raw() as raw:
        probe = await target.login(raw)
        ffp = FullFeature(raw, probe)
        logins = [p for p in probe.received if isinstance(p, P.LoginResponse)]
        last_login = logins[-1]
        numbers = [p.statsn for p in logins]
        require(
            all((b - a) & 0xFFFFFFFF == 1 for a, b in itertools.pairwise(numbers)),
            "R7143-4.2.2.2-1",
            f"the Login Responses of one login carry StatSN {numbers}; each response "
            "after the first carries the previous one's StatSN + 1",
            sent=probe.sent,
            received=logins,
        )
        req, resp = await ffp.nop(b"")
        require(
            isinstance(resp, P.NopIn),
            "R7143-11.18-1",
            f"the first ping was not answered: {ffp.no_answer}",
            sent=[req],
            received=ffp.shown(resp),
        )
        require(
            resp.statsn == (last_login.statsn + 1) & 0xFFFFFFFF,
            "R7143-4.2.2.2-1",
            f"the final Login Response carried StatSN {last_login.statsn}, the first "
            f"full-feature response StatSN {resp.statsn}; it continues the login's numbering",
            sent=[*probe.sent, req],
            received=[last_login, resp],
        )


@spec(
    "FullFeature.Sequencing.ImmediateCommandKeepsExpCmdSN",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-4.2.2.1-5"],
)
async def test_immediate_command_keeps_expcmdsn(target: Any) -> None:
    """An immediate SCSI command (TEST UNIT READY) carries the current CmdSN without
    advancing it: ExpCmdSN stays where the last non-immediate command left it, in the
    command's answer (status or Reject) and in the next NOP-In."""
    async with full_feature(target) as ffp:
        before = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        expected = ffp.cmdsn
        require(
            before.response is not None and before.response.expcmdsn == expected,
            "R7143-4.2.2.1-4",
            f"after a non-immediate command ExpCmdSN is "
            f"{getattr(before.response, 'expcmdsn', None)}, not {expected}",
            sent=before.sent,
            received=before.shown(),
        )
        imm = await ffp.command(cdb.test_unit_ready(), lun=target.lun, immediate=True)
        # its status, or a Reject (a target need not run it at once): both carry ExpCmdSN
        answer = imm.response
        if answer is None:
            answer = next((p for p in imm.received if isinstance(p, P.Reject)), None)
        require(
            answer is not None,
            "R7143-4.2.2.1-5",
            f"an immediate TEST UNIT READY got neither status nor Reject: {imm.outcome}",
            sent=imm.sent,
            received=imm.shown(),
        )
        req, nop = await ffp.nop(b"")
        got = [answer.expcmdsn, getattr(nop, "expcmdsn", None)]
        require(
            got == [expected, expected],
            "R7143-4.2.2.1-5",
            f"an immediate command sent with CmdSN {expected} moved ExpCmdSN: its status "
            f"and the next NOP-In report {got}, not {expected}",
            sent=[*imm.sent, req],
            received=[*imm.shown(), *ffp.shown(nop)],
        )


@spec(
    "FullFeature.Sequencing.ExpCmdSNInTextResponse",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-4.2.2.1-4"],
)
async def test_expcmdsn_in_text_response(target: Any) -> None:
    """A non-immediate Text Request (SendTargets=All, Discovery session) advances ExpCmdSN:
    its Text Response reports the request's CmdSN + 1."""
    async with target.raw() as raw:
        probe = target.probe(raw, session_type="Discovery", target_name=None)
        await probe.to_full_feature([])
        require(
            probe.in_full_feature,
            "R7143-13.21-1",
            "discovery login failed",
            sent=probe.sent,
            received=probe.received,
        )
        ffp = FullFeature(raw, probe)
        req = P.TextRequest(
            final=True,
            itt=ffp.next_itt(),
            cmdsn=ffp.take_cmdsn(),
            expstatsn=ffp.expstatsn,
            data=b"SendTargets=All\0",
        )
        reply = await ffp.exchange(req)
        require(
            isinstance(reply.pdu, P.TextResponse),
            "R7143-13.3-1",
            "SendTargets=All in a Discovery session got "
            f"{type(reply.pdu).__name__ if reply.pdu is not None else reply.missing()}",
            sent=[req],
            received=reply.shown(),
        )
        require(
            reply.pdu.expcmdsn == ffp.cmdsn,
            "R7143-4.2.2.1-4",
            f"after a Text Request with CmdSN {req.cmdsn} the Text Response reports "
            f"ExpCmdSN {reply.pdu.expcmdsn}, not {ffp.cmdsn}",
            sent=[req],
            received=[reply.pdu],
        )


@spec(
    "FullFeature.Sequencing.StatSNAcrossReject",
    "RFC 7143 4.2.2.2",
    "RFC 7143 11.17.3",
    requirements=["R7143-4.2.2.2-1"],
)
async def test_statsn_across_reject(target: Any) -> None:
    """A Reject takes a StatSN of its own (11.17.3: StatSN is advanced after a Reject):
    ping, unknown opcode (0x1f) answered with a
    Reject, ping carry StatSN n, n + 1, n + 2. A target that answers the unknown opcode
    otherwise (a close) leaves nothing to number: skipped."""
    async with full_feature(target) as ffp:
        ping1, first = await ffp.nop(b"")
        bogus = P.UnknownPDU(
            opcode=0x1F,
            bhs=bytes([0x1F | 0x40, 0x80]) + bytes(14) + (0x9999).to_bytes(4, "big") + bytes(28),
        )
        await ffp.send(bogus)
        reject = await ffp.recv()
        if not isinstance(first, P.NopIn) or not isinstance(reject, P.Reject):
            pytest.skip(
                "no ping answer then Reject to number: "
                f"{type(first).__name__}, {type(reject).__name__ if reject else ffp.no_answer}"
            )
        ping2, last = await ffp.nop(b"")
        got = [first.statsn, reject.statsn, getattr(last, "statsn", None)]
        want = [first.statsn, (first.statsn + 1) & 0xFFFFFFFF, (first.statsn + 2) & 0xFFFFFFFF]
        require(
            got == want,
            "R7143-4.2.2.2-1",
            f"ping, Reject, ping carry StatSN {got}, not {want}: the Reject's StatSN is "
            "consumed like any status's",
            sent=[ping1, bogus, ping2],
            received=[first, reject, *ffp.shown(last)],
        )


@spec(
    "FullFeature.Sequencing.ClosedWindowAtLogin",
    "RFC 7143 4.2.2.1",
    "RFC 7143 11.4.11",
    requirements=["R7143-4.2.2.1-1", "R7143-4.2.2.1-2", "R7143-11.4-5"],
)
async def test_closed_window_at_login(target: Any) -> None:
    """A target whose final Login Response closes the command window (MaxCmdSN =
    ExpCmdSN - 1) executes no command before a PDU of its own opens the window: a
    command sent into the closed window is ignored (RFC 7143 4.2.2.1), and a window the
    target opens later is announced by a NOP-In when nothing else is pending (11.4.11).
    A target that opens the window at login executes that first command, which lies
    inside the window (4.2.2.1: commands are delivered in CmdSN order)."""
    async with full_feature(target) as ffp:
        final = ffp.probe.steps[-1].response
        require(
            isinstance(final, P.LoginResponse),
            "R7143-4.2.2.1-2",
            "no final Login Response to read the command window from",
            sent=ffp.probe.sent,
            received=ffp.probe.received,
        )
        if not serial_lt(final.maxcmdsn, final.expcmdsn):
            out = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
            require(
                isinstance(out.response, P.ScsiResponse),
                "R7143-4.2.2.1-1",
                f"the final Login Response opened the window (ExpCmdSN {final.expcmdsn}, "
                f"MaxCmdSN {final.maxcmdsn}), yet TEST UNIT READY inside it got no "
                f"status: {out.missing() or out.outcome}",
                sent=out.sent,
                received=out.shown(),
            )
            return
        got = await ffp.drain(1.0)
        if any(not serial_lt(getattr(p, "maxcmdsn", final.maxcmdsn), final.expcmdsn) for p in got):
            return  # the target opened the window itself before any command was sent
        cmdsn = ffp.take_cmdsn()
        tur = P.ScsiCommand(
            final=True,
            attr=1,
            lun=P.lun_to_field(target.lun),
            itt=ffp.next_itt(),
            expected_data_transfer_length=0,
            cmdsn=cmdsn,
            expstatsn=ffp.expstatsn,
            cdb=cdb.test_unit_ready(),
        )
        await ffp.send(tur)
        after = await ffp.drain(2.0)
        opened = False
        for p in after:
            if isinstance(p, P.ScsiResponse) and p.itt == tur.itt and not opened:
                raise violation(
                    "R7143-11.4-5",
                    f"the final Login Response closed the window (ExpCmdSN {final.expcmdsn}, "
                    f"MaxCmdSN {final.maxcmdsn}), no PDU opened it, and TEST UNIT READY with "
                    f"CmdSN {cmdsn} was executed: either a command outside the window was not "
                    "ignored (4.2.2.1), or the window opened without the NOP-In that must "
                    "announce it (11.4.11)",
                    sent=[tur],
                    received=[final, *got, *after],
                )
            if not serial_lt(getattr(p, "maxcmdsn", final.maxcmdsn), final.expcmdsn):
                opened = True


@spec(
    "FullFeature.Sequencing.CmdSNWraparound",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-4.2.2.1-2", "R7143-4.2.2.1-4"],
)
async def test_cmdsn_wraparound(target: Any) -> None:
    """A session whose CmdSN starts just below 2**32 (the initiator picks it at login)
    goes on across the wrap: every non-immediate command is in the window in serial
    arithmetic, is answered, and ExpCmdSN follows it through 0xffffffff to 0, with
    MaxCmdSN never below ExpCmdSN - 1."""
    async with full_feature(target, cmdsn=WRAP_START) as ffp:
        crossed = False
        for _ in range(WRAP_COMMANDS):
            sn = ffp.cmdsn
            req, r = await ffp.nop(b"", immediate=False)
            crossed = crossed or sn == 0
            require(
                isinstance(r, P.NopIn) and r.itt == req.itt,
                "R7143-4.2.2.1-2",
                f"the NOP-Out with CmdSN {sn:#010x}, inside the window across the wrap at "
                f"2**32, got {type(r).__name__ if r is not None else ffp.no_answer}",
                sent=[req],
                received=ffp.shown(r),
            )
            require(
                r.expcmdsn == (sn + 1) & 0xFFFFFFFF,
                "R7143-4.2.2.1-4",
                f"after CmdSN {sn:#010x} ExpCmdSN is {r.expcmdsn:#010x} "
                f"(expected {(sn + 1) & 0xFFFFFFFF:#010x})",
                sent=[req],
                received=[r],
            )
            require(
                not serial_lt(r.maxcmdsn, (r.expcmdsn - 1) & 0xFFFFFFFF),
                "R7143-4.2.2.1-4",
                f"MaxCmdSN {r.maxcmdsn:#010x} < ExpCmdSN - 1 ({r.expcmdsn:#010x}) in serial "
                "arithmetic across the wrap",
                sent=[req],
                received=[r],
            )
        require(crossed, "harness", f"the CmdSN never reached 0 from {WRAP_START:#010x}")


async def _window_nop_in(ffp: FullFeature) -> Any:
    """The next NOP-In that answers nothing (ITT and TTT 0xffffffff), or None."""
    for _ in range(8):
        p = await ffp.recv(timeout=3.0)
        if p is None:
            return None
        if isinstance(p, P.NopIn) and p.itt == 0xFFFFFFFF and p.ttt == 0xFFFFFFFF:
            return p
    return None


@spec(
    "FullFeature.Sequencing.WindowClosedThenReopened",
    "RFC 7143 4.2.2.1",
    "RFC 7143 11.4.11",
    requirements=["R7143-11.4-5", "R7143-4.2.2.1-2", "R7143-11.18-1"],
    needs=("dedicated_instance",),
)
async def test_window_closed_then_reopened(target: Any) -> None:
    """A target that closes its command window mid-session (a dedicated reference
    target, through its test API) announces MaxCmdSN = ExpCmdSN - 1 in a NOP-In,
    ignores a non-immediate command sent into the closed window (a NOP-Out, and a
    TEST UNIT READY with the same CmdSN, ExpCmdSN: SCSI commands too), still answers an
    immediate NOP-Out, announces the reopened window in a NOP-In, and then executes
    the command sent again with the same CmdSN."""
    with target.dedicated() as inst:
        async with full_feature(inst) as ffp:
            tsih = ffp.probe.tsih
            inst.set_cmd_window(tsih, 0)
            closed = await _window_nop_in(ffp)
            require(
                closed is not None and closed.maxcmdsn == (closed.expcmdsn - 1) & 0xFFFFFFFF,
                "R7143-11.4-5",
                "after closing its window the target sent no NOP-In carrying MaxCmdSN = "
                f"ExpCmdSN - 1: {closed if closed is not None else ffp.no_answer}",
                received=ffp.shown(closed),
            )
            sn = ffp.cmdsn
            held = P.NopOut(itt=0x7001, ttt=0xFFFFFFFF, cmdsn=sn, expstatsn=ffp.expstatsn)
            await ffp.send(held)
            tur = P.ScsiCommand(final=True, lun=0, itt=0x7003, cmdsn=sn,
                                expstatsn=ffp.expstatsn, cdb=cdb.test_unit_ready())  # fmt: skip
            await ffp.send(tur)
            early = await ffp.drain(1.0)
            require(
                not any(isinstance(p, P.NopIn) and p.itt == held.itt for p in early),
                "R7143-4.2.2.1-2",
                f"the NOP-Out with CmdSN {sn}, outside the closed window "
                f"(MaxCmdSN {closed.maxcmdsn}), was answered",
                sent=[held],
                received=[closed, *early],
            )
            require(
                not any(isinstance(p, P.ScsiResponse) and p.itt == tur.itt for p in early),
                "R7143-4.2.2.1-2",
                f"the TEST UNIT READY with CmdSN {sn}, outside the closed window "
                f"(MaxCmdSN {closed.maxcmdsn}), was executed",
                sent=[held, tur],
                received=[closed, *early],
            )
            ping, pong = await ffp.nop(b"closed", immediate=True)
            require(
                isinstance(pong, P.NopIn) and pong.itt == ping.itt and pong.data == b"closed",
                "R7143-11.18-1",
                "an immediate NOP-Out in the closed window was not answered: "
                f"{pong if pong is not None else ffp.no_answer}",
                sent=[ping],
                received=ffp.shown(pong),
            )
            inst.set_cmd_window(tsih, 8)
            opened = await _window_nop_in(ffp)
            require(
                opened is not None and not serial_lt(opened.maxcmdsn, sn),
                "R7143-11.4-5",
                "after opening its window the target sent no NOP-In carrying the new "
                f"MaxCmdSN: {opened if opened is not None else ffp.no_answer}",
                received=ffp.shown(opened),
            )
            again = P.NopOut(itt=0x7002, ttt=0xFFFFFFFF, cmdsn=sn, expstatsn=ffp.expstatsn)
            reply = await ffp.exchange(again)
            require(
                isinstance(reply.pdu, P.NopIn),
                "R7143-4.2.2.1-2",
                f"the NOP-Out sent again with CmdSN {sn} inside the reopened window got "
                f"{type(reply.pdu).__name__ if reply.pdu is not None else reply.missing()}",
                sent=[held, again],
                received=[opened, *reply.shown()],
            )
