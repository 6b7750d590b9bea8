"""The Hypothesis state machine of sessions (fuzz.machine) can fail, shrinks what it
finds, and keeps its bounds (issue 14): a target scripted to break on one PDU
sequence is found and shrunk to that sequence, and its reproducer replays to the same
failure; a target that accepts a wrong CHAP_R is caught; a short run against the
reference target (CHAP accounts, MC/S, reinstatement) ends with no failure and within
its time budget.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.chap import ChapAuthenticator
from iscsi_conformance.fuzz.campaign import replay_once
from iscsi_conformance.fuzz.machine import Accounts, run_machine, with_accounts
from iscsi_conformance.fuzz.reference import InProcessSubject
from iscsi_conformance.fuzz.repro import load, save
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.server import TargetServer

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


def _subject(accounts: Accounts | None = None) -> InProcessSubject:
    if accounts is None:
        return InProcessSubject(IQN)
    return InProcessSubject(IQN, server_factory=lambda c: TargetServer(with_accounts(c, accounts)))


def _opcodes(pdus: list[bytes]) -> list[str]:
    return [type(P.decode(raw)[0]).__name__ for raw in pdus]  # type: ignore[index]


@pytest.fixture
def broken_target(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A reference target that raises when a Text Request comes on a connection that
    has seen a Task Management Function Request (the machine pings between rules)."""
    real = Connection.handle_pdu

    def broken_handle(self: Connection, pdu: P.PDU, now: float) -> None:
        if isinstance(pdu, P.TaskManagementRequest):
            self._fuzz_tmf = True  # type: ignore[attr-defined]
        elif isinstance(pdu, P.TextRequest) and getattr(self, "_fuzz_tmf", False):
            raise RuntimeError("scripted breakage")
        real(self, pdu, now)

    monkeypatch.setattr(Connection, "handle_pdu", broken_handle)
    with _subject() as subject:
        yield subject


def test_scripted_breakage_is_found_shrunk_and_replayed(broken_target: Any, tmp_path: Path) -> None:
    seconds = 30.0  # a bound for a loaded machine: found in about 1 s, shrunk in 3
    start = time.monotonic()
    report, _ = run_machine(broken_target.host, broken_target.port, IQN, seconds=seconds,
                              max_examples=2000, steps=5, health=broken_target, seed=1,
                              shrink_seconds=3)  # fmt: skip
    assert time.monotonic() - start <= seconds * 1.05 + 0.5
    key = ("internal-error", "RuntimeError at test_machine.py:broken_handle")
    assert key in report.failures, report.summary()
    f = report.failures[key]
    assert _opcodes(f.pdus)[-2:] == ["TaskManagementRequest", "TextRequest"], report.summary()
    assert len(f.pdus) <= 3, _opcodes(f.pdus)  # shrunk: at most one PDU before the pair
    assert "state.tmf(" in f.detail and "state.text(" in f.detail  # the program is in it
    path = save(f, tmp_path, target=report.target)
    finding = load(path)
    seen = asyncio.run(
        replay_once(broken_target.host, broken_target.port, IQN, finding["phase"],
                    finding["login_keys"], finding["pdus"], health=broken_target)
    )  # fmt: skip
    assert key in seen


def test_a_wrong_chap_response_accepted_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def accept_anything(self: ChapAuthenticator, pairs: Any) -> None:
        self.peer_name = pairs["CHAP_N"]

    monkeypatch.setattr(ChapAuthenticator, "_verify", accept_anything)
    accounts = Accounts.random()
    with _subject(accounts) as subject:
        report, _ = run_machine(subject.host, subject.port, IQN, seconds=30, max_examples=2000,
                                steps=5, health=subject, accounts=accounts, seed=2,
                                shrink_seconds=2)  # fmt: skip
    kinds = {f.kind: f for f in report.failures.values()}
    assert "auth-accepted" in kinds, report.summary()
    assert kinds["auth-accepted"].requirement == "R7143-12.1.3-3"
    assert accounts.chap.secret not in report.summary()


def test_short_run_against_the_reference_target_is_clean() -> None:
    accounts = Accounts.random()
    seconds = 2.0
    with _subject(accounts) as subject:
        start = time.monotonic()
        report, run = run_machine(subject.host, subject.port, IQN, seconds=seconds,
                                  max_examples=10_000, health=subject, accounts=accounts, seed=3)  # fmt: skip
        took = time.monotonic() - start
    assert took <= seconds * 1.05 + 0.5, took
    assert not report.failures, report.summary()
    assert run.examples >= 1 and report.cases >= 10, report.summary()  # it ran rules
