"""FullFeature.Snack: SNACK Requests at ErrorRecoveryLevel 0 and 1 (RFC 7143 7.1, 11.16).

SNACK is a recovery tool of ErrorRecoveryLevel 1 and above. At level 0 a target must
not act on one (it rejects it); at level 1 a Data SNACK makes it send the named
Data-In PDUs again, unchanged, and a Status SNACK the named status, as long as the
initiator has not acknowledged them (ExpStatSN, DataACK).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import RejectReason, SnackType
from iscsi_conformance.harness.probe import FullFeature, Outcome, full_feature
from iscsi_conformance.plugin import require, spec
from iscsi_conformance.scsi import cdb

NONE_TAG = 0xFFFFFFFF
BLOCK = 512
# Small Data-In PDUs, so that one READ of 4 blocks is DataSN 0..3.
SMALL_PDUS = [("MaxRecvDataSegmentLength", "512")]


async def _read(ffp: FullFeature, target: Any, blocks: int = 4) -> Any:
    out = await ffp.command(cdb.read10(0, blocks), read_length=blocks * BLOCK, lun=target.lun)
    require(
        out.status == 0 and len(out.data_ins) == blocks,
        "RSBC3-5.16-1",
        f"READ of {blocks} blocks: status {out.status!r}, {len(out.data_ins)} Data-In PDUs"
        + (f"; {out.missing()}" if out.missing() else ""),
        sent=out.sent,
        received=out.shown(),
    )
    return out


async def _collect(ffp: FullFeature, seconds: float) -> tuple[list[Any], bool]:
    """Everything that arrives until ``seconds`` pass quietly; and whether the
    connection closed (``ffp.no_answer`` says when)."""
    got = await ffp.drain(seconds)
    gone = ffp.no_answer
    return got, gone is not None and gone.outcome is Outcome.CLOSED


def _seen(ffp: FullFeature, got: list[Any]) -> list[Any]:
    """What came after the SNACK, and how the wait for more ended."""
    return [*got, *ffp.shown(None)]


def _status_statsn(out: Any) -> int:
    return int(out.response.statsn)


def _snack(ffp: FullFeature, out: Any, kind: int, *, begrun: int = 0, runlength: int = 0) -> Any:
    """A SNACK for ``out``'s task; ExpStatSN does not acknowledge the task's status."""
    status_sn = _status_statsn(out)
    return P.SnackRequest(
        snack_type=kind,
        lun=out.command.lun,
        itt=NONE_TAG if kind == SnackType.STATUS else out.command.itt,
        ttt=NONE_TAG,
        expstatsn=status_sn if kind != SnackType.DATA_ACK else (status_sn + 1) & 0xFFFFFFFF,
        begrun=status_sn if kind == SnackType.STATUS else begrun,
        runlength=1 if kind == SnackType.STATUS else runlength,
    )


# --------------------------------------------------------------------------- ERL 0

ERL0_KINDS = {
    "DataSnack": SnackType.DATA_R2T,
    "StatusSnack": SnackType.STATUS,
    "DataAck": SnackType.DATA_ACK,
    "RDataSnack": SnackType.R_DATA,
}


def _make_erl0_test(label: str, kind: int) -> Callable[..., Any]:
    @spec(
        f"FullFeature.Snack.Erl0.{label}",
        "RFC 7143 11.16",
        "RFC 7143 7.1.5",
        requirements=["R7143-11.16-1"],
    )
    async def test(target: Any) -> None:
        keys = [("ErrorRecoveryLevel", "0"), *SMALL_PDUS]
        async with full_feature(target, keys=keys) as ffp:
            out = await _read(ffp, target)
            snack = _snack(ffp, out, kind, begrun=0, runlength=1)
            await ffp.send(snack)
            got, closed = await _collect(ffp, min(ffp.timeout, 2.0))
            resent = [
                p
                for p in got
                if isinstance(p, P.ScsiDataIn | P.ScsiResponse) and p.itt == out.command.itt
            ]
            require(
                not resent,
                "R7143-11.16-1",
                f"at ErrorRecoveryLevel 0 a SNACK (type {kind}) was honoured: "
                f"{len(resent)} PDUs of the finished READ were sent again",
                sent=[*out.sent, snack],
                received=[*out.received, *_seen(ffp, got)],
            )
            # Not honoured is not ignored: SNACK is a tool of ErrorRecoveryLevel 1
            # (RFC 7143 7.1.5), so at level 0 it is a protocol error, which the RFC
            # answers with a Reject (7.11, 11.17.1: Protocol Error, SNACK Reject), or
            # an error the target escalates to session recovery, the only recovery of
            # level 0 (7.1.5): the connection ends. Silence is neither.
            require(
                any(isinstance(p, P.Reject) for p in got) or closed,
                "R7143-11.16-1",
                f"at ErrorRecoveryLevel 0 a SNACK (type {kind}) was neither rejected nor "
                f"ended the connection: {ffp.no_answer or 'other PDUs only'}",
                sent=[*out.sent, snack],
                received=[*out.received, *_seen(ffp, got)],
            )

    test.__doc__ = (
        f"At ErrorRecoveryLevel 0 a SNACK of type {kind} for a finished READ retransmits "
        "nothing, and is rejected or ends the connection."
    )
    return test


for _label, _kind in ERL0_KINDS.items():
    globals()[f"test_erl0_{_label}"] = _make_erl0_test(_label, _kind)


@spec(
    "FullFeature.Snack.Erl0.Rejected",
    ("RFC 7143", "11.16", "INFORMATIONAL", "target"),
    "RFC 7143 11.17",
    requirements=["R7143-11.16-2", "R7143-11.17-1"],
)
async def test_erl0_snack_rejected(target: Any) -> None:
    """At ErrorRecoveryLevel 0 a Data SNACK is answered with a Reject (Protocol Error or
    SNACK Reject) carrying its header, and the session goes on.

    A robustness check (no keyword read for SNACKs at level 0, R7143-11.16-2), but a
    Reject that comes carries the SNACK's header (R7143-11.17-1, MUST)."""
    keys = [("ErrorRecoveryLevel", "0"), *SMALL_PDUS]
    async with full_feature(target, keys=keys) as ffp:
        out = await _read(ffp, target)
        snack = _snack(ffp, out, SnackType.DATA_R2T, begrun=0, runlength=1)
        await ffp.send(snack)
        got, _closed = await _collect(ffp, min(ffp.timeout, 2.0))
        rejects = [p for p in got if isinstance(p, P.Reject)]
        require(
            rejects and rejects[0].reason in (0x03, 0x04),
            "R7143-11.16-2",
            f"expected a Reject with reason 03h/04h; got {[type(p).__name__ for p in got]}, "
            f"then {ffp.no_answer}",
            sent=[snack],
            received=_seen(ffp, got),
        )
        require(
            rejects[0].data[:48] == P.bhs_of(snack),
            "R7143-11.17-1",
            "the Reject does not carry the SNACK's header",
            sent=[snack],
            received=rejects,
        )
        req, resp = await ffp.nop(b"alive")
        require(
            isinstance(resp, P.NopIn),
            "R7143-11.16-2",
            "the session did not go on after the SNACK was rejected: the ping got "
            f"{type(resp).__name__ if resp is not None else ffp.no_answer}",
            sent=[snack, req],
            received=[*got, *ffp.shown(resp)],
        )


# --------------------------------------------------------------------------- ERL 1


async def _erl1(target: Any, keys: list[tuple[str, str]] | None = None) -> Any:
    ctx = full_feature(target, keys=[("ErrorRecoveryLevel", "1"), *SMALL_PDUS, *(keys or [])])
    ffp = await ctx.__aenter__()
    agreed = ffp.probe.negotiated.get("ErrorRecoveryLevel", "0")
    if agreed != "1":
        await ctx.__aexit__(None, None, None)
        pytest.skip(f"the target agreed ErrorRecoveryLevel={agreed}: SNACK recovery needs 1")
    return ctx, ffp


@spec(
    "FullFeature.Snack.Erl1.DataSnackResends",
    "RFC 7143 11.16",
    "RFC 7143 7.1.4.1",
    requirements=["R7143-11.16-3"],
)
async def test_erl1_data_snack_resends(target: Any) -> None:
    """At ErrorRecoveryLevel 1, a Data SNACK for DataSN 1..2 of a READ whose status is not
    yet acknowledged brings back those two Data-In PDUs: same DataSN, offset and data."""
    ctx, ffp = await _erl1(target)
    try:
        out = await _read(ffp, target)
        snack = _snack(ffp, out, SnackType.DATA_R2T, begrun=1, runlength=2)
        await ffp.send(snack)
        got, _ = await _collect(ffp, min(ffp.timeout, 2.0))
        again = [p for p in got if isinstance(p, P.ScsiDataIn) and p.itt == out.command.itt]
        original = {p.datasn: p for p in out.data_ins}
        require(
            sorted(p.datasn for p in again) == [1, 2],
            "R7143-11.16-3",
            f"a Data SNACK for DataSN 1..2 brought back DataSN {[p.datasn for p in again]}",
            sent=[*out.sent, snack],
            received=[*out.received, *_seen(ffp, got)],
        )
        for p in again:
            first = original[p.datasn]
            require(
                p.buffer_offset == first.buffer_offset and p.data == first.data,
                "R7143-11.16-3",
                f"the resent DataSN {p.datasn} differs from the original (offset "
                f"{p.buffer_offset} vs {first.buffer_offset}, or its data)",
                sent=[*out.sent, snack],
                received=[*out.received, *_seen(ffp, got)],
            )
    finally:
        await ctx.__aexit__(None, None, None)


@spec(
    "FullFeature.Snack.Erl1.StatusSnackResends",
    "RFC 7143 11.16",
    "RFC 7143 7.1.4.1",
    requirements=["R7143-11.16-4"],
)
async def test_erl1_status_snack_resends(target: Any) -> None:
    """At ErrorRecoveryLevel 1, a Status SNACK for the StatSN of a not yet acknowledged
    response brings that response back, with the same StatSN and task tag."""
    ctx, ffp = await _erl1(target)
    try:
        out = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        require(
            isinstance(out.response, P.ScsiResponse),
            "RSPC4-6.39-3",
            f"no SCSI Response to TEST UNIT READY: {out.missing()}",
            sent=out.sent,
            received=out.shown(),
        )
        snack = _snack(ffp, out, SnackType.STATUS)
        await ffp.send(snack)
        got, _ = await _collect(ffp, min(ffp.timeout, 2.0))
        again = [p for p in got if isinstance(p, P.ScsiResponse)]
        require(
            len(again) == 1
            and again[0].statsn == out.response.statsn
            and again[0].itt == out.command.itt,
            "R7143-11.16-4",
            f"a Status SNACK for StatSN {out.response.statsn} brought back "
            f"{[(p.itt, p.statsn) for p in again]}",
            sent=[*out.sent, snack],
            received=[*out.received, *_seen(ffp, got)],
        )
    finally:
        await ctx.__aexit__(None, None, None)


@spec(
    "FullFeature.Snack.Erl1.DataSnackBeyondRange",
    "RFC 7143 11.16",
    requirements=["R7143-11.16-5"],
)
async def test_erl1_data_snack_beyond_range(target: Any) -> None:
    """At ErrorRecoveryLevel 1, a Data SNACK for DataSN 50 of a 4-PDU READ invents no
    data: no Data-In with DataSN >= 4 comes back, and the SNACK is rejected."""
    ctx, ffp = await _erl1(target)
    try:
        out = await _read(ffp, target)
        snack = _snack(ffp, out, SnackType.DATA_R2T, begrun=50, runlength=1)
        await ffp.send(snack)
        got, _ = await _collect(ffp, min(ffp.timeout, 2.0))
        invented = [
            p
            for p in got
            if isinstance(p, P.ScsiDataIn) and p.itt == out.command.itt and p.datasn >= 4
        ]
        require(
            not invented,
            "R7143-11.16-5",
            f"Data-In with DataSN {[p.datasn for p in invented]} for a READ that produced 0..3",
            sent=[*out.sent, snack],
            received=[*out.received, *_seen(ffp, got)],
        )
        rejects = [p for p in got if isinstance(p, P.Reject)]
        require(
            bool(rejects),
            "R7143-11.16-5",
            "a Data SNACK for DataSNs the task never produced was not rejected",
            sent=[snack],
            received=_seen(ffp, got),
        )
        require(
            any(p.reason == RejectReason.PROTOCOL_ERROR for p in rejects),
            "R7143-11.16-5",
            "a Data SNACK for DataSNs the task never produced was rejected with reason "
            f"{', '.join(f'{p.reason:#04x}' for p in rejects)}, not Protocol Error (0x04)",
            sent=[snack],
            received=_seen(ffp, got),
        )
    finally:
        await ctx.__aexit__(None, None, None)


@spec(
    "FullFeature.Snack.Erl1.BidiDataSnackResends",
    "RFC 7143 11.16",
    "RFC 7143 4.2.2.4",
    requirements=["R7143-11.16-3"],
    needs=("bidirectional", "xdwriteread"),
)
async def test_erl1_bidi_data_snack_resends(target: Any) -> None:
    """At ErrorRecoveryLevel 1, a Data SNACK for the second and third Data-In of a
    bidirectional XDWRITEREAD(10) (DISABLE WRITE one: the blocks stay) brings those
    PDUs back unchanged. BegRun is their DataSN in the sequence R2T and Data-In share
    (4.2.2.4, 11.7.5), so it counts the R2Ts before them."""
    ctx, ffp = await _erl1(target, [("InitialR2T", "Yes"), ("ImmediateData", "No")])
    try:
        blocks = 4
        out = await ffp.command(
            cdb.xdwriteread10(0, blocks, disable_write=True),
            lun=target.lun,
            data_out=bytes(range(256)) * (blocks * BLOCK // 256),
            bidi_read_length=blocks * BLOCK,
        )
        require(
            out.status == 0 and len(out.data_ins) == blocks and out.response is not None,
            "RSBC3-5.48-1",
            f"XDWRITEREAD(10) of {blocks} blocks: status {out.status!r}, "
            f"{len(out.data_ins)} Data-In PDUs" + (f"; {out.missing()}" if out.missing() else ""),
            sent=out.sent,
            received=out.shown(),
        )
        first = min(p.datasn for p in out.data_ins)
        snack = _snack(ffp, out, SnackType.DATA_R2T, begrun=first + 1, runlength=2)
        await ffp.send(snack)
        got, gone = await _collect(ffp, min(ffp.timeout, 2.0))
        again = [p for p in got if isinstance(p, P.ScsiDataIn) and p.itt == out.command.itt]
        rejected = any(isinstance(p, P.Reject) for p in got)
        what = "closed the connection" if gone else "rejected it" if rejected else "stayed silent"
        require(
            sorted(p.datasn for p in again) == [first + 1, first + 2],
            "R7143-11.16-3",
            f"a Data SNACK for DataSN {first + 1}..{first + 2} (the read part after "
            f"{len(out.r2ts)} R2T(s)) brought back DataSN {[p.datasn for p in again]}"
            + ("" if again else f": the target {what}"),
            sent=[*out.sent, snack],
            received=[*out.received, *_seen(ffp, got)],
        )
        original = {p.datasn: p for p in out.data_ins}
        for p in again:
            was = original[p.datasn]
            require(
                p.buffer_offset == was.buffer_offset and p.data == was.data,
                "R7143-11.16-3",
                f"the resent DataSN {p.datasn} differs from the original (offset "
                f"{p.buffer_offset} vs {was.buffer_offset}, or its data)",
                sent=[*out.sent, snack],
                received=[*out.received, *_seen(ffp, got)],
            )
    finally:
        await ctx.__aexit__(None, None, None)
