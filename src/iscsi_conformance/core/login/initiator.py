"""The initiator's side of one connection's login, sans-IO (RFC 7143 6.3, 8.1.2, 11.12).

Theory of operation: ``InitiatorLogin`` walks ``states.INITIATOR_TRANSITIONS``: each
received Login Response is classified (``classify``), looked up with the current
state, and the transition's action runs (send the next request of the stage, absorb
keys, complete, fail).  A (state, input) pair missing from the table is a protocol
error: the initiator drops the connection (LoginFailed with no status).  Keys are
negotiated by ``core.negotiation.Negotiator``, CHAP by ``core.chap.ChapClient``.

For conformance tests, ``pairs_hook`` and ``request_hook`` let a driver tamper with
what is sent (repeat keys, skip the security stage, T=1 with NSG < CSG, ...), so that
illegal logins are built from the same machine as legal ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from iscsi_conformance.core import text
from iscsi_conformance.core.chap import (
    CHAP_KEYS,
    ChapClient,
)
from iscsi_conformance.core.codes import LoginStage, LoginStatus
from iscsi_conformance.core.login.events import (
    Event,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
)
from iscsi_conformance.core.login.states import (
    FULL_FEATURE,
    INITIATOR_STAGE,
    INITIATOR_TRANSITIONS,
    LOGIN_SEGMENT,
    OPERATIONAL,
    SECURITY,
    VERSION,
    InitiatorAction,
    InitiatorInput,
    InitiatorState,
    Transition,
)
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
        return INITIATOR_STAGE.get(self.state)

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
                    section="RFC 7143 8.1.2, 11.13",
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
        answers = self._absorb(pairs, INITIATOR_STAGE[prior])
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
