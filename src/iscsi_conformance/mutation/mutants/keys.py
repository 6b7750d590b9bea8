"""Text keys: repeated, unknown and out-of-range keys, and the answer of each
negotiation rule (RFC 7143 6.1, 6.2, 13). Only the target's Negotiator is changed."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.core import text
from iscsi_conformance.core.keys import KEYS, ResultFunction
from iscsi_conformance.core.login.target import TargetLogin
from iscsi_conformance.core.negotiation import Negotiator, Role
from iscsi_conformance.errors import NegotiationError
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant

_RESULT = ("Login.Keys",)


def _answer_when(p: Patcher, method: str, applies: Any, answer: Any) -> None:
    """The target's ``method(spec, value)`` answers ``answer(self, spec, value, original)``
    for the keys where ``applies(spec)``."""

    def make(old: Any) -> Any:
        def method_(self: Negotiator, spec: Any, value: str) -> Any:
            if applies(spec):
                return answer(self, spec, value, old)
            return old(self, spec, value)

        return method_

    p.for_target(Negotiator, method, make)


def _outcome(self: Negotiator, spec: Any, value: str) -> str:
    self.values[spec.name] = value
    return value


@mutant(
    "Keys.Number.MinimumAnsweredAsMaximum",
    "keys",
    "numeric keys of result function Minimum are answered with the larger value (6.2.2)",
    catches=[
        "Login.Keys.MaxBurstLength.ResultFunction",
        "Login.Keys.FirstBurstLength.ResultFunction",
    ],
)
def min_as_max(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            theirs = text.parse_number(value)
        except Exception:
            return old(self, spec, value)
        if not spec.in_range(theirs):
            return old(self, spec, value)
        mine = text.parse_number(self.local_value(spec.name) or "0")
        return _outcome(self, spec, str(max(theirs, mine)))

    _answer_when(p, "_answer_number", lambda s: s.result_function is ResultFunction.MIN, answer)


@mutant(
    "Keys.Number.MaximumAnsweredAsMinimum",
    "keys",
    "numeric keys of result function Maximum are answered with the smaller value (6.2.2)",
    catches=["Login.Keys.DefaultTime2Wait.ResultFunction"],
)
def max_as_min(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            theirs = text.parse_number(value)
        except Exception:
            return old(self, spec, value)
        if not spec.in_range(theirs):
            return old(self, spec, value)
        mine = text.parse_number(self.local_value(spec.name) or "0")
        return _outcome(self, spec, str(min(theirs, mine)))

    _answer_when(p, "_answer_number", lambda s: s.result_function is ResultFunction.MAX, answer)


@mutant(
    "Keys.Number.OfferEchoed",
    "keys",
    "numeric offers are answered with the offered value, whatever the target's own limit (6.2.2)",
    catches=["Login.Keys.MaxBurstLength.ResultFunction"],
)
def number_echo(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            if spec.in_range(text.parse_number(value)):
                return _outcome(self, spec, value)
        except Exception:
            pass
        return old(self, spec, value)

    _answer_when(p, "_answer_number", lambda s: s.name != "FirstBurstLength", answer)


@mutant(
    "Keys.Number.OutOfRangeAccepted",
    "keys",
    "an out-of-range numeric offer is taken as the outcome instead of Reject (6.2.2, 13)",
    catches=["Login.Keys.MaxBurstLength.AboveMaximum", "Login.Keys.MaxConnections.BelowMinimum"],
)
def out_of_range(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            if not spec.in_range(text.parse_number(value)):
                return _outcome(self, spec, value)
        except Exception:
            pass
        return old(self, spec, value)

    _answer_when(p, "_answer_number", lambda s: True, answer)


@mutant(
    "Keys.Number.MalformedAnsweredWithOwnValue",
    "keys",
    "a malformed number (letters) is answered with the target's own value, not Reject (6.1, 6.2.2)",
    catches=["Login.Keys.Malformed.NumberWithLetters"],
)
def malformed_number(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            text.parse_number(value)
        except Exception:
            return _outcome(self, spec, self.local_value(spec.name) or "0")
        return old(self, spec, value)

    _answer_when(p, "_answer_number", lambda s: True, answer)


@mutant(
    "Keys.Number.HexNotUnderstood",
    "keys",
    "numbers written in hexadecimal (0x...) are answered Reject (6.1 allows hex-constant)",
    catches=["Login.Keys.NumberEncodings.Hexadecimal"],
)
def hex_numbers(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        if value[:2].lower() in ("0x", "0b"):
            return text.REJECT
        return old(self, spec, value)

    _answer_when(p, "_answer_number", lambda s: True, answer)


@mutant(
    "Keys.FirstBurst.AboveMaxBurst",
    "keys",
    "FirstBurstLength is answered above the MaxBurstLength of the same login (13.14)",
    catches=["Login.Keys.FirstBurstLength.NotAboveMaxBurstLength"],
)
def fbl_above_mbl(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            theirs = text.parse_number(value)
        except Exception:
            return old(self, spec, value)
        if not spec.in_range(theirs):
            return old(self, spec, value)
        mine = text.parse_number(self.local_value(spec.name) or "0")
        return _outcome(self, spec, str(min(theirs, mine)))

    _answer_when(p, "_answer_number", lambda s: s.name == "FirstBurstLength", answer)

    def make(old: Any) -> Any:
        def result(self: Negotiator) -> Any:
            # ... and the login completes on it (the session quietly uses MaxBurstLength).
            try:
                return old(self)
            except NegotiationError:
                saved = self.values.get("FirstBurstLength")
                self.values["FirstBurstLength"] = self.values.get("MaxBurstLength", "262144")
                try:
                    return old(self)
                finally:
                    if saved is not None:
                        self.values["FirstBurstLength"] = saved

        return result

    p.for_target(Negotiator, "result", make)


@mutant(
    "Keys.Boolean.AndAnsweredAsOr",
    "keys",
    "boolean keys of result function AND are answered with OR (6.2.2)",
    catches=["Login.Keys.ImmediateData.ResultFunction", "Login.Keys.DataPDUInOrder.ResultFunction"],
)
def and_as_or(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            theirs = text.parse_boolean(value)
        except Exception:
            return old(self, spec, value)
        mine = text.parse_boolean(self.local_value(spec.name) or "No")
        return _outcome(self, spec, text.format_boolean(theirs or mine))

    _answer_when(p, "_answer_bool", lambda s: s.result_function is ResultFunction.AND, answer)


@mutant(
    "Keys.Boolean.OrAnsweredAsAnd",
    "keys",
    "boolean keys of result function OR (InitialR2T) are answered with AND (6.2.2)",
    catches=["Login.Keys.InitialR2T.ResultFunction"],
)
def or_as_and(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        try:
            theirs = text.parse_boolean(value)
        except Exception:
            return old(self, spec, value)
        mine = text.parse_boolean(self.local_value(spec.name) or "No")
        return _outcome(self, spec, text.format_boolean(theirs and mine))

    _answer_when(p, "_answer_bool", lambda s: s.result_function is ResultFunction.OR, answer)


@mutant(
    "Keys.Boolean.IllegalValueAnsweredNo",
    "keys",
    "a boolean key with a value other than Yes/No is answered No instead of Reject (6.2.2)",
    catches=["Login.Keys.ImmediateData.IllegalValue", "Login.Keys.DataPDUInOrder.IllegalValue"],
)
def bool_illegal(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        if value not in ("Yes", "No"):
            return _outcome(self, spec, "No")
        return old(self, spec, value)

    _answer_when(p, "_answer_bool", lambda s: True, answer)


@mutant(
    "Keys.List.OwnPreferenceFirst",
    "keys",
    "list keys are answered with the target's first choice, not the originator's (6.2.1)",
    catches=["Login.Keys.Answers.ListFromOffer", "Digests.Negotiation.HeaderDigest.CRC32CThenNone"],
)
def list_own_order(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        theirs = text.parse_list(value)
        mine = self.local.get(spec.name) or self.accept.get(spec.name)
        ours = text.parse_list(mine or self.local_value(spec.name) or "None")
        for item in ours:
            if item in theirs and (not spec.values or item in spec.values):
                return _outcome(self, spec, item)
        return text.REJECT

    _answer_when(p, "_answer_list", lambda s: True, answer)


@mutant(
    "Keys.List.NoCommonValueAnsweredNone",
    "keys",
    "a list offer with no value in common is answered None instead of Reject (6.2.1)",
    catches=["Digests.Negotiation", "Login.Keys"],
)
def list_none(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        out = old(self, spec, value)
        return _outcome(self, spec, "None") if out == text.REJECT else out

    _answer_when(p, "_answer_list", lambda s: True, answer)


def _take_offer(p: Patcher, decide: Any) -> None:
    def make(old: Any) -> Any:
        def take(self: Negotiator, key: str, spec: Any, value: str) -> Any:
            return decide(self, key, spec, value, old)

        return take

    p.for_target(Negotiator, "_take_offer", make)


@mutant(
    "Keys.Unknown.AnsweredReject",
    "keys",
    "an unknown key is answered Reject instead of NotUnderstood (6.2)",
    catches=["Login.Keys.Unknown.PrivateKey", "Login.Keys.Unknown.StandardLookingKey"],
)
def unknown_reject(p: Patcher) -> None:
    def decide(self: Negotiator, key: str, spec: Any, value: str, old: Any) -> Any:
        out = old(self, key, spec, value)
        return text.REJECT if out == text.NOT_UNDERSTOOD else out

    _take_offer(p, decide)


@mutant(
    "Keys.Unknown.NotAnswered",
    "keys",
    "an unknown key gets no answer at all (6.2: NotUnderstood)",
    catches=["Login.Keys.Unknown.PrivateKey", "Login.Keys.Answers.EveryKeyAnswered"],
)
def unknown_silent(p: Patcher) -> None:
    def decide(self: Negotiator, key: str, spec: Any, value: str, old: Any) -> Any:
        out = old(self, key, spec, value)
        return None if out == text.NOT_UNDERSTOOD else out

    _take_offer(p, decide)


@mutant(
    "Keys.Unknown.PublicExtensionIgnored",
    "keys",
    "X# public extension keys get no answer (6.2, 13.23: NotUnderstood)",
    catches=["Login.Keys.Unknown.PublicExtensionKey"],
)
def x_hash_silent(p: Patcher) -> None:
    def decide(self: Negotiator, key: str, spec: Any, value: str, old: Any) -> Any:
        out = old(self, key, spec, value)
        return None if key.startswith("X#") else out

    _take_offer(p, decide)


@mutant(
    "Keys.Repeated.Accepted",
    "keys",
    "a key sent twice in one negotiation is accepted, the second value winning (6.2)",
    catches=["Login.Keys.Repeated.SameNegotiation"],
)
def repeated(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def note(self: Negotiator, key: str, spec: Any) -> None:
            self._seen.add(key)

        return note

    p.for_target(Negotiator, "_note_seen", make)


@mutant(
    "Keys.Obsolete.NotUnderstood",
    "keys",
    "obsolete keys (the markers of RFC 3720) are answered NotUnderstood, not Reject (13.25)",
    catches=["Login.Keys.Obsolete.Markers"],
)
def obsolete(p: Patcher) -> None:
    def decide(self: Negotiator, key: str, spec: Any, value: str, old: Any) -> Any:
        out = old(self, key, spec, value)
        if spec is not None and spec.result_function is ResultFunction.OBSOLETE:
            return text.NOT_UNDERSTOOD
        return out

    _take_offer(p, decide)


@mutant(
    "Keys.Discovery.OperationalKeysAnswered",
    "keys",
    "in a Discovery session, keys it ignores are negotiated instead of answered Irrelevant (13)",
    catches=["Login.Keys.Discovery.IrrelevantKeys"],
)
def discovery_irrelevant(p: Patcher) -> None:
    p.for_target(Negotiator, "_relevant", lambda old: lambda self, spec: True)


@mutant(
    "Keys.Senders.TargetKeyFromInitiatorAccepted",
    "keys",
    "keys only a target may send (TargetAlias, TargetPortalGroupTag...) are accepted from the initiator (13)",
    catches=["Login.Keys"],
)
def senders(p: Patcher) -> None:
    def decide(self: Negotiator, key: str, spec: Any, value: str, old: Any) -> Any:
        if spec is not None and not (spec.senders & Role.INITIATOR.senders):
            self._note_seen(key, spec)
            self.peer_declared[key] = value
            return None
        return old(self, key, spec, value)

    _take_offer(p, decide)


@mutant(
    "Keys.Stages.OperationalKeyInSecurityStage",
    "keys",
    "operational keys are negotiated in the security stage and CHAP-stage keys after it (6.3, 12)",
    catches=["Login.Stages", "CHAP.Stage"],
)
def strict_stages(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def init(self: Negotiator, role: Role, *args: Any, **kwargs: Any) -> None:
            if role is Role.TARGET:
                kwargs["strict_stages"] = False
            old(self, role, *args, **kwargs)

        return init

    p.wrap(Negotiator, "__init__", make)


@mutant(
    "Keys.LeadingOnly.AcceptedOnNonLeading",
    "keys",
    "leading-only keys are negotiated on a connection added to a session (13, Use: LO)",
    catches=["Login.Connections.NonLeading"],
)
def leading_only(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def init(self: Negotiator, role: Role, *args: Any, **kwargs: Any) -> None:
            if role is Role.TARGET:
                kwargs["leading"] = True
            old(self, role, *args, **kwargs)

        return init

    p.wrap(Negotiator, "__init__", make)


@mutant(
    "Keys.LoginOnly.AcceptedInFullFeature",
    "keys",
    "login-only keys are renegotiated in a full-feature Text Request instead of Reject (13, Use: IO)",
    catches=["FullFeature.Text.LoginOnlyKey"],
)
def login_only_in_ffp(p: Patcher) -> None:
    from iscsi_conformance.core.codes import LoginStage

    def make(old: Any) -> Any:
        def check(self: Negotiator, spec: Any) -> None:
            if self.stage is LoginStage.FULL_FEATURE_PHASE:
                return
            old(self, spec)

        return check

    p.for_target(Negotiator, "_check_use", make)


@mutant(
    "Keys.Declare.NoMaxRecvDataSegmentLength",
    "keys",
    "the target never declares its MaxRecvDataSegmentLength during login (13.12)",
    catches=["Login.Keys.MaxRecvDataSegmentLength.TargetDeclares"],
)
def no_mrdsl(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def offer(self: Negotiator, keys: Any = None) -> Any:
            if keys is not None:
                keys = [k for k in keys if k != "MaxRecvDataSegmentLength"]
                if not keys:
                    self.declared.setdefault("MaxRecvDataSegmentLength", "8192")
                    return []
            return old(self, keys)

        return offer

    p.for_target(Negotiator, "offer", make)


@mutant(
    "Keys.Declare.NoTargetPortalGroupTag",
    "keys",
    "the target does not return TargetPortalGroupTag in a Normal session's login (13.9)",
    catches=["Login.Keys.TargetPortalGroupTag.Returned"],
)
def no_tpgt(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def offer(self: Negotiator, keys: Any = None) -> Any:
            if keys is not None:
                keys = [k for k in keys if k != "TargetPortalGroupTag"]
            return old(self, keys)

        return offer

    p.for_target(Negotiator, "offer", make)


@mutant(
    "Keys.ReservedConstantOfferIgnored",
    "keys",
    "a key offered with a reserved answer constant (NotUnderstood, Reject...) is ignored, not refused (6.2)",
    catches=["Login.Keys"],
)
def reserved_constant(p: Patcher) -> None:
    def decide(self: Negotiator, key: str, spec: Any, value: str, old: Any) -> Any:
        if value in text.RESERVED_ANSWERS:
            self._note_seen(key, spec)
            return None
        return old(self, key, spec, value)

    _take_offer(p, decide)


@mutant(
    "Keys.Continuation.PartialTakenAsWhole",
    "keys",
    "a Login Request with C=1 is negotiated at once instead of waiting for the rest of the text (6.2, 11.12.2)",
    catches=["Login.Continuation"],
)
def continuation(p: Patcher) -> None:
    import dataclasses

    from iscsi_conformance.core import pdu as P

    def make(old: Any) -> Any:
        def receive_pdu(self: TargetLogin, pdu: Any) -> Any:
            if isinstance(pdu, P.LoginRequest) and pdu.cont:
                pdu = dataclasses.replace(pdu, cont=False, transit=False)
            return old(self, pdu)

        return receive_pdu

    p.wrap(TargetLogin, "receive_pdu", make)


@mutant(
    "Keys.ProtocolLevel.HigherEchoed",
    "keys",
    "iSCSIProtocolLevel above the target's is answered with the offered level (RFC 7144 4.2.1: minimum)",
    catches=["Login.Keys.ProtocolLevel.Higher", "Login.Keys.iSCSIProtocolLevel.ResultFunction"],
)
def protocol_level(p: Patcher) -> None:
    def answer(self: Negotiator, spec: Any, value: str, old: Any) -> str:
        out = old(self, spec, value)
        if out not in text.RESERVED_ANSWERS:
            return _outcome(self, spec, value)
        return out

    _answer_when(p, "_answer_number", lambda s: s.name == "iSCSIProtocolLevel", answer)


assert "iSCSIProtocolLevel" in KEYS
