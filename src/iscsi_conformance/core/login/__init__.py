"""The login phase (RFC 7143 6.3, 8.1, 11.12, 11.13) for both roles, sans-IO.

Theory of operation: each role is a state machine written as a table (``states``:
the tables and nothing else, the way h11 keeps ``_state.py``); ``initiator`` and
``target`` are the machines that walk them; ``events`` is what a login tells its
owner; ``isid`` builds and reads the ISID.

Both machines are driven the same way: ``receive_pdu(pdu) -> list[event]`` and
``data_to_send() -> list[PDU]``.  Events: :class:`LoginCompleted`,
:class:`LoginFailed`, :class:`LoginRedirected`, and on the target
:class:`SessionReinstated` / :class:`ConnectionReinstated` (the owner must close the
old session or connection, RFC 7143 6.3.4-6.3.5).  Key negotiation is delegated to
:mod:`..negotiation`, authentication to :mod:`..chap`.  The target's policy (which
targets exist, ACLs, CHAP per target or ACL, redirection, the session table) reaches
it as the callbacks of :class:`TargetLoginConfig`.

For conformance tests the initiator takes ``pairs_hook`` and ``request_hook`` to
produce illegal requests (repeat keys, skip security, T=1 with NSG < CSG, ...).
"""

from iscsi_conformance.core.login.events import (
    ConnectionReinstated,
    Event,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    SessionReinstated,
)
from iscsi_conformance.core.login.initiator import InitiatorLogin
from iscsi_conformance.core.login.isid import IsidType, en_isid, isid_type, make_isid, random_isid
from iscsi_conformance.core.login.states import (
    FULL_FEATURE,
    INITIATOR_TRANSITIONS,
    LOGIN_SEGMENT,
    OPERATIONAL,
    SECURITY,
    TARGET_ERRORS,
    TARGET_TRANSITIONS,
    VERSION,
    InitiatorAction,
    InitiatorInput,
    InitiatorState,
    TargetAction,
    TargetInput,
    TargetState,
    Transition,
)
from iscsi_conformance.core.login.target import (
    ChapTargetAuth,
    ExistingSession,
    TargetLogin,
    TargetLoginConfig,
    TargetNode,
)

__all__ = [
    "FULL_FEATURE",
    "INITIATOR_TRANSITIONS",
    "LOGIN_SEGMENT",
    "OPERATIONAL",
    "SECURITY",
    "TARGET_ERRORS",
    "TARGET_TRANSITIONS",
    "VERSION",
    "ChapTargetAuth",
    "ConnectionReinstated",
    "Event",
    "ExistingSession",
    "InitiatorAction",
    "InitiatorInput",
    "InitiatorLogin",
    "InitiatorState",
    "IsidType",
    "LoginCompleted",
    "LoginFailed",
    "LoginRedirected",
    "SessionReinstated",
    "TargetAction",
    "TargetInput",
    "TargetLogin",
    "TargetLoginConfig",
    "TargetNode",
    "TargetState",
    "Transition",
    "en_isid",
    "isid_type",
    "make_isid",
    "random_isid",
]
