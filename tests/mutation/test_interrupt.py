"""An interrupted ``mutate`` leaves nothing running: ``runner.stop_all`` ends the suite
runs under way (each in a session of its own) and no other starts; the CLI does so on
SIGINT and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iscsi_conformance.mutation import runner


@pytest.fixture
def sleeper(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Suite runs that would sleep for a minute instead of running pytest."""
    monkeypatch.setattr(
        runner, "pytest_argv", lambda *a, **k: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    yield
    runner._STOPPING.clear()


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_all_ends_runs_under_way_and_starts_none(sleeper: None) -> None:
    seen: list[Any] = []
    pids: list[int] = []
    real_popen = subprocess.Popen

    def popen(*a: Any, **k: Any) -> Any:
        proc = real_popen(*a, **k)
        pids.append(proc.pid)
        return proc

    def run() -> None:
        try:
            runner.run_suite(["X"], timeout=60)
        except runner.Interrupted as exc:
            seen.append(exc)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner.subprocess, "Popen", popen)
        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 10
        while not pids and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        runner.stop_all()
        t.join(10)
    assert not t.is_alive() and time.monotonic() - started < 5
    assert seen and pids and not _alive(pids[0])
    with pytest.raises(runner.Interrupted):
        runner.run_suite(["X"], timeout=60)
    assert len(pids) == 1


def test_sigterm_stops_mutate_and_its_runs(tmp_path: Any) -> None:
    """The CLI on SIGTERM: exit 130 with one line, and no suite run left behind."""
    code = (
        "import sys, time\n"
        "from iscsi_conformance.mutation import runner, cli\n"
        # the suite run's code is split here so that this process's own command line
        # (and a fork of it before its exec) never matches the pattern looked for below
        "runner.pytest_argv = lambda *a, **k: [sys.executable, '-c', "
        "'import time; time.sleep(6' + '0)']\n"
        "sys.exit(cli.main(['--mutant', sys.argv[1], '-j', '2']))\n"
    )
    from iscsi_conformance.mutation import all_mutants

    name = next(iter(all_mutants().values())).name
    proc = subprocess.Popen(
        [sys.executable, "-c", code, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: list[str] = []
    deadline = time.monotonic() + 30  # its suite runs start once the handlers are in place
    while len(children) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        found = subprocess.run(
            ["pgrep", "-f", "-P", str(proc.pid), "import time; time.sleep.60."],
            capture_output=True,
            text=True,
        ).stdout.split()
        children = found
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1].endswith("interrupted; every suite run stopped")
    assert children and not any(_alive(int(pid)) for pid in children)
