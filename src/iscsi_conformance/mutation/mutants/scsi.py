"""SCSI status, sense data and unit attentions (SAM-5 5.3, 5.14; SPC-4 4.5, 6; SBC-3)."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import ScsiStatus
from iscsi_conformance.mutation.mutants._helpers import fields, rewrite
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.scsi import nolu
from iscsi_conformance.scsi.device import LogicalUnit, ScsiOutcome
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.task import TaskIO

_CHECK = ScsiStatus.CHECK_CONDITION


def _outcome(p: Patcher, change: Any) -> None:
    """``LogicalUnit.execute``'s outcome becomes ``change(self, nexus, cdb, outcome)``."""

    def make(old: Any) -> Any:
        def execute(
            self: LogicalUnit, nexus: Any, cdb: bytes, data_out: bytes = b"", **kw: Any
        ) -> Any:
            return change(self, nexus, bytes(cdb), old(self, nexus, cdb, data_out, **kw))

        return execute

    p.wrap(LogicalUnit, "execute", make)


def _sense_key(sense: bytes) -> int:
    if not sense:
        return -1
    return sense[1] & 0x0F if sense[0] & 0x7F in (0x72, 0x73) else sense[2] & 0x0F


def _asc(sense: bytes) -> int:
    if len(sense) < 14:
        return -1
    return (
        sense[2] << 8 | sense[3] if sense[0] & 0x7F in (0x72, 0x73) else sense[12] << 8 | sense[13]
    )


@mutant(
    "Scsi.UnitAttention.NeverRaised",
    "scsi",
    "no unit attention is ever reported: not at first access, not after a reset (SAM-5 5.14, 6.3)",
    catches=["FullFeature.TaskManagement.LunReset", "Reservations"],
)
def no_ua(p: Patcher) -> None:
    p.noop(LogicalUnit, "_queue_ua")

    def post(self: LogicalUnit, *args: Any) -> None:
        self._ua.clear()

    p.after(LogicalUnit, "reset", post)
    p.after(LogicalUnit, "nexus_lost", post)


@mutant(
    "Scsi.UnitAttention.NotCleared",
    "scsi",
    "a reported unit attention is reported again on every command (SAM-5 5.14: cleared once reported)",
    catches=["FullFeature.Scsi", "Interop.Data"],
)
def ua_sticky(p: Patcher) -> None:
    def change(self: LogicalUnit, nexus: Any, cdb: bytes, out: ScsiOutcome) -> ScsiOutcome:
        if out.status == _CHECK and _sense_key(out.sense) == 0x06:
            q = self._ua.setdefault(nexus, [])
            from iscsi_conformance.scsi.codes import Asc

            code = Asc(_asc(out.sense))
            if code not in q:
                q.insert(0, code)
        return out

    _outcome(p, change)


@mutant(
    "Scsi.UnitAttention.OnInquiry",
    "scsi",
    "INQUIRY, REPORT LUNS and REQUEST SENSE report a pending unit attention (SAM-5 5.14: they are exempt)",
    catches=["FullFeature.Scsi.InquiryStandard", "FullFeature.Scsi.ReportLuns"],
)
def ua_on_inquiry(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def lookup(self: LogicalUnit, cdb: bytes) -> Any:
            spec = old(self, cdb)
            return (
                dataclasses.replace(spec, ua_exempt=False)
                if spec is not None and spec.ua_exempt
                else spec
            )

        return lookup

    p.wrap(LogicalUnit, "lookup", make)


@mutant(
    "Scsi.UnitAttention.LunResetNone",
    "scsi",
    "LOGICAL UNIT RESET raises no unit attention for the other I_T nexuses (SAM-5 6.3.3)",
    catches=["FullFeature.TaskManagement.LunReset"],
)
def lun_reset_no_ua(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def reset(self: LogicalUnit, kind: Any = None) -> None:
            saved = {n: list(q) for n, q in self._ua.items()}
            old(self) if kind is None else old(self, kind)
            self._ua = saved

        return reset

    p.wrap(LogicalUnit, "reset", make)


@mutant(
    "Scsi.RequestSense.UnitAttentionNotReported",
    "scsi",
    "REQUEST SENSE answers NO SENSE while a unit attention is pending (SPC-4 6.29)",
    catches=["FullFeature.Errors.RequestSenseNothingPending", "FullFeature.Scsi"],
)
def request_sense_ua(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def request_sense(self: LogicalUnit, ctx: Any) -> Any:
            saved = self._ua.pop(ctx.nexus, None)
            try:
                return old(self, ctx)
            finally:
                if saved is not None:
                    self._ua[ctx.nexus] = saved

        return request_sense

    p.wrap(LogicalUnit, "_request_sense", make)


@mutant(
    "Scsi.RequestSense.CheckConditionWhenNothingPending",
    "scsi",
    "REQUEST SENSE with nothing pending ends in CHECK CONDITION instead of GOOD with NO SENSE (SPC-4 6.29)",
    catches=["FullFeature.Errors.RequestSenseNothingPending"],
)
def request_sense_check(p: Patcher) -> None:
    def post(self: LogicalUnit, out: ScsiOutcome, ctx: Any) -> ScsiOutcome:
        if out.data and _sense_key(out.data) == 0:
            return ScsiOutcome(_CHECK, sense=out.data)
        return out

    p.after(LogicalUnit, "_request_sense", post, result=True)


@mutant(
    "Scsi.Sense.Missing",
    "scsi",
    "CHECK CONDITION is sent without sense data (SAM-5 5.13, RFC 7143 11.4.7)",
    catches=["FullFeature.Errors.UnmappedLunCheckCondition", "FullFeature.Scsi.InquiryInvalidPage"],
)
def sense_missing(p: Patcher) -> None:
    fields(p, P.ScsiResponse, lambda pdu: pdu.status == _CHECK, data=b"")


@mutant(
    "Scsi.Sense.KeyWrong",
    "scsi",
    "the sense key of every CHECK CONDITION is ABORTED COMMAND (SPC-4 4.5)",
    catches=["FullFeature.Errors.UnmappedLunCheckCondition", "FullFeature.Scsi.InquiryInvalidPage"],
)
def sense_key(p: Patcher) -> None:
    def change(pdu: Any) -> Any:
        if pdu.status != _CHECK or len(pdu.data) < 5:
            return pdu
        data = bytearray(pdu.data)
        i = 3 if data[2] & 0x7F in (0x72, 0x73) else 4
        data[i] = (data[i] & 0xF0) | 0x0B
        return dataclasses.replace(pdu, data=bytes(data))

    rewrite(p, P.ScsiResponse, change)


@mutant(
    "Scsi.Sense.AscWrong",
    "scsi",
    "the additional sense code of every CHECK CONDITION is 0 (no additional information) (SPC-4 4.5)",
    catches=["FullFeature.Errors.UnmappedLunCheckCondition", "FullFeature.Scsi.InquiryInvalidPage"],
)
def sense_asc(p: Patcher) -> None:
    def change(pdu: Any) -> Any:
        if pdu.status != _CHECK or len(pdu.data) < 16:
            return pdu
        data = bytearray(pdu.data)
        if data[2] & 0x7F in (0x72, 0x73):
            data[4:6] = b"\0\0"
        else:
            data[14:16] = b"\0\0"
        return dataclasses.replace(pdu, data=bytes(data))

    rewrite(p, P.ScsiResponse, change)


@mutant(
    "Scsi.Sense.LengthFieldWrong",
    "scsi",
    "the SenseLength field of a SCSI Response counts two bytes too many (11.4.7.2)",
    catches=["FullFeature.Errors.UnmappedLunCheckCondition"],
)
def sense_length(p: Patcher) -> None:
    def change(pdu: Any) -> Any:
        if len(pdu.data) < 2:
            return pdu
        n = int.from_bytes(pdu.data[:2], "big") + 2
        return dataclasses.replace(pdu, data=n.to_bytes(2, "big") + pdu.data[2:])

    rewrite(p, P.ScsiResponse, change)


@mutant(
    "Scsi.Status.InvalidOpcodeGood",
    "scsi",
    "a command the logical unit does not support ends GOOD (SPC-4 4.5.6: INVALID COMMAND OPERATION CODE)",
    catches=["FullFeature.Scsi"],
)
def invalid_opcode(p: Patcher) -> None:
    def change(self: LogicalUnit, nexus: Any, cdb: bytes, out: ScsiOutcome) -> ScsiOutcome:
        if out.status == _CHECK and _asc(out.sense) == 0x2000:
            return ScsiOutcome(ScsiStatus.GOOD)
        return out

    _outcome(p, change)


@mutant(
    "Scsi.Status.InvalidFieldGood",
    "scsi",
    "a CDB with an invalid field ends GOOD (SPC-4 4.5.6: INVALID FIELD IN CDB)",
    catches=["FullFeature.Scsi.InquiryInvalidPage"],
)
def invalid_field(p: Patcher) -> None:
    def change(self: LogicalUnit, nexus: Any, cdb: bytes, out: ScsiOutcome) -> ScsiOutcome:
        if out.status == _CHECK and _asc(out.sense) == 0x2400:
            return ScsiOutcome(ScsiStatus.GOOD)
        return out

    _outcome(p, change)


@mutant(
    "Scsi.Status.BusyForTaskSetFull",
    "scsi",
    "every CHECK CONDITION becomes BUSY (SAM-5 5.3)",
    catches=["FullFeature.Errors.UnmappedLunCheckCondition", "FullFeature.Scsi.InquiryInvalidPage"],
)
def busy(p: Patcher) -> None:
    fields(p, P.ScsiResponse, lambda pdu: pdu.status == _CHECK, status=ScsiStatus.BUSY, data=b"")


@mutant(
    "Scsi.Status.ResponseCodeFailure",
    "scsi",
    "SCSI Responses carry iSCSI response 0x01 (target failure) though the command completed (11.4.3)",
    catches=["FullFeature.Scsi"],
)
def response_code(p: Patcher) -> None:
    fields(p, P.ScsiResponse, lambda pdu: pdu.status != 0, response=1)


@mutant(
    "Scsi.NoLu.CommandsGood",
    "scsi",
    "a command to a LUN with no logical unit ends GOOD (SPC-4 4.5.6: LOGICAL UNIT NOT SUPPORTED)",
    catches=["FullFeature.Errors.UnmappedLunCheckCondition"],
)
def nolu_good(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def respond(cdb: bytes, lun: int, luns: Any) -> Any:
            out = old(cdb, lun, luns)
            return ScsiOutcome(ScsiStatus.GOOD) if out.status == _CHECK else out

        return respond

    p.wrap(nolu, "respond", make)


@mutant(
    "Scsi.NoLu.InquiryQualifierZero",
    "scsi",
    "INQUIRY of a LUN with no logical unit reports qualifier 000b, a connected device (SPC-4 6.4.2: 011b)",
    catches=["FullFeature.Errors.InquiryUnmappedLun"],
)
def nolu_qualifier(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def inquiry(cdb: bytes) -> bytes:
            data = old(cdb)
            return bytes([0x00]) + data[1:] if data else data

        return inquiry

    p.wrap(nolu, "inquiry_data", make)


@mutant(
    "Scsi.NoLu.RequestSenseNoSense",
    "scsi",
    "REQUEST SENSE to a LUN with no logical unit answers NO SENSE (SPC-4 6.29: LOGICAL UNIT NOT SUPPORTED)",
    catches=["FullFeature.Errors.RequestSenseUnmappedLun"],
)
def nolu_request_sense(p: Patcher) -> None:
    p.wrap(
        nolu,
        "request_sense_data",
        lambda old: lambda cdb: bytes([0x70, 0, 0, 0, 0, 0, 0, 10]) + bytes(10),
    )


@mutant(
    "Scsi.Inquiry.VersionZero",
    "scsi",
    "standard INQUIRY data claims no conformance to any standard (VERSION 0) (SPC-4 6.4.2)",
    catches=["FullFeature.Scsi.InquiryStandard"],
)
def inquiry_version(p: Patcher) -> None:
    def post(self: LogicalUnit, data: bytes) -> bytes:
        return data[:2] + b"\0" + data[3:]

    p.after(LogicalUnit, "standard_inquiry", post, result=True)


@mutant(
    "Scsi.Inquiry.IscsiVersionUnclaimed",
    "scsi",
    "standard INQUIRY data keeps the iSCSI version descriptor at 0960h (no version claimed) "
    "whatever iSCSIProtocolLevel the session negotiated (RFC 7144 4.2)",
    catches=["FullFeature.Scsi.InquiryIscsiVersion"],
)
def inquiry_iscsi_version(p: Patcher) -> None:
    p.noop(LogicalUnit, "set_iscsi_protocol_level")


@mutant(
    "Scsi.Command.PriorityRejected",
    "scsi",
    "a SCSI Command whose Command Priority (byte 2) is not zero is rejected as an unknown "
    "command even below iSCSIProtocolLevel 2, where the field MUST be ignored (RFC 7144 5.1.1)",
    catches=["FullFeature.Scsi.CommandPriorityIgnored"],
)
def command_priority_rejected(p: Patcher) -> None:
    class PriorityRejecting(P.PDUDecoder):
        def next_pdu(self) -> Any:
            header = self.peek()
            pdu = super().next_pdu()
            if isinstance(pdu, P.ScsiCommand) and len(header) > 2 and header[2] & 0xF0:
                # the connection answers an UnknownPDU with a Reject carrying its header
                return P.UnknownPDU(opcode=header[0] & 0x3F, bhs=header, data=pdu.data)
            return pdu

    def post(conn: Connection, *args: Any, **kwargs: Any) -> None:
        conn.decoder.__class__ = PriorityRejecting  # the target's decoders alone

    p.after(Connection, "__init__", post)


@mutant(
    "Scsi.Inquiry.AdditionalLengthWrong",
    "scsi",
    "standard INQUIRY data's ADDITIONAL LENGTH is 4 bytes too short (SPC-4 6.4.2)",
    catches=["FullFeature.Scsi.InquiryStandard"],
)
def inquiry_length(p: Patcher) -> None:
    def post(self: LogicalUnit, data: bytes) -> bytes:
        return data[:4] + bytes([max(0, data[4] - 4)]) + data[5:]

    p.after(LogicalUnit, "standard_inquiry", post, result=True)


@mutant(
    "Scsi.ReportLuns.ListLengthWrong",
    "scsi",
    "REPORT LUNS gives a LUN LIST LENGTH 8 bytes too long (SPC-4 6.33)",
    catches=["FullFeature.Scsi.ReportLuns"],
)
def report_luns(p: Patcher) -> None:
    def post(self: LogicalUnit, out: ScsiOutcome, ctx: Any) -> ScsiOutcome:
        if len(out.data) >= 4:
            n = struct.unpack_from(">I", out.data)[0] + 8
            return dataclasses.replace(out, data=struct.pack(">I", n) + out.data[4:])
        return out

    p.after(LogicalUnit, "_report_luns", post, result=True)


@mutant(
    "Scsi.ReadCapacity.BlockCountNotLastLba",
    "scsi",
    "READ CAPACITY(16) returns the number of blocks instead of the last LBA (SBC-3 5.16)",
    catches=["FullFeature.Scsi.ReadCapacity16"],
)
def read_capacity(p: Patcher) -> None:
    def post(self: LogicalUnit, out: ScsiOutcome, ctx: Any) -> ScsiOutcome:
        if len(out.data) >= 8:
            n = struct.unpack_from(">Q", out.data)[0] + 1
            return dataclasses.replace(out, data=struct.pack(">Q", n) + out.data[8:])
        return out

    p.after(LogicalUnit, "_read_capacity16", post, result=True)


@mutant(
    "Scsi.Write.NotStored",
    "scsi",
    "WRITE ends GOOD without storing the data (SBC-3 5.32)",
    catches=["FullFeature.Scsi.WriteReadBack", "Interop.Data.WriteReadBack"],
)
def write_lost(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def write(self: LogicalUnit, ctx: Any) -> Any:
            from iscsi_conformance.scsi.device import _GOOD

            if ctx.cdb[0] in (0x0A, 0x2A, 0xAA, 0x8A):
                return _GOOD
            return old(self, ctx)

        return write

    p.wrap(LogicalUnit, "_write", make)


@mutant(
    "Scsi.Read.WrongBlock",
    "scsi",
    "READ returns the data of the next block (SBC-3 5.9)",
    catches=["FullFeature.Scsi.WriteReadBack", "Interop.Data.WriteReadBack"],
)
def read_shifted(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def read(self: LogicalUnit, ctx: Any) -> Any:
            from iscsi_conformance.scsi.cdb import decode_block_cdb

            out = old(self, ctx)
            if out.status == ScsiStatus.GOOD and out.data:
                b = decode_block_cdb(ctx.cdb)
                start = (b.lba + 1) * self.block_size
                if start + len(out.data) <= self.backing.size:
                    return dataclasses.replace(
                        out, data=bytes(self.backing.read(start, len(out.data)))
                    )
            return out

        return read

    p.wrap(LogicalUnit, "_read", make)


@mutant(
    "Scsi.Read.OutOfRangeGood",
    "scsi",
    "a READ beyond the capacity ends GOOD with zeros (SBC-3 4.5: LBA OUT OF RANGE)",
    catches=["FullFeature.Scsi"],
)
def out_of_range(p: Patcher) -> None:
    p.noop(LogicalUnit, "_check_range")


@mutant(
    "Scsi.Status.TaskSetFullOnFirstWrite",
    "scsi",
    "the first write of each session is answered TASK SET FULL with nothing to wait for (SAM-5 5.3)",
    catches=["FullFeature.Scsi.WriteReadBack", "Interop.Data.WriteReadBack"],
)
def task_set_full(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def create(self: TaskIO, pdu: P.ScsiCommand, *, deliver: bool) -> None:
            s = self.session
            if pdu.write and s is not None and not getattr(s, "_mutant_seen", False):
                s._mutant_seen = True  # type: ignore[attr-defined]
                from iscsi_conformance.target.task import Task

                task = Task(self, pdu, 0, None)  # type: ignore[arg-type]
                self.remember_aborted(pdu.itt)
                self._respond(task, ScsiStatus.TASK_SET_FULL, b"")
                return
            old(self, pdu, deliver=deliver)

        return create

    p.wrap(TaskIO, "_create_task", make)
