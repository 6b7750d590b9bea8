"""Mutants against third-party initiator cells: ``mutate --initiator NAME`` runs the
cells NAME x reference (the mutated reference target serving the third-party nodes)
and ``--suite`` narrows every mutant's run to those prefixes. In memory, plus one peer
test (tox -e cluster) that shows the Cluster.Mixed scenarios with libiscsi nodes kill
the third-party node mutants (mutation/mutants/cluster_nodes.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from iscsi_conformance.mutation import cli, get, runner
from iscsi_conformance.mutation.runner import SuiteRun, judge

NODE_MUTANTS = (
    "Cluster.Nodes.FenceSparesOtherHosts",
    "Cluster.Nodes.OtherSessionEndReleases",
    "Cluster.Nodes.PreemptedHolderStillWrites",
)


def _options(argv: list[str]) -> list[tuple[str, str]]:
    return [(a, argv[i + 1]) for i, a in enumerate(argv) if a.startswith("--iscsi-")]


def test_argv_runs_the_third_party_cells_against_the_reference_target() -> None:
    plain = runner.pytest_argv(["Cluster"])
    assert "--iscsi-initiator" not in plain and "--iscsi-no-target-column" not in plain
    argv = runner.pytest_argv(["Cluster.Mixed"], initiators=["libiscsi", "open-iscsi"])
    opts = _options(argv)
    assert ("--iscsi-target", "reference") in opts
    assert ("--iscsi-initiator", "libiscsi") in opts and ("--iscsi-initiator", "open-iscsi") in opts
    assert ("--iscsi-suite", "Cluster.Mixed") in opts
    assert "--iscsi-no-target-column" in argv  # reference x reference is not run as well


def test_cli_passes_initiators_and_suites_to_baseline_and_every_mutant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def run_suite(prefixes: list[str], **kw: Any) -> SuiteRun:
        calls.append((list(prefixes), kw))
        failing = kw.get("mutant") is not None
        return SuiteRun(
            outcomes={"Cluster.Mixed.ThreeNodes": "failed" if failing else "passed"}, returncode=0
        )

    monkeypatch.setattr(runner, "run_suite", run_suite)
    code = cli.main(
        ["--mutant", NODE_MUTANTS[0], "--initiator", "libiscsi", "--suite", "Cluster.Mixed"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cells libiscsi x reference" in out and "KILLED" in out
    assert len(calls) == 2  # the baseline and the mutant
    for prefixes, kw in calls:
        assert prefixes == ["Cluster.Mixed"] and list(kw["initiators"]) == ["libiscsi"]


def test_node_mutants_name_the_mixed_scenarios() -> None:
    for name in NODE_MUTANTS:
        m = get(name)
        assert m.area == "cluster"
        assert any(c.startswith("Cluster.Mixed.") for c in m.catches), name


# a peer test only where asked for (tox -e cluster): libiscsi's container, and one
# pytest process with the mutated reference target per mutant
@(pytest.mark.peer if os.environ.get("ISCSI_CONFORMANCE_CLUSTER_HEAVY") else pytest.mark.slow)
@pytest.mark.skipif(
    not os.environ.get("ISCSI_CONFORMANCE_CLUSTER_HEAVY"),
    reason="libiscsi's container and a suite run per mutant: tox -e cluster runs it",
)
def test_libiscsi_node_scenarios_kill_the_node_mutants() -> None:
    """Cluster.Mixed.FenceScsi and Cluster.Mixed.ThreeNodes on libiscsi x reference pass
    against the reference target and fail against each third-party node mutant."""
    suites = ["Cluster.Mixed.FenceScsi", "Cluster.Mixed.ThreeNodes"]
    base = runner.run_suite(suites, initiators=["libiscsi"], timeout=600)
    assert set(base.outcomes.values()) == {"passed"}, (base.outcomes, base.stderr_tail)
    for name in NODE_MUTANTS:
        run = runner.run_suite(suites, mutant=name, initiators=["libiscsi"], timeout=600)
        result = judge(get(name), run, base)
        assert result.status == "killed", (name, run.outcomes, run.messages)
