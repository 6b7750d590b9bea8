"""iSCSI names (RFC 7143 4.2.7, RFC 3722)."""

from __future__ import annotations

import pytest

from iscsi_conformance.core import naming
from iscsi_conformance.errors import NamingError

# Examples in the style of RFC 7143 4.2.7.4-4.2.7.6
GOOD = [
    "iqn.2001-04.com.example",
    "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
    "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
    "eui.02004567a425678d",
    "naa.52004567ba64678d",
    "naa.62004567ba64678d0123456789abcdef",
    "iqn.2024-01.org.iscsi-conformance:ä",
]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name: str) -> None:
    assert naming.validate(name) == name
    assert naming.normalize(name) == name


@pytest.mark.parametrize(
    "name, expected",
    [
        ("IQN.2001-04.COM.Example:Disk", "iqn.2001-04.com.example:disk"),
        ("eui.02004567A425678D", "eui.02004567a425678d"),
        ("iqn.2001-04.com.example:\u00c4", "iqn.2001-04.com.example:\u00e4"),  # case folded
        ("iqn.2001-04.com.example:a\u00adb", "iqn.2001-04.com.example:ab"),  # B.1: soft hyphen
        ("iqn.2001-04.com.example:\uff41", "iqn.2001-04.com.example:a"),  # NFKC
    ],
)
def test_normalize(name: str, expected: str) -> None:
    assert naming.normalize(name) == expected


@pytest.mark.parametrize(
    "name, section",
    [
        ("foo.2001-04.com.example", "RFC 7143 4.2.7.3"),
        ("iqn.2001-13.com.example", "RFC 7143 4.2.7.4"),
        ("iqn.1900-01.com.example", "RFC 7143 4.2.7.4"),
        ("iqn.20010-4.com.example", "RFC 7143 4.2.7.4"),
        ("iqn.2001-04.com..example", "RFC 7143 4.2.7.4"),
        ("iqn.2001-04.-com.example", "RFC 7143 4.2.7.4"),
        ("iqn.2001-04.com.exa mple", "RFC 3722 6.1"),
        ("iqn.2001-04.com.example:a/b", "RFC 3722 6.1"),
        ("iqn.2001-04.com.example:a\u3002b", "RFC 3722 6"),
        ("iqn.2001-04.com.example:\u0378", "RFC 3722 7"),  # unassigned
        ("iqn.2001-04.com.example:\u05d0a", "RFC 3454 6"),  # RandAL mixed with L
        ("eui.02004567a425678", "RFC 7143 4.2.7.5"),
        ("eui.02004567a425678g", "RFC 7143 4.2.7.5"),
        ("naa.52004567ba64678d00", "RFC 7143 4.2.7.6"),
        ("iqn.2001-04.com.example:" + "x" * 200, "RFC 7143 4.2.7.1"),
    ],
)
def test_bad_names(name: str, section: str) -> None:
    with pytest.raises(NamingError) as info:
        naming.normalize(name)
    assert info.value.section == section


def test_223_bytes_is_the_limit() -> None:
    head = "iqn.2001-04.com.example:"
    assert naming.validate(head + "x" * (223 - len(head)))
    with pytest.raises(NamingError):
        naming.validate(head + "é" * 100)  # 2 bytes each in UTF-8


def test_validate_refuses_unnormalised_iqn() -> None:
    with pytest.raises(NamingError) as info:
        naming.validate("iqn.2001-04.com.Example")
    assert info.value.section == "RFC 7143 4.2.7.2"
    assert naming.validate("naa.52004567BA64678D") == "naa.52004567BA64678D"


def test_name_type() -> None:
    assert naming.name_type("IQN.x") == naming.NameType.IQN
    assert naming.name_type("naa.1") == naming.NameType.NAA
