"""The mutant registry: named, small patches of the reference target's behaviour (and,
in the area "initiator", of the reference initiator's, for the Wire option tests).

Theory of operation: a mutant is a function that, given a :class:`~.patching.Patcher`,
replaces one piece of the reference target's behaviour (a method, a function the
target imports, or what it puts on the wire) with a wrong one. It is registered with
a dotted name, the area of the issue it belongs to, a sentence saying what breaks,
and the conformance tests (stable ID prefixes) expected to catch it. An area names
the suite prefixes that test it: a mutant runs only those, so a kill counts only
when a test of its own area sees the breach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iscsi_conformance.mutation.patching import Patcher

Apply = Callable[["Patcher"], None]


@dataclass(frozen=True)
class Area:
    """One area of issue 10's list, and the suite prefixes that test it."""

    name: str
    description: str
    suites: tuple[str, ...]


@dataclass(frozen=True)
class Mutant:
    """One named behavioural mutant of the reference target."""

    name: str
    area: str
    description: str
    catches: tuple[str, ...]  # test IDs (prefixes) that should kill it
    apply: Apply = field(repr=False, compare=False)
    suites: tuple[str, ...] = ()  # extra suite prefixes beyond the area's

    def suite_prefixes(self) -> tuple[str, ...]:
        """What a run of this mutant selects: its area's suites, then its own."""
        return tuple(dict.fromkeys(AREAS[self.area].suites + self.suites))


_FF = "FullFeature"
AREAS: dict[str, Area] = {
    a.name: a
    for a in (
        Area(
            "login",
            "login refusals, the Login Response fields, stage and T/C bits, session identity",
            (
                "Login.Session",
                "Login.Stages",
                "Login.Versions",
                "Login.Connections",
                "Login.Continuation",
                "Login.Redirect",
            ),
        ),
        Area(
            "keys",
            "repeated, unknown and out-of-range keys; the answers of each negotiation rule",
            (
                "Login.Keys",
                "Login.TextLimits",
                "Login.Connections.NonLeading",
                "Login.Continuation",
                "Digests.Negotiation",
                f"{_FF}.Text",
            ),
        ),
        Area("chap", "CHAP verification and the reflection rules", ("CHAP", "Login.Stages")),
        Area("digests", "header and data digests on every PDU type", ("Digests",)),
        Area(
            "sequencing",
            "StatSN, ExpCmdSN, MaxCmdSN and the CmdSN window",
            (
                f"{_FF}.Sequencing",
                f"{_FF}.Nop",
                f"{_FF}.Scsi",
                f"{_FF}.Logout",
                f"{_FF}.TaskManagement",
                "Login.Connections",
                "Login.Session",
            ),
        ),
        Area(
            "data",
            "DataSN, buffer offsets, the F and S bits, residuals",
            (
                f"{_FF}.DataIn",
                f"{_FF}.Residuals",
                f"{_FF}.Scsi",
                f"{_FF}.Errors.Write",
                "Interop.Data",
            ),
        ),
        Area(
            "r2t",
            "R2T and Data-Out rules (R2TSN, offsets, bursts), immediate and unsolicited data",
            (f"{_FF}.DataOut", f"{_FF}.Errors", f"{_FF}.Scsi.WriteReadBack", "Interop.Data"),
        ),
        Area(
            "control",
            "task management, logout, NOP, Reject and Text; Async Messages",
            (
                f"{_FF}.TaskManagement",
                f"{_FF}.Async",
                f"{_FF}.Logout",
                f"{_FF}.Nop",
                f"{_FF}.Reject",
                f"{_FF}.Text",
                f"{_FF}.Errors.DataOut",
                "Login.Connections.LogoutOtherConnection",
            ),
        ),
        Area(
            "recovery",
            "SNACK and error recovery levels; ERL 2 connection recovery",
            (f"{_FF}.Snack", f"{_FF}.Recovery", "Digests.Errors"),
        ),
        Area(
            "scsi",
            "SCSI status, sense data and unit attentions",
            (
                f"{_FF}.Scsi",
                f"{_FF}.Errors",
                f"{_FF}.Residuals",
                f"{_FF}.TaskManagement",
                "Reservations",
                "Interop.Data",
            ),
        ),
        Area(
            "reservations",
            "every PR service action and type, I_T nexus identity, SCSI-2 reservations",
            ("Reservations",),
        ),
        Area(
            "cluster",
            "reservations as failover clusters use them: arbitration, fencing, restarts (issue 13)",
            ("Cluster",),
        ),
        Area(
            "discovery",
            "SendTargets filtering and the answers' format; iSCSI names",
            ("Discovery", "Naming", "Interop.Discovery", "Login.Session"),
        ),
        Area(
            "initiator",
            "the reference initiator broken on purpose, judged on the wire by the bridge "
            "while configured for one option (issue 15)",
            (
                "Login.Wire.Option",
                "CHAP.Wire.Option",
                "Digests.Wire.Option",
                f"{_FF}.Wire.Option",
            ),
        ),
    )
}

MUTANTS: dict[str, Mutant] = {}


def mutant(
    name: str,
    area: str,
    description: str,
    *,
    catches: tuple[str, ...] | list[str] = (),
    suites: tuple[str, ...] = (),
) -> Callable[[Apply], Apply]:
    """Register the decorated ``apply(patcher)`` as the mutant ``name``."""

    def register(fn: Apply) -> Apply:
        if area not in AREAS:
            raise ValueError(f"mutant {name}: unknown area {area!r}")
        if name in MUTANTS:
            raise ValueError(f"mutant {name} registered twice")
        MUTANTS[name] = Mutant(name, area, description, tuple(catches), fn, suites)
        return fn

    return register
