"""Mutants of what the reference target puts on the wire.

Theory of operation: ``install`` wraps ``TargetEngine.take_output`` (the one place
where the adapter collects each connection's bytes). Each connection's output is
decoded again, PDU by PDU, with the digests in force on that connection (none until
the final Login Response, then the negotiated ones), handed to the mutant's
``rewrite(conn, pdu)``, and encoded again. ``rewrite`` returns the PDU (changed or
not), ``None`` to drop it, a list of PDUs, raw ``bytes`` (already framed, e.g. with
a wrong digest), or :data:`HANG_UP` to drop it and close the connection; :data:`SILENCE` drops it and
keeps the connection open, :class:`KeepOpen` sends it and keeps the connection open.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iscsi_conformance.core import pdu as P

if TYPE_CHECKING:
    from iscsi_conformance.mutation.patching import Patcher

HANG_UP = object()  # drop this PDU and close the connection after the output
SILENCE = object()  # drop this PDU and keep the connection open (no close)


@dataclass(frozen=True)
class KeepOpen:
    """Send ``pdu`` but do not close the connection afterwards."""

    pdu: Any


@dataclass
class _Stream:
    decoder: P.PDUDecoder = field(default_factory=lambda: P.PDUDecoder())
    hd: bool = False
    dd: bool = False


def encode(pdu: P.PDU, stream: Any, **tamper: Any) -> bytes:
    """``pdu`` framed with the connection's digests; ``tamper`` as core.pdu.Tamper."""
    t = P.Tamper(**tamper) if tamper else None
    return P.encode(pdu, header_digest=stream.hd, data_digest=stream.dd, strict=False, tamper=t)


def install(patcher: Patcher, rewrite: Callable[..., Any]) -> None:
    from iscsi_conformance.target.engine import TargetEngine

    streams: weakref.WeakKeyDictionary[Any, _Stream] = weakref.WeakKeyDictionary()

    def make(old: Callable[..., Any]) -> Callable[..., Any]:
        def take_output(self: Any) -> Any:
            out = []
            for conn, bufs, close in old(self):
                stream = streams.setdefault(conn, _Stream())
                data, close = _rewrite(conn, stream, bufs, close, rewrite)
                out.append((conn, [data] if data else [], close))
            return out

        return take_output

    patcher.wrap(TargetEngine, "take_output", make)


def _rewrite(
    conn: Any, stream: _Stream, bufs: list[Any], close: bool, rewrite: Callable[..., Any]
) -> tuple[bytes, bool]:
    dec = stream.decoder
    dec.feed(b"".join(bytes(b) for b in bufs))
    out = bytearray()
    while True:
        dec.header_digest, dec.data_digest = stream.hd, stream.dd
        pdu = dec.next_pdu()
        if pdu is None:
            break
        result = rewrite(conn, pdu, stream)
        if isinstance(result, KeepOpen):
            close, result = False, result.pdu
        framed = _framed(result, stream)
        if framed is HANG_UP:
            close = True
        elif framed is SILENCE:
            close = False
        else:
            out += framed
        if (
            isinstance(pdu, P.LoginResponse)
            and pdu.transit
            and pdu.nsg == 3
            and pdu.status_class == 0
        ):
            # The final Login Response goes out plain; digests apply after it (13.1).
            stream.hd, stream.dd = bool(conn.hd), bool(conn.dd)
    return bytes(out), close


def _framed(result: Any, stream: _Stream) -> Any:
    if result is HANG_UP or result is SILENCE:
        return result
    if result is None:
        return b""
    if isinstance(result, bytes | bytearray):
        return bytes(result)
    if isinstance(result, list):
        return b"".join(_framed(r, stream) for r in result)
    return encode(result, stream)
