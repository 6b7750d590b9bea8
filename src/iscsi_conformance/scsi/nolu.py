"""The answers of a LUN that is not there (SPC-4 6.6, SAM-3 5.9.4), sans-IO.

Theory of operation: when a command names a LUN the initiator has no logical unit at,
the target's device server still answers three commands, and everything else gets
CHECK CONDITION with ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h):

- INQUIRY succeeds with peripheral qualifier 011b and device type 1Fh ("no device
  at this LUN", SPC-4 6.6.2, 6.4.2);
- REQUEST SENSE succeeds and reports LOGICAL UNIT NOT SUPPORTED as its parameter data
  (SPC-4 6.39), in the format the DESC bit asks for;
- REPORT LUNS through LUN 0 succeeds even when there is no LUN 0 (SPC-4 6.33): the
  well-known way for an initiator to find the LUNs at all.

``respond(cdb, lun, luns)`` is the whole of it; the target's transport sends the
outcome like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

from iscsi_conformance.core.codes import ScsiStatus
from iscsi_conformance.scsi.device import ScsiOutcome, report_luns_data
from iscsi_conformance.scsi.sense import logical_unit_not_supported_sense

INQUIRY = 0x12
REQUEST_SENSE = 0x03
REPORT_LUNS = 0xA0

#: Vendor, product and revision of the INQUIRY data of "no logical unit" (SPC-4 6.6.2).
_IDENTITY = b"ISCSICNF" + b"NO LOGICAL UNIT " + b"0001"


def inquiry_data(cdb: bytes) -> bytes:
    """INQUIRY data for a LUN with no logical unit: qualifier 011b, type 1Fh."""
    alloc = int.from_bytes(cdb[3:5], "big")
    if cdb[1] & 0x01:  # EVPD: the page header alone, no page contents
        return bytes([0x7F, cdb[2], 0, 0])[:alloc]
    return (bytes([0x7F, 0, 0x06, 0x02, 31, 0, 0, 0]) + _IDENTITY)[:alloc]


def request_sense_data(cdb: bytes) -> bytes:
    """REQUEST SENSE parameter data: ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED."""
    descriptor = bool(cdb[1] & 0x01)  # DESC (SPC-4 4.5.2)
    return logical_unit_not_supported_sense(descriptor=descriptor)[: cdb[4]]


def respond(cdb: bytes, lun: int, luns: Sequence[int]) -> ScsiOutcome:
    """The outcome of ``cdb`` sent to ``lun``, where no logical unit is; ``luns`` are
    the LUNs this initiator does see (for REPORT LUNS)."""
    op = cdb[0] if cdb else -1
    if op == REPORT_LUNS and lun == 0:
        alloc = int.from_bytes(cdb[6:10], "big")
        return ScsiOutcome(ScsiStatus.GOOD, data=report_luns_data(luns)[:alloc])
    if op == INQUIRY:
        return ScsiOutcome(ScsiStatus.GOOD, data=inquiry_data(cdb))
    if op == REQUEST_SENSE:
        return ScsiOutcome(ScsiStatus.GOOD, data=request_sense_data(cdb))
    return ScsiOutcome(ScsiStatus.CHECK_CONDITION, sense=logical_unit_not_supported_sense())


__all__ = ["inquiry_data", "request_sense_data", "respond"]
