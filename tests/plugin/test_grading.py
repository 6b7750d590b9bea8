"""Graded verdicts in the plugin: a MUST broken fails, a SHOULD broken is non-strict
(a failure only with --iscsi-strict), an informational check never fails; the exit
status, the results and pytest's own JUnit follow. No peer starts: the tests use only
the ``pairing`` fixture."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from iscsi_conformance import grading
from iscsi_conformance.errors import PDUFormatError
from iscsi_conformance.plugin import failure_grade
from iscsi_conformance.plugin.catalog import load_catalog
from iscsi_conformance.plugin.spec import (
    ConformanceViolation,
    PeerDied,
    SpecInfo,
    SpecRef,
    violation,
)

pytest_plugins = ["pytester"]

GRADED = """
from iscsi_conformance.plugin import require, spec

@spec("Login.Grade.Must", "RFC 7143 13.12")
def test_must(pairing):
    require(False, "R-OWN-0", "a MUST broken")

@spec("Login.Grade.Should", "RFC 7143 11.12.2", level="SHOULD")
def test_should(pairing):
    assert False, "a SHOULD broken"

@spec("Login.Grade.NamedShould", "RFC 7143 13.12")
def test_named_should(pairing):
    require(False, "R-OWN-1", "the SHOULD sentence of a MUST row", level="SHOULD")

@spec("Login.Grade.Informational", "RFC 7143 13.12", level="INFORMATIONAL")
def test_info(pairing):
    require(False, "R-OWN-2", "the target answered Reject")

@spec("Login.Grade.OurBug", "RFC 7143 13.12", level="SHOULD")
def test_our_bug(pairing):
    raise TypeError("a bug of ours is never graded down")

@spec("Login.Grade.Passes", "RFC 7143 13.12", level="SHOULD")
def test_passes(pairing):
    pass
"""


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    "level, grade",
    [
        ("MUST", "must"),
        ("MUST NOT", "must"),
        ("REQUIRED", "must"),
        ("SHALL", "must"),
        ("SHALL NOT", "must"),
        ("SHOULD", "should"),
        ("SHOULD NOT", "should"),
        ("RECOMMENDED", "should"),
        ("MAY", "informational"),
        ("OPTIONAL", "informational"),
        ("INFORMATIONAL", "informational"),
        ("PROBABLY", "must"),  # an unknown word never turns a failure into a pass
    ],
)
def test_levels_map_to_grades(level: str, grade: str) -> None:
    assert grading.grade_of(level) == grade


def test_strongest_and_outcomes() -> None:
    assert grading.strongest(["MAY", "SHOULD", "MUST"]) == "must"
    assert grading.strongest(["MAY", "SHOULD NOT"]) == "should"
    assert grading.strongest([]) is None
    assert grading.failed_outcome("must") == "failed"
    assert grading.failed_outcome("should") == "non-strict"
    assert grading.failed_outcome("should", strict=True) == "failed"
    assert grading.failed_outcome("informational", strict=True) == "informational"


def test_spec_info_grade() -> None:
    info = SpecInfo("A.B.C", (SpecRef("RFC 7143", "1", "MAY"), SpecRef("RFC 7143", "2", "SHOULD")))
    assert info.level == "SHOULD" and info.grade == "should" and not info.is_must
    info = SpecInfo("A.B.C", (SpecRef("RFC 7143", "1", "INFORMATIONAL"),))
    assert info.grade == "informational"


# --------------------------------------------------------------------------- what broke


def _info(level: str) -> SpecInfo:
    return SpecInfo("A.B.C", (SpecRef("RFC 7143", "13.12", level),))


def test_failure_graded_by_the_catalog_level_of_the_requirement_named() -> None:
    catalog = load_catalog()
    should = next(r for r in catalog if r["level"] in ("SHOULD", "SHOULD NOT"))
    must = next(r for r in catalog if r["level"] == "MUST")
    assert failure_grade(_info("MUST"), violation(should["id"], "x")) == "should"
    assert failure_grade(_info("SHOULD"), violation(must["id"], "x")) == "must"
    # the violation's own level wins over the catalog's
    assert failure_grade(_info("MUST"), violation(must["id"], "x", level="MAY")) == "informational"
    # a requirement the catalog lacks: the test's own references decide
    assert failure_grade(_info("SHOULD"), violation("R-NOT-IN-CATALOG", "x")) == "should"


def test_failure_grade_of_what_no_violation_names() -> None:
    assert failure_grade(_info("SHOULD"), AssertionError("bare assert")) == "should"
    assert failure_grade(_info("SHOULD"), TimeoutError()) == "should"
    assert failure_grade(_info("SHOULD"), ConnectionResetError()) == "should"
    assert failure_grade(_info("SHOULD"), PDUFormatError("bad PDU", level="MUST")) == "must"
    # a dead target and our own bugs always fail
    assert failure_grade(_info("SHOULD"), PeerDied("tgtd exited 139")) == "must"
    assert failure_grade(_info("MAY"), TypeError("ours")) == "must"
    assert failure_grade(_info("MAY"), None) == "must"
    # a test whose setup failed (e.g. a login with a valid profile refused) judged
    # nothing: it fails, an informational test's own level does not hide it
    assert failure_grade(_info("MAY"), violation("harness", "could not log in")) == "must"
    assert isinstance(PeerDied("x"), ConformanceViolation)


# --------------------------------------------------------------------------- through pytest


def _outcomes(result: pytest.RunResult) -> dict[str, int]:
    """The summary line's counts (pytester's parser splits "2 non-strict" at the dash)."""
    import re

    line = result.stdout.lines[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) ([\w-]+)", line)}


def _results(pytester: pytest.Pytester, out: str = "out") -> dict[str, dict[str, object]]:
    doc = json.loads((pytester.path / out / "results.json").read_text())
    return {str(t["id"]): t for t in doc["tests"]}


def test_graded_outcomes_and_exit_status(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_graded=GRADED)
    result = pytester.runpytest("-q", "--iscsi-report", "out", "--junitxml", "j.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the MUST and our bug fail
    outcomes = _outcomes(result)
    assert outcomes["failed"] == 2 and outcomes["passed"] == 1
    assert outcomes["non-strict"] == 2 and outcomes["informational"] == 1
    result.stdout.fnmatch_lines(
        [
            "*non-strict results: a SHOULD broken*",
            "NON-STRICT *test_named_should*R-OWN-1: the SHOULD sentence of a MUST row",
            "*informational results*",
            "INFORMATIONAL *test_info*R-OWN-2: the target answered Reject",
        ]
    )
    tests = _results(pytester)
    got = {tid: (t["outcome"], t["grade"]) for tid, t in tests.items()}
    assert got == {
        "Login.Grade.Must": ("failed", "must"),
        "Login.Grade.Should": ("non-strict", "should"),
        "Login.Grade.NamedShould": ("non-strict", "should"),
        "Login.Grade.Informational": ("informational", "informational"),
        "Login.Grade.OurBug": ("failed", "must"),
        "Login.Grade.Passes": ("passed", "should"),
    }
    assert "the target answered Reject" in str(tests["Login.Grade.Informational"]["message"])
    # pytest's own JUnit: a graded result is no <failure>, and says its grade
    root = ET.parse(pytester.path / "j.xml").getroot()
    cases = {c.get("name", ""): c for c in root.iter("testcase")}
    named = next(c for n, c in cases.items() if n.startswith("test_named_should"))
    assert named.find("failure") is None
    props = {p.get("name"): p.get("value") for p in named.iter("property")}
    assert props["iscsi_status"] == "non-strict" and props["iscsi_grade"] == "should"
    must = next(c for n, c in cases.items() if n.startswith("test_must"))
    assert must.find("failure") is not None


def test_only_graded_results_exit_zero(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_graded=GRADED)
    result = pytester.runpytest("-q", "-k", "not must and not bug")
    assert result.ret == pytest.ExitCode.OK


def test_strict_makes_a_should_a_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_graded=GRADED)
    result = pytester.runpytest("-q", "--iscsi-strict", "--iscsi-report", "out")
    outcomes = _outcomes(result)
    assert outcomes["failed"] == 4 and outcomes["informational"] == 1
    assert "non-strict" not in outcomes
    tests = _results(pytester)
    assert (tests["Login.Grade.Should"]["outcome"], tests["Login.Grade.Should"]["grade"]) == (
        "failed",
        "should",
    )
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    assert doc["runs"][0]["strict"] is True
    strict_only = pytester.runpytest("-q", "--iscsi-strict", "-k", "not must and not bug")
    assert strict_only.ret == pytest.ExitCode.TESTS_FAILED


def test_graded_results_survive_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_graded=GRADED)
    result = pytester.runpytest(
        "-q", "-n", "2", "-k", "not must and not bug", "--iscsi-report", "out"
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    got = {tid: t["outcome"] for tid, t in _results(pytester).items()}
    assert got == {
        "Login.Grade.Should": "non-strict",
        "Login.Grade.NamedShould": "non-strict",
        "Login.Grade.Informational": "informational",
        "Login.Grade.Passes": "passed",
    }


# --------------------------------------------------------------------------- the commands


def test_run_and_certify_strict_reach_pytest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``run --strict`` and ``certify --strict`` hand ``--iscsi-strict`` to pytest, and a
    sharded run hands ``--strict`` to each shard."""
    from iscsi_conformance import certify as certify_mod
    from iscsi_conformance.cli import Shard, _shard_argv, build_parser, main

    seen: list[list[str]] = []

    def fake_main(argv: list[str], plugins: object = ()) -> int:
        seen.append(list(argv))
        return 0

    async def no_preflight(*_: object) -> None:
        return None

    monkeypatch.setattr(pytest, "main", fake_main)
    monkeypatch.setattr(certify_mod, "_preflight", no_preflight)
    assert main(["run", "--strict", "--report", str(tmp_path / "r")]) == 0
    assert "--iscsi-strict" in seen[-1]
    assert main(["run", "--report", str(tmp_path / "r")]) == 0
    assert "--iscsi-strict" not in seen[-1]
    url = "iscsi://127.0.0.1:3260/iqn.2024-01.org.example:disk/0"
    assert main(["certify", url, "--strict", "--report", str(tmp_path / "c")]) == 3  # no results
    assert "--iscsi-strict" in seen[-1]
    args = build_parser().parse_args(["run", "--strict", "--target", "tgt"])
    argv = _shard_argv(args, Shard(["tgt"], ["reference"]), tmp_path / "s", [])
    assert "--strict" in argv[: argv.index("--")]


# --------------------------------------------------------------------------- deviations


class _Item:
    def __init__(self, strict: bool = False, **stash: object) -> None:
        from iscsi_conformance import plugin

        self.stash = pytest.Stash()
        self.config = type("C", (), {"stash": pytest.Stash()})()
        self.config.stash[plugin.RUN_KEY] = type("R", (), {"strict": strict})()  # type: ignore[assignment]
        for key, value in stash.items():
            self.stash[getattr(plugin, key)] = value
        self.user_properties: list[tuple[str, object]] = []


class _Report:
    def __init__(self, outcome: str, wasxfail: str | None = None) -> None:
        self.when = "call"
        self.outcome = outcome
        if wasxfail is not None:
            self.wasxfail = wasxfail

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    @property
    def skipped(self) -> bool:
        return self.outcome == "skipped"


class _Call:
    def __init__(self, exc: BaseException) -> None:
        self.excinfo = type("E", (), {"value": exc})()


def test_a_deviation_keeps_its_xfail_unless_intermittent_and_no_crash() -> None:
    from iscsi_conformance.plugin import STATUS_ATTR, _grade

    info = _info("SHOULD")
    # strict deviation: stays xfailed
    rep = _Report("skipped", wasxfail="known deviation of tgt: x")
    item = _Item(_DEVIATION_KEY="x", _INTERMITTENT_KEY=False)
    assert _grade(item, info, _Call(AssertionError("a SHOULD")), rep) == "should"  # type: ignore[arg-type]
    assert hasattr(rep, "wasxfail") and not hasattr(rep, STATUS_ATTR)
    # intermittent (a crash in some runs), and this time no crash: graded like any other
    rep = _Report("skipped", wasxfail="known deviation of tgt (intermittent): segfaults")
    item = _Item(_DEVIATION_KEY="x", _INTERMITTENT_KEY=True)
    assert _grade(item, info, _Call(AssertionError("a SHOULD")), rep) == "should"  # type: ignore[arg-type]
    assert not hasattr(rep, "wasxfail") and rep.outcome == "passed"
    assert getattr(rep, STATUS_ATTR) == "non-strict"
    # intermittent and the target died: the deviation's expected failure
    rep = _Report("skipped", wasxfail="known deviation of tgt (intermittent): segfaults")
    assert _grade(item, info, _Call(PeerDied("tgtd exited 139")), rep) == "must"  # type: ignore[arg-type]
    assert hasattr(rep, "wasxfail") and rep.outcome == "skipped"
    # no deviation, strict run: a failure
    rep = _Report("failed")
    assert _grade(_Item(strict=True), info, _Call(AssertionError("x")), rep) == "should"  # type: ignore[arg-type]
    assert rep.outcome == "failed" and not hasattr(rep, STATUS_ATTR)
