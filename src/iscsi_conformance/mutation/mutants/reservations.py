"""Reservations: every PERSISTENT RESERVE service action and type, the I_T nexus
identity they key on, and SCSI-2 RESERVE/RELEASE (SPC-4 5.9, 6.15, 6.16; SPC-2 7.21)."""

from __future__ import annotations

import struct
from typing import Any

from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.scsi.codes import PrInAction, PrType
from iscsi_conformance.scsi.reservations import PrOutResult, ReservationState
from iscsi_conformance.target.engine import TargetEngine

R = ReservationState
_PR = "Reservations.Persistent"


def _type_ignored(t: PrType) -> None:
    words = t.name.replace("_", " ").lower()

    @mutant(
        f"Reservations.Type.{''.join(w.capitalize() for w in t.name.split('_'))}.NoConflict",
        "reservations",
        f"a {words} reservation blocks nobody: no command conflicts with it (SPC-4 5.9.1 Table 65)",
        catches=[_PR],
    )
    def apply(p: Patcher) -> None:
        def make(old: Any) -> Any:
            def conflict(self: R, nexus: Any, klass: Any) -> bool:
                return False if self.type is t else bool(old(self, nexus, klass))

            return conflict

        p.wrap(R, "access_conflict", make)


for _t in PrType:
    _type_ignored(_t)


@mutant(
    "Reservations.Access.ReadsConflictUnderWriteExclusive",
    "reservations",
    "under Write Exclusive types, reads from other nexuses conflict too (SPC-4 Table 65: allowed)",
    catches=[f"{_PR}.WriteExclusive"],
)
def we_reads(p: Patcher) -> None:
    from iscsi_conformance.scsi.reservations import AccessClass

    def make(old: Any) -> Any:
        def conflict(self: R, nexus: Any, klass: Any) -> bool:
            if klass is AccessClass.READ and self.type is not None and not self.is_holder(nexus):
                return (
                    not (self.type.all_registrants or self.type.registrants_only)
                    or self.registration(nexus) is None
                )
            return bool(old(self, nexus, klass))

        return conflict

    p.wrap(R, "access_conflict", make)


@mutant(
    "Reservations.Access.RegistrantsBlocked",
    "reservations",
    "under Registrants Only types, registered non-holders conflict (SPC-4 5.9.10, Table 65)",
    catches=[f"{_PR}.RegistrantsOnly"],
)
def registrants_blocked(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def conflict(self: R, nexus: Any, klass: Any) -> bool:
            if self.type is not None and self.type.registrants_only and not self.is_holder(nexus):
                reg = self.registration(nexus)
                if reg is not None and reg.nexus_key != self.holder:
                    from iscsi_conformance.scsi.reservations import AccessClass

                    return klass is not AccessClass.ALLOWED
            return bool(old(self, nexus, klass))

        return conflict

    p.wrap(R, "access_conflict", make)


@mutant(
    "Reservations.Register.GenerationNotBumped",
    "reservations",
    "REGISTER does not increment the PRgeneration (SPC-4 6.15.2)",
    catches=[f"{_PR}.RegisterBumpsGeneration"],
)
def generation(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def register(self: R, nexus: Any, **kw: Any) -> Any:
            g = self.generation
            out = old(self, nexus, **kw)
            self.generation = g
            return out

        return register

    p.wrap(R, "_register", make)


@mutant(
    "Reservations.Register.WrongKeyAccepted",
    "reservations",
    "REGISTER from a registered nexus with a wrong reservation key replaces the key (SPC-4 5.9.7: conflict)",
    catches=[f"{_PR}.RegisterWrongKey"],
)
def wrong_key(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def register(self: R, nexus: Any, **kw: Any) -> Any:
            if self.registration(nexus) is not None:
                kw["ignore_existing"] = True
            return old(self, nexus, **kw)

        return register

    p.wrap(R, "_register", make)


@mutant(
    "Reservations.Register.UnregisteredNonzeroKeyAccepted",
    "reservations",
    "REGISTER from an unregistered nexus with a nonzero reservation key registers it (SPC-4 5.9.7.1)",
    catches=[f"{_PR}.RegisterWrongKey"],
)
def unregistered_key(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def register(self: R, nexus: Any, **kw: Any) -> Any:
            if self.registration(nexus) is None:
                kw["rk"] = 0
            return old(self, nexus, **kw)

        return register

    p.wrap(R, "_register", make)


@mutant(
    "Reservations.Register.UnregisterIgnored",
    "reservations",
    "REGISTER with a zero service action key keeps the registration (SPC-4 5.9.7.2: unregisters)",
    catches=[_PR],
)
def unregister(p: Patcher) -> None:
    p.noop(R, "_unregister")


@mutant(
    "Reservations.Register.IgnoreExistingChecksKey",
    "reservations",
    "REGISTER AND IGNORE EXISTING KEY checks the reservation key like REGISTER (SPC-4 5.9.7.3)",
    catches=[_PR],
)
def ignore_existing(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def register(self: R, nexus: Any, **kw: Any) -> Any:
            kw["ignore_existing"] = False
            return old(self, nexus, **kw)

        return register

    p.wrap(R, "_register", make)


@mutant(
    "Reservations.Reserve.UnregisteredAccepted",
    "reservations",
    "PERSISTENT RESERVE OUT from an unregistered nexus is carried out (SPC-4 5.9.7: conflict)",
    catches=[f"{_PR}.ReserveAndRead", _PR],
)
def reserve_unregistered(p: Patcher) -> None:
    from iscsi_conformance.scsi.reservations import Registration

    def make(old: Any) -> Any:
        def registration(self: R, nexus: Any) -> Any:
            found = old(self, nexus)
            if found is None and self.registrations and not getattr(self, "_mutant_inner", False):
                return Registration(
                    nexus.initiator_port, nexus.relative_target_port, self.registrations[0].key
                )
            return found

        return registration

    def make_out(old: Any) -> Any:
        def pr_out(self: R, nexus: Any, action: int, *args: Any, **kw: Any) -> Any:
            if action in (0x00, 0x06):  # REGISTER (and IGNORE): the nexus's own state
                self._mutant_inner = True  # type: ignore[attr-defined]
            try:
                return old(self, nexus, action, *args, **kw)
            finally:
                self._mutant_inner = False  # type: ignore[attr-defined]

        return pr_out

    p.wrap(R, "registration", make)
    p.wrap(R, "pr_out", make_out)


@mutant(
    "Reservations.Reserve.SecondHolderReplacesFirst",
    "reservations",
    "RESERVE while another nexus holds the reservation makes the caller the holder (SPC-4 5.9.9: conflict)",
    catches=[_PR],
)
def second_holder(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def reserve(self: R, nexus: Any, reg: Any, scope: int, pr_type: int) -> Any:
            if self.type is not None and not self.is_holder(nexus):
                self.type = None
            return old(self, nexus, reg, scope, pr_type)

        return reserve

    p.wrap(R, "_reserve", make)


@mutant(
    "Reservations.Reserve.TypeIgnored",
    "reservations",
    "RESERVE always makes a Write Exclusive reservation, whatever the type asked (SPC-4 6.16.2)",
    catches=[f"{_PR}.ExclusiveAccess", f"{_PR}.RegistrantsOnly"],
)
def reserve_type(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def reserve(self: R, nexus: Any, reg: Any, scope: int, pr_type: int) -> Any:
            return old(self, nexus, reg, scope, PrType.WRITE_EXCLUSIVE)

        return reserve

    p.wrap(R, "_reserve", make)


@mutant(
    "Reservations.Release.KeepsReservation",
    "reservations",
    "RELEASE by the holder answers GOOD but the reservation stays (SPC-4 5.9.11.2)",
    catches=[f"{_PR}.Release"],
)
def release_keeps(p: Patcher) -> None:
    p.wrap(R, "_release", lambda old: lambda self, reg, scope, pr_type: PrOutResult())


@mutant(
    "Reservations.Release.WrongTypeReleases",
    "reservations",
    "RELEASE with another type than the reservation's releases it (SPC-4 5.9.11.2.1: INVALID RELEASE)",
    catches=[f"{_PR}.Release"],
)
def release_type(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def release(self: R, reg: Any, scope: int, pr_type: int) -> Any:
            if self.type is not None:
                pr_type, scope = int(self.type), int(self.scope)
            return old(self, reg, scope, pr_type)

        return release

    p.wrap(R, "_release", make)


@mutant(
    "Reservations.Release.NoUnitAttention",
    "reservations",
    "releasing a Registrants Only / All Registrants reservation tells the other registrants nothing (SPC-4 5.9.11.2)",
    catches=[f"{_PR}.Release"],
)
def release_ua(p: Patcher) -> None:
    def post(self: R, out: Any, *args: Any) -> Any:
        out.unit_attentions.clear()
        return out

    p.after(R, "_release", post, result=True)


@mutant(
    "Reservations.Clear.KeepsRegistrations",
    "reservations",
    "CLEAR drops the reservation but keeps every registration (SPC-4 5.9.11.6)",
    catches=[f"{_PR}.Clear"],
)
def clear_keeps(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def clear(self: R, reg: Any) -> Any:
            regs = list(self.registrations)
            out = old(self, reg)
            self.registrations[:] = regs
            return out

        return clear

    p.wrap(R, "_clear", make)


@mutant(
    "Reservations.Clear.KeepsReservation",
    "reservations",
    "CLEAR removes the registrations but the reservation stays (SPC-4 5.9.11.6)",
    catches=[f"{_PR}.Clear"],
)
def clear_reservation(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def clear(self: R, reg: Any) -> Any:
            t, holder, scope = self.type, self.holder, self.scope
            out = old(self, reg)
            self.type, self.holder, self.scope = t, holder, scope
            return out

        return clear

    p.wrap(R, "_clear", make)


@mutant(
    "Reservations.Preempt.VictimStaysRegistered",
    "reservations",
    "PREEMPT takes the reservation but leaves the preempted nexus registered (SPC-4 5.9.11.4)",
    catches=[f"{_PR}.PreemptFailover"],
)
def preempt_keeps(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def preempt(self: R, reg: Any, sark: int, scope: int, pr_type: int, *, abort: bool) -> Any:
            regs = list(self.registrations)
            out = old(self, reg, sark, scope, pr_type, abort=abort)
            self.registrations[:] = regs
            return out

        return preempt

    p.wrap(R, "_preempt", make)


@mutant(
    "Reservations.Preempt.ReservationNotMoved",
    "reservations",
    "PREEMPT removes the holder's registration but does not give the reservation to the caller (SPC-4 5.9.11.4.3)",
    catches=[f"{_PR}.PreemptFailover"],
)
def preempt_not_moved(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def preempt(self: R, reg: Any, sark: int, scope: int, pr_type: int, *, abort: bool) -> Any:
            holder = self.holder
            out = old(self, reg, sark, scope, pr_type, abort=abort)
            if holder is not None and self.holder == reg.nexus_key:
                self.holder = holder
            return out

        return preempt

    p.wrap(R, "_preempt", make)


@mutant(
    "Reservations.PreemptAndAbort.NoAbort",
    "reservations",
    "PREEMPT AND ABORT leaves the preempted nexuses' tasks running (SPC-4 5.9.11.5)",
    catches=[_PR],
)
def preempt_abort(p: Patcher) -> None:
    def post(self: R, out: Any, *args: Any, **kw: Any) -> Any:
        out.aborted.clear()
        return out

    p.after(R, "_preempt", post, result=True)


@mutant(
    "Reservations.Preempt.NoUnitAttention",
    "reservations",
    "a preempted nexus gets no REGISTRATIONS PREEMPTED unit attention (SPC-4 5.9.11.4)",
    catches=[f"{_PR}.PreemptFailover"],
)
def preempt_ua(p: Patcher) -> None:
    def post(self: R, out: Any, *args: Any, **kw: Any) -> Any:
        out.unit_attentions.clear()
        return out

    p.after(R, "_preempt", post, result=True)


@mutant(
    "Reservations.RegisterAndMove.NotMoved",
    "reservations",
    "REGISTER AND MOVE answers GOOD but the reservation stays with the caller (SPC-4 5.9.8)",
    catches=[_PR],
)
def register_and_move(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def move(self: R, nexus: Any, params: bytes, plen: int) -> Any:
            holder = self.holder
            out = old(self, nexus, params, plen)
            self.holder = holder
            return out

        return move

    p.wrap(R, "_register_and_move", make)


def _pr_in(p: Patcher, action: int, change: Any) -> None:
    def make(old: Any) -> Any:
        def pr_in(self: R, act: int, alloc: int) -> bytes:
            data = old(self, act, 1 << 16)
            if act == action:
                data = change(self, data)
            return bytes(data[:alloc])

        return pr_in

    p.wrap(R, "pr_in", make)


@mutant(
    "Reservations.ReadKeys.Empty",
    "reservations",
    "READ KEYS lists no key (SPC-4 6.15.2)",
    catches=[f"{_PR}.RegisterBumpsGeneration", _PR],
)
def read_keys(p: Patcher) -> None:
    _pr_in(p, PrInAction.READ_KEYS, lambda self, data: data[:4] + b"\0\0\0\0")


@mutant(
    "Reservations.ReadKeys.GenerationStale",
    "reservations",
    "READ KEYS reports a PRgeneration one behind (SPC-4 6.15.2)",
    catches=[f"{_PR}.RegisterBumpsGeneration"],
)
def read_keys_generation(p: Patcher) -> None:
    _pr_in(
        p,
        PrInAction.READ_KEYS,
        lambda self, data: struct.pack(">I", (self.generation - 1) & 0xFFFFFFFF) + data[4:],
    )


@mutant(
    "Reservations.ReadReservation.TypeHidden",
    "reservations",
    "READ RESERVATION reports the reservation with type 0 (SPC-4 6.15.3)",
    catches=[f"{_PR}.ReserveAndRead"],
)
def read_reservation(p: Patcher) -> None:
    def change(self: R, data: bytes) -> bytes:
        if len(data) >= 22:
            return data[:21] + bytes([data[21] & 0xF0]) + data[22:]
        return data

    _pr_in(p, PrInAction.READ_RESERVATION, change)


@mutant(
    "Reservations.ReadReservation.KeyOfCaller",
    "reservations",
    "READ RESERVATION reports a zero reservation key for the holder (SPC-4 6.15.3.2)",
    catches=[f"{_PR}.ReserveAndRead", f"{_PR}.PreemptFailover"],
)
def read_reservation_key(p: Patcher) -> None:
    def change(self: R, data: bytes) -> bytes:
        return data[:8] + bytes(8) + data[16:] if len(data) >= 16 else data

    _pr_in(p, PrInAction.READ_RESERVATION, change)


@mutant(
    "Reservations.ReportCapabilities.NoTypeMask",
    "reservations",
    "REPORT CAPABILITIES sets TMV but reports no supported type (SPC-4 6.15.4)",
    catches=[_PR],
)
def capabilities(p: Patcher) -> None:
    _pr_in(p, PrInAction.REPORT_CAPABILITIES, lambda self, data: data[:4] + b"\0\0" + data[6:])


@mutant(
    "Reservations.ReadFullStatus.NoHolderFlag",
    "reservations",
    "READ FULL STATUS never marks the reservation holder (SPC-4 6.15.5)",
    catches=[_PR],
)
def full_status(p: Patcher) -> None:
    def change(self: R, data: bytes) -> bytes:
        out = bytearray(data)
        pos = 8
        while pos + 24 <= len(out):
            out[pos + 12] &= 0xFE
            (tid_len,) = struct.unpack_from(">I", out, pos + 20)
            pos += 24 + tid_len
        return bytes(out)

    _pr_in(p, PrInAction.READ_FULL_STATUS, change)


@mutant(
    "Reservations.Nexus.IsidIgnored",
    "reservations",
    "the I_T nexus is the InitiatorName alone: sessions with other ISIDs share registrations (SPC-4 5.9.7, RFC 7143 4.4.3)",
    catches=[f"{_PR}.NexusIsPerIsid"],
)
def nexus_isid(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def make_nexus(
            self: TargetEngine, initiator: str, isid: int, target: str, tpgt: int
        ) -> Any:
            return old(self, initiator, 0, target, tpgt)

        return make_nexus

    p.wrap(TargetEngine, "make_nexus", make)


@mutant(
    "Reservations.Nexus.PortIgnored",
    "reservations",
    "a registration without ALL_TG_PT covers every target port group (SPC-4 5.9.7)",
    catches=[_PR],
)
def nexus_port(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def register(self: R, nexus: Any, **kw: Any) -> Any:
            kw["all_tg_pt"] = True
            return old(self, nexus, **kw)

        return register

    p.wrap(R, "_register", make)


@mutant(
    "Reservations.Aptpl.Ignored",
    "reservations",
    "the APTPL bit of REGISTER is dropped: nothing persists through power loss (SPC-4 5.9.5)",
    catches=[_PR],
)
def aptpl(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def register(self: R, nexus: Any, **kw: Any) -> Any:
            kw["aptpl"] = False
            return old(self, nexus, **kw)

        return register

    p.wrap(R, "_register", make)


@mutant(
    "Reservations.Scsi2.ConflictNotRaised",
    "reservations",
    "RESERVE(6) by another nexus succeeds while the logical unit is reserved (SPC-2 7.21: conflict)",
    catches=["Reservations.Scsi2.ReserveRelease"],
)
def scsi2_conflict(p: Patcher) -> None:
    p.wrap(R, "scsi2_conflict", lambda old: lambda self, nexus: False)


@mutant(
    "Reservations.Scsi2.ReleaseByOther",
    "reservations",
    "RELEASE from a nexus that does not hold the SCSI-2 reservation releases it (SPC-2 RELEASE:"
    " GOOD, no reservation altered; catalog RSPC2-5.5.1-3)",
    catches=["Reservations.Scsi2.ReleaseByOther", "Cluster.Scsi2.ReleaseByHolderOnly"],
)
def scsi2_release(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def release(self: R, nexus: Any) -> None:
            self.scsi2_holder = None

        return release

    p.wrap(R, "release_scsi2", make)


@mutant(
    "Reservations.Scsi2.KeptAcrossNexusLoss",
    "reservations",
    "a SCSI-2 reservation survives the loss of its I_T nexus (SPC-2 5.5.1)",
    catches=["Reservations.Scsi2"],
)
def scsi2_nexus_loss(p: Patcher) -> None:
    p.noop(R, "nexus_lost")


@mutant(
    "Reservations.Scsi2.AllowedWithRegistrations",
    "reservations",
    "RESERVE(6) succeeds while persistent registrations exist (SPC-4 5.9.3, CRH)",
    catches=["Reservations.Scsi2"],
)
def scsi2_crh(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def reserve(self: R, nexus: Any) -> None:
            regs, self.registrations = self.registrations, []
            try:
                old(self, nexus)
            finally:
                self.registrations = regs

        return reserve

    p.wrap(R, "reserve_scsi2", make)
