"""The pytest plugin a mutant run loads (``-p iscsi_conformance.mutation.activate``).

It applies the mutant named by ``$ISCSI_CONFORMANCE_MUTANT`` before any peer starts
(the embedded reference target runs in this process, so the patches reach it) and
reverts it at the end; it appends one JSON line per test to the file named by
``$ISCSI_CONFORMANCE_MUTANT_OUT`` as each test ends, so a run stopped by its time
limit still says what it saw.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from iscsi_conformance.mutation.patching import Patcher

ENV_MUTANT = "ISCSI_CONFORMANCE_MUTANT"
ENV_OUT = "ISCSI_CONFORMANCE_MUTANT_OUT"

#: Imported before a mutant applies, so that its patches reach every copy.
TARGET_IMPORTS = (
    "iscsi_conformance.target.server",
    "iscsi_conformance.target.engine",
    "iscsi_conformance.target.connection",
    "iscsi_conformance.target.task",
    "iscsi_conformance.target.tmf",
    "iscsi_conformance.target.session",
    "iscsi_conformance.target.login",
    "iscsi_conformance.core.login.target",
    "iscsi_conformance.scsi.device",
    "iscsi_conformance.scsi.reservations",
    "iscsi_conformance.scsi.nolu",
)

_active: list[Patcher] = []


def activate(name: str) -> Patcher:
    """Apply the mutant ``name`` to this process's reference target; return its patcher."""
    from iscsi_conformance.mutation import get
    from iscsi_conformance.mutation.patching import Patcher

    for module in TARGET_IMPORTS:
        importlib.import_module(module)
    patcher = Patcher()
    try:
        get(name).apply(patcher)
    except BaseException:
        patcher.undo()
        raise
    return patcher


def pytest_configure(config: pytest.Config) -> None:
    name = os.environ.get(ENV_MUTANT)
    if name:
        _active.append(activate(name))


def pytest_unconfigure(config: pytest.Config) -> None:
    while _active:
        _active.pop().undo()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(ENV_OUT)
    if not path or (report.when == "teardown" and report.passed):
        return
    data: dict[str, Any] = next((v for k, v in report.user_properties if k == "iscsi"), {})
    if report.when == "call" or report.failed or report.skipped:
        status = getattr(report, "iscsi_status", None)  # a graded-down failure
        if hasattr(report, "wasxfail"):
            outcome = "xpassed" if report.passed else "xfailed"
        elif status:
            outcome = str(status)  # non-strict (a SHOULD broken) or informational
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = report.outcome
        message = ""
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = str(crash.message if crash is not None else report.longrepr)[:300]
        line = {
            "id": data.get("id") or report.nodeid,
            "nodeid": report.nodeid,
            "outcome": outcome,
            "grade": data.get("grade"),
            "message": message.splitlines()[0] if message else "",
        }
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
