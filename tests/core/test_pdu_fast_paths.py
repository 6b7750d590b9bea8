"""The codec's hot paths (a bare BHS: no AHS, no data) against its general paths.

Strict encoding first tries the generated ``plain`` function and decoding the bare-BHS
branch; both exist only for speed, so whatever they return must be byte for byte what
the general path gives, and whatever they cannot vouch for must fall through to it.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsi_conformance.core import pdu
from iscsi_conformance.core.digest import digest_bytes
from iscsi_conformance.core.layout import BHS_LENGTH, LAYOUTS
from iscsi_conformance.core.pdu import (
    PDU,
    NopOut,
    ScsiCommand,
    ScsiResponse,
    decode,
    encode,
    violations,
    well_formed,
)
from iscsi_conformance.errors import PDUFormatError
from iscsi_conformance.fuzz import strategies as ps

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bare(p: PDU) -> PDU:
    """``p`` without data or AHS (the literal b"" is what the hot path recognises)."""
    if isinstance(p, ScsiCommand):
        return dataclasses.replace(p, data=b"", ahs=b"", cdb=p.cdb[:16], bidi_read_length=None)
    return dataclasses.replace(p, data=b"", ahs=b"")


def _plain(p: PDU) -> bytes | None:
    try:
        return pdu._PLAIN[type(p)](p)
    except (TypeError, AttributeError, OverflowError, ValueError) as exc:  # pragma: no cover
        pytest.fail(f"the hot path raised {exc!r}; encode would swallow it")
    except Exception:  # struct.error: encode then takes the general path
        return None


@FAST
@given(p=ps.pdus(max_data=8, data_anywhere=True, with_ahs=True))
def test_plain_vouches_only_for_what_strict_encoding_accepts(p: PDU) -> None:
    for q in (p, _bare(p)):
        fast = _plain(q)
        if fast is not None:
            assert violations(q) == [] and not q.data and not q.ahs
            assert fast == encode(q, strict=False)  # the general encoder, byte for byte
            assert fast == pdu._SPECS[type(q)].pack_strict(q, 0, 0)


@FAST
@given(p=ps.pdus(max_data=8, data_anywhere=True, with_ahs=True))
def test_well_formed_vouches_only_for_pdus_without_violations(p: PDU) -> None:
    # the bridge's judge skips violations() where well_formed() says yes
    for q in (p, _bare(p)):
        if well_formed(q):
            assert violations(q) == []


@FAST
@given(p=ps.pdus(max_data=8, defined_codes=True))
def test_well_formed_says_yes_to_a_valid_decoded_pdu(p: PDU) -> None:
    # the hot path is taken where it matters: what a peer sent, decoded, with no breach
    if violations(p) == []:
        got = decode(encode(p))
        assert not isinstance(got, pdu.NeedMore)
        assert well_formed(got[0])


@FAST
@given(p=ps.pdus(max_data=0, defined_codes=True))
def test_plain_takes_every_valid_bare_pdu(p: PDU) -> None:
    q = _bare(p)
    if violations(q):
        with pytest.raises(PDUFormatError):
            encode(q)
        assert _plain(q) is None
        return
    fast = _plain(q)
    assert fast is not None and fast == encode(q, strict=False)
    assert encode(q, header_digest=True) == fast + digest_bytes(fast)


@FAST
@given(
    bhs=st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH), data=st.binary(min_size=1, max_size=9)
)
def test_bare_decoding_equals_the_general_path(bhs: bytes, data: bytes) -> None:
    bare = bhs[:4] + bytes(4) + bhs[8:]
    result = decode(bare)
    assert not isinstance(result, pdu.NeedMore)
    q, used = result
    assert used == BHS_LENGTH
    # the same BHS with a data segment goes the general way; fields must agree
    with_data = (
        bhs[:4] + b"\0" + len(data).to_bytes(3, "big") + bhs[8:] + data + bytes(-len(data) % 4)
    )
    full = decode(with_data)
    assert not isinstance(full, pdu.NeedMore)
    lay = LAYOUTS.get(bhs[0] & 0x3F)
    if lay is not None:  # (an UnknownPDU keeps its BHS verbatim, lengths included)
        assert dataclasses.replace(full[0], data=b"") == q
        # and each field is what the layout says is at its offset (bit tables included)
        for f in lay.value_fields:
            want = f.extract(bare)
            got = getattr(q, f.name)
            assert (int.from_bytes(got, "big") if f.is_bytes else got) == want
            assert type(got) is (bool if f.is_flag else bytes if f.is_bytes else int)
    with_digest = decode(bare + digest_bytes(bare), header_digest=True)
    assert with_digest == (q, BHS_LENGTH + 4)


def test_empty_non_bytes_data_is_refused_like_any_non_bytes() -> None:
    # the hot path recognises the empty bytes object only; the general path judges
    # the rest, and validate() has always required bytes
    for empty in (bytearray(), memoryview(b"")):
        bad = NopOut(data=empty)  # type: ignore[arg-type]
        assert [v.field for v in violations(bad)] == ["data"]
        with pytest.raises(PDUFormatError):
            encode(bad)
    assert encode(NopOut(data=bytes(0))) == encode(NopOut())


def test_rules_about_data_are_left_out_of_the_hot_path_only() -> None:
    source = pdu._compiled_source["ScsiResponse"]
    plain = source[source.index("def plain") : source.index("def rule0")]
    ok = source[source.index("def ok") : source.index("def plain")]
    assert "int.from_bytes" in ok and "int.from_bytes" not in plain  # SenseLength rule
    assert "p.overflow and p.underflow" in plain
    # a bare Reject breaks its data rule, so the hot path must still test it
    assert "len(p.data) < 48" in pdu._compiled_source["Reject"].split("def plain")[1]
    with pytest.raises(PDUFormatError):
        encode(pdu.Reject())
    good = ScsiResponse(data=ScsiResponse.sense_segment(b"\x70"))
    assert _plain(good) is None and decode(encode(good))[0] == good  # type: ignore[index]
