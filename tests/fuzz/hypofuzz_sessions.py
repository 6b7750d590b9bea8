"""The state machine of sessions (fuzz.machine) as a plain Hypothesis test, for hypofuzz.

Not collected by the unit tests (the name does not start with ``test_``): name it on
the command line. ``python tests/fuzz/hypofuzz_sessions.py --seconds N`` (what ``tox -e
hypofuzz`` runs) runs it under hypofuzz's coverage-guided engine for a bounded time and
says what it found (docs/fuzzing.md, "hypofuzz"); ``pytest
tests/fuzz/hypofuzz_sessions.py`` runs it once as an ordinary Hypothesis test.

The reference target (in the process, with the machine's CHAP accounts) starts at the
first example of each process, not at import: hypofuzz collects this module in its hub
process and runs it in forked workers, where a target started at import is a dead copy
whose port the hub still holds (a worker that restarted it could not bind, and that
error was the "failing input" of earlier tries). A failure is a ``FuzzFinding`` whose
class names its kind and place; each new one is saved at once as a program reproducer
under $ISCSI_CONFORMANCE_HYPOFUZZ_SAVE (``fuzz replay FILE`` runs it again).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from iscsi_conformance.fuzz.machine import (
    Accounts,
    FuzzFinding,
    MachineRun,
    SessionMachine,
    with_accounts,
)

IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"
_STATE: dict[str, Any] = {}


def _run() -> MachineRun:
    """This process's target and run (started at first use; module doc)."""
    if _STATE.get("pid") != os.getpid():
        from iscsi_conformance.fuzz.reference import InProcessSubject
        from iscsi_conformance.target.server import TargetServer

        mutant = os.environ.get("ISCSI_CONFORMANCE_MUTANT")
        if mutant:  # a reference target broken on purpose: the proof that it can fail
            from iscsi_conformance.mutation.activate import activate

            activate(mutant)
        accounts = Accounts.random()
        subject = InProcessSubject(
            IQN, server_factory=lambda c: TargetServer(with_accounts(c, accounts))
        ).__enter__()
        atexit.register(subject.__exit__, None, None, None)
        run = MachineRun(
            subject.host, subject.port, IQN, deadline=time.monotonic() + 10 * 86400,
            health=subject, accounts=accounts,
        )  # fmt: skip
        run.shrink_seconds = 60.0
        _STATE.update(pid=os.getpid(), run=run)
        HypofuzzSessions.run = run
    current: MachineRun = _STATE["run"]
    return current


class HypofuzzSessions(SessionMachine):
    def __init__(self) -> None:
        run = _run()
        super().__init__()
        _progress(run)

    def _fail(self, kind: str, place: str, detail: str, **kw: Any) -> None:
        """Each new failure is also saved at once as a program reproducer under
        $ISCSI_CONFORMANCE_HYPOFUZZ_SAVE (hypofuzz's workers may end without exiting
        cleanly, so nothing waits for the end)."""
        try:
            super()._fail(kind, place, detail, **kw)
        except FuzzFinding:
            _save((kind, place))
            raise
        _save((kind, place))


def _progress(run: MachineRun) -> None:
    """Every 2 s, this process's counts in $ISCSI_CONFORMANCE_HYPOFUZZ_SAVE/progress-PID
    (a worker ended at the time bound writes nothing at exit)."""
    directory = os.environ.get("ISCSI_CONFORMANCE_HYPOFUZZ_SAVE")
    now = time.monotonic()
    if not directory or now - _STATE.get("written", 0.0) < 2.0:
        return
    _STATE["written"] = now
    rep = run.report
    Path(directory, f"progress-{os.getpid()}").write_text(
        f"{run.examples} {rep.cases} {rep.pdus} {len(rep.coverage)} {now - run.started:.1f}\n",
        encoding="utf-8",
    )


def _save(identity: tuple[str, str]) -> None:
    directory = os.environ.get("ISCSI_CONFORMANCE_HYPOFUZZ_SAVE")
    f = _STATE["run"].failures.get(identity) if "run" in _STATE else None
    if not directory or f is None or not f.program:
        return
    from iscsi_conformance.fuzz.repro import save

    save(f, Path(directory), target="reference", extra={"program": f.program, "iqn": IQN})


def _write_findings() -> None:
    """$ISCSI_CONFORMANCE_HYPOFUZZ_FINDINGS: where each finding's detail goes at exit
    (hypofuzz itself prints only that it found one)."""
    path = os.environ.get("ISCSI_CONFORMANCE_HYPOFUZZ_FINDINGS")
    run = _STATE.get("run")
    if path and run is not None and run.failures:
        text = "\n\n".join(
            f"{f.kind} at {f.place} ({f.count} time(s)):\n{f.detail}" for f in run.failures.values()
        )
        Path(path).write_text(text + "\n", encoding="utf-8")


atexit.register(_write_findings)
TestSessions = HypofuzzSessions.TestCase
TestSessions.settings = settings(
    max_examples=50, stateful_step_count=20, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run hypofuzz on this module for ``--seconds`` (then its whole process group is
    ended: hypofuzz has no time bound of its own) and report: status 1 when a finding
    was saved or a hypofuzz worker died with a traceback without one, 0 otherwise."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--save", type=Path, default=Path("reports/out/hypofuzz"),
                        help="where reproducers of findings go")  # fmt: skip
    parser.add_argument("--mutant", help="run against the reference target with this mutant "
                        "(iscsi-conformance mutate --list): the proof that it can fail")  # fmt: skip
    args = parser.parse_args(argv)
    exe = shutil.which("hypothesis")
    if exe is None:
        print("hypofuzz is not installed (pip install hypofuzz; tox -e hypofuzz does it)")
        return 2
    args.save.mkdir(parents=True, exist_ok=True)
    before = set(args.save.glob("*.py"))
    for old in args.save.glob("progress-*"):
        old.unlink()
    env = dict(os.environ, ISCSI_CONFORMANCE_HYPOFUZZ_SAVE=str(args.save.resolve()))
    if args.mutant:
        env["ISCSI_CONFORMANCE_MUTANT"] = args.mutant
    log = args.save / "hypofuzz.log"
    cmd = [exe, "fuzz", "-n", "1", "--no-dashboard", "--", str(Path(__file__).resolve())]
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=args.seconds)
            ended = "by itself"
        except subprocess.TimeoutExpired:
            ended = "at the time bound"
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
    took = time.monotonic() - start
    text = log.read_text(encoding="utf-8", errors="replace")
    found = sorted(set(args.save.glob("*.py")) - before)
    errors = [line for line in text.splitlines() if line[:1].isalpha() and "Error" in line]
    # after a finding, hypofuzz's hub ends and its worker dies on the closed manager
    # (a traceback at exit); without one, a traceback is hypofuzz failing on its own
    crashed = "Traceback (most recent call last)" in text and not found
    print(f"hypofuzz ran {took:.1f} s and ended {ended}; its output: {log}")
    for prog in sorted(args.save.glob("progress-*")):
        examples, rules, pdus, cells, secs = prog.read_text(encoding="utf-8").split()
        print(f"  worker {prog.name[9:]}: {examples} programs, {rules} rules, {pdus} PDUs, "
              f"{cells} opcode x phase cells in its first {secs} s")  # fmt: skip
    for path in found:
        print(f"  finding: {path}  (iscsi-conformance fuzz replay {path})")
    if crashed or (found and errors):
        print(f"  a hypofuzz worker died with a traceback: {errors[-1] if errors else '?'}"
              + (" (after the finding)" if found else ""))  # fmt: skip
    if not found and not crashed:
        print("  no finding")
    return 1 if found or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
