"""A forked child inherits the exit handlers: it must not remove its parent's peers.

pyroute2 forks a helper to reach a network namespace and ends it with SIGTERM; before
the handler checked its process, that child ran the parent's cleanups and removed the
parent's tgt container (seen in the IPsec area, issue 11).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from iscsi_conformance.peers.process import register_cleanup, unregister_cleanup


class _Peer:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def close(self) -> None:
        self.marker.write_text(str(os.getpid()))


def test_forked_child_killed_by_sigterm_runs_no_cleanup(tmp_path: Path) -> None:
    peer = _Peer(tmp_path / "cleaned")
    register_cleanup(peer)
    try:
        pid = os.fork()
        if pid == 0:  # the child: wait to be ended, as pyroute2's helper is
            time.sleep(10)
            os._exit(0)
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    finally:
        unregister_cleanup(peer)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert not peer.marker.exists(), "the child ran the parent's cleanup"
