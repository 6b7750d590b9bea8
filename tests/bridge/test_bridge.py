"""The conformance bridge live (bridge/pump.py): the reference initiator and the
reference target talk through it with data verified; it finds nothing in that clean
conversation, finds the breach of a target broken on purpose (mutants of the
reference target) and of an initiator broken on purpose (a rewriting PDU hook), writes
a pcapng that replays to the same verdict, injects each fault on demand, and matches a
task management answer to its request live."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crc32c import crc32c

from iscsi_conformance.bridge.capture import _frames, conversations, replay
from iscsi_conformance.bridge.faults import (
    FaultOutcome,
    FaultPlan,
    command_header_digest_breach,
    datain_digest_breach,
    dataout_digest_breach,
    dropped_response_breach,
    parse_fault,
    reframed_breach,
    reset_breach,
    unanswered_ping_breach,
    withheld_echo_breach,
)
from iscsi_conformance.bridge.pump import Bridge
from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import TmfFunction
from iscsi_conformance.initiator import client
from iscsi_conformance.initiator.client import Session, discover
from iscsi_conformance.mutation import get as get_mutant
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.server import TargetServer

DISK = "iqn.2024-01.org.example:bridge-disk"
SMALL = "iqn.2024-01.org.example:bridge-small"  # R2Ts: InitialR2T=Yes, ImmediateData=No
DIGESTS = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TargetServer]:
    tmp = tmp_path_factory.mktemp("bridge-target")
    cfg = {
        "server": {"state_dir": str(tmp / "state")},
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [
            {"name": DISK, "luns": [{"lun": 0, "size": "4M"}]},
            {
                "name": SMALL,
                "luns": [{"lun": 0, "size": "1M"}],
                "parameters": {
                    "MaxRecvDataSegmentLength": 4096,
                    "MaxBurstLength": 8192,
                    "FirstBurstLength": 4096,
                    "InitialR2T": True,
                    "ImmediateData": False,
                    "MaxOutstandingR2T": 2,
                },
            },
        ],
    }
    srv = TargetServer(parse_config(cfg))
    srv.start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()


def _io(
    bridge: Bridge, name: str, keys: dict[str, str] | None = None, timeout: float = 5, **kw: Any
) -> None:
    """Log in through the bridge, write and read back 64 KiB (data verified), log out."""
    host, port = bridge.listen_host, bridge.port

    async def run() -> None:
        async with Session.connect(host, port, name, keys=keys, timeout=timeout, **kw) as s:
            data = os.urandom(65536)
            await s.write(0, 8, data)
            assert await s.read(0, 8, 128) == data
            await s.logout()

    asyncio.run(run())


@pytest.fixture
def bridge(target: TargetServer, tmp_path: Path) -> Iterator[Any]:
    made: list[Bridge] = []

    def make(*faults: str, pcap: bool = False) -> Bridge:
        b = Bridge(
            target.portal(),
            faults=FaultPlan(faults),
            pcap=tmp_path / "bridge.pcapng" if pcap else None,
            advertise=True,
        )
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_clean_conversation_passes_and_replays_the_same(bridge: Any) -> None:
    b = bridge(pcap=True)

    async def discovery() -> list[Any]:
        return await discover(b.listen_host, b.port)

    found = asyncio.run(discovery())
    # SendTargets came back rewritten to the bridge's own portal (the NAT case)
    assert {(p.host, p.port) for t in found for p in t.addresses} == {(b.listen_host, b.port)}
    _io(b, DISK, DIGESTS)
    _io(b, SMALL, {"ImmediateData": "No", "InitialR2T": "Yes"})
    assert b.wait_closed(5)
    assert [str(x) for x in b.breaches] == []
    assert b.harness_errors == []
    ffp = [c for c in b.connections if c.judge.full_feature]
    assert len(ffp) == 3 and all(c.judge.index > 4 for c in ffp)
    b.stop()
    # the capture replays to the same verdict, PDU for PDU
    pcap = b.pcap.path  # type: ignore[union-attr]
    port = struct.unpack("!HH", next(iter(_frames(pcap.read_bytes())))[1][20:24])[1]
    convs = conversations(pcap, port)
    assert [replay(c).index for c in convs] == [c.judge.index for c in b.connections]
    assert all(replay(c).breaches == [] for c in convs)


# mutant of the reference target -> (target name, the rule the bridge must report)
BROKEN_TARGETS = {
    "Data.DataSN.StartsAtOne": (DISK, "datasn.datain"),
    "Data.Offset.Shifted": (DISK, "datain.offsets"),
    "R2T.R2TSN.StartsAtOne": (SMALL, "r2tsn.sequence"),
    "R2T.Burst.AboveMaxBurstLength": (SMALL, "r2t.burst"),
    "R2T.Outstanding.AboveMaxOutstandingR2T": (SMALL, "r2t.outstanding"),
    "Sequencing.StatSN.SkipsOne": (DISK, "statsn.sequence"),
}


@pytest.mark.parametrize("mutant", sorted(BROKEN_TARGETS))
def test_a_target_broken_on_purpose_is_caught(bridge: Any, mutant: str) -> None:
    name, rule = BROKEN_TARGETS[mutant]
    b = bridge()
    patcher = Patcher()
    get_mutant(mutant).apply(patcher)
    try:
        with _anything():  # small segments: a read takes 16 Data-In PDUs
            _io(b, name, {"MaxRecvDataSegmentLength": "4096"})
    finally:
        patcher.undo()
    found = {x.breach.rule.name for x in b.breaches}
    assert rule in found, f"{mutant}: {rule} not reported; found {sorted(found)}"
    assert all(x.breach.side == "target" for x in b.breaches if x.breach.rule.name == rule)
    # the PDUs before it, put into words from their headers only when the breach came
    first = next(x for x in b.breaches if x.breach.rule.name == rule)
    assert first.context and all(
        line.startswith(("i->t ", "t->i ", "bridge: ")) for line in first.context
    ), first.context
    assert any(" ScsiCommand itt=" in line for line in first.context), first.context


class _anything:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def test_an_initiator_broken_on_purpose_is_caught(bridge: Any) -> None:
    b = bridge()

    def hook(pdu: P.PDU) -> P.PDU:
        if isinstance(pdu, P.ScsiDataOut):  # every Data-Out claims DataSN 5
            return dataclasses.replace(pdu, datasn=5)
        return pdu

    with _anything():
        _io(b, SMALL, pdu_hook=hook)
    found = {(x.breach.rule.name, x.breach.side) for x in b.breaches}
    assert ("datasn.dataout", "initiator") in found, found


@pytest.mark.parametrize(
    "spec, expect",
    [
        ("ddigest:ScsiDataOut", "rejected"),  # RFC 7143 7.8: Reject (Data-Digest-Error)
        ("hdigest:ScsiCommand", "closed"),  # header digest: the target drops the connection
        ("close:ScsiDataOut", "closed"),  # reset mid-write
        ("drop:ScsiResponse", "timeout"),  # the answer never comes
        ("delay:ScsiResponse=0.3", "ok"),
        ("split:ScsiCommand", "ok"),
        ("merge:ScsiCommand", "ok"),
        ("reorder:ScsiDataIn", "ok"),
    ],
)
def test_faults_on_demand(bridge: Any, spec: str, expect: str) -> None:
    b = bridge(spec)
    keys = DIGESTS if "digest" in spec else None
    outcome = "ok"
    try:
        _io(b, SMALL if "ScsiDataOut" in spec else DISK, keys, timeout=1 if "drop" in spec else 5)
    except Exception as exc:
        text = f"{type(exc).__name__} {exc}".lower()
        words = {"rejected": "rejected", "closed": "closed", "lost": "closed", "reset": "closed",
                 "timeout": "timeout"}  # fmt: skip
        outcome = next((v for w, v in words.items() if w in text), text)
    assert [str(f[0]) for f in b.faults.fired] == [str(parse_fault(spec))]
    if expect == "ok":
        assert outcome == "ok"
        assert [str(x) for x in b.breaches if not x.after_fault] == []
    else:
        assert outcome.startswith(expect) or expect in outcome, outcome


@pytest.mark.parametrize(
    "spec", ["", "drop", "drop:", "drop:Nothing", "delay:NopIn", "delay:NopIn=-1", "drop:NopIn#0",
             "split:NopIn=3", "withhold:ScsiResponse", "withhold:NopIn=pong"],
)  # fmt: skip
def test_a_bad_fault_spec_is_one_clear_error(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_fault(spec)


def test_a_reset_mid_write_loses_no_acknowledged_data(bridge: Any) -> None:
    """ERL 0 (RFC 7143 7.1.1, 6.3.5): the bridge resets the connection on the first
    Data-Out of a write; the write fails, a new session logs in through the same bridge,
    and the data acknowledged before the reset reads back intact."""
    b = bridge("close:ScsiDataOut")
    host, port = b.listen_host, b.port
    acknowledged = os.urandom(4096)  # immediate data (ImmediateData=Yes): no Data-Out

    async def write(lba: int, data: bytes) -> None:
        async with Session.connect(host, port, DISK, timeout=3) as s:
            await s.write(0, lba, data)
            await s.logout()

    async def read(lba: int, blocks: int) -> bytes:
        async with Session.connect(host, port, DISK, timeout=3) as s:
            data = await s.read(0, lba, blocks)
            await s.logout()
            return data

    asyncio.run(write(40, acknowledged))
    with pytest.raises(Exception):  # noqa: B017 (however the client reports the reset)
        asyncio.run(write(200, os.urandom(262144)))  # beyond FirstBurstLength: Data-Out
    assert [str(f[0]) for f in b.faults.fired] == ["close:ScsiDataOut#1"]
    assert asyncio.run(read(40, 8)) == acknowledged


def _abort_unknown_task(bridge: Bridge, timeout: float) -> int:
    """Log in through the bridge, send ABORT TASK for a tag no task has, log out."""

    async def run() -> int:
        async with Session.connect(bridge.listen_host, bridge.port, DISK, timeout=timeout) as s:
            response = await s.tmf(TmfFunction.ABORT_TASK, 0, referenced_task_tag=0x7EA50001)
            await s.logout()
            return response

    return asyncio.run(run())


def test_a_tmf_answer_is_matched_to_its_request_live(bridge: Any) -> None:
    """RFC 7143 11.6 (the TMF Response's Initiator Task Tag is the request's), on a live
    conversation: the clean answer passes and marks the rule exercised; a target broken
    on purpose (its TMF Response carries another tag) is caught, by the target's side."""
    b = bridge()
    assert _abort_unknown_task(b, 5) in (0, 1)  # 11.5.1: function complete / no such task
    assert b.wait_closed(5)
    assert [str(x) for x in b.breaches] == []
    assert "tmf.answer_itt" in set().union(*(c.judge.exercised for c in b.connections))

    broken = bridge()
    patcher = Patcher()

    def wrong_tag(emit: Any) -> Any:
        def emit_with(self: Any, pdu: P.PDU) -> bytes:
            if isinstance(pdu, P.TaskManagementResponse):
                pdu = dataclasses.replace(pdu, itt=pdu.itt ^ 0x100)
            return emit(self, pdu)  # type: ignore[no-any-return]

        return emit_with

    patcher.wrap(Connection, "_emit", wrong_tag)
    try:
        with _anything():  # the initiator waits for its tag in vain
            _abort_unknown_task(broken, 1)
    finally:
        patcher.undo()
    found = [x for x in broken.breaches if x.breach.rule.name == "tmf.answer_itt"]
    assert found and all(x.breach.side == "target" for x in found), broken.breaches


def _digest_fault(target: TargetServer, spec: str, timeout: float = 2) -> FaultOutcome:
    """A reference session with data digests through a bridge injecting ``spec``: WRITE
    1 MiB (Data-Out PDUs), read it back; the outcome as the Wire fault tests judge it."""
    seen: list[Any] = []
    b = Bridge(target.portal(), faults=FaultPlan([spec]), on_pdu=lambda *a: seen.append(a))
    b.start()
    out = FaultOutcome(seen)
    try:

        async def run() -> None:
            keys = {"DataDigest": "CRC32C"}
            async with Session.connect(
                b.listen_host, b.port, DISK, keys=keys, timeout=timeout
            ) as s:
                data = os.urandom(2**20)
                await s.write(0, 2048, data)
                out.data_ok = await s.read(0, 2048, 2048) == data
                await s.logout()

        try:
            asyncio.run(run())
        except Exception as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        b.wait_closed(5)
    finally:
        b.stop()
    out.closed_first = {c.index: c.ended_by for c in b.connections if c.ended_by}
    assert out.faulted() is not None, b.harness_errors
    return out


def test_a_target_that_takes_a_bad_data_digest_silently_is_caught(target: TargetServer) -> None:
    """Digests.Wire.Fault.DataOutDigestRejected can fail (RFC 7143 7.8): the reference
    target Rejects a Data-Out with a wrong data digest; broken on purpose to discard it
    without a word and keep the connection, it is caught."""
    assert dataout_digest_breach(_digest_fault(target, "ddigest:ScsiDataOut"))[0] == "pass"
    patcher = Patcher()
    patcher.setattr(Connection, "_digest_error", lambda self, exc: None)
    try:
        broken = _digest_fault(target, "ddigest:ScsiDataOut")
    finally:
        patcher.undo()
    grade, why = dataout_digest_breach(broken)
    assert grade == "fail" and "no Reject" in why, (grade, why, broken.error)


def test_an_initiator_that_takes_a_bad_data_digest_as_good_is_caught(
    target: TargetServer,
) -> None:
    """Digests.Wire.Fault.DataInDigestNotTakenAsGood can fail (RFC 7143 7.8): the
    reference initiator ends the connection on a Data-In with a wrong data digest;
    broken on purpose to decode Data-In without checking it, it is caught."""
    assert datain_digest_breach(_digest_fault(target, "ddigest:ScsiDataIn"))[0] == "pass"
    patcher = Patcher()
    decode_raw = client.decode_raw

    def unchecked(raw: bytes, **kw: Any) -> P.PDU:
        return decode_raw(raw, **{**kw, "data_digest": False})

    patcher.setattr(client, "decode_raw", unchecked)
    try:
        broken = _digest_fault(target, "ddigest:ScsiDataIn")
    finally:
        patcher.undo()
    assert broken.error is None and broken.data_ok, broken.error
    grade, why = datain_digest_breach(broken)
    assert grade == "fail" and "as good" in why, (grade, why)


def _fault_run(
    target: TargetServer,
    spec: str | list[str],
    *,
    keys: dict[str, str] | None = None,
    blocks: int = 64,
    timeout: float = 2,
    go_on: bool = False,
    after: Callable[[], None] = lambda: None,
    ping: float = 0.0,
    idle: float = 0.0,
) -> FaultOutcome:
    """As conformance/wire's fault tests with data verified: an acknowledged range
    written directly, then through a bridge injecting ``spec`` a WRITE and its read,
    then a direct session reading back what was acknowledged (``FaultOutcome.verified``).
    ``go_on``: an initiator broken on purpose, that takes a WRITE whose answer never
    came as done and goes on with a READ on the same session. ``after`` runs between
    the faulted session and the check (a target broken from then on). ``ping``: the
    initiator pings between the WRITE and the READ, waiting that long for the echo
    (``FaultOutcome.ping`` says whether it reported the ping answered). ``idle``: the
    session stays idle that long between the WRITE and the READ (a target pings)."""
    seen: list[Any] = []
    acked, data = os.urandom(4096), os.urandom(blocks * 512)
    host, port = target.portal()

    async def direct_write() -> None:
        async with Session.connect(host, port, DISK, timeout=5) as s:
            await s.write(0, 600, acked)
            await s.logout()

    asyncio.run(direct_write())
    specs = [spec] if isinstance(spec, str) else spec
    b = Bridge((host, port), faults=FaultPlan(specs), on_pdu=lambda *a: seen.append(a))
    b.start()
    out = FaultOutcome(seen)
    written = False
    try:

        async def run() -> None:
            nonlocal written
            async with Session.connect(
                b.listen_host, b.port, DISK, keys=keys, timeout=timeout
            ) as s:
                try:
                    await s.write(0, 700, data)
                except client.ResponseTimeout:
                    if not go_on:
                        raise
                written = True
                await asyncio.sleep(idle)
                if ping:
                    try:
                        await s.nop(b"ping", timeout=ping)
                        out.ping = "answered"
                    except client.ResponseTimeout:
                        out.ping = "no answer"
                out.data_ok = await s.read(0, 700, blocks) == data or go_on
                await s.logout()

        try:
            asyncio.run(run())
        except Exception as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        b.wait_closed(5)
    finally:
        b.stop()
    out.closed_first = {c.index: c.ended_by for c in b.connections if c.ended_by}

    async def check() -> str:
        try:
            async with Session.connect(host, port, DISK, timeout=5) as s:
                if await s.read(0, 600, 8) != acked:
                    return "the acknowledged range read back different"
                if written and not go_on and await s.read(0, 700, blocks) != data:
                    return "the WRITE reported success and its blocks read back different"
                await s.logout()
        except Exception as exc:
            return f"a new session could not log in ({type(exc).__name__}: {exc})"
        return ""

    after()
    out.verified = asyncio.run(check())
    assert out.faulted() is not None, b.harness_errors
    return out


def test_a_target_that_acts_on_a_bad_header_digest_is_caught(target: TargetServer) -> None:
    """Digests.Wire.Fault.CommandHeaderDigestDiscarded can fail (RFC 7143 7.8): the
    reference target closes the connection on a command whose header digest is wrong;
    broken on purpose to mend the digest and execute the command, it is caught."""
    keys = {"HeaderDigest": "CRC32C"}
    good = _fault_run(target, "hdigest:ScsiCommand", keys=keys)
    assert command_header_digest_breach(good)[0] == "pass", (good.error, good.verified)
    patcher = Patcher()

    def mend(old: Any) -> Any:
        def on_error(self: Connection, exc: Any) -> None:
            if exc.which != "header":
                return old(self, exc)  # type: ignore[no-any-return]
            dec = self.decoder  # the digest made right again: the header is believed
            pos = dec._pos
            end = pos + 48 + 4 * dec._buf[pos + 4]
            dec._buf[end : end + 4] = struct.pack("<I", crc32c(bytes(dec._buf[pos:end])))
            return None

        return on_error

    patcher.wrap(Connection, "_digest_error", mend)
    try:
        broken = _fault_run(target, "hdigest:ScsiCommand", keys=keys)
    finally:
        patcher.undo()
    grade, why = command_header_digest_breach(broken)
    assert grade == "fail" and "acted on a header" in why, (grade, why, broken.error)


def test_an_initiator_that_takes_a_lost_response_as_done_is_caught(target: TargetServer) -> None:
    """FullFeature.Wire.Fault.LostResponseNotTakenAsDone can fail (RFC 7143 7.11): the
    reference initiator ends a WRITE whose SCSI Response the bridge dropped with an
    error at its timer and logs out; an initiator broken on purpose, that takes the
    WRITE as done and goes on with a READ on the same session, is caught."""
    good = _fault_run(target, "drop:ScsiResponse", timeout=1)
    assert dropped_response_breach(good)[0] == "pass", (good.error, good.verified)
    broken = _fault_run(target, "drop:ScsiResponse", timeout=1, go_on=True)
    grade, why = dropped_response_breach(broken)
    assert grade == "fail" and "reported complete" in why, (grade, why, broken.error)
    late = _fault_run(target, "delay:ScsiResponse=0.3", timeout=2)  # within the timer
    grade, why = dropped_response_breach(late)  # waited out, whether it went on or not
    assert grade == "inconclusive" and "command timer" in why, (grade, why, late.error)


def test_a_target_that_refuses_the_new_session_after_a_reset_is_caught(
    target: TargetServer,
) -> None:
    """FullFeature.Wire.Fault.ResetMidWriteKeepsAcknowledgedData can fail (RFC 7143
    7.15): after the bridge resets a write's connections, the reference target takes a
    new session and the acknowledged range reads back; broken on purpose to refuse
    every login once a connection of it failed, it is caught."""
    keys = {"ImmediateData": "No", "InitialR2T": "Yes"}
    good = _fault_run(target, "close:ScsiDataOut", keys=keys, blocks=512)
    assert reset_breach(good)[0] == "pass", (good.error, good.verified)
    patcher = Patcher()

    def refuse_logins() -> None:  # from the reset on
        patcher.setattr(Connection, "_login_step", lambda self, req: self._login_failed())

    try:
        broken = _fault_run(target, "close:ScsiDataOut", keys=keys, blocks=512, after=refuse_logins)
    finally:
        patcher.undo()
    grade, why = reset_breach(broken)
    assert grade == "fail" and "could not log in" in why, (grade, why)


SOLICITED = {"ImmediateData": "No", "InitialR2T": "Yes"}  # every WRITE sends Data-Out


def test_a_target_that_frames_by_segment_is_caught(target: TargetServer) -> None:
    """FullFeature.Wire.Fault.SplitAndMergedPdusTakenByTarget can fail (RFC 7143
    4.2.9): the reference target frames PDUs by their lengths and takes a command split
    across two TCP writes and two Data-Out in one; broken on purpose to take each
    segment that arrives for the start of a PDU (a partial one dropped), it is caught."""
    faults = ["split:ScsiCommand", "merge:ScsiDataOut#2"]
    good = _fault_run(target, faults, keys=SOLICITED, blocks=2048)
    assert reframed_breach(good, 2, "target")[0] == "pass", (good.error, good.verified)
    patcher = Patcher()

    def by_segment(old: Any) -> Any:
        def receive(self: Connection, data: Any, now: float = 0.0, **kw: Any) -> bool:
            dec = self.decoder
            if data and dec.buffered:  # what is left of a PDU is dropped
                dec._buf.clear()
                dec._pos, dec._need = 0, 48
            return old(self, data, now, **kw)  # type: ignore[no-any-return]

        return receive

    patcher.wrap(Connection, "receive_data", by_segment)
    try:
        broken = _fault_run(target, faults, keys=SOLICITED, blocks=2048)
    finally:
        patcher.undo()
    grade, why = reframed_breach(broken, 2, "target")
    assert grade == "fail", (grade, why, broken.error)


def test_an_initiator_that_frames_by_segment_is_caught(target: TargetServer) -> None:
    """FullFeature.Wire.Fault.SplitAndMergedPdusTakenByInitiator can fail (RFC 7143
    4.2.9): the reference initiator reads each PDU by its lengths; broken on purpose to
    take what one read returns for the header (read instead of readexactly), it is
    caught on a Data-In split across two TCP writes (it gives up the connection).
    (It once padded the short header instead: the task that then failed on garbage
    died unretrieved, and its finalizer, run by the GC inside a later ast.parse, set
    off CPython 3.11.7's SystemError "AST constructor recursion depth mismatch".)"""
    faults = ["split:ScsiDataIn", "merge:ScsiDataIn#3"]
    good = _fault_run(target, faults, blocks=2048)
    assert reframed_breach(good, 2, "initiator")[0] == "pass", (good.error, good.verified)
    patcher = Patcher()
    read_raw = client.read_raw_pdu

    async def short_reads(reader: asyncio.StreamReader, **kw: Any) -> bytes:
        head = await reader.read(48)  # what the segment holds, not the whole header
        if len(head) in (0, 48):  # (at the end: the real reader says it is closed)
            reader._buffer[:0] = head  # type: ignore[attr-defined]
            return await read_raw(reader, **kw)
        # a header cut short is taken for a broken stream: the connection is given up
        raise client.ConnectionClosed(f"a header of {len(head)} bytes")

    patcher.setattr(client, "read_raw_pdu", short_reads)
    try:
        broken = _fault_run(target, faults, blocks=2048)
    finally:
        patcher.undo()
    grade, why = reframed_breach(broken, 2, "initiator")
    assert grade == "fail", (grade, why, broken.error)


def test_an_initiator_that_takes_a_missing_ping_echo_as_answered_is_caught(
    target: TargetServer,
) -> None:
    """FullFeature.Wire.Fault.WithheldPingEchoRecovered can fail (RFC 7143 7.14,
    11.19): the bridge withholds the NOP-In echoing the reference initiator's ping,
    whose wait then ends without an answer; it goes on, and the data reads back. An
    initiator broken on purpose, that reports its ping answered when the wait ends
    (a NOP-In of its own making), is caught; so is one whose WRITE through the fault
    does not read back."""
    good = _fault_run(target, "withhold:NopIn=echo", ping=0.5)
    assert good.ping == "no answer", (good.error, good.ping)
    grade, why = withheld_echo_breach(good)
    assert grade == "pass" and "went on" in why, (grade, why, good.error, good.verified)
    patcher = Patcher()

    def made_up_echo(old: Any) -> Any:
        async def nop(self: Session, data: bytes = b"", **kw: Any) -> P.NopIn:
            try:
                return await old(self, data, **kw)  # type: ignore[no-any-return]
            except client.ResponseTimeout:
                return P.NopIn(itt=0, ttt=0xFFFFFFFF, data=data)

        return nop

    patcher.wrap(Session, "nop", made_up_echo)
    try:
        broken = _fault_run(target, "withhold:NopIn=echo", ping=0.5)
    finally:
        patcher.undo()
    grade, why = withheld_echo_breach(broken)
    assert grade == "fail" and "answered" in why, (grade, why, broken.error)
    lost = dataclasses.replace(good, verified="the WRITE reported success and its blocks "
                               "read back different")  # fmt: skip
    assert withheld_echo_breach(lost)[0] == "fail"


def test_withhold_selects_the_nop_in_it_names() -> None:
    """``withhold:NopIn=echo`` counts only NOP-Ins answering a ping (ITT set), ``=ping``
    only the target's pings (TTT set); a NOP-In that only carries counters is neither."""
    counters = P.NopIn(itt=0xFFFFFFFF, ttt=0xFFFFFFFF)
    echo, ping = P.NopIn(itt=7, ttt=0xFFFFFFFF), P.NopIn(itt=0xFFFFFFFF, ttt=9)
    for spec, hits in (("withhold:NopIn=echo", echo), ("withhold:NopIn=ping", ping),
                       ("withhold:NopIn#2", ping)):  # fmt: skip
        plan = FaultPlan([spec])
        fired = [plan.decide(0, pdu, True) for pdu in (counters, echo, counters, ping)]
        assert [p for p, f in zip((counters, echo, counters, ping), fired, strict=True) if f] == [
            hits
        ], spec
    assert str(parse_fault("withhold:nopin=ECHO")) == "withhold:NopIn#1=echo"


@pytest.fixture(scope="module")
def pinging_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TargetServer]:
    """A reference target that pings a connection idle for 0.3 s and drops it when no
    NOP-Out answers within 1 s (RFC 7143 11.19, 7.14)."""
    tmp = tmp_path_factory.mktemp("pinging-target")
    cfg = {
        "server": {"state_dir": str(tmp / "state"), "nop_in_interval": 0.3, "nop_in_timeout": 1.0},
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [{"name": DISK, "luns": [{"lun": 0, "size": "4M"}]}],
    }
    srv = TargetServer(parse_config(cfg))
    srv.start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()


class _Discard(list[Any]):
    """An output queue that keeps nothing (a target broken on purpose goes silent)."""

    def append(self, item: Any) -> None:
        return None

    def extend(self, items: Any) -> None:
        return None


def test_a_target_silent_after_its_unanswered_ping_is_caught(pinging_target: TargetServer) -> None:
    """FullFeature.Wire.Fault.UnansweredTargetPingHandled can fail (RFC 7143 7.14,
    7.1.4.3): the bridge withholds the reference target's ping; the target drops the
    connection when no answer comes, and a new session reads back what was acknowledged.
    A target broken on purpose, that stops answering the connection instead of closing
    it, is caught (the READ that follows gets no answer)."""
    good = _fault_run(pinging_target, "withhold:NopIn=ping", idle=1.8, timeout=1)
    grade, why = unanswered_ping_breach(good)
    assert grade == "pass" and "closed the connection" in why, (grade, why, good.error)
    patcher = Patcher()

    def mute_instead_of_close(old: Any) -> Any:
        def handle_timer(self: Connection, now: float) -> None:
            if getattr(self, "_muted", False):
                self._ping_ttt = None  # (no timer due at once, again and again)
                return None
            if self._ping_ttt is not None and now - self._ping_sent > 1.0:
                self._muted = True  # taken as failed, and never closed
                self.out = _Discard()  # what it would send from now on goes nowhere
                return None
            return old(self, now)  # type: ignore[no-any-return]

        return handle_timer

    def deaf_once_muted(old: Any) -> Any:
        # silent means silent: a muted connection takes nothing in either, so a Logout
        # the initiator sends on giving up does not close it (the logout's close raced
        # the initiator's own close and made this proof pass about half the time)
        def receive_data(self: Connection, data: Any, *a: Any, **kw: Any) -> Any:
            if getattr(self, "_muted", False):
                return None
            return old(self, data, *a, **kw)

        return receive_data

    patcher.wrap(Connection, "handle_timer", mute_instead_of_close)
    patcher.wrap(Connection, "receive_data", deaf_once_muted)
    try:
        broken = _fault_run(pinging_target, "withhold:NopIn=ping", idle=1.8, timeout=1)
    finally:
        patcher.undo()
    grade, why = unanswered_ping_breach(broken)
    assert grade == "fail" and "silent" in why, (grade, why, broken.error)
