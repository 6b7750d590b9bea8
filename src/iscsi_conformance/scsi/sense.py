"""Sense data: fixed (70h/71h, SPC-4 4.5.3) and descriptor (72h/73h, SPC-4 4.5.2) formats.

Theory of operation: ``SenseData`` is the one in-memory form.  ``encode(descriptor=...)``
writes either format (the device server picks by the D_SENSE bit of the Control mode
page, SPC-4 7.5.8); ``SenseData.parse`` reads both.  Descriptors other than
Information (00h), Command-specific information (01h) and Sense-key specific (02h)
are kept raw in ``other_descriptors`` so nothing is lost on a round trip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import SCSIError
from .codes import Asc, SenseKey

FIXED_CURRENT = 0x70
FIXED_DEFERRED = 0x71
DESCRIPTOR_CURRENT = 0x72
DESCRIPTOR_DEFERRED = 0x73

FIXED_LENGTH = 18  # SPC-4 4.5.3: additional sense length 10 -> 18 bytes

DESC_INFORMATION = 0x00
DESC_COMMAND_SPECIFIC = 0x01
DESC_SENSE_KEY_SPECIFIC = 0x02


@dataclass(frozen=True)
class SenseData:
    """Decoded sense data (SPC-4 4.5).

    ``field_pointer`` (with ``cd`` and optionally ``bit_pointer``) fills the
    sense-key specific field for ILLEGAL REQUEST (SPC-4 4.5.2.4.2): byte offset into
    the CDB (``cd=True``) or parameter list (``cd=False``) of the offending field.
    ``sks_raw`` carries a non-field-pointer sense-key specific value (3 bytes).
    """

    sense_key: int
    asc: int = 0
    ascq: int = 0
    information: int | None = None
    command_specific: int | None = None
    field_pointer: int | None = None
    cd: bool = True
    bit_pointer: int | None = None
    sks_raw: bytes | None = None
    deferred: bool = False
    descriptor_format: bool = False
    ili: bool = False
    other_descriptors: tuple[bytes, ...] = field(default=())

    # ------------------------------------------------------------------ helpers
    @classmethod
    def of(cls, key: int, code: Asc, **kw: object) -> SenseData:
        """Build from a sense key and an ``Asc`` pair."""
        return cls(key, code.asc, code.ascq, **kw)  # type: ignore[arg-type]

    @property
    def asc_ascq(self) -> int:
        return self.asc << 8 | self.ascq

    def _sks_bytes(self) -> bytes | None:
        if self.field_pointer is not None:
            b0 = 0x80 | (0x40 if self.cd else 0)
            if self.bit_pointer is not None:
                b0 |= 0x08 | (self.bit_pointer & 7)
            return bytes([b0]) + struct.pack(">H", self.field_pointer & 0xFFFF)
        if self.sks_raw is not None:
            return bytes(self.sks_raw[:3]).ljust(3, b"\0")
        return None

    # ------------------------------------------------------------------ encode
    def encode(self, *, descriptor: bool | None = None) -> bytes:
        """Encode in fixed format, or descriptor format if ``descriptor`` (default:
        the format this object was parsed from)."""
        use_desc = self.descriptor_format if descriptor is None else descriptor
        return self._encode_descriptor() if use_desc else self._encode_fixed()

    def _encode_fixed(self) -> bytes:
        buf = bytearray(FIXED_LENGTH)
        info = self.information
        valid = info is not None and 0 <= info <= 0xFFFFFFFF
        buf[0] = (0x80 if valid else 0) | (FIXED_DEFERRED if self.deferred else FIXED_CURRENT)
        buf[2] = (0x20 if self.ili else 0) | (self.sense_key & 0x0F)
        if valid and info is not None:
            struct.pack_into(">I", buf, 3, info)
        buf[7] = FIXED_LENGTH - 8
        if self.command_specific is not None:
            struct.pack_into(">I", buf, 8, self.command_specific & 0xFFFFFFFF)
        buf[12] = self.asc
        buf[13] = self.ascq
        sks = self._sks_bytes()
        if sks is not None:
            buf[15:18] = sks
        return bytes(buf)

    def _encode_descriptor(self) -> bytes:
        descs = bytearray()
        if self.information is not None:
            descs += bytes([DESC_INFORMATION, 0x0A, 0x80, 0]) + struct.pack(
                ">Q", self.information & 0xFFFFFFFFFFFFFFFF
            )
        if self.command_specific is not None:
            descs += bytes([DESC_COMMAND_SPECIFIC, 0x0A, 0, 0]) + struct.pack(
                ">Q", self.command_specific
            )
        sks = self._sks_bytes()
        if sks is not None:
            descs += bytes([DESC_SENSE_KEY_SPECIFIC, 0x06, 0, 0]) + sks + b"\0"
        for raw in self.other_descriptors:
            descs += raw
        head = bytes(
            [
                DESCRIPTOR_DEFERRED if self.deferred else DESCRIPTOR_CURRENT,
                self.sense_key & 0x0F,
                self.asc,
                self.ascq,
                0,
                0,
                0,
                min(len(descs), 0xF4),
            ]
        )
        return head + bytes(descs[:0xF4])

    # ------------------------------------------------------------------ parse
    @classmethod
    def parse(cls, data: bytes) -> SenseData:
        """Parse fixed or descriptor sense data; raises ``ValueError`` if malformed."""
        if len(data) < 2:
            raise ValueError("sense data shorter than 2 bytes")
        code = data[0] & 0x7F
        if code in (FIXED_CURRENT, FIXED_DEFERRED):
            return cls._parse_fixed(data, deferred=code == FIXED_DEFERRED)
        if code in (DESCRIPTOR_CURRENT, DESCRIPTOR_DEFERRED):
            return cls._parse_descriptor(data, deferred=code == DESCRIPTOR_DEFERRED)
        raise ValueError(f"unknown sense response code {code:#04x}")

    @staticmethod
    def _split_sks(sks: bytes) -> dict[str, object]:
        if len(sks) < 3 or not sks[0] & 0x80:
            return {}
        return {"sks_raw": bytes(sks[:3])}

    @classmethod
    def _parse_fixed(cls, data: bytes, *, deferred: bool) -> SenseData:
        buf = bytes(data).ljust(FIXED_LENGTH, b"\0")
        key = buf[2] & 0x0F
        information = struct.unpack_from(">I", buf, 3)[0] if buf[0] & 0x80 else None
        addl = buf[7]
        cmd_specific = struct.unpack_from(">I", buf, 8)[0] if addl >= 4 else None
        sks = buf[15:18]
        kw: dict[str, object] = {}
        if sks[0] & 0x80:
            if key in (SenseKey.ILLEGAL_REQUEST,):
                kw = {
                    "field_pointer": struct.unpack_from(">H", sks, 1)[0],
                    "cd": bool(sks[0] & 0x40),
                    "bit_pointer": (sks[0] & 7) if sks[0] & 0x08 else None,
                }
            else:
                kw = {"sks_raw": bytes(sks)}
        return cls(
            key,
            buf[12] if addl >= 5 else 0,
            buf[13] if addl >= 6 else 0,
            information=information,
            command_specific=cmd_specific or None,
            deferred=deferred,
            descriptor_format=False,
            ili=bool(buf[2] & 0x20),
            **kw,  # type: ignore[arg-type]
        )

    @classmethod
    def _parse_descriptor(cls, data: bytes, *, deferred: bool) -> SenseData:
        buf = bytes(data).ljust(8, b"\0")
        key = buf[1] & 0x0F
        end = min(len(buf), 8 + buf[7])
        pos = 8
        information: int | None = None
        cmd_specific: int | None = None
        kw: dict[str, object] = {}
        others: list[bytes] = []
        while pos + 2 <= end:
            dtype, dlen = buf[pos], buf[pos + 1]
            body = buf[pos : pos + 2 + dlen]
            if len(body) < 2 + dlen:
                raise ValueError("truncated sense descriptor")
            if dtype == DESC_INFORMATION and dlen >= 0x0A:
                information = struct.unpack_from(">Q", body, 4)[0]
            elif dtype == DESC_COMMAND_SPECIFIC and dlen >= 0x0A:
                cmd_specific = struct.unpack_from(">Q", body, 4)[0]
            elif dtype == DESC_SENSE_KEY_SPECIFIC and dlen >= 6:
                sks = body[4:7]
                if sks[0] & 0x80 and key == SenseKey.ILLEGAL_REQUEST:
                    kw = {
                        "field_pointer": struct.unpack_from(">H", sks, 1)[0],
                        "cd": bool(sks[0] & 0x40),
                        "bit_pointer": (sks[0] & 7) if sks[0] & 0x08 else None,
                    }
                elif sks[0] & 0x80:
                    kw = {"sks_raw": bytes(sks)}
            else:
                others.append(bytes(body))
            pos += 2 + dlen
        return cls(
            key,
            buf[2],
            buf[3],
            information=information,
            command_specific=cmd_specific,
            deferred=deferred,
            descriptor_format=True,
            other_descriptors=tuple(others),
            **kw,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ errors
    @classmethod
    def from_error(cls, err: SCSIError) -> SenseData:
        """The sense data a ``SCSIError`` stands for."""
        return cls(
            err.sense_key,
            err.asc,
            err.ascq,
            information=err.info,
            field_pointer=err.field_pointer,
            cd=err.cd,
            bit_pointer=err.bit_pointer,
        )

    def to_error(self, message: str = "") -> SCSIError:
        """The ``SCSIError`` an initiator raises for this CHECK CONDITION."""
        name = _asc_name(self.asc_ascq)
        return SCSIError(
            message or f"CHECK CONDITION {SenseKey(self.sense_key).name}/{name}",
            sense_key=self.sense_key,
            asc=self.asc,
            ascq=self.ascq,
            info=self.information,
            field_pointer=self.field_pointer,
            bit_pointer=self.bit_pointer,
            cd=self.cd,
        )


def _asc_name(value: int) -> str:
    try:
        return Asc(value).name
    except ValueError:
        return f"ASC {value >> 8:02X}h/ASCQ {value & 0xFF:02X}h"


def sense_bytes(
    key: int,
    code: Asc,
    *,
    descriptor: bool = False,
    information: int | None = None,
    field_pointer: int | None = None,
    cd: bool = True,
    bit_pointer: int | None = None,
) -> bytes:
    """Encoded sense data for a sense key and ASC/ASCQ pair."""
    return SenseData(
        key,
        code.asc,
        code.ascq,
        information=information,
        field_pointer=field_pointer,
        cd=cd,
        bit_pointer=bit_pointer,
    ).encode(descriptor=descriptor)


def logical_unit_not_supported_sense(*, descriptor: bool = False) -> bytes:
    """ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h): for a command to a LUN
    that does not exist (SPC-4 6.4.1, SAM-5 5.9.6)."""
    return sense_bytes(
        SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED, descriptor=descriptor
    )


#: The same, under the name the target engineer asked for.
not_ready_lun_sense = logical_unit_not_supported_sense


# --------------------------------------------------------------------------- errors
# Short constructors for the errors the device server raises; each names its rule.


def illegal_request(
    code: Asc,
    message: str,
    *,
    section: str,
    field_pointer: int | None = None,
    bit_pointer: int | None = None,
    cd: bool = True,
    info: int | None = None,
) -> SCSIError:
    return SCSIError(
        message,
        sense_key=SenseKey.ILLEGAL_REQUEST,
        asc=code.asc,
        ascq=code.ascq,
        section=section,
        field_pointer=field_pointer,
        bit_pointer=bit_pointer,
        cd=cd,
        info=info,
    )


def invalid_field_in_cdb(
    byte: int,
    message: str = "invalid field in CDB",
    *,
    bit: int | None = None,
    section: str = "SPC-4 4.5.2.4.2",
) -> SCSIError:
    return illegal_request(
        Asc.INVALID_FIELD_IN_CDB, message, section=section, field_pointer=byte, bit_pointer=bit
    )


def invalid_field_in_parameter_list(
    byte: int,
    message: str = "invalid field in parameter list",
    *,
    bit: int | None = None,
    section: str = "SPC-4 4.5.2.4.2",
) -> SCSIError:
    return illegal_request(
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        message,
        section=section,
        field_pointer=byte,
        bit_pointer=bit,
        cd=False,
    )


def parameter_list_length_error(message: str, *, section: str) -> SCSIError:
    return illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR, message, section=section)


def lba_out_of_range(lba: int, *, section: str = "SBC-3 4.5") -> SCSIError:
    return illegal_request(Asc.LBA_OUT_OF_RANGE, f"LBA {lba:#x} out of range", section=section)


def check_condition(
    key: int, code: Asc, message: str, *, section: str, info: int | None = None
) -> SCSIError:
    return SCSIError(
        message, sense_key=key, asc=code.asc, ascq=code.ascq, section=section, info=info
    )
