"""A throughput fuzz campaign against a target: pipelined, bounded, with real oracles.

Theory of operation: ``workers`` asyncio tasks share one deadline. Each worker either
runs a *login case* (a fresh connection, the drawn Login Requests, the answers read
until the target closes or falls quiet) or opens a *session*: a correct login, then
batches of full-feature cases written back to back, each batch followed by an
immediate NOP-Out ping whose NOP-In marks where the target has caught up. A batch
that was answered doubles the next one (up to 64 cases); a batch after which the
target closed the connection ends the session (cases after the one that closed it
were sent but not read, and the report says so). Cases come from ``fuzz.gen``,
seeded per worker, so that a campaign is reproducible given its seed.

Oracles (``fuzz.oracles``): every answer is decoded and checked against the
connection's invariants; a reference target's log is polled after every batch
(``health``) and any internal error is a failure; liveness (a fresh login and ping)
is checked every ``liveness_every`` cases and after a batch that left its connection
silent; resources (RSS, descriptors) are compared at the end when ``health`` can
read them. A failure's identity is its kind and place: the first transcript of each
identity is kept, the others only counted, and each is shrunk on its own (``shrink``)
in the time left once the campaign stops generating.

Bounded: generation stops at the deadline (``seconds``; 80% of it once a failure
waits to be shrunk), every wait is bounded by the time left, and shrinking never
runs past ``seconds``.

Throttled: with ``rate`` (PDUs/s, ``fuzz --rate``), every PDU the campaign writes
(the cases', their pings, every login step, liveness checks) is counted in
``CampaignReport.sent`` and the writer waits, before it writes, until the count is
within ``rate`` times the time elapsed; batches are then at most ``rate / 20``
cases, so that a burst stays short. The progress line shows the achieved rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.errors import ISCSIConformanceError, ProtocolError
from iscsi_conformance.fuzz.gen import Case, Gen, Session, cve_cases
from iscsi_conformance.fuzz.oracles import AnswerChecker, HealthEvent, Violation

__all__ = ["Campaign", "CampaignReport", "Failure", "Health", "quiet_on_interrupt", "replay"]

PING = b"iscsi-conformance fuzz ping"
MAX_BATCH = 64
CASES_PER_SESSION = 2000
LIVENESS_TRIES = 6  # fresh logins of one liveness check at most (Campaign._liveness)
TRANSCRIPT_CASES = 256  # the cases of a session kept for its reproducer


class Health(Protocol):
    """What a campaign can learn from a target it manages (``fuzz.reference``)."""

    def poll(self) -> list[HealthEvent]: ...
    def alive(self) -> bool: ...
    def restart(self, *, deadline: float | None = None) -> None: ...


@dataclasses.dataclass
class Failure:
    """One distinct failure: ``kind`` + ``place`` is its identity."""

    kind: str
    place: str
    detail: str
    requirement: str = ""
    level: str = "MUST"
    phase: str = "ffp"
    login_keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    pdus: list[bytes] = dataclasses.field(default_factory=list)
    count: int = 1
    shrunk: bool = False
    #: the state machine's program up to the failure (``fuzz.machine``: replayed by
    #: ``machine.replay_program``), ``[rule, {argument: value}]``; empty otherwise
    program: list[Any] = dataclasses.field(default_factory=list)

    @property
    def identity(self) -> tuple[str, str]:
        return (self.kind, self.place)


@dataclasses.dataclass
class CampaignReport:
    target: str
    seconds: float = 0.0
    cases: int = 0
    pdus: int = 0
    answers: int = 0
    sessions: int = 0
    cve_cases: int = 0  # the CVE-derived cases run first (fuzz.gen.cve_cases)
    # session-level cases of the seeded engine by kind (mcs, reinstate-..., chap, bad-chap)
    session_cases: dict[str, int] = dataclasses.field(default_factory=dict)
    digest_sessions: int = 0  # sessions that negotiated a CRC32C header or data digest
    #: every PDU written (cases, pings, login steps, liveness), which ``rate_cap`` bounds
    sent: int = 0
    rate_cap: float | None = None  # PDUs/s (``Campaign(rate=)``), None for none
    #: a hostile target's damage by family (``fuzz.hostile.FAMILIES``), in generation
    families: dict[str, int] = dataclasses.field(default_factory=dict)
    closed_by_target: int = 0
    silent: int = 0
    liveness_checks: int = 0
    failures: dict[tuple[str, str], Failure] = dataclasses.field(default_factory=dict)
    coverage: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    resources: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def failing(self, *, strict: bool) -> list[Failure]:
        """Failures that fail the campaign: every one (``strict``, our reference peers)
        or only those resting on a MUST (a third-party peer)."""
        return [f for f in self.failures.values() if strict or f.level == "MUST"]

    @property
    def rate(self) -> float:
        return self.pdus / self.seconds if self.seconds else 0.0

    def progress_line(self, elapsed: float) -> str:
        cov = len(self.coverage)
        capped = (
            f"  sent {self.sent / max(elapsed, 1e-9):.0f}/s (cap {self.rate_cap:g})"
            if self.rate_cap
            else ""
        )
        return (
            f"[{elapsed:6.1f} s] cases {self.cases}  PDUs/s {self.pdus / max(elapsed, 1e-9):.0f}"
            f"{capped}"
            f"  failures {len(self.failures)}  coverage {cov}/{len(COVERAGE_CELLS)} opcode x phase"
        )

    def summary(self) -> str:
        lines = [
            f"fuzzed {self.target}: {self.cases} cases, {self.pdus} PDUs sent, "
            f"{self.answers} answers in {self.seconds:.1f} s "
            f"({self.cases / max(self.seconds, 1e-9):.0f} cases/s, {self.rate:.0f} PDUs/s)",
            f"sessions {self.sessions} ({self.digest_sessions} with digests), closed by the target {self.closed_by_target}, "
            f"silent {self.silent}, liveness checks {self.liveness_checks}, "
            f"coverage {len(self.coverage)}/{len(COVERAGE_CELLS)} opcode x phase, "
            f"CVE-derived cases {self.cve_cases}",
        ]
        if self.rate_cap:
            lines.append(
                f"rate cap {self.rate_cap:g} PDUs/s: {self.sent} PDUs written in all (cases, "
                f"pings, logins), {self.sent / max(self.seconds, 1e-9):.0f}/s achieved"
            )
        if self.session_cases:
            lines.append("session cases: " + ", ".join(
                f"{k} {v}" for k, v in sorted(self.session_cases.items())))  # fmt: skip
        for name, (before, after) in sorted(self.resources.items()):
            lines.append(f"{name}: {before} before, {after} after")
        lines.extend(self.notes)
        if not self.failures:
            lines.append("no failure")
        for f in self.failures.values():
            req = f" ({f.requirement}, {f.level})" if f.requirement else ""
            lines.append(
                f"FAILURE {f.kind} at {f.place}{req}: {f.count} time(s), reproducer of "
                f"{len(f.pdus)} PDU(s){' (shrunk)' if f.shrunk else ''}: "
                f"{f.detail.splitlines()[0] if f.detail else ''}"
            )
        return "\n".join(lines)


_PHASES = ("login", "ffp")
COVERAGE_CELLS = [
    (c.__name__, ph) for c in P.PDU_CLASSES.values() if c.is_request for ph in _PHASES
] + [("unknown", ph) for ph in _PHASES]


#: How long after a worker queues a TARGET COLD RESET the target may still act on it
#: (the batch is paced and written after it is counted; the target reads it later):
#: a reinstatement whose new connection closes within this of one judges nothing.
COLD_RESET_LAG = 0.3


def _is_cold_reset(raw: bytes) -> bool:
    """A Task Management Function Request for TARGET COLD RESET (RFC 7143 11.5.1)."""
    return len(raw) > 1 and raw[0] & 0x3F == 0x02 and raw[1] & 0x7F == 7


def _label_opcode(raw: bytes) -> str:
    cls = P.PDU_CLASSES.get(raw[0] & 0x3F) if raw else None
    if cls is None or not cls.is_request:
        return "unknown"
    return cls.__name__


class _Wire:
    """One TCP connection with a decoder for what the target sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = P.PDUDecoder(max_data_segment_length=1 << 24)
        sock = writer.get_extra_info("sockname")
        self.local_port = sock[1] if sock else 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


async def _connect(host: str, port: int, timeout: float) -> _Wire:
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    return _Wire(r, w)


def default_login_keys(initiator: str, target: str, mrdsl: int) -> list[tuple[str, str]]:
    return [
        ("InitiatorName", initiator),
        ("TargetName", target),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", str(mrdsl)),
    ]


async def login(
    wire: _Wire,
    keys: Sequence[tuple[str, str]],
    *,
    isid: int,
    timeout: float,
    tsih: int = 0,
    cid: int = 0,
    chap: Any = None,
    mutual: Any = None,
    algorithm: int = 5,
    hook: Any = None,
    session: Any = None,
    result: list[Any] | None = None,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[P.LoginResponse, dict[str, str]]:
    """A correct login as the reference initiator makes it (``initiator.login_flow``,
    AuthMethod=None, ``keys`` over its defaults): the final Login Response and the keys
    the target answered. Raises ConnectionError when the login does not succeed.
    ``tsih``/``cid``/``session`` join or reinstate (RFC 7143 6.3.1); ``chap``/``mutual``
    (``ChapAccount``) with CHAP_A ``algorithm`` authenticate; ``hook`` rewrites each
    Login Request (``LoginFlow.login_hook``); ``result`` receives the ``LoginResult``;
    ``pace`` is awaited before each Login Request (a campaign's ``rate``)."""
    from iscsi_conformance.initiator.login_flow import LoginFlow, LoginResult

    ours = dict(keys)
    flow = LoginFlow(
        initiator_name=ours.pop("InitiatorName", "iqn.2024-01.org.iscsi-conformance:fuzzer"),
        target_name=ours.pop("TargetName", None),
        session_type=ours.pop("SessionType", "Normal"),
        isid=isid, itt=1, rng=os.urandom, keys=dict(ours), tsih=tsih, cid=cid,
        chap_credentials=chap, mutual_chap=mutual, chap_algorithms=(algorithm,),
        login_hook=hook, session=session,
    )  # fmt: skip
    answered: dict[str, str] = {}
    step = flow.start()
    for _ in range(16):
        out = step.wire
        if out is not None:
            if pace is not None:
                await pace(1)
            wire.writer.write(out if isinstance(out, bytes) else P.encode(out, strict=step.strict))
        rsp = await _next_pdu(wire, timeout)
        if not isinstance(rsp, P.LoginResponse):
            raise ConnectionError(f"login answered with {rsp!r}")
        if rsp.status_class:
            raise ConnectionError(
                f"login refused: status {rsp.status_class:02x}{rsp.status_detail:02x}"
            )
        with contextlib.suppress(ProtocolError):
            answered.update(T.parse_pairs(rsp.data))
        try:
            nxt = flow.receive(rsp)
        except ISCSIConformanceError as exc:
            raise ConnectionError(f"login failed: {exc}") from exc
        if isinstance(nxt, LoginResult):
            if result is not None:
                result.append(nxt)
            return rsp, answered
        step = nxt
    raise ConnectionError("the login did not reach full feature phase")


async def _next_pdu(wire: _Wire, timeout: float) -> P.PDU:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        pdu = wire.decoder.next_pdu()
        if pdu is not None:
            return pdu
        left = end - loop.time()
        if left <= 0:
            raise TimeoutError("no answer")
        data = await asyncio.wait_for(wire.reader.read(65536), left)
        if not data:
            raise ConnectionError("closed by the target")
        wire.decoder.feed(data)


class Campaign:
    """See the module doc. ``run()`` returns a ``CampaignReport``."""

    def __init__(
        self,
        host: str,
        port: int,
        target: str,
        *,
        initiator: str = "iqn.2024-01.org.iscsi-conformance:fuzzer",
        seconds: float = 60.0,
        max_cases: int | None = None,
        seed: int = 0,
        workers: int = 4,
        health: Health | None = None,
        progress: Callable[[str], None] | None = None,
        mrdsl: int = 8192,
        liveness_every: int = 2000,
        login_ratio: float = 0.1,
        strict: bool = True,
        shrink: bool = True,
        io_timeout: float = 2.0,
        silence: float = 0.3,
        hostile_ratio: float = 0.3,
        digests: bool = True,
        max_rss_kib: int | None = None,
        max_fds: int | None = None,
        accounts: Any = None,
        session_ratio: float = 0.05,
        rate: float | None = None,
    ) -> None:
        self.host, self.port, self.target = host, port, target
        # a cap on the PDUs written per second (module doc), None for none
        self.rate = rate if rate else None
        self._max_batch = (
            MAX_BATCH if self.rate is None else max(1, min(MAX_BATCH, int(self.rate / 20)))
        )
        # growth allowed over the start, read from ``health`` (rss_kib(), fds()) every
        # second and at the end: beyond it, a failure of kind "resources"
        self.max_rss_kib, self.max_fds = max_rss_kib, max_fds
        # session-level cases (MC/S, reinstatement, CHAP spoiled): ``session_ratio`` of
        # the draws; CHAP ones only with ``accounts`` (``fuzz.accounts.Accounts``, the
        # subject configured with ``accounts.chap_toml``/``with_accounts``)
        self.accounts, self.session_ratio = accounts, session_ratio
        self._res0: dict[str, int] = {}
        self.initiator = initiator
        self.seconds = seconds
        self.max_cases = max_cases
        self.seed = seed
        self.workers = max(1, workers)
        self.health = health
        self.progress = progress
        self.mrdsl = mrdsl
        self.liveness_every = liveness_every
        self.login_ratio = login_ratio
        self.strict = strict
        self.do_shrink = shrink
        self.io_timeout = io_timeout
        self.silence = silence
        self.hostile_ratio = hostile_ratio
        self.digests = digests
        self.report = CampaignReport(target=f"{host}:{port}/{target}", rate_cap=self.rate)
        self._isid = itertools.count(1)
        self._started = 0.0
        self._deadline = 0.0
        self._stop_generating = 0.0
        self._need_liveness = False
        self._last_liveness = 0
        self._dead = False
        self._restart_lock = asyncio.Lock()
        self._restarted_at = 0.0
        # TARGET COLD RESETs sent by any worker: one closes every connection of the
        # target (RFC 7143 11.5.1), a connection a reinstatement let in included
        self._cold_resets = 0
        self._cold_reset_at = -COLD_RESET_LAG  # when the last one was queued (monotonic)
        # local port -> (login keys, transcript) of live sessions, for health events
        self._transcripts: dict[int, tuple[str, list[tuple[str, str]], list[bytes]]] = {}
        self._recent: list[tuple[str, list[tuple[str, str]], list[bytes]]] = []

    # ------------------------------------------------------------------ bookkeeping

    def _time_left(self) -> float:
        return self._deadline - time.monotonic()

    def _generating(self) -> bool:
        if self._dead:
            return False
        if self.max_cases is not None and self.report.cases >= self.max_cases:
            return False
        return time.monotonic() < self._stop_generating

    def _io(self) -> float:
        return max(0.01, min(self.io_timeout, self._time_left()))

    async def _pace(self, n: int) -> None:
        """Count ``n`` PDUs about to be written; with ``rate``, wait until they fit."""
        self.report.sent += n
        if self.rate is None:
            return
        ahead = self.report.sent / self.rate - (time.monotonic() - self._started)
        if ahead > 0:
            await asyncio.sleep(min(ahead, max(0.0, self._time_left())))

    def _fail(
        self,
        kind: str,
        place: str,
        detail: str,
        phase: str,
        keys: list[tuple[str, str]],
        pdus: list[bytes],
        *,
        requirement: str = "",
        level: str = "MUST",
        program: list[Any] | None = None,
    ) -> None:
        key = (kind, place)
        old = self.report.failures.get(key)
        if old is not None:
            old.count += 1
            if len(pdus) < len(old.pdus) and pdus and not old.program:
                old.pdus, old.phase, old.login_keys = list(pdus), phase, list(keys)
            return
        self.report.failures[key] = Failure(
            kind, place, detail, requirement, level, phase, list(keys), list(pdus),
            program=list(program or []),
        )  # fmt: skip
        if self.do_shrink and (self.strict or level == "MUST"):
            # leave a fifth of the budget to shrink what was found
            self._stop_generating = min(self._stop_generating, self._started + 0.8 * self.seconds)

    def _violations(
        self, vs: list[Violation], phase: str, keys: list[tuple[str, str]], pdus: list[bytes]
    ) -> None:
        for v in vs:
            self._fail(
                v.kind, v.place, v.detail, phase, keys, pdus, requirement=v.requirement,
                level=v.level,
            )  # fmt: skip

    def _poll_health(self) -> None:
        if self.health is None:
            return
        for ev in self.health.poll():
            phase, keys, pdus = self._transcripts.get(ev.peer_port or -1) or (
                self._recent[-1] if self._recent else ("ffp", [], [])
            )
            self._fail("internal-error", ev.place, ev.detail, phase, keys, list(pdus))

    # ------------------------------------------------------------------ cases

    async def _login_case(self, gen: Gen, case: Case | None = None) -> None:
        case = case if case is not None else gen.case(None)
        try:
            wire = await _connect(self.host, self.port, self._io())
        except (OSError, TimeoutError):
            self._need_liveness = True
            return
        self._transcripts[wire.local_port] = ("login", [], list(case.pdus))
        try:
            await self._pace(len(case.pdus))
            wire.writer.write(b"".join(case.pdus))
            self._count(case)
            checker = AnswerChecker(0, 0, 8192)  # login answers: only decoding and size
            quiet = min(0.05, self._io())
            while True:
                try:
                    pdu = await _next_pdu(wire, quiet)
                except (TimeoutError, ConnectionError, OSError):
                    break
                except ProtocolError as exc:
                    self._fail(
                        "undecodable", type(exc).__name__, str(exc), "login", [], list(case.pdus),
                        requirement="R7143-11.2", level="MUST",
                    )  # fmt: skip
                    break
                self.report.answers += 1
                vs = [v for v in checker.check(pdu) if v.kind == "mrdsl"]
                self._violations(vs, "login", [], list(case.pdus))
        finally:
            wire.close()
            self._remember(self._transcripts.pop(wire.local_port, None))
        self._poll_health()

    def _remember(self, t: tuple[str, list[tuple[str, str]], list[bytes]] | None) -> None:
        if t is not None:
            self._recent.append(t)
            del self._recent[:-4]

    def _count(self, case: Case) -> None:
        self.report.cases += 1
        self.report.pdus += len(case.pdus)
        for raw in case.pdus:
            self.report.coverage.add((_label_opcode(raw), case.phase))

    async def _session(self, gen: Gen, wid: int) -> None:
        keys = default_login_keys(self.initiator, self.target, self.mrdsl)
        keys = keys[:3] + gen.operational_keys()
        try:
            wire = await _connect(self.host, self.port, self._io())
        except (OSError, TimeoutError):
            self._need_liveness = True
            return
        try:
            try:
                rsp, answered = await login(
                    wire, keys, isid=(wid << 32) | next(self._isid), timeout=self._io(),
                    pace=self._pace,
                )  # fmt: skip
            except (ConnectionError, TimeoutError, OSError, ProtocolError) as exc:
                if self._generating():
                    self.report.notes.append(f"a correct login failed: {exc}")
                    del self.report.notes[:-3]
                    self._need_liveness = True
                return
            self.report.sessions += 1
            s = Session(cmdsn=rsp.expcmdsn, expstatsn=(rsp.statsn + 1) & 0xFFFFFFFF)
            s.hd = answered.get("HeaderDigest") == "CRC32C"
            s.dd = answered.get("DataDigest") == "CRC32C"
            wire.decoder.header_digest, wire.decoder.data_digest = s.hd, s.dd
            self.report.digest_sessions += s.hd or s.dd
            wire.decoder.max_data_segment_length = None  # the checker reports oversize
            erl = (
                int(answered.get("ErrorRecoveryLevel", "0") or 0)
                if answered.get("ErrorRecoveryLevel", "0").isdigit()
                else 0
            )
            checker = AnswerChecker(rsp.statsn, rsp.expcmdsn, self.mrdsl, erl=erl)
            transcript: list[bytes] = []
            self._transcripts[wire.local_port] = ("ffp", keys, transcript)
            batch, done, ping = 1, 0, 0
            hostile = gen.rng.random() < self.hostile_ratio
            while self._generating() and done < CASES_PER_SESSION:
                cases = [gen.case(s, hostile=hostile) for _ in range(batch)]
                ping += 1
                ping_itt = 0xF000_0000 | (ping & 0xFFFFFFF)
                nop = P.NopOut(
                    immediate=True, itt=ping_itt, cmdsn=s.cmdsn, expstatsn=s.expstatsn, data=PING
                )
                out = [raw for c in cases for raw in c.pdus]
                if resets_here := sum(map(_is_cold_reset, out)):
                    self._cold_resets += resets_here
                    self._cold_reset_at = time.monotonic()
                transcript.extend(out)
                del transcript[:-TRANSCRIPT_CASES]
                await self._pace(len(out) + 1)
                wire.writer.write(
                    b"".join(out) + P.encode(nop, header_digest=s.hd, data_digest=s.dd)
                )
                for c in cases:
                    self._count(c)
                done += batch
                outcome = await self._read_until(wire, s, checker, ping_itt, keys, transcript)
                self._poll_health()
                if outcome == "answered":
                    batch = min(batch * 2, self._max_batch)
                    continue
                if outcome == "silent":
                    self.report.silent += 1
                    self._need_liveness = True
                else:
                    self.report.closed_by_target += 1
                break
        finally:
            wire.close()
            self._remember(self._transcripts.pop(wire.local_port, None))

    async def _read_until(
        self,
        wire: _Wire,
        s: Session,
        checker: AnswerChecker,
        ping_itt: int,
        keys: list[tuple[str, str]],
        transcript: list[bytes],
    ) -> str:
        while True:
            try:
                pdu = await _next_pdu(wire, max(0.01, min(self.silence, self._time_left())))
            except TimeoutError:
                return "silent"
            except (ConnectionError, OSError):
                return "closed"
            except ProtocolError as exc:
                self._fail(
                    "undecodable", type(exc).__name__, str(exc), "ffp", keys, list(transcript),
                    requirement="R7143-11.2", level="MUST",
                )  # fmt: skip
                return "closed"
            self.report.answers += 1
            s.saw(pdu)
            vs = checker.check(pdu)
            if vs:
                self._violations(vs, "ffp", keys, list(transcript))
            exp = getattr(pdu, "expcmdsn", None)
            if exp is not None and not isinstance(pdu, P.ScsiDataIn):
                s.cmdsn = exp  # follow the target's window: deep handlers stay reachable
            if isinstance(pdu, P.NopIn) and pdu.itt == ping_itt:
                if pdu.data != PING:
                    self._fail(
                        "ping-echo", "NopIn", f"ping answered with {pdu.data[:64]!r}", "ffp",
                        keys, list(transcript), requirement="R7143-11.18-1",
                    )  # fmt: skip
                return "answered"

    # ------------------------------------------------------------------ session cases

    async def _session_case(self, gen: Gen, wid: int) -> None:
        """One session-level case: an extra connection (MC/S), a session or connection
        reinstatement, or a CHAP login with a spoiled value (see ``fuzz.machine``)."""
        kinds = ["mcs", "reinstate-session", "reinstate-connection"]
        if self.accounts is not None:
            kinds += ["chap", "bad-chap", "bad-chap"]
        kind = gen.rng.choice(kinds)
        self.report.cases += 1
        self.report.coverage.add(("LoginRequest", "login"))
        self.report.session_cases[kind] = self.report.session_cases.get(kind, 0) + 1
        wires: list[_Wire] = []
        try:
            if kind in ("chap", "bad-chap"):
                await self._chap_case(gen, wires, spoil=kind == "bad-chap")
            else:
                await self._rejoin_case(gen, wid, kind, wires)
        except (ConnectionError, TimeoutError, OSError, ProtocolError):
            self._need_liveness = True
        finally:
            for w in wires:
                w.close()
        self._poll_health()

    async def _chap_case(self, gen: Gen, wires: list[_Wire], *, spoil: bool) -> None:
        from iscsi_conformance.fuzz.accounts import (
            ALGORITHMS,
            BAD_CHAP_VALUES,
            CHAP_INITIATOR,
            MUTUAL_INITIATOR,
        )

        rng = gen.rng
        mutual = rng.random() < 0.5
        algorithm = rng.choice(sorted(ALGORITHMS.values()))
        name = MUTUAL_INITIATOR if mutual else CHAP_INITIATOR
        key, value = rng.choice(BAD_CHAP_VALUES)
        sent: list[bytes] = []

        def hook(req: P.LoginRequest) -> P.LoginRequest:
            pairs = T.parse_pairs(req.data) if req.data else []
            if spoil and any(k == key for k, _ in pairs):
                pairs = [(k, value if k == key else v) for k, v in pairs]
                req = dataclasses.replace(req, data=T.format_pairs(pairs, strict=False))
            sent.append(P.encode(req, strict=False))
            return req

        keys = [("InitiatorName", name), ("TargetName", self.target),
                ("MaxRecvDataSegmentLength", str(self.mrdsl))]  # fmt: skip
        wire = await _connect(self.host, self.port, self._io())
        wires.append(wire)
        try:
            await login(wire, keys, isid=0x3D_0000_0000 | next(self._isid), timeout=self._io(),
                        chap=self.accounts.chap, algorithm=algorithm, hook=hook,
                        mutual=self.accounts.mutual_target if mutual else None,
                        pace=self._pace)  # fmt: skip
        except (ConnectionError, TimeoutError) as exc:
            if not spoil and "refused" in str(exc):
                self._fail("login", f"CHAP {algorithm} refused",
                           f"a correct CHAP login ({'mutual' if mutual else 'one-way'}, "
                           f"CHAP_A={algorithm}) failed: {exc}", "login", [], sent,
                           level="INFORMATIONAL")  # fmt: skip
            return
        self.report.pdus += len(sent)
        if spoil and key != "CHAP_A":  # a spoiled CHAP_A list may still hold the right one
            name = next(k for k, v in ALGORITHMS.items() if v == algorithm)
            program = [["bad_chap", {"mutual": mutual, "algorithm": name, "bad": [key, value]}]]
            self._fail(
                "auth-accepted", f"{key} {'mutual' if mutual else 'one-way'}",
                f"a login whose {key} was {value[:40]!r} reached full feature phase",
                "login", [], sent, requirement="R7143-12.1.3-3", program=program,
            )  # fmt: skip

    async def _rejoin_case(self, gen: Gen, wid: int, kind: str, wires: list[_Wire]) -> None:
        keys = default_login_keys(self.initiator, self.target, self.mrdsl)
        keys.append(("MaxConnections", str(gen.rng.choice((1, 2, 4)))))
        keys.append(("ErrorRecoveryLevel", str(gen.rng.choice((0, 1, 2)))))
        # the same case as two rules of the state machine (``fuzz.machine``): how its
        # reproducer replays, with both connections
        ops = {k: v for k, v in keys if k not in ("InitiatorName", "TargetName", "SessionType")}
        first = ["first_session", {"profile": "none", "algorithm": "MD5", "keys": ops}]
        second_rule = {"reinstate-session": ["reinstate_session", {"i": 0, "keys": ops}],
                       "reinstate-connection": ["reinstate_connection", {"i": 0}],
                       "mcs": ["extra_connection", {"i": 0}]}[kind]  # fmt: skip
        program = [first, second_rule]
        isid = (wid << 32) | 0x3C_0000_0000 | next(self._isid)
        lead = await _connect(self.host, self.port, self._io())
        wires.append(lead)
        got: list[Any] = []
        rsp, _ = await login(lead, keys, isid=isid, timeout=self._io(), result=got,
                             pace=self._pace)  # fmt: skip
        res = got[0]
        s = Session(cmdsn=rsp.expcmdsn, expstatsn=(rsp.statsn + 1) & 0xFFFFFFFF)
        resets, mark = self._cold_resets, self._restart_mark()
        quiet_since = time.monotonic() - COLD_RESET_LAG
        second = await _connect(self.host, self.port, self._io())
        wires.append(second)
        join: dict[str, Any] = {
            "mcs": {"tsih": res.tsih, "cid": 1, "session": res.negotiated},
            "reinstate-session": {},
            "reinstate-connection": {"tsih": res.tsih, "cid": 0, "session": res.negotiated},
        }[kind]
        try:
            rsp2, _ = await login(second, keys, isid=isid, timeout=self._io(), pace=self._pace,
                                  **join)  # fmt: skip
        except (ConnectionError, TimeoutError) as exc:
            if kind == "reinstate-session" and "refused" in str(exc):  # a status, not a death
                self._fail("reinstatement", "session refused",
                           f"a session reinstatement (same ISID, TSIH 0) failed: {exc}",
                           "ffp", keys, [], requirement="R7143-6.3.5-1",
                           program=program)  # fmt: skip
            return  # MC/S and connection reinstatement may be refused (MaxConnections, ERL)
        if kind == "mcs":
            return
        # the connection a reinstatement let in is served (RFC 7143 6.3.4: in addition
        # to the implicit logout, reinstatement is equivalent to a new login) ...
        what = kind.split("-")[1]
        requirement = "R7143-6.3.5-1" if what == "session" else "R7143-6.3.4-1"
        ping = P.NopOut(immediate=True, itt=0xF0F0_0002, cmdsn=rsp2.expcmdsn,
                        expstatsn=(rsp2.statsn + 1) & 0xFFFFFFFF, data=PING)  # fmt: skip
        try:
            await self._pace(1)
            second.writer.write(P.encode(ping))
            while True:
                pdu = await _next_pdu(second, max(0.5, min(self.io_timeout, self._time_left())))
                if isinstance(pdu, P.NopIn) and pdu.itt == 0xF0F0_0002:
                    break
        except (ConnectionError, TimeoutError, OSError, ProtocolError) as exc:
            if (
                self._time_left() > 0.5
                and self._cold_resets == resets
                # a reset queued just before the snapshot may reach the target after it
                and self._cold_reset_at < quiet_since
                and not self._peer_down(mark)  # a death is the liveness check's to record
            ):
                self._fail("reinstatement", f"new {what} not served",
                           f"after a {what} reinstatement the new connection's NOP-Out got "
                           f"{type(exc).__name__}: {exc}", "ffp", keys, [P.encode(ping)],
                           requirement=requirement, program=program)  # fmt: skip
            return
        # ... and the old connection ends: it answers no more pings
        nop = P.NopOut(immediate=True, itt=0xF0F0_0001, cmdsn=s.cmdsn, expstatsn=s.expstatsn,
                       data=PING)  # fmt: skip
        try:
            await self._pace(1)
            lead.writer.write(P.encode(nop))
            while True:
                pdu = await _next_pdu(lead, max(0.01, min(self.silence, self._time_left())))
                if isinstance(pdu, P.NopIn) and pdu.itt == 0xF0F0_0001:
                    self._fail(
                        "reinstatement", f"old {what} still answers",
                        f"after a {what} reinstatement the old connection still answered a "
                        "NOP-Out", "ffp", keys, [P.encode(nop)],
                        requirement=requirement, program=program,
                    )  # fmt: skip
                    return
        except (ConnectionError, TimeoutError, OSError, ProtocolError):
            return

    # ------------------------------------------------------------------ liveness

    async def alive(self, timeout: float = 5.0) -> str | None:
        """None if a fresh login and ping work, else why not."""
        self.report.liveness_checks += 1
        try:
            wire = await _connect(self.host, self.port, timeout)
        except (OSError, TimeoutError) as exc:
            return f"cannot connect: {exc}"
        try:
            keys = default_login_keys(self.initiator, self.target, self.mrdsl)
            rsp, _ = await login(
                wire, keys, isid=0x3F_0000_0000 | next(self._isid), timeout=timeout,
                pace=self._pace,
            )  # fmt: skip
            nop = P.NopOut(immediate=True, itt=1, cmdsn=rsp.expcmdsn, expstatsn=rsp.statsn + 1,
                           data=PING)  # fmt: skip
            await self._pace(1)
            wire.writer.write(P.encode(nop))
            while True:
                pdu = await _next_pdu(wire, timeout)
                if isinstance(pdu, P.NopIn) and pdu.itt == 1:
                    return None if pdu.data == PING else f"ping answered with {pdu!r}"
        except (ConnectionError, TimeoutError, OSError, ProtocolError) as exc:
            return f"login or ping failed: {type(exc).__name__}: {exc}"
        finally:
            wire.close()

    def _restart_mark(self) -> tuple[int, bool]:
        """The peer's restarts so far and whether one is under way (``_peer_down``)."""
        return int(getattr(self.health, "restarts", 0)), self._restart_lock.locked()

    def _peer_down(self, mark: tuple[int, bool]) -> bool:
        """Whether the peer was restarted, or was being restarted or is dead, since
        ``mark``: a check that overlaps another worker's restart finds it down (no
        listener, or tgt up without its target: login 0203) because that worker found
        it dead and records how; it is not a failure of its own."""
        if mark[1] or self._restart_lock.locked() or self._restart_mark()[0] != mark[0]:
            return True
        return self.health is not None and not self.health.alive()

    async def _liveness(self) -> None:
        self._need_liveness = False
        self._last_liveness = self.report.cases
        mark = self._restart_mark()
        first = self._cold_resets
        why = await self.alive(timeout=max(0.5, min(5.0, self._time_left())))
        tries = 1
        while why is not None and "connect" not in why and tries < LIVENESS_TRIES:
            # Another worker's case may have ended every session just then (a TARGET
            # COLD RESET closes all connections, RFC 7143 11.5.1): fresh logins tell a
            # target that cannot serve from one that reset on request. A verdict needs
            # a second failed login with no cold reset sent from 0.2 s before it to its
            # end; while other workers keep sending them, up to LIVENESS_TRIES logins.
            resets = self._cold_resets
            await asyncio.sleep(min(0.2, max(0.0, self._time_left())))
            why = await self.alive(timeout=max(0.5, min(5.0, self._time_left())))
            tries += 1
            if self._cold_resets == resets:
                break
        if why is None:
            return
        if tries > 1:
            why += (f" ({tries} fresh logins; TARGET COLD RESETs sent by the workers "
                    f"meanwhile: {self._cold_resets - first})")  # fmt: skip
        if self._time_left() <= 0.5:
            return  # the deadline cut the check short: not a verdict
        if self.health is not None and (
            mark[1] or self._restart_lock.locked() or self._restart_mark()[0] != mark[0]
        ):
            return  # another worker is restarting the peer it found dead (_peer_down)
        phase, keys, pdus = self._recent[-1] if self._recent else ("ffp", [], [])
        self._fail("liveness", _liveness_place(why, self.health), why, phase, keys, pdus)
        if self.health is None:
            self._dead = True
            return
        async with self._restart_lock:
            # one restart at a time: the workers that found it dead wait for this one
            if (
                self.health.alive()
                and self._restarted_at > self._started
                and (time.monotonic() - self._restarted_at < 1.0)
            ):
                return
            if self._time_left() < 2.0:
                self._dead = True  # no time to bring it back within the budget
                return
            try:
                await asyncio.to_thread(self.health.restart, deadline=self._deadline)
            except Exception as exc:  # a target that will not come back ends the campaign
                self.report.notes.append(f"the target could not be restarted: {exc}")
                self._dead = True
            self._restarted_at = time.monotonic()

    # ------------------------------------------------------------------ run

    async def _worker(self, wid: int) -> None:
        gen = Gen(
            self.seed * 1000 + wid,
            initiator=self.initiator,
            target=self.target,
            mrdsl=self.mrdsl,
            digests=self.digests,
        )
        if wid == 0:  # the CVE-derived cases go first, as explicit examples
            for case in cve_cases(self.initiator, self.target):
                if not self._generating():
                    return
                await self._login_case(gen, case)
                self.report.cve_cases += 1
        while self._generating():
            if (
                self._need_liveness
                or self.report.cases - self._last_liveness >= self.liveness_every
            ):
                await self._liveness()
                continue
            r = gen.rng.random()
            if r < self.login_ratio:
                await self._login_case(gen)
            elif r < self.login_ratio + self.session_ratio:
                await self._session_case(gen, wid)
            else:
                await self._session(gen, wid)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._check_resources(self._resources())
            if self.progress is not None:
                self.progress(self.report.progress_line(time.monotonic() - self._started))

    async def run_async(self) -> CampaignReport:
        asyncio.get_running_loop().set_exception_handler(quiet_on_interrupt)
        self._started = time.monotonic()
        self._deadline = self._started + self.seconds
        self._stop_generating = self._deadline
        res0 = self._res0 = self._resources()
        ticker = asyncio.create_task(self._ticker())
        try:
            tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), max(0.0, self._time_left()))
            except TimeoutError:
                pass  # the deadline: the workers were cancelled mid-case
            if self.health is not None:
                await asyncio.sleep(min(0.2, max(0.0, self._time_left())))
                self._poll_health()
            if self._time_left() > 1.0 and not self._dead:
                why = await self.alive(timeout=min(5.0, self._time_left()))
                if why is not None:
                    phase, keys, pdus = self._recent[-1] if self._recent else ("ffp", [], [])
                    self._fail("liveness", "end", why, phase, keys, pdus)
            if self.do_shrink:
                await self._shrink_all()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        res1 = self._resources()
        self._check_resources(res1)
        for name in res0:
            self.report.resources[name] = (res0[name], res1.get(name, 0))
        self.report.seconds = time.monotonic() - self._started
        return self.report

    def run(self) -> CampaignReport:
        return asyncio.run(self.run_async())

    def _check_resources(self, now: dict[str, int]) -> None:
        for place, detail in resource_breaches(self._res0, now, self.max_rss_kib, self.max_fds):
            if ("resources", place) in self.report.failures:
                continue
            phase, keys, pdus = self._recent[-1] if self._recent else ("ffp", [], [])
            detail += (
                f" after {self.report.cases} cases (seed {self.seed}); growth is not one "
                f"exchange: rerun the campaign (--seed {self.seed} --cases {self.report.cases})"
                " to see it again; the PDUs kept are the last session's"
            )
            self._fail("resources", place, detail, phase, keys, list(pdus),
                       level="INFORMATIONAL")  # fmt: skip

    def _resources(self) -> dict[str, int]:
        h: Any = self.health
        out: dict[str, int] = {}
        if h is not None and hasattr(h, "rss_kib") and h.alive():
            out[RSS_KEY] = h.rss_kib()
            out[FDS_KEY] = h.fds()
        return out

    # ------------------------------------------------------------------ shrinking

    async def reproduces(self, f: Failure, pdus: list[bytes]) -> bool:
        await self._pace(len(pdus) + 3)  # a login (about 2) and a ping
        seen = await replay_once(
            self.host, self.port, self.target, f.phase, f.login_keys, pdus,
            initiator=self.initiator, health=self.health, mrdsl=self.mrdsl,
            timeout=max(0.2, min(2.0, self._time_left())),
        )  # fmt: skip
        return f.identity in seen

    async def _shrink_all(self) -> None:
        if self._dead and self.health is None:
            return  # a target that died and that we cannot restart: nothing to replay on
        for f in list(self.report.failures.values()):
            if self._time_left() < 1.0:
                return
            if not f.pdus or not (self.strict or f.level == "MUST") or f.kind == "resources":
                continue  # growth is the campaign's doing, not one exchange's
            if f.program:
                continue  # a session-level case: two rules of the machine, replayed as such
            if not await self.reproduces(f, f.pdus):
                f.detail += "\n(did not reproduce on replay: kept unshrunk)"
                continue
            f.pdus = await ddmin(f.pdus, functools.partial(self.reproduces, f), self._time_left)
            f.shrunk = True


RSS_KEY, FDS_KEY = "target RSS KiB", "target descriptors"


def resource_breaches(
    before: dict[str, int], after: dict[str, int], max_rss_kib: int | None, max_fds: int | None
) -> list[tuple[str, str]]:
    """(place, detail) of each resource that grew past its limit (issue 14, oracle 4)."""
    out = []
    for key, limit, place, unit in ((RSS_KEY, max_rss_kib, "rss", "KiB"),
                                    (FDS_KEY, max_fds, "descriptors", "")):  # fmt: skip
        if limit is None or key not in before or key not in after:
            continue
        grown = after[key] - before[key]
        if grown > limit:
            out.append((place, f"the target's {place} grew from {before[key]} to {after[key]}"
                               f"{' ' + unit if unit else ''}, more than the {limit} allowed"))  # fmt: skip
    return out


def quiet_on_interrupt(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: a Ctrl-C cancels every task at once, and what they
    leave (cancelled tasks, futures nobody reads any more) is not worth a traceback."""
    exc = context.get("exception")
    if isinstance(exc, asyncio.CancelledError) or "never retrieved" in context.get("message", ""):
        return
    loop.default_exception_handler(context)


async def ddmin(
    items: list[bytes],
    test: Callable[[list[bytes]], Any],
    time_left: Callable[[], float],
    *,
    max_tests: int = 300,
) -> list[bytes]:
    """Delta debugging (Zeller's ddmin): the smallest sublist found that still fails."""
    n, tests = 2, 0
    while len(items) >= 2 and tests < max_tests and time_left() > 1.0:
        chunk = max(1, len(items) // n)
        reduced = False
        for start in range(0, len(items), chunk):
            if tests >= max_tests or time_left() <= 1.0:
                break
            rest = items[:start] + items[start + chunk :]
            tests += 1
            if rest and await test(rest):
                items, n, reduced = rest, max(n - 1, 2), True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(items), n * 2)
    if len(items) == 1 or tests >= max_tests:
        return items
    return items


async def replay_once(
    host: str,
    port: int,
    target: str,
    phase: str,
    login_keys: Sequence[tuple[str, str]],
    pdus: Sequence[bytes],
    *,
    initiator: str = "iqn.2024-01.org.iscsi-conformance:fuzzer",
    health: Health | None = None,
    mrdsl: int = 8192,
    timeout: float = 2.0,
    tape: Any = None,
) -> set[tuple[str, str]]:
    """Send ``pdus`` once (after a login in phase ffp) and return the identities of the
    failures seen: internal errors, invariant violations, a dead target. ``tape`` (a
    ``fuzz.capture.Tape``) records the connection's bytes both ways."""
    seen: set[tuple[str, str]] = set()
    if health is not None:
        health.poll()  # forget what came before
        if not health.alive():
            await asyncio.to_thread(health.restart)
    try:
        wire = await _connect(host, port, timeout)
    except (OSError, TimeoutError) as exc:
        seen.add(("liveness", _liveness_place(f"cannot connect: {exc}", health)))
        seen.add(("liveness", "dead"))
        return seen
    if tape is not None:
        tape.attach(wire)
    try:
        checker = AnswerChecker(0, 0, mrdsl)
        if phase == "ffp":
            keys = list(login_keys) or default_login_keys(initiator, target, mrdsl)
            rsp, answered = await login(wire, keys, isid=0x3E_0000_0001, timeout=timeout)
            wire.decoder.header_digest = answered.get("HeaderDigest") == "CRC32C"
            wire.decoder.data_digest = answered.get("DataDigest") == "CRC32C"
            wire.decoder.max_data_segment_length = None
            erl_text = answered.get("ErrorRecoveryLevel", "0")
            erl = int(erl_text) if erl_text.isdigit() else 0
            checker = AnswerChecker(rsp.statsn, rsp.expcmdsn, mrdsl, erl=erl)
            hd, dd = wire.decoder.header_digest, wire.decoder.data_digest
            s = Session(cmdsn=rsp.expcmdsn, expstatsn=(rsp.statsn + 1) & 0xFFFFFFFF)
        wire.writer.write(b"".join(pdus))
        # After a login, a ping marks where the target has caught up (as in a campaign);
        # during one, the answers end when the target falls quiet or closes.
        ping_itt = 0xF000_0000
        if phase == "ffp":
            nop = P.NopOut(immediate=True, itt=ping_itt, cmdsn=s.cmdsn, expstatsn=s.expstatsn,
                           data=PING)  # fmt: skip
            wire.writer.write(P.encode(nop, header_digest=hd, data_digest=dd))
        quiet = min(0.05 if phase == "login" else timeout, timeout)
        while True:
            try:
                pdu = await _next_pdu(wire, quiet)
            except (TimeoutError, ConnectionError, OSError):
                break
            except ProtocolError as exc:
                seen.add(("undecodable", type(exc).__name__))
                break
            for v in checker.check(pdu):
                if phase == "ffp" or v.kind == "mrdsl":
                    seen.add((v.kind, v.place))
            if isinstance(pdu, P.NopIn) and pdu.itt == ping_itt:
                break
    except (ConnectionError, TimeoutError, OSError, ProtocolError) as exc:
        seen.add(("replay", type(exc).__name__))
    finally:
        wire.close()
    if health is not None:
        await asyncio.sleep(0.02)  # the log record is written before the connection closes
        seen.update(("internal-error", ev.place) for ev in health.poll())
    camp = Campaign(host, port, target, initiator=initiator, seconds=timeout + 5)
    camp._deadline = time.monotonic() + timeout + 5
    why = await camp.alive(timeout=timeout)
    if why is not None:
        seen.add(("liveness", _liveness_place(why, health)))
        seen.add(("liveness", "dead" if "connect" in why else "unresponsive"))
        seen.add(("liveness", "end"))
    return seen


def _liveness_place(why: str, health: Health | None) -> str:
    """ "dead" or "unresponsive", with how the peer died when its health says so
    (``death()`` of a ``DriverSubject``: "tgtd exited with status -11 (SIGSEGV)"), so
    that each way of dying is a failure of its own, shrunk on its own."""
    place = "dead" if "connect" in why else "unresponsive"
    death = getattr(health, "death", None)
    how = death() if callable(death) else None
    return f"{place}: {how}" if how else place


def replay(
    host: str,
    port: int,
    target: str,
    phase: str,
    login_keys: Sequence[tuple[str, str]],
    pdus: Sequence[bytes],
    **kw: Any,
) -> set[tuple[str, str]]:
    """Synchronous ``replay_once``."""
    return asyncio.run(replay_once(host, port, target, phase, login_keys, pdus, **kw))
