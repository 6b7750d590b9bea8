"""Findings of the hostile-target fuzzer in third-party initiators, each with its
reproducer under fixtures/fuzz/initiators/: each replays against the initiator and must
still show what was recorded. When a new version no longer does, this fails: the
finding goes (its file and this case), as a deviation that no longer holds does
(issue 14)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from iscsi_conformance.fuzz.hostile import replay_finding
from iscsi_conformance.fuzz.repro import load

INITIATORS = Path(__file__).parents[2] / "fixtures" / "fuzz" / "initiators"


def _version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.peer
def test_libiscsi_uses_a_header_digest_the_target_left_unanswered() -> None:
    """libiscsi 1.19.0 (iscsi-inq): a final Login Response that leaves HeaderDigest
    unanswered (its other keys hostile) is taken as success, and every PDU after it
    carries the CRC32C header digest libiscsi offered but the target never agreed to;
    the target's answer (without one) is then never complete for libiscsi, which waits
    forever. Informational: a hang of a third-party initiator (no RFC text bounds its
    wait); the capture beside the reproducer shows the digest on the TEST UNIT READY."""
    if shutil.which("iscsi-inq") is None:
        if os.environ.get("CI"):
            pytest.fail("libiscsi's tools (iscsi-inq) are not installed")
        pytest.skip("libiscsi's tools are not installed")
    version = _version("libiscsi-bin")
    if version and not version.startswith("1.19.0"):
        pytest.fail(f"libiscsi {version}: replay the finding and update its record")
    finding = load(INITIATORS / "libiscsi-1.19.0" / "hang--iscsi-inq.py")
    seen, _tape = replay_finding(finding, limit=2.0)  # its answers come in milliseconds
    assert (finding["kind"], finding["place"]) in seen, seen
