"""``iscsi-conformance fuzz URL``: a bounded Hypothesis campaign against a target."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iscsi_conformance.errors import URLError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="iscsi-conformance fuzz", description=__doc__)
    parser.add_argument("url", help="iscsi://[user[%%secret]@]host[:port]/iqn[/lun]")
    parser.add_argument("--phase", choices=["login", "ffp", "both"], default="both")
    parser.add_argument(
        "--examples", type=int, default=200, help="at most this many cases (default %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="time budget (default %(default)s)"
    )
    parser.add_argument(
        "--database", type=Path, help="Hypothesis example database (replays earlier failures)"
    )
    parser.add_argument("--seed", type=int, help="derandomise the campaign")
    args = parser.parse_args(argv)
    from iscsi_conformance.fuzz.runner import fuzz
    from iscsi_conformance.initiator.url import parse_url

    try:
        url = parse_url(args.url, require_lun=False)
    except URLError as exc:
        print(f"iscsi-conformance fuzz: bad URL: {exc}", file=sys.stderr)
        return 2
    if url.target is None:
        print(
            "iscsi-conformance fuzz: the URL must name a target (iscsi://host/iqn)", file=sys.stderr
        )
        return 2
    chap = (url.chap.user, url.chap.secret) if url.chap else None
    report = fuzz(
        url.host,
        url.port,
        url.target,
        chap=chap,
        phase=args.phase,
        max_examples=args.examples,
        seconds=args.seconds,
        database=args.database,
        seed=args.seed,
    )
    print(report.summary())
    for failure in report.failures:
        print(failure)
    return 0 if report.ok else 1
