"""``run --baseline`` (and the terminal progress of ``run``): a real run of the Discovery.SendTargets tests against the
reference target broken on purpose (a mutant that answers SendTargets=<a name it has>
with no target) compared with a baseline where that test passed and another one
failed: the run exits 1 for the regression, names it, and the report's Changes
section lists the regression and the fix; against its own results the run has no
regression. A baseline that cannot be read is one usage line before anything runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iscsi_conformance.report import Results
from iscsi_conformance.report.baseline import load_baseline, summary_lines
from iscsi_conformance.report.diff import diff
from iscsi_conformance.report.model import Pairing, TestResult
from iscsi_conformance.report.writer import dump_results

MUTANT = "Discovery.SendTargets.NamedAnswersNothing"
BROKEN, OTHER = "Discovery.SendTargets.Named", "Discovery.SendTargets.UnknownName"
PAIR = "reference×reference"


def _baseline(path: Path, outcomes: dict[str, str]) -> Path:
    tests = [TestResult(id=t, pairing=PAIR, outcome=o) for t, o in outcomes.items()]
    dump_results(Results(pairings=[Pairing("reference", "reference", PAIR)], tests=tests), path)
    return path


def _run(report: Path, baseline: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "iscsi_conformance.cli", "run", "-q", "--report", str(report)]
    argv += ["--suite", "Discovery.SendTargets", "--baseline", str(baseline)]
    argv += ["--", "-p", "iscsi_conformance.mutation.activate"]
    env = dict(os.environ, ISCSI_CONFORMANCE_MUTANT=MUTANT)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_run_with_a_baseline_fails_on_the_regression_only(tmp_path: Path) -> None:
    planted = _baseline(tmp_path / "old.json", {BROKEN: "passed", OTHER: "failed"})
    res = _run(tmp_path / "r", planted)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "REGRESSED, 1 new failure(s); 1 fixed" in res.stdout
    assert f"new failure {PAIR}  {BROKEN}  passed -> failed" in res.stdout
    # the progress view (plugin/progress.py): per pairing and area, no file paths
    assert f"{PAIR}  Discovery 9/9: 1 failed, 8 passed" in res.stdout
    assert not re.search(r"rootdir:|configfile:|test_\w+\.py [.FsxX]", res.stdout)
    index = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    changes = index[index.index('id="changes"') :]
    assert BROKEN in changes and OTHER in changes
    # the same failure in the baseline: not a regression, exit 0
    new = Results.load(tmp_path / "r" / "results.json")
    assert [t.outcome for t in new.tests if t.id == BROKEN] == ["failed"]
    same = diff(load_baseline(tmp_path / "r"), new)
    assert not same.regressed and summary_lines(same)[0].endswith("0 removed")


def test_an_unreadable_baseline_is_one_line_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from iscsi_conformance.cli import main

    (tmp_path / "bad.json").write_text("{")
    for bad in (tmp_path / "missing.json", tmp_path / "bad.json"):
        for command in (["run"], ["certify", "iscsi://127.0.0.1:1/iqn.x:y/0"]):
            code = main([*command, "--report", str(tmp_path / "r"), "--baseline", str(bad)])
            out, err = capsys.readouterr()
            assert code == 2 and out == "", (command, out)
            assert "--baseline: " in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_verbose_keeps_pytests_own_view() -> None:
    import argparse

    from iscsi_conformance.plugin.progress import Install, progress_plugins

    argv: list[str] = []
    assert progress_plugins(argparse.Namespace(verbose=True), argv) == [] and argv == ["-v"]
    assert progress_plugins(argparse.Namespace(verbose=False), ["-vv"]) == []
    assert [type(p) for p in progress_plugins(argparse.Namespace(), [])] == [Install]
