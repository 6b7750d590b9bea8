"""The pytest plugin, driven through pytester: pairings, selection by stable ID,
markers, results and reports. The peers themselves are exercised elsewhere; these
tests use only the ``pairing`` fixture so no peer starts."""

from __future__ import annotations

import json

import pytest

from iscsi_conformance.peers.base import Manifest
from iscsi_conformance.peers.manifest import version_matches
from iscsi_conformance.plugin.deviations import deviation_for, matching_deviation
from iscsi_conformance.plugin.spec import SpecInfo, spec

pytest_plugins = ["pytester"]

SUITE = """
from iscsi_conformance.plugin import require, spec

@spec("Login.Keys.Alpha", "RFC 7143 13.12", requirements=["R7143-13.12-1"])
def test_alpha(pairing):
    assert pairing.initiator == "reference"

@spec("Login.Stages.Beta", "RFC 7143 11.12.2", level="SHOULD")
def test_beta(pairing):
    require(False, "R7143-11.12-1", "peer set T and C together", sent=["LoginRequest(transit=True, cont=True)"])

@spec("CHAP.OneWay.Gamma", "RFC 7143 12.1.3", pairing="all")
def test_gamma(pairing):
    pass

@spec("Interop.Initiator.Delta", "RFC 7143 13.5", pairing="initiator")
def test_delta(pairing):
    assert pairing.target == "reference"

def test_plain():
    pass
"""


def test_pairings_follow_the_pairing_kind(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest(
        "--collect-only",
        "-q",
        "--iscsi-target",
        "reference",
        "--iscsi-target",
        "tgt",
        "--iscsi-initiator",
        "reference",
        "--iscsi-initiator",
        "libiscsi",
    )
    out = result.stdout.str()
    assert "test_alpha[reference@reference]" in out and "test_alpha[reference@tgt]" in out
    assert (
        "test_alpha[libiscsi@tgt]" not in out
    )  # target-kind tests use the reference initiator only
    for pair in ("reference@reference", "reference@tgt", "libiscsi@reference", "libiscsi@tgt"):
        assert f"test_gamma[{pair}]" in out  # interop: every pairing
    assert "test_delta[libiscsi@reference]" in out and "test_delta[reference@tgt]" not in out
    assert "test_plain" in out


def test_suite_selection_by_stable_id_prefix(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-q", "--iscsi-suite", "Login.Keys", "--iscsi-suite", "CHAP")
    result.assert_outcomes(passed=3)  # alpha, gamma, and the plain test (not a conformance test)


def test_ini_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini(
        "[pytest]\niscsi_targets =\n    reference\n    tgt\niscsi_suites = Login.Keys\n"
    )
    result = pytester.runpytest("--collect-only", "-q")
    out = result.stdout.str()
    assert "test_alpha[reference@tgt]" in out and "test_beta" not in out


def test_report_written_with_failure_evidence(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-q", "--iscsi-report", "out")
    result.assert_outcomes(passed=4, failed=1)
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    tests = {(t["id"], t["pairing"]): t for t in doc["tests"]}
    beta = tests[("Login.Stages.Beta", "reference×reference")]
    assert beta["outcome"] == "failed"
    assert "R7143-11.12-1" in beta["message"] and "peer set T and C together" in beta["message"]
    assert beta["spec"][0]["section"] == "11.12.2" and beta["spec"][0]["level"] == "SHOULD"
    assert (pytester.path / "out" / "index.html").exists()
    assert (pytester.path / "out" / "junit.xml").exists()


def test_failure_message_names_requirement_and_pdus(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-q", "-k", "beta")
    result.stdout.fnmatch_lines(
        ["*R7143-11.12-1: peer set T and C together*", "*> *LoginRequest(transit=True, cont=True)*"]
    )


def test_spec_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="cite at least one section"):
        spec("Login.Keys.X")
    with pytest.raises(ValueError, match=r"Area\.Suite\.Test"):
        spec("Login.X", "RFC 7143 13.1")


def test_spec_level_is_the_strongest() -> None:
    from iscsi_conformance.plugin.spec import SpecRef

    info = SpecInfo("A.B.C", (SpecRef("RFC 7143", "1", "SHOULD"), SpecRef("RFC 7143", "2", "MUST")))
    assert info.level == "MUST" and info.is_must and info.area == "A"


@pytest.mark.parametrize(
    "spec_text,version,expected",
    [
        ("*", "1.0.85", True),
        (">=1.0.80", "tgt 1.0.85", True),
        ("<1.0.80", "1.0.85", False),
        (">=6.1", "6.1.0-28", True),
        ("<=6.1", "Linux 6.1.0-56-cloud-amd64 (Datera Inc. iSCSI Target v4.1.0)", True),
        (">=6.2", "Linux 6.1.0-56-cloud-amd64 (Datera Inc. iSCSI Target v4.1.0)", False),
        ("<=1.0.85", "1:1.0.85-1+deb12u1", True),
        ("<1.0.85", "1:1.0.85-1+deb12u1", False),
    ],
)
def test_version_matching(spec_text: str, version: str, expected: bool) -> None:
    assert version_matches(version, spec_text) is expected


def test_deviation_matching_by_group() -> None:
    m = Manifest(
        name="tgt",
        role="target",
        deviations=[{"test": "CHAP.OneWay.*", "versions": "*", "reason": "MD5 only"}],
    )
    assert deviation_for(m, "CHAP.OneWay.SHA256.Hex", "1.0.85") == "MD5 only"
    assert deviation_for(m, "CHAP.OneWay", "1.0.85") is None
    assert deviation_for(m, "CHAP.OneWayX.Foo", "1.0.85") is None
    assert deviation_for(m, "Login.Keys.X", "1.0.85") is None
    # a parametrised case is covered by its test's entry; an unknown version still applies
    assert deviation_for(m, "CHAP.OneWay.SHA256[hex]", "") == "MD5 only"
    found = matching_deviation(m, "CHAP.OneWay.MD5", "1.0.85")
    assert found is not None and found["effect"] == "xfail"


def test_secrets_never_in_reports(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_secret="""
from iscsi_conformance.plugin import spec, require

@spec("CHAP.Secret.Leak", "RFC 7143 12.1.3")
def test_leak(pairing, evidence):
    evidence.secrets.add("sup3r-s3cret-value")
    require(False, "R7143-12.1.3-3", "saw CHAP secret sup3r-s3cret-value in a PDU")
"""
    )
    pytester.runpytest("-q", "--iscsi-report", "out")
    for name in ("results.json", "index.html", "junit.xml"):
        assert "sup3r-s3cret-value" not in (pytester.path / "out" / name).read_text(), name


def test_xdist_shares_the_controllers_peers(pytester: pytest.Pytester) -> None:
    """Under pytest-xdist the controller starts the reference target once; workers
    attach to its endpoints (``workerinput``) and the results merge into one report."""
    from pathlib import Path

    suite = Path(__file__).resolve().parents[2] / "conformance" / "login" / "test_stages.py"
    pytester.makeconftest(
        "def pytest_configure(config):\n"
        "    wi = getattr(config, 'workerinput', None)\n"
        "    if wi is not None:\n"
        "        assert 'iscsi_peers' in wi, 'the controller did not hand its peers to the worker'\n"
        "        assert wi['iscsi_peers']['targets']['reference']['endpoints']['default']['port'] > 0\n"
    )
    result = pytester.runpytest(
        str(suite),
        "-n",
        "2",
        "--import-mode=importlib",
        "--iscsi-target",
        "reference",
        "--iscsi-report",
        "out",
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    assert len(doc["tests"]) >= 15
    assert {t["pairing"] for t in doc["tests"]} == {"reference×reference"}
    assert [p["name"] for p in doc["peers"] if p["role"] == "target"] == ["reference"]


def test_allure_results_carry_labels_and_trace(pytester: pytest.Pytester) -> None:
    """With --alluredir, each conformance result carries area/pairing/test-ID/spec labels,
    and a test with PDU evidence attaches the trace (secrets masked)."""
    pytester.makepyfile(
        test_allure_suite="""
from iscsi_conformance.plugin import spec

class FakeTrace:
    def add_secret(self, s):
        pass
    def to_json(self):
        return {"entries": [{"direction": "send", "pdu": "NopOut", "fields": {"itt": 7},
                             "raw": "00" * 48, "time": 0.0}]}

@spec("FullFeature.Nop.AllureProbe", "RFC 7143 11.18")
def test_probe(pairing, evidence):
    evidence.add_trace(FakeTrace())
"""
    )
    result = pytester.runpytest("-q", "--alluredir", "allure", "-p", "allure_pytest")
    result.assert_outcomes(passed=1)
    docs = [json.loads(p.read_text()) for p in (pytester.path / "allure").glob("*-result.json")]
    assert len(docs) == 1
    labels = {(lab["name"], lab["value"]) for lab in docs[0]["labels"]}
    assert ("area", "FullFeature") in labels
    assert ("test_id", "FullFeature.Nop.AllureProbe") in labels
    assert ("pairing", "reference×reference") in labels
    assert ("spec", "RFC 7143 11.18 MUST") in labels
    attachments = docs[0].get("attachments", [])
    assert any(a["name"] == "PDU trace" for a in attachments), attachments


def test_a_lost_target_is_told_by_the_last_read_not_by_words() -> None:
    """DEATH_GRACE waits for a dead target when the failed test's last read met a
    closed connection or silence, or the failure came from a time-out or a dropped
    connection; a message that merely says "closed the connection" does not count."""
    from iscsi_conformance.harness import probe
    from iscsi_conformance.plugin import _lost_the_target
    from iscsi_conformance.plugin.spec import violation

    words = violation("R-1", "no Login Response: the target closed the connection 3 ms after")
    assert not _lost_the_target(words, probe.Outcome.ANSWERED)
    assert not _lost_the_target(words, None)
    assert _lost_the_target(words, probe.Outcome.CLOSED)
    assert _lost_the_target(violation("R-1", "wrong status"), probe.Outcome.SILENT)
    assert not _lost_the_target(violation("R-1", "x"), probe.Outcome.UNDECODABLE)
    assert not _lost_the_target(None, probe.Outcome.CLOSED)
    assert not _lost_the_target(ValueError("closed"), probe.Outcome.CLOSED)
    assert _lost_the_target(TimeoutError(), probe.Outcome.ANSWERED)
    try:
        try:
            raise ConnectionResetError
        except ConnectionError:
            raise violation("R-1", "the ping went unanswered") from None
    except AssertionError as exc:
        assert not _lost_the_target(exc, None)  # "from None": not what caused it
    try:
        try:
            raise ConnectionResetError
        except ConnectionError:
            raise violation("R-1", "the ping went unanswered")  # noqa: B904
    except AssertionError as exc:
        assert _lost_the_target(exc, None)


def test_probe_reads_are_recorded() -> None:
    import asyncio

    from iscsi_conformance.harness import probe

    class Raw:
        def __init__(self, answers: list[object]) -> None:
            self.answers = answers

        async def recv(self, timeout: float | None) -> object:
            a = self.answers.pop(0)
            if isinstance(a, BaseException):
                raise a
            return a

    conn = probe.ProbeConnection(Raw(["pdu", TimeoutError(), ConnectionResetError()]))
    probe.forget_reads()
    assert probe.last_read() is None
    assert asyncio.run(conn.recv(1)) == "pdu" and probe.last_read() is probe.Outcome.ANSWERED
    assert asyncio.run(conn.recv(1)) is None and probe.last_read() is probe.Outcome.SILENT
    assert asyncio.run(conn.recv(1)) is None and probe.last_read() is probe.Outcome.CLOSED
