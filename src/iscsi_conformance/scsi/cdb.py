"""CDB builders (initiator side), CDB field decoding (target side), and parsers for
the parameter data that comes back (SPC-4, SBC-3).

Theory of operation: builders are plain functions returning ``bytes``; they check
that each value fits its field (``ValueError`` otherwise) but no more, so a test may
build odd-but-encodable CDBs.  A test that wants a malformed CDB patches the bytes.
Parsers take the Data-In bytes (possibly truncated by the allocation length) and
return frozen dataclasses; they never raise on short data beyond what the fixed
header needs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .codes import MaintenanceIn, ScsiOpcode, ServiceActionIn16
from .nexus import decode_transport_id, encode_transport_id


def _fit(value: int, bits: int, name: str) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name}={value} does not fit in {bits} bits")
    return value


def cdb_length(opcode: int) -> int:
    """CDB length from the group code of the operation code (SPC-4 4.2.5.1)."""
    group = opcode >> 5
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(group, 16 if group == 3 else 10)


# =========================================================================== builders
# ---- SPC-4 commands


def test_unit_ready() -> bytes:
    """TEST UNIT READY (SPC-4 6.37)."""
    return bytes(6)


test_unit_ready.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def request_sense(alloc: int = 252, *, desc: bool = False) -> bytes:
    """REQUEST SENSE (SPC-4 6.29)."""
    return bytes([ScsiOpcode.REQUEST_SENSE, int(desc), 0, 0, _fit(alloc, 8, "alloc"), 0])


def inquiry(evpd: bool = False, page: int = 0, alloc: int = 255) -> bytes:
    """INQUIRY (SPC-4 6.4.1)."""
    return struct.pack(
        ">BBBHB", ScsiOpcode.INQUIRY, int(evpd), _fit(page, 8, "page"), _fit(alloc, 16, "alloc"), 0
    )


def report_luns(alloc: int = 4096, select_report: int = 0) -> bytes:
    """REPORT LUNS (SPC-4 6.33)."""
    return struct.pack(
        ">BxBxxxIxB",
        ScsiOpcode.REPORT_LUNS,
        _fit(select_report, 8, "select_report"),
        _fit(alloc, 32, "alloc"),
        0,
    )


def mode_sense6(
    page: int, subpage: int = 0, *, pc: int = 0, dbd: bool = False, alloc: int = 255
) -> bytes:
    """MODE SENSE(6) (SPC-4 6.11)."""
    return bytes(
        [
            ScsiOpcode.MODE_SENSE_6,
            0x08 if dbd else 0,
            _fit(pc, 2, "pc") << 6 | _fit(page, 6, "page"),
            _fit(subpage, 8, "subpage"),
            _fit(alloc, 8, "alloc"),
            0,
        ]
    )


def mode_sense10(
    page: int,
    subpage: int = 0,
    *,
    pc: int = 0,
    dbd: bool = False,
    llbaa: bool = False,
    alloc: int = 1024,
) -> bytes:
    """MODE SENSE(10) (SPC-4 6.12)."""
    b1 = (0x10 if llbaa else 0) | (0x08 if dbd else 0)
    return struct.pack(
        ">BBBBxxxHB",
        ScsiOpcode.MODE_SENSE_10,
        b1,
        _fit(pc, 2, "pc") << 6 | _fit(page, 6, "page"),
        _fit(subpage, 8, "subpage"),
        _fit(alloc, 16, "alloc"),
        0,
    )


def mode_select6(param_len: int, *, pf: bool = True, sp: bool = False) -> bytes:
    """MODE SELECT(6) (SPC-4 6.9)."""
    return bytes(
        [
            ScsiOpcode.MODE_SELECT_6,
            (0x10 if pf else 0) | int(sp),
            0,
            0,
            _fit(param_len, 8, "param_len"),
            0,
        ]
    )


def mode_select10(param_len: int, *, pf: bool = True, sp: bool = False) -> bytes:
    """MODE SELECT(10) (SPC-4 6.10)."""
    return struct.pack(
        ">BBxxxxxHB",
        ScsiOpcode.MODE_SELECT_10,
        (0x10 if pf else 0) | int(sp),
        _fit(param_len, 16, "param_len"),
        0,
    )


def mode_parameter_list6(
    pages: bytes, *, block_descriptors: bytes = b"", device_specific: int = 0
) -> bytes:
    """A MODE SELECT(6) parameter list: header, block descriptors, pages (SPC-4 7.5.4)."""
    return bytes([0, 0, device_specific, len(block_descriptors)]) + block_descriptors + pages


def mode_parameter_list10(
    pages: bytes, *, block_descriptors: bytes = b"", device_specific: int = 0
) -> bytes:
    """A MODE SELECT(10) parameter list (SPC-4 7.5.5)."""
    return (
        struct.pack(">HBBBxH", 0, 0, device_specific, 0, len(block_descriptors))
        + block_descriptors
        + pages
    )


def reserve6() -> bytes:
    """RESERVE(6) (SPC-2 7.21)."""
    return bytes([ScsiOpcode.RESERVE_6, 0, 0, 0, 0, 0])


def release6() -> bytes:
    """RELEASE(6) (SPC-2 7.19)."""
    return bytes([ScsiOpcode.RELEASE_6, 0, 0, 0, 0, 0])


def reserve10() -> bytes:
    """RESERVE(10) (SPC-2 7.22), logical unit reservation, no third party."""
    return bytes([ScsiOpcode.RESERVE_10] + [0] * 9)


def release10() -> bytes:
    """RELEASE(10) (SPC-2 7.20)."""
    return bytes([ScsiOpcode.RELEASE_10] + [0] * 9)


def persistent_reserve_in(sa: int, alloc: int = 8192) -> bytes:
    """PERSISTENT RESERVE IN (SPC-4 6.15)."""
    return struct.pack(
        ">BBxxxxxHB",
        ScsiOpcode.PERSISTENT_RESERVE_IN,
        _fit(sa, 5, "sa"),
        _fit(alloc, 16, "alloc"),
        0,
    )


def persistent_reserve_out(sa: int, scope: int = 0, pr_type: int = 0, param_len: int = 24) -> bytes:
    """PERSISTENT RESERVE OUT (SPC-4 6.16)."""
    return struct.pack(
        ">BBBxxIB",
        ScsiOpcode.PERSISTENT_RESERVE_OUT,
        _fit(sa, 5, "sa"),
        _fit(scope, 4, "scope") << 4 | _fit(pr_type, 4, "pr_type"),
        _fit(param_len, 32, "param_len"),
        0,
    )


def pr_out_parameters(
    key: int = 0,
    sa_key: int = 0,
    *,
    spec_i_pt: bool = False,
    all_tg_pt: bool = False,
    aptpl: bool = False,
    transport_ids: Iterable[bytes | str] = (),
) -> bytes:
    """PERSISTENT RESERVE OUT basic parameter list (SPC-4 6.16.3); with ``spec_i_pt``
    the TransportID list follows (strings are encoded as iSCSI TransportIDs)."""
    flags = (0x08 if spec_i_pt else 0) | (0x04 if all_tg_pt else 0) | (0x01 if aptpl else 0)
    base = struct.pack(">QQ4xBxxx", _fit(key, 64, "key"), _fit(sa_key, 64, "sa_key"), flags)
    if not spec_i_pt:
        return base
    tids = b"".join(t if isinstance(t, bytes) else encode_transport_id(t) for t in transport_ids)
    return base + struct.pack(">I", len(tids)) + tids


def register_and_move_parameters(
    key: int,
    sa_key: int,
    relative_target_port: int,
    transport_id: bytes | str,
    *,
    unreg: bool = False,
    aptpl: bool = False,
) -> bytes:
    """REGISTER AND MOVE parameter list (SPC-4 6.16.4)."""
    tid = transport_id if isinstance(transport_id, bytes) else encode_transport_id(transport_id)
    flags = (0x02 if unreg else 0) | (0x01 if aptpl else 0)
    return (
        struct.pack(
            ">QQxBHI",
            _fit(key, 64, "key"),
            _fit(sa_key, 64, "sa_key"),
            flags,
            _fit(relative_target_port, 16, "rtp"),
            len(tid),
        )
        + tid
    )


def pr_out(
    sa: int,
    *,
    key: int = 0,
    sa_key: int = 0,
    scope: int = 0,
    pr_type: int = 0,
    spec_i_pt: bool = False,
    all_tg_pt: bool = False,
    aptpl: bool = False,
    transport_ids: Sequence[bytes | str] = (),
) -> tuple[bytes, bytes]:
    """(CDB, parameter list) for a PERSISTENT RESERVE OUT other than REGISTER AND MOVE."""
    data = pr_out_parameters(
        key,
        sa_key,
        spec_i_pt=spec_i_pt,
        all_tg_pt=all_tg_pt,
        aptpl=aptpl,
        transport_ids=transport_ids,
    )
    return persistent_reserve_out(sa, scope, pr_type, len(data)), data


def report_supported_opcodes(
    options: int = 0, opcode: int = 0, sa: int = 0, *, rctd: bool = False, alloc: int = 65535
) -> bytes:
    """REPORT SUPPORTED OPERATION CODES (SPC-4 6.35)."""
    return struct.pack(
        ">BBBBHIxB",
        ScsiOpcode.MAINTENANCE_IN,
        MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES,
        (0x80 if rctd else 0) | _fit(options, 3, "options"),
        _fit(opcode, 8, "opcode"),
        _fit(sa, 16, "sa"),
        _fit(alloc, 32, "alloc"),
        0,
    )


# ---- SBC-3 commands


def read_capacity10() -> bytes:
    """READ CAPACITY(10) (SBC-3 5.15)."""
    return bytes([ScsiOpcode.READ_CAPACITY_10] + [0] * 9)


def read_capacity16(alloc: int = 32) -> bytes:
    """READ CAPACITY(16) (SBC-3 5.16)."""
    return struct.pack(
        ">BBQIBB",
        ScsiOpcode.SERVICE_ACTION_IN_16,
        ServiceActionIn16.READ_CAPACITY_16,
        0,
        _fit(alloc, 32, "alloc"),
        0,
        0,
    )


def get_lba_status(lba: int, alloc: int = 24) -> bytes:
    """GET LBA STATUS (SBC-3 5.8)."""
    return struct.pack(
        ">BBQIBB",
        ScsiOpcode.SERVICE_ACTION_IN_16,
        ServiceActionIn16.GET_LBA_STATUS,
        _fit(lba, 64, "lba"),
        _fit(alloc, 32, "alloc"),
        0,
        0,
    )


def _rw_flags(protect: int, dpo: bool, fua: bool) -> int:
    return _fit(protect, 3, "protect") << 5 | (0x10 if dpo else 0) | (0x08 if fua else 0)


def read6(lba: int, blocks: int) -> bytes:
    """READ(6) (SBC-3 5.9); ``blocks`` 1..256, 256 is sent as 0."""
    if not 1 <= blocks <= 256:
        raise ValueError("READ(6) transfers 1..256 blocks")
    return struct.pack(
        ">BBHBB", ScsiOpcode.READ_6, _fit(lba, 21, "lba") >> 16, lba & 0xFFFF, blocks & 0xFF, 0
    )


def write6(lba: int, blocks: int) -> bytes:
    """WRITE(6) (SBC-3 5.32); ``blocks`` 1..256, 256 is sent as 0."""
    if not 1 <= blocks <= 256:
        raise ValueError("WRITE(6) transfers 1..256 blocks")
    return struct.pack(
        ">BBHBB", ScsiOpcode.WRITE_6, _fit(lba, 21, "lba") >> 16, lba & 0xFFFF, blocks & 0xFF, 0
    )


def _cdb10(op: int, b1: int, lba: int, blocks: int, group: int = 0) -> bytes:
    return struct.pack(
        ">BBIBHB",
        op,
        b1,
        _fit(lba, 32, "lba"),
        _fit(group, 5, "group"),
        _fit(blocks, 16, "blocks"),
        0,
    )


def _cdb12(op: int, b1: int, lba: int, blocks: int, group: int = 0) -> bytes:
    return struct.pack(
        ">BBIIBB",
        op,
        b1,
        _fit(lba, 32, "lba"),
        _fit(blocks, 32, "blocks"),
        _fit(group, 5, "group"),
        0,
    )


def _cdb16(op: int, b1: int, lba: int, blocks: int, group: int = 0) -> bytes:
    return struct.pack(
        ">BBQIBB",
        op,
        b1,
        _fit(lba, 64, "lba"),
        _fit(blocks, 32, "blocks"),
        _fit(group, 5, "group"),
        0,
    )


def read10(
    lba: int,
    blocks: int,
    *,
    dpo: bool = False,
    fua: bool = False,
    rdprotect: int = 0,
    group: int = 0,
) -> bytes:
    """READ(10) (SBC-3 5.10)."""
    return _cdb10(ScsiOpcode.READ_10, _rw_flags(rdprotect, dpo, fua), lba, blocks, group)


def read12(
    lba: int,
    blocks: int,
    *,
    dpo: bool = False,
    fua: bool = False,
    rdprotect: int = 0,
    group: int = 0,
) -> bytes:
    """READ(12) (SBC-3 5.11)."""
    return _cdb12(ScsiOpcode.READ_12, _rw_flags(rdprotect, dpo, fua), lba, blocks, group)


def read16(
    lba: int,
    blocks: int,
    *,
    dpo: bool = False,
    fua: bool = False,
    rdprotect: int = 0,
    group: int = 0,
) -> bytes:
    """READ(16) (SBC-3 5.12)."""
    return _cdb16(ScsiOpcode.READ_16, _rw_flags(rdprotect, dpo, fua), lba, blocks, group)


def write10(
    lba: int,
    blocks: int,
    *,
    dpo: bool = False,
    fua: bool = False,
    wrprotect: int = 0,
    group: int = 0,
) -> bytes:
    """WRITE(10) (SBC-3 5.33)."""
    return _cdb10(ScsiOpcode.WRITE_10, _rw_flags(wrprotect, dpo, fua), lba, blocks, group)


def xdwriteread10(
    lba: int,
    blocks: int,
    *,
    disable_write: bool = False,
    dpo: bool = False,
    fua: bool = False,
    group: int = 0,
) -> bytes:
    """XDWRITEREAD(10) (SBC-3 5.48, sbc3r22 numbering): a bidirectional command whose
    Data-In is the XOR of its Data-Out with the addressed blocks; DISABLE WRITE (byte 1
    bit 2) keeps the Data-Out off the medium."""
    flags = _rw_flags(0, dpo, fua) | (0x04 if disable_write else 0)
    return _cdb10(ScsiOpcode.XDWRITEREAD_10, flags, lba, blocks, group)


def write12(
    lba: int,
    blocks: int,
    *,
    dpo: bool = False,
    fua: bool = False,
    wrprotect: int = 0,
    group: int = 0,
) -> bytes:
    """WRITE(12) (SBC-3 5.34)."""
    return _cdb12(ScsiOpcode.WRITE_12, _rw_flags(wrprotect, dpo, fua), lba, blocks, group)


def write16(
    lba: int,
    blocks: int,
    *,
    dpo: bool = False,
    fua: bool = False,
    wrprotect: int = 0,
    group: int = 0,
) -> bytes:
    """WRITE(16) (SBC-3 5.35)."""
    return _cdb16(ScsiOpcode.WRITE_16, _rw_flags(wrprotect, dpo, fua), lba, blocks, group)


def write_verify10(
    lba: int, blocks: int, *, bytchk: bool = False, dpo: bool = False, wrprotect: int = 0
) -> bytes:
    """WRITE AND VERIFY(10) (SBC-3 5.37)."""
    return _cdb10(
        ScsiOpcode.WRITE_AND_VERIFY_10,
        _rw_flags(wrprotect, dpo, False) | (0x02 if bytchk else 0),
        lba,
        blocks,
    )


def write_verify12(
    lba: int, blocks: int, *, bytchk: bool = False, dpo: bool = False, wrprotect: int = 0
) -> bytes:
    """WRITE AND VERIFY(12) (SBC-3 5.38)."""
    return _cdb12(
        ScsiOpcode.WRITE_AND_VERIFY_12,
        _rw_flags(wrprotect, dpo, False) | (0x02 if bytchk else 0),
        lba,
        blocks,
    )


def write_verify16(
    lba: int, blocks: int, *, bytchk: bool = False, dpo: bool = False, wrprotect: int = 0
) -> bytes:
    """WRITE AND VERIFY(16) (SBC-3 5.39)."""
    return _cdb16(
        ScsiOpcode.WRITE_AND_VERIFY_16,
        _rw_flags(wrprotect, dpo, False) | (0x02 if bytchk else 0),
        lba,
        blocks,
    )


def verify10(
    lba: int, blocks: int, *, bytchk: int = 0, dpo: bool = False, vrprotect: int = 0
) -> bytes:
    """VERIFY(10) (SBC-3 5.29); ``bytchk`` 0 (medium), 1 (compare), 3 (one block vs all)."""
    return _cdb10(
        ScsiOpcode.VERIFY_10,
        _rw_flags(vrprotect, dpo, False) | _fit(bytchk, 2, "bytchk") << 1,
        lba,
        blocks,
    )


def verify12(
    lba: int, blocks: int, *, bytchk: int = 0, dpo: bool = False, vrprotect: int = 0
) -> bytes:
    """VERIFY(12) (SBC-3 5.30)."""
    return _cdb12(
        ScsiOpcode.VERIFY_12,
        _rw_flags(vrprotect, dpo, False) | _fit(bytchk, 2, "bytchk") << 1,
        lba,
        blocks,
    )


def verify16(
    lba: int, blocks: int, *, bytchk: int = 0, dpo: bool = False, vrprotect: int = 0
) -> bytes:
    """VERIFY(16) (SBC-3 5.31)."""
    return _cdb16(
        ScsiOpcode.VERIFY_16,
        _rw_flags(vrprotect, dpo, False) | _fit(bytchk, 2, "bytchk") << 1,
        lba,
        blocks,
    )


def synchronize_cache10(lba: int = 0, blocks: int = 0, *, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE(10) (SBC-3 5.22)."""
    return _cdb10(ScsiOpcode.SYNCHRONIZE_CACHE_10, 0x02 if immed else 0, lba, blocks)


def synchronize_cache16(lba: int = 0, blocks: int = 0, *, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE(16) (SBC-3 5.23)."""
    return _cdb16(ScsiOpcode.SYNCHRONIZE_CACHE_16, 0x02 if immed else 0, lba, blocks)


def prefetch10(lba: int, blocks: int, *, immed: bool = False, group: int = 0) -> bytes:
    """PRE-FETCH(10) (SBC-3 5.6)."""
    return _cdb10(ScsiOpcode.PRE_FETCH_10, 0x02 if immed else 0, lba, blocks, group)


def prefetch16(lba: int, blocks: int, *, immed: bool = False, group: int = 0) -> bytes:
    """PRE-FETCH(16) (SBC-3 5.7)."""
    return _cdb16(ScsiOpcode.PRE_FETCH_16, 0x02 if immed else 0, lba, blocks, group)


def write_same10(
    lba: int, blocks: int, *, unmap: bool = False, anchor: bool = False, wrprotect: int = 0
) -> bytes:
    """WRITE SAME(10) (SBC-3 5.42)."""
    b1 = _fit(wrprotect, 3, "wrprotect") << 5 | (0x10 if anchor else 0) | (0x08 if unmap else 0)
    return _cdb10(ScsiOpcode.WRITE_SAME_10, b1, lba, blocks)


def write_same16(
    lba: int,
    blocks: int,
    *,
    unmap: bool = False,
    anchor: bool = False,
    ndob: bool = False,
    wrprotect: int = 0,
) -> bytes:
    """WRITE SAME(16) (SBC-3 5.43); NDOB means no Data-Out (write zeros)."""
    b1 = (
        _fit(wrprotect, 3, "wrprotect") << 5
        | (0x10 if anchor else 0)
        | (0x08 if unmap else 0)
        | (0x01 if ndob else 0)
    )
    return _cdb16(ScsiOpcode.WRITE_SAME_16, b1, lba, blocks)


def unmap(param_len: int, *, anchor: bool = False) -> bytes:
    """UNMAP (SBC-3 5.28); the parameter list comes from ``unmap_parameters``."""
    return struct.pack(
        ">BBxxxxBHB", ScsiOpcode.UNMAP, int(anchor), 0, _fit(param_len, 16, "param_len"), 0
    )


def unmap_parameters(descriptors: Iterable[tuple[int, int]]) -> bytes:
    """UNMAP parameter list (SBC-3 5.28.2): (lba, blocks) descriptors."""
    body = b"".join(
        struct.pack(">QI4x", _fit(lba, 64, "lba"), _fit(n, 32, "blocks")) for lba, n in descriptors
    )
    return struct.pack(">HH4x", len(body) + 6, len(body)) + body


def compare_and_write(
    lba: int,
    blocks: int,
    *,
    dpo: bool = False,
    fua: bool = False,
    wrprotect: int = 0,
    group: int = 0,
) -> bytes:
    """COMPARE AND WRITE (SBC-3 5.2); Data-Out is 2 x blocks (verify data, then write data)."""
    return struct.pack(
        ">BBQxxxBBB",
        ScsiOpcode.COMPARE_AND_WRITE,
        _rw_flags(wrprotect, dpo, fua),
        _fit(lba, 64, "lba"),
        _fit(blocks, 8, "blocks"),
        _fit(group, 5, "group"),
        0,
    )


def start_stop_unit(
    start: bool = True,
    *,
    loej: bool = False,
    immed: bool = False,
    power_condition: int = 0,
    modifier: int = 0,
    no_flush: bool = False,
) -> bytes:
    """START STOP UNIT (SBC-3 5.25)."""
    b4 = (
        _fit(power_condition, 4, "power_condition") << 4
        | (0x04 if no_flush else 0)
        | (0x02 if loej else 0)
        | int(start)
    )
    return bytes([ScsiOpcode.START_STOP_UNIT, int(immed), 0, _fit(modifier, 4, "modifier"), b4, 0])


def prevent_allow(prevent: int | bool) -> bytes:
    """PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.5)."""
    return bytes(
        [ScsiOpcode.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, _fit(int(prevent), 2, "prevent"), 0]
    )


# =========================================================================== CDB fields
@dataclass(frozen=True)
class BlockCdb:
    """LBA / length fields of a block command, decoded (target side)."""

    opcode: int
    lba: int
    blocks: int
    flags: int  # byte 1
    group: int = 0


def decode_block_cdb(cdb: bytes) -> BlockCdb:
    """Decode LBA and transfer length of READ/WRITE/VERIFY/WRITE SAME/SYNCHRONIZE
    CACHE/PRE-FETCH/COMPARE AND WRITE CDBs.  READ(6)/WRITE(6) length 0 means 256
    (SBC-3 5.9); COMPARE AND WRITE carries NUMBER OF LOGICAL BLOCKS in byte 13."""
    op = cdb[0]
    n = cdb_length(op)
    if len(cdb) < n:
        raise ValueError(f"CDB for opcode {op:#04x} needs {n} bytes, got {len(cdb)}")
    if n == 6:
        lba = (cdb[1] & 0x1F) << 16 | cdb[2] << 8 | cdb[3]
        blocks = cdb[4] or 256
        return BlockCdb(op, lba, blocks, 0)
    if n == 10:
        lba, group, blocks = struct.unpack_from(">IBH", cdb, 2)
        return BlockCdb(op, lba, blocks, cdb[1], group & 0x1F)
    if n == 12:
        lba, blocks, group = struct.unpack_from(">IIB", cdb, 2)
        return BlockCdb(op, lba, blocks, cdb[1], group & 0x1F)
    if op == ScsiOpcode.COMPARE_AND_WRITE:
        (lba,) = struct.unpack_from(">Q", cdb, 2)
        return BlockCdb(op, lba, cdb[13], cdb[1], cdb[14] & 0x1F)
    lba, blocks, group = struct.unpack_from(">QIB", cdb, 2)
    return BlockCdb(op, lba, blocks, cdb[1], group & 0x1F)


# =========================================================================== parsers
def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip(" \0")


@dataclass(frozen=True)
class StandardInquiry:
    """Standard INQUIRY data (SPC-4 6.4.2)."""

    qualifier: int
    device_type: int
    rmb: bool
    version: int
    normaca: bool
    hisup: bool
    response_data_format: int
    additional_length: int
    sccs: bool
    acc: bool
    tpgs: int
    three_pc: bool
    protect: bool
    encserv: bool
    multip: bool
    cmdque: bool
    vendor: str
    product: str
    revision: str
    version_descriptors: tuple[int, ...]


def parse_inquiry(data: bytes) -> StandardInquiry:
    """Parse standard INQUIRY data (at least 36 bytes)."""
    if len(data) < 36:
        raise ValueError("standard INQUIRY data shorter than 36 bytes")
    descs: list[int] = []
    for off in range(58, min(len(data), 74), 2):
        if off + 2 <= len(data):
            (v,) = struct.unpack_from(">H", data, off)
            if v:
                descs.append(v)
    return StandardInquiry(
        qualifier=data[0] >> 5,
        device_type=data[0] & 0x1F,
        rmb=bool(data[1] & 0x80),
        version=data[2],
        normaca=bool(data[3] & 0x20),
        hisup=bool(data[3] & 0x10),
        response_data_format=data[3] & 0x0F,
        additional_length=data[4],
        sccs=bool(data[5] & 0x80),
        acc=bool(data[5] & 0x40),
        tpgs=(data[5] >> 4) & 3,
        three_pc=bool(data[5] & 0x08),
        protect=bool(data[5] & 0x01),
        encserv=bool(data[6] & 0x40),
        multip=bool(data[6] & 0x10),
        cmdque=bool(data[7] & 0x02),
        vendor=_ascii(data[8:16]),
        product=_ascii(data[16:32]),
        revision=_ascii(data[32:36]),
        version_descriptors=tuple(descs),
    )


def _vpd_body(data: bytes, page: int) -> bytes:
    if len(data) < 4:
        raise ValueError("VPD page shorter than its 4-byte header")
    if data[1] != page:
        raise ValueError(f"expected VPD page {page:#04x}, got {data[1]:#04x}")
    (length,) = struct.unpack_from(">H", data, 2)
    return data[4 : 4 + length]


def parse_vpd_00(data: bytes) -> list[int]:
    """Supported VPD pages (SPC-4 7.8.15)."""
    return list(_vpd_body(data, 0x00))


def parse_vpd_80(data: bytes) -> str:
    """Unit Serial Number (SPC-4 7.8.16)."""
    return _ascii(_vpd_body(data, 0x80))


@dataclass(frozen=True)
class Designator:
    """One Device Identification designation descriptor (SPC-4 7.8.6.1)."""

    protocol_identifier: int
    code_set: int
    piv: bool
    association: int
    designator_type: int
    designator: bytes


def parse_vpd_83(data: bytes) -> list[Designator]:
    """Device Identification (SPC-4 7.8.6)."""
    body = _vpd_body(data, 0x83)
    out: list[Designator] = []
    pos = 0
    while pos + 4 <= len(body):
        b0, b1, _, ln = body[pos : pos + 4]
        out.append(
            Designator(
                protocol_identifier=b0 >> 4,
                code_set=b0 & 0x0F,
                piv=bool(b1 & 0x80),
                association=(b1 >> 4) & 3,
                designator_type=b1 & 0x0F,
                designator=bytes(body[pos + 4 : pos + 4 + ln]),
            )
        )
        pos += 4 + ln
    return out


@dataclass(frozen=True)
class BlockLimits:
    """Block Limits VPD (SBC-3 6.5.3)."""

    wsnz: bool
    max_compare_and_write_length: int
    optimal_transfer_length_granularity: int
    max_transfer_length: int
    optimal_transfer_length: int
    max_prefetch_length: int
    max_unmap_lba_count: int
    max_unmap_block_descriptor_count: int
    optimal_unmap_granularity: int
    ugavalid: bool
    unmap_granularity_alignment: int
    max_write_same_length: int


def parse_vpd_b0(data: bytes) -> BlockLimits:
    body = _vpd_body(data, 0xB0).ljust(0x3C, b"\0")
    og, mtl, otl, mpl, mulc, mubdc, oug, uga, mwsl = struct.unpack_from(">HIIIIIIIQ", body, 2)
    return BlockLimits(
        wsnz=bool(body[0] & 1),
        max_compare_and_write_length=body[1],
        optimal_transfer_length_granularity=og,
        max_transfer_length=mtl,
        optimal_transfer_length=otl,
        max_prefetch_length=mpl,
        max_unmap_lba_count=mulc,
        max_unmap_block_descriptor_count=mubdc,
        optimal_unmap_granularity=oug,
        ugavalid=bool(uga & 0x80000000),
        unmap_granularity_alignment=uga & 0x7FFFFFFF,
        max_write_same_length=mwsl,
    )


def parse_vpd_b1(data: bytes) -> int:
    """Block Device Characteristics (SBC-3 6.5.2): the MEDIUM ROTATION RATE (1 = SSD)."""
    body = _vpd_body(data, 0xB1)
    return int(struct.unpack_from(">H", body.ljust(2, b"\0"), 0)[0])


@dataclass(frozen=True)
class LogicalBlockProvisioning:
    """Logical Block Provisioning VPD (SBC-3 6.5.4)."""

    threshold_exponent: int
    lbpu: bool
    lbpws: bool
    lbpws10: bool
    lbprz: bool
    anc_sup: bool
    dp: bool
    provisioning_type: int


def parse_vpd_b2(data: bytes) -> LogicalBlockProvisioning:
    body = _vpd_body(data, 0xB2).ljust(4, b"\0")
    return LogicalBlockProvisioning(
        threshold_exponent=body[0],
        lbpu=bool(body[1] & 0x80),
        lbpws=bool(body[1] & 0x40),
        lbpws10=bool(body[1] & 0x20),
        lbprz=bool(body[1] & 0x04),
        anc_sup=bool(body[1] & 0x02),
        dp=bool(body[1] & 0x01),
        provisioning_type=body[2] & 7,
    )


def parse_read_capacity10(data: bytes) -> tuple[int, int]:
    """(RETURNED LOGICAL BLOCK ADDRESS, LOGICAL BLOCK LENGTH) (SBC-3 5.15.2)."""
    lba, bl = struct.unpack_from(">II", data, 0)
    return lba, bl


@dataclass(frozen=True)
class ReadCapacity16:
    """READ CAPACITY(16) parameter data (SBC-3 5.16.2)."""

    returned_lba: int
    block_length: int
    p_type: int
    prot_en: bool
    p_i_exponent: int
    lbppbe: int
    lbpme: bool
    lbprz: bool
    lowest_aligned_lba: int


def parse_read_capacity16(data: bytes) -> ReadCapacity16:
    buf = bytes(data).ljust(32, b"\0")
    lba, bl = struct.unpack_from(">QI", buf, 0)
    (lalba,) = struct.unpack_from(">H", buf, 14)
    return ReadCapacity16(
        returned_lba=lba,
        block_length=bl,
        p_type=(buf[12] >> 1) & 7,
        prot_en=bool(buf[12] & 1),
        p_i_exponent=buf[13] >> 4,
        lbppbe=buf[13] & 0x0F,
        lbpme=bool(lalba & 0x8000),
        lbprz=bool(lalba & 0x4000),
        lowest_aligned_lba=lalba & 0x3FFF,
    )


def parse_report_luns(data: bytes) -> list[int]:
    """LUN list of REPORT LUNS (SPC-4 6.33.2): raw 8-byte LUN fields as ints."""
    (length,) = struct.unpack_from(">I", data, 0)
    body = data[8 : 8 + length]
    return [struct.unpack_from(">Q", body, i)[0] for i in range(0, len(body) - len(body) % 8, 8)]


def parse_pr_in_read_keys(data: bytes) -> tuple[int, list[int]]:
    """(PRgeneration, keys) of READ KEYS (SPC-4 6.15.2)."""
    gen, length = struct.unpack_from(">II", data, 0)
    body = data[8 : 8 + length]
    return gen, [
        struct.unpack_from(">Q", body, i)[0] for i in range(0, len(body) - len(body) % 8, 8)
    ]


@dataclass(frozen=True)
class ReservationInfo:
    """READ RESERVATION data (SPC-4 6.15.3); ``pr_type`` None when not reserved."""

    generation: int
    key: int = 0
    scope: int = 0
    pr_type: int | None = None


def parse_pr_in_read_reservation(data: bytes) -> ReservationInfo:
    gen, length = struct.unpack_from(">II", data, 0)
    if length < 16 or len(data) < 24:
        return ReservationInfo(gen)
    (key,) = struct.unpack_from(">Q", data, 8)
    return ReservationInfo(gen, key, data[21] >> 4, data[21] & 0x0F)


@dataclass(frozen=True)
class ReportCapabilities:
    """REPORT CAPABILITIES data (SPC-4 6.15.4)."""

    length: int
    rlr_c: bool
    crh: bool
    sip_c: bool
    atp_c: bool
    ptpl_c: bool
    tmv: bool
    allow_commands: int
    ptpl_a: bool
    type_mask: int


def parse_report_capabilities(data: bytes) -> ReportCapabilities:
    buf = bytes(data).ljust(8, b"\0")
    (length,) = struct.unpack_from(">H", buf, 0)
    b2, b3 = buf[2], buf[3]
    (mask,) = struct.unpack_from(">H", buf, 4)
    return ReportCapabilities(
        length=length,
        rlr_c=bool(b2 & 0x80),
        crh=bool(b2 & 0x10),
        sip_c=bool(b2 & 0x08),
        atp_c=bool(b2 & 0x04),
        ptpl_c=bool(b2 & 0x01),
        tmv=bool(b3 & 0x80),
        allow_commands=(b3 >> 4) & 7,
        ptpl_a=bool(b3 & 0x01),
        type_mask=mask,
    )


@dataclass(frozen=True)
class FullStatus:
    """One READ FULL STATUS descriptor (SPC-4 6.15.5)."""

    key: int
    all_tg_pt: bool
    r_holder: bool
    scope: int
    pr_type: int
    relative_target_port: int
    transport_id: str


def parse_read_full_status(data: bytes) -> tuple[int, list[FullStatus]]:
    gen, length = struct.unpack_from(">II", data, 0)
    body = data[8 : 8 + length]
    out: list[FullStatus] = []
    pos = 0
    while pos + 24 <= len(body):
        key, _, flags, st, rtp, dlen = struct.unpack_from(">QIBB4xHI", body, pos)
        tid, _ = decode_transport_id(body, pos + 24)
        out.append(FullStatus(key, bool(flags & 2), bool(flags & 1), st >> 4, st & 0x0F, rtp, tid))
        pos += 24 + dlen
    return gen, out


@dataclass(frozen=True)
class CommandDescriptor:
    """One REPORT SUPPORTED OPERATION CODES command descriptor (SPC-4 6.35.2)."""

    opcode: int
    service_action: int
    servactv: bool
    cdb_length: int
    timeouts: tuple[int, int] | None = None  # (nominal, recommended) seconds


def parse_report_supported_opcodes(data: bytes) -> list[CommandDescriptor]:
    """All-commands format (reporting options 000b)."""
    (length,) = struct.unpack_from(">I", data, 0)
    body = data[4 : 4 + length]
    out: list[CommandDescriptor] = []
    pos = 0
    while pos + 8 <= len(body):
        op, sa, flags, cdblen = struct.unpack_from(">BxHxBH", body, pos)
        pos += 8
        to: tuple[int, int] | None = None
        if flags & 0x02:
            nominal, rec = struct.unpack_from(">II", body, pos + 4)
            to = (nominal, rec)
            pos += 12
        out.append(CommandDescriptor(op, sa, bool(flags & 1), cdblen, to))
    return out


@dataclass(frozen=True)
class OneCommand:
    """One-command format of REPORT SUPPORTED OPERATION CODES (SPC-4 6.35.3)."""

    support: int
    cdb_usage: bytes
    timeouts: tuple[int, int] | None = None


def parse_report_supported_opcode_one(data: bytes) -> OneCommand:
    flags = data[1]
    (size,) = struct.unpack_from(">H", data, 2)
    usage = bytes(data[4 : 4 + size])
    to: tuple[int, int] | None = None
    if flags & 0x80 and len(data) >= 4 + size + 12:
        nominal, recommended = struct.unpack_from(">II", data, 4 + size + 4)
        to = (nominal, recommended)
    return OneCommand(flags & 7, usage, to)


@dataclass(frozen=True)
class ModeParameters:
    """MODE SENSE data (SPC-4 7.5.4/7.5.5): header fields, block descriptors, pages."""

    mode_data_length: int
    medium_type: int
    device_specific: int
    block_descriptors: bytes
    pages: dict[tuple[int, int], bytes] = field(
        default_factory=dict
    )  # (page, subpage) -> whole page

    @property
    def write_protected(self) -> bool:
        return bool(self.device_specific & 0x80)

    @property
    def dpofua(self) -> bool:
        return bool(self.device_specific & 0x10)


def _parse_pages(body: bytes) -> dict[tuple[int, int], bytes]:
    pages: dict[tuple[int, int], bytes] = {}
    pos = 0
    while pos + 2 <= len(body):
        code = body[pos] & 0x3F
        if body[pos] & 0x40:  # SPF: sub-page format, 2-byte length
            if pos + 4 > len(body):
                break
            sub = body[pos + 1]
            (ln,) = struct.unpack_from(">H", body, pos + 2)
            pages[(code, sub)] = bytes(body[pos : pos + 4 + ln])
            pos += 4 + ln
        else:
            ln = body[pos + 1]
            pages[(code, 0)] = bytes(body[pos : pos + 2 + ln])
            pos += 2 + ln
    return pages


def parse_mode_sense6(data: bytes) -> ModeParameters:
    buf = bytes(data).ljust(4, b"\0")
    mdl, mt, dsp, bdl = buf[0], buf[1], buf[2], buf[3]
    end = min(len(data), mdl + 1)
    return ModeParameters(
        mdl, mt, dsp, bytes(data[4 : 4 + bdl]), _parse_pages(bytes(data[4 + bdl : end]))
    )


def parse_mode_sense10(data: bytes) -> ModeParameters:
    buf = bytes(data).ljust(8, b"\0")
    mdl, mt, dsp, _, bdl = struct.unpack_from(">HBBBxH", buf, 0)
    end = min(len(data), mdl + 2)
    return ModeParameters(
        mdl, mt, dsp, bytes(data[8 : 8 + bdl]), _parse_pages(bytes(data[8 + bdl : end]))
    )


@dataclass(frozen=True)
class LbaStatus:
    """One LBA status descriptor (SBC-3 5.8.2)."""

    lba: int
    blocks: int
    provisioning_status: int


def parse_get_lba_status(data: bytes) -> list[LbaStatus]:
    (length,) = struct.unpack_from(">I", data, 0)
    body = data[8 : 4 + length]
    out: list[LbaStatus] = []
    for i in range(0, len(body) - len(body) % 16, 16):
        lba, blocks = struct.unpack_from(">QI", body, i)
        out.append(LbaStatus(lba, blocks, body[i + 12] & 0x0F))
    return out
