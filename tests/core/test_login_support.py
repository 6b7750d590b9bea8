"""Shared helpers for the login tests: configs, a deterministic rng, an in-memory wire."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from iscsi_conformance.core import pdu as wire
from iscsi_conformance.core.chap import ChapCredentials
from iscsi_conformance.core.login import (
    ChapTargetAuth,
    Event,
    ExistingSession,
    InitiatorLogin,
    TargetLogin,
    TargetLoginConfig,
    TargetNode,
    random_isid,
)

INITIATOR = "iqn.2024-01.com.example:host1"
TARGET = "iqn.2024-01.com.example:disk1"
ALICE = ChapCredentials("alice", b"alice-secret-0001")
TGT = ChapCredentials("disk1", b"target-secret-001")


def rng_from(start: int) -> Callable[[int], bytes]:
    counter = itertools.count(start)

    def rng(n: int) -> bytes:
        seed = next(counter).to_bytes(3, "big")
        return (seed * n)[:n]

    return rng


@dataclass
class Portal:
    """A tiny in-memory target portal: one node, a session table, TSIH allocation."""

    node: TargetNode = field(default_factory=lambda: TargetNode(TARGET))
    sessions: dict[int, ExistingSession] = field(default_factory=dict)
    next_tsih: int = 0x100
    keys: dict[str, str] = field(default_factory=dict)
    discovery: bool = True
    discovery_chap: ChapTargetAuth | None = None

    def config(self) -> TargetLoginConfig:
        def allocate() -> int:
            self.next_tsih += 1
            return self.next_tsih

        def by_isid(name: str, isid: int, target: str | None) -> ExistingSession | None:
            for s in self.sessions.values():
                if (s.initiator_name, s.isid, s.target_name) == (name, isid, target):
                    return s
            return None

        return TargetLoginConfig(
            lookup_target=lambda n: self.node if n == self.node.name else None,
            allocate_tsih=allocate,
            find_session=self.sessions.get,
            find_session_by_isid=by_isid,
            keys=self.keys,
            discovery=self.discovery,
            discovery_chap=self.discovery_chap,
        )

    def target(self) -> TargetLogin:
        return TargetLogin(self.config(), rng=rng_from(1), statsn=1000)


def initiator(**kw: object) -> InitiatorLogin:
    kw.setdefault("isid", random_isid(rng_from(7)))
    name = kw.pop("initiator_name", INITIATOR)
    target = kw.pop("target_name", TARGET)
    return InitiatorLogin(name, target, **kw)  # type: ignore[arg-type]


def through_wire(p: wire.PDU) -> wire.PDU:
    """Encode and decode, so everything exchanged is a real PDU (non-strict: broken
    requests made on purpose must still travel)."""
    data = wire.encode(p, strict=False)
    out = wire.decode(data)
    assert not isinstance(out, wire.NeedMore)
    decoded, used = out
    assert used == len(data)
    return decoded


def drive(
    i: InitiatorLogin, t: TargetLogin, *, limit: int = 200
) -> tuple[list[Event], list[Event]]:
    """Run a login to its end; return (initiator events, target events)."""
    ie: list[Event] = []
    te: list[Event] = []
    outgoing = i.start()
    for _ in range(limit):
        if not outgoing:
            break
        nxt = []
        for req in outgoing:
            te += t.receive_pdu(through_wire(req))
            for rsp in t.data_to_send():
                ie += i.receive_pdu(through_wire(rsp))
                nxt += i.data_to_send()
        outgoing = nxt
    else:  # pragma: no cover - a loop would be a bug
        raise AssertionError("login did not finish")
    return ie, te
