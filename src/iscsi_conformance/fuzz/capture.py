"""The exchange of a reproducer, as a pcapng file Wireshark and tshark open.

Theory of operation: a :class:`Tape` is attached to the one connection a replay opens
(``campaign.replay_once(..., tape=...)``). It wraps that connection's reader and writer
and keeps every chunk of bytes written and read, with its time and direction, and the
socket's two real addresses and ports. :meth:`Tape.write_pcapng` hands the chunks to
the report's pcapng writer (``report.pcapng.write_capture``) as the trace of one
connection, which frames them in TCP after a three-way handshake, one segment per
chunk, with the sequence numbers a real stream would have: tshark reassembles the
PDUs (``tshark -r FILE -d tcp.port==PORT,iscsi``; the port is the target's real one,
named in the reproducer). The file's first packet says which failure it is.

:func:`record` replays a failure once against a live target with a tape on, the way
``fuzz --save`` and ``fuzz --report`` record the capture of each reproducer they save.

A :class:`MultiTape` keeps several connections (a hostile target's case, a state
machine program with MC/S or a reinstatement): one :class:`ConnRecord` per connection,
each framed as its own TCP stream in the same pcapng.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ConnRecord", "MultiTape", "Tape", "record"]

I2T, T2I = "i->t", "t->i"


def _endpoint(name: Any) -> str:
    if not name:
        return ""
    host, port = str(name[0]), int(name[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _TapedReader:
    def __init__(self, inner: Any, tape: Tape) -> None:
        self._inner, self._tape = inner, tape

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self._inner.read(n)
        self._tape.add(T2I, data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TapedWriter:
    def __init__(self, inner: Any, tape: Tape) -> None:
        self._inner, self._tape = inner, tape

    def write(self, data: bytes) -> None:
        self._tape.add(I2T, bytes(data))
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclasses.dataclass
class Tape:
    """The bytes of one connection both ways: (seconds since ``start``, direction, bytes)."""

    start: float = 0.0
    initiator: str = ""  # "host:port" of our socket
    target: str = ""  # "host:port" of the target's
    chunks: list[tuple[float, str, bytes]] = dataclasses.field(default_factory=list)
    #: the failures (kind, place) the recorded replay saw, when :func:`record` made it
    seen: set[tuple[str, str]] | None = None

    def attach(self, wire: Any) -> None:
        """Record what goes through ``wire`` (a campaign's ``_Wire``) from now on."""
        self.start = time.time()
        self.initiator = _endpoint(wire.writer.get_extra_info("sockname"))
        self.target = _endpoint(wire.writer.get_extra_info("peername"))
        wire.reader = _TapedReader(wire.reader, self)
        wire.writer = _TapedWriter(wire.writer, self)

    def add(self, direction: str, data: bytes) -> None:
        if data:
            self.chunks.append((time.time() - self.start, direction, data))

    @property
    def target_port(self) -> int:
        return int(self.target.rsplit(":", 1)[1]) if self.target else 0

    def write_pcapng(self, path: Path, *, title: str, message: str = "") -> Path | None:
        """Write the exchange to ``path``; None (and no file) when nothing was recorded."""
        from iscsi_conformance.report.model import Evidence, PduEvent, TestResult
        from iscsi_conformance.report.pcapng import write_capture

        events = [
            PduEvent(direction, "", hex=data.hex(), time=when, connection=0)
            for when, direction, data in self.chunks
        ]
        result = TestResult(
            id=title,
            pairing="fuzz",
            outcome="failed",
            start=_dt.datetime.fromtimestamp(self.start, _dt.UTC).isoformat(),
            message=message,
            evidence=Evidence(
                pdus=events,
                connections=[{"initiator": self.initiator, "target": self.target}],
            ),
        )
        return write_capture(result, path)


@dataclasses.dataclass
class ConnRecord:
    """One connection of a :class:`MultiTape`: its two endpoints and its chunks."""

    initiator: str
    target: str
    start: float
    chunks: list[tuple[float, str, bytes]] = dataclasses.field(default_factory=list)


class MultiTape(Tape):
    """Several connections in one pcapng (``conns``; ``port``: the target's port)."""

    def __init__(self, conns: list[ConnRecord] | None = None, port: int = 0) -> None:
        conns = list(conns or [])
        super().__init__(start=min((c.start for c in conns), default=time.time()))
        self.conns = conns
        self.port = port
        self.chunks = [ch for c in conns for ch in c.chunks]

    def open(self, sockname: Any, peername: Any) -> ConnRecord:
        """A new connection from now on (the socket's own and its peer's address)."""
        conn = ConnRecord(_endpoint(sockname), _endpoint(peername), time.time())
        if not self.conns:
            self.start = conn.start
        self.conns.append(conn)
        if not self.port and peername:
            self.port = int(peername[1])
        return conn

    def add_to(self, conn: ConnRecord, direction: str, data: bytes) -> None:
        if data:
            chunk = (time.time(), direction, bytes(data))
            conn.chunks.append(chunk)
            self.chunks.append(chunk)

    @property
    def target_port(self) -> int:
        return self.port

    def write_pcapng(self, path: Path, *, title: str, message: str = "") -> Path | None:
        from iscsi_conformance.report.model import Evidence, PduEvent, TestResult
        from iscsi_conformance.report.pcapng import write_capture

        events = [
            PduEvent(direction, "", hex=data.hex(), time=when - self.start, connection=i)
            for i, c in enumerate(self.conns)
            for when, direction, data in c.chunks
        ]
        if not events:
            return None
        result = TestResult(
            id=title,
            pairing="fuzz",
            outcome="failed",
            start=_dt.datetime.fromtimestamp(self.start, _dt.UTC).isoformat(),
            message=message,
            evidence=Evidence(
                pdus=events,
                connections=[{"initiator": c.initiator, "target": c.target} for c in self.conns],
            ),
        )
        return write_capture(result, path)


def record(
    host: str,
    port: int,
    target: str,
    phase: str,
    login_keys: Sequence[tuple[str, str]],
    pdus: Sequence[bytes],
    **kw: Any,
) -> tuple[Tape, set[tuple[str, str]]]:
    """Replay ``pdus`` once (``campaign.replay``) with a tape on its connection: the
    tape and the failures that replay saw."""
    from iscsi_conformance.fuzz.campaign import replay

    tape = Tape()
    seen = replay(host, port, target, phase, login_keys, pdus, tape=tape, **kw)
    tape.seen = set(seen)
    return tape, seen
