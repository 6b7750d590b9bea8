"""iSCSI names: iqn., eui. and naa. (RFC 7143 4.2.7, RFC 3722 stringprep profile).

Theory of operation: an iSCSI name is compared after normalisation, so
:func:`normalize` first runs the RFC 3722 stringprep profile (map B.1 and B.2 of
RFC 3454, i.e. drop "commonly mapped to nothing" characters and case-fold; NFKC;
refuse the prohibited tables and any ASCII character other than ``-``, ``.``, ``:``,
digits and lowercase letters; bidi rules) and then checks the structure of the type
prefix. :func:`validate` refuses a name that is not already in normal form, since
RFC 7143 4.2.7.2 asks senders to send names normalised. Errors are
:class:`~iscsi_conformance.errors.NamingError` with the section they break.
"""

from __future__ import annotations

import re
import stringprep
import unicodedata

from iscsi_conformance.errors import NamingError

__all__ = ["MAX_NAME_BYTES", "NameType", "name_type", "normalize", "stringprep_iscsi", "validate"]

MAX_NAME_BYTES = 223  # RFC 7143 4.2.7.1: at most 223 bytes, UTF-8 encoded


class NameType:
    """The three name formats (RFC 7143 4.2.7.3)."""

    IQN = "iqn"
    EUI = "eui"
    NAA = "naa"


_ASCII_OK = frozenset("-.:0123456789abcdefghijklmnopqrstuvwxyz")
_PROHIBITED = (
    stringprep.in_table_c11,
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)
# iqn.yyyy-mm.reversed.domain[:anything] (RFC 7143 4.2.7.4)
_IQN = re.compile(r"iqn\.(\d{4})-(\d{2})\.([^:]+)(?::(.*))?", re.DOTALL)
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_HEX = re.compile(r"[0-9a-f]+")


def stringprep_iscsi(name: str) -> str:
    """Apply the iSCSI stringprep profile (RFC 3722 3-7) or raise NamingError."""
    section = "RFC 3722"
    mapped = "".join(stringprep.map_table_b2(ch) for ch in name if not stringprep.in_table_b1(ch))
    out = unicodedata.normalize("NFKC", mapped)
    for ch in out:
        if ch.isascii():
            if ch not in _ASCII_OK:
                raise NamingError(
                    f"character {ch!r} is not allowed in an iSCSI name", section=f"{section} 6.1"
                )
        elif ch == "\u3002" or any(table(ch) for table in _PROHIBITED):
            raise NamingError(f"prohibited character U+{ord(ch):04X}", section=f"{section} 6")
        elif stringprep.in_table_a1(ch):
            raise NamingError(f"unassigned code point U+{ord(ch):04X}", section=f"{section} 7")
    # RFC 3454 6: a string with RandALCat characters must not contain LCat ones and
    # must start and end with RandALCat.
    has_ral = any(stringprep.in_table_d1(ch) for ch in out)
    if has_ral and (
        any(stringprep.in_table_d2(ch) for ch in out)
        or not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1]))
    ):
        raise NamingError("bidirectional text rules broken", section="RFC 3454 6")
    return out


def name_type(name: str) -> str:
    """``"iqn"``, ``"eui"`` or ``"naa"`` from the prefix (case-insensitive)."""
    prefix = name[:4].lower()
    for kind in (NameType.IQN, NameType.EUI, NameType.NAA):
        if prefix == kind + ".":
            return kind
    raise NamingError(f"{name!r} has no iqn./eui./naa. prefix", section="RFC 7143 4.2.7.3")


def normalize(name: str) -> str:
    """The normal form of ``name``; raises NamingError if it is not a valid name."""
    kind = name_type(name)
    if kind == NameType.IQN:
        norm = stringprep_iscsi(name)
        _check_iqn(norm)
    else:
        norm = name.lower()
        digits = norm[4:]
        allowed = (16,) if kind == NameType.EUI else (16, 32)
        section = "RFC 7143 4.2.7.5" if kind == NameType.EUI else "RFC 7143 4.2.7.6"
        if len(digits) not in allowed or not _HEX.fullmatch(digits):
            raise NamingError(
                f"{name!r}: {kind}. must be followed by {' or '.join(map(str, allowed))} hex digits",
                section=section,
            )
    if len(norm.encode("utf-8")) > MAX_NAME_BYTES:
        raise NamingError(
            f"name is {len(norm.encode())} bytes long, at most {MAX_NAME_BYTES} allowed",
            section="RFC 7143 4.2.7.1",
        )
    return norm


def _check_iqn(name: str) -> None:
    section = "RFC 7143 4.2.7.4"
    m = _IQN.fullmatch(name)
    if m is None:
        raise NamingError(f"{name!r} is not iqn.yyyy-mm.naming-authority[:unique]", section=section)
    year, month, authority = int(m.group(1)), int(m.group(2)), m.group(3)
    if not 1 <= month <= 12 or year < 1970:
        raise NamingError(
            f"{name!r}: {m.group(1)}-{m.group(2)} is not a valid date", section=section
        )
    labels = authority.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise NamingError(f"{name!r}: {authority!r} is not a reversed domain name", section=section)


def validate(name: str) -> str:
    """Check that ``name`` is valid *and* already normalised; returns it.

    RFC 7143 4.2.7.2: names are sent in normalised form, so an iqn. name that
    normalisation would change (e.g. upper case) is refused; eui./naa. names may use
    upper-case hex digits, as the RFC's own examples do.
    """
    norm = normalize(name)
    # The RFC's own eui./naa. examples use upper-case hex digits: accept those.
    if norm != name and not (name_type(name) != NameType.IQN and name[:4].islower()):
        raise NamingError(
            f"{name!r} is not normalised (expected {norm!r})", section="RFC 7143 4.2.7.2"
        )
    return name
