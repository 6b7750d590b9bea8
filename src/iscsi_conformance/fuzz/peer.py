"""A third-party target (its peer driver) as a fuzzing subject.

Theory of operation: ``DriverSubject`` starts the peer's driver (``peers.registry``),
configures one target with an 8 MiB LUN, and gives a campaign what ``Health`` asks:
``alive()`` is the driver's own health check, ``poll()`` is empty (a third-party log
is not ours to judge), and ``restart()`` stops the peer and starts it again on the
same port, so that a campaign goes on after a crash and shrinking can replay each
attempt against a fresh peer. ``deaths`` keeps what the driver said of each death
(e.g. "tgtd exited with status SIGSEGV"). Stopping is bounded (``stop_limit``
seconds, 5 by default, and never past a restart's deadline): a peer whose driver does
not stop in time (tgtd fuzzed into not answering ``tgtadm``, whose calls wait 30 s
each) has its container removed by force, and ``hung`` says so.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any

from iscsi_conformance.fuzz.oracles import HealthEvent

__all__ = ["DriverSubject"]


class DriverSubject:
    """See the module doc."""

    def __init__(self, name: str, iqn: str, *, size: int = 8 * 1024 * 1024) -> None:
        self.name = name
        self.iqn = iqn
        self.size = size
        self.host = "127.0.0.1"
        self.port = 0
        self.restarts = 0
        self.deaths: list[str] = []
        self.hung: list[str] = []
        self.stop_limit = 5.0
        self._driver: Any = None

    def __enter__(self) -> DriverSubject:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_process()

    def start(self) -> None:
        from iscsi_conformance.peers.base import LunSpec, TargetSpec
        from iscsi_conformance.peers.registry import get_target_driver

        options: dict[str, Any] = {"port": self.port} if self.port else {}
        driver = get_target_driver(self.name, **options)
        self._driver = driver
        driver.start()
        ep = driver.configure(TargetSpec(iqn=self.iqn, luns=(LunSpec(self.size),)))
        self.host, self.port = ep.host, ep.port

    def version(self) -> str:
        return str(self._driver.version()) if self._driver is not None else "?"

    def alive(self) -> bool:
        return self._driver is not None and self._driver.health() is None

    def death(self) -> str | None:
        """How the peer died (the driver's health check), or None while it lives."""
        return str(self._driver.health()) if self._driver and self._driver.health() else None

    def poll(self) -> list[HealthEvent]:
        return []

    def stop_process(self, limit: float | None = None) -> None:
        driver, self._driver = self._driver, None
        if driver is None:
            return
        limit = self.stop_limit if limit is None else limit
        stopper = threading.Thread(target=driver.stop, name="fuzz-peer-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.5, limit))
        if stopper.is_alive():
            why = f"{self.name} did not stop within {limit:.1f} s (hung?): removed by force"
            self.hung.append(why)
            print(f"iscsi-conformance fuzz: {why}", file=sys.stderr)
            container = getattr(driver, "_container", None)
            env = getattr(driver, "_docker_env", None)
            if container is not None and env is not None:
                env.remove(container)  # docker rm -f: what the driver's stop would end with

    def restart(self, *, deadline: float | None = None) -> None:
        if self._driver is not None:
            why = self._driver.health()
            if why:
                self.deaths.append(why)
        left = None if deadline is None else max(0.5, deadline - time.monotonic() - 1.0)
        self.stop_process(None if left is None else min(self.stop_limit, left))
        self.restarts += 1
        self.start()
