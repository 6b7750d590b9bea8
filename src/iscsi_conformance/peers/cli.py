"""``iscsi-conformance peers``: the peers this installation knows, with their manifests;
``peers start|stop|status|url|exec``: a peer as a tool of its own (``peers.tool``).

    iscsi-conformance peers start tgt [--chap USER] [--lun 64M] [--port 3260] [--detach]
    iscsi-conformance peers start open-iscsi --url iscsi://127.0.0.1:3260/iqn.../1
    iscsi-conformance peers exec open-iscsi -- sg_inq /dev/sda
    iscsi-conformance peers stop [tgt]

Exit statuses: 0 done, 1 the peer stopped serving (or was not running), 2 bad input,
3 the peer could not start, 130 interrupted while starting.
"""

from __future__ import annotations

import argparse
import json
import sys

_TOOL_COMMANDS = ("start", "stop", "status", "url", "exec")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message}", file=sys.stderr)  # one line, not the usage
        raise SystemExit(2)


def _tool_parser() -> argparse.ArgumentParser:
    from iscsi_conformance.peers import tool

    parser = _Parser(prog="iscsi-conformance peers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("start", help="bring up a configured peer and wait (Ctrl-C stops it)")
    p.add_argument(
        "name", help=f"target: {', '.join(tool.TARGETS)}; initiator: {', '.join(tool.INITIATORS)}"
    )
    p.add_argument(
        "--mode", help="how the peer runs (native, container, microvm; default: the driver's)"
    )
    p.add_argument("--port", type=int, help="portal port (default: a free one)")
    p.add_argument("--listen", default="127.0.0.1", help="portal address (reference, tgt native)")
    p.add_argument("--iqn", help=f"target name (default: {tool.IQN_PREFIX}:NAME)")
    p.add_argument("--lun", default="64M", metavar="SIZE", help="LUN size (default: 64M)")
    p.add_argument(
        "--chap",
        metavar="USER",
        help=f"require CHAP as USER; the secret from ${tool.SECRET_ENV} or --chap-secret-file",
    )
    p.add_argument("--chap-secret-file", metavar="FILE")
    p.add_argument(
        "--mutual-chap",
        metavar="USER",
        help=f"the target's own name for mutual CHAP; secret from ${tool.MUTUAL_SECRET_ENV}",
    )
    p.add_argument("--mutual-chap-secret-file", metavar="FILE")
    p.add_argument("--url", help="initiators: the target to log in to, iscsi://host[:port]/iqn/lun")
    p.add_argument(
        "--detach", action="store_true", help="run in the background; return once the peer is up"
    )
    p = sub.add_parser("stop", help="stop peers started with 'peers start' (default: all)")
    p.add_argument("names", nargs="*")
    p.add_argument("--timeout", type=float, default=120.0)
    p = sub.add_parser("status", help="the peers started with 'peers start'")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("url", help="the iscsi:// URL of a started target (no secret)")
    p.add_argument("name")
    p = sub.add_parser("exec", help="run a command where a started initiator is: exec NAME -- CMD")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    return parser  # fmt: skip


def tool_main(argv: list[str]) -> int:
    from iscsi_conformance.errors import ConfigError
    from iscsi_conformance.peers import tool

    if argv[:1] == ["exec"] and "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    else:
        command = []
    try:
        args = _tool_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "start":
            req = tool.StartRequest(
                name=args.name,
                mode=args.mode,
                port=args.port,
                listen=args.listen,
                iqn=args.iqn,
                lun_size=tool.parse_size(args.lun),
                chap=tool.chap_account(args.chap, args.chap_secret_file, tool.SECRET_ENV),
                mutual_chap=tool.chap_account(
                    args.mutual_chap, args.mutual_chap_secret_file, tool.MUTUAL_SECRET_ENV
                ),
                url=args.url,
            )
            if args.detach:
                rest = [a for a in argv[1:] if a != "--detach"]
                return tool.start_detached(req, rest)
            return tool.start(req)
        if args.command == "stop":
            return tool.stop(args.names, timeout=args.timeout)
        if args.command == "status":
            states = tool.running()
            if args.json:
                print(json.dumps(states, indent=1))
            for s in [] if args.json else states:
                where = tool.public_url(s) if s.get("role") == "target" else s.get("url")
                print(f"{s['name']:<12} pid {s['pid']:<8} {s['mode']:<10} {where}")
            return 0
        if args.command == "url":
            state = tool.read_state(args.name)
            if state is None or state.get("role") != "target":
                print(f"iscsi-conformance peers: no target {args.name} is running", file=sys.stderr)
                return 1
            print(tool.public_url(state))
            return 0
        return tool.exec_in(args.name, command or args.cmd, timeout=args.timeout)
    except ConfigError as exc:
        print(f"iscsi-conformance peers: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str]) -> int:
    if argv[:1] and argv[0] in _TOOL_COMMANDS:
        return tool_main(argv)
    if argv[:1] == ["list"]:
        argv = argv[1:]
    parser = _Parser(prog="iscsi-conformance peers", description=__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    from iscsi_conformance.peers import registry

    out: dict[str, list[dict[str, object]]] = {"target": [], "initiator": []}
    for role in ("target", "initiator"):
        for name in registry.names(role):  # type: ignore[arg-type]
            manifest = registry._manifest_for(role, name)  # type: ignore[arg-type]
            out[role].append(
                {
                    "name": name,
                    "description": manifest.description,
                    "capabilities": manifest.capabilities,
                    "deviations": [
                        {k: d.get(k) for k in ("test", "versions", "reason")}
                        for d in manifest.deviations
                    ],
                }
            )
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    for role, peers in out.items():
        print(f"{role}s:")
        for p in peers:
            caps = ", ".join(f"{k}={v}" for k, v in sorted(p["capabilities"].items()))  # type: ignore[attr-defined]
            print(f"  {p['name']:<12} {p['description']}")
            print(f"  {'':<12} capabilities: {caps}")
            for d in p["deviations"]:  # type: ignore[attr-defined]
                print(f"  {'':<12} deviation {d['test']} ({d['versions']}): {d['reason']}")
    errors = registry.import_errors()
    for mod, err in errors.items():
        print(f"warning: driver module {mod} did not load: {err}")
    return 0
