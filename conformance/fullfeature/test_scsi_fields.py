"""SCSI fields a device server fills in by rule: the REPORT LUNS list length and the
REPORT LUNS answer while a unit attention is pending (SPC-4 6.33), and REQUEST SENSE
reporting a pending unit attention (SPC-4 6.39), and ACCESS CONTROL IN refused as an
invalid operation code by a logical unit without access controls (SPC-4 8.3.2)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iscsi_conformance.harness.probe import FullFeature, full_feature, random_isid
from iscsi_conformance.plugin import require, spec
from iscsi_conformance.scsi import cdb


@contextlib.asynccontextmanager
async def new_nexus(target: Any) -> AsyncIterator[FullFeature]:
    """A session with a fresh ISID (a new I_T nexus) whose unit attentions are left
    pending: full_feature() clears them with TEST UNIT READY before a test runs."""
    async with target.raw("default") as raw:
        probe = await target.login(raw, "default", (), isid=random_isid())
        raw.set_digests(
            header=probe.negotiated.get("HeaderDigest") == "CRC32C",
            data=probe.negotiated.get("DataDigest") == "CRC32C",
        )
        yield FullFeature(raw, probe)


@spec("FullFeature.Scsi.ReportLunsListLength", "SPC-4 6.33", requirements=["RSPC4-6.33-2"])
async def test_report_luns_list_length(target: Any) -> None:
    """LUN LIST LENGTH is eight bytes per LUN returned, whatever the allocation length."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.report_luns(4096), read_length=4096, lun=0)
        require(
            out.status == 0 and len(out.data) >= 8,
            "RSPC4-6.33-2",
            f"REPORT LUNS status {out.status!r}, {len(out.data)} bytes",
            sent=out.sent,
            received=out.shown(),
        )
        length = int.from_bytes(out.data[:4], "big")
        require(
            length % 8 == 0 and length == len(out.data) - 8,
            "RSPC4-6.33-2",
            f"LUN LIST LENGTH {length} for {len(out.data) - 8} bytes of LUN list",
            sent=out.sent,
            received=out.shown(),
        )
        short = await ffp.command(cdb.report_luns(16), read_length=16, lun=0)
        require(
            short.status == 0 and int.from_bytes(short.data[:4], "big") == length,
            "RSPC4-6.33-2",
            f"LUN LIST LENGTH with a 16-byte allocation: {short.data[:4].hex()}, "
            f"expected {length} (not altered by the allocation length)",
            sent=short.sent,
            received=short.shown(),
        )


@spec(
    "FullFeature.Scsi.ReportLunsDuringUnitAttention",
    "SPC-4 6.33",
    requirements=["RSPC4-6.33-3"],
)
async def test_report_luns_during_unit_attention(target: Any) -> None:
    """The first command of a new I_T nexus is REPORT LUNS: it completes even if a unit
    attention (e.g. POWER ON OCCURRED) is pending for that nexus."""
    async with new_nexus(target) as ffp:
        out = await ffp.command(cdb.report_luns(4096), read_length=4096, lun=target.lun)
        require(
            out.status == 0,
            "RSPC4-6.33-3",
            f"REPORT LUNS as a new nexus's first command: status {out.status!r}, "
            f"sense key {out.sense_key!r}",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "FullFeature.Scsi.RequestSenseReportsUnitAttention",
    "SPC-4 6.39",
    requirements=["RSPC4-6.39-4"],
)
async def test_request_sense_reports_unit_attention(target: Any) -> None:
    """REQUEST SENSE as a new nexus's first command: GOOD, and if a unit attention was
    pending its sense data is returned and the condition cleared, so the next command
    does not report one. A NO SENSE answer followed by a unit attention means the
    pending condition was withheld."""
    async with new_nexus(target) as ffp:
        rs = await ffp.command(cdb.request_sense(252), read_length=252, lun=target.lun)
        require(
            rs.status == 0 and len(rs.data) >= 14,
            "RSPC4-6.39-4",
            f"REQUEST SENSE: status {rs.status!r}, {len(rs.data)} bytes",
            sent=rs.sent,
            received=rs.shown(),
        )
        fixed = rs.data[0] & 0x7F in (0x70, 0x71)
        key = (rs.data[2] if fixed else rs.data[1]) & 0x0F
        if key == 0x06:
            return  # the pending unit attention was reported
        tur = await ffp.command(cdb.test_unit_ready(), lun=target.lun)
        require(
            not (tur.status == 0x02 and tur.sense_key == 0x06),
            "RSPC4-6.39-4",
            f"REQUEST SENSE returned sense key {key:#x}, then TEST UNIT READY reported the "
            f"unit attention {tur.asc!r} that was pending",
            sent=rs.sent + tur.sent,
            received=rs.shown() + tur.shown(),
        )


@spec(
    "FullFeature.Scsi.SenseLengthMatchesSegment",
    "RFC 7143 11.4.7",
    requirements=["R7143-11.4-3"],
)
async def test_sense_length_matches_segment(target: Any) -> None:
    """A CHECK CONDITION (INQUIRY with EVPD=0 and PAGE CODE 1) carries its sense data
    behind a 2-byte SenseLength that the data segment covers: SenseLength is not zero
    and the 2 bytes plus SenseLength do not run past the DataSegmentLength."""
    async with full_feature(target) as ffp:
        out = await ffp.command(cdb.inquiry(page=1), read_length=255, lun=target.lun)
        pdu = out.response
        data = bytes(getattr(pdu, "data", b"") or b"")
        require(
            out.status == 0x02 and len(data) >= 2,
            "R7143-11.4-3",
            f"status {out.status!r} with a {len(data)}-byte data segment, expected "
            "CHECK CONDITION with SenseLength and sense data",
            sent=out.sent,
            received=out.shown(),
        )
        length = int.from_bytes(data[:2], "big")
        require(
            0 < length <= len(data) - 2,
            "R7143-11.4-3",
            f"SenseLength {length} in a {len(data)}-byte data segment (it holds "
            f"{len(data) - 2} bytes after the SenseLength field)",
            sent=out.sent,
            received=out.shown(),
        )


ACCESS_CONTROL_IN = 0x86  # SPC-4 8.3.2, service action 00h REPORT ACL


@spec(
    "FullFeature.Scsi.AccessControlInWithoutAcc",
    "SPC-4 8.3.2",
    requirements=["RSPC4-8.3.2-1"],
)
async def test_access_control_in_without_acc(target: Any) -> None:
    """A logical unit whose standard INQUIRY data has ACC zero answers ACCESS CONTROL IN
    (86h, REPORT ACL) with CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE
    (20h/00h), never GOOD: it has no access controls coordinator to report on."""
    async with full_feature(target) as ffp:
        inq = await ffp.command(cdb.inquiry(), read_length=255, lun=target.lun)
        require(
            inq.status == 0 and len(inq.data) >= 6,
            "RSPC4-8.3.2-1",
            f"standard INQUIRY: status {inq.status!r}, {len(inq.data)} bytes",
            sent=inq.sent,
            received=inq.shown(),
        )
        if inq.data[5] & 0x40:
            pytest.skip("standard INQUIRY data has ACC set: ACCESS CONTROL IN is processed")
        request = bytes([ACCESS_CONTROL_IN, 0x00]) + bytes(8) + (512).to_bytes(4, "big") + bytes(2)
        out = await ffp.command(request, read_length=512, lun=target.lun)
        require(
            out.status == 0x02 and out.sense_key == 0x05 and out.asc == (0x20, 0x00),
            "RSPC4-8.3.2-1",
            f"ACCESS CONTROL IN with ACC zero: status {out.status!r}, sense key "
            f"{out.sense_key!r}, ASC/ASCQ {out.asc!r}; expected CHECK CONDITION, ILLEGAL "
            "REQUEST, INVALID COMMAND OPERATION CODE (20h/00h)",
            sent=out.sent,
            received=out.shown(),
        )
