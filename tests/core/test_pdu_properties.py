"""Hypothesis properties of the PDU codec: round trips for every opcode, input fed whole,
byte by byte and split at random points, and decode as the exact inverse of encode."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsi_conformance.core.layout import check_reserved
from iscsi_conformance.core.pdu import (
    PDU,
    PDU_CLASSES,
    NeedMore,
    PDUDecoder,
    ScsiCommand,
    decode,
    encode,
    violations,
)
from iscsi_conformance.errors import PDUFormatError
from iscsi_conformance.fuzz import strategies as ps

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same_bytes(a: PDU, b: PDU, **kw: bool) -> bool:
    return encode(a, strict=False, **kw) == encode(b, strict=False, **kw)


@FAST
@given(p=ps.pdus(data_anywhere=True, with_ahs=True), hd=st.booleans(), dd=st.booleans())
def test_round_trip_every_opcode(p: PDU, hd: bool, dd: bool) -> None:
    wire = encode(p, strict=False, header_digest=hd, data_digest=dd)
    result = decode(wire, header_digest=hd, data_digest=dd)
    assert not isinstance(result, NeedMore)
    q, used = result
    assert used == len(wire)
    assert type(q) is type(p)
    if isinstance(p, ScsiCommand) and p.ahs:
        assert _same_bytes(p, q, header_digest=hd, data_digest=dd)  # AHS may be lifted
    else:
        assert q == p


@settings(max_examples=25, deadline=None)
@given(p=ps.pdus(include_unknown=True))
def test_each_class_strategy_draws_its_class(p: PDU) -> None:
    wire = encode(p, strict=False)
    q = decode(wire)
    assert not isinstance(q, NeedMore)
    assert encode(q[0], strict=False) == wire


@FAST
@given(
    batch=st.lists(ps.pdus(max_data=40), min_size=1, max_size=6),
    hd=st.booleans(),
    dd=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_stream_split_at_random_points(
    batch: list[PDU], hd: bool, dd: bool, cuts: list[int]
) -> None:
    stream = b"".join(encode(p, strict=False, header_digest=hd, data_digest=dd) for p in batch)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = PDUDecoder(header_digest=hd, data_digest=dd)
    got: list[PDU] = []
    for a, b in itertools.pairwise(points):
        dec.feed(stream[a:b])
        got.extend(dec)
    assert [encode(q, strict=False) for q in got] == [encode(p, strict=False) for p in batch]
    assert dec.buffered == 0


@settings(max_examples=15, deadline=None)
@given(batch=st.lists(ps.pdus(max_data=12), min_size=1, max_size=3), hd=st.booleans())
def test_stream_byte_by_byte(batch: list[PDU], hd: bool) -> None:
    stream = b"".join(encode(p, strict=False, header_digest=hd, data_digest=hd) for p in batch)
    dec = PDUDecoder(header_digest=hd, data_digest=hd)
    got: list[PDU] = []
    for i in range(len(stream)):
        dec.feed(stream[i : i + 1])
        got.extend(dec)
    assert len(got) == len(batch)
    assert all(_same_bytes(p, q) for p, q in zip(batch, got, strict=True))


@FAST
@given(p=ps.valid_pdus(max_data=32))
def test_valid_pdus_encode_strictly_and_stay_valid(p: PDU) -> None:
    assert violations(p) == []
    wire = encode(p, header_digest=True, data_digest=True)
    result = decode(wire, header_digest=True, data_digest=True)
    assert not isinstance(result, NeedMore)
    assert violations(result[0]) == []
    assert check_reserved(wire) == []


@FAST
@given(
    bhs=st.binary(min_size=48, max_size=48),
    ahs_words=st.integers(0, 3),
    data_len=st.integers(0, 9),
    fill=st.binary(min_size=12, max_size=12),
)
def test_decode_is_the_exact_inverse_of_encode(
    bhs: bytes, ahs_words: int, data_len: int, fill: bytes
) -> None:
    """Any well-framed byte string whose reserved bits are zero re-encodes to itself."""
    raw = bytearray(bhs)
    raw[4] = ahs_words
    raw[5:8] = data_len.to_bytes(3, "big")
    padded = -data_len % 4
    wire = (
        bytes(raw) + fill[: 4 * ahs_words] + fill[:data_len].ljust(data_len, b"d") + bytes(padded)
    )
    result = decode(wire)
    assert not isinstance(result, NeedMore)
    q, used = result
    assert used == len(wire)
    if not check_reserved(wire) or q.layout is None:
        assert encode(q, strict=False) == wire


@FAST
@given(junk=st.binary(max_size=200), limit=st.integers(0, 64))
def test_decoding_garbage_only_raises_protocol_errors(junk: bytes, limit: int) -> None:
    dec = PDUDecoder(header_digest=True, data_digest=True, max_data_segment_length=limit)
    dec.feed(junk)
    try:
        list(dec)
    except PDUFormatError:
        pass


@pytest.mark.parametrize("cls", list(PDU_CLASSES.values()), ids=lambda c: c.__name__)
def test_round_trip_per_class(cls: type[PDU]) -> None:
    @settings(max_examples=10, deadline=None)
    @given(p=ps.pdu_of(cls, data_anywhere=True), hd=st.booleans(), dd=st.booleans())
    def check(p: PDU, hd: bool, dd: bool) -> None:
        assert type(p) is cls
        wire = encode(p, strict=False, header_digest=hd, data_digest=dd)
        assert decode(wire, header_digest=hd, data_digest=dd) == (p, len(wire))

    check()
