"""Initiator campaigns keep what they find (issue 14): each distinct failure is shrunk
by ddmin over the hostile mutations of its case, saved as a reproducer with the pcapng
of its connections, and replays to the same failure; the oracles on what an initiator
sends and on the data it returns can fail."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.fuzz import hostile, hostile_clients
from iscsi_conformance.fuzz.campaign import Failure
from iscsi_conformance.fuzz.hostile import Mutation, _SentChecker
from iscsi_conformance.fuzz.repro import load


def _fragile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference initiator that raises on a hostile target name in discovery."""
    real = hostile_clients.ReferenceClient._exercise

    async def fragile(self: Any, host: str, port: int, timeout: float, lba: int) -> bytes:
        from iscsi_conformance.initiator.client import discover

        for t in await discover(host, port, timeout=timeout):
            if ".." in t.name or any(ord(c) < 32 for c in t.name):
                raise KeyError(t.name)
        return await real(self, host, port, timeout, lba)

    monkeypatch.setattr(hostile_clients.ReferenceClient, "_exercise", fragile)


def test_a_failure_is_shrunk_saved_and_replayed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fragile(monkeypatch)
    saved: list[Path] = []

    def keep(f: Failure, plan: Any, tape: Any) -> None:
        saved.append(
            hostile.save_reproducer(
                f, plan, tape, tmp_path, client="reference", tool=None, seed=0, limit=5.0
            )
        )

    report = hostile.initiator_campaign(
        "reference", seed=43, seconds=30, max_cases=8, rate=1.0, saved=keep
    )
    key = ("internal-error", "KeyError at test_hostile_repro.py:fragile")
    assert key in report.failures, hostile.summary(report)
    f = report.failures[key]
    assert f.shrunk, f.detail
    path = next(p for p in saved if "KeyError" in p.name)
    finding = load(path)
    assert finding["role"] == "initiator" and finding["client"] == "reference"
    # one hostile name in one SendTargets answer is the whole cause
    assert len(finding["mutations"]) == 1, finding["mutations"]
    m = Mutation.from_literal(finding["mutations"][0])
    assert m.conn == 1 and m.action == "keys", m
    assert finding["pdus"], "the damaged PDU as sent"
    capture = path.with_suffix(".pcapng")
    assert capture.exists() and finding["pcapng"] == capture.name
    if shutil.which("tshark"):
        out = subprocess.run(
            ["tshark", "-r", str(capture)], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0 and out.stdout.count("\n") >= 6, out.stderr
    for _ in range(2):  # replays show it again, each time
        seen, _tape = hostile.replay_finding(finding)
        assert key in seen, seen


def test_fuzz_replay_command_replays_an_initiator_reproducer(tmp_path: Path) -> None:
    """``fuzz replay`` dispatches on role = initiator: a reproducer whose cause is
    gone (the real reference initiator copes with the hostile name) is 'not
    reproduced', status 0, and its capture is written."""
    finding_file = tmp_path / "internal-error--x.py"
    hostile.save_reproducer(
        Failure("internal-error", "KeyError at x", "seed 0 case 0", phase="hostile"),
        [Mutation(1, 1, "keys", b"TargetName=../../../../etc/passwd\0".hex())],
        None, tmp_path, client="reference", tool=None, seed=0, limit=5.0,
    )  # fmt: skip
    written = next(tmp_path.glob("internal-error--*.py"))
    written.rename(finding_file)
    pcap = tmp_path / "replay.pcapng"
    out = subprocess.run(
        [sys.executable, "-m", "iscsi_conformance.cli", "fuzz", "replay", str(finding_file),
         "--pcap", str(pcap)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not reproduced: internal-error at KeyError at x" in out.stdout
    assert pcap.exists() and pcap.stat().st_size > 200


def test_sent_checker_finds_reserved_bits_and_target_opcodes() -> None:
    good = P.encode(P.NopOut(immediate=True, itt=1, cmdsn=0, expstatsn=0))
    bad = bytearray(good)
    bad[2] = 0x40  # reserved byte of a NOP-Out (RFC 7143 11.18)
    target = P.encode(P.NopIn(itt=1, statsn=0, expcmdsn=0, maxcmdsn=0), strict=False)
    c = _SentChecker()
    assert c.feed(good[:20]) == [] and c.feed(good[20:]) == []
    found = c.feed(bytes(bad))
    assert found and found[0][0] == "sent" and "NopOut" in found[0][1], found
    found = c.feed(target)
    assert found and "target opcode" in found[0][1], found


def test_an_initiator_that_sends_reserved_bits_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the proxy: what an initiator sends after a hostile answer is checked."""

    async def sloppy(self: Any, host: str, port: int, timeout: float, lba: int) -> bytes:
        _r, w = await asyncio.open_connection(host, port)
        raw = bytearray(P.encode(P.NopOut(immediate=True, itt=1, cmdsn=0, expstatsn=0)))
        raw[3] = 0x01
        w.write(bytes(raw))
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()
        raise OSError("done")

    monkeypatch.setattr(hostile_clients.ReferenceClient, "_exercise", sloppy)
    report = hostile.initiator_campaign("reference", seed=0, seconds=10, max_cases=2, shrink=False)
    keys = [k for k in report.failures if k[0] == "sent"]
    assert keys and "NopOut" in keys[0][1], hostile.summary(report)
    assert report.failures[keys[0]].requirement == "R7143-11-1"


def test_an_initiator_that_returns_damaged_data_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A READ reported as good whose bytes differ from what the target holds (read
    again directly) is 'accepted', the oracle behind 'a Data-In beyond the buffer'."""
    real = hostile_clients.ReferenceClient._exercise

    async def credulous(self: Any, host: str, port: int, timeout: float, lba: int) -> bytes:
        data = await real(self, host, port, timeout, lba)
        return b"\xee" + data[1:]

    monkeypatch.setattr(hostile_clients.ReferenceClient, "_exercise", credulous)
    report = hostile.initiator_campaign(
        "reference", seed=0, seconds=20, max_cases=8, rate=1.0, shrink=False
    )
    assert any(k[0] == "accepted" for k in report.failures), hostile.summary(report)


class _Res:
    def __init__(self, text: str) -> None:
        self.text, self.error_text, self.returncode = text, "", 0


class _FakeVM:
    def __init__(self) -> None:
        self.console = "booted\n"
        self.exit: str | None = None

    def console_text(self) -> str:
        return self.console

    def _exited(self) -> str | None:
        return self.exit


class _FakeDriver:
    """Stands in for peers.openiscsi: the guest answers what the test scripts."""

    mode = "microvm"

    def __init__(self, round_output: str, rss: int = 4000) -> None:
        self.vm = _FakeVM()
        self.round_output = round_output
        self.rss = rss

    def guest(self, script: str, **_: Any) -> _Res:
        return _Res(self.round_output.replace("logout=0", f"logout=0 rss={self.rss}"))


def _oi_round(driver: _FakeDriver, *, console: str = "") -> Any:
    client = hostile_clients.OpenIscsiClient()
    client.driver = driver
    client.iscsid_start = 4000
    client.files = {"/", "/etc", "/etc/iscsi"}
    client.console_seen = len(driver.vm.console)
    driver.vm.console += console

    class Proxy:
        case = 0

    return asyncio.run(client.run("127.0.0.1", 3260, 60, Proxy()))


def test_open_iscsi_oracles_can_fail() -> None:
    """The open-iscsi round's oracles, on a stand-in guest: a clean round passes; an
    oops on the guest console is a crash; a new file outside the node records is a
    traversal; a step killed by its timeout is a hang; iscsid's growth is memory."""
    clean = "discovery=0 login=0 read=0 logout=0\nfile: /\nfile: /etc\nfile: /etc/iscsi\n"
    assert _oi_round(_FakeDriver(clean)) is None
    found = _oi_round(_FakeDriver(clean), console="BUG: kernel NULL pointer dereference\n")
    assert found[0] == "crash" and "BUG" in found[1], found
    found = _oi_round(_FakeDriver(clean + "file: /etc/iscsi/tmp/evil\n"))
    assert found[:2] == ("traversal", "a file outside /etc/iscsi/nodes"), found
    found = _oi_round(_FakeDriver("discovery=0 login=124 read=- logout=0\n"))
    assert found[:2] == ("hang", "iscsiadm login"), found
    found = _oi_round(_FakeDriver(clean, rss=4000 + hostile_clients.MEMORY_BOUND_KIB + 1))
    assert found[:2] == ("memory", "iscsid RSS"), found


def test_an_open_iscsi_round_cut_by_the_deadline_ends_with_it() -> None:
    """A round given less than the client's limit (the campaign's deadline is near)
    bounds its guest call by that, so --seconds stays a hard bound; a full round keeps
    the steps' own caps plus the listing."""
    asked: list[float] = []

    class Timed(_FakeDriver):
        def guest(self, script: str, **kw: Any) -> _Res:
            asked.append(kw["timeout"])
            return super().guest(script, **kw)

    clean = "discovery=0 login=0 read=0 logout=0\nfile: /\nfile: /etc\nfile: /etc/iscsi\n"
    client = hostile_clients.OpenIscsiClient()
    client.driver = Timed(clean)
    client.files = {"/", "/etc", "/etc/iscsi"}
    client._round("127.0.0.1", 3260, 8.0)  # cut short: bound to 8 s
    client._round("127.0.0.1", 3260, hostile_clients.OpenIscsiClient.limit)
    assert asked == [8.0, sum(hostile_clients.STEPS.values()) + 60], asked


def test_no_case_starts_that_could_not_end_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client whose case needs at least ``min_case`` seconds (open-iscsi: 20) gets no
    case with less time left, and the budget counts from the client being up (an
    open-iscsi micro-VM boot is not fuzzing)."""
    import time

    given: list[float] = []

    class Slow(hostile_clients._Client):
        title, limit, min_case = "stand-in", 480.0, 4.0

        async def setup(self, proxy: Any) -> None:
            await asyncio.sleep(2.0)  # a boot

        async def run(self, host: str, port: int, limit: float, proxy: Any) -> Any:
            given.append(limit)
            await asyncio.sleep(min(limit, 1.0))
            return None

    monkeypatch.setattr(hostile, "make_client", lambda client, tool=None: Slow())
    start = time.monotonic()
    report = hostile.initiator_campaign("open-iscsi", seconds=6.0)
    assert report.cases == len(given) == 2, given  # 6 s and 5 s left; then under 4 s
    assert min(given) >= 4.0 and report.seconds <= 6.0 * 1.05, (given, report.seconds)
    assert time.monotonic() - start >= 2.0 + report.seconds - 0.5  # the boot not counted
