"""The ``isns_server`` fixture's object: the run's iSNS server as tests use it.

Theory of operation: the run has one iSNS server (``harness.isns_run``), started by
the first test that asks for it and stopped at the end of the session (the fixture's
teardown in ``conformance/isns/conftest.py``, and an exit cleanup for Ctrl-C).
``run --isns-server`` (the environment's ``ISCSI_CONFORMANCE_ISNS_SERVER``) picks it:
isnsd in a container on the run's docker network (the default where the run has one),
or the reference server. A server found dead before a test is started again (its database is lost:
each test registers what it needs). What a test gets, ``IsnsServerUnderTest``, adds the
pytest side: a target without the ``isns`` capability skips as not supported, a dead
isnsd after a test is an expected failure naming isnsd (open-isns 0.101 dies now and
then of a general protection fault in libisns while it sends SCNs), ours dead fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from iscsi_conformance.harness.isns_run import (
    ReferenceTargetProcess,
    RegisteredTarget,
    RunIsnsServer,
    resolve_kind,
)

#: ``run --isns-server`` sets it for the run's pytest processes (shards included).
ENV_SERVER = "ISCSI_CONFORMANCE_ISNS_SERVER"


def run_server(run: Any, pool: Any) -> RunIsnsServer:
    """The run's iSNS server (``run.isns``), started on first use, restarted if dead."""
    server: RunIsnsServer | None = getattr(run, "isns", None)
    if server is not None and server.started and server.alive() is not None:
        server.restart()
    if server is None:
        docker_env = getattr(pool, "docker_env", None)
        try:
            kind = resolve_kind(os.environ.get(ENV_SERVER), docker=docker_env is not None)
        except Exception as exc:
            pytest.fail(str(exc))
        server = RunIsnsServer(kind, docker_env=docker_env, listen_host=listen_host(pool))
        run.isns = server
    if not server.started:
        try:
            server.start()
        except Exception as exc:
            server.stop()
            pytest.fail(f"the run's {server.kind} iSNS server could not start: {exc}")
    return server


def listen_host(pool: Any) -> str:
    """Where servers of this process listen so that the run's peers reach them."""
    env = getattr(pool, "docker_env", None)
    return str(env.gateway) if env is not None else "127.0.0.1"


class IsnsServerUnderTest:
    """The run's iSNS server as a test holds it (see ``harness.isns_run``)."""

    def __init__(self, server: RunIsnsServer, pool: Any, node: Any) -> None:
        self.server = server
        self.pool = pool
        self.node = node

    def __repr__(self) -> str:
        return f"IsnsServerUnderTest({self.kind!r})"

    @property
    def kind(self) -> str:
        return self.server.kind

    @property
    def description(self) -> dict[str, Any]:
        return self.server.describe()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    @property
    def host_side(self) -> tuple[str, int]:
        return self.server.host_side

    def discover(self, source: str, *, timeout: float = 5.0) -> list[Any]:
        return self.server.discover(source, timeout=timeout)

    def register_dd(self, name: str, members: Sequence[str], *, source: str) -> int:
        return self.server.register_dd(name, members, source=source)

    def deregister_dd(self, dd_id: int, *, source: str) -> None:
        self.server.deregister_dd(dd_id, source=source)

    def portals_of(self, iqn: str) -> list[tuple[str, int, int | None]] | None:
        """The (host, port, PGT) portals the server lists for node ``iqn`` to an
        observer of the default Discovery Domain; None when it lists no such node."""
        for found in self.discover(self.unique_iqn("observer")):
            if found.name == iqn:
                return list(found.portals)
        return None

    def isnsadm_view(self, iqn: str) -> Any:
        """What isnsadm, an independent client, sees of node ``iqn`` on this server
        (``RunIsnsServer.isnsadm_view``). Without isnsadm: a failure in CI (provisioning
        installs open-isns-utils), None elsewhere, and the test says so."""
        from iscsi_conformance.errors import PeerStartError

        try:
            return self.server.isnsadm_view(iqn, observer=self.unique_iqn("isnsadm"))
        except PeerStartError as exc:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(str(exc))
            return None

    @contextlib.contextmanager
    def reference_target(
        self, iqn: str, *, port: int | None = None, esi_interval: int | None = None
    ) -> Iterator[ReferenceTargetProcess]:
        """A reference target process of the test's own that registers ``iqn`` (see
        ``RunIsnsServer.reference_target``): a test may kill it, or start it again."""
        with self.server.reference_target(
            iqn, listen_host(self.pool), port=port, esi_interval=esi_interval
        ) as running:
            yield running

    @contextlib.contextmanager
    def dedicated(self, target: Any, iqn: str) -> Iterator[Any]:
        """An instance of the pairing's target of the test's own that registers ``iqn``
        and that the test may kill (``.kill()``, ``.registered``): a reference target
        process, or for tgt a tgtd of its own on this host (the run's tgtd is shared)."""
        if target.name == "tgt":
            with self.server.tgt_target(iqn, listen_host(self.pool)) as running:
                target.evidence.note(
                    f"a tgtd of this test's own on this host (native, {running.driver.version()})"
                )
                yield running
        else:
            with self.reference_target(iqn) as running:
                yield running

    def check_alive(self) -> None:
        why = self.server.alive()
        if why is None:
            return
        if self.kind == "isnsd":
            pytest.xfail(f"isnsd died while serving the test ({why}): {self.server.log_tail(5)}")
        pytest.fail(f"our iSNS server died ({why}): {self.server.log_tail(20)}")

    def unique_iqn(self, what: str) -> str:
        """A target or initiator name of this test alone."""
        from iscsi_conformance.harness.profiles import IQN_PREFIX

        digest = hashlib.sha1(str(self.node.nodeid).encode()).hexdigest()[:8]
        return f"{IQN_PREFIX}:isns-{what}-{digest}"

    @contextlib.contextmanager
    def registered(self, target: Any, *, iqn: str | None = None) -> Iterator[RegisteredTarget]:
        """Make the pairing's target register with this server (deregistered on exit).

        A target whose manifest does not declare ``isns`` skips as not supported. The
        reference target registers as a dedicated process serving ``iqn`` (default:
        one of this test); tgt registers every target it serves."""
        from iscsi_conformance.harness.profiles import capability_satisfied

        if target.external or not capability_satisfied(target.manifest, "isns"):
            pytest.skip(f"{target.name} does not declare capability 'isns' (manifest)")
        with self.server.register_target(
            target.entry, iqn=iqn or self.unique_iqn("target"), listen_host=listen_host(self.pool)
        ) as reg:
            yield reg
        self.check_alive()


__all__ = ["ENV_SERVER", "IsnsServerUnderTest", "listen_host", "run_server"]
