"""SCSI-2 reservations (SPC-2 7.21/7.22) and persistent reservations (SPC-4 5.9, 6.15, 6.16).

Theory of operation: one ``ReservationState`` per logical unit, shared by every I_T
nexus.  It is pure data plus the rules; it knows nothing about tasks or unit
attention queues.  Each PERSISTENT RESERVE OUT returns a ``PrOutResult`` naming
who must receive which unit attention and whose tasks must be aborted (PREEMPT AND
ABORT); the logical unit (``device.py``) delivers those to the nexuses it knows.

A registration belongs to an I_T nexus: an initiator port identifier (or a bare
initiator name, from a format-00b TransportID) and a relative target port
identifier, or ``None`` for "every target port" (ALL_TG_PT, SPC-4 5.9.7).

Which commands conflict with which reservation is the table of SPC-4 5.9.1
(Table 65 "SPC commands that are allowed in the presence of various reservations")
and SBC-3 4.17 (Table 13): each command belongs to one ``AccessClass``, and
``access_conflict`` reads the class against the reservation type.

Persist-through-power-loss (APTPL, SPC-4 5.9.5): ``to_json()`` / ``from_json()``;
the owner of the state saves it when ``aptpl`` is set.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import Enum

from ..errors import ReservationConflict, SCSIError
from .codes import Asc, PrInAction, PrOutAction, PrScope, PrType
from .nexus import Nexus, decode_transport_id, encode_transport_id, port_matches
from .sense import (
    illegal_request,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    parameter_list_length_error,
)

PR_OUT_BASIC_LENGTH = 24  # SPC-4 6.16.3: the basic parameter list is 24 bytes
REGISTER_AND_MOVE_HEADER = 24  # SPC-4 6.16.4
STATE_FORMAT = "iscsi-conformance/pr-state/1"


class AccessClass(Enum):
    """How a command fares under a persistent reservation it does not hold.

    ALLOWED: never conflicts (INQUIRY, REPORT LUNS, PR IN, TUR, READ CAPACITY...).
    READ: allowed under Write Exclusive types, conflicts under Exclusive Access
        types unless the nexus is registered and the type is RO/AR (SBC-3 Table 13).
    WRITE: conflicts for non-holders of WE/EA and for non-registrants of RO/AR types
        (the "Conflict / Conflict / Allowed / Conflict" rows of SPC-4 Table 65).
    """

    ALLOWED = "allowed"
    READ = "read"
    WRITE = "write"


#: (initiator identifier, relative target port or None for all ports)
NexusKey = tuple[str, "int | None"]


@dataclass
class Registration:
    """One registered I_T nexus (SPC-4 5.9.7)."""

    initiator: str
    relative_target_port: int | None
    key: int
    target_port: str = ""

    @property
    def nexus_key(self) -> NexusKey:
        return (self.initiator, self.relative_target_port)

    def covers(self, nexus: Nexus) -> bool:
        return port_matches(self.initiator, nexus.initiator_port) and (
            self.relative_target_port is None
            or self.relative_target_port == nexus.relative_target_port
        )


@dataclass
class PrOutResult:
    """What a PERSISTENT RESERVE OUT asks of the logical unit beyond its status."""

    unit_attentions: list[tuple[NexusKey, Asc]] = field(default_factory=list)
    aborted: list[NexusKey] = field(default_factory=list)
    changed: bool = False


@dataclass(frozen=True)
class Capabilities:
    """What REPORT CAPABILITIES announces (SPC-4 6.15.4)."""

    crh: bool = True  # compatible reservation handling (SPC-4 5.9.3)
    sip_c: bool = True  # SPEC_I_PT supported
    atp_c: bool = True  # ALL_TG_PT supported
    ptpl_c: bool = True  # APTPL supported
    tmv: bool = True  # type mask valid
    allow_commands: int = 0  # 000b: no information (SPC-4 Table 175)
    types: tuple[PrType, ...] = tuple(PrType)


_TYPE_MASK_BITS = {
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: (0, 0x80),
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: (0, 0x40),
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: (0, 0x20),
    PrType.EXCLUSIVE_ACCESS: (0, 0x08),
    PrType.WRITE_EXCLUSIVE: (0, 0x02),
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: (1, 0x01),
}


def _conflict() -> ReservationConflict:
    return ReservationConflict(section="SPC-4 5.9.7")


class ReservationState:
    """Reservation state of one logical unit (SCSI-2 and persistent)."""

    def __init__(self, *, capabilities: Capabilities | None = None) -> None:
        self.capabilities = capabilities or Capabilities()
        self.generation = 0
        self.registrations: list[Registration] = []
        self.holder: NexusKey | None = None  # for non all-registrants types
        self.type: PrType | None = None
        self.scope = PrScope.LU_SCOPE
        self.aptpl = False
        self.scsi2_holder: tuple[str, int] | None = None  # (initiator port, relative port)

    # ------------------------------------------------------------------ queries
    def registration(self, nexus: Nexus) -> Registration | None:
        """The registration of this I_T nexus, if any (exact port first)."""
        best: Registration | None = None
        for reg in self.registrations:
            if reg.covers(nexus):
                if reg.initiator.lower() == nexus.initiator_port.lower():
                    return reg
                best = best or reg
        return best

    @property
    def reserved(self) -> bool:
        return self.type is not None

    def is_holder(self, nexus: Nexus) -> bool:
        """SPC-4 5.9.10: for all-registrants types every registrant holds it."""
        if self.type is None:
            return False
        reg = self.registration(nexus)
        if reg is None:
            return False
        return self.type.all_registrants or reg.nexus_key == self.holder

    def _holder_registration(self) -> Registration | None:
        for reg in self.registrations:
            if reg.nexus_key == self.holder:
                return reg
        return None

    def access_conflict(self, nexus: Nexus, klass: AccessClass) -> bool:
        """Does a command of ``klass`` from ``nexus`` conflict with the persistent
        reservation (SPC-4 5.9.1 Table 65, SBC-3 4.17 Table 13)?"""
        if self.type is None or klass is AccessClass.ALLOWED:
            return False
        if self.is_holder(nexus):
            return False
        exclusive_access = self.type in (
            PrType.EXCLUSIVE_ACCESS,
            PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
            PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        )
        if (self.type.registrants_only or self.type.all_registrants) and self.registration(nexus):
            return False
        return klass is AccessClass.WRITE or exclusive_access

    # ------------------------------------------------------------------ SCSI-2
    def scsi2_conflict(self, nexus: Nexus) -> bool:
        """Is the logical unit reserved (RESERVE(6)/(10)) by another I_T nexus?"""
        return self.scsi2_holder is not None and self.scsi2_holder != _scsi2_key(nexus)

    def reserve_scsi2(self, nexus: Nexus) -> None:
        """RESERVE(6)/(10) (SPC-2 7.21): conflicts with another holder and, with
        CRH, with any persistent registration (SPC-4 5.9.3)."""
        if self.registrations:
            raise ReservationConflict(
                "RESERVE while persistent registrations exist", section="SPC-4 5.9.3"
            )
        if self.scsi2_conflict(nexus):
            raise ReservationConflict(
                "logical unit reserved by another I_T nexus", section="SPC-2 7.21"
            )
        self.scsi2_holder = _scsi2_key(nexus)

    def release_scsi2(self, nexus: Nexus) -> None:
        """RELEASE(6)/(10) (SPC-2 7.19): only the holder releases; anyone else, or
        with persistent registrations present, is a no-op with GOOD status."""
        if self.scsi2_holder == _scsi2_key(nexus):
            self.scsi2_holder = None

    def nexus_lost(self, nexus: Nexus) -> None:
        """I_T nexus loss releases a SCSI-2 reservation (SPC-2 5.5.1); persistent
        registrations survive it (SPC-4 5.9.1)."""
        self.release_scsi2(nexus)

    def reset(self) -> None:
        """LUN reset / target reset releases the SCSI-2 reservation (SAM-5 6.3.3)."""
        self.scsi2_holder = None

    # ------------------------------------------------------------------ PR IN
    def pr_in(self, action: int, allocation_length: int) -> bytes:
        """PERSISTENT RESERVE IN parameter data, truncated to ``allocation_length``."""
        if action == PrInAction.READ_KEYS:
            keys = b"".join(struct.pack(">Q", r.key) for r in self.registrations)
            data = struct.pack(">II", self.generation, len(keys)) + keys
        elif action == PrInAction.READ_RESERVATION:
            if self.type is None:
                data = struct.pack(">II", self.generation, 0)
            else:
                holder = self._holder_registration()
                key = 0 if self.type.all_registrants or holder is None else holder.key
                body = struct.pack(">QIBBH", key, 0, 0, self.scope << 4 | self.type, 0)
                data = struct.pack(">II", self.generation, len(body)) + body
        elif action == PrInAction.REPORT_CAPABILITIES:
            data = self._report_capabilities()
        elif action == PrInAction.READ_FULL_STATUS:
            data = self._read_full_status()
        else:
            raise invalid_field_in_cdb(
                1, f"PR IN service action {action:#x} not supported", bit=4, section="SPC-4 6.15.1"
            )
        return data[:allocation_length]

    def _report_capabilities(self) -> bytes:
        c = self.capabilities
        b2 = (
            (0x10 if c.crh else 0)
            | (0x08 if c.sip_c else 0)
            | (0x04 if c.atp_c else 0)
            | (0x01 if c.ptpl_c else 0)
        )
        b3 = (0x80 if c.tmv else 0) | (c.allow_commands & 7) << 4 | (0x01 if self.aptpl else 0)
        mask = bytearray(2)
        for t in c.types:
            i, bit = _TYPE_MASK_BITS[t]
            mask[i] |= bit
        return struct.pack(">HBB", 8, b2, b3) + bytes(mask) + b"\0\0"

    def _read_full_status(self) -> bytes:
        out = bytearray()
        for reg in self.registrations:
            tid = encode_transport_id(reg.initiator)
            holder = self.type is not None and (
                self.type.all_registrants or reg.nexus_key == self.holder
            )
            scope_type = (self.scope << 4 | self.type) if holder and self.type is not None else 0
            flags = (0x02 if reg.relative_target_port is None else 0) | (0x01 if holder else 0)
            out += struct.pack(
                ">QIBB4xHI", reg.key, 0, flags, scope_type, reg.relative_target_port or 0, len(tid)
            )
            out += tid
        return struct.pack(">II", self.generation, len(out)) + bytes(out)

    # ------------------------------------------------------------------ PR OUT
    def pr_out(
        self,
        nexus: Nexus,
        action: int,
        scope: int,
        pr_type: int,
        params: bytes,
        *,
        parameter_list_length: int | None = None,
    ) -> PrOutResult:
        """Run one PERSISTENT RESERVE OUT (SPC-4 6.16).  Raises ``SCSIError`` /
        ``ReservationConflict``; returns the side effects for the logical unit."""
        plen = len(params) if parameter_list_length is None else parameter_list_length
        if action == PrOutAction.REGISTER_AND_MOVE:
            return self._register_and_move(nexus, params, plen)
        if action not in (
            PrOutAction.REGISTER,
            PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
            PrOutAction.RESERVE,
            PrOutAction.RELEASE,
            PrOutAction.CLEAR,
            PrOutAction.PREEMPT,
            PrOutAction.PREEMPT_AND_ABORT,
        ):
            raise invalid_field_in_cdb(
                1, f"PR OUT service action {action:#x} not supported", bit=4, section="SPC-4 6.16.1"
            )
        if plen < PR_OUT_BASIC_LENGTH or len(params) < PR_OUT_BASIC_LENGTH:
            raise parameter_list_length_error(
                "PR OUT parameter list shorter than 24 bytes", section="SPC-4 6.16.3"
            )
        rk, sark = struct.unpack_from(">QQ", params, 0)
        flags = params[20]
        spec_i_pt, all_tg_pt, aptpl = bool(flags & 0x08), bool(flags & 0x04), bool(flags & 0x01)
        if spec_i_pt and action != PrOutAction.REGISTER:
            raise invalid_field_in_parameter_list(
                20, "SPEC_I_PT only with REGISTER", bit=3, section="SPC-4 6.16.3"
            )
        if not spec_i_pt and plen != PR_OUT_BASIC_LENGTH:
            raise parameter_list_length_error(
                "PR OUT parameter list must be 24 bytes", section="SPC-4 6.16.3"
            )
        if action in (PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY):
            return self._register(
                nexus,
                ignore_existing=action == PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
                rk=rk,
                sark=sark,
                spec_i_pt=spec_i_pt,
                all_tg_pt=all_tg_pt,
                aptpl=aptpl,
                params=params[:plen],
            )
        reg = self.registration(nexus)
        if reg is None or reg.key != rk:
            raise ReservationConflict(
                "I_T nexus not registered or reservation key mismatch", section="SPC-4 5.9.7"
            )
        if action == PrOutAction.RESERVE:
            return self._reserve(nexus, reg, scope, pr_type)
        if action == PrOutAction.RELEASE:
            return self._release(reg, scope, pr_type)
        if action == PrOutAction.CLEAR:
            return self._clear(reg)
        return self._preempt(
            reg, sark, scope, pr_type, abort=action == PrOutAction.PREEMPT_AND_ABORT
        )

    # REGISTER / REGISTER AND IGNORE EXISTING KEY: SPC-4 5.9.7, Tables 53/54
    def _register(
        self,
        nexus: Nexus,
        *,
        ignore_existing: bool,
        rk: int,
        sark: int,
        spec_i_pt: bool,
        all_tg_pt: bool,
        aptpl: bool,
        params: bytes,
    ) -> PrOutResult:
        if all_tg_pt and not self.capabilities.atp_c:
            raise invalid_field_in_parameter_list(
                20, "ALL_TG_PT not supported", bit=2, section="SPC-4 6.16.3"
            )
        if aptpl and not self.capabilities.ptpl_c:
            raise invalid_field_in_parameter_list(
                20, "APTPL not supported", bit=0, section="SPC-4 6.16.3"
            )
        reg = self.registration(nexus)
        result = PrOutResult()
        if reg is None:
            if not ignore_existing and rk != 0:
                raise ReservationConflict(
                    "unregistered I_T nexus sent a nonzero reservation key", section="SPC-4 5.9.7.1"
                )
            extra = self._spec_i_pt_targets(nexus, params, all_tg_pt) if spec_i_pt else []
            if sark == 0:
                return result  # nothing to register: GOOD, no change (SPC-4 Table 53)
            rtp = None if all_tg_pt else nexus.relative_target_port
            self.registrations.append(
                Registration(nexus.initiator_port, rtp, sark, nexus.target_port)
            )
            for ident, port in extra:
                self.registrations.append(Registration(ident, port, sark))
        else:
            if spec_i_pt:
                raise invalid_field_in_cdb(
                    1, "SPEC_I_PT from a registered I_T nexus", section="SPC-4 5.9.7.2"
                )
            if not ignore_existing and rk != reg.key:
                raise ReservationConflict(
                    "reservation key does not match the registration", section="SPC-4 5.9.7.2"
                )
            if sark == 0:
                self._unregister(reg, result)
            else:
                reg.key = sark
        self.aptpl = aptpl
        self.generation = (self.generation + 1) & 0xFFFFFFFF
        result.changed = True
        return result

    def _spec_i_pt_targets(
        self, nexus: Nexus, params: bytes, all_tg_pt: bool
    ) -> list[tuple[str, int | None]]:
        """The extra I_T nexuses a SPEC_I_PT registration names (SPC-4 6.16.3)."""
        if len(params) < 28:
            raise parameter_list_length_error(
                "SPEC_I_PT parameter list lacks the TransportID length", section="SPC-4 6.16.3"
            )
        (tid_len,) = struct.unpack_from(">I", params, 24)
        if 28 + tid_len != len(params):
            raise parameter_list_length_error(
                "TRANSPORTID PARAMETER DATA LENGTH disagrees with the list length",
                section="SPC-4 6.16.3",
            )
        out: list[tuple[str, int | None]] = []
        pos = 28
        rtp = None if all_tg_pt else nexus.relative_target_port
        while pos < len(params):
            try:
                ident, used = decode_transport_id(params, pos)
            except ValueError as exc:
                raise invalid_field_in_parameter_list(
                    pos, f"bad TransportID: {exc}", section="SPC-4 7.6.4.6"
                ) from exc
            if ident.lower() != nexus.initiator_port.lower():
                taken = any(
                    r.initiator.lower() == ident.lower()
                    and (
                        r.relative_target_port is None
                        or rtp is None
                        or r.relative_target_port == rtp
                    )
                    for r in self.registrations
                )
                if taken:
                    raise invalid_field_in_parameter_list(
                        pos, "TransportID names a registered I_T nexus", section="SPC-4 6.16.3"
                    )
                if (ident, rtp) not in out:
                    out.append((ident, rtp))
            pos += used
        return out

    def _unregister(self, reg: Registration, result: PrOutResult) -> None:
        """Remove a registration; a holder leaving releases (SPC-4 5.9.11.2.3)."""
        self.registrations.remove(reg)
        if self.type is None:
            return
        if self.type.all_registrants:
            if not self.registrations:
                self._drop_reservation()
            return
        if reg.nexus_key == self.holder:
            was = self.type
            self._drop_reservation()
            if was.registrants_only:
                for other in self.registrations:
                    result.unit_attentions.append((other.nexus_key, Asc.RESERVATIONS_RELEASED))

    def _drop_reservation(self) -> None:
        self.type = None
        self.holder = None
        self.scope = PrScope.LU_SCOPE

    @staticmethod
    def _check_type_scope(scope: int, pr_type: int) -> PrType:
        if scope != PrScope.LU_SCOPE:
            raise invalid_field_in_cdb(
                2, f"scope {scope} not supported", bit=4, section="SPC-4 6.16.2"
            )
        try:
            return PrType(pr_type)
        except ValueError:
            raise invalid_field_in_cdb(
                2, f"reservation type {pr_type} not supported", bit=0, section="SPC-4 6.16.2"
            ) from None

    # RESERVE: SPC-4 5.9.9
    def _reserve(self, nexus: Nexus, reg: Registration, scope: int, pr_type: int) -> PrOutResult:
        t = self._check_type_scope(scope, pr_type)
        if self.type is not None:
            if self.is_holder(nexus) and self.type == t and self.scope == scope:
                return PrOutResult()
            raise ReservationConflict(
                "a persistent reservation is held already", section="SPC-4 5.9.9"
            )
        self.type = t
        self.scope = PrScope(scope)
        self.holder = None if t.all_registrants else reg.nexus_key
        return PrOutResult(changed=True)

    # RELEASE: SPC-4 5.9.11.2
    def _release(self, reg: Registration, scope: int, pr_type: int) -> PrOutResult:
        result = PrOutResult()
        if self.type is None:
            return result
        holder = self.type.all_registrants or reg.nexus_key == self.holder
        if not holder:
            return result  # GOOD, nothing released (SPC-4 5.9.11.2.1)
        if scope != self.scope or pr_type != self.type:
            raise illegal_request(
                Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
                "RELEASE type/scope differ from the reservation",
                section="SPC-4 5.9.11.2.1",
            )
        was = self.type
        self._drop_reservation()
        if was.registrants_only or was.all_registrants:
            for other in self.registrations:
                if other is not reg:
                    result.unit_attentions.append((other.nexus_key, Asc.RESERVATIONS_RELEASED))
        result.changed = True
        return result

    # CLEAR: SPC-4 5.9.11.6
    def _clear(self, reg: Registration) -> PrOutResult:
        result = PrOutResult(changed=True)
        for other in self.registrations:
            if other is not reg:
                result.unit_attentions.append((other.nexus_key, Asc.RESERVATIONS_PREEMPTED))
        self.registrations.clear()
        self._drop_reservation()
        self.generation = (self.generation + 1) & 0xFFFFFFFF
        return result

    # PREEMPT / PREEMPT AND ABORT: SPC-4 5.9.11.4, 5.9.11.5
    def _preempt(
        self, reg: Registration, sark: int, scope: int, pr_type: int, *, abort: bool
    ) -> PrOutResult:
        result = PrOutResult(changed=True)
        holder = self._holder_registration()

        def remove(victims: list[Registration]) -> None:
            for v in victims:
                self.registrations.remove(v)
                result.unit_attentions.append((v.nexus_key, Asc.REGISTRATIONS_PREEMPTED))
                if abort:
                    result.aborted.append(v.nexus_key)

        if self.type is not None and self.type.all_registrants and sark == 0:
            t = self._check_type_scope(scope, pr_type)
            remove([r for r in self.registrations if r is not reg])
            self.type, self.scope = t, PrScope(scope)
            self.holder = None if t.all_registrants else reg.nexus_key
        elif (
            self.type is not None
            and not self.type.all_registrants
            and holder is not None
            and holder.key == sark
        ):
            t = self._check_type_scope(scope, pr_type)
            old_type, old_scope = self.type, self.scope
            remove([r for r in self.registrations if r.key == sark and r is not reg])
            self.type, self.scope = t, PrScope(scope)
            self.holder = None if t.all_registrants else reg.nexus_key
            if old_type != t or old_scope != scope:
                for other in self.registrations:
                    if other is not reg:
                        result.unit_attentions.append((other.nexus_key, Asc.RESERVATIONS_RELEASED))
        else:
            if sark == 0:
                raise invalid_field_in_parameter_list(
                    8, "PREEMPT with a zero service action key", section="SPC-4 5.9.11.4.3"
                )
            victims = [r for r in self.registrations if r.key == sark]
            if not victims:
                raise ReservationConflict(
                    "no registration has the service action key", section="SPC-4 5.9.11.4.3"
                )
            remove([v for v in victims if v is not reg])
            if reg in victims:
                # a PREEMPT naming the sender's own key removes its registration too,
                # with no unit attention for it (SPC-4 5.13.11.2.5)
                self.registrations.remove(reg)
            if self.type is not None and self.type.all_registrants and not self.registrations:
                self._drop_reservation()
        if abort:
            result.aborted = list(dict.fromkeys(result.aborted))
        self.generation = (self.generation + 1) & 0xFFFFFFFF
        return result

    # REGISTER AND MOVE: SPC-4 5.9.8, parameter list 6.16.4
    def _register_and_move(self, nexus: Nexus, params: bytes, plen: int) -> PrOutResult:
        if plen < REGISTER_AND_MOVE_HEADER or len(params) < REGISTER_AND_MOVE_HEADER:
            raise parameter_list_length_error(
                "REGISTER AND MOVE list shorter than 24 bytes", section="SPC-4 6.16.4"
            )
        rk, sark = struct.unpack_from(">QQ", params, 0)
        unreg, aptpl = bool(params[17] & 0x02), bool(params[17] & 0x01)
        (rtp, tid_len) = struct.unpack_from(">HI", params, 18)
        if REGISTER_AND_MOVE_HEADER + tid_len > plen:
            raise parameter_list_length_error(
                "TransportID runs past the parameter list", section="SPC-4 6.16.4"
            )
        reg = self.registration(nexus)
        if reg is None or reg.key != rk:
            raise ReservationConflict(
                "REGISTER AND MOVE from an unregistered nexus or wrong key", section="SPC-4 5.9.8"
            )
        if self.type is None or self.type.all_registrants or reg.nexus_key != self.holder:
            raise ReservationConflict(
                "REGISTER AND MOVE needs the reservation holder", section="SPC-4 5.9.8"
            )
        if sark == 0:
            raise invalid_field_in_parameter_list(
                8, "REGISTER AND MOVE with zero service action key", section="SPC-4 5.9.8"
            )
        try:
            ident, _ = decode_transport_id(params[:plen], REGISTER_AND_MOVE_HEADER)
        except ValueError as exc:
            raise invalid_field_in_parameter_list(
                24, f"bad TransportID: {exc}", section="SPC-4 6.16.4"
            ) from exc
        if port_matches(ident, nexus.initiator_port) and rtp == nexus.relative_target_port:
            raise invalid_field_in_parameter_list(
                24, "REGISTER AND MOVE to the same I_T nexus", section="SPC-4 5.9.8"
            )
        dest_key: NexusKey = (ident, rtp)
        dest = next((r for r in self.registrations if r.nexus_key == dest_key), None)
        if dest is None:
            dest = Registration(ident, rtp, sark)
            self.registrations.append(dest)
        else:
            dest.key = sark
        self.holder = dest.nexus_key
        if unreg:
            self.registrations.remove(reg)
        self.aptpl = aptpl
        self.generation = (self.generation + 1) & 0xFFFFFFFF
        return PrOutResult(changed=True)

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        """Serialise the persistent part (SPC-4 5.9.5); SCSI-2 state is not kept."""
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "generation": self.generation,
                "aptpl": self.aptpl,
                "registrations": [
                    {
                        "initiator": r.initiator,
                        "relative_target_port": r.relative_target_port,
                        "key": r.key,
                        "target_port": r.target_port,
                    }
                    for r in self.registrations
                ],
                "reservation": None
                if self.type is None
                else {
                    "type": int(self.type),
                    "scope": int(self.scope),
                    "holder": list(self.holder) if self.holder is not None else None,
                },
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, capabilities: Capabilities | None = None) -> ReservationState:
        """Restore a state saved by ``to_json`` (raises ``ValueError`` if malformed)."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
            raise ValueError("not a persistent reservation state file")
        st = cls(capabilities=capabilities)
        st.generation = int(raw["generation"])
        st.aptpl = bool(raw["aptpl"])
        for r in raw["registrations"]:
            rtp = r["relative_target_port"]
            st.registrations.append(
                Registration(
                    str(r["initiator"]),
                    None if rtp is None else int(rtp),
                    int(r["key"]),
                    str(r.get("target_port", "")),
                )
            )
        res = raw.get("reservation")
        if res:
            st.type = PrType(int(res["type"]))
            st.scope = PrScope(int(res["scope"]))
            h = res.get("holder")
            st.holder = None if h is None else (str(h[0]), None if h[1] is None else int(h[1]))
        return st

    def snapshot(self) -> dict[str, object]:
        """A plain summary for tests and reports."""
        return {
            "generation": self.generation,
            "keys": [r.key for r in self.registrations],
            "type": None if self.type is None else self.type.name,
            "holder": self.holder,
            "scsi2_holder": self.scsi2_holder,
        }


def _scsi2_key(nexus: Nexus) -> tuple[str, int]:
    return (nexus.initiator_port.lower(), nexus.relative_target_port)


__all__ = [
    "AccessClass",
    "Capabilities",
    "PrOutResult",
    "Registration",
    "ReservationState",
    "SCSIError",
]
