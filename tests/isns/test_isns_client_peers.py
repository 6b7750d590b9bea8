"""The reference iSNS clients (target and initiator) against both iSNS servers.

Each test runs against open-isns's ``isnsd`` and against ours (``iscsi-conformance isns``),
each a subprocess on loopback under ``timeout``, stopped in a ``finally``. The reference
target runs as ``iscsi-conformance target ... --isns 127.0.0.1:PORT``; ``isnsadm``, a
client that shares no code with ours, judges what it registered (5.6.5.1): the node name,
the portal and the Portal Group's tag (6.5.4), which the login's TargetPortalGroupTag
(RFC 7143 13.9) must equal. Then: Ctrl-C (SIGINT) deregisters (5.6.5.4) and exits 0,
and the reference initiator discovers through iSNS and logs in, seeing only the
targets of its discovery domains (5.6.5.2, 5.6.5.3). A restart replacing the
registration (5.6.5.1), deregistration at stop and removal of a killed target whose
ESI goes unanswered (5.6.5.13) are the iSNS area's (conformance/isns/
test_isns_registration.py: ours in the embedded run, isnsd in the matrix).
tgt's built-in iSNS client (tgtadm ``iSNSServerIP``/``iSNSServerPort``/``iSNS``) is
judged the same way: what it registers is what it serves, it deregisters at stop, the
reference initiator finds it and logs in, and ``iSNSAccessControl`` follows the DDs.

Marked ``peer``: provisioning (tests/conftest.py, ci/setup_host.sh) installs open-isns
as root; in CI a missing tool fails, elsewhere it skips.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_programs import host_program as _tool
from iscsi_conformance.netutil import free_tcp_port as _free_port

pytestmark = pytest.mark.peer

T1 = "iqn.2024-01.org.iscsi-conformance:isns-client-t1"
T2 = "iqn.2024-01.org.iscsi-conformance:isns-client-t2"
INI = "iqn.2024-01.org.iscsi-conformance:isns-client-ini"
ADM = "iqn.2024-01.org.iscsi-conformance:isns-client-adm"
CLI = [sys.executable, "-m", "iscsi_conformance.cli"]


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait(predicate: object, what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {limit:.0f} s")
        time.sleep(0.3)


class Server:
    """One iSNS server process on loopback."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self.port = _free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log = tmp / f"{kind}.log"

    def start(self) -> None:
        if self.kind == "ours":
            cmd = [*CLI, "isns", "--listen", f"127.0.0.1:{self.port}",
                   "--db", str(self.tmp / "isns.json"), "--esi-threshold", "2"]  # fmt: skip
        else:
            (self.tmp / "db").mkdir(exist_ok=True)
            conf = self.tmp / "isnsd.conf"
            # ESIMinInterval: isnsd raises shorter ESI intervals to 60 s by default
            conf.write_text(
                f"Database = {self.tmp}/db\nPIDFile = {self.tmp}/isnsd.pid\n"
                f"ControlSocket = {self.tmp}/isnsctl\nBindAddress = 127.0.0.1:{self.port}\n"
                "Security = 0\nSLPRegister = 0\nDefaultDiscoveryDomain = 1\n"
                "ESIMinInterval = 1\nESIRetries = 2\n"
            )
            cmd = [_tool("isnsd"), "--config", str(conf), "--foreground"]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                ["timeout", "180", *cmd], stdout=out, stderr=subprocess.STDOUT, text=True
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the iSNS server did not start: {self.log.read_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def isnsadm(self, *args: str, source: str = ADM) -> str:
        conf = self.tmp / f"isnsadm-{source.rsplit(':', 1)[-1]}.conf"
        conf.write_text(f"ServerAddress = 127.0.0.1:{self.port}\nSourceName = {source}\n"
                        f"Security = 0\nControlSocket = {self.tmp}/isnsctl\n")  # fmt: skip
        done = subprocess.run(["timeout", "20", _tool("isnsadm"), "--config", str(conf), *args],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        self.check_alive()
        return f"rc={done.returncode}\n{done.stdout}{done.stderr}"

    def nodes(self) -> str:
        return self.isnsadm("--list", "nodes")

    def check_alive(self) -> None:
        """isnsd 0.101 now and then dies of a general protection fault in libisns
        (isns_socket_send, isns_print_attrs: seen in the kernel log) while it sends SCNs
        in these scenarios, more often under load. A server that died is that server's
        failure, not our client's: the case is reported as an expected failure with
        what happened, never as a pass."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            if self.kind == "isnsd":
                pytest.xfail(f"isnsd died (exit {code}) while serving our clients")
            pytest.fail(f"our iSNS server died (exit {code}): {self.log.read_text()[-2000:]}")


class Target:
    """``iscsi-conformance target --isns``: started, read until it registered."""

    def __init__(
        self, server: Server, name: str, port: int, *extra: str, config: Path | None = None
    ) -> None:
        self.log = server.tmp / f"target-{port}.log"
        serve = ["--config", str(config)] if config else [
            "--listen", f"127.0.0.1:{port}", "--target", name, "--lun", "1M",
            "--isns", f"127.0.0.1:{server.port}"]  # fmt: skip
        cmd = [*CLI, "target", *serve, *extra]
        self.out = self.log.open("w")
        self.proc = subprocess.Popen(
            ["timeout", "120", *cmd], stdout=self.out, stderr=subprocess.STDOUT, text=True
        )
        _wait(lambda: "registered with iSNS" in self.log.read_text() or self.proc.poll() is not None,
              "the target did not register")  # fmt: skip
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self, sig: int = signal.SIGINT) -> None:
        if sig == signal.SIGKILL and self.proc.poll() is None:
            # `timeout` forwards only the signals it catches: kill the target itself
            child = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                   text=True).stdout.split()  # fmt: skip
            for pid in child:
                os.kill(int(pid), signal.SIGKILL)
        _stop(self.proc, signal.SIGTERM if sig == signal.SIGKILL else sig)
        self.out.close()


@pytest.fixture(params=["isnsd", "ours"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    _tool("isnsadm")
    s = Server(request.param, tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _initiator(server: Server, *args: str, name: str = INI) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, "initiator", "discover", f"isns://127.0.0.1:{server.port}", "-i", name,
         "--timeout", "5", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    server.check_alive()
    return done


def test_target_registers_what_it_serves(server: Server) -> None:
    """isnsadm sees the node (type Target), its portal and a Portal Group with PGT 1,
    the reference target's portal group tag (5.6.5.1, 6.4.2, 6.5.4)."""
    port = _free_port()
    target = Target(server, T1, port)
    try:
        out = server.isnsadm("--query", f"iscsi-name={T1}")
        assert "rc=0" in out, out
        assert f'iSCSI name = "{T1}"' in out and "iSCSI node type = Target" in out, out
        assert re.search(rf"Portal TCP/UDP port\s*=\s*{port}/tcp", out), out
        assert re.search(rf"Portal group port\s*=\s*{port}/tcp", out), out
        assert re.search(r"Portal group tag\s*=\s*1\b", out), out
        assert re.search(r"ESI port\s*=\s*\d+/tcp", out), out
    finally:
        target.stop()


def test_ctrl_c_deregisters_and_exits_0(server: Server) -> None:
    """SIGINT (Ctrl-C) deregisters the entity (5.6.5.4) and the target exits 0."""
    target = Target(server, T1, _free_port())
    assert T1 in server.nodes()
    target.stop(signal.SIGINT)
    assert target.proc.returncode == 0, target.log.read_text()
    _wait(lambda: T1 not in server.nodes(), "the target was not deregistered at shutdown", 5)


def test_config_file_portal_groups_and_refresh(server: Server) -> None:
    """The ``[isns]`` table: two portal groups, T2 served on group 2 only, so T1 gets
    PGTs 1 and 2 and T2 only 2, with a NULL PGT on group 1's portal (6.5.4), which both
    servers would otherwise give an implicit PGT 1 (5.6.5.1); a 4-second registration
    period asked for, no ESI, and the registration outlives it by its refreshes, every
    2 s (6.2.6; isnsd keeps 3600 s: 6.2.6 leaves the period to the server)."""
    p1, p2 = _free_port(), _free_port()
    config = server.tmp / "target.toml"
    config.write_text(
        f'[[portal_groups]]\ntag = 1\nportals = ["127.0.0.1:{p1}"]\n'
        f'[[portal_groups]]\ntag = 2\nportals = ["127.0.0.1:{p2}"]\n'
        f'[[targets]]\nname = "{T1}"\n[[targets.luns]]\nlun = 0\nsize = "1M"\n'
        f'[[targets]]\nname = "{T2}"\nportal_groups = [2]\n'
        f'[[targets.luns]]\nlun = 0\nsize = "1M"\n'
        f'[isns]\nserver = "127.0.0.1:{server.port}"\nentity_id = "box.example"\n'
        "esi_interval = 0\nregistration_period = 4\n"
    )
    target = Target(server, T1, p1, config=config)
    try:
        time.sleep(6)
        for name, tags in ((T1, {(p1, 1), (p2, 2)}), (T2, {(p2, 2)})):
            # isnsadm prints a NULL PGT as <empty>: the regex takes numbers only
            out = server.isnsadm("--query", f"iscsi-name={name}")
            assert 'Entity identifier = "box.example"' in out, out
            groups = re.findall(
                rf'Portal group name = "{re.escape(name)}"\s*\n.*?\n\s*\S+\s+uint32\s*: '
                r"Portal group port = (\d+)/tcp\s*\n\s*\S+\s+uint32\s*: Portal group tag = (\d+)",
                out,
            )
            assert {(int(p), int(t)) for p, t in groups} == tags, out
    finally:
        target.stop()


def test_initiator_discovers_and_logs_in(server: Server) -> None:
    """DevGetNext + DevAttrQry list the target with its portal and PGT; the login to it
    is answered with TargetPortalGroupTag equal to that PGT (RFC 7143 13.9)."""
    port = _free_port()
    target = Target(server, T1, port)
    try:
        done = _initiator(server, "--login")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Target: {T1}\n  Portal: 127.0.0.1:{port},1\n" in done.stdout
        assert f"Logged in: {T1} at 127.0.0.1:{port} TSIH" in done.stdout
        assert "TPGT 1 (iSNS PGT 1)" in done.stdout
    finally:
        target.stop()
    assert INI not in server.nodes()  # the initiator deregistered too


def test_initiator_acts_on_scn(server: Server) -> None:
    """``discover --watch``: the initiator registers a portal with an SCN port (6.3.7),
    and a target that registers, then deregisters, reaches it as Object Added and
    Object Removed SCNs (5.6.5.8, 6.4.4), after which it lists the targets again."""
    watch = subprocess.Popen(
        [*CLI, "initiator", "discover", f"isns://127.0.0.1:{server.port}", "-i", INI,
         "--timeout", "5", "--watch", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait(lambda: INI in server.nodes(), "the watching initiator did not register")
        port = _free_port()
        target = Target(server, T1, port)
        time.sleep(1.5)
        target.stop()
        out, _ = watch.communicate(timeout=30)
    finally:
        _stop(watch)  # type: ignore[arg-type]
    server.check_alive()
    added = re.search(rf"SCN: \S*object_added\S* {re.escape(T1)}\n", out)
    assert added, out
    assert f"Target: {T1}\n  Portal: 127.0.0.1:{port},1\n" in out[added.end() :], out
    assert re.search(rf"SCN: \S*object_removed\S* {re.escape(T1)}\n", out[added.end() :]), out


def test_discovery_domains_restrict_what_the_initiator_finds(server: Server) -> None:
    """A DD holding the initiator and T1 only: T2 is never returned (5.6.5.2, 5.6.5.3),
    and a login asked for T2 finds nothing to log in to."""
    # no ESI/SCN port: isnsd 0.101 dies now and then while it sends the SCNs of this
    # scenario (Server.check_alive); SCN delivery is exercised by the other tests
    t1 = Target(server, T1, _free_port(), "--isns-esi-interval", "0")
    t2 = Target(server, T2, _free_port(), "--isns-esi-interval", "0")
    try:
        out = server.isnsadm("--dd-register", "dd-name=pair", f"member-name={T1}",
                             f"member-name={INI}", source=T1)  # fmt: skip
        assert "rc=0" in out, out
        out = server.isnsadm("--dd-register", "dd-name=other", f"member-name={T2}",
                             f"member-name={ADM}", source=T2)  # fmt: skip
        assert "rc=0" in out, out
        done = _initiator(server)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Target: {T1}" in done.stdout and T2 not in done.stdout, done.stdout
        refused = _initiator(server, "--login", T2)
        assert refused.returncode == 1 and T2 not in refused.stdout, refused.stdout
    finally:
        t1.stop()
        t2.stop()


# ------------------------------------------------------------------ tgt's built-in iSNS client

TGT = "iqn.2024-01.org.iscsi-conformance:isns-client-tgt"


@pytest.fixture
def tgt() -> Iterator[object]:
    """tgtd on this host (native mode of the tgt driver), stopped in a ``finally``."""
    _tool("tgtd")
    from iscsi_conformance.peers.tgt import TgtTarget

    drv = TgtTarget(mode="native")
    try:
        drv.start()
        yield drv
    finally:
        drv.stop()


def _tgt_isns_on(drv: object, server: Server) -> object:
    from iscsi_conformance.peers.base import LunSpec, TargetSpec

    ep = drv.configure(TargetSpec(TGT, (LunSpec(1 << 20),)))  # type: ignore[attr-defined]
    for name, value in (("iSNSServerIP", "127.0.0.1"), ("iSNSServerPort", str(server.port)),
                        ("iSNSAccessControl", "Off"), ("iSNS", "On")):  # fmt: skip
        drv.tgtadm("--op", "update", "--mode", "sys", "--name", name, "--value", value)  # type: ignore[attr-defined]
    _wait(lambda: TGT in server.nodes(), "tgt did not register with iSNS")
    return ep


def test_tgt_registers_what_it_serves_and_deregisters(server: Server, tgt: object) -> None:
    """tgt 1.0.85's iSNS client: isnsadm sees its node, its portal and PGT 1 (its TPGT);
    deleting tgtd's targets at stop deregisters them (5.6.5.4). Recorded, not judged
    here: tgt's Entity Identifier is its portal's IP address, shared by every tgtd on
    that address (6.2.1 has EIDs unique), it registers no ESI port and no PG object
    (the PGT 1 shown is each server's default), and its SCNDereg has no Delimiter
    (5.6.3); see the iSNS client helper's report."""
    ep = _tgt_isns_on(tgt, server)
    out = server.isnsadm("--query", f"iscsi-name={TGT}")
    assert "iSCSI node type = Target" in out, out
    assert re.search(rf"Portal TCP/UDP port\s*=\s*{ep.port}/tcp", out), out  # type: ignore[attr-defined]
    assert re.search(rf"Portal group tag\s*=\s*{ep.portal_group_tag}\b", out), out  # type: ignore[attr-defined]
    assert 'Entity identifier = "127.0.0.1"' in out, out  # the finding above
    tgt.stop()  # type: ignore[attr-defined]
    _wait(lambda: TGT not in server.nodes(), "tgt did not deregister at stop", 10)


def test_reference_initiator_finds_tgt_and_logs_in(server: Server, tgt: object) -> None:
    """The reference initiator discovers tgt's target through iSNS and logs in; the
    TargetPortalGroupTag of the login equals the PGT iSNS lists (RFC 7143 13.9)."""
    ep = _tgt_isns_on(tgt, server)
    done = _initiator(server, "--login", TGT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Portal: 127.0.0.1:{ep.port},{ep.portal_group_tag}" in done.stdout, done.stdout  # type: ignore[attr-defined]
    tpgt = ep.portal_group_tag  # type: ignore[attr-defined]
    assert f"TPGT {tpgt} (iSNS PGT {tpgt})" in done.stdout, done.stdout


def test_tgt_access_control_follows_discovery_domains(server: Server, tgt: object) -> None:
    """tgt's iSNSAccessControl: tgt asks iSNS which initiators share a DD with its
    target. An initiator in that DD finds the target and logs in (registered while it
    does); one outside never finds it, and a login it forces is refused (tgt answers
    0203 Not Found)."""
    from iscsi_conformance.peers.base import LunSpec, TargetSpec

    ep = tgt.configure(TargetSpec(TGT, (LunSpec(1 << 20),)))  # type: ignore[attr-defined]
    for name, value in (("iSNSServerIP", "127.0.0.1"), ("iSNSServerPort", str(server.port)),
                        ("iSNSAccessControl", "On"), ("iSNS", "On")):  # fmt: skip
        tgt.tgtadm("--op", "update", "--mode", "sys", "--name", name, "--value", value)  # type: ignore[attr-defined]
    _wait(lambda: TGT in server.nodes(), "tgt did not register with iSNS")
    out = server.isnsadm("--dd-register", "dd-name=acl", f"member-name={TGT}",
                         f"member-name={INI}", source=TGT)  # fmt: skip
    assert "rc=0" in out, out
    outsider = "iqn.2024-01.org.iscsi-conformance:isns-client-outsider"
    found = _initiator(server, "--login", TGT, name=outsider)
    assert found.returncode == 1 and TGT not in found.stdout, found.stdout + found.stderr
    forced = subprocess.run(
        [*CLI, "initiator", "login", f"iscsi://127.0.0.1:{ep.port}/{TGT}", "-i", outsider,  # type: ignore[attr-defined]
         "--timeout", "5"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert forced.returncode == 1 and "login failed" in forced.stderr, forced.stderr
    deadline = time.monotonic() + 15
    while True:  # tgt learns of the DD and the initiator through SCN and queries
        done = _initiator(server, "--login", TGT)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Logged in: {TGT}" in done.stdout
