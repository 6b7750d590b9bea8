"""FullFeature.Bidi: bidirectional commands (RFC 7143 11.3.4), through XDWRITEREAD(10).

A SCSI Command with R and W both set carries the write length in its Expected Data
Transfer Length and the read length in a Bidirectional Read Expected Data Transfer
Length AHS (11.2.2.4, 11.3.4). XDWRITEREAD(10) (SBC-3 5.48 in sbc3r22 numbering) is the
block command that needs both directions: the device server reads the addressed blocks,
XORs the Data-Out with them, writes the Data-Out unless DISABLE WRITE is one, and
returns the XOR as Data-In. The tests send it with InitialR2T=Yes and ImmediateData=No
offered, so that the write part normally comes by R2T and the read part by Data-In in
the same task, and check:

- the XOR result and the medium afterwards (the data verified both ways);
- the status in a SCSI Response, never in a Data-In (11.7.3);
- R2T and Data-In numbered as one sequence from 0 (4.2.2.4, 11.7.5, 11.8.2);
- the read part's overflow: at most the read length of Data-In, o with the Bidirectional
  Read Residual Count (11.4.5.2, 11.4.1, 11.4.6);
- a target that does not implement XDWRITEREAD (an optional SBC-3 command) ends it with
  CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE; one that takes no
  bidirectional command at all (its manifest says ``bidirectional = false``) refuses it
  with a Reject or a CHECK CONDITION. Never GOOD, never silence.

Which of these apply to a target is in its manifest (``bidirectional``, ``xdwriteread``),
so a target is never skipped without its manifest saying why.
"""

from __future__ import annotations

import os
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.probe import FullFeature, TaskOutcome, full_feature
from iscsi_conformance.plugin import require, spec, violation
from iscsi_conformance.scsi import cdb

BLOCK = 512
BLOCKS = 16  # 8 KiB: more than one Data-In PDU at a 4 KiB segment length
LBA = 1024
KEYS = [("InitialR2T", "Yes"), ("ImmediateData", "No")]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


async def _prepare(ffp: FullFeature, lun: int, old: bytes) -> None:
    """WRITE(10) the blocks' starting contents; a failure here is the harness's."""
    out = await ffp.command(cdb.write10(LBA, len(old) // BLOCK), lun=lun, data_out=old)
    if out.status != 0:
        raise violation(
            "harness",
            f"WRITE(10) of the starting contents: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )


async def _xdwriteread(
    ffp: FullFeature,
    lun: int,
    new: bytes,
    read_length: int,
    *,
    disable_write: bool = False,
) -> TaskOutcome:
    return await ffp.command(
        cdb.xdwriteread10(LBA, len(new) // BLOCK, disable_write=disable_write),
        lun=lun,
        data_out=new,
        bidi_read_length=read_length,
    )


def _answered(out: TaskOutcome, row: str, what: str) -> None:
    """A status must come: silence or a hang-up is never a pass (and says which)."""
    gone = out.missing()
    require(
        gone is None and out.response is not None,
        row,
        f"{what}: no status ({gone if gone is not None else 'a Reject'}; "
        f"{len(out.r2ts)} R2T, {len(out.data_ins)} Data-In)",
        sent=out.sent,
        received=out.shown(),
    )


async def _read_back(ffp: FullFeature, lun: int, n: int) -> TaskOutcome:
    return await ffp.command(cdb.read10(LBA, n // BLOCK), lun=lun, read_length=n)


@spec(
    "FullFeature.Bidi.XdWriteReadRoundTrip",
    "RFC 7143 11.3.4",
    "SBC-3 5.48",
    requirements=["RSBC3-5.48-1"],
    needs=("bidirectional", "xdwriteread"),
    dataloss=True,
)
async def test_xdwriteread_round_trip(target: Any) -> None:
    """A bidirectional XDWRITEREAD(10) ends GOOD, its Data-In is the XOR of the Data-Out
    with the blocks' former contents, and the blocks then hold the Data-Out."""
    old, new = os.urandom(BLOCKS * BLOCK), os.urandom(BLOCKS * BLOCK)
    async with full_feature(target, keys=KEYS) as ffp:
        await _prepare(ffp, target.lun, old)
        out = await _xdwriteread(ffp, target.lun, new, len(new))
        _answered(out, "RSBC3-5.48-1", "XDWRITEREAD(10) with R, W and the Bidirectional Read AHS")
        require(
            out.status == 0 and out.data == _xor(old, new),
            "RSBC3-5.48-1",
            f"XDWRITEREAD(10): status {out.status:#04x}, {len(out.data)} bytes of Data-In"
            + ("" if out.status else "; not the XOR of the Data-Out with the former blocks"),
            sent=out.sent,
            received=out.shown(),
        )
        back = await _read_back(ffp, target.lun, len(new))
        require(
            back.status == 0 and back.data == new,
            "RSBC3-5.48-1",
            f"after XDWRITEREAD(10) with DISABLE WRITE zero the blocks do not hold its Data-Out "
            f"(READ status {back.status!r}, {len(back.data)} bytes"
            + (", the former contents)" if back.data == old else ")"),
            sent=back.sent,
            received=back.shown(),
        )


@spec(
    "FullFeature.Bidi.DisableWrite",
    "SBC-3 5.48",
    requirements=["RSBC3-5.48-1"],
    needs=("bidirectional", "xdwriteread"),
    dataloss=True,
)
async def test_xdwriteread_disable_write(target: Any) -> None:
    """XDWRITEREAD(10) with DISABLE WRITE one returns the XOR and leaves the blocks as
    they were."""
    old, new = os.urandom(BLOCKS * BLOCK), os.urandom(BLOCKS * BLOCK)
    async with full_feature(target, keys=KEYS) as ffp:
        await _prepare(ffp, target.lun, old)
        out = await _xdwriteread(ffp, target.lun, new, len(new), disable_write=True)
        _answered(out, "RSBC3-5.48-1", "XDWRITEREAD(10) with DISABLE WRITE")
        require(
            out.status == 0 and out.data == _xor(old, new),
            "RSBC3-5.48-1",
            f"XDWRITEREAD(10) with DISABLE WRITE: status {out.status:#04x}, "
            f"{len(out.data)} bytes, XOR {'right' if out.data == _xor(old, new) else 'wrong'}",
            sent=out.sent,
            received=out.shown(),
        )
        back = await _read_back(ffp, target.lun, len(old))
        require(
            back.status == 0 and back.data == old,
            "RSBC3-5.48-1",
            "after XDWRITEREAD(10) with DISABLE WRITE one the blocks changed"
            + (" to its Data-Out" if back.data == new else ""),
            sent=back.sent,
            received=back.shown(),
        )


@spec(
    "FullFeature.Bidi.StatusInResponse",
    "RFC 7143 11.7.3",
    requirements=["R7143-11.7.3-1"],
    needs=("bidirectional", "xdwriteread"),
    dataloss=True,
)
async def test_bidi_status_in_scsi_response(target: Any) -> None:
    """The status of a bidirectional command comes in a SCSI Response PDU: no Data-In of
    the command has the S bit (RFC 7143 11.7.3, MUST)."""
    async with full_feature(target, keys=KEYS) as ffp:
        new = os.urandom(BLOCKS * BLOCK)
        out = await _xdwriteread(ffp, target.lun, new, len(new))
        _answered(out, "R7143-11.7.3-1", "XDWRITEREAD(10)")
        with_status = [p for p in out.data_ins if p.status_present]
        require(
            not with_status and isinstance(out.response, P.ScsiResponse),
            "R7143-11.7.3-1",
            "the status of a bidirectional command came in a Data-In PDU "
            f"(DataSN {with_status[0].datasn if with_status else '?'}) instead of a SCSI "
            "Response",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Bidi.SharedNumbering",
    "RFC 7143 4.2.2.4",
    "RFC 7143 11.7.5",
    "RFC 7143 11.8.2",
    requirements=["R7143-4.2.2.4-1"],
    needs=("bidirectional", "xdwriteread"),
    dataloss=True,
)
async def test_bidi_r2t_and_data_in_share_numbering(target: Any) -> None:
    """The R2Ts and the Data-In PDUs of a bidirectional command are numbered in one
    sequence: taken in the order they came, their R2TSN and DataSN run 0, 1, 2, ..."""
    async with full_feature(target, keys=KEYS) as ffp:
        new = os.urandom(BLOCKS * BLOCK)
        out = await _xdwriteread(ffp, target.lun, new, len(new))
        _answered(out, "R7143-4.2.2.4-1", "XDWRITEREAD(10)")
        itt = out.command.itt
        numbered = [
            ("R2TSN", p.r2tsn) if isinstance(p, P.R2T) else ("DataSN", p.datasn)
            for p in out.received
            if isinstance(p, P.R2T | P.ScsiDataIn) and p.itt == itt
        ]
        got = [n for _, n in numbered]
        require(
            got == list(range(len(got))),
            "R7143-4.2.2.4-1",
            "R2T and Data-In of a bidirectional command are not one sequence from 0: "
            + ", ".join(f"{k} {n}" for k, n in numbered),
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Bidi.ReadResidualOverflow",
    "RFC 7143 11.4.5.2",
    "RFC 7143 11.4.6",
    requirements=["R7143-11.4.1-1", "R7143-11.4.6-1"],
    needs=("bidirectional", "xdwriteread"),
    dataloss=True,
)
async def test_bidi_read_residual_overflow(target: Any) -> None:
    """With a Bidirectional Read EDTL of half the XOR data, the target sends at most that
    much Data-In and signals a read overflow: o (not u) with the Bidirectional Read
    Residual Count set to the bytes not sent (11.4.5.2 with the read part's SPDTL and
    EDTL, 11.4.1, 11.4.6)."""
    async with full_feature(target, keys=KEYS) as ffp:
        new = os.urandom(BLOCKS * BLOCK)
        short = len(new) // 2
        out = await _xdwriteread(ffp, target.lun, new, short)
        _answered(out, "R7143-11.4.1-1", "XDWRITEREAD(10) with a short read length")
        rsp = out.response
        require(
            isinstance(rsp, P.ScsiResponse) and rsp.status == 0,
            "R7143-11.4.1-1",
            "XDWRITEREAD(10) with a short read length did not end GOOD in a SCSI Response "
            f"(status {out.status!r})",
            sent=out.sent,
            received=out.shown(),
        )
        assert isinstance(rsp, P.ScsiResponse)
        sent_in = sum(len(p.data) for p in out.data_ins if p.itt == out.command.itt)
        require(
            sent_in <= short,
            "R7143-11.4.1-1",
            f"{sent_in} bytes of Data-In for a Bidirectional Read EDTL of {short}",
            sent=out.sent,
            received=out.shown(),
        )
        excess = len(new) - short
        flags = ("o" if rsp.bidi_overflow else "") + ("u" if rsp.bidi_underflow else "")
        require(
            flags == "o",
            "R7143-11.4.1-1",
            f"a {len(new)}-byte read part against a {short}-byte Bidirectional Read EDTL was "
            f"answered with {flags or 'neither o nor u'} set (a read overflow is o alone)",
            sent=out.sent,
            received=out.shown(),
        )
        require(
            rsp.bidi_residual_count == excess,
            "R7143-11.4.6-1",
            f"o set with Bidirectional Read Residual Count {rsp.bidi_residual_count}; "
            f"{excess} bytes did not fit the read length",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Bidi.XdWriteReadNotImplemented",
    "SBC-3 5.48",
    requirements=["RSBC3-5.48-2"],
    needs=("bidirectional", "xdwriteread=False"),
)
async def test_xdwriteread_not_implemented(target: Any) -> None:
    """A target that takes bidirectional commands but does not implement XDWRITEREAD(10)
    (its manifest: ``xdwriteread = false``) ends it with CHECK CONDITION, ILLEGAL
    REQUEST, INVALID COMMAND OPERATION CODE (20h/00h)."""
    async with full_feature(target, keys=KEYS) as ffp:
        # DISABLE WRITE: a target that runs it after all does not change the medium
        new = os.urandom(BLOCKS * BLOCK)
        out = await _xdwriteread(ffp, target.lun, new, len(new), disable_write=True)
        _answered(out, "RSBC3-5.48-2", "XDWRITEREAD(10) to a target without it")
        require(
            out.status == 0x02 and out.sense_key == 0x05 and out.asc == (0x20, 0x00),
            "RSBC3-5.48-2",
            f"XDWRITEREAD(10) where the manifest says it is not implemented: status "
            f"{out.status!r}, sense key {out.sense_key!r}, ASC/ASCQ {out.asc!r}; expected "
            "CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h)",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Bidi.RefusedWithoutSupport",
    "RFC 7143 11.17.1",
    "SBC-3 5.48",
    requirements=["RSBC3-5.48-2"],
    needs=("bidirectional=False",),
)
async def test_bidi_refused_without_support(target: Any) -> None:
    """A target that takes no bidirectional command (its manifest: ``bidirectional =
    false``) refuses one with a Reject or a CHECK CONDITION: never GOOD, never silence
    or a hang-up."""
    async with full_feature(target, keys=KEYS) as ffp:
        new = os.urandom(BLOCKS * BLOCK)
        out = await _xdwriteread(ffp, target.lun, new, len(new), disable_write=True)
        gone = out.missing()
        rejected = [p for p in out.rejects if p.data[:48] == P.bhs_of(out.command)[:48]]
        refused = bool(rejected) or out.status == 0x02
        require(
            gone is None and refused,
            "RSBC3-5.48-2",
            "a bidirectional XDWRITEREAD(10) to a target without bidirectional commands: "
            + (str(gone) if gone is not None else f"status {out.status!r}, no Reject of it"),
            sent=out.sent,
            received=out.shown(),
        )
        if rejected:
            # 7.3: the CmdSN of a rejected command is not considered received by the
            # target, and the initiator MUST plug the gap: the next command takes it.
            ffp.cmdsn = out.command.cmdsn
        # the session goes on after the refusal
        tur = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        require(
            tur.missing() is None,
            "RSBC3-5.48-2",
            f"after refusing the bidirectional command the target no longer answers: {tur.missing()}",
            sent=tur.sent,
            received=tur.shown(),
        )
