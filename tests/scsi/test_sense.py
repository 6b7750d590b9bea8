"""Sense data encode/parse, fixed (SPC-4 4.5.3) and descriptor (SPC-4 4.5.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsi_conformance.errors import SCSIError
from iscsi_conformance.scsi.codes import Asc, SenseKey
from iscsi_conformance.scsi.sense import (
    SenseData,
    logical_unit_not_supported_sense,
    not_ready_lun_sense,
    sense_bytes,
)


def test_fixed_format_fields() -> None:
    raw = SenseData(SenseKey.MISCOMPARE, 0x1D, 0x00, information=0x1234).encode()
    assert len(raw) == 18
    assert raw[0] == 0xF0  # VALID | 70h
    assert raw[2] == SenseKey.MISCOMPARE
    assert raw[3:7] == bytes.fromhex("00001234")
    assert raw[7] == 10  # additional sense length
    assert (raw[12], raw[13]) == (0x1D, 0x00)
    assert raw[15:18] == b"\0\0\0"


def test_fixed_format_field_pointer() -> None:
    raw = SenseData(
        SenseKey.ILLEGAL_REQUEST, 0x24, 0, field_pointer=2, cd=True, bit_pointer=5
    ).encode()
    assert raw[0] == 0x70  # no INFORMATION: VALID clear
    assert raw[15] == 0x80 | 0x40 | 0x08 | 5  # SKSV, C/D, BPV, bit 5
    assert raw[16:18] == b"\x00\x02"
    back = SenseData.parse(raw)
    assert (back.field_pointer, back.cd, back.bit_pointer) == (2, True, 5)


def test_descriptor_format_fields() -> None:
    s = SenseData(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00, information=7, field_pointer=9, cd=False)
    raw = s.encode(descriptor=True)
    assert raw[0] == 0x72
    assert (raw[1], raw[2], raw[3]) == (SenseKey.ILLEGAL_REQUEST, 0x26, 0)
    assert raw[7] == len(raw) - 8
    assert raw[8:12] == bytes([0x00, 0x0A, 0x80, 0])  # information descriptor, VALID
    assert int.from_bytes(raw[12:20], "big") == 7
    assert raw[20:24] == bytes([0x02, 0x06, 0, 0])  # sense-key specific descriptor
    assert raw[24] == 0x80  # SKSV, C/D=0 (parameter list)
    back = SenseData.parse(raw)
    assert (
        back.descriptor_format and back.information == 7 and back.field_pointer == 9 and not back.cd
    )


def test_deferred_and_other_descriptors_roundtrip() -> None:
    s = SenseData(
        SenseKey.MEDIUM_ERROR, 0x11, 0, deferred=True, other_descriptors=(bytes([0x80, 2, 1, 2]),)
    )
    raw = s.encode(descriptor=True)
    assert raw[0] == 0x73
    assert SenseData.parse(raw) == SenseData(
        SenseKey.MEDIUM_ERROR,
        0x11,
        0,
        deferred=True,
        descriptor_format=True,
        other_descriptors=(bytes([0x80, 2, 1, 2]),),
    )
    fixed = SenseData(SenseKey.MEDIUM_ERROR, 0x11, 0, deferred=True).encode()
    assert fixed[0] == 0x71 and SenseData.parse(fixed).deferred


def test_large_information_only_in_descriptor_format() -> None:
    s = SenseData(SenseKey.ILLEGAL_REQUEST, 0x21, 0, information=1 << 40)
    assert SenseData.parse(s.encode()).information is None  # cannot fit 4 bytes: VALID=0
    assert SenseData.parse(s.encode(descriptor=True)).information == 1 << 40


def test_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        SenseData.parse(b"\x00")
    with pytest.raises(ValueError):
        SenseData.parse(b"\x05\x00\x00")
    with pytest.raises(ValueError):
        SenseData.parse(
            bytes([0x72, 5, 0x24, 0, 0, 0, 0, 10, 0x02, 0x06, 0x80])
        )  # truncated descriptor


def test_sks_raw_for_other_keys() -> None:
    s = SenseData(SenseKey.NOT_READY, 0x04, 0x04, sks_raw=b"\x80\x10\x00")
    assert SenseData.parse(s.encode()).sks_raw == b"\x80\x10\x00"
    assert SenseData.parse(s.encode(descriptor=True)).sks_raw == b"\x80\x10\x00"


def test_error_conversion() -> None:
    err = SCSIError(
        "x", sense_key=SenseKey.ILLEGAL_REQUEST, asc=0x24, ascq=0, field_pointer=1, bit_pointer=4
    )
    s = SenseData.from_error(err)
    assert (s.sense_key, s.asc, s.field_pointer, s.bit_pointer) == (5, 0x24, 1, 4)
    back = s.to_error()
    assert (back.sense_key, back.asc, back.ascq, back.field_pointer) == (5, 0x24, 0, 1)
    assert "INVALID_FIELD_IN_CDB" in str(back)
    assert "ASC 7Fh" in str(SenseData(5, 0x7F, 1).to_error())


def test_helpers() -> None:
    assert (
        SenseData.parse(logical_unit_not_supported_sense()).asc_ascq
        == Asc.LOGICAL_UNIT_NOT_SUPPORTED
    )
    assert not_ready_lun_sense(descriptor=True)[0] == 0x72
    assert (
        SenseData.parse(sense_bytes(SenseKey.UNIT_ATTENTION, Asc.RESERVATIONS_PREEMPTED)).asc_ascq
        == 0x2A03
    )
    assert Asc.MODE_PARAMETERS_CHANGED.asc == 0x2A and Asc.MODE_PARAMETERS_CHANGED.ascq == 0x01


@given(
    key=st.integers(0, 15),
    asc=st.integers(0, 255),
    ascq=st.integers(0, 255),
    info=st.none() | st.integers(0, 0xFFFFFFFF),
    fp=st.none() | st.integers(0, 0xFFFF),
    descriptor=st.booleans(),
)
def test_roundtrip(
    key: int, asc: int, ascq: int, info: int | None, fp: int | None, descriptor: bool
) -> None:
    key = SenseKey.ILLEGAL_REQUEST if fp is not None else key
    s = SenseData(key, asc, ascq, information=info, field_pointer=fp, cd=True)
    back = SenseData.parse(s.encode(descriptor=descriptor))
    assert (back.sense_key, back.asc, back.ascq, back.information, back.field_pointer) == (
        key,
        asc,
        ascq,
        info,
        fp,
    )
