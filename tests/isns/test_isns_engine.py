"""The reference iSNS server's sans-IO engine, in memory (RFC 4171).

Requests are built with the codec (core/isns.py) and fed to a ``ServerConnection`` as
bytes, whole, byte by byte or split over PDUs; answers are decoded back. open-isns's
golden client streams (fixtures/isns) are replayed and our answers compared with
isnsd's. Time is an argument: registration periods and ESI are driven by
``handle_timer(now)``, and the ESI/SCN the server originates come out as ``Outbound``
actions. Malformed input (lying lengths, unknown tags and functions, over-long names,
split and interleaved PDUs, random bytes) gets a status or a clean close, never an
exception. Sections are RFC 4171's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from iscsi_conformance.core import isns as I
from iscsi_conformance.core.isns import (
    DELIMITER,
    Attribute,
    Flag,
    FunctionId,
    Message,
    MessageDecoder,
    ScnEvent,
    Status,
    Tag,
)
from iscsi_conformance.isns.database import Database
from iscsi_conformance.isns.engine import ServerConfig, ServerConnection, ServerEngine

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "isns"
T1 = "iqn.2024-01.org.example:target-1"
T2 = "iqn.2024-01.org.example:target-2"
INI = "iqn.2024-01.org.example:initiator"
NOW = 1_800_000_000.0


def name(n: str) -> Attribute:
    return Attribute.of(Tag.ISCSI_NAME, n)


def eid(e: str) -> Attribute:
    return Attribute.of(Tag.ENTITY_IDENTIFIER, e)


def portal(ip: str, port: int) -> list[Attribute]:
    return [Attribute.of(Tag.PORTAL_IP_ADDRESS, ip),
            Attribute.of(Tag.PORTAL_TCP_UDP_PORT, I.port_value(port))]  # fmt: skip


def register(
    src: str, entity: str | None, *objects: Attribute, replace_: bool = False, key: bool = True
) -> Message:
    keys = [eid(entity)] if entity and key else []
    ops = ([eid(entity)] if entity else []) + list(objects)
    return Message.request(FunctionId.DEV_ATTR_REG, source=name(src), keys=keys, operating=ops,
                           replace=replace_)  # fmt: skip


def target(n: str, ent: str, port: int = 3260, *extra: Attribute) -> Message:
    return register(n, ent, *portal("127.0.0.1", port), *extra, name(n),
                    Attribute.of(Tag.ISCSI_NODE_TYPE, I.NodeType.TARGET))  # fmt: skip


def initiator(n: str, ent: str, *extra: Attribute) -> Message:
    return register(
        n, ent, *extra, name(n), Attribute.of(Tag.ISCSI_NODE_TYPE, I.NodeType.INITIATOR)
    )


def query(src: str, keys: list[Attribute], ops: list[Attribute] | None = None) -> Message:
    return Message.request(FunctionId.DEV_ATTR_QRY, source=name(src), keys=keys,
                           operating=ops or [])  # fmt: skip


class Client:
    """One connection to the engine; every answer is checked to be well formed."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self.conn: ServerConnection = engine.connection()
        self.xid = 0
        self.now = NOW

    def send_bytes(self, data: bytes, *, byte_by_byte: bool = False) -> list[Message]:
        if byte_by_byte:
            for i in range(len(data)):
                self.conn.receive_data(data[i : i + 1], self.now)
        else:
            self.conn.receive_data(data, self.now)
        dec = MessageDecoder()
        dec.feed(self.conn.data_to_send())
        out = list(dec)
        assert dec.buffered == 0
        for m in out:
            assert m.flags & Flag.SERVER and m.is_response
        return out

    def ask(self, msg: Message, *, words: int = 0, strict: bool = True) -> Message:
        self.xid += 1
        msg = replace(msg, transaction_id=self.xid)
        data = I.encode(msg, max_payload=4 * words if words else I.MAX_PAYLOAD, strict=strict)
        answers = self.send_bytes(data)
        assert len(answers) == 1, answers
        rsp = answers[0]
        assert rsp.transaction_id == self.xid
        assert rsp.function == I.FUNCTIONS[msg.function].response
        if rsp.status == Status.SUCCESSFUL:
            assert I.violations(rsp) == [], rsp
        return rsp


@pytest.fixture
def engine() -> ServerEngine:
    return ServerEngine(now=NOW)


@pytest.fixture
def client(engine: ServerEngine) -> Client:
    return Client(engine)


def names_in(rsp: Message, tag: int = Tag.ISCSI_NAME) -> list[str]:
    return [str(a.decoded()) for a in rsp.operating_attributes if a.tag == tag]


# ------------------------------------------------------------------ open-isns's client


def _stream(n: int, side: str) -> list[Message]:
    dec = MessageDecoder()
    dec.feed((GOLDEN / f"conn{n:02d}.{side}.bin").read_bytes())
    return list(dec)


def test_isnsadm_golden_streams_get_isnsds_answers(engine: ServerEngine) -> None:
    """open-isns's isnsadm requests (fixtures/isns) replayed: same functions, IDs and
    statuses as isnsd, and the same attributes, but for the differences RFC 4171
    decides: we return neither the implicit Entity Protocol nor the Portal Index
    (5.7.5.1), we return the Registration Period we chose (6.2.6), and our first DD is
    2 since DD_ID 1 is the default DD's (6.11.2.1)."""
    for n in range(1, 12):
        c = Client(engine)
        c.now = NOW + n
        ours = c.send_bytes(b"".join(I.encode(m, strict=False) for m in _stream(n, "c2s")))
        theirs = _stream(n, "s2c")
        assert [(m.function, m.transaction_id) for m in ours] == [
            (m.function, m.transaction_id) for m in theirs
        ]
        for a, b in zip(ours, theirs, strict=True):
            if (n, a.transaction_id) == (8, 2):
                # isnsd's DD is 1, so the walk's key 1 is before our DD 2
                assert (a.status, b.status) == (Status.SUCCESSFUL, Status.NO_SUCH_ENTRY)
                continue
            assert a.status == b.status, (n, a, b)
            if a.status:
                continue
            assert I.violations(a) == []
            skip = {Tag.ENTITY_PROTOCOL, Tag.PORTAL_INDEX, Tag.REGISTRATION_PERIOD}
            skip |= {Tag.DD_ID, Tag.DD_MEMBER_ISCSI_INDEX}
            if b.function == FunctionId.DEV_ATTR_QRY_RSP:
                skip -= {Tag.PORTAL_INDEX}
            assert [t.tag for t in a.attributes if t.tag not in skip] == [
                t.tag for t in b.attributes if t.tag not in skip
            ], n
            values = {
                Tag.ISCSI_NAME, Tag.ISCSI_ALIAS, Tag.ENTITY_IDENTIFIER, Tag.PORTAL_TCP_UDP_PORT,
                Tag.ISCSI_NODE_TYPE, Tag.PG_TAG, Tag.DD_SYMBOLIC_NAME, Tag.DD_MEMBER_ISCSI_NAME,
            }  # fmt: skip
            assert [t.decoded() for t in a.attributes if t.tag in values] == [
                t.decoded() for t in b.attributes if t.tag in values
            ], n


# ------------------------------------------------------------------ registration


def test_registration_assigns_eid_period_and_indexes(client: Client) -> None:
    rsp = client.ask(register(INI, None, name(INI), Attribute.of(Tag.ISCSI_NODE_TYPE, 2)))
    assert rsp.status == Status.SUCCESSFUL
    # 5.6.5.1/5.7.5.1: the assigned EID is in the response's key; 6.2.6: the period too
    (key,) = rsp.key_attributes
    assert key.tag == Tag.ENTITY_IDENTIFIER and key.decoded()
    assert rsp.first(Tag.REGISTRATION_PERIOD).decoded() == 900
    assert rsp.first(Tag.ISCSI_NODE_INDEX) is None  # implicitly registered: not returned


def test_update_adds_and_replace_replaces(client: Client) -> None:
    assert client.ask(target(T1, "e1", 3260)).status == 0
    assert client.ask(target(T1, "e1", 3261)).status == 0  # update: a second portal
    rsp = client.ask(query(T1, [name(T1)], [Attribute(Tag.PORTAL_TCP_UDP_PORT)]))
    assert [a.port()[0] for a in rsp.operating_attributes] == [3260, 3261]
    assert client.ask(replace(target(T1, "e1", 3262), flags=Flag.CLIENT | Flag.REPLACE)).status == 0
    rsp = client.ask(query(T1, [name(T1)], [Attribute(Tag.PORTAL_TCP_UDP_PORT)]))
    assert [a.port()[0] for a in rsp.operating_attributes] == [3262]  # 5.6.5.1 replace


def test_node_key_registration_updates_that_node(client: Client) -> None:
    client.ask(target(T1, "e1"))
    msg = Message.request(FunctionId.DEV_ATTR_REG, source=name(T1), keys=[name(T1)],
                          operating=[name(T1), Attribute.of(Tag.ISCSI_ALIAS, "disk")])  # fmt: skip
    assert client.ask(msg).status == 0
    rsp = client.ask(query(T1, [name(T1)], [Attribute(Tag.ISCSI_ALIAS)]))
    assert rsp.first(Tag.ISCSI_ALIAS).decoded() == "disk"


@pytest.mark.parametrize(
    ("msg", "status"),
    [
        pytest.param(Message.request(FunctionId.DEV_ATTR_REG, source=name(T1), keys=[name(T2)],
                                     operating=[name(T2)]),
                     Status.INVALID_REGISTRATION, id="key-matches-nothing"),
        pytest.param(register(T1, "e9", Attribute.of(Tag.ENTITY_PROTOCOL, 2)),
                     Status.INVALID_REGISTRATION, id="new-entity-without-portal-or-node"),
        pytest.param(register(T1, "e9", name(T1), Attribute.of(Tag.TIMESTAMP, 5)),
                     Status.INVALID_REGISTRATION, id="read-only-timestamp"),
        pytest.param(register(T1, "e9", Attribute.of(Tag.ISCSI_ALIAS, "x"), name(T1)),
                     Status.INVALID_REGISTRATION, id="non-key-before-key"),
        pytest.param(register(T1, "e9", name(T1), Attribute.of(Tag.FC_PORT_NAME_WWPN, 1)),
                     Status.ATTRIBUTE_NOT_IMPLEMENTED, id="ifcp-attribute"),
        pytest.param(register(T1, "e9", name(T1), Attribute(9999, b"junk")),
                     Status.INVALID_REGISTRATION, id="unknown-tag"),
        pytest.param(register(T1, "e9", Attribute(Tag.ISCSI_NAME, b"i" * 300 + b"\0" * 4)),
                     Status.INVALID_REGISTRATION, id="over-long-name"),
        pytest.param(register(T1, "e9", *portal("127.0.0.1", 3260),
                              Attribute.of(Tag.ESI_INTERVAL, 10), name(T1)),
                     Status.ESI_NOT_AVAILABLE, id="esi-interval-without-esi-port"),
    ],
)  # fmt: skip
def test_invalid_registrations(client: Client, msg: Message, status: int) -> None:
    assert client.ask(msg, strict=False).status == status


def test_containment_and_source_authorization(client: Client) -> None:
    assert client.ask(target(T1, "e1")).status == 0
    assert client.ask(initiator(INI, "e2")).status == 0
    # a node cannot move to another entity (5.6.5.1: containment never changes)
    other = "iqn.2024-01.org.example:unregistered"
    assert client.ask(register(other, "e3", name(T1))).status == Status.INVALID_REGISTRATION
    assert client.ask(register(T1, "e3", name(T1))).status == Status.SOURCE_UNAUTHORIZED
    # 5.6.1: a change comes from a node of the entity, else Source Unauthorized
    assert client.ask(register(INI, "e1", name(T2))).status == Status.SOURCE_UNAUTHORIZED
    dereg = Message.request(FunctionId.DEV_DEREG, source=name(INI), operating=[eid("e1")])
    assert client.ask(dereg).status == Status.SOURCE_UNAUTHORIZED
    control = Client(ServerEngine(ServerConfig(control_nodes=frozenset({INI})), now=NOW))
    control.ask(target(T1, "e1"))
    assert control.ask(dereg).status == Status.SUCCESSFUL


def test_deregistration(client: Client) -> None:
    client.ask(target(T1, "e1"))
    client.ask(initiator(INI, "e2"))
    gone = Message.request(FunctionId.DEV_DEREG, source=name(INI), operating=[eid("nothing")])
    assert client.ask(gone).status == 0  # 5.6.5.4: absent entries are no error
    rsp = client.ask(Message.request(FunctionId.DEV_DEREG, source=name(T1), operating=[name(T1)]))
    assert rsp.status == 0 and rsp.attributes == (DELIMITER,)
    # the portal keeps entity e1 alive; deregistering the portal removes it (5.6.5.4)
    assert "e1" in client.engine.db.entities
    dereg = Message.request(FunctionId.DEV_DEREG, source=name(INI),
                            operating=portal("127.0.0.1", 3260))  # fmt: skip
    assert client.ask(dereg).status == Status.SOURCE_UNAUTHORIZED
    client.engine.config = replace(client.engine.config, control_nodes=frozenset({INI}))
    assert client.ask(dereg).status == 0
    assert "e1" not in client.engine.db.entities
    # open-isns's private tag (fixtures/isns conn11) is no deregistration key: 22 as isnsd
    vendor = Message.request(FunctionId.DEV_DEREG, source=name(INI),
                             operating=[Attribute(0xFFFF0604, b"e2\0\0")])  # fmt: skip
    assert client.ask(vendor, strict=False).status == Status.INVALID_DEREGISTRATION


# ------------------------------------------------------------------ queries and DDs


def _three(client: Client) -> None:
    for msg in (target(T1, "e1", 3260), target(T2, "e2", 3261), initiator(INI, "e3")):
        assert client.ask(msg).status == 0


def _walk(client: Client, src: str) -> list[str]:
    seen: list[str] = []
    key = Attribute(Tag.ISCSI_NAME)
    for _ in range(10):
        rsp = client.ask(Message.request(FunctionId.DEV_GET_NEXT, source=name(src), keys=[key]))
        if rsp.status == Status.NO_SUCH_ENTRY:
            return seen
        (key,) = rsp.key_attributes
        seen.append(str(key.decoded()))
    raise AssertionError("DevGetNext did not end")


def test_default_dd_everyone_sees_everyone(client: Client) -> None:
    _three(client)
    assert _walk(client, INI) == sorted([T1, T2, INI])
    rsp = client.ask(query(INI, [Attribute(Tag.ISCSI_NODE_TYPE)], [Attribute(Tag.ISCSI_NAME)]))
    assert names_in(rsp) == sorted([T1, T2, INI])


def test_discovery_domains_restrict_queries(client: Client) -> None:
    """5.6.5.2, 5.6.5.3: a node sees only nodes with which it shares an active DD."""
    _three(client)
    dd = Message.request(FunctionId.DD_REG, source=name(T1), operating=[
        Attribute.of(Tag.DD_SYMBOLIC_NAME, "pair"), Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, T1),
        Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, INI)])  # fmt: skip
    rsp = client.ask(dd)
    assert rsp.status == 0 and rsp.key_attributes == ()
    dd_id = rsp.first(Tag.DD_ID).decoded()
    assert dd_id != 1  # 6.11.2.1: DD_ID 1 is the default DD
    assert _walk(client, INI) == sorted([T1, INI])
    assert names_in(client.ask(query(INI, [name(T2)], [Attribute(Tag.ISCSI_NAME)]))) == []
    assert names_in(client.ask(query(INI, [name(T1)], [Attribute(Tag.ISCSI_NAME)]))) == [T1]
    assert _walk(client, T2) == [T2]  # the default DD now holds T2 alone
    # whole-database query, portals: only T1's
    rsp = client.ask(query(INI, [], [Attribute(Tag.PORTAL_TCP_UDP_PORT)]))
    assert [a.port()[0] for a in rsp.operating_attributes] == [3260]
    # 3.6 to the letter: a DD in no enabled DD Set is not active
    client.engine.config = replace(client.engine.config, standalone_dds_active=False)
    assert _walk(client, INI) == sorted([T1, T2, INI])  # all back in the default DD
    dds = Message.request(FunctionId.DDS_REG, source=name(T1), operating=[
        Attribute.of(Tag.DD_SET_STATUS, 1), Attribute.of(Tag.DD_ID, dd_id)])  # fmt: skip
    assert client.ask(dds).status == 0
    assert _walk(client, INI) == sorted([T1, INI])
    # removing the DD ends the restriction (5.6.5.10)
    dereg = Message.request(
        FunctionId.DD_DEREG, source=name(T1), keys=[Attribute.of(Tag.DD_ID, dd_id)]
    )
    assert client.ask(dereg).status == 0
    assert _walk(client, INI) == sorted([T1, T2, INI])


def test_dd_registration_rules(client: Client) -> None:
    _three(client)
    mk = lambda *ops, keys=(): Message.request(  # noqa: E731
        FunctionId.DD_REG, source=name(T1), keys=list(keys), operating=list(ops)
    )
    a = client.ask(mk(Attribute.of(Tag.DD_SYMBOLIC_NAME, "a")))
    assert a.status == 0
    assert client.ask(mk(Attribute.of(Tag.DD_SYMBOLIC_NAME, "a"))).status == 3  # unique name
    assert client.ask(mk(keys=[Attribute.of(Tag.DD_ID, 77)])).status == 3  # no DD 77
    assert client.ask(mk(Attribute.of(Tag.DD_MEMBER_ISCSI_INDEX, 999))).status == 3
    # an unregistered member gets a node index now, kept when it registers (5.6.5.9)
    rsp = client.ask(mk(Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, "iqn.2024-01.org.example:later")))
    index = rsp.first(Tag.DD_MEMBER_ISCSI_INDEX).decoded()
    client.ask(initiator("iqn.2024-01.org.example:later", "e4"))
    assert client.engine.db.nodes["iqn.2024-01.org.example:later"].index == index
    # no name given: the server names it (5.6.5.9)
    assert rsp.first(Tag.DD_SYMBOLIC_NAME).decoded()
    no_mod = Client(ServerEngine(ServerConfig(dd_modification=False), now=NOW))
    no_mod.ask(target(T1, "e1"))
    assert no_mod.ask(mk(Attribute.of(Tag.DD_SYMBOLIC_NAME, "b"))).status == 8


# ------------------------------------------------------------------ timers: period, ESI


def test_registration_period_expires_and_messages_refresh(engine: ServerEngine) -> None:
    c = Client(engine)
    period = Attribute.of(Tag.REGISTRATION_PERIOD, 60)
    assert c.ask(register(T1, "e1", period, *portal("127.0.0.1", 3260), name(T1))).status == 0
    assert engine.get_timer() == NOW + 60
    c.now = NOW + 50
    c.ask(query(T1, [name(T1)]))  # 6.2.6: any message refreshes
    engine.handle_timer(NOW + 61)
    assert "e1" in engine.db.entities
    engine.handle_timer(NOW + 111)
    assert "e1" not in engine.db.entities and engine.take_dirty()


def test_esi_sent_answered_and_given_up(engine: ServerEngine) -> None:
    c = Client(engine)
    esi = [Attribute.of(Tag.ESI_INTERVAL, 30), Attribute.of(Tag.ESI_PORT, I.port_value(4000))]
    rsp = c.ask(register(T1, "e1", *portal("127.0.0.1", 3260), *esi, name(T1)))
    assert rsp.status == 0
    assert engine.get_timer() == NOW + 30
    engine.handle_timer(NOW + 30)
    (action,) = engine.take_outbound()
    assert (action.kind, action.host, action.port) == ("esi", "127.0.0.1", 4000)
    assert I.violations(action.message) == []
    assert [a.tag for a in action.message.attributes] == [
        Tag.TIMESTAMP,
        Tag.ENTITY_IDENTIFIER,
        Tag.PORTAL_IP_ADDRESS,
        Tag.PORTAL_TCP_UDP_PORT,
    ]
    # an ESI Response for another entity is no sign of life
    engine.outbound_answered(action, action.message.response(0, [eid("someone-else")]), NOW + 31)
    assert engine.get_timer() == NOW + 40  # the retransmission stays scheduled
    # the client's ESI Response echoes the attributes (5.7.5.13)
    engine.outbound_answered(
        action, action.message.response(0, action.message.attributes), NOW + 31
    )
    assert engine.get_timer() == NOW + 61
    # a client that never answers: 3 ESIs (2.4), all before twice the interval (6.3.4)
    sent = []
    for t in range(61, 200):
        engine.handle_timer(NOW + t)
        sent += [(t, a) for a in engine.take_outbound()]
        if "e1" not in engine.db.entities:
            break
    assert [t for t, _ in sent] == [61, 71, 81]
    assert "e1" not in engine.db.entities and T1 not in engine.db.nodes
    assert any("ESI unanswered" in e for e in engine.events)
    assert engine.get_timer() is None


def test_esi_over_udp_is_accepted(engine: ServerEngine) -> None:
    """2.9.2: the server MUST accept registrations requesting UDP-based ESI; the ESI
    then goes to that UDP port."""
    c = Client(engine)
    esi = [Attribute.of(Tag.ESI_INTERVAL, 30),
           Attribute.of(Tag.ESI_PORT, I.port_value(4000, udp=True))]  # fmt: skip
    assert c.ask(register(T1, "e1", *portal("127.0.0.1", 3260), *esi, name(T1))).status == 0
    engine.handle_timer(NOW + 30)
    (action,) = engine.take_outbound()
    assert (action.kind, action.host, action.port, action.udp) == ("esi", "127.0.0.1", 4000, True)


# ------------------------------------------------------------------ SCN


def test_scn_registration_and_delivery(engine: ServerEngine) -> None:
    c = Client(engine)
    scn_reg = Message.request(FunctionId.SCN_REG, source=name(INI), keys=[name(INI)],
                              operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, 0x1C)])  # fmt: skip
    c.ask(initiator(INI, "e3"))
    assert c.ask(scn_reg).status == Status.SCN_REGISTRATION_REJECTED  # no SCN port (5.6.5.5)
    c.ask(register(INI, "e3", *portal("127.0.0.1", 0), Attribute.of(
        Tag.SCN_PORT, I.port_value(5000))))  # fmt: skip
    mgmt = replace(scn_reg, attributes=(*scn_reg.attributes[:-1],
                                        Attribute.of(Tag.ISCSI_SCN_BITMAP, ScnEvent.MANAGEMENT)))  # fmt: skip
    assert c.ask(mgmt).status == Status.SCN_REGISTRATION_REJECTED  # Control Nodes only
    assert c.ask(scn_reg).status == 0
    engine.take_outbound()
    c.ask(target(T1, "e1"))
    (scn,) = engine.take_outbound()
    assert (scn.kind, scn.port) == ("scn", 5000)
    assert I.violations(scn.message) == []
    attrs = [(a.tag, a.decoded()) for a in scn.message.attributes]
    assert attrs[0] == (Tag.ISCSI_NAME, INI) and attrs[1][0] == Tag.TIMESTAMP
    assert attrs[2:] == [(Tag.ISCSI_SCN_BITMAP, ScnEvent.OBJECT_ADDED), (Tag.ISCSI_NAME, T1)]
    c.ask(Message.request(FunctionId.DEV_DEREG, source=name(T1), operating=[eid("e1")]))
    (scn,) = engine.take_outbound()
    assert [a.decoded() for a in scn.message.attributes[2:]] == [ScnEvent.OBJECT_REMOVED, T1]
    # SCNDereg: no more SCNs (5.6.5.6)
    c.ask(Message.request(FunctionId.SCN_DEREG, source=name(INI), keys=[name(INI)]))
    c.ask(target(T1, "e1"))
    assert engine.take_outbound() == []


def test_scn_over_udp_goes_to_each_portal(engine: ServerEngine) -> None:
    """2.9.2: a server MUST accept UDP SCN registrations, and the SCN SHALL go to each
    Portal registered with a UDP SCN Port (open-iscsi's iscsid registers every address
    of its host so, usr/discoveryd.c); a TCP SCN Port gets it at one Portal (6.3.7)."""
    c = Client(engine)
    udp = Attribute.of(Tag.SCN_PORT, I.port_value(5000, udp=True))
    c.ask(register(INI, "e3", *portal("127.0.0.1", 0), udp, *portal("127.0.0.2", 0), udp,
                   *portal("127.0.0.3", 0), Attribute.of(Tag.SCN_PORT, I.port_value(5001)),
                   name(INI), Attribute.of(Tag.ISCSI_NODE_TYPE, 2)))  # fmt: skip
    scn_reg = Message.request(FunctionId.SCN_REG, source=name(INI), keys=[name(INI)],
                              operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, 0x1C)])  # fmt: skip
    assert c.ask(scn_reg).status == 0
    engine.take_outbound()
    c.ask(target(T1, "e1"))
    sent = engine.take_outbound()
    assert sorted((a.host, a.port, a.udp) for a in sent) == [
        ("127.0.0.1", 5000, True), ("127.0.0.2", 5000, True)]  # fmt: skip
    assert len({a.message.transaction_id for a in sent}) == 2


def test_scn_is_not_delivered_to_the_portal_it_is_about(engine: ServerEngine) -> None:
    """RFC 4171 5.6.5.8: with several Portals of the recipient registered with an SCN
    Port, the SCN goes to one of them "provided that the selected Portal is not the
    subject of the SCN". The recipient's entity re-registers its first Portal: the SCN
    (Object Updated, about the entity's target) goes to the other Portal; a change that
    does not touch a Portal leaves the first one chosen."""
    c = Client(engine)
    a = [*portal("127.0.0.1", 0), Attribute.of(Tag.SCN_PORT, I.port_value(5000))]
    b = [*portal("127.0.0.2", 0), Attribute.of(Tag.SCN_PORT, I.port_value(5001))]
    c.ask(register(INI, "e3", *a, *b, name(INI), Attribute.of(Tag.ISCSI_NODE_TYPE, 2),
                   name(T2), Attribute.of(Tag.ISCSI_NODE_TYPE, 1)))  # fmt: skip
    scn_reg = Message.request(FunctionId.SCN_REG, source=name(INI), keys=[name(INI)],
                              operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, 0x1C)])  # fmt: skip
    assert c.ask(scn_reg).status == 0
    engine.take_outbound()
    c.ask(
        register(INI, "e3", *a, Attribute.of(Tag.PORTAL_SYMBOLIC_NAME, "one"))
    )  # Portal 1 updated
    (scn,) = engine.take_outbound()
    assert [a.decoded() for a in scn.message.attributes[2:]] == [ScnEvent.OBJECT_UPDATED, T2]
    assert (scn.host, scn.port) == ("127.0.0.2", 5001)
    c.ask(target(T1, "e1"))  # no Portal of e3 is the subject: the first one serves
    (scn,) = engine.take_outbound()
    assert (scn.host, scn.port) == ("127.0.0.1", 5000)


# ------------------------------------------------------------------ persistence


def test_database_survives_a_restart(engine: ServerEngine, tmp_path: Path) -> None:
    c = Client(engine)
    _three(c)
    c.ask(
        Message.request(
            FunctionId.DD_REG,
            source=name(T1),
            operating=[
                Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, T1),
                Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, INI),
            ],
        )
    )
    c.ask(Message.request(FunctionId.DDS_REG, source=name(T1),
                          operating=[Attribute.of(Tag.DD_SET_SYMBOLIC_NAME, "s")]))  # fmt: skip
    assert engine.take_dirty()
    text = json.dumps(engine.db.to_json())
    again = ServerEngine(now=NOW + 5, database=Database.from_json(json.loads(text)))
    assert again.db.to_json() == engine.db.to_json()
    assert again.get_timer() == NOW + 5 + 900  # periods restart from the load
    c2 = Client(again)
    assert _walk(c2, INI) == _walk(c, INI) == sorted([T1, INI])
    with pytest.raises(ValueError):
        Database.from_json({"version": 99})


# ------------------------------------------------------------------ malformed input


def test_answers_status_per_rule(client: Client) -> None:
    good = initiator(INI, "e3")
    assert client.ask(replace(good, version=2), strict=False).status == Status.VERSION_NOT_SUPPORTED
    # 5.6.1: no Source is Source Absent; one that is no iSCSI Name is no known source
    assert client.ask(replace(good, attributes=(DELIMITER, *good.operating_attributes)),
                      strict=False).status == Status.SOURCE_ABSENT  # fmt: skip
    assert client.ask(replace(good, attributes=good.attributes[1:]),
                      strict=False).status == Status.SOURCE_UNKNOWN  # fmt: skip
    for function in (0x0042, FunctionId.RQST_DOM_ID, FunctionId.ESI, FunctionId.SCN):
        msg = replace(good, function=function, transaction_id=7)
        data = I.encode(msg, strict=False)
        (rsp,) = client.send_bytes(data)
        # an unknown function's response has no layout the codec knows: status in the body
        status = rsp.status if rsp.status is not None else int.from_bytes(rsp.body[:4], "big")
        assert status == Status.MESSAGE_NOT_SUPPORTED and rsp.transaction_id == 7
    # the Heartbeat gets no response (5.6.5.14); responses are not answered
    hb = Message(FunctionId.HEARTBEAT, 9, Flag.SERVER, body=I.Heartbeat().encode())
    assert client.send_bytes(I.encode(hb)) == []
    assert client.send_bytes(I.encode(good.response(0), strict=False)) == []
    assert client.ask(good).status == 0


def test_lying_attribute_length_is_answered_and_the_connection_goes_on(client: Client) -> None:
    good = replace(initiator(INI, "e3"), transaction_id=5)
    bad = replace(good, transaction_id=4, attributes=(*good.attributes[:-1],
                                                       replace(good.attributes[-1], length=4000)))  # fmt: skip
    answers = client.send_bytes(I.encode(bad, strict=False) + I.encode(good))
    assert [(a.transaction_id, a.status) for a in answers] == [
        (4, Status.MESSAGE_FORMAT_ERROR),
        (5, 0),
    ]


def test_split_messages_whole_byte_by_byte_and_interleaved(client: Client) -> None:
    msg = replace(target(T1, "e1"), transaction_id=1)
    data = I.encode(msg, max_payload=8)
    assert len(I.split(msg, max_payload=8)) > 5
    (rsp,) = client.send_bytes(data, byte_by_byte=True)
    assert rsp.status == 0
    # two transactions interleaved PDU by PDU (5.2)
    a = I.split(replace(query(T1, [name(T1)]), transaction_id=2), max_payload=8)
    b = I.split(replace(initiator(INI, "e3"), transaction_id=3), max_payload=8)
    mixed = [p for pair in zip(a, b, strict=False) for p in pair] + a[len(b) :] + b[len(a) :]
    answers = client.send_bytes(b"".join(I.encode(p) for p in mixed))
    assert sorted((r.transaction_id, r.status) for r in answers) == [(2, 0), (3, 0)]


def test_reassembly_errors(engine: ServerEngine) -> None:
    c = Client(engine)
    pdus = I.split(replace(initiator(INI, "e3"), transaction_id=1), max_payload=8)
    # a middle PDU without its First PDU, then a First PDU twice
    (r1,) = c.send_bytes(I.encode(pdus[1]))
    assert r1.status == Status.MESSAGE_FORMAT_ERROR
    c.send_bytes(I.encode(pdus[0]))
    (r2,) = c.send_bytes(I.encode(pdus[0]))
    assert r2.status == Status.MESSAGE_FORMAT_ERROR
    # too many unfinished messages: Busy (5.4)
    c2 = Client(ServerEngine(ServerConfig(max_pending=2), now=NOW))
    firsts = [replace(pdus[0], transaction_id=x) for x in (1, 2, 3)]
    answers = c2.send_bytes(b"".join(I.encode(p) for p in firsts))
    assert [(r.transaction_id, r.status) for r in answers] == [(3, Status.BUSY)]
    # an absurd authentication block length cannot be framed: clean close
    c3 = Client(engine)
    auth = I.PDU(FunctionId.DEV_ATTR_QRY, b"", Flag.CLIENT | Flag.FIRST_PDU | Flag.LAST_PDU
                 | Flag.AUTH_BLOCK, 1, 0, 1, bytes(4) + (3).to_bytes(4, "big") + bytes(12))  # fmt: skip
    assert c3.send_bytes(I.encode(auth, strict=False)) == [] and c3.conn.closed
    # a PDU length beyond what the server buffers: clean close
    c4 = Client(ServerEngine(ServerConfig(max_buffer=64), now=NOW))
    c4.send_bytes(I.encode(I.PDU(1, bytes(100), length=0xFFFC), strict=False))
    assert c4.conn.closed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), cut=st.integers(1, 64))
def test_random_bytes_never_raise(data: bytes, cut: int) -> None:
    engine = ServerEngine(now=NOW)
    conn = engine.connection()
    for i in range(0, len(data), cut):
        conn.receive_data(data[i : i + cut], NOW)
    dec = MessageDecoder()
    dec.feed(conn.data_to_send())
    assert all(m.is_response for m in dec)


_NODES = (T1, T2, INI)


class ServerMachine(RuleBasedStateMachine):
    """Registrations, replacements, deregistrations, DDs, SCN registrations and time in
    any order; after every step the database holds together (5.6.5.4: no entity without
    a portal or node, containment both ways; PGs only while one end lives), survives a
    JSON round trip, and every SCN the engine queued is well formed."""

    def __init__(self) -> None:
        super().__init__()
        self.engine = ServerEngine(ServerConfig(registration_period=100), now=NOW)
        self.client = Client(self.engine)

    def _ask(self, msg: Message) -> None:
        rsp = self.client.ask(msg)
        assert rsp.status in Status._value2member_map_

    @rule(who=st.sampled_from(_NODES), port=st.integers(3260, 3262), replace_=st.booleans())
    def register(self, who: str, port: int, replace_: bool) -> None:
        msg = target(who, "e-" + who[-1], port, Attribute.of(Tag.SCN_PORT, I.port_value(5000)))
        self._ask(replace(msg, flags=Flag.CLIENT | (Flag.REPLACE if replace_ else 0)))

    @rule(who=st.sampled_from(_NODES), entity=st.booleans())
    def deregister(self, who: str, entity: bool) -> None:
        what = eid("e-" + who[-1]) if entity else name(who)
        self._ask(Message.request(FunctionId.DEV_DEREG, source=name(who), operating=[what]))

    @rule(who=st.sampled_from(_NODES), members=st.sets(st.sampled_from(_NODES), max_size=3))
    def dd(self, who: str, members: set[str]) -> None:
        ops = [Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, m) for m in sorted(members)]
        self._ask(Message.request(FunctionId.DD_REG, source=name(who), operating=ops))

    @rule(who=st.sampled_from(_NODES), dd_id=st.integers(2, 4))
    def dd_dereg(self, who: str, dd_id: int) -> None:
        self._ask(Message.request(FunctionId.DD_DEREG, source=name(who),
                                  keys=[Attribute.of(Tag.DD_ID, dd_id)]))  # fmt: skip

    @rule(who=st.sampled_from(_NODES))
    def scn_register(self, who: str) -> None:
        self._ask(Message.request(FunctionId.SCN_REG, source=name(who), keys=[name(who)],
                                  operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, 0x1C)]))  # fmt: skip

    @rule(seconds=st.integers(1, 150))
    def time_passes(self, seconds: int) -> None:
        self.client.now += seconds
        self.engine.handle_timer(self.client.now)

    @invariant()
    def database_holds_together(self) -> None:
        db = self.engine.db
        for e in db.entities.values():
            assert e.nodes or e.portals
            assert all(db.nodes[n].eid == e.eid for n in e.nodes)
            assert all(db.portals[k].eid == e.eid for k in e.portals)
        assert all(n.name in db.entities[n.eid].nodes for n in db.nodes.values())
        assert all(p.key in db.entities[p.eid].portals for p in db.portals.values())
        assert all(g.name in db.nodes or g.portal in db.portals for g in db.groups.values())
        assert Database.from_json(json.loads(json.dumps(db.to_json()))).to_json() == db.to_json()

    @invariant()
    def scns_are_well_formed(self) -> None:
        for action in self.engine.take_outbound():
            assert action.kind == "scn" and I.violations(action.message) == []
            assert action.message.attributes[0].decoded() in self.engine.db.nodes


ServerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
test_server_machine = ServerMachine.TestCase


# ------------------------------------------------------------------ more of the object model


def test_query_orders_objects_as_5_6_5_2_says(client: Client) -> None:
    """5.6.5.2's example: an entity key lists every node, then every portal, in the
    order the Operating Attributes name the object types."""
    ops = [*portal("127.0.0.1", 3260), *portal("127.0.0.1", 3261), name(T1),
           Attribute.of(Tag.ISCSI_NODE_TYPE, 1), name(T2), Attribute.of(Tag.ISCSI_NODE_TYPE, 1)]  # fmt: skip
    assert client.ask(register(T1, "e1", *ops)).status == 0
    rsp = client.ask(
        query(T1, [eid("e1")], [Attribute(Tag.ISCSI_NAME), Attribute(Tag.PORTAL_TCP_UDP_PORT)])
    )
    assert [a.tag for a in rsp.operating_attributes] == [Tag.ISCSI_NAME] * 2 + [
        Tag.PORTAL_TCP_UDP_PORT
    ] * 2
    # a node key: the node, then the portals its PGs join it to (PGT 1 by default)
    rsp = client.ask(query(T1, [name(T2)], [Attribute(Tag.ISCSI_NAME), Attribute(Tag.PG_TAG)]))
    assert [(a.tag, a.decoded()) for a in rsp.operating_attributes] == [
        (Tag.ISCSI_NAME, T2),
        (Tag.PG_TAG, 1),
        (Tag.PG_TAG, 1),
    ]
    # a zero-length key: every object of that type
    rsp = client.ask(query(T1, [Attribute(Tag.PORTAL_IP_ADDRESS), Attribute(Tag.PORTAL_TCP_UDP_PORT)],
                           [Attribute(Tag.PORTAL_INDEX)]))  # fmt: skip
    assert len(rsp.operating_attributes) == 2
    # keys of two object types are no query (5.6.5.2)
    assert client.ask(query(T1, [name(T1), eid("e1")])).status == Status.INVALID_QUERY


def test_explicit_pgt_and_null_pgt(client: Client) -> None:
    """5.6.5.1: a PGT after a portal, followed by PG iSCSI Names, sets that PG; a
    zero-length PGT registers NULL, meaning no relationship (5.6.5.2)."""
    ops = [*portal("127.0.0.1", 3260), Attribute.of(Tag.PG_TAG, 7),
           Attribute.of(Tag.PG_ISCSI_NAME, T1), Attribute(Tag.PG_TAG),
           Attribute.of(Tag.PG_ISCSI_NAME, T2), name(T1), name(T2)]  # fmt: skip
    rsp = client.ask(register(T1, "e1", *ops))
    assert rsp.status == 0
    assert [a.decoded() for a in rsp.operating_attributes if a.tag == Tag.PG_TAG] == [7, None]
    q = client.ask(
        query(T1, [name(T1)], [Attribute(Tag.PORTAL_TCP_UDP_PORT), Attribute(Tag.PG_TAG)])
    )
    assert [a.decoded() for a in q.operating_attributes] == [3260, 7]
    q = client.ask(query(T1, [name(T2)], [Attribute(Tag.PORTAL_TCP_UDP_PORT)]))
    assert q.operating_attributes == ()  # NULL PGT: T2 is not reached through that portal


def test_get_next_over_every_key_type(client: Client) -> None:
    _three(client)
    for keys in ([eid("")], [Attribute(Tag.ENTITY_IDENTIFIER)], portal("0.0.0.0", 1)[:0] or [
            Attribute(Tag.PORTAL_IP_ADDRESS), Attribute(Tag.PORTAL_TCP_UDP_PORT)],
                 [Attribute(Tag.PORTAL_INDEX)], [Attribute(Tag.ISCSI_NODE_INDEX)],
                 [Attribute(Tag.PG_INDEX)]):  # fmt: skip
        keys = [Attribute(k.tag) for k in keys]
        seen = 0
        for _ in range(10):
            rsp = client.ask(Message.request(FunctionId.DEV_GET_NEXT, source=name(INI), keys=keys))
            if rsp.status == Status.NO_SUCH_ENTRY:
                break
            assert rsp.status == 0, keys
            keys = list(rsp.key_attributes)
            seen += 1
        assert seen >= 2, keys
    # a key of a deregistered object still has a next (5.6.5.3)
    gone = Message.request(FunctionId.DEV_GET_NEXT, source=name(INI),
                           keys=[name("iqn.2024-01.org.example:s")])  # fmt: skip
    assert client.ask(gone).key_attributes == (name(T1),)
    # scoping by a non-zero Operating Attribute: only targets
    only = Message.request(FunctionId.DEV_GET_NEXT, source=name(INI), keys=[Attribute(Tag.ISCSI_NAME)],
                           operating=[Attribute.of(Tag.ISCSI_NODE_TYPE, 1)])  # fmt: skip
    assert client.ask(only).key_attributes == (name(T1),)
    bad = Message.request(FunctionId.DEV_GET_NEXT, source=name(INI), keys=[Attribute(Tag.ISCSI_NAME)],
                          operating=[Attribute(Tag.PORTAL_INDEX)])  # fmt: skip
    assert client.ask(bad).status == Status.INVALID_QUERY


def test_dd_sets_and_scn_event(engine: ServerEngine) -> None:
    c = Client(engine)
    _three(c)
    dds = Message.request(FunctionId.DDS_REG, source=name(T1), operating=[
        Attribute.of(Tag.DD_SET_SYMBOLIC_NAME, "set"), Attribute.of(Tag.DD_ID, 40)])  # fmt: skip
    rsp = c.ask(dds)
    dds_id = rsp.first(Tag.DD_SET_ID).decoded()
    assert rsp.status == 0 and dds_id not in (0, 1)  # 6.11.1.1
    assert rsp.first(Tag.DD_SET_STATUS).decoded() == 0  # 6.11.1.3: disabled by default
    assert 40 in engine.db.dds and rsp.first(Tag.DD_SYMBOLIC_NAME).decoded()  # created (5.6.5.11)
    walk = c.ask(
        Message.request(FunctionId.DEV_GET_NEXT, source=name(T1), keys=[Attribute(Tag.DD_SET_ID)])
    )
    assert walk.status == Status.NO_SUCH_ENTRY  # T1 is in no DD of the set
    dd = Message.request(FunctionId.DD_REG, source=name(T1), keys=[Attribute.of(Tag.DD_ID, 40)],
                         operating=[Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, T1)])  # fmt: skip
    assert c.ask(dd).status == 0
    walk = c.ask(
        Message.request(FunctionId.DEV_GET_NEXT, source=name(T1), keys=[Attribute(Tag.DD_SET_ID)])
    )
    assert walk.first(Tag.DD_SET_ID).decoded() == dds_id
    dereg = Message.request(FunctionId.DDS_DEREG, source=name(T1), keys=[Attribute.of(Tag.DD_SET_ID, dds_id)],
                            operating=[Attribute.of(Tag.DD_ID, 40)])  # fmt: skip
    assert c.ask(dereg).status == 0 and engine.db.ddss[dds_id].dds == []
    dereg = Message.request(
        FunctionId.DDS_DEREG, source=name(T1), keys=[Attribute.of(Tag.DD_SET_ID, dds_id)]
    )
    assert c.ask(dereg).status == 0 and dds_id not in engine.db.ddss
    # SCNEvent (5.6.5.7): an SCN about the key's node to nodes registered for SCN
    c.ask(
        register(INI, "e3", *portal("127.0.0.1", 9), Attribute.of(Tag.SCN_PORT, I.port_value(5000)))
    )
    c.ask(Message.request(FunctionId.SCN_REG, source=name(INI), keys=[name(INI)],
                          operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, 0x04)]))  # fmt: skip
    engine.take_outbound()
    ev = Message.request(FunctionId.SCN_EVENT, source=name(T2), keys=[name(T2)],
                         operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, ScnEvent.OBJECT_UPDATED)])  # fmt: skip
    assert c.ask(ev).status == 0
    (scn,) = engine.take_outbound()
    assert [a.decoded() for a in scn.message.attributes[2:]] == [ScnEvent.OBJECT_UPDATED, T2]


def test_esi_interval_below_the_minimum_is_raised_and_returned(engine: ServerEngine) -> None:
    e = ServerEngine(ServerConfig(min_esi_interval=20), now=NOW)
    c = Client(e)
    rsp = c.ask(register(T1, "e1", *portal("127.0.0.1", 3260), Attribute.of(Tag.ESI_INTERVAL, 5),
                         Attribute.of(Tag.ESI_PORT, I.port_value(4000)), name(T1)))  # fmt: skip
    assert rsp.status == 0 and rsp.first(Tag.ESI_INTERVAL).decoded() == 20  # 6.3.4, 5.7.5.1
    assert e.get_timer() == NOW + 20


def test_adapter_serves_saves_and_reloads(tmp_path: Path) -> None:
    """The asyncio adapter on loopback: a registration is answered and written to the
    database file atomically; a second server on that file serves it."""
    import socket

    from iscsi_conformance.isns.server import ISNSServer

    db = tmp_path / "isns.json"
    for round_ in range(2):
        server = ISNSServer("127.0.0.1", 0, db_path=db)
        server.start_in_thread()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                msg = (
                    target(T1, "e1")
                    if round_ == 0
                    else query(T1, [name(T1)], [Attribute(Tag.ISCSI_NAME)])
                )
                s.sendall(I.encode(replace(msg, transaction_id=1), max_payload=16))
                dec = MessageDecoder()
                while (rsp := dec.next_message()) is None:
                    dec.feed(s.recv(4096))
            assert rsp.status == 0
        finally:
            server.stop_thread()
        assert json.loads(db.read_text())["nodes"][0]["name"] == T1
    assert names_in(rsp) == [T1]
    assert [p.name for p in tmp_path.iterdir()] == ["isns.json"]


def test_adapter_delivers_scn_and_esi_over_udp() -> None:
    """The asyncio adapter on loopback sends an SCN and an ESI to UDP ports, one PDU per
    datagram (2.9.2), and takes the ESI Response that comes back as a sign of life."""
    import socket

    from iscsi_conformance.isns.server import ISNSServer

    server = ISNSServer("127.0.0.1", 0, outbound_timeout=3.0)
    server.start_in_thread()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            udp.settimeout(10)
            port = udp.getsockname()[1]
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                dec = MessageDecoder()

                def ask(msg: Message) -> Message:
                    s.sendall(I.encode(msg))
                    while (rsp := dec.next_message()) is None:
                        dec.feed(s.recv(4096))
                    return rsp

                ports = [Attribute.of(Tag.SCN_PORT, I.port_value(port, udp=True)),
                         Attribute.of(Tag.ESI_INTERVAL, 1),
                         Attribute.of(Tag.ESI_PORT, I.port_value(port, udp=True))]  # fmt: skip
                assert ask(register(INI, "e3", *portal("127.0.0.1", 0), *ports, name(INI),
                                    Attribute.of(Tag.ISCSI_NODE_TYPE, 2))).status == 0  # fmt: skip
                scn_reg = Message.request(
                    FunctionId.SCN_REG, source=name(INI), keys=[name(INI)],
                    operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, 0x1C)], transaction_id=2,
                )  # fmt: skip
                assert ask(scn_reg).status == 0
                assert ask(replace(target(T1, "e1"), transaction_id=3)).status == 0
                seen: set[int] = set()
                for _ in range(6):
                    data, addr = udp.recvfrom(65536)
                    pdu, used = I.decode_pdu(data)  # type: ignore[misc]
                    assert used == len(data)  # one PDU per datagram (2.9.2)
                    msg = I.assemble([pdu])
                    seen.add(msg.function)
                    if msg.function == FunctionId.ESI:
                        udp.sendto(I.encode(msg.response(0, msg.attributes)), addr)
                    if {FunctionId.SCN, FunctionId.ESI} <= seen:
                        break
                assert {FunctionId.SCN, FunctionId.ESI} <= seen
                scn = server.engine.events
                assert any("over UDP" in e for e in scn), scn
                assert "e3" in server.engine.db.entities
    finally:
        server.stop_thread()
