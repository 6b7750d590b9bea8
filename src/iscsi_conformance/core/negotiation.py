"""The text-key negotiation engine (RFC 7143 6.2, 13), for either side.

Theory of operation: one :class:`Negotiator` per side of a connection holds that
side's *local* values (what it supports / wants / declares) and the outcome of every
key so far.  A key is *offered* by one side (the originator) and *answered* by the
other (the responder); either side can originate, so the Negotiator plays both
roles key by key:

* ``offer()`` turns local values into ``key=value`` offers and remembers them as
  pending;
* ``respond(pairs)`` takes what the peer sent: a pair whose key we have pending is
  the peer's *answer* (checked against the selection rule: choosing a value we did
  not offer is a protocol error), any other pair is the peer's *offer*, answered by
  the key's result function (list: first value of theirs we support; numbers:
  minimum or maximum; booleans: AND or OR; declarative keys: recorded, not
  answered);
* ``result()`` folds defaults, the session's values and the outcomes into a typed
  :class:`NegotiatedParameters`.

Every rule comes from the KeySpec table in :mod:`.keys`.  Breaking a rule either
yields an answer (``NotUnderstood`` for unknown keys, ``Irrelevant`` for keys a
Discovery session ignores, ``Reject`` for inadmissible values) or raises
:class:`~iscsi_conformance.errors.NegotiationError` carrying the login status
(0x0200 initiator error) and the section.  CHAP keys are not negotiated here: the
login layer hands them to :mod:`.chap`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from iscsi_conformance.core import text
from iscsi_conformance.core.codes import LoginStage
from iscsi_conformance.core.keys import (
    KEYS,
    KeySpec,
    Phase,
    ResultFunction,
    Scope,
    Senders,
    ValueKind,
)
from iscsi_conformance.errors import ConfigError, NegotiationError

Pair = tuple[str, str]


class Role(enum.Enum):
    """Which end of the connection a Negotiator speaks for."""

    INITIATOR = "initiator"
    TARGET = "target"

    @property
    def peer(self) -> Role:
        """The other end."""
        return Role.TARGET if self is Role.INITIATOR else Role.INITIATOR

    @property
    def senders(self) -> Senders:
        """This role as a KeySpec ``senders`` flag."""
        return Senders.INITIATOR if self is Role.INITIATOR else Senders.TARGET


class OutOfRange(enum.Enum):
    """What a responder does with an inadmissible numeric offer (RFC 7143 6.2.2 allows both)."""

    REJECT = "answer Reject"
    CLAMP = "answer an admissible value"


@dataclass(frozen=True)
class NegotiatedParameters:
    """The typed outcome of a negotiation, seen from one side.

    ``max_recv_data_segment_length_local`` is what we declared we can receive (the
    peer must not send us more); ``..._peer`` is what the peer declared, i.e. the
    largest data segment we may send (RFC 7143 13.12, declarative per direction).
    ``values`` holds every outcome as wire text, extension keys included.
    """

    header_digest: bool = False
    data_digest: bool = False
    max_recv_data_segment_length_local: int = 8192
    max_recv_data_segment_length_peer: int = 8192
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = True
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    max_connections: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    task_reporting: str = "RFC3720"
    iscsi_protocol_level: int = 1
    auth_method: str = "None"
    session_type: str = "Normal"
    initiator_name: str | None = None
    target_name: str | None = None
    initiator_alias: str | None = None
    target_alias: str | None = None
    target_portal_group_tag: int | None = None
    values: dict[str, str] = field(default_factory=dict)

    @property
    def max_send_data_segment_length(self) -> int:
        """Largest data segment we may send (the peer's declaration)."""
        return self.max_recv_data_segment_length_peer


def _err(
    message: str,
    spec: KeySpec | None,
    key: str,
    *,
    section: str | None = None,
    status: int = 0x0200,
) -> NegotiationError:
    where = section or (spec.section if spec else "RFC 7143 6.2")
    return NegotiationError(message, section=where, login_status=status, key=key)


def check_value(spec: KeySpec, value: str) -> None:
    """Raise NegotiationError unless ``value`` is well-formed for ``spec`` and in range.

    Checks syntax (RFC 7143 6.1), the length limit (255 bytes unless the key says
    otherwise) and, for numbers, the key's legal range.
    """
    name = spec.name
    kind = spec.kind
    if kind in (ValueKind.NUMBER,):
        n = text.parse_number(value)
        if not spec.in_range(n):
            raise _err(f"{name}={value} is outside {spec.min}..{spec.max}", spec, name)
    elif kind is ValueKind.BOOLEAN:
        text.parse_boolean(value)
    elif kind is ValueKind.RANGE:
        low, high = text.parse_range(value) if "~" in value else (text.parse_number(value),) * 2
        if not (spec.in_range(low) and spec.in_range(high)):
            raise _err(f"{name}={value} is outside {spec.min}..{spec.max}", spec, name)
    elif kind is ValueKind.LIST:
        for item in text.parse_list(value):
            if len(item.encode()) > spec.max_length:
                raise _err(f"a value of {name} is longer than {spec.max_length} bytes", spec, name)
    elif kind is ValueKind.ENUM:
        if value not in spec.values:
            raise _err(f"{name}={value!r} is not one of {spec.values}", spec, name)
    elif kind in (ValueKind.BINARY, ValueKind.LARGE_BINARY):
        if len(text.parse_binary(value)) > spec.max_length:
            raise _err(f"{name} is longer than {spec.max_length} bytes", spec, name)
    else:  # TEXT, ISCSI_NAME, LOCAL_NAME, ADDRESS
        if len(value.encode()) > spec.max_length:
            raise _err(f"{name} is longer than {spec.max_length} bytes", spec, name)
        if kind in (ValueKind.ISCSI_NAME, ValueKind.ADDRESS) and not value:
            raise _err(f"{name} is empty", spec, name)
        if kind is ValueKind.TEXT and not text.is_text_value(value):
            raise _err(f"{name}={value[:40]!r} has characters outside text-value", spec, name)
        if not text.is_local_name(value):
            raise _err(f"{name} contains NUL", spec, name)


def _optional_answer(spec: KeySpec, offered: str) -> bool:
    # RFC 7143 6.2.2: answering is optional when the outcome is already fixed by the
    # offer: AND with No, OR with Yes.
    return (spec.result_function is ResultFunction.AND and offered == "No") or (
        spec.result_function is ResultFunction.OR and offered == "Yes"
    )


class Negotiator:
    """Sans-IO negotiation engine for one side (see the module docstring).

    ``local`` maps key names to our values: for list keys our supported values in
    order of preference (``"CRC32C,None"``), for numbers our limit, for booleans our
    wish, for declarative keys what we declare.  ``stage`` (a LoginStage) must be kept
    current by the login layer; it drives the "Use" checks.  ``leading`` is False on a
    connection added to an existing session, whose session-wide values come from
    ``session``.  ``strict_stages`` forbids operational keys in the security stage
    and security keys after it (RFC 7143 6.3, 12).
    """

    def __init__(
        self,
        role: Role,
        local: Mapping[str, str] | None = None,
        session_type: str = "Normal",
        *,
        leading: bool = True,
        stage: LoginStage = LoginStage.SECURITY_NEGOTIATION,
        session: NegotiatedParameters | None = None,
        out_of_range: OutOfRange = OutOfRange.REJECT,
        answer_optional: bool = True,
        strict_stages: bool = True,
        accept: Mapping[str, str] | None = None,
    ) -> None:
        self.role = role
        self.local: dict[str, str] = dict(local or {})
        #: List keys we never offer but accept when the peer offers them: the values we
        #: support, used only to answer (e.g. a test initiator that can do CRC32C but
        #: does not ask for it). ``local`` wins where both name a key.
        self.accept: dict[str, str] = dict(accept or {})
        self.session_type = session_type
        self.leading = leading
        self.stage = stage
        self.session = session
        self.out_of_range = out_of_range
        self.answer_optional = answer_optional
        self.strict_stages = strict_stages
        #: Outcomes so far (wire text), by key.
        self.values: dict[str, str] = {}
        #: Our offers still waiting for an answer.
        self.pending: dict[str, str] = {}
        #: What we declared / what the peer declared.
        self.declared: dict[str, str] = {}
        self.peer_declared: dict[str, str] = {}
        #: Keys the peer answered with NotUnderstood / Irrelevant / Reject.
        self.special_answers: dict[str, str] = {}
        #: Our answers to the peer's offers, by key.
        self.answered: dict[str, str] = {}
        #: Requests left for the caller (SendTargets).
        self.requests: list[Pair] = []
        self._offered: dict[str, str] = {}
        self._seen: set[str] = set()  # keys the peer sent in this negotiation sequence
        for key, value in self.local.items():
            spec = KEYS.get(key)
            if spec is None or spec.result_function in (ResultFunction.AUTH,):
                continue
            try:
                check_value(spec, value)
            except NegotiationError as exc:
                raise ConfigError(str(exc), field=key) from exc

    # ------------------------------------------------------------------ helpers

    def _session_value(self, key: str) -> str | None:
        # Only session-wide values carry over to a new connection of the session.
        spec = KEYS.get(key)
        if self.session is None or (spec is not None and spec.scope is Scope.CONNECTION):
            return None
        return self.session.values.get(key)

    def local_value(self, key: str) -> str | None:
        """Our value for ``key``: configured, else the session's, else the default."""
        if key in self.local:
            return self.local[key]
        if (value := self._session_value(key)) is not None:
            return value
        spec = KEYS.get(key)
        return spec.default if spec else None

    def current(self, key: str) -> str | None:
        """The value in force now: outcome, else session value, else default."""
        if key in self.values:
            return self.values[key]
        if (value := self._session_value(key)) is not None:
            return value
        spec = KEYS.get(key)
        return spec.default if spec else None

    def begin_sequence(self) -> None:
        """Start a new negotiation sequence (a new Text exchange in full feature phase).

        Keys may be renegotiated in a new sequence; within one, a repeat is an error.
        """
        self._seen.clear()
        self.pending.clear()
        self._offered.clear()

    def _relevant(self, spec: KeySpec) -> bool:
        return self.session_type != "Discovery" or spec.usable_in_discovery

    def _may_send_now(self, spec: KeySpec) -> bool:
        if self.stage is LoginStage.FULL_FEATURE_PHASE:
            return not spec.login_only
        if Phase.FFPO in spec.phase:
            return False
        if not self.leading and spec.leading_only:
            return False
        if self.stage is LoginStage.SECURITY_NEGOTIATION:
            return spec.security or Phase.ANY_STAGE in spec.phase
        return not spec.security

    # ------------------------------------------------------------------ offering

    def offer(self, keys: Iterable[str] | None = None) -> list[Pair]:
        """Offers (and declarations) for ``keys``, default: every local key usable now.

        Keys we may not send in this stage, session type or connection are skipped
        when chosen by default; naming them explicitly offers them anyway, so a test
        can provoke the peer.  Keys already offered or settled are not offered again.
        """
        explicit = keys is not None
        names = list(keys) if keys is not None else list(self.local)
        out: list[Pair] = []
        for key in names:
            value = self.local_value(key)
            if value is None:
                if explicit:
                    raise ConfigError("no local value to offer", field=key)
                continue
            spec = KEYS.get(key)
            if spec is not None and not explicit:
                if spec.result_function in (ResultFunction.AUTH, ResultFunction.OBSOLETE):
                    continue
                if not (spec.senders & self.role.senders) or not self._may_send_now(spec):
                    continue
                if not self._relevant(spec):
                    continue
            if key in self._offered or key in self.declared:
                continue
            declarative = spec is not None and spec.declarative
            # A negotiated key the peer raised first is settled or answered; a
            # declaration is each side's own (RFC 7143 13.12: both sides declare
            # MaxRecvDataSegmentLength whatever the other declared).
            if not declarative and (key in self.values or key in self._seen):
                continue
            out.append((key, value))
            self._offered[key] = value
            if spec is not None and spec.declarative:
                self.declared[key] = value
            else:
                self.pending[key] = value
        return out

    # ------------------------------------------------------------------ receiving

    def respond(self, pairs: Iterable[Pair]) -> list[Pair]:
        """Process the peer's pairs; return our answers in the order received.

        CHAP_* keys are skipped (the authenticator handles them).  Raises
        NegotiationError when the peer broke a rule that has no answer.
        """
        pairs = list(pairs)
        answers: dict[int, Pair] = {}
        # FirstBurstLength depends on MaxBurstLength, InitialR2T and ImmediateData
        # (RFC 7143 13.14), so it is settled after the others in the same PDU.
        order = [i for i, p in enumerate(pairs) if p[0] != "FirstBurstLength"]
        order += [i for i, p in enumerate(pairs) if p[0] == "FirstBurstLength"]
        for i in order:
            key, value = pairs[i]
            spec = KEYS.get(key)
            if spec is not None and spec.result_function is ResultFunction.AUTH:
                self._note_seen(key, spec)
                continue
            if key in self.pending:
                self._note_seen(key, spec)
                self._take_answer(key, spec, value)
                continue
            answer = self._take_offer(key, spec, value)
            if answer is not None:
                answers[i] = (key, answer)
                self.answered[key] = answer
        return [answers[i] for i in sorted(answers)]

    def _note_seen(self, key: str, spec: KeySpec | None) -> None:
        # RFC 7143 6.2: a key may be negotiated or declared only once per negotiation
        # sequence, except keys that explicitly allow repeats (TargetAddress).
        if key in self._seen and not (spec is not None and spec.repeatable):
            raise _err(
                f"key {key} sent twice in one negotiation", spec, key, section="RFC 7143 6.2"
            )
        self._seen.add(key)

    def _take_answer(self, key: str, spec: KeySpec | None, value: str) -> None:
        offered = self.pending.pop(key)
        if value in text.RESERVED_ANSWERS:
            self.special_answers[key] = value
            return
        if spec is None:
            self.values[key] = value
            return
        fn = spec.result_function
        if fn is ResultFunction.LIST:
            choices = text.parse_list(offered)
            if value not in choices:
                # RFC 7143 6.2.1: selecting a value that was not proposed.
                raise _err(
                    f"{key}={value} was not among the offered {offered}",
                    spec,
                    key,
                    section="RFC 7143 6.2.1",
                )
        elif fn in (ResultFunction.AND, ResultFunction.OR):
            answer = self._bool(spec, value)
            mine = text.parse_boolean(offered)
            legal = (answer <= mine) if fn is ResultFunction.AND else (answer >= mine)
            if not legal:
                raise _err(
                    f"{key}={value} breaks the {fn.value} rule for our {offered}",
                    spec,
                    key,
                    section="RFC 7143 6.2.2",
                )
        elif fn in (ResultFunction.MIN, ResultFunction.MAX):
            n = self._num(spec, value)
            limit = text.parse_number(offered)
            if (fn is ResultFunction.MIN and n > limit) or (fn is ResultFunction.MAX and n < limit):
                raise _err(
                    f"{key}={value} breaks the {fn.value} rule for our {offered}",
                    spec,
                    key,
                    section="RFC 7143 6.2.2",
                )
        else:
            check_value(spec, value)
        self.values[key] = value

    def _bool(self, spec: KeySpec, value: str) -> bool:
        try:
            return text.parse_boolean(value)
        except NegotiationError as exc:
            raise _err(str(exc.message), spec, spec.name) from exc

    def _num(self, spec: KeySpec, value: str) -> int:
        n = text.parse_number(value)
        if not spec.in_range(n):
            raise _err(f"{spec.name}={value} is outside {spec.min}..{spec.max}", spec, spec.name)
        return n

    def _take_offer(self, key: str, spec: KeySpec | None, value: str) -> str | None:
        """Handle one key the peer originated; return our answer or None."""
        self._note_seen(key, spec)
        if value in text.RESERVED_ANSWERS:
            # RFC 7143 6.2: the reserved constants are answers, never offers.
            raise _err(
                f"{key}={value}: a reserved constant used as an offer",
                spec,
                key,
                section="RFC 7143 6.2",
            )
        if spec is None:
            # RFC 7143 6.2: unknown keys (X- / X# extensions included) -> NotUnderstood.
            return text.NOT_UNDERSTOOD
        if not (spec.senders & self.role.peer.senders):
            raise _err(f"{key} may only be sent by the {self.role.value}", spec, key)
        self._check_use(spec)
        fn = spec.result_function
        if fn is ResultFunction.OBSOLETE:
            # RFC 7143 13.25: Reject (SHOULD for the booleans, MUST for the intervals);
            # never NotUnderstood.
            return text.REJECT
        if fn is ResultFunction.REQUEST:
            self.requests.append((key, value))
            return None
        if fn is ResultFunction.DECLARATIVE:
            check_value(spec, value)
            if not self.leading and spec.leading_only:
                self._check_same_as_session(spec, value)
            self.peer_declared[key] = value
            if key != "MaxRecvDataSegmentLength":
                self.values[key] = value
            return None
        if not self.leading and spec.leading_only:
            raise _err(
                f"{key} is leading-only but this is not the leading connection",
                spec,
                key,
                section=f"{spec.section} (Use: LO)",
            )
        if not self._relevant(spec):
            return text.IRRELEVANT
        if fn is ResultFunction.LIST:
            return self._answer_list(spec, value)
        if fn in (ResultFunction.AND, ResultFunction.OR):
            return self._answer_bool(spec, value)
        return self._answer_number(spec, value)

    def _check_use(self, spec: KeySpec) -> None:
        name = spec.name
        if self.stage is LoginStage.FULL_FEATURE_PHASE:
            if spec.login_only:
                raise _err(
                    f"{name} may only be used during login",
                    spec,
                    name,
                    section=f"{spec.section} (Use)",
                )
            return
        if Phase.FFPO in spec.phase:
            raise _err(f"{name} may only be used in full feature phase", spec, name)
        if not self.strict_stages:
            return
        if spec.security and self.stage is not LoginStage.SECURITY_NEGOTIATION:
            raise _err(
                f"{name} belongs to the security stage", spec, name, section="RFC 7143 12, 6.3"
            )
        if (
            self.stage is LoginStage.SECURITY_NEGOTIATION
            and not spec.security
            and Phase.ANY_STAGE not in spec.phase
        ):
            raise _err(
                f"operational key {name} sent in the security stage",
                spec,
                name,
                section="RFC 7143 6.3",
            )

    def _check_same_as_session(self, spec: KeySpec, value: str) -> None:
        # A non-leading connection may repeat a leading-only declaration (some
        # initiators resend SessionType) but not change it.
        current = self.current(spec.name)
        if current is not None and current != value:
            raise _err(
                f"{spec.name}={value} differs from the session's {current}",
                spec,
                spec.name,
                section=f"{spec.section} (Use: LO)",
            )

    def _answer_list(self, spec: KeySpec, value: str) -> str:
        theirs = text.parse_list(value)
        mine = self.local.get(spec.name) or self.accept.get(spec.name)
        ours = text.parse_list(mine or self.local_value(spec.name) or "None")
        supported = [v for v in ours if not spec.values or v in spec.values]
        # RFC 7143 6.2.1: the first value of the originator's list we support;
        # unknown values are ignored; None only if proposed; otherwise Reject.
        for item in theirs:
            if item in supported:
                self.values[spec.name] = item
                return item
        return text.REJECT

    def _answer_bool(self, spec: KeySpec, value: str) -> str:
        try:
            theirs = text.parse_boolean(value)
        except NegotiationError:
            return text.REJECT
        mine = text.parse_boolean(self.local_value(spec.name) or "No")
        if spec.result_function is ResultFunction.AND:
            outcome = theirs and mine
        else:
            outcome = theirs or mine
        self.values[spec.name] = text.format_boolean(outcome)
        return text.format_boolean(outcome)

    def _answer_number(self, spec: KeySpec, value: str) -> str:
        try:
            theirs = text.parse_number(value)
        except NegotiationError:
            return text.REJECT
        mine = text.parse_number(self.local_value(spec.name) or "0")
        lo = spec.min if spec.min is not None else 0
        hi = spec.max if spec.max is not None else text.MAX_NUMERICAL
        if not spec.in_range(theirs):
            # RFC 7143 6.2.2: an inadmissible offer MAY be answered Reject or with an
            # admissible value.
            if self.out_of_range is OutOfRange.REJECT:
                return text.REJECT
            theirs = min(max(theirs, lo), hi)
        if spec.result_function is ResultFunction.MIN:
            outcome = min(theirs, mine)
        else:
            outcome = max(theirs, mine)
        if spec.name == "FirstBurstLength":
            if self.current("InitialR2T") == "Yes" and self.current("ImmediateData") == "No":
                return text.IRRELEVANT  # RFC 7143 13.14 "Irrelevant when"
            # 13.14: FirstBurstLength MUST NOT exceed MaxBurstLength; any value below
            # the offer is admissible under Minimum, so answer within both.
            mbl = text.parse_number(self.current("MaxBurstLength") or "262144")
            own = self.local.get("MaxBurstLength")
            if "MaxBurstLength" not in self.values and own is not None:
                # Not settled yet, but we offer (or offered) our own value and Minimum
                # can only lower it: stay within that too.
                mbl = min(mbl, text.parse_number(own))  # checked in __init__
            outcome = min(outcome, mbl)
        self.values[spec.name] = str(outcome)
        return str(outcome)

    # ------------------------------------------------------------------ outcome

    def unanswered(self) -> list[str]:
        """Our offers with no answer yet, leaving out those whose answer is optional."""
        out = []
        for key, offered in self.pending.items():
            spec = KEYS.get(key)
            if spec is not None and self.answer_optional and _optional_answer(spec, offered):
                continue
            out.append(key)
        return out

    def result(self) -> NegotiatedParameters:
        """The typed outcome: defaults, then the session's values, then outcomes.

        Raises NegotiationError if both burst lengths were negotiated and
        FirstBurstLength exceeds MaxBurstLength (RFC 7143 13.14).
        """
        values: dict[str, str] = {}
        for key, spec in KEYS.items():
            if spec.default is not None and spec.result_function is not ResultFunction.OBSOLETE:
                values[key] = spec.default
        if self.session is not None:
            for key, value in self.session.values.items():
                sspec = KEYS.get(key)
                if sspec is None or sspec.scope is Scope.SESSION:
                    values[key] = value
        values.update(self.declared)
        for key, offered in self.pending.items():
            pspec = KEYS.get(key)
            if pspec is not None and _optional_answer(pspec, offered):
                values[key] = offered
        values.update(self.values)
        values.pop("MaxRecvDataSegmentLength", None)
        negotiated_both = {"FirstBurstLength", "MaxBurstLength"} <= set(self.values)
        mbl = int(values["MaxBurstLength"])
        fbl = int(values["FirstBurstLength"])
        if fbl > mbl:
            if negotiated_both:
                raise NegotiationError(
                    f"FirstBurstLength {fbl} exceeds MaxBurstLength {mbl}",
                    section="RFC 7143 13.14",
                    key="FirstBurstLength",
                )
            fbl = mbl
            values["FirstBurstLength"] = str(mbl)

        def flag(key: str) -> bool:
            return values.get(key) == "Yes"

        tpgt = values.get("TargetPortalGroupTag")
        return NegotiatedParameters(
            header_digest=values["HeaderDigest"] == "CRC32C",
            data_digest=values["DataDigest"] == "CRC32C",
            max_recv_data_segment_length_local=int(
                self.declared.get("MaxRecvDataSegmentLength", "8192")
            ),
            max_recv_data_segment_length_peer=int(
                self.peer_declared.get("MaxRecvDataSegmentLength", "8192")
            ),
            max_burst_length=mbl,
            first_burst_length=fbl,
            immediate_data=flag("ImmediateData"),
            initial_r2t=flag("InitialR2T"),
            max_outstanding_r2t=int(values["MaxOutstandingR2T"]),
            data_pdu_in_order=flag("DataPDUInOrder"),
            data_sequence_in_order=flag("DataSequenceInOrder"),
            error_recovery_level=int(values["ErrorRecoveryLevel"]),
            max_connections=int(values["MaxConnections"]),
            default_time2wait=int(values["DefaultTime2Wait"]),
            default_time2retain=int(values["DefaultTime2Retain"]),
            task_reporting=values["TaskReporting"],
            iscsi_protocol_level=int(values["iSCSIProtocolLevel"]),
            auth_method=values["AuthMethod"],
            session_type=self.session_type,
            initiator_name=values.get("InitiatorName"),
            target_name=values.get("TargetName"),
            initiator_alias=values.get("InitiatorAlias"),
            target_alias=values.get("TargetAlias"),
            target_portal_group_tag=text.parse_number(tpgt) if tpgt is not None else None,
            values=values,
        )
