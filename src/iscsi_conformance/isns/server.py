"""The asyncio adapter of the reference iSNS server: the only place with sockets,
clocks and files.

Theory of operation: ``ISNSServer`` listens on one TCP address, creates one
``engine.ServerConnection`` per accepted connection and moves bytes; a connection
that sends nothing for ``idle_timeout`` seconds (a PDU whose length lies, a client
that went quiet) is closed. After every call into the engine it does three things:
saves the database when the engine says it changed (JSON written to a temporary file
in the same directory, flushed, fsynced and renamed over the old one, so a crash
leaves the old or the new file, never half of one); starts a task for each
``Outbound`` action (ESI or SCN: connect, send, read one answer, each step bounded by
``outbound_timeout``, and report the answer; to a UDP ESI or SCN Port, one datagram per
PDU from a socket of its own and the first answer that decodes, 2.9.2); and wakes the timer task, which sleeps
until ``engine.get_timer()`` and calls ``engine.handle_timer(time.time())``.
Wall-clock time is used because the engine also writes it into Timestamp attributes
(6.2.4).

``ISNSServer`` runs in the caller's loop (``await start()`` / ``await stop()``) or in a
background thread (``start_in_thread()`` / ``stop_thread()``) for in-process tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from iscsi_conformance.core.isns import (
    ISNSFormatError,
    Message,
    MessageDecoder,
    encode,
    encode_pdu,
    split,
)

from .database import Database
from .engine import Outbound, ServerConfig, ServerEngine
from .pump import pump

log = logging.getLogger("iscsi_conformance.isns")

__all__ = ["ISNSServer", "load_database", "save_database"]


def load_database(path: Path) -> Database | None:
    """The database saved at ``path``, or None when there is no file yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return Database.from_json(json.loads(text))


def save_database(db: Database, path: Path) -> None:
    """Write ``db`` atomically: a temporary file beside ``path``, fsynced, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(db.to_json(), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ISNSServer:
    """The reference iSNS server on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3205,
        *,
        config: ServerConfig | None = None,
        db_path: Path | None = None,
        idle_timeout: float = 60.0,
        outbound_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.db_path = db_path
        self.idle_timeout = idle_timeout
        self.outbound_timeout = outbound_timeout
        database = load_database(db_path) if db_path is not None else None
        self.engine = ServerEngine(config, now=time.time(), database=database)
        self._server: asyncio.Server | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._closing = False
        self._wake = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._timer())
        log.info("iSNS server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening, end every connection and outbound task, save the database."""
        # Python 3.11's wait_for can swallow a cancellation that races with its inner
        # future's completion, so the loops also check this flag.
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        self._save()

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Run the server in a background thread with its own loop (tests)."""
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stopped = asyncio.Event()

            async def main() -> None:
                await self.start()
                started.set()
                assert self._stopped is not None
                await self._stopped.wait()
                await self.stop()

            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="isns-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeError("the iSNS server did not start")

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        stopped = self._stopped
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(stopped.set)
        self._thread.join(timeout)
        self._thread = None

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _save(self) -> None:
        if self.engine.take_dirty() and self.db_path is not None:
            save_database(self.engine.db, self.db_path)

    def _after(self) -> None:
        """After every call into the engine: persist, start outbound work, re-arm."""
        self._save()
        for action in self.engine.take_outbound():
            self._spawn(self._deliver(action))
        if self._wake is not None:
            self._wake.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)  # stop() cancels connections too
        try:
            await pump(self.engine.connection(), reader, writer, idle_timeout=self.idle_timeout,
                       after_step=self._after, closing=lambda: self._closing)  # fmt: skip
        finally:
            if me is not None:
                self._tasks.discard(me)

    async def _deliver(self, action: Outbound) -> None:
        """One ESI or SCN (5.6.5.13, 5.6.5.8): connect, send, read one answer."""
        if action.udp:
            answer = await self._deliver_udp(action)
            self._answered(action, answer)
            return
        answer = None
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(action.host, action.port), self.outbound_timeout
            )
            assert writer is not None
            writer.write(encode(action.message))
            await writer.drain()
            decoder = MessageDecoder()
            deadline = time.monotonic() + self.outbound_timeout
            while answer is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                data = await asyncio.wait_for(reader.read(65536), left)
                if not data:
                    break
                decoder.feed(data)
                answer = decoder.next_message()
        except (TimeoutError, OSError, ISNSFormatError) as exc:
            log.info("iSNS %s to %s:%d: %s", action.kind, action.host, action.port, exc)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        self._answered(action, answer)

    def _answered(self, action: Outbound, answer: Message | None) -> None:
        """Hand the answer to the engine; an SCN's is logged (5.7.5.8: the SCNRsp
        confirms that the SCN was received and processed)."""
        if action.kind == "scn":
            how = "UDP" if action.udp else "TCP"
            if answer is None:
                log.info("iSNS scn to %s:%d over %s: no answer", action.host, action.port, how)
            else:
                status = "none" if answer.status is None else int(answer.status)
                log.info("iSNS scn to %s:%d over %s: answered with function %#06x status %s",
                         action.host, action.port, how, answer.function, status)  # fmt: skip
        self.engine.outbound_answered(action, answer, time.time())
        self._after()

    async def _deliver_udp(self, action: Outbound) -> Message | None:
        """An ESI or SCN to a UDP port (2.9.2): each PDU in a datagram of its own, then
        the first message the datagrams coming back assemble (None: none in time)."""
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class _Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.put_nowait(data)

            def error_received(self, exc: Exception) -> None:
                log.info("iSNS %s to %s:%d over UDP: %s", action.kind, action.host,
                         action.port, exc)  # fmt: skip

        transport: asyncio.DatagramTransport | None = None
        try:
            transport, _ = await loop.create_datagram_endpoint(
                _Receiver, remote_addr=(action.host, action.port)
            )
            for pdu in split(action.message):
                transport.sendto(encode_pdu(pdu))
            decoder = MessageDecoder()
            deadline = time.monotonic() + self.outbound_timeout
            while (left := deadline - time.monotonic()) > 0:
                decoder.feed(await asyncio.wait_for(got.get(), left))
                answer = decoder.next_message()
                if answer is not None:
                    return answer
        except (TimeoutError, OSError, ISNSFormatError) as exc:
            log.info("iSNS %s to %s:%d over UDP: %s", action.kind, action.host, action.port, exc)
        finally:
            if transport is not None:
                transport.close()
        return None

    async def _timer(self) -> None:
        assert self._wake is not None
        while not self._closing:
            self._wake.clear()
            deadline = self.engine.get_timer()
            delay = None if deadline is None else max(0.0, deadline - time.time())
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            self.engine.handle_timer(time.time())
            self._after()
