"""SCSI wire codes (SPC-4, SBC-3, SAM-5), each an IntEnum citing where it is defined.

Additional sense codes are kept as one 16-bit value ``ASC << 8 | ASCQ`` (``Asc``)
so that a pair travels as one name; ``.asc`` / ``.ascq`` split it again.
"""

from __future__ import annotations

from enum import IntEnum

# The status byte (SAM-5 5.3.1) is defined once, with the iSCSI wire codes.
from iscsi_conformance.core.codes import ScsiStatus as ScsiStatus


class SenseKey(IntEnum):
    """Sense keys (SPC-4 4.5.6, Table 27)."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF


class Asc(IntEnum):
    """Additional sense code and qualifier as ``ASC << 8 | ASCQ`` (SPC-4 4.5.6, Table 28)."""

    NO_ADDITIONAL_SENSE = 0x0000
    LOGICAL_UNIT_NOT_READY_CAUSE_NOT_REPORTABLE = 0x0400
    LOGICAL_UNIT_NOT_READY_INITIALIZING_COMMAND_REQUIRED = 0x0402
    LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED = 0x0403
    WRITE_ERROR = 0x0C00
    INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT = 0x0E03
    UNRECOVERED_READ_ERROR = 0x1100
    MISCOMPARE_DURING_VERIFY_OPERATION = 0x1D00
    PARAMETER_LIST_LENGTH_ERROR = 0x1A00
    INVALID_COMMAND_OPERATION_CODE = 0x2000
    LBA_OUT_OF_RANGE = 0x2100
    INVALID_FIELD_IN_CDB = 0x2400
    LOGICAL_UNIT_NOT_SUPPORTED = 0x2500
    INVALID_FIELD_IN_PARAMETER_LIST = 0x2600
    PARAMETER_NOT_SUPPORTED = 0x2601
    PARAMETER_VALUE_INVALID = 0x2602
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = 0x2604
    WRITE_PROTECTED = 0x2700
    HARDWARE_WRITE_PROTECTED = 0x2701
    SOFTWARE_WRITE_PROTECTED = 0x2702
    POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED = 0x2900
    POWER_ON_OCCURRED = 0x2901
    SCSI_BUS_RESET_OCCURRED = 0x2902
    BUS_DEVICE_RESET_FUNCTION_OCCURRED = 0x2903
    I_T_NEXUS_LOSS_OCCURRED = 0x2907
    PARAMETERS_CHANGED = 0x2A00
    MODE_PARAMETERS_CHANGED = 0x2A01
    RESERVATIONS_PREEMPTED = 0x2A03
    RESERVATIONS_RELEASED = 0x2A04
    REGISTRATIONS_PREEMPTED = 0x2A05
    CAPACITY_DATA_HAS_CHANGED = 0x2A09
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = 0x2F00
    SAVING_PARAMETERS_NOT_SUPPORTED = 0x3900
    MEDIUM_NOT_PRESENT = 0x3A00
    MEDIUM_NOT_PRESENT_TRAY_CLOSED = 0x3A01
    MEDIUM_NOT_PRESENT_TRAY_OPEN = 0x3A02
    REPORTED_LUNS_DATA_HAS_CHANGED = 0x3F0E
    INSUFFICIENT_REGISTRATION_RESOURCES = 0x5504
    MEDIUM_REMOVAL_PREVENTED = 0x5302

    @property
    def asc(self) -> int:
        return self.value >> 8

    @property
    def ascq(self) -> int:
        return self.value & 0xFF


class ScsiOpcode(IntEnum):
    """Operation codes served or built here (SPC-4 Annex D / SBC-3 Table 12)."""

    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    FORMAT_UNIT = 0x04
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    RESERVE_6 = 0x16
    RELEASE_6 = 0x17
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    SEND_DIAGNOSTIC = 0x1D
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    WRITE_AND_VERIFY_10 = 0x2E
    VERIFY_10 = 0x2F
    PRE_FETCH_10 = 0x34
    SYNCHRONIZE_CACHE_10 = 0x35
    WRITE_BUFFER = 0x3B
    READ_BUFFER = 0x3C
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    LOG_SELECT = 0x4C
    LOG_SENSE = 0x4D
    XDWRITEREAD_10 = 0x53
    MODE_SELECT_10 = 0x55
    RESERVE_10 = 0x56
    RELEASE_10 = 0x57
    MODE_SENSE_10 = 0x5A
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    EXTENDED_COPY = 0x83
    RECEIVE_COPY_RESULTS = 0x84
    READ_16 = 0x88
    COMPARE_AND_WRITE = 0x89
    WRITE_16 = 0x8A
    ORWRITE_16 = 0x8B
    WRITE_AND_VERIFY_16 = 0x8E
    VERIFY_16 = 0x8F
    PRE_FETCH_16 = 0x90
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    WRITE_ATOMIC_16 = 0x9C
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3
    MAINTENANCE_OUT = 0xA4
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    WRITE_AND_VERIFY_12 = 0xAE
    VERIFY_12 = 0xAF


class ServiceActionIn16(IntEnum):
    """SERVICE ACTION IN(16) service actions (SBC-3 5.16, 5.8)."""

    READ_CAPACITY_16 = 0x10
    GET_LBA_STATUS = 0x12


class MaintenanceIn(IntEnum):
    """MAINTENANCE IN service actions (SPC-4 Table D.8)."""

    REPORT_TARGET_PORT_GROUPS = 0x0A
    REPORT_SUPPORTED_OPERATION_CODES = 0x0C
    REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS = 0x0D


class PrInAction(IntEnum):
    """PERSISTENT RESERVE IN service actions (SPC-4 6.15.1, Table 167)."""

    READ_KEYS = 0x00
    READ_RESERVATION = 0x01
    REPORT_CAPABILITIES = 0x02
    READ_FULL_STATUS = 0x03


class PrOutAction(IntEnum):
    """PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2, Table 180)."""

    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE_EXISTING_KEY = 0x06
    REGISTER_AND_MOVE = 0x07
    REPLACE_LOST_RESERVATION = 0x08


class PrType(IntEnum):
    """Persistent reservation types (SPC-4 6.15.3.4, Table 172)."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8

    @property
    def all_registrants(self) -> bool:
        """Every registrant is a reservation holder (SPC-4 5.9.10)."""
        return self in (
            PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
            PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        )

    @property
    def registrants_only(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
        )


class PrScope(IntEnum):
    """Persistent reservation scope (SPC-4 6.15.3.3): only LU_SCOPE is defined."""

    LU_SCOPE = 0x0


class PeripheralDeviceType(IntEnum):
    """INQUIRY peripheral device type (SPC-4 6.4.2, Table 146)."""

    DIRECT_ACCESS_BLOCK = 0x00
    UNKNOWN_OR_NO_DEVICE = 0x1F


class VpdPage(IntEnum):
    """Vital product data page codes (SPC-4 7.8.1, SBC-3 6.5)."""

    SUPPORTED_VPD_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    EXTENDED_INQUIRY_DATA = 0x86
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2


class ModePage(IntEnum):
    """Mode page codes (SPC-4 7.5.2, SBC-3 6.4)."""

    READ_WRITE_ERROR_RECOVERY = 0x01
    CACHING = 0x08
    CONTROL = 0x0A
    INFORMATIONAL_EXCEPTIONS_CONTROL = 0x1C
    ALL_PAGES = 0x3F


class PageControl(IntEnum):
    """MODE SENSE page control field (SPC-4 6.11.2, Table 162)."""

    CURRENT = 0
    CHANGEABLE = 1
    DEFAULT = 2
    SAVED = 3


class DesignatorType(IntEnum):
    """Device Identification VPD designator types (SPC-4 7.8.6.1, Table 596)."""

    VENDOR_SPECIFIC = 0x0
    T10_VENDOR_ID = 0x1
    EUI64 = 0x2
    NAA = 0x3
    RELATIVE_TARGET_PORT = 0x4
    TARGET_PORT_GROUP = 0x5
    LOGICAL_UNIT_GROUP = 0x6
    MD5_LOGICAL_UNIT = 0x7
    SCSI_NAME_STRING = 0x8


class CodeSet(IntEnum):
    """Designator code set (SPC-4 7.8.6.1, Table 594)."""

    BINARY = 0x1
    ASCII = 0x2
    UTF8 = 0x3


class Association(IntEnum):
    """Designator association (SPC-4 7.8.6.1, Table 595)."""

    LOGICAL_UNIT = 0x0
    TARGET_PORT = 0x1
    TARGET_DEVICE = 0x2


class ProtocolIdentifier(IntEnum):
    """Protocol identifier (SPC-4 7.6.1, Table 444); iSCSI is 5."""

    FIBRE_CHANNEL = 0x0
    SAS = 0x6
    ISCSI = 0x5


class VersionDescriptor(IntEnum):
    """INQUIRY version descriptors (SPC-4 6.4.2, Table 148)."""

    SAM_5 = 0x00A0
    ISCSI = 0x0960
    SPC_4 = 0x0460
    SBC_3 = 0x04C0


class ResetKind(IntEnum):
    """What reset a logical unit saw (SAM-5 6.3, 7.6, 7.11); selects the unit attention."""

    LOGICAL_UNIT_RESET = 1
    TARGET_WARM_RESET = 2
    TARGET_COLD_RESET = 3
    POWER_ON = 4


class ProvisioningStatus(IntEnum):
    """GET LBA STATUS provisioning status (SBC-3 5.8.2, Table 33)."""

    MAPPED = 0x0
    DEALLOCATED = 0x1
    ANCHORED = 0x2
