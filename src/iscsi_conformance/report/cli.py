"""``iscsi-conformance report ...``: merge result files, render HTML and JUnit.

The top-level CLI hands the arguments after ``report`` to :func:`main`::

    iscsi-conformance report merge OUT IN [IN ...]
    iscsi-conformance report html IN [IN ...] --out DIR [--baseline OLD.json]
    iscsi-conformance report diff OLD.json NEW.json [--json]
    iscsi-conformance report junit IN [IN ...] --out FILE
    iscsi-conformance report validate IN [IN ...]

Several inputs to ``html``/``junit`` are merged first (same rules as ``merge``).
``diff`` lists, per cell, new failures, fixed tests, deviations new and gone and tests
added or removed; it exits 1 when something regressed (a new failure), else 0, and 2
on bad input.
Secrets to mask on top of the built-in rules: ``--secret VALUE`` (repeatable) or
``--secrets-file PATH`` (one per line; keeps them out of the process list).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import HarnessError
from .diff import diff, format_text
from .merge import merge_files
from .model import Results
from .render_html import write_html
from .render_junit import write_junit
from .writer import dump_results

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "iscsi-conformance report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Merge and render iscsi-conformance results."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def secrets_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--secret",
            action="append",
            default=[],
            metavar="VALUE",
            help="a value to mask (repeatable)",
        )
        p.add_argument(
            "--secrets-file", type=Path, metavar="PATH", help="values to mask, one per line"
        )

    p = sub.add_parser(
        "merge", help="merge result files (machines, CI jobs, xdist workers) into one"
    )
    p.add_argument("out", type=Path, metavar="OUT", help="merged results file to write")
    p.add_argument("inputs", type=Path, nargs="+", metavar="IN")
    secrets_opts(p)

    p = sub.add_parser(
        "html", help="write the report folder: index.html (the matrix) and a page per cell"
    )
    p.add_argument("inputs", type=Path, nargs="+", metavar="IN")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory for index.html"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="OLD.json",
        help="earlier results: the page gets a Changes section (new failures, fixed, ...)",
    )
    p.add_argument(
        "--no-captures", action="store_true", help="do not write a pcapng capture per test"
    )
    p.add_argument("--title", help="page title")
    p.add_argument(
        "--no-data", action="store_true", help="do not write results.json beside the page"
    )
    secrets_opts(p)

    p = sub.add_parser("junit", help="render JUnit XML (one testsuite per pairing)")
    p.add_argument("inputs", type=Path, nargs="+", metavar="IN")
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.add_argument(
        "--strict",
        action="store_true",
        help="non-strict results (a SHOULD broken) are <failure>s (default: when a run was strict)",
    )
    secrets_opts(p)

    p = sub.add_parser(
        "diff", help="compare two result files per cell; exit 1 on a regression only"
    )
    p.add_argument("old", type=Path, metavar="OLD.json", help="the baseline (e.g. last release)")
    p.add_argument("new", type=Path, metavar="NEW.json")
    p.add_argument("--json", action="store_true", help="print the changes as JSON")

    p = sub.add_parser("validate", help="check result files against the schema")
    p.add_argument("inputs", type=Path, nargs="+", metavar="IN")
    return parser


def _secrets(args: argparse.Namespace) -> list[str]:
    values = list(args.secret)
    if args.secrets_file:
        values += [
            line.rstrip("\n") for line in args.secrets_file.read_text(encoding="utf-8").splitlines()
        ]
    return [v for v in values if v]


def _load(paths: Sequence[Path]) -> Results:
    return Results.load(paths[0]) if len(paths) == 1 else merge_files(paths)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            bad = 0
            for path in args.inputs:
                try:
                    r = Results.load(path)  # checks format, major version and schema
                except HarnessError as exc:
                    bad += 1
                    print(exc, file=sys.stderr)
                else:
                    print(f"{path}: valid (version {r.version}, {len(r.tests)} results)")
            return 1 if bad else 0
        if args.command == "diff":
            return _diff(args)
        secrets = _secrets(args)
        if args.command == "merge":
            merged = merge_files(args.inputs)
            dump_results(merged, args.out, secrets=secrets)
            print(f"{args.out}: {len(merged.tests)} results, {len(merged.pairings)} pairings")
        elif args.command == "html":
            page = write_html(
                _load(args.inputs),
                args.out,
                secrets=secrets,
                title=args.title,
                with_data=not args.no_data,
                baseline=Results.load(args.baseline) if args.baseline else None,
                captures=not args.no_captures,
            )
            print(page)
        elif args.command == "junit":
            strict = True if args.strict else None
            print(write_junit(_load(args.inputs), args.out, secrets=secrets, strict=strict))
    except (HarnessError, OSError) as exc:
        print(f"iscsi-conformance report: {exc}", file=sys.stderr)
        return 2
    return 0


def _diff(args: argparse.Namespace) -> int:
    d = diff(
        Results.load(args.old),
        Results.load(args.new),
        old_label=str(args.old),
        new_label=str(args.new),
    )
    if args.json:
        doc = {
            "old": d.old_label,
            "new": d.new_label,
            "regressed": d.regressed,
            "cells": [dataclasses.asdict(c) for c in d.cells],
        }
        print(json.dumps(doc, indent=1, ensure_ascii=False))
    else:
        print(format_text(d))
    return 1 if d.regressed else 0


if __name__ == "__main__":
    sys.exit(main())
