"""Throughput of the reference target over IPsec against the same without, in one run.

Builds the IPsec area's two hosts (network namespaces joined by a veth, a charon on
each: kernel-libipsec over TUN on this host kernel, which has no ``esp4``), starts the
reference target on the target host with two portals: ``10.77.0.2:3260``, which the
child SA covers, and ``10.77.0.3:3261``, which nothing covers (the initiator reaches it
from a second address of its own, ``10.77.0.4``, so that neither host's tunnel route
applies). libiscsi's ``iscsi-perf`` then READs from each portal in turn, on the
initiator host, for ``--seconds`` per round; the median MB/s of ``--rounds`` interleaved
rounds and the ratio protected/clear are printed. Kernel ESP (the micro-VMs) is not
measured yet. Needs root, strongSwan and libiscsi-bin.

Measured here (2 shared cores, strongSwan 5.9.8, libiscsi 1.19, ``--seconds 3 --rounds 2``,
13 s in all): clear 1777 MB/s, kernel-libipsec 6 MB/s, ratio 0.003; charon start 0.11 s,
IKE + child SA 0.012 s. User-space ESP over TUN is the bottleneck, not iSCSI.

    python benchmarks/bench_ipsec.py --seconds 5 --rounds 3 --size 65536
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iscsi_conformance.ipsec import DEFAULT, PROFILES, ProtectedPath, charon_available

IQN = "iqn.2024-01.org.iscsi-conformance:bench-ipsec"
_AVG = re.compile(r"iops average (\d+) \((\d+) MB/s\)")


def perf(path: ProtectedPath, url: str, size: int, depth: int, seconds: int) -> int:
    argv = path.initiator.argv(
        "iscsi-perf", "-m", str(depth), "-b", str(max(1, size // 512)), "-t", str(seconds), url
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    found = _AVG.findall(out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"iscsi-perf printed no average: {out.stdout[-300:]}{out.stderr[-300:]}")
    return int(found[-1][1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--profile", default=DEFAULT.name, choices=[p.name for p in PROFILES])
    args = ap.parse_args(argv)
    why = charon_available()
    if why:
        print(f"bench_ipsec: {why}", file=sys.stderr)
        return 2
    profile = next(p for p in PROFILES if p.name == args.profile)
    with (
        tempfile.TemporaryDirectory(prefix="bench-ipsec-") as tmp,
        ProtectedPath(Path(tmp)) as path,
    ):
        t, i = path.target, path.initiator
        for cmd in (
            ["ip", "-n", t.netns, "addr", "add", "10.77.0.3/32", "dev", t.ifname],
            ["ip", "-n", i.netns, "addr", "add", "10.77.0.4/32", "dev", i.ifname],
            [
                "ip",
                "-n",
                i.netns,
                "route",
                "add",
                "10.77.0.3/32",
                "dev",
                i.ifname,
                "src",
                "10.77.0.4",
            ],
            [
                "ip",
                "-n",
                t.netns,
                "route",
                "add",
                "10.77.0.4/32",
                "dev",
                t.ifname,
                "src",
                "10.77.0.3",
            ],
        ):
            subprocess.run(cmd, check=True, timeout=10)
        started = time.monotonic()
        est = path.establish(profile)
        ike = time.monotonic() - started
        target = subprocess.Popen(
            t.argv(
                sys.executable, "-m", "iscsi_conformance.cli", "target",
                "--listen", f"{t.address}:3260", "--listen", "10.77.0.3:3261",
                "--target", IQN, "--lun", "256M",
            ),
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert target.stdout is not None
            for _ in range(2):
                target.stdout.readline()  # "listening on ..." per portal
            urls = {
                "ipsec": f"iscsi://{t.address}:3260/{IQN}/0",
                "clear": f"iscsi://10.77.0.3:3261/{IQN}/0",
            }
            mbs: dict[str, list[int]] = {k: [] for k in urls}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    mbs[name].append(perf(path, url, args.size, args.depth, args.seconds))
        finally:
            target.terminate()
            target.wait(10)
        ipsec, clear = (statistics.median(mbs[k]) for k in ("ipsec", "clear"))
        print(
            f"bench_ipsec: charon start {path.timings['charon_start']:.2f} s, IKE + child SA "
            f"{ike:.3f} s; ESP in {path.backend}, {profile.describe()}; negotiated "
            f"{est.transforms()}"
        )
        print(
            f"iscsi-perf READ {args.size} B, {args.depth} in flight, {args.seconds} s x {args.rounds}"
        )
        print(f"{'path':>8} {'MB/s (median)':>14}  rounds")
        for name in ("clear", "ipsec"):
            print(f"{name:>8} {statistics.median(mbs[name]):>14.0f}  {mbs[name]}")
        print(
            f"ratio ipsec/clear: {ipsec / clear:.3f}"
            if clear
            else "ratio: clear path moved nothing"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
