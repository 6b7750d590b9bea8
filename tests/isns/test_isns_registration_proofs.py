"""The iSNS.Registration tests can fail: each is run here against a broken world.

``conformance/isns/test_isns_registration.py`` is imported by path and its tests are
called with a stand-in for ``isns_server`` that lists what a broken target or server
would leave in the database, and a stand-in SendTargets answer:

- a target registering a portal, or a PGT, that its SendTargets answer does not name,
  and one the server does not list at all: WhatIsServed fails (R4171-5.6.5.2-1);
- a restart whose old portal stays listed beside the new one: ReplacedAfterRestart
  fails (R4171-5.6.5.1-1);
- a node still listed after its target stopped: DeregisteredAtStop fails
  (R4171-5.6.5.4-1, an informational row: the plugin records it, never fails it);
- a killed target never removed, and a live one removed: RemovedWhenEsiUnanswered
  fails (R4171-5.6.5.13-1).

The conforming stand-in passes all four. The tests against real servers and targets
are the iSNS area itself (reference and tgt, through isnsd or ours).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from iscsi_conformance.harness.isns_run import IsnsadmView, RegisteredTarget
from iscsi_conformance.plugin.spec import ConformanceViolation
from suite_modules import Notes, load_suite

HOST = "192.0.2.5"


SUITE = load_suite("isns/test_isns_registration.py", "isns_registration_under_proof")


@dataclasses.dataclass
class Target:
    name: str = "reference"
    evidence: Notes = dataclasses.field(default_factory=Notes)


@dataclasses.dataclass
class Running:
    registered: RegisteredTarget
    server: Server

    def kill(self) -> None:
        self.server.killed.add(self.registered.portal)


class Server:
    """The run's iSNS server as the tests see it. A conforming one lists the portals
    of live, registered targets; the flags break it one way each."""

    kind = "stand-in"

    def __init__(
        self,
        *,
        listed: tuple[str, int, int] | None = (HOST, 3260, 1),
        keeps_old: bool = False,
        keeps_stopped: bool = False,
        keeps_killed: bool = False,
        drops_live: bool = False,
    ) -> None:
        self.listed = listed
        self.keeps_old, self.keeps_stopped = keeps_old, keeps_stopped
        self.keeps_killed, self.drops_live = keeps_killed, drops_live
        self.live: dict[str, list[tuple[str, int]]] = {}
        self.stopped: set[str] = set()
        self.killed: set[tuple[str, int]] = set()
        self.next_port = 40000

    def unique_iqn(self, what: str) -> str:
        return f"iqn.2024-01.org.iscsi-conformance:proof-{what}"

    def _register(self, iqn: str, portal: tuple[str, int]) -> None:
        old = self.live.get(iqn, [])
        self.live[iqn] = [*old, portal] if self.keeps_old else [portal]
        self.stopped.discard(iqn)

    def _stop(self, iqn: str) -> None:
        if not self.keeps_stopped:
            self.stopped.add(iqn)

    @contextlib.contextmanager
    def registered(self, target: Any) -> Iterator[RegisteredTarget]:
        iqn = self.unique_iqn("target")
        self._register(iqn, (HOST, 3260))
        yield RegisteredTarget(iqn, (HOST, 3260), 1, (HOST, 3260))
        self._stop(iqn)

    @contextlib.contextmanager
    def reference_target(self, iqn: str, **kw: Any) -> Iterator[Running]:
        self.next_port += 1
        portal = (HOST, self.next_port)
        self._register(iqn, portal)
        yield Running(RegisteredTarget(iqn, portal, 1, portal), self)
        if portal not in self.killed:
            self._stop(iqn)

    @contextlib.contextmanager
    def dedicated(self, target: Any, iqn: str) -> Iterator[Running]:
        with self.reference_target(iqn) as running:
            yield running

    def portals_of(self, iqn: str) -> list[tuple[str, int, int | None]] | None:
        if iqn in self.stopped or iqn not in self.live:
            return None
        if iqn.endswith("target"):  # the pairing's target: what the flag says is listed
            return [self.listed] if self.listed else None
        alive = [p for p in self.live[iqn] if p not in self.killed or self.keeps_killed]
        if self.drops_live or not alive:
            return None
        return [(h, p, 1) for h, p in alive]

    #: what isnsadm sees instead of what the server lists (None: the same)
    isnsadm_sees: IsnsadmView | None = None

    def isnsadm_view(self, iqn: str) -> IsnsadmView:
        if self.isnsadm_sees is not None:
            return self.isnsadm_sees
        listed = self.portals_of(iqn)
        return IsnsadmView(((iqn, "Target"),) if listed else (), tuple(listed or ()), "")

    def check_alive(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """No waiting, and the target's SendTargets answer: HOST:3260 with TPGT 1."""
    monkeypatch.setattr(SUITE, "SETTLE", 0.2)
    monkeypatch.setattr(SUITE, "ESI_INTERVAL", 0)
    monkeypatch.setattr(SUITE, "_send_targets", lambda host, port: [(_target(), HOST, 3260, 1)])


def _target() -> str:
    return Server().unique_iqn("target")


_T = _target()


def _fails(requirement: str, call: Any, *args: Any) -> str:
    with pytest.raises(ConformanceViolation) as info:
        call(*args)
    assert requirement in str(info.value), str(info.value)
    return str(info.value)


def test_a_conforming_world_passes() -> None:
    SUITE.test_registration_is_what_is_served(Target(), Server())
    SUITE.test_restart_replaces_the_old_registration(Target(), Server())
    SUITE.test_stop_deregisters(Target(), Server())
    SUITE.test_killed_target_is_removed_when_esi_goes_unanswered(Target(), Server())


@pytest.mark.parametrize(
    ("listed", "says"),
    [((HOST, 3261, 1), "3261 with PGT 1"), ((HOST, 3260, 7), "PGT 7"), (None, "no portal")],
    ids=["portal-not-served", "pgt-not-answered", "not-listed"],
)
def test_a_registration_other_than_what_is_served_fails(
    listed: tuple[str, int, int] | None, says: str
) -> None:
    message = _fails(
        "R4171-5.6.5.2-1",
        SUITE.test_registration_is_what_is_served,
        Target(),
        Server(listed=listed),
    )
    assert says in message


@pytest.mark.parametrize(
    ("sees", "says"),
    [
        (IsnsadmView(((_T, "Target"),), ((HOST, 3260, 2),), ""), "the two clients disagree"),
        (IsnsadmView(((_T, "Initiator"),), ((HOST, 3260, 1),), ""), "sees no such Target"),
        (IsnsadmView((), (), ""), "sees no such Target"),
    ],
    ids=["other-pgt", "not-a-target", "no-node"],
)
def test_isnsadm_seeing_other_than_the_reference_client_fails(sees: IsnsadmView, says: str) -> None:
    """isnsadm is the second observer: where it disagrees with the reference client
    on the node or its portal groups, WhatIsServed fails."""
    server = Server()
    server.isnsadm_sees = sees
    message = _fails("R4171-5.6.5.2-1", SUITE.test_registration_is_what_is_served, Target(), server)
    assert says in message


def test_isnsadm_seeing_the_old_portal_or_a_stopped_node_fails() -> None:
    """isnsadm's end state counts too: the old portal still seen after a restart fails
    ReplacedAfterRestart, a node still seen after the stop fails DeregisteredAtStop."""
    server = Server()
    server.isnsadm_sees = IsnsadmView((), ((HOST, 40001, 1), (HOST, 40002, 1)), "")
    message = _fails(
        "R4171-5.6.5.1-1", SUITE.test_restart_replaces_the_old_registration, Target(), server
    )
    assert "isnsadm sees" in message
    server = Server()
    server.isnsadm_sees = IsnsadmView(((_T, "Target"),), (), "")
    message = _fails("R4171-5.6.5.4-1", SUITE.test_stop_deregisters, Target(), server)
    assert "isnsadm still sees" in message


#: isnsadm 0.101's ``--query iscsi-name=`` answer, as read from isnsd and ours
_ANSWER = f"""object[0] = <Network Entity>
  0001  string      : Entity identifier = "172.24.0.2"
  0007  uint32      : Entity index = 9
object[1] = <iSCSI Storage Node>
  0020  string      : iSCSI name = "{_T}"
  0021  uint32      : iSCSI node type = Target
object[2] = <Portal>
  0010  ipaddr      : Portal IP address = 172.24.0.1
  0011  uint32      : Portal TCP/UDP port = 3260/tcp
object[3] = <iSCSI Portal Group>
  0030  string      : Portal group name = "{_T}"
  0031  ipaddr      : Portal group address = 172.24.0.1
  0032  uint32      : Portal group port = 3260/tcp
  0033  uint32      : Portal group tag = 1
object[4] = <iSCSI Portal Group>
  0030  string      : Portal group name = "iqn.2024-01.org.example:other"
  0031  ipaddr      : Portal group address = 172.24.0.9
  0032  uint32      : Portal group port = 3261/tcp
  0033  uint32      : Portal group tag = 5
"""


def test_isnsadm_answer_is_read() -> None:
    view = IsnsadmView.parse(_ANSWER, _T)
    assert view.nodes == ((_T, "Target"),)
    assert view.portal_groups == (("172.24.0.1", 3260, 1),)  # the other node's PG left out
    assert IsnsadmView.parse("rc=1\nNo matching objects\n", _T).nodes == ()


def test_a_restart_leaving_the_old_portal_listed_fails() -> None:
    message = _fails(
        "R4171-5.6.5.1-1",
        SUITE.test_restart_replaces_the_old_registration,
        Target(),
        Server(keeps_old=True, keeps_killed=True),
    )
    assert "was not replaced" in message


def test_a_node_listed_after_its_target_stopped_fails() -> None:
    message = _fails(
        "R4171-5.6.5.4-1", SUITE.test_stop_deregisters, Target(), Server(keeps_stopped=True)
    )
    assert "did not deregister" in message


@pytest.mark.parametrize(
    ("server", "says"),
    [
        (Server(keeps_killed=True, keeps_stopped=True), "did not remove it"),
        (Server(drops_live=True), "alive and answering ESI, was removed"),
    ],
    ids=["killed-never-removed", "live-removed"],
)
def test_esi_monitoring_that_does_not_follow_the_target_fails(server: Server, says: str) -> None:
    message = _fails(
        "R4171-5.6.5.13-1",
        SUITE.test_killed_target_is_removed_when_esi_goes_unanswered,
        Target(),
        server,
    )
    assert says in message


def test_tgt_skips_the_esi_test_as_a_missing_capability() -> None:
    """tgt registers no ESI Port, which RFC 4171 leaves to the client: the ESI test
    skips naming the capability and the sections, and the report files it so."""
    from iscsi_conformance.report.skips import skip_cause

    with pytest.raises(pytest.skip.Exception) as skipped:
        SUITE.test_killed_target_is_removed_when_esi_goes_unanswered(Target("tgt"), Server())
    reason = str(skipped.value)
    assert "6.3.4" in reason and "6.2.6" in reason, reason
    cause = skip_cause(reason)
    assert cause is not None and (cause.kind, cause.name, cause.peer) == (
        "capability", "isns-esi", "tgt")  # fmt: skip


def test_tgt_restart_runs_on_a_tgtd_of_its_own() -> None:
    """The restart test runs for tgt too (a tgtd of its own, ``dedicated``): it passes
    on a server that replaces the entry and fails on one that keeps the old portal."""
    SUITE.test_restart_replaces_the_old_registration(Target("tgt"), Server())
    with pytest.raises(ConformanceViolation, match="was not replaced"):
        SUITE.test_restart_replaces_the_old_registration(
            Target("tgt"), Server(keeps_old=True, keeps_killed=True)
        )
