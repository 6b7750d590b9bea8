"""The ISID (RFC 7143 11.12.5): its four formats, built and read, sans-IO."""

from __future__ import annotations

import enum
from collections.abc import Callable

Rng = Callable[[int], bytes]


class IsidType(enum.IntEnum):
    """The T field of the ISID (RFC 7143 11.12.5)."""

    OUI = 0b00
    EN = 0b01
    RANDOM = 0b10
    RESERVED = 0b11


def isid_type(isid: int) -> IsidType:
    """The format of a 48-bit ISID (its top two bits)."""
    return IsidType((isid >> 46) & 0b11)


def make_isid(kind: IsidType, *, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
    """Assemble T(2) A(6) B(16) C(8) D(16) into a 48-bit ISID (RFC 7143 11.12.5)."""
    if not (0 <= a < 64 and 0 <= b < 65536 and 0 <= c < 256 and 0 <= d < 65536):
        raise ValueError("ISID field out of range")
    return (int(kind) << 46) | (a << 40) | (b << 24) | (c << 16) | d


def random_isid(rng: Rng, qualifier: int = 0) -> int:
    """A type 10b ISID: B and C random, D the qualifier."""
    r = rng(3)
    return make_isid(IsidType.RANDOM, b=int.from_bytes(r[:2], "big"), c=r[2], d=qualifier)


def en_isid(enterprise_number: int, qualifier: int = 0) -> int:
    """A type 01b ISID: B and C the 24-bit IANA enterprise number, D the qualifier."""
    if not 0 <= enterprise_number < 2**24:
        raise ValueError("enterprise number is 24 bits")
    return make_isid(IsidType.EN, b=enterprise_number >> 8, c=enterprise_number & 0xFF, d=qualifier)
