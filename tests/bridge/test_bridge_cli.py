"""``iscsi-conformance bridge`` as a user runs it: a real process between the reference
initiator and target that prints breaches and a summary and leaves nothing behind;
``--replay`` judges a capture; bad input is one clear error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridge_helpers import CAPTURES, GOLDEN_PORT

from iscsi_conformance.bridge.cli import main
from iscsi_conformance.initiator.client import Session
from iscsi_conformance.netutil import free_tcp_port
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer

NAME = "iqn.2024-01.org.example:bridge-cli"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[TargetServer]:
    cfg = {
        "server": {"state_dir": str(tmp_path / "state")},
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [{"name": NAME, "luns": [{"lun": 0, "size": "1M"}]}],
    }
    srv = TargetServer(parse_config(cfg))
    srv.start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()


def test_replay_of_the_golden_capture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--replay", str(CAPTURES / "session.pcap"), "--port", str(GOLDEN_PORT)]) == 0
    assert "13 connections to port 13263, 0 breaches" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "127.0.0.1:0"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--fault", "zap:NopIn"],
        ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--duration", "0"],
        ["--replay", "/nonexistent.pcap"],
    ],
)
def test_bad_input_is_one_clear_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("iscsi-conformance bridge: ")


def test_the_tool_between_two_peers(target: TargetServer, tmp_path: Path) -> None:
    port = free_tcp_port()
    host, tport = target.portal()
    pcap = tmp_path / "out.pcapng"
    proc = subprocess.Popen(
        [sys.executable, "-m", "iscsi_conformance.cli", "bridge", "--listen", f"127.0.0.1:{port}",
         "--target", f"{host}:{tport}", "--pcap", str(pcap), "--duration", "4",
         "--fault", "delay:NopOut=0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"bridge 127.0.0.1:{port} -> ")

        async def io() -> None:
            async with Session.connect("127.0.0.1", port, NAME, timeout=5) as s:
                data = os.urandom(8192)
                await s.write(0, 0, data)
                assert await s.read(0, 0, 16) == data
                await s.logout()

        started = time.monotonic()
        asyncio.run(io())
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "1 connections, 0 breaches" in out
    assert time.monotonic() - started < 10
    assert pcap.stat().st_size > 1000
