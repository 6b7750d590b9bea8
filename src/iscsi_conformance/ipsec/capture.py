"""The wire between the hosts, captured and dissected by tshark.

Theory of operation: :class:`Capture` runs ``dumpcap`` inside the target host's
namespace on its end of the link, for the span of a ``with`` block, into a pcapng
file. :func:`dissect` then asks tshark (an independent dissector) how many frames
carry ESP (also UDP-encapsulated, RFC 3948), IKE, and how many are cleartext iSCSI
or TCP to the iSCSI port. :class:`WireSummary.cleartext` is what the no-cleartext
assertion checks: it must be zero while the path is protected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

from iscsi_conformance.errors import HarnessError

from .hosts import Host

__all__ = ["Capture", "WireSummary", "dissect"]

_COUNTED = ("esp", "udpencap", "ike", "iscsi", "tcp_iscsi_port")


@dataclasses.dataclass(frozen=True)
class WireSummary:
    frames: int
    esp: int
    udpencap: int
    ike: int
    iscsi: int
    tcp_iscsi_port: int

    @property
    def cleartext(self) -> int:
        """Frames that show iSCSI or TCP to/from the iSCSI port in the clear."""
        return max(self.iscsi, self.tcp_iscsi_port)

    def describe(self) -> str:
        return (
            f"{self.frames} frames: {self.esp} ESP ({self.udpencap} of them UDP-encapsulated), "
            f"{self.ike} IKE, {self.iscsi} cleartext iSCSI, {self.tcp_iscsi_port} cleartext "
            f"TCP on the iSCSI port"
        )


#: How long ``Capture`` waits at its end for dumpcap to write a first frame (seconds).
FLUSH_WAIT = 5.0


class Capture:
    """``with Capture(host, path):`` records the host's link while the block runs."""

    def __init__(self, host: Host, path: Path, *, snaplen: int = 256) -> None:
        self.host, self.path, self.snaplen = host, path, snaplen
        self._proc: subprocess.Popen[bytes] | None = None
        self._header = 0  # the file's size once dumpcap listened: its headers alone

    def __enter__(self) -> Capture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        argv = self.host.argv(
            "dumpcap", "-q", "-i", self.host.ifname, "-s", str(self.snaplen),
            "-a", "duration:600", "-w", str(self.path),
        )  # fmt: skip
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # dumpcap writes the file header once it listens
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise HarnessError(f"dumpcap on {self.host.netns} exited: {err.strip()}")
            if self.path.exists() and self.path.stat().st_size > 0:
                time.sleep(0.1)
                self._header = self.path.stat().st_size
                return self
            time.sleep(0.05)
        self.__exit__()
        raise HarnessError(f"dumpcap on {self.host.netns} wrote nothing within 10 s")

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # dumpcap drops what it has not read from its socket when SIGINT ends its loop:
        # on a loaded host it may not have run at all since the block's frames came (a
        # 0.3 s block, 0 frames in the file, seen in CI). While the file holds only its
        # headers, give it up to FLUSH_WAIT to read and write them (it flushes its file
        # every half second); a block with no traffic at all pays that wait.
        deadline = time.monotonic() + FLUSH_WAIT
        while (
            time.monotonic() < deadline
            and proc.poll() is None
            and self.path.exists()
            and self.path.stat().st_size <= self._header
        ):
            time.sleep(0.1)
        time.sleep(0.2)  # let the last frames reach the file
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        killed = False
        try:
            # dumpcap writes what it still buffers as it stops: on a loaded machine that
            # can take seconds, and a SIGKILL before it would leave a capture with no frames
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            killed = True
        if proc.stderr is not None:
            proc.stderr.close()
        if killed and not any(exc):
            raise HarnessError(
                f"dumpcap on {self.host.netns} did not stop within 30 s; its capture "
                f"{self.path} may lack frames, so no verdict is drawn from it"
            )


def dissect(path: Path, *, port: int = 3260) -> WireSummary:
    """Count what tshark sees in ``path``: one pass, one field per frame and filter."""
    argv = ["tshark", "-n", "-r", str(path), "-d", f"tcp.port=={port},iscsi", "-T", "fields"]
    argv += ["-e", "frame.number", "-e", "frame.protocols", "-e", "tcp.port"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise HarnessError(f"tshark could not read {path}: {out.stderr.strip()[-300:]}")
    counts = dict.fromkeys(_COUNTED, 0)
    frames = 0
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        frames += 1
        protocols = parts[1].split(":")
        ports = parts[2].split(",") if len(parts) > 2 and parts[2] else []
        counts["esp"] += "esp" in protocols
        counts["udpencap"] += "udpencap" in protocols and "esp" in protocols
        counts["ike"] += "isakmp" in protocols
        counts["iscsi"] += "iscsi" in protocols
        counts["tcp_iscsi_port"] += "tcp" in protocols and str(port) in ports
    return WireSummary(frames=frames, **counts)


def esp_datagrams(path: Path, *, src: str) -> list[tuple[int, int, int, bytes]]:
    """The UDP-encapsulated ESP datagrams ``src`` sent in ``path``, as tshark reads
    them: (source port, SPI, sequence number, UDP payload)."""
    argv = ["tshark", "-n", "-r", str(path), "-Y", f"esp && udp && ip.src=={src}", "-T", "fields"]
    argv += ["-e", "udp.srcport", "-e", "esp.spi", "-e", "esp.sequence", "-e", "udp.payload"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise HarnessError(f"tshark could not read {path}: {out.stderr.strip()[-300:]}")
    found = []
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 4 or not parts[3]:
            continue
        found.append(
            (
                int(parts[0]),
                int(parts[1], 0),
                int(parts[2]),
                bytes.fromhex(parts[3].replace(":", "")),
            )
        )
    return found


def send_udp(src: str, sport: int, dst: str, dport: int, payload: bytes, *, mark: int = 0) -> None:
    """Send one UDP datagram with a chosen source port through a raw socket (the port
    may be bound by charon), in the calling thread's network namespace; ``mark`` is the
    socket's fwmark (charon's bypass mark keeps it out of the tunnel's routing table).
    The UDP checksum is 0 (none, allowed over IPv4)."""
    import socket
    import struct

    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        if mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.sendto(ip + udp, (dst, 0))
