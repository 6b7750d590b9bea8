"""Helpers for the SCSI layer tests: nexuses, a fresh logical unit, sense checks."""

from __future__ import annotations

from iscsi_conformance.scsi import cdb as C
from iscsi_conformance.scsi.backing import RamBacking
from iscsi_conformance.scsi.codes import Asc, ScsiStatus, SenseKey
from iscsi_conformance.scsi.device import LogicalUnit, ScsiOutcome
from iscsi_conformance.scsi.nexus import Nexus
from iscsi_conformance.scsi.sense import SenseData

TARGET = "iqn.2024-01.org.example:target"
BLOCKS = 4096  # 2 MiB with 512-byte blocks


def nexus(name: str, isid: int = 0x23D000001, tpgt: int = 1) -> Nexus:
    return Nexus.iscsi(f"iqn.2024-01.org.example:{name}", isid, TARGET, tpgt)


NODE_A = nexus("node-a")
NODE_B = nexus("node-b")
NODE_C = nexus("node-c")


def make_lu(**kw: object) -> LogicalUnit:
    return LogicalUnit(RamBacking(BLOCKS * 512), **kw)  # type: ignore[arg-type]


def attach(lu: LogicalUnit, *nexuses: Nexus) -> None:
    """Send TEST UNIT READY until GOOD, as an initiator does after login."""
    for n in nexuses:
        for _ in range(5):
            if lu.execute(n, C.test_unit_ready()).status == ScsiStatus.GOOD:
                break
        else:  # pragma: no cover - would be a bug
            raise AssertionError("unit attention never cleared")


def check(outcome: ScsiOutcome, key: int, code: Asc) -> SenseData:
    """Assert CHECK CONDITION with this sense key and ASC/ASCQ; return the sense."""
    assert outcome.status == ScsiStatus.CHECK_CONDITION, outcome
    sense = SenseData.parse(outcome.sense)
    assert (sense.sense_key, sense.asc, sense.ascq) == (key, code.asc, code.ascq), sense
    return sense


def illegal(outcome: ScsiOutcome, code: Asc = Asc.INVALID_FIELD_IN_CDB) -> SenseData:
    return check(outcome, SenseKey.ILLEGAL_REQUEST, code)


def good(outcome: ScsiOutcome) -> bytes:
    assert outcome.status == ScsiStatus.GOOD, (outcome, outcome.sense_data)
    return outcome.data
