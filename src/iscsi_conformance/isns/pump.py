"""One TCP connection moved through a sans-IO iSNS connection object.

Theory of operation: the server's connections (``engine.ServerConnection``) and the
client's ESI/SCN listener connections (``client.ListenerConnection``) are driven the
same way: read what came, feed it to the connection with the wall-clock time (the
engines write it into Timestamp attributes, RFC 4171 6.2.4), write back what it queued,
then let the adapter act on what changed (``after_step``). The loop ends when the peer
closes, the connection object closes itself, ``closing()`` says the adapter stops, or
nothing arrives for ``idle_timeout`` seconds (a PDU LENGTH that promised bytes never
sent, or a peer that went quiet). The writer is always closed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("iscsi_conformance.isns")

__all__ = ["SansIOConnection", "pump"]


class SansIOConnection(Protocol):
    """What :func:`pump` needs of a connection object."""

    @property
    def closed(self) -> bool: ...

    def receive_data(self, data: bytes, now: float) -> None: ...

    def data_to_send(self) -> bytes: ...


async def pump(
    conn: SansIOConnection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    idle_timeout: float,
    after_step: Callable[[], object],
    closing: Callable[[], bool],
    what: str = "iSNS connection",
) -> None:
    """Move bytes between ``reader``/``writer`` and ``conn`` until one side ends."""
    try:
        while not conn.closed and not closing():
            try:
                data = await asyncio.wait_for(reader.read(65536), idle_timeout)
            except TimeoutError:
                log.info("%s idle for %.1f s: closed", what, idle_timeout)
                break
            if not data:
                break
            conn.receive_data(data, time.time())
            out = conn.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            after_step()
    except (ConnectionError, OSError) as exc:
        log.info("%s lost: %s", what, exc)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
