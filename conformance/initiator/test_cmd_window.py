"""Initiator.Window: an initiator facing a target that really holds its CmdSN window closed.

RFC 7143 4.2.2.1 (full text read in Mango0x45/dotfiles doc/rfc/rfc7143.txt): MaxCmdSN
is "the maximum number to be shipped"; a non-immediate command's CmdSN "can take any
value from the ExpCmdSN to the MaxCmdSN inclusive", and the target MUST silently ignore
one outside that range. A MaxCmdSN of ExpCmdSN - 1 closes the window. The initiator
takes a PDU's MaxCmdSN only when it is larger than the one it holds (a smaller one is
ignored), and both fields when MaxCmdSN < ExpCmdSN - 1. No keyword binds the initiator
itself (R7143-4.2.2.1-3, INFORMATIONAL): a breach is reported, never failed.

Unlike Initiator.Sequencing.WindowClosedAtLogin, where the proxy only rewrites the
numbers, the run's reference target serves profile "window-closed": every Login
Response of the session grants no window (MaxCmdSN = ExpCmdSN - 1) and the target
ignores what comes beyond it. HOLD seconds after a session reaches full feature phase
the test opens the window to one command through the target's test API (a NOP-In with
MaxCmdSN = ExpCmdSN, 11.4.11); each response then moves both by one. The initiator is
judged on every non-immediate request against the largest valid MaxCmdSN it had
received, and on completing a WRITE and READ (data compared) once the window opened:
an initiator that stalls is reported too, since silence is not obeying.

A command sent into the closed window would be ignored by the target, and such an
initiator would wait for an answer that never comes: the proxy records the breach and
holds the command (and its Data-Out) until the target's own PDUs open the window that
far, then passes it on, so the test ends in its usual time.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from iscsi_conformance.core import serial
from iscsi_conformance.core.pdu import (
    LoginResponse,
    LogoutRequest,
    NopOut,
    ScsiCommand,
    ScsiDataOut,
    TaskManagementRequest,
    TextRequest,
)
from iscsi_conformance.errors import ISCSIConformanceError
from iscsi_conformance.harness.observer import ObservedConnection, Observer
from iscsi_conformance.peers.base import LoginOptions
from iscsi_conformance.plugin import require, spec, violation

PROFILE = "window-closed"
ROW = "R7143-4.2.2.1-3"
HOLD = 0.5  # seconds a session's window stays closed after its login
OPEN_TO = 1  # the window once opened: one command at a time
IO_LIMIT = 20.0  # seconds for the WRITE and the READ together
LUN = 0
LBA = 20480
BLOCK = 512
BLOCKS = 8
_REQUESTS = (ScsiCommand, TaskManagementRequest, TextRequest, LogoutRequest, NopOut)


def _minus_one(sn: int) -> int:
    return (sn - 1) & 0xFFFFFFFF


class _Window:
    """Rewrite hook that follows, per connection, the largest valid MaxCmdSN the
    initiator was told (RFC 7143 4.2.2.1's three rules). The first non-immediate
    request beyond it is recorded as the breach. Such a request, and the Data-Out of
    its task, are held by the proxy and passed to the target only once the target's
    own PDUs have opened the window that far: the target would ignore it (4.2.2.1) and
    the initiator wait for an answer in vain, and one breach is all the test needs.
    The hook runs in the proxy's event loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.known: dict[int, int] = {}  # connection index -> MaxCmdSN
        self.held: dict[int, list[Any]] = {}  # connection index -> PDUs held back
        self.breach: tuple[ObservedConnection, Any, int, float] | None = None
        self.breached = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None  # the proxy's, once seen

    def __call__(self, conn: ObservedConnection, direction: str, pdu: Any) -> Any:
        self.loop = asyncio.get_running_loop()
        if conn.session_type != "Normal":
            return pdu
        if direction == "t->i":
            exp, mx = getattr(pdu, "expcmdsn", None), getattr(pdu, "maxcmdsn", None)
            if exp is None or mx is None or serial.lt(mx, _minus_one(exp)):
                return pdu  # no window, or one the initiator must ignore
            with self.lock:
                known = self.known.get(conn.index)
                if known is None or serial.gt(mx, known):
                    self.known[conn.index] = mx
                    self._release(conn, mx)
            return pdu
        with self.lock:
            held = self.held.setdefault(conn.index, [])
            if isinstance(pdu, ScsiDataOut) and any(p.itt == pdu.itt for p in held):
                held.append(pdu)  # data of a held command follows it
                return None
            if not isinstance(pdu, _REQUESTS) or pdu.immediate or not conn.in_full_feature:
                return pdu
            known = self.known.get(conn.index)
            if known is None or (serial.le(pdu.cmdsn, known) and not held):
                return pdu
            if self.breach is None and not serial.le(pdu.cmdsn, known):
                self.breach = (conn, pdu, known, time.monotonic())
                self.breached.set()
            held.append(pdu)
            return None

    def _release(self, conn: ObservedConnection, maxcmdsn: int) -> None:
        """Pass on, in order, the held PDUs the window now admits (lock held)."""
        held = self.held.get(conn.index, [])
        while held:
            first = held[0]
            if not isinstance(first, ScsiDataOut) and serial.gt(first.cmdsn, maxcmdsn):
                return
            held.pop(0)
            conn.inject(first, "i->t", note="held by the proxy until the window opened")

    def hang_up_all(self, obs: Observer) -> None:
        """From the test's thread: the proxy closes every connection (an initiator
        still waiting at the deadline gets an error instead of waiting on)."""
        if self.loop is not None:
            for conn in list(obs):
                self.loop.call_soon_threadsafe(conn.hang_up)


class _Opener(threading.Thread):
    """Opens each Normal session's window HOLD seconds after its login completed,
    through the reference target's test API (``target.set_cmd_window``)."""

    def __init__(self, target: Any, obs: Observer) -> None:
        super().__init__(name="window-opener", daemon=True)
        self.target, self.obs = target, obs
        self.stop = threading.Event()
        self.opened: dict[int, float] = {}  # TSIH -> when its window was opened
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.05):
                for conn in list(self.obs):
                    if conn.session_type != "Normal" or conn.full_feature_at is None:
                        continue
                    tsih = _tsih(conn)
                    if tsih in self.opened or time.monotonic() - conn.full_feature_at < HOLD:
                        continue
                    self.opened[tsih] = time.monotonic()
                    try:
                        self.target.set_cmd_window(tsih, OPEN_TO)
                    except LookupError:
                        pass  # the session ended before its window opened
        except BaseException as exc:  # a skip or a failure: raised again by the test
            self.error = exc


def _tsih(conn: ObservedConnection) -> int:
    answers = [e.pdu for e in conn.seen_by_initiator(LoginResponse)]
    return answers[-1].tsih if answers else 0  # type: ignore[union-attr]


def _options(target: Any) -> LoginOptions:
    chap, mutual = target.chap_for(PROFILE)
    return LoginOptions(chap=chap, mutual_chap=mutual)


@spec(
    "Initiator.Window.ClosedHonoured",
    ("RFC 7143", "4.2.2.1", "INFORMATIONAL", "initiator"),
    ("RFC 7143", "11.4.11", "INFORMATIONAL", "initiator"),
    pairing="initiator",
    requirements=[ROW],
)
def test_closed_window_honoured(initiator: Any, target: Any, observed: Any) -> None:
    """A target that grants no CmdSN window at login and opens a window of one command
    later: no non-immediate command goes beyond the MaxCmdSN the initiator was given,
    and the WRITE and READ complete once the window opens, data compared."""
    window = _Window()
    ep, obs = observed(PROFILE, window)
    opener = _Opener(target, obs)
    opener.start()
    payload = os.urandom(BLOCKS * BLOCK)
    outcome: dict[str, Any] = {}

    def io() -> None:
        handle = None
        try:
            handle = initiator.driver.login(ep, options=_options(target))
            # Once a breach is on record the verdict is known: no further sessions
            # (a driver that logs in per command would breach and be hung up again).
            if not window.breached.is_set():
                initiator.driver.write(handle, LUN, LBA, payload)
            if not window.breached.is_set():
                outcome["data"] = initiator.driver.read(handle, LUN, LBA, BLOCKS)
        except ISCSIConformanceError as exc:
            outcome["error"] = exc
        finally:
            if handle is not None:
                try:
                    initiator.driver.logout(handle)
                except ISCSIConformanceError:
                    pass  # a session the proxy hung up has nothing to log out

    worker = threading.Thread(target=io, name="window-io", daemon=True)
    worker.start()
    deadline = time.monotonic() + IO_LIMIT
    while worker.is_alive() and time.monotonic() < deadline:
        if window.breached.wait(0.1):
            break
    worker.join(max(0.0, deadline - time.monotonic()))
    stalled = worker.is_alive()
    if stalled:
        window.hang_up_all(obs)
        worker.join(5.0)
    opener.stop.set()
    opener.join(5.0)
    obs.wait_closed(3.0)
    obs.wait_quiet(0.05, 1.0)
    if opener.error is not None:
        raise opener.error
    if obs.harness_errors:
        raise violation("harness", f"the recording proxy failed: {obs.harness_errors}")
    conns = [c for c in obs if c.session_type == "Normal" and c.in_full_feature]
    if not conns:
        raise violation("harness", "no Normal connection reached full feature phase")
    for conn in conns:
        last: Any = conn.seen_by_initiator(LoginResponse)[-1].pdu
        if last.maxcmdsn != _minus_one(last.expcmdsn):
            raise violation(
                "harness",
                f"the final Login Response granted a window (ExpCmdSN {last.expcmdsn}, "
                f"MaxCmdSN {last.maxcmdsn}): nothing closed was tested",
            )
    if window.breach is not None:
        conn, pdu, held, at = window.breach
        opened = opener.opened.get(_tsih(conn))
        when = (
            f"{at - conn.full_feature_at:.2f} s after its login, the window still closed"
            if (opened is None or at < opened) and conn.full_feature_at is not None
            else "after the target opened a window of one command"
        )
        require(
            False,
            ROW,
            f"{initiator.name} sent a non-immediate {type(pdu).__name__} with CmdSN "
            f"{pdu.cmdsn} beyond MaxCmdSN {held}, the largest it had been given "
            f"({when}); the proxy held it until the window opened",
            sent=[pdu],
        )
    error = outcome.get("error")
    if stalled:
        error = ISCSIConformanceError(
            f"the WRITE and READ had not ended {IO_LIMIT:g} s after the login"
        )
    require(
        error is None and outcome.get("data") == payload,
        ROW,
        f"{initiator.name} kept within the window but did not complete its I/O once the "
        "target opened it (NOP-In, then one command at a time): "
        + (str(error) if error is not None else "the data read back differ from those written"),
    )
