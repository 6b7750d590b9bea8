"""Two runs compared: what regressed, what was fixed, per cell.

Theory of operation: results are keyed by (test id, pairing), as in a merge. A test in
both documents is compared by outcome class: a *failure* is ``failed`` or ``error``; a
*deviation* is ``xfailed`` (a peer's manifest lists it). A test that did not fail
before and fails now is a **regression**, the only change that makes
:attr:`Diff.regressed` true (``report diff`` exits 1, a vendor's CI fails on it). A test
that failed and now passes is **fixed**; deviations that appear or go, SHOULDs newly
broken (non-strict) and tests added or removed are listed, never a regression. A test
only in the new document that fails is listed with the added tests: it did not regress,
and a MUST failure fails a certification on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .model import Results, TestResult

__all__ = ["CellChanges", "Change", "Diff", "diff", "format_text", "history_trend"]

FAILING = ("failed", "error")


@dataclasses.dataclass
class Change:
    id: str
    old: str  # outcome before ("" when the test is new)
    new: str  # outcome now ("" when the test is gone)
    message: str = ""  # the new result's message (the old one's when gone)


@dataclasses.dataclass
class CellChanges:
    pairing: str
    new_failures: list[Change] = dataclasses.field(default_factory=list)
    fixed: list[Change] = dataclasses.field(default_factory=list)
    deviations_new: list[Change] = dataclasses.field(default_factory=list)
    deviations_gone: list[Change] = dataclasses.field(default_factory=list)
    non_strict_new: list[Change] = dataclasses.field(default_factory=list)
    added: list[Change] = dataclasses.field(default_factory=list)
    removed: list[Change] = dataclasses.field(default_factory=list)

    KINDS = (
        ("new_failures", "new failures"),
        ("fixed", "fixed"),
        ("deviations_new", "new deviations"),
        ("deviations_gone", "deviations gone"),
        ("non_strict_new", "SHOULDs newly broken (non-strict)"),
        ("added", "tests added"),
        ("removed", "tests removed"),
    )

    @property
    def empty(self) -> bool:
        return not any(getattr(self, k) for k, _ in self.KINDS)

    def groups(self) -> list[tuple[str, str, list[Change]]]:
        """The non-empty lists: (key, label, changes)."""
        return [(k, label, getattr(self, k)) for k, label in self.KINDS if getattr(self, k)]


@dataclasses.dataclass
class Diff:
    old_label: str
    new_label: str
    cells: list[CellChanges]

    @property
    def regressed(self) -> bool:
        return any(c.new_failures for c in self.cells)

    def count(self, kind: str) -> int:
        return sum(len(getattr(c, kind)) for c in self.cells)


def diff(old: Results, new: Results, *, old_label: str = "old", new_label: str = "new") -> Diff:
    """Compare ``new`` against the baseline ``old`` (see the module docstring)."""
    before = {t.key: t for t in old.tests}
    after = {t.key: t for t in new.tests}
    cells: dict[str, CellChanges] = {}

    def cell(pid: str) -> CellChanges:
        return cells.setdefault(pid, CellChanges(pid))

    for key in sorted(before.keys() | after.keys(), key=lambda k: (k[1], k[0])):
        tid, pid = key
        a, b = before.get(key), after.get(key)
        if a is None and b is not None:
            cell(pid).added.append(Change(tid, "", b.outcome, _first(b)))
            continue
        if b is None and a is not None:
            cell(pid).removed.append(Change(tid, a.outcome, "", _first(a)))
            continue
        assert a is not None and b is not None
        if a.outcome == b.outcome:
            continue
        change = Change(tid, a.outcome, b.outcome, _first(b))
        c = cell(pid)
        if b.outcome in FAILING and a.outcome not in FAILING:
            c.new_failures.append(change)
        elif a.outcome in FAILING and b.outcome not in FAILING and b.outcome != "skipped":
            c.fixed.append(change)
        if b.outcome == "xfailed":
            c.deviations_new.append(change)
        elif a.outcome == "xfailed":
            c.deviations_gone.append(change)
        if b.outcome == "non-strict" and a.outcome not in FAILING:
            c.non_strict_new.append(change)
    order = {p.id: i for i, p in enumerate(new.pairings)}
    out = sorted(
        (c for c in cells.values() if not c.empty),
        key=lambda c: (order.get(c.pairing, len(order)), c.pairing),
    )
    return Diff(old_label, new_label, out)


def _first(t: TestResult) -> str:
    return t.message.strip().splitlines()[0][:300] if t.message.strip() else ""


def format_text(d: Diff) -> str:
    """The diff for a terminal: a verdict line, then per cell its lists."""
    lines = [
        f"{d.new_label} against {d.old_label}: "
        + (
            f"REGRESSED, {d.count('new_failures')} new failure(s)"
            if d.regressed
            else "no regression"
        )
        + f"; {d.count('fixed')} fixed, {d.count('deviations_new')} new deviation(s), "
        f"{d.count('deviations_gone')} deviation(s) gone, {d.count('added')} test(s) added, "
        f"{d.count('removed')} removed"
    ]
    for c in d.cells:
        lines.append(f"{c.pairing}:")
        for _, label, changes in c.groups():
            lines.append(f"  {label} ({len(changes)}):")
            for ch in changes:
                was = f"{ch.old or '—'} -> {ch.new or '—'}"
                lines.append(f"    {ch.id}  {was}" + (f"  {ch.message}" if ch.message else ""))
    return "\n".join(lines)


def history_trend(results: Results, last: int = 8) -> tuple[list[str], dict[str, list[str]]]:
    """Per cell, the outcome of each of the last ``last`` runs that a merge kept (a
    test's result and its ``history``): ``(run ids, {pairing: ["330/2", ...]})`` where
    each entry is ``passed/failed`` of that run in that cell ("" when it ran none)."""
    started = {r.id: (r.started or "", i) for i, r in enumerate(results.runs)}
    seen: dict[str, dict[str, list[int]]] = {}

    def add(pid: str, run: str | None, outcome: str) -> None:
        if run is None or outcome == "skipped":
            return
        per = seen.setdefault(pid, {}).setdefault(run, [0, 0])
        per[1 if outcome in FAILING else 0] += 1

    for t in results.tests:
        add(t.pairing, t.run, t.outcome)
        for a in t.history:
            add(t.pairing, a.run, a.outcome)
    runs = sorted(
        {r for per in seen.values() for r in per}, key=lambda r: started.get(r, ("", 1 << 30))
    )[-last:]
    table = {
        pid: [f"{per[r][0]}/{per[r][1]}" if r in per else "" for r in runs]
        for pid, per in seen.items()
    }
    return runs, table


def regressions(d: Diff) -> Iterable[tuple[str, Change]]:
    for c in d.cells:
        for ch in c.new_failures:
            yield c.pairing, ch
