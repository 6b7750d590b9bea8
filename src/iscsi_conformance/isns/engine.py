"""The reference iSNS server's sans-IO engine (RFC 4171, the iSCSI profile of 4.1).

Theory of operation
-------------------
:class:`ServerEngine` is the whole server minus I/O, shaped like the reference target's
engine (and aioquic's connection): the asyncio adapter (``isns/server.py``) creates one
:class:`ServerConnection` per accepted TCP connection and only moves bytes
(``receive_data(data, now)`` in, ``data_to_send()`` out, ``closed`` to hang up). The
engine also *originates* traffic: ESI to the ESI port of monitored portals (5.6.5.13)
and SCN to the SCN port of registered nodes (5.6.5.8). Those come out of
:meth:`ServerEngine.take_outbound` as :class:`Outbound` actions ("connect to host:port,
send this message, bring back the answer"); the adapter reports the answer with
:meth:`ServerEngine.outbound_answered`. Time is always an argument: ``get_timer()`` is
the earliest deadline (registration period, 6.2.6; next ESI or its retransmission,
6.3.4) and ``handle_timer(now)`` acts on it. ``take_dirty()`` says the database changed,
so the adapter writes ``database.to_json()`` (atomically) and the registrations survive
a restart.

Each PDU is framed by its header alone (5.1.3): one whose payload does not parse (a TLV
whose length runs past the payload, a response without its status) is answered with
Message Format Error under its own TRANSACTION ID, and the connection goes on, since
the next PDU header is still where the length says. Multi-PDU messages are reassembled
per transaction (5.2), bounded in count and size (Busy, 5.4). What cannot be framed at
all (an authentication block whose length is absurd) closes the connection. A request
that decodes is checked with the codec's :func:`~iscsi_conformance.core.isns.violations`
and answered with the status the rule names (5.4): Version Not Supported, Message Not
Supported, Source Absent, Invalid Registration for a registration whose attributes are
wrong (5.7.5.1, 5.7.5.9), Message Format Error otherwise. A bug of ours answers Internal
Error (11) and is logged; nothing a peer sends raises out of the engine.

Discovery domains (2.2.2, 3.6, 5.6.1): a query from a node that is not a Control Node
sees only Storage Nodes with which it shares an active DD, and the entities, portals
and portal groups of those nodes. Choices where RFC 4171 leaves room, each a
:class:`ServerConfig` field: ``default_dd`` (2.2.2, MAY): a node in no active DD is in
the implicit default DD with every other such node; ``standalone_dds_active``: 3.6 makes
a DD active only inside an enabled DD Set, but isnsadm has no DDS command and isnsd
enforces DDs that are in no DDS, so by default a DD in no DDS is active (False follows
3.6 to the letter); ``dd_modification`` (2.4's administratively controlled setting):
whether nodes that are not Control Nodes may register DDs (isnsd lets isnsadm).

The Name Service Heartbeat (5.6.5.14) is not required of a server by 4.1.3 and needs a
multicast or broadcast address: this server neither sends one nor answers one.
iFCP functions and attributes (4.2) are answered Message Not Supported / Attribute Not
Implemented.

Sections are RFC 4171's unless stated otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

from iscsi_conformance.core.isns import (
    DELIMITER,
    PDU,
    Attribute,
    Flag,
    FunctionId,
    ISNSFormatError,
    Message,
    NeedMore,
    ObjectType,
    PayloadKind,
    ScnEvent,
    Status,
    Tag,
    assemble,
    attribute_spec,
    decode_pdu,
    encode,
    function_spec,
    violations,
)

from .database import (
    Database,
    DiscoveryDomain,
    DiscoveryDomainSet,
    Entity,
    Node,
    Portal,
    PortalGroup,
    PortalKey,
    canonical,
)

__all__ = [
    "Outbound",
    "ServerConfig",
    "ServerConnection",
    "ServerEngine",
]

log = logging.getLogger(__name__)

_REGISTRATIONS = frozenset({FunctionId.DEV_ATTR_REG, FunctionId.DD_REG, FunctionId.DDS_REG})
_DEREGISTRATIONS = frozenset({FunctionId.DEV_DEREG, FunctionId.DD_DEREG, FunctionId.DDS_DEREG})
_MUTATIONS = (
    _REGISTRATIONS
    | _DEREGISTRATIONS
    | {
        FunctionId.SCN_REG,
        FunctionId.SCN_DEREG,
    }
)


@dataclass(frozen=True)
class ServerConfig:
    """What 2.4 calls administratively controlled settings, and our bounds."""

    registration_period: int = 900  # 6.2.6: the server's non-zero default, seconds
    min_esi_interval: int = 1  # 6.3.4: the server may raise a requested ESI Interval
    esi_threshold: int = 3  # 2.4: ESI Non-Response Threshold (default 3)
    default_dd: bool = True  # 2.2.2 (MAY)
    standalone_dds_active: bool = True  # see the module docstring (3.6)
    dd_modification: bool = True  # 2.4 DD/DDS Modification for non-Control Nodes
    control_nodes: frozenset[str] = frozenset()  # 2.4 Authorized Control Nodes
    max_pending: int = 16  # unfinished multi-PDU messages per connection (5.2)
    max_message: int = 1 << 20  # bytes of one reassembled message
    max_buffer: int = 1 << 20  # bytes held for a PDU that has not fully arrived


@dataclass(frozen=True)
class Outbound:
    """A message the server originates: connect to ``host:port`` over TCP (or, when
    ``udp``, send it there as datagrams of one PDU each, 2.9.2), send ``message``, read
    one answer and give it to :meth:`ServerEngine.outbound_answered` (None when the
    peer closed, refused or stayed silent)."""

    kind: str  # "esi" (5.6.5.13) or "scn" (5.6.5.8)
    host: str
    port: int
    message: Message
    portal: PortalKey | None = None
    eid: str = ""
    udp: bool = False  # the ESI or SCN Port has bit 15 set (6.3.5, 6.3.7)


@dataclass
class _EsiState:
    next_at: float
    unanswered: int = 0


_G = TypeVar("_G", DiscoveryDomain, DiscoveryDomainSet)
_M = TypeVar("_M")


@dataclass(frozen=True)
class _DDMembers:
    """What a DDReg adds to a DD (6.11.2)."""

    features: int | None
    members: list[str]
    portals: list[PortalKey]


@dataclass(frozen=True)
class _DDSMembers:
    """What a DDSReg adds to a DD Set (6.11.1)."""

    status: int | None
    dd_ids: list[int]


@dataclass(frozen=True)
class _Grouping(Generic[_G, _M]):
    """What DDs and DD Sets differ in; their registration (5.6.5.9, 5.6.5.11) and
    deregistration (5.6.5.10, 5.6.5.12) are one handler each."""

    label: str  # "DD" or "DDS", as the RFC names the functions
    id_tag: int
    name_tag: int
    reg_section: str
    id_section: str  # where ID 0 is reserved
    store: Callable[[], dict[int, _G]]
    new_id: Callable[[], int]
    read: Callable[[Sequence[Attribute]], _M]  # Operating Attributes but ID and name
    create: Callable[[int, str | None], _G]
    add: Callable[[_G, _M, bool], list[Attribute]]  # -> the response's attributes
    delete: Callable[[_G], None]
    remove: Callable[[_G, Sequence[Attribute]], None]


class _Refused(Exception):
    """A request refused with a status code (5.4)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = int(status)


def _host(address: bytes) -> str:
    v6 = ipaddress.IPv6Address(address)
    return str(v6.ipv4_mapped or v6)


def _text(attr: Attribute) -> str:
    value = attr.decoded()
    return value if isinstance(value, str) else ""


def _u32(attr: Attribute) -> int:
    value = attr.decoded()
    return value if isinstance(value, int) else 0


def _object_of(tag: int) -> ObjectType | None:
    spec = attribute_spec(tag)
    return spec.object if spec is not None else None


_INDEX_TAGS = frozenset(
    {Tag.ENTITY_INDEX, Tag.PORTAL_INDEX, Tag.ISCSI_NODE_INDEX, Tag.PG_INDEX}
)  # server-assigned (6.2.7, 6.3.6, 6.4.5, 6.5.5): a value a client sends is not taken
_FC_OBJECTS = frozenset({ObjectType.FC_PORT, ObjectType.FC_NODE, ObjectType.SWITCH})


@dataclass
class _Registration:
    """The Operating Attributes of a DevAttrReg, read into objects (5.6.5.1)."""

    eid: str | None = None  # None: absent; "": zero-length (the server assigns)
    entity_attrs: dict[int, bytes] = field(default_factory=dict)
    portals: list[tuple[PortalKey, dict[int, bytes]]] = field(default_factory=list)
    nodes: list[tuple[str, dict[int, bytes]]] = field(default_factory=list)
    groups: list[tuple[str, PortalKey, int | None]] = field(default_factory=list)


def _read_registration(ops: Sequence[Attribute]) -> _Registration:
    """Walk the Operating Attributes in order: Entity, then Portals and Nodes, each key
    first, each optionally followed by PGT blocks (5.6.5.1)."""
    reg = _Registration()
    current: tuple[str, object] | None = None  # ("portal", key) / ("node", name)
    pg_mode: tuple[str, object, int | None] | None = None
    i = 0

    def bad(why: str, status: int = Status.INVALID_REGISTRATION) -> _Refused:
        return _Refused(status, why)

    while i < len(ops):
        a = ops[i]
        obj = _object_of(a.tag)
        if obj is None:
            raise bad(f"tag {a.tag} is not an iSNS attribute (6.1)")
        if obj in _FC_OBJECTS:
            raise bad(f"tag {a.tag}: iFCP is not implemented", Status.ATTRIBUTE_NOT_IMPLEMENTED)
        spec = attribute_spec(a.tag)
        if spec is not None and spec.read_only:
            raise bad(f"{spec.name} cannot be registered ({spec.section})")
        if a.tag in _INDEX_TAGS:
            i += 1
            continue
        if a.tag == Tag.ENTITY_IDENTIFIER:
            if reg.eid is not None or reg.portals or reg.nodes:
                raise bad("one Network Entity per DevAttrReg, first (5.6.5.1)")
            reg.eid = _text(a)
            reg.entity_attrs[a.tag] = a.value
        elif obj is ObjectType.ENTITY:
            if reg.portals or reg.nodes:
                raise bad("Entity attributes after a subordinate object (5.6.5.1)")
            reg.entity_attrs[a.tag] = a.value
        elif a.tag == Tag.PORTAL_IP_ADDRESS:
            port = ops[i + 1] if i + 1 < len(ops) else None
            if not a.value or port is None or port.tag != Tag.PORTAL_TCP_UDP_PORT or not port.value:
                raise bad("a Portal IP Address needs its Portal TCP/UDP Port next (5.6.5.1)")
            key = (a.value, _u32(port))
            reg.portals.append((key, {int(a.tag): a.value, int(port.tag): port.value}))
            current, pg_mode = ("portal", key), None
            i += 2
            continue
        elif a.tag == Tag.ISCSI_NAME:
            name = _text(a)
            if not name:
                raise bad("a zero-length iSCSI Name cannot be registered (6.4.1)")
            reg.nodes.append((name, {int(a.tag): a.value}))
            current, pg_mode = ("node", name), None
        elif a.tag == Tag.PG_TAG:
            if current is None:
                raise bad("a PGT must follow a Portal or a Storage Node (5.6.5.1)")
            pg_mode = (current[0], current[1], _u32(a) if a.value else None)
        elif a.tag == Tag.PG_ISCSI_NAME:
            if pg_mode is not None and pg_mode[0] == "portal" and isinstance(pg_mode[1], tuple):
                reg.groups.append((_text(a), pg_mode[1], pg_mode[2]))
            else:
                # an explicit PG object: name, address, port, optional PGT
                rest = ops[i + 1 : i + 4]
                tags = [r.tag for r in rest]
                if tags[:2] != [Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_TCP_UDP_PORT]:
                    raise bad("a PG object is PG iSCSI Name, PG Portal IP Addr, Port (5.6.5.1)")
                pgt: int | None = 1
                used = 3
                if len(rest) > 2 and rest[2].tag == Tag.PG_TAG:
                    pgt = _u32(rest[2]) if rest[2].value else None
                    used = 4
                reg.groups.append((_text(a), (rest[0].value, _u32(rest[1])), pgt))
                i += used
                continue
        elif a.tag == Tag.PG_PORTAL_IP_ADDR:
            port = ops[i + 1] if i + 1 < len(ops) else None
            if pg_mode is None or pg_mode[0] != "node" or port is None:
                raise bad("PG Portal IP Addr outside a node's PGT block (5.6.5.1)")
            if port.tag != Tag.PG_PORTAL_TCP_UDP_PORT:
                raise bad("PG Portal IP Addr needs its PG Portal TCP/UDP Port next (5.6.5.1)")
            reg.groups.append((str(pg_mode[1]), (a.value, _u32(port)), pg_mode[2]))
            i += 2
            continue
        elif obj is ObjectType.PORTAL:
            if current is None or current[0] != "portal":
                raise bad(f"tag {a.tag} outside a Portal (5.6.5.1: key attributes first)")
            reg.portals[-1][1][a.tag] = a.value
        elif obj is ObjectType.ISCSI_NODE:
            if current is None or current[0] != "node":
                raise bad(f"tag {a.tag} outside a Storage Node (5.6.5.1: key attributes first)")
            reg.nodes[-1][1][a.tag] = a.value
        else:
            raise bad(f"tag {a.tag} ({obj.value}) cannot be registered with DevAttrReg")
        i += 1
    return reg


# ---------------------------------------------------------------------------- connection


class ServerConnection:
    """One client's TCP connection: PDUs in, responses out (5.1, 5.2)."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self._buffer = bytearray()
        self._chains: dict[int, list[PDU]] = {}
        self._out = bytearray()
        self.closed = False
        self.close_reason = ""

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the socket, in any split; answers go to :meth:`data_to_send`."""
        if self.closed:
            return
        self._buffer += data
        while self._buffer:
            try:
                result = decode_pdu(self._buffer)
            except ISNSFormatError as exc:
                self._close(f"cannot frame: {exc}")
                return
            if isinstance(result, NeedMore):
                if len(self._buffer) > self.engine.config.max_buffer:
                    self._close("a PDU larger than the server accepts")
                break
            pdu, used = result
            del self._buffer[:used]
            self._pdu(pdu, now)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _close(self, why: str) -> None:
        self.closed = True
        self.close_reason = why
        log.info("iSNS connection closed: %s", why)

    def _send(self, msg: Message | None) -> None:
        if msg is not None:
            self._out += encode(msg, strict=False)

    def _refuse(self, pdu: PDU, status: int) -> None:
        self._send(_error_response(pdu.function, pdu.transaction_id, status))

    def _pdu(self, pdu: PDU, now: float) -> None:
        xid = pdu.transaction_id
        first, last = bool(pdu.flags & Flag.FIRST_PDU), bool(pdu.flags & Flag.LAST_PDU)
        if first:
            if xid in self._chains:  # 5.2: a First PDU while one is being reassembled
                del self._chains[xid]
                self._refuse(pdu, Status.MESSAGE_FORMAT_ERROR)
                return
            if last:
                self._message([pdu], now)
                return
            if len(self._chains) >= self.engine.config.max_pending:
                self._refuse(pdu, Status.BUSY)
                return
            self._chains[xid] = [pdu]
            return
        chain = self._chains.get(xid)
        if chain is None:
            self._refuse(pdu, Status.MESSAGE_FORMAT_ERROR)  # 5.2: no First PDU
            return
        chain.append(pdu)
        if sum(len(p.payload) for p in chain) > self.engine.config.max_message:
            del self._chains[xid]
            self._refuse(pdu, Status.BUSY)
            return
        if last:
            del self._chains[xid]
            self._message(chain, now)

    def _message(self, pdus: list[PDU], now: float) -> None:
        try:
            msg = assemble(pdus)
        except ISNSFormatError as exc:
            self._refuse(pdus[0], exc.status)
            return
        self._send(self.engine.handle_message(msg, now))


def _error_response(function: int, xid: int, status: int) -> Message | None:
    """The response carrying ``status`` to a request with this FUNCTION_ID (5.4), or
    None when the message was itself a response (responses are not answered)."""
    if function & 0x8000:
        return None
    spec = function_spec(function)
    if spec is not None and spec.response is None:
        return None  # the Heartbeat has no response (5.6.5.14)
    answer = spec.response if spec is not None and spec.response else function | 0x8000
    return Message(int(answer), xid, int(Flag.SERVER), int(status))


# ---------------------------------------------------------------------------- engine


class ServerEngine:
    """The iSNS server: the database, the handlers, ESI and SCN, the timers."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        now: float,
        database: Database | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.db = database or Database()
        self._deadlines: dict[str, float] = {}
        self._esi: dict[PortalKey, _EsiState] = {}
        self._outbound: list[Outbound] = []
        self._dirty = False
        self._xid = 0
        self._updated: set[str] = set()  # nodes re-registered by the request in hand
        self._subjects: set[PortalKey] = set()  # Portals the request in hand changed
        self.events: list[str] = []  # what happened, for logs and tests
        for entity in self.db.entities.values():
            self._touch(entity, now, esi=True)
        dd: _Grouping[DiscoveryDomain, _DDMembers] = _Grouping(
            "DD", Tag.DD_ID, Tag.DD_SYMBOLIC_NAME, "5.6.5.9", "6.11.2.1",
            lambda: self.db.dds, self.db.new_dd_id, self._dd_read, self._dd_create,
            self._dd_add, self._dd_delete, self._dd_remove)  # fmt: skip
        dds: _Grouping[DiscoveryDomainSet, _DDSMembers] = _Grouping(
            "DDS", Tag.DD_SET_ID, Tag.DD_SET_SYMBOLIC_NAME, "5.6.5.11", "6.11.1.1",
            lambda: self.db.ddss, self.db.new_dds_id, self._dds_read, self._dds_create,
            self._dds_add, self._dds_delete, self._dds_remove)  # fmt: skip
        self._handlers: dict[int, Callable[[Message, str, float], Message]] = {
            FunctionId.DEV_ATTR_REG: self._dev_attr_reg,
            FunctionId.DEV_ATTR_QRY: self._dev_attr_qry,
            FunctionId.DEV_GET_NEXT: self._dev_get_next,
            FunctionId.DEV_DEREG: self._dev_dereg,
            FunctionId.SCN_REG: self._scn_reg,
            FunctionId.SCN_DEREG: self._scn_dereg,
            FunctionId.SCN_EVENT: self._scn_event,
            FunctionId.DD_REG: partial(self._grouping_reg, dd),
            FunctionId.DD_DEREG: partial(self._grouping_dereg, dd),
            FunctionId.DDS_REG: partial(self._grouping_reg, dds),
            FunctionId.DDS_DEREG: partial(self._grouping_dereg, dds),
        }

    # ------------------------------------------------------------------ driving API

    def connection(self) -> ServerConnection:
        return ServerConnection(self)

    def take_outbound(self) -> list[Outbound]:
        out, self._outbound = self._outbound, []
        return out

    def take_dirty(self) -> bool:
        """True once after the database changed (the adapter then saves it)."""
        dirty, self._dirty = self._dirty, False
        return dirty

    def get_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work, or None."""
        times = [*self._deadlines.values(), *(s.next_at for s in self._esi.values())]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Expire registrations (6.2.6) and send, resend or give up on ESI (6.3.4)."""
        before = self._snapshot()
        self._subjects = set()  # entities removed whole: their Portals are gone
        removed: set[str] = set()
        for eid, deadline in sorted(self._deadlines.items()):
            if deadline <= now and eid in self.db.entities:
                self.events.append(f"registration period of {eid} expired")
                removed |= self._remove_entity(eid)
        for key, state in sorted(self._esi.items()):
            if state.next_at > now:
                continue
            portal = self.db.portals.get(key)
            esi_port = portal.port_attr(Tag.ESI_PORT) if portal is not None else None
            if portal is None or not portal.esi_interval or esi_port is None:
                del self._esi[key]
                continue
            interval = max(portal.esi_interval, self.config.min_esi_interval)
            if state.unanswered >= self.config.esi_threshold:
                removed |= self._esi_gave_up(portal)
                continue
            state.unanswered += 1
            state.next_at = now + interval / self.config.esi_threshold
            self._outbound.append(
                Outbound("esi", _host(key[0]), esi_port[0], self._esi_message(portal, now),
                         key, portal.eid, udp=esi_port[1])
            )  # fmt: skip
        if removed:
            self._dirty = True
            self._notify(before, now)

    def outbound_answered(self, action: Outbound, answer: Message | None, now: float) -> None:
        """The answer to an ESI or SCN we sent (None: none came). An ESI Response
        (5.7.5.13) with status 0, our TRANSACTION ID and, if it echoes an EID, ours,
        resets the count of unanswered ESIs and refreshes the registration (6.2.6).
        5.7.5.13 has the response echo every attribute of the ESI; one that echoes
        fewer is still taken as a sign of life, and logged."""
        if action.kind != "esi" or answer is None or action.portal is None:
            return
        if (
            answer.function != FunctionId.ESI_RSP
            or answer.status != Status.SUCCESSFUL
            or answer.transaction_id != action.message.transaction_id
        ):
            return
        echoed = answer.first(Tag.ENTITY_IDENTIFIER)
        if echoed is not None and echoed.value.rstrip(b"\0") != action.eid.encode():
            return
        if answer.attributes != action.message.attributes:
            self.events.append(f"ESI Response from {action.eid} does not echo the ESI (5.7.5.13)")
        state = self._esi.get(action.portal)
        portal = self.db.portals.get(action.portal)
        entity = self.db.entities.get(action.eid)
        if state is None or portal is None or entity is None:
            return
        state.unanswered = 0
        state.next_at = now + max(portal.esi_interval, self.config.min_esi_interval)
        self._touch(entity, now)

    # ------------------------------------------------------------------ dispatch

    def handle_message(self, msg: Message, now: float) -> Message | None:
        """The response to one request (None for messages that get none)."""
        if msg.is_response:
            return None  # stray responses; ours come back through outbound_answered
        try:
            status = self._check(msg)
            if status is not None:
                return _error_response(msg.function, msg.transaction_id, status)
            handler = self._handlers.get(msg.function)
            if handler is None:
                return _error_response(
                    msg.function, msg.transaction_id, Status.MESSAGE_NOT_SUPPORTED
                )
            source = msg.source
            assert source is not None  # _check answered Source Absent
            src = _text(canonical(source))
            node = self.db.nodes.get(src)
            if node is not None and node.eid in self.db.entities:
                self._touch(self.db.entities[node.eid], now)  # 6.2.6: any message refreshes
            before = self._snapshot() if msg.function in _MUTATIONS else None
            self._updated, self._subjects = set(), set()
            response = handler(msg, src, now)
            if before is not None and response.status == Status.SUCCESSFUL:
                self._dirty = True
                self._notify(before, now)
            return response
        except _Refused as exc:
            self.events.append(f"{msg.function:#06x} refused ({exc.status}): {exc}")
            return _error_response(msg.function, msg.transaction_id, exc.status)
        except ISNSFormatError as exc:
            status = Status.INVALID_REGISTRATION if msg.function in _REGISTRATIONS else exc.status
            return _error_response(msg.function, msg.transaction_id, status)
        except Exception:  # our bug: answer Internal Error (5.4), keep serving
            log.exception("iSNS server: internal error on %r", msg)
            return _error_response(msg.function, msg.transaction_id, Status.INTERNAL_ERROR)

    def _check(self, msg: Message) -> int | None:
        """The status for a request that breaks a format rule (5.4), or None."""
        spec = msg.spec
        if msg.version != 1:
            return Status.VERSION_NOT_SUPPORTED  # 5.1.1
        if spec is None or spec.ifcp:
            return Status.MESSAGE_NOT_SUPPORTED  # 4.1.3: the iSCSI profile
        if spec.sender.value == Flag.SERVER:
            # SCN, ESI and Heartbeat are sent by a server; a client's is not served.
            return None if spec.payload is PayloadKind.HEARTBEAT else Status.MESSAGE_NOT_SUPPORTED
        if msg.source is None:
            return Status.SOURCE_ABSENT  # 5.6.1
        if msg.source.tag != Tag.ISCSI_NAME or not msg.source.value:
            # 5.6.1: the iSCSI profile's Source is an iSCSI Name (isnsd answers the same)
            return Status.SOURCE_UNKNOWN
        # open-isns writes IPv4 addresses IPv4-compatible (::a.b.c.d, not 6.3.1's
        # IPv4-mapped form); read as IPv4, as isnsd does, rather than refused
        problems = [v for v in violations(msg) if "IPv4-compatible" not in v.message]
        if not problems:
            return None
        first = problems[0]
        if first.status != Status.MESSAGE_FORMAT_ERROR:
            return first.status
        if first.field.startswith("attribute"):
            if msg.function in _REGISTRATIONS:
                return Status.INVALID_REGISTRATION  # 5.7.5.1, 5.7.5.9: invalid values or types
            if msg.function in _DEREGISTRATIONS:
                return Status.INVALID_DEREGISTRATION  # 5.4 status 22
        return Status.MESSAGE_FORMAT_ERROR

    # ------------------------------------------------------------------ visibility

    def is_control(self, name: str) -> bool:
        return name in self.config.control_nodes

    def active_dds(self) -> list[DiscoveryDomain]:
        """DDs that count (3.6): in an enabled DD Set, or in none (see the module
        docstring for ``standalone_dds_active``)."""
        out = []
        for dd in self.db.dds.values():
            sets = [s for s in self.db.ddss.values() if dd.dd_id in s.dds]
            if any(s.enabled for s in sets) or (not sets and self.config.standalone_dds_active):
                out.append(dd)
        return out

    def visible_nodes(self, source: str) -> set[str]:
        """The registered Storage Nodes ``source`` may learn of (5.6.1, 5.6.5.2):
        those sharing an active DD with it, itself included; every node for a Control
        Node; with ``default_dd``, a node in no active DD sees the others in none."""
        registered = set(self.db.nodes)
        if self.is_control(source):
            return registered
        dds = self.active_dds()
        mine = [dd for dd in dds if source in dd.members]
        if mine:
            seen = {m for dd in mine for m in dd.members}
        elif self.config.default_dd:
            in_some = {m for dd in dds for m in dd.members}
            seen = registered - in_some
        else:
            seen = set()
        return (seen | {source}) & registered

    def _visible_entities(self, source: str) -> list[Entity]:
        seen = self.visible_nodes(source)
        control = self.is_control(source)
        return [e for e in self.db.ordered_entities() if control or any(n in seen for n in e.nodes)]

    # ------------------------------------------------------------------ helpers

    def _touch(self, entity: Entity, now: float, *, esi: bool = False) -> None:
        """Start the registration period again (6.2.6); with ``esi``, (re)schedule
        ESI for the entity's monitored portals (6.3.4)."""
        period = entity.registration_period
        if period:
            self._deadlines[entity.eid] = now + period
        else:
            self._deadlines.pop(entity.eid, None)
        if not esi:
            return
        for key in entity.portals:
            portal = self.db.portals.get(key)
            if portal is None:
                continue
            if portal.esi_interval and portal.port_attr(Tag.ESI_PORT) is not None:
                interval = max(portal.esi_interval, self.config.min_esi_interval)
                state = self._esi.get(key)
                if state is None or state.next_at > now + interval:
                    self._esi[key] = _EsiState(now + interval)
            else:
                self._esi.pop(key, None)

    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFF
        return self._xid

    def _esi_message(self, portal: Portal, now: float) -> Message:
        """ESI (5.6.5.13): Timestamp, EID, Portal IP Address, Portal TCP/UDP Port."""
        attrs = (
            Attribute.of(Tag.TIMESTAMP, int(now)),
            Attribute.of(Tag.ENTITY_IDENTIFIER, portal.eid),
            Attribute(Tag.PORTAL_IP_ADDRESS, portal.key[0]),
            Attribute(Tag.PORTAL_TCP_UDP_PORT, portal.key[1].to_bytes(4, "big")),
        )
        return Message(FunctionId.ESI, self._next_xid(), int(Flag.SERVER), None, attrs)

    def _esi_gave_up(self, portal: Portal) -> set[str]:
        """5.6.5.13: the portal goes; the entity too when no ESI-monitored portal is left
        (6.3.4 adds "and no registration for two ESI Intervals", which holds here: ESIs
        are only sent an interval after the last sign of life, and given up after two)."""
        self.events.append(
            f"ESI unanswered: portal {_host(portal.key[0])}:{portal.key[1] & 0xFFFF}"
        )
        self._esi.pop(portal.key, None)
        eid = portal.eid
        self.db.remove_portal(portal.key)
        entity = self.db.entities.get(eid)
        if entity is None:
            return set()
        monitored = [k for k in entity.portals if (p := self.db.portals.get(k)) and p.esi_interval]
        if not monitored:
            self.events.append(f"ESI unanswered: entity {eid} deregistered")
            return self._remove_entity(eid)
        return set()

    def _remove_entity(self, eid: str) -> set[str]:
        entity = self.db.entities.get(eid)
        if entity is None:
            return set()
        names = set(entity.nodes)
        for key in entity.portals:
            self._esi.pop(key, None)
        self.db.remove_entity(eid)
        self._deadlines.pop(eid, None)
        self._dirty = True
        return names

    def _authorize(self, src: str, eid: str) -> None:
        """5.6.1: a change must come from a Control Node or a node of the entity."""
        if self.is_control(src):
            return
        node = self.db.nodes.get(src)
        if node is None or node.eid != eid:
            raise _Refused(Status.SOURCE_UNAUTHORIZED, f"{src} is not a node of entity {eid}")

    # ------------------------------------------------------------------ SCN

    def _snapshot(self) -> dict[str, tuple[frozenset[str], dict[str, int]]]:
        """For each node registered for SCN: what it sees, and those nodes' types."""
        out: dict[str, tuple[frozenset[str], dict[str, int]]] = {}
        for node in self.db.nodes.values():
            if node.scn_bitmap:
                seen = self.visible_nodes(node.name) - {node.name}
                out[node.name] = (
                    frozenset(seen),
                    {n: self.db.nodes[n].node_type for n in seen},
                )
        return out

    def _notify(self, before: dict[str, tuple[frozenset[str], dict[str, int]]], now: float) -> None:
        """Queue the SCNs (5.6.5.8) a change calls for: Object Added / Removed for nodes
        that came into or went out of a recipient's view, Object Updated for nodes
        re-registered in view (6.4.4), filtered by the recipient's bitmap."""
        updated = self._updated
        self._updated = set()
        after = self._snapshot()
        for name, (seen, types) in after.items():
            old_seen, old_types = before.get(name, (seen, types))
            events: list[tuple[int, str, int]] = []
            for n in sorted(seen - old_seen):
                events.append((ScnEvent.OBJECT_ADDED, n, types[n]))
            for n in sorted(old_seen - seen):
                events.append((ScnEvent.OBJECT_REMOVED, n, old_types.get(n, 0)))
            for n in sorted(updated & seen & old_seen):
                events.append((ScnEvent.OBJECT_UPDATED, n, types[n]))
            self._send_scn(self.db.nodes[name], events, now)

    def _send_scn(self, node: Node, events: list[tuple[int, str, int]], now: float) -> None:
        bitmap = node.scn_bitmap
        attrs = [Attribute.of(Tag.ISCSI_NAME, node.name), Attribute.of(Tag.TIMESTAMP, int(now))]
        for bit, subject, node_type in events:
            if not bitmap & bit:
                continue
            if bitmap & ScnEvent.TARGET_AND_SELF_ONLY and not node_type & 0x1:
                continue  # 6.4.4 bit 25
            if bitmap & ScnEvent.INITIATOR_AND_SELF_ONLY and not node_type & 0x2:
                continue  # 6.4.4 bit 24
            attrs += [
                Attribute.of(Tag.ISCSI_SCN_BITMAP, bit),
                Attribute.of(Tag.ISCSI_NAME, subject),
            ]
        if len(attrs) == 2:
            return
        # To every Portal with a UDP SCN Port (2.9.2: "each Portal registered"), else to
        # one Portal with a TCP SCN Port (6.3.7: "any one of the indicated Portals"),
        # "provided that the selected Portal is not the subject of the SCN" (5.6.5.8):
        # not one the change in hand registered, updated or removed. If every one is,
        # the SCN still goes to one (5.6.5.8's SHALL send it to one Portal).
        entity = self.db.entities.get(node.eid)
        ports = [
            (key, scn_port)
            for key in (entity.portals if entity is not None else [])
            if (portal := self.db.portals.get(key)) is not None
            and (scn_port := portal.port_attr(Tag.SCN_PORT)) is not None
        ]
        udp = [(key, port) for key, port in ports if port[1]]
        chosen = [p for p in ports if p[0] not in self._subjects][:1] or ports[:1]
        for key, (port, is_udp) in udp or chosen:
            msg = Message(FunctionId.SCN, self._next_xid(), int(Flag.SERVER), None, tuple(attrs))
            self._outbound.append(
                Outbound("scn", _host(key[0]), port, msg, key, node.eid, udp=is_udp)
            )
            self.events.append(
                f"SCN to {node.name} over {'UDP' if is_udp else 'TCP'}: "
                f"{len(attrs) // 2 - 1} event(s)"
            )

    # ------------------------------------------------------------------ DevAttrReg

    def _dev_attr_reg(self, msg: Message, src: str, now: float) -> Message:
        """DevAttrReg (5.6.5.1) and its response (5.7.5.1)."""
        keys = [canonical(a) for a in msg.key_attributes]
        ops = [canonical(a) for a in msg.operating_attributes]
        reg = _read_registration(ops)
        db = self.db
        target: tuple[str, object] | None = None
        key_eid = next((_text(a) for a in keys if a.tag == Tag.ENTITY_IDENTIFIER and a.value), None)
        entity: Entity | None
        if keys and key_eid is None:
            names = [_text(a) for a in keys if a.tag == Tag.ISCSI_NAME and a.value]
            addr = next((a.value for a in keys if a.tag == Tag.PORTAL_IP_ADDRESS and a.value), None)
            port = next(
                (_u32(a) for a in keys if a.tag == Tag.PORTAL_TCP_UDP_PORT and a.value), None
            )
            if names and names[0] in db.nodes:
                target = ("node", names[0])
                entity = db.entities.get(db.nodes[names[0]].eid)
            elif addr is not None and port is not None and (addr, port) in db.portals:
                target = ("portal", (addr, port))
                entity = db.entities.get(db.portals[(addr, port)].eid)
            else:
                raise _Refused(Status.INVALID_REGISTRATION, "the Message Key matches nothing")
        else:
            eid = key_eid or reg.eid or None
            entity = db.entities.get(eid) if eid else None
            if entity is not None:
                target = ("entity", entity.eid)
        if entity is not None and reg.eid and reg.eid != entity.eid:
            raise _Refused(Status.INVALID_REGISTRATION, "Message Key and Operating EIDs differ")
        new = entity is None
        if not reg.portals and not reg.nodes and (new or not reg.entity_attrs):
            raise _Refused(Status.INVALID_REGISTRATION, "no Portal and no Storage Node (5.6.5.1)")
        eid = entity.eid if entity is not None else (key_eid or reg.eid or db.new_eid())
        # authorization (5.6.1, 5.6.5.1)
        if not self.is_control(src):
            mine = db.nodes.get(src)
            if new:
                if mine is not None:
                    raise _Refused(Status.SOURCE_UNAUTHORIZED, f"{src} belongs to {mine.eid}")
            elif mine is None:
                if not any(n == src for n, _ in reg.nodes) and entity is not None and entity.nodes:
                    raise _Refused(Status.SOURCE_UNAUTHORIZED, f"{src} is not a node of {eid}")
            elif mine.eid != eid:
                raise _Refused(Status.SOURCE_UNAUTHORIZED, f"{src} belongs to {mine.eid}")
        # containment never changes (5.6.5.1)
        for name, _ in reg.nodes:
            other = db.nodes.get(name)
            if other is not None and other.eid != eid:
                raise _Refused(Status.INVALID_REGISTRATION, f"{name} belongs to {other.eid}")
        for key, _ in reg.portals:
            other_p = db.portals.get(key)
            if other_p is not None and other_p.eid != eid:
                raise _Refused(Status.INVALID_REGISTRATION, "the portal belongs to another entity")
        # ESI (6.3.4, 6.3.5): an ESI Port (TCP or UDP, 2.9.2) when an interval is asked
        changed: dict[tuple[PortalKey, int], bytes] = {}
        replacing_entity = (
            bool(msg.flags & Flag.REPLACE) and target is not None and target[0] == "entity"
        )
        kept = entity.portals if entity is not None and not replacing_entity else []
        esi_ports = [a[Tag.ESI_PORT] for _, a in reg.portals if a.get(Tag.ESI_PORT)] + [
            p.attrs[Tag.ESI_PORT]
            for k in kept
            if (p := db.portals.get(k)) is not None and p.attrs.get(Tag.ESI_PORT)
        ]
        for key, attrs in reg.portals:
            interval = int.from_bytes(attrs.get(Tag.ESI_INTERVAL) or b"", "big")
            if interval:
                if not esi_ports:
                    raise _Refused(
                        Status.ESI_NOT_AVAILABLE, "an ESI Interval and no ESI Port (6.3.5)"
                    )
                if interval < self.config.min_esi_interval:
                    value = self.config.min_esi_interval.to_bytes(4, "big")
                    attrs[int(Tag.ESI_INTERVAL)] = value
                    changed[(key, int(Tag.ESI_INTERVAL))] = value
        # replace (5.6.5.1): the object and its subordinates go first
        if msg.flags & Flag.REPLACE and target is not None:
            kind, what = target
            if kind == "entity" and entity is not None:
                for name in list(entity.nodes):
                    db.remove_node(name)
                for pkey in list(entity.portals):
                    db.remove_portal(pkey)
                    self._esi.pop(pkey, None)
                entity.attrs = {k: v for k, v in entity.attrs.items() if k == Tag.ENTITY_IDENTIFIER}
            elif kind == "node" and isinstance(what, str):
                db.remove_node(what)
            elif kind == "portal" and isinstance(what, tuple):
                db.remove_portal(what)
                self._esi.pop(what, None)
                self._subjects.add(what)
        # apply
        if entity is None:
            entity = Entity(eid, db.entity_index(eid))
            db.entities[eid] = entity
        entity.attrs.update(reg.entity_attrs)
        entity.attrs[int(Tag.ENTITY_IDENTIFIER)] = Attribute.of(Tag.ENTITY_IDENTIFIER, eid).value
        entity.attrs[int(Tag.ENTITY_INDEX)] = entity.index.to_bytes(4, "big")
        entity.attrs[int(Tag.TIMESTAMP)] = int(now).to_bytes(8, "big")
        assigned_period = False
        if not entity.registration_period:
            monitored = any(a.get(Tag.ESI_INTERVAL) for _, a in reg.portals)
            if not monitored or Tag.REGISTRATION_PERIOD not in reg.entity_attrs:
                entity.attrs[int(Tag.REGISTRATION_PERIOD)] = (
                    self.config.registration_period.to_bytes(4, "big")
                )
                assigned_period = True  # 6.2.6: returned in the response
        for key, attrs in reg.portals:
            portal = db.portals.get(key)
            if portal is None:
                portal = Portal(key, db.portal_index(key), eid)
                db.portals[key] = portal
                entity.portals.append(key)
            portal.attrs.update(attrs)
            portal.attrs[int(Tag.PORTAL_INDEX)] = portal.index.to_bytes(4, "big")
            self._subjects.add(key)
        for name, attrs in reg.nodes:
            node = db.nodes.get(name)
            if node is None:
                node = Node(name, db.node_index(name), eid)
                db.nodes[name] = node
                entity.nodes.append(name)
            else:
                self._updated.add(name)
            node.attrs.update(attrs)
            node.attrs[int(Tag.ISCSI_NODE_INDEX)] = node.index.to_bytes(4, "big")
        if reg.portals:
            self._updated.update(entity.nodes)
        for name in entity.nodes:  # implicit PGs, PGT 1 unless registered before (5.6.5.1)
            for pkey in entity.portals:
                if (name, pkey) not in db.groups:
                    db.groups[(name, pkey)] = PortalGroup(name, pkey, db.allocate_index())
        for name, pkey, pgt in reg.groups:
            group = db.groups.get((name, pkey))
            if group is None:
                group = PortalGroup(name, pkey, db.allocate_index(), pgt)
                db.groups[(name, pkey)] = group
            group.tag = pgt
        self._touch(entity, now, esi=True)
        # the response (5.7.5.1): key as sent (or the assigned EID), what was registered
        rsp_keys = list(msg.key_attributes) or [Attribute.of(Tag.ENTITY_IDENTIFIER, eid)]
        out = [Attribute.of(Tag.ENTITY_IDENTIFIER, eid)]
        out += [Attribute(t, v) for t, v in reg.entity_attrs.items() if t != Tag.ENTITY_IDENTIFIER]
        if assigned_period:
            out.append(Attribute(Tag.REGISTRATION_PERIOD, entity.attrs[Tag.REGISTRATION_PERIOD]))
        current: PortalKey | None = None
        for i, a in enumerate(ops):
            if a.tag in _INDEX_TAGS or _object_of(a.tag) is ObjectType.ENTITY:
                continue
            if a.tag == Tag.PORTAL_IP_ADDRESS and i + 1 < len(ops):
                current = (a.value, _u32(ops[i + 1]))
            elif a.tag == Tag.ISCSI_NAME:
                current = None
            clamped = changed.get((current, int(a.tag))) if current is not None else None
            out.append(Attribute(a.tag, clamped) if clamped is not None else a)
        self.events.append(f"registered {eid} by {src}")
        return msg.response(Status.SUCCESSFUL, [*rsp_keys, DELIMITER, *out])

    # ------------------------------------------------------------------ queries

    def _related(
        self, obj: object, seen: set[str], control: bool
    ) -> dict[ObjectType, list[dict[int, bytes]]]:
        """Attributes of an object and of the objects it is related to (5.6.5.2): its
        entity, the nodes and portals joined by a non-NULL PGT, the PGs."""
        db = self.db
        out: dict[ObjectType, list[dict[int, bytes]]] = {}

        def visible(name: str) -> bool:
            return control or name in seen

        def groups(gs: Iterable[PortalGroup]) -> list[PortalGroup]:
            return [
                g for g in gs if g.tag is not None and g.name in db.nodes and g.portal in db.portals
            ]

        if isinstance(obj, Entity):
            nodes = [db.nodes[n] for n in sorted(obj.nodes) if visible(n)]
            portals = [db.portals[k] for k in sorted(obj.portals)]
            pgs = [g for n in nodes for g in groups(db.groups_of_node(n.name))]
            out[ObjectType.ENTITY] = [obj.attrs]
        elif isinstance(obj, Node):
            nodes = [obj]
            pgs = groups(db.groups_of_node(obj.name))
            portals = [db.portals[g.portal] for g in pgs]
            entity = db.entities.get(obj.eid)
            out[ObjectType.ENTITY] = [entity.attrs] if entity is not None else []
        elif isinstance(obj, Portal):
            pgs = [g for g in groups(db.groups_of_portal(obj.key)) if visible(g.name)]
            nodes = [db.nodes[g.name] for g in pgs]
            portals = [obj]
            entity = db.entities.get(obj.eid)
            out[ObjectType.ENTITY] = [entity.attrs] if entity is not None else []
        elif isinstance(obj, PortalGroup):
            pgs = [obj]
            nodes = [db.nodes[obj.name]] if obj.name in db.nodes else []
            portals = [db.portals[obj.portal]] if obj.portal in db.portals else []
            entity = db.entities.get(nodes[0].eid) if nodes else None
            out[ObjectType.ENTITY] = [entity.attrs] if entity is not None else []
        else:  # pragma: no cover - a bug
            raise TypeError(obj)
        out[ObjectType.ISCSI_NODE] = [n.attrs for n in nodes]
        out[ObjectType.PORTAL] = [p.attrs for p in portals]
        out[ObjectType.PORTAL_GROUP] = [g.attrs() for g in pgs]
        return out

    def _dd_map(self, dd: DiscoveryDomain) -> dict[int, bytes]:
        return {
            int(Tag.DD_ID): dd.dd_id.to_bytes(4, "big"),
            int(Tag.DD_SYMBOLIC_NAME): Attribute.of(Tag.DD_SYMBOLIC_NAME, dd.name).value,
            int(Tag.DD_FEATURES): dd.features.to_bytes(4, "big"),
        }

    def _dd_list(self, dd: DiscoveryDomain) -> list[Attribute]:
        """A DD as isnsd lists it: ID, name, features, then each member's index and name,
        then each portal member's index, address and port (6.11.2)."""
        out = [Attribute(t, v) for t, v in self._dd_map(dd).items()]
        for name in dd.members:
            out += [Attribute.of(Tag.DD_MEMBER_ISCSI_INDEX, self.db.node_index(name)),
                    Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, name)]  # fmt: skip
        for key in dd.portal_members:
            out += [Attribute.of(Tag.DD_MEMBER_PORTAL_INDEX, self.db.portal_index(key)),
                    Attribute(Tag.DD_MEMBER_PORTAL_IP_ADDR, key[0]),
                    Attribute(Tag.DD_MEMBER_PORTAL_TCP_UDP_PORT, key[1].to_bytes(4, "big"))]  # fmt: skip
        return out

    def _dds_attrs(self, dds: DiscoveryDomainSet) -> dict[int, bytes]:
        return {
            int(Tag.DD_SET_ID): dds.dds_id.to_bytes(4, "big"),
            int(Tag.DD_SET_SYMBOLIC_NAME): Attribute.of(Tag.DD_SET_SYMBOLIC_NAME, dds.name).value,
            int(Tag.DD_SET_STATUS): int(dds.enabled).to_bytes(4, "big"),
        }

    def _dds_list(self, dds: DiscoveryDomainSet) -> list[Attribute]:
        out = [Attribute(t, v) for t, v in self._dds_attrs(dds).items()]
        return out + [Attribute.of(Tag.DD_ID, d) for d in dds.dds]

    def _emit(self, obj: object, tags: Sequence[int] | None) -> list[Attribute]:
        if isinstance(obj, DiscoveryDomain):
            full = self._dd_list(obj)
        elif isinstance(obj, DiscoveryDomainSet):
            full = self._dds_list(obj)
        elif isinstance(obj, dict):
            full = [Attribute(t, v) for t, v in sorted(obj.items())]
        else:  # pragma: no cover - a bug
            raise TypeError(obj)
        if tags is None:
            return full
        wanted = set(tags)
        if isinstance(obj, dict):
            return [Attribute(t, obj[t]) for t in tags if obj.get(t)]
        return [a for a in full if a.tag in wanted]

    def _objects(self, kind: ObjectType, src: str) -> list[object]:
        """Every object of ``kind`` that ``src`` may see, in the stable order."""
        control = self.is_control(src)
        seen = self.visible_nodes(src)
        db = self.db
        if kind is ObjectType.ENTITY:
            return list(self._visible_entities(src))
        if kind is ObjectType.ISCSI_NODE:
            return [n for n in db.ordered_nodes() if control or n.name in seen]
        if kind is ObjectType.PORTAL:
            eids = {e.eid for e in self._visible_entities(src)}
            return [p for p in db.ordered_portals() if p.eid in eids]
        if kind is ObjectType.PORTAL_GROUP:
            return [g for g in db.ordered_groups() if control or g.name in seen]
        if kind is ObjectType.DD:
            return [db.dds[i] for i in sorted(db.dds) if control or src in db.dds[i].members]
        if kind is ObjectType.DD_SET:
            mine = {
                d.dd_id for d in self._objects(ObjectType.DD, src) if isinstance(d, DiscoveryDomain)
            }
            return [db.ddss[i] for i in sorted(db.ddss) if control or mine & set(db.ddss[i].dds)]
        return []

    @staticmethod
    def _attrs_of(obj: object) -> dict[int, bytes]:
        if isinstance(obj, Entity | Node | Portal):
            return obj.attrs
        if isinstance(obj, PortalGroup):
            return obj.attrs()
        return {}

    def _matches(self, obj: object, scope: Sequence[Attribute]) -> bool:
        if isinstance(obj, DiscoveryDomain):
            attrs = {a.tag: a.value for a in self._dd_list(obj)}
            members = {Attribute.of(Tag.DD_MEMBER_ISCSI_NAME, m).value for m in obj.members}
            return all(
                (a.value in members)
                if a.tag == Tag.DD_MEMBER_ISCSI_NAME
                else attrs.get(a.tag) == a.value
                for a in scope
            )
        if isinstance(obj, DiscoveryDomainSet):
            attrs = {a.tag: a.value for a in self._dds_list(obj)}
            return all(attrs.get(a.tag) == a.value for a in scope)
        attrs = self._attrs_of(obj)
        return all(attrs.get(a.tag) == a.value for a in scope)

    def _key_kind(self, keys: Sequence[Attribute]) -> ObjectType:
        kinds = {_object_of(a.tag) for a in keys}
        if len(kinds) != 1 or None in kinds:
            raise _Refused(
                Status.INVALID_QUERY, "Message Key attributes of one object type (5.6.5.2)"
            )
        kind = kinds.pop()
        assert kind is not None
        if kind in _FC_OBJECTS:
            raise _Refused(Status.ATTRIBUTE_NOT_IMPLEMENTED, "iFCP objects are not implemented")
        if kind not in (ObjectType.ENTITY, ObjectType.PORTAL, ObjectType.ISCSI_NODE,
                        ObjectType.PORTAL_GROUP, ObjectType.DD, ObjectType.DD_SET):  # fmt: skip
            raise _Refused(Status.INVALID_QUERY, f"no query by {kind.value} attributes")
        return kind

    def _dev_attr_qry(self, msg: Message, src: str, now: float) -> Message:
        """DevAttrQry (5.6.5.2, 5.7.5.2), scoped to the source's DDs.

        No Operating Attributes asks for every attribute (5.7.5.2; isnsadm's --query
        does so). A key that matches nothing is answered Successful with no Operating
        Attributes, as 5.6.5.2 says ("SHALL NOT be considered an error"), although 6.3.4
        has a client expect "no such entry" for its deregistered EID.
        """
        keys = [canonical(a) for a in msg.key_attributes]
        requested = [a.tag for a in msg.operating_attributes]
        for tag in requested:
            if _object_of(tag) is None:
                raise _Refused(Status.INVALID_QUERY, f"tag {tag} is not an iSNS attribute")
        # group the requested tags by object type, in order of first appearance
        order: list[ObjectType] = []
        tags_of: dict[ObjectType, list[int]] = {}
        for tag in requested:
            kind = _object_of(tag)
            assert kind is not None
            if kind not in tags_of:
                order.append(kind)
                tags_of[kind] = []
            tags_of[kind].append(tag)
        out: list[Attribute] = []
        control = self.is_control(src)
        seen = self.visible_nodes(src)
        if keys:
            kind = self._key_kind(keys)
            scope = [a for a in keys if a.value]
            matched = [o for o in self._objects(kind, src) if self._matches(o, scope)]
            groups = order or (
                [kind] if kind in (ObjectType.DD, ObjectType.DD_SET)
                else [ObjectType.ENTITY, ObjectType.ISCSI_NODE, ObjectType.PORTAL,
                      ObjectType.PORTAL_GROUP]
            )  # fmt: skip
            for obj in matched:
                if isinstance(obj, DiscoveryDomain | DiscoveryDomainSet):
                    out += self._emit(obj, tags_of.get(kind) if order else None)
                    continue
                related = self._related(obj, seen, control)
                for group in groups:
                    for item in related.get(group, []):
                        out += self._emit(item, tags_of.get(group))
        else:
            groups = order or [ObjectType.ENTITY, ObjectType.ISCSI_NODE, ObjectType.PORTAL,
                               ObjectType.PORTAL_GROUP]  # fmt: skip
            for group in groups:
                for obj in self._objects(group, src):
                    entry: object = (
                        obj
                        if isinstance(obj, DiscoveryDomain | DiscoveryDomainSet)
                        else self._attrs_of(obj)
                    )
                    out += self._emit(entry, tags_of.get(group))
        return msg.response(Status.SUCCESSFUL, [*msg.key_attributes, DELIMITER, *out])

    _NEXT_KEYS: dict[int, ObjectType] = {
        Tag.ENTITY_IDENTIFIER: ObjectType.ENTITY,
        Tag.ENTITY_INDEX: ObjectType.ENTITY,
        Tag.ISCSI_NAME: ObjectType.ISCSI_NODE,
        Tag.ISCSI_NODE_INDEX: ObjectType.ISCSI_NODE,
        Tag.PORTAL_IP_ADDRESS: ObjectType.PORTAL,
        Tag.PORTAL_TCP_UDP_PORT: ObjectType.PORTAL,
        Tag.PORTAL_INDEX: ObjectType.PORTAL,
        Tag.PG_INDEX: ObjectType.PORTAL_GROUP,
        Tag.DD_ID: ObjectType.DD,
        Tag.DD_SET_ID: ObjectType.DD_SET,
    }

    def _dev_get_next(self, msg: Message, src: str, now: float) -> Message:
        """DevGetNext (5.6.5.3, 5.7.5.3): objects in the order of their key values, so
        a key that was deregistered meanwhile still has a next."""
        keys = [canonical(a) for a in msg.key_attributes]
        if not keys or any(a.tag not in self._NEXT_KEYS for a in keys):
            raise _Refused(Status.INVALID_QUERY, "DevGetNext keys: 5.6.5.3's list")
        kinds = {self._NEXT_KEYS[a.tag] for a in keys}
        if len(kinds) != 1:
            raise _Refused(Status.INVALID_QUERY, "Message Key attributes of one object type")
        kind = kinds.pop()
        ops = [canonical(a) for a in msg.operating_attributes]
        if any(_object_of(a.tag) is not kind for a in ops):
            raise _Refused(
                Status.INVALID_QUERY, "Operating Attributes of the key's object (5.6.5.3)"
            )
        scope = [a for a in ops if a.value]
        wanted = [a.tag for a in ops if not a.value] or None
        key_tags = [a.tag for a in keys]

        def sort_key(obj: object) -> tuple[object, ...]:
            attrs = self._attrs_of(obj)
            if isinstance(obj, DiscoveryDomain):
                return (obj.dd_id,)
            if isinstance(obj, DiscoveryDomainSet):
                return (obj.dds_id,)
            return tuple(
                int.from_bytes(attrs.get(t, b""), "big")
                if t != Tag.ISCSI_NAME and t != Tag.ENTITY_IDENTIFIER and t != Tag.PORTAL_IP_ADDRESS
                else attrs.get(t, b"")
                for t in key_tags
            )

        def given() -> tuple[object, ...] | None:
            if not all(a.value for a in keys):
                return None
            return tuple(
                a.value
                if a.tag in (Tag.ISCSI_NAME, Tag.ENTITY_IDENTIFIER, Tag.PORTAL_IP_ADDRESS)
                else int.from_bytes(a.value, "big")
                for a in keys
            )

        after = given()
        candidates = sorted(self._objects(kind, src), key=lambda o: sort_key(o))
        for obj in candidates:
            position = sort_key(obj)
            if after is not None and not position > after:
                continue
            if not self._matches(obj, scope):
                continue
            if isinstance(obj, DiscoveryDomain | DiscoveryDomainSet):
                attrs_list = self._emit(obj, wanted)
                key_out = [a for a in self._emit(obj, None) if a.tag in key_tags][:1]
            else:
                attrs = self._attrs_of(obj)
                attrs_list = self._emit(attrs, wanted)
                key_out = [Attribute(t, attrs.get(t, b"")) for t in key_tags]
            return msg.response(Status.SUCCESSFUL, [*key_out, DELIMITER, *attrs_list])
        return msg.response(Status.NO_SUCH_ENTRY)  # 5.6.5.3: past the last object

    # ------------------------------------------------------------------ DevDereg

    def _dev_dereg(self, msg: Message, src: str, now: float) -> Message:
        """DevDereg (5.6.5.4, 5.7.5.4): entity, portal, node; an absent one is no error."""
        ops = [canonical(a) for a in msg.operating_attributes]
        db = self.db
        doomed: list[tuple[str, object]] = []
        i = 0
        while i < len(ops):
            a = ops[i]
            if a.tag == Tag.ENTITY_IDENTIFIER:
                if _text(a) in db.entities:
                    doomed.append(("entity", _text(a)))
            elif a.tag == Tag.PORTAL_IP_ADDRESS:
                port = ops[i + 1] if i + 1 < len(ops) else None
                if port is None or port.tag != Tag.PORTAL_TCP_UDP_PORT:
                    raise _Refused(
                        Status.INVALID_DEREGISTRATION, "a Portal IP Address without its port"
                    )
                if (a.value, _u32(port)) in db.portals:
                    doomed.append(("portal", (a.value, _u32(port))))
                i += 2
                continue
            elif a.tag == Tag.PORTAL_INDEX:
                portal = db.portal_by_index(_u32(a))
                if portal is not None:
                    doomed.append(("portal", portal.key))
            elif a.tag == Tag.ISCSI_NAME:
                if _text(a) in db.nodes:
                    doomed.append(("node", _text(a)))
            elif a.tag == Tag.ISCSI_NODE_INDEX:
                node = db.node_by_index(_u32(a))
                if node is not None:
                    doomed.append(("node", node.name))
            else:
                raise _Refused(
                    Status.INVALID_DEREGISTRATION,
                    f"tag {a.tag} names nothing DevDereg removes (5.6.5.4)",
                )
            i += 1
        for kind, what in doomed:
            if kind == "entity":
                eid = str(what)
            elif kind == "portal" and isinstance(what, tuple):
                eid = db.portals[what].eid
            else:
                eid = db.nodes[str(what)].eid
            self._authorize(src, eid)
        for kind, what in doomed:
            if kind == "entity":
                self._remove_entity(str(what))
                continue
            if kind == "portal" and isinstance(what, tuple):
                portal = db.portals.get(what)
                if portal is None:
                    continue
                eid = portal.eid
                db.remove_portal(what)
                self._esi.pop(what, None)
                self._subjects.add(what)
            else:
                node = db.nodes.get(str(what))
                if node is None:
                    continue
                eid = node.eid
                db.remove_node(str(what))
            entity = db.entities.get(eid)
            if entity is not None and not entity.nodes and not entity.portals:
                self._remove_entity(eid)  # 5.6.5.4
            elif entity is not None and kind == "portal":
                self._updated.update(entity.nodes)
        return msg.response(Status.SUCCESSFUL, [DELIMITER])

    # ------------------------------------------------------------------ SCN registration

    def _scn_node(self, msg: Message, src: str) -> Node | None:
        keys = [canonical(a) for a in msg.key_attributes]
        if len(keys) != 1 or keys[0].tag != Tag.ISCSI_NAME or not keys[0].value:
            raise _Refused(Status.MESSAGE_FORMAT_ERROR, "the Message Key is one iSCSI Name")
        node = self.db.nodes.get(_text(keys[0]))
        if node is not None:
            self._authorize(src, node.eid)
        return node

    def _scn_reg(self, msg: Message, src: str, now: float) -> Message:
        """SCNReg (5.6.5.5): the SCN Bitmap overwrites the node's; 17 when no portal of
        its entity has an SCN Port (TCP or UDP: 2.9.2 makes a server accept UDP SCN
        registrations), or a non-Control Node asks for management SCNs."""
        node = self._scn_node(msg, src)
        ops = [a for a in msg.operating_attributes if a.tag == Tag.ISCSI_SCN_BITMAP and a.value]
        if len(ops) != 1:
            raise _Refused(Status.MESSAGE_FORMAT_ERROR, "SCNReg carries one SCN Bitmap (5.6.5.5)")
        if node is None:
            raise _Refused(Status.SCN_REGISTRATION_REJECTED, "the node is not registered")
        bitmap = _u32(ops[0])
        if bitmap & ScnEvent.MANAGEMENT and not self.is_control(src):
            raise _Refused(
                Status.SCN_REGISTRATION_REJECTED, "management SCNs are for Control Nodes"
            )
        entity = self.db.entities.get(node.eid)
        ports = [
            p.port_attr(Tag.SCN_PORT)
            for k in (entity.portals if entity is not None else [])
            if (p := self.db.portals.get(k)) is not None
        ]
        if not any(port is not None for port in ports):
            raise _Refused(Status.SCN_REGISTRATION_REJECTED, "no SCN Port registered (5.6.5.5)")
        node.attrs[int(Tag.ISCSI_SCN_BITMAP)] = ops[0].value
        return msg.response(Status.SUCCESSFUL)

    def _scn_dereg(self, msg: Message, src: str, now: float) -> Message:
        """SCNDereg (5.6.5.6): the node's SCN Bitmap is cleared."""
        node = self._scn_node(msg, src)
        if node is not None:
            node.attrs.pop(int(Tag.ISCSI_SCN_BITMAP), None)
        return msg.response(Status.SUCCESSFUL)

    def _scn_event(self, msg: Message, src: str, now: float) -> Message:
        """SCNEvent (5.6.5.7): an SCN with the given bitmap about the key's node, to
        the registered nodes that see it."""
        node = self._scn_node(msg, src)
        ops = [a for a in msg.operating_attributes if a.tag == Tag.ISCSI_SCN_BITMAP and a.value]
        if len(ops) != 1 or node is None:
            raise _Refused(Status.SCN_EVENT_REJECTED, "SCNEvent: a registered node and a bitmap")
        bit = _u32(ops[0])
        for other in self.db.ordered_nodes():
            if (
                other.name != node.name
                and other.scn_bitmap
                and node.name in self.visible_nodes(other.name)
            ):
                self._send_scn(other, [(bit, node.name, node.node_type)], now)
        return msg.response(Status.SUCCESSFUL)

    # ------------------------------------------------------------------ DDs and DDSs

    def _may_modify_dds(self, src: str) -> None:
        if not (self.config.dd_modification or self.is_control(src)):
            raise _Refused(
                Status.SOURCE_UNAUTHORIZED, "DD/DDS modification is for Control Nodes (2.4)"
            )

    def _one_id(self, attrs: Sequence[Attribute], tag: int) -> int | None:
        values = [_u32(a) for a in attrs if a.tag == tag and a.value]
        if len(set(values)) > 1:
            raise _Refused(Status.INVALID_REGISTRATION, f"two different tag {tag} values")
        return values[0] if values else None

    def _grouping_reg(self, kind: _Grouping[_G, _M], msg: Message, src: str, now: float) -> Message:
        """DDReg and DDSReg (5.6.5.9, 5.6.5.11): the Message Key names an existing
        grouping, or none and the Operating Attributes create one (with the ID they give,
        or a new one); names are unique; members are added, never removed."""
        self._may_modify_dds(src)
        label = kind.label
        store = kind.store()
        keys = [canonical(a) for a in msg.key_attributes]
        ops = [canonical(a) for a in msg.operating_attributes]
        if any(a.tag != kind.id_tag for a in keys):
            raise _Refused(
                Status.INVALID_REGISTRATION, f"the {label}Reg Message Key is a {label}_ID"
            )
        key_id = self._one_id(keys, kind.id_tag)
        op_id = self._one_id(ops, kind.id_tag)
        if key_id is not None and op_id is not None and key_id != op_id:
            raise _Refused(
                Status.INVALID_REGISTRATION, f"Message Key and Operating {label}_IDs differ"
            )
        if key_id is not None and key_id not in store:
            raise _Refused(
                Status.INVALID_REGISTRATION, f"{label} {key_id} does not exist ({kind.reg_section})"
            )
        obj_id = key_id if key_id is not None else op_id
        if obj_id == 0:
            raise _Refused(
                Status.INVALID_REGISTRATION, f"{label}_ID 0 is reserved ({kind.id_section})"
            )
        name: str | None = None
        rest: list[Attribute] = []
        for a in ops:
            if a.tag == kind.id_tag:
                continue
            if a.tag == kind.name_tag:
                name = _text(a) or None
            else:
                rest.append(a)
        members = kind.read(rest)
        obj = store.get(obj_id) if obj_id is not None else None
        if name is not None and any(o.name == name and o is not obj for o in store.values()):
            raise _Refused(
                Status.INVALID_REGISTRATION, f"{label} name {name!r} is taken ({kind.reg_section})"
            )
        new = obj is None
        if obj is None:
            obj_id = obj_id if obj_id is not None else kind.new_id()
            obj = kind.create(obj_id, name)
            store[obj_id] = obj
        elif name is not None:
            obj.name = name
        out: list[Attribute] = kind.add(obj, members, new)
        return msg.response(Status.SUCCESSFUL, [*msg.key_attributes, DELIMITER, *out])

    def _grouping_dereg(
        self, kind: _Grouping[_G, _M], msg: Message, src: str, now: float
    ) -> Message:
        """DDDereg and DDSDereg (5.6.5.10, 5.6.5.12): the grouping, or some of its
        members; one that does not exist is no error."""
        self._may_modify_dds(src)
        label = kind.label
        keys = [canonical(a) for a in msg.key_attributes]
        if len(keys) != 1 or keys[0].tag != kind.id_tag or not keys[0].value:
            raise _Refused(
                Status.MESSAGE_FORMAT_ERROR, f"the {label}Dereg Message Key is one {label}_ID"
            )
        obj = kind.store().get(_u32(keys[0]))
        ops = [canonical(a) for a in msg.operating_attributes]
        if obj is None:
            pass
        elif not ops:
            kind.delete(obj)
        else:
            kind.remove(obj, ops)
        return msg.response(Status.SUCCESSFUL)

    # A DD groups nodes and portals (6.11.2).

    def _dd_read(self, ops: Sequence[Attribute]) -> _DDMembers:
        features: int | None = None
        members: list[str] = []
        portals: list[PortalKey] = []
        i = 0
        while i < len(ops):
            a = ops[i]
            if a.tag == Tag.DD_FEATURES:
                features = _u32(a)
            elif a.tag == Tag.DD_MEMBER_ISCSI_NAME and a.value:
                members.append(_text(a))
            elif a.tag == Tag.DD_MEMBER_ISCSI_INDEX and a.value:
                node = self.db.node_by_index(_u32(a))
                if node is None:
                    raise _Refused(
                        Status.INVALID_REGISTRATION, "DD Member iSCSI Index of no registered node"
                    )
                if i + 1 < len(ops) and ops[i + 1].tag == Tag.DD_MEMBER_ISCSI_NAME:
                    if _text(ops[i + 1]) != node.name:
                        raise _Refused(
                            Status.INVALID_REGISTRATION, "member index and name disagree"
                        )
                    i += 1
                members.append(node.name)
            elif a.tag == Tag.DD_MEMBER_PORTAL_INDEX and a.value:
                portal = self.db.portal_by_index(_u32(a))
                if portal is None:
                    raise _Refused(
                        Status.INVALID_REGISTRATION, "DD Member Portal Index of no portal"
                    )
                portals.append(portal.key)
            elif a.tag == Tag.DD_MEMBER_PORTAL_IP_ADDR and a.value:
                port = ops[i + 1] if i + 1 < len(ops) else None
                if port is None or port.tag != Tag.DD_MEMBER_PORTAL_TCP_UDP_PORT:
                    raise _Refused(
                        Status.INVALID_REGISTRATION, "a member portal address needs its port"
                    )
                portals.append((a.value, _u32(port)))
                i += 1
            else:
                raise _Refused(Status.INVALID_REGISTRATION, f"tag {a.tag} in a DDReg (5.6.5.9)")
            i += 1
        return _DDMembers(features, members, portals)

    def _dd_create(self, dd_id: int, name: str | None) -> DiscoveryDomain:
        return DiscoveryDomain(dd_id, name or self._unique_dd_name(dd_id))

    def _dd_add(self, dd: DiscoveryDomain, add: _DDMembers, new: bool) -> list[Attribute]:
        if add.features is not None:
            dd.features = add.features
        for m in add.members:
            self.db.node_index(m)  # 5.6.5.9: an unregistered member gets its index now
            if m not in dd.members:
                dd.members.append(m)
        for p in add.portals:
            self.db.portal_index(p)
            if p not in dd.portal_members:
                dd.portal_members.append(p)
        if new or add.members or add.portals:
            return self._dd_list(dd)
        return [Attribute.of(Tag.DD_ID, dd.dd_id)]

    def _dd_delete(self, dd: DiscoveryDomain) -> None:
        del self.db.dds[dd.dd_id]
        for dds in self.db.ddss.values():
            if dd.dd_id in dds.dds:
                dds.dds.remove(dd.dd_id)

    def _dd_remove(self, dd: DiscoveryDomain, ops: Sequence[Attribute]) -> None:
        for i, a in enumerate(ops):
            if a.tag == Tag.DD_MEMBER_ISCSI_NAME and _text(a) in dd.members:
                dd.members.remove(_text(a))
            elif a.tag == Tag.DD_MEMBER_ISCSI_INDEX:
                node = self.db.node_by_index(_u32(a))
                named = next((n for n, x in self.db.node_indexes.items() if x == _u32(a)), None)
                name = node.name if node is not None else named
                if name in dd.members:
                    dd.members.remove(name)
            elif a.tag == Tag.DD_MEMBER_PORTAL_IP_ADDR and i + 1 < len(ops):
                key = (a.value, _u32(ops[i + 1]))
                if key in dd.portal_members:
                    dd.portal_members.remove(key)

    def _unique_dd_name(self, dd_id: int) -> str:
        name, n = f"dd-{dd_id}", 0
        while any(d.name == name for d in self.db.dds.values()):
            n += 1
            name = f"dd-{dd_id}-{n}"
        return name

    # A DD Set groups DDs (6.11.1); DDSReg of a DD_ID that does not exist creates that DD.

    def _dds_read(self, ops: Sequence[Attribute]) -> _DDSMembers:
        status: int | None = None
        dd_ids: list[int] = []
        for a in ops:
            if a.tag == Tag.DD_SET_STATUS:
                status = _u32(a)
            elif a.tag == Tag.DD_ID and a.value:
                if _u32(a) == 0:
                    raise _Refused(Status.INVALID_REGISTRATION, "DD_ID 0 is reserved")
                dd_ids.append(_u32(a))
            else:
                raise _Refused(Status.INVALID_REGISTRATION, f"tag {a.tag} in a DDSReg (5.6.5.11)")
        return _DDSMembers(status, dd_ids)

    def _dds_create(self, dds_id: int, name: str | None) -> DiscoveryDomainSet:
        return DiscoveryDomainSet(dds_id, name or f"dds-{dds_id}")

    def _dds_add(self, dds: DiscoveryDomainSet, add: _DDSMembers, new: bool) -> list[Attribute]:
        db = self.db
        if add.status is not None:
            dds.enabled = bool(add.status & 1)  # 6.11.1.3: bit 31 (the LSb)
        created: list[Attribute] = []
        for d in add.dd_ids:
            if d not in db.dds:
                db.dds[d] = DiscoveryDomain(d, self._unique_dd_name(d))
                created += [Attribute.of(Tag.DD_ID, d),
                            Attribute.of(Tag.DD_SYMBOLIC_NAME, db.dds[d].name),
                            Attribute.of(Tag.DD_FEATURES, 0)]  # fmt: skip
            if d not in dds.dds:
                dds.dds.append(d)
        return [Attribute(t, v) for t, v in self._dds_attrs(dds).items()] + created

    def _dds_delete(self, dds: DiscoveryDomainSet) -> None:
        del self.db.ddss[dds.dds_id]

    def _dds_remove(self, dds: DiscoveryDomainSet, ops: Sequence[Attribute]) -> None:
        for a in ops:
            if a.tag == Tag.DD_ID and a.value and _u32(a) in dds.dds:
                dds.dds.remove(_u32(a))
