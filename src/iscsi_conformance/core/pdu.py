"""iSCSI PDUs: one frozen dataclass per opcode, and a pure encoder/decoder.

Theory of operation
-------------------
A PDU on the wire (RFC 7143 11.2) is a 48-byte Basic Header Segment (BHS), optional
Additional Header Segments (AHS, ``TotalAHSLength`` 4-byte words), an optional header
digest, the data segment padded to 4 bytes, and an optional data digest.

Decoding runs in two phases (as hyperframe does): the fixed part of the BHS gives the
opcode and the lengths, so we know how many bytes the PDU needs (``NeedMore(n)`` until
they are there); then the opcode's class is looked up in a registry and its body
decoded. Encoders and decoders are *compiled* at import time from the field tables of
:mod:`.layout` into one ``struct.Struct`` and one small generated function per opcode:
the offsets stay declared once, as data, and the hot path runs no per-field loop
(``_compiled_source`` keeps the generated text for inspection). The common PDU is a
bare BHS (no AHS, no data): decoding it is one struct call for byte 0 and the lengths
and one generated function; strict encoding of it is one generated function that
checks the rules and packs. Anything else takes the general path, which gives the same
bytes (tests/core/test_pdu_fast_paths.py).

Decoding never rejects reserved bits or undefined codes: a receiver decides what to do
with them (:func:`violations`, :func:`.layout.check_reserved`). Encoding is strict by
default (it runs the same checks as :func:`validate`); ``strict=False`` together with a
:class:`Tamper` produces anything a negative test needs: wrong lengths, patched bytes,
bad padding, wrong digests, unknown opcodes.

Fields hold plain ``int`` / ``bool`` / ``bytes`` (never enum members) so that the
default dataclass ``repr`` is valid Python and a failing example can be replayed;
constructing a PDU from ``codes`` members converts them to ``int``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeAlias

from crc32c import crc32c as _crc32c

from iscsi_conformance.errors import DigestError, PDUFormatError

from .codes import (
    AHSType,
    AsyncEvent,
    LoginStage,
    LogoutReason,
    Opcode,
    RejectReason,
    SnackType,
    TaskAttribute,
    TmfFunction,
)
from .layout import (
    BHS_LENGTH,
    LAYOUTS,
    Direction,
    Field,
    FieldKind,
    Layout,
    Violation,
    check_reserved,
)

__all__ = [
    "DATA_IN_BHS",
    "ENUM_FIELDS",
    "MAX_DATA_SEGMENT_LENGTH",
    "PDU",
    "PDU_CLASSES",
    "R2T",
    "RULES",
    "SCSI_RESPONSE_BHS",
    "AsyncMessage",
    "LoginRequest",
    "LoginResponse",
    "LogoutRequest",
    "LogoutResponse",
    "NeedMore",
    "NopIn",
    "NopOut",
    "PDUDecoder",
    "Reject",
    "ScsiCommand",
    "ScsiDataIn",
    "ScsiDataOut",
    "ScsiResponse",
    "SnackRequest",
    "Tamper",
    "TaskManagementRequest",
    "TaskManagementResponse",
    "TextRequest",
    "TextResponse",
    "UnknownPDU",
    "Violation",
    "bhs_of",
    "check_reserved",
    "data_out_pdus",
    "decode",
    "decode_head",
    "encode",
    "field_to_lun",
    "frame_parts",
    "lun_to_field",
    "pdu_class",
    "validate",
    "violations",
    "well_formed",
]

_NONE_TAG = 0xFFFFFFFF  # the reserved tag value (RFC 7143 11.2.1.8 / 11.18.2)
MAX_DATA_SEGMENT_LENGTH = 0xFFFFFF  # 24-bit DataSegmentLength (RFC 7143 11.2.1.5)


# ============================================================================ classes


class PDU:
    """Base of every PDU class: the class-level facts and the two common fields.

    Not a dataclass itself, so that each subclass lists its fields in figure order
    with ``data`` and ``ahs`` last.
    """

    opcode: ClassVar[int]
    direction: ClassVar[Direction]
    is_request: ClassVar[bool]
    layout: ClassVar[Layout | None]
    data: bytes
    ahs: bytes

    def __post_init__(self) -> None:
        # Enum members -> int, so that the default repr stays valid Python.
        for name, value in self.__dict__.items():
            if type(value) is not int and type(value) is not bool and isinstance(value, int):
                object.__setattr__(self, name, int(value))


@dataclass(frozen=True, kw_only=True)
class NopOut(PDU):
    """NOP-Out (RFC 7143 11.18)."""

    immediate: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = _NONE_TAG
    cmdsn: int = 0
    expstatsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class ScsiCommand(PDU):
    """SCSI Command (RFC 7143 11.3).

    ``cdb`` longer than 16 bytes is carried in an Extended CDB AHS (11.2.2.3); a
    shorter one is zero-padded to 16 on construction. ``bidi_read_length`` (not
    ``None``) adds a Bidirectional Read Expected Data Transfer Length AHS (11.2.2.4).
    ``ahs`` holds any further AHS bytes verbatim.
    """

    immediate: bool = False
    final: bool = True  # W and F both 0 is an error (11.3.1)
    read: bool = False
    write: bool = False
    attr: int = 1  # SIMPLE
    lun: int = 0
    itt: int = 0
    expected_data_transfer_length: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    cdb: bytes = b""
    bidi_read_length: int | None = None
    data: bytes = b""
    ahs: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.cdb, bytes | bytearray | memoryview) and len(self.cdb) < 16:
            object.__setattr__(self, "cdb", bytes(self.cdb).ljust(16, b"\0"))


@dataclass(frozen=True, kw_only=True)
class TaskManagementRequest(PDU):
    """Task Management Function Request (RFC 7143 11.5)."""

    immediate: bool = False
    function: int = 1  # ABORT TASK
    lun: int = 0
    itt: int = 0
    referenced_task_tag: int = _NONE_TAG
    cmdsn: int = 0
    expstatsn: int = 0
    refcmdsn: int = 0
    expdatasn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class LoginRequest(PDU):
    """Login Request (RFC 7143 11.12); ``isid`` is the 48-bit ISID as an int."""

    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_min: int = 0
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class TextRequest(PDU):
    """Text Request (RFC 7143 11.10)."""

    immediate: bool = False
    final: bool = False
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = _NONE_TAG
    cmdsn: int = 0
    expstatsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class ScsiDataOut(PDU):
    """SCSI Data-Out (RFC 7143 11.7)."""

    final: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = _NONE_TAG
    expstatsn: int = 0
    datasn: int = 0
    buffer_offset: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class LogoutRequest(PDU):
    """Logout Request (RFC 7143 11.14)."""

    immediate: bool = False
    reason: int = 0
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    expstatsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class SnackRequest(PDU):
    """SNACK Request (RFC 7143 11.16); ``ttt`` is the TTT or SNACK Tag."""

    snack_type: int = 0
    lun: int = 0
    itt: int = _NONE_TAG
    ttt: int = _NONE_TAG
    expstatsn: int = 0
    begrun: int = 0
    runlength: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class NopIn(PDU):
    """NOP-In (RFC 7143 11.19)."""

    lun: int = 0
    itt: int = _NONE_TAG
    ttt: int = _NONE_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class ScsiResponse(PDU):
    """SCSI Response (RFC 7143 11.4).

    ``data`` is the raw data segment: SenseLength (2 bytes) + sense data + response
    data (11.4.7); see :attr:`sense`.
    """

    bidi_overflow: bool = False
    bidi_underflow: bool = False
    overflow: bool = False
    underflow: bool = False
    response: int = 0
    status: int = 0
    itt: int = 0
    snack_tag: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    expdatasn: int = 0
    bidi_residual_count: int = 0
    residual_count: int = 0
    data: bytes = b""
    ahs: bytes = b""

    @property
    def sense(self) -> bytes:
        """The sense data (RFC 7143 11.4.7.2), ``b""`` if there is none."""
        if len(self.data) < 2:
            return b""
        length = int.from_bytes(self.data[:2], "big")
        return self.data[2 : 2 + length]

    @property
    def response_data(self) -> bytes:
        """Whatever follows the sense data in the data segment (11.4.7)."""
        if len(self.data) < 2:
            return b""
        return self.data[2 + int.from_bytes(self.data[:2], "big") :]

    @staticmethod
    def sense_segment(sense: bytes, response_data: bytes = b"") -> bytes:
        """Build the data segment: SenseLength + sense + response data (11.4.7)."""
        return len(sense).to_bytes(2, "big") + sense + response_data


@dataclass(frozen=True, kw_only=True)
class TaskManagementResponse(PDU):
    """Task Management Function Response (RFC 7143 11.6)."""

    response: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class LoginResponse(PDU):
    """Login Response (RFC 7143 11.13)."""

    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_active: int = 0
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    status_class: int = 0
    status_detail: int = 0
    data: bytes = b""
    ahs: bytes = b""

    @property
    def status(self) -> int:
        """Status-Class << 8 | Status-Detail, comparable with ``codes.LoginStatus``."""
        return self.status_class << 8 | self.status_detail


@dataclass(frozen=True, kw_only=True)
class TextResponse(PDU):
    """Text Response (RFC 7143 11.11)."""

    final: bool = False
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = _NONE_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class ScsiDataIn(PDU):
    """SCSI Data-In (RFC 7143 11.7)."""

    final: bool = False
    ack: bool = False
    overflow: bool = False
    underflow: bool = False
    status_present: bool = False
    status: int = 0
    lun: int = 0
    itt: int = 0
    ttt: int = _NONE_TAG
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn: int = 0
    buffer_offset: int = 0
    residual_count: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class LogoutResponse(PDU):
    """Logout Response (RFC 7143 11.15)."""

    response: int = 0
    itt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    time2wait: int = 0
    time2retain: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class R2T(PDU):
    """Ready To Transfer (RFC 7143 11.8)."""

    lun: int = 0
    itt: int = 0
    ttt: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    r2tsn: int = 0
    buffer_offset: int = 0
    desired_data_transfer_length: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class AsyncMessage(PDU):
    """Asynchronous Message (RFC 7143 11.9); its ITT is always 0xffffffff."""

    lun: int = 0
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    async_event: int = 0
    async_vcode: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class Reject(PDU):
    """Reject (RFC 7143 11.17); ``data`` is the complete header of the rejected PDU."""

    reason: int = 4  # Protocol Error
    statsn: int = 0
    expcmdsn: int = 0
    maxcmdsn: int = 0
    datasn_r2tsn: int = 0
    data: bytes = b""
    ahs: bytes = b""


@dataclass(frozen=True, kw_only=True)
class UnknownPDU(PDU):
    """A PDU whose opcode RFC 7143 does not define; ``bhs`` is kept verbatim.

    Encoding writes ``bhs`` with bytes 4-7 (the lengths) recomputed from ``ahs`` and
    ``data``; strict encoding refuses it. The instance field ``opcode`` shadows the
    class attribute of the other PDU classes.
    """

    opcode: int = 0  # type: ignore[misc]
    bhs: bytes = bytes(BHS_LENGTH)
    data: bytes = b""
    ahs: bytes = b""

    @property
    def direction(self) -> Direction:  # type: ignore[override]
        """From the opcode range (RFC 7143 11.2.1.2)."""
        if self.opcode & 0x3F < 0x20:
            return Direction.INITIATOR_TO_TARGET
        return Direction.TARGET_TO_INITIATOR

    @property
    def is_request(self) -> bool:  # type: ignore[override]
        """True for the initiator opcode range."""
        return self.opcode & 0x3F < 0x20


UnknownPDU.layout = None

_CLASSES: tuple[type[PDU], ...] = (
    NopOut, ScsiCommand, TaskManagementRequest, LoginRequest, TextRequest, ScsiDataOut,
    LogoutRequest, SnackRequest, NopIn, ScsiResponse, TaskManagementResponse,
    LoginResponse, TextResponse, ScsiDataIn, LogoutResponse, R2T, AsyncMessage, Reject,
)  # fmt: skip

#: opcode -> PDU class (the decoder's registry).
PDU_CLASSES: dict[int, type[PDU]] = {}


def pdu_class(opcode: int) -> type[PDU] | None:
    """The class for a 6-bit opcode, ``None`` if undefined."""
    return PDU_CLASSES.get(opcode & 0x3F)


# ============================================================================ helpers


@dataclass(frozen=True)
class NeedMore:
    """Decoding needs ``n`` more bytes before the next PDU is complete."""

    n: int


@dataclass(frozen=True, kw_only=True)
class Tamper:
    """Deliberate damage applied by a non-strict :func:`encode` (for negative tests).

    ``opcode`` replaces the 6 opcode bits; ``data_segment_length`` and
    ``total_ahs_length`` replace the values written in the BHS; ``bhs_patch`` (byte
    offset -> byte value) is applied last to the BHS, before the header digest is
    computed; ``padding`` replaces the zero padding after the data; the digest values
    replace the computed ones (a digest is emitted only where the flag asks for it);
    ``extra`` is appended after everything.
    """

    bhs_patch: dict[int, int] = field(default_factory=dict)
    data_segment_length: int | None = None
    total_ahs_length: int | None = None
    padding: bytes | None = None
    header_digest_value: int | None = None
    data_digest_value: int | None = None
    opcode: int | None = None
    extra: bytes = b""


def lun_to_field(lun: int) -> int:
    """The 8-byte LUN field (as an int) for ``lun`` (SAM-5 4.7).

    LUNs below 256 use peripheral device addressing, up to 16383 flat space addressing.
    """
    if 0 <= lun < 256:
        return lun << 48
    if 256 <= lun < 0x4000:
        return (0x4000 | lun) << 48
    raise ValueError(f"LUN {lun} needs an addressing method other than peripheral/flat")


def field_to_lun(value: int) -> int:
    """The LUN number in an 8-byte LUN field (single level; SAM-5 4.7)."""
    method = value >> 62
    if method == 0:  # peripheral device addressing; bus identifier in bits 61..56
        return (value >> 48) & 0x3FFF
    if method == 1:  # flat space addressing
        return (value >> 48) & 0x3FFF
    raise ValueError(f"unsupported LUN address method {method} in 0x{value:016x}")


def data_out_pdus(
    data: bytes,
    offset: int,
    max_segment: int,
    *,
    itt: int,
    ttt: int,
    lun: int,
    expstatsn: int,
) -> list[ScsiDataOut]:
    """One Data-Out sequence (RFC 7143 11.7), as the PDUs an initiator sends.

    ``data`` is the whole sequence: the bytes at buffer offset ``offset`` that answer
    one R2T (``ttt`` its Target Transfer Tag) or that go unsolicited (``ttt``
    0xffffffff). They are cut into PDUs of at most ``max_segment`` bytes, the
    MaxRecvDataSegmentLength the target declared (RFC 7143 13.12); DataSN counts from 0
    within the sequence and F is set on its last PDU only. Empty ``data`` is one
    Data-Out with no data and F=1. ``lun`` is the 8-byte LUN field, as in the command.
    """
    step = max(1, max_segment)
    end = offset + len(data)
    pdus: list[ScsiDataOut] = []
    pos = offset
    while True:
        chunk = data[pos - offset : pos - offset + step]
        last = pos + len(chunk) >= end
        pdus.append(
            ScsiDataOut(
                final=last,
                lun=lun,
                itt=itt,
                ttt=ttt,
                expstatsn=expstatsn,
                datasn=len(pdus),
                buffer_offset=pos,
                data=chunk,
            )
        )
        pos += len(chunk)
        if last:
            return pdus


# ============================================================================ rules

#: (class, field) -> (the codes enum its values come from, section); used by strict checks
ENUM_FIELDS: dict[tuple[type[PDU], str], tuple[type[Any], str]] = {
    (ScsiCommand, "attr"): (TaskAttribute, "RFC 7143 11.3.1"),
    (TaskManagementRequest, "function"): (TmfFunction, "RFC 7143 11.5.1"),
    (LogoutRequest, "reason"): (LogoutReason, "RFC 7143 11.14.1"),
    (SnackRequest, "snack_type"): (SnackType, "RFC 7143 11.16.1"),
    (AsyncMessage, "async_event"): (AsyncEvent, "RFC 7143 11.9.1"),
    (Reject, "reason"): (RejectReason, "RFC 7143 11.17.1"),
    (LoginRequest, "csg"): (LoginStage, "RFC 7143 11.12.3"),
    (LoginRequest, "nsg"): (LoginStage, "RFC 7143 11.12.3"),
    (LoginResponse, "csg"): (LoginStage, "RFC 7143 11.12.3"),
    (LoginResponse, "nsg"): (LoginStage, "RFC 7143 11.12.3"),
}

# Cross-field rules of RFC 7143 section 11, declared once as data:
# (field, section, what is wrong, Python expression over ``p`` that is true when broken).
# The compiler turns them into the strict encoder's fast check and into the reporter
# behind violations().
_SENSE_OVERRUN = (
    "len(p.data) == 1 or (len(p.data) >= 2 and 2 + int.from_bytes(p.data[:2], 'big') > len(p.data))"
)
RULES: dict[type[PDU], list[tuple[str, str, str, str]]] = {
    LoginRequest: [
        ("cont", "RFC 7143 11.12", "C and T must not both be 1", "p.transit and p.cont"),
        ("nsg", "RFC 7143 6.3", "a transit must go to a later stage", "p.transit and p.nsg <= p.csg"),
    ],
    LoginResponse: [
        ("cont", "RFC 7143 11.13", "C and T must not both be 1", "p.transit and p.cont"),
        ("nsg", "RFC 7143 6.3", "a transit must go to a later stage", "p.transit and p.nsg <= p.csg"),
    ],
    TextRequest: [("cont", "RFC 7143 11.10.2", "F and C must not both be 1", "p.final and p.cont")],
    TextResponse: [("cont", "RFC 7143 11.11", "F and C must not both be 1", "p.final and p.cont")],
    ScsiCommand: [
        ("final", "RFC 7143 11.3.1", "W and F must not both be 0", "not p.write and not p.final"),
        ("expected_data_transfer_length", "RFC 7143 11.3.1",
         "must be 0 when neither R nor W is set",
         "not (p.read or p.write) and p.expected_data_transfer_length"),
        ("bidi_read_length", "RFC 7143 11.2.2.4",
         "the Bidirectional Read AHS is only for commands with R and W set",
         "p.bidi_read_length is not None and not (p.read and p.write)"),
        ("bidi_read_length", "RFC 7143 11.2.2.4", "must be an int in 0..2**32-1",
         "p.bidi_read_length is not None and not (type(p.bidi_read_length) is int "
         "and 0 <= p.bidi_read_length <= 0xFFFFFFFF)"),
        # TotalAHSLength is one byte: 1020 bytes of AHS at most (RFC 7143 11.2.1.4)
        ("cdb", "RFC 7143 11.2.2.3", "the CDB does not fit in the AHS",
         "len(p.cdb) + (8 if p.bidi_read_length is not None else 0) > 1032"),
        ("data", "RFC 7143 11.3", "immediate data needs the W bit", "p.data and not p.write"),
    ],
    ScsiDataIn: [
        ("status_present", "RFC 7143 11.7.3", "S requires F", "p.status_present and not p.final"),
        ("overflow", "RFC 7143 11.7.3", "O and U must not both be 1", "p.overflow and p.underflow"),
        ("status", "RFC 7143 11.7.3", "status, O and U are only valid with S",
         "not p.status_present and (p.overflow or p.underflow or p.status)"),
    ],
    ScsiResponse: [
        ("overflow", "RFC 7143 11.4.1", "O and U must not both be 1", "p.overflow and p.underflow"),
        ("bidi_overflow", "RFC 7143 11.4.1", "o and u must not both be 1",
         "p.bidi_overflow and p.bidi_underflow"),
        ("data", "RFC 7143 11.4.7", "SenseLength runs past the data segment", _SENSE_OVERRUN),
    ],
    NopOut: [
        ("immediate", "RFC 7143 11.18.1", "a NOP-Out with ITT 0xffffffff must be immediate",
         "p.itt == 0xFFFFFFFF and not p.immediate"),
    ],
    Reject: [
        ("data", "RFC 7143 11.17", "must carry the complete rejected header (48 bytes)",
         "len(p.data) < 48"),
    ],
}  # fmt: skip


def _all_rules(cls: type[PDU]) -> list[tuple[str, str, str, str]]:
    """Enum membership rules, then the cross-field rules, for ``cls``."""
    out = [
        (name, section, "undefined value", f"p.{name} not in _codes_{name}")
        for (owner, name), (_enum, section) in ENUM_FIELDS.items()
        if owner is cls
    ]
    return out + RULES.get(cls, [])


# ============================================================================ compiler

_Packer: TypeAlias = Callable[[Any, int, int], bytes]
_Unpacker: TypeAlias = Callable[[Any, int, bytes, bytes], PDU]
_Plain: TypeAlias = Callable[[Any], bytes | None]
_Check: TypeAlias = Callable[[Any], bool]

_STRUCT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q", 16: "16s"}
_SPLIT_CODES = {3: ("B", "H", 16), 6: ("H", "I", 32)}  # widths struct has no code for

#: generated source per class name, for inspection and debugging
_compiled_source: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class _Spec:
    """What the compiler produced for one opcode."""

    layout: Layout
    pack_strict: _Packer
    pack_loose: _Packer
    unpack: _Unpacker
    ok: _Check  # True if strict encoding may proceed (every check except widths)
    plain: _Plain  # strict BHS of a PDU without data or AHS; None: take the general path
    rules: tuple[tuple[str, str, str, _Check], ...]  # (field, section, message, broken)
    command: bool  # SCSI Command: AHS come from cdb / bidi_read_length


def _plan(lay: Layout, *, for_decode: bool) -> tuple[str, dict[int, str]]:
    """Struct format covering the units of ``lay`` and the expression naming each unit.

    A unit is a whole field, or the byte that holds a group of bit fields.
    """
    wanted = {FieldKind.VALUE} if for_decode else set(FieldKind) - {FieldKind.RESERVED}
    units: dict[int, int] = {}
    for f in lay.fields:
        if f.kind in wanted:
            units[f.offset] = 1 if f.mask else f.size
    fmt, pos, names = ">", 0, {}
    for off in sorted(units):
        size = units[off]
        if off > pos:
            fmt += f"{off - pos}x"
        if size in _STRUCT_CODES:
            fmt += _STRUCT_CODES[size]
            names[off] = f"u{off}"
        else:
            hi, lo, shift = _SPLIT_CODES[size]
            fmt += hi + lo
            names[off] = f"(u{off}h << {shift} | u{off}l)"
        pos = off + size
    if pos < BHS_LENGTH:
        fmt += f"{BHS_LENGTH - pos}x"
    return fmt, names


def _unit_vars(names: dict[int, str]) -> list[str]:
    out = []
    for off, expr in sorted(names.items()):
        out += [f"u{off}h", f"u{off}l"] if expr.startswith("(") else [expr]
    return out


def _bit_table(fields: list[Field]) -> tuple[Any, ...]:
    """What each of the 256 values of a byte means for the bit ``fields`` it holds.

    One tuple index then decodes them all, instead of a mask (and a compare) per field.
    """

    def decoded(byte: int, f: Field) -> int | bool:
        value = (byte & f.mask) >> f.shift
        return value != 0 if f.is_flag else value

    if len(fields) == 1:
        return tuple(decoded(byte, fields[0]) for byte in range(256))
    return tuple(tuple(decoded(byte, f) for f in fields) for byte in range(256))


class _Unknown(Exception):
    pass


class _PlainProbe:
    """A PDU as the strict hot path sees it: no data, no AHS, no Bidi AHS; else unknown."""

    data = ahs = b""
    bidi_read_length = None

    def __getattr__(self, name: str) -> Any:
        raise _Unknown(name)


def _may_break_plain(expr: str, env: dict[str, Any]) -> bool:
    """False if rule ``expr`` is false for every PDU the strict hot path encodes.

    Evaluated on :class:`_PlainProbe`: if it gives a false value without reading any
    other attribute, the rule only concerns data or AHS and the hot path skips it.
    """
    try:
        return bool(eval(expr, env, {"p": _PlainProbe()}))  # our own rule table
    except _Unknown:
        return True


def _pack_args(
    cls: type[PDU], lay: Layout, names: dict[int, str], *, strict: bool, lengths: str = ""
) -> tuple[str, list[str]]:
    """The arguments of an encoder's ``pack`` call, and the width checks strict needs.

    The lengths are the encoder's arguments ``tahs`` and ``dsl``, or ``lengths`` if given.
    """
    parts: dict[int, list[str]] = {off: [] for off in names}
    broken = []  # expressions true when strict encoding must refuse
    for f in lay.fields:
        if f.kind is FieldKind.RESERVED:
            continue
        if f.kind is FieldKind.OPCODE:
            if lay.opcode:
                parts[f.offset].append(str(int(lay.opcode)))
        elif f.kind is FieldKind.FIXED:
            parts[f.offset].append(str(f.fixed << f.shift))
        elif f.kind is FieldKind.TOTAL_AHS_LENGTH:
            parts[f.offset].append(lengths or "tahs")
        elif f.kind is FieldKind.DATA_SEGMENT_LENGTH:
            parts[f.offset].append(lengths or "dsl")
        elif f.is_flag:
            parts[f.offset].append(f"({f.mask} if p.{f.name} else 0)")
        elif f.mask:
            value = f"(p.{f.name} & {f.max_value})"
            parts[f.offset].append(f"({value} << {f.shift})" if f.shift else value)
            if strict and (cls, f.name) not in ENUM_FIELDS:
                # struct checks whole-byte widths; sub-byte ones are ours (a coded
                # field is checked by its membership rule instead)
                broken.append(f"not 0 <= p.{f.name} <= {f.max_value}")
        elif strict or f.is_bytes:
            parts[f.offset].append(f"p.{f.name}")
        else:
            parts[f.offset].append(f"(p.{f.name} & {f.max_value})")
    args = []
    for off, expr in sorted(names.items()):
        # Fields sharing a byte have disjoint bits (layout._coverage_check), so "+"
        # combines them like "|" does, and CPython runs "+" of two ints much faster.
        value = " + ".join(parts[off]) or "0"
        if expr.startswith("("):
            size = next(f.size for f in lay.fields if f.offset == off and not f.mask)
            shift = _SPLIT_CODES[size][2]
            if value.isdigit():  # a constant length
                args += [str(int(value) >> shift), str(int(value) & ((1 << shift) - 1))]
            else:
                args += [f"({value}) >> {shift}", f"({value}) & {(1 << shift) - 1}"]
        else:
            args.append(value)
    return ", ".join(args), broken


# A decoded PDU gets its instance dict whole, as one dict display: far cheaper than the
# frozen __init__ (one object.__setattr__ per field). This is the setter behind
# object.__setattr__(o, "__dict__", d), called without the attribute lookup.
_SET_DICT: Callable[[PDU, dict[str, Any]], None] = PDU.__dict__["__dict__"].__set__


def _compile(cls: type[PDU], lay: Layout) -> _Spec:
    env: dict[str, Any] = {"_new": object.__new__, "_set_dict": _SET_DICT, "_cls": cls}
    env["_EMPTY"] = b""
    lines: list[str] = []

    # ---- decoder: unpack the value units, compute every attribute, fill __dict__
    dfmt, dnames = _plan(lay, for_decode=True)
    env["_D"] = struct.Struct(dfmt)
    lines.append("def unpack(buf, pos, data, ahs):")
    lines.append(f"    {', '.join(_unit_vars(dnames))}, = _D.unpack_from(buf, pos)")
    items = []
    for off in sorted(dnames):
        group = [f for f in lay.value_fields if f.offset == off and f.mask]
        if group:
            env[f"_T{off}"] = _bit_table(group)
            targets = ", ".join(f.name for f in group) + ("," if len(group) > 1 else "")
            lines.append(f"    {targets} = _T{off}[{dnames[off]}]")
    for f in lay.value_fields:
        items.append(f"{f.name!r}: {f.name if f.mask else dnames[f.offset]}")
    if cls is ScsiCommand:
        items.append("'bidi_read_length': None")
    items += ["'data': data", "'ahs': ahs"]
    lines.append("    o = _new(_cls)")
    lines.append("    _set_dict(o, {" + ", ".join(items) + "})")
    lines.append("    return o")

    # ---- encoders: one expression per unit, OR-ing the fields that share it
    efmt, enames = _plan(lay, for_decode=False)
    env["_E"] = struct.Struct(efmt)
    strict_args, broken = _pack_args(cls, lay, enames, strict=True)
    loose_args, _ = _pack_args(cls, lay, enames, strict=False)
    lines.append("def pack_strict(p, tahs, dsl):")
    lines.append(f"    return _E.pack({strict_args})")
    lines.append("def pack_loose(p, tahs, dsl):")
    lines.append(f"    return _E.pack({loose_args})")

    # ---- strict check: widths of bit groups, AHS, data segment, then the rules
    structural = [
        "type(p.data) is not bytes or type(p.ahs) is not bytes or p.ahs",
        "p.data" if not lay.has_data else f"len(p.data) > {MAX_DATA_SEGMENT_LENGTH}",
    ]
    rules = _all_rules(cls)
    for (owner, name), (enum, _section) in ENUM_FIELDS.items():
        if owner is cls:
            env[f"_codes_{name}"] = frozenset(int(m) for m in enum)
    rule_exprs = [f"({expr})" for *_, expr in rules]
    lines.append("def ok(p):")
    lines.append(f"    return not ({' or '.join(broken + structural + rule_exprs)})")

    # ---- the hot path of strict encoding, so that the common PDU (a bare BHS) costs
    # one call: no data, no AHS, no broken rule -> the packed BHS. Identity with the
    # empty-bytes singleton (what the defaults and decode hold) is the cheapest exact
    # test; any other empty value takes the general path. Rules that only concern data
    # or AHS cannot fire here and are left out.
    simple = ["p.data is not _EMPTY", "p.ahs is not _EMPTY"]
    if cls is ScsiCommand:
        simple += ["len(p.cdb) > 16", "p.bidi_read_length is not None"]
    checks = simple + broken + [e for e in rule_exprs if _may_break_plain(e, env)]
    lines.append("def plain(p):")
    lines.append(f"    if {' or '.join(checks)}:")
    lines.append("        return None")
    lines.append(f"    return _E.pack({_pack_args(cls, lay, enames, strict=True, lengths='0')[0]})")
    for i, (*_, expr) in enumerate(rules):
        lines.append(f"def rule{i}(p):")
        lines.append(f"    return bool({expr})")

    source = "\n".join(lines) + "\n"
    _compiled_source[cls.__name__] = source
    exec(compile(source, f"<pdu codec {cls.__name__}>", "exec"), env)
    return _Spec(
        layout=lay,
        pack_strict=env["pack_strict"],
        pack_loose=env["pack_loose"],
        unpack=env["unpack"],
        ok=env["ok"],
        plain=env["plain"],
        rules=tuple((f, s, m, env[f"rule{i}"]) for i, (f, s, m, _) in enumerate(rules)),
        command=cls is ScsiCommand,
    )


_SPECS: dict[type[PDU], _Spec] = {}
_UNPACKERS: dict[int, _Unpacker] = {}
_PLAIN: dict[type[PDU], _Plain] = {}


def _register() -> None:
    for cls in _CLASSES:
        lay = LAYOUTS[_opcode_of(cls)]
        expected = {f.name for f in lay.value_fields} | {"data", "ahs"}
        if cls is ScsiCommand:
            expected.add("bidi_read_length")
        have = set(getattr(cls, "__dataclass_fields__", {}))
        if have != expected:  # the class and its figure must agree
            raise AssertionError(f"{cls.__name__}: fields {have ^ expected} disagree with layout")
        cls.opcode = lay.opcode
        cls.direction = lay.direction
        cls.is_request = lay.direction is Direction.INITIATOR_TO_TARGET
        cls.layout = lay
        spec = _compile(cls, lay)
        _SPECS[cls] = spec
        _UNPACKERS[int(lay.opcode)] = spec.unpack
        _PLAIN[cls] = spec.plain
        PDU_CLASSES[int(lay.opcode)] = cls


def _opcode_of(cls: type[PDU]) -> int:
    for lay in LAYOUTS.values():
        if lay.class_name == cls.__name__:
            return int(lay.opcode)
    raise AssertionError(f"no layout for {cls.__name__}")


_register()
#: the decoder of each value of BHS byte 0 (opcode, I bit and bit 7 need no masking)
_UNPACK_BY_BYTE0: tuple[_Unpacker | None, ...] = tuple(
    _UNPACKERS.get(b0 & 0x3F) for b0 in range(256)
)


# ============================================================================ validation


def violations(pdu: PDU) -> list[Violation]:
    """Every format rule ``pdu`` breaks (empty for a PDU fit to send).

    Covers field ranges, undefined codes, cross-field rules (:data:`RULES`), data and
    AHS that the opcode does not allow. Not session state (sequence numbers, tags).
    Flags are taken for their truth value.
    """
    spec = _SPECS.get(type(pdu))
    if spec is None:
        return [Violation("opcode", "RFC 7143 11.2.1.2", f"undefined opcode {pdu.opcode:#x}")]
    lay = spec.layout
    out: list[Violation] = []
    for f in lay.value_fields:
        value = getattr(pdu, f.name)
        if f.is_flag:
            continue
        if f.is_bytes:
            if not isinstance(value, bytes):
                out.append(Violation(f.name, lay.section, f"must be bytes, got {value!r}"))
        elif type(value) not in (int, bool) or not 0 <= value <= f.max_value:
            out.append(
                Violation(f.name, lay.section, f"{value!r} does not fit in 0..{f.max_value:#x}")
            )
    for name in ("data", "ahs"):
        if not isinstance(getattr(pdu, name), bytes):
            out.append(Violation(name, lay.section, f"must be bytes, got {getattr(pdu, name)!r}"))
    if out:
        return out  # the rules below assume well-typed fields
    if pdu.data and not lay.has_data:
        out.append(Violation("data", lay.section, "this PDU carries no data segment"))
    if len(pdu.data) > MAX_DATA_SEGMENT_LENGTH:
        out.append(Violation("data", "RFC 7143 11.2.1.5", "longer than 2**24 - 1 bytes"))
    if pdu.ahs:
        out.append(Violation("ahs", "RFC 7143 11.2.2", "no such AHS is defined for this PDU"))
    out += [Violation(f, s, m) for f, s, m, is_broken in spec.rules if is_broken(pdu)]
    return out


def well_formed(pdu: PDU) -> bool:
    """A quick ``violations(pdu) == []`` for the common case, where the answer is yes.

    True only if every check of :func:`violations` passes: the generated ``ok`` (bit
    group widths, data and AHS, the rules) and one strict pack (whole-byte widths and
    types). False means "ask :func:`violations`", not that a rule is broken. A passive
    judge calls it on every PDU that crosses (bridge.judge), where a field loop each
    time was a third of its cost (tests/core/test_pdu_fast_paths.py proves it agrees).
    """
    spec = _SPECS.get(type(pdu))
    if spec is None or not spec.ok(pdu):
        return False
    try:
        spec.pack_strict(pdu, 0, 0)
    except Exception:  # struct.error, or a field of the wrong type
        return False
    return True


def validate(pdu: PDU) -> None:
    """Raise :class:`PDUFormatError` (with the section) on the first broken rule."""
    problems = violations(pdu)
    if problems:
        raise PDUFormatError(
            f"{type(pdu).__name__}: " + "; ".join(f"{v.field}: {v.message}" for v in problems),
            section=problems[0].section,
            reject_reason=RejectReason.INVALID_PDU_FIELD,
        )


# ============================================================================ encode

_HDR = struct.Struct(">BxxxBBH")  # byte 0, TotalAHSLength, DataSegmentLength hi/lo
_HEAD = struct.Struct(">B3xI")  # byte 0, and bytes 4-7 (zero: neither AHS nor data)
_LE32 = struct.Struct("<I")  # digests go little-endian (RFC 3720 B.4), see digest.py
_AHS_HEAD = struct.Struct(">HBB")
_BIDI_AHS = struct.Struct(">HBBI")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def _command_ahs(p: ScsiCommand, strict: bool) -> bytes:
    """The AHS of a SCSI Command: Extended CDB, then Bidirectional Read (11.2.2)."""
    out = b""
    if len(p.cdb) > 16:
        ext = p.cdb[16:]
        # AHSLength counts the reserved byte too: CDB length - 15 (11.2.2.3)
        out += _AHS_HEAD.pack((len(ext) + 1) & 0xFFFF, AHSType.EXTENDED_CDB, 0) + ext
        out += _PAD[len(out) & 3]
    if p.bidi_read_length is not None:
        length = p.bidi_read_length if strict else p.bidi_read_length & 0xFFFFFFFF
        out += _BIDI_AHS.pack(5, AHSType.BIDIRECTIONAL_READ_LENGTH, 0, length)
    return out + p.ahs


def bhs_of(pdu: PDU) -> bytes:
    """The 48-byte BHS that :func:`encode` would send (lengths included)."""
    return encode(pdu, strict=False)[:BHS_LENGTH]


def encode(
    pdu: PDU,
    *,
    header_digest: bool = False,
    data_digest: bool = False,
    strict: bool = True,
    tamper: Tamper | None = None,
) -> bytes:
    """The bytes of ``pdu`` on the wire (RFC 7143 11.2).

    ``strict`` (the default) refuses a PDU that breaks a format rule, raising
    :class:`PDUFormatError`; ``strict=False`` encodes anything (values wider than their
    field are truncated) and applies ``tamper``. A data digest is sent only with a
    non-empty data segment (or tampered padding).
    """
    if strict and tamper is None:
        # The hot path: a BHS without AHS or data that breaks no rule, checked and packed
        # by one generated function; None (or an exception) sends it the general way.
        plain = _PLAIN.get(type(pdu))
        if plain is not None:
            try:
                bhs = plain(pdu)
            except (struct.error, TypeError, AttributeError):
                bhs = None  # the general path below reports it
            if bhs is not None:
                return bhs + _LE32.pack(_crc32c(bhs)) if header_digest else bhs
    spec = _SPECS.get(type(pdu))
    if not strict or spec is None:
        return _encode_loose(pdu, spec, header_digest, data_digest, strict, tamper)
    if tamper is not None:
        raise ValueError("tamper needs strict=False")
    try:
        good = spec.ok(pdu)
    except (TypeError, AttributeError):
        good = False
    if not good:
        validate(pdu)
    ahs = _command_ahs(pdu, True) if spec.command else b""  # type: ignore[arg-type]
    data = pdu.data
    try:
        bhs = spec.pack_strict(pdu, len(ahs) >> 2, len(data))
    except (struct.error, TypeError, AttributeError) as exc:
        validate(pdu)
        raise PDUFormatError(f"{type(pdu).__name__}: {exc}", section=spec.layout.section) from exc
    return _assemble(bhs, ahs, data, _PAD[len(data) & 3], header_digest, data_digest, None)


def _encode_loose(
    pdu: PDU,
    spec: _Spec | None,
    header_digest: bool,
    data_digest: bool,
    strict: bool,
    tamper: Tamper | None,
) -> bytes:
    if spec is None and (strict or not isinstance(pdu, UnknownPDU)):
        validate(pdu)  # raises: undefined opcode
    ahs = _command_ahs(pdu, False) if type(pdu) is ScsiCommand else pdu.ahs
    data = pdu.data
    tahs, dsl = ((len(ahs) + 3) >> 2) & 0xFF, len(data) & 0xFFFFFF
    if spec is None:
        raw = bytes(pdu.bhs).ljust(BHS_LENGTH, b"\0")[:BHS_LENGTH]  # type: ignore[attr-defined]
        bhs = raw[:4] + bytes([tahs]) + dsl.to_bytes(3, "big") + raw[8:]
    else:
        bhs = spec.pack_loose(pdu, tahs, dsl)
    padding = _PAD[len(data) & 3]
    if tamper is not None:
        bhs = _tamper_bhs(bhs, tamper)
        if tamper.padding is not None:
            padding = tamper.padding
    return _assemble(bhs, ahs, data, padding, header_digest, data_digest, tamper)


def _assemble(
    bhs: bytes,
    ahs: bytes,
    data: bytes,
    padding: bytes,
    header_digest: bool,
    data_digest: bool,
    tamper: Tamper | None,
) -> bytes:
    """BHS + AHS + header digest + data + padding + data digest (RFC 7143 11.2)."""
    header = bhs + ahs if ahs else bhs
    parts = [header]
    if header_digest:
        value = _crc32c(header)
        if tamper is not None and tamper.header_digest_value is not None:
            value = tamper.header_digest_value
        parts.append(_LE32.pack(value & 0xFFFFFFFF))
    if data or padding:
        parts.append(data)
        parts.append(padding)
        if data_digest:
            value = _crc32c(padding, _crc32c(data))  # padding is covered (RFC 7143 13.1)
            if tamper is not None and tamper.data_digest_value is not None:
                value = tamper.data_digest_value
            parts.append(_LE32.pack(value & 0xFFFFFFFF))
    if tamper is not None and tamper.extra:
        parts.append(tamper.extra)
    return b"".join(parts)


# The gathered fast path, for the two PDUs every SCSI command ends with: a BHS packed in
# one struct call, and the PDU as a list of buffers (the payload is not copied; the
# adapter writes the list with one gathering write). Same bytes as ``encode`` (tests/
# core/test_pdu_fast_paths.py): Data-In is RFC 7143 11.7, SCSI Response 11.4; bytes 4-7
# are TotalAHSLength (0) and DataSegmentLength, so pass the segment length there.
#: Data-In: opcode, flags, status, DSL, LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN,
#: DataSN, Buffer Offset, Residual Count.
DATA_IN_BHS = struct.Struct(">BBxBIQIIIIIIII")
#: SCSI Response: opcode, flags, response, status, DSL, reserved (Q), ITT, SNACK Tag,
#: StatSN, ExpCmdSN, MaxCmdSN, ExpDataSN, Bidi residual, Residual Count.
SCSI_RESPONSE_BHS = struct.Struct(">BBBBIQIIIIIIII")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def frame_parts(
    bhs: bytes, data: bytes | memoryview, header_digest: bool, data_digest: bool
) -> list[bytes | memoryview]:
    """BHS [+ header digest] + data + padding [+ data digest] (RFC 7143 11.2) as separate
    buffers, ``data`` not copied."""
    parts: list[bytes | memoryview] = [bhs]
    if header_digest:
        parts.append(_LE32.pack(_crc32c(bhs)))
    n = len(data)
    if n:
        parts.append(data)
        pad = _PAD[n & 3]
        if pad:
            parts.append(pad)
        if data_digest:
            parts.append(_LE32.pack(_crc32c(pad, _crc32c(data))))
    return parts


def _tamper_bhs(bhs: bytes, tamper: Tamper) -> bytes:
    out = bytearray(bhs)
    if tamper.opcode is not None:
        out[0] = (out[0] & 0xC0) | (tamper.opcode & 0x3F)
    if tamper.total_ahs_length is not None:
        out[4] = tamper.total_ahs_length & 0xFF
    if tamper.data_segment_length is not None:
        out[5:8] = (tamper.data_segment_length & 0xFFFFFF).to_bytes(3, "big")
    for offset, value in tamper.bhs_patch.items():
        out[offset] = value & 0xFF
    return bytes(out)


# ============================================================================ decode


def _absorb_command_ahs(pdu: ScsiCommand) -> ScsiCommand:
    """Lift Extended CDB / Bidirectional Read AHS out of ``pdu.ahs`` (11.2.2).

    Only a prefix that re-encodes to exactly the same bytes is lifted, so that decoding
    then encoding any byte string gives it back unchanged; anything else stays raw.
    """
    raw = pdu.ahs
    pos, ext, bidi = 0, b"", None
    for wanted in (AHSType.EXTENDED_CDB, AHSType.BIDIRECTIONAL_READ_LENGTH):
        if len(raw) - pos < 4:
            break
        length, kind, _ = _AHS_HEAD.unpack_from(raw, pos)
        end = pos + ((3 + length + 3) & ~3)
        if kind != wanted or end > len(raw) or length < 1:
            continue
        if kind == AHSType.EXTENDED_CDB:
            ext = raw[pos + 4 : pos + 3 + length]
        elif length == 5:
            bidi = int.from_bytes(raw[pos + 4 : pos + 8], "big")
        else:
            break
        pos = end
    if pos == 0:
        return pdu
    lifted = replace(pdu, cdb=pdu.cdb + ext, bidi_read_length=bidi, ahs=raw[pos:])
    if _command_ahs(lifted, False) != raw:
        return pdu
    return lifted


def decode(
    buf: bytes | bytearray | memoryview,
    *,
    header_digest: bool = False,
    data_digest: bool = False,
    max_data_segment_length: int | None = None,
    offset: int = 0,
) -> tuple[PDU, int] | NeedMore:
    """Decode the PDU at ``buf[offset:]``: ``(pdu, bytes consumed)`` or ``NeedMore``.

    Raises :class:`PDUFormatError` if the declared DataSegmentLength exceeds
    ``max_data_segment_length`` (checked as soon as the BHS is there, so a receiver
    never buffers more than it negotiated, RFC 7143 13.12) and :class:`DigestError`
    on a digest mismatch.
    """
    pos, max_dsl = offset, max_data_segment_length
    avail = len(buf) - pos
    if avail < BHS_LENGTH:
        return NeedMore(BHS_LENGTH - avail)
    b0, lengths = _HEAD.unpack_from(buf, pos)
    if not lengths:  # the hot path: a bare BHS, neither AHS nor data
        unpack = _UNPACK_BY_BYTE0[b0]
        if unpack is not None:
            if not header_digest:
                return unpack(buf, pos, b"", b""), BHS_LENGTH
            if avail >= BHS_LENGTH + 4 and _LE32.unpack_from(buf, pos + BHS_LENGTH)[0] == _crc32c(
                buf[pos : pos + BHS_LENGTH]
            ):
                return unpack(buf, pos, b"", b""), BHS_LENGTH + 4
            # short or a bad digest: the general path says which
    tahs, dsl = lengths >> 24, lengths & 0xFFFFFF
    if max_dsl is not None and dsl > max_dsl:
        raise PDUFormatError(
            f"DataSegmentLength {dsl} exceeds MaxRecvDataSegmentLength {max_dsl}",
            section="RFC 7143 13.12",
            reject_reason=RejectReason.PROTOCOL_ERROR,
            header=bytes(buf[pos : pos + BHS_LENGTH]),
        )
    hend = pos + BHS_LENGTH + 4 * tahs
    dstart = hend + 4 if header_digest else hend
    end = dstart + ((dsl + 3) & ~3)
    if data_digest and dsl:
        end += 4
    if len(buf) < end:
        return NeedMore(end - len(buf))

    if header_digest or tahs or dsl:
        # a context manager, so the view is released even when a digest error is raised
        with memoryview(buf) as mv:
            if header_digest:
                received = _LE32.unpack_from(buf, hend)[0]
                expected = _crc32c(mv[pos:hend])
                if received != expected:
                    raise DigestError(
                        "header digest mismatch",
                        which="header",
                        expected=expected,
                        received=received,
                        header=bytes(mv[pos : pos + BHS_LENGTH]),
                    )
            ahs = bytes(mv[pos + BHS_LENGTH : hend]) if tahs else b""
            if dsl:
                padded = dstart + ((dsl + 3) & ~3)
                data = bytes(mv[dstart : dstart + dsl])
                if data_digest:
                    received = _LE32.unpack_from(buf, padded)[0]
                    expected = _crc32c(mv[dstart:padded])
                    if received != expected:
                        raise DigestError(
                            "data digest mismatch",
                            which="data",
                            expected=expected,
                            received=received,
                            header=bytes(mv[pos : pos + BHS_LENGTH]),
                        )
            else:
                data = b""
    else:
        ahs = data = b""

    unpack = _UNPACKERS.get(b0 & 0x3F)
    if unpack is None:
        return UnknownPDU(opcode=b0 & 0x3F, bhs=bytes(buf[pos : pos + BHS_LENGTH]),
                          ahs=ahs, data=data), end - pos  # fmt: skip
    pdu = unpack(buf, pos, data, ahs)
    if ahs and b0 & 0x3F == Opcode.SCSI_COMMAND:
        pdu = _absorb_command_ahs(pdu)  # type: ignore[arg-type]
    return pdu, end - pos


#: stand-in data segments of decode_head(), by length (two lengths at most: a relay's
#: PDUs mostly come in one or two sizes)
_STAND_INS: dict[int, bytes] = {}


def decode_head(
    buf: bytes | bytearray | memoryview, *, header_digest: bool = False, offset: int = 0
) -> tuple[PDU, int, int] | None:
    """The PDU at ``buf[offset:]`` from its header alone: ``(pdu, header bytes, PDU
    bytes)``, for a relay that forwards a data segment it has no need to read.

    ``pdu.data`` is a stand-in: zero bytes, as long as the DataSegmentLength (a rule
    that reads only its length judges it as the real one). None when the header (with
    its digest) is not all in ``buf``, it has an AHS, the header digest is wrong (the
    full :func:`decode` says so), or the opcode is undefined: take :func:`decode` then.
    The data digest, if any, is the caller's: the PDU bytes counted here include none.
    """
    if len(buf) - offset < BHS_LENGTH:
        return None
    b0, lengths = _HEAD.unpack_from(buf, offset)
    if lengths >> 24:  # an AHS
        return None
    unpack = _UNPACKERS.get(b0 & 0x3F)
    if unpack is None:
        return None
    head = BHS_LENGTH + 4 if header_digest else BHS_LENGTH
    if len(buf) - offset < head:
        return None
    if header_digest:
        with memoryview(buf) as mv:
            good = _LE32.unpack_from(buf, offset + BHS_LENGTH)[0] == _crc32c(
                mv[offset : offset + BHS_LENGTH]
            )
        if not good:
            return None
    dsl = lengths & 0xFFFFFF
    data = _STAND_INS.get(dsl)
    if data is None:
        if len(_STAND_INS) >= 2:
            _STAND_INS.clear()
        data = _STAND_INS[dsl] = bytes(dsl)
    return unpack(buf, offset, data, b""), head, head + ((dsl + 3) & ~3)


class PDUDecoder:
    """Incremental decoder over a byte stream: ``feed()`` bytes, take ``next_pdu()``.

    ``header_digest`` / ``data_digest`` / ``max_data_segment_length`` are plain
    attributes; change them between PDUs (e.g. when login completes). A data digest
    error consumes the PDU before raising (the stream stays in step, RFC 7143 7.8);
    a header digest error consumes nothing, as framing can no longer be trusted.
    """

    def __init__(
        self,
        header_digest: bool = False,
        data_digest: bool = False,
        max_data_segment_length: int | None = None,
    ) -> None:
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.max_data_segment_length = max_data_segment_length
        self._buf = bytearray()
        self._pos = 0
        self._need = BHS_LENGTH  # bytes we must hold before decoding is worth trying

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as PDUs."""
        return len(self._buf) - self._pos

    def peek(self, n: int = BHS_LENGTH) -> bytes:
        """The first ``n`` bytes not yet returned (the next PDU's header, as sent)."""
        return bytes(self._buf[self._pos : self._pos + n])

    @property
    def wanted(self) -> int:
        """Bytes to feed before :meth:`next_pdu` may return the PDU begun: its header
        first, then the rest once :meth:`next_pdu` has read how long it is (0: ask it)."""
        return max(self._need - self.buffered, 0)

    def drop(self) -> None:
        """Forget the bytes buffered: a relay forwards the rest of that PDU unread."""
        self._buf.clear()
        self._pos = 0
        self._need = BHS_LENGTH

    def next_pdu(self) -> PDU | None:
        """The next complete PDU, or ``None`` if more bytes are needed."""
        if len(self._buf) - self._pos < self._need:
            return None
        try:
            result = decode(
                self._buf,
                header_digest=self.header_digest,
                data_digest=self.data_digest,
                max_data_segment_length=self.max_data_segment_length,
                offset=self._pos,
            )
        except DigestError as exc:
            if exc.which == "data":
                self._skip_current()
            raise
        if isinstance(result, NeedMore):
            self._need = self.buffered + result.n
            return None
        pdu, used = result
        self._pos += used
        self._need = BHS_LENGTH
        if self._pos > 65536 or self._pos == len(self._buf):
            del self._buf[: self._pos]  # compact rarely: deleting a prefix moves the rest
            self._pos = 0
        return pdu

    def _skip_current(self) -> None:
        _, tahs, hi, lo = _HDR.unpack_from(self._buf, self._pos)
        dsl = hi << 16 | lo
        size = BHS_LENGTH + 4 * tahs + (4 if self.header_digest else 0) + ((dsl + 3) & ~3)
        self._pos += size + (4 if self.data_digest and dsl else 0)
        self._need = BHS_LENGTH

    def __iter__(self) -> Iterator[PDU]:
        """Yield every complete PDU buffered so far."""
        while (pdu := self.next_pdu()) is not None:
            yield pdu
