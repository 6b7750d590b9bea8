"""JUnit XML: parses, one testsuite per pairing, right counts, CI-friendly names."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from iscsi_conformance.report import Results, write_junit


def parse(r: Results, tmp_path: Path) -> ET.Element:
    path = write_junit(r, tmp_path / "junit.xml")
    return ET.parse(path).getroot()


def test_counts_per_suite(sample: Results, tmp_path: Path) -> None:
    root = parse(sample, tmp_path)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 9
    for suite in suites:
        pid = suite.get("name")
        outcomes = Counter(t.outcome for t in sample.tests if t.pairing == pid)
        cases = suite.findall("testcase")
        assert int(suite.get("tests", -1)) == len(cases) == sum(outcomes.values())
        assert (
            int(suite.get("failures", -1))
            == outcomes["failed"]
            == len(suite.findall("testcase/failure"))
        )
        assert (
            int(suite.get("errors", -1))
            == outcomes["error"]
            == len(suite.findall("testcase/error"))
        )
        skipped = outcomes["skipped"] + outcomes["xfailed"]
        assert int(suite.get("skipped", -1)) == skipped == len(suite.findall("testcase/skipped"))
    assert int(root.get("tests", -1)) == len(sample.tests)
    assert int(root.get("failures", -1)) == sum(t.outcome == "failed" for t in sample.tests)


def test_testcase_naming_properties_and_evidence(small: Results, tmp_path: Path) -> None:
    root = parse(small, tmp_path)
    suite = root.find("testsuite[@name='reference×tgt']")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["initiator"] == "reference" and props["target.version"] == "1.0.87 (container)"
    case = suite.find("testcase[@name='CHAP.Refuse.WrongResponse']")
    assert case is not None and case.get("classname") == "reference×tgt.CHAP"
    failure = case.find("failure")
    assert failure is not None and "wrong CHAP_R=***" in (failure.get("message") or "")
    assert "PDU trace:" in (failure.text or "") and "LoginResponse" in (failure.text or "")
    specs = [p.get("value") for p in case.findall("properties/property[@name='spec']")]
    assert specs == ["RFC 7143 12.1.3 MUST (target)"]
    xfail = suite.find("testcase[@name='Login.Keys.MaxRecvDataSegmentLengthBelowMinimum']/skipped")
    assert (
        xfail is not None
        and xfail.get("type") == "xfail"
        and "tgt accepts 256" in (xfail.get("message") or "")
    )


def test_url_target_classname_has_no_stray_dots(small: Results, tmp_path: Path) -> None:
    root = parse(small, tmp_path)
    names = {c.get("classname") for c in root.iter("testcase")}
    url_cls = next(n for n in names if n and "iscsi:" in n)
    pairing, area = url_cls.rsplit(".", 1)
    assert "." not in pairing and area == "FullFeature"


def test_control_characters_are_made_legal(tmp_path: Path) -> None:
    from iscsi_conformance.report import TestResult

    r = Results()
    r.add_test(TestResult("A.B.C", "i×t", "failed", message="bad \x00\x1b[31m byte"))
    root = parse(r, tmp_path)  # would raise on an illegal character
    assert "\\x00" in (root.find(".//failure").get("message") or "")  # type: ignore[union-attr]
