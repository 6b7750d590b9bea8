"""An iSCSI session on the target's side (RFC 7143 3.3, 4.4.3), sans-IO.

Theory of operation: a ``Session`` is what outlives one connection: its TSIH and ISID,
the I_T nexus (InitiatorName, ISID, target, portal group) that SCSI reservations key
on, the CmdSN window shared by all its connections (4.2.2.1: ExpCmdSN, MaxCmdSN =
ExpCmdSN + window - 1), the commands queued ahead of ExpCmdSN, its tasks and the
write data buffered for them (bounded), and its parameters: the outcome of the leading
login (``NegotiatedParameters``); a further connection's own parameters are its login's
outcome with the session-wide values of the session (``session_params``).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import TYPE_CHECKING, TypeVar

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.login import (
    LoginCompleted,
    Transition,
)
from iscsi_conformance.core.negotiation import NegotiatedParameters
from iscsi_conformance.core.serial import add_mod as sn_add
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.target.states import (
    CONNECTION_TRANSITIONS,
    SESSION_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    SessionInput,
    SessionState,
    step,
)

_S = TypeVar("_S", bound=enum.Enum)
_I = TypeVar("_I", bound=enum.Enum)

if TYPE_CHECKING:
    from iscsi_conformance.scsi.nexus import Nexus
    from iscsi_conformance.target.connection import Connection
    from iscsi_conformance.target.engine import TargetEngine, TargetState
    from iscsi_conformance.target.task import Task

#: Commands the initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1, 4.2.2.1).
DEFAULT_CMD_WINDOW = 128

#: Values that are the session's, whichever connection negotiated them: a further
#: connection's login may not change them (RFC 7143 13: "leading only" keys).
SESSION_WIDE = (
    "max_burst_length",
    "first_burst_length",
    "immediate_data",
    "initial_r2t",
    "max_outstanding_r2t",
    "error_recovery_level",
    "max_connections",
    "default_time2wait",
    "default_time2retain",
)


def session_params(ev: LoginCompleted, session: Session) -> NegotiatedParameters:
    """A connection's parameters: its own login's outcome, with the session-wide values
    of the session it joined."""
    if ev.leading:
        return ev.parameters
    sp = session.params
    return dataclasses.replace(ev.parameters, **{n: getattr(sp, n) for n in SESSION_WIDE})


class SessionType(enum.Enum):
    NORMAL = "Normal"
    DISCOVERY = "Discovery"


class Session:
    """An iSCSI session (RFC 7143 3.3): CmdSN window, tasks, connections."""

    def __init__(
        self,
        engine: TargetEngine,
        *,
        tsih: int,
        isid: int,
        initiator_name: str,
        target: TargetState | None,
        tpgt: int,
        session_type: SessionType,
        params: NegotiatedParameters,
        expcmdsn: int,
        window: int,
    ) -> None:
        self.engine = engine
        self.tsih = tsih
        self.isid = isid
        self.initiator_name = initiator_name
        self.target = target
        self.tpgt = tpgt
        self.session_type = session_type
        self.params = params
        self.expcmdsn = expcmdsn
        self.window = window
        self.connections: dict[int, Connection] = {}
        self.tasks: dict[int, Task] = {}
        self.pending: dict[int, tuple[Connection, P.PDU]] = {}  # cmdsn -> queued command
        self.aborted_cmdsns: set[int] = set()
        self.write_budget_used = 0
        self.closed = False
        self.nexus: Nexus | None = None
        self.initiator_alias: str | None = None
        if target is not None:
            self.nexus = engine.make_nexus(initiator_name, isid, target.config.name, tpgt)
            # RFC 7144 4.2: INQUIRY's iSCSI version descriptor follows this session's level.
            for lu in target.lus.values():
                tell = getattr(lu, "set_iscsi_protocol_level", None)
                if tell is not None:
                    tell(self.nexus, params.iscsi_protocol_level)
        #: Where the session is in RFC 7143 8.3's target diagram, and the N-labels taken.
        self.state = SessionState.Q1_FREE
        self.labels: list[str] = []
        #: ErrorRecoveryLevel 2 (RFC 7143 7.2.2, 11.5.1): finished tasks of a failed
        #: connection whose status was not acknowledged, waiting for TASK REASSIGN.
        self.orphans: dict[int, Task] = {}
        #: The session lost its last connection at ERL 2: kept until this time
        #: (Time2Wait + Time2Retain after the engine's first timer), None = not set yet.
        self.retaining = False
        self.retain_until: float | None = None

    def advance(self, inp: SessionInput) -> None:
        """Take the session table's transition for ``inp``. A move the table does not
        have is our bug: logged, never raised at the peer (robustness)."""
        self.state = _advance(SESSION_TRANSITIONS, self.state, inp, self.labels, self)

    @property
    def maxcmdsn(self) -> int:
        return sn_add(self.expcmdsn, self.window - 1)

    def release_budget(self, task: Task) -> None:
        self.write_budget_used -= task.budgeted
        task.budgeted = 0

    @property
    def target_name(self) -> str:
        return self.target.config.name if self.target else ""

    def __repr__(self) -> str:
        return (
            f"Session(tsih={self.tsih}, isid=0x{self.isid:012x}, initiator={self.initiator_name!r},"
            f" target={self.target_name!r}, type={self.session_type.value})"
        )


log = logging.getLogger("iscsi_conformance.target")


def _advance(
    table: dict[tuple[_S, _I], Transition], state: _S, inp: _I, labels: list[str], who: object
) -> _S:
    try:
        entry = step(table, state, inp)
    except ProtocolError as exc:
        log.error("%r: %s", who, exc)
        return state
    labels.append(entry.label)
    return entry.next_state  # type: ignore[return-value]  # the table's states are _S


def advance_connection(
    state: ConnectionState, inp: ConnectionInput, labels: list[str], who: object
) -> ConnectionState:
    """The connection table's move (RFC 7143 8.1.2, T8-T18); see ``Session.advance``."""
    return _advance(CONNECTION_TRANSITIONS, state, inp, labels, who)
