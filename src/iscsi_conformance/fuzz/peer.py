"""A third-party target (its peer driver) as a fuzzing subject.

Theory of operation: ``DriverSubject`` starts the peer's driver (``peers.registry``),
configures one target with an 8 MiB LUN, and gives a campaign what ``Health`` asks:
``alive()`` is the driver's own health check, ``poll()`` is empty (a third-party log
is not ours to judge), and ``restart()`` stops the peer and starts it again on the
same port, so that a campaign goes on after a crash and shrinking can replay each
attempt against a fresh peer. ``deaths`` keeps what the driver said of each death
(e.g. "tgtd exited with status SIGSEGV").
"""

from __future__ import annotations

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

    def stop_process(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.stop()

    def restart(self, *, deadline: float | None = None) -> None:
        if self._driver is not None:
            why = self._driver.health()
            if why:
                self.deaths.append(why)
        self.stop_process()
        self.restarts += 1
        self.start()
