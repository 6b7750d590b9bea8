"""``iscsi-conformance target``: run the reference target.

Two forms (docs/target-config.md):

    iscsi-conformance target --listen 127.0.0.1:3260 --target iqn.2024-01.org.example:disk --lun 64M
    iscsi-conformance target --config targets/reference/example.toml
    iscsi-conformance target ... --isns 127.0.0.1[:3205]   (or an [isns] table in the config)

``--lun`` takes a size (RAM) or a file path, ``PATH=SIZE`` creating a sparse file.
When listening, one line per portal is printed: ``listening on HOST:PORT IQN``.
A bad configuration prints ``error: <field>: <problem>`` and exits with status 2.
SIGINT/SIGTERM stop the server after flushing LUN data and reservation state.
With iSNS (RFC 4171) the target registers what it serves once it listens (one line
``registered with iSNS HOST:PORT as ENTITY (ESI port N)``), answers ESI, refreshes,
and deregisters at shutdown, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from iscsi_conformance.errors import ConfigError, HarnessError

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iscsi-conformance target",
        description="Run the reference iSCSI target (RFC 7143).",
    )
    p.add_argument(
        "--config", type=Path, help="TOML file describing portals, targets, LUNs, ACLs, CHAP"
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="portal to listen on (repeatable; IPv6 as [::1]:3260)",
    )
    p.add_argument("--target", metavar="IQN", help="target name to serve")
    p.add_argument(
        "--lun",
        action="append",
        metavar="SIZE_OR_FILE",
        help="a LUN: 64M (RAM), /path/disk.img, or /path/disk.img=1G (sparse)",
    )
    p.add_argument("--state-dir", type=Path, help="where RAM LUNs keep reservation state")
    p.add_argument("--isns", metavar="HOST[:PORT]", help="register with this iSNS server")
    p.add_argument("--isns-esi-interval", type=int, metavar="SECONDS",
                   help="ESI interval to register (RFC 4171 6.3.4; default 20, 0: no ESI)")  # fmt: skip
    p.add_argument("--trace", action="store_true", help="log every PDU (slow)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _config_from_args(args: argparse.Namespace) -> object:
    from iscsi_conformance.target.config import load_config, parse_portal, simple_config

    if args.config is not None:
        if args.listen or args.target or args.lun:
            raise ConfigError("use either --config or --listen/--target/--lun", field="--config")
        cfg = load_config(args.config)
        if args.trace:
            import dataclasses

            cfg = dataclasses.replace(cfg, trace=True)
        return cfg
    if not args.target:
        raise ConfigError("required (or use --config)", field="--target")
    listen = [parse_portal(x, "--listen") for x in (args.listen or ["127.0.0.1:3260"])]
    cfg = simple_config(listen, args.target, args.lun or ["64M"], state_dir=args.state_dir)
    if args.trace:
        import dataclasses

        cfg = dataclasses.replace(cfg, trace=True)
    return cfg


def _with_isns(cfg: object, args: argparse.Namespace) -> object:
    """``--isns`` / ``--isns-esi-interval`` over the config's ``[isns]`` table."""
    import dataclasses

    from iscsi_conformance.target.config import IsnsConfig, parse_portal

    isns = getattr(cfg, "isns", None)
    if args.isns:
        server = parse_portal(args.isns, "--isns", default_port=3205)
        isns = dataclasses.replace(isns, server=server) if isns else IsnsConfig(server)
    if args.isns_esi_interval is not None:
        if isns is None:
            raise ConfigError("needs --isns or an [isns] table", field="--isns-esi-interval")
        if args.isns_esi_interval < 0:
            raise ConfigError("must be >= 0", field="--isns-esi-interval")
        isns = dataclasses.replace(isns, esi_interval=args.isns_esi_interval)
    return dataclasses.replace(cfg, isns=isns) if isns is not None else cfg  # type: ignore[type-var]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.DEBUG if args.trace else (logging.INFO if args.verbose else logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = _config_from_args(args)
        cfg = _with_isns(cfg, args)
        from iscsi_conformance.target.server import run_server

        isns_clients: list[object] = []

        def ready(server: object) -> None:
            names = [t.name for t in cfg.targets]  # type: ignore[attr-defined]
            for host, port, _tag in server.portals:  # type: ignore[attr-defined]
                h = f"[{host}]" if ":" in host else host
                print(f"listening on {h}:{port} {' '.join(names)}", flush=True)
            isns = getattr(cfg, "isns", None)
            if isns is not None:
                from iscsi_conformance.target.isns import start_isns

                client = start_isns(cfg, isns, server.portals)  # type: ignore[arg-type, attr-defined]
                isns_clients.append(client)
                host, port = isns.server
                print(f"registered with iSNS {host}:{port} as {client.registration.entity_id}"
                      f" (ESI port {client.esi_port})", flush=True)  # fmt: skip

        def stopping(server: object) -> None:
            for client in isns_clients:
                client.stop_thread()  # type: ignore[attr-defined]  # deregisters (5.6.5.4)

        try:
            return run_server(cfg, ready=ready, stopping=stopping)  # type: ignore[arg-type]
        finally:
            for client in isns_clients:
                client.stop_thread()  # type: ignore[attr-defined]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        return 1
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from iscsi_conformance.isns.client_io import ISNSClientError

        if not isinstance(exc, ISNSClientError):
            raise
        print(f"error: iSNS: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
