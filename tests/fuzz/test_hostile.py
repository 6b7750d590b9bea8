"""Fuzzing initiators (fuzz.hostile): the reference initiator against a hostile
reference target ends every case cleanly within its time limit; the proxy really
damages what it forwards; and the internal error it found is fixed (issue 14). That
the oracles can fail, and that failures are shrunk, saved and replayed:
test_hostile_repro.py."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from typing import Any

import pytest

from iscsi_conformance.core.negotiation import NegotiatedParameters
from iscsi_conformance.core.pdu import ScsiDataIn
from iscsi_conformance.fuzz import hostile
from iscsi_conformance.fuzz.hostile import initiator_campaign
from iscsi_conformance.initiator.engine import (
    InitiatorConnection,
    ProtocolViolated,
    SessionSequencer,
)


def test_reference_initiator_survives_a_hostile_target() -> None:
    seconds = 30.0  # a bound for a loaded machine: 40 cases take about 3 s
    start = time.monotonic()
    report = initiator_campaign("reference", seed=0, seconds=seconds, max_cases=40)
    assert time.monotonic() - start <= seconds * 1.05 + 1.0
    assert not report.failures, hostile.summary(report)
    assert report.cases >= 10 and report.pdus >= 5, hostile.summary(report)
    # not vacuous: most cases got as far as a WRITE and its READ back
    reads = re.search(r"cases that wrote and read back: (\d+) of (\d+)", hostile.summary(report))
    assert reads and int(reads[1]) >= int(reads[2]) // 2, hostile.summary(report)


def test_data_in_with_a_hostile_offset_allocates_nothing() -> None:
    """A Data-In whose Buffer Offset is near 2**32 (what the hostile target found) is a
    violation (RFC 7143 11.7.6) and nothing beyond what was asked is buffered: before the
    fix the reference initiator allocated up to 4 GiB and stalled its event loop."""
    seq = SessionSequencer(10, expcmdsn=10, maxcmdsn=40)
    c = InitiatorConnection(seq, params=NegotiatedParameters(), expstatsn=5)
    itt = c.start_command(0, bytes(16), expected_in=512)
    c.pdus_to_send()
    events = c.receive_pdu(
        ScsiDataIn(itt=itt, datasn=0, buffer_offset=0xFFFFFF00, data=b"x" * 64,
                   expcmdsn=11, maxcmdsn=40)
    )  # fmt: skip
    assert any(
        "beyond the expected" in e.message for e in events if isinstance(e, ProtocolViolated)
    )
    assert len(c.tasks[itt].data_in) <= 512


@pytest.mark.peer
def test_libiscsi_tools_against_a_hostile_target() -> None:
    """libiscsi's tools never die by a signal; their hangs (no timeout of their own on a
    silent target) are informational."""
    if shutil.which("iscsi-inq") is None or shutil.which("iscsi-ls") is None:
        if os.environ.get("CI"):
            pytest.fail("libiscsi's tools (iscsi-ls, iscsi-inq) are not installed")
        pytest.skip("libiscsi's tools are not installed")
    report = initiator_campaign("libiscsi", seed=0, seconds=8, limit=3.0)
    assert report.cases >= 1
    assert not report.failing(strict=False), hostile.summary(report)


def test_proxy_damages_what_it_forwards() -> None:
    async def run() -> Any:
        from iscsi_conformance.fuzz.reference import InProcessSubject
        from iscsi_conformance.initiator.client import discover

        names: list[str] = []
        with InProcessSubject(hostile.IQN) as subject:
            proxy = hostile.HostileProxy((subject.host, subject.port), seed=0, rate=1.0)
            await proxy.start()
            try:
                for case in range(80):
                    proxy.new_case(case)
                    try:
                        found = await discover(proxy.host, proxy.port, timeout=0.5)
                        names += [t.name for t in found]
                    except Exception:
                        pass
                    if any(n != hostile.IQN for n in names):
                        break
            finally:
                await proxy.stop()
        return proxy.damaged, names

    damaged, names = asyncio.run(run())
    assert damaged >= 5
    assert any(n != hostile.IQN for n in names), names


def test_a_tool_s_peak_rss_is_its_own() -> None:
    """The libiscsi tools' memory verdict reads each tool's own peak RSS (wait4), not the
    largest child this process ever had: a 300 MiB child reaped before must not make a
    small tool's run a memory failure, and a tool's own growth is seen."""
    import subprocess
    import sys

    from iscsi_conformance.fuzz import hostile_clients as hc

    big = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"
    subprocess.run([sys.executable, "-c", big], check=True)  # an earlier, larger child
    mine = bytearray(300 << 20)  # and this process large (as under coverage in CI)
    mine[::4096] = b"x" * len(mine[::4096])
    code, err, peak = asyncio.run(hc._tool([sys.executable, "-I", "-c", "pass"], 10))
    del mine
    assert code == 0 and 0 < peak < 100 << 10
    code, err, peak = asyncio.run(hc._tool([sys.executable, "-c", big], 10))
    assert code == 0 and peak > 300 << 10
    code, err, peak = asyncio.run(
        hc._tool([sys.executable, "-c", "import os; os.write(2, b'x'); os.abort()"], 10)
    )
    assert code == -6 and err == b"x"  # died by SIGABRT: the crash verdict's input
    code, _, _ = asyncio.run(hc._tool(["sleep", "30"], 0.3))
    assert code is None  # over the limit: a hang, and the tool is gone
