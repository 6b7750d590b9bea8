"""core.text: key=value parsing/formatting, value types, C-bit reassembly (RFC 7143 6.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsi_conformance.core import text
from iscsi_conformance.errors import NegotiationError
from iscsi_conformance.fuzz import keys as fk


def test_parse_and_format_golden() -> None:
    # RFC 7143 6.1 shape: every pair followed by exactly one NUL.
    data = b"InitiatorName=iqn.1993-08.org.example:host\0AuthMethod=CHAP,None\0"
    pairs = text.parse_pairs(data)
    assert pairs == [("InitiatorName", "iqn.1993-08.org.example:host"), ("AuthMethod", "CHAP,None")]
    assert text.format_pairs(pairs) == data


def test_value_keeps_later_equals_and_empty_value() -> None:
    assert text.parse_pairs(b"X-a=b=c\0SendTargets=\0") == [("X-a", "b=c"), ("SendTargets", "")]


def test_empty_segment_is_no_pairs() -> None:
    assert text.parse_pairs(b"") == []


@pytest.mark.parametrize(
    "data",
    [
        b"A=1",  # no NUL terminator
        b"A1\0",  # no '='
        b"=1\0",  # empty key
        b"A=1\0\0",  # empty pair (double NUL)
        b"A=\xff\0",  # not UTF-8
        b"Bad Key=1\0",  # space in key
        b"K" * 64 + b"=1\0",  # key of 64 bytes
    ],
)
def test_malformed_segments_raise_initiator_error(data: bytes) -> None:
    with pytest.raises(NegotiationError) as info:
        text.parse_pairs(data)
    assert info.value.login_status == 0x0200
    assert info.value.section.startswith("RFC 7143 6.1")


def test_key_of_63_bytes_is_fine() -> None:
    key = "K" * 63
    assert text.parse_pairs(key.encode() + b"=1\0") == [(key, "1")]


def test_utf8_alias_round_trip() -> None:
    pairs = [("TargetAlias", "Disque de démonstration ✓")]
    assert text.parse_pairs(text.format_pairs(pairs)) == pairs


def test_format_strict_and_lenient() -> None:
    with pytest.raises(ValueError):
        text.format_pairs([("a b", "1")])
    with pytest.raises(ValueError):
        text.format_pairs([("A", "x\0y")])
    assert text.format_pairs([("a b", "1")], strict=False) == b"a b=1\0"


def test_split_segments() -> None:
    assert text.split_segments(b"", 10) == [b""]
    assert text.split_segments(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    with pytest.raises(ValueError):
        text.split_segments(b"x", 0)


def test_assembler_joins_a_pair_split_inside_a_utf8_sequence() -> None:
    data = text.format_pairs([("TargetAlias", "ü" * 10), ("MaxBurstLength", "512")])
    asm = text.TextAssembler()
    for i, byte in enumerate(data[:-1]):
        assert asm.feed(bytes([byte]), True) is None
        assert asm.pending and asm.segments == i + 1
    assert asm.feed(data[-1:], False) == [("TargetAlias", "ü" * 10), ("MaxBurstLength", "512")]
    assert not asm.pending


def test_assembler_peek_does_not_consume() -> None:
    asm = text.TextAssembler()
    asm.feed(b"A=1\0", True)
    assert asm.peek(b"B=2\0") == [("A", "1"), ("B", "2")]
    assert asm.feed(b"B=2\0", False) == [("A", "1"), ("B", "2")]


def test_assembler_limit_is_out_of_resources() -> None:
    asm = text.TextAssembler(max_length=8)
    with pytest.raises(NegotiationError) as info:
        asm.feed(b"A=123456789\0", True)
    assert info.value.login_status == 0x0302
    assert not asm.pending


@given(fk.pairs(), st.integers(1, 64))
def test_round_trip_through_any_split(pairs: list[tuple[str, str]], size: int) -> None:
    data = text.format_pairs(pairs)
    asm = text.TextAssembler()
    segments = text.split_segments(data, size)
    for seg in segments[:-1]:
        assert asm.feed(seg, True) is None
    assert asm.feed(segments[-1], False) == pairs


@given(fk.raw_segments())
def test_parse_never_crashes_otherwise(data: bytes) -> None:
    try:
        text.parse_pairs(data)
    except NegotiationError:
        pass


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("0", 0),
        ("8192", 8192),
        ("0x2000", 8192),
        ("0X2000", 8192),
        ("0bIAA=", 8192),
        ("0xFFFFFFFFFFFFFFFF", 2**64 - 1),
    ],
)
def test_parse_number(value: str, number: int) -> None:
    assert text.parse_number(value) == number


@pytest.mark.parametrize(
    "value",
    [
        "",
        "012",
        "-1",
        "0x",
        "0xG",
        "0b",
        "0b!!",
        "1.5",
        "Yes",
        "18446744073709551616",
        "0x10000000000000000",
    ],
)
def test_bad_numbers(value: str) -> None:
    with pytest.raises(NegotiationError):
        text.parse_number(value)


def test_large_numbers_need_hex_or_base64() -> None:
    big = 2**200 + 5
    assert text.parse_number(text.format_number(big, "hex"), large=True) == big
    assert text.parse_number(text.format_number(big, "base64"), large=True) == big
    with pytest.raises(NegotiationError):
        text.parse_number(str(big), large=True)


def test_format_number_errors() -> None:
    with pytest.raises(ValueError):
        text.format_number(-1)
    with pytest.raises(ValueError):
        text.format_number(1, "octal")


@given(st.integers(0, 2**64 - 1), st.sampled_from(["decimal", "hex", "base64"]))
def test_number_round_trip(n: int, encoding: str) -> None:
    assert text.parse_number(text.format_number(n, encoding)) == n


@given(st.binary(min_size=1, max_size=1024), st.sampled_from(["hex", "base64"]))
def test_binary_round_trip_keeps_leading_zeros(data: bytes, encoding: str) -> None:
    assert text.parse_binary(text.format_binary(data, encoding)) == data


def test_binary_implicit_length() -> None:
    # RFC 7143 6.1: n hex digits give (n + 1) // 2 bytes.
    assert text.parse_binary("0x001") == b"\x00\x01"
    assert text.parse_binary("0x0") == b"\x00"
    assert text.parse_binary("258") == b"\x01\x02"
    with pytest.raises(NegotiationError):
        text.parse_binary("Yes")
    with pytest.raises(NegotiationError):
        text.parse_binary(str(2**64))
    with pytest.raises(ValueError):
        text.format_binary(b"")
    with pytest.raises(ValueError):
        text.format_binary(b"x", "octal")


def test_booleans() -> None:
    assert text.parse_boolean("Yes") is True
    assert text.parse_boolean("No") is False
    assert text.format_boolean(True) == "Yes"
    for bad in ("yes", "NO", "1", ""):
        with pytest.raises(NegotiationError):
            text.parse_boolean(bad)


def test_ranges() -> None:
    assert text.parse_range("1~65535") == (1, 65535)
    assert text.parse_range("0x10~0x10") == (16, 16)
    assert text.format_range(3, 9) == "3~9"
    for bad in ("5", "9~3", "a~b"):
        with pytest.raises(NegotiationError):
            text.parse_range(bad)
    with pytest.raises(ValueError):
        text.format_range(9, 3)


def test_lists() -> None:
    assert text.parse_list("CRC32C,None") == ["CRC32C", "None"]
    assert text.format_list(["a", "b"]) == "a,b"
    for bad in ("", "a,", ",a", "a,,b"):
        with pytest.raises(NegotiationError):
            text.parse_list(bad)
    with pytest.raises(ValueError):
        text.format_list([])
    with pytest.raises(ValueError):
        text.format_list(["a,b"])


@given(st.lists(st.text("abcXYZ019.-", min_size=1, max_size=10), min_size=1, max_size=6))
def test_list_round_trip(items: list[str]) -> None:
    assert text.parse_list(text.format_list(items)) == items


def test_value_classes() -> None:
    assert text.is_text_value("iqn.2024-01.com.example:disk[1]/a@b+c_d")
    assert not text.is_text_value("has space")
    assert text.is_standard_label("MaxBurstLength")
    assert not text.is_standard_label("1abc")
    assert text.is_local_name("any ✓ thing")
    assert not text.is_local_name("nul\0")
    assert text.is_valid_key("X#NodeArchitecture")
    assert not text.is_valid_key("")
