"""``core.pdu.data_out_pdus``: one Data-Out sequence, the one way both the reference
initiator's engine and the conformance probe cut it (RFC 7143 11.7, 13.12).

The properties: the PDUs cover the sequence's bytes exactly, in order, at their buffer
offsets; each carries at most MaxRecvDataSegmentLength bytes, only the last may be
shorter; DataSN counts from 0 and F is set on the last PDU only; the tags, LUN and
ExpStatSN are the caller's.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iscsi_conformance.core.pdu import ScsiDataOut, data_out_pdus, lun_to_field

LUN = lun_to_field(3)


def _cut(data: bytes, offset: int, mrdsl: int, ttt: int = 0xFFFFFFFF) -> list[ScsiDataOut]:
    return data_out_pdus(data, offset, mrdsl, itt=0x42, ttt=ttt, lun=LUN, expstatsn=7)


def test_cut_at_max_recv_data_segment_length() -> None:
    pdus = _cut(bytes(range(10)), 100, 4, ttt=0x99)
    assert [p.data for p in pdus] == [bytes([0, 1, 2, 3]), bytes([4, 5, 6, 7]), bytes([8, 9])]
    assert [p.buffer_offset for p in pdus] == [100, 104, 108]
    assert [p.datasn for p in pdus] == [0, 1, 2]
    assert [p.final for p in pdus] == [False, False, True]
    assert {(p.itt, p.ttt, p.lun, p.expstatsn) for p in pdus} == {(0x42, 0x99, LUN, 7)}


def test_exact_multiple_has_no_empty_tail() -> None:
    pdus = _cut(bytes(8), 0, 4)
    assert [len(p.data) for p in pdus] == [4, 4]
    assert [p.final for p in pdus] == [False, True]


def test_empty_sequence_is_one_final_pdu() -> None:
    (only,) = _cut(b"", 512, 8192)
    assert only.final and only.data == b"" and only.datasn == 0 and only.buffer_offset == 512


@given(
    data=st.binary(max_size=300),
    offset=st.integers(0, 1 << 20),
    mrdsl=st.integers(1, 64),
)
def test_sequence_properties(data: bytes, offset: int, mrdsl: int) -> None:
    pdus = _cut(data, offset, mrdsl)
    assert b"".join(p.data for p in pdus) == data
    pos = offset
    for n, p in enumerate(pdus):
        assert p.buffer_offset == pos and p.datasn == n
        assert len(p.data) <= mrdsl
        assert p.final == (n == len(pdus) - 1)
        if not p.final:
            assert len(p.data) == mrdsl
        pos += len(p.data)
