"""The bridge's passive checks: one table of wire rules, judged on every PDU both ways.

Theory of operation
-------------------
A :class:`Judge` watches one TCP connection. It is sans-IO: the bridge (or a replayed
capture) hands it each decoded PDU with its direction (``"i->t"`` from the initiator,
``"t->i"`` from the target) and the exact bytes, and gets back the breaches that PDU
commits. Nothing here reads a clock or a socket.

Every check is a row of :data:`RULES`: a short name, the catalog requirement it
enforces (``conformance/requirements/rfc7143.toml``), that row's level, and the side
that breaks it by sending the PDU. ``tests/bridge/test_judge.py`` checks that each row
exists in the catalog with the same level and role, so the table cannot drift from the
catalog. A breach is a fact about the sender; how much it weighs (fail, non-strict,
informational) is the catalog level's, decided by ``grading`` where the results are
shown.

The judge follows the state both sides agreed on that connection:

- the login (text reassembled across C=1 PDUs): each key one side offers waits for the
  other side's answer, which is checked against the key's rule in ``core/keys.py``
  (list answers come from the offer, ``min``/``max`` numbers do not cross the offer,
  Boolean AND/OR results); the values in force at full feature phase come from the
  answers, the key defaults otherwise, and MaxRecvDataSegmentLength is declared per
  side (RFC 7143 13.12). Digests start right after the final Login Response (13.1);
  the bridge reads :attr:`Judge.header_digest` / :attr:`Judge.data_digest` then;
- the numbering: CmdSN (per session, shared through a :class:`SessionBook` by the
  connections of one session), ExpCmdSN/MaxCmdSN, StatSN per connection, DataSN and
  R2TSN per command;
- the tasks: each open Initiator Task Tag with its direction, expected length,
  immediate and unsolicited data, outstanding R2Ts and the bytes moved, so that R2T
  and Data-Out limits, residual counts and answers to NOP, Text, Task Management and
  Logout requests can be matched to their requests.

Memory stays bounded by what the peers keep open (tasks, R2Ts, pings), never by the
length of the conversation: the judge keeps no PDU once it has been judged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Literal, cast

from iscsi_conformance.core import serial
from iscsi_conformance.core.chap import ChapAlgorithm
from iscsi_conformance.core.keys import ResultFunction, Senders, ValueKind, defaults, spec_for
from iscsi_conformance.core.layout import BHS_LENGTH, LAYOUTS, FieldKind, check_reserved
from iscsi_conformance.core.negotiation import check_value
from iscsi_conformance.core.pdu import (
    PDU,
    R2T,
    AsyncMessage,
    LoginRequest,
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
    UnknownPDU,
    violations,
    well_formed,
)
from iscsi_conformance.core.text import parse_binary, parse_list, parse_number, parse_pairs

__all__ = ["DATA_UNREAD", "RULES", "Breach", "Direction", "Judge", "Rule", "SessionBook"]

Direction = Literal["i->t", "t->i"]
Side = Literal["initiator", "target"]
I2T: Direction = "i->t"
T2I: Direction = "t->i"
NONE_TAG = 0xFFFFFFFF
FULL_FEATURE = 3
_SENDER: dict[Direction, Side] = {I2T: "initiator", T2I: "target"}
_ANSWER_WORDS = frozenset({"NotUnderstood", "Irrelevant", "Reject"})
MAX_BREACHES = 1000  # per connection; past it they are counted, not kept
#: PDUs whose data segment no rule reads, only its length: the bridge's relay judges
#: them from the header and forwards their data unread (pump._STREAMED). A rule that
#: comes to read one's data must take its class out of here
#: (tests/bridge/test_relay_stream.py judges every conversation both ways).
DATA_UNREAD: tuple[type[PDU], ...] = (ScsiCommand, ScsiDataOut, ScsiDataIn)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One passive check: the catalog row it enforces, at that row's level."""

    name: str
    requirement: str
    level: str
    sender: Side
    summary: str


def _rules(*rows: Rule) -> dict[str, Rule]:
    return {r.name: r for r in rows}


#: The one table of wire rules (name -> Rule). Levels and roles are the catalog's.
RULES: dict[str, Rule] = _rules(
    # -- format of a single PDU
    Rule("format.fields", "R7143-7.7-1", "MUST", "initiator",
         "header fields hold legal, consistent values"),
    Rule("format.fields.target", "R7143-7.7-1", "MUST", "target",
         "header fields hold legal, consistent values"),
    Rule("login.t_and_c", "R7143-11.12-1", "MUST", "initiator",
         "T and C are never both set in a Login Request"),
    Rule("login.t_and_c.target", "R7143-11.12-1", "MUST", "target",
         "T and C are never both set in a Login Response"),
    Rule("datain.s_needs_f", "R7143-11.7-3", "MUST", "target",
         "the S bit of a Data-In comes only with the F bit"),
    Rule("command.rw_length", "R7143-11.3-2", "MUST", "initiator",
         "W/R bits match the data; ExpectedDataTransferLength is 0 without them"),
    Rule("padding.zero", "R7143-11.2.1-1", "SHOULD", "initiator",
         "pad bytes are zero"),
    Rule("padding.zero.target", "R7143-11.2.1-1", "SHOULD", "target",
         "pad bytes are zero"),
    # -- digests
    Rule("digest.correct", "R7143-13.1-2", "MUST", "initiator",
         "the agreed digests are present and correct on every full feature PDU"),
    Rule("digest.correct.target", "R7143-13.1-2", "MUST", "target",
         "the agreed digests are present and correct on every full feature PDU"),
    # -- login
    Rule("login.same_ids", "R7143-11.12-7", "MUST", "initiator",
         "all Login Requests of a login carry the same TSIH, CID and versions"),
    Rule("login.same_isid", "R7143-11.12-7", "INFORMATIONAL", "initiator",
         "all Login Requests of a login carry the same ISID (no keyword, RFC 7143 11.12.5)"),
    Rule("login.transit_granted", "R7143-6.3-4", "MUST", "target",
         "a Login Response sets T only when the request set it"),
    Rule("login.tsih", "R7143-6.3-5", "MUST", "target",
         "the final Login Response of a new session carries a non-zero TSIH"),
    Rule("login.only_login", "R7143-6.3-8", "INFORMATIONAL", "initiator",
         "nothing but Login Requests before the final Login Response"),
    Rule("login.silent_after_failure", "R7143-11.13-4", "MUST", "initiator",
         "nothing more after a Login Response with a non-zero status class"),
    Rule("login.cmdsn", "R7143-11.12-5", "MUST", "initiator",
         "the login does not advance CmdSN"),
    # -- key negotiation (text in login and full feature phase)
    Rule("keys.answered", "R7143-6.2-4", "MUST", "target",
         "every key offered to the target is answered"),
    Rule("keys.list_answer", "R7143-6.2.1-2", "MUST", "target",
         "a list key's answer is one value taken from the offer"),
    Rule("keys.list_answer.initiator", "R7143-6.2.1-2", "MUST", "initiator",
         "a list key's answer is one value taken from the offer"),
    Rule("keys.numeric_answer", "R7143-6.2.2-1", "MUST", "target",
         "a min/max key's answer does not cross the offer and is in range"),
    Rule("keys.numeric_answer.initiator", "R7143-6.2.2-1", "MUST", "initiator",
         "a min/max key's answer does not cross the offer and is in range"),
    Rule("keys.boolean_answer", "R7143-6.2.2-2", "MUST", "target",
         "a Boolean key's answer follows its AND/OR function"),
    Rule("keys.boolean_answer.initiator", "R7143-6.2.2-2", "MUST", "initiator",
         "a Boolean key's answer follows its AND/OR function"),
    Rule("keys.well_formed", "R7143-6.1-6", "INFORMATIONAL", "initiator",
         "values for standard keys are well formed and in range"),
    Rule("keys.sender", "R7143-6.2-6", "INFORMATIONAL", "initiator",
         "no key whose Senders line names only the target"),
    Rule("chap.response_length", "R7143-12.1.3-12", "MUST", "initiator",
         "CHAP_R is as long as the digest of the CHAP_A the target chose"),
    Rule("chap.response_length.target", "R7143-12.1.3-12", "MUST", "target",
         "CHAP_R is as long as the digest of the CHAP_A the target chose"),
    # -- numbering
    Rule("cmdsn.sequence", "R7143-4.2.2.1-5", "MUST", "initiator",
         "each command carries the current CmdSN; only non-immediate ones advance it"),
    Rule("cmdsn.window", "R7143-4.2.2.1-3", "INFORMATIONAL", "initiator",
         "no non-immediate command beyond MaxCmdSN"),
    Rule("cmdsn.target_window", "R7143-4.2.2.1-4", "MUST", "target",
         "MaxCmdSN is at least ExpCmdSN - 1 and ExpCmdSN never goes back"),
    Rule("statsn.sequence", "R7143-4.2.2.2-1", "INFORMATIONAL", "target",
         "StatSN advances by one per status-carrying response"),
    Rule("datasn.datain", "R7143-4.2.2.3-1", "MUST", "target",
         "Data-In DataSN runs from 0 by one per command"),
    Rule("r2tsn.sequence", "R7143-4.2.2.3-2", "MUST", "target",
         "R2TSN runs from 0 by one per command"),
    Rule("datasn.dataout", "R7143-4.2.2.3-3", "MUST", "initiator",
         "Data-Out DataSN runs from 0 by one per sequence"),
    # -- data movement
    Rule("mrdsl.target", "R7143-11.7-2", "MUST", "target",
         "no PDU carries more data than the initiator's MaxRecvDataSegmentLength"),
    Rule("mrdsl.initiator", "R7143-11.7-4", "MUST", "initiator",
         "no PDU carries more data than the target's MaxRecvDataSegmentLength"),
    Rule("datain.offsets", "R7143-11.7-1", "MUST", "target",
         "Data-In offsets of a command are gap-free and do not overlap"),
    Rule("datain.burst", "R7143-11.7-7", "MUST", "target",
         "a Data-In sequence carries at most MaxBurstLength bytes"),
    Rule("r2t.burst", "R7143-11.8-1", "MUST", "target",
         "an R2T asks for at most MaxBurstLength bytes"),
    Rule("r2t.outstanding", "R7143-11.8-2", "MUST", "target",
         "at most MaxOutstandingR2T R2Ts outstanding per task"),
    Rule("r2t.not_unsolicited", "R7143-11.8-3", "INFORMATIONAL", "target",
         "R2Ts ask only for data not already sent unsolicited"),
    Rule("r2t.in_order", "R7143-13.19-2", "MUST", "target",
         "with DataSequenceInOrder=Yes, R2T offsets do not go back"),
    Rule("dataout.answers_r2t", "R7143-11.7-5", "MUST", "initiator",
         "Data-Out answering an R2T echoes its tag and delivers exactly its range"),
    Rule("unsolicited.initial_r2t", "R7143-13.10-2", "MUST", "initiator",
         "with InitialR2T=Yes, no unsolicited Data-Out"),
    Rule("unsolicited.immediate_data", "R7143-13.11-2", "MUST", "initiator",
         "with ImmediateData=No, no data with a SCSI Command"),
    Rule("unsolicited.first_burst", "R7143-13.14-2", "MUST", "initiator",
         "unsolicited data never exceeds FirstBurstLength"),
    # -- tasks and answers
    Rule("snack.data_ack", "R7143-11.16-11", "MUST", "initiator",
         "at ErrorRecoveryLevel >= 1 a Data-In with the A bit gets a DataACK (its TTT, "
         "BegRun the next DataSN) before the task's status is acknowledged; none at ERL 0"),
    Rule("itt.unique", "R7143-11.2.1-4", "MUST", "initiator",
         "an Initiator Task Tag is unique among open tasks and never 0xffffffff"),
    Rule("residual.underflow", "R7143-11.4-1", "MUST", "target",
         "on a read's underflow U is set and the residual is the bytes not sent"),
    Rule("response.expdatasn", "R7143-11.4-4", "MUST", "target",
         "ExpDataSN is 0 when no Data-In or R2T was sent for the command"),
    Rule("nop.echo", "R7143-11.18-1", "MUST", "target",
         "a NOP-In answers a NOP-Out with its tag and its ping data"),
    Rule("nop.ping_reply", "R7143-11.19-1", "MUST", "initiator",
         "a NOP-Out answering a ping echoes its Target Transfer Tag and data"),
    Rule("nop.reply_form", "R7143-11.18-3", "MUST", "initiator",
         "a NOP-Out answering a ping has ITT 0xffffffff and the I bit"),
    Rule("logout.last", "R7143-11.14-4", "MUST", "initiator",
         "no further requests on a connection after its Logout Request"),
    Rule("reserved.zero", "R7143-11-1", "MUST", "initiator",
         "reserved fields and undefined bits of the header are zero"),
    Rule("reserved.zero.target", "R7143-11-1", "MUST", "target",
         "reserved fields and undefined bits of the header are zero"),
    Rule("tmf.answer_itt", "R7143-11.6-2", "INFORMATIONAL", "target",
         "a Task Management Function Response carries the ITT of its request"),
    Rule("text.answer_itt", "R7143-11.11-1", "INFORMATIONAL", "target",
         "a Text Response carries the ITT of the Text Request it answers"),
    Rule("logout.answer_itt", "R7143-11.15-1", "INFORMATIONAL", "target",
         "a Logout Response carries the ITT of the Logout Request"),
)  # fmt: skip


@dataclasses.dataclass
class _OwedAck:
    """A DataACK owed for a Data-In with the A bit (RFC 7143 11.16.2)."""

    itt: int
    datasn: int
    begrun: int  # the next expected DataSN (11.16.6)
    with_status: bool  # the status came in that Data-In (11.7.2: the DataACK is OPTIONAL)
    statsn: int | None  # the task's status, once seen
    index: int  # the Data-In's position in the conversation


@dataclasses.dataclass(frozen=True)
class Breach:
    """A rule broken by the sender of one PDU."""

    rule: Rule
    direction: Direction
    index: int  # position of the PDU among the connection's PDUs (both directions)
    pdu: str  # the PDU's class name
    detail: str

    @property
    def side(self) -> Side:
        return self.rule.sender

    def __str__(self) -> str:
        return (
            f"{self.rule.sender} breaks {self.rule.requirement} ({self.rule.level}) "
            f"in {self.pdu} #{self.index} {self.direction}: {self.detail}"
        )


class _SessionSN:
    """CmdSN as the initiator counts it for one session (shared by its connections)."""

    def __init__(self, cmdsn: int) -> None:
        self.cmdsn = cmdsn  # the CmdSN the next command carries
        self.expcmdsn: int | None = None
        self.maxcmdsn: int | None = None


class SessionBook:
    """The sessions a bridge has seen, by (ISID, TSIH), so that the connections of one
    session share their CmdSN arithmetic (RFC 7143 4.2.2.1: CmdSN is per session)."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[int, int], _SessionSN] = {}

    def join(self, isid: int, tsih: int, sn: _SessionSN) -> _SessionSN:
        return self._sessions.setdefault((isid, tsih), sn)


@dataclasses.dataclass
class _Task:
    itt: int
    read: bool
    write: bool
    edtl: int
    immediate_bytes: int = 0
    unsolicited_bytes: int = 0  # Data-Out with TTT 0xffffffff
    unsolicited_datasn: int = 0
    unsolicited_open: bool = False
    datain_sn: int = 0
    datain_offset: int = 0
    datain_burst: int = 0
    datain_bytes: int = 0
    r2t_sn: int = 0
    r2t_last_offset: int = -1
    r2ts: dict[int, list[int]] = dataclasses.field(
        default_factory=dict
    )  # ttt -> [off, len, got, sn]
    dataout_bytes: int = 0


class Judge:
    """The passive checks of one connection. Feed it every PDU in wire order."""

    def __init__(self, book: SessionBook | None = None, *, label: str = "") -> None:
        self.label = label
        self.book = book
        self.breaches: list[Breach] = []
        self.dropped = 0  # breaches past MAX_BREACHES
        self.index = -1
        self.full_feature = False
        self.header_digest = False
        self.data_digest = False
        self.session_type = "Normal"
        self.login_failed = False
        self.logged_out = False
        self.snack_seen = False
        self.exercised: set[str] = set()  # rules this conversation gave a chance to break
        self._offered_to_target = False
        self._unexercised: dict[Direction, dict[str, Callable[[Judge, PDU, bool], bool]]] = {
            d: {n: t for n, (sd, t) in _EXERCISED_BY.items() if sd == d} for d in (I2T, T2I)
        }
        # login
        self._first_login: LoginRequest | None = None
        self._last_login_transit = False
        self._login_responses = 0
        self._partial: dict[Direction, bytearray] = {I2T: bytearray(), T2I: bytearray()}
        self._offers: dict[Direction, dict[str, str]] = {I2T: {}, T2I: {}}  # by offerer
        self._declared: dict[Side, dict[str, str]] = {"initiator": {}, "target": {}}
        self._agreed: dict[str, str] = {}
        # value(), number() and mrdsl() per key, for the PDU hot path; emptied whenever
        # a key is declared or agreed (_text, _end_negotiation) or the session type set
        self._memo: dict[tuple[str, str], Any] = {}
        # numbering
        self._sn: _SessionSN | None = None
        self._statsn: int | None = None  # the StatSN the next status carries
        # tasks
        self._tasks: dict[int, _Task] = {}
        self._pings: dict[int, bytes] = {}  # NOP-Out ITT -> data
        self._target_pings: dict[int, bytes] = {}  # NOP-In TTT -> data
        self._requests: dict[int, PDU] = {}  # ITT -> open TMF, Text or Logout request
        # DataACK (RFC 7143 11.16.2): (TTT, BegRun) of an A-bit Data-In -> what is owed
        # (a target may give every A bit of a task, or of a session, one TTT)
        self._owed_acks: dict[tuple[int, int], _OwedAck] = {}
        self._acked_by_status: set[tuple[int, int]] = set()  # status ack came first

    # ------------------------------------------------------------------ state views

    def value(self, key: str) -> str | None:
        """The value in force for ``key``: the agreed one, else the default."""
        if key in self._agreed:
            return self._agreed[key]
        memo = ("default", key)
        if memo not in self._memo:
            self._memo[memo] = defaults(self.session_type).get(key)
        return cast(str | None, self._memo[memo])

    def number(self, key: str, fallback: int) -> int:
        memo = ("number", key)
        if memo not in self._memo:
            try:
                self._memo[memo] = parse_number(self.value(key) or "")
            except Exception:
                self._memo[memo] = None
        found = self._memo[memo]
        return fallback if found is None else cast(int, found)

    def mrdsl(self, receiver: Side) -> int:
        """MaxRecvDataSegmentLength declared by ``receiver`` (RFC 7143 13.12: 8192)."""
        memo = ("mrdsl", receiver)
        if memo not in self._memo:
            value = self._declared[receiver].get("MaxRecvDataSegmentLength")
            try:
                self._memo[memo] = parse_number(value) if value is not None else 8192
            except Exception:
                self._memo[memo] = 8192
        return cast(int, self._memo[memo])

    def declared(self, side: Side, key: str) -> str | None:
        """What ``side`` declared for ``key`` (a declarative or CHAP key, e.g. the
        target's CHAP_A choice), None if it declared nothing."""
        return self._declared[side].get(key)

    def yes(self, key: str) -> bool:
        return self.value(key) == "Yes"

    # ------------------------------------------------------------------ input

    def pdu(
        self, direction: Direction, pdu: PDU, raw: bytes | None = None, header: bytes | None = None
    ) -> list[Breach]:
        """Judge one PDU as it passed; the breaches it commits (also kept in .breaches).

        ``raw`` is the PDU's exact bytes; without them, ``header`` its first 48 bytes
        (``PDUDecoder.peek()`` before the PDU is taken), for the reserved fields."""
        self.index += 1
        out: list[Breach] = []
        was_ffp = self.full_feature
        self._format(direction, pdu, raw, out)
        bhs = raw[:BHS_LENGTH] if raw is not None else header
        if bhs is not None and len(bhs) == BHS_LENGTH and not isinstance(pdu, UnknownPDU):
            self._reserved(direction, pdu, bhs, out)
        _dispatch(self, direction, pdu, out)
        if self._owed_acks and direction == I2T and self.full_feature:
            self._status_ack(pdu, out)
        todo = self._unexercised[direction]
        if todo:  # only the tests whose gate admits this PDU's class (_on)
            for name, test in _gated(direction, type(pdu)):
                if name in todo and test(self, pdu, was_ffp):
                    self.exercised.add(name)
                    del todo[name]
        self._keep(out)
        return out

    def digest_error(self, direction: Direction, which: str, detail: str) -> list[Breach]:
        """The decoder found a wrong ``which`` ("header"/"data") digest on a PDU."""
        self.index += 1
        name = "digest.correct" + ("" if direction == I2T else ".target")
        out = [self._breach(name, direction, "PDU", f"{which} digest wrong: {detail}")]
        self._keep(out)
        return out

    def _keep(self, out: list[Breach]) -> None:
        if not out:  # the common case, on the hot path
            return
        room = MAX_BREACHES - len(self.breaches)
        self.breaches.extend(out[: max(room, 0)])
        self.dropped += max(len(out) - max(room, 0), 0)

    def _breach(self, name: str, direction: Direction, pdu: str, detail: str) -> Breach:
        return Breach(RULES[name], direction, self.index, pdu, detail)

    def _flag(
        self, out: list[Breach], name: str, direction: Direction, pdu: PDU, detail: str
    ) -> None:
        out.append(self._breach(name, direction, type(pdu).__name__, detail))

    # ------------------------------------------------------------------ format

    def _format(self, direction: Direction, pdu: PDU, raw: bytes | None, out: list[Breach]) -> None:
        if isinstance(pdu, UnknownPDU):
            return
        suffix = "" if direction == I2T else ".target"
        for v in () if well_formed(pdu) else violations(pdu):
            if v.field == "cont" and isinstance(pdu, LoginRequest | LoginResponse):
                name = "login.t_and_c" + suffix
            elif v.field == "status_present" and isinstance(pdu, ScsiDataIn):
                name = "datain.s_needs_f"
            elif v.field == "expected_data_transfer_length" and isinstance(pdu, ScsiCommand):
                name = "command.rw_length"
            else:
                name = "format.fields" + suffix
            self._flag(out, name, direction, pdu, str(v))
        if raw is not None and len(raw) >= 48:
            dsl = int.from_bytes(raw[5:8], "big")
            if dsl % 4:
                self.exercised.add("padding.zero" + suffix)  # judged only with the bytes
                start = 48 + raw[4] * 4 + (4 if self.header_digest else 0) + dsl
                pad = raw[start : start + (4 - dsl % 4)]
                if any(pad):
                    self._flag(
                        out, "padding.zero" + suffix, direction, pdu, f"pad bytes {pad.hex()}"
                    )

    def _reserved(self, direction: Direction, pdu: PDU, bhs: bytes, out: list[Breach]) -> None:
        name = "reserved.zero" + ("" if direction == I2T else ".target")
        self.exercised.add(name)  # judged only with the header's bytes
        mask = _RESERVED_BITS.get(bhs[0] & 0x3F, 0)
        if not int.from_bytes(bhs, "big") & mask:
            return  # the hot path: one AND over the header says every reserved bit is 0
        bad = [v.message for v in check_reserved(bhs) if v.field == "reserved"]
        if bad:
            self._flag(out, name, direction, pdu, "; ".join(bad))

    # ------------------------------------------------------------------ login

    def _login_request(self, d: Direction, p: LoginRequest, out: list[Breach]) -> None:
        if self.login_failed:
            self._flag(
                out, "login.silent_after_failure", d, p, "Login Request after a failed login"
            )
        first = self._first_login
        if first is None:
            self._first_login = p
            sn = _SessionSN(p.cmdsn)
            self._sn = sn
        else:
            for f in ("isid", "tsih", "cid", "version_max", "version_min"):
                if getattr(p, f) != getattr(first, f):
                    self._flag(
                        out, "login.same_isid" if f == "isid" else "login.same_ids", d, p,
                        f"{f} {getattr(p, f):#x} differs from the first request's "
                        f"{getattr(first, f):#x}",
                    )  # fmt: skip
            if p.cmdsn != first.cmdsn:
                self._flag(
                    out, "login.cmdsn", d, p,
                    f"CmdSN {p.cmdsn} differs from the first Login Request's {first.cmdsn}",
                )  # fmt: skip
        self._last_login_transit = p.transit
        self._text(d, p.data, p.cont, out, p)

    def _login_response(self, d: Direction, p: LoginResponse, out: list[Breach]) -> None:
        self._login_responses += 1
        if p.status_class == 0 and p.transit and not self._last_login_transit:
            self._flag(out, "login.transit_granted", d, p, "T=1 answers a request with T=0")
        self._text(d, p.data, p.cont, out, p)
        self._statsn = serial.add(p.statsn, 1)
        if p.status_class != 0:
            self.login_failed = True
            return
        self._target_window(d, p, out)
        if p.transit and p.nsg == FULL_FEATURE and not p.cont:
            first = self._first_login
            if first is not None and first.tsih == 0 and p.tsih == 0:
                self._flag(out, "login.tsih", d, p, "the new session's final response has TSIH 0")
            self._end_negotiation(d, p, out)
            self.full_feature = True
            self.header_digest = self._agreed.get("HeaderDigest") == "CRC32C"
            self.data_digest = self._agreed.get("DataDigest") == "CRC32C"
            self.session_type = self._declared["initiator"].get("SessionType", "Normal")
            self._memo.clear()
            if self.book is not None and self._sn is not None and first is not None:
                self._sn = self.book.join(first.isid, p.tsih, self._sn)

    # ------------------------------------------------------------------ keys

    def _text(self, d: Direction, data: bytes, cont: bool, out: list[Breach], pdu: PDU) -> None:
        part = self._partial[d]
        part += data
        if cont:
            return
        blob = bytes(part)
        part.clear()
        if not blob:
            return
        self._memo.clear()  # keys are declared or agreed below
        try:
            pairs = parse_pairs(blob)
        except Exception:
            return  # the text format is the active tests' business (R7143-6.1-*)
        other: Direction = T2I if d == I2T else I2T
        side = _SENDER[d]
        for key, value in pairs:
            spec = spec_for(key)
            pending = self._offers[other]
            if key in pending:
                self._answer(d, pdu, key, pending.pop(key), value, out)
                continue
            if spec is None or key in ("SendTargets", "TargetName", "TargetAddress"):
                self._declared[side][key] = value
                continue
            if key == "CHAP_R":
                self._chap_response(d, pdu, value, out)
            if side == "initiator" and spec.senders == Senders.TARGET:
                self._flag(out, "keys.sender", d, pdu, f"{key} may be sent by the target only")
            if side == "initiator" and value not in _ANSWER_WORDS:
                try:
                    check_value(spec, value)
                except Exception as exc:
                    self._flag(out, "keys.well_formed", d, pdu, f"{key}={value[:40]}: {exc}")
            if spec.declarative or spec.result_function in (
                ResultFunction.AUTH,
                ResultFunction.REQUEST,
                ResultFunction.OBSOLETE,
            ):
                self._declared[side][key] = value
            else:
                self._offers[d][key] = value
                self._offered_to_target = self._offered_to_target or d == I2T

    def _chap_response(self, d: Direction, pdu: PDU, value: str, out: list[Breach]) -> None:
        """RFC 7143 12.1.3 with RFC 1994 4.1: a CHAP_R (the initiator's, or the target's
        in mutual CHAP) is the hash of the algorithm the target chose in CHAP_A, so its
        binary value is as long as that hash's digest (MD5 16 bytes)."""
        try:
            algorithm = ChapAlgorithm(parse_number(self._declared["target"].get("CHAP_A", "")))
            response = parse_binary(value)
        except Exception:
            return  # no algorithm agreed, or a malformed value (the CHAP area's business)
        name = "chap.response_length" + ("" if d == I2T else ".target")
        self.exercised.add(name)
        if len(response) != algorithm.digest_size:
            self._flag(
                out, name, d, pdu,
                f"CHAP_R of {len(response)} bytes, but CHAP_A={int(algorithm)} "
                f"({algorithm.hash_name}) gives {algorithm.digest_size}",
            )  # fmt: skip

    def _answer(
        self, d: Direction, pdu: PDU, key: str, offer: str, answer: str, out: list[Breach]
    ) -> None:
        spec = spec_for(key)
        if spec is None or answer in _ANSWER_WORDS:
            return
        suffix = "" if d == T2I else ".initiator"
        fn = spec.result_function
        agreed = answer
        kind = {ResultFunction.LIST: "list", ResultFunction.MIN: "numeric",
                ResultFunction.MAX: "numeric", ResultFunction.AND: "boolean",
                ResultFunction.OR: "boolean"}.get(fn)  # fmt: skip
        if kind is not None:
            self.exercised.add(f"keys.{kind}_answer{suffix}")
        if fn is ResultFunction.LIST:
            offered = parse_list(offer)
            if "," in answer or answer not in offered:
                self._flag(
                    out, "keys.list_answer" + suffix, d, pdu,
                    f"{key}={answer} is not one value of the offer {offer}",
                )  # fmt: skip
        elif fn in (ResultFunction.MIN, ResultFunction.MAX) and spec.kind is ValueKind.NUMBER:
            a: int | None
            o: int | None
            try:
                a, o = parse_number(answer), parse_number(offer)
            except Exception:
                a = o = None
            if a is None or o is None:
                self._flag(
                    out, "keys.numeric_answer" + suffix, d, pdu, f"{key}={answer} is no number"
                )
            elif (
                not spec.in_range(a)
                or (fn is ResultFunction.MIN and a > o)
                or (fn is ResultFunction.MAX and a < o)
            ):
                word = "above" if fn is ResultFunction.MIN else "below"
                self._flag(
                    out, "keys.numeric_answer" + suffix, d, pdu,
                    f"{key}={answer} answers an offer of {offer}: {word} the offer or out "
                    f"of {spec.min}..{spec.max}",
                )  # fmt: skip
        elif fn in (ResultFunction.AND, ResultFunction.OR):
            if answer not in ("Yes", "No"):
                self._flag(out, "keys.boolean_answer" + suffix, d, pdu, f"{key}={answer}")
            else:
                result = (
                    (offer == "Yes" and answer == "Yes")
                    if fn is ResultFunction.AND
                    else (offer == "Yes" or answer == "Yes")
                )
                if answer != ("Yes" if result else "No"):
                    self._flag(
                        out, "keys.boolean_answer" + suffix, d, pdu,
                        f"{key}={answer} answers {offer} ({fn.name} gives "
                        f"{'Yes' if result else 'No'})",
                    )  # fmt: skip
                agreed = "Yes" if result else "No"
        self._agreed[key] = agreed

    def _end_negotiation(self, d: Direction, pdu: PDU, out: list[Breach]) -> None:
        """At the end of an exchange: offers to the target it left unanswered."""
        self._memo.clear()
        if self._offered_to_target:
            self.exercised.add("keys.answered")
        for key, offer in list(self._offers[I2T].items()):
            spec = spec_for(key)
            optional = spec is not None and (
                (spec.result_function is ResultFunction.AND and offer == "No")
                or (spec.result_function is ResultFunction.OR and offer == "Yes")
            )
            if optional:
                self._agreed[key] = offer
            else:
                self._flag(out, "keys.answered", d, pdu, f"{key}={offer} was never answered")
        self._offers[I2T].clear()
        self._offers[T2I].clear()

    # ------------------------------------------------------------------ numbering

    def _target_window(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        exp, mx = getattr(p, "expcmdsn", None), getattr(p, "maxcmdsn", None)
        if exp is None or mx is None:
            return
        if not serial.ge(serial.add(mx, 1), exp):
            self._flag(
                out, "cmdsn.target_window", d, p, f"MaxCmdSN {mx} is below ExpCmdSN {exp} - 1"
            )
        sn = self._sn
        if sn is None:
            return
        if sn.expcmdsn is not None and serial.lt(exp, sn.expcmdsn) and self.full_feature:
            self._flag(
                out, "cmdsn.target_window", d, p,
                f"ExpCmdSN went back from {sn.expcmdsn} to {exp}",
            )  # fmt: skip
        if sn.expcmdsn is None or serial.gt(exp, sn.expcmdsn):
            sn.expcmdsn = exp
        sn.maxcmdsn = mx

    def _command_sn(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        sn = self._sn
        if sn is None or not self.full_feature:
            return
        cmdsn = getattr(p, "cmdsn", 0)
        immediate = bool(getattr(p, "immediate", False))
        if cmdsn != sn.cmdsn:
            kind = "immediate" if immediate else "non-immediate"
            self._flag(
                out, "cmdsn.sequence", d, p,
                f"{kind} request carries CmdSN {cmdsn}, the current CmdSN is {sn.cmdsn}",
            )  # fmt: skip
        if not immediate:
            if sn.maxcmdsn is not None and serial.gt(cmdsn, sn.maxcmdsn):
                self._flag(
                    out, "cmdsn.window", d, p, f"CmdSN {cmdsn} is beyond MaxCmdSN {sn.maxcmdsn}"
                )
            sn.cmdsn = serial.add(cmdsn, 1)

    def _status(self, d: Direction, p: PDU, out: list[Breach], *, advances: bool) -> None:
        statsn = getattr(p, "statsn", None)
        if statsn is None or self._statsn is None or self.snack_seen:
            if statsn is not None and advances:
                self._statsn = serial.add(statsn, 1)
            return
        if statsn != self._statsn:
            self._flag(
                out, "statsn.sequence", d, p, f"StatSN {statsn}, the next StatSN is {self._statsn}"
            )
        if advances:
            self._statsn = serial.add(statsn, 1)

    def _mrdsl(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        receiver: Side = "target" if d == I2T else "initiator"
        limit = self.mrdsl(receiver)
        if len(p.data) > limit and self.full_feature:
            name = "mrdsl.initiator" if d == I2T else "mrdsl.target"
            self._flag(
                out, name, d, p,
                f"{len(p.data)} bytes of data, the {receiver} declared "
                f"MaxRecvDataSegmentLength={limit}",
            )  # fmt: skip

    # ------------------------------------------------------------------ initiator PDUs

    def _not_after_logout(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        if self.logged_out:
            self._flag(out, "logout.last", d, p, "a request after this connection's Logout Request")

    def _new_itt(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        itt = getattr(p, "itt", 0)
        if itt == NONE_TAG:
            self._flag(out, "itt.unique", d, p, "ITT 0xffffffff names no task")
        elif itt in self._tasks or itt in self._requests or itt in self._pings:
            self._flag(out, "itt.unique", d, p, f"ITT {itt:#x} is already in use")

    def _command(self, d: Direction, p: ScsiCommand, out: list[Breach]) -> None:
        self._not_after_logout(d, p, out)
        self._new_itt(d, p, out)
        self._command_sn(d, p, out)
        self._mrdsl(d, p, out)
        task = _Task(p.itt, p.read, p.write, p.expected_data_transfer_length)
        task.immediate_bytes = len(p.data)
        if p.data and not self.yes("ImmediateData"):
            self._flag(
                out, "unsolicited.immediate_data", d, p, f"{len(p.data)} bytes of immediate data"
            )
        first_burst = self.number("FirstBurstLength", 65536)
        if len(p.data) > first_burst:
            self._flag(
                out, "unsolicited.first_burst", d, p,
                f"{len(p.data)} bytes of immediate data, FirstBurstLength={first_burst}",
            )  # fmt: skip
        task.unsolicited_open = p.write and not p.final
        if p.write and not p.final and self.yes("InitialR2T"):
            self._flag(
                out, "unsolicited.initial_r2t", d, p,
                "F=0 announces unsolicited Data-Out under InitialR2T=Yes",
            )  # fmt: skip
        if p.itt != NONE_TAG:
            self._tasks[p.itt] = task

    def _data_out(self, d: Direction, p: ScsiDataOut, out: list[Breach]) -> None:
        self._mrdsl(d, p, out)
        task = self._tasks.get(p.itt)
        if task is None:
            return
        task.dataout_bytes += len(p.data)
        if p.ttt == NONE_TAG:
            if self.yes("InitialR2T"):
                self._flag(out, "unsolicited.initial_r2t", d, p, "unsolicited Data-Out")
            task.unsolicited_bytes += len(p.data)
            total = task.immediate_bytes + task.unsolicited_bytes
            first_burst = self.number("FirstBurstLength", 65536)
            if total > first_burst:
                self._flag(
                    out, "unsolicited.first_burst", d, p,
                    f"{total} bytes of unsolicited data, FirstBurstLength={first_burst}",
                )  # fmt: skip
            if p.datasn != task.unsolicited_datasn:
                self._flag(
                    out, "datasn.dataout", d, p,
                    f"DataSN {p.datasn}, expected {task.unsolicited_datasn}",
                )  # fmt: skip
            task.unsolicited_datasn += 1
            return
        r2t = task.r2ts.get(p.ttt)
        if r2t is None:
            self._flag(out, "dataout.answers_r2t", d, p, f"TTT {p.ttt:#x} names no open R2T")
            return
        offset, length, got, sn = r2t
        if p.datasn != sn:
            self._flag(out, "datasn.dataout", d, p, f"DataSN {p.datasn}, expected {sn}")
        r2t[3] = sn + 1
        in_order = self.yes("DataPDUInOrder")
        if in_order and p.buffer_offset != offset + got:
            self._flag(
                out, "dataout.answers_r2t", d, p,
                f"offset {p.buffer_offset}, the R2T's range continues at {offset + got}",
            )  # fmt: skip
        if not offset <= p.buffer_offset <= p.buffer_offset + len(p.data) <= offset + length:
            self._flag(
                out, "dataout.answers_r2t", d, p,
                f"bytes {p.buffer_offset}..{p.buffer_offset + len(p.data)} lie outside the "
                f"R2T's {offset}..{offset + length}",
            )  # fmt: skip
        r2t[2] = got + len(p.data)
        if p.final:
            if r2t[2] != length:
                self._flag(
                    out, "dataout.answers_r2t", d, p,
                    f"the sequence ends after {r2t[2]} of the {length} bytes the R2T asked for",
                )  # fmt: skip
            del task.r2ts[p.ttt]

    def _nop_out(self, d: Direction, p: NopOut, out: list[Breach]) -> None:
        if p.ttt != NONE_TAG:  # an answer to the target's ping
            data = self._target_pings.pop(p.ttt, None)
            if data is None:
                self._flag(out, "nop.ping_reply", d, p, f"TTT {p.ttt:#x} answers no ping")
            elif p.data != data:
                self._flag(out, "nop.ping_reply", d, p, "the ping data is not echoed")
            if p.itt != NONE_TAG or not p.immediate:
                self._flag(out, "nop.reply_form", d, p, f"ITT {p.itt:#x}, I={int(p.immediate)}")
            self._command_sn(d, _as_immediate(p), out)
            return
        self._not_after_logout(d, p, out)
        if p.itt != NONE_TAG:
            self._new_itt(d, p, out)
            self._pings[p.itt] = p.data
        self._command_sn(d, p, out)

    def _request(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        self._not_after_logout(d, p, out)
        itt = getattr(p, "itt", 0)
        continuing = isinstance(p, TextRequest) and p.ttt != NONE_TAG
        if not continuing:
            self._new_itt(d, p, out)
        self._requests[itt] = p
        self._command_sn(d, p, out)
        if isinstance(p, TextRequest):
            self._mrdsl(d, p, out)
            self._text(d, p.data, p.cont, out, p)
        if isinstance(p, LogoutRequest):
            self.logged_out = True

    def _snack(self, d: Direction, p: SnackRequest, out: list[Breach]) -> None:
        if p.snack_type == 2:  # DataACK: asks for nothing again (11.16.2)
            self._data_ack(d, p, out)
            return
        self.snack_seen = True  # retransmissions repeat StatSN and DataSN

    def _data_ack(self, d: Direction, p: SnackRequest, out: list[Breach]) -> None:
        """RFC 7143 11.16.2, 11.16.4-11.16.7: a DataACK answers the A bit of a Data-In:
        ITT 0xffffffff, that Data-In's TTT, BegRun its DataSN + 1, RunLength 0; never
        after the task's status was acknowledged through ExpStatSN (11.7.2); none at
        ErrorRecoveryLevel 0, where the initiator MUST ignore the A bit (11.7.2)."""
        if self.number("ErrorRecoveryLevel", 0) == 0:
            self.exercised.add("snack.data_ack")
            self._flag(out, "snack.data_ack", d, p, "a DataACK at ErrorRecoveryLevel 0")
            return
        if (p.ttt, p.begrun) in self._acked_by_status:
            self._acked_by_status.discard((p.ttt, p.begrun))
            self._flag(
                out, "snack.data_ack", d, p,
                f"DataACK for TTT {p.ttt:#x} after the task's status was acknowledged "
                "through ExpStatSN",
            )  # fmt: skip
            return
        mine = sorted(
            (k for k in self._owed_acks if k[0] == p.ttt), key=lambda k: self._owed_acks[k].index
        )
        if not mine:
            return  # a DataACK for an A bit this judge did not see (or sent twice)
        wrong = []
        if (p.ttt, p.begrun) in self._owed_acks:
            owed = self._owed_acks[(p.ttt, p.begrun)]
            for k in mine:  # it acknowledges the Data-In before its BegRun (11.16.6)
                if self._owed_acks[k].index <= owed.index:
                    del self._owed_acks[k]
        else:
            owed = self._owed_acks.pop(mine[0])
            wrong.append(f"BegRun {p.begrun}, the next expected DataSN is {owed.begrun}")
        if p.itt != NONE_TAG:
            wrong.append(f"ITT {p.itt:#x}, not 0xffffffff")
        if p.runlength != 0:
            wrong.append(f"RunLength {p.runlength}, not 0")
        if wrong:
            self._flag(
                out, "snack.data_ack", d, p,
                f"DataACK for the A bit on DataSN {owed.datasn} (TTT {p.ttt:#x}): "
                + "; ".join(wrong),
            )  # fmt: skip

    def _status_ack(self, p: PDU, out: list[Breach]) -> None:
        """An initiator PDU whose ExpStatSN acknowledges the status of a task that still
        owes a DataACK. Excused (11.7.2: the DataACK is then OPTIONAL) only when the
        status came in the very Data-In that had the A bit; otherwise the DataACK was
        due before (11.16.2 MUST) and the A bit was ignored."""
        exp = getattr(p, "expstatsn", None)
        if exp is None or (isinstance(p, SnackRequest) and p.snack_type == 2):
            return  # a DataACK carries its own ExpStatSN with, not after, the ack
        for key, owed in list(self._owed_acks.items()):
            if owed.statsn is None or not serial.gt(exp, owed.statsn):
                continue
            del self._owed_acks[key]
            if owed.with_status:
                self._acked_by_status.add(key)
                continue
            ttt = key[0]
            self._flag(
                out, "snack.data_ack", I2T, p,
                f"ExpStatSN {exp} acknowledges the status (StatSN {owed.statsn}) of ITT "
                f"{owed.itt:#x}, and no DataACK came for the A bit on its DataSN "
                f"{owed.datasn} (TTT {ttt:#x})",
            )  # fmt: skip

    def _owe_ack(self, p: ScsiDataIn) -> None:
        """Note the DataACK a Data-In with the A bit asks for, and the task's status."""
        if p.ack and self.number("ErrorRecoveryLevel", 0) > 0:
            self.exercised.add("snack.data_ack")
            begrun = serial.add(p.datasn, 1)
            self._owed_acks[(p.ttt, begrun)] = _OwedAck(
                p.itt, p.datasn, begrun, p.status_present,
                p.statsn if p.status_present else None, self.index,
            )  # fmt: skip
        elif p.status_present:
            self._owed_status(p.itt, p.statsn)

    def _owed_status(self, itt: int, statsn: int) -> None:
        for owed in self._owed_acks.values():
            if owed.itt == itt and owed.statsn is None:
                owed.statsn = statsn

    # ------------------------------------------------------------------ target PDUs

    def _data_in(self, d: Direction, p: ScsiDataIn, out: list[Breach]) -> None:
        self._mrdsl(d, p, out)
        if p.ack or (p.status_present and self._owed_acks):
            self._owe_ack(p)
        self._target_window(d, p, out)
        if p.status_present:
            self._status(d, p, out, advances=True)
        task = self._tasks.get(p.itt)
        if task is None or self.snack_seen:
            return
        if p.datasn != task.datain_sn:
            self._flag(out, "datasn.datain", d, p, f"DataSN {p.datasn}, expected {task.datain_sn}")
        task.datain_sn = p.datasn + 1
        if self.yes("DataPDUInOrder") and self.yes("DataSequenceInOrder"):
            if p.buffer_offset != task.datain_offset:
                self._flag(
                    out, "datain.offsets", d, p,
                    f"offset {p.buffer_offset}, the data so far ends at {task.datain_offset}",
                )  # fmt: skip
        task.datain_offset = max(task.datain_offset, p.buffer_offset + len(p.data))
        task.datain_bytes += len(p.data)
        task.datain_burst += len(p.data)
        burst = self.number("MaxBurstLength", 262144)
        if task.datain_burst > burst:
            self._flag(
                out, "datain.burst", d, p,
                f"the Data-In sequence reaches {task.datain_burst} bytes, MaxBurstLength={burst}",
            )  # fmt: skip
            task.datain_burst = 0  # once per sequence
        if p.final:
            task.datain_burst = 0
        if p.status_present:
            self._residual(d, p, task, p.underflow, p.overflow, p.residual_count, p.status, out)
            del self._tasks[p.itt]

    def _r2t(self, d: Direction, p: R2T, out: list[Breach]) -> None:
        self._target_window(d, p, out)
        self._status(d, p, out, advances=False)
        task = self._tasks.get(p.itt)
        if task is None:
            return
        if p.r2tsn != task.r2t_sn and not self.snack_seen:
            self._flag(out, "r2tsn.sequence", d, p, f"R2TSN {p.r2tsn}, expected {task.r2t_sn}")
        task.r2t_sn = p.r2tsn + 1
        burst = self.number("MaxBurstLength", 262144)
        if p.desired_data_transfer_length > burst:
            self._flag(
                out, "r2t.burst", d, p,
                f"asks for {p.desired_data_transfer_length} bytes, MaxBurstLength={burst}",
            )  # fmt: skip
        limit = self.number("MaxOutstandingR2T", 1)
        if p.ttt not in task.r2ts and len(task.r2ts) + 1 > limit:
            self._flag(
                out, "r2t.outstanding", d, p,
                f"{len(task.r2ts) + 1} R2Ts outstanding, MaxOutstandingR2T={limit}",
            )  # fmt: skip
        unsolicited = task.immediate_bytes + task.unsolicited_bytes
        if p.buffer_offset < unsolicited:
            self._flag(
                out, "r2t.not_unsolicited", d, p,
                f"asks from offset {p.buffer_offset}; {unsolicited} bytes came unsolicited",
            )  # fmt: skip
        if self.yes("DataSequenceInOrder") and p.buffer_offset < task.r2t_last_offset:
            self._flag(
                out, "r2t.in_order", d, p,
                f"offset {p.buffer_offset} after an R2T at {task.r2t_last_offset}",
            )  # fmt: skip
        task.r2t_last_offset = max(task.r2t_last_offset, p.buffer_offset)
        task.r2ts[p.ttt] = [p.buffer_offset, p.desired_data_transfer_length, 0, 0]

    def _response(self, d: Direction, p: ScsiResponse, out: list[Breach]) -> None:
        self._mrdsl(d, p, out)
        self._target_window(d, p, out)
        self._status(d, p, out, advances=True)
        if self._owed_acks:
            self._owed_status(p.itt, p.statsn)
        task = self._tasks.pop(p.itt, None)
        if task is None:
            return
        if task.datain_sn == 0 and task.r2t_sn == 0 and p.expdatasn != 0 and not self.snack_seen:
            self._flag(
                out, "response.expdatasn", d, p,
                f"ExpDataSN {p.expdatasn} for a command without Data-In or R2T",
            )  # fmt: skip
        if p.response == 0:
            self._residual(d, p, task, p.underflow, p.overflow, p.residual_count, p.status, out)

    def _residual(
        self,
        d: Direction,
        p: PDU,
        task: _Task,
        underflow: bool,
        overflow: bool,
        residual: int,
        status: int,
        out: list[Breach],
    ) -> None:
        if status != 0 or overflow or self.snack_seen:
            return  # only GOOD status is checked; an overflow's size is the target's
        if not task.read or task.write:
            # a write's residual counts the bytes the command used, which the wire does
            # not show: unsolicited data beyond the CDB's length is sent yet unused
            # (libiscsi's Write10Residuals against tgt: U=1, 9488 of 10000 unused)
            return
        moved = task.datain_bytes
        short = task.edtl - moved
        if short > 0 and (not underflow or residual != short):
            self._flag(
                out, "residual.underflow", d, p,
                f"{moved} of {task.edtl} bytes moved; U={int(underflow)} residual {residual}",
            )  # fmt: skip
        elif short == 0 and underflow:
            self._flag(
                out, "residual.underflow", d, p,
                f"U=1 residual {residual} although all {task.edtl} bytes moved",
            )  # fmt: skip

    def _nop_in(self, d: Direction, p: NopIn, out: list[Breach]) -> None:
        self._target_window(d, p, out)
        self._status(d, p, out, advances=p.itt != NONE_TAG)
        if p.itt != NONE_TAG:
            data = self._pings.pop(p.itt, None)
            if data is None:
                self._flag(out, "nop.echo", d, p, f"ITT {p.itt:#x} answers no NOP-Out")
            elif p.data != data:
                self._flag(out, "nop.echo", d, p, "the NOP-Out's ping data is not echoed")
        if p.ttt != NONE_TAG:
            self._target_pings[p.ttt] = p.data

    def _answer_pdu(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        self._target_window(d, p, out)
        self._status(d, p, out, advances=True)
        itt = getattr(p, "itt", NONE_TAG)
        self._answer_itt(d, p, itt, out)
        if isinstance(p, TextResponse):
            self._mrdsl(d, p, out)
            self._text(d, p.data, p.cont, out, p)
            if p.final and not p.cont:
                self._requests.pop(itt, None)
                self._end_negotiation(d, p, out)
            return
        request = self._requests.pop(itt, None)
        if isinstance(p, TaskManagementResponse) and isinstance(request, TaskManagementRequest):
            if p.response in (0, 1):  # Function complete / Task does not exist: tasks end
                if request.function == 1:
                    self._tasks.pop(request.referenced_task_tag, None)
                else:
                    self._tasks.clear()

    def _answer_itt(self, d: Direction, p: PDU, itt: int, out: list[Breach]) -> None:
        """A TMF, Text or Logout Response names an open request of its own kind."""
        wanted, rule = _ANSWERS[type(p)]
        if self.snack_seen or isinstance(self._requests.get(itt), wanted):
            return  # (a SNACK may bring back a response whose request is closed)
        open_tags = [f"{i:#x}" for i, r in self._requests.items() if isinstance(r, wanted)]
        self._flag(
            out, rule, d, p,
            f"ITT {itt:#x} answers no open {wanted.__name__}"
            + (f" (open: {', '.join(open_tags)})" if open_tags else ""),
        )  # fmt: skip

    def _plain_status(self, d: Direction, p: PDU, out: list[Breach]) -> None:
        self._target_window(d, p, out)
        self._status(d, p, out, advances=True)


_Test = Callable[["Judge", PDU, bool], bool]


def _on(cls: type | tuple[type, ...], test: _Test) -> _Test:
    """``test``, marked as one that only a PDU of ``cls`` can pass (its gate: the judge
    then asks it of those PDUs alone, not of every PDU, in the bridge's hot path)."""
    test.gate = cls if isinstance(cls, tuple) else (cls,)  # type: ignore[attr-defined]
    return test


def _ffp(cls: type | tuple[type, ...]) -> _Test:
    return _on(cls, lambda j, p, was_ffp: was_ffp and isinstance(p, cls))


def _data(cls: type | tuple[type, ...]) -> _Test:
    return _on(cls, lambda j, p, was_ffp: was_ffp and isinstance(p, cls) and bool(p.data))


_COMMANDS = (ScsiCommand, TaskManagementRequest, TextRequest, LogoutRequest, NopOut)
#: Each answer PDU -> the request it answers by ITT, and the rule that checks it.
_ANSWERS: dict[type[PDU], tuple[type[PDU], str]] = {
    TaskManagementResponse: (TaskManagementRequest, "tmf.answer_itt"),
    TextResponse: (TextRequest, "text.answer_itt"),
    LogoutResponse: (LogoutRequest, "logout.answer_itt"),
}
_STATUS = (ScsiResponse, TaskManagementResponse, TextResponse, LogoutResponse, NopIn, Reject)


def _write(j: Judge, p: PDU, was_ffp: bool) -> bool:
    return was_ffp and isinstance(p, ScsiCommand) and p.write


def _good_read(j: Judge, p: PDU, was_ffp: bool) -> bool:
    if isinstance(p, ScsiDataIn) and p.status_present:
        return p.status == 0
    return isinstance(p, ScsiResponse) and p.status == 0 and p.response == 0


_on(ScsiCommand, _write)
_on((ScsiDataIn, ScsiResponse), _good_read)


#: When a conversation gave the sender a chance to break each rule: (the sender's
#: direction, a test on each PDU it sends). A rule never exercised has no verdict:
#: silence is not a pass. Key answers and offers are marked where they are judged.
_EXERCISED_BY: dict[str, tuple[Direction, _Test]] = {
    "format.fields": (I2T, lambda j, p, f: True),
    "format.fields.target": (T2I, lambda j, p, f: True),
    "login.t_and_c": (I2T, _on(LoginRequest, lambda j, p, f: isinstance(p, LoginRequest))),
    "login.t_and_c.target": (
        T2I,
        _on(LoginResponse, lambda j, p, f: isinstance(p, LoginResponse)),
    ),
    "datain.s_needs_f": (T2I, _ffp(ScsiDataIn)),
    "command.rw_length": (I2T, _ffp(ScsiCommand)),
    "digest.correct": (I2T, lambda j, p, f: f and (j.header_digest or j.data_digest)),
    "digest.correct.target": (T2I, lambda j, p, f: f and (j.header_digest or j.data_digest)),
    "login.same_ids": (
        I2T,
        _on(LoginRequest, lambda j, p, f: isinstance(p, LoginRequest) and j._first_login is not p),
    ),
    "login.same_isid": (
        I2T,
        _on(LoginRequest, lambda j, p, f: isinstance(p, LoginRequest) and j._first_login is not p),
    ),
    "login.transit_granted": (
        T2I,
        _on(LoginResponse, lambda j, p, f: isinstance(p, LoginResponse)),
    ),
    "login.tsih": (T2I, lambda j, p, f: j.full_feature and not f),
    "login.only_login": (I2T, _on(LoginRequest, lambda j, p, f: isinstance(p, LoginRequest))),
    "login.silent_after_failure": (T2I, lambda j, p, f: j.login_failed),
    "login.cmdsn": (
        I2T,
        _on(LoginRequest, lambda j, p, f: isinstance(p, LoginRequest) and j._first_login is not p),
    ),
    "keys.well_formed": (
        I2T,
        _on(LoginRequest, lambda j, p, f: isinstance(p, LoginRequest) and bool(p.data)),
    ),
    "keys.sender": (
        I2T,
        _on(LoginRequest, lambda j, p, f: isinstance(p, LoginRequest) and bool(p.data)),
    ),
    "cmdsn.sequence": (I2T, _ffp(_COMMANDS)),
    "cmdsn.window": (I2T, _ffp(_COMMANDS)),
    "cmdsn.target_window": (T2I, _ffp((*_STATUS, ScsiDataIn, R2T, AsyncMessage))),
    "statsn.sequence": (T2I, _ffp(_STATUS)),
    "datasn.datain": (T2I, _ffp(ScsiDataIn)),
    "r2tsn.sequence": (T2I, _ffp(R2T)),
    "datasn.dataout": (I2T, _ffp(ScsiDataOut)),
    "mrdsl.target": (T2I, _data((ScsiDataIn, ScsiResponse, TextResponse))),
    "mrdsl.initiator": (I2T, _data((ScsiDataOut, ScsiCommand, TextRequest))),
    "datain.offsets": (T2I, _ffp(ScsiDataIn)),
    # only a read longer than one burst can break it (open-iscsi's reads never are)
    "datain.burst": (
        T2I,
        _on(
            ScsiDataIn,
            lambda j, p, f: (
                f
                and isinstance(p, ScsiDataIn)
                and p.buffer_offset + len(p.data) > j.number("MaxBurstLength", 262144)
            ),
        ),
    ),
    "r2t.burst": (T2I, _ffp(R2T)),
    "r2t.outstanding": (T2I, _ffp(R2T)),
    "r2t.not_unsolicited": (T2I, _ffp(R2T)),
    "r2t.in_order": (T2I, _ffp(R2T)),
    "dataout.answers_r2t": (I2T, _ffp(ScsiDataOut)),
    "unsolicited.initial_r2t": (I2T, _write),
    "unsolicited.immediate_data": (I2T, _write),
    "unsolicited.first_burst": (I2T, _write),
    "itt.unique": (I2T, _ffp(ScsiCommand)),
    "residual.underflow": (T2I, _good_read),
    "response.expdatasn": (T2I, _ffp(ScsiResponse)),
    "nop.echo": (T2I, _on(NopIn, lambda j, p, f: f and isinstance(p, NopIn) and p.itt != NONE_TAG)),
    "nop.ping_reply": (
        I2T,
        _on(NopOut, lambda j, p, f: f and isinstance(p, NopOut) and p.ttt != NONE_TAG),
    ),
    "nop.reply_form": (
        I2T,
        _on(NopOut, lambda j, p, f: f and isinstance(p, NopOut) and p.ttt != NONE_TAG),
    ),
    "logout.last": (I2T, _ffp(LogoutRequest)),
    "tmf.answer_itt": (T2I, _ffp(TaskManagementResponse)),
    "text.answer_itt": (T2I, _ffp(TextResponse)),
    "logout.answer_itt": (T2I, _ffp(LogoutResponse)),
}


_GATED: dict[tuple[Direction, type], tuple[tuple[str, _Test], ...]] = {}


def _gated(direction: Direction, cls: type) -> tuple[tuple[str, _Test], ...]:
    """The exercise tests of ``direction`` that a PDU of ``cls`` can pass: those with
    no gate, and those whose gate names the class (computed once per class)."""
    key = (direction, cls)
    found = _GATED.get(key)
    if found is None:
        found = _GATED[key] = tuple(
            (name, test)
            for name, (d, test) in _EXERCISED_BY.items()
            if d == direction and issubclass(cls, getattr(test, "gate", (object,)))
        )
    return found


def _as_immediate(p: NopOut) -> NopOut:
    """A NOP-Out answer is immediate whatever its I bit says, for CmdSN counting."""
    return dataclasses.replace(p, immediate=True)


def _reserved_bits() -> dict[int, int]:
    """Per opcode, the reserved bits of its BHS figure as one 384-bit mask."""
    masks = {}
    for opcode, lay in LAYOUTS.items():
        mask = 0
        for f in lay.fields:
            if f.kind is FieldKind.RESERVED:
                shift = 8 * (BHS_LENGTH - f.offset - f.size)
                mask |= (f.mask or (1 << 8 * f.size) - 1) << shift
        masks[int(opcode)] = mask
    return masks


_RESERVED_BITS = _reserved_bits()


def _dispatch(judge: Judge, d: Direction, p: PDU, out: list[Breach]) -> None:
    """Route a PDU by class; before full feature phase only Login PDUs count."""
    if not judge.full_feature and not isinstance(p, LoginRequest | LoginResponse):
        if d == I2T and judge._first_login is not None and not judge.login_failed:
            judge._flag(out, "login.only_login", d, p, "sent before the login completed")
        if d == I2T and judge.login_failed:
            judge._flag(out, "login.silent_after_failure", d, p, "sent after a failed login")
        return
    method = _BY_CLASS.get(type(p))
    if method is not None:
        method(judge, d, p, out)


_BY_CLASS: dict[type[PDU], Callable[[Judge, Direction, Any, list[Breach]], None]] = {
    LoginRequest: Judge._login_request,
    LoginResponse: Judge._login_response,
    ScsiCommand: Judge._command,
    ScsiDataOut: Judge._data_out,
    NopOut: Judge._nop_out,
    TaskManagementRequest: Judge._request,
    TextRequest: Judge._request,
    LogoutRequest: Judge._request,
    SnackRequest: Judge._snack,
    ScsiDataIn: Judge._data_in,
    R2T: Judge._r2t,
    ScsiResponse: Judge._response,
    NopIn: Judge._nop_in,
    TaskManagementResponse: Judge._answer_pdu,
    TextResponse: Judge._answer_pdu,
    LogoutResponse: Judge._answer_pdu,
    AsyncMessage: Judge._plain_status,
    Reject: Judge._plain_status,
}


def judge_pdus(pdus: Iterable[tuple[Direction, PDU]]) -> list[Breach]:
    """Judge a whole conversation (tests, replays): every breach in order."""
    j = Judge()
    for d, p in pdus:
        j.pdu(d, p)
    return j.breaches
