"""The reference target's bidirectional commands (RFC 7143 11.3.4): XDWRITEREAD(10)
with its write part through R2Ts or immediate data and its read part as Data-In, R2T and
Data-In numbered in one sequence (4.2.2.4, 11.7.5), the status in a SCSI Response
(11.7.3) with both parts' residuals (11.4.1, 11.4.6), and a command with R and W but no
Bidirectional Read AHS rejected without taking its CmdSN (11.3.4, 11.17.1, 7.3)."""

from __future__ import annotations

import os

from target_helpers import SMALL, RawInitiator, read16, write16

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
