"""iSCSI throughput over IPsec against the same without, side by side in one run.

Each path is built with the IPsec area's own code (``ipsec.ProtectedPath``, and for a
micro-VM guest ``harness.ipsec_guests.boot_guest``, as ``conformance/ipsec`` builds
its hosts) and measured against a *clear path between the same two hosts*: a second
address on each end of the same link (``ProtectedPath.clear_route``, which no SA's
selectors cover) to a second portal of the same target on port 3261 (the drop policy
covers 3260 only). Rounds alternate protected, clear, protected, ...; the median MB/s
of each and the ratio protected/clear are printed, with min and max, the load
averages, and which ESP backend ran at each end.

Paths (``--path``, repeatable; the default is ``libipsec``):

- ``libipsec``: the reference target on a network namespace, libiscsi's ``iscsi-perf``
  (READ, ``--depth`` in flight) on another; ESP in charon's kernel-libipsec (user space,
  over TUN) at both ends, since this machine's kernel has no ``esp4``.
- ``kernel``: open-iscsi in its micro-VM guest reading from (and with ``--write``,
  writing to) LIO in another micro-VM guest; ESP in both guests' kernels (Debian 6.1,
  ``esp4``), the IPsec area's open-iscsi x LIO hosts. I/O is ``dd`` with direct I/O
  on the LUN's block device in the initiator guest, ``--size`` bytes a request, one
  in flight, for ``--seconds`` a round (or until the LUN's end).
- ``mixed``: open-iscsi's guest (kernel ESP) reading from the reference target on a
  network namespace (kernel-libipsec), the area's open-iscsi x reference hosts.

The reference target is never on a kernel-ESP host: it runs on this machine (a
namespace), whose kernel has no ESP, so its end is always kernel-libipsec; the micro-VM
guests' root file system has no Python to run it. The pure kernel-ESP path that exists
is therefore open-iscsi -> LIO (``kernel``), and ``mixed`` shows the reference target
with kernel ESP at the initiator's end only. Each protected round must move bytes
through the SA (the initiator guest's ``ip -s xfrm state`` counters grow by at least
what dd moved) and each clear round none of its data (under 1% of it: the protected
session's NOP-Outs go on meanwhile), or the benchmark fails.

Everything is removed on every exit, Ctrl-C and SIGTERM included: the path's close
(namespaces, taps, charons; also registered with ``atexit``) and the drivers' stop
(the VMs). Checked here (``--path kernel``): SIGINT to the benchmark's process group as the path
opened, and SIGTERM 45 s after it opened, each left no ``isc<pid>*`` namespace or tap, no charon
and no QEMU of the run within 20 s. Needs root, strongSwan; libiscsi-bin for ``libipsec``; the micro-VM peers
(``ci/provision.py peers``) for ``kernel`` and ``mixed``.

Measured here (2 cores shared with other helpers' runs, strongSwan 5.9.8, libiscsi 1.19,
Debian 6.1 guests under QEMU TCG, profile psk-gcm128-tunnel), in one run of 421 s:

    nice -n 5 python benchmarks/bench_ipsec.py --path libipsec --kernel-esp --write \
        --seconds 5 --rounds 3

    path      ESP (initiator / target)  op     protected MB/s     clear MB/s           ratio
    libipsec  libipsec / libipsec       read   2.75 (2.29-2.95)   220.79 (165.5-258.5) 0.012
    kernel    kernel / kernel           read   0.58 (0.39-0.59)     2.73 (2.02-4.31)   0.212
                                        write  0.59 (0.30-0.60)     2.61 (2.10-3.72)   0.228
    mixed     kernel / libipsec         read   1.51 (1.36-1.94)    14.94 (11.81-19.08) 0.101
                                        write  1.23 (0.60-1.60)     8.34 (8.06-18.68)  0.148

(median of 3 rounds, min-max in brackets; libipsec is iscsi-perf with 16 in flight, the
others dd with one request in flight; the ratio is of the medians.)

Load averages (1 min) 7.9 to 10.3 over the run. A run just before (282 s, load 7.9 to
8.8) gave ratios 0.209/0.222 (kernel read/write) and 0.106/0.088 (mixed) with absolute
figures 1.4 to 2 times as high: compare the ratios, not the MB/s. What bounds each: on
``kernel`` the guests' ESP is the kernel's generic C AES-GCM (``gcm_base(ctr(aes-generic),
ghash-generic)``; QEMU's default TCG CPU has no AES-NI) run under emulation, so the
ratio says what ESP costs a TCG guest, not kernel ESP on hardware; on ``libipsec`` and
``mixed`` the kernel-libipsec end (user-space ESP over TUN) caps the protected path near
2 MB/s whatever the other end does. Boots: the two guests 38 to 88 s, one guest 12 to
28 s; charon start in a guest 4 to 8 s (0.1 to 0.3 s on a namespace), IKE + child SA
0.5 to 3 s in guests (0.01 to 0.03 s between namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from iscsi_conformance.ipsec import DEFAULT, PROFILES, ProtectedPath, SaProfile, charon_available

IQN = "iqn.2024-01.org.iscsi-conformance:bench-ipsec"
CLEAR_PORT = 3261
_AVG = re.compile(r"iops average (\d+) \((\d+) MB/s\)")
_DD = re.compile(r"(\d+) bytes .*copied, ([\d.]+) s")
_SA_BYTES = re.compile(r"(\d+)\(bytes\)")
#: The negotiated keys printed for each session (the two paths must agree on them).
_KEYS = (
    "HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength", "MaxBurstLength",
    "FirstBurstLength", "ImmediateData",
)  # fmt: skip


class Measured:
    """MB/s per round of each path, and what ran where."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rounds: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.loads: list[tuple[float, float, float]] = [os.getloadavg()]

    def add(self, name: str, mbs: float) -> None:
        self.rounds.setdefault(name, []).append(mbs)

    def print(self) -> None:
        self.loads.append(os.getloadavg())
        print(f"\n== {self.title}")
        for note in self.notes:
            print(f"   {note}")
        loads = ", ".join("/".join(f"{x:.1f}" for x in load) for load in self.loads)
        print(f"   load averages (1/5/15 min) at start and end: {loads}")
        print(f"   {'path':<14} {'median':>8} {'min':>8} {'max':>8}  MB/s per round")
        for name, values in self.rounds.items():
            print(
                f"   {name:<14} {statistics.median(values):>8.2f} {min(values):>8.2f} "
                f"{max(values):>8.2f}  {', '.join(f'{v:.2f}' for v in values)}"
            )
        for op in ("read", "write"):
            ipsec, clear = self.rounds.get(f"{op} ipsec"), self.rounds.get(f"{op} clear")
            if ipsec and clear:
                c = statistics.median(clear)
                ratio = f"{statistics.median(ipsec) / c:.3f}" if c else "n/a (clear moved nothing)"
                print(f"   ratio {op} ipsec/clear (medians): {ratio}")


def _interruptible() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` and closer runs.
    Only in this process: a child it forked (pyroute2's namespace helpers) inherits the
    handler and must die of the signal as before, or the namespace calls break."""
    main = os.getpid()

    def stop(signum: int, _frame: Any) -> None:
        if os.getpid() != main:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


@contextlib.contextmanager
def _closing(closers: list[Callable[[], None]]) -> Iterator[list[Callable[[], None]]]:
    """Run ``closers`` last first on the way out, each even when another fails."""
    try:
        yield closers
    finally:
        while closers:
            with contextlib.suppress(Exception):
                closers.pop()()


def _describe(path: ProtectedPath, profile: SaProfile, est: Any) -> list[str]:
    hosts = []
    for h in path.link.hosts:
        where = "micro-VM guest" if h.shell is not None else f"namespace {h.netns}"
        hosts.append(f"{h.role} host: {where} {h.address}, ESP in {path.modes()[h.role]}")
    t = path.timings
    return [
        *hosts,
        f"{profile.describe()}; negotiated {est.transforms()}",
        f"charon start {t.get('charon_start', 0):.2f} s, IKE + child SA {est.ike_seconds:.3f} s",
    ]


# ---------------------------------------------------------------- kernel-libipsec


def perf(path: ProtectedPath, url: str, size: int, depth: int, seconds: int) -> float:
    """MB/s (10^6 bytes/s, as dd's) of one iscsi-perf READ round, from its average IOPS
    (its own MB/s is a whole number, too coarse for the protected path)."""
    argv = path.initiator.argv(
        "iscsi-perf", "-m", str(depth), "-b", str(max(1, size // 512)), "-t", str(seconds), url
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    found = _AVG.findall(out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"iscsi-perf printed no average: {out.stdout[-300:]}{out.stderr[-300:]}")
    return int(found[-1][0]) * size / 1e6


def _reference_target(path: ProtectedPath, clear: str, closers: list[Callable[[], None]]) -> None:
    """The reference target on the target host, at the protected and the clear portal."""
    t = path.target
    target = subprocess.Popen(
        t.argv(
            sys.executable, "-m", "iscsi_conformance.cli", "target",
            "--listen", f"{t.address}:3260", "--listen", f"{clear}:{CLEAR_PORT}",
            "--target", IQN, "--lun", "256M",
        ),
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip

    def stop() -> None:
        target.terminate()
        try:
            target.wait(10)
        except subprocess.TimeoutExpired:
            target.kill()
            target.wait(5)

    closers.append(stop)
    assert target.stdout is not None
    for _ in range(2):
        line = target.stdout.readline()  # "listening on ..." per portal
        if "listening on" not in line:
            raise RuntimeError(f"reference target did not start: {line!r}")


def bench_libipsec(args: argparse.Namespace, profile: SaProfile, workdir: Path) -> Measured:
    out = Measured(
        f"reference target over kernel-libipsec: libiscsi iscsi-perf READ {args.size} B, "
        f"{args.depth} in flight, {args.seconds} s x {args.rounds} rounds"
    )
    with ProtectedPath(workdir) as path, _closing([]) as closers:
        _ini, clear = path.clear_route()
        est = path.establish(profile)
        out.notes += _describe(path, profile, est)
        _reference_target(path, clear, closers)
        urls = {"read ipsec": f"iscsi://{path.target.address}:3260/{IQN}/0",
                "read clear": f"iscsi://{clear}:{CLEAR_PORT}/{IQN}/0"}  # fmt: skip
        for _ in range(args.rounds):
            for name, url in urls.items():
                out.add(name, perf(path, url, args.size, args.depth, args.seconds))
    return out


# ---------------------------------------------------------------- guests (kernel ESP)


def sa_bytes(shell: Any) -> int:
    """Bytes the guest's SAs (both directions) have carried, per ``ip -s xfrm state``."""
    res = shell.run(["ip", "-s", "xfrm", "state"], check=True, timeout=30)
    return sum(int(n) for n in _SA_BYTES.findall(res.text))


def esp_crypto(shell: Any) -> str:
    """Which kernel crypto driver the guest's ESP transform got (``/proc/crypto``), and
    whether its virtual CPU has AES-NI (QEMU's default TCG CPU has not)."""
    res = shell.run(
        "awk -F': ' '/^name/{n=$2} /^driver/{if (n ~ /rfc4106|gcm|cbc|hmac/) print n\" = \"$2}' "
        "/proc/crypto | sort -u | head -4; "
        "grep -qw aes /proc/cpuinfo && echo 'CPU flag aes: yes' || echo 'CPU flag aes: no'",
        timeout=30,
    )
    return "; ".join(line.strip() for line in res.text.splitlines() if line.strip())


def dd_round(shell: Any, device: str, op: str, size: int, seconds: int) -> tuple[int, float]:
    """Bytes moved and seconds taken by one round of direct ``dd`` on ``device`` in the
    guest."""
    io = (
        f"if={device} of=/dev/null iflag=direct"
        if op == "read"
        else f"if=/dev/zero of={device} oflag=direct"
    )
    # SIGINT makes dd print what it moved; the LUN's end stops it too
    res = shell.run(f"timeout -s INT {seconds} dd {io} bs={size} 2>&1; true", timeout=seconds + 60)
    found = _DD.findall(res.text)
    if not found:
        raise RuntimeError(f"dd printed no summary: {res.text[-300:]}")
    return int(found[-1][0]), float(found[-1][1])


def _login(idriver: Any, host: str, port: int, tag: int) -> tuple[Any, str]:
    from iscsi_conformance.peers.base import TargetEndpoint

    session = idriver.login(TargetEndpoint(host, port, IQN, luns=(0,), portal_group_tag=tag))
    return session, idriver.device(session, 0)


def _guest_rounds(
    args: argparse.Namespace,
    out: Measured,
    path: ProtectedPath,
    idriver: Any,
    clear: str,
    clear_tag: int,
) -> None:
    """Log in to both portals, then alternate dd rounds and check the SA counters."""
    shell = path.initiator.shell
    devices = {}
    for name, host, port, tag in (
        ("ipsec", path.target.address, 3260, 1),
        ("clear", clear, CLEAR_PORT, clear_tag),
    ):
        session, devices[name] = _login(idriver, host, port, tag)
        keys = session.negotiated
        out.notes.append(
            f"{name} session: {host}:{port} -> {devices[name]}; "
            + ", ".join(f"{k}={keys.get(k)}" for k in _KEYS)
        )
    out.notes.append(f"initiator guest's ESP crypto: {esp_crypto(shell)}")
    ops = ("read", "write") if args.write else ("read",)
    through = {"ipsec": 0, "clear": 0}
    moved = {"ipsec": 0, "clear": 0}
    for _ in range(args.rounds):
        for op in ops:
            for name in ("ipsec", "clear"):
                before = sa_bytes(shell)
                done, took = dd_round(shell, devices[name], op, args.size, args.seconds)
                through[name] += sa_bytes(shell) - before
                moved[name] += done
                out.add(f"{op} {name}", done / took / 1e6 if took else 0.0)
    out.notes.append(
        f"bytes through the SAs (initiator guest's ip -s xfrm state) / bytes dd moved: "
        f"protected rounds {through['ipsec']} / {moved['ipsec']}, "
        f"clear rounds {through['clear']} / {moved['clear']} (the protected session's "
        f"NOP-Outs go on meanwhile)"
    )
    # ESP carries at least the data; a clear round's data never enters an SA
    if through["ipsec"] < moved["ipsec"] or through["clear"] * 100 > moved["clear"]:
        raise RuntimeError(
            f"the paths are not what they claim: SA bytes / data moved, protected "
            f"{through['ipsec']} / {moved['ipsec']}, clear {through['clear']} / {moved['clear']}"
        )


def bench_kernel(args: argparse.Namespace, profile: SaProfile, workdir: Path) -> Measured:
    from iscsi_conformance.harness.ipsec_guests import boot_guest
    from iscsi_conformance.peers.base import LunSpec, TargetSpec
    from iscsi_conformance.peers.lio import LioTarget
    from iscsi_conformance.peers.openiscsi import OpenIscsiInitiator

    ops = "READ and WRITE" if args.write else "READ"
    out = Measured(
        f"open-iscsi (guest) -> LIO (guest), kernel ESP at both ends: dd {ops} {args.size} B "
        f"direct, 1 in flight, {args.seconds} s x {args.rounds} rounds"
    )
    with _closing([]) as closers:
        started = time.monotonic()
        idriver = OpenIscsiInitiator(mode="microvm", login_timeout=15)
        ini = boot_guest(idriver, closers, "i")
        tdriver = LioTarget(mode="microvm")
        tgt = boot_guest(tdriver, closers, "t")
        out.notes.append(
            f"guests booted in {time.monotonic() - started:.0f} s: {idriver.version()}; "
            f"LIO {tdriver.version()}"
        )
        tdriver.configure(TargetSpec(IQN, luns=(LunSpec(args.lun_mib << 20),)))
        tdriver.add_portal_group(IQN)  # TPG 2 on port 3261, the same LUN
        path = ProtectedPath(workdir, guests={"initiator": ini, "target": tgt})
        closers.append(path.close)
        path.open()
        _ini, clear = path.clear_route()
        est = path.establish(profile)
        out.notes += _describe(path, profile, est)
        closers.append(idriver.stop)  # logs out first, before the path and VMs go
        _guest_rounds(args, out, path, idriver, clear, clear_tag=2)
    return out


def bench_mixed(args: argparse.Namespace, profile: SaProfile, workdir: Path) -> Measured:
    from iscsi_conformance.harness.ipsec_guests import boot_guest
    from iscsi_conformance.peers.openiscsi import OpenIscsiInitiator

    ops = "READ and WRITE" if args.write else "READ"
    out = Measured(
        f"open-iscsi (guest, kernel ESP) -> reference target (namespace, kernel-libipsec): "
        f"dd {ops} {args.size} B direct, 1 in flight, {args.seconds} s x {args.rounds} rounds"
    )
    with _closing([]) as closers:
        started = time.monotonic()
        idriver = OpenIscsiInitiator(mode="microvm", login_timeout=15)
        ini = boot_guest(idriver, closers, "i")
        out.notes.append(f"guest booted in {time.monotonic() - started:.0f} s: {idriver.version()}")
        path = ProtectedPath(workdir, guests={"initiator": ini})
        closers.append(path.close)
        path.open()
        _ini, clear = path.clear_route()
        est = path.establish(profile)
        out.notes += _describe(path, profile, est)
        _reference_target(path, clear, closers)
        closers.append(idriver.stop)
        # the reference target's two portals are in one portal group
        _guest_rounds(args, out, path, idriver, clear, clear_tag=1)
    return out


BENCHES = {"libipsec": bench_libipsec, "kernel": bench_kernel, "mixed": bench_mixed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--path", action="append", choices=sorted(BENCHES), default=None,
                    help="which path to measure (repeatable; default libipsec)")  # fmt: skip
    ap.add_argument("--kernel-esp", action="store_true",
                    help="the kernel-ESP paths: the same as --path kernel --path mixed")  # fmt: skip
    ap.add_argument("--seconds", type=int, default=5, help="per round and path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=65536, help="bytes per request")
    ap.add_argument("--depth", type=int, default=16, help="iscsi-perf's commands in flight")
    ap.add_argument("--write", action="store_true", help="guests: measure writes too")
    ap.add_argument("--lun-mib", type=int, default=64, help="LIO's LUN, in MiB")
    ap.add_argument("--profile", default=DEFAULT.name, choices=[p.name for p in PROFILES])
    args = ap.parse_args(argv)
    paths = list(args.path or [])
    if args.kernel_esp:
        paths += [p for p in ("kernel", "mixed") if p not in paths]
    paths = paths or ["libipsec"]
    why = charon_available()
    if why:
        print(f"bench_ipsec: {why}", file=sys.stderr)
        return 2
    profile = next(p for p in PROFILES if p.name == args.profile)
    _interruptible()
    started = time.monotonic()
    results = []
    try:
        for name in paths:
            with tempfile.TemporaryDirectory(prefix=f"bench-ipsec-{name}-") as tmp:
                results.append(BENCHES[name](args, profile, Path(tmp)))
            results[-1].print()
    except KeyboardInterrupt as exc:
        print(
            f"bench_ipsec: interrupted ({str(exc) or 'Ctrl-C'}); everything removed",
            file=sys.stderr,
        )
        return 130
    print(f"\nbench_ipsec: {' '.join(sys.argv[1:])}: {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
