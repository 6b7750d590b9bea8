"""The PDU trace: JSON-serialisable, secrets and CHAP values masked."""

from __future__ import annotations

import json

from iscsi_conformance.core.pdu import LoginRequest, LoginResponse, encode
from iscsi_conformance.initiator.trace import PDUTrace, mask_key_values


def test_mask_keeps_length_and_other_keys() -> None:
    data = b"CHAP_N=alice\0CHAP_R=0x0123abcd\0X-CHAP_Rx=keep\0CHAP_C=0xfeed\0"
    masked = mask_key_values(data)
    assert len(masked) == len(data)
    assert b"0123abcd" not in masked and b"feed" not in masked
    assert b"CHAP_N=alice" in masked and b"X-CHAP_Rx=keep" in masked


def test_trace_json_and_text_mask_secrets() -> None:
    t = PDUTrace("test")
    t.add_secret("Sup3rS3cret99")
    req = LoginRequest(csg=0, nsg=1, isid=0x800000000001,
                       data=b"CHAP_N=alice\0CHAP_R=0xdeadbeefcafe\0X-note=Sup3rS3cret99\0")  # fmt: skip
    resp = LoginResponse(
        csg=0, isid=0x800000000001, data=b"CHAP_A=5\0CHAP_I=7\0CHAP_C=0x0badf00d\0"
    )
    t.record("send", 100.0, req, encode(req))
    t.record("recv", 100.5, resp, encode(resp))
    doc = t.to_json()
    text = json.dumps(doc) + t.format()
    for secret in ("deadbeefcafe", "0badf00d", "Sup3rS3cret99", b"Sup3rS3cret99".hex()):
        assert secret not in text
    assert doc["entries"][0]["direction"] == "send"
    assert doc["entries"][1]["time"] == 0.5
    assert doc["entries"][0]["fields"]["isid"] == 0x800000000001
    assert "CHAP_N=alice" in doc["entries"][0]["text"]
    # the raw bytes in memory stay exact for the test's own checks
    assert t.entries[0].raw == encode(req)
    assert len(bytes.fromhex(doc["entries"][0]["raw"])) == len(encode(req))
    assert t.sent() == [req] and t.received() == [resp]
