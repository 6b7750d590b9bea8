"""The iSNSP codec (core/isns.py, RFC 4171): its tables against an independent
transcription of the RFC, Hypothesis round trips fed whole, byte by byte and split over
PDUs, non-strict encoding of malformed messages, and a decoder that only ever raises
ISNSFormatError and always finishes, whatever it is fed."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsi_conformance.core import isns as I
from iscsi_conformance.core.isns import (
    DELIMITER,
    PDU,
    Attribute,
    Flag,
    FunctionId,
    Heartbeat,
    ISNSFormatError,
    Message,
    MessageDecoder,
    NeedMore,
    PayloadKind,
    Status,
    Tag,
    ValueType,
)

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TARGET = "iqn.2024-01.org.example:disk"

# ------------------------------------------------------------------ the tables

# RFC 4171 6.1, typed in again from the RFC's table: tag -> (name, length column).
RFC_TABLE = {
    0: ("Delimiter", "0"), 1: ("Entity Identifier", "4-256"), 2: ("Entity Protocol", "4"),
    3: ("Management IP Address", "16"), 4: ("Timestamp", "8"),
    5: ("Protocol Version Range", "4"), 6: ("Registration Period", "4"),
    7: ("Entity Index", "4"), 8: ("Entity Next Index", "4"), 11: ("Entity ISAKMP", "var"),
    12: ("Entity Certificate", "var"), 16: ("Portal IP Address", "16"),
    17: ("Portal TCP/UDP Port", "4"), 18: ("Portal Symbolic Name", "4-256"),
    19: ("ESI Interval", "4"), 20: ("ESI Port", "4"), 22: ("Portal Index", "4"),
    23: ("SCN Port", "4"), 24: ("Portal Next Index", "4"), 27: ("Portal Security", "4"),
    28: ("Portal ISAKMP Phase-1", "var"), 29: ("Portal ISAKMP Phase-2", "var"),
    31: ("Portal Certificate", "var"), 32: ("iSCSI Name", "4-224"),
    33: ("iSCSI Node Type", "4"), 34: ("iSCSI Alias", "4-256"), 35: ("iSCSI SCN Bitmap", "4"),
    36: ("iSCSI Node Index", "4"), 37: ("WWNN Token", "8"), 38: ("iSCSI Node Next Index", "4"),
    42: ("iSCSI AuthMethod", "var"), 48: ("PG iSCSI Name", "4-224"),
    49: ("PG Portal IP Addr", "16"), 50: ("PG Portal TCP/UDP Port", "4"), 51: ("PG Tag", "4"),
    52: ("PG Index", "4"), 53: ("PG Next Index", "4"), 64: ("FC Port Name WWPN", "8"),
    65: ("Port ID", "4"), 66: ("FC Port Type", "4"), 67: ("Symbolic Port Name", "4-256"),
    68: ("Fabric Port Name", "8"), 69: ("Hard Address", "4"), 70: ("Port IP-Address", "16"),
    71: ("Class of Service", "4"), 72: ("FC-4 Types", "32"), 73: ("FC-4 Descriptor", "4-256"),
    74: ("FC-4 Features", "128"), 75: ("iFCP SCN bitmap", "4"), 76: ("Port Role", "4"),
    77: ("Permanent Port Name", "8"), 95: ("FC-4 Type Code", "4"),
    96: ("FC Node Name WWNN", "8"), 97: ("Symbolic Node Name", "4-256"),
    98: ("Node IP-Address", "16"), 99: ("Node IPA", "8"), 101: ("Proxy iSCSI Name", "4-256"),
    128: ("Switch Name", "8"), 129: ("Preferred ID", "4"), 130: ("Assigned ID", "4"),
    131: ("Virtual_Fabric_ID", "4-256"), 256: ("iSNS Server Vendor OUI", "4"),
    2049: ("DD_Set ID", "4"), 2050: ("DD_Set Sym Name", "4-256"), 2051: ("DD_Set Status", "4"),
    2052: ("DD_Set_Next_ID", "4"), 2065: ("DD_ID", "4"), 2066: ("DD_Symbolic Name", "4-256"),
    2067: ("DD_Member iSCSI Index", "4"), 2068: ("DD_Member iSCSI Name", "4-224"),
    2069: ("DD_Member FC Port Name", "8"), 2070: ("DD_Member Portal Index", "4"),
    2071: ("DD_Member Portal IP Addr", "16"), 2072: ("DD_Member Portal TCP/UDP", "4"),
    2078: ("DD_Features", "4"), 2079: ("DD_ID Next ID", "4"),
}  # fmt: skip
# "--" in the table's Reg Key column: query only.
RFC_READ_ONLY = {4, 8, 24, 38, 53, 77, 95, 256, 2052, 2079}


def test_attribute_table_is_the_rfcs() -> None:
    assert set(I.ATTRIBUTES) == set(RFC_TABLE) == {int(t) for t in Tag}
    for tag, (name, length) in RFC_TABLE.items():
        spec = I.ATTRIBUTES[tag]
        assert spec.name.lower().startswith(name.lower()[:8]), (spec, name)
        if length == "var":
            assert (spec.min_length, spec.max_length) == (4, None), spec
        elif "-" in length:
            lo, hi = map(int, length.split("-"))
            assert (spec.min_length, spec.max_length) == (lo, hi), spec
        else:
            assert spec.min_length == spec.max_length == int(length), spec
        assert spec.read_only == (tag in RFC_READ_ONLY), spec
        assert spec.section.startswith("RFC 4171 5.") or spec.section.startswith("RFC 4171 6."), (
            spec
        )


def test_every_function_has_its_layout_and_answer() -> None:
    assert set(I.FUNCTIONS) == {int(f) for f in FunctionId}
    for fid, spec in I.FUNCTIONS.items():
        assert spec.section.startswith("RFC 4171 5."), spec
        assert FunctionId(fid).is_response == (spec.payload in (PayloadKind.RESPONSE,
                                                                 PayloadKind.RESPONSE_ATTRIBUTES))  # fmt: skip
        if spec.response is not None:
            assert spec.response == fid | 0x8000
            assert I.FUNCTIONS[spec.response].sender is not spec.sender
    assert I.FUNCTIONS[FunctionId.HEARTBEAT].response is None  # 5.6.5.14: no response
    # the server sends SCN and ESI (5.6.5.8, 5.6.5.13); clients answer them
    assert I.FUNCTIONS[FunctionId.ESI].sender is I.Sender.SERVER
    assert I.FUNCTIONS[FunctionId.SCN_RSP].sender is I.Sender.CLIENT


def test_status_codes_are_the_rfcs() -> None:
    assert [int(s) for s in Status] == [0, 1, 2, 3, *range(5, 24)]  # 5.4: 4 is reserved
    assert Status(23).name == "REGISTRATION_FEATURE_NOT_SUPPORTED"


def test_header_layout_is_the_figure() -> None:
    assert [(f.offset, f.size) for f in I.HEADER] == [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2),
                                                      (10, 2)]  # fmt: skip
    assert sum(f.size for f in I.HEADER) == I.HEADER_LENGTH == 12
    assert int(Flag.CLIENT) == 0x8000 and int(Flag.FIRST_PDU) == 0x0400  # bits 16 and 21


# ------------------------------------------------------------------ strategies

_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=40)


def _address(value: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    packed = Attribute.of(Tag.PORTAL_IP_ADDRESS, value).value
    return not I._ipv4_compatible(packed)


@st.composite
def attribute_for(draw: st.DrawFn, tag: int) -> Attribute:
    spec = I.attribute_spec(tag)
    assert spec is not None
    if draw(st.integers(0, 9)) == 0:
        return Attribute(tag)  # the zero-length TLV
    kind = spec.type
    if kind is ValueType.STRING:
        top = (spec.max_length or 64) - 1
        text = draw(_NAMES.filter(lambda s: len(s.encode()) <= top))
        return Attribute.of(tag, text)
    if kind in (ValueType.UINT32, ValueType.PORT):
        return Attribute.of(tag, draw(st.integers(0, 2**32 - 1)))
    if kind is ValueType.UINT64:
        return Attribute.of(tag, draw(st.integers(0, 2**64 - 1)))
    if kind is ValueType.ADDRESS:
        return Attribute.of(tag, draw(st.ip_addresses().filter(_address)))
    if spec.max_length == spec.min_length:
        return Attribute(tag, draw(st.binary(min_size=spec.min_length, max_size=spec.min_length)))
    words = draw(st.integers(1, 12))
    return Attribute(tag, draw(st.binary(min_size=4 * words, max_size=4 * words)))


_TAGS = sorted(t for t in I.ATTRIBUTES if t != Tag.DELIMITER)
attributes = st.sampled_from(_TAGS).flatmap(attribute_for)
xids = st.integers(0, 0xFFFF)


@st.composite
def valid_messages(draw: st.DrawFn) -> Message:
    """Well-formed messages of every function, laid out as RFC 4171 5.6/5.7 say."""
    fid = draw(st.sampled_from(sorted(I.FUNCTIONS)))
    spec = I.FUNCTIONS[fid]
    xid = draw(xids)
    flags = int(spec.sender.value)
    few = st.lists(attributes, max_size=5)
    if spec.payload is PayloadKind.HEARTBEAT:
        backup = st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 0xFFFF),
                           st.integers(0, 0xFFFF))  # fmt: skip
        hb = Heartbeat(draw(st.binary(min_size=16, max_size=16)), draw(st.integers(0, 0xFFFF)),
                       0, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)), 0,
                       tuple(draw(st.lists(backup, max_size=3))),
                       draw(st.sampled_from([b"", b"vend", b"vendor!!"])))  # fmt: skip
        return Message(fid, xid, flags, body=hb.encode())
    lead = [draw(st.sampled_from(sorted(allowed)).flatmap(attribute_for).filter(
        lambda a: bool(a.value))) for allowed in spec.leading]  # fmt: skip
    if spec.payload is PayloadKind.REQUEST:
        source = Attribute.of(Tag.ISCSI_NAME, draw(_NAMES))
        replace_bit = fid == FunctionId.DEV_ATTR_REG and draw(st.booleans())
        return Message.request(fid, source=source, keys=draw(few), operating=draw(few),
                               transaction_id=xid, replace=replace_bit)  # fmt: skip
    if spec.payload is PayloadKind.NOTIFICATION:
        return Message(fid, xid, flags, None, (*lead, *draw(few)))
    status = draw(st.sampled_from(list(Status)))
    if spec.payload is PayloadKind.RESPONSE_ATTRIBUTES:
        return Message(fid, xid, flags, int(status), (*lead, *draw(few)))
    body = draw(few) + ([DELIMITER, *draw(few)] if draw(st.booleans()) else [])
    return Message(fid, xid, flags, int(status), tuple(body))


@st.composite
def loose_messages(draw: st.DrawFn) -> Message:
    """Messages a negative test could send: any function, version, flags, tags and
    value lengths; only the framing the decoder needs is kept (a status code exactly
    where the function's layout has one)."""
    fid = draw(st.one_of(st.sampled_from(sorted(I.FUNCTIONS)), st.integers(0, 0xFFFF)))
    spec = I.function_spec(fid)
    flags = draw(st.integers(0, 0xFFFF)) & ~(Flag.FIRST_PDU | Flag.LAST_PDU | Flag.AUTH_BLOCK)
    xid, version = draw(xids), draw(st.integers(0, 0xFFFF))
    if spec is None or spec.payload is PayloadKind.HEARTBEAT:
        return Message(fid, xid, flags, body=draw(st.binary(max_size=64)), version=version)
    raw = st.builds(Attribute, st.integers(0, 2**32 - 1), st.binary(max_size=24))
    attrs = tuple(draw(st.lists(st.one_of(attributes, raw), max_size=6)))
    responds = spec.payload in (PayloadKind.RESPONSE, PayloadKind.RESPONSE_ATTRIBUTES)
    status = draw(st.integers(0, 2**32 - 1)) if responds else None
    return Message(fid, xid, flags, status, attrs, version=version)


def _decode_all(wire: bytes, *, byte_by_byte: bool = False, strict: bool = False) -> list[Message]:
    dec = MessageDecoder(strict=strict)
    out: list[Message] = []
    chunks = [wire[i : i + 1] for i in range(len(wire))] if byte_by_byte else [wire]
    for chunk in chunks:
        dec.feed(chunk)
        out.extend(dec)
    assert dec.buffered == 0 and dec.pending == 0
    return out


# ------------------------------------------------------------------ round trips


@FAST
@given(m=valid_messages())
def test_valid_messages_round_trip_whole_and_byte_by_byte(m: Message) -> None:
    assert I.violations(m) == []
    wire = I.encode(m)  # strict
    assert _decode_all(wire, strict=True) == [m]
    assert _decode_all(wire, byte_by_byte=True) == [m]
    assert I.annotate(wire)[:6][1] == (2, 2, "function", m.function)


@FAST
@given(m=valid_messages(), words=st.integers(1, 16), other=valid_messages())
def test_split_messages_reassemble(m: Message, words: int, other: Message) -> None:
    pdus = I.split(m, max_payload=4 * words)
    assert [p.sequence_id for p in pdus] == list(range(len(pdus)))
    assert pdus[0].flags & Flag.FIRST_PDU and pdus[-1].flags & Flag.LAST_PDU
    assert all(len(p.payload) <= 4 * words for p in pdus)
    wire = b"".join(I.encode_pdu(p) for p in pdus)
    assert _decode_all(wire, byte_by_byte=len(wire) < 300) == [m]
    assert I.assemble(pdus, strict=True) == m
    # another transaction's PDUs interleaved with these (5.1.5: one ID per outstanding message)
    o_pdus = I.split(replace(other, transaction_id=(m.transaction_id + 1) & 0xFFFF),
                     max_payload=4 * words)  # fmt: skip
    mixed = [p for pair in zip(pdus, o_pdus, strict=False) for p in pair]
    mixed += pdus[len(o_pdus) :] + o_pdus[len(pdus) :]
    got = _decode_all(b"".join(I.encode_pdu(p) for p in mixed))
    assert sorted(got, key=lambda x: x.transaction_id != m.transaction_id) == [
        m, replace(other, transaction_id=(m.transaction_id + 1) & 0xFFFF)]  # fmt: skip


@FAST
@given(m=loose_messages(), words=st.integers(1, 8))
def test_anything_encoded_non_strictly_decodes_back(m: Message, words: int) -> None:
    wire = I.encode(m, max_payload=4 * words, strict=False)
    assert _decode_all(wire) == [m]


@settings(max_examples=40, deadline=None)
@given(m=valid_messages())
def test_every_prefix_needs_more_and_never_fails(m: Message) -> None:
    wire = I.encode(m, max_payload=8)
    dec = MessageDecoder()
    for i in range(min(len(wire) - 1, 200)):
        dec.feed(wire[i : i + 1])
        assert dec.next_message() is None
    dec.feed(wire[min(len(wire) - 1, 200) :])
    assert list(dec) == [m]


# ------------------------------------------------------------------ robustness


def _consume(wire: bytes, chunk: int) -> None:
    """Feed ``wire`` in chunks: only ISNSFormatError may come out, and every message
    decoded must survive the rule checks and typed reads."""
    dec = MessageDecoder(max_message=4096, max_pending=4)
    try:
        for i in range(0, len(wire), chunk):
            dec.feed(wire[i : i + chunk])
            for msg in dec:
                I.violations(msg)
                for a in msg.attributes:
                    try:
                        a.decoded()
                    except ISNSFormatError:
                        pass
    except ISNSFormatError as exc:
        assert 0 <= exc.status <= 23 and exc.section.startswith("RFC 4171")
        with pytest.raises(ISNSFormatError):
            dec.next_message()  # a dead decoder stays dead


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400), chunk=st.integers(1, 64))
def test_random_bytes_raise_only_isns_format_errors(data: bytes, chunk: int) -> None:
    _consume(data, chunk)


@settings(max_examples=150, deadline=None)
@given(m=valid_messages(), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                          min_size=1, max_size=6), chunk=st.integers(1, 32))  # fmt: skip
def test_corrupted_messages_raise_only_isns_format_errors(
    m: Message, edits: list[tuple[int, int]], chunk: int
) -> None:
    wire = bytearray(I.encode(m, max_payload=16))
    for pos, byte in edits:
        wire[pos % len(wire)] = byte
    _consume(bytes(wire), chunk)


# ------------------------------------------------------------------ malformed on purpose


def _registration() -> Message:
    return Message.request(
        FunctionId.DEV_ATTR_REG,
        source=Attribute.of(Tag.ISCSI_NAME, TARGET),
        keys=[Attribute.of(Tag.ENTITY_IDENTIFIER, "entity.example")],
        operating=[Attribute.of(Tag.ENTITY_IDENTIFIER, "entity.example"),
                   Attribute.of(Tag.ENTITY_PROTOCOL, I.EntityProtocol.ISCSI),
                   Attribute.of(Tag.PORTAL_IP_ADDRESS, "127.0.0.1"),
                   Attribute.of(Tag.PORTAL_TCP_UDP_PORT, I.port_value(3260)),
                   Attribute.of(Tag.ISCSI_NAME, TARGET),
                   Attribute.of(Tag.ISCSI_NODE_TYPE, I.NodeType.TARGET)],
        transaction_id=7,
    )  # fmt: skip


def _rules(m: Message | PDU) -> set[str]:
    return {v.section for v in I.violations(m)}


@pytest.mark.parametrize(
    ("change", "section", "status"),
    [
        (lambda m: replace(m, version=2), "RFC 4171 5.1.1", Status.VERSION_NOT_SUPPORTED),
        (lambda m: replace(m, function=0x0042), "RFC 4171 4.1.3", Status.MESSAGE_NOT_SUPPORTED),
        (lambda m: replace(m, flags=Flag.SERVER), "RFC 4171 5.1.4", Status.MESSAGE_FORMAT_ERROR),
        (lambda m: replace(m, flags=Flag.CLIENT | 0x1), "RFC 4171 5.1.4", 2),
        (lambda m: replace(m, status=0), "RFC 4171 5.4", 2),
        (lambda m: replace(m, attributes=m.attributes[1:]), "RFC 4171 5.6.1", 2),
        (lambda m: replace(m, attributes=(Attribute.of(Tag.ENTITY_IDENTIFIER, "e"),
                                          *m.attributes[1:])), "RFC 4171 5.6.1", 2),
        (lambda m: replace(m, attributes=tuple(a for a in m.attributes if a.tag)),
         "RFC 4171 5.6.3", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(9999, b"abcd"))),
         "RFC 4171 6.1", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(Tag.ISCSI_ALIAS, b"abc"))),
         "RFC 4171 5.3.1", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(Tag.ENTITY_PROTOCOL,
                                                                   bytes(8)))),
         "RFC 4171 6.2.2", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(Tag.ISCSI_ALIAS, b"abcd"))),
         "RFC 4171 6.1", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(Tag.ISCSI_ALIAS,
                                                                   b"ab\0d\0\0\0\0"))),
         "RFC 4171 5.3.1", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(Tag.ISCSI_ALIAS,
                                                                   b"\xff\xfe\0\0"))),
         "RFC 4171 6.4.3", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(Tag.DELIMITER, b"abcd"))),
         "RFC 4171 5.6.3", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(Tag.ENTITY_PROTOCOL, bytes(4),
                                                                   length=8))),
         "RFC 4171 5.3", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(2**32, bytes(4)))),
         "RFC 4171 5.3", 2),
        (lambda m: replace(m, attributes=(*m.attributes, Attribute(
            Tag.PORTAL_IP_ADDRESS, bytes(12) + bytes([10, 0, 0, 1])))), "RFC 4171 6.3.1", 2),
        (lambda m: replace(m, body=b"abcd"), "RFC 4171 5.6.5.1", 2),
        (lambda m: replace(m, transaction_id=70000), "RFC 4171 5.1", 2),
    ],
)  # fmt: skip
def test_each_broken_rule_is_named_and_strict_encoding_refuses_it(change, section, status) -> None:  # type: ignore[no-untyped-def]
    good = _registration()
    assert I.violations(good) == []
    bad = change(good)
    found = I.violations(bad)
    assert section in {v.section for v in found}, found
    assert any(v.status == status for v in found if v.section == section)
    assert str(found[0]).endswith(f"[{found[0].section}]")
    with pytest.raises(ISNSFormatError) as err:
        I.encode(bad)
    assert err.value.section.startswith("RFC 4171")
    if bad.transaction_id <= 0xFFFF:
        wire = I.encode(bad, strict=False)  # the negative test's bytes
        assert wire[:2] == bad.version.to_bytes(2, "big")


def test_lying_lengths_and_how_the_decoder_sees_them() -> None:
    m = _registration()
    pdu = I.split(m)[0]
    # a PDU LENGTH that claims 8 bytes more: the decoder waits, it does not guess
    longer = I.encode_pdu(replace(pdu, length=len(pdu.payload) + 8), strict=False)
    assert isinstance(I.decode_pdu(longer), NeedMore)
    assert I.decode_pdu(longer) == NeedMore(8)
    # one 4 bytes shorter: the last TLV runs past the payload
    shorter = I.encode_pdu(replace(pdu, length=len(pdu.payload) - 4), strict=False)
    dec = MessageDecoder()
    dec.feed(shorter)
    with pytest.raises(ISNSFormatError, match="runs past the payload"):
        dec.next_message()
    assert dec.error is not None
    # an unaligned PDU LENGTH frames, and is named
    odd = I.decode_pdu(I.encode_pdu(replace(pdu, payload=pdu.payload + b"x"), strict=False))
    assert not isinstance(odd, NeedMore)
    assert "RFC 4171 5.1.3" in _rules(odd[0])
    with pytest.raises(ISNSFormatError):
        I.encode_pdu(replace(pdu, length=3))
    assert "RFC 4171 5.1.3" in _rules(replace(pdu, payload=bytes(0x10000)))
    # an Attribute Length that lies inside the message
    attrs = (*m.attributes[:-1], Attribute(Tag.ISCSI_NODE_TYPE, bytes(4), length=12))
    wire = I.encode(replace(m, attributes=attrs), strict=False)
    dec = MessageDecoder()
    dec.feed(wire)
    with pytest.raises(ISNSFormatError, match="Attribute Length 12 runs past"):
        dec.next_message()


def test_truncated_status_and_tlv_headers() -> None:
    with pytest.raises(ISNSFormatError, match="status code"):
        I.parse_payload(FunctionId.DEV_ATTR_REG_RSP, b"\0\0")
    with pytest.raises(ISNSFormatError, match="cannot hold a TLV header"):
        I.parse_attributes(bytes(12))
    assert I.parse_payload(0x0101, b"vendor") == (None, (), b"vendor")  # 5.8: opaque


def test_reassembly_errors() -> None:
    m = _registration()
    pdus = I.split(m, max_payload=16)
    assert len(pdus) > 3

    def fed(seq: list[PDU], **kw: int) -> MessageDecoder:
        dec = MessageDecoder(**kw)
        dec.feed(b"".join(I.encode_pdu(p, strict=False) for p in seq))
        return dec

    cases = [
        (pdus[1:], "without a First PDU"),
        ([pdus[0], pdus[2]], "SEQUENCE ID 2, expected 1"),
        ([pdus[0], replace(pdus[1], function=FunctionId.DEV_ATTR_QRY)], "differ"),
        ([pdus[0], pdus[0]], "while one is being"),
        ([pdus[0], replace(pdus[1], flags=pdus[1].flags | Flag.FIRST_PDU)], "while one"),
        ([replace(pdus[0], sequence_id=1)], "SEQUENCE ID 1, expected 0"),
    ]
    for seq, text in cases:
        with pytest.raises(ISNSFormatError, match=text):
            list(fed(seq))
    with pytest.raises(ISNSFormatError, match="longer than 20 bytes") as err:
        list(fed(pdus, max_message=20))
    assert err.value.status == Status.BUSY
    others = [replace(pdus[0], transaction_id=n) for n in range(3)]
    with pytest.raises(ISNSFormatError, match="more than 2 unfinished"):
        list(fed(others, max_pending=2))
    for broken, text in [
        ([replace(pdus[0], flags=Flag.CLIENT), *pdus[1:]], "First PDU flag missing"),
        ([pdus[0], pdus[1]], "lacks the Last PDU flag"),
        ([replace(pdus[0], flags=pdus[0].flags | Flag.LAST_PDU), *pdus[1:]], "goes on"),
    ]:
        with pytest.raises(ISNSFormatError, match=text):
            I.assemble(broken)
    with pytest.raises(ISNSFormatError, match="no PDU"):
        I.assemble([])
    with pytest.raises(ISNSFormatError):
        I.assemble([replace(I.split(m)[0], version=3)], strict=True)
    with pytest.raises(ValueError, match="max_payload"):
        I.split(m, max_payload=6)


def test_authentication_block() -> None:
    block = (
        b"\0\0\0\x02"
        + (28).to_bytes(4, "big")
        + bytes(8)
        + (4).to_bytes(4, "big")
        + b"spi!"
        + bytes(4)
    )
    base = I.split(_registration())[0]
    pdu = replace(base, flags=base.flags | Flag.AUTH_BLOCK, auth_block=block)
    assert I.violations(pdu) == []
    wire = I.encode_pdu(pdu)
    assert I.decode_pdu(wire) == (pdu, len(wire))
    assert I.decode_pdu(wire[: len(wire) - 24]) == NeedMore(4)  # needs the block length first
    assert I.decode_pdu(wire[:-1]) == NeedMore(1)
    bad = wire[: -len(block)] + block[:4] + (7).to_bytes(4, "big")
    with pytest.raises(ISNSFormatError, match="AUTHENTICATION BLOCK LENGTH 7"):
        I.decode_pdu(bad)
    dec = MessageDecoder()
    dec.feed(bad)
    for _ in range(2):  # dead after the first error
        with pytest.raises(ISNSFormatError, match="AUTHENTICATION BLOCK LENGTH 7"):
            dec.next_pdu()
    assert I.encode(pdu) == wire
    assert "RFC 4171 5.1.4" in _rules(replace(pdu, flags=0x1_8C00))
    assert "RFC 4171 5.5" in _rules(replace(pdu, auth_block=block[:-4]))
    assert "RFC 4171 5.5" in _rules(replace(pdu, auth_block=b""))


# ------------------------------------------------------------------ values and views


def test_typed_values() -> None:
    assert Attribute.of(Tag.ISCSI_NAME, "iqn.x").value == b"iqn.x\0\0\0"
    assert Attribute.of(Tag.ISCSI_NAME, "iqn").value == b"iqn\0"
    assert Attribute.of(Tag.ISCSI_NAME, "iqn.x").decoded() == "iqn.x"
    v4 = Attribute.of(Tag.PORTAL_IP_ADDRESS, "192.0.2.1")
    assert v4.value == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])  # 6.3.1: IPv4-mapped
    assert v4.decoded() == ipaddress.IPv4Address("192.0.2.1")
    assert Attribute.of(Tag.PORTAL_IP_ADDRESS, "2001:db8::1").decoded() == ipaddress.ip_address(
        "2001:db8::1")  # fmt: skip
    compat = Attribute(Tag.PORTAL_IP_ADDRESS, bytes(12) + bytes([127, 0, 0, 1]))
    assert compat.decoded() == ipaddress.IPv4Address("127.0.0.1")  # open-isns's form
    assert Attribute.of(Tag.ESI_PORT, I.port_value(3205, udp=True)).port() == (3205, True)
    assert Attribute.of(Tag.TIMESTAMP, 2**40).decoded() == 2**40
    assert Attribute.of(Tag.FC4_TYPES, bytes(32)).decoded() == bytes(32)
    assert Attribute.of(9999, b"abcd").decoded() == b"abcd"
    assert Attribute.of(Tag.PG_TAG).value == b"" and Attribute(Tag.PG_TAG).decoded() is None
    assert I.attribute_spec(600) is not None and I.attribute_spec(600).object is I.ObjectType.PORTAL
    assert I.attribute_spec(9999) is None
    with pytest.raises(TypeError):
        Attribute.of(Tag.ENTITY_PROTOCOL, "two")
    with pytest.raises(ISNSFormatError, match="UTF-8"):
        Attribute(Tag.ISCSI_NAME, b"\xff\0\0\0").decoded()
    with pytest.raises(ISNSFormatError, match="uint32 value of 8 bytes"):
        Attribute(Tag.ENTITY_PROTOCOL, bytes(8)).decoded()
    with pytest.raises(ISNSFormatError, match="not a port"):
        Attribute.of(Tag.ISCSI_NAME, "x").port()


def test_message_views_and_responses() -> None:
    m = _registration()
    assert m.source == Attribute.of(Tag.ISCSI_NAME, TARGET)
    assert [a.tag for a in m.key_attributes] == [Tag.ENTITY_IDENTIFIER]
    assert m.operating_attributes[0].tag == Tag.ENTITY_IDENTIFIER
    assert m.first(Tag.ISCSI_NODE_TYPE) is not None and m.first(Tag.ISCSI_ALIAS) is None
    assert m.spec is not None and not m.is_response
    rsp = m.response(Status.SUCCESSFUL, [*m.key_attributes, DELIMITER, *m.operating_attributes])
    assert rsp.function == FunctionId.DEV_ATTR_REG_RSP and rsp.flags == Flag.SERVER
    assert rsp.transaction_id == 7 and rsp.is_response and I.violations(rsp) == []
    assert rsp.source is None and rsp.key_attributes == m.key_attributes
    no_delim = replace(rsp, attributes=m.operating_attributes)
    assert no_delim.key_attributes == () and no_delim.operating_attributes == m.operating_attributes
    assert "RFC 4171 5.7.3" in _rules(replace(rsp, attributes=(DELIMITER, DELIMITER)))
    assert "RFC 4171 5.4" in _rules(replace(rsp, status=None))
    assert "RFC 4171 5.4" in _rules(replace(rsp, status=4))  # reserved
    esi = Message(FunctionId.ESI, 9, Flag.SERVER, None, (
        Attribute.of(Tag.TIMESTAMP, 1), Attribute.of(Tag.ENTITY_IDENTIFIER, "e"),
        Attribute.of(Tag.PORTAL_IP_ADDRESS, "127.0.0.1"),
        Attribute.of(Tag.PORTAL_TCP_UDP_PORT, 3260)))  # fmt: skip
    assert I.violations(esi) == [] and esi.operating_attributes == esi.attributes
    esi_rsp = esi.response(attributes=esi.attributes)
    assert esi_rsp.function == FunctionId.ESI_RSP and esi_rsp.flags == Flag.CLIENT
    assert I.violations(esi_rsp) == []
    assert "RFC 4171 5.6.5.13" in _rules(replace(esi, attributes=esi.attributes[1:]))
    assert "RFC 4171 5.6.5.13" in _rules(replace(esi, attributes=(*esi.attributes, DELIMITER)))
    # a failed ESIRsp/SCNRsp need not echo the attributes
    assert I.violations(replace(esi_rsp, status=Status.INTERNAL_ERROR, attributes=())) == []
    dom = Message.request(FunctionId.RQST_DOM_ID, source=Attribute.of(Tag.SWITCH_NAME, 1),
                          keys=[Attribute.of(Tag.VIRTUAL_FABRIC_ID, "vf")],
                          operating=[Attribute.of(Tag.PREFERRED_ID, 5)])  # fmt: skip
    assert "RFC 4171 5.6.1" in _rules(Message.request(FunctionId.DEV_ATTR_QRY))  # no Source
    assert I.violations(dom) == []  # iFCP: a Switch Name may be the Source (5.6.5.15)
    vendor = Message(0x0123, 1, Flag.CLIENT, body=b"\0\0\0\1")
    assert I.violations(vendor) == [] and vendor.response().function == 0x8123


def test_heartbeat() -> None:
    hb = Heartbeat(bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]), 3205, 3205, 5, 1, 0,
                   ((bytes(16), 3205, 0),), b"vend")  # fmt: skip
    msg = Message(FunctionId.HEARTBEAT, 0, Flag.SERVER, body=hb.encode())
    assert I.violations(msg) == []
    assert Heartbeat.decode(_decode_all(I.encode(msg))[0].body) == hb
    with pytest.raises(ISNSFormatError, match="at least 32"):
        Heartbeat.decode(bytes(31))
    with pytest.raises(ISNSFormatError, match="backup servers"):
        Heartbeat.decode(hb.encode()[:40])
    assert "RFC 4171 5.6.5.14" in _rules(replace(msg, body=b""))
    assert _rules(replace(msg, attributes=(DELIMITER,))) >= {"RFC 4171 5.6.5.14"}


def test_annotate() -> None:
    m = _registration()
    notes = I.annotate(I.encode(m))
    assert notes[:3] == [(0, 2, "version", 1), (2, 2, "function", 1), (4, 2, "length",
                                                                        len(I.payload_of(m)))]  # fmt: skip
    assert (12, 4, "tag", 32) in notes
    assert any(name == "iscsi_name" for _, _, name, _ in notes)
    rsp = m.response(Status.INVALID_REGISTRATION, [Attribute(4242, b"abcd")])
    notes = I.annotate(I.encode(rsp, strict=False))
    assert (12, 4, "status", 3) in notes and any(n == "tag_4242" for _, _, n, _ in notes)
    assert I.annotate(b"short") == []
    hb = I.encode(Message(FunctionId.HEARTBEAT, 0, Flag.SERVER, body=Heartbeat().encode()))
    assert len(I.annotate(hb)) == 6
    cut = I.encode_pdu(PDU(FunctionId.DEV_ATTR_REG_RSP, b"\0\0", Flag.SERVER), strict=False)
    assert len(I.annotate(cut)) == 6
    overrun = I.encode_pdu(PDU(1, (32).to_bytes(4, "big") + (99).to_bytes(4, "big"),
                               Flag.CLIENT), strict=False)  # fmt: skip
    assert len(I.annotate(overrun)) == 6
