"""Basic Header Segment layouts of every opcode, declared once, as data.

Theory of operation: each opcode of RFC 7143 section 11 has one :class:`Layout`, a
tuple of :class:`Field`\\ s covering all 48 bytes of its BHS: the named fields of the
RFC's figure, the fixed bits (the "1" in byte 1 of most PDUs, the 0xffffffff ITT of
Reject and Asynchronous Message) and every reserved area. Nothing else in the package
spells an offset: :mod:`.pdu` compiles its encoders and decoders from these tables,
:mod:`iscsi_conformance.fuzz.strategies` draws field values from them, and the report
annotates hex dumps with :func:`annotate`. :func:`check_reserved` is the strict check a
receiver may run: decoding itself never rejects reserved bits, the caller decides.

A field is either a whole run of bytes (``mask == 0``) or a group of bits inside one
byte (``mask`` says which); single-bit fields are flags (``bool`` on the PDU).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .codes import Opcode

__all__ = [
    "BHS_LENGTH",
    "LAYOUTS",
    "Direction",
    "Field",
    "FieldKind",
    "Layout",
    "Violation",
    "annotate",
    "check_reserved",
    "layout_for",
]

BHS_LENGTH = 48  # RFC 7143 11.2.1


class Direction(enum.Enum):
    """Who sends a PDU (RFC 7143 11.2.1.2: opcodes 0x00-0x1f come from initiators)."""

    INITIATOR_TO_TARGET = "initiator->target"
    TARGET_TO_INITIATOR = "target->initiator"


class FieldKind(enum.Enum):
    """What a BHS field is for; only ``VALUE`` fields are attributes of a PDU."""

    VALUE = "value"
    RESERVED = "reserved"  # sender sets 0 (RFC 7143 11.2.1.1 conventions)
    FIXED = "fixed"  # a constant the figure spells (e.g. the "1" of byte 1)
    OPCODE = "opcode"
    TOTAL_AHS_LENGTH = "total_ahs_length"
    DATA_SEGMENT_LENGTH = "data_segment_length"


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a BHS figure.

    ``offset``/``size`` are in bytes; ``mask`` selects bits within the single byte at
    ``offset`` (``size`` is then 1), 0 meaning the whole run of bytes. ``label`` is the
    RFC's own name for the field, ``name`` the PDU attribute (``""`` if none).
    """

    name: str
    offset: int
    size: int
    mask: int = 0
    label: str = ""
    kind: FieldKind = FieldKind.VALUE
    fixed: int = 0

    @property
    def shift(self) -> int:
        """Right shift that brings a masked field down to bit 0."""
        return (self.mask & -self.mask).bit_length() - 1 if self.mask else 0

    @property
    def is_flag(self) -> bool:
        """True for single-bit fields, which PDUs hold as ``bool``."""
        return self.mask != 0 and self.mask & (self.mask - 1) == 0

    @property
    def is_bytes(self) -> bool:
        """True for fields held as ``bytes`` (the 16-byte CDB)."""
        return self.mask == 0 and self.size > 8

    @property
    def max_value(self) -> int:
        """Largest value the field can hold."""
        if self.mask:
            return self.mask >> self.shift
        return (1 << (8 * self.size)) - 1

    def extract(self, bhs: bytes) -> int:
        """The field's value in ``bhs`` (as an int, also for byte strings)."""
        raw = int.from_bytes(bhs[self.offset : self.offset + self.size], "big")
        return (raw & self.mask) >> self.shift if self.mask else raw


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken format rule: which field, the RFC section, and what is wrong."""

    field: str
    section: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} [{self.section}]"


@dataclass(frozen=True, slots=True)
class Layout:
    """The BHS figure of one opcode.

    ``has_data``: a data segment is allowed; ``has_ahs``: AHS are defined for it.
    """

    opcode: Opcode
    class_name: str
    section: str
    direction: Direction
    fields: tuple[Field, ...]
    has_data: bool = True
    has_ahs: bool = False

    @property
    def value_fields(self) -> tuple[Field, ...]:
        """Fields that are attributes of the PDU class, in figure order."""
        return tuple(f for f in self.fields if f.kind is FieldKind.VALUE)

    def field(self, name: str) -> Field:
        """The field called ``name`` (attribute name or RFC label)."""
        for f in self.fields:
            if name in (f.name, f.label):
                return f
        raise KeyError(name)


# ----------------------------------------------------------------------- table helpers


def _v(name: str, offset: int, size: int, label: str, mask: int = 0) -> Field:
    return Field(name, offset, size, mask, label)


def _r(offset: int, size: int, mask: int = 0) -> Field:
    return Field("", offset, size, mask, "Reserved", FieldKind.RESERVED)


def _one(offset: int = 1, mask: int = 0x80, label: str = "1") -> Field:
    return Field(
        "", offset, 1, mask, label, FieldKind.FIXED, mask >> ((mask & -mask).bit_length() - 1)
    )


_RESERVED_ITT = Field("", 16, 4, 0, "0xffffffff", FieldKind.FIXED, 0xFFFFFFFF)


def _head(immediate: str) -> list[Field]:
    """Byte 0 and bytes 4-7, common to every opcode (RFC 7143 11.2.1).

    ``immediate`` is "value" (the I bit is a field), "one" (always 1, Login) or
    "reserved".
    """
    if immediate == "value":
        ibit = _v("immediate", 0, 1, "I", 0x40)
    elif immediate == "one":
        ibit = _one(0, 0x40, "I")
    else:
        ibit = _r(0, 1, 0x40)
    return [
        _r(0, 1, 0x80),
        ibit,
        Field("", 0, 1, 0x3F, "Opcode", FieldKind.OPCODE),
        Field("", 4, 1, 0, "TotalAHSLength", FieldKind.TOTAL_AHS_LENGTH),
        Field("", 5, 3, 0, "DataSegmentLength", FieldKind.DATA_SEGMENT_LENGTH),
    ]


def _layout(
    opcode: Opcode,
    class_name: str,
    section: str,
    immediate: str,
    fields: list[Field],
    *,
    has_data: bool = True,
    has_ahs: bool = False,
) -> Layout:
    all_fields = sorted(_head(immediate) + fields, key=lambda f: (f.offset, -f.mask & 0xFF))
    direction = Direction.INITIATOR_TO_TARGET if opcode < 0x20 else Direction.TARGET_TO_INITIATOR
    return Layout(opcode, class_name, section, direction, tuple(all_fields), has_data, has_ahs)


_LUN = _v("lun", 8, 8, "LUN")
_ITT = _v("itt", 16, 4, "Initiator Task Tag")
_TTT = _v("ttt", 20, 4, "Target Transfer Tag")
_CMDSN = _v("cmdsn", 24, 4, "CmdSN")
_EXPSTATSN = _v("expstatsn", 28, 4, "ExpStatSN")
_STATSN = _v("statsn", 24, 4, "StatSN")
_EXPCMDSN = _v("expcmdsn", 28, 4, "ExpCmdSN")
_MAXCMDSN = _v("maxcmdsn", 32, 4, "MaxCmdSN")
_LOGIN_FLAGS = [
    _v("transit", 1, 1, "T", 0x80),
    _v("cont", 1, 1, "C", 0x40),
    _r(1, 1, 0x30),
    _v("csg", 1, 1, "CSG", 0x0C),
    _v("nsg", 1, 1, "NSG", 0x03),
]

LAYOUTS: dict[int, Layout] = {
    lay.opcode: lay
    for lay in [
        _layout(
            Opcode.NOP_OUT, "NopOut", "RFC 7143 11.18", "value",
            [_one(), _r(1, 1, 0x7F), _r(2, 2), _LUN, _ITT, _TTT, _CMDSN, _EXPSTATSN,
             _r(32, 16)],
        ),
        _layout(
            Opcode.SCSI_COMMAND, "ScsiCommand", "RFC 7143 11.3", "value",
            [_v("final", 1, 1, "F", 0x80), _v("read", 1, 1, "R", 0x40),
             _v("write", 1, 1, "W", 0x20), _r(1, 1, 0x18), _v("attr", 1, 1, "ATTR", 0x07),
             _r(2, 2), _LUN, _ITT,
             _v("expected_data_transfer_length", 20, 4, "Expected Data Transfer Length"),
             _CMDSN, _EXPSTATSN, _v("cdb", 32, 16, "SCSI Command Descriptor Block (CDB)")],
            has_ahs=True,
        ),
        _layout(
            Opcode.TASK_MANAGEMENT_REQUEST, "TaskManagementRequest", "RFC 7143 11.5", "value",
            [_one(), _v("function", 1, 1, "Function", 0x7F), _r(2, 2), _LUN, _ITT,
             _v("referenced_task_tag", 20, 4, "Referenced Task Tag"), _CMDSN, _EXPSTATSN,
             _v("refcmdsn", 32, 4, "RefCmdSN"), _v("expdatasn", 36, 4, "ExpDataSN"),
             _r(40, 8)],
            has_data=False,
        ),
        _layout(
            Opcode.LOGIN_REQUEST, "LoginRequest", "RFC 7143 11.12", "one",
            [*_LOGIN_FLAGS, _v("version_max", 2, 1, "Version-max"),
             _v("version_min", 3, 1, "Version-min"), _v("isid", 8, 6, "ISID"),
             _v("tsih", 14, 2, "TSIH"), _ITT, _v("cid", 20, 2, "CID"), _r(22, 2), _CMDSN,
             _EXPSTATSN, _r(32, 16)],
        ),
        _layout(
            Opcode.TEXT_REQUEST, "TextRequest", "RFC 7143 11.10", "value",
            [_v("final", 1, 1, "F", 0x80), _v("cont", 1, 1, "C", 0x40), _r(1, 1, 0x3F),
             _r(2, 2), _LUN, _ITT, _TTT, _CMDSN, _EXPSTATSN, _r(32, 16)],
        ),
        _layout(
            Opcode.SCSI_DATA_OUT, "ScsiDataOut", "RFC 7143 11.7", "reserved",
            [_v("final", 1, 1, "F", 0x80), _r(1, 1, 0x7F), _r(2, 2), _LUN, _ITT, _TTT,
             _r(24, 4), _EXPSTATSN, _r(32, 4), _v("datasn", 36, 4, "DataSN"),
             _v("buffer_offset", 40, 4, "Buffer Offset"), _r(44, 4)],
        ),
        _layout(
            Opcode.LOGOUT_REQUEST, "LogoutRequest", "RFC 7143 11.14", "value",
            [_one(), _v("reason", 1, 1, "Reason Code", 0x7F), _r(2, 2), _r(8, 8), _ITT,
             _v("cid", 20, 2, "CID"), _r(22, 2), _CMDSN, _EXPSTATSN, _r(32, 16)],
            has_data=False,
        ),
        _layout(
            Opcode.SNACK_REQUEST, "SnackRequest", "RFC 7143 11.16", "reserved",
            [_one(), _r(1, 1, 0x70), _v("snack_type", 1, 1, "Type", 0x0F), _r(2, 2), _LUN,
             _ITT, _v("ttt", 20, 4, "Target Transfer Tag or SNACK Tag"), _r(24, 4),
             _EXPSTATSN, _r(32, 8), _v("begrun", 40, 4, "BegRun"),
             _v("runlength", 44, 4, "RunLength")],
            has_data=False,
        ),
        _layout(
            Opcode.NOP_IN, "NopIn", "RFC 7143 11.19", "reserved",
            [_one(), _r(1, 1, 0x7F), _r(2, 2), _LUN, _ITT, _TTT, _STATSN, _EXPCMDSN,
             _MAXCMDSN, _r(36, 12)],
        ),
        _layout(
            Opcode.SCSI_RESPONSE, "ScsiResponse", "RFC 7143 11.4", "reserved",
            [_one(), _r(1, 1, 0x60), _v("bidi_overflow", 1, 1, "o", 0x10),
             _v("bidi_underflow", 1, 1, "u", 0x08), _v("overflow", 1, 1, "O", 0x04),
             _v("underflow", 1, 1, "U", 0x02), _r(1, 1, 0x01),
             _v("response", 2, 1, "Response"), _v("status", 3, 1, "Status"), _r(8, 8), _ITT,
             _v("snack_tag", 20, 4, "SNACK Tag"), _STATSN, _EXPCMDSN, _MAXCMDSN,
             _v("expdatasn", 36, 4, "ExpDataSN"),
             _v("bidi_residual_count", 40, 4, "Bidirectional Read Residual Count"),
             _v("residual_count", 44, 4, "Residual Count")],
        ),
        _layout(
            Opcode.TASK_MANAGEMENT_RESPONSE, "TaskManagementResponse", "RFC 7143 11.6",
            "reserved",
            [_one(), _r(1, 1, 0x7F), _v("response", 2, 1, "Response"), _r(3, 1), _r(8, 8),
             _ITT, _r(20, 4), _STATSN, _EXPCMDSN, _MAXCMDSN, _r(36, 12)],
            has_data=False,
        ),
        _layout(
            Opcode.LOGIN_RESPONSE, "LoginResponse", "RFC 7143 11.13", "reserved",
            [*_LOGIN_FLAGS, _v("version_max", 2, 1, "Version-max"),
             _v("version_active", 3, 1, "Version-active"), _v("isid", 8, 6, "ISID"),
             _v("tsih", 14, 2, "TSIH"), _ITT, _r(20, 4), _STATSN, _EXPCMDSN, _MAXCMDSN,
             _v("status_class", 36, 1, "Status-Class"),
             _v("status_detail", 37, 1, "Status-Detail"), _r(38, 10)],
        ),
        _layout(
            Opcode.TEXT_RESPONSE, "TextResponse", "RFC 7143 11.11", "reserved",
            [_v("final", 1, 1, "F", 0x80), _v("cont", 1, 1, "C", 0x40), _r(1, 1, 0x3F),
             _r(2, 2), _LUN, _ITT, _TTT, _STATSN, _EXPCMDSN, _MAXCMDSN, _r(36, 12)],
        ),
        _layout(
            Opcode.SCSI_DATA_IN, "ScsiDataIn", "RFC 7143 11.7", "reserved",
            [_v("final", 1, 1, "F", 0x80), _v("ack", 1, 1, "A", 0x40), _r(1, 1, 0x38),
             _v("overflow", 1, 1, "O", 0x04), _v("underflow", 1, 1, "U", 0x02),
             _v("status_present", 1, 1, "S", 0x01), _r(2, 1), _v("status", 3, 1, "Status"),
             _LUN, _ITT, _TTT, _STATSN, _EXPCMDSN, _MAXCMDSN, _v("datasn", 36, 4, "DataSN"),
             _v("buffer_offset", 40, 4, "Buffer Offset"),
             _v("residual_count", 44, 4, "Residual Count")],
        ),
        _layout(
            Opcode.LOGOUT_RESPONSE, "LogoutResponse", "RFC 7143 11.15", "reserved",
            [_one(), _r(1, 1, 0x7F), _v("response", 2, 1, "Response"), _r(3, 1), _r(8, 8),
             _ITT, _r(20, 4), _STATSN, _EXPCMDSN, _MAXCMDSN, _r(36, 4),
             _v("time2wait", 40, 2, "Time2Wait"), _v("time2retain", 42, 2, "Time2Retain"),
             _r(44, 4)],
            has_data=False,
        ),
        _layout(
            Opcode.R2T, "R2T", "RFC 7143 11.8", "reserved",
            [_one(), _r(1, 1, 0x7F), _r(2, 2), _LUN, _ITT, _TTT, _STATSN, _EXPCMDSN,
             _MAXCMDSN, _v("r2tsn", 36, 4, "R2TSN"),
             _v("buffer_offset", 40, 4, "Buffer Offset"),
             _v("desired_data_transfer_length", 44, 4, "Desired Data Transfer Length")],
            has_data=False,
        ),
        _layout(
            Opcode.ASYNC_MESSAGE, "AsyncMessage", "RFC 7143 11.9", "reserved",
            [_one(), _r(1, 1, 0x7F), _r(2, 2), _LUN, _RESERVED_ITT, _r(20, 4), _STATSN,
             _EXPCMDSN, _MAXCMDSN, _v("async_event", 36, 1, "AsyncEvent"),
             _v("async_vcode", 37, 1, "AsyncVCode"), _v("parameter1", 38, 2, "Parameter1"),
             _v("parameter2", 40, 2, "Parameter2"), _v("parameter3", 42, 2, "Parameter3"),
             _r(44, 4)],
        ),
        _layout(
            Opcode.REJECT, "Reject", "RFC 7143 11.17", "reserved",
            [_one(), _r(1, 1, 0x7F), _v("reason", 2, 1, "Reason"), _r(3, 1), _r(8, 8),
             _RESERVED_ITT, _r(20, 4), _STATSN, _EXPCMDSN, _MAXCMDSN,
             _v("datasn_r2tsn", 36, 4, "DataSN/R2TSN"), _r(40, 8)],
        ),
    ]
}  # fmt: skip


def layout_for(opcode: int) -> Layout | None:
    """The layout of ``opcode`` (the 6-bit value), or ``None`` if RFC 7143 defines none."""
    return LAYOUTS.get(opcode & 0x3F)


def _coverage_check() -> None:
    # Guard against a typo in the tables: every bit of all 48 bytes is claimed once.
    for lay in LAYOUTS.values():
        seen = bytearray(BHS_LENGTH)
        for f in lay.fields:
            for i in range(f.offset, f.offset + f.size):
                bits = f.mask or 0xFF
                if seen[i] & bits:
                    raise AssertionError(f"{lay.class_name}: byte {i} claimed twice")
                seen[i] |= bits
        if seen != b"\xff" * BHS_LENGTH:
            raise AssertionError(f"{lay.class_name}: some BHS bits are not declared")


_coverage_check()


def annotate(bhs: bytes) -> list[tuple[int, int, str, int]]:
    """Annotate a BHS for a hex dump: ``(offset, length, field_name, value)`` per field.

    ``field_name`` is the PDU attribute, or the RFC label for structural fields
    (``Opcode``, ``TotalAHSLength``, ...), or ``"reserved"``. Byte strings (the CDB)
    are given as ints. An unknown opcode gives the common fields only.
    """
    if len(bhs) < BHS_LENGTH:
        raise ValueError(f"a BHS is {BHS_LENGTH} bytes, got {len(bhs)}")
    lay = layout_for(bhs[0])
    fields = lay.fields if lay is not None else tuple(_head("reserved"))
    out: list[tuple[int, int, str, int]] = []
    for f in fields:
        if f.kind is FieldKind.VALUE:
            name = f.name
        elif f.kind is FieldKind.RESERVED:
            name = "reserved"
        else:
            name = f.label
        out.append((f.offset, f.size, name, f.extract(bhs)))
    return out


def check_reserved(bhs: bytes) -> list[Violation]:
    """Reserved fields that are not zero and fixed fields with the wrong value.

    RFC 7143 11.2.1.1 (via its conventions in 11.2): senders set reserved fields to
    zero; a receiver may ignore them or treat them as an error. This function reports;
    the caller decides.
    """
    lay = layout_for(bhs[0])
    if lay is None:
        return [Violation("Opcode", "RFC 7143 11.2.1.2", f"undefined opcode 0x{bhs[0] & 0x3F:02x}")]
    out: list[Violation] = []
    for f in lay.fields:
        value = f.extract(bhs)
        where = f"byte {f.offset}" + (f" mask 0x{f.mask:02x}" if f.mask else f" size {f.size}")
        if f.kind is FieldKind.RESERVED and value != 0:
            out.append(Violation("reserved", lay.section, f"{where} is 0x{value:x}, must be 0"))
        elif f.kind is FieldKind.FIXED and value != f.fixed:
            out.append(
                Violation(f.label, lay.section, f"{where} is 0x{value:x}, must be 0x{f.fixed:x}")
            )
    return out
