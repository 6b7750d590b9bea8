"""Graded verdicts in the reports: certify's summary and exit status, JUnit, the HTML
matrix (non-strict and informational apart from failures), skip causes, the tests
skipped on every pairing, coverage, and merging old (1.x) with new results."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from iscsi_conformance.report import Results, SpecRef, TestResult, junit_xml, merge, render_html
from iscsi_conformance.report.model import VERSION, Requirement, Run
from iscsi_conformance.report.render_html import Counts, build_view, skipped_everywhere
from iscsi_conformance.report.requirements_coverage import compute_coverage
from iscsi_conformance.report.skips import SkipCause, skip_cause
from iscsi_conformance.verdict import certification_verdict, print_summary, print_verdict

ROOT = Path(__file__).resolve().parents[2]
TGT = "tgt"
PID = f"reference×{TGT}"
MUST = SpecRef("RFC 7143", "13.12", "MUST", "target")
SHOULD = SpecRef("RFC 7143", "4.2.7.1", "SHOULD", "target")
MAY = SpecRef("RFC 7143", "6.1", "MAY", "target")


def graded(*, strict_should_failed: bool = False) -> Results:
    """Against tgt: a MUST passed, a MUST failed, a SHOULD broken (non-strict), an
    informational result, a skip; optionally a SHOULD failed in a strict run."""
    r = Results(requirements=[Requirement("R7143-13.12-1", "RFC 7143", "13.12", "MUST", "target")])
    r.add_run(Run("run1", strict=strict_should_failed))
    r.add_pairing("reference", TGT)
    add = r.add_test
    add(TestResult("Login.Keys.A", PID, "passed", spec=[MUST], requirements=["R7143-13.12-1"]))
    add(TestResult("Login.Keys.B", PID, "failed", spec=[MUST], message="R7143-13.12-1: broken"))
    add(
        TestResult(
            "Naming.Name.Refused",
            PID,
            "failed" if strict_should_failed else "non-strict",
            spec=[SHOULD],
            message="R7143-4.2.7-5: bad name accepted",
        )
    )
    add(
        TestResult(
            "Login.Text.Encodings",
            PID,
            "informational",
            spec=[MAY],
            message="observed: base64 answered Reject",
        )
    )
    add(
        TestResult(
            "Login.Redirect.Temporary",
            PID,
            "skipped",
            spec=[MUST],
            skip_reason="target tgt cannot serve profile 'redirect': tgt lacks capability 'redirect'",
        )
    )
    return r


# --------------------------------------------------------------------------- certify


def test_verdict_counts_must_failures_non_strict_and_informational_apart() -> None:
    v = certification_verdict(graded(), TGT)
    assert (v.must_tested, v.must_passed, len(v.must_failed)) == (2, 1, 1)
    assert [line.split(":")[0] for line in v.non_strict] == ["Naming.Name.Refused"]
    assert [line.split(":")[0] for line in v.informational] == ["Login.Text.Encodings"]
    assert v.skipped == 1 and not v.certified
    out = io.StringIO()
    print_verdict(v, out)
    text = out.getvalue()
    assert "failed: 1; non-strict (SHOULD broken): 1; informational: 1; skipped tests: 1" in text
    assert "  NON-STRICT Naming.Name.Refused: non-strict: R7143-4.2.7-5" in text
    assert "  INFORMATIONAL Login.Text.Encodings" in text
    assert text.rstrip().endswith(f"NOT CERTIFIED: {TGT}")


def test_exit_status_follows_musts_and_shoulds_only_when_strict() -> None:
    r = graded()
    r.tests = [t for t in r.tests if t.id != "Login.Keys.B"]  # no MUST failure left
    assert certification_verdict(r, TGT).certified
    assert not certification_verdict(r, TGT, strict=True).certified
    # a strict run records the SHOULD as failed with grade should: still not a MUST
    s = graded(strict_should_failed=True)
    s.tests = [t for t in s.tests if t.id != "Login.Keys.B"]
    v = certification_verdict(s, TGT, strict=True)
    assert not v.must_failed and len(v.non_strict) == 1 and not v.certified
    out = io.StringIO()
    print_verdict(v, out)
    assert "NOT CERTIFIED (strict: a SHOULD broken fails)" in out.getvalue()
    assert certification_verdict(s, TGT).certified  # the same results, not strict


def test_summary_counts_graded_outcomes(tmp_path: Path) -> None:
    out = io.StringIO()
    print_summary(graded(), tmp_path, out)
    text = out.getvalue()
    assert "1 passed, 1 failed, 1 non-strict, 1 informational, 1 skipped" in text
    # the failure is named under its pairing's line, so a log excerpt says which broke
    assert "    FAILED Login.Keys.B: R7143-13.12-1: broken" in text
    assert "Naming.Name.Refused" not in text  # a non-strict result is counted, not listed


# --------------------------------------------------------------------------- JUnit


def _cases(xml: str) -> dict[str, ET.Element]:
    return {c.get("name", ""): c for c in ET.fromstring(xml).iter("testcase")}


def test_junit_graded_results_are_no_failures_unless_strict() -> None:
    xml = junit_xml(graded())
    suite = ET.fromstring(xml).find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    cases = _cases(xml)
    ns = cases["Naming.Name.Refused"]
    assert ns.find("failure") is None
    props = {p.get("name"): p.get("value") for p in ns.iter("property")}
    assert props["grade"] == "should" and props["status"] == "non-strict"
    out = ns.find("system-out")
    assert out is not None and "non-strict (a SHOULD broken): R7143-4.2.7-5" in (out.text or "")
    info = cases["Login.Text.Encodings"]
    assert info.find("failure") is None
    assert "observed: base64 answered Reject" in (info.findtext("system-out") or "")
    assert cases["Login.Keys.B"].find("failure") is not None
    strict = _cases(junit_xml(graded(), strict=True))
    assert strict["Naming.Name.Refused"].find("failure") is not None
    assert strict["Login.Text.Encodings"].find("failure") is None  # never a failure


# --------------------------------------------------------------------------- HTML


def test_html_shows_non_strict_and_informational_apart_from_failures() -> None:
    r = graded()
    r.tests = [t for t in r.tests if t.id != "Login.Keys.B"]
    view = build_view(r)
    cell = view.cells[0]
    assert cell.counts.non_strict == 1 and cell.counts.informational == 1
    assert cell.counts.failed == 0 and cell.counts.verdict == "nonstrict"
    assert cell.counts.verdict_label == "Passes, SHOULDs broken"
    html = render_html(r)
    assert 'data-outcome="non-strict"' in html and 'data-outcome="informational"' in html
    assert "Non-strict:</strong> a SHOULD-level requirement was not followed" in html
    assert html.count("observed: base64 answered Reject") == 1
    assert "non-strict (SHOULD broken)" in html  # legend and chips
    assert 'class="cell v-nonstrict"' in html


def test_counts_verdict_order() -> None:
    c = Counts(passed=3, non_strict=1, informational=1)
    assert c.verdict == "nonstrict" and c.total == 5
    assert Counts(informational=2).verdict == "pass"
    assert Counts(failed=1, non_strict=1).verdict == "fail"
    assert Counts(xfailed=1, non_strict=1).verdict == "deviations"
    assert c.as_data()["non-strict"] == 1


# --------------------------------------------------------------------------- skips


@pytest.mark.parametrize(
    "reason, cause",
    [
        (
            "tgt does not declare capability 'chap_sha256' (manifest)",
            SkipCause("capability", "chap_sha256", "tgt"),
        ),
        (
            "target lio cannot serve profile 'digest-required': lio lacks capability 'header_digest'",
            SkipCause("profile", "digest-required", "lio"),
        ),
        (
            "no 'redirect' target profile: redirection needs a target configured for it",
            SkipCause("profile", "redirect"),
        ),
        (
            "writes to a third-party target need --iscsi-allow-dataloss",
            SkipCause("option", "--iscsi-allow-dataloss"),
        ),
        ("known deviation of tgt (not run): tgtd crashes", SkipCause("deviation", "", "tgt")),
        (
            "libiscsi does not declare data_digests=CRC32C (manifest)",
            SkipCause("capability", "data_digests=CRC32C", "libiscsi"),
        ),
        ("the target agreed ErrorRecoveryLevel=0: SNACK needs 1", SkipCause("negotiated")),
        ("target 'lio' is not part of this run", SkipCause("pairing", "", "lio")),
        ("something else", SkipCause("other")),
    ],
)
def test_skip_reasons_name_what_was_missing(reason: str, cause: SkipCause) -> None:
    assert skip_cause(reason) == cause
    assert skip_cause(None) is None


def test_skip_cause_shown_and_tests_skipped_everywhere_listed() -> None:
    r = graded()
    other = "reference×lio"
    r.add_test(
        TestResult(
            "Login.Redirect.Temporary",
            other,
            "skipped",
            skip_reason="target lio cannot serve profile 'redirect': lio lacks capability 'redirect'",
        )
    )
    r.add_test(
        TestResult(
            "Naming.Name.Refused",
            other,
            "skipped",
            skip_reason="lio does not declare capability 'x'",
        )
    )
    t = next(t for t in r.tests if t.id == "Login.Redirect.Temporary")
    assert t.skip_cause == SkipCause("profile", "redirect", "tgt")
    everywhere = skipped_everywhere(r.tests)
    assert [s.id for s in everywhere] == ["Login.Redirect.Temporary"]  # the other ran on tgt
    assert everywhere[0].pairings == 2
    assert everywhere[0].causes == [
        "missing profile 'redirect' (lio cannot serve it)",
        "missing profile 'redirect' (tgt cannot serve it)",
    ]
    html = render_html(r)
    assert 'id="skipped-everywhere"' in html and 'href="#skipped-everywhere"' in html
    assert "(missing profile &#39;redirect&#39; (tgt cannot serve it))" in html


def test_no_skipped_everywhere_section_when_everything_ran() -> None:
    r = graded()
    r.tests = [t for t in r.tests if t.outcome != "skipped"]
    assert 'id="skipped-everywhere"' not in render_html(r)


def test_results_carry_grade_and_skip_cause_through_json() -> None:
    doc = graded().to_json()
    tests = {t["id"]: t for t in doc["tests"]}
    assert tests["Naming.Name.Refused"]["grade"] == "should"
    assert tests["Login.Keys.A"]["grade"] == "must"
    assert tests["Login.Text.Encodings"]["grade"] == "informational"
    assert tests["Login.Redirect.Temporary"]["skip_cause"] == {
        "kind": "profile",
        "name": "redirect",
        "peer": "tgt",
    }
    again = Results.from_json(json.loads(json.dumps(doc)))
    assert again.to_json() == doc


# --------------------------------------------------------------------------- coverage


def test_coverage_counts_graded_results_as_passes_of_the_must_cited() -> None:
    r = graded()
    for t in r.tests:
        t.requirements = ["R7143-13.12-1"] if t.id == "Naming.Name.Refused" else []
    cov = compute_coverage(r)
    tgt = next(p for p in cov.peers if p.name == TGT)
    assert tgt.passed == ["R7143-13.12-1"] and not tgt.failed


# --------------------------------------------------------------------------- merge


def test_old_and_new_results_merge(sample_module: ModuleType) -> None:
    old = Results.load(ROOT / "fixtures" / "reports" / "sample-results-v1.0.json")
    new = graded()
    merged = merge([old, new], sources=["old.json", "new.json"])
    assert merged.version == VERSION and merged.to_json()["version"] == VERSION
    assert merged.validate() == []
    assert {t.outcome for t in merged.tests} >= {"non-strict", "informational", "xfailed"}
    assert all(t.grade for t in merged.tests if t.spec)
