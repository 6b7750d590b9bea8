"""The reference target as a fuzzing subject: its own process, its log listened to.

Theory of operation: ``ReferenceSubject`` runs ``python -m iscsi_conformance.target.cli``
(the target a user runs) on a free loopback port, so that it has a core of its own and
its resources can be read from ``/proc``; its stderr goes to a file. ``poll()`` reads
what was logged since the last call and turns every ERROR record (``internal error
handling ...``, ``timer failed``: an unhandled exception or an answer the target's own
strict encoder refused) into a ``HealthEvent`` whose place is the exception type and
the innermost frame of its traceback, and whose peer port names the connection.
``rss_kib()`` and ``fds()`` are read from ``/proc/PID``; ``restart()`` brings a dead
target back (shrinking a crash needs one per attempt). ``stop()`` ends the process on
every exit path (the caller uses it as a context manager).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from iscsi_conformance.errors import PeerStartError
from iscsi_conformance.fuzz.oracles import HealthEvent
from iscsi_conformance.netutil import free_tcp_port

__all__ = ["InProcessSubject", "ReferenceSubject", "parse_log"]

_RECORD = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
_PEER = re.compile(r"from \('[^']*', (\d+)")
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|error)\b)")


def parse_log(text: str) -> list[HealthEvent]:
    """ERROR and CRITICAL records of a target log (with their tracebacks) as events."""
    events: list[HealthEvent] = []
    record: list[str] | None = None

    def close(lines: list[str]) -> None:
        frame, exc = "", ""
        for line in lines[1:]:
            m = _FRAME.match(line)
            if m:
                frame = f"{Path(m.group(1)).name}:{m.group(3)}"
            elif _EXC.match(line.strip()):
                exc = line.strip().split(":")[0]
        message = _RECORD.match(lines[0])
        msg = message.group(3) if message else lines[0]
        peer = _PEER.search(msg)
        place = f"{exc or 'log'} at {frame}" if frame else msg.split(" from ")[0][:80]
        detail = "\n".join(lines)[-4000:]
        events.append(HealthEvent(place, detail, int(peer.group(1)) if peer else None))

    for line in text.splitlines():
        m = _RECORD.match(line)
        if m:
            if record is not None:
                close(record)
            record = [line] if m.group(1) in ("ERROR", "CRITICAL") else None
        elif record is not None:
            record.append(line)
    if record is not None:
        close(record)
    return events


class ReferenceSubject:
    """The reference target in a process of its own (see the module doc)."""

    def __init__(
        self,
        iqn: str,
        *,
        luns: tuple[str, ...] = ("8M", "1M"),
        config: Callable[[str, int], str] | None = None,
    ) -> None:
        self.iqn = iqn
        self.luns = luns
        # config(host, port): a TOML configuration (docs/target-config.md) used instead
        # of --target/--lun, e.g. with CHAP accounts; written to a private directory
        self.config = config
        self.host = "127.0.0.1"
        self.port = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="iscsi-fuzz-ref-")
        self.log_path = Path(self._tmp.name) / "target.log"
        self._proc: subprocess.Popen[str] | None = None
        self._log_pos = 0
        self._pending = ""
        self.restarts = 0

    def __enter__(self) -> ReferenceSubject:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self.stop_process()  # never orphan a process started before
        if not self.port:
            self.port = free_tcp_port(self.host)
        argv = [sys.executable, "-m", "iscsi_conformance.target.cli"]
        if self.config is not None:
            path = Path(self._tmp.name) / "target.toml"
            path.write_text(self.config(self.host, self.port), encoding="utf-8")
            path.chmod(0o600)  # it may hold CHAP secrets
            argv += ["--config", str(path)]
        else:
            argv += ["--listen", f"{self.host}:{self.port}", "--target", self.iqn]
            for lun in self.luns:
                argv += ["--lun", lun]
        # glibc raises its mmap threshold up to 32 MB after a large buffer is freed, so
        # later large buffers come from the heap and its top stays mapped: RSS then keeps
        # the high-water mark of transient buffers (+19 MB in 60 s of fuzzing, the live
        # heap flat). A fixed threshold gives them back, so the RSS oracle sees leaks.
        env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ}
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (the child keeps it)
        try:
            self._proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
                env=env,
            )
        finally:
            log.close()
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.startswith("listening on"):
            self.stop_process()
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise PeerStartError("reference", "did not start", log_tail=tail)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def restart(self, *, deadline: float | None = None) -> None:
        """Stop and start again on the same port, retried while the port is still taken,
        at most 20 times and never past ``deadline`` (``time.monotonic()``)."""
        self.stop_process()
        self.restarts += 1
        for attempt in range(20):
            try:
                self.start()
                return
            except PeerStartError:
                if attempt == 19 or (deadline is not None and time.monotonic() + 0.5 > deadline):
                    raise
                time.sleep(0.25)

    def stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        self.stop_process()
        self._tmp.cleanup()

    def poll(self) -> list[HealthEvent]:
        """Internal errors logged since the last call."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                f.seek(self._log_pos)
                chunk = f.read()
                self._log_pos = f.tell()
        except FileNotFoundError:
            return []
        text = self._pending + chunk
        # keep an unfinished record (its traceback may still be being written)
        cut = text.rfind("\n") + 1
        self._pending = text[cut:]
        return parse_log(text[:cut])

    def settle(self, seconds: float = 0.2) -> list[HealthEvent]:
        """Wait briefly for log lines still in flight, then poll."""
        time.sleep(seconds)
        return self.poll()

    def rss_kib(self) -> int:
        pid = self.pid
        if pid is None:
            return 0
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self) -> int:
        pid = self.pid
        return len(os.listdir(f"/proc/{pid}/fd")) if pid is not None else 0


class InProcessSubject(logging.Handler):
    """The reference target in a thread of this process, its log records listened to.

    For tests and in-memory campaigns: no subprocess, so ``rss_kib`` and ``fds`` are
    absent, and an ERROR record of the ``iscsi_conformance.target`` logger (with its
    exception) becomes a ``HealthEvent`` placed as ``ReferenceSubject`` places it.
    ``server_factory`` builds the ``TargetServer`` (a test passes a broken one).
    """

    def __init__(
        self, iqn: str, *, luns: tuple[str, ...] = ("8M", "1M"), server_factory: Any = None
    ) -> None:
        super().__init__(logging.ERROR)
        self.iqn = iqn
        self.luns = luns
        self.host = "127.0.0.1"
        self.port = 0
        self.restarts = 0
        self._factory = server_factory
        self._server: Any = None
        self._events: list[HealthEvent] = []
        self._lock = threading.Lock()

    def __enter__(self) -> InProcessSubject:
        logging.getLogger("iscsi_conformance.target").addHandler(self)
        try:
            self.start()
        except BaseException:
            logging.getLogger("iscsi_conformance.target").removeHandler(self)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop_process()
        finally:
            logging.getLogger("iscsi_conformance.target").removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        place = msg.split(" from ")[0][:80]
        detail = msg
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
            place = f"{type(exc).__name__} at {where}"
            detail = msg + "\n" + "".join(traceback.format_exception(exc))[-4000:]
        peer = _PEER.search(msg)
        with self._lock:
            self._events.append(HealthEvent(place, detail, int(peer.group(1)) if peer else None))

    def start(self) -> None:
        from iscsi_conformance.target.config import simple_config
        from iscsi_conformance.target.server import TargetServer

        if not self.port:
            self.port = free_tcp_port(self.host)
        factory = self._factory or TargetServer
        self._server = factory(simple_config((self.host, self.port), self.iqn, list(self.luns)))
        self._server.start_in_thread()

    def stop_process(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop_thread()

    def alive(self) -> bool:
        return self._server is not None and bool(self._server.serving())

    def restart(self, *, deadline: float | None = None) -> None:
        self.stop_process()
        self.restarts += 1
        self.start()

    def poll(self) -> list[HealthEvent]:
        with self._lock:
            out, self._events = self._events, []
        return out
