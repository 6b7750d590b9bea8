"""What the ``Initiator.*`` "can fail" proofs share (test_*_proof.py here): the
reference target embedded with the profiles a proof needs, seen as the suite's
``TargetUnderTest`` sees it; the recording proxy (``harness.observer``) in front of
it, as the plugin's ``observed`` fixture gives it; and the reference initiator.

A proof subclasses :class:`ProofTarget` for the target's test API its test uses
(``set_cmd_window``, ``send_async``, ...), and builds its three fixtures from
:func:`embedded`, :func:`observers` and :func:`reference_initiator`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from iscsi_conformance.harness.observer import Observer
from iscsi_conformance.harness.profiles import PROFILES, Credentials
from iscsi_conformance.peers.reference_initiator import ReferenceInitiator
from iscsi_conformance.peers.reference_target import ReferenceTargetDriver


class ProofTarget:
    """The run's target as a test sees it: the profiles' endpoints, no CHAP, and the
    embedded server for the test API a subclass adds."""

    def __init__(self, endpoints: dict[str, Any], server: Any) -> None:
        self._endpoints = endpoints
        self._server = server

    def chap_for(self, profile: str) -> tuple[None, None]:
        return None, None

    def endpoint(self, profile: str) -> Any:
        return self._endpoints[profile]


@dataclasses.dataclass
class ProofInitiator:
    driver: Any
    name: str = "reference"


@contextlib.contextmanager
def embedded(*profiles: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """The reference target, embedded on loopback, configured with ``profiles``:
    their endpoints by name, and its server; stopped on the way out."""
    driver = ReferenceTargetDriver(mode="embedded")
    try:
        endpoints = {
            name: driver.configure(PROFILES[name].build(Credentials.generate()))
            for name in profiles
        }
        yield endpoints, driver.server
    finally:
        driver.stop()


def observers(target: ProofTarget) -> Iterator[Any]:
    """The body of an ``observed`` fixture: ``make(profile, rewrite=None)`` puts a
    recording proxy in front of the profile's endpoint and returns the endpoint to use
    and the proxy; ``make.observers`` lists them; all are stopped at the end."""
    started: list[Observer] = []

    def make(profile: str, rewrite: Any = None) -> tuple[Any, Observer]:
        ep = target.endpoint(profile)
        obs = Observer(ep.host, ep.port, listen_host="127.0.0.1", label=profile, rewrite=rewrite)
        obs.start()
        started.append(obs)
        return dataclasses.replace(ep, host=obs.listen_host, port=obs.port), obs

    make.observers = started  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for obs in started:
            obs.stop()


def reference_initiator() -> Iterator[ProofInitiator]:
    """The body of an ``initiator`` fixture: the reference initiator's driver."""
    with ReferenceInitiator() as driver:
        yield ProofInitiator(driver)
