"""The ``observed`` fixture: put the recording proxy between the initiator under test
and the reference target.

Theory of operation: initiator tests (``pairing="initiator"``) drive
``initiator.driver`` to the reference target of the run, but through an
:class:`~iscsi_conformance.harness.observer.Observer`, and then judge what the initiator
put on the wire. ``observed(profile="default", tamper=None)`` starts one proxy in
front of the target's endpoint for ``profile`` and returns ``(endpoint, observer)``:
the endpoint has the target's IQN and LUNs and the proxy's address: 127.0.0.1, or
this host's address on the run's docker network when the target listens there (drivers
of VM-based initiators translate loopback to what their VM reaches). Every connection
the proxy sees is registered as the test's evidence, so failures and the report show
its PDUs; the proxies stop at the end of the test.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iscsi_conformance.harness.observer import Observer, Rewrite
from iscsi_conformance.peers.base import TargetEndpoint

__all__ = ["ObservedFactory", "observed"]

ObservedFactory = Callable[..., tuple[TargetEndpoint, Observer]]


def _listen_host(target_host: str) -> str:
    """Where the proxy listens: beside the target when the target is on this host (the
    reference target listens on the run's docker network when initiators run in
    containers, which cannot reach this host's loopback), else on loopback."""
    family = socket.AF_INET6 if ":" in target_host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((target_host, 0))
    except OSError:
        return "127.0.0.1"
    return target_host


@pytest.fixture
def observed(target: Any, evidence: Any) -> Iterator[ObservedFactory]:
    """``observed(profile="default", tamper=None) -> (TargetEndpoint, Observer)``.

    ``tamper(conn, direction, pdu)`` may return the PDU (forward it untouched), another
    PDU or a list of PDUs (forward these, re-encoded), or None (drop it).
    """
    observers: list[Observer] = []

    def make(
        profile: str = "default", tamper: Rewrite | None = None
    ) -> tuple[TargetEndpoint, Observer]:
        ep = target.endpoint(profile)  # skips when the target cannot serve the profile
        host, port = ep.host_side or (ep.host, ep.port)
        obs = Observer(
            host,
            port,
            rewrite=tamper,
            listen_host=_listen_host(host),
            label=f"{profile} via proxy",
            on_connection=lambda conn: evidence.add_trace(conn.trace),
        )
        obs.start()
        observers.append(obs)
        proxied = dataclasses.replace(
            ep, host=obs.listen_host, port=obs.port, host_side=(obs.listen_host, obs.port)
        )
        return proxied, obs

    yield make
    for obs in observers:
        obs.stop()
