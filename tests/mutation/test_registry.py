"""The mutation benchmark's mechanism, in memory: the registry, applying and reverting
every mutant, the wire rewriter, sampling and judging (issue 10, item 5)."""

from __future__ import annotations

import importlib
import inspect
import re
import types
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.mutation import AREAS, all_mutants
from iscsi_conformance.mutation.activate import TARGET_IMPORTS, activate
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.runner import SuiteRun, judge, load_survivors, sample

#: Modules whose attributes (and their classes' attributes) a mutant may change.
WATCHED = (
    *TARGET_IMPORTS,
    "iscsi_conformance.target.config",
    "iscsi_conformance.core.negotiation",
    "iscsi_conformance.core.chap",
    "iscsi_conformance.core.login.target",
    # the area "initiator": the reference initiator broken for the Wire option tests
    "iscsi_conformance.initiator.client",
    "iscsi_conformance.initiator.engine",
)

#: The areas issue 10 names (item 5), each of which must have mutants.
ISSUE_AREAS = {
    "login", "keys", "chap", "digests", "sequencing", "data", "r2t", "control", "scsi",
    "reservations", "discovery",
}  # fmt: skip


def _snapshot() -> dict[tuple[str, str], Any]:
    """Every attribute of the watched modules and of their classes, by identity."""
    snap: dict[tuple[str, str], Any] = {}
    for name in WATCHED:
        mod = importlib.import_module(name)
        for attr, value in vars(mod).items():
            snap[(name, attr)] = value
            if isinstance(value, dict) and not attr.startswith("__"):
                snap[(name, attr + "{}")] = tuple(value.items())
            if inspect.isclass(value) and value.__module__ == name:
                for cattr, cvalue in vars(value).items():
                    snap[(f"{name}.{attr}", cattr)] = cvalue
    return snap


MUTANTS = sorted(all_mutants().values(), key=lambda m: m.name)


def test_at_least_sixty_mutants_with_unique_names() -> None:
    names = [m.name for m in MUTANTS]
    assert len(names) >= 60
    assert len(set(names)) == len(names)


def test_every_area_of_the_issue_has_mutants() -> None:
    assert set(AREAS) >= ISSUE_AREAS
    for area in AREAS:
        assert any(m.area == area for m in MUTANTS), area


def test_every_mutant_says_what_it_breaks_and_what_should_catch_it() -> None:
    prefixes = {
        "Login",
        "CHAP",
        "Digests",
        "Discovery",
        "FullFeature",
        "Naming",
        "Reservations",
        "Cluster",
        "Interop",
        "Initiator",  # the reference initiator judged by an initiator-role test
    }
    for m in MUTANTS:
        assert m.description and m.catches, m.name
        for test_id in m.catches:
            assert test_id.split(".")[0] in prefixes, (m.name, test_id)
        assert m.suite_prefixes(), m.name


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_and_reverts_cleanly(mutant: Any) -> None:
    before = _snapshot()
    patcher = activate(mutant.name)
    try:
        assert patcher._undo, "the mutant changed nothing"
        assert _snapshot() != before, "the mutant changed nothing we watch"
    finally:
        patcher.undo()
    assert _snapshot() == before


def test_patcher_replaces_the_target_copies_of_a_function() -> None:
    from iscsi_conformance.target import connection, tmf

    p = Patcher()
    original = tmf.perform_tmf
    p.replace(tmf, "perform_tmf", lambda conn, req: (0, None))
    try:
        assert connection.perform_tmf is tmf.perform_tmf is not original
    finally:
        p.undo()
    assert connection.perform_tmf is tmf.perform_tmf is original


def test_negotiator_mutants_leave_the_initiator_alone() -> None:
    from iscsi_conformance.core.negotiation import Negotiator, Role

    patcher = activate("Keys.Unknown.AnsweredReject")
    try:
        target = Negotiator(Role.TARGET, {})
        initiator = Negotiator(Role.INITIATOR, {})
        assert target.respond([("X-vendor-key", "1")]) == [("X-vendor-key", "Reject")]
        assert initiator.respond([("X-vendor-key", "1")]) == [("X-vendor-key", "NotUnderstood")]
    finally:
        patcher.undo()


def test_wire_rewriter_round_trips_and_applies_the_digests_after_login() -> None:
    from iscsi_conformance.mutation import wire

    conn = types.SimpleNamespace(hd=True, dd=True)
    login = P.LoginResponse(transit=True, csg=1, nsg=3, itt=5, statsn=1)
    nop = P.NopIn(itt=9, statsn=2, data=b"ping")
    raw = P.encode(login) + P.encode(nop, header_digest=True, data_digest=True)
    stream = wire._Stream()
    seen: list[Any] = []
    out, close = wire._rewrite(
        conn, stream, [raw[:30], raw[30:]], False, lambda c, pdu, s: seen.append(pdu) or pdu
    )
    assert out == raw and not close
    assert seen == [login, nop]
    out, close = wire._rewrite(conn, stream, [P.encode(nop, header_digest=True, data_digest=True)], False,
                               lambda c, pdu, s: wire.HANG_UP)  # fmt: skip
    assert out == b"" and close


def test_sample_covers_every_area_and_rotates_with_the_seed() -> None:
    one = sample(MUTANTS, 1, "2026-01-01")
    assert {m.area for m in one} == set(AREAS)
    assert one == sample(MUTANTS, 1, "2026-01-01")
    seen = {m.name for seed in range(40) for m in sample(MUTANTS, 1, str(seed))}
    assert len(seen) > 2 * len(AREAS)


def test_judge_kills_on_a_new_failure_only() -> None:
    m = MUTANTS[0]
    base = SuiteRun(outcomes={"A": "passed", "B": "failed", "C": "passed"}, returncode=1)
    assert (
        judge(
            m, SuiteRun(outcomes={"A": "passed", "B": "failed", "C": "passed"}, returncode=1), base
        ).status
        == "survived"
    )
    r = judge(
        m, SuiteRun(outcomes={"A": "non-strict", "B": "failed", "C": "skipped"}, returncode=0), base
    )
    assert (r.status, r.killed_by) == ("killed", ["A"])
    r = judge(m, SuiteRun(outcomes={"A": "informational"}, returncode=0), base)
    assert (r.status, r.observed_by) == ("survived", ["A"])
    assert judge(m, SuiteRun(returncode=3, stderr_tail="boom"), base).status == "error"
    assert judge(m, SuiteRun(outcomes={"A": "passed"}, timed_out=True), base).status == "timeout"


def test_survivors_file_names_registered_mutants_with_reasons() -> None:
    known = all_mutants()
    for name, entry in load_survivors().items():
        assert name in known, name
        assert entry.get("reason") and entry.get("should_catch"), name
        if entry.get("equivalent"):
            # An equivalent mutant is a judgement on the text: its reason names the
            # section that was read.
            assert re.search(r"\d+\.\d+", str(entry["reason"])), name


def test_equivalent_mutants_leave_the_score_and_a_kill_of_one_is_flagged() -> None:
    from iscsi_conformance.mutation import runner

    m = MUTANTS[0]
    base = SuiteRun(outcomes={"A": "passed"}, returncode=0)
    killed = judge(m, SuiteRun(outcomes={"A": "failed"}, returncode=1), base)
    survived = judge(m, SuiteRun(outcomes={"A": "passed"}, returncode=0), base)
    equivalent = judge(m, SuiteRun(outcomes={"A": "passed"}, returncode=0), base)
    equivalent.equivalent = True
    report = runner.Report([killed, survived, equivalent], base, None, 0.0)
    c = report.counts()
    assert (c["killed"], c["survived"], c["equivalent"], c["score"]) == (1, 1, 1, 50.0)
    assert report.overreaching() == []
    killed.equivalent = True
    assert report.overreaching() == [killed]


def test_check_runs_an_unexpected_survivor_again_and_calls_a_later_kill_flaky(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from iscsi_conformance.mutation import runner

    m = MUTANTS[0]
    base = SuiteRun(outcomes={"A": "passed"}, returncode=0)
    survived = judge(m, SuiteRun(outcomes={"A": "passed"}, returncode=0), base)
    report = runner.Report([survived], base, None, 0.0)
    monkeypatch.setattr(
        runner, "run_suite", lambda *a, **k: SuiteRun(outcomes={"A": "failed"}, returncode=1)
    )
    assert runner.recheck(report, {m.name: m}) == []
    assert survived.note.endswith("flaky") and not report.unexpected()
    monkeypatch.setattr(
        runner, "run_suite", lambda *a, **k: SuiteRun(outcomes={"A": "passed"}, returncode=0)
    )
    again = judge(m, SuiteRun(outcomes={"A": "passed"}, returncode=0), base)
    assert runner.recheck(runner.Report([again], base, None, 0.0), {m.name: m}) == [again]
