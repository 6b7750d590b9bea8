"""Text key=value data segments (RFC 7143 6.1): parse, format, reassemble.

Theory of operation: Login and Text PDUs carry a *logical text data segment* (LTDS):
``key=value`` pairs, each followed by one NUL byte, possibly spread over several
PDUs chained by the C (continue) bit.  A pair may be cut anywhere, even inside a
UTF-8 sequence, so :class:`TextAssembler` joins the raw bytes first and parses only
when a PDU with C=0 closes the LTDS.  :func:`split_segments` does the reverse for a
sender.

Values are kept as ``str`` in the pair lists; the typed helpers below (numbers in
decimal / ``0x`` hex / ``0b`` base64, binary strings, booleans, ranges, lists)
convert them.  Which type a key uses lives in :mod:`.keys`, not here.  Every parse
failure raises :class:`~iscsi_conformance.errors.NegotiationError` with login status
0x0200 (initiator error), the answer RFC 7143 6.1 / 11.13.5 gives to a malformed
request.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from iscsi_conformance.errors import NegotiationError

# RFC 7143 6.1: standard-label is at most 63 characters.
MAX_KEY_LENGTH = 63
# RFC 7143 6.1: a simple-value is at most 255 bytes unless its key says otherwise.
MAX_VALUE_LENGTH = 255
# RFC 7143 6.1: a peer MUST accept 8192 bytes of key=value data per negotiation
# sequence, 64 KiB when a long authentication method was proposed.  We accept the
# latter by default.
MAX_LTDS_LENGTH = 65536
# RFC 7143 6.1: numerical-value is below 2**64.
MAX_NUMERICAL = 2**64 - 1

# The reserved constants of RFC 7143 6.2 (only ever answers, never offers) and None.
NOT_UNDERSTOOD = "NotUnderstood"
IRRELEVANT = "Irrelevant"
REJECT = "Reject"
NONE = "None"
RESERVED_ANSWERS = frozenset({NOT_UNDERSTOOD, IRRELEVANT, REJECT})

Pair = tuple[str, str]

# Key names: the standard-label characters (RFC 7143 6.1) plus '#' for the IANA
# X# extension keys (RFC 7143 13.26).  "iSCSIProtocolLevel" starts in lower case, so
# the "begins with a capital" wording is not enforced.
_KEY_RE = re.compile(r"[A-Za-z0-9.\-+@_#]{1,63}")
# text-value characters (RFC 7143 6.1).
_TEXT_RE = re.compile(r"[A-Za-z0-9.\-+@_/\[\]:]*")
_STANDARD_LABEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9.\-+@_]{0,62}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")
_HEX_RE = re.compile(r"0[xX]([0-9a-fA-F]+)")
_B64_RE = re.compile(r"0[bB]([A-Za-z0-9+/]+={0,2})")


def _error(
    message: str, *, section: str = "RFC 7143 6.1", key: str | None = None
) -> NegotiationError:
    return NegotiationError(message, section=section, login_status=0x0200, key=key)


# --------------------------------------------------------------------------- pairs


def is_valid_key(key: str) -> bool:
    """True if ``key`` is a legal key-name: 1..63 label characters (RFC 7143 6.1)."""
    return bool(_KEY_RE.fullmatch(key))


def parse_pairs(data: bytes, *, max_key_length: int = MAX_KEY_LENGTH) -> list[Pair]:
    """Parse one complete LTDS into ``(key, value)`` pairs, in wire order.

    Each pair must end with a NUL (RFC 7143 6.1); the key is what precedes the
    first ``=``.  Raises NegotiationError on a missing NUL, a pair without ``=``, a
    bad key name, or bytes that are not UTF-8.  An empty segment is no pairs.
    Repeated keys are kept: whether that is legal is the negotiator's business.
    """
    if not data:
        return []
    if not data.endswith(b"\0"):
        raise _error("text data segment is not NUL-terminated")
    pairs: list[Pair] = []
    for raw in data[:-1].split(b"\0"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(f"key=value pair is not UTF-8: {raw[:40]!r}") from exc
        key, sep, value = text.partition("=")
        if not sep:
            raise _error(f"pair without '=': {text[:40]!r}")
        if len(key.encode()) > max_key_length:
            raise _error(f"key name longer than {max_key_length} bytes: {key[:40]!r}", key=key)
        if not is_valid_key(key):
            raise _error(f"illegal key name {key!r}", key=key)
        pairs.append((key, value))
    return pairs


def format_pairs(pairs: Iterable[Pair], *, strict: bool = True) -> bytes:
    """Encode pairs as ``key=value\\0...`` in UTF-8.

    With ``strict`` (the default) a bad key name or a NUL inside a value raises
    ValueError; ``strict=False`` encodes anything, for negative tests.
    """
    out = bytearray()
    for key, value in pairs:
        if strict:
            if not is_valid_key(key):
                raise ValueError(f"illegal key name {key!r}")
            if "\0" in value:
                raise ValueError(f"NUL inside the value of {key!r}")
        out += key.encode() + b"=" + value.encode() + b"\0"
    return bytes(out)


def split_segments(data: bytes, max_len: int) -> list[bytes]:
    """Cut an LTDS into data segments of at most ``max_len`` bytes.

    Every segment but the last is to be sent with C=1 (RFC 7143 6.1).  Always
    returns at least one segment (``[b""]`` for empty data).
    """
    if max_len <= 0:
        raise ValueError("max_len must be positive")
    if not data:
        return [b""]
    return [data[i : i + max_len] for i in range(0, len(data), max_len)]


class TextAssembler:
    """Joins the data segments of a C-bit chain into one LTDS (RFC 7143 6.1).

    ``feed(data, cont)`` returns None while ``cont`` is true (more to come) and the
    parsed pairs of the whole LTDS when a segment with ``cont`` false closes it.
    ``max_length`` bounds the LTDS; beyond it NegotiationError with status 0x0302
    (out of resources) is raised.
    """

    def __init__(self, *, max_length: int = MAX_LTDS_LENGTH) -> None:
        self.max_length = max_length
        self._buf = bytearray()
        self.segments = 0

    @property
    def pending(self) -> bool:
        """True while a chain is open (the last segment had C=1)."""
        return self.segments > 0

    def feed(self, data: bytes, cont: bool) -> list[Pair] | None:
        """Add one segment; return the pairs once the chain is complete."""
        self._buf += data
        self.segments += 1
        if len(self._buf) > self.max_length:
            size = len(self._buf)
            self.reset()
            raise NegotiationError(
                f"key=value data of {size} bytes exceeds our limit of {self.max_length}",
                section="RFC 7143 6.1",
                login_status=0x0302,
            )
        if cont:
            return None
        whole = bytes(self._buf)
        self.reset()
        return parse_pairs(whole)

    def peek(self, data: bytes = b"") -> list[Pair]:
        """Parse the chain so far plus ``data`` as if it ended here, without consuming."""
        return parse_pairs(bytes(self._buf) + data)

    def reset(self) -> None:
        """Forget any partial chain."""
        self._buf.clear()
        self.segments = 0


# --------------------------------------------------------------------------- values


def is_text_value(value: str) -> bool:
    """text-value characters only (RFC 7143 6.1)."""
    return bool(_TEXT_RE.fullmatch(value))


def is_standard_label(value: str) -> bool:
    """standard-label: a letter then up to 62 label characters (RFC 7143 6.1)."""
    return bool(_STANDARD_LABEL_RE.fullmatch(value))


def is_local_name(value: str) -> bool:
    """iSCSI-local-name-value: any UTF-8 without NUL (RFC 7143 6.1)."""
    return "\0" not in value


def parse_number(value: str, *, large: bool = False) -> int:
    """Parse a decimal, ``0x`` hex or ``0b`` base64 constant (RFC 7143 6.1).

    numerical-value must be below 2**64; ``large=True`` accepts a
    large-numerical-value (hex or base64 only, no upper bound).
    """
    if _DECIMAL_RE.fullmatch(value):
        n = int(value)
        if large:
            raise _error(f"large-numerical-value must be hex or base64, got decimal {value!r}")
    elif m := _HEX_RE.fullmatch(value):
        n = int(m.group(1), 16)
    elif m := _B64_RE.fullmatch(value):
        n = int.from_bytes(_b64decode(m.group(1)), "big")
    else:
        raise _error(f"not a number: {value[:40]!r}")
    if not large and n > MAX_NUMERICAL:
        raise _error(f"numerical-value {value[:40]!r} is not below 2**64")
    return n


def format_number(n: int, encoding: str = "decimal") -> str:
    """Encode an unsigned integer as ``decimal``, ``hex`` (0x) or ``base64`` (0b)."""
    if n < 0:
        raise ValueError("numbers are unsigned")
    if encoding == "decimal":
        return str(n)
    if encoding == "hex":
        return f"0x{n:x}"
    if encoding == "base64":
        return format_binary(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"), "base64")
    raise ValueError(f"unknown encoding {encoding!r}")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise _error(f"bad base64 constant {text[:40]!r}") from exc


def parse_binary(value: str) -> bytes:
    """Parse a binary-value (RFC 7143 6.1) into bytes.

    Hex keeps its implicit length, (digits + 1) // 2 bytes, leading zeros included;
    base64 decodes as RFC 4648; a decimal constant (regular-binary-value only) gives
    its minimal big-endian bytes.
    """
    if m := _HEX_RE.fullmatch(value):
        digits = m.group(1)
        if len(digits) % 2:
            digits = "0" + digits
        return bytes.fromhex(digits)
    if m := _B64_RE.fullmatch(value):
        return _b64decode(m.group(1))
    if _DECIMAL_RE.fullmatch(value):
        n = int(value)
        if n > MAX_NUMERICAL:
            raise _error("decimal binary values are limited to 64 bits")
        return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    raise _error(f"not a binary value: {value[:40]!r}")


def format_binary(data: bytes, encoding: str = "hex") -> str:
    """Encode bytes as ``0x`` hex or ``0b`` base64, keeping leading zero bytes."""
    if not data:
        raise ValueError("binary values are at least one byte")
    if encoding == "hex":
        return "0x" + data.hex()
    if encoding == "base64":
        return "0b" + base64.b64encode(data).decode()
    raise ValueError(f"unknown encoding {encoding!r}")


def parse_boolean(value: str) -> bool:
    """``Yes`` / ``No`` (RFC 7143 6.1: boolean-value, case-sensitive)."""
    if value == "Yes":
        return True
    if value == "No":
        return False
    raise _error(f"not a boolean: {value[:40]!r}")


def format_boolean(flag: bool) -> str:
    """True -> ``Yes``, False -> ``No``."""
    return "Yes" if flag else "No"


def parse_range(value: str) -> tuple[int, int]:
    """``a~b`` with a <= b (RFC 7143 6.1: numeric-range)."""
    low, sep, high = value.partition("~")
    if not sep:
        raise _error(f"not a range: {value[:40]!r}")
    a, b = parse_number(low), parse_number(high)
    if b < a:
        raise _error(f"range {value!r} has its upper bound below its lower bound")
    return a, b


def format_range(low: int, high: int) -> str:
    """``low~high``."""
    if high < low:
        raise ValueError("high < low")
    return f"{low}~{high}"


def parse_list(value: str) -> list[str]:
    """``a,b,c`` (RFC 7143 6.1: list-of-values); an empty item is an error."""
    items = value.split(",")
    if any(not item for item in items):
        raise _error(f"empty item in list {value[:40]!r}")
    return items


def format_list(items: Iterable[str]) -> str:
    """Join items with commas; items must be non-empty and comma-free."""
    items = list(items)
    if not items or any(not i or "," in i for i in items):
        raise ValueError(f"bad list items {items!r}")
    return ",".join(items)
