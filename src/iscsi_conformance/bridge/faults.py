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

What a side must do after a fault is judged here too, from a :class:`FaultOutcome`
(the PDUs the bridge saw, each with the fault applied to it, and how the I/O ended):
``datain_digest_breach`` (RFC 7143 7.8, the initiator) and ``dataout_digest_breach``
(7.8, the target) return a :data:`Verdict`: "pass", "fail" (with why), "unexercised"
(no fault fired) or "inconclusive" (the I/O did not end in time and the wire showed
no answer: a recovery timer still running is no pass, and no breach either).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from iscsi_conformance.core.codes import RejectReason
from iscsi_conformance.core.pdu import (
    PDU,
    PDU_CLASSES,
    LogoutRequest,
    LogoutResponse,
    Reject,
    ScsiCommand,
    SnackRequest,
    TaskManagementRequest,
)

__all__ = [
    "ACTIONS",
    "Fault",
    "FaultOutcome",
    "FaultPlan",
    "Verdict",
    "datain_digest_breach",
    "dataout_digest_breach",
    "parse_fault",
]

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


_I2T, _T2I = "i->t", "t->i"  # judge.I2T / judge.T2I (faults sits beside the judge)


@dataclasses.dataclass
class FaultOutcome:
    """One bridged run with faults: what passed and how the I/O ended."""

    seen: list[tuple[int, str, PDU, Fault | None]]  # (connection, direction, PDU, fault)
    error: str | None = None  # the I/O's error, None if it completed
    data_ok: bool | None = None  # the data read back as written (None: not read)
    closed_first: dict[int, str] = dataclasses.field(default_factory=dict)  # side per conn
    timed_out: bool = False  # the I/O had not ended at the deadline (the bridge hung up)

    def faulted(self) -> tuple[int, PDU] | None:
        """(connection, PDU) of the first PDU a fault was applied to."""
        return next(((c, p) for c, _, p, f in self.seen if f is not None), None)

    def after(self, conn: int, direction: str) -> list[PDU]:
        """The PDUs ``direction`` carried on ``conn`` after the first faulted one."""
        i = next((i for i, (_, _, _, f) in enumerate(self.seen) if f is not None), None)
        if i is None:
            return []
        return [p for c, d, p, _ in self.seen[i + 1 :] if c == conn and d == direction]


Verdict = tuple[Literal["pass", "fail", "unexercised", "inconclusive"], str]


def datain_digest_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 7.8: an initiator that gets a Data-In with a payload digest error
    discards it and either asks for it again (SNACK) or aborts the task and ends the
    command with an error (or escalates to session recovery). It kept the rule if the
    I/O ended with an error, or if on the wire it sent a SNACK, aborted the task, sent
    the same command again or hung up (no Logout) after the fault."""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "no Data-In carried a data digest"
    conn, pdu = hit
    if o.data_ok is False:
        return "fail", "the data read back differs from what was written"
    itt = getattr(pdu, "itt", None)
    cdb = next(
        (p.cdb for c, d, p, _ in o.seen
         if c == conn and d == _I2T and isinstance(p, ScsiCommand) and p.itt == itt),
        None,
    )  # fmt: skip
    later = o.after(conn, _I2T)
    reacted = any(
        isinstance(p, SnackRequest)
        or (isinstance(p, TaskManagementRequest) and p.referenced_task_tag == itt)
        or (isinstance(p, ScsiCommand) and cdb is not None and p.cdb == cdb)
        for p in later
    )
    hung_up = o.closed_first.get(conn) == "initiator" and not any(
        isinstance(p, LogoutRequest) for p in later
    )
    if reacted or hung_up:
        return "pass", "answered on the wire"
    if o.timed_out:
        return "inconclusive", "no end and no answer on the wire before the deadline"
    if o.error is not None:
        return "pass", "the command ended with an error"
    return "fail", (
        f"the initiator took the Data-In of ITT {itt:#x} with a wrong data digest as good: "
        "no SNACK, no abort, no retry, no hang-up, and the I/O completed"
    )


def dataout_digest_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 7.8: a target answers a PDU with a payload digest error with a Reject
    (Data-Digest-Error) and discards it, or escalates to session recovery (it ends the
    connection). Keeping the connection without a Reject is neither; a WRITE that
    reported success must read back as written."""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "no Data-Out carried a data digest"
    conn, _ = hit
    if o.data_ok is False:
        return "fail", "the data read back differs from what was written"
    answers = o.after(conn, _T2I)
    if any(isinstance(p, Reject) and p.reason == RejectReason.DATA_DIGEST_ERROR for p in answers):
        return "pass", "Reject (Data-Digest-Error)"
    logged_out = any(isinstance(p, LogoutResponse) for p in answers)
    if o.closed_first.get(conn) == "target" and not logged_out:
        return "pass", "the target ended the connection (session recovery)"
    if o.timed_out:
        return "inconclusive", "no Reject and no hang-up before the deadline"
    return "fail", (
        "after a Data-Out with a wrong data digest the target sent no Reject "
        "(Data-Digest-Error) and kept the connection"
    )
