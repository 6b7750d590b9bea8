"""A SCSI task on the target's side: R2T, Data-Out, Data-In and their recovery (sans-IO).

Theory of operation: ``Task`` is one SCSI command's state (RFC 7143 3.2.2): its CDB
and LU, the write data gathered so far (immediate data, unsolicited Data-Out up to
FirstBurstLength, solicited Data-Out answering our R2Ts, 13.13-13.14), the R2Ts in
flight (at most MaxOutstandingR2T, each at most MaxBurstLength, 11.8) and, at ERL 1,
the Data-In PDUs kept for a SNACK (11.16). ``TaskIO`` is the part of a connection that
moves a task along: it delivers the command in CmdSN order, solicits the data,
executes it on the LU once it is all in, and answers with Data-In (phase collapse when
there is no sense, 11.7.4) and/or a SCSI Response. A command to a LUN with no logical
unit is answered by ``scsi.nolu``. A Data-Out digest error at ERL 1 becomes a recovery
R2T for the lost range once the sequence ends (7.8, 7.9).

``TaskIO`` is a mixin of ``connection.Connection``: the connection owns the wire
(StatSN, digests, the output queue), the task owns its data transfer, the way h2's
``H2Stream`` owns a stream's state beside ``H2Connection``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, cast

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import (
    RejectReason,
    ScsiResponseCode,
    ScsiStatus,
)
from iscsi_conformance.core.serial import add_mod as sn_add
from iscsi_conformance.core.serial import le as sn_le
from iscsi_conformance.core.serial import lt as sn_lt
from iscsi_conformance.scsi import nolu
from iscsi_conformance.scsi.nexus import port_matches
from iscsi_conformance.target.session import DEFAULT_CMD_WINDOW, SessionType

if TYPE_CHECKING:
    from collections.abc import Callable

    from iscsi_conformance.core.negotiation import NegotiatedParameters
    from iscsi_conformance.scsi.device import LogicalUnit
    from iscsi_conformance.scsi.reservations import NexusKey
    from iscsi_conformance.target.connection import Connection
    from iscsi_conformance.target.engine import TargetEngine
    from iscsi_conformance.target.session import Session

log = logging.getLogger("iscsi_conformance.target")

NONE_TAG = 0xFFFFFFFF

MAX_TASK_BYTES = 32 * 1024 * 1024  # largest write a single task may buffer
SESSION_WRITE_BUDGET = 128 * 1024 * 1024  # write data buffered and not yet executed
MAX_TASKS_PER_SESSION = 2 * DEFAULT_CMD_WINDOW  # immediate commands bypass the window

MAX_RETAINED_STATUS = 4096  # ERL1: statuses kept for SNACK, per connection
MAX_HELD_TASKS = 256  # ERL1: finished reads whose Data-In is kept, per connection

# SCSI sense for commands the transport refuses before the LU sees them (SPC-4 4.5.6).
_SENSE_KEY_ILLEGAL_REQUEST = 0x05
_SENSE_KEY_ABORTED_COMMAND = 0x0B


def _fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    """Fixed-format sense data (SPC-4 4.5.3), 18 bytes."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


SENSE_INVALID_FIELD_IN_IU = _fixed_sense(_SENSE_KEY_ILLEGAL_REQUEST, 0x0E, 0x03)
SENSE_INVALID_FIELD_IN_CDB = _fixed_sense(_SENSE_KEY_ILLEGAL_REQUEST, 0x24, 0x00)


@dataclasses.dataclass
class R2TState:
    r2tsn: int
    ttt: int
    offset: int
    length: int
    received: int = 0
    next_datasn: int = 0
    lost: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def lun_number(field: int) -> int:
    """The LUN that an 8-byte LUN field addresses, or -1 (no logical unit) for an
    addressing method we never hand out (SAM-5 4.7: extended or logical unit
    addressing), so that such a command is answered like one to a missing LUN."""
    try:
        return P.field_to_lun(field)
    except ValueError:
        return -1


class Task:
    """One SCSI command in flight (RFC 7143 3.2.4.3 'task')."""

    __slots__ = (
        "aborted",
        "ack_ttt",
        "attr",
        "bidi",
        "bidi_reply",
        "budgeted",
        "buffer",
        "cdb",
        "cmdsn",
        "conn",
        "datain_first",
        "datain_offsets",
        "delivered",
        "edtl",
        "expected",
        "immediate",
        "itt",
        "lu",
        "lun",
        "lun_field",
        "next_offset",
        "outstanding",
        "pending_ranges",
        "r2tsn",
        "read",
        "read_edtl",
        "received",
        "reply",
        "residual_mismatch",
        "sent_base",
        "sent_datain",
        "statsn",
        "unsolicited_done",
        "unsolicited_next_datasn",
        "unsolicited_received",
        "write",
    )

    def __init__(
        self, conn: Connection, cmd: P.ScsiCommand, lun: int, lu: LogicalUnit | None
    ) -> None:
        self.conn = conn
        self.itt = cmd.itt
        self.cmdsn = cmd.cmdsn
        self.immediate = cmd.immediate
        self.attr = cmd.attr
        self.cdb = cmd.cdb
        self.lun = lun
        self.lun_field = cmd.lun
        self.lu = lu
        self.edtl = cmd.expected_data_transfer_length
        self.read = cmd.read
        self.write = cmd.write
        # Bidirectional (R and W): EDTL is the write length, the read length comes in
        # the Bidirectional Read Expected Data Transfer Length AHS (RFC 7143 11.3.4).
        self.bidi = cmd.read and cmd.write
        self.read_edtl = (cmd.bidi_read_length or 0) if self.bidi else self.edtl
        self.delivered = False
        self.aborted = False
        self.expected = 0  # bytes of Data-Out we will accept
        self.buffer: bytearray | None = None
        self.received = 0
        self.residual_mismatch = 0  # SPDTL - EDTL for writes that disagree
        self.outstanding: dict[int, R2TState] = {}  # ttt -> R2T
        self.pending_ranges: deque[tuple[int, int]] = deque()  # to solicit
        self.unsolicited_done = True
        self.unsolicited_next_datasn = 0
        self.unsolicited_received = 0
        self.sent_datain: list[bytes] = []  # ERL1: for Data SNACK
        # The DataSN of sent_datain[0]: 0 for a READ, the first after the R2Ts for a
        # bidirectional command (one sequence, 4.2.2.4), ExpDataSN after a TASK REASSIGN.
        self.sent_base = 0
        # ERL1: the Target Transfer Tag of the Data-In with the A bit, which a DataACK
        # copies (11.7.4, 11.16.5; its Initiator Task Tag is 0xffffffff, 11.16.4)
        self.ack_ttt = NONE_TAG
        self.r2tsn = 0
        self.next_offset = 0
        self.budgeted = 0
        self.statsn = 0  # of its status, once sent
        # ERL 2: the outcome (status, sense, data, overflow, underflow, residual) and
        # each Data-In PDU's offset by DataSN, for a TASK REASSIGN (RFC 7143 11.5.6).
        self.reply: tuple[int, bytes, bytes, bool, bool, int] | None = None
        self.datain_offsets: list[int] = []
        # ERL 2, bidirectional: the DataSN of the read part's first Data-In (offsets are
        # counted from it) and its o, u and Bidirectional Read Residual Count (11.4.1).
        self.datain_first = 0
        self.bidi_reply: tuple[bool, bool, int] | None = None


class TaskIO:
    """The SCSI data path of a connection (see the module docstring)."""

    if TYPE_CHECKING:
        # What the data path uses of the connection it is mixed into: defined by
        # ``connection.Connection``, declared here (for the type checker only, nothing at
        # run time) so that mypy checks this class, and Connection's overrides, against them.
        # A TaskIO is always that Connection (its only subclass): where a Connection is
        # wanted (Task.conn, TargetEngine.mark_dirty), ``cast("Connection", self)`` says so.
        engine: TargetEngine
        session: Session | None
        params: NegotiatedParameters
        peer: tuple[str, int]
        statsn: int
        max_send: int
        datain_reverse: bool
        datain_sequences_reverse: bool
        erl: int
        hd: bool
        dd: bool
        out: list[bytes | memoryview]
        _aborted_set: set[int]
        _held: dict[int, Task]
        _retained: dict[int, bytes]

        def _emit(self, pdu: P.PDU) -> bytes: ...
        def next_statsn(self) -> int: ...
        def _window(self) -> tuple[int, int]: ...
        def reject(self, reason: int, header: bytes, *, datasn_r2tsn: int = 0) -> None: ...
        def remember_aborted(self, itt: int) -> None: ...
        def _ack_statsn(self, expstatsn: int) -> None: ...
        def _order(self, pdu: P.ScsiCommand, run: Callable[[P.ScsiCommand], None]) -> None: ...
        def _drain(self) -> None: ...

    def on_scsi_command(self, pdu: P.ScsiCommand, now: float) -> None:
        s = self.session
        assert s is not None
        self._ack_statsn(pdu.expstatsn)
        if s.session_type is SessionType.DISCOVERY:
            # Only Text, Logout and NOP in a discovery session (RFC 7143 4.3).
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return
        if pdu.itt == NONE_TAG:
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        if pdu.read and pdu.write and pdu.bidi_read_length is None:
            # R and W without the Bidirectional Read AHS, which 11.3.4 says MUST be
            # there: an invalid field of a PDU that describes a task (11.17.1 note 2),
            # rejected before its CmdSN is taken, which 7.3 says MUST NOT be considered
            # received (the initiator plugs the gap). Data-Out that may follow for the
            # tag is dropped (remember_aborted).
            self.remember_aborted(pdu.itt)
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        if pdu.read and pdu.write and s.target is not None and not s.target.config.bidirectional:
            # a target configured without bidirectional commands: Command not supported
            # (11.17.1), before the CmdSN is taken (7.3); Data-Out for it is dropped
            self.remember_aborted(pdu.itt)
            self.reject(RejectReason.COMMAND_NOT_SUPPORTED, P.bhs_of(pdu))
            return
        in_order = pdu.cmdsn == s.expcmdsn and sn_le(pdu.cmdsn, s.maxcmdsn)
        if not pdu.immediate and in_order and self._refused(pdu):
            # Refused before its CmdSN is taken: the CmdSN of a rejected command MUST NOT
            # be considered received (RFC 7143 7.3); the initiator plugs the gap by
            # sending a command with the same CmdSN.
            return
        if pdu.immediate:
            self._create_task(pdu, deliver=True)
            return
        sn = pdu.cmdsn
        if sn == s.expcmdsn and sn_le(sn, s.maxcmdsn):  # a closed window holds it (4.2.2.1)
            s.expcmdsn = sn_add(sn, 1)
            if sn in s.aborted_cmdsns:
                s.aborted_cmdsns.discard(sn)
            else:
                self._create_task(pdu, deliver=True)
            if s.pending:
                self._drain()
            return
        self._order(pdu, lambda p: self._create_task(p, deliver=True))

    def _refused(self, pdu: P.ScsiCommand) -> bool:
        """Reject a command that ``_create_task`` would reject anyway, while its CmdSN is
        still the expected one: a task tag in use (11.17.1, Task in progress), or
        immediate data that was not negotiated or exceeds FirstBurstLength (13.11,
        13.14). Data-Out that may follow a refused write's tag is dropped."""
        s = self.session
        assert s is not None
        if pdu.itt in s.tasks:
            self.reject(RejectReason.TASK_IN_PROGRESS, P.bhs_of(pdu))
            return True
        if pdu.data and (
            not self.params.immediate_data or len(pdu.data) > self.params.first_burst_length
        ):
            self.remember_aborted(pdu.itt)
            self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
            return True
        return False

    def _create_task(self, pdu: P.ScsiCommand, *, deliver: bool) -> None:
        s = self.session
        assert s is not None and s.target is not None
        if pdu.itt in s.tasks:
            # A task tag still in use (RFC 7143 11.17.1: Task in progress).
            self.reject(RejectReason.TASK_IN_PROGRESS, P.bhs_of(pdu))
            return
        lun = lun_number(pdu.lun)
        lus = s.target.lus_for(s.initiator_name)
        lu = lus.get(lun)
        task = Task(cast("Connection", self), pdu, lun, lu)
        s.tasks[pdu.itt] = task
        if pdu.write and lu is not None and _known_command(lu, pdu.cdb):
            spdtl = _data_out_length(lu, pdu.cdb)
            edtl = task.edtl
            if spdtl is None:
                spdtl = edtl
            # Accept the EDTL the initiator planned, so the data stream stays in step;
            # _finish decides what to do when it disagrees with the CDB (11.4.5.1).
            task.expected = edtl
            task.residual_mismatch = spdtl - edtl
            if edtl > MAX_TASK_BYTES:
                task.expected = 0
                task.residual_mismatch = 0
                self._respond_check(task, SENSE_INVALID_FIELD_IN_CDB)
                return
        elif pdu.write:
            task.expected = task.edtl if task.edtl <= MAX_TASK_BYTES else 0
        if task.expected and (
            s.write_budget_used + task.expected > SESSION_WRITE_BUDGET
            or len(s.tasks) > MAX_TASKS_PER_SESSION
        ):
            # Memory stays bounded whatever the initiator sends: answer TASK SET FULL
            # (SAM-5 5.3.1) and drop any data that still arrives for this tag.
            s.tasks.pop(pdu.itt, None)
            self.remember_aborted(pdu.itt)
            self._respond(task, ScsiStatus.TASK_SET_FULL, b"")
            return
        if task.expected:
            task.buffer = bytearray(task.expected)
            s.write_budget_used += task.expected
            task.budgeted = task.expected
        imm = pdu.data
        if imm:
            n = min(len(imm), task.expected)
            if not self.params.immediate_data or len(imm) > self.params.first_burst_length:
                # Immediate data was not negotiated, or exceeds FirstBurstLength (13.14).
                s.tasks.pop(pdu.itt, None)
                s.release_budget(task)
                self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))
                return
            if n and task.buffer is not None:
                task.buffer[:n] = imm[:n]
            task.received = n
            task.unsolicited_received = len(imm)
            task.next_offset = len(imm)
        if (
            task.expected
            and not pdu.final
            and not self.params.initial_r2t
            and task.unsolicited_received < self.params.first_burst_length
            and task.received < task.expected
        ):
            task.unsolicited_done = False  # more unsolicited Data-Out follows (13.10)
        if deliver:
            self._deliver(task)

    def _deliver(self, task: Task) -> None:
        """The command's CmdSN has been reached: solicit data or execute."""
        task.delivered = True
        if task.aborted:
            return
        self._progress(task)

    def _progress(self, task: Task) -> None:
        if not task.delivered or task.aborted:
            return
        if task.received >= task.expected and not task.outstanding and task.unsolicited_done:
            self._finish(task)
            return
        if task.unsolicited_done:
            self._solicit(task)

    def _solicit(self, task: Task) -> None:
        """Issue R2Ts for what is still missing (RFC 7143 11.8; 13.17 MaxOutstandingR2T)."""
        p = self.params
        if not task.pending_ranges and task.next_offset < task.expected and not task.outstanding:
            # Everything not covered by immediate/unsolicited data, in burst-size pieces.
            start = task.next_offset
            task.next_offset = task.expected
            while start < task.expected:
                ln = min(p.max_burst_length, task.expected - start)
                task.pending_ranges.append((start, ln))
                start += ln
        while task.pending_ranges and len(task.outstanding) < p.max_outstanding_r2t:
            off, ln = task.pending_ranges.popleft()
            ttt = self.engine.alloc_ttt()
            r2t = R2TState(r2tsn=task.r2tsn, ttt=ttt, offset=off, length=ln)
            task.r2tsn += 1
            task.outstanding[ttt] = r2t
            self._send_r2t(task, r2t)

    def _send_r2t(self, task: Task, r2t: R2TState) -> None:
        exp, mx = self._window()
        self._emit(
            P.R2T(
                lun=task.lun_field,
                itt=task.itt,
                ttt=r2t.ttt,
                statsn=self.statsn,
                expcmdsn=exp,
                maxcmdsn=mx,
                r2tsn=r2t.r2tsn,
                buffer_offset=r2t.offset,
                desired_data_transfer_length=r2t.length,
            )
        )

    def _data_lost(self, task: Task, ttt: int, offset: int, length: int, header: bytes) -> None:
        """ERL1: a Data-Out was lost to a digest error; re-solicit it (RFC 7143 7.8)."""
        final = bool(header[1] & 0x80)
        if ttt == NONE_TAG:
            # Unsolicited data lost: solicit it again once unsolicited data ends.
            task.pending_ranges.append((offset, length))
            task.unsolicited_next_datasn += 1
            if final:
                task.unsolicited_done = True
                self._progress(task)
            return
        r2t = task.outstanding.get(ttt)
        if r2t is None:
            return
        r2t.lost.append((offset, length))
        r2t.next_datasn += 1
        if final:
            self._r2t_done(task, r2t)

    def _r2t_done(self, task: Task, r2t: R2TState) -> None:
        del task.outstanding[r2t.ttt]
        for off, ln in r2t.lost:
            # Recovery R2T for the lost range (RFC 7143 7.9).
            task.pending_ranges.appendleft((off, ln))
        if r2t.received < r2t.length and not r2t.lost:
            # F bit before the burst was complete: re-solicit the rest.
            task.pending_ranges.append((r2t.offset + r2t.received, r2t.length - r2t.received))
        self._progress(task)

    def on_data_out(self, pdu: P.ScsiDataOut, now: float) -> None:
        s = self.session
        assert s is not None
        self._ack_statsn(pdu.expstatsn)
        task = s.tasks.get(pdu.itt)
        if task is None or task.conn is not self:
            if pdu.itt in self._aborted_set:
                return  # data for an aborted task is discarded (RFC 7143 4.2.3.3)
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        data = pdu.data
        off = pdu.buffer_offset
        if pdu.ttt == NONE_TAG:
            # Unsolicited (RFC 7143 13.10/13.14): only before the first R2T, within FBL.
            if task.unsolicited_done or self.params.initial_r2t:
                self._sequence_error(pdu, "unsolicited Data-Out not allowed here")
                return
            if pdu.datasn != task.unsolicited_next_datasn:
                self._sequence_error(
                    pdu, f"DataSN {pdu.datasn} expected {task.unsolicited_next_datasn}"
                )
                return
            task.unsolicited_next_datasn += 1
            task.unsolicited_received += len(data)
            if task.unsolicited_received > self.params.first_burst_length:
                self._sequence_error(pdu, "unsolicited data beyond FirstBurstLength")
                return
            self._store(task, off, data)
            task.next_offset = max(task.next_offset, off + len(data))
            if pdu.final:
                task.unsolicited_done = True
                self._progress(task)
            return
        r2t = task.outstanding.get(pdu.ttt)
        if r2t is None:
            self.reject(RejectReason.INVALID_PDU_FIELD, P.bhs_of(pdu))
            return
        if pdu.datasn != r2t.next_datasn:
            self._sequence_error(pdu, f"DataSN {pdu.datasn} expected {r2t.next_datasn}")
            return
        if off < r2t.offset or off + len(data) > r2t.offset + r2t.length:
            self._sequence_error(pdu, "Data-Out outside the R2T's range")
            return
        r2t.next_datasn += 1
        r2t.received += len(data)
        self._store(task, off, data)
        if pdu.final:
            self._r2t_done(task, r2t)

    def _store(self, task: Task, off: int, data: bytes) -> None:
        buf = task.buffer
        if buf is None or not data:
            return
        end = min(off + len(data), len(buf))
        if off < end:
            buf[off:end] = data[: end - off] if end - off < len(data) else data
            task.received += end - off

    def _sequence_error(self, pdu: P.PDU, why: str) -> None:
        """A DataSN/offset error in a Data-Out (RFC 7143 11.7.5, 11.7.6)."""
        if self.engine.trace:
            log.info("sequence error from %s: %s", self.peer, why)
        # The PDU is rejected and discarded; the task waits for correct data, or for
        # the initiator to abort it or to end the session (RFC 7143 7.1.4 leaves
        # recovery at ERL 0 to the initiator).
        self.reject(RejectReason.PROTOCOL_ERROR, P.bhs_of(pdu))

    # ------------------------------------------------------------------ execution

    def _finish(self, task: Task) -> None:
        s = self.session
        assert s is not None
        s.tasks.pop(task.itt, None)
        s.release_budget(task)
        if task.aborted:
            return
        lu = task.lu
        if lu is None:
            self._no_logical_unit(task)
            return
        mm = task.residual_mismatch
        data_out: bytes = bytes(task.buffer) if task.buffer is not None else b""
        if mm and task.cdb[0] == _COMPARE_AND_WRITE:
            # The CDB's NUMBER OF LOGICAL BLOCKS disagrees with the data the initiator
            # sends (e.g. 256 blocks wrapped to 0 in the one-byte field): the CDB is
            # invalid (SBC-3 5.2), not a residual to ignore.
            self._respond(
                task,
                ScsiStatus.CHECK_CONDITION,
                SENSE_INVALID_FIELD_IN_CDB,
                overflow=mm > 0,
                underflow=mm < 0,
                residual=abs(mm),
            )
            return
        if mm > 0:
            # EDTL below the CDB's transfer length (overflow): FCP-4 9.4.2 a) - run the
            # command, but only the first EDTL bytes come from the initiator; the rest
            # of a block write keeps the medium's current contents.
            data_out = data_out[: task.edtl]
            if task.cdb[0] in _BLOCK_WRITES:
                data_out += _current_contents(lu, task.cdb, task.edtl, mm)
        elif mm < 0:
            data_out = data_out[: task.edtl + mm]  # underflow: only what the CDB asks
        assert s.nexus is not None  # set with the target, in Session.__init__
        outcome = lu.execute(s.nexus, task.cdb, data_out)
        if outcome.aborted:
            self._preempt_abort(task, outcome.aborted)
        if outcome.pr_changed:
            self.engine.pr_changed(lu)
        if task.bidi:
            self._complete_bidi(task, outcome.status, outcome.sense, outcome.data, mm)
            return
        if mm and not task.read:
            self._respond(
                task,
                outcome.status,
                outcome.sense,
                overflow=mm > 0,
                underflow=mm < 0,
                residual=abs(mm),
            )
            return
        self._complete(task, outcome.status, outcome.sense, outcome.data)

    def _preempt_abort(self, task: Task, keys: Iterable[NexusKey]) -> None:
        """PREEMPT AND ABORT: abort the preempted nexuses' tasks (SPC-4 5.9.11.5)."""
        lu = task.lu

        def hit(t: Task) -> bool:
            s = t.conn.session
            if t.lu is not lu or s is None or s.nexus is None:
                return False
            return any(
                port_matches(ident, s.nexus.initiator_port)
                and (rtp is None or rtp == s.nexus.relative_target_port)
                for ident, rtp in keys
            )

        self.engine.abort_tasks(hit)

    def _respond_check(self, task: Task, sense: bytes) -> None:
        self._forget(task)
        self._respond(task, ScsiStatus.CHECK_CONDITION, sense)

    def _forget(self, task: Task) -> None:
        s = self.session
        if s is not None:
            s.tasks.pop(task.itt, None)
            s.release_budget(task)

    def _no_logical_unit(self, task: Task) -> None:
        """A command to a LUN with no logical unit: the answers of scsi.nolu."""
        self._forget(task)
        s = self.session
        assert s is not None and s.target is not None
        outcome = nolu.respond(task.cdb, task.lun, list(s.target.lus_for(s.initiator_name)))
        if outcome.status == ScsiStatus.GOOD:
            self._complete(task, ScsiStatus.GOOD, b"", outcome.data)
        else:
            self._respond(task, outcome.status, outcome.sense)

    def _complete(self, task: Task, status: int, sense: bytes, data: bytes) -> None:
        """Send Data-In (with phase collapse when possible) and/or SCSI Response."""
        edtl = task.edtl
        n = len(data)
        overflow = underflow = False
        residual = 0
        if task.write and not task.read:
            data = b""
        elif n > edtl:
            overflow, residual = True, n - edtl
            data = data[:edtl]
        elif n < edtl:
            underflow, residual = True, edtl - n
        if self.erl > 0:
            # for an R-Data SNACK (ERL 1, 11.16.3) or a TASK REASSIGN (ERL 2, 11.5.6)
            task.reply = (status, sense, data, overflow, underflow, residual)
        if not data:
            self._respond(
                task, status, sense, overflow=overflow, underflow=underflow, residual=residual
            )
            return
        self._send_data_in(task, data, status, sense, overflow, underflow, residual)

    def _complete_bidi(
        self, task: Task, status: int, sense: bytes, data: bytes, write_mismatch: int
    ) -> None:
        """The end of a bidirectional command (RFC 7143 11.3.4): the read part as
        Data-In within the Bidirectional Read EDTL, numbered on from the R2Ts (R2T and
        Data-In share one sequence, 4.2.2.4, 11.7.5), then the status in a SCSI Response
        (never in a Data-In, 11.7.3) with the write part's residual in O/U and the
        Residual Count and the read part's in o/u and the Bidirectional Read Residual
        Count (11.4.1, 11.4.6)."""
        limit = task.read_edtl
        n = len(data)
        bidi_over = bidi_under = False
        bidi_residual = 0
        if n > limit:
            bidi_over, bidi_residual = True, n - limit
            data = data[:limit]
        elif n < limit:
            bidi_under, bidi_residual = True, limit - n
        if status != ScsiStatus.GOOD:
            data = b""
        if self.erl > 0:
            # for an R-Data SNACK (11.16.3) or a TASK REASSIGN (11.5.6, 7.2.2): the
            # read part and both residuals
            task.reply = (status, sense, data, write_mismatch > 0, write_mismatch < 0,
                          abs(write_mismatch))  # fmt: skip
            task.bidi_reply = (bidi_over, bidi_under, bidi_residual)
        count = self._send_bidi_data_in(task, data) if data else 0
        self._respond(
            task,
            status,
            sense,
            overflow=write_mismatch > 0,
            underflow=write_mismatch < 0,
            residual=abs(write_mismatch),
            expdatasn=count,  # the number of Data-In PDUs sent (11.4.8)
            bidi_overflow=bidi_over,
            bidi_underflow=bidi_under,
            bidi_residual=bidi_residual,
        )

    def _send_bidi_data_in(
        self, task: Task, data: bytes, *, datasn: int | None = None, start: int = 0
    ) -> int:
        """The read part of a bidirectional command: Data-In PDUs without status, their
        DataSN going on from the last R2TSN (``task.r2tsn``), or from ``datasn`` at
        Buffer Offset ``start`` when a TASK REASSIGN resends it; returns how many.

        At ERL 1 each PDU is kept for a Data SNACK, whose BegRun names it by its DataSN
        in the shared R2T/Data-In sequence (11.16, 4.2.2.4: ``task.sent_base``); at
        ERL 2 each one's offset is noted by DataSN for a TASK REASSIGN (11.5.6). The
        A bit as in ``_send_data_in``: a DataACK's BegRun is a DataSN of that sequence."""
        s = self.session
        assert s is not None
        mv = memoryview(data)
        exp, mx = s.expcmdsn, s.maxcmdsn
        resend = datasn is not None
        if datasn is None:
            datasn = task.r2tsn
            task.datain_first = datasn
        keep = self.erl > 0
        if keep:
            task.sent_datain = []
            task.sent_base = datasn
        offsets = task.datain_offsets if self.erl > 1 and not resend else None
        if offsets is not None:
            offsets.clear()
        # ERL 2 resends from a DataSN's offset onwards: offset order only (as a READ).
        reverse = self.erl < 2 and self.datain_reverse
        backwards = self.erl < 2 and self.datain_sequences_reverse
        ack = keep and not backwards and not resend  # A bit as in _send_data_in
        count = 0
        pieces = _datain_pieces(
            start, len(data), self.max_send, self.params.max_burst_length, reverse, backwards
        )
        for off, ln, final, _last in pieces:
            a = final and ack
            bhs = P.DATA_IN_BHS.pack(
                0x25, (0x80 | 0x40) if a else 0x80 if final else 0, 0, ln, task.lun_field,
                task.itt, self._ack_tag(task) if a else NONE_TAG, 0, exp, mx, datasn, off, 0,
            )  # fmt: skip
            parts = P.frame_parts(bhs, mv[off : off + ln], self.hd, self.dd)
            self.out.extend(parts)
            if offsets is not None:
                offsets.append(off)
            if keep:
                task.sent_datain.append(b"".join(parts))
            datasn = sn_add(datasn, 1)
            count += 1
        task.r2tsn = datasn
        self.engine.mark_dirty(cast("Connection", self))
        return count

    def resume_task(self, task: Task, expdatasn: int) -> None:
        """TASK REASSIGN (ERL 2): ``task`` continues on this connection from its current
        state (RFC 7143 7.2.2): a WRITE still missing data is solicited again by R2T, a
        finished command resends its Data-In from DataSN ``expdatasn`` (11.5.6: 0 means
        unchanged, here from the start) and its status, now with this connection's StatSN."""
        s = self.session
        assert s is not None
        task.conn = cast("Connection", self)
        s.orphans.pop(task.itt, None)
        reply = task.reply
        if reply is None:
            if task.write and task.expected and task.buffer is not None:
                # Which bytes arrived is not kept: solicit the whole transfer again.
                task.outstanding.clear()
                task.pending_ranges.clear()
                task.received = 0
                task.next_offset = 0
                task.unsolicited_done = True
            self._progress(task)
            return
        if task.bidi:
            self._resume_bidi(task, expdatasn)
            return
        status, sense, data, overflow, underflow, residual = reply
        offsets = task.datain_offsets
        task.sent_datain = []
        if data and expdatasn < len(offsets):
            start = offsets[expdatasn]
            self._send_data_in(
                task, data, status, sense, overflow, underflow, residual,
                datasn=expdatasn, start=start,
            )  # fmt: skip
            return
        self._respond(
            task, status, sense, overflow=overflow, underflow=underflow, residual=residual
        )

    def _resume_bidi(self, task: Task, expdatasn: int) -> None:
        """TASK REASSIGN of a finished bidirectional command: its read part's Data-In
        from ExpDataSN on, numbered in the shared R2T/Data-In sequence (4.2.2.4), then
        its SCSI Response (11.5.6: the target MUST send all Data-In from the data
        acknowledgment reference number; 0, or an R2T's number, means all of it)."""
        assert task.reply is not None
        status, sense, data, overflow, underflow, residual = task.reply
        bidi_over, bidi_under, bidi_residual = task.bidi_reply or (False, False, 0)
        first = task.datain_first
        offsets = task.datain_offsets
        if expdatasn == 0 or sn_lt(expdatasn, first):
            k = 0  # unchanged, or an R2T's number (below the read part): all of it
        else:
            k = min((expdatasn - first) & 0xFFFFFFFF, len(offsets))
        count = 0
        task.sent_datain = []
        if data and k < len(offsets):
            count = self._send_bidi_data_in(task, data, datasn=sn_add(first, k), start=offsets[k])
        self._respond(
            task, status, sense, overflow=overflow, underflow=underflow, residual=residual,
            expdatasn=k + count if data else 0,  # Data-In PDUs of the command (11.4.8)
            bidi_overflow=bidi_over, bidi_underflow=bidi_under, bidi_residual=bidi_residual,
        )  # fmt: skip

    def _send_data_in(
        self,
        task: Task,
        data: bytes,
        status: int,
        sense: bytes,
        overflow: bool,
        underflow: bool,
        residual: int,
        *,
        datasn: int = 0,
        start: int = 0,
    ) -> None:
        """Data-In PDUs (RFC 7143 11.7): at most our send limit each, F at the end of
        every MaxBurstLength sequence, the status in the last one when there is no
        sense data (phase collapse, 11.7.4); a sequence's PDUs at decreasing offsets
        when ``datain_reverse`` (DataPDUInOrder=No agreed). Payloads go out as memoryview slices of
        ``data`` (no copy); headers come from the hot-path packer.

        At ERL 1 and above the last PDU of each sequence that does not carry the status
        asks for a DataACK (A bit, with a Target Transfer Tag, 11.7.2, 11.7.4): once every
        MaxBurstLength bytes, as 11.7.2 allows, each time after a whole prefix of the
        data, so that the DataACK's BegRun frees the Data-In before it (``data_acked``).
        Not when the sequences go out last first (no prefix) or on a resend."""
        s = self.session
        assert s is not None
        collapse = not sense and status == ScsiStatus.GOOD
        mv = memoryview(data)
        total = len(data)
        seg = self.max_send
        burst = self.params.max_burst_length
        exp, mx = s.expcmdsn, s.maxcmdsn
        keep = self.erl > 0
        if keep:
            task.sent_base = datasn  # a TASK REASSIGN resends from ExpDataSN (11.5.6)
        offsets = task.datain_offsets if self.erl > 1 and not start else None
        if offsets is not None:
            offsets.clear()
        hd, dd = self.hd, self.dd
        out = self.out
        lun, itt = task.lun_field, task.itt
        # ERL 2 resends from a DataSN's offset onwards (resume_task): offset order only.
        reverse = self.datain_reverse and not start and self.erl < 2
        backwards = self.datain_sequences_reverse and not start and self.erl < 2
        ack = keep and not backwards and not start
        for off, ln, final, last in _datain_pieces(start, total, seg, burst, reverse, backwards):
            flags = 0x80 if final else 0
            statsn = 0
            st = 0
            res = 0
            ttt = NONE_TAG
            if last and collapse:
                flags |= 0x01 | (0x04 if overflow else 0) | (0x02 if underflow else 0)
                statsn = self.next_statsn()
                st = status
                res = residual
            elif final and ack:
                flags |= 0x40
                ttt = self._ack_tag(task)
            bhs = P.DATA_IN_BHS.pack(
                0x25, flags, st, ln, lun, itt, ttt, statsn, exp, mx, datasn, off, res
            )
            parts = P.frame_parts(bhs, mv[off : off + ln], hd, dd)
            out.extend(parts)
            if offsets is not None:
                offsets.append(off)
            if keep:
                raw = b"".join(parts)
                task.sent_datain.append(raw)
                if flags & 0x01:
                    self._retain(statsn, raw)
            datasn += 1
        self.engine.mark_dirty(cast("Connection", self))
        if not collapse:
            self._respond(
                task,
                status,
                sense,
                overflow=overflow,
                underflow=underflow,
                residual=residual,
                expdatasn=datasn,
            )
        elif keep:
            self._hold(task, statsn)

    def _ack_tag(self, task: Task) -> int:
        """The Target Transfer Tag of ``task``'s Data-In with the A bit: one per task."""
        if task.ack_ttt == NONE_TAG:
            task.ack_ttt = self.engine.alloc_ttt()
        return task.ack_ttt

    def data_acked(self, task: Task, begrun: int) -> bool:
        """DataACK (RFC 7143 11.16.2, 11.16.6): BegRun is the next DataSN the initiator
        expects, so the kept Data-In below it are acknowledged and freed; the rest stay
        for a Data or R-Data SNACK, which now numbers from BegRun (11.16.3: the resent
        DataSN start with the BegRun of the last DataACK). A BegRun at or below the
        first kept DataSN frees nothing (an older acknowledgment). Returns False for a
        BegRun past the Data-In sent, which acknowledges data never sent."""
        kept = task.sent_datain
        k = (begrun - task.sent_base) & 0xFFFFFFFF
        if k > len(kept):
            return not sn_lt(task.sent_base, begrun)
        if k:
            del kept[:k]
            task.sent_base = begrun
        return True

    def resend_rdata(self, task: Task, snack_tag: int) -> None:
        """R-Data SNACK (RFC 7143 11.16.3): the initiator discarded the unacknowledged
        Data-In of a finished read, so all of it goes out again, segmented for the
        MaxRecvDataSegmentLength now in force (which may have changed since, 13.12) and
        numbered on from the first kept DataSN (0 for a READ, the first after the R2Ts
        for a bidirectional command, 4.2.2.4, or the BegRun of the last DataACK, whose
        Data-In before it were freed), without status; then a SCSI Response
        with the task's status and residuals, the SNACK Tag, and the StatSN of the
        status already sent (11.16.3: every response for the command carries one
        StatSN), ExpDataSN counting the read part's Data-In (11.4.8). It replaces the
        status kept for a Status SNACK and the PDUs kept for a Data SNACK. With all the
        data acknowledged (DataACK) nothing is resent: only the SCSI Response, which
        11.16.3 requires even when the status came in the last Data-In."""
        s = self.session
        assert s is not None and task.reply is not None
        status, sense, data, overflow, underflow, residual = task.reply
        kept = task.sent_datain
        # the first kept PDU's Buffer Offset (bytes 40-43): after a DataACK, or a TASK
        # REASSIGN from ExpDataSN > 0, what came before was acknowledged (11.16.2,
        # 11.5.6); none kept: all of it was (the A bit is set only after a prefix of the
        # data, and a TASK REASSIGN resends from an offset on)
        start = min((int.from_bytes(raw[40:44], "big") for raw in kept), default=len(data))
        datasn = task.sent_base
        exp, mx = s.expcmdsn, s.maxcmdsn
        frames: list[bytes] = []
        offsets: list[int] = []
        pieces = _datain_pieces(
            start, len(data), self.max_send, self.params.max_burst_length, False
        )
        for off, ln, final, _last in pieces:
            bhs = P.DATA_IN_BHS.pack(
                0x25, 0x80 if final else 0, 0, ln, task.lun_field, task.itt, NONE_TAG,
                0, exp, mx, datasn, off, 0,
            )  # fmt: skip
            parts = P.frame_parts(bhs, memoryview(data)[off : off + ln], self.hd, self.dd)
            self.out.extend(parts)
            frames.append(b"".join(parts))
            offsets.append(off)
            datasn = sn_add(datasn, 1)
        task.sent_datain = frames
        if self.erl > 1 and not start:
            task.datain_offsets = offsets
        bidi_over, bidi_under, bidi_residual = task.bidi_reply or (False, False, 0)
        self._respond(
            task, status, sense, overflow=overflow, underflow=underflow, residual=residual,
            expdatasn=(datasn - task.datain_first) & 0xFFFFFFFF,
            bidi_overflow=bidi_over, bidi_underflow=bidi_under, bidi_residual=bidi_residual,
            statsn=task.statsn, snack_tag=snack_tag,
        )  # fmt: skip

    def resend_r2ts(self, task: Task, begrun: int, runlength: int) -> bool:
        """Data/R2T SNACK for a task still receiving data (RFC 7143 11.16): the
        outstanding R2Ts whose R2TSN is in the run go out again as they were (same
        R2TSN, Target Transfer Tag, Buffer Offset and length) with the current StatSN,
        ExpCmdSN and MaxCmdSN (11.16: the replicas' only changes). BegRun 0 with
        RunLength 0 is every outstanding R2T. The initiator missed such an R2T, so it
        sent no data for it: anything counted for it is dropped and its Data-Out
        starts again at DataSN 0. Returns False when no outstanding R2T is in the run
        (never sent, or answered already: the caller rejects it)."""
        everything = begrun == 0 and runlength == 0
        again = [
            r2t
            for r2t in sorted(task.outstanding.values(), key=lambda r: r.r2tsn)
            if everything
            or (
                sn_le(begrun, r2t.r2tsn)
                and (runlength == 0 or sn_lt(r2t.r2tsn, sn_add(begrun, runlength)))
            )
        ]
        for r2t in again:
            task.received = max(0, task.received - r2t.received)
            r2t.received = 0
            r2t.next_datasn = 0
            r2t.lost.clear()
            self._send_r2t(task, r2t)
        return bool(again)

    def _hold(self, task: Task, statsn: int) -> None:
        """ERL1: keep a finished read's Data-In PDUs for a Data SNACK until its
        status is acknowledged (bounded, oldest dropped first). The dict stays in StatSN
        order (``_ack_statsn``): a task held again under its own StatSN (the response
        of an R-Data SNACK) keeps its place."""
        if self._held.get(task.itt) is task and task.statsn == statsn:
            return
        task.statsn = statsn
        if len(self._held) >= MAX_HELD_TASKS:
            self._held.pop(next(iter(self._held)))
        self._held.pop(task.itt, None)
        self._held[task.itt] = task

    def _retain(self, statsn: int, raw: bytes) -> None:
        if len(self._retained) >= MAX_RETAINED_STATUS:
            self._retained.pop(next(iter(self._retained)))
        self._retained[statsn] = raw

    def _respond(
        self,
        task: Task,
        status: int,
        sense: bytes,
        *,
        overflow: bool = False,
        underflow: bool = False,
        residual: int = 0,
        expdatasn: int = 0,
        bidi_overflow: bool = False,
        bidi_underflow: bool = False,
        bidi_residual: int = 0,
        statsn: int | None = None,
        snack_tag: int = 0,
    ) -> None:
        """The SCSI Response of ``task`` (RFC 7143 11.4), with the next StatSN, or with
        ``statsn`` when it replaces a response already sent (the R-Data SNACK's, which
        carries ``snack_tag``, 11.16.3, 11.4.4)."""
        s = self.session
        assert s is not None
        data = P.ScsiResponse.sense_segment(sense) if sense else b""
        if statsn is None:
            statsn = self.next_statsn()
        flags = 0x80 | (0x04 if overflow else 0) | (0x02 if underflow else 0)
        flags |= (0x10 if bidi_overflow else 0) | (0x08 if bidi_underflow else 0)
        bhs = P.SCSI_RESPONSE_BHS.pack(
            0x21,
            flags,
            ScsiResponseCode.COMMAND_COMPLETED_AT_TARGET,
            status,
            len(data),
            0,
            task.itt,
            snack_tag,
            statsn,
            s.expcmdsn,
            s.maxcmdsn,
            expdatasn,
            min(bidi_residual, 0xFFFFFFFF),
            min(residual, 0xFFFFFFFF),  # a CDB may ask for more than 32 bits can count
        )
        parts = P.frame_parts(bhs, data, self.hd, self.dd)
        self.out.extend(parts)
        self.engine.mark_dirty(cast("Connection", self))
        if self.erl > 0:
            self._retain(statsn, b"".join(parts))
            if self.erl > 1 and task.reply is None:
                task.reply = (status, sense, b"", overflow, underflow, residual)
            if task.sent_datain or self.erl > 1:
                self._hold(task, statsn)


# WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16) (SBC-3 5): block writes whose EDTL
# must match the CDB.
_BLOCK_WRITES = frozenset({0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E})
_COMPARE_AND_WRITE = 0x89


def _datain_pieces(
    start: int, total: int, seg: int, burst: int, reverse: bool, backwards: bool = False
) -> Iterator[tuple[int, int, bool, bool]]:
    """(Buffer Offset, length, F, last) of each Data-In PDU in sending order: at most
    ``seg`` bytes each, a sequence ending at each MaxBurstLength boundary with F set on
    its last PDU sent (RFC 7143 11.7.1). With ``reverse`` (DataPDUInOrder=No agreed,
    13.18: a sequence's PDUs in any order) each sequence goes out at decreasing offsets.
    With ``backwards`` (DataSequenceInOrder=No agreed, 13.19: sequences in any order)
    the sequences go out last first; ``last`` marks the PDU sent last."""

    def in_offset_order() -> Iterator[list[tuple[int, int]]]:
        off = start
        while off < total:
            seq_end = min((off // burst + 1) * burst, total)
            seq = []
            while off < seq_end:
                ln = min(seg, seq_end - off)
                seq.append((off, ln))
                off += ln
            if reverse:
                seq.reverse()
            yield seq

    # Only the backwards case holds the whole list: the usual one stays lazy.
    sequences = reversed(list(in_offset_order())) if backwards else in_offset_order()
    pending: list[tuple[int, int]] | None = None
    for seq in sequences:
        if pending is not None:
            yield from _sequence(pending, last=False)
        pending = seq
    if pending is not None:
        yield from _sequence(pending, last=True)


def _sequence(seq: list[tuple[int, int]], *, last: bool) -> Iterator[tuple[int, int, bool, bool]]:
    for i, (o, n) in enumerate(seq):
        final = i == len(seq) - 1
        yield o, n, final, final and last


def _current_contents(lu: LogicalUnit, cdb: bytes, offset: int, length: int) -> bytes:
    """What the medium holds past the first ``offset`` bytes of a block write."""
    from iscsi_conformance.scsi.cdb import decode_block_cdb

    try:
        start = decode_block_cdb(cdb).lba * lu.block_size + offset
        if start + length > lu.backing.size:
            # out of range: the LU reports it from the CDB before it looks at the data
            # (SBC-3 4.5), and ``length`` may be terabytes: nothing to read or build
            return b""
        return bytes(lu.backing.read(start, length))
    except (ValueError, AttributeError):
        return b""


def _known_command(lu: LogicalUnit, cdb: bytes) -> bool:
    lookup = getattr(lu, "lookup", None)
    return lookup is None or lookup(cdb) is not None


def _data_out_length(lu: LogicalUnit, cdb: bytes) -> int | None:
    """SPDTL of a write CDB from the LU (scsi.LogicalUnit.data_out_length)."""
    fn = getattr(lu, "data_out_length", None)
    if fn is None:
        return None
    try:
        return int(fn(cdb))
    except Exception:
        return None
