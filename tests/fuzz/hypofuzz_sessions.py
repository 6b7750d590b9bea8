"""The state machine of sessions (fuzz.machine) as a plain Hypothesis test, for hypofuzz.

Not collected by the unit tests (the name does not start with ``test_``): name it on
the command line. ``tox -e hypofuzz`` runs it under hypofuzz's coverage-guided engine
for a bounded time (docs/fuzzing.md, "hypofuzz"); ``pytest tests/fuzz/hypofuzz_sessions.py``
runs it once as an ordinary Hypothesis test. The reference target (in this process,
with the machine's CHAP accounts) starts at import and stops at exit; a failure is
a ``FuzzFinding`` whose class names its kind and place.
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

from hypothesis import HealthCheck, settings

from iscsi_conformance.fuzz.machine import Accounts, MachineRun, SessionMachine, with_accounts
from iscsi_conformance.fuzz.reference import InProcessSubject
from iscsi_conformance.target.server import TargetServer

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"

_accounts = Accounts.random()
_subject = InProcessSubject(
    IQN, server_factory=lambda c: TargetServer(with_accounts(c, _accounts))
).__enter__()
atexit.register(_subject.__exit__, None, None, None)


class HypofuzzSessions(SessionMachine):
    run = MachineRun(
        _subject.host, _subject.port, IQN, deadline=time.monotonic() + 10 * 86400,
        health=_subject, accounts=_accounts,
    )  # fmt: skip


HypofuzzSessions.run.shrink_seconds = 60.0


def _write_findings() -> None:
    """$ISCSI_CONFORMANCE_HYPOFUZZ_FINDINGS: where each finding's detail goes at exit
    (hypofuzz itself prints only that it found one)."""
    path = os.environ.get("ISCSI_CONFORMANCE_HYPOFUZZ_FINDINGS")
    if path and HypofuzzSessions.run.failures:
        text = "\n\n".join(
            f"{f.kind} at {f.place} ({f.count} time(s)):\n{f.detail}"
            for f in HypofuzzSessions.run.failures.values()
        )
        Path(path).write_text(text + "\n", encoding="utf-8")


atexit.register(_write_findings)
TestSessions = HypofuzzSessions.TestCase
TestSessions.settings = settings(
    max_examples=50, stateful_step_count=20, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
