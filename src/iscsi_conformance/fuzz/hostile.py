"""Fuzzing initiators: a hostile target in front of the reference target.

Theory of operation: ``HostileProxy`` listens on loopback; each connection an
initiator opens is paired with a fresh connection to an upstream reference target
(``InProcessSubject``), and what the target sends is decoded PDU by PDU and, now and
then, damaged before it goes on: a field of any PDU drawn over its whole range (Data-In
offsets, DataSN and residuals, R2T offsets and lengths, StatSN, NOP-In tags, Reject
reasons, Async events...), the keys of a Login or Text Response replaced by hostile
ones (SendTargets answers with ``../`` and control characters in names, over-long
strings, IPv6 oddities in TargetAddress, CHAP challenges of odd sizes, limits of 0 or
2**32), a PDU dropped or sent twice, or its bytes tampered (lengths, padding, digests).
What the initiator sends goes upstream unchanged. Which PDUs are damaged, and how, is a
pure function of ``(seed, case)``: a case is replayed by running it again.

A case runs one client against the proxy: the reference initiator in this process
(discovery, login, INQUIRY, READ CAPACITY, READ, logout) or a libiscsi tool as a
process (``iscsi-ls -s``, ``iscsi-inq``). The oracles: the reference initiator ends
with success or one of its own errors (an ``ISCSIConformanceError``, an ``OSError``
from the transport) within its time limit, never another exception (an internal
error, placed by type and innermost frame); a libiscsi tool ends by itself within the
time limit (a hang is a failure) and never by a signal (a crash).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.errors import ISCSIConformanceError, ProtocolError
from iscsi_conformance.fuzz.campaign import CampaignReport, Failure, quiet_on_interrupt

__all__ = ["HOSTILE_VALUES", "HostileProxy", "initiator_campaign", "summary"]

IQN = "iqn.2024-01.org.iscsi-conformance:hostile"
_EDGES = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
# Values a hostile target puts in its keys (RFC 7143 6.1, 13; the CVE-2026-44943 class
# of names that walk out of a directory in a SendTargets answer).
HOSTILE_VALUES = (
    "../../../../etc/passwd",
    "iqn.2024-01.x:../../../tmp/evil",
    "iqn.2024-01.x:\x01\x1b[2J\x7f",
    "a" * 300,
    "b" * 9000,
    "",
    "[::ffff:127.0.0.1%eth0]:3260,1",
    "[fe80::1%25lo]:99999,1",
    "[::1:3260,1",
    "127.0.0.1:-1,65536",
    "127.0.0.1:3260,notanumber",
    "0",
    "4294967296",
    "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
    "0x",
    "0x1",
    "0b" + "A" * 3,
    "CRC32C,None,Bogus",
    "Reject",
    "NotUnderstood",
    "Irrelevant",
)
_TEXT_KEYS = (
    "TargetName",
    "TargetAddress",
    "TargetAlias",
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "HeaderDigest",
    "DataDigest",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxConnections",
    "ErrorRecoveryLevel",
    "TargetPortalGroupTag",
    "X-com.example.odd",
)


class _Mutator:
    """Draws the damage of one connection from its own ``random.Random``."""

    def __init__(self, rng: random.Random, rate: float) -> None:
        self.rng = rng
        # ``rate`` of the connections get one to three of their first ten PDUs damaged
        # (a discovery's login, text and logout answers; a session's login, INQUIRY,
        # READ CAPACITY and READ answers): the states after them stay reachable.
        self.targets = (
            set(rng.sample(range(10), rng.randint(1, 3))) if rng.random() < rate else set()
        )
        self.n = 0

    def _int(self, top: int) -> int:
        if self.rng.random() < 0.5:
            return min(self.rng.choice(_EDGES), top)
        return self.rng.randrange(top + 1)

    def _text(self, data: bytes, *, send_targets: bool) -> bytes:
        rng = self.rng
        try:
            pairs = list(T.parse_pairs(data))
        except ProtocolError:
            pairs = []
        for _ in range(rng.randrange(1, 4)):
            key = rng.choice(_TEXT_KEYS)
            if send_targets and rng.random() < 0.6:  # a SendTargets answer's own keys
                key = rng.choice(("TargetName", "TargetAddress"))
            kv = (key, rng.choice(HOSTILE_VALUES))
            if pairs and rng.random() < 0.5:
                pairs[rng.randrange(len(pairs))] = kv
            else:
                pairs.insert(rng.randrange(len(pairs) + 1), kv)
        raw = T.format_pairs(pairs, strict=False)
        if rng.random() < 0.2:
            raw = raw.rstrip(b"\0") + rng.choice((b"", b"=", b"\xff\xfe", b"noequals"))
        return raw

    def damage(self, pdu: P.PDU) -> tuple[list[P.PDU], P.Tamper | None]:
        """The PDUs to send in place of ``pdu`` (none, one, two) and an optional tamper."""
        rng = self.rng
        self.n += 1
        if self.n - 1 not in self.targets:
            return [pdu], None
        r = rng.random()
        if r < 0.08:
            return [], None  # dropped
        if r < 0.15:
            return [pdu, pdu], None  # sent twice
        if r < 0.25:
            kind = rng.randrange(4)
            if kind == 0:
                return [pdu], P.Tamper(data_segment_length=self._int(0xFFFFFF))
            if kind == 1:
                return [pdu], P.Tamper(bhs_patch={rng.randrange(48): rng.randrange(256)})
            if kind == 2:
                return [pdu], P.Tamper(total_ahs_length=self._int(0xFF))
            return [pdu], P.Tamper(opcode=rng.randrange(64))
        if isinstance(pdu, P.LoginResponse | P.TextResponse) and rng.random() < 0.7:
            data = self._text(pdu.data, send_targets=isinstance(pdu, P.TextResponse))
            return [dataclasses.replace(pdu, data=data)], None
        lay = type(pdu).layout
        fields = [f for f in lay.value_fields] if lay is not None else []
        if not fields:
            return [pdu], None
        f = rng.choice(fields)
        if f.is_flag:
            value: Any = not getattr(pdu, f.name)
        elif f.is_bytes:
            value = rng.randbytes(f.size)
        else:
            value = self._int(f.max_value)
        try:
            return [dataclasses.replace(pdu, **{f.name: value})], None  # type: ignore[type-var]
        except (TypeError, ValueError):
            return [pdu], None


class HostileProxy:
    """See the module doc. ``case`` and ``seed`` choose the damage of new connections."""

    def __init__(self, upstream: tuple[str, int], *, seed: int, rate: float = 0.5) -> None:
        self.upstream = upstream
        self.seed = seed
        self.rate = rate
        self.case = 0
        self._conn = 0
        self.host = "127.0.0.1"
        self.port = 0
        self.damaged = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def new_case(self, case: int) -> None:
        self.case, self._conn = case, 0

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conn += 1
        rng = random.Random(f"{self.seed}/{self.case}/{self._conn}")
        mut = _Mutator(rng, self.rate)
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, TimeoutError):
            cw.close()
            self._tasks.discard(task)
            return
        up = asyncio.create_task(self._pump_up(cr, uw))
        try:
            await self._pump_down(ur, cw, mut)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            up.cancel()
            for w in (cw, uw):
                w.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pump_up(cr: asyncio.StreamReader, uw: asyncio.StreamWriter) -> None:
        try:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()
        except OSError:
            pass
        finally:
            uw.transport.abort()

    async def _pump_down(
        self, ur: asyncio.StreamReader, cw: asyncio.StreamWriter, mut: _Mutator
    ) -> None:
        dec = P.PDUDecoder(max_data_segment_length=None)
        keys: dict[str, str] = {}
        while data := await ur.read(65536):
            dec.feed(data)
            out: list[bytes] = []
            while True:
                try:
                    pdu = dec.next_pdu()
                except ProtocolError:
                    return
                if pdu is None:
                    break
                hd, dd = dec.header_digest, dec.data_digest
                if isinstance(pdu, P.LoginResponse):
                    try:
                        keys.update(T.parse_pairs(pdu.data))
                    except ProtocolError:
                        pass
                    if pdu.transit and pdu.nsg == 3 and not pdu.status_class:
                        dec.header_digest = keys.get("HeaderDigest") == "CRC32C"
                        dec.data_digest = keys.get("DataDigest") == "CRC32C"
                sends, tamper = mut.damage(pdu)
                if tamper is not None or sends != [pdu]:
                    self.damaged += 1
                for p in sends:
                    out.append(
                        P.encode(p, strict=False, tamper=tamper, header_digest=hd, data_digest=dd)
                    )
            cw.write(b"".join(out))
            await cw.drain()


# ---------------------------------------------------------------------- clients


async def _reference_client(host: str, port: int, timeout: float) -> None:
    from iscsi_conformance.initiator.client import Session, discover

    await discover(host, port, timeout=timeout)
    async with await Session.connect(host, port, IQN, timeout=timeout) as s:
        await s.inquiry(0)
        await s.read_capacity16(0)
        await s.read(0, 0, 8)
        await s.logout()


async def _tool(argv: list[str], limit: float) -> tuple[int | None, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), limit)
        return proc.returncode, err or b""
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, b""


CLIENTS = ("reference", "libiscsi")


async def _one_case(client: str, proxy: HostileProxy, limit: float) -> tuple[str, str, str] | None:
    """Run one client against the proxy: None, or (kind, place, detail) of a failure."""
    host, port = proxy.host, proxy.port
    if client == "reference":
        try:
            # each exchange has limit/10 to answer: with at most three damaged PDUs on
            # each of the two connections, a clean initiator ends well within ``limit``
            await asyncio.wait_for(_reference_client(host, port, timeout=limit / 10), limit)
        except TimeoutError as exc:
            if isinstance(exc, ISCSIConformanceError):
                return None  # the initiator's own response timeout: a clean error
            return ("hang", "reference initiator", f"still running after {limit} s")
        except (ISCSIConformanceError, OSError, asyncio.IncompleteReadError):
            return None
        except Exception as exc:  # an internal error of the reference initiator
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
            detail = "".join(traceback.format_exception(exc))[-3000:]
            return ("internal-error", f"{type(exc).__name__} at {where}", detail)
        return None
    url = f"iscsi://{host}:{port}"
    for argv in (["iscsi-ls", "-s", url], ["iscsi-inq", f"{url}/{IQN}/0"]):
        code, err = await _tool(argv, limit)
        if code is None:
            return ("hang", argv[0], f"{' '.join(argv)} still running after {limit} s")
        if code < 0:
            return ("crash", f"{argv[0]} signal {-code}", err.decode(errors="replace")[-2000:])
    return None


def initiator_campaign(
    client: str,
    *,
    seed: int = 0,
    seconds: float = 60.0,
    max_cases: int | None = None,
    limit: float = 5.0,
    rate: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> CampaignReport:
    """Cases of ``client`` against a hostile reference target until ``seconds`` or
    ``max_cases``. A failure keeps the first case (its index in ``pdus``' place: the
    case is replayed by ``(seed, case)``) of each kind and place."""
    from iscsi_conformance.fuzz.reference import InProcessSubject

    if client not in CLIENTS:
        raise ValueError(f"unknown initiator {client!r} (one of {', '.join(CLIENTS)})")
    report = CampaignReport(target=f"{client} initiator against a hostile reference target")

    async def run(subject: InProcessSubject) -> None:
        asyncio.get_running_loop().set_exception_handler(quiet_on_interrupt)
        proxy = HostileProxy((subject.host, subject.port), seed=seed, rate=rate)
        await proxy.start()
        start = time.monotonic()
        last = start
        try:
            case = 0
            while max_cases is None or case < max_cases:
                left = start + seconds - time.monotonic()
                if left < 0.5:
                    break
                proxy.new_case(case)
                lim = min(limit, left)  # the budget is kept
                found = await _one_case(client, proxy, lim)
                if found is not None and found[0] == "hang" and lim < limit:
                    found = None  # cut short by the deadline: not a verdict
                report.cases += 1
                if found is not None:
                    kind, place, detail = found
                    old = report.failures.get((kind, place))
                    if old is not None:
                        old.count += 1
                    else:
                        # No RFC text bounds how long an initiator waits for a target
                        # that went quiet or garbled a tag: a third-party tool's hang is
                        # informational; a crash is a failure, and so is any failure of
                        # our reference initiator, which promises bounded waits.
                        level = (
                            "INFORMATIONAL" if kind == "hang" and client != "reference" else "MUST"
                        )
                        report.failures[(kind, place)] = Failure(
                            kind, place, f"seed {seed} case {case}\n{detail}", level=level,
                            phase="hostile",
                        )  # fmt: skip
                subject.poll()  # the upstream target's own health is not judged here
                case += 1
                if progress is not None and time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    progress(
                        f"[{last - start:6.1f} s] cases {report.cases}  damaged PDUs "
                        f"{proxy.damaged}  failures {len(report.failures)}"
                    )
        finally:
            report.pdus = proxy.damaged
            await proxy.stop()
            report.seconds = time.monotonic() - start

    with InProcessSubject(IQN) as subject:
        asyncio.run(run(subject))
    return report


def summary(report: CampaignReport) -> str:
    """The end-of-campaign lines of ``initiator_campaign``."""
    lines = [
        f"fuzzed the {report.target}: {report.cases} cases, {report.pdus} damaged PDUs "
        f"in {report.seconds:.1f} s ({report.cases / max(report.seconds, 1e-9):.1f} cases/s)"
    ]
    if not report.failures:
        lines.append("no failure")
    for f in report.failures.values():
        first = f.detail.splitlines()
        lines.append(
            f"FAILURE {f.kind} at {f.place} ({f.level}): {f.count} time(s), first in {first[0]}"
        )
    return "\n".join(lines)
