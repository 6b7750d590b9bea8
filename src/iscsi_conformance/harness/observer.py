"""A recording (and optionally tampering) TCP proxy between an initiator and a target.

Theory of operation: initiator drivers are synchronous and may be other programs
(libiscsi's tools, open-iscsi in a VM), so the only place we can watch an initiator
under test is the wire. :class:`Observer` listens on a free 127.0.0.1 port, opens a
connection to the real target for every initiator connection it accepts, and pumps
bytes both ways on its own asyncio loop in a daemon thread.

Each direction of each connection has its own :class:`~iscsi_conformance.core.pdu.PDUDecoder`;
bytes are forwarded one whole PDU at a time, byte for byte as received, unless a
*rewrite* hook replaces the PDU (it is then re-encoded non-strictly with the digests
in force on that direction). The proxy follows the login (Login Request/Response
text, reassembled across C=1 PDUs) to learn the negotiated HeaderDigest/DataDigest;
RFC 7143 13.1 / 6.3: digests apply from the first PDU *after* the final Login Response
(T=1, NSG=3, status 0), so both decoders switch right after that response passes.

Everything is recorded per connection (:class:`ObservedConnection`): direction
``"i->t"``/``"t->i"``, monotonic time, decoded PDU, exact bytes, and whether the PDU
came from the peer or from the proxy and was delivered. Each connection also keeps a
:class:`~iscsi_conformance.initiator.trace.PDUTrace` ("send" = i->t, "recv" = t->i) for
the report (``Evidence.add_trace``).

A decode failure never stops the traffic: a data digest error is recorded and the PDU
forwarded as it was; anything that breaks framing (header digest error, a format
error) turns that direction into a plain byte pipe, recorded as raw chunks. Buffers
are bounded: reads are 64 KiB, writes wait for ``drain()``, and a decoder never holds
more than one PDU (DataSegmentLength is 24 bits).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from iscsi_conformance.aio import LoopThread
from iscsi_conformance.core.pdu import (
    PDU,
    LoginRequest,
    LoginResponse,
    PDUDecoder,
    Tamper,
    TextRequest,
    TextResponse,
    encode,
)
from iscsi_conformance.core.text import parse_pairs
from iscsi_conformance.errors import DigestError
from iscsi_conformance.initiator.trace import PDUTrace

__all__ = ["Direction", "Forged", "ObservedConnection", "ObservedPDU", "Observer", "Rewrite"]

Direction = Literal["i->t", "t->i"]
I2T: Direction = "i->t"
T2I: Direction = "t->i"
_TRACE_DIRECTION = {I2T: "send", T2I: "recv"}
_READ_CHUNK = 65536
FULL_FEATURE = 3  # LoginStage.FULL_FEATURE_PHASE (RFC 7143 11.12.3)


@dataclasses.dataclass(frozen=True)
class Forged:
    """A PDU to forward encoded with deliberate damage (``core.pdu.Tamper``: a wrong
    digest, a patched BHS byte...), for a rewrite hook to return."""

    pdu: PDU
    tamper: Tamper


# rewrite(conn, direction, pdu) -> the same object (forward untouched), a PDU, a Forged,
# or a sequence of them (forward these instead, re-encoded), or None (drop it).
Rewrite = Callable[
    ["ObservedConnection", Direction, PDU], "PDU | Forged | Sequence[PDU | Forged] | None"
]


@dataclasses.dataclass(frozen=True)
class ObservedPDU:
    """One PDU (or undecodable chunk, ``pdu=None``) seen or made by the proxy."""

    direction: Direction
    time: float
    pdu: PDU | None
    raw: bytes = dataclasses.field(repr=False)
    origin: Literal["peer", "proxy"] = "peer"
    delivered: bool = True
    note: str = ""
    full_feature: bool = False  # sent after the final Login Response had passed

    @property
    def name(self) -> str:
        return type(self.pdu).__name__ if self.pdu is not None else "bytes"


class ObservedConnection:
    """What passed on one proxied TCP connection, and what the login negotiated."""

    def __init__(self, index: int, label: str, observer: Observer | None = None) -> None:
        self.index = index
        self.observer = observer
        self.trace = PDUTrace(label)
        self.entries: list[ObservedPDU] = []
        self.decoders: dict[Direction, PDUDecoder] = {I2T: PDUDecoder(), T2I: PDUDecoder()}
        self.errors: list[tuple[Direction, Exception]] = []  # decode failures (peer's)
        self.harness_errors: list[str] = []  # our own failures (rewrite hook, target down)
        self.opened = time.monotonic()
        self.closed: dict[Direction, float] = {}  # direction -> time its sender stopped
        # login, followed from the text of Login Requests/Responses (as delivered)
        self.initiator_keys: list[tuple[str, str]] = []
        self.target_keys: list[tuple[str, str]] = []
        self.last_value: dict[str, str] = {}  # latest value either side sent, per key
        self.login_status: int | None = None  # status of the last Login Response
        self.full_feature_at: float | None = None
        self.header_digest = False
        self.data_digest = False
        self._partial: dict[Direction, bytearray] = {I2T: bytearray(), T2I: bytearray()}
        self._writers: dict[Direction, asyncio.StreamWriter] = {}  # who receives a direction
        self.muted = False  # see mute()

    def __repr__(self) -> str:
        return f"ObservedConnection(#{self.index}, {len(self.entries)} PDUs)"

    def inject(
        self, pdu: PDU, direction: Direction = "t->i", *, delay: float = 0.0, note: str = "injected"
    ) -> None:
        """Send ``pdu`` to one side of this connection (see :meth:`Observer.inject`)."""
        if self.observer is None:
            raise RuntimeError("connection has no observer")
        self.observer.inject(self, pdu, direction, delay=delay, note=note)

    def mute(self) -> None:
        """From a rewrite hook: the proxy plays a peer that goes silent. Nothing more
        from the target reaches the initiator, and the target's own close is not passed
        on: the initiator's connection stays open and hears nothing."""
        self.muted = True

    def hang_up(self) -> None:
        """Close both sides of this connection now (from a rewrite hook: the proxy plays
        a peer that drops the connection instead of answering)."""
        for writer in self._writers.values():
            writer.close()

    # ------------------------------------------------------------------ queries

    @property
    def in_full_feature(self) -> bool:
        return self.full_feature_at is not None

    @property
    def session_type(self) -> str:
        return dict(self.initiator_keys).get("SessionType", "Normal")

    def negotiated(self, key: str, default: str | None = None) -> str | None:
        """The outcome of ``key`` as the last PDU that carried it said."""
        return self.last_value.get(key, default)

    def declared_by_target(self, key: str) -> str | None:
        """The last value the target sent for ``key`` (e.g. MaxRecvDataSegmentLength)."""
        values = [v for k, v in self.target_keys if k == key]
        return values[-1] if values else None

    def declared_by_initiator(self, key: str) -> str | None:
        values = [v for k, v in self.initiator_keys if k == key]
        return values[-1] if values else None

    def sent_by_initiator(self, cls: type | tuple[type, ...] = PDU) -> list[ObservedPDU]:
        """What the initiator put on the wire (not what the proxy made of it)."""
        return [
            e
            for e in self.entries
            if e.direction == I2T and e.origin == "peer" and isinstance(e.pdu, cls)
        ]

    def seen_by_initiator(self, cls: type | tuple[type, ...] = PDU) -> list[ObservedPDU]:
        """What the initiator received (after any rewriting or injection)."""
        return [
            e for e in self.entries if e.direction == T2I and e.delivered and isinstance(e.pdu, cls)
        ]

    def delivered(self) -> list[ObservedPDU]:
        """The conversation as each side saw it, in time order."""
        return [
            e
            for e in self.entries
            if (e.direction == T2I and e.delivered) or (e.direction == I2T and e.origin == "peer")
        ]

    def pdus(self, direction: Direction | None = None) -> list[PDU]:
        return [
            e.pdu
            for e in self.delivered()
            if e.pdu is not None and (direction is None or e.direction == direction)
        ]


class Observer:
    """The proxy. ``start()`` -> (host, port) to give the initiator; ``stop()`` ends it."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        rewrite: Rewrite | None = None,
        listen_host: str = "127.0.0.1",
        label: str = "observed",
        on_connection: Callable[[ObservedConnection], None] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.rewrite = rewrite
        self.listen_host = listen_host
        self.label = label
        self.on_connection = on_connection
        self.connect_timeout = connect_timeout
        self.connections: list[ObservedConnection] = []
        self.port = 0
        self._runner = LoopThread(f"observer-{label}")
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = threading.Condition()
        self._last_activity = time.monotonic()

    def __repr__(self) -> str:
        return f"Observer({self.listen_host}:{self.port} -> {self.target[0]}:{self.target[1]})"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Observer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> tuple[str, int]:
        try:
            self._runner.start(self._listen, timeout)
        except OSError as exc:
            self._notify()
            raise OSError(f"observer did not start: {exc}") from None
        return self.listen_host, self.port

    async def _listen(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, 0, family=family, limit=_READ_CHUNK
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection; idempotent."""
        if self._runner.loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in self.connections:
                for writer in conn._writers.values():
                    writer.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=timeout)

        self._runner.stop(shutdown, timeout)
        self._notify()

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        with self._changed:
            self._last_activity = time.monotonic()
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every recorded PDU)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True

    def wait_quiet(self, idle: float = 0.2, timeout: float = 5.0) -> bool:
        """Wait until nothing has passed for ``idle`` seconds."""
        return self.wait_for(lambda: time.monotonic() - self._last_activity >= idle, timeout)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait until every connection is closed in both directions."""
        return self.wait_for(lambda: all(len(c.closed) == 2 for c in self.connections), timeout)

    # ------------------------------------------------------------------ views

    @property
    def traces(self) -> list[PDUTrace]:
        return [c.trace for c in self.connections]

    @property
    def errors(self) -> list[tuple[ObservedConnection, Direction, Exception]]:
        return [(c, d, e) for c in self.connections for d, e in c.errors]

    @property
    def harness_errors(self) -> list[str]:
        return [e for c in self.connections for e in c.harness_errors]

    def __iter__(self) -> Iterator[ObservedConnection]:
        return iter(list(self.connections))

    def normal(self) -> list[ObservedConnection]:
        return [c for c in self.connections if c.session_type == "Normal"]

    def discovery(self) -> list[ObservedConnection]:
        return [c for c in self.connections if c.session_type == "Discovery"]

    # ------------------------------------------------------------------ injection

    def inject(
        self,
        conn: ObservedConnection,
        pdu: PDU,
        direction: Direction = T2I,
        *,
        delay: float = 0.0,
        note: str = "injected",
    ) -> None:
        """Send ``pdu`` (encoded with the digests in force) to one side; thread-safe."""
        loop = self._runner.loop
        if loop is None:
            raise RuntimeError("observer is not running")

        def send() -> None:
            writer = conn._writers.get(direction)
            if writer is None or writer.is_closing():
                if delay > 0:
                    # A side closed the connection before the delay ran out (an
                    # initiator done with it, or one that gave up, which its own test
                    # sees): nothing of ours failed; the trace shows it undelivered.
                    raw = self._encode(conn, direction, pdu)
                    self._record(conn, direction, pdu, raw, origin="proxy", delivered=False,
                                 note=f"{note}: not sent, the connection had closed")  # fmt: skip
                else:
                    conn.harness_errors.append(
                        f"cannot inject {type(pdu).__name__}: connection closed"
                    )
                return
            raw = self._encode(conn, direction, pdu)
            self._record(conn, direction, pdu, raw, origin="proxy", note=note)
            writer.write(raw)

        if delay > 0:
            loop.call_soon_threadsafe(loop.call_later, delay, send)
        else:
            loop.call_soon_threadsafe(send)

    # ------------------------------------------------------------------ connections

    async def _accept(self, ireader: asyncio.StreamReader, iwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = ObservedConnection(
            len(self.connections), f"{self.label} #{len(self.connections)}", self
        )
        self.connections.append(conn)
        if self.on_connection is not None:
            try:
                self.on_connection(conn)
            except Exception as exc:
                conn.harness_errors.append(f"on_connection hook failed: {exc!r}")
        try:
            host, port = self.target
            treader, twriter = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=_READ_CHUNK), self.connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            conn.harness_errors.append(f"cannot reach target {host}:{port}: {exc!r}")
            conn.closed = {I2T: time.monotonic(), T2I: time.monotonic()}
            iwriter.close()
            self._tasks.discard(task)
            self._notify()
            return
        conn._writers = {I2T: twriter, T2I: iwriter}
        pumps = [
            asyncio.ensure_future(self._pump(conn, I2T, ireader, twriter)),
            asyncio.ensure_future(self._pump(conn, T2I, treader, iwriter)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for p in pumps:
                p.cancel()
                self._tasks.discard(p)
            for w in (iwriter, twriter):
                w.close()
            self._tasks.discard(task)
            self._notify()

    async def _pump(
        self,
        conn: ObservedConnection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        decoder = conn.decoders[direction]
        pending = bytearray()  # bytes fed to the decoder and not yet attributed to a PDU
        framing = True
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                if not framing:
                    self._record(conn, direction, None, data, note="undecoded (framing lost)")
                    writer.write(data)
                    await writer.drain()
                    continue
                decoder.feed(data)
                pending += data
                out: list[bytes] = []
                while True:
                    before = decoder.buffered
                    try:
                        pdu = decoder.next_pdu()
                    except DigestError as exc:
                        conn.errors.append((direction, exc))
                        if exc.which == "data":  # the decoder skipped it: stream in step
                            used = before - decoder.buffered
                            raw = bytes(pending[:used])
                            del pending[:used]
                            self._record(
                                conn, direction, None, raw, note=f"data digest error: {exc}"
                            )
                            out.append(raw)
                            continue
                        framing = False
                    except Exception as exc:  # malformed: keep the bytes flowing
                        conn.errors.append((direction, exc))
                        framing = False
                    if not framing:
                        raw = bytes(pending)
                        pending.clear()
                        note = f"undecoded: {conn.errors[-1][1]}"
                        self._record(conn, direction, None, raw, note=note)
                        out.append(raw)
                        break
                    if pdu is None:
                        break
                    used = before - decoder.buffered
                    raw = bytes(pending[:used])
                    del pending[:used]
                    out.extend(self._handle(conn, direction, pdu, raw))
                if out and not (conn.muted and direction == T2I):
                    writer.write(b"".join(out))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            conn.closed.setdefault(direction, time.monotonic())
            if pending:
                self._record(conn, direction, None, bytes(pending), note="incomplete PDU at close")
            with contextlib.suppress(Exception):
                if writer.can_write_eof() and not (conn.muted and direction == T2I):
                    writer.write_eof()
            self._notify()

    # ------------------------------------------------------------------ per PDU

    def _encode(
        self, conn: ObservedConnection, direction: Direction, pdu: PDU, tamper: Tamper | None = None
    ) -> bytes:
        dec = conn.decoders[direction]
        return encode(
            pdu,
            header_digest=dec.header_digest,
            data_digest=dec.data_digest,
            strict=False,
            tamper=tamper,
        )

    def _handle(
        self, conn: ObservedConnection, direction: Direction, pdu: PDU, raw: bytes
    ) -> list[bytes]:
        """Record ``pdu``, apply the rewrite hook, follow the login; bytes to forward."""
        replaced: Sequence[PDU | Forged] | None = None
        if self.rewrite is not None:
            try:
                result = self.rewrite(conn, direction, pdu)
            except Exception as exc:
                conn.harness_errors.append(f"rewrite hook failed on {pdu!r}: {exc!r}")
                result = pdu
            if result is None:
                replaced = ()
            elif result is not pdu:
                replaced = [result] if isinstance(result, PDU | Forged) else list(result)
        if replaced is None:
            self._record(conn, direction, pdu, raw)
            self._follow(conn, direction, pdu)
            return [raw]
        note = "dropped by the proxy" if not replaced else "rewritten by the proxy"
        self._record(conn, direction, pdu, raw, delivered=False, note=note)
        out = []
        for item in replaced:
            if item is pdu:
                new, data, tag = pdu, raw, "forwarded"
            elif isinstance(item, Forged):
                new, tag = item.pdu, f"forged: {item.tamper}"
                data = self._encode(conn, direction, new, item.tamper)
            else:
                new, data, tag = item, self._encode(conn, direction, item), "tampered"
            self._record(conn, direction, new, data, origin="proxy", note=tag)
            out.append(data)
        for item in replaced:  # digests switch only after the bytes above were made
            self._follow(conn, direction, item.pdu if isinstance(item, Forged) else item)
        return out

    def _record(
        self,
        conn: ObservedConnection,
        direction: Direction,
        pdu: PDU | None,
        raw: bytes,
        *,
        origin: Literal["peer", "proxy"] = "peer",
        delivered: bool = True,
        note: str = "",
    ) -> None:
        now = time.monotonic()
        entry = ObservedPDU(
            direction, now, pdu, raw, origin, delivered, note, conn.full_feature_at is not None
        )
        conn.entries.append(entry)
        conn.trace.record(_TRACE_DIRECTION[direction], now, pdu, raw, note)  # type: ignore[arg-type]
        self._notify()

    def _follow(self, conn: ObservedConnection, direction: Direction, pdu: PDU) -> None:
        """Track login (and FFP text) keys; switch digests after the final response."""
        if not isinstance(pdu, LoginRequest | LoginResponse | TextRequest | TextResponse):
            return
        part = conn._partial[direction]
        part += pdu.data
        if pdu.cont:
            return
        data = bytes(part)
        part.clear()
        pairs: list[tuple[str, str]] = []
        if data:
            try:
                pairs = parse_pairs(data)
            except Exception as exc:
                conn.errors.append((direction, exc))
        if isinstance(pdu, LoginRequest | LoginResponse):
            (conn.initiator_keys if direction == I2T else conn.target_keys).extend(pairs)
            for key, value in pairs:
                conn.last_value[key] = value
        if isinstance(pdu, LoginResponse):
            conn.login_status = pdu.status
            if pdu.status == 0 and pdu.transit and pdu.nsg == FULL_FEATURE:
                # RFC 7143 13.1: digests cover the PDUs after the login phase
                conn.header_digest = conn.last_value.get("HeaderDigest") == "CRC32C"
                conn.data_digest = conn.last_value.get("DataDigest") == "CRC32C"
                for dec in conn.decoders.values():
                    dec.header_digest = conn.header_digest
                    dec.data_digest = conn.data_digest
                conn.full_feature_at = time.monotonic()
