"""The vendor CI recipe (docs/ci/github-actions.yml, docs/ci/gitlab-ci.yml,
docs/vendor-ci.md), its commands run here against tgt as the "vendor" target.

The two job files must carry the same certify commands; those commands are run with
bash as the job would, after ``iscsi-conformance peers start tgt --detach`` in place of
the placeholder step, against the last release's results planted with one failure
that now passes: the job succeeds, names the fix, and leaves the report folder the
job publishes, with its Changes section. (That a regression fails the job is proven
by tests/report/test_baseline.py, on the same exit status.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GITHUB, GITLAB = ROOT / "docs" / "ci" / "github-actions.yml", ROOT / "docs" / "ci" / "gitlab-ci.yml"
SUITES = ("Discovery.SendTargets.Named", "Discovery.SendTargets.UnknownName")


def _block(text: str, opener: str, nth: int = 0) -> str:
    """The ``|`` block scalar after the ``nth`` line matching ``opener`` (a regex)."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if re.search(opener, ln)]
    i = starts[nth]
    while not lines[i].rstrip().endswith("|"):
        i += 1
    body: list[str] = []
    indent = None
    for ln in lines[i + 1 :]:
        if ln.strip() and indent is None:
            indent = len(ln) - len(ln.lstrip())
        if ln.strip() and len(ln) - len(ln.lstrip()) < (indent or 0):
            break
        body.append(ln)
    return textwrap.dedent("\n".join(body)).strip() + "\n"


def _github_step(name: str) -> str:
    return _block(GITHUB.read_text(), rf"- name: {re.escape(name)}$")


def test_both_job_files_carry_the_same_steps() -> None:
    gitlab = GITLAB.read_text()
    certify = _github_step("Certify against the last release")
    assert "iscsi-conformance certify" in certify and "--baseline" in certify
    assert _block(gitlab, r"^  script:") == certify
    assert _block(gitlab, r"^  before_script:") == _github_step("Install the suite")
    assert "PLACEHOLDER" in _github_step("Start the target under test")
    assert "PLACEHOLDER" in gitlab
    for text in (GITHUB.read_text(), gitlab):
        assert "iscsi-report/" in text and "always" in text  # the report on every outcome


@pytest.mark.peer
def test_the_recipe_against_tgt(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("tgt as the vendor target runs as root (tgtd or its container)")
    from iscsi_conformance.report.model import Pairing, Results, TestResult, pairing_id
    from iscsi_conformance.report.writer import dump_results

    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ISCSI_CONFORMANCE_STATE_DIR": str(tmp_path / "state"),
    }
    cli = [sys.executable, "-m", "iscsi_conformance.cli", "peers"]
    up = subprocess.run(
        [*cli, "start", "tgt", "--detach"], capture_output=True, text=True, env=env, timeout=300
    )
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        url = subprocess.run(
            [*cli, "url", "tgt"], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        pairing = pairing_id("reference", url)
        old = Results(
            pairings=[Pairing("reference", url, pairing)],
            tests=[
                TestResult(id=SUITES[0], pairing=pairing, outcome="passed"),
                TestResult(id=SUITES[1], pairing=pairing, outcome="failed", message="planted"),
            ],
        )
        dump_results(old, tmp_path / "iscsi-baseline" / "results.json")
        env.update(
            ISCSI_TARGET_URL=url,
            ISCSI_BASELINE="iscsi-baseline/results.json",
            ISCSI_CERTIFY_ARGS=" ".join(f"--suite {s}" for s in SUITES),
        )
        job = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _github_step("Certify against the last release")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    finally:
        down = subprocess.run([*cli, "stop"], capture_output=True, text=True, env=env, timeout=180)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    assert "no regression; 1 fixed" in job.stdout and "\nCERTIFIED" in job.stdout
    index = (tmp_path / "iscsi-report" / "index.html").read_text(encoding="utf-8")
    assert SUITES[1] in index[index.index('id="changes"') :]
    assert down.returncode == 0 and "tgt stopped" in down.stdout
