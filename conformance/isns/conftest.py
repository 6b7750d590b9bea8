"""The iSNS area's fixture: ``isns_server``, the run's iSNS server (RFC 4171).

One server per pytest process, started by the first test that asks for it and stopped
when the session ends (an exit cleanup covers Ctrl-C); see
``iscsi_conformance.plugin.isns`` for what a test can do with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iscsi_conformance.plugin import RUN_KEY
from iscsi_conformance.plugin.isns import IsnsServerUnderTest, run_server


@pytest.fixture(scope="session")
def _isns_session(request: pytest.FixtureRequest) -> Iterator[Any]:
    run = request.config.stash[RUN_KEY]
    yield run
    server = getattr(run, "isns", None)
    if server is not None:
        server.stop()


@pytest.fixture
def isns_server(
    request: pytest.FixtureRequest, _iscsi_pool: Any, _isns_session: Any
) -> IsnsServerUnderTest:
    """The run's iSNS server (isnsd in a container by default, or ours)."""
    return IsnsServerUnderTest(run_server(_isns_session, _iscsi_pool), _iscsi_pool, request.node)
