"""The initiators a hostile-target campaign (``fuzz.hostile``) runs, one case at a time.

Theory of operation: a client has a ``title``, a per-case time ``limit``, the
``host`` the proxy listens on (loopback; the micro-VM reaches it through QEMU's
user-net gateway), ``setup``/``teardown`` around the campaign, and ``run(host, port,
limit, proxy)``, which runs one case and returns None or its first failure as
``(kind, place, detail)``. The failure's kind and place are its identity.

- ``reference``: the reference initiator in this process: SendTargets discovery, then a
  session: INQUIRY, READ CAPACITY(16), a WRITE of a pattern and a READ of it back,
  logout (every other case with InitialR2T=Yes, ImmediateData=No and MaxBurstLength
  4096, so that the WRITE is asked for by four R2Ts the hostile target can damage).
  Oracles: it ends with success or one of its own errors within ``limit``
  (``hang`` otherwise), never another exception (``internal-error``, placed by type
  and innermost frame); a READ it returns without having recorded a violation
  (``ProtocolViolated``: the engine is an instrument that records what a target does
  wrong and never raises, the suite judges) returns the bytes the target holds (read
  again from the upstream target directly; ``accepted`` otherwise: a damaged Data-In
  taken as data unnoticed, against RFC 3720 3.2.4.3: the initiator MUST verify that
  the fields of a task's PDUs agree with the task); the process's peak RSS grows by less than
  ``MEMORY_BOUND_KIB`` in a case (``memory``).
- ``libiscsi`` (``tools``): ``iscsi-ls -s`` and ``iscsi-inq`` as processes;
  ``libiscsi`` with tool ``iscsi-test-cu``: one suite of libiscsi's own test tool per
  case, in turn from ``TEST_CU_SUITES``. Oracles: a tool ends by itself within the
  limit (``hang``, informational: no RFC text bounds its wait), never by a signal
  (``crash``), and the peak RSS of the tools stays under ``MEMORY_BOUND_KIB``.
- ``open-iscsi``: ``iscsiadm`` and the kernel initiator in the micro-VM
  (``peers.openiscsi``), one round per case: discovery, login, a 64 KiB O_DIRECT read,
  logout, the records deleted, each step under ``timeout`` in the guest. Oracles: the
  guest kernel logs no oops, BUG or panic and the VM stays up (``crash``); no file
  appears outside ``/etc/iscsi/nodes`` and ``/etc/iscsi/send_targets`` (``traversal``:
  a hostile name written as a path); iscsid's RSS grows by less than
  ``MEMORY_BOUND_KIB`` (``memory``); a step killed by its timeout is a ``hang``
  (informational).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from iscsi_conformance.errors import ConfigError, HarnessError, ISCSIConformanceError

__all__ = ["CLIENTS", "IQN", "MEMORY_BOUND_KIB", "TEST_CU_SUITES", "make_client"]

#: the name of the hostile target (the upstream reference target's)
IQN = "iqn.2024-01.org.iscsi-conformance:hostile"

CLIENTS = ("reference", "libiscsi", "open-iscsi")
TOOLS = {"libiscsi": ("tools", "iscsi-test-cu")}
MEMORY_BOUND_KIB = 256 * 1024
#: the suites of ``iscsi-test-cu`` a campaign runs, one per case, in turn: quick ones
#: whose commands reach the damaged Data-In, SCSI Response and login paths
TEST_CU_SUITES = (
    "SCSI.Inquiry.Standard",
    "SCSI.Read16.Simple",
    "SCSI.ReadCapacity16.Simple",
    "iSCSI.iSCSIResiduals.Read16Residuals",
    "SCSI.TestUnitReady.Simple",
    "iSCSI.iSCSIdatasn.iSCSIDataSnInvalid",
)
# The paths a hostile name written as a path could reach: the top two levels of the
# guest's root file system and the whole of the trees where files are kept (/etc but the
# records iscsiadm keeps, home directories, /usr/local, /opt, /srv, /mnt), listed before
# the campaign and after each round and compared here (the guest's clock is not the one
# the rootfs was built with: modification times do not tell what is new). A walk of the
# whole root file system costs ~15 s a round in the TCG guest.
_LIST_FILES = (
    "{ find / -xdev -maxdepth 2 -print; "
    r"find /etc /root /home /usr/local /opt /srv /mnt -xdev \( -path /etc/iscsi/nodes"
    r" -o -path /etc/iscsi/send_targets \) -prune -o -print; } 2>/dev/null"
)
# iscsid's resident set in KiB (the guest has no ps): its pid file, else a walk of /proc
_ISCSID_RSS = (
    "p=$(cat /run/iscsid.pid 2>/dev/null); "
    "[ -n \"$p\" ] && awk '/VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || "
    'for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = iscsid ] && '
    "awk '/VmRSS/ {print $2}' $d/status; done | awk '{s+=$1} END {print s+0}'"
)
# open-iscsi's own timeouts in the guest, set short at the campaign's start: SendTargets
# discovery (iscsiadm's defaults would retry a silent target 5 times, 15 s each) ...
_DISCOVERY_TIMEOUTS = (
    "'discovery.sendtargets.timeo.login_timeout = 5' "
    "'discovery.sendtargets.timeo.auth_timeout = 5' "
    "'discovery.sendtargets.timeo.active_timeout = 5' "
    "'discovery.sendtargets.reopen_max = 1'"
)
#: ... and each step of a round is killed (a ``hang``) only well past them: discovery
#: 2 x 5 s; login 5 s (node login_timeout) x 2 tries, and then the kernel's scan of the
#: new session (node.session.scan = auto: iscsiadm returns after it), whose INQUIRY,
#: when its answer is lost, waits for the SCSI timeout and error handler as a read does
#: (seen: an Abort Task 62 s after the INQUIRY); a read: the SCSI command timeout (set to
#: 5 s) then the error handler (abort 15 s, LU reset 30 s, target reset 30 s, host reset
#: 60 s, iscsid.conf); logout 15 s (logout_timeout).
STEPS = {"discovery": 40, "login": 200, "read": 180, "logout": 40}
_OOPS = re.compile(r"Oops|BUG:|Kernel panic|general protection fault|Call Trace:|KASAN")


def make_client(client: str, tool: str | None = None) -> Any:
    """The client object for ``client`` (and ``tool``); ConfigError for bad names."""
    if client not in CLIENTS:
        raise ConfigError(f"unknown initiator {client!r} (one of {', '.join(CLIENTS)})")
    if tool is not None and tool not in TOOLS.get(client, ()):
        choices = ", ".join(TOOLS.get(client, ())) or "none"
        raise ConfigError(f"--tool {tool!r} does not fit initiator {client!r} (choices: {choices})")
    if client == "reference":
        return ReferenceClient()
    if client == "libiscsi":
        return TestCuClient() if tool == "iscsi-test-cu" else LibiscsiTools()
    return OpenIscsiClient()


def _self_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Client:
    title = ""
    limit = 5.0
    min_case = 0.0  # the least time a case needs: a campaign starts none with less left
    host = "127.0.0.1"
    memory_note = ""

    async def setup(self, proxy: Any) -> None:
        return None

    async def teardown(self) -> None:
        return None


class ReferenceClient(_Client):
    title = "reference initiator"
    limit = 5.0

    def __init__(self) -> None:
        self.start_peak = _self_peak_kib()
        self.violations = 0
        self.cases = self.reads = 0

    async def _exercise(self, host: str, port: int, timeout: float, lba: int) -> bytes:
        from iscsi_conformance.initiator.client import Session, discover

        await discover(host, port, timeout=timeout)
        # every other case, the WRITE waits for R2Ts (RFC 7143 13.10, 13.11)
        r2t = {"InitialR2T": "Yes", "ImmediateData": "No", "MaxBurstLength": "4096"}
        keys = r2t if lba // 32 % 2 else None
        async with await Session.connect(host, port, IQN, timeout=timeout, keys=keys) as s:
            await s.inquiry(0)
            await s.read_capacity16(0)
            pattern = random.Random(lba).randbytes(32 * 512)
            await s.write(0, lba, pattern, block_size=512)
            data: bytes = await s.read(0, lba, 32, block_size=512)
            self.violations = len(s.violations)
            await s.logout()
            return data

    async def _truth(self, proxy: Any, lba: int, timeout: float) -> bytes:
        from iscsi_conformance.initiator.client import Session

        host, port = proxy.upstream
        async with await Session.connect(host, port, IQN, timeout=timeout) as s:
            data: bytes = await s.read(0, lba, 32, block_size=512)
            await s.logout()
            return data

    async def run(self, host: str, port: int, limit: float, proxy: Any) -> Any:
        lba = (proxy.case % 400) * 32
        before = _self_peak_kib()
        self.violations = 0
        data: bytes | None = None
        try:
            # each exchange has limit/10 to answer: with at most three damaged PDUs on
            # each connection, a clean initiator ends well within ``limit``
            data = await asyncio.wait_for(self._exercise(host, port, limit / 10, lba), limit)
        except TimeoutError as exc:
            if not isinstance(exc, ISCSIConformanceError):
                return ("hang", "reference initiator", f"still running after {limit:g} s")
        except (ISCSIConformanceError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # an internal error of the reference initiator
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
            detail = "".join(traceback.format_exception(exc))[-3000:]
            return ("internal-error", f"{type(exc).__name__} at {where}", detail)
        self.cases += 1
        self.reads += data is not None
        grew = _self_peak_kib() - before
        if grew > MEMORY_BOUND_KIB:
            return ("memory", "reference initiator peak RSS", f"grew by {grew} KiB in one case")
        if data is not None and proxy.applied and not self.violations:
            try:
                truth = await self._truth(proxy, lba, 2.0)
            except (ISCSIConformanceError, OSError, TimeoutError):
                truth = None
            if truth is not None and truth != data:
                first = next(i for i, (a, b) in enumerate(zip(data, truth, strict=False)) if a != b) \
                    if len(data) == len(truth) else min(len(data), len(truth))  # fmt: skip
                return (
                    "accepted",
                    "READ returned data the target does not hold",
                    f"{len(data)} bytes returned as good, first difference at byte {first}",
                )
        return None

    @property
    def memory_note(self) -> str:  # type: ignore[override]
        return (
            f"cases that wrote and read back: {self.reads} of {self.cases}; "
            f"this process's peak RSS: {self.start_peak // 1024} MiB at the start, "
            f"{_self_peak_kib() // 1024} MiB at the end (bound: +{MEMORY_BOUND_KIB // 1024} MiB "
            "in one case)"
        )


#: Runs argv[1:] as its own child and prints that child's peak RSS (KiB) before ending
#: as the child did (its exit status, or the signal that killed it). A child's ru_maxrss
#: counts the memory of the process it was forked from, up to its exec: forked from this
#: test process (800 MiB under coverage in CI), a 10 MiB tool would read 800 MiB. Forked
#: from this small interpreter (``-I``: no site, no coverage), it reads its own.
_MEASURE = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as exc:
        os.write(2, str(exc).encode())
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, flush=True)
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.waitstatus_to_exitcode(status))
"""


async def _tool(argv: list[str], limit: float) -> tuple[int | None, bytes, int]:
    """Run ``argv`` for at most ``limit`` s: its exit status (negative: the signal that
    ended it; None: still running at the limit, then killed), its stderr, and its own
    peak RSS in KiB (``_MEASURE``; ``RUSAGE_CHILDREN`` of this process would be the
    largest child it ever reaped, e.g. a micro-VM's QEMU)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # files, not pipes: a full pipe would stall the tool
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _MEASURE, *argv],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: a hang is killed with the tool in it
        )
        try:
            deadline = asyncio.get_running_loop().time() + limit
            while proc.poll() is None:
                if asyncio.get_running_loop().time() >= deadline:
                    return None, b"", 0
                await asyncio.sleep(0.02)
            out.seek(0)
            err.seek(0)
            peak = out.read().strip()
            return proc.returncode, err.read(), int(peak) if peak.isdigit() else 0
        finally:
            if proc.poll() is None:  # over its limit, or the campaign was interrupted
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class LibiscsiTools(_Client):
    title = "libiscsi tools (iscsi-ls -s, iscsi-inq)"
    limit = 5.0
    peak_kib = 0  # the largest peak RSS of one tool run so far

    def argvs(self, url: str, case: int) -> list[list[str]]:

        return [["iscsi-ls", "-s", url], ["iscsi-inq", f"{url}/{IQN}/0"]]

    async def setup(self, proxy: Any) -> None:
        for argv in self.argvs("iscsi://x", 0):
            if shutil.which(argv[0]) is None:
                raise ConfigError(f"{argv[0]} is not installed (libiscsi-bin)")

    async def run(self, host: str, port: int, limit: float, proxy: Any) -> Any:
        url = f"iscsi://{host}:{port}"
        for argv in self.argvs(url, proxy.case):
            code, err, peak = await _tool(argv, limit)
            self.peak_kib = max(self.peak_kib, peak)
            if code is None:
                return ("hang", argv[0], f"{' '.join(argv)} still running after {limit:g} s")
            if code < 0:
                return ("crash", f"{argv[0]} signal {-code}", err.decode(errors="replace")[-2000:])
            if peak > MEMORY_BOUND_KIB:
                return ("memory", f"{argv[0]} peak RSS", f"its peak RSS reached {peak} KiB")
        return None

    @property
    def memory_note(self) -> str:  # type: ignore[override]
        return f"the tools' peak RSS: {self.peak_kib // 1024} MiB"


class TestCuClient(LibiscsiTools):
    title = "libiscsi iscsi-test-cu"
    limit = 20.0

    def argvs(self, url: str, case: int) -> list[list[str]]:

        suite = TEST_CU_SUITES[case % len(TEST_CU_SUITES)]
        return [["iscsi-test-cu", "-s", "-t", suite, f"{url}/{IQN}/0"]]


class OpenIscsiClient(_Client):
    title = "open-iscsi (iscsiadm + kernel initiator in the micro-VM)"
    limit = 480.0  # the steps' caps (STEPS) and the listing
    min_case = 20.0  # four steps at their 5 s floor

    def __init__(self) -> None:
        self.driver: Any = None
        self.console_seen = 0
        self.iscsid_start = 0
        self.iscsid_last = 0
        self.rounds = self.rounds_read = 0
        self.files: set[str] = set()

    async def setup(self, proxy: Any) -> None:
        from iscsi_conformance.peers.openiscsi import OpenIscsiInitiator

        self.driver = OpenIscsiInitiator(login_timeout=5)
        try:
            await asyncio.to_thread(self.driver.start)
        except BaseException:
            await asyncio.to_thread(self.driver.stop)
            self.driver = None
            raise
        self.console_seen = len(self._console())
        # open-iscsi's own bounds, short, so that a hang is one beyond them (STEPS)
        await asyncio.to_thread(
            self.driver.guest,
            f"printf '%s\\n' {_DISCOVERY_TIMEOUTS} >> /etc/iscsi/iscsid.conf",
            timeout=60,
        )
        self.iscsid_start = self.iscsid_last = await asyncio.to_thread(self._iscsid_rss)
        listing = await asyncio.to_thread(self.driver.guest, _LIST_FILES, timeout=120)
        self.files = set(listing.text.splitlines())
        if len(self.files) < 50:  # a listing that failed would hide every traversal
            raise HarnessError(f"open-iscsi: cannot list the guest's files: {listing.text!r:.200}")

    async def teardown(self) -> None:
        if self.driver is not None:
            driver, self.driver = self.driver, None
            await asyncio.to_thread(driver.stop)

    def _console(self) -> str:
        vm = getattr(self.driver, "vm", None)
        return vm.console_text() if vm is not None else ""

    def _iscsid_rss(self) -> int:
        try:
            res = self.driver.guest(f"echo $({_ISCSID_RSS})", timeout=60)
        except HarnessError:
            return 0
        text = res.text.strip()
        return int(text) if text.isdigit() else 0

    def _round(self, host: str, port: int, limit: float) -> tuple[str, str]:
        from iscsi_conformance.peers.openiscsi import guest_address

        portal = f"{guest_address(host, self.driver.mode)}:{port}"
        scale = limit / OpenIscsiClient.limit  # a replay or a test may ask for less
        d, lg, rd, lo = (
            max(5, int(STEPS[k] * scale)) for k in ("discovery", "login", "read", "logout")
        )
        script = f"""
P={portal}; T={IQN}
timeout -k 2 {d} iscsiadm -m discovery -t st -p $P >/dev/null 2>&1; d=$?
iscsiadm -m node -T $T -p $P -o new >/dev/null 2>&1
timeout -k 2 {lg} iscsiadm -m node -T $T -p $P --login >/dev/null 2>&1; l=$?
r=-
if [ $l = 0 ]; then
  for i in $(seq 1 25); do
    dev=$(ls -d /sys/class/iscsi_session/session*/device/target*/*:*:*:0/block/* 2>/dev/null | head -1)
    [ -n "$dev" ] && break; sleep 0.2
  done
  [ -n "$dev" ] && echo 5 > /sys/block/${{dev##*/}}/device/timeout 2>/dev/null
  [ -n "$dev" ] && {{ timeout -k 2 {rd} dd if=/dev/${{dev##*/}} of=/dev/null bs=4096 count=16 iflag=direct status=none; r=$?; }}
fi
timeout -k 2 {lo} iscsiadm -m node -u >/dev/null 2>&1; o=$?
iscsiadm -m node -o delete >/dev/null 2>&1
iscsiadm -m discoverydb -t st -p $P -o delete >/dev/null 2>&1
echo "discovery=$d login=$l read=$r logout=$o rss=$({_ISCSID_RSS})"
{_LIST_FILES} | sed 's/^/file: /'
"""
        bound: float = d + lg + rd + lo + 60
        if limit < OpenIscsiClient.limit:
            # a round cut short by the campaign's deadline ends with it (--seconds is a
            # hard bound): the agent gives up, the round is no verdict, the VM is stopped
            bound = min(bound, limit)
        res = self.driver.guest(script, timeout=bound)
        return res.text, res.error_text

    async def run(self, host: str, port: int, limit: float, proxy: Any) -> Any:
        try:
            out, _err = await asyncio.to_thread(self._round, host, port, limit)
        except HarnessError as exc:
            out = f"agent: {exc}"
        console = self._console()
        fresh, self.console_seen = console[self.console_seen :], len(console)
        vm = getattr(self.driver, "vm", None)
        gone = vm._exited() if vm is not None else None
        oops = _OOPS.search(fresh)
        if oops or gone:
            at = fresh[oops.start() :] if oops else fresh[-2000:]
            place = "guest kernel " + (oops.group(0).rstrip(":") if oops else "VM exited")
            return ("crash", place, (gone or "") + "\n" + at[:3000])
        if out.startswith("agent:"):
            return ("hang", "guest round", out)
        head = next((line for line in out.splitlines() if line.startswith("discovery=")), "")
        steps = dict(kv.split("=", 1) for kv in head.split() if "=" in kv)
        self.rounds += 1
        if steps.get("login") == "0" and steps.get("read") == "0":
            self.rounds_read += 1
        listed = {line[6:] for line in out.splitlines() if line.startswith("file: ")}
        new = sorted(listed - self.files)
        self.files |= listed  # each new path is reported once
        if new:
            return ("traversal", "a file outside /etc/iscsi/nodes", "; ".join(new[:5]))
        for name in ("discovery", "login", "read", "logout"):
            if steps.get(name) in ("124", "137"):
                return ("hang", f"iscsiadm {name}" if name != "read" else "dd read", head)
        rss = int(steps["rss"]) if steps.get("rss", "").isdigit() else 0
        self.iscsid_last = rss or self.iscsid_last
        if rss - self.iscsid_start > MEMORY_BOUND_KIB:
            return ("memory", "iscsid RSS", f"{self.iscsid_start} KiB at the start, {rss} KiB now")
        return None

    @property
    def memory_note(self) -> str:  # type: ignore[override]
        return (
            f"rounds that logged in and read: {self.rounds_read} of {self.rounds}; "
            f"iscsid RSS: {self.iscsid_start} KiB at the start, {self.iscsid_last} KiB at the end"
        )
