"""harness.runner: how the plugin's ``pytest_pyfunc_call`` runs a conformance test."""

from __future__ import annotations

import asyncio

import pytest

from iscsi_conformance.harness.runner import run_test_function


def test_coroutine_function_runs_on_its_own_loop() -> None:
    seen: list[object] = []

    async def test(a: int) -> None:
        seen.append((a, asyncio.get_running_loop()))

    run_test_function(test, {"a": 1})
    run_test_function(test, {"a": 2})
    assert [a for a, _ in seen] == [1, 2]
    assert seen[0][1] is not seen[1][1]


def test_plain_function_is_called() -> None:
    seen: list[int] = []
    run_test_function(lambda a: seen.append(a), {"a": 3})
    assert seen == [3]


def test_timeout_bounds_the_test() -> None:
    async def test() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        run_test_function(test, {}, timeout=0.05)
