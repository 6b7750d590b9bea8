"""The reference iSNS client in memory: its sans-IO engine against the server engine
(no socket, no clock), then its asyncio adapter against the asyncio server in-process,
then the reference target's registration and configuration. Sections are RFC 4171's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from iscsi_conformance.core import isns as I
from iscsi_conformance.core.isns import (
    Attribute,
    Flag,
    FunctionId,
    Message,
    MessageDecoder,
    NodeType,
    ScnEvent,
    Status,
    Tag,
)
from iscsi_conformance.errors import ConfigError
from iscsi_conformance.isns.client import (
    ClientEngine,
    Deregistered,
    DiscoveredTarget,
    EsiAnswered,
    Event,
    NodeSpec,
    PortalGroupSpec,
    Registered,
    Registration,
    RequestFailed,
    ScnReceived,
    TargetsDiscovered,
    targets_of,
)
from iscsi_conformance.isns.client_io import ISNSClient, ISNSClientError, parse_server
from iscsi_conformance.isns.engine import ServerConfig, ServerConnection, ServerEngine
from iscsi_conformance.isns.server import ISNSServer
from iscsi_conformance.target.config import IsnsConfig, parse_config, simple_config
from iscsi_conformance.target.isns import registration_for

T1 = "iqn.2024-01.org.example:t1"
T2 = "iqn.2024-01.org.example:t2"
INI = "iqn.2024-01.org.example:ini"


def _target_reg(name: str = T1, port: int = 3260, **kw: object) -> Registration:
    return Registration(
        entity_id=f"{name}-entity",
        nodes=(NodeSpec(name, NodeType.TARGET, "disk"),),
        portals=(("127.0.0.1", port), ("::1", port)),
        groups=(PortalGroupSpec(name, "127.0.0.1", port, 1), PortalGroupSpec(name, "::1", port, 2)),
        **kw,  # type: ignore[arg-type]
    )


class Pair:
    """A client engine wired to a server engine through one connection, in memory."""

    def __init__(self, server: ServerEngine, source: str) -> None:
        self.server = server
        self.client = ClientEngine(source)
        self.conn: ServerConnection = server.connection()
        self.sent: list[bytes] = []

    def run(self, now: float = 0.0) -> list[Event]:
        for _ in range(200):
            out = self.client.data_to_send()
            if not out:
                break
            self.sent.append(out)
            self.conn.receive_data(out, now)
            self.client.receive_data(self.conn.data_to_send(), now)
        events = []
        while (e := self.client.next_event()) is not None:
            events.append(e)
        return events


@pytest.fixture
def server() -> ServerEngine:
    return ServerEngine(ServerConfig(), now=0.0)


def test_registration_is_one_pdu_laid_out_as_5_6_5_1(server: ServerEngine) -> None:
    pair = Pair(server, T1)
    pair.client.register(_target_reg(esi_port=4000, esi_interval=10, registration_period=60))
    assert pair.run() == [Registered(f"{T1}-entity", 60, refresh=False)]
    dec = MessageDecoder(strict=True)
    dec.feed(pair.sent[0])
    pdu = I.decode_pdu(pair.sent[0])
    assert not isinstance(pdu, I.NeedMore)
    assert pdu[0].flags & Flag.FIRST_PDU and pdu[0].flags & Flag.LAST_PDU  # single PDU, 5.2
    msg = dec.next_message()
    assert msg is not None and msg.flags & Flag.REPLACE and msg.flags & Flag.CLIENT
    assert [a.tag for a in msg.key_attributes] == [Tag.ENTITY_IDENTIFIER]
    ops = [a.tag for a in msg.operating_attributes]
    assert ops[:3] == [Tag.ENTITY_IDENTIFIER, Tag.ENTITY_PROTOCOL, Tag.REGISTRATION_PERIOD]
    assert ops[3:7] == [Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_TCP_UDP_PORT, Tag.ESI_INTERVAL,
                        Tag.ESI_PORT]  # fmt: skip
    assert ops.count(Tag.PG_TAG) == 2 and not I.violations(msg)
    assert server.db.nodes[T1].eid == f"{T1}-entity"


def test_discovery_lists_targets_with_their_pgts(server: ServerEngine) -> None:
    t = Pair(server, T1)
    t.client.register(_target_reg())
    t.run()
    ini = Pair(server, INI)
    ini.client.register(Registration("ini", (NodeSpec(INI, NodeType.INITIATOR),)))
    ini.client.discover()
    events = ini.run()
    assert isinstance(events[-1], TargetsDiscovered)
    (found,) = events[-1].targets
    assert found.name == T1 and found.alias == "disk"
    assert sorted(found.portals, key=str) == [("127.0.0.1", 3260, 1), ("::1", 3260, 2)]
    functions = [m.function for m in _decoded(ini.sent)]
    # DevGetNext until No Such Entry (5.6.5.3), then one DevAttrQry (5.6.5.2)
    assert functions.count(FunctionId.DEV_GET_NEXT) == 3  # first, after INI, after T1
    assert functions[-1] == FunctionId.DEV_ATTR_QRY


def _decoded(chunks: list[bytes]) -> list[Message]:
    dec = MessageDecoder()
    dec.feed(b"".join(chunks))
    return list(dec)


def test_discovery_domains_hide_targets(server: ServerEngine) -> None:
    for name in (T1, T2):
        p = Pair(server, name)
        p.client.register(_target_reg(name))
        p.run()
    ini = Pair(server, INI)
    ini.client.register(Registration("ini", (NodeSpec(INI, NodeType.INITIATOR),)))
    ini.run()
    dd = Message.request(FunctionId.DD_REG, source=Attribute.of(Tag.ISCSI_NAME, T1),
                         transaction_id=99, operating=[
                             Attribute.of(Tag.DD_SYMBOLIC_NAME, "pair"),
                             Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, T1),
                             Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, INI)])  # fmt: skip
    assert server.handle_message(dd, 0.0).status == Status.SUCCESSFUL  # type: ignore[union-attr]
    ini.client.discover()
    events = ini.run()
    assert [t.name for t in events[-1].targets] == [T1]  # type: ignore[union-attr]


def test_refresh_before_the_period_ends_and_deregistration(server: ServerEngine) -> None:
    pair = Pair(server, T1)
    pair.client.register(_target_reg(registration_period=60))
    pair.run()
    at = pair.client.get_timer()
    assert at is not None and 0 < at < 60  # 6.2.6: before the period ends
    pair.client.handle_timer(at)
    assert pair.run(at) == [Registered(f"{T1}-entity", 60, refresh=True)]
    server.handle_timer(at + 59)  # the refresh restarted the server's period
    assert T1 in server.db.nodes
    pair.client.deregister()
    assert pair.run(at + 60) == [Deregistered(f"{T1}-entity")]
    assert T1 not in server.db.nodes and pair.client.get_timer() is None


def test_restart_replaces_the_old_registration(server: ServerEngine) -> None:
    first = Pair(server, T1)
    first.client.register(_target_reg(port=3260))
    first.run()
    second = Pair(server, T1)
    second.client.register(_target_reg(port=3261))
    second.run()
    ports = {key[1] & 0xFFFF for key in server.db.portals}
    assert ports == {3261}  # 5.6.5.1: Replace


def test_esi_is_echoed_and_scn_answered(server: ServerEngine) -> None:
    """5.7.5.13: the ESI Response echoes the ESI's attributes, same TRANSACTION ID;
    5.7.5.8: the SCN Response names the destination. Judged by the server engine."""
    pair = Pair(server, T1)
    pair.client.register(_target_reg(esi_port=4000, esi_interval=5, scn_port=4000))
    pair.run()
    server.handle_timer(6.0)
    (esi,) = [o for o in server.take_outbound() if o.kind == "esi"][:1]
    listener = pair.client.listener()
    listener.receive_data(I.encode(esi.message), 6.0)
    (answer,) = _decoded([listener.data_to_send()])
    assert answer.function == FunctionId.ESI_RSP and answer.status == Status.SUCCESSFUL
    assert answer.transaction_id == esi.message.transaction_id
    assert answer.attributes == esi.message.attributes and answer.flags & Flag.CLIENT
    assert not I.violations(answer)
    server.outbound_answered(esi, answer, 6.5)
    assert not any("does not echo" in e for e in server.events)
    assert isinstance(pair.client.next_event(), EsiAnswered)
    # an initiator registering makes the server send an SCN to the target's SCN port
    ini = Pair(server, INI)
    ini.client.register(Registration("ini", (NodeSpec(INI, NodeType.INITIATOR),)))
    ini.run(7.0)
    scn = next(o for o in server.take_outbound() if o.kind == "scn")
    listener.receive_data(I.encode(scn.message), 7.0)
    (rsp,) = _decoded([listener.data_to_send()])
    assert rsp.function == FunctionId.SCN_RSP and rsp.status == 0 and not I.violations(rsp)
    assert rsp.attributes == (Attribute.of(Tag.ISCSI_NAME, T1),)
    event = pair.client.next_event()
    assert event == ScnReceived(T1, ((int(ScnEvent.OBJECT_ADDED), INI),))


def test_esi_with_the_client_flag_as_isnsd_sends_it_is_answered() -> None:
    """open-isns 0.101's ESI carries the Client flag (5.1.4 has the server set the
    Server bit); our answer is still an ESI Response from the client, echoing it."""
    client = ClientEngine(T1)
    esi = Message(FunctionId.ESI, 0, int(Flag.CLIENT), None, (
        Attribute.of(Tag.TIMESTAMP, 1), Attribute.of(Tag.ENTITY_IDENTIFIER, "e"),
        Attribute.of(Tag.PORTAL_IP_ADDRESS, "127.0.0.1"),
        Attribute.of(Tag.PORTAL_TCP_UDP_PORT, 3260)))  # fmt: skip
    listener = client.listener()
    listener.receive_data(I.encode(esi, strict=False), 0.0)
    (answer,) = _decoded([listener.data_to_send()])
    assert not listener.closed and answer.flags == Flag.CLIENT and not I.violations(answer)
    assert answer.attributes == esi.attributes and answer.transaction_id == 0
    unknown = Message(FunctionId.DD_REG, 5, int(Flag.SERVER), None, (I.DELIMITER,))
    listener.receive_data(I.encode(unknown, strict=False), 0.0)
    (refused,) = _decoded([listener.data_to_send()])
    assert refused.status == Status.MESSAGE_NOT_SUPPORTED and refused.transaction_id == 5


def test_refused_registration_and_lost_connection() -> None:
    client = ClientEngine(T1)
    client.register(_target_reg())
    (req,) = _decoded([client.data_to_send()])
    client.receive_data(I.encode(req.response(Status.INVALID_REGISTRATION)), 0.0)
    event = client.next_event()
    assert isinstance(event, RequestFailed) and event.status == Status.INVALID_REGISTRATION
    assert not client.registered
    client.discover()
    client.connection_lost("reset")
    event = client.next_event()
    assert isinstance(event, RequestFailed) and event.status is None and client.idle


def test_stray_and_repeating_answers_end_discovery() -> None:
    client = ClientEngine(INI)
    client.discover()
    (req,) = _decoded([client.data_to_send()])
    stray = Message(FunctionId.DEV_GET_NEXT_RSP, req.transaction_id + 1, int(Flag.SERVER), 0)
    client.receive_data(I.encode(stray), 0.0)  # 5.1.5: not ours, ignored
    assert not client.idle
    same = req.response(0, [Attribute.of(Tag.ISCSI_NAME, T1), I.DELIMITER])
    client.receive_data(I.encode(same), 0.0)
    (req2,) = _decoded([client.data_to_send()])
    again = req2.response(0, [Attribute.of(Tag.ISCSI_NAME, T1), I.DELIMITER])
    client.receive_data(I.encode(again), 0.0)  # no progress: stop, query what we have
    (qry,) = _decoded([client.data_to_send()])
    assert qry.function == FunctionId.DEV_ATTR_QRY
    client.receive_data(I.encode(qry.response(Status.NO_SUCH_ENTRY)), 0.0)
    assert client.next_event() == TargetsDiscovered(())


def test_null_pgt_hides_a_portal_and_no_pg_gives_every_portal() -> None:
    """6.5.4: a NULL PGT says the node is not reachable there."""
    a4 = ("127.0.0.1", 3260)
    rsp = Message(FunctionId.DEV_ATTR_QRY_RSP, 1, int(Flag.SERVER), 0, (
        Attribute.of(Tag.ISCSI_NAME, T1), I.DELIMITER,
        Attribute.of(Tag.PORTAL_IP_ADDRESS, a4[0]), Attribute.of(Tag.PORTAL_TCP_UDP_PORT, 3260),
        Attribute.of(Tag.PORTAL_IP_ADDRESS, "::1"), Attribute.of(Tag.PORTAL_TCP_UDP_PORT, 3261),
        Attribute.of(Tag.PG_ISCSI_NAME, T1), Attribute.of(Tag.PG_PORTAL_IP_ADDR, a4[0]),
        Attribute.of(Tag.PG_PORTAL_TCP_UDP_PORT, 3260), Attribute.of(Tag.PG_TAG, 7),
        Attribute.of(Tag.PG_ISCSI_NAME, T1), Attribute.of(Tag.PG_PORTAL_IP_ADDR, "::1"),
        Attribute.of(Tag.PG_PORTAL_TCP_UDP_PORT, 3261), Attribute(Tag.PG_TAG),
    ))  # fmt: skip
    assert targets_of(rsp, T1) == DiscoveredTarget(T1, "", (("127.0.0.1", 3260, 7),))
    bare = Message(FunctionId.DEV_ATTR_QRY_RSP, 1, int(Flag.SERVER), 0, rsp.attributes[:6])
    assert targets_of(bare, T1).portals == (("127.0.0.1", 3260, None), ("::1", 3261, None))


def test_parse_server() -> None:
    assert parse_server("isns://10.0.0.1") == ("10.0.0.1", 3205)
    assert parse_server("isns://[::1]:13205/") == ("::1", 13205)
    assert parse_server("127.0.0.1:1") == ("127.0.0.1", 1)
    for bad in ("isns://", "h:0", "h:x"):
        with pytest.raises(ValueError):
            parse_server(bad)


def test_adapter_against_the_server_in_process(tmp_path: Path) -> None:
    """ISNSClient over TCP to ISNSServer: register with an ESI port, be monitored
    (ESI every second, answered), discover, deregister. Bounded: a few seconds."""
    srv = ISNSServer("127.0.0.1", 0, config=ServerConfig(esi_threshold=2))
    srv.start_in_thread()
    target = ISNSClient(("127.0.0.1", srv.port),
                        registration=_target_reg(esi_port=0, esi_interval=1, scn_port=0))  # fmt: skip
    try:
        target.start_in_thread()
        assert target.esi_port and target.events_of(Registered)
        deadline = time.monotonic() + 10
        while len(target.events_of(EsiAnswered)) < 2:
            assert time.monotonic() < deadline, "no ESI came"
            time.sleep(0.1)

        async def discover() -> list[DiscoveredTarget]:
            ini = ISNSClient(("127.0.0.1", srv.port), registration=Registration(
                "ini", (NodeSpec(INI, NodeType.INITIATOR),)))  # fmt: skip
            try:
                await ini.start()
                return await ini.discover()
            finally:
                await ini.stop()

        found = asyncio.run(discover())
        assert [t.name for t in found] == [T1]
        deadline = time.monotonic() + 10
        while not target.events_of(ScnReceived):  # INI came and went
            assert time.monotonic() < deadline, "no SCN came"
            time.sleep(0.1)
    finally:
        target.stop_thread()
    try:
        assert T1 not in srv.engine.db.nodes  # deregistered at stop (5.6.5.4)
    finally:
        srv.stop_thread()


def test_adapter_refreshes_over_a_new_connection_when_the_server_closed_it() -> None:
    """The server closes idle connections (ours after ``idle_timeout``, isnsd too): the
    refresh (6.2.6) is sent again on a new connection and the entity never expires."""
    srv = ISNSServer("127.0.0.1", 0, idle_timeout=0.3)
    srv.start_in_thread()
    client = ISNSClient(("127.0.0.1", srv.port), registration=_target_reg(registration_period=2))
    try:
        client.start_in_thread()
        deadline = time.monotonic() + 10
        while len([e for e in client.events_of(Registered) if e.refresh]) < 2:
            assert time.monotonic() < deadline, client.events
            assert T1 in srv.engine.db.nodes
            time.sleep(0.1)
        assert any(isinstance(e, RequestFailed) and e.status is None for e in client.events)
    finally:
        client.stop_thread()
        srv.stop_thread()


def test_unreachable_server_is_an_error() -> None:
    async def go() -> None:
        client = ISNSClient(("127.0.0.1", 1), registration=_target_reg(), timeout=1.0)
        with pytest.raises(ISNSClientError):
            await client.start()
        await client.stop()

    asyncio.run(go())


def test_target_registration_and_config() -> None:
    cfg = simple_config(("127.0.0.1", 3260), T1, ["1M"])
    isns = IsnsConfig(("127.0.0.1", 3205))
    reg = registration_for(cfg, isns, [("127.0.0.1", 3260, 1), ("::1", 3261, 1)])
    assert reg.entity_id == T1 and reg.nodes == (NodeSpec(T1, NodeType.TARGET, ""),)
    assert reg.groups == (PortalGroupSpec(T1, "127.0.0.1", 3260, 1),
                          PortalGroupSpec(T1, "::1", 3261, 1))  # fmt: skip
    assert reg.esi_port == 0 and reg.esi_interval == 20
    doc = {
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:3260"]},
                          {"tag": 2, "portals": ["127.0.0.1:3261"]}],
        "targets": [{"name": T1, "alias": "one", "portal_groups": [2]}, {"name": T2}],
        "isns": {"server": "127.0.0.1", "esi_interval": 0, "entity_id": "box"},
    }  # fmt: skip
    cfg = parse_config(doc)
    assert cfg.isns == IsnsConfig(("127.0.0.1", 3205), "box", 0, 0)
    reg = registration_for(cfg, cfg.isns, [("127.0.0.1", 3260, 1), ("127.0.0.1", 3261, 2)])
    assert reg.esi_port is None and reg.entity_id == "box"
    assert [(g.node, g.tag) for g in reg.groups] == [(T1, None), (T1, 2), (T2, 1), (T2, 2)]
    assert parse_config({**doc, "isns": {"server": "::1"}}).isns == IsnsConfig(("::1", 3205))
    for bad in ({"esi_interval": 1}, {"server": "x:1:2:3"}, {"server": "1.2.3.4", "zz": 1}):
        with pytest.raises(ConfigError, match="isns"):
            parse_config({**doc, "isns": bad})


def test_target_cli_isns_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable iSNS server ends the target with status 1 and says so; an ESI
    interval without a server is a usage error (2)."""
    from iscsi_conformance.netutil import free_tcp_port
    from iscsi_conformance.target.cli import main

    listen = f"127.0.0.1:{free_tcp_port('127.0.0.1')}"
    common = ["--listen", listen, "--target", T1, "--lun", "1M"]
    assert main([*common, "--isns", "127.0.0.1:1"]) == 1
    assert "error: iSNS: 127.0.0.1:1" in capsys.readouterr().err
    assert main([*common, "--isns-esi-interval", "1"]) == 2
    assert "--isns-esi-interval" in capsys.readouterr().err
