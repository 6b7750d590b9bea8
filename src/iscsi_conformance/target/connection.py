"""One TCP connection of the target: login, then full-feature phase (RFC 7143 8.1), sans-IO.

Theory of operation: ``Connection`` owns the wire of one connection. Bytes come in
through ``receive_data`` (a ``PDUDecoder`` bounded by the MaxRecvDataSegmentLength we
declared, 13.12); during login each Login Request goes to ``target.login`` (the core's
table), whose events the connection acts on (reinstate, create or join a session, T5);
in full-feature phase each PDU goes to its handler, non-immediate ones in CmdSN order
(``_order``), and the connection's StatSN numbers what goes out (ExpStatSN
acknowledges it, 4.2.2.2). NOP-In pings, Text negotiation and SendTargets, Logout,
SNACK and task management are here; the SCSI data path is ``task.TaskIO``.

Framing or sequencing errors: at ERL 0 the connection closes (7.1); at ERL 1 a data
digest error is answered with a Reject and recovered (7.8).
"""

from __future__ import annotations

import enum
import functools
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.codes import (
    LoginStatus,
    LogoutReason,
    LogoutResponseCode,
    Opcode,
    RejectReason,
    SnackType,
)
from iscsi_conformance.core.login import (
    ConnectionReinstated,
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
from iscsi_conformance.target.login import ConnectionLogin, renegotiate
from iscsi_conformance.target.session import (
    Session,
    SessionType,
    advance_connection,
    session_params,
)
from iscsi_conformance.target.states import ConnectionInput, ConnectionState
from iscsi_conformance.target.task import NONE_TAG, Task, TaskIO
from iscsi_conformance.target.tmf import perform_tmf

if TYPE_CHECKING:
    from iscsi_conformance.target.engine import TargetEngine

log = logging.getLogger("iscsi_conformance.target")

#: The states in which a transport failure is a T15/T16/T17 (RFC 7143 8.1.2).
_OPERATIONAL = frozenset(
    {
        ConnectionState.S5_LOGGED_IN,
        ConnectionState.S6_IN_LOGOUT,
        ConnectionState.S7_LOGOUT_REQUESTED,
    }
)

MAX_TEXT_PENDING = 16  # Text responses waiting for the initiator to continue

MAX_ABORTED_TAGS = 1024

#: The PDUs that carry a CmdSN and so may wait for it (RFC 7143 3.2.2.1): what ``_order``
#: delivers, each to a runner that takes that type.
_Ordered = TypeVar(
    "_Ordered", P.ScsiCommand, P.NopOut, P.TextRequest, P.LogoutRequest, P.TaskManagementRequest
)


class AnswerEncodingError(RuntimeError):
    """The target built an answer that its own strict encoder refuses (an internal error)."""


# --------------------------------------------------------------------------- state


class ConnState(enum.Enum):
    """Target connection states (RFC 7143 8.1.2 names in comments)."""

    LOGIN = "S3_XPT_UP/S4_IN_LOGIN"
    FULL_FEATURE = "S5_LOGGED_IN"
    LOGGED_OUT = "S6_IN_LOGOUT"
    CLOSED = "S1_FREE"


class Connection(TaskIO):
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
        #: Where the connection is in RFC 7143 8.1's target diagram once logged in (the
        #: login itself is core.login's table), and the T-labels taken.
        self.rfc_state: ConnectionState | None = None
        self.rfc_labels: list[str] = []
        self.statsn = 0
        self.out: list[bytes | memoryview] = []  # memoryview: Data-In payload slices
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
        self.recovering = False  # logged out with reason 2 (RFC 7143 11.14.1)
        self.max_send = 8192
        self.datain_reverse = False  # TargetConfig.datain_order "reverse", DataPDUInOrder=No
        self.datain_sequences_reverse = False  # "reverse-sequences", DataSequenceInOrder=No
        self._aborted_itts: deque[int] = deque(maxlen=MAX_ABORTED_TAGS)
        self._aborted_set: set[int] = set()
        self._retained: dict[int, bytes] = {}  # ERL1: statsn -> encoded status PDU
        self._held: dict[int, Task] = {}  # ERL1: itt -> finished read task (Data-In kept)
        self._ping_ttt: int | None = None
        self._ping_sent = 0.0
        self._last_ping = now
        # Text exchanges in progress: itt -> (ttt, answer chunks still to send, or the
        # TextAssembler of a request still arriving with C=1).
        self._text_pending: dict[int, tuple[int, list[bytes] | T.TextAssembler]] = {}
        self.login = ConnectionLogin(
            targets=engine.target_configs,
            discovery=engine.config.discovery,
            portal_group=portal_group,
            allocate_tsih=engine.alloc_tsih,
            find_session=engine.existing_session,
            find_session_by_isid=functools.partial(
                engine.existing_session_by_isid, tpgt=portal_group
            ),
            cmd_window=engine.cmd_window,
            rng=engine.rng,
        )

    def advance(self, inp: ConnectionInput) -> None:
        """Take the connection table's transition (RFC 7143 8.1.2, T8-T18)."""
        if self.rfc_state is not None:
            self.rfc_state = advance_connection(self.rfc_state, inp, self.rfc_labels, self)

    def __repr__(self) -> str:
        return f"Connection(peer={self.peer!r}, cid={self.cid}, state={self.state.name})"

    # ------------------------------------------------------------------ output

    def _emit(self, pdu: P.PDU) -> bytes:
        try:
            raw = P.encode(pdu, header_digest=self.hd, data_digest=self.dd)
        except PDUFormatError as exc:
            # Our own answer breaks a format rule: our bug, never the peer's protocol
            # error (which a PDUFormatError would otherwise be taken for).
            raise AnswerEncodingError(f"cannot encode our own {pdu!r}: {exc}") from exc
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

    def session_detach(self, *, replaced: bool = False) -> None:
        """Leave the session; ``replaced``: a reinstating connection takes this one's
        place, so the session does not end when this was its last connection."""
        s = self.session
        if s is None:
            return
        if s.connections.get(self.cid) is self:
            del s.connections[self.cid]
        # Tasks with allegiance to this connection die with it at ERL < 2 (RFC 7143
        # 6.1.4). At ERL 2 a failed connection, or one removed for recovery, leaves
        # them to a TASK REASSIGN on another connection (7.2.2, 11.5.1); a Logout
        # that closes the connection (T13 without reason 2) still ends them.
        graceful = self.rfc_labels[-1:] == ["T13"]
        keep = self.erl >= 2 and (self.recovering or not graceful)
        if keep:
            for t in s.tasks.values():
                if t.conn is self:
                    t.outstanding.clear()  # its R2Ts went with the connection
            s.orphans.update(self._held)  # finished, status not acknowledged
            self._held = {}
        for itt, t in list(s.tasks.items()):
            if t.conn is self and not keep:
                t.aborted = True
                s.release_budget(t)
                del s.tasks[itt]
        for sn, (c, _) in list(s.pending.items()):
            if c is self:
                del s.pending[sn]
        if replaced:
            self.session = None  # detached for good: connection_lost has nothing to do
            return
        if not s.connections:
            # The last connection logged out (T13): a session closure (N3); otherwise
            # it failed, and at ErrorRecoveryLevel < 2 nothing waits for recovery. At
            # ERL 2 the session waits Time2Wait + Time2Retain for a new connection
            # (RFC 7143 6.3.4 / 7.2.2); the engine's timer ends it then.
            if keep:
                if not s.retaining:
                    s.retaining = True
                    s.retain_until = None
                    self.engine.mark_retaining(s)
            else:
                self.engine.close_session(
                    s, reason="logout" if graceful else "last connection gone"
                )

    def connection_lost(self) -> None:
        """The transport is gone (peer closed, reset, or we closed it)."""
        if self.closed:
            return
        self.closed = True
        self.state = ConnState.CLOSED
        if self.rfc_state in _OPERATIONAL:  # T15, T16, T17
            self.advance(ConnectionInput.TRANSPORT_FAILED)
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
        vcode: int = 0,
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
                async_vcode=vcode,
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
                # Only Login Requests before the login completes. RFC 3720 3.2.3 (= RFC
                # 7143 4.2.3): before any Login Request the target closes at once; once
                # the login phase has started, it MUST send a Login reject "invalid
                # during login" (020B) and then disconnect.
                if self.login.started:
                    self._login_failed(LoginStatus.INVALID_DURING_LOGIN)
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

    def _login_failed(self, status: LoginStatus = LoginStatus.INITIATOR_ERROR) -> None:
        rsp = self.login.fail(status)
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
                    old_conn.advance(ConnectionInput.REINSTATED)  # T8
                    old_conn.close()
                    # this connection takes its place (6.3.4: the implicit logout of the
                    # old one, then the equivalent of a new connection login): the
                    # session does not end with it, even when it was the only one
                    old_conn.session_detach(replaced=True)
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
        self.rfc_state = ConnectionState.S5_LOGGED_IN
        self.rfc_labels.append("T5")
        self.params = params
        self.state = ConnState.FULL_FEATURE
        self.statsn = statsn
        self.hd = params.header_digest
        self.dd = params.data_digest
        self.erl = params.error_recovery_level
        cap = session.target.config.max_send_data_segment_length if session.target else None
        self.max_send = min(params.max_send_data_segment_length, cap or 1 << 24)
        order = session.target.config.datain_order if session.target else "offset"
        self.datain_reverse = order == "reverse" and not params.data_pdu_in_order
        self.datain_sequences_reverse = (
            order == "reverse-sequences" and not params.data_sequence_in_order
        )
        dec = self.decoder
        dec.header_digest = params.header_digest
        dec.data_digest = params.data_digest
        dec.max_data_segment_length = params.max_recv_data_segment_length_local
        session.connections[self.cid] = self
        session.retaining = False  # a connection again: no longer waiting (ERL 2)
        session.retain_until = None

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

    def _order(self, pdu: _Ordered, run: Callable[[_Ordered], None]) -> None:
        """Deliver a non-immediate command in CmdSN order (RFC 7143 4.2.2.1, 3.2.2.1)."""
        s = self.session
        assert s is not None
        if pdu.immediate:
            run(pdu)
            return
        sn = pdu.cmdsn
        if sn == s.expcmdsn and sn_le(sn, s.maxcmdsn):  # a closed window holds even ExpCmdSN
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

    def announce_window(self) -> None:
        """A NOP-In that only carries ExpCmdSN and MaxCmdSN: ITT and TTT reserved, StatSN
        the next one, not advanced (RFC 7143 11.4.11: a MaxCmdSN that changes with no
        PDU pending to carry it is sent in a NOP-In; 11.19)."""
        if self.state is not ConnState.FULL_FEATURE:
            return
        exp, mx = self._window()
        self._emit(
            P.NopIn(
                lun=0, itt=NONE_TAG, ttt=NONE_TAG, statsn=self.statsn, expcmdsn=exp, maxcmdsn=mx
            )
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
        s = self.session
        assert s is not None
        if pdu.itt == NONE_TAG or (pdu.final and pdu.cont):
            # The reserved ITT 0xffffffff (11.2.1.8) is an illegal field, and C=1 with
            # F=1 inconsistent fields (11.10.2): format errors, on which the receiver
            # ends the session's connections (7.7); the Reject says why before the close.
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            self.close()
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

    def _keep_text(self, itt: int, state: tuple[int, list[bytes] | T.TextAssembler]) -> None:
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
            # Connection recovery needs ErrorRecoveryLevel 2 (RFC 7143 11.15.1); the
            # tasks of the connection removed wait for TASK REASSIGN (7.2.2).
            t2w, t2r = self.params.default_time2wait, self.params.default_time2retain
            if self.erl < 2:
                code = LogoutResponseCode.RECOVERY_NOT_SUPPORTED
            elif pdu.cid == self.cid:
                self.recovering = close_self = True
            else:
                other = s.connections.get(pdu.cid)
                if other is None:
                    code = LogoutResponseCode.CID_NOT_FOUND
                else:
                    other.recovering = True
                    other.close()
                    other.session_detach()
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
            self.advance(ConnectionInput.LOGOUT_RECEIVED)  # T9 (T10 if it was requested)
            self.advance(ConnectionInput.LOGOUT_SUCCEEDED)  # T13: the response is out
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
                # statuses never sent or already acknowledged: Protocol Error (11.16)
                self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        if kind == SnackType.DATA_R2T:
            running = self.session.tasks.get(pdu.itt) if self.session is not None else None
            if running is not None and running.conn is self and running.delivered:
                # a task still taking data: BegRun names R2Ts by R2TSN (11.16.6)
                if not self.resend_r2ts(running, pdu.begrun, pdu.runlength):
                    # no outstanding R2T in the run: never sent, or answered (11.16)
                    self.reject(
                        RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu), datasn_r2tsn=running.r2tsn
                    )
                return
        if kind == SnackType.R_DATA:
            held = self._held.get(pdu.itt)
            if held is None or held.reply is None or pdu.ttt in (0, NONE_TAG):
                # no Data-In kept (never sent, or acknowledged), or no SNACK Tag
                # (11.16.5: neither 0 nor 0xffffffff): Protocol Error (11.16)
                self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
                return
            self.resend_rdata(held, pdu.ttt)
            return
        if kind == SnackType.DATA_R2T:
            held = self._held.get(pdu.itt)
            if held is None:
                # no Data-In kept for the tag: never sent, or acknowledged (11.16)
                self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
                return
            frames = held.sent_datain
            everything = pdu.begrun == 0 and pdu.runlength == 0
            # BegRun is a DataSN: the first kept one is sent_base (after the R2Ts of a
            # bidirectional command, which share the sequence, 4.2.2.4); one below it
            # wraps past the end and is rejected like one never sent (11.16).
            begin = 0 if everything else (pdu.begrun - held.sent_base) & 0xFFFFFFFF
            end = len(frames) if everything or pdu.runlength == 0 else begin + pdu.runlength
            if begin >= len(frames) or end > len(frames):
                # DataSNs never sent: Protocol Error, with the next DataSN the target
                # would send for the task (11.16, 11.17.2)
                nxt = (held.sent_base + len(frames)) & 0xFFFFFFFF
                self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu), datasn_r2tsn=nxt)
                return
            for raw in frames[begin:end]:
                self.emit_raw(raw)
            return
        if kind == SnackType.DATA_ACK:
            # the task is named by the Target Transfer Tag of its Data-In with the A bit
            # (11.16.5; the Initiator Task Tag is 0xffffffff, 11.16.4); none kept under
            # it (its status acknowledged since, say): nothing left to free
            acked = next((t for t in self._held.values() if t.ack_ttt == pdu.ttt), None)
            if acked is not None and pdu.ttt != NONE_TAG and not self.data_acked(acked, pdu.begrun):
                # BegRun past the Data-In sent acknowledges data never sent (11.17.1)
                self.reject(RejectReason.INVALID_DATA_ACK, P.bhs_of(pdu))
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


# Any: each handler takes the PDU class it is keyed by, which a dict's type cannot say.
_FFP_HANDLERS: dict[type[P.PDU], Callable[[Connection, Any, float], None]] = {
    P.ScsiCommand: Connection.on_scsi_command,
    P.ScsiDataOut: Connection.on_data_out,
    P.NopOut: Connection.on_nop_out,
    P.TextRequest: Connection.on_text,
    P.LogoutRequest: Connection.on_logout,
    P.SnackRequest: Connection.on_snack,
    P.TaskManagementRequest: Connection.on_tmf,
}

# Any: as above, each runner takes the PDU class it is keyed by.
_ORDERED_RUNNERS: dict[type[P.PDU], Callable[[Connection, Any], None]] = {
    P.NopOut: lambda c, p: c._nop_reply(p) if p.itt != NONE_TAG else None,
    P.TextRequest: Connection._text,
    P.LogoutRequest: Connection._logout,
    P.TaskManagementRequest: Connection._tmf,
}
