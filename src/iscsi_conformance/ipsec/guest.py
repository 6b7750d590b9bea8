"""A micro-VM guest as a host of the protected path: kernel ESP, charon driven over TCP.

Theory of operation: the kernel peers (LIO, open-iscsi) run in a micro-VM whose Debian
kernel has ESP (``esp4``, ``xfrm_user`` and the transforms, loaded at boot, see
``peers/microvm.py``) and whose root file system carries strongSwan's charon. The VM
gets a second NIC, a tap device that :class:`~iscsi_conformance.ipsec.hosts.Link`
created and then moved into the initiator host's namespace: that tap is the link, where
the suite captures (the guest's user-mode network is no link at all). In the guest the
NIC is ``eth1``.

:class:`GuestCharon` starts charon in the guest through the VM's agent with a
``strongswan.conf`` whose VICI socket listens on TCP (a port QEMU forwards to this
machine's loopback), so everything after start-up is the same VICI session as for a
namespace's charon. ESP runs in the guest kernel (backend ``kernel``): transport mode
and Extended Sequence Numbers are available there, unlike kernel-libipsec.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import vici

from iscsi_conformance.errors import HarnessError, PeerStartError

from .charon import CHARON, Charon, _conf
from .hosts import Host

__all__ = ["GUEST_VICI_PORT", "GuestCharon"]

GUEST_VICI_PORT = 4502
_CONF = "/etc/ic-strongswan.conf"
_LOG = "/tmp/ic-charon.log"


class GuestCharon(Charon):
    """charon in a micro-VM guest; ``vici_at`` is where QEMU forwards the guest's VICI port."""

    def __init__(self, host: Host, workdir: Path, *, shell: Any, vici_at: tuple[str, int]):
        super().__init__(host, workdir, backend="kernel")
        self.shell = shell
        self.vici_at = vici_at
        self._started = False

    def start(self, timeout: float = 60.0) -> GuestCharon:
        where = f"charon on the {self.host.role} host ({self.shell.where})"
        conf = _conf(self.workdir, "kernel", self.vici_path).replace(
            f"unix://{self.vici_path}", f"tcp://0.0.0.0:{GUEST_VICI_PORT}"
        )
        started = time.monotonic()
        self.shell.put(_CONF, conf.encode())
        res = self.shell.run(
            f"test -x {CHARON} || {{ echo 'no {CHARON} in the guest image'; exit 3; }}\n"
            f"STRONGSWAN_CONF={_CONF} setsid {CHARON} > {_LOG} 2>&1 < /dev/null &\n",
            timeout=20,
        )
        if res.returncode != 0:
            raise PeerStartError(where, res.text.strip() or res.error_text.strip())
        self._started = True
        self._record(["guest", f"STRONGSWAN_CONF={_CONF}", CHARON], 0, started)
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                self._connect()
                self.startup_seconds = time.monotonic() - started
                return self
            except (OSError, vici.exception.SessionException):
                time.sleep(0.3)
        tail = self.log_tail()
        self.stop()
        raise PeerStartError(
            where, f"no VICI answer at {self.vici_at} within {timeout:.0f} s", log_tail=tail
        )

    def _connect(self) -> None:
        sock = socket.create_connection(self.vici_at, timeout=30)
        try:
            session = vici.Session(sock)
            session.version()
        except BaseException:
            sock.close()
            raise
        self._sock, self._vici = sock, session

    def stop(self, timeout: float = 5.0) -> None:
        """Close the VICI session and end charon (its SAs go with it); the VM's own stop
        removes the rest (idempotent)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = self._vici = None
        if self._started:
            self._started = False
            with contextlib.suppress(HarnessError, OSError):
                self.shell.run("kill $(cat /run/charon.pid) 2>/dev/null; true", timeout=10)

    @property
    def running(self) -> bool:
        return self._vici is not None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.shell.run(f"tail -n {lines} {_LOG}", timeout=10).text
        except (HarnessError, OSError):
            return ""
        return self.mask(text)
