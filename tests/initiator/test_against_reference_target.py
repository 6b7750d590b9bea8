"""The reference initiator against the reference target (in-process, loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from initiator_helpers import run

from iscsi_conformance.core.codes import AsyncEvent, TmfFunction, TmfResponse
from iscsi_conformance.errors import AuthenticationError, LoginError, ProtocolError
from iscsi_conformance.initiator.client import Session, discover
from iscsi_conformance.initiator.engine import AsyncMessageReceived, TargetPinged, TextCompleted
from iscsi_conformance.peers.base import ChapAccount

PREFIX = "iqn.2024-01.org.iscsi-conformance.test-ref"
CHAP = ChapAccount("carol", "carol-secret-12")
MUTUAL_IN = ChapAccount("dave", "dave-secret-123")
MUTUAL_OUT = ChapAccount("refsrv", "refsrv-secret-9")


@pytest.fixture(scope="module")
def ref() -> Iterator[tuple[object, str, int]]:
    cfg_mod = pytest.importorskip("iscsi_conformance.target.config")
    srv_mod = pytest.importorskip("iscsi_conformance.target.server")
    c = cfg_mod
    lun = (c.LunConfig(lun=0, size=16 * 1024 * 1024),)
    config = c.ServerConfig(
        portal_groups=(c.PortalGroupConfig(tag=1, portals=(("127.0.0.1", 0),)),),
        targets=(
            c.TargetConfig(name=f"{PREFIX}:plain", luns=lun,
                           parameters={"MaxConnections": "4", "HeaderDigest": "CRC32C,None",
                                       "DataDigest": "CRC32C,None"}),
            c.TargetConfig(name=f"{PREFIX}:chap", luns=lun, chap=c.ChapConfig(CHAP.user, CHAP.secret)),
            c.TargetConfig(name=f"{PREFIX}:mutual", luns=lun,
                           chap=c.ChapConfig(MUTUAL_IN.user, MUTUAL_IN.secret),
                           mutual_chap=c.ChapConfig(MUTUAL_OUT.user, MUTUAL_OUT.secret)),
            c.TargetConfig(name=f"{PREFIX}:level1", luns=lun,
                           parameters={"iSCSIProtocolLevel": "1"}),
            c.TargetConfig(name=f"{PREFIX}:small", luns=lun,
                           parameters={"MaxRecvDataSegmentLength": "1024", "MaxBurstLength": "16384",
                                       "FirstBurstLength": "4096"}),
        ),
    )  # fmt: skip
    server = srv_mod.TargetServer(config)
    server.start_in_thread()
    host, port = server.portal(1)
    try:
        yield server, host, port
    finally:
        server.stop_thread()


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


def test_discovery(ref) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref
    names = {t.name for t in run(discover(host, port))}
    assert {f"{PREFIX}:plain", f"{PREFIX}:chap", f"{PREFIX}:mutual"} <= names


@pytest.mark.parametrize(("header", "data"), [("None", "None"), ("CRC32C", "CRC32C")])
@pytest.mark.parametrize("size", [512, 65536 + 512, 1024 * 1024])
def test_round_trip(ref, header: str, data: str, size: int) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(host, port, f"{PREFIX}:plain",
                                   keys={"HeaderDigest": header, "DataDigest": data}) as s:  # fmt: skip
            assert s.negotiated.header_digest == (header == "CRC32C")
            payload = pattern(size, seed=size & 0xFF)
            await s.write(0, 64, payload)
            assert await s.read(0, 64, size // 512) == payload
            assert s.violations == []

    run(go())


@pytest.mark.parametrize(
    "keys", [{"InitialR2T": "No"}, {"ImmediateData": "No"}, {"MaxRecvDataSegmentLength": "512"}]
)
def test_small_limits(ref, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(host, port, f"{PREFIX}:small", keys=keys) as s:
            payload = pattern(100 * 1024, seed=9)
            await s.write(0, 0, payload)
            assert await s.read(0, 0, 200) == payload
            assert s.violations == []

    run(go())


@pytest.mark.parametrize("algorithm", [5, 6, 7, 8])
def test_chap_algorithms(ref, algorithm: int) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(
            host, port, f"{PREFIX}:chap", chap=CHAP, chap_algorithms=(algorithm,)
        ) as s:
            assert s.negotiated.auth_method == "CHAP"
            await s.test_unit_ready(0)

    run(go())


def test_chap_mutual_and_failures(ref) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(host, port, f"{PREFIX}:mutual", chap=MUTUAL_IN, mutual_chap=MUTUAL_OUT,
                                   chap_algorithms=(7, 5)) as s:  # fmt: skip
            await s.test_unit_ready(0)

    run(go())
    with pytest.raises(AuthenticationError) as info:
        run(
            Session.connect(
                host, port, f"{PREFIX}:chap", chap=ChapAccount(CHAP.user, "wrong-secret-77")
            )
        )
    assert info.value.login_status == 0x0201
    with pytest.raises(AuthenticationError):
        run(Session.connect(host, port, f"{PREFIX}:mutual", chap=MUTUAL_IN,
                            mutual_chap=ChapAccount(MUTUAL_OUT.user, "other-secret-88")))  # fmt: skip


def test_protocol_level_2_functions(ref) -> None:  # type: ignore[no-untyped-def]
    """The reference initiator offers iSCSIProtocolLevel 2 and, where the target agrees,
    uses the functions of RFC 7144 6.3; where it answers 1 it refuses to send them."""
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(host, port, f"{PREFIX}:plain") as s:
            assert s.negotiated.iscsi_protocol_level == 2
            await s.test_unit_ready(check=False)  # the nexus's power-on unit attention
            await s.test_unit_ready(check=False)
            assert await s.tmf(TmfFunction.QUERY_ASYNCHRONOUS_EVENT, 0) == 0
            assert await s.tmf(TmfFunction.QUERY_TASK_SET, 0) == TmfResponse.FUNCTION_COMPLETE
            assert await s.tmf(TmfFunction.QUERY_TASK, 0, 0x1234) == 0
            assert s.violations == []
        async with Session.connect(host, port, f"{PREFIX}:level1") as s:
            assert s.negotiated.iscsi_protocol_level == 1
            with pytest.raises(ProtocolError, match="iSCSIProtocolLevel 2"):
                await s.tmf(TmfFunction.QUERY_TASK_SET, 0)
            assert await s.tmf(TmfFunction.LOGICAL_UNIT_RESET, 0) == 0

    run(go())


def test_nop_tmf_text_logout(ref) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(host, port, f"{PREFIX}:plain") as s:
            assert (await s.nop(b"xyz")).data == b"xyz"
            assert await s.tmf(TmfFunction.LOGICAL_UNIT_RESET, 0) == TmfResponse.FUNCTION_COMPLETE
            found = await s.send_targets("")
            assert [t.name for t in found] == [f"{PREFIX}:plain"]
            assert await s.report_luns() == [0]
            resp = await s.logout()
            assert resp.response == 0
            assert s.violations == []

    run(go())


def test_multi_connection_session(ref) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(
            host, port, f"{PREFIX}:plain", keys={"MaxConnections": "2"}
        ) as s:
            assert s.negotiated.max_connections == 2
            c2 = await s.add_connection()
            assert c2.cid == 1
            payload = pattern(8192, seed=1)
            await s.write(0, 500, payload, connection=c2)
            assert await s.read(0, 500, 16, connection=s.connections[0]) == payload
            assert s.violations == []

    run(go())


def test_target_events(ref) -> None:  # type: ignore[no-untyped-def]
    """Target-initiated NOP-In is answered; an async logout request is surfaced."""
    server, host, port = ref

    async def go() -> None:
        async with Session.connect(
            host, port, f"{PREFIX}:plain", initiator_name="iqn.2024-01.x:events"
        ) as s:
            loop = asyncio.get_running_loop()
            sess = await loop.run_in_executor(None, server.find_session, "iqn.2024-01.x:events")
            conn_obj = (
                next(iter(sess.connections.values()))
                if isinstance(sess.connections, dict)
                else sess.connections[0]
            )
            await loop.run_in_executor(None, server.ping, conn_obj)
            ev = await s.connections[0].next_event(5)
            assert isinstance(ev, TargetPinged) and ev.answered
            await loop.run_in_executor(None, lambda: server.request_logout(sess, time_to_logout=5))
            ev = await s.connections[0].next_event(5)
            assert isinstance(ev, AsyncMessageReceived)
            assert ev.pdu.async_event == AsyncEvent.LOGOUT_REQUESTED
            # RFC 7143 11.9.1: the initiator logs out within Parameter3 seconds, by itself.
            await s.connections[0].wait_closed(5)
            assert s.logged_out

    run(go())


def test_renegotiation_request_answered(ref) -> None:  # type: ignore[no-untyped-def]
    """An Async Message asking for renegotiation (event 4) is answered by an empty Text
    Request on that connection (RFC 7143 11.9.1), and the session goes on."""
    server, host, port = ref

    async def go() -> None:
        async with Session.connect(
            host, port, f"{PREFIX}:plain", initiator_name="iqn.2024-01.x:reneg"
        ) as s:
            loop = asyncio.get_running_loop()
            sess = await loop.run_in_executor(None, server.find_session, "iqn.2024-01.x:reneg")
            await loop.run_in_executor(None, server.request_renegotiation, sess)
            conn = s.connections[0]
            for _ in range(50):
                if any(isinstance(e, TextCompleted) for e in conn.events):
                    break
                await asyncio.sleep(0.1)
            assert any(isinstance(e, AsyncMessageReceived) for e in conn.events)
            assert any(isinstance(e, TextCompleted) for e in conn.events)
            await s.nop()

    run(go())


def test_login_errors(ref) -> None:  # type: ignore[no-untyped-def]
    _, host, port = ref
    with pytest.raises(LoginError) as info:
        run(Session.connect(host, port, f"{PREFIX}:missing"))
    assert info.value.login_status == 0x0203


@pytest.mark.parametrize(
    ("target", "keys"),
    [("plain", {}), ("small", {"InitialR2T": "Yes", "ImmediateData": "No"})],
)
def test_xdwriteread_bidirectional(ref, target: str, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """A bidirectional XDWRITEREAD(10) (RFC 7143 11.3.4): the write part by immediate data
    or R2Ts, the read part (the XOR) reassembled from Data-In numbered on from the R2Ts, no
    violation seen, the medium holding the write part afterwards; then the read residuals."""
    _, host, port = ref

    async def go() -> None:
        async with Session.connect(host, port, f"{PREFIX}:{target}", keys=keys) as s:
            old, new = pattern(16384, seed=3), pattern(16384, seed=77)
            await s.write(0, 900, old)
            r = await s.xdwriteread(0, 900, new)
            assert r.status == 0 and r.data == bytes(a ^ b for a, b in zip(old, new, strict=True))
            assert await s.read(0, 900, 32) == new
            r = await s.xdwriteread(0, 900, old, read_length=8192)
            assert r.status == 0 and len(r.data) == 8192 and r.bidi_residual == 8192
            assert r.response_pdu.bidi_overflow
            r = await s.xdwriteread(0, 900, new, disable_write=True)
            assert r.data == bytes(a ^ b for a, b in zip(old, new, strict=True))
            assert await s.read(0, 900, 32) == old
            assert s.violations == []

    run(go())
