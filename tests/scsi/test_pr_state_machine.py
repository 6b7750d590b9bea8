"""Random PERSISTENT RESERVE OUT sequences from several I_T nexuses against a small
independent model of registrations (SPC-4 5.9.7, 5.9.11), with invariants:
at most one holder unless all-registrants; PRgeneration moves exactly on registration
changes; READ KEYS equals the model."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from scsi_util import attach, make_lu, nexus

from iscsi_conformance.scsi import cdb as C
from iscsi_conformance.scsi.codes import PrInAction, PrOutAction, PrType, ScsiStatus

NEXUSES = [nexus(f"n{i}") for i in range(3)]
KEYS = st.sampled_from([0, 1, 2, 3])
WHO = st.integers(0, len(NEXUSES) - 1)
TYPES = st.sampled_from(list(PrType))


class PrMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lu = make_lu()
        attach(self.lu, *NEXUSES)
        self.model: dict[int, int] = {}  # nexus index -> key
        self.generation = 0

    def _out(self, who: int, sa: int, **kw: object) -> int:
        cdb, data = C.pr_out(sa, **kw)  # type: ignore[arg-type]
        out = self.lu.execute(NEXUSES[who], cdb, data)
        while out.status == ScsiStatus.CHECK_CONDITION and out.sense[2] & 0x0F == 6:
            out = self.lu.execute(NEXUSES[who], cdb, data)  # unit attention first
        return out.status

    @rule(who=WHO, key=KEYS, sa_key=KEYS, ignore=st.booleans())
    def register(self, who: int, key: int, sa_key: int, ignore: bool) -> None:
        sa = PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY if ignore else PrOutAction.REGISTER
        status = self._out(who, sa, key=key, sa_key=sa_key)
        cur = self.model.get(who)
        if not ignore and key != (cur if cur is not None else 0):
            assert status == ScsiStatus.RESERVATION_CONFLICT
            return
        assert status == ScsiStatus.GOOD
        if cur is None and sa_key == 0:
            return
        self.generation += 1
        if sa_key == 0:
            del self.model[who]
        else:
            self.model[who] = sa_key

    @rule(who=WHO, key=KEYS, t=TYPES)
    def reserve(self, who: int, key: int, t: PrType) -> None:
        status = self._out(who, PrOutAction.RESERVE, key=key, pr_type=t)
        if self.model.get(who) != key or key == 0:
            assert status == ScsiStatus.RESERVATION_CONFLICT

    @rule(who=WHO, key=KEYS, t=TYPES)
    def release(self, who: int, key: int, t: PrType) -> None:
        self._out(who, PrOutAction.RELEASE, key=key, pr_type=t)

    @rule(who=WHO, key=KEYS)
    def clear(self, who: int, key: int) -> None:
        status = self._out(who, PrOutAction.CLEAR, key=key)
        if who in self.model and self.model[who] == key:
            assert status == ScsiStatus.GOOD
            self.model.clear()
            self.generation += 1
        else:
            assert status == ScsiStatus.RESERVATION_CONFLICT

    @rule(who=WHO, key=KEYS, sa_key=KEYS, t=TYPES, abort=st.booleans())
    def preempt(self, who: int, key: int, sa_key: int, t: PrType, abort: bool) -> None:
        sa = PrOutAction.PREEMPT_AND_ABORT if abort else PrOutAction.PREEMPT
        state = self.lu.reservations
        holder_key = next((r.key for r in state.registrations if r.nexus_key == state.holder), None)
        all_reg = state.type is not None and state.type.all_registrants
        status = self._out(who, sa, key=key, sa_key=sa_key, pr_type=t)
        if self.model.get(who) != key or who not in self.model:
            assert status == ScsiStatus.RESERVATION_CONFLICT
            return
        if status != ScsiStatus.GOOD:
            return  # sa_key 0 / unknown key: refused, nothing changed
        self.generation += 1
        if all_reg and sa_key == 0:
            self.model = {who: key}
        else:
            # the holder preempting itself keeps its registration (SPC-4 5.13.11.2.4.3);
            # a PREEMPT that only removes registrations removes the sender's own too
            # when it names the sender's key (5.13.11.2.5)
            keep = who if holder_key == sa_key and not all_reg else None
            for i in [i for i, k in self.model.items() if k == sa_key and i != keep]:
                del self.model[i]
        assert holder_key is None or state.type is not None

    @invariant()
    def keys_match_model(self) -> None:
        gen, keys = C.parse_pr_in_read_keys(self.lu.reservations.pr_in(PrInAction.READ_KEYS, 8192))
        assert sorted(keys) == sorted(self.model.values())
        assert gen == self.generation

    @invariant()
    def one_holder(self) -> None:
        st_ = self.lu.reservations
        if st_.type is None:
            assert st_.holder is None
        elif st_.type.all_registrants:
            assert st_.holder is None and st_.registrations
        else:
            holders = [r for r in st_.registrations if r.nexus_key == st_.holder]
            assert len(holders) == 1


PrMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestPrMachine = PrMachine.TestCase
