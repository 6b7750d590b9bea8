"""target.states: both tables swept against the RFC 7143 diagrams' target side."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping

import pytest

from iscsi_conformance.core.login import states as login_states
from iscsi_conformance.core.login.states import Transition
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.target.states import (
    CONNECTION_SECTION,
    CONNECTION_TRANSITIONS,
    SESSION_SECTION,
    SESSION_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    SessionInput,
    SessionState,
    step,
)

C = ConnectionState
Q = SessionState

# The target-side edges of the RFC diagrams, written out independently of the tables:
# label -> the (from, to) pairs it may name.  T14 (Illegal for a target) and N4 (initiator
# only) are deliberately absent.
CONNECTION_EDGES: dict[str, set[tuple[ConnectionState, ConnectionState]]] = {
    "T8": {(C.S5_LOGGED_IN, C.S1_FREE)},
    "T9": {(C.S5_LOGGED_IN, C.S6_IN_LOGOUT)},
    "T10": {(C.S7_LOGOUT_REQUESTED, C.S6_IN_LOGOUT)},
    "T11": {(C.S5_LOGGED_IN, C.S7_LOGOUT_REQUESTED)},
    "T12": {(C.S7_LOGOUT_REQUESTED, C.S7_LOGOUT_REQUESTED)},
    "T13": {(C.S6_IN_LOGOUT, C.S1_FREE)},
    "T15": {(C.S5_LOGGED_IN, C.S8_CLEANUP_WAIT)},
    "T16": {(C.S7_LOGOUT_REQUESTED, C.S8_CLEANUP_WAIT)},
    "T17": {(C.S6_IN_LOGOUT, C.S8_CLEANUP_WAIT)},
    "T18": {(C.S7_LOGOUT_REQUESTED, C.S1_FREE)},
}
SESSION_EDGES: dict[str, set[tuple[SessionState, SessionState]]] = {
    "N1": {(Q.Q1_FREE, Q.Q2_ACTIVE)},
    "N2": {(Q.Q2_ACTIVE, Q.Q3_LOGGED_IN)},
    "N3": {(Q.Q3_LOGGED_IN, Q.Q1_FREE)},
    "N5": {(Q.Q3_LOGGED_IN, Q.Q4_FAILED)},
    "N6": {(Q.Q4_FAILED, Q.Q1_FREE)},
    "N7": {(Q.Q4_FAILED, Q.Q5_IN_CONTINUE)},
    "N8": {(Q.Q5_IN_CONTINUE, Q.Q4_FAILED)},
    "N9": {(Q.Q2_ACTIVE, Q.Q1_FREE)},
    "N10": {(Q.Q5_IN_CONTINUE, Q.Q3_LOGGED_IN)},
    "N11": {(Q.Q5_IN_CONTINUE, Q.Q1_FREE)},
}

MACHINES = [
    pytest.param(
        CONNECTION_TRANSITIONS,
        ConnectionState,
        ConnectionInput,
        CONNECTION_EDGES,
        C.S5_LOGGED_IN,
        C.S1_FREE,
        CONNECTION_SECTION,
        id="connection",
    ),
    pytest.param(
        SESSION_TRANSITIONS,
        SessionState,
        SessionInput,
        SESSION_EDGES,
        Q.Q1_FREE,
        Q.Q1_FREE,
        SESSION_SECTION,
        id="session",
    ),
]
ARGS = "table,states,inputs,edges,start,free,section"

Table = Mapping[tuple[enum.Enum, enum.Enum], Transition]


def _reachable(table: Table, start: enum.Enum) -> set[enum.Enum]:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for (state, _), entry in table.items():
            if state is here and entry.next_state not in seen:
                seen.add(entry.next_state)
                todo.append(entry.next_state)
    return seen


@pytest.mark.parametrize(ARGS, MACHINES)
def test_every_state_reachable_from_start(
    table: Table,
    states: type[enum.Enum],
    inputs: type[enum.Enum],
    edges: dict[str, set[tuple[enum.Enum, enum.Enum]]],
    start: enum.Enum,
    free: enum.Enum,
    section: str,
) -> None:
    assert _reachable(table, start) == set(states)


@pytest.mark.parametrize(ARGS, MACHINES)
def test_labels_and_edges_are_the_rfc_target_side(
    table: Table,
    states: type[enum.Enum],
    inputs: type[enum.Enum],
    edges: dict[str, set[tuple[enum.Enum, enum.Enum]]],
    start: enum.Enum,
    free: enum.Enum,
    section: str,
) -> None:
    for (state, inp), entry in table.items():
        assert isinstance(state, states) and isinstance(inp, inputs)
        assert isinstance(entry.next_state, states)
        assert entry.label in edges, (state, inp, entry)
        assert (state, entry.next_state) in edges[entry.label], (state, inp, entry)
    # Every transition the RFC gives the target is in the table, at least once.
    used = {(e.label, s, e.next_state) for (s, _), e in table.items()}
    for label, pairs in edges.items():
        for a, b in pairs:
            assert (label, a, b) in used, label


def test_illegal_for_target_absent() -> None:
    labels = {e.label for e in CONNECTION_TRANSITIONS.values()}
    assert "T14" not in labels
    assert not labels & {f"T{n}" for n in range(1, 8)}  # the login table's
    assert "N4" not in {e.label for e in SESSION_TRANSITIONS.values()}


@pytest.mark.parametrize(ARGS, MACHINES)
def test_nothing_leaves_free_but_the_rfc(
    table: Table,
    states: type[enum.Enum],
    inputs: type[enum.Enum],
    edges: dict[str, set[tuple[enum.Enum, enum.Enum]]],
    start: enum.Enum,
    free: enum.Enum,
    section: str,
) -> None:
    out = {e.label for (s, _), e in table.items() if s is free}
    rfc = {label for label, pairs in edges.items() for a, _ in pairs if a is free}
    assert out == rfc


def test_free_exits() -> None:
    # Connection: leaving S1 is T3, the login table's; session: only N1.
    assert not [k for k in CONNECTION_TRANSITIONS if k[0] is C.S1_FREE]
    assert [e.label for (s, _), e in SESSION_TRANSITIONS.items() if s is Q.Q1_FREE] == ["N1"]


def test_connection_starts_where_login_ends() -> None:
    t5 = [e for e in login_states.TARGET_TRANSITIONS.values() if e.label == "T5"]
    assert t5 and {ConnectionState(e.next_state.value) for e in t5} == {C.S5_LOGGED_IN}


@pytest.mark.parametrize(ARGS, MACHINES)
def test_step_sweep(
    table: Table,
    states: type[enum.Enum],
    inputs: type[enum.Enum],
    edges: dict[str, set[tuple[enum.Enum, enum.Enum]]],
    start: enum.Enum,
    free: enum.Enum,
    section: str,
) -> None:
    for state, inp in itertools.product(states, inputs):
        entry = table.get((state, inp))
        if entry is not None:
            assert step(table, state, inp) is entry
            continue
        with pytest.raises(ProtocolError) as info:
            step(table, state, inp)
        err = info.value
        assert err.section == section
        text = str(err)
        assert section in text and state.name in text and inp.name in text


def test_every_input_is_used() -> None:
    assert {i for _, i in CONNECTION_TRANSITIONS} == set(ConnectionInput)
    assert {i for _, i in SESSION_TRANSITIONS} == set(SessionInput)
