"""Where the conformance suite is, and the pytest argument list that runs it.

A leaf module (it imports nothing of ours): the CLI, ``certify`` and the plugin's
catalog all need these two facts, and none of them may import another for them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path


def suite_dir() -> Path:
    """The conformance suite: the source checkout's ``conformance/`` or the wheel's copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_suite", here.parent.parent / "conformance"):
        if candidate.is_dir() and any(candidate.rglob("test_*.py")):
            return candidate
    raise SystemExit(
        "iscsi-conformance: the conformance suite is not installed (no conformance/ folder found)"
    )


def pytest_args(args: argparse.Namespace, report: Path, extra: Sequence[str]) -> list[str]:
    argv = [
        str(suite_dir()),
        "--import-mode=importlib",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(suite_dir()),
        "-c",
        os.devnull,
        "--iscsi-report",
        str(report),
        # the CLI imported the plugin before pytest could rewrite its asserts: expected
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
    ]
    for t in getattr(args, "target", None) or []:
        argv += ["--iscsi-target", t]
    for i in getattr(args, "initiator", None) or []:
        argv += ["--iscsi-initiator", i]
    for s in getattr(args, "suite", None) or []:
        argv += ["--iscsi-suite", s]
    if getattr(args, "peer_mode", None):
        argv += ["--iscsi-peer-mode", args.peer_mode]
    if getattr(args, "workers", None):
        argv += ["-n", str(args.workers)]
    if getattr(args, "allure", None):
        argv += ["--alluredir", str(args.allure)]
    if getattr(args, "quiet", False):
        argv += ["-q"]
    argv += ["-rfE"]
    argv += list(extra)
    return argv
