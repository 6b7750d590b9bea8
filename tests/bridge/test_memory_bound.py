"""Issue 15's bound: the bridge keeps at most one PDU per direction in memory, whatever
the peers declare. The reference initiator READs 64 MiB from the reference target
through a bridge in a process of its own (memory_child.py), in Data-In sequences of
16 MiB (MaxBurstLength) cut into PDUs of the size the initiator declares
(MaxRecvDataSegmentLength 256 KiB; then 16 MiB in PDUs of 4 MiB). tracemalloc in that
process gives the most the bridge held at once. It must stay within one Data-In PDU
twice (as the decoder assembles it and as decoded: its data segment is a copy) plus
asyncio's own transport buffers, which do not grow with the PDU: far under one
sequence. The same measure fails on a pump that holds a whole sequence.

Measured (2 shared cores, load 1 to 2.5, 2026-12-07; the peak over what the process held
once listening): PDUs of 16 KiB 1.00 MB, 64 KiB 0.78 MB, 256 KiB 1.02-1.05 MB, 1 MiB
2.73 MB, 4 MiB 9.15 MB (about 2 x PDU + 0.75 MB); the hoarding pump 61.6 MB for one
sequence. The three tests take about 8 s under coverage. With the relay threads of the
full feature phase (a 256 KiB receive buffer per direction), session 5: 256 KiB 1.64 MB,
4 MiB 9.32 MB; a READ and a WRITE at once (256 KiB PDUs both ways) 1.75 MB, bound 2.75
(16 MiB each way; the test moves 8 MiB each way, ~3 s under load 10). Session 8, the
relay judging Data-In and Data-Out from the header and forwarding their data unread
(the stand-in data of decode_head() is the one PDU-sized allocation left): 256 KiB
1.09 MB, 4 MiB 4.76 MB, both directions at once 1.10 MB (load 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.initiator.client import Session
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer

CHILD = Path(__file__).with_name("memory_child.py")
IQN = "iqn.2024-01.org.example:bridge-memory"
SIZE = 64 * 2**20
BURST = 2**24 - 1024  # the largest MaxBurstLength that is a whole number of blocks
MAX_BLOCKS = 65536  # the reference LU's MAXIMUM TRANSFER LENGTH: 32 MiB a READ
# asyncio's buffers, whatever the PDU size, per direction: a socket read of up to 256
# KiB, the stream reader's buffer (the socket pauses past 2 x 64 KiB: up to 384 KiB),
# the writer's (drained at 64 KiB), pump.py's 64 KiB chunk; and the judge's state. In
# the full feature phase a relay thread's 256 KiB receive buffer takes their place.
TRANSPORT = 3 * 2**19
TARGET_MRDSL = 2**18  # the Data-Out PDUs of a WRITE: what the target declares


def bound(mrdsl: int) -> int:
    """One Data-In PDU twice (assembled, decoded) plus the transports' buffers; a
    bytearray that grows keeps up to 1/8 more room (the decoder assembles in one)."""
    return 2 * (48 + mrdsl) * 9 // 8 + TRANSPORT


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TargetServer, bytes]]:
    tmp = tmp_path_factory.mktemp("bridge-memory")
    content = os.urandom(SIZE)
    (tmp / "lun0").write_bytes(content)
    cfg = {
        "server": {"state_dir": str(tmp / "state")},
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [
            {
                "name": IQN,
                "luns": [{"lun": 0, "file": str(tmp / "lun0")}],
                "parameters": {"MaxBurstLength": BURST, "MaxRecvDataSegmentLength": TARGET_MRDSL},
            }
        ],
    }
    srv = TargetServer(parse_config(cfg))
    srv.start_in_thread()
    try:
        yield srv, content
    finally:
        srv.stop_thread()


def _line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the bridge process said nothing in {timeout} s"
    line = proc.stdout.readline()
    assert line, f"the bridge process ended: {proc.stderr.read() if proc.stderr else ''}"
    return dict(json.loads(line))


def relay(
    target: TargetServer, size: int, mrdsl: int, *, hoard: bool = False, write: bytes = b""
) -> tuple[bytes, dict[str, Any]]:
    """READ ``size`` bytes through a bridge process, the initiator declaring ``mrdsl``:
    (the data, the process's report). ``write``: WRITE these bytes at the LU's second
    half at the same time, on the same session, so both directions carry large PDUs."""
    host, port = target.portal()
    argv = [sys.executable, str(CHILD), host, str(port), *(["--hoard"] if hoard else [])]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        bport = _line(proc, 30)["port"]

        async def read() -> bytes:
            keys = {"MaxBurstLength": str(BURST), "MaxRecvDataSegmentLength": str(mrdsl)}
            async with Session.connect(host, bport, IQN, keys=keys, timeout=60) as s:

                async def reads() -> bytes:
                    parts = []
                    for lba in range(0, size // 512, MAX_BLOCKS):
                        n = min(MAX_BLOCKS, size // 512 - lba)
                        parts.append(await s.read(0, lba, n, block_size=512))
                    return b"".join(parts)

                async def writes() -> None:
                    for at in range(0, len(write), MAX_BLOCKS * 512):
                        chunk = write[at : at + MAX_BLOCKS * 512]
                        await s.write(0, SIZE // 1024 + at // 512, chunk, block_size=512)

                data, _ = await asyncio.gather(reads(), writes())
                if write:
                    half = await s.read(0, SIZE // 1024, len(write) // 512, block_size=512)
                    assert half == write, "the WRITE through the bridge read back differs"
                await s.logout()
                return data

        data = asyncio.run(read())
        assert proc.stdin is not None
        proc.stdin.write("done\n")
        proc.stdin.flush()
        report = _line(proc, 30)
        proc.wait(10)
        return data, report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()


@pytest.mark.parametrize("mrdsl, size", [(2**18, SIZE), (2**22, SIZE // 4)])
def test_the_bridge_holds_one_pdu_per_direction(
    target: tuple[TargetServer, bytes], mrdsl: int, size: int
) -> None:
    srv, content = target
    data, report = relay(srv, size, mrdsl)
    assert data == content[:size]
    assert report["breaches"] == []
    assert report["pdus"][0]["t->i"] >= size // mrdsl  # all of it went through, judged
    assert report["peak"] <= bound(mrdsl), f"peak {report['peak']} bytes > {bound(mrdsl)}"


def test_both_directions_at_once_hold_one_pdu_each(target: tuple[TargetServer, bytes]) -> None:
    """A READ and a WRITE of 8 MiB each in flight together: Data-In PDUs of 256 KiB one
    way, Data-Out PDUs of 256 KiB (the target's MaxRecvDataSegmentLength) the other.
    The bridge holds at most one PDU per direction: one more PDU's worth than a READ
    alone, never a sequence."""
    srv, content = target
    size = SIZE // 8
    write = os.urandom(size)
    data, report = relay(srv, size, 2**18, write=write)
    assert data == content[:size]
    assert report["breaches"] == []
    pdus = report["pdus"][0]
    assert pdus["t->i"] >= size // 2**18 and pdus["i->t"] >= size // TARGET_MRDSL
    limit = bound(2**18) + 2 * (48 + TARGET_MRDSL) * 9 // 8
    assert report["peak"] <= limit, f"peak {report['peak']} bytes > {limit}"

    async def restore() -> None:  # the LU as the other tests know it (not bridged)
        async with Session.connect(*srv.portal(), IQN, timeout=60) as s:
            for at in range(0, size, MAX_BLOCKS * 512):
                chunk = content[SIZE // 2 + at : SIZE // 2 + at + MAX_BLOCKS * 512]
                await s.write(0, SIZE // 1024 + at // 512, chunk, block_size=512)
            await s.logout()

    asyncio.run(restore())


def test_a_pump_that_holds_a_sequence_fails_the_bound(target: tuple[TargetServer, bytes]) -> None:
    """The proof that the measure can fail: one whole sequence (16 MiB) held."""
    srv, content = target
    data, report = relay(srv, BURST + 1024, 2**18, hoard=True)
    assert data == content[: BURST + 1024]
    assert report["peak"] > bound(2**18)
    assert report["peak"] >= BURST, report["peak"]
