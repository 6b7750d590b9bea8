"""The asyncio adapter of the reference iSNS client: the only place of the client with
sockets and clocks.

Theory of operation: :class:`ISNSClient` keeps one TCP connection to the iSNS server and
feeds the sans-IO :class:`~iscsi_conformance.isns.client.ClientEngine`. Each operation
(register, refresh, discover, deregister) writes what the engine queued and reads until
the engine has no request in flight, bounded by ``timeout``; if the server closed the
connection meanwhile (isnsd and ours close idle ones), the operation is tried once more
on a new connection. With a registration, the client first listens on an ESI/SCN port
(port 0 in the registration: any free one, on the host of the first portal), which the
server connects to for ESI (5.6.5.13) and SCN (5.6.5.8), and a timer task refreshes
the registration when the engine says (6.2.6). ``stop()`` deregisters (5.6.5.4) unless
told not to, closes the listener and the connection.

It runs in the caller's loop (``await start()`` / ``await stop()``) or in a thread of its
own (``start_in_thread()`` / ``stop_thread()``), as the reference target's CLI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from iscsi_conformance.core.isns import Status

from .client import (
    ClientEngine,
    DiscoveredTarget,
    Event,
    Registered,
    Registration,
    RequestFailed,
    TargetsDiscovered,
)
from .pump import pump

log = logging.getLogger("iscsi_conformance.isns.client")

__all__ = ["ISNSClient", "ISNSClientError", "parse_server"]

T = TypeVar("T")


class ISNSClientError(Exception):
    """The iSNS server refused a request or could not be reached."""


def parse_server(text: str, default_port: int = 3205) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[V6]:PORT`` (also ``isns://`` URLs) to (host, port)."""
    text = text.strip()
    if text.startswith("isns://"):
        text = text[len("isns://") :].rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, number


class ISNSClient:
    """The reference iSNS client on one server (``server`` is (host, port))."""

    def __init__(
        self,
        server: tuple[str, int],
        *,
        source: str = "",
        registration: Registration | None = None,
        listen_host: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.server = server
        self.registration = registration
        self.timeout = timeout
        self.engine = ClientEngine(registration.source if registration else source)
        self.events: list[Event] = []
        self.esi_port: int | None = None
        self._listen_host = listen_host
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._listener: asyncio.Server | None = None
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen for ESI/SCN, register, and keep the registration fresh."""
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        reg = self.registration
        if reg is None:
            return
        if reg.esi_port is not None or reg.scn_port is not None:
            host = self._listen_host or (reg.portals[0][0] if reg.portals else "127.0.0.1")
            port = reg.esi_port or reg.scn_port or 0
            self._listener = await asyncio.start_server(self._serve_listener, host, port)
            self.esi_port = int(self._listener.sockets[0].getsockname()[1])
            reg = dataclasses.replace(
                reg,
                esi_port=self.esi_port if reg.esi_port is not None else None,
                scn_port=self.esi_port if reg.scn_port is not None else None,
                # an initiator's portal (port 0) is where it takes SCNs (6.3.7)
                portals=tuple((h, p or self.esi_port) for h, p in reg.portals),
            )
            self.registration = reg
        await self._operation(lambda: self.engine.register(reg), Registered)
        self._spawn(self._timer())

    async def stop(self, *, deregister: bool = True) -> None:
        """Deregister (5.6.5.4), then close everything. Never raises for the server."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if deregister and self.registration is not None and self.engine.registered:
            try:
                await self._operation(self.engine.deregister, None)
            except ISNSClientError as exc:
                log.warning("iSNS deregistration failed: %s", exc)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.wait_closed(), 2.0)
            self._listener = None
        await self._disconnect()

    async def discover(self) -> list[DiscoveredTarget]:
        """DevGetNext over iSCSI Names, DevAttrQry per target (see the engine)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        found: list[DiscoveredTarget] = []

        def begin() -> None:
            self.engine.discover()

        for event in await self._operation(begin, TargetsDiscovered):
            if isinstance(event, TargetsDiscovered):
                found = list(event.targets)
        return found

    def start_in_thread(self) -> None:
        """Run in a thread with its own loop (the target CLI's way)."""
        started = threading.Event()
        failure: list[BaseException] = []
        stopped = threading.Event()
        self._stopped_flag = stopped

        def run() -> None:
            loop = asyncio.new_event_loop()

            async def main() -> None:
                try:
                    await self.start()
                except BaseException as exc:  # reported to the caller below
                    failure.append(exc)
                    started.set()
                    return
                started.set()
                while not stopped.is_set():
                    await asyncio.sleep(0.05)
                await self.stop()

            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="isns-client", daemon=True)
        self._thread.start()
        if not started.wait(self.timeout * 3 + 5):
            raise ISNSClientError("the iSNS client did not start")
        if failure:
            self._thread.join(self.timeout * 3 + 5)
            raise ISNSClientError(str(failure[0])) from failure[0]

    def stop_thread(self) -> None:
        if self._thread is None:
            return
        self._stopped_flag.set()
        self._thread.join(self.timeout * 3 + 5)
        self._thread = None

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drain_events(self) -> list[Event]:
        out: list[Event] = []
        while (event := self.engine.next_event()) is not None:
            out.append(event)
            log.info("iSNS: %s", event)
        self.events += out
        return out

    async def _connect(self) -> None:
        if self._writer is not None:
            return
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(*self.server), self.timeout
        )
        self.engine.reconnected()

    async def _disconnect(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _exchange(self) -> None:
        """Write what the engine queued; read until it waits for nothing."""
        await self._connect()
        assert self._reader is not None and self._writer is not None
        deadline = time.monotonic() + self.timeout
        while True:
            out = self.engine.data_to_send()
            if out:
                self._writer.write(out)
                await self._writer.drain()
            if self.engine.idle:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the iSNS server in {self.timeout} s")
            data = await asyncio.wait_for(self._reader.read(65536), left)
            if not data:
                raise ConnectionError("the iSNS server closed the connection")
            self.engine.receive_data(data, time.time())

    async def _operation(self, begin: Callable[[], None], wanted: type | None) -> list[Event]:
        """Run one operation (retried once on a new connection); raise on failure."""
        assert self._lock is not None
        async with self._lock:
            why = ""
            for _attempt in range(2):
                begin()
                try:
                    await self._exchange()
                except (OSError, TimeoutError, ConnectionError) as exc:
                    why = f"{self.server[0]}:{self.server[1]}: {exc}"
                    self.engine.connection_lost(why)
                    self._drain_events()
                    await self._disconnect()
                    continue
                events = self._drain_events()
                if self.engine.broken is not None:
                    # an undecodable answer: the stream cannot be resynchronised (5.2), so
                    # the next operation starts on a new connection
                    await self._disconnect()
                failed = [e for e in events if isinstance(e, RequestFailed)]
                if failed:
                    f = failed[0]
                    if f.status is None:
                        raise ISNSClientError(f"{self.server[0]}:{self.server[1]}: {f.why}")
                    named = Status(f.status).name if f.status in Status._value2member_map_ else ""
                    raise ISNSClientError(
                        f"iSNS {f.why or hex(f.function)} refused with status {f.status}"
                        + (f" ({named.replace('_', ' ').title()}, RFC 4171 5.4)" if named else "")
                    )
                if wanted is not None and not any(isinstance(e, wanted) for e in events):
                    raise ISNSClientError(f"no {wanted.__name__} from the iSNS server")
                return events
            raise ISNSClientError(why or "the iSNS server could not be reached")

    async def _timer(self) -> None:
        assert self._wake is not None
        while not self._closing:
            self._wake.clear()
            at = self.engine.get_timer()
            delay = None if at is None else max(0.0, at - time.time())
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            try:
                await self._operation(lambda: self.engine.handle_timer(time.time()), None)
            except ISNSClientError as exc:
                log.warning("iSNS refresh failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _serve_listener(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection from the server to our ESI/SCN port."""
        await pump(self.engine.listener(), reader, writer, idle_timeout=30.0,
                   after_step=self._drain_events, closing=lambda: self._closing,
                   what="iSNS listener connection")  # fmt: skip

    def events_of(self, kind: type[T]) -> list[T]:
        """The events of one kind seen so far (tests)."""
        return [e for e in self.events if isinstance(e, kind)]
