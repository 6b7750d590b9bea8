"""asyncio plumbing shared by the session client and RAW mode: connect, read one PDU.

Theory of operation: reading follows the two phases of the codec. The 48-byte BHS
gives TotalAHSLength and DataSegmentLength (RFC 7143 11.2.1), which with the
negotiated digests tell exactly how many bytes the rest of the PDU takes; we read
those and hand the whole PDU to :func:`core.pdu.decode`. So every PDU comes with
its exact raw bytes for the trace, and a decoding error (bad digest, oversize
segment) is reported with those bytes. Connection failures become one-line
:class:`TransportError` s: ``cannot connect to 127.0.0.1:3260: connection refused``.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from iscsi_conformance.core.pdu import PDU, NeedMore, decode
from iscsi_conformance.errors import TransportError

from .url import format_hostport

__all__ = ["BHS_LENGTH", "ConnectionClosed", "open_connection", "pdu_length", "read_pdu"]

BHS_LENGTH = 48


class ConnectionClosed(TransportError):
    """The peer closed the connection (EOF), possibly in the middle of a PDU."""

    def __init__(self, message: str, *, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable"
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


async def open_connection(
    host: str, port: int, *, timeout: float | None = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP connect with a timeout; failures become a one-line TransportError."""
    where = format_hostport(host, port)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=1 << 24), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise TransportError(f"cannot connect to {where}: {_reason(exc)}") from None
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass
    return reader, writer


def pdu_length(bhs: bytes, *, header_digest: bool, data_digest: bool) -> int:
    """Total bytes of the PDU whose BHS is ``bhs`` (RFC 7143 11.2)."""
    tahs = bhs[4]
    dsl = int.from_bytes(bhs[5:8], "big")
    n = BHS_LENGTH + 4 * tahs + ((dsl + 3) & ~3)
    if header_digest:
        n += 4
    if data_digest and dsl:
        n += 4
    return n


async def read_raw_pdu(
    reader: asyncio.StreamReader, *, header_digest: bool = False, data_digest: bool = False
) -> bytes:
    """The bytes of the next PDU; ConnectionClosed at EOF (``partial`` holds any rest)."""
    try:
        bhs = await reader.readexactly(BHS_LENGTH)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionClosed("connection closed by the peer", partial=exc.partial) from None
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise ConnectionClosed(f"connection reset by the peer ({_reason(exc)})") from None
    rest = pdu_length(bhs, header_digest=header_digest, data_digest=data_digest) - BHS_LENGTH
    try:
        tail = await reader.readexactly(rest) if rest else b""
    except asyncio.IncompleteReadError as exc:
        raise ConnectionClosed(
            f"connection closed in the middle of a PDU ({len(exc.partial)} of {rest} bytes after the BHS)",
            partial=bhs + exc.partial,
        ) from None
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise ConnectionClosed(
            f"connection reset by the peer ({_reason(exc)})", partial=bhs
        ) from None
    return bhs + tail


def decode_raw(
    raw: bytes,
    *,
    header_digest: bool = False,
    data_digest: bool = False,
    max_data_segment_length: int | None = None,
) -> PDU:
    """Decode one complete PDU (raises PDUFormatError / DigestError)."""
    result = decode(
        raw,
        header_digest=header_digest,
        data_digest=data_digest,
        max_data_segment_length=max_data_segment_length,
    )
    if isinstance(result, NeedMore):  # pragma: no cover - read_raw_pdu read it whole
        raise AssertionError(f"incomplete PDU: {result.n} bytes missing")
    return result[0]


async def read_pdu(
    reader: asyncio.StreamReader,
    *,
    header_digest: bool = False,
    data_digest: bool = False,
    max_data_segment_length: int | None = None,
) -> tuple[PDU, bytes]:
    """The next PDU and its exact bytes."""
    raw = await read_raw_pdu(reader, header_digest=header_digest, data_digest=data_digest)
    pdu = decode_raw(
        raw,
        header_digest=header_digest,
        data_digest=data_digest,
        max_data_segment_length=max_data_segment_length,
    )
    return pdu, raw
