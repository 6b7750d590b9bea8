"""Logical unit commands (SPC-4, SBC-3): happy paths and error paths, sense checked."""

from __future__ import annotations

import struct

import pytest
from scsi_util import BLOCKS, NODE_A, NODE_B, attach, check, good, illegal, make_lu, nexus

from iscsi_conformance.scsi import cdb as C
from iscsi_conformance.scsi.codes import Asc, ResetKind, ScsiOpcode, ScsiStatus, SenseKey
from iscsi_conformance.scsi.device import COMMANDS, LogicalUnit, encode_lun, report_luns_data
from iscsi_conformance.scsi.sense import SenseData

A = NODE_A


# --------------------------------------------------------------------------- unit attention
def test_power_on_unit_attention_once_per_nexus() -> None:
    lu = make_lu()
    n = nexus("fresh")
    # INQUIRY is not blocked and does not clear it (SAM-5 5.14)
    good(lu.execute(n, C.inquiry()))
    check(
        lu.execute(n, C.read10(0, 1)),
        SenseKey.UNIT_ATTENTION,
        Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED,
    )
    good(lu.execute(n, C.read10(0, 1)))


def test_request_sense_reports_and_clears_unit_attention() -> None:
    lu = make_lu()
    n = nexus("rs")
    data = good(lu.execute(n, C.request_sense(252)))
    s = SenseData.parse(data)
    assert (s.sense_key, s.asc_ascq) == (SenseKey.UNIT_ATTENTION, 0x2900)
    s = SenseData.parse(good(lu.execute(n, C.request_sense(252, desc=True))))
    assert s.descriptor_format and s.sense_key == SenseKey.NO_SENSE
    assert len(good(lu.execute(n, C.request_sense(4)))) == 4


def test_reset_and_nexus_loss_unit_attentions(lu: LogicalUnit) -> None:
    lu.reset(ResetKind.LOGICAL_UNIT_RESET)
    check(
        lu.execute(A, C.test_unit_ready()),
        SenseKey.UNIT_ATTENTION,
        Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED,
    )
    lu.reset(ResetKind.TARGET_COLD_RESET)
    check(lu.execute(A, C.test_unit_ready()), SenseKey.UNIT_ATTENTION, Asc.POWER_ON_OCCURRED)
    lu.nexus_lost(A)
    check(lu.execute(A, C.test_unit_ready()), SenseKey.UNIT_ATTENTION, Asc.I_T_NEXUS_LOSS_OCCURRED)
    lu.unit_attention(None, 0x2A, 0x09)
    assert lu.pending_unit_attentions(NODE_B)[-1] == Asc.CAPACITY_DATA_HAS_CHANGED
    lu.unit_attention(A, 0x3F, 0x0E)
    # REPORT LUNS is not blocked and clears REPORTED LUNS DATA HAS CHANGED (SPC-4 6.33)
    good(lu.execute(A, C.report_luns()))
    check(
        lu.execute(A, C.test_unit_ready()), SenseKey.UNIT_ATTENTION, Asc.CAPACITY_DATA_HAS_CHANGED
    )
    good(lu.execute(A, C.test_unit_ready()))


def test_resize_and_luns_changed(lu: LogicalUnit) -> None:
    lu.resize(BLOCKS * 512 * 2)
    check(
        lu.execute(A, C.read_capacity10()), SenseKey.UNIT_ATTENTION, Asc.CAPACITY_DATA_HAS_CHANGED
    )
    assert C.parse_read_capacity10(good(lu.execute(A, C.read_capacity10()))) == (
        2 * BLOCKS - 1,
        512,
    )
    lu.luns_changed()
    assert lu.pending_unit_attentions(NODE_B)[-1] == Asc.REPORTED_LUNS_DATA_HAS_CHANGED
    lu.flush()


# --------------------------------------------------------------------------- dispatch
def test_unsupported_opcode_and_short_cdb(lu: LogicalUnit) -> None:
    s = illegal(lu.execute(A, bytes([0xC5, 0, 0, 0, 0, 0])), Asc.INVALID_COMMAND_OPERATION_CODE)
    assert s.field_pointer == 0
    illegal(lu.execute(A, b""), Asc.INVALID_COMMAND_OPERATION_CODE)
    illegal(lu.execute(A, C.read10(0, 1)[:6]))
    illegal(lu.execute(A, bytes([0x9E, 0x1F] + [0] * 14)))  # unknown service action


def test_lengths_for_the_target(lu: LogicalUnit) -> None:
    assert lu.data_out_length(C.write10(0, 8)) == 4096
    assert lu.data_out_length(C.write6(0, 256)) == 256 * 512
    assert lu.data_out_length(C.verify16(0, 4, bytchk=1)) == 2048
    assert lu.data_out_length(C.verify16(0, 4, bytchk=3)) == 512
    assert lu.data_out_length(C.verify16(0, 4)) == 0
    assert lu.data_out_length(C.compare_and_write(0, 2)) == 2048
    assert lu.data_out_length(C.write_same10(0, 9)) == 512
    assert lu.data_out_length(C.write_same16(0, 9, ndob=True)) == 0
    assert lu.data_out_length(C.unmap(24)) == 24
    assert lu.data_out_length(C.mode_select6(28)) == 28
    assert lu.data_out_length(C.mode_select10(40)) == 40
    assert lu.data_out_length(C.persistent_reserve_out(0, param_len=24)) == 24
    assert lu.data_out_length(C.read10(0, 1)) == 0
    assert lu.data_out_length(b"\x2a") == 0  # malformed: no exception
    assert lu.data_in_length(C.read16(0, 3)) == 1536
    assert lu.data_in_length(C.inquiry(alloc=300)) == 300
    assert lu.data_in_length(C.mode_sense6(0x3F, alloc=200)) == 200
    assert lu.data_in_length(C.mode_sense10(0x3F, alloc=2000)) == 2000
    assert lu.data_in_length(C.read_capacity10()) == 8
    assert lu.data_in_length(C.read_capacity16(32)) == 32
    assert lu.data_in_length(C.report_luns(64)) == 64
    assert lu.data_in_length(C.test_unit_ready()) == 0
    assert lu.data_in_length(b"\x28") == 0
    assert lu.lookup(C.unmap(8)) is not None
    assert make_lu(thin=False).lookup(C.unmap(8)) is None


# --------------------------------------------------------------------------- INQUIRY
def test_standard_inquiry(lu: LogicalUnit) -> None:
    data = good(lu.execute(A, C.inquiry(alloc=255)))
    assert len(data) == 96
    inq = C.parse_inquiry(data)
    assert (inq.qualifier, inq.device_type, inq.version, inq.response_data_format) == (0, 0, 6, 2)
    assert inq.additional_length == 91 and inq.hisup and inq.cmdque and not inq.rmb
    assert inq.vendor == "ISCSICNF"
    assert 0x04C0 in inq.version_descriptors and 0x0460 in inq.version_descriptors
    for n in (0, 5, 36, 95):
        assert good(lu.execute(A, C.inquiry(alloc=n))) == data[:n]
    assert good(lu.execute(A, C.inquiry(alloc=511))) == good(lu.execute(A, C.inquiry(alloc=512)))
    illegal(lu.execute(A, C.inquiry(False, 0x80)))  # page code with EVPD=0
    illegal(lu.execute(A, bytes([0x12, 0x02, 0, 0, 255, 0])))  # CMDDT
    illegal(lu.execute(A, C.inquiry(True, 0xC7)))


def test_inquiry_iscsi_version_descriptor(lu: LogicalUnit) -> None:
    """RFC 7144 4.2: the iSCSI version descriptor is 0960h plus the iSCSIProtocolLevel
    the nexus's session negotiated; a nexus the transport said nothing of keeps 0960h."""
    lu.set_iscsi_protocol_level(A, 2)
    mine = C.parse_inquiry(good(lu.execute(A, C.inquiry(alloc=255)))).version_descriptors
    other = C.parse_inquiry(good(lu.execute(NODE_B, C.inquiry(alloc=255))))
    theirs = other.version_descriptors
    assert 0x0962 in mine and 0x0960 not in mine
    assert 0x0960 in theirs and 0x0962 not in theirs


def test_vpd_pages(lu: LogicalUnit) -> None:
    pages = C.parse_vpd_00(good(lu.execute(A, C.inquiry(True, 0))))
    assert pages == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    for p in pages:
        data = good(lu.execute(A, C.inquiry(True, p, 255)))
        assert data[1] == p and struct.unpack(">H", data[2:4])[0] == len(data) - 4
    assert C.parse_vpd_80(good(lu.execute(A, C.inquiry(True, 0x80)))) == lu.serial
    des = C.parse_vpd_83(good(lu.execute(A, C.inquiry(True, 0x83))))
    types = {(d.association, d.designator_type) for d in des}
    assert {(0, 3), (0, 1), (1, 8), (1, 4), (1, 5), (0, 6)} <= types
    naa = next(d for d in des if d.designator_type == 3)
    assert naa.designator[0] >> 4 == 6 and len(naa.designator) == 16
    name = next(d for d in des if d.designator_type == 8)
    assert name.designator.rstrip(b"\0").decode() == A.target_port and len(name.designator) % 4 == 0
    bl = C.parse_vpd_b0(good(lu.execute(A, C.inquiry(True, 0xB0))))
    assert bl.wsnz and bl.max_compare_and_write_length == 255 and bl.max_unmap_lba_count > 0
    assert (
        bl.max_unmap_block_descriptor_count == 256
        and bl.max_write_same_length == lu.max_write_same_blocks
    )
    assert C.parse_vpd_b1(good(lu.execute(A, C.inquiry(True, 0xB1)))) == 1
    lbp = C.parse_vpd_b2(good(lu.execute(A, C.inquiry(True, 0xB2))))
    assert (
        lbp.lbpu
        and lbp.lbpws
        and lbp.lbpws10
        and lbp.lbprz
        and not lbp.anc_sup
        and lbp.provisioning_type == 2
    )
    thick = make_lu(thin=False, device_id=bytes(range(16)))
    attach(thick, A)
    assert 0xB2 not in C.parse_vpd_00(good(thick.execute(A, C.inquiry(True, 0))))
    assert C.parse_vpd_83(good(thick.execute(A, C.inquiry(True, 0x83))))[0].designator == bytes(
        range(16)
    )
    assert C.parse_vpd_b0(good(thick.execute(A, C.inquiry(True, 0xB0)))).max_unmap_lba_count == 0
    with pytest.raises(ValueError):
        C.parse_vpd_80(good(lu.execute(A, C.inquiry(True, 0x83))))


# --------------------------------------------------------------------------- capacity, LUNs
def test_read_capacity(lu: LogicalUnit) -> None:
    assert C.parse_read_capacity10(good(lu.execute(A, C.read_capacity10()))) == (BLOCKS - 1, 512)
    illegal(lu.execute(A, bytes([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])))  # LBA with PMI=0
    rc = C.parse_read_capacity16(good(lu.execute(A, C.read_capacity16(32))))
    assert (rc.returned_lba, rc.block_length, rc.lbpme, rc.lbprz, rc.prot_en) == (
        BLOCKS - 1,
        512,
        True,
        True,
        False,
    )
    for n in range(16):
        assert len(good(lu.execute(A, C.read_capacity16(n)))) == n


def test_read_capacity10_saturates() -> None:
    class Huge:
        size = (1 << 33) * 512

    lu = LogicalUnit(Huge())  # type: ignore[arg-type]
    attach(lu, A)
    assert C.parse_read_capacity10(good(lu.execute(A, C.read_capacity10())))[0] == 0xFFFFFFFF
    assert (
        C.parse_read_capacity16(good(lu.execute(A, C.read_capacity16()))).returned_lba
        == (1 << 33) - 1
    )


def test_report_luns(lu: LogicalUnit) -> None:
    assert C.parse_report_luns(good(lu.execute(A, C.report_luns()))) == [0]
    lu.lun_inventory = lambda: [0, 1, 300]
    data = good(lu.execute(A, C.report_luns()))
    assert struct.unpack(">I", data[:4])[0] == 24
    assert data[8:16] == encode_lun(0) and data[24:26] == bytes([0x41, 0x2C])
    assert good(lu.execute(A, C.report_luns(select_report=1)))[:4] == bytes(4)
    assert len(good(lu.execute(A, C.report_luns(alloc=12)))) == 12
    illegal(lu.execute(A, C.report_luns(select_report=0x40)))
    with pytest.raises(ValueError):
        report_luns_data([1 << 20])


# --------------------------------------------------------------------------- READ / WRITE
WRITES = [C.write10, C.write12, C.write16]
READS = [C.read10, C.read12, C.read16]


@pytest.mark.parametrize(("write", "read"), list(zip(WRITES, READS, strict=True)))
def test_write_then_read(lu: LogicalUnit, write: object, read: object) -> None:
    data = bytes(range(256)) * 8
    good(lu.execute(A, write(5, 4), data))  # type: ignore[operator]
    assert good(lu.execute(A, read(5, 4))) == data  # type: ignore[operator]
    assert good(lu.execute(A, read(0, 0))) == b""  # type: ignore[operator]
    good(lu.execute(A, write(BLOCKS - 1, 1, fua=True, dpo=True), data[:512]))  # type: ignore[operator]
    for lba, n in ((BLOCKS, 1), (BLOCKS - 1, 2), (BLOCKS + 1, 0), (0xFFFFFFFF, 1)):
        illegal(lu.execute(A, read(lba, n)), Asc.LBA_OUT_OF_RANGE)  # type: ignore[operator]
        illegal(lu.execute(A, write(lba, n), bytes(512 * n)), Asc.LBA_OUT_OF_RANGE)  # type: ignore[operator]
    for p in range(1, 8):
        s = illegal(lu.execute(A, read(0, 1, rdprotect=p)))  # type: ignore[operator]
        assert (s.field_pointer, s.bit_pointer) == (1, 7)
        illegal(lu.execute(A, write(0, 1, wrprotect=p), bytes(512)))  # type: ignore[operator]
    illegal(lu.execute(A, write(0, 2), bytes(512)), Asc.INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT)  # type: ignore[operator]


def test_read6_write6(lu: LogicalUnit) -> None:
    data = b"\x5a" * (256 * 512)
    good(lu.execute(A, C.write6(0, 256), data))
    assert good(lu.execute(A, C.read6(0, 256))) == data  # 0 means 256
    illegal(lu.execute(A, C.read6(BLOCKS - 1, 2)), Asc.LBA_OUT_OF_RANGE)
    with pytest.raises(ValueError):
        C.read6(0, 0)
    with pytest.raises(ValueError):
        C.write6(0, 257)


def test_max_transfer_length() -> None:
    lu = make_lu(max_transfer_blocks=8)
    attach(lu, A)
    illegal(lu.execute(A, C.read10(0, 9)))
    good(lu.execute(A, C.read10(0, 8)))


def test_write_protect() -> None:
    lu = make_lu(read_only=True)
    attach(lu, A)
    check(lu.execute(A, C.write10(0, 1), bytes(512)), SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
    check(
        lu.execute(A, C.write_same10(0, 1), bytes(512)), SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED
    )
    check(
        lu.execute(A, C.unmap(24), C.unmap_parameters([(0, 1)])),
        SenseKey.DATA_PROTECT,
        Asc.WRITE_PROTECTED,
    )
    check(
        lu.execute(A, C.compare_and_write(0, 1), bytes(1024)),
        SenseKey.DATA_PROTECT,
        Asc.WRITE_PROTECTED,
    )
    assert C.parse_mode_sense6(good(lu.execute(A, C.mode_sense6(0x3F)))).write_protected


def test_write_and_verify(lu: LogicalUnit) -> None:
    good(lu.execute(A, C.write_verify10(1, 2, bytchk=True), b"v" * 1024))
    good(lu.execute(A, C.write_verify12(1, 0), b""))
    good(lu.execute(A, C.write_verify16(1, 1, dpo=True), b"w" * 512))
    assert good(lu.execute(A, C.read10(1, 2))) == b"w" * 512 + b"v" * 512
    illegal(lu.execute(A, bytes([0x2E, 0x04]) + bytes(8)))  # BYTCHK=10b
    illegal(lu.execute(A, C.write_verify10(BLOCKS, 1), bytes(512)), Asc.LBA_OUT_OF_RANGE)


@pytest.mark.parametrize("verify", [C.verify10, C.verify12, C.verify16])
def test_verify(lu: LogicalUnit, verify: object) -> None:
    data = bytes(range(256)) * 4
    good(lu.execute(A, C.write10(7, 2), data))
    good(lu.execute(A, verify(7, 2)))  # type: ignore[operator]
    good(lu.execute(A, verify(7, 2, bytchk=1, dpo=True), data))  # type: ignore[operator]
    bad = bytearray(data)
    bad[700] ^= 0x58
    s = check(
        lu.execute(A, verify(7, 2, bytchk=1), bytes(bad)),
        SenseKey.MISCOMPARE,
        Asc.MISCOMPARE_DURING_VERIFY_OPERATION,
    )  # type: ignore[operator]
    assert s.information == 700
    good(lu.execute(A, C.write10(20, 3), b"\x11" * 1536))
    good(lu.execute(A, verify(20, 3, bytchk=3), b"\x11" * 512))  # type: ignore[operator]
    check(
        lu.execute(A, verify(19, 3, bytchk=3), b"\x11" * 512),
        SenseKey.MISCOMPARE,
        Asc.MISCOMPARE_DURING_VERIFY_OPERATION,
    )  # type: ignore[operator]
    illegal(lu.execute(A, verify(0, 1, bytchk=2), bytes(512)))  # type: ignore[operator]
    illegal(lu.execute(A, verify(0, 1, vrprotect=1), bytes(512)))  # type: ignore[operator]
    illegal(lu.execute(A, verify(BLOCKS + 1, 0)), Asc.LBA_OUT_OF_RANGE)  # type: ignore[operator]
    good(lu.execute(A, verify(0, 0)))  # type: ignore[operator]


def test_miscompare_sense_is_descriptor_with_d_sense(lu: LogicalUnit) -> None:
    page = bytearray(good(lu.execute(A, C.mode_sense6(0x0A, dbd=True)))[4:])
    page[2] |= 0x04  # D_SENSE
    plist = C.mode_parameter_list6(bytes(page))
    good(lu.execute(A, C.mode_select6(len(plist)), plist))
    out = lu.execute(A, C.read16(2**64 - 1, 1))
    assert out.sense[0] == 0x72
    illegal(out, Asc.LBA_OUT_OF_RANGE)
    check(
        lu.execute(NODE_B, C.test_unit_ready()),
        SenseKey.UNIT_ATTENTION,
        Asc.MODE_PARAMETERS_CHANGED,
    )


def test_prefetch_and_sync_cache(lu: LogicalUnit) -> None:
    for cdb in (
        C.prefetch10(0, 256),
        C.prefetch16(BLOCKS - 1, 1, immed=True),
        C.synchronize_cache10(),
        C.synchronize_cache16(5, 5),
    ):
        good(lu.execute(A, cdb))
    for cdb in (
        C.prefetch10(BLOCKS, 1),
        C.prefetch16(2**63, 1),
        C.synchronize_cache10(BLOCKS - 1, 2),
    ):
        illegal(lu.execute(A, cdb), Asc.LBA_OUT_OF_RANGE)


# --------------------------------------------------------------------------- thin provisioning
def test_write_same_and_unmap(lu: LogicalUnit) -> None:
    good(lu.execute(A, C.write_same10(0, 300), b"\xab" * 512))
    assert good(lu.execute(A, C.read10(0, 300))) == b"\xab" * 512 * 300
    good(lu.execute(A, C.write_same16(0, 128, unmap=True), bytes(512)))
    assert good(lu.execute(A, C.read10(0, 128))) == bytes(128 * 512)
    status = C.parse_get_lba_status(good(lu.execute(A, C.get_lba_status(0, 64))))
    assert status[0].lba == 0 and status[0].provisioning_status == 1 and status[0].blocks == 128
    assert status[1].lba == 128 and status[1].provisioning_status == 0
    good(lu.execute(A, C.write_same16(128, 172, ndob=True)))
    assert good(lu.execute(A, C.read10(128, 1))) == bytes(512)
    good(lu.execute(A, C.write_same16(0, 1, unmap=True), b"\x01" * 512))  # nonzero data: written
    assert good(lu.execute(A, C.read10(0, 1))) == b"\x01" * 512
    illegal(lu.execute(A, C.write_same10(0, 0), bytes(512)))  # WSNZ
    illegal(lu.execute(A, C.write_same10(0, 1, anchor=True, unmap=True), bytes(512)))
    illegal(lu.execute(A, C.write_same16(0, lu.max_write_same_blocks + 1), bytes(512)))
    illegal(lu.execute(A, C.write_same10(BLOCKS - 1, 2), bytes(512)), Asc.LBA_OUT_OF_RANGE)
    illegal(lu.execute(A, C.write_same10(0, 1, wrprotect=2), bytes(512)))
    illegal(lu.execute(A, C.write_same10(0, 1), b""), Asc.INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT)
    # UNMAP
    good(lu.execute(A, C.write10(0, 4), b"\xff" * 2048))
    plist = C.unmap_parameters([(1, 2), (BLOCKS, 0)])
    good(lu.execute(A, C.unmap(len(plist)), plist))
    assert good(lu.execute(A, C.read10(0, 4))) == b"\xff" * 512 + bytes(1024) + b"\xff" * 512
    good(lu.execute(A, C.unmap(0)))
    illegal(lu.execute(A, C.unmap(4), bytes(4)), Asc.PARAMETER_LIST_LENGTH_ERROR)
    plist = C.unmap_parameters([(BLOCKS - 1, 2)])
    illegal(lu.execute(A, C.unmap(len(plist)), plist), Asc.LBA_OUT_OF_RANGE)
    plist = C.unmap_parameters([(0, 3)])
    lu2 = make_lu(max_unmap_blocks=2)
    attach(lu2, A)
    illegal(lu2.execute(A, C.unmap(len(plist)), plist), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    plist = C.unmap_parameters([(i, 1) for i in range(257)])
    illegal(lu.execute(A, C.unmap(len(plist)), plist), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    illegal(lu.execute(A, C.unmap(24, anchor=True), C.unmap_parameters([(0, 1)])))
    illegal(lu.execute(A, C.get_lba_status(BLOCKS)), Asc.LBA_OUT_OF_RANGE)


def test_fully_provisioned_unit() -> None:
    lu = make_lu(thin=False)
    attach(lu, A)
    illegal(
        lu.execute(A, C.unmap(24), C.unmap_parameters([(0, 1)])), Asc.INVALID_COMMAND_OPERATION_CODE
    )
    illegal(lu.execute(A, C.write_same10(0, 1, unmap=True), bytes(512)))
    rc = C.parse_read_capacity16(good(lu.execute(A, C.read_capacity16())))
    assert not rc.lbpme
    st = C.parse_get_lba_status(good(lu.execute(A, C.get_lba_status(3))))
    assert st == [C.LbaStatus(3, BLOCKS - 3, 0)]


# --------------------------------------------------------------------------- XDWRITEREAD(10)
def test_xdwriteread_returns_the_xor_and_writes_the_data_out(lu: LogicalUnit) -> None:
    """SBC-3 XDWRITEREAD(10): Data-In is old XOR Data-Out; the Data-Out is written."""
    old = bytes(range(256)) * 4
    new = bytes((i * 7 + 3) & 0xFF for i in range(1024))
    good(lu.execute(A, C.write10(20, 2), old))
    xor = good(lu.execute(A, C.xdwriteread10(20, 2), new))
    assert xor == bytes(a ^ b for a, b in zip(old, new, strict=True))
    assert good(lu.execute(A, C.read10(20, 2))) == new
    assert lu.data_out_length(C.xdwriteread10(20, 2)) == 1024
    assert lu.data_in_length(C.xdwriteread10(20, 2)) == 1024


def test_xdwriteread_disable_write_leaves_the_medium(lu: LogicalUnit) -> None:
    good(lu.execute(A, C.write10(30, 1), b"\x0f" * 512))
    xor = good(lu.execute(A, C.xdwriteread10(30, 1, disable_write=True), b"\xf0" * 512))
    assert xor == b"\xff" * 512
    assert good(lu.execute(A, C.read10(30, 1))) == b"\x0f" * 512


def test_xdwriteread_errors(lu: LogicalUnit) -> None:
    assert good(lu.execute(A, C.xdwriteread10(0, 0))) == b""
    illegal(lu.execute(A, C.xdwriteread10(BLOCKS - 1, 2), bytes(1024)), Asc.LBA_OUT_OF_RANGE)
    illegal(
        lu.execute(A, C.xdwriteread10(0, 2), bytes(512)),
        Asc.INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
    )
    ro = make_lu(read_only=True)
    attach(ro, A)
    check(
        ro.execute(A, C.xdwriteread10(0, 1), bytes(512)), SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED
    )
    # DISABLE WRITE: nothing is written, so a read-only unit still answers
    assert good(ro.execute(A, C.xdwriteread10(0, 1, disable_write=True), bytes(512))) == bytes(512)


# --------------------------------------------------------------------------- COMPARE AND WRITE
def test_compare_and_write(lu: LogicalUnit) -> None:
    good(lu.execute(A, C.write16(10, 2), b"A" * 1024))
    good(lu.execute(A, C.compare_and_write(10, 2, fua=True), b"A" * 1024 + b"B" * 1024))
    assert good(lu.execute(A, C.read16(10, 2))) == b"B" * 1024
    verify = bytearray(b"B" * 1024)
    verify[600] = ord("Z")
    s = check(
        lu.execute(A, C.compare_and_write(10, 2), bytes(verify) + b"C" * 1024),
        SenseKey.MISCOMPARE,
        Asc.MISCOMPARE_DURING_VERIFY_OPERATION,
    )
    assert s.information == 600
    assert good(lu.execute(A, C.read16(10, 2))) == b"B" * 1024  # untouched
    good(lu.execute(A, C.compare_and_write(10, 0)))
    illegal(lu.execute(A, C.compare_and_write(10, 0), b"x" * 1024))  # 256 wrapped to 0
    assert (
        lu.execute(A, C.compare_and_write(10, 0), expected_out=4096).status
        == ScsiStatus.CHECK_CONDITION
    )
    small = make_lu(max_compare_and_write_blocks=1)
    attach(small, A)
    illegal(small.execute(A, C.compare_and_write(0, 2), bytes(2048)))
    illegal(lu.execute(A, C.compare_and_write(BLOCKS - 1, 2), bytes(2048)), Asc.LBA_OUT_OF_RANGE)
    illegal(
        lu.execute(A, C.compare_and_write(0, 1), bytes(512)),
        Asc.INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
    )


# --------------------------------------------------------------------------- MODE SENSE / SELECT
def test_mode_sense(lu: LogicalUnit) -> None:
    ms = C.parse_mode_sense6(good(lu.execute(A, C.mode_sense6(0x3F))))
    assert set(ms.pages) == {(1, 0), (8, 0), (0x0A, 0), (0x1C, 0)}
    assert ms.dpofua and not ms.write_protected
    assert len(ms.block_descriptors) == 8
    assert struct.unpack(">I", ms.block_descriptors[:4])[0] == BLOCKS
    assert ms.mode_data_length == 3 + 8 + sum(len(p) for p in ms.pages.values())
    ctl = ms.pages[(0x0A, 0)]
    assert len(ctl) == 12 and ctl[2] >> 5 == 0 and (ctl[3] >> 1) & 3 == 0
    ms10 = C.parse_mode_sense10(good(lu.execute(A, C.mode_sense10(0x08, llbaa=True))))
    assert list(ms10.pages) == [(8, 0)] and len(ms10.block_descriptors) == 16
    assert ms10.pages[(8, 0)][2] & 0x04  # WCE
    ch = C.parse_mode_sense6(good(lu.execute(A, C.mode_sense6(0x0A, pc=1))))
    assert ch.pages[(0x0A, 0)][2] == 0x04 and ch.pages[(0x0A, 0)][4] == 0x08  # D_SENSE, SWP
    dflt = C.parse_mode_sense6(good(lu.execute(A, C.mode_sense6(0x1C, pc=2, dbd=True))))
    assert dflt.block_descriptors == b"" and dflt.pages[(0x1C, 0)][2] & 0x08
    check(
        lu.execute(A, C.mode_sense6(0x08, pc=3)),
        SenseKey.ILLEGAL_REQUEST,
        Asc.SAVING_PARAMETERS_NOT_SUPPORTED,
    )
    illegal(lu.execute(A, C.mode_sense6(0x19)))
    illegal(lu.execute(A, C.mode_sense6(0x0A, subpage=1)))
    good(lu.execute(A, C.mode_sense6(0x3F, subpage=0xFF)))
    assert len(good(lu.execute(A, C.mode_sense6(0x3F, alloc=4)))) == 4


def _page(lu: LogicalUnit, code: int) -> bytearray:
    return bytearray(
        C.parse_mode_sense6(good(lu.execute(A, C.mode_sense6(code, dbd=True)))).pages[(code, 0)]
    )


def test_mode_select(lu: LogicalUnit) -> None:
    caching = _page(lu, 0x08)
    caching[2] &= ~0x04  # WCE off
    bd = struct.pack(">IxBH", BLOCKS, 0, 512)
    plist = C.mode_parameter_list6(bytes(caching), block_descriptors=bd)
    good(lu.execute(A, C.mode_select6(len(plist)), plist))
    assert not lu.mode.wce
    plist10 = C.mode_parameter_list10(bytes(caching))
    good(lu.execute(A, C.mode_select10(len(plist10)), plist10))  # no change: no UA
    good(lu.execute(A, C.mode_select6(0)))
    bad = bytearray(caching)
    bad[3] = 0xFF  # not changeable
    plist = C.mode_parameter_list6(bytes(bad))
    s = illegal(
        lu.execute(A, C.mode_select6(len(plist)), plist), Asc.INVALID_FIELD_IN_PARAMETER_LIST
    )
    assert s.field_pointer == 4 + 3 and not s.cd
    for pages in (
        bytes([0x19, 2, 0, 0]),
        bytes([0x08, 3, 0, 0, 0]),
        bytes([0x48, 0x00, 0, 4, 0, 0, 0, 0]),
    ):
        plist = C.mode_parameter_list6(pages)
        illegal(
            lu.execute(A, C.mode_select6(len(plist)), plist), Asc.INVALID_FIELD_IN_PARAMETER_LIST
        )
    plist = C.mode_parameter_list6(bytes(caching[:10]))
    illegal(lu.execute(A, C.mode_select6(len(plist)), plist), Asc.PARAMETER_LIST_LENGTH_ERROR)
    plist = C.mode_parameter_list6(b"\x08")
    illegal(lu.execute(A, C.mode_select6(len(plist)), plist), Asc.PARAMETER_LIST_LENGTH_ERROR)
    illegal(lu.execute(A, C.mode_select6(2), b"\0\0"), Asc.PARAMETER_LIST_LENGTH_ERROR)
    illegal(lu.execute(A, C.mode_select6(4, pf=False), bytes(4)))
    illegal(lu.execute(A, C.mode_select6(4, sp=True), bytes(4)))
    wrong_bl = C.mode_parameter_list6(b"", block_descriptors=struct.pack(">IxBH", 0, 0, 4096))
    illegal(
        lu.execute(A, C.mode_select6(len(wrong_bl)), wrong_bl), Asc.INVALID_FIELD_IN_PARAMETER_LIST
    )
    wrong_nb = C.mode_parameter_list6(b"", block_descriptors=struct.pack(">IxBH", 7, 0, 512))
    illegal(
        lu.execute(A, C.mode_select6(len(wrong_nb)), wrong_nb), Asc.INVALID_FIELD_IN_PARAMETER_LIST
    )
    long_bd = C.mode_parameter_list6(b"", block_descriptors=bytes(16))
    illegal(
        lu.execute(A, C.mode_select6(len(long_bd)), long_bd), Asc.INVALID_FIELD_IN_PARAMETER_LIST
    )
    over = bytes([0, 0, 0, 8])
    illegal(lu.execute(A, C.mode_select6(4), over), Asc.PARAMETER_LIST_LENGTH_ERROR)
    ie = _page(lu, 0x1C)
    ie[3] = 0x0F  # MRIE 15 not defined
    plist = C.mode_parameter_list6(bytes(ie))
    illegal(lu.execute(A, C.mode_select6(len(plist)), plist), Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    lbd = C.mode_parameter_list10(b"", block_descriptors=struct.pack(">Q4xI", BLOCKS, 512))
    lbd = lbd[:4] + b"\x01" + lbd[5:]  # LONGLBA
    good(lu.execute(A, C.mode_select10(len(lbd)), lbd))


def test_software_write_protect(lu: LogicalUnit) -> None:
    ctl = _page(lu, 0x0A)
    ctl[4] |= 0x08
    plist = C.mode_parameter_list6(bytes(ctl))
    good(lu.execute(A, C.mode_select6(len(plist)), plist))
    check(
        lu.execute(A, C.write10(0, 1), bytes(512)),
        SenseKey.DATA_PROTECT,
        Asc.SOFTWARE_WRITE_PROTECTED,
    )
    good(lu.execute(A, C.read10(0, 1)))
    assert C.parse_mode_sense6(good(lu.execute(A, C.mode_sense6(0x3F)))).write_protected
    lu.reset(ResetKind.POWER_ON)  # hard reset restores defaults
    assert not lu.mode.swp


# --------------------------------------------------------------------------- REPORT SUPPORTED OPCODES
def test_report_supported_opcodes(lu: LogicalUnit) -> None:
    descs = C.parse_report_supported_opcodes(good(lu.execute(A, C.report_supported_opcodes())))
    assert len(descs) == len(COMMANDS)
    assert all(d.timeouts is None for d in descs)
    assert all(d.servactv or d.service_action == 0 for d in descs)
    with_to = C.parse_report_supported_opcodes(
        good(lu.execute(A, C.report_supported_opcodes(rctd=True)))
    )
    assert all(d.timeouts == (1, 30) for d in with_to)
    for d in descs:
        if d.servactv:
            illegal(lu.execute(A, C.report_supported_opcodes(1, d.opcode, d.service_action)))
            one = C.parse_report_supported_opcode_one(
                good(lu.execute(A, C.report_supported_opcodes(2, d.opcode, d.service_action)))
            )
        else:
            illegal(lu.execute(A, C.report_supported_opcodes(2, d.opcode, d.service_action)))
            one = C.parse_report_supported_opcode_one(
                good(lu.execute(A, C.report_supported_opcodes(1, d.opcode)))
            )
        assert (
            one.support == 3 and one.cdb_usage[0] == d.opcode and len(one.cdb_usage) == d.cdb_length
        )
    one = C.parse_report_supported_opcode_one(
        good(lu.execute(A, C.report_supported_opcodes(1, ScsiOpcode.READ_10, rctd=True)))
    )
    assert one.cdb_usage[1] & 0x18 == 0x18 and one.timeouts == (1, 30)
    assert (
        C.parse_report_supported_opcode_one(
            good(lu.execute(A, C.report_supported_opcodes(1, 0xC0)))
        ).support
        == 1
    )
    good(lu.execute(A, C.report_supported_opcodes(3, ScsiOpcode.READ_10)))
    illegal(lu.execute(A, C.report_supported_opcodes(5)))
    assert len(good(lu.execute(A, C.report_supported_opcodes(alloc=10)))) == 10


# --------------------------------------------------------------------------- START STOP / PREVENT
def test_start_stop_and_prevent_fixed_unit(lu: LogicalUnit) -> None:
    for cdb in (
        C.start_stop_unit(False),
        C.start_stop_unit(True),
        C.start_stop_unit(power_condition=3),
        C.start_stop_unit(False, loej=True),
    ):
        good(lu.execute(A, cdb))
    good(lu.execute(A, C.test_unit_ready()))
    good(lu.execute(A, C.prevent_allow(1)))
    illegal(lu.execute(A, C.prevent_allow(2)))


def test_removable_medium() -> None:
    lu = make_lu(removable=True)
    attach(lu, A, NODE_B)
    assert C.parse_inquiry(good(lu.execute(A, C.inquiry()))).rmb
    good(lu.execute(A, C.prevent_allow(1)))
    illegal(lu.execute(NODE_B, C.start_stop_unit(False, loej=True)), Asc.MEDIUM_REMOVAL_PREVENTED)
    good(lu.execute(A, C.prevent_allow(0)))
    good(lu.execute(A, C.start_stop_unit(False, loej=True)))
    check(lu.execute(A, C.test_unit_ready()), SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT)
    check(lu.execute(A, C.read10(0, 1)), SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT)
    assert (
        SenseData.parse(good(lu.execute(A, C.request_sense()))).asc_ascq == Asc.MEDIUM_NOT_PRESENT
    )
    good(lu.execute(A, C.start_stop_unit(True, loej=True)))
    good(lu.execute(A, C.test_unit_ready()))
    good(lu.execute(A, C.prevent_allow(1)))
    lu.nexus_lost(A)  # nexus loss drops its PREVENT
    good(lu.execute(NODE_B, C.start_stop_unit(False, loej=True)))


def test_block_size_validation() -> None:
    with pytest.raises(ValueError):
        make_lu(block_size=1000)
    lu = make_lu(block_size=4096)
    attach(lu, A)
    assert C.parse_read_capacity10(good(lu.execute(A, C.read_capacity10()))) == (
        BLOCKS // 8 - 1,
        4096,
    )
