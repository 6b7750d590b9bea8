"""FullFeature.DataIn / DataOut / Residuals: Data-In sequencing within the declared
MaxRecvDataSegmentLength, status and residuals, and R2T/Data-Out sequencing across
ImmediateData x InitialR2T x FirstBurstLength x MaxBurstLength (RFC 7143 4.2.2.4,
11.4, 11.7, 11.8, 13.10-13.14)."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.probe import Outcome, full_feature
from iscsi_conformance.plugin import require, spec
from iscsi_conformance.scsi import cdb

BLOCK = 512


def _check_data_in(out: Any, expected_len: int, mrdsl: int) -> None:
    ins = out.data_ins
    require(
        ins,
        "R7143-11.7-1",
        f"no Data-In for a READ{f': {out.missing()}' if out.missing() else ''}",
        sent=out.sent,
        received=out.shown(),
    )
    sns = [p.datasn for p in ins]
    require(
        sns == list(range(len(ins))),
        "R7143-4.2.2.3-1",
        f"Data-In DataSN sequence {sns[:10]}...",
        sent=out.sent,
        received=out.shown(),
    )
    big = [len(p.data) for p in ins if len(p.data) > mrdsl]
    require(
        not big,
        "R7143-11.7-2",
        f"Data-In of {big[0] if big else 0} bytes exceeds our MaxRecvDataSegmentLength {mrdsl}",
        sent=out.sent,
        received=out.shown(),
    )
    tagged = [p for p in ins if not p.ack and p.ttt not in (0, 0xFFFFFFFF)]
    require(
        not tagged,
        "R7143-11.7-8",
        f"Data-In DataSN {tagged[0].datasn if tagged else 0} has A=0 but Target Transfer Tag "
        f"{tagged[0].ttt if tagged else 0:#010x}: the field is reserved without A "
        "(0xffffffff or 0 expected)",
        sent=out.sent,
        received=out.shown(),
    )
    pos = 0
    for p in ins:
        require(
            p.buffer_offset == pos,
            "R7143-11.7-1",
            f"Data-In offset {p.buffer_offset}, expected {pos}",
            sent=out.sent,
            received=out.shown(),
        )
        pos += len(p.data)
    require(
        pos == expected_len,
        "R7143-11.7-1",
        f"Data-In covered {pos} bytes of {expected_len}",
        sent=out.sent,
        received=out.shown(),
    )
    for p in ins:
        if p.status_present:
            require(
                p.final,
                "R7143-11.7-3",
                "S=1 on a Data-In without F=1",
                sent=out.sent,
                received=out.shown(),
            )


@pytest.mark.parametrize("mrdsl", [512, 4096, 8192, 65536])
@spec(
    "FullFeature.DataIn.WithinDeclaredLength",
    "RFC 7143 13.18",
    "RFC 7143 13.12",
    requirements=[
        "R7143-11.7-2",
        "R7143-13.12-2",
        "R7143-4.2.2.3-1",
        "R7143-11.7-1",
        "R7143-11.7-8",
    ],
)
async def test_data_in_within_mrdsl(target: Any, mrdsl: int) -> None:
    """A 128 KiB READ comes back in Data-In PDUs no larger than our declared MaxRecvDataSegmentLength."""
    async with full_feature(target, keys=[("MaxRecvDataSegmentLength", str(mrdsl))]) as ffp:
        blocks = 256
        out = await ffp.command(cdb.read10(0, blocks), read_length=blocks * BLOCK, lun=target.lun)
        require(
            out.status == 0,
            "RSBC3-5.16-1",
            f"READ ended with status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        _check_data_in(out, blocks * BLOCK, mrdsl)


@spec(
    "FullFeature.DataIn.DefaultWhenUndeclared",
    "RFC 7143 13.12",
    requirements=["R7143-13.12-1", "R7143-13.12-2", "R7143-11.7-8"],
)
async def test_data_in_default_mrdsl(target: Any) -> None:
    """An initiator that never declares MaxRecvDataSegmentLength receives at most the
    default, 8192 bytes, per PDU: a 32 KiB READ comes back whole in Data-In PDUs that
    each carry data and none larger than 8192 bytes."""
    async with full_feature(target, keys=[("MaxRecvDataSegmentLength", None)]) as ffp:
        blocks = 64
        out = await ffp.command(cdb.read10(0, blocks), read_length=blocks * BLOCK, lun=target.lun)
        require(
            not out.flood,
            "R7143-13.12-1",
            f"with MaxRecvDataSegmentLength undeclared (default 8192): {out.flood}",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            out.status == 0,
            "RSBC3-5.16-1",
            f"READ ended with status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        _check_data_in(out, blocks * BLOCK, 8192)


@spec("FullFeature.DataIn.StatusWithFinal", "RFC 7143 11.7.3", requirements=["R7143-11.7-3"])
async def test_status_only_with_final(target: Any) -> None:
    """Data-In carrying status (S=1) always has F=1, and no SCSI Response follows it.

    The READ must come back with its data and status first; a target that sends its
    status in a SCSI Response and never sets S (phase collapse is its choice, RFC 7143
    11.7.3) has nothing for this test to check, and the test says so by skipping."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.read10(0, 16), read_length=16 * BLOCK, lun=target.lun)
        require(
            out.status == 0 and out.data_ins,
            "R7143-11.7-1",
            f"a READ of 16 blocks ended with status {out.status!r} and "
            f"{len(out.data_ins)} Data-In PDUs" + (f"; {out.missing()}" if out.missing() else ""),
            sent=out.sent,
            received=out.shown(),
        )
        for p in out.data_ins:
            require(
                not p.status_present or p.final,
                "R7143-11.7-3",
                "S=1 without F=1",
                sent=out.sent,
                received=out.shown(),
            )
        if not out.data_ins[-1].status_present:
            pytest.skip("the target sent the status in a SCSI Response: no Data-In with S=1")
        extra = await ffp.recv(timeout=1)
        require(
            not isinstance(extra, P.ScsiResponse),
            "R7143-11.7-3",
            "a SCSI Response followed a Data-In with status",
            sent=out.sent,
            received=[*out.received, extra],
        )


@spec("FullFeature.Residuals.Underflow", "RFC 7143 11.4.5", requirements=["R7143-11.4-1"])
async def test_underflow_residual(target: Any) -> None:
    """READ of 1 block with ExpectedDataTransferLength of 2 blocks: U=1, residual 512."""
    async with full_feature(target) as ffp:
        out = await ffp.command(
            cdb.read10(0, 1), expected_length=2 * BLOCK, read_length=2 * BLOCK, lun=target.lun
        )
        r = out.response
        require(
            r is not None and out.status == 0,
            "R7143-11.4-1",
            f"READ failed ({out.status!r})",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            r.underflow and not r.overflow,
            "R7143-11.4-1",
            "U bit not set for an underflow",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            r.residual_count == BLOCK,
            "R7143-11.4-1",
            f"residual {r.residual_count}, expected {BLOCK}",
            sent=out.sent,
            received=out.shown(),
        )


@spec("FullFeature.Residuals.Overflow", "RFC 7143 11.4.5", requirements=["R7143-11.4-2"])
async def test_overflow_residual(target: Any) -> None:
    """READ of 2 blocks with ExpectedDataTransferLength of 1 block: O=1, residual 512, only 512 bytes sent."""
    async with full_feature(target) as ffp:
        out = await ffp.command(
            cdb.read10(0, 2), expected_length=BLOCK, read_length=BLOCK, lun=target.lun
        )
        r = out.response
        require(
            r is not None,
            "R7143-11.4-2",
            "no status for the READ",
            sent=out.sent,
            received=out.shown(),
        )
        sent_bytes = sum(len(p.data) for p in out.data_ins)
        require(
            sent_bytes <= BLOCK,
            "R7143-11.4-2",
            f"{sent_bytes} bytes of Data-In for an EDTL of {BLOCK}",
            sent=out.sent,
            received=out.shown(),
        )
        if out.status == 0:
            require(
                r.overflow and r.residual_count == BLOCK,
                "R7143-11.4-2",
                f"overflow not reported (O={r.overflow}, residual={r.residual_count})",
                sent=out.sent,
                received=out.shown(),
            )


COMBOS = list(itertools.product(["Yes", "No"], ["Yes", "No"], [8192, 65536], [16384, 262144]))


def _combo_id(c: tuple[str, str, int, int]) -> str:
    return f"Imm{c[0]}-Init{c[1]}-FB{c[2]}-MB{c[3]}"


@pytest.mark.parametrize(
    "immediate,initial_r2t,first_burst,max_burst", COMBOS, ids=[_combo_id(c) for c in COMBOS]
)
@spec(
    "FullFeature.DataOut.R2TSequencing",
    "RFC 7143 11.8",
    "RFC 7143 13.10",
    "RFC 7143 13.11",
    "RFC 7143 13.13",
    "RFC 7143 13.14",
    requirements=[
        "R7143-11.8-1",
        "R7143-11.8-3",
        "R7143-4.2.2.3-2",
        "RSBC3-5.16-1",
    ],
    dataloss=True,
)
async def test_r2t_sequencing(
    target: Any, immediate: str, initial_r2t: str, first_burst: int, max_burst: int
) -> None:
    """A 192 KiB WRITE: R2Ts within MaxBurstLength, numbered from 0, never asking for data
    already sent unsolicited; the data reads back identical."""
    keys = [
        ("ImmediateData", immediate),
        ("InitialR2T", initial_r2t),
        ("FirstBurstLength", str(first_burst)),
        ("MaxBurstLength", str(max_burst)),
    ]
    async with full_feature(target, keys=keys) as ffp:
        # A FirstBurstLength agreed above MaxBurstLength is checked on its own, by
        # Login.Keys.FirstBurstLength.NotAboveMaxBurstLength; here the smaller one binds.
        fb = min(ffp.first_burst, ffp.max_burst)
        blocks = 384
        lba = 1024
        payload = os.urandom(blocks * BLOCK)
        out = await ffp.command(cdb.write10(lba, blocks), data_out=payload, lun=target.lun)
        require(
            out.status == 0,
            "RSBC3-5.16-1",
            f"WRITE ended with status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        unsolicited = 0
        if ffp.immediate_data or not ffp.initial_r2t:
            unsolicited = sum(
                len(p.data) for p in out.sent if p.__class__.__name__ == "ScsiCommand"
            )
            unsolicited += sum(
                len(p.data)
                for p in out.sent
                if isinstance(p, P.ScsiDataOut) and p.ttt == 0xFFFFFFFF
            )
        r2ts = out.r2ts
        require(
            [r.r2tsn for r in r2ts] == list(range(len(r2ts))),
            "R7143-4.2.2.3-2",
            f"R2TSN sequence {[r.r2tsn for r in r2ts]}",
            sent=out.sent,
            received=out.shown(),
        )
        for r in r2ts:
            require(
                r.desired_data_transfer_length <= ffp.max_burst,
                "R7143-11.8-1",
                f"R2T asks for {r.desired_data_transfer_length} > MaxBurstLength {ffp.max_burst}",
                sent=out.sent,
                received=out.shown(),
            )
            require(
                r.buffer_offset >= unsolicited,
                "R7143-11.8-3",
                f"R2T at offset {r.buffer_offset} asks again for unsolicited data (first {unsolicited} bytes)",
                sent=out.sent,
                received=out.shown(),
            )
        require(
            unsolicited <= fb or not unsolicited,
            "R7143-13.14-2",
            f"we sent {unsolicited} unsolicited bytes",
            sent=out.sent,
        )
        back = await ffp.command(
            cdb.read10(lba, blocks), read_length=blocks * BLOCK, lun=target.lun
        )
        require(
            back.data == payload,
            "RSBC3-5.16-1",
            "the data read back differs from the data written",
            sent=back.sent,
            received=back.shown(),
        )


@spec(
    "FullFeature.DataOut.MaxOutstandingR2T",
    "RFC 7143 11.8",
    "RFC 7143 13.17",
    requirements=["R7143-11.8-2"],
    dataloss=True,
)
async def test_max_outstanding_r2t(target: Any) -> None:
    """With MaxOutstandingR2T=1, a target never has two R2Ts of one task unanswered."""
    keys = [
        ("ImmediateData", "No"),
        ("InitialR2T", "Yes"),
        ("MaxBurstLength", "16384"),
        ("MaxOutstandingR2T", "1"),
    ]
    async with full_feature(target, keys=keys) as ffp:
        blocks = 256
        cmd = P.ScsiCommand(
            final=True,
            write=True,
            lun=P.lun_to_field(target.lun),
            itt=0x900,
            attr=1,
            expected_data_transfer_length=blocks * BLOCK,
            cmdsn=ffp.take_cmdsn(),
            expstatsn=ffp.expstatsn,
            cdb=cdb.write10(2048, blocks),
        )
        await ffp.send(cmd)
        got = []
        while True:
            p = await ffp.recv(timeout=2)
            if p is None:
                break
            got.append(p)
        r2ts = [p for p in got if isinstance(p, P.R2T)]
        limit = int(ffp.probe.negotiated.get("MaxOutstandingR2T", "1"))
        require(
            1 <= len(r2ts) <= limit,
            "R7143-11.8-2",
            f"{len(r2ts)} R2Ts outstanding with MaxOutstandingR2T={limit}, then {ffp.no_answer}",
            sent=[cmd],
            received=[*got, *ffp.shown(None)],
        )


@spec(
    "FullFeature.DataOut.StatSNAcrossR2T",
    "RFC 7143 4.2.2.2",
    "RFC 7143 11.8",
    requirements=["R7143-4.2.2.2-1"],
    dataloss=True,
)
async def test_statsn_across_r2t(target: Any) -> None:
    """R2Ts carry no status: a solicited WRITE's SCSI Response takes the StatSN right
    after the previous status, however many R2Ts came in between."""
    keys = [("InitialR2T", "Yes"), ("ImmediateData", "No")]
    async with full_feature(target, keys=keys) as ffp:
        ping, first = await ffp.nop(b"")
        payload = os.urandom(32 * BLOCK)
        out = await ffp.command(cdb.write10(1024, 32), data_out=payload, lun=target.lun)
        require(
            isinstance(first, P.NopIn) and out.status == 0 and out.r2ts,
            "RSBC3-5.16-1",
            f"a ping then a solicited WRITE: ping answer {type(first).__name__}, "
            f"{len(out.r2ts)} R2T(s), status {out.status!r} ({out.outcome})",
            sent=[ping, *out.sent],
            received=[*ffp.shown(first), *out.shown()],
        )
        require(
            out.response.statsn == (first.statsn + 1) & 0xFFFFFFFF,
            "R7143-4.2.2.2-1",
            f"the ping's NOP-In carried StatSN {first.statsn}, the WRITE's status "
            f"{out.response.statsn} after {len(out.r2ts)} R2T(s); StatSN advances by one "
            "per status only",
            sent=[ping, *out.sent],
            received=[first, *out.received],
        )


@spec(
    "FullFeature.DataIn.SequenceWithinMaxBurst",
    "RFC 7143 11.7.1",
    "RFC 7143 13.13",
    requirements=["R7143-11.7-7"],
)
async def test_data_in_sequence_within_max_burst(target: Any) -> None:
    """A 16 KiB READ with MaxBurstLength=4096 and MaxRecvDataSegmentLength=1024: the
    Data-In PDUs come in sequences, each ended by F=1, none carrying more than the
    agreed MaxBurstLength (RFC 7143 11.7.1)."""
    keys = [
        ("MaxBurstLength", "4096"),
        ("FirstBurstLength", "4096"),
        ("MaxRecvDataSegmentLength", "1024"),
    ]
    async with full_feature(target, keys=keys) as ffp:
        blocks = 32
        out = await ffp.command(cdb.read10(0, blocks), read_length=blocks * BLOCK, lun=target.lun)
        require(
            out.status == 0 and out.data_ins,
            "RSBC3-5.16-1",
            f"READ ended with status {out.status!r} after {len(out.data_ins)} Data-In",
            sent=out.sent,
            received=out.shown(),
        )
        sequences, run = [], 0
        for p in out.data_ins:
            run += len(p.data)
            if p.final:
                sequences.append(run)
                run = 0
        require(
            run == 0,
            "R7143-11.7-7",
            f"the last {run} bytes of Data-In end without F=1",
            sent=out.sent,
            received=out.shown(),
        )
        big = [n for n in sequences if n > ffp.max_burst]
        require(
            not big,
            "R7143-11.7-7",
            f"Data-In sequences of {sequences} bytes (ended by F=1); the agreed "
            f"MaxBurstLength is {ffp.max_burst}",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.DataIn.ExpDataSNWithoutData",
    "RFC 7143 11.4.8",
    requirements=["R7143-11.4-4"],
)
async def test_expdatasn_zero_without_data(target: Any) -> None:
    """TEST UNIT READY moves no data: its SCSI Response carries ExpDataSN 0, as for
    every command the target sent no Data-In for (RFC 7143 11.4.8)."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        r = out.response
        require(
            isinstance(r, P.ScsiResponse),
            "R7143-11.4-4",
            f"no SCSI Response for TEST UNIT READY: {out.missing() or out.outcome}",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            r.expdatasn == 0,
            "R7143-11.4-4",
            f"ExpDataSN {r.expdatasn} in the response to a command with no Data-In",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.DataOut.R2TOffsetsInOrder",
    "RFC 7143 13.19",
    "RFC 7143 11.8",
    requirements=["R7143-13.19-2", "RSBC3-5.16-1"],
    dataloss=True,
)
async def test_r2t_offsets_in_order(target: Any) -> None:
    """With DataSequenceInOrder=Yes, a 16 KiB solicited WRITE under MaxBurstLength=4096
    is asked for by R2Ts at non-decreasing buffer offsets (RFC 7143 13.19), and ends GOOD."""
    keys = [
        ("ImmediateData", "No"),
        ("InitialR2T", "Yes"),
        ("MaxBurstLength", "4096"),
        ("FirstBurstLength", "4096"),
        ("MaxOutstandingR2T", "1"),
        ("DataSequenceInOrder", "Yes"),
    ]
    async with full_feature(target, keys=keys) as ffp:
        if ffp.probe.negotiated.get("DataSequenceInOrder", "Yes") != "Yes":
            pytest.skip("DataSequenceInOrder=Yes was not agreed")
        blocks = 32
        payload = os.urandom(blocks * BLOCK)
        out = await ffp.command(cdb.write10(3584, blocks), data_out=payload, lun=target.lun)
        require(
            out.status == 0 and out.r2ts,
            "RSBC3-5.16-1",
            f"a solicited WRITE: {len(out.r2ts)} R2T(s), status {out.status!r} ({out.outcome})",
            sent=out.sent,
            received=out.shown(),
        )
        offsets = [r.buffer_offset for r in out.r2ts]
        require(
            offsets == sorted(offsets),
            "R7143-13.19-2",
            f"R2T buffer offsets {offsets} go back with DataSequenceInOrder=Yes",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.DataOut.DataSNOutOfOrder",
    "RFC 7143 7.9",
    "RFC 7143 7.8",
    requirements=["R7143-7.9-1"],
    dataloss=True,
)
async def test_data_out_datasn_out_of_order(target: Any) -> None:
    """The one Data-Out answering an R2T carries DataSN 1 instead of 0: the target must
    take it as the sign of a lost earlier Data-Out (RFC 7143 7.9) and act on it as on a
    digest error (7.8): a Reject, a recovery R2T, an error status or the end of the
    connection, never a GOOD status as if nothing were missing, nor silence."""
    keys = [("ImmediateData", "No"), ("InitialR2T", "Yes")]
    async with full_feature(target, keys=keys) as ffp:
        cmd = P.ScsiCommand(
            final=True,
            write=True,
            attr=1,
            lun=P.lun_to_field(target.lun),
            itt=ffp.next_itt(),
            expected_data_transfer_length=BLOCK,
            cmdsn=ffp.take_cmdsn(),
            expstatsn=ffp.expstatsn,
            cdb=cdb.write10(3712, 1),
        )
        await ffp.send(cmd)
        r2t = await ffp.recv()
        require(
            isinstance(r2t, P.R2T) and r2t.itt == cmd.itt,
            "R7143-7.9-1",
            "no R2T for a write with ImmediateData=No and InitialR2T=Yes",
            sent=[cmd],
            received=ffp.shown(r2t),
        )
        payload = os.urandom(BLOCK)

        def data_out(datasn: int) -> Any:
            return P.ScsiDataOut(
                final=True,
                lun=cmd.lun,
                itt=cmd.itt,
                ttt=r2t.ttt,
                expstatsn=ffp.expstatsn,
                datasn=datasn,
                buffer_offset=0,
                data=payload,
            )

        wrong = data_out(1)
        await ffp.send(wrong)
        got = await ffp.drain(1.5)
        if not got and ffp.no_answer is not None and ffp.no_answer.outcome is Outcome.SILENT:
            # A target that ends the session may take a while to close: wait for it.
            got = await ffp.drain(5.0)
        gone = ffp.no_answer
        closed = gone is not None and gone.outcome is Outcome.CLOSED
        acted = closed
        for p in got:
            if isinstance(p, P.Reject | P.R2T):
                acted = True
            if isinstance(p, P.ScsiResponse) and p.itt == cmd.itt:
                require(
                    acted or p.status != 0,
                    "R7143-7.9-1",
                    "the only Data-Out of the R2T's sequence carried DataSN 1 (0 expected), "
                    "and the write completed GOOD with no Reject, no recovery R2T and no "
                    "error status",
                    sent=[cmd, wrong],
                    received=[r2t, *got],
                )
                acted = True
        require(
            acted,
            "R7143-7.9-1",
            "the only Data-Out of the R2T's sequence carried DataSN 1 (0 expected): no "
            f"Reject, no recovery R2T, no status and the connection stayed open ({gone})",
            sent=[cmd, wrong],
            received=[r2t, *got, *ffp.shown(None)],
        )
        if not closed and not any(isinstance(p, P.ScsiResponse) for p in got):
            # Leave no write waiting for data on the target: send what the R2T asked for.
            await ffp.send(data_out(0))
            for _ in range(8):
                p = await ffp.recv(timeout=2.0)
                if p is None or (isinstance(p, P.ScsiResponse) and p.itt == cmd.itt):
                    break
