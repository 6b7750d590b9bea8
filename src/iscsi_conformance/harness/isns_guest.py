"""open-iscsi acting on an iSNS SCN, on a network of our own (RFC 4171 5.6.5.8, 2.9.2).

Theory of operation: open-iscsi's iscsid acts on SCNs through its discovery daemon
(usr/discoveryd.c, read in open-iscsi's source): for a discovery record of type isns
with ``discovery.isns.use_discoveryd = Yes``, iscsid forks a child that registers an
entity with one Portal per IPv4 address of the guest (every interface that is up and
not loopback), each with the same UDP SCN Port, registers its initiator node for SCNs
(Object Added, Removed, Updated, Target and Self only), discovers and logs in once, and
then, on each SCN naming a target, queries the server for that target and logs in to
its new portals (or out of the ones that went). ``discoveryd_poll_inval = -1`` keeps
it from polling, so a login after the change can only come from the SCN.

The server must reach the guest at a registered Portal, and RFC 4171 2.9.2 has it send
to each Portal with a UDP SCN Port, the guest's user-mode network address (10.0.2.15,
unroutable here) included. So the SCN cell lives on a network of its own, and nothing
it sends leaves it: a micro-VM of open-iscsi booted with a tap as second NIC (``eth1``),
the tap moved into a network namespace of ours (``ipsec.hosts.Link``), and in that
namespace the reference iSNS server and, once the guest has registered, the reference
target that registers with it (``--isns``). From the namespace only the tap's /24 is
routed: the SCN to 10.0.2.15 fails at once (ENETUNREACH), the one to ``eth1`` arrives.

``GuestScnStage`` builds all that and removes it on every exit (a registered exit
cleanup covers Ctrl-C). ``block_scn=True`` drops the namespace's outgoing UDP (an
iptables rule inside the namespace alone): the broken-on-purpose network on which the
same cell must fail.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from iscsi_conformance.core.isns import Tag
from iscsi_conformance.errors import HarnessError, PeerStartError

ISNS_PORT = 3205
ISCSI_PORT = 3260
#: The iSCSI Node SCN Bitmap's tag (6.4.4) as the server's database keys it
SCN_BITMAP = str(int(Tag.ISCSI_SCN_BITMAP))
#: iscsid's log in the guest (foreground, debug level 1: the SCNs it acts on)
GUEST_LOG = "/tmp/iscsid-isns.log"


class GuestScnStage:
    """A micro-VM of open-iscsi, a namespace holding our iSNS server and, later, a
    reference target, and the tap between them (see the module's docstring)."""

    def __init__(
        self, *, block_scn: bool = False, login_timeout: int = 5, isnsd: Any = None
    ) -> None:
        """``isnsd``: the run's isnsd (``harness.isns_run.RunIsnsServer``, started): the
        tap then goes into its container's network namespace, where a route makes the
        guest's user-mode network unreachable, and isnsd serves instead of ours."""
        from iscsi_conformance.peers.base import CommandLog

        self.isnsd = isnsd
        self._route = ""
        self.block_scn = block_scn
        self.login_timeout = login_timeout
        self.log = CommandLog()
        self.initiator: Any = None
        self.link: Any = None
        self._tap = ""
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._server: Any = None
        self._target: Any = None

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> GuestScnStage:
        from iscsi_conformance.ipsec.hosts import Link, make_tap, sweep
        from iscsi_conformance.peers.openiscsi import OpenIscsiInitiator
        from iscsi_conformance.peers.process import register_cleanup

        register_cleanup(self, "close")
        try:
            sweep()  # what a killed run left behind
            self._dir = tempfile.TemporaryDirectory(prefix="icc-isns-guest-")
            self._tap = make_tap()
            self.initiator = OpenIscsiInitiator(
                mode="microvm", login_timeout=self.login_timeout, vm_options={"taps": (self._tap,)}
            )
            self.initiator.start()
            if self._tap not in getattr(self.initiator.vm, "taps", ()):
                raise PeerStartError("open-iscsi", "its micro-VM has no tap (vm_options)")
            if self.isnsd is not None:
                self._into_isnsd(Link)
                if self.block_scn:
                    self.drop_udp()
                return self
            self.link = Link(guest=self.initiator.shell, guest_role="initiator").open()
            if self.block_scn:
                self.drop_udp()
            self._server = self._background(
                "isns",
                [
                    "isns",
                    "--listen",
                    f"{self.server_address}:{ISNS_PORT}",
                    "--db",
                    str(self.folder / "isns.json"),
                ],
            )
            self._wait(lambda: "listening" in self._server.tail(5), 30, "the iSNS server to listen")
        except subprocess.CalledProcessError as exc:
            self.close()
            why = f"{shlex.join(exc.cmd)}: {(exc.stderr or b'').decode(errors='replace').strip()}"
            raise PeerStartError("open-iscsi's SCN network", why) from exc
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _into_isnsd(self, link_class: Any) -> None:
        """The tap into isnsd's container namespace; the user-mode network unroutable."""
        from iscsi_conformance.peers.microvm import HOST_FROM_GUEST

        container = self.isnsd._container
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        self.link = link_class(
            guest=self.initiator.shell, guest_role="initiator", attach={"target": pid}
        ).open()
        self._route = HOST_FROM_GUEST.rsplit(".", 1)[0] + ".0/24"
        self._ns(["ip", "route", "add", "unreachable", self._route])

    def close(self) -> None:
        """Stop the target, the server, the VM; remove the namespace and the tap."""
        from iscsi_conformance.peers.process import unregister_cleanup

        for proc in (self._target, self._server):
            if proc is not None:
                proc.stop(timeout=10.0)
        self._target = self._server = None
        if self._route and self.link is not None:
            subprocess.run(
                ["ip", "-n", self.link.target.netns, "route", "del", "unreachable", self._route],
                capture_output=True, timeout=10, check=False,
            )  # fmt: skip
            self._route = ""
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.initiator is not None:
            self.initiator.stop()
            self.initiator = None
        if self._tap:
            subprocess.run(["ip", "link", "del", self._tap], capture_output=True, timeout=10)
            self._tap = ""
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        unregister_cleanup(self)

    # ------------------------------------------------------------------ plumbing

    @property
    def folder(self) -> Path:
        if self._dir is None:
            raise HarnessError("the SCN stage is not open")
        return Path(self._dir.name)

    @property
    def server_address(self) -> str:
        """The namespace's end of the tap: where the server and the target listen."""
        return str(self.link.target.address)

    @property
    def guest_address(self) -> str:
        """The guest's ``eth1``: the Portal the server can reach."""
        return str(self.link.initiator.address)

    def _ns(self, argv: list[str]) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", self.link.target.netns, *argv],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise HarnessError(f"{shlex.join(argv)} in the namespace: {done.stderr.strip()}")

    def drop_udp(self) -> None:
        """From now on the namespace drops its outgoing UDP: no SCN reaches the guest."""
        self._ns(["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])

    def _background(self, name: str, args: list[str]) -> Any:
        from iscsi_conformance.peers.process import BackgroundProcess

        argv = ["ip", "netns", "exec", self.link.target.netns,
                sys.executable, "-m", "iscsi_conformance.cli", *args]  # fmt: skip
        return BackgroundProcess(argv, log=self.log, log_path=self.folder / f"{name}.log")

    @staticmethod
    def _wait(predicate: Any, timeout: float, what: str) -> None:
        from iscsi_conformance.peers.process import wait_until

        if not wait_until(predicate, timeout=timeout, interval=0.3):
            raise HarnessError(f"timed out waiting for {what}")

    # ------------------------------------------------------------------ the guest

    def start_discoveryd(self) -> str:
        """Give iscsid an iSNS discovery record served by its daemon (no polling) and
        start iscsid again so that it forks that daemon; the commands run."""
        portal = f"{self.server_address}:{ISNS_PORT}"
        base = f"iscsiadm -m discoverydb -t isns -p {portal}"
        script = "\n".join([
            "set -e",
            f"{base} -o new >/dev/null",
            f"{base} -o update -n discovery.isns.use_discoveryd -v Yes",
            f"{base} -o update -n discovery.isns.discoveryd_poll_inval -v -1",
            "kill $(pidof iscsid) 2>/dev/null || true",
            "i=0; while pidof iscsid >/dev/null; do i=$((i+1)); [ $i -gt 50 ] && exit 1; sleep 0.1; done",
            f"(iscsid -f -d 1 >{GUEST_LOG} 2>&1 &)",
            "i=0; until iscsiadm -m session >/dev/null 2>&1 || [ $? -eq 21 ]; do"
            " i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done",
        ])  # fmt: skip
        res = self.initiator.guest(script, timeout=60)
        if res.returncode != 0:
            raise HarnessError(f"open-iscsi's discovery daemon did not start: {res.error_text}")
        return script

    def database(self) -> dict[str, Any]:
        """The server's database as it wrote it last (isns/database.py's JSON)."""
        path = self.folder / "isns.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def registered_for_scn(self, name: str) -> dict[str, Any] | None:
        """Node ``name`` as the server holds it once registered with an SCN Bitmap
        (``SCN_BITMAP``), with its entity's portals; None before."""
        db = self.database()
        for node in db.get("nodes", []):
            if node.get("name") == name and SCN_BITMAP in node.get("attrs", {}):
                portals = [p for p in db.get("portals", []) if p.get("eid") == node.get("eid")]
                return {"node": node, "portals": portals}
        return None

    def wait_registered(self, name: str, timeout: float) -> dict[str, Any]:
        """Once iscsid's daemon has registered ``name`` for SCNs: our server's record of
        it (its database), or for isnsd ``{}`` once iscsid logs its registration (it
        does so after its SCNReg, usr/discoveryd.c)."""
        found: dict[str, Any] | None = None

        def ready() -> bool:
            nonlocal found
            if self.isnsd is not None:
                found = {} if "Registered network entity" in self.guest_log() else None
            else:
                found = self.registered_for_scn(name)
            return found is not None

        self._wait(ready, timeout, f"{name} to register for SCN with the iSNS server")
        assert found is not None
        return found

    def start_target(self, iqn: str, timeout: float = 30.0) -> None:
        """A reference target in the namespace that registers ``iqn`` with the server."""
        self._target = self._background(
            "target",
            [
                "target",
                "--listen",
                f"{self.server_address}:{ISCSI_PORT}",
                "--target",
                iqn,
                "--lun",
                "1M",
                "--isns",
                f"{self.server_address}:{ISNS_PORT}",
            ],
        )
        self._wait(lambda: "registered with iSNS" in self._target.tail(20), timeout,
                   f"the reference target to register {iqn}")  # fmt: skip

    def deregister_node(self, iqn: str) -> None:
        """DevDereg (5.6.5.4) of node ``iqn`` alone, as itself, sent from inside the
        namespace: the node leaves the server while its target keeps serving."""
        from iscsi_conformance.core.isns import Attribute, FunctionId, Message, Status
        from iscsi_conformance.harness.isns_run import RunIsnsServer
        from iscsi_conformance.ipsec.hosts import call_in

        client = RunIsnsServer("reference")  # never started: its iSNSP calls only
        client.address = (self.server_address, ISNS_PORT)
        name = Attribute.of(Tag.ISCSI_NAME, iqn)
        msg = Message.request(
            FunctionId.DEV_DEREG, source=name, operating=[name],
            transaction_id=int(time.monotonic() * 1000) & 0xFFFF,
        )  # fmt: skip
        rsp = call_in(self.link.target, lambda: client._call(msg), timeout=30)
        if rsp.status != Status.SUCCESSFUL:
            raise HarnessError(f"DevDereg of {iqn} refused with status {rsp.status}")

    def wait_no_session(self, iqn: str, timeout: float) -> float | None:
        """Seconds until the guest has no session with ``iqn``; None if one stayed."""
        started = time.monotonic()
        while time.monotonic() < started + timeout:
            if iqn not in self.sessions():
                return time.monotonic() - started
            time.sleep(0.5)
        return None

    def sessions(self) -> str:
        return str(self.initiator.iscsiadm("-m", "session", timeout=20).text)

    def guest_log(self) -> str:
        return str(self.initiator.guest(["tail", "-n", "60", GUEST_LOG], timeout=20).text)

    def server_log(self) -> str:
        if self.isnsd is not None:
            return str(self.isnsd.log_tail(60))
        return str(self._server.tail(60)) if self._server is not None else ""

    def wait_session(self, iqn: str, timeout: float) -> float | None:
        """Seconds until the guest has a session with ``iqn``; None if none came."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if iqn in self.sessions():
                return time.monotonic() - started
            time.sleep(0.5)
        return None


__all__ = ["GuestScnStage"]
