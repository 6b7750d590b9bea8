"""Every iSCSI wire code, as an ``IntEnum`` citing the section that defines it.

Theory of operation: this module is a table and nothing else. The codec
(:mod:`iscsi_conformance.core.pdu`) decodes these fields as plain ``int`` so that a
peer sending an undefined value can still be decoded (and rejected by whoever decides
what to do about it); callers compare against these enums, which works because an
``IntEnum`` member equals its integer value. Sections are RFC 7143 unless stated.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AHSType",
    "AsyncEvent",
    "LoginStage",
    "LoginStatus",
    "LogoutReason",
    "LogoutResponseCode",
    "Opcode",
    "RejectReason",
    "ScsiResponseCode",
    "ScsiStatus",
    "SnackType",
    "TaskAttribute",
    "TmfFunction",
    "TmfResponse",
]


class Opcode(IntEnum):
    """PDU opcodes (RFC 7143 11.2.1.2); 0x00-0x1f initiator, 0x20-0x3f target."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MANAGEMENT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    SCSI_DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MANAGEMENT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    SCSI_DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F

    @property
    def from_initiator(self) -> bool:
        """True for initiator opcodes (RFC 7143 11.2.1.2: 0x00-0x1f)."""
        return self.value < 0x20


class AHSType(IntEnum):
    """Additional Header Segment types (RFC 7143 11.2.2.1)."""

    RESERVED = 0
    EXTENDED_CDB = 1
    BIDIRECTIONAL_READ_LENGTH = 2


class TaskAttribute(IntEnum):
    """SCSI Command ATTR field (RFC 7143 11.3.1; SAM task attributes)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class ScsiStatus(IntEnum):
    """SCSI status byte (RFC 7143 11.4.2; SAM-5 5.3)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    INTERMEDIATE = 0x10  # obsolete in SAM-5
    INTERMEDIATE_CONDITION_MET = 0x14  # obsolete in SAM-5
    RESERVATION_CONFLICT = 0x18
    COMMAND_TERMINATED = 0x22  # obsolete in SAM-5
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class ScsiResponseCode(IntEnum):
    """SCSI Response 'Response' field (RFC 7143 11.4.3); 0x80-0xff vendor specific."""

    COMMAND_COMPLETED_AT_TARGET = 0x00
    TARGET_FAILURE = 0x01


class TmfFunction(IntEnum):
    """Task Management function codes (RFC 7143 11.5.1; 9-12 from RFC 7144 4.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8
    QUERY_TASK = 9
    QUERY_TASK_SET = 10
    I_T_NEXUS_RESET = 11
    QUERY_ASYNCHRONOUS_EVENT = 12


class TmfResponse(IntEnum):
    """Task Management response codes (RFC 7143 11.6.1; 7 from RFC 7144 4.2)."""

    FUNCTION_COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED = 4
    FUNCTION_NOT_SUPPORTED = 5
    FUNCTION_AUTHORIZATION_FAILED = 6
    FUNCTION_SUCCEEDED = 7
    FUNCTION_REJECTED = 255


class AsyncEvent(IntEnum):
    """Asynchronous Message AsyncEvent codes (RFC 7143 11.9.1); 255 is vendor specific."""

    SCSI_ASYNC_EVENT = 0
    LOGOUT_REQUESTED = 1
    CONNECTION_DROP = 2
    SESSION_DROP = 3
    NEGOTIATION_REQUESTED = 4
    VENDOR_SPECIFIC = 255


class LogoutReason(IntEnum):
    """Logout Request reason codes (RFC 7143 11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_CONNECTION_FOR_RECOVERY = 2


class LogoutResponseCode(IntEnum):
    """Logout Response codes (RFC 7143 11.15.1)."""

    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class SnackType(IntEnum):
    """SNACK Request Type field (RFC 7143 11.16.1)."""

    DATA_R2T = 0
    STATUS = 1
    DATA_ACK = 2
    R_DATA = 3


class RejectReason(IntEnum):
    """Reject reason codes (RFC 7143 11.17.1)."""

    RESERVED = 0x01
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    NEGOTIATION_RESET = 0x0B  # deprecated in RFC 7143 (was RFC 3720 10.17.1)
    WAITING_FOR_LOGOUT = 0x0C


class LoginStatus(IntEnum):
    """Login Response status as one 16-bit value, class << 8 | detail (RFC 7143 11.13.5)."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTH_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302

    @property
    def status_class(self) -> int:
        """Status-Class byte: 0 success, 1 redirection, 2 initiator error, 3 target error."""
        return self.value >> 8

    @property
    def status_detail(self) -> int:
        """Status-Detail byte."""
        return self.value & 0xFF


class LoginStage(IntEnum):
    """CSG / NSG stage codes (RFC 7143 11.12.3); 2 is reserved."""

    SECURITY_NEGOTIATION = 0
    LOGIN_OPERATIONAL_NEGOTIATION = 1
    FULL_FEATURE_PHASE = 3
