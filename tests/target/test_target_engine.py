"""The sans-IO engine in memory: hot-path encoders equal core.pdu.encode, ERL 1
recovery (data digest Reject + recovery R2T, Data/Status SNACK), immediate commands."""

from __future__ import annotations

import os
import struct

import pytest
from target_helpers import NONE_TAG, read16, write16

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import serial
from iscsi_conformance.core import text as T
from iscsi_conformance.core.codes import RejectReason
from iscsi_conformance.target import engine as E
from iscsi_conformance.target import task as task_module
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.luns import LunStore

IQN = "iqn.2024-01.org.example:engine"


@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("dd", [False, True])
@pytest.mark.parametrize("n", [0, 1, 3, 512])
def test_data_in_fast_path_matches_codec(hd: bool, dd: bool, n: int) -> None:
    data = os.urandom(n)
    bhs = P.DATA_IN_BHS.pack(
        0x25, 0x80 | 0x01 | 0x02, 0, n, P.lun_to_field(3), 7, NONE_TAG, 9, 10, 11, 2, 4096, 5
    )
    fast = b"".join(bytes(x) for x in P.frame_parts(bhs, memoryview(data), hd, dd))
    ref = P.encode(
        P.ScsiDataIn(
            final=True,
            status_present=True,
            underflow=True,
            status=0,
            lun=P.lun_to_field(3),
            itt=7,
            ttt=NONE_TAG,
            statsn=9,
            expcmdsn=10,
            maxcmdsn=11,
            datasn=2,
            buffer_offset=4096,
            residual_count=5,
            data=data,
        ),
        header_digest=hd,
        data_digest=dd,
    )
    assert fast == ref


@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("sense", [b"", bytes(range(18))])
def test_scsi_response_fast_path_matches_codec(hd: bool, sense: bytes) -> None:
    data = P.ScsiResponse.sense_segment(sense) if sense else b""
    bhs = P.SCSI_RESPONSE_BHS.pack(
        0x21, 0x80 | 0x04, 0, 2 if sense else 0, len(data), 0, 99, 0, 5, 6, 7, 3, 0, 42
    )
    fast = b"".join(bytes(x) for x in P.frame_parts(bhs, data, hd, hd))
    ref = P.encode(
        P.ScsiResponse(
            overflow=True,
            status=2 if sense else 0,
            itt=99,
            statsn=5,
            expcmdsn=6,
            maxcmdsn=7,
            expdatasn=3,
            residual_count=42,
            data=data,
        ),
        header_digest=hd,
        data_digest=hd,
    )
    assert fast == ref


def test_serial_arithmetic_wraps() -> None:
    # the engine's sequence numbers use core.serial (RFC 1982 on 32 bits)
    assert serial.lt(0xFFFFFFFF, 0) and not serial.lt(0, 0xFFFFFFFF)
    assert serial.add_mod(0xFFFFFFFF, 2) == 1


class Harness:
    """Engine + one connection, fed encoded PDUs, answering with decoded PDUs."""

    def __init__(
        self,
        params: list[tuple[str, str]],
        *,
        hd: bool = False,
        dd: bool = False,
    ) -> None:
        cfg = simple_config(("127.0.0.1", 0), IQN, ["4M"])
        self.store = LunStore(cfg)
        self.engine = E.TargetEngine(cfg, self.store.by_target, rng=lambda n: bytes(n))
        self.conn = self.engine.new_connection(portal_group=1)
        self.hd, self.dd = hd, dd
        keys = [
            ("InitiatorName", "iqn.2024-01.org.example:ini"),
            ("TargetName", IQN),
            ("HeaderDigest", "CRC32C" if hd else "None"),
            ("DataDigest", "CRC32C" if dd else "None"),
            *params,
        ]
        out = self.feed(
            P.LoginRequest(
                transit=True, csg=1, nsg=3, isid=1, itt=1, cmdsn=1, data=T.format_pairs(keys)
            ),
            digests=False,
        )
        assert out[-1].status == 0 and self.conn.state is E.ConnState.FULL_FEATURE
        self.cmdsn = 1
        self.feed(self.cmd(bytes(6)))  # the power-on unit attention

    def feed(self, pdu: P.PDU, *, digests: bool = True, raw: bytes | None = None) -> list[P.PDU]:
        hd, dd = (self.hd, self.dd) if digests else (False, False)
        self.conn.receive_data(
            raw if raw is not None else P.encode(pdu, header_digest=hd, data_digest=dd)
        )
        on = digests  # the login response itself goes out without digests (RFC 7143 13.1)
        dec = P.PDUDecoder(header_digest=self.conn.hd and on, data_digest=self.conn.dd and on)
        for _, bufs, _ in self.engine.take_output():
            dec.feed(b"".join(bytes(b) for b in bufs))
        return list(dec)

    def cmd(self, cdb: bytes, **kw: object) -> P.ScsiCommand:
        c = P.ScsiCommand(final=True, itt=0x1000 + self.cmdsn, cmdsn=self.cmdsn, cdb=cdb, **kw)  # type: ignore[arg-type]
        self.cmdsn += 1
        return c


def test_immediate_command_does_not_advance_cmdsn() -> None:
    h = Harness([])
    before = h.engine.sessions[1].expcmdsn
    out = h.feed(P.ScsiCommand(immediate=True, final=True, itt=77, cmdsn=h.cmdsn, cdb=bytes(6)))
    assert out[0].status == 0 and out[0].expcmdsn == before


def test_erl1_data_digest_error_rejected_and_resolicited() -> None:
    h = Harness(
        [("ErrorRecoveryLevel", "1"), ("InitialR2T", "Yes"), ("ImmediateData", "No")], dd=True
    )
    payload = os.urandom(4096)
    cmd = h.cmd(write16(0, 8), write=True, expected_data_transfer_length=4096)
    (r2t,) = h.feed(cmd)
    assert isinstance(r2t, P.R2T) and r2t.desired_data_transfer_length == 4096
    first = P.ScsiDataOut(itt=cmd.itt, ttt=r2t.ttt, datasn=0, buffer_offset=0, data=payload[:2048])
    bad = P.encode(first, data_digest=True, strict=False, tamper=P.Tamper(data_digest_value=1))
    out = h.feed(first, raw=bad)
    assert isinstance(out[0], P.Reject) and out[0].reason == RejectReason.DATA_DIGEST_ERROR
    # The rest of the burst arrives (DataSN continues); the lost range is asked again.
    out = h.feed(
        P.ScsiDataOut(
            final=True, itt=cmd.itt, ttt=r2t.ttt, datasn=1, buffer_offset=2048, data=payload[2048:]
        )
    )
    (again,) = out
    assert isinstance(again, P.R2T) and (
        again.buffer_offset,
        again.desired_data_transfer_length,
    ) == (0, 2048)
    assert again.r2tsn == 1
    (status,) = h.feed(
        P.ScsiDataOut(
            final=True, itt=cmd.itt, ttt=again.ttt, datasn=0, buffer_offset=0, data=payload[:2048]
        )
    )
    assert isinstance(status, P.ScsiResponse) and status.status == 0
    out = h.feed(h.cmd(read16(0, 8), read=True, expected_data_transfer_length=4096))
    assert b"".join(p.data for p in out) == payload


def test_erl1_snack_resends_data_and_status() -> None:
    h = Harness([("ErrorRecoveryLevel", "1")])
    cmd = h.cmd(read16(0, 64), read=True, expected_data_transfer_length=32768)
    first = h.feed(cmd)
    assert len(first) == 4  # 8 KiB each: the initiator's default MaxRecvDataSegmentLength
    again = h.feed(P.SnackRequest(snack_type=0, itt=cmd.itt, begrun=1, runlength=2))
    assert [p.datasn for p in again] == [1, 2] and again[0].data == first[1].data
    statsn = first[-1].statsn
    (status,) = h.feed(P.SnackRequest(snack_type=1, begrun=statsn, runlength=1))
    assert status.statsn == statsn and status.status_present


def test_snack_at_erl0_is_rejected() -> None:
    h = Harness([])
    (rej,) = h.feed(P.SnackRequest(snack_type=1, begrun=0, runlength=1))
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.PROTOCOL_ERROR


def test_unsolicited_data_out_within_first_burst() -> None:
    h = Harness([("InitialR2T", "No"), ("ImmediateData", "Yes"), ("FirstBurstLength", "8192")])
    payload = os.urandom(16384)
    cmd = h.cmd(
        write16(16, 32), write=True, expected_data_transfer_length=16384, data=payload[:4096]
    )
    cmd = P.ScsiCommand(**{**cmd.__dict__, "final": False})
    assert h.feed(cmd) == []  # waiting for the unsolicited Data-Out
    (r2t,) = h.feed(
        P.ScsiDataOut(
            final=True,
            itt=cmd.itt,
            ttt=NONE_TAG,
            datasn=0,
            buffer_offset=4096,
            data=payload[4096:8192],
        )
    )
    assert (r2t.buffer_offset, r2t.desired_data_transfer_length) == (8192, 8192)
    (status,) = h.feed(
        P.ScsiDataOut(
            final=True, itt=cmd.itt, ttt=r2t.ttt, datasn=0, buffer_offset=8192, data=payload[8192:]
        )
    )
    assert status.status == 0
    out = h.feed(h.cmd(read16(16, 32), read=True, expected_data_transfer_length=16384))
    assert b"".join(p.data for p in out) == payload


def test_wrong_datasn_is_rejected_without_corrupting() -> None:
    h = Harness([("InitialR2T", "Yes"), ("ImmediateData", "No")])
    cmd = h.cmd(write16(0, 2), write=True, expected_data_transfer_length=1024)
    (r2t,) = h.feed(cmd)
    (rej,) = h.feed(
        P.ScsiDataOut(final=True, itt=cmd.itt, ttt=r2t.ttt, datasn=27, data=bytes(1024))
    )
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.PROTOCOL_ERROR


def test_header_digest_error_at_erl1_discards_pdu() -> None:
    h = Harness([("ErrorRecoveryLevel", "1")], hd=True)
    nop = P.NopOut(immediate=True, itt=5, ttt=NONE_TAG, cmdsn=h.cmdsn, data=b"x")
    bad = P.encode(nop, header_digest=True, strict=False, tamper=P.Tamper(header_digest_value=0))
    assert h.feed(nop, raw=bad) == []
    out = h.feed(nop)  # the connection is still in step
    assert isinstance(out[0], P.NopIn) and out[0].itt == 5


def test_many_small_reads_decode_in_one_batch() -> None:
    h = Harness([])
    cmds = [h.cmd(read16(i, 1), read=True, expected_data_transfer_length=512) for i in range(50)]
    h.conn.receive_data(b"".join(P.encode(c) for c in cmds))
    batches = h.engine.take_output()
    assert len(batches) == 1  # one writelines for the whole batch
    dec = P.PDUDecoder()
    dec.feed(b"".join(bytes(b) for b in batches[0][1]))
    got = list(dec)
    assert [p.itt for p in got] == [c.itt for c in cmds]
    assert all(p.status_present for p in got)
    assert struct.unpack(">I", P.bhs_of(got[-1])[24:28])[0] == got[-1].statsn


def test_erl1_kept_data_released_by_expstatsn() -> None:
    h = Harness([("ErrorRecoveryLevel", "1")])
    cmd = h.cmd(read16(0, 16), read=True, expected_data_transfer_length=8192)
    out = h.feed(cmd)
    assert cmd.itt in h.conn._held
    h.feed(
        P.NopOut(
            immediate=True, itt=NONE_TAG, ttt=NONE_TAG, cmdsn=h.cmdsn, expstatsn=out[-1].statsn + 1
        )
    )
    assert cmd.itt not in h.conn._held and not h.conn._retained


def test_write_budget_bounds_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_module, "SESSION_WRITE_BUDGET", 8192)
    h = Harness([("InitialR2T", "Yes"), ("ImmediateData", "No")])
    first = h.cmd(write16(0, 16), write=True, expected_data_transfer_length=8192)
    (r2t,) = h.feed(first)
    assert isinstance(r2t, P.R2T)
    second = h.cmd(write16(16, 16), write=True, expected_data_transfer_length=8192)
    (full,) = h.feed(second)
    assert isinstance(full, P.ScsiResponse) and full.status == 0x28  # TASK SET FULL
    # Late data for the refused tag is dropped quietly; the first write completes.
    assert h.feed(P.ScsiDataOut(final=True, itt=second.itt, ttt=NONE_TAG, data=bytes(512))) == []
    (done,) = h.feed(P.ScsiDataOut(final=True, itt=first.itt, ttt=r2t.ttt, data=bytes(8192)))
    assert done.status == 0
    assert h.engine.sessions[1].write_budget_used == 0


def test_nop_in_ping_and_timeout() -> None:
    import dataclasses

    h = Harness([])
    h.engine.config = dataclasses.replace(h.engine.config, nop_in_interval=5.0, nop_in_timeout=10.0)
    h.engine.handle_timer(1.0)
    assert h.engine.take_output() == []  # not silent long enough yet
    h.engine.handle_timer(6.0)
    (batch,) = h.engine.take_output()
    ping, _ = P.decode(b"".join(bytes(b) for b in batch[1]))
    assert isinstance(ping, P.NopIn) and ping.itt == NONE_TAG and ping.ttt != NONE_TAG
    h.engine.handle_timer(20.0)  # no NOP-Out answer within nop_in_timeout
    assert h.conn.close_requested and not h.engine.sessions


def test_login_timeout_closes_silent_connection() -> None:
    h = Harness([])
    idle = h.engine.new_connection(portal_group=1, now=0.0)
    h.engine.handle_timer(h.engine.config.login_timeout + 1)
    assert idle.close_requested and not h.conn.close_requested


def test_login_reaches_full_feature() -> None:
    h = Harness([("MaxRecvDataSegmentLength", "8192")])
    out = h.feed(h.cmd(read16(0, 8), read=True, expected_data_transfer_length=4096))
    assert out[-1].status_present and sum(len(p.data) for p in out) == 4096
    assert h.engine.sessions[1].params.max_recv_data_segment_length_peer == 8192


def test_get_timer_follows_the_next_deadline() -> None:
    """The adapter sleeps until get_timer(): the next ping, its answer's time-out, or
    a login time-out; with nothing due there is no timer at all."""
    import dataclasses

    h = Harness([])  # logged in at time 0.0
    assert h.engine.get_timer() is None  # no keep-alive configured, no login pending
    h.engine.config = dataclasses.replace(h.engine.config, nop_in_interval=5.0, nop_in_timeout=10.0)
    assert h.engine.get_timer() == 5.0
    h.engine.handle_timer(5.0)  # the ping goes out ...
    assert h.engine.get_timer() == 15.0  # ... and its answer is due within nop_in_timeout
    idle = h.engine.new_connection(portal_group=1, now=7.0)
    assert idle.next_deadline() == 7.0 + h.engine.config.login_timeout
    assert h.engine.get_timer() == 15.0


def test_connection_and_session_walk_the_rfc_tables(caplog: pytest.LogCaptureFixture) -> None:
    """Logout and failure take the RFC 7143 8.1.2 / 8.3 transitions of target/states.py,
    and no move outside the tables is logged."""
    from iscsi_conformance.target.states import ConnectionState, SessionState

    caplog.set_level("ERROR", logger="iscsi_conformance.target")
    h = Harness([])
    session = h.engine.sessions[1]
    assert (session.state, session.labels) == (SessionState.Q3_LOGGED_IN, ["N1", "N2"])
    h.engine.request_logout(session)
    assert h.conn.rfc_state is ConnectionState.S7_LOGOUT_REQUESTED
    h.feed(P.LogoutRequest(reason=1, itt=9, cid=0, cmdsn=h.cmdsn, expstatsn=0))
    assert h.conn.rfc_labels == ["T5", "T11", "T10", "T13"]
    assert h.conn.rfc_state is ConnectionState.S1_FREE
    assert (session.state, session.labels[-1]) == (SessionState.Q1_FREE, "N3")
    failed = Harness([])
    s2 = failed.engine.sessions[1]
    failed.conn.connection_lost()  # the transport went away in full feature phase
    assert failed.conn.rfc_labels == ["T5", "T15"]
    assert failed.conn.rfc_state is ConnectionState.S8_CLEANUP_WAIT
    assert s2.labels == ["N1", "N2", "N5", "N6"] and s2.state is SessionState.Q1_FREE
    assert not caplog.records
