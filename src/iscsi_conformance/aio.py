"""An asyncio event loop in a daemon thread of its own, for the synchronous callers of
the in-the-middle relays (``bridge.pump.Bridge`` and ``harness.observer.Observer``).

Protocol-free: it knows nothing of iSCSI and imports nothing of ours, so both the
bridge (which builds on ``core`` alone) and the harness may use it.

    runner = LoopThread("bridge")
    runner.start(self._listen)          # the coroutine runs first; its error is raised
    ...                                  # runner.loop: call_soon_threadsafe & co.
    runner.stop(self._shutdown)          # the coroutine runs last; idempotent
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["LoopThread"]

Setup = Callable[[], Coroutine[Any, Any, None]]


class LoopThread:
    """``start(setup)`` runs ``setup()`` on a new loop in a daemon thread, then the loop
    until ``stop(shutdown)``, which runs ``shutdown()`` on it, stops it and closes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"LoopThread({self.name!r}, {'running' if self._loop else 'stopped'})"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The running loop, ``None`` before ``start()`` and after ``stop()``."""
        return self._loop

    def start(self, setup: Setup, timeout: float = 10.0) -> None:
        """Start the thread once ``setup()`` has returned on its loop.

        Raises ``OSError`` with the reason if ``setup()`` raised or did not end within
        ``timeout`` seconds; the thread is then gone. A second call does nothing.
        """
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(setup())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            reason = str(failure[0]) if failure else f"not ready in {timeout:g} s"
            self.stop()
            raise OSError(reason)

    def stop(self, shutdown: Setup | None = None, timeout: float = 5.0) -> None:
        """Run ``shutdown()`` on the loop (``timeout`` + 1 s at most), stop the loop,
        join the thread, close the loop. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        if thread is not None and thread.is_alive() and loop.is_running():
            if shutdown is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout + 1)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not loop.is_running():
            loop.close()
        self._loop = self._thread = None
