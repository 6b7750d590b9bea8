"""libiscsi's own conformance suite (``iscsi-test-cu -d``, families SCSI and iSCSI)
against the reference target. Every failure must be a deviation listed, with its
reason, in targets/reference/manifest.toml; anything else fails this test."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from iscsi_conformance.peers.reference_target import load_manifest
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("iscsi-test-cu") is None, reason="libiscsi-bin not installed"),
]

IQN = "iqn.2024-01.org.iscsi-conformance:libiscsi"
_RECORD = re.compile(
    r"<CUNIT_RUN_TEST_(SUCCESS|FAILURE)>\s*<TEST_NAME>\s*(\S+)\s*</TEST_NAME>", re.S
)
_SUITE = re.compile(r"<SUITE_NAME>\s*(\S+)\s*</SUITE_NAME>(.*?)</CUNIT_RUN_SUITE", re.S)


def run_suite(url: str, family: str, cwd: Path, timeout: float = 900) -> dict[str, bool]:
    """Run one family with CUnit XML output; {"Family.Suite.Test": passed}."""
    subprocess.run(
        ["iscsi-test-cu", "-d", "-x", "-t", family, url],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    xml = (cwd / "CUnitAutomated-Results.xml").read_text(errors="replace")
    results: dict[str, bool] = {}
    for suite, body in _SUITE.findall(xml):
        for kind, test in _RECORD.findall(body):
            name = f"{family}.{suite}.{test}"
            # A test with several failed assertions has several FAILURE records.
            results[name] = results.get(name, True) and kind == "SUCCESS"
    return results


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("libiscsi")
    cfg = parse_config(
        {
            "server": {"state_dir": str(tmp / "state")},
            "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
            "targets": [{"name": IQN, "luns": [{"lun": 0, "size": "64M"}]}],
        }
    )
    srv = TargetServer(cfg)
    srv.start_in_thread()
    yield srv, tmp
    srv.stop_thread()


@pytest.mark.parametrize("family", ["iSCSI", "SCSI"])
def test_libiscsi_family(target, family: str) -> None:
    srv, tmp = target
    host, port = srv.portal()
    cwd = tmp / family
    cwd.mkdir()
    results = run_suite(f"iscsi://{host}:{port}/{IQN}/0", family, cwd)
    assert len(results) >= 10, "the suite did not run"
    known = [str(d["test"]).removeprefix("libiscsi.") for d in load_manifest().deviations]
    failed = sorted(n for n, ok in results.items() if not ok)
    unexpected = [n for n in failed if not any(n == k or n.startswith(k + ".") for k in known)]
    print(f"{family}: {len(results)} tests, {len(failed)} failed: {failed}")
    assert not unexpected, f"failures not listed as deviations: {unexpected}"
