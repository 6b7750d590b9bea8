"""The reference initiator's asyncio adapter: sessions, connections, discovery.

Theory of operation: this is the only part of the initiator with sockets and clocks.
A :class:`Connection` owns one TCP stream. It first runs the login
(:class:`~.login_flow.LoginFlow` over ``core.login``) request by request, then starts a reader task
that decodes each PDU (with the negotiated digests), records it in the
connection's :class:`~.trace.PDUTrace`, feeds it to the sans-IO
:class:`~.engine.InitiatorConnection` and resolves the future waiting on its ITT.
Whatever the engine queues (Data-Out answering an R2T, a NOP-Out answering a target
ping) is written at once. A :class:`Session` groups connections that share one
:class:`~.engine.SessionSequencer` (RFC 7143 4.2.2: CmdSN is session-wide).

Two hooks make it an instrument: ``login_hook`` may rewrite (or replace with raw
bytes, or drop) each outgoing Login Request; ``pdu_hook`` does the same for every
PDU in full-feature phase. ``Connection.send_pdu`` puts any PDU (tampered if asked)
on the wire in sequence with the rest.

Usage::

    async with Session.connect("127.0.0.1", 3260, "iqn.2003-01.org.example:t1",
                               initiator_name="iqn.2024-01.org.example:i") as s:
        r = await s.inquiry(0)
        await s.write(0, 0, b"x" * 4096)
        assert await s.read(0, 0, 8) == b"x" * 4096
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from iscsi_conformance.core import discovery, text
from iscsi_conformance.core.codes import AsyncEvent, LogoutReason, TaskAttribute, TmfFunction
from iscsi_conformance.core.discovery import (
    DiscoveredTarget,
    Portal,
    parse_send_targets,
    remap_addresses,
)
from iscsi_conformance.core.negotiation import NegotiatedParameters
from iscsi_conformance.core.pdu import PDU, NopIn, Tamper, encode
from iscsi_conformance.credentials import ChapAccount
from iscsi_conformance.errors import (
    ISCSIConformanceError,
    LoginError,
    ProtocolError,
    TransportError,
)
from iscsi_conformance.scsi import cdb as cdbs

from .engine import (
    NONE_TAG,
    AsyncMessageReceived,
    CommandCompleted,
    Event,
    InitiatorConnection,
    LogoutCompleted,
    PDURejected,
    PingAnswered,
    ProtocolViolated,
    ScsiResult,
    SessionSequencer,
    TaskManagementCompleted,
    TextCompleted,
    make_isid,
)
from .login_flow import LoginFlow, LoginHook, LoginResult, LoginSend, TargetRedirected
from .trace import PDUTrace
from .url import ISCSIURL, format_hostport, parse_url
from .wire import ConnectionClosed, decode_raw, open_connection, read_raw_pdu

__all__ = [
    "DEFAULT_INITIATOR_NAME",
    "CommandRejected",
    "Connection",
    "DiscoveredTarget",
    "Portal",
    "RecoveryRecord",
    "ResponseTimeout",
    "Session",
    "discover",
    "parse_send_targets",
    "parse_target_address",
    "remap_addresses",
]

DEFAULT_INITIATOR_NAME = "iqn.2024-01.org.iscsi-conformance:reference-initiator"
DEFAULT_TIMEOUT = 10.0

Rng = Callable[[int], bytes]
PDUHook = Callable[[PDU], "PDU | bytes | None"]


class ResponseTimeout(TransportError, TimeoutError):
    """The target did not answer within the time allowed."""


class CommandRejected(ProtocolError):
    """The target answered a request with a Reject PDU (RFC 7143 11.17)."""

    def __init__(self, reason: int, pdu: Any) -> None:
        from iscsi_conformance.core.codes import RejectReason

        try:
            name = RejectReason(reason).name
        except ValueError:
            name = "undefined reason"
        super().__init__(
            f"rejected by the target: reason {reason:#04x} ({name})", section="RFC 7143 11.17"
        )
        self.reason = reason
        self.pdu = pdu


# ====================================================================== discovery data


# Portal, DiscoveredTarget, remap_addresses and parse_send_targets live in core.discovery.


def parse_target_address(value: str) -> Portal:
    """``domainname[:port][,portal-group-tag]`` (RFC 7143 13.8); IPv6 in brackets.

    Kept as given (no resolution); a malformed host is kept verbatim
    (:func:`iscsi_conformance.core.discovery.parse_target_address`, not strict).
    """
    return discovery.parse_target_address(value, strict=False)


# ====================================================================== connection


@dataclasses.dataclass
class RecoveryRecord:
    """What one connection recovery did (``Session.recoveries``), for tests and logs."""

    failed_cid: int
    itts: tuple[int, ...]
    waited: float = 0.0  # seconds from the failure to the first recovery step
    method: str = ""  # "implicit" (same CID) or "logout" (reason 2 on a new CID)
    answers: dict[int, int] = dataclasses.field(default_factory=dict)  # ITT -> TMF code
    error: str = ""


class Connection:
    """One TCP connection of a session (login, then full-feature phase)."""

    def __init__(
        self,
        session: Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        cid: int,
        label: str,
        pdu_hook: PDUHook | None = None,
    ) -> None:
        self.session = session
        self.cid = cid
        self._reader = reader
        self._writer = writer
        self.trace = PDUTrace(label)
        self.engine: InitiatorConnection | None = None
        self.header_digest = False
        self.data_digest = False
        self.pdu_hook = pdu_hook
        self.login_result: LoginResult | None = None
        self.events: list[Event] = []  # everything the engine reported, in order
        self.unsolicited: asyncio.Queue[Event] = asyncio.Queue()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self.close_reason: BaseException | None = None
        self._async_tasks: set[asyncio.Task[None]] = set()  # answers to Async Messages
        self._closing = False  # we close it (close(), a logout): no recovery

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def violations(self) -> list[ProtocolViolated]:
        return [e for e in self.events if isinstance(e, ProtocolViolated)]

    @property
    def expstatsn(self) -> int:
        return self.engine.expstatsn if self.engine else 0

    # ------------------------------------------------------------------ raw I/O

    async def _write(self, raw: bytes, pdu: Any, note: str = "") -> None:
        self.trace.record("send", time.monotonic(), pdu, raw, note)
        try:
            self._writer.write(raw)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._mark_closed(
                TransportError(f"connection to {self.session.portal} lost while sending: {exc}")
            )
            raise self.close_reason from None  # type: ignore[misc]

    async def _read(self) -> PDU:
        try:
            raw = await read_raw_pdu(
                self._reader, header_digest=self.header_digest, data_digest=self.data_digest
            )
        except ConnectionClosed as exc:
            if exc.partial:
                self.trace.record("recv", time.monotonic(), None, exc.partial, "truncated PDU")
            raise
        try:
            pdu = decode_raw(raw, header_digest=self.header_digest, data_digest=self.data_digest)
        except ProtocolError as exc:
            self.trace.record("recv", time.monotonic(), None, raw, f"undecodable: {exc}")
            raise
        self.trace.record("recv", time.monotonic(), pdu, raw)
        return pdu

    async def send_pdu(
        self,
        pdu: PDU | bytes,
        *,
        strict: bool = True,
        tamper: Tamper | None = None,
        header_digest: bool | None = None,
        data_digest: bool | None = None,
    ) -> None:
        """Put ``pdu`` (or raw bytes) on the wire now, bypassing the engine.

        Digests default to the negotiated ones; ``tamper`` implies non-strict encoding.
        Sequence numbers are the caller's (see ``Session.next_cmdsn``).
        """
        if isinstance(pdu, bytes | bytearray):
            await self._write(bytes(pdu), None, "raw bytes")
            return
        hd = self.header_digest if header_digest is None else header_digest
        dd = self.data_digest if data_digest is None else data_digest
        raw = encode(
            pdu, header_digest=hd, data_digest=dd, strict=strict and tamper is None, tamper=tamper
        )
        await self._write(raw, pdu, "tampered" if tamper else "")

    async def flush(self) -> None:
        """Write whatever the engine queued, through ``pdu_hook``."""
        if self.engine is None:
            return
        for pdu in self.engine.pdus_to_send():
            out: Any = pdu
            if self.pdu_hook is not None:
                out = self.pdu_hook(pdu)
                if out is None:
                    self.trace.record("send", time.monotonic(), pdu, b"", "dropped by pdu_hook")
                    continue
            if isinstance(out, bytes | bytearray):
                await self._write(bytes(out), pdu, "replaced by pdu_hook")
            else:
                strict = out is pdu
                raw = encode(
                    out,
                    header_digest=self.header_digest,
                    data_digest=self.data_digest,
                    strict=strict,
                )
                await self._write(raw, out, "" if strict else "rewritten by pdu_hook")

    # ------------------------------------------------------------------ login

    async def login(self, flow: LoginFlow, timeout: float | None) -> LoginResult:
        """Run the login phase to its end (raises LoginError & co.).

        The login itself (and ``login_hook``) is ``flow``'s: this only moves PDUs.
        """
        step: LoginSend | LoginResult = flow.start()
        try:
            async with asyncio.timeout(timeout):
                while isinstance(step, LoginSend):
                    await self._send_login(step)
                    try:
                        pdu = await self._read()
                    except ConnectionClosed:
                        flow.connection_lost()
                        raise TransportError(
                            f"connection to {self.session.portal} closed by the target during login"
                        ) from None
                    step = flow.receive(pdu)
        except TimeoutError:
            flow.timed_out()
            raise
        self.login_result = step
        return step

    async def _send_login(self, step: LoginSend) -> None:
        out = step.wire
        if out is None:
            raise LoginError("login_hook dropped the Login Request")
        if isinstance(out, bytes | bytearray):
            await self._write(bytes(out), step.request, "replaced by login_hook")
        else:
            await self._write(
                encode(out, strict=step.strict),
                out,
                "" if step.strict else "rewritten by login_hook",
            )

    def start_full_feature(self, result: LoginResult, sequencer: SessionSequencer) -> None:
        """Switch to full-feature phase: digests on, engine and reader task started."""
        n = result.negotiated
        self.header_digest = bool(n.header_digest)
        self.data_digest = bool(n.data_digest)
        self.engine = InitiatorConnection(
            sequencer,
            cid=self.cid,
            params=n,
            expstatsn=(result.statsn + 1) & 0xFFFFFFFF,
        )
        self._reader_task = asyncio.get_running_loop().create_task(self._reader_loop())

    # ------------------------------------------------------------------ FFP

    async def _reader_loop(self) -> None:
        assert self.engine is not None
        try:
            while True:
                pdu = await self._read()
                for event in self.engine.receive_pdu(pdu):
                    self._dispatch(event)
                await self.flush()
        except ConnectionClosed:
            reason = (
                "the target closed the connection after logout"
                if self.engine.logged_out
                else "connection closed by the target"
            )
            self._mark_closed(ConnectionClosed(f"{reason} ({self.session.portal})"))
        except ProtocolError as exc:  # undecodable PDU, digest error: ERL 0 drops the connection
            self._mark_closed(exc)
        except (TransportError, OSError) as exc:
            self._mark_closed(exc if isinstance(exc, TransportError) else TransportError(str(exc)))
        except asyncio.CancelledError:
            self._mark_closed(TransportError("connection closed by us"))
            raise

    def _dispatch(self, event: Event) -> None:
        self.events.append(event)
        itt: int | None = None
        value: Any = None
        if isinstance(event, CommandCompleted):
            itt, value = event.itt, event.result
        elif isinstance(event, PingAnswered):
            itt, value = event.itt, event.pdu
        elif isinstance(event, TaskManagementCompleted):
            itt, value = event.itt, event.response
        elif isinstance(event, TextCompleted):
            itt, value = event.itt, event
        elif isinstance(event, LogoutCompleted):
            itt, value = event.itt, event.pdu
        elif isinstance(event, PDURejected) and event.itt is not None:
            fut = self._waiters.pop(event.itt, None)
            if fut is not None and not fut.done():
                fut.set_exception(CommandRejected(event.reason, event.pdu))
            return
        if itt is not None:
            fut = self._waiters.pop(itt, None)
            if fut is not None and not fut.done():
                fut.set_result(value)
            return
        self.unsolicited.put_nowait(event)
        if isinstance(event, AsyncMessageReceived):
            self.session.async_messages.append(event.pdu)
            self._honour_async(event.pdu.async_event)

    def _honour_async(self, event: int) -> None:
        """What RFC 7143 11.9.1 asks of an initiator, started at once: a logout request
        (event 1) is answered by a Logout, "close the connection" or, on the session's
        last connection, "close the session"; a renegotiation request (event 4) by an
        empty Text Request on this connection. Drops (events 2, 3) need nothing: the
        target closes. A SCSI or vendor event is left to the application
        (``Session.async_messages``)."""
        if event == AsyncEvent.CONNECTION_DROP:
            # Parameter1 names the CID, 2 and 3 are its Time2Wait and Time2Retain
            # (11.9.1): they replace the negotiated ones for its recovery.
            pdu = self.session.async_messages[-1]
            self.session.drop_timers[pdu.parameter1] = (pdu.parameter2, pdu.parameter3)
            return
        if event == AsyncEvent.LOGOUT_REQUESTED:
            job = self._logout_on_request()
        elif event == AsyncEvent.NEGOTIATION_REQUESTED:
            job = self._renegotiate()
        else:
            return
        task = asyncio.get_running_loop().create_task(job)
        self._async_tasks.add(task)
        task.add_done_callback(self._async_tasks.discard)

    async def _logout_on_request(self) -> None:
        live = [c for c in self.session.connections if not c.closed]
        reason = LogoutReason.CLOSE_SESSION if live == [self] else LogoutReason.CLOSE_CONNECTION
        with contextlib.suppress(ISCSIConformanceError):
            await self.session.logout(reason, connection=self)

    async def _renegotiate(self) -> None:
        with contextlib.suppress(ISCSIConformanceError):
            await self.session.text(b"", connection=self)

    def _mark_closed(self, reason: BaseException) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        if self._recoverable():
            # ErrorRecoveryLevel 2: the SCSI tasks of a failed connection go on within
            # the session (RFC 7143 7.2.2); their callers keep waiting.
            assert self.engine is not None
            tasks = self.engine.detach_for_recovery()
            waiters = {t.itt: self._waiters.pop(t.itt) for t in tasks if t.itt in self._waiters}
            self.session._start_recovery(self, tasks, waiters)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(reason)
        self._waiters.clear()
        try:
            self._writer.close()
        except Exception:  # pragma: no cover - already gone
            pass

    def _recoverable(self) -> bool:
        """A failure of this connection is one the session recovers from: ERL 2 was
        agreed, we did not close or log it out ourselves, and recovery is on."""
        return (
            self.engine is not None
            and not self._closing
            and not self.engine.logged_out
            and self.session.recover_connections
            and self.session.negotiated.error_recovery_level >= 2
            and any(t.kind == "scsi" for t in self.engine.tasks.values())
        )

    def _expect(self, itt: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(self.close_reason or TransportError("connection closed"))
        else:
            self._waiters[itt] = fut
        return fut

    async def wait(
        self, itt: int, fut: asyncio.Future[Any], what: str, timeout: float | None
    ) -> Any:
        """Send what is queued, then wait for the answer to ``itt``."""
        await self.flush()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self._waiters.pop(itt, None)
            if self.engine is not None:
                self.engine.abandon(itt)
            raise ResponseTimeout(
                f"no answer to {what} (ITT {itt:#x}) within {timeout} s"
            ) from None

    async def wait_closed(self, timeout: float | None = None) -> BaseException | None:
        """Wait until the connection closes; returns why."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.close_reason

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event no request waited for (async message, target ping, violation...)."""
        try:
            return await asyncio.wait_for(self.unsolicited.get(), timeout)
        except TimeoutError:
            raise ResponseTimeout(f"no unsolicited event within {timeout} s") from None

    async def close(self) -> None:
        self._closing = True
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):
                pass
        self._mark_closed(TransportError("connection closed by us"))
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except Exception:
            pass


# ====================================================================== session


class _Connector:
    """``Session.connect(...)`` result: ``await`` it or use ``async with``."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._session: Session | None = None

    def __await__(self) -> Any:
        return self._factory().__await__()

    async def __aenter__(self) -> Session:
        self._session = await self._factory()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


class Session:
    """A logged-in iSCSI session (one or more connections); see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        target_name: str | None,
        *,
        initiator_name: str,
        isid: int,
        session_type: str,
        timeout: float | None,
        rng: Rng,
    ) -> None:
        self.host = host
        self.port = port
        self.target_name = target_name
        self.initiator_name = initiator_name
        self.isid = isid
        self.session_type = session_type
        self.timeout = timeout
        self.rng = rng
        self.tsih = 0
        self.negotiated: NegotiatedParameters = NegotiatedParameters()
        self.sequencer = SessionSequencer()
        self.connections: list[Connection] = []
        self.async_messages: list[Any] = []
        self.block_sizes: dict[int, int] = {}
        self.retry_unit_attention = 3  # helpers only; execute() never retries
        self._chap: tuple[ChapAccount | None, ChapAccount | None] = (None, None)
        self._login_args: dict[str, Any] = {}
        self._keys: Mapping[str, str | None] | None = None  # the leading login's offer
        self.logged_out = False
        # ErrorRecoveryLevel 2 (RFC 7143 7.2.2): when a connection with SCSI tasks fails,
        # a connection of the session takes them over by TASK REASSIGN. "auto" logs in
        # with a new CID and logs the failed one out with reason 2 when MaxConnections
        # allows a second connection, else reuses its CID (an implicit logout, 6.3.4);
        # "same" and "new" force one way.
        self.recover_connections = True
        self.recovery_cid = "auto"
        self.drop_timers: dict[int, tuple[int, int]] = {}  # CID -> Async event 2 timers
        self.recoveries: list[RecoveryRecord] = []
        self._recovery_jobs: set[asyncio.Task[None]] = set()

    @property
    def portal(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def trace(self) -> PDUTrace:
        """The leading connection's PDU trace."""
        return self.connections[0].trace

    @property
    def traces(self) -> list[PDUTrace]:
        return [c.trace for c in self.connections]

    @property
    def violations(self) -> list[ProtocolViolated]:
        return [v for c in self.connections for v in c.violations]

    @property
    def login_result(self) -> LoginResult | None:
        return self.connections[0].login_result if self.connections else None

    def next_cmdsn(self, immediate: bool = False) -> int:
        """Take a CmdSN for a PDU a test builds itself (advances unless immediate)."""
        return self.sequencer.take_cmdsn(immediate)

    # ------------------------------------------------------------------ connect

    @classmethod
    def connect(
        cls,
        host: str,
        port: int = 3260,
        target_name: str | None = None,
        *,
        initiator_name: str = DEFAULT_INITIATOR_NAME,
        isid: int | None = None,
        tsih: int = 0,
        cid: int = 0,
        chap: ChapAccount | None = None,
        mutual_chap: ChapAccount | None = None,
        chap_algorithms: Sequence[int] = (5,),
        keys: Mapping[str, str | None] | None = None,
        session_type: str = "Normal",
        auth_method: str | None = None,
        skip_security: bool = False,
        login_hook: LoginHook | None = None,
        pdu_hook: PDUHook | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        rng: Rng = os.urandom,
        follow_redirects: bool = True,
    ) -> _Connector:
        """Connect and log in. ``await Session.connect(...)`` or ``async with``.

        ``keys`` offers any key (overriding the defaults; None removes one);
        ``login_hook`` may rewrite every Login Request (return a PDU, raw bytes, or
        None to drop it); ``pdu_hook`` the same for full-feature PDUs. A random ISID
        of type 10b (RFC 7143 11.12.5) is drawn from ``rng`` unless given.
        """

        async def factory() -> Session:
            the_isid = make_isid(rng) if isid is None else isid
            session = cls(
                host,
                port,
                target_name,
                initiator_name=initiator_name,
                isid=the_isid,
                session_type=session_type,
                timeout=timeout,
                rng=rng,
            )
            session._chap = (chap, mutual_chap)
            session._keys = keys
            session._login_args = dict(
                chap_algorithms=tuple(chap_algorithms),
                auth_method=auth_method,
                skip_security=skip_security,
            )
            redirects = 0
            while True:
                try:
                    await session._login_leading(
                        tsih=tsih, cid=cid, keys=keys, login_hook=login_hook, pdu_hook=pdu_hook
                    )
                    return session
                except TargetRedirected as exc:
                    if not follow_redirects or redirects >= 3 or not exc.address:
                        raise
                    redirects += 1
                    portal = parse_target_address(exc.address)
                    session.host, session.port = portal.host, portal.port

        return _Connector(factory)

    @classmethod
    def from_url(cls, url: str | ISCSIURL, **kw: Any) -> _Connector:
        """``Session.connect`` for an ``iscsi://`` URL (its CHAP and digests included)."""
        u = parse_url(url) if isinstance(url, str) else url
        keys = dict(u.keys())
        keys.update(kw.pop("keys", None) or {})
        kw.setdefault("chap", u.chap)
        kw.setdefault("mutual_chap", u.mutual_chap)
        return cls.connect(u.host, u.port, u.target, keys=keys, **kw)

    def _flow(
        self,
        *,
        tsih: int,
        cid: int,
        keys: Mapping[str, str | None] | None,
        itt: int,
        login_hook: LoginHook | None,
    ) -> LoginFlow:
        chap, mutual = self._chap
        return LoginFlow(
            initiator_name=self.initiator_name,
            target_name=self.target_name,
            isid=self.isid,
            rng=self.rng,
            tsih=tsih,
            cid=cid,
            itt=itt,
            cmdsn=self.sequencer.cmdsn,
            session_type=self.session_type,
            keys=keys,
            chap_credentials=chap,
            mutual_chap=mutual,
            session=self.negotiated if tsih else None,
            login_hook=login_hook,
            **self._login_args,
        )

    async def _open(self, cid: int, pdu_hook: PDUHook | None) -> Connection:
        reader, writer = await open_connection(self.host, self.port, timeout=self.timeout)
        conn = Connection(
            self, reader, writer, cid=cid, label=f"{self.portal} cid {cid}", pdu_hook=pdu_hook
        )
        chap, mutual = self._chap
        for cred in (chap, mutual):
            if cred is not None:
                conn.trace.add_secret(cred.secret)
        return conn

    async def _login_leading(
        self,
        *,
        tsih: int,
        cid: int,
        keys: Mapping[str, str | None] | None,
        login_hook: LoginHook | None,
        pdu_hook: PDUHook | None,
    ) -> None:
        conn = await self._open(cid, pdu_hook)
        itt = self.sequencer.allocate_itt()
        flow = self._flow(tsih=tsih, cid=cid, keys=keys, itt=itt, login_hook=login_hook)
        try:
            result = await conn.login(flow, self.timeout)
        except TimeoutError:
            await conn.close()
            raise ResponseTimeout(
                f"login to {self.portal} did not complete within {self.timeout} s"
            ) from None
        except BaseException:
            await conn.close()
            raise
        finally:
            self.sequencer.release_itt(itt)
        self.tsih = result.tsih
        self.negotiated = result.negotiated
        self.sequencer = SessionSequencer(
            result.cmdsn, expcmdsn=result.expcmdsn, maxcmdsn=result.maxcmdsn
        )
        self.connections = [conn]
        conn.start_full_feature(result, self.sequencer)

    async def add_connection(
        self,
        *,
        cid: int | None = None,
        keys: Mapping[str, str | None] | None = None,
        login_hook: LoginHook | None = None,
        pdu_hook: PDUHook | None = None,
    ) -> Connection:
        """Log in one more connection to this session (same ISID and TSIH, new CID;
        RFC 7143 5.3.2). Needs MaxConnections > 1 negotiated."""
        if cid is None:
            used = {c.cid for c in self.connections}
            cid = next(i for i in range(65536) if i not in used)
        conn = await self._open(cid, pdu_hook)
        itt = self.sequencer.allocate_itt()
        flow = self._flow(tsih=self.tsih, cid=cid, keys=keys, itt=itt, login_hook=login_hook)
        try:
            result = await conn.login(flow, self.timeout)
        except BaseException:
            await conn.close()
            raise
        finally:
            self.sequencer.release_itt(itt)
        self.sequencer.update_window(result.expcmdsn, result.maxcmdsn)
        conn.start_full_feature(result, self.sequencer)
        self.connections.append(conn)
        return conn

    # ------------------------------------------------------------------ ERL 2

    def _start_recovery(
        self, failed: Connection, tasks: list[Any], waiters: dict[int, asyncio.Future[Any]]
    ) -> None:
        """Begin connection recovery for ``failed`` (called as it closes)."""
        job = asyncio.get_running_loop().create_task(
            self._recover(failed, tasks, waiters, time.monotonic())
        )
        self._recovery_jobs.add(job)
        job.add_done_callback(self._recovery_jobs.discard)

    async def _recover(
        self,
        failed: Connection,
        tasks: list[Any],
        waiters: dict[int, asyncio.Future[Any]],
        failed_at: float,
    ) -> None:
        """Connection recovery (RFC 7143 7.2.2, 6.3.4, 11.14.1, 11.5.1).

        After Time2Wait (13.15; a 'connection drop' Async Message's own value first,
        11.9.1) a connection of the session takes over: either the failed CID logs in
        again (an implicit logout of the old connection) or a new CID logs in and
        logs the failed one out with reason 2 'remove the connection for recovery',
        waiting the Logout Response's Time2Wait (11.15.3). Only then is each task
        reassigned (7.2.2: the logout MUST be complete before). Whatever is not done
        within Time2Retain (13.16) fails its caller.
        """
        record = RecoveryRecord(failed_cid=failed.cid, itts=tuple(t.itt for t in tasks))
        self.recoveries.append(record)
        t2w, t2r = self.drop_timers.pop(
            failed.cid,
            (self.negotiated.default_time2wait, self.negotiated.default_time2retain),
        )
        why = failed.close_reason or TransportError("connection failed")
        try:
            await asyncio.sleep(t2w)
            record.waited = time.monotonic() - failed_at
            async with asyncio.timeout(max(t2r, 0.001)):
                conn = await self._recovery_connection(failed, record)
                for task in tasks:
                    await self._reassign(conn, task, waiters.pop(task.itt, None), record)
        except asyncio.CancelledError:
            why = TransportError("session closed during connection recovery")
            raise
        except TimeoutError:
            record.error = f"recovery not done within Time2Retain ({t2r} s)"
            why = TransportError(f"{why}; {record.error}")
        except ISCSIConformanceError as exc:
            record.error = str(exc)
            why = TransportError(f"{why}; connection recovery failed: {exc}")
        finally:
            for fut in waiters.values():
                if not fut.done():
                    fut.set_exception(why)

    async def _recovery_connection(self, failed: Connection, record: RecoveryRecord) -> Connection:
        live = [c for c in self.connections if not c.closed and c.engine is not None]
        room = self.negotiated.max_connections > len(live) + 1
        how = self.recovery_cid
        if how == "auto":
            how = "new" if room else "same"
        if how == "same":
            # A login with the failed CID implicitly logs the old connection out (6.3.4).
            conn = await self.add_connection(cid=failed.cid, keys=self._keys)
            record.method = "implicit"
            return conn
        conn = await self.add_connection(keys=self._keys)
        resp = await self.logout(
            LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY, connection=conn, cid=failed.cid
        )
        if resp.response not in (0, 1):
            # 1, "CID not found": the target had already removed the failed connection
            # from the session (RFC 7143 11.14, 11.15.1), which is what the logout asks.
            raise ProtocolError(
                f"Logout 'remove the connection for recovery' of CID {failed.cid} answered "
                f"{resp.response}"
            )
        record.method = "logout"
        await asyncio.sleep(resp.time2wait)  # 11.15.3: before reassignment
        return conn

    async def _reassign(
        self,
        conn: Connection,
        task: Any,
        fut: asyncio.Future[Any] | None,
        record: RecoveryRecord,
    ) -> None:
        assert conn.engine is not None
        if fut is not None:
            conn._waiters[task.itt] = fut  # the task's PDUs now come here
        tmf = conn.engine.reassign(task)
        if tmf is None:
            await conn.flush()  # never sent before: sent here as a new command
            return
        answer = conn._expect(tmf)
        code = int(await conn.wait(tmf, answer, "TASK REASSIGN", self.timeout))
        record.answers[task.itt] = code
        if code != 0:
            conn._waiters.pop(task.itt, None)
            conn.engine.abandon(task.itt)
            if fut is not None and not fut.done():
                fut.set_exception(
                    ProtocolError(f"TASK REASSIGN of ITT {task.itt:#x} answered {code}")
                )

    # ------------------------------------------------------------------ plumbing

    def _conn(self, connection: Connection | int | None) -> Connection:
        if isinstance(connection, Connection):
            return connection
        live = [c for c in self.connections if not c.closed]
        if connection is None:
            if not live:
                raise TransportError(f"session to {self.portal} has no open connection")
            return live[0]
        for c in self.connections:
            if c.cid == connection:
                return c
        raise ValueError(f"no connection with CID {connection}")

    # ------------------------------------------------------------------ SCSI

    async def execute(
        self,
        lun: int,
        cdb: bytes,
        data_out: bytes = b"",
        expected_in: int = 0,
        *,
        attr: int = TaskAttribute.SIMPLE,
        immediate: bool = False,
        edtl: int | None = None,
        connection: Connection | int | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> ScsiResult:
        """Run one SCSI command; returns its :class:`ScsiResult` (``check`` raises on
        anything but GOOD)."""
        conn = self._conn(connection)
        assert conn.engine is not None
        itt = conn.engine.start_command(
            lun, cdb, data_out, expected_in, attr=attr, immediate=immediate, edtl=edtl
        )
        fut = conn._expect(itt)
        result: ScsiResult = await conn.wait(
            itt, fut, f"SCSI command {cdb[:1].hex()}h", self.timeout if timeout is None else timeout
        )
        return result.raise_for_status() if check else result

    async def _run(
        self,
        lun: int,
        cdb: bytes,
        data_out: bytes = b"",
        expected_in: int = 0,
        *,
        check: bool = True,
        connection: Connection | int | None = None,
    ) -> ScsiResult:
        """``execute`` for the helpers: retries a UNIT ATTENTION (sense key 6h) up to
        ``retry_unit_attention`` times, as initiators do after a reset (SAM-5 5.14)."""
        r = await self.execute(lun, cdb, data_out, expected_in, connection=connection)
        for _ in range(self.retry_unit_attention):
            if not (r.status == 0x02 and r.sense_key == 0x6):
                break
            r = await self.execute(lun, cdb, data_out, expected_in, connection=connection)
        return r.raise_for_status() if check else r

    async def inquiry(
        self,
        lun: int = 0,
        *,
        evpd: bool = False,
        page: int = 0,
        alloc: int = 255,
        check: bool = True,
    ) -> ScsiResult:
        return await self._run(lun, cdbs.inquiry(evpd, page, alloc), expected_in=alloc, check=check)

    async def test_unit_ready(self, lun: int = 0, *, check: bool = False) -> ScsiResult:
        return await self._run(lun, cdbs.test_unit_ready(), check=check)

    async def request_sense(
        self, lun: int = 0, *, alloc: int = 252, check: bool = True
    ) -> ScsiResult:
        return await self._run(lun, cdbs.request_sense(alloc), expected_in=alloc, check=check)

    async def read_capacity10(self, lun: int = 0) -> tuple[int, int]:
        """(last LBA, block length) (SBC-3 5.15)."""
        r = await self._run(lun, cdbs.read_capacity10(), expected_in=8)
        last, bl = cdbs.parse_read_capacity10(r.data)
        self.block_sizes[lun] = bl
        return last, bl

    async def read_capacity16(self, lun: int = 0) -> cdbs.ReadCapacity16:
        r = await self._run(lun, cdbs.read_capacity16(32), expected_in=32)
        rc = cdbs.parse_read_capacity16(r.data)
        self.block_sizes[lun] = rc.block_length
        return rc

    async def block_size(self, lun: int = 0) -> int:
        if lun not in self.block_sizes:
            try:
                await self.read_capacity16(lun)
            except ProtocolError:
                await self.read_capacity10(lun)
        return self.block_sizes[lun]

    async def read(
        self,
        lun: int,
        lba: int,
        blocks: int,
        *,
        block_size: int | None = None,
        fua: bool = False,
        connection: Connection | int | None = None,
    ) -> bytes:
        """READ(16) ``blocks`` blocks at ``lba``; returns the data (raises on error)."""
        bs = block_size or await self.block_size(lun)
        r = await self._run(
            lun, cdbs.read16(lba, blocks, fua=fua), expected_in=blocks * bs, connection=connection
        )
        return r.data

    async def write(
        self,
        lun: int,
        lba: int,
        data: bytes,
        *,
        block_size: int | None = None,
        fua: bool = False,
        connection: Connection | int | None = None,
    ) -> ScsiResult:
        """WRITE(16) ``data`` (a whole number of blocks) at ``lba``."""
        bs = block_size or await self.block_size(lun)
        if len(data) % bs:
            raise ValueError(f"write of {len(data)} bytes is not a multiple of the block size {bs}")
        return await self._run(
            lun, cdbs.write16(lba, len(data) // bs, fua=fua), data_out=data, connection=connection
        )

    async def xdwriteread(
        self,
        lun: int,
        lba: int,
        data: bytes,
        *,
        read_length: int | None = None,
        disable_write: bool = False,
        block_size: int | None = None,
        connection: Connection | int | None = None,
    ) -> ScsiResult:
        """XDWRITEREAD(10) (SBC-3 5.48): a bidirectional command. ``data`` (whole blocks)
        goes out as its write part, EDTL ``len(data)``; ``read_length`` (default the same)
        is the Bidirectional Read Expected Data Transfer Length (RFC 7143 11.3.4). The
        result's ``data`` is the Data-In placed by Buffer Offset (the XOR of ``data`` with
        the blocks), ``bidi_residual`` the Bidirectional Read Residual Count."""
        bs = block_size or await self.block_size(lun)
        if not data or len(data) % bs:
            raise ValueError(f"XDWRITEREAD of {len(data)} bytes: not whole {bs}-byte blocks")
        cdb = cdbs.xdwriteread10(lba, len(data) // bs, disable_write=disable_write)
        expected_in = len(data) if read_length is None else read_length
        if expected_in <= 0:
            raise ValueError("a bidirectional command needs a read length above 0")
        return await self._run(lun, cdb, data, expected_in, check=False, connection=connection)

    async def report_luns(self, *, alloc: int = 4096) -> list[int]:
        """LUN numbers from REPORT LUNS (SPC-4 6.33), sent to LUN 0."""
        from iscsi_conformance.core.pdu import field_to_lun

        r = await self._run(0, cdbs.report_luns(alloc), expected_in=alloc)
        return [field_to_lun(v) for v in cdbs.parse_report_luns(r.data)]

    async def persistent_reserve_in(
        self, lun: int, sa: int, *, alloc: int = 8192, check: bool = True
    ) -> ScsiResult:
        return await self._run(
            lun, cdbs.persistent_reserve_in(sa, alloc), expected_in=alloc, check=check
        )

    async def persistent_reserve_out(
        self, lun: int, sa: int, *, check: bool = True, **params: Any
    ) -> ScsiResult:
        """PERSISTENT RESERVE OUT; ``params`` as :func:`scsi.cdb.pr_out` (key, sa_key,
        scope, pr_type, aptpl, ...)."""
        cdb, data = cdbs.pr_out(sa, **params)
        return await self._run(lun, cdb, data_out=data, check=check)

    async def reserve(self, lun: int = 0, *, check: bool = True) -> ScsiResult:
        return await self._run(lun, cdbs.reserve6(), check=check)

    async def release(self, lun: int = 0, *, check: bool = True) -> ScsiResult:
        return await self._run(lun, cdbs.release6(), check=check)

    # ------------------------------------------------------------------ iSCSI

    async def tmf(
        self,
        function: int = TmfFunction.LOGICAL_UNIT_RESET,
        lun: int = 0,
        referenced_task_tag: int = NONE_TAG,
        *,
        refcmdsn: int | None = None,
        expdatasn: int = 0,
        immediate: bool = True,
        connection: Connection | int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Task management function (RFC 7143 11.5); returns the response code (11.6.1)."""
        conn = self._conn(connection)
        assert conn.engine is not None
        itt = conn.engine.start_tmf(
            function,
            lun=lun,
            referenced_task_tag=referenced_task_tag,
            refcmdsn=refcmdsn,
            expdatasn=expdatasn,
            immediate=immediate,
        )
        fut = conn._expect(itt)
        return int(await conn.wait(itt, fut, "task management request", timeout or self.timeout))

    async def nop(self, data: bytes = b"", *, lun: int = 0, immediate: bool = True,
                  connection: Connection | int | None = None, timeout: float | None = None) -> NopIn:  # fmt: skip
        """Ping: NOP-Out with a valid ITT; returns the NOP-In (RFC 7143 11.18, 11.19)."""
        conn = self._conn(connection)
        assert conn.engine is not None
        itt = conn.engine.start_nop(data, lun=lun, immediate=immediate)
        fut = conn._expect(itt)
        pdu: NopIn = await conn.wait(itt, fut, "NOP-Out", timeout or self.timeout)
        return pdu

    async def text(
        self,
        pairs: Sequence[tuple[str, str]] | bytes,
        *,
        immediate: bool = True,
        connection: Connection | int | None = None,
        timeout: float | None = None,
    ) -> list[tuple[str, str]]:
        """Full-feature Text Request (RFC 7143 11.10), continuation handled both ways;
        returns the target's pairs."""
        conn = self._conn(connection)
        assert conn.engine is not None
        data = pairs if isinstance(pairs, bytes) else text.format_pairs(pairs, strict=False)
        itt = conn.engine.start_text(data, immediate=immediate)
        fut = conn._expect(itt)
        done: TextCompleted = await conn.wait(itt, fut, "Text Request", timeout or self.timeout)
        return text.parse_pairs(done.data)

    async def send_targets(self, value: str = "All") -> list[DiscoveredTarget]:
        """SendTargets (RFC 7143 13.3) in this session."""
        return parse_send_targets(await self.text([("SendTargets", value)]))

    async def logout(
        self,
        reason: int = LogoutReason.CLOSE_SESSION,
        *,
        connection: Connection | int | None = None,
        cid: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Logout (RFC 7143 11.14); returns the Logout Response. Closes the connection
        (all of them for CLOSE_SESSION) once the target answered."""
        conn = self._conn(connection)
        assert conn.engine is not None
        itt = conn.engine.start_logout(reason, cid=cid)
        fut = conn._expect(itt)
        resp = await conn.wait(itt, fut, "Logout Request", timeout or self.timeout)
        if resp.response == 0:
            if reason == LogoutReason.CLOSE_SESSION:
                self.logged_out = True
                for c in self.connections:
                    await c.close()
            elif cid is None or cid == conn.cid:
                await conn.close()
        return resp

    async def close(self) -> None:
        """Log out if still possible (best effort, short timeout), close everything."""
        for job in list(self._recovery_jobs):
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
        live = [c for c in self.connections if not c.closed]
        if live and not self.logged_out:
            try:
                await self.logout(connection=live[0], timeout=min(self.timeout or 5.0, 5.0))
            except ISCSIConformanceError:
                pass
        for c in self.connections:
            await c.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ====================================================================== discovery


async def discover(
    host: str,
    port: int = 3260,
    *,
    initiator_name: str = DEFAULT_INITIATOR_NAME,
    chap: ChapAccount | None = None,
    mutual_chap: ChapAccount | None = None,
    send_targets: str = "All",
    keys: Mapping[str, str | None] | None = None,
    login_hook: LoginHook | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    rng: Rng = os.urandom,
) -> list[DiscoveredTarget]:
    """A Discovery session: login, SendTargets, logout (RFC 7143 4.3, 13.3).

    Addresses are returned as the target gave them (they may be unreachable behind
    NAT: see :meth:`DiscoveredTarget.via` / :func:`remap_addresses`).
    """
    async with Session.connect(
        host,
        port,
        None,
        initiator_name=initiator_name,
        chap=chap,
        mutual_chap=mutual_chap,
        keys=keys,
        session_type="Discovery",
        login_hook=login_hook,
        timeout=timeout,
        rng=rng,
    ) as session:
        return await session.send_targets(send_targets)
