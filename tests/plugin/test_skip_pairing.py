"""``--iscsi-skip-pairing I@T`` leaves one pairing out of a run (the matrix env's
reference x reference comes from the embedded run instead): its tests are deselected,
the other pairings' tests run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUITE = "Naming.Initiator.Refused.Empty"


def _run(report: Path, *extra: str) -> dict[str, str]:
    argv = [sys.executable, "-m", "iscsi_conformance.cli", "run", "-q", "--report", str(report)]
    argv += ["--suite", SUITE, "--target", "reference", "--", *extra]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    if not (report / "results.json").exists():  # nothing selected: no report
        return {}
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    return {t["pairing"]: t["outcome"] for t in results["tests"]}


def test_a_skipped_pairing_runs_nothing(tmp_path: Path) -> None:
    assert _run(tmp_path / "all") == {"reference×reference": "passed"}
    assert _run(tmp_path / "skip", "--iscsi-skip-pairing", "reference@reference") == {}
    # another pairing's name leaves this one in
    kept = _run(tmp_path / "other", "--iscsi-skip-pairing", "libiscsi@reference")
    assert kept == {"reference×reference": "passed"}
