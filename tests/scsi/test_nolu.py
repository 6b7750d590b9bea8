"""scsi.nolu: what a LUN with no logical unit answers (SPC-4 6.4.1, 6.6.2, 6.33, 6.39)."""

from __future__ import annotations

from iscsi_conformance.core.codes import ScsiStatus
from iscsi_conformance.core.pdu import field_to_lun
from iscsi_conformance.scsi import cdb as C
from iscsi_conformance.scsi import nolu
from iscsi_conformance.scsi.sense import SenseData


def test_report_luns_through_lun_0_without_lun_0() -> None:
    out = nolu.respond(C.report_luns(), 0, [3, 1])
    assert out.status == ScsiStatus.GOOD and [
        field_to_lun(v) for v in C.parse_report_luns(out.data)
    ] == [1, 3]


def test_report_luns_elsewhere_is_lun_not_supported() -> None:
    out = nolu.respond(C.report_luns(), 5, [1])
    assert out.status == ScsiStatus.CHECK_CONDITION
    sense = SenseData.parse(out.sense)
    assert (sense.sense_key, sense.asc, sense.ascq) == (0x05, 0x25, 0x00)


def test_inquiry_says_no_device_here() -> None:
    out = nolu.respond(C.inquiry(alloc=96), 7, [0])
    assert out.status == ScsiStatus.GOOD and out.data[0] == 0x7F  # qualifier 011b, type 1Fh


def test_request_sense_reports_lun_not_supported_in_both_formats() -> None:
    for desc, code in ((False, 0x70), (True, 0x72)):
        out = nolu.respond(C.request_sense(desc=desc), 7, [0])
        assert out.status == ScsiStatus.GOOD and out.data[0] == code
        sense = SenseData.parse(out.data)
        assert (sense.sense_key, sense.asc) == (0x05, 0x25)


def test_any_other_command_and_an_empty_cdb() -> None:
    for cdb in (C.test_unit_ready(), b""):
        assert nolu.respond(cdb, 2, [0]).status == ScsiStatus.CHECK_CONDITION
