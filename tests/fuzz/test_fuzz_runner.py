"""The fuzzer: a bounded campaign against the reference target survives, and a
target that dies is caught (the liveness check can fail)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from iscsi_conformance.fuzz.runner import FuzzCase, ffp_cases, fuzz, login_cases
from iscsi_conformance.peers.base import LunSpec, TargetSpec
from iscsi_conformance.peers.registry import get_target_driver

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


@pytest.fixture(scope="module")
def reference_target() -> Iterator[tuple[str, int]]:
    driver = get_target_driver("reference")
    driver.start()
    try:
        ep = driver.configure(TargetSpec(iqn=IQN, luns=(LunSpec(8 * 1024 * 1024),)))
        yield ep.host, ep.port
    finally:
        driver.stop()


def test_campaign_against_reference_target(reference_target: tuple[str, int]) -> None:
    host, port = reference_target
    report = fuzz(host, port, IQN, max_examples=40, seconds=60, seed=1)
    assert report.examples > 0
    assert report.ok, report.failures
    assert sum(report.answers.values()) == report.examples


def test_dead_target_is_reported() -> None:
    """A 'target' that accepts one connection and then stops listening fails liveness."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve_once() -> None:
        conn, _ = srv.accept()
        conn.close()
        srv.close()

    threading.Thread(target=serve_once, daemon=True).start()
    report = fuzz("127.0.0.1", port, IQN, phase="login", max_examples=3, seconds=20, seed=2)
    assert not report.ok
    text = report.failures[0].lower()
    assert any(word in text for word in ("cannot reach", "refused", "broke", "liveness")), (
        report.failures
    )


def test_strategies_draw_cases() -> None:
    from hypothesis import given, settings

    @settings(max_examples=30, deadline=None)
    @given(login_cases())
    def login(case: FuzzCase) -> None:
        assert case.phase == "login" and len(case.pdus) == 1

    @settings(max_examples=30, deadline=None)
    @given(ffp_cases())
    def ffp(case: FuzzCase) -> None:
        assert (
            case.phase == "ffp" and 1 <= len(case.pdus) <= 3 and len(case.tampers) == len(case.pdus)
        )

    login()
    ffp()
