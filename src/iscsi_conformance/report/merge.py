"""Merge result documents from several machines, CI jobs or xdist workers into one.

The rules (also in docs/reports.md):

- **Format**: every input must be format ``iscsi-conformance-results`` of a major
  version this tool reads (2, or 1, upgraded when read: its grades come from its spec
  levels); anything else is refused with :class:`ResultsFormatError` naming the file.
  The output is written as the current version.
- **Runs**: union, keyed by (run id, xdist worker); exact repeats are dropped.
- **Peers**: keyed by (name, role, version, mode). ``role`` is in the key because the
  reference implementation is both an initiator and a target under one name. For one
  key: capabilities are united (a later input wins a conflicting value, with a note),
  deviations and commands are united without repeats. The same name with different
  versions stays as separate peers (and a note says so).
- **Pairings**: union by pairing id.
- **Tests**: keyed by (test id, pairing). When a key appears more than once:
  a *skipped* attempt never outweighs one that ran (a job without the capability does
  not hide a job that had it); among the rest the **latest** wins (by ``start``, else
  its run's ``finished``/``started``, else input order). The superseded attempts are
  kept in ``history``. If the outcomes of the attempts that ran **differ**, the test is
  marked ``flaky`` (its outcome stays the latest one). Either way a note is added.
  A SHOULD broken is the same behaviour whether a run graded it ``failed`` (strict) or
  ``non-strict``: such attempts are compared as one outcome, so merging a strict run
  with a non-strict one does not make the test flaky.
- **Requirements**: union by id; on conflicting text the first wins, with a note.
- **Notes**: concatenated, then the merge's own notes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from iscsi_conformance import grading

from .model import (
    PAIRING_SEPARATOR,
    READABLE_MAJORS,
    Attempt,
    Peer,
    Results,
    ResultsFormatError,
    Run,
    TestResult,
)

__all__ = ["merge", "merge_files"]


def merge_files(paths: Sequence[str | os.PathLike[str]]) -> Results:
    """Load and merge result files (see the module docstring for the rules)."""
    if not paths:
        raise ResultsFormatError("nothing to merge: no input files")
    return merge([Results.load(p) for p in paths], sources=[str(p) for p in paths])


def merge(inputs: Sequence[Results], *, sources: Sequence[str] | None = None) -> Results:
    """Merge in-memory documents; ``sources`` names them in notes and errors."""
    names = list(sources) if sources else [f"input #{i + 1}" for i in range(len(inputs))]
    for r, name in zip(inputs, names, strict=True):
        major = r.version.split(".", 1)[0]
        if major not in {str(m) for m in READABLE_MAJORS}:
            raise ResultsFormatError(
                f"format version {r.version} cannot be merged by this tool, which reads "
                f"versions {' and '.join(f'{m}.x' for m in READABLE_MAJORS)}",
                source=name,
            )
    out = Results()
    notes: list[str] = []
    for r in inputs:
        out.notes.extend(n for n in r.notes if n not in out.notes)
        out.secrets |= r.secrets

    out.runs = _merge_runs(inputs)
    out.peers = _merge_peers(inputs, notes)
    seen_pairings: dict[str, Any] = {}
    for r in inputs:
        for p in r.pairings:
            seen_pairings.setdefault(p.id, p)
    out.pairings = list(seen_pairings.values())
    out.requirements = _merge_requirements(inputs, notes)
    out.tests = _merge_tests(inputs, out.runs, notes)
    for t in out.tests:  # tests of a pairing no input listed (hand-made files)
        if t.pairing not in seen_pairings:
            init, _, targ = t.pairing.partition(PAIRING_SEPARATOR)
            seen_pairings[t.pairing] = out.add_pairing(init, targ or "?")
    if len(inputs) > 1:
        notes.insert(
            0,
            f"merged {len(inputs)} result files ({', '.join(names)}): "
            f"{len(out.runs)} runs, {len(out.pairings)} pairings, {len(out.tests)} test results",
        )
    out.notes.extend(notes)
    return out


def _merge_runs(inputs: Iterable[Results]) -> list[Run]:
    runs: dict[tuple[str, str | None], Run] = {}
    for r in inputs:
        for run in r.runs:
            runs.setdefault(run.key, run)
    return sorted(runs.values(), key=lambda x: (x.started or "", x.id, x.worker or ""))


def _merge_peers(inputs: Iterable[Results], notes: list[str]) -> list[Peer]:
    peers: dict[tuple[str, str, str, str], Peer] = {}
    for r in inputs:
        for p in r.peers:
            have = peers.get(p.key)
            if have is None:
                peers[p.key] = Peer.from_json(_plain(p))  # a copy: inputs stay untouched
                continue
            have.description = have.description or p.description
            for k, v in p.capabilities.items():
                if k in have.capabilities and have.capabilities[k] != v:
                    notes.append(
                        f"peer {p.name} {p.version} ({p.role}, {p.mode}): capability {k} "
                        f"differs between inputs ({have.capabilities[k]!r} / {v!r}); kept {v!r}"
                    )
                have.capabilities[k] = v
            _extend_unique(have.deviations, p.deviations)
            known = {_canon(c) for c in have.commands}
            for c in p.commands:
                if _canon(c) not in known:
                    have.commands.append(c)
                    known.add(_canon(c))
    by_name: dict[tuple[str, str], set[str]] = {}
    for p in peers.values():
        by_name.setdefault((p.name, p.role), set()).add(p.version)
    for (name, role), versions in sorted(by_name.items()):
        if len(versions) > 1:
            notes.append(
                f"{role} {name} took part in different versions ({', '.join(sorted(versions))}); "
                "its pairings combine results of all of them"
            )
    return list(peers.values())


def _merge_requirements(inputs: Iterable[Results], notes: list[str]) -> list[Any]:
    reqs: dict[str, Any] = {}
    for r in inputs:
        for q in r.requirements:
            have = reqs.get(q.id)
            if have is None:
                reqs[q.id] = q
            elif have != q:
                notes.append(f"requirement {q.id} differs between inputs; kept the first")
    return list(reqs.values())


def _merge_tests(
    inputs: Sequence[Results], runs: Sequence[Run], notes: list[str]
) -> list[TestResult]:
    run_time = {run.id: (run.finished or run.started or "") for run in runs}
    groups: dict[tuple[str, str], list[tuple[tuple[int, str, int], TestResult]]] = {}
    order = 0
    for r in inputs:
        for t in r.tests:
            order += 1
            when = t.start or run_time.get(t.run or "", "")
            ran = 0 if t.outcome == "skipped" else 1
            groups.setdefault(t.key, []).append(((ran, when, order), t))
    merged: list[TestResult] = []
    for (tid, pid), attempts in groups.items():
        if len(attempts) == 1:
            merged.append(attempts[0][1])
            continue
        attempts.sort(key=lambda a: a[0])
        latest = TestResult.from_json(_plain(attempts[-1][1]))
        history: list[Attempt] = []
        for _, t in attempts:
            history.extend(t.history)
            if t is not attempts[-1][1]:
                history.append(Attempt(t.outcome, t.run, t.start, t.duration, t.message))
        ran_outcomes = {
            _behaviour(a.outcome, latest.grade) for a in history if a.outcome != "skipped"
        }
        if latest.outcome != "skipped":
            ran_outcomes.add(_behaviour(latest.outcome, latest.grade))
        flaky = len(ran_outcomes) > 1 or any(t.flaky for _, t in attempts)
        latest.history = _dedupe_attempts(history)
        latest.flaky = flaky
        runs_txt = ", ".join(sorted({t.run or "?" for _, t in attempts}))
        if flaky:
            notes.append(
                f"{pid} {tid}: FLAKY, outcomes differ across {len(attempts)} results "
                f"({', '.join(sorted(ran_outcomes))}; runs {runs_txt}); showing the latest, {latest.outcome}"
            )
        else:
            notes.append(
                f"{pid} {tid}: {len(attempts)} results (runs {runs_txt}); kept the latest, {latest.outcome}"
            )
        merged.append(latest)
    return merged


def _behaviour(outcome: str, grade: str | None) -> str:
    """What an attempt observed, apart from the run's strictness: a SHOULD broken is
    ``failed`` in a strict run and ``non-strict`` otherwise (grading.failed_outcome)."""
    if outcome == grading.FAILED and grade == grading.SHOULD:
        return grading.NON_STRICT
    return outcome


def _dedupe_attempts(attempts: list[Attempt]) -> list[Attempt]:
    seen: set[str] = set()
    out: list[Attempt] = []
    for a in sorted(attempts, key=lambda a: a.start or ""):
        c = _canon(a)
        if c not in seen:
            seen.add(c)
            out.append(a)
    return out


def _plain(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _canon(obj: Any) -> str:
    data = (
        dataclasses.asdict(obj)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type)
        else obj
    )
    return json.dumps(data, sort_keys=True, default=str)


def _extend_unique(into: list[Any], items: Iterable[Any]) -> None:
    known = {_canon(x) for x in into}
    for x in items:
        if _canon(x) not in known:
            into.append(x)
            known.add(_canon(x))
