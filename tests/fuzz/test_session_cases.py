"""The seeded campaign's session-level cases (MC/S, session and connection
reinstatement, CHAP MD5/SHA-1/SHA-256/SHA3-256 one-way and mutual, CHAP values
spoiled) pass on the reference target and fail where it is broken on purpose: a
target that ignores a session reinstatement (the mutant
Login.Session.ReinstatementIgnored) and one that accepts any CHAP_R (issue 14). Each
such finding carries the same case as a program of the state machine, and that
program replays to the same failure."""

from __future__ import annotations

from typing import Any

import pytest

from iscsi_conformance.core.chap import ChapAuthenticator
from iscsi_conformance.fuzz.campaign import Campaign
from iscsi_conformance.fuzz.machine import Accounts, replay_program, with_accounts
from iscsi_conformance.fuzz.reference import InProcessSubject
from iscsi_conformance.mutation.mutants.login import no_reinstatement
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.target.server import TargetServer

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


@pytest.mark.parametrize("broken", ["none", "reinstatement", "chap"])
def test_session_cases(monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    patcher = Patcher()
    if broken == "reinstatement":
        no_reinstatement(patcher)
    if broken == "chap":

        def accept_anything(self: ChapAuthenticator, pairs: Any) -> None:
            self.peer_name = pairs["CHAP_N"]

        monkeypatch.setattr(ChapAuthenticator, "_verify", accept_anything)
    accounts = Accounts.random()
    try:
        with InProcessSubject(
            IQN, server_factory=lambda c: TargetServer(with_accounts(c, accounts))
        ) as subject:
            report = Campaign(subject.host, subject.port, IQN, seconds=1.5, seed=4, workers=2,
                              health=subject, accounts=accounts, login_ratio=0.0,
                              session_ratio=1.0, shrink=False).run()  # fmt: skip
            # each finding replays as the state machine's program (both connections)
            for f in report.failures.values():
                assert f.program, f
                seen, _run = replay_program(subject.host, subject.port, IQN, f.program,
                                            health=subject, accounts=accounts)  # fmt: skip
                assert f.identity in seen, (f.identity, seen, f.program)
    finally:
        patcher.undo()
    kinds = set(report.session_cases)
    assert {"mcs", "reinstate-session", "reinstate-connection", "chap", "bad-chap"} <= kinds
    found = {f.kind: f for f in report.failures.values()}
    if broken == "none":
        assert not found, report.summary()
    elif broken == "reinstatement":
        f = report.failures.get(("reinstatement", "old session still answers"))
        assert f is not None and f.requirement == "R7143-6.3.5-1", report.summary()
    else:
        assert found.get("auth-accepted") is not None, report.summary()
        assert found["auth-accepted"].requirement == "R7143-12.1.3-3"
        assert accounts.chap.secret not in report.summary()
