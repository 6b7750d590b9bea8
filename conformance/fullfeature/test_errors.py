"""FullFeature.Errors: what a target does with requests it must refuse or correct
(RFC 7143 7.11, 11.4.5, 11.7, 11.8, 13.11, 13.14; SPC-4 6.6, 6.39).

A LUN the target does not provide is answered the SCSI way (CHECK CONDITION, LOGICAL
UNIT NOT SUPPORTED; INQUIRY and REQUEST SENSE with GOOD status); residuals report a
write that carried more or less than its CDB asks for; and data the target never
asked for (a Data-Out with a tag it never issued, unsolicited data the keys forbid)
is never stored as a command's data.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.errors import TransportError
from iscsi_conformance.harness.probe import FullFeature, Outcome, full_feature
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

NONE_TAG = 0xFFFFFFFF
BLOCK = 512
SOLICITED_ONLY = [("ImmediateData", "No"), ("InitialR2T", "Yes")]
LBA_BASE = 24576  # a region of the LUN the other tests of this file write to


def _sense_of(resp: Any) -> tuple[int | None, tuple[int, int] | None]:
    """(sense key, (ASC, ASCQ)) from raw sense bytes, fixed or descriptor format."""
    s = resp
    if len(s) < 3:
        return None, None
    if (s[0] & 0x7F) in (0x72, 0x73):
        return s[1] & 0x0F, (s[2], s[3]) if len(s) >= 4 else None
    return s[2] & 0x0F, (s[12], s[13]) if len(s) >= 14 else None


async def _unmapped_lun(ffp: FullFeature, target: Any) -> int:
    """A LUN that REPORT LUNS does not list."""
    out = await ffp.command(cdb.report_luns(4096), read_length=4096, lun=target.lun)
    listed = (
        {P.field_to_lun(f) for f in cdb.parse_report_luns(out.data)}
        if out.status == 0 and out.data
        else set()
    )
    for candidate in (200, 201, 137, 99):
        if candidate not in listed:
            return candidate
    return 255


async def _drain(ffp: FullFeature, seconds: float) -> list[Any]:
    got = []
    try:
        while (p := await ffp.recv(timeout=seconds)) is not None:
            got.append(p)
    except (TransportError, OSError):
        pass
    return got


async def _read_back(
    target: Any, lba: int, blocks: int, requirement: str, sent: list[Any]
) -> bytes:
    """The blocks as a fresh session sees them (the old one may be gone)."""
    try:
        async with full_feature(target) as fresh:
            out = await fresh.command(
                cdb.read10(lba, blocks), read_length=blocks * BLOCK, lun=target.lun
            )
            return out.data if out.status == 0 else b""
    except (TransportError, OSError) as exc:
        raise violation(
            requirement,
            f"the target accepts no new session after the stray data (did it crash?): {exc}",
            sent=sent,
        ) from None


async def _send_quietly(ffp: FullFeature, pdu: Any) -> bool:
    """Send ``pdu``; False if the target has already dropped the connection."""
    try:
        await ffp.send(pdu)
    except (TransportError, OSError):
        return False
    return True


async def _closes(ffp: FullFeature, seconds: float) -> bool:
    """True if the target ends the connection within ``seconds`` (what it sends
    meanwhile is read and dropped)."""
    try:
        while await ffp.recv(timeout=seconds) is not None:
            pass
    except (TransportError, OSError):
        return True
    return False


async def _ping(ffp: FullFeature) -> tuple[Any, Any]:
    """A ping that reports a dropped connection as no answer."""
    try:
        return await ffp.nop(b"alive")
    except (TransportError, OSError):
        return None, None


# --------------------------------------------------------------------------- LUNs


@spec(
    "FullFeature.Errors.UnmappedLunCheckCondition",
    ("SAM-3", "5.9.4", "MUST", "target"),
    ("RFC 7143", "11.4.7", "INFORMATIONAL", "target"),
    requirements=["RSPC4-6.39-2", "R7143-11.4-3"],
)
async def test_unmapped_lun_check_condition(target: Any) -> None:
    """TEST UNIT READY to a LUN the target does not provide ends in CHECK CONDITION,
    ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h): SAM-3 5.9.4, incorrect
    logical unit selection (shall; RSPC4-6.39-2 says where the text was read)."""
    async with full_feature(target) as ffp:
        lun = await _unmapped_lun(ffp, target)
        out = await ffp.command(cdb.test_unit_ready(), lun=lun)
        require(
            out.status == 0x02,
            "RSPC4-6.39-2",
            f"TEST UNIT READY to unmapped LUN {lun} ended with status {out.status!r}, "
            "expected CHECK CONDITION",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            out.sense_key == 0x05 and out.asc == (0x25, 0x00),
            "RSPC4-6.39-2",
            f"sense key {out.sense_key!r}, ASC/ASCQ {out.asc!r}; expected ILLEGAL REQUEST, "
            "LOGICAL UNIT NOT SUPPORTED (5, 25h/00h)",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Errors.InquiryUnmappedLun",
    "SPC-4 6.6",
    requirements=["RSPC4-6.6-3"],
)
async def test_inquiry_unmapped_lun(target: Any) -> None:
    """INQUIRY to a LUN the target does not provide returns GOOD with a peripheral
    qualifier saying no device is there (011b, type 1Fh; or 001b)."""
    async with full_feature(target) as ffp:
        lun = await _unmapped_lun(ffp, target)
        out = await ffp.command(cdb.inquiry(alloc=96), read_length=96, lun=lun)
        require(
            out.status == 0 and out.data,
            "RSPC4-6.6-3",
            f"INQUIRY to unmapped LUN {lun} ended with status {out.status!r} "
            f"({len(out.data)} bytes); INQUIRY must succeed there",
            sent=out.sent,
            received=out.shown(),
        )
        qualifier, device_type = out.data[0] >> 5, out.data[0] & 0x1F
        require(
            (qualifier, device_type) == (3, 0x1F) or qualifier == 1,
            "RSPC4-6.6-3",
            f"peripheral qualifier {qualifier:03b}b, type {device_type:#x} for unmapped LUN "
            f"{lun}; expected 011b/1Fh (no logical unit)",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Errors.RequestSenseUnmappedLun",
    "SPC-4 6.39",
    requirements=["RSPC4-6.39-1"],
)
async def test_request_sense_unmapped_lun(target: Any) -> None:
    """REQUEST SENSE to a LUN the target does not provide returns GOOD with sense data
    ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED."""
    async with full_feature(target) as ffp:
        lun = await _unmapped_lun(ffp, target)
        out = await ffp.command(cdb.request_sense(252), read_length=252, lun=lun)
        require(
            out.status == 0,
            "RSPC4-6.39-1",
            f"REQUEST SENSE to unmapped LUN {lun} ended with status {out.status!r}, expected GOOD",
            sent=out.sent,
            received=out.shown(),
        )
        key, asc = _sense_of(out.data)
        require(
            key == 0x05 and asc == (0x25, 0x00),
            "RSPC4-6.39-1",
            f"returned sense key {key!r}, ASC/ASCQ {asc!r}; expected ILLEGAL REQUEST, "
            "LOGICAL UNIT NOT SUPPORTED",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Errors.RequestSenseNothingPending",
    "SPC-4 6.39",
    requirements=["RSPC4-6.39-3"],
)
async def test_request_sense_nothing_pending(target: Any) -> None:
    """REQUEST SENSE with no pending condition (unit attentions cleared) returns GOOD
    and NO SENSE in fixed (70h) or descriptor (72h) format."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.request_sense(252), read_length=252, lun=target.lun)
        require(
            out.status == 0 and len(out.data) >= 8,
            "RSPC4-6.39-3",
            f"REQUEST SENSE ended with status {out.status!r}, {len(out.data)} bytes",
            sent=out.sent,
            received=out.shown(),
        )
        code = out.data[0] & 0x7F
        key, _ = _sense_of(out.data)
        require(
            code in (0x70, 0x72) and key == 0,
            "RSPC4-6.39-3",
            f"response code {code:#x}, sense key {key!r}; expected 70h/72h and NO SENSE",
            sent=out.sent,
            received=out.shown(),
        )


# --------------------------------------------------------------------------- residuals


@spec(
    "FullFeature.Errors.WriteUnderflow",
    "RFC 7143 11.4.5",
    requirements=["R7143-11.4-1", "RSBC3-5.16-1"],
    dataloss=True,
)
async def test_write_underflow(target: Any) -> None:
    """WRITE(10) of one block with ExpectedDataTransferLength of two: U=1 and residual
    512 (the CDB needs only 512 of the 1024 bytes). The target may carry the write out
    (GOOD: the block then holds the first 512 bytes) or refuse the mismatched command
    with CHECK CONDITION: RFC 7143 11.4.5 binds the U bit and the residual, not the
    status, and a length mismatch is one a device server may fail (the IPS / T10 thread
    "Data Out residual overflow/underflow handling", September 2012, where an RFC 7143
    author calls CHECK CONDITION appropriate). A command that gets no response fails."""
    target.require_dataloss()
    lba = LBA_BASE
    async with full_feature(target, keys=SOLICITED_ONLY) as ffp:
        payload = os.urandom(2 * BLOCK)
        out = await ffp.command(cdb.write10(lba, 1), data_out=payload, lun=target.lun)
        r = out.response
        require(
            r is not None and out.status in (0x00, 0x02),
            "R7143-11.4-1",
            f"the write ended with status {out.status!r} (GOOD or CHECK CONDITION expected)",
            sent=out.sent,
            received=out.shown(),
        )
        if out.status == 0x02:
            # Refused: nothing to read back; a residual, if flagged, must be the right one.
            require(
                not r.overflow and (not r.underflow or r.residual_count == BLOCK),
                "R7143-11.4-1",
                f"CHECK CONDITION with U={int(r.underflow)} O={int(r.overflow)} residual "
                f"{r.residual_count}; a residual, if flagged, is U with {BLOCK}",
                sent=out.sent,
                received=out.shown(),
            )
            return
        require(
            r.underflow and not r.overflow and r.residual_count == BLOCK,
            "R7143-11.4-1",
            f"U={int(r.underflow)} O={int(r.overflow)} residual {r.residual_count}; expected "
            f"U=1, residual {BLOCK}",
            sent=out.sent,
            received=out.shown(),
        )
        back = await ffp.command(cdb.read10(lba, 1), read_length=BLOCK, lun=target.lun)
        require(
            back.data == payload[:BLOCK],
            "RSBC3-5.16-1",
            "the block does not hold the first 512 bytes of the write",
            sent=back.sent,
            received=back.shown(),
        )


@spec(
    "FullFeature.Errors.WriteOverflow",
    "RFC 7143 11.4.5",
    "RFC 7143 11.8",
    requirements=["R7143-11.4-2"],
    dataloss=True,
)
async def test_write_overflow(target: Any) -> None:
    """WRITE(10) of two blocks with ExpectedDataTransferLength of one: the target asks
    for no byte beyond 512, and ends with CHECK CONDITION or reports O=1, residual 512."""
    target.require_dataloss()
    async with full_feature(target, keys=SOLICITED_ONLY) as ffp:
        payload = os.urandom(BLOCK)
        out = await ffp.command(
            cdb.write10(LBA_BASE + 8, 2), data_out=payload, expected_length=BLOCK, lun=target.lun
        )
        beyond = [r for r in out.r2ts if r.buffer_offset + r.desired_data_transfer_length > BLOCK]
        require(
            not beyond,
            "R7143-11.4-2",
            "an R2T asks for data beyond ExpectedDataTransferLength 512",
            sent=out.sent,
            received=out.shown(),
        )
        r = out.response
        require(
            r is not None,
            "R7143-11.4-2",
            "no status for the write",
            sent=out.sent,
            received=out.shown(),
        )
        if out.status == 0x02:
            return
        require(
            r.overflow and r.residual_count == BLOCK,
            "R7143-11.4-2",
            f"status {out.status!r} with O={int(r.overflow)}, residual {r.residual_count}; "
            f"expected CHECK CONDITION or O=1 with residual {BLOCK}",
            sent=out.sent,
            received=out.shown(),
        )


# --------------------------------------------------------------------------- stray data


async def _write_command(
    ffp: FullFeature, lun: int, lba: int, blocks: int, data: bytes = b""
) -> Any:
    cmd = P.ScsiCommand(
        final=True,
        write=True,
        attr=1,
        lun=P.lun_to_field(lun),
        itt=ffp.next_itt(),
        expected_data_transfer_length=blocks * BLOCK,
        cmdsn=ffp.take_cmdsn(),
        expstatsn=ffp.expstatsn,
        cdb=cdb.write10(lba, blocks),
        data=data,
    )
    await ffp.send(cmd)
    return cmd


async def _finish_write(
    ffp: FullFeature, cmd: Any, real: bytes, sent: list[Any], received: list[Any]
) -> tuple[Any, bool]:
    """Answer the command's R2Ts with ``real``; returns (the status PDU or None, closed)."""
    status = await ffp.answer_r2ts(cmd, real, sent=sent, received=received)
    gone = ffp.no_answer if status is None else None
    return status, gone is not None and gone.outcome is Outcome.CLOSED


@contextlib.asynccontextmanager
async def _solicited_session(target: Any) -> Any:
    target.require_dataloss()
    async with full_feature(target, keys=SOLICITED_ONLY) as ffp:
        yield ffp


@spec(
    "FullFeature.Errors.DataOutUnknownTtt",
    "RFC 7143 11.7.4",
    "RFC 7143 11.8",
    level="INFORMATIONAL",
    requirements=["R7143-11.7-6", "RSBC3-5.16-1"],
    dataloss=True,
)
async def test_data_out_with_unknown_ttt(target: Any) -> None:
    """A Data-Out carrying a Target Transfer Tag the target never issued is not taken as
    the write's data: after the real R2T is answered the block holds the real data."""
    lba = LBA_BASE + 32
    real, junk = os.urandom(BLOCK), os.urandom(BLOCK)
    async with _solicited_session(target) as ffp:
        cmd = await _write_command(ffp, target.lun, lba, 1)
        sent, received = [cmd], []
        r2t = await ffp.recv()
        if r2t is not None:
            received.append(r2t)
        require(
            isinstance(r2t, P.R2T) and r2t.itt == cmd.itt,
            "R7143-11.7-6",
            "no R2T for a write with ImmediateData=No and InitialR2T=Yes",
            sent=sent,
            received=received,
        )
        bogus = P.ScsiDataOut(
            final=True,
            lun=cmd.lun,
            itt=cmd.itt,
            ttt=r2t.ttt ^ 0x5A5A0001,
            expstatsn=ffp.expstatsn,
            datasn=0,
            buffer_offset=0,
            data=junk,
        )
        await _send_quietly(ffp, bogus)
        sent.append(bogus)
        sent += await ffp.answer_r2t(cmd, r2t, real)
        await _finish_write(ffp, cmd, real, sent, received)
    stored = await _read_back(target, lba, 1, "R7143-11.7-6", sent)
    require(
        stored != junk,
        "R7143-11.7-6",
        "the data of a Data-Out with a Target Transfer Tag the target never issued was stored",
        sent=sent,
        received=received,
    )


@spec(
    "FullFeature.Errors.DataOutUnknownTttSessionGoesOn",
    ("RFC 7143", "7.3", "INFORMATIONAL", "target"),
    "RFC 7143 11.17",
    level="SHOULD",
    requirements=["R7143-7.11-1"],
    dataloss=True,
)
async def test_data_out_with_unknown_ttt_session_goes_on(target: Any) -> None:
    """After a Data-Out with an unknown Target Transfer Tag, the target keeps the
    connection: the real Data-Out completes the write with GOOD status."""
    real = os.urandom(BLOCK)
    async with _solicited_session(target) as ffp:
        cmd = await _write_command(ffp, target.lun, LBA_BASE + 40, 1)
        sent, received = [cmd], []
        r2t = await ffp.recv()
        received += [r2t] if r2t else []
        require(
            isinstance(r2t, P.R2T),
            "R7143-7.11-1",
            "no R2T for the write",
            sent=sent,
            received=received,
        )
        bogus = P.ScsiDataOut(
            final=True,
            lun=cmd.lun,
            itt=cmd.itt,
            ttt=r2t.ttt ^ 0x5A5A0001,
            expstatsn=ffp.expstatsn,
            datasn=0,
            buffer_offset=0,
            data=os.urandom(BLOCK),
        )
        await _send_quietly(ffp, bogus)
        sent.append(bogus)
        sent += await ffp.answer_r2t(cmd, r2t, real)
        status, closed = await _finish_write(ffp, cmd, real, sent, received)
        require(
            not closed,
            "R7143-7.11-1",
            "the target dropped the connection over a Data-Out with an unknown TTT",
            sent=sent,
            received=received,
        )
        require(
            status is not None and status.status == 0,
            "R7143-7.11-1",
            f"the write ended with {status!r} after the stray Data-Out was rejected",
            sent=sent,
            received=received,
        )


@spec(
    "FullFeature.Errors.DataOutUnknownItt",
    ("RFC 7143", "7.3", "INFORMATIONAL", "target"),
    ("RFC 7143", "11.7.4", "INFORMATIONAL", "target"),
    level="SHOULD",
    requirements=["R7143-7.11-1", "R7143-11.7-6"],
)
async def test_data_out_for_unknown_task(target: Any) -> None:
    """An unsolicited Data-Out for an Initiator Task Tag with no task is rejected or
    ignored: no SCSI Response for that tag, and the session goes on."""
    async with full_feature(target) as ffp:
        stray = P.ScsiDataOut(
            final=True,
            lun=P.lun_to_field(target.lun),
            itt=0x7E7E7E7E,
            ttt=NONE_TAG,
            expstatsn=ffp.expstatsn,
            datasn=0,
            buffer_offset=0,
            data=os.urandom(BLOCK),
        )
        await _send_quietly(ffp, stray)
        got = await _drain(ffp, 1.5)
        require(
            not any(isinstance(p, P.ScsiResponse) and p.itt == stray.itt for p in got),
            "R7143-11.7-6",
            "a SCSI Response answered a Data-Out for a task that does not exist",
            sent=[stray],
            received=got,
        )
        req, resp = await _ping(ffp)
        require(
            isinstance(resp, P.NopIn),
            "R7143-7.11-1",
            "the session did not survive a Data-Out for an unknown task",
            sent=[stray, req] if req else [stray],
            received=[*got, resp] if resp else got,
        )


async def _outcome_without_junk(
    target: Any, ffp: FullFeature, cmd: Any, real: bytes, junk: bytes, sent: list[Any], lba: int
) -> None:
    received: list[Any] = []
    status, _ = await _finish_write(ffp, cmd, real, sent, received)
    stored = await _read_back(target, lba, len(real) // BLOCK, "R7143-13.11-3", sent)
    require(
        stored[: len(junk)] != junk,
        "R7143-13.11-3",
        "unsolicited data the negotiated keys forbid was stored as the write's data",
        sent=sent,
        received=received,
    )
    if status is not None and status.status == 0:
        require(
            stored == real,
            "R7143-13.11-3",
            "the write completed GOOD but the block does not hold the data sent for its R2T",
            sent=sent,
            received=received,
        )


@spec(
    "FullFeature.Errors.ImmediateDataWhenDisabled",
    "RFC 7143 13.11",
    requirements=["R7143-13.11-3"],
    dataloss=True,
)
async def test_immediate_data_when_disabled(target: Any) -> None:
    """With ImmediateData=No, data attached to a WRITE command is refused: never stored."""
    lba = LBA_BASE + 48
    real, junk = os.urandom(BLOCK), os.urandom(BLOCK)
    async with _solicited_session(target) as ffp:
        cmd = await _write_command(ffp, target.lun, lba, 1, data=junk)
        await _outcome_without_junk(target, ffp, cmd, real, junk, [cmd], lba)


@spec(
    "FullFeature.Errors.UnsolicitedDataOutWhenInitialR2T",
    "RFC 7143 13.11",
    requirements=["R7143-13.11-3"],
    dataloss=True,
)
async def test_unsolicited_data_out_when_initial_r2t(target: Any) -> None:
    """With InitialR2T=Yes, a Data-Out sent before any R2T (TTT 0xffffffff) is refused:
    the block ends up with the data sent for the R2T, or the write fails."""
    lba = LBA_BASE + 56
    real, junk = os.urandom(BLOCK), os.urandom(BLOCK)
    async with _solicited_session(target) as ffp:
        cmd = await _write_command(ffp, target.lun, lba, 1)
        stray = P.ScsiDataOut(
            final=True,
            lun=cmd.lun,
            itt=cmd.itt,
            ttt=NONE_TAG,
            expstatsn=ffp.expstatsn,
            datasn=0,
            buffer_offset=0,
            data=junk,
        )
        await _send_quietly(ffp, stray)
        await _outcome_without_junk(target, ffp, cmd, real, junk, [cmd, stray], lba)


@spec(
    "FullFeature.Errors.ImmediateDataOverFirstBurst",
    "RFC 7143 13.14",
    level="INFORMATIONAL",
    requirements=["R7143-13.14-3"],
    dataloss=True,
)
async def test_immediate_data_over_first_burst(target: Any) -> None:
    """With FirstBurstLength=512, a WRITE carrying 1024 bytes of immediate data breaks
    the limit: the target rejects it or fails the command, never completing it GOOD."""
    target.require_dataloss()
    keys = [
        ("ImmediateData", "Yes"),
        ("InitialR2T", "Yes"),
        ("FirstBurstLength", "512"),
        ("MaxBurstLength", "262144"),
    ]
    async with full_feature(target, keys=keys) as ffp:
        if ffp.first_burst != BLOCK or not ffp.immediate_data:
            pytest.skip(
                f"the target agreed FirstBurstLength={ffp.first_burst}, "
                f"ImmediateData={ffp.immediate_data}"
            )
        if ffp.target_mrdsl < 2 * BLOCK:
            pytest.skip("the target's MaxRecvDataSegmentLength is below 1024 bytes")
        payload = os.urandom(2 * BLOCK)
        cmd = await _write_command(ffp, target.lun, LBA_BASE + 64, 2, data=payload)
        sent, received = [cmd], []
        status, closed = await _finish_write(ffp, cmd, payload, sent, received)
        rejected = any(isinstance(p, P.Reject) for p in received)
        # The command is owed an answer: an error status (RFC 7143 11.4.7.2 lists
        # unexpected unsolicited data and an incorrect amount of data as CHECK
        # CONDITION), a Reject of the PDU (7.11, 11.17), or the end of the connection
        # on the protocol error. Silence is none of these, and GOOD accepts the data.
        require(
            rejected or closed or status is not None,
            "R7143-13.14-3",
            "1024 bytes of immediate data with FirstBurstLength=512 got no status, no "
            f"Reject and the connection stayed open: {ffp.no_answer}",
            sent=sent,
            received=[*received, *ffp.shown(None)],
        )
        require(
            rejected or closed or status.status != 0,
            "R7143-13.14-3",
            "1024 bytes of immediate data with FirstBurstLength=512 were accepted without "
            "a Reject or an error status",
            sent=sent,
            received=received,
        )


@spec(
    "FullFeature.Errors.RejectedCommandCmdSnNotTaken",
    "RFC 7143 7.3",
    requirements=["R7143-7.3-1"],
    dataloss=True,
)
async def test_rejected_command_cmdsn_not_taken(target: Any) -> None:
    """A WRITE waits for its R2T; a TEST UNIT READY that reuses the WRITE's task tag is a
    command the target can only refuse. A target that rejects it (a Reject holding its
    header) must not count its CmdSN as received (7.3): a TEST UNIT READY sent next
    with that same CmdSN and a fresh tag, which plugs the gap as the initiator must, is
    answered. A target that ends the duplicate with a status instead has taken the
    CmdSN rightly, and nothing is judged. (Header-only PDUs: no data segment whose
    handling could blur the command sequence.)"""
    async with _solicited_session(target) as ffp:
        write = await _write_command(ffp, target.lun, LBA_BASE + 72, 1)
        before = await _drain(ffp, 1.0)  # its R2T (InitialR2T=Yes): the task is in use
        cmd = P.ScsiCommand(
            final=True,
            attr=1,
            lun=P.lun_to_field(target.lun),
            itt=write.itt,
            expected_data_transfer_length=0,
            cmdsn=ffp.take_cmdsn(),
            expstatsn=ffp.expstatsn,
            cdb=cdb.test_unit_ready(),
        )
        await ffp.send(cmd)
        got = await _drain(ffp, 2.0)
        rejected = [p for p in got if isinstance(p, P.Reject) and p.data[:48] == P.bhs_of(cmd)[:48]]
        answered = [p for p in got if isinstance(p, P.ScsiResponse) and p.itt == cmd.itt]
        if not rejected:
            if answered:
                pytest.skip(
                    "the target did not reject the command that reused a task tag in use "
                    "(it answered a SCSI Response): its CmdSN was taken, rightly"
                )
            require(
                False,
                "R7143-7.3-1",
                "a TEST UNIT READY reusing the tag of a WRITE in progress got neither a "
                f"Reject nor a SCSI Response within 2 s: {ffp.no_answer}",
                sent=[write, cmd],
                received=[*before, *got],
            )
        ffp.cmdsn = cmd.cmdsn  # plug the gap (7.3): the next command takes the CmdSN
        tur = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        gone = tur.missing()
        closed = gone is not None and (
            gone.outcome is Outcome.CLOSED
            or (gone.outcome is Outcome.SILENT and await _closes(ffp, 30.0))
        )
        if closed:
            # A connection ended after the Reject leaves no command sequence that could
            # show the rejected CmdSN taken: not this rule's business.
            pytest.skip(
                "the target ended the connection after its Reject: no command sequence is "
                "left to show whether the rejected CmdSN was taken"
            )
        require(
            gone is None,
            "R7143-7.3-1",
            f"the rejected command's CmdSN {cmd.cmdsn} was reused by a TEST UNIT READY, which "
            f"the target did not answer ({gone}): it counted the rejected command's CmdSN "
            "as received",
            sent=[cmd, *tur.sent],
            received=[*got, *tur.shown()],
        )


@spec(
    "FullFeature.Errors.HeldBackWriteUnsolicitedDataOut",
    "RFC 7143 13.11",
    "RFC 7143 4.2.2.1",
    requirements=["R7143-13.11-3"],
    needs=("stray_data_out",),
    dataloss=True,
)
async def test_unsolicited_data_out_before_delivery(target: Any) -> None:
    """With InitialR2T=Yes, a WRITE held back by a CmdSN gap gets an unsolicited
    Data-Out before the target could issue any R2T; once the gap is filled the write is
    solicited as usual: the block ends up with the data sent for the R2T (or the write
    fails), never with the unsolicited data (RFC 7143 13.11)."""
    lba = LBA_BASE + 80
    real, junk = os.urandom(BLOCK), os.urandom(BLOCK)
    async with _solicited_session(target) as ffp:
        gap = ffp.take_cmdsn()
        cmd = P.ScsiCommand(
            final=True,
            write=True,
            attr=1,
            lun=P.lun_to_field(target.lun),
            itt=ffp.next_itt(),
            expected_data_transfer_length=BLOCK,
            cmdsn=ffp.take_cmdsn(),
            expstatsn=ffp.expstatsn,
            cdb=cdb.write10(lba, 1),
        )
        await ffp.send(cmd)
        stray = P.ScsiDataOut(
            final=True,
            lun=cmd.lun,
            itt=cmd.itt,
            ttt=NONE_TAG,
            expstatsn=ffp.expstatsn,
            datasn=0,
            buffer_offset=0,
            data=junk,
        )
        await _send_quietly(ffp, stray)
        filler = P.NopOut(
            itt=ffp.next_itt(),
            ttt=NONE_TAG,
            cmdsn=gap,
            expstatsn=ffp.expstatsn,
        )
        await _send_quietly(ffp, filler)
        await _outcome_without_junk(target, ffp, cmd, real, junk, [cmd, stray, filler], lba)
