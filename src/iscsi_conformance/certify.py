"""``iscsi-conformance certify URL``: certify a third-party target.

Safe by default: the run is read-only unless ``--allow-dataloss`` is given, and then
tests write only to the LUN named in the URL. Before the suite starts, a preflight
resolves the URL, connects and logs in once, so that a bad URL, an unreachable
portal or refused credentials end in one clear line instead of hundreds of failures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from iscsi_conformance.errors import (
    AuthenticationError,
    ConfigError,
    LoginError,
    TransportError,
    URLError,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HARNESS = 0, 1, 2, 3


def _err(text: str) -> None:
    print(f"iscsi-conformance certify: {text}", file=sys.stderr)


async def _preflight(url: object, chap: object, mutual: object) -> None:
    from iscsi_conformance.harness.profiles import REFERENCE_INITIATOR_NAME
    from iscsi_conformance.initiator.client import Session

    session = await Session.connect(
        url.host,  # type: ignore[attr-defined]
        url.port,  # type: ignore[attr-defined]
        url.target,  # type: ignore[attr-defined]
        initiator_name=REFERENCE_INITIATOR_NAME,
        chap=chap,
        mutual_chap=mutual,
        timeout=10,
    )
    try:
        await session.logout()
    finally:
        await session.close()


def certify(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import pytest

    from iscsi_conformance.initiator.url import parse_url
    from iscsi_conformance.plugin import RESULTS_KEY, _credentials
    from iscsi_conformance.suite import pytest_args as _pytest_args
    from iscsi_conformance.verdict import certification_verdict, print_summary, print_verdict

    try:
        url = parse_url(args.url)
    except URLError as exc:
        _err(f"bad URL: {exc}")
        return EXIT_USAGE
    chap = url.chap or _credentials(args.chap, "--chap")
    mutual = url.mutual_chap or _credentials(args.mutual_chap, "--mutual-chap")
    if url.target is None or url.lun is None:
        _err("bad URL: certify needs iscsi://host[:port]/iqn/lun (target name and LUN)")
        return EXIT_USAGE
    public = f"iscsi://{url.portal}/{url.target}/{url.lun}"
    if getattr(args, "baseline", None):
        from iscsi_conformance.report.baseline import load_baseline

        try:
            baseline = load_baseline(args.baseline)
        except ConfigError as exc:
            _err(str(exc))
            return EXIT_USAGE
    else:
        baseline = None
    try:
        asyncio.run(_preflight(url, chap, mutual))
    except AuthenticationError as exc:
        _err(f"authentication failed at {url.host}:{url.port}: {exc.message}")
        return EXIT_FAILED
    except LoginError as exc:
        _err(f"login refused by {url.host}:{url.port}: {exc.message}")
        return EXIT_FAILED
    except (TimeoutError, TransportError, OSError) as exc:
        _err(f"cannot reach {url.host}:{url.port}: {exc or type(exc).__name__}")
        return EXIT_FAILED

    report = Path(args.report)
    ns = argparse.Namespace(
        target=[public],
        initiator=None,
        suite=args.suite,
        peer_mode=None,
        workers=None,
        allure=args.allure,
        quiet=args.quiet,
    )
    argv = _pytest_args(ns, report, extra)
    if chap is not None:
        argv += ["--iscsi-chap", f"{chap.user}%{chap.secret}"]
    if mutual is not None:
        argv += ["--iscsi-mutual-chap", f"{mutual.user}%{mutual.secret}"]
    if args.allow_dataloss:
        argv += ["--iscsi-allow-dataloss"]
    if getattr(args, "strict", False):
        argv += ["--iscsi-strict"]

    class _Grab:
        results: object = None

        @pytest.hookimpl(trylast=True)
        def pytest_sessionfinish(self, session: pytest.Session) -> None:
            _Grab.results = session.config.stash.get(RESULTS_KEY, None)

    from iscsi_conformance.plugin.progress import progress_plugins

    code = pytest.main(argv, plugins=[_Grab(), *progress_plugins(args, argv)])
    if code == pytest.ExitCode.INTERRUPTED:
        return 130
    results = _Grab.results
    if results is None:
        _err(f"the suite produced no results (pytest exit status {int(code)})")
        return EXIT_HARNESS
    print_summary(results, report)
    verdict = certification_verdict(results, public, strict=getattr(args, "strict", False))
    print_verdict(verdict)
    regressed = False
    if baseline is not None and (report / "results.json").exists():
        from iscsi_conformance.report.baseline import compare_report, summary_lines

        d = compare_report(report, baseline, label=str(args.baseline))
        print("\n".join(summary_lines(d)))
        regressed = d.regressed
    print(f"HTML report: {(report / 'index.html').resolve()}")
    return EXIT_OK if verdict.certified and not regressed else EXIT_FAILED
