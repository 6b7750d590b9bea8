"""A Hypothesis ``RuleBasedStateMachine`` of iSCSI sessions against a target (issue 14).

Theory of operation: one example is one program of rules run against a live target;
the machine keeps the initiator side of every connection it opened (``_Link``: the
socket, the session's numbers as a real initiator tracks them, an ``AnswerChecker``).
Rules:

- ``open_session``: a login with drawn operational keys (digests, ErrorRecoveryLevel,
  MaxConnections, ImmediateData/InitialR2T) and a drawn authentication profile: none,
  or CHAP with MD5, SHA-1, SHA-256 or SHA3-256 (RFC 7143 12.1.3), one-way or mutual,
  when the subject was configured with CHAP accounts (``Accounts``);
- ``bad_chap``: a CHAP login whose CHAP_R, CHAP_N or CHAP_A is replaced by a wrong
  or over-long value: the target MUST refuse it (R7143-12.1.3-3);
- ``extra_connection`` (MC/S: the session's ISID and TSIH, a new CID),
  ``reinstate_session`` (the same ISID with TSIH 0: the old session MUST end,
  R7143-6.3.5-1) and ``reinstate_connection`` (the same ISID, TSIH and CID: the
  old connection ends, R7143-6.3.4-1);
- full-feature rules on a drawn connection: ``scsi_command`` (any CDB operation, LUN,
  flags, expected length, immediate data), ``data_out`` (an answer to an R2T the
  target sent, at a drawn offset and length), ``tmf``, ``nop``, ``text``, ``logout``,
  ``skew_cmdsn`` (sequence numbers moved on purpose), ``hostile_pdu`` (any request
  with every field over its whole range, unknown opcodes, and a ``Tamper``: wrong
  lengths, padding, AHS, digests); ``hostile_login`` sends a drawn first Login
  Request on a fresh connection.

Every full-feature rule ends with a NOP-Out ping; the answers up to its NOP-In are
decoded and checked (``oracles.AnswerChecker``); a connection the target closed is
dropped; one left silent is dropped and the target's liveness checked (a fresh login
and ping). After every rule the subject's health is polled (the reference target's
internal errors); each example ends with a liveness check. A failure raises an
exception class of its own per identity (kind, place), so that Hypothesis keeps
distinct bugs apart and shrinks each on its own; the connection's PDUs of its last
(shrunk) run are kept for a reproducer that ``fuzz replay`` reads.

Bounded: ``max_examples`` and ``seconds`` (a rule past the deadline ends the whole
run at once, shrinking included, and what was found so far is reported).

Replay: every example also records its program as data (``SessionMachine.program``:
``[rule, {argument: value}]``, a ``hostile_pdu`` as the bytes it sent), and each
failure keeps the program of its smallest run. :func:`replay_program` runs such a
program again outside Hypothesis, against any target, with every connection it opens
recorded (a ``capture.MultiTape`` for the pcapng, ``MachineRun.sent`` for the hex):
a failure between two connections (MC/S, a reinstatement) or in a CHAP exchange (a
fresh challenge, answered with the accounts of the target replayed against) shows
again because the same rules run again, not the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, InMemoryExampleDatabase
from hypothesis.errors import Flaky
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.errors import ISCSIConformanceError, ProtocolError
from iscsi_conformance.fuzz.accounts import (
    ALGORITHMS,
    BAD_CHAP_VALUES,
    CHAP_INITIATOR,
    INITIATOR,
    MUTUAL_INITIATOR,
    Accounts,
    chap_toml,
    with_accounts,
)
from iscsi_conformance.fuzz.campaign import (
    COVERAGE_CELLS,
    FDS_KEY,
    RSS_KEY,
    CampaignReport,
    Failure,
    _label_opcode,
    resource_breaches,
)
from iscsi_conformance.fuzz.gen import _CDB_OPS, Session
from iscsi_conformance.fuzz.oracles import AnswerChecker

__all__ = [
    "Accounts",
    "MachineRun",
    "OutOfTime",
    "chap_toml",
    "replay_program",
    "run_machine",
    "with_accounts",
]

PING = b"iscsi-conformance machine ping"
MRDSL = 8192
MAX_LINKS = 6


class OutOfTime(BaseException):
    """The run's deadline passed: ends Hypothesis at once (generation or shrinking)."""


class FuzzFinding(AssertionError):
    """A failure of the machine; each identity (kind, place) gets a subclass."""


@dataclasses.dataclass
class MachineRun:
    """What a run shares with its examples (the machine class carries it)."""

    host: str
    port: int
    target: str
    deadline: float
    health: Any = None
    accounts: Accounts | None = None
    strict: bool = True
    progress: Callable[[str], None] | None = None
    report: CampaignReport = dataclasses.field(default_factory=lambda: CampaignReport(""))
    examples: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    last_progress: float = 0.0
    isids: Any = dataclasses.field(default_factory=lambda: itertools.count(1))
    cids: Any = dataclasses.field(default_factory=lambda: itertools.count(1))
    #: the failure of each identity, as its last run (the shrunk one, at the end) left it
    failures: dict[tuple[str, str], Failure] = dataclasses.field(default_factory=dict)
    #: the shrunk program of each identity, as Hypothesis printed it
    programs: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    io_timeout: float = 3.0  # a login step, a liveness ping (a loaded host is slow)
    silence: float = 0.1  # a ping unanswered this long leaves its connection "silent"

    #: set at the first failure: shrinking gets ``shrink_seconds`` from then on
    shrink_deadline: float = float("inf")
    shrink_seconds: float = 10.0
    #: a ``capture.MultiTape`` recording every connection opened (a replay), or None
    tape: Any = None
    #: when ``record_sent``: every PDU sent, as (connection number, bytes, digests)
    record_sent: bool = False
    sent: list[tuple[int, bytes, tuple[bool, bool]]] = dataclasses.field(default_factory=list)
    conns: Any = dataclasses.field(default_factory=lambda: itertools.count(1))
    #: a cap on the PDUs written per second (``fuzz --rate``), None for none
    rate: float | None = None

    def pace(self, n: int) -> None:
        """Count ``n`` PDUs about to be written (``report.sent``); with ``rate``, wait
        until they fit within ``rate`` times the time elapsed (never past the deadline)."""
        self.report.sent += n
        if self.rate:
            ahead = self.report.sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(max(0.0, min(ahead, self.time_left())))

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


_TYPES: dict[tuple[str, str], type[FuzzFinding]] = {}


def _finding_type(kind: str, place: str) -> type[FuzzFinding]:
    key = (kind, place)
    if key not in _TYPES:
        name = re.sub(r"\W+", "_", f"{kind}__{place}")[:80]
        _TYPES[key] = type(f"Finding_{name}", (FuzzFinding,), {"identity": key})
    return _TYPES[key]


class _Closed(Exception):
    pass


class _TapedSocket:
    """A socket whose bytes both ways go to a ``capture.MultiTape``."""

    def __init__(self, sock: socket.socket, tape: Any) -> None:
        self._sock, self._tape = sock, tape
        self._conn = tape.open(sock.getsockname(), sock.getpeername())

    def sendall(self, data: bytes) -> None:
        self._tape.add_to(self._conn, "i->t", data)
        self._sock.sendall(data)

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        self._tape.add_to(self._conn, "t->i", data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Link:
    """One connection in full feature phase, seen from the initiator side."""

    def __init__(
        self, sock: Any, profile: str, keys: list[tuple[str, str]], run: MachineRun | None = None
    ) -> None:
        self.sock = sock
        self.number = next(run.conns) if run is not None else 0
        self.log = run.sent if run is not None and run.record_sent else None
        self.pace = run.pace if run is not None else None
        self.profile = profile
        self.keys = keys
        self.decoder = P.PDUDecoder(max_data_segment_length=1 << 24)
        self.transcript: list[bytes] = []
        self.login_pdus: list[bytes] = []
        self.isid = self.tsih = self.cid = 0
        self.s = Session()
        self.checker = AnswerChecker(0, 0, MRDSL)
        self.pings = 0
        self.last_itt = 0
        self.result: Any = None

    def send(self, raws: Sequence[bytes]) -> None:
        self.transcript.extend(raws)
        del self.transcript[:-256]
        self.send_only(raws)

    def send_only(self, raws: Sequence[bytes]) -> None:
        """Send without keeping the PDUs in the transcript (a ping)."""
        if self.log is not None:
            self.log.extend((self.number, raw, (self.s.hd, self.s.dd)) for raw in raws)
        if self.pace is not None:
            self.pace(len(raws))
        try:
            self.sock.sendall(b"".join(raws))
        except OSError as exc:
            raise _Closed(str(exc)) from exc

    def next_pdu(self, timeout: float) -> P.PDU | None:
        """The next PDU, None after ``timeout`` of silence; _Closed when closed."""
        end = time.monotonic() + timeout
        while True:
            pdu = self.decoder.next_pdu()
            if pdu is not None:
                return pdu
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise _Closed(str(exc)) from exc
            if not data:
                raise _Closed("closed by the target")
            self.decoder.feed(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _connect(run: MachineRun) -> Any:
    sock = socket.create_connection((run.host, run.port), timeout=run.io_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _TapedSocket(sock, run.tape) if run.tape is not None else sock


_ALGS = st.sampled_from(sorted(ALGORITHMS))
_PROFILES = st.sampled_from(["none", "none", "chap", "mutual"])


@st.composite
def _operational(draw: st.DrawFn) -> dict[str, str]:
    keys = {
        "HeaderDigest": draw(st.sampled_from(["None", "None", "CRC32C"])),
        "DataDigest": draw(st.sampled_from(["None", "None", "CRC32C"])),
        "MaxRecvDataSegmentLength": str(MRDSL),
        "ErrorRecoveryLevel": str(draw(st.sampled_from([0, 0, 1, 2]))),
        "MaxConnections": str(draw(st.sampled_from([1, 2, 4]))),
    }
    if draw(st.booleans()):
        keys["ImmediateData"] = draw(st.sampled_from(["Yes", "No"]))
        keys["InitialR2T"] = draw(st.sampled_from(["Yes", "No"]))
    return keys


_BAD_CHAP = st.sampled_from(BAD_CHAP_VALUES)


class SessionMachine(RuleBasedStateMachine):
    """See the module doc; ``run`` is set by :func:`run_machine` before a run."""

    run: MachineRun

    def __init__(self) -> None:
        super().__init__()
        self.links: list[_Link] = []
        self.trace: list[str] = []  # the rules run so far, for a failure's detail
        self.program: list[list[Any]] = []  # the same as data: [rule, {argument: value}]
        r = type(self).run
        self._tick()
        r.examples += 1
        h = r.health
        if h is not None and not h.alive():
            if r.time_left() < 2.0:
                raise OutOfTime
            h.restart(deadline=r.deadline)
        if h is not None:
            h.poll()  # what came before this example is not its doing

    # ------------------------------------------------------------------ plumbing

    @property
    def r(self) -> MachineRun:
        return type(self).run

    def _tick(self) -> None:
        r = type(self).run
        now = time.monotonic()
        if now >= r.deadline or now >= r.shrink_deadline:
            raise OutOfTime
        if r.progress is not None and now - r.last_progress >= 1.0:
            r.last_progress = now
            rep = r.report
            took = max(now - r.started, 1e-9)
            capped = f"  sent {rep.sent / took:.0f}/s (cap {r.rate:g})" if r.rate else ""
            r.progress(
                f"[{now - r.started:6.1f} s] examples {r.examples}  steps {rep.cases}"
                f"  PDUs/s {rep.pdus / took:.0f}{capped}"
                f"  failures {len(r.failures)}"
                f"  coverage {len(rep.coverage)}/{len(COVERAGE_CELLS)} opcode x phase"
            )

    def _step(self, raws: Sequence[bytes], phase: str = "ffp") -> None:
        rep = self.r.report
        rep.pdus += len(raws)
        for raw in raws:
            rep.coverage.add((_label_opcode(raw), phase))

    def _fail(
        self,
        kind: str,
        place: str,
        detail: str,
        *,
        link: _Link | None = None,
        phase: str = "ffp",
        pdus: Sequence[bytes] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
        requirement: str = "",
        level: str = "MUST",
    ) -> None:
        r = self.r
        f = Failure(
            kind, place, detail, requirement, level, phase,
            list(keys if keys is not None else (link.keys if link else [])),
            list(pdus if pdus is not None else (link.transcript if link else [])),
            program=[[name, dict(kw)] for name, kw in self.program],
        )  # fmt: skip
        f.detail += "\n\nThe program up to the failure:\n" + "\n".join(self.trace[-40:])
        old = r.failures.get(f.identity)
        if old is None:
            r.shrink_deadline = min(r.shrink_deadline, time.monotonic() + r.shrink_seconds)
        f.count = old.count + 1 if old is not None else 1
        # the smallest run is kept: the shortest program, then the shortest transcript
        if old is None or (len(f.program), len(f.pdus)) <= (len(old.program), len(old.pdus)):
            r.failures[f.identity] = f
        else:
            old.count = f.count
        if r.strict or level == "MUST":
            raise _finding_type(kind, place)(f"{kind} at {place}: {detail}")

    def _health(self, link: _Link | None = None) -> None:
        h = self.r.health
        if h is None:
            return
        for ev in h.poll():
            self._fail("internal-error", ev.place, ev.detail, link=link)

    def _pick(self, i: int) -> _Link | None:
        """Link ``i`` (modulo), None when there is none. Rules have no preconditions on
        the links: what the target did must not change what Hypothesis draws."""
        return self.links[i % len(self.links)] if self.links else None

    def _drop(self, link: _Link) -> None:
        link.close()
        if link in self.links:
            self.links.remove(link)

    # ------------------------------------------------------------------ login

    def _login(
        self,
        profile: str,
        keys: dict[str, str],
        *,
        isid: int | None = None,
        tsih: int = 0,
        cid: int | None = None,
        algorithm: str = "MD5",
        hook: Callable[[P.LoginRequest], P.LoginRequest] | None = None,
        session: Any = None,
    ) -> tuple[_Link | None, str]:
        """Log in; returns (link, "") in full feature phase, or (None, why not)."""
        from iscsi_conformance.initiator.login_flow import LoginFlow, LoginResult

        r = self.r
        accounts = r.accounts
        name, chap, mutual = INITIATOR, None, None
        if profile != "none" and accounts is not None:
            chap = accounts.chap
            name = CHAP_INITIATOR
            if profile == "mutual":
                name, mutual = MUTUAL_INITIATOR, accounts.mutual_target
        try:
            sock = _connect(r)
        except OSError as exc:
            return None, f"cannot connect: {exc}"
        link = _Link(sock, profile, [("InitiatorName", name), ("TargetName", r.target),
                                     *sorted(keys.items())], r)  # fmt: skip
        link.isid = isid if isid is not None else 0x80_0000_0000 | next(r.isids)
        link.cid = cid if cid is not None else next(r.cids) & 0xFFFF
        try:
            flow = LoginFlow(
                initiator_name=name, target_name=r.target, isid=link.isid, tsih=tsih,
                cid=link.cid, itt=1, rng=os.urandom, keys=dict(keys), chap_credentials=chap,
                mutual_chap=mutual, chap_algorithms=(ALGORITHMS[algorithm],),
                session=session, login_hook=hook,
            )  # fmt: skip
            step: Any = flow.start()
            for _ in range(16):
                out = step.wire
                if out is not None:
                    raw = out if isinstance(out, bytes) else P.encode(out, strict=step.strict)
                    link.login_pdus.append(raw)
                    link.send([raw])
                    self._step([raw], "login")
                pdu = link.next_pdu(r.io_timeout)
                if pdu is None:
                    link.close()
                    return None, "no Login Response"
                nxt = flow.receive(pdu)
                if isinstance(nxt, LoginResult):
                    break
                step = nxt
            else:
                link.close()
                return None, "the login did not end"
        except (_Closed, ProtocolError, ISCSIConformanceError, ValueError) as exc:
            link.close()
            return None, f"{type(exc).__name__}: {exc}"
        link.result = nxt
        link.tsih = nxt.tsih
        neg = nxt.negotiated
        link.s = Session(cmdsn=nxt.cmdsn, expstatsn=(nxt.statsn + 1) & 0xFFFFFFFF)
        link.s.hd, link.s.dd = bool(neg.header_digest), bool(neg.data_digest)
        link.decoder.header_digest, link.decoder.data_digest = link.s.hd, link.s.dd
        link.decoder.max_data_segment_length = None  # the checker reports oversize
        link.checker = AnswerChecker(nxt.statsn, nxt.expcmdsn, MRDSL, erl=neg.error_recovery_level)
        link.transcript = []
        self.r.report.sessions += tsih == 0
        self.r.report.digest_sessions += tsih == 0 and (link.s.hd or link.s.dd)
        return link, ""

    def _sync(self, link: _Link) -> str:
        """Ping the connection and check every answer up to the ping's NOP-In:
        "answered", "closed" (the link is dropped) or "silent" (dropped, liveness
        checked)."""
        r = self.r
        link.pings += 1
        itt = 0xF000_0000 | link.pings
        s = link.s
        nop = P.NopOut(immediate=True, itt=itt, cmdsn=s.cmdsn, expstatsn=s.expstatsn, data=PING)
        try:
            link.send_only([P.encode(nop, header_digest=s.hd, data_digest=s.dd)])
            while True:
                pdu = link.next_pdu(min(r.silence, max(0.05, r.time_left())))
                if pdu is None:
                    outcome = "silent"
                    break
                r.report.answers += 1
                s.saw(pdu)
                for v in link.checker.check(pdu):
                    self._fail(v.kind, v.place, v.detail, link=link, requirement=v.requirement,
                               level=v.level)  # fmt: skip
                exp = getattr(pdu, "expcmdsn", None)
                if exp is not None and not isinstance(pdu, P.ScsiDataIn):
                    s.cmdsn = exp
                if isinstance(pdu, P.NopIn) and pdu.itt == itt:
                    if pdu.data != PING:
                        self._fail("ping-echo", "NopIn", f"ping answered with {pdu.data[:64]!r}",
                                   link=link, requirement="R7143-11.18-1")  # fmt: skip
                    outcome = "answered"
                    break
        except (_Closed, OSError):
            outcome = "closed"
        except ProtocolError as exc:
            self._fail("undecodable", type(exc).__name__, str(exc), link=link,
                       requirement="R7143-11.2")  # fmt: skip
            outcome = "closed"
        self._health(link)
        if outcome == "closed":
            r.report.closed_by_target += 1
            self._drop(link)
        elif outcome == "silent":
            r.report.silent += 1
            self._drop(link)
            self._liveness(link)
        return outcome

    def _liveness(self, after: _Link | None = None) -> None:
        r = self.r
        if r.time_left() < 1.0:
            raise OutOfTime
        r.report.liveness_checks += 1
        why = ""
        for attempt in range(2):  # twice: a TARGET COLD RESET ends every session (11.5.1)
            if attempt:
                time.sleep(0.2)
            link, why = self._login("none", {"MaxRecvDataSegmentLength": str(MRDSL)})
            if link is not None:
                outcome = self._sync_quiet(link)
                link.close()
                if outcome == "answered":
                    return
                why = f"the ping after a fresh login was {outcome}"
        if r.time_left() < 1.0:
            raise OutOfTime  # the deadline cut the check short: not a verdict
        h = r.health
        death = getattr(h, "death", None)
        how = death() if callable(death) else None
        place = ("dead" if "connect" in why else "unresponsive") + (f": {how}" if how else "")
        self._fail("liveness", place, why, link=after)

    def _sync_quiet(self, link: _Link, timeout: float | None = None) -> str:
        s = link.s
        nop = P.NopOut(immediate=True, itt=0xEEEE, cmdsn=s.cmdsn, expstatsn=s.expstatsn, data=PING)
        try:
            link.send_only([P.encode(nop, header_digest=s.hd, data_digest=s.dd)])
            while True:
                pdu = link.next_pdu(self.r.io_timeout if timeout is None else timeout)
                if pdu is None:
                    return "silent"
                # judged by no one, but counted: a link that goes on after this ping
                # (a reinstatement's new connection) expects the StatSN that follows it
                s.saw(pdu)
                link.checker.check(pdu)
                if isinstance(pdu, P.NopIn) and pdu.itt == 0xEEEE:
                    return "answered"
        except (_Closed, OSError, ProtocolError):
            return "closed"

    def _ffp(self, link: _Link, pdus: Sequence[P.PDU | bytes]) -> str:
        """Send ``pdus`` on ``link`` (encoded with its digests unless bytes), then sync."""
        self._tick()
        self.r.report.cases += 1
        s = link.s
        raws = [
            p if isinstance(p, bytes)
            else P.encode(p, strict=False, header_digest=s.hd, data_digest=s.dd)
            for p in pdus
        ]  # fmt: skip
        self._step(raws)
        try:
            link.send(raws)
        except _Closed:
            self._drop(link)
            return "closed"
        return self._sync(link)

    def _cmd_numbers(self, link: _Link, immediate: bool) -> dict[str, Any]:
        s = link.s
        itt = s.itt()
        link.last_itt = itt
        out: dict[str, Any] = {"itt": itt, "cmdsn": s.cmdsn, "expstatsn": s.expstatsn}
        if not immediate:
            s.cmdsn = (s.cmdsn + 1) & 0xFFFFFFFF
        return out

    # ------------------------------------------------------------------ rules: login

    @initialize(profile=_PROFILES, algorithm=_ALGS, keys=_operational())
    def first_session(self, profile: str, algorithm: str, keys: dict[str, str]) -> None:
        self.open_session(profile, algorithm, keys)

    @rule(profile=_PROFILES, algorithm=_ALGS, keys=_operational())
    def open_session(self, profile: str, algorithm: str, keys: dict[str, str]) -> None:
        self._tick()
        self.r.report.cases += 1
        if self.r.accounts is None:
            profile = "none"
        if len(self.links) >= MAX_LINKS:
            self._drop(self.links[0])
        link, why = self._login(profile, keys, algorithm=algorithm)
        self._health()
        if link is None and not why.startswith(("LoginError", "AuthenticationError")):
            self._liveness()  # no Login Response at all: the target's life is the question
            return
        if link is None:
            self._fail("login", "refused", f"a correct login ({profile}) failed: {why}",
                       phase="login", keys=[], pdus=[], level="INFORMATIONAL")  # fmt: skip
            return
        self.links.append(link)

    @precondition(lambda self: self.r.accounts is not None)
    @rule(mutual=st.booleans(), algorithm=_ALGS, bad=_BAD_CHAP)
    def bad_chap(self, mutual: bool, algorithm: str, bad: tuple[str, str]) -> None:
        self._tick()
        self.r.report.cases += 1
        key, value = bad

        def spoil(req: P.LoginRequest) -> P.LoginRequest:
            try:
                pairs = T.parse_pairs(req.data)
            except ProtocolError:
                return req
            if not any(k == key for k, _ in pairs):
                return req
            pairs = [(k, value if k == key else v) for k, v in pairs]
            return dataclasses.replace(req, data=T.format_pairs(pairs, strict=False))

        profile = "mutual" if mutual else "chap"
        link, _why = self._login(profile, {}, algorithm=algorithm, hook=spoil)
        self._health()
        if link is not None:
            pdus = list(link.login_pdus)
            link.close()
            if key != "CHAP_A":  # a spoiled CHAP_A list may still hold the right one
                self._fail(
                    "auth-accepted", f"{key} {'mutual' if mutual else 'one-way'}",
                    f"a login whose {key} was {value[:40]!r} reached full feature phase",
                    phase="login", keys=[], pdus=pdus, requirement="R7143-12.1.3-3",
                )  # fmt: skip

    @rule(i=st.integers(0, MAX_LINKS - 1))
    def extra_connection(self, i: int) -> None:
        """MC/S: a new connection of an existing session (RFC 7143 6.3.1, a new CID)."""
        self._tick()
        self.r.report.cases += 1
        lead = self._pick(i)
        if lead is None or len(self.links) >= MAX_LINKS:
            return
        link, _why = self._login(
            lead.profile, {}, isid=lead.isid, tsih=lead.tsih,
            session=lead.result.negotiated if lead.result else None,
        )  # fmt: skip
        self._health(lead)
        if link is not None:  # refused is the target's right (MaxConnections)
            self.links.append(link)

    @rule(i=st.integers(0, MAX_LINKS - 1), keys=_operational())
    def reinstate_session(self, i: int, keys: dict[str, str]) -> None:
        """The same ISID with TSIH 0: the old session ends (R7143-6.3.5-1)."""
        self._tick()
        self.r.report.cases += 1
        old = self._pick(i)
        if old is None:
            return
        olds = [x for x in self.links if (x.isid, x.tsih) == (old.isid, old.tsih)]
        link, why = self._login(old.profile, keys, isid=old.isid)
        self._health(old)
        if link is None and not why.startswith(("LoginError", "AuthenticationError")):
            self._liveness(old)  # no Login Response at all: the target's life is the question
            return
        if link is None:
            self._fail("reinstatement", "session refused",
                       f"a session reinstatement (same ISID, TSIH 0) failed: {why}", link=old,
                       requirement="R7143-6.3.5-1")  # fmt: skip
            return
        self.links.append(link)
        for x in olds:
            self._expect_ended(x, "session", "R7143-6.3.5-1")
        self._expect_serving(link, "session", "R7143-6.3.5-1")

    @rule(i=st.integers(0, MAX_LINKS - 1))
    def reinstate_connection(self, i: int) -> None:
        """The same ISID, TSIH and CID: the old connection ends (R7143-6.3.4-1)."""
        self._tick()
        self.r.report.cases += 1
        old = self._pick(i)
        if old is None:
            return
        link, _why = self._login(
            old.profile, {}, isid=old.isid, tsih=old.tsih, cid=old.cid,
            session=old.result.negotiated if old.result else None,
        )  # fmt: skip
        self._health(old)
        if link is None:
            return  # below ErrorRecoveryLevel 2 a target may refuse it (SHOULD)
        self.links.append(link)
        self._expect_ended(old, "connection", "R7143-6.3.4-1")
        self._expect_serving(link, "connection", "R7143-6.3.4-1")

    def _expect_serving(self, new: _Link, what: str, requirement: str) -> None:
        """The connection a reinstatement let in answers a NOP-Out (RFC 7143 6.3.4: in
        addition to the implicit logout, reinstatement is equivalent to a new login)."""
        if new not in self.links:
            return
        outcome = self._sync_quiet(new)
        if outcome == "answered":
            return
        self._drop(new)
        self._fail(
            "reinstatement", f"new {what} not served",
            f"after a {what} reinstatement the new connection's NOP-Out was {outcome}",
            link=new, requirement=requirement,
        )  # fmt: skip

    def _expect_ended(self, old: _Link, what: str, requirement: str) -> None:
        """After a reinstatement the old connection answers no more pings."""
        if old not in self.links:
            return
        self.links.remove(old)
        outcome = self._sync_quiet(old, timeout=1.0)
        old.close()
        if outcome == "answered":
            self._fail(
                "reinstatement", f"old {what} still answers",
                f"after a {what} reinstatement the old connection still answered a NOP-Out",
                link=old, requirement=requirement,
            )  # fmt: skip

    @rule(data=st.binary(max_size=48), first=st.booleans())
    def hostile_login(self, data: bytes, first: bool) -> None:
        """A damaged first Login Request on a fresh connection."""
        self._tick()
        self.r.report.cases += 1
        req = P.LoginRequest(
            transit=first, csg=0, nsg=1, isid=0x80_0000_0000 | next(self.r.isids), itt=1,
            data=T.format_pairs([("InitiatorName", INITIATOR), ("TargetName", self.r.target)])
            + data,
        )  # fmt: skip
        raw = P.encode(req, strict=False)
        try:
            sock = _connect(self.r)
        except OSError:
            self._liveness()
            return
        link = _Link(sock, "none", [], self.r)
        try:
            link.send([raw])
            self._step([raw], "login")
            checker = AnswerChecker(0, 0, MRDSL)
            wait = 0.2  # the first answer; then only what follows at once
            while (pdu := link.next_pdu(wait)) is not None:
                wait = 0.005
                for v in checker.check(pdu):
                    if v.kind == "mrdsl":
                        self._fail(v.kind, v.place, v.detail, phase="login", keys=[], pdus=[raw],
                                   requirement=v.requirement)  # fmt: skip
        except _Closed:
            pass
        except ProtocolError as exc:
            self._fail("undecodable", type(exc).__name__, str(exc), phase="login", keys=[],
                       pdus=[raw], requirement="R7143-11.2")  # fmt: skip
        finally:
            link.close()
        self._health()

    # ------------------------------------------------------------------ rules: FFP

    @rule(
        i=st.integers(0, MAX_LINKS - 1),
        op=st.sampled_from(_CDB_OPS) | st.integers(0, 255),
        lun=st.sampled_from([0, 0, 1, 2, 255, 16383]),
        tail=st.binary(min_size=15, max_size=15),
        small=st.booleans(),
        read=st.booleans(),
        write=st.booleans(),
        edtl=st.sampled_from([0, 512, 4096, 65536]) | st.integers(0, 0xFFFFFFFF),
        immediate_data=st.sampled_from([0, 0, 512, 1024]),
        attr=st.integers(0, 7),
    )
    def scsi_command(
        self, i: int, op: int, lun: int, tail: bytes, small: bool, read: bool, write: bool,
        edtl: int, immediate_data: int, attr: int,
    ) -> None:  # fmt: skip
        link = self._pick(i)
        if link is None:
            return
        cdb = bytearray(bytes([op]) + tail)
        if small:  # a small LBA and length: reach the data path
            cdb[1:16] = bytes(15)
            cdb[8 if op < 0x80 else 13] = 1
        cmd = P.ScsiCommand(
            final=True, read=read, write=write, attr=attr, lun=P.lun_to_field(lun),
            expected_data_transfer_length=edtl, cdb=bytes(cdb),
            data=bytes(min(immediate_data, edtl)) if write else b"",
            **self._cmd_numbers(link, False),
        )  # fmt: skip
        self._ffp(link, [cmd])

    @rule(
        i=st.integers(0, MAX_LINKS - 1),
        skew=st.sampled_from([0, 0, 0, 1, 512, -1]),
        length=st.sampled_from([1, 512, 4096, 8192]),
        datasn=st.sampled_from([0, 0, 1, 0xFFFFFFFF]),
        final=st.booleans(),
    )
    def data_out(self, i: int, skew: int, length: int, datasn: int, final: bool) -> None:
        """Data-Out for an R2T the target sent, at a drawn offset and length."""
        withttt = [x for x in self.links if x.s.ttts]
        if not withttt:
            return
        link = withttt[i % len(withttt)]
        itt, ttt, off, want = link.s.ttts.pop(0)
        pdu = P.ScsiDataOut(
            final=final, itt=itt, ttt=ttt, buffer_offset=max(0, off + skew) & 0xFFFFFFFF,
            datasn=datasn, expstatsn=link.s.expstatsn, data=bytes(min(length, want or length)),
        )  # fmt: skip
        self._ffp(link, [pdu])

    @rule(
        i=st.integers(0, MAX_LINKS - 1),
        function=st.integers(1, 15),
        ref=st.sampled_from(["last", "none", "any"]),
        lun=st.sampled_from([0, 1, 255]),
    )
    def tmf(self, i: int, function: int, ref: str, lun: int) -> None:
        link = self._pick(i)
        if link is None:
            return
        rtt = {"last": link.last_itt, "none": 0xFFFFFFFF, "any": 0x1234}[ref]
        pdu = P.TaskManagementRequest(
            immediate=True, function=function, lun=P.lun_to_field(lun), referenced_task_tag=rtt,
            refcmdsn=(link.s.cmdsn - 1) & 0xFFFFFFFF, **self._cmd_numbers(link, True),
        )  # fmt: skip
        self._ffp(link, [pdu])

    @rule(i=st.integers(0, MAX_LINKS - 1), data=st.binary(max_size=64), immediate=st.booleans())
    def nop(self, i: int, data: bytes, immediate: bool) -> None:
        link = self._pick(i)
        if link is None:
            return
        pdu = P.NopOut(immediate=immediate, data=data, **self._cmd_numbers(link, immediate))
        self._ffp(link, [pdu])

    @rule(
        i=st.integers(0, MAX_LINKS - 1),
        text=st.sampled_from(
            [
                b"SendTargets=All\0",
                b"SendTargets=\0",
                b"MaxRecvDataSegmentLength=4096\0",
                b"X-com.example.k=v\0",
                b"SendTargets=All",
                b"=\0\0",
                b"K" * 300 + b"=v\0",
            ]
        ),
        final=st.booleans(),
        cont=st.booleans(),
    )
    def text(self, i: int, text: bytes, final: bool, cont: bool) -> None:
        link = self._pick(i)
        if link is None:
            return
        pdu = P.TextRequest(final=final, cont=cont and not final, data=text,
                            **self._cmd_numbers(link, False))  # fmt: skip
        self._ffp(link, [pdu])

    @rule(i=st.integers(0, MAX_LINKS - 1), reason=st.integers(0, 3), other_cid=st.booleans())
    def logout(self, i: int, reason: int, other_cid: bool) -> None:
        link = self._pick(i)
        if link is None:
            return
        cid = link.cid ^ 0x5A if other_cid else link.cid
        pdu = P.LogoutRequest(immediate=True, reason=reason, cid=cid,
                              **self._cmd_numbers(link, True))  # fmt: skip
        self._ffp(link, [pdu])

    @rule(i=st.integers(0, MAX_LINKS - 1), delta=st.sampled_from([1, -1, 2**31, 1000, -1000]))
    def skew_cmdsn(self, i: int, delta: int) -> None:
        """Sequence numbers moved on purpose: the next command is out of the window."""
        self._tick()
        link = self._pick(i)
        if link is None:
            return
        link.s.cmdsn = (link.s.cmdsn + delta) & 0xFFFFFFFF

    @rule(i=st.integers(0, MAX_LINKS - 1), pdu=st.data())
    def hostile_pdu(self, i: int, pdu: Any) -> None:
        """Any request with every field over its range, or an unknown opcode, maybe tampered."""
        from iscsi_conformance.fuzz.runner import initiator_pdus, tampers

        drawn = pdu.draw(initiator_pdus(max_data=512), label="pdu")
        tamper = pdu.draw(tampers(), label="tamper")
        link = self._pick(i)
        if link is None:
            return
        s = link.s
        raw = P.encode(drawn, strict=False, tamper=tamper, header_digest=s.hd, data_digest=s.dd)
        self.program.append(["hostile_bytes", {"i": i, "raw": raw.hex()}])  # replayed as sent
        self._ffp(link, [raw])

    def hostile_bytes(self, i: int, raw: str) -> None:
        """A ``hostile_pdu`` replayed: the bytes it sent (hex), on link ``i``."""
        self._tick()
        link = self._pick(i)
        if link is not None:
            self.trace.append(f"state.hostile_bytes(i={i}, raw={_short(raw)})")
            self._ffp(link, [bytes.fromhex(raw)])

    # ------------------------------------------------------------------ end

    def teardown(self) -> None:
        for link in list(self.links):
            link.close()
        self.links.clear()


def _traced(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: SessionMachine, **kwargs: Any) -> Any:
        args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
        self.trace.append(f"state.{name}({args})")
        if name != "hostile_pdu":  # that one records the bytes it sends (hostile_bytes)
            self.program.append([name, {k: _plain(v) for k, v in kwargs.items()}])
        return function(self, **kwargs)

    call.__name__ = call.__qualname__ = name  # Hypothesis prints programs with it
    call.__doc__ = function.__doc__
    return call


def _plain(v: Any) -> Any:
    """``v`` as a reproducer writes and reads it back (tuples as lists)."""
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _short(v: Any) -> str:
    if hasattr(v, "conjecture_data"):  # st.data(): what it drew is in the PDU itself
        return "data(...)"
    text = repr(v)
    return text if len(text) <= 120 else text[:117] + "..."


#: the rules by name, as a replayed program calls them (traced, as in a run)
_RULES: dict[str, Callable[..., Any]] = {}
for _name, _value in list(vars(SessionMachine).items()):
    for _marker in ("hypothesis_stateful_rule", "hypothesis_stateful_initialize_rule"):
        _r = getattr(_value, _marker, None)
        if _r is not None:
            object.__setattr__(_r, "function", _traced(_name, _r.function))
            _RULES[_name] = _r.function
_RULES["hostile_bytes"] = SessionMachine.hostile_bytes


def check_program(program: Any) -> list[tuple[str, dict[str, Any]]]:
    """``program`` (a reproducer's literal) as (rule, arguments); ValueError if it is
    not one: an unknown rule or arguments that are not a dict."""
    out: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(program, list | tuple):
        raise ValueError("a program is a list of [rule, {argument: value}]")
    for step in program:
        if (
            not isinstance(step, list | tuple)
            or len(step) != 2
            or step[0] not in _RULES
            or step[0] == "hostile_pdu"
            or not isinstance(step[1], dict)
        ):
            raise ValueError(f"not a step of a program: {step!r:.200}")
        out.append((str(step[0]), dict(step[1])))
    return out


def replay_program(
    host: str,
    port: int,
    target: str,
    program: Any,
    *,
    health: Any = None,
    accounts: Accounts | None = None,
    tape: Any = None,
    seconds: float = 120.0,
) -> tuple[set[tuple[str, str]], MachineRun]:
    """Run a recorded ``program`` once against the target (outside Hypothesis): the
    identities of the failures it showed (it goes on past a failure, as a non-strict
    run does) and the run (``sent``: every PDU sent, by connection). ``tape`` (a
    ``capture.MultiTape``) records every connection. ``accounts``: the CHAP accounts
    of the target (without them, CHAP rules log in without authentication). Raises
    ValueError for a program that is not one."""
    steps = check_program(program)
    run = MachineRun(host, port, target, deadline=time.monotonic() + seconds, health=health,
                     accounts=accounts, strict=True, tape=tape, record_sent=True)  # fmt: skip
    machine = type("SessionMachineReplay", (SessionMachine,), {"run": run})()
    try:
        for name, kwargs in steps:
            try:
                _RULES[name](machine, **kwargs)
            except FuzzFinding:
                pass  # kept in run.failures; the program goes on
            except TypeError as exc:  # arguments that are not the rule's
                raise ValueError(f"{name}: {exc}") from exc
    except OutOfTime:
        run.report.notes.append(TIME_NOTE)
    finally:
        machine.teardown()
    run.report.failures = dict(run.failures)
    return set(run.failures), run


def run_machine(
    host: str,
    port: int,
    target: str,
    *,
    seconds: float,
    max_examples: int = 1000,
    steps: int = 30,
    health: Any = None,
    accounts: Accounts | None = None,
    strict: bool = True,
    seed: int | None = None,
    database: Path | None = None,
    progress: Callable[[str], None] | None = None,
    shrink_seconds: float | None = None,
    max_rss_kib: int | None = None,
    max_fds: int | None = None,
    rate: float | None = None,
) -> tuple[CampaignReport, MachineRun]:
    """Run the machine for at most ``max_examples`` examples and ``seconds``; returns
    the report (a ``CampaignReport``: cases are rules run) and the run, whose
    ``failures`` hold each distinct failure as its last (shrunk) run left it."""
    run = MachineRun(host, port, target, deadline=time.monotonic() + seconds, health=health,
                     accounts=accounts, strict=strict, progress=progress,
                     rate=rate or None)  # fmt: skip
    run.report = CampaignReport(target=f"{host}:{port}/{target}", rate_cap=run.rate)
    # shrinking gets a fifth of the budget (at least 2 s) from the first failure on
    run.shrink_seconds = shrink_seconds if shrink_seconds is not None else max(2.0, seconds / 5)
    machine = type("SessionMachineRun", (SessionMachine,), {"run": run})
    # a seed derandomises the run (Hypothesis then takes no example database)
    derandomize = seed is not None and database is None
    db: Any = (
        None if derandomize
        else DirectoryBasedExampleDatabase(str(database)) if database
        else InMemoryExampleDatabase()
    )  # fmt: skip
    conf = settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None, database=db,
        derandomize=derandomize, suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        report_multiple_bugs=True, print_blob=False,
    )  # fmt: skip
    from hypothesis.reporting import with_reporter

    before = _resources(health)

    with contextlib.ExitStack() as stack:
        stack.enter_context(with_reporter(lambda text: None))  # the notes carry the programs
        try:
            run_state_machine_as_test(machine, settings=conf)
        except OutOfTime:
            run.report.notes.append(TIME_NOTE)
        except FuzzFinding as exc:
            _keep_program(run, exc)
        except Flaky as exc:
            if _caused_by_deadline(exc) or run.time_left() <= 0.1:
                # Hypothesis reports OutOfTime inside a run as inconsistent data
                run.report.notes.append(TIME_NOTE)
            else:  # a live target need not answer the same way twice
                run.report.notes.append(
                    f"Hypothesis stopped: {type(exc).__name__} (the target did not behave "
                    "the same way on a replay); the failures recorded so far are kept"
                )
        except BaseExceptionGroup as group:  # several distinct failures
            for e in _leaves(group):
                if isinstance(e, FuzzFinding):
                    _keep_program(run, e)
            others = [e for e in _leaves(group) if not isinstance(e, FuzzFinding)]
            if others:
                raise others[0] from group
    for f in list(run.failures.values()):
        program = run.programs.get(f.identity)
        f.shrunk = program is not None
        if program:
            f.detail += "\n\nHypothesis's shrunk program:\n" + _trim(program)
    if before:
        time.sleep(0.2)  # let the target finish closing what the run left
    after = _resources(health)
    for name in before:
        run.report.resources[name] = (before[name], after.get(name, 0))
    for place, detail in resource_breaches(before, after, max_rss_kib, max_fds):
        f = Failure("resources", place, detail + f" after {run.examples} programs", "",
                    "INFORMATIONAL")  # fmt: skip
        run.failures[f.identity] = f
    run.report.failures = dict(run.failures)
    run.report.seconds = time.monotonic() - run.started
    run.report.notes.insert(0, f"Hypothesis state machine: {run.examples} examples")
    return run.report, run


def _resources(health: Any) -> dict[str, int]:
    if health is None or not hasattr(health, "rss_kib") or not health.alive():
        return {}
    return {RSS_KEY: health.rss_kib(), FDS_KEY: health.fds()}


def _keep_program(run: MachineRun, exc: FuzzFinding) -> None:
    """The shrunk program Hypothesis attached to a failure (its notes)."""
    identity = getattr(type(exc), "identity", None)
    notes = [str(n) for n in getattr(exc, "__notes__", [])]
    if identity is not None and notes:
        run.programs[identity] = "\n".join(notes)


TIME_NOTE = "the time budget ended the run (shrinking, if any, may be partial)"


def _caused_by_deadline(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OutOfTime):
            return True
        exc, seen = exc.__context__ or exc.__cause__, seen + 1
    return False


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def _trim(text: str, lines: int = 60) -> str:
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
