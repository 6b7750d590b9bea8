"""Golden vectors: the RFC 3720 B.4 Read PDU, and real sessions between libiscsi and tgt
captured over loopback (fixtures/captures, see PROVENANCE.md there).

Each captured byte stream is decoded PDU by PDU, the way a receiver would (no digests
during login, then whatever the login negotiated), and every PDU is re-encoded: the
result must be the captured bytes exactly, whether the stream is fed whole or byte by
byte. Header digests in the streams are checked by the decoder on the way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iscsi_conformance.core.codes import Opcode
from iscsi_conformance.core.layout import check_reserved
from iscsi_conformance.core.pdu import (
    PDU,
    LoginRequest,
    LoginResponse,
    NeedMore,
    PDUDecoder,
    ScsiCommand,
    decode,
    encode,
    violations,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CAPTURES = FIXTURES / "captures"
CONNECTIONS = sorted({p.name.split(".")[0] for p in CAPTURES.glob("conn*.i2t.bin")})


def test_rfc3720_read_pdu() -> None:
    vectors = json.loads((FIXTURES / "pdus/rfc3720_b4_crc32c.json").read_text())["vectors"]
    vector = next(v for v in vectors if "pdu" in v)
    wire = bytes.fromhex(vector["data_hex"]) + bytes.fromhex(vector["crc_wire"])
    fields = dict(vector["pdu"])
    assert fields.pop("class") == "ScsiCommand"
    expected = ScsiCommand(cdb=bytes.fromhex(fields.pop("cdb_hex")), **fields)
    result = decode(wire, header_digest=True)
    assert result == (expected, 52)
    assert encode(expected, header_digest=True) == wire


def _negotiated(t2i: bytes) -> dict[str, str]:
    """Keys the target answered during login (a minimal parse, RFC 7143 6.1)."""
    keys: dict[str, str] = {}
    dec = PDUDecoder()
    dec.feed(t2i)
    for p in dec:
        if isinstance(p, LoginResponse):
            for pair in p.data.split(b"\0"):
                if b"=" in pair:
                    k, v = pair.decode().split("=", 1)
                    keys[k] = v
            if p.transit and p.nsg == 3:
                break
    return keys


def _ends_login(p: PDU) -> bool:
    return isinstance(p, LoginRequest | LoginResponse) and p.transit and p.nsg == 3


def _walk(stream: bytes, hd: bool, dd: bool) -> list[tuple[PDU, bytes, bool, bool]]:
    """Decode with decode(), returning (pdu, its bytes, hd, dd) in order."""
    out, pos, cur_hd, cur_dd = [], 0, False, False
    while pos < len(stream):
        result = decode(stream[pos:], header_digest=cur_hd, data_digest=cur_dd)
        assert not isinstance(result, NeedMore), f"truncated PDU at byte {pos}"
        p, used = result
        out.append((p, stream[pos : pos + used], cur_hd, cur_dd))
        pos += used
        if _ends_login(p):
            cur_hd, cur_dd = hd, dd
    return out


@pytest.fixture(scope="module", params=CONNECTIONS)
def session(request: pytest.FixtureRequest) -> dict[str, object]:
    name = request.param
    t2i = (CAPTURES / f"{name}.t2i.bin").read_bytes()
    i2t = (CAPTURES / f"{name}.i2t.bin").read_bytes()
    keys = _negotiated(t2i)
    return {
        "name": name,
        "streams": {"i2t": i2t, "t2i": t2i},
        "hd": keys.get("HeaderDigest") == "CRC32C",
        "dd": keys.get("DataDigest") == "CRC32C",
    }


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_capture_reencodes_byte_exact(session: dict, direction: str) -> None:
    stream = session["streams"][direction]
    walked = _walk(stream, session["hd"], session["dd"])
    assert walked, "empty stream"
    for p, wire, hd, dd in walked:
        assert encode(p, header_digest=hd, data_digest=dd, strict=False) == wire, p
        assert check_reserved(wire) == [], p  # tgt and libiscsi keep reserved bits clear
        assert violations(p) == [], p  # ... and break none of our strict format rules
    assert b"".join(w for _, w, _, _ in walked) == stream


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_capture_byte_by_byte(session: dict, direction: str) -> None:
    stream = session["streams"][direction]
    expected = [p for p, *_ in _walk(stream, session["hd"], session["dd"])]
    dec = PDUDecoder()
    got: list[PDU] = []
    for i in range(len(stream)):
        dec.feed(stream[i : i + 1])
        for p in dec:
            got.append(p)
            if _ends_login(p):
                dec.header_digest, dec.data_digest = session["hd"], session["dd"]
    assert got == expected and dec.buffered == 0


def test_captures_cover_the_common_opcodes() -> None:
    seen, digested = set(), 0
    for name in CONNECTIONS:
        t2i = (CAPTURES / f"{name}.t2i.bin").read_bytes()
        hd = _negotiated(t2i).get("HeaderDigest") == "CRC32C"
        digested += hd
        for direction in ("i2t", "t2i"):
            stream = (CAPTURES / f"{name}.{direction}.bin").read_bytes()
            seen |= {type(p).opcode for p, *_ in _walk(stream, hd, False)}
    assert seen >= {
        Opcode.LOGIN_REQUEST, Opcode.LOGIN_RESPONSE, Opcode.TEXT_REQUEST, Opcode.TEXT_RESPONSE,
        Opcode.SCSI_COMMAND, Opcode.SCSI_RESPONSE, Opcode.SCSI_DATA_IN, Opcode.SCSI_DATA_OUT,
        Opcode.R2T, Opcode.TASK_MANAGEMENT_REQUEST, Opcode.TASK_MANAGEMENT_RESPONSE,
        Opcode.LOGOUT_REQUEST, Opcode.LOGOUT_RESPONSE,
    }  # fmt: skip
    assert digested >= 3  # sessions with header digests negotiated
