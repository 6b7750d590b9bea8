"""Benchmark the reference target against tgt with libiscsi's iscsi-perf.

Starts, in the same run, the reference target (``python -m
iscsi_conformance.target.cli`` in its own process, RAM LUN) and tgt (``tgtd -f`` on a
free loopback port with its own ``--control-port``, a LUN backed by a file in
/dev/shm so both serve from memory), then runs ``iscsi-perf`` (sequential READs,
``--depth`` in flight) against each for ``--seconds`` per block size, and prints
IOPS, MB/s and the ratio reference/tgt (median of ``--rounds`` interleaved rounds).
Absolute figures drift with the machine's load; the ratio measured side by side is
what counts.

    python benchmarks/bench_target.py --seconds 10 --rounds 3 --sizes 4096,65536
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from iscsi_conformance.netutil import free_tcp_port

IQN_REF = "iqn.2024-01.org.iscsi-conformance:bench-ref"
IQN_TGT = "iqn.2024-01.org.iscsi-conformance:bench-tgt"
_AVG = re.compile(r"iops average (\d+) \((\d+) MB/s\)")


def wait_port(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@contextlib.contextmanager
def reference_target(size: str) -> Iterator[tuple[str, int]]:
    port = free_tcp_port()
    cmd = [
        sys.executable,
        "-m",
        "iscsi_conformance.target.cli",
        "--listen",
        f"127.0.0.1:{port}",
        "--target",
        IQN_REF,
        "--lun",
        size,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"reference target did not start: {line}")
        yield f"iscsi://127.0.0.1:{port}/{IQN_REF}/0", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def tgt_target(size_bytes: int) -> Iterator[tuple[str, int]]:
    if shutil.which("tgtd") is None:
        raise RuntimeError("tgtd not installed (apt-get install tgt)")
    port, control = free_tcp_port(), free_tcp_port() % 1000 + 10000
    tmp = tempfile.mkdtemp(
        prefix="bench-tgt-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    backing = os.path.join(tmp, "lun.img")
    with open(backing, "wb") as f:
        f.truncate(size_bytes)
    proc = subprocess.Popen(
        ["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{port}", "-C", str(control)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def adm(*args: str) -> None:
        subprocess.run(
            ["tgtadm", "-C", str(control), "--lld", "iscsi", *args],
            check=True,
            capture_output=True,
            timeout=10,
        )

    try:
        wait_port(port)
        adm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN_TGT)
        adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", backing)
        adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        yield f"iscsi://127.0.0.1:{port}/{IQN_TGT}/1", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def iscsi_perf(url: str, block_bytes: int, depth: int, seconds: int) -> tuple[int, int]:
    blocks = max(1, block_bytes // 512)
    out = subprocess.run(
        ["iscsi-perf", "-m", str(depth), "-b", str(blocks), "-t", str(seconds), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    found = _AVG.findall(out.stdout + out.stderr)
    if not found:
        raise RuntimeError(
            f"iscsi-perf printed no average:\n{out.stdout[-500:]}{out.stderr[-500:]}"
        )
    iops, mbs = found[-1]
    return int(iops), int(mbs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--sizes", default="4096,65536", help="block sizes in bytes, comma-separated")
    ap.add_argument("--lun-size", default="256M")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    size_bytes = int(args.lun_size.rstrip("M")) << 20
    runs: dict[str, dict[int, list[tuple[int, int]]]] = {"reference": {}, "tgt": {}}
    cpu: dict[str, dict[int, list[float]]] = {"reference": {}, "tgt": {}}
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    with (
        reference_target(args.lun_size) as (ref_url, ref_pid),
        tgt_target(size_bytes) as (tgt_url, tgt_pid),
    ):
        for rnd in range(args.rounds):
            for size in sizes:
                # Alternate the two (and who goes first) so drift in the machine's
                # load hits both alike; report the median of the rounds.
                order = [("tgt", tgt_url, tgt_pid), ("reference", ref_url, ref_pid)]
                if rnd % 2:
                    order.reverse()
                for name, url, pid in order:
                    before = cpu_ticks(pid)
                    got = iscsi_perf(url, size, args.depth, args.seconds)
                    used = (cpu_ticks(pid) - before) * tick_us
                    runs[name].setdefault(size, []).append(got)
                    # The target's own CPU time per I/O: less distorted than IOPS by
                    # other load on a shared machine.
                    cpu[name].setdefault(size, []).append(used / max(1, got[0] * args.seconds))

    def median(v: list) -> object:  # type: ignore[type-arg]
        return sorted(v)[len(v) // 2]

    results = {n: {sz: median(v) for sz, v in per.items()} for n, per in runs.items()}
    cpu_med = {n: {sz: median(v) for sz, v in per.items()} for n, per in cpu.items()}
    print(
        f"iscsi-perf READ, {args.depth} in flight, {args.seconds} s each, median of {args.rounds} rounds"
    )
    head = f"{'size':>8} {'tgt IOPS':>10} {'tgt MB/s':>9} {'ref IOPS':>10} {'ref MB/s':>9} {'ratio':>6}"
    print(head + f" {'tgt us/IO':>10} {'ref us/IO':>10}")
    for size in sizes:
        ti, tm = results["tgt"][size]  # type: ignore[misc]
        ri, rm = results["reference"][size]  # type: ignore[misc]
        ratio = ri / ti if ti else float("nan")
        line = f"{size:>8} {ti:>10} {tm:>9} {ri:>10} {rm:>9} {ratio:>6.2f}"
        print(line + f" {cpu_med['tgt'][size]:>10.1f} {cpu_med['reference'][size]:>10.1f}")
    print("us/IO: CPU time the target process spent per I/O (user + system, all threads)")
    if args.json:
        print(
            json.dumps(
                {
                    "runs": {k: {str(s): v for s, v in d.items()} for k, d in runs.items()},
                    "cpu_us_per_io": {k: {str(s): v for s, v in d.items()} for k, d in cpu.items()},
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
