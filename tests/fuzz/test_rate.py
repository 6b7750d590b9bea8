"""``fuzz --rate``: a cap on the PDUs a campaign writes per second, so that a campaign
against someone's target can be throttled (issue 14). Every PDU written counts (the
cases', their pings, login steps, liveness checks); the achieved rate stays within 10%
of the cap, for the seeded engine and the state machine, and the progress line shows
it. The same campaigns without the cap write far more, so the cap is what held them."""

from __future__ import annotations

from iscsi_conformance.fuzz.campaign import Campaign
from iscsi_conformance.fuzz.cli import main
from iscsi_conformance.fuzz.machine import run_machine
from iscsi_conformance.fuzz.reference import InProcessSubject

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


def test_the_seeded_engine_keeps_the_cap() -> None:
    cap = 200.0
    lines: list[str] = []
    with InProcessSubject(IQN) as subject:
        capped = Campaign(subject.host, subject.port, IQN, seconds=3.0, seed=5, health=subject,
                          rate=cap, shrink=False, progress=lines.append).run()  # fmt: skip
        free = Campaign(subject.host, subject.port, IQN, seconds=1.0, seed=5, health=subject,
                        shrink=False).run()  # fmt: skip
    achieved = capped.sent / capped.seconds
    assert abs(achieved - cap) <= 0.1 * cap, capped.summary()
    assert capped.cases > 50 and not capped.failures, capped.summary()
    assert free.sent / free.seconds > 1.5 * cap, free.summary()  # the cap is what held it
    assert any("(cap 200)" in line and " sent " in line for line in lines), lines
    assert "rate cap 200 PDUs/s" in capped.summary()


def test_the_state_machine_keeps_the_cap() -> None:
    cap = 40.0
    with InProcessSubject(IQN) as subject:
        report, _run = run_machine(subject.host, subject.port, IQN, seconds=3.0, seed=6,
                                   health=subject, rate=cap, max_examples=10_000)  # fmt: skip
        free, _run = run_machine(subject.host, subject.port, IQN, seconds=1.5, seed=6,
                                 health=subject, max_examples=10_000)  # fmt: skip
    achieved = report.sent / report.seconds
    assert abs(achieved - cap) <= 0.1 * cap, (achieved, report.summary())
    assert not report.failures, report.summary()
    assert free.sent / free.seconds > 1.5 * cap, free.summary()


def test_rate_must_be_positive_and_for_a_target() -> None:
    assert main(["reference", "--rate", "0"]) == 2
    assert main(["--initiator", "reference", "--rate", "10"]) == 2
    assert main(["engine", "--rate", "10"]) == 2
