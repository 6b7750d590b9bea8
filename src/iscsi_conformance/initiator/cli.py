"""``iscsi-conformance initiator ...``: the reference initiator as a command-line tool.

In the manner of libiscsi's tools (iscsi-ls, iscsi-inq, iscsi-readcapacity16):
every command takes an ``iscsi://[user[%secret]@]host[:port]/target/lun`` URL
(``discover`` only needs ``iscsi://host[:port]``), logs in, does one thing, logs
out. ``discover isns://host[:port]`` asks an iSNS server instead (RFC 4171: the
initiator registers its node, lists the targets it may see, deregisters) and, with
``--login``, logs in to one of them; with ``--watch SECONDS`` it also registers a portal
with an SCN port and, on each SCN, prints it and lists the targets again. Mutual CHAP and digests come from the URL query (``?target_user=..&
target_password=..&header_digest=crc32c``) or from options.

Exit status: 0 done, 1 the target refused or could not be reached (one line on
stderr), 2 bad usage (malformed URL, bad option).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from iscsi_conformance.errors import ConfigError, ISCSIConformanceError, URLError

from .url import ISCSIURL, parse_url

__all__ = ["main"]

PROG = "iscsi-conformance initiator"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (not argparse's SystemExit)
        raise _UsageError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--initiator-name", "-i", default=None, help="our iSCSI name")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per step (default 10)")
    p.add_argument("--header-digest", choices=["none", "crc32c", "crc32c,none", "none,crc32c"])
    p.add_argument("--data-digest", choices=["none", "crc32c", "crc32c,none", "none,crc32c"])
    p.add_argument("--key", "-k", action="append", default=[], metavar="KEY=VALUE",
                   help="offer this login key (repeatable), e.g. MaxRecvDataSegmentLength=4096")  # fmt: skip
    p.add_argument("--chap-algorithm", action="append", type=int, metavar="N",
                   help="CHAP_A value to offer (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256)")  # fmt: skip
    p.add_argument("--trace", action="store_true", help="print the PDU trace to stderr")
    p.add_argument("--trace-json", metavar="FILE", help="write the PDU trace as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The reference iSCSI initiator (RFC 7143).")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("discover", help="SendTargets discovery (like iscsi-ls), or iSNS")
    p.add_argument("url", help="iscsi://[user[%%secret]@]host[:port] or isns://host[:port]")
    p.add_argument("--send-targets", default="All", help="SendTargets value (default All)")
    p.add_argument("--login", nargs="?", const="", metavar="IQN",
                   help="isns:// only: then log in to IQN (default: the first target found)")  # fmt: skip
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="isns:// only: take SCNs for SECONDS, listing the targets again after each")  # fmt: skip
    _common(p)

    p = sub.add_parser("login", help="log in, print the negotiated parameters, log out")
    p.add_argument("url")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    _common(p)

    p = sub.add_parser("inquiry", help="INQUIRY (like iscsi-inq)")
    p.add_argument("url")
    p.add_argument("--evpd", "-e", action="store_true", help="a VPD page")
    p.add_argument("--page", "-c", type=lambda s: int(s, 0), default=0, help="VPD page code")
    _common(p)

    p = sub.add_parser("readcapacity", help="READ CAPACITY(16) (like iscsi-readcapacity16)")
    p.add_argument("url")
    _common(p)

    p = sub.add_parser("reportluns", help="REPORT LUNS")
    p.add_argument("url")
    _common(p)

    p = sub.add_parser("tur", help="TEST UNIT READY")
    p.add_argument("url")
    _common(p)

    p = sub.add_parser("nop", help="NOP-Out ping, print the round trip")
    p.add_argument("url")
    p.add_argument("--data", default="", help="ping data (text)")
    _common(p)

    p = sub.add_parser("read", help="READ(16): data to a file or stdout")
    p.add_argument("url")
    p.add_argument("--lba", type=int, default=0)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--output", "-o", help="file (default: hex dump on stdout)")
    _common(p)

    p = sub.add_parser("write", help="WRITE(16): data from a file or a repeated byte")
    p.add_argument("url")
    p.add_argument("--lba", type=int, default=0)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="file whose bytes to write (a whole number of blocks)")
    src.add_argument("--pattern", type=lambda s: int(s, 0), help="byte value to repeat")
    p.add_argument("--blocks", type=int, default=1, help="with --pattern")
    _common(p)
    return parser


def _keys(args: argparse.Namespace, url: ISCSIURL) -> dict[str, str]:
    keys = dict(url.keys())
    if args.header_digest:
        keys["HeaderDigest"] = args.header_digest.replace("crc32c", "CRC32C").replace(
            "none", "None"
        )
    if args.data_digest:
        keys["DataDigest"] = args.data_digest.replace("crc32c", "CRC32C").replace("none", "None")
    for item in args.key:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise _UsageError(f"--key expects KEY=VALUE, not {item!r}")
        keys[k] = v
    return keys


def _hexdump(data: bytes) -> str:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {chunk.hex(' '):<47}  {text}")
    return "\n".join(lines)


def _print_inquiry(data: bytes) -> None:
    from iscsi_conformance.scsi.cdb import parse_inquiry

    inq = parse_inquiry(data)
    for f in inq.__dataclass_fields__:
        value = getattr(inq, f)
        if isinstance(value, bytes):
            value = value.hex()
        print(f"{f}: {value}")


async def _session_command(args: argparse.Namespace, url: ISCSIURL) -> int:
    from .client import DEFAULT_INITIATOR_NAME, Session

    session_kw: dict[str, Any] = dict(
        initiator_name=args.initiator_name or DEFAULT_INITIATOR_NAME,
        keys=_keys(args, url),
        timeout=args.timeout,
    )
    if args.chap_algorithm:
        session_kw["chap_algorithms"] = tuple(args.chap_algorithm)
    lun = url.lun if url.lun is not None else 0
    session = await Session.from_url(url, **session_kw)
    try:
        cmd = args.command
        if cmd == "login":
            n = session.negotiated
            info = {"target": url.target, "portal": url.portal, "tsih": session.tsih,
                    "isid": f"{session.isid:#014x}", **n.values,
                    "MaxRecvDataSegmentLength(target)": n.max_recv_data_segment_length_peer,
                    "MaxRecvDataSegmentLength(ours)": n.max_recv_data_segment_length_local}  # fmt: skip
            if args.json:
                print(json.dumps(info, indent=2, default=str))
            else:
                for k, v in info.items():
                    print(f"{k}: {v}")
        elif cmd == "inquiry":
            r = await session.inquiry(lun, evpd=args.evpd, page=args.page)
            if args.evpd:
                print(_hexdump(r.data))
            else:
                _print_inquiry(r.data)
        elif cmd == "readcapacity":
            rc = await session.read_capacity16(lun)
            blocks = rc.returned_lba + 1
            print(f"Logical block length: {rc.block_length}")
            print(f"Last LBA: {rc.returned_lba}")
            print(f"Total size: {blocks * rc.block_length}")
            print(f"Protection: {int(rc.prot_en)} (type {rc.p_type})")
            print(f"LBPME: {int(rc.lbpme)}  LBPRZ: {int(rc.lbprz)}")
        elif cmd == "reportluns":
            for n in await session.report_luns():
                print(f"LUN {n}")
        elif cmd == "tur":
            r = await session.test_unit_ready(lun)
            print(
                "GOOD"
                if r.good
                else f"status {r.status:#04x} sense key {r.sense_key} asc/ascq {r.asc_ascq}"
            )
            return EXIT_OK if r.good else EXIT_FAILED
        elif cmd == "nop":
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            pdu = await session.nop(args.data.encode())
            print(f"NOP-In StatSN {pdu.statsn} ExpCmdSN {pdu.expcmdsn} MaxCmdSN {pdu.maxcmdsn} "
                  f"data {len(pdu.data)} bytes, {1000 * (loop.time() - t0):.3f} ms")  # fmt: skip
        elif cmd == "read":
            data = await session.read(lun, args.lba, args.blocks)
            if args.output:
                with open(args.output, "wb") as f:
                    f.write(data)
            else:
                print(_hexdump(data))
        elif cmd == "write":
            if args.input:
                with open(args.input, "rb") as f:
                    data = f.read()
            else:
                bs = await session.block_size(lun)
                data = bytes([args.pattern & 0xFF]) * (bs * args.blocks)
            await session.write(lun, args.lba, data)
            print(f"wrote {len(data)} bytes at LBA {args.lba}")
        for v in session.violations:
            print(f"warning: target violation: {v.message} [{v.section}]", file=sys.stderr)
        return EXIT_OK
    finally:
        await session.close()
        _emit_traces(args, session.traces)


def _emit_traces(args: argparse.Namespace, traces: Sequence[Any]) -> None:
    if args.trace:
        for t in traces:
            print(f"--- PDU trace {t.label}", file=sys.stderr)
            print(t.format(), file=sys.stderr)
    if args.trace_json:
        with open(args.trace_json, "w") as f:
            json.dump([t.to_json() for t in traces], f, indent=1)


async def _discover(args: argparse.Namespace, url: ISCSIURL) -> int:
    from .client import DEFAULT_INITIATOR_NAME, discover

    targets = await discover(
        url.host,
        url.port,
        initiator_name=args.initiator_name or DEFAULT_INITIATOR_NAME,
        chap=url.chap,
        mutual_chap=url.mutual_chap,
        send_targets=args.send_targets,
        keys=_keys(args, url),
        timeout=args.timeout,
    )
    for t in targets:
        print(f"Target: {t.name}")
        for p in t.addresses:
            print(f"  Portal: {p}")
    return EXIT_OK


async def _discover_isns(args: argparse.Namespace) -> int:
    """iSNS discovery (RFC 4171 5.6.5.2, 5.6.5.3), then an optional login."""
    from iscsi_conformance.core.isns import NodeType
    from iscsi_conformance.isns.client import NodeSpec, Registration
    from iscsi_conformance.isns.client_io import ISNSClient, ISNSClientError, parse_server

    from .client import DEFAULT_INITIATOR_NAME

    try:
        server = parse_server(args.url)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    name = args.initiator_name or DEFAULT_INITIATOR_NAME
    # registered, so that the server scopes the queries to our discovery domains (5.6.5.2)
    reg = Registration(entity_id=name, nodes=(NodeSpec(name, NodeType.INITIATOR),))
    if args.watch:
        # SCNs (5.6.5.8) go to a portal's SCN Port (6.3.7): our address toward the server
        reg = dataclasses.replace(
            reg, portals=((_local_address(server), 0),), scn_port=0, esi_port=0, esi_interval=20
        )
    client = ISNSClient(server, registration=reg, timeout=args.timeout)
    try:
        await client.start()
        targets = await client.discover()
        if args.watch:
            _print_targets(targets)
            await _watch(client, args.watch)
            return EXIT_OK
        # still registered while logging in: a target that asks iSNS who may log in
        # (tgt's iSNSAccessControl) must find us
        return await _isns_login(args, targets, name)
    except ISNSClientError as exc:
        print(f"{PROG}: iSNS {server[0]}:{server[1]}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await client.stop()


def _local_address(server: tuple[str, int]) -> str:
    import socket

    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(server)  # UDP: no packet is sent, the kernel only picks the route
        return str(s.getsockname()[0])


def _print_targets(targets: Sequence[Any]) -> None:
    for t in targets:
        print(f"Target: {t.name}")
        for host, port, tag in t.portals:
            h = f"[{host}]" if ":" in host else host
            print(f"  Portal: {h}:{port}" + (f",{tag}" if tag is not None else ""), flush=True)


async def _watch(client: Any, seconds: float) -> None:
    """Print each SCN (5.6.5.8) and the targets found after it, for ``seconds``."""
    from iscsi_conformance.core.isns import ScnEvent
    from iscsi_conformance.isns.client import ScnReceived

    loop = asyncio.get_running_loop()
    end, seen = loop.time() + seconds, 0
    while loop.time() < end:
        await asyncio.sleep(0.1)
        scns = client.events_of(ScnReceived)
        if len(scns) == seen:
            continue
        for scn in scns[seen:]:
            for bit, node in scn.changes:
                what = ScnEvent(bit).name or str(bit)
                print(f"SCN: {what.lower()} {node}", flush=True)
        seen = len(scns)
        _print_targets(await client.discover())


async def _isns_login(args: argparse.Namespace, targets: Sequence[Any], name: str) -> int:
    from .client import Session

    _print_targets(targets)
    if args.login is None:
        return EXIT_OK
    chosen = [t for t in targets if t.portals and (not args.login or t.name == args.login)]
    if not chosen:
        print(f"{PROG}: no target {args.login or ''} with a portal in iSNS".replace("  ", " "),
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    target = chosen[0]
    host, port, tag = target.portals[0]
    h = f"[{host}]" if ":" in host else host
    url = parse_url(f"iscsi://{h}:{port}/{target.name}", require_lun=False)
    session = await Session.from_url(
        url, initiator_name=name, keys=_keys(args, url), timeout=args.timeout
    )
    try:
        tpgt = session.negotiated.values.get("TargetPortalGroupTag")
        print(f"Logged in: {target.name} at {h}:{port} TSIH {session.tsih} TPGT {tpgt}"
              + (f" (iSNS PGT {tag})" if tag is not None else ""))  # fmt: skip
    finally:
        await session.close()
        _emit_traces(args, session.traces)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "discover" and args.url.startswith("isns://"):
            return asyncio.run(_discover_isns(args))
        if args.command == "discover":
            url = parse_url(args.url, require_target=False, require_lun=False)
            return asyncio.run(_discover(args, url))
        url = parse_url(args.url, require_lun=False)
        return asyncio.run(_session_command(args, url))
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (URLError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ISCSIConformanceError as exc:
        print(f"{PROG}: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
