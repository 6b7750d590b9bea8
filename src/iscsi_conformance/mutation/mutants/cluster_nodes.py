"""Cluster, third-party nodes: reservation bugs that the Cluster.Mixed scenarios meet
with open-iscsi and libiscsi nodes (conformance/reservations/test_cluster.py, issue
13), each a fault of the reference target that no single-initiator test sees: fencing
scoped to the fencer's own host, a reservation released when another node's session
ends (libiscsi's tools log in and out for every command), and a fenced holder whose
writes still land through the I_T nexus it kept (open-iscsi's session, libiscsi's
fixed ISID, open-iscsi's ISID after a reboot).

``iscsi-conformance mutate --mutant NAME --initiator libiscsi --suite Cluster.Mixed``
runs them against the libiscsi x reference cell (the mutated reference target serves
the libiscsi nodes), ``--initiator open-iscsi`` against open-iscsi x reference; with no
``--initiator`` they run the Cluster area on reference x reference like any mutant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import Apply, mutant
from iscsi_conformance.scsi.reservations import AccessClass, Registration, ReservationState

R = ReservationState
_M = "Cluster.Mixed"


def _node_mutant(
    name: str, description: str, *, scenarios: tuple[str, ...]
) -> Callable[[Apply], Apply]:
    """Register a mutant of the area "cluster" caught by these Cluster.Mixed scenarios."""
    return mutant(name, "cluster", description, catches=[f"{_M}.{s}" for s in scenarios])


def _around_preempt(
    p: Patcher,
    before: Callable[[R, Any], Any],
    after: Callable[[R, Any, int, Any, Any], None],
) -> None:
    """Wrap ``ReservationState._preempt``: ``before(self, reg)`` is what it keeps of the
    state before the real PREEMPT, ``after(self, reg, sark, kept, result)`` changes the
    state and the result after it."""

    def make(old: Any) -> Any:
        def preempt(self: R, reg: Any, sark: int, scope: int, pr_type: int, *, abort: bool) -> Any:
            kept = before(self, reg)
            out = old(self, reg, sark, scope, pr_type, abort=abort)
            after(self, reg, sark, kept, out)
            return out

        return preempt

    p.wrap(R, "_preempt", make)


def _host(reg: Registration) -> str:
    """The initiator name of a registration's initiator port (``name,i,0xISID``)."""
    return reg.initiator.lower().split(",i,")[0]


@_node_mutant(
    "Cluster.Nodes.FenceSparesOtherHosts",
    "PREEMPT and PREEMPT AND ABORT remove the service action key's registrations only on I_T nexuses of the sender's own initiator name: a node of another host stays registered after its fence and writes on (SPC-4 5.13.11.2.4.3, 5.13.11.2.5: every registration with that key)",
    scenarios=("FenceScsi", "ThreeNodes", "Reboot"),
)
def fence_spares_other_hosts(p: Patcher) -> None:
    def before(self: R, reg: Any) -> list[Registration]:
        return list(self.registrations)

    def after(self: R, reg: Any, sark: int, kept: list[Registration], out: Any) -> None:
        spared = [
            r
            for r in kept
            if r not in self.registrations and r.key == sark and _host(r) != _host(reg)
        ]
        self.registrations.extend(spared)
        gone = {r.nexus_key for r in spared}
        out.unit_attentions[:] = [(k, a) for k, a in out.unit_attentions if k not in gone]
        out.aborted[:] = [k for k in out.aborted if k not in gone]

    _around_preempt(p, before, after)


@_node_mutant(
    "Cluster.Nodes.OtherSessionEndReleases",
    "the end of a session (logout or I_T nexus loss) of a registrant that does not hold the persistent reservation releases it: a libiscsi node, which logs out after every command, or a node that restarts, takes the disk from an owner that neither released it nor unregistered (SPC-4 5.13.1: I_T nexus loss does not reset persistent reservation state, as scsi/device.py's nexus_lost keeps it; row RSPC4-5.13.11.2.3-1: a holder's own unregistering releases)",
    scenarios=("ThreeNodes", "FenceScsi", "Restart"),
)
def other_session_end_releases(p: Patcher) -> None:
    def post(self: R, nexus: Any) -> None:
        reg = self.registration(nexus)
        if self.type is not None and reg is not None and not self.is_holder(nexus):
            self._drop_reservation()

    p.after(R, "nexus_lost", post)


@_node_mutant(
    "Cluster.Nodes.PreemptedHolderStillWrites",
    "a fenced holder keeps write access: PREEMPT (AND ABORT) of the holder's key moves the reservation and removes the registration, but WRITEs from the preempted I_T nexus still complete (SPC-4 5.13.1: an unregistered nexus's write conflicts under Registrants Only)",
    scenarios=("FenceScsi", "Reboot", "ThreeNodes"),
)
def preempted_holder_still_writes(p: Patcher) -> None:
    def before(self: R, reg: Any) -> Registration | None:
        return self._holder_registration()

    def after(self: R, reg: Any, sark: int, holder: Registration | None, out: Any) -> None:
        if holder is not None and holder is not reg and holder not in self.registrations:
            self.__dict__.setdefault("_mutant_ex_holders", []).append(holder)

    def make_access(old: Any) -> Any:
        def access_conflict(self: R, nexus: Any, klass: AccessClass) -> bool:
            if klass is AccessClass.WRITE and any(
                r.covers(nexus) for r in self.__dict__.get("_mutant_ex_holders", ())
            ):
                return False
            return bool(old(self, nexus, klass))

        return access_conflict

    _around_preempt(p, before, after)
    p.wrap(R, "access_conflict", make_access)
