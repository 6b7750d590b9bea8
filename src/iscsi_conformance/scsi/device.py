"""Logical unit emulation: a direct-access block device (SPC-4, SBC-3), sans-IO.

Theory of operation: ``LogicalUnit.execute(nexus, cdb, data_out)`` runs one command
to completion and returns a ``ScsiOutcome`` (status, sense, Data-In).  The order of
checks follows SAM-5 5.14 / SPC-4 5.9 and is the same for every command:

1. look the command up in ``COMMANDS`` (a table, below: name, CDB usage data for
   REPORT SUPPORTED OPERATION CODES, access class under reservations, whether it
   is exempt from unit attentions, whether SCSI-2 reservations allow it);
2. the first command of an unknown I_T nexus queues POWER ON, RESET, OR BUS DEVICE
   RESET OCCURRED; a pending unit attention is reported unless the command is
   INQUIRY, REPORT LUNS or REQUEST SENSE (SAM-5 5.14, SPC-4 6.29);
3. an unknown operation code is INVALID COMMAND OPERATION CODE;
4. SCSI-2 then persistent reservation conflicts (``reservations.py``);
5. the handler, which validates its CDB fields and does the work.

Handlers raise ``SCSIError`` (``errors.py``); ``execute`` turns it into sense data in
fixed or descriptor format according to the D_SENSE bit of the Control mode page.
Everything the logical unit stores goes through its ``Backing``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.pdu import lun_to_field
from ..errors import ReservationConflict, SCSIError
from .backing import Backing
from .cdb import decode_block_cdb
from .codes import (
    Asc,
    Association,
    CodeSet,
    DesignatorType,
    MaintenanceIn,
    ModePage,
    PageControl,
    PrInAction,
    ProtocolIdentifier,
    PrOutAction,
    ProvisioningStatus,
    ResetKind,
    ScsiOpcode,
    ScsiStatus,
    SenseKey,
    ServiceActionIn16,
    VersionDescriptor,
    VpdPage,
)
from .modepages import ModePageSet
from .nexus import Nexus, port_matches
from .reservations import AccessClass, NexusKey, ReservationState
from .sense import (
    SenseData,
    check_condition,
    illegal_request,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
    lba_out_of_range,
    parameter_list_length_error,
)

__all__ = [
    "COMMANDS",
    "CommandSpec",
    "LogicalUnit",
    "Nexus",
    "ScsiOutcome",
    "encode_lun",
    "report_luns_data",
]


@dataclass(frozen=True)
class ScsiOutcome:
    """The result of one command.

    ``aborted`` names the I_T nexuses (initiator identifier, relative target port or
    None for all ports) whose tasks the target must abort after PREEMPT AND ABORT
    (SPC-4 5.9.11.5).  ``pr_changed`` says the persistent reservation state changed
    (persist it if ``reservations.aptpl``).
    """

    status: int
    sense: bytes = b""
    data: bytes = b""
    aborted: tuple[NexusKey, ...] = ()
    pr_changed: bool = False

    @property
    def good(self) -> bool:
        return self.status == ScsiStatus.GOOD

    @property
    def sense_data(self) -> SenseData | None:
        return SenseData.parse(self.sense) if self.sense else None


_GOOD = ScsiOutcome(ScsiStatus.GOOD)

Handler = Callable[["LogicalUnit", "_Ctx"], ScsiOutcome]


@dataclass(frozen=True)
class CommandSpec:
    """One row of the command table."""

    opcode: int
    service_action: int | None
    name: str
    usage: bytes  # CDB USAGE DATA (SPC-4 6.35.3); its length is the CDB length
    handler: str  # method name on LogicalUnit
    access: AccessClass | Callable[[bytes], AccessClass] = AccessClass.WRITE
    ua_exempt: bool = False
    scsi2_allowed: bool | Callable[[bytes], bool] = False
    medium: bool = False  # needs the medium (removable units: MEDIUM NOT PRESENT)
    thin_only: bool = False  # only with logical block provisioning
    timeouts: tuple[int, int] = (1, 30)  # nominal / recommended seconds (SPC-4 6.35.4)

    @property
    def cdb_length(self) -> int:
        return len(self.usage)


def _u(*parts: int | bytes) -> bytes:
    out = bytearray()
    for p in parts:
        out += p if isinstance(p, bytes) else bytes([p])
    return bytes(out)


_FF2, _FF4, _FF8 = b"\xff" * 2, b"\xff" * 4, b"\xff" * 8


def _start_stop_access(cdb: bytes) -> AccessClass:
    # SBC-3 Table 13: START STOP UNIT with START=1 and POWER CONDITION=0 is allowed.
    return AccessClass.ALLOWED if len(cdb) > 4 and cdb[4] & 0xF1 == 0x01 else AccessClass.WRITE


def _prevent_access(cdb: bytes) -> AccessClass:
    return AccessClass.ALLOWED if len(cdb) > 4 and cdb[4] & 3 == 0 else AccessClass.WRITE


def _prevent_scsi2(cdb: bytes) -> bool:
    return len(cdb) > 4 and cdb[4] & 3 == 0


R, W, A = AccessClass.READ, AccessClass.WRITE, AccessClass.ALLOWED

#: The command table (SPC-4 Annex D, SBC-3 Table 12).  Access classes come from
#: SPC-4 Table 65 and SBC-3 Table 13; SCSI-2 exemptions from SPC-2 5.5.1.
COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        ScsiOpcode.TEST_UNIT_READY,
        None,
        "TEST UNIT READY",
        _u(0, 0, 0, 0, 0, 0),
        "_tur",
        A,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.REQUEST_SENSE,
        None,
        "REQUEST SENSE",
        _u(3, 1, 0, 0, 0xFF, 0),
        "_request_sense",
        A,
        ua_exempt=True,
        scsi2_allowed=True,
    ),
    CommandSpec(
        ScsiOpcode.INQUIRY,
        None,
        "INQUIRY",
        _u(0x12, 1, 0xFF, 0xFF, 0xFF, 0),
        "_inquiry",
        A,
        ua_exempt=True,
        scsi2_allowed=True,
    ),
    CommandSpec(
        ScsiOpcode.REPORT_LUNS,
        None,
        "REPORT LUNS",
        _u(0xA0, 0, 0xFF, 0, 0, 0, _FF4, 0, 0),
        "_report_luns",
        A,
        ua_exempt=True,
        scsi2_allowed=True,
    ),
    CommandSpec(
        ScsiOpcode.MODE_SENSE_6,
        None,
        "MODE SENSE(6)",
        _u(0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0),
        "_mode_sense",
        W,
    ),
    CommandSpec(
        ScsiOpcode.MODE_SENSE_10,
        None,
        "MODE SENSE(10)",
        _u(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, _FF2, 0),
        "_mode_sense",
        W,
    ),
    CommandSpec(
        ScsiOpcode.MODE_SELECT_6,
        None,
        "MODE SELECT(6)",
        _u(0x15, 0x11, 0, 0, 0xFF, 0),
        "_mode_select",
        W,
    ),
    CommandSpec(
        ScsiOpcode.MODE_SELECT_10,
        None,
        "MODE SELECT(10)",
        _u(0x55, 0x11, 0, 0, 0, 0, 0, _FF2, 0),
        "_mode_select",
        W,
    ),
    CommandSpec(ScsiOpcode.RESERVE_6, None, "RESERVE(6)", _u(0x16, 0, 0, 0, 0, 0), "_reserve", W),
    CommandSpec(
        ScsiOpcode.RELEASE_6,
        None,
        "RELEASE(6)",
        _u(0x17, 0, 0, 0, 0, 0),
        "_release",
        W,
        scsi2_allowed=True,
    ),
    CommandSpec(
        ScsiOpcode.RESERVE_10,
        None,
        "RESERVE(10)",
        _u(0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        "_reserve",
        W,
    ),
    CommandSpec(
        ScsiOpcode.RELEASE_10,
        None,
        "RELEASE(10)",
        _u(0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        "_release",
        W,
        scsi2_allowed=True,
    ),
    CommandSpec(
        ScsiOpcode.START_STOP_UNIT,
        None,
        "START STOP UNIT",
        _u(0x1B, 1, 0, 0x0F, 0xF7, 0),
        "_start_stop",
        _start_stop_access,
    ),
    CommandSpec(
        ScsiOpcode.PREVENT_ALLOW_MEDIUM_REMOVAL,
        None,
        "PREVENT ALLOW MEDIUM REMOVAL",
        _u(0x1E, 0, 0, 0, 3, 0),
        "_prevent_allow",
        _prevent_access,
        scsi2_allowed=_prevent_scsi2,
    ),
    CommandSpec(
        ScsiOpcode.READ_CAPACITY_10,
        None,
        "READ CAPACITY(10)",
        _u(0x25, 0, _FF4, 0, 0, 1, 0),
        "_read_capacity10",
        A,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.SERVICE_ACTION_IN_16,
        ServiceActionIn16.READ_CAPACITY_16,
        "READ CAPACITY(16)",
        _u(0x9E, 0x10, bytes(8), _FF4, 0, 0),
        "_read_capacity16",
        A,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.SERVICE_ACTION_IN_16,
        ServiceActionIn16.GET_LBA_STATUS,
        "GET LBA STATUS",
        _u(0x9E, 0x12, _FF8, _FF4, 0, 0),
        "_get_lba_status",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.READ_6,
        None,
        "READ(6)",
        _u(0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0),
        "_read",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.READ_10,
        None,
        "READ(10)",
        _u(0x28, 0x1A, _FF4, 0x1F, _FF2, 0),
        "_read",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.READ_12,
        None,
        "READ(12)",
        _u(0xA8, 0x1A, _FF4, _FF4, 0x1F, 0),
        "_read",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.READ_16,
        None,
        "READ(16)",
        _u(0x88, 0x1A, _FF8, _FF4, 0x1F, 0),
        "_read",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_6,
        None,
        "WRITE(6)",
        _u(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0),
        "_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_10,
        None,
        "WRITE(10)",
        _u(0x2A, 0x1A, _FF4, 0x1F, _FF2, 0),
        "_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_12,
        None,
        "WRITE(12)",
        _u(0xAA, 0x1A, _FF4, _FF4, 0x1F, 0),
        "_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_16,
        None,
        "WRITE(16)",
        _u(0x8A, 0x1A, _FF8, _FF4, 0x1F, 0),
        "_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_AND_VERIFY_10,
        None,
        "WRITE AND VERIFY(10)",
        _u(0x2E, 0x12, _FF4, 0x1F, _FF2, 0),
        "_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_AND_VERIFY_12,
        None,
        "WRITE AND VERIFY(12)",
        _u(0xAE, 0x12, _FF4, _FF4, 0x1F, 0),
        "_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_AND_VERIFY_16,
        None,
        "WRITE AND VERIFY(16)",
        _u(0x8E, 0x12, _FF8, _FF4, 0x1F, 0),
        "_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.VERIFY_10,
        None,
        "VERIFY(10)",
        _u(0x2F, 0x16, _FF4, 0x1F, _FF2, 0),
        "_verify",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.VERIFY_12,
        None,
        "VERIFY(12)",
        _u(0xAF, 0x16, _FF4, _FF4, 0x1F, 0),
        "_verify",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.VERIFY_16,
        None,
        "VERIFY(16)",
        _u(0x8F, 0x16, _FF8, _FF4, 0x1F, 0),
        "_verify",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.PRE_FETCH_10,
        None,
        "PRE-FETCH(10)",
        _u(0x34, 0x02, _FF4, 0x1F, _FF2, 0),
        "_prefetch",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.PRE_FETCH_16,
        None,
        "PRE-FETCH(16)",
        _u(0x90, 0x02, _FF8, _FF4, 0x1F, 0),
        "_prefetch",
        R,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.SYNCHRONIZE_CACHE_10,
        None,
        "SYNCHRONIZE CACHE(10)",
        _u(0x35, 0x02, _FF4, 0x1F, _FF2, 0),
        "_sync_cache",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.SYNCHRONIZE_CACHE_16,
        None,
        "SYNCHRONIZE CACHE(16)",
        _u(0x91, 0x02, _FF8, _FF4, 0x1F, 0),
        "_sync_cache",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_SAME_10,
        None,
        "WRITE SAME(10)",
        _u(0x41, 0x08, _FF4, 0x1F, _FF2, 0),
        "_write_same",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.WRITE_SAME_16,
        None,
        "WRITE SAME(16)",
        _u(0x93, 0x09, _FF8, _FF4, 0x1F, 0),
        "_write_same",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.UNMAP,
        None,
        "UNMAP",
        _u(0x42, 0, 0, 0, 0, 0, 0x1F, _FF2, 0),
        "_unmap",
        W,
        medium=True,
        thin_only=True,
    ),
    CommandSpec(
        ScsiOpcode.XDWRITEREAD_10,
        None,
        "XDWRITEREAD(10)",
        _u(0x53, 0x1C, _FF4, 0x1F, _FF2, 0),
        "_xdwriteread",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.COMPARE_AND_WRITE,
        None,
        "COMPARE AND WRITE",
        _u(0x89, 0x18, _FF8, 0, 0, 0, 0xFF, 0x1F, 0),
        "_compare_and_write",
        W,
        medium=True,
    ),
    CommandSpec(
        ScsiOpcode.MAINTENANCE_IN,
        MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES,
        "REPORT SUPPORTED OPERATION CODES",
        _u(0xA3, 0x0C, 0x87, 0xFF, _FF2, _FF4, 0, 0),
        "_report_opcodes",
        A,
        scsi2_allowed=True,
    ),
    *(
        CommandSpec(
            ScsiOpcode.PERSISTENT_RESERVE_IN,
            int(sa),
            f"PERSISTENT RESERVE IN ({sa.name})",
            _u(0x5E, int(sa), 0, 0, 0, 0, 0, _FF2, 0),
            "_pr_in",
            A,
        )
        for sa in PrInAction
    ),
    *(
        CommandSpec(
            ScsiOpcode.PERSISTENT_RESERVE_OUT,
            int(sa),
            f"PERSISTENT RESERVE OUT ({sa.name})",
            _u(0x5F, int(sa), 0xFF, 0, 0, _FF4, 0),
            "_pr_out",
            A,
        )
        for sa in PrOutAction
        if sa != PrOutAction.REPLACE_LOST_RESERVATION
    ),
)

_SA_OPCODES = frozenset(c.opcode for c in COMMANDS if c.service_action is not None)
_SA_FIELD_MASK: dict[int, int] = {
    ScsiOpcode.PERSISTENT_RESERVE_IN: 0x1F,
    ScsiOpcode.PERSISTENT_RESERVE_OUT: 0x1F,
    ScsiOpcode.SERVICE_ACTION_IN_16: 0x1F,
    ScsiOpcode.MAINTENANCE_IN: 0x1F,
}


def encode_lun(lun: int) -> bytes:
    """8-byte LUN field (SAM-5 4.7) as bytes: ``core.pdu.lun_to_field`` (peripheral
    addressing below 256, flat below 16384)."""
    return lun_to_field(lun).to_bytes(8, "big")


def report_luns_data(luns: Sequence[int]) -> bytes:
    """REPORT LUNS parameter data (SPC-4 6.33.2), untruncated."""
    body = b"".join(encode_lun(n) for n in sorted(luns))
    return struct.pack(">I4x", len(body)) + body


@dataclass
class _Ctx:
    nexus: Nexus
    cdb: bytes
    data_out: bytes
    spec: CommandSpec
    expected_out: int = 0


MAX_LOST_NEXUSES = 1024
"""How many lost I_T nexuses a logical unit remembers (``LogicalUnit.nexus_lost``)."""


def _iscsi_version_descriptor(data: bytes, level: int) -> bytes:
    """Standard INQUIRY data whose iSCSI version descriptor (0960h, "no version
    claimed") is 0960h + ``level``, the negotiated iSCSIProtocolLevel (RFC 7144 4.2)."""
    out = bytearray(data)
    for off in range(58, min(len(out) - 1, 74), 2):  # the eight descriptors (SPC-4 6.4.2)
        if struct.unpack_from(">H", out, off)[0] == VersionDescriptor.ISCSI:
            struct.pack_into(">H", out, off, VersionDescriptor.ISCSI + level)
    return bytes(out)


class LogicalUnit:
    """A direct-access block logical unit over a ``Backing`` (SBC-3).

    Construction parameters beyond the backing are the identity (INQUIRY, VPD 80h
    and 83h) and the limits announced in the Block Limits VPD page (SBC-3 6.5.3),
    which the command handlers enforce.
    """

    def __init__(
        self,
        backing: Backing,
        *,
        block_size: int = 512,
        vendor: str = "ISCSICNF",
        product: str = "REFERENCE LU",
        revision: str = "0001",
        serial: str | None = None,
        device_id: bytes | str | None = None,
        lun: int = 0,
        reservations: ReservationState | None = None,
        read_only: bool = False,
        thin: bool = True,
        removable: bool = False,
        target_port_group: int = 1,
        logical_unit_group: int = 0,
        max_transfer_blocks: int = 0x10000,
        optimal_transfer_blocks: int = 128,
        max_write_same_blocks: int = 0x10000,
        max_unmap_blocks: int = 0x40000,
        max_unmap_descriptors: int = 256,
        max_compare_and_write_blocks: int = 255,
        lbppbe: int = 0,
        on_pr_change: Callable[[ReservationState], None] | None = None,
    ) -> None:
        if block_size < 512 or block_size & (block_size - 1):
            raise ValueError("block_size must be a power of two >= 512")
        self.backing = backing
        self.block_size = block_size
        self.vendor, self.product, self.revision = vendor, product, revision
        self.lun = lun
        self.serial = (
            serial
            or f"ICNF{hashlib.sha256(f'{vendor}/{product}/{lun}'.encode()).hexdigest()[:16].upper()}"
        )
        self.device_id = self._naa(device_id)
        self.reservations = reservations if reservations is not None else ReservationState()
        self.read_only = read_only
        self.thin = thin
        self.removable = removable
        self.target_port_group = target_port_group
        self.logical_unit_group = logical_unit_group
        self.max_transfer_blocks = max_transfer_blocks
        self.optimal_transfer_blocks = optimal_transfer_blocks
        self.max_write_same_blocks = max_write_same_blocks
        self.max_unmap_blocks = max_unmap_blocks
        self.max_unmap_descriptors = max_unmap_descriptors
        self.max_compare_and_write_blocks = max_compare_and_write_blocks
        self.lbppbe = lbppbe
        self.on_pr_change = on_pr_change
        self.mode = ModePageSet()
        self.lun_inventory: Callable[[], Sequence[int]] = lambda: [self.lun]
        self.medium_present = True
        self._prevent: set[tuple[str, int]] = set()
        self._known: set[Nexus] = set()
        self._ua: dict[Nexus, list[Asc]] = {}
        # Nexuses lost and not back yet, oldest first (``nexus_lost``): at most
        # ``max_lost_nexuses`` are remembered, so that state stays bounded when
        # initiators come with a new ISID every session (issue 14).
        self._lost: dict[Nexus, None] = {}
        # iSCSIProtocolLevel each I_T nexus's session negotiated (RFC 7144 4.2: the
        # iSCSI version descriptor of standard INQUIRY data is 0960h plus it).
        self._iscsi_level: dict[Nexus, int] = {}
        self.max_lost_nexuses = MAX_LOST_NEXUSES
        self._table: dict[tuple[int, int | None], CommandSpec] = {
            (c.opcode, c.service_action): c for c in COMMANDS
        }

    # ------------------------------------------------------------------ identity
    def _naa(self, device_id: bytes | str | None) -> bytes:
        """An NAA designator (SPC-4 7.8.6.6): given bytes are used as they are;
        otherwise NAA 6 (IEEE Registered Extended) with a locally made-up company
        ID of zero and a vendor-specific identifier hashed from the serial."""
        if isinstance(device_id, bytes) and len(device_id) in (8, 16):
            return device_id
        seed = device_id if isinstance(device_id, str) else self.serial
        digest = hashlib.sha256(seed.encode()).digest()
        return bytes([0x60, 0, 0, digest[0] & 0x0F]) + digest[1:13]

    @property
    def blocks(self) -> int:
        return self.backing.size // self.block_size

    # ------------------------------------------------------------------ target API
    def lookup(self, cdb: bytes) -> CommandSpec | None:
        """The table row for a CDB, or None if the command is not supported."""
        if not cdb:
            return None
        op = cdb[0]
        sa = (cdb[1] & _SA_FIELD_MASK[op]) if op in _SA_OPCODES and len(cdb) > 1 else None
        spec = self._table.get((op, sa))
        if spec is None or (spec.thin_only and not self.thin):
            return None
        return spec

    def data_out_length(self, cdb: bytes) -> int:
        """Bytes of Data-Out the command needs (the target solicits that much)."""
        try:
            return self._data_out_length(cdb)
        except (ValueError, IndexError, struct.error):
            return 0

    def _data_out_length(self, cdb: bytes) -> int:
        op = cdb[0]
        bs = self.block_size
        if op in (
            ScsiOpcode.WRITE_6,
            ScsiOpcode.WRITE_10,
            ScsiOpcode.WRITE_12,
            ScsiOpcode.WRITE_16,
        ) or op in (
            ScsiOpcode.WRITE_AND_VERIFY_10,
            ScsiOpcode.WRITE_AND_VERIFY_12,
            ScsiOpcode.WRITE_AND_VERIFY_16,
        ):
            return decode_block_cdb(cdb).blocks * bs
        if op in (ScsiOpcode.VERIFY_10, ScsiOpcode.VERIFY_12, ScsiOpcode.VERIFY_16):
            b = decode_block_cdb(cdb)
            bytchk = (b.flags >> 1) & 3
            return b.blocks * bs if bytchk == 1 else (bs if bytchk == 3 and b.blocks else 0)
        if op == ScsiOpcode.COMPARE_AND_WRITE:
            return 2 * cdb[13] * bs
        if op == ScsiOpcode.XDWRITEREAD_10:
            return decode_block_cdb(cdb).blocks * bs
        if op == ScsiOpcode.WRITE_SAME_10:
            return bs
        if op == ScsiOpcode.WRITE_SAME_16:
            return 0 if cdb[1] & 0x01 else bs
        if op in (ScsiOpcode.UNMAP, ScsiOpcode.MODE_SELECT_10):
            return int(struct.unpack_from(">H", cdb, 7)[0])
        if op == ScsiOpcode.MODE_SELECT_6:
            return cdb[4]
        if op == ScsiOpcode.PERSISTENT_RESERVE_OUT:
            return int(struct.unpack_from(">I", cdb, 5)[0])
        return 0

    def data_in_length(self, cdb: bytes) -> int:
        """Bytes of Data-In the command may return at most (from its CDB)."""
        try:
            return self._data_in_length(cdb)
        except (ValueError, IndexError, struct.error):
            return 0

    def _data_in_length(self, cdb: bytes) -> int:
        op = cdb[0]
        if op in (
            ScsiOpcode.READ_6,
            ScsiOpcode.READ_10,
            ScsiOpcode.READ_12,
            ScsiOpcode.READ_16,
            ScsiOpcode.XDWRITEREAD_10,
        ):
            return decode_block_cdb(cdb).blocks * self.block_size
        if op in (ScsiOpcode.INQUIRY,):
            return int(struct.unpack_from(">H", cdb, 3)[0])
        if op in (ScsiOpcode.REQUEST_SENSE, ScsiOpcode.MODE_SENSE_6):
            return cdb[4]
        if op in (ScsiOpcode.MODE_SENSE_10, ScsiOpcode.PERSISTENT_RESERVE_IN):
            return int(struct.unpack_from(">H", cdb, 7)[0])
        if op == ScsiOpcode.READ_CAPACITY_10:
            return 8
        if op in (ScsiOpcode.SERVICE_ACTION_IN_16,):
            return int(struct.unpack_from(">I", cdb, 10)[0])
        if op in (ScsiOpcode.REPORT_LUNS, ScsiOpcode.MAINTENANCE_IN):
            return int(struct.unpack_from(">I", cdb, 6)[0])
        return 0

    def unit_attention(self, nexus: Nexus | None, asc: int, ascq: int = 0) -> None:
        """Queue a unit attention for one I_T nexus, or for every known one (None)."""
        code = Asc(asc << 8 | ascq)
        targets = list(self._known) if nexus is None else [nexus]
        for n in targets:
            self._queue_ua(n, code)

    def _queue_ua(self, nexus: Nexus, code: Asc) -> None:
        q = self._ua.setdefault(nexus, [])
        if code not in q:
            q.append(code)

    def reset(self, kind: ResetKind | int = ResetKind.LOGICAL_UNIT_RESET) -> None:
        """LOGICAL UNIT RESET / target reset / power on (SAM-5 6.3.3): SCSI-2
        reservations and PREVENT state are cleared, persistent reservations stay,
        and every I_T nexus gets a unit attention naming the reset."""
        kind = ResetKind(kind)
        self.reservations.reset()
        self._prevent.clear()
        code = {
            ResetKind.LOGICAL_UNIT_RESET: Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED,
            ResetKind.TARGET_WARM_RESET: Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED,
            ResetKind.TARGET_COLD_RESET: Asc.POWER_ON_OCCURRED,
            ResetKind.POWER_ON: Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED,
        }[kind]
        if kind in (ResetKind.TARGET_COLD_RESET, ResetKind.POWER_ON):
            self.mode.restore_defaults()
        for n in self._known:
            self._ua[n] = [code]

    def nexus_lost(self, nexus: Nexus) -> None:
        """I_T nexus loss (SAM-5 6.3.4): SCSI-2 reservation and PREVENT released,
        PR registrations kept; the nexus sees I_T NEXUS LOSS OCCURRED when it returns.

        Bounded: only the ``max_lost_nexuses`` most recently lost nexuses are
        remembered. An older one is forgotten with its unit attention queue; if it
        ever returns it is a new nexus to this logical unit and its first command
        still meets a unit attention, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
        (29h/00h, the general code of the family I_T NEXUS LOSS OCCURRED, 29h/07h,
        belongs to), so the initiator is still told that its state was lost.
        Persistent reservation registrations are not nexus state here: they stay
        (SPC-4 5.13.1: not reset by I_T nexus loss)."""
        self.reservations.nexus_lost(nexus)
        self._prevent.discard((nexus.initiator_port.lower(), nexus.relative_target_port))
        if nexus in self._known:
            self._ua[nexus] = [Asc.I_T_NEXUS_LOSS_OCCURRED]
            self._lost.pop(nexus, None)
            self._lost[nexus] = None
            while len(self._lost) > self.max_lost_nexuses:
                oldest = next(iter(self._lost))
                del self._lost[oldest]
                self._known.discard(oldest)
                self._ua.pop(oldest, None)
                self._iscsi_level.pop(oldest, None)
        else:
            self._iscsi_level.pop(nexus, None)  # it never came: nothing to remember

    def flush(self) -> None:
        """Write back everything (SYNCHRONIZE CACHE of the whole medium)."""
        self.backing.flush()

    def resize(self, size_bytes: int) -> None:
        """Change the capacity; every I_T nexus gets CAPACITY DATA HAS CHANGED."""
        self.backing.resize(size_bytes)
        for n in self._known:
            self._queue_ua(n, Asc.CAPACITY_DATA_HAS_CHANGED)

    def luns_changed(self) -> None:
        """The target's LUN inventory changed: REPORTED LUNS DATA HAS CHANGED."""
        for n in self._known:
            self._queue_ua(n, Asc.REPORTED_LUNS_DATA_HAS_CHANGED)

    def pending_unit_attentions(self, nexus: Nexus) -> list[Asc]:
        return list(self._ua.get(nexus, ()))

    def set_iscsi_protocol_level(self, nexus: Nexus, level: int) -> None:
        """The iSCSIProtocolLevel the session of ``nexus`` negotiated: its standard
        INQUIRY data then carries the iSCSI version descriptor 0960h + ``level`` (RFC
        7144 4.2 MUST, for a device server that returns one); unset, 0960h stays."""
        self._iscsi_level[nexus] = level

    def unit_attention_pending(self, nexus: Nexus) -> bool:
        """Whether the next command of ``nexus`` would meet a unit attention: one is
        queued, or the nexus is new to this logical unit (its first command reports
        POWER ON, as ``execute`` does). QUERY ASYNCHRONOUS EVENT asks this (RFC 7144
        6.4.2); asking reports nothing and clears nothing."""
        return nexus not in self._known or bool(self._ua.get(nexus))

    # ------------------------------------------------------------------ execute
    def execute(
        self,
        nexus: Nexus,
        cdb: bytes,
        data_out: bytes = b"",
        *,
        expected_in: int | None = None,
        expected_out: int | None = None,
    ) -> ScsiOutcome:
        """Run one command to completion.  ``expected_in`` (the transport's expected
        Data-In length) is accepted for symmetry; truncation and residuals are the
        transport's business (RFC 7143 11.4.5.2), so it does not change the outcome.
        ``expected_out`` is the transport's expected Data-Out length; a command whose
        CDB asks for no data while the initiator meant to send some (COMPARE AND
        WRITE with 256 blocks wrapped to 0) is refused with it."""
        cdb = bytes(cdb)
        try:
            spec = self.lookup(cdb)
            if nexus not in self._known:
                self._known.add(nexus)
                self._queue_ua(nexus, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED)
            elif self._lost:
                self._lost.pop(nexus, None)  # back: no longer a candidate to forget
            if spec is None or not spec.ua_exempt:
                q = self._ua.get(nexus)
                if q:
                    code = q.pop(0)
                    raise check_condition(
                        SenseKey.UNIT_ATTENTION,
                        code,
                        f"unit attention {code.name}",
                        section="SAM-5 5.14",
                    )
            if spec is None and cdb and cdb[0] in _SA_OPCODES:
                raise invalid_field_in_cdb(
                    1,
                    f"service action {cdb[1] & 0x1F:#04x} not supported",
                    bit=4,
                    section="SPC-4 4.2.5.2",
                )
            if spec is None:
                raise illegal_request(
                    Asc.INVALID_COMMAND_OPERATION_CODE,
                    f"operation code {cdb[0]:#04x} not supported" if cdb else "empty CDB",
                    section="SPC-4 4.5.6",
                    field_pointer=0 if cdb else None,
                )
            if len(cdb) < spec.cdb_length:
                raise invalid_field_in_cdb(
                    len(cdb),
                    f"{spec.name} CDB shorter than {spec.cdb_length} bytes",
                    section="SAM-5 5.2",
                )
            res = self.reservations
            if res.scsi2_holder is not None and res.scsi2_conflict(nexus):
                allowed = (
                    spec.scsi2_allowed(cdb) if callable(spec.scsi2_allowed) else spec.scsi2_allowed
                )
                if not allowed:
                    raise ReservationConflict(
                        f"{spec.name} conflicts with a RESERVE from another I_T nexus",
                        section="SPC-2 5.5.1",
                    )
            if res.type is not None:
                klass = spec.access(cdb) if callable(spec.access) else spec.access
                if res.access_conflict(nexus, klass):
                    raise ReservationConflict(
                        f"{spec.name} conflicts with the persistent reservation",
                        section="SPC-4 5.9.1",
                    )
            if spec.medium and not self.medium_present:
                raise check_condition(
                    SenseKey.NOT_READY,
                    Asc.MEDIUM_NOT_PRESENT,
                    "medium not present",
                    section="SBC-3 4.19",
                )
            handler: Handler = getattr(type(self), spec.handler)
            return handler(self, _Ctx(nexus, cdb, bytes(data_out), spec, expected_out or 0))
        except ReservationConflict:
            return ScsiOutcome(ScsiStatus.RESERVATION_CONFLICT)
        except SCSIError as err:
            sense = SenseData.from_error(err).encode(descriptor=self.mode.d_sense)
            return ScsiOutcome(err.status, sense)

    # ------------------------------------------------------------------ helpers
    def _check_range(self, lba: int, blocks: int) -> None:
        """SBC-3 4.5: the whole range must lie within the capacity (LBA OUT OF RANGE)."""
        cap = self.blocks
        if lba >= cap or lba + blocks > cap:
            raise lba_out_of_range(lba)

    def _check_protect(self, cdb: bytes) -> None:
        """No protection information (SBC-3 4.22): nonzero RD/WR/VRPROTECT is invalid."""
        if cdb[0] not in (ScsiOpcode.READ_6, ScsiOpcode.WRITE_6) and cdb[1] & 0xE0:
            raise invalid_field_in_cdb(
                1, "protection information not supported", bit=7, section="SBC-3 5.10"
            )

    def _check_writable(self) -> None:
        if self.read_only:
            raise check_condition(
                SenseKey.DATA_PROTECT,
                Asc.WRITE_PROTECTED,
                "logical unit is read-only",
                section="SBC-3 4.13",
            )
        if self.mode.swp:
            raise check_condition(
                SenseKey.DATA_PROTECT,
                Asc.SOFTWARE_WRITE_PROTECTED,
                "software write protect (SWP) set",
                section="SPC-4 7.5.8",
            )

    def _check_transfer(self, blocks: int) -> None:
        if self.max_transfer_blocks and blocks > self.max_transfer_blocks:
            raise invalid_field_in_cdb(
                0, "transfer length exceeds MAXIMUM TRANSFER LENGTH", section="SBC-3 6.5.3"
            )

    def _need_data(self, ctx: _Ctx, length: int) -> bytes:
        """The command's Data-Out; short Data-Out is refused before anything is
        written (SAM-5 5.4.3 / FCP-4 option b: INVALID FIELD IN COMMAND INFORMATION UNIT)."""
        if len(ctx.data_out) < length:
            raise illegal_request(
                Asc.INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
                f"{ctx.spec.name} needs {length} bytes of Data-Out, got {len(ctx.data_out)}",
                section="SAM-5 5.4.3",
            )
        return ctx.data_out[:length] if len(ctx.data_out) != length else ctx.data_out

    def _fua(self, cdb: bytes) -> None:
        if cdb[0] not in (ScsiOpcode.WRITE_6,) and cdb[1] & 0x08:
            self.backing.flush()  # force unit access: write through (SBC-3 5.33)

    @staticmethod
    def _first_difference(a: bytes, b: bytes) -> int:
        """Offset of the first byte where ``a`` and ``b`` differ (they must differ)."""
        step = 4096
        for off in range(0, len(a), step):
            if a[off : off + step] != b[off : off + step]:
                for i in range(off, min(off + step, len(a))):
                    if a[i] != b[i]:
                        return i
        return min(len(a), len(b))

    def _miscompare(self, offset: int, what: str) -> SCSIError:
        return check_condition(
            SenseKey.MISCOMPARE,
            Asc.MISCOMPARE_DURING_VERIFY_OPERATION,
            f"{what}: miscompare at byte {offset}",
            section="SBC-3 5.2",
            info=offset,
        )

    # ------------------------------------------------------------------ SPC commands
    def _tur(self, ctx: _Ctx) -> ScsiOutcome:
        return _GOOD

    def _request_sense(self, ctx: _Ctx) -> ScsiOutcome:
        """REQUEST SENSE (SPC-4 6.29): report and clear a pending unit attention,
        else NO SENSE; fixed or descriptor format per the DESC bit."""
        alloc = ctx.cdb[4]
        desc = bool(ctx.cdb[1] & 1)
        q = self._ua.get(ctx.nexus)
        if q:
            code = q.pop(0)
            sense = SenseData.of(SenseKey.UNIT_ATTENTION, code)
        elif not self.medium_present:
            sense = SenseData.of(SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT)
        else:
            sense = SenseData(SenseKey.NO_SENSE)
        return ScsiOutcome(ScsiStatus.GOOD, data=sense.encode(descriptor=desc)[:alloc])

    def _inquiry(self, ctx: _Ctx) -> ScsiOutcome:
        cdb = ctx.cdb
        evpd = cdb[1] & 0x01
        page = cdb[2]
        (alloc,) = struct.unpack_from(">H", cdb, 3)
        if cdb[1] & 0x02:  # CMDDT is obsolete (SPC-4 6.4.1)
            raise invalid_field_in_cdb(1, "CMDDT not supported", bit=1, section="SPC-4 6.4.1")
        if not evpd:
            if page:
                raise invalid_field_in_cdb(2, "PAGE CODE set with EVPD=0", section="SPC-4 6.4.1")
            data = self.standard_inquiry()
            level = self._iscsi_level.get(ctx.nexus)
            if level is not None:
                data = _iscsi_version_descriptor(data, level)
            return ScsiOutcome(ScsiStatus.GOOD, data=data[:alloc])
        builder = self._vpd_pages().get(page)
        if builder is None:
            raise invalid_field_in_cdb(
                2, f"VPD page {page:#04x} not supported", section="SPC-4 6.4.1"
            )
        return ScsiOutcome(ScsiStatus.GOOD, data=builder(ctx.nexus)[:alloc])

    def standard_inquiry(self) -> bytes:
        """Standard INQUIRY data, 96 bytes (SPC-4 6.4.2)."""
        data = bytearray(96)
        data[0] = 0x00  # qualifier 000b, direct access block device
        data[1] = 0x80 if self.removable else 0
        data[2] = 0x06  # SPC-4
        data[3] = 0x12  # HISUP=1, RESPONSE DATA FORMAT=2
        data[4] = len(data) - 5
        data[7] = 0x02  # CMDQUE
        data[8:16] = self.vendor.encode("ascii", "replace")[:8].ljust(8)
        data[16:32] = self.product.encode("ascii", "replace")[:16].ljust(16)
        data[32:36] = self.revision.encode("ascii", "replace")[:4].ljust(4)
        for i, v in enumerate(
            (
                VersionDescriptor.SAM_5,
                VersionDescriptor.ISCSI,
                VersionDescriptor.SPC_4,
                VersionDescriptor.SBC_3,
            )
        ):
            struct.pack_into(">H", data, 58 + 2 * i, v)
        return bytes(data)

    def _vpd_pages(self) -> dict[int, Callable[[Nexus], bytes]]:
        pages: dict[int, Callable[[Nexus], bytes]] = {
            VpdPage.SUPPORTED_VPD_PAGES: self._vpd_supported,
            VpdPage.UNIT_SERIAL_NUMBER: lambda n: self._vpd(
                VpdPage.UNIT_SERIAL_NUMBER, self.serial.encode("ascii", "replace")
            ),
            VpdPage.DEVICE_IDENTIFICATION: self._vpd_device_identification,
            VpdPage.BLOCK_LIMITS: lambda n: self._vpd(VpdPage.BLOCK_LIMITS, self._block_limits()),
            VpdPage.BLOCK_DEVICE_CHARACTERISTICS: lambda n: self._vpd(
                VpdPage.BLOCK_DEVICE_CHARACTERISTICS, struct.pack(">HBB", 1, 0, 0) + bytes(0x3C - 4)
            ),
        }
        if self.thin:
            pages[VpdPage.LOGICAL_BLOCK_PROVISIONING] = lambda n: self._vpd(
                VpdPage.LOGICAL_BLOCK_PROVISIONING,
                bytes([0, 0xE4, 0x02, 0]),  # LBPU LBPWS LBPWS10 LBPRZ; thin
            )
        return pages

    @staticmethod
    def _vpd(page: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0, page, len(body)) + body

    def _vpd_supported(self, nexus: Nexus) -> bytes:
        return self._vpd(VpdPage.SUPPORTED_VPD_PAGES, bytes(sorted(self._vpd_pages())))

    def _vpd_device_identification(self, nexus: Nexus) -> bytes:
        """Device Identification VPD (SPC-4 7.8.6): NAA and T10 vendor ID for the
        LU; SCSI name string, relative target port and target port group for the
        port this I_T nexus came through; logical unit group."""

        def desig(
            proto: int, code_set: int, assoc: int, dtype: int, value: bytes, piv: bool = False
        ) -> bytes:
            b0 = (proto << 4 if piv else 0) | code_set
            b1 = (0x80 if piv else 0) | assoc << 4 | dtype
            return bytes([b0, b1, 0, len(value)]) + value

        iscsi = ProtocolIdentifier.ISCSI
        out = bytearray()
        out += desig(
            0, CodeSet.BINARY, Association.LOGICAL_UNIT, DesignatorType.NAA, self.device_id
        )
        t10 = self.vendor.encode("ascii", "replace")[:8].ljust(
            8
        ) + f"{self.product}:{self.serial}".encode("ascii", "replace")
        out += desig(0, CodeSet.ASCII, Association.LOGICAL_UNIT, DesignatorType.T10_VENDOR_ID, t10)
        if nexus.target_port:
            name = nexus.target_port.encode("utf-8") + b"\0"
            name += b"\0" * (-len(name) % 4)
            out += desig(
                iscsi,
                CodeSet.UTF8,
                Association.TARGET_PORT,
                DesignatorType.SCSI_NAME_STRING,
                name,
                piv=True,
            )
        out += desig(
            iscsi,
            CodeSet.BINARY,
            Association.TARGET_PORT,
            DesignatorType.RELATIVE_TARGET_PORT,
            struct.pack(">xxH", nexus.relative_target_port),
            piv=True,
        )
        out += desig(
            iscsi,
            CodeSet.BINARY,
            Association.TARGET_PORT,
            DesignatorType.TARGET_PORT_GROUP,
            struct.pack(">xxH", self.target_port_group),
            piv=True,
        )
        out += desig(
            0,
            CodeSet.BINARY,
            Association.LOGICAL_UNIT,
            DesignatorType.LOGICAL_UNIT_GROUP,
            struct.pack(">xxH", self.logical_unit_group),
        )
        return self._vpd(VpdPage.DEVICE_IDENTIFICATION, bytes(out))

    def _block_limits(self) -> bytes:
        """Block Limits VPD body, 3Ch bytes (SBC-3 6.5.3); WSNZ=1."""
        thin = self.thin
        return struct.pack(
            ">BBHIIIIIIIQ20x",
            0x01,
            self.max_compare_and_write_blocks,
            1 << self.lbppbe,
            self.max_transfer_blocks,
            self.optimal_transfer_blocks,
            0,
            self.max_unmap_blocks if thin else 0,
            self.max_unmap_descriptors if thin else 0,
            (1 << self.lbppbe) if thin else 0,
            0,
            self.max_write_same_blocks,
        )

    def _report_luns(self, ctx: _Ctx) -> ScsiOutcome:
        select = ctx.cdb[2]
        (alloc,) = struct.unpack_from(">I", ctx.cdb, 6)
        if select not in (0x00, 0x01, 0x02):
            raise invalid_field_in_cdb(
                2, f"SELECT REPORT {select:#04x} not supported", section="SPC-4 6.33"
            )
        q = self._ua.get(ctx.nexus)
        if q and Asc.REPORTED_LUNS_DATA_HAS_CHANGED in q:  # SPC-4 6.33: reporting clears it
            q.remove(Asc.REPORTED_LUNS_DATA_HAS_CHANGED)
        luns = [] if select == 0x01 else list(self.lun_inventory())
        return ScsiOutcome(ScsiStatus.GOOD, data=report_luns_data(luns)[:alloc])

    # ---- mode pages
    def _mode_sense(self, ctx: _Ctx) -> ScsiOutcome:
        cdb = ctx.cdb
        ten = cdb[0] == ScsiOpcode.MODE_SENSE_10
        dbd = bool(cdb[1] & 0x08)
        llbaa = ten and bool(cdb[1] & 0x10)
        pc, page, sub = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        alloc = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        if page != ModePage.ALL_PAGES and page not in self.mode.defs:
            raise invalid_field_in_cdb(
                2, f"mode page {page:#04x} not supported", bit=5, section="SPC-4 6.11"
            )
        if sub not in (0x00, 0xFF):  # no sub-pages beyond 00h; FFh asks for all of them
            raise invalid_field_in_cdb(
                3, f"sub-page {sub:#04x} not supported", section="SPC-4 6.11"
            )
        pages = self.mode.sense(page, pc)
        dsp = (0x80 if (self.read_only or self.mode.swp) else 0) | 0x10  # WP, DPOFUA (SBC-3 6.4.1)
        if dbd:
            bd = b""
        elif llbaa:
            bd = struct.pack(
                ">Q4xI",
                self.blocks if pc != PageControl.CHANGEABLE else 0,
                self.block_size if pc != PageControl.CHANGEABLE else 0,
            )
        else:
            nb = min(self.blocks, 0xFFFFFFFF) if pc != PageControl.CHANGEABLE else 0
            bl = self.block_size if pc != PageControl.CHANGEABLE else 0
            bd = struct.pack(">IxBH", nb, bl >> 16, bl & 0xFFFF)
        if ten:
            body = bd + pages
            header = struct.pack(">HBBBxH", 6 + len(body), 0, dsp, 0x01 if llbaa else 0, len(bd))
        else:
            body = bd + pages
            header = bytes([min(3 + len(body), 0xFF), 0, dsp, len(bd)])
        return ScsiOutcome(ScsiStatus.GOOD, data=(header + body)[:alloc])

    def _mode_select(self, ctx: _Ctx) -> ScsiOutcome:
        cdb = ctx.cdb
        ten = cdb[0] == ScsiOpcode.MODE_SELECT_10
        plen = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        if not cdb[1] & 0x10:
            raise invalid_field_in_cdb(
                1, "PF=0 (vendor-specific page format) not supported", bit=4, section="SPC-4 6.9"
            )
        if cdb[1] & 0x01:
            raise invalid_field_in_cdb(
                1, "SP=1: saving parameters not supported", bit=0, section="SPC-4 6.9"
            )
        if plen == 0:
            return _GOOD
        data = self._need_data(ctx, plen)
        hlen = 8 if ten else 4
        if plen < hlen:
            raise parameter_list_length_error(
                "mode parameter header truncated", section="SPC-4 7.5.4"
            )
        bdl = struct.unpack_from(">H", data, 6)[0] if ten else data[3]
        longlba = ten and bool(data[4] & 0x01)
        if hlen + bdl > plen:
            raise parameter_list_length_error(
                "block descriptors run past the parameter list", section="SPC-4 7.5.4"
            )
        step = 16 if longlba else 8
        if bdl % step or bdl > step:
            raise invalid_field_in_parameter_list(
                hlen - 1, "unsupported block descriptor length", section="SPC-4 7.5.4"
            )
        if bdl:
            if longlba:
                nb, bl = struct.unpack_from(">Q4xI", data, hlen)
            else:
                nb, hi, lo = struct.unpack_from(">IxBH", data, hlen)
                bl = hi << 16 | lo
            if bl != self.block_size:
                raise invalid_field_in_parameter_list(
                    hlen + step - 3, "block length cannot be changed", section="SBC-3 6.4.2"
                )
            if nb not in (0, self.blocks, min(self.blocks, 0xFFFFFFFF)):
                raise invalid_field_in_parameter_list(
                    hlen, "number of blocks cannot be changed", section="SBC-3 6.4.2"
                )
        changed = self.mode.select(data[hlen + bdl : plen], hlen + bdl)
        if changed:  # SPC-4 7.5.1: other I_T nexuses learn of the change
            for n in self._known:
                if n != ctx.nexus:
                    self._queue_ua(n, Asc.MODE_PARAMETERS_CHANGED)
        return _GOOD

    # ---- SCSI-2 reservations
    def _reserve(self, ctx: _Ctx) -> ScsiOutcome:
        cdb = ctx.cdb
        if cdb[0] == ScsiOpcode.RESERVE_10 and cdb[1] & 0x12:
            raise invalid_field_in_cdb(
                1, "third-party reservations not supported", bit=4, section="SPC-2 7.22"
            )
        if cdb[0] == ScsiOpcode.RESERVE_6 and cdb[1] & 0x01:
            raise invalid_field_in_cdb(
                1, "extent reservations not supported", bit=0, section="SPC-2 7.21"
            )
        self.reservations.reserve_scsi2(ctx.nexus)
        return _GOOD

    def _release(self, ctx: _Ctx) -> ScsiOutcome:
        cdb = ctx.cdb
        if cdb[0] == ScsiOpcode.RELEASE_10 and cdb[1] & 0x12:
            raise invalid_field_in_cdb(
                1, "third-party release not supported", bit=4, section="SPC-2 7.20"
            )
        self.reservations.release_scsi2(ctx.nexus)
        return _GOOD

    # ---- persistent reservations
    def _pr_in(self, ctx: _Ctx) -> ScsiOutcome:
        (alloc,) = struct.unpack_from(">H", ctx.cdb, 7)
        return ScsiOutcome(ScsiStatus.GOOD, data=self.reservations.pr_in(ctx.cdb[1] & 0x1F, alloc))

    def _pr_out(self, ctx: _Ctx) -> ScsiOutcome:
        cdb = ctx.cdb
        (plen,) = struct.unpack_from(">I", cdb, 5)
        params = ctx.data_out[:plen]
        result = self.reservations.pr_out(
            ctx.nexus, cdb[1] & 0x1F, cdb[2] >> 4, cdb[2] & 0x0F, params, parameter_list_length=plen
        )
        for key, code in result.unit_attentions:
            for n in self._known:
                if n != ctx.nexus and _key_covers(key, n):
                    self._queue_ua(n, code)
        if result.changed and self.on_pr_change is not None:
            self.on_pr_change(self.reservations)
        return ScsiOutcome(
            ScsiStatus.GOOD, aborted=tuple(result.aborted), pr_changed=result.changed
        )

    def _report_opcodes(self, ctx: _Ctx) -> ScsiOutcome:
        """REPORT SUPPORTED OPERATION CODES (SPC-4 6.35)."""
        cdb = ctx.cdb
        rctd = bool(cdb[2] & 0x80)
        options = cdb[2] & 0x07
        op = cdb[3]
        (sa,) = struct.unpack_from(">H", cdb, 4)
        (alloc,) = struct.unpack_from(">I", cdb, 6)
        specs = [c for c in COMMANDS if not (c.thin_only and not self.thin)]

        def timeouts(c: CommandSpec) -> bytes:
            return struct.pack(">HxxII", 0x0A, *c.timeouts)

        if options == 0:
            body = bytearray()
            for c in specs:
                flags = (0x02 if rctd else 0) | (0x01 if c.service_action is not None else 0)
                body += struct.pack(">BxHxBH", c.opcode, c.service_action or 0, flags, c.cdb_length)
                if rctd:
                    body += timeouts(c)
            data = struct.pack(">I", len(body)) + bytes(body)
            return ScsiOutcome(ScsiStatus.GOOD, data=data[:alloc])
        if options not in (1, 2, 3):
            raise invalid_field_in_cdb(
                2, f"REPORTING OPTIONS {options} not supported", bit=2, section="SPC-4 6.35.1"
            )
        has_sa = op in _SA_OPCODES
        if options == 1 and has_sa:
            raise invalid_field_in_cdb(
                3, "operation code has service actions", section="SPC-4 6.35.1"
            )
        if options == 2 and not has_sa:
            raise invalid_field_in_cdb(
                3, "operation code has no service actions", section="SPC-4 6.35.1"
            )
        match = next(
            (c for c in specs if c.opcode == op and (c.service_action == sa if has_sa else True)),
            None,
        )
        if match is None:
            return ScsiOutcome(ScsiStatus.GOOD, data=bytes([0, 0x01, 0, 0])[:alloc])
        data = (
            bytes([0, (0x80 if rctd else 0) | 0x03])
            + struct.pack(">H", match.cdb_length)
            + match.usage
        )
        if rctd:
            data += timeouts(match)
        return ScsiOutcome(ScsiStatus.GOOD, data=data[:alloc])

    # ------------------------------------------------------------------ SBC commands
    def _start_stop(self, ctx: _Ctx) -> ScsiOutcome:
        """START STOP UNIT (SBC-3 5.25).  A power condition other than START_VALID
        changes only the power state, which this unit does not model; LOEJ loads
        or ejects the medium of a removable unit unless removal is prevented."""
        b4 = ctx.cdb[4]
        power_condition, loej, start = b4 >> 4, bool(b4 & 0x02), bool(b4 & 0x01)
        if power_condition or not loej or not self.removable:
            return _GOOD
        if start:
            self.medium_present = True
            return _GOOD
        if self._prevent:
            raise illegal_request(
                Asc.MEDIUM_REMOVAL_PREVENTED, "medium removal prevented", section="SBC-3 5.25"
            )
        self.medium_present = False
        return _GOOD

    def _prevent_allow(self, ctx: _Ctx) -> ScsiOutcome:
        """PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.5): tracked per I_T nexus."""
        prevent = ctx.cdb[4] & 0x03
        if prevent > 1:
            raise invalid_field_in_cdb(
                4, "PREVENT values 10b/11b are not defined for SBC", bit=1, section="SBC-3 5.5"
            )
        key = (ctx.nexus.initiator_port.lower(), ctx.nexus.relative_target_port)
        if prevent:
            self._prevent.add(key)
        else:
            self._prevent.discard(key)
        return _GOOD

    def _read_capacity10(self, ctx: _Ctx) -> ScsiOutcome:
        """READ CAPACITY(10) (SBC-3 5.15): FFFFFFFFh when the LBA does not fit."""
        (lba,) = struct.unpack_from(">I", ctx.cdb, 2)
        if lba and not ctx.cdb[8] & 0x01:
            raise invalid_field_in_cdb(
                2, "LOGICAL BLOCK ADDRESS set with PMI=0", section="SBC-3 5.15.1"
            )
        last = self.blocks - 1
        return ScsiOutcome(
            ScsiStatus.GOOD, data=struct.pack(">II", min(last, 0xFFFFFFFF), self.block_size)
        )

    def _read_capacity16(self, ctx: _Ctx) -> ScsiOutcome:
        """READ CAPACITY(16) (SBC-3 5.16): LBPME and LBPRZ set for thin units."""
        (alloc,) = struct.unpack_from(">I", ctx.cdb, 10)
        lbp = 0xC000 if self.thin else 0
        data = struct.pack(
            ">QIBBH16x", self.blocks - 1, self.block_size, 0, self.lbppbe & 0x0F, lbp
        )
        return ScsiOutcome(ScsiStatus.GOOD, data=data[:alloc])

    def _get_lba_status(self, ctx: _Ctx) -> ScsiOutcome:
        """GET LBA STATUS (SBC-3 5.8): mapped/deallocated runs from the start LBA."""
        (lba,) = struct.unpack_from(">Q", ctx.cdb, 2)
        (alloc,) = struct.unpack_from(">I", ctx.cdb, 10)
        cap = self.blocks
        if lba >= cap:
            raise lba_out_of_range(lba, section="SBC-3 5.8")
        bs = self.block_size
        max_desc = max(1, (alloc - 8) // 16) if alloc >= 24 else 1
        window = min(cap - lba, 1 << 24)  # bound the work of one command
        if self.thin:
            runs = self.backing.extents(lba * bs, window * bs)
        else:
            runs = [(lba * bs, window * bs, True)]
        merged: list[list[int]] = []
        for off, ln, mapped in runs:
            first = max(off // bs, merged[-1][1] if merged else lba)
            last = -(-(off + ln) // bs)
            if last <= first:
                continue
            status = ProvisioningStatus.MAPPED if mapped else ProvisioningStatus.DEALLOCATED
            if merged and merged[-1][2] == status and merged[-1][1] == first:
                merged[-1][1] = last
            else:
                merged.append([first, last, status])
        body = b"".join(struct.pack(">QIB3x", f, e - f, st) for f, e, st in merged[:max_desc])
        data = struct.pack(">I4x", len(body) + 4) + bytes(body)
        return ScsiOutcome(ScsiStatus.GOOD, data=data[:alloc])

    def _read(self, ctx: _Ctx) -> ScsiOutcome:
        """READ(6/10/12/16) (SBC-3 5.9-5.12)."""
        cdb = ctx.cdb
        self._check_protect(cdb)
        b = decode_block_cdb(cdb)
        self._check_range(b.lba, b.blocks)
        if not b.blocks:
            return _GOOD
        self._check_transfer(b.blocks)
        bs = self.block_size
        return ScsiOutcome(ScsiStatus.GOOD, data=self.backing.read(b.lba * bs, b.blocks * bs))

    def _write(self, ctx: _Ctx) -> ScsiOutcome:
        """WRITE(6/10/12/16) and WRITE AND VERIFY(10/12/16) (SBC-3 5.32-5.39)."""
        cdb = ctx.cdb
        self._check_protect(cdb)
        verify = cdb[0] in (
            ScsiOpcode.WRITE_AND_VERIFY_10,
            ScsiOpcode.WRITE_AND_VERIFY_12,
            ScsiOpcode.WRITE_AND_VERIFY_16,
        )
        if verify and (cdb[1] >> 1) & 3 > 1:
            raise invalid_field_in_cdb(1, "BYTCHK value not supported", bit=2, section="SBC-3 5.37")
        b = decode_block_cdb(cdb)
        self._check_writable()
        self._check_range(b.lba, b.blocks)
        if not b.blocks:
            return _GOOD
        self._check_transfer(b.blocks)
        bs = self.block_size
        data = self._need_data(ctx, b.blocks * bs)
        self.backing.write(b.lba * bs, data)
        if verify:
            # WRITE AND VERIFY: read back and compare (SBC-3 5.37).
            back = self.backing.read(b.lba * bs, len(data))
            if back != data:
                raise check_condition(
                    SenseKey.MEDIUM_ERROR,
                    Asc.WRITE_ERROR,
                    "verify after write failed",
                    section="SBC-3 5.37",
                )
            self.backing.flush()
        else:
            self._fua(cdb)
        return _GOOD

    def _verify(self, ctx: _Ctx) -> ScsiOutcome:
        """VERIFY(10/12/16) (SBC-3 5.29-5.31): BYTCHK 00b medium check, 01b compare
        the Data-Out, 11b compare one block against each block (SBC-4 5.33)."""
        cdb = ctx.cdb
        self._check_protect(cdb)
        b = decode_block_cdb(cdb)
        bytchk = (b.flags >> 1) & 3
        if bytchk == 2:
            raise invalid_field_in_cdb(1, "BYTCHK=10b reserved", bit=2, section="SBC-3 5.29")
        self._check_range(b.lba, b.blocks)
        if not b.blocks:
            return _GOOD
        self._check_transfer(b.blocks)
        if bytchk == 0:
            return _GOOD
        bs = self.block_size
        medium = self.backing.read(b.lba * bs, b.blocks * bs)
        expect = (
            self._need_data(ctx, b.blocks * bs)
            if bytchk == 1
            else self._need_data(ctx, bs) * b.blocks
        )
        if medium != expect:
            raise self._miscompare(self._first_difference(expect, medium), "VERIFY")
        return _GOOD

    def _prefetch(self, ctx: _Ctx) -> ScsiOutcome:
        """PRE-FETCH(10/16) (SBC-3 5.6): nothing to stage; GOOD once range-checked."""
        b = decode_block_cdb(ctx.cdb)
        self._check_range(b.lba, b.blocks)
        return _GOOD

    def _sync_cache(self, ctx: _Ctx) -> ScsiOutcome:
        """SYNCHRONIZE CACHE(10/16) (SBC-3 5.22): blocks=0 means to the end."""
        b = decode_block_cdb(ctx.cdb)
        self._check_range(b.lba, b.blocks)
        self.backing.flush()
        return _GOOD

    def _write_same(self, ctx: _Ctx) -> ScsiOutcome:
        """WRITE SAME(10/16) (SBC-3 5.42, 5.43) with UNMAP and NDOB."""
        cdb = ctx.cdb
        self._check_protect(cdb)
        unmap, anchor = bool(cdb[1] & 0x08), bool(cdb[1] & 0x10)
        ndob = cdb[0] == ScsiOpcode.WRITE_SAME_16 and bool(cdb[1] & 0x01)
        if anchor:  # ANC_SUP=0 in the Logical Block Provisioning VPD page
            raise invalid_field_in_cdb(1, "ANCHOR not supported", bit=4, section="SBC-3 5.42")
        if unmap and not self.thin:
            raise invalid_field_in_cdb(
                1, "UNMAP on a fully provisioned logical unit", bit=3, section="SBC-3 5.42"
            )
        b = decode_block_cdb(cdb)
        if b.blocks == 0:  # WSNZ=1 (SBC-3 6.5.3)
            raise invalid_field_in_cdb(
                10 if cdb[0] == ScsiOpcode.WRITE_SAME_16 else 7,
                "NUMBER OF LOGICAL BLOCKS is zero",
                section="SBC-3 5.42",
            )
        if self.max_write_same_blocks and b.blocks > self.max_write_same_blocks:
            raise invalid_field_in_cdb(
                10 if cdb[0] == ScsiOpcode.WRITE_SAME_16 else 7,
                "exceeds MAXIMUM WRITE SAME LENGTH",
                section="SBC-3 5.42",
            )
        self._check_writable()
        self._check_range(b.lba, b.blocks)
        bs = self.block_size
        block = bytes(bs) if ndob else self._need_data(ctx, bs)
        zero = block == bytes(bs)
        if zero and (unmap or ndob) and self.thin:
            self.backing.discard(b.lba * bs, b.blocks * bs)  # LBPRZ=1: reads back zeros
            return _GOOD
        per = max(1, (1 << 20) // bs)
        piece = block * min(per, b.blocks)
        done = 0
        while done < b.blocks:
            n = min(per, b.blocks - done)
            self.backing.write(
                (b.lba + done) * bs, piece if n * bs == len(piece) else piece[: n * bs]
            )
            done += n
        return _GOOD

    def _unmap(self, ctx: _Ctx) -> ScsiOutcome:
        """UNMAP (SBC-3 5.28): every descriptor is checked before any is applied."""
        cdb = ctx.cdb
        if cdb[1] & 0x01:
            raise invalid_field_in_cdb(1, "ANCHOR not supported", bit=0, section="SBC-3 5.28")
        (plen,) = struct.unpack_from(">H", cdb, 7)
        if plen == 0:
            return _GOOD
        if plen < 8:
            raise parameter_list_length_error(
                "UNMAP parameter list shorter than 8 bytes", section="SBC-3 5.28"
            )
        self._check_writable()
        data = self._need_data(ctx, plen)
        (bdl,) = struct.unpack_from(">H", data, 2)
        bdl = min(bdl, plen - 8) // 16 * 16
        count = bdl // 16
        if count > self.max_unmap_descriptors:
            raise invalid_field_in_parameter_list(
                2, "too many UNMAP block descriptors", section="SBC-3 5.28"
            )
        cap = self.blocks
        ranges: list[tuple[int, int]] = []
        for i in range(count):
            lba, n = struct.unpack_from(">QI", data, 8 + 16 * i)
            if lba + n > cap:
                raise lba_out_of_range(lba, section="SBC-3 5.28")
            if n > self.max_unmap_blocks:
                raise invalid_field_in_parameter_list(
                    8 + 16 * i + 8, "exceeds MAXIMUM UNMAP LBA COUNT", section="SBC-3 5.28"
                )
            if n:
                ranges.append((lba, n))
        bs = self.block_size
        for lba, n in ranges:
            self.backing.discard(lba * bs, n * bs)
        return _GOOD

    def _xdwriteread(self, ctx: _Ctx) -> ScsiOutcome:
        """XDWRITEREAD(10) (SBC-3 5.48 in sbc3r22, the steps linux target_core_sbc.c
        quotes): read the addressed blocks, XOR the Data-Out with them, write the
        Data-Out unless DISABLE WRITE is one, and return the XOR as Data-In. The
        transport carries it as one bidirectional task (RFC 7143 11.3.4)."""
        cdb = ctx.cdb
        self._check_protect(cdb)
        b = decode_block_cdb(cdb)
        disable_write = bool(cdb[1] & 0x04)
        if not disable_write:
            self._check_writable()
        self._check_range(b.lba, b.blocks)
        if not b.blocks:
            return _GOOD
        self._check_transfer(b.blocks)
        bs = self.block_size
        data = self._need_data(ctx, b.blocks * bs)
        old = self.backing.read(b.lba * bs, len(data))
        xor = (int.from_bytes(old, "big") ^ int.from_bytes(data, "big")).to_bytes(len(data), "big")
        if not disable_write:
            self.backing.write(b.lba * bs, data)
            self._fua(cdb)
        return ScsiOutcome(ScsiStatus.GOOD, data=xor)

    def _compare_and_write(self, ctx: _Ctx) -> ScsiOutcome:
        """COMPARE AND WRITE (SBC-3 5.2): atomic here because execute() runs one
        command at a time; miscompare leaves the medium alone and reports the
        offset of the first differing byte in INFORMATION."""
        cdb = ctx.cdb
        self._check_protect(cdb)
        b = decode_block_cdb(cdb)
        if b.blocks > self.max_compare_and_write_blocks:
            raise invalid_field_in_cdb(
                13, "exceeds MAXIMUM COMPARE AND WRITE LENGTH", section="SBC-3 5.2"
            )
        if not b.blocks and (ctx.data_out or ctx.expected_out):
            # NUMBER OF LOGICAL BLOCKS 0 is no error (SBC-3 5.2), but Data-Out with it
            # means the field was cut short (256 does not fit in one byte).
            raise invalid_field_in_cdb(
                13, "NUMBER OF LOGICAL BLOCKS is 0 but Data-Out was sent", section="SBC-3 5.2"
            )
        self._check_writable()
        self._check_range(b.lba, b.blocks)
        if not b.blocks:
            return _GOOD
        bs = self.block_size
        n = b.blocks * bs
        data = self._need_data(ctx, 2 * n)
        current = self.backing.read(b.lba * bs, n)
        verify = data[:n]
        if current != verify:
            raise self._miscompare(self._first_difference(verify, current), "COMPARE AND WRITE")
        self.backing.write(b.lba * bs, data[n:])
        self._fua(cdb)
        return _GOOD


def _key_covers(key: NexusKey, nexus: Nexus) -> bool:
    initiator, rtp = key
    return port_matches(initiator, nexus.initiator_port) and (
        rtp is None or rtp == nexus.relative_target_port
    )
