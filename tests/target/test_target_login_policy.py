"""The reference target keeps its own login policy (no peers needed): a target that
holds only CRC32C for a digest (the digest-required profile) answers Reject to an offer
of None and then fails the login, instead of serving a session without the digest; a
PDU other than a Login Request during login gets the Login reject "invalid during
login" (RFC 3720 3.2.3 = RFC 7143 4.2.3), and before any Login Request a plain close."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.codes import LoginStatus
from iscsi_conformance.target import engine as E
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.luns import LunStore

IQN = "iqn.2024-01.org.example:policy"


def _engine(**parameters: str) -> E.TargetEngine:
    cfg = simple_config(("127.0.0.1", 0), IQN, ["4M"])
    target = dataclasses.replace(cfg.targets[0], parameters=dict(parameters))
    cfg = dataclasses.replace(cfg, targets=(target,))
    return E.TargetEngine(cfg, LunStore(cfg).by_target, rng=lambda n: bytes(n))


def _feed(engine: E.TargetEngine, conn: Any, pdu: P.PDU) -> list[P.PDU]:
    conn.receive_data(P.encode(pdu, strict=False))
    dec = P.PDUDecoder()
    for _, bufs, _ in engine.take_output():
        dec.feed(b"".join(bytes(b) for b in bufs))
    return list(dec)


def _login(keys: list[tuple[str, str]]) -> P.LoginRequest:
    base = [("InitiatorName", "iqn.2024-01.org.example:ini"), ("TargetName", IQN)]
    return P.LoginRequest(
        transit=True, csg=1, nsg=3, isid=1, itt=1, cmdsn=1, data=T.format_pairs(base + keys)
    )


@pytest.mark.parametrize("key", ["HeaderDigest", "DataDigest"])
def test_required_digest_offered_none_fails_the_login(key: str) -> None:
    engine = _engine(HeaderDigest="CRC32C", DataDigest="CRC32C")
    conn = engine.new_connection(portal_group=1)
    other = "DataDigest" if key == "HeaderDigest" else "HeaderDigest"
    (rsp,) = _feed(engine, conn, _login([(key, "None"), (other, "CRC32C")]))
    assert isinstance(rsp, P.LoginResponse)
    assert (rsp.status_class << 8 | rsp.status_detail) == LoginStatus.INITIATOR_ERROR
    assert not rsp.transit and rsp.tsih == 0
    assert conn.close_requested and conn.state is not E.ConnState.FULL_FEATURE
    assert not engine.sessions


def test_required_digest_offered_with_none_first_is_served() -> None:
    engine = _engine(HeaderDigest="CRC32C", DataDigest="CRC32C")
    conn = engine.new_connection(portal_group=1)
    (rsp,) = _feed(
        engine, conn, _login([("HeaderDigest", "None,CRC32C"), ("DataDigest", "CRC32C")])
    )
    assert rsp.status_class == 0 and rsp.transit
    assert dict(T.parse_pairs(rsp.data))["HeaderDigest"] == "CRC32C"
    assert conn.state is E.ConnState.FULL_FEATURE


def test_digest_none_is_served_where_the_target_allows_it() -> None:
    engine = _engine()
    conn = engine.new_connection(portal_group=1)
    (rsp,) = _feed(engine, conn, _login([("HeaderDigest", "None"), ("DataDigest", "None")]))
    assert rsp.status_class == 0 and conn.state is E.ConnState.FULL_FEATURE


def test_non_login_pdu_during_login_gets_invalid_during_login() -> None:
    engine = _engine()
    conn = engine.new_connection(portal_group=1)
    first = P.LoginRequest(
        csg=0,
        nsg=1,
        isid=1,
        itt=1,
        cmdsn=1,
        data=T.format_pairs(
            [
                ("InitiatorName", "iqn.2024-01.org.example:ini"),
                ("TargetName", IQN),
                ("AuthMethod", "None"),
            ]
        ),
    )
    (rsp,) = _feed(engine, conn, first)
    assert rsp.status_class == 0
    nop = P.NopOut(immediate=True, itt=9, ttt=0xFFFFFFFF, cmdsn=1, expstatsn=1)
    (reject,) = _feed(engine, conn, nop)
    assert isinstance(reject, P.LoginResponse)
    assert (reject.status_class << 8 | reject.status_detail) == LoginStatus.INVALID_DURING_LOGIN
    assert conn.close_requested


def test_non_login_pdu_before_any_login_request_closes_at_once() -> None:
    engine = _engine()
    conn = engine.new_connection(portal_group=1)
    nop = P.NopOut(immediate=True, itt=9, ttt=0xFFFFFFFF, cmdsn=1, expstatsn=1)
    assert _feed(engine, conn, nop) == []
    assert conn.close_requested
