"""core.negotiation: per-key rules of RFC 7143 6.2 and 13, for both roles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsi_conformance.core.codes import LoginStage
from iscsi_conformance.core.keys import KEYS, ResultFunction
from iscsi_conformance.core.negotiation import (
    NegotiatedParameters,
    Negotiator,
    OutOfRange,
    Role,
    check_value,
)
from iscsi_conformance.errors import ConfigError, NegotiationError
from iscsi_conformance.fuzz import keys as fk

OP = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
SEC = LoginStage.SECURITY_NEGOTIATION
FFP = LoginStage.FULL_FEATURE_PHASE


def target(local: dict[str, str] | None = None, **kw: object) -> Negotiator:
    return Negotiator(Role.TARGET, local or {}, stage=kw.pop("stage", OP), **kw)  # type: ignore[arg-type]


def initiator(local: dict[str, str] | None = None, **kw: object) -> Negotiator:
    return Negotiator(Role.INITIATOR, local or {}, stage=kw.pop("stage", OP), **kw)  # type: ignore[arg-type]


def exchange(i: Negotiator, t: Negotiator) -> tuple[NegotiatedParameters, NegotiatedParameters]:
    answers = t.respond(i.offer())
    answers += t.offer()
    back = i.respond(answers)  # answers to the target's own offers
    assert t.respond(back) == []
    assert i.unanswered() == [] and t.unanswered() == []
    return i.result(), t.result()


# --------------------------------------------------------------------------- responder


def test_list_picks_first_of_originators_list_we_support() -> None:
    t = target({"HeaderDigest": "None,CRC32C"})
    assert t.respond([("HeaderDigest", "CRC32C,None")]) == [("HeaderDigest", "CRC32C")]


def test_list_ignores_unknown_values_and_rejects_when_nothing_fits() -> None:
    t = target({"HeaderDigest": "CRC32C"})
    assert t.respond([("HeaderDigest", "MD5,CRC32C")]) == [("HeaderDigest", "CRC32C")]
    t = target({"DataDigest": "CRC32C"})
    assert t.respond([("DataDigest", "None")]) == [("DataDigest", "Reject")]
    assert t.result().data_digest is False  # key stays at its default


def test_numbers_min_and_max() -> None:
    t = target({"MaxBurstLength": "65536", "DefaultTime2Wait": "4"})
    assert t.respond([("MaxBurstLength", "1048576"), ("DefaultTime2Wait", "2")]) == [
        ("MaxBurstLength", "65536"),
        ("DefaultTime2Wait", "4"),
    ]


def test_number_encodings_accepted() -> None:
    t = target({"MaxBurstLength": "1048576"})
    assert t.respond([("MaxBurstLength", "0x10000")]) == [("MaxBurstLength", "65536")]


@pytest.mark.parametrize("value", ["100", "16777216", "x", "-5"])
def test_out_of_range_or_malformed_numbers_are_rejected(value: str) -> None:
    t = target()
    assert t.respond([("MaxBurstLength", value)]) == [("MaxBurstLength", "Reject")]
    assert t.result().max_burst_length == 262144


def test_out_of_range_clamp_policy() -> None:
    t = target({"MaxBurstLength": "65536"}, out_of_range=OutOfRange.CLAMP)
    assert t.respond([("MaxBurstLength", "99999999")]) == [("MaxBurstLength", "65536")]
    t = target({"MaxBurstLength": "65536"}, out_of_range=OutOfRange.CLAMP)
    assert t.respond([("MaxBurstLength", "1")]) == [("MaxBurstLength", "512")]


@pytest.mark.parametrize(
    ("key", "ours", "theirs", "outcome"),
    [
        ("InitialR2T", "No", "No", "No"),
        ("InitialR2T", "No", "Yes", "Yes"),
        ("InitialR2T", "Yes", "No", "Yes"),
        ("ImmediateData", "Yes", "Yes", "Yes"),
        ("ImmediateData", "Yes", "No", "No"),
        ("ImmediateData", "No", "Yes", "No"),
        ("ImmediateData", "Yes", "maybe", "Reject"),
    ],
)
def test_booleans_and_or(key: str, ours: str, theirs: str, outcome: str) -> None:
    assert target({key: ours}).respond([(key, theirs)]) == [(key, outcome)]


def test_declarative_keys_are_recorded_not_answered() -> None:
    t = target()
    pairs = [
        ("MaxRecvDataSegmentLength", "65536"),
        ("InitiatorAlias", "host ✓"),
        ("X#NodeArchitecture", "ExampleOS,1.0"),
    ]
    assert t.respond(pairs) == []
    result = t.result()
    assert result.max_recv_data_segment_length_peer == 65536
    assert result.max_recv_data_segment_length_local == 8192
    assert result.initiator_alias == "host ✓"


def test_invalid_declaration_is_an_error() -> None:
    with pytest.raises(NegotiationError) as info:
        target().respond([("MaxRecvDataSegmentLength", "511")])
    assert info.value.login_status == 0x0200 and info.value.key == "MaxRecvDataSegmentLength"


@pytest.mark.parametrize("key", ["X-com.example.feature", "X#Unregistered", "NoSuchKey"])
def test_unknown_keys_not_understood(key: str) -> None:
    assert target().respond([(key, "1")]) == [(key, "NotUnderstood")]


@pytest.mark.parametrize("key", ["OFMarker", "IFMarker", "OFMarkInt", "IFMarkInt"])
def test_obsolete_marker_keys_are_rejected_never_not_understood(key: str) -> None:
    value = "Yes" if "Marker" in key else "2048~8192"
    assert target().respond([(key, value)]) == [(key, "Reject")]


@pytest.mark.parametrize("constant", ["Reject", "Irrelevant", "NotUnderstood"])
def test_reserved_constants_are_not_offers(constant: str) -> None:
    with pytest.raises(NegotiationError) as info:
        target().respond([("MaxBurstLength", constant)])
    assert info.value.section == "RFC 7143 6.2"


def test_repeated_key_is_an_error_but_a_new_sequence_may_renegotiate() -> None:
    t = target()
    with pytest.raises(NegotiationError) as info:
        t.respond([("MaxBurstLength", "4096"), ("MaxBurstLength", "8192")])
    assert info.value.login_status == 0x0200
    t = target(stage=FFP)
    t.respond([("MaxRecvDataSegmentLength", "4096")])
    with pytest.raises(NegotiationError):
        t.respond([("MaxRecvDataSegmentLength", "8192")])
    t.begin_sequence()
    t.respond([("MaxRecvDataSegmentLength", "8192")])
    assert t.result().max_recv_data_segment_length_peer == 8192


def test_target_address_may_repeat() -> None:
    i = initiator(stage=FFP)
    i.respond([("TargetAddress", "127.0.0.1:3260,1"), ("TargetAddress", "[::1]:3260,1")])


def test_sender_rules() -> None:
    with pytest.raises(NegotiationError):
        target().respond([("TargetAlias", "x")])  # only targets send TargetAlias
    with pytest.raises(NegotiationError):
        initiator().respond([("InitiatorName", "iqn.2024-01.x:y")])


def test_discovery_answers_irrelevant() -> None:
    t = target(session_type="Discovery")
    out = t.respond(
        [("MaxConnections", "4"), ("HeaderDigest", "CRC32C,None"), ("ErrorRecoveryLevel", "1")]
    )
    assert out == [
        ("MaxConnections", "Irrelevant"),
        ("HeaderDigest", "None"),
        ("ErrorRecoveryLevel", "0"),
    ]


def test_stage_rules() -> None:
    with pytest.raises(NegotiationError) as info:
        target(stage=SEC).respond([("MaxBurstLength", "4096")])
    assert "security stage" in info.value.message
    with pytest.raises(NegotiationError):
        target(stage=OP).respond([("AuthMethod", "None")])
    # declarative any-stage keys are fine in the security stage
    assert target(stage=SEC).respond([("InitiatorName", "iqn.2024-01.x:y")]) == []
    assert target(stage=SEC, strict_stages=False).respond([("MaxBurstLength", "4096")]) == [
        ("MaxBurstLength", "4096")
    ]


def test_full_feature_phase_rules() -> None:
    t = target(stage=FFP)
    with pytest.raises(NegotiationError):
        t.respond([("MaxBurstLength", "4096")])  # IO key after login
    t = target(stage=FFP)
    assert t.respond([("SendTargets", "All")]) == []
    assert t.requests == [("SendTargets", "All")]
    with pytest.raises(NegotiationError):
        target(stage=OP).respond([("SendTargets", "All")])


def test_leading_only_on_a_non_leading_connection() -> None:
    session = NegotiatedParameters(values={"SessionType": "Normal", "MaxBurstLength": "4096"})
    t = target(leading=False, session=session)
    with pytest.raises(NegotiationError) as info:
        t.respond([("MaxBurstLength", "8192")])
    assert "leading-only" in info.value.message
    # repeating the session's SessionType is tolerated, changing it is not
    assert (
        target(leading=False, session=session, stage=SEC).respond([("SessionType", "Normal")]) == []
    )
    with pytest.raises(NegotiationError):
        target(leading=False, session=session, stage=SEC).respond([("SessionType", "Discovery")])


def test_non_leading_connection_inherits_session_wide_values_only() -> None:
    session = NegotiatedParameters(values={"MaxBurstLength": "4096", "HeaderDigest": "CRC32C"})
    t = target(leading=False, session=session)
    result = t.result()
    assert result.max_burst_length == 4096
    assert result.header_digest is False  # connection-only: not inherited
    assert t.local_value("MaxBurstLength") == "4096"
    assert t.current("HeaderDigest") == "None"


def test_first_burst_irrelevant_when_initial_r2t_and_no_immediate_data() -> None:
    t = target({"ImmediateData": "No"})
    out = t.respond([("FirstBurstLength", "4096"), ("InitialR2T", "Yes"), ("ImmediateData", "Yes")])
    assert out == [
        ("FirstBurstLength", "Irrelevant"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
    ]


def test_first_burst_answer_stays_within_our_own_max_burst() -> None:
    """Found by Hypothesis: the initiator offers only FirstBurstLength=513 and the
    target will offer MaxBurstLength=512 itself; answering 513 would break 13.14."""
    i = initiator({"FirstBurstLength": "513"})
    t = target({"MaxBurstLength": "512"})
    assert t.respond(i.offer()) == [("FirstBurstLength", "512")]
    assert i.respond(t.offer()) == [("MaxBurstLength", "512")]
    assert i.result().first_burst_length == t.result().first_burst_length == 512


# --------------------------------------------------------------------------- originator


def test_answer_outside_the_offered_list_is_a_protocol_error() -> None:
    i = initiator({"HeaderDigest": "None"})
    i.offer()
    with pytest.raises(NegotiationError) as info:
        i.respond([("HeaderDigest", "CRC32C")])
    assert info.value.section == "RFC 7143 6.2.1"


@pytest.mark.parametrize(
    ("key", "ours", "answer"),
    [
        ("MaxBurstLength", "4096", "8192"),
        ("DefaultTime2Wait", "5", "2"),
        ("ImmediateData", "No", "Yes"),
        ("InitialR2T", "Yes", "No"),
        ("MaxBurstLength", "4096", "100"),
        ("InitialR2T", "No", "perhaps"),
    ],
)
def test_answers_breaking_the_result_function_are_protocol_errors(
    key: str, ours: str, answer: str
) -> None:
    i = initiator({key: ours})
    i.offer()
    with pytest.raises(NegotiationError):
        i.respond([(key, answer)])


def test_special_answers_leave_the_default() -> None:
    i = initiator({"MaxBurstLength": "4096", "X-com.example.a": "1", "MaxConnections": "2"})
    i.offer()
    i.respond(
        [
            ("MaxBurstLength", "Reject"),
            ("X-com.example.a", "NotUnderstood"),
            ("MaxConnections", "Irrelevant"),
        ]
    )
    r = i.result()
    assert r.max_burst_length == 262144 and r.max_connections == 1
    assert i.special_answers == {
        "MaxBurstLength": "Reject",
        "X-com.example.a": "NotUnderstood",
        "MaxConnections": "Irrelevant",
    }


def test_extension_key_answered_with_a_value() -> None:
    i = initiator({"X-com.example.a": "1"})
    i.offer()
    i.respond([("X-com.example.a", "2")])
    assert i.result().values["X-com.example.a"] == "2"


def test_optional_answers() -> None:
    # RFC 7143 6.2.2: AND with No and OR with Yes need no answer.
    i = initiator({"ImmediateData": "No", "InitialR2T": "Yes", "MaxBurstLength": "4096"})
    i.offer()
    assert i.unanswered() == ["MaxBurstLength"]
    r = i.result()
    assert r.immediate_data is False and r.initial_r2t is True
    assert initiator({"ImmediateData": "No"}, answer_optional=False).offer() and True


def test_offer_skips_what_cannot_be_sent_now_unless_named() -> None:
    i = initiator(
        {"MaxBurstLength": "4096", "TargetAlias": "x", "AuthMethod": "None", "OFMarker": "No"},
        stage=OP,
    )
    assert i.offer() == [("MaxBurstLength", "4096")]
    assert i.offer() == []  # not twice
    assert i.offer(["OFMarker"]) == [("OFMarker", "No")]
    with pytest.raises(ConfigError):
        i.offer(["X-unknown"])
    d = initiator({"MaxBurstLength": "4096"}, session_type="Discovery")
    assert d.offer() == []
    n = initiator({"MaxBurstLength": "4096"}, leading=False)
    assert n.offer() == []
    f = initiator({"MaxRecvDataSegmentLength": "4096", "MaxBurstLength": "4096"}, stage=FFP)
    assert f.offer() == [("MaxRecvDataSegmentLength", "4096")]
    s = initiator({"AuthMethod": "None", "InitiatorName": "iqn.2024-01.x:y"}, stage=SEC)
    assert s.offer() == [("AuthMethod", "None"), ("InitiatorName", "iqn.2024-01.x:y")]
    assert initiator({"SendTargets": "All"}, stage=OP).offer() == []


def test_bad_local_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Negotiator(Role.INITIATOR, {"MaxBurstLength": "1"})


def test_burst_length_conflict_between_two_answers() -> None:
    i = initiator({"MaxBurstLength": "65536", "FirstBurstLength": "65536"})
    i.offer()
    i.respond([("MaxBurstLength", "4096"), ("FirstBurstLength", "65536")])
    with pytest.raises(NegotiationError) as info:
        i.result()
    assert info.value.section == "RFC 7143 13.14"
    # when FirstBurstLength was never negotiated, it follows MaxBurstLength down
    j = initiator({"MaxBurstLength": "65536"})
    j.offer()
    j.respond([("MaxBurstLength", "4096")])
    assert j.result().first_burst_length == 4096


def test_role_helpers() -> None:
    assert Role.INITIATOR.peer is Role.TARGET and Role.TARGET.peer is Role.INITIATOR
    assert (
        NegotiatedParameters(max_recv_data_segment_length_peer=4096).max_send_data_segment_length
        == 4096
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SessionType", "Bogus"),
        ("TargetName", ""),
        ("CHAP_C", "0x" + "00" * 1025),
        ("TargetAlias", "x" * 256),
        ("CHAP_N", "has space"),
        ("OFMarkInt", "0~5"),
        ("X#NodeArchitecture", "a" * 256),
        ("InitiatorAlias", "nul\0"),
    ],
)
def test_check_value_rejects(key: str, value: str) -> None:
    with pytest.raises(NegotiationError):
        check_value(KEYS[key], value)


# --------------------------------------------------------------------------- properties

_NUMERIC = [
    k
    for k, s in KEYS.items()
    if k != "FirstBurstLength" and s.result_function in (ResultFunction.MIN, ResultFunction.MAX)
]
_BOOLEAN = [
    k for k, s in KEYS.items() if s.result_function in (ResultFunction.AND, ResultFunction.OR)
]


@given(st.sampled_from(_NUMERIC), st.data())
def test_numeric_outcome_is_commutative_and_in_range(key: str, data: st.DataObject) -> None:
    spec = KEYS[key]
    a = data.draw(fk.values_for(spec))
    b = data.draw(fk.values_for(spec))
    ab = target({key: a}).respond([(key, b)])[0][1]
    ba = target({key: b}).respond([(key, a)])[0][1]
    assert ab == ba
    fn = min if spec.result_function is ResultFunction.MIN else max
    assert int(ab) == fn(int(a), int(b))
    assert spec.in_range(int(ab))


@given(st.sampled_from(_BOOLEAN), st.booleans(), st.booleans())
def test_boolean_outcome_is_commutative(key: str, a: bool, b: bool) -> None:
    va, vb = ("Yes" if a else "No"), ("Yes" if b else "No")
    ab = target({key: va}).respond([(key, vb)])[0][1]
    ba = target({key: vb}).respond([(key, va)])[0][1]
    assert ab == ba
    want = (a and b) if KEYS[key].result_function is ResultFunction.AND else (a or b)
    assert ab == ("Yes" if want else "No")


@given(fk.local_values(), fk.local_values(), st.sampled_from(["Normal", "Discovery"]))
def test_both_sides_agree_on_every_outcome(
    il: dict[str, str], tl: dict[str, str], session_type: str
) -> None:
    i = initiator(il, session_type=session_type)
    t = target(tl, session_type=session_type)
    ri, rt = exchange(i, t)
    for name in (
        "header_digest",
        "data_digest",
        "max_burst_length",
        "first_burst_length",
        "immediate_data",
        "initial_r2t",
        "max_outstanding_r2t",
        "max_connections",
        "error_recovery_level",
        "default_time2wait",
        "default_time2retain",
        "data_pdu_in_order",
        "data_sequence_in_order",
        "task_reporting",
        "iscsi_protocol_level",
    ):
        assert getattr(ri, name) == getattr(rt, name), name
    assert ri.max_recv_data_segment_length_local == rt.max_recv_data_segment_length_peer
    assert ri.first_burst_length <= ri.max_burst_length
    for key, value in ri.values.items():
        spec = KEYS.get(key)
        if spec is not None and spec.kind.name == "NUMBER":
            assert spec.in_range(int(value)), key


def test_accept_answers_an_offer_without_making_one() -> None:
    """``accept``: values a side supports when answering, never offered itself."""
    from iscsi_conformance.core.negotiation import Negotiator, Role

    neg = Negotiator(Role.INITIATOR, {}, accept={"HeaderDigest": "CRC32C,None"})
    neg.stage = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
    assert ("HeaderDigest", "CRC32C,None") not in neg.offer()
    assert neg.respond([("HeaderDigest", "CRC32C")]) == [("HeaderDigest", "CRC32C")]
    plain = Negotiator(Role.INITIATOR, {})
    plain.stage = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
    assert plain.respond([("HeaderDigest", "CRC32C")]) == [("HeaderDigest", "Reject")]
