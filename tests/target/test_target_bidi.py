"""The reference target's bidirectional commands (RFC 7143 11.3.4): XDWRITEREAD(10)
with its write part through R2Ts or immediate data and its read part as Data-In, R2T and
Data-In numbered in one sequence (4.2.2.4, 11.7.5), the status in a SCSI Response
(11.7.3) with both parts' residuals (11.4.1, 11.4.6), and a command with R and W but no
Bidirectional Read AHS rejected without taking its CmdSN (11.3.4, 11.17.1, 7.3)."""

from __future__ import annotations

import os

from target_helpers import SMALL, RawInitiator, feed, read16, sans_io_engine, write16

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.codes import RejectReason
from iscsi_conformance.scsi import cdb as C

BS = 512


def _bidi(
    ini: RawInitiator, cdb: bytes, write: bytes, read_length: int, *, immediate_data: bool
) -> tuple[P.PDU, bytes, list[P.PDU]]:
    cmd = P.ScsiCommand(
        final=True,
        read=True,
        write=True,
        lun=0,
        itt=ini.next_itt(),
        expected_data_transfer_length=len(write),
        cmdsn=ini.cmdsn,
        expstatsn=ini.expstatsn,
        cdb=cdb,
        bidi_read_length=read_length,
        data=write[:4096] if immediate_data else b"",
    )
    ini.cmdsn = (ini.cmdsn + 1) & 0xFFFFFFFF
    ini.send(cmd)
    return ini.collect(cmd.itt, write)


def _login(connect, target: str = SMALL, **keys: str) -> RawInitiator:  # type: ignore[no-untyped-def]
    ini: RawInitiator = connect()
    rsp = ini.login(target, params=list(keys.items()))
    assert rsp.status == 0
    ini.clear_ua()
    return ini


def test_xdwriteread_through_r2ts_shares_the_numbering(connect) -> None:  # type: ignore[no-untyped-def]
    ini = _login(connect)
    old, new = os.urandom(32 * BS), os.urandom(32 * BS)
    status, _, _ = ini.scsi(write16(40, 32), write=old, immediate_data=False)
    assert status.status == 0
    rsp, data, seen = _bidi(ini, C.xdwriteread10(40, 32), new, 32 * BS, immediate_data=False)
    assert isinstance(rsp, P.ScsiResponse) and rsp.status == 0
    assert data == bytes(a ^ b for a, b in zip(old, new, strict=True))
    # SMALL: MaxBurstLength 8192, so 16 KiB of write is two R2Ts; the read part follows
    sns = [p.r2tsn if isinstance(p, P.R2T) else p.datasn for p in seen
           if isinstance(p, P.R2T | P.ScsiDataIn)]  # fmt: skip
    assert sns == list(range(len(sns)))
    r2ts = [p for p in seen if isinstance(p, P.R2T)]
    data_ins = [p for p in seen if isinstance(p, P.ScsiDataIn)]
    assert len(r2ts) == 2 and len(data_ins) == 16  # 16 KiB in 1 KiB Data-In PDUs
    assert not any(p.status_present for p in data_ins)  # 11.7.3: status in a Response
    assert rsp.expdatasn == len(data_ins)
    assert not (rsp.bidi_overflow or rsp.bidi_underflow or rsp.overflow or rsp.underflow)
    _, back, _ = ini.scsi(read16(40, 32), read=32 * BS)
    assert back == new


def test_xdwriteread_with_immediate_data_and_disable_write(connect) -> None:  # type: ignore[no-untyped-def]
    ini = _login(connect, "iqn.2024-01.org.example:disk")
    old, new = os.urandom(4 * BS), os.urandom(4 * BS)
    ini.scsi(write16(8, 4), write=old)
    cdb = C.xdwriteread10(8, 4, disable_write=True)
    rsp, data, seen = _bidi(ini, cdb, new, 4 * BS, immediate_data=True)
    assert isinstance(rsp, P.ScsiResponse) and rsp.status == 0
    assert data == bytes(a ^ b for a, b in zip(old, new, strict=True))
    assert not [p for p in seen if isinstance(p, P.R2T)]
    sns = [p.datasn for p in seen if isinstance(p, P.ScsiDataIn)]
    assert sns == list(range(len(sns))) and sns  # no R2T: the read part numbers from 0
    _, back, _ = ini.scsi(read16(8, 4), read=4 * BS)
    assert back == old


def test_bidi_read_residuals(connect) -> None:  # type: ignore[no-untyped-def]
    ini = _login(connect, "iqn.2024-01.org.example:disk")
    new = os.urandom(2 * BS)
    rsp, data, _ = _bidi(ini, C.xdwriteread10(0, 2), new, BS, immediate_data=True)
    assert isinstance(rsp, P.ScsiResponse) and rsp.status == 0
    assert rsp.bidi_overflow and not rsp.bidi_underflow and rsp.bidi_residual_count == BS
    assert len(data) == BS
    rsp, data, _ = _bidi(ini, C.xdwriteread10(0, 2), new, 3 * BS, immediate_data=True)
    assert isinstance(rsp, P.ScsiResponse)
    assert rsp.bidi_underflow and not rsp.bidi_overflow and rsp.bidi_residual_count == BS
    assert len(data) == 2 * BS
    # the write part's residual stays in O/U and the Residual Count
    rsp, _, _ = _bidi(ini, C.xdwriteread10(0, 2), new + bytes(BS), 2 * BS, immediate_data=True)
    assert isinstance(rsp, P.ScsiResponse) and rsp.status == 0
    assert rsp.overflow is False and rsp.underflow and rsp.residual_count == BS
    assert not (rsp.bidi_overflow or rsp.bidi_underflow)


def test_r_and_w_without_the_ahs_is_rejected(connect) -> None:  # type: ignore[no-untyped-def]
    ini = _login(connect, "iqn.2024-01.org.example:disk")
    cmd = P.ScsiCommand(
        final=True, read=True, write=True, lun=0, itt=ini.next_itt(),
        expected_data_transfer_length=BS, cmdsn=ini.cmdsn, expstatsn=ini.expstatsn,
        cdb=C.xdwriteread10(0, 1), data=bytes(BS),
    )  # fmt: skip
    ini.send(cmd)
    rej = ini.recv()
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.INVALID_PDU_FIELD
    # 7.3: the rejected command's CmdSN is not taken; the next command plugs the gap
    assert rej.expcmdsn == cmd.cmdsn
    status, _, _ = ini.scsi(bytes(6))  # the session goes on
    assert status.status == 0


# ------------------------------------------------------------------ error recovery (sans-IO)
#
# The read part of a bidirectional command is retransmitted like a READ's Data-In: for a
# Data SNACK at ERL 1 (11.16, BegRun a DataSN of the shared R2T/Data-In sequence,
# 4.2.2.4), and from the initiator's ExpDataSN after a TASK REASSIGN at ERL 2 (11.5.6).


from target_helpers import NONE_TAG  # noqa: E402

from iscsi_conformance.core import text as T  # noqa: E402
from iscsi_conformance.core.codes import TmfFunction  # noqa: E402
from iscsi_conformance.target import engine as E  # noqa: E402

IQN = "iqn.2024-01.org.example:bidi"
KEYS = [
    ("InitiatorName", "iqn.2024-01.org.example:ini"),
    ("TargetName", IQN),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "No"),
    ("MaxRecvDataSegmentLength", "1024"),
    ("MaxBurstLength", "8192"),
    ("DefaultTime2Wait", "0"),
    ("DefaultTime2Retain", "20"),
]


def _engine(erl: str) -> E.TargetEngine:
    return sans_io_engine(IQN, "2")  # ERL 2 offered; the initiator's offer ``erl`` decides


_feed = feed


def _connect(engine: E.TargetEngine, erl: str, *, cid: int = 0, tsih: int = 0) -> E.Connection:
    conn = engine.new_connection(portal_group=1)
    # a connection joining the session: its names and its own connection key only
    keys = [*KEYS, ("ErrorRecoveryLevel", erl)] if not tsih else [*KEYS[:2], KEYS[4]]
    (rsp,) = _feed(
        engine,
        conn,
        P.LoginRequest(
            transit=True, csg=1, nsg=3, isid=1, tsih=tsih, cid=cid, itt=1, cmdsn=1,
            data=T.format_pairs(keys),
        ),
    )  # fmt: skip
    assert isinstance(rsp, P.LoginResponse) and rsp.status == 0
    return conn


def _bidi_task(
    engine: E.TargetEngine, conn: E.Connection, new: bytes, cmdsn: int
) -> tuple[P.ScsiCommand, list[P.PDU]]:
    """XDWRITEREAD(10) of ``new`` through R2Ts (8 KiB bursts): what the target sent."""
    cmd = P.ScsiCommand(
        final=True, read=True, write=True, itt=0x50, cmdsn=cmdsn, cdb=C.xdwriteread10(0, 32),
        expected_data_transfer_length=len(new), bidi_read_length=len(new),
    )  # fmt: skip
    seen = _feed(engine, conn, cmd)
    r2ts = [p for p in seen if isinstance(p, P.R2T)]
    while r2ts:
        r2t = r2ts.pop(0)
        off, ln = r2t.buffer_offset, r2t.desired_data_transfer_length
        outs = [
            P.ScsiDataOut(
                final=o + 1024 >= off + ln,
                itt=cmd.itt,
                ttt=r2t.ttt,
                datasn=i,
                buffer_offset=o,
                data=new[o : o + 1024],
            )
            for i, o in enumerate(range(off, off + ln, 1024))
        ]
        more = _feed(engine, conn, *outs)
        seen += more
        r2ts += [p for p in more if isinstance(p, P.R2T)]
    return cmd, seen


def _setup(erl: str) -> tuple[E.TargetEngine, E.Connection, bytes, P.ScsiCommand, list[P.PDU]]:
    engine = _engine(erl)
    conn = _connect(engine, erl)
    _feed(engine, conn, P.ScsiCommand(final=True, itt=1, cmdsn=1, cdb=bytes(6)))  # the UA
    new = os.urandom(32 * BS)
    cmd, seen = _bidi_task(engine, conn, new, 2)
    return engine, conn, new, cmd, seen


def test_erl1_data_snack_resends_the_read_part() -> None:
    engine, conn, _, cmd, seen = _setup("1")
    data_ins = [p for p in seen if isinstance(p, P.ScsiDataIn)]
    r2ts = [p for p in seen if isinstance(p, P.R2T)]
    assert len(r2ts) == 2 and len(data_ins) == 16
    first = data_ins[0].datasn
    assert first == 2  # after R2TSN 0 and 1 (4.2.2.4)
    again = _feed(
        engine, conn, P.SnackRequest(snack_type=0, itt=cmd.itt, begrun=first + 3, runlength=2)
    )
    assert all(isinstance(p, P.ScsiDataIn) for p in again), again  # not a SNACK Reject
    assert [p.datasn for p in again] == [first + 3, first + 4]  # type: ignore[attr-defined]
    assert [p.data for p in again] == [p.data for p in data_ins[3:5]]  # type: ignore[attr-defined]
    # BegRun 0 RunLength 0: every unacknowledged Data-In (11.16.6)
    everything = _feed(engine, conn, P.SnackRequest(snack_type=0, itt=cmd.itt))
    assert [p.datasn for p in everything] == [p.datasn for p in data_ins]  # type: ignore[attr-defined]
    # an R2T's number of a finished task, or one past the read part: rejected
    for begrun in (1, first + 16):
        (rej,) = _feed(
            engine, conn, P.SnackRequest(snack_type=0, itt=cmd.itt, begrun=begrun, runlength=1)
        )
        assert isinstance(rej, P.Reject)


def test_erl2_task_reassign_resends_the_read_part_from_expdatasn() -> None:
    engine, conn, _, cmd, seen = _setup("2")
    data_ins = [p for p in seen if isinstance(p, P.ScsiDataIn)]
    (rsp,) = [p for p in seen if isinstance(p, P.ScsiResponse)]
    first = data_ins[0].datasn
    (tsih,) = engine.sessions
    conn.connection_lost()  # nothing of it acknowledged
    second = _connect(engine, "2", cid=1, tsih=tsih)
    exp = first + 5
    got = _feed(
        engine,
        second,
        P.TaskManagementRequest(
            immediate=True, function=TmfFunction.TASK_REASSIGN, itt=0x60,
            referenced_task_tag=cmd.itt, cmdsn=3, expdatasn=exp,
        ),
    )  # fmt: skip
    assert isinstance(got[0], P.TaskManagementResponse) and got[0].response == 0
    again = [p for p in got if isinstance(p, P.ScsiDataIn)]
    assert [p.datasn for p in again] == list(range(exp, first + 16))
    assert b"".join(p.data for p in again) == b"".join(p.data for p in data_ins[5:])
    (status,) = [p for p in got if isinstance(p, P.ScsiResponse)]
    assert status.itt == cmd.itt and status.status == 0
    assert status.expdatasn == rsp.expdatasn == 16  # Data-In PDUs of the command (11.4.8)
    assert got[-1] is status  # the status last, never in a Data-In (11.7.3)
    assert NONE_TAG not in {p.itt for p in again}
