"""Hosts of the protected path: network namespaces joined by one veth link.

Theory of operation: :class:`Link` creates two namespaces (the initiator host and the
target host), moves one end of a veth pair into each, addresses and raises them, all
through netlink (pyroute2). The link is the one wire between them, where the suite
captures. Names carry this process's id (``isc<pid>i``, ``isc<pid>t``), so a later run
recognises what a killed run left behind and removes it first (:func:`sweep`): the
processes still inside those namespaces, then the namespaces (with them the veth and
charon's TUN devices). A host can also be a container's own network namespace
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

__all__ = ["Host", "Link", "call_in", "sweep"]

T = TypeVar("T")
PREFIX = "isc"
_NAME = re.compile(rf"^{PREFIX}(\d+)[it]$")
SUBNET = "10.77.0"


@dataclasses.dataclass(frozen=True)
class Host:
    """One end of the link: a namespace, its veth and its address."""

    role: str  # "initiator" or "target"
    netns: str
    ifname: str
    address: str
    attached: int = 0  # pid of the container whose namespace this is; 0: our own

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


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
    return removed


class Link:
    """Two namespaces and the veth between them; :meth:`close` removes everything."""

    def __init__(self, *, tag: str | None = None, attach: dict[str, int] | None = None) -> None:
        tag = tag or str(os.getpid())
        attach = attach or {}
        self.initiator = Host(
            "initiator", f"{PREFIX}{tag}i", f"{PREFIX}{tag}-i", f"{SUBNET}.1",
            attach.get("initiator", 0),
        )  # fmt: skip
        self.target = Host(
            "target", f"{PREFIX}{tag}t", f"{PREFIX}{tag}-t", f"{SUBNET}.2", attach.get("target", 0)
        )
        self._created: list[str] = []

    @property
    def hosts(self) -> tuple[Host, Host]:
        return (self.initiator, self.target)

    def open(self) -> Link:
        try:
            for host in self.hosts:
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
            with IPRoute() as ip:
                ip.link(
                    "add",
                    ifname=self.initiator.ifname,
                    kind="veth",
                    peer={"ifname": self.target.ifname, "net_ns_fd": self.target.netns},
                )
                index = ip.link_lookup(ifname=self.initiator.ifname)[0]
                ip.link("set", index=index, net_ns_fd=self.initiator.netns)
            for host in self.hosts:
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
