"""``iscsi-conformance isns``: run the reference iSNS server (RFC 4171) until signalled."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .engine import ServerConfig
from .server import ISNSServer


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: HOST:PORT expected")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iscsi-conformance isns", description="the reference iSNS server (RFC 4171)"
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 3205),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:3205; port 0: any free port)",
    )
    p.add_argument(
        "--db",
        type=Path,
        metavar="FILE",
        help="JSON database that survives a restart (written atomically)",
    )
    p.add_argument(
        "--registration-period",
        type=int,
        default=900,
        metavar="S",
        help="Registration Period given to entities that ask for none (6.2.6)",
    )
    p.add_argument(
        "--esi-threshold",
        type=int,
        default=3,
        metavar="N",
        help="unanswered ESIs before a portal is deregistered (2.4)",
    )
    p.add_argument(
        "--control-node",
        action="append",
        default=[],
        metavar="NAME",
        help="an iSCSI Name that is a Control Node (repeatable; 2.4)",
    )
    p.add_argument(
        "--no-default-dd",
        action="store_true",
        help="nodes in no Discovery Domain see nobody (2.2.2)",
    )
    p.add_argument(
        "--strict-dds",
        action="store_true",
        help="a DD is active only inside an enabled DD Set (3.6)",
    )
    p.add_argument(
        "--no-dd-modification",
        action="store_true",
        help="only Control Nodes may register DDs and DD Sets (2.4)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="close a client connection silent this long",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = ServerConfig(
        registration_period=args.registration_period,
        esi_threshold=args.esi_threshold,
        control_nodes=frozenset(args.control_node),
        default_dd=not args.no_default_dd,
        standalone_dds_active=not args.strict_dds,
        dd_modification=not args.no_dd_modification,
    )
    host, port = args.listen
    try:
        server = ISNSServer(host, port, config=config, db_path=args.db,
                            idle_timeout=args.idle_timeout)  # fmt: skip
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        print(f"iscsi-conformance isns: {args.db}: not an iSNS database ({exc})", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(f"iSNS server listening on {server.host}:{server.port}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"iscsi-conformance isns: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
