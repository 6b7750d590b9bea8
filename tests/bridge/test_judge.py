"""The bridge's passive rules (bridge/judge.py): each rule passes the real libiscsi x tgt
conversations of fixtures/captures/ and catches the same conversation with one breach
planted in it; the rule table agrees with the requirements catalog."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import golden

from iscsi_conformance.bridge.capture import Conversation, replay
from iscsi_conformance.bridge.judge import RULES, Judge, SessionBook, judge_pdus
from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.layout import FieldKind, layout_for
from iscsi_conformance.core.text import format_pairs, parse_pairs

Conv = list[tuple[str, P.PDU]]
CATALOG = Path(__file__).resolve().parents[2] / "conformance" / "requirements" / "rfc7143.toml"
NONE = 0xFFFFFFFF


@pytest.fixture(scope="module")
def convs() -> list[Conv]:
    from bridge_helpers import decoded

    return [decoded(c) for c in golden()]


# conversations of the golden capture (make_capture.sh's order)
DISCOVERY, READS, INQUIRY, WRITES, TMF = 0, 2, 3, 8, 10


def test_rules_match_the_catalog() -> None:
    rows = {r["id"]: r for r in tomllib.loads(CATALOG.read_text())["requirement"]}
    for rule in RULES.values():
        row = rows.get(rule.requirement)
        assert row is not None, f"{rule.name}: {rule.requirement} is not in the catalog"
        # never stronger than the catalog (a row the catalog weakens is followed at once)
        assert rule.level in (row["level"], "INFORMATIONAL"), f"{rule.name}: {rule.level}"
        assert row["role"] in (rule.sender, "both"), f"{rule.name}: role {row['role']}"


def test_golden_captures_raise_no_alarm() -> None:
    book = SessionBook()
    found = [str(b) for c in golden() for b in replay(c, book).breaches]
    assert found == []


# ---------------------------------------------------------------- planting helpers


def at(conv: Conv, cls: type, n: int = 0, pred: Callable[[P.PDU], bool] = lambda p: True) -> int:
    hits = [i for i, (_, p) in enumerate(conv) if isinstance(p, cls) and pred(p)]
    return hits[n]


def put(conv: Conv, i: int, **fields: object) -> Conv:
    d, p = conv[i]
    return [*conv[:i], (d, dataclasses.replace(p, **fields)), *conv[i + 1 :]]  # type: ignore[call-arg]


def change(cls: type, n: int = 0, **fields: object) -> Callable[[Conv], Conv]:
    return lambda c: put(c, at(c, cls, n), **fields)


def insert(cls: type, n: int, pdu: P.PDU, *, after: bool = True) -> Callable[[Conv], Conv]:
    def plant(c: Conv) -> Conv:
        i = at(c, cls, n) + (1 if after else 0)
        d = "i->t" if pdu.is_request else "t->i"
        return [*c[:i], (d, pdu), *c[i:]]

    return plant


def keys(
    cls: type, edit: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]
) -> Callable[[Conv], Conv]:
    def plant(c: Conv) -> Conv:
        i = at(c, cls)
        pairs = edit(parse_pairs(c[i][1].data))
        return put(c, i, data=format_pairs(pairs, strict=False))

    return plant


def set_key(name: str, value: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
    def edit(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if any(k == name for k, _ in pairs):
            return [(k, value if k == name else v) for k, v in pairs]
        return [*pairs, (name, value)]

    return edit


def drop_key(name: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
    return lambda pairs: [(k, v) for k, v in pairs if k != name]


def then(*plants: Callable[[Conv], Conv]) -> Callable[[Conv], Conv]:
    def plant(c: Conv) -> Conv:
        for p in plants:
            c = p(c)
        return c

    return plant


def _last_cmdsn(c: Conv) -> int:
    return [p.cmdsn for _, p in c if isinstance(p, P.ScsiCommand)][-1]


def _logout_cmdsn(c: Conv) -> int:
    return c[at(c, P.LogoutRequest)][1].cmdsn  # type: ignore[attr-defined]


def _ping_pair(c: Conv, nop_in: P.NopIn, nop_out: P.NopOut) -> Conv:
    i = at(c, P.LogoutRequest)
    return [*c[:i], ("t->i", nop_in), ("i->t", nop_out), *c[i:]]


def _nop_in_for(c: Conv, **fields: object) -> P.NopIn:
    resp = c[at(c, P.ScsiResponse, -1)][1]
    base = dict(
        itt=NONE,
        ttt=0x77,
        statsn=resp.statsn + 1,
        expcmdsn=resp.expcmdsn,  # type: ignore[attr-defined]
        maxcmdsn=resp.maxcmdsn,
        data=b"ping",
    )  # type: ignore[attr-defined]
    base.update(fields)
    return P.NopIn(**base)  # type: ignore[arg-type]


def _nop_out_answer(c: Conv, **fields: object) -> P.NopOut:
    base = dict(immediate=True, itt=NONE, ttt=0x77, cmdsn=_logout_cmdsn(c), data=b"ping")
    base.update(fields)
    return P.NopOut(**base)  # type: ignore[arg-type]


def _own_ping(c: Conv, echo: bytes) -> Conv:
    i = at(c, P.LogoutRequest)
    cmdsn = _logout_cmdsn(c)
    resp = c[at(c, P.ScsiResponse, -1)][1]
    out = P.NopOut(immediate=True, itt=0x99, cmdsn=cmdsn, data=b"abcd")
    back = P.NopIn(
        itt=0x99,
        statsn=resp.statsn + 1,
        expcmdsn=cmdsn,
        maxcmdsn=cmdsn + 30,  # type: ignore[attr-defined]
        data=echo,
    )
    return [*c[:i], ("i->t", out), ("t->i", back), *c[i:]]


def _second_r2t(c: Conv, **fields: object) -> Conv:
    i = at(c, P.R2T)
    r2t = dataclasses.replace(c[i][1], **fields)  # type: ignore[call-arg]
    return [*c[: i + 1], ("t->i", r2t), *c[i + 1 :]]


def _after_dataout_r2t(c: Conv, **fields: object) -> Conv:
    i = at(c, P.ScsiDataOut)
    r2t = dataclasses.replace(c[at(c, P.R2T)][1], **fields)  # type: ignore[call-arg]
    return [*c[: i + 1], ("t->i", r2t), *c[i + 1 :]]


# rule name -> (conversation, plant)
PLANTED: dict[str, tuple[int, Callable[[Conv], Conv]]] = {
    "format.fields": (INQUIRY, change(P.LogoutRequest, reason=9)),
    "format.fields.target": (INQUIRY, change(P.ScsiResponse, overflow=True, underflow=True)),
    "login.t_and_c": (INQUIRY, change(P.LoginRequest, cont=True)),
    "login.t_and_c.target": (INQUIRY, change(P.LoginResponse, cont=True)),
    "datain.s_needs_f": (READS, change(P.ScsiDataIn, final=False)),
    "command.rw_length": (
        INQUIRY,
        lambda c: put(c, at(c, P.ScsiCommand, pred=lambda p: p.read), read=False),
    ),
    "login.same_ids": (INQUIRY, insert(P.LoginRequest, 0, P.LoginRequest(cid=5), after=True)),
    "login.same_isid": (
        INQUIRY,
        insert(P.LoginRequest, 0, P.LoginRequest(isid=0x800000000009), after=True),
    ),
    "login.transit_granted": (INQUIRY, change(P.LoginRequest, transit=False)),
    "login.tsih": (INQUIRY, change(P.LoginResponse, tsih=0)),
    "login.only_login": (INQUIRY, insert(P.LoginRequest, 0, P.NopOut(itt=0x55), after=True)),
    "login.silent_after_failure": (
        INQUIRY,
        then(
            change(P.LoginResponse, status_class=2, transit=False),
            insert(P.LoginResponse, 0, P.LoginRequest(), after=True),
        ),
    ),
    "login.cmdsn": (
        INQUIRY,
        insert(P.LoginRequest, 0, P.LoginRequest(cmdsn=77), after=True),
    ),
    "keys.answered": (INQUIRY, keys(P.LoginResponse, drop_key("MaxBurstLength"))),
    "keys.list_answer": (WRITES, keys(P.LoginResponse, set_key("HeaderDigest", "CRC32C,None"))),
    "keys.numeric_answer": (INQUIRY, keys(P.LoginResponse, set_key("MaxBurstLength", "300000"))),
    "keys.boolean_answer": (
        INQUIRY,  # InitialR2T is OR: an offer of Yes can only give Yes
        then(
            keys(P.LoginRequest, set_key("InitialR2T", "Yes")),
            keys(P.LoginResponse, set_key("InitialR2T", "No")),
        ),
    ),
    "keys.well_formed": (INQUIRY, keys(P.LoginRequest, set_key("MaxConnections", "0"))),
    "keys.sender": (INQUIRY, keys(P.LoginRequest, set_key("TargetAlias", "mine"))),
    "cmdsn.sequence": (INQUIRY, change(P.ScsiCommand, 1, cmdsn=1000)),
    "cmdsn.window": (
        INQUIRY,
        lambda c: put(c, at(c, P.ScsiCommand, 1), cmdsn=c[at(c, P.ScsiResponse)][1].maxcmdsn + 1),
    ),  # type: ignore[attr-defined]
    "cmdsn.target_window": (
        INQUIRY,
        lambda c: put(c, at(c, P.ScsiResponse), maxcmdsn=c[at(c, P.ScsiResponse)][1].expcmdsn - 2),
    ),  # type: ignore[attr-defined]
    "statsn.sequence": (
        INQUIRY,
        lambda c: put(
            c, at(c, P.ScsiResponse, 1), statsn=c[at(c, P.ScsiResponse, 1)][1].statsn + 1
        ),
    ),  # type: ignore[attr-defined]
    "datasn.datain": (READS, change(P.ScsiDataIn, datasn=1)),
    "r2tsn.sequence": (WRITES, change(P.R2T, r2tsn=1)),
    "datasn.dataout": (WRITES, change(P.ScsiDataOut, datasn=1)),
    "mrdsl.target": (READS, lambda c: put(c, at(c, P.ScsiDataIn), data=bytes(262148))),
    "mrdsl.initiator": (WRITES, lambda c: put(c, at(c, P.ScsiDataOut), data=bytes(262148))),
    "datain.offsets": (READS, change(P.ScsiDataIn, buffer_offset=512)),
    "datain.burst": (
        READS,
        then(
            keys(P.LoginResponse, set_key("MaxBurstLength", "512")),
            lambda c: put(c, at(c, P.ScsiDataIn), data=bytes(1024)),
        ),
    ),
    "r2t.burst": (WRITES, change(P.R2T, desired_data_transfer_length=262145)),
    "r2t.outstanding": (WRITES, lambda c: _second_r2t(c, ttt=0x4242, r2tsn=1)),
    "r2t.not_unsolicited": (WRITES, change(P.R2T, buffer_offset=0)),
    "r2t.in_order": (WRITES, lambda c: _after_dataout_r2t(c, ttt=0x4243, r2tsn=1, buffer_offset=0)),
    "dataout.answers_r2t": (WRITES, change(P.ScsiDataOut, ttt=0x1234)),
    "unsolicited.initial_r2t": (WRITES, change(P.ScsiDataOut, ttt=NONE)),
    "unsolicited.immediate_data": (WRITES, keys(P.LoginResponse, set_key("ImmediateData", "No"))),
    "unsolicited.first_burst": (
        WRITES,
        lambda c: put(c, at(c, P.ScsiCommand, pred=lambda p: bool(p.data)), data=bytes(65540)),
    ),
    "itt.unique": (INQUIRY, change(P.ScsiCommand, 1, itt=NONE)),
    "residual.underflow": (READS, change(P.ScsiDataIn, underflow=True, residual_count=8)),
    "response.expdatasn": (INQUIRY, change(P.ScsiResponse, expdatasn=3)),
    "nop.echo": (INQUIRY, lambda c: _own_ping(c, echo=b"dcba")),
    "nop.ping_reply": (
        INQUIRY,
        lambda c: _ping_pair(c, _nop_in_for(c), _nop_out_answer(c, data=b"pong")),
    ),
    "nop.reply_form": (INQUIRY, lambda c: _ping_pair(c, _nop_in_for(c), _nop_out_answer(c, itt=5))),
    "logout.last": (
        INQUIRY,
        lambda c: insert(
            P.LogoutRequest, 0, P.ScsiCommand(itt=0x321, cmdsn=_logout_cmdsn(c) + 1, cdb=b"\0" * 6)
        )(c),
    ),
}


def _target_offer(key: str, offer: str, answer: str) -> Callable[[Conv], Conv]:
    """The target offers ``key`` in its Login Response; the initiator answers in a
    second login round (a Login Request and a final response are added)."""

    def plant(c: Conv) -> Conv:
        i = at(c, P.LoginResponse)
        d, resp = c[i]
        first = c[at(c, P.LoginRequest)][1]
        offering = dataclasses.replace(
            resp, transit=False, nsg=1, tsih=0,  # type: ignore[call-arg]
            data=format_pairs([*parse_pairs(resp.data), (key, offer)], strict=False),
        )  # fmt: skip
        reply = dataclasses.replace(first, transit=True, data=format_pairs([(key, answer)]))  # type: ignore[call-arg]
        final = dataclasses.replace(resp, data=b"")  # type: ignore[call-arg]
        return [*c[:i], (d, offering), ("i->t", reply), (d, final), *c[i + 1 :]]

    return plant


# answers matched to their requests by Initiator Task Tag (a tag no request holds)
PLANTED["tmf.answer_itt"] = (TMF, change(P.TaskManagementResponse, itt=0x7777))
PLANTED["text.answer_itt"] = (DISCOVERY, change(P.TextResponse, itt=0x7777))
PLANTED["logout.answer_itt"] = (INQUIRY, change(P.LogoutResponse, itt=0x7777))
PLANTED["keys.list_answer.initiator"] = (INQUIRY, _target_offer("HeaderDigest", "None", "CRC32C"))
PLANTED["keys.numeric_answer.initiator"] = (
    INQUIRY,
    _target_offer("MaxBurstLength", "4096", "8192"),
)
PLANTED["keys.boolean_answer.initiator"] = (INQUIRY, _target_offer("InitialR2T", "Yes", "No"))


def _chap(initiator_bytes: int, target_bytes: int | None = None) -> Callable[[Conv], Conv]:
    """A CHAP exchange in the login (RFC 7143 12.1.3): the target chooses CHAP_A=7
    (SHA-256, 32-byte responses) with its challenge, the initiator answers with a
    CHAP_R of ``initiator_bytes`` (and, with ``target_bytes``, its own challenge, which
    the target's final response answers with a CHAP_R of that many bytes)."""

    def plant(c: Conv) -> Conv:
        i = at(c, P.LoginResponse)
        d, resp = c[i]
        first = c[at(c, P.LoginRequest)][1]
        pairs = [("CHAP_A", "7"), ("CHAP_I", "1"), ("CHAP_C", "0x" + "ab" * 16)]
        challenge = dataclasses.replace(
            resp, transit=False, nsg=1, tsih=0,  # type: ignore[call-arg]
            data=format_pairs([*parse_pairs(resp.data), *pairs], strict=False),
        )  # fmt: skip
        answer = [("CHAP_N", "me"), ("CHAP_R", "0x" + "cd" * initiator_bytes)]
        if target_bytes is not None:
            answer += [("CHAP_I", "2"), ("CHAP_C", "0x" + "ef" * 16)]
        reply = dataclasses.replace(first, transit=True, data=format_pairs(answer))  # type: ignore[call-arg]
        mutual = [("CHAP_N", "tgt"), ("CHAP_R", "0x" + "01" * target_bytes)] if target_bytes else []
        final = dataclasses.replace(resp, data=format_pairs(mutual))  # type: ignore[call-arg]
        return [*c[:i], (d, challenge), ("i->t", reply), (d, final), *c[i + 1 :]]

    return plant


PLANTED["chap.response_length"] = (INQUIRY, _chap(16))  # an MD5-sized answer to SHA-256
PLANTED["chap.response_length.target"] = (INQUIRY, _chap(32, 20))


def test_a_chap_exchange_of_the_right_lengths_passes(convs: list[Conv]) -> None:
    judge = Judge()
    for d, p in _chap(32, 32)(convs[INQUIRY]):
        judge.pdu(d, p)  # type: ignore[arg-type]
    names = {b.rule.name for b in judge.breaches}
    assert not {n for n in names if n.startswith("chap.")}, names
    assert {"chap.response_length", "chap.response_length.target"} <= judge.exercised


def test_every_rule_knows_when_it_is_exercised() -> None:
    from iscsi_conformance.bridge.judge import _EXERCISED_BY

    marked_in_code = {
        n for n in RULES if n.startswith("keys.") and n.endswith(("_answer", ".initiator"))
    }
    marked_in_code |= {"keys.answered", "padding.zero", "padding.zero.target"}
    marked_in_code |= {"reserved.zero", "reserved.zero.target"}
    marked_in_code |= {"chap.response_length", "chap.response_length.target"}
    marked_in_code |= {"snack.data_ack"}
    assert set(RULES) - set(_EXERCISED_BY) - marked_in_code == set()


def test_the_golden_conversations_exercise_the_core_rules() -> None:
    seen = set().union(*(replay(c).exercised for c in golden()))
    for rule in ("datasn.datain", "r2tsn.sequence", "datasn.dataout", "statsn.sequence",
                 "keys.answered", "keys.list_answer", "keys.numeric_answer", "keys.boolean_answer",
                 "digest.correct", "digest.correct.target", "residual.underflow", "logout.last",
                 "tmf.answer_itt", "text.answer_itt", "logout.answer_itt"):  # fmt: skip
        assert rule in seen, rule


def test_every_rule_has_a_planted_breach() -> None:
    missing = set(RULES) - set(PLANTED) - {"padding.zero", "padding.zero.target",
                                             "digest.correct", "digest.correct.target",
                                             "reserved.zero", "reserved.zero.target"}  # fmt: skip
    assert not missing, f"rules without a planted breach: {sorted(missing)}"


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_planted_breach_is_caught(rule: str, convs: list[Conv]) -> None:
    index, plant = PLANTED[rule]
    clean = convs[index]
    assert judge_pdus(clean) == []  # the clean conversation passes
    judge = Judge()
    for d, p in plant(clean):
        judge.pdu(d, p)  # type: ignore[arg-type]
    breaches = judge.breaches
    assert rule in judge.exercised  # a breach is only found where the rule was in play
    names = {b.rule.name for b in breaches}
    assert rule in names, f"{rule} not caught; found {sorted(names)}"
    hit = next(b for b in breaches if b.rule.name == rule)
    assert hit.side == RULES[rule].sender
    assert RULES[rule].requirement in str(hit)


def _corrupt(conv: Conversation, direction: str, which: str) -> Conversation:
    """Flip a byte of the first full-feature PDU's header digest (or of its data)."""
    segs = list(conv.segments)
    i = [n for n, (d, _) in enumerate(segs) if d == direction][1]  # after the login PDU
    d, data = segs[i]
    at_byte = 50 if which == "header" else len(data) - 1
    segs[i] = (d, data[:at_byte] + bytes([data[at_byte] ^ 0xFF]) + data[at_byte + 1 :])
    return Conversation(conv.client_port, segs)


@pytest.mark.parametrize(
    "direction, rule", [("i->t", "digest.correct"), ("t->i", "digest.correct.target")]
)
def test_a_wrong_header_digest_is_the_senders_breach(direction: str, rule: str) -> None:
    conv = golden()[WRITES]  # HeaderDigest=CRC32C agreed
    assert replay(conv).breaches == []
    judge = replay(_corrupt(conv, direction, "header"))
    assert [b.rule.name for b in judge.breaches] == [rule]


@pytest.mark.parametrize(
    "direction, rule", [("i->t", "padding.zero"), ("t->i", "padding.zero.target")]
)
def test_nonzero_padding_is_flagged(direction: str, rule: str) -> None:
    pdu: P.PDU = (
        P.TextRequest(final=True, itt=1, data=b"A=1\0")  # 4 bytes: no pad; use 5
        if direction == "i->t"
        else P.TextResponse(final=True, itt=1, data=b"A=1\0")
    )
    pdu = dataclasses.replace(pdu, data=b"AB=1\0")  # type: ignore[call-arg]
    raw = P.encode(pdu, strict=False, tamper=P.Tamper(padding=b"\x01\0\0"))
    judge = Judge()
    judge.full_feature = True
    assert rule in {b.rule.name for b in judge.pdu(direction, pdu, raw)}  # type: ignore[arg-type]
    clean = P.encode(pdu, strict=False)
    assert not Judge().pdu(direction, pdu, clean)  # type: ignore[arg-type]


def _reserved_bit_set(conv: Conversation, direction: str) -> tuple[Conversation, str]:
    """Set one bit of the first reserved field of the first full-feature PDU's header
    (after the login PDU), as the sender would have sent it."""
    segs = list(conv.segments)
    i = [n for n, (d, _) in enumerate(segs) if d == direction][1]
    d, data = segs[i]
    lay = layout_for(data[0])
    assert lay is not None
    field = next(f for f in lay.fields if f.kind is FieldKind.RESERVED)
    bit = field.mask & -field.mask if field.mask else 1
    at_byte = field.offset + (0 if field.mask else field.size - 1)
    segs[i] = (d, data[:at_byte] + bytes([data[at_byte] | bit]) + data[at_byte + 1 :])
    return Conversation(conv.client_port, segs), f"{lay.class_name} byte {field.offset}"


@pytest.mark.parametrize(
    "direction, rule", [("i->t", "reserved.zero"), ("t->i", "reserved.zero.target")]
)
def test_a_reserved_bit_set_is_the_senders_breach(direction: str, rule: str) -> None:
    conv = golden()[INQUIRY]  # no digest: the changed header still decodes
    clean = replay(conv)
    assert clean.breaches == [] and rule in clean.exercised
    planted, where = _reserved_bit_set(conv, direction)
    judge = replay(planted)
    assert [b.rule.name for b in judge.breaches] == [rule], where
    assert RULES[rule].requirement in str(judge.breaches[0])


def test_gating_the_exercise_tests_by_class_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The judge asks each exercise test only of the PDU classes its gate names (the
    hot path's speed); asked of every PDU, they mark the same rules exercised."""
    from iscsi_conformance.bridge import judge as J

    gated = [replay(c).exercised for c in golden()]

    def every(direction: str, cls: type) -> tuple[tuple[str, Any], ...]:
        return tuple((n, t) for n, (d, t) in J._EXERCISED_BY.items() if d == direction)

    monkeypatch.setattr(J, "_gated", every)
    assert [replay(c).exercised for c in golden()] == gated


# ---------------------------------------------------------------- DataACK (RFC 7143 11.16.2)


def _erl(level: int) -> Callable[[Conv], Conv]:
    return then(
        keys(P.LoginRequest, set_key("ErrorRecoveryLevel", str(level))),
        keys(P.LoginResponse, set_key("ErrorRecoveryLevel", str(level))),
    )


def _a_bit(*, data_ack: P.SnackRequest | None = None, status_too: bool = False,
            erl: int = 1) -> Callable[[Conv], Conv]:  # fmt: skip
    """The first read's Data-In split in two bursts, the A bit (TTT 0x51) on the first
    (with the status too, when ``status_too``: then it is the only Data-In); with
    ``data_ack``, the initiator's DataACK goes out right after the A-bit Data-In."""

    def plant(c: Conv) -> Conv:
        c = _erl(erl)(c)
        i = at(c, P.ScsiDataIn)
        d, p = c[i]
        assert isinstance(p, P.ScsiDataIn)
        if status_too:
            split = [dataclasses.replace(p, ack=True, ttt=0x51)]
        else:
            half = len(p.data) // 2
            split = [
                dataclasses.replace(p, ack=True, ttt=0x51, data=p.data[:half],
                                    status_present=False, statsn=p.statsn, status=0),
                dataclasses.replace(p, datasn=1, buffer_offset=half, data=p.data[half:]),
            ]  # fmt: skip
        ack = [("i->t", data_ack)] if data_ack is not None else []
        return [*c[:i], (d, split[0]), *ack, *[(d, s) for s in split[1:]], *c[i + 1 :]]

    return plant


def _data_ack(**fields: Any) -> P.SnackRequest:
    base: dict[str, Any] = dict(snack_type=2, itt=NONE, ttt=0x51, begrun=1, runlength=0,
                                expstatsn=1)  # fmt: skip
    return P.SnackRequest(**{**base, **fields})


PLANTED["snack.data_ack"] = (READS, _a_bit())  # the A bit ignored, the status then acked


def _snack_breaches(conv: Conv) -> tuple[list[str], set[str]]:
    judge = Judge()
    for d, p in conv:
        judge.pdu(d, p)  # type: ignore[arg-type]
    return [str(b) for b in judge.breaches], judge.exercised


def test_a_data_ack_for_the_a_bit_passes(convs: list[Conv]) -> None:
    found, exercised = _snack_breaches(_a_bit(data_ack=_data_ack())(convs[READS]))
    assert found == []
    assert "snack.data_ack" in exercised
    # the status in the A-bit Data-In: acknowledging it through ExpStatSN is enough
    found, _ = _snack_breaches(_a_bit(status_too=True)(convs[READS]))
    assert found == []


def test_a_wrong_or_late_data_ack_is_the_initiators_breach(convs: list[Conv]) -> None:
    found, _ = _snack_breaches(_a_bit(data_ack=_data_ack(begrun=0))(convs[READS]))
    assert any("R7143-11.16-11" in f and "BegRun 0, the next expected DataSN is 1" in f
               for f in found), found  # fmt: skip
    found, _ = _snack_breaches(_a_bit(data_ack=_data_ack(itt=0x99))(convs[READS]))
    assert any("ITT 0x99" in f for f in found), found
    # the status (in the A-bit Data-In) acknowledged by the next command, then a DataACK
    late = then(
        _a_bit(status_too=True),
        insert(P.ScsiCommand, 1, _data_ack(begrun=1, expstatsn=2), after=True),
    )
    found, _ = _snack_breaches(late(convs[READS]))
    assert any("after the task's status was acknowledged" in f for f in found), found


def test_a_data_ack_at_erl0_is_the_initiators_breach(convs: list[Conv]) -> None:
    found, exercised = _snack_breaches(_a_bit(data_ack=_data_ack(), erl=0)(convs[READS]))
    assert any("R7143-11.16-11" in f and "ErrorRecoveryLevel 0" in f for f in found), found
    assert "snack.data_ack" in exercised
