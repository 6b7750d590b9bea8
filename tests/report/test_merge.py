"""Merge rules (docs/reports.md): union, latest wins, flaky on differing outcomes,
skipped never outweighs a run, peers by (name, role, version, mode), version check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iscsi_conformance.report import (
    Command,
    Peer,
    Results,
    ResultsFormatError,
    Run,
    TestResult,
    merge,
    merge_files,
)
from iscsi_conformance.report.cli import main as report_main
from iscsi_conformance.report.writer import dump_results


def one(
    run: str,
    outcome: str,
    start: str | None,
    *,
    tid: str = "Login.A.B",
    pid: str = "ref×tgt",
    message: str = "",
) -> Results:
    r = Results()
    r.add_run(Run(run, started=start))
    r.add_test(TestResult(tid, pid, outcome, start=start, run=run, message=message))
    return r


def test_union_of_disjoint_inputs(small: Results) -> None:
    other = one("run2", "passed", "2025-01-02T00:00:00+00:00", tid="Naming.X.Y", pid="libiscsi×tgt")
    m = merge([small, other])
    assert {p.id for p in m.pairings} == {p.id for p in small.pairings} | {"libiscsi×tgt"}
    assert len(m.tests) == len(small.tests) + 1
    assert [r.id for r in m.runs] == ["run1", "run2"]
    assert m.requirements == small.requirements
    assert m.notes[0].startswith("merged 2 result files")


def test_same_outcome_twice_keeps_latest_with_note() -> None:
    a = one("a", "passed", "2025-01-01T10:00:00+00:00", message="old")
    b = one("b", "passed", "2025-01-01T11:00:00+00:00", message="new")
    m = merge([b, a])  # input order must not matter: the start time decides
    (t,) = m.tests
    assert (t.outcome, t.message, t.run, t.flaky) == ("passed", "new", "b", False)
    assert [h.run for h in t.history] == ["a"]
    assert any("kept the latest" in n for n in m.notes)


def test_conflicting_outcomes_mark_flaky() -> None:
    a = one("a", "failed", "2025-01-01T10:00:00+00:00")
    b = one("b", "passed", "2025-01-01T11:00:00+00:00")
    (t,) = merge([a, b]).tests
    assert t.flaky and t.outcome == "passed"
    assert [(h.outcome, h.run) for h in t.history] == [("failed", "a")]
    assert any("FLAKY" in n for n in merge([a, b]).notes)


def test_a_should_broken_in_a_strict_and_a_non_strict_run_is_not_flaky() -> None:
    strict = one("a", "failed", "2025-01-01T10:00:00+00:00")
    lenient = one("b", "non-strict", "2025-01-01T11:00:00+00:00")
    for r in (strict, lenient):
        r.tests[0].grade = "should"
    (t,) = merge([strict, lenient]).tests
    assert t.outcome == "non-strict" and not t.flaky
    # A MUST that failed once and was non-strict once cannot happen; a pass and a
    # SHOULD broken are still two behaviours.
    passed = one("c", "passed", "2025-01-01T12:00:00+00:00")
    passed.tests[0].grade = "should"
    (t,) = merge([strict, passed]).tests
    assert t.flaky


def test_skipped_never_outweighs_a_run() -> None:
    ran = one("a", "failed", "2025-01-01T10:00:00+00:00")
    skipped_later = one("b", "skipped", "2025-01-01T12:00:00+00:00")
    (t,) = merge([ran, skipped_later]).tests
    assert t.outcome == "failed" and not t.flaky


def test_without_start_times_the_run_times_then_input_order_decide() -> None:
    a, b = one("a", "failed", None), one("b", "passed", None)
    a.runs[0].finished, b.runs[0].finished = (
        "2025-01-01T12:00:00+00:00",
        "2025-01-01T10:00:00+00:00",
    )
    assert merge([a, b]).tests[0].outcome == "failed"  # run a finished later
    c, d = one("c", "failed", None), one("d", "passed", None)
    assert merge([c, d]).tests[0].outcome == "passed"  # last input


def test_merging_merged_files_accumulates_history() -> None:
    ab = merge(
        [
            one("a", "failed", "2025-01-01T10:00:00+00:00"),
            one("b", "passed", "2025-01-01T11:00:00+00:00"),
        ]
    )
    (t,) = merge([ab, one("c", "passed", "2025-01-01T12:00:00+00:00")]).tests
    assert t.flaky and t.run == "c" and [h.run for h in t.history] == ["a", "b"]


def test_peers_merged_by_name_role_version_mode() -> None:
    a, b = Results(), Results()
    cmd1 = Command(["tgtd", "--version"], 0, "1.0.87")
    cmd2 = Command(["tgtadm", "--op", "show"], 0)
    a.add_peer(
        Peer(
            "tgt",
            "target",
            "1.0.87",
            "container",
            capabilities={"chap": True},
            commands=[cmd1],
            deviations=[{"test": "X", "reason": "r"}],
        )
    )
    b.add_peer(
        Peer(
            "tgt",
            "target",
            "1.0.87",
            "container",
            capabilities={"digests": True},
            commands=[cmd1, cmd2],
            deviations=[{"test": "X", "reason": "r"}],
        )
    )
    b.add_peer(Peer("tgt", "target", "1.0.88", "container"))
    b.add_peer(Peer("reference", "initiator", "0.1.0", "embedded"))
    a.add_peer(Peer("reference", "target", "0.1.0", "embedded"))
    m = merge([a, b])
    keys = sorted(p.key for p in m.peers)
    assert keys == [
        ("reference", "initiator", "0.1.0", "embedded"),
        ("reference", "target", "0.1.0", "embedded"),
        ("tgt", "target", "1.0.87", "container"),
        ("tgt", "target", "1.0.88", "container"),
    ]
    tgt = next(p for p in m.peers if p.version == "1.0.87")
    assert tgt.capabilities == {"chap": True, "digests": True}
    assert [c.argv[0] for c in tgt.commands] == ["tgtd", "tgtadm"]
    assert len(tgt.deviations) == 1
    assert any("different versions (1.0.87, 1.0.88)" in n for n in m.notes)
    assert len(a.peers[0].commands) == 1  # inputs untouched


def test_merge_files_refuses_other_major_version(tmp_path: Path, small: Results) -> None:
    good = dump_results(small, tmp_path / "good.json")
    doc = json.loads(good.read_text())
    doc["version"] = "3.0"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ResultsFormatError) as exc:
        merge_files([good, bad])
    assert "bad.json" in str(exc.value) and "3.0" in str(exc.value)
    with pytest.raises(ResultsFormatError, match="no input files"):
        merge_files([])


def test_in_memory_version_check() -> None:
    r = Results()
    r.version = "3.1"
    with pytest.raises(ResultsFormatError, match=r"3\.1 cannot be merged"):
        merge([Results(), r])


def test_cli_merge_html_junit_validate(
    tmp_path: Path, small: Results, capsys: pytest.CaptureFixture[str]
) -> None:
    a = dump_results(small, tmp_path / "a.json")
    b = dump_results(
        one("r2", "passed", "2025-01-03T00:00:00+00:00", pid="open-iscsi×tgt"), tmp_path / "b.json"
    )
    out = tmp_path / "merged.json"
    assert report_main(["merge", str(out), str(a), str(b)]) == 0
    assert len(Results.load(out).tests) == len(small.tests) + 1
    assert report_main(["html", str(out), "--out", str(tmp_path / "html")]) == 0
    assert (tmp_path / "html" / "index.html").is_file() and (
        tmp_path / "html" / "results.json"
    ).is_file()
    assert report_main(["junit", str(a), str(b), "--out", str(tmp_path / "j.xml")]) == 0
    assert (tmp_path / "j.xml").read_text().startswith("<?xml")
    assert report_main(["validate", str(out)]) == 0
    (tmp_path / "broken.json").write_text(
        '{"format": "iscsi-conformance-results", "version": "9.0"}'
    )
    assert report_main(["validate", str(tmp_path / "broken.json")]) == 1
    assert report_main(["merge", str(out), str(tmp_path / "broken.json")]) == 2
    assert "9.0" in capsys.readouterr().err
