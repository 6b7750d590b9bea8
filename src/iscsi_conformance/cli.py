"""The ``iscsi-conformance`` command.

Subcommands:

- ``run``: the main job: the whole conformance suite on the pairings asked for
  (default: the reference initiator against the reference target, no Docker), with
  progress, a summary and the report (JSON, HTML, JUnit) written.
- ``certify URL``: certify a third-party target: only target-role tests, reads only
  unless ``--allow-dataloss``; exit 0 only when every MUST it could test passed (and,
  with ``--strict``, every SHOULD). ``run --strict`` likewise makes a SHOULD broken a
  failure instead of a non-strict result (``grading.py``).
- ``target`` / ``initiator``: the reference peers as tools.
- ``report``: merge results files, render HTML / JUnit.
- ``peers``: list the peers this installation knows, with their capabilities; ``peers
  start|stop|status|url|exec``: a peer as a tool of its own (``peers/tool.py``).
- ``fuzz``: drive Hypothesis-generated PDUs at a target.
- ``bridge``: the conformance bridge between any initiator and any target
  (``iscsi_conformance.bridge``): every PDU judged both ways, faults on demand.
- ``mutate``: the suite's mutation score: named mutants of the reference target, one
  at a time, and the tests that kill each (``iscsi_conformance.mutation``).

Exit statuses: 0 success, 1 failures found (or the peer refused us), 2 bad usage or
configuration, 3 the harness or a peer could not start, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from iscsi_conformance.suite import pytest_args as _pytest_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HARNESS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _summary(results: object, report: Path) -> None:
    from iscsi_conformance.verdict import print_summary

    print_summary(results, report)


def _baseline(args: argparse.Namespace) -> object:
    """``--baseline``'s results, read before anything starts (ConfigError: one line)."""
    if not getattr(args, "baseline", None):
        return None
    from iscsi_conformance.report.baseline import load_baseline

    return load_baseline(args.baseline)


def _regressed(args: argparse.Namespace, baseline: object, report: Path) -> bool | None:
    """Compare the run's report folder with the baseline (rewriting it with the Changes
    section) and print the verdict; None when there is no baseline or no results."""
    if baseline is None or not (report / "results.json").exists():
        return None
    from iscsi_conformance.report.baseline import compare_report, summary_lines

    d = compare_report(report, baseline, label=str(args.baseline))  # type: ignore[arg-type]
    print("\n".join(summary_lines(d)), flush=True)
    return d.regressed


def cmd_run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import pytest

    from iscsi_conformance.plugin import RESULTS_KEY

    report = Path(args.report)
    baseline = _baseline(args)

    class _Grab:
        results: object = None

        @pytest.hookimpl(trylast=True)
        def pytest_sessionfinish(self, session: pytest.Session) -> None:
            _Grab.results = session.config.stash.get(RESULTS_KEY, None)

    argv = _pytest_args(args, report, extra)
    if getattr(args, "strict", False):
        argv.append("--iscsi-strict")
    from iscsi_conformance.plugin.progress import progress_plugins

    code = pytest.main(argv, plugins=[_Grab(), *progress_plugins(args, argv)])
    if _Grab.results is not None:
        _summary(_Grab.results, report)
    if code == pytest.ExitCode.INTERRUPTED:
        return EXIT_INTERRUPTED
    regressed = _regressed(args, baseline, report)
    if regressed is not None and code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return EXIT_FAILED if regressed else EXIT_OK  # a baseline: regressions only
    if code in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        return EXIT_OK
    if code == pytest.ExitCode.TESTS_FAILED:
        return EXIT_FAILED
    if code == pytest.ExitCode.USAGE_ERROR:
        return EXIT_USAGE
    return EXIT_HARNESS


def plan_shards(
    names: Sequence[str], shards: int, *, role: Literal["target", "initiator"] = "target"
) -> list[list[str]]:
    """Split ``names`` (peers of ``role``) into at most ``shards`` groups of about equal
    weight, heaviest first (greedy). Order within a group follows ``names``. A peer's
    weight is its manifest's ``peer.shard_weight``; a name without a peer folder (an
    ``iscsi://`` target) weighs 1."""
    from iscsi_conformance.peers.registry import shard_weight

    weight = {t: shard_weight(role, t) for t in dict.fromkeys(names)}
    groups: list[list[str]] = [[] for _ in range(max(1, min(shards, len(names))))]
    load = [0.0] * len(groups)
    for t in sorted(names, key=lambda t: -weight[t]):
        k = load.index(min(load))
        groups[k].append(t)
        load[k] += weight[t]
    order = {t: i for i, t in enumerate(names)}
    return [sorted(g, key=order.__getitem__) for g in groups if g]


@dataclasses.dataclass
class Shard:
    """One process of a sharded run: its peers, and which columns it owns."""

    targets: list[str]
    initiators: list[str]
    target_column: bool = True  # reference initiator x each target
    initiator_column: bool = True  # each initiator x the reference target

    def describe(self) -> str:
        text = f"initiators {', '.join(self.initiators) or 'reference'} x targets {', '.join(self.targets)}"
        if not self.target_column:
            text += " (no target column)"
        return text


def plan_run(targets: Sequence[str], initiators: Sequence[str], shards: int) -> list[Shard]:
    """How ``run --shards N`` splits a run. With several initiators, by initiator (each
    shard pairs its initiators with every target; the target column, the reference
    initiator against each target, goes to one shard); otherwise by target (the
    initiator column goes to the shard with the reference target).

    Shards left over once each initiator has one split the heaviest third-party
    initiator's shard in two: its cell with the reference target (where its Initiator
    area runs as well) and its cells with the other targets. A micro-VM initiator's
    shard is the run's longest, and its guest keeps one core at most: alone at the end
    of a run it would leave the other core idle."""
    targets = list(targets) or ["reference"]
    initiators = list(initiators) or ["reference"]
    if len(initiators) >= 2:
        groups = plan_shards(initiators, shards, role="initiator")
        owner = next((k for k, g in enumerate(groups) if "reference" in g), 0)
        plan = [Shard(targets, g, target_column=k == owner) for k, g in enumerate(groups)]
        if "reference" in targets and len(targets) >= 2:
            from iscsi_conformance.peers.registry import shard_weight

            alone = [s for s in plan if len(s.initiators) == 1 and s.initiators[0] != "reference"]
            alone.sort(key=lambda s: -shard_weight("initiator", s.initiators[0]))
            for shard in alone[: max(0, shards - len(plan))]:
                rest = [t for t in targets if t != "reference"]
                k = plan.index(shard)
                plan[k : k + 1] = [
                    Shard(["reference"], shard.initiators, target_column=False),
                    Shard(rest, shard.initiators, target_column=False, initiator_column=False),
                ]
        return plan
    groups = plan_shards(targets, shards)
    owner = next((k for k, g in enumerate(groups) if "reference" in g), 0)
    return [Shard(g, initiators, initiator_column=k == owner) for k, g in enumerate(groups)]


def _shard_argv(
    args: argparse.Namespace, shard: Shard, report: Path, extra: Sequence[str]
) -> list[str]:
    argv = [sys.executable, "-m", "iscsi_conformance.cli", "run", "--report", str(report)]
    for t in shard.targets:
        argv += ["--target", t]
    for i in shard.initiators:
        argv += ["--initiator", i]
    for s in args.suite or []:
        argv += ["--suite", s]
    if args.peer_mode:
        argv += ["--peer-mode", args.peer_mode]
    if args.allure:
        argv += ["--allure", str(args.allure)]
    if getattr(args, "strict", False):
        argv.append("--strict")
    argv += ["-v" if getattr(args, "verbose", False) else "-q", "--", *extra]
    if not shard.initiator_column:
        argv.append("--iscsi-no-initiator-column")
    if not shard.target_column:
        argv.append("--iscsi-no-target-column")
    return argv


def cmd_run_sharded(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``run --shards N``: the targets split over N independent runs side by side.

    Each shard is a whole ``run`` in its own process with its own peers (so a target
    that dies is restarted by the run that owns it); the initiator column (initiators
    against the reference target as instrument) goes to the shard holding the
    reference target, or the first. Their results are merged into one report in
    ``--report``; each shard's output is in ``<report>/shard-K.log``.
    """
    import signal
    import subprocess
    import time

    from iscsi_conformance.plugin.results import write_reports
    from iscsi_conformance.report.merge import merge_files

    report = Path(args.report)
    baseline = _baseline(args)
    report.mkdir(parents=True, exist_ok=True)
    plan = plan_run(args.target or [], args.initiator or [], args.shards)
    started = time.monotonic()
    procs: list[tuple[int, Shard, subprocess.Popen[bytes], Path]] = []
    try:
        for k, shard in enumerate(plan):
            log_path = report / f"shard-{k}.log"
            argv = _shard_argv(args, shard, report / f"shard-{k}", extra)
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            procs.append((k, shard, proc, log_path))
            print(f"shard {k}: {shard.describe()} (log: {log_path})", flush=True)
        codes: dict[int, int] = {}
        while len(codes) < len(procs):
            for k, _shard, proc, _log in procs:
                if k not in codes and proc.poll() is not None:
                    codes[k] = proc.returncode
                    print(
                        f"shard {k} finished: exit {proc.returncode} "
                        f"after {time.monotonic() - started:.0f} s",
                        flush=True,
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        # each shard cleans up its own containers, VMs and networks on SIGINT
        for _k, _g, proc, _log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for _k, _g, proc, _log in procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        print("iscsi-conformance: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    parts = [report / f"shard-{k}" / "results.json" for k, *_ in procs]
    present = [p for p in parts if p.exists()]
    for (k, _g, _p, log_path), part in zip(procs, parts, strict=True):
        if not part.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            print(f"shard {k} wrote no results; its last lines:", file=sys.stderr)
            print("\n".join("  " + line for line in tail), file=sys.stderr)
    if present:
        results = merge_files(present)
        write_reports(results, report)
        _summary(results, report)
    print(f"  wall time of the sharded run: {time.monotonic() - started:.1f} s")
    worst = max(codes.values(), key=_severity)
    regressed = _regressed(args, baseline, report) if present else None
    if regressed is not None and worst in (EXIT_OK, EXIT_FAILED):
        return EXIT_FAILED if regressed else EXIT_OK  # a baseline: regressions only
    return worst if present or worst != EXIT_OK else EXIT_HARNESS


def _severity(code: int) -> int:
    """Which shard's exit status speaks for the whole run."""
    return {EXIT_OK: 0, EXIT_FAILED: 1, EXIT_USAGE: 3, EXIT_HARNESS: 4, EXIT_INTERRUPTED: 5}.get(
        code, 2
    )


def cmd_certify(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from iscsi_conformance.certify import certify

    return certify(args, extra)


def _delegate(module: str, argv: Sequence[str]) -> int:
    import importlib

    mod = importlib.import_module(module)
    return int(mod.main(list(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iscsi-conformance",
        description="iSCSI conformance and interoperability suite (RFC 7143, SPC-4/SBC-3)",
    )
    from iscsi_conformance import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the conformance suite and write the report")
    run.add_argument(
        "--report", default="iscsi-report", help="report directory (default: %(default)s)"
    )
    run.add_argument(
        "--target",
        action="append",
        help="target: reference, tgt, lio, or iscsi://host/iqn/lun (repeatable)",
    )
    run.add_argument(
        "--initiator",
        action="append",
        help="initiator: reference, libiscsi, open-iscsi (repeatable)",
    )
    run.add_argument(
        "--suite", action="append", help="only tests whose ID starts with this prefix (repeatable)"
    )
    run.add_argument(
        "--peer-mode", choices=["auto", "native", "container", "microvm"], help="how real peers run"
    )
    run.add_argument("-n", "--workers", help="pytest-xdist workers (e.g. 2 or auto)")
    run.add_argument(
        "--shards",
        type=int,
        default=1,
        metavar="N",
        help="split the targets over N runs side by side, each with its own peers, "
        "and merge their reports (default: 1)",
    )
    run.add_argument("--allure", metavar="DIR", help="also write allure results to DIR")
    run.add_argument("-q", "--quiet", action="store_true", help="less output")
    verbose_help = "pytest's own view, a line per test (default: progress per pairing and area)"
    run.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    run.add_argument(
        "--strict",
        action="store_true",
        help="a SHOULD broken is a failure (default: a non-strict result, shown apart)",
    )
    run.add_argument(
        "--isns-server",
        choices=("auto", "isnsd", "reference"),
        help="the iSNS server of the iSNS area: open-isns isnsd in a container, or ours "
        "(default auto: isnsd where the run has a docker network, else ours)",
    )

    baseline_help = (
        "an earlier run's results.json (or its report folder): the report gets a Changes "
        "section and %s"
    )
    run.add_argument(
        "--baseline",
        metavar="OLD.json",
        help=baseline_help % "the exit status is 1 on a regression only",
    )

    cert = sub.add_parser("certify", help="certify a third-party target given by URL")
    cert.add_argument("url", help="iscsi://[user[%%secret]@]host[:port]/iqn/lun")
    cert.add_argument(
        "--allow-dataloss", action="store_true", help="allow writes, to the given LUN only"
    )
    cert.add_argument(
        "--chap", metavar="USER%%SECRET", help="CHAP credentials (or put them in the URL)"
    )
    cert.add_argument(
        "--mutual-chap", metavar="USER%%SECRET", help="the target's credentials for mutual CHAP"
    )
    cert.add_argument(
        "--report", default="iscsi-certify-report", help="report directory (default: %(default)s)"
    )
    cert.add_argument(
        "--suite", action="append", help="only tests whose ID starts with this prefix"
    )
    cert.add_argument("--allure", metavar="DIR", help="also write allure results to DIR")
    cert.add_argument("-q", "--quiet", action="store_true")
    cert.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    cert.add_argument(
        "--strict",
        action="store_true",
        help="a SHOULD broken fails certification too (default: only MUSTs do)",
    )
    cert.add_argument(
        "--baseline",
        metavar="OLD.json",
        help=baseline_help % "a regression fails certification too",
    )

    for name, helptext in (
        ("target", "run the reference target"),
        ("initiator", "use the reference initiator (discover, login, inquiry, read, write ...)"),
        ("report", "merge results and render HTML/JUnit"),
        ("peers", "list known peers; start, stop or exec in one as a tool (peers start tgt)"),
        ("fuzz", "fuzz a target with Hypothesis-generated PDUs"),
        ("mutate", "mutation score of the suite: break the reference target, see what is caught"),
        ("isns", "run the reference iSNS server (RFC 4171)"),
        ("bridge", "relay an initiator to a target, judging every PDU both ways"),
    ):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


_DELEGATES = {
    "target": "iscsi_conformance.target.cli",
    "initiator": "iscsi_conformance.initiator.cli",
    "report": "iscsi_conformance.report.cli",
    "peers": "iscsi_conformance.peers.cli",
    "fuzz": "iscsi_conformance.fuzz.cli",
    "mutate": "iscsi_conformance.mutation.cli",
    "isns": "iscsi_conformance.isns.cli",
    "bridge": "iscsi_conformance.bridge.cli",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    whole = list(argv)  # `peers exec NAME -- COMMAND` needs what follows "--"
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = build_parser()
    if argv and argv[0] in _DELEGATES:
        try:
            return _delegate(_DELEGATES[argv[0]], (whole if argv[0] == "peers" else argv)[1:])
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from iscsi_conformance.errors import ConfigError, HarnessError

    try:
        if args.command == "run":
            if args.isns_server:  # read by the iSNS area in every pytest process (shards too)
                os.environ["ISCSI_CONFORMANCE_ISNS_SERVER"] = args.isns_server
            if args.shards > 1 and max(len(args.target or []), len(args.initiator or [])) > 1:
                return cmd_run_sharded(args, extra)
            return cmd_run(args, extra)
        if args.command == "certify":
            return cmd_certify(args, extra)
    except KeyboardInterrupt:
        print("iscsi-conformance: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        print(f"iscsi-conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HarnessError as exc:
        print(f"iscsi-conformance: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    parser.print_help()
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
