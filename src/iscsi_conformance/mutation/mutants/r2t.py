"""Write data: R2T (R2TSN, offsets, burst sizes, MaxOutstandingR2T), Data-Out checks,
immediate and unsolicited data (RFC 7143 11.7, 11.8, 13.10, 13.11, 13.13, 13.14, 13.17)."""

from __future__ import annotations

import dataclasses
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.mutation.mutants._helpers import fields, params
from iscsi_conformance.mutation.patching import Patcher, swapped
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.task import NONE_TAG, Task, TaskIO


def _with_params(p: Patcher, method: str, **changes: Any) -> None:
    """While ``TaskIO.method`` runs, the connection's parameters read ``changes``."""

    def make(old: Any) -> Any:
        def run(self: TaskIO, *args: Any, **kw: Any) -> Any:
            with swapped(self, "params", params(self, **changes)):
                return old(self, *args, **kw)

        return run

    p.wrap(TaskIO, method, make)


@mutant(
    "R2T.R2TSN.StartsAtOne",
    "r2t",
    "the first R2T of a command carries R2TSN 1 (11.8.6: from 0)",
    catches=["FullFeature.DataOut.R2TSequencing"],
)
def r2tsn_one(p: Patcher) -> None:
    def post(self: Task, *args: Any) -> None:
        self.r2tsn = 1

    p.after(Task, "__init__", post)


@mutant(
    "R2T.R2TSN.NotIncremented",
    "r2t",
    "every R2T of a command carries R2TSN 0 (11.8.6)",
    catches=["FullFeature.DataOut.R2TSequencing"],
)
def r2tsn_zero(p: Patcher) -> None:
    fields(p, P.R2T, r2tsn=0)


@mutant(
    "R2T.Offset.IgnoresImmediateData",
    "r2t",
    "R2Ts solicit from offset 0 again, the immediate and unsolicited data included (11.8.4)",
    catches=["FullFeature.DataOut.R2TSequencing"],
)
def offset_from_zero(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def solicit(self: TaskIO, task: Any) -> None:
            if (
                not task.pending_ranges
                and not task.outstanding
                and task.next_offset < task.expected
            ):
                task.next_offset = 0
            old(self, task)

        return solicit

    p.wrap(TaskIO, "_solicit", make)


@mutant(
    "R2T.Burst.AboveMaxBurstLength",
    "r2t",
    "R2Ts ask for up to twice MaxBurstLength (11.8.5, 13.13)",
    catches=["FullFeature.DataOut.R2TSequencing"],
)
def burst_too_long(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def solicit(self: TaskIO, task: Any) -> None:
            with swapped(
                self, "params", params(self, max_burst_length=2 * self.params.max_burst_length)
            ):
                old(self, task)

        return solicit

    p.wrap(TaskIO, "_solicit", make)


@mutant(
    "R2T.Outstanding.AboveMaxOutstandingR2T",
    "r2t",
    "more R2Ts are in flight than MaxOutstandingR2T (13.17)",
    catches=["FullFeature.DataOut.MaxOutstandingR2T"],
)
def too_many_r2t(p: Patcher) -> None:
    _with_params(p, "_solicit", max_outstanding_r2t=64)


@mutant(
    "R2T.TargetTransferTag.Reserved",
    "r2t",
    "R2Ts carry the reserved Target Transfer Tag 0xffffffff (11.8.2)",
    catches=["FullFeature.DataOut.R2TSequencing"],
)
def r2t_reserved_ttt(p: Patcher) -> None:
    fields(p, P.R2T, ttt=NONE_TAG)


@mutant(
    "R2T.Length.Zero",
    "r2t",
    "the last R2T of a command asks for 0 bytes more than it should (11.8.5: 0 is an error)",
    catches=["FullFeature.DataOut.R2TSequencing"],
)
def r2t_short(p: Patcher) -> None:
    fields(
        p,
        P.R2T,
        lambda pdu: pdu.desired_data_transfer_length > 512,
        desired_data_transfer_length=lambda pdu: pdu.desired_data_transfer_length - 512,
    )


@mutant(
    "R2T.Immediate.AcceptedWhenDisabled",
    "r2t",
    "immediate data is accepted although ImmediateData=No was negotiated (13.11)",
    catches=["FullFeature.Errors.ImmediateDataWhenDisabled"],
)
def immediate_disabled(p: Patcher) -> None:
    # the early check (_refused, RFC 7143 7.3) and the task's own both see Yes
    _with_params(p, "_refused", immediate_data=True)
    _with_params(p, "_create_task", immediate_data=True)


@mutant(
    "R2T.Immediate.AboveFirstBurstAccepted",
    "r2t",
    "immediate data longer than FirstBurstLength is accepted (13.14)",
    catches=["FullFeature.Errors.ImmediateDataOverFirstBurst"],
)
def immediate_over_fbl(p: Patcher) -> None:
    _with_params(p, "_refused", first_burst_length=1 << 24)
    _with_params(p, "_create_task", first_burst_length=1 << 24)


@mutant(
    "R2T.Immediate.DataDropped",
    "r2t",
    "immediate data is counted as received but not stored (the written data is lost)",
    catches=["FullFeature.Scsi.WriteReadBack", "Interop.Data.WriteReadBack"],
)
def immediate_dropped(p: Patcher) -> None:
    def post(self: TaskIO, pdu: P.ScsiCommand, **kw: Any) -> None:
        s = self.session
        task = s.tasks.get(pdu.itt) if s is not None else None
        if task is not None and task.buffer is not None and pdu.data:
            n = min(len(pdu.data), len(task.buffer))
            task.buffer[:n] = bytes(n)

    p.after(TaskIO, "_create_task", post)


@mutant(
    "R2T.Unsolicited.AcceptedWhenInitialR2T",
    "r2t",
    "unsolicited Data-Out is accepted although InitialR2T=Yes (13.10)",
    catches=["FullFeature.Errors.UnsolicitedDataOutWhenInitialR2T"],
)
def unsolicited_initial_r2t(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            task = s.tasks.get(pdu.itt) if s is not None else None
            if (
                pdu.ttt == NONE_TAG
                and task is not None
                and self.params.initial_r2t
                and not task.r2tsn
            ):
                task.unsolicited_done = False
                with swapped(self, "params", params(self, initial_r2t=False)):
                    old(self, pdu, now)
                return
            old(self, pdu, now)

        return on_data_out

    p.wrap(TaskIO, "on_data_out", make)


@mutant(
    "R2T.Unsolicited.AboveFirstBurstAccepted",
    "r2t",
    "unsolicited Data-Out beyond FirstBurstLength is accepted (13.14)",
    catches=["FullFeature.DataOut.R2TSequencing", "FullFeature.Errors"],
)
def unsolicited_over_fbl(p: Patcher) -> None:
    _with_params(p, "on_data_out", first_burst_length=1 << 24)


@mutant(
    "R2T.DataOut.UnknownTttIgnored",
    "r2t",
    "a Data-Out with a Target Transfer Tag the target never gave is dropped silently (11.7.2: Reject)",
    catches=["FullFeature.Errors.DataOutUnknownTtt"],
)
def unknown_ttt(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            task = s.tasks.get(pdu.itt) if s is not None else None
            if task is not None and pdu.ttt != NONE_TAG and pdu.ttt not in task.outstanding:
                return
            old(self, pdu, now)

        return on_data_out

    p.wrap(TaskIO, "on_data_out", make)


@mutant(
    "R2T.DataOut.UnknownIttIgnored",
    "r2t",
    "a Data-Out for a task tag the target does not know is dropped silently (11.7: Reject)",
    catches=["FullFeature.Errors.DataOutUnknownItt"],
)
def unknown_itt(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            if s is not None and pdu.itt not in s.tasks:
                return
            old(self, pdu, now)

        return on_data_out

    p.wrap(TaskIO, "on_data_out", make)


@mutant(
    "R2T.DataOut.DataSNNotChecked",
    "r2t",
    "the DataSN of solicited Data-Out is not checked (11.7.4)",
    catches=["FullFeature.DataOut", "FullFeature.Errors"],
)
def datasn_unchecked(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            task = s.tasks.get(pdu.itt) if s is not None else None
            r2t = task.outstanding.get(pdu.ttt) if task is not None else None
            if r2t is not None:
                pdu = dataclasses.replace(pdu, datasn=r2t.next_datasn)
            elif task is not None and pdu.ttt == NONE_TAG:
                pdu = dataclasses.replace(pdu, datasn=task.unsolicited_next_datasn)
            old(self, pdu, now)

        return on_data_out

    p.wrap(TaskIO, "on_data_out", make)


@mutant(
    "R2T.DataOut.OutsideR2TStored",
    "r2t",
    "Data-Out outside the range of its R2T is stored instead of rejected (11.7.5, 11.8.4)",
    catches=["FullFeature.DataOut", "FullFeature.Errors"],
)
def outside_range(p: Patcher) -> None:
    # The R2T's range is widened only for the range check: the end of the R2T's
    # sequence (_r2t_done, run on the F bit) still sees the real offset and length,
    # so in-range Data-Out is handled as before.
    real: dict[int, tuple[int, int]] = {}

    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            task = s.tasks.get(pdu.itt) if s is not None else None
            r2t = task.outstanding.get(pdu.ttt) if task is not None else None
            if r2t is None:
                old(self, pdu, now)
                return
            off, ln = r2t.offset, r2t.length
            real[id(r2t)] = (off, ln)
            r2t.offset, r2t.length = 0, 1 << 30
            try:
                old(self, pdu, now)
            finally:
                real.pop(id(r2t), None)
                r2t.offset, r2t.length = off, ln

        return on_data_out

    def make_done(old: Any) -> Any:
        def r2t_done(self: TaskIO, task: Any, r2t: Any) -> Any:
            orig = real.get(id(r2t))
            if orig is None:
                return old(self, task, r2t)
            widened = (r2t.offset, r2t.length)
            r2t.offset, r2t.length = orig
            try:
                return old(self, task, r2t)
            finally:
                r2t.offset, r2t.length = widened

        return r2t_done

    p.wrap(TaskIO, "on_data_out", make)
    p.wrap(TaskIO, "_r2t_done", make_done)


@mutant(
    "R2T.DataOut.FinalIgnored",
    "r2t",
    "the F bit of the last Data-Out of a burst is ignored: the command waits for more (11.7.1)",
    catches=["FullFeature.DataOut", "FullFeature.Scsi.WriteReadBack"],
)
def final_ignored(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            task = s.tasks.get(pdu.itt) if s is not None else None
            r2t = task.outstanding.get(pdu.ttt) if task is not None else None
            if r2t is not None and pdu.final and r2t.received + len(pdu.data) < r2t.length:
                pdu = dataclasses.replace(pdu, final=False)
            old(self, pdu, now)

        return on_data_out

    p.wrap(TaskIO, "on_data_out", make)


@mutant(
    "R2T.DataOut.OutOfOrderPdusRefused",
    "r2t",
    "a Data-Out PDU whose Buffer Offset is not where the sequence's data so far ends is "
    "rejected even with DataPDUInOrder=No agreed (13.18: any order within a sequence)",
    catches=["FullFeature.DataOut.PdusInAnyOrder"],
)
def out_of_order_refused(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            task = s.tasks.get(pdu.itt) if s is not None else None
            r2t = task.outstanding.get(pdu.ttt) if task is not None else None
            if r2t is not None and pdu.buffer_offset != r2t.offset + r2t.received:
                self._sequence_error(pdu, "Data-Out not at the next offset")
                return
            old(self, pdu, now)

        return on_data_out

    p.wrap(TaskIO, "on_data_out", make)


@mutant(
    "R2T.DataOut.OutOfOrderSequencesRefused",
    "r2t",
    "a Data-Out sequence for an R2T other than the oldest outstanding one is rejected "
    "even with DataSequenceInOrder=No agreed (13.19: sequences in any order)",
    catches=["FullFeature.DataOut.SequencesInAnyOrder"],
)
def out_of_order_sequences_refused(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_data_out(self: TaskIO, pdu: P.ScsiDataOut, now: float) -> None:
            s = self.session
            task = s.tasks.get(pdu.itt) if s is not None else None
            r2t = task.outstanding.get(pdu.ttt) if task is not None else None
            if r2t is not None and r2t.r2tsn != min(r.r2tsn for r in task.outstanding.values()):
                self._sequence_error(pdu, "Data-Out for a later R2T first")
                return
            old(self, pdu, now)

        return on_data_out

    p.wrap(TaskIO, "on_data_out", make)
