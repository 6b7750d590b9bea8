"""Login through ``core.login.TargetLogin``: the engine's side of that state machine.

Theory of operation: ``CoreLoginFlow`` has the same interface as
``login_flow.TargetLoginFlow`` (``receive``, ``fail_initiator_error``, ``neg``,
``ffp_text_keys``, ``done``) but leaves the login itself - stages, transitions
(RFC 7143 8.2, T4/T5/T7), key negotiation, CHAP - to the core's transition table.
This module only answers the core's questions from the engine's configuration and
session table (which target, which credentials, which session a TSIH names) and
acts on its events: ``SessionReinstated`` closes the old session (6.3.5),
``ConnectionReinstated`` the old connection (6.3.4), ``LoginCompleted`` creates or
joins the session and moves the connection to full-feature phase.

Per-initiator decisions (ACL, per-ACL CHAP credentials) need the InitiatorName
before the core asks for the target node, so the first request's text is read
here too (RFC 7143 13.5 puts InitiatorName in the first request).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.chap import ChapAlgorithm, ChapCredentials
from iscsi_conformance.core.codes import LoginStatus
from iscsi_conformance.core.login import (
    ChapTargetAuth,
    ConnectionReinstated,
    ExistingSession,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    SessionReinstated,
    TargetLogin,
    TargetLoginConfig,
    TargetNode,
)
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.target.config import ChapConfig
from iscsi_conformance.target.login_flow import TARGET_DEFAULTS, TargetLoginFlow

if TYPE_CHECKING:
    from iscsi_conformance.target.engine import Connection, Session

log = logging.getLogger("iscsi_conformance.target")


def _auth(
    users: list[ChapConfig], mutual: ChapConfig | None, algorithms: tuple[int, ...]
) -> ChapTargetAuth | None:
    if not users:
        return None
    return ChapTargetAuth(
        secrets={u.user: u.secret.encode() for u in users},
        credentials=ChapCredentials(mutual.user, mutual.secret.encode()) if mutual else None,
        algorithms=tuple(ChapAlgorithm(a) for a in algorithms),
    )


class CoreLoginFlow:
    """The login of one connection, run by ``core.login.TargetLogin``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.engine = conn.engine
        self.done = False
        self.initiator_name: str | None = None
        disc = self.engine.config.discovery
        config = TargetLoginConfig(
            lookup_target=self._lookup_target,
            allocate_tsih=self.engine.alloc_tsih,
            find_session=self._find_session,
            find_session_by_isid=self._find_session_by_isid,
            portal_group_tag=conn.portal_group,
            keys=dict(TARGET_DEFAULTS),
            discovery=disc.enabled,
            discovery_chap=_auth([disc.chap] if disc.chap else [], disc.mutual_chap, (5, 6, 7, 8)),
            cmd_window=self.engine.cmd_window,
        )
        self.core = TargetLogin(config, rng=self.engine.rng)
        self._ffp_text = TargetLoginFlow.ffp_text_keys

    # ------------------------------------------------------------------ questions

    def _lookup_target(self, name: str) -> TargetNode | None:
        target = self.engine.targets.get(name)
        if target is None:
            for t in self.engine.targets.values():
                if t.config.name.lower() == name.lower():  # RFC 3722: case-insensitive
                    target = t
        if target is None:
            return None
        tc = target.config
        if tc.portal_groups and self.conn.portal_group not in tc.portal_groups:
            return None  # not exposed on this portal group: "not found"
        acl = tc.acl_for(self.initiator_name or "")
        if acl is not None and acl.chap is not None:
            users, mutual = [acl.chap], acl.mutual_chap
        else:
            users, mutual = ([tc.chap] if tc.chap else []), tc.mutual_chap
        keys = dict(TARGET_DEFAULTS)
        keys.update(tc.parameters)
        if tc.alias:
            keys["TargetAlias"] = tc.alias
        redirect = tc.redirect
        return TargetNode(
            name=tc.name,
            alias=tc.alias,
            keys=keys,
            chap=_auth(users, mutual, tc.chap_algorithms),
            redirect=redirect.address if redirect else None,
            redirect_permanent=bool(redirect and redirect.permanent),
            allow=(lambda ini: tc.acl_for(ini) is not None) if tc.acls else None,
        )

    @staticmethod
    def _existing(s: Session) -> ExistingSession:
        return ExistingSession(
            tsih=s.tsih,
            initiator_name=s.initiator_name,
            isid=s.isid,
            target_name=s.target_name or None,
            session_type=s.session_type.value,
            parameters=s.negotiated,
            cids=frozenset(s.connections),
        )

    def _find_session(self, tsih: int) -> ExistingSession | None:
        s = self.engine.sessions.get(tsih)
        return None if s is None or s.closed else self._existing(s)

    def _find_session_by_isid(
        self, initiator: str, isid: int, target: str | None
    ) -> ExistingSession | None:
        s = self.engine.find_session(isid, initiator, target)
        return None if s is None else self._existing(s)

    # ------------------------------------------------------------------ input

    @property
    def neg(self) -> Any:
        return self.core.negotiator

    def ffp_text_keys(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return self._ffp_text(self, pairs)  # type: ignore[arg-type]

    def fail_initiator_error(self) -> None:
        if not self.done:
            self.done = True
            self.conn._emit(
                P.LoginResponse(status_class=2, status_detail=0, statsn=self.core.statsn)
            )

    def receive(self, req: P.LoginRequest, now: float) -> None:
        if self.done:
            return
        if self.initiator_name is None:
            try:
                self.initiator_name = dict(T.parse_pairs(req.data)).get("InitiatorName")
            except ProtocolError:
                pass  # the core answers malformed text
        events = self.core.receive_pdu(req)
        for event in events:
            if isinstance(event, SessionReinstated):
                old = self.engine.sessions.get(event.old_tsih)
                if old is not None:
                    self.engine.close_session(old, reason="reinstated")
            elif isinstance(event, ConnectionReinstated):
                s = self.engine.sessions.get(event.tsih)
                old_conn = s.connections.get(event.cid) if s else None
                if old_conn is not None and old_conn is not self.conn:
                    old_conn.close()
                    old_conn.session_detach()
        completed = next((e for e in events if isinstance(e, LoginCompleted)), None)
        session = self._session_for(completed) if completed is not None else None
        for rsp in self.core.data_to_send():
            self.conn._emit(rsp)
        for event in events:
            if isinstance(event, LoginFailed | LoginRedirected):
                self.done = True
                self.conn.close()
                if self.engine.trace:
                    log.info("login ended: %r", event)
        if completed is not None:
            self.done = True
            if session is None:
                self.conn.close()
                return
            self.conn.enter_full_feature(
                session, self._params(completed, session), completed.statsn + 1
            )
            if self.engine.trace:
                log.info("login complete: %r on %r", session, self.conn)

    # ------------------------------------------------------------------ completion

    def _params(self, ev: LoginCompleted, session: Session) -> Any:
        from iscsi_conformance.target.engine import SessionParams

        r = ev.parameters
        cap = session.target.config.max_send_data_segment_length if session.target else None
        params = SessionParams(
            header_digest=r.header_digest,
            data_digest=r.data_digest,
            max_recv_data_segment_length=r.max_recv_data_segment_length_local,
            max_send_data_segment_length=min(r.max_recv_data_segment_length_peer, cap or 1 << 24),
            max_burst_length=r.max_burst_length,
            first_burst_length=r.first_burst_length,
            immediate_data=r.immediate_data,
            initial_r2t=r.initial_r2t,
            max_outstanding_r2t=r.max_outstanding_r2t,
            data_pdu_in_order=r.data_pdu_in_order,
            data_sequence_in_order=r.data_sequence_in_order,
            error_recovery_level=r.error_recovery_level,
            max_connections=r.max_connections,
            default_time2wait=r.default_time2wait,
            default_time2retain=r.default_time2retain,
        )
        if not ev.leading:
            sp = session.params  # session-wide values are the session's
            for name in ("max_burst_length", "first_burst_length", "immediate_data", "initial_r2t",
                         "max_outstanding_r2t", "error_recovery_level", "max_connections"):  # fmt: skip
                setattr(params, name, getattr(sp, name))
        return params

    def _session_for(self, ev: LoginCompleted) -> Session | None:
        from iscsi_conformance.target.engine import Session, SessionType

        engine = self.engine
        if not ev.leading:
            s = engine.sessions.get(ev.tsih)
            return None if s is None or s.closed else s
        if len(engine.sessions) >= engine.config.max_sessions:
            return None
        target = engine.targets.get(ev.target_name) if ev.target_name else None
        if ev.target_name and target is None:
            target = next((t for t in engine.targets.values()
                           if t.config.name.lower() == ev.target_name.lower()), None)  # fmt: skip
        session = Session(
            engine,
            tsih=ev.tsih,
            isid=ev.isid,
            initiator_name=ev.initiator_name,
            target=target,
            tpgt=self.conn.portal_group,
            session_type=SessionType(ev.session_type),
            params=self._params_placeholder(),
            expcmdsn=ev.expcmdsn,
            window=engine.cmd_window,
        )
        session.negotiated = ev.parameters
        session.params = self._params(ev, session)
        engine.register_session(session)
        return session

    @staticmethod
    def _params_placeholder() -> Any:
        from iscsi_conformance.target.engine import SessionParams

        return SessionParams()


__all__ = ["CoreLoginFlow", "LoginStatus"]
