"""--max-fds / --max-rss turn a target's growth into a failure (issue 14, oracle 4): a
reference target scripted to leak one descriptor per login is caught by a campaign
with a descriptor limit, and the same campaign without the leak stays within it."""

from __future__ import annotations

import os
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.fuzz.campaign import Campaign
from iscsi_conformance.fuzz.reference import InProcessSubject
from iscsi_conformance.target.connection import Connection

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


class _Measured(InProcessSubject):
    """The in-process reference target, measured as this process (/proc/self)."""

    def rss_kib(self) -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def fds(self) -> int:
        return len(os.listdir("/proc/self/fd"))


def _campaign(subject: Any) -> Any:
    return Campaign(subject.host, subject.port, IQN, seconds=1.5, seed=5, workers=2,
                    health=subject, max_fds=24, max_rss_kib=512 * 1024, shrink=False).run()  # fmt: skip


@pytest.mark.parametrize("leak", [True, False], ids=["leaking", "clean"])
def test_descriptor_growth_is_a_failure(monkeypatch: pytest.MonkeyPatch, leak: bool) -> None:
    kept: list[Any] = []
    if leak:
        real = Connection.handle_pdu

        def leaky(self: Connection, pdu: P.PDU, now: float) -> None:
            if isinstance(pdu, P.LoginRequest):
                kept.append(open(os.devnull, "rb"))  # noqa: SIM115 (the leak)
            real(self, pdu, now)

        monkeypatch.setattr(Connection, "handle_pdu", leaky)
    try:
        with _Measured(IQN) as subject:
            report = _campaign(subject)
    finally:
        for f in kept:
            f.close()
    found = ("resources", "descriptors") in report.failures
    assert found == leak, report.summary()
    if leak:
        f = report.failures[("resources", "descriptors")]
        assert "rerun the campaign (--seed 5" in f.detail
        assert report.failing(strict=True) and not report.failing(strict=False)
