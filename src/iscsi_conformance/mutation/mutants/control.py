"""Task management, Logout, NOP, Reject and Text in full feature phase
(RFC 7143 11.5, 11.6, 11.10, 11.11, 11.14, 11.15, 11.17, 11.18, 11.19)."""

from __future__ import annotations

import dataclasses
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import (
    LogoutReason,
    LogoutResponseCode,
    RejectReason,
    TmfFunction,
    TmfResponse,
)
from iscsi_conformance.mutation import wire
from iscsi_conformance.mutation.mutants._helpers import fields, rewrite
from iscsi_conformance.mutation.patching import Patcher, swapped
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target import connection as C
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.task import NONE_TAG


def _tmf_result(p: Patcher, change: Any) -> None:
    """``perform_tmf``'s (response, after) for a request becomes ``change(req, result, conn)``."""

    def make(old: Any) -> Any:
        def perform(conn: Connection, req: P.TaskManagementRequest) -> Any:
            return change(req, old(conn, req), conn)

        return perform

    p.wrap(C, "perform_tmf", make)


def _fn(req: P.TaskManagementRequest) -> int:
    return req.function & 0x7F


@mutant(
    "Control.Tmf.AbortUnknownTaskComplete",
    "control",
    "ABORT TASK for a task the target never saw answers Function complete (11.6.1: task does not exist)",
    catches=["FullFeature.TaskManagement.AbortUnknownTask"],
)
def abort_unknown(p: Patcher) -> None:
    _tmf_result(
        p,
        lambda req, r, conn: (
            (TmfResponse.FUNCTION_COMPLETE, r[1]) if r[0] == TmfResponse.TASK_DOES_NOT_EXIST else r
        ),
    )


@mutant(
    "Control.Tmf.UnknownFunctionComplete",
    "control",
    "an undefined task management function answers Function complete (11.5.1, 11.6.1)",
    catches=["FullFeature.TaskManagement.UnknownFunction"],
)
def unknown_function(p: Patcher) -> None:
    known = {int(f) for f in TmfFunction}

    def change(req: Any, r: Any, conn: Any) -> Any:
        return (TmfResponse.FUNCTION_COMPLETE, None) if _fn(req) not in known else r

    _tmf_result(p, change)


@mutant(
    "Control.Tmf.UnknownLunComplete",
    "control",
    "a LUN-scoped function for a LUN with no logical unit answers Function complete (11.6.1: 0x02)",
    catches=["FullFeature.TaskManagement.LunResetUnknownLun"],
)
def unknown_lun(p: Patcher) -> None:
    _tmf_result(
        p,
        lambda req, r, conn: (
            (TmfResponse.FUNCTION_COMPLETE, None) if r[0] == TmfResponse.LUN_DOES_NOT_EXIST else r
        ),
    )


@mutant(
    "Control.Tmf.ReassignAcceptedAtErl0",
    "control",
    "TASK REASSIGN at ErrorRecoveryLevel 0 answers Task does not exist instead of 'not supported' (11.6.1)",
    catches=["FullFeature.TaskManagement.ReassignAtErl0"],
)
def reassign(p: Patcher) -> None:
    _tmf_result(
        p,
        lambda req, r, conn: (
            (TmfResponse.TASK_DOES_NOT_EXIST, None)
            if r[0] == TmfResponse.TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED
            else r
        ),
    )


def _no_abort_for(p: Patcher, functions: set[int]) -> None:
    def make(old: Any) -> Any:
        def perform(conn: Connection, req: P.TaskManagementRequest) -> Any:
            if _fn(req) in functions:
                with swapped(conn.engine, "abort_tasks", lambda predicate: 0):
                    return old(conn, req)
            return old(conn, req)

        return perform

    p.wrap(C, "perform_tmf", make)


@mutant(
    "Control.Tmf.AbortTaskSetAbortsNothing",
    "control",
    "ABORT TASK SET answers Function complete but leaves the tasks running (SAM-5 7.3)",
    catches=["FullFeature.TaskManagement.AbortTaskSet"],
)
def abort_task_set(p: Patcher) -> None:
    _no_abort_for(p, {TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET})


@mutant(
    "Control.Tmf.ClearTaskSetAbortsNothing",
    "control",
    "CLEAR TASK SET answers Function complete but a held WRITE still completes after the "
    "response (11.5.1)",
    catches=["FullFeature.TaskManagement.ClearTaskSetOutstanding"],
)
def clear_task_set(p: Patcher) -> None:
    _no_abort_for(p, {TmfFunction.CLEAR_TASK_SET})


@mutant(
    "Control.Tmf.WarmResetAbortsNothing",
    "control",
    "TARGET WARM RESET answers Function complete but a held WRITE still completes after "
    "the response (11.5.1)",
    catches=["FullFeature.TaskManagement.TargetWarmResetOutstanding"],
)
def warm_reset(p: Patcher) -> None:
    _no_abort_for(p, {TmfFunction.TARGET_WARM_RESET})


@mutant(
    "Control.Tmf.LunResetAbortsNothing",
    "control",
    "LOGICAL UNIT RESET answers Function complete but leaves the tasks running (SAM-5 7.7)",
    catches=["FullFeature.TaskManagement.LunReset"],
)
def lun_reset(p: Patcher) -> None:
    _no_abort_for(p, {TmfFunction.LOGICAL_UNIT_RESET, TmfFunction.TARGET_WARM_RESET})


@mutant(
    "Control.Tmf.LunResetSparesOtherSessions",
    "control",
    "LOGICAL UNIT RESET aborts only the issuing session's tasks; another session's held "
    "WRITE still completes (11.5.1: SAM's logical unit reset aborts all tasks)",
    catches=["FullFeature.TaskManagement.LunResetOtherSessionTask"],
)
def lun_reset_own_session(p: Patcher) -> None:
    _own_session_only(p, TmfFunction.LOGICAL_UNIT_RESET)


@mutant(
    "Control.Tmf.ClearTaskSetSparesOtherSessions",
    "control",
    "CLEAR TASK SET under TST=000b aborts only the issuing session's tasks; another "
    "session's held WRITE still completes (11.5.1: the task set the TST defines)",
    catches=["FullFeature.TaskManagement.ClearTaskSetOtherSessionTask"],
)
def clear_task_set_own_session(p: Patcher) -> None:
    _own_session_only(p, TmfFunction.CLEAR_TASK_SET)


def _own_session_only(p: Patcher, function: int) -> None:
    """``function`` aborts only the tasks of the session that sent it."""

    def make(old: Any) -> Any:
        def perform(conn: Connection, req: P.TaskManagementRequest) -> Any:
            if _fn(req) != function:
                return old(conn, req)
            engine, session = conn.engine, conn.session
            real = engine.abort_tasks

            def own(predicate: Any) -> int:
                return real(lambda t: predicate(t) and t.conn.session is session)

            with swapped(engine, "abort_tasks", own):
                return old(conn, req)

        return perform

    p.wrap(C, "perform_tmf", make)


@mutant(
    "Control.Tmf.AbortTaskSetAbortsOtherSessions",
    "control",
    "ABORT TASK SET aborts every session's tasks on the logical unit, not only the "
    "issuing session's (11.5.1)",
    catches=["FullFeature.TaskManagement.AbortTaskSetSparesOtherSession"],
)
def abort_task_set_all_sessions(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def perform(conn: Connection, req: P.TaskManagementRequest) -> Any:
            if _fn(req) != TmfFunction.ABORT_TASK_SET:
                return old(conn, req)
            engine = conn.engine
            real = engine.abort_tasks
            lun = P.field_to_lun(req.lun)

            def every(predicate: Any) -> int:
                return real(lambda t: t.lun == lun)

            with swapped(engine, "abort_tasks", every):
                return old(conn, req)

        return perform

    p.wrap(C, "perform_tmf", make)


@mutant(
    "Control.Tmf.AbortTaskAbortsNothing",
    "control",
    "ABORT TASK answers Function complete but the task still completes (11.5.1)",
    catches=["FullFeature.TaskManagement"],
)
def abort_task(p: Patcher) -> None:
    _no_abort_for(p, {TmfFunction.ABORT_TASK})


@mutant(
    "Control.Tmf.QueryTaskInverted",
    "control",
    "QUERY TASK answers Function succeeded for a task that does not exist (RFC 7144 4.1)",
    catches=["FullFeature.TaskManagement"],
)
def query_task(p: Patcher) -> None:
    def change(req: Any, r: Any, conn: Any) -> Any:
        if _fn(req) == TmfFunction.QUERY_TASK:
            ok = r[0] == TmfResponse.FUNCTION_SUCCEEDED
            return (TmfResponse.FUNCTION_COMPLETE if ok else TmfResponse.FUNCTION_SUCCEEDED, None)
        return r

    _tmf_result(p, change)


def _inverted(function: int) -> Any:
    """A ``_tmf_result`` change swapping Function succeeded and Function complete for
    ``function``."""

    def change(req: Any, r: Any, conn: Any) -> Any:
        if _fn(req) != function or r[0] not in (0, TmfResponse.FUNCTION_SUCCEEDED):
            return r
        ok = r[0] == TmfResponse.FUNCTION_SUCCEEDED
        return (TmfResponse.FUNCTION_COMPLETE if ok else TmfResponse.FUNCTION_SUCCEEDED, r[1])

    return change


@mutant(
    "Control.Tmf.QueryTaskSetInverted",
    "control",
    "QUERY TASK SET answers Function succeeded with no task of the nexus and Function "
    "complete with one (RFC 7144 6.4.2)",
    catches=["FullFeature.TaskManagement.QueryTaskSet"],
)
def query_task_set(p: Patcher) -> None:
    _tmf_result(p, _inverted(TmfFunction.QUERY_TASK_SET))


@mutant(
    "Control.Tmf.QueryAsyncEventInverted",
    "control",
    "QUERY ASYNCHRONOUS EVENT answers Function complete with a unit attention pending and "
    "Function succeeded with none (RFC 7144 6.4.2)",
    catches=["FullFeature.TaskManagement.QueryAsyncEvent"],
)
def query_async_event(p: Patcher) -> None:
    _tmf_result(p, _inverted(TmfFunction.QUERY_ASYNCHRONOUS_EVENT))


@mutant(
    "Control.Tmf.QueryTaskOfTmfExecuted",
    "control",
    "QUERY TASK of a task management request is carried out (Function complete) instead "
    "of answered Function rejected (RFC 7144 6.3)",
    catches=["FullFeature.TaskManagement.QueryTaskOfTaskManagement"],
)
def query_task_of_tmf(p: Patcher) -> None:
    def change(req: Any, r: Any, conn: Any) -> Any:
        if _fn(req) == TmfFunction.QUERY_TASK and r[0] == TmfResponse.FUNCTION_REJECTED:
            return (TmfResponse.FUNCTION_COMPLETE, None)
        return r

    _tmf_result(p, change)


@mutant(
    "Control.Tmf.ItNexusResetKeepsConnections",
    "control",
    "I_T NEXUS RESET answers Function complete and aborts the nexus's tasks but keeps the "
    "session and its connections (RFC 7144 6.3: the target drops them)",
    catches=["FullFeature.TaskManagement.ItNexusReset"],
)
def it_nexus_reset_kept(p: Patcher) -> None:
    _tmf_result(
        p, lambda req, r, conn: (r[0], None) if _fn(req) == TmfFunction.I_T_NEXUS_RESET else r
    )


@mutant(
    "Control.Tmf.ItNexusResetAbortsEveryNexus",
    "control",
    "I_T NEXUS RESET aborts every session's tasks on the target, not only those of the "
    "nexus it came on (RFC 7144 6.3, 6.5)",
    catches=["FullFeature.TaskManagement.ItNexusReset"],
)
def it_nexus_reset_every_nexus(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def perform(conn: Connection, req: P.TaskManagementRequest) -> Any:
            if _fn(req) != TmfFunction.I_T_NEXUS_RESET:
                return old(conn, req)
            engine = conn.engine
            real = engine.abort_tasks

            def every(predicate: Any) -> int:
                return real(lambda t: True)

            with swapped(engine, "abort_tasks", every):
                return old(conn, req)

        return perform

    p.wrap(C, "perform_tmf", make)


@mutant(
    "Control.Tmf.Level2FunctionsRejected",
    "control",
    "at iSCSIProtocolLevel 2 the functions of RFC 7144 6.3 get a Reject (protocol error) "
    "instead of a Task Management Function Response (RFC 7144 4.1 MUST NOT)",
    catches=["FullFeature.TaskManagement.QueryTask"],
)
def level2_rejected(p: Patcher) -> None:
    new_functions = {9, 10, 11, 12}

    def make(old: Any) -> Any:
        def run(conn: Connection, pdu: P.TaskManagementRequest) -> None:
            if _fn(pdu) in new_functions:
                conn.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
                return
            old(conn, pdu)

        return run

    # Immediate requests call the method, ordered ones go through the runners' table.
    p.wrap(Connection, "_tmf", make)
    p.setitem(C._ORDERED_RUNNERS, P.TaskManagementRequest, Connection._tmf)


@mutant(
    "Control.Tmf.ColdResetKeepsConnections",
    "control",
    "TARGET COLD RESET answers but keeps every connection (11.5.1: the target drops them)",
    catches=["FullFeature.TaskManagement"],
)
def cold_reset(p: Patcher) -> None:
    _tmf_result(
        p, lambda req, r, conn: (r[0], None) if _fn(req) == TmfFunction.TARGET_COLD_RESET else r
    )


@mutant(
    "Control.Tmf.ResponseTagWrong",
    "control",
    "Task Management Responses carry another Initiator Task Tag than the request's (11.6)",
    catches=["FullFeature.TaskManagement"],
)
def tmf_itt(p: Patcher) -> None:
    fields(p, P.TaskManagementResponse, itt=lambda pdu: pdu.itt ^ 1)


def _logout_code(p: Patcher, change: Any) -> None:
    fields(
        p,
        P.LogoutResponse,
        None,
        response=lambda pdu: change(pdu.response),
    )


@mutant(
    "Control.Logout.CloseSessionClosesConnectionOnly",
    "control",
    "Logout 'close the session' closes only the connection; the session lives on (11.14.1)",
    catches=["FullFeature.Logout.CloseSession"],
)
def close_session(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def logout(self: Connection, pdu: P.LogoutRequest) -> None:
            if pdu.reason & 0x7F == LogoutReason.CLOSE_SESSION:
                pdu = dataclasses.replace(pdu, reason=LogoutReason.CLOSE_CONNECTION, cid=self.cid)
            old(self, pdu)

        return logout

    p.wrap(Connection, "_logout", make)


@mutant(
    "Control.Logout.UnknownCidSuccess",
    "control",
    "Logout of a CID the session does not have answers success (11.15.1: CID not found)",
    catches=["FullFeature.Logout.UnknownCid"],
)
def unknown_cid(p: Patcher) -> None:
    _logout_code(
        p,
        lambda code: (
            LogoutResponseCode.SUCCESS if code == LogoutResponseCode.CID_NOT_FOUND else code
        ),
    )


@mutant(
    "Control.Logout.RecoveryAtErl0Success",
    "control",
    "Logout for recovery at ErrorRecoveryLevel 0 answers success (11.15.1: recovery not supported)",
    catches=["FullFeature.Logout.RecoveryAtErl0"],
)
def recovery_erl0(p: Patcher) -> None:
    _logout_code(
        p,
        lambda code: (
            LogoutResponseCode.SUCCESS
            if code == LogoutResponseCode.RECOVERY_NOT_SUPPORTED
            else code
        ),
    )


@mutant(
    "Control.Logout.ConnectionLeftOpen",
    "control",
    "after a successful Logout Response the target keeps the connection open (11.14, 8.1.2 T13)",
    catches=["FullFeature.Logout.CloseConnection", "FullFeature.Logout.CloseSession"],
)
def left_open(p: Patcher) -> None:
    rewrite(
        p,
        P.LogoutResponse,
        lambda pdu: wire.KeepOpen(pdu) if pdu.response == LogoutResponseCode.SUCCESS else pdu,
    )


@mutant(
    "Control.Logout.NoResponse",
    "control",
    "a Logout Request is acted upon but never answered (11.15)",
    catches=["FullFeature.Logout"],
)
def logout_silent(p: Patcher) -> None:
    rewrite(p, P.LogoutResponse, lambda pdu: None)


@mutant(
    "Control.Nop.PingDataNotEchoed",
    "control",
    "the NOP-In answering a ping carries no data (11.19: the ping data is returned)",
    catches=["FullFeature.Nop.PingEchoed"],
)
def nop_data(p: Patcher) -> None:
    fields(p, P.NopIn, lambda pdu: pdu.itt != NONE_TAG, data=b"")


@mutant(
    "Control.Nop.ReservedTagAnswered",
    "control",
    "a NOP-Out with ITT 0xffffffff (no answer wanted) is answered with a NOP-In (11.18.4)",
    catches=["FullFeature.Nop.NoAnswerToReservedTag"],
)
def nop_reserved(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_nop(self: Connection, pdu: P.NopOut, now: float) -> None:
            if pdu.itt == NONE_TAG and pdu.ttt == NONE_TAG and self.session is not None:
                self._nop_reply(dataclasses.replace(pdu, itt=0x7FFF0000))
                return
            old(self, pdu, now)

        return on_nop

    p.wrap(Connection, "on_nop_out", make)


@mutant(
    "Control.Nop.ReplyTagWrong",
    "control",
    "the NOP-In answering a ping carries another Initiator Task Tag (11.19)",
    catches=["FullFeature.Nop.PingEchoed"],
)
def nop_itt(p: Patcher) -> None:
    fields(p, P.NopIn, lambda pdu: pdu.itt != NONE_TAG, itt=lambda pdu: pdu.itt ^ 1)


@mutant(
    "Control.Nop.ReplyTransferTagSet",
    "control",
    "the NOP-In answering a ping carries a Target Transfer Tag (11.19.3: 0xffffffff)",
    catches=["FullFeature.Nop.PingEchoed"],
)
def nop_ttt(p: Patcher) -> None:
    fields(p, P.NopIn, lambda pdu: pdu.itt != NONE_TAG, ttt=7)


@mutant(
    "Control.Reject.UnknownOpcodeIgnored",
    "control",
    "a PDU with an opcode the target does not support is ignored, not rejected (11.17.1)",
    catches=["FullFeature.Reject.UnknownOpcode"],
)
def unknown_opcode(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def handle(self: Connection, pdu: P.PDU, now: float) -> None:
            if isinstance(pdu, P.UnknownPDU):
                return
            old(self, pdu, now)

        return handle

    p.wrap(Connection, "handle_pdu", make)


@mutant(
    "Control.Reject.ReasonAlwaysProtocolError",
    "control",
    "every Reject gives reason 0x04 (protocol error) whatever the cause (11.17.1)",
    catches=["FullFeature.Reject.PayloadDigestReason", "Digests.Errors"],
    # 11.17.1's reason table has no keyword; the reason a MUST names is 7.8's: a payload
    # digest error is answered with Reject 'Data (payload) Digest Error', which the
    # control area's FullFeature.Reject.PayloadDigestReason checks.
)
def reject_reason(p: Patcher) -> None:
    fields(p, P.Reject, reason=RejectReason.PROTOCOL_ERROR)


@mutant(
    "Control.Reject.HeaderNotReturned",
    "control",
    "a Reject's data segment does not carry the rejected PDU's header (11.17)",
    catches=["FullFeature.Reject", "FullFeature.Errors"],
)
def reject_header(p: Patcher) -> None:
    fields(p, P.Reject, data=b"")


@mutant(
    "Control.Reject.LongSegmentAccepted",
    "control",
    "a data segment above the target's MaxRecvDataSegmentLength is accepted (13.12)",
    catches=["FullFeature.Reject.DataSegmentTooLong"],
)
def long_segment(p: Patcher) -> None:
    def post(self: Connection, *args: Any) -> None:
        self.decoder.max_data_segment_length = None

    p.after(Connection, "enter_full_feature", post)


def _text(p: Patcher, change: Any) -> None:
    def make(old: Any) -> Any:
        def text(self: Connection, pdu: P.TextRequest) -> None:
            pdu = change(self, pdu)
            if pdu is not None:
                old(self, pdu)

        return text

    p.wrap(Connection, "_text", make)


@mutant(
    "Control.Text.NoAnswers",
    "control",
    "full-feature Text Requests get an empty Text Response: keys are not answered (6.2, 11.11)",
    catches=["FullFeature.Text.UnknownKeyNotUnderstood", "FullFeature.Text.LoginOnlyKey"],
)
def text_no_answers(p: Patcher) -> None:
    p.wrap(C, "renegotiate", lambda old: lambda neg, pairs: [])


@mutant(
    "Control.Text.ContinuationNotReassembled",
    "control",
    "a Text Request with C=1 is answered as if it were whole (11.10.2, 6.2)",
    catches=[
        "FullFeature.Text.ContinuedRequestReassembled",
        "FullFeature.Text.ContinuedRequestEmptyAnswer",
    ],
)
def text_continuation(p: Patcher) -> None:
    _text(
        p, lambda self, pdu: dataclasses.replace(pdu, cont=False, final=True) if pdu.cont else pdu
    )


@mutant(
    "Control.Text.AnswerNotSplit",
    "control",
    "a Text answer longer than the initiator's MaxRecvDataSegmentLength goes in one PDU (11.11, 13.12)",
    catches=["Discovery.SendTargets.LongerThanOnePdu"],
    suites=("Discovery.SendTargets.LongerThanOnePdu",),
)
def text_not_split(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def text(self: Connection, pdu: P.TextRequest) -> None:
            with swapped(self, "max_send", 1 << 24):
                old(self, pdu)

        return text

    p.wrap(Connection, "_text", make)


@mutant(
    "Control.Text.UnknownTttAccepted",
    "control",
    "a Text Request with a Target Transfer Tag the target never gave starts a new exchange (11.10.4)",
    catches=["FullFeature.Text.UnknownTtt"],
)
def text_ttt(p: Patcher) -> None:
    def change(self: Connection, pdu: P.TextRequest) -> Any:
        pending = self._text_pending.get(pdu.itt)
        if pdu.ttt != NONE_TAG and (pending is None or pending[0] != pdu.ttt):
            return dataclasses.replace(pdu, ttt=NONE_TAG)
        return pdu

    _text(p, change)


@mutant(
    "Control.Text.ResetTttIgnored",
    "control",
    "a Text Request with TTT 0xffffffff does not drop the unfinished exchange of its ITT (11.10.4)",
    catches=["FullFeature.Text.ResetWithReservedTtt"],
)
def text_reset(p: Patcher) -> None:
    def change(self: Connection, pdu: P.TextRequest) -> Any:
        pending = self._text_pending.get(pdu.itt)
        if pdu.ttt == NONE_TAG and pending is not None:
            return dataclasses.replace(pdu, ttt=pending[0])
        return pdu

    _text(p, change)


@mutant(
    "Control.Text.ReservedIttAccepted",
    "control",
    "a Text Request with the reserved ITT 0xffffffff is answered like any other (11.10.3)",
    catches=["FullFeature.Text.ReservedItt"],
)
def text_reserved_itt(p: Patcher) -> None:
    _text(
        p,
        lambda self, pdu: dataclasses.replace(pdu, itt=0x7FFF0001) if pdu.itt == NONE_TAG else pdu,
    )


@mutant(
    "Control.Text.FinalAndContinueAccepted",
    "control",
    "a Text Request with both F and C set is taken as F alone (11.10.2)",
    catches=["FullFeature.Text.FinalAndContinue"],
)
def text_f_and_c(p: Patcher) -> None:
    _text(
        p, lambda self, pdu: dataclasses.replace(pdu, cont=False) if pdu.final and pdu.cont else pdu
    )


@mutant(
    "Control.Text.RedeclaredLengthIgnored",
    "control",
    "a MaxRecvDataSegmentLength declared in full feature phase is not applied (6.4, 13.12)",
    catches=["FullFeature.Text.RedeclaredLengthApplies"],
)
def redeclared(p: Patcher) -> None:
    p.noop(Connection, "_apply_ffp_declarations")


@mutant(
    "Control.Text.ResponseTagWrong",
    "control",
    "Text Responses carry another Initiator Task Tag than the request's (11.11)",
    catches=["FullFeature.Text", "Discovery.SendTargets"],
    suites=("Discovery.SendTargets.All",),
)
def text_itt(p: Patcher) -> None:
    fields(p, P.TextResponse, itt=lambda pdu: pdu.itt ^ 1)


@mutant(
    "Control.Reject.RejectedCmdSnTaken",
    "control",
    "a SCSI Command rejected for a task tag in use (or immediate data the keys forbid) has its "
    "CmdSN taken as received (7.3: MUST NOT)",
    catches=["FullFeature.Errors.RejectedCommandCmdSnNotTaken"],
    suites=("FullFeature.Errors.RejectedCommandCmdSnNotTaken",),
)
def rejected_cmdsn_taken(p: Patcher) -> None:
    # _create_task still rejects the command, after on_scsi_command has taken its CmdSN
    p.wrap(Connection, "_refused", lambda old: lambda self, pdu: False)
