"""Hosts of the protected path: network namespaces joined by one veth link.

Theory of operation: :class:`Link` creates two namespaces (the initiator host and the
target host), moves one end of a veth pair into each, addresses and raises them, all
through netlink (pyroute2). The link is the one wire between them, where the suite
captures. Names carry this process's id (``isc<pid>i``, ``isc<pid>t``), so a later run
recognises what a killed run left behind and removes it first (:func:`sweep`): the
processes still inside those namespaces, then the namespaces (with them the veth and
charon's TUN devices). A host can be a micro-VM's guest too (``guest``: its agent
shell; ``guest_role``: which host it is): the other end of the link is then a tap
device that :func:`make_tap` created before the VM booted (QEMU opened it) and that
``open`` moves into the other host's namespace; the guest's end is its ``eth1``. A host can also be a container's own network namespace
(``attach``: role -> the container's pid): ``ip netns attach`` names it, the veth end
goes into it, and closing only removes the name (the container's driver stops the
container; nothing inside it is killed). :func:`call_in` runs a function on a thread that has entered a
namespace, so sockets it opens (the reference initiator's) live on that host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetNS, netns

__all__ = ["Host", "Link", "call_in", "make_tap", "sweep"]

T = TypeVar("T")
PREFIX = "isc"
_NAME = re.compile(rf"^{PREFIX}(\d+)[itb]$")
_TAP = re.compile(rf"^{PREFIX}(\d+)-[it]$")
GUEST_IFNAME = "eth1"  # a guest's link NIC (its second, after the user-mode network)
SUBNET = "10.77.0"


@dataclasses.dataclass(frozen=True)
class Host:
    """One end of the link: a namespace, its veth and its address."""

    role: str  # "initiator" or "target"
    netns: str
    ifname: str
    address: str
    attached: int = 0  # pid of the container whose namespace this is; 0: our own
    shell: Any = None  # a micro-VM guest's agent (``run``/``put``); None: a namespace

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        if self.shell is not None:
            raise ValueError(f"the {self.role} host is a guest: run through its shell")
        return ["ip", "netns", "exec", self.netns, *argv]


def make_tap(tag: str | None = None, end: str = "i") -> str:
    """The tap device a guest's link NIC opens (made before the VM boots), named as
    :class:`Link` with the same ``tag`` expects it: ``end`` "i" for a lone guest or the
    initiator guest of two, "t" for the target guest of two."""
    name = f"{PREFIX}{tag or os.getpid()}-{end}"
    with IPRoute() as ip:
        if ip.link_lookup(ifname=name):
            ip.link("del", ifname=name)
    subprocess.run(
        ["ip", "tuntap", "add", "dev", name, "mode", "tap"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    return name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(name: str) -> None:
    out = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10, check=False
    )
    for pid in (int(p) for p in out.stdout.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sweep() -> list[str]:
    """Remove the namespaces of runs that are gone (killed); return their names."""
    removed = []
    for name in netns.listnetns():
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _kill_inside(name)
            with contextlib.suppress(Exception):
                netns.remove(name)
            removed.append(name)
    with IPRoute() as ip:
        for link in ip.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            m = _TAP.match(name)
            if m and not _alive(int(m.group(1))):
                with contextlib.suppress(Exception):
                    ip.link("del", index=link["index"])
                removed.append(name)
    return removed


class Link:
    """Two hosts and the one link between them; :meth:`close` removes everything.

    The link is a veth pair between two namespaces; with one guest host, the guest's
    tap moved into the other host's namespace; with two guest hosts, both taps on a
    bridge in a namespace of its own (``isc<tag>b``, bridge ``br0``, address ``.3``),
    which is then where the link is captured and from where a datagram can be put on it.
    """

    def __init__(
        self,
        *,
        tag: str | None = None,
        attach: dict[str, int] | None = None,
        guest: Any = None,
        guest_role: str = "target",
        guests: dict[str, Any] | None = None,
    ) -> None:
        """``guest``: the agent shell of a micro-VM that is the ``guest_role`` host;
        ``guests``: role -> agent shell, for one guest or two. A guest's tap comes from
        :func:`make_tap` with the same ``tag`` (end "t" for the target of two guests)."""
        tag = tag or str(os.getpid())
        attach = attach or {}
        if guest_role not in ("initiator", "target"):
            raise ValueError(f"guest_role must be initiator or target, not {guest_role!r}")
        shells = dict(guests or {})
        if guest is not None:
            shells[guest_role] = guest
        if set(shells) - {"initiator", "target"}:
            raise ValueError(f"guest roles must be initiator or target, not {sorted(shells)}")
        self.initiator = Host(
            "initiator", f"{PREFIX}{tag}i", f"{PREFIX}{tag}-i", f"{SUBNET}.1",
            attach.get("initiator", 0),
        )  # fmt: skip
        self.target = Host(
            "target", f"{PREFIX}{tag}t", f"{PREFIX}{tag}-t", f"{SUBNET}.2", attach.get("target", 0)
        )
        self._taps: list[str] = []
        self.bridge: Host | None = None
        if len(shells) == 2:
            self.bridge = Host("link", f"{PREFIX}{tag}b", "br0", f"{SUBNET}.3")
            self._taps = [f"{PREFIX}{tag}-i", f"{PREFIX}{tag}-t"]
        elif shells:
            self._taps = [f"{PREFIX}{tag}-i"]
        if "initiator" in shells:
            self.initiator = Host(
                "initiator", "", GUEST_IFNAME, f"{SUBNET}.1", shell=shells["initiator"]
            )
        if "target" in shells:
            self.target = Host("target", "", GUEST_IFNAME, f"{SUBNET}.2", shell=shells["target"])
        if len(shells) == 1 and "initiator" in shells:
            self.target = dataclasses.replace(self.target, ifname=self._taps[0])
        self._created: list[str] = []

    @property
    def hosts(self) -> tuple[Host, Host]:
        return (self.initiator, self.target)

    @property
    def guest(self) -> Host | None:
        """The (first) host that is a micro-VM guest, if one is."""
        return next((h for h in self.hosts if h.shell is not None), None)

    @property
    def namespace_side(self) -> Host:
        """Where the link is in one of our namespaces: the bridge between two guests, the
        other host's end beside one guest (its tap), else the initiator's veth end."""
        if self.bridge is not None:
            return self.bridge
        return self.target if self.initiator.shell is not None else self.initiator

    def open(self) -> Link:
        try:
            namespaces = [h for h in self.hosts if h.shell is None]
            if self.bridge is not None:
                namespaces.append(self.bridge)
            for host in namespaces:
                if host.netns in netns.listnetns():  # our own pid's leftover: reuse nothing
                    _kill_inside(host.netns)
                    netns.remove(host.netns)
                if host.attached:
                    subprocess.run(
                        ["ip", "netns", "attach", host.netns, str(host.attached)],
                        check=True, capture_output=True, timeout=10,
                    )  # fmt: skip
                else:
                    netns.create(host.netns)
                self._created.append(host.netns)
            side = self.namespace_side
            with IPRoute() as ip:
                if not self._taps:
                    ip.link(
                        "add",
                        ifname=self.initiator.ifname,
                        kind="veth",
                        peer={"ifname": self.target.ifname, "net_ns_fd": self.target.netns},
                    )
                for name in self._taps or [self.initiator.ifname]:  # the taps, or the veth
                    index = ip.link_lookup(ifname=name)[0]
                    ip.link("set", index=index, net_ns_fd=side.netns)
            if self.bridge is not None:
                with NetNS(self.bridge.netns) as ns:
                    ns.link("add", ifname="br0", kind="bridge")
                    br = ns.link_lookup(ifname="br0")[0]
                    for name in self._taps:
                        ns.link("set", index=ns.link_lookup(ifname=name)[0], master=br, state="up")
            for host in self.hosts:
                if host.shell is not None:
                    host.shell.run(
                        f"ip addr add {host.address}/24 dev {GUEST_IFNAME} && "
                        f"ip link set {GUEST_IFNAME} up",
                        check=True,
                        timeout=20,
                    )
            for host in [*namespaces]:
                with NetNS(host.netns) as ns:
                    index = ns.link_lookup(ifname=host.ifname)[0]
                    ns.addr("add", index=index, address=host.address, prefixlen=24)
                    ns.link("set", index=index, state="up")
                    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill what still runs inside, then remove the namespaces (idempotent)."""
        attached = {h.netns for h in self.hosts if h.attached}
        side = self.namespace_side.netns
        while self._created:
            name = self._created.pop()
            if name in attached:  # the veth end goes; the container's namespace stays
                for host in self.hosts:
                    if host.netns == name:
                        subprocess.run(
                            ["ip", "-n", name, "link", "del", host.ifname],
                            capture_output=True, timeout=10, check=False,
                        )  # fmt: skip
            else:
                _kill_inside(name)
            with contextlib.suppress(Exception):
                netns.remove(name)
        for tap in self._taps:  # a guest's tap, wherever it is now
            for where in (["-n", side], []):
                subprocess.run(
                    ["ip", *where, "link", "del", tap],
                    capture_output=True, timeout=10, check=False,
                )  # fmt: skip

    def __enter__(self) -> Link:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def call_in(host: Host, fn: Callable[[], T], *, timeout: float = 300.0) -> T:
    """Run ``fn`` on a thread inside ``host``'s namespace and return its result.

    ``setns(2)`` changes the calling thread only, so the caller's thread stays where
    it was; sockets keep the namespace they were created in.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            netns.setns(host.netns)
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"in-{host.netns}", daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(
            f"{host.role} host: still running after {time.monotonic() - started:.0f} s"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
