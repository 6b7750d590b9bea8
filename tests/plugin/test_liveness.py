"""A target that dies during a test: that test fails with the exit status and the
peer's log, the target is restarted, and the run goes on (real tgtd on this host)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import os
import signal
import time

from iscsi_conformance.plugin import spec
from iscsi_conformance.harness.probe import full_feature


@spec("Liveness.Run.First", "RFC 7143 7.11")
async def test_1_first(target):
    async with full_feature(target) as ffp:
        assert (await ffp.command(bytes(6), lun=target.lun)).status is not None


@spec("Liveness.Run.Killer", "RFC 7143 7.11", requirements=["R7143-7.11-1"])
def test_2_killer(target):
    daemon = target.entry.driver._daemon
    os.kill(daemon.pid, signal.SIGSEGV)  # what tgtd 1.0.85 does to itself on stray Data-Out
    daemon.proc.wait(10)
    # the test body "passes": only the liveness check can fail it


@spec("Liveness.Run.After", "RFC 7143 7.11")
async def test_3_after(target):
    async with full_feature(target) as ffp:
        assert (await ffp.command(bytes(6), lun=target.lun)).status is not None
"""


@pytest.mark.peer
def test_dead_target_fails_its_test_and_is_restarted(pytester: pytest.Pytester) -> None:
    if shutil.which("tgtd") is None:
        pytest.skip("needs tgt on this host (ci/setup_host.sh)")
    pytester.makepyfile(test_liveness_suite=SUITE)
    result = pytester.runpytest(
        "-p",
        "no:randomly",
        "--iscsi-target",
        "tgt",
        "--iscsi-peer-mode",
        "native",
        "--iscsi-report",
        "out",
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=2, failed=1)
    assert "test_2_killer" in out and "died during this test" in out, out[-3000:]
    assert "SIGSEGV" in out, out[-3000:]
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    outcomes = {t["id"]: t["outcome"] for t in doc["tests"]}
    assert outcomes == {
        "Liveness.Run.First": "passed",
        "Liveness.Run.Killer": "failed",
        "Liveness.Run.After": "passed",
    }
    killer = next(t for t in doc["tests"] if t["id"] == "Liveness.Run.Killer")
    assert "R7143-7.11-1" in killer["message"] and "tgtd exited" in killer["message"]
    tgt = next(p for p in doc["peers"] if p["name"] == "tgt")
    # the restart is in the command log: tgtd started twice
    starts = [c for c in tgt["commands"] if c["argv"][:1] == ["tgtd"]]
    assert len(starts) == 2, [c["argv"] for c in tgt["commands"]]
    assert doc["runs"][0]["phases"]["restarts"] > 0


XDIST_SUITE = SUITE.replace(
    """    daemon = target.entry.driver._daemon
    os.kill(daemon.pid, signal.SIGSEGV)  # what tgtd 1.0.85 does to itself on stray Data-Out
    daemon.proc.wait(10)""",
    """    pid = target.entry.health["pid"]  # the worker holds no driver, only the handle
    os.kill(pid, signal.SIGSEGV)
    time.sleep(1)""",
)


@pytest.mark.peer
def test_under_xdist_a_dead_target_is_named_not_restarted(pytester: pytest.Pytester) -> None:
    """An xdist worker cannot restart the controller's target: the test during which it
    died fails saying so, and later tests of that target fail at once with the cause
    instead of a connection error each."""
    if shutil.which("tgtd") is None:
        pytest.skip("needs tgt on this host (ci/setup_host.sh)")
    assert "entry.health" in XDIST_SUITE
    pytester.makepyfile(test_liveness_suite=XDIST_SUITE)
    result = pytester.runpytest(
        "-n", "1", "-p", "no:randomly", "--iscsi-target", "tgt", "--iscsi-peer-mode", "native"
    )
    out = result.stdout.str()
    assert "died during this test" in out and "cannot restart" in out, out[-3000:]
    assert "died earlier in this run" in out, out[-3000:]
    result.assert_outcomes(passed=1, failed=1, errors=1)
