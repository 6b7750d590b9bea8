"""The reference iSNS client's sans-IO engine (RFC 4171, the iSCSI profile of 4.1).

Theory of operation
-------------------
:class:`ClientEngine` is what the reference target and initiator say to an iSNS server,
minus I/O, shaped like the server engine beside it: the adapter (``isns/client_io.py``)
holds one TCP connection to the server and moves bytes (``receive_data(data, now)`` in,
``data_to_send()`` out) and takes :meth:`ClientEngine.next_event` results out. Requests
go one at a time (each waits for its response, matched by TRANSACTION ID, 5.1.5), and
every message is sent as a single PDU: open-isns's isnsd drops messages split across
PDUs (fixtures/isns/PROVENANCE.md), and one PDU holds 65532 bytes (5.1.3).

What the engine does:

- **registration** (5.6.5.1): one DevAttrReg with the Entity Identifier as Message Key
  and the Replace flag, so that a restart replaces what the last run left (5.6.5.1 says
  Replace swaps the objects of the key for those of the Operating Attributes). The
  Operating Attributes are laid out as 5.6.5.1 lists them: the entity (EID, Entity
  Protocol iSCSI, 6.2.2, and the Registration Period asked for, 6.2.6), then each portal
  (IP Address, TCP Port, ESI Interval and ESI Port, 6.3.4/6.3.5, and SCN Port, 6.3.7),
  then each Storage Node (iSCSI Name, Node Type, Alias, 6.4), then each Portal Group as
  an explicit PG object (PG iSCSI Name, PG Portal IP Addr, PG Portal TCP/UDP Port, PGT,
  6.5). A node that is not served on one of the entity's portals needs a PG with a NULL
  PGT there (6.5.4): both isnsd and our server otherwise create an implicit PG with
  PGT 1 for every node and portal of the entity (5.6.5.1). The server's answer (5.7.5.1) may shorten or lengthen the period; the engine
  refreshes at half of the period the server returned (6.2.6: the registration is
  removed when nothing refreshes it within the period) by re-registering the entity
  alone, without Replace.
- **SCN registration** (5.6.5.5) of each node, when an SCN port is given: the node's
  iSCSI Name as key, its iSCSI Node SCN Bitmap (6.4.4) as operating attribute.
- **deregistration** (5.6.5.4): DevDereg with the EID as Operating Attribute, which
  removes the entity and everything under it.
- **discovery**: DevGetNext (5.6.5.3) over iSCSI Names from the empty key until the server
  answers "no such entry" (status 9, 5.4), keeping the Storage Nodes whose Node Type has
  the Target bit (6.4.2); then one DevAttrQry (5.6.5.2) per target with the target's name
  as key, asking for its Portals and Portal Groups. A target's portals are those of its
  Portal Groups with a non-NULL PGT (6.5.4: a NULL PGT says the node is not reachable
  there); a target that registered no PG gets its entity's portals with no tag. The
  server scopes both queries to the Source's discovery domains (5.6.5.2), so a client
  registered in no common DD never learns of a target.
- **the server's requests** on the ESI/SCN port the adapter listens on (one listener
  for both): :meth:`ClientEngine.listener` gives a :class:`ListenerConnection` per
  accepted connection. An ESI (5.6.5.13) is answered by an ESI Response (5.7.5.13) with
  status 0 that echoes the ESI's attributes, the same TRANSACTION ID; an SCN (5.6.5.8) by
  an SCN Response (5.7.5.8) with status 0 and the destination's iSCSI Name, and becomes
  :class:`ScnReceived`.

Time is always an argument; :meth:`ClientEngine.get_timer` is the next refresh. Nothing
here opens a socket, reads a clock or draws a random number.

Sections are RFC 4171's unless stated otherwise.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from iscsi_conformance.core.isns import (
    MAX_PAYLOAD,
    Attribute,
    EntityProtocol,
    Flag,
    FunctionId,
    ISNSFormatError,
    Message,
    MessageDecoder,
    NodeType,
    ScnEvent,
    Status,
    Tag,
    encode,
    port_value,
)

__all__ = [
    "ClientEngine",
    "Deregistered",
    "DiscoveredTarget",
    "EsiAnswered",
    "Event",
    "ListenerConnection",
    "NodeSpec",
    "PortalGroupSpec",
    "Registered",
    "Registration",
    "RequestFailed",
    "ScnReceived",
    "TargetsDiscovered",
]

DEFAULT_SCN_BITMAP = ScnEvent.OBJECT_ADDED | ScnEvent.OBJECT_REMOVED | ScnEvent.OBJECT_UPDATED


# ----------------------------------------------------------------------- what to register


@dataclass(frozen=True)
class NodeSpec:
    """One iSCSI Storage Node (6.4): name, type (6.4.2) and alias (6.4.3)."""

    name: str
    node_type: int = NodeType.TARGET
    alias: str = ""


@dataclass(frozen=True)
class PortalGroupSpec:
    """One Portal Group (6.5): the node is reachable at the portal with this PGT, or,
    with ``tag`` None (a NULL PGT, 6.5.4), not reachable there."""

    node: str
    host: str
    port: int
    tag: int | None


@dataclass(frozen=True)
class Registration:
    """An entity and what it holds (3.1, 5.6.5.1). ``portals`` are (host, port);
    ``esi_port``/``scn_port`` None registers none (then the server cannot monitor or
    notify the entity); ``registration_period`` 0 leaves the period to the server."""

    entity_id: str
    nodes: tuple[NodeSpec, ...]
    portals: tuple[tuple[str, int], ...] = ()
    groups: tuple[PortalGroupSpec, ...] = ()
    esi_port: int | None = None
    esi_interval: int = 0
    scn_port: int | None = None
    scn_bitmap: int = DEFAULT_SCN_BITMAP
    registration_period: int = 0

    @property
    def source(self) -> str:
        """The Source attribute (5.6.1): the first node's iSCSI Name."""
        return self.nodes[0].name


@dataclass(frozen=True)
class DiscoveredTarget:
    """A target found through iSNS: its name, alias and (host, port, PGT) portals; the
    PGT is None when the target registered no Portal Group."""

    name: str
    alias: str = ""
    portals: tuple[tuple[str, int, int | None], ...] = ()


# ----------------------------------------------------------------------- events


@dataclass(frozen=True)
class Registered:
    """DevAttrRegRsp Successful (5.7.5.1): the period the server keeps it (6.2.6)."""

    entity_id: str
    registration_period: int
    refresh: bool


@dataclass(frozen=True)
class Deregistered:
    """DevDeregRsp Successful (5.7.5.4)."""

    entity_id: str


@dataclass(frozen=True)
class RequestFailed:
    """A response with a non-zero status (5.4), or none at all (``status`` None)."""

    function: int
    status: int | None
    why: str = ""


@dataclass(frozen=True)
class TargetsDiscovered:
    """The end of a discovery: every target the server let the source see."""

    targets: tuple[DiscoveredTarget, ...]


@dataclass(frozen=True)
class EsiAnswered:
    """An ESI (5.6.5.13) came and was answered."""

    transaction_id: int
    at: float


@dataclass(frozen=True)
class ScnReceived:
    """An SCN (5.6.5.8): (iSCSI Node SCN Bitmap bit, iSCSI Name) pairs."""

    destination: str
    changes: tuple[tuple[int, str], ...]


Event = Registered | Deregistered | RequestFailed | TargetsDiscovered | EsiAnswered | ScnReceived


# ----------------------------------------------------------------------- helpers


def _address(host: str) -> Attribute:
    return Attribute.of(Tag.PORTAL_IP_ADDRESS, ipaddress.ip_address(host))


def _text(attr: Attribute) -> str:
    value = attr.decoded()
    return value if isinstance(value, str) else ""


def _u32(attr: Attribute) -> int:
    value = attr.decoded()
    return value if isinstance(value, int) else 0


def _host(attr: Attribute) -> str:
    value = attr.decoded()  # IPv4-compatible and IPv4-mapped both read as IPv4
    return str(value) if value is not None else ""


def _misframed(msg: Message) -> str | None:
    """Why an answer is not framed as iSNSP frames every message, or None: a TLV
    whose length is not a multiple of 4 (5.3.1) leaves the rest of the payload
    unaligned, so nothing read after it means what the server meant. Other format
    breaches (isnsd writes IPv4-compatible addresses, 6.3.1) are tolerated."""
    odd = next((a for a in msg.attributes if len(a.value) % 4), None)
    if odd is None:
        return None
    return f"attribute {odd.tag} is {len(odd.value)} bytes long, not a multiple of 4 (5.3.1)"


def _single_pdu(msg: Message) -> bytes:
    data = encode(msg)
    if len(data) > MAX_PAYLOAD + 12:
        raise ValueError(f"message of {len(data)} bytes needs more than one PDU (5.1.3)")
    return data


def targets_of(response: Message, name: str) -> DiscoveredTarget:
    """Read a DevAttrQryRsp (5.7.5.2) for one target: its alias, its portals and PGs."""
    alias = ""
    portals: list[tuple[str, int]] = []
    groups: list[tuple[str, str, int, int | None]] = []
    pending_host: str | None = None
    pg: dict[int, Attribute] = {}
    for a in response.operating_attributes:
        if a.tag == Tag.ISCSI_ALIAS:
            alias = _text(a)
        elif a.tag == Tag.PORTAL_IP_ADDRESS:
            pending_host = _host(a)
        elif a.tag == Tag.PORTAL_TCP_UDP_PORT and pending_host is not None:
            portals.append((pending_host, a.port()[0]))
            pending_host = None
        elif a.tag in (Tag.PG_ISCSI_NAME, Tag.PG_PORTAL_IP_ADDR, Tag.PG_PORTAL_TCP_UDP_PORT):
            if a.tag == Tag.PG_ISCSI_NAME:
                pg = {}
            pg[a.tag] = a
        elif a.tag == Tag.PG_TAG and {Tag.PG_ISCSI_NAME, Tag.PG_PORTAL_IP_ADDR} <= pg.keys():
            port = pg.get(Tag.PG_PORTAL_TCP_UDP_PORT)
            groups.append(
                (
                    _text(pg[Tag.PG_ISCSI_NAME]),
                    _host(pg[Tag.PG_PORTAL_IP_ADDR]),
                    port.port()[0] if port is not None else 0,
                    _u32(a) if a.value else None,
                )
            )
            pg = {}
    mine = [g for g in groups if g[0] == name]
    found: tuple[tuple[str, int, int | None], ...]
    if mine:
        # 6.5.4: a NULL PGT says the node is not reachable through that portal
        found = tuple((h, p, t) for _n, h, p, t in mine if t is not None)
    else:
        found = tuple((h, p, None) for h, p in portals)
    return DiscoveredTarget(name, alias, tuple(dict.fromkeys(found)))


# ----------------------------------------------------------------------- the engine


@dataclass
class _Pending:
    purpose: str
    message: Message
    detail: str = ""


@dataclass
class _Discovery:
    names: list[str] = field(default_factory=list)
    found: list[DiscoveredTarget] = field(default_factory=list)
    to_query: deque[str] = field(default_factory=deque)


class ClientEngine:
    """One client's conversation with one iSNS server (requests, in order, one at a
    time). ``source`` is the iSCSI Name our requests carry as Source (5.6.1)."""

    def __init__(self, source: str, *, first_transaction_id: int = 1) -> None:
        self.source = source
        self._xid = (first_transaction_id - 1) & 0xFFFF
        self._decoder = MessageDecoder()
        self._out = bytearray()
        self._queue: deque[_Pending] = deque()
        self._inflight: _Pending | None = None
        self._events: deque[Event] = deque()
        self._registration: Registration | None = None
        self._refresh_at: float | None = None
        self._discovery: _Discovery | None = None
        self.registered = False
        self.period = 0
        self.broken: str | None = None

    # ------------------------------------------------------------------ I/O surface

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the server connection."""
        if self.broken is not None:
            return
        self._decoder.feed(data)
        try:
            while self.broken is None and (msg := self._decoder.next_message()) is not None:
                misframed = _misframed(msg)
                if misframed is not None:
                    self.connection_lost(f"undecodable answer: {misframed}")
                    return
                self._response(msg, now)
        except ISNSFormatError as exc:
            self.connection_lost(f"undecodable answer: {exc}")

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def connection_lost(self, why: str) -> None:
        """The server connection ended (or its answer never came): everything in flight
        and queued fails; the adapter may reconnect and call :meth:`register` again."""
        self.broken = why
        if any(p is not None and p.purpose == "refresh" for p in [self._inflight, *self._queue]):
            self._refresh_at = 0.0  # due at once on the next connection
        for pending in [p for p in [self._inflight, *self._queue] if p is not None]:
            self._events.append(RequestFailed(pending.message.function, None, why))
        self._inflight = None
        self._queue.clear()
        self._discovery = None

    def reconnected(self) -> None:
        """The adapter opened a new server connection: what was queued goes out."""
        self.broken = None
        self._decoder = MessageDecoder()
        self._pump()

    @property
    def idle(self) -> bool:
        """No request in flight or queued."""
        return self._inflight is None and not self._queue

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next (the registration refresh, 6.2.6)."""
        return self._refresh_at if self.registered else None

    def handle_timer(self, now: float) -> None:
        if self._refresh_at is not None and now >= self._refresh_at and self.registered:
            self._refresh_at = None
            self._send("refresh", self._refresh_message())

    def listener(self) -> ListenerConnection:
        """The sans-IO side of one connection the server opened to our ESI/SCN port."""
        return ListenerConnection(self)

    # ------------------------------------------------------------------ requests

    def register(self, registration: Registration) -> None:
        """DevAttrReg with Replace (5.6.5.1), then SCNReg per node (5.6.5.5)."""
        self._registration = registration
        self.source = registration.source
        self._send("register", self._registration_message(registration))
        if registration.scn_port is not None:
            for node in registration.nodes:
                msg = self._request(
                    FunctionId.SCN_REG,
                    keys=[Attribute.of(Tag.ISCSI_NAME, node.name)],
                    operating=[Attribute.of(Tag.ISCSI_SCN_BITMAP, registration.scn_bitmap)],
                    source=node.name,
                )
                self._send("scn-register", msg, node.name)

    def deregister(self) -> None:
        """DevDereg of the whole entity (5.6.5.4)."""
        reg = self._registration
        if reg is None:
            return
        self._refresh_at = None
        msg = self._request(
            FunctionId.DEV_DEREG, operating=[Attribute.of(Tag.ENTITY_IDENTIFIER, reg.entity_id)]
        )
        self._send("deregister", msg)

    def discover(self) -> None:
        """DevGetNext over iSCSI Names, then DevAttrQry per target; ends in
        :class:`TargetsDiscovered` (or :class:`RequestFailed`)."""
        self._discovery = _Discovery()
        self._get_next("")

    # ------------------------------------------------------------------ building

    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFF or 1
        return self._xid

    def _request(
        self,
        function: int,
        *,
        keys: list[Attribute] | None = None,
        operating: list[Attribute] | None = None,
        replace: bool = False,
        source: str | None = None,
    ) -> Message:
        return Message.request(
            function,
            source=Attribute.of(Tag.ISCSI_NAME, source or self.source),
            keys=keys or [],
            operating=operating or [],
            transaction_id=self._next_xid(),
            replace=replace,
        )

    def _entity_attributes(self, reg: Registration) -> list[Attribute]:
        attrs = [
            Attribute.of(Tag.ENTITY_IDENTIFIER, reg.entity_id),
            Attribute.of(Tag.ENTITY_PROTOCOL, EntityProtocol.ISCSI),
        ]
        if reg.registration_period:
            attrs.append(Attribute.of(Tag.REGISTRATION_PERIOD, reg.registration_period))
        return attrs

    def _registration_message(self, reg: Registration) -> Message:
        ops = self._entity_attributes(reg)
        for host, port in reg.portals:
            ops += [_address(host), Attribute.of(Tag.PORTAL_TCP_UDP_PORT, port_value(port))]
            if reg.esi_port is not None:
                if reg.esi_interval:
                    ops.append(Attribute.of(Tag.ESI_INTERVAL, reg.esi_interval))
                ops.append(Attribute.of(Tag.ESI_PORT, port_value(reg.esi_port)))
            if reg.scn_port is not None:
                ops.append(Attribute.of(Tag.SCN_PORT, port_value(reg.scn_port)))
        for node in reg.nodes:
            ops += [
                Attribute.of(Tag.ISCSI_NAME, node.name),
                Attribute.of(Tag.ISCSI_NODE_TYPE, int(node.node_type)),
            ]
            if node.alias:
                ops.append(Attribute.of(Tag.ISCSI_ALIAS, node.alias))
        for g in reg.groups:
            ops += [
                Attribute.of(Tag.PG_ISCSI_NAME, g.node),
                Attribute.of(Tag.PG_PORTAL_IP_ADDR, ipaddress.ip_address(g.host)),
                Attribute.of(Tag.PG_PORTAL_TCP_UDP_PORT, port_value(g.port)),
                Attribute.of(Tag.PG_TAG, g.tag),  # None: the zero-length NULL PGT
            ]
        return self._request(
            FunctionId.DEV_ATTR_REG,
            keys=[Attribute.of(Tag.ENTITY_IDENTIFIER, reg.entity_id)],
            operating=ops,
            replace=True,
        )

    def _refresh_message(self) -> Message:
        reg = self._registration
        assert reg is not None
        return self._request(
            FunctionId.DEV_ATTR_REG,
            keys=[Attribute.of(Tag.ENTITY_IDENTIFIER, reg.entity_id)],
            operating=self._entity_attributes(reg),
        )

    def _get_next(self, after: str) -> None:
        key = Attribute.of(Tag.ISCSI_NAME, after) if after else Attribute(Tag.ISCSI_NAME)
        self._send("get-next", self._request(FunctionId.DEV_GET_NEXT, keys=[key]))

    def _query(self, name: str) -> None:
        wanted = (
            Tag.ISCSI_NAME,
            Tag.ISCSI_NODE_TYPE,
            Tag.ISCSI_ALIAS,
            Tag.PORTAL_IP_ADDRESS,
            Tag.PORTAL_TCP_UDP_PORT,
            Tag.PG_ISCSI_NAME,
            Tag.PG_PORTAL_IP_ADDR,
            Tag.PG_PORTAL_TCP_UDP_PORT,
            Tag.PG_TAG,
        )
        msg = self._request(
            FunctionId.DEV_ATTR_QRY,
            keys=[Attribute.of(Tag.ISCSI_NAME, name)],
            operating=[Attribute(t) for t in wanted],
        )
        self._send("query", msg, name)

    def _send(self, purpose: str, msg: Message, detail: str = "") -> None:
        self._queue.append(_Pending(purpose, msg, detail))
        self._pump()

    def _pump(self) -> None:
        if self._inflight is None and self._queue and self.broken is None:
            self._inflight = self._queue.popleft()
            self._out += _single_pdu(self._inflight.message)

    # ------------------------------------------------------------------ responses

    def _response(self, msg: Message, now: float) -> None:
        pending = self._inflight
        if (
            pending is None
            or msg.transaction_id != pending.message.transaction_id
            or msg.function != (pending.message.function | 0x8000)
        ):
            return  # 5.1.5: not the answer we wait for; nothing to do with it
        self._inflight = None
        handler = self._handlers[pending.purpose]
        handler(self, pending, msg, now)
        self._pump()

    def _failed(self, pending: _Pending, msg: Message) -> bool:
        if msg.status == Status.SUCCESSFUL:
            return False
        self._events.append(RequestFailed(pending.message.function, msg.status, pending.purpose))
        return True

    def _on_register(self, pending: _Pending, msg: Message, now: float) -> None:
        refresh = pending.purpose == "refresh"
        if self._failed(pending, msg):
            if not refresh:
                self.registered = False
            return
        reg = self._registration
        assert reg is not None
        period_attr = msg.first(Tag.REGISTRATION_PERIOD)
        period = _u32(period_attr) if period_attr is not None else reg.registration_period
        self.registered, self.period = True, period
        # 6.2.6: refresh well inside the period; 0 means the server never expires it
        self._refresh_at = now + max(1.0, period / 2) if period else None
        self._events.append(Registered(reg.entity_id, period, refresh))

    def _on_scn_register(self, pending: _Pending, msg: Message, now: float) -> None:
        self._failed(pending, msg)

    def _on_deregister(self, pending: _Pending, msg: Message, now: float) -> None:
        if self._failed(pending, msg):
            return
        reg = self._registration
        self.registered = False
        self._refresh_at = None
        self._events.append(Deregistered(reg.entity_id if reg is not None else ""))

    def _on_get_next(self, pending: _Pending, msg: Message, now: float) -> None:
        d = self._discovery
        if d is None:
            return
        if msg.status == Status.NO_SUCH_ENTRY:  # 5.6.5.3: past the last object
            d.to_query.extend(d.names)
            self._next_query()
            return
        if self._failed(pending, msg):
            self._discovery = None
            return
        key = msg.first(Tag.ISCSI_NAME)
        name = _text(key) if key is not None else ""
        if not name or name in d.names:
            # no progress: a server that repeats itself would loop forever
            d.to_query.extend(d.names)
            self._next_query()
            return
        ops = msg.operating_attributes
        node_type = next((_u32(a) for a in ops if a.tag == Tag.ISCSI_NODE_TYPE), None)
        if node_type is None or node_type & NodeType.TARGET:
            d.names.append(name)
        self._get_next(name)

    def _next_query(self) -> None:
        d = self._discovery
        assert d is not None
        if d.to_query:
            self._query(d.to_query.popleft())
            return
        self._discovery = None
        self._events.append(TargetsDiscovered(tuple(d.found)))

    def _on_query(self, pending: _Pending, msg: Message, now: float) -> None:
        d = self._discovery
        if d is None:
            return
        if msg.status == Status.SUCCESSFUL:
            types = [_u32(a) for a in msg.operating_attributes if a.tag == Tag.ISCSI_NODE_TYPE]
            if not types or any(t & NodeType.TARGET for t in types):
                d.found.append(targets_of(msg, pending.detail))
        elif msg.status != Status.NO_SUCH_ENTRY:  # gone since the DevGetNext: skip it
            self._failed(pending, msg)
            self._discovery = None
            return
        self._next_query()

    _handlers: dict[str, Callable[[ClientEngine, _Pending, Message, float], None]] = {
        "register": _on_register,
        "refresh": _on_register,
        "scn-register": _on_scn_register,
        "deregister": _on_deregister,
        "get-next": _on_get_next,
        "query": _on_query,
    }

    # ------------------------------------------------------------------ server's requests

    def _server_request(self, msg: Message, now: float) -> Message | None:
        """The answer to an ESI or SCN the server sent to our listener."""
        if msg.function == FunctionId.ESI:
            self._events.append(EsiAnswered(msg.transaction_id, now))
            # 5.7.5.13: status, then the ESI's own attributes echoed
            return _answer(msg, FunctionId.ESI_RSP, Status.SUCCESSFUL, msg.attributes)
        if msg.function == FunctionId.SCN:
            attrs = msg.attributes
            destination = _text(attrs[0]) if attrs and attrs[0].tag == Tag.ISCSI_NAME else ""
            changes: list[tuple[int, str]] = []
            bit: int | None = None
            for a in attrs[1:]:
                if a.tag == Tag.ISCSI_SCN_BITMAP:
                    bit = _u32(a)
                elif a.tag == Tag.ISCSI_NAME and bit is not None:
                    changes.append((bit, _text(a)))
            self._events.append(ScnReceived(destination, tuple(changes)))
            # 5.7.5.8: status and the destination's iSCSI Name
            return _answer(msg, FunctionId.SCN_RSP, Status.SUCCESSFUL, attrs[:1])
        if msg.is_response:
            return None
        return _answer(msg, msg.function | 0x8000, Status.MESSAGE_NOT_SUPPORTED, ())


def _answer(msg: Message, function: int, status: int, attrs: tuple[Attribute, ...]) -> Message:
    """Our response to a server's request: always with the Client flag (5.1.4), whatever
    the request's flags said (open-isns 0.101 sends ESI with the Client flag set, so
    ``Message.response``, which flips the sender, would claim to be the server)."""
    return Message(function, msg.transaction_id, int(Flag.CLIENT), status, attrs)


class ListenerConnection:
    """A connection the server opened to our ESI/SCN port: its requests in, our
    responses out (each one PDU, from the client side, 5.1.4)."""

    def __init__(self, engine: ClientEngine) -> None:
        self._engine = engine
        self._decoder = MessageDecoder()
        self._out = bytearray()
        self.closed = False

    def receive_data(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        self._decoder.feed(data)
        try:
            while (msg := self._decoder.next_message()) is not None:
                answer = self._engine._server_request(msg, now)
                if answer is None:
                    continue
                if answer.function in (FunctionId.ESI_RSP, FunctionId.SCN_RSP):
                    self._out += _single_pdu(answer)
                else:  # a request a client never gets: its response has no client layout
                    self._out += encode(answer, strict=False)
        except ISNSFormatError:
            self.closed = True  # 5.2: nothing to resynchronise on

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out
