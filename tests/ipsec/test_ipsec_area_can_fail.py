"""The IPsec area's checks can fail, and a container's namespace survives the area.

- The no-cleartext check of conformance/ipsec (``cleartext == 0 and esp > 0``) fails on
  a link with no SA: a SendTargets discovery between the two hosts in the clear is
  seen by tshark as iSCSI on TCP 3260 and no ESP.
- A host attached to another process's network namespace (how the area uses a tgt or
  libiscsi container) gets the veth end while the area lives; closing the link removes
  the veth end and the name, and leaves that process running.

Needs root: a peer test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from iscsi_conformance.initiator.client import discover
from iscsi_conformance.ipsec import DEFAULT, Capture, Link, call_in, dissect

pytestmark = [pytest.mark.peer]

IQN = "iqn.2024-01.org.example.ipsec:can-fail"


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


def test_cleartext_discovery_fails_the_wire_check(tmp_path: Path) -> None:
    _root()
    with Link(tag=f"{os.getpid()}c") as link:
        t, i = link.target, link.initiator
        target = subprocess.Popen(
            t.argv(
                sys.executable, "-m", "iscsi_conformance.cli", "target",
                "--listen", f"{t.address}:3260", "--target", IQN, "--lun", "4M",
            ),
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert target.stdout is not None
            assert "listening on" in target.stdout.readline()
            pcap = tmp_path / "clear.pcapng"
            with Capture(t, pcap):
                found = call_in(i, lambda: asyncio.run(discover(t.address, 3260, timeout=5)))
            wire = dissect(pcap)
        finally:
            target.terminate()
            target.wait(10)
    assert {x.name for x in found} == {IQN}
    assert wire.iscsi > 0 and wire.esp == 0, wire.describe()
    assert not (wire.cleartext == 0 and wire.esp > 0), "the area's check would pass in the clear"


def test_attached_namespace_outlives_the_link() -> None:
    _root()
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        time.sleep(0.3)  # unshare has exec'd sleep in its new namespace
        tag = f"{os.getpid()}a"
        link = Link(tag=tag, attach={"target": proc.pid}).open()
        try:
            shown = subprocess.run(
                ["nsenter", "-t", str(proc.pid), "-n", "ip", "-o", "addr", "show"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout  # fmt: skip
            assert link.target.ifname in shown and link.target.address in shown
        finally:
            link.close()
        assert proc.poll() is None, "closing the link killed the container's process"
        assert not {link.target.netns, link.initiator.netns} & set(netns.listnetns())
        after = subprocess.run(
            ["nsenter", "-t", str(proc.pid), "-n", "ip", "-o", "link", "show"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        assert link.target.ifname not in after, "the veth end stayed in the container"
    finally:
        proc.kill()
        proc.wait(5)


def test_replay_check_counts_only_replays(tmp_path: Path) -> None:
    """The area's anti-replay test looks for the target charon's replay refusal: a real
    replay produces it, a datagram of an unknown SPI (dropped for another reason) does not."""
    _root()
    from iscsi_conformance.ipsec import ProtectedPath, charon_available
    from iscsi_conformance.ipsec.capture import esp_datagrams, send_udp
    from iscsi_conformance.ipsec.charon import FWMARK

    if charon_available():
        pytest.skip(f"strongSwan missing: {charon_available()}")
    refusal = "ESP sequence number verification failed"
    with ProtectedPath(tmp_path) as path:
        path.establish(DEFAULT)
        t, i = path.target, path.initiator
        srv = call_in(t, lambda: socket.create_server((t.address, 3260)))
        pcap = tmp_path / "replay.pcapng"
        try:
            with Capture(t, pcap):

                def client() -> None:
                    with socket.create_connection((t.address, 3260), timeout=3) as c:
                        c.sendall(b"x" * 3000)

                call_in(i, client)
                time.sleep(0.3)
        finally:
            srv.close()
        sport, spi, _seq, payload = esp_datagrams(pcap, src=i.address)[0]
        log = path.charons["target"].log_path

        def send(data: bytes) -> int:
            before = log.read_text().count(refusal)
            mark = int(FWMARK, 16)
            call_in(i, lambda: send_udp(i.address, sport, t.address, 4500, data, mark=mark))
            time.sleep(1.0)
            return log.read_text().count(refusal) - before

        assert send(bytes([payload[0] ^ 0xFF]) + payload[1:]) == 0, "unknown SPI taken as replay"
        assert send(payload) == 1, f"replay of SPI {spi:#x} not refused"
