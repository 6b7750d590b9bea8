"""Fuzz a target with Hypothesis-generated PDUs, and shrink what breaks it.

Theory of operation: each Hypothesis example is one *case*: a fresh TCP connection,
optionally a correct login to full feature phase, then one to three PDUs drawn from
``fuzz.strategies`` (every field over its whole range, unknown opcodes, raw AHS,
wrong digests and lengths through ``Tamper``) or a login whose text segment is drawn
from ``fuzz.keys``. What the target answers is not judged; whether it *survives* is:
after every case a new connection must log in and answer a NOP-Out ping within the
timeout. A case after which the target is dead, hangs, or answers the ping wrongly is
a failure: Hypothesis shrinks it to the smallest PDU that still kills the target, and
the report gives it as replayable Python (dataclass reprs) and hex.

Bounded by design (the machine's rules): ``max_examples`` and ``seconds`` cap the
campaign; connections go only to the host the user named (loopback by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, InMemoryExampleDatabase

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.text import format_pairs
from iscsi_conformance.errors import TransportError
from iscsi_conformance.fuzz import keys as key_strategies
from iscsi_conformance.fuzz import strategies as pdu_strategies

PING = b"iscsi-conformance liveness"


@dataclasses.dataclass
class FuzzCase:
    """What one example sends. ``phase`` is "login" or "ffp" (after a correct login)."""

    phase: str
    pdus: tuple[Any, ...]
    tampers: tuple[Any, ...]


@dataclasses.dataclass
class FuzzReport:
    target: str
    examples: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    answers: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items()))
        verdict = (
            "target survived every case" if self.ok else f"{len(self.failures)} failing case(s)"
        )
        return f"fuzzed {self.target}: {self.examples} cases in {self.seconds:.1f} s; {verdict}; answers: {answers}"


def tampers() -> st.SearchStrategy[Any]:
    """No tampering most of the time; otherwise one wrong length, padding or digest."""
    one = st.one_of(
        st.builds(P.Tamper, data_segment_length=st.integers(0, 0xFFFFFF)),
        st.builds(P.Tamper, total_ahs_length=st.integers(0, 0xFF)),
        st.builds(P.Tamper, padding=st.binary(min_size=1, max_size=3)),
        st.builds(P.Tamper, extra=st.binary(min_size=1, max_size=64)),
        st.builds(
            P.Tamper,
            bhs_patch=st.dictionaries(
                st.integers(0, 47), st.integers(0, 255), min_size=1, max_size=3
            ),
        ),
    )
    return st.none() | one


def initiator_pdus(max_data: int = 256) -> st.SearchStrategy[Any]:
    """PDUs an initiator could send (requests), plus unknown opcodes."""
    classes = [c for c in P.PDU_CLASSES.values() if c.is_request]
    return st.one_of(
        *[pdu_strategies.pdu_of(c, max_data=max_data) for c in classes],
        pdu_strategies.unknown_pdus(max_data),
    )


@st.composite
def login_cases(draw: st.DrawFn) -> FuzzCase:
    """A first Login Request whose stages, flags and text are drawn."""
    pairs = draw(key_strategies.pairs(max_pairs=8))
    req = P.LoginRequest(
        transit=draw(st.booleans()),
        cont=draw(st.booleans()),
        csg=draw(st.integers(0, 3)),
        nsg=draw(st.integers(0, 3)),
        version_max=draw(st.integers(0, 255)),
        version_min=draw(st.integers(0, 255)),
        isid=draw(st.integers(0, (1 << 48) - 1)),
        tsih=draw(st.sampled_from([0, 0, 1, 0xFFFF])),
        itt=draw(st.integers(0, 0xFFFFFFFF)),
        data=format_pairs(pairs, strict=False),
    )
    return FuzzCase("login", (req,), (draw(tampers()),))


@st.composite
def ffp_cases(draw: st.DrawFn) -> FuzzCase:
    n = draw(st.integers(1, 3))
    pdus = tuple(draw(initiator_pdus()) for _ in range(n))
    return FuzzCase("ffp", pdus, tuple(draw(tampers()) for _ in range(n)))


@contextlib.asynccontextmanager
async def _closing(conn: Any) -> AsyncIterator[Any]:
    try:
        yield conn
    finally:
        await conn.__aexit__(None, None, None)


class Liveness(AssertionError):
    """The target did not survive a case."""


async def _login(raw: Any, target_name: str, initiator_name: str, chap: Any) -> Any:
    from iscsi_conformance.harness.probe import LoginProbe

    probe = LoginProbe(raw, initiator_name=initiator_name, target_name=target_name, timeout=5)
    await probe.to_full_feature([], chap=chap)
    if not probe.in_full_feature:
        raise Liveness(
            f"login refused (status {probe.steps[-1].status if probe.steps else None!r})"
        )
    return probe


async def _run_case(
    host: str,
    port: int,
    target_name: str,
    initiator_name: str,
    chap: Any,
    case: FuzzCase,
    answers: dict[str, int],
) -> None:
    from iscsi_conformance.harness.probe import ProbeConnection
    from iscsi_conformance.initiator.raw import RawConnection

    conn = ProbeConnection(RawConnection(host, port, timeout=5))
    try:
        await conn.__aenter__()
    except (TransportError, OSError) as exc:
        raise Liveness(f"cannot reach the target before the case: {exc}") from exc
    async with _closing(conn) as raw:
        if case.phase == "ffp":
            probe = await _login(raw, target_name, initiator_name, chap)
            cmdsn, expstatsn = probe.cmdsn, probe.expstatsn
        for pdu, tamper in zip(case.pdus, case.tampers, strict=True):
            if case.phase == "ffp" and hasattr(pdu, "cmdsn") and tamper is None:
                pdu = dataclasses.replace(
                    pdu, cmdsn=cmdsn, expstatsn=expstatsn
                )  # keep it in the window
            try:
                await raw.send(P.encode(pdu, strict=False, tamper=tamper))
            except (ConnectionError, OSError):
                answers["closed"] = answers.get("closed", 0) + 1
                return
        answer = await raw.recv(timeout=0.5)
        key = (
            type(answer).__name__
            if answer is not None
            else type(raw.last_error).__name__
            if raw.last_error
            else "silence"
        )
        answers[key] = answers.get(key, 0) + 1


async def _alive(host: str, port: int, target_name: str, initiator_name: str, chap: Any) -> None:
    from iscsi_conformance.harness.probe import FullFeature, ProbeConnection
    from iscsi_conformance.initiator.raw import RawConnection

    try:
        async with ProbeConnection(RawConnection(host, port, timeout=5)) as raw:
            probe = await _login(raw, target_name, initiator_name, chap)
            ffp = FullFeature(raw, probe)
            _req, resp = await ffp.nop(PING)
            if not isinstance(resp, P.NopIn) or resp.data != PING:
                raise Liveness(f"NOP-Out ping answered with {resp!r}")
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise Liveness(f"cannot reach the target any more: {exc}") from exc


def fuzz(
    host: str,
    port: int,
    target_name: str,
    *,
    initiator_name: str = "iqn.2024-01.org.iscsi-conformance:fuzzer",
    chap: tuple[str, str] | None = None,
    phase: str = "both",
    max_examples: int = 200,
    seconds: float = 120.0,
    database: Path | None = None,
    seed: int | None = None,
) -> FuzzReport:
    """Run a bounded campaign; returns the report (failures are shrunk examples)."""
    report = FuzzReport(target=f"{host}:{port}/{target_name}")
    strategy = {"login": login_cases(), "ffp": ffp_cases()}.get(
        phase, st.one_of(login_cases(), ffp_cases())
    )
    started = time.monotonic()
    db: Any = (
        DirectoryBasedExampleDatabase(str(database)) if database else InMemoryExampleDatabase()
    )
    if seed is not None:
        db = None  # a derandomised campaign replays from the seed, not from a database

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=db,
        derandomize=seed is not None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        print_blob=True,
    )
    @given(case=strategy)
    def campaign(case: FuzzCase) -> None:
        if time.monotonic() - started > seconds:
            return  # time budget spent: the remaining examples pass trivially
        report.examples += 1

        async def one() -> None:
            await _run_case(host, port, target_name, initiator_name, chap, case, report.answers)
            await _alive(host, port, target_name, initiator_name, chap)

        try:
            asyncio.run(one())
        except Liveness:
            raise
        except Exception as exc:  # one failure type, raised at one place: shrinking stays stable
            raise Liveness(f"the case broke the exchange: {type(exc).__name__}: {exc}") from exc

    try:
        campaign()
    except Liveness as exc:
        report.failures.append(str(exc))
    except Exception as exc:  # a shrunk failure carries the example in its notes
        notes = "\n".join(getattr(exc, "__notes__", []))
        report.failures.append(f"{type(exc).__name__}: {exc}\n{notes}")
    report.seconds = time.monotonic() - started
    return report
