"""Running mutants: one pytest process per mutant, its area's tests, compared with a baseline.

Theory of operation: the baseline is one run, without a mutant, of every suite prefix
the chosen mutants need. Each mutant then runs in its own process (a fresh reference
target, nothing left over from another mutant) with ``activate`` loaded and the
mutant named in the environment. A mutant is *killed* when a test of its area that
passed in the baseline does not pass with it (failed, error, or non-strict: a SHOULD
broken; an informational result does not kill, but is recorded as the mutant being
*observed*: the RFC leaves that behaviour open); it *survived* when every such test
still passes. A run that exceeds its time limit counts as killed (the suite did not finish: someone notices)
and says so. A mutant that could not be applied is an *error*, outside the score.

A mutant is *equivalent* when no text of the specifications forbids what it changes (the
survivors file marks it ``equivalent = true`` and cites what was read). No conforming test
can kill it, so it is left out of the score's denominator and listed apart; if a test does
kill it, that test fails behaviour the RFC allows, and ``--check`` says so.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from iscsi_conformance.mutation.activate import ENV_MUTANT, ENV_OUT
from iscsi_conformance.mutation.registry import AREAS, Mutant

FORMAT = "iscsi-conformance/mutation/1"
SURVIVORS_FILE = Path(__file__).with_name("survivors.toml")
#: Outcomes that do not kill: a pass, a skip, and what the RFC leaves open (informational).
_PASSING = frozenset({"passed", "skipped", "xfailed", "deselected", "informational"})
_WORST = {"error": 5, "failed": 4, "non-strict": 3, "xpassed": 2, "informational": 1, "passed": 1}

#: Process groups of the suite runs under way, and whether ``stop_all`` was called.
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


class Interrupted(Exception):
    """The mutation run was stopped (``stop_all``): no further suite run starts."""


def stop_all() -> None:
    """End every suite run under way, its whole process group (each pytest runs in a
    session of its own, out of reach of the terminal's Ctrl-C), and start no other:
    what an interrupted ``mutate`` calls so that nothing is left running."""
    with _LIVE_LOCK:
        _STOPPING.set()
        groups = list(_LIVE)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


@dataclass
class SuiteRun:
    """What one pytest process saw: outcome per test ID, exit code, time."""

    outcomes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    stderr_tail: str = ""


@dataclass
class MutantResult:
    name: str
    area: str
    description: str
    catches: list[str]
    status: str  # killed | survived | timeout | error
    killed_by: list[str] = field(default_factory=list)
    observed_by: list[str] = field(default_factory=list)  # informational tests that saw it
    seconds: float = 0.0
    tests_run: int = 0
    expected_survivor: bool = False
    equivalent: bool = False  # no spec text forbids the mutant's behaviour
    reason: str = ""
    note: str = ""

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "timeout")


def pytest_argv(
    prefixes: Iterable[str], *, maxfail: int = 0, initiators: Sequence[str] = ()
) -> list[str]:
    """The pytest arguments of one run of the suite on these test-ID prefixes.
    ``initiators``: third-party initiators whose cells (each against the reference
    target, the one the mutant breaks) run instead of reference x reference."""
    from iscsi_conformance.suite import suite_dir

    root = str(suite_dir())
    argv = [sys.executable, "-m", "pytest", root, "--import-mode=importlib",
            "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", root, "-c", os.devnull,
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
            "-p", "iscsi_conformance.mutation.activate", "-q", "--no-header", "-rN"]  # fmt: skip
    for prefix in prefixes:
        argv += ["--iscsi-suite", prefix]
    if initiators:
        argv += ["--iscsi-target", "reference", "--iscsi-no-target-column"]
        for name in initiators:
            argv += ["--iscsi-initiator", name]
    if maxfail:
        argv.append(f"--maxfail={maxfail}")
    return argv


def run_suite(
    prefixes: Sequence[str],
    *,
    mutant: str | None = None,
    timeout: float = 300.0,
    maxfail: int = 0,
    initiators: Sequence[str] = (),
) -> SuiteRun:
    """One pytest process over ``prefixes`` (with ``mutant`` applied, if named; with
    ``initiators``, their cells against the reference target)."""
    run = SuiteRun()
    with tempfile.TemporaryDirectory(prefix="iscsi-mutant-") as tmp:
        out = Path(tmp) / "outcomes.jsonl"
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env[ENV_OUT] = str(out)
        env.pop(ENV_MUTANT, None)
        if mutant:
            env[ENV_MUTANT] = mutant
        if _STOPPING.is_set():
            raise Interrupted("mutation run stopped")
        started = time.monotonic()
        proc = subprocess.Popen(
            pytest_argv(prefixes, maxfail=maxfail, initiators=initiators),
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(proc.pid)
            stopping = _STOPPING.is_set()
        try:
            if stopping:  # stop_all ran between the check above and Popen
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                run.timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _, err = proc.communicate()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc.pid)
            if proc.poll() is None:  # an exception left it running
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if _STOPPING.is_set():
            raise Interrupted("mutation run stopped")
        run.seconds = time.monotonic() - started
        run.returncode = proc.returncode
        run.stderr_tail = (err or "")[-2000:]
        if out.exists():
            for line in out.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                tid, outcome = rec["id"], rec["outcome"]
                if _WORST.get(outcome, 4) >= _WORST.get(run.outcomes.get(tid, "skipped"), 0):
                    run.outcomes[tid] = outcome
                    if rec.get("message"):
                        run.messages[tid] = rec["message"]
    return run


def judge(m: Mutant, run: SuiteRun, baseline: SuiteRun) -> MutantResult:
    """Killed, survived, timeout or error, and by which tests."""
    result = MutantResult(
        m.name, m.area, m.description, list(m.catches), "survived",
        seconds=round(run.seconds, 1), tests_run=len(run.outcomes),
    )  # fmt: skip
    killers = [
        tid
        for tid, outcome in run.outcomes.items()
        if outcome not in _PASSING and baseline.outcomes.get(tid, "passed") == "passed"
    ]
    # The tests the mutant names first: they show whether the expected test caught it.
    result.killed_by = sorted(killers, key=lambda t: not any(t.startswith(c) for c in m.catches))
    result.observed_by = [
        tid
        for tid, outcome in run.outcomes.items()
        if outcome == "informational" and baseline.outcomes.get(tid, "passed") == "passed"
    ]
    if run.timed_out:
        result.status = "timeout"
        result.note = f"no end within the time limit ({run.seconds:.0f} s)"
    elif result.killed_by:
        result.status = "killed"
    elif run.returncode not in (0, 1, 5) or not run.outcomes:
        result.status = "error"
        result.note = (
            run.stderr_tail.strip().splitlines()[-1:][0]
            if run.stderr_tail.strip()
            else (f"pytest exit status {run.returncode}")
        )
    return result


def sample(mutants: Sequence[Mutant], per_area: int, seed: str) -> list[Mutant]:
    """``per_area`` mutants of every area, chosen by ``seed``: the same seed gives the
    same sample, and successive seeds (dates) rotate through each area's mutants."""
    chosen: list[Mutant] = []
    for area in AREAS:
        mine = sorted((m for m in mutants if m.area == area), key=lambda m: m.name)
        if not mine:
            continue
        digest = hashlib.sha256(f"{seed}/{area}".encode()).digest()
        start = int.from_bytes(digest[:4], "big") % len(mine)
        chosen += [mine[(start + i) % len(mine)] for i in range(min(per_area, len(mine)))]
    return chosen


def default_seed() -> str:
    """Today's date (UTC): a CI run each day covers another slice of every area."""
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def load_survivors(path: Path = SURVIVORS_FILE) -> dict[str, dict[str, object]]:
    """The survivors file: mutants known to survive, each with its reason."""
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {s["mutant"]: s for s in data.get("survivor", [])}


@dataclass
class Report:
    results: list[MutantResult]
    baseline: SuiteRun
    seed: str | None
    seconds: float
    initiators: list[str] = field(default_factory=list)  # third-party cells run, if any

    def counts(self, results: Sequence[MutantResult] | None = None) -> dict[str, int | float]:
        rs = self.results if results is None else results
        killed = sum(r.killed for r in rs)
        equivalent = sum(r.equivalent and r.status == "survived" for r in rs)
        survived = sum(r.status == "survived" for r in rs) - equivalent
        errors = sum(r.status == "error" for r in rs)
        observed = sum(
            r.status == "survived" and not r.equivalent and bool(r.observed_by) for r in rs
        )
        scored = killed + survived
        return {
            "mutants": len(rs),
            "killed": killed,
            "survived": survived,
            "equivalent": equivalent,
            "observed_informational": observed,
            "errors": errors,
            "score": round(100.0 * killed / scored, 1) if scored else 0.0,
            "score_with_informational": round(100.0 * (killed + observed) / scored, 1)
            if scored
            else 0.0,
        }

    def unexpected(self) -> list[MutantResult]:
        """Survivors not in the survivors file: a test that used to kill them is gone."""
        return [r for r in self.results if r.status == "survived" and not r.expected_survivor]

    def overreaching(self) -> list[MutantResult]:
        """Equivalent mutants that a test killed: that test fails what no rule forbids."""
        return [r for r in self.results if r.equivalent and r.killed]

    def to_json(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "seed": self.seed,
            "initiators": self.initiators or ["reference"],
            "seconds": round(self.seconds, 1),
            "score": self.counts(),
            "areas": {
                a: self.counts([r for r in self.results if r.area == a])
                for a in AREAS
                if any(r.area == a for r in self.results)
            },
            "baseline": {
                "tests": len(self.baseline.outcomes),
                "not_passing": sorted(
                    t for t, o in self.baseline.outcomes.items() if o not in _PASSING
                ),
                "seconds": round(self.baseline.seconds, 1),
            },
            "mutants": [asdict(r) for r in self.results],
        }


def run_mutants(
    mutants: Sequence[Mutant],
    *,
    jobs: int = 1,
    timeout: float = 300.0,
    maxfail: int = 0,
    survivors: dict[str, dict[str, object]] | None = None,
    seed: str | None = None,
    progress: Callable[[MutantResult], None] | None = None,
    initiators: Sequence[str] = (),
    suites: Sequence[str] = (),
) -> Report:
    """Run the baseline and every mutant (``jobs`` processes side by side).
    ``initiators``: run the cells of these third-party initiators against the mutated
    reference target instead of reference x reference (peers provisioned);
    ``suites``: only these test-ID prefixes, for every mutant, instead of its area's."""
    started = time.monotonic()
    survivors = load_survivors() if survivors is None else survivors
    prefixes = list(suites) or list(dict.fromkeys(p for m in mutants for p in m.suite_prefixes()))
    runs: dict[str, SuiteRun] = {}

    def one(m: Mutant) -> None:
        runs[m.name] = run_suite(
            list(suites) or m.suite_prefixes(),
            mutant=m.name,
            timeout=timeout,
            maxfail=maxfail,
            initiators=initiators,
        )

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        base = pool.submit(run_suite, prefixes, timeout=max(timeout, 600.0), initiators=initiators)
        pending = [pool.submit(one, m) for m in mutants]
        baseline = base.result()
        results: list[MutantResult] = []
        for m, fut in zip(mutants, pending, strict=True):
            fut.result()
            r = judge(m, runs[m.name], baseline)
            known = survivors.get(m.name)
            if known is not None:
                r.expected_survivor = True
                r.equivalent = bool(known.get("equivalent", False))
                r.reason = str(known.get("reason", ""))
            results.append(r)
            if progress is not None:
                progress(r)
    return Report(results, baseline, seed, time.monotonic() - started, list(initiators))


def recheck(
    report: Report,
    mutants: dict[str, Mutant],
    *,
    timeout: float = 300.0,
    maxfail: int = 0,
    suites: Sequence[str] = (),
) -> list[MutantResult]:
    """Run each unexpected survivor once more; a mutant killed this time is marked
    flaky (a timing-dependent kill) rather than counted as a regression. Returns the
    mutants that survived twice."""
    confirmed = []
    for r in report.unexpected():
        m = mutants[r.name]
        again = judge(
            m,
            run_suite(
                list(suites) or m.suite_prefixes(),
                mutant=m.name,
                timeout=timeout,
                maxfail=maxfail,
                initiators=report.initiators,
            ),
            report.baseline,
        )
        if again.killed:
            r.note = f"survived once, then killed by {', '.join(again.killed_by[:3]) or 'the time limit'}: flaky"
            r.expected_survivor = True
        else:
            confirmed.append(r)
    return confirmed
