"""``iscsi-conformance fuzz``: bounded fuzz campaigns against a target, and replay.

``fuzz URL`` runs a throughput campaign (``fuzz.campaign``) against the target at URL;
``fuzz reference`` starts a reference target of its own and also listens to its log
(an internal error is a failure) and reads its RSS and descriptors; ``fuzz engine``
feeds the reference target's engine in memory (``fuzz.memory``, no sockets).
``--engine hypothesis`` runs the Hypothesis state machine of ``fuzz.machine`` instead
(sessions, MC/S, reinstatement, CHAP variants, TMF, NOP, Text, logout, hostile PDUs;
slower, with Hypothesis's shrinking and example database; reproducers as the default
engine saves them).
``fuzz --initiator NAME`` runs an initiator (the reference one, libiscsi's tools or
``--tool iscsi-test-cu``, open-iscsi in its micro-VM) against a hostile reference
target (``fuzz.hostile``), saving a shrunk reproducer per failure with --save/--report.
``fuzz replay FILE`` sends a saved reproducer again and says whether the same
failure (kind and place) is seen; its status is 1 when it is, 0 when it is not.
``fuzz ci --report DIR`` runs the CI's campaigns side by side (``fuzz.ci``: every
target and every initiator) and fails on a failure of ours or a new one of a peer.
A progress line is printed every second, the summary at the end; ``--seconds`` bounds
the whole run, shrinking included. Exit status: 0 no failure, 1 failures, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ISCSIConformanceError, URLError

DEFAULT_IQN = "iqn.2024-01.org.iscsi-conformance:fuzz"


def _err(msg: str) -> int:
    print(f"iscsi-conformance fuzz: {msg}", file=sys.stderr)
    return 2


def _replay(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="iscsi-conformance fuzz replay")
    parser.add_argument("file", type=Path, help="a reproducer written by a campaign")
    parser.add_argument(
        "--url", help="the target (default: the one recorded, else a fresh reference)"
    )
    parser.add_argument("--pcap", type=Path, help="write this replay's exchange here (pcapng)")
    args = parser.parse_args(argv)
    from iscsi_conformance.fuzz.campaign import replay
    from iscsi_conformance.fuzz.repro import load

    try:
        finding = load(args.file)
    except (OSError, ValueError, SyntaxError) as exc:
        return _err(f"cannot read {args.file}: {exc}")
    identity = (finding["kind"], finding["place"])
    if finding.get("role") == "initiator":
        return _replay_initiator(args, finding)
    if finding.get("program"):
        return _replay_program(args, finding)
    url = args.url or finding.get("url") or ""
    with contextlib.ExitStack() as stack:
        health: Any = None
        if url:
            try:
                host, port, iqn = _endpoint(url)
            except URLError as exc:
                return _err(f"bad URL: {exc}")
        else:
            from iscsi_conformance.fuzz.reference import ReferenceSubject

            iqn = dict(finding["login_keys"]).get("TargetName", DEFAULT_IQN)
            health = stack.enter_context(ReferenceSubject(iqn))
            host, port = health.host, health.port
        from iscsi_conformance.fuzz.capture import Tape

        tape = Tape() if args.pcap is not None else None
        seen = replay(
            host, port, iqn, finding["phase"], finding["login_keys"], finding["pdus"],
            health=health, tape=tape,
        )  # fmt: skip
    return _replay_verdict(
        args, identity, seen, tape, nothing=f"nothing was exchanged with {host}:{port}",
        how=lambda _tape: f"tshark -r {args.pcap} -d tcp.port=={port},iscsi",
    )  # fmt: skip


def _replay_verdict(
    args: argparse.Namespace, identity: tuple[str, str], seen: Any, tape: Any, *,
    nothing: str, how: Callable[[Any], str],
) -> int:  # fmt: skip
    """The end of every ``fuzz replay``: the capture written to --pcap when ``tape`` is
    not None (``no capture: NOTHING`` when it holds none, else where it is and
    ``how(tape)``, how to read it), then whether ``identity`` (kind, place) is among
    the failures ``seen``: status 1 when it is, 0 when it is not."""
    if tape is not None:
        title = f"fuzz replay of {args.file.name}: {identity[0]} at {identity[1]}"
        if tape.write_pcapng(args.pcap, title=title) is None:
            print(f"no capture: {nothing}")
        else:
            print(f"capture: {args.pcap} ({how(tape)})")
    if identity in seen:
        print(f"reproduced: {identity[0]} at {identity[1]}")
        return 1
    others = ", ".join(f"{k} at {p}" for k, p in sorted(seen)) or "nothing"
    print(f"not reproduced: {identity[0]} at {identity[1]} (seen: {others})")
    return 0


def _replay_initiator(args: argparse.Namespace, finding: dict[str, Any]) -> int:
    """``fuzz replay`` of an initiator's reproducer (``fuzz.hostile.replay_finding``)."""
    from iscsi_conformance.fuzz.hostile import replay_finding

    if args.url:
        return _err("--url does not apply: an initiator's reproducer replays its own target")
    identity = (finding["kind"], finding["place"])
    try:
        seen, tape = replay_finding(finding)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ISCSIConformanceError, ValueError) as exc:
        return _err(f"cannot replay {args.file}: {exc}")
    return _replay_verdict(
        args, identity, seen, tape if args.pcap is not None else None,
        nothing="the initiator opened no connection",
        how=lambda t: f"tshark -r {args.pcap} -d tcp.port=={t.port},iscsi",
    )  # fmt: skip


def _replay_program(args: argparse.Namespace, finding: dict[str, Any]) -> int:
    """``fuzz replay`` of a state machine finding: its program runs again
    (``machine.replay_program``); without a URL against a fresh reference target with
    new CHAP accounts (the program's CHAP logins answer the new challenges)."""
    from iscsi_conformance.fuzz.capture import MultiTape
    from iscsi_conformance.fuzz.machine import replay_program

    identity = (finding["kind"], finding["place"])
    url = args.url or finding.get("url") or ""
    tape = MultiTape() if args.pcap is not None else None
    try:
        with contextlib.ExitStack() as stack:
            health: Any = None
            accounts: Any = None
            if url:
                host, port, iqn = _endpoint(url)
            else:
                from iscsi_conformance.fuzz.accounts import Accounts, chap_toml
                from iscsi_conformance.fuzz.reference import ReferenceSubject

                iqn = str(finding.get("iqn") or DEFAULT_IQN)
                accounts = Accounts.random()
                config = chap_toml(iqn, accounts)
                health = stack.enter_context(ReferenceSubject(iqn, config=config))
                host, port = health.host, health.port
            seen, _run = replay_program(
                host, port, iqn, finding["program"], health=health, accounts=accounts, tape=tape
            )
    except URLError as exc:
        return _err(f"bad URL: {exc}")
    except ValueError as exc:
        return _err(f"cannot replay {args.file}: {exc}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ISCSIConformanceError as exc:
        return _err(str(exc))
    return _replay_verdict(
        args, identity, seen, tape, nothing="the program opened no connection",
        how=lambda t: f"{len(t.conns)} connection(s); "
        f"tshark -r {args.pcap} -d tcp.port=={t.target_port},iscsi",
    )  # fmt: skip


def _endpoint(url: str) -> tuple[str, int, str]:
    from iscsi_conformance.initiator.url import parse_url

    parsed = parse_url(url, require_lun=False)
    if parsed.target is None:
        raise URLError("the URL must name a target (iscsi://host/iqn)")
    return parsed.host, parsed.port, parsed.target


def main(argv: list[str]) -> int:
    if argv[:1] == ["replay"]:
        return _replay(argv[1:])
    if argv[:1] == ["ci"]:
        from iscsi_conformance.fuzz.ci import main as ci_main

        return ci_main(argv[1:])
    parser = argparse.ArgumentParser(prog="iscsi-conformance fuzz", description=__doc__)
    parser.add_argument(
        "url",
        nargs="?",
        help="iscsi://host[:port]/iqn; 'reference' for a reference target of our own; "
        "a peer driver's name (tgt, lio) to start that peer and restart it after a crash; "
        "'engine' for the reference target's engine in memory (no sockets)",
    )
    parser.add_argument(
        "--engine", choices=["random", "hypothesis"], default="random", help="(default random)"
    )
    parser.add_argument(
        "--initiator",
        choices=["reference", "libiscsi", "open-iscsi"],
        help="fuzz this initiator against a hostile reference target instead of a target",
    )
    parser.add_argument(
        "--tool",
        choices=["tools", "iscsi-test-cu"],
        help="with --initiator libiscsi: iscsi-ls and iscsi-inq (tools, the default) or "
        "libiscsi's own iscsi-test-cu, one suite per case",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    parser.add_argument("--cases", type=int, help="stop after this many cases")
    parser.add_argument("--workers", type=int, default=4, help="connections at once (default 4)")
    parser.add_argument(
        "--rate", type=float, metavar="PDUS",
        help="write at most this many PDUs a second to the target (every PDU: cases, pings, "
        "logins); the progress line shows the rate achieved. Target campaigns only",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument(
        "--save",
        type=Path,
        help="write a reproducer (and the pcapng of one replay) per failure here",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="put the campaign in the report folder DIR: DIR/fuzz/PEER.json (the index's Fuzz "
        "section), reproducers in DIR/fuzz/PEER/ unless --save says where",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="only MUST failures count (the default for a URL; 'reference' fails on any)",
    )
    parser.add_argument("--examples", type=int, default=200,
                        help="(hypothesis engine) at most this many programs (default 200)")  # fmt: skip
    parser.add_argument(
        "--max-rss", type=float, metavar="MB",
        help="fail when the target's RSS grows by more than MB over its start (default 64 "
        "for 'reference'; read from /proc, so only for targets we run; 0: no limit)",
    )  # fmt: skip
    parser.add_argument(
        "--max-fds", type=int, metavar="N",
        help="fail when the target's open descriptors grow by more than N (default 32 for "
        "'reference'; 0: no limit)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=30,
                        help="(hypothesis engine) rules per program (default 30)")  # fmt: skip
    parser.add_argument(
        "--database", type=Path, help="Hypothesis example database kept between runs"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.seconds <= 0 or args.workers < 1:
        return _err("--seconds must be positive and --workers at least 1")
    if args.examples < 1 or args.steps < 1:
        return _err("--examples and --steps must be at least 1")
    if args.rate is not None and args.rate <= 0:
        return _err("--rate must be positive (PDUs per second)")
    if args.rate is not None and (args.initiator is not None or args.url == "engine"):
        return _err("--rate applies to a campaign against a target over the network")
    if args.initiator is not None:
        if args.url is not None:
            return _err("give a target URL or --initiator, not both")
        return _initiator(args)
    if args.url is None:
        return _err("give a target URL ('reference', 'engine', iscsi://...) or --initiator")
    if args.url == "engine":
        return _engine(args)
    try:
        with contextlib.ExitStack() as stack:
            health: Any = None
            accounts: Any = None
            if args.url == "reference":
                from iscsi_conformance.fuzz.accounts import Accounts, chap_toml
                from iscsi_conformance.fuzz.reference import ReferenceSubject

                accounts = Accounts.random()  # CHAP accounts (secrets never printed)
                config = chap_toml(DEFAULT_IQN, accounts)
                health = stack.enter_context(ReferenceSubject(DEFAULT_IQN, config=config))
                host, port, iqn, strict = health.host, health.port, DEFAULT_IQN, True
            elif "://" not in args.url:  # a peer driver's name: tgt, lio...
                from iscsi_conformance.fuzz.peer import DriverSubject

                health = stack.enter_context(DriverSubject(args.url, DEFAULT_IQN))
                host, port, iqn, strict = health.host, health.port, DEFAULT_IQN, False
            else:
                try:
                    host, port, iqn = _endpoint(args.url)
                except URLError as exc:
                    return _err(f"bad URL: {exc}")
                strict = False
            if args.lenient:
                strict = False
            if args.engine == "hypothesis":
                return _hypothesis(args, host, port, iqn, health, strict, accounts)
            return _campaign(args, host, port, iqn, health, strict, accounts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ISCSIConformanceError as exc:
        return _err(str(exc))


def _engine(args: argparse.Namespace) -> int:
    from iscsi_conformance.fuzz.memory import engine_campaign
    from iscsi_conformance.fuzz.repro import save

    report = engine_campaign(args.seed, cases=args.cases or 10**9, seconds=args.seconds)
    print(report.summary())
    saved: dict[tuple[str, str], Path] = {}
    save_dir = _save_dir(args, "engine")
    if save_dir is not None:
        from iscsi_conformance.fuzz.reference import InProcessSubject

        for f in report.failures.values():
            # the capture: the same PDUs once more, to a reference target on a socket
            iqn = dict(f.login_keys).get("TargetName", DEFAULT_IQN)
            with InProcessSubject(iqn) as subject:
                tape = _tape(f, subject.host, subject.port, iqn, subject)
            path = save(f, save_dir, target="reference", seed=args.seed, tape=tape)
            saved[f.identity] = path
            print(f"  reproducer: {path}  (iscsi-conformance fuzz replay {path})")
    _report(args, "engine", "target", report, saved)
    return 1 if report.failures else 0


def _save_dir(args: argparse.Namespace, peer: str) -> Path | None:
    """--save, else the campaign's folder in --report's DIR, else None."""
    if args.save is not None or args.report is None:
        return args.save  # type: ignore[no-any-return]
    from iscsi_conformance.report.fuzz import campaign_path

    return campaign_path(args.report, peer).with_suffix("")


def _program_tape(
    f: Any, host: str, port: int, iqn: str, health: Any, accounts: Any
) -> tuple[Any, dict[str, Any]]:
    """A state machine failure's program replayed once with every connection recorded:
    the tape (None if it failed) and what the reproducer adds (the program, each PDU's
    connection and digests). ``f.pdus`` become the PDUs that replay sent."""
    from iscsi_conformance.fuzz.capture import MultiTape
    from iscsi_conformance.fuzz.machine import replay_program

    extra: dict[str, Any] = {"engine": "hypothesis", "iqn": iqn, "program": f.program}
    tape = MultiTape()
    try:
        seen, run = replay_program(host, port, iqn, f.program, health=health,
                                   accounts=accounts, tape=tape)  # fmt: skip
    except (OSError, ISCSIConformanceError, ValueError) as exc:
        print(f"  no capture of {f.kind} at {f.place}: {exc}")
        return None, extra
    tape.seen = seen
    if run.sent:
        f.pdus, f.phase = [raw for _n, raw, _d in run.sent], "program"
        extra["pdu_connections"] = [n for n, _raw, _d in run.sent]
        extra["pdu_digests"] = [list(d) for _n, _raw, d in run.sent]
    return tape, extra


def _tape(f: Any, host: str, port: int, iqn: str, health: Any) -> Any:
    """The recorded exchange of one replay of ``f`` (``fuzz.capture``), or None."""
    from iscsi_conformance.fuzz.capture import record

    try:
        tape, _seen = record(host, port, iqn, f.phase, f.login_keys, f.pdus, health=health)
    except (OSError, ISCSIConformanceError) as exc:
        print(f"  no capture of {f.kind} at {f.place}: {exc}")
        return None
    return tape


def _report(
    args: argparse.Namespace, peer: str, role: str, report: Any, saved: dict[tuple[str, str], Path],
    version: str = "",
) -> None:  # fmt: skip
    """With --report DIR: write the campaign as DIR/fuzz/PEER.json (report/fuzz.py)."""
    if args.report is None:
        return
    import datetime as dt
    import json

    from iscsi_conformance.report.fuzz import FuzzCampaign, FuzzFailure, campaign_path

    def rel(path: Path | None) -> str:
        if path is None or not path.exists():
            return ""
        try:
            return path.resolve().relative_to(args.report.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    failures = []
    for f in report.failures.values():
        repro = saved.get(f.identity)
        failures.append(
            FuzzFailure(
                kind=f.kind,
                place=f.place,
                requirement=f.requirement,
                level=f.level,
                count=f.count,
                detail=f.detail.splitlines()[0][:300] if f.detail else "",
                reproducer=rel(repro),
                pcapng=rel(repro.with_suffix(".pcapng")) if repro is not None else "",
                replay=f"iscsi-conformance fuzz replay {rel(repro)}" if repro is not None else "",
            )
        )
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=report.seconds)
    campaign = FuzzCampaign(
        peer=peer, role=role, started=started.isoformat(timespec="seconds"),
        seconds=round(report.seconds, 3), cases=report.cases, pdus=report.pdus,
        seed=args.seed, command=["iscsi-conformance", "fuzz", *args.argv],
        notes=list(report.notes), failures=failures, peer_version=version,
    )  # fmt: skip
    path = campaign_path(args.report, peer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(campaign.to_json(), indent=1) + "\n", encoding="utf-8")
    print(f"campaign written to {path}: the Fuzz section of {args.report / 'index.html'} "
          "shows it when the folder is written (run --report / report html --out)")  # fmt: skip


def _initiator(args: argparse.Namespace) -> int:
    from iscsi_conformance.fuzz.hostile import initiator_campaign, save_reproducer, summary

    tool = None if args.tool in (None, "tools") else args.tool
    peer = f"{args.initiator}-initiator" + (f"-{tool}" if tool else "")
    if args.tool is not None and args.initiator != "libiscsi":
        return _err("--tool goes with --initiator libiscsi")
    save_dir = _save_dir(args, peer)
    saved: dict[tuple[str, str], Path] = {}

    def keep(f: Any, plan: Any, tape: Any) -> None:
        if save_dir is None:
            return
        from iscsi_conformance.fuzz.hostile_clients import make_client

        limit = make_client(args.initiator, tool).limit
        path = save_reproducer(f, plan, tape, save_dir, client=args.initiator, tool=tool,
                               seed=args.seed, limit=limit)  # fmt: skip
        saved[f.identity] = path
        print(f"  reproducer: {path}  (iscsi-conformance fuzz replay {path})", flush=True)

    try:
        report = initiator_campaign(
            args.initiator, seed=args.seed, seconds=args.seconds, max_cases=args.cases,
            tool=tool, saved=keep,
            progress=None if args.quiet else lambda line: print(line, flush=True),
        )  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ISCSIConformanceError as exc:
        return _err(str(exc))
    print(summary(report))
    _report(args, peer, "initiator", report, saved)
    strict = args.initiator == "reference" and not args.lenient
    return 1 if report.failing(strict=strict) else 0


def _limits(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """--max-rss (MB, as KiB) and --max-fds, with the reference target's defaults."""
    ours = args.url == "reference"
    rss = args.max_rss if args.max_rss is not None else (64.0 if ours else 0.0)
    fds = args.max_fds if args.max_fds is not None else (32 if ours else 0)
    return (int(rss * 1024) if rss > 0 else None), (fds if fds > 0 else None)


def _hypothesis(
    args: argparse.Namespace, host: str, port: int, iqn: str, health: Any, strict: bool,
    accounts: Any,
) -> int:  # fmt: skip
    from iscsi_conformance.fuzz.machine import run_machine

    max_rss_kib, max_fds = _limits(args)
    version = _version(health)
    report, run = run_machine(
        host, port, iqn, seconds=args.seconds, max_examples=args.examples, steps=args.steps,
        health=health, accounts=accounts, strict=strict, database=args.database,
        max_rss_kib=max_rss_kib, max_fds=max_fds, rate=args.rate,
        seed=args.seed if args.seed else None,
        progress=None if args.quiet else lambda line: print(line, flush=True),
    )  # fmt: skip
    print(report.summary())
    print(
        f"rate: {run.examples / max(report.seconds, 1e-9):.1f} programs/s, "
        f"{report.cases / max(report.seconds, 1e-9):.0f} rules/s "
        "(the seeded engine, the default, is the fast one: fuzz ... --engine random)"
    )
    return _target_end(
        args, report, host, port, iqn, health, strict, accounts, version, empty_tape=False
    )


def _version(health: Any) -> str:
    """The version of a peer run by its driver (``DriverSubject``), else ""."""
    version = getattr(health, "version", None)
    try:
        return str(version()) if callable(version) else ""
    except (OSError, ISCSIConformanceError):
        return ""


def _campaign(
    args: argparse.Namespace, host: str, port: int, iqn: str, health: Any, strict: bool,
    accounts: Any = None,
) -> int:  # fmt: skip
    from iscsi_conformance.fuzz.campaign import Campaign

    max_rss_kib, max_fds = _limits(args)
    version = _version(health)
    camp = Campaign(
        host, port, iqn, seconds=args.seconds, max_cases=args.cases, seed=args.seed,
        workers=args.workers, health=health, strict=strict, max_rss_kib=max_rss_kib,
        max_fds=max_fds, accounts=accounts, rate=args.rate,
        progress=None if args.quiet else lambda line: print(line, flush=True),
    )  # fmt: skip
    report = camp.run()
    print(report.summary())
    return _target_end(
        args, report, host, port, iqn, health, strict, accounts, version, empty_tape=True
    )


def _target_end(
    args: argparse.Namespace, report: Any, host: str, port: int, iqn: str, health: Any,
    strict: bool, accounts: Any, version: str, *, empty_tape: bool,
) -> int:  # fmt: skip
    """The end of a campaign against a target (either engine): the peer's deaths, a
    reproducer per failure with --save or --report (a session-level case or a state
    machine finding replayed as the machine's program; a failure without PDUs captured
    only when ``empty_tape``, as the seeded engine does), the report; the exit status."""
    from iscsi_conformance.fuzz.repro import save

    deaths = getattr(health, "deaths", None)
    if deaths:
        print(f"the peer died {len(deaths)} time(s): {'; '.join(sorted(set(deaths)))}")
    peer = args.url if "://" not in args.url else f"{host}:{port}"
    saved: dict[tuple[str, str], Path] = {}
    save_dir = _save_dir(args, peer)
    if save_dir is not None:
        for f in report.failures.values():
            extra: dict[str, Any] = {}
            if f.program:
                tape, extra = _program_tape(f, host, port, iqn, health, accounts)
            else:
                tape = _tape(f, host, port, iqn, health) if f.pdus or empty_tape else None
            url = "" if health is not None else args.url
            path = save(f, save_dir, target=report.target, url=url, seed=args.seed, tape=tape,
                        extra=extra)  # fmt: skip
            saved[f.identity] = path
            print(f"  reproducer: {path}  (iscsi-conformance fuzz replay {path})")
    _report(args, peer, "target", report, saved, version)
    return 1 if report.failing(strict=strict) else 0
