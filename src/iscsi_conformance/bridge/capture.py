"""Captures in and out: a streaming pcapng writer for what the bridge forwards, and a
reader of pcap/pcapng files that gives each iSCSI connection back as the segments
both sides sent, in capture order, for the judge to replay.

Theory of operation
-------------------
The writer (:class:`PcapngWriter`) frames each forwarded chunk as an IPv4/TCP packet
(link type 101, raw IP) with consistent sequence numbers, one TCP stream per bridged
connection (a synthetic SYN/SYN-ACK opens it), so Wireshark's iSCSI dissector
reassembles the PDUs as it would on a real capture. It writes as it goes and holds
nothing: each block is built and written in one call. pcapng is a small fixed format
(a Section Header, an Interface Description, Enhanced Packet Blocks); the PyPI writers
that exist are unmaintained or pull in a packet library, so this is written here.

The reader (:func:`conversations`) accepts classic pcap (Ethernet, Linux cooked or raw
IP) and pcapng (the same link types), keeps IPv4 TCP segments to or from ``port``,
drops retransmitted bytes by sequence number, and groups segments per connection
keyed by the initiator's port. Only the standard library.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from iscsi_conformance.core.pdu import PDUDecoder
from iscsi_conformance.errors import DigestError

from .judge import I2T, T2I, Direction, Judge, SessionBook

__all__ = ["Conversation", "PcapngWriter", "conversations", "replay"]

LINKTYPE_RAW = 101
_SNAPLEN = 0  # no limit
_MAX_SEGMENT = 65000  # an IPv4 packet holds at most 65535 bytes


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class PcapngWriter:
    """Write the bridge's traffic to ``path`` as pcapng; thread-safe, append as it goes."""

    def __init__(self, path: str | Path, *, port: int = 3260) -> None:
        self.path = Path(path)
        self.port = port
        self._lock = threading.Lock()
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._seq: dict[tuple[int, Direction], int] = {}
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
        self._file.write(_block(0x0A0D0D0A, shb))
        idb = struct.pack("<HHI", LINKTYPE_RAW, 0, _SNAPLEN)
        self._file.write(_block(0x00000001, idb))

    def _addresses(self, conn: int, direction: Direction) -> tuple[bytes, bytes, int, int]:
        # one made-up client address and port per connection, the target at .2:port
        client = bytes([127, 1, (conn >> 8) & 0xFF, conn & 0xFF])
        server = bytes([127, 0, 0, 2])
        cport = 40000 + conn % 20000
        if direction == I2T:
            return client, server, cport, self.port
        return server, client, self.port, cport

    def _packet(
        self, conn: int, direction: Direction, payload: bytes, flags: int, now: float
    ) -> bytes:
        src, dst, sport, dport = self._addresses(conn, direction)
        seq = self._seq.get((conn, direction), 1000)
        other: Direction = T2I if direction == I2T else I2T
        ack = 0 if flags == 0x02 else self._seq.get((conn, other), 1000)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
        csum = _checksum(pseudo + tcp + payload)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        total = 20 + len(tcp) + len(payload)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        grow = len(payload) + (1 if flags & 0x03 else 0)  # SYN and FIN take one number
        self._seq[(conn, direction)] = (seq + grow) & 0xFFFFFFFF
        frame = ip + tcp + payload
        micros = int(now * 1_000_000)
        head = struct.pack("<IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(frame), len(frame))
        return _block(0x00000006, head + _pad4(frame))

    def open_connection(self, conn: int, now: float) -> None:
        """A SYN and a SYN-ACK, so that a dissector sees the stream start."""
        self._write(
            self._packet(conn, I2T, b"", 0x02, now) + self._packet(conn, T2I, b"", 0x12, now)
        )

    def record(self, conn: int, direction: Direction, data: bytes, now: float) -> None:
        """Bytes that went out on ``direction`` of connection ``conn``."""
        out = b"".join(
            self._packet(conn, direction, data[i : i + _MAX_SEGMENT], 0x18, now)
            for i in range(0, len(data), _MAX_SEGMENT)
        )
        self._write(out)

    def close_direction(self, conn: int, direction: Direction, now: float) -> None:
        self._write(self._packet(conn, direction, b"", 0x11, now))

    def _write(self, blob: bytes) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(blob)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ============================================================================ reading


@dataclasses.dataclass
class Conversation:
    """One TCP connection of a capture: (direction, bytes) in capture order."""

    client_port: int
    segments: list[tuple[Direction, bytes]] = dataclasses.field(default_factory=list)

    def stream(self, direction: Direction) -> bytes:
        return b"".join(data for d, data in self.segments if d == direction)


def _frames(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(link type, frame) for each packet of a pcap or pcapng file."""
    magic = raw[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        pos, links = 0, []
        endian = "<" if raw[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        while pos + 12 <= len(raw):
            kind, length = struct.unpack_from(endian + "II", raw, pos)
            if length < 12:
                raise ValueError(f"pcapng block of length {length} at {pos}")
            body = raw[pos + 8 : pos + length - 4]
            if kind == 1:
                links.append(struct.unpack_from(endian + "H", body, 0)[0])
            elif kind == 6:
                iface, _, _, caplen, _ = struct.unpack_from(endian + "IIIII", body, 0)
                yield links[iface], body[20 : 20 + caplen]
            pos += length
        return
    if magic not in (
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
    ):
        raise ValueError("not a pcap or pcapng file")
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    link = struct.unpack_from(endian + "I", raw, 20)[0]
    pos = 24
    while pos + 16 <= len(raw):
        incl = struct.unpack_from(endian + "I", raw, pos + 8)[0]
        yield link, raw[pos + 16 : pos + 16 + incl]
        pos += 16 + incl


def _ip(link: int, frame: bytes) -> bytes | None:
    if link == 1:
        return frame[14:]
    if link == 113:
        return frame[16:]
    if link in (101, 228, 12):
        return frame
    raise ValueError(f"unsupported link type {link}")


def conversations(path: str | Path, port: int = 3260) -> list[Conversation]:
    """The iSCSI connections to ``port`` in a capture, each as its segments in order."""
    convs: dict[tuple[bytes, int], Conversation] = {}
    done: list[Conversation] = []
    nxt: dict[tuple[bytes, int, Direction], int] = {}
    for link, frame in _frames(Path(path).read_bytes()):
        ip = _ip(link, frame)
        if not ip or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        if port not in (sport, dport):
            continue
        direction: Direction = I2T if dport == port else T2I
        client = ip[12:16] if direction == I2T else ip[16:20]
        key = (client, sport if direction == I2T else dport)
        flags = tcp[13]
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if flags & 0x02:  # SYN: a new connection (a reused port starts afresh)
            if direction == I2T and key in convs:
                done.append(convs.pop(key))
            nxt[(*key, direction)] = (seq + 1) & 0xFFFFFFFF
        conv = convs.setdefault(key, Conversation(key[1]))
        if not payload:
            continue
        expected = nxt.get((*key, direction), seq)
        skip = (expected - seq) & 0xFFFFFFFF
        if skip >= len(payload):
            continue  # all retransmitted
        conv.segments.append((direction, payload[skip:]))
        nxt[(*key, direction)] = (seq + len(payload)) & 0xFFFFFFFF
    return done + list(convs.values())


def replay(conv: Conversation, book: SessionBook | None = None) -> Judge:
    """Judge a captured connection as the bridge would have judged it live."""
    judge = Judge(book, label=f"port {conv.client_port}")
    decoders = {I2T: PDUDecoder(), T2I: PDUDecoder()}
    for direction, data in conv.segments:
        dec = decoders[direction]
        dec.feed(data)
        while True:
            header = dec.peek()
            try:
                pdu = dec.next_pdu()
            except DigestError as exc:
                judge.digest_error(direction, exc.which, str(exc))
                if exc.which == "header":
                    return judge  # framing is lost: nothing after can be trusted
                continue
            if pdu is None:
                break
            was_ffp = judge.full_feature
            judge.pdu(direction, pdu, header=header)
            if judge.full_feature and not was_ffp:
                for d in decoders.values():
                    d.header_digest = judge.header_digest
                    d.data_digest = judge.data_digest
    return judge
