"""The target's side of the login phase, wired to the engine's sessions (sans-IO).

Theory of operation: one ``TargetLoginFlow`` per connection, fed every Login Request
(RFC 7143 6, 11.12) until the connection enters full-feature phase or the login
ends. Key negotiation is ``core.negotiation.Negotiator`` (role target); CHAP is
``core.chap``; this module makes the target's *decisions*, which need the engine:
which target is asked for and whether this initiator may see it (ACLs, portal
groups), which credentials apply (per ACL, else per target, else discovery), whether
to redirect (11.13.5 class 1), and which session the connection joins (new session,
session reinstatement for a known ISID with TSIH 0 (6.3.5), or a further connection
of an existing session with its TSIH).

This is the seam to ``core.login.TargetLogin``: the transitions here follow its
labels (T4/T5/T7 of 8.1.2); swapping in the core state machine changes this module
only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from iscsi_conformance.core import naming
from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.chap import ChapAlgorithm, ChapAuthenticator
from iscsi_conformance.core.chap import ChapCredentials as _Creds
from iscsi_conformance.core.codes import LoginStage, LoginStatus
from iscsi_conformance.core.negotiation import NegotiatedParameters, Negotiator, OutOfRange, Role
from iscsi_conformance.errors import (
    ConfigError,
    LoginError,
    NamingError,
    NegotiationError,
    ProtocolError,
)
from iscsi_conformance.target.config import ChapConfig

if TYPE_CHECKING:
    from iscsi_conformance.target.engine import Connection, Session

log = logging.getLogger("iscsi_conformance.target")

# What the reference target supports unless the configuration says otherwise.
TARGET_DEFAULTS: dict[str, str] = {
    "HeaderDigest": "None,CRC32C",
    "DataDigest": "None,CRC32C",
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "262144",
    "InitialR2T": "No",
    "ImmediateData": "Yes",
    "MaxOutstandingR2T": "8",
    "ErrorRecoveryLevel": "1",
    "MaxConnections": "4",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "20",
}
# Keys we declare ourselves (declarative, RFC 7143 13.12 / 13.6).
_DECLARE = ("MaxRecvDataSegmentLength",)
_SECURITY_KEYS = {"InitiatorName", "TargetName", "SessionType", "AuthMethod", "InitiatorAlias"}


class LoginRefused(ProtocolError):
    def __init__(self, message: str, status: int, *, section: str = "RFC 7143 11.13.5") -> None:
        super().__init__(message, section=section)
        self.status = status


class TargetLoginFlow:
    """Login of one connection, target side."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.engine = conn.engine
        self.first: P.LoginRequest | None = None
        self.stage = LoginStage.SECURITY_NEGOTIATION
        self.statsn = 0
        self.assembler = T.TextAssembler()
        self.neg: Negotiator | None = None
        self.initiator_name: str | None = None
        self.target_name: str | None = None
        self.session_type = "Normal"
        self.target = None
        self.auth_needed: ChapConfig | None = None
        self.mutual: ChapConfig | None = None
        self.auth_method: str | None = None
        self.auth_done = False
        self.chap = None  # core.chap authenticator once CHAP is chosen
        self.sent_tpgt = False
        self.existing: Session | None = None  # session this connection joins (TSIH != 0)
        self.done = False

    # ------------------------------------------------------------------ responses

    def _respond(
        self,
        req: P.LoginRequest,
        *,
        transit: bool,
        nsg: int,
        data: bytes = b"",
        status: int = 0,
        tsih: int = 0,
        cont: bool = False,
    ) -> None:
        exp = req.cmdsn
        window = self.engine.cmd_window
        if self.existing is not None:
            exp = self.existing.expcmdsn
        self.conn._emit(
            P.LoginResponse(
                transit=transit,
                cont=cont,
                csg=req.csg,
                nsg=nsg if transit else 0,
                version_max=0,
                version_active=0,
                isid=req.isid,
                tsih=tsih,
                itt=req.itt,
                statsn=self.statsn,
                expcmdsn=exp,
                maxcmdsn=(exp + window - 1) & 0xFFFFFFFF,
                status_class=status >> 8,
                status_detail=status & 0xFF,
                data=data,
            )
        )
        self.statsn = (self.statsn + 1) & 0xFFFFFFFF

    def _refuse(self, req: P.LoginRequest, status: int, data: bytes = b"") -> None:
        """Final Login Response with a non-zero status, then close (RFC 7143 6.1)."""
        self._respond(req, transit=False, nsg=0, data=data, status=status)
        self.done = True
        self.conn.close()

    def fail_initiator_error(self) -> None:
        req = self.first or P.LoginRequest()
        if not self.done:
            self._refuse(req, LoginStatus.INITIATOR_ERROR)

    # ------------------------------------------------------------------ input

    def receive(self, req: P.LoginRequest, now: float) -> None:
        if self.done:
            return
        try:
            self._receive(req)
        except _Stop:
            return
        except LoginRefused as exc:
            if self.engine.trace:
                log.info("login refused (0x%04x): %s", exc.status, exc)
            self._refuse(req, exc.status)
        except (NegotiationError, LoginError) as exc:
            if self.engine.trace:
                log.info("login failed: %s", exc)
            self._refuse(req, exc.login_status or LoginStatus.INITIATOR_ERROR)

    def _receive(self, req: P.LoginRequest) -> None:
        first = self.first
        if first is None:
            self.first = first = req
            self.statsn = req.expstatsn if req.tsih else 0
            self.conn.cid = req.cid
            if req.version_min > 0:
                # We speak version 0 only (RFC 7143 11.12.4 / 11.13.5 detail 05h).
                raise LoginRefused("unsupported version", LoginStatus.UNSUPPORTED_VERSION)
        elif (
            req.isid != first.isid
            or req.tsih != first.tsih
            or req.cid != first.cid
            or req.itt != first.itt
        ):
            # ISID, TSIH, CID and ITT stay the same for the whole login (11.12).
            raise LoginRefused("login fields changed mid-login", LoginStatus.INITIATOR_ERROR)
        if req.csg not in (0, 1):
            raise LoginRefused("CSG must be 0 or 1", LoginStatus.INITIATOR_ERROR)
        if self.neg is None:
            # The first request may skip the security stage (RFC 7143 6.3).
            self.stage = LoginStage(req.csg)
        elif req.csg != self.stage:
            # A stage changes only after our response agreed to the transit (8.2).
            raise LoginRefused(f"CSG {req.csg} in stage {self.stage}", LoginStatus.INITIATOR_ERROR)
        if req.transit and (req.nsg not in (1, 3) or req.nsg <= req.csg):
            raise LoginRefused("bad NSG", LoginStatus.INITIATOR_ERROR)
        if req.transit and req.cont:
            raise LoginRefused("T and C both set (RFC 7143 11.12.2)", LoginStatus.INITIATOR_ERROR)
        pairs = self.assembler.feed(req.data, req.cont)
        if pairs is None:
            # More of this request's text follows: an empty answer asks for it (6.1).
            self._respond(req, transit=False, nsg=0)
            return
        names = [k for k, _ in pairs]
        if len(set(names)) != len(names):
            # A key may appear once per negotiation step (RFC 7143 6.2).
            dup = next(k for k in names if names.count(k) > 1)
            raise LoginRefused(
                f"key {dup} sent twice", LoginStatus.INITIATOR_ERROR, section="RFC 7143 6.2"
            )
        if self.neg is None:
            self._start(req, pairs)
        neg = self.neg
        assert neg is not None
        neg.stage = LoginStage(req.csg)
        answers: list[tuple[str, str]] = []
        if req.csg == LoginStage.SECURITY_NEGOTIATION:
            answers += self._security(req, pairs)
        else:
            if self.auth_needed is not None and not self.auth_done:
                raise LoginRefused("authentication required", LoginStatus.AUTH_FAILURE)
            self.auth_done = True
        answers += neg.respond(
            [p for p in pairs if not p[0].startswith("CHAP_") and p[0] != "AuthMethod"]
        )
        if not self.sent_tpgt and self.session_type == "Normal":
            # The target reports its portal group tag in its first response (13.9).
            answers.append(("TargetPortalGroupTag", str(self.conn.portal_group)))
            self.sent_tpgt = True
        if req.csg == LoginStage.LOGIN_OPERATIONAL_NEGOTIATION:
            answers += _declare(neg)
        transit = req.transit
        if transit and req.csg == LoginStage.SECURITY_NEGOTIATION and not self.auth_done:
            transit = False  # authentication still under way: stay (8.2 T5)
        if transit and neg.unanswered():
            transit = False
        body = T.format_pairs(answers, strict=False) if answers else b""
        if len(body) > 8192:
            raise LoginRefused("login response too long", LoginStatus.OUT_OF_RESOURCES)
        if transit and req.nsg == LoginStage.FULL_FEATURE_PHASE:
            if req.csg == LoginStage.SECURITY_NEGOTIATION:
                neg.stage = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
                body_extra = T.format_pairs(_declare(neg), strict=False)
                body += body_extra
            self._complete(req, body)
            return
        if transit:
            self.stage = LoginStage(req.nsg)
        self._respond(
            req,
            transit=transit,
            nsg=req.nsg,
            data=body,
            tsih=self.existing.tsih if self.existing else 0,
        )

    # ------------------------------------------------------------------ first request

    def _start(self, req: P.LoginRequest, pairs: list[tuple[str, str]]) -> None:
        keys = dict(pairs)
        name = keys.get("InitiatorName")
        if not name:
            raise LoginRefused(
                "InitiatorName missing (RFC 7143 13.5)", LoginStatus.MISSING_PARAMETER
            )
        try:
            naming.validate(name)
        except NamingError as exc:
            # A malformed InitiatorName is an initiator error (RFC 7143 4.2.7, 13.5).
            raise LoginRefused(str(exc), LoginStatus.INITIATOR_ERROR, section=exc.section) from None
        self.initiator_name = name
        stype = keys.get("SessionType", "Normal")
        if stype not in ("Normal", "Discovery"):
            raise LoginRefused(f"SessionType {stype}", LoginStatus.SESSION_TYPE_NOT_SUPPORTED)
        self.session_type = stype
        cfg = self.engine.config
        if stype == "Discovery":
            if not cfg.discovery.enabled:
                raise LoginRefused("discovery disabled", LoginStatus.SESSION_TYPE_NOT_SUPPORTED)
            self.auth_needed = cfg.discovery.chap
            self.mutual = cfg.discovery.mutual_chap
            local = dict(TARGET_DEFAULTS)
        else:
            tname = keys.get("TargetName")
            if not tname:
                raise LoginRefused(
                    "TargetName missing (RFC 7143 13.4)", LoginStatus.MISSING_PARAMETER
                )
            target = self.engine.targets.get(tname)
            if target is None:
                # iSCSI names compare case-insensitively (RFC 3722).
                for t in self.engine.targets.values():
                    if t.config.name.lower() == tname.lower():
                        target = t
            if target is None:
                raise LoginRefused(f"no target {tname}", LoginStatus.NOT_FOUND)
            tc = target.config
            if tc.portal_groups and self.conn.portal_group not in tc.portal_groups:
                raise LoginRefused("target not on this portal group", LoginStatus.NOT_FOUND)
            if tc.redirect is not None:
                status = (
                    LoginStatus.TARGET_MOVED_PERMANENTLY
                    if tc.redirect.permanent
                    else LoginStatus.TARGET_MOVED_TEMPORARILY
                )
                addr = tc.redirect.address
                self._respond(
                    req,
                    transit=False,
                    nsg=0,
                    status=status,
                    data=T.format_pairs([("TargetAddress", addr)], strict=False),
                )
                self.done = True
                self.conn.close()
                raise _Stop
            acl = tc.acl_for(name)
            if tc.acls and acl is None:
                raise LoginRefused(f"{name} not in the ACL", LoginStatus.AUTHORIZATION_FAILURE)
            self.target = target
            self.target_name = tc.name
            self.auth_needed = (acl.chap if acl and acl.chap else None) or tc.chap
            self.mutual = (acl.mutual_chap if acl and acl.chap else None) or (
                tc.mutual_chap if not (acl and acl.chap) else None
            )
            local = dict(TARGET_DEFAULTS)
            local.update(tc.parameters)
            if tc.alias:
                local["TargetAlias"] = tc.alias
        if req.tsih:
            existing = self.engine.sessions.get(req.tsih)
            if (
                existing is None
                or existing.isid != req.isid
                or existing.initiator_name != name
                or existing.session_type.value != stype
            ):
                raise LoginRefused("no such session (TSIH)", LoginStatus.SESSION_DOES_NOT_EXIST)
            if (
                len(existing.connections) >= existing.params.max_connections
                and req.cid not in existing.connections
            ):
                raise LoginRefused("MaxConnections reached", LoginStatus.TOO_MANY_CONNECTIONS)
            self.existing = existing
            self.statsn = req.expstatsn
        try:
            self.neg = Negotiator(
                Role.TARGET,
                {k: v for k, v in local.items() if k != "TargetAlias" or stype == "Normal"},
                stype,
                leading=self.existing is None,
                session=self.existing.negotiated if self.existing else None,  # type: ignore[attr-defined]
                out_of_range=OutOfRange.REJECT,  # out-of-range offers are answered Reject (6.2.2)
                strict_stages=False,
            )
        except ConfigError as exc:  # a bad configured key: our fault, not the peer's
            log.error("bad target parameter: %s", exc)
            raise LoginRefused(str(exc), LoginStatus.TARGET_ERROR) from None

    # ------------------------------------------------------------------ security stage

    def _security(self, req: P.LoginRequest, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        keys = dict(pairs)
        if "AuthMethod" in keys:
            offered = [v.strip() for v in keys["AuthMethod"].split(",")]
            if self.auth_needed is not None:
                if "CHAP" not in offered:
                    raise LoginRefused("CHAP required", LoginStatus.AUTH_FAILURE)
                self.auth_method = "CHAP"
                out.append(("AuthMethod", "CHAP"))
                algorithms = self.target.config.chap_algorithms if self.target else (5, 6, 7, 8)
                self.chap = _authenticator(
                    self.auth_needed, self.mutual, self.engine.rng, algorithms
                )
            else:
                if "None" in offered:
                    self.auth_method = "None"
                    out.append(("AuthMethod", "None"))
                    self.auth_done = True
                else:
                    out.append(("AuthMethod", "Reject"))
                    raise LoginRefused("no acceptable AuthMethod", LoginStatus.AUTH_FAILURE)
        elif self.auth_method is None:
            if self.auth_needed is not None:
                if any(k.startswith("CHAP_") for k in keys) or req.transit:
                    raise LoginRefused("authentication required", LoginStatus.AUTH_FAILURE)
            else:
                self.auth_done = True
        chap_pairs = [(k, v) for k, v in pairs if k.startswith("CHAP_")]
        if chap_pairs:
            if self.chap is None:
                raise LoginRefused("CHAP keys without AuthMethod=CHAP", LoginStatus.INITIATOR_ERROR)
            out += self.chap.receive(dict(chap_pairs))
            if self.chap.done:
                self.auth_done = True
        return out

    # ------------------------------------------------------------------ completion

    def _complete(self, req: P.LoginRequest, body: bytes) -> None:
        """Final response with T=1, NSG=FFP: create or join the session (8.2 T5)."""
        from iscsi_conformance.target.engine import Session, SessionParams, SessionType

        neg = self.neg
        assert neg is not None
        result: NegotiatedParameters = neg.result()
        engine = self.engine
        conn = self.conn
        cap = self.target.config.max_send_data_segment_length if self.target else None
        params = SessionParams(
            header_digest=result.header_digest,
            data_digest=result.data_digest,
            max_recv_data_segment_length=result.max_recv_data_segment_length_local,
            max_send_data_segment_length=min(
                result.max_recv_data_segment_length_peer, cap or 1 << 24
            ),
            max_burst_length=result.max_burst_length,
            first_burst_length=result.first_burst_length,
            immediate_data=result.immediate_data,
            initial_r2t=result.initial_r2t,
            max_outstanding_r2t=result.max_outstanding_r2t,
            data_pdu_in_order=result.data_pdu_in_order,
            data_sequence_in_order=result.data_sequence_in_order,
            error_recovery_level=result.error_recovery_level,
            max_connections=result.max_connections,
            default_time2wait=result.default_time2wait,
            default_time2retain=result.default_time2retain,
        )
        assert self.initiator_name is not None
        if self.existing is not None:
            session = self.existing
            if session.closed:
                raise LoginRefused("session ended during login", LoginStatus.SESSION_DOES_NOT_EXIST)
            old = session.connections.get(req.cid)
            if old is not None:
                # Connection reinstatement (RFC 7143 6.3.4): the old one goes.
                old.close()
                old.session_detach()
            if session.closed:
                raise LoginRefused("session ended", LoginStatus.SESSION_DOES_NOT_EXIST)
        else:
            old_session = engine.find_session(req.isid, self.initiator_name, self.target_name)
            if old_session is not None:
                # Session reinstatement (RFC 7143 6.3.5): close the old session first.
                engine.close_session(old_session, reason="reinstated")
            if len(engine.sessions) >= engine.config.max_sessions:
                raise LoginRefused("too many sessions", LoginStatus.OUT_OF_RESOURCES)
            session = Session(
                engine,
                tsih=engine.alloc_tsih(),
                isid=req.isid,
                initiator_name=self.initiator_name,
                target=self.target,
                tpgt=conn.portal_group,
                session_type=SessionType(self.session_type),
                params=params,
                expcmdsn=req.cmdsn,
                window=engine.cmd_window,
            )
            session.negotiated = result  # type: ignore[attr-defined]
            engine.register_session(session)
        if self.existing is not None:
            # Session-wide values are the session's; connection keys are this one's.
            sp = session.params
            params.max_burst_length = sp.max_burst_length
            params.first_burst_length = sp.first_burst_length
            params.immediate_data = sp.immediate_data
            params.initial_r2t = sp.initial_r2t
            params.max_outstanding_r2t = sp.max_outstanding_r2t
            params.error_recovery_level = sp.error_recovery_level
            params.max_connections = sp.max_connections
        self._respond(
            req, transit=True, nsg=LoginStage.FULL_FEATURE_PHASE, data=body, tsih=session.tsih
        )
        self.done = True
        conn.enter_full_feature(session, params, self.statsn)
        if engine.trace:
            log.info("login complete: %r on %r", session, conn)

    # ------------------------------------------------------------------ FFP text keys

    def ffp_text_keys(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Answer the keys (other than SendTargets) of a full-feature Text Request:
        a new negotiation sequence (RFC 7143 6.4)."""
        neg = self.neg
        if neg is None:
            return [(k, T.NOT_UNDERSTOOD) for k, _ in pairs]
        neg.stage = LoginStage.FULL_FEATURE_PHASE
        neg.begin_sequence()
        rejected: list[tuple[str, str]] = []
        for _ in range(len(pairs) + 1):
            try:
                answer = neg.respond(pairs)
            except NegotiationError as exc:
                # A key that may not be negotiated now (or a bad value): Reject it and
                # answer the others.
                bad = exc.key if exc.key in {k for k, _ in pairs} else pairs[0][0]
                rejected.append((bad, T.REJECT))
                pairs = [(k, v) for k, v in pairs if k != bad]
                neg.begin_sequence()
                continue
            return rejected + answer
        return rejected


def _declare(neg: Negotiator) -> list[tuple[str, str]]:
    """Our declarative keys (MaxRecvDataSegmentLength, RFC 7143 13.12), once.

    Each side declares its own value whatever the peer declared, so this does not
    rely on the negotiator treating the peer's declaration as settling ours.
    """
    out = []
    for key in _DECLARE:
        if key in neg.declared:
            continue
        value = neg.local_value(key)
        if value is not None:
            neg.declared[key] = value
            out.append((key, value))
    return out


def _authenticator(
    one_way: ChapConfig,
    mutual: ChapConfig | None,
    rng: Callable[[int], bytes],
    algorithms: tuple[int, ...] = (5, 6, 7, 8),
) -> ChapAuthenticator:
    """CHAP authenticator for one initiator user; secrets stay out of every log."""
    user, secret = one_way.user, one_way.secret.encode()
    return ChapAuthenticator(
        lambda name: secret if name == user else None,
        rng=rng,
        algorithms=[ChapAlgorithm(a) for a in algorithms],
        credentials=_Creds(mutual.user, mutual.secret.encode()) if mutual else None,
    )


class _Stop(LoginRefused):
    """Internal: the response was already sent (redirect)."""

    def __init__(self) -> None:
        super().__init__("stop", 0)
