"""A short fixed-seed campaign against the reference target ends with no failure of any
level: our reference target must never log an internal error nor break an invariant
of its answers, whatever the input (issue 14). This is CI's bounded campaign
(3,000 cases, seed 0, after the CVE-derived cases of fuzz.gen.cve_cases)."""

from __future__ import annotations

import time

from iscsi_conformance.fuzz.campaign import Campaign
from iscsi_conformance.fuzz.gen import cve_cases
from iscsi_conformance.fuzz.reference import InProcessSubject

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


def test_short_fixed_seed_campaign_against_reference_target() -> None:
    """The CI campaign: a fixed seed, a few seconds, zero failures of any level (our
    reference target must never log an internal error nor break an invariant)."""
    seconds = 30.0  # a bound for a loaded machine: 3,000 cases take about 1 s
    with InProcessSubject(IQN) as subject:
        start = time.monotonic()
        report = Campaign(subject.host, subject.port, IQN, seconds=seconds, seed=0,
                          max_cases=3000, health=subject).run()  # fmt: skip
        took = time.monotonic() - start
    assert took <= seconds * 1.05 + 0.5, took
    assert not report.failures, report.summary()
    assert report.cases >= 3000 and report.sessions > 10, report.summary()
    assert len(report.coverage) >= 10, report.summary()
    assert report.cve_cases == len(cve_cases(Campaign.__name__, IQN)), report.summary()
