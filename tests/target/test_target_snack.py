"""The reference target's R-Data SNACK and R2T SNACK at ErrorRecoveryLevel 1 (sans-IO).

- R-Data SNACK (RFC 7143 11.16.3): all of a finished READ's unacknowledged Data-In goes
  out again, segmented for the MaxRecvDataSegmentLength in force now, then a SCSI
  Response carrying the SNACK Tag and the StatSN of the status already sent; a Status
  SNACK afterwards brings that tagged response back (11.4.4).
- Data/R2T SNACK for a WRITE still under way (11.16): the outstanding R2T named by its
  R2TSN goes out again with its R2TSN, Target Transfer Tag, offset and length, and the
  current StatSN; the WRITE then completes with the data intact.
"""

from __future__ import annotations

import os

from target_helpers import feed, sans_io_engine

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.codes import RejectReason, SnackType
from iscsi_conformance.scsi import cdb as C
from iscsi_conformance.target import engine as E

IQN = "iqn.2024-01.org.example:snack"
BS = 512
TAG = 0x5A5A


def _engine() -> E.TargetEngine:
    return sans_io_engine(IQN, "1")


_feed = feed


def _connect(erl: str = "1") -> tuple[E.TargetEngine, E.Connection]:
    engine = _engine()
    conn = engine.new_connection(portal_group=1)
    keys = [
        ("InitiatorName", "iqn.2024-01.org.example:ini"),
        ("TargetName", IQN),
        ("ErrorRecoveryLevel", erl),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxRecvDataSegmentLength", "512"),
        ("MaxBurstLength", "1024"),
    ]
    (rsp,) = _feed(
        engine,
        conn,
        P.LoginRequest(
            transit=True, csg=1, nsg=3, isid=1, itt=1, cmdsn=1, data=T.format_pairs(keys)
        ),
    )
    assert isinstance(rsp, P.LoginResponse) and rsp.status == 0
    _feed(engine, conn, P.ScsiCommand(final=True, itt=1, cmdsn=1, cdb=bytes(6)))  # the UA
    return engine, conn


def _read(engine: E.TargetEngine, conn: E.Connection, cmdsn: int, blocks: int = 4) -> list[P.PDU]:
    cmd = P.ScsiCommand(
        final=True, read=True, itt=0x40, cmdsn=cmdsn, cdb=C.read10(0, blocks),
        expected_data_transfer_length=blocks * BS,
    )  # fmt: skip
    return _feed(engine, conn, cmd)


def _status_statsn(seen: list[P.PDU]) -> int:
    last = seen[-1]
    assert isinstance(last, P.ScsiDataIn | P.ScsiResponse)
    return last.statsn


def test_r_data_snack_resegments_and_ends_with_the_tagged_response() -> None:
    engine, conn = _connect()
    seen = _read(engine, conn, 2)
    data_ins = [p for p in seen if isinstance(p, P.ScsiDataIn)]
    assert len(data_ins) == 4 and data_ins[-1].status_present  # phase collapse
    statsn = _status_statsn(seen)
    data = b"".join(p.data for p in data_ins)
    # the initiator now receives 1024-byte segments (a new declaration, 6.4, 13.12)
    (text,) = _feed(
        engine, conn,
        P.TextRequest(final=True, itt=0x41, ttt=0xFFFFFFFF, cmdsn=3, expstatsn=statsn,
                      data=T.format_pairs([("MaxRecvDataSegmentLength", "1024")])),
    )  # fmt: skip
    assert isinstance(text, P.TextResponse)
    got = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.R_DATA, itt=0x40, ttt=TAG, expstatsn=statsn),
    )  # fmt: skip
    again = [p for p in got if isinstance(p, P.ScsiDataIn)]
    assert [p.datasn for p in again] == [0, 1]
    assert [len(p.data) for p in again] == [1024, 1024]
    assert not any(p.status_present for p in again)
    assert b"".join(p.data for p in again) == data
    rsp = got[-1]
    assert isinstance(rsp, P.ScsiResponse)
    assert rsp.snack_tag == TAG and rsp.statsn == statsn and rsp.status == 0
    assert rsp.expdatasn == 2  # the Data-In of the command now (11.4.8)
    # a Status SNACK brings back the latest content, with the SNACK Tag (11.16.3)
    (back,) = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.STATUS, begrun=statsn, runlength=1, expstatsn=statsn),
    )  # fmt: skip
    assert isinstance(back, P.ScsiResponse) and back.snack_tag == TAG and back.statsn == statsn
    # a Data SNACK names the resent PDUs by their new DataSN
    (one,) = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.DATA_R2T, itt=0x40, begrun=1, runlength=1,
                       expstatsn=statsn),
    )  # fmt: skip
    assert isinstance(one, P.ScsiDataIn) and one.datasn == 1 and one.data == data[1024:]


def test_r_data_snack_without_a_tag_or_after_the_status_is_acknowledged_is_rejected() -> None:
    engine, conn = _connect()
    seen = _read(engine, conn, 2)
    statsn = _status_statsn(seen)
    for tag in (0, 0xFFFFFFFF):  # 11.16.5: neither is a SNACK Tag
        (rej,) = _feed(
            engine, conn,
            P.SnackRequest(snack_type=SnackType.R_DATA, itt=0x40, ttt=tag, expstatsn=statsn),
        )  # fmt: skip
        assert isinstance(rej, P.Reject) and rej.reason == RejectReason.PROTOCOL_ERROR
    (rej,) = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.R_DATA, itt=0x40, ttt=TAG, expstatsn=statsn + 1),
    )  # fmt: skip
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.PROTOCOL_ERROR


def test_r2t_snack_resends_the_outstanding_r2t_and_the_write_completes() -> None:
    engine, conn = _connect()
    new = os.urandom(4 * BS)  # two 1024-byte bursts, MaxOutstandingR2T 1
    cmd = P.ScsiCommand(
        final=True, write=True, itt=0x50, cmdsn=2, cdb=C.write10(8, 4),
        expected_data_transfer_length=len(new),
    )  # fmt: skip
    (r2t0,) = _feed(engine, conn, cmd)
    assert isinstance(r2t0, P.R2T) and r2t0.r2tsn == 0
    # ignored (lost); the initiator asks again by R2TSN (11.16, 11.16.6)
    (again,) = _feed(
        engine, conn, P.SnackRequest(snack_type=SnackType.DATA_R2T, itt=0x50, begrun=0, runlength=1)
    )
    assert isinstance(again, P.R2T)
    same = ("r2tsn", "ttt", "buffer_offset", "desired_data_transfer_length", "lun", "itt")
    assert all(getattr(again, f) == getattr(r2t0, f) for f in same)
    # an R2TSN never sent: Protocol Error, with the next R2TSN (11.16, 11.17.2)
    (rej,) = _feed(
        engine, conn, P.SnackRequest(snack_type=SnackType.DATA_R2T, itt=0x50, begrun=5, runlength=1)
    )
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.PROTOCOL_ERROR
    assert rej.datasn_r2tsn == 1

    def answer(r2t: P.R2T) -> list[P.PDU]:
        off = r2t.buffer_offset
        return _feed(
            engine, conn,
            *(P.ScsiDataOut(final=i == 1, itt=0x50, ttt=r2t.ttt, datasn=i, buffer_offset=o,
                            data=new[o : o + 512])
              for i, o in enumerate((off, off + 512))),
        )  # fmt: skip

    (r2t1,) = answer(again)
    assert isinstance(r2t1, P.R2T) and r2t1.r2tsn == 1
    # half of the second burst, then a SNACK for it (BegRun 0 RunLength 0: all outstanding)
    _feed(
        engine, conn,
        P.ScsiDataOut(itt=0x50, ttt=r2t1.ttt, datasn=0, buffer_offset=1024, data=bytes(512)),
    )  # fmt: skip
    (again1,) = _feed(engine, conn, P.SnackRequest(snack_type=SnackType.DATA_R2T, itt=0x50))
    assert isinstance(again1, P.R2T) and again1.r2tsn == 1 and again1.ttt == r2t1.ttt
    (rsp,) = answer(again1)
    assert isinstance(rsp, P.ScsiResponse) and rsp.status == 0
    cmd = P.ScsiCommand(
        final=True, read=True, itt=0x51, cmdsn=3, cdb=C.read10(8, 4),
        expected_data_transfer_length=len(new),
    )  # fmt: skip
    got = _feed(engine, conn, cmd)
    assert b"".join(p.data for p in got if isinstance(p, P.ScsiDataIn)) == new


def _data_ack(ttt: int, begrun: int, expstatsn: int) -> P.SnackRequest:
    """A DataACK (11.16.2): Initiator Task Tag 0xffffffff (11.16.4), the A-bit Data-In's
    Target Transfer Tag (11.16.5), BegRun the next DataSN expected (11.16.6)."""
    return P.SnackRequest(
        snack_type=SnackType.DATA_ACK, itt=0xFFFFFFFF, ttt=ttt, begrun=begrun,
        expstatsn=expstatsn,
    )  # fmt: skip


def test_a_bit_once_per_burst_at_erl1_never_at_erl0() -> None:
    engine, conn = _connect()
    ins = [p for p in _read(engine, conn, 2) if isinstance(p, P.ScsiDataIn)]
    # MaxBurstLength 1024 in 512-byte PDUs: the A bit closes the first sequence only,
    # the second ends with the status (11.7.2: at most once every MaxBurstLength bytes)
    assert [p.ack for p in ins] == [False, True, False, False]
    assert ins[1].final and ins[1].ttt not in (0, 0xFFFFFFFF) and ins[3].status_present
    assert all(p.ttt == 0xFFFFFFFF for p in ins if not p.ack)
    engine, conn = _connect("0")
    ins = [p for p in _read(engine, conn, 2) if isinstance(p, P.ScsiDataIn)]
    assert len(ins) == 4 and not any(p.ack for p in ins)  # 11.7.2: MUST NOT at ERL 0


def test_data_ack_frees_only_the_data_before_begrun_and_r_data_resends_from_it() -> None:
    engine, conn = _connect()
    seen = _read(engine, conn, 2)
    ins = [p for p in seen if isinstance(p, P.ScsiDataIn)]
    statsn = _status_statsn(seen)
    data = b"".join(p.data for p in ins)
    assert _feed(engine, conn, _data_ack(ins[1].ttt, 2, statsn)) == []
    # DataSN 0..1 are acknowledged now: a Data SNACK for them is a Protocol Error (11.16)
    (rej,) = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.DATA_R2T, itt=0x40, begrun=1, runlength=1,
                       expstatsn=statsn),
    )  # fmt: skip
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.PROTOCOL_ERROR
    # ... and DataSN 2 is still kept
    (two,) = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.DATA_R2T, itt=0x40, begrun=2, runlength=1,
                       expstatsn=statsn),
    )  # fmt: skip
    assert isinstance(two, P.ScsiDataIn) and two.datasn == 2 and two.data == data[1024:1536]
    got = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.R_DATA, itt=0x40, ttt=TAG, expstatsn=statsn),
    )  # fmt: skip
    again = [p for p in got if isinstance(p, P.ScsiDataIn)]
    # 11.16.3: numbered from the BegRun of the last DataACK, only the unacknowledged data
    assert [(p.datasn, p.buffer_offset) for p in again] == [(2, 1024), (3, 1536)]
    assert b"".join(p.data for p in again) == data[1024:]
    assert not any(p.status_present or p.ack for p in again)
    rsp = got[-1]
    assert isinstance(rsp, P.ScsiResponse) and len(got) == 3
    assert rsp.snack_tag == TAG and rsp.statsn == statsn and rsp.status == 0
    assert rsp.expdatasn == 4


def test_r_data_after_everything_is_acknowledged_sends_only_the_tagged_response() -> None:
    engine, conn = _connect()
    seen = _read(engine, conn, 2)
    ack = next(p for p in seen if isinstance(p, P.ScsiDataIn) and p.ack)
    statsn = _status_statsn(seen)
    assert _feed(engine, conn, _data_ack(ack.ttt, 2, statsn)) == []
    assert _feed(engine, conn, _data_ack(ack.ttt, 1, statsn)) == []  # older: nothing more
    assert _feed(engine, conn, _data_ack(ack.ttt, 4, statsn)) == []  # all four
    # the status came in DataSN 3 (S bit): 11.16.3 wants a new SCSI Response all the same
    (rsp,) = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.R_DATA, itt=0x40, ttt=TAG, expstatsn=statsn),
    )  # fmt: skip
    assert isinstance(rsp, P.ScsiResponse) and rsp.snack_tag == TAG and rsp.statsn == statsn
    assert rsp.expdatasn == 4


def test_data_ack_beyond_the_data_sent_is_an_invalid_data_ack() -> None:
    engine, conn = _connect()
    seen = _read(engine, conn, 2)
    ack = next(p for p in seen if isinstance(p, P.ScsiDataIn) and p.ack)
    statsn = _status_statsn(seen)
    (rej,) = _feed(engine, conn, _data_ack(ack.ttt, 5, statsn))
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.INVALID_DATA_ACK
    # nothing was freed: the R-Data SNACK resends all four from DataSN 0
    got = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.R_DATA, itt=0x40, ttt=TAG, expstatsn=statsn),
    )  # fmt: skip
    assert [p.datasn for p in got if isinstance(p, P.ScsiDataIn)] == [0, 1, 2, 3]


def test_bidi_data_ack_names_the_shared_numbering_and_r_data_resends_from_it() -> None:
    engine, conn = _connect()
    new = os.urandom(4 * BS)
    cmd = P.ScsiCommand(
        final=True, read=True, write=True, itt=0x60, cmdsn=2, cdb=C.xdwriteread10(8, 4),
        expected_data_transfer_length=len(new), bidi_read_length=len(new),
    )  # fmt: skip
    seen = _feed(engine, conn, cmd)
    while seen and isinstance(seen[-1], P.R2T):  # 1024-byte bursts, one R2T at a time
        r2t = seen[-1]
        off = r2t.buffer_offset
        seen += _feed(
            engine, conn,
            *(P.ScsiDataOut(final=i == 1, itt=0x60, ttt=r2t.ttt, datasn=i, buffer_offset=o,
                            data=new[o : o + 512])
              for i, o in enumerate((off, off + 512))),
        )  # fmt: skip
    ins = [p for p in seen if isinstance(p, P.ScsiDataIn)]
    rsp = seen[-1]
    assert isinstance(rsp, P.ScsiResponse) and rsp.status == 0
    # R2TSN 0 and 1, then the read part from DataSN 2 (4.2.2.4); no status in a Data-In
    # of a bidirectional command (11.7.3), so both sequences end with the A bit
    assert [p.datasn for p in ins] == [2, 3, 4, 5]
    assert [p.ack for p in ins] == [False, True, False, True]
    data = b"".join(p.data for p in ins)
    assert _feed(engine, conn, _data_ack(ins[1].ttt, 4, rsp.statsn)) == []
    got = _feed(
        engine, conn,
        P.SnackRequest(snack_type=SnackType.R_DATA, itt=0x60, ttt=TAG, expstatsn=rsp.statsn),
    )  # fmt: skip
    again = [p for p in got if isinstance(p, P.ScsiDataIn)]
    assert [(p.datasn, p.buffer_offset) for p in again] == [(4, 1024), (5, 1536)]
    assert b"".join(p.data for p in again) == data[1024:]
    last = got[-1]
    assert isinstance(last, P.ScsiResponse) and last.snack_tag == TAG
    assert last.statsn == rsp.statsn and last.expdatasn == 4  # the read part's Data-In
