"""Persistent reservations (SPC-4 5.9, 6.15, 6.16) and SCSI-2 reservations (SPC-2),
through the logical unit as an initiator sees them."""

from __future__ import annotations

import struct

import pytest
from scsi_util import NODE_A, NODE_B, NODE_C, attach, check, good, illegal, make_lu, nexus

from iscsi_conformance.scsi import cdb as C
from iscsi_conformance.scsi.codes import (
    Asc,
    PrInAction,
    PrOutAction,
    PrType,
    ResetKind,
    ScsiStatus,
    SenseKey,
)
from iscsi_conformance.scsi.device import LogicalUnit
from iscsi_conformance.scsi.nexus import Nexus
from iscsi_conformance.scsi.reservations import Capabilities, ReservationState

CONFLICT = ScsiStatus.RESERVATION_CONFLICT


def prout(lu: LogicalUnit, n: Nexus, sa: int, **kw: object) -> int:
    cdb, data = C.pr_out(sa, **kw)  # type: ignore[arg-type]
    return lu.execute(n, cdb, data).status


def register(lu: LogicalUnit, n: Nexus, key: int) -> None:
    assert prout(lu, n, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=key) == ScsiStatus.GOOD


def reserve(lu: LogicalUnit, n: Nexus, key: int, t: PrType) -> int:
    return prout(lu, n, PrOutAction.RESERVE, key=key, pr_type=t)


OBSERVER = nexus("observer")  # never registered: sees no PR unit attentions


def keys(lu: LogicalUnit, n: Nexus = OBSERVER) -> tuple[int, list[int]]:
    attach(lu, n)
    return C.parse_pr_in_read_keys(
        good(lu.execute(n, C.persistent_reserve_in(PrInAction.READ_KEYS)))
    )


def reservation(lu: LogicalUnit, n: Nexus = OBSERVER) -> C.ReservationInfo:
    attach(lu, n)
    return C.parse_pr_in_read_reservation(
        good(lu.execute(n, C.persistent_reserve_in(PrInAction.READ_RESERVATION)))
    )


def pending(lu: LogicalUnit, n: Nexus) -> list[Asc]:
    return lu.pending_unit_attentions(n)


# --------------------------------------------------------------------------- access table
# SPC-4 5.9.1 Table 65 / SBC-3 4.17 Table 13, per reservation type and requester:
# (read allowed, write allowed) for the holder, a registered non-holder, a non-registrant.
ACCESS_TABLE: dict[PrType, dict[str, tuple[bool, bool]]] = {
    PrType.WRITE_EXCLUSIVE: {
        "holder": (True, True),
        "registrant": (True, False),
        "other": (True, False),
    },
    PrType.EXCLUSIVE_ACCESS: {
        "holder": (True, True),
        "registrant": (False, False),
        "other": (False, False),
    },
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: {
        "holder": (True, True),
        "registrant": (True, True),
        "other": (True, False),
    },
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: {
        "holder": (True, True),
        "registrant": (True, True),
        "other": (False, False),
    },
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: {
        "holder": (True, True),
        "registrant": (True, True),
        "other": (True, False),
    },
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: {
        "holder": (True, True),
        "registrant": (True, True),
        "other": (False, False),
    },
}
# Commands by class; "allowed" ones never conflict (INQUIRY, REPORT LUNS, PR IN, TUR, READ CAPACITY).
READ_COMMANDS = [
    C.read10(1, 1),
    C.read16(1, 1),
    C.verify10(1, 1),
    C.prefetch10(1, 1),
    C.get_lba_status(0),
]
WRITE_COMMANDS = [
    (C.write10(1, 1), b"w" * 512),
    (C.write_same16(1, 1), b"s" * 512),
    (C.synchronize_cache10(), b""),
    (C.mode_sense6(0x3F), b""),
    (C.mode_select6(0), b""),
]
ALLOWED_COMMANDS = [
    C.inquiry(),
    C.report_luns(),
    C.test_unit_ready(),
    C.read_capacity10(),
    C.read_capacity16(),
    C.persistent_reserve_in(0),
    C.request_sense(),
    C.start_stop_unit(start=True),
    C.prevent_allow(0),
]


def _cases() -> list[tuple[PrType, str]]:
    return [(t, who) for t in ACCESS_TABLE for who in ("holder", "registrant", "other")]


@pytest.mark.parametrize(("pr_type", "who"), _cases())
def test_access_table(lu: LogicalUnit, pr_type: PrType, who: str) -> None:
    register(lu, NODE_A, 0xA)
    register(lu, NODE_B, 0xB)
    assert reserve(lu, NODE_A, 0xA, pr_type) == ScsiStatus.GOOD
    requester = {"holder": NODE_A, "registrant": NODE_B, "other": NODE_C}[who]
    read_ok, write_ok = ACCESS_TABLE[pr_type][who]
    for cdb in READ_COMMANDS:
        assert (lu.execute(requester, cdb).status == ScsiStatus.GOOD) == read_ok, cdb.hex()
        assert lu.execute(requester, cdb).status in (ScsiStatus.GOOD, CONFLICT)
    for cdb, data in WRITE_COMMANDS:
        st = lu.execute(requester, cdb, data).status
        assert st == (ScsiStatus.GOOD if write_ok else CONFLICT), cdb.hex()
    for cdb in ALLOWED_COMMANDS:
        assert lu.execute(requester, cdb).status == ScsiStatus.GOOD, cdb.hex()


# --------------------------------------------------------------------------- REGISTER
def test_register_and_unregister(lu: LogicalUnit) -> None:
    gen0, k = keys(lu)
    assert k == []
    assert prout(lu, NODE_A, PrOutAction.REGISTER, sa_key=0x1111) == ScsiStatus.GOOD
    gen1, k = keys(lu)
    assert k == [0x1111] and gen1 == gen0 + 1
    # re-REGISTER with a wrong reservation key conflicts (SPC-4 5.9.7.2)
    assert prout(lu, NODE_A, PrOutAction.REGISTER, key=0x2222, sa_key=0x3333) == CONFLICT
    # an unregistered nexus must send reservation key 0
    assert prout(lu, NODE_B, PrOutAction.REGISTER, key=0x1111, sa_key=0x3333) == CONFLICT
    # change key
    assert prout(lu, NODE_A, PrOutAction.REGISTER, key=0x1111, sa_key=0x4444) == ScsiStatus.GOOD
    assert keys(lu)[1] == [0x4444]
    # REGISTER AND IGNORE EXISTING KEY ignores the reservation key
    assert (
        prout(lu, NODE_A, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, key=0x9, sa_key=0x5555)
        == ScsiStatus.GOOD
    )
    assert keys(lu)[1] == [0x5555]
    # unregister: service action key 0
    assert prout(lu, NODE_A, PrOutAction.REGISTER, key=0x5555, sa_key=0) == ScsiStatus.GOOD
    gen, k = keys(lu)
    assert k == [] and gen == gen1 + 3
    # unregistered nexus registering key 0: GOOD, nothing changes
    assert prout(lu, NODE_A, PrOutAction.REGISTER, sa_key=0) == ScsiStatus.GOOD
    assert keys(lu)[0] == gen


def test_parameter_list_length_rules(lu: LogicalUnit) -> None:
    data = C.pr_out_parameters(0, 1)
    cdb = C.persistent_reserve_out(PrOutAction.REGISTER, param_len=28)
    illegal(lu.execute(NODE_A, cdb, data + b"\0" * 4), Asc.PARAMETER_LIST_LENGTH_ERROR)
    cdb = C.persistent_reserve_out(PrOutAction.REGISTER, param_len=20)
    illegal(lu.execute(NODE_A, cdb, data[:20]), Asc.PARAMETER_LIST_LENGTH_ERROR)
    # SPEC_I_PT only with REGISTER
    cdb, data = C.pr_out(
        PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
        sa_key=1,
        spec_i_pt=True,
        transport_ids=[NODE_B.initiator_port],
    )
    illegal(lu.execute(NODE_A, cdb, data), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    # unknown service action
    illegal(lu.execute(NODE_A, C.persistent_reserve_out(0x1F), C.pr_out_parameters()))


def test_reserve_type_and_scope_checks(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    illegal(lu.execute(NODE_A, *C.pr_out(PrOutAction.RESERVE, key=1, pr_type=2)))
    illegal(lu.execute(NODE_A, *C.pr_out(PrOutAction.RESERVE, key=1, pr_type=1, scope=1)))
    assert reserve(lu, NODE_A, 2, PrType.WRITE_EXCLUSIVE) == CONFLICT  # wrong key
    assert reserve(lu, NODE_C, 0, PrType.WRITE_EXCLUSIVE) == CONFLICT  # not registered
    gen = keys(lu)[0]
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD
    assert keys(lu)[0] == gen  # RESERVE does not bump PRgeneration
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD  # same again: GOOD
    assert reserve(lu, NODE_A, 1, PrType.EXCLUSIVE_ACCESS) == CONFLICT  # different type
    register(lu, NODE_B, 2)
    assert reserve(lu, NODE_B, 2, PrType.WRITE_EXCLUSIVE) == CONFLICT
    r = reservation(lu)
    assert (r.key, r.pr_type, r.scope) == (1, PrType.WRITE_EXCLUSIVE, 0)


def test_release_rules_and_unit_attentions(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    register(lu, NODE_B, 2)
    assert (
        prout(lu, NODE_A, PrOutAction.RELEASE, key=1, pr_type=1) == ScsiStatus.GOOD
    )  # nothing reserved
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY) == ScsiStatus.GOOD
    assert prout(lu, NODE_C, PrOutAction.RELEASE, key=0, pr_type=5) == CONFLICT  # unregistered
    assert (
        prout(lu, NODE_B, PrOutAction.RELEASE, key=2, pr_type=5) == ScsiStatus.GOOD
    )  # not holder: no-op
    assert reservation(lu).pr_type == PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    illegal(
        lu.execute(NODE_A, *C.pr_out(PrOutAction.RELEASE, key=1, pr_type=1)),
        Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
    )
    assert prout(lu, NODE_A, PrOutAction.RELEASE, key=1, pr_type=5) == ScsiStatus.GOOD
    assert reservation(lu).pr_type is None
    assert pending(lu, NODE_B) == [Asc.RESERVATIONS_RELEASED]
    assert pending(lu, NODE_A) == [] and pending(lu, NODE_C) == []
    check(
        lu.execute(NODE_B, C.test_unit_ready()), SenseKey.UNIT_ATTENTION, Asc.RESERVATIONS_RELEASED
    )
    # releasing Write Exclusive gives no unit attention
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD
    assert prout(lu, NODE_A, PrOutAction.RELEASE, key=1, pr_type=1) == ScsiStatus.GOOD
    assert pending(lu, NODE_B) == []


def test_clear(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    register(lu, NODE_B, 2)
    assert reserve(lu, NODE_A, 1, PrType.EXCLUSIVE_ACCESS) == ScsiStatus.GOOD
    gen = keys(lu)[0]
    assert prout(lu, NODE_C, PrOutAction.CLEAR, key=0) == CONFLICT
    assert prout(lu, NODE_B, PrOutAction.CLEAR, key=3) == CONFLICT
    assert prout(lu, NODE_B, PrOutAction.CLEAR, key=2) == ScsiStatus.GOOD
    assert keys(lu) == (gen + 1, [])
    assert reservation(lu).pr_type is None
    assert pending(lu, NODE_A) == [Asc.RESERVATIONS_PREEMPTED]
    assert pending(lu, NODE_B) == []


def test_preempt_removes_registration_without_reservation(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    register(lu, NODE_B, 2)
    gen = keys(lu)[0]
    assert prout(lu, NODE_B, PrOutAction.PREEMPT, key=2, sa_key=1, pr_type=3) == ScsiStatus.GOOD
    assert keys(lu) == (gen + 1, [2])
    assert reservation(lu).pr_type is None
    assert pending(lu, NODE_A) == [Asc.REGISTRATIONS_PREEMPTED]
    assert (
        prout(lu, NODE_B, PrOutAction.PREEMPT, key=2, sa_key=7, pr_type=3) == CONFLICT
    )  # no such key
    illegal(
        lu.execute(NODE_B, *C.pr_out(PrOutAction.PREEMPT, key=2, sa_key=0, pr_type=3)),
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
    )


def test_preempt_takes_reservation_and_changes_type(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    register(lu, NODE_B, 2)
    register(lu, NODE_C, 3)
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD
    assert (
        prout(lu, NODE_B, PrOutAction.PREEMPT, key=2, sa_key=1, pr_type=PrType.EXCLUSIVE_ACCESS)
        == ScsiStatus.GOOD
    )
    r = reservation(lu, NODE_B)
    assert (r.key, r.pr_type) == (2, PrType.EXCLUSIVE_ACCESS)
    assert pending(lu, NODE_A) == [Asc.REGISTRATIONS_PREEMPTED]
    assert pending(lu, NODE_C) == [Asc.RESERVATIONS_RELEASED]  # type changed
    illegal(lu.execute(NODE_B, *C.pr_out(PrOutAction.PREEMPT, key=2, sa_key=2, pr_type=9)))


def test_preempt_all_registrants(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    register(lu, NODE_B, 2)
    register(lu, NODE_C, 3)
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS) == ScsiStatus.GOOD
    assert reservation(lu).key == 0  # all-registrants: key 0 (SPC-4 6.15.3)
    # a nonzero key removes just those registrations; the reservation stays
    assert prout(lu, NODE_B, PrOutAction.PREEMPT, key=2, sa_key=3, pr_type=7) == ScsiStatus.GOOD
    assert sorted(keys(lu)[1]) == [1, 2]
    assert reservation(lu).pr_type == PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS
    # key 0 preempts everybody else and sets the new type
    assert (
        prout(lu, NODE_B, PrOutAction.PREEMPT, key=2, sa_key=0, pr_type=PrType.EXCLUSIVE_ACCESS)
        == ScsiStatus.GOOD
    )
    assert keys(lu)[1] == [2]
    r = reservation(lu)
    assert (r.key, r.pr_type) == (2, PrType.EXCLUSIVE_ACCESS)


def test_preempt_and_abort_reports_nexuses(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    register(lu, NODE_B, 2)
    assert reserve(lu, NODE_A, 1, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY) == ScsiStatus.GOOD
    cdb, data = C.pr_out(PrOutAction.PREEMPT_AND_ABORT, key=2, sa_key=1, pr_type=6)
    out = lu.execute(NODE_B, cdb, data)
    assert out.status == ScsiStatus.GOOD and out.pr_changed
    assert out.aborted == ((NODE_A.initiator_port, 1),)
    assert lu.execute(NODE_A, C.read10(0, 1)).status == ScsiStatus.CHECK_CONDITION  # UA first
    assert lu.execute(NODE_A, C.read10(0, 1)).status == CONFLICT


def test_holder_unregistering_releases(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    register(lu, NODE_B, 2)
    assert reserve(lu, NODE_A, 1, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY) == ScsiStatus.GOOD
    assert prout(lu, NODE_A, PrOutAction.REGISTER, key=1, sa_key=0) == ScsiStatus.GOOD
    assert reservation(lu).pr_type is None
    assert pending(lu, NODE_B) == [Asc.RESERVATIONS_RELEASED]
    attach(lu, NODE_B)
    # all-registrants: survives until the last registrant leaves
    register(lu, NODE_A, 1)
    assert reserve(lu, NODE_A, 1, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS) == ScsiStatus.GOOD
    assert prout(lu, NODE_A, PrOutAction.REGISTER, key=1, sa_key=0) == ScsiStatus.GOOD
    assert reservation(lu).pr_type == PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS
    assert prout(lu, NODE_B, PrOutAction.REGISTER, key=2, sa_key=0) == ScsiStatus.GOOD
    assert reservation(lu).pr_type is None


# --------------------------------------------------------------------------- PR IN
def test_report_capabilities(lu: LogicalUnit) -> None:
    data = good(lu.execute(NODE_A, C.persistent_reserve_in(PrInAction.REPORT_CAPABILITIES)))
    caps = C.parse_report_capabilities(data)
    assert caps.length == 8 and caps.crh and caps.sip_c and caps.atp_c and caps.ptpl_c and caps.tmv
    assert caps.allow_commands <= 5 and not caps.ptpl_a
    assert caps.type_mask == 0xEA01  # all six types (SPC-4 Table 176)
    only = ReservationState(capabilities=Capabilities(types=(PrType.WRITE_EXCLUSIVE,)))
    assert C.parse_report_capabilities(only.pr_in(2, 8)).type_mask == 0x0200


def test_read_keys_truncation_keeps_additional_length(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 0xABCDEF)
    data = good(lu.execute(NODE_A, C.persistent_reserve_in(PrInAction.READ_KEYS, 8)))
    assert len(data) == 8 and struct.unpack(">I", data[4:8])[0] == 8


def test_read_full_status(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    assert prout(lu, NODE_B, PrOutAction.REGISTER, sa_key=2, all_tg_pt=True) == ScsiStatus.GOOD
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD
    gen, desc = C.parse_read_full_status(
        good(lu.execute(NODE_A, C.persistent_reserve_in(PrInAction.READ_FULL_STATUS)))
    )
    assert gen == 2
    a, b = desc
    assert (a.key, a.r_holder, a.all_tg_pt, a.pr_type, a.relative_target_port) == (
        1,
        True,
        False,
        1,
        1,
    )
    assert a.transport_id == NODE_A.initiator_port
    assert (b.key, b.r_holder, b.all_tg_pt, b.pr_type) == (2, False, True, 0)


def test_pr_in_bad_service_action(lu: LogicalUnit) -> None:
    for sa in (4, 0x10, 0x1F):
        illegal(lu.execute(NODE_A, C.persistent_reserve_in(sa)))
    with pytest.raises(Exception, match="not supported"):
        ReservationState().pr_in(9, 100)


# --------------------------------------------------------------------------- ALL_TG_PT / SPEC_I_PT / MOVE
def test_all_tg_pt_covers_other_ports() -> None:
    lu = make_lu()
    a1, a2 = nexus("node-a", tpgt=1), nexus("node-a", tpgt=2)
    attach(lu, a1, a2, NODE_B)
    assert prout(lu, a1, PrOutAction.REGISTER, sa_key=5, all_tg_pt=True) == ScsiStatus.GOOD
    assert (
        reserve(lu, a2, 5, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD
    )  # same registration on port 2
    # without ALL_TG_PT, each port is its own I_T nexus
    assert prout(lu, NODE_B, PrOutAction.REGISTER, sa_key=6) == ScsiStatus.GOOD
    b2 = nexus("node-b", tpgt=2)
    attach(lu, b2)
    assert prout(lu, b2, PrOutAction.REGISTER, key=6, sa_key=7) == CONFLICT


def test_spec_i_pt_registers_named_nexuses(lu: LogicalUnit) -> None:
    tids = [NODE_B.initiator_port, "iqn.2024-01.org.example:node-c"]  # format 01b and 00b
    assert (
        prout(lu, NODE_A, PrOutAction.REGISTER, sa_key=9, spec_i_pt=True, transport_ids=tids)
        == ScsiStatus.GOOD
    )
    assert keys(lu)[1] == [9, 9, 9]
    assert reserve(lu, NODE_B, 9, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD  # NODE_B is registered
    assert prout(lu, NODE_C, PrOutAction.REGISTER, key=9, sa_key=10) == ScsiStatus.GOOD  # by name
    # naming an already registered nexus is an error
    cdb, data = C.pr_out(
        PrOutAction.REGISTER, sa_key=11, spec_i_pt=True, transport_ids=[NODE_A.initiator_port]
    )
    other = nexus("node-d")
    attach(lu, other)
    illegal(lu.execute(other, cdb, data), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    # SPEC_I_PT from a registered nexus is an invalid field in the CDB
    cdb, data = C.pr_out(
        PrOutAction.REGISTER, key=9, sa_key=12, spec_i_pt=True, transport_ids=["iqn.x:y"]
    )
    illegal(lu.execute(NODE_A, cdb, data))


def test_spec_i_pt_malformed_lists(lu: LogicalUnit) -> None:
    cdb, data = C.pr_out(
        PrOutAction.REGISTER, sa_key=1, spec_i_pt=True, transport_ids=[NODE_B.initiator_port]
    )
    bad_len = data[:24] + struct.pack(">I", len(data) - 24) + data[28:]
    illegal(lu.execute(NODE_A, cdb, bad_len), Asc.PARAMETER_LIST_LENGTH_ERROR)
    bad_proto = data[:28] + bytes([0x41]) + data[29:]  # FC protocol id
    illegal(lu.execute(NODE_A, cdb, bad_proto), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    short = C.pr_out_parameters(0, 1, spec_i_pt=True)[:24]
    illegal(
        lu.execute(NODE_A, C.persistent_reserve_out(0, param_len=24), short),
        Asc.PARAMETER_LIST_LENGTH_ERROR,
    )


def test_register_and_move(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    assert reserve(lu, NODE_A, 1, PrType.WRITE_EXCLUSIVE) == ScsiStatus.GOOD

    def move(n: Nexus, key: int, sa_key: int, tid: str, rtp: int = 1, unreg: bool = False) -> int:
        data = C.register_and_move_parameters(key, sa_key, rtp, tid, unreg=unreg)
        cdb = C.persistent_reserve_out(PrOutAction.REGISTER_AND_MOVE, 0, 1, len(data))
        return lu.execute(n, cdb, data).status

    assert move(NODE_B, 0, 5, NODE_B.initiator_port) == CONFLICT  # not registered
    assert move(NODE_A, 2, 5, NODE_B.initiator_port) == CONFLICT  # wrong key
    data = C.register_and_move_parameters(1, 0, 1, NODE_B.initiator_port)
    illegal(
        lu.execute(NODE_A, C.persistent_reserve_out(7, param_len=len(data)), data),
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
    )
    data = C.register_and_move_parameters(1, 5, 1, NODE_A.initiator_port)
    illegal(
        lu.execute(NODE_A, C.persistent_reserve_out(7, param_len=len(data)), data),
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
    )
    illegal(
        lu.execute(NODE_A, C.persistent_reserve_out(7, param_len=20), data[:20]),
        Asc.PARAMETER_LIST_LENGTH_ERROR,
    )
    illegal(
        lu.execute(NODE_A, C.persistent_reserve_out(7, param_len=30), data[:30]),
        Asc.PARAMETER_LIST_LENGTH_ERROR,
    )
    gen = keys(lu)[0]
    assert move(NODE_A, 1, 5, NODE_B.initiator_port, unreg=True) == ScsiStatus.GOOD
    assert keys(lu) == (gen + 1, [5])
    r = reservation(lu)
    assert (r.key, r.pr_type) == (5, PrType.WRITE_EXCLUSIVE)
    assert lu.execute(NODE_B, C.write10(0, 1), bytes(512)).status == ScsiStatus.GOOD
    assert lu.execute(NODE_A, C.write10(0, 1), bytes(512)).status == CONFLICT
    assert move(NODE_A, 1, 5, NODE_C.initiator_port) == CONFLICT  # A is gone
    register(lu, NODE_C, 3)
    assert move(NODE_C, 3, 6, NODE_A.initiator_port) == CONFLICT  # C does not hold it


# --------------------------------------------------------------------------- APTPL
def test_aptpl_roundtrip_through_json() -> None:
    saved: list[str] = []
    lu = make_lu(on_pr_change=lambda st: saved.append(st.to_json()) if st.aptpl else None)
    attach(lu, NODE_A, NODE_B)
    assert prout(lu, NODE_A, PrOutAction.REGISTER, sa_key=0xA, aptpl=True) == ScsiStatus.GOOD
    assert (
        prout(lu, NODE_B, PrOutAction.REGISTER, sa_key=0xB, all_tg_pt=True, aptpl=True)
        == ScsiStatus.GOOD
    )
    assert reserve(lu, NODE_A, 0xA, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY) == ScsiStatus.GOOD
    assert saved, "the owner was told to persist"
    caps = C.parse_report_capabilities(good(lu.execute(NODE_A, C.persistent_reserve_in(2))))
    assert caps.ptpl_a
    # "restart": a new logical unit over restored state
    state = ReservationState.from_json(saved[-1])
    lu2 = make_lu(reservations=state)
    attach(lu2, NODE_A, NODE_B, NODE_C)
    assert sorted(keys(lu2)[1]) == [0xA, 0xB]
    assert keys(lu2)[0] == keys(lu)[0]
    r = reservation(lu2)
    assert (r.key, r.pr_type) == (0xA, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert lu2.execute(NODE_C, C.write10(0, 1), bytes(512)).status == CONFLICT
    assert lu2.execute(NODE_B, C.write10(0, 1), bytes(512)).status == ScsiStatus.GOOD
    # APTPL=0 on the next registration turns persistence off
    assert prout(lu2, NODE_A, PrOutAction.REGISTER, key=0xA, sa_key=0xC) == ScsiStatus.GOOD
    assert not lu2.reservations.aptpl


def test_from_json_rejects_foreign_files() -> None:
    with pytest.raises(ValueError):
        ReservationState.from_json('{"format": "other"}')
    st = ReservationState.from_json(ReservationState().to_json())
    assert st.generation == 0 and not st.registrations and st.type is None


def test_unsupported_capabilities_are_refused() -> None:
    caps = Capabilities(atp_c=False, ptpl_c=False)
    lu = make_lu(reservations=ReservationState(capabilities=caps))
    attach(lu, NODE_A)
    illegal(
        lu.execute(NODE_A, *C.pr_out(PrOutAction.REGISTER, sa_key=1, all_tg_pt=True)),
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
    )
    illegal(
        lu.execute(NODE_A, *C.pr_out(PrOutAction.REGISTER, sa_key=1, aptpl=True)),
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
    )


# --------------------------------------------------------------------------- cluster scenario
def test_cluster_failover() -> None:
    """Node A owns the disk (WE-RO), node B is registered standby. A dies: B preempts
    A's key, takes the reservation, and A's writes conflict when it comes back."""
    lu = make_lu()
    attach(lu, NODE_A, NODE_B)
    register(lu, NODE_A, 0xA0)
    register(lu, NODE_B, 0xB0)
    assert reserve(lu, NODE_A, 0xA0, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY) == ScsiStatus.GOOD
    assert lu.execute(NODE_A, C.write10(10, 1), b"A" * 512).good
    lu.nexus_lost(NODE_A)  # node A crashed; its registration persists
    assert 0xA0 in keys(lu, NODE_B)[1]
    assert (
        prout(
            lu,
            NODE_B,
            PrOutAction.PREEMPT_AND_ABORT,
            key=0xB0,
            sa_key=0xA0,
            pr_type=PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
        )
        == ScsiStatus.GOOD
    )
    r = reservation(lu, NODE_B)
    assert (r.key, r.pr_type) == (0xB0, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert lu.execute(NODE_B, C.write10(10, 1), b"B" * 512).good
    # node A returns: unit attentions, then its writes conflict, reads still work (WE)
    statuses = [lu.execute(NODE_A, C.write10(10, 1), b"A" * 512) for _ in range(3)]
    assert statuses[0].status == ScsiStatus.CHECK_CONDITION
    assert statuses[-1].status == CONFLICT
    assert good(lu.execute(NODE_A, C.read10(10, 1))) == b"B" * 512
    # and its old key no longer works
    assert prout(lu, NODE_A, PrOutAction.REGISTER, key=0xA0, sa_key=0xA1) == CONFLICT


# --------------------------------------------------------------------------- SCSI-2
def test_scsi2_reserve_release(lu: LogicalUnit) -> None:
    assert lu.execute(NODE_A, C.reserve6()).good
    assert lu.execute(NODE_A, C.reserve6()).good  # holder again
    assert lu.execute(NODE_B, C.reserve6()).status == CONFLICT
    assert lu.execute(NODE_B, C.release6()).good  # non-holder: no-op
    assert lu.execute(NODE_B, C.mode_sense6(0x3F)).status == CONFLICT
    assert lu.execute(NODE_B, C.test_unit_ready()).status == CONFLICT
    assert lu.execute(NODE_B, C.persistent_reserve_in(0)).status == CONFLICT
    for cdb in (
        C.inquiry(),
        C.report_luns(),
        C.request_sense(),
        C.prevent_allow(0),
        C.report_supported_opcodes(),
    ):
        assert lu.execute(NODE_B, cdb).good, cdb.hex()
    assert lu.execute(NODE_A, C.mode_sense6(0x3F)).good
    assert lu.execute(NODE_A, C.release10()).good
    assert lu.execute(NODE_B, C.reserve10()).good
    assert lu.execute(NODE_A, C.read10(0, 1)).status == CONFLICT
    illegal(lu.execute(NODE_B, bytes([0x56, 0x10] + [0] * 8)))  # third party
    illegal(lu.execute(NODE_B, bytes([0x57, 0x10] + [0] * 8)))
    illegal(lu.execute(NODE_B, bytes([0x16, 0x01, 0, 0, 0, 0])))  # extent


@pytest.mark.parametrize("event", ["nexus_lost", "lun_reset", "warm_reset", "cold_reset"])
def test_scsi2_released_by_loss_and_resets(lu: LogicalUnit, event: str) -> None:
    register(lu, NODE_C, 7)  # a PR registration survives all of these
    assert prout(lu, NODE_C, PrOutAction.REGISTER, key=7, sa_key=0) == ScsiStatus.GOOD
    assert lu.execute(NODE_A, C.reserve6()).good
    assert prout(lu, NODE_C, PrOutAction.REGISTER, sa_key=7) == CONFLICT  # PR OUT vs RESERVE
    if event == "nexus_lost":
        lu.nexus_lost(NODE_A)
    else:
        kinds = {
            "lun_reset": ResetKind.LOGICAL_UNIT_RESET,
            "warm_reset": ResetKind.TARGET_WARM_RESET,
            "cold_reset": ResetKind.TARGET_COLD_RESET,
        }
        lu.reset(kinds[event])
        attach(lu, NODE_C)
    assert lu.reservations.scsi2_holder is None
    register(lu, NODE_C, 7)
    if event == "nexus_lost":
        assert pending(lu, NODE_A) == [Asc.I_T_NEXUS_LOSS_OCCURRED]
    lu.reset(ResetKind.LOGICAL_UNIT_RESET)
    attach(lu, NODE_C)
    assert keys(lu, NODE_C)[1] == [7]  # persistent registrations survive resets


def test_reserve_with_registrations_conflicts(lu: LogicalUnit) -> None:
    register(lu, NODE_A, 1)
    assert lu.execute(NODE_B, C.reserve6()).status == CONFLICT
    assert lu.execute(NODE_A, C.reserve6()).status == CONFLICT  # CRH: any registration
    assert lu.execute(NODE_B, C.release6()).good
