"""initiator.login_flow: the reference initiator's policy over core.login, in memory.

The target side is core.login.TargetLogin, so these run without sockets; the
same logins against tgt and the reference target are in the other test files.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from iscsi_conformance.core import pdu as wire
from iscsi_conformance.core.chap import ChapCredentials as CoreCredentials
from iscsi_conformance.core.login import (
    ChapTargetAuth,
    TargetLogin,
    TargetLoginConfig,
    TargetNode,
)
from iscsi_conformance.core.pdu import LoginRequest, LoginResponse, NopIn
from iscsi_conformance.errors import AuthenticationError, LoginError
from iscsi_conformance.initiator.login_flow import (
    LoginFlow,
    LoginResult,
    LoginSend,
    TargetRedirected,
)
from iscsi_conformance.peers.base import ChapAccount

INITIATOR = "iqn.2024-01.org.example:flow"
TARGET = "iqn.2024-01.org.example:disk"
ALICE = ChapAccount("alice", "alice-secret-0001")
DISK = ChapAccount("disk", "disk-secret-00001")


_COUNTER = itertools.count(1)


def rng(n: int) -> bytes:
    return bytes([next(_COUNTER) & 0xFF]) * n


def target(node: TargetNode | None = None) -> TargetLogin:
    tsih = itertools.count(0x10)
    nodes = {TARGET: node or TargetNode(TARGET)}
    config = TargetLoginConfig(lookup_target=nodes.get, allocate_tsih=lambda: next(tsih))
    return TargetLogin(config, rng=rng, statsn=100)


def through_wire(p: wire.PDU) -> Any:
    out = wire.decode(wire.encode(p, strict=False))
    assert not isinstance(out, wire.NeedMore)
    return out[0]


def run(
    flow: LoginFlow,
    t: TargetLogin,
    answer: Callable[[LoginResponse], wire.PDU] = lambda r: r,
    sent: list[LoginSend] | None = None,
) -> tuple[LoginResult, list[LoginSend]]:
    """Drive a login; the wire carries ``LoginSend.wire`` (what the hook made)."""
    sent = [] if sent is None else sent
    step: LoginSend | LoginResult = flow.start()
    while isinstance(step, LoginSend):
        sent.append(step)
        out = step.wire
        assert isinstance(out, LoginRequest)
        t.receive_pdu(through_wire(out))
        (rsp,) = t.data_to_send()
        step = flow.receive(answer(through_wire(rsp)))
    return step, sent


def flow(**kw: Any) -> LoginFlow:
    kw.setdefault("target_name", TARGET)
    return LoginFlow(initiator_name=INITIATOR, isid=0x80_0000_0000_01, rng=rng, **kw)


def test_plain_login_walks_through_security() -> None:
    result, sent = run(flow(), target())
    assert [(s.request.csg, s.request.transit, s.request.nsg) for s in sent] == [
        (0, True, 1),
        (1, True, 3),
    ]
    assert all(s.strict for s in sent)
    assert b"AuthMethod=None" in sent[0].request.data
    assert b"MaxRecvDataSegmentLength=262144" in sent[1].request.data
    assert result.tsih == 0x10 and result.authenticated == "None"
    assert ("TargetPortalGroupTag", "1") in result.target_pairs
    assert result.statsn == 101 and result.negotiated.max_connections == 1


def test_skip_security_and_dropped_defaults() -> None:
    result, sent = run(flow(skip_security=True, keys={"FirstBurstLength": None}), target())
    assert len(sent) == 1 and sent[0].request.csg == 1
    assert b"FirstBurstLength" not in sent[0].request.data
    assert result.negotiated.first_burst_length == 65536  # the default


def test_mutual_chap() -> None:
    node = TargetNode(
        TARGET,
        chap=ChapTargetAuth(
            secrets={ALICE.user: ALICE.secret.encode()},
            credentials=CoreCredentials(DISK.user, DISK.secret.encode()),
        ),
    )
    f = flow(chap_credentials=ALICE, mutual_chap=DISK, chap_algorithms=(7,))
    result, sent = run(f, target(node))
    assert result.authenticated == "CHAP" and result.negotiated.auth_method == "CHAP"
    assert b"CHAP_A=7" in sent[1].request.data and b"CHAP_C=" in sent[2].request.data
    wrong = flow(chap_credentials=ALICE, mutual_chap=ChapAccount(DISK.user, "x" * 16))
    with pytest.raises(AuthenticationError, match="mutual"):
        run(wrong, target(node))
    with pytest.raises(ValueError):
        flow(mutual_chap=DISK)


def test_status_becomes_an_exception_with_the_status_in_it() -> None:
    node = TargetNode(TARGET, chap=ChapTargetAuth(secrets={ALICE.user: b"other-secret-0001"}))
    with pytest.raises(AuthenticationError) as auth:
        run(flow(chap_credentials=ALICE), target(node))
    assert auth.value.login_status == 0x0201 and "status 0x0201" in str(auth.value)
    with pytest.raises(LoginError) as missing:
        run(flow(target_name="iqn.2024-01.org.example:nope"), target())
    assert missing.value.login_status == 0x0203 and "NOT_FOUND" in str(missing.value)


def test_status_wins_over_a_bad_echo() -> None:
    """tgt zeroes the ISID of its error responses: report the status, warn."""
    f = flow(target_name="iqn.2024-01.org.example:nope")
    with pytest.raises(LoginError) as info:
        run(f, target(), answer=lambda r: dataclasses.replace(r, isid=0))
    assert info.value.login_status == 0x0203
    assert f.warnings and "ISID" in f.warnings[0]


def test_redirects() -> None:
    node = TargetNode(TARGET, redirect="192.0.2.1:3260,1", redirect_permanent=True)
    with pytest.raises(TargetRedirected) as info:
        run(flow(), target(node))
    assert info.value.address == "192.0.2.1:3260,1" and info.value.permanent
    with pytest.raises(TargetRedirected) as bare:  # no TargetAddress: nowhere to go
        run(flow(), target(node), answer=lambda r: dataclasses.replace(r, data=b""))
    assert bare.value.address is None and bare.value.login_status == 0x0102


def test_protocol_errors_of_the_target() -> None:
    with pytest.raises(LoginError, match="expected a Login Response, got NopIn"):
        run(flow(), target(), answer=lambda r: NopIn())
    with pytest.raises(LoginError, match="T=1 and C=1"):
        run(flow(), target(), answer=lambda r: dataclasses.replace(r, transit=True, cont=True))
    bad_text = lambda r: dataclasses.replace(r, data=b"NoEqualsSign\0")  # noqa: E731
    with pytest.raises(LoginError) as info:
        run(flow(), target(), answer=bad_text)
    assert info.value.section.startswith("RFC 7143")


def test_login_hook_rewrites_what_goes_on_the_wire() -> None:
    """A key repeated in one PDU (RFC 7143 6.2): the rewritten request travels
    non-strictly, and the target's answer (0x0200) is raised with its status."""
    seen: list[LoginRequest] = []

    def hook(req: LoginRequest) -> LoginRequest:
        seen.append(req)
        if req.csg == 1:
            return dataclasses.replace(req, data=req.data + b"MaxBurstLength=8192\0")
        return req

    f = flow(login_hook=hook)
    sends: list[LoginSend] = []
    with pytest.raises(LoginError) as info:
        run(f, target(), sent=sends)
    assert info.value.login_status == 0x0200
    assert len(seen) == 2 and sends[0].strict and not sends[1].strict
    assert isinstance(sends[1].wire, LoginRequest)
    assert sends[1].wire.data.count(b"MaxBurstLength=") == 2
    assert f.login.history[-1][0].name == "S4_IN_LOGIN_OPERATIONAL"


def test_login_hook_bytes_and_drop() -> None:
    raw = flow(login_hook=lambda req: b"\x03" + bytes(47)).start()
    assert raw.wire == b"\x03" + bytes(47) and not raw.strict
    assert raw.request.csg == 0  # the core keeps the request it built
    dropped = flow(login_hook=lambda req: None).start()
    assert dropped.wire is None


def test_login_hook_sees_the_empty_request_for_a_partial_response() -> None:
    seen: list[LoginRequest] = []
    f = flow(login_hook=lambda req: seen.append(req) or req)
    first = f.start()
    partial = LoginResponse(
        cont=True,
        isid=first.request.isid,
        itt=first.request.itt,
        statsn=7,
        data=b"AuthMethod=None\0",
    )
    nxt = f.receive(partial)
    assert isinstance(nxt, LoginSend) and nxt.request.data == b"" and not nxt.request.cont
    assert seen == [first.request, nxt.request]
