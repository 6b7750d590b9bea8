"""Shared helpers of the reference initiator's tests (a native tgtd on loopback).

The daemon comes from the project's own tgt driver (``peers/tgt.py``: free portal
port, private management channel), configured with a few targets: plain (digests
allowed), CHAP one-way, CHAP mutual, and one with small burst/segment limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from iscsi_conformance.peers.base import ChapAccount, TargetEndpoint

T = TypeVar("T")

PREFIX = "iqn.2024-01.org.iscsi-conformance.test-initiator"
CHAP = ChapAccount("alice", "alice-secret-12")
MUTUAL_IN = ChapAccount("bob", "bob-secret-1234")
MUTUAL_OUT = ChapAccount("tgtuser", "target-secret-99")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine to completion with an overall time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class TgtTargets:
    driver: Any
    plain: TargetEndpoint
    chap: TargetEndpoint
    mutual: TargetEndpoint
    small: TargetEndpoint

    @property
    def host(self) -> str:
        return self.plain.host

    @property
    def port(self) -> int:
        return self.plain.port
