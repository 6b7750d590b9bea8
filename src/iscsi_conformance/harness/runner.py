"""Running one conformance test function, whatever its kind.

Theory of operation: conformance tests are mostly ``async def`` (they drive raw
connections), and the plugin does not depend on an asyncio pytest plugin: each such
test runs on a fresh event loop of its own (``asyncio.run``), so that nothing a test
leaves behind (a task, a half-closed transport) reaches the next one. The whole test
is bounded by ``timeout`` seconds: a peer that stops answering fails the test with
``TimeoutError`` instead of hanging the run. A plain ``def`` test is called as is.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

#: Seconds one test may take, all its exchanges together.
TEST_TIMEOUT = 120.0


def run_test_function(
    function: Callable[..., Any], kwargs: Mapping[str, Any], *, timeout: float = TEST_TIMEOUT
) -> None:
    """Call ``function(**kwargs)``; a coroutine function runs to completion on a new
    event loop, within ``timeout`` seconds."""
    if inspect.iscoroutinefunction(function):
        asyncio.run(asyncio.wait_for(function(**kwargs), timeout=timeout))
    else:
        function(**kwargs)
