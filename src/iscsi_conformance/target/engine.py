"""The reference target's sans-IO engine: connections, sessions, full-feature phase.

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

import dataclasses
import enum
import logging
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import (
    AsyncEvent,
    LogoutReason,
    LogoutResponseCode,
    Opcode,
    RejectReason,
    ScsiResponseCode,
    ScsiStatus,
    SnackType,
)
from iscsi_conformance.core.discovery import DiscoveredTarget, Portal, format_send_targets
from iscsi_conformance.core.login import (
    ConnectionReinstated,
    ExistingSession,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    SessionReinstated,
)
from iscsi_conformance.core.negotiation import NegotiatedParameters
from iscsi_conformance.core.serial import add_mod as sn_add
from iscsi_conformance.core.serial import le as sn_le
from iscsi_conformance.core.serial import lt as sn_lt
from iscsi_conformance.errors import DigestError, PDUFormatError, ProtocolError
from iscsi_conformance.scsi import nolu
from iscsi_conformance.target.config import ServerConfig, TargetConfig
from iscsi_conformance.target.login import ConnectionLogin, find_target, renegotiate

log = logging.getLogger("iscsi_conformance.target")

NONE_TAG = 0xFFFFFFFF
DEFAULT_CMD_WINDOW = 128  # commands the initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1)
MAX_TASK_BYTES = 32 * 1024 * 1024  # largest write a single task may buffer
SESSION_WRITE_BUDGET = 128 * 1024 * 1024  # write data buffered and not yet executed
MAX_TASKS_PER_SESSION = 2 * DEFAULT_CMD_WINDOW  # immediate commands bypass the window
MAX_TEXT_PENDING = 16  # Text responses waiting for the initiator to continue
MAX_RETAINED_STATUS = 4096  # ERL1: statuses kept for SNACK, per connection
MAX_HELD_TASKS = 256  # ERL1: finished reads whose Data-In is kept, per connection
MAX_ABORTED_TAGS = 1024

# SCSI sense for commands the transport refuses before the LU sees them (SPC-4 4.5.6).
_SENSE_KEY_ILLEGAL_REQUEST = 0x05
_SENSE_KEY_ABORTED_COMMAND = 0x0B


def _fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    """Fixed-format sense data (SPC-4 4.5.3), 18 bytes."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


SENSE_INVALID_FIELD_IN_IU = _fixed_sense(_SENSE_KEY_ILLEGAL_REQUEST, 0x0E, 0x03)
SENSE_INVALID_FIELD_IN_CDB = _fixed_sense(_SENSE_KEY_ILLEGAL_REQUEST, 0x24, 0x00)


# --------------------------------------------------------------------------- state


class ConnState(enum.Enum):
    """Target connection states (RFC 7143 8.1.2 names in comments)."""

    LOGIN = "S3_XPT_UP/S4_IN_LOGIN"
    FULL_FEATURE = "S5_LOGGED_IN"
    LOGGED_OUT = "S6_IN_LOGOUT"
    CLOSED = "S1_FREE"


#: Values that are the session's, whichever connection negotiated them: a further
#: connection's login may not change them (RFC 7143 13: "leading only" keys).
SESSION_WIDE = (
    "max_burst_length",
    "first_burst_length",
    "immediate_data",
    "initial_r2t",
    "max_outstanding_r2t",
    "error_recovery_level",
    "max_connections",
    "default_time2wait",
    "default_time2retain",
)


def session_params(ev: LoginCompleted, session: Session) -> NegotiatedParameters:
    """A connection's parameters: its own login's outcome, with the session-wide values
    of the session it joined."""
    if ev.leading:
        return ev.parameters
    sp = session.params
    return dataclasses.replace(ev.parameters, **{n: getattr(sp, n) for n in SESSION_WIDE})


class SessionType(enum.Enum):
    NORMAL = "Normal"
    DISCOVERY = "Discovery"


@dataclasses.dataclass
class R2TState:
    r2tsn: int
    ttt: int
    offset: int
    length: int
    received: int = 0
    next_datasn: int = 0
    lost: list[tuple[int, int]] = dataclasses.field(default_factory=list)


class Task:
    """One SCSI command in flight (RFC 7143 3.2.4.3 'task')."""

    __slots__ = (
        "aborted",
        "attr",
        "budgeted",
        "buffer",
        "cdb",
        "cmdsn",
        "conn",
        "delivered",
        "edtl",
        "expected",
        "immediate",
        "itt",
        "lu",
        "lun",
        "lun_field",
        "next_offset",
        "outstanding",
        "pending_ranges",
        "r2tsn",
        "read",
        "received",
        "residual_mismatch",
        "sent_datain",
        "statsn",
        "unsolicited_done",
        "unsolicited_next_datasn",
        "unsolicited_received",
        "write",
    )

    def __init__(self, conn: Connection, cmd: P.ScsiCommand, lun: int, lu: Any) -> None:
        self.conn = conn
        self.itt = cmd.itt
        self.cmdsn = cmd.cmdsn
        self.immediate = cmd.immediate
        self.attr = cmd.attr
        self.cdb = cmd.cdb
        self.lun = lun
        self.lun_field = cmd.lun
        self.lu = lu
        self.edtl = cmd.expected_data_transfer_length
        self.read = cmd.read
        self.write = cmd.write
        self.delivered = False
        self.aborted = False
        self.expected = 0  # bytes of Data-Out we will accept
        self.buffer: bytearray | None = None
        self.received = 0
        self.residual_mismatch = 0  # SPDTL - EDTL for writes that disagree
        self.outstanding: dict[int, R2TState] = {}  # ttt -> R2T
        self.pending_ranges: deque[tuple[int, int]] = deque()  # to solicit
        self.unsolicited_done = True
        self.unsolicited_next_datasn = 0
        self.unsolicited_received = 0
        self.sent_datain: list[bytes] = []  # ERL1: for Data SNACK
        self.r2tsn = 0
        self.next_offset = 0
        self.budgeted = 0
        self.statsn = 0  # of its status, once sent


class Session:
    """An iSCSI session (RFC 7143 3.3): CmdSN window, tasks, connections."""

    def __init__(
        self,
        engine: TargetEngine,
        *,
        tsih: int,
        isid: int,
        initiator_name: str,
        target: TargetState | None,
        tpgt: int,
        session_type: SessionType,
        params: NegotiatedParameters,
        expcmdsn: int,
        window: int,
    ) -> None:
        self.engine = engine
        self.tsih = tsih
        self.isid = isid
        self.initiator_name = initiator_name
        self.target = target
        self.tpgt = tpgt
        self.session_type = session_type
        self.params = params
        self.expcmdsn = expcmdsn
        self.window = window
        self.connections: dict[int, Connection] = {}
        self.tasks: dict[int, Task] = {}
        self.pending: dict[int, tuple[Connection, P.PDU]] = {}  # cmdsn -> queued command
        self.aborted_cmdsns: set[int] = set()
        self.write_budget_used = 0
        self.closed = False
        self.nexus = None
        self.initiator_alias: str | None = None
        if target is not None:
            self.nexus = engine.make_nexus(initiator_name, isid, target.config.name, tpgt)

    @property
    def maxcmdsn(self) -> int:
        return sn_add(self.expcmdsn, self.window - 1)

    def release_budget(self, task: Task) -> None:
        self.write_budget_used -= task.budgeted
        task.budgeted = 0

    @property
    def target_name(self) -> str:
        return self.target.config.name if self.target else ""

    def __repr__(self) -> str:
        return (
            f"Session(tsih={self.tsih}, isid=0x{self.isid:012x}, initiator={self.initiator_name!r},"
            f" target={self.target_name!r}, type={self.session_type.value})"
        )


class TargetState:
    """A configured target and its logical units."""

    def __init__(self, config: TargetConfig, lus: dict[int, Any]) -> None:
        self.config = config
        self.lus = lus

    def lus_for(self, initiator: str) -> dict[int, Any]:
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
        lus: dict[str, dict[int, Any]],
        *,
        rng: Callable[[int], bytes],
        cmd_window: int = DEFAULT_CMD_WINDOW,
        nexus_factory: Callable[[str, int, str, int], Any] | None = None,
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
        self._next_tsih = 1
        self._next_ttt = 1
        self._nexus_factory = nexus_factory
        # Portals as actually bound (port 0 becomes a real port), set by the adapter.
        self.bound_portals: dict[int, list[tuple[str, int]]] = {}
        self.trace = config.trace
        # Hooks the adapter or a test may set: called with the engine's events.
        self.on_session_closed: Callable[[Session], None] | None = None
        self.on_pr_changed: Callable[[Any], None] | None = None

    # ------------------------------------------------------------------ plumbing

    def make_nexus(self, initiator: str, isid: int, target: str, tpgt: int) -> Any:
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

    def pr_changed(self, lu: Any) -> None:
        """A PERSISTENT RESERVE OUT changed state: tell the owner (persistence)."""
        if self.on_pr_changed is not None:
            self.on_pr_changed(lu)

    def mark_dirty(self, conn: Connection) -> None:
        self._dirty[conn] = None

    def take_output(self) -> list[tuple[Connection, list[bytes], bool]]:
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

    def find_session(self, isid: int, initiator: str, target_name: str | None) -> Session | None:
        """The session with this ISID, InitiatorName and TargetName (RFC 7143 4.4.3)."""
        for s in self.sessions.values():
            if (
                not s.closed
                and s.isid == isid
                and s.initiator_name == initiator
                and (s.target_name or None) == (target_name or None)
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
            window=self.cmd_window,
        )
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
        self, initiator: str, isid: int, target: str | None
    ) -> ExistingSession | None:
        """The live session a leading login would reinstate (RFC 7143 6.3.5)."""
        s = self.find_session(isid, initiator, target)
        return None if s is None else self._existing(s)

    def get_timer(self) -> float | None:
        """The earliest time at which ``handle_timer`` has something to do, or None
        (aioquic's ``get_timer()``): the adapter sleeps until then, not on a tick."""
        deadlines = [d for c in self.connections if (d := c.next_deadline()) is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        for conn in list(self.connections):
            conn.handle_timer(now)

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
        self.sessions.pop(session.tsih, None)
        for task in list(session.tasks.values()):
            task.aborted = True
        session.tasks.clear()
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

    def request_logout(self, session: Session, *, time_to_logout: int = 5) -> None:
        """Async Message 'logout requested' on every connection (RFC 7143 11.9.1, event 1)."""
        for conn in session.connections.values():
            conn.send_async(AsyncEvent.LOGOUT_REQUESTED, parameter3=time_to_logout)

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

    def request_renegotiation(self, session: Session) -> None:
        """Async Message 'negotiation requested' (event 4)."""
        for conn in session.connections.values():
            conn.send_async(AsyncEvent.NEGOTIATION_REQUESTED)

    def send_scsi_async_event(self, session: Session, lun: int, sense: bytes) -> None:
        """Async Message carrying a SCSI asynchronous event (event 0) with sense data."""
        for conn in session.connections.values():
            conn.send_async(
                AsyncEvent.SCSI_ASYNC_EVENT,
                lun=P.lun_to_field(lun),
                data=len(sense).to_bytes(2, "big") + sense,
            )
            break

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


# --------------------------------------------------------------------------- connection


class Connection:
    """One TCP connection: login, then full-feature phase (RFC 7143 8.1.2)."""

    def __init__(
        self,
        engine: TargetEngine,
        *,
        portal_group: int,
        local: tuple[str, int],
        peer: tuple[str, int],
        now: float,
    ) -> None:
        self.engine = engine
        self.portal_group = portal_group
        self.local = local
        self.peer = peer
        self.state = ConnState.LOGIN
        self.session: Session | None = None
        self.cid = 0
        self.statsn = 0
        self.out: list[bytes] = []
        self.close_requested = False
        self.closed = False
        self.created = now
        self.last_rx = now
        self.params = NegotiatedParameters()
        # Login PDUs are bounded by the default MaxRecvDataSegmentLength (RFC 7143 13.12).
        self.decoder = P.PDUDecoder(max_data_segment_length=8192)
        self.hd = False
        self.dd = False
        self.erl = 0
        self.max_send = 8192
        self._aborted_itts: deque[int] = deque(maxlen=MAX_ABORTED_TAGS)
        self._aborted_set: set[int] = set()
        self._retained: dict[int, bytes] = {}  # ERL1: statsn -> encoded status PDU
        self._held: dict[int, Task] = {}  # ERL1: itt -> finished read task (Data-In kept)
        self._ping_ttt: int | None = None
        self._ping_sent = 0.0
        self._last_ping = now
        # Text exchanges in progress: itt -> (ttt, answer chunks still to send, or the
        # TextAssembler of a request still arriving with C=1).
        self._text_pending: dict[int, tuple[int, Any]] = {}
        self.login = ConnectionLogin(
            targets=engine.target_configs,
            discovery=engine.config.discovery,
            portal_group=portal_group,
            allocate_tsih=engine.alloc_tsih,
            find_session=engine.existing_session,
            find_session_by_isid=engine.existing_session_by_isid,
            cmd_window=engine.cmd_window,
            rng=engine.rng,
        )

    def __repr__(self) -> str:
        return f"Connection(peer={self.peer!r}, cid={self.cid}, state={self.state.name})"

    # ------------------------------------------------------------------ output

    def _emit(self, pdu: P.PDU) -> bytes:
        raw = P.encode(pdu, header_digest=self.hd, data_digest=self.dd)
        self.out.append(raw)
        self.engine.mark_dirty(self)
        if self.engine.trace:
            log.debug("-> %r", pdu)
        return raw

    def emit_raw(self, raw: bytes) -> None:
        self.out.append(raw)
        self.engine.mark_dirty(self)

    def next_statsn(self) -> int:
        sn = self.statsn
        self.statsn = sn_add(sn, 1)
        return sn

    def _window(self) -> tuple[int, int]:
        s = self.session
        if s is None:
            return 0, 0
        return s.expcmdsn, s.maxcmdsn

    def close(self, *, after_flush: bool = True) -> None:
        """Ask the adapter to close this connection once its output is written."""
        if not self.close_requested:
            self.close_requested = True
            self.engine.mark_dirty(self)

    def session_detach(self) -> None:
        s = self.session
        if s is None:
            return
        if s.connections.get(self.cid) is self:
            del s.connections[self.cid]
        # Tasks with allegiance to this connection die with it (ERL < 2, RFC 7143 6.1.4).
        for itt, t in list(s.tasks.items()):
            if t.conn is self:
                t.aborted = True
                s.release_budget(t)
                del s.tasks[itt]
        for sn, (c, _) in list(s.pending.items()):
            if c is self:
                del s.pending[sn]
        if not s.connections:
            self.engine.close_session(s, reason="last connection gone")

    def connection_lost(self) -> None:
        """The transport is gone (peer closed, reset, or we closed it)."""
        if self.closed:
            return
        self.closed = True
        self.state = ConnState.CLOSED
        self.engine.connections.discard(self)
        self.engine._dirty.pop(self, None)
        self.session_detach()

    def remember_aborted(self, itt: int) -> None:
        if len(self._aborted_itts) == self._aborted_itts.maxlen:
            self._aborted_set.discard(self._aborted_itts[0])
        self._aborted_itts.append(itt)
        self._aborted_set.add(itt)

    def send_async(
        self,
        event: int,
        *,
        lun: int = 0,
        parameter1: int = 0,
        parameter2: int = 0,
        parameter3: int = 0,
        data: bytes = b"",
    ) -> None:
        if self.state is not ConnState.FULL_FEATURE:
            return
        exp, mx = self._window()
        self._emit(
            P.AsyncMessage(
                lun=lun,
                statsn=self.next_statsn(),
                expcmdsn=exp,
                maxcmdsn=mx,
                async_event=event,
                parameter1=parameter1,
                parameter2=parameter2,
                parameter3=parameter3,
                data=data,
            )
        )

    def reject(self, reason: int, header: bytes, *, datasn_r2tsn: int = 0) -> None:
        """Reject PDU carrying the offending header (RFC 7143 11.17)."""
        exp, mx = self._window()
        self._emit(
            P.Reject(
                reason=reason,
                statsn=self.next_statsn(),
                expcmdsn=exp,
                maxcmdsn=mx,
                datasn_r2tsn=datasn_r2tsn,
                data=bytes(header[:48]),
            )
        )

    # ------------------------------------------------------------------ input

    def receive_data(
        self, data: bytes | bytearray | memoryview, now: float = 0.0, *, max_pdus: int = 0
    ) -> bool:
        """Bytes from the transport. Never raises for anything the peer sends.

        With ``max_pdus`` > 0, handles at most that many PDUs and returns True when
        it stopped for that reason (more may be buffered): the adapter then writes
        the output so far and calls again with ``b""``. Answering a batch of
        commands piecewise lets the initiator work on the first answers while we
        work on the rest, instead of both sides taking turns.
        """
        if self.close_requested or self.closed:
            return False
        self.last_rx = now
        dec = self.decoder
        if data:
            dec.feed(data)
        budget = max_pdus
        while not self.close_requested:
            if max_pdus:
                if not budget:
                    return dec.buffered > 0
                budget -= 1
            try:
                pdu = dec.next_pdu()
            except DigestError as exc:
                self._digest_error(exc)
                continue
            except PDUFormatError as exc:
                # Framing is lost (e.g. DataSegmentLength above what we declared,
                # RFC 7143 13.12): answer with a Reject and close (7.1, 7.2).
                if self.state is ConnState.LOGIN:
                    self._login_failed()
                elif exc.header:
                    self.reject(exc.reject_reason or RejectReason.PROTOCOL_ERROR, exc.header)
                self.close()
                return False
            if pdu is None:
                return False
            try:
                self.handle_pdu(pdu, now)
            except ProtocolError as exc:
                if self.engine.trace:
                    log.info("protocol error from %s: %s", self.peer, exc)
                if self.state is ConnState.LOGIN:
                    self._login_failed()
                else:
                    self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
                self.close()
                return False
            except Exception:  # our bug: never take the server down (robustness)
                log.exception("internal error handling %r from %s", type(pdu).__name__, self.peer)
                self.close()
                return False
        return False

    def _digest_error(self, exc: DigestError) -> None:
        """RFC 7143 7.8: header digest -> discard; data digest -> Reject (+ recovery)."""
        if self.erl == 0 or self.state is not ConnState.FULL_FEATURE:
            # At ERL 0 any digest error ends the connection (7.1.4, 7.12.1).
            if exc.which == "data" and exc.header:
                self.reject(RejectReason.DATA_DIGEST_ERROR, exc.header)
            self.close()
            return
        if exc.which == "header":
            # The header is untrusted: the RFC allows discarding up to the next PDU
            # boundary by the declared length, or closing. We discard it.
            skip = getattr(self.decoder, "_skip_current", None)
            if skip is None:
                self.close()
            else:
                skip()
            return
        header = exc.header
        self.reject(RejectReason.DATA_DIGEST_ERROR, header)
        opcode = header[0] & 0x3F
        if opcode == Opcode.SCSI_DATA_OUT and self.session is not None:
            itt, ttt = struct.unpack_from(">II", header, 16)
            offset = struct.unpack_from(">I", header, 40)[0]
            dsl = int.from_bytes(header[5:8], "big")
            task = self.session.tasks.get(itt)
            if task is not None:
                self._data_lost(task, ttt, offset, dsl, header)

    def handle_pdu(self, pdu: P.PDU, now: float) -> None:
        if self.engine.trace:
            log.debug("<- %r", pdu)
        if self.state is ConnState.LOGIN:
            if not isinstance(pdu, P.LoginRequest):
                # Only Login Requests before the login completes (RFC 7143 6.2).
                self._login_failed()
                self.close()
                return
            self._login_step(pdu)
            return
        if self.state is not ConnState.FULL_FEATURE:
            return  # after logout: ignore the rest
        handler = _FFP_HANDLERS.get(type(pdu))
        if handler is None:
            if isinstance(pdu, P.LoginRequest):
                # A Login Request in full-feature phase is a protocol error (RFC 7143 6.2)
                self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
                self.close()
                return
            self.reject(RejectReason.COMMAND_NOT_SUPPORTED, _bhs_of_any(pdu))
            return
        handler(self, pdu, now)

    # ------------------------------------------------------------------ login

    def _login_failed(self) -> None:
        rsp = self.login.fail()
        if rsp is not None:
            self._emit(rsp)

    def _login_step(self, req: P.LoginRequest) -> None:
        """One Login Request through the core's table; act on what it decided."""
        self.cid = req.cid
        events = self.login.receive(req)
        engine = self.engine
        for event in events:
            if isinstance(event, SessionReinstated):  # RFC 7143 6.3.5
                old = engine.sessions.get(event.old_tsih)
                if old is not None:
                    engine.close_session(old, reason="reinstated")
            elif isinstance(event, ConnectionReinstated):  # RFC 7143 6.3.4
                s = engine.sessions.get(event.tsih)
                old_conn = s.connections.get(event.cid) if s else None
                if old_conn is not None and old_conn is not self:
                    old_conn.close()
                    old_conn.session_detach()
        completed = next((e for e in events if isinstance(e, LoginCompleted)), None)
        session = engine.session_for(completed, self.portal_group) if completed else None
        for rsp in self.login.data_to_send():
            self._emit(rsp)
        for event in events:
            if isinstance(event, LoginFailed | LoginRedirected):
                self.login.done = True
                self.close()
                if engine.trace:
                    log.info("login ended: %r", event)
        if completed is None:
            return
        self.login.done = True
        if session is None:
            self.close()
            return
        self.enter_full_feature(session, session_params(completed, session), completed.statsn + 1)
        if engine.trace:
            log.info("login complete: %r on %r", session, self)

    def enter_full_feature(
        self, session: Session, params: NegotiatedParameters, statsn: int
    ) -> None:
        """Called once the final Login Response is queued (T5)."""
        self.session = session
        self.params = params
        self.state = ConnState.FULL_FEATURE
        self.statsn = statsn
        self.hd = params.header_digest
        self.dd = params.data_digest
        self.erl = params.error_recovery_level
        cap = session.target.config.max_send_data_segment_length if session.target else None
        self.max_send = min(params.max_send_data_segment_length, cap or 1 << 24)
        dec = self.decoder
        dec.header_digest = params.header_digest
        dec.data_digest = params.data_digest
        dec.max_data_segment_length = params.max_recv_data_segment_length_local
        session.connections[self.cid] = self

    # ------------------------------------------------------------------ CmdSN ordering

    def _ack_statsn(self, expstatsn: int) -> None:
        """ExpStatSN acknowledges statuses, and with them the data before them
        (RFC 7143 4.2.2.2): what ERL 1 kept for a SNACK can go."""
        if self._retained:
            for sn in [sn for sn in self._retained if sn_lt(sn, expstatsn)]:
                del self._retained[sn]
        held = self._held
        while held:
            itt = next(iter(held))
            if not sn_lt(held[itt].statsn, expstatsn):
                break
            del held[itt]

    def _order(self, pdu: Any, run: Callable[[Any], None]) -> None:
        """Deliver a non-immediate command in CmdSN order (RFC 7143 4.2.2.1, 3.2.2.1)."""
        s = self.session
        assert s is not None
        if pdu.immediate:
            run(pdu)
            return
        sn = pdu.cmdsn
        if sn == s.expcmdsn:
            s.expcmdsn = sn_add(sn, 1)
            if sn in s.aborted_cmdsns:
                s.aborted_cmdsns.discard(sn)
            else:
                run(pdu)
            self._drain()
            return
        if sn_lt(s.expcmdsn, sn) and sn_le(sn, s.maxcmdsn):
            if sn not in s.pending:
                s.pending[sn] = (self, pdu)
                if isinstance(pdu, P.ScsiCommand):
                    self._create_task(pdu, deliver=False)
            return
        # Outside the window: silently ignored (RFC 7143 4.2.2.1).
        if self.engine.trace:
            log.info("CmdSN %d outside [%d, %d]: ignored", sn, s.expcmdsn, s.maxcmdsn)

    def _drain(self) -> None:
        s = self.session
        assert s is not None
        while s.pending:
            item = s.pending.pop(s.expcmdsn, None)
            if item is None:
                if s.expcmdsn in s.aborted_cmdsns:
                    s.aborted_cmdsns.discard(s.expcmdsn)
                    s.expcmdsn = sn_add(s.expcmdsn, 1)
                    continue
                return
            s.expcmdsn = sn_add(s.expcmdsn, 1)
            conn, pdu = item
            if conn.closed or conn.close_requested:
                continue
            if isinstance(pdu, P.ScsiCommand):
                t = s.tasks.get(pdu.itt)
                if t is not None and not t.aborted:
                    conn._deliver(t)
            else:
                _ORDERED_RUNNERS[type(pdu)](conn, pdu)

    # ------------------------------------------------------------------ SCSI command

    def on_scsi_command(self, pdu: P.ScsiCommand, now: float) -> None:
        s = self.session
        assert s is not None
        self._ack_statsn(pdu.expstatsn)
        if s.session_type is SessionType.DISCOVERY:
            # Only Text, Logout and NOP in a discovery session (RFC 7143 4.3).
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        if pdu.itt == NONE_TAG:
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        if pdu.immediate:
            self._create_task(pdu, deliver=True)
            return
        sn = pdu.cmdsn
        if sn == s.expcmdsn:
            s.expcmdsn = sn_add(sn, 1)
            if sn in s.aborted_cmdsns:
                s.aborted_cmdsns.discard(sn)
            else:
                self._create_task(pdu, deliver=True)
            if s.pending:
                self._drain()
            return
        self._order(pdu, lambda p: self._create_task(p, deliver=True))

    def _create_task(self, pdu: P.ScsiCommand, *, deliver: bool) -> None:
        s = self.session
        assert s is not None and s.target is not None
        if pdu.itt in s.tasks:
            # A task tag still in use (RFC 7143 11.17.1: Task in progress).
            self.reject(RejectReason.TASK_IN_PROGRESS, P.bhs_of(pdu))
            return
        lun = P.field_to_lun(pdu.lun)
        lus = s.target.lus_for(s.initiator_name)
        lu = lus.get(lun)
        task = Task(self, pdu, lun, lu)
        s.tasks[pdu.itt] = task
        if pdu.write and lu is not None and _known_command(lu, pdu.cdb):
            spdtl = _data_out_length(lu, pdu.cdb)
            edtl = task.edtl
            if spdtl is None:
                spdtl = edtl
            # Accept the EDTL the initiator planned, so the data stream stays in step;
            # _finish decides what to do when it disagrees with the CDB (11.4.5.1).
            task.expected = edtl
            task.residual_mismatch = spdtl - edtl
            if edtl > MAX_TASK_BYTES:
                task.expected = 0
                task.residual_mismatch = 0
                self._respond_check(task, SENSE_INVALID_FIELD_IN_CDB)
                return
        elif pdu.write:
            task.expected = task.edtl if task.edtl <= MAX_TASK_BYTES else 0
        if task.expected and (
            s.write_budget_used + task.expected > SESSION_WRITE_BUDGET
            or len(s.tasks) > MAX_TASKS_PER_SESSION
        ):
            # Memory stays bounded whatever the initiator sends: answer TASK SET FULL
            # (SAM-5 5.3.1) and drop any data that still arrives for this tag.
            s.tasks.pop(pdu.itt, None)
            self.remember_aborted(pdu.itt)
            self._respond(task, ScsiStatus.TASK_SET_FULL, b"")
            return
        if task.expected:
            task.buffer = bytearray(task.expected)
            s.write_budget_used += task.expected
            task.budgeted = task.expected
        imm = pdu.data
        if imm:
            n = min(len(imm), task.expected)
            if not self.params.immediate_data or len(imm) > self.params.first_burst_length:
                # Immediate data was not negotiated, or exceeds FirstBurstLength (13.14).
                s.tasks.pop(pdu.itt, None)
                s.release_budget(task)
                self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
                return
            if n and task.buffer is not None:
                task.buffer[:n] = imm[:n]
            task.received = n
            task.unsolicited_received = len(imm)
            task.next_offset = len(imm)
        if (
            task.expected
            and not pdu.final
            and not self.params.initial_r2t
            and task.unsolicited_received < self.params.first_burst_length
            and task.received < task.expected
        ):
            task.unsolicited_done = False  # more unsolicited Data-Out follows (13.10)
        if deliver:
            self._deliver(task)

    def _deliver(self, task: Task) -> None:
        """The command's CmdSN has been reached: solicit data or execute."""
        task.delivered = True
        if task.aborted:
            return
        self._progress(task)

    def _progress(self, task: Task) -> None:
        if not task.delivered or task.aborted:
            return
        if task.received >= task.expected and not task.outstanding and task.unsolicited_done:
            self._finish(task)
            return
        if task.unsolicited_done:
            self._solicit(task)

    def _solicit(self, task: Task) -> None:
        """Issue R2Ts for what is still missing (RFC 7143 11.8; 13.17 MaxOutstandingR2T)."""
        p = self.params
        if not task.pending_ranges and task.next_offset < task.expected and not task.outstanding:
            # Everything not covered by immediate/unsolicited data, in burst-size pieces.
            start = task.next_offset
            task.next_offset = task.expected
            while start < task.expected:
                ln = min(p.max_burst_length, task.expected - start)
                task.pending_ranges.append((start, ln))
                start += ln
        while task.pending_ranges and len(task.outstanding) < p.max_outstanding_r2t:
            off, ln = task.pending_ranges.popleft()
            ttt = self.engine.alloc_ttt()
            r2t = R2TState(r2tsn=task.r2tsn, ttt=ttt, offset=off, length=ln)
            task.r2tsn += 1
            task.outstanding[ttt] = r2t
            self._send_r2t(task, r2t)

    def _send_r2t(self, task: Task, r2t: R2TState) -> None:
        exp, mx = self._window()
        self._emit(
            P.R2T(
                lun=task.lun_field,
                itt=task.itt,
                ttt=r2t.ttt,
                statsn=self.statsn,
                expcmdsn=exp,
                maxcmdsn=mx,
                r2tsn=r2t.r2tsn,
                buffer_offset=r2t.offset,
                desired_data_transfer_length=r2t.length,
            )
        )

    def _data_lost(self, task: Task, ttt: int, offset: int, length: int, header: bytes) -> None:
        """ERL1: a Data-Out was lost to a digest error; re-solicit it (RFC 7143 7.8)."""
        final = bool(header[1] & 0x80)
        if ttt == NONE_TAG:
            # Unsolicited data lost: solicit it again once unsolicited data ends.
            task.pending_ranges.append((offset, length))
            task.unsolicited_next_datasn += 1
            if final:
                task.unsolicited_done = True
                self._progress(task)
            return
        r2t = task.outstanding.get(ttt)
        if r2t is None:
            return
        r2t.lost.append((offset, length))
        r2t.next_datasn += 1
        if final:
            self._r2t_done(task, r2t)

    def _r2t_done(self, task: Task, r2t: R2TState) -> None:
        del task.outstanding[r2t.ttt]
        for off, ln in r2t.lost:
            # Recovery R2T for the lost range (RFC 7143 7.9).
            task.pending_ranges.appendleft((off, ln))
        if r2t.received < r2t.length and not r2t.lost:
            # F bit before the burst was complete: re-solicit the rest.
            task.pending_ranges.append((r2t.offset + r2t.received, r2t.length - r2t.received))
        self._progress(task)

    def on_data_out(self, pdu: P.ScsiDataOut, now: float) -> None:
        s = self.session
        assert s is not None
        self._ack_statsn(pdu.expstatsn)
        task = s.tasks.get(pdu.itt)
        if task is None or task.conn is not self:
            if pdu.itt in self._aborted_set:
                return  # data for an aborted task is discarded (RFC 7143 4.2.3.3)
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        data = pdu.data
        off = pdu.buffer_offset
        if pdu.ttt == NONE_TAG:
            # Unsolicited (RFC 7143 13.10/13.14): only before the first R2T, within FBL.
            if task.unsolicited_done or self.params.initial_r2t:
                self._sequence_error(pdu, "unsolicited Data-Out not allowed here")
                return
            if pdu.datasn != task.unsolicited_next_datasn:
                self._sequence_error(
                    pdu, f"DataSN {pdu.datasn} expected {task.unsolicited_next_datasn}"
                )
                return
            task.unsolicited_next_datasn += 1
            task.unsolicited_received += len(data)
            if task.unsolicited_received > self.params.first_burst_length:
                self._sequence_error(pdu, "unsolicited data beyond FirstBurstLength")
                return
            self._store(task, off, data)
            task.next_offset = max(task.next_offset, off + len(data))
            if pdu.final:
                task.unsolicited_done = True
                self._progress(task)
            return
        r2t = task.outstanding.get(pdu.ttt)
        if r2t is None:
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        if pdu.datasn != r2t.next_datasn:
            self._sequence_error(pdu, f"DataSN {pdu.datasn} expected {r2t.next_datasn}")
            return
        if off < r2t.offset or off + len(data) > r2t.offset + r2t.length:
            self._sequence_error(pdu, "Data-Out outside the R2T's range")
            return
        r2t.next_datasn += 1
        r2t.received += len(data)
        self._store(task, off, data)
        if pdu.final:
            self._r2t_done(task, r2t)

    def _store(self, task: Task, off: int, data: bytes) -> None:
        buf = task.buffer
        if buf is None or not data:
            return
        end = min(off + len(data), len(buf))
        if off < end:
            buf[off:end] = data[: end - off] if end - off < len(data) else data
            task.received += end - off

    def _sequence_error(self, pdu: P.PDU, why: str) -> None:
        """A DataSN/offset error in a Data-Out (RFC 7143 11.7.5, 11.7.6)."""
        if self.engine.trace:
            log.info("sequence error from %s: %s", self.peer, why)
        # The PDU is rejected and discarded; the task waits for correct data, or for
        # the initiator to abort it or to end the session (RFC 7143 7.1.4 leaves
        # recovery at ERL 0 to the initiator).
        self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))

    # ------------------------------------------------------------------ execution

    def _finish(self, task: Task) -> None:
        s = self.session
        assert s is not None
        s.tasks.pop(task.itt, None)
        s.release_budget(task)
        if task.aborted:
            return
        lu = task.lu
        if lu is None:
            self._no_logical_unit(task)
            return
        mm = task.residual_mismatch
        data_out: bytes = bytes(task.buffer) if task.buffer is not None else b""
        if mm and task.cdb[0] == _COMPARE_AND_WRITE:
            # The CDB's NUMBER OF LOGICAL BLOCKS disagrees with the data the initiator
            # sends (e.g. 256 blocks wrapped to 0 in the one-byte field): the CDB is
            # invalid (SBC-3 5.2), not a residual to ignore.
            self._respond(
                task,
                ScsiStatus.CHECK_CONDITION,
                SENSE_INVALID_FIELD_IN_CDB,
                overflow=mm > 0,
                underflow=mm < 0,
                residual=abs(mm),
            )
            return
        if mm > 0:
            # EDTL below the CDB's transfer length (overflow): FCP-4 9.4.2 a) - run the
            # command, but only the first EDTL bytes come from the initiator; the rest
            # of a block write keeps the medium's current contents.
            data_out = data_out[: task.edtl]
            if task.cdb[0] in _BLOCK_WRITES:
                data_out += _current_contents(lu, task.cdb, task.edtl, mm)
        elif mm < 0:
            data_out = data_out[: task.edtl + mm]  # underflow: only what the CDB asks
        outcome = lu.execute(s.nexus, task.cdb, data_out)
        if outcome.aborted:
            self._preempt_abort(task, outcome.aborted)
        if outcome.pr_changed:
            self.engine.pr_changed(lu)
        if mm and not task.read:
            self._respond(
                task,
                outcome.status,
                outcome.sense,
                overflow=mm > 0,
                underflow=mm < 0,
                residual=abs(mm),
            )
            return
        self._complete(task, outcome.status, outcome.sense, outcome.data)

    def _preempt_abort(self, task: Task, keys: Iterable[tuple[str, int | None]]) -> None:
        """PREEMPT AND ABORT: abort the preempted nexuses' tasks (SPC-4 5.9.11.5)."""
        from iscsi_conformance.scsi.nexus import port_matches

        lu = task.lu

        def hit(t: Task) -> bool:
            s = t.conn.session
            if t.lu is not lu or s is None or s.nexus is None:
                return False
            return any(
                port_matches(ident, s.nexus.initiator_port)
                and (rtp is None or rtp == s.nexus.relative_target_port)
                for ident, rtp in keys
            )

        self.engine.abort_tasks(hit)

    def _respond_check(self, task: Task, sense: bytes) -> None:
        self._forget(task)
        self._respond(task, ScsiStatus.CHECK_CONDITION, sense)

    def _forget(self, task: Task) -> None:
        s = self.session
        if s is not None:
            s.tasks.pop(task.itt, None)
            s.release_budget(task)

    def _no_logical_unit(self, task: Task) -> None:
        """A command to a LUN with no logical unit: the answers of scsi.nolu."""
        self._forget(task)
        s = self.session
        assert s is not None and s.target is not None
        outcome = nolu.respond(task.cdb, task.lun, list(s.target.lus_for(s.initiator_name)))
        if outcome.status == ScsiStatus.GOOD:
            self._complete(task, ScsiStatus.GOOD, b"", outcome.data)
        else:
            self._respond(task, outcome.status, outcome.sense)

    def _complete(self, task: Task, status: int, sense: bytes, data: bytes) -> None:
        """Send Data-In (with phase collapse when possible) and/or SCSI Response."""
        edtl = task.edtl
        n = len(data)
        overflow = underflow = False
        residual = 0
        if task.write and not task.read:
            data = b""
        elif n > edtl:
            overflow, residual = True, n - edtl
            data = data[:edtl]
        elif n < edtl:
            underflow, residual = True, edtl - n
        if not data:
            self._respond(
                task, status, sense, overflow=overflow, underflow=underflow, residual=residual
            )
            return
        self._send_data_in(task, data, status, sense, overflow, underflow, residual)

    def _send_data_in(
        self,
        task: Task,
        data: bytes,
        status: int,
        sense: bytes,
        overflow: bool,
        underflow: bool,
        residual: int,
    ) -> None:
        """Data-In PDUs (RFC 7143 11.7): at most our send limit each, F at the end of
        every MaxBurstLength sequence, the status in the last one when there is no
        sense data (phase collapse, 11.7.4). Payloads go out as memoryview slices of
        ``data`` (no copy); headers come from the hot-path packer."""
        s = self.session
        assert s is not None
        collapse = not sense and status == ScsiStatus.GOOD
        mv = memoryview(data)
        total = len(data)
        seg = self.max_send
        burst = self.params.max_burst_length
        datasn = 0
        off = 0
        exp, mx = s.expcmdsn, s.maxcmdsn
        keep = self.erl > 0
        hd, dd = self.hd, self.dd
        out = self.out
        lun, itt = task.lun_field, task.itt
        while off < total:
            ln = min(seg, total - off)
            burst_end = (off // burst + 1) * burst
            if off + ln > burst_end:
                ln = burst_end - off
            last = off + ln >= total
            flags = 0x80 if (last or off + ln == burst_end) else 0
            statsn = 0
            st = 0
            res = 0
            if last and collapse:
                flags |= 0x01 | (0x04 if overflow else 0) | (0x02 if underflow else 0)
                statsn = self.next_statsn()
                st = status
                res = residual
            bhs = P.DATA_IN_BHS.pack(
                0x25, flags, st, ln, lun, itt, NONE_TAG, statsn, exp, mx, datasn, off, res
            )
            parts = P.frame_parts(bhs, mv[off : off + ln], hd, dd)
            out.extend(parts)
            if keep:
                raw = b"".join(parts)
                task.sent_datain.append(raw)
                if flags & 0x01:
                    self._retain(statsn, raw)
            datasn += 1
            off += ln
        self.engine.mark_dirty(self)
        if not collapse:
            self._respond(
                task,
                status,
                sense,
                overflow=overflow,
                underflow=underflow,
                residual=residual,
                expdatasn=datasn,
            )
        elif keep:
            self._hold(task, statsn)

    def _hold(self, task: Task, statsn: int) -> None:
        """ERL1: keep a finished read's Data-In PDUs for a Data SNACK until its
        status is acknowledged (bounded, oldest dropped first)."""
        task.statsn = statsn
        if len(self._held) >= MAX_HELD_TASKS:
            self._held.pop(next(iter(self._held)))
        self._held.pop(task.itt, None)
        self._held[task.itt] = task

    def _retain(self, statsn: int, raw: bytes) -> None:
        if len(self._retained) >= MAX_RETAINED_STATUS:
            self._retained.pop(next(iter(self._retained)))
        self._retained[statsn] = raw

    def _respond(
        self,
        task: Task,
        status: int,
        sense: bytes,
        *,
        overflow: bool = False,
        underflow: bool = False,
        residual: int = 0,
        expdatasn: int = 0,
    ) -> None:
        s = self.session
        assert s is not None
        data = P.ScsiResponse.sense_segment(sense) if sense else b""
        statsn = self.next_statsn()
        flags = 0x80 | (0x04 if overflow else 0) | (0x02 if underflow else 0)
        bhs = P.SCSI_RESPONSE_BHS.pack(
            0x21,
            flags,
            ScsiResponseCode.COMMAND_COMPLETED_AT_TARGET,
            status,
            len(data),
            0,
            task.itt,
            0,
            statsn,
            s.expcmdsn,
            s.maxcmdsn,
            expdatasn,
            0,
            residual,
        )
        parts = P.frame_parts(bhs, data, self.hd, self.dd)
        self.out.extend(parts)
        self.engine.mark_dirty(self)
        if self.erl > 0:
            self._retain(statsn, b"".join(parts))
            if task.sent_datain:
                self._hold(task, statsn)

    # ------------------------------------------------------------------ NOP

    def on_nop_out(self, pdu: P.NopOut, now: float) -> None:
        self._ack_statsn(pdu.expstatsn)
        if pdu.itt == NONE_TAG:
            # Answer to our NOP-In ping, or a one-way NOP (RFC 7143 11.18): no reply.
            if pdu.ttt != NONE_TAG and pdu.ttt == self._ping_ttt:
                self._ping_ttt = None
            elif not pdu.immediate and self.session is not None:
                self._order(pdu, lambda p: None)
            return
        if pdu.ttt != NONE_TAG:
            # A ping (ITT set) must carry TTT 0xffffffff (RFC 7143 11.18.3).
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        self._order(pdu, self._nop_reply)

    def _nop_reply(self, pdu: P.NopOut) -> None:
        exp, mx = self._window()
        data = pdu.data[: self.max_send]
        self._emit(
            P.NopIn(
                lun=pdu.lun,
                itt=pdu.itt,
                ttt=NONE_TAG,
                statsn=self.next_statsn(),
                expcmdsn=exp,
                maxcmdsn=mx,
                data=data,
            )
        )

    def ping(self, now: float) -> None:
        """Send a NOP-In asking for a NOP-Out (RFC 7143 11.19: TTT set, ITT reserved)."""
        if self.state is not ConnState.FULL_FEATURE or self._ping_ttt is not None:
            return
        ttt = self.engine.alloc_ttt()
        self._ping_ttt = ttt
        self._ping_sent = now
        exp, mx = self._window()
        # StatSN is not advanced for a NOP-In that asks for a reply (11.19.4).
        self._emit(
            P.NopIn(lun=0, itt=NONE_TAG, ttt=ttt, statsn=self.statsn, expcmdsn=exp, maxcmdsn=mx)
        )

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work on this connection: the login time-out,
        the NOP-In answer time-out, or the next keep-alive NOP-In (RFC 7143 11.19)."""
        if self.close_requested:
            return None
        cfg = self.engine.config
        if self.state is ConnState.LOGIN:
            return self.created + cfg.login_timeout if cfg.login_timeout else None
        if self.state is not ConnState.FULL_FEATURE:
            return None
        if self._ping_ttt is not None:
            return self._ping_sent + cfg.nop_in_timeout if cfg.nop_in_timeout else None
        if cfg.nop_in_interval:
            return max(self.last_rx, self._last_ping) + cfg.nop_in_interval
        return None

    def handle_timer(self, now: float) -> None:
        cfg = self.engine.config
        if self.state is ConnState.LOGIN:
            if cfg.login_timeout and now - self.created > cfg.login_timeout:
                self.close()
            return
        if self.state is not ConnState.FULL_FEATURE:
            return
        if self._ping_ttt is not None:
            if cfg.nop_in_timeout and now - self._ping_sent > cfg.nop_in_timeout:
                log.info("no NOP-Out answer from %s: dropping the connection", self.peer)
                self.close()
                if self.session is not None:
                    self.session_detach()
            return
        if cfg.nop_in_interval and now - max(self.last_rx, self._last_ping) >= cfg.nop_in_interval:
            self._last_ping = now
            self.ping(now)

    # ------------------------------------------------------------------ text

    def on_text(self, pdu: P.TextRequest, now: float) -> None:
        self._ack_statsn(pdu.expstatsn)
        self._order(pdu, self._text)

    def _text(self, pdu: P.TextRequest) -> None:
        """A Text Request (RFC 7143 11.10): C-bit continuation of the request, the
        answer split to our send limit with a TTT, SendTargets, FFP negotiation."""
        from iscsi_conformance.core import text as T

        s = self.session
        assert s is not None
        if pdu.itt == NONE_TAG or (pdu.final and pdu.cont):
            # ITT 0xffffffff is reserved; F and C together are a protocol error (11.10.2).
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        exchange = self._text_pending.get(pdu.itt)
        if pdu.ttt != NONE_TAG:
            if exchange is None or exchange[0] != pdu.ttt:
                self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
                return
            ttt, rest = exchange
            if isinstance(rest, list):  # the initiator asks for more of our answer
                self._send_text_chunk(pdu, ttt, rest)
                return
            assembler = rest
        else:
            # TTT 0xffffffff starts a new exchange and drops any unfinished one (11.10.4).
            self._text_pending.pop(pdu.itt, None)
            assembler = T.TextAssembler()
        try:
            pairs = assembler.feed(pdu.data, pdu.cont)
        except ProtocolError:
            self._text_pending.pop(pdu.itt, None)
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        if pairs is None:
            # More request text follows: an empty answer with a TTT asks for it (11.11.2).
            ttt = (
                exchange[0]
                if exchange is not None and pdu.ttt != NONE_TAG
                else self.engine.alloc_ttt()
            )
            self._keep_text(pdu.itt, (ttt, assembler))
            self._emit(P.TextResponse(final=False, cont=False, lun=pdu.lun, itt=pdu.itt, ttt=ttt,
                                      statsn=self.next_statsn(), expcmdsn=s.expcmdsn,
                                      maxcmdsn=s.maxcmdsn))  # fmt: skip
            return
        answer: list[tuple[str, str]] = []
        other: list[tuple[str, str]] = []
        for key, value in pairs:
            if key == "SendTargets":
                if s.session_type is SessionType.NORMAL and value not in ("", s.target_name):
                    answer.append(("SendTargets", "Reject"))
                    continue
                answer.extend(self.engine.send_targets(s, value, self.portal_group, self.local))
            else:
                other.append((key, value))
        if other:
            answer.extend(renegotiate(self.login.neg, other))
            self._apply_ffp_declarations()
        body = T.format_pairs(answer, strict=False) if answer else b""
        chunks = [body[i : i + self.max_send] for i in range(0, len(body), self.max_send)] or [b""]
        ttt = self.engine.alloc_ttt() if len(chunks) > 1 else NONE_TAG
        self._send_text_chunk(pdu, ttt, chunks)

    def _apply_ffp_declarations(self) -> None:
        """A MaxRecvDataSegmentLength declared in full feature phase applies from now
        on to what we send (RFC 7143 6.4, 13.12)."""
        neg = self.login.neg
        if neg is None:
            return
        value = neg.peer_declared.get("MaxRecvDataSegmentLength")
        if value is not None and value.isdigit():
            target = self.session.target if self.session else None
            limit = target.config.max_send_data_segment_length if target else None
            self.max_send = min(int(value), limit or 1 << 24)

    def _keep_text(self, itt: int, state: tuple[int, Any]) -> None:
        if itt not in self._text_pending and len(self._text_pending) >= MAX_TEXT_PENDING:
            self._text_pending.pop(next(iter(self._text_pending)))
        self._text_pending[itt] = state

    def _send_text_chunk(self, pdu: P.TextRequest, ttt: int, chunks: list[bytes]) -> None:
        s = self.session
        assert s is not None
        first, rest = chunks[0], chunks[1:]
        if rest:
            self._keep_text(pdu.itt, (ttt, rest))
        else:
            self._text_pending.pop(pdu.itt, None)
        self._emit(
            P.TextResponse(
                final=not rest,
                cont=bool(rest),
                lun=pdu.lun,
                itt=pdu.itt,
                ttt=ttt if rest else NONE_TAG,
                statsn=self.next_statsn(),
                expcmdsn=s.expcmdsn,
                maxcmdsn=s.maxcmdsn,
                data=first,
            )
        )

    # ------------------------------------------------------------------ logout

    def on_logout(self, pdu: P.LogoutRequest, now: float) -> None:
        self._ack_statsn(pdu.expstatsn)
        self._order(pdu, self._logout)

    def _logout(self, pdu: P.LogoutRequest) -> None:
        s = self.session
        assert s is not None
        reason = pdu.reason & 0x7F
        code = LogoutResponseCode.SUCCESS
        t2w = t2r = 0
        close_self = False
        if reason == LogoutReason.CLOSE_SESSION:
            close_self = True
        elif reason == LogoutReason.CLOSE_CONNECTION:
            if pdu.cid == self.cid:
                close_self = True
            else:
                other = s.connections.get(pdu.cid)
                if other is None:
                    code = LogoutResponseCode.CID_NOT_FOUND
                else:
                    other.close()
                    other.session_detach()
        elif reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            # Connection recovery needs ErrorRecoveryLevel 2 (RFC 7143 11.15.1).
            if self.erl < 2:
                code = LogoutResponseCode.RECOVERY_NOT_SUPPORTED
            else:  # pragma: no cover - we never negotiate ERL 2
                code = LogoutResponseCode.CID_NOT_FOUND
            t2w, t2r = self.params.default_time2wait, self.params.default_time2retain
        else:
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        self._emit(
            P.LogoutResponse(
                response=code,
                itt=pdu.itt,
                statsn=self.next_statsn(),
                expcmdsn=s.expcmdsn,
                maxcmdsn=s.maxcmdsn,
                time2wait=t2w,
                time2retain=t2r,
            )
        )
        if close_self:
            self.state = ConnState.LOGGED_OUT
            self.close()
            if reason == LogoutReason.CLOSE_SESSION:
                self.engine.close_session(s, reason="logout")
            else:
                self.session_detach()

    # ------------------------------------------------------------------ SNACK

    def on_snack(self, pdu: P.SnackRequest, now: float) -> None:
        self._ack_statsn(pdu.expstatsn)
        if self.erl == 0:
            # SNACK is only for ERL > 0 (RFC 7143 11.16): reject it.
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        kind = pdu.snack_type & 0x0F
        if kind == SnackType.STATUS:
            first = pdu.begrun
            count = pdu.runlength
            sns = sorted(self._retained, key=lambda sn: sn_add(sn, -first))
            sent = 0
            for sn in sns:
                if sn_le(first, sn) and (count == 0 or sn_lt(sn, sn_add(first, count))):
                    self.emit_raw(self._retained[sn])
                    sent += 1
            if not sent:
                self.reject(RejectReason.SNACK_REJECT, P.bhs_of(pdu))
            return
        if kind in (SnackType.DATA_R2T, SnackType.R_DATA):
            held = self._held.get(pdu.itt)
            if held is None:
                self.reject(RejectReason.SNACK_REJECT, P.bhs_of(pdu))
                return
            frames = held.sent_datain
            begin = 0 if kind == SnackType.R_DATA else pdu.begrun
            end = (
                len(frames)
                if kind == SnackType.R_DATA or pdu.runlength == 0
                else begin + pdu.runlength
            )
            if begin >= len(frames) or end > len(frames):
                self.reject(RejectReason.SNACK_REJECT, P.bhs_of(pdu))
                return
            for raw in frames[begin:end]:
                self.emit_raw(raw)
            return
        if kind == SnackType.DATA_ACK:
            self._held.pop(pdu.itt, None)
            return
        self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))

    # ------------------------------------------------------------------ task management

    def on_tmf(self, pdu: P.TaskManagementRequest, now: float) -> None:
        self._ack_statsn(pdu.expstatsn)
        if self.session is not None and self.session.session_type is SessionType.DISCOVERY:
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        self._order(pdu, self._tmf)

    def _tmf(self, pdu: P.TaskManagementRequest) -> None:
        from iscsi_conformance.target.tmf import perform_tmf

        s = self.session
        assert s is not None
        response, after = perform_tmf(self, pdu)
        self._emit(
            P.TaskManagementResponse(
                response=response,
                itt=pdu.itt,
                statsn=self.next_statsn(),
                expcmdsn=s.expcmdsn,
                maxcmdsn=s.maxcmdsn,
            )
        )
        if after is not None:
            after()


def _bhs_of_any(pdu: P.PDU) -> bytes:
    if isinstance(pdu, P.UnknownPDU):
        return pdu.bhs
    return P.bhs_of(pdu)


# WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16) (SBC-3 5): block writes whose EDTL
# must match the CDB.
_BLOCK_WRITES = frozenset({0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E})
_COMPARE_AND_WRITE = 0x89


def _current_contents(lu: Any, cdb: bytes, offset: int, length: int) -> bytes:
    """What the medium holds past the first ``offset`` bytes of a block write."""
    from iscsi_conformance.scsi.cdb import decode_block_cdb

    try:
        start = decode_block_cdb(cdb).lba * lu.block_size + offset
        if start + length > lu.backing.size:
            return bytes(length)  # out of range: the LU reports it
        return bytes(lu.backing.read(start, length))
    except (ValueError, AttributeError):
        return bytes(length)


def _known_command(lu: Any, cdb: bytes) -> bool:
    lookup = getattr(lu, "lookup", None)
    return lookup is None or lookup(cdb) is not None


def _data_out_length(lu: Any, cdb: bytes) -> int | None:
    """SPDTL of a write CDB from the LU (scsi.LogicalUnit.data_out_length)."""
    fn = getattr(lu, "data_out_length", None)
    if fn is None:
        return None
    try:
        return int(fn(cdb))
    except Exception:
        return None


_FFP_HANDLERS: dict[type, Callable[[Connection, Any, float], None]] = {
    P.ScsiCommand: Connection.on_scsi_command,
    P.ScsiDataOut: Connection.on_data_out,
    P.NopOut: Connection.on_nop_out,
    P.TextRequest: Connection.on_text,
    P.LogoutRequest: Connection.on_logout,
    P.SnackRequest: Connection.on_snack,
    P.TaskManagementRequest: Connection.on_tmf,
}

_ORDERED_RUNNERS: dict[type, Callable[[Connection, Any], None]] = {
    P.NopOut: lambda c, p: c._nop_reply(p) if p.itt != NONE_TAG else None,
    P.TextRequest: Connection._text,
    P.LogoutRequest: Connection._logout,
    P.TaskManagementRequest: Connection._tmf,
}
