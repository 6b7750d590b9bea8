"""Faults the bridge injects on demand, parsed from ``--fault`` specs.

Theory of operation
-------------------
A spec is ``ACTION:PDU[#N][=ARG]``: the action, the PDU class it applies to (its
class name in ``core.pdu``, any case, or ``*`` for any PDU), the occurrence it fires
on (the N-th of that class in full feature phase across the bridge, 1 by default) and
the action's argument. Each fault fires once. Actions:

``drop``       the PDU is not forwarded;
``withhold``   a NOP-In that is a ping or an echo is not forwarded (``=echo``: the
               NOP-In answering an initiator's ping, ITT set, RFC 7143 11.19; ``=ping``:
               the target's own ping, TTT set; no argument: either); NOP-Ins that only
               carry counters (both tags 0xffffffff) neither count nor are withheld;
``delay=S``    the PDU (and so everything after it in that direction) waits S seconds;
``digest``     the PDU is forwarded with a wrong data digest (or header digest when it
               carries no data; ``hdigest``/``ddigest`` choose); needs the digest agreed;
``close``      both TCP connections are reset instead of forwarding the PDU;
``split``      the PDU goes out in two TCP writes 50 ms apart, cut inside the BHS;
``merge``      the PDU is held and goes out in one write with the next PDU;
``reorder``    the PDU is held and goes out after the next PDU in its direction.

Parsing is pure; :meth:`FaultPlan.decide` is called by the pump with each PDU and says
what to do. A spec that does not parse raises ``ValueError`` with one clear line.

What a side must do after a fault is judged here too, from a :class:`FaultOutcome`
(the PDUs the bridge saw, each with the fault applied to it, and how the I/O ended):
``datain_digest_breach`` (RFC 7143 7.8, the initiator), ``dataout_digest_breach``
(7.8, the target), ``command_header_digest_breach`` (7.8, the target),
``dropped_response_breach`` (7.11, the initiator), ``withheld_echo_breach`` (7.14
and 11.19, the initiator whose ping got no echo), ``unanswered_ping_breach`` (7.14
and 7.1.4.3, the target whose ping got no answer), ``reset_breach`` (7.15 and
SBC's READ-after-WRITE, the target) and ``reframed_breach`` (4.2.9, the side that
receives PDUs split across TCP segments and merged into one) return a :data:`Verdict`: "pass", "fail" (with
why), "unexercised" (no fault fired) or "inconclusive" (the I/O did not end in time
and the wire showed no answer: a recovery timer still running is no pass, and no
breach either).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from iscsi_conformance.core.codes import RejectReason
from iscsi_conformance.core.pdu import (
    PDU,
    PDU_CLASSES,
    R2T,
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    Reject,
    ScsiCommand,
    ScsiDataIn,
    ScsiResponse,
    SnackRequest,
    TaskManagementRequest,
)

__all__ = [
    "ACTIONS",
    "Fault",
    "FaultOutcome",
    "FaultPlan",
    "Verdict",
    "command_header_digest_breach",
    "datain_digest_breach",
    "dataout_digest_breach",
    "dropped_response_breach",
    "parse_fault",
    "reframed_breach",
    "reset_breach",
    "unanswered_ping_breach",
    "withheld_echo_breach",
]

ACTIONS = ("drop", "withhold", "delay", "digest", "hdigest", "ddigest", "close", "split",
           "merge", "reorder")  # fmt: skip
_CLASS_NAMES = {cls.__name__.lower(): cls.__name__ for cls in PDU_CLASSES.values()}
_NONE_TAG = 0xFFFFFFFF
#: what ``withhold`` may be narrowed to: the NOP-Ins each word selects (RFC 7143 11.19)
_WITHHELD = {"echo": "answering an initiator's ping", "ping": "the target's ping"}


@dataclasses.dataclass(frozen=True)
class Fault:
    action: str
    pdu: str  # class name, or "*"
    occurrence: int = 1
    seconds: float = 0.0
    kind: str = ""  # withhold: "echo", "ping", or "" (either)

    def __str__(self) -> str:
        arg = f"={self.seconds:g}" if self.action == "delay" else ""
        if self.kind:
            arg = f"={self.kind}"
        return f"{self.action}:{self.pdu}#{self.occurrence}{arg}"

    @property
    def selector(self) -> str:
        """What the fault counts occurrences of: a class name (or ``*``), narrowed."""
        return f"{self.pdu}={self.kind or 'any'}" if self.action == "withhold" else self.pdu

    def selects(self, pdu: PDU) -> bool:
        """True if ``pdu`` is one of those the fault counts."""
        if self.pdu not in (type(pdu).__name__, "*"):
            return False
        if self.action != "withhold":
            return True
        if not isinstance(pdu, NopIn):
            return False
        echo, ping = pdu.itt != _NONE_TAG, pdu.ttt != _NONE_TAG
        return {"echo": echo, "ping": ping}.get(self.kind, echo or ping)


def parse_fault(spec: str) -> Fault:
    """``ACTION:PDU[#N][=ARG]`` -> Fault; ValueError naming what is wrong."""
    text = spec.strip()
    action, sep, rest = text.partition(":")
    action = action.lower()
    if not sep or action not in ACTIONS:
        raise ValueError(
            f"fault {spec!r}: expected ACTION:PDU[#N][=ARG], ACTION one of {', '.join(ACTIONS)}"
        )
    rest, _, arg = rest.partition("=")
    name, _, count = rest.partition("#")
    name = name.strip()
    if name != "*" and name.lower() not in _CLASS_NAMES:
        raise ValueError(f"fault {spec!r}: unknown PDU {name!r} (a core.pdu class name or *)")
    try:
        occurrence = int(count) if count else 1
    except ValueError:
        raise ValueError(f"fault {spec!r}: #N must be a number, got {count!r}") from None
    if occurrence < 1:
        raise ValueError(f"fault {spec!r}: #N counts from 1")
    seconds, kind = 0.0, ""
    if action == "withhold":
        if name.lower() not in ("nopin", "*"):
            raise ValueError(f"fault {spec!r}: withhold applies to NopIn only")
        kind = arg.strip().lower()
        if kind and kind not in _WITHHELD:
            raise ValueError(f"fault {spec!r}: withhold takes =echo, =ping or nothing")
        name = "NopIn"
    elif action == "delay":
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"fault {spec!r}: delay needs =SECONDS") from None
        if not 0 < seconds <= 3600:
            raise ValueError(f"fault {spec!r}: delay must lie in (0, 3600] seconds")
    elif arg:
        raise ValueError(f"fault {spec!r}: {action} takes no =argument")
    pdu = "*" if name == "*" else _CLASS_NAMES[name.lower()]
    return Fault(action, pdu, occurrence, seconds, kind)


class FaultPlan:
    """The faults of one bridge, each firing once (called from the bridge's loop only)."""

    def __init__(self, faults: Iterable[Fault | str] = ()) -> None:
        self.faults = [f if isinstance(f, Fault) else parse_fault(f) for f in faults]
        self.fired: list[tuple[Fault, int, str]] = []  # (fault, connection, PDU repr head)
        self._seen: dict[str, int] = {}
        self._done: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.faults)

    @property
    def pending(self) -> bool:
        """True while a fault is still to fire."""
        return len(self._done) < len(self.faults)

    def decide(self, conn: int, pdu: PDU, full_feature: bool) -> Fault | None:
        """The fault to apply to ``pdu`` now, if one is due (full feature phase only)."""
        if not self.faults or not full_feature:
            return None
        counted: set[str] = set()  # each selector counts a PDU once
        for fault in self.faults:
            key = fault.selector
            if key not in counted and fault.selects(pdu):
                counted.add(key)
                self._seen[key] = self._seen.get(key, 0) + 1
        for i, fault in enumerate(self.faults):
            if i in self._done or fault.selector not in counted:
                continue
            if self._seen[fault.selector] == fault.occurrence:
                self._done.add(i)
                self.fired.append((fault, conn, repr(pdu)[:120]))
                return fault
        return None


_I2T, _T2I = "i->t", "t->i"  # judge.I2T / judge.T2I (faults sits beside the judge)


@dataclasses.dataclass
class FaultOutcome:
    """One bridged run with faults: what passed and how the I/O ended."""

    seen: list[tuple[int, str, PDU, Fault | None]]  # (connection, direction, PDU, fault)
    error: str | None = None  # the I/O's error, None if it completed
    data_ok: bool | None = None  # the data read back as written (None: not read)
    closed_first: dict[int, str] = dataclasses.field(default_factory=dict)  # side per conn
    timed_out: bool = False  # the I/O had not ended at the deadline (the bridge hung up)
    # a new session's check afterwards: None if none ran, "" if it logged in and read
    # back every acknowledged write, else what went wrong (login refused, data differs)
    verified: str | None = None
    # an initiator's own ping through the bridge, as its driver reported it: None if
    # none was reported, "answered" (the driver had its NOP-In), else why not
    ping: str | None = None

    def faulted(self) -> tuple[int, PDU] | None:
        """(connection, PDU) of the first PDU a fault was applied to."""
        return next(((c, p) for c, _, p, f in self.seen if f is not None), None)

    def _index(self) -> int | None:
        return next((i for i, (_, _, _, f) in enumerate(self.seen) if f is not None), None)

    def after(self, conn: int, direction: str) -> list[PDU]:
        """The PDUs ``direction`` carried on ``conn`` after the first faulted one."""
        i = next((i for i, (_, _, _, f) in enumerate(self.seen) if f is not None), None)
        if i is None:
            return []
        return [p for c, d, p, _ in self.seen[i + 1 :] if c == conn and d == direction]


Verdict = tuple[Literal["pass", "fail", "unexercised", "inconclusive"], str]


def datain_digest_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 7.8: an initiator that gets a Data-In with a payload digest error
    discards it and either asks for it again (SNACK) or aborts the task and ends the
    command with an error (or escalates to session recovery). It kept the rule if the
    I/O ended with an error, or if on the wire it sent a SNACK, aborted the task, sent
    the same command again or hung up (no Logout) after the fault."""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "no Data-In carried a data digest"
    conn, pdu = hit
    if o.data_ok is False:
        return "fail", "the data read back differs from what was written"
    itt = getattr(pdu, "itt", None)
    cdb = next(
        (p.cdb for c, d, p, _ in o.seen
         if c == conn and d == _I2T and isinstance(p, ScsiCommand) and p.itt == itt),
        None,
    )  # fmt: skip
    later = o.after(conn, _I2T)
    reacted = any(
        isinstance(p, SnackRequest)
        or (isinstance(p, TaskManagementRequest) and p.referenced_task_tag == itt)
        or (isinstance(p, ScsiCommand) and cdb is not None and p.cdb == cdb)
        for p in later
    )
    hung_up = o.closed_first.get(conn) == "initiator" and not any(
        isinstance(p, LogoutRequest) for p in later
    )
    if reacted or hung_up:
        return "pass", "answered on the wire"
    if o.timed_out:
        return "inconclusive", "no end and no answer on the wire before the deadline"
    if o.error is not None:
        return "pass", "the command ended with an error"
    return "fail", (
        f"the initiator took the Data-In of ITT {itt:#x} with a wrong data digest as good: "
        "no SNACK, no abort, no retry, no hang-up, and the I/O completed"
    )


def dataout_digest_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 7.8: a target answers a PDU with a payload digest error with a Reject
    (Data-Digest-Error) and discards it, or escalates to session recovery (it ends the
    connection). Keeping the connection without a Reject is neither; a WRITE that
    reported success must read back as written."""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "no Data-Out carried a data digest"
    conn, _ = hit
    if o.data_ok is False:
        return "fail", "the data read back differs from what was written"
    answers = o.after(conn, _T2I)
    if any(isinstance(p, Reject) and p.reason == RejectReason.DATA_DIGEST_ERROR for p in answers):
        return "pass", "Reject (Data-Digest-Error)"
    logged_out = any(isinstance(p, LogoutResponse) for p in answers)
    if o.closed_first.get(conn) == "target" and not logged_out:
        return "pass", "the target ended the connection (session recovery)"
    if o.timed_out:
        return "inconclusive", "no Reject and no hang-up before the deadline"
    return "fail", (
        "after a Data-Out with a wrong data digest the target sent no Reject "
        "(Data-Digest-Error) and kept the connection"
    )


def _reacted(o: FaultOutcome, conn: int, itt: int) -> PDU | None:
    """The first PDU by which the initiator addressed task ``itt`` after the fault on
    ``conn``: a SNACK, a TMF (ABORT TASK of it, or a reset) or the command sent again
    with its tag (RFC 7143 7.2.1 retry); None if there was none."""
    for p in o.after(conn, _I2T):
        if isinstance(p, SnackRequest | TaskManagementRequest):
            return p
        if isinstance(p, ScsiCommand) and p.itt == itt:
            return p
    return None


def command_header_digest_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 7.8: a target that receives a PDU with a header digest error MUST
    discard the header and all data up to a later PDU, or close the connection; its
    header cannot be trusted, so the target must not act on it. It broke the rule if,
    after a SCSI Command whose header digest the bridge corrupted, it answered that
    command's tag (R2T, Data-In, SCSI Response) before the initiator sent the command
    again or aborted it. Data acknowledged must read back in a new session."""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "no SCSI Command crossed with a header digest"
    conn, pdu = hit
    itt = getattr(pdu, "itt", -1)
    if o.verified:
        return "fail", f"after the fault: {o.verified}"
    start = o._index()
    assert start is not None
    for c, d, p, _ in o.seen[start + 1 :]:
        if c != conn:
            continue
        if d == _I2T and (
            getattr(p, "itt", None) == itt
            or (isinstance(p, TaskManagementRequest) and p.referenced_task_tag == itt)
        ):
            break  # sent again or aborted: answers to the tag may follow now
        if d == _T2I and isinstance(p, ScsiResponse | ScsiDataIn | R2T) and p.itt == itt:
            return "fail", (
                f"the target answered ITT {itt:#x} with a {type(p).__name__} although the "
                "command's header failed its digest: it acted on a header it had to discard"
            )
    if o.closed_first.get(conn) == "target":
        return "pass", "the target closed the connection"
    if o.timed_out:
        return "inconclusive", "no end and no close before the deadline"
    return "pass", f"the target discarded the command (no answer to ITT {itt:#x})"


def dropped_response_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 7.11: on a ULP timeout of a command, an initiator that goes on with
    the session MUST abort the command, by a task management request for it or a
    Logout "close the connection"; 7.8 and 7.9 give the same choices, and SNACK, for
    a status it knows it lost; either side may end the session instead. The bridge
    drops the SCSI Response of a command: the initiator broke the rule if it reported
    the I/O complete with no SNACK, task management request or retry for the lost
    status, having gone on with new commands on the connection. (New commands alone
    are no breach: an initiator with a queue sends them before its timer ends.)"""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "no SCSI Response crossed"
    conn, pdu = hit
    itt = getattr(pdu, "itt", -1)
    if o.verified:
        return "fail", f"after the fault: {o.verified}"
    reaction = _reacted(o, conn, itt)
    if reaction is not None:
        return "pass", f"the initiator addressed the lost status with a {type(reaction).__name__}"
    after = o.after(conn, _I2T)
    ended = next((i for i, p in enumerate(after) if isinstance(p, LogoutRequest)), len(after))
    went_on = [p for p in after[:ended] if isinstance(p, ScsiCommand)]
    if o.closed_first.get(conn) == "initiator" and ended == len(after):
        return "pass", "the initiator ended the connection (session recovery)"
    fault = next(f for _, _, _, f in o.seen if f is not None)
    if o.error is None and not o.timed_out and fault.action == "delay":
        # whether or not it went on meanwhile: no command was lost, so nothing to judge
        return "inconclusive", (
            f"the status came {fault.seconds:g} s late and the initiator waited for it: "
            "its command timer is longer than that, or it has none (RFC 7143 7.1.4.1: "
            "timeout values are out of its scope)"
        )
    if o.error is None and not o.timed_out and went_on:
        return "fail", (
            f"the SCSI Response of ITT {itt:#x} never came, yet the I/O was reported "
            f"complete and the initiator went on with {len(went_on)} new command(s) on the "
            "connection, with no SNACK, task management request or retry for it"
        )
    if o.timed_out:
        return "inconclusive", "no answer on the wire before the deadline (a timer still running)"
    if o.error is not None:
        how = "then logged out" if ended < len(after) else "and did not go on"
        return "pass", f"the command ended with an error, and the initiator {how}"
    return "inconclusive", "the I/O completed without the initiator going on on that connection"


def withheld_echo_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 11.19: a target answers a ping (NOP-Out with a valid Initiator Task Tag)
    with a NOP-In carrying that tag, and only that NOP-In echoes the ping. The bridge
    withholds it, so the initiator's ping fails. 7.14 lets an initiator take a failing
    ping as a connection failure (MAY; its timers are its own, 7.1.4.2), and if it
    does, it MUST then recover in one of 7.14's ways (connection recovery, logout, or
    session recovery: at ErrorRecoveryLevel 0 the last), with every write it reported
    done reading back (SBC READ). The initiator broke the rules if it reported the ping
    answered (no NOP-In with its tag reached it: it took another PDU for the echo), if
    data it reported written reads back different, or if a new session cannot read back
    what was acknowledged. Going on without a ping timer is no breach."""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "no NOP-In answering a ping crossed the bridge"
    conn, pdu = hit
    itt = getattr(pdu, "itt", _NONE_TAG)
    if o.data_ok is False:
        return "fail", "the data read back through the bridge differs from what was written"
    if o.verified:
        return "fail", f"after the fault: {o.verified}"
    if o.ping == "answered":
        return "fail", (
            f"the initiator reported its ping (ITT {itt:#x}) answered although the only "
            "NOP-In with that tag never reached it: it took another PDU for the echo"
        )
    later = o.after(conn, _I2T)
    logged_out = any(isinstance(p, LogoutRequest) for p in later)
    relogged = sum(  # logins on connections the initiator opened after the fault
        1 for c, d, p, _ in o.seen[(o._index() or 0) + 1 :]
        if c > conn and d == _I2T and isinstance(p, LoginRequest) and p.transit and p.nsg == 3
    )  # fmt: skip
    if o.closed_first.get(conn) == "initiator" and not logged_out:
        again = "and logged in again" if relogged else "and did not log in again"
        how = "the I/O ended with an error" if o.error else "every write read back"
        return "pass", (
            f"the initiator took the missing echo as a connection failure (7.14), hung up "
            f"{again}; {how}"
        )
    if o.timed_out:
        return "inconclusive", "no end and no hang-up before the deadline"
    ended = next((i for i, p in enumerate(later) if isinstance(p, LogoutRequest)), len(later))
    went_on = sum(1 for p in later[:ended] if isinstance(p, ScsiCommand))
    if went_on:
        return "pass", (
            f"the initiator went on with the connection ({went_on} command(s) after the "
            "missing echo; its ping timer, if any, is its own: 7.1.4.2); data verified"
        )
    if logged_out:
        return "pass", "the initiator logged out after the missing echo; data verified"
    return "pass", "the I/O ended without the initiator going on; data verified"


def unanswered_ping_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 11.19 and 11.18: a target pings with a NOP-In carrying a valid Target
    Transfer Tag, which the initiator answers with a NOP-Out. The bridge withholds the
    ping, so no answer ever comes. 7.14 lets the target take a failing ping as a
    connection failure (MAY; its timers are its own, 7.1.4.2); a target that does MUST
    close the connection (7.1.4.3) and take the initiator's recovery (at
    ErrorRecoveryLevel 0 a new session, 7.15). It broke the rules if it kept the
    connection open and answered none of the commands sent on it afterwards (silent:
    a connection taken as failed and not closed), or if a new session cannot read back
    what was acknowledged."""
    hit = o.faulted()
    if hit is None:
        return "unexercised", "the target sent no ping (a NOP-In with a Target Transfer Tag)"
    conn, _ = hit
    if o.data_ok is False:
        return "fail", "the data read back through the bridge differs from what was written"
    if o.verified:
        return "fail", f"after the fault: {o.verified}"
    if o.closed_first.get(conn) == "target":
        return "pass", (
            "the target took its unanswered ping as a connection failure and closed the "
            "connection (7.14); a new session read back every acknowledged write"
        )
    asked = [p for p in o.after(conn, _I2T) if isinstance(p, ScsiCommand)]
    answered = [p for p in o.after(conn, _T2I) if isinstance(p, ScsiResponse | ScsiDataIn | R2T)]
    if asked and not answered:
        return "fail", (
            f"after its ping went unanswered the target answered none of the {len(asked)} "
            "command(s) sent on the connection and did not close it (silent): a connection "
            "it takes as failed it must close (7.1.4.3, 7.14)"
        )
    if o.timed_out:
        return "inconclusive", "no end and no close before the deadline"
    return "pass", (
        "the target kept serving the connection (its ping timer, if any, is its own: "
        "7.1.4.2); data verified"
    )


def reset_breach(o: FaultOutcome) -> Verdict:
    """RFC 7143 7.14 and 7.15: on a connection failure the target aborts what was in
    flight (session recovery at ErrorRecoveryLevel 0) and MUST be prepared for the
    initiator's new session; SBC (READ after WRITE): a write it acknowledged with GOOD
    before the failure reads back. The bridge resets both connections mid-write."""
    if o.faulted() is None:
        return "unexercised", "no PDU of the kind the fault waits for crossed"
    if o.verified is None:
        return "inconclusive", "no new session was tried after the reset"
    if o.verified:
        return "fail", f"after the reset: {o.verified}"
    return "pass", "a new session logged in and every acknowledged write read back"


def reframed_breach(o: FaultOutcome, faults: int, receiver: str) -> Verdict:
    """RFC 7143 4.2.9: a receiver frames PDUs by the lengths in their headers, so a
    PDU split across TCP segments, or two PDUs in one segment, change nothing: the
    I/O completes and reads back. ``faults``: how many split/merge faults were asked;
    ``receiver``: "target" or "initiator", the side that received them."""
    fired = sum(1 for _, _, _, f in o.seen if f is not None)
    if not fired:
        return "unexercised", "no split/merge fault found its PDU"
    conn = o.faulted()
    closer = o.closed_first.get(conn[0]) if conn is not None else None
    if o.verified:
        return "fail", f"after the split and merged PDUs: {o.verified}"
    if o.data_ok is False:
        return "fail", "the data read back differs from what was written"
    if o.timed_out:
        return "fail", f"the I/O never ended after the split and merged PDUs the {receiver} got"
    if o.error is not None:
        who = f" (the {closer} ended the connection)" if closer else ""
        return "fail", f"the I/O failed after the split and merged PDUs{who}: {o.error}"
    if fired < faults:  # the rest never found their PDU: no breach, yet no full pass
        return "unexercised", f"{fired} of the {faults} split/merge faults found their PDU"
    return "pass", "the I/O completed and read back"
