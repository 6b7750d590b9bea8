"""Terminal progress for ``run`` and ``certify``: per pairing and area, not per file.

Theory of operation: pytest's terminal reporter prints the path of each test file
(inside site-packages for an installed suite) and a header naming its rootdir and
``configfile: /dev/null``: nothing a person running the suite asked about. The CLI
loads :class:`Install` unless ``-v`` is given; at ``pytest_configure`` it puts a
:class:`ProgressReporter` in the terminal reporter's place (a subclass: statistics,
warnings, the failures and the short summary stay pytest's own). The reporter counts
the collected tests per pairing and area (``reference×lio  Login 98``) and, as they
end, shows on a terminal one live line for the current pairing, e.g.
``[312/1722] reference×lio  Login 45/98  CHAP 12/32``, and prints a line for each
area of a pairing when its last test ends (``reference×lio  Login 98/98: 95 passed,
3 failed``); in a log (not a terminal) only those lines. With pytest-xdist workers the
controller collects nothing, so pytest's own view is kept.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

import pytest
from _pytest.terminal import TerminalReporter, TestShortLogReport

from iscsi_conformance.report.model import area_of

Key = tuple[str, str]  # (pairing id, area)


def key_of(item: pytest.Item) -> Key:
    """The pairing and area an item counts under."""
    from iscsi_conformance.plugin.spec import info_of

    info = info_of(item)
    area = area_of(info.test_id) if info is not None else item.nodeid.split("::", 1)[0]
    callspec = getattr(item, "callspec", None)
    pairing = callspec.params.get("pairing") if callspec is not None else None
    return (pairing.id if pairing is not None else "", area)


class ProgressReporter(TerminalReporter):  # type: ignore[misc]
    def __init__(self, config: pytest.Config, file: Any = None) -> None:
        super().__init__(config, file)
        self._keys: dict[str, Key] = {}
        self._total: collections.Counter[Key] = collections.Counter()
        self._done: collections.Counter[Key] = collections.Counter()
        self._outcomes: dict[Key, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._counted: set[str] = set()
        self._live = bool(self.isatty)

    # -- what pytest prints that says nothing here

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return []

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        pass  # no file paths

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        pass  # no percentages: the progress line says it

    # -- counting

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        super().pytest_collection_finish(session)
        for item in session.items:
            k = key_of(item)
            self._keys[item.nodeid] = k
            self._total[k] += 1

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        res = TestShortLogReport(
            *self.config.hook.pytest_report_teststatus(report=report, config=self.config)
        )
        self._add_stats(res.category, [report])
        self._tests_ran = True
        k = self._keys.get(report.nodeid)
        if k is None or report.nodeid in self._counted:
            return
        # a test ends at its call, or at a setup that did not pass (skip, error)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self._counted.add(report.nodeid)
            self._done[k] += 1
            self._outcomes[k][res.category or report.outcome] += 1
            if self._done[k] == self._total[k]:
                self._clear()
                self._tw.line(self._area_line(k))
            if self._live and sum(self._done.values()) < sum(self._total.values()):
                self._show(k[0])

    def _area_line(self, k: Key) -> str:
        counts = ", ".join(f"{n} {c}" for c, n in sorted(self._outcomes[k].items()))
        return f"{k[0] or 'tests'}  {k[1]} {self._done[k]}/{self._total[k]}: {counts}"

    def _show(self, pairing: str) -> None:
        areas = [
            f"{a} {self._done[(p, a)]}/{self._total[(p, a)]}"
            for (p, a) in self._total
            if p == pairing and 0 < self._done[(p, a)] < self._total[(p, a)]
        ]
        done, total = sum(self._done.values()), sum(self._total.values())
        line = f"[{done}/{total}] {pairing}  " + "  ".join(areas)
        width = max(20, self._tw.fullwidth - 1)
        self._tw.write("\r" + line[:width].ljust(width))
        self.currentfspath = -2  # pytest's ensure_newline() ends the live line first

    def _clear(self) -> None:
        if self._live and self.currentfspath == -2:
            self._tw.write("\r" + " " * max(20, self._tw.fullwidth - 1) + "\r")
            self.currentfspath = None


class Install:
    """The plugin the CLI loads: swap the terminal reporter for ours (not under xdist)."""

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        if config.get_verbosity() > 0 or getattr(config.option, "numprocesses", None):
            return
        standard = config.pluginmanager.getplugin("terminalreporter")
        if standard is None or hasattr(config, "workerinput"):
            return
        ours = ProgressReporter(config, standard._tw._file)
        config.pluginmanager.unregister(standard)
        config.pluginmanager.register(ours, "terminalreporter")


def progress_plugins(args: argparse.Namespace, argv: list[str]) -> list[object]:
    """What ``run``/``certify`` load: :class:`Install`, unless ``-v`` asks for pytest's
    own view (``args.verbose`` is then passed on to pytest as ``-v``)."""
    if getattr(args, "verbose", False):
        argv.append("-v")
        return []
    if any(a in ("-v", "-vv", "--verbose") for a in argv):
        return []
    return [Install()]
