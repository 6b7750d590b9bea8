"""The asyncio adapter of the reference target: the only place with sockets and clocks.

Theory of operation: ``TargetServer`` binds every portal of every portal group
(IPv4 and IPv6), creates one ``engine.Connection`` per accepted connection and moves
bytes: ``data_received`` feeds the engine, which handles up to ``PDUS_PER_FLUSH``
complete PDUs at a time; after each slice every connection the engine marked dirty
is flushed with one gathering ``os.writev`` straight to the socket when the
transport has nothing buffered (no join copy of the payloads), handing any unsent
rest to ``transport.writelines``. Timers follow the engine's own deadline
(``engine.get_timer()``, aioquic's pattern): one timer handle sleeps until the
earliest NOP-In ping, NOP-In answer time-out or login time-out, then passes
``time.monotonic()`` to ``engine.handle_timer``; an idle server has no timer at all. Per-connection memory is
bounded: the decoder refuses a DataSegmentLength above what we declared (RFC 7143
13.12) before buffering it, and reading pauses while the transport's write buffer
is above its high-water mark.

``TargetServer`` can run in the caller's loop (``await start()``) or in a background
thread (``start_in_thread()``) for in-process tests and the ``embedded`` peer driver;
its test API (``request_logout``, ``drop_connection``, ``drop_session``,
``request_renegotiation``) is thread-safe in the latter mode.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from iscsi_conformance.target.config import ServerConfig
from iscsi_conformance.target.engine import Connection, Session, TargetEngine
from iscsi_conformance.target.luns import LunStore

log = logging.getLogger("iscsi_conformance.target")

# A deadline this close to the one already scheduled needs no new timer handle.
TIMER_SLACK = 0.05
# PDUs handled per flush: the initiator starts on the first answers of a burst of
# commands while we work on the rest, instead of the two sides taking turns.
PDUS_PER_FLUSH = 8
_IOV_MAX = 1024  # buffers per writev (Linux UIO_MAXIOV)


class _Protocol(asyncio.Protocol):
    __slots__ = ("conn", "fd", "portal_group", "server", "transport")

    def __init__(self, server: TargetServer, portal_group: int) -> None:
        self.server = server
        self.portal_group = portal_group
        self.conn: Connection | None = None
        self.transport: asyncio.Transport | None = None
        self.fd = -1  # the socket's descriptor, for _writev

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is not a subclass)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        conn = self.server.engine.new_connection(
            portal_group=self.portal_group, local=local[:2], peer=peer[:2], now=time.monotonic()
        )
        conn.transport = transport  # type: ignore[attr-defined]
        self.conn = conn
        self.server.schedule_timer()  # its login time-out
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        now = time.monotonic()
        flush = self.server.flush
        state = conn.state
        more = conn.receive_data(data, now, max_pdus=PDUS_PER_FLUSH)
        flush()
        while more:
            more = conn.receive_data(b"", now, max_pdus=PDUS_PER_FLUSH)
            flush()
        if conn.state is not state:  # e.g. login done: keep-alive deadlines start
            self.server.schedule_timer()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        # The peer does not read: stop reading its requests too (bounded memory).
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.connection_lost()
        self.server.flush()
        self.server.after_activity()
        self.server.schedule_timer()  # a session kept for recovery (ERL 2) times out


class TargetServer:
    """The reference target over asyncio."""

    def __init__(self, config: ServerConfig, *, luns: LunStore | None = None) -> None:
        self.config = config
        self.luns = luns if luns is not None else LunStore(config)
        self.engine = TargetEngine(config, self.luns.by_target, rng=os.urandom)
        self.engine.on_pr_changed = self.luns.pr_changed
        self.portals: list[tuple[str, int, int]] = []  # (host, port, tag) actually bound
        self._servers: list[asyncio.base_events.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._tick_at = 0.0
        self._now = time.monotonic()
        self._stopped = asyncio.Event() if False else None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for group in self.config.portal_groups:
            for host, port in group.portals:
                srv = await self._loop.create_server(
                    lambda tag=group.tag: _Protocol(self, tag),
                    host=host,
                    port=port,
                    reuse_address=True,
                    backlog=128,
                )
                self._servers.append(srv)
                for sock in srv.sockets:
                    addr = sock.getsockname()
                    self.portals.append((addr[0], addr[1], group.tag))
                    self.engine.bound_portals.setdefault(group.tag, []).append((addr[0], addr[1]))
        self.schedule_timer()

    def schedule_timer(self) -> None:
        """Sleep until the engine's next deadline; a later one than already set waits
        for that timer (which schedules the next when it fires)."""
        loop = self._loop
        if loop is None:
            return
        deadline = self.engine.get_timer()
        if deadline is None:
            return
        if self._tick is not None and self._tick_at <= deadline + TIMER_SLACK:
            return
        if self._tick is not None:
            self._tick.cancel()
        self._tick_at = deadline
        self._tick = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._tick = None
        self._now = time.monotonic()
        try:
            self.engine.handle_timer(self._now)
            self.flush()
        except Exception:  # never let the timer die
            log.exception("timer failed")
        self.schedule_timer()

    def after_activity(self) -> None:
        """Hook after connection loss (state such as reservations may have changed)."""

    def flush(self) -> None:
        """Write every connection's queued output, one writelines per connection."""
        for conn, bufs, close in self.engine.take_output():
            transport = getattr(conn, "transport", None)
            if transport is None or transport.is_closing():
                continue
            if bufs:
                proto = transport.get_protocol()
                fd = getattr(proto, "fd", -1)
                if fd >= 0 and not transport.get_write_buffer_size():
                    bufs = _writev(fd, bufs)
                if bufs:
                    transport.writelines(bufs)
            if close:
                transport.close()  # closes once the buffer is written

    async def stop(self) -> None:
        """Stop listening, close every connection, flush LUN data and state."""
        if self._tick is not None:
            self._tick.cancel()
        for srv in self._servers:
            srv.close()
        for conn in list(self.engine.connections):
            t = getattr(conn, "transport", None)
            if t is not None:
                t.close()
        for srv in self._servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2)
            except TimeoutError:
                pass
        for s in list(self.engine.sessions.values()):
            self.engine.close_session(s, reason="server stopping")
        self.luns.close()
        self._servers.clear()

    # ------------------------------------------------------------------ thread mode

    def start_in_thread(self, *, timeout: float = 10.0) -> None:
        """Run the server's own event loop in a daemon thread; return when listening."""

        def run() -> None:
            loop = _new_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # report bind errors to the caller
                self._start_error = exc
                self._ready.set()
                loop.close()
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="iscsi-reference-target", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("reference target did not start")
        if self._start_error is not None:
            raise self._start_error

    def serving(self) -> bool:
        """Whether the thread started by ``start_in_thread`` still runs its loop."""
        return self._thread is not None and self._thread.is_alive()

    def stop_thread(self, *, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run ``fn`` in the server's loop (from any thread) and return its result."""
        loop = self._loop
        if loop is None:
            return fn(*args, **kw)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            result = fn(*args, **kw)
            self.flush()
            self.schedule_timer()
            return result

        async def job() -> Any:
            result = fn(*args, **kw)
            self.flush()
            self.schedule_timer()  # a ping now waits for its answer
            return result

        return asyncio.run_coroutine_threadsafe(job(), loop).result(10)

    # ------------------------------------------------------------------ test API

    def sessions(self) -> list[Session]:
        return self.call(lambda: list(self.engine.sessions.values()))

    def find_session(self, initiator_name: str, target_name: str | None = None) -> Session | None:
        def look() -> Session | None:
            for s in self.engine.sessions.values():
                if s.initiator_name == initiator_name and (
                    target_name is None or s.target_name == target_name
                ):
                    return s
            return None

        return self.call(look)

    def request_logout(
        self, session: Session, *, time_to_logout: int = 5, cid: int | None = None
    ) -> None:
        """Async Message: 'please log out' (RFC 7143 11.9.1 AsyncEvent 1), on every
        connection of ``session`` or on connection ``cid`` alone."""
        self.call(self.engine.request_logout, session, time_to_logout=time_to_logout, cid=cid)

    def drop_connection(
        self, conn: Connection, *, time2wait: int = 0, time2retain: int = 0
    ) -> None:
        """Async Message 'connection will be dropped' (AsyncEvent 2), then drop it."""
        self.call(self.engine.drop_connection, conn, time2wait=time2wait, time2retain=time2retain)

    def drop_session(self, session: Session, *, time2wait: int = 0, time2retain: int = 0) -> None:
        """Async Message 'all connections dropped' (AsyncEvent 3), then end the session."""
        self.call(self.engine.drop_session, session, time2wait=time2wait, time2retain=time2retain)

    def request_renegotiation(self, session: Session, *, time_to_answer: int = 5) -> None:
        """Async Message 'please renegotiate' (AsyncEvent 4), answer due in Parameter3 s."""
        self.call(self.engine.request_renegotiation, session, time_to_answer=time_to_answer)

    def send_scsi_async_event(self, session: Session, lun: int, sense: bytes) -> None:
        """Async Message reporting a SCSI asynchronous event with ``sense`` (AsyncEvent 0)."""
        self.call(self.engine.send_scsi_async_event, session, lun, sense)

    def set_cmd_window(self, session: Session, window: int) -> None:
        """Resize (0: close) the session's CmdSN window; a NOP-In announces it."""
        self.call(self.engine.set_cmd_window, session, window)

    def send_vendor_event(self, session: Session, vcode: int, data: bytes = b"") -> None:
        """Async Message with a vendor-specific event (AsyncEvent 255)."""
        self.call(self.engine.send_vendor_event, session, vcode, data)

    def ping(self, conn: Connection) -> None:
        """Send a NOP-In that asks the initiator for a NOP-Out (RFC 7143 11.19)."""
        self.call(conn.ping, time.monotonic())

    def portal(self, tag: int | None = None) -> tuple[str, int]:
        for host, port, t in self.portals:
            if tag is None or t == tag:
                return host, port
        raise LookupError(f"no portal in group {tag}")


def _writev(fd: int, bufs: list[Any]) -> list[Any]:
    """Write ``bufs`` straight to the socket with gathering writes; return the unsent
    rest for the transport to buffer (call only when the transport's buffer is empty,
    so the order on the wire holds). Python 3.11's ``writelines`` first joins the
    buffers, a second copy of every Data-In payload (a tenth of the CPU time of
    64 KiB reads); ``writev`` hands the headers and payload views to the kernel as
    they are."""
    i = 0
    while i < len(bufs):
        chunk = bufs[i : i + _IOV_MAX]
        try:
            n = os.writev(fd, chunk)
        except OSError:  # EAGAIN, or an error the transport will meet and report
            break
        for b in chunk:
            ln = len(b)
            if n < ln:  # the socket buffer is full: the transport sends the rest
                return [memoryview(b)[n:], *bufs[i + 1 :]] if n else bufs[i:]
            n -= ln
            i += 1
    return bufs[i:]


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (optional, faster), else the default loop."""
    if os.environ.get("ISCSI_CONFORMANCE_NO_UVLOOP"):
        return asyncio.new_event_loop()
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_server(
    config: ServerConfig,
    *,
    ready: Callable[[TargetServer], None] | None = None,
    stopping: Callable[[TargetServer], None] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM; flush LUNs and reservation state on the way out.
    ``stopping`` runs (in a worker thread) before the portals close, while a second
    signal still only asks to stop: the iSNS deregistration goes there."""
    import signal

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    server = TargetServer(config)
    stop = asyncio.Event()

    async def main() -> None:
        await server.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(server)
        await stop.wait()
        if stopping is not None:
            await loop.run_in_executor(None, stopping, server)
        await server.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0
