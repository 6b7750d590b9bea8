"""The reference initiator's connection recovery at ErrorRecoveryLevel 2 (RFC 7143
7.2.2, 6.3.4, 11.14.1, 11.5.1), against the reference target in-process.

A WRITE is left waiting on its data (the initiator's Data-Out is held back once), a
READ is cut before its Data-In arrive; the TCP connection is then torn down under the
session. The initiator waits Time2Wait, takes over with a connection of the same
session (a new CID and a Logout 'remove the connection for recovery' of the failed
one, or the failed CID again), reassigns the task, and the caller's command ends as if
nothing happened. At ERL 0 (or with recovery off) the caller gets the failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from initiator_helpers import run

from iscsi_conformance.core.codes import LogoutReason, TmfFunction
from iscsi_conformance.core.pdu import (
    LoginRequest,
    LogoutRequest,
    ScsiCommand,
    ScsiDataOut,
    TaskManagementRequest,
)
from iscsi_conformance.errors import TransportError
from iscsi_conformance.initiator.client import Session

PREFIX = "iqn.2024-01.org.iscsi-conformance.test-erl2"
ERL2 = {"ErrorRecoveryLevel": "2", "DefaultTime2Retain": "10"}
# Both targets agree to DefaultTime2Wait 0 (its result is the Maximum, RFC 7143 13.15),
# to keep these cases fast: waiting a real Time2Wait (and the Logout Response's) is
# proven by tests/initiator/test_recovery_proof.py through profile "erl2".
WAIT = {"two": "0", "one": "0"}


@pytest.fixture(scope="module")
def ref() -> Iterator[tuple[str, int]]:
    from iscsi_conformance.target import config as c
    from iscsi_conformance.target.server import TargetServer

    lun = (c.LunConfig(lun=0, size=4 * 1024 * 1024),)
    config = c.ServerConfig(
        portal_groups=(c.PortalGroupConfig(tag=1, portals=(("127.0.0.1", 0),)),),
        targets=(
            c.TargetConfig(name=f"{PREFIX}:two", luns=lun,
                           parameters={**ERL2, "MaxConnections": "2", "DefaultTime2Wait": "0"}),
            c.TargetConfig(name=f"{PREFIX}:one", luns=lun,
                           parameters={**ERL2, "MaxConnections": "1", "DefaultTime2Wait": "0"}),
        ),
    )  # fmt: skip
    server = TargetServer(config)
    server.start_in_thread()
    try:
        yield server.portal(1)
    finally:
        server.stop_thread()


def _keys(erl: str, connections: str) -> dict[str, str | None]:
    return {
        "ErrorRecoveryLevel": erl,
        "MaxConnections": connections,
        "DefaultTime2Wait": "0",
        "DefaultTime2Retain": "10",
        "InitialR2T": "Yes",
        "ImmediateData": "No",
    }


class _CutAfter:
    """A ``pdu_hook`` that drops the first PDU ``opcode`` sends and then tears the
    TCP connection down (an abort, as a network failure looks to both ends)."""

    def __init__(self, opcode: type) -> None:
        self.kind = opcode
        self.session: Session | None = None
        self.done = False

    def __call__(self, pdu: Any) -> Any:
        if self.done or not isinstance(pdu, self.kind):
            return pdu
        self.done = True
        assert self.session is not None
        conn = self.session.connections[0]
        asyncio.get_running_loop().call_later(0.05, conn._writer.transport.abort)
        return None


def _sent(session: Session, cls: type) -> list[Any]:
    return [p for c in session.connections for p in c.trace.sent() if isinstance(p, cls)]


@pytest.mark.parametrize(("target", "method"), [("two", "logout"), ("one", "implicit")])
def test_write_recovered_on_another_connection(
    ref: tuple[str, int], target: str, method: str
) -> None:
    host, port = ref
    payload = bytes(range(256)) * 64  # 16 KiB

    async def go() -> None:
        hook = _CutAfter(ScsiDataOut)
        async with Session.connect(host, port, f"{PREFIX}:{target}", pdu_hook=hook,
                                   keys=_keys("2", "2" if target == "two" else "1")) as s:  # fmt: skip
            hook.session = s
            assert s.negotiated.error_recovery_level == 2
            started = time.monotonic()
            await s.write(0, 16, payload, block_size=512)
            (rec,) = s.recoveries
            wait = float(WAIT[target])
            assert rec.method == method and rec.error == "" and rec.waited >= wait
            assert list(rec.answers.values()) == [0]
            assert time.monotonic() - started >= wait  # Time2Wait honoured (13.15)
            assert await s.read(0, 16, 32, block_size=512) == payload
            reassigns = [p for p in _sent(s, TaskManagementRequest)
                         if p.function == TmfFunction.TASK_REASSIGN]  # fmt: skip
            assert len(reassigns) == 1 and reassigns[0].immediate
            if method == "logout":
                (logout,) = [p for p in _sent(s, LogoutRequest)
                             if p.reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY]  # fmt: skip
                assert logout.cid == s.connections[0].cid != s.connections[-1].cid
            else:
                logins = [p for p in _sent(s, LoginRequest)]
                assert logins[-1].cid == s.connections[0].cid and logins[-1].tsih == s.tsih

    run(go())


def test_read_recovered_from_its_expdatasn(ref: tuple[str, int]) -> None:
    host, port = ref
    payload = bytes((i * 7) & 0xFF for i in range(32768))

    async def go() -> None:
        async with Session.connect(host, port, f"{PREFIX}:one", keys=_keys("2", "1")) as s:
            await s.write(0, 256, payload, block_size=512)
            conn = s.connections[0]
            cut_done: list[bool] = []

            def cut(pdu: Any) -> Any:  # the READ goes out, then the connection dies
                if isinstance(pdu, ScsiCommand) and pdu.read and not cut_done:
                    cut_done.append(True)
                    asyncio.get_running_loop().call_soon(conn._writer.transport.abort)
                return pdu

            conn.pdu_hook = cut
            assert await s.read(0, 256, 64, block_size=512) == payload
            (rec,) = s.recoveries
            assert rec.error == "" and list(rec.answers.values()) == [0]

    run(go())


def test_no_recovery_below_erl2(ref: tuple[str, int]) -> None:
    """At ErrorRecoveryLevel 0 the initiator does not try connection recovery (6.1.5:
    nothing but session recovery is agreed): the caller gets the failure, and no
    TASK REASSIGN or reason-2 Logout goes out."""
    host, port = ref

    async def go() -> None:
        hook = _CutAfter(ScsiDataOut)
        async with Session.connect(host, port, f"{PREFIX}:two", pdu_hook=hook,
                                   keys=_keys("0", "2")) as s:  # fmt: skip
            hook.session = s
            assert s.negotiated.error_recovery_level == 0
            with pytest.raises(TransportError):
                await s.write(0, 16, bytes(4096), block_size=512)
            assert s.recoveries == []
            assert not any(p.function == TmfFunction.TASK_REASSIGN
                           for p in _sent(s, TaskManagementRequest))  # fmt: skip
            assert not [p for p in _sent(s, LogoutRequest)
                        if p.reason == LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY]  # fmt: skip

    run(go())
