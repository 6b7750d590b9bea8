"""The iSNS area's tests can fail: each is run here against a broken world.

``conformance/isns/test_isns_discovery.py`` is imported by path and its test functions
are called with stand-ins for the fixtures:

- a target that registers a portal it does not serve, and one whose login answers
  another Portal Group Tag than the one iSNS lists: FindsTargetAndLogsIn fails
  (R4171-5.6.5.2-1);
- a server that ignores Discovery Domains (lists the target to the outsider):
  DomainsRestrict fails (R4171-5.6.5.2-2); an initiator that records and logs in to a
  target outside its domains (open-iscsi's commands answering so): it fails with
  R4171-5.6.5.2-3;
- a target that never registers, so no SCN comes (a real reference iSNS server on
  loopback, the real reference initiator watching): ScnActedOn fails (R4171-5.6.5.8-1).

Also: ``resolve_kind`` (the run's server choice) and a bad ``--isns-server`` value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.harness.isns_run import RegisteredTarget, resolve_kind
from iscsi_conformance.isns.client import DiscoveredTarget
from iscsi_conformance.plugin.spec import ConformanceViolation
from suite_modules import Notes, load_suite

T = "iqn.2024-01.org.iscsi-conformance:isns-proof-target"


SUITE = load_suite("isns/test_isns_discovery.py", "isns_discovery_under_proof")


@dataclasses.dataclass
class Session:
    negotiated: dict[str, str]


class Driver:
    """An initiator driver that logs in anywhere and answers ``tpgt``."""

    def __init__(self, tpgt: int = 1, guest_text: str = "") -> None:
        self.tpgt, self.guest_text = tpgt, guest_text
        self.logins: list[Any] = []
        self.mode = "container"

    def login(self, ep: Any, *, options: Any) -> Session:
        self.logins.append(ep)
        return Session({"TargetPortalGroupTag": str(self.tpgt)})

    def logout(self, session: Session) -> None:
        pass

    # open-iscsi's helpers, for the "never tried" check
    def _iface(self, name: str) -> str:
        return "iface0"

    def guest(self, argv: list[str], **kw: Any) -> Any:
        return _Result(0, self.guest_text)

    def iscsiadm(self, *args: str, **kw: Any) -> Any:
        return _Result(0, self.guest_text if "session" in args else "")


@dataclasses.dataclass
class _Result:
    returncode: int
    text: str
    error_text: str = ""


@dataclasses.dataclass
class Initiator:
    name: str
    driver: Driver
    evidence: Notes = dataclasses.field(default_factory=Notes)


@dataclasses.dataclass
class Target:
    name: str = "broken"
    evidence: Notes = dataclasses.field(default_factory=Notes)


class Server:
    """The run's iSNS server as the tests see it, listing what it is told to."""

    kind = "stand-in"
    address = host_side = ("127.0.0.1", 3205)

    def __init__(self, serves: tuple[str, int], listed: tuple[str, int, int], *, dds: bool = True):
        self.serves, self.listed, self.dds = serves, listed, dds
        self.members: dict[int, list[str]] = {}

    def unique_iqn(self, what: str) -> str:
        return f"iqn.2024-01.org.iscsi-conformance:proof-{what}"

    @contextlib.contextmanager
    def registered(self, target: Any) -> Iterator[RegisteredTarget]:
        yield RegisteredTarget(T, self.serves, 1, self.serves)

    def discover(self, source: str, *, timeout: float = 5.0) -> list[DiscoveredTarget]:
        if (
            self.dds
            and self.members
            and not any(source in m and T in m for m in self.members.values())
        ):
            return []
        return [DiscoveredTarget(T, "", (self.listed,))]

    def register_dd(self, name: str, members: list[str], *, source: str) -> int:
        self.members[len(self.members) + 1] = list(members)
        return len(self.members)

    def deregister_dd(self, dd_id: int, *, source: str) -> None:
        self.members.pop(dd_id, None)

    def check_alive(self) -> None:
        pass


def _fails(requirement: str, call: Any, *args: Any) -> str:
    with pytest.raises(ConformanceViolation) as info:
        call(*args)
    assert requirement in str(info.value), str(info.value)
    return str(info.value)


def test_a_conforming_world_passes() -> None:
    """The stand-ins themselves conform: the tests pass against them."""
    server = Server(("192.0.2.5", 3260), ("192.0.2.5", 3260, 1))
    SUITE.test_finds_target_and_logs_in(Initiator("reference", Driver()), Target(), server)
    libiscsi = Initiator("libiscsi", Driver())
    SUITE.test_domains_restrict(libiscsi, Target(), server)
    assert libiscsi.driver.logins == []  # listed nothing outside, so tried nothing
    assert "tried: nothing" in "".join(libiscsi.evidence.notes)


def test_a_target_registering_the_wrong_portal_fails() -> None:
    """tgt's case: iSNS lists another address than the one the target serves."""
    server = Server(("192.0.2.5", 3260), ("192.0.2.9", 3260, 1))
    driver = Driver()
    message = _fails(
        "R4171-5.6.5.2-1",
        SUITE.test_finds_target_and_logs_in,
        Initiator("reference", driver),
        Target(),
        server,
    )
    assert "not at the portal it serves 192.0.2.5:3260" in message
    assert driver.logins == []  # never sent to a portal the target does not serve


def test_a_login_answering_another_tpgt_fails() -> None:
    server = Server(("192.0.2.5", 3260), ("192.0.2.5", 3260, 1))
    message = _fails(
        "R4171-5.6.5.2-1",
        SUITE.test_finds_target_and_logs_in,
        Initiator("reference", Driver(tpgt=7)),
        Target(),
        server,
    )
    assert "TargetPortalGroupTag=7" in message


def test_a_server_ignoring_domains_fails() -> None:
    server = Server(("192.0.2.5", 3260), ("192.0.2.5", 3260, 1), dds=False)
    message = _fails(
        "R4171-5.6.5.2-2",
        SUITE.test_domains_restrict,
        Initiator("libiscsi", Driver()),
        Target(),
        server,
    )
    assert "was told of it" in message
    assert server.members == {}  # the domains were removed again


def test_a_bridge_given_a_target_outside_its_domains_tries_it_and_fails() -> None:
    """libiscsi's bridge: what iSNS lists to libiscsi's node, libiscsi tries; a server
    that lists the target outside the node's domains makes it try, and the check fails."""
    server = Server(("192.0.2.5", 3260), ("192.0.2.5", 3260, 1), dds=False)
    driver = Driver()
    initiator = Initiator("libiscsi", driver)
    message = _fails("R4171-5.6.5.2-3", SUITE._bridge_never_tries, initiator, server, "outsider", T)
    assert "was given it by iSNS and tried it" in message
    assert [ep.iqn for ep in driver.logins] == [T]
    assert "on libiscsi's behalf" in "".join(initiator.evidence.notes)


def test_an_initiator_trying_a_target_outside_its_domains_fails() -> None:
    """open-iscsi's answers say it recorded and logged in to the target anyway."""
    server = Server(("192.0.2.5", 3260), ("192.0.2.5", 3260, 1))
    driver = Driver(guest_text=f"tcp: [1] 192.0.2.5:3260,1 {T} (non-flash)\n")
    initiator = Initiator("open-iscsi", driver)

    def discover(initiator: Any, isns_server: Any, name: str) -> Any:
        return [(t.name, *p) for t in isns_server.discover(name) for p in t.portals], "stand-in"

    original = SUITE.discover
    SUITE.discover = discover
    try:
        _fails("R4171-5.6.5.2-3", SUITE.test_domains_restrict, initiator, Target(), server)
    finally:
        SUITE.discover = original


def test_no_scn_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A target that never registers: the reference initiator, watching a real
    reference iSNS server, gets no SCN, and the test says so."""
    from iscsi_conformance.isns.server import ISNSServer

    real = ISNSServer("127.0.0.1", 0, db_path=tmp_path / "isns.json")
    real.start_in_thread()
    try:
        server = Server(("127.0.0.1", 1), ("127.0.0.1", 1, 1))
        server.address = server.host_side = ("127.0.0.1", real.port)
        monkeypatch.setattr(SUITE, "TIMEOUT", 2.0)
        message = _fails("R4171-5.6.5.8-1", SUITE.test_scn_acted_on, Target(), server)
        assert f"no SCN naming {T}" in message
    finally:
        real.stop_thread()


def test_bridge_without_scn_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """libiscsi's bridge: a target that never registers, so the reference initiator
    watching as libiscsi's node gets no SCN, and libiscsi is never sent to log in."""
    from iscsi_conformance.isns.server import ISNSServer

    class Silent(Server):
        @contextlib.contextmanager
        def reference_target(self, iqn: str) -> Iterator[None]:
            yield None  # started, never registered

    real = ISNSServer("127.0.0.1", 0, db_path=tmp_path / "isns.json")
    real.start_in_thread()
    try:
        server = Silent(("127.0.0.1", 1), ("127.0.0.1", 1, 1))
        server.address = server.host_side = ("127.0.0.1", real.port)
        monkeypatch.setattr(SUITE, "TIMEOUT", 2.0)
        driver = Driver()
        initiator = Initiator("libiscsi", driver)
        message = _fails("R4171-5.6.5.8-1", SUITE._bridge_acts_on_scn, initiator, server)
        assert "reached the bridge" in message
        assert driver.logins == []
    finally:
        real.stop_thread()


def test_server_choice() -> None:
    assert resolve_kind(None, docker=True) == "isnsd"
    assert resolve_kind("auto", docker=False) == "reference"
    assert resolve_kind("isnsd", docker=False) == "isnsd"
    with pytest.raises(ConfigError, match="iSNS server must be one of"):
        resolve_kind("bogus", docker=True)


def test_bad_isns_server_option_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "iscsi_conformance.cli", "run", "--report", "/nonexistent",
         "--isns-server", "bogus"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "invalid choice: 'bogus'" in done.stderr.strip().splitlines()[-1]
