"""The target's side of one connection's login, sans-IO (RFC 7143 6.3, 8.1.2, 11.12, 11.13).

Theory of operation: ``TargetLogin`` walks ``states.TARGET_TRANSITIONS``.  Every
Login Request is classified; the first one (T4) is checked against the target's
policy, which the owner supplies as the callbacks of ``TargetLoginConfig``: which
target a name denotes and what it allows (``lookup_target`` gives a ``TargetNode``
with its keys, CHAP, ACL and redirection), which session a TSIH or an ISID names
(``find_session``, ``find_session_by_isid``), and a fresh TSIH.  Then each request
of a stage is negotiated (``core.negotiation``) and authenticated (``core.chap``),
and the decided answer (TX_*) goes through the table as well.  Anything the table
does not allow is answered with the Login status of ``states.TARGET_ERRORS``, or
with the status of the rule broken (``ProtocolError.login_status``), then the
login ends (T7)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from iscsi_conformance.core import naming, text
from iscsi_conformance.core.chap import (
    CHAP_KEYS,
    DEFAULT_ALGORITHMS,
    ChapAlgorithm,
    ChapAuthenticator,
    ChapCredentials,
    ChapPolicy,
)
from iscsi_conformance.core.codes import LoginStage, LoginStatus
from iscsi_conformance.core.login.events import (
    ConnectionReinstated,
    Event,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    SessionReinstated,
)
from iscsi_conformance.core.login.isid import (
    IsidType,
    isid_type,
)
from iscsi_conformance.core.login.states import (
    FULL_FEATURE,
    LOGIN_SEGMENT,
    OPERATIONAL,
    SECURITY,
    TARGET_ERRORS,
    TARGET_STAGE,
    TARGET_TRANSITIONS,
    VERSION,
    TargetAction,
    TargetInput,
    TargetState,
    Transition,
)
from iscsi_conformance.core.negotiation import NegotiatedParameters, Negotiator, Role
from iscsi_conformance.core.pdu import PDU, LoginRequest, LoginResponse
from iscsi_conformance.errors import (
    AuthenticationError,
    LoginError,
    NamingError,
    NegotiationError,
    ProtocolError,
)

Pair = tuple[str, str]
Rng = Callable[[int], bytes]


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
    #: The CmdSN window its login responses grant (RFC 7143 4.2.2.1; 0: closed,
    #: MaxCmdSN = ExpCmdSN - 1); None: the portal's ``TargetLoginConfig.cmd_window``.
    cmd_window: int | None = None


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
        return TARGET_STAGE.get(self.state)

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
            status, section = TARGET_ERRORS.get(
                inp, (LoginStatus.INITIATOR_ERROR, "RFC 7143 8.1.2")
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
        try:
            naming.validate(name)
        except NamingError as exc:
            # A malformed iSCSI name is the initiator's error (RFC 7143 4.2.7, 13.5).
            raise self._fail(LoginStatus.INITIATOR_ERROR, str(exc), exc.section) from None
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
        stage = TARGET_STAGE[prior]
        neg.stage = stage
        chap_names = [k for k, _ in pairs if k in CHAP_KEYS]
        if len(set(chap_names)) != len(chap_names):
            # The negotiator sees the other keys; CHAP keys are counted here, since a
            # key may appear once per negotiation step (RFC 7143 6.2).
            dup = next(k for k in chap_names if chap_names.count(k) > 1)
            raise NegotiationError(f"key {dup} sent twice", key=dup, section="RFC 7143 6.2")
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

    def _window(self) -> int:
        """The window the login's responses grant: the target node's, else the portal's."""
        node = self.node
        if node is not None and node.cmd_window is not None:
            return node.cmd_window
        return self.config.cmd_window

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
                maxcmdsn=(req.cmdsn + self._window() - 1) & 0xFFFFFFFF,
                data=data,
            )
        )
        # RFC 7143 11.13.4: each response after the first carries StatSN + 1.
        self.statsn = (self.statsn + 1) & 0xFFFFFFFF
