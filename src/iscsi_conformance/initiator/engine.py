"""Sans-IO reference initiator: the full-feature phase of one session.

Theory of operation
-------------------
Two objects, no I/O:

* :class:`SessionSequencer` holds what a session shares across its connections
  (RFC 7143 4.2.2): the next CmdSN, the command window ``[ExpCmdSN, MaxCmdSN]`` and
  the Initiator Task Tag allocator.
* :class:`InitiatorConnection` holds one connection's state: ExpStatSN, the tasks
  that have allegiance to it (RFC 7143 4.2.3), and what to send next. Its inputs are
  decoded PDUs (:meth:`InitiatorConnection.receive_pdu`) and requests
  (``start_command``, ``start_nop``, ``start_tmf``, ``start_text``, ``start_logout``);
  its outputs are PDUs to send (:meth:`InitiatorConnection.pdus_to_send`) and events
  (past tense: :class:`CommandCompleted`, :class:`PingAnswered`...).

The adapter (``client.py``) decodes bytes, feeds PDUs in, encodes what comes out
(with the negotiated digests), and maps events to the callers waiting on each ITT.
Login is not here: it runs before, through the login state machine, and its outcome
(CmdSN, ExpStatSN, window, negotiated keys) seeds these objects.

The engine is also an instrument. Everything a target does wrong that the initiator
can see (StatSN gaps, DataSN out of order, R2T beyond the burst limits, residuals that
do not add up...) is recorded as a :class:`ProtocolViolated` event with its RFC section,
never raised: the conformance suite decides what is fatal. Write data is split exactly
as negotiated (immediate data, unsolicited Data-Out up to FirstBurstLength, solicited
Data-Out per R2T, every PDU within the target's MaxRecvDataSegmentLength, RFC 7143
13.12-13.14). ``send_pdu`` lets a test put any PDU on the connection in sequence.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any, TypedDict

from iscsi_conformance.core.codes import (
    LogoutReason,
    Opcode,
    ScsiStatus,
    SnackType,
    TaskAttribute,
    TmfFunction,
)
from iscsi_conformance.core.login.isid import random_isid
from iscsi_conformance.core.negotiation import NegotiatedParameters
from iscsi_conformance.core.pdu import (
    PDU,
    R2T,
    AsyncMessage,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Reject,
    ScsiCommand,
    ScsiDataIn,
    ScsiDataOut,
    ScsiResponse,
    SnackRequest,
    TaskManagementRequest,
    TaskManagementResponse,
    TextRequest,
    TextResponse,
    data_out_pdus,
    lun_to_field,
)
from iscsi_conformance.core.serial import add_mod as _sn_add
from iscsi_conformance.core.serial import gt as _sn_gt
from iscsi_conformance.core.serial import le as _sn_le
from iscsi_conformance.core.serial import lt as _sn_lt
from iscsi_conformance.errors import ProtocolError, ReservationConflict, SCSIError
from iscsi_conformance.scsi.sense import SenseData

__all__ = [
    "NONE_TAG",
    "AsyncMessageReceived",
    "CommandCompleted",
    "Event",
    "InitiatorConnection",
    "LogoutCompleted",
    "PDURejected",
    "PingAnswered",
    "ProtocolViolated",
    "ScsiResult",
    "SessionSequencer",
    "TargetPinged",
    "TaskManagementCompleted",
    "TextCompleted",
    "make_isid",
]

NONE_TAG = 0xFFFFFFFF  # reserved tag value (RFC 7143 11.2.1.8)
_SN_MASK = 0xFFFFFFFF  # 32-bit field width; serial arithmetic itself is core.serial
#: The task management functions of RFC 7144 6.3, sent only at iSCSIProtocolLevel 2.
_LEVEL2_FUNCTIONS = frozenset(
    {
        TmfFunction.QUERY_TASK,
        TmfFunction.QUERY_TASK_SET,
        TmfFunction.I_T_NEXUS_RESET,
        TmfFunction.QUERY_ASYNCHRONOUS_EVENT,
    }
)


def make_isid(rng: Callable[[int], bytes], qualifier: int | None = None) -> int:
    """A random ISID of type 10b (RFC 7143 11.12.5, 10.1.1 of RFC 3721), built by
    ``core.login.random_isid``: B and C random, D the qualifier (random unless given)."""
    rand = rng(5)
    d = int.from_bytes(rand[3:5], "big") if qualifier is None else qualifier & 0xFFFF
    return random_isid(lambda _n: rand[:3], d)


# ====================================================================== results, events


@dataclasses.dataclass(frozen=True)
class ScsiResult:
    """How a SCSI command ended (RFC 7143 11.4 / 11.7.3).

    ``data`` is the Data-In reassembled by buffer offset; ``residual`` the Residual
    Count the target reported (meaningful with ``underflow``/``overflow``);
    ``response`` the iSCSI Response code (0: command completed at target).
    """

    status: int
    sense: bytes = b""
    data: bytes = b""
    residual: int = 0
    response: int = 0
    underflow: bool = False
    overflow: bool = False
    bidi_residual: int = 0
    itt: int = NONE_TAG
    response_pdu: ScsiResponse | ScsiDataIn | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    #: Why the Data-In is known to be incomplete (a DataSN skipped, bytes never sent,
    #: an ExpDataSN counting PDUs that never came), or "". RFC 7143 7.9 makes such gaps
    #: implied digest errors, and 7.8 has the initiator recover the data or end the
    #: command with an error: such a result is never good, whatever its status.
    data_missing: str = ""

    @property
    def good(self) -> bool:
        return self.response == 0 and self.status == ScsiStatus.GOOD and not self.data_missing

    @property
    def sense_data(self) -> SenseData | None:
        """The parsed sense data (SPC-4 4.5), None if absent or malformed."""
        if not self.sense:
            return None
        try:
            return SenseData.parse(self.sense)
        except (ValueError, IndexError):
            return None

    @property
    def sense_key(self) -> int | None:
        sd = self.sense_data
        return sd.sense_key if sd else None

    @property
    def asc_ascq(self) -> tuple[int, int] | None:
        sd = self.sense_data
        return (sd.asc, sd.ascq) if sd else None

    def raise_for_status(self) -> ScsiResult:
        """Return self if GOOD (or CONDITION MET); raise ``SCSIError`` otherwise."""
        if self.response != 0:
            raise SCSIError(
                f"iSCSI response {self.response:#04x} (target failure)",
                sense_key=0,
                asc=0,
                section="RFC 7143 11.4.3",
                status=self.status,
            )
        if self.status in (ScsiStatus.GOOD, ScsiStatus.CONDITION_MET):
            return self
        if self.status == ScsiStatus.RESERVATION_CONFLICT:
            raise ReservationConflict()
        sd = self.sense_data or SenseData(0)
        try:
            status_name = ScsiStatus(self.status).name
        except ValueError:
            status_name = f"{self.status:#04x}"
        raise SCSIError(
            f"{status_name}: sense key {sd.sense_key:#x}, ASC/ASCQ {sd.asc:#04x}/{sd.ascq:#04x}",
            sense_key=sd.sense_key,
            asc=sd.asc,
            ascq=sd.ascq,
            status=self.status,
            info=sd.information,
            field_pointer=sd.field_pointer,
            bit_pointer=sd.bit_pointer,
            cd=sd.cd,
        )


class Event:
    """Base of everything the engine reports."""


@dataclasses.dataclass(frozen=True)
class CommandCompleted(Event):
    itt: int
    result: ScsiResult


@dataclasses.dataclass(frozen=True)
class PingAnswered(Event):
    """The NOP-In answering our NOP-Out (RFC 7143 11.19)."""

    itt: int
    pdu: NopIn


@dataclasses.dataclass(frozen=True)
class TargetPinged(Event):
    """A target-initiated NOP-In; ``answered`` if we queued the NOP-Out (11.18)."""

    pdu: NopIn
    answered: bool


@dataclasses.dataclass(frozen=True)
class TaskManagementCompleted(Event):
    itt: int
    response: int
    pdu: TaskManagementResponse


@dataclasses.dataclass(frozen=True)
class TextCompleted(Event):
    """A whole Text Response sequence, its data segments joined (RFC 7143 11.11)."""

    itt: int
    data: bytes
    pdus: tuple[TextResponse, ...]


@dataclasses.dataclass(frozen=True)
class LogoutCompleted(Event):
    itt: int
    pdu: LogoutResponse


@dataclasses.dataclass(frozen=True)
class AsyncMessageReceived(Event):
    pdu: AsyncMessage


@dataclasses.dataclass(frozen=True)
class PDURejected(Event):
    """A Reject (RFC 7143 11.17); ``itt`` of the rejected PDU, if we know the task."""

    itt: int | None
    reason: int
    pdu: Reject
    rejected_opcode: int | None


@dataclasses.dataclass(frozen=True)
class ProtocolViolated(Event):
    """The target broke a rule we can observe. Recorded, never raised."""

    message: str
    section: str
    pdu: PDU | None = dataclasses.field(default=None, repr=False)
    level: str = "MUST"


# ====================================================================== session


class SessionSequencer:
    """Session-wide numbering (RFC 7143 4.2.2): CmdSN, the command window, ITTs."""

    def __init__(self, cmdsn: int = 0, *, expcmdsn: int | None = None, maxcmdsn: int | None = None):
        self.cmdsn = cmdsn & _SN_MASK  # the CmdSN the next non-immediate command takes
        self.expcmdsn = cmdsn if expcmdsn is None else expcmdsn
        self.maxcmdsn = cmdsn if maxcmdsn is None else maxcmdsn
        self._next_itt = 1
        self.in_use: set[int] = set()

    # ----------------------------------------------------------------- ITT

    def allocate_itt(self) -> int:
        """A fresh Initiator Task Tag, never 0xffffffff (11.2.1.8), never in use."""
        while True:
            itt = self._next_itt
            self._next_itt = (self._next_itt + 1) & _SN_MASK
            if itt != NONE_TAG and itt not in self.in_use:
                self.in_use.add(itt)
                return itt

    def release_itt(self, itt: int) -> None:
        self.in_use.discard(itt)

    # ----------------------------------------------------------------- CmdSN

    def window_open(self) -> bool:
        """True if a non-immediate command may be sent now (CmdSN <= MaxCmdSN)."""
        return _sn_le(self.cmdsn, self.maxcmdsn)

    def take_cmdsn(self, immediate: bool) -> int:
        """The CmdSN for a new command; only non-immediate ones advance it (4.2.2.1)."""
        sn = self.cmdsn
        if not immediate:
            self.cmdsn = _sn_add(self.cmdsn, 1)
        return sn

    def update_window(self, expcmdsn: int, maxcmdsn: int) -> str | None:
        """Apply ExpCmdSN/MaxCmdSN from a target PDU (RFC 7143 4.2.2.1).

        Returns a violation message, or None. A MaxCmdSN below ExpCmdSN - 1 means
        both fields are ignored; neither value ever moves backwards.
        """
        if _sn_lt(maxcmdsn, _sn_add(expcmdsn, -1)):
            return f"MaxCmdSN {maxcmdsn} < ExpCmdSN {expcmdsn} - 1: window ignored"
        problem = None
        if _sn_gt(expcmdsn, self.cmdsn):
            problem = f"ExpCmdSN {expcmdsn} is beyond the next CmdSN {self.cmdsn} we would send"
        if _sn_gt(expcmdsn, self.expcmdsn):
            self.expcmdsn = expcmdsn
        if _sn_gt(maxcmdsn, self.maxcmdsn):
            self.maxcmdsn = maxcmdsn
        return problem


# ====================================================================== tasks


def _data_missing(task: _Task, expdatasn: int | None) -> str:
    """Why ``task``'s Data-In is known to be incomplete, or "" (see ScsiResult)."""
    if task.datasn_skipped:
        return "a Data-In DataSN was skipped"
    if task.data_in_bytes < task.data_in_end:
        return f"{task.data_in_end - task.data_in_bytes} bytes within the data never came"
    if expdatasn and _sn_lt(task.next_datasn, expdatasn):  # None or 0: nothing counted
        return f"ExpDataSN {expdatasn} counts Data-In never received ({task.next_datasn})"
    return ""


class _TaskExtra(TypedDict, total=False):
    """What a request needs beyond the common task fields."""

    read: bool  # SCSI: the R bit
    write: bool  # SCSI: the W bit
    sent_bytes: int  # SCSI: immediate plus unsolicited bytes sent with the command
    reason: int  # logout: the reason code (RFC 7143 11.14.1)
    reassigned: bool  # SCSI: moved here by TASK REASSIGN; the next R2T sets the R2TSN count


@dataclasses.dataclass
class _Task:
    itt: int
    kind: str  # "scsi", "nop", "tmf", "text", "logout"
    lun: int = 0
    cmdsn: int = 0
    immediate: bool = False
    # SCSI
    cdb: bytes = b""
    attr: int = TaskAttribute.SIMPLE
    data_out: bytes = b""
    expected_in: int = 0
    edtl: int = 0
    data_in: bytearray = dataclasses.field(default_factory=bytearray)
    data_in_end: int = 0
    data_in_bytes: int = 0
    next_datasn: int = 0
    datasn_skipped: bool = False  # a Data-In came with a DataSN beyond the next one
    next_r2tsn: int = 0
    r2t_count: int = 0
    status_result: ScsiResult | None = None
    sent: bool = False
    # NOP
    ping_data: bytes = b""
    # text
    text_segments: list[bytes] = dataclasses.field(default_factory=list)
    text_in: list[TextResponse] = dataclasses.field(default_factory=list)
    # anything else the request needs
    extra: _TaskExtra = dataclasses.field(default_factory=_TaskExtra)


# Every target PDU that carries StatSN, ExpCmdSN and MaxCmdSN (RFC 7143 11.2.1, 4.2.2).
_SEQUENCED_PDUS = (
    NopIn,
    ScsiResponse,
    TaskManagementResponse,
    LoginResponse,
    TextResponse,
    ScsiDataIn,
    LogoutResponse,
    R2T,
    AsyncMessage,
    Reject,
)
# Target PDUs that answer a task of ours, by its Initiator Task Tag.
_TaskPDU = (
    ScsiDataIn | R2T | ScsiResponse | NopIn | TaskManagementResponse | TextResponse | LogoutResponse
)

# Target PDUs whose StatSN advances the connection's StatSN (RFC 7143 4.2.2.2);
# Data-In only with the S bit, NOP-In only when it answers a ping (11.19).
_STATUS_PDUS = (
    ScsiResponse,
    TaskManagementResponse,
    TextResponse,
    LogoutResponse,
    Reject,
    AsyncMessage,
)


class InitiatorConnection:
    """One connection of a session in full-feature phase (sans-IO).

    ``cid`` is the connection ID; ``expstatsn`` the StatSN we expect next (1 + the
    StatSN of the final Login Response). ``params`` is the login's outcome, the
    negotiated values that shape PDUs on this connection (RFC 7143 13); before a
    login, or without one, the RFC defaults (``NegotiatedParameters()``).
    ``max_recv_data_segment_length_peer`` is what the *target* declared: it limits
    every data segment we send; ``..._local`` is ours: it limits what we accept.
    ``answer_target_pings`` (default True) answers NOP-In with a valid TTT as RFC
    7143 11.18 requires; a test can turn it off to see what the target does.
    """

    def __init__(
        self,
        session: SessionSequencer,
        *,
        cid: int = 0,
        params: NegotiatedParameters | None = None,
        expstatsn: int = 0,
        answer_target_pings: bool = True,
    ) -> None:
        self.session = session
        self.cid = cid
        self.params = params if params is not None else NegotiatedParameters()
        self.expstatsn = expstatsn & _SN_MASK
        self.answer_target_pings = answer_target_pings
        self.tasks: dict[int, _Task] = {}
        self.violations: list[ProtocolViolated] = []
        self._outbox: list[PDU] = []
        self._waiting: collections.deque[_Task] = collections.deque()
        self.logged_out = False

    # ------------------------------------------------------------------ output

    def pdus_to_send(self) -> list[PDU]:
        """PDUs to write, in order; the adapter encodes them (digests per params)."""
        out, self._outbox = self._outbox, []
        return out

    def send_pdu(self, pdu: PDU) -> None:
        """Queue any PDU as is (negative tests); sequence numbers are the caller's."""
        self._outbox.append(pdu)

    @property
    def queued_commands(self) -> int:
        """Commands held back because the CmdSN window is closed."""
        return len(self._waiting)

    # ------------------------------------------------------------------ requests

    def start_command(
        self,
        lun: int,
        cdb: bytes,
        data_out: bytes = b"",
        expected_in: int = 0,
        *,
        attr: int = TaskAttribute.SIMPLE,
        immediate: bool = False,
        edtl: int | None = None,
        read: bool | None = None,
        write: bool | None = None,
    ) -> int:
        """Start a SCSI command; returns its ITT.

        ``edtl`` overrides the Expected Data Transfer Length (default: the length of
        ``data_out`` for writes, ``expected_in`` otherwise); ``read``/``write``
        override the R/W bits. A non-immediate command waits while the window is
        closed (RFC 7143 4.2.2.1).
        """
        itt = self.session.allocate_itt()
        data_out = bytes(data_out)
        if edtl is None:
            edtl = len(data_out) if data_out else expected_in
        task = _Task(
            itt=itt,
            kind="scsi",
            lun=lun,
            immediate=immediate,
            cdb=bytes(cdb),
            attr=int(attr),
            data_out=data_out,
            expected_in=expected_in,
            edtl=edtl,
            data_in=bytearray(expected_in),
            extra={
                "read": (expected_in > 0) if read is None else read,
                "write": bool(data_out) if write is None else write,
            },
        )
        self.tasks[itt] = task
        if immediate or (not self._waiting and self.session.window_open()):
            self._send_command(task)
        else:
            self._waiting.append(task)
        return itt

    def _send_command(self, task: _Task) -> None:
        p = self.params
        task.cmdsn = self.session.take_cmdsn(task.immediate)
        task.sent = True
        read, write = task.extra["read"], task.extra["write"]
        data = task.data_out
        immediate_data = b""
        if write and data and p.immediate_data:
            # RFC 7143 13.13/13.14: immediate data up to FirstBurstLength and within the
            # target's MaxRecvDataSegmentLength.
            limit = min(p.first_burst_length, p.max_recv_data_segment_length_peer, task.edtl)
            immediate_data = data[:limit]
        unsolicited: list[ScsiDataOut] = []
        if write and data and not p.initial_r2t:
            # Unsolicited Data-Out after the command, up to FirstBurstLength in total
            # (RFC 7143 13.10, 13.14), TTT 0xffffffff.
            end = min(p.first_burst_length, len(data), task.edtl)
            if end > len(immediate_data):
                unsolicited = self._data_out_sequence(
                    task, NONE_TAG, len(immediate_data), end - len(immediate_data)
                )
        # Bidirectional: EDTL is the write length, the read length goes in an AHS (11.2.2.4)
        bidi = task.expected_in if (read and write and task.expected_in) else None
        cmd = ScsiCommand(
            immediate=task.immediate,
            final=not unsolicited,  # F: no unsolicited Data-Out follows (11.3.1)
            read=read,
            write=write,
            attr=task.attr,
            lun=lun_to_field(task.lun),
            itt=task.itt,
            expected_data_transfer_length=task.edtl,
            cmdsn=task.cmdsn,
            expstatsn=self.expstatsn,
            cdb=task.cdb,
            bidi_read_length=bidi,
            data=immediate_data,
        )
        task.extra["sent_bytes"] = len(immediate_data) + sum(len(d.data) for d in unsolicited)
        self._outbox.append(cmd)
        self._outbox.extend(unsolicited)

    def _data_out_sequence(
        self, task: _Task, ttt: int, offset: int, length: int
    ) -> list[ScsiDataOut]:
        """Data-Out PDUs for one sequence, each within the target's MRDSL (13.12):
        ``core.pdu.data_out_pdus`` cuts them (DataSN and the F bit)."""
        return data_out_pdus(
            task.data_out[offset : offset + length],
            offset,
            self.params.max_recv_data_segment_length_peer,
            itt=task.itt,
            ttt=ttt,
            lun=lun_to_field(task.lun),
            expstatsn=self.expstatsn,
        )

    def start_nop(self, data: bytes = b"", *, lun: int = 0, immediate: bool = True) -> int:
        """Ping the target: NOP-Out with a valid ITT, answered by a NOP-In (11.18)."""
        itt = self.session.allocate_itt()
        task = _Task(itt=itt, kind="nop", lun=lun, immediate=immediate, ping_data=bytes(data))
        task.cmdsn = self.session.take_cmdsn(immediate)
        self.tasks[itt] = task
        self._outbox.append(
            NopOut(
                immediate=immediate,
                lun=lun_to_field(lun),
                itt=itt,
                ttt=NONE_TAG,
                cmdsn=task.cmdsn,
                expstatsn=self.expstatsn,
                data=bytes(data),
            )
        )
        return itt

    def send_nop_ack(self) -> None:
        """NOP-Out with ITT 0xffffffff: just confirms ExpStatSN; no answer expected."""
        self._outbox.append(
            NopOut(
                immediate=True,
                itt=NONE_TAG,
                ttt=NONE_TAG,
                cmdsn=self.session.cmdsn,
                expstatsn=self.expstatsn,
            )
        )

    def start_tmf(
        self,
        function: int,
        *,
        lun: int = 0,
        referenced_task_tag: int = NONE_TAG,
        refcmdsn: int | None = None,
        expdatasn: int = 0,
        immediate: bool = True,
    ) -> int:
        """Task Management Function Request (RFC 7143 11.5).

        RefCmdSN defaults to the CmdSN of the referenced task when we know it
        (11.5.4: required for ABORT TASK); TMF requests are usually immediate.
        The functions RFC 7144 adds (9-12) raise ``ProtocolError`` on a session that
        did not negotiate iSCSIProtocolLevel 2 (RFC 7144 6.3: they MUST NOT be sent).
        """
        if function in _LEVEL2_FUNCTIONS and self.params.iscsi_protocol_level < 2:
            raise ProtocolError(
                f"task management function {int(function)} needs iSCSIProtocolLevel 2; "
                f"this session negotiated {self.params.iscsi_protocol_level}",
                section="RFC 7144 6.3",
            )
        itt = self.session.allocate_itt()
        task = _Task(itt=itt, kind="tmf", lun=lun, immediate=immediate)
        task.cmdsn = self.session.take_cmdsn(immediate)
        if refcmdsn is None:
            ref = self.tasks.get(referenced_task_tag)
            refcmdsn = ref.cmdsn if ref is not None else task.cmdsn
        self.tasks[itt] = task
        self._outbox.append(
            TaskManagementRequest(
                immediate=immediate,
                function=int(function),
                lun=lun_to_field(lun),
                itt=itt,
                referenced_task_tag=referenced_task_tag,
                cmdsn=task.cmdsn,
                expstatsn=self.expstatsn,
                refcmdsn=refcmdsn,
                expdatasn=expdatasn,
            )
        )
        return itt

    def start_text(self, data: bytes, *, immediate: bool = True, ttt: int = NONE_TAG) -> int:
        """Text Request (RFC 7143 11.10), split over C-bit PDUs within the target's MRDSL."""
        itt = self.session.allocate_itt()
        mrdsl = max(1, self.params.max_recv_data_segment_length_peer)
        segments = [data[i : i + mrdsl] for i in range(0, len(data), mrdsl)] or [b""]
        task = _Task(itt=itt, kind="text", immediate=immediate, text_segments=segments)
        self.tasks[itt] = task
        self._send_text_segment(task, ttt)
        return itt

    def _send_text_segment(self, task: _Task, ttt: int) -> None:
        seg = task.text_segments.pop(0) if task.text_segments else b""
        more = bool(task.text_segments)
        task.cmdsn = self.session.take_cmdsn(task.immediate)
        self._outbox.append(
            TextRequest(
                immediate=task.immediate,
                final=not more,
                cont=more,
                itt=task.itt,
                ttt=ttt,
                cmdsn=task.cmdsn,
                expstatsn=self.expstatsn,
                data=seg,
            )
        )

    def start_logout(
        self,
        reason: int = LogoutReason.CLOSE_SESSION,
        *,
        cid: int | None = None,
        immediate: bool = True,
    ) -> int:
        """Logout Request (RFC 7143 11.14); ``cid`` defaults to this connection."""
        itt = self.session.allocate_itt()
        task = _Task(itt=itt, kind="logout", immediate=immediate)
        task.cmdsn = self.session.take_cmdsn(immediate)
        task.extra["reason"] = int(reason)
        self.tasks[itt] = task
        self._outbox.append(
            LogoutRequest(
                immediate=immediate,
                reason=int(reason),
                itt=itt,
                cid=self.cid if cid is None else cid,
                cmdsn=task.cmdsn,
                expstatsn=self.expstatsn,
            )
        )
        return itt

    def abandon(self, itt: int) -> None:
        """Forget a task (e.g. its caller timed out); later PDUs for it are violations."""
        task = self.tasks.pop(itt, None)
        if task is not None:
            if task in self._waiting:
                self._waiting.remove(task)
            self.session.release_itt(itt)

    # ------------------------------------------------------------------ ERL 2

    def detach_for_recovery(self) -> list[_Task]:
        """This connection failed at ErrorRecoveryLevel 2: hand its SCSI tasks over for
        reassignment to another connection of the session (RFC 7143 7.2.2). Their ITTs
        stay in use; what they received so far stays with them."""
        moved = [t for t in self.tasks.values() if t.kind == "scsi"]
        for t in moved:
            del self.tasks[t.itt]
        self._waiting.clear()
        return moved

    def reassign(self, task: _Task) -> int | None:
        """Adopt ``task`` from a failed connection of this session (RFC 7143 7.2.2).

        A task never sent (its window was closed) is simply sent here; None is
        returned. Otherwise a TASK REASSIGN (function 8, 11.5.1, immediate) asks the
        target to continue it on this connection; its ITT is returned and the task's
        PDUs are accepted here from now on. ExpDataSN (11.5.6) is the next Data-In PDU
        a read still needs (the data placed so far are kept), and 0 for a write, whose
        data the target solicits again by R2T from the R2TSN it chooses.
        """
        self.tasks[task.itt] = task
        if not task.sent:
            if task.immediate or (not self._waiting and self.session.window_open()):
                self._send_command(task)
            else:
                self._waiting.append(task)
            return None
        expdatasn = 0
        if task.extra["write"]:
            task.extra["reassigned"] = True
        else:
            expdatasn = task.next_datasn
        return self.start_tmf(
            TmfFunction.TASK_REASSIGN,
            lun=task.lun,
            referenced_task_tag=task.itt,
            refcmdsn=task.cmdsn,
            expdatasn=expdatasn,
        )

    # ------------------------------------------------------------------ input

    def receive_pdu(self, pdu: PDU) -> list[Event]:
        """Process one PDU from the target; returns the events it caused."""
        events: list[Event] = []
        self._track_sequence(pdu, events)
        handler = _HANDLERS.get(type(pdu))
        if handler is None:
            self._violate(
                events,
                f"unexpected {type(pdu).__name__} from the target",
                "RFC 7143 11.2.1.2",
                pdu,
            )
        else:
            handler(self, pdu, events)
        self._release_waiting()
        return events

    def _violate(
        self,
        events: list[Event],
        message: str,
        section: str,
        pdu: PDU | None = None,
        level: str = "MUST",
    ) -> None:
        v = ProtocolViolated(message, section, pdu, level)
        self.violations.append(v)
        events.append(v)

    def _release_waiting(self) -> None:
        while self._waiting and self.session.window_open():
            self._send_command(self._waiting.popleft())

    def _track_sequence(self, pdu: PDU, events: list[Event]) -> None:
        """StatSN and the command window (RFC 7143 4.2.2)."""
        if not isinstance(pdu, _SEQUENCED_PDUS):
            return  # an initiator PDU or an UnknownPDU: no window, no StatSN
        problem = self.session.update_window(pdu.expcmdsn, pdu.maxcmdsn)
        if problem:
            self._violate(events, problem, "RFC 7143 4.2.2.1", pdu)
        statsn = pdu.statsn
        advances = isinstance(pdu, _STATUS_PDUS)
        if isinstance(pdu, ScsiDataIn):
            advances = pdu.status_present
            if not advances:
                return  # StatSN is only meaningful with S (11.7.4)
        elif isinstance(pdu, NopIn):
            advances = pdu.itt != NONE_TAG
        if advances:
            if statsn != self.expstatsn:
                self._violate(
                    events,
                    f"{type(pdu).__name__} StatSN {statsn}, expected {self.expstatsn}",
                    "RFC 7143 4.2.2.2",
                    pdu,
                )
            if statsn == self.expstatsn or _sn_gt(statsn, self.expstatsn):
                self.expstatsn = _sn_add(statsn, 1)
        elif statsn != self.expstatsn:
            # R2T and unsolicited NOP-In carry the *next* StatSN (11.8.3, 11.19.3).
            self._violate(
                events,
                f"{type(pdu).__name__} StatSN {statsn} is not the next StatSN {self.expstatsn}",
                "RFC 7143 11.8.3" if isinstance(pdu, R2T) else "RFC 7143 11.19.3",
                pdu,
                level="SHOULD",
            )

    def _task_for(self, pdu: _TaskPDU, kind: str, events: list[Event]) -> _Task | None:
        itt = pdu.itt
        task = self.tasks.get(itt)
        if task is None or task.kind != kind:
            self._violate(
                events,
                f"{type(pdu).__name__} for ITT {itt:#x}, which is no outstanding {kind} task",
                "RFC 7143 11.2.1.8",
                pdu,
            )
            return None
        return task

    def _finish(self, task: _Task) -> None:
        self.tasks.pop(task.itt, None)
        self.session.release_itt(task.itt)

    # ------------------------------------------------------------------ handlers

    def _on_data_in(self, pdu: ScsiDataIn, events: list[Event]) -> None:
        task = self._task_for(pdu, "scsi", events)
        if task is None:
            return
        if pdu.datasn != task.next_datasn:
            self._violate(
                events,
                f"Data-In DataSN {pdu.datasn}, expected {task.next_datasn}",
                "RFC 7143 11.7.5",
                pdu,
            )
            if _sn_lt(task.next_datasn, pdu.datasn):
                task.datasn_skipped = True
        task.next_datasn = _sn_add(pdu.datasn, 1)
        n = len(pdu.data)
        if n > self.params.max_recv_data_segment_length_local:
            self._violate(
                events,
                f"Data-In of {n} bytes exceeds our MaxRecvDataSegmentLength "
                f"{self.params.max_recv_data_segment_length_local}",
                "RFC 7143 13.12",
                pdu,
            )
        if pdu.ack and self.params.error_recovery_level == 0:
            self._violate(events, "A bit set at ErrorRecoveryLevel 0", "RFC 7143 11.7.2", pdu)
        elif pdu.ack and not task.datasn_skipped:
            self._data_ack(pdu)
        if pdu.status_present and not pdu.final:
            self._violate(events, "S bit without F bit", "RFC 7143 11.7.3", pdu)
        if pdu.status_present and task.extra["read"] and task.extra["write"]:
            self._violate(
                events, "status in a Data-In of a bidirectional command", "RFC 7143 11.7.3", pdu
            )
        end = pdu.buffer_offset + n
        if (
            n
            and pdu.buffer_offset > task.data_in_end
            and self.params.data_pdu_in_order
            and self.params.data_sequence_in_order
        ):
            # in order both ways, the data comes at continuously increasing offsets with
            # no overlay (13.18) and sequences at non-decreasing ones (13.19, MUST): a gap
            # left before this PDU would be returned as zeros, so it is recorded
            self._violate(
                events,
                f"Data-In at Buffer Offset {pdu.buffer_offset} leaves bytes "
                f"{task.data_in_end}..{pdu.buffer_offset} unsent (DataPDUInOrder and "
                "DataSequenceInOrder Yes)",
                "RFC 7143 13.18, 13.19",
                pdu,
            )
        if n and end > task.expected_in:
            self._violate(
                events,
                f"Data-In up to offset {end} beyond the expected {task.expected_in} bytes",
                "RFC 7143 11.7.6",
                pdu,
            )
        if n:
            # Only what we asked for is kept: the excess is reported above, and a hostile
            # Buffer Offset near 2**32 would otherwise make us allocate gigabytes.
            keep = min(end, task.expected_in)
            if keep > pdu.buffer_offset:
                if keep > len(task.data_in):
                    task.data_in.extend(bytes(keep - len(task.data_in)))
                task.data_in[pdu.buffer_offset : keep] = pdu.data[: keep - pdu.buffer_offset]
                task.data_in_end = max(task.data_in_end, keep)
            task.data_in_bytes += n
        if pdu.status_present:
            result = ScsiResult(
                status=pdu.status,
                data=bytes(task.data_in[: task.data_in_end]),
                residual=pdu.residual_count,
                underflow=pdu.underflow,
                overflow=pdu.overflow,
                itt=task.itt,
                response_pdu=pdu,
                data_missing=_data_missing(task, None),
            )
            self._check_residual(task, result, pdu, events)
            self._finish(task)
            events.append(CommandCompleted(task.itt, result))

    def _data_ack(self, pdu: ScsiDataIn) -> None:
        """RFC 7143 11.16.2 and 11.7.2: at ErrorRecoveryLevel 1 or higher, a Data-In with
        the A bit and no hole before it is answered with a DataACK SNACK (type 2): ITT
        0xffffffff (11.16.4), the Data-In's Target Transfer Tag and LUN (11.16.5), BegRun
        the next expected DataSN and RunLength 0 (11.16.6, 11.16.7). Sent even when the
        status came in the same Data-In (then OPTIONAL): it goes out with, not after, the
        ExpStatSN that acknowledges that status. With a hole (a DataSN skipped: this
        initiator asks for no retransmission) it is postponed for good (11.16.2 MUST
        postpone until the holes are filled)."""
        self._outbox.append(
            SnackRequest(
                snack_type=SnackType.DATA_ACK,
                lun=pdu.lun,
                itt=NONE_TAG,
                ttt=pdu.ttt,
                expstatsn=self.expstatsn,
                begrun=_sn_add(pdu.datasn, 1),
                runlength=0,
            )
        )

    def _check_residual(
        self, task: _Task, result: ScsiResult, pdu: PDU, events: list[Event]
    ) -> None:
        """Residuals must add up (RFC 7143 11.4.5): EDTL - residual bytes moved."""
        if result.status != ScsiStatus.GOOD or result.response != 0:
            return
        read_only = task.extra["read"] and not task.extra["write"]
        if not read_only:
            return
        if result.underflow and result.residual > task.edtl:
            self._violate(
                events, f"residual {result.residual} > EDTL {task.edtl}", "RFC 7143 11.4.5.1", pdu
            )
        elif result.underflow and task.data_in_bytes > task.edtl - result.residual:
            self._violate(
                events,
                f"{task.data_in_bytes} bytes received but EDTL {task.edtl} - residual {result.residual} "
                "is less",
                "RFC 7143 11.4.5.1",
                pdu,
            )
        elif not result.underflow and not result.overflow and task.data_in_end < task.edtl:
            self._violate(
                events,
                f"only {task.data_in_end} of {task.edtl} bytes and no underflow reported",
                "RFC 7143 11.4.5.1",
                pdu,
                level="SHOULD",
            )

    def _on_r2t(self, pdu: R2T, events: list[Event]) -> None:
        task = self._task_for(pdu, "scsi", events)
        if task is None:
            return
        if not task.extra["write"]:
            self._violate(events, "R2T for a command without the W bit", "RFC 7143 11.8", pdu)
            return
        if task.extra.pop("reassigned", False):
            task.next_r2tsn = pdu.r2tsn  # the target picks up the count after TASK REASSIGN
        if pdu.r2tsn != task.next_r2tsn:
            self._violate(
                events, f"R2TSN {pdu.r2tsn}, expected {task.next_r2tsn}", "RFC 7143 11.8.4", pdu
            )
        task.next_r2tsn = _sn_add(pdu.r2tsn, 1)
        task.r2t_count += 1
        if task.extra["read"]:
            task.next_datasn = _sn_add(task.next_datasn, 1)  # bidi: R2T and Data-In share DataSN
        length = pdu.desired_data_transfer_length
        if length == 0:
            self._violate(events, "R2T with Desired Data Transfer Length 0", "RFC 7143 11.8.6", pdu)
        if length > self.params.max_burst_length:
            self._violate(
                events,
                f"R2T asks for {length} bytes, more than MaxBurstLength {self.params.max_burst_length}",
                "RFC 7143 13.13",
                pdu,
            )
        if pdu.buffer_offset + length > task.edtl:
            self._violate(
                events,
                f"R2T for bytes {pdu.buffer_offset}..{pdu.buffer_offset + length} beyond EDTL {task.edtl}",
                "RFC 7143 11.8.5",
                pdu,
            )
        if pdu.ttt == NONE_TAG:
            self._violate(events, "R2T with the reserved TTT 0xffffffff", "RFC 7143 11.8.2", pdu)
        # Answer what we can: never read beyond the data we have.
        offset = min(pdu.buffer_offset, len(task.data_out))
        length = max(0, min(length, len(task.data_out) - offset))
        self._outbox.extend(self._data_out_sequence(task, pdu.ttt, offset, length))

    def _on_scsi_response(self, pdu: ScsiResponse, events: list[Event]) -> None:
        task = self._task_for(pdu, "scsi", events)
        if task is None:
            return
        if len(pdu.data) == 1 or (
            len(pdu.data) >= 2 and 2 + int.from_bytes(pdu.data[:2], "big") > len(pdu.data)
        ):
            self._violate(events, "SenseLength runs past the data segment", "RFC 7143 11.4.7", pdu)
        if pdu.response == 0 and pdu.status == ScsiStatus.GOOD and not task.extra["write"]:
            # For reads ExpDataSN counts the Data-In PDUs (11.4.8). For writes RFC 3720 and
            # RFC 7143 word it differently (R2Ts counted or not), so it is not checked.
            expected = task.next_datasn
            if pdu.expdatasn != expected:
                self._violate(
                    events,
                    f"ExpDataSN {pdu.expdatasn}, but {expected} Data-In PDUs were sent",
                    "RFC 7143 11.4.8",
                    pdu,
                    level="SHOULD",
                )
        result = ScsiResult(
            status=pdu.status,
            sense=pdu.sense,
            data=bytes(task.data_in[: task.data_in_end]),
            residual=pdu.residual_count,
            response=pdu.response,
            underflow=pdu.underflow,
            overflow=pdu.overflow,
            bidi_residual=pdu.bidi_residual_count,
            itt=task.itt,
            response_pdu=pdu,
            data_missing=_data_missing(task, pdu.expdatasn if task.extra["read"] else None),
        )
        self._check_residual(task, result, pdu, events)
        self._finish(task)
        events.append(CommandCompleted(task.itt, result))

    def _on_nop_in(self, pdu: NopIn, events: list[Event]) -> None:
        if pdu.itt == NONE_TAG:
            if pdu.data:
                self._violate(events, "unsolicited NOP-In carries data", "RFC 7143 11.19", pdu)
            answered = False
            if pdu.ttt != NONE_TAG and self.answer_target_pings:
                # RFC 7143 11.18: answer with ITT 0xffffffff, the TTT copied, I=1.
                self._outbox.append(
                    NopOut(
                        immediate=True,
                        lun=pdu.lun,
                        itt=NONE_TAG,
                        ttt=pdu.ttt,
                        cmdsn=self.session.cmdsn,
                        expstatsn=self.expstatsn,
                    )
                )
                answered = True
            events.append(TargetPinged(pdu, answered))
            return
        task = self._task_for(pdu, "nop", events)
        if task is None:
            return
        if pdu.ttt != NONE_TAG:
            self._violate(
                events, "NOP-In answering a ping must have TTT 0xffffffff", "RFC 7143 11.19", pdu
            )
        wanted = task.ping_data[: self.params.max_recv_data_segment_length_local]
        if pdu.data != wanted:
            self._violate(events, "NOP-In does not echo the ping data", "RFC 7143 11.19", pdu)
        self._finish(task)
        events.append(PingAnswered(task.itt, pdu))

    def _on_tmf_response(self, pdu: TaskManagementResponse, events: list[Event]) -> None:
        task = self._task_for(pdu, "tmf", events)
        if task is None:
            return
        self._finish(task)
        events.append(TaskManagementCompleted(task.itt, pdu.response, pdu))

    def _on_text_response(self, pdu: TextResponse, events: list[Event]) -> None:
        task = self._task_for(pdu, "text", events)
        if task is None:
            return
        if pdu.final and pdu.cont:
            self._violate(events, "Text Response with both F and C", "RFC 7143 11.11.2", pdu)
        task.text_in.append(pdu)
        if task.text_segments:
            # The target acknowledged one segment of a long request: send the next.
            self._send_text_segment(task, pdu.ttt)
            return
        if pdu.final and not pdu.cont:
            if pdu.ttt != NONE_TAG:
                self._violate(
                    events, "final Text Response with a TTT", "RFC 7143 11.11.4", pdu, "SHOULD"
                )
            self._finish(task)
            data = b"".join(r.data for r in task.text_in)
            events.append(TextCompleted(task.itt, data, tuple(task.text_in)))
            return
        if pdu.ttt == NONE_TAG:
            self._violate(events, "non-final Text Response without a TTT", "RFC 7143 11.11.4", pdu)
        # More to come: an empty Text Request with the TTT asks for it (11.10.4).
        self._send_text_segment(task, pdu.ttt)

    def _on_logout_response(self, pdu: LogoutResponse, events: list[Event]) -> None:
        task = self._task_for(pdu, "logout", events)
        if task is None:
            return
        self._finish(task)
        if (
            pdu.response == 0
            and task.extra.get("reason") != LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY
        ):
            self.logged_out = True
        events.append(LogoutCompleted(task.itt, pdu))

    def _on_async(self, pdu: AsyncMessage, events: list[Event]) -> None:
        events.append(AsyncMessageReceived(pdu))

    def _on_reject(self, pdu: Reject, events: list[Event]) -> None:
        header = pdu.data
        opcode = header[0] & 0x3F if header else None
        itt = int.from_bytes(header[16:20], "big") if len(header) >= 20 else None
        task = self.tasks.get(itt) if itt is not None else None
        # A rejected command ends its task (11.17.1); a rejected Data-Out or SNACK
        # does not end the command it belonged to.
        ends_task = task is not None and opcode not in (Opcode.SCSI_DATA_OUT, Opcode.SNACK_REQUEST)
        if task is not None and ends_task:
            self._finish(task)
        events.append(PDURejected(itt if task is not None else None, pdu.reason, pdu, opcode))


# Looked up by the exact class of the PDU. Each handler takes its own PDU class, which
# the value type of one dict cannot say per key: hence Any for the PDU argument.
_HANDLERS: dict[type[PDU], Callable[[InitiatorConnection, Any, list[Event]], None]] = {
    ScsiDataIn: InitiatorConnection._on_data_in,
    R2T: InitiatorConnection._on_r2t,
    ScsiResponse: InitiatorConnection._on_scsi_response,
    NopIn: InitiatorConnection._on_nop_in,
    TaskManagementResponse: InitiatorConnection._on_tmf_response,
    TextResponse: InitiatorConnection._on_text_response,
    LogoutResponse: InitiatorConnection._on_logout_response,
    AsyncMessage: InitiatorConnection._on_async,
    Reject: InitiatorConnection._on_reject,
}
