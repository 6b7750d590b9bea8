"""Building blocks of conformance tests: a login driven PDU by PDU, and a raw
full-feature connection.

Theory of operation: a conformance test must be able to do the wrong thing on
purpose (repeat a key, skip a stage, send T and C together) and see exactly what the
target answers. ``LoginProbe`` keeps every Login Request of one connection with the
answer it got, as a ``LoginStep`` (they become the failure message and the report's
evidence), and sends in two ways that share the connection's state (ISID, TSIH, CID,
CmdSN, ITT, ExpStatSN), so that a test can mix them:

- the raw path, ``build`` / ``send`` / ``step``: one Login Request exactly as the test
  spells it (a ``core.pdu.LoginRequest``, encoded non-strictly): any stage, flags,
  version or text, however illegal;
- the common paths, ``security_none``, ``chap``, ``operational`` and
  ``to_full_feature``: each runs a ``core.login.InitiatorLogin`` over the stage it
  covers, so the stages, T/C/NSG, CHAP (``core.chap.ChapClient``) and the answers to
  keys the target offers (``core.negotiation.Negotiator``) are those of the
  reference initiator. The probe changes what that machine sends only through its
  ``pairs_hook``: the names are declared once per connection, by the probe, in its
  first request whichever path sends it (``leading_keys``, the raw path's too), and a
  test's operational keys go out verbatim and in its order, also the ones the
  machine would not offer by itself (a leading-only key on an added connection, a
  value out of range).

Outcomes a test asserts on:

- ``LoginStep.outcome``: what happened to the request (``Outcome``): *answered*
  (``response`` holds the PDU), *closed* (the target closed the connection, and
  ``elapsed`` says how long after the request), *silent* (no answer within the time
  limit) or *undecodable*. Silence and a hang-up are not answers: ``refused`` is
  true only for a Login Response with a non-zero status, the form RFC 7143 11.13.5
  gives a failed login; ``received`` shows the missing answer as a ``NoAnswer`` so
  that a failure message says what happened;
- ``LoginStep.keys``: the keys the target answered, as a dict (last value wins, and
  ``repeated`` lists keys it sent twice);
- ``LoginStep.status``: class<<8|detail, ``None`` without a response;
- ``LoginProbe.negotiated``: every key the target sent in a successful response, and
  what the common paths settled for us (our answers to the target's offers, our
  offers whose answer is optional), which ``FullFeature`` runs with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.chap import ChapClient, ChapCredentials, ChapPolicy, ClientState
from iscsi_conformance.core.codes import LoginStage
from iscsi_conformance.core.keys import KEYS
from iscsi_conformance.core.login import (
    FULL_FEATURE,
    OPERATIONAL,
    SECURITY,
    VERSION,
    InitiatorLogin,
)
from iscsi_conformance.core.login import random_isid as core_random_isid
from iscsi_conformance.core.negotiation import check_value
from iscsi_conformance.core.serial import add_mod as sn_add
from iscsi_conformance.core.text import format_pairs, parse_pairs
from iscsi_conformance.errors import (
    AuthenticationError,
    HarnessError,
    ProtocolError,
    TransportError,
)

__all__ = [
    "FullFeature",
    "LoginProbe",
    "LoginStep",
    "NoAnswer",
    "Outcome",
    "ProbeConnection",
    "Reply",
    "TaskOutcome",
    "full_feature",
    "random_isid",
    "text_of",
]


def _answer_timeout() -> float:
    """How long a step waits for an answer before it counts as silence: 5 s, or
    ``ISCSI_CONFORMANCE_ANSWER_TIMEOUT`` seconds (a slow peer; our own scripted-peer
    tests use less)."""
    raw = os.environ.get("ISCSI_CONFORMANCE_ANSWER_TIMEOUT", "")
    try:
        value = float(raw) if raw else 5.0
    except ValueError:
        raise HarnessError(f"ISCSI_CONFORMANCE_ANSWER_TIMEOUT={raw!r} is not a number") from None
    if not 0 < value <= 600:
        raise HarnessError(f"ISCSI_CONFORMANCE_ANSWER_TIMEOUT={raw!r}: give 0 < seconds <= 600")
    return value


DEFAULT_TIMEOUT = _answer_timeout()
FLOOD_EMPTY_DATA_IN = 16  # consecutive empty Data-In PDUs that count as no progress
NONE_TAG = 0xFFFFFFFF

Pair = tuple[str, str]
Pairs = Sequence[Pair]

#: The keys that name the connection's ends; the probe declares them itself.
NAME_KEYS = frozenset({"InitiatorName", "TargetName", "SessionType", "InitiatorAlias"})
#: What the login machine is given for a name the test made malformed on purpose (its
#: negotiator refuses to hold one); it is never sent, the probe's own names are.
_STAND_IN_NAME = "iqn.2024-01.org.iscsi-conformance:probe"


def random_isid() -> int:
    """A random-type ISID (T=10b, RFC 7143 11.12.5): B, C and the qualifier D random."""
    return core_random_isid(os.urandom, qualifier=int.from_bytes(os.urandom(2), "big"))


class ProbeConnection:
    """A raw connection as conformance tests use it.

    Wraps ``initiator.raw.RawConnection`` with the forgiving semantics a probe needs:
    ``recv`` returns ``None`` (and keeps the reason in ``last_error``) when the target
    closed the connection, stayed silent, or sent something undecodable (all are
    evidence, not harness errors); PDUs are always encoded non-strictly, since a test
    may break rules on purpose; ``expect_closed`` answers a bool.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.last_error: BaseException | None = None

    async def __aenter__(self) -> ProbeConnection:
        await self._raw.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._raw.close()

    @property
    def trace(self) -> Any:
        return self._raw.trace

    def set_digests(self, *, header: bool, data: bool) -> None:
        """Turn digests on for what follows (after a login that agreed on them)."""
        self._raw.header_digest = header
        self._raw.data_digest = data

    async def send(self, pdu: Any) -> None:
        if isinstance(pdu, bytes | bytearray):
            await self._raw.send(bytes(pdu))
        else:
            await self._raw.send(pdu, strict=False)

    async def recv(self, timeout: float | None = DEFAULT_TIMEOUT) -> Any | None:
        try:
            pdu = await self._raw.recv(timeout)
        except (TransportError, ProtocolError, ConnectionError, TimeoutError) as exc:
            self.last_error = exc
            _LAST_READ[0] = self.last_outcome
            return None
        _LAST_READ[0] = Outcome.ANSWERED
        return pdu

    @property
    def last_outcome(self) -> Outcome:
        """What the last ``recv`` that returned None met."""
        exc = self.last_error
        if isinstance(exc, TimeoutError):  # ResponseTimeout is one too
            return Outcome.SILENT
        if isinstance(exc, ProtocolError):
            return Outcome.UNDECODABLE
        return Outcome.CLOSED

    async def expect_closed(self, timeout: float = 10.0) -> bool:
        return bool(await self._raw.closed_within(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class Outcome(enum.Enum):
    """What became of a request: the three answers a peer can give, and garbage."""

    ANSWERED = "answered"
    CLOSED = "closed"  # the peer closed the connection
    SILENT = "silent"  # nothing within the time limit
    UNDECODABLE = "undecodable"  # bytes that are no PDU


#: What the most recent read of any probe connection in this process met (None before
#: the first read since ``forget_reads``). Tests run one at a time per process.
_LAST_READ: list[Outcome | None] = [None]


def forget_reads() -> None:
    """Start a test: no read has been made yet."""
    _LAST_READ[0] = None


def last_read() -> Outcome | None:
    """What the test's most recent read met: the plugin asks it after a failed test,
    since a target whose last answer was a closed connection or silence may have died
    on what it was sent, while one that answered is alive whatever it answered."""
    return _LAST_READ[0]


@dataclasses.dataclass(frozen=True)
class NoAnswer:
    """Stands in a list of received PDUs where the answer is missing."""

    outcome: Outcome
    elapsed: float
    timeout: float
    no_answer = True  # how plugin.spec tells it from a PDU

    def describe(self, expected: str = "answer") -> str:
        """What happened instead of ``expected`` ("Login Response", "Text Response")."""
        if self.outcome is Outcome.CLOSED:
            return (
                f"no {expected}: the target closed the connection "
                f"{self.elapsed * 1000:.0f} ms after the request"
            )
        if self.outcome is Outcome.SILENT:
            return f"no {expected}: nothing within {self.timeout:g} s of the request"
        return f"no {expected}: what came back does not decode as a PDU"

    def __str__(self) -> str:
        return self.describe()


@dataclasses.dataclass
class LoginStep:
    request: Any
    response: Any | None
    closed: bool = False  # no response at all (closed, silent or undecodable)
    outcome: Outcome = Outcome.ANSWERED
    elapsed: float = 0.0  # seconds from the request to the answer, close or time-out
    timeout: float = 0.0

    @property
    def no_answer(self) -> NoAnswer | None:
        """The missing answer, for messages (None when the target answered)."""
        if self.outcome is Outcome.ANSWERED:
            return None
        return NoAnswer(self.outcome, self.elapsed, self.timeout)

    def missing(self, rule: str, expected: str = "Login Response") -> str:
        """The failure message for a step that needed an answer and got none: "no Login
        Response: the target closed the connection 3 ms after the request; <rule>", where
        ``rule`` cites the RFC text that requires the answer ("" when the target answered)."""
        gap = self.no_answer
        return f"{gap.describe(expected)}; {rule}" if gap is not None else ""

    @property
    def hung_up(self) -> bool:
        return self.outcome is Outcome.CLOSED

    @property
    def silent(self) -> bool:
        return self.outcome is Outcome.SILENT

    @property
    def status(self) -> int | None:
        """class<<8|detail of the Login Response (None without one: no answer, or
        another PDU such as a Reject)."""
        r = self.response
        return (r.status_class << 8) | r.status_detail if isinstance(r, P.LoginResponse) else None

    @property
    def succeeded(self) -> bool:
        r = self.response
        return isinstance(r, P.LoginResponse) and r.status_class == 0

    @property
    def keys(self) -> dict[str, str]:
        try:
            return dict(self.pairs)
        except Exception:
            return {}

    @property
    def pairs(self) -> list[Pair]:
        """The answer's text as the target wrote it: a key name over the 63-byte limit
        (RFC 7143 6.1) is read, not refused, so that a test sees the answer itself."""
        r = self.response
        if not isinstance(r, P.LoginResponse) or not r.data:
            return []
        return list(parse_pairs(r.data, max_key_length=len(r.data)))

    @property
    def repeated(self) -> list[str]:
        names = [k for k, _ in self.pairs]
        return sorted({k for k in names if names.count(k) > 1})

    @property
    def refused(self) -> bool:
        """The target refused the way RFC 7143 11.13.5 says a login fails: a Login
        Response with a non-zero status class. Closing the connection or saying
        nothing is not a refusal (see ``outcome``)."""
        r = self.response
        return isinstance(r, P.LoginResponse) and r.status_class != 0


def _holdable(key: str, value: str) -> bool:
    """Whether a negotiator may hold ``value`` as our own value of ``key`` (a test may
    send others on purpose; the negotiator refuses to be configured with them)."""
    spec = KEYS.get(key)
    if spec is None:
        return True
    try:
        check_value(spec, value)
    except (ProtocolError, ValueError):
        return False
    return True


def _transits(step: LoginStep) -> bool:
    return bool(step.response.transit)


class LoginProbe:
    """One connection's login, step by step (see module docstring)."""

    def __init__(
        self,
        raw: Any,
        *,
        initiator_name: str,
        target_name: str | None,
        session_type: str = "Normal",
        isid: int | None = None,
        tsih: int = 0,
        cid: int = 0,
        cmdsn: int = 1,
        itt: int = 0x1000,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.raw = raw
        self.initiator_name = initiator_name
        self.target_name = target_name
        self.session_type = session_type
        self.isid = random_isid() if isid is None else isid
        self.tsih = tsih
        self.cid = cid
        self.cmdsn = cmdsn
        self.itt = itt
        self.expstatsn = 0
        self.timeout = timeout
        self.steps: list[LoginStep] = []
        self.first = True
        self.negotiated: dict[str, str] = {}

    # ------------------------------------------------------------------ evidence

    @property
    def sent(self) -> list[Any]:
        return [s.request for s in self.steps]

    @property
    def received(self) -> list[Any]:
        """The answers, with a ``NoAnswer`` where a request got none."""
        return [s.response if s.response is not None else s.no_answer for s in self.steps]

    # ------------------------------------------------------------------ the raw path

    def leading_keys(self) -> list[Pair]:
        """The names the probe's first Login Request declares, whichever path sends it."""
        keys = [("InitiatorName", self.initiator_name), ("SessionType", self.session_type)]
        if self.target_name is not None and self.session_type == "Normal":
            keys.insert(1, ("TargetName", self.target_name))
        return keys

    def build(
        self,
        pairs: Pairs = (),
        *,
        csg: int,
        nsg: int,
        transit: bool,
        cont: bool = False,
        with_leading: bool | None = None,
        version_max: int = VERSION,
        version_min: int = VERSION,
        data: bytes | None = None,
        **fields: Any,
    ) -> Any:
        """The next Login Request (not sent). ``data`` overrides the text segment."""
        if with_leading is None:
            with_leading = self.first
        body = list(pairs)
        if with_leading:
            present = {k for k, _ in body}
            body = [kv for kv in self.leading_keys() if kv[0] not in present] + body
        segment = data if data is not None else format_pairs(body, strict=False) if body else b""
        kw: dict[str, Any] = dict(
            transit=transit,
            cont=cont,
            csg=csg,
            nsg=nsg if transit else 0,
            version_max=version_max,
            version_min=version_min,
            isid=self.isid,
            tsih=self.tsih,
            itt=self.itt,
            cid=self.cid,
            cmdsn=self.cmdsn,
            expstatsn=self.expstatsn,
            data=segment,
        )
        kw.update(fields)
        return P.LoginRequest(**kw)

    async def send(self, request: Any) -> LoginStep:
        """Send one Login Request (encoded non-strictly: it may be illegal on purpose)
        and wait for its answer; every path sends through here."""
        started = time.monotonic()
        try:
            await self.raw.send(request)
        except (TransportError, ConnectionError, OSError):
            pass  # the target closed the connection: evidence, which the recv below reports
        self.first = False
        response = await self.raw.recv(timeout=self.timeout)
        elapsed = time.monotonic() - started
        closed = response is None
        outcome = getattr(self.raw, "last_outcome", Outcome.CLOSED) if closed else Outcome.ANSWERED
        if response is not None and not isinstance(response, P.LoginResponse):
            # anything but a Login Response during login is itself evidence; keep it
            step = LoginStep(request, response, closed=False, elapsed=elapsed)
            self.steps.append(step)
            return step
        if response is not None:
            self.expstatsn = sn_add(response.statsn, 1)
            if response.tsih:
                self.tsih = response.tsih
            if response.status_class == 0 and response.data:
                # The target's text as it sent it: a malformed answer is evidence the
                # test judges (LoginStep.keys), not a harness error here.
                with contextlib.suppress(ProtocolError, ValueError):
                    self.negotiated.update(parse_pairs(response.data))
        step = LoginStep(
            request, response, closed=closed, outcome=outcome, elapsed=elapsed, timeout=self.timeout
        )
        self.steps.append(step)
        return step

    async def step(self, pairs: Pairs = (), **kw: Any) -> LoginStep:
        return await self.send(self.build(pairs, **kw))

    # ------------------------------------------------------------------ common paths

    def _machine(
        self,
        stage: LoginStage,
        keys: Pairs = (),
        *,
        chap: ChapClient | None = None,
        answering: LoginStep | None = None,
    ) -> tuple[InitiatorLogin, dict[str, str]]:
        """An ``InitiatorLogin`` for one stage of this connection, and the record of
        every pair it sends (filled as it sends).

        Its hook declares the probe's names in the probe's first request only, and puts
        ``keys`` (and the answers to the keys the target offered in ``answering``, a
        step of the raw path) into the first operational request, verbatim; the keys are
        offered to the machine's negotiator explicitly, so that it takes what the target
        says about them as answers.
        """

        def name(key: str, value: str | None) -> str | None:
            if value is None or _holdable(key, value):
                return value
            return _STAND_IN_NAME

        machine = InitiatorLogin(
            name("InitiatorName", self.initiator_name) or _STAND_IN_NAME,
            name("TargetName", self.target_name),
            self.session_type,
            isid=self.isid,
            tsih=self.tsih,
            cid=self.cid,
            keys={k: v for k, v in keys if k not in NAME_KEYS and _holdable(k, v)},
            chap=chap,
            rng=os.urandom,
            auth_methods=None if chap is not None else ["None"],
            itt=self.itt,
            cmdsn=self.cmdsn,
            expstatsn=self.expstatsn,
            start_stage=stage,
        )
        sent: dict[str, str] = {}
        negotiator = machine.negotiator
        # The probe speaks both digests: a target that offers CRC32C gets it, as a
        # real initiator that supports it answers (RFC 7143 13.1), not Reject.
        negotiator.accept.update({k: "CRC32C,None" for k in ("HeaderDigest", "DataDigest")})
        answers: list[Pair] = []
        if answering is not None:
            ours = {k for k, _ in parse_pairs(getattr(answering.request, "data", b""))}
            negotiator.stage = OPERATIONAL
            answers = negotiator.respond([kv for kv in answering.pairs if kv[0] not in ours])
        keys_pending = True  # the test's keys have not gone out yet

        def hook(stage: LoginStage, pairs: list[Pair]) -> list[Pair]:
            nonlocal keys_pending
            body = [kv for kv in pairs if kv[0] not in NAME_KEYS]
            if stage is OPERATIONAL and keys_pending:
                keys_pending = False
                offered = {k for k, _ in body}
                for key, _value in keys:
                    if key not in offered and key in negotiator.local:
                        negotiator.offer([key])  # named explicitly: offered in any case
                body = [*answers, *keys]
            out = [*(self.leading_keys() if self.first else []), *body]
            sent.update(out)
            return out

        machine.pairs_hook = hook
        return machine, sent

    async def _drive(
        self,
        machine: InitiatorLogin,
        sent: dict[str, str],
        *,
        rounds: int,
        done: Callable[[LoginStep], bool],
    ) -> LoginStep:
        """Send what ``machine`` asks for, one request per answer, until the login
        ends for the machine (success, refusal, a rule broken), ``done`` says the stage
        is over, or ``rounds`` requests went out; the last step is returned."""
        requests = machine.start()
        step: LoginStep | None = None
        while requests and rounds > 0:
            rounds -= 1
            step = await self.send(requests[0])
            if step.response is None:
                machine.connection_lost()
                break
            if machine.receive_pdu(step.response) or done(step):
                break
            requests = machine.data_to_send()
        if step is None:
            raise HarnessError(f"the login machine sent no request: {machine.error}")
        last = step.response
        if isinstance(last, P.LoginResponse) and last.status_class == 0:
            neg = machine.negotiator
            # RFC 7143 6.2.2: an offer that fixes the outcome (AND with No, OR with Yes)
            # need not be answered; the offered value is then in force.
            unanswered = set(neg.unanswered())
            self.negotiated.update((k, v) for k, v in neg.pending.items() if k not in unanswered)
            # our answers to the target's offers, as far as they went out
            self.negotiated.update((k, v) for k, v in neg.answered.items() if sent.get(k) == v)
        return step

    async def security_none(self) -> LoginStep:
        """Security stage with AuthMethod=None, transiting to the operational stage
        (one request)."""
        machine, sent = self._machine(SECURITY)
        return await self._drive(machine, sent, rounds=1, done=_transits)

    async def chap(
        self,
        user: str,
        secret: str,
        *,
        algorithms: Iterable[int] = (5,),
        mutual: tuple[str, str] | None = None,
        encoding: str = "hex",
    ) -> LoginStep:
        """A whole CHAP exchange (RFC 7143 12.1.3), AuthMethod=CHAP, CHAP_A, then
        CHAP_N/CHAP_R (``encoding`` hex or base64) asking to transit; returns the
        final step.

        ``mutual`` is (target user, target secret): the target must prove it too, and
        its CHAP_N/CHAP_R are verified by the ``ChapClient`` (a wrong one raises
        AssertionError naming the requirement).
        """
        client = ChapClient(
            ChapCredentials(user, secret.encode()),
            algorithms=algorithms,
            target=ChapCredentials(mutual[0], mutual[1].encode()) if mutual else None,
            rng=os.urandom,
            policy=ChapPolicy(encoding=encoding),
        )
        machine, sent = self._machine(SECURITY, chap=client)
        step = await self._drive(machine, sent, rounds=3, done=_transits)
        if (
            mutual is not None
            and step.succeeded
            and client.state is ClientState.WAIT_CONFIRM
            and isinstance(machine.error, AuthenticationError)
        ):
            raise AssertionError(
                "R7143-12.1.3-9: the target's mutual CHAP answer (CHAP_N/CHAP_R) does not prove "
                f"the configured target secret; CHAP_N={step.keys.get('CHAP_N')!r}: "
                f"{machine.error.message}"
            )
        return step

    async def operational(
        self, keys: Mapping[str, str] | Pairs = (), *, answering: LoginStep | None = None
    ) -> LoginStep:
        """Operational stage: offer ``keys``; keep answering until the target transits.

        A target may need more rounds: it offers keys of its own (LIO offers every
        operational key it has), which RFC 7143 6.2 says we must answer before it will
        transit, or it has not set T yet. ``answering`` is a step of the raw path whose
        offers are answered in the first request.
        """
        pairs = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        machine, sent = self._machine(OPERATIONAL, pairs, answering=answering)
        return await self._drive(machine, sent, rounds=5, done=_transits)

    async def to_full_feature(
        self,
        keys: Mapping[str, str] | Pairs = (),
        *,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        algorithms: Iterable[int] = (5, 6, 7, 8),
    ) -> LoginStep:
        """The whole login: security (None or CHAP), then operational with ``keys``.

        Digests are offered as None unless ``keys`` says otherwise, as initiators do, so
        that a target that would otherwise offer CRC32C itself does not turn them on;
        MaxRecvDataSegmentLength is declared (8192, the default value) as every
        initiator does. A key given with the value None is not sent at all."""
        keys = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        named = {k for k, _ in keys}
        keys += [(k, "None") for k in ("HeaderDigest", "DataDigest") if k not in named]
        if "MaxRecvDataSegmentLength" not in named:
            keys.append(("MaxRecvDataSegmentLength", "8192"))
        keys = [(k, v) for k, v in keys if v is not None]
        if chap is None:
            s = await self.security_none()
        else:
            s = await self.chap(chap[0], chap[1], algorithms=algorithms, mutual=mutual)
        if not s.succeeded:
            return s  # refused, or no answer: the caller judges which conforms
        if s.response.transit and s.response.nsg == FULL_FEATURE:
            return s
        return await self.operational(keys)

    @property
    def in_full_feature(self) -> bool:
        last = self.steps[-1].response if self.steps else None
        return bool(
            isinstance(last, P.LoginResponse)
            and last.status_class == 0
            and last.transit
            and last.nsg == FULL_FEATURE
        )


def text_of(pairs: Pairs) -> bytes:
    """Key=value text as a test spells it (encoded non-strictly)."""
    return format_pairs(list(pairs), strict=False)


# =========================================================================== full feature


@dataclasses.dataclass
class TaskOutcome:
    """Everything that came back for one command, and what ended the wait for it.

    ``outcome`` says what happened to the command the way ``LoginStep.outcome`` does for
    a Login Request: *answered* (a status came: ``response``, or a Reject of the
    command), *closed* (the target closed the connection ``elapsed`` seconds after the
    command), *silent* (nothing more within ``timeout`` seconds) or *undecodable*.
    ``missing()`` is the missing answer as a ``NoAnswer`` (None when answered) and
    ``shown()`` the received PDUs with it in place, for failure messages.
    """

    command: Any
    sent: list[Any]
    received: list[Any]
    data: bytes = b""
    status: int | None = None
    response: Any | None = None  # ScsiResponse, or the final Data-In with S=1
    flood: str = ""  # why ``command()`` stopped reading a target that would not stop
    outcome: Outcome = Outcome.ANSWERED
    elapsed: float = 0.0  # seconds from the command to its status, the close or the time-out
    timeout: float = 0.0

    def missing(self) -> NoAnswer | None:
        """The missing answer (None when a status or a Reject came)."""
        if self.outcome is Outcome.ANSWERED:
            return None
        return NoAnswer(self.outcome, self.elapsed, self.timeout)

    def shown(self) -> list[Any]:
        """What came back, with the missing answer at its end: a failure message's list."""
        gone = self.missing()
        return [*self.received, gone] if gone is not None else list(self.received)

    @property
    def rejects(self) -> list[Any]:
        return [p for p in self.received if isinstance(p, P.Reject)]

    @property
    def r2ts(self) -> list[Any]:
        return [p for p in self.received if isinstance(p, P.R2T)]

    @property
    def data_ins(self) -> list[Any]:
        return [p for p in self.received if isinstance(p, P.ScsiDataIn)]

    @property
    def sense(self) -> bytes:
        r = self.response
        if isinstance(r, P.ScsiResponse) and len(r.data) >= 2:
            n = int.from_bytes(r.data[:2], "big")
            return bytes(r.data[2 : 2 + n])
        return b""

    @property
    def sense_key(self) -> int | None:
        s = self.sense
        if len(s) < 3:
            return None
        return s[1] & 0x0F if (s[0] & 0x7F) in (0x72, 0x73) else s[2] & 0x0F

    @property
    def asc(self) -> tuple[int, int] | None:
        s = self.sense
        if (s[:1] and s[0] & 0x7F in (0x72, 0x73)) and len(s) >= 4:
            return s[2], s[3]
        if len(s) >= 14:
            return s[12], s[13]
        return None


@dataclasses.dataclass
class Reply:
    """One full-feature request and what became of it (``FullFeature.exchange``)."""

    request: Any
    pdu: Any | None  # the answer: same Initiator Task Tag, or a Reject of the request
    outcome: Outcome
    elapsed: float  # seconds from the request to the answer, the close or the time-out
    timeout: float
    others: list[Any] = dataclasses.field(default_factory=list)  # PDUs answering other things

    def missing(self) -> NoAnswer | None:
        """The missing answer (None when one came)."""
        if self.outcome is Outcome.ANSWERED:
            return None
        return NoAnswer(self.outcome, self.elapsed, self.timeout)

    def shown(self) -> list[Any]:
        """What came back, the missing answer in its place: a failure message's list."""
        last = self.pdu if self.pdu is not None else self.missing()
        return [*self.others, *([last] if last is not None else [])]

    @property
    def rejected(self) -> bool:
        return isinstance(self.pdu, P.Reject)

    @property
    def closed(self) -> bool:
        return self.outcome is Outcome.CLOSED

    @property
    def silent(self) -> bool:
        return self.outcome is Outcome.SILENT


class FullFeature:
    """A raw full-feature connection with sequence numbers tracked, for conformance tests.

    ``command()`` runs one SCSI command the way the negotiated keys say (immediate and
    unsolicited data, answering R2Ts with Data-Out within the target's
    MaxRecvDataSegmentLength) and returns every PDU that came back, so a test can check
    the target's side of the exchange.

    Every step has an outcome, as login steps do: ``recv`` returns None when nothing
    answered, and ``no_answer`` then says why (the target closed the connection N ms
    after our last PDU, stayed silent for the time limit, or sent bytes that are no
    PDU); ``shown(pdu, ...)`` puts it in place of the missing PDU for a failure
    message. ``exchange()`` sends one request and waits for the PDU that answers it
    (same Initiator Task Tag, or a Reject carrying its header) as a ``Reply``. ``send``
    never raises for a connection the target has closed: the close is evidence, and
    the next ``recv`` reports it.
    """

    def __init__(self, raw: Any, probe: LoginProbe, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.raw = raw
        self.probe = probe
        self.cmdsn = probe.cmdsn
        self.expstatsn = probe.expstatsn
        self.itt = 0x10
        self.timeout = timeout
        self.maxcmdsn = self.cmdsn
        self.last_statsn: int | None = None
        self.no_answer: NoAnswer | None = None  # why the last ``recv`` returned None
        self._sent_at = time.monotonic()
        n = probe.negotiated

        def num(key: str, default: int) -> int:
            try:
                return int(str(n.get(key, default)), 0)
            except ValueError:
                return default

        self.immediate_data = n.get("ImmediateData", "Yes") == "Yes"
        self.initial_r2t = n.get("InitialR2T", "Yes") == "Yes"
        self.first_burst = num("FirstBurstLength", 65536)
        self.max_burst = num("MaxBurstLength", 262144)
        self.target_mrdsl = num("MaxRecvDataSegmentLength", 8192)

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    async def clear_unit_attention(self, lun: int, tries: int = 4) -> None:
        """TEST UNIT READY until it stops reporting UNIT ATTENTION: a new I_T nexus
        first sees power-on/reset (SAM-5 5.14), which is not what tests look at."""
        for _ in range(tries):
            out = await self.command(bytes(6), lun=lun)
            if not (out.status == 0x02 and out.sense_key == 0x06):
                return

    def _note(self, pdu: Any) -> None:
        statsn = getattr(pdu, "statsn", None)
        if statsn is not None and not isinstance(pdu, P.ScsiDataIn | P.R2T):
            self.last_statsn = statsn
            self.expstatsn = sn_add(statsn, 1)
        elif isinstance(pdu, P.ScsiDataIn) and pdu.status_present:
            self.last_statsn = pdu.statsn
            self.expstatsn = sn_add(pdu.statsn, 1)
        exp = getattr(pdu, "expcmdsn", None)
        if exp is not None:
            self.maxcmdsn = getattr(pdu, "maxcmdsn", self.maxcmdsn)

    async def send(self, pdu: Any, *, encoded: bytes | None = None) -> None:
        """Send one PDU; a connection the target already closed is not an error here
        (the next ``recv`` says it was closed)."""
        self._sent_at = time.monotonic()
        try:
            await self.raw.send(encoded if encoded is not None else pdu)
        except (TransportError, ConnectionError, OSError):
            pass

    async def recv(self, timeout: float | None = None) -> Any:
        """The next PDU, or None (``no_answer`` says why: closed, silent, undecodable)."""
        limit = self.timeout if timeout is None else timeout
        pdu = await self.raw.recv(timeout=limit)
        if pdu is not None:
            self._note(pdu)
            self.no_answer = None
            return pdu
        outcome = getattr(self.raw, "last_outcome", Outcome.CLOSED)
        self.no_answer = NoAnswer(outcome, time.monotonic() - self._sent_at, limit)
        return None

    def shown(self, *pdus: Any) -> list[Any]:
        """``pdus`` for a failure message, a None in them replaced by ``no_answer``."""
        return [
            p if p is not None else self.no_answer
            for p in pdus
            if p is not None or self.no_answer is not None
        ]

    async def drain(self, seconds: float) -> list[Any]:
        """Everything that arrives until ``seconds`` pass without a PDU, or the
        connection closes (``no_answer`` then says which)."""
        got: list[Any] = []
        for _ in range(10000):
            p = await self.recv(timeout=seconds)
            if p is None:
                break
            got.append(p)
        return got

    async def exchange(
        self,
        request: Any,
        *,
        answers: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send ``request`` and wait for its answer: a PDU with its Initiator Task Tag
        (or one ``answers`` accepts), or a Reject carrying its header. PDUs that answer
        something else are kept in ``Reply.others``."""
        itt = getattr(request, "itt", None)

        def default(p: Any) -> bool:
            return getattr(p, "itt", None) == itt and not isinstance(p, P.ScsiDataIn | P.R2T)

        match = answers or default
        header = P.bhs_of(request) if not isinstance(request, bytes | bytearray) else b""
        await self.send(request)
        others: list[Any] = []
        for _ in range(64):
            pdu = await self.recv(timeout)
            if pdu is None:
                gone = self.no_answer
                assert gone is not None
                return Reply(request, None, gone.outcome, gone.elapsed, gone.timeout, others)
            if match(pdu) or (
                isinstance(pdu, P.Reject) and (not header or pdu.data[:48] == header[:48])
            ):
                elapsed = time.monotonic() - self._sent_at
                return Reply(request, pdu, Outcome.ANSWERED, elapsed, 0.0, others)
            others.append(pdu)
        return Reply(request, None, Outcome.SILENT, time.monotonic() - self._sent_at, 0.0, others)

    def take_cmdsn(self, immediate: bool = False) -> int:
        sn = self.cmdsn
        if not immediate:
            self.cmdsn = sn_add(self.cmdsn, 1)
        return sn

    async def hold_write(
        self, lun: int, cdb_bytes: bytes, length: int, *, wait_for: int = 16
    ) -> tuple[Any, Any | None, list[Any]]:
        """Send a WRITE without data and read until its first R2T: with ImmediateData=No
        and InitialR2T=Yes the target can only have the data by asking for it, so the task
        stays open until the Data-Out comes (a task held open for task management or
        PREEMPT AND ABORT). Returns the command, the R2T (None if a SCSI Response for the
        command, silence or a hang-up came first) and every PDU read meanwhile."""
        cmd = P.ScsiCommand(
            final=True,
            write=True,
            attr=1,
            lun=P.lun_to_field(lun),
            itt=self.next_itt(),
            expected_data_transfer_length=length,
            cmdsn=self.take_cmdsn(),
            expstatsn=self.expstatsn,
            cdb=cdb_bytes,
        )
        await self.send(cmd)
        got: list[Any] = []
        for _ in range(wait_for):
            p = await self.recv()
            if p is None:
                break
            got.append(p)
            if isinstance(p, P.R2T) and p.itt == cmd.itt:
                return cmd, p, got
            if isinstance(p, P.ScsiResponse) and p.itt == cmd.itt:
                break
        return cmd, None, got

    async def answer_r2t(self, cmd: Any, r2t: Any, data: bytes) -> list[Any]:
        """Send the Data-Out sequence ``r2t`` asks for: the part of ``data`` (the whole
        write's buffer) at its Buffer Offset and Desired Data Transfer Length, echoing its
        Target Transfer Tag, in PDUs within the target's MaxRecvDataSegmentLength (DataSN
        from 0, F on the last: ``core.pdu.data_out_pdus``). Returns the PDUs sent."""
        start = r2t.buffer_offset
        pdus = P.data_out_pdus(
            data[start : start + r2t.desired_data_transfer_length],
            start,
            self.target_mrdsl,
            itt=cmd.itt,
            ttt=r2t.ttt,
            lun=cmd.lun,
            expstatsn=self.expstatsn,
        )
        for pdu in pdus:
            await self.send(pdu)
        return pdus

    async def answer_r2ts(
        self,
        cmd: Any,
        data: bytes,
        *,
        sent: list[Any] | None = None,
        received: list[Any] | None = None,
        limit: int = 64,
    ) -> Any | None:
        """Read until the SCSI Response of ``cmd`` (a WRITE under way), answering each of
        its R2Ts with ``answer_r2t``. Returns that response, or None when silence, a
        hang-up (``no_answer`` says which) or ``limit`` PDUs came first. The Data-Out
        PDUs sent and every PDU read are appended to ``sent`` and ``received``."""
        for _ in range(limit):
            p = await self.recv()
            if p is None:
                return None
            if received is not None:
                received.append(p)
            if isinstance(p, P.R2T) and p.itt == cmd.itt:
                pdus = await self.answer_r2t(cmd, p, data)
                if sent is not None:
                    sent.extend(pdus)
            elif isinstance(p, P.ScsiResponse) and p.itt == cmd.itt:
                return p
        return None

    async def nop(
        self, data: bytes = b"", *, immediate: bool = True, itt: int | None = None
    ) -> tuple[Any, Any]:
        itt = self.next_itt() if itt is None else itt
        req = P.NopOut(
            immediate=immediate,
            itt=itt,
            ttt=0xFFFFFFFF,
            cmdsn=self.take_cmdsn(immediate),
            expstatsn=self.expstatsn,
            data=data,
        )
        await self.send(req)
        return req, await self.recv()

    async def command(
        self,
        cdb: bytes,
        *,
        lun: int = 0,
        read_length: int = 0,
        data_out: bytes = b"",
        expected_length: int | None = None,
        immediate: bool = False,
        answer_r2t: bool = True,
        bidi_read_length: int | None = None,
    ) -> TaskOutcome:
        """One SCSI command. ``bidi_read_length`` (with ``data_out``) makes it
        bidirectional: R and W set, EDTL the write length and the read length in a
        Bidirectional Read Expected Data Transfer Length AHS (RFC 7143 11.3.4)."""
        itt = self.next_itt()
        write = bool(data_out)
        edtl = (
            expected_length
            if expected_length is not None
            else (len(data_out) if write else read_length)
        )
        immediate_part = b""
        if write and self.immediate_data:
            immediate_part = data_out[: min(self.first_burst, self.target_mrdsl, len(data_out))]
        cmd = P.ScsiCommand(
            immediate=immediate,
            final=not (
                write
                and not self.initial_r2t
                and len(immediate_part) < min(self.first_burst, len(data_out))
            ),
            read=read_length > 0
            or (expected_length is not None and not write and expected_length > 0)
            or bidi_read_length is not None,
            write=write,
            attr=1,
            lun=P.lun_to_field(lun),
            itt=itt,
            expected_data_transfer_length=edtl,
            cmdsn=self.take_cmdsn(immediate),
            expstatsn=self.expstatsn,
            cdb=cdb,
            bidi_read_length=bidi_read_length,
            data=immediate_part,
        )
        out = TaskOutcome(cmd, [cmd], [], timeout=self.timeout)
        await self.send(cmd)
        started = self._sent_at
        offset = len(immediate_part)
        end = min(self.first_burst, len(data_out))
        if write and not self.initial_r2t and offset < end:
            # unsolicited Data-Out, up to FirstBurstLength with the immediate data
            await self._data_out(out, data_out[offset:end], offset, NONE_TAG)
        data = bytearray()
        # A target that makes no progress (empty Data-In after empty Data-In, or more
        # Data-In PDUs than the transfer has bytes) would keep this loop, and the
        # trace, growing until the test's timeout: stop and say so instead.
        empty_run, data_ins = 0, 0
        out.outcome = Outcome.SILENT  # until a status or a Reject comes
        for _ in range(100000):
            pdu = await self.recv()
            if pdu is None:
                gone = self.no_answer
                if gone is not None:
                    out.outcome = gone.outcome
                break
            out.received.append(pdu)
            if isinstance(pdu, P.ScsiDataIn):
                if pdu.itt == itt and not pdu.status_present:
                    data_ins += 1
                    empty_run = 0 if pdu.data else empty_run + 1
                    most = max(edtl, bidi_read_length or 0)
                    if empty_run > FLOOD_EMPTY_DATA_IN or data_ins > most + FLOOD_EMPTY_DATA_IN:
                        out.flood = (
                            f"the target sent {data_ins} Data-In PDUs without status for a "
                            f"{edtl}-byte transfer, the last {empty_run} with no data; "
                            "stopped reading"
                        )
                        out.outcome = Outcome.ANSWERED  # it kept talking: ``flood`` says how
                        break
                if pdu.itt == itt:
                    end = pdu.buffer_offset + len(pdu.data)
                    if len(data) < end:
                        data.extend(b"\0" * (end - len(data)))
                    data[pdu.buffer_offset : end] = pdu.data
                if pdu.status_present:
                    out.status = pdu.status
                    out.response = pdu
                    out.outcome = Outcome.ANSWERED
                    break
            elif isinstance(pdu, P.R2T) and pdu.itt == itt:
                if not answer_r2t:
                    continue
                # what the R2T asks for, as far as we have it: nothing if none of it
                pos = pdu.buffer_offset
                wanted = data_out[pos : pos + pdu.desired_data_transfer_length]
                if wanted:
                    await self._data_out(out, wanted, pos, pdu.ttt)
            elif isinstance(pdu, P.ScsiResponse) and pdu.itt == itt:
                out.status = pdu.status
                out.response = pdu
                out.outcome = Outcome.ANSWERED
                break
            elif isinstance(pdu, P.Reject):
                out.outcome = Outcome.ANSWERED  # a Reject is an answer (RFC 7143 11.17)
                break
            elif isinstance(pdu, P.NopIn) and pdu.ttt != 0xFFFFFFFF:
                ack = P.NopOut(
                    immediate=True,
                    itt=NONE_TAG,
                    ttt=pdu.ttt,
                    cmdsn=self.cmdsn,
                    expstatsn=self.expstatsn,
                )
                await self.send(ack)
        out.data = bytes(data)
        out.elapsed = time.monotonic() - started
        return out

    async def _data_out(self, out: TaskOutcome, data: bytes, offset: int, ttt: int) -> None:
        """Send one Data-Out sequence within the target's MaxRecvDataSegmentLength
        (``core.pdu.data_out_pdus`` sets DataSN and F); record it in ``out``."""
        cmd = out.command
        for pdu in P.data_out_pdus(
            data,
            offset,
            self.target_mrdsl,
            itt=cmd.itt,
            ttt=ttt,
            lun=cmd.lun,
            expstatsn=self.expstatsn,
        ):
            await self.send(pdu)
            out.sent.append(pdu)


@contextlib.asynccontextmanager
async def full_feature(
    target: Any, profile: str = "default", keys: Any = (), **kw: Any
) -> AsyncIterator[FullFeature]:
    """``async with full_feature(target, keys=...) as ffp``: a raw login to full feature
    phase; the connection is closed on exit."""
    async with target.raw(profile) as raw:
        probe = await target.login(raw, profile, keys, **kw)
        raw.set_digests(
            header=probe.negotiated.get("HeaderDigest") == "CRC32C",
            data=probe.negotiated.get("DataDigest") == "CRC32C",
        )
        ffp = FullFeature(raw, probe)
        await ffp.clear_unit_attention(target.lun)
        yield ffp


async def join_session(target: Any, raw: Any, lead: LoginProbe, cid: int) -> LoginProbe:
    """Log ``raw`` in as connection ``cid`` of ``lead``'s session (its ISID and TSIH,
    no leading-only keys, RFC 7143 6.3); returns the probe, in full feature phase or
    not (the caller decides: joining is seldom what a test is about)."""
    probe: LoginProbe = target.probe(raw, isid=lead.isid, tsih=lead.tsih, cid=cid, cmdsn=lead.cmdsn)
    first = [
        ("InitiatorName", target.initiator_name),
        ("TargetName", probe.target_name),
        ("AuthMethod", "None"),
    ]
    step = await probe.step(first, csg=SECURITY, nsg=OPERATIONAL, transit=True, with_leading=False)
    if step.succeeded and step.response.transit and step.response.nsg == OPERATIONAL:
        await probe.operational([("MaxRecvDataSegmentLength", "8192")])
    return probe
