"""The conformance bridge: a TCP relay between any initiator and any target that
decodes every PDU both ways, judges it (:mod:`.judge`), records it (:mod:`.capture`)
and injects faults on demand (:mod:`.faults`).

Theory of operation
-------------------
:class:`Bridge` listens on ``listen`` and opens a connection to the target for each
initiator connection it accepts; two pumps per connection run on the bridge's own
asyncio loop (a daemon thread, ``aio.LoopThread``, as ``harness.observer``). Each pump feeds what it reads
to that direction's ``core.pdu.PDUDecoder`` and handles one whole PDU at a time: the
judge sees it as the peer sent it, the fault plan may change what goes out, and the
exact bytes are forwarded (re-encoded only when a fault or the address rewrite asks
for it). The bridge keeps no PDU once forwarded: a decoder holds at most the PDU it
is assembling, a held PDU (``merge``, ``reorder``) waits for the next one only, and the
evidence kept per breach is a few one-line summaries of the PDUs before it.

Once a connection is in the full feature phase with no fault left to inject and
nothing to rewrite, each direction leaves the loop for a relay thread of its own
(``_Relay``): it receives into one buffer, judges what it received under the
connection's lock (so the judge sees each PDU once, in wire order, before any answer
to it can exist), then sends the same bytes. The loop's read/copy/write turns were
most of the bridge's cost; the threads move bytes with the GIL released, both ways at
once (issue 15's throughput goal, ``benchmarks/bench_bridge.py``).

Digests switch on after the final Login Response passes (RFC 7143 13.1), as the judge
reports them agreed. A data digest error is judged and the PDU forwarded as it was; a
header digest error or a format error loses framing, and that direction becomes a
plain byte pipe (still captured). Breaches that follow a fault the bridge injected on
a connection are marked ``after_fault``: they may be the fault's doing, not a peer's.

``advertise`` (host, port): TargetAddress values in Text Responses (SendTargets) are
rewritten to the bridge's own portal, so an initiator that logs in to what discovery
returned comes back through the bridge (the NAT case).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from iscsi_conformance.aio import LoopThread
from iscsi_conformance.core.layout import BHS_LENGTH
from iscsi_conformance.core.pdu import (
    PDU,
    PDUDecoder,
    TextResponse,
    decode,
    decode_head,
    encode,
)
from iscsi_conformance.core.text import format_pairs, parse_pairs
from iscsi_conformance.errors import DigestError

from .capture import PcapngWriter
from .faults import Fault, FaultPlan
from .judge import DATA_UNREAD, I2T, T2I, Breach, Direction, Judge, SessionBook

__all__ = ["Bridge", "BridgeBreach", "BridgedConnection"]

_READ_CHUNK = 65536
_CONTEXT = 6  # PDU summaries kept before each breach
_HOLD = 0.2  # seconds a merged or reordered PDU waits for the next one
_RELAY_CHUNK = 1 << 18  # what one recv of a relay thread may take
_RELAY_POLL = 0.25  # seconds a relay thread waits on its sockets before it looks at stop
_SOURCE = {I2T: "initiator", T2I: "target"}  # who sends what a direction reads
_SINK = {I2T: "target", T2I: "initiator"}
#: opcodes a relay judges from the header and forwards unread (judge.DATA_UNREAD)
_STREAMED = frozenset(int(cls.opcode) for cls in DATA_UNREAD)


@dataclasses.dataclass(frozen=True)
class BridgeBreach:
    """A breach seen live, with the connection and the PDUs that led to it."""

    connection: int
    breach: Breach
    context: tuple[str, ...]
    after_fault: bool = False

    def __str__(self) -> str:
        tag = " [after an injected fault]" if self.after_fault else ""
        return f"conn {self.connection}: {self.breach}{tag}"


#: what ``BridgedConnection.recent`` holds: a note, or (direction, the PDU's first 48
#: bytes, its data length), put into words only when a breach quotes it (_render)
_Entry = str | tuple[Direction, bytes, int]


def _render(entry: _Entry) -> str:
    """One line for a PDU before a breach, from its header (the data is long gone)."""
    if isinstance(entry, str):
        return entry
    direction, header, size = entry
    try:
        bare = decode(header[:4] + bytes(4) + header[8:BHS_LENGTH])  # lengths zeroed
    except Exception:
        bare = None
    if isinstance(bare, tuple):
        return _summary(direction, bare[0], size, data=size)
    return _summary(direction, None, BHS_LENGTH + size, "(header not decodable)")


def _entry(direction: Direction, header: bytes | bytearray | memoryview, pdu: PDU) -> _Entry:
    return direction, bytes(header[:BHS_LENGTH]), len(pdu.data)


def _summary(
    direction: Direction, pdu: PDU | None, size: int, note: str = "", data: int | None = None
) -> str:
    if pdu is None:
        return f"{direction} {size} bytes {note}".rstrip()
    fields = []
    for name in ("itt", "ttt", "cmdsn", "statsn", "expcmdsn", "maxcmdsn", "datasn", "r2tsn",
                 "buffer_offset", "desired_data_transfer_length", "status", "response"):  # fmt: skip
        if hasattr(pdu, name):
            value = getattr(pdu, name)
            fields.append(f"{name}={value:#x}" if name in ("itt", "ttt") else f"{name}={value}")
    size = len(pdu.data) if data is None else data
    return f"{direction} {type(pdu).__name__} {' '.join(fields)} data={size} {note}".rstrip()


class BridgedConnection:
    """One relayed TCP connection: its judge, decoders, and what the bridge did to it."""

    def __init__(self, index: int, book: SessionBook) -> None:
        self.index = index
        self.judge = Judge(book, label=f"conn {index}")
        self.decoders: dict[Direction, PDUDecoder] = {I2T: PDUDecoder(), T2I: PDUDecoder()}
        self.recent: collections.deque[_Entry] = collections.deque(maxlen=_CONTEXT)
        self.pdus = {I2T: 0, T2I: 0}
        self.bytes = {I2T: 0, T2I: 0}
        # bytes of a PDU already judged from its header that a relay passes unread
        self.skip = {I2T: 0, T2I: 0}
        self.faulted = False
        self.framing_lost: set[Direction] = set()
        self.closed: dict[Direction, float] = {}
        self.held: dict[Direction, tuple[Fault, bytes] | None] = {I2T: None, T2I: None}
        self.writers: dict[Direction, asyncio.StreamWriter] = {}
        self.lock = threading.Lock()  # the judge sees one PDU at a time, in wire order
        self.relayed: set[Direction] = set()  # directions a relay thread carries
        # who ended the connection first: "initiator" or "target" (its socket hit EOF or
        # a reset, read or written), or "bridge" (a close fault, stop())
        self.ended_by: str | None = None

    def end(self, side: str) -> None:
        if self.ended_by is None:
            self.ended_by = side

    def __repr__(self) -> str:
        return f"BridgedConnection(#{self.index}, {self.pdus[I2T]}+{self.pdus[T2I]} PDUs)"


class Bridge:
    """``start()`` -> (host, port) for the initiator; ``stop()`` ends everything."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        faults: FaultPlan | None = None,
        pcap: str | Path | None = None,
        advertise: bool = False,
        on_breach: Callable[[BridgeBreach], None] | None = None,
        on_pdu: Callable[[int, Direction, PDU, Fault | None], None] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.listen_host, self.port = listen
        self.faults = faults or FaultPlan()
        self.pcap = PcapngWriter(pcap, port=target[1]) if pcap is not None else None
        self.advertise = advertise
        self.on_breach = on_breach
        # (connection, direction, the PDU as its sender sent it, the fault applied to it):
        # for a caller that judges what the peers did after a fault (the Wire area's
        # fault tests); the bridge itself keeps no PDU
        self.on_pdu = on_pdu
        self.connect_timeout = connect_timeout
        self.book = SessionBook()
        self.connections: list[BridgedConnection] = []
        self.breaches: list[BridgeBreach] = []
        self.harness_errors: list[str] = []
        self._runner = LoopThread("bridge")
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = threading.Condition()
        self._relays: set[_Relay] = set()

    def __repr__(self) -> str:
        return f"Bridge({self.listen_host}:{self.port} -> {self.target[0]}:{self.target[1]})"

    def __enter__(self) -> Bridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> tuple[str, int]:
        try:
            self._runner.start(self._listen, timeout)
        except OSError as exc:
            self.stop()
            raise OSError(
                f"bridge cannot listen on {self.listen_host}:{self.port}: {exc}"
            ) from None
        return self.listen_host, self.port

    async def _listen(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port, family=family, limit=_READ_CHUNK
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, then the capture; idempotent."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in self.connections:
                conn.end("bridge")
                for writer in conn.writers.values():
                    writer.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=timeout)

        self._runner.stop(shutdown, timeout)
        for relay in list(self._relays):
            relay.halt()
            relay.join(timeout)
        if self.pcap is not None:
            self.pcap.close()
        self._notify()

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True

    def wait_closed(self, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda: all(len(c.closed) == 2 for c in self.connections), timeout)

    def breaches_of(self, side: str, *, after_fault: bool = False) -> list[BridgeBreach]:
        return [
            b for b in self.breaches if b.breach.side == side and (after_fault or not b.after_fault)
        ]

    # ------------------------------------------------------------------ connections

    async def _accept(self, ireader: asyncio.StreamReader, iwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = BridgedConnection(len(self.connections), self.book)
        self.connections.append(conn)
        host, port = self.target
        try:
            treader, twriter = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=_READ_CHUNK), self.connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            self.harness_errors.append(
                f"conn {conn.index}: cannot reach target {host}:{port}: {exc}"
            )
            conn.closed = {I2T: time.monotonic(), T2I: time.monotonic()}
            iwriter.close()
            self._tasks.discard(task)
            self._notify()
            return
        if self.pcap is not None:
            self.pcap.open_connection(conn.index, time.time())
        conn.writers = {I2T: twriter, T2I: iwriter}
        pumps = [
            asyncio.ensure_future(self._pump(conn, I2T, ireader, twriter)),
            asyncio.ensure_future(self._pump(conn, T2I, treader, iwriter)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # stop(): the connection ends here, quietly (no traceback on Ctrl-C)
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
        conn: BridgedConnection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        decoder = conn.decoders[direction]
        pending = bytearray()  # bytes fed to the decoder and not yet forwarded
        try:
            while True:
                if not pending and conn.held[direction] is None and self._fast(conn):
                    await self._relay(conn, direction, reader, writer)
                    break
                try:
                    data = await reader.read(_READ_CHUNK)
                except (ConnectionError, OSError):
                    conn.end(_SOURCE[direction])
                    raise
                if not data:
                    conn.end(_SOURCE[direction])
                    break
                conn.bytes[direction] += len(data)
                if direction in conn.framing_lost:
                    await self._send(conn, direction, writer, data)
                    continue
                if not pending and conn.held[direction] is None and self._fast(conn):
                    # nothing to change on the way: judge, then forward as read (judged
                    # first, so no answer to it can reach the judge before it does)
                    self._judge_only(conn, direction, decoder, data)
                    writer.write(data)
                    await writer.drain()
                    continue
                decoder.feed(data)
                pending += data
                out = bytearray()
                while True:
                    before = decoder.buffered
                    try:
                        pdu = decoder.next_pdu()
                    except DigestError as exc:
                        self._judged(conn, conn.judge.digest_error(direction, exc.which, str(exc)))
                        if exc.which == "data":  # skipped by the decoder: still in step
                            used = before - decoder.buffered
                            conn.recent.append(
                                _summary(direction, None, used, "(data digest error)")
                            )
                            out += pending[:used]
                            del pending[:used]
                            continue
                        conn.framing_lost.add(direction)
                    except Exception as exc:  # a format error: judged by the active tests
                        self.harness_errors.append(
                            f"conn {conn.index} {direction}: undecodable: {exc}"
                        )
                        conn.framing_lost.add(direction)
                    if direction in conn.framing_lost:
                        out += pending
                        pending.clear()
                        break
                    if pdu is None:
                        break
                    used = before - decoder.buffered
                    raw = bytes(pending[:used])
                    del pending[:used]
                    action = await self._handle(conn, direction, pdu, raw, writer, out)
                    if action == "close":
                        return
                if out:
                    await self._send(conn, direction, writer, bytes(out))
        except (ConnectionError, OSError):
            conn.end(_SINK[direction])  # a read's error has named its side already
        finally:
            conn.closed.setdefault(direction, time.monotonic())
            held = conn.held[direction]
            if held is not None:
                with contextlib.suppress(Exception):
                    await self._send(conn, direction, writer, held[1])
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()
            if self.pcap is not None:
                self.pcap.close_direction(conn.index, direction, time.time())
            self._notify()

    def _fast(self, conn: BridgedConnection) -> bool:
        """Whole chunks go out unchanged: full feature phase, no fault left to inject,
        no SendTargets answer to rewrite (PDUs are still decoded and judged)."""
        judge = conn.judge
        return (
            judge.full_feature
            and not self.faults.pending
            and not (self.advertise and judge.session_type == "Discovery")
        )

    def _judge_only(
        self,
        conn: BridgedConnection,
        direction: Direction,
        decoder: PDUDecoder,
        data: bytes | memoryview,
        stream: bool = False,
    ) -> None:
        """Record, decode and judge bytes that go out unchanged (the fast path)."""
        if self.pcap is not None:
            self.pcap.record(conn.index, direction, bytes(data), time.time())
        with conn.lock:
            self._judge_chunk(conn, direction, decoder, data, stream)

    def _judge_chunk(
        self,
        conn: BridgedConnection,
        direction: Direction,
        decoder: PDUDecoder,
        data: bytes | memoryview,
        stream: bool = False,
    ) -> None:
        """Judge the PDUs in ``data``, the next bytes of ``direction``.

        Whole PDUs are decoded where they lie. With ``stream``, a Data-In, Data-Out
        or SCSI Command is judged from its header as soon as that is in
        (:func:`decode_head`; no rule reads their data, only its length:
        ``judge.DATA_UNREAD``) and the rest of it passes unread (``conn.skip``), unless
        a data digest must be checked or ``on_pdu`` wants the data. So the bridge
        copies no data segment it has no need to read, and holds none of it. Any other
        PDU cut by the end of ``data`` is assembled in the decoder, which is fed only
        the bytes of that PDU, so the next ones are back on the direct path. The relay threads stream (``stream``): they never hand the
        direction back to the loop, whose pump would not know where a PDU ends."""
        if direction in conn.framing_lost:
            return
        stream = stream and self.on_pdu is None and not decoder.data_digest
        head = BHS_LENGTH + 4 if decoder.header_digest else BHS_LENGTH
        pos, end = 0, len(data)
        while pos < end:
            skip = conn.skip[direction]
            if skip:
                n = min(skip, end - pos)
                conn.skip[direction] = skip - n
                pos += n
                continue
            if not decoder.buffered:
                pos = self._judge_whole(conn, direction, decoder, data, pos, stream, head)
                if pos >= end or conn.skip[direction]:
                    continue
                want = BHS_LENGTH  # a PDU cut by the end of data, or one to look at
            else:
                want = decoder.wanted
            first = decoder.peek(1)[0] if decoder.buffered else data[pos]
            streamed = stream and first & 0x3F in _STREAMED
            if streamed and decoder.buffered < head:
                want = head - decoder.buffered
            take = min(want, end - pos)
            decoder.feed(data[pos : pos + take])
            pos += take
            if streamed and decoder.buffered >= head:
                found = decode_head(decoder.peek(head), header_digest=decoder.header_digest)
                if found is not None:
                    conn.skip[direction] = found[2] - decoder.buffered
                    self._judge_one(conn, direction, decoder.peek(), found[0])
                    decoder.drop()
                    continue
            header = decoder.peek()
            try:
                pdu = decoder.next_pdu()
            except DigestError as exc:
                self._judged(conn, conn.judge.digest_error(direction, exc.which, str(exc)))
                if exc.which == "data":
                    continue
                conn.framing_lost.add(direction)
                return
            except Exception as exc:
                self.harness_errors.append(f"conn {conn.index} {direction}: undecodable: {exc}")
                conn.framing_lost.add(direction)
                return
            if pdu is not None:
                self._judge_one(conn, direction, header, pdu)

    def _judge_whole(
        self,
        conn: BridgedConnection,
        direction: Direction,
        decoder: PDUDecoder,
        data: bytes | memoryview,
        pos: int,
        stream: bool,
        head: int,
    ) -> int:
        """Judge the PDUs from ``data[pos:]`` where they lie (no copy into the decoder,
        whose buffer is empty); return where the first one starts that is cut by the
        end of ``data`` or that the decoder must look at (a digest or format error: it
        says what is wrong and keeps the stream in step). A streamed PDU (see
        _judge_chunk) cut by the end sets ``conn.skip`` instead."""
        end = len(data)
        while end - pos >= head:
            if stream and data[pos] & 0x3F in _STREAMED:
                found = decode_head(data, header_digest=decoder.header_digest, offset=pos)
                if found is not None:
                    pdu, _, size = found
                    self._judge_one(conn, direction, bytes(data[pos : pos + BHS_LENGTH]), pdu)
                    if size > end - pos:
                        conn.skip[direction] = size - (end - pos)
                        return end
                    pos += size
                    continue
            try:
                result = decode(
                    data,
                    header_digest=decoder.header_digest,
                    data_digest=decoder.data_digest,
                    max_data_segment_length=decoder.max_data_segment_length,
                    offset=pos,
                )
            except Exception:
                break
            if not isinstance(result, tuple):  # NeedMore
                break
            pdu, used = result
            self._judge_one(conn, direction, bytes(data[pos : pos + BHS_LENGTH]), pdu)
            pos += used
        return pos

    def _judge_one(
        self, conn: BridgedConnection, direction: Direction, header: bytes, pdu: PDU
    ) -> None:
        conn.pdus[direction] += 1
        conn.recent.append((direction, header, len(pdu.data)))  # header: 48 bytes already
        breaches = conn.judge.pdu(direction, pdu, header=header)
        if breaches:
            self._judged(conn, breaches)
        if self.on_pdu is not None:
            self._seen(conn, direction, pdu, None)

    async def _relay(
        self,
        conn: BridgedConnection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Hand this direction to a thread of its own until it ends.

        From here on nothing in it needs the loop (full feature phase, no fault left,
        nothing to rewrite): a thread that blocks in recv_into and send moves the bytes
        with the GIL released, both directions at once, without asyncio's copies and
        turns per read (the loop's cost dominated the bridge's profile). It judges each
        chunk before it forwards it, under the connection's lock, so the judge still
        sees every PDU once and in wire order. The thread works on duplicates of the
        two sockets' descriptors: asyncio keeps the other direction, and the sockets
        stay non-blocking (the thread polls them with a timeout to see ``stop()``).
        """
        await writer.drain()
        deadline = time.monotonic() + self.connect_timeout
        while writer.transport.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # what asyncio still holds goes out first
        # the reader's transport: the other direction writes through it
        source = cast(asyncio.Transport, conn.writers[T2I if direction == I2T else I2T].transport)
        source.pause_reading()
        ahead: bytearray = getattr(reader, "_buffer", bytearray())  # read, not yet taken
        leftover = bytes(ahead)
        ahead.clear()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        relay = _Relay(self, conn, direction, _dup(source), _dup(writer.transport), leftover)
        relay.on_end = lambda: _settle(loop, done)
        conn.relayed.add(direction)
        self._relays.add(relay)
        relay.start()
        try:
            await done
        except asyncio.CancelledError:
            relay.halt()
            raise
        finally:
            self._relays.discard(relay)

    async def _send(
        self,
        conn: BridgedConnection,
        direction: Direction,
        writer: asyncio.StreamWriter,
        data: bytes,
    ) -> None:
        if self.pcap is not None:
            self.pcap.record(conn.index, direction, data, time.time())
        writer.write(data)
        await writer.drain()

    def _seen(
        self, conn: BridgedConnection, direction: Direction, pdu: PDU, fault: Fault | None
    ) -> None:
        if self.on_pdu is not None:
            try:
                self.on_pdu(conn.index, direction, pdu, fault)
            except Exception as exc:
                self.harness_errors.append(f"on_pdu failed: {exc!r}")

    def _judged(self, conn: BridgedConnection, breaches: list[Breach]) -> None:
        for b in breaches:
            context = tuple(_render(e) for e in conn.recent)
            record = BridgeBreach(conn.index, b, context, conn.faulted)
            if len(self.breaches) < 10000:
                self.breaches.append(record)
            if self.on_breach is not None:
                try:
                    self.on_breach(record)
                except Exception as exc:
                    self.harness_errors.append(f"on_breach failed: {exc!r}")

    async def _handle(
        self,
        conn: BridgedConnection,
        direction: Direction,
        pdu: PDU,
        raw: bytes,
        writer: asyncio.StreamWriter,
        out: bytearray,
    ) -> str:
        """Judge, apply a due fault, queue the bytes in ``out``; "close" ends the pump."""
        judge = conn.judge
        conn.pdus[direction] += 1
        was_ffp = judge.full_feature
        conn.recent.append(_entry(direction, raw, pdu))
        self._judged(conn, judge.pdu(direction, pdu, raw))
        if judge.full_feature and not was_ffp:  # RFC 7143 13.1: digests from the next PDU
            for dec in conn.decoders.values():
                dec.header_digest = judge.header_digest
                dec.data_digest = judge.data_digest
        if self.advertise and isinstance(pdu, TextResponse) and b"TargetAddress=" in pdu.data:
            raw = self._rewrite_addresses(conn, pdu, raw)
        fault = self.faults.decide(conn.index, pdu, was_ffp)
        self._seen(conn, direction, pdu, fault)
        if fault is None:
            self._release(conn, direction, out, raw)
            return ""
        conn.faulted = True
        conn.recent.append(f"bridge: {fault}")
        if fault.action in ("drop", "withhold"):
            return ""
        if fault.action == "delay":
            if out:
                await self._send(conn, direction, writer, bytes(out))
                out.clear()
            await asyncio.sleep(fault.seconds)
            self._release(conn, direction, out, raw)
            return ""
        if fault.action in ("digest", "hdigest", "ddigest"):
            damaged = self._corrupt(conn, pdu, raw, fault)
            self._release(conn, direction, out, damaged)
            return ""
        if fault.action == "close":
            conn.end("bridge")
            for w in conn.writers.values():
                with contextlib.suppress(Exception):
                    sock = w.get_extra_info("socket")
                    if sock is not None:  # linger 0: the close is a reset
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    w.transport.abort()
            return "close"
        if fault.action == "split":
            if out:
                await self._send(conn, direction, writer, bytes(out))
                out.clear()
            await self._send(conn, direction, writer, raw[:20])
            await asyncio.sleep(0.05)
            await self._send(conn, direction, writer, raw[20:])
            return ""
        if out:  # what came before the held PDU goes first
            await self._send(conn, direction, writer, bytes(out))
            out.clear()
        held = (fault, raw)  # merge / reorder: waits for the next PDU, _HOLD at most
        conn.held[direction] = held
        asyncio.get_running_loop().call_later(_HOLD, self._flush_held, conn, direction, held)
        return ""

    def _flush_held(self, conn: BridgedConnection, direction: Direction, held: object) -> None:
        """No next PDU came in time: the held one goes out alone (after the pause)."""
        if conn.held[direction] is not held:
            return
        conn.held[direction] = None
        writer = conn.writers.get(direction)
        if writer is None or writer.is_closing():
            return
        raw = held[1]  # type: ignore[index]
        if self.pcap is not None:
            self.pcap.record(conn.index, direction, raw, time.time())
        writer.write(raw)

    def _release(
        self, conn: BridgedConnection, direction: Direction, out: bytearray, raw: bytes
    ) -> None:
        held = conn.held[direction]
        conn.held[direction] = None
        if held is None:
            out += raw
        elif held[0].action == "merge":
            out += held[1] + raw
        else:  # reorder: the held PDU goes after this one
            out += raw + held[1]

    def _corrupt(self, conn: BridgedConnection, pdu: PDU, raw: bytes, fault: Fault) -> bytes:
        judge = conn.judge
        data_ok = judge.data_digest and pdu.data and fault.action != "hdigest"
        if data_ok and fault.action in ("digest", "ddigest"):
            return raw[:-4] + bytes(b ^ 0xFF for b in raw[-4:])
        if judge.header_digest and fault.action != "ddigest":
            at = 48 + raw[4] * 4
            return raw[:at] + bytes(b ^ 0xFF for b in raw[at : at + 4]) + raw[at + 4 :]
        self.harness_errors.append(
            f"conn {conn.index}: {fault}: no such digest agreed, forwarded intact"
        )
        return raw

    def _rewrite_addresses(self, conn: BridgedConnection, pdu: TextResponse, raw: bytes) -> bytes:
        try:
            pairs = parse_pairs(pdu.data)
        except Exception:
            return raw
        mine = f"{self.listen_host}:{self.port}"
        if ":" in self.listen_host:
            mine = f"[{self.listen_host}]:{self.port}"
        new = []
        for key, value in pairs:
            if key == "TargetAddress":
                _, comma, tag = value.rpartition(",")
                value = mine + (f",{tag}" if comma else "")
            new.append((key, value))
        judge = conn.judge
        return encode(
            dataclasses.replace(pdu, data=format_pairs(new)),
            header_digest=judge.header_digest,
            data_digest=judge.data_digest,
            strict=False,
        )


def _dup(transport: asyncio.BaseTransport) -> socket.socket:
    """A second descriptor of the transport's socket, non-blocking with a timeout."""
    sock = transport.get_extra_info("socket")
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    dup.settimeout(_RELAY_POLL)  # never blocking: asyncio shares the file's flags
    return dup


def _settle(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
    def settle() -> None:
        if not done.done():
            done.set_result(None)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
        loop.call_soon_threadsafe(settle)


class _Relay(threading.Thread):
    """One direction of a connection in the full feature phase: recv, judge, send."""

    def __init__(
        self,
        bridge: Bridge,
        conn: BridgedConnection,
        direction: Direction,
        source: socket.socket,
        sink: socket.socket,
        leftover: bytes,
    ) -> None:
        super().__init__(name=f"bridge-relay-{conn.index}-{direction}", daemon=True)
        self.bridge, self.conn, self.direction = bridge, conn, direction
        self.source, self.sink, self.leftover = source, sink, leftover
        self.on_end: Callable[[], None] = lambda: None
        self._halted = False

    def halt(self) -> None:
        """End the relay (``stop()``): it leaves its recv or send within _RELAY_POLL."""
        self._halted = True
        with contextlib.suppress(OSError):
            self.source.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        conn, direction = self.conn, self.direction
        decoder = conn.decoders[direction]
        buf = bytearray(_RELAY_CHUNK)
        view = memoryview(buf)
        try:
            if self.leftover:
                self._pass(decoder, memoryview(self.leftover))
            while not self._halted:
                try:
                    n = self.source.recv_into(buf)
                except TimeoutError:
                    continue
                except OSError:
                    conn.end("bridge" if self._halted else _SOURCE[direction])
                    raise
                if not n:
                    conn.end(_SOURCE[direction])
                    break
                self._pass(decoder, view[:n])
        except OSError:  # a reset or a halt: the pump's ending reports the close
            conn.end("bridge" if self._halted else _SINK[direction])
        except Exception as exc:  # a bug of ours: said, and the connection ends
            self.bridge.harness_errors.append(f"conn {conn.index} {direction}: relay: {exc!r}")
        finally:
            view.release()
            self.source.close()
            self.sink.close()
            self.on_end()

    def _pass(self, decoder: PDUDecoder, data: memoryview) -> None:
        self.conn.bytes[self.direction] += len(data)
        self.bridge._judge_only(self.conn, self.direction, decoder, data, stream=True)
        while data:
            try:
                sent = self.sink.send(data)
            except TimeoutError:
                if self._halted:
                    raise OSError("halted") from None
                continue
            data = data[sent:]
