"""Unit tests of the PDU codec (core.pdu) against its layout tables (core.layout)."""

from __future__ import annotations

import dataclasses

import pytest

from iscsi_conformance.core import codes, layout, pdu
from iscsi_conformance.core.digest import crc32c, read_digest
from iscsi_conformance.core.layout import BHS_LENGTH, FieldKind, annotate, check_reserved
from iscsi_conformance.core.pdu import (
    PDU_CLASSES,
    LoginRequest,
    LoginResponse,
    NeedMore,
    NopIn,
    NopOut,
    PDUDecoder,
    Reject,
    ScsiCommand,
    ScsiDataIn,
    ScsiResponse,
    Tamper,
    TextRequest,
    UnknownPDU,
    decode,
    encode,
)
from iscsi_conformance.errors import DigestError, PDUFormatError

CLASSES = list(PDU_CLASSES.values())


def sample(cls: type[pdu.PDU]) -> pdu.PDU:
    """A PDU of ``cls`` that strict encoding accepts, with data where allowed."""
    extra: dict[str, object] = {}
    if cls is Reject:
        extra["data"] = encode(NopOut(itt=7))
    elif cls is ScsiCommand:
        extra = {"write": True, "data": b"imm"}
    elif cls is ScsiResponse:
        extra["data"] = ScsiResponse.sense_segment(b"\x70\x00\x05")
    elif cls.layout is not None and cls.layout.has_data and cls is not ScsiDataIn:
        extra["data"] = b"hello"
    return cls(**extra)  # type: ignore[arg-type]


def decoded(buf: bytes, **kw: object) -> pdu.PDU:
    result = decode(buf, **kw)  # type: ignore[arg-type]
    assert not isinstance(result, NeedMore), result
    p, used = result
    assert used == len(buf)
    return p


# --------------------------------------------------------------------- class facts


def test_every_opcode_of_section_11_has_a_class() -> None:
    assert set(PDU_CLASSES) == {int(op) for op in codes.Opcode}
    for op, cls in PDU_CLASSES.items():
        assert cls.opcode == op
        assert cls.is_request == codes.Opcode(op).from_initiator
        expected = (
            layout.Direction.INITIATOR_TO_TARGET
            if op < 0x20
            else layout.Direction.TARGET_TO_INITIATOR
        )
        assert cls.direction is expected


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fields_are_keyword_only_and_frozen(cls: type[pdu.PDU]) -> None:
    p = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.data = b"x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cls(0)  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_repr_replays(cls: type[pdu.PDU]) -> None:
    p = sample(cls)
    assert eval(repr(p), vars(pdu)) == p


def test_enum_members_become_ints_so_repr_replays() -> None:
    p = TextRequest(itt=codes.Opcode.R2T)
    assert type(p.itt) is int
    assert "Opcode" not in repr(p)


# --------------------------------------------------------------------- placement


def _field_probe(base: pdu.PDU, f: layout.Field) -> object:
    """A value for ``f`` that differs from its default: all ones where possible."""
    if f.is_flag:
        return not getattr(base, f.name)
    if f.is_bytes:
        return bytes(range(1, 17))
    return f.max_value if getattr(base, f.name) != f.max_value else 1


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_field_lands_where_the_layout_says(cls: type[pdu.PDU]) -> None:
    """Encode with one field at its maximum; the generic reader of layout.py finds it
    at its offset and nothing else moved (the compiled codec agrees with the table)."""
    assert cls.layout is not None
    base = cls()
    base_notes = {(o, n): v for o, _, n, v in annotate(encode(base, strict=False))}
    for f in cls.layout.value_fields:
        value = _field_probe(base, f)
        bhs = encode(dataclasses.replace(base, **{f.name: value}), strict=False)[:BHS_LENGTH]
        notes = {(o, n): v for o, _, n, v in annotate(bhs)}
        expect = int.from_bytes(value, "big") if isinstance(value, bytes) else int(value)  # type: ignore[call-overload]
        assert notes[(f.offset, f.name)] == expect, f.name
        changed = {k for k in notes if notes[k] != base_notes[k]}
        assert changed == {(f.offset, f.name)}, f.name


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fixed_and_opcode_bits(cls: type[pdu.PDU]) -> None:
    bhs = encode(cls(), strict=False)
    assert bhs[0] & 0x3F == cls.opcode
    assert check_reserved(bhs) == []
    assert cls.layout is not None
    if cls.layout.field("Opcode") and any(
        f.kind is FieldKind.FIXED and f.offset == 1 for f in cls.layout.fields
    ):
        assert bhs[1] & 0x80


def test_login_request_i_bit_is_always_one() -> None:
    assert encode(LoginRequest())[0] == 0x43


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("hd,dd", [(False, False), (True, False), (False, True), (True, True)])
def test_round_trip_with_digests(cls: type[pdu.PDU], hd: bool, dd: bool) -> None:
    p = sample(cls)
    wire = encode(p, header_digest=hd, data_digest=dd)
    assert len(wire) % 4 == 0
    assert decoded(wire, header_digest=hd, data_digest=dd) == p


def test_lengths_padding_and_digest_positions() -> None:
    p = NopOut(immediate=True, itt=1, data=b"12345")
    wire = encode(p, header_digest=True, data_digest=True)
    assert wire[4] == 0 and int.from_bytes(wire[5:8], "big") == 5
    assert read_digest(wire, 48) == crc32c(wire[:48])
    assert wire[52:57] == b"12345" and wire[57:60] == b"\0\0\0"
    assert read_digest(wire, 60) == crc32c(wire[52:60])  # padding is covered
    assert len(wire) == 64


def test_no_data_digest_without_data() -> None:
    assert len(encode(NopOut(immediate=True), header_digest=True, data_digest=True)) == 52


def test_need_more_counts_missing_bytes() -> None:
    wire = encode(NopOut(immediate=True, data=b"abcdef"), header_digest=True, data_digest=True)
    assert decode(b"") == NeedMore(48)
    assert decode(wire[:10], header_digest=True, data_digest=True) == NeedMore(38)
    for cut in range(48, len(wire)):
        assert decode(wire[:cut], header_digest=True, data_digest=True) == NeedMore(len(wire) - cut)


def test_decode_takes_one_pdu_from_a_longer_buffer() -> None:
    a, b = encode(NopOut(immediate=True, itt=1)), encode(NopOut(immediate=True, itt=2))
    result = decode(a + b)
    assert not isinstance(result, NeedMore)
    assert result[1] == len(a) and result[0] == NopOut(immediate=True, itt=1)
    assert decode(memoryview(bytearray(a + b)))[0] == result[0]  # type: ignore[index]


def test_extended_cdb_and_bidi_ahs() -> None:
    p = ScsiCommand(read=True, write=True, final=True, cdb=bytes(range(32)), bidi_read_length=4096)
    wire = encode(p)
    # Extended CDB AHS: AHSLength = CDB length - 15, padded (RFC 7143 11.2.2.3)
    assert wire[4] == (4 + 16 + 8) // 4
    assert wire[48:52] == (17).to_bytes(2, "big") + bytes([codes.AHSType.EXTENDED_CDB, 0])
    assert decoded(wire) == p


def test_odd_extended_cdb_is_padded() -> None:
    p = ScsiCommand(cdb=bytes(range(1, 19)))
    wire = encode(p)
    assert len(wire) == 48 + 8 and wire[-2:] == b"\0\0"
    assert decoded(wire) == p


def test_short_cdb_is_zero_padded_on_construction() -> None:
    assert ScsiCommand(cdb=b"\x12\x00\x00\x00\x24\x00").cdb == b"\x12\0\0\0\x24" + bytes(11)


def test_non_canonical_ahs_stays_raw_and_exact() -> None:
    # A Bidirectional AHS with a non-zero reserved byte cannot be lifted exactly.
    raw = bytes([0, 5, 2, 9, 0, 0, 1, 0])
    wire = encode(ScsiCommand(ahs=raw), strict=False)
    p = decoded(wire)
    assert isinstance(p, ScsiCommand) and p.bidi_read_length is None and p.ahs == raw
    assert encode(p, strict=False) == wire


def test_bidi_ahs_with_a_wrong_length_stays_raw() -> None:
    raw = bytes([0, 4, 2, 0, 0, 0, 1, 0])  # AHSLength must be 5 (RFC 7143 11.2.2.4)
    p = decoded(encode(ScsiCommand(ahs=raw), strict=False))
    assert isinstance(p, ScsiCommand) and p.bidi_read_length is None and p.ahs == raw


def test_unknown_opcode_round_trips() -> None:
    bhs = bytes([0x1C]) + bytes(range(1, 48))
    p = UnknownPDU(opcode=0x1C, bhs=bhs, data=b"vendor")
    wire = encode(p, strict=False)
    q = decoded(wire)
    assert isinstance(q, UnknownPDU) and q.opcode == 0x1C and q.data == b"vendor"
    assert encode(q, strict=False) == wire
    assert q.is_request and q.direction is layout.Direction.INITIATOR_TO_TARGET
    assert not UnknownPDU(opcode=0x3C).is_request
    assert UnknownPDU(opcode=0x3C).direction is layout.Direction.TARGET_TO_INITIATOR
    with pytest.raises(PDUFormatError):
        encode(q)
    assert check_reserved(wire)[0].field == "Opcode"


# --------------------------------------------------------------------- decoder


def test_decoder_byte_by_byte_with_digest_switch() -> None:
    login = encode(LoginResponse(transit=True, csg=1, nsg=3, data=b"HeaderDigest=CRC32C\0"))
    ffp = [NopIn(itt=5, data=b"ping"), ScsiResponse(itt=6)]
    stream = login + b"".join(encode(p, header_digest=True, data_digest=True) for p in ffp)
    dec = PDUDecoder()
    got: list[pdu.PDU] = []
    for i in range(len(stream)):
        dec.feed(stream[i : i + 1])
        for p in dec:
            got.append(p)
            if isinstance(p, LoginResponse):
                dec.header_digest = dec.data_digest = True
    assert got[1:] == ffp and isinstance(got[0], LoginResponse)
    assert dec.buffered == 0


def test_decoder_bounds_the_data_segment_before_buffering_it() -> None:
    dec = PDUDecoder(max_data_segment_length=8192)
    wire = encode(NopOut(immediate=True, data=bytes(8193)))
    dec.feed(wire[:48])
    with pytest.raises(PDUFormatError) as info:
        dec.next_pdu()
    assert info.value.section == "RFC 7143 13.12"
    assert info.value.header == wire[:48]


def test_decoder_skips_a_pdu_with_a_bad_data_digest() -> None:
    bad = encode(NopOut(immediate=True, data=b"x"), data_digest=True, strict=False,
                 tamper=Tamper(data_digest_value=1))  # fmt: skip
    good = encode(NopOut(immediate=True, itt=9), data_digest=True)
    dec = PDUDecoder(data_digest=True)
    dec.feed(bad + good)
    with pytest.raises(DigestError) as info:
        dec.next_pdu()
    assert info.value.which == "data" and info.value.received == 1
    assert info.value.reject_reason == codes.RejectReason.DATA_DIGEST_ERROR
    assert dec.next_pdu() == NopOut(immediate=True, itt=9)


def test_header_digest_error_consumes_nothing() -> None:
    wire = encode(NopOut(immediate=True), header_digest=True, strict=False,
                  tamper=Tamper(header_digest_value=0xDEADBEEF))  # fmt: skip
    dec = PDUDecoder(header_digest=True)
    dec.feed(wire)
    for _ in range(2):
        with pytest.raises(DigestError) as info:
            dec.next_pdu()
        assert info.value.which == "header" and info.value.received == 0xDEADBEEF
        assert info.value.expected == crc32c(wire[:48])
    assert dec.buffered == len(wire)


def test_decoder_compacts_its_buffer() -> None:
    dec = PDUDecoder()
    one = encode(NopOut(immediate=True, data=bytes(4000)))
    for _ in range(40):
        dec.feed(one)
    dec.feed(one[:10])
    assert sum(1 for _ in dec) == 40
    assert dec.buffered == 10


# --------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    "bad, field, section",
    [
        (LoginRequest(transit=True, cont=True, csg=0, nsg=1), "cont", "RFC 7143 11.12"),
        (LoginRequest(transit=True, csg=1, nsg=1), "nsg", "RFC 7143 6.3"),
        (LoginResponse(csg=2), "csg", "RFC 7143 11.12.3"),
        (TextRequest(final=True, cont=True), "cont", "RFC 7143 11.10.2"),
        (
            ScsiCommand(expected_data_transfer_length=512),
            "expected_data_transfer_length",
            "RFC 7143 11.3.1",
        ),
        (ScsiCommand(read=True, bidi_read_length=5), "bidi_read_length", "RFC 7143 11.2.2.4"),
        (ScsiCommand(read=True, data=b"x"), "data", "RFC 7143 11.3"),
        (ScsiCommand(final=False), "final", "RFC 7143 11.3.1"),
        (ScsiCommand(attr=6), "attr", "RFC 7143 11.3.1"),
        (ScsiDataIn(status_present=True), "status_present", "RFC 7143 11.7.3"),
        (
            ScsiDataIn(final=True, status_present=True, overflow=True, underflow=True),
            "overflow",
            "RFC 7143 11.7.3",
        ),
        (ScsiDataIn(status=2), "status", "RFC 7143 11.7.3"),
        (ScsiResponse(overflow=True, underflow=True), "overflow", "RFC 7143 11.4.1"),
        (ScsiResponse(bidi_overflow=True, bidi_underflow=True), "bidi_overflow", "RFC 7143 11.4.1"),
        (ScsiResponse(data=b"\x00\x09abc"), "data", "RFC 7143 11.4.7"),
        (NopOut(itt=0xFFFFFFFF), "immediate", "RFC 7143 11.18.1"),
        (Reject(data=b"short"), "data", "RFC 7143 11.17"),
        (pdu.TaskManagementRequest(function=0), "function", "RFC 7143 11.5.1"),
        (pdu.TaskManagementRequest(data=b"x"), "data", "RFC 7143 11.5"),
        (NopOut(ahs=b"\0\0\0\0"), "ahs", "RFC 7143 11.2.2"),
        (NopOut(itt=1 << 32), "itt", "RFC 7143 11.18"),
        (NopOut(itt=-1), "itt", "RFC 7143 11.18"),
        (LoginRequest(isid=1 << 48), "isid", "RFC 7143 11.12"),
        (pdu.SnackRequest(snack_type=4), "snack_type", "RFC 7143 11.16.1"),
        (pdu.LogoutRequest(reason=3), "reason", "RFC 7143 11.14.1"),
        (pdu.AsyncMessage(async_event=9), "async_event", "RFC 7143 11.9.1"),
    ],
)
def test_strict_encoding_names_the_rule(bad: pdu.PDU, field: str, section: str) -> None:
    found = pdu.violations(bad)
    assert any(v.field == field and v.section == section for v in found), found
    with pytest.raises(PDUFormatError) as info:
        encode(bad)
    assert info.value.section
    encode(bad, strict=False)  # non-strict encodes it anyway


def test_wrong_types_are_refused() -> None:
    for bad, field in [
        (ScsiCommand(cdb="not bytes"), "cdb"),  # type: ignore[arg-type]
        (ScsiCommand(cdb=None), "cdb"),  # type: ignore[arg-type]
        (NopOut(itt="1"), "itt"),  # type: ignore[arg-type]
        (ScsiResponse(data=5), "data"),  # type: ignore[arg-type]
        (NopOut(ahs=None), "ahs"),  # type: ignore[arg-type]
    ]:
        assert [v.field for v in pdu.violations(bad)] == [field]
        with pytest.raises(PDUFormatError):
            encode(bad)


def test_strict_refuses_oversized_data() -> None:
    big = NopOut(immediate=True, data=bytes(pdu.MAX_DATA_SEGMENT_LENGTH + 1))
    assert [v.field for v in pdu.violations(big)] == ["data"]
    with pytest.raises(PDUFormatError):
        encode(big)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_samples_are_valid(cls: type[pdu.PDU]) -> None:
    assert pdu.violations(sample(cls)) == []
    pdu.validate(sample(cls))


def test_non_strict_truncates_wide_values() -> None:
    wire = encode(LoginRequest(isid=(1 << 48) + 5, csg=7, itt=(1 << 32) + 3), strict=False)
    p = decoded(wire)
    assert isinstance(p, LoginRequest) and (p.isid, p.csg, p.itt) == (5, 3, 3)


def test_tamper_rejects_strict() -> None:
    with pytest.raises(ValueError):
        encode(NopOut(), tamper=Tamper())


# --------------------------------------------------------------------- tamper


def test_tamper_lengths_patch_opcode_padding_extra() -> None:
    p = NopOut(immediate=True, data=b"abc")
    wire = encode(
        p,
        strict=False,
        header_digest=True,
        data_digest=True,
        tamper=Tamper(
            data_segment_length=9,
            total_ahs_length=2,
            bhs_patch={2: 0xAA},
            opcode=0x1D,
            padding=b"\xff",
            extra=b"tail",
        ),
    )
    assert wire[0] == 0x40 | 0x1D and wire[4] == 2 and wire[5:8] == b"\0\0\x09" and wire[2] == 0xAA
    assert read_digest(wire, 48) == crc32c(wire[:48])  # computed after the patch
    assert wire[52:56] == b"abc\xff"
    assert read_digest(wire, 56) == crc32c(b"abc\xff")
    assert wire[60:] == b"tail"
    assert check_reserved(wire)[0].field == "Opcode"


def test_reserved_bits_decode_but_are_reported() -> None:
    wire = encode(NopOut(immediate=True), strict=False, tamper=Tamper(bhs_patch={40: 1, 1: 0x01}))
    assert decoded(wire) == NopOut(immediate=True)  # decode does not reject
    problems = check_reserved(wire)
    assert {v.field for v in problems} == {"reserved", "1"}
    assert all(v.section == "RFC 7143 11.18" for v in problems)


def test_fixed_itt_of_reject_and_async_is_checked() -> None:
    wire = encode(pdu.AsyncMessage(), strict=False, tamper=Tamper(bhs_patch={16: 0}))
    assert [v.field for v in check_reserved(wire)] == ["0xffffffff"]


# --------------------------------------------------------------------- helpers


def test_annotate_and_bhs_of() -> None:
    bhs = pdu.bhs_of(LoginRequest(isid=0x80123456789A, cid=3))
    notes = {n: v for _, _, n, v in annotate(bhs)}
    assert notes["isid"] == 0x80123456789A and notes["cid"] == 3 and notes["Opcode"] == 3
    assert len(bhs) == BHS_LENGTH
    assert [n for _, _, n, _ in annotate(bytes([0x1C]) + bytes(47))] == [
        "reserved", "reserved", "Opcode", "TotalAHSLength", "DataSegmentLength",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        annotate(b"short")


def test_layout_lookup() -> None:
    lay = layout.LAYOUTS[codes.Opcode.SCSI_DATA_IN]
    assert lay.field("S").name == "status_present" and lay.field("residual_count").offset == 44
    with pytest.raises(KeyError):
        lay.field("nope")
    assert layout.layout_for(0x7F) is layout.LAYOUTS[codes.Opcode.REJECT]
    assert layout.layout_for(0x1C) is None
    assert str(layout.Violation("f", "RFC 1", "bad")) == "f: bad [RFC 1]"


def test_response_helpers() -> None:
    r = ScsiResponse(data=ScsiResponse.sense_segment(b"SENSE", b"resp"))
    assert r.sense == b"SENSE" and r.response_data == b"resp"
    assert ScsiResponse().sense == b"" and ScsiResponse().response_data == b""
    lr = LoginResponse(status_class=2, status_detail=1)
    assert lr.status == codes.LoginStatus.AUTH_FAILURE
    assert codes.LoginStatus.AUTH_FAILURE.status_class == 2
    assert codes.LoginStatus.AUTH_FAILURE.status_detail == 1


@pytest.mark.parametrize("lun", [0, 1, 255, 256, 0x3FFF])
def test_lun_field_round_trip(lun: int) -> None:
    assert pdu.field_to_lun(pdu.lun_to_field(lun)) == lun


def test_lun_encodings() -> None:
    assert pdu.lun_to_field(1) == 0x0001 << 48
    assert pdu.lun_to_field(300) == (0x4000 | 300) << 48
    with pytest.raises(ValueError):
        pdu.lun_to_field(0x4000)
    with pytest.raises(ValueError):
        pdu.field_to_lun(0xC0 << 56)


def test_pdu_class_registry() -> None:
    assert pdu.pdu_class(0x43) is LoginRequest and pdu.pdu_class(0x1C) is None


def test_header_digest_fast_paths() -> None:
    wire = encode(NopOut(immediate=True, itt=4), header_digest=True)
    assert len(wire) == 52 and read_digest(wire, 48) == crc32c(wire[:48])
    assert decode(wire[:50], header_digest=True) == NeedMore(2)
    assert decoded(wire, header_digest=True) == NopOut(immediate=True, itt=4)
    with pytest.raises(PDUFormatError):
        encode(NopOut(itt=0xFFFFFFFF), header_digest=True)
