"""Where a run's time goes: seconds per phase, accumulated in this process.

Theory of operation: code that builds an image or a micro-VM artefact runs inside
``timed("images")``; ``PeerPool`` times starting and configuring peers and subtracts
the image time spent inside it, so the phases do not overlap. The plugin writes the
totals into the run's record of the results (``Run.phases``) and the CLI prints them.
Nested ``timed`` blocks of the same phase count once (the outermost).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

PHASES: dict[str, float] = {}
_open: set[str] = set()


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    """Add the wall time of the block to ``PHASES[phase]``."""
    if phase in _open:
        yield
        return
    _open.add(phase)
    started = time.monotonic()
    try:
        yield
    finally:
        _open.discard(phase)
        PHASES[phase] = PHASES.get(phase, 0.0) + time.monotonic() - started


def spent(phase: str) -> float:
    return PHASES.get(phase, 0.0)
