"""Sans-IO SCSI (SPC-4, SBC-3): CDB builders and parsers, sense data, reservations,
and a direct-access logical unit that the reference target serves.

Only ``backing.py`` touches files; everything else is pure computation.
"""

from .backing import Backing, RamBacking, SparseFileBacking
from .codes import Asc, PrInAction, PrOutAction, PrType, ResetKind, ScsiOpcode, ScsiStatus, SenseKey
from .device import COMMANDS, CommandSpec, LogicalUnit, ScsiOutcome, encode_lun, report_luns_data
from .nexus import Nexus, decode_transport_id, encode_transport_id
from .reservations import AccessClass, Capabilities, PrOutResult, Registration, ReservationState
from .sense import SenseData, logical_unit_not_supported_sense, not_ready_lun_sense, sense_bytes

__all__ = [
    "COMMANDS",
    "AccessClass",
    "Asc",
    "Backing",
    "Capabilities",
    "CommandSpec",
    "LogicalUnit",
    "Nexus",
    "PrInAction",
    "PrOutAction",
    "PrOutResult",
    "PrType",
    "RamBacking",
    "Registration",
    "ReservationState",
    "ResetKind",
    "ScsiOpcode",
    "ScsiOutcome",
    "ScsiStatus",
    "SenseData",
    "SenseKey",
    "SparseFileBacking",
    "decode_transport_id",
    "encode_lun",
    "encode_transport_id",
    "logical_unit_not_supported_sense",
    "not_ready_lun_sense",
    "report_luns_data",
    "sense_bytes",
]
