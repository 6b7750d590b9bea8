"""Faults the bridge injects on demand, parsed from ``--fault`` specs.

Theory of operation
-------------------
A spec is ``ACTION:PDU[#N][=ARG]``: the action, the PDU class it applies to (its
class name in ``core.pdu``, any case, or ``*`` for any PDU), the occurrence it fires
on (the N-th of that class in full feature phase across the bridge, 1 by default) and
the action's argument. Each fault fires once. Actions:

``drop``       the PDU is not forwarded (``withhold`` is the same word for a NOP-In);
``delay=S``    the PDU (and so everything after it in that direction) waits S seconds;
``digest``     the PDU is forwarded with a wrong data digest (or header digest when it
               carries no data; ``hdigest``/``ddigest`` choose); needs the digest agreed;
``close``      both TCP connections are reset instead of forwarding the PDU;
``split``      the PDU goes out in two TCP writes 50 ms apart, cut inside the BHS;
``merge``      the PDU is held and goes out in one write with the next PDU;
``reorder``    the PDU is held and goes out after the next PDU in its direction.

Parsing is pure; :meth:`FaultPlan.decide` is called by the pump with each PDU and says
what to do. A spec that does not parse raises ``ValueError`` with one clear line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from iscsi_conformance.core.pdu import PDU, PDU_CLASSES

__all__ = ["ACTIONS", "Fault", "FaultPlan", "parse_fault"]

ACTIONS = ("drop", "withhold", "delay", "digest", "hdigest", "ddigest", "close", "split",
           "merge", "reorder")  # fmt: skip
_CLASS_NAMES = {cls.__name__.lower(): cls.__name__ for cls in PDU_CLASSES.values()}


@dataclasses.dataclass(frozen=True)
class Fault:
    action: str
    pdu: str  # class name, or "*"
    occurrence: int = 1
    seconds: float = 0.0

    def __str__(self) -> str:
        arg = f"={self.seconds:g}" if self.action == "delay" else ""
        return f"{self.action}:{self.pdu}#{self.occurrence}{arg}"


def parse_fault(spec: str) -> Fault:
    """``ACTION:PDU[#N][=ARG]`` -> Fault; ValueError naming what is wrong."""
    text = spec.strip()
    action, sep, rest = text.partition(":")
    action = action.lower()
    if not sep or action not in ACTIONS:
        raise ValueError(
            f"fault {spec!r}: expected ACTION:PDU[#N][=SECONDS], ACTION one of {', '.join(ACTIONS)}"
        )
    rest, _, arg = rest.partition("=")
    name, _, count = rest.partition("#")
    name = name.strip()
    if name != "*" and name.lower() not in _CLASS_NAMES:
        raise ValueError(f"fault {spec!r}: unknown PDU {name!r} (a core.pdu class name or *)")
    try:
        occurrence = int(count) if count else 1
    except ValueError:
        raise ValueError(f"fault {spec!r}: #N must be a number, got {count!r}") from None
    if occurrence < 1:
        raise ValueError(f"fault {spec!r}: #N counts from 1")
    seconds = 0.0
    if action == "delay":
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"fault {spec!r}: delay needs =SECONDS") from None
        if not 0 < seconds <= 3600:
            raise ValueError(f"fault {spec!r}: delay must lie in (0, 3600] seconds")
    elif arg:
        raise ValueError(f"fault {spec!r}: {action} takes no =argument")
    if action == "withhold":
        action = "drop"
    return Fault(action, "*" if name == "*" else _CLASS_NAMES[name.lower()], occurrence, seconds)


class FaultPlan:
    """The faults of one bridge, each firing once (called from the bridge's loop only)."""

    def __init__(self, faults: Iterable[Fault | str] = ()) -> None:
        self.faults = [f if isinstance(f, Fault) else parse_fault(f) for f in faults]
        self.fired: list[tuple[Fault, int, str]] = []  # (fault, connection, PDU repr head)
        self._seen: dict[str, int] = {}
        self._done: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.faults)

    @property
    def pending(self) -> bool:
        """True while a fault is still to fire."""
        return len(self._done) < len(self.faults)

    def decide(self, conn: int, pdu: PDU, full_feature: bool) -> Fault | None:
        """The fault to apply to ``pdu`` now, if one is due (full feature phase only)."""
        if not self.faults or not full_feature:
            return None
        name = type(pdu).__name__
        self._seen[name] = self._seen.get(name, 0) + 1
        self._seen["*"] = self._seen.get("*", 0) + 1
        for i, fault in enumerate(self.faults):
            if i in self._done or fault.pdu not in (name, "*"):
                continue
            if self._seen[fault.pdu] == fault.occurrence:
                self._done.add(i)
                self.fired.append((fault, conn, repr(pdu)[:120]))
                return fault
        return None
