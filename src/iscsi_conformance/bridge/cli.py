"""``iscsi-conformance bridge``: put the conformance bridge between your own initiator
and target, or judge a capture after the fact.

    iscsi-conformance bridge --listen 127.0.0.1:3261 --target 192.0.2.10:3260 \\
        [--fault drop:NopIn] [--pcap out.pcapng] [--advertise] [--duration SECONDS]
    iscsi-conformance bridge --replay capture.pcap [--port 3260]

Each breach is printed as it happens (the side that broke the rule, the catalog row,
the PDU); at the end, a count per side and rule. Exit status: 0 no MUST broken, 1 a
MUST broken by a peer (outside the effects of an injected fault), 2 bad usage, 3 the
bridge could not listen, 130 interrupted (the summary is printed first).
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .capture import conversations, replay
from .faults import FaultPlan
from .judge import Breach, SessionBook
from .pump import Bridge, BridgeBreach

__all__ = ["main"]

EXIT_OK, EXIT_BREACH, EXIT_USAGE, EXIT_HARNESS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_FAILING = ("MUST", "MUST NOT")


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: HOST:PORT expected")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iscsi-conformance bridge",
        description="Relay an initiator to a target, judging every PDU both ways against "
        "RFC 7143 (the suite's catalog rows), with faults on demand.",
    )
    p.add_argument("--listen", type=_address, help="HOST:PORT the initiator connects to")
    p.add_argument("--target", type=_address, help="HOST:PORT of the real target")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="ACTION:PDU[#N][=ARG], e.g. drop:ScsiResponse, delay:ScsiResponse=20, "
        "ddigest:ScsiDataOut, close:ScsiDataOut#3, split:ScsiCommand, withhold:NopIn=echo "
        "(the NOP-In answering the initiator's ping; =ping: the target's own) (repeatable)",
    )
    p.add_argument("--pcap", type=Path, help="write what passes to this pcapng file")
    p.add_argument(
        "--advertise",
        action="store_true",
        help="rewrite TargetAddress in SendTargets answers to the bridge's own portal",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--replay", type=Path, help="judge a pcap/pcapng capture instead")
    p.add_argument("--port", type=int, default=3260, help="the iSCSI port in --replay")
    p.add_argument("--quiet", action="store_true", help="print the summary only")
    return p


def _summary(breaches: Sequence[tuple[Breach, bool]]) -> tuple[list[str], bool]:
    counts: collections.Counter[tuple[str, str, str, str, bool]] = collections.Counter()
    failing = False
    for b, after_fault in breaches:
        r = b.rule
        counts[(r.sender, r.requirement, r.level, r.summary, after_fault)] += 1
        failing = failing or (r.level in _FAILING and not after_fault)
    lines = []
    for (side, req, level, text, after), n in sorted(counts.items()):
        tag = " (after an injected fault)" if after else ""
        lines.append(f"  {side:9} {req:18} {level:13} x{n}: {text}{tag}")
    return lines, failing


def _replay(args: argparse.Namespace) -> int:
    try:
        convs = conversations(args.replay, args.port)
    except (OSError, ValueError) as exc:
        print(f"iscsi-conformance bridge: cannot read {args.replay}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    book = SessionBook()
    found: list[tuple[Breach, bool]] = []
    for n, conv in enumerate(convs):
        judge = replay(conv, book)
        for b in judge.breaches:
            if not args.quiet:
                print(f"conn {n}: {b}")
            found.append((b, False))
    lines, failing = _summary(found)
    print(f"{len(convs)} connections to port {args.port}, {len(found)} breaches")
    print("\n".join(lines))
    return EXIT_BREACH if failing else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replay is not None:
        return _replay(args)
    if args.listen is None or args.target is None:
        parser.print_usage(sys.stderr)
        print("iscsi-conformance bridge: --listen and --target are required", file=sys.stderr)
        return EXIT_USAGE
    try:
        plan = FaultPlan(args.fault)
    except ValueError as exc:
        print(f"iscsi-conformance bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.duration is not None and args.duration <= 0:
        print("iscsi-conformance bridge: --duration must be positive", file=sys.stderr)
        return EXIT_USAGE

    def show(b: BridgeBreach) -> None:
        if not args.quiet:
            print(b, flush=True)

    try:
        bridge = Bridge(
            args.target, listen=args.listen, faults=plan, pcap=args.pcap,
            advertise=args.advertise, on_breach=show,
        )  # fmt: skip
    except OSError as exc:
        print(f"iscsi-conformance bridge: cannot write {args.pcap}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        host, port = bridge.start()
    except OSError as exc:
        bridge.stop()
        print(f"iscsi-conformance bridge: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    print(f"bridge {host}:{port} -> {args.target[0]}:{args.target[1]}", flush=True)
    done = threading.Event()
    interrupted = False
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        bridge.stop()
    lines, failing = _summary([(b.breach, b.after_fault) for b in bridge.breaches])
    print(f"{len(bridge.connections)} connections, {len(bridge.breaches)} breaches")
    print("\n".join(lines))
    for fault, conn, pdu in bridge.faults.fired:
        print(f"  injected {fault} on conn {conn}: {pdu}")
    for err in bridge.harness_errors:
        print(f"  bridge: {err}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_BREACH if failing else EXIT_OK
