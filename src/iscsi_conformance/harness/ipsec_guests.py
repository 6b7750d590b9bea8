"""A kernel peer's micro-VM booted as a host of the IPsec protected path (kernel ESP).

Theory of operation: LIO and open-iscsi run in a micro-VM (their drivers' microvm
mode). To make such a guest a host of :class:`~iscsi_conformance.ipsec.ProtectedPath`,
:func:`boot_guest` boots it from the IPsec root file system (charon, swanctl, iptables:
``microvm.IPSEC_ROOTFS_PACKAGES``) with the ESP modules loaded (``microvm.IPSEC_CMDLINE``),
a tap device made beforehand as its second NIC (``ipsec.hosts.make_tap``: the link) and
charon's VICI port forwarded to this machine's loopback. It returns what
``ProtectedPath(guests=...)`` takes for that host: the guest's agent and the VICI
address. The IPsec area's fixture (``conformance/ipsec/conftest.py``) and
``benchmarks/bench_ipsec.py --kernel-esp`` boot their guests through it.

The ``ipsec`` package itself may not import the peer drivers (an import contract), so
this glue lives in the harness.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from iscsi_conformance.ipsec.guest import GUEST_VICI_PORT
from iscsi_conformance.ipsec.hosts import make_tap
from iscsi_conformance.peers import microvm

__all__ = ["boot_guest"]


def boot_guest(
    driver: Any, closers: list[Callable[[], None]], end: str = "i"
) -> tuple[Any, tuple[str, int]]:
    """Boot ``driver`` (a ``LioTarget`` or ``OpenIscsiInitiator`` in microvm mode) as a
    host of the protected path, its tap at link end ``end`` ("i", or "t" for the target
    guest of two). Its stop, and the tap's removal, go on ``closers`` first, so that a
    boot that fails half-way leaves nothing. Returns (the guest's agent, its VICI
    address) as ``ProtectedPath(guests={role: ...})`` takes them."""
    rootfs = microvm.build_rootfs(driver.log, packages=microvm.IPSEC_ROOTFS_PACKAGES)
    tap = make_tap(end=end)
    closers.append(lambda: _remove_tap(tap))
    driver.vm_options = {
        "rootfs": rootfs,
        "taps": (tap,),
        "forwards": {"vici": GUEST_VICI_PORT},
        "extra_cmdline": microvm.IPSEC_CMDLINE,  # the ESP modules
    }
    closers.append(driver.stop)
    driver.start()
    vm = driver.vm
    return vm, (vm.bind_host, vm.host_port("vici"))


def _remove_tap(name: str) -> None:
    """The tap, if it is still in this machine's namespace (once a path has moved it
    into one of its namespaces, the path's close removes it)."""
    subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10, check=False)
