"""The reference persistent reservation logic (scsi/reservations.py, through a logical
unit) against an independent model of SPC-4's rules, with two to four I_T nexuses and
random service actions, READs and WRITEs, as the Cluster area's scenarios use them.

The model keeps registrations, holder, type, PRgeneration and the pending reservation
unit attentions of every nexus (SPC-4 5.13.7, 5.13.9, 5.13.11, 6.16.2 table 213), and
decides READ and WRITE access by ``ACCESS``, SPC-4's table of allowed access per
reservation type (5.13.1, with the READ and WRITE rows of SBC-3). ``ACCESS`` is written
from the table alone; ``test_model_access_matches_spc4_table`` checks the model's
access rule against it for every type and every kind of nexus, so the state machine
compares the logical unit with a model that is itself held to the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from scsi_util import attach, make_lu, nexus

from iscsi_conformance.scsi import cdb as C
from iscsi_conformance.scsi.codes import Asc, PrInAction, PrOutAction, PrType, ScsiStatus
from iscsi_conformance.scsi.sense import SenseData

GOOD, CHECK, CONFLICT = ScsiStatus.GOOD, ScsiStatus.CHECK_CONDITION, ScsiStatus.RESERVATION_CONFLICT
PR_UAS = {Asc.RESERVATIONS_PREEMPTED, Asc.RESERVATIONS_RELEASED, Asc.REGISTRATIONS_PREEMPTED}

# SPC-4 5.13.1 (Table 65 with SBC-3's READ/WRITE rows): (READ, WRITE) allowed for the
# holder, a registered nexus that does not hold, and an unregistered nexus. Under the
# all registrants types every registrant is a holder (SPC-4 5.13.10).
ACCESS: dict[PrType, dict[str, tuple[bool, bool]]] = {
    PrType.WRITE_EXCLUSIVE: {
        "holder": (True, True),
        "registered": (True, False),
        "unregistered": (True, False),
    },
    PrType.EXCLUSIVE_ACCESS: {
        "holder": (True, True),
        "registered": (False, False),
        "unregistered": (False, False),
    },
    PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY: {
        "holder": (True, True),
        "registered": (True, True),
        "unregistered": (True, False),
    },
    PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: {
        "holder": (True, True),
        "registered": (True, True),
        "unregistered": (False, False),
    },
    PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS: {
        "holder": (True, True),
        "registered": (True, True),
        "unregistered": (True, False),
    },
    PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS: {
        "holder": (True, True),
        "registered": (True, True),
        "unregistered": (False, False),
    },
}


@dataclass
class Model:
    """SPC-4's persistent reservation state, as the text read says it moves."""

    n: int
    keys: dict[int, int] = field(default_factory=dict)  # nexus -> key
    holder: int | None = None  # nexus (non all registrants types)
    type: PrType | None = None
    generation: int = 0
    uas: dict[int, set[Asc]] = field(default_factory=dict)

    def kind(self, who: int) -> str:
        if who not in self.keys:
            return "unregistered"
        if self.type is not None and (self.type.all_registrants or self.holder == who):
            return "holder"
        return "registered"

    def allowed(self, who: int, write: bool) -> bool:
        """Access by the model's own reasoning (SPC-4 5.13.1 prose): the holder may do
        anything; Exclusive Access types shut out reads too; registrants only and all
        registrants types let registrants in."""
        if self.type is None:
            return True
        k = self.kind(who)
        if k == "holder":
            return True
        registrants_in = self.type.registrants_only or self.type.all_registrants
        if k == "registered" and registrants_in:
            return True
        exclusive_access = self.type in (
            PrType.EXCLUSIVE_ACCESS,
            PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
            PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        )
        return not write and not exclusive_access

    def ua(self, who: int, code: Asc) -> None:
        self.uas.setdefault(who, set()).add(code)

    def release(self) -> None:
        self.type, self.holder = None, None

    def unregister(self, who: int) -> None:
        """SPC-4 5.13.11.2.3: a holder leaving releases (all registrants: the last one)."""
        del self.keys[who]
        if self.type is None:
            return
        if self.type.all_registrants:
            if not self.keys:
                self.release()
        elif self.holder == who:
            was = self.type
            self.release()
            if was.registrants_only:
                for other in self.keys:
                    self.ua(other, Asc.RESERVATIONS_RELEASED)


def test_model_access_matches_spc4_table() -> None:
    """The model's access rule agrees with SPC-4's table for every type and kind of
    nexus (holder, registered, unregistered), READ and WRITE."""
    for t, rows in ACCESS.items():
        for kind, (read, write) in rows.items():
            m = Model(3, keys={0: 1}, holder=0, type=t)
            who = {"holder": 0, "registered": 1, "unregistered": 2}[kind]
            if kind == "registered":
                m.keys[1] = 2
                if t.all_registrants:
                    continue  # every registrant holds: no "registered non-holder"
            assert (m.allowed(who, False), m.allowed(who, True)) == (read, write), (t, kind)


KEYS = st.sampled_from([0, 1, 2, 3])
TYPES = st.sampled_from(list(PrType))


class ClusterPrMachine(RuleBasedStateMachine):
    """Random PERSISTENT RESERVE OUT, READ and WRITE from 2 to 4 nexuses: status, keys,
    reservation, PRgeneration, unit attentions and access compared with ``Model``."""

    def __init__(self) -> None:
        super().__init__()
        self.lu = make_lu()
        self.nexuses: list[object] = []
        self.m = Model(0)

    @initialize(n=st.integers(2, 4))
    def nodes(self, n: int) -> None:
        self.nexuses = [nexus(f"cluster-node-{i}") for i in range(n)]
        attach(self.lu, *self.nexuses)  # type: ignore[arg-type]
        self.m = Model(n)

    def _who(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.nexuses) - 1), label="nexus")

    def _run(self, who: int, cdb: bytes, data_out: bytes = b"") -> object:
        """Execute, taking pending unit attentions off first; each must be one the model
        expects for this nexus (reservation ones) and is then no longer pending."""
        for _ in range(8):
            out = self.lu.execute(self.nexuses[who], cdb, data_out)  # type: ignore[arg-type]
            if out.status == CHECK and out.sense[2] & 0x0F == 6:
                s = SenseData.parse(out.sense)
                code = Asc(s.asc << 8 | s.ascq)
                if code in PR_UAS:
                    assert code in self.m.uas.get(who, set()), (who, code, self.m.uas)
                    self.m.uas[who].discard(code)
                continue
            return out
        raise AssertionError("unit attentions never ended")

    def _out(self, who: int, sa: int, **kw: object) -> int:
        cdb, data = C.pr_out(sa, **kw)  # type: ignore[arg-type]
        return self._run(who, cdb, data).status  # type: ignore[attr-defined,no-any-return]

    def _reg_ok(self, who: int, key: int) -> bool:
        return self.m.keys.get(who) == key

    @precondition(lambda self: self.nexuses)
    @rule(data=st.data(), key=KEYS, sa_key=KEYS, ignore=st.booleans())
    def register(self, data: st.DataObject, key: int, sa_key: int, ignore: bool) -> None:
        who = self._who(data)
        sa = PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY if ignore else PrOutAction.REGISTER
        status = self._out(who, sa, key=key, sa_key=sa_key)
        cur = self.m.keys.get(who)
        if not ignore and key != (cur if cur is not None else 0):
            assert status == CONFLICT  # SPC-4 5.13.7 tables 67/68
            return
        assert status == GOOD
        if cur is None and sa_key == 0:
            return
        self.m.generation += 1
        if sa_key == 0:
            self.m.unregister(who)
        else:
            self.m.keys[who] = sa_key

    @precondition(lambda self: self.nexuses)
    @rule(data=st.data(), key=KEYS, t=TYPES)
    def reserve(self, data: st.DataObject, key: int, t: PrType) -> None:
        who = self._who(data)
        status = self._out(who, PrOutAction.RESERVE, key=key, pr_type=t)
        if not self._reg_ok(who, key):
            assert status == CONFLICT
        elif self.m.type is None:
            assert status == GOOD  # SPC-4 5.13.9
            self.m.type = t
            self.m.holder = None if t.all_registrants else who
        elif self.m.kind(who) == "holder" and self.m.type == t:
            assert status == GOOD
        else:
            assert status == CONFLICT  # SPC-4 5.13.9: another reservation exists

    @precondition(lambda self: self.nexuses)
    @rule(data=st.data(), key=KEYS, t=TYPES)
    def release(self, data: st.DataObject, key: int, t: PrType) -> None:
        who = self._who(data)
        status = self._out(who, PrOutAction.RELEASE, key=key, pr_type=t)
        if not self._reg_ok(who, key):
            assert status == CONFLICT
            return
        if self.m.type is None or self.m.kind(who) != "holder":
            assert status == GOOD  # SPC-4 5.13.11.2.2: nothing released
            return
        if t != self.m.type:
            assert status == CHECK  # INVALID RELEASE OF PERSISTENT RESERVATION
            return
        assert status == GOOD
        was = self.m.type
        self.m.release()
        if was.registrants_only or was.all_registrants:
            for other in self.m.keys:
                if other != who:
                    self.m.ua(other, Asc.RESERVATIONS_RELEASED)

    @precondition(lambda self: self.nexuses)
    @rule(data=st.data(), key=KEYS)
    def clear(self, data: st.DataObject, key: int) -> None:
        who = self._who(data)
        status = self._out(who, PrOutAction.CLEAR, key=key)
        if not self._reg_ok(who, key):
            assert status == CONFLICT
            return
        assert status == GOOD  # SPC-4 5.13.11.2.7
        for other in self.m.keys:
            if other != who:
                self.m.ua(other, Asc.RESERVATIONS_PREEMPTED)
        self.m.keys.clear()
        self.m.release()
        self.m.generation += 1

    @precondition(lambda self: self.nexuses)
    @rule(data=st.data(), key=KEYS, sa_key=KEYS, t=TYPES, abort=st.booleans())
    def preempt(self, data: st.DataObject, key: int, sa_key: int, t: PrType, abort: bool) -> None:
        who = self._who(data)
        sa = PrOutAction.PREEMPT_AND_ABORT if abort else PrOutAction.PREEMPT
        status = self._out(who, sa, key=key, sa_key=sa_key, pr_type=t)
        m = self.m
        if not self._reg_ok(who, key):
            assert status == CONFLICT
            return
        holder_key = m.keys.get(m.holder) if m.holder is not None else None
        if m.type is not None and m.type.all_registrants and sa_key == 0:
            # table 72: preempt, all other registrations removed
            assert status == GOOD
            for other in [o for o in m.keys if o != who]:
                del m.keys[other]
                m.ua(other, Asc.REGISTRATIONS_PREEMPTED)
            m.type, m.holder = t, (None if t.all_registrants else who)
        elif m.type is not None and not m.type.all_registrants and sa_key == holder_key:
            # SPC-4 5.13.11.2.4.3: preempt the holder's reservation
            assert status == GOOD
            old = m.type
            for other in [o for o, k in m.keys.items() if k == sa_key and o != who]:
                del m.keys[other]
                m.ua(other, Asc.REGISTRATIONS_PREEMPTED)
            m.type, m.holder = t, (None if t.all_registrants else who)
            if old != t:
                for other in m.keys:
                    if other != who:
                        m.ua(other, Asc.RESERVATIONS_RELEASED)
        elif sa_key == 0:
            assert status == CHECK  # INVALID FIELD IN PARAMETER LIST (table 72)
            return
        else:
            # SPC-4 5.13.11.2.5: remove the registrations of sa_key, reservation kept
            victims = [o for o, k in m.keys.items() if k == sa_key]
            if not victims:
                assert status == CONFLICT
                return
            assert status == GOOD
            for v in victims:  # the sender's own, if its key is named: no unit attention
                m.unregister(v) if v == who else m.keys.pop(v)
                if v != who:
                    m.ua(v, Asc.REGISTRATIONS_PREEMPTED)
            if m.type is not None and m.type.all_registrants and not m.keys:
                m.release()
        m.generation += 1

    @precondition(lambda self: self.nexuses)
    @rule(data=st.data(), write=st.booleans())
    def access(self, data: st.DataObject, write: bool) -> None:
        who = self._who(data)
        cdb = C.write10(10, 1) if write else C.read10(10, 1)
        out = self._run(who, cdb, b"\0" * 512 if write else b"")
        want = GOOD if self.m.allowed(who, write) else CONFLICT
        assert out.status == want, (who, write, self.m)  # type: ignore[attr-defined]

    @invariant()
    def state_matches_model(self) -> None:
        if not self.nexuses:
            return
        st_ = self.lu.reservations
        gen, keys = C.parse_pr_in_read_keys(st_.pr_in(PrInAction.READ_KEYS, 8192))
        assert sorted(keys) == sorted(self.m.keys.values())
        assert gen == self.m.generation
        info = C.parse_pr_in_read_reservation(st_.pr_in(PrInAction.READ_RESERVATION, 8192))
        assert info.pr_type == (None if self.m.type is None else int(self.m.type))
        if self.m.type is not None and not self.m.type.all_registrants:
            assert info.key == self.m.keys[self.m.holder]  # type: ignore[index]
        for i, n in enumerate(self.nexuses):
            pending = set(self.lu.pending_unit_attentions(n)) & PR_UAS  # type: ignore[arg-type]
            assert pending == self.m.uas.get(i, set()), (i, pending, self.m.uas)


ClusterPrMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None
)
TestClusterPrMachine = ClusterPrMachine.TestCase


@pytest.mark.parametrize("t", list(PrType))
def test_model_and_lu_agree_on_access_table(t: PrType) -> None:
    """Fixed three-nexus states per type (holder 0, registrant 1, unregistered 2): the
    logical unit answers READ and WRITE as SPC-4's table says."""
    lu = make_lu()
    ns = [nexus(f"table-{i}") for i in range(3)]
    attach(lu, *ns)
    for i, k in ((0, 1), (1, 2)):
        assert lu.execute(ns[i], *C.pr_out(PrOutAction.REGISTER, sa_key=k)).status == GOOD
    assert lu.execute(ns[0], *C.pr_out(PrOutAction.RESERVE, key=1, pr_type=t)).status == GOOD
    for kind, who in (("holder", 0), ("registered", 1), ("unregistered", 2)):
        read, write = ACCESS[t]["holder" if (kind == "registered" and t.all_registrants) else kind]
        r = lu.execute(ns[who], C.read10(10, 1))
        w = lu.execute(ns[who], C.write10(10, 1), b"\0" * 512)
        assert (r.status == GOOD, w.status == GOOD) == (read, write), (t, kind)
        assert r.status in (GOOD, CONFLICT) and w.status in (GOOD, CONFLICT)
