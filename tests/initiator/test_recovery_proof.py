"""Initiator.Recovery.Erl2.WriteContinued can fail: it is run here with the reference
initiator against the reference target's real "erl2" profile (embedded, loopback),
behind the recording proxy that holds the WRITE's first R2T back while the target
drops the connection (Async event 2, Time2Wait 1 s).

- the reference initiator as it is (logout for recovery, Time2Wait, TASK REASSIGN)
  passes;
- a copy that reassigns on a new connection without logging the failed one out
  fails the MUST of R7143-7.2.2-2;
- a copy that does not wait Time2Wait, and one that does not recover at all, fail
  the informational R7143-7.2.2-3 (reported, not failed, by the grading);
- an initiator that offers ErrorRecoveryLevel 0 skips, naming its offer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from proof_harness import ProofInitiator, ProofTarget, embedded, observers, reference_initiator

from iscsi_conformance.initiator.client import Connection, RecoveryRecord, Session
from iscsi_conformance.plugin.spec import ConformanceViolation
from suite_modules import load_suite

SUITE = load_suite("initiator/test_recovery.py", "recovery_under_proof")
PROFILE = SUITE.PROFILE


class Target(ProofTarget):
    """The target as the test sees it, with the embedded reference target's test API
    for the 'connection drop' (as ``TargetUnderTest.send_async`` does it)."""

    def send_async(
        self, tsih: int, event: int, *, cid: int, time2wait: int, time2retain: int
    ) -> None:
        assert event == 2
        server = self._server
        conn = server.call(lambda: server.engine.sessions[tsih].connections[cid])
        server.drop_connection(conn, time2wait=time2wait, time2retain=time2retain)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with embedded(PROFILE) as (endpoints, server):
        yield Target(endpoints, server)


@pytest.fixture
def observed(target: Target) -> Iterator[Any]:
    yield from observers(target)


@pytest.fixture
def initiator() -> Iterator[ProofInitiator]:
    yield from reference_initiator()


def test_reference_initiator_passes(
    initiator: ProofInitiator, target: Target, observed: Any
) -> None:
    SUITE.test_write_continued_after_connection_failure(initiator, target, observed)


def test_reassign_before_logout_fails(
    initiator: ProofInitiator, target: Target, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_logout(self: Session, failed: Connection, record: RecoveryRecord) -> Connection:
        return await self.add_connection(keys=self._keys)  # a new CID, the old one left be

    monkeypatch.setattr(Session, "_recovery_connection", no_logout)
    with pytest.raises(ConformanceViolation, match=r"R7143-7\.2\.2-2") as failed:
        SUITE.test_write_continued_after_connection_failure(initiator, target, observed)
    assert "was sent before the failed connection" in str(failed.value)


def test_no_time2wait_fails(
    initiator: ProofInitiator, target: Target, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recover = Session._recover

    async def hasty(self: Session, *args: Any) -> None:
        self.drop_timers.clear()  # the Async Message's Time2Wait forgotten
        self.negotiated = dataclasses.replace(self.negotiated, default_time2wait=0)
        await recover(self, *args)

    monkeypatch.setattr(Session, "_recover", hasty)
    with pytest.raises(ConformanceViolation, match=r"R7143-7\.2\.2-3") as failed:
        SUITE.test_write_continued_after_connection_failure(initiator, target, observed)
    assert "before its Time2Wait" in str(failed.value)


def test_no_recovery_fails(
    initiator: ProofInitiator, target: Target, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Session, "recover_connections", False, raising=False)
    original = Session.__init__

    def init(self: Session, *args: Any, **kw: Any) -> None:
        original(self, *args, **kw)
        self.recover_connections = False

    monkeypatch.setattr(Session, "__init__", init)
    with pytest.raises(ConformanceViolation, match=r"R7143-7\.2\.2-3") as failed:
        SUITE.test_write_continued_after_connection_failure(initiator, target, observed)
    assert "did not reassign the task" in str(failed.value)


def test_an_initiator_offering_erl0_skips(
    initiator: ProofInitiator, target: Target, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SUITE, "OFFER", (("ErrorRecoveryLevel", "0"),))
    with pytest.raises(pytest.skip.Exception, match="offered ErrorRecoveryLevel=0"):
        SUITE.test_write_continued_after_connection_failure(initiator, target, observed)
