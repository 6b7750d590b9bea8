"""The reference iSNS server's database (RFC 4171 3, 3.8): sans-IO, no clock, no file.

Theory of operation
-------------------
Objects are kept the way they travel: each holds its attributes as a ``{tag: wire
value}`` map in canonical form (strings re-padded, IPv4 addresses IPv4-mapped as 6.3.1
says, so that open-isns's IPv4-compatible ``::a.b.c.d`` finds the same object), keys
included. A query then only picks tags out of maps (5.6.5.2), and the order of
:meth:`Database.ordered` is the order of the key values themselves, so that DevGetNext
(5.6.5.3) has a "next" even after the key it was given was deregistered.

Server-assigned values: Entity, Portal, iSCSI Node and Portal Group indexes (6.2.7,
6.3.6, 6.4.5, 6.5.5) come from one counter and are remembered by key for good, so that
an object re-registered, or named in a DD before it registers (5.6.5.9), gets its old
index back; EIDs (6.2.1), DD_IDs and DDS_IDs (6.11.1.1, 6.11.2.1: 0 is reserved, 1 is
the default DD/DDS) likewise. :meth:`Database.to_json` / :meth:`Database.from_json` are
what the adapter writes to a file; time-dependent state (registration deadlines, ESI
schedules) lives in the engine, which rebuilds it on load.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from iscsi_conformance.core.isns import Attribute, Tag, ValueType, attribute_spec

__all__ = [
    "DEFAULT_DD",
    "DEFAULT_DDS",
    "Database",
    "DiscoveryDomain",
    "DiscoveryDomainSet",
    "Entity",
    "Node",
    "Portal",
    "PortalGroup",
    "PortalKey",
    "canonical",
    "norm_address",
]

DEFAULT_DD = 1  # 6.11.2.1
DEFAULT_DDS = 1  # 6.11.1.1

PortalKey = tuple[bytes, int]  # (16-byte IPv4-mapped/IPv6 address, port value of 6.3.2)


def norm_address(value: bytes) -> bytes:
    """An IPv4 address written IPv4-compatible (``::a.b.c.d``, as open-isns does)
    rewritten IPv4-mapped (``::ffff:a.b.c.d``, 6.3.1); anything else unchanged."""
    if len(value) == 16 and not any(value[:12]) and int.from_bytes(value[12:], "big") > 1:
        return bytes(10) + b"\xff\xff" + value[12:]
    return value


def canonical(attr: Attribute) -> Attribute:
    """``attr`` with its value in canonical form (raises ISNSFormatError when it does
    not decode): strings NUL-terminated and padded once, addresses normalised."""
    spec = attribute_spec(attr.tag)
    if spec is None or not attr.value:
        return Attribute(attr.tag, attr.value)
    if spec.type is ValueType.STRING:
        text = attr.decoded()
        return Attribute.of(attr.tag, text if isinstance(text, str) else "")
    if spec.type is ValueType.ADDRESS:
        attr.decoded()  # raises on a wrong size
        return Attribute(attr.tag, norm_address(attr.value))
    attr.decoded()
    return Attribute(attr.tag, attr.value)


def _text(value: bytes) -> str:
    return value.rstrip(b"\0").decode("utf-8", "replace")


def _u32(value: bytes | None, default: int = 0) -> int:
    return int.from_bytes(value, "big") if value else default


@dataclass
class Entity:
    """A Network Entity (3.1): its attributes, and its portals and nodes by key."""

    eid: str
    index: int
    attrs: dict[int, bytes] = field(default_factory=dict)
    portals: list[PortalKey] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    @property
    def registration_period(self) -> int:
        return _u32(self.attrs.get(Tag.REGISTRATION_PERIOD))


@dataclass
class Portal:
    """A Portal (3.2): address and port are its key."""

    key: PortalKey
    index: int
    eid: str
    attrs: dict[int, bytes] = field(default_factory=dict)

    @property
    def esi_interval(self) -> int:
        return _u32(self.attrs.get(Tag.ESI_INTERVAL))

    def port_attr(self, tag: int) -> tuple[int, bool] | None:
        """(port, is UDP) of the ESI Port or SCN Port attribute, if registered."""
        value = self.attrs.get(tag)
        if not value:
            return None
        n = _u32(value)
        return n & 0xFFFF, bool(n & 0x10000)


@dataclass
class Node:
    """An iSCSI Storage Node (3.3): its iSCSI Name is its key."""

    name: str
    index: int
    eid: str
    attrs: dict[int, bytes] = field(default_factory=dict)

    @property
    def node_type(self) -> int:
        return _u32(self.attrs.get(Tag.ISCSI_NODE_TYPE))

    @property
    def scn_bitmap(self) -> int:
        return _u32(self.attrs.get(Tag.ISCSI_SCN_BITMAP))


@dataclass
class PortalGroup:
    """A Portal Group (3.4): node name and portal are its key; ``tag`` None is a NULL
    PGT, meaning no relationship (5.6.5.1)."""

    name: str
    portal: PortalKey
    index: int
    tag: int | None = 1

    def attrs(self) -> dict[int, bytes]:
        out = {
            int(Tag.PG_ISCSI_NAME): Attribute.of(Tag.PG_ISCSI_NAME, self.name).value,
            int(Tag.PG_PORTAL_IP_ADDR): self.portal[0],
            int(Tag.PG_PORTAL_TCP_UDP_PORT): self.portal[1].to_bytes(4, "big"),
        }
        if self.tag is not None:
            out[int(Tag.PG_TAG)] = self.tag.to_bytes(4, "big")
        out[int(Tag.PG_INDEX)] = self.index.to_bytes(4, "big")
        return out


@dataclass
class DiscoveryDomain:
    """A Discovery Domain (3.6): members by iSCSI Name and by portal (6.11.2)."""

    dd_id: int
    name: str
    features: int = 0
    members: list[str] = field(default_factory=list)
    portal_members: list[PortalKey] = field(default_factory=list)


@dataclass
class DiscoveryDomainSet:
    """A Discovery Domain Set (3.7): ``enabled`` is bit 31 of DDS Status (6.11.1.3)."""

    dds_id: int
    name: str
    enabled: bool = False
    dds: list[int] = field(default_factory=list)


@dataclass
class Database:
    """Every object the server holds, and the counters that name new ones."""

    entities: dict[str, Entity] = field(default_factory=dict)
    portals: dict[PortalKey, Portal] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    groups: dict[tuple[str, PortalKey], PortalGroup] = field(default_factory=dict)
    dds: dict[int, DiscoveryDomain] = field(default_factory=dict)
    ddss: dict[int, DiscoveryDomainSet] = field(default_factory=dict)
    node_indexes: dict[str, int] = field(default_factory=dict)
    portal_indexes: dict[PortalKey, int] = field(default_factory=dict)
    entity_indexes: dict[str, int] = field(default_factory=dict)
    next_index: int = 1
    next_eid: int = 1
    next_dd: int = 2  # 1 is the default DD (6.11.2.1)
    next_dds: int = 2

    # ------------------------------------------------------------------ indexes

    def allocate_index(self) -> int:
        """A new index (Entity, Portal, Node and PG indexes share one counter)."""
        n = self.next_index
        self.next_index += 1
        return n

    def node_index(self, name: str) -> int:
        """The iSCSI Node Index of ``name``: kept from an earlier registration or DD
        membership, else a new one (5.6.5.9)."""
        if name not in self.node_indexes:
            self.node_indexes[name] = self.allocate_index()
        return self.node_indexes[name]

    def portal_index(self, key: PortalKey) -> int:
        if key not in self.portal_indexes:
            self.portal_indexes[key] = self.allocate_index()
        return self.portal_indexes[key]

    def entity_index(self, eid: str) -> int:
        if eid not in self.entity_indexes:
            self.entity_indexes[eid] = self.allocate_index()
        return self.entity_indexes[eid]

    def new_eid(self) -> str:
        """A server-assigned EID (5.6.5.1) that no entity has."""
        while f"isns-entity-{self.next_eid}" in self.entities:
            self.next_eid += 1
        eid = f"isns-entity-{self.next_eid}"
        self.next_eid += 1
        return eid

    def new_dd_id(self) -> int:
        """A DD_ID no DD has, never 0 or 1 (6.11.2.1), not reused after a DDDereg."""
        while self.next_dd in self.dds or self.next_dd < 2:
            self.next_dd += 1
        self.next_dd += 1
        return self.next_dd - 1

    def new_dds_id(self) -> int:
        """A DDS_ID no DDS has, never 0 or 1 (6.11.1.1)."""
        while self.next_dds in self.ddss or self.next_dds < 2:
            self.next_dds += 1
        self.next_dds += 1
        return self.next_dds - 1

    def node_by_index(self, index: int) -> Node | None:
        return next((n for n in self.nodes.values() if n.index == index), None)

    def portal_by_index(self, index: int) -> Portal | None:
        return next((p for p in self.portals.values() if p.index == index), None)

    # ------------------------------------------------------------------ order

    def ordered_nodes(self) -> list[Node]:
        return [self.nodes[k] for k in sorted(self.nodes)]

    def ordered_portals(self) -> list[Portal]:
        return [self.portals[k] for k in sorted(self.portals)]

    def ordered_entities(self) -> list[Entity]:
        return [self.entities[k] for k in sorted(self.entities)]

    def ordered_groups(self) -> list[PortalGroup]:
        return [self.groups[k] for k in sorted(self.groups)]

    def groups_of_node(self, name: str) -> Iterator[PortalGroup]:
        return (g for g in self.ordered_groups() if g.name == name)

    def groups_of_portal(self, key: PortalKey) -> Iterator[PortalGroup]:
        return (g for g in self.ordered_groups() if g.portal == key)

    # ------------------------------------------------------------------ removal

    def remove_node(self, name: str) -> Node | None:
        """Deregister a node (5.6.5.4); its PGs stay while their portal does; DD
        membership stays."""
        node = self.nodes.pop(name, None)
        if node is None:
            return None
        entity = self.entities.get(node.eid)
        if entity is not None and name in entity.nodes:
            entity.nodes.remove(name)
        for key in [k for k, g in self.groups.items() if g.name == name]:
            if key[1] not in self.portals:
                del self.groups[key]
        return node

    def remove_portal(self, key: PortalKey) -> Portal | None:
        portal = self.portals.pop(key, None)
        if portal is None:
            return None
        entity = self.entities.get(portal.eid)
        if entity is not None and key in entity.portals:
            entity.portals.remove(key)
        for gkey in [k for k, g in self.groups.items() if g.portal == key]:
            if gkey[0] not in self.nodes:
                del self.groups[gkey]
        return portal

    def remove_entity(self, eid: str) -> Entity | None:
        """Deregister an entity and everything under it (5.6.5.4)."""
        entity = self.entities.get(eid)
        if entity is None:
            return None
        for name in list(entity.nodes):
            self.remove_node(name)
        for key in list(entity.portals):
            self.remove_portal(key)
        for gkey in [k for k in self.groups if k[0] not in self.nodes and k[1] not in self.portals]:
            del self.groups[gkey]
        return self.entities.pop(eid)

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        """A JSON-able snapshot (bytes as hex), for the adapter to write atomically."""

        def attrs(a: dict[int, bytes]) -> dict[str, str]:
            return {str(t): v.hex() for t, v in a.items()}

        def pk(k: PortalKey) -> list[Any]:
            return [k[0].hex(), k[1]]

        return {
            "version": 1,
            "entities": [
                {"eid": e.eid, "index": e.index, "attrs": attrs(e.attrs),
                 "portals": [pk(p) for p in e.portals], "nodes": list(e.nodes)}
                for e in self.entities.values()
            ],
            "portals": [
                {"key": pk(p.key), "index": p.index, "eid": p.eid, "attrs": attrs(p.attrs)}
                for p in self.portals.values()
            ],
            "nodes": [
                {"name": n.name, "index": n.index, "eid": n.eid, "attrs": attrs(n.attrs)}
                for n in self.nodes.values()
            ],
            "groups": [
                {"name": g.name, "portal": pk(g.portal), "index": g.index, "tag": g.tag}
                for g in self.groups.values()
            ],
            "dds": [
                {"id": d.dd_id, "name": d.name, "features": d.features, "members": d.members,
                 "portal_members": [pk(p) for p in d.portal_members]}
                for d in self.dds.values()
            ],
            "ddss": [
                {"id": s.dds_id, "name": s.name, "enabled": s.enabled, "dds": s.dds}
                for s in self.ddss.values()
            ],
            "node_indexes": self.node_indexes,
            "portal_indexes": [[*pk(k), v] for k, v in self.portal_indexes.items()],
            "entity_indexes": self.entity_indexes,
            "counters": [self.next_index, self.next_eid, self.next_dd, self.next_dds],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Database:
        """The database :meth:`to_json` wrote. Raises ValueError/KeyError/TypeError on
        a file that is not one."""
        if data.get("version") != 1:
            raise ValueError(f"unknown iSNS database version {data.get('version')!r}")

        def attrs(a: dict[str, str]) -> dict[int, bytes]:
            return {int(t): bytes.fromhex(v) for t, v in a.items()}

        def pk(k: list[Any]) -> PortalKey:
            return bytes.fromhex(str(k[0])), int(k[1])

        db = cls()
        for e in data["entities"]:
            db.entities[e["eid"]] = Entity(
                e["eid"], int(e["index"]), attrs(e["attrs"]),
                [pk(p) for p in e["portals"]], [str(n) for n in e["nodes"]],
            )  # fmt: skip
        for p in data["portals"]:
            key = pk(p["key"])
            db.portals[key] = Portal(key, int(p["index"]), p["eid"], attrs(p["attrs"]))
        for n in data["nodes"]:
            db.nodes[n["name"]] = Node(n["name"], int(n["index"]), n["eid"], attrs(n["attrs"]))
        for g in data["groups"]:
            key = pk(g["portal"])
            tag = None if g["tag"] is None else int(g["tag"])
            db.groups[(g["name"], key)] = PortalGroup(g["name"], key, int(g["index"]), tag)
        for d in data["dds"]:
            db.dds[int(d["id"])] = DiscoveryDomain(
                int(d["id"]), d["name"], int(d["features"]), [str(m) for m in d["members"]],
                [pk(p) for p in d["portal_members"]],
            )  # fmt: skip
        for s in data["ddss"]:
            db.ddss[int(s["id"])] = DiscoveryDomainSet(
                int(s["id"]), s["name"], bool(s["enabled"]), [int(x) for x in s["dds"]]
            )
        db.node_indexes = {str(k): int(v) for k, v in data["node_indexes"].items()}
        db.portal_indexes = {pk(v[:2]): int(v[2]) for v in data["portal_indexes"]}
        db.entity_indexes = {str(k): int(v) for k, v in data["entity_indexes"].items()}
        db.next_index, db.next_eid, db.next_dd, db.next_dds = (int(x) for x in data["counters"])
        return db

    def text(self, value: bytes) -> str:
        return _text(value)
