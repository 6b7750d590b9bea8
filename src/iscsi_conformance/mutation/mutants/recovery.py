"""SNACK and error recovery levels (RFC 7143 6.1, 7, 11.16)."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import SnackType
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.connection import Connection


def _snack(p: Patcher, handle: Any) -> None:
    def make(old: Any) -> Any:
        def on_snack(self: Connection, pdu: P.SnackRequest, now: float) -> None:
            if not handle(self, pdu):
                old(self, pdu, now)

        return on_snack

    p.wrap(Connection, "on_snack", make)


@mutant(
    "Recovery.Snack.IgnoredAtErl0",
    "recovery",
    "a SNACK at ErrorRecoveryLevel 0 is dropped silently instead of rejected (11.16, 7.1.4)",
    catches=["FullFeature.Snack.Erl0"],
)
def erl0_ignored(p: Patcher) -> None:
    _snack(p, lambda self, pdu: self.erl == 0)


@mutant(
    "Recovery.Snack.StatusNotResent",
    "recovery",
    "a Status SNACK at ERL 1 is rejected instead of resending the statuses (11.16.1)",
    catches=["FullFeature.Snack.Erl1.StatusSnackResends"],
)
def status_not_resent(p: Patcher) -> None:
    from iscsi_conformance.core.codes import RejectReason

    def handle(self: Connection, pdu: P.SnackRequest) -> bool:
        if self.erl > 0 and pdu.snack_type & 0x0F == SnackType.STATUS:
            self.reject(RejectReason.SNACK_REJECT, P.bhs_of(pdu))
            return True
        return False

    _snack(p, handle)


@mutant(
    "Recovery.Snack.DataNotResent",
    "recovery",
    "a Data SNACK at ERL 1 is answered with nothing (11.16.1: the Data-In are resent)",
    catches=["FullFeature.Snack.Erl1.DataSnackResends"],
)
def data_not_resent(p: Patcher) -> None:
    _snack(p, lambda self, pdu: self.erl > 0 and pdu.snack_type & 0x0F == SnackType.DATA_R2T)


@mutant(
    "Recovery.Snack.BeyondRangeSilent",
    "recovery",
    "a Data SNACK beyond the Data-In sent is ignored instead of rejected (11.16.1)",
    catches=["FullFeature.Snack.Erl1.DataSnackBeyondRange"],
)
def beyond_range(p: Patcher) -> None:
    def handle(self: Connection, pdu: P.SnackRequest) -> bool:
        if self.erl == 0 or pdu.snack_type & 0x0F != SnackType.DATA_R2T:
            return False
        held = self._held.get(pdu.itt)
        return held is not None and pdu.begrun >= len(held.sent_datain)

    _snack(p, handle)


@mutant(
    "Recovery.Erl.Erl1DataNotKept",
    "recovery",
    "at ERL 1 the target keeps no Data-In for a SNACK (the Data SNACK finds nothing) (6.1, 11.16)",
    catches=["FullFeature.Snack.Erl1.DataSnackResends"],
)
def not_kept(p: Patcher) -> None:
    from iscsi_conformance.target.task import TaskIO

    p.noop(TaskIO, "_hold")


@mutant(
    "Recovery.Erl1.LostDataOutNeverAskedAgain",
    "recovery",
    "at ERL 1 a Data-Out rejected for its data digest is forgotten: no recovery R2T and "
    "no SCSI Response, the WRITE hangs (7.8: re-solicit the data or end the task)",
    catches=["Digests.Errors.SolicitedDataDigestAtErl1"],
)
def lost_data_out_forgotten(p: Patcher) -> None:
    from iscsi_conformance.target.task import TaskIO

    p.noop(TaskIO, "_data_lost")


@mutant(
    "Recovery.Erl1.LostDataOutCountedReceived",
    "recovery",
    "at ERL 1 a Data-Out rejected for its data digest is counted as received: the WRITE "
    "ends GOOD without the data ever being asked again (7.8)",
    catches=["Digests.Errors.SolicitedDataDigestAtErl1"],
)
def lost_data_out_counted(p: Patcher) -> None:
    from iscsi_conformance.target.task import TaskIO

    def data_lost(self: Any, task: Any, ttt: int, offset: int, length: int, header: bytes) -> None:
        r2t = task.outstanding.get(ttt)
        if r2t is None:
            return
        r2t.received += length
        r2t.next_datasn += 1
        if header[1] & 0x80:
            self._r2t_done(task, r2t)

    p.replace(TaskIO, "_data_lost", data_lost)


@mutant(
    "Recovery.Erl2.TasksDieWithConnection",
    "recovery",
    "at ERL 2 the tasks of a connection removed for recovery are ended with it, so TASK "
    "REASSIGN finds none (7.2.2: the target SHOULD continue the command; 11.5.6)",
    catches=[
        "FullFeature.Recovery.Erl2.WriteReassigned",
        "FullFeature.Recovery.Erl2.ReadReassigned",
    ],
)
def erl2_tasks_die(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def session_detach(self: Connection, **kw: Any) -> None:
            self.recovering = False
            erl, self.erl = self.erl, min(self.erl, 1)
            try:
                old(self, **kw)
            finally:
                self.erl = erl

        return session_detach

    p.wrap(Connection, "session_detach", make)


@mutant(
    "Recovery.Erl2.AllegianceBeforeResponse",
    "recovery",
    "TASK REASSIGN resumes the task (R2T, Data-In) before the Task Management response "
    "goes out (11.6: the new allegiance MUST ONLY take effect after the response)",
    catches=[
        "FullFeature.Recovery.Erl2.WriteReassigned",
        "FullFeature.Recovery.Erl2.ReadReassigned",
    ],
)
def erl2_resumed_early(p: Patcher) -> None:
    from iscsi_conformance.target import tmf

    def make(old: Any) -> Any:
        def perform_tmf(conn: Connection, req: P.TaskManagementRequest) -> Any:
            code, after = old(conn, req)
            if (req.function & 0x7F) == 8 and after is not None:
                after()
                return code, None
            return code, after

        return perform_tmf

    p.wrap(tmf, "perform_tmf", make)


@mutant(
    "Recovery.Erl2.DataInNotResent",
    "recovery",
    "a READ reassigned at ERL 2 gets only its status again, not its Data-In from "
    "ExpDataSN (11.5.6: the target MUST transmit all Data-In PDUs from that number)",
    catches=["FullFeature.Recovery.Erl2.ReadReassigned"],
)
def erl2_data_not_resent(p: Patcher) -> None:
    from iscsi_conformance.target.task import TaskIO

    def make(old: Any) -> Any:
        def resume_task(self: Any, task: Any, expdatasn: int) -> None:
            if task.reply is not None:
                task.datain_offsets = []
            old(self, task, expdatasn)

        return resume_task

    p.wrap(TaskIO, "resume_task", make)


@mutant(
    "Recovery.Snack.NeverSentSnackReject",
    "recovery",
    "a SNACK for statuses or Data-In never sent (or acknowledged) is rejected with reason "
    "SNACK Reject (03h), not Protocol Error (11.16: MUST)",
    catches=["FullFeature.Snack.Erl1.DataSnackBeyondRange"],
)
def never_sent_snack_reject(p: Patcher) -> None:
    from iscsi_conformance.core.codes import RejectReason

    def make(old: Any) -> Any:
        def on_snack(self: Connection, pdu: P.SnackRequest, now: float) -> None:
            real = self.reject

            def reject(reason: int, header: bytes, *, datasn_r2tsn: int = 0) -> None:
                if self.erl > 0 and reason == RejectReason.PROTOCOL_ERROR:
                    reason = RejectReason.SNACK_REJECT
                real(reason, header, datasn_r2tsn=datasn_r2tsn)

            self.reject = reject  # type: ignore[method-assign]
            try:
                old(self, pdu, now)
            finally:
                del self.reject

        return on_snack

    p.wrap(Connection, "on_snack", make)


@mutant(
    "Recovery.Snack.RDataUntagged",
    "recovery",
    "an R-Data SNACK at ERL 1 brings back the kept Data-In only: no SCSI Response with "
    "its SNACK Tag follows (11.16.3, 11.16.5; the target's behaviour before 11.16.3)",
    catches=[
        "FullFeature.Snack.Erl1.RDataSnackTaggedResponse",
        "FullFeature.Snack.Erl1.RDataSnackResegmented",
    ],
)
def r_data_untagged(p: Patcher) -> None:
    from iscsi_conformance.target.task import Task, TaskIO

    def resend_rdata(self: Connection, task: Task, snack_tag: int) -> None:
        for raw in task.sent_datain:
            self.emit_raw(raw)

    p.replace(TaskIO, "resend_rdata", resend_rdata)


@mutant(
    "Recovery.Snack.RDataNotResegmented",
    "recovery",
    "an R-Data SNACK after a smaller MaxRecvDataSegmentLength was declared resends the "
    "Data-In in their first segments, beyond the new limit (11.16.3, 13.12)",
    catches=["FullFeature.Snack.Erl1.RDataSnackResegmented"],
)
def r_data_not_resegmented(p: Patcher) -> None:
    from iscsi_conformance.target.task import Task, TaskIO

    def make(old: Any) -> Any:
        def resend_rdata(self: TaskIO, task: Task, snack_tag: int) -> None:
            # the first segment size: the longest kept DataSegmentLength (bytes 5-7)
            first = max((int.from_bytes(raw[5:8], "big") for raw in task.sent_datain), default=0)
            now = self.max_send
            self.max_send = max(first, now)
            try:
                old(self, task, snack_tag)
            finally:
                self.max_send = now

        return resend_rdata

    p.wrap(TaskIO, "resend_rdata", make)


@mutant(
    "Recovery.Snack.R2tNotResent",
    "recovery",
    "a Data/R2T SNACK for an R2T of a WRITE under way is rejected (Protocol Error) instead "
    "of resending the R2T (11.16; the target's behaviour before)",
    catches=["FullFeature.Snack.Erl1.R2tSnackResends"],
)
def r2t_not_resent(p: Patcher) -> None:
    from iscsi_conformance.target.task import TaskIO

    p.replace(TaskIO, "resend_r2ts", lambda self, task, begrun, runlength: False)


@mutant(
    "Recovery.Snack.R2tResentWithNewTag",
    "recovery",
    "an R2T asked for again by a Data/R2T SNACK comes back with a new Target Transfer Tag, "
    "not as a replica of the one sent first (11.16)",
    catches=["FullFeature.Snack.Erl1.R2tSnackResends"],
)
def r2t_new_tag(p: Patcher) -> None:
    from iscsi_conformance.target.task import Task, TaskIO

    def make(old: Any) -> Any:
        def resend_r2ts(self: TaskIO, task: Task, begrun: int, runlength: int) -> bool:
            for r2t in list(task.outstanding.values()):
                del task.outstanding[r2t.ttt]
                r2t.ttt = self.engine.alloc_ttt()
                task.outstanding[r2t.ttt] = r2t
            return bool(old(self, task, begrun, runlength))

        return resend_r2ts

    p.wrap(TaskIO, "resend_r2ts", make)


@mutant(
    "Recovery.Snack.DataAckDropsTask",
    "recovery",
    "a DataACK drops everything kept for its task, so an R-Data SNACK after it is "
    "rejected instead of resending the unacknowledged data and the tagged SCSI Response "
    "(11.16.2, 11.16.3; the target's behaviour before)",
    catches=["FullFeature.Snack.Erl1.RDataSnackAfterDataAck"],
)
def data_ack_drops_task(p: Patcher) -> None:
    def handle(self: Connection, pdu: P.SnackRequest) -> bool:
        if self.erl == 0 or pdu.snack_type & 0x0F != SnackType.DATA_ACK:
            return False
        for itt, task in list(self._held.items()):
            if task.ack_ttt == pdu.ttt:
                del self._held[itt]
        return True

    _snack(p, handle)


@mutant(
    "Recovery.Snack.DataAckFreesAllData",
    "recovery",
    "a DataACK frees all the Data-In kept for its task, past its BegRun: an R-Data SNACK "
    "after it brings back only the tagged SCSI Response, not the unacknowledged data "
    "(11.16.3)",
    catches=["FullFeature.Snack.Erl1.RDataSnackAfterDataAck"],
)
def data_ack_frees_all(p: Patcher) -> None:
    from iscsi_conformance.target.task import Task, TaskIO

    def data_acked(self: TaskIO, task: Task, begrun: int) -> bool:
        task.sent_base = (task.sent_base + len(task.sent_datain)) & 0xFFFFFFFF
        task.sent_datain.clear()
        return True

    p.replace(TaskIO, "data_acked", data_acked)


@mutant(
    "Recovery.Snack.DataAckRejected",
    "recovery",
    "a DataACK at ERL 1 is rejected (Protocol Error) instead of freeing the acknowledged "
    "Data-In (11.16: every SNACK type at ERL > 0)",
    catches=["FullFeature.Snack.Erl1.RDataSnackAfterDataAck"],
)
def data_ack_rejected(p: Patcher) -> None:
    from iscsi_conformance.core.codes import RejectReason

    def handle(self: Connection, pdu: P.SnackRequest) -> bool:
        if self.erl > 0 and pdu.snack_type & 0x0F == SnackType.DATA_ACK:
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return True
        return False

    _snack(p, handle)
