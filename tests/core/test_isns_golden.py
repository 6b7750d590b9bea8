"""Golden iSNSP messages: open-isns's isnsadm and isnsd talking over loopback
(fixtures/isns, see PROVENANCE.md there).

Each captured byte stream is decoded the way a receiver would, fed whole and byte by
byte, and every message is re-encoded: the bytes must be the captured ones exactly.
The transcript (which request, which answer, which status) is checked against what the
capture script ran, and what open-isns does differently from RFC 4171 is asserted here,
so that a change in either the codec or the fixtures shows.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from iscsi_conformance.core import isns as I
from iscsi_conformance.core.isns import Flag, FunctionId, Message, MessageDecoder, Status, Tag

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "isns"
STREAMS = sorted(GOLDEN.glob("conn*.bin"))
TARGET = "iqn.2024-01.org.iscsi-conformance:isns-golden-target"
INITIATOR = "iqn.2024-01.org.iscsi-conformance:isns-golden-initiator"


def _messages(data: bytes, *, byte_by_byte: bool = False) -> list[Message]:
    dec = MessageDecoder()
    out: list[Message] = []
    for i in range(0, len(data), 1 if byte_by_byte else len(data) or 1):
        dec.feed(data[i : i + (1 if byte_by_byte else len(data))])
        out.extend(dec)
    assert dec.buffered == 0 and dec.pending == 0
    return out


def _conversation(n: int) -> tuple[list[Message], list[Message]]:
    c2s = (GOLDEN / f"conn{n:02d}.c2s.bin").read_bytes()
    s2c = (GOLDEN / f"conn{n:02d}.s2c.bin").read_bytes()
    return _messages(c2s), _messages(s2c)


def test_the_fixtures_are_there() -> None:
    assert len(STREAMS) == 22, STREAMS
    assert (GOLDEN / "PROVENANCE.md").exists() and (GOLDEN / "isns.pcap").exists()


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_decodes_and_reencodes_byte_for_byte(path: Path) -> None:
    data = path.read_bytes()
    whole = _messages(data)
    assert whole and _messages(data, byte_by_byte=True) == whole
    # open-isns sends every message in one PDU (socket.c: "unfragmented messages only")
    assert b"".join(I.encode(m, strict=False) for m in whole) == data
    for m in whole:
        assert m.flags & Flag.CLIENT if path.name.endswith("c2s.bin") else m.flags & Flag.SERVER
        for a in m.attributes:
            a.decoded()


def test_transcript() -> None:
    """What make_capture.sh ran, message by message: function, status, and the answer to
    every request carrying its transaction ID (5.1.5)."""
    expected = {
        1: (FunctionId.DEV_ATTR_REG, [0]),
        2: (FunctionId.DEV_ATTR_REG, [0]),
        3: (FunctionId.DEV_ATTR_QRY, [0]),
        4: (FunctionId.DEV_GET_NEXT, [0, 0, Status.NO_SUCH_ENTRY]),  # 5.6.5.3: end of list
        5: (FunctionId.DEV_GET_NEXT, [0, Status.NO_SUCH_ENTRY]),
        6: (FunctionId.DEV_ATTR_REG, [0]),
        7: (FunctionId.DD_REG, [0]),
        8: (FunctionId.DEV_GET_NEXT, [0, Status.NO_SUCH_ENTRY]),
        9: (FunctionId.DEV_DEREG, [0]),
        10: (FunctionId.DEV_ATTR_QRY, [0]),
        11: (FunctionId.DEV_DEREG, [Status.INVALID_DEREGISTRATION]),
    }
    for n, (function, statuses) in expected.items():
        requests, responses = _conversation(n)
        assert [r.function for r in requests] == [function] * len(statuses)
        assert [r.function for r in responses] == [function | 0x8000] * len(statuses)
        assert [r.status for r in responses] == statuses
        for q, r in zip(requests, responses, strict=True):
            assert r.transaction_id == q.transaction_id
            assert q.flags & Flag.CLIENT and r.flags & Flag.SERVER
            assert q.source is not None and q.source.tag == Tag.ISCSI_NAME
    (reg,), _ = _conversation(1)
    assert reg.source == I.Attribute.of(Tag.ISCSI_NAME, TARGET)
    assert reg.key_attributes == (I.Attribute.of(Tag.ENTITY_IDENTIFIER, "golden-target.example"),)
    assert reg.first(Tag.ISCSI_ALIAS) == I.Attribute.of(Tag.ISCSI_ALIAS, "golden-disk")
    assert reg.first(Tag.PORTAL_TCP_UDP_PORT).port() == (3260, False)
    _, (query,) = _conversation(3)
    assert query.first(Tag.PG_TAG).decoded() == 1  # implicit PGT 0x00000001 (6.5.4)
    assert query.first(Tag.PG_ISCSI_NAME).decoded() == TARGET
    (replace_reg,), _ = _conversation(6)
    assert replace_reg.flags & Flag.REPLACE  # isnsadm --replace (5.6.5.1)
    _, (dd,) = _conversation(7)
    names = {a.decoded() for a in dd.attributes if a.tag == Tag.DD_MEMBER_ISCSI_NAME}
    assert names == {TARGET, INITIATOR}
    assert dd.first(Tag.DD_FEATURES).decoded() == 0  # 5.6.5.9: default DD_Features is 0


def test_where_open_isns_differs_from_rfc4171() -> None:
    """Findings, kept as assertions (open-isns 0.101, Debian 12)."""
    (reg,), (rsp,) = _conversation(1)
    # 6.3.1: an IPv4 portal address is stored IPv4-mapped (::ffff:a.b.c.d); open-isns
    # writes it IPv4-compatible (::a.b.c.d), in requests and in responses.
    for m in (reg, rsp):
        portal = m.first(Tag.PORTAL_IP_ADDRESS)
        assert portal is not None and portal.value == bytes(12) + bytes([127, 0, 0, 1])
        assert portal.decoded() == ipaddress.IPv4Address("127.0.0.1")
        assert any(v.section == "RFC 4171 6.3.1" for v in I.violations(m))
    # 5.6.5.1: the Message Key's object (the Entity, keyed by its EID) "MUST also be
    # included among the Operating Attributes"; isnsadm starts them with the Portal.
    assert reg.key_attributes[0].tag == Tag.ENTITY_IDENTIFIER
    assert Tag.ENTITY_IDENTIFIER not in {a.tag for a in reg.operating_attributes}
    # 5.7.5.1: "Implicitly registered attributes MUST NOT be returned" in DevAttrRegRsp,
    # the server-assigned secondary indexes among them; isnsd returns the Portal Index.
    assert rsp.first(Tag.PORTAL_INDEX) is not None
    # isnsadm --deregister entity=NAME sends the name under open-isns's private tag
    # 0xFFFF0604 (its OUI 0xFFFF00 in the tag's upper bytes, vendor.h); 6.1 defines no
    # such tag, and 6.10 puts a vendor's OUI in the value, not the tag. isnsd answers 22
    # (Invalid Deregistration).
    (dereg,), (answer,) = _conversation(11)
    assert dereg.operating_attributes[0].tag == 0xFFFF0604
    assert {v.section for v in I.violations(dereg)} == {"RFC 4171 6.1"}
    assert answer.status == Status.INVALID_DEREGISTRATION
