"""The bridge alone in a process of its own, its memory traced (tracemalloc), for
test_memory_bound.py. Started as ``python memory_child.py HOST PORT [--hoard]``: it
prints one JSON line ``{"port": N}`` once listening, relays until a line arrives on
stdin, then prints ``{"peak": bytes, "pdus": [...], "breaches": [...]}`` and stops.

``peak`` is the most memory the process held at once while relaying, over what it
held once listening: everything the bridge allocates (decoders, chunks, transport
buffers, judge state), whatever module allocates it, and nothing of the peers, which
run in the test's process.

``--hoard`` plants the fault the bound is about: a pump that forwards a Data-In
sequence only once it is complete (F bit), so it holds a whole sequence.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from typing import Any

from iscsi_conformance.bridge.judge import T2I
from iscsi_conformance.bridge.pump import Bridge
from iscsi_conformance.core.pdu import ScsiDataIn


def plant_hoarding_pump() -> None:
    """The broken pump: every PDU goes through _handle, and Data-In waits for F."""
    handle = Bridge._handle
    hoards: dict[tuple[int, str], bytearray] = {}

    async def hoarding(self: Bridge, conn: Any, direction: Any, pdu: Any, raw: bytes,
                       writer: Any, out: bytearray) -> str:  # fmt: skip
        scratch = bytearray()
        action = await handle(self, conn, direction, pdu, raw, writer, scratch)
        hoard = hoards.setdefault((conn.index, direction), bytearray())
        hoard += scratch
        if not (direction == T2I and isinstance(pdu, ScsiDataIn) and not pdu.final):
            out += hoard
            hoard.clear()
        return action

    Bridge._handle = hoarding  # type: ignore[method-assign]
    Bridge._fast = lambda self, conn: False  # type: ignore[method-assign]


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    if "--hoard" in sys.argv[3:]:
        plant_hoarding_pump()
    tracemalloc.start()
    bridge = Bridge((host, port))
    bridge.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    print(json.dumps({"port": bridge.port}), flush=True)
    try:
        sys.stdin.readline()
        bridge.wait_closed(10)
        peak = tracemalloc.get_traced_memory()[1] - base
        print(json.dumps({
            "peak": peak,
            "pdus": [c.pdus for c in bridge.connections],
            "breaches": [str(b) for b in bridge.breaches] + bridge.harness_errors,
        }), flush=True)  # fmt: skip
    finally:
        bridge.stop()


if __name__ == "__main__":
    main()
