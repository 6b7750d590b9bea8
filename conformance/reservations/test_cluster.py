"""Cluster: SCSI reservations as server clusters use them (SPC-4 5.13, SPC-2 5.5), with
two or three nodes, each a session of the reference initiator (an I_T nexus: its own
initiator name or ISID), failover, fencing and restarts (issue 13).

Theory of operation: ``cluster(target, "scenario")`` opens a ``Cluster`` on a logical
unit of the test's own where the target offers one (``target.dedicated()``, the
reference target: parallel runs never share its LU), else on the target's shared LU,
which it clears on exit. ``await c.join("A")`` logs a node in; every command a node
sends goes through ``c.pr_out`` / ``c.command`` and lands in that node's command
sequence ("+0.12s A PR OUT PREEMPT key=... sa_key=... type=5 -> GOOD"), so that a
failure (``c.require``) shows every node's sequence, not only the last exchange.
``await c.observe(node)`` reads the registrations and the reservation (READ FULL STATUS,
else READ KEYS and READ RESERVATION) into a state point of the timeline; ``c.event``
marks fencing, failures and restarts. On exit the timeline is put into the test's
evidence as ``evidence.extra["cluster_timeline"]`` (a list, one entry per scenario):

    {"scenario": str, "target": str, "lun": int,
     "nodes": [{"name", "initiator", "isid"}],
     "events": [{"t": seconds, "node": name|None, "kind": "command"|"state"|"event",
                 "what": str, "status": str|None,               # command, event
                 "holder": [names], "type": int|None,             # state
                 "registered": {name: "0x..key"}, "generation": int|None}],
     "facts": {name: value}}                                      # e.g. reservation type used
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.probe import FullFeature, full_feature, random_isid
from iscsi_conformance.harness.profiles import (
    OTHER_INITIATOR_NAME,
    REFERENCE_INITIATOR_NAME,
    capability_satisfied,
)
from iscsi_conformance.peers.base import LoginOptions
from iscsi_conformance.plugin import require, spec
from iscsi_conformance.scsi import cdb

GOOD, CHECK_CONDITION, CONFLICT, TASK_ABORTED = 0x00, 0x02, 0x18, 0x40
UNIT_ATTENTION, ILLEGAL_REQUEST = 0x06, 0x05
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT = 0, 1, 2, 3, 4, 5
REGISTER_IGNORE, REGISTER_AND_MOVE = 6, 7
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = 0, 1, 2, 3
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8
RESERVATIONS_PREEMPTED = (0x2A, 0x03)
RESERVATIONS_RELEASED = (0x2A, 0x04)
REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
LOGICAL_UNIT_RESET, TARGET_WARM_RESET = 5, 6
LBA = 1600  # inside the 1 MiB LU of a dedicated instance, and of every shared LU

SA_NAMES = {
    REGISTER: "REGISTER",
    RESERVE: "RESERVE",
    RELEASE: "RELEASE",
    CLEAR: "CLEAR",
    PREEMPT: "PREEMPT",
    PREEMPT_AND_ABORT: "PREEMPT AND ABORT",
    REGISTER_IGNORE: "REGISTER AND IGNORE EXISTING KEY",
    REGISTER_AND_MOVE: "REGISTER AND MOVE",
}
STATUS_NAMES = {
    GOOD: "GOOD",
    CHECK_CONDITION: "CHECK CONDITION",
    0x08: "BUSY",
    CONFLICT: "RESERVATION CONFLICT",
    0x28: "TASK SET FULL",
    TASK_ABORTED: "TASK ABORTED",
}
ASC_NAMES = {
    RESERVATIONS_PREEMPTED: "RESERVATIONS PREEMPTED",
    RESERVATIONS_RELEASED: "RESERVATIONS RELEASED",
    REGISTRATIONS_PREEMPTED: "REGISTRATIONS PREEMPTED",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
    (0x29, 0x01): "POWER ON OCCURRED",
    (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED",
    (0x29, 0x07): "I_T NEXUS LOSS OCCURRED",
    (0x2A, 0x01): "MODE PARAMETERS CHANGED",
    (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED",
    (0x26, 0x04): "INVALID RELEASE OF PERSISTENT RESERVATION",
    (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST",
    (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
}


def node_key(cluster_name: str, node_name: str) -> int:
    """A reservation key from the cluster's and the node's names, as fence_scsi derives
    one (a hash of the cluster name in the high half, of the node name in the low)."""
    high = zlib.crc32(cluster_name.encode()) or 1
    low = zlib.crc32(node_name.encode()) or 1
    return high << 32 | low


def describe(out: Any) -> str:
    """A command's outcome in a word or three: status, and sense for CHECK CONDITION."""
    if out is None or out.status is None:
        return f"no status ({out.missing().describe('SCSI Response') if out else 'not sent'})"
    name = STATUS_NAMES.get(out.status, f"status {out.status:#04x}")
    if out.status == CHECK_CONDITION and out.sense_key is not None:
        asc = out.asc
        what = ASC_NAMES.get(asc, f"{asc[0]:02X}h/{asc[1]:02X}h" if asc else "?")
        return f"{name} sense key {out.sense_key:X}h {what}"
    return name


def is_ua(out: Any) -> bool:
    return bool(out.status == CHECK_CONDITION and out.sense_key == UNIT_ATTENTION)


def is_illegal(out: Any) -> bool:
    return bool(out.status == CHECK_CONDITION and out.sense_key == ILLEGAL_REQUEST)


@dataclass
class Node:
    """One cluster node: an I_T nexus of the reference initiator."""

    name: str
    initiator: str
    isid: int
    ffp: FullFeature | None = None
    stack: contextlib.AsyncExitStack | None = None
    uas: list[tuple[int, int]] = field(default_factory=list)

    @property
    def port(self) -> str:
        """Its initiator port name, as an iSCSI TransportID names it (SPC-4 7.6.4.6)."""
        return f"{self.initiator},i,0x{self.isid:012x}"

    @property
    def up(self) -> FullFeature:
        assert self.ffp is not None, f"node {self.name} is not logged in"
        return self.ffp


@dataclass
class State:
    """Registrations and reservation as a node read them."""

    generation: int | None
    keys: list[int]
    holder_key: int | None
    pr_type: int | None
    full: list[Any] | None = None  # READ FULL STATUS descriptors, when supported


def supports_dedicated(target: Any) -> bool:
    return not target.external and capability_satisfied(target.manifest, "dedicated_instance")


@contextlib.contextmanager
def own_lu(target: Any, **kw: Any) -> Iterator[Any]:
    """A target with a logical unit of this test alone where the target offers one (a
    dedicated reference target instance), else the run's target and its shared LU."""
    if supports_dedicated(target):
        with target.dedicated(**kw) as inst:
            yield inst
    else:
        yield target


class Cluster:
    """The nodes of one scenario, their command sequences and the timeline."""

    def __init__(self, target: Any, scenario: str) -> None:
        self.target = target
        self.scenario = scenario
        self.lun: int = target.lun
        self.nodes: dict[str, Node] = {}
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}
        self.keys: dict[str, int] = {}  # node name -> key it registered (for the timeline)
        self.t0 = time.monotonic()
        self.block = 512

    # ------------------------------------------------------------------ recording
    def _t(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def _line(self, node: str | None, text: str) -> None:
        self.lines.append(f"+{self._t():6.2f}s {node or '-':>2} {text}")

    def event(self, what: str, node: str | None = None) -> None:
        """A cluster event for the timeline: a failure, a fence, a restart, a rejoin."""
        self.events.append({"t": self._t(), "node": node, "kind": "event", "what": what})
        self._line(node, f"** {what}")

    def fact(self, name: str, value: Any) -> None:
        self.facts[name] = value

    def sequences(self) -> str:
        return "command sequence of every node (time, node, command -> outcome):\n" + "\n".join(
            f"  {line}" for line in self.lines
        )

    def require(
        self, condition: object, requirement: str, message: str, *outs: Any, level: Any = None
    ) -> None:
        """``require`` with every node's command sequence in the failure message."""
        __tracebackhide__ = True
        sent = [p for o in outs if o is not None for p in o.sent]
        received = [p for o in outs if o is not None for p in o.shown()]
        require(
            condition,
            requirement,
            f"{message}\n{self.sequences()}",
            sent=sent,
            received=received,
            level=level,
        )

    def timeline(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "target": str(getattr(self.target, "name", "")),
            "lun": self.lun,
            "nodes": [
                {"name": n.name, "initiator": n.initiator, "isid": f"0x{n.isid:012x}"}
                for n in self.nodes.values()
            ],
            "events": self.events,
            "facts": self.facts,
        }

    # ------------------------------------------------------------------ nodes
    async def join(
        self,
        name: str,
        *,
        initiator: str | None = None,
        isid: int | None = None,
        profile: str = "default",
        keys: Any = (),
    ) -> Node:
        """Log node ``name`` in (a new session: a new I_T nexus)."""
        old = self.nodes.get(name)
        node = Node(
            name,
            initiator or (old.initiator if old else REFERENCE_INITIATOR_NAME),
            isid if isid is not None else random_isid(),
        )
        node.stack = contextlib.AsyncExitStack()
        node.ffp = await node.stack.enter_async_context(
            full_feature(self.target, profile, keys, isid=node.isid, initiator_name=node.initiator)
        )
        self.nodes[name] = node
        self.event(f"login ISID 0x{node.isid:012x} ({profile})", name)
        cap = await self.command(node, cdb.read_capacity10(), read_length=8)
        if cap.status == GOOD and len(cap.data) >= 8:
            self.block = cdb.parse_read_capacity10(cap.data)[1] or 512
        return node

    async def leave(self, node: Node, how: str = "drop") -> None:
        """End node's session: ``drop`` closes the connection (I_T nexus loss, a node
        that fails), ``logout`` sends a Logout Request first (a clean shutdown)."""
        if node.ffp is None:
            return
        if how == "logout":
            ffp = node.ffp
            req = P.LogoutRequest(
                immediate=True, reason=0, itt=ffp.next_itt(), cmdsn=ffp.cmdsn,
                expstatsn=ffp.expstatsn,
            )  # fmt: skip
            await ffp.send(req)
            resp = await ffp.recv()
            self._line(node.name, f"Logout (close session) -> {type(resp).__name__}")
        assert node.stack is not None
        await node.stack.aclose()
        node.ffp = None
        self.event("logged out" if how == "logout" else "connection lost (node failed)", node.name)

    async def close(self, *, clear: bool) -> None:
        """Clear what the scenario left on a shared LU (registrations, reservations,
        SCSI-2 reservations) and log every node out."""
        live = [n for n in self.nodes.values() if n.ffp is not None]
        if clear and live:
            # a SCSI-2 reservation first: while one is held a target may refuse the other
            # nodes' PERSISTENT RESERVE OUT (SPC-2 5.5.1), and with it the CLEAR below
            for n in live:
                await self.command(n, cdb.release6(), quiet=True)
            # any node may clear, but some targets refuse a node that shares its
            # initiator name with a stale holder: try each, other names first
            key = 0xC1EA_0000_0000_0001
            order = sorted(live, key=lambda n: n.initiator == REFERENCE_INITIATOR_NAME)
            for cleaner in order:
                await self.pr_out(cleaner, REGISTER_IGNORE, sa_key=key, quiet=True)
                if (await self.pr_out(cleaner, CLEAR, key=key, quiet=True)).status == GOOD:
                    break
            else:
                self.fact("cleanup", "CLEAR refused through every node: the LU keeps PR state")
        for n in live:
            assert n.stack is not None
            with contextlib.suppress(Exception):
                await n.stack.aclose()
            n.ffp = None

    # ------------------------------------------------------------------ commands
    async def command(
        self,
        node: Node,
        c: bytes,
        *,
        what: str | None = None,
        data_out: bytes = b"",
        read_length: int = 0,
        quiet: bool = False,
        keep_ua: bool = False,
    ) -> Any:
        """One command from ``node``; a UNIT ATTENTION answer is noted in the node's
        ``uas`` and the command sent again (it was not performed, SAM-5), up to 4 times."""
        out = None
        for _ in range(5):
            out = await node.up.command(c, lun=self.lun, data_out=data_out, read_length=read_length)
            if not is_ua(out) or keep_ua:
                break
            if out.asc is not None:
                node.uas.append(out.asc)
            self._line(node.name, f"(unit attention {ASC_NAMES.get(out.asc, out.asc)!s})")
        assert out is not None
        if not quiet:
            self._line(node.name, f"{what or _cdb_name(c)} -> {describe(out)}")
            self.events.append(
                {
                    "t": self._t(),
                    "node": node.name,
                    "kind": "command",
                    "what": what or _cdb_name(c),
                    "status": describe(out),
                }
            )
        return out

    async def pr_out(
        self,
        node: Node,
        sa: int,
        *,
        key: int = 0,
        sa_key: int = 0,
        pr_type: int = 0,
        quiet: bool = False,
        **kw: Any,
    ) -> Any:
        c, params = cdb.pr_out(sa, key=key, sa_key=sa_key, pr_type=pr_type, **kw)
        flags = " ".join(k.upper() for k, v in kw.items() if v is True)
        what = (
            f"PR OUT {SA_NAMES.get(sa, sa)} key={key:#x} sa_key={sa_key:#x}"
            + (f" type={pr_type}" if sa in (RESERVE, RELEASE, PREEMPT, PREEMPT_AND_ABORT) else "")
            + (f" {flags}" if flags else "")
        )
        out = await self.command(node, c, what=what, data_out=params, quiet=quiet)
        if out.status == GOOD and sa in (REGISTER, REGISTER_IGNORE):
            if sa_key:
                self.keys[node.name] = sa_key
            else:
                self.keys.pop(node.name, None)
        return out

    async def write(self, node: Node, lba: int, data: bytes) -> Any:
        return await self.command(
            node, cdb.write10(lba, 1), what=f"WRITE(10) LBA {lba}", data_out=data
        )

    async def read(self, node: Node, lba: int) -> tuple[bytes | None, Any]:
        out = await self.command(
            node, cdb.read10(lba, 1), what=f"READ(10) LBA {lba}", read_length=self.block
        )
        return (bytes(out.data) if out.status == GOOD else None), out

    def pattern(self, tag: str) -> bytes:
        """One block of recognisable data."""
        text = f"{self.scenario}:{tag}:".encode()
        return (text * (self.block // len(text) + 1))[: self.block]

    async def unit_attentions(self, node: Node) -> list[tuple[int, int]]:
        """The unit attentions pending for ``node`` (TEST UNIT READY until none), with
        the ones its earlier commands met; the list is emptied."""
        for _ in range(6):
            out = await node.up.command(cdb.test_unit_ready(), lun=self.lun)
            if not is_ua(out):
                break
            if out.asc is not None:
                node.uas.append(out.asc)
        seen, node.uas = node.uas, []
        self._line(
            node.name, f"TEST UNIT READY: unit attentions {[ASC_NAMES.get(a, a) for a in seen]}"
        )
        return seen

    async def tmf(self, node: Node, function: int) -> Any:
        """A task management function (immediate) from ``node`` on the LU; the response."""
        ffp = node.up
        req = P.TaskManagementRequest(
            immediate=True,
            function=function,
            lun=P.lun_to_field(self.lun),
            itt=ffp.next_itt(),
            referenced_task_tag=0xFFFFFFFF,
            cmdsn=ffp.cmdsn,
            expstatsn=ffp.expstatsn,
        )
        await ffp.send(req)
        resp = None
        for _ in range(64):
            resp = await ffp.recv()
            if resp is None or isinstance(resp, P.TaskManagementResponse | P.Reject):
                break
        name = {LOGICAL_UNIT_RESET: "LOGICAL UNIT RESET", TARGET_WARM_RESET: "TARGET WARM RESET"}
        got = f"response {resp.response}" if isinstance(resp, P.TaskManagementResponse) else resp
        self._line(node.name, f"TMF {name.get(function, function)} -> {got}")
        self.event(name.get(function, f"TMF {function}"), node.name)
        return resp

    # ------------------------------------------------------------------ reading state
    async def observe(self, node: Node, note: str = "") -> State:
        """Registrations and reservation as ``node`` reads them, kept as a state point."""
        full = await self.command(
            node, cdb.persistent_reserve_in(READ_FULL_STATUS, 4096), what="PR IN READ FULL STATUS",
            read_length=4096, quiet=True,
        )  # fmt: skip
        state: State
        if full.status == GOOD and len(full.data) >= 8:
            gen, descs = cdb.parse_read_full_status(full.data)
            holders = [d for d in descs if d.r_holder]
            state = State(
                gen,
                [d.key for d in descs],
                holders[0].key if holders else None,
                holders[0].pr_type if holders else None,
                descs,
            )
        else:
            gen, keys, _ = await self.read_keys(node, quiet=True)
            info, _ = await self.read_reservation(node, quiet=True)
            state = State(
                gen,
                keys,
                info.key if info is not None and info.pr_type is not None else None,
                info.pr_type if info is not None else None,
            )
        names = {k: n for n, k in self.keys.items()}
        ports = {n.port.lower(): n.name for n in self.nodes.values() if n.ffp is not None}

        def label(key: int, transport_id: str | None = None) -> str:
            """The node a registration belongs to: by its TransportID where READ FULL
            STATUS gives one (a registration of a node's earlier nexus is "stale"),
            else by the key the node registered."""
            name = names.get(key, f"{key:#x}")
            if transport_id is None or ",i," not in transport_id.lower():
                return name
            if name not in self.nodes:  # a third-party node: named with its ISID
                return f"{name} ({transport_id.lower().split(',i,')[-1]})"
            return ports.get(transport_id.lower(), f"{name} (stale nexus)")

        if state.full is not None:
            holder = [label(d.key, d.transport_id) for d in state.full if d.r_holder]
            registered = {label(d.key, d.transport_id): f"{d.key:#x}" for d in state.full}
        else:
            holder = [] if state.pr_type is None else [label(state.holder_key or 0)]
            registered = {label(k): f"{k:#x}" for k in state.keys}
        self.events.append(
            {
                "t": self._t(),
                "node": node.name,
                "kind": "state",
                "what": note or "state",
                "holder": holder,
                "type": state.pr_type,
                "registered": registered,
                "generation": state.generation,
            }
        )
        self._line(
            node.name,
            f"state{f' ({note})' if note else ''}: holder {holder or 'none'} type "
            f"{state.pr_type}, registered {sorted(registered)}, PRgeneration {state.generation}",
        )
        return state

    async def read_keys(self, node: Node, quiet: bool = False) -> tuple[int | None, list[int], Any]:
        out = await self.command(
            node, cdb.persistent_reserve_in(READ_KEYS, 1024), what="PR IN READ KEYS",
            read_length=1024, quiet=quiet,
        )  # fmt: skip
        if out.status != GOOD or len(out.data) < 8:
            return None, [], out
        gen, keys = cdb.parse_pr_in_read_keys(out.data)
        return gen, keys, out

    async def read_reservation(self, node: Node, quiet: bool = False) -> tuple[Any, Any]:
        out = await self.command(
            node, cdb.persistent_reserve_in(READ_RESERVATION, 1024),
            what="PR IN READ RESERVATION", read_length=1024, quiet=quiet,
        )  # fmt: skip
        if out.status != GOOD or len(out.data) < 8:
            return None, out
        return cdb.parse_pr_in_read_reservation(out.data), out


def _status_text(pdu: Any) -> str:
    """The status a SCSI Response (or a Data-In with status) carries, with its sense key
    and additional sense code for CHECK CONDITION."""
    name = STATUS_NAMES.get(pdu.status, f"status {pdu.status:#04x}")
    sense = pdu.sense if isinstance(pdu, P.ScsiResponse) else b""
    if pdu.status != CHECK_CONDITION or len(sense) < 3:
        return name
    desc = (sense[0] & 0x7F) in (0x72, 0x73)
    key = sense[1] & 0x0F if desc else sense[2] & 0x0F
    asc = (sense[2], sense[3]) if desc and len(sense) >= 4 else tuple(sense[12:14])
    what = ASC_NAMES.get(asc, "/".join(f"{b:02X}h" for b in asc)) if len(asc) == 2 else "?"
    return f"{name} sense key {key:X}h {what}"


def _cdb_name(c: bytes) -> str:
    names = {
        0x00: "TEST UNIT READY",
        0x16: "RESERVE(6)",
        0x17: "RELEASE(6)",
        0x25: "READ CAPACITY(10)",
        0x28: "READ(10)",
        0x2A: "WRITE(10)",
        0x5E: "PR IN",
    }
    return names.get(c[0], f"opcode {c[0]:#04x}")


@contextlib.asynccontextmanager
async def cluster(target: Any, scenario: str) -> AsyncIterator[Cluster]:
    """A ``Cluster`` on ``target`` (a dedicated instance or the run's target): on exit the
    shared LU is cleared, every node logged out, and the timeline kept as evidence."""
    c = Cluster(target, scenario)
    try:
        yield c
    finally:
        try:
            await c.close(clear=not isinstance(target, _dedicated_type()))
        finally:
            extra = getattr(target.evidence, "extra", None)
            if isinstance(extra, dict):
                extra.setdefault("cluster_timeline", []).append(c.timeline())


def _dedicated_type() -> type:
    from iscsi_conformance.plugin.under_test import DedicatedTarget

    return DedicatedTarget


OTHER = OTHER_INITIATOR_NAME
THIRD = "iqn.2024-01.org.iscsi-conformance:cluster-node-c"  # a third host of its own


# ====================================================================== scenarios
PR = ("persistent_reservations",)
CLUSTER_NAME = "conformance-cluster"
HELD_KEYS = [("ImmediateData", "No"), ("InitialR2T", "Yes")]
# MS-CSVP 3.2.4.16 (CprepDiskPRRegister) registers with REGISTER AND IGNORE EXISTING
# KEY, 3.4.4.11 (CprepDiskPRPreempt3) preempts with the owner's key as service action
# key, 3.2.4.22 reads READ RESERVATION; 3.2.6.1 leaves how ownership is established
# (the reservation type) implementation-specific. Windows' IOCTL offers types 1, 3, 5
# and 6: the scenario asks for Write Exclusive - Registrants Only and falls back in
# that order, recording the type the target took (facts["reservation_type"]).
WINDOWS_TYPES = (WE_RO, EA_RO, WE, EA)


#: The catalog row of a WRITE from a nexus neither holding nor registered, per type
#: (SPC-4 5.13.1): Write Exclusive, Exclusive Access, and the Registrants Only types.
_LOSER_WRITE_ROW = {
    WE: "RSPC4-5.9-4",
    EA: "RSPC4-5.9-5",
    WE_RO: "RSPC4-5.9-6",
    EA_RO: "RSPC4-5.9-6",
}


async def _windows_reserve(c: Cluster, node: Node, key: int) -> int:
    for t in WINDOWS_TYPES:
        out = await c.pr_out(node, RESERVE, key=key, pr_type=t)
        if out.status == GOOD:
            c.fact("reservation_type", t)
            return t
        if not is_illegal(out):
            c.require(
                False, "RSPC4-5.9-3", f"RESERVE type {t} by a registered node: {describe(out)}", out
            )
    pytest.skip("the target refuses every reservation type a Windows cluster may use (1, 3, 5, 6)")


async def _wins_arbitration(
    c: Cluster, winner: Node, key: int, owner: Node, owner_key: int, t: int, why: str = ""
) -> None:
    """``winner`` takes the disk from ``owner`` (MS-CSVP 3.4.4.11: PREEMPT with the
    owner's key as service action key): GOOD, and READ RESERVATION from ``owner``
    names the winner's key (``why``: what the failure adds)."""
    __tracebackhide__ = True  # a failure points at the scenario's line
    out = await c.pr_out(winner, PREEMPT, key=key, sa_key=owner_key, pr_type=t)
    c.require(
        out.status == GOOD,
        "RSPC4-5.9-7",
        f"{winner.name}'s PREEMPT of {owner.name}'s key: {describe(out)}",
        out,
    )
    info, rr = await c.read_reservation(owner)
    c.require(
        info is not None and info.key == key,
        "RSPC4-5.9-7",
        f"after {winner.name}'s PREEMPT the reservation is {info!r}{why}",
        rr,
    )
    c.event(f"{winner.name} won arbitration", winner.name)


@spec(
    "Cluster.Windows.Arbitration",
    "SPC-4 5.13.7",
    "SPC-4 5.13.9",
    "SPC-4 5.13.11.2.4",
    "SPC-4 5.13.11.2.2",
    "SPC-4 5.13.11.2.7",
    "SPC-4 5.13.11.2.3",
    requirements=[
        "RSPC4-5.13.7-3", "RSPC4-5.9-3", "RSPC4-5.9-7", "RSPC4-5.13.9-1",
        "RSPC4-5.9-8", "RSPC4-5.9-9", "RSPC4-5.13.11.2.3-1", "RSPC4-5.9-4", "RSPC4-5.9-5",
        "RSPC4-5.9-6",
    ],
    needs=PR,
    dataloss=True,
)  # fmt: skip
async def test_windows_arbitration(target: Any) -> None:
    """A Windows failover cluster's disk arbitration (MS-CSVP order): each node registers
    with REGISTER AND IGNORE EXISTING KEY, A reserves, B reads the keys and the
    reservation; B then wins the disk by PREEMPT, after which A's WRITE through the
    nexus that held the disk conflicts (SPC-4 5.13.1: A is neither holder nor
    registrant any more) and the block read from B is unchanged; A's RESERVE while B
    owns it conflicts, A wins it back; release, clear, and unregistering with REGISTER AND IGNORE EXISTING
    KEY and a zero key, which also releases a holder's reservation (SPC-4 5.13.11.2.3)."""
    ka, kb = node_key(CLUSTER_NAME, "win-a"), node_key(CLUSTER_NAME, "win-b")
    with own_lu(target) as lu:
        async with cluster(lu, "windows-arbitration") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            for n, k in ((a, ka), (b, kb)):
                out = await c.pr_out(n, REGISTER_IGNORE, sa_key=k)
                c.require(
                    out.status == GOOD,
                    "RSPC4-5.13.7-3",
                    f"{n.name}'s REGISTER AND IGNORE EXISTING KEY: {describe(out)}",
                    out,
                )
            t = await _windows_reserve(c, a, ka)
            _g, keys, rk = await c.read_keys(b)
            c.require(
                ka in keys and kb in keys,
                "RSPC4-5.13.7-3",
                f"B's READ KEYS lists {[hex(k) for k in keys]}, not both nodes' keys",
                rk,
            )
            info, rr = await c.read_reservation(b)
            c.require(
                info is not None and info.key == ka and info.pr_type == t,
                "RSPC4-5.9-3",
                f"B's READ RESERVATION: {info!r}, expected A's key {ka:#x} type {t}",
                rr,
            )
            await c.observe(b, "A owns the disk")
            # arbitration: B challenges and wins (MS-CSVP 3.4.4.11: PREEMPT, owner's key)
            await _wins_arbitration(
                c, b, kb, a, ka, t,
                " (SPC-4 5.13.11.2.4.3: the preempting nexus's reservation is established)",
            )  # fmt: skip
            before, _r = await c.read(b, LBA + 17)
            w = await c.write(a, LBA + 17, c.pattern("A-after-losing"))
            after, r = await c.read(b, LBA + 17)
            c.require(
                w.status == CONFLICT and after == before,
                _LOSER_WRITE_ROW[t],
                f"A's WRITE after B's PREEMPT removed A's registration and took the reservation: {describe(w)}; the block read from B {'is unchanged' if after == before else 'changed'} (SPC-4 5.13.1: a nexus that neither holds type {t} nor is registered shall get RESERVATION CONFLICT)",
                w,
                r,
            )
            out = await c.pr_out(a, REGISTER_IGNORE, sa_key=ka)
            c.require(
                out.status == GOOD, "RSPC4-5.13.7-3", f"A registers again: {describe(out)}", out
            )
            out = await c.pr_out(a, RESERVE, key=ka, pr_type=t)
            c.require(
                out.status == CONFLICT,
                "RSPC4-5.13.9-1",
                f"A's RESERVE while B owns the disk: {describe(out)} (SPC-4 5.13.9: RESERVATION CONFLICT)",
                out,
            )
            await c.observe(a, "B owns the disk, A registered again")
            await _wins_arbitration(c, a, ka, b, kb, t)
            await c.observe(b, "A owns the disk again")
            out = await c.pr_out(a, RELEASE, key=ka, pr_type=t)
            info, rr = await c.read_reservation(b)
            c.require(
                out.status == GOOD and info is not None and info.pr_type is None,
                "RSPC4-5.9-8",
                f"A's RELEASE: {describe(out)}; then the reservation is {info!r}",
                out,
                rr,
            )
            await c.pr_out(b, REGISTER_IGNORE, sa_key=kb)
            out = await c.pr_out(a, CLEAR, key=ka)
            _g, keys, rk = await c.read_keys(b)
            c.require(
                out.status == GOOD and not keys,
                "RSPC4-5.9-9",
                f"A's CLEAR: {describe(out)}; keys left {[hex(k) for k in keys]}",
                out,
                rk,
            )
            await c.observe(b, "cleared")
            # unregister with REGISTER AND IGNORE EXISTING KEY and a zero key; B holds first
            for n, k in ((a, ka), (b, kb)):
                await c.pr_out(n, REGISTER_IGNORE, sa_key=k)
            await c.pr_out(b, RESERVE, key=kb, pr_type=t)
            out_b = await c.pr_out(b, REGISTER_IGNORE, sa_key=0)
            info, rr = await c.read_reservation(a)
            c.require(
                out_b.status == GOOD and info is not None and info.pr_type is None,
                "RSPC4-5.13.11.2.3-1",
                f"holder B unregistered (REGISTER AND IGNORE EXISTING KEY, key 0): {describe(out_b)}; the reservation is then {info!r} (SPC-4 5.13.11.2.3: the device server shall also release a reservation of a type other than all registrants)",
                out_b,
                rr,
            )
            out_a = await c.pr_out(a, REGISTER_IGNORE, sa_key=0)
            _g, keys, rk = await c.read_keys(a)
            c.require(
                out_a.status == GOOD and not keys,
                "RSPC4-5.13.11.2.3-1",
                f"after both nodes unregistered READ KEYS lists {[hex(k) for k in keys]}",
                out_a,
                rk,
            )
            await c.observe(a, "both unregistered")


@spec(
    "Cluster.Windows.SimultaneousArbitration",
    "SPC-4 5.13.11.2.4",
    "SPC-4 5.13.11.2.5",
    requirements=["RSPC4-5.13.11.2.4-1"],
    needs=PR,
    dataloss=True,
)
async def test_windows_simultaneous_arbitration(target: Any) -> None:
    """Two nodes arbitrate at once: A (owner) and B each PREEMPT the other's key at the
    same moment. Each PREEMPT is an uninterrupted series of actions (SPC-4
    5.13.11.2.4.3), so exactly one wins: the other, from an I_T nexus whose
    registration is gone by then, gets RESERVATION CONFLICT, and the winner holds."""
    ka, kb = node_key(CLUSTER_NAME, "win-a"), node_key(CLUSTER_NAME, "win-b")
    with own_lu(target) as lu:
        async with cluster(lu, "windows-simultaneous-arbitration") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            for n, k in ((a, ka), (b, kb)):
                await c.pr_out(n, REGISTER_IGNORE, sa_key=k)
            t = await _windows_reserve(c, a, ka)
            await c.observe(a, "A owns the disk")
            c.event("A and B preempt each other at once")
            out_a, out_b = await asyncio.gather(
                c.pr_out(a, PREEMPT, key=ka, sa_key=kb, pr_type=t),
                c.pr_out(b, PREEMPT, key=kb, sa_key=ka, pr_type=t),
            )
            wins = [n for n, o in (("A", out_a), ("B", out_b)) if o.status == GOOD]
            c.require(
                len(wins) == 1,
                "RSPC4-5.13.11.2.4-1",
                f"crossing PREEMPTs: A {describe(out_a)}, B {describe(out_b)}: {len(wins)} winners, not exactly one",
                out_a,
                out_b,
            )
            winner_key = ka if wins == ["A"] else kb
            loser = out_b if wins == ["A"] else out_a
            c.require(
                loser.status == CONFLICT,
                "RSPC4-5.13.11.2.4-1",
                f"the losing PREEMPT: {describe(loser)}, not RESERVATION CONFLICT (SPC-4 5.13.7: a PERSISTENT RESERVE OUT from an unregistered I_T nexus)",
                loser,
            )
            info, rr = await c.read_reservation(a if wins == ["A"] else b)
            c.require(
                info is not None and info.key == winner_key,
                "RSPC4-5.13.11.2.4-1",
                f"after the arbitration {wins[0]} won but the reservation is {info!r}",
                rr,
            )
            c.event(f"{wins[0]} won the simultaneous arbitration", wins[0])
            await c.observe(a if wins == ["A"] else b, "after arbitration")


async def _unfence(c: Cluster, node: Node, key: int) -> None:
    """fence_scsi's unfence: register (REGISTER AND IGNORE EXISTING KEY), then reserve
    Write Exclusive - Registrants Only if the LU has no reservation yet."""
    out = await c.pr_out(node, REGISTER_IGNORE, sa_key=key)
    c.require(
        out.status == GOOD, "RSPC4-5.13.7-3", f"unfence {node.name}: register: {describe(out)}", out
    )
    info, rr = await c.read_reservation(node)
    c.require(
        info is not None,
        "RSPC4-5.9-3",
        f"unfence {node.name}: READ RESERVATION: {describe(rr)}",
        rr,
    )
    if info.pr_type is None:
        out = await c.pr_out(node, RESERVE, key=key, pr_type=WE_RO)
        c.require(
            out.status == GOOD,
            "RSPC4-5.9-3",
            f"unfence {node.name}: RESERVE Write Exclusive - Registrants Only: {describe(out)}",
            out,
        )
    c.event("unfenced", node.name)


async def _fence(c: Cluster, survivor: Node, key: int, victim_key: int) -> Any:
    """fence_scsi's fence: PREEMPT AND ABORT with the victim's key; where the target
    refuses that service action (it is optional, SPC-4 6.16.2), PREEMPT, recorded as
    the fact "fenced_with"."""
    out = await c.pr_out(survivor, PREEMPT_AND_ABORT, key=key, sa_key=victim_key, pr_type=WE_RO)
    c.fact("fenced_with", "PREEMPT AND ABORT")
    if is_illegal(out):
        c.fact("fenced_with", f"PREEMPT (PREEMPT AND ABORT refused: {describe(out)})")
        out = await c.pr_out(survivor, PREEMPT, key=key, sa_key=victim_key, pr_type=WE_RO)
    return out


@spec(
    "Cluster.Pacemaker.FenceScsi",
    "SPC-4 5.13.11.2.6",
    "SPC-4 5.13.11.2.5",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.13.11.2.5-1", "RSPC4-5.9-6"],
    needs=PR,
    dataloss=True,
)
async def test_pacemaker_fence_scsi(target: Any) -> None:
    """Pacemaker fence_scsi: keys from the cluster and node names, unfence registers and
    reserves Write Exclusive - Registrants Only; fencing B is A's PREEMPT AND ABORT with
    B's key. B's key is gone, the reservation stays as it was (B held none: SPC-4
    5.13.11.2.5 removes registrations only), B's WRITE gets RESERVATION CONFLICT (SPC-4
    5.13.1, unregistered under a registrants only type) and the block read from A is
    unchanged."""
    ka, kb = node_key(CLUSTER_NAME, "node1"), node_key(CLUSTER_NAME, "node2")
    with own_lu(target) as lu:
        async with cluster(lu, "pacemaker-fence-scsi") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            await _unfence(c, a, ka)
            await _unfence(c, b, kb)
            before = c.pattern("survivor")
            w = await c.write(a, LBA, before)
            c.require(
                w.status == GOOD,
                "RSPC4-5.9-6",
                f"A's (holder) WRITE: {describe(w)}",
                w,
                level="SHOULD",
            )
            await c.observe(a, "both unfenced")
            c.event("B fails; A fences B", "A")
            out = await _fence(c, a, ka, kb)
            c.require(
                out.status == GOOD,
                "RSPC4-5.13.11.2.5-1",
                f"A's PREEMPT AND ABORT of B's key: {describe(out)}",
                out,
            )
            st = await c.observe(a, "B fenced")
            c.require(
                kb not in st.keys and ka in st.keys,
                "RSPC4-5.13.11.2.5-1",
                f"after fencing B the keys are {[hex(k) for k in st.keys]} (SPC-4 5.13.11.2.5: the registrations of the service action key shall be removed)",
            )
            c.require(
                st.pr_type == WE_RO and st.holder_key == ka,
                "RSPC4-5.13.11.2.5-1",
                f"after fencing B the reservation is type {st.pr_type} held by {st.holder_key!r}, not A's Write Exclusive - Registrants Only (removing a registration that holds no reservation shall not affect the reservation, SPC-4 5.13.11.2.5)",
            )
            wb = await c.write(b, LBA, c.pattern("victim"))
            c.require(
                wb.status == CONFLICT,
                "RSPC4-5.9-6",
                f"fenced B's WRITE: {describe(wb)}, not RESERVATION CONFLICT (SPC-4 5.13.1: an unregistered nexus under Write Exclusive - Registrants Only)",
                wb,
            )
            data, r = await c.read(a, LBA)
            c.require(
                data == before,
                "RSPC4-5.9-6",
                "the block read from the survivor A changed after fenced B's WRITE",
                r,
            )


@spec(
    "Cluster.Pacemaker.InFlightWriteFenced",
    "SPC-4 5.13.11.2.6",
    "SPC-4 5.13.11.2.4",
    requirements=["RSPC4-5.13.11.2.6-1"],
    needs=PR,
    dataloss=True,
)
async def test_pacemaker_in_flight_write(target: Any) -> None:
    """B's WRITE is in flight (its R2T answered only after A's PREEMPT AND ABORT has been
    sent) when A fences B: the WRITE either completes before the preempt (GOOD, while
    the PREEMPT AND ABORT has not completed) or never lands: read from A, the block
    holds A's data, never B's, once the preempt has completed first (SPC-4
    5.13.11.2.6 c: B's commands shall be aborted)."""
    ka, kb = node_key(CLUSTER_NAME, "node1"), node_key(CLUSTER_NAME, "node2")
    with own_lu(target) as lu:
        async with cluster(lu, "pacemaker-in-flight-write") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER, keys=HELD_KEYS)
            await _unfence(c, a, ka)
            await _unfence(c, b, kb)
            before = c.pattern("before-fence")
            await c.write(a, LBA + 1, before)
            cmd, r2t, _got = await b.up.hold_write(c.lun, cdb.write10(LBA + 1, 1), c.block)
            if r2t is None:
                pytest.skip(
                    "B's WRITE got no R2T (ImmediateData=No, InitialR2T=Yes): no write held in flight"
                )
            c._line("B", f"WRITE(10) LBA {LBA + 1} sent, R2T received (data held back)")
            c.event("B's WRITE in flight; A fences B", "A")
            preempt = asyncio.create_task(
                c.pr_out(a, PREEMPT_AND_ABORT, key=ka, sa_key=kb, pr_type=WE_RO)
            )
            await asyncio.wait({preempt}, timeout=0.5)
            preempt_first = preempt.done()
            victim = c.pattern("victim-in-flight")
            wanted = victim[
                r2t.buffer_offset : r2t.buffer_offset + r2t.desired_data_transfer_length
            ]
            for pdu in P.data_out_pdus(
                wanted,
                r2t.buffer_offset,
                b.up.target_mrdsl,
                itt=cmd.itt,
                ttt=r2t.ttt,
                lun=cmd.lun,
                expstatsn=b.up.expstatsn,
            ):
                await b.up.send(pdu)
            c._line(
                "B",
                f"Data-Out for the in-flight WRITE sent (PREEMPT AND ABORT {'already completed' if preempt_first else 'still running'})",
            )
            out = await preempt
            if is_illegal(out):
                await b.up.drain(1.0)
                pytest.skip(f"PREEMPT AND ABORT refused ({describe(out)})")
            later = await b.up.drain(1.5)
            ends = [
                p
                for p in later
                if getattr(p, "itt", None) == cmd.itt
                and (
                    isinstance(p, P.ScsiResponse)
                    or (isinstance(p, P.ScsiDataIn) and p.status_present)
                )
            ]
            statuses = [p.status for p in ends]
            ended = [_status_text(p) for p in ends]
            c._line("B", f"in-flight WRITE ended with {ended or 'no status'}")
            data, r = await c.read(a, LBA + 1)
            landed = data == victim
            c.fact(
                "in_flight_write",
                {
                    "preempt_completed_before_data": preempt_first,
                    "write_status": statuses,
                    "write_ended_with": ended,
                    "landed": landed,
                },
            )
            c.require(
                data in (before, victim),
                "RSPC4-5.13.11.2.6-1",
                "the block read from A is neither A's data nor B's in-flight write",
                r,
            )
            c.require(
                not landed or (not preempt_first and GOOD in statuses),
                "RSPC4-5.13.11.2.6-1",
                f"fenced B's in-flight WRITE landed on disk although the PREEMPT AND ABORT had completed before its data was sent (WRITE status {statuses}); it shall be aborted (SPC-4 5.13.11.2.6 c)",
                r,
            )
            c.require(
                landed or GOOD not in statuses,
                "RSPC4-5.13.11.2.6-1",
                "B's in-flight WRITE completed with GOOD but the block does not hold its data",
                r,
            )
            c.require(
                not preempt_first or all(st == TASK_ABORTED for st in statuses),
                "RSPC4-5.13.11.2.6-1",
                f"fenced B's in-flight WRITE ended with {ended} after the PREEMPT AND ABORT had completed: an aborted command gets no status, or TASK ABORTED where TAS is one (SPC-4 5.13.11.2.6 c, 5.13.11.2.4.3)",
                r,
            )


@spec(
    "Cluster.Restart.NewIsid",
    "SPC-4 5.13.1",
    "SPC-4 5.13.6.4",
    "SPC-4 5.13.11.2.4",
    requirements=[
        "RSPC4-5.9-11",
        "RSPC4-5.13.6-2",
        "RSPC4-5.9-1",
        "RSPC4-5.13.7-3",
        "RSPC4-5.9-7",
        "RSPC4-5.9-6",
    ],
    needs=PR,
    dataloss=True,
)
async def test_restart_new_isid(target: Any) -> None:
    """A node restarts and comes back with a new ISID: its registration belongs to an I_T
    nexus that is gone. READ FULL STATUS still lists the old nexus (registrations
    survive the loss of an I_T nexus); the new nexus is unregistered, so its WRITE under
    Write Exclusive - Registrants Only conflicts; it registers again (REGISTER, then
    REGISTER AND IGNORE EXISTING KEY), waits for TEST UNIT READY and its key, then
    brings the disk online by preempting its own stale registration (SPC-4
    5.13.11.2.4.3) and writes."""
    ka, kb = node_key(CLUSTER_NAME, "node1"), node_key(CLUSTER_NAME, "node2")
    with own_lu(target) as lu:
        async with cluster(lu, "restart-new-isid") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            await _unfence(c, a, ka)
            await _unfence(c, b, kb)
            old_isid = a.isid
            await c.leave(a, "drop")
            c.event("A restarts", "A")
            a = await c.join("A", isid=random_isid())
            st = await c.observe(b, "A back with a new ISID")
            c.require(
                ka in st.keys,
                "RSPC4-5.13.6-2",
                f"after A's I_T nexus was lost the keys are {[hex(k) for k in st.keys]}: A's registration did not survive (registrations persist across I_T nexus loss, SPC-4 5.13.1)",
            )
            if st.full is not None:
                stale = [d for d in st.full if d.key == ka]
                c.fact("stale_nexus", [d.transport_id for d in stale])
                c.require(
                    any(
                        f"{old_isid:012x}" in d.transport_id.lower()
                        or ",i," not in d.transport_id.lower()
                        for d in stale
                    ),
                    "RSPC4-5.13.6-2",
                    f"READ FULL STATUS names A's registration {[d.transport_id for d in stale]}, not the old I_T nexus (ISID {old_isid:012x})",
                )
            w = await c.write(a, LBA + 2, c.pattern("new-nexus-unregistered"))
            c.require(
                w.status == CONFLICT,
                "RSPC4-5.9-11",
                f"A's WRITE from the new, unregistered nexus: {describe(w)} (SPC-4 5.13.1: the registration belongs to the old I_T nexus)",
                w,
            )
            out = await c.pr_out(a, REGISTER, sa_key=ka)
            c.require(
                out.status == GOOD,
                "RSPC4-5.9-1",
                f"A registers from the new nexus: {describe(out)}",
                out,
            )
            out = await c.pr_out(a, REGISTER_IGNORE, sa_key=ka)
            c.require(
                out.status == GOOD,
                "RSPC4-5.13.7-3",
                f"REGISTER AND IGNORE EXISTING KEY from the new nexus: {describe(out)}",
                out,
            )
            tur = await c.command(a, cdb.test_unit_ready())
            _g, keys, rk = await c.read_keys(a)
            c.require(
                tur.status == GOOD and ka in keys,
                "RSPC4-5.13.7-3",
                f"bring online: TEST UNIT READY {describe(tur)}, keys {[hex(k) for k in keys]}",
                tur,
                rk,
            )
            out = await c.pr_out(a, PREEMPT, key=ka, sa_key=ka, pr_type=WE_RO)
            c.require(
                out.status == GOOD,
                "RSPC4-5.9-7",
                f"A preempts its own stale registration: {describe(out)}",
                out,
            )
            st = await c.observe(a, "A online again")
            c.require(
                st.keys.count(ka) == 1 and st.holder_key == ka,
                "RSPC4-5.9-7",
                f"after A's PREEMPT of its own key: keys {[hex(k) for k in st.keys]}, holder {st.holder_key!r} (the stale registration shall be removed, the new nexus holds)",
            )
            w = await c.write(a, LBA + 2, c.pattern("online"))
            c.require(
                w.status == GOOD,
                "RSPC4-5.9-6",
                f"A's WRITE once online: {describe(w)}",
                w,
                level="SHOULD",
            )


@spec(
    "Cluster.Restart.SameIsid",
    "SPC-4 5.13.1",
    "SPC-4 5.13.9",
    requirements=["RSPC4-5.13.6-2", "RSPC4-5.9-3", "RSPC4-5.9-6"],
    needs=PR,
    dataloss=True,
)
async def test_restart_same_isid(target: Any) -> None:
    """A node restarts and logs in again with the SAME ISID, as an initiator with a
    fixed initiator port does (and libiscsi's iscsi-pr, one login per command): the
    same initiator port through the same target port is the same I_T nexus, so the
    registration it made before is still its own. It RESERVEs with its key, which
    only a registered nexus may (SPC-4 5.13.9; RESERVATION CONFLICT here means the
    target tied the registration to the session, not to the I_T nexus), and writes
    under its Write Exclusive - Registrants Only reservation."""
    ka, kb = node_key(CLUSTER_NAME, "node1"), node_key(CLUSTER_NAME, "node2")
    with own_lu(target) as lu:
        async with cluster(lu, "restart-same-isid") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            for n, k in ((a, ka), (b, kb)):
                out = await c.pr_out(n, REGISTER_IGNORE, sa_key=k)
                c.require(
                    out.status == GOOD,
                    "RSPC4-5.13.7-3",
                    f"{n.name} registers: {describe(out)}",
                    out,
                )
            isid = a.isid
            await c.leave(a, "logout")
            c.event("A restarts, same ISID", "A")
            a = await c.join("A", isid=isid)
            st = await c.observe(b, "A back with the same ISID")
            c.require(
                ka in st.keys,
                "RSPC4-5.13.6-2",
                f"after A's logout the keys are {[hex(k) for k in st.keys]}: A's registration did not outlive its session (SPC-4 5.13.1)",
            )
            tur = await c.command(a, cdb.test_unit_ready())  # a unit attention, if any
            out = await c.pr_out(a, RESERVE, key=ka, pr_type=WE_RO)
            c.require(
                out.status == GOOD,
                "RSPC4-5.9-3",
                f"A's RESERVE with its own key from the same I_T nexus (initiator port ISID 0x{isid:012x}) after a new login: {describe(out)}; TEST UNIT READY before it: {describe(tur)}",
                out,
            )
            st = await c.observe(b, "A holds")
            c.require(
                st.holder_key == ka and st.pr_type == WE_RO,
                "RSPC4-5.9-3",
                f"READ RESERVATION after A's RESERVE: holder {st.holder_key!r} type {st.pr_type}",
            )
            w = await c.write(a, LBA + 4, c.pattern("same-isid"))
            c.require(
                w.status == GOOD,
                "RSPC4-5.9-6",
                f"holder A's WRITE: {describe(w)}",
                w,
                level="SHOULD",
            )


SCSI2 = ("reservations_scsi2",)


async def _scsi2_held(c: Cluster) -> tuple[Node, Node]:
    a = await c.join("A")
    b = await c.join("B", initiator=OTHER)
    res = await c.command(a, cdb.reserve6())
    c.require(res.status == GOOD, "RSPC2-5.5.1-1", f"A's RESERVE(6): {describe(res)}", res)
    r = await c.command(b, cdb.read10(LBA, 1), read_length=c.block)
    c.require(
        r.status == CONFLICT,
        "RSPC2-5.5.1-1",
        f"B's READ while A holds the SCSI-2 reservation: {describe(r)}",
        r,
    )
    c.event("A holds the SCSI-2 reservation", "A")
    return a, b


async def _scsi2_free(c: Cluster, b: Node, requirement: str, why: str, settle: float = 0.0) -> None:
    """B's READ completes: the SCSI-2 reservation is gone. With ``settle`` B retries a
    conflicting READ for that many seconds, as a cluster node would, while a target
    ends a logged-out session after its Logout Response."""
    deadline = time.monotonic() + settle
    r = await c.command(b, cdb.read10(LBA, 1), read_length=c.block)
    while r.status == CONFLICT and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        r = await c.command(b, cdb.read10(LBA, 1), read_length=c.block)
    c.require(
        r.status == GOOD,
        requirement,
        f"B's READ after {why}: {describe(r)}: the SCSI-2 reservation was not released",
        r,
    )


@spec(
    "Cluster.Scsi2.ReleaseByHolderOnly",
    "SPC-2 5.5.1",
    requirements=["RSPC2-5.5.1-1", "RSPC2-5.5.1-3"],
    needs=SCSI2,
    dataloss=True,
)
async def test_scsi2_release_by_holder_only(target: Any) -> None:
    """A legacy two-node cluster: A holds RESERVE(6), B's READ conflicts. B's RELEASE(6)
    completes with GOOD and releases nothing (only the holder releases); A's RELEASE
    frees the LU for B."""
    with own_lu(target) as lu:
        async with cluster(lu, "scsi2-release-by-holder-only") as c:
            a, b = await _scsi2_held(c)
            rel = await c.command(b, cdb.release6())
            r = await c.command(b, cdb.read10(LBA, 1), read_length=c.block)
            c.require(
                r.status == CONFLICT,
                "RSPC2-5.5.1-1",
                f"after non-holder B's RELEASE(6) ({describe(rel)}) B's READ: {describe(r)}: a RELEASE from another nexus released A's reservation",
                rel,
                r,
            )
            c.require(
                rel.status == GOOD,
                "RSPC2-5.5.1-3",
                f"non-holder B's RELEASE(6): {describe(rel)}, not GOOD",
                rel,
            )
            rel = await c.command(a, cdb.release6())
            c.require(
                rel.status == GOOD, "RSPC2-5.5.1-1", f"holder A's RELEASE(6): {describe(rel)}", rel
            )
            await _scsi2_free(c, b, "RSPC2-5.5.1-1", "A's RELEASE(6)")


#: What each way of ending A's hold is judged by. A LOGICAL UNIT RESET is SAM-2's logical
#: unit reset (RFC 7143 11.5.1, MUST), which releases every RESERVE/RELEASE reservation
#: (SAM-2 5.9.7, shall); a TARGET WARM RESET is SAM-2's TARGET RESET (RFC 7143 11.5.1),
#: which performs a logical unit reset. A logout is left open: SPC-2 sets no rule for
#: reserve/release state when an I_T nexus ends (RFC 7143 4.4.3.2), so it is observed.
_SCSI2_CLEARED = {
    "lun-reset": "RSAM2-5.9.7-1",
    "target-reset": "RSAM2-5.9.7-2",
    "logout": "RSPC2-5.5.1-4",
}


@pytest.mark.parametrize("how", ["lun-reset", "logout", "target-reset"])
@spec(
    "Cluster.Scsi2.Cleared",
    "SAM-2 5.9.7",
    ("SPC-2", "5.5.1", "INFORMATIONAL", "target"),
    requirements=["RSAM2-5.9.7-1", "RSAM2-5.9.7-2", "RSPC2-5.5.1-4"],
    needs=SCSI2,
    dataloss=True,
)
async def test_scsi2_cleared(target: Any, how: str) -> None:
    """A's SCSI-2 reservation is released by a LOGICAL UNIT RESET from B (SAM-2 5.9.7
    through RFC 7143 11.5.1: MUST) and by a TARGET WARM RESET from B that the target
    performs (SAM-2's TARGET RESET: MUST; a target that does not perform it skips):
    B's READ then completes. A's logout is observed (informational, RSPC2-5.5.1-4)."""
    requirement = _SCSI2_CLEARED[how]
    with own_lu(target) as lu:
        async with cluster(lu, f"scsi2-cleared-{how}") as c:
            a, b = await _scsi2_held(c)
            if how in ("lun-reset", "target-reset"):
                fn = LOGICAL_UNIT_RESET if how == "lun-reset" else TARGET_WARM_RESET
                resp = await c.tmf(b, fn)
                if isinstance(resp, P.TaskManagementResponse) and resp.response in (2, 5, 6, 255):
                    # RFC 7143 11.6.1: 2 LUN does not exist, 5 function not supported,
                    # 6 function authorization failed, 255 function rejected
                    pytest.skip(f"{how} not performed (TMF response {resp.response})")
                c.require(
                    isinstance(resp, P.TaskManagementResponse) and resp.response == 0,
                    requirement,
                    f"B's {how}: {resp!r}",
                )
            else:
                await c.leave(a, "logout")
            await _scsi2_free(c, b, requirement, how, settle=2.0 if how == "logout" else 0.0)


@spec(
    "Cluster.Scsi2.KeptAcrossReinstatement",
    ("RFC 7143", "4.4.3.2", "INFORMATIONAL", "target"),
    requirements=["R7143-4.4.3.2-1"],
    needs=SCSI2,
    dataloss=True,
)
async def test_scsi2_kept_across_reinstatement(target: Any) -> None:
    """A's connection drops (an I_T nexus failure) and A logs in again with its ISID,
    which reinstates the session (RFC 7143 6.3.5). RFC 7143 4.4.3.2 names keeping the
    reserve/release reservation across reinstatement the preferred approach (no
    keyword; SPC-2 sets no rule), so B's READ still conflicting is what is expected,
    and a released reservation is recorded (informational)."""
    with own_lu(target) as lu:
        async with cluster(lu, "scsi2-kept-across-reinstatement") as c:
            a, b = await _scsi2_held(c)
            await c.leave(a, "drop")
            a = await c.join("A", isid=a.isid)
            r = await c.command(b, cdb.read10(LBA, 1), read_length=c.block)
            c.require(
                r.status == CONFLICT,
                "R7143-4.4.3.2-1",
                f"B's READ after A's session was reinstated: {describe(r)}: the SCSI-2 "
                "reservation was not kept (RFC 7143 4.4.3.2 prefers keeping it, no keyword)",
                r,
            )
            rel = await c.command(a, cdb.release6())
            c.event(f"A's RELEASE(6) after the test: {describe(rel)}", "A")


@spec(
    "Cluster.Persistent.AptplAcrossRestart",
    "SPC-4 5.13.5",
    requirements=["RSPC4-5.9-10"],
    needs=PR,
    dataloss=True,
)
async def test_aptpl_across_restart(target: Any) -> None:
    """Two nodes register with APTPL=1, A reserves Write Exclusive - Registrants Only; the
    target restarts (power cycle, state kept). Both keys and A's reservation are there
    afterwards, B (registered) may still write and a third, unregistered nexus may not
    (SPC-4 5.13.5.1). The target is the test's own (``target.power_cyclable()``): the
    reference target's dedicated instance restarted, or on LIO (tox -e cluster) a target
    and backstore of its own whose device is freed and made again from its medium and
    the APTPL file LIO wrote, as at boot; others skip naming ``dedicated_instance``."""
    ka, kb = node_key(CLUSTER_NAME, "node1"), node_key(CLUSTER_NAME, "node2")
    with target.power_cyclable() as lu:
        async with cluster(lu, "aptpl-across-restart") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            for n, k in ((a, ka), (b, kb)):
                out = await c.pr_out(n, REGISTER, sa_key=k, aptpl=True)
                if is_illegal(out):
                    pytest.skip(f"REGISTER with APTPL=1 refused: {describe(out)}")
            await c.pr_out(a, RESERVE, key=ka, pr_type=WE_RO)
            await c.observe(a, "before the restart")
            isids = (a.isid, b.isid)
            await c.leave(a)
            await c.leave(b)
            lu.restart()
            c.event("target restarted (power cycle)")
            a = await c.join("A", isid=isids[0])
            b = await c.join("B", isid=isids[1])
            st = await c.observe(b, "after the restart")
            c.require(
                ka in st.keys and kb in st.keys and st.holder_key == ka and st.pr_type == WE_RO,
                "RSPC4-5.9-10",
                f"after the restart: keys {[hex(k) for k in st.keys]}, holder {st.holder_key!r} type {st.pr_type} (SPC-4 5.13.5.1: with APTPL the registrations and the reservation shall be preserved)",
            )
            w = await c.write(b, LBA + 3, c.pattern("after-restart"))
            c.require(
                w.status == GOOD,
                "RSPC4-5.9-6",
                f"registered B's WRITE after the restart: {describe(w)}",
                w,
                level="SHOULD",
            )
            x = await c.join("X")
            w = await c.write(x, LBA + 3, c.pattern("intruder"))
            c.require(
                w.status == CONFLICT,
                "RSPC4-5.9-10",
                f"an unregistered nexus's WRITE after the restart: {describe(w)}",
                w,
            )


@spec(
    "Cluster.Persistent.AllTgPtTwoPortals",
    "SPC-4 5.13.7",
    requirements=["RSPC4-5.13.7-4"],
    needs=PR,
    dataloss=True,
)
async def test_all_tg_pt_two_portals(target: Any) -> None:
    """A registers with ALL_TG_PT=1 through portal group 1: the same initiator port
    through portal group 2 is registered too (SPC-4 5.13.7 table 69), so it may
    RESERVE with A's key, and READ FULL STATUS marks the registration ALL_TG_PT."""
    ka = node_key(CLUSTER_NAME, "node1")
    with target.power_cyclable(portal_groups=2) as lu:
        async with cluster(lu, "all-tg-pt-two-portals") as c:
            a = await c.join("A")
            a2 = await c.join("A@port2", initiator=a.initiator, isid=a.isid, profile="port-2")
            out = await c.pr_out(a, REGISTER, sa_key=ka, all_tg_pt=True)
            if is_illegal(out):
                pytest.skip(f"ALL_TG_PT=1 refused: {describe(out)}")
            res = await c.pr_out(a2, RESERVE, key=ka, pr_type=WE_RO)
            c.require(
                res.status == GOOD,
                "RSPC4-5.13.7-4",
                f"RESERVE through portal group 2 with the key registered with ALL_TG_PT=1 through group 1: {describe(res)}",
                out,
                res,
            )
            st = await c.observe(a2, "registered on all target ports")
            if st.full is not None:
                c.require(
                    any(d.key == ka and d.all_tg_pt for d in st.full),
                    "RSPC4-5.13.7-4",
                    f"READ FULL STATUS: {st.full!r}, no ALL_TG_PT registration",
                )


async def _relative_port(c: Cluster, node: Node) -> int | None:
    out = await c.command(
        node, cdb.inquiry(evpd=True, page=0x83), what="INQUIRY VPD 83h", read_length=255
    )
    if out.status != GOOD:
        return None
    for d in cdb.parse_vpd_83(out.data):
        if d.designator_type == 4 and d.association == 1 and len(d.designator) >= 4:
            return int.from_bytes(d.designator[2:4], "big")
    return None


@spec(
    "Cluster.Persistent.RegisterAndMoveFailover",
    "SPC-4 5.13.8",
    requirements=["RSPC4-5.13.8-1"],
    needs=PR,
    dataloss=True,
)
async def test_register_and_move_failover(target: Any) -> None:
    """A planned failover by REGISTER AND MOVE with UNREG=1: holder A hands its Write
    Exclusive - Registrants Only reservation to B's I_T nexus under B's new key and
    unregisters; B holds and writes, A's WRITE conflicts."""
    ka, kb = node_key(CLUSTER_NAME, "node1"), node_key(CLUSTER_NAME, "node2")
    with own_lu(target) as lu:
        async with cluster(lu, "register-and-move") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            rtp = await _relative_port(c, a)
            if rtp is None:
                pytest.skip("VPD page 83h reports no relative target port designator")
            await c.pr_out(a, REGISTER, sa_key=ka)
            await c.pr_out(a, RESERVE, key=ka, pr_type=WE_RO)
            params = cdb.register_and_move_parameters(ka, kb, rtp, b.port, unreg=True)
            out = await c.command(
                a,
                cdb.persistent_reserve_out(REGISTER_AND_MOVE, 0, WE_RO, len(params)),
                what=f"PR OUT REGISTER AND MOVE to B ({b.port}) UNREG",
                data_out=params,
            )
            if is_illegal(out):
                pytest.skip(f"REGISTER AND MOVE refused: {describe(out)}")
            c.require(
                out.status == GOOD,
                "RSPC4-5.13.8-1",
                f"REGISTER AND MOVE by the holder: {describe(out)}",
                out,
            )
            c.keys.pop("A", None)
            c.keys["B"] = kb
            c.event("reservation moved to B", "B")
            st = await c.observe(b, "after REGISTER AND MOVE")
            c.require(
                st.holder_key == kb and st.pr_type == WE_RO and ka not in st.keys,
                "RSPC4-5.13.8-1",
                f"after REGISTER AND MOVE (UNREG=1): keys {[hex(k) for k in st.keys]}, holder {st.holder_key!r} type {st.pr_type}",
            )
            wb = await c.write(b, LBA + 4, c.pattern("moved"))
            wa = await c.write(a, LBA + 4, c.pattern("old-owner"))
            c.require(
                wb.status == GOOD and wa.status == CONFLICT,
                "RSPC4-5.13.8-1",
                f"after the move B's WRITE {describe(wb)}, unregistered A's WRITE {describe(wa)}",
                wb,
                wa,
            )


@spec(
    "Cluster.Persistent.SpecIPt",
    "SPC-4 5.13.7",
    requirements=["RSPC4-5.13.7-5"],
    needs=PR,
    dataloss=True,
)
async def test_spec_i_pt(target: Any) -> None:
    """A registers with SPEC_I_PT=1 naming B's initiator port (iSCSI TransportID with B's
    ISID): B's nexus is registered with A's key too, so B may RESERVE with it (SPC-4
    5.13.7: a registration for each specified I_T nexus)."""
    ka = node_key(CLUSTER_NAME, "node1")
    with own_lu(target) as lu:
        async with cluster(lu, "spec-i-pt") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            out = await c.pr_out(a, REGISTER, sa_key=ka, spec_i_pt=True, transport_ids=[b.port])
            if is_illegal(out):
                pytest.skip(f"SPEC_I_PT refused: {describe(out)}")
            c.require(
                out.status == GOOD,
                "RSPC4-5.13.7-5",
                f"REGISTER with SPEC_I_PT naming B: {describe(out)}",
                out,
            )
            c.keys["B"] = ka
            st = await c.observe(b, "after SPEC_I_PT")
            c.require(
                st.keys.count(ka) >= 2,
                "RSPC4-5.13.7-5",
                f"after REGISTER with SPEC_I_PT naming B the keys are {[hex(k) for k in st.keys]}: B's nexus is not registered",
            )
            res = await c.pr_out(b, RESERVE, key=ka, pr_type=WE)
            c.require(
                res.status == GOOD,
                "RSPC4-5.13.7-5",
                f"B's RESERVE with the key A registered for it: {describe(res)}",
                res,
            )


@spec(
    "Cluster.Persistent.Generation",
    "SPC-4 6.16.2",
    requirements=["RSPC4-6.16.2-1"],
    needs=PR,
    dataloss=True,
)
async def test_generation(target: Any) -> None:
    """PRgeneration through a failover: REGISTER, PREEMPT and CLEAR increment it, RESERVE
    and RELEASE leave it (SPC-4 6.16.2 table 213)."""
    ka, kb = node_key(CLUSTER_NAME, "node1"), node_key(CLUSTER_NAME, "node2")
    with own_lu(target) as lu:
        async with cluster(lu, "generation") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            steps = [
                (a, REGISTER, {"sa_key": ka}, 1),
                (b, REGISTER, {"sa_key": kb}, 1),
                (a, RESERVE, {"key": ka, "pr_type": WE_RO}, 0),
                (b, PREEMPT, {"key": kb, "sa_key": ka, "pr_type": WE_RO}, 1),
                (b, RELEASE, {"key": kb, "pr_type": WE_RO}, 0),
                (b, CLEAR, {"key": kb}, 1),
            ]
            gen, _k, rk = await c.read_keys(a)
            for node, sa, kw, inc in steps:
                out = await c.pr_out(node, sa, **kw)
                c.require(
                    out.status == GOOD, "RSPC4-6.16.2-1", f"{SA_NAMES[sa]}: {describe(out)}", out
                )
                new, _k, rk = await c.read_keys(a)
                c.require(
                    gen is not None and new == (gen + inc) & 0xFFFFFFFF,
                    "RSPC4-6.16.2-1",
                    f"PRgeneration {gen} -> {new} after {SA_NAMES[sa]} (SPC-4 6.16.2 table 213: {'incremented' if inc else 'not incremented'})",
                    out,
                    rk,
                )
                gen = new


@spec(
    "Cluster.Persistent.UnitAttentionsToNamedNexuses",
    "SPC-4 5.13.11.2.4",
    "SPC-4 5.13.11.2.2",
    "SPC-4 5.13.11.2.7",
    requirements=["RSPC4-5.13.11-1"],
    needs=PR,
    dataloss=True,
)
async def test_unit_attentions_named_nexuses(target: Any) -> None:
    """Three registered nodes, A holds Write Exclusive - Registrants Only. B preempts A
    (same type): A alone gets REGISTRATIONS PREEMPTED; B releases: A (registered again)
    and C get RESERVATIONS RELEASED, B nothing; B clears: A and C get RESERVATIONS
    PREEMPTED, B nothing (SPC-4 5.13.11.2.4.3 e/f, 5.13.11.2.2 c, 5.13.11.2.7 e)."""
    k = {n: node_key(CLUSTER_NAME, n) for n in "ABC"}
    with own_lu(target) as lu:
        async with cluster(lu, "unit-attentions") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            cc = await c.join("C", initiator=THIRD)
            nodes = {"A": a, "B": b, "C": cc}
            for name, n in nodes.items():
                await c.pr_out(n, REGISTER, sa_key=k[name])
            await c.pr_out(a, RESERVE, key=k["A"], pr_type=WE_RO)
            for n in nodes.values():
                await c.unit_attentions(n)

            wrong: list[str] = []

            async def check(step: str, expected: dict[str, tuple[int, int] | None]) -> None:
                for name, want in expected.items():
                    seen = await c.unit_attentions(nodes[name])
                    pr_uas = [u for u in seen if u[0] == 0x2A and u[1] in (3, 4, 5)]
                    if not ((want in seen) if want else not pr_uas):
                        wrong.append(
                            f"after {step} node {name} saw {[ASC_NAMES.get(u, u) for u in seen]}, "
                            f"expected {ASC_NAMES.get(want, want) if want else 'no reservation UA'}"
                        )

            out = await c.pr_out(b, PREEMPT, key=k["B"], sa_key=k["A"], pr_type=WE_RO)
            c.require(out.status == GOOD, "RSPC4-5.9-7", f"B's PREEMPT: {describe(out)}", out)
            await check(
                "B's PREEMPT of A (type unchanged)",
                {"A": REGISTRATIONS_PREEMPTED, "B": None, "C": None},
            )
            await c.pr_out(a, REGISTER, sa_key=k["A"])
            out = await c.pr_out(b, RELEASE, key=k["B"], pr_type=WE_RO)
            c.require(out.status == GOOD, "RSPC4-5.9-8", f"B's RELEASE: {describe(out)}", out)
            await check(
                "B's RELEASE (Registrants Only)",
                {"A": RESERVATIONS_RELEASED, "B": None, "C": RESERVATIONS_RELEASED},
            )
            out = await c.pr_out(b, CLEAR, key=k["B"])
            c.require(out.status == GOOD, "RSPC4-5.9-9", f"B's CLEAR: {describe(out)}", out)
            await check(
                "B's CLEAR", {"A": RESERVATIONS_PREEMPTED, "B": None, "C": RESERVATIONS_PREEMPTED}
            )
            c.require(
                not wrong,
                "RSPC4-5.13.11-1",
                "unit attentions not as SPC-4 5.13.11 names them: " + "; ".join(wrong),
            )


@spec(
    "Cluster.AllRegistrants.HolderLeaves",
    "SPC-4 5.13.11.2.3",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.13.11.2.3-2", "RSPC4-5.9-6"],
    needs=PR,
    dataloss=True,
)
async def test_all_registrants_holder_leaves(target: Any) -> None:
    """Three nodes share a Write Exclusive - All Registrants reservation (every
    registrant holds it). A node leaves the cluster (REGISTER AND IGNORE EXISTING KEY,
    key 0): the reservation stays with the others, who still write, while the node
    that left is refused; when the last registrant leaves, the reservation is
    released (SPC-4 5.13.11.2.3, table 71)."""
    k = {n: node_key(CLUSTER_NAME, f"ar-{n}") for n in "ABC"}
    with own_lu(target) as lu:
        async with cluster(lu, "all-registrants-holder-leaves") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            cc = await c.join("C", initiator=THIRD)
            nodes = {"A": a, "B": b, "C": cc}
            for name, n in nodes.items():
                await c.pr_out(n, REGISTER_IGNORE, sa_key=k[name])
            out = await c.pr_out(a, RESERVE, key=k["A"], pr_type=WE_AR)
            if is_illegal(out):
                pytest.skip(f"Write Exclusive - All Registrants refused: {describe(out)}")
            c.require(
                out.status == GOOD, "RSPC4-5.9-3", f"A's RESERVE type 7: {describe(out)}", out
            )
            await c.observe(b, "all three hold")
            out = await c.pr_out(a, REGISTER_IGNORE, sa_key=0)
            c.event("A leaves the cluster", "A")
            info, rr = await c.read_reservation(b)
            c.require(
                out.status == GOOD and info is not None and info.pr_type == WE_AR,
                "RSPC4-5.13.11.2.3-2",
                f"after A unregistered ({describe(out)}) the reservation is {info!r}: an all registrants reservation shall be released only when the last registration is removed (SPC-4 table 71)",
                out,
                rr,
            )
            await c.observe(b, "A left")
            wb = await c.write(b, LBA + 8, c.pattern("B"))
            wa = await c.write(a, LBA + 8, c.pattern("A-left"))
            c.require(
                wa.status == CONFLICT,
                "RSPC4-5.9-6",
                f"A's WRITE after it left: {describe(wa)} (SPC-4 5.13.1: an unregistered nexus under Write Exclusive - All Registrants)",
                wa,
            )
            c.require(
                wb.status == GOOD,
                "RSPC4-5.9-6",
                f"registrant B's WRITE after A left: {describe(wb)}",
                wb,
                level="SHOULD",
            )
            await c.pr_out(b, REGISTER_IGNORE, sa_key=0)
            c.event("B leaves the cluster", "B")
            info, rr = await c.read_reservation(cc)
            c.require(
                info is not None and info.pr_type == WE_AR,
                "RSPC4-5.13.11.2.3-2",
                f"with C still registered the reservation is {info!r}",
                rr,
            )
            out = await c.pr_out(cc, REGISTER_IGNORE, sa_key=0)
            c.event("C, the last registrant, leaves", "C")
            info, rr = await c.read_reservation(cc)
            c.require(
                out.status == GOOD and info is not None and info.pr_type is None,
                "RSPC4-5.13.11.2.3-2",
                f"after the last registrant unregistered ({describe(out)}) the reservation is {info!r}: it shall be released (SPC-4 5.13.11.2.3)",
                out,
                rr,
            )
            await c.observe(cc, "nobody registered")


@spec(
    "Cluster.ThreeNodes.FailFenceRejoin",
    "SPC-4 5.13.11.2.6",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.13.11.2.5-1", "RSPC4-5.9-6"],
    needs=PR,
    dataloss=True,
)
async def test_three_nodes(target: Any) -> None:
    """Three fence_scsi nodes: B fails (its connection drops), A fences it with PREEMPT
    AND ABORT, C keeps writing and reading throughout, and B, restarted with a new
    ISID, is refused until it unfences (registers) again."""
    k = {n: node_key(CLUSTER_NAME, f"node-{n}") for n in "ABC"}
    with own_lu(target) as lu:
        async with cluster(lu, "three-nodes") as c:
            a = await c.join("A")
            b = await c.join("B", initiator=OTHER)
            cc = await c.join("C", initiator=THIRD)
            for name, n in (("A", a), ("B", b), ("C", cc)):
                await _unfence(c, n, k[name])
            mine = c.pattern("node-C")
            w = await c.write(cc, LBA + 5, mine)
            c.require(
                w.status == GOOD,
                "RSPC4-5.9-6",
                f"registered C's WRITE: {describe(w)}",
                w,
                level="SHOULD",
            )
            await c.observe(a, "three nodes unfenced")
            await c.leave(b, "drop")
            out = await _fence(c, a, k["A"], k["B"])
            c.event("A fenced B", "A")
            st = await c.observe(cc, "B fenced")
            c.require(
                out.status == GOOD
                and k["B"] not in st.keys
                and k["C"] in st.keys
                and st.holder_key == k["A"],
                "RSPC4-5.13.11.2.5-1",
                f"fencing B: {describe(out)}; keys {[hex(x) for x in st.keys]}, holder {st.holder_key!r}",
                out,
            )
            w = await c.write(cc, LBA + 5, mine)
            data, r = await c.read(cc, LBA + 5)
            c.require(
                w.status == GOOD and data == mine,
                "RSPC4-5.9-6",
                f"C keeps its access after B was fenced: WRITE {describe(w)}, READ back {'same' if data == mine else describe(r)}",
                w,
                r,
                level="SHOULD",
            )
            b = await c.join("B", isid=random_isid())
            c.event("B rejoins after a restart", "B")
            w = await c.write(b, LBA + 6, c.pattern("B-before-unfence"))
            c.require(
                w.status == CONFLICT,
                "RSPC4-5.9-6",
                f"rejoined B's WRITE before it unfences: {describe(w)}",
                w,
            )
            await _unfence(c, b, k["B"])
            w = await c.write(b, LBA + 6, c.pattern("B-unfenced"))
            c.require(
                w.status == GOOD,
                "RSPC4-5.9-6",
                f"B's WRITE after unfencing: {describe(w)}",
                w,
                level="SHOULD",
            )
            data, r = await c.read(a, LBA + 5)
            c.require(
                data == mine, "RSPC4-5.9-6", "C's block changed while B was fenced and rejoined", r
            )
            await c.observe(a, "B back")


# ====================================================================== mixed nodes
def _record_command(c: Cluster, node: str, what: str, status: str) -> None:
    """A third-party node's command into the scenario's sequence and timeline."""
    c._line(node, f"{what} -> {status}")
    c.events.append({"t": c._t(), "node": node, "kind": "command", "what": what, "status": status})


def _listed_keys(text: str) -> list[int]:
    """The keys a READ KEYS printed, one ``    0x...`` line each (sg_persist, iscsi-pr)."""
    return [int(k, 16) for k in re.findall(r"^\s+(0x[0-9a-fA-F]+)\s*$", text, re.M)]


class ThirdPartyNode:
    """A cluster node that is a third-party initiator, driven through its driver's
    persistent reservation tools (open-iscsi: ``sg_persist`` and ``dd`` over the
    kernel's block device in its micro-VM; libiscsi: our ``iscsi-pr`` on libiscsi's
    API, one login per command through the node's fixed ISID); its commands land in
    the scenario's command sequence and timeline like a reference node's."""

    def __init__(self, c: Cluster, name: str, initiator: Any, session: Any) -> None:
        self.c, self.name, self.initiator, self.session = c, name, initiator, session
        self.driver = initiator.driver
        self.tool = "iscsi-pr" if hasattr(self.driver, "node_login") else "sg_persist"

    def tur(self) -> str:
        """TEST UNIT READY: GOOD, or the tool's exit status."""
        if hasattr(self.driver, "test_unit_ready"):
            res = self.driver.test_unit_ready(self.session, self.c.lun)
            tool = "iscsi-pr tur"
        else:
            res = self.driver.sg(self.session, self.c.lun, "sg_turs")
            tool = "sg_turs"
        status = "GOOD" if res.returncode == 0 else f"{tool} exit {res.returncode}"
        self._record(f"{tool} (TEST UNIT READY)", status)
        return status

    def _record(self, what: str, status: str) -> None:
        _record_command(self.c, self.name, what, status)

    def pr_out(self, action: str, *, key: int = 0, sa_key: int = 0, pr_type: int = 0) -> str:
        """``sg_persist --out`` / ``iscsi-pr out``: GOOD, RESERVATION CONFLICT (exit 24)
        or what it printed."""
        res = self.driver.persistent_reserve_out(
            self.session, self.c.lun, action, key=key, sa_key=sa_key, prout_type=pr_type
        )
        status = {0: "GOOD", 24: "RESERVATION CONFLICT"}.get(
            res.returncode, f"{self.tool} exit {res.returncode}: {res.error_text.strip()[:120]}"
        )
        what = f"{self.tool} --out {action} key={key:#x} sa_key={sa_key:#x}" + (
            f" type={pr_type}" if pr_type else ""
        )
        self._record(what, status)
        if status == "GOOD" and action in ("register", "register-ignore"):
            if sa_key:
                self.c.keys[self.name] = sa_key
            else:
                self.c.keys.pop(self.name, None)
        return status

    def write(self, lba: int, data: bytes) -> str:
        """One block: ``dd oflag=direct`` (open-iscsi) or ``iscsi-pr write`` (libiscsi);
        GOOD, or the error the kernel or the tool reported."""
        try:
            self.driver.write(self.session, self.c.lun, lba, data)
            status = "GOOD"
        except Exception as exc:  # the kernel turns RESERVATION CONFLICT into EIO
            status = f"write failed: {str(exc)[:160]}"
        self._record(f"{'dd' if self.tool == 'sg_persist' else 'iscsi-pr'} WRITE LBA {lba}", status)
        return status

    def keys(self) -> list[int] | None:
        """``sg_persist --in --read-keys`` / ``iscsi-pr in read-keys``, again after a unit attention (exit 6: the
        command was not performed, SAM-5); None when it never completed."""
        for _ in range(3):
            res = self.driver.persistent_reserve_in(self.session, self.c.lun, "read-keys")
            if res.returncode != 6:
                break
            self._record(f"{self.tool} --in --read-keys", "unit attention")
        if res.returncode != 0:
            self._record(f"{self.tool} --in --read-keys", f"exit {res.returncode}")
            return None
        keys = _listed_keys(res.text)
        self._record(f"{self.tool} --in --read-keys", f"{[hex(k) for k in keys]}")
        return keys

    def leave(self) -> None:
        """At a scenario's end, whatever happened: unregister (REGISTER AND IGNORE
        EXISTING KEY, key 0) and log out, each as far as it goes."""
        with contextlib.suppress(Exception):
            self.pr_out("register-ignore", sa_key=0)
        with contextlib.suppress(Exception):
            self.driver.logout(self.session)


def _node_login(initiator: Any, target: Any, endpoint: Any) -> Any:
    """A third-party node's login: libiscsi's driver pins a fresh ISID for the node
    (``node_login``) and logs in once per command through it; open-iscsi's session is
    one I_T nexus by itself."""
    driver = initiator.driver
    if hasattr(driver, "node_login"):
        if not driver.has_pr_tool():
            pytest.skip(f"{initiator.name} has no persistent reservation tool in this mode")
        manifest = getattr(target, "manifest", None)
        if manifest is not None and manifest.deviation_for("Cluster.Restart.SameIsid"):
            pytest.skip(
                f"{initiator.name} logs in once per command through the node's fixed ISID, and "
                f"{target.name} ties a registration to the session, not to the I_T nexus "
                "(deviation Cluster.Restart.SameIsid): such a node cannot keep a registration there"
            )
        return driver.node_login(endpoint)
    return driver.login(endpoint)


async def _direct(node: Any, method: str, *args: Any, **kw: Any) -> Any:
    """``node.method(...)`` called as it is, in the scenario's own thread (the
    ``call`` of the steps below for the scenarios that drive node A that way; the
    three-node one passes ``_call``)."""
    return getattr(node, method)(*args, **kw)


async def _unfences_and_holds(c: Cluster, a: Any, key: int, who: str, call: Any = _direct) -> None:
    """Node ``a`` (a third-party node, ``who`` its initiator) unfences and takes the
    disk: REGISTER AND IGNORE EXISTING KEY, then RESERVE Write Exclusive - Registrants
    Only."""
    __tracebackhide__ = True  # a failure points at the scenario's line
    st = await call(a, "pr_out", "register-ignore", sa_key=key)
    c.require(st == "GOOD", "RSPC4-5.13.7-3", f"{a.name} ({who}) registers: {st}")
    st = await call(a, "pr_out", "reserve", key=key, pr_type=WE_RO)
    c.require(st == "GOOD", "RSPC4-5.9-3", f"{a.name} reserves WE-RO: {st}")


async def _ready(a: Any, call: Any = _direct) -> str:
    """Node ``a`` back: TEST UNIT READY until it answers GOOD (unit attentions first:
    power on, I_T nexus loss, registrations preempted), at most four times; the last
    answer."""
    tur = "not run"
    for _ in range(4):
        tur = await call(a, "tur")
        if tur == "GOOD":
            break
    return tur


async def _fenced_write_lost(
    c: Cluster, a: Any, b: Node, lba: int, tag: str, kept: bytes, *, when: str = "",
    why: str = "",
) -> None:  # fmt: skip
    """Fenced node ``a`` writes block ``lba``: the WRITE fails and the block read from
    node ``b`` is still ``kept`` (SPC-4 5.13.1: an unregistered nexus under Write
    Exclusive - Registrants Only); ``when`` and ``why`` go into the failure."""
    __tracebackhide__ = True  # a failure points at the scenario's line
    w = a.write(lba, c.pattern(tag))
    data, r = await c.read(b, lba)
    c.require(
        w != "GOOD" and data == kept,
        "RSPC4-5.9-6",
        f"fenced {a.name}'s WRITE{when}: {w}; the block read from {b.name} {'is unchanged' if data == kept else 'changed'}{why}",
        r,
    )


async def _writes_again(
    c: Cluster, a: Any, b: Node, registered: str, lba: int, tag: str, call: Any = _direct
) -> None:
    """Node ``a``, registered again (``registered``: how its REGISTER AND IGNORE
    EXISTING KEY ended), writes block ``lba``, read back from node ``b`` (SPC-4 5.13.1:
    a registrant may write under Write Exclusive - Registrants Only)."""
    __tracebackhide__ = True  # a failure points at the scenario's line
    again = c.pattern(tag)
    w = await call(a, "write", lba, again)
    data, r = await c.read(b, lba)
    c.require(
        registered == "GOOD" and w == "GOOD" and data == again,
        "RSPC4-5.9-6",
        f"{a.name} registered again ({registered}), its WRITE {w}, read back from {b.name} {'same' if data == again else 'different'}",
        r,
        level="SHOULD",
    )


@spec(
    "Cluster.Mixed.FenceScsi",
    "SPC-4 5.13.11.2.5",
    "SPC-4 5.13.1",
    "SPC-4 5.13.7",
    pairing="all",
    requirements=["RSPC4-5.13.7-3", "RSPC4-5.9-3", "RSPC4-5.13.11.2.5-1", "RSPC4-5.9-6"],
    needs=(*PR, "initiator:persistent_reservations"),
    dataloss=True,
)
async def test_mixed_fence_scsi(initiator: Any, target: Any) -> None:
    """A heterogeneous two-node cluster: node A is the third-party initiator (open-iscsi
    with sg_persist over its block device, or libiscsi with iscsi-pr through one fixed
    ISID), node B the reference initiator. A unfences
    (REGISTER AND IGNORE EXISTING KEY, RESERVE Write Exclusive - Registrants Only) and
    writes; B registers and reads A's key and reservation; B fences A with PREEMPT AND
    ABORT (PREEMPT where refused); A's key is gone in A's own view, A's write fails,
    the block read from B keeps A's data; A unfences again and writes (SPC-4 5.13.1: a
    registrant may write under Registrants Only)."""
    ka, kb = node_key(CLUSTER_NAME, "mixed-a"), node_key(CLUSTER_NAME, "mixed-b")
    async with cluster(target, f"mixed-fence-scsi-{initiator.name}") as c:
        b = await c.join("B")
        session = _node_login(initiator, target, target.endpoint())
        c.event(f"login ({initiator.name})", "A")
        a = ThirdPartyNode(c, "A", initiator, session)
        try:
            await _unfences_and_holds(c, a, ka, initiator.name)
            out = await c.pr_out(b, REGISTER_IGNORE, sa_key=kb)
            c.require(out.status == GOOD, "RSPC4-5.13.7-3", f"B registers: {describe(out)}", out)
            mine = c.pattern("node-A")
            st = a.write(LBA + 7, mine)
            c.require(st == "GOOD", "RSPC4-5.9-6", f"holder A's WRITE: {st}", level="SHOULD")
            state = await c.observe(b, "A holds, B registered")
            c.require(
                ka in state.keys and kb in state.keys and state.holder_key == ka,
                "RSPC4-5.13.7-3",
                f"B reads keys {[hex(k) for k in state.keys]}, holder {state.holder_key!r}: not A's registration and reservation",
            )
            c.event(f"A ({initiator.name}) fails; B fences A", "B")
            out = await _fence(c, b, kb, ka)
            c.require(
                out.status == GOOD,
                "RSPC4-5.13.11.2.5-1",
                f"B's fence of A: {describe(out)}",
                out,
            )
            state = await c.observe(b, "A fenced")
            seen_by_a = a.keys() or []
            c.require(
                ka not in state.keys and ka not in seen_by_a and kb in seen_by_a,
                "RSPC4-5.13.11.2.5-1",
                f"after the fence B reads {[hex(k) for k in state.keys]}, A reads {[hex(k) for k in seen_by_a]}: A's key shall be gone",
            )
            await _fenced_write_lost(
                c, a, b, LBA + 7, "fenced-A", mine,
                why=" (SPC-4 5.13.1: an unregistered nexus's write conflicts)",
            )  # fmt: skip
            st = a.pr_out("register-ignore", sa_key=ka)
            c.event("A unfences again", "A")
            await _writes_again(c, a, b, st, LBA + 7, "node-A-back")
            await c.observe(b, "A back")
        finally:
            a.leave()


def _ports_of(state: State, key: int) -> list[str]:
    """The initiator ports READ FULL STATUS lists with ``key`` (empty without it)."""
    return [
        f"{d.transport_id} (relative target port {d.relative_target_port})"
        for d in state.full or []
        if d.key == key
    ]


@spec(
    "Cluster.Mixed.Restart",
    "SPC-4 5.13.1",
    "SPC-4 5.13.6.4",
    pairing="all",
    requirements=["RSPC4-5.13.6-2", "RSPC4-5.13.7-3", "RSPC4-5.9-6"],
    needs=(*PR, "initiator:persistent_reservations"),
    dataloss=True,
)
async def test_mixed_restart(initiator: Any, target: Any) -> None:
    """The third-party node A (open-iscsi, or libiscsi with a new ISID at each login)
    holds the disk, then restarts: it logs out and logs in again (the LU mapped again by the initiator itself, no hand). Its
    registration outlives the session (SPC-4 5.13.1); READ FULL STATUS from node B
    names the nexus it belongs to, and whether A came back with the same ISID (the
    same I_T nexus) is recorded. A brings the disk online as a cluster does: TEST UNIT
    READY (sg_turs) until it answers, REGISTER AND IGNORE EXISTING KEY (fence_scsi's
    unfence at boot: a new nexus is registered, the same one left as it was), its key
    read back, then a WRITE, read back from B (registrants may write under Write
    Exclusive - Registrants Only, SPC-4 5.13.1)."""
    ka, kb = node_key(CLUSTER_NAME, "mixed-a"), node_key(CLUSTER_NAME, "mixed-b")
    async with cluster(target, f"mixed-restart-{initiator.name}") as c:
        b = await c.join("B")
        ep = target.endpoint()
        session = _node_login(initiator, target, ep)
        c.event(f"login ({initiator.name})", "A")
        a = ThirdPartyNode(c, "A", initiator, session)
        try:
            await _unfences_and_holds(c, a, ka, initiator.name)
            await c.pr_out(b, REGISTER_IGNORE, sa_key=kb)
            before = await c.observe(b, "A holds")
            old_ports = _ports_of(before, ka)
            initiator.driver.logout(session)
            c.event("A restarts (logout)", "A")
            state = await c.observe(b, "A down")
            c.require(
                ka in state.keys and state.holder_key == ka,
                "RSPC4-5.13.6-2",
                f"with A logged out B reads keys {[hex(k) for k in state.keys]}, holder {state.holder_key!r}: A's registration and reservation shall outlive its session (SPC-4 5.13.1)",
            )
            session = _node_login(initiator, target, ep)
            a.session = session
            c.event("A logged in again, LU mapped", "A")
            tur = await _ready(a)
            # fence_scsi's unfence at boot: REGISTER AND IGNORE EXISTING KEY, which
            # registers a new I_T nexus and leaves the same one as it was
            st = a.pr_out("register-ignore", sa_key=ka)
            keys = a.keys() or []
            back = await c.observe(b, "A back, registered again")
            new_ports = _ports_of(back, ka)
            c.fact("a_registrations", {"before": old_ports, "after": new_ports})
            c.fact(
                "new_isid_after_restart",
                len(new_ports) > len(old_ports) if back.full is not None else "unknown",
            )
            c.require(
                st == "GOOD" and tur == "GOOD" and ka in keys,
                "RSPC4-5.13.7-3",
                f"bring online: TEST UNIT READY {tur}, REGISTER AND IGNORE EXISTING KEY {st}, A reads keys {[hex(k) for k in keys]}",
            )
            if back.full is not None and old_ports:
                c.require(
                    all(p in new_ports for p in old_ports),
                    "RSPC4-5.13.6-2",
                    f"READ FULL STATUS lists {new_ports} for A's key, not its earlier nexus {old_ports} (registrations outlive the session, SPC-4 5.13.1)",
                )
            data_a = c.pattern("A-after-restart")
            w = a.write(LBA + 9, data_a)
            data, r = await c.read(b, LBA + 9)
            c.require(
                w == "GOOD" and data == data_a,
                "RSPC4-5.9-6",
                f"A's WRITE once online: {w}; read back from B {'same' if data == data_a else 'different'}",
                r,
                level="SHOULD",
            )
        finally:
            a.leave()


#: The heavy scenarios (``tox -e cluster``, ISCSI_CONFORMANCE_CLUSTER_HEAVY=1): the
#: three-node ones with open-iscsi hosts (Cluster.Mixed.ThreeNodes: a reboot and a
#: libiscsi container; Cluster.SameKind.ThreeNodes: a third micro-VM and a reboot).
#: In the default run they cost the open-iscsi x tgt, LIO shard 73 s of its 688 (CI run
#: of 2026-12-08), which made it the matrix's tail; scenario 6 runs there with
#: reference and libiscsi nodes, and the open-iscsi reboots run in Cluster.Mixed.Reboot.
ENV_HEAVY = "ISCSI_CONFORMANCE_CLUSTER_HEAVY"
HEAVY_TIMEOUT = 420.0  # seconds: a micro-VM boot (up to its 180 s timeout) and the scenario


@spec(
    "Cluster.Mixed.Reboot",
    "SPC-4 5.13.11.2.5",
    "SPC-4 5.13.1",
    "SPC-4 5.13.7",
    pairing="all",
    requirements=["RSPC4-5.13.11.2.5-1", "RSPC4-5.9-6", "RSPC4-5.13.7-3", "RSPC4-5.13.6-2"],
    needs=(*PR, "initiator:persistent_reservations"),
    dataloss=True,
)
def test_mixed_reboot(initiator: Any, target: Any) -> None:
    """Node A (open-iscsi in its micro-VM, its node record set to log in at boot) holds
    the disk; its host resets for real (sysrq b: no Logout, the connection just ends)
    and node B (the reference initiator) fences it with PREEMPT AND ABORT while it is
    down. A boots, logs in by itself (``iscsiadm -m node --loginall=automatic``, its
    disk mapped again without a hand), and brings the disk online as a cluster node
    does: TEST UNIT READY until it answers, its key read (gone: fenced), a WRITE that
    must not land (SPC-4 5.13.1: an unregistered nexus under Registrants Only), then
    REGISTER AND IGNORE EXISTING KEY and a WRITE read back from B. Whether A came back
    through the same I_T nexus (ISID) is recorded from READ FULL STATUS."""
    # a plain def with its own bound: the micro-VM's boot alone may take its 180 s
    # boot timeout on a loaded host, more than a test's usual 120 s (harness/runner.py)
    asyncio.run(asyncio.wait_for(_mixed_reboot(initiator, target), timeout=HEAVY_TIMEOUT))


async def _mixed_reboot(initiator: Any, target: Any) -> None:
    driver = initiator.driver
    if not hasattr(driver, "reboot") or not driver.can_reboot():
        pytest.skip(f"{initiator.name} here is not a host the suite can reset (micro-VM only)")
    ka, kb = node_key(CLUSTER_NAME, "reboot-a"), node_key(CLUSTER_NAME, "reboot-b")
    async with cluster(target, f"mixed-reboot-{initiator.name}") as c:
        b = await c.join("B")
        ep = target.endpoint()
        a = ThirdPartyNode(c, "A", initiator, _node_login(initiator, target, ep))
        c.event(f"login ({initiator.name})", "A")
        reboot: Any = None
        try:
            await _unfences_and_holds(c, a, ka, initiator.name)
            await c.pr_out(b, REGISTER_IGNORE, sa_key=kb)
            mine = c.pattern("A-before-reset")
            a.write(LBA + 11, mine)
            before = await c.observe(b, "A holds")
            old_ports = _ports_of(before, ka)
            c.event("A's host resets (sysrq b)", "A")
            loop = asyncio.get_running_loop()
            reboot = loop.run_in_executor(None, driver.reboot, a.session)
            out = await _fence(c, b, kb, ka)
            c.require(
                out.status == GOOD, "RSPC4-5.13.11.2.5-1", f"B's fence of A: {describe(out)}", out
            )
            fenced = await c.observe(b, "A down, fenced")
            c.require(
                ka not in fenced.keys and fenced.holder_key == kb,
                "RSPC4-5.13.11.2.5-1",
                f"after the fence B reads keys {[hex(k) for k in fenced.keys]}, holder {fenced.holder_key!r}: A's key shall be gone and B hold",
            )
            a.session, seconds = await reboot
            c.event(f"A booted and logged in by itself after {seconds:.1f} s", "A")
            c.fact("reboot_seconds", round(seconds, 1))
            tur = await _ready(a)
            keys = a.keys()
            c.require(
                tur == "GOOD" and keys is not None and ka not in keys,
                "RSPC4-5.13.11.2.5-1",
                f"A after boot: TEST UNIT READY {tur}, reads keys {[hex(k) for k in keys or []]} (its key shall be gone: fenced)",
            )
            await _fenced_write_lost(
                c, a, b, LBA + 11, "A-fenced-after-boot", mine, when=" after boot"
            )
            st = a.pr_out("register-ignore", sa_key=ka)
            back = await c.observe(b, "A registered again")
            new_ports = _ports_of(back, ka)
            c.fact("a_registrations", {"before": old_ports, "after": new_ports})
            if back.full is not None:
                c.fact("same_nexus_after_reboot", bool(old_ports) and old_ports == new_ports)
            await _writes_again(c, a, b, st, LBA + 11, "A-back")
        finally:
            if reboot is not None and not reboot.done():
                with contextlib.suppress(Exception):
                    a.session, _s = await reboot  # never leave the host half booted
            a.leave()


# ====================================================================== three mixed nodes
#: Node C's initiator name when it is a libiscsi node (a host of its own).
LIBISCSI_NODE_C = "iqn.2024-01.org.iscsi-conformance:cluster-node-c-libiscsi"


@contextlib.asynccontextmanager
async def _libiscsi_node_driver(initiator: Any, pool: Any) -> AsyncIterator[Any]:
    """A libiscsi driver for a further node with ``iscsi-pr``: the pairing's own, the
    run's (libiscsi is another initiator of the run), or one of this test's own in a
    container on the run's docker network (stopped on exit); None where none can run
    (no docker network, or libiscsi without its PR tool)."""
    if hasattr(initiator.driver, "node_login"):
        yield initiator.driver if initiator.driver.has_pr_tool() else None
        return
    entry = getattr(pool, "initiators", {}).get("libiscsi")
    if entry is not None:
        entry.ensure_started()
        yield entry.driver if entry.driver.has_pr_tool() else None
        return
    env = getattr(pool, "docker_env", None)
    if env is None:
        yield None
        return
    from iscsi_conformance.peers.libiscsi import LibiscsiInitiator

    lib = LibiscsiInitiator(mode="container", docker_env=env)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lib.start)
    try:
        yield lib
    finally:
        await loop.run_in_executor(None, lib.stop)


class _ReferenceAsThirdParty:
    """Node C as a reference-initiator session where no libiscsi node can run (tgt's
    deviation, no docker network): the same calls as ``ThirdPartyNode``."""

    def __init__(self, c: Cluster, node: Node) -> None:
        self.c, self.node, self.name = c, node, node.name

    async def pr_out(self, action: str, *, key: int = 0, sa_key: int = 0, pr_type: int = 0) -> str:
        sa = {"register-ignore": REGISTER_IGNORE, "reserve": RESERVE}[action]
        out = await self.c.pr_out(self.node, sa, key=key, sa_key=sa_key, pr_type=pr_type)
        return "GOOD" if out.status == GOOD else describe(out)

    async def write(self, lba: int, data: bytes) -> str:
        out = await self.c.write(self.node, lba, data)
        return "GOOD" if out.status == GOOD else describe(out)

    async def keys(self) -> list[int] | None:
        gen, keys, _out = await self.c.read_keys(self.node)
        return keys if gen is not None else None


async def _call(node: Any, method: str, *args: Any, **kw: Any) -> Any:
    """``node.method(...)`` for a third-party node (blocking: its tools run in a
    thread, so that the reference target of this process keeps serving) or a
    reference one (a coroutine)."""
    fn = getattr(node, method)
    if asyncio.iscoroutinefunction(fn):
        return await fn(*args, **kw)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: fn(*args, **kw))


@spec(
    "Cluster.Mixed.ThreeNodes",
    "SPC-4 5.13.11.2.4",
    "SPC-4 5.13.11.2.6",
    "SPC-4 5.13.1",
    "SPC-4 5.13.7",
    pairing="all",
    requirements=["RSPC4-5.13.7-3", "RSPC4-5.9-3", "RSPC4-5.9-7", "RSPC4-5.9-6"],
    needs=(*PR, "initiator:persistent_reservations"),
    dataloss=True,
)
def test_mixed_three_nodes(initiator: Any, target: Any, _iscsi_pool: Any) -> None:
    """Issue 13's scenario 6 with a heterogeneous cluster of three hosts: node A is the
    pairing's third-party initiator, node B the reference initiator, node C a libiscsi
    node of its own initiator name (``iscsi-pr`` through one fixed ISID; with a libiscsi
    pairing, a second libiscsi host). A unfences first and holds Write Exclusive -
    Registrants Only, B and C register, A and C write. A fails: open-iscsi's host
    resets for real (sysrq b, its micro-VM boots again and logs in by itself), a
    libiscsi host just stops (it holds no connection between commands). B fences it
    with PREEMPT AND ABORT (PREEMPT where refused) of A's key, which moves the
    reservation to B and removes A's registration alone (SPC-4 5.13.11.2.4.3): C's
    key stays and C writes and reads on, read back from B. A comes back (open-iscsi:
    the same VM booted; libiscsi: a new ISID), answers TEST UNIT READY, finds its key
    gone, its WRITE does not land (SPC-4 5.13.1: unregistered under Registrants Only;
    the block read from B keeps A's data), and after REGISTER AND IGNORE EXISTING KEY
    it writes again. With open-iscsi: a reboot and a libiscsi container (13 to 16 s a
    target in CI), heavy: ISCSI_CONFORMANCE_CLUSTER_HEAVY=1 runs it; libiscsi pairings
    run it in the default run."""
    asyncio.run(
        asyncio.wait_for(_mixed_three_nodes(initiator, target, _iscsi_pool), timeout=HEAVY_TIMEOUT)
    )


async def _mixed_three_nodes(initiator: Any, target: Any, pool: Any) -> None:
    driver = initiator.driver
    rebooting = hasattr(driver, "reboot") and driver.can_reboot()
    if not rebooting and not hasattr(driver, "node_login"):
        pytest.skip(f"{initiator.name} here is not a host the suite can reset (micro-VM only)")
    if rebooting and not os.environ.get(ENV_HEAVY):
        pytest.skip(
            f"a reboot of {initiator.name}'s micro-VM and a libiscsi node: {ENV_HEAVY}=1 "
            "(tox -e cluster) runs it; Cluster.Mixed.Reboot resets the node in the default run"
        )
    ka, kb, kc = (node_key(CLUSTER_NAME, f"three-mixed-{n}") for n in "abc")
    deviation = getattr(target, "manifest", None) and target.manifest.deviation_for(
        "Cluster.Restart.SameIsid"
    )
    async with contextlib.AsyncExitStack() as stack:
        lib = None if deviation else await stack.enter_async_context(
            _libiscsi_node_driver(initiator, pool)
        )  # fmt: skip
        c = await stack.enter_async_context(cluster(target, f"mixed-three-nodes-{initiator.name}"))
        b = await c.join("B")
        ep = target.endpoint()
        loop = asyncio.get_running_loop()
        a = ThirdPartyNode(
            c, "A", initiator, await loop.run_in_executor(None, _node_login, initiator, target, ep)
        )
        c.event(f"login ({initiator.name})", "A")
        cnode: Any
        c_session = None
        if lib is not None:
            c_session = await loop.run_in_executor(
                None,
                lambda: lib.node_login(ep, options=LoginOptions(initiator_name=LIBISCSI_NODE_C)),
            )
            cnode = ThirdPartyNode(c, "C", _Named("libiscsi", lib), c_session)
            c.fact("node_c", f"libiscsi ({LIBISCSI_NODE_C}, ISID {c_session.ref.isid})")
        else:
            why = (
                f"{target.name}'s deviation Cluster.Restart.SameIsid"
                if deviation
                else "no libiscsi with iscsi-pr here (a native libiscsi without it, or no docker network)"
            )
            cnode = _ReferenceAsThirdParty(c, await c.join("C", initiator=THIRD))
            c.fact("node_c", f"reference initiator ({why})")
        c.event(f"node C: {c.facts['node_c']}", "C")
        reboot: Any = None
        try:
            await _unfences_and_holds(c, a, ka, initiator.name, _call)
            out = await c.pr_out(b, REGISTER_IGNORE, sa_key=kb)
            c.require(out.status == GOOD, "RSPC4-5.13.7-3", f"B registers: {describe(out)}", out)
            st = await _call(cnode, "pr_out", "register-ignore", sa_key=kc)
            c.require(st == "GOOD", "RSPC4-5.13.7-3", f"C registers: {st}")
            mine_a, mine_c = c.pattern("node-A"), c.pattern("node-C")
            await _call(a, "write", LBA + 15, mine_a)
            st = await _call(cnode, "write", LBA + 16, mine_c)
            c.require(st == "GOOD", "RSPC4-5.9-6", f"registrant C's WRITE: {st}", level="SHOULD")
            state = await c.observe(b, "A holds, B and C registered")
            c.require(
                {ka, kb, kc} <= set(state.keys),
                "RSPC4-5.13.7-3",
                f"B reads keys {[hex(k) for k in state.keys]}: not the three nodes' registrations",
            )
            c.require(
                state.holder_key == ka,
                "RSPC4-5.9-3",
                f"B reads the holder {state.holder_key!r}, not A's key {ka:#x}: the reservation A took is gone, although A neither released it nor unregistered and no node preempted or cleared it (only B and C registered, wrote and, for libiscsi, logged out after each command)",
            )
            if rebooting:
                c.event("A's host resets (sysrq b); B fences A", "A")
                reboot = loop.run_in_executor(None, driver.reboot, a.session)
            else:
                c.event("A's host stops (no Logout: libiscsi holds no connection); B fences A", "A")
            out = await _fence(c, b, kb, ka)
            c.require(out.status == GOOD, "RSPC4-5.9-7", f"B's fence of A: {describe(out)}", out)
            fenced = await c.observe(b, "A fenced")
            c.require(
                ka not in fenced.keys and kc in fenced.keys and fenced.holder_key == kb,
                "RSPC4-5.9-7",
                f"after B's PREEMPT of A's key B reads keys {[hex(k) for k in fenced.keys]}, holder {fenced.holder_key!r}: A's registration alone shall be gone, C's kept, and B hold the reservation (SPC-4 5.13.11.2.4.3)",
                out,
            )
            seen_by_c = await _call(cnode, "keys")
            again_c = c.pattern("node-C-after-fence")
            st = await _call(cnode, "write", LBA + 16, again_c)
            data, r = await c.read(b, LBA + 16)
            c.require(
                seen_by_c is not None and kc in seen_by_c and ka not in seen_by_c,
                "RSPC4-5.9-7",
                f"C reads keys {[hex(k) for k in seen_by_c or []]} after the fence: its own key shall stay and A's be gone",
            )
            c.require(
                st == "GOOD" and data == again_c,
                "RSPC4-5.9-6",
                f"C keeps its access after A was fenced: WRITE {st}, read back from B {'same' if data == again_c else 'different'}",
                r,
                level="SHOULD",
            )
            if reboot is not None:
                a.session, seconds = await reboot
                c.event(f"A booted and logged in by itself after {seconds:.1f} s", "A")
                c.fact("reboot_seconds", round(seconds, 1))
            else:
                a.session = await loop.run_in_executor(None, _node_login, initiator, target, ep)
                c.event(f"A restarts: a new ISID {a.session.ref.isid}", "A")
            tur = await _ready(a, _call)
            keys = await _call(a, "keys")
            c.require(
                tur == "GOOD" and keys is not None and ka not in keys,
                "RSPC4-5.9-7",
                f"A back: TEST UNIT READY {tur}, reads keys {[hex(k) for k in keys or []]} (its key shall be gone: fenced)",
            )
            w = await _call(a, "write", LBA + 15, c.pattern("A-fenced"))
            data, r = await c.read(b, LBA + 15)
            c.require(
                _conflicted(w) and data == mine_a,
                "RSPC4-5.9-6",
                f"fenced A's WRITE: {w} (RESERVATION CONFLICT expected; the Linux kernel reports it as EBADE, 'Invalid exchange'); the block read from B {'is unchanged' if data == mine_a else 'changed'} (SPC-4 5.13.1: an unregistered nexus's write conflicts under Registrants Only)",
                r,
            )
            st = await _call(a, "pr_out", "register-ignore", sa_key=ka)
            c.event("A rejoins (unfences)", "A")
            await _writes_again(c, a, b, st, LBA + 15, "node-A-back", _call)
            data, r = await c.read(b, LBA + 16)
            c.require(
                data == again_c,
                "RSPC4-5.9-6",
                "C's block changed while A was fenced and rejoined",
                r,
            )
            await c.observe(b, "A back, three nodes registered")
        finally:
            if reboot is not None and not reboot.done():
                with contextlib.suppress(Exception):
                    a.session, _s = await reboot  # never leave the host half booted
            for node in (a, cnode):
                if isinstance(node, ThirdPartyNode):
                    await _call(node, "leave")


def _conflicted(status: str) -> bool:
    """Whether a node's WRITE ended in RESERVATION CONFLICT: iscsi-pr's and the
    reference initiator's words, or EBADE from open-iscsi's kernel (the SCSI midlayer
    turns that status into a nexus failure, which dd reports as 'Invalid exchange')."""
    return "RESERVATION CONFLICT" in status or "Invalid exchange" in status


class _Named:
    """What ``ThirdPartyNode`` reads of an initiator: its name and driver."""

    def __init__(self, name: str, driver: Any) -> None:
        self.name, self.driver = name, driver


# ====================================================================== same-kind nodes
# Issue 13 runs every scenario with nodes of one kind, not only with the reference
# initiator's sessions: two hosts that are both the pairing's third-party initiator.
#: How a node's tool exit statuses read (sg3_utils' categories, which iscsi-pr shares).
_EXIT_WORDS = {
    0: "GOOD",
    24: "RESERVATION CONFLICT",
    6: "UNIT ATTENTION",
    5: "ILLEGAL REQUEST",
    2: "NOT READY",
    11: "ABORTED COMMAND",
    26: "BUSY",
    27: "TASK SET FULL",
}
#: sg_persist's names of the reservation types (SPC-4 6.16.2, table 212).
_SG_TYPES = {
    "Write Exclusive": WE,
    "Exclusive Access": EA,
    "Write Exclusive, registrants only": WE_RO,
    "Exclusive Access, registrants only": EA_RO,
    "Write Exclusive, all registrants": WE_AR,
    "Exclusive Access, all registrants": EA_AR,
}
#: Node B's initiator name when the nodes are libiscsi hosts (node A's is the driver's).
LIBISCSI_NODE_B = "iqn.2024-01.org.iscsi-conformance:cluster-node-b-libiscsi"


class HostNode:
    """A node of a same-kind cluster: a host of the pairing's third-party initiator that
    holds its session for the whole scenario, as a cluster node does (open-iscsi: a
    micro-VM of its own, its kernel's session, sg3-utils and dd over its block device;
    libiscsi: ``iscsi-pr serve``, one login and one connection). Every command lands in
    the scenario's command sequence and timeline; a UNIT ATTENTION answer is noted and
    the command sent again (it was not performed, SAM-5), as a node's stack does."""

    tool = ""

    def __init__(self, c: Cluster, name: str) -> None:
        self.c, self.name = c, name

    # the backend: one command's exit status (sg3_utils' categories) and output
    def _exec(self, words: list[str]) -> tuple[int, str]:
        raise NotImplementedError

    def _write(self, lba: int, data: bytes) -> tuple[int, str]:
        raise NotImplementedError

    def _read(self, lba: int) -> tuple[int, str, bytes | None]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ recording
    def _record(self, what: str, status: str) -> None:
        _record_command(self.c, self.name, what, status)

    @staticmethod
    def _word(code: int, text: str) -> str:
        word = _EXIT_WORDS.get(code)
        return word if word else f"exit {code}: {' '.join(text.split())[-160:]}"

    def _cmd(self, what: str, words: list[str], *, quiet: bool = False) -> tuple[str, str]:
        for _ in range(4):
            code, text = self._exec(words)
            if code != 6:
                break
            self.c._line(self.name, f"({what}: unit attention, sent again)")
        status = self._word(code, text)
        if not quiet:
            self._record(what, status)
        return status, text

    # ------------------------------------------------------------------ commands
    def pr_out(self, action: str, *, key: int = 0, sa_key: int = 0, pr_type: int = 0) -> str:
        what = f"{self.tool} PR OUT {action} key={key:#x} sa_key={sa_key:#x}" + (
            f" type={pr_type}" if pr_type else ""
        )
        status, _t = self._cmd(what, self._pr_out_words(action, key, sa_key, pr_type))
        if status == "GOOD" and action in ("register", "register-ignore"):
            if sa_key:
                self.c.keys[self.name] = sa_key
            else:
                self.c.keys.pop(self.name, None)
        return status

    def _pr_out_words(self, action: str, key: int, sa_key: int, pr_type: int) -> list[str]:
        raise NotImplementedError

    def _pr_in(self, action: str) -> tuple[str, str]:
        raise NotImplementedError

    def read_keys(self) -> tuple[int | None, list[int] | None]:
        """PRgeneration and the registered keys (None, None when it never completed)."""
        status, text = self._pr_in("read-keys")
        if status != "GOOD":
            return None, None
        gen = re.search(r"PR generation=0x([0-9a-fA-F]+)", text)
        keys = _listed_keys(text)
        self.c._line(
            self.name, f"  keys {[hex(k) for k in keys]}, generation {gen and int(gen[1], 16)}"
        )
        return (int(gen[1], 16) if gen else None), keys

    def keys(self) -> list[int] | None:
        return self.read_keys()[1]

    def reservation(self) -> tuple[int | None, int | None] | None:
        """(holder key, type), (None, None) with no reservation; None when the READ
        RESERVATION never completed."""
        status, text = self._pr_in("read-reservation")
        if status != "GOOD":
            return None
        if m := re.search(r"holder (0x[0-9a-fA-F]+) type (\d+)", text):  # iscsi-pr
            held: tuple[int | None, int | None] = (int(m[1], 16), int(m[2]))
        elif m := re.search(r"Key=(0x[0-9a-fA-F]+)", text):  # sg_persist
            t = re.search(r"scope: \S+,\s+type: (.+?)\s*$", text, re.M)
            held = (int(m[1], 16), _SG_TYPES.get(t[1]) if t else None)
        else:
            held = (None, None)
        self.c._line(
            self.name,
            f"  reservation: {'none' if held[0] is None else f'key {held[0]:#x} type {held[1]}'}",
        )
        return held

    def tur(self) -> str:
        return self._cmd("TEST UNIT READY", self._words("tur"))[0]

    def reserve6(self) -> str:
        return self._cmd("RESERVE(6)", self._words("reserve6"))[0]

    def release6(self, *, quiet: bool = False) -> str:
        return self._cmd("RELEASE(6)", self._words("release6"), quiet=quiet)[0]

    def lun_reset(self) -> str:
        return self._cmd("LOGICAL UNIT RESET", self._words("lun-reset"))[0]

    def _words(self, command: str) -> list[str]:
        raise NotImplementedError

    def write(self, lba: int, data: bytes) -> str:
        code, text = self._write(lba, data)
        status = self._word(code, text)
        self._record(f"WRITE LBA {lba}", status)
        return status

    def read(self, lba: int) -> tuple[str, bytes | None]:
        """One block: its status and data (None unless GOOD); once more after a unit
        attention."""
        for _ in range(3):
            code, text, data = self._read(lba)
            if code != 6:
                break
        status = self._word(code, text)
        self._record(f"READ LBA {lba}", status)
        return status, data

    def leave(self) -> None:
        """At a scenario's end, whatever happened: RELEASE(6), unregister (REGISTER AND
        IGNORE EXISTING KEY with key 0) and log out, each as far as it goes."""
        with contextlib.suppress(Exception):
            self.release6(quiet=True)
        with contextlib.suppress(Exception):
            self.pr_out("register-ignore", sa_key=0)
        with contextlib.suppress(Exception):
            self.close()


class LibiscsiHost(HostNode):
    """A libiscsi host: ``iscsi-pr serve`` in libiscsi's container (``HeldNode``)."""

    tool = "iscsi-pr"

    def __init__(self, c: Cluster, name: str, held: Any, login: tuple[Any, Any, str]) -> None:
        super().__init__(c, name)
        self.held = held
        self.login = login  # (driver, endpoint, initiator name): to log in again

    def _exec(self, words: list[str]) -> tuple[int, str]:
        res = self.held.command(*words)
        return res.returncode, res.text + res.error_text

    def _pr_out_words(self, action: str, key: int, sa_key: int, pr_type: int) -> list[str]:
        return ["out", action, "-k", f"{key:#x}", "-s", f"{sa_key:#x}", "-t", str(pr_type)]

    def _pr_in(self, action: str) -> tuple[str, str]:
        return self._cmd(f"iscsi-pr PR IN {action}", ["in", action], quiet=True)

    def _words(self, command: str) -> list[str]:
        return [command]

    def _write(self, lba: int, data: bytes) -> tuple[int, str]:
        res = self.held.write(lba, data)
        return res.returncode, res.text + res.error_text

    def _read(self, lba: int) -> tuple[int, str, bytes | None]:
        res, data = self.held.read(lba)
        return res.returncode, res.text + res.error_text, data

    def close(self) -> None:
        self.held.close()


#: sg3-utils' words for the commands a host sends through sg_raw and sg_reset.
_SG_COMMANDS = {
    "tur": ["sg_turs", "{dev}"],
    "reserve6": ["sg_raw", "{dev}", "16", "00", "00", "00", "00", "00"],
    "release6": ["sg_raw", "{dev}", "17", "00", "00", "00", "00", "00"],
    "lun-reset": ["sg_reset", "--device", "{dev}"],
}


class OpenIscsiHost(HostNode):
    """An open-iscsi host: its micro-VM's kernel session, ``sg_persist``, ``sg_raw``
    (RESERVE(6), RELEASE(6)), ``sg_reset --device`` (the kernel's LOGICAL UNIT RESET)
    and ``dd`` with O_DIRECT over its block device."""

    tool = "sg_persist"

    def __init__(self, c: Cluster, name: str, driver: Any, session: Any) -> None:
        super().__init__(c, name)
        self.driver, self.session = driver, session

    def _dev(self) -> str:
        return str(self.driver.device(self.session, self.c.lun))

    def _run(self, argv: list[str]) -> tuple[int, str]:
        res = self.driver.shell.run(argv, timeout=120)
        text = res.text + res.error_text
        if argv[0] == "sg_raw" and res.returncode != 0:
            # sg_raw reports the SCSI status in words: read it as sg_persist's categories
            for word, code in (("Reservation Conflict", 24), ("Unit Attention", 6),
                               ("Illegal Request", 5)):  # fmt: skip
                if word.lower() in text.lower():
                    return code, text
        return res.returncode, text

    def _exec(self, words: list[str]) -> tuple[int, str]:
        return self._run(words)

    def _pr_out_words(self, action: str, key: int, sa_key: int, pr_type: int) -> list[str]:
        from iscsi_conformance.peers.openiscsi import PR_OUT_ACTIONS

        argv = ["sg_persist", "--out", PR_OUT_ACTIONS[action], f"--param-rk={key:#x}",
                f"--param-sark={sa_key:#x}"]  # fmt: skip
        return [*argv, *([f"--prout-type={pr_type}"] if pr_type else []), self._dev()]

    def _pr_in(self, action: str) -> tuple[str, str]:
        from iscsi_conformance.peers.openiscsi import PR_IN_ACTIONS

        argv = ["sg_persist", "--in", PR_IN_ACTIONS[action], self._dev()]
        return self._cmd(f"sg_persist PR IN {action}", argv, quiet=True)

    def _words(self, command: str) -> list[str]:
        dev = self._dev()
        return [w.format(dev=dev) for w in _SG_COMMANDS[command]]

    def _write(self, lba: int, data: bytes) -> tuple[int, str]:
        try:
            self.driver.write(self.session, self.c.lun, lba, data)
        except Exception as exc:  # the kernel turns RESERVATION CONFLICT into an I/O error
            return (24 if _conflicted(str(exc)) else 99), str(exc)
        return 0, ""

    def _read(self, lba: int) -> tuple[int, str, bytes | None]:
        try:
            return 0, "", self.driver.read(self.session, self.c.lun, lba, 1)
        except Exception as exc:
            return (24 if _conflicted(str(exc)) else 99), str(exc), None

    def close(self) -> None:
        self.driver.logout(self.session)


def _same_kind_skip(initiator: Any) -> None:
    """Skip where the pairing's initiator cannot be two hosts here."""
    driver = initiator.driver
    if hasattr(driver, "held_node"):
        if not driver.has_pr_tool():
            pytest.skip(f"{initiator.name} has no iscsi-pr in this mode (container only)")
        return
    if not (hasattr(driver, "reboot") and driver.can_reboot()):
        pytest.skip(
            f"the same-kind scenarios run with third-party hosts; {initiator.name}'s nodes "
            "are the reference initiator's sessions of Cluster.Windows, Cluster.Pacemaker, "
            "Cluster.Scsi2, Cluster.Persistent and Cluster.ThreeNodes"
            if initiator.name == "reference"
            else f"{initiator.name} here does not run in a micro-VM of its own"
        )


class _SecondHosts:
    """The further open-iscsi micro-VMs of a same-kind scenario (node B's, and node C's
    in a heavy run), each booted once per module and shared by the scenarios of every
    target (a boot is 10 s idle, a minute or more under load)."""

    def __init__(self) -> None:
        self.drivers: dict[tuple[int, str], Any] = {}

    def get(self, driver: Any, node: str = "b") -> Any:
        second = self.drivers.get((id(driver), node))
        if second is None:
            second = type(driver)(
                mode=driver.mode,
                initiator_name=f"{driver.initiator_name}-node-{node}",
                docker_env=getattr(driver, "docker_env", None),
                vm_name=f"open-iscsi-node-{node}",
            )
            second.start()
            self.drivers[(id(driver), node)] = second
        return second

    def stop(self) -> None:
        for second in self.drivers.values():
            with contextlib.suppress(Exception):
                second.stop()
        self.drivers.clear()


@pytest.fixture(scope="module")
def second_hosts() -> Iterator[_SecondHosts]:
    hosts = _SecondHosts()
    try:
        yield hosts
    finally:
        hosts.stop()


@contextlib.asynccontextmanager
async def hosts(
    c: Cluster, initiator: Any, target: Any, second: _SecondHosts, names: tuple[str, ...] = ("A", "B")
) -> AsyncIterator[list[HostNode]]:  # fmt: skip
    """Log in a host of the pairing's initiator kind per name, each with its own
    initiator name (open-iscsi: A in the pairing's micro-VM, B in the second one;
    libiscsi: held sessions in its container); every host leaves on exit."""
    loop = asyncio.get_running_loop()
    driver = initiator.driver
    ep = target.endpoint()
    made: list[HostNode] = []
    try:
        for n, name in enumerate(names):
            if hasattr(driver, "held_node"):
                iqn = driver.initiator_name if n == 0 else (
                    LIBISCSI_NODE_B if n == 1 else LIBISCSI_NODE_C
                )  # fmt: skip
                held = await loop.run_in_executor(None, _held, driver, ep, iqn)
                node: HostNode = LibiscsiHost(c, name, held, (driver, ep, iqn))
                c.event(f"{initiator.name} host logged in as {iqn}, ISID {held.isid}", name)
            else:
                drv = (
                    driver
                    if n == 0
                    else await loop.run_in_executor(None, second.get, driver, name.lower())
                )
                session = await loop.run_in_executor(None, drv.login, ep)
                node = OpenIscsiHost(c, name, drv, session)
                c.event(f"open-iscsi host logged in as {drv.initiator_name}", name)
            made.append(node)
        yield made
    finally:
        for node in made:
            await loop.run_in_executor(None, node.leave)


def _held(driver: Any, endpoint: Any, iqn: str) -> Any:
    return driver.held_node(endpoint, options=LoginOptions(initiator_name=iqn))


async def _on(node: HostNode, method: str, *args: Any, **kw: Any) -> Any:
    """``node.method(...)`` in a thread, so that a reference target in this process keeps
    serving while the host's tool runs."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: getattr(node, method)(*args, **kw))


SAME_KIND_NEEDS = (*PR, "initiator:persistent_reservations")


def _run_same_kind(scenario: Any, initiator: Any, target: Any, second: _SecondHosts) -> None:
    """A same-kind scenario where the pairing's initiator can be its hosts, under
    HEAVY_TIMEOUT (a plain test function: a micro-VM boot may take longer than a
    test's usual bound)."""
    _same_kind_skip(initiator)
    asyncio.run(asyncio.wait_for(scenario(initiator, target, second), HEAVY_TIMEOUT))


async def _hosts_register(c: Cluster, *nodes: tuple[HostNode, int]) -> None:
    """Each host registers its key (REGISTER AND IGNORE EXISTING KEY), which must be GOOD."""
    __tracebackhide__ = True  # a failure points at the scenario's line
    for n, key in nodes:
        st = await _on(n, "pr_out", "register-ignore", sa_key=key)
        c.require(st == "GOOD", "RSPC4-5.13.7-3", f"{n.name} registers: {st}")


async def _host_reserve(c: Cluster, node: HostNode, key: int) -> int:
    """A Windows node's RESERVE, in the order of WINDOWS_TYPES until one is taken."""
    for t in WINDOWS_TYPES:
        st = await _on(node, "pr_out", "reserve", key=key, pr_type=t)
        if st == "GOOD":
            c.fact("reservation_type", t)
            return t
        c.require(st == "ILLEGAL REQUEST", "RSPC4-5.9-3", f"{node.name}'s RESERVE type {t}: {st}")
    pytest.skip("the target refuses every reservation type a Windows cluster may use (1, 3, 5, 6)")


async def _host_fence(c: Cluster, survivor: HostNode, key: int, victim_key: int) -> str:
    """fence_scsi's fence from a host: PREEMPT AND ABORT of the victim's key, PREEMPT
    where refused (optional, SPC-4 6.16.2), recorded as the fact "fenced_with"."""
    st: str = await _on(
        survivor, "pr_out", "preempt-abort", key=key, sa_key=victim_key, pr_type=WE_RO
    )
    c.fact("fenced_with", "PREEMPT AND ABORT")
    if st == "ILLEGAL REQUEST":
        c.fact("fenced_with", "PREEMPT (PREEMPT AND ABORT refused: ILLEGAL REQUEST)")
        st = await _on(survivor, "pr_out", "preempt", key=key, sa_key=victim_key, pr_type=WE_RO)
    return st


async def _host_write_lands(
    c: Cluster, writer: HostNode, reader: HostNode, lba: int, tag: str, who: str,
    *, also: bool = True,
) -> None:  # fmt: skip
    """``writer``'s WRITE of block ``lba`` lands, read back by ``reader`` (SPC-4 5.13.1:
    a registrant may write under Registrants Only; SHOULD, row RSPC4-5.9-6); ``also``
    is what else must hold, told in ``who``."""
    __tracebackhide__ = True  # a failure points at the scenario's line
    data = c.pattern(tag)
    w = await _on(writer, "write", lba, data)
    _s, got = await _on(reader, "read", lba)
    c.require(
        also and w == "GOOD" and got == data,
        "RSPC4-5.9-6",
        f"{who}: its WRITE {w}, read back by {reader.name} {'same' if got == data else 'different'}",
        level="SHOULD",
    )


async def _host_write_refused(
    c: Cluster, writer: HostNode, reader: HostNode, lba: int, tag: str, kept: bytes | None,
    requirement: str, who: str, *, conflict: bool = True,
) -> None:  # fmt: skip
    """``writer``'s WRITE of block ``lba`` is refused (RESERVATION CONFLICT; with
    ``conflict`` False any failure) and the block read by ``reader`` is still ``kept``."""
    __tracebackhide__ = True  # a failure points at the scenario's line
    w = await _on(writer, "write", lba, c.pattern(tag))
    _s, got = await _on(reader, "read", lba)
    refused = w == "RESERVATION CONFLICT" if conflict else w != "GOOD"
    c.require(
        refused and kept is not None and got == kept,
        requirement,
        f"{who}: its WRITE {w}; the block read by {reader.name} {'is unchanged' if got == kept else 'changed'}",
    )


@spec(
    "Cluster.SameKind.Windows",
    "SPC-4 5.13.7",
    "SPC-4 5.13.9",
    "SPC-4 5.13.11.2.4",
    "SPC-4 5.13.11.2.2",
    "SPC-4 5.13.11.2.3",
    pairing="all",
    requirements=[
        "RSPC4-5.13.7-3", "RSPC4-5.9-3", "RSPC4-5.9-7", "RSPC4-5.13.9-1", "RSPC4-5.9-8",
        "RSPC4-5.9-9", "RSPC4-5.13.11.2.3-1", "RSPC4-5.13.11.2.4-1", "RSPC4-5.9-6",
    ],
    needs=SAME_KIND_NEEDS,
    dataloss=True,
)  # fmt: skip
def test_same_kind_windows(initiator: Any, target: Any, second_hosts: _SecondHosts) -> None:
    """A Windows failover cluster whose two nodes are both hosts of the pairing's
    initiator (two open-iscsi micro-VMs, or two libiscsi sessions of their own initiator
    names), in MS-CSVP's order: each registers with REGISTER AND IGNORE EXISTING KEY, A
    reserves (Write Exclusive - Registrants Only first, as Cluster.Windows), B reads the
    keys and the reservation; B's RESERVE conflicts while A owns the disk (SPC-4
    5.13.9); B wins it by PREEMPT of A's key, after which A's WRITE does not land (A
    is neither holder nor registrant); A registers again and wins the disk back; then
    both PREEMPT each other at once and exactly one wins (SPC-4 5.13.11.2.4.3: a
    PREEMPT is one uninterrupted series of actions); release, clear, and unregistering
    with a zero key, which releases a holder's reservation (SPC-4 5.13.11.2.3)."""
    _run_same_kind(_same_kind_windows, initiator, target, second_hosts)


async def _same_kind_windows(initiator: Any, target: Any, second: _SecondHosts) -> None:
    ka, kb = node_key(CLUSTER_NAME, "win-a"), node_key(CLUSTER_NAME, "win-b")
    async with cluster(target, f"same-kind-windows-{initiator.name}") as c:
        o = await c.join("observer")
        async with hosts(c, initiator, target, second) as (a, b):
            await _hosts_register(c, (a, ka), (b, kb))
            t = await _host_reserve(c, a, ka)
            keys = await _on(b, "keys")
            c.require(
                keys is not None and ka in keys and kb in keys,
                "RSPC4-5.13.7-3",
                f"B reads keys {[hex(k) for k in keys or []]}: not both nodes' keys",
            )
            held = await _on(b, "reservation")
            c.require(
                held == (ka, t),
                "RSPC4-5.9-3",
                f"B reads the reservation {held!r}, not A's key {ka:#x} type {t}",
            )
            await c.observe(o, "A owns the disk")
            st = await _on(b, "pr_out", "reserve", key=kb, pr_type=t)
            c.require(
                st == "RESERVATION CONFLICT",
                "RSPC4-5.13.9-1",
                f"B's RESERVE while A owns the disk: {st} (SPC-4 5.13.9: RESERVATION CONFLICT)",
            )
            st = await _on(b, "pr_out", "preempt", key=kb, sa_key=ka, pr_type=t)
            held = await _on(a, "reservation")
            c.require(
                st == "GOOD" and held is not None and held[0] == kb,
                "RSPC4-5.9-7",
                f"B's PREEMPT of A's key: {st}; A then reads the reservation {held!r}",
            )
            c.event("B won arbitration", "B")
            _s, before = await _on(b, "read", LBA + 21)
            await _host_write_refused(
                c, a, b, LBA + 21, "A-after-losing", before, _LOSER_WRITE_ROW[t],
                "A after B's PREEMPT (SPC-4 5.13.1: neither holder nor registrant)",
            )  # fmt: skip
            st = await _on(a, "pr_out", "register-ignore", sa_key=ka)
            c.require(st == "GOOD", "RSPC4-5.13.7-3", f"A registers again: {st}")
            st = await _on(a, "pr_out", "preempt", key=ka, sa_key=kb, pr_type=t)
            held = await _on(b, "reservation")
            c.require(
                st == "GOOD" and held is not None and held[0] == ka,
                "RSPC4-5.9-7",
                f"A's PREEMPT of B's key: {st}; B then reads the reservation {held!r}",
            )
            c.event("A won the disk back", "A")
            await c.observe(o, "A owns the disk again")
            st = await _on(b, "pr_out", "register-ignore", sa_key=kb)
            c.require(st == "GOOD", "RSPC4-5.13.7-3", f"B registers again: {st}")
            c.event("A and B preempt each other at once")
            sa_, sb_ = await asyncio.gather(
                _on(a, "pr_out", "preempt", key=ka, sa_key=kb, pr_type=t),
                _on(b, "pr_out", "preempt", key=kb, sa_key=ka, pr_type=t),
            )
            wins = [n for n, s in (("A", sa_), ("B", sb_)) if s == "GOOD"]
            loser = sb_ if wins == ["A"] else sa_
            c.require(
                len(wins) == 1 and loser == "RESERVATION CONFLICT",
                "RSPC4-5.13.11.2.4-1",
                f"crossing PREEMPTs: A {sa_}, B {sb_}: {len(wins)} winners, not exactly one with the other in RESERVATION CONFLICT",
            )
            winner, other = (a, b) if wins == ["A"] else (b, a)
            wkey = ka if winner is a else kb
            held = await _on(winner, "reservation")
            c.require(
                held is not None and held[0] == wkey,
                "RSPC4-5.13.11.2.4-1",
                f"{winner.name} won the arbitration but reads the reservation {held!r}",
            )
            c.event(f"{winner.name} won the simultaneous arbitration", winner.name)
            st = await _on(winner, "pr_out", "release", key=wkey, pr_type=t)
            held = await _on(other, "reservation")
            c.require(
                st == "GOOD" and held == (None, None),
                "RSPC4-5.9-8",
                f"{winner.name}'s RELEASE: {st}; {other.name} then reads the reservation {held!r}",
            )
            okey = kb if winner is a else ka
            await _on(other, "pr_out", "register-ignore", sa_key=okey)
            st = await _on(winner, "pr_out", "clear", key=wkey)
            keys = await _on(other, "keys")
            c.require(
                st == "GOOD" and keys == [],
                "RSPC4-5.9-9",
                f"{winner.name}'s CLEAR: {st}; {other.name} reads keys {[hex(k) for k in keys or []]}",
            )
            await c.observe(o, "cleared")
            for n, k in ((a, ka), (b, kb)):
                await _on(n, "pr_out", "register-ignore", sa_key=k)
            await _on(b, "pr_out", "reserve", key=kb, pr_type=t)
            st = await _on(b, "pr_out", "register-ignore", sa_key=0)
            held = await _on(a, "reservation")
            c.require(
                st == "GOOD" and held == (None, None),
                "RSPC4-5.13.11.2.3-1",
                f"holder B unregistered (REGISTER AND IGNORE EXISTING KEY, key 0): {st}; A then reads the reservation {held!r} (SPC-4 5.13.11.2.3: released with it)",
            )
            st = await _on(a, "pr_out", "register-ignore", sa_key=0)
            keys = await _on(a, "keys")
            c.require(
                st == "GOOD" and keys == [],
                "RSPC4-5.13.11.2.3-1",
                f"after both nodes unregistered A reads keys {[hex(k) for k in keys or []]}",
            )
            await c.observe(o, "both unregistered")


@spec(
    "Cluster.SameKind.FenceScsi",
    "SPC-4 5.13.11.2.5",
    "SPC-4 5.13.1",
    pairing="all",
    requirements=["RSPC4-5.13.7-3", "RSPC4-5.9-3", "RSPC4-5.13.11.2.5-1", "RSPC4-5.9-6"],
    needs=SAME_KIND_NEEDS,
    dataloss=True,
)
def test_same_kind_fence_scsi(initiator: Any, target: Any, second_hosts: _SecondHosts) -> None:
    """fence_scsi between two hosts of the pairing's initiator (two open-iscsi micro-VMs
    with sg_persist and dd over each kernel's block device, or two libiscsi sessions of
    their own initiator names): A unfences and holds Write Exclusive - Registrants Only,
    B unfences; A fails and B fences it with PREEMPT AND ABORT (PREEMPT where refused);
    A's key is gone in A's own view, A's WRITE does not land (read back by B), and B, a
    registrant, writes. A reference session only reads the state for the timeline
    (PERSISTENT RESERVE IN needs no registration)."""
    _run_same_kind(_same_kind_fence, initiator, target, second_hosts)


async def _same_kind_fence(initiator: Any, target: Any, second: _SecondHosts) -> None:
    ka, kb = node_key(CLUSTER_NAME, "host-a"), node_key(CLUSTER_NAME, "host-b")
    async with cluster(target, f"same-kind-fence-scsi-{initiator.name}") as c:
        o = await c.join("observer")
        async with hosts(c, initiator, target, second) as (a, b):
            st = await _on(a, "pr_out", "register-ignore", sa_key=ka)
            c.require(st == "GOOD", "RSPC4-5.13.7-3", f"A registers: {st}")
            st = await _on(a, "pr_out", "reserve", key=ka, pr_type=WE_RO)
            c.require(st == "GOOD", "RSPC4-5.9-3", f"A reserves WE-RO: {st}")
            st = await _on(b, "pr_out", "register-ignore", sa_key=kb)
            c.require(st == "GOOD", "RSPC4-5.13.7-3", f"B registers: {st}")
            mine = c.pattern("host-A")
            await _on(a, "write", LBA + 13, mine)
            await c.observe(o, "A holds, B registered")
            c.event("A fails; B fences A", "B")
            st = await _host_fence(c, b, kb, ka)
            c.require(st == "GOOD", "RSPC4-5.13.11.2.5-1", f"B's fence of A: {st}")
            state = await c.observe(o, "A fenced")
            seen_by_a = await _on(a, "keys") or []
            c.require(
                ka not in state.keys and ka not in seen_by_a and kb in seen_by_a,
                "RSPC4-5.13.11.2.5-1",
                f"after the fence the keys are {[hex(k) for k in state.keys]}, A reads {[hex(k) for k in seen_by_a]}: A's key shall be gone",
            )
            await _host_write_refused(
                c, a, b, LBA + 13, "host-A-fenced", mine, "RSPC4-5.9-6", "fenced A",
                conflict=False,
            )  # fmt: skip
            await _host_write_lands(c, b, b, LBA + 13, "host-B", "registrant B")


@spec(
    "Cluster.SameKind.Scsi2",
    "SPC-2 5.5.1",
    "SAM-2 5.9.7",
    pairing="all",
    requirements=["RSPC2-5.5.1-1", "RSPC2-5.5.1-3", "RSAM2-5.9.7-1"],
    needs=("reservations_scsi2", "initiator:persistent_reservations"),
    dataloss=True,
)
def test_same_kind_scsi2(initiator: Any, target: Any, second_hosts: _SecondHosts) -> None:
    """A legacy two-node cluster of hosts of the pairing's initiator, each holding its
    session: A takes RESERVE(6) and B's READ conflicts (SPC-2 5.5.1); B's RELEASE(6)
    completes with GOOD and releases nothing, so B's READ still conflicts; A's RELEASE
    frees the LU, B reads; A reserves again and B's LOGICAL UNIT RESET (open-iscsi:
    sg_reset --device, which the kernel sends as that TMF; libiscsi: its TMF call)
    releases it (SAM-2 5.9.7 through RFC 7143 11.5.1): B reads again."""
    _run_same_kind(_same_kind_scsi2, initiator, target, second_hosts)


async def _same_kind_scsi2(initiator: Any, target: Any, second: _SecondHosts) -> None:
    async with (
        cluster(target, f"same-kind-scsi2-{initiator.name}") as c,
        hosts(c, initiator, target, second) as (a, b),
    ):

        async def b_reads(why: str, requirement: str, *, conflict: bool) -> None:
            __tracebackhide__ = True
            st, _d = await _on(b, "read", LBA)
            ok = st == "RESERVATION CONFLICT" if conflict else st == "GOOD"
            c.require(ok, requirement, f"B's READ {why}: {st}")

        st = await _on(a, "reserve6")
        c.require(st == "GOOD", "RSPC2-5.5.1-1", f"A's RESERVE(6): {st}")
        c.event("A holds the SCSI-2 reservation", "A")
        await b_reads("while A holds the SCSI-2 reservation", "RSPC2-5.5.1-1", conflict=True)
        rel = await _on(b, "release6")
        await b_reads(
            f"after non-holder B's RELEASE(6) ({rel}): a RELEASE from another nexus released A's reservation",
            "RSPC2-5.5.1-1",
            conflict=True,
        )
        c.require(rel == "GOOD", "RSPC2-5.5.1-3", f"non-holder B's RELEASE(6): {rel}, not GOOD")
        st = await _on(a, "release6")
        c.require(st == "GOOD", "RSPC2-5.5.1-1", f"holder A's RELEASE(6): {st}")
        await b_reads("after A's RELEASE(6)", "RSPC2-5.5.1-1", conflict=False)
        st = await _on(a, "reserve6")
        c.require(st == "GOOD", "RSPC2-5.5.1-1", f"A's RESERVE(6) again: {st}")
        c.event("A holds the SCSI-2 reservation again; B resets the LU", "B")
        st = await _on(b, "lun_reset")
        answered = re.search(r'"tmf_response": (\d+)', st)  # iscsi-pr's Response field
        if answered and int(answered[1]) in (2, 5, 6, 255):
            # RFC 7143 11.6.1: LUN does not exist, not supported, authorization failed,
            # rejected: the target answered, and did not reset (as Cluster.Scsi2.Cleared)
            pytest.skip(f"B's LOGICAL UNIT RESET not performed (TMF response {answered[1]})")
        c.require(
            st == "GOOD",
            "RSAM2-5.9.7-1",
            f"B's LOGICAL UNIT RESET: {st} (no Task Management Function Response, or the host's reset failed: RFC 7143 11.5.1 has the target perform SAM-2's logical unit reset and answer it)",
        )
        await b_reads("after B's LOGICAL UNIT RESET", "RSAM2-5.9.7-1", conflict=False)


@spec(
    "Cluster.SameKind.Generation",
    "SPC-4 6.16.2",
    pairing="all",
    requirements=["RSPC4-6.16.2-1"],
    needs=SAME_KIND_NEEDS,
    dataloss=True,
)
def test_same_kind_generation(initiator: Any, target: Any, second_hosts: _SecondHosts) -> None:
    """PRgeneration through a failover between two hosts of the pairing's initiator, as
    each host reads it: REGISTER, PREEMPT and CLEAR increment it, RESERVE and RELEASE
    leave it (SPC-4 6.16.2 table 213)."""
    _run_same_kind(_same_kind_generation, initiator, target, second_hosts)


async def _same_kind_generation(initiator: Any, target: Any, second: _SecondHosts) -> None:
    ka, kb = node_key(CLUSTER_NAME, "gen-a"), node_key(CLUSTER_NAME, "gen-b")
    async with (
        cluster(target, f"same-kind-generation-{initiator.name}") as c,
        hosts(c, initiator, target, second) as (a, b),
    ):
        steps = [
            (a, "register", {"sa_key": ka}, 1),
            (b, "register", {"sa_key": kb}, 1),
            (a, "reserve", {"key": ka, "pr_type": WE_RO}, 0),
            (b, "preempt", {"key": kb, "sa_key": ka, "pr_type": WE_RO}, 1),
            (b, "release", {"key": kb, "pr_type": WE_RO}, 0),
            (b, "clear", {"key": kb}, 1),
        ]
        gen, _k = await _on(a, "read_keys")
        for n, (node, action, kw, inc) in enumerate(steps):
            st = await _on(node, "pr_out", action, **kw)
            c.require(st == "GOOD", "RSPC4-6.16.2-1", f"{node.name}'s {action}: {st}")
            reader = (a, b)[n % 2]  # each host reads it in turn
            new, _k = await _on(reader, "read_keys")
            c.require(
                gen is not None and new == (gen + inc) & 0xFFFFFFFF,
                "RSPC4-6.16.2-1",
                f"PRgeneration {gen} -> {new} (read by {reader.name}) after {node.name}'s {action} (SPC-4 6.16.2 table 213: {'incremented' if inc else 'not incremented'})",
            )
            gen = new


@spec(
    "Cluster.SameKind.ThreeNodes",
    "SPC-4 5.13.11.2.5",
    "SPC-4 5.13.11.2.6",
    "SPC-4 5.13.1",
    pairing="all",
    requirements=["RSPC4-5.13.7-3", "RSPC4-5.9-3", "RSPC4-5.13.11.2.5-1", "RSPC4-5.9-6"],
    needs=SAME_KIND_NEEDS,
    dataloss=True,
)
def test_same_kind_three_nodes(initiator: Any, target: Any, second_hosts: _SecondHosts) -> None:
    """Issue 13's scenario 6 with three hosts of the pairing's initiator: A holds Write
    Exclusive - Registrants Only, B and C are registered, B and C write. B fails
    (libiscsi: its process ends and the connection drops, no Logout; open-iscsi: its
    micro-VM resets for real and boots), and A fences it with PREEMPT AND ABORT
    (PREEMPT where refused) of B's key, which removes B's registration alone and leaves
    A's reservation as it was (SPC-4 5.13.11.2.5): C's key stays and C writes on, read
    back by A. B comes back (libiscsi: a new session, a new ISID; open-iscsi: logged in
    by itself at boot), finds its key gone, its WRITE does not land, and after REGISTER
    AND IGNORE EXISTING KEY it writes again. With open-iscsi: three micro-VMs (node C's
    booted once per module, as B's) and a reboot of B's (21 to 23 s a target in CI),
    heavy: ISCSI_CONFORMANCE_CLUSTER_HEAVY=1 runs it; libiscsi pairings always."""
    _run_same_kind(_same_kind_three_nodes, initiator, target, second_hosts)


async def _same_kind_three_nodes(initiator: Any, target: Any, second: _SecondHosts) -> None:
    if not hasattr(initiator.driver, "held_node") and not os.environ.get(ENV_HEAVY):
        pytest.skip(
            f"a third open-iscsi micro-VM and a reboot of the second: {ENV_HEAVY}=1 (tox -e "
            "cluster) runs it; Cluster.Mixed.Reboot resets an open-iscsi host in the default run"
        )
    k = {n: node_key(CLUSTER_NAME, f"same-three-{n}") for n in "abc"}
    loop = asyncio.get_running_loop()
    async with (
        cluster(target, f"same-kind-three-nodes-{initiator.name}") as c,
        hosts(c, initiator, target, second, ("A", "B", "C")) as (a, b, cn),
    ):
        o = await c.join("observer")
        await _hosts_register(c, (a, k["a"]), (b, k["b"]), (cn, k["c"]))
        st = await _on(a, "pr_out", "reserve", key=k["a"], pr_type=WE_RO)
        c.require(st == "GOOD", "RSPC4-5.9-3", f"A reserves WE-RO: {st}")
        mine_b, mine_c = c.pattern("host-B"), c.pattern("host-C")
        for n, lba, data in ((b, LBA + 25, mine_b), (cn, LBA + 26, mine_c)):
            st = await _on(n, "write", lba, data)
            c.require(
                st == "GOOD", "RSPC4-5.9-6", f"registrant {n.name}'s WRITE: {st}", level="SHOULD"
            )
        await c.observe(o, "A holds, B and C registered")
        reboot: Any = None
        if isinstance(b, LibiscsiHost):
            b.held.kill()
            c.event("B fails: its connection drops, no Logout", "B")
        else:
            assert isinstance(b, OpenIscsiHost)
            c.event("B's host resets (sysrq b)", "B")
            reboot = loop.run_in_executor(None, b.driver.reboot, b.session)
        try:
            st = await _host_fence(c, a, k["a"], k["b"])
            c.require(st == "GOOD", "RSPC4-5.13.11.2.5-1", f"A's fence of B: {st}")
            c.event("A fenced B", "A")
            keys = await _on(cn, "keys") or []
            held = await _on(cn, "reservation")
            c.require(
                k["b"] not in keys and {k["a"], k["c"]} <= set(keys) and held == (k["a"], WE_RO),
                "RSPC4-5.13.11.2.5-1",
                f"after A's PREEMPT of B's key C reads keys {[hex(x) for x in keys]}, reservation {held!r}: B's registration alone shall be gone and A's reservation stay as it was (SPC-4 5.13.11.2.5)",
            )
            await _host_write_lands(
                c, cn, a, LBA + 26, "host-C-after-fence", "C keeps its access after B was fenced"
            )
            await c.observe(o, "B fenced")
        finally:
            if reboot is not None:
                assert isinstance(b, OpenIscsiHost)
                b.session, seconds = await reboot
                c.event(f"B booted and logged in by itself after {seconds:.1f} s", "B")
        if isinstance(b, LibiscsiHost):
            b.held = await loop.run_in_executor(None, _held, *b.login)
            c.event(f"B restarts: a new session, ISID {b.held.isid}", "B")
        tur = await _on(b, "tur")
        keys = await _on(b, "keys")
        c.require(
            tur == "GOOD" and keys is not None and k["b"] not in keys,
            "RSPC4-5.13.11.2.5-1",
            f"B back: TEST UNIT READY {tur}, reads keys {[hex(x) for x in keys or []]} (its key shall be gone: fenced)",
        )
        await _host_write_refused(
            c, b, a, LBA + 25, "B-fenced", mine_b, "RSPC4-5.9-6",
            "fenced B (SPC-4 5.13.1: an unregistered nexus's write conflicts under Registrants Only)",
        )  # fmt: skip
        st = await _on(b, "pr_out", "register-ignore", sa_key=k["b"])
        c.event("B rejoins (unfences)", "B")
        await _host_write_lands(
            c, b, a, LBA + 25, "host-B-back", f"B registered again ({st})", also=st == "GOOD"
        )
        await c.observe(o, "B back, three hosts registered")


@spec(
    "Cluster.SameKind.Restart",
    "SPC-4 5.13.1",
    "SPC-4 5.13.7",
    pairing="all",
    requirements=["RSPC4-5.13.6-2", "RSPC4-5.9-11", "RSPC4-5.13.7-3", "RSPC4-5.9-6"],
    needs=SAME_KIND_NEEDS,
    dataloss=True,
)
def test_same_kind_restart(initiator: Any, target: Any, second_hosts: _SecondHosts) -> None:
    """Node restart between two hosts of the pairing's initiator: A holds Write
    Exclusive - Registrants Only and B is registered; A's host restarts (libiscsi: its
    connection drops with no Logout and it comes back through a new session with a new
    ISID, a new I_T nexus; open-iscsi: logout and login again through its node record,
    the same ISID). B reads A's key and reservation still there (SPC-4 5.13.1:
    registrations and the reservation outlive the I_T nexus). A brings the disk online
    as a cluster node does: TEST UNIT READY until it answers; from a new nexus its WRITE
    conflicts until it registers (SPC-4 5.13.1: that nexus is not registered); REGISTER
    AND IGNORE EXISTING KEY (fence_scsi's unfence at boot), its key read back, and a
    WRITE read back by B."""
    _run_same_kind(_same_kind_restart, initiator, target, second_hosts)


async def _same_kind_restart(initiator: Any, target: Any, second: _SecondHosts) -> None:
    ka, kb = node_key(CLUSTER_NAME, "restart-a"), node_key(CLUSTER_NAME, "restart-b")
    loop = asyncio.get_running_loop()
    async with (
        cluster(target, f"same-kind-restart-{initiator.name}") as c,
        hosts(c, initiator, target, second) as (a, b),
    ):
        o = await c.join("observer")
        await _hosts_register(c, (a, ka), (b, kb))
        st = await _on(a, "pr_out", "reserve", key=ka, pr_type=WE_RO)
        c.require(st == "GOOD", "RSPC4-5.9-3", f"A reserves WE-RO: {st}")
        await c.observe(o, "A holds, B registered")
        if isinstance(a, LibiscsiHost):
            a.held.kill()
            c.event("A's host fails: its connection drops, no Logout", "A")
        else:
            assert isinstance(a, OpenIscsiHost)
            await loop.run_in_executor(None, a.close)
            c.event("A's host shuts down (logout)", "A")
        keys = await _on(b, "keys") or []
        held = await _on(b, "reservation")
        c.require(
            ka in keys and held == (ka, WE_RO),
            "RSPC4-5.13.6-2",
            f"with A down B reads keys {[hex(k) for k in keys]}, reservation {held!r}: A's registration and reservation shall outlive its I_T nexus (SPC-4 5.13.1)",
        )
        await c.observe(o, "A down")
        new_nexus = isinstance(a, LibiscsiHost)
        if isinstance(a, LibiscsiHost):
            a.held = await loop.run_in_executor(None, _held, *a.login)
            c.event(f"A back: a new session, ISID {a.held.isid} (a new I_T nexus)", "A")
        else:
            a.session = await loop.run_in_executor(None, a.driver.login, target.endpoint())
            c.event("A back: logged in through its node record (the same ISID)", "A")
        tur = await _ready(a, _call)
        c.fact("new_nexus_after_restart", new_nexus)
        if new_nexus:
            w = await _on(a, "write", LBA + 27, c.pattern("A-unregistered-nexus"))
            c.require(
                w == "RESERVATION CONFLICT",
                "RSPC4-5.9-11",
                f"A's WRITE from its new, unregistered nexus: {w} (SPC-4 5.13.1: the registration belongs to the old I_T nexus)",
            )
        st = await _on(a, "pr_out", "register-ignore", sa_key=ka)
        keys = await _on(a, "keys") or []
        c.require(
            tur == "GOOD" and st == "GOOD" and ka in keys,
            "RSPC4-5.13.7-3",
            f"bring online: TEST UNIT READY {tur}, REGISTER AND IGNORE EXISTING KEY {st}, A reads keys {[hex(k) for k in keys]}",
        )
        await _host_write_lands(c, a, b, LBA + 27, "A-online", "A once online")
        await c.observe(o, "A online again")
