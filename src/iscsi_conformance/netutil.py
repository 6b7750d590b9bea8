"""Small socket helpers shared by the peer drivers, the tests and the benchmarks.

A leaf module (it imports nothing of ours), outside the sans-IO ``core``.
"""

from __future__ import annotations

import socket

__all__ = ["free_tcp_port"]


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries on a race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
