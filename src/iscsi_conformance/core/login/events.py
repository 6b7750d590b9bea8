"""What a login tells its owner (RFC 7143 6.3, 8.1.2): the events of both roles.

The owner acts on them: on ``LoginCompleted`` it moves the connection to full-feature
phase, on ``LoginFailed`` and ``LoginRedirected`` it closes the connection once the
last response is out, and a target closes the old session or connection on
``SessionReinstated`` (6.3.5) and ``ConnectionReinstated`` (6.3.4)."""

from __future__ import annotations

from dataclasses import dataclass

from iscsi_conformance.core.negotiation import NegotiatedParameters
from iscsi_conformance.errors import (
    ProtocolError,
)


@dataclass(frozen=True)
class LoginCompleted:
    """The final Login Response with status 0 was sent / received (T5)."""

    parameters: NegotiatedParameters
    tsih: int
    isid: int
    cid: int
    initiator_name: str
    target_name: str | None
    session_type: str
    leading: bool
    statsn: int
    cmdsn: int
    expcmdsn: int
    maxcmdsn: int
    authenticated_as: str | None = None


@dataclass(frozen=True)
class LoginFailed:
    """The login ended without success (T7); the connection is to be closed.

    ``status`` is the Login status sent or received (None when the initiator itself
    detected a protocol error and just drops the connection); ``error`` the rule
    broken, if any.
    """

    status: int | None
    reason: str
    error: ProtocolError | None = None


@dataclass(frozen=True)
class LoginRedirected:
    """The target redirected the initiator (status class 1, RFC 7143 11.13.5)."""

    address: str
    permanent: bool
    status: int


@dataclass(frozen=True)
class SessionReinstated:
    """A new leading login reuses the ISID and InitiatorName of a live session; the
    target must close that old session (RFC 7143 6.3.5)."""

    initiator_name: str
    isid: int
    old_tsih: int


@dataclass(frozen=True)
class ConnectionReinstated:
    """A login names the CID of a live connection of the session; the old connection
    is to be logged out (RFC 7143 6.3.4)."""

    tsih: int
    cid: int


Event = LoginCompleted | LoginFailed | LoginRedirected | SessionReinstated | ConnectionReinstated
