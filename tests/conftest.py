"""Shared set-up for the tests of our own code.

Provisioning: when tests marked ``peer`` are selected and we run as root, the
host is prepared once per run with ``ci/setup_host.sh`` (Debian packages, the Docker
engine); the peer fixtures then build images and micro-VMs as they need them.

In CI (``CI=true``) a peer test that skips is turned into a failure: a peer that
cannot start must make CI red, never silently vanish from the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_provisioned: dict[str, bool] = {}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker ignores SIGINT (its controller handles Ctrl-C), and a child
    process inherits an ignored signal: the tests that stop a ``peers start`` or a
    ``target`` child with Ctrl-C then wait for a child that cannot hear it. A worker
    takes Python's default handler back, so its children start with SIGINT default."""
    if hasattr(config, "workerinput"):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wants_peers = any(item.get_closest_marker("peer") for item in items)
    if not wants_peers or _provisioned or os.geteuid() != 0:
        return
    if os.environ.get("ISCSI_CONFORMANCE_NO_PROVISION"):
        return
    script = ROOT / "ci" / "setup_host.sh"
    if not script.exists():
        return
    _provisioned["done"] = True
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise pytest.UsageError(
            "provisioning the peers' host failed (ci/setup_host.sh, exit "
            f"{result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not _in_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    if item.get_closest_marker("peer") is None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"peer test skipped in CI (a peer that cannot start is a failure): {reason}"
