"""iSNSP, the Internet Storage Name Service protocol (RFC 4171): a sans-IO codec.

Theory of operation
-------------------
An iSNSP *message* travels in one or more *PDUs* (RFC 4171 5, 5.2). A PDU is a
12-byte header (version, function ID, PDU length, flags, transaction ID, sequence ID:
:data:`HEADER`), a payload of ``PDU LENGTH`` bytes and, when the flags say so, an
authentication block that carries its own length (5.5). Decoding runs in two phases,
as hyperframe does: the header gives the length, so :func:`decode_pdu` answers
``NeedMore(n)`` until the PDU is there; then :class:`MessageDecoder` reassembles the
PDUs of one transaction (First/Last PDU flags, sequence IDs from 0) into a payload, and
the payload is parsed by the layout its function declares in :data:`FUNCTIONS`:

- requests from clients: Source attribute, Message Key attributes, Delimiter,
  Operating attributes (5.6);
- SCN and ESI, the requests a server sends: attributes in a fixed order (5.6.5.8,
  5.6.5.13);
- responses: a 4-byte status code, then attributes (5.7), of which SCNRsp and ESIRsp
  carry no Delimiter;
- the Heartbeat, which is not in TLV format (5.6.5.14).

Attributes are TLVs (5.3) kept as their raw value bytes, padding included, so that a
decoded message re-encodes byte for byte; :data:`ATTRIBUTES`, one row per tag of the
RFC's table (6.1), gives each its type and lengths, and :meth:`Attribute.of` /
:meth:`Attribute.decoded` convert typed values. TLV boundaries need not fall on PDU
boundaries (5.3): a message is split by bytes, not by attributes.

Decoding rejects only what cannot be framed or parsed (a truncated TLV, a response
without its status code, PDUs that do not reassemble, an authentication block whose
length is absurd): those raise :class:`ISNSFormatError`, which carries the status code
a server answers with. Everything else (an unknown tag, a length that is not 4-byte
aligned, a wrong sender flag, a missing Delimiter) decodes, and :func:`violations`
lists it; ``strict=True`` turns those into errors. Encoding is strict by default; with
``strict=False`` it writes anything a negative test needs: unknown tags, lengths that
lie (``Attribute.length``, ``PDU.length``), reserved flags, wrong versions. Nothing
here reads a clock, a socket or a random number; every loop is bounded by the bytes
it was given.

Sections are RFC 4171's unless stated otherwise.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias

from iscsi_conformance.errors import ProtocolError

from .pdu import NeedMore

__all__ = [
    "ATTRIBUTES",
    "DELIMITER",
    "FUNCTIONS",
    "HEADER",
    "HEADER_LENGTH",
    "ISNS_PORT",
    "MAX_PAYLOAD",
    "PDU",
    "VERSION",
    "Attribute",
    "AttributeSpec",
    "EntityProtocol",
    "Flag",
    "FunctionId",
    "FunctionSpec",
    "HeaderField",
    "Heartbeat",
    "ISNSFormatError",
    "Message",
    "MessageDecoder",
    "NeedMore",
    "NodeType",
    "ObjectType",
    "PayloadKind",
    "ScnEvent",
    "Sender",
    "Status",
    "Tag",
    "ValueType",
    "Violation",
    "annotate",
    "assemble",
    "attribute_spec",
    "decode_pdu",
    "encode",
    "encode_pdu",
    "function_spec",
    "parse_attributes",
    "parse_payload",
    "port_value",
    "split",
    "violations",
]

VERSION = 0x0001  # 5.1.1: all other values are reserved
HEADER_LENGTH = 12  # section 5, the PDU figure
MAX_PAYLOAD = 0xFFFC  # the largest 4-byte aligned value of the 2-byte PDU LENGTH (5.1.3)
ISNS_PORT = 3205  # the IANA-registered iSNS port (TCP and UDP)
AUTH_BLOCK_MIN = 20  # BSD, length, timestamp, SPI length: the fixed part of 5.5's figure
AUTH_BLOCK_MAX = 0xFFFF  # our bound, so that a lying length cannot make a reader wait forever
_PORT_UDP = 0x00010000  # 6.3.2: "bit 15" in the RFC's MSb-first numbering


# ----------------------------------------------------------------------- wire codes


class FunctionId(enum.IntEnum):
    """iSNSP FUNCTION_ID (RFC 4171 4.1.3 for iSCSI, 4.2.3 for iFCP).

    5.1.2: a set leading bit marks a response. 0x0100-0x01FF and 0x8100-0x81FF are
    vendor specific (5.8); everything else not listed is reserved.
    """

    DEV_ATTR_REG = 0x0001  # 5.6.5.1
    DEV_ATTR_QRY = 0x0002  # 5.6.5.2
    DEV_GET_NEXT = 0x0003  # 5.6.5.3
    DEV_DEREG = 0x0004  # 5.6.5.4
    SCN_REG = 0x0005  # 5.6.5.5
    SCN_DEREG = 0x0006  # 5.6.5.6
    SCN_EVENT = 0x0007  # 5.6.5.7
    SCN = 0x0008  # 5.6.5.8
    DD_REG = 0x0009  # 5.6.5.9
    DD_DEREG = 0x000A  # 5.6.5.10
    DDS_REG = 0x000B  # 5.6.5.11
    DDS_DEREG = 0x000C  # 5.6.5.12
    ESI = 0x000D  # 5.6.5.13
    HEARTBEAT = 0x000E  # 5.6.5.14: no response message
    RQST_DOM_ID = 0x0011  # 5.6.5.15 (iFCP)
    RLSE_DOM_ID = 0x0012  # 5.6.5.16 (iFCP)
    GET_DOM_ID = 0x0013  # 5.6.5.17 (iFCP)
    DEV_ATTR_REG_RSP = 0x8001  # 5.7.5.1
    DEV_ATTR_QRY_RSP = 0x8002  # 5.7.5.2
    DEV_GET_NEXT_RSP = 0x8003  # 5.7.5.3
    DEV_DEREG_RSP = 0x8004  # 5.7.5.4
    SCN_REG_RSP = 0x8005  # 5.7.5.5
    SCN_DEREG_RSP = 0x8006  # 5.7.5.6
    SCN_EVENT_RSP = 0x8007  # 5.7.5.7
    SCN_RSP = 0x8008  # 5.7.5.8
    DD_REG_RSP = 0x8009  # 5.7.5.9
    DD_DEREG_RSP = 0x800A  # 5.7.5.10
    DDS_REG_RSP = 0x800B  # 5.7.5.11
    DDS_DEREG_RSP = 0x800C  # 5.7.5.12
    ESI_RSP = 0x800D  # 5.7.5.13
    RQST_DOM_ID_RSP = 0x8011  # 5.7.5.14 (iFCP)
    RLSE_DOM_ID_RSP = 0x8012  # 5.7.5.15 (iFCP)
    GET_DOM_ID_RSP = 0x8013  # 5.7.5.16 (iFCP; 4.2.3's table misprints it 0x0013)

    @property
    def is_response(self) -> bool:
        """True for responses: the leading bit is set (5.1.2)."""
        return bool(self.value & 0x8000)


class Flag(enum.IntFlag):
    """iSNSP FLAGS (RFC 4171 5.1.4). The RFC numbers the header's bits from 0 (MSb of
    byte 0), so its bit 16 is the flags field's most significant bit; bits 22-31 are
    reserved (:data:`FLAGS_RESERVED`)."""

    CLIENT = 0x8000  # bit 16: sender is the iSNS client
    SERVER = 0x4000  # bit 17: sender is the iSNS server
    AUTH_BLOCK = 0x2000  # bit 18: authentication block present (5.5)
    REPLACE = 0x1000  # bit 19: replace (DevAttrReg only, 5.6.5.1)
    LAST_PDU = 0x0800  # bit 20: last PDU of the message (5.2)
    FIRST_PDU = 0x0400  # bit 21: first PDU of the message (5.2)


FLAGS_RESERVED = 0x03FF  # bits 22-31 (5.1.4)
_PER_PDU_FLAGS = Flag.FIRST_PDU | Flag.LAST_PDU | Flag.AUTH_BLOCK


class Status(enum.IntEnum):
    """Response status codes (RFC 4171 5.4); 4 and 24 and above are reserved."""

    SUCCESSFUL = 0
    UNKNOWN_ERROR = 1
    MESSAGE_FORMAT_ERROR = 2
    INVALID_REGISTRATION = 3
    INVALID_QUERY = 5
    SOURCE_UNKNOWN = 6
    SOURCE_ABSENT = 7
    SOURCE_UNAUTHORIZED = 8
    NO_SUCH_ENTRY = 9
    VERSION_NOT_SUPPORTED = 10
    INTERNAL_ERROR = 11
    BUSY = 12
    OPTION_NOT_UNDERSTOOD = 13
    INVALID_UPDATE = 14
    MESSAGE_NOT_SUPPORTED = 15  # "Message (FUNCTION_ID) Not Supported"
    SCN_EVENT_REJECTED = 16
    SCN_REGISTRATION_REJECTED = 17
    ATTRIBUTE_NOT_IMPLEMENTED = 18
    FC_DOMAIN_ID_NOT_AVAILABLE = 19
    FC_DOMAIN_ID_NOT_ALLOCATED = 20
    ESI_NOT_AVAILABLE = 21
    INVALID_DEREGISTRATION = 22
    REGISTRATION_FEATURE_NOT_SUPPORTED = 23


class Tag(enum.IntEnum):
    """Attribute tags (RFC 4171 6.1, IANA's registry of standard iSNS attributes)."""

    DELIMITER = 0  # 5.6.3
    ENTITY_IDENTIFIER = 1
    ENTITY_PROTOCOL = 2
    MGMT_IP_ADDRESS = 3
    TIMESTAMP = 4
    PROTOCOL_VERSION_RANGE = 5
    REGISTRATION_PERIOD = 6
    ENTITY_INDEX = 7
    ENTITY_NEXT_INDEX = 8
    ENTITY_ISAKMP_PHASE_1 = 11
    ENTITY_CERTIFICATE = 12
    PORTAL_IP_ADDRESS = 16
    PORTAL_TCP_UDP_PORT = 17
    PORTAL_SYMBOLIC_NAME = 18
    ESI_INTERVAL = 19
    ESI_PORT = 20
    PORTAL_INDEX = 22
    SCN_PORT = 23
    PORTAL_NEXT_INDEX = 24
    PORTAL_SECURITY_BITMAP = 27
    PORTAL_ISAKMP_PHASE_1 = 28
    PORTAL_ISAKMP_PHASE_2 = 29
    PORTAL_CERTIFICATE = 31
    ISCSI_NAME = 32
    ISCSI_NODE_TYPE = 33
    ISCSI_ALIAS = 34
    ISCSI_SCN_BITMAP = 35
    ISCSI_NODE_INDEX = 36
    WWNN_TOKEN = 37
    ISCSI_NODE_NEXT_INDEX = 38
    ISCSI_AUTH_METHOD = 42
    PG_ISCSI_NAME = 48
    PG_PORTAL_IP_ADDR = 49
    PG_PORTAL_TCP_UDP_PORT = 50
    PG_TAG = 51
    PG_INDEX = 52
    PG_NEXT_INDEX = 53
    FC_PORT_NAME_WWPN = 64
    PORT_ID = 65
    FC_PORT_TYPE = 66
    SYMBOLIC_PORT_NAME = 67
    FABRIC_PORT_NAME = 68
    HARD_ADDRESS = 69
    PORT_IP_ADDRESS = 70
    CLASS_OF_SERVICE = 71
    FC4_TYPES = 72
    FC4_DESCRIPTOR = 73
    FC4_FEATURES = 74
    IFCP_SCN_BITMAP = 75
    PORT_ROLE = 76
    PERMANENT_PORT_NAME = 77
    FC4_TYPE_CODE = 95
    FC_NODE_NAME_WWNN = 96
    SYMBOLIC_NODE_NAME = 97
    NODE_IP_ADDRESS = 98
    NODE_IPA = 99
    PROXY_ISCSI_NAME = 101
    SWITCH_NAME = 128
    PREFERRED_ID = 129
    ASSIGNED_ID = 130
    VIRTUAL_FABRIC_ID = 131
    SERVER_VENDOR_OUI = 256
    DD_SET_ID = 2049
    DD_SET_SYMBOLIC_NAME = 2050
    DD_SET_STATUS = 2051
    DD_SET_NEXT_ID = 2052
    DD_ID = 2065
    DD_SYMBOLIC_NAME = 2066
    DD_MEMBER_ISCSI_INDEX = 2067
    DD_MEMBER_ISCSI_NAME = 2068
    DD_MEMBER_FC_PORT_NAME = 2069
    DD_MEMBER_PORTAL_INDEX = 2070
    DD_MEMBER_PORTAL_IP_ADDR = 2071
    DD_MEMBER_PORTAL_TCP_UDP_PORT = 2072
    DD_FEATURES = 2078
    DD_NEXT_ID = 2079


class EntityProtocol(enum.IntEnum):
    """Entity Protocol values (RFC 4171 6.2.2)."""

    NO_PROTOCOL = 1
    ISCSI = 2
    IFCP = 3


class NodeType(enum.IntFlag):
    """iSCSI Node Type bits (RFC 4171 6.4.2; bit 31 is the LSb)."""

    TARGET = 0x1  # bit 31
    INITIATOR = 0x2  # bit 30
    CONTROL = 0x4  # bit 29: set on the server only, never by a client


class ScnEvent(enum.IntFlag):
    """iSCSI Node SCN Bitmap bits (RFC 4171 6.4.4; bit 31 is the LSb)."""

    DD_MEMBER_ADDED = 0x01  # bit 31, management SCNs only
    DD_MEMBER_REMOVED = 0x02  # bit 30, management SCNs only
    OBJECT_UPDATED = 0x04  # bit 29
    OBJECT_ADDED = 0x08  # bit 28
    OBJECT_REMOVED = 0x10  # bit 27
    MANAGEMENT = 0x20  # bit 26: management registration/SCN
    TARGET_AND_SELF_ONLY = 0x40  # bit 25
    INITIATOR_AND_SELF_ONLY = 0x80  # bit 24


# ----------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken iSNSP format rule: where, the section, what is wrong, and the status
    code a server answers it with (5.4)."""

    field: str
    section: str
    message: str
    status: int = Status.MESSAGE_FORMAT_ERROR

    def __str__(self) -> str:
        return f"{self.field}: {self.message} [{self.section}]"


class ISNSFormatError(ProtocolError):
    """An iSNSP PDU or message that cannot be decoded or breaks a format rule.

    ``status`` is the status code (RFC 4171 5.4) a server answers with, as an int.
    """

    def __init__(
        self,
        message: str,
        *,
        section: str = "RFC 4171 5",
        status: int = Status.MESSAGE_FORMAT_ERROR,
        level: str = "MUST",
    ) -> None:
        super().__init__(message, section=section, level=level)
        self.status = int(status)

    @classmethod
    def of(cls, violation: Violation) -> ISNSFormatError:
        return cls(
            f"{violation.field}: {violation.message}",
            section=violation.section,
            status=violation.status,
        )


def _sec(section: str) -> str:
    return f"RFC 4171 {section}"


# ----------------------------------------------------------------------- header layout


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One field of the iSNSP PDU header figure (section 5): offset and size in bytes."""

    name: str
    offset: int
    size: int
    label: str
    section: str


HEADER: tuple[HeaderField, ...] = (
    HeaderField("version", 0, 2, "iSNSP VERSION", _sec("5.1.1")),
    HeaderField("function", 2, 2, "FUNCTION ID", _sec("5.1.2")),
    HeaderField("length", 4, 2, "PDU LENGTH", _sec("5.1.3")),
    HeaderField("flags", 6, 2, "FLAGS", _sec("5.1.4")),
    HeaderField("transaction_id", 8, 2, "TRANSACTION ID", _sec("5.1.5")),
    HeaderField("sequence_id", 10, 2, "SEQUENCE ID", _sec("5.1.6")),
)
TLV_HEADER: tuple[HeaderField, ...] = (
    HeaderField("tag", 0, 4, "Attribute Tag", _sec("5.3")),
    HeaderField("length", 4, 4, "Attribute Length", _sec("5.3")),
)


def _compile(fields: tuple[HeaderField, ...]) -> struct.Struct:
    # The figures are contiguous runs of big-endian integers; check that, then pack.
    offset = 0
    for f in fields:
        if f.offset != offset:  # pragma: no cover - a typo in the table
            raise AssertionError(f"{f.name}: offset {f.offset}, expected {offset}")
        offset += f.size
    return struct.Struct(">" + "".join({2: "H", 4: "I"}[f.size] for f in fields))


_HEADER = _compile(HEADER)
_TLV = _compile(TLV_HEADER)
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
if _HEADER.size != HEADER_LENGTH:  # pragma: no cover - a typo in the table
    raise AssertionError("the iSNSP header is 12 bytes")


# ----------------------------------------------------------------------- attributes


class ValueType(enum.Enum):
    """How an attribute's value is written (RFC 4171 6.1 and each attribute's section)."""

    NONE = "none"  # the Delimiter: always zero-length (5.6.3)
    STRING = "string"  # UTF-8, NUL-terminated, padded to 4 bytes (6.1 "Length")
    UINT32 = "uint32"
    UINT64 = "uint64"
    ADDRESS = "address"  # 16 bytes, IPv4 as IPv4-mapped IPv6 (6.3.1)
    PORT = "port"  # port number in the low 16 bits, bit 15 (0x10000) = UDP (6.3.2)
    BYTES = "bytes"  # opaque: ISAKMP payloads, certificates, FC-4 bitmaps


class ObjectType(enum.Enum):
    """The object an attribute describes (RFC 4171 3, 6)."""

    NONE = "none"
    ENTITY = "Network Entity"
    PORTAL = "Portal"
    ISCSI_NODE = "iSCSI Storage Node"
    PORTAL_GROUP = "Portal Group"
    FC_PORT = "FC Port"
    FC_NODE = "FC Node"
    SWITCH = "iFCP switch"
    SERVER = "iSNS server"
    DD_SET = "Discovery Domain Set"
    DD = "Discovery Domain"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """One row of RFC 4171 6.1's attribute table.

    ``min_length``/``max_length`` bound a non-empty value (a zero-length TLV is always
    well formed: queries use it, 5.6.4.1); ``max_length`` None means unbounded.
    ``key``: an object key attribute (5.6.4); ``read_only``: "--" in the Reg Key column
    (the server SHALL refuse registrations of it).
    """

    tag: int
    name: str
    type: ValueType
    min_length: int
    max_length: int | None
    object: ObjectType
    section: str
    key: bool = False
    read_only: bool = False


def _a(
    tag: Tag,
    name: str,
    kind: ValueType,
    length: int | tuple[int, int | None],
    obj: ObjectType,
    section: str,
    *,
    key: bool = False,
    ro: bool = False,
) -> AttributeSpec:
    lo, hi = (length, length) if isinstance(length, int) else length
    return AttributeSpec(int(tag), name, kind, lo, hi, obj, _sec(section), key, ro)


_S, _U4, _U8, _IP, _P, _B = (
    ValueType.STRING, ValueType.UINT32, ValueType.UINT64, ValueType.ADDRESS, ValueType.PORT,
    ValueType.BYTES,
)  # fmt: skip
_E, _PO, _N, _PG = (
    ObjectType.ENTITY,
    ObjectType.PORTAL,
    ObjectType.ISCSI_NODE,
    ObjectType.PORTAL_GROUP,
)
_FP, _FN, _DS, _DD = ObjectType.FC_PORT, ObjectType.FC_NODE, ObjectType.DD_SET, ObjectType.DD
_VAR = (4, None)
_NAME = (4, 224)  # iSCSI names: 223 bytes, NUL and padding included 224 (6.4.1)
_TEXT = (4, 256)

ATTRIBUTES: dict[int, AttributeSpec] = {
    spec.tag: spec
    for spec in [
        _a(Tag.DELIMITER, "Delimiter", ValueType.NONE, 0, ObjectType.NONE, "5.6.3"),
        _a(Tag.ENTITY_IDENTIFIER, "Entity Identifier (EID)", _S, _TEXT, _E, "6.2.1", key=True),
        _a(Tag.ENTITY_PROTOCOL, "Entity Protocol", _U4, 4, _E, "6.2.2"),
        _a(Tag.MGMT_IP_ADDRESS, "Management IP Address", _IP, 16, _E, "6.2.3"),
        _a(Tag.TIMESTAMP, "Timestamp", _U8, 8, _E, "6.2.4", ro=True),
        _a(Tag.PROTOCOL_VERSION_RANGE, "Protocol Version Range", _U4, 4, _E, "6.2.5"),
        _a(Tag.REGISTRATION_PERIOD, "Registration Period", _U4, 4, _E, "6.2.6"),
        _a(Tag.ENTITY_INDEX, "Entity Index", _U4, 4, _E, "6.2.7"),
        _a(Tag.ENTITY_NEXT_INDEX, "Entity Next Index", _U4, 4, _E, "6.2.8", ro=True),
        _a(Tag.ENTITY_ISAKMP_PHASE_1, "Entity ISAKMP Phase-1", _B, _VAR, _E, "6.2.9"),
        _a(Tag.ENTITY_CERTIFICATE, "Entity Certificate", _B, _VAR, _E, "6.2.10"),
        _a(Tag.PORTAL_IP_ADDRESS, "Portal IP Address", _IP, 16, _PO, "6.3.1", key=True),
        _a(Tag.PORTAL_TCP_UDP_PORT, "Portal TCP/UDP Port", _P, 4, _PO, "6.3.2", key=True),
        _a(Tag.PORTAL_SYMBOLIC_NAME, "Portal Symbolic Name", _S, _TEXT, _PO, "6.3.3"),
        _a(Tag.ESI_INTERVAL, "ESI Interval", _U4, 4, _PO, "6.3.4"),
        _a(Tag.ESI_PORT, "ESI Port", _P, 4, _PO, "6.3.5"),
        _a(Tag.PORTAL_INDEX, "Portal Index", _U4, 4, _PO, "6.3.6"),
        _a(Tag.SCN_PORT, "SCN Port", _P, 4, _PO, "6.3.7"),
        _a(Tag.PORTAL_NEXT_INDEX, "Portal Next Index", _U4, 4, _PO, "6.3.8", ro=True),
        _a(Tag.PORTAL_SECURITY_BITMAP, "Portal Security Bitmap", _U4, 4, _PO, "6.3.9"),
        _a(Tag.PORTAL_ISAKMP_PHASE_1, "Portal ISAKMP Phase-1", _B, _VAR, _PO, "6.3.10"),
        _a(Tag.PORTAL_ISAKMP_PHASE_2, "Portal ISAKMP Phase-2", _B, _VAR, _PO, "6.3.11"),
        _a(Tag.PORTAL_CERTIFICATE, "Portal Certificate", _B, _VAR, _PO, "6.3.12"),
        _a(Tag.ISCSI_NAME, "iSCSI Name", _S, _NAME, _N, "6.4.1", key=True),
        _a(Tag.ISCSI_NODE_TYPE, "iSCSI Node Type", _U4, 4, _N, "6.4.2"),
        _a(Tag.ISCSI_ALIAS, "iSCSI Alias", _S, _TEXT, _N, "6.4.3"),
        _a(Tag.ISCSI_SCN_BITMAP, "iSCSI SCN Bitmap", _U4, 4, _N, "6.4.4"),
        _a(Tag.ISCSI_NODE_INDEX, "iSCSI Node Index", _U4, 4, _N, "6.4.5"),
        _a(Tag.WWNN_TOKEN, "WWNN Token", _U8, 8, _N, "6.4.6"),
        _a(Tag.ISCSI_NODE_NEXT_INDEX, "iSCSI Node Next Index", _U4, 4, _N, "6.4.7", ro=True),
        _a(Tag.ISCSI_AUTH_METHOD, "iSCSI AuthMethod", _S, _VAR, _N, "6.4.8"),
        _a(Tag.PG_ISCSI_NAME, "PG iSCSI Name", _S, _NAME, _PG, "6.5.1", key=True),
        _a(Tag.PG_PORTAL_IP_ADDR, "PG Portal IP Addr", _IP, 16, _PG, "6.5.2", key=True),
        _a(Tag.PG_PORTAL_TCP_UDP_PORT, "PG Portal TCP/UDP Port", _P, 4, _PG, "6.5.3", key=True),
        _a(Tag.PG_TAG, "PG Tag (PGT)", _U4, 4, _PG, "6.5.4"),
        _a(Tag.PG_INDEX, "PG Index", _U4, 4, _PG, "6.5.5"),
        _a(Tag.PG_NEXT_INDEX, "PG Next Index", _U4, 4, _PG, "6.5.6", ro=True),
        _a(Tag.FC_PORT_NAME_WWPN, "FC Port Name WWPN", _U8, 8, _FP, "6.6.1", key=True),
        _a(Tag.PORT_ID, "Port ID", _U4, 4, _FP, "6.6.2"),
        _a(Tag.FC_PORT_TYPE, "FC Port Type", _U4, 4, _FP, "6.6.3"),
        _a(Tag.SYMBOLIC_PORT_NAME, "Symbolic Port Name", _S, _TEXT, _FP, "6.6.4"),
        _a(Tag.FABRIC_PORT_NAME, "Fabric Port Name", _U8, 8, _FP, "6.6.5"),
        _a(Tag.HARD_ADDRESS, "Hard Address", _U4, 4, _FP, "6.6.6"),
        _a(Tag.PORT_IP_ADDRESS, "Port IP-Address", _IP, 16, _FP, "6.6.7"),
        _a(Tag.CLASS_OF_SERVICE, "Class of Service", _U4, 4, _FP, "6.6.8"),
        _a(Tag.FC4_TYPES, "FC-4 Types", _B, 32, _FP, "6.6.9"),
        _a(Tag.FC4_DESCRIPTOR, "FC-4 Descriptor", _S, _TEXT, _FP, "6.6.10"),
        _a(Tag.FC4_FEATURES, "FC-4 Features", _B, 128, _FP, "6.6.11"),
        _a(Tag.IFCP_SCN_BITMAP, "iFCP SCN bitmap", _U4, 4, _FP, "6.6.12"),
        _a(Tag.PORT_ROLE, "Port Role", _U4, 4, _FP, "6.6.13"),
        _a(Tag.PERMANENT_PORT_NAME, "Permanent Port Name", _U8, 8, _FP, "6.6.14", ro=True),
        _a(Tag.FC4_TYPE_CODE, "FC-4 Type Code", _U4, 4, ObjectType.OTHER, "6.8.1", ro=True),
        _a(Tag.FC_NODE_NAME_WWNN, "FC Node Name WWNN", _U8, 8, _FN, "6.7.1", key=True),
        _a(Tag.SYMBOLIC_NODE_NAME, "Symbolic Node Name", _S, _TEXT, _FN, "6.7.2"),
        _a(Tag.NODE_IP_ADDRESS, "Node IP-Address", _IP, 16, _FN, "6.7.3"),
        _a(Tag.NODE_IPA, "Node IPA", _B, 8, _FN, "6.7.4"),
        _a(Tag.PROXY_ISCSI_NAME, "Proxy iSCSI Name", _S, _TEXT, _FN, "6.7.5"),
        _a(Tag.SWITCH_NAME, "Switch Name", _U8, 8, ObjectType.SWITCH, "6.8.2"),
        _a(Tag.PREFERRED_ID, "Preferred ID", _U4, 4, ObjectType.SWITCH, "6.8.3.1"),
        _a(Tag.ASSIGNED_ID, "Assigned ID", _U4, 4, ObjectType.SWITCH, "6.8.3.2"),
        _a(Tag.VIRTUAL_FABRIC_ID, "Virtual_Fabric_ID", _S, _TEXT, ObjectType.SWITCH, "6.8.3.3"),
        _a(Tag.SERVER_VENDOR_OUI, "iSNS Server Vendor OUI", _U4, 4, ObjectType.SERVER, "6.9.1",
           ro=True),
        _a(Tag.DD_SET_ID, "DD_Set ID", _U4, 4, _DS, "6.11.1.1", key=True),
        _a(Tag.DD_SET_SYMBOLIC_NAME, "DD_Set Sym Name", _S, _TEXT, _DS, "6.11.1.2"),
        _a(Tag.DD_SET_STATUS, "DD_Set Status", _U4, 4, _DS, "6.11.1.3"),
        _a(Tag.DD_SET_NEXT_ID, "DD_Set_Next_ID", _U4, 4, _DS, "6.11.1.4", ro=True),
        _a(Tag.DD_ID, "DD_ID", _U4, 4, _DD, "6.11.2.1", key=True),
        _a(Tag.DD_SYMBOLIC_NAME, "DD_Symbolic Name", _S, _TEXT, _DD, "6.11.2.2"),
        _a(Tag.DD_MEMBER_ISCSI_INDEX, "DD_Member iSCSI Index", _U4, 4, _DD, "6.11.2.3"),
        _a(Tag.DD_MEMBER_ISCSI_NAME, "DD_Member iSCSI Name", _S, _NAME, _DD, "6.11.2.4"),
        _a(Tag.DD_MEMBER_FC_PORT_NAME, "DD_Member FC Port Name", _U8, 8, _DD, "6.11.2.5"),
        _a(Tag.DD_MEMBER_PORTAL_INDEX, "DD_Member Portal Index", _U4, 4, _DD, "6.11.2.6"),
        _a(Tag.DD_MEMBER_PORTAL_IP_ADDR, "DD_Member Portal IP Addr", _IP, 16, _DD, "6.11.2.7"),
        _a(Tag.DD_MEMBER_PORTAL_TCP_UDP_PORT, "DD_Member Portal TCP/UDP", _P, 4, _DD,
           "6.11.2.8"),
        _a(Tag.DD_FEATURES, "DD_Features", _U4, 4, _DD, "6.11.2.9"),
        _a(Tag.DD_NEXT_ID, "DD_ID Next ID", _U4, 4, _DD, "6.11.2.10", ro=True),
    ]
}  # fmt: skip

# Vendor- and site-specific tag ranges (6.1, 6.10): opaque values whose upper three bytes
# are the vendor's OUI. 6.10.7/6.10.8 swap the DD and DD Set ranges against 6.1's table;
# both name 1025-1536, which is all this codec needs.
VENDOR_TAGS: tuple[tuple[int, int, ObjectType, str], ...] = (
    (257, 384, ObjectType.SERVER, "6.10.1"),
    (385, 512, ObjectType.ENTITY, "6.10.2"),
    (513, 640, ObjectType.PORTAL, "6.10.3"),
    (641, 768, ObjectType.ISCSI_NODE, "6.10.4"),
    (769, 896, ObjectType.FC_PORT, "6.10.5"),
    (897, 1024, ObjectType.FC_NODE, "6.10.6"),
    (1025, 1536, ObjectType.DD, "6.10.7"),
    (1537, 2048, ObjectType.OTHER, "6.10.9"),
)


def attribute_spec(tag: int) -> AttributeSpec | None:
    """The table row of ``tag``; vendor-specific tags get an opaque row; None if reserved."""
    spec = ATTRIBUTES.get(tag)
    if spec is not None:
        return spec
    for lo, hi, obj, section in VENDOR_TAGS:
        if lo <= tag <= hi:
            return AttributeSpec(tag, f"vendor-specific {tag}", _B, 4, None, obj, _sec(section))
    return None


def port_value(port: int, *, udp: bool = False) -> int:
    """A TCP/UDP port attribute's value (6.3.2): the port number, bit 15 set for UDP."""
    return (port & 0xFFFF) | (_PORT_UDP if udp else 0)


AttributeValue: TypeAlias = (
    "str | int | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address | None"
)


def _ipv4_compatible(value: bytes) -> bool:
    # RFC 4291 2.5.5.1's deprecated form; "::" and "::1" are IPv6's own addresses.
    return len(value) == 16 and not any(value[:12]) and int.from_bytes(value[12:], "big") > 1


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


@dataclass(frozen=True, slots=True)
class Attribute:
    """One TLV (RFC 4171 5.3): ``value`` is the wire value, padding included.

    ``length`` is None for the true length; a negative test sets it to make the
    Attribute Length field lie (non-strict encoding only).
    """

    tag: int
    value: bytes = b""
    length: int | None = None

    @classmethod
    def of(cls, tag: int, value: AttributeValue = None) -> Attribute:
        """Build an attribute from a typed value, by the table (6.1). ``None`` is the
        zero-length TLV (queries, 5.6.4.1; a NULL PGT, 6.5.4)."""
        if value is None:
            return cls(int(tag))
        spec = attribute_spec(tag)
        kind = spec.type if spec is not None else ValueType.BYTES
        if kind is ValueType.STRING and isinstance(value, str):
            return cls(int(tag), _pad(value.encode("utf-8") + b"\0"))
        if kind in (ValueType.UINT32, ValueType.PORT) and isinstance(value, int):
            return cls(int(tag), _U32.pack(value))
        if kind is ValueType.UINT64 and isinstance(value, int):
            return cls(int(tag), _U64.pack(value))
        if kind is ValueType.ADDRESS and isinstance(
            value, str | ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            address = ipaddress.ip_address(value)
            if isinstance(address, ipaddress.IPv4Address):
                address = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
            return cls(int(tag), address.packed)
        if isinstance(value, bytes):
            return cls(int(tag), value)
        raise TypeError(f"tag {tag} ({kind.value}) cannot hold {value!r}")

    @property
    def spec(self) -> AttributeSpec | None:
        return attribute_spec(self.tag)

    @property
    def wire_length(self) -> int:
        """The Attribute Length field as written."""
        return len(self.value) if self.length is None else self.length

    def decoded(self) -> AttributeValue:
        """The typed value (by the table), or None for a zero-length TLV.

        Raises :class:`ISNSFormatError` when the value does not fit the type (a string
        that is not UTF-8, an integer of the wrong size).
        """
        if not self.value:
            return None
        spec = self.spec
        kind = spec.type if spec is not None else ValueType.BYTES
        where = spec.section if spec is not None else _sec("6.1")
        if kind is ValueType.STRING:
            try:
                return self.value.rstrip(b"\0").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ISNSFormatError(f"tag {self.tag}: not UTF-8 ({exc})", section=where) from exc
        sizes = {ValueType.UINT32: 4, ValueType.PORT: 4, ValueType.UINT64: 8, ValueType.ADDRESS: 16}
        size = sizes.get(kind)
        if size is not None and len(self.value) != size:
            raise ISNSFormatError(
                f"tag {self.tag}: {kind.value} value of {len(self.value)} bytes", section=where
            )
        if kind is ValueType.ADDRESS:
            v6 = ipaddress.IPv6Address(self.value)
            if _ipv4_compatible(self.value):
                # ::a.b.c.d: read as IPv4, as tolerant receivers do (open-isns writes it)
                return ipaddress.IPv4Address(self.value[12:])
            return v6.ipv4_mapped or v6
        if kind in (ValueType.UINT32, ValueType.PORT, ValueType.UINT64):
            return int.from_bytes(self.value, "big")
        return self.value

    def port(self) -> tuple[int, bool]:
        """(port number, is UDP) of a TCP/UDP port attribute (6.3.2)."""
        value = self.decoded()
        if not isinstance(value, int):
            raise ISNSFormatError(f"tag {self.tag} is not a port value", section=_sec("6.3.2"))
        return value & 0xFFFF, bool(value & _PORT_UDP)


DELIMITER = Attribute(Tag.DELIMITER)


def attribute_violations(attr: Attribute, where: str = "") -> list[Violation]:
    """Format rules one attribute breaks (5.3, 5.3.1, 6.1 and the attribute's section)."""
    name = where or f"tag {attr.tag}"
    out: list[Violation] = []
    if not 0 <= attr.tag <= 0xFFFFFFFF:
        return [Violation(name, _sec("5.3"), f"tag {attr.tag} does not fit 4 bytes")]
    if attr.length is not None and attr.length != len(attr.value):
        out.append(
            Violation(
                name,
                _sec("5.3"),
                f"Attribute Length {attr.length}, value has {len(attr.value)} bytes",
            )
        )
    spec = attr.spec
    if spec is None:
        out.append(Violation(name, _sec("6.1"), f"tag {attr.tag} is reserved"))
        return out
    size = len(attr.value)
    if size % 4:
        out.append(Violation(name, _sec("5.3.1"), f"length {size} is not a multiple of 4"))
    if size == 0:
        return out  # the zero-length TLV (5.3) is always well formed
    if spec.type is ValueType.NONE:
        out.append(Violation(name, spec.section, f"the Delimiter has a {size}-byte value"))
    elif size < spec.min_length or (spec.max_length is not None and size > spec.max_length):
        bound = (
            f"{spec.min_length}-{spec.max_length}" if spec.max_length else f">= {spec.min_length}"
        )
        out.append(Violation(name, spec.section, f"{spec.name}: length {size}, must be {bound}"))
    elif spec.type is ValueType.ADDRESS and _ipv4_compatible(attr.value):
        out.append(
            Violation(
                name,
                spec.section,
                f"{spec.name}: IPv4 written IPv4-compatible "
                "(::a.b.c.d), not IPv4-mapped (::ffff:a.b.c.d)",
            )
        )
    elif spec.type is ValueType.STRING:
        if b"\0" not in attr.value:
            out.append(Violation(name, _sec("6.1"), f"{spec.name} is not NUL-terminated"))
        elif (
            attr.value.rstrip(b"\0").find(b"\0") >= 0
            or len(attr.value) - len(attr.value.rstrip(b"\0")) > 4
        ):
            out.append(Violation(name, _sec("5.3.1"), f"{spec.name}: bytes after its NUL"))
        else:
            try:
                attr.value.rstrip(b"\0").decode("utf-8")
            except UnicodeDecodeError:
                out.append(Violation(name, spec.section, f"{spec.name} is not UTF-8"))
    return out


def parse_attributes(data: bytes | memoryview) -> tuple[Attribute, ...]:
    """Split a TLV list (5.3). Raises :class:`ISNSFormatError` when a TLV runs past the end."""
    out: list[Attribute] = []
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < _TLV.size:
            raise ISNSFormatError(
                f"{end - pos} trailing bytes at offset {pos} cannot hold a TLV header",
                section=_sec("5.3"),
            )
        tag, length = _TLV.unpack_from(view, pos)
        start = pos + _TLV.size
        if length > end - start:
            raise ISNSFormatError(
                f"tag {tag} at offset {pos}: Attribute Length {length} runs past the payload "
                f"({end - start} bytes left)",
                section=_sec("5.3"),
            )
        out.append(Attribute(tag, bytes(view[start : start + length])))
        pos = start + length
    return tuple(out)


def _encode_attributes(attrs: Iterable[Attribute]) -> bytes:
    return b"".join(
        _TLV.pack(a.tag & 0xFFFFFFFF, a.wire_length & 0xFFFFFFFF) + a.value for a in attrs
    )


# ----------------------------------------------------------------------- functions


class Sender(enum.Enum):
    """Who sends a message (5.1.4's first two flags)."""

    CLIENT = Flag.CLIENT
    SERVER = Flag.SERVER


class PayloadKind(enum.Enum):
    """The payload layouts of RFC 4171 5.6 and 5.7."""

    REQUEST = "source, message key, delimiter, operating attributes (5.6)"
    NOTIFICATION = "attributes in a fixed order, no source, no delimiter (5.6.5.8, 5.6.5.13)"
    HEARTBEAT = "not TLV (5.6.5.14)"
    RESPONSE = "status code, message key, delimiter, operating attributes (5.7)"
    RESPONSE_ATTRIBUTES = "status code, then attributes, no delimiter (5.7.5.8, 5.7.5.13)"


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One iSNSP message type: its abbreviation, section, sender and payload layout.

    ``leading``: the tags the payload must start with, in order, each a set of allowed
    tags (5.6.5.8, 5.6.5.13, 5.7.5.8, 5.7.5.13); ``response``: the FUNCTION_ID of the
    answer (None: there is none).
    """

    function: FunctionId
    abbreviation: str
    section: str
    sender: Sender
    payload: PayloadKind
    response: FunctionId | None = None
    leading: tuple[frozenset[int], ...] = ()
    ifcp: bool = False


_C, _SV = Sender.CLIENT, Sender.SERVER
_REQ, _RSP = PayloadKind.REQUEST, PayloadKind.RESPONSE
_F = FunctionId
_NODE_ID = frozenset({Tag.ISCSI_NAME, Tag.FC_PORT_NAME_WWPN})  # 5.6.1, 5.6.5.8
_ESI_ATTRS = (
    frozenset({Tag.TIMESTAMP}),
    frozenset({Tag.ENTITY_IDENTIFIER}),
    frozenset({Tag.PORTAL_IP_ADDRESS}),
    frozenset({Tag.PORTAL_TCP_UDP_PORT}),
)
_SCN_ATTRS = (
    _NODE_ID,
    frozenset({Tag.TIMESTAMP}),
    frozenset({Tag.ISCSI_SCN_BITMAP, Tag.IFCP_SCN_BITMAP}),
)


def _pair(
    request: FunctionId,
    response: FunctionId,
    abbr: str,
    section: str,
    rsp_section: str,
    sender: Sender = _C,
    payload: PayloadKind = _REQ,
    rsp_payload: PayloadKind = _RSP,
    leading: tuple[frozenset[int], ...] = (),
    rsp_leading: tuple[frozenset[int], ...] = (),
    ifcp: bool = False,
) -> list[FunctionSpec]:
    answerer = _SV if sender is _C else _C
    return [
        FunctionSpec(request, abbr, _sec(section), sender, payload, response, leading, ifcp),
        FunctionSpec(
            response,
            abbr + "Rsp",
            _sec(rsp_section),
            answerer,
            rsp_payload,
            None,
            rsp_leading,
            ifcp,
        ),
    ]


FUNCTIONS: dict[int, FunctionSpec] = {
    spec.function: spec
    for spec in [
        *_pair(_F.DEV_ATTR_REG, _F.DEV_ATTR_REG_RSP, "DevAttrReg", "5.6.5.1", "5.7.5.1"),
        *_pair(_F.DEV_ATTR_QRY, _F.DEV_ATTR_QRY_RSP, "DevAttrQry", "5.6.5.2", "5.7.5.2"),
        *_pair(_F.DEV_GET_NEXT, _F.DEV_GET_NEXT_RSP, "DevGetNext", "5.6.5.3", "5.7.5.3"),
        *_pair(_F.DEV_DEREG, _F.DEV_DEREG_RSP, "DevDereg", "5.6.5.4", "5.7.5.4"),
        *_pair(_F.SCN_REG, _F.SCN_REG_RSP, "SCNReg", "5.6.5.5", "5.7.5.5"),
        *_pair(_F.SCN_DEREG, _F.SCN_DEREG_RSP, "SCNDereg", "5.6.5.6", "5.7.5.6"),
        *_pair(_F.SCN_EVENT, _F.SCN_EVENT_RSP, "SCNEvent", "5.6.5.7", "5.7.5.7"),
        *_pair(_F.SCN, _F.SCN_RSP, "SCN", "5.6.5.8", "5.7.5.8", _SV, PayloadKind.NOTIFICATION,
               PayloadKind.RESPONSE_ATTRIBUTES, _SCN_ATTRS, (_NODE_ID,)),
        *_pair(_F.DD_REG, _F.DD_REG_RSP, "DDReg", "5.6.5.9", "5.7.5.9"),
        *_pair(_F.DD_DEREG, _F.DD_DEREG_RSP, "DDDereg", "5.6.5.10", "5.7.5.10"),
        *_pair(_F.DDS_REG, _F.DDS_REG_RSP, "DDSReg", "5.6.5.11", "5.7.5.11"),
        *_pair(_F.DDS_DEREG, _F.DDS_DEREG_RSP, "DDSDereg", "5.6.5.12", "5.7.5.12"),
        *_pair(_F.ESI, _F.ESI_RSP, "ESI", "5.6.5.13", "5.7.5.13", _SV, PayloadKind.NOTIFICATION,
               PayloadKind.RESPONSE_ATTRIBUTES, _ESI_ATTRS, _ESI_ATTRS),
        FunctionSpec(_F.HEARTBEAT, "Heartbeat", _sec("5.6.5.14"), _SV, PayloadKind.HEARTBEAT),
        *_pair(_F.RQST_DOM_ID, _F.RQST_DOM_ID_RSP, "RqstDomId", "5.6.5.15", "5.7.5.14",
               ifcp=True),
        *_pair(_F.RLSE_DOM_ID, _F.RLSE_DOM_ID_RSP, "RlseDomId", "5.6.5.16", "5.7.5.15",
               ifcp=True),
        *_pair(_F.GET_DOM_ID, _F.GET_DOM_ID_RSP, "GetDomId", "5.6.5.17", "5.7.5.16", ifcp=True),
    ]
}  # fmt: skip


def function_spec(function: int) -> FunctionSpec | None:
    """The message type of ``function``; None for vendor-specific and reserved IDs."""
    return FUNCTIONS.get(function)


def _is_vendor_function(function: int) -> bool:
    return 0x0100 <= function <= 0x01FF or 0x8100 <= function <= 0x81FF  # 5.8


# ----------------------------------------------------------------------- PDUs


@dataclass(frozen=True, slots=True)
class PDU:
    """One iSNSP PDU (RFC 4171 5): header fields, payload, authentication block.

    ``length`` None writes the true PDU LENGTH; a negative test sets it to lie
    (non-strict encoding only). ``auth_block`` is the whole block of 5.5, opaque.
    """

    function: int
    payload: bytes = b""
    flags: int = Flag.FIRST_PDU | Flag.LAST_PDU
    transaction_id: int = 0
    sequence_id: int = 0
    version: int = VERSION
    auth_block: bytes = b""
    length: int | None = None

    @property
    def wire_length(self) -> int:
        return len(self.payload) if self.length is None else self.length


def pdu_violations(pdu: PDU) -> list[Violation]:
    """Header rules a PDU breaks (5.1, 5.5)."""
    out: list[Violation] = []
    if pdu.version != VERSION:
        out.append(
            Violation(
                "version",
                _sec("5.1.1"),
                f"iSNSP version {pdu.version:#06x}",
                Status.VERSION_NOT_SUPPORTED,
            )
        )
    if function_spec(pdu.function) is None and not _is_vendor_function(pdu.function):
        out.append(
            Violation(
                "function",
                _sec("4.1.3"),
                f"FUNCTION_ID {pdu.function:#06x} is reserved",
                Status.MESSAGE_NOT_SUPPORTED,
            )
        )
    if len(pdu.payload) > 0xFFFF:
        out.append(
            Violation(
                "length",
                _sec("5.1.3"),
                f"payload of {len(pdu.payload)} bytes does not fit the 2-byte PDU LENGTH",
            )
        )
    elif pdu.length is not None and pdu.length != len(pdu.payload):
        out.append(
            Violation(
                "length",
                _sec("5.1.3"),
                f"PDU LENGTH {pdu.length}, payload has {len(pdu.payload)} bytes",
            )
        )
    if len(pdu.payload) % 4:
        out.append(
            Violation(
                "length", _sec("5.1.3"), f"PDU LENGTH {len(pdu.payload)} is not 4-byte aligned"
            )
        )
    if pdu.flags & FLAGS_RESERVED or not 0 <= pdu.flags <= 0xFFFF:
        out.append(Violation("flags", _sec("5.1.4"), f"reserved flag bits set ({pdu.flags:#06x})"))
    sender = pdu.flags & (Flag.CLIENT | Flag.SERVER)
    if sender in (0, Flag.CLIENT | Flag.SERVER):
        out.append(
            Violation(
                "flags",
                _sec("5.1.4"),
                f"exactly one of the client and server flags must be set ({pdu.flags:#06x})",
            )
        )
    if bool(pdu.flags & Flag.AUTH_BLOCK) != bool(pdu.auth_block):
        out.append(
            Violation("flags", _sec("5.5"), "the authentication block flag and the block disagree")
        )
    elif pdu.auth_block and (
        len(pdu.auth_block) < AUTH_BLOCK_MIN
        or _U32.unpack_from(pdu.auth_block, 4)[0] != len(pdu.auth_block)
    ):
        out.append(
            Violation(
                "auth_block", _sec("5.5"), "AUTHENTICATION BLOCK LENGTH does not match the block"
            )
        )
    for name in ("transaction_id", "sequence_id"):
        if not 0 <= getattr(pdu, name) <= 0xFFFF:
            out.append(Violation(name, _sec("5.1"), f"{name} does not fit 2 bytes"))
    return out


def encode_pdu(pdu: PDU, *, strict: bool = True) -> bytes:
    """The PDU's bytes. ``strict`` raises on :func:`pdu_violations`; otherwise fields are
    written as given (masked to their widths), lying lengths included."""
    if strict:
        problems = pdu_violations(pdu)
        if problems:
            raise ISNSFormatError.of(problems[0])
    header = _HEADER.pack(
        pdu.version & 0xFFFF, pdu.function & 0xFFFF, pdu.wire_length & 0xFFFF,
        pdu.flags & 0xFFFF, pdu.transaction_id & 0xFFFF, pdu.sequence_id & 0xFFFF,
    )  # fmt: skip
    return header + pdu.payload + pdu.auth_block


def decode_pdu(data: bytes | bytearray | memoryview) -> tuple[PDU, int] | NeedMore:
    """The first PDU in ``data`` and the bytes it used, or ``NeedMore``.

    Never rejects a header field (see :func:`pdu_violations`); raises
    :class:`ISNSFormatError` only for an authentication block whose length cannot be
    right, since nothing after it could be framed.
    """
    view = memoryview(data)
    if len(view) < HEADER_LENGTH:
        return NeedMore(HEADER_LENGTH - len(view))
    version, function, length, flags, xid, seq = _HEADER.unpack_from(view, 0)
    end = HEADER_LENGTH + length
    auth = 0
    if flags & Flag.AUTH_BLOCK:
        if len(view) < end + 8:
            return NeedMore(end + 8 - len(view))
        auth = _U32.unpack_from(view, end + 4)[0]
        if not AUTH_BLOCK_MIN <= auth <= AUTH_BLOCK_MAX:
            raise ISNSFormatError(
                f"AUTHENTICATION BLOCK LENGTH {auth} (must be {AUTH_BLOCK_MIN}-{AUTH_BLOCK_MAX})",
                section=_sec("5.5"),
            )
    if len(view) < end + auth:
        return NeedMore(end + auth - len(view))
    pdu = PDU(
        function,
        bytes(view[HEADER_LENGTH:end]),
        flags,
        xid,
        seq,
        version,
        bytes(view[end : end + auth]),
    )
    return pdu, end + auth


# ----------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Message:
    """A whole iSNSP message (RFC 4171 5.2), its PDUs reassembled.

    ``flags`` holds the per-message flags (client/server, replace); the encoder sets
    First/Last PDU per PDU. ``status`` is the response status code (5.4), None in
    requests. ``attributes`` are the TLVs in order, Delimiter included; ``body`` is the
    payload of a message that is not in TLV format (the Heartbeat, unknown functions).
    """

    function: int
    transaction_id: int = 0
    flags: int = Flag.CLIENT
    status: int | None = None
    attributes: tuple[Attribute, ...] = ()
    body: bytes = b""
    version: int = VERSION

    @property
    def spec(self) -> FunctionSpec | None:
        return function_spec(self.function)

    @property
    def is_response(self) -> bool:
        return bool(self.function & 0x8000)

    def _split(self) -> tuple[tuple[Attribute, ...], tuple[Attribute, ...], tuple[Attribute, ...]]:
        spec = self.spec
        attrs = self.attributes
        if spec is None or spec.payload in (
            PayloadKind.NOTIFICATION,
            PayloadKind.RESPONSE_ATTRIBUTES,
        ):
            return (), (), attrs
        source: tuple[Attribute, ...] = ()
        if spec.payload is PayloadKind.REQUEST and attrs and attrs[0].tag != Tag.DELIMITER:
            source, attrs = attrs[:1], attrs[1:]
        for i, a in enumerate(attrs):
            if a.tag == Tag.DELIMITER:
                return source, attrs[:i], attrs[i + 1 :]
        return source, (), attrs

    @property
    def source(self) -> Attribute | None:
        """The Source attribute of a client's request (5.6.1)."""
        src = self._split()[0]
        return src[0] if src else None

    @property
    def key_attributes(self) -> tuple[Attribute, ...]:
        """The Message Key attributes (5.6.2, 5.7.2): before the first Delimiter."""
        return self._split()[1]

    @property
    def operating_attributes(self) -> tuple[Attribute, ...]:
        """The Operating attributes (5.6.4, 5.7.4): after the Delimiter; all attributes of
        a message without one (SCN, ESI, their responses)."""
        return self._split()[2]

    def first(self, tag: int) -> Attribute | None:
        """The first attribute with ``tag``."""
        return next((a for a in self.attributes if a.tag == tag), None)

    def response(
        self, status: int = Status.SUCCESSFUL, attributes: Iterable[Attribute] = ()
    ) -> Message:
        """The response to this request: same TRANSACTION ID (5.1.5), the other sender."""
        spec = self.spec
        function = spec.response if spec is not None and spec.response else self.function | 0x8000
        sender = Flag.SERVER if self.flags & Flag.CLIENT else Flag.CLIENT
        return Message(
            int(function), self.transaction_id, int(sender), int(status), tuple(attributes)
        )

    @classmethod
    def request(
        cls,
        function: int,
        *,
        source: Attribute | None = None,
        keys: Iterable[Attribute] = (),
        operating: Iterable[Attribute] = (),
        transaction_id: int = 0,
        replace: bool = False,
    ) -> Message:
        """A client's request laid out as 5.6 says: Source, keys, Delimiter, operating."""
        attrs = ([source] if source is not None else []) + [*keys, DELIMITER, *operating]
        flags = Flag.CLIENT | (Flag.REPLACE if replace else 0)
        return cls(int(function), transaction_id, int(flags), None, tuple(attrs))


def payload_of(msg: Message) -> bytes:
    """The reassembled payload of ``msg`` (status code, TLVs, or its body)."""
    status = b"" if msg.status is None else _U32.pack(msg.status & 0xFFFFFFFF)
    return status + _encode_attributes(msg.attributes) + msg.body


def parse_payload(
    function: int, payload: bytes | memoryview
) -> tuple[int | None, tuple[Attribute, ...], bytes]:
    """(status, attributes, body) of a message payload, by its function's layout.

    Raises :class:`ISNSFormatError` when a response has no status code or a TLV runs
    past the end.
    """
    spec = function_spec(function)
    data = memoryview(payload)
    if spec is None or spec.payload is PayloadKind.HEARTBEAT:
        return None, (), bytes(data)
    status = None
    if spec.payload in (PayloadKind.RESPONSE, PayloadKind.RESPONSE_ATTRIBUTES):
        if len(data) < 4:
            raise ISNSFormatError(
                f"a {spec.abbreviation} without its 4-byte status code", section=_sec("5.4")
            )
        status, data = _U32.unpack_from(data, 0)[0], data[4:]
    return status, parse_attributes(data), b""


def violations(item: Message | PDU) -> list[Violation]:
    """Format rules a message (or one PDU) breaks; empty when it is well formed."""
    if isinstance(item, PDU):
        return pdu_violations(item)
    msg = item
    spec = msg.spec
    out = pdu_violations(
        PDU(
            msg.function,
            b"",
            int(msg.flags) & ~_PER_PDU_FLAGS | Flag.FIRST_PDU | Flag.LAST_PDU,
            msg.transaction_id,
            0,
            msg.version,
        )
    )
    if len(payload_of(msg)) % 4:
        out.append(Violation("length", _sec("5.1.3"), "the payload is not 4-byte aligned"))
    if spec is None:
        return out
    name = spec.abbreviation
    if not msg.flags & spec.sender.value:
        out.append(
            Violation(
                "flags",
                _sec("5.1.4"),
                f"{name} is sent by the {spec.sender.name.lower()}, its flags say otherwise",
            )
        )
    responds = spec.payload in (PayloadKind.RESPONSE, PayloadKind.RESPONSE_ATTRIBUTES)
    if responds and msg.status is None:
        out.append(Violation("status", _sec("5.4"), f"{name} needs a status code"))
    if not responds and msg.status is not None:
        out.append(Violation("status", _sec("5.4"), f"{name} is not a response"))
    if msg.status is not None and msg.status not in Status._value2member_map_:
        out.append(Violation("status", _sec("5.4"), f"status code {msg.status} is reserved"))
    if spec.payload is PayloadKind.HEARTBEAT:
        try:
            Heartbeat.decode(msg.body)
        except ISNSFormatError as exc:
            out.append(Violation("body", exc.section, exc.message))
        if msg.attributes:
            out.append(Violation("attributes", spec.section, "the Heartbeat is not TLV"))
        return out
    if msg.body:
        out.append(Violation("body", spec.section, f"{name} carries TLV attributes only"))
    for i, a in enumerate(msg.attributes):
        out.extend(attribute_violations(a, f"attribute {i} (tag {a.tag})"))
    delimiters = sum(1 for a in msg.attributes if a.tag == Tag.DELIMITER)
    if spec.payload is PayloadKind.REQUEST:
        src = msg.attributes[0] if msg.attributes else None
        if src is None or src.tag == Tag.DELIMITER:
            out.append(Violation("source", _sec("5.6.1"), f"{name} has no Source attribute"))
        elif not spec.ifcp and src.tag not in _NODE_ID:
            out.append(
                Violation(
                    "source",
                    _sec("5.6.1"),
                    f"tag {src.tag} is not a valid "
                    "Source attribute (iSCSI Name or FC Port Name WWPN)",
                )
            )
        if delimiters != 1:
            out.append(
                Violation(
                    "delimiter", _sec("5.6.3"), f"{name} needs one Delimiter, has {delimiters}"
                )
            )
    elif spec.payload is PayloadKind.RESPONSE:
        if delimiters > 1:
            out.append(Violation("delimiter", _sec("5.7.3"), f"{delimiters} Delimiters"))
    elif delimiters:
        out.append(Violation("delimiter", spec.section, f"{name} has no Delimiter"))
    if spec.leading and not (responds and msg.status):
        tags = [a.tag for a in msg.attributes]
        for i, allowed in enumerate(spec.leading):
            if i >= len(tags) or tags[i] not in allowed:
                want = "/".join(str(int(t)) for t in sorted(allowed))
                got = tags[i] if i < len(tags) else "nothing"
                out.append(
                    Violation(
                        f"attribute {i}", spec.section, f"{name} needs tag {want} here, has {got}"
                    )
                )
                break
    return out


def split(msg: Message, *, max_payload: int = MAX_PAYLOAD, strict: bool = True) -> list[PDU]:
    """The PDUs that carry ``msg`` (5.2): its payload cut every ``max_payload`` bytes
    (TLVs may straddle PDUs, 5.3), First PDU on the first, Last PDU on the last,
    sequence IDs from 0 (5.1.6). An empty payload still takes one PDU."""
    if strict:
        problems = violations(msg)
        if problems:
            raise ISNSFormatError.of(problems[0])
        if max_payload <= 0 or max_payload % 4 or max_payload > MAX_PAYLOAD:
            raise ValueError(f"max_payload {max_payload}: 4-byte aligned, at most {MAX_PAYLOAD}")
    step = max(1, max_payload)
    payload = payload_of(msg)
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    base = int(msg.flags) & ~(Flag.FIRST_PDU | Flag.LAST_PDU)
    pdus = []
    for n, chunk in enumerate(chunks):
        flags = base | (Flag.FIRST_PDU if n == 0 else 0)
        flags |= Flag.LAST_PDU if n == len(chunks) - 1 else 0
        pdus.append(PDU(msg.function, chunk, flags, msg.transaction_id, n, msg.version))
    return pdus


def encode(item: Message | PDU, *, max_payload: int = MAX_PAYLOAD, strict: bool = True) -> bytes:
    """The bytes of a PDU, or of all the PDUs of a message."""
    if isinstance(item, PDU):
        return encode_pdu(item, strict=strict)
    return b"".join(
        encode_pdu(p, strict=strict) for p in split(item, max_payload=max_payload, strict=strict)
    )


def assemble(pdus: Sequence[PDU], *, strict: bool = False) -> Message:
    """The message carried by ``pdus`` (5.2): checks First/Last PDU, one function and
    transaction, sequence IDs 0, 1, 2... (5.1.6), then parses the payload."""
    if not pdus:
        raise ISNSFormatError("no PDU", section=_sec("5.2"))
    first = pdus[0]
    for n, p in enumerate(pdus):
        if p.function != first.function or p.transaction_id != first.transaction_id:
            raise ISNSFormatError(
                f"PDU {n}: function {p.function:#06x} / transaction {p.transaction_id} differ "
                f"from the first PDU's {first.function:#06x} / {first.transaction_id}",
                section=_sec("5.2"),
            )
        if p.sequence_id != n:
            raise ISNSFormatError(
                f"PDU {n} has SEQUENCE ID {p.sequence_id}, expected {n}", section=_sec("5.1.6")
            )
        if bool(p.flags & Flag.FIRST_PDU) != (n == 0):
            raise ISNSFormatError(
                f"PDU {n}: First PDU flag {'missing' if n == 0 else 'again'}", section=_sec("5.2")
            )
        if bool(p.flags & Flag.LAST_PDU) != (n == len(pdus) - 1):
            raise ISNSFormatError(
                f"PDU {n}: Last PDU flag where the message goes on"
                if n < len(pdus) - 1
                else "the last PDU lacks the Last PDU flag",
                section=_sec("5.2"),
            )
    payload = b"".join(p.payload for p in pdus)
    status, attrs, body = parse_payload(first.function, payload)
    flags = first.flags & ~_PER_PDU_FLAGS
    msg = Message(first.function, first.transaction_id, flags, status, attrs, body, first.version)
    if strict:
        problems = [v for p in pdus for v in pdu_violations(p)] + violations(msg)
        if problems:
            raise ISNSFormatError.of(problems[0])
    return msg


class MessageDecoder:
    """Bytes in, whole messages out, for one TCP connection (RFC 4171 5.2).

    Feed it what the socket gave (any split, down to single bytes); take messages with
    :meth:`next_message` (None: need more bytes) or by iterating. PDUs of different
    transactions may interleave; each transaction's PDUs are collected until its Last
    PDU. Bounds (``max_message`` bytes per message, ``max_pending`` unfinished
    transactions) keep a peer from making it hold unbounded memory. iSNSP has no marker
    to resynchronise on, so after an :class:`ISNSFormatError` the decoder is dead: every
    later call raises the same error, and the caller answers or closes.
    """

    def __init__(
        self, *, strict: bool = False, max_message: int = 1 << 20, max_pending: int = 64
    ) -> None:
        self.strict = strict
        self.max_message = max_message
        self.max_pending = max_pending
        self._buffer = bytearray()
        self._pending: dict[int, list[PDU]] = {}
        self._sizes: dict[int, int] = {}
        self.error: ISNSFormatError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a whole PDU."""
        return len(self._buffer)

    @property
    def pending(self) -> int:
        """Transactions whose Last PDU has not arrived."""
        return len(self._pending)

    def next_pdu(self) -> PDU | None:
        """The next whole PDU (no reassembly), or None."""
        if self.error is not None:
            raise self.error
        try:
            result = decode_pdu(self._buffer)
        except ISNSFormatError as exc:
            self.error = exc
            raise
        if isinstance(result, NeedMore):
            return None
        pdu, used = result
        del self._buffer[:used]
        return pdu

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes arrive."""
        while True:
            pdu = self.next_pdu()
            if pdu is None:
                return None
            try:
                msg = self._add(pdu)
            except ISNSFormatError as exc:
                self.error = exc
                raise
            if msg is not None:
                return msg

    def _add(self, pdu: PDU) -> Message | None:
        xid = pdu.transaction_id
        chain = self._pending.get(xid)
        if pdu.flags & Flag.FIRST_PDU:
            if chain is not None:
                raise ISNSFormatError(
                    f"transaction {xid}: a First PDU while one is being reassembled",
                    section=_sec("5.2"),
                )
            if pdu.flags & Flag.LAST_PDU:
                return assemble([pdu], strict=self.strict)
            if len(self._pending) >= self.max_pending:
                raise ISNSFormatError(
                    f"more than {self.max_pending} unfinished messages",
                    section=_sec("5.2"),
                    status=Status.BUSY,
                )
            self._pending[xid], self._sizes[xid] = [pdu], len(pdu.payload)
            self._check(xid)
            return None
        if chain is None:
            raise ISNSFormatError(
                f"transaction {xid}: PDU {pdu.sequence_id} without a First PDU", section=_sec("5.2")
            )
        chain.append(pdu)
        self._sizes[xid] += len(pdu.payload)
        self._check(xid)
        if not pdu.flags & Flag.LAST_PDU:
            return None
        del self._pending[xid], self._sizes[xid]
        return assemble(chain, strict=self.strict)

    def _check(self, xid: int) -> None:
        chain = self._pending[xid]
        last = chain[-1]
        if last.sequence_id != len(chain) - 1 or last.function != chain[0].function:
            assemble([*chain, replace(last, flags=last.flags | Flag.LAST_PDU)])  # raises
        if self._sizes[xid] > self.max_message:
            raise ISNSFormatError(
                f"transaction {xid}: message longer than {self.max_message} bytes",
                section=_sec("5.2"),
                status=Status.BUSY,
            )

    def __iter__(self) -> Iterator[Message]:
        while (msg := self.next_message()) is not None:
            yield msg


# ----------------------------------------------------------------------- heartbeat


_HB = struct.Struct(">16sHHIIHH")  # the fixed part of 5.6.5.14's figure: 32 bytes
_HB_BACKUP = struct.Struct(">16sHH")  # one backup server: 20 bytes


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The Name Service Heartbeat payload (RFC 4171 5.6.5.14), not in TLV format.

    Addresses are 16 bytes (IPv4-mapped for IPv4); ``backups`` are (address, TCP port,
    UDP port); ``vendor`` is whatever follows the list.
    """

    address: bytes = bytes(16)
    tcp_port: int = ISNS_PORT
    udp_port: int = 0
    interval: int = 0
    counter: int = 0
    reserved: int = 0
    backups: tuple[tuple[bytes, int, int], ...] = ()
    vendor: bytes = b""

    def encode(self) -> bytes:
        head = _HB.pack(
            self.address,
            self.tcp_port,
            self.udp_port,
            self.interval,
            self.counter,
            self.reserved,
            len(self.backups),
        )
        return head + b"".join(_HB_BACKUP.pack(*b) for b in self.backups) + self.vendor

    @classmethod
    def decode(cls, body: bytes) -> Heartbeat:
        if len(body) < _HB.size:
            raise ISNSFormatError(
                f"a Heartbeat of {len(body)} bytes, at least {_HB.size}", section=_sec("5.6.5.14")
            )
        address, tcp, udp, interval, counter, reserved, count = _HB.unpack_from(body, 0)
        end = _HB.size + count * _HB_BACKUP.size
        if len(body) < end:
            raise ISNSFormatError(
                f"{count} backup servers do not fit {len(body)} bytes", section=_sec("5.6.5.14")
            )
        backups = tuple(
            _HB_BACKUP.unpack_from(body, _HB.size + i * _HB_BACKUP.size) for i in range(count)
        )
        return cls(address, tcp, udp, interval, counter, reserved, backups, bytes(body[end:]))


# ----------------------------------------------------------------------- hex dumps


def annotate(data: bytes) -> list[tuple[int, int, str, int]]:
    """Annotate one PDU for a hex dump: ``(offset, length, name, value)`` for each header
    field and each whole TLV of the payload (tag, length, then the value as an int);
    a response's status code is ``status``. Stops quietly at what does not parse."""
    out: list[tuple[int, int, str, int]] = []
    if len(data) < HEADER_LENGTH:
        return out
    values = _HEADER.unpack_from(data, 0)
    out.extend((f.offset, f.size, f.name, v) for f, v in zip(HEADER, values, strict=True))
    function, length = values[1], values[2]
    payload = data[HEADER_LENGTH : HEADER_LENGTH + length]
    pos = 0
    spec = function_spec(function)
    if spec is not None and spec.payload in (PayloadKind.RESPONSE, PayloadKind.RESPONSE_ATTRIBUTES):
        if len(payload) < 4:
            return out
        out.append((HEADER_LENGTH, 4, "status", _U32.unpack_from(payload, 0)[0]))
        pos = 4
    if spec is None or spec.payload is PayloadKind.HEARTBEAT:
        return out
    while pos + 8 <= len(payload):
        tag, size = _TLV.unpack_from(payload, pos)
        if size > len(payload) - pos - 8:
            break
        at = HEADER_LENGTH + pos
        name = Tag(tag).name.lower() if tag in Tag._value2member_map_ else f"tag_{tag}"
        out.append((at, 4, "tag", tag))
        out.append((at + 4, 4, "length", size))
        if size:
            out.append(
                (at + 8, size, name, int.from_bytes(payload[pos + 8 : pos + 8 + size], "big"))
            )
        pos += 8 + size
    return out
