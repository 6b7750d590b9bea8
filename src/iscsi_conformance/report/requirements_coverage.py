"""Requirements coverage: which catalog requirements the run exercised, and per peer
how many of the mandatory requirements of its role it meets.

Definitions (also in docs/reports.md):

- a requirement is *covered* when at least one test that cites its id *ran* (any
  outcome but ``skipped``) in any pairing;
- for a peer P of role R (target or initiator) and each mandatory requirement
  (MUST, MUST NOT, SHALL, SHALL NOT, REQUIRED) whose role is R or ``both``, the tests
  citing it that ran in pairings where P plays R decide its *status*: ``failed`` if
  any failed or errored, else ``deviation`` if any xfailed (a known deviation is not a
  pass), else ``passed``. A non-strict or informational result broke a SHOULD or
  recorded what the RFC leaves open, not the mandatory requirement the test cites: it
  counts as ``passed`` for it. Requirements no such test ran are *untested* for P.
- a test counts for a side only if it puts that side under test: the roles of its
  spec references (``target``, ``initiator``, ``both``; none given means both). A
  target test that cites a ``both`` requirement therefore does not count against the
  reference initiator that drove it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .model import PAIRING_SEPARATOR, Requirement, Results, TestResult

__all__ = ["Coverage", "PeerCompliance", "compute_coverage"]


@dataclasses.dataclass
class PeerCompliance:
    """How one peer fares on the mandatory requirements of its role."""

    name: str
    role: str
    applicable: int  # mandatory requirements of this role in the catalog
    passed: list[str] = dataclasses.field(default_factory=list)
    deviation: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)

    @property
    def tested(self) -> int:
        return len(self.passed) + len(self.deviation) + len(self.failed)

    @property
    def untested(self) -> int:
        return self.applicable - self.tested

    @property
    def pass_percent(self) -> float:
        return 100.0 * len(self.passed) / self.tested if self.tested else 0.0


@dataclasses.dataclass
class Coverage:
    total: int
    covered: list[str]
    referenced_only: list[str]  # cited only by tests that were all skipped
    uncovered: list[Requirement]
    unknown_ids: list[str]  # cited by tests, missing from the catalog
    by_level: dict[str, tuple[int, int]]  # level -> (covered, total)
    by_document: dict[str, tuple[int, int]]
    peers: list[PeerCompliance]

    @property
    def percent(self) -> float:
        return 100.0 * len(self.covered) / self.total if self.total else 0.0


_RANK = {"failed": 3, "deviation": 2, "passed": 1}


def _status(outcomes: Iterable[str]) -> str | None:
    best: str | None = None
    for o in outcomes:
        s = {"failed": "failed", "error": "failed", "xfailed": "deviation"}.get(
            o, "passed" if o in ("passed", "xpassed", "non-strict", "informational") else None
        )
        if s and (best is None or _RANK[s] > _RANK[best]):
            best = s
    return best


def compute_coverage(results: Results) -> Coverage:
    catalog = results.requirement_index()
    ran: dict[str, list[TestResult]] = {}
    cited: set[str] = set()
    for t in results.tests:
        for rid in t.requirements:
            cited.add(rid)
            if t.outcome != "skipped":
                ran.setdefault(rid, []).append(t)
    covered = [rid for rid in catalog if rid in ran]
    referenced_only = [rid for rid in catalog if rid in cited and rid not in ran]
    uncovered = [r for rid, r in catalog.items() if rid not in ran]
    unknown = sorted(cited - set(catalog))

    by_level: dict[str, tuple[int, int]] = {}
    by_doc: dict[str, tuple[int, int]] = {}
    for r in catalog.values():
        for table, key in ((by_level, r.level), (by_doc, r.document)):
            c, n = table.get(key, (0, 0))
            table[key] = (c + (r.id in ran), n + 1)

    pairing_sides: dict[str, tuple[str, str]] = {}
    for p in results.pairings:
        pairing_sides[p.id] = (p.initiator, p.target)
    peers: list[PeerCompliance] = []
    for role in ("target", "initiator"):
        side = 1 if role == "target" else 0
        names: list[str] = []
        for p in results.pairings:
            peer_name = (p.initiator, p.target)[side]
            if peer_name not in names:
                names.append(peer_name)
        mandatory = [r for r in catalog.values() if r.is_mandatory and r.role in (role, "both")]
        for name in names:
            pc = PeerCompliance(name=name, role=role, applicable=len(mandatory))
            for req in mandatory:
                outcomes = [
                    t.outcome
                    for t in ran.get(req.id, [])
                    if _side(pairing_sides, t.pairing, side) == name
                    and role in _roles_under_test(t)
                ]
                status = _status(outcomes)
                if status:
                    getattr(pc, status).append(req.id)
            peers.append(pc)
    return Coverage(
        total=len(catalog),
        covered=covered,
        referenced_only=referenced_only,
        uncovered=uncovered,
        unknown_ids=unknown,
        by_level=by_level,
        by_document=by_doc,
        peers=peers,
    )


def _roles_under_test(t: TestResult) -> set[str]:
    roles = {r.role for r in t.spec}
    if not roles or "both" in roles:
        return {"target", "initiator"}
    return roles


def _side(sides: dict[str, tuple[str, str]], pid: str, side: int) -> str:
    if pid in sides:
        return sides[pid][side]
    parts = pid.partition(PAIRING_SEPARATOR)
    return (parts[0], parts[2])[side]
