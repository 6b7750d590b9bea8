"""Initiator.Window.ClosedHonoured can fail: it runs here with the reference initiator
against the reference target's real "window-closed" profile (embedded, loopback; the
window closed from the login on, opened to one command by ``set_cmd_window``), behind
the recording proxy.

- the reference initiator as it is (it holds non-immediate commands while CmdSN >
  MaxCmdSN, RFC 7143 4.2.2.1) passes;
- a copy that ignores the window sends into it and is caught by R7143-4.2.2.1-3; the
  test still ends promptly (the proxy holds the command until the window opens);
- a copy that never takes a larger MaxCmdSN stays within the window but never
  completes its I/O, and is reported under the same row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from proof_harness import ProofInitiator, ProofTarget, embedded, observers, reference_initiator

from iscsi_conformance.initiator.engine import SessionSequencer
from iscsi_conformance.plugin.spec import ConformanceViolation
from suite_modules import load_suite

SUITE = load_suite("initiator/test_cmd_window.py", "cmd_window_under_proof")
PROFILE = SUITE.PROFILE


class Target(ProofTarget):
    """The target as the test sees it, with the embedded reference target's test API to
    open a session's window (as ``TargetUnderTest.set_cmd_window`` does it)."""

    def set_cmd_window(self, tsih: int, window: int) -> None:
        server = self._server
        session = server.call(lambda: server.engine.sessions.get(tsih))
        if session is None:
            raise LookupError(f"no session with TSIH {tsih}")
        server.set_cmd_window(session, window)


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
    SUITE.test_closed_window_honoured(initiator, target, observed)


def test_window_ignored_fails(
    initiator: ProofInitiator, target: Target, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SessionSequencer, "window_open", lambda self: True)
    started = time.monotonic()
    with pytest.raises(ConformanceViolation, match=r"R7143-4\.2\.2\.1-3") as failed:
        SUITE.test_closed_window_honoured(initiator, target, observed)
    assert "beyond MaxCmdSN" in str(failed.value)
    assert "window still closed" in str(failed.value)
    assert time.monotonic() - started < 10.0  # held and passed on, not waited out


def test_window_never_taken_fails(
    initiator: ProofInitiator, target: Target, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = SessionSequencer.update_window

    def deaf(self: SessionSequencer, expcmdsn: int, maxcmdsn: int) -> str | None:
        return update(self, expcmdsn, self.maxcmdsn)  # a larger MaxCmdSN never taken

    monkeypatch.setattr(SessionSequencer, "update_window", deaf)
    monkeypatch.setattr(SUITE, "IO_LIMIT", 1.0)
    with pytest.raises(ConformanceViolation, match=r"R7143-4\.2\.2\.1-3") as failed:
        SUITE.test_closed_window_honoured(initiator, target, observed)
    assert "did not complete its I/O" in str(failed.value)
