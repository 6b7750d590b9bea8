"""The target's connection (after login) and session state machines as tables, and nothing else.

Theory of operation: like ``core/login/states.py`` (h11's ``_state.py``), this module holds
no behaviour.  Each machine is a table ``{(state, input): Transition(action, next_state,
label)}``; ``label`` is the RFC 7143 transition name, each input's value paraphrases the
event the RFC gives for the *target* side, and a pair missing from a table is a protocol
error by construction: :func:`step` raises :class:`ProtocolError` naming state, input and
section.

* ``CONNECTION_TRANSITIONS``: one connection from full feature phase on (S5 LOGGED_IN,
  entered by T5 of the login table) through logout or failure.  S1 FREE and S8
  CLEANUP_WAIT are where it ends: leaving S8 is the cleanup diagram's business (M1..M4,
  RFC 7143 8.2), and leaving S1 (T3) is the login table's.  T14 is absent on purpose: the
  RFC makes it Illegal for a target (it is the initiator getting an Async logout request
  while in logout).
* ``SESSION_TRANSITIONS``: the target session, Q1 FREE .. Q5 IN_CONTINUE, with N1-N3 and
  N5-N11.  N4 (continuation succeeded, Q4 -> Q3) belongs to the initiator's diagram; the
  target goes through Q5 and N10 instead.

Verification (what was checked against what; prose here is paraphrase, never the RFC's):

* Section numbers.  RFC 7143 8 is "State Transitions", 8.1 "Standard Connection State
  Diagrams", and the T-transition descriptions are **8.1.2**, not 8.1.3 (a copy of the RFC
  7143 text on 123dok.net; RFC 3720 has the same section as 7.1.2, withme2020.com
  CH-07-01-02-00).  The S-state names are the state-description section (RFC 3720 7.1,
  tech-invite/harryp copies; 8.1.1 in RFC 7143 by the same renumbering).  RFC 3720 7.2 is
  the cleanup diagram (R1 CLEANUP_WAIT = S8, R3 FREE = S1) and 7.3 the session state
  diagrams (withme2020.com CH-07-02-00-00 and CH-05-03-05-00; illumos' initiator quotes
  "7.3.1 Session State Diagram for an Initiator").  **Unverified:** that RFC 7143 numbers
  these 8.2 and 8.3 (inferred from the 7 -> 8 shift verified for 8.1/8.1.2 only), and the
  sub-section numbers of the two target diagrams.
* Connection states and edges.  S1 FREE, S5 LOGGED_IN, S6 IN_LOGOUT, S7 LOGOUT_REQUESTED,
  S8 CLEANUP_WAIT, and the edges S5-T8->S1, S5-T9->S6, S5-T11->S7, S7-T10->S6,
  S7-T12->S7, S6-T13->S1, S5-T15->S8, S7-T16->S8, S6-T17->S8, S7-T18->S1: the RFC's
  initiator diagram as copied in FreeBSD's ``iscontrol/fsm.c``, and illumos'
  ``idm_conn_sm.c`` (one machine for both roles, each case labelled T8..T18), which uses
  the same edges on its target side.  The RFC's *target* diagram itself was not seen.
* Connection events (target side).  T15/T16 and T17's first case: RFC 7143 text quoted on
  cnblogs.com (longchang, "iscsi target CLEANUP_WAIT").  T8, T9/T10, T11/T12, T13, T18:
  **not seen in RFC text**; paraphrased from illumos' target-side events
  (``CE_LOGOUT_SESSION_SUCCESS`` for T8/T13/T18, Logout Request received for T9/T10, Async
  "Request Logout" sent for T11/T12, Logout Response success sent for T13).  T17 for a
  transport failure while in logout (``(S6, TRANSPORT_FAILED)``) is illumos' behaviour;
  that the RFC lists it under T17 is **unverified**.  T14 being Illegal for the target is
  **inferred** (illumos handles it only on receipt of an Async message, i.e. initiator
  side).
* Session states and edges.  Q1..Q5 with N1, N2, N3, N5, N6, N7, N8, N9, N10, N11 on the
  target and no N4: illumos' target ``iscsit_sess.c`` (cases labelled N1..N11) and
  Delphix's ``ServerSessionState`` (the RFC target diagram redrawn, with a transition
  matrix and descriptions).  The RFC 7143 session text itself was **not seen**.  A
  reinstatement while Q3 LOGGED_IN ending the session under N3 follows both peers; the
  RFC's own N3 wording is **unverified** on that point.

``tests/target/test_target_states.py`` sweeps both tables.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from iscsi_conformance.core.login.states import Transition
from iscsi_conformance.errors import ProtocolError

#: Where each machine is described (see the module docstring for what is verified).
CONNECTION_SECTION = "RFC 7143 8.1.2"
SESSION_SECTION = "RFC 7143 8.3"

# --------------------------------------------------------------------------- connection


class ConnectionState(enum.Enum):
    """Target connection states from full feature phase on (RFC 7143 8.1.1 names)."""

    S1_FREE = "S1"
    S5_LOGGED_IN = "S5"
    S6_IN_LOGOUT = "S6"
    S7_LOGOUT_REQUESTED = "S7"
    S8_CLEANUP_WAIT = "S8"


class ConnectionInput(enum.Enum):
    """What happened to the target's connection (target side of RFC 7143 8.1.2)."""

    SESSION_CLOSED_ELSEWHERE = (
        "a success Logout Response to a session-close Logout went out on another connection"
    )
    REINSTATED = "a connection or session reinstatement replacing this one succeeded"
    LOGOUT_RECEIVED = "a Logout Request for this connection arrived"
    DECOMMISSION = "the target wants the connection gone: Async 'Request Logout' sent"
    LOGOUT_SUCCEEDED = "the Logout was processed: Logout Response with success sent"
    LOGOUT_FAILED = "processing the Logout failed: Logout Response with non-zero status sent"
    TRANSPORT_FAILED = (
        "transport timeout, reset or disconnect, a failed reinstatement, or an emergency "
        "cleanup announced with Async 'Drop connection' / 'Drop all connections'"
    )


class ConnectionAction(enum.Enum):
    """Target side effects of a connection transition."""

    CLOSE = "close the transport connection"
    BEGIN_LOGOUT = "stop accepting new commands on the connection, process the Logout"
    REQUEST_LOGOUT = "send an Async Message asking the initiator to log out"
    CLOSE_AFTER_RESPONSE = "close the transport once the Logout Response is sent"
    AWAIT_CLEANUP = "keep the tasks for recovery, start the connection state timeout"


_C = ConnectionState
_CI = ConnectionInput
_CA = ConnectionAction

CONNECTION_TRANSITIONS: dict[tuple[ConnectionState, ConnectionInput], Transition] = {
    # S5 LOGGED_IN
    (_C.S5_LOGGED_IN, _CI.SESSION_CLOSED_ELSEWHERE): Transition(_CA.CLOSE, _C.S1_FREE, "T8"),
    (_C.S5_LOGGED_IN, _CI.REINSTATED): Transition(_CA.CLOSE, _C.S1_FREE, "T8"),
    (_C.S5_LOGGED_IN, _CI.LOGOUT_RECEIVED): Transition(_CA.BEGIN_LOGOUT, _C.S6_IN_LOGOUT, "T9"),
    (_C.S5_LOGGED_IN, _CI.DECOMMISSION): Transition(
        _CA.REQUEST_LOGOUT, _C.S7_LOGOUT_REQUESTED, "T11"
    ),
    (_C.S5_LOGGED_IN, _CI.TRANSPORT_FAILED): Transition(
        _CA.AWAIT_CLEANUP, _C.S8_CLEANUP_WAIT, "T15"
    ),
    # S6 IN_LOGOUT
    (_C.S6_IN_LOGOUT, _CI.LOGOUT_SUCCEEDED): Transition(
        _CA.CLOSE_AFTER_RESPONSE, _C.S1_FREE, "T13"
    ),
    (_C.S6_IN_LOGOUT, _CI.SESSION_CLOSED_ELSEWHERE): Transition(_CA.CLOSE, _C.S1_FREE, "T13"),
    (_C.S6_IN_LOGOUT, _CI.REINSTATED): Transition(_CA.CLOSE, _C.S1_FREE, "T13"),
    (_C.S6_IN_LOGOUT, _CI.LOGOUT_FAILED): Transition(_CA.AWAIT_CLEANUP, _C.S8_CLEANUP_WAIT, "T17"),
    (_C.S6_IN_LOGOUT, _CI.TRANSPORT_FAILED): Transition(
        _CA.AWAIT_CLEANUP, _C.S8_CLEANUP_WAIT, "T17"
    ),
    # S7 LOGOUT_REQUESTED
    (_C.S7_LOGOUT_REQUESTED, _CI.LOGOUT_RECEIVED): Transition(
        _CA.BEGIN_LOGOUT, _C.S6_IN_LOGOUT, "T10"
    ),
    (_C.S7_LOGOUT_REQUESTED, _CI.DECOMMISSION): Transition(
        _CA.REQUEST_LOGOUT, _C.S7_LOGOUT_REQUESTED, "T12"
    ),
    (_C.S7_LOGOUT_REQUESTED, _CI.TRANSPORT_FAILED): Transition(
        _CA.AWAIT_CLEANUP, _C.S8_CLEANUP_WAIT, "T16"
    ),
    (_C.S7_LOGOUT_REQUESTED, _CI.SESSION_CLOSED_ELSEWHERE): Transition(
        _CA.CLOSE, _C.S1_FREE, "T18"
    ),
    (_C.S7_LOGOUT_REQUESTED, _CI.REINSTATED): Transition(_CA.CLOSE, _C.S1_FREE, "T18"),
}

# --------------------------------------------------------------------------- session


class SessionState(enum.Enum):
    """Target session states (RFC 7143 8.3, target diagram)."""

    Q1_FREE = "Q1"
    Q2_ACTIVE = "Q2"
    Q3_LOGGED_IN = "Q3"
    Q4_FAILED = "Q4"
    Q5_IN_CONTINUE = "Q5"


class SessionInput(enum.Enum):
    """What happened to the target's session (target side of the N-transitions)."""

    FIRST_CONNECTION_IN_LOGIN = "the session's first connection entered IN_LOGIN"
    CONNECTION_LOGGED_IN = "a connection of the session reached LOGGED_IN"
    LEADING_LOGIN_FAILED = "the login on the leading connection failed"
    SESSION_CLOSED = "the session was closed gracefully (session closure)"
    SESSION_FAILED = "the last working connection dropped abnormally; tasks wait for recovery"
    SESSION_TIMEOUT = "the session state timeout expired"
    REINSTATED = "a session reinstatement replaced this session"
    CONTINUATION_STARTED = "a login to continue the failed session began"
    CONTINUATION_FAILED = "the last attempt to continue the session failed"
    CONTINUATION_SUCCEEDED = "an attempt to continue the session succeeded"


class SessionAction(enum.Enum):
    """Target side effects of a session transition."""

    HOLD = "hold the new session for its leading login"
    ENTER_FULL_FEATURE = "the session enters full feature phase"
    DISCARD = "free the session: its tasks, TSIH and state"
    AWAIT_RECOVERY = "keep the tasks, run the session timeout"
    CONTINUE = "let the continuation login run, session timeout still running"
    RESUME = "stop the session timeout, the session is in full feature phase again"


_Q = SessionState
_QI = SessionInput
_QA = SessionAction

SESSION_TRANSITIONS: dict[tuple[SessionState, SessionInput], Transition] = {
    (_Q.Q1_FREE, _QI.FIRST_CONNECTION_IN_LOGIN): Transition(_QA.HOLD, _Q.Q2_ACTIVE, "N1"),
    (_Q.Q2_ACTIVE, _QI.CONNECTION_LOGGED_IN): Transition(
        _QA.ENTER_FULL_FEATURE, _Q.Q3_LOGGED_IN, "N2"
    ),
    (_Q.Q2_ACTIVE, _QI.LEADING_LOGIN_FAILED): Transition(_QA.DISCARD, _Q.Q1_FREE, "N9"),
    (_Q.Q3_LOGGED_IN, _QI.SESSION_CLOSED): Transition(_QA.DISCARD, _Q.Q1_FREE, "N3"),
    (_Q.Q3_LOGGED_IN, _QI.REINSTATED): Transition(_QA.DISCARD, _Q.Q1_FREE, "N3"),
    (_Q.Q3_LOGGED_IN, _QI.SESSION_FAILED): Transition(_QA.AWAIT_RECOVERY, _Q.Q4_FAILED, "N5"),
    (_Q.Q4_FAILED, _QI.SESSION_TIMEOUT): Transition(_QA.DISCARD, _Q.Q1_FREE, "N6"),
    (_Q.Q4_FAILED, _QI.REINSTATED): Transition(_QA.DISCARD, _Q.Q1_FREE, "N6"),
    (_Q.Q4_FAILED, _QI.CONTINUATION_STARTED): Transition(_QA.CONTINUE, _Q.Q5_IN_CONTINUE, "N7"),
    (_Q.Q5_IN_CONTINUE, _QI.CONTINUATION_FAILED): Transition(
        _QA.AWAIT_RECOVERY, _Q.Q4_FAILED, "N8"
    ),
    (_Q.Q5_IN_CONTINUE, _QI.CONTINUATION_SUCCEEDED): Transition(_QA.RESUME, _Q.Q3_LOGGED_IN, "N10"),
    (_Q.Q5_IN_CONTINUE, _QI.REINSTATED): Transition(_QA.DISCARD, _Q.Q1_FREE, "N11"),
}

# --------------------------------------------------------------------------- step

_SECTIONS: dict[type[enum.Enum], str] = {
    ConnectionState: CONNECTION_SECTION,
    SessionState: SESSION_SECTION,
}

_State = TypeVar("_State", bound=enum.Enum)
_Input = TypeVar("_Input", bound=enum.Enum)


def step(
    table: Mapping[tuple[_State, _Input], Transition], state: _State, inp: _Input
) -> Transition:
    """The entry for ``(state, inp)``; a pair not in ``table`` is a :class:`ProtocolError`."""
    try:
        return table[(state, inp)]
    except KeyError:
        section = _SECTIONS.get(type(state), "RFC 7143 8")
        raise ProtocolError(
            f"target {type(state).__name__} {state.name}: input {inp.name} "
            f"({inp.value}) has no transition in {section}",
            section=section,
        ) from None
