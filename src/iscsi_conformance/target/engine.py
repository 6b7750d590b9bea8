"""The reference target's sans-IO engine: what all its connections share.

Layout (h2's split of ``connection.py`` from ``stream.py``): ``engine`` holds the
targets, the session table, TSIH/TTT allocation, SendTargets and the work that
crosses connections; ``connection`` is one TCP connection (login, full-feature PDUs,
StatSN); ``task`` is one SCSI command's data transfer; ``session`` is what outlives a
connection (CmdSN window, tasks, parameters); ``login`` is the login policy handed to
``core.login``; ``tmf`` performs task management. import-linter keeps these layers
(pyproject.toml). The names below are re-exported here for the adapter and tests.

Theory of operation
-------------------
``TargetEngine`` is the whole target minus I/O. The asyncio adapter (``server.py``)
creates one ``Connection`` per accepted TCP connection and then only moves bytes:
``conn.receive_data(data, now)`` in (optionally ``max_pdus`` at a time, so output can
go out between slices), ``engine.take_output()`` out (a list of
``(connection, [bytes...], close)`` batches, written with one gathering write each).
Time comes in as ``now`` (``handle_timer(now)`` drives NOP-In pings and login
time-outs); randomness (TTTs are counters, CHAP challenges need bytes) comes from the
injected ``rng``. Nothing here imports socket, asyncio or time.

One engine serves several targets. Work that crosses connections (session
reinstatement, TARGET COLD RESET, Async Messages asked for by a test, a PREEMPT AND
ABORT) writes into the other connection's output and marks it dirty; the adapter
flushes every dirty connection after each call.

Full-feature phase (RFC 7143 3.2, 4.2.2, 11): non-immediate commands are delivered in
CmdSN order; a command inside the window but ahead of ExpCmdSN waits in ``pending``
(bounded by the window), one outside the window is silently ignored (4.2.2.1).
Write data arrives as immediate data, unsolicited Data-Out (up to FirstBurstLength)
and solicited Data-Out answering our R2Ts (at most MaxOutstandingR2T at a time, each
at most MaxBurstLength). A command executes (``scsi.LogicalUnit.execute``) when its
CmdSN has been delivered and all its data is in; reads are answered with Data-In PDUs
of at most the peer's MaxRecvDataSegmentLength (capped by our own send limit), the
last carrying the status when there is no sense data (phase collapse, 11.7.4).

Error recovery: ErrorRecoveryLevel 0 closes the connection (and with it the session)
on a framing or sequencing error. At ERL 1 a data digest error is answered with a
Reject (reason 2) and, for Data-Out, a recovery R2T for the lost range once the
sequence ends (RFC 7143 7.8, 7.9); Data-In PDUs and statuses are kept until
acknowledged (ExpStatSN, DataACK SNACK) so a SNACK can have them re-sent (11.16).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import (
    AsyncEvent,
)
from iscsi_conformance.core.discovery import DiscoveredTarget, Portal, format_send_targets
from iscsi_conformance.core.login import (
    ExistingSession,
    LoginCompleted,
)
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.target.config import ServerConfig, TargetConfig
from iscsi_conformance.target.connection import Connection, ConnState
from iscsi_conformance.target.login import find_target
from iscsi_conformance.target.session import (
    DEFAULT_CMD_WINDOW,
    SESSION_WIDE,
    Session,
    SessionType,
    session_params,
)
from iscsi_conformance.target.states import ConnectionInput, SessionInput
from iscsi_conformance.target.task import NONE_TAG, R2TState, Task

if TYPE_CHECKING:
    from iscsi_conformance.scsi.device import LogicalUnit
    from iscsi_conformance.scsi.nexus import Nexus

log = logging.getLogger("iscsi_conformance.target")


class TargetState:
    """A configured target and its logical units."""

    def __init__(self, config: TargetConfig, lus: dict[int, LogicalUnit]) -> None:
        self.config = config
        self.lus = lus

    def lus_for(self, initiator: str) -> dict[int, LogicalUnit]:
        acl = self.config.acl_for(initiator)
        if acl is None or acl.luns is None:
            return self.lus
        return {n: lu for n, lu in self.lus.items() if n in acl.luns}


# --------------------------------------------------------------------------- engine


class TargetEngine:
    """Everything the target knows, shared by all its connections."""

    def __init__(
        self,
        config: ServerConfig,
        lus: dict[str, dict[int, LogicalUnit]],
        *,
        rng: Callable[[int], bytes],
        cmd_window: int = DEFAULT_CMD_WINDOW,
        nexus_factory: Callable[[str, int, str, int], Nexus] | None = None,
    ) -> None:
        self.config = config
        self.rng = rng
        self.cmd_window = cmd_window
        self.targets: dict[str, TargetState] = {
            t.name: TargetState(t, lus.get(t.name, {})) for t in config.targets
        }
        self.target_configs = {name: t.config for name, t in self.targets.items()}
        self.sessions: dict[int, Session] = {}
        self.connections: set[Connection] = set()
        self._dirty: dict[Connection, None] = {}
        #: Sessions without a connection at ERL 2, kept for connection recovery.
        self._retaining: dict[Session, None] = {}
        self._next_tsih = 1
        self._next_ttt = 1
        self._nexus_factory = nexus_factory
        # Portals as actually bound (port 0 becomes a real port), set by the adapter.
        self.bound_portals: dict[int, list[tuple[str, int]]] = {}
        self.trace = config.trace
        # Hooks the adapter or a test may set: called with the engine's events.
        self.on_session_closed: Callable[[Session], None] | None = None
        self.on_pr_changed: Callable[[LogicalUnit], None] | None = None

    # ------------------------------------------------------------------ plumbing

    def make_nexus(self, initiator: str, isid: int, target: str, tpgt: int) -> Nexus:
        if self._nexus_factory is not None:
            return self._nexus_factory(initiator, isid, target, tpgt)
        from iscsi_conformance.scsi.nexus import Nexus

        return Nexus.iscsi(initiator, isid, target, tpgt)

    def new_connection(
        self,
        *,
        portal_group: int,
        local: tuple[str, int] = ("", 0),
        peer: tuple[str, int] = ("", 0),
        now: float = 0.0,
    ) -> Connection:
        conn = Connection(self, portal_group=portal_group, local=local, peer=peer, now=now)
        self.connections.add(conn)
        return conn

    def pr_changed(self, lu: LogicalUnit) -> None:
        """A PERSISTENT RESERVE OUT changed state: tell the owner (persistence)."""
        if self.on_pr_changed is not None:
            self.on_pr_changed(lu)

    def mark_retaining(self, session: Session) -> None:
        """``session`` lost its last connection at ErrorRecoveryLevel 2: keep it (and
        its tasks) for Time2Wait + Time2Retain, counted from the next timer call
        (RFC 7143 6.3.4, 13.19, 13.20), then end it."""
        self._retaining[session] = None

    def mark_dirty(self, conn: Connection) -> None:
        self._dirty[conn] = None

    def take_output(self) -> list[tuple[Connection, list[bytes | memoryview], bool]]:
        """Every connection with something to send: (conn, buffers, close-after)."""
        out = []
        while self._dirty:
            dirty, self._dirty = self._dirty, {}
            for conn in dirty:
                bufs, conn.out = conn.out, []
                out.append((conn, bufs, conn.close_requested))
        return out

    def alloc_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = (ttt + 1) & 0x7FFFFFFF or 1
        return ttt

    def alloc_tsih(self) -> int:
        for _ in range(65535):
            tsih = self._next_tsih
            self._next_tsih = tsih % 65535 + 1  # TSIH 0 is reserved (RFC 7143 11.12.6)
            if tsih not in self.sessions:
                return tsih
        raise ProtocolError("no free TSIH", section="RFC 7143 11.12.6")

    def find_session(
        self, isid: int, initiator: str, target_name: str | None, tpgt: int | None = None
    ) -> Session | None:
        """The session with this ISID, InitiatorName and TargetName (RFC 7143 4.4.3), and
        with ``tpgt`` its portal group too: a session ID is the ISID with the target portal
        group tag (RFC 7143 2.2, SSID), so one ISID to two portal groups is two sessions."""
        for s in self.sessions.values():
            if (
                not s.closed
                and s.isid == isid
                and s.initiator_name == initiator
                and (s.target_name or None) == (target_name or None)
                and (tpgt is None or s.tpgt == tpgt)
            ):
                return s
        return None

    def session_for(self, ev: LoginCompleted, portal_group: int) -> Session | None:
        """The session a completed login joins: the existing one (a further connection,
        RFC 7143 5.3) or a new one (T5 of a leading login)."""
        if not ev.leading:
            s = self.sessions.get(ev.tsih)
            return None if s is None or s.closed else s
        if len(self.sessions) >= self.config.max_sessions:
            return None
        tc = find_target(self.target_configs, ev.target_name) if ev.target_name else None
        session = Session(
            self,
            tsih=ev.tsih,
            isid=ev.isid,
            initiator_name=ev.initiator_name,
            target=self.targets[tc.name] if tc else None,
            tpgt=portal_group,
            session_type=SessionType(ev.session_type),
            params=ev.parameters,
            expcmdsn=ev.expcmdsn,
            window=tc.cmd_window if tc and tc.cmd_window is not None else self.cmd_window,
        )
        session.advance(SessionInput.FIRST_CONNECTION_IN_LOGIN)  # N1
        session.advance(SessionInput.CONNECTION_LOGGED_IN)  # N2
        self.register_session(session)
        return session

    @staticmethod
    def _existing(s: Session) -> ExistingSession:
        return ExistingSession(
            tsih=s.tsih,
            initiator_name=s.initiator_name,
            isid=s.isid,
            target_name=s.target_name or None,
            session_type=s.session_type.value,
            parameters=s.params,
            cids=frozenset(s.connections),
        )

    def existing_session(self, tsih: int) -> ExistingSession | None:
        """The live session with this TSIH, as the login sees it (RFC 7143 11.12.6)."""
        s = self.sessions.get(tsih)
        return None if s is None or s.closed else self._existing(s)

    def existing_session_by_isid(
        self, initiator: str, isid: int, target: str | None, tpgt: int | None = None
    ) -> ExistingSession | None:
        """The live session a leading login would reinstate (RFC 7143 6.3.5): with
        ``tpgt``, only one of that portal group (the same SSID)."""
        s = self.find_session(isid, initiator, target, tpgt)
        return None if s is None else self._existing(s)

    def get_timer(self) -> float | None:
        """The earliest time at which ``handle_timer`` has something to do, or None
        (aioquic's ``get_timer()``): the adapter sleeps until then, not on a tick."""
        deadlines = [d for c in self.connections if (d := c.next_deadline()) is not None]
        deadlines += [s.retain_until or 0.0 for s in self._retaining]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        for conn in list(self.connections):
            conn.handle_timer(now)
        for s in list(self._retaining):
            if not s.retaining or s.closed:
                del self._retaining[s]
            elif s.retain_until is None:
                p = s.params
                s.retain_until = now + p.default_time2wait + p.default_time2retain
            elif now >= s.retain_until:
                del self._retaining[s]
                self.close_session(s, reason="Time2Retain expired")

    def send_targets(
        self,
        session: Session | None,
        which: str,
        portal_group: int,
        conn_local: tuple[str, int] | None = None,
    ) -> list[tuple[str, str]]:
        """SendTargets answer (RFC 7143 Appendix C): TargetName and TargetAddress pairs.

        Chooses the targets and portals; :func:`core.discovery.format_send_targets`
        writes the pairs."""
        found: list[DiscoveredTarget] = []
        initiator = session.initiator_name if session else ""
        for t in self.targets.values():
            if which == "All":
                pass
            elif which == "":
                if session is None or session.target is not t:
                    continue
            elif which != t.config.name:
                continue
            if t.config.acls and t.config.acl_for(initiator) is None:
                continue  # invisible to initiators outside its ACL
            portals: list[Portal] = []
            for group in self.config.portal_groups:
                if t.config.portal_groups and group.tag not in t.config.portal_groups:
                    continue
                for host, port in self.bound_portals.get(group.tag, group.portals):
                    if host in ("0.0.0.0", "::") and conn_local is not None:
                        host = conn_local[0]  # a wildcard portal: the address reached
                    portals.append(Portal(host, port, group.tag))
            found.append(DiscoveredTarget(t.config.name, tuple(portals)))
        return format_send_targets(found)

    # ------------------------------------------------------------------ session life

    def register_session(self, session: Session) -> None:
        self.sessions[session.tsih] = session

    def close_session(self, session: Session, *, reason: str = "") -> None:
        """End a session: abort its tasks, drop its connections, tell the LUs (SAM-5)."""
        if session.closed:
            return
        session.closed = True
        if reason == "reinstated":
            session.advance(SessionInput.REINSTATED)  # N3 / N6 / N11
            for conn in session.connections.values():
                conn.advance(ConnectionInput.REINSTATED)  # T8 / T13 / T18
        elif reason == "logout":
            session.advance(SessionInput.SESSION_CLOSED)  # N3
        else:
            # The session failed (N5); at ErrorRecoveryLevel < 2 no continuation can
            # follow, so its state timeout is zero (N6).
            session.advance(SessionInput.SESSION_FAILED)
            session.advance(SessionInput.SESSION_TIMEOUT)
        self.sessions.pop(session.tsih, None)
        for task in list(session.tasks.values()):
            task.aborted = True
        session.tasks.clear()
        session.orphans.clear()
        session.pending.clear()
        for conn in list(session.connections.values()):
            conn.close()
        if session.target is not None and session.nexus is not None:
            for lu in session.target.lus.values():
                fn = getattr(lu, "nexus_lost", None)
                if fn is not None:
                    fn(session.nexus)
        if self.trace:
            log.info("session closed %r %s", session, reason)
        if self.on_session_closed is not None:
            self.on_session_closed(session)

    def sessions_of_target(self, name: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.target_name == name and not s.closed]

    # ------------------------------------------------------------------ test API

    def request_logout(
        self, session: Session, *, time_to_logout: int = 5, cid: int | None = None
    ) -> None:
        """Async Message 'logout requested' on every connection, or on connection ``cid``
        alone: it goes on the connection to be logged out (RFC 7143 11.9.1, event 1)."""
        for conn in session.connections.values():
            if cid is not None and conn.cid != cid:
                continue
            conn.send_async(AsyncEvent.LOGOUT_REQUESTED, parameter3=time_to_logout)
            conn.advance(ConnectionInput.DECOMMISSION)  # T11 (T12 when asked again)

    def drop_connection(
        self, conn: Connection, *, time2wait: int = 0, time2retain: int = 0
    ) -> None:
        """Async Message 'connection drop' then close it (event 2)."""
        conn.send_async(
            AsyncEvent.CONNECTION_DROP,
            parameter1=conn.cid,
            parameter2=time2wait,
            parameter3=time2retain,
        )
        conn.close(after_flush=True)
        if conn.session is not None:
            conn.session_detach()

    def drop_session(self, session: Session, *, time2wait: int = 0, time2retain: int = 0) -> None:
        """Async Message 'session drop' on every connection, then end the session (event 3)."""
        for conn in list(session.connections.values()):
            conn.send_async(AsyncEvent.SESSION_DROP, parameter2=time2wait, parameter3=time2retain)
            conn.close(after_flush=True)
        self.close_session(session, reason="dropped by target")

    def request_renegotiation(self, session: Session, *, time_to_answer: int = 5) -> None:
        """Async Message 'negotiation requested' (event 4), the initiator's Text Request
        being due within Parameter3 = ``time_to_answer`` seconds (RFC 7143 11.9.1)."""
        for conn in session.connections.values():
            conn.send_async(AsyncEvent.NEGOTIATION_REQUESTED, parameter3=time_to_answer)

    def send_scsi_async_event(self, session: Session, lun: int, sense: bytes) -> None:
        """Async Message carrying a SCSI asynchronous event (event 0) with sense data."""
        for conn in session.connections.values():
            conn.send_async(
                AsyncEvent.SCSI_ASYNC_EVENT,
                lun=P.lun_to_field(lun),
                data=len(sense).to_bytes(2, "big") + sense,
            )
            break

    def set_cmd_window(self, session: Session, window: int) -> None:
        """Resize the session's CmdSN window to ``window`` commands (0 closes it:
        MaxCmdSN = ExpCmdSN - 1, RFC 7143 4.2.2.1) and announce the new MaxCmdSN with a
        NOP-In on every connection, no other PDU being due to carry it (11.4.11)."""
        if window == session.window:
            return
        session.window = max(0, window)
        for conn in session.connections.values():
            conn.announce_window()

    def send_vendor_event(self, session: Session, vcode: int, data: bytes = b"") -> None:
        """Async Message with a vendor-specific event (event 255), its AsyncVCode and
        data (RFC 7143 11.9.1: data MAY accompany it), on every connection."""
        for conn in session.connections.values():
            conn.send_async(AsyncEvent.VENDOR_SPECIFIC, vcode=vcode, data=data)

    # ------------------------------------------------------------------ task management

    def abort_tasks(self, predicate: Callable[[Task], bool]) -> int:
        n = 0
        for s in list(self.sessions.values()):
            for itt, task in list(s.tasks.items()):
                if predicate(task):
                    task.aborted = True
                    s.tasks.pop(itt, None)
                    task.conn.remember_aborted(itt)
                    s.release_budget(task)
                    n += 1
            for sn, (_conn, pdu) in list(s.pending.items()):
                if isinstance(pdu, P.ScsiCommand):
                    t = s.tasks.get(pdu.itt)
                    if t is None:
                        s.pending.pop(sn)
                        s.aborted_cmdsns.add(sn)
        return n


__all__ = [
    "DEFAULT_CMD_WINDOW",
    "NONE_TAG",
    "SESSION_WIDE",
    "ConnState",
    "Connection",
    "R2TState",
    "Session",
    "SessionType",
    "TargetEngine",
    "TargetState",
    "Task",
    "session_params",
]
