"""The login phase (RFC 7143 6.3, 8.1, 11.12, 11.13) for both roles, sans-IO.

Theory of operation: each role is a state machine written as a table
``{(state, input): Transition(action, next_state, label)}`` whose states carry the
names of RFC 7143 8.1.1 (S1 FREE, S2 XPT_WAIT, S3 XPT_UP, S4 IN_LOGIN, S5 LOGGED_IN;
IN_LOGIN is split by login stage, the sub-steps of 6.3) and whose labels are the
transition names of 8.1.3 (T1..T7).  Inputs are *classified* PDUs: a Login PDU is
reduced to what matters to the state machine (partial, stay in stage, transit to
operational, transit to full feature, redirect, failure, or one of the malformed
shapes such as T=1 with C=1).  The malformed shapes never appear in a table, so they
are errors by construction: a (state, input) missing from the table is a protocol
error, and the error knows what goes on the wire (a Login Response status for the
target, closing the connection for the initiator).

The target side also emits "response" inputs (TX_*) once it has decided how to
answer, so that the state change after a response is decided by the table as well.

Both machines are driven the same way: ``receive_pdu(pdu) -> list[event]`` and
``data_to_send() -> list[PDU]``.  Events: :class:`LoginCompleted`,
:class:`LoginFailed`, :class:`LoginRedirected`, and on the target
:class:`SessionReinstated` / :class:`ConnectionReinstated` (the owner must close the
old session or connection, RFC 7143 6.3.4-6.3.5).  Key negotiation is delegated to
:mod:`.negotiation`, authentication to :mod:`.chap`.

For conformance tests the initiator takes ``pairs_hook`` and ``request_hook`` to
produce illegal requests (repeat keys, skip security, T=1 with NSG < CSG, ...).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from iscsi_conformance.core import text
from iscsi_conformance.core.chap import (
    CHAP_KEYS,
    DEFAULT_ALGORITHMS,
    ChapAlgorithm,
    ChapAuthenticator,
    ChapClient,
    ChapCredentials,
    ChapPolicy,
)
from iscsi_conformance.core.codes import LoginStage, LoginStatus
from iscsi_conformance.core.negotiation import NegotiatedParameters, Negotiator, Role
from iscsi_conformance.core.pdu import PDU, LoginRequest, LoginResponse
from iscsi_conformance.errors import (
    AuthenticationError,
    LoginError,
    NegotiationError,
    ProtocolError,
)

Pair = tuple[str, str]
Rng = Callable[[int], bytes]

SECURITY = LoginStage.SECURITY_NEGOTIATION
OPERATIONAL = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
FULL_FEATURE = LoginStage.FULL_FEATURE_PHASE

#: RFC 7143 11.12.4: the only version defined.
VERSION = 0x00
#: RFC 7143 13.12: until declared otherwise, a login PDU carries at most 8192 bytes.
LOGIN_SEGMENT = 8192


# --------------------------------------------------------------------------- ISID


class IsidType(enum.IntEnum):
    """The T field of the ISID (RFC 7143 11.12.5)."""

    OUI = 0b00
    EN = 0b01
    RANDOM = 0b10
    RESERVED = 0b11


def isid_type(isid: int) -> IsidType:
    """The format of a 48-bit ISID (its top two bits)."""
    return IsidType((isid >> 46) & 0b11)


def make_isid(kind: IsidType, *, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
    """Assemble T(2) A(6) B(16) C(8) D(16) into a 48-bit ISID (RFC 7143 11.12.5)."""
    if not (0 <= a < 64 and 0 <= b < 65536 and 0 <= c < 256 and 0 <= d < 65536):
        raise ValueError("ISID field out of range")
    return (int(kind) << 46) | (a << 40) | (b << 24) | (c << 16) | d


def random_isid(rng: Rng, qualifier: int = 0) -> int:
    """A type 10b ISID: B and C random, D the qualifier."""
    r = rng(3)
    return make_isid(IsidType.RANDOM, b=int.from_bytes(r[:2], "big"), c=r[2], d=qualifier)


def en_isid(enterprise_number: int, qualifier: int = 0) -> int:
    """A type 01b ISID: B and C the 24-bit IANA enterprise number, D the qualifier."""
    if not 0 <= enterprise_number < 2**24:
        raise ValueError("enterprise number is 24 bits")
    return make_isid(IsidType.EN, b=enterprise_number >> 8, c=enterprise_number & 0xFF, d=qualifier)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class LoginCompleted:
    """The final Login Response with status 0 was sent / received (T5)."""

    parameters: NegotiatedParameters
    tsih: int
    isid: int
    cid: int
    initiator_name: str
    target_name: str | None
    session_type: str
    leading: bool
    statsn: int
    cmdsn: int
    expcmdsn: int
    maxcmdsn: int
    authenticated_as: str | None = None


@dataclass(frozen=True)
class LoginFailed:
    """The login ended without success (T7); the connection is to be closed.

    ``status`` is the Login status sent or received (None when the initiator itself
    detected a protocol error and just drops the connection); ``error`` the rule
    broken, if any.
    """

    status: int | None
    reason: str
    error: ProtocolError | None = None


@dataclass(frozen=True)
class LoginRedirected:
    """The target redirected the initiator (status class 1, RFC 7143 11.13.5)."""

    address: str
    permanent: bool
    status: int


@dataclass(frozen=True)
class SessionReinstated:
    """A new leading login reuses the ISID and InitiatorName of a live session; the
    target must close that old session (RFC 7143 6.3.5)."""

    initiator_name: str
    isid: int
    old_tsih: int


@dataclass(frozen=True)
class ConnectionReinstated:
    """A login names the CID of a live connection of the session; the old connection
    is to be logged out (RFC 7143 6.3.4)."""

    tsih: int
    cid: int


Event = LoginCompleted | LoginFailed | LoginRedirected | SessionReinstated | ConnectionReinstated


class Transition(NamedTuple):
    """One table entry: what to do and where to go; ``label`` is the RFC's name."""

    action: enum.Enum
    next_state: enum.Enum
    label: str


# --------------------------------------------------------------------------- initiator


class InitiatorState(enum.Enum):
    """Initiator connection states (RFC 7143 8.1.1), IN_LOGIN split by stage."""

    S1_FREE = "S1"
    S2_XPT_WAIT = "S2"
    S4_IN_LOGIN_SECURITY = "S4/security"
    S4_IN_LOGIN_OPERATIONAL = "S4/operational"
    S5_LOGGED_IN = "S5"


class InitiatorInput(enum.Enum):
    """What happened to the initiator: transport events and classified responses."""

    CONNECT = "transport connect requested"
    CONNECTED_SECURITY = "transport up, login starts in the security stage"
    CONNECTED_OPERATIONAL = "transport up, login starts in the operational stage"
    TRANSPORT_FAILED = "transport connect failed"
    TRANSPORT_CLOSED = "transport closed"
    TIMEOUT = "login timed out"
    RX_PARTIAL = "response with C=1"
    RX_STAY = "response with T=0"
    RX_TRANSIT_OPERATIONAL = "response with T=1, NSG=1"
    RX_TRANSIT_FFP = "response with T=1, NSG=3"
    RX_REDIRECT = "response with status class 1"
    RX_FAILURE = "response with status class 2 or 3"
    # Malformed shapes: in no table, so always protocol errors.
    RX_T_AND_C = "response with T=1 and C=1"
    RX_UNREQUESTED_TRANSIT = "T=1 although our request had T=0"
    RX_STAGE_MISMATCH = "CSG differs from the stage of our request"
    RX_NSG_BEYOND_REQUEST = "NSG beyond the one we asked for"
    RX_BAD_NSG = "T=1 with NSG not forward or reserved"
    RX_BAD_VERSION = "Version-active outside our range"
    RX_WRONG_TASK = "ISID or ITT does not match our request"
    RX_UNEXPECTED = "a response when none was due, or not a Login Response"


class InitiatorAction(enum.Enum):
    """Initiator side effects."""

    NONE = "nothing"
    SEND_FIRST = "send the first Login Request of the stage"
    SEND_EMPTY = "acknowledge a partial response with an empty request"
    CONTINUE = "process keys, send the next request in the same stage"
    ENTER_OPERATIONAL = "process keys, start the operational stage"
    COMPLETE = "process keys, enter full feature phase"
    REDIRECT = "report the redirection"
    FAIL = "report the failure"


_I = InitiatorState
_II = InitiatorInput
_IA = InitiatorAction

INITIATOR_TRANSITIONS: dict[tuple[InitiatorState, InitiatorInput], Transition] = {
    (_I.S1_FREE, _II.CONNECT): Transition(_IA.NONE, _I.S2_XPT_WAIT, "T1"),
    (_I.S2_XPT_WAIT, _II.TRANSPORT_FAILED): Transition(_IA.FAIL, _I.S1_FREE, "T2"),
    (_I.S2_XPT_WAIT, _II.CONNECTED_SECURITY): Transition(
        _IA.SEND_FIRST, _I.S4_IN_LOGIN_SECURITY, "T4"
    ),
    (_I.S2_XPT_WAIT, _II.CONNECTED_OPERATIONAL): Transition(
        _IA.SEND_FIRST, _I.S4_IN_LOGIN_OPERATIONAL, "T4"
    ),
}
for _stage in (_I.S4_IN_LOGIN_SECURITY, _I.S4_IN_LOGIN_OPERATIONAL):
    INITIATOR_TRANSITIONS.update(
        {
            (_stage, _II.RX_PARTIAL): Transition(_IA.SEND_EMPTY, _stage, "6.3 C bit"),
            (_stage, _II.RX_STAY): Transition(_IA.CONTINUE, _stage, "6.3 stay in stage"),
            (_stage, _II.RX_TRANSIT_FFP): Transition(_IA.COMPLETE, _I.S5_LOGGED_IN, "T5"),
            (_stage, _II.RX_REDIRECT): Transition(_IA.REDIRECT, _I.S1_FREE, "T7"),
            (_stage, _II.RX_FAILURE): Transition(_IA.FAIL, _I.S1_FREE, "T7"),
            (_stage, _II.TRANSPORT_CLOSED): Transition(_IA.FAIL, _I.S1_FREE, "T7"),
            (_stage, _II.TIMEOUT): Transition(_IA.FAIL, _I.S1_FREE, "T7"),
        }
    )
INITIATOR_TRANSITIONS[(_I.S4_IN_LOGIN_SECURITY, _II.RX_TRANSIT_OPERATIONAL)] = Transition(
    _IA.ENTER_OPERATIONAL, _I.S4_IN_LOGIN_OPERATIONAL, "6.3 security -> operational"
)

_INITIATOR_STAGE = {
    _I.S4_IN_LOGIN_SECURITY: SECURITY,
    _I.S4_IN_LOGIN_OPERATIONAL: OPERATIONAL,
}


def _status_name(status: int) -> str:
    try:
        return LoginStatus(status).name
    except ValueError:
        return f"status {status:#06x}"


class InitiatorLogin:
    """Initiator side of one connection's login, sans-IO.

    ``keys`` are our operational values (offered in the operational stage and used to
    answer the target); ``chap`` enables CHAP (AuthMethod=CHAP); ``auth_methods``
    overrides the AuthMethod offer.  ``tsih`` non-zero adds a connection to a
    session.  ``start_stage`` defaults to security when authenticating, else
    operational; ``skip_operational`` asks to go from security straight to full
    feature phase.  ``pairs_hook(stage, pairs)`` and ``request_hook(request)`` may
    rewrite what is sent, to produce illegal logins on purpose.

    Use: ``start()`` then feed each Login Response to ``receive_pdu``; send what
    ``data_to_send()`` returns after each call.  ``received`` keeps the target's
    pairs (reassembled), for reports and for adapters that hand them on.
    """

    def __init__(
        self,
        initiator_name: str,
        target_name: str | None,
        session_type: str = "Normal",
        isid: int = 0,
        tsih: int = 0,
        cid: int = 0,
        keys: Mapping[str, str] | None = None,
        *,
        chap: ChapClient | None = None,
        rng: Rng | None = None,
        initiator_alias: str | None = None,
        auth_methods: Iterable[str] | None = None,
        itt: int = 0,
        cmdsn: int = 0,
        expstatsn: int = 0,
        session: NegotiatedParameters | None = None,
        start_stage: LoginStage | None = None,
        skip_operational: bool = False,
        max_segment: int = LOGIN_SEGMENT,
        pairs_hook: Callable[[LoginStage, list[Pair]], list[Pair]] | None = None,
        request_hook: Callable[[LoginRequest], LoginRequest] | None = None,
    ) -> None:
        self.initiator_name = initiator_name
        self.target_name = target_name
        self.session_type = session_type
        self.isid = isid
        self.tsih = tsih
        self.cid = cid
        self.itt = itt
        self.cmdsn = cmdsn
        self.expstatsn = expstatsn
        self.chap = chap
        self.rng = rng
        self.leading = tsih == 0
        self.skip_operational = skip_operational
        self.max_segment = max_segment
        self.pairs_hook = pairs_hook
        self.request_hook = request_hook
        methods = (
            list(auth_methods)
            if auth_methods is not None
            else (["CHAP"] if chap is not None else ["None"])
        )
        self.auth_methods = methods
        local = dict(keys or {})
        local["InitiatorName"] = initiator_name
        if target_name is not None:
            local["TargetName"] = target_name
        local["SessionType"] = session_type
        if initiator_alias is not None:
            local["InitiatorAlias"] = initiator_alias
        local["AuthMethod"] = ",".join(methods)
        self.negotiator = Negotiator(
            Role.INITIATOR, local, session_type, leading=self.leading, session=session
        )
        if start_stage is None:
            start_stage = SECURITY if methods != ["None"] else OPERATIONAL
        self.start_stage = LoginStage(start_stage)
        self.state = InitiatorState.S1_FREE
        self.history: list[tuple[InitiatorState, InitiatorInput, Transition]] = []
        self.warnings: list[str] = []
        self.error: ProtocolError | None = None
        #: Every key=value the target sent, in order, once each LTDS was complete.
        self.received: list[Pair] = []
        self._outbox: list[LoginRequest] = []
        self._assembler = text.TextAssembler()
        self._chunks: list[bytes] = []  # rest of an LTDS we are sending with C=1
        self._last: LoginRequest | None = None
        self._awaiting = False
        self._declared_names = False
        self._intent: tuple[bool, int] = (False, 0)  # T and NSG of the LTDS being sent

    # ------------------------------------------------------------------ driving

    def data_to_send(self) -> list[LoginRequest]:
        """Requests to send, in order (drained)."""
        out, self._outbox = self._outbox, []
        return out

    def start(self) -> list[LoginRequest]:
        """The transport is up: T1 then T4, queue the first Login Request."""
        self._step(InitiatorInput.CONNECT, None)
        first = (
            InitiatorInput.CONNECTED_SECURITY
            if self.start_stage is SECURITY
            else InitiatorInput.CONNECTED_OPERATIONAL
        )
        self._step(first, None)
        return self.data_to_send()

    def connection_lost(self) -> list[Event]:
        """The transport closed under us."""
        return self._step(InitiatorInput.TRANSPORT_CLOSED, None)

    def timed_out(self) -> list[Event]:
        """The caller's login timer fired."""
        return self._step(InitiatorInput.TIMEOUT, None)

    def receive_pdu(self, pdu: PDU) -> list[Event]:
        """Consume one PDU from the target; return events."""
        return self._step(self.classify(pdu), pdu)

    @property
    def stage(self) -> LoginStage | None:
        """The login stage of the current state (None outside IN_LOGIN)."""
        return _INITIATOR_STAGE.get(self.state)

    def classify(self, pdu: PDU) -> InitiatorInput:
        """Reduce a received PDU to a table input (RFC 7143 11.13 rules)."""
        req = self._last
        if not isinstance(pdu, LoginResponse) or req is None or not self._awaiting:
            return InitiatorInput.RX_UNEXPECTED
        # A response that ends the login (T7) is taken for its status even when it
        # does not echo our ISID/ITT (tgt 1.0.85 zeroes the ISID of error responses):
        # the login is over either way and the status is what matters; the mismatch
        # is kept in ``warnings`` (see _check_echo).
        if pdu.status_class == 1:
            return InitiatorInput.RX_REDIRECT
        if pdu.status_class != 0:
            return InitiatorInput.RX_FAILURE
        if pdu.isid != req.isid or pdu.itt != req.itt:
            return InitiatorInput.RX_WRONG_TASK
        if not req.version_min <= pdu.version_active <= req.version_max:
            return InitiatorInput.RX_BAD_VERSION
        if pdu.transit and pdu.cont:
            return InitiatorInput.RX_T_AND_C
        if pdu.csg != req.csg:
            return InitiatorInput.RX_STAGE_MISMATCH
        if pdu.cont:
            return InitiatorInput.RX_PARTIAL
        if not pdu.transit:
            return InitiatorInput.RX_STAY
        if not req.transit:
            # RFC 7143 11.13.3: T=1 only if the request had T=1.
            return InitiatorInput.RX_UNREQUESTED_TRANSIT
        if pdu.nsg <= pdu.csg or pdu.nsg == 2:
            return InitiatorInput.RX_BAD_NSG
        if pdu.nsg > req.nsg:
            return InitiatorInput.RX_NSG_BEYOND_REQUEST
        if pdu.nsg == OPERATIONAL:
            return InitiatorInput.RX_TRANSIT_OPERATIONAL
        return InitiatorInput.RX_TRANSIT_FFP

    # ------------------------------------------------------------------ machinery

    def _step(self, inp: InitiatorInput, pdu: PDU | None) -> list[Event]:
        entry = INITIATOR_TRANSITIONS.get((self.state, inp))
        if entry is None:
            return self._protocol_error(
                LoginError(
                    f"{inp.value} in state {self.state.name}",
                    section="RFC 7143 8.1.3, 11.13",
                    login_status=LoginStatus.INITIATOR_ERROR,
                )
            )
        self.history.append((self.state, inp, entry))
        self._awaiting = False
        prior = self.state
        self.state = entry.next_state  # type: ignore[assignment]
        try:
            return self._perform(entry.action, prior, pdu)  # type: ignore[arg-type]
        except ProtocolError as exc:
            return self._protocol_error(exc)

    def _protocol_error(self, exc: ProtocolError) -> list[Event]:
        # The initiator cannot answer with a status: it drops the connection.
        self.error = exc
        self.state = InitiatorState.S1_FREE
        self._outbox.clear()
        return [LoginFailed(None, str(exc), exc)]

    def _perform(
        self, action: InitiatorAction, prior: InitiatorState, pdu: PDU | None
    ) -> list[Event]:
        rsp = pdu if isinstance(pdu, LoginResponse) else None
        if rsp is not None:
            self.expstatsn = (rsp.statsn + 1) & 0xFFFFFFFF
        if action is InitiatorAction.NONE:
            return []
        if action is InitiatorAction.FAIL:
            if rsp is None:
                return [LoginFailed(None, "transport closed or login timed out")]
            self._check_echo(rsp)
            return [LoginFailed(rsp.status, _status_name(rsp.status))]
        if action is InitiatorAction.REDIRECT:
            assert rsp is not None
            self._check_echo(rsp)
            return [self._redirect(rsp)]
        if action is InitiatorAction.SEND_FIRST:
            self._send_first()
            return []
        assert rsp is not None
        if action is InitiatorAction.SEND_EMPTY:
            self._assembler.feed(rsp.data, True)
            last = self._last
            assert last is not None
            self._send(replace(last, cont=False, data=b""), hooked=False)
            return []
        pairs = self._assembler.feed(rsp.data, False) or []
        self.received += pairs
        if action is InitiatorAction.CONTINUE and self._chunks:
            self._send_chunk(self._intent)
            return []
        answers = self._absorb(pairs, _INITIATOR_STAGE[prior])
        if action is InitiatorAction.CONTINUE:
            self._continue(answers)
            return []
        if action is InitiatorAction.ENTER_OPERATIONAL:
            self._check_authenticated()
            self.negotiator.stage = OPERATIONAL
            self._send_first()
            return []
        # COMPLETE (T5)
        if answers:
            raise NegotiationError(
                "the final Login Response carries keys that need an answer",
                section="RFC 7143 11.13.3",
            )
        self._check_authenticated()
        return [self._complete(rsp)]

    def _check_echo(self, rsp: LoginResponse) -> None:
        """Note a final response that does not echo our ISID and ITT (RFC 7143 11.13)."""
        req = self._last
        assert req is not None
        if rsp.isid != req.isid or rsp.itt != req.itt:
            self.warnings.append(
                f"Login Response with status {rsp.status:#06x} has ISID {rsp.isid:#014x} "
                f"ITT {rsp.itt:#010x}, not ours {req.isid:#014x} {req.itt:#010x} "
                "(RFC 7143 11.13)"
            )

    def _redirect(self, rsp: LoginResponse) -> Event:
        pairs = dict(text.parse_pairs(rsp.data)) if rsp.data else {}
        address = pairs.get("TargetAddress")
        if not address:
            raise LoginError("redirection without TargetAddress", section="RFC 7143 11.13.5")
        return LoginRedirected(address, rsp.status_detail == 0x02, rsp.status)

    def _absorb(self, pairs: list[Pair], stage: LoginStage) -> list[Pair]:
        """Run received pairs through the negotiator and CHAP; return our answers."""
        chap_pairs = {k: v for k, v in pairs if k in CHAP_KEYS}
        others = [(k, v) for k, v in pairs if k not in CHAP_KEYS]
        if chap_pairs and stage is not SECURITY:
            raise NegotiationError(
                "CHAP keys outside the security stage", section="RFC 7143 12.1.3"
            )
        self.negotiator.stage = stage
        answers = self.negotiator.respond(others)
        if stage is SECURITY and self.negotiator.values.get("AuthMethod") == "CHAP":
            if self.chap is None:
                raise AuthenticationError("target chose CHAP but we have no CHAP credentials")
            if self.chap.state.name == "START":
                answers += self.chap.start()
            elif not self.chap.done:
                answers += self.chap.receive(chap_pairs)
        elif chap_pairs:
            raise AuthenticationError("CHAP keys although CHAP was not agreed")
        method = self.negotiator.values.get("AuthMethod", "None")
        if method not in ("None", "CHAP"):
            raise AuthenticationError(f"AuthMethod {method} is not implemented here")
        if stage is SECURITY and self.negotiator.special_answers.get("AuthMethod") == "Reject":
            raise AuthenticationError(
                "target rejected every AuthMethod we offered",
                login_status=LoginStatus.AUTH_FAILURE,
            )
        return answers

    def _check_authenticated(self) -> None:
        method = self.negotiator.values.get("AuthMethod", "None")
        if method == "CHAP" and (self.chap is None or not self.chap.done):
            if self.chap is not None and self.chap.state.name == "WAIT_CONFIRM":
                self.chap.receive({})  # one-way CHAP ends here; mutual raises
            else:
                raise AuthenticationError("the target left security before CHAP completed")

    def _security_ready(self) -> bool:
        """True when we may ask to leave the security stage."""
        method = self.negotiator.values.get("AuthMethod")
        if method == "CHAP":
            assert self.chap is not None
            return self.chap.state.name in ("WAIT_CONFIRM", "DONE")
        if method == "None":
            return True
        return self.auth_methods == ["None"]

    def _next_stage(self, stage: LoginStage) -> LoginStage:
        if stage is SECURITY and not self.skip_operational:
            return OPERATIONAL
        return FULL_FEATURE

    def _send_first(self) -> None:
        stage = self.stage
        assert stage is not None
        self.negotiator.stage = stage
        pairs: list[Pair] = []
        if not self._declared_names:
            names = ["InitiatorName"]
            if self.target_name is not None:
                names.append("TargetName")
            if self.leading:
                names.append("SessionType")
            if "InitiatorAlias" in self.negotiator.local:
                names.append("InitiatorAlias")
            pairs += self.negotiator.offer(names)
            self._declared_names = True
        if stage is SECURITY:
            pairs += self.negotiator.offer(["AuthMethod"])
            transit = self._security_ready()
        else:
            pairs += self.negotiator.offer()  # every local key usable in this stage
            transit = True
        self._send_pairs(stage, pairs, transit, self._next_stage(stage))

    def _continue(self, answers: list[Pair]) -> None:
        stage = self.stage
        assert stage is not None
        if stage is SECURITY:
            transit = self._security_ready()
        else:
            answers += self.negotiator.offer()
            transit = True
        self._send_pairs(stage, answers, transit, self._next_stage(stage))

    def _send_pairs(
        self, stage: LoginStage, pairs: list[Pair], transit: bool, nsg: LoginStage
    ) -> None:
        if self.pairs_hook is not None:
            pairs = self.pairs_hook(stage, pairs)
        data = text.format_pairs(pairs, strict=False)
        self._chunks = text.split_segments(data, self.max_segment)
        self._intent = (transit, int(nsg))
        self._send_chunk(self._intent, stage=stage)

    def _send_chunk(self, intent: tuple[bool, int], stage: LoginStage | None = None) -> None:
        chunk = self._chunks.pop(0)
        more = bool(self._chunks)
        transit, nsg = intent
        csg = stage if stage is not None else self.stage
        assert csg is not None
        req = LoginRequest(
            transit=transit and not more,
            cont=more,
            csg=int(csg),
            nsg=nsg if transit and not more else 0,
            version_max=VERSION,
            version_min=VERSION,
            isid=self.isid,
            tsih=self.tsih,
            itt=self.itt,
            cid=self.cid,
            cmdsn=self.cmdsn,
            expstatsn=self.expstatsn,
            data=chunk,
        )
        self._send(req)

    def _send(self, req: LoginRequest, *, hooked: bool = True) -> None:
        if hooked and self.request_hook is not None:
            req = self.request_hook(req)
        self._last = req
        self._awaiting = True
        self._outbox.append(req)

    def _complete(self, rsp: LoginResponse) -> LoginCompleted:
        if self.leading and rsp.tsih == 0:
            raise LoginError(
                "the final response of a leading login has TSIH 0", section="RFC 7143 11.13.4"
            )
        if not self.leading and rsp.tsih != self.tsih:
            raise LoginError(
                f"TSIH {rsp.tsih} differs from the session's {self.tsih}",
                section="RFC 7143 11.13.4",
            )
        unanswered = self.negotiator.unanswered()
        if unanswered:
            self.warnings.append(f"keys left unanswered, defaults apply: {unanswered}")
        params = self.negotiator.result()
        self.tsih = rsp.tsih
        return LoginCompleted(
            parameters=params,
            tsih=rsp.tsih,
            isid=self.isid,
            cid=self.cid,
            initiator_name=self.initiator_name,
            target_name=self.target_name,
            session_type=self.session_type,
            leading=self.leading,
            statsn=rsp.statsn,
            cmdsn=self.cmdsn,
            expcmdsn=rsp.expcmdsn,
            maxcmdsn=rsp.maxcmdsn,
            authenticated_as=self.chap.target.name if self.chap and self.chap.target else None,
        )


# --------------------------------------------------------------------------- target


@dataclass
class ChapTargetAuth:
    """CHAP configuration of a target (or of discovery).

    ``secrets`` maps initiator CHAP names to secrets; ``credentials`` is the target's
    own name and secret for mutual CHAP.  ``allow_none`` also accepts AuthMethod=None.
    """

    secrets: Mapping[str, bytes] = field(repr=False, default_factory=dict)
    credentials: ChapCredentials | None = None
    require_mutual: bool = False
    algorithms: tuple[ChapAlgorithm, ...] = DEFAULT_ALGORITHMS
    policy: ChapPolicy = field(default_factory=ChapPolicy)
    allow_none: bool = False


@dataclass
class TargetNode:
    """What the login needs to know about one target name."""

    name: str
    alias: str | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    chap: ChapTargetAuth | None = None
    redirect: str | None = None
    redirect_permanent: bool = False
    removed: bool = False
    allow: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class ExistingSession:
    """A live session, as the target's session table describes it."""

    tsih: int
    initiator_name: str
    isid: int
    target_name: str | None
    session_type: str
    parameters: NegotiatedParameters
    cids: frozenset[int] = frozenset()


@dataclass
class TargetLoginConfig:
    """Callbacks and policy for :class:`TargetLogin`.

    ``lookup_target(name)`` gives the TargetNode or None (status 0x0203).
    ``find_session(tsih)`` and ``find_session_by_isid(initiator_name, isid,
    target_name)`` query the session table; ``allocate_tsih()`` returns a fresh
    non-zero TSIH.  ``keys`` are portal-wide local values (a node's keys override).
    """

    lookup_target: Callable[[str], TargetNode | None]
    allocate_tsih: Callable[[], int]
    find_session: Callable[[int], ExistingSession | None] = lambda _tsih: None
    find_session_by_isid: Callable[[str, int, str | None], ExistingSession | None] = (
        lambda _name, _isid, _target: None
    )
    portal_group_tag: int = 1
    keys: Mapping[str, str] = field(default_factory=dict)
    discovery: bool = True
    discovery_chap: ChapTargetAuth | None = None
    cmd_window: int = 32


class TargetState(enum.Enum):
    """Target connection states (RFC 7143 8.1.1), IN_LOGIN split by stage."""

    S1_FREE = "S1"
    S3_XPT_UP = "S3"
    S4_IN_LOGIN_SECURITY = "S4/security"
    S4_IN_LOGIN_OPERATIONAL = "S4/operational"
    S5_LOGGED_IN = "S5"


class TargetInput(enum.Enum):
    """Classified requests (RX_*), our decided responses (TX_*), transport events."""

    TRANSPORT_CLOSED = "transport closed"
    TIMEOUT = "login timed out"
    RX_FIRST_SECURITY = "first request, CSG=0"
    RX_FIRST_OPERATIONAL = "first request, CSG=1"
    RX_PARTIAL = "request with C=1"
    RX_STAY = "request with T=0"
    RX_TRANSIT_OPERATIONAL = "request with T=1, NSG=1"
    RX_TRANSIT_FFP = "request with T=1, NSG=3"
    # Malformed shapes: in no table, so always answered with a Login status.
    RX_T_AND_C = "request with T=1 and C=1"
    RX_STAGE_MISMATCH = "CSG differs from the current stage"
    RX_BAD_STAGE = "CSG is full feature phase or reserved"
    RX_BAD_NSG = "T=1 with NSG not forward or reserved"
    RX_NOT_LOGIN = "not a Login Request"
    TX_STAY = "respond T=0"
    TX_TRANSIT_OPERATIONAL = "respond T=1, NSG=1"
    TX_FINAL = "final response, status 0"
    TX_REJECT = "response with a non-zero status"


class TargetAction(enum.Enum):
    """Target side effects."""

    NONE = "nothing"
    BEGIN = "check the first request, then handle it in its stage"
    ACK_PARTIAL = "answer a C=1 request with an empty response"
    NEGOTIATE = "process keys and decide the response"


_T = TargetState
_TI = TargetInput
_TA = TargetAction

TARGET_TRANSITIONS: dict[tuple[TargetState, TargetInput], Transition] = {
    (_T.S3_XPT_UP, _TI.RX_FIRST_SECURITY): Transition(_TA.BEGIN, _T.S4_IN_LOGIN_SECURITY, "T4"),
    (_T.S3_XPT_UP, _TI.RX_FIRST_OPERATIONAL): Transition(
        _TA.BEGIN, _T.S4_IN_LOGIN_OPERATIONAL, "T4"
    ),
    (_T.S3_XPT_UP, _TI.RX_PARTIAL): Transition(_TA.ACK_PARTIAL, _T.S3_XPT_UP, "6.3 C bit"),
    (_T.S3_XPT_UP, _TI.TX_STAY): Transition(_TA.NONE, _T.S3_XPT_UP, "6.3 C bit"),
    (_T.S3_XPT_UP, _TI.TRANSPORT_CLOSED): Transition(_TA.NONE, _T.S1_FREE, "T6"),
    (_T.S3_XPT_UP, _TI.TIMEOUT): Transition(_TA.NONE, _T.S1_FREE, "T6"),
    (_T.S3_XPT_UP, _TI.TX_REJECT): Transition(_TA.NONE, _T.S1_FREE, "T7"),
}
for _tstage in (_T.S4_IN_LOGIN_SECURITY, _T.S4_IN_LOGIN_OPERATIONAL):
    TARGET_TRANSITIONS.update(
        {
            (_tstage, _TI.RX_PARTIAL): Transition(_TA.ACK_PARTIAL, _tstage, "6.3 C bit"),
            (_tstage, _TI.RX_STAY): Transition(_TA.NEGOTIATE, _tstage, "6.3 stay"),
            (_tstage, _TI.RX_TRANSIT_FFP): Transition(_TA.NEGOTIATE, _tstage, "6.3 transit"),
            (_tstage, _TI.TX_STAY): Transition(_TA.NONE, _tstage, "6.3 stay"),
            (_tstage, _TI.TX_FINAL): Transition(_TA.NONE, _T.S5_LOGGED_IN, "T5"),
            (_tstage, _TI.TX_REJECT): Transition(_TA.NONE, _T.S1_FREE, "T7"),
            (_tstage, _TI.TRANSPORT_CLOSED): Transition(_TA.NONE, _T.S1_FREE, "T7"),
            (_tstage, _TI.TIMEOUT): Transition(_TA.NONE, _T.S1_FREE, "T7"),
        }
    )
TARGET_TRANSITIONS[(_T.S4_IN_LOGIN_SECURITY, _TI.RX_TRANSIT_OPERATIONAL)] = Transition(
    _TA.NEGOTIATE, _T.S4_IN_LOGIN_SECURITY, "6.3 transit"
)
TARGET_TRANSITIONS[(_T.S4_IN_LOGIN_SECURITY, _TI.TX_TRANSIT_OPERATIONAL)] = Transition(
    _TA.NONE, _T.S4_IN_LOGIN_OPERATIONAL, "6.3 security -> operational"
)

_TARGET_STAGE = {
    _T.S4_IN_LOGIN_SECURITY: SECURITY,
    _T.S4_IN_LOGIN_OPERATIONAL: OPERATIONAL,
}

# What goes on the wire for an input missing from the table (RFC 7143 11.13.5).
_TARGET_ERRORS: dict[TargetInput, tuple[LoginStatus, str]] = {
    _TI.RX_NOT_LOGIN: (LoginStatus.INVALID_DURING_LOGIN, "RFC 7143 11.13.5"),
    _TI.RX_T_AND_C: (LoginStatus.INITIATOR_ERROR, "RFC 7143 11.12.2"),
    _TI.RX_STAGE_MISMATCH: (LoginStatus.INITIATOR_ERROR, "RFC 7143 6.3"),
    _TI.RX_BAD_STAGE: (LoginStatus.INITIATOR_ERROR, "RFC 7143 11.12.3"),
    _TI.RX_BAD_NSG: (LoginStatus.INITIATOR_ERROR, "RFC 7143 6.3, 11.12.3"),
}


class TargetLogin:
    """Target side of one connection's login, sans-IO.

    Starts in S3 XPT_UP (the transport is connected).  ``statsn`` is the StatSN of
    the first response; ``rng`` feeds CHAP challenges.  Feed each received PDU to
    ``receive_pdu``; send ``data_to_send()``; on LoginFailed close the connection
    after sending; on LoginCompleted hand the connection to full feature phase.
    """

    def __init__(self, config: TargetLoginConfig, *, rng: Rng, statsn: int = 0) -> None:
        self.config = config
        self.rng = rng
        self.statsn = statsn
        self.state = TargetState.S3_XPT_UP
        self.history: list[tuple[TargetState, TargetInput, Transition]] = []
        self.negotiator: Negotiator | None = None
        self.authenticator: ChapAuthenticator | None = None
        self.node: TargetNode | None = None
        self.session: ExistingSession | None = None
        self.reinstates: ExistingSession | None = None
        self.first: LoginRequest | None = None
        self.initiator_name = ""
        self.target_name: str | None = None
        self.session_type = "Normal"
        self.error: ProtocolError | None = None
        self._auth_chap: ChapTargetAuth | None = None
        self._outbox: list[LoginResponse] = []
        self._assembler = text.TextAssembler()
        self._chunks: list[bytes] = []
        self._plan: tuple[bool, int] = (False, 0)
        self._declared_first = False

    # ------------------------------------------------------------------ driving

    def data_to_send(self) -> list[LoginResponse]:
        """Responses to send, in order (drained)."""
        out, self._outbox = self._outbox, []
        return out

    @property
    def stage(self) -> LoginStage | None:
        """The login stage of the current state (None outside IN_LOGIN)."""
        return _TARGET_STAGE.get(self.state)

    def connection_lost(self) -> list[Event]:
        """The transport closed."""
        return self._dispatch(TargetInput.TRANSPORT_CLOSED, None)

    def timed_out(self) -> list[Event]:
        """The caller's login timer fired."""
        return self._dispatch(TargetInput.TIMEOUT, None)

    def receive_pdu(self, pdu: PDU) -> list[Event]:
        """Consume one PDU from the initiator; return events."""
        return self._dispatch(self.classify(pdu), pdu)

    def classify(self, pdu: PDU) -> TargetInput:
        """Reduce a received PDU to a table input (RFC 7143 11.12 rules)."""
        if not isinstance(pdu, LoginRequest):
            return TargetInput.RX_NOT_LOGIN
        if pdu.transit and pdu.cont:
            return TargetInput.RX_T_AND_C
        if self.state is TargetState.S3_XPT_UP:
            if pdu.cont and pdu.csg in (SECURITY, OPERATIONAL):
                return TargetInput.RX_PARTIAL
            if pdu.csg == SECURITY:
                return TargetInput.RX_FIRST_SECURITY
            if pdu.csg == OPERATIONAL:
                return TargetInput.RX_FIRST_OPERATIONAL
            return TargetInput.RX_BAD_STAGE
        if pdu.csg not in (SECURITY, OPERATIONAL):
            return TargetInput.RX_BAD_STAGE
        if self.stage is not None and pdu.csg != self.stage:
            return TargetInput.RX_STAGE_MISMATCH
        if pdu.cont:
            return TargetInput.RX_PARTIAL
        if not pdu.transit:
            return TargetInput.RX_STAY
        if pdu.nsg <= pdu.csg or pdu.nsg == 2:
            return TargetInput.RX_BAD_NSG
        if pdu.nsg == OPERATIONAL:
            return TargetInput.RX_TRANSIT_OPERATIONAL
        return TargetInput.RX_TRANSIT_FFP

    # ------------------------------------------------------------------ machinery

    def _lookup(self, inp: TargetInput) -> Transition | None:
        entry = TARGET_TRANSITIONS.get((self.state, inp))
        if entry is not None:
            self.history.append((self.state, inp, entry))
        return entry

    def _dispatch(self, inp: TargetInput, pdu: PDU | None) -> list[Event]:
        entry = self._lookup(inp)
        if entry is None:
            status, section = _TARGET_ERRORS.get(
                inp, (LoginStatus.INITIATOR_ERROR, "RFC 7143 8.1.3")
            )
            if self.state in (TargetState.S1_FREE, TargetState.S5_LOGGED_IN):
                # No login in progress: nothing to answer with a Login status.
                exc = LoginError(
                    f"{inp.value} in state {self.state.name}", section=section, login_status=status
                )
                self.error = exc
                return [LoginFailed(None, str(exc), exc)]
            return self._reject(
                LoginError(
                    f"{inp.value} in state {self.state.name}", section=section, login_status=status
                ),
                pdu,
            )
        prior = self.state
        self.state = entry.next_state  # type: ignore[assignment]
        if entry.action is TargetAction.NONE:
            if inp in (TargetInput.TRANSPORT_CLOSED, TargetInput.TIMEOUT):
                return [LoginFailed(None, inp.value)]
            return []
        assert isinstance(pdu, LoginRequest)
        try:
            if entry.action is TargetAction.BEGIN:
                early = self._begin(pdu)
                if early is not None:
                    return early
                return self._dispatch(self.classify(pdu), pdu)
            if self.first is None:
                self.first = pdu
            self._check_consistent(pdu)
            if entry.action is TargetAction.ACK_PARTIAL:
                self._assembler.feed(pdu.data, True)
                self._respond(pdu, b"", transit=False, nsg=0, cont=False)
                return []
            return self._negotiate(pdu, prior)
        except ProtocolError as exc:
            return self._reject(exc, pdu)

    def _reject(self, exc: ProtocolError, pdu: PDU | None, *, data: bytes = b"") -> list[Event]:
        status = getattr(exc, "login_status", LoginStatus.INITIATOR_ERROR)
        self.error = exc
        req = pdu if isinstance(pdu, LoginRequest) else None
        self._chunks = []
        self._outbox.append(self._error_response(req, status, data))
        entry = self._lookup(TargetInput.TX_REJECT)
        self.state = entry.next_state if entry else TargetState.S1_FREE  # type: ignore[assignment]
        return [LoginFailed(status, str(exc), exc)]

    def _error_response(self, req: LoginRequest | None, status: int, data: bytes) -> LoginResponse:
        stage = self.stage if self.stage is not None else SECURITY
        return LoginResponse(
            csg=int(req.csg if req is not None and req.csg in (0, 1) else stage),
            version_max=VERSION,
            version_active=VERSION,
            isid=req.isid if req else 0,
            tsih=req.tsih if req else 0,
            itt=req.itt if req else 0,
            statsn=self.statsn,
            expcmdsn=req.cmdsn if req else 0,
            maxcmdsn=((req.cmdsn if req else 0) + self.config.cmd_window - 1) & 0xFFFFFFFF,
            status_class=status >> 8,
            status_detail=status & 0xFF,
            data=data,
        )

    def _fail(self, status: LoginStatus, message: str, section: str) -> LoginError:
        return LoginError(message, section=section, login_status=status)

    # ------------------------------------------------------------------ first request

    def _begin(self, req: LoginRequest) -> list[Event] | None:
        """T4: check the first request; return events if it ends the login at once."""
        if self.first is None:
            self.first = req
        self._check_consistent(req)
        if req.version_min > VERSION or req.version_max < req.version_min:
            raise self._fail(
                LoginStatus.UNSUPPORTED_VERSION,
                f"versions {req.version_min}..{req.version_max} exclude 0",
                "RFC 7143 11.12.4",
            )
        if isid_type(req.isid) is IsidType.RESERVED:
            raise self._fail(
                LoginStatus.INITIATOR_ERROR, "ISID type 11b is reserved", "RFC 7143 11.12.5"
            )
        # The first LTDS is complete here (C=1 pieces were acknowledged in S3).
        pairs = dict(self._assembler.peek(req.data))
        name = pairs.get("InitiatorName")
        if not name:
            raise self._fail(
                LoginStatus.MISSING_PARAMETER, "InitiatorName missing", "RFC 7143 6.3, 13.5"
            )
        self.initiator_name = name
        session_type = pairs.get("SessionType", "Normal")
        if session_type not in ("Normal", "Discovery"):
            raise self._fail(
                LoginStatus.SESSION_TYPE_NOT_SUPPORTED,
                f"SessionType={session_type}",
                "RFC 7143 13.21",
            )
        self.target_name = pairs.get("TargetName")
        cfg = self.config
        local: dict[str, str] = dict(cfg.keys)
        if req.tsih:
            existing = cfg.find_session(req.tsih)
            if existing is None or existing.initiator_name != name or existing.isid != req.isid:
                raise self._fail(
                    LoginStatus.SESSION_DOES_NOT_EXIST,
                    f"no session with TSIH {req.tsih} for this I_T nexus",
                    "RFC 7143 11.13.5",
                )
            session_type = existing.session_type
            if session_type == "Discovery":
                raise self._fail(
                    LoginStatus.CANT_INCLUDE_IN_SESSION,
                    "a Discovery session has one connection",
                    "RFC 7143 13.2",
                )
            if self.target_name is None:
                self.target_name = existing.target_name
            if req.cid not in existing.cids and (
                len(existing.cids) >= existing.parameters.max_connections
            ):
                raise self._fail(
                    LoginStatus.TOO_MANY_CONNECTIONS,
                    f"MaxConnections={existing.parameters.max_connections} reached",
                    "RFC 7143 13.2",
                )
            self.session = existing
        self.session_type = session_type
        auth: ChapTargetAuth | None
        if session_type == "Discovery":
            if not cfg.discovery:
                raise self._fail(
                    LoginStatus.SESSION_TYPE_NOT_SUPPORTED,
                    "discovery sessions are disabled",
                    "RFC 7143 11.13.5",
                )
            auth = cfg.discovery_chap
        else:
            if not self.target_name:
                raise self._fail(
                    LoginStatus.MISSING_PARAMETER, "TargetName missing", "RFC 7143 6.3, 13.4"
                )
            node = cfg.lookup_target(self.target_name)
            if node is None:
                raise self._fail(
                    LoginStatus.NOT_FOUND, f"no target {self.target_name}", "RFC 7143 11.13.5"
                )
            if node.redirect is not None:
                return self._redirect(req, node)
            if node.removed:
                raise self._fail(LoginStatus.TARGET_REMOVED, "target removed", "RFC 7143 11.13.5")
            if node.allow is not None and not node.allow(name):
                raise self._fail(
                    LoginStatus.AUTHORIZATION_FAILURE,
                    f"{name} may not log in to {node.name}",
                    "RFC 7143 11.13.5",
                )
            self.node = node
            local.update(node.keys)
            auth = node.chap
            if node.alias:
                local["TargetAlias"] = node.alias
        if req.tsih == 0:
            self.reinstates = cfg.find_session_by_isid(name, req.isid, self.target_name)
        if auth is not None:
            local["AuthMethod"] = "CHAP,None" if auth.allow_none else "CHAP"
            self._auth_chap = auth
        else:
            local["AuthMethod"] = "None"
        if session_type == "Normal":
            local["TargetPortalGroupTag"] = str(cfg.portal_group_tag)
        self.negotiator = Negotiator(
            Role.TARGET,
            local,
            session_type,
            leading=req.tsih == 0,
            stage=LoginStage(req.csg),
            session=self.session.parameters if self.session else None,
        )
        if auth is not None and not auth.allow_none and req.csg != SECURITY:
            # RFC 7143 6.3 / 12: a target that requires authentication cannot let the
            # initiator start in the operational stage.
            raise self._fail(
                LoginStatus.AUTH_FAILURE,
                "authentication required but the login skipped the security stage",
                "RFC 7143 6.3, 12",
            )
        return None

    def _redirect(self, req: LoginRequest, node: TargetNode) -> list[Event]:
        assert node.redirect is not None
        status = (
            LoginStatus.TARGET_MOVED_PERMANENTLY
            if node.redirect_permanent
            else LoginStatus.TARGET_MOVED_TEMPORARILY
        )
        self._outbox.append(
            self._error_response(req, status, text.format_pairs([("TargetAddress", node.redirect)]))
        )
        entry = self._lookup(TargetInput.TX_REJECT)
        assert entry is not None
        self.state = entry.next_state  # type: ignore[assignment]
        return [LoginRedirected(node.redirect, node.redirect_permanent, status)]

    def _check_consistent(self, req: LoginRequest) -> None:
        first = self.first
        assert first is not None
        # RFC 7143 11.12: one login phase keeps its versions, ISID, TSIH, CID and CmdSN.
        for name in ("version_max", "version_min", "isid", "tsih", "cid", "cmdsn"):
            if getattr(req, name) != getattr(first, name):
                raise self._fail(
                    LoginStatus.INITIATOR_ERROR,
                    f"{name} changed during the login phase",
                    "RFC 7143 11.12",
                )

    # ------------------------------------------------------------------ negotiation

    def _negotiate(self, req: LoginRequest, prior: TargetState) -> list[Event]:
        neg = self.negotiator
        assert neg is not None
        pairs = self._assembler.feed(req.data, False) or []
        if self._chunks:
            transit, nsg = self._plan
            return self._send_planned(req, transit, nsg)
        stage = _TARGET_STAGE[prior]
        neg.stage = stage
        chap_pairs = {k: v for k, v in pairs if k in CHAP_KEYS}
        others = [(k, v) for k, v in pairs if k not in CHAP_KEYS]
        if chap_pairs and stage is not SECURITY:
            raise NegotiationError(
                "CHAP keys outside the security stage", section="RFC 7143 12.1.3"
            )
        answers = neg.respond(others)
        if not self._declared_first:
            answers += neg.offer(
                [k for k in ("TargetAlias", "TargetPortalGroupTag") if k in neg.local]
            )
            self._declared_first = True
        transit = req.transit
        if stage is SECURITY:
            answers += self._authenticate(chap_pairs)
            if transit and not self._authenticated():
                if self._auth_in_progress():
                    transit = False  # RFC 7143 6.3: stay until authentication is done
                else:
                    raise AuthenticationError(
                        "the initiator tried to leave the security stage unauthenticated"
                    )
        else:
            if "MaxRecvDataSegmentLength" not in neg.declared and "MaxRecvDataSegmentLength" in (
                neg.local
            ):
                answers += neg.offer(["MaxRecvDataSegmentLength"])
            if neg.unanswered():
                transit = False
        nsg = req.nsg if transit else 0
        data = text.format_pairs(answers)
        self._chunks = text.split_segments(data, LOGIN_SEGMENT)
        self._plan = (transit, nsg)
        return self._send_planned(req, transit, nsg)

    def _authenticate(self, chap_pairs: Mapping[str, str]) -> list[Pair]:
        neg = self.negotiator
        assert neg is not None
        method = neg.values.get("AuthMethod")
        if neg.answered.get("AuthMethod") == text.REJECT:
            raise AuthenticationError("no AuthMethod in common")
        if method == "CHAP":
            if self.authenticator is None:
                auth = self._auth_chap
                assert auth is not None
                self.authenticator = ChapAuthenticator(
                    lambda n: auth.secrets.get(n),
                    rng=self.rng,
                    algorithms=auth.algorithms,
                    credentials=auth.credentials,
                    require_mutual=auth.require_mutual,
                    policy=auth.policy,
                )
            if self.authenticator.done:
                if chap_pairs:
                    raise AuthenticationError("CHAP keys after CHAP completed")
                return []
            return self.authenticator.receive(chap_pairs)
        if chap_pairs:
            raise AuthenticationError("CHAP keys although AuthMethod=CHAP was not agreed")
        return []

    def _authenticated(self) -> bool:
        if self._auth_chap is None:
            return True
        if self.authenticator is not None:
            return self.authenticator.done
        neg = self.negotiator
        assert neg is not None
        return self._auth_chap.allow_none and neg.values.get("AuthMethod") == "None"

    def _auth_in_progress(self) -> bool:
        neg = self.negotiator
        assert neg is not None
        return neg.values.get("AuthMethod") == "CHAP"

    def _send_planned(self, req: LoginRequest, transit: bool, nsg: int) -> list[Event]:
        chunk = self._chunks.pop(0)
        more = bool(self._chunks)
        final = transit and not more and nsg == FULL_FEATURE
        events: list[Event] = []
        params: NegotiatedParameters | None = None
        tsih = req.tsih
        if final:
            assert self.negotiator is not None
            params = self.negotiator.result()
            if tsih == 0:
                tsih = self.config.allocate_tsih()
        self._respond(
            req,
            chunk,
            transit=transit and not more,
            nsg=nsg if transit and not more else 0,
            cont=more,
            tsih=tsih,
        )
        sent = self._outbox[-1]
        if more or not transit:
            inp = TargetInput.TX_STAY
        elif nsg == OPERATIONAL:
            inp = TargetInput.TX_TRANSIT_OPERATIONAL
        else:
            inp = TargetInput.TX_FINAL
        entry = self._lookup(inp)
        if entry is None:  # our own bug: we chose a response the table forbids
            raise AssertionError(f"{inp} not allowed in {self.state}")
        self.state = entry.next_state  # type: ignore[assignment]
        if inp is TargetInput.TX_TRANSIT_OPERATIONAL:
            assert self.negotiator is not None
            self.negotiator.stage = OPERATIONAL
        if params is not None:
            if self.reinstates is not None:
                events.append(
                    SessionReinstated(self.initiator_name, req.isid, self.reinstates.tsih)
                )
            if self.session is not None and req.cid in self.session.cids:
                events.append(ConnectionReinstated(tsih, req.cid))
            events.append(
                LoginCompleted(
                    parameters=params,
                    tsih=tsih,
                    isid=req.isid,
                    cid=req.cid,
                    initiator_name=self.initiator_name,
                    target_name=self.target_name,
                    session_type=self.session_type,
                    leading=req.tsih == 0,
                    statsn=sent.statsn,
                    cmdsn=req.cmdsn,
                    expcmdsn=sent.expcmdsn,
                    maxcmdsn=sent.maxcmdsn,
                    authenticated_as=self.authenticator.peer_name if self.authenticator else None,
                )
            )
        return events

    def _respond(
        self,
        req: LoginRequest,
        data: bytes,
        *,
        transit: bool,
        nsg: int,
        cont: bool,
        tsih: int | None = None,
    ) -> None:
        self._outbox.append(
            LoginResponse(
                transit=transit,
                cont=cont,
                csg=req.csg,
                nsg=nsg,
                version_max=VERSION,
                version_active=VERSION,
                isid=req.isid,
                tsih=req.tsih if tsih is None else tsih,
                itt=req.itt,
                statsn=self.statsn,
                expcmdsn=req.cmdsn,
                maxcmdsn=(req.cmdsn + self.config.cmd_window - 1) & 0xFFFFFFFF,
                data=data,
            )
        )
        # RFC 7143 11.13.4: each response after the first carries StatSN + 1.
        self.statsn = (self.statsn + 1) & 0xFFFFFFFF
