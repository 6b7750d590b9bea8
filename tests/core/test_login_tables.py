"""core.login transition tables: swept state by input, and driven by Hypothesis."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_login_support import ALICE, TARGET, TGT, Portal, initiator, rng_from, through_wire

from iscsi_conformance.core.chap import ChapAlgorithm, ChapClient
from iscsi_conformance.core.codes import LoginStatus
from iscsi_conformance.core.login import (
    INITIATOR_TRANSITIONS,
    TARGET_ERRORS,
    TARGET_TRANSITIONS,
    ChapTargetAuth,
    InitiatorInput,
    InitiatorState,
    LoginCompleted,
    LoginFailed,
    TargetInput,
    TargetNode,
    TargetState,
)
from iscsi_conformance.core.pdu import LoginRequest
from iscsi_conformance.errors import LoginError
from iscsi_conformance.fuzz import keys as fk

LABELS = {f"T{n}" for n in range(1, 8)}


def test_labels_are_rfc_names() -> None:
    for table in (INITIATOR_TRANSITIONS, TARGET_TRANSITIONS):
        for entry in table.values():
            assert entry.label in LABELS or entry.label.startswith("6.3"), entry


@pytest.mark.parametrize(
    ("state", "inp"),
    list(itertools.product(InitiatorState, InitiatorInput)),
    ids=lambda x: x.name,
)
def test_initiator_sweep(state: InitiatorState, inp: InitiatorInput) -> None:
    i = initiator()
    i.state = state
    entry = INITIATOR_TRANSITIONS.get((state, inp))
    if entry is None:
        events = i._step(inp, None)
        assert len(events) == 1 and isinstance(events[0], LoginFailed)
        assert isinstance(events[0].error, LoginError) and events[0].status is None
        assert i.state is InitiatorState.S1_FREE
    else:
        assert entry.next_state in InitiatorState
        if entry.label == "T5":
            assert entry.next_state is InitiatorState.S5_LOGGED_IN
        if entry.label == "T7":
            assert entry.next_state is InitiatorState.S1_FREE


@pytest.mark.parametrize(
    ("state", "inp"), list(itertools.product(TargetState, TargetInput)), ids=lambda x: x.name
)
def test_target_sweep(state: TargetState, inp: TargetInput) -> None:
    t = Portal().target()
    t.state = state
    entry = TARGET_TRANSITIONS.get((state, inp))
    if entry is not None:
        assert entry.next_state in TargetState
        return
    events = t._dispatch(inp, LoginRequest(csg=0, itt=9))
    assert len(events) == 1 and isinstance(events[0], LoginFailed)
    assert isinstance(events[0].error, LoginError)
    sent = t.data_to_send()
    if state in (
        TargetState.S3_XPT_UP,
        TargetState.S4_IN_LOGIN_SECURITY,
        TargetState.S4_IN_LOGIN_OPERATIONAL,
    ):
        want = TARGET_ERRORS.get(inp, (LoginStatus.INITIATOR_ERROR, ""))[0]
        assert [r.status for r in sent] == [want] and sent[0].itt == 9
        assert t.state is TargetState.S1_FREE
    else:
        assert sent == []


# --------------------------------------------------------------------------- stateful

chap_configs = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(list(ChapAlgorithm)), st.booleans()),
)


class LoginMachine(RuleBasedStateMachine):
    """Deliver PDUs one at a time between the two roles; every legal configuration
    must reach full feature phase on both sides with the same outcome."""

    @initialize(
        ikeys=fk.local_values(),
        tkeys=fk.local_values(),
        session_type=st.sampled_from(["Normal", "Discovery"]),
        chap=chap_configs,
        segment=st.sampled_from([64, 512, 8192]),
    )
    def setup(
        self,
        ikeys: dict[str, str],
        tkeys: dict[str, str],
        session_type: str,
        chap: Any,
        segment: int,
    ) -> None:
        auth = None
        client = None
        if chap is not None:
            alg, mutual = chap
            auth = ChapTargetAuth(
                secrets={ALICE.name: ALICE.secret}, credentials=TGT, algorithms=(alg,)
            )
            client = ChapClient(
                ALICE, algorithms=[alg], target=TGT if mutual else None, rng=rng_from(77)
            )
        portal = Portal(node=TargetNode(TARGET, chap=auth, keys=tkeys), discovery_chap=auth)
        self.i = initiator(
            keys=ikeys,
            session_type=session_type,
            chap=client,
            target_name=TARGET if session_type == "Normal" else None,
            max_segment=segment,
        )
        self.t = portal.target()
        self.to_target = self.i.start()
        self.to_initiator: list[Any] = []
        self.events: list[Any] = []

    @precondition(lambda self: bool(self.to_target))
    @rule()
    def deliver_request(self) -> None:
        self.events += self.t.receive_pdu(through_wire(self.to_target.pop(0)))
        self.to_initiator += self.t.data_to_send()

    @precondition(lambda self: bool(self.to_initiator))
    @rule()
    def deliver_response(self) -> None:
        self.events += self.i.receive_pdu(through_wire(self.to_initiator.pop(0)))
        self.to_target += self.i.data_to_send()

    @precondition(lambda self: not (self.to_target or self.to_initiator))
    @rule()
    def idle(self) -> None:
        """The login is over; nothing left to deliver."""

    @invariant()
    def no_failure(self) -> None:
        assert not any(isinstance(e, LoginFailed) for e in self.events), self.events

    @invariant()
    def history_follows_tables(self) -> None:
        for state, inp, entry in self.i.history:
            assert INITIATOR_TRANSITIONS[(state, inp)] == entry
        for state, inp, entry in self.t.history:
            assert TARGET_TRANSITIONS[(state, inp)] == entry

    @invariant()
    def quiet_means_logged_in(self) -> None:
        if self.to_target or self.to_initiator:
            return
        assert self.i.state is InitiatorState.S5_LOGGED_IN
        assert self.t.state is TargetState.S5_LOGGED_IN
        done = [e for e in self.events if isinstance(e, LoginCompleted)]
        assert len(done) == 2
        a, b = (d.parameters for d in done)
        assert a.header_digest == b.header_digest and a.max_burst_length == b.max_burst_length
        assert a.first_burst_length == b.first_burst_length <= a.max_burst_length
        assert a.immediate_data == b.immediate_data and a.initial_r2t == b.initial_r2t


TestLoginMachine = LoginMachine.TestCase
TestLoginMachine.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
