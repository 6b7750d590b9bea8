"""``iscsi-conformance mutate``: the mutation score of the conformance suite.

Applies each behavioural mutant of the reference target, one at a time, runs the
suite area it belongs to (reference initiator against the mutated reference target)
and prints, for each mutant, killed or survived and by which tests, then the score.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from iscsi_conformance.mutation import AREAS, Mutant, all_mutants, get
from iscsi_conformance.mutation.runner import (
    SURVIVORS_FILE,
    Interrupted,
    MutantResult,
    Report,
    default_seed,
    load_survivors,
    recheck,
    run_mutants,
    sample,
    stop_all,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iscsi-conformance mutate",
        description="Mutation score of the suite: break the reference target on purpose, "
        "one named mutant at a time, and see which tests notice.",
    )
    p.add_argument(
        "--area", action="append", choices=sorted(AREAS), help="only this area (repeatable)"
    )
    p.add_argument(
        "--mutant", action="append", metavar="NAME", help="only this mutant (repeatable)"
    )
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument(
        "--sample-per-area",
        type=int,
        metavar="N",
        help="N mutants of every area, chosen by --seed (a stable rotating sample)",
    )
    p.add_argument("--seed", help="sample seed (default: today's date, UTC)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("-j", "--jobs", type=int, default=1, help="mutants run side by side (default 1)")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one mutant's run may take (default 300)",
    )
    p.add_argument(
        "--maxfail",
        type=int,
        default=5,
        help="stop a mutant's run after N failing tests (0: run them all; default 5)",
    )
    p.add_argument(
        "--survivors",
        type=Path,
        default=SURVIVORS_FILE,
        help="known survivors with their reasons (default: the package's survivors.toml)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a mutant not listed as a known survivor survives (CI)",
    )
    p.add_argument(
        "--initiator",
        action="append",
        metavar="NAME",
        help="run the cells of this third-party initiator (libiscsi, open-iscsi) against "
        "the mutated reference target instead of reference x reference (repeatable; "
        "its peer must be provisioned)",
    )
    p.add_argument(
        "--suite",
        action="append",
        metavar="PREFIX",
        help="only tests whose ID starts with PREFIX, for every mutant, instead of its "
        "area's suites (repeatable; e.g. Cluster.Mixed)",
    )
    return p


def select(args: argparse.Namespace) -> list[Mutant]:
    mutants = list(all_mutants().values())
    if args.mutant:
        mutants = [get(n) for n in args.mutant]
    if args.area:
        mutants = [m for m in mutants if m.area in args.area]
    if args.sample_per_area:
        mutants = sample(mutants, args.sample_per_area, args.seed or default_seed())
    return mutants


def _line(r: MutantResult) -> str:
    if r.killed:
        tests = ", ".join(r.killed_by[:4]) + (" ..." if len(r.killed_by) > 4 else "")
        how = f"KILLED    by {tests}" if r.killed_by else "KILLED    (time limit)"
        if r.status == "timeout" and r.killed_by:
            how += " (then the time limit)"
        if r.equivalent:
            how += "  [marked equivalent: a test fails what no rule forbids]"
    elif r.status == "survived" and r.equivalent:
        how = "EQUIVALENT (no rule forbids it; survives by right)"
    elif r.status == "survived":
        flag = "SURVIVED  (known)" if r.expected_survivor else "SURVIVED  NEW"
        how = f"{flag}; should be caught by {', '.join(r.catches) or '-'}"
        if r.observed_by:
            how += f"; observed (informational) by {', '.join(r.observed_by[:3])}"
    else:
        how = f"ERROR     {r.note}"
    return f"{r.name:58} {r.seconds:6.1f}s  {how}"


def print_report(report: Report, out: object = sys.stdout) -> None:
    def w(text: str = "") -> None:
        print(text, file=out)  # type: ignore[arg-type]

    c = report.counts()
    w()
    w("by area:")
    for area in AREAS:
        rs = [r for r in report.results if r.area == area]
        if rs:
            a = report.counts(rs)
            w(
                f"  {area:14} {a['killed']:3}/{a['killed'] + a['survived']:<3} killed  ({a['score']}%)"
                + (f"  +{a['equivalent']} equivalent" if a["equivalent"] else "")
            )
    survivors = [r for r in report.results if r.status == "survived" and not r.equivalent]
    equivalents = [r for r in report.results if r.status == "survived" and r.equivalent]
    if equivalents:
        w()
        w("equivalent mutants (no specification text forbids the change; not scored):")
        for r in equivalents:
            w(f"  {r.name}")
            if r.reason:
                w(f"      {r.reason}")
    overreaching = report.overreaching()
    if overreaching:
        w()
        w("equivalent mutants killed (the killing test fails behaviour no rule forbids):")
        for r in overreaching:
            w(f"  {r.name}: {', '.join(r.killed_by[:4])}")
    if survivors:
        w()
        w("survivors (mutant: the test that should have caught it; why it did not):")
        for r in survivors:
            mark = "" if r.expected_survivor else "  [NEW: not in the survivors file]"
            seen = (
                f" (observed, informational: {', '.join(r.observed_by[:2])})"
                if r.observed_by
                else ""
            )
            w(f"  {r.name}: {', '.join(r.catches) or '-'}{mark}{seen}")
            if r.reason:
                w(f"      {r.reason}")
    errors = [r for r in report.results if r.status == "error"]
    if errors:
        w()
        w("errors (not scored):")
        for r in errors:
            w(f"  {r.name}: {r.note}")
    if report.baseline.outcomes and any(
        o not in ("passed", "skipped") for o in report.baseline.outcomes.values()
    ):
        bad = [t for t, o in report.baseline.outcomes.items() if o not in ("passed", "skipped")]
        w()
        w(f"baseline: {len(bad)} test(s) do not pass without a mutant (not counted as kills)")
    w()
    if c["observed_informational"]:
        w(
            f"{c['observed_informational']} survivors were observed by informational tests "
            f"(behaviour the RFC leaves open): {c['score_with_informational']}% counting those"
        )
    w(
        f"mutation score: {c['killed']}/{c['killed'] + c['survived']} killed = {c['score']}% "
        f"({c['equivalent']} equivalent not scored; {c['errors']} errors; {report.seconds:.0f} s"
        + (f"; sample seed {report.seed}" if report.seed else "")
        + ")"
    )


@contextlib.contextmanager
def _stopped_on_signal() -> Iterator[None]:
    """SIGINT and SIGTERM stop every suite run under way (``runner.stop_all``: the
    pytest processes run in sessions of their own, which a terminal's Ctrl-C does not
    reach) before the interruption goes on as a KeyboardInterrupt."""

    def handler(signum: int, frame: object) -> None:
        stop_all()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        mutants = select(args)
    except KeyError as exc:
        print(f"iscsi-conformance mutate: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.name:58} {m.area:12} {m.description}")
        print(f"{len(mutants)} mutants in {len({m.area for m in mutants})} areas")
        return 0
    if not mutants:
        print("iscsi-conformance mutate: no mutant selected", file=sys.stderr)
        return 2
    seed = (args.seed or default_seed()) if args.sample_per_area else None
    initiators = [i for i in args.initiator or [] if i != "reference"]
    print(
        f"{len(mutants)} mutants, {args.jobs} at a time"
        + (f", sample seed {seed}" if seed else "")
        + (f", cells {', '.join(f'{i} x reference' for i in initiators)}" if initiators else "")
        + (f", suites {', '.join(args.suite)}" if args.suite else "")
    )
    try:
        with _stopped_on_signal():
            report = run_mutants(
                mutants,
                jobs=args.jobs,
                timeout=args.timeout,
                maxfail=args.maxfail,
                survivors=load_survivors(args.survivors),
                seed=seed,
                progress=lambda r: print(_line(r), flush=True),
                initiators=initiators,
                suites=args.suite or (),
            )
    except (KeyboardInterrupt, Interrupted):
        print("iscsi-conformance mutate: interrupted; every suite run stopped", file=sys.stderr)
        return 130
    print_report(report)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
        print(f"JSON: {path}")
    if args.check and report.overreaching():
        names = ", ".join(f"{r.name} ({', '.join(r.killed_by[:2])})" for r in report.overreaching())
        print(
            "iscsi-conformance mutate: equivalent mutants were killed, so a test fails "
            f"behaviour no rule forbids: {names}",
            file=sys.stderr,
        )
        return 1
    if args.check and report.unexpected():
        print("unexpected survivors: running each once more (a flaky kill is not a regression)")
        try:
            with _stopped_on_signal():
                confirmed = recheck(
                    report,
                    {m.name: m for m in mutants},
                    timeout=args.timeout,
                    maxfail=args.maxfail,
                    suites=args.suite or (),
                )
        except (KeyboardInterrupt, Interrupted):
            print("iscsi-conformance mutate: interrupted; every suite run stopped", file=sys.stderr)
            return 130
        for r in report.results:
            if r.note.endswith(": flaky"):
                print(f"  {r.name}: {r.note}")
        if not confirmed:
            return 0
        names = ", ".join(r.name for r in confirmed)
        print(
            f"iscsi-conformance mutate: mutants expected to be killed survived: {names}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
