"""A test's traffic as a pcapng file that Wireshark and tshark open.

Theory of operation: the harness records every PDU it sends and receives (the bytes,
the direction, the time since its connection began, and since format 2.1 which
connection and with which addresses). :func:`capture_of` frames those bytes in TCP
over raw IP (``LINKTYPE_RAW``), one segment per PDU, after a three-way handshake, with
the sequence numbers a real stream would have, so Wireshark follows the stream and its
iSCSI dissector reads the PDUs (on port 3260 by itself, elsewhere with Decode As).
A PDU the results kept only the start of (``first 1024 kept``) is written with its
original length larger than the captured one, as a capture with a snap length would.

A failed test's capture marks the PDU that shows the failure with a packet comment
(pcapng opt_comment, IETF draft-ietf-opsawg-pcapng section 3.5): the PDU a note of the
harness names, else the peer's last answer, else, when no answer came, the last PDU
sent. The file's first packet says which test it is.

No library is used: python-pcapng (2.1.1) and dpkt (1.9.8), the pcapng writers on
PyPI that are not part of a sniffer, have had no release since 2022, and the three
block types written here are a few ``struct`` calls.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import ipaddress
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from .model import PduEvent, TestResult

__all__ = ["Endpoint", "capture_of", "offending_index", "pcapng_bytes", "write_capture"]

LINKTYPE_RAW = 101  # raw IPv4/IPv6, no link header (tcpdump.org linktypes)
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_MAX_SEGMENT = 65000  # an IPv4 datagram's length field is 16 bits
_TRUNCATED = re.compile(r"\| (\d+) bytes, first \d+ kept")
ISCSI_PORT = 3260  # RFC 7143 13 (well-known port); Wireshark dissects it by default


@dataclasses.dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int) -> Endpoint | None:
        """``host:port``, ``[v6]:port`` or a bare host; None when it is no IP address."""
        m = re.fullmatch(r"\[?([0-9A-Fa-f:.]+?)\]?(?::(\d+))?", text.strip())
        if not m:
            return None
        try:
            ipaddress.ip_address(m.group(1))
        except ValueError:
            return None
        return cls(m.group(1), int(m.group(2)) if m.group(2) else default_port)


@dataclasses.dataclass
class _Packet:
    time: float
    data: bytes
    original: int
    comment: str = ""


def _option(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _tcp_ip(
    src: Endpoint, dst: Endpoint, seq: int, ack: int, flags: int, payload: bytes, length: int
) -> bytes:
    """An IP datagram with a TCP segment of ``length`` payload bytes, of which
    ``payload`` (maybe fewer: a cut PDU) is written. Checksums are over what is written."""
    tcp = struct.pack("!HHIIBBHHH", src.port, dst.port, seq, ack, 5 << 4, flags, 65535, 0, 0)
    s, d = ipaddress.ip_address(src.host), ipaddress.ip_address(dst.host)
    if s.version != d.version:  # a mapped address on one side: show both as IPv6
        s = ipaddress.IPv6Address(f"::ffff:{s}") if s.version == 4 else s
        d = ipaddress.IPv6Address(f"::ffff:{d}") if d.version == 4 else d
    seg_len = len(tcp) + length
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 6, seg_len)
    else:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", seg_len, 6)
    if len(payload) == length:
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
    if s.version == 4:
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + seg_len, 0, 0x4000, 64, 6, 0, s.packed, d.packed
        )
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, seg_len, 6, 64, s.packed, d.packed)
    return ip + tcp + payload


_SYN, _ACK, _PSH = 0x02, 0x10, 0x08


def _full_length(p: PduEvent, raw: bytes) -> int:
    m = _TRUNCATED.search(p.summary)
    return max(len(raw), int(m.group(1))) if m else len(raw)


def offending_index(t: TestResult) -> int | None:
    """The PDU of a failed test's trace that shows the failure (see the module
    docstring); None for a test that did not fail or has no trace."""
    if t.outcome not in ("failed", "error", "non-strict", "xpassed") or not t.evidence.pdus:
        return None
    pdus = t.evidence.pdus
    noted = [
        i for i, p in enumerate(pdus) if p.note and p.note not in ("non-strict", "informational")
    ]
    if noted:
        return noted[-1]
    role = next((r.role for r in t.spec), "target")
    answer = "t->i" if role != "initiator" else "i->t"
    last_answer = max((i for i, p in enumerate(pdus) if p.direction == answer), default=None)
    last = len(pdus) - 1
    if last_answer is not None and (last_answer == last or "no answer" not in t.message.lower()):
        return last_answer
    return last


def _connections(t: TestResult) -> list[list[int]]:
    """PDU indexes per connection: by ``PduEvent.connection`` (2.1), else a new
    connection wherever a trace's clock starts again at 0 (older results)."""
    groups: dict[int, list[int]] = {}
    conn, prev = 0, -1.0
    for i, p in enumerate(t.evidence.pdus):
        if p.connection is not None:
            conn = p.connection
        elif p.time is not None:
            if i and (p.time < prev or (p.time == 0.0 and prev > 0.0)):
                conn += 1
            prev = p.time
        groups.setdefault(conn, []).append(i)
    return [groups[k] for k in sorted(groups)]


def _start_epoch(t: TestResult) -> float:
    if t.start:
        try:
            return _dt.datetime.fromisoformat(t.start).timestamp()
        except ValueError:
            pass
    return 0.0


def capture_of(t: TestResult) -> list[tuple[float, bytes, int, str]]:
    """The packets of a test: (epoch seconds, IP datagram as captured, original
    length, comment), in time order."""
    t0 = _start_epoch(t)
    marked = offending_index(t)
    packets: list[_Packet] = []
    for n, indexes in enumerate(_connections(t)):
        conn_no = t.evidence.pdus[indexes[0]].connection
        info = (
            t.evidence.connections[conn_no]
            if conn_no is not None and conn_no < len(t.evidence.connections)
            else {}
        )
        init = Endpoint.parse(info.get("initiator", ""), 0) or Endpoint("127.0.0.1", 40000 + n)
        targ = Endpoint.parse(info.get("target", ""), ISCSI_PORT) or Endpoint(
            "127.0.0.2", ISCSI_PORT
        )
        seq = {"i->t": 1000, "t->i": 5000}
        # the handshake just before the connection's first PDU (its trace's clock
        # starts there, so the PDUs move 3 microseconds later to make room)
        hs = t0 + (t.evidence.pdus[indexes[0]].time or 0.0)
        for k, (a, b, s, ack, flags) in enumerate(
            (
                (init, targ, seq["i->t"] - 1, 0, _SYN),
                (targ, init, seq["t->i"] - 1, seq["i->t"], _SYN | _ACK),
                (init, targ, seq["i->t"], seq["t->i"], _ACK),
            )
        ):
            pkt = _tcp_ip(a, b, s, ack, flags, b"", 0)
            packets.append(_Packet(hs + k * 1e-6, pkt, len(pkt)))
        for i in indexes:
            p = t.evidence.pdus[i]
            try:
                raw = bytes.fromhex(p.hex)
            except ValueError:
                raw = b""
            full = _full_length(p, raw)
            src, dst = (init, targ) if p.direction == "i->t" else (targ, init)
            back = "t->i" if p.direction == "i->t" else "i->t"
            when = t0 + (p.time or 0.0) + 3e-6
            comment = ""
            if i == marked:
                comment = f"iscsi-conformance: {t.id} {t.outcome} here: {_first_line(t.message)}"
            elif p.note and p.note not in ("non-strict", "informational"):
                comment = f"iscsi-conformance: {p.note}"
            done = 0
            while True:  # a PDU longer than one IPv4 datagram goes in several segments
                length = min(_MAX_SEGMENT, full - done)
                chunk = raw[done : done + length]
                pkt = _tcp_ip(src, dst, seq[p.direction], seq[back], _ACK | _PSH, chunk, length)
                packets.append(_Packet(when, pkt, len(pkt) + length - len(chunk), comment))
                comment = ""
                seq[p.direction] = (seq[p.direction] + length) & 0xFFFFFFFF
                done += length
                if done >= full:
                    break
    packets.sort(key=lambda k: k.time)  # stable: a connection's order is kept
    if packets:
        head = f"iscsi-conformance: test {t.id} on {t.pairing}: {t.outcome}"
        if not t.evidence.connections:
            head += " (addresses not recorded by this run: 127.0.0.1/127.0.0.2 stand in)"
        packets[0].comment = "; ".join(c for c in (head, packets[0].comment) if c)
    return [(k.time, k.data, k.original, k.comment) for k in packets]


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:400]


def pcapng_bytes(packets: Sequence[tuple[float, bytes, int, str]], *, comment: str = "") -> bytes:
    """A pcapng section: one raw-IP interface (microsecond timestamps) and the packets."""
    shb_opts = (_option(_OPT_COMMENT, comment.encode()) if comment else b"") + _option(
        _OPT_END, b""
    )
    out = [
        _block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + shb_opts),
        _block(_IDB, struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + _option(_OPT_END, b"")),
    ]
    for when, data, original, note in packets:
        us = max(0, round(when * 1_000_000))
        body = struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(data), original)
        body += data + b"\0" * ((-len(data)) % 4)
        if note:
            body += _option(_OPT_COMMENT, note.encode()) + _option(_OPT_END, b"")
        out.append(_block(_EPB, body))
    return b"".join(out)


def write_capture(t: TestResult, path: Path) -> Path | None:
    """Write a test's capture; None (and no file) when its trace is empty. A path
    ending in ``.gz`` is written gzip-compressed, which Wireshark and tshark open as
    they are (a matrix's captures shrink to a fifth)."""
    packets = capture_of(t)
    if not packets:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pcapng_bytes(packets, comment="written by iscsi-conformance from its PDU trace")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)
    return path
