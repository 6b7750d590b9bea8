"""Task management functions, target side (RFC 7143 11.5 / 11.6, RFC 7144, SAM-5 7).

Theory of operation: ``perform_tmf(conn, request)`` applies one function to the
engine's tasks and logical units and returns the Response code (RFC 7143 11.6.1)
plus an optional action to run *after* the response is queued (TARGET COLD RESET
drops every connection once it has answered, 11.5.1). Tasks execute synchronously
when their data is complete, so the tasks a TMF can find are those still waiting for
Data-Out or for their CmdSN; aborting one removes it and remembers its ITT so late
Data-Out for it is discarded quietly (4.2.3.3). Resets go to ``LogicalUnit.reset()``,
which raises the unit attentions (SAM-5 6.3).

The four functions RFC 7144 6.3 adds (QUERY TASK, QUERY TASK SET, I_T NEXUS RESET,
QUERY ASYNCHRONOUS EVENT) are carried out only on a session that negotiated
iSCSIProtocolLevel 2 (RFC 7144 4.1: that level MUST be negotiated to use them);
below it they are answered 'not supported', as a target of RFC 7143 alone would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import TmfFunction, TmfResponse
from iscsi_conformance.core.serial import le as sn_le
from iscsi_conformance.core.serial import lt as sn_lt
from iscsi_conformance.scsi.codes import ResetKind

if TYPE_CHECKING:
    from iscsi_conformance.scsi.device import LogicalUnit
    from iscsi_conformance.target.connection import Connection
    from iscsi_conformance.target.session import Session
    from iscsi_conformance.target.task import Task

_LUN_FUNCTIONS = {
    TmfFunction.ABORT_TASK,
    TmfFunction.ABORT_TASK_SET,
    TmfFunction.CLEAR_ACA,
    TmfFunction.CLEAR_TASK_SET,
    TmfFunction.LOGICAL_UNIT_RESET,
    TmfFunction.QUERY_TASK,
    TmfFunction.QUERY_TASK_SET,
    TmfFunction.QUERY_ASYNCHRONOUS_EVENT,
}

#: The functions of RFC 7144 6.3, usable once iSCSIProtocolLevel 2 is negotiated (4.1).
LEVEL2_FUNCTIONS = frozenset(
    {
        TmfFunction.QUERY_TASK,
        TmfFunction.QUERY_TASK_SET,
        TmfFunction.I_T_NEXUS_RESET,
        TmfFunction.QUERY_ASYNCHRONOUS_EVENT,
    }
)


def _reset_lu(lu: LogicalUnit | None, kind: ResetKind) -> None:
    fn = getattr(lu, "reset", None)
    if fn is not None:
        fn(kind)


def _queued_tmf(session: Session, itt: int) -> bool:
    """A Task Management request with this ITT waits for its CmdSN in the session."""
    return any(
        isinstance(pdu, P.TaskManagementRequest) and pdu.itt == itt
        for _conn, pdu in session.pending.values()
    )


def perform_tmf(
    conn: Connection, req: P.TaskManagementRequest
) -> tuple[int, Callable[[], None] | None]:
    """Carry out ``req``; return (response code, action after responding)."""
    session = conn.session
    assert session is not None and session.target is not None
    engine = conn.engine
    fn = req.function & 0x7F
    try:
        lun = P.field_to_lun(req.lun)
    except ValueError:  # an addressing method we never hand out: no such LU (SAM-5 4.7)
        lun = -1
    lus = session.target.lus_for(session.initiator_name)
    lu = lus.get(lun)

    if fn in LEVEL2_FUNCTIONS and session.params.iscsi_protocol_level < 2:
        # RFC 7144 4.1 / 7.1.1: without level 2 the session has not agreed to them.
        return TmfResponse.FUNCTION_NOT_SUPPORTED, None

    if fn in _LUN_FUNCTIONS and lu is None:
        return TmfResponse.LUN_DOES_NOT_EXIST, None

    def mine(t: Task) -> bool:
        return t.conn.session is session

    if fn == TmfFunction.ABORT_TASK:
        task = session.tasks.get(req.referenced_task_tag)
        if task is not None and task.lun == lun:
            engine.abort_tasks(lambda t: t is task)
            return TmfResponse.FUNCTION_COMPLETE, None
        # Not seen yet but inside the window: it counts as received and aborted, so
        # that when it arrives it is not executed (RFC 7143 11.5.1, 4.2.3.2).
        ref = req.refcmdsn
        if (
            req.referenced_task_tag != P._NONE_TAG
            and sn_le(session.expcmdsn, ref)
            and sn_le(ref, session.maxcmdsn)
            and not sn_lt(ref, session.expcmdsn)
            and ref not in session.pending
        ):
            session.aborted_cmdsns.add(ref)
            return TmfResponse.FUNCTION_COMPLETE, None
        return TmfResponse.TASK_DOES_NOT_EXIST, None

    if fn == TmfFunction.ABORT_TASK_SET:
        engine.abort_tasks(lambda t: mine(t) and t.lun == lun)
        return TmfResponse.FUNCTION_COMPLETE, None

    if fn == TmfFunction.CLEAR_TASK_SET:
        # Every initiator's tasks on the LU (SAM-5 7.4); others see a unit attention.
        engine.abort_tasks(lambda t: t.lu is lu)
        clear = getattr(lu, "clear_task_set", None)
        if clear is not None:
            clear(session.nexus)
        return TmfResponse.FUNCTION_COMPLETE, None

    if fn == TmfFunction.CLEAR_ACA:
        clear = getattr(lu, "clear_aca", None)
        if clear is not None:
            clear(session.nexus)
        return TmfResponse.FUNCTION_COMPLETE, None

    if fn == TmfFunction.LOGICAL_UNIT_RESET:
        engine.abort_tasks(lambda t: t.lu is lu)
        _reset_lu(lu, ResetKind.LOGICAL_UNIT_RESET)
        return TmfResponse.FUNCTION_COMPLETE, None

    if fn in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
        target = session.target
        engine.abort_tasks(lambda t: t.lu is not None and t.lu in target.lus.values())
        kind = (
            ResetKind.TARGET_WARM_RESET
            if fn == TmfFunction.TARGET_WARM_RESET
            else ResetKind.TARGET_COLD_RESET
        )
        for unit in target.lus.values():
            _reset_lu(unit, kind)
        if fn == TmfFunction.TARGET_WARM_RESET:
            return TmfResponse.FUNCTION_COMPLETE, None

        def drop_all() -> None:
            # Cold reset: after the response, every connection to this target goes
            # (RFC 7143 11.5.1: the target drops all connections).
            for s in engine.sessions_of_target(target.config.name):
                for c in list(s.connections.values()):
                    c.close()
                engine.close_session(s, reason="target cold reset")

        return TmfResponse.FUNCTION_COMPLETE, drop_all

    if fn == TmfFunction.TASK_REASSIGN:
        # Allegiance reassignment needs ERL 2 (RFC 7143 11.5.1, 6.2.2).
        if conn.erl < 2:
            return TmfResponse.TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED, None
        ref = req.referenced_task_tag
        task = session.tasks.get(ref) or session.orphans.get(ref)
        if task is None:
            return TmfResponse.TASK_DOES_NOT_EXIST, None
        if session.connections.get(task.conn.cid) is task.conn:
            # Its connection was not logged out for recovery (7.2.2 MUST): still
            # allegiant (11.6.1 code 3).
            return TmfResponse.TASK_STILL_ALLEGIANT, None
        expdatasn, reassigned = req.expdatasn, task

        def resume() -> None:
            # The new allegiance takes effect only once the response is out (11.6).
            conn.resume_task(reassigned, expdatasn)

        return TmfResponse.FUNCTION_COMPLETE, resume

    if fn == TmfFunction.QUERY_TASK:
        ref = req.referenced_task_tag
        if ref == req.itt or _queued_tmf(session, ref):
            # RFC 7144 6.3: QUERY TASK MUST NOT be executed on a task management
            # request; it is answered 'Function rejected'.
            return TmfResponse.FUNCTION_REJECTED, None
        # RFC 7144 6.4.2: succeeded if the task is in the task set, complete if not.
        task = session.tasks.get(ref)
        if task is not None and task.lun == lun:
            return TmfResponse.FUNCTION_SUCCEEDED, None
        return TmfResponse.FUNCTION_COMPLETE, None

    if fn == TmfFunction.QUERY_TASK_SET:
        # RFC 7144 6.4.2: succeeded if any command of this I_T_L nexus is in the task set.
        if any(mine(t) and t.lun == lun for t in session.tasks.values()):
            return TmfResponse.FUNCTION_SUCCEEDED, None
        return TmfResponse.FUNCTION_COMPLETE, None

    if fn == TmfFunction.I_T_NEXUS_RESET:
        # RFC 7144 6.3, 6.5: the nexus's tasks on every LU are aborted; then, once the
        # response is queued, every connection of the session is dropped and the session
        # ends at once whatever DefaultTime2Wait/Time2Retain say, which is the I_T nexus
        # loss the logical units see (close_session tells them, SAM-5 6.3.4).
        engine.abort_tasks(mine)

        def nexus_loss() -> None:
            for c in list(session.connections.values()):
                c.close(after_flush=True)
            engine.close_session(session, reason="I_T nexus reset")

        return TmfResponse.FUNCTION_COMPLETE, nexus_loss

    if fn == TmfFunction.QUERY_ASYNCHRONOUS_EVENT:
        # RFC 7144 6.4.2: succeeded if a unit attention (or a deferred error: this
        # logical unit has none) is pending for this I_T_L nexus, complete if not.
        pending = getattr(lu, "unit_attention_pending", None)
        if pending is not None and session.nexus is not None and pending(session.nexus):
            return TmfResponse.FUNCTION_SUCCEEDED, None
        return TmfResponse.FUNCTION_COMPLETE, None

    # Undefined function codes (RFC 7143 11.6.1: Function rejected).
    return TmfResponse.FUNCTION_REJECTED, None
