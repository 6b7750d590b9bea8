"""The result format: round trips, schema validation (jsonschema and built-in), versions."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.peers.base import (
    CommandLog,
    Manifest,
    TargetDriver,
    TargetEndpoint,
    TargetSpec,
)
from iscsi_conformance.report import (
    FORMAT,
    VERSION,
    Results,
    ResultsFormatError,
    area_of,
    pairing_id,
    validate,
)
from iscsi_conformance.report.model import CIInfo, Peer, Run, TestResult
from iscsi_conformance.report.writer import dump_results, dumps_results

ROOT = Path(__file__).resolve().parents[2]


def test_round_trip_in_memory(small: Results) -> None:
    doc = small.to_json()
    again = Results.from_json(json.loads(json.dumps(doc)))
    assert again.to_json() == doc
    assert again == small  # dataclass equality; secrets are not compared


def test_round_trip_through_text_is_stable(sample: Results) -> None:
    text = dumps_results(sample)
    back = Results.loads(text)
    assert dumps_results(back) == text  # redaction is idempotent, nothing lost
    assert len(back.tests) == len(sample.tests)


def test_header_and_version(small: Results) -> None:
    doc = small.to_json()
    assert doc["format"] == FORMAT == "iscsi-conformance-results"
    assert doc["version"] == VERSION == "2.1"
    assert "secrets" not in doc


@pytest.mark.parametrize("use_jsonschema", [True, False], ids=["jsonschema", "builtin"])
def test_sample_is_valid(sample: Results, use_jsonschema: bool) -> None:
    assert validate(sample.to_json(), use_jsonschema=use_jsonschema) == []


def test_committed_fixture_is_valid() -> None:
    r = Results.load(ROOT / "fixtures" / "reports" / "sample-results.json")
    assert {p.id for p in r.pairings} == {
        f"{i}×{t}"
        for i in ("reference", "open-iscsi", "libiscsi")
        for t in ("reference", "tgt", "LIO")
    }


def test_version_1_document_is_read_and_upgraded() -> None:
    """A 1.0 document (written before graded verdicts) is checked against its own schema,
    read, given grades from its spec levels and skip causes from its skip reasons, and
    written as the current version: old results still merge with new ones."""
    path = ROOT / "fixtures" / "reports" / "sample-results-v1.0.json"
    doc = json.loads(path.read_text())
    assert doc["version"] == "1.0"
    assert validate(doc) == [] and validate(doc, use_jsonschema=False) == []
    r = Results.load(path)
    assert r.version == "1.0"
    graded = [t for t in r.tests if t.spec]
    assert graded and all(t.grade in ("must", "should", "informational") for t in graded)
    assert {t.outcome for t in r.tests} <= {
        "passed",
        "failed",
        "skipped",
        "xfailed",
        "xpassed",
        "error",
    }
    skipped = [t for t in r.tests if t.outcome == "skipped"]
    assert skipped and all(t.skip_cause is not None for t in skipped)
    out = r.to_json()
    assert out["version"] == VERSION and validate(out) == []


def test_version_2_adds_grades_and_new_outcomes(small: Results) -> None:
    doc = small.to_json()
    doc["tests"][0]["outcome"] = "non-strict"
    doc["tests"][0]["grade"] = "should"
    doc["tests"][1]["outcome"] = "informational"
    doc["runs"][0]["strict"] = True
    doc["requirements"][0]["level"] = "INFORMATIONAL"
    assert validate(doc) == [] and validate(doc, use_jsonschema=False) == []
    r = Results.from_json(doc)
    assert r.tests[0].grade == "should" and r.runs[0].strict
    doc["version"] = "1.0"  # the same document as 1.0: its schema knows none of it
    assert validate(doc) and validate(doc, use_jsonschema=False)


def _break(doc: dict[str, Any], how: str) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    t = d["tests"][0]
    if how == "outcome":
        t["outcome"] = "exploded"
    elif how == "missing-id":
        del t["id"]
    elif how == "hex":
        t["evidence"]["pdus"] = [{"direction": "i->t", "opcode": "X", "hex": "zz"}]
    elif how == "direction":
        t["evidence"]["pdus"] = [{"direction": "sideways", "opcode": "X"}]
    elif how == "extra-property":
        t["colour"] = "red"
    elif how == "level":
        t["spec"] = [
            {"document": "RFC 7143", "section": "1", "level": "PROBABLY", "role": "target"}
        ]
    elif how == "mode":
        d["peers"][0]["mode"] = "teleported"
    elif how == "duration":
        t["duration"] = -1
    elif how == "runs-missing":
        del d["runs"]
    return d


@pytest.mark.parametrize("use_jsonschema", [True, False], ids=["jsonschema", "builtin"])
@pytest.mark.parametrize(
    "how",
    [
        "outcome",
        "missing-id",
        "hex",
        "direction",
        "extra-property",
        "level",
        "mode",
        "duration",
        "runs-missing",
    ],
)
def test_schema_rejects(small: Results, how: str, use_jsonschema: bool) -> None:
    problems = validate(_break(small.to_json(), how), use_jsonschema=use_jsonschema)
    assert problems, how
    with pytest.raises(ResultsFormatError):
        Results.from_json(_break(small.to_json(), how))


def test_other_major_version_is_refused(small: Results) -> None:
    doc = small.to_json()
    doc["version"] = "3.0"
    with pytest.raises(
        ResultsFormatError, match=r"x\.json: format version 3\.0 cannot be read.*1\.x and 2\.x"
    ):
        Results.from_json(doc, source="x.json")


def test_newer_minor_version_is_read_ignoring_new_fields(small: Results) -> None:
    doc = small.to_json()
    doc["version"] = "2.7"
    doc["tests"][0]["new_field_of_2_7"] = {"x": 1}
    doc["attachments"] = []
    r = Results.from_json(doc)
    assert r.version == "2.7"
    assert r.to_json()["version"] == VERSION  # written as what we know


@pytest.mark.parametrize(
    "doc, match",
    [
        ([], "not a results document"),
        ({"format": "junit"}, "not an iscsi-conformance-results"),
        ({"format": FORMAT, "version": "one"}, "unreadable"),
    ],
)
def test_not_a_results_document(doc: Any, match: str) -> None:
    with pytest.raises(ResultsFormatError, match=match):
        Results.from_json(doc)


def test_not_json(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    p.write_text("{nope")
    with pytest.raises(ResultsFormatError, match=r"r\.json: not JSON"):
        Results.load(p)


def test_area_and_pairing_id() -> None:
    assert area_of("Login.Keys.MaxRecvDataSegmentLengthBelowMinimum") == "Login"
    assert area_of("CHAP.Mutual.X") == "CHAP"
    assert area_of("libiscsi.SCSI.Read16.Simple") == "libiscsi.SCSI"
    assert area_of("iSNS.Registration.PortalsServed") == "iSNS"
    assert pairing_id("open-iscsi", "tgt") == "open-iscsi×tgt"


def test_add_test_creates_pairing() -> None:
    r = Results()
    r.add_test(TestResult("A.B.C", "x×y", "passed"))
    assert r.pairings[0].initiator == "x" and r.pairings[0].target == "y"
    assert r.tests[0].area == "A"


def test_ci_detection() -> None:
    gh = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_JOB": "interop",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "42",
        "GITHUB_SERVER_URL": "https://github.com",
    }
    ci = CIInfo.detect(gh)
    assert ci is not None and ci.job == "interop" and ci.url.endswith("/o/r/actions/runs/42")
    assert CIInfo.detect({"GITLAB_CI": "true", "CI_JOB_NAME": "lio"}).job == "lio"  # type: ignore[union-attr]
    assert CIInfo.detect({}) is None
    run = Run.collect(argv=["iscsi-conformance", "run"], env=gh, worker="gw1")
    assert run.ci and run.ci.provider == "github-actions" and run.worker == "gw1" and run.host


class _FakeTarget(TargetDriver):
    name = "tgt"
    mode = "container"

    def start(self) -> None:
        self.log.add(["tgtadm", "--password", "s3cret!"], 0, "ok", "", 0.0)

    def stop(self) -> None:
        pass

    def version(self) -> str:
        return "1.0.87"

    def configure(self, spec: TargetSpec) -> TargetEndpoint:
        return TargetEndpoint("127.0.0.1", 3260, spec.iqn)


def test_peer_from_driver() -> None:
    d = _FakeTarget(
        Manifest("tgt", "target", "tgt", {"chap": True}, [{"test": "A.B.C", "reason": "r"}])
    )
    d.log = CommandLog(secrets={"s3cret!"})
    d.start()
    p = Peer.from_driver(d)
    assert (p.name, p.role, p.version, p.mode) == ("tgt", "target", "1.0.87", "container")
    assert p.commands[0].argv == ["tgtadm", "--password", "***"]
    assert p.capabilities == {"chap": True} and p.deviations[0]["reason"] == "r"


def test_dump_is_atomic_and_readable(tmp_path: Path, small: Results) -> None:
    path = dump_results(small, tmp_path / "sub" / "results.json")
    assert Results.load(path).tests[0].id == small.tests[0].id
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["results.json"]
