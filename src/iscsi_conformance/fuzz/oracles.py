"""Oracles of a fuzz campaign: what makes a case a failure besides a dead target.

Theory of operation: ``AnswerChecker`` sees every PDU a target sends on one
connection, in order, and returns the rules it breaks, each as a ``Violation`` with
the catalog row it rests on and that row's level (only MUST rows fail a third-party
peer; against the reference peers every row is ours to keep):

- the answer decodes, and its data segment is no longer than the
  MaxRecvDataSegmentLength we declared (R7143-13.12-2, MUST);
- MaxCmdSN is never below ExpCmdSN - 1 in serial arithmetic (R7143-4.2.2.1-4, MUST)
  and ExpCmdSN never goes back (the same row's window rule, checked as informational);
- StatSN counts up by one per status on the connection, from the value the login set
  (R7143-4.2.2.2-1, INFORMATIONAL); an R2T, a NOP-In ping and a Data-In without status
  carry the next StatSN without taking it;
- the Data-In PDUs of one task carry DataSN 0, 1, 2... (R7143-4.2.2.3-1, MUST).

``HealthEvent`` is one internal error the reference target logged (an unhandled
exception, an answer its own encoder refused): see ``fuzz.reference``.
"""

from __future__ import annotations

import dataclasses

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.serial import add_mod, lt

__all__ = ["AnswerChecker", "HealthEvent", "Violation"]

_NONE = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule: ``kind`` and ``place`` are the failure's identity."""

    kind: str
    place: str
    detail: str
    requirement: str
    level: str


@dataclasses.dataclass(frozen=True)
class HealthEvent:
    """One internal error in the reference target's log: exception type and where."""

    place: str
    detail: str
    peer_port: int | None


class AnswerChecker:
    """The invariants of one connection's answers (see the module doc)."""

    def __init__(self, statsn: int, expcmdsn: int, mrdsl: int, *, erl: int = 0) -> None:
        self.erl = erl
        self.next_statsn = add_mod(statsn, 1)
        self.expcmdsn = expcmdsn
        self.mrdsl = mrdsl
        self.datasn: dict[int, int] = {}

    def check(self, pdu: P.PDU) -> list[Violation]:
        out: list[Violation] = []
        name = type(pdu).__name__
        statsn = getattr(pdu, "statsn", None)
        if isinstance(pdu, P.ScsiDataIn) and not pdu.status_present:
            statsn = None  # the field is reserved there (RFC 7143 11.7.7)
        if self.erl and statsn is not None and lt(statsn, self.next_statsn):
            # at ErrorRecoveryLevel > 0 a status the initiator asked again (SNACK) keeps
            # its StatSN and the window it went out with (RFC 7143 4.2.2.2): not new
            return out
        data = getattr(pdu, "data", b"")
        if len(data) > self.mrdsl:
            out.append(
                Violation(
                    "mrdsl",
                    name,
                    f"{name} carries {len(data)} bytes, above the {self.mrdsl} we declared",
                    "R7143-13.12-2",
                    "MUST",
                )
            )
        exp = getattr(pdu, "expcmdsn", None)
        mx = getattr(pdu, "maxcmdsn", None)
        carries_window = not (isinstance(pdu, P.ScsiDataIn) and not pdu.status_present)
        if exp is not None and mx is not None and carries_window:
            if lt(mx, add_mod(exp, -1)):
                out.append(
                    Violation(
                        "window",
                        name,
                        f"MaxCmdSN {mx} below ExpCmdSN {exp} - 1",
                        "R7143-4.2.2.1-4",
                        "MUST",
                    )
                )
            if lt(exp, self.expcmdsn):
                out.append(
                    Violation(
                        "expcmdsn-back",
                        name,
                        f"ExpCmdSN went back from {self.expcmdsn} to {exp}",
                        "R7143-4.2.2.1-4",
                        "INFORMATIONAL",
                    )
                )
            else:
                self.expcmdsn = exp
        if statsn is not None:
            takes = not (isinstance(pdu, P.R2T) or (isinstance(pdu, P.NopIn) and pdu.itt == _NONE))
            if statsn != self.next_statsn:
                out.append(
                    Violation(
                        "statsn",
                        name,
                        f"StatSN {statsn} where {self.next_statsn} was due",
                        "R7143-4.2.2.2-1",
                        "INFORMATIONAL",
                    )
                )
                self.next_statsn = statsn  # resynchronise: one report per jump
            if takes:
                self.next_statsn = add_mod(self.next_statsn, 1)
        if isinstance(pdu, P.ScsiDataIn):
            due = self.datasn.get(pdu.itt, 0)
            if self.erl and lt(pdu.datasn, due):
                return out  # Data-In sent again for a SNACK (RFC 7143 11.16): not new
            if pdu.datasn != due:
                out.append(
                    Violation(
                        "datasn",
                        name,
                        f"DataSN {pdu.datasn} where {due} was due (ITT {pdu.itt:#x})",
                        "R7143-4.2.2.3-1",
                        "MUST",
                    )
                )
            self.datasn[pdu.itt] = add_mod(pdu.datasn, 1)
            if pdu.status_present:
                self.datasn.pop(pdu.itt, None)
        elif isinstance(pdu, P.ScsiResponse):
            self.datasn.pop(pdu.itt, None)
        return out
