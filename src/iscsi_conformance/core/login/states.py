"""The login phase as two tables, one per role (RFC 7143 8.1, 6.3), and nothing else.

Theory of operation: this module holds no behaviour, the way h11 keeps its
``_state.py`` apart from the code that acts on it.  Each role's connection is a table
``{(state, input): Transition(action, next_state, label)}``.  States carry the names
of RFC 7143 8.1.1 (S1 FREE, S2 XPT_WAIT, S3 XPT_UP, S4 IN_LOGIN, S5 LOGGED_IN), with
IN_LOGIN split by login stage (the sub-steps of 6.3); labels are the transition
names of 8.1.2 (T1..T7) or the 6.3 rule that allows the step.  Inputs are classified
PDUs and transport events; the malformed shapes (T=1 with C=1, a CSG that is not the
current stage, a reserved NSG, ...) appear in no table, so they are errors by
construction, and ``TARGET_ERRORS`` says which Login status the target sends for
each (11.13.5).  The target also feeds its own decided answers (TX_*) back through
its table, so the state after a response is the table's decision too.

``tests/core/test_login_tables.py`` sweeps every (state, input) pair of both tables.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from iscsi_conformance.core.codes import LoginStage, LoginStatus

SECURITY = LoginStage.SECURITY_NEGOTIATION
OPERATIONAL = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
FULL_FEATURE = LoginStage.FULL_FEATURE_PHASE

#: RFC 7143 11.12.4: the only version defined.
VERSION = 0x00
#: RFC 7143 13.12: until declared otherwise, a login PDU carries at most 8192 bytes.
LOGIN_SEGMENT = 8192


class Transition(NamedTuple):
    """One table entry: what to do and where to go; ``label`` is the RFC's name."""

    action: enum.Enum
    next_state: enum.Enum
    label: str


# --------------------------------------------------------------------------- initiator


class InitiatorState(enum.Enum):
    """Initiator connection states (RFC 7143 8.1.1), IN_LOGIN split by stage."""

    S1_FREE = "S1"
    S2_XPT_WAIT = "S2"
    S4_IN_LOGIN_SECURITY = "S4/security"
    S4_IN_LOGIN_OPERATIONAL = "S4/operational"
    S5_LOGGED_IN = "S5"


class InitiatorInput(enum.Enum):
    """What happened to the initiator: transport events and classified responses."""

    CONNECT = "transport connect requested"
    CONNECTED_SECURITY = "transport up, login starts in the security stage"
    CONNECTED_OPERATIONAL = "transport up, login starts in the operational stage"
    TRANSPORT_FAILED = "transport connect failed"
    TRANSPORT_CLOSED = "transport closed"
    TIMEOUT = "login timed out"
    RX_PARTIAL = "response with C=1"
    RX_STAY = "response with T=0"
    RX_TRANSIT_OPERATIONAL = "response with T=1, NSG=1"
    RX_TRANSIT_FFP = "response with T=1, NSG=3"
    RX_REDIRECT = "response with status class 1"
    RX_FAILURE = "response with status class 2 or 3"
    # Malformed shapes: in no table, so always protocol errors.
    RX_T_AND_C = "response with T=1 and C=1"
    RX_UNREQUESTED_TRANSIT = "T=1 although our request had T=0"
    RX_STAGE_MISMATCH = "CSG differs from the stage of our request"
    RX_NSG_BEYOND_REQUEST = "NSG beyond the one we asked for"
    RX_BAD_NSG = "T=1 with NSG not forward or reserved"
    RX_BAD_VERSION = "Version-active outside our range"
    RX_WRONG_TASK = "ISID or ITT does not match our request"
    RX_UNEXPECTED = "a response when none was due, or not a Login Response"


class InitiatorAction(enum.Enum):
    """Initiator side effects."""

    NONE = "nothing"
    SEND_FIRST = "send the first Login Request of the stage"
    SEND_EMPTY = "acknowledge a partial response with an empty request"
    CONTINUE = "process keys, send the next request in the same stage"
    ENTER_OPERATIONAL = "process keys, start the operational stage"
    COMPLETE = "process keys, enter full feature phase"
    REDIRECT = "report the redirection"
    FAIL = "report the failure"


_I = InitiatorState
_II = InitiatorInput
_IA = InitiatorAction

INITIATOR_TRANSITIONS: dict[tuple[InitiatorState, InitiatorInput], Transition] = {
    (_I.S1_FREE, _II.CONNECT): Transition(_IA.NONE, _I.S2_XPT_WAIT, "T1"),
    (_I.S2_XPT_WAIT, _II.TRANSPORT_FAILED): Transition(_IA.FAIL, _I.S1_FREE, "T2"),
    (_I.S2_XPT_WAIT, _II.CONNECTED_SECURITY): Transition(
        _IA.SEND_FIRST, _I.S4_IN_LOGIN_SECURITY, "T4"
    ),
    (_I.S2_XPT_WAIT, _II.CONNECTED_OPERATIONAL): Transition(
        _IA.SEND_FIRST, _I.S4_IN_LOGIN_OPERATIONAL, "T4"
    ),
}
for _stage in (_I.S4_IN_LOGIN_SECURITY, _I.S4_IN_LOGIN_OPERATIONAL):
    INITIATOR_TRANSITIONS.update(
        {
            (_stage, _II.RX_PARTIAL): Transition(_IA.SEND_EMPTY, _stage, "6.3 C bit"),
            (_stage, _II.RX_STAY): Transition(_IA.CONTINUE, _stage, "6.3 stay in stage"),
            (_stage, _II.RX_TRANSIT_FFP): Transition(_IA.COMPLETE, _I.S5_LOGGED_IN, "T5"),
            (_stage, _II.RX_REDIRECT): Transition(_IA.REDIRECT, _I.S1_FREE, "T7"),
            (_stage, _II.RX_FAILURE): Transition(_IA.FAIL, _I.S1_FREE, "T7"),
            (_stage, _II.TRANSPORT_CLOSED): Transition(_IA.FAIL, _I.S1_FREE, "T7"),
            (_stage, _II.TIMEOUT): Transition(_IA.FAIL, _I.S1_FREE, "T7"),
        }
    )
INITIATOR_TRANSITIONS[(_I.S4_IN_LOGIN_SECURITY, _II.RX_TRANSIT_OPERATIONAL)] = Transition(
    _IA.ENTER_OPERATIONAL, _I.S4_IN_LOGIN_OPERATIONAL, "6.3 security -> operational"
)

INITIATOR_STAGE = {
    _I.S4_IN_LOGIN_SECURITY: SECURITY,
    _I.S4_IN_LOGIN_OPERATIONAL: OPERATIONAL,
}


class TargetState(enum.Enum):
    """Target connection states (RFC 7143 8.1.1), IN_LOGIN split by stage."""

    S1_FREE = "S1"
    S3_XPT_UP = "S3"
    S4_IN_LOGIN_SECURITY = "S4/security"
    S4_IN_LOGIN_OPERATIONAL = "S4/operational"
    S5_LOGGED_IN = "S5"


class TargetInput(enum.Enum):
    """Classified requests (RX_*), our decided responses (TX_*), transport events."""

    TRANSPORT_CLOSED = "transport closed"
    TIMEOUT = "login timed out"
    RX_FIRST_SECURITY = "first request, CSG=0"
    RX_FIRST_OPERATIONAL = "first request, CSG=1"
    RX_PARTIAL = "request with C=1"
    RX_STAY = "request with T=0"
    RX_TRANSIT_OPERATIONAL = "request with T=1, NSG=1"
    RX_TRANSIT_FFP = "request with T=1, NSG=3"
    # Malformed shapes: in no table, so always answered with a Login status.
    RX_T_AND_C = "request with T=1 and C=1"
    RX_STAGE_MISMATCH = "CSG differs from the current stage"
    RX_BAD_STAGE = "CSG is full feature phase or reserved"
    RX_BAD_NSG = "T=1 with NSG not forward or reserved"
    RX_NOT_LOGIN = "not a Login Request"
    TX_STAY = "respond T=0"
    TX_TRANSIT_OPERATIONAL = "respond T=1, NSG=1"
    TX_FINAL = "final response, status 0"
    TX_REJECT = "response with a non-zero status"


class TargetAction(enum.Enum):
    """Target side effects."""

    NONE = "nothing"
    BEGIN = "check the first request, then handle it in its stage"
    ACK_PARTIAL = "answer a C=1 request with an empty response"
    NEGOTIATE = "process keys and decide the response"


_T = TargetState
_TI = TargetInput
_TA = TargetAction

TARGET_TRANSITIONS: dict[tuple[TargetState, TargetInput], Transition] = {
    (_T.S3_XPT_UP, _TI.RX_FIRST_SECURITY): Transition(_TA.BEGIN, _T.S4_IN_LOGIN_SECURITY, "T4"),
    (_T.S3_XPT_UP, _TI.RX_FIRST_OPERATIONAL): Transition(
        _TA.BEGIN, _T.S4_IN_LOGIN_OPERATIONAL, "T4"
    ),
    (_T.S3_XPT_UP, _TI.RX_PARTIAL): Transition(_TA.ACK_PARTIAL, _T.S3_XPT_UP, "6.3 C bit"),
    (_T.S3_XPT_UP, _TI.TX_STAY): Transition(_TA.NONE, _T.S3_XPT_UP, "6.3 C bit"),
    (_T.S3_XPT_UP, _TI.TRANSPORT_CLOSED): Transition(_TA.NONE, _T.S1_FREE, "T6"),
    (_T.S3_XPT_UP, _TI.TIMEOUT): Transition(_TA.NONE, _T.S1_FREE, "T6"),
    (_T.S3_XPT_UP, _TI.TX_REJECT): Transition(_TA.NONE, _T.S1_FREE, "T7"),
}
for _tstage in (_T.S4_IN_LOGIN_SECURITY, _T.S4_IN_LOGIN_OPERATIONAL):
    TARGET_TRANSITIONS.update(
        {
            (_tstage, _TI.RX_PARTIAL): Transition(_TA.ACK_PARTIAL, _tstage, "6.3 C bit"),
            (_tstage, _TI.RX_STAY): Transition(_TA.NEGOTIATE, _tstage, "6.3 stay"),
            (_tstage, _TI.RX_TRANSIT_FFP): Transition(_TA.NEGOTIATE, _tstage, "6.3 transit"),
            (_tstage, _TI.TX_STAY): Transition(_TA.NONE, _tstage, "6.3 stay"),
            (_tstage, _TI.TX_FINAL): Transition(_TA.NONE, _T.S5_LOGGED_IN, "T5"),
            (_tstage, _TI.TX_REJECT): Transition(_TA.NONE, _T.S1_FREE, "T7"),
            (_tstage, _TI.TRANSPORT_CLOSED): Transition(_TA.NONE, _T.S1_FREE, "T7"),
            (_tstage, _TI.TIMEOUT): Transition(_TA.NONE, _T.S1_FREE, "T7"),
        }
    )
TARGET_TRANSITIONS[(_T.S4_IN_LOGIN_SECURITY, _TI.RX_TRANSIT_OPERATIONAL)] = Transition(
    _TA.NEGOTIATE, _T.S4_IN_LOGIN_SECURITY, "6.3 transit"
)
TARGET_TRANSITIONS[(_T.S4_IN_LOGIN_SECURITY, _TI.TX_TRANSIT_OPERATIONAL)] = Transition(
    _TA.NONE, _T.S4_IN_LOGIN_OPERATIONAL, "6.3 security -> operational"
)

TARGET_STAGE = {
    _T.S4_IN_LOGIN_SECURITY: SECURITY,
    _T.S4_IN_LOGIN_OPERATIONAL: OPERATIONAL,
}

# What goes on the wire for an input missing from the table (RFC 7143 11.13.5).
TARGET_ERRORS: dict[TargetInput, tuple[LoginStatus, str]] = {
    _TI.RX_NOT_LOGIN: (LoginStatus.INVALID_DURING_LOGIN, "RFC 7143 11.13.5"),
    _TI.RX_T_AND_C: (LoginStatus.INITIATOR_ERROR, "RFC 7143 11.12.2"),
    _TI.RX_STAGE_MISMATCH: (LoginStatus.INITIATOR_ERROR, "RFC 7143 6.3"),
    _TI.RX_BAD_STAGE: (LoginStatus.INITIATOR_ERROR, "RFC 7143 11.12.3"),
    _TI.RX_BAD_NSG: (LoginStatus.INITIATOR_ERROR, "RFC 7143 6.3, 11.12.3"),
}
