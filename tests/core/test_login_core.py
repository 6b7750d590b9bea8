"""core.login: in-memory InitiatorLogin <-> TargetLogin, good and broken logins."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_login_support import (
    ALICE,
    INITIATOR,
    TARGET,
    TGT,
    Portal,
    drive,
    initiator,
    rng_from,
)

from iscsi_conformance.core import text
from iscsi_conformance.core.chap import ChapAlgorithm, ChapClient, ChapCredentials
from iscsi_conformance.core.codes import LoginStatus
from iscsi_conformance.core.login import (
    ChapTargetAuth,
    ConnectionReinstated,
    ExistingSession,
    IsidType,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    SessionReinstated,
    TargetNode,
    en_isid,
    isid_type,
    make_isid,
    random_isid,
)
from iscsi_conformance.core.negotiation import NegotiatedParameters
from iscsi_conformance.core.pdu import LoginRequest, LoginResponse, NopOut

EXAMPLES = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures/keys/login_examples.json").read_text()
)["examples"]


def completed(events: list[Any]) -> LoginCompleted:
    done = [e for e in events if isinstance(e, LoginCompleted)]
    assert len(done) == 1, events
    return done[0]


def failed(events: list[Any]) -> LoginFailed:
    bad = [e for e in events if isinstance(e, LoginFailed)]
    assert len(bad) == 1, events
    return bad[0]


# --------------------------------------------------------------------------- good logins


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["name"])
def test_golden_key_sets(example: dict[str, Any]) -> None:
    portal = Portal(keys=example["target_keys"])
    i = initiator(
        keys=example["initiator_keys"],
        session_type=example["session_type"],
        target_name=TARGET if example["session_type"] == "Normal" else None,
    )
    t = portal.target()
    ie, te = drive(i, t)
    ip, tp = completed(ie).parameters, completed(te).parameters
    for name, want in example["expect"].items():
        if name == "initiator_mrdsl_peer":
            assert ip.max_recv_data_segment_length_peer == want
        elif name == "target_mrdsl_peer":
            assert tp.max_recv_data_segment_length_peer == want
        else:
            assert getattr(ip, name) == want, name
            assert getattr(tp, name) == want, name


@pytest.mark.parametrize("alg", list(ChapAlgorithm))
@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
def test_chap_logins(alg: ChapAlgorithm, mutual: bool) -> None:
    node = TargetNode(
        TARGET,
        keys={"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"},
        chap=ChapTargetAuth(secrets={ALICE.name: ALICE.secret}, credentials=TGT),
    )
    client = ChapClient(ALICE, algorithms=[alg], target=TGT if mutual else None, rng=rng_from(50))
    i = initiator(chap=client, keys={"HeaderDigest": "CRC32C", "DataDigest": "CRC32C,None"})
    t = Portal(node=node).target()
    ie, te = drive(i, t)
    ic, tc = completed(ie), completed(te)
    assert ic.parameters.header_digest and ic.parameters.data_digest
    assert tc.parameters.header_digest and tc.parameters.data_digest
    assert ic.parameters.auth_method == "CHAP" == tc.parameters.auth_method
    assert tc.authenticated_as == ALICE.name
    assert ic.authenticated_as == (TGT.name if mutual else None)
    assert t.authenticator is not None and t.authenticator.algorithm is alg
    assert ic.tsih == tc.tsih != 0
    # StatSN advances by one per response; the initiator acknowledges it
    assert tc.statsn == ic.statsn and ic.statsn > 1000
    assert ic.parameters.target_portal_group_tag == 1


def test_discovery_session_without_target_name() -> None:
    i = initiator(session_type="Discovery", target_name=None, keys={"MaxBurstLength": "4096"})
    ie, te = drive(i, Portal().target())
    ic, tc = completed(ie), completed(te)
    assert ic.session_type == tc.session_type == "Discovery"
    assert ic.parameters.max_burst_length == 262144  # irrelevant in discovery
    assert tc.target_name is None


def test_discovery_with_chap() -> None:
    portal = Portal(discovery_chap=ChapTargetAuth(secrets={ALICE.name: ALICE.secret}))
    i = initiator(session_type="Discovery", target_name=None, chap=ChapClient(ALICE))
    _ie, te = drive(i, portal.target())
    assert completed(te).authenticated_as == ALICE.name


def test_plain_login_starts_in_operational_stage() -> None:
    i = initiator()
    assert i.start_stage == 1
    ie, _te = drive(i, Portal().target())
    assert completed(ie).parameters.auth_method == "None"
    assert i.history[1][2].label == "T4" and i.history[-1][2].label == "T5"


def test_security_stage_with_auth_none_and_skip_operational() -> None:
    i = initiator(
        auth_methods=["None"], start_stage=0, skip_operational=True, initiator_alias="host ✓"
    )
    _ie, te = drive(i, Portal().target())
    assert completed(te).parameters.initiator_alias == "host ✓"
    assert len(i.history) == 3  # T1, T4, T5: one exchange


def test_chap_optional_target_accepts_none() -> None:
    node = TargetNode(TARGET, chap=ChapTargetAuth(secrets={}, allow_none=True), alias="Disk ✓")
    i = initiator(auth_methods=["None"], start_stage=0)
    ie, _te = drive(i, Portal(node=node).target())
    assert completed(ie).parameters.target_alias == "Disk ✓"


def test_chap_optional_target_with_chap_initiator() -> None:
    node = TargetNode(
        TARGET, chap=ChapTargetAuth(secrets={ALICE.name: ALICE.secret}, allow_none=True)
    )
    i = initiator(chap=ChapClient(ALICE), auth_methods=["CHAP", "None"])
    _ie, te = drive(i, Portal(node=node).target())
    assert completed(te).authenticated_as == ALICE.name


def test_continuation_both_directions() -> None:
    # 120 long X- keys: the request needs several C=1 PDUs, and so does the answer
    # (each one NotUnderstood), past the 8192 bytes of a login PDU.
    keys = {f"X-com.example.{i:03d}." + "k" * 40: "v" * 30 for i in range(120)}
    i = initiator(keys=keys, max_segment=1000)
    t = Portal().target()
    ie, _te = drive(i, t)
    completed(ie)
    assert i.negotiator.special_answers == dict.fromkeys(keys, "NotUnderstood")
    conts = [h for h in t.history if h[1].name == "RX_PARTIAL"]
    assert len(conts) >= 10
    assert any(h[1].name == "RX_PARTIAL" for h in i.history)


def test_first_pdu_split_across_the_c_bit() -> None:
    i = initiator(initiator_alias="a" * 200, max_segment=16)
    _ie, te = drive(i, Portal().target())
    assert completed(te).initiator_name == INITIATOR


def test_redirection_temporary_and_permanent() -> None:
    for permanent, status in ((False, 0x0101), (True, 0x0102)):
        node = TargetNode(TARGET, redirect="127.0.0.2:3260", redirect_permanent=permanent)
        ie, te = drive(initiator(), Portal(node=node).target())
        assert ie == te == [LoginRedirected("127.0.0.2:3260", permanent, status)]


def test_session_reinstatement_and_new_connections() -> None:
    portal = Portal()
    i = initiator(keys={"MaxConnections": "4"})
    portal.keys = {"MaxConnections": "2"}
    ie, te = drive(i, portal.target())
    first = completed(te)
    session = ExistingSession(
        first.tsih, INITIATOR, first.isid, TARGET, "Normal", first.parameters, frozenset({0})
    )
    portal.sessions[first.tsih] = session
    # same ISID, TSIH 0: reinstatement (RFC 7143 6.3.5)
    ie, te = drive(initiator(isid=first.isid), portal.target())
    assert isinstance(te[0], SessionReinstated) and te[0].old_tsih == first.tsih
    completed(te)
    # add a connection: non-leading, no LO keys, TSIH kept
    j = initiator(
        isid=first.isid,
        tsih=first.tsih,
        cid=1,
        keys={"MaxBurstLength": "512", "HeaderDigest": "CRC32C,None"},
        session=first.parameters,
    )
    ie, te = drive(j, portal.target())
    assert completed(ie).tsih == completed(te).tsih == first.tsih
    assert "MaxBurstLength" not in j.negotiator.pending
    assert not completed(te).leading
    # the same CID again: connection reinstatement (RFC 7143 6.3.4)
    k = initiator(isid=first.isid, tsih=first.tsih, cid=0)
    ie, te = drive(k, portal.target())
    assert ConnectionReinstated(first.tsih, 0) in te
    # MaxConnections=2 reached by CIDs 0 and 1
    portal.sessions[first.tsih] = replace(session, cids=frozenset({0, 1}))
    ie, te = drive(initiator(isid=first.isid, tsih=first.tsih, cid=2), portal.target())
    assert failed(te).status == LoginStatus.TOO_MANY_CONNECTIONS
    assert failed(ie).status == LoginStatus.TOO_MANY_CONNECTIONS


# --------------------------------------------------------------------------- broken logins


def hook_first(change: dict[str, Any]) -> Any:
    """A request_hook that changes only the first request."""
    seen: list[int] = []

    def hook(req: LoginRequest) -> LoginRequest:
        seen.append(1)
        return replace(req, **change) if len(seen) == 1 else req

    return hook


def hook_nth(n: int, change: dict[str, Any]) -> Any:
    count = [0]

    def hook(req: LoginRequest) -> LoginRequest:
        count[0] += 1
        return replace(req, **change) if count[0] == n else req

    return hook


def chap_node(**kw: Any) -> TargetNode:
    return TargetNode(TARGET, chap=ChapTargetAuth(secrets={ALICE.name: ALICE.secret}, **kw))


CASES: list[tuple[str, dict[str, Any], Portal | None, int]] = [
    (
        "T and C both set",
        {"request_hook": hook_first({"transit": True, "cont": True})},
        None,
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "NSG behind CSG",
        {"request_hook": hook_first({"transit": True, "nsg": 0})},
        None,
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "reserved NSG",
        {"request_hook": hook_first({"transit": True, "nsg": 2})},
        None,
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "CSG full feature",
        {"request_hook": hook_first({"csg": 3})},
        None,
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "CSG jumps ahead",
        {"chap": ChapClient(ALICE), "request_hook": hook_nth(2, {"csg": 1})},
        Portal(node=chap_node()),
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "ISID changes",
        {"chap": ChapClient(ALICE), "request_hook": hook_nth(2, {"isid": 5})},
        Portal(node=chap_node()),
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "unsupported version",
        {"request_hook": hook_first({"version_min": 1, "version_max": 2})},
        None,
        LoginStatus.UNSUPPORTED_VERSION,
    ),
    (
        "reserved ISID type",
        {"isid": make_isid(IsidType.RESERVED)},
        None,
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "no InitiatorName",
        {"pairs_hook": lambda s, p: [x for x in p if x[0] != "InitiatorName"]},
        None,
        LoginStatus.MISSING_PARAMETER,
    ),
    ("no TargetName", {"target_name": None}, None, LoginStatus.MISSING_PARAMETER),
    (
        "unknown target",
        {"target_name": "iqn.2024-01.com.example:none"},
        None,
        LoginStatus.NOT_FOUND,
    ),
    (
        "bogus SessionType",
        {"pairs_hook": lambda s, p: [(k, "Bogus" if k == "SessionType" else v) for k, v in p]},
        None,
        LoginStatus.SESSION_TYPE_NOT_SUPPORTED,
    ),
    (
        "discovery disabled",
        {"session_type": "Discovery", "target_name": None},
        Portal(discovery=False),
        LoginStatus.SESSION_TYPE_NOT_SUPPORTED,
    ),
    (
        "target removed",
        {},
        Portal(node=TargetNode(TARGET, removed=True)),
        LoginStatus.TARGET_REMOVED,
    ),
    (
        "initiator not allowed",
        {},
        Portal(node=TargetNode(TARGET, allow=lambda n: False)),
        LoginStatus.AUTHORIZATION_FAILURE,
    ),
    (
        "repeated key",
        {
            "keys": {"MaxBurstLength": "4096"},
            "pairs_hook": lambda s, p: [*p, ("MaxBurstLength", "8192")],
        },
        None,
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "operational key in the security stage",
        {
            "chap": ChapClient(ALICE),
            "pairs_hook": lambda s, p: [*p, ("MaxBurstLength", "8192")] if s == 0 else p,
        },
        Portal(node=chap_node()),
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "CHAP key in the operational stage",
        {"pairs_hook": lambda s, p: [*p, ("CHAP_A", "5")]},
        None,
        LoginStatus.INITIATOR_ERROR,
    ),
    (
        "skips security although CHAP is required",
        {"start_stage": 1},
        Portal(node=chap_node()),
        LoginStatus.AUTH_FAILURE,
    ),
    (
        "leaves security before CHAP",
        {"auth_methods": ["None"], "start_stage": 0},
        Portal(node=chap_node()),
        LoginStatus.AUTH_FAILURE,
    ),
    (
        "wrong CHAP secret",
        {"chap": ChapClient(ChapCredentials(ALICE.name, b"wrong-secret-0001"))},
        Portal(node=chap_node()),
        LoginStatus.AUTH_FAILURE,
    ),
    (
        "CHAP keys without AuthMethod=CHAP",
        {
            "auth_methods": ["None"],
            "start_stage": 0,
            "pairs_hook": lambda s, p: [*p, ("CHAP_A", "5")],
        },
        None,
        LoginStatus.AUTH_FAILURE,
    ),
    ("no session with that TSIH", {"tsih": 77}, None, LoginStatus.SESSION_DOES_NOT_EXIST),
]


@pytest.mark.parametrize(
    ("kw", "portal", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_target_rejects_broken_logins(
    kw: dict[str, Any], portal: Portal | None, status: int
) -> None:
    i = initiator(**kw)
    t = (portal or Portal()).target()
    ie, te = drive(i, t)
    assert failed(te).status == status
    assert failed(ie).status == status  # the initiator saw the same status on the wire
    assert t.state.name == "S1_FREE" and i.state.name == "S1_FREE"
    assert t.error is not None and t.error.section


def test_discovery_session_cannot_take_a_second_connection() -> None:
    portal = Portal()
    params = NegotiatedParameters(session_type="Discovery")
    portal.sessions[9] = ExistingSession(9, INITIATOR, 1 << 47, None, "Discovery", params)
    i = initiator(isid=1 << 47, tsih=9, session_type="Discovery", target_name=None)
    _ie, te = drive(i, portal.target())
    assert failed(te).status == LoginStatus.CANT_INCLUDE_IN_SESSION


def test_non_login_pdu_during_login() -> None:
    t = Portal().target()
    events = t.receive_pdu(NopOut(itt=1))
    assert failed(events).status == LoginStatus.INVALID_DURING_LOGIN
    rsp = t.data_to_send()[0]
    assert rsp.status == LoginStatus.INVALID_DURING_LOGIN


def test_no_common_auth_method() -> None:
    i = initiator(auth_methods=["SRP"], start_stage=0)
    _ie, te = drive(i, Portal(node=chap_node()).target())
    assert failed(te).status == LoginStatus.AUTH_FAILURE


def test_target_after_login_reports_errors_without_a_response() -> None:
    t = Portal().target()
    drive(initiator(), t)
    assert t.state.name == "S5_LOGGED_IN"
    events = t.receive_pdu(LoginRequest(csg=1))
    assert isinstance(events[0], LoginFailed) and events[0].status is None
    assert t.data_to_send() == []


def test_transport_events() -> None:
    t = Portal().target()
    assert failed(t.connection_lost()).status is None and t.state.name == "S1_FREE"
    t = Portal().target()
    t.timed_out()
    assert t.state.name == "S1_FREE"
    i = initiator()
    i.start()
    assert failed(i.connection_lost()).status is None
    i = initiator()
    i.start()
    i.timed_out()
    assert i.state.name == "S1_FREE"


# --------------------------------------------------------------------------- initiator checks


def first_exchange(**kw: Any) -> tuple[Any, LoginRequest]:
    i = initiator(**kw)
    (req,) = i.start()
    return i, req


def response_to(req: LoginRequest, **kw: Any) -> LoginResponse:
    fields: dict[str, Any] = dict(
        csg=req.csg, isid=req.isid, itt=req.itt, statsn=5, expcmdsn=req.cmdsn, maxcmdsn=req.cmdsn
    )
    fields.update(kw)
    return LoginResponse(**fields)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"transit": True, "cont": True}, "RX_T_AND_C"),
        ({"csg": 0}, "RX_STAGE_MISMATCH"),
        ({"version_active": 1}, "RX_BAD_VERSION"),
        ({"itt": 99}, "RX_WRONG_TASK"),
        ({"transit": True, "nsg": 1}, "RX_BAD_NSG"),
        ({"transit": True, "nsg": 3, "tsih": 0}, "TSIH 0"),
        ({"transit": True, "nsg": 3, "tsih": 1, "data": b"MaxBurstLength=512\0"}, "need an answer"),
        ({"status_class": 1, "status_detail": 1}, "without TargetAddress"),
    ],
)
def test_initiator_detects_bad_responses(change: dict[str, Any], why: str) -> None:
    i, req = first_exchange()
    events = i.receive_pdu(response_to(req, **change))
    bad = failed(events)
    assert bad.status is None and bad.error is not None
    assert why in bad.reason or why in str(i.history[-1:]) or why.startswith("RX_")
    assert i.state.name == "S1_FREE" and i.data_to_send() == []


def test_initiator_unrequested_transit_and_nsg_beyond_request() -> None:
    i, req = first_exchange(chap=ChapClient(ALICE))  # security stage, T=0
    assert not req.transit
    bad = failed(i.receive_pdu(response_to(req, transit=True, nsg=1)))
    assert "T=1 although" in bad.reason
    i, req = first_exchange(auth_methods=["None"], start_stage=0)  # T=1 NSG=1
    bad = failed(i.receive_pdu(response_to(req, transit=True, nsg=3, tsih=1)))
    assert "NSG beyond" in bad.reason


def test_initiator_unexpected_pdus() -> None:
    i = initiator()
    assert failed(i.receive_pdu(LoginResponse())).error is not None  # nothing sent yet
    i, _req = first_exchange()
    assert failed(i.receive_pdu(NopOut())).error is not None


def test_initiator_status_failure() -> None:
    i, req = first_exchange()
    bad = failed(i.receive_pdu(response_to(req, status_class=2, status_detail=1)))
    assert bad.status == 0x0201 and bad.reason == "AUTH_FAILURE"
    i, req = first_exchange()
    assert failed(i.receive_pdu(response_to(req, status_class=3, status_detail=0x77))).reason == (
        "status 0x0377"
    )


def test_initiator_final_status_wins_over_a_wrong_echo() -> None:
    """A response that ends the login is judged by its status even without our ISID
    or ITT (tgt zeroes the ISID of error responses); the mismatch is a warning."""
    i, req = first_exchange()
    bad = failed(i.receive_pdu(response_to(req, isid=0, status_class=2, status_detail=3)))
    assert bad.status == 0x0203 and bad.error is None
    assert len(i.warnings) == 1 and "RFC 7143 11.13" in i.warnings[0]
    i, req = first_exchange()
    events = i.receive_pdu(
        response_to(req, itt=req.itt + 1, status_class=1, status_detail=2,
                    data=b"TargetAddress=10.0.0.2:3260,1\0")
    )  # fmt: skip
    assert events == [LoginRedirected("10.0.0.2:3260,1", True, 0x0102)]
    assert "ITT" in i.warnings[0]
    i, req = first_exchange()
    failed(i.receive_pdu(response_to(req, status_class=2, status_detail=3)))
    assert i.warnings == []  # echoed correctly: nothing to say


def test_initiator_keeps_what_the_target_said() -> None:
    portal = Portal(keys={"MaxBurstLength": "16384"})
    i = initiator(chap=ChapClient(ALICE, rng=rng_from(5)), keys={"MaxBurstLength": "65536"})
    portal.node = TargetNode(TARGET, chap=ChapTargetAuth(secrets={ALICE.name: ALICE.secret}))
    ie, _ = drive(i, portal.target())
    completed(ie)
    received = dict(i.received)
    assert received["AuthMethod"] == "CHAP" and "CHAP_C" in received
    assert received["MaxBurstLength"] == "16384"


def test_initiator_security_errors() -> None:
    i, req = first_exchange(auth_methods=["CHAP"], start_stage=0)
    bad = failed(i.receive_pdu(response_to(req, data=b"AuthMethod=CHAP\0")))
    assert "no CHAP credentials" in bad.reason
    i, req = first_exchange(chap=ChapClient(ALICE))
    bad = failed(i.receive_pdu(response_to(req, data=b"AuthMethod=Reject\0")))
    assert "rejected every AuthMethod" in bad.reason
    i, req = first_exchange(chap=ChapClient(ALICE))
    bad = failed(i.receive_pdu(response_to(req, data=b"CHAP_A=5\0")))
    assert "not agreed" in bad.reason
    i, req = first_exchange(chap=ChapClient(ALICE))
    i.receive_pdu(response_to(req, data=b"AuthMethod=CHAP\0"))
    (req2,) = i.data_to_send()
    bad = failed(i.receive_pdu(response_to(req2, transit=False, csg=0, nsg=0)))
    assert bad.error is not None  # CHAP expected a challenge, got nothing
    i, req = first_exchange(auth_methods=["SRP", "None"], start_stage=0)
    bad = failed(i.receive_pdu(response_to(req, data=b"AuthMethod=SRP\0", transit=False)))
    assert "not implemented" in bad.reason
    i, req = first_exchange(chap=ChapClient(ALICE), auth_methods=["CHAP", "None"])
    i.receive_pdu(response_to(req, data=b"AuthMethod=CHAP\0"))
    (req2,) = i.data_to_send()
    assert not req2.transit
    i, req = first_exchange(chap=ChapClient(ALICE))
    i.receive_pdu(response_to(req, data=b"AuthMethod=CHAP\0"))
    (req2,) = i.data_to_send()
    i.receive_pdu(replace(response_to(req2), transit=False))
    assert i.state.name == "S1_FREE"


def test_initiator_target_leaves_security_before_chap() -> None:
    mutual = ChapClient(ALICE, target=TGT, rng=rng_from(3))
    i, req = first_exchange(chap=mutual, skip_operational=True)
    i.receive_pdu(response_to(req, data=b"AuthMethod=CHAP\0"))
    (req2,) = i.data_to_send()
    i.receive_pdu(response_to(req2, data=b"CHAP_A=7\0CHAP_I=1\0CHAP_C=0x0102\0"))
    (req3,) = i.data_to_send()
    assert req3.transit and req3.nsg == 3
    bad = failed(i.receive_pdu(response_to(req3, transit=True, nsg=3, tsih=2)))
    assert "did not send CHAP_N" in bad.reason
    i, req = first_exchange(chap=ChapClient(ALICE))
    i.receive_pdu(response_to(req, data=b"AuthMethod=CHAP\0"))
    (req2,) = i.data_to_send()
    i.receive_pdu(response_to(req2, data=b"CHAP_A=7\0CHAP_I=1\0CHAP_C=0x0102\0"))
    (req3,) = i.data_to_send()
    assert req3.transit and req3.nsg == 1
    # one-way CHAP: the target's T=1 response ends CHAP
    i.receive_pdu(response_to(req3, transit=True, nsg=1))
    assert i.state.name == "S4_IN_LOGIN_OPERATIONAL"


def test_non_leading_final_response_must_keep_tsih() -> None:
    i, req = first_exchange(tsih=5)
    bad = failed(i.receive_pdu(response_to(req, transit=True, nsg=3, tsih=6)))
    assert "differs" in bad.reason


def test_initiator_warns_on_unanswered_keys() -> None:
    i, req = first_exchange(keys={"MaxBurstLength": "4096"})
    done = completed(i.receive_pdu(response_to(req, transit=True, nsg=3, tsih=3)))
    assert done.parameters.max_burst_length == 262144
    assert i.warnings and "MaxBurstLength" in i.warnings[0]


# --------------------------------------------------------------------------- ISID


def test_isid_helpers() -> None:
    r = random_isid(lambda n: b"\xab\xcd\xef"[:n], qualifier=7)
    assert isid_type(r) is IsidType.RANDOM
    assert r & 0xFFFF == 7 and (r >> 16) & 0xFFFFFF == 0xABCDEF
    e = en_isid(0x123456, 2)
    assert isid_type(e) is IsidType.EN and (e >> 16) & 0xFFFFFF == 0x123456
    assert isid_type(make_isid(IsidType.OUI, a=1)) is IsidType.OUI
    with pytest.raises(ValueError):
        make_isid(IsidType.OUI, a=64)
    with pytest.raises(ValueError):
        en_isid(2**24)


def test_text_constants_exported() -> None:
    assert text.REJECT == "Reject"
