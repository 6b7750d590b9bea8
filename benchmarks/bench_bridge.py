"""What the conformance bridge costs: READ throughput at 64 KiB against the reference
target directly and through the bridge, in one run, as a ratio (issue 15: at most 20%).

Starts the reference target in this process, then takes ``--rounds`` rounds of
``--seconds`` on each path, interleaved (direct, bridged, bridged, direct, ...: an
ABBA order, so that load that rises or falls during the run weighs on both paths
alike), with two initiators:

- the reference initiator (Python, ``--depth`` commands in flight), as the issue
  measures it: reference x reference with and without the bridge;
- libiscsi's ``iscsi-perf`` where installed (C, the same depth), a much faster client
  that shows the bridge's own ceiling.

The goal is judged on the median of the per-pair ratios: each bridged round against
the direct round next to it (ABBA: just before or just after), ``--rounds`` pairs of
short rounds. On this shared host the direct rounds alone vary twofold within a run
as other work comes and goes; the two rounds of a pair run within a second or two of
each other, under nearly the same load, so their ratio cancels what they share, and
the median over the pairs passes over the pairs that a burst of other work split
(falling on one round of the two). A cost of the bridge's own is paid in every
bridged round, so it is in every pair: nothing real is averaged away. Before session
8 the ratio was of one median each of three rounds of 3 s, which took a burst on
either side whole. The output also gives the range of the pair ratios, the ratio of
the medians and of the bests, and the load average at the start and the end.

The bridge runs as users run it, ``iscsi-conformance bridge`` in a process of its own,
judging every PDU (all rules on) and recording nothing to disk. Prints the median MB/s
of each side, the ratio bridged/direct, and the bridge's own summary.

Measured here (2 shared cores, load average 4 to 13 from other work, ``--seconds 3
--rounds 3``, 2026-12-07, session 4): reference initiator direct 35 to 72 MB/s, bridged
24 to 36 MB/s, ratio 0.38 to 0.82; iscsi-perf direct 440 to 815 MB/s, bridged 31 to 193
MB/s, ratio 0.07 to 0.24; a py-spy profile of the bridge had its one asyncio thread
busy all the time, in loopback sends, polls and StreamReader copies, judging about a
fifth. Session 5 (same command): before, at load 1 to 2, 0.46 and 0.15; with the relay
threads of the full feature phase (``pump._Relay``: recv_into one buffer, judge under
the connection's lock, send) and the reserved-field rule's one-mask test: reference
initiator 0.99 (load 7.7), 0.68, 0.92, 0.77 (load 8.7 to 9.9), 1.84 (load 22, the direct
rounds starved); iscsi-perf 0.35, 0.43, 0.45, 0.35, 0.53. The issue's measure (the
reference initiator, at most 20% lost) is met in 3 of 5 runs on this shared host, not
in every one: the run-to-run spread of the direct rounds alone is as large. With
iscsi-perf the three processes share two cores, and a relay's extra loopback copies
cost what the direct path does not pay (a bare Python thread relay that judges nothing
reached 0.92 here).

Session 6: a profile of the relay (py-spy on the bridge, cProfile over a recorded
conversation replayed through ``Bridge._judge_only``) put the judge at a quarter of the
relay threads' samples, and within it the field loop of ``violations()`` (a third),
the one-line summary formatted for every PDU (a fifth) and ``defaults()`` and
``parse_number()`` per key lookup. Now ``core.pdu.well_formed()`` answers for the
common PDU with one generated check and one pack, the summaries are kept as 48-byte
headers and put into words only when a breach quotes them, and the judge memoizes key
values: 96 to 34 us per PDU judged (process time, best of 7). Five runs of the command
below at load 6 to 8.5: reference initiator 0.93, 1.39, 0.99, 1.05, 1.30 (min 0.93,
median 1.05); iscsi-perf 0.29, 0.49, 0.45, 0.41, 0.28 (the relay's ceiling there is
about 220 MB/s: two loopback copies per byte and Python per PDU). Five more runs at
the end of session 6, at load 5 to 7.3 where the direct rounds reached 76 to 215 MB/s:
reference initiator 1.08, 0.81, 1.17, 0.75, 0.71 (min 0.71, median 0.81), iscsi-perf
0.35 to 0.50. Where the direct path runs near 200 MB/s the bridge's own ceiling for
this client shows (about 140 to 160 MB/s); py-spy then puts the judge at 13% of the
relay threads' samples and 85% in recv_into and send: the hop itself (two loopback
copies, two more wake-ups per PDU), no longer the judging. So the goal holds at the
loads this host usually has and not when the direct path is this fast; splice() into
a pipe (no copy through Python) would be the next step, the judge then fed by MSG_PEEK.

Session 7: the benchmark also prints the bridge process's CPU per MB relayed (user and
system, /proc), which does not swing with the load as the ratio does. It showed the
judge, not the hop, as the bridge's main cost: with iscsi-perf at load 7.9, 1.06 ms/MB
user + 0.71 system judging, 0.14 + 0.69 with the judge patched out (ratio 0.52 against
1.05), so splice() would save part of the system share only. Two changes cut the user
share: the judge asks each exercise test only of the PDU classes its gate names, and
the relay decodes whole PDUs where they lie in the received chunk (replay of a recorded
conversation 39.2 -> 26.6 us per PDU; interleaved with the previous bridge on the same
direct rounds, reference initiator, user CPU 1.79/1.62/1.58 -> 1.40/1.45/1.31 ms/MB).
Tried and dropped, no gain measured: non-blocking sends that poll only on EAGAIN (one
syscall less per send), and one relay thread per connection for both directions (no
GIL hand-over between two threads): 1.63 -> 1.55 and 2.29 -> 2.24 ms/MB, within the
noise. Five runs of the command below at load 8.3 to 11.2: reference initiator 1.25,
1.13, 0.89, 0.75, 0.80 (min 0.75, median 0.89; bridge 1.30 to 2.11 ms/MB user + 0.71 to
1.38 system), iscsi-perf 0.45, 0.26, 0.45, 0.56, 0.55. The 20% goal holds in the median,
not in every run of this shared host, where the direct rounds alone vary by 2x.

Session 8 (2026-12-07/08). The relay judges a Data-In, Data-Out or SCSI Command from
its header and forwards its data unread (pump._judge_chunk, judge.DATA_UNREAD), and a
PDU cut by a chunk's end no longer sends every later PDU through the decoder: replay
of a recorded conversation (64 KiB READs and WRITEs, 65,728-byte chunks) 26.4 to 34.1
-> 16.6 to 17.3 us per PDU; memory_bound peaks 1.62 -> 1.09 MB (256 KiB PDUs), 9.32 ->
4.76 MB (4 MiB PDUs). Live, the bridge's user CPU moved less (median of five runs
1.77 -> 1.67 ms/MB, system 1.07 -> 0.92): most of it is the relay's recv/send turns.
Tried and dropped, no gain measured: polling only on EAGAIN (again), and spinning
200 us on a non-blocking recv before sleeping (depth 1: 61.9 -> 64.5 MB/s for 2.4x
the CPU); a second thread per direction that sends while the first receives and
judges the next chunk (two buffers going round), as strace at depth 1 showed the
64 KiB loopback send to the initiator taking 0.36 to 0.47 ms of each 1.1 ms turn:
worse, 135.7 -> 105.9 MB/s median (10 interleaved rounds of 1 s, depth 8, load 1.9;
likely the queue hand-overs' wake-ups). Five pairs of runs, the old bridge (B) and
the new (A) alternating, each with 6 ABBA rounds of 2 s (ratio of medians), load 1.5
to 8.3: A 0.97, 0.93, 0.60, 0.84, 0.83; B 0.82, 0.80, 0.60, 0.74, 0.73. Five runs of the command below (median
of pair ratios) at load 0.5 to 4.4: 0.84, 0.69, 0.75, 0.78, 0.82 (min 0.69, median
0.78), iscsi-perf 0.40 to 0.48. Before (old bridge, old method: ``--seconds 3
--rounds 3``, load 1.3 to 2.5): 0.71, 0.90, 1.10, 0.99, 1.06. So the goal is not met
in every run. It fails where the direct path runs fast (direct medians of 177 and
181 MB/s in the two lowest runs, 88 to 142 in the others), and at depth 1 a 64 KiB
READ takes 0.35 ms more through the bridge (93 -> 62 MB/s): the latency of the extra
hop, most likely its two more thread wake-ups per PDU on this 2-vCPU VM, more than
the bridge's CPU (a quarter of a core at 100 MB/s), which is all a faster judge
could cut.

Also tried in session 8 and dropped: splice() for the data segments no rule reads
(socket -> pipe of 1 MiB -> socket, in the kernel; only with no capture, no fault, no
on_pdu and no data digest). Two bridges in one run, splice on and off, against the
same direct rounds (blocks of direct, A, B, direct, the order of A and B alternating).
Looking at each PDU's header with MSG_PEEK, judging it, then splicing the whole PDU:
with iscsi-perf, where the bridge is the bottleneck, worse (bridged median 198 and 251
MB/s against 259 and 340; user CPU 1.56 and 1.33 ms/MB against 1.15 and 0.96): per PDU
a poll, a peek and two splices replace a share of one 256 KiB recv and send. With the
reference initiator, no better: median of the pair ratios 0.66 to 1.02 (median 0.81)
against 0.64 to 0.93 (0.745) over 12 runs at load 1.1 to 6 (two of them without
SPLICE_F_MORE), but in the last three, comparing the two bridges' rounds side by side,
splice was ahead in 13 of 36 blocks (median 0.83 to 1.00 of the copying relay), and
its user CPU was higher in every run (by 0.05 to 0.4 ms/MB). Splicing only the rest of
a PDU cut by the end of a 256 KiB recv: neutral (iscsi-perf 260 and 334 MB/s against
306 and 323). The copies are not the hop's cost; its turns are. Other settings of the
relay, iscsi-perf, 6 blocks each, two runs or more: a 1 MiB recv buffer a little
better (four runs: 331, 342, 309, 308 MB/s against 324, 297, 302, 259; system CPU 0.57
to 0.61 against 0.68 to 0.80 ms/MB; the reference initiator 0.71 to 0.97 against 0.64
to 0.77 in four runs), but two such buffers break tests/bridge/test_memory_bound.py's
bound (at most one PDU per direction and the transports' buffers); 512 KiB neutral (3
runs); 64 KiB + 48 worse (273 and 234 against 304 and 280); SO_SNDBUF and SO_RCVBUF
fixed at 256 KiB or 1 MiB (which turns the kernel's autotuning off: 3.9 MB for the
send buffer here) neutral to worse. TCP_NODELAY is on already: asyncio sets it on its
TCP transports, and the relay's descriptors are duplicates of theirs.

Session 9 (2026-12-08, idle machine, load 1.7 to 2.3): ``--depth 8`` 0.82, 0.89, 0.86
and 0.72 / 0.91 in two runs with the bridge's ``sys.setswitchinterval(0.0002)`` (no
effect beyond the noise; dropped); ``--depth 32`` 0.85. The direct path is saturated at
depth 8 already (215 MB/s direct median, 199 at depth 32), so the depth is no lever
either. The bridge's CPU: 1.16 ms/MB user + 0.92 system at depth 8.

    python benchmarks/bench_bridge.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iscsi_conformance.initiator.client import Session
from iscsi_conformance.netutil import free_tcp_port
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer

IQN = "iqn.2024-01.org.iscsi-conformance:bench-bridge"
GOAL_CLIENT = "reference initiator"  # issue 15: reference x reference, with and without
_AVG = re.compile(r"iops average (\d+) \((\d+) MB/s\)")


def reference_read(host: str, port: int, size: int, depth: int, seconds: float) -> float:
    """MB/s of READs of ``size`` bytes, ``depth`` at a time, for ``seconds``."""

    async def run() -> float:
        async with Session.connect(host, port, IQN, timeout=10) as s:
            blocks = size // 512
            done = 0
            end = time.monotonic() + seconds
            start = time.monotonic()

            async def worker(n: int) -> None:
                nonlocal done
                lba = n * blocks
                while time.monotonic() < end:
                    await s.read(0, lba, blocks, block_size=512)
                    done += size

            await asyncio.gather(*(worker(n) for n in range(depth)))
            elapsed = time.monotonic() - start
            await s.logout()
            return done / elapsed / 1e6

    return asyncio.run(run())


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of process ``pid`` so far (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def perf_read(host: str, port: int, size: int, depth: int, seconds: float) -> float:
    url = f"iscsi://{host}:{port}/{IQN}/0"
    argv = ["iscsi-perf", "-m", str(depth), "-b", str(size // 512), "-t",
            str(max(1, round(seconds))), url]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    found = _AVG.findall(out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"iscsi-perf printed no average: {out.stdout[-300:]}{out.stderr[-300:]}")
    return float(found[-1][1])


def report(
    label: str,
    args: argparse.Namespace,
    direct: list[float],
    bridged: list[float],
    user: float,
    system: float,
    moved: float,
    load: float,
) -> str:
    """The client's lines: medians, bests, the ratio the goal is judged on, CPU."""
    d, b = statistics.median(direct), statistics.median(bridged)
    # each bridged round against the direct round next to it (ABBA: before or after)
    pairs = sorted(x / y for x, y in zip(bridged, direct, strict=True))
    goal = statistics.median(pairs)
    # the bridge's own CPU per MB relayed: what it costs the host whatever the load
    # (the ratio swings with what else runs on the cores)
    cpu = (
        f"; bridge CPU {1e3 * user / moved:.2f} ms/MB user + {1e3 * system / moved:.2f} system"
        if moved
        else ""
    )
    verdict = (
        f"issue 15's goal, at most 20%: {'met' if goal >= 0.8 else 'NOT met'}"
        if label == GOAL_CLIENT
        else "the bridge's ceiling, not the goal's measure"
    )
    return (
        f"{label}: READ {args.size} B x{args.depth}, {len(direct)} + {len(bridged)} rounds "
        f"of {args.seconds:g} s: direct median {d:.1f} MB/s (best {max(direct):.1f}), "
        f"bridged median {b:.1f} MB/s (best {max(bridged):.1f})\n"
        f"  median of the per-pair ratios {goal:.2f} (cost {100 * (1 - goal):.0f}%; "
        f"{verdict}; pairs {pairs[0]:.2f} to {pairs[-1]:.2f}); ratio of medians "
        f"{b / d:.2f}, of bests {max(bridged) / max(direct):.2f}{cpu}; "
        f"load {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1, help="per round (default 1)")
    ap.add_argument("--rounds", type=int, default=12, help="per path and client (default 12)")
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--depth", type=int, default=8)
    args = ap.parse_args(argv)
    if args.size % 512 or args.size <= 0:
        print("bench_bridge: --size must be a positive multiple of 512", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "server": {"state_dir": str(Path(tmp) / "state")},
            "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
            "targets": [{"name": IQN, "luns": [{"lun": 0, "size": "64M"}]}],
        }
        srv = TargetServer(parse_config(cfg))
        srv.start_in_thread()
        port = free_tcp_port()
        thost, tport = srv.portal()
        # the bridge as users run it: a process of its own (no GIL shared with the peers)
        proc = subprocess.Popen(
            [sys.executable, "-m", "iscsi_conformance.cli", "bridge", "--listen",
             f"127.0.0.1:{port}", "--target", f"{thost}:{tport}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # "bridge HOST:PORT -> ..." once it listens
            clients = [(GOAL_CLIENT, reference_read)]
            if shutil.which("iscsi-perf"):
                clients.append(("iscsi-perf", perf_read))
            load = os.getloadavg()[0]
            for label, fn in clients:
                direct, bridged = [], []
                user = system = moved = 0.0
                for n in range(2 * args.rounds):
                    bridge_turn = n % 4 in (1, 2)  # direct, bridged, bridged, direct, ...
                    if not bridge_turn:
                        direct.append(fn(*srv.portal(), args.size, args.depth, args.seconds))
                        continue
                    before = cpu_seconds(proc.pid)
                    rate = fn("127.0.0.1", port, args.size, args.depth, args.seconds)
                    after = cpu_seconds(proc.pid)
                    bridged.append(rate)
                    if before and after:
                        user += after[0] - before[0]
                        system += after[1] - before[1]
                        moved += rate * args.seconds
                print(report(label, args, direct, bridged, user, system, moved, load))
                load = os.getloadavg()[0]
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
            print("bridge: " + " | ".join(out.strip().splitlines()[-3:]))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            srv.stop_thread()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
