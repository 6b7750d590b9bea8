"""Host programs the peer tests run (isnsd, isnsadm, tshark), found where Debian puts
them. ``tests/conftest.py`` provisions them as root before the first peer test; a
program still missing skips the test, which CI turns into a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def host_program(name: str) -> str:
    """The path of ``name`` (looked up when a test runs: provisioning comes after
    collection); fails at once in CI, skips elsewhere."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is required in CI (ci/setup_host.sh installs it)", pytrace=False)
        pytest.skip(f"{name} is not installed")
    return path
