"""Data-In: DataSN, buffer offsets, the F and S bits, segment lengths and residuals
(RFC 7143 11.4.5, 11.7)."""

from __future__ import annotations

import dataclasses
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.mutation.mutants._helpers import fields, rewrite
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.task import TaskIO

_WITH_RESIDUAL = (P.ScsiResponse, P.ScsiDataIn)


@mutant(
    "Data.DataSN.StartsAtOne",
    "data",
    "the first Data-In of a command carries DataSN 1 (11.7.4: from 0)",
    catches=["FullFeature.DataIn", "FullFeature.Scsi"],
)
def datasn_one(p: Patcher) -> None:
    fields(p, P.ScsiDataIn, datasn=lambda pdu: pdu.datasn + 1)


@mutant(
    "Data.DataSN.NotIncremented",
    "data",
    "every Data-In of a command carries DataSN 0 (11.7.4)",
    catches=["FullFeature.DataIn"],
)
def datasn_zero(p: Patcher) -> None:
    fields(p, P.ScsiDataIn, datasn=0)


@mutant(
    "Data.Offset.AlwaysZero",
    "data",
    "every Data-In carries Buffer Offset 0 (11.7.5)",
    catches=["FullFeature.DataIn", "FullFeature.Scsi.WriteReadBack"],
)
def offset_zero(p: Patcher) -> None:
    fields(p, P.ScsiDataIn, buffer_offset=0)


@mutant(
    "Data.Offset.Shifted",
    "data",
    "Data-In after the first carry a Buffer Offset 512 bytes too far (11.7.5)",
    catches=["FullFeature.DataIn", "FullFeature.Scsi.WriteReadBack"],
)
def offset_shifted(p: Patcher) -> None:
    fields(
        p,
        P.ScsiDataIn,
        lambda pdu: pdu.buffer_offset > 0,
        buffer_offset=lambda pdu: pdu.buffer_offset + 512,
    )


@mutant(
    "Data.Flags.StatusWithoutFinal",
    "data",
    "the Data-In carrying the status has S set but not F (11.7.1: S only with F)",
    catches=["FullFeature.DataIn.StatusWithFinal"],
)
def status_without_final(p: Patcher) -> None:
    fields(p, P.ScsiDataIn, lambda pdu: pdu.status_present, final=False)


@mutant(
    "Data.Flags.NoFinalAtBurstEnd",
    "data",
    "Data-In sequences end without F except the last (11.7.1: F ends each sequence)",
    catches=["FullFeature.DataIn"],
)
def no_final(p: Patcher) -> None:
    fields(p, P.ScsiDataIn, lambda pdu: pdu.final and not pdu.status_present, final=False)


@mutant(
    "Data.Flags.NoPhaseCollapseStatusTwice",
    "data",
    "a read's status comes both in its last Data-In (S) and in a SCSI Response (11.7.4: one status)",
    catches=["FullFeature.DataIn.StatusWithFinal", "FullFeature.Sequencing.StatSNIncrements"],
)
def status_twice(p: Patcher) -> None:
    def fn(conn: Any, pdu: P.PDU, stream: Any) -> Any:
        if isinstance(pdu, P.ScsiDataIn) and pdu.status_present:
            rsp = P.ScsiResponse(
                status=pdu.status, itt=pdu.itt, statsn=pdu.statsn, expcmdsn=pdu.expcmdsn,
                maxcmdsn=pdu.maxcmdsn, underflow=pdu.underflow, overflow=pdu.overflow,
                residual_count=pdu.residual_count,
            )  # fmt: skip
            return [pdu, rsp]
        return pdu

    p.rewrite_output(fn)


@mutant(
    "Data.Segment.AboveDeclaredLength",
    "data",
    "Data-In segments are twice the initiator's MaxRecvDataSegmentLength (13.12)",
    catches=["FullFeature.DataIn.WithinDeclaredLength"],
)
def segment_too_long(p: Patcher) -> None:
    def post(self: Connection, *args: Any) -> None:
        self.max_send *= 2

    p.after(Connection, "enter_full_feature", post)


@mutant(
    "Data.Segment.DefaultIgnored",
    "data",
    "when the initiator declares no MaxRecvDataSegmentLength, the target sends 64 KiB segments (13.12: 8192)",
    catches=["FullFeature.DataIn.DefaultWhenUndeclared"],
)
def default_ignored(p: Patcher) -> None:
    def post(self: Connection, *args: Any) -> None:
        neg = self.login.neg
        if neg is not None and "MaxRecvDataSegmentLength" not in neg.peer_declared:
            self.max_send = 65536

    p.after(Connection, "enter_full_feature", post)


@mutant(
    "Data.Residual.UnderflowNotReported",
    "data",
    "a read shorter than the expected length is reported without U and residual (11.4.5.1)",
    catches=["FullFeature.Residuals.Underflow"],
)
def underflow(p: Patcher) -> None:
    for cls in _WITH_RESIDUAL:
        fields(p, cls, lambda pdu: pdu.underflow, underflow=False, residual_count=0)


@mutant(
    "Data.Residual.OverflowNotReported",
    "data",
    "a read longer than the expected length is reported without O and residual (11.4.5.1)",
    catches=["FullFeature.Residuals.Overflow"],
)
def overflow(p: Patcher) -> None:
    for cls in _WITH_RESIDUAL:
        fields(p, cls, lambda pdu: pdu.overflow, overflow=False, residual_count=0)


@mutant(
    "Data.Residual.CountOffByOne",
    "data",
    "residual counts are one byte too high (11.4.5.2)",
    catches=["FullFeature.Residuals", "FullFeature.Errors.WriteUnderflow"],
)
def residual_off(p: Patcher) -> None:
    for cls in _WITH_RESIDUAL:
        fields(
            p,
            cls,
            lambda pdu: pdu.overflow or pdu.underflow,
            residual_count=lambda pdu: pdu.residual_count + 1,
        )


@mutant(
    "Data.Residual.OverflowDataSent",
    "data",
    "a read longer than the expected length sends all its data, beyond the EDTL (11.4.5.1)",
    catches=["FullFeature.Residuals.Overflow", "FullFeature.DataIn.WithinDeclaredLength"],
)
def overflow_data(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def complete(self: TaskIO, task: Any, status: int, sense: bytes, data: bytes) -> None:
            if len(data) > task.edtl and not (task.write and not task.read) and task.edtl:
                saved = task.edtl
                task.edtl = len(data)
                try:
                    old(self, task, status, sense, data)
                finally:
                    task.edtl = saved
                return
            old(self, task, status, sense, data)

        return complete

    p.wrap(TaskIO, "_complete", make)


@mutant(
    "Data.Residual.WriteMismatchIgnored",
    "data",
    "a write whose EDTL differs from the CDB's length is reported without residual (11.4.5.1)",
    catches=["FullFeature.Errors.WriteUnderflow", "FullFeature.Errors.WriteOverflow"],
)
def write_mismatch(p: Patcher) -> None:
    def post(self: TaskIO, pdu: P.ScsiCommand, **kw: Any) -> None:
        s = self.session
        task = s.tasks.get(pdu.itt) if s is not None else None
        if task is not None:
            task.residual_mismatch = 0

    p.after(TaskIO, "_create_task", post)


@mutant(
    "Data.ExpDataSN.Wrong",
    "data",
    "a SCSI Response after Data-In reports ExpDataSN one too high (11.4.8)",
    catches=["FullFeature.DataIn", "FullFeature.Scsi"],
)
def expdatasn(p: Patcher) -> None:
    fields(p, P.ScsiResponse, expdatasn=lambda pdu: pdu.expdatasn + 1)


@mutant(
    "Data.DataIn.TargetTransferTagSet",
    "data",
    "Data-In without the A bit carry a Target Transfer Tag other than 0xffffffff (11.7.2)",
    catches=["FullFeature.DataIn"],
)
def datain_ttt(p: Patcher) -> None:
    fields(p, P.ScsiDataIn, lambda pdu: not pdu.ack, ttt=0x1234)


@mutant(
    "Data.DataIn.WrongTaskTag",
    "data",
    "Data-In carry another Initiator Task Tag than their command's (11.7)",
    catches=["FullFeature.Scsi", "FullFeature.DataIn"],
)
def datain_itt(p: Patcher) -> None:
    fields(p, P.ScsiDataIn, itt=lambda pdu: pdu.itt ^ 0x10000)


@mutant(
    "Data.DataIn.PayloadCorrupted",
    "data",
    "the last byte of every Data-In payload is flipped (the data read is not the data stored)",
    catches=["FullFeature.Scsi.WriteReadBack", "Interop.Data.WriteReadBack"],
)
def payload(p: Patcher) -> None:
    def change(pdu: Any) -> Any:
        if not pdu.data:
            return pdu
        data = bytes(pdu.data)
        return dataclasses.replace(pdu, data=data[:-1] + bytes([data[-1] ^ 0xFF]))

    rewrite(p, P.ScsiDataIn, change)
