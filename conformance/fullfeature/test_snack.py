"""FullFeature.Snack: SNACK Requests at ErrorRecoveryLevel 0 and 1 (RFC 7143 7.1, 11.16).

SNACK is a recovery tool of ErrorRecoveryLevel 1 and above. At level 0 a target must
not act on one (it rejects it); at level 1 a Data SNACK makes it send the named
Data-In PDUs again, unchanged, and a Status SNACK the named status, as long as the
initiator has not acknowledged them (ExpStatSN, DataACK). An R-Data SNACK brings back
all of a read's data, resegmented for a MaxRecvDataSegmentLength declared since, and
then a SCSI Response with its SNACK Tag (11.16.3), and after a DataACK (the initiator's
answer to a Data-In with the A bit, 11.16.2) only the data left unacknowledged; a
Data/R2T SNACK for an R2T of a write under way brings that R2T back as it was (11.16).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.codes import RejectReason, SnackType
from iscsi_conformance.harness.probe import FullFeature, Outcome, full_feature
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

NONE_TAG = 0xFFFFFFFF
BLOCK = 512
# Small Data-In PDUs, so that one READ of 4 blocks is DataSN 0..3.
SMALL_PDUS = [("MaxRecvDataSegmentLength", "512")]


async def _read(ffp: FullFeature, target: Any, blocks: int = 4, *, each: bool = True) -> Any:
    """A READ of ``blocks`` blocks, GOOD, in one Data-In per block when ``each``."""
    out = await ffp.command(cdb.read10(0, blocks), read_length=blocks * BLOCK, lun=target.lun)
    require(
        out.status == 0
        and len(out.data) == blocks * BLOCK
        and (len(out.data_ins) == blocks or not each),
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


async def _erl1(
    target: Any,
    keys: list[tuple[str, str]] | None = None,
    *,
    pdus: list[tuple[str, str]] = SMALL_PDUS,
) -> Any:
    ctx = full_feature(target, keys=[("ErrorRecoveryLevel", "1"), *pdus, *(keys or [])])
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


# --------------------------------------------------------------------------- R-Data

SNACK_TAG = 0x0000C0DE  # neither 0 nor 0xffffffff, as 11.16.5 requires


def _what(got: list[Any], gone: bool) -> str:
    """How the target answered a SNACK that brought nothing usable back."""
    if gone:
        return "closed the connection"
    if any(isinstance(p, P.Reject) for p in got):
        return "rejected it"
    return "stayed silent" if not got else "sent " + ", ".join(type(p).__name__ for p in got)


async def _r_data_snack(
    ffp: FullFeature,
    out: Any,
    status_sn: int,
    sent: list[Any],
    received: list[Any],
    *,
    after: str = "",
) -> tuple[list[Any], list[Any]]:
    """Send the R-Data SNACK for ``out``'s READ (SNACK Tag ``SNACK_TAG``) and require
    what 11.16.3 requires of every answer to one: a SCSI Response carrying the tag, as
    the command's last response. Returns the command's PDUs that came, and the tagged
    responses among them."""
    itt = out.command.itt
    snack = P.SnackRequest(
        snack_type=SnackType.R_DATA,
        lun=out.command.lun,
        itt=itt,
        ttt=SNACK_TAG,
        expstatsn=status_sn,
        begrun=0,  # 11.16.6, 11.16.7: both 0 for an R-Data SNACK
        runlength=0,
    )
    await ffp.send(snack)
    sent.append(snack)
    got, gone = await _collect(ffp, min(ffp.timeout, 2.0))
    received.extend(_seen(ffp, got))
    mine = [p for p in got if isinstance(p, P.ScsiDataIn | P.ScsiResponse) and p.itt == itt]
    responses = [p for p in mine if isinstance(p, P.ScsiResponse)]
    tagged = [p for p in responses if p.snack_tag == SNACK_TAG]
    require(
        bool(tagged),
        "R7143-11.16-6",
        f"an R-Data SNACK with SNACK Tag {SNACK_TAG:#x}{after} brought no SCSI Response "
        f"carrying it: the target {_what(got, gone)}"
        + (
            f" (SCSI Responses with SNACK Tag {[hex(p.snack_tag) for p in responses]})"
            if responses
            else ""
        ),
        sent=sent,
        received=received,
    )
    require(
        mine[-1] is tagged[-1],
        "R7143-11.16-6",
        "the SCSI Response with the R-Data SNACK's Tag is not the command's last "
        f"response: a {type(mine[-1]).__name__} came after it",
        sent=sent,
        received=received,
    )
    return mine, tagged


async def _r_data(target: Any, *, segment: int | None) -> None:
    """A READ of 4 blocks at ErrorRecoveryLevel 1, its status left unacknowledged: in
    512-byte Data-In PDUs, or, with ``segment``, in PDUs of up to 2048 bytes followed by
    a new, smaller MaxRecvDataSegmentLength ``segment`` declared by Text Request (6.4);
    then an R-Data SNACK. What must come back: all of the READ's
    data (within ``segment`` when given), then a SCSI Response carrying the SNACK Tag
    as the command's last response (R7143-11.16-6); that response's StatSN and status
    are the first status's, and a Status SNACK afterwards brings it back, SNACK Tag
    included (R7143-11.16-7, recorded only)."""
    first_segment = [("MaxRecvDataSegmentLength", "2048")] if segment is not None else SMALL_PDUS
    ctx, ffp = await _erl1(target, pdus=first_segment)
    try:
        out = await _read(ffp, target, each=segment is None)
        status_sn = _status_statsn(out)
        itt = out.command.itt
        sent: list[Any] = list(out.sent)
        received: list[Any] = list(out.received)
        if segment is not None:
            text = P.TextRequest(
                final=True,
                itt=ffp.next_itt(),
                ttt=NONE_TAG,
                cmdsn=ffp.take_cmdsn(),
                expstatsn=status_sn,  # the READ's status stays unacknowledged
                data=T.format_pairs([("MaxRecvDataSegmentLength", str(segment))]),
            )
            reply = await ffp.exchange(text)
            sent.append(text)
            received.extend(reply.shown())
            answer = reply.pdu.data.decode("utf-8", "replace") if reply.pdu is not None else ""
            if not isinstance(reply.pdu, P.TextResponse) or "Reject" in answer:
                # FullFeature.Text.MaxRecvDataSegmentLengthRedeclared judges this
                raise violation(
                    "harness",
                    f"declaring MaxRecvDataSegmentLength={segment} in full feature phase, "
                    "needed before the R-Data SNACK, did not complete: "
                    f"{reply.pdu if reply.pdu is not None else reply.missing()}",
                    sent=sent,
                    received=received,
                )
        mine, tagged = await _r_data_snack(ffp, out, status_sn, sent, received)
        again = [p for p in mine if isinstance(p, P.ScsiDataIn)]
        data = bytearray(len(out.data))
        for p in again:
            data[p.buffer_offset : p.buffer_offset + len(p.data)] = p.data
        count = sum(len(p.data) for p in again)
        require(
            bytes(data) == out.data and count >= len(out.data),
            "R7143-11.16-6",
            f"after an R-Data SNACK the READ's {len(out.data)} bytes did not all come back: "
            f"{len(again)} Data-In PDUs, {count} bytes"
            + ("" if bytes(data) == out.data or not again else ", not the data first read"),
            sent=sent,
            received=received,
        )
        if segment is not None:
            too_long = [p.datasn for p in again if len(p.data) > segment]
            require(
                not too_long,
                "R7143-11.16-6",
                f"Data-In resent for the R-Data SNACK exceed the MaxRecvDataSegmentLength of "
                f"{segment} declared before it: DataSN {too_long}",
                sent=sent,
                received=received,
            )
        first = out.response
        final = tagged[-1]
        require(
            final.statsn == first.statsn and final.status == first.status,
            "R7143-11.16-7",
            f"the R-Data SNACK's SCSI Response has StatSN {final.statsn} and status "
            f"{final.status:#04x}; the command's status had StatSN {first.statsn} and "
            f"status {first.status:#04x}",
            sent=sent,
            received=received,
        )
        # a Status SNACK now brings back the latest response, SNACK Tag included
        status = P.SnackRequest(
            snack_type=SnackType.STATUS,
            itt=NONE_TAG,
            ttt=NONE_TAG,
            expstatsn=status_sn,
            begrun=status_sn,
            runlength=1,
        )
        await ffp.send(status)
        sent.append(status)
        back, gone = await _collect(ffp, min(ffp.timeout, 2.0))
        received.extend(_seen(ffp, back))
        latest = [p for p in back if isinstance(p, P.ScsiResponse | P.ScsiDataIn) and p.itt == itt]
        require(
            bool(latest)
            and isinstance(latest[-1], P.ScsiResponse)
            and latest[-1].snack_tag == SNACK_TAG,
            "R7143-11.16-7",
            f"a Status SNACK for StatSN {status_sn} after the R-Data SNACK brought "
            + (
                f"{type(latest[-1]).__name__} with SNACK Tag "
                f"{getattr(latest[-1], 'snack_tag', None)}"
                if latest
                else f"nothing for the command: the target {_what(back, gone)}"
            ),
            sent=sent,
            received=received,
        )
    finally:
        await ctx.__aexit__(None, None, None)


@spec(
    "FullFeature.Snack.Erl1.RDataSnackTaggedResponse",
    "RFC 7143 11.16.3",
    "RFC 7143 11.16.5",
    requirements=["R7143-11.16-6", "R7143-11.16-7"],
)
async def test_erl1_r_data_snack_tagged_response(target: Any) -> None:
    """At ErrorRecoveryLevel 1, an R-Data SNACK for a READ of 4 blocks whose status
    came in its last Data-In and is not yet acknowledged brings back all of the READ's
    data, then a SCSI Response carrying the SNACK Tag as the command's last response
    (11.16.3, 11.16.5: MUST). Its StatSN and status are the first status's (11.16.3,
    a lower-case must: recorded only), and a Status SNACK then brings it back."""
    await _r_data(target, segment=None)


@spec(
    "FullFeature.Snack.Erl1.RDataSnackResegmented",
    "RFC 7143 11.16.3",
    "RFC 7143 11.16.5",
    "RFC 7143 6.4",
    requirements=["R7143-11.16-6", "R7143-11.16-7"],
)
async def test_erl1_r_data_snack_resegmented(target: Any) -> None:
    """As RDataSnackTaggedResponse, for a READ received with MaxRecvDataSegmentLength
    2048, after which the initiator declared 512 by Text Request (6.4), the case in
    which 11.16.3 requires an R-Data SNACK: the data comes back resegmented within the
    new limit (13.12), then the SCSI Response with the SNACK Tag."""
    await _r_data(target, segment=512)


@spec(
    "FullFeature.Snack.Erl1.RDataSnackAfterDataAck",
    "RFC 7143 11.16.3",
    "RFC 7143 11.16.2",
    "RFC 7143 11.7.2",
    requirements=["R7143-11.16-6", "R7143-11.16-9", "R7143-11.16-10"],
)
async def test_erl1_r_data_snack_after_data_ack(target: Any) -> None:
    """At ErrorRecoveryLevel 1, a READ of 4 blocks in 512-byte Data-In with
    MaxBurstLength 1024, so that the target may ask for a DataACK (A bit) at the end of
    the first burst (11.7.2: MAY, at most once every MaxBurstLength bytes); the initiator
    acknowledges up to that Data-In (DataACK, BegRun the next DataSN, 11.16.2, 11.16.6),
    then sends an R-Data SNACK. The DataACK is not refused (11.16: every SNACK type at
    ERL > 0) and the data not acknowledged comes back (11.16.3: the initiator discarded
    it; R7143-11.16-9), then the SCSI Response with the SNACK Tag as the command's last
    response, though the status came before (R7143-11.16-6). Recorded only: the resent
    DataSN start at the DataACK's BegRun and the acknowledged data is not resent
    (11.16.3, no keyword; R7143-11.16-10). Skipped when the target sets no A bit."""
    ctx, ffp = await _erl1(target, [("MaxBurstLength", "1024")])
    try:
        out = await _read(ffp, target, each=False)
        status_sn = _status_statsn(out)
        acks = [p for p in out.data_ins if p.ack]
        if not acks:
            pytest.skip(
                "the target set the A bit on none of the READ's Data-In (11.7.2: MAY): "
                "no DataACK to send"
            )
        ack = acks[0]
        begrun = (ack.datasn + 1) & 0xFFFFFFFF
        sent: list[Any] = list(out.sent)
        received: list[Any] = list(out.received)
        data_ack = P.SnackRequest(
            snack_type=SnackType.DATA_ACK,
            lun=ack.lun,
            itt=NONE_TAG,  # 11.16.4
            ttt=ack.ttt,  # 11.16.5: the A-bit Data-In's tag
            expstatsn=status_sn,  # the READ's status stays unacknowledged
            begrun=begrun,  # 11.16.6: the next DataSN expected
            runlength=0,  # 11.16.7
        )
        await ffp.send(data_ack)
        sent.append(data_ack)
        got, gone = await _collect(ffp, min(ffp.timeout, 1.0))
        received.extend(_seen(ffp, got))
        require(
            not gone and not any(isinstance(p, P.Reject) for p in got),
            "R7143-11.16-9",
            f"a DataACK (BegRun {begrun}, the Target Transfer Tag {ack.ttt:#x} of the "
            f"Data-In with the A bit, DataSN {ack.datasn}): the target {_what(got, gone)}",
            sent=sent,
            received=received,
        )
        mine, _ = await _r_data_snack(
            ffp, out, status_sn, sent, received, after=f" after a DataACK up to DataSN {begrun}"
        )
        # the data not acknowledged: what the first Data-In from BegRun on carried
        unacked = [p for p in out.data_ins if ((p.datasn - begrun) & 0xFFFFFFFF) < 1 << 31]
        start = min((p.buffer_offset for p in unacked), default=len(out.data))
        again = [p for p in mine if isinstance(p, P.ScsiDataIn)]
        data = bytearray(out.data)
        covered = bytearray(len(out.data))
        for p in again:
            end = min(p.buffer_offset + len(p.data), len(data))
            if p.buffer_offset < end:
                data[p.buffer_offset : end] = p.data[: end - p.buffer_offset]
                covered[p.buffer_offset : end] = b"\x01" * (end - p.buffer_offset)
        missing = covered[start:].count(0)
        require(
            not missing and bytes(data) == out.data,
            "R7143-11.16-9",
            f"after a DataACK up to DataSN {begrun} an R-Data SNACK did not bring back the "
            f"{len(out.data) - start} bytes not acknowledged (from offset {start}): "
            f"{len(again)} Data-In PDUs, {missing} of those bytes missing"
            + ("" if bytes(data) == out.data else ", data other than first read"),
            sent=sent,
            received=received,
        )
        numbers = [p.datasn for p in again]
        expected = [(begrun + i) & 0xFFFFFFFF for i in range(len(again))]
        below = [p.datasn for p in again if p.buffer_offset < start]
        require(
            numbers == expected and not below,
            "R7143-11.16-10",
            f"the Data-In resent after a DataACK with BegRun {begrun} have DataSN {numbers}"
            + (f" (expected {expected})" if numbers != expected else "")
            + (f"; DataSN {below} carry acknowledged data" if below else ""),
            sent=sent,
            received=received,
        )
    finally:
        await ctx.__aexit__(None, None, None)


# --------------------------------------------------------------------------- R2T SNACK


@spec(
    "FullFeature.Snack.Erl1.R2tSnackResends",
    "RFC 7143 11.16",
    "RFC 7143 11.16.6",
    "RFC 7143 11.8",
    requirements=["R7143-11.16-8"],
    dataloss=True,
)
async def test_erl1_r2t_snack_resends(target: Any) -> None:
    """At ErrorRecoveryLevel 1, a WRITE of 4 blocks without immediate or unsolicited
    data: its first R2T is taken as lost and asked for again by a Data/R2T SNACK
    (BegRun its R2TSN, RunLength 1), and so is a second one if the target splits the
    write (BegRun its R2TSN, RunLength 0). Each comes back as it was (R2TSN, Target
    Transfer Tag, LUN, Buffer Offset, Desired Data Transfer Length) with the current
    StatSN (11.16: MUST); answered, the WRITE ends GOOD and a READ returns its data."""
    target.require_dataloss()
    keys = [("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "1024")]
    ctx, ffp = await _erl1(target, keys)
    try:
        blocks, lba = 4, 64
        new = os.urandom(blocks * BLOCK)
        cmd, r2t, got = await ffp.hold_write(target.lun, cdb.write10(lba, blocks), len(new))
        sent: list[Any] = [cmd]
        received: list[Any] = [*got] if r2t is not None else [*got, *ffp.shown(None)]
        if r2t is None:
            raise violation(
                "harness",
                f"WRITE(10) without data brought no R2T: {ffp.no_answer or 'a SCSI Response'}",
                sent=sent,
                received=received,
            )
        current = r2t
        snacked = 0
        runlength = 1
        while current is not None:
            # the R2T is lost: ask for it again by its R2TSN
            snack = P.SnackRequest(
                snack_type=SnackType.DATA_R2T,
                lun=cmd.lun,
                itt=cmd.itt,
                ttt=NONE_TAG,
                expstatsn=ffp.expstatsn,
                begrun=current.r2tsn,
                runlength=runlength,
            )
            now_statsn = ffp.expstatsn
            await ffp.send(snack)
            sent.append(snack)
            back, gone = await _collect(ffp, min(ffp.timeout, 2.0))
            received.extend(_seen(ffp, back))
            again = [p for p in back if isinstance(p, P.R2T) and p.itt == cmd.itt]
            require(
                bool(again),
                "R7143-11.16-8",
                f"a Data/R2T SNACK for R2TSN {current.r2tsn} of a WRITE under way brought no "
                f"R2T: the target {_what(back, gone)}",
                sent=sent,
                received=received,
            )
            fields = ("r2tsn", "ttt", "lun", "buffer_offset", "desired_data_transfer_length")
            differ = [
                f"{f} {getattr(again[0], f)} (was {getattr(current, f)})"
                for f in fields
                if getattr(again[0], f) != getattr(current, f)
            ]
            require(
                not differ and len(again) == 1,
                "R7143-11.16-8",
                f"the R2T resent for R2TSN {current.r2tsn} is not a replica of the first: "
                + ("; ".join(differ) if differ else f"{len(again)} R2Ts came back"),
                sent=sent,
                received=received,
            )
            require(
                again[0].statsn == now_statsn,
                "R7143-11.16-8",
                f"the R2T resent for R2TSN {current.r2tsn} carries StatSN {again[0].statsn}, "
                f"not the current {now_statsn}",
                sent=sent,
                received=received,
            )
            snacked += 1
            sent.extend(await ffp.answer_r2t(cmd, again[0], new))
            # the next R2T, if the write takes more than one burst, is lost as well
            current = None
            runlength = 0
            while True:
                p = await ffp.recv()
                received.append(p if p is not None else ffp.no_answer)
                if p is None or (isinstance(p, P.ScsiResponse) and p.itt == cmd.itt):
                    break
                if isinstance(p, P.R2T) and p.itt == cmd.itt:
                    current = p
                    break
            if current is None:
                break
        rsp = received[-1]
        require(
            isinstance(rsp, P.ScsiResponse) and rsp.itt == cmd.itt and rsp.status == 0,
            "R7143-11.16-8",
            f"the WRITE whose R2T(s) were resent after {snacked} SNACK(s) did not end GOOD: "
            + (f"status {rsp.status:#04x}" if isinstance(rsp, P.ScsiResponse) else str(rsp)),
            sent=sent,
            received=received,
        )
        check = await ffp.command(cdb.read10(lba, blocks), read_length=len(new), lun=target.lun)
        require(
            check.status == 0 and check.data == new,
            "R7143-11.16-8",
            f"a READ after the WRITE recovered by R2T SNACK: status {check.status!r}, "
            + ("the data written" if check.data == new else "not the data written"),
            sent=[*sent, *check.sent],
            received=[*received, *check.shown()],
        )
    finally:
        await ctx.__aexit__(None, None, None)
