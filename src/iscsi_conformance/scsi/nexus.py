"""I_T nexus identity and iSCSI TransportIDs (SPC-4 7.6.4.6, RFC 7143 4.4.2).

Theory of operation: a SCSI initiator port over iSCSI is named
``"<InitiatorName>,i,0x<ISID>"`` and a target port ``"<TargetName>,t,0x<TPGT>"``
(RFC 7143 4.4.2 / SAM-5 Annex).  Persistent reservations key registrations by the
pair (initiator port, relative target port identifier).  An iSCSI TransportID of
format 00b names only the initiator (every port of that device), format 01b names
the port (name and ISID); both are NUL-terminated UTF-8 padded to a multiple of 4.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .codes import ProtocolIdentifier

ISCSI_PORT_SEP_I = ",i,0x"
ISCSI_PORT_SEP_T = ",t,0x"


@dataclass(frozen=True)
class Nexus:
    """An I_T nexus as the logical unit sees it (SAM-5 4.7).

    ``initiator_port``: ``"<InitiatorName>,i,0x<ISID hex>"``;
    ``target_port``: ``"<TargetName>,t,0x<TPGT hex>"``;
    ``relative_target_port``: the RELATIVE TARGET PORT IDENTIFIER (SPC-4 7.8.6.4), 1-based.
    """

    initiator_port: str
    target_port: str = ""
    relative_target_port: int = 1

    @classmethod
    def iscsi(
        cls,
        initiator_name: str,
        isid: int,
        target_name: str,
        tpgt: int = 1,
        relative_target_port: int | None = None,
    ) -> Nexus:
        """Build from iSCSI session parameters (ISID is the 48-bit value)."""
        return cls(
            initiator_port=f"{initiator_name}{ISCSI_PORT_SEP_I}{isid:012x}",
            target_port=f"{target_name}{ISCSI_PORT_SEP_T}{tpgt:04x}",
            relative_target_port=tpgt if relative_target_port is None else relative_target_port,
        )

    @property
    def initiator_name(self) -> str:
        return initiator_name_of(self.initiator_port)

    def transport_id(self, *, with_isid: bool = True) -> bytes:
        """This initiator port's iSCSI TransportID (format 01b, or 00b without ISID)."""
        return encode_transport_id(self.initiator_port if with_isid else self.initiator_name)


def initiator_name_of(port: str) -> str:
    """The iSCSI name part of an initiator port identifier."""
    idx = port.lower().find(ISCSI_PORT_SEP_I)
    return port if idx < 0 else port[:idx]


def port_matches(registered: str, port: str) -> bool:
    """Does a registered initiator identifier (port, or bare name from a format-00b
    TransportID) cover the initiator port ``port``?  iSCSI names compare
    case-insensitively (RFC 3722 normalisation lower-cases them)."""
    if registered.lower() == port.lower():
        return True
    if ISCSI_PORT_SEP_I not in registered.lower():
        return initiator_name_of(port).lower() == registered.lower()
    return False


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def encode_transport_id(identifier: str) -> bytes:
    """iSCSI TransportID (SPC-4 7.6.4.6): format 01b when ``identifier`` carries
    ``,i,0x<ISID>``, else format 00b.  NUL-terminated and padded to a multiple of 4;
    at least 20 bytes long (SPC-4 Table 458)."""
    name = _pad4(identifier.encode("utf-8") + b"\0")
    fmt = 0x01 if ISCSI_PORT_SEP_I in identifier.lower() else 0x00
    if len(name) < 16:
        name = name.ljust(16, b"\0")
    return bytes([fmt << 6 | ProtocolIdentifier.ISCSI, 0]) + struct.pack(">H", len(name)) + name


def decode_transport_id(data: bytes, offset: int = 0) -> tuple[str, int]:
    """Decode one iSCSI TransportID at ``offset``; return (identifier, length).

    Raises ``ValueError`` if it is not a well-formed iSCSI TransportID.
    """
    if len(data) < offset + 4:
        raise ValueError("TransportID header truncated")
    fmt = data[offset] >> 6
    proto = data[offset] & 0x0F
    if proto != ProtocolIdentifier.ISCSI:
        raise ValueError(f"TransportID protocol {proto} is not iSCSI")
    if fmt not in (0, 1):
        raise ValueError(f"iSCSI TransportID format code {fmt} not defined")
    (addl,) = struct.unpack_from(">H", data, offset + 2)
    if addl % 4:
        raise ValueError("iSCSI TransportID additional length is not a multiple of 4")
    body = data[offset + 4 : offset + 4 + addl]
    if len(body) < addl:
        raise ValueError("TransportID truncated")
    text = body.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    if not text:
        raise ValueError("empty iSCSI name in TransportID")
    if fmt == 1:
        idx = text.lower().find(ISCSI_PORT_SEP_I)
        if idx < 0:
            raise ValueError("format 01b TransportID lacks ',i,0x<ISID>'")
        text = text[:idx] + ISCSI_PORT_SEP_I + text[idx + len(ISCSI_PORT_SEP_I) :].lower()
    return text, 4 + addl
