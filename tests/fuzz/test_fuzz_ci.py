"""``fuzz ci``, the CI's campaigns side by side (fuzz/ci.py, issue 14), without real
peers: the gate's rule (any failure of our reference peers fails; a third-party
failure recorded in its manifest passes, one below MUST is reported, a new one fails
with its reproducer named; a campaign that did not run, ran nothing or overran fails)
and the driver (processes at once, a stale campaign file removed, one over its bound
interrupted, the verdicts in the campaign files' notes).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from iscsi_conformance.fuzz import ci
from iscsi_conformance.fuzz.ci import Outcome, Slot, judge
from iscsi_conformance.peers.manifest import Deviation
from iscsi_conformance.report.fuzz import FuzzCampaign, FuzzFailure, campaign_path

REF = Slot("reference", "target", "reference", ("reference",))
TGT = Slot("tgt", "target", "tgt", ("tgt",))
LIB = Slot("libiscsi-initiator", "initiator", "libiscsi", ("--initiator", "libiscsi"))
SEGV = "dead: tgtd exited with status -11 (SIGSEGV)"
KNOWN = Deviation(
    test="Fuzz.Robustness.ReadEdtlAbove2G", reason="r", versions="<=1.0.85",
    effect="intermittent", fuzz=("liveness at dead: *(SIGSEGV)",),
)  # fmt: skip
OK = Outcome(exit=1, wall=61.0)


def _campaign(
    peer: str, *failures: FuzzFailure, version: str = "", seconds: float = 60.0
) -> FuzzCampaign:
    return FuzzCampaign(peer=peer, seconds=seconds, cases=900, pdus=1500, failures=list(failures),
                        peer_version=version)  # fmt: skip


def _f(kind: str, place: str, level: str = "MUST") -> FuzzFailure:
    return FuzzFailure(kind=kind, place=place, level=level, detail="d",
                       reproducer=f"fuzz/x/{kind}.py")  # fmt: skip


def test_a_recorded_finding_of_a_third_party_peer_passes() -> None:
    v = judge(TGT, _campaign("tgt", _f("liveness", SEGV), version="1.0.85"), OK, [KNOWN], 60)
    assert v.ok and [d.test for _f, d in v.known] == [KNOWN.test]
    assert "known: liveness at dead" in "\n".join(v.lines())
    assert "1.5 cases/s" not in v.why and "15.00 cases/s" in v.why  # 900 cases in 60 s


def test_a_new_third_party_failure_is_reported_and_fails_only_when_strict() -> None:
    abrt = _f("liveness", "dead: tgtd exited with status -6 (SIGABRT)")
    campaign = _campaign("tgt", _f("liveness", SEGV), abrt, version="1.0.85")
    v = judge(TGT, campaign, OK, [KNOWN], 60)
    assert v.ok and v.new == [abrt] and len(v.known) == 1
    lines = "\n".join(v.lines())
    assert "NEW, not recorded yet: liveness at dead: tgtd exited with status -6 (SIGABRT)" in lines
    assert "reproducer fuzz/x/liveness.py" in lines
    v = judge(TGT, campaign, OK, [KNOWN], 60, strict_peers=True)
    assert not v.ok and v.new == [abrt]
    assert "NEW: liveness at dead: tgtd exited with status -6 (SIGABRT)" in "\n".join(v.lines())
    # a later version the entry does not cover: the same failure is new again
    later = _campaign("tgt", _f("liveness", SEGV), version="1.0.90")
    assert len(judge(TGT, later, OK, [KNOWN], 60).new) == 1
    assert not judge(TGT, later, OK, [KNOWN], 60, strict_peers=True).ok


def test_below_must_a_third_party_failure_is_reported_not_failed() -> None:
    hang = _f("hang", "iscsi-inq", level="INFORMATIONAL")
    v = judge(LIB, _campaign("libiscsi-initiator", hang), OK, [], 60)
    assert v.ok and v.reported == [hang] and not v.new


def test_any_failure_of_our_reference_peers_fails() -> None:
    for level in ("MUST", "SHOULD", "INFORMATIONAL"):
        f = _f("resources", "rss", level=level)
        v = judge(REF, _campaign("reference", f), OK, [KNOWN], 60)
        assert not v.ok and v.new == [f]
    # even one a deviation would cover: our peers have no deviations
    v = judge(REF, _campaign("reference", _f("liveness", SEGV)), OK, [KNOWN], 60)
    assert not v.ok


@pytest.mark.parametrize(
    ("campaign", "outcome", "says"),
    [
        (None, Outcome(exit=2, wall=3.0), "did not run: exit status 2, wrote no campaign"),
        (_campaign("tgt"), Outcome(exit=-9, wall=3.0), "did not end normally"),
        (None, Outcome(exit=None, wall=400.0), "still running after 400 s: killed"),
        (FuzzCampaign(peer="tgt", seconds=60.0), OK, "ran no case"),
        (_campaign("tgt", seconds=63.5), OK, "over its bound of 60 s"),
    ],
)
def test_a_campaign_that_did_not_run_or_overran_fails(
    campaign: FuzzCampaign | None, outcome: Outcome, says: str
) -> None:
    v = judge(TGT, campaign, outcome, [KNOWN], 60)
    assert not v.ok and says in v.why, v.why


def test_the_findings_of_real_campaigns_are_recorded_in_the_manifests() -> None:
    """What the 60 s campaigns of 2026-12-07 found in tgt 1.0.85 and LIO 6.1 passes the
    gate with the real manifests; the same against a later tgt is new."""
    for slot in ci.SLOTS:  # every manifest loads; our reference peers have none
        assert isinstance(ci.deviations_of(slot), tuple)
        assert ci.deviations_of(slot) == () or not slot.ours
    tgt = [
        _f("liveness", SEGV),
        _f("liveness", "dead: tgtd exited with status -6 (SIGABRT)"),
        _f("reinstatement", "old connection still answers"),
    ]
    devs = ci.deviations_of(TGT)
    assert judge(TGT, _campaign("tgt", *tgt, version="1.0.85"), OK, devs, 60).ok
    assert len(judge(TGT, _campaign("tgt", *tgt, version="1.0.86"), OK, devs, 60).new) == 3
    lio = Slot("lio", "target", "lio", ("lio",))
    found = [_f("liveness", "unresponsive"), _f("reinstatement", "new connection not served")]
    v = judge(lio, _campaign("lio", *found, version="6.1.0-57-cloud-amd64"), OK,
              ci.deviations_of(lio), 60)  # fmt: skip
    assert v.ok and len(v.known) == 2, v.lines()


# ------------------------------------------------------------------ the driver

_FAKE = """
import json, sys, time
out, peer, code, failures = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
time.sleep(0.5)
if code != 2:
    import pathlib
    p = pathlib.Path(out) / "fuzz" / (peer + ".json")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"format": "iscsi-conformance-fuzz", "version": 1, "peer": peer,
        "role": "target", "seconds": 1.0, "cases": 50, "pdus": 80, "failures": failures,
        "peer_version": "1.0.85"}))
print("fake campaign of", peer)
sys.exit(code)
"""


def _fake(code: int, failures: list[dict[str, object]]) -> object:
    def make(slot: Slot, out: Path, seconds: float) -> list[str]:
        return [sys.executable, "-c", _FAKE, str(out), slot.peer, str(code), json.dumps(failures)]

    return make


def test_the_driver_runs_campaigns_at_once_and_gates_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Our reference target for real (2 s), a stand-in tgt with a recorded and a new
    failure, and a stand-in LIO that cannot start; a stale tgt campaign is removed."""
    lio = Slot("lio", "target", "lio", ("lio",))
    segv = {"kind": "liveness", "place": SEGV, "level": "MUST", "reproducer": "fuzz/tgt/a.py"}
    new = {"kind": "answer", "place": "StatSN", "level": "MUST", "reproducer": "fuzz/tgt/b.py"}
    makers = {"tgt": _fake(1, [segv, new]), "lio": _fake(2, [])}
    real = ci.command

    def command(slot: Slot, out: Path, seconds: float) -> list[str]:
        if slot.peer in makers:
            return makers[slot.peer](slot, out, seconds)  # type: ignore[operator]
        return real(slot, out, seconds)

    stale = campaign_path(tmp_path, "lio")
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(_campaign("lio").to_json()))
    monkeypatch.setattr(ci, "SLOTS", (REF, TGT, lio))
    monkeypatch.setattr(ci, "command", command)
    monkeypatch.setattr(ci, "deviations_of", lambda slot: (KNOWN,) if slot.peer == "tgt" else ())
    start = time.monotonic()
    code = ci.main(["--report", str(tmp_path), "--seconds", "2", "--start-limit", "60"])
    wall = time.monotonic() - start
    text = capsys.readouterr().out
    assert code == 1, text
    # tgt's unrecorded failure is reported with its reproducer; it fails only when strict
    assert "PASS target reference" in text and "PASS target tgt" in text, text
    assert "known: liveness at dead" in text and "NEW, not recorded yet: answer at StatSN" in text
    assert "reproducer fuzz/tgt/b.py" in text
    assert "FAIL target lio: did not run: exit status 2, wrote no campaign" in text
    assert "fake campaign of lio" in text  # the log's tail of a campaign that failed
    assert wall < 30, wall  # side by side: the reference campaign's 2 s and its start
    doc = json.loads(campaign_path(tmp_path, "tgt").read_text())
    assert any(n.startswith("fuzz ci: PASS target tgt") for n in doc["notes"])
    ref = json.loads(campaign_path(tmp_path, "reference").read_text())
    assert ref["cases"] > 0 and ref["failures"] == []
    assert any(n.startswith("fuzz ci: PASS target reference") for n in ref["notes"])


def test_a_campaign_over_its_bound_is_interrupted(tmp_path: Path) -> None:
    def sleeper(slot: Slot, out: Path, seconds: float) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    start = time.monotonic()
    outcomes = ci.run_slots([TGT], tmp_path, 0.5, start_limit=1.0, say=lambda _l: None,
                            make_command=sleeper)  # fmt: skip
    assert outcomes["tgt"].exit is None and time.monotonic() - start < 20
