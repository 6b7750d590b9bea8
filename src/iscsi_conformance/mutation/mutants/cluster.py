"""Cluster: the reservation bugs a failover cluster trips on, one per scenario of the
Cluster area (conformance/reservations/test_cluster.py, issue 13), so that every
scenario is shown to fail against a target broken on purpose (SPC-4 5.13, SPC-2 5.5.1).
Where a Reservations mutant breaks the same thing, the one here is its copy in the
cluster area, whose runs select the Cluster tests alone: a kill then proves the
scenario, not a single-initiator test, noticed."""

from __future__ import annotations

import struct
from typing import Any

from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.scsi.codes import Asc, PrOutAction
from iscsi_conformance.scsi.device import LogicalUnit
from iscsi_conformance.scsi.reservations import Registration, ReservationState

R = ReservationState
_C = "Cluster"


@mutant(
    "Cluster.Unregister.HolderKeepsReservation",
    "cluster",
    "a holder that unregisters (REGISTER AND IGNORE EXISTING KEY, key 0) keeps its reservation (SPC-4 5.13.11.2.3: released with it)",
    catches=[f"{_C}.Windows.Arbitration"],
)
def unregister_keeps(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def unregister(self: R, reg: Any, result: Any) -> None:
            kept = (self.type, self.holder, self.scope)
            old(self, reg, result)
            if kept[0] is not None and not kept[0].all_registrants and kept[1] == reg.nexus_key:
                self.type, self.holder, self.scope = kept
                result.unit_attentions.clear()

        return unregister

    p.wrap(R, "_unregister", make)


@mutant(
    "Cluster.AllRegistrants.DroppedWhenOneLeaves",
    "cluster",
    "an all registrants reservation is released when any registrant unregisters (SPC-4 5.13.11.2.3, table 71: only with the last one)",
    catches=[f"{_C}.AllRegistrants.HolderLeaves"],
)
def all_registrants_dropped(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def unregister(self: R, reg: Any, result: Any) -> None:
            was = self.type
            old(self, reg, result)
            if was is not None and was.all_registrants:
                self._drop_reservation()

        return unregister

    p.wrap(R, "_unregister", make)


@mutant(
    "Cluster.Preempt.FromUnregisteredNexus",
    "cluster",
    "a PREEMPT from an unregistered I_T nexus registers it and proceeds, so two crossing PREEMPTs both win (SPC-4 5.13.11.2.4.3, 5.13.7: RESERVATION CONFLICT)",
    catches=[f"{_C}.Windows.SimultaneousArbitration"],
)
def preempt_unregistered(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def pr_out(
            self: R, nexus: Any, action: int, scope: int, pr_type: int, params: bytes, **kw: Any
        ) -> Any:
            preempt = action in (PrOutAction.PREEMPT, PrOutAction.PREEMPT_AND_ABORT)
            if preempt and len(params) >= 8 and self.registration(nexus) is None:
                (rk,) = struct.unpack_from(">Q", params, 0)
                self.registrations.append(
                    Registration(nexus.initiator_port, nexus.relative_target_port, rk)
                )
            return old(self, nexus, action, scope, pr_type, params, **kw)

        return pr_out

    p.wrap(R, "pr_out", make)


def _removes_registrations_only(self: R, sark: int) -> bool:
    """Is this PREEMPT one that removes registrations only (the key is not the
    holder's, SPC-4 5.13.11.2.5): the fence of a node that holds no reservation."""
    holder = self._holder_registration()
    return (
        self.type is not None
        and not self.type.all_registrants
        and (holder is None or holder.key != sark)
    )


@mutant(
    "Cluster.Fence.ReservationDropped",
    "cluster",
    "fencing a registrant that holds no reservation (PREEMPT of its key) also drops the survivor's reservation (SPC-4 5.13.11.2.5: not affected)",
    catches=[f"{_C}.Pacemaker.FenceScsi", f"{_C}.ThreeNodes.FailFenceRejoin"],
)
def fence_drops(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def preempt(self: R, reg: Any, sark: int, scope: int, pr_type: int, *, abort: bool) -> Any:
            only = _removes_registrations_only(self, sark)
            out = old(self, reg, sark, scope, pr_type, abort=abort)
            if only:
                self._drop_reservation()
            return out

        return preempt

    p.wrap(R, "_preempt", make)


@mutant(
    "Cluster.Fence.EveryOtherRegistrationRemoved",
    "cluster",
    "fencing one node removes every registration but the sender's: a third node loses its access (SPC-4 5.13.11.2.5: only the service action key's registrations)",
    catches=[f"{_C}.ThreeNodes.FailFenceRejoin"],
)
def fence_everyone(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def preempt(self: R, reg: Any, sark: int, scope: int, pr_type: int, *, abort: bool) -> Any:
            only = _removes_registrations_only(self, sark)
            out = old(self, reg, sark, scope, pr_type, abort=abort)
            if only:
                self.registrations[:] = [r for r in self.registrations if r is reg]
            return out

        return preempt

    p.wrap(R, "_preempt", make)


@mutant(
    "Cluster.PreemptAndAbort.HeldWriteLands",
    "cluster",
    "PREEMPT AND ABORT leaves the fenced node's commands running: its WRITE in flight lands after the fence (SPC-4 5.13.11.2.6)",
    catches=[f"{_C}.Pacemaker.InFlightWriteFenced"],
)
def preempt_abort_no_abort(p: Patcher) -> None:
    def post(self: R, out: Any, *args: Any, **kw: Any) -> Any:
        out.aborted.clear()
        return out

    p.after(R, "_preempt", post, result=True)


@mutant(
    "Cluster.Restart.RegistrationLostWithNexus",
    "cluster",
    "the loss of an I_T nexus removes its persistent registration and reservation: a restarted node finds no stale registration (SPC-4 5.13.1: registrations persist)",
    catches=[f"{_C}.Restart.NewIsid"],
)
def registration_lost(p: Patcher) -> None:
    def post(self: R, nexus: Any) -> None:
        port = nexus.initiator_port.lower()
        for reg in [r for r in self.registrations if r.initiator.lower() == port]:
            self.registrations.remove(reg)
            if reg.nexus_key == self.holder:
                self._drop_reservation()

    p.after(R, "nexus_lost", post)


@mutant(
    "Cluster.Restart.RegistrationTiedToSession",
    "cluster",
    "as tgt 1.0.85 does: the registration of a session that ends stays listed but no longer belongs to its initiator port, so the same port logged in again (same ISID) is unregistered (SPC-4 5.13.1, 5.13.9: the I_T nexus, not the session, is registered)",
    catches=[f"{_C}.Restart.SameIsid"],
)
def registration_tied_to_session(p: Patcher) -> None:
    def post(self: R, nexus: Any) -> None:
        port = nexus.initiator_port.lower()
        for reg in self.registrations:
            if reg.initiator.lower() == port:
                old_key = reg.nexus_key
                reg.initiator += " (ended session)"
                if self.holder == old_key:
                    self.holder = reg.nexus_key

    p.after(R, "nexus_lost", post)


@mutant(
    "Cluster.Restart.PreemptOwnKeyRemovesSender",
    "cluster",
    "a PREEMPT naming the holder's key, which is also the sender's, removes the sender's registration too: the restarted node ends unregistered (SPC-4 5.13.11.2.4.3: all but the sender's)",
    catches=[f"{_C}.Restart.NewIsid"],
)
def preempt_own_key(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def preempt(self: R, reg: Any, sark: int, scope: int, pr_type: int, *, abort: bool) -> Any:
            out = old(self, reg, sark, scope, pr_type, abort=abort)
            if sark == reg.key and reg in self.registrations and self.holder == reg.nexus_key:
                self.registrations.remove(reg)
            return out

        return preempt

    p.wrap(R, "_preempt", make)


@mutant(
    "Cluster.Scsi2.ReleaseByNonHolder",
    "cluster",
    "RELEASE(6) from a node that does not hold the SCSI-2 reservation releases it (SPC-2 5.5.1)",
    catches=[f"{_C}.Scsi2.ReleaseByHolderOnly"],
)
def scsi2_release_other(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def release(self: R, nexus: Any) -> None:
            self.scsi2_holder = None

        return release

    p.wrap(R, "release_scsi2", make)


@mutant(
    "Cluster.Scsi2.KeptAcrossReset",
    "cluster",
    "a LOGICAL UNIT RESET or TARGET RESET leaves the SCSI-2 reservation in place",
    catches=[f"{_C}.Scsi2.Cleared"],
)
def scsi2_reset(p: Patcher) -> None:
    p.noop(R, "reset")


@mutant(
    "Cluster.Scsi2.KeptAcrossLogoutAndNexusLoss",
    "cluster",
    "the holder's logout or the loss of its I_T nexus leaves the SCSI-2 reservation in place (SPC-2 5.5.1)",
    catches=[f"{_C}.Scsi2.Cleared"],
)
def scsi2_nexus_loss(p: Patcher) -> None:
    p.noop(R, "nexus_lost")


@mutant(
    "Cluster.Aptpl.ForgottenAtRestart",
    "cluster",
    "the registrations and reservation saved with APTPL=1 are not read back when the target restarts (SPC-4 5.13.5)",
    catches=[f"{_C}.Persistent.AptplAcrossRestart"],
)
def aptpl_forgotten(p: Patcher) -> None:
    def from_json(cls: type[R], text: str, *, capabilities: Any = None) -> R:
        return cls(capabilities=capabilities)

    p.setattr(R, "from_json", classmethod(from_json))


@mutant(
    "Cluster.AllTgPt.Ignored",
    "cluster",
    "ALL_TG_PT=1 is taken as 0: the node's port through the other portal group stays unregistered (SPC-4 5.13.7)",
    catches=[f"{_C}.Persistent.AllTgPtTwoPortals"],
)
def all_tg_pt_ignored(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def register(self: R, nexus: Any, **kw: Any) -> Any:
            kw["all_tg_pt"] = False
            return old(self, nexus, **kw)

        return register

    p.wrap(R, "_register", make)


@mutant(
    "Cluster.RegisterAndMove.UnregIgnored",
    "cluster",
    "REGISTER AND MOVE with UNREG=1 leaves the old owner registered (SPC-4 5.13.8)",
    catches=[f"{_C}.Persistent.RegisterAndMoveFailover"],
)
def move_unreg_ignored(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def move(self: R, nexus: Any, params: bytes, plen: int) -> Any:
            if len(params) > 17:
                params = params[:17] + bytes([params[17] & ~0x02 & 0xFF]) + params[18:]
            return old(self, nexus, params, plen)

        return move

    p.wrap(R, "_register_and_move", make)


@mutant(
    "Cluster.SpecIPt.OthersNotRegistered",
    "cluster",
    "REGISTER with SPEC_I_PT=1 answers GOOD but registers the sender alone (SPC-4 5.13.7)",
    catches=[f"{_C}.Persistent.SpecIPt"],
)
def spec_i_pt_sender_only(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def targets(self: R, nexus: Any, params: bytes, all_tg_pt: bool) -> list[Any]:
            old(self, nexus, params, all_tg_pt)  # keep its checks of the list
            return []

        return targets

    p.wrap(R, "_spec_i_pt_targets", make)


@mutant(
    "Cluster.Generation.ReserveIncrements",
    "cluster",
    "a RESERVE increments PRgeneration (SPC-4 6.16.2 table 213: it does not)",
    catches=[f"{_C}.Persistent.Generation"],
)
def reserve_generation(p: Patcher) -> None:
    def post(self: R, out: Any, *args: Any, **kw: Any) -> Any:
        if out.changed:
            self.generation = (self.generation + 1) & 0xFFFFFFFF
        return out

    p.after(R, "_reserve", post, result=True)


@mutant(
    "Cluster.UnitAttention.ReleasedToReleaserToo",
    "cluster",
    "releasing a registrants only reservation also gives the releasing node RESERVATIONS RELEASED (SPC-4 5.13.11.2.2: the other registrants only)",
    catches=[f"{_C}.Persistent.UnitAttentionsToNamedNexuses"],
)
def release_ua_to_self(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def pr_out(self: LogicalUnit, ctx: Any) -> Any:
            out = old(self, ctx)
            if ctx.cdb[1] & 0x1F == PrOutAction.RELEASE and out.pr_changed:
                self._queue_ua(ctx.nexus, Asc.RESERVATIONS_RELEASED)
            return out

        return pr_out

    p.wrap(LogicalUnit, "_pr_out", make)
