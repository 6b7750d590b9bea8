"""aio.LoopThread: the loop thread of the bridge and the observer."""

from __future__ import annotations

import asyncio
import threading

import pytest

from iscsi_conformance.aio import LoopThread


def test_setup_runs_first_then_the_loop_serves_until_stop() -> None:
    runner = LoopThread("aio-test")
    seen: list[str] = []

    async def setup() -> None:
        seen.append("setup")

    async def shutdown() -> None:
        seen.append("shutdown")

    runner.start(setup)
    loop = runner.loop
    assert loop is not None and seen == ["setup"]
    fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "served"), loop)
    assert fut.result(5) == "served"
    runner.start(setup)  # a second start does nothing
    assert seen == ["setup"]
    runner.stop(shutdown)
    assert seen == ["setup", "shutdown"] and runner.loop is None and loop.is_closed()
    assert not any(t.name == "aio-test" for t in threading.enumerate())
    runner.stop(shutdown)  # idempotent
    assert seen == ["setup", "shutdown"]


def test_a_failing_setup_is_one_oserror_and_leaves_nothing_running() -> None:
    runner = LoopThread("aio-fail")

    async def setup() -> None:
        raise OSError("address in use")

    with pytest.raises(OSError, match="address in use"):
        runner.start(setup)
    assert runner.loop is None
    assert not any(t.name == "aio-fail" for t in threading.enumerate())


def test_a_setup_that_never_ends_times_out() -> None:
    runner = LoopThread("aio-slow")

    async def setup() -> None:
        await asyncio.sleep(30)

    with pytest.raises(OSError, match=r"not ready in 0\.2 s"):
        runner.start(setup, timeout=0.2)
    assert runner.loop is None
    assert not any(t.name == "aio-slow" for t in threading.enumerate())
