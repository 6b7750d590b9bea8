"""One error tree, two branches.

Theory of operation: every failure in this project is either the *peer's* fault
(``ProtocolError``: a rule of RFC 7143 / SPC was broken, and we know the section and
what must go on the wire in answer) or *ours or the environment's*
(``HarnessError``: a peer would not start, a config file is bad, a socket could not be
opened). Keeping them apart means a peer is never blamed for our own bug: the report
counts ``ProtocolError`` as a conformance failure and ``HarnessError`` as an error of
the run.
"""

from __future__ import annotations


class ISCSIConformanceError(Exception):
    """Root of every exception this package raises on purpose."""


# --------------------------------------------------------------------------- protocol


class ProtocolError(ISCSIConformanceError):
    """A peer (or a PDU) broke a rule of the protocol.

    ``section`` is the RFC/SCSI section that states the rule (e.g. ``"RFC 7143 11.2.1"``),
    ``level`` the requirement level (MUST, SHOULD, MAY) where known.  Subclasses add
    what goes on the wire in answer.
    """

    def __init__(self, message: str, *, section: str = "", level: str = "MUST") -> None:
        super().__init__(message)
        self.message = message
        self.section = section
        self.level = level

    def __str__(self) -> str:
        where = f" [{self.section}]" if self.section else ""
        return f"{self.message}{where}"


class PDUFormatError(ProtocolError):
    """A PDU could not be decoded or breaks a format rule.

    ``reject_reason`` is the Reject reason code (RFC 7143 11.17.1) a target answers
    with, as an int so this module stays free of the code tables.
    """

    def __init__(
        self,
        message: str,
        *,
        section: str = "",
        level: str = "MUST",
        reject_reason: int = 0x04,  # Protocol Error
        header: bytes = b"",
    ) -> None:
        super().__init__(message, section=section, level=level)
        self.reject_reason = reject_reason
        self.header = header


class DigestError(PDUFormatError):
    """A header or data digest did not match (RFC 7143 7.8 / 11.2.6)."""

    def __init__(
        self,
        message: str,
        *,
        which: str,
        expected: int,
        received: int,
        header: bytes = b"",
        section: str = "RFC 7143 7.8",
    ) -> None:
        super().__init__(
            message,
            section=section,
            reject_reason=0x02,
            header=header,  # Data (payload) Digest Error
        )
        self.which = which  # "header" or "data"
        self.expected = expected
        self.received = received


class NegotiationError(ProtocolError):
    """A text-key negotiation broke a rule (RFC 7143 6, 13).

    During login this ends the login with ``login_status`` (class << 8 | detail,
    RFC 7143 11.13.5); in full-feature phase it is answered with a Reject.
    """

    def __init__(
        self,
        message: str,
        *,
        section: str = "RFC 7143 6",
        level: str = "MUST",
        login_status: int = 0x0200,  # Initiator error
        key: str | None = None,
    ) -> None:
        super().__init__(message, section=section, level=level)
        self.login_status = login_status
        self.key = key


class LoginError(ProtocolError):
    """The login phase failed (RFC 7143 6.1, 8, 11.13.5); carries the login status."""

    def __init__(
        self,
        message: str,
        *,
        section: str = "RFC 7143 11.13.5",
        level: str = "MUST",
        login_status: int = 0x0200,
    ) -> None:
        super().__init__(message, section=section, level=level)
        self.login_status = login_status

    @property
    def status_class(self) -> int:
        return self.login_status >> 8

    @property
    def status_detail(self) -> int:
        return self.login_status & 0xFF


class AuthenticationError(LoginError):
    """CHAP (RFC 1994, RFC 7143 12.1.3) failed: wrong secret, reflection, bad keys."""

    def __init__(
        self,
        message: str,
        *,
        section: str = "RFC 7143 12.1.3",
        level: str = "MUST",
        login_status: int = 0x0201,  # Authentication failure
    ) -> None:
        super().__init__(message, section=section, level=level, login_status=login_status)


class SequenceError(ProtocolError):
    """A sequence number (CmdSN, StatSN, DataSN, R2TSN) is out of order or window
    (RFC 7143 4.2.2, RFC 1982)."""


class NamingError(ProtocolError):
    """An iSCSI name does not follow RFC 7143 4.2.7 / RFC 3722."""

    def __init__(
        self, message: str, *, section: str = "RFC 7143 4.2.7", level: str = "MUST"
    ) -> None:
        super().__init__(message, section=section, level=level)


class SCSIError(ProtocolError):
    """A SCSI command ended in CHECK CONDITION; carries sense key, ASC, ASCQ (SPC-4 4.5)."""

    def __init__(
        self,
        message: str,
        *,
        sense_key: int,
        asc: int,
        ascq: int = 0,
        section: str = "SPC-4 4.5",
        status: int = 0x02,  # CHECK CONDITION
        info: int | None = None,
        field_pointer: int | None = None,
        bit_pointer: int | None = None,
        cd: bool = True,
    ) -> None:
        super().__init__(message, section=section)
        self.sense_key = sense_key
        self.asc = asc
        self.ascq = ascq
        self.status = status
        self.info = info
        self.field_pointer = field_pointer
        self.bit_pointer = bit_pointer
        self.cd = cd


class ReservationConflict(SCSIError):
    """The command conflicts with a reservation (SPC-4 5.9, status 18h, no sense)."""

    def __init__(
        self, message: str = "reservation conflict", *, section: str = "SPC-4 5.9"
    ) -> None:
        super().__init__(message, sense_key=0, asc=0, section=section, status=0x18)


# --------------------------------------------------------------------------- harness


class HarnessError(ISCSIConformanceError):
    """Our side or the environment failed; no peer is to blame."""


class ConfigError(HarnessError):
    """A configuration file or option is wrong. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class PeerStartError(HarnessError):
    """A peer (container, VM, daemon) would not start. ``log_tail`` is its last output."""

    def __init__(self, peer: str, message: str, *, log_tail: str = "") -> None:
        text = f"peer {peer!r} could not start: {message}"
        if log_tail:
            text += "\n--- last lines of its log ---\n" + log_tail
        super().__init__(text)
        self.peer = peer
        self.log_tail = log_tail


class TransportError(HarnessError):
    """The connection could not be made, or closed under us unexpectedly."""


class URLError(ConfigError):
    """An ``iscsi://`` URL is malformed."""
