"""The report folder (render_html.write_html) and runs compared (report/diff.py).

In memory and on the disk, no browser: the folder's files, that results.json of a
matrix keeps its PDUs in the evidence files and still loads and merges whole, and that
``report diff`` names a planted regression and a planted fix and exits non-zero for the
regression only.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from iscsi_conformance.report import Results, merge, redact, write_html
from iscsi_conformance.report.cli import main as report_main
from iscsi_conformance.report.diff import diff, history_trend
from iscsi_conformance.report.model import ResultsFormatError, read_evidence_file
from iscsi_conformance.report.writer import dump_results


def _canon(r: Results) -> str:
    return json.dumps(r.to_json(), sort_keys=True)


def test_folder_layout_and_round_trip(sample: Results, tmp_path: Path) -> None:
    index = write_html(sample, tmp_path / "out", generated="2025-01-01T00:00:00+00:00")
    out = index.parent
    cells = sorted(out.glob("cells/*.html"))
    assert len(cells) == len(sample.pairings)
    assert (out / "peers.html").is_file() and (out / "assets" / "evidence.js").is_file()
    text = index.read_text()
    assert 'href="cells/' in text and 'section class="pairing' not in text
    assert "Zx9-chap-secret-4711" not in "".join(f.read_text() for f in out.rglob("*.js"))
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["evidence_files"]) == {p.id for p in sample.pairings}
    assert not any(t["evidence"]["pdus"] for t in doc["tests"])
    captures = list(out.glob("captures/*.pcapng.gz"))
    assert len(captures) == sum(1 for t in sample.tests if t.evidence.pdus)
    # whole again when loaded: the PDUs come back from the evidence files
    again = Results.load(out / "results.json")
    assert _canon(again) == _canon(redact(sample))  # what the folder holds is redacted
    # and a merge of the folder's results.json with another file knows them too
    other = tmp_path / "other.json"
    dump_results(Results(), other)
    merged = report_main(["merge", str(tmp_path / "m.json"), str(out / "results.json"), str(other)])
    assert merged == 0
    pdus = sum(len(t.evidence.pdus) for t in Results.load(tmp_path / "m.json").tests)
    assert pdus == sum(len(t.evidence.pdus) for t in sample.tests) > 0


def test_an_evidence_file_for_another_pairing_is_refused(sample: Results, tmp_path: Path) -> None:
    out = write_html(sample, tmp_path / "out").parent
    doc = json.loads((out / "results.json").read_text())
    a, b = list(doc["evidence_files"])[:2]
    doc["evidence_files"][a], doc["evidence_files"][b] = (
        doc["evidence_files"][b],
        doc["evidence_files"][a],
    )
    (out / "results.json").write_text(json.dumps(doc))
    with pytest.raises(ResultsFormatError, match="is for"):
        Results.load(out / "results.json")
    body = read_evidence_file(out / doc["evidence_files"][a])
    assert body["pairing"] == b


def test_one_pairing_keeps_its_pdus_inline(small: Results, tmp_path: Path) -> None:
    one = Results(tests=[t for t in small.tests if t.pairing == small.tests[0].pairing])
    out = write_html(one, tmp_path / "out").parent
    doc = json.loads((out / "results.json").read_text())
    assert "evidence_files" not in doc


def _planted(sample: Results) -> tuple[Results, Results, tuple[str, str], tuple[str, str]]:
    new = copy.deepcopy(sample)
    base = copy.deepcopy(sample)
    failing = next(t for t in new.tests if t.outcome == "failed")
    next(t for t in base.tests if t.key == failing.key).outcome = "passed"
    passing = next(t for t in new.tests if t.outcome == "passed")
    next(t for t in base.tests if t.key == passing.key).outcome = "failed"
    return base, new, failing.key, passing.key


def test_diff_names_the_planted_regression_and_fix(sample: Results) -> None:
    base, new, regressed, fixed = _planted(sample)
    d = diff(base, new)
    assert d.regressed
    got = {(ch.id, c.pairing) for c in d.cells for ch in c.new_failures}
    assert got == {regressed}
    assert {(ch.id, c.pairing) for c in d.cells for ch in c.fixed} == {fixed}
    # a fix alone is no regression
    assert not diff(base, _only_fix(base, new, regressed)).regressed


def _only_fix(base: Results, new: Results, regressed: tuple[str, str]) -> Results:
    out = copy.deepcopy(new)
    next(t for t in out.tests if t.key == regressed).outcome = "passed"
    return out


def test_diff_deviations_and_tests_added_and_removed(sample: Results) -> None:
    base = copy.deepcopy(sample)
    new = copy.deepcopy(sample)
    dev = next(t for t in new.tests if t.outcome == "xfailed")
    dev.outcome = "passed"
    gone = new.tests.pop()
    extra = copy.deepcopy(new.tests[0])
    extra.id = "Login.Brand.New"
    new.tests.append(extra)
    d = diff(base, new)
    assert not d.regressed
    assert d.count("deviations_gone") == 1 and d.count("added") == 1 and d.count("removed") == 1
    assert any(ch.id == gone.id for c in d.cells for ch in c.removed)


def test_report_diff_cli_exit_status(
    sample: Results, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, new, regressed, fixed = _planted(sample)
    old_p, new_p, fix_p = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "fix.json"
    dump_results(base, old_p)
    dump_results(new, new_p)
    dump_results(_only_fix(base, new, regressed), fix_p)
    assert report_main(["diff", str(old_p), str(new_p)]) == 1
    text = capsys.readouterr().out
    assert "REGRESSED" in text and regressed[0] in text and fixed[0] in text
    assert report_main(["diff", str(old_p), str(fix_p)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert report_main(["diff", str(old_p), str(new_p), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["regressed"] is True
    assert report_main(["diff", str(tmp_path / "missing.json"), str(new_p)]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_html_baseline_adds_changes(sample: Results, tmp_path: Path) -> None:
    base, new, regressed, _ = _planted(sample)
    old_p, new_p = tmp_path / "old.json", tmp_path / "new.json"
    dump_results(base, old_p)
    dump_results(new, new_p)
    assert (
        report_main(["html", str(new_p), "--out", str(tmp_path / "o"), "--baseline", str(old_p)])
        == 0
    )
    text = (tmp_path / "o" / "index.html").read_text()
    assert 'id="changes"' in text and f'data-test="{regressed[0]}"' in text
    assert 'id="changes"' not in write_html(new, tmp_path / "p").read_text()


def test_trend_of_merged_runs(sample: Results) -> None:
    second = copy.deepcopy(sample)
    for r in second.runs:
        r.id, r.started = r.id + "-2", "2030-01-01T00:00:00+00:00"
    for t in second.tests:
        t.run = (t.run or "") + "-2"
        t.start = None
    merged = merge([sample, second])
    runs, table = history_trend(merged)
    assert len(runs) >= 2 and table
    assert all(len(v) == len(runs) for v in table.values())


def test_area_not_supported_and_isns_server_shown(tmp_path: Path) -> None:
    from iscsi_conformance.report import Run, TestResult, render_html

    r = Results()
    r.add_run(Run("r1", isns_server={"name": "isnsd", "version": "0.101", "mode": "container"}))
    why = "lio does not declare capability 'isns' (manifest)"
    r.add_test(TestResult("Isns.Register.Portal", "reference×lio", "skipped", skip_reason=why))
    r.add_test(TestResult("Login.Stages.Plain", "reference×lio", "passed"))
    html = render_html(r)
    assert "not supported (missing capability &#39;isns&#39; (lio&#39;s manifest))" in html
    assert "iSNS server: isnsd 0.101 (container)" in html
    assert Results.from_json(r.to_json()).runs[0].isns_server == {
        "name": "isnsd",
        "version": "0.101",
        "mode": "container",
    }


def test_an_evidence_file_of_objects_is_still_read(sample: Results, tmp_path: Path) -> None:
    """Folders written before the ``fields`` array (one object a PDU, ``b64``) load the
    same, so that a baseline from an earlier release still reads."""
    import base64

    out = tmp_path / "old"
    write_html(sample, out)
    doc = json.loads((out / "results.json").read_text())
    rel = next(iter(doc["evidence_files"].values()))
    body = read_evidence_file(out / rel)
    old = {
        "pairing": body["pairing"],
        "tests": {
            tid: [
                {
                    **{k: v for k, v in p.items() if k != "hex"},
                    "b64": base64.b64encode(bytes.fromhex(p["hex"])).decode(),
                }
                for p in pdus
            ]
            for tid, pdus in body["tests"].items()
        },
    }
    (out / rel).write_text(f"iscsiEvidence({json.dumps(old)});\n")
    assert read_evidence_file(out / rel)["tests"] == body["tests"]
