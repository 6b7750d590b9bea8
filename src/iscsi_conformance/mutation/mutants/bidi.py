"""Bidirectional commands: XDWRITEREAD(10), the Bidirectional Read AHS, the shared
R2T/Data-In numbering, the status and the read residual (RFC 7143 11.3.4, 4.2.2.4,
11.7.3, 11.4.6; SBC-3 5.48). Each is killed by a FullFeature.Bidi test."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import ScsiStatus
from iscsi_conformance.mutation.mutants._helpers import fields
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.scsi.cdb import decode_block_cdb
from iscsi_conformance.scsi.device import LogicalUnit, ScsiOutcome
from iscsi_conformance.target.task import Task, TaskIO

_BIDI = ("FullFeature.Bidi",)


@mutant(
    "Data.Bidi.XorNotApplied",
    "data",
    "XDWRITEREAD(10) returns the blocks as they were instead of their XOR with the "
    "Data-Out (SBC-3 5.48)",
    catches=["FullFeature.Bidi.XdWriteReadRoundTrip", "FullFeature.Bidi.DisableWrite"],
    suites=_BIDI,
)
def xor_not_applied(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def xdwriteread(self: LogicalUnit, ctx: Any) -> ScsiOutcome:
            try:
                b = decode_block_cdb(ctx.cdb)
                before = self.backing.read(b.lba * self.block_size, b.blocks * self.block_size)
            except Exception:
                return old(self, ctx)  # type: ignore[no-any-return]
            outcome: ScsiOutcome = old(self, ctx)
            if outcome.status != ScsiStatus.GOOD or not outcome.data:
                return outcome
            return ScsiOutcome(ScsiStatus.GOOD, data=bytes(before))

        return xdwriteread

    p.wrap(LogicalUnit, "_xdwriteread", make)


@mutant(
    "Data.Bidi.AhsIgnored",
    "data",
    "the Bidirectional Read Expected Data Transfer Length AHS is ignored: the read part "
    "is measured against the write part's EDTL (11.3.4)",
    catches=["FullFeature.Bidi.ReadResidualOverflow"],
    suites=_BIDI,
)
def ahs_ignored(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def init(self: Task, conn: Any, cmd: P.ScsiCommand, lun: int, lu: Any) -> None:
            old(self, conn, cmd, lun, lu)
            if self.bidi:
                self.read_edtl = self.edtl

        return init

    p.wrap(Task, "__init__", make)


@mutant(
    "Data.Bidi.DataSnFromZero",
    "data",
    "the read part of a bidirectional command numbers its Data-In from 0 after the R2Ts "
    "instead of going on from the last R2TSN (4.2.2.4, 11.7.5)",
    catches=["FullFeature.Bidi.SharedNumbering"],
    suites=_BIDI,
)
def datasn_from_zero(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def send(self: TaskIO, task: Task, data: bytes, **kw: Any) -> int:
            task.r2tsn = 0
            return old(self, task, data, **kw)  # type: ignore[no-any-return]

        return send

    p.wrap(TaskIO, "_send_bidi_data_in", make)


@mutant(
    "Data.Bidi.AnsweredAsRead",
    "data",
    "a bidirectional command is answered as a read: the status in its last Data-In "
    "(phase collapse, which 11.7.3 forbids for bidirectional commands)",
    catches=["FullFeature.Bidi.StatusInResponse"],
    suites=_BIDI,
)
def answered_as_read(p: Patcher) -> None:
    def complete(
        self: TaskIO, task: Task, status: int, sense: bytes, data: bytes, write_mismatch: int
    ) -> None:
        self._complete(task, status, sense, data)

    p.replace(TaskIO, "_complete_bidi", complete)


@mutant(
    "Data.Bidi.ResidualOffByOneBlock",
    "data",
    "the Bidirectional Read Residual Count is one block more than the bytes not sent "
    "(11.4.6: valid when o or u is set)",
    catches=["FullFeature.Bidi.ReadResidualOverflow"],
    suites=_BIDI,
)
def residual_off(p: Patcher) -> None:
    fields(
        p,
        P.ScsiResponse,
        lambda pdu: pdu.bidi_overflow or pdu.bidi_underflow,
        bidi_residual_count=lambda pdu: pdu.bidi_residual_count + 512,
    )


@mutant(
    "Data.Bidi.ReadPartNotKeptForSnack",
    "data",
    "the Data-In of a bidirectional command's read part is not kept at ErrorRecoveryLevel "
    "1, so a Data SNACK for it is rejected instead of answered (11.16)",
    catches=["FullFeature.Snack.Erl1.BidiDataSnackResends"],
    suites=("FullFeature.Snack.Erl1",),
)
def read_part_not_kept(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def send(self: TaskIO, task: Task, data: bytes, **kw: Any) -> int:
            count: int = old(self, task, data, **kw)
            task.sent_datain = []
            return count

        return send

    p.wrap(TaskIO, "_send_bidi_data_in", make)


@mutant(
    "Data.Bidi.ReassignStatusOnly",
    "data",
    "after a TASK REASSIGN a finished bidirectional command resends only its status, not "
    "its unacknowledged Data-In from ExpDataSN (11.5.6)",
    catches=["FullFeature.Recovery.Erl2.BidiReassigned"],
    suites=("FullFeature.Recovery.Erl2",),
)
def reassign_status_only(p: Patcher) -> None:
    def resume(self: TaskIO, task: Task, expdatasn: int) -> None:
        assert task.reply is not None
        status, sense, _, overflow, underflow, residual = task.reply
        bidi_over, bidi_under, bidi_residual = task.bidi_reply or (False, False, 0)
        self._respond(
            task, status, sense, overflow=overflow, underflow=underflow, residual=residual,
            bidi_overflow=bidi_over, bidi_underflow=bidi_under, bidi_residual=bidi_residual,
        )  # fmt: skip

    p.replace(TaskIO, "_resume_bidi", resume)
