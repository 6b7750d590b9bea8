"""iscsi:// URL parsing (libiscsi's form; RFC 3986 for brackets and percent-encoding)."""

from __future__ import annotations

import pytest

from iscsi_conformance.errors import URLError
from iscsi_conformance.initiator.url import DEFAULT_PORT, parse_portal, parse_url

IQN = "iqn.2003-01.org.example:disk1"


@pytest.mark.parametrize(
    ("url", "host", "port", "target", "lun"),
    [
        (f"iscsi://127.0.0.1/{IQN}/0", "127.0.0.1", DEFAULT_PORT, IQN, 0),
        (f"iscsi://127.0.0.1:3261/{IQN}/1", "127.0.0.1", 3261, IQN, 1),
        (f"iscsi://[::1]/{IQN}/2", "::1", DEFAULT_PORT, IQN, 2),
        (f"iscsi://[fe80::1%25eth0]:860/{IQN}/3", "fe80::1%25eth0", 860, IQN, 3),
        (f"iscsi://[2001:db8::7]:13260/{IQN}/16383", "2001:db8::7", 13260, IQN, 16383),
        (f"ISCSI://storage.example.com/{IQN}/0", "storage.example.com", DEFAULT_PORT, IQN, 0),
        ("iscsi://h/eui.02004567A425678D/0", "h", DEFAULT_PORT, "eui.02004567A425678D", 0),
        (
            "iscsi://h/iqn.2003-01.org.example%3Adisk%201/0",
            "h",
            DEFAULT_PORT,
            "iqn.2003-01.org.example:disk 1",
            0,
        ),
    ],
)
def test_good_urls(url: str, host: str, port: int, target: str, lun: int) -> None:
    u = parse_url(url)
    assert (u.host, u.port, u.target, u.lun) == (host, port, target, lun)
    assert u.chap is None and u.mutual_chap is None


def test_credentials_percent_decoded() -> None:
    # As in libiscsi the first '%' separates user and secret, so only the secret may
    # carry an escaped '%'.
    u = parse_url(f"iscsi://alice.b%secr%25et%2F%40x%20y@10.0.0.1:3260/{IQN}/0")
    assert u.user == "alice.b"
    assert u.secret == "secr%et/@x y"
    assert u.chap is not None and u.chap.user == "alice.b" and u.chap.secret == "secr%et/@x y"


def test_user_without_secret() -> None:
    u = parse_url(f"iscsi://alice@h/{IQN}/0")
    assert u.user == "alice" and u.secret is None


def test_secret_never_shown() -> None:
    u = parse_url(f"iscsi://alice%TopSecret123@h/{IQN}/0?target_user=tgt&target_password=Other456")
    for text in (repr(u), str(u), repr(u.chap), repr(u.mutual_chap)):
        assert "TopSecret123" not in text
        assert "Other456" not in text
    assert str(u) == f"iscsi://alice%***@h:3260/{IQN}/0"
    assert u.mutual_chap is not None and u.mutual_chap.secret == "Other456"


def test_query_digests() -> None:
    u = parse_url(f"iscsi://h/{IQN}/0?header_digest=crc32c&data_digest=none,crc32c")
    assert u.keys() == {"HeaderDigest": "CRC32C", "DataDigest": "None,CRC32C"}


def test_portal_only_urls() -> None:
    u = parse_url("iscsi://[::1]:3261", require_target=False)
    assert (u.host, u.port, u.target, u.lun) == ("::1", 3261, None, None)
    u = parse_url(f"iscsi://h/{IQN}", require_lun=False)
    assert u.target == IQN and u.lun is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (f"http://h/{IQN}/0", "not an iscsi:// URL"),
        (f"iscsi:///{IQN}/0", "missing host"),
        (f"iscsi://h:0/{IQN}/0", "out of range"),
        (f"iscsi://h:65536/{IQN}/0", "out of range"),
        (f"iscsi://h:port/{IQN}/0", "not a number"),
        (f"iscsi://::1/{IQN}/0", "brackets"),
        (f"iscsi://[::1/{IQN}/0", "unterminated"),
        (f"iscsi://[not-v6]/{IQN}/0", "not an IPv6 address"),
        (f"iscsi://[::1]x/{IQN}/0", "unexpected"),
        ("iscsi://h", "missing target name"),
        (f"iscsi://h/{IQN}", "missing LUN"),
        (f"iscsi://h/{IQN}/x", "not a decimal number"),
        (f"iscsi://h/{IQN}/-1", "not a decimal number"),
        (f"iscsi://h/{IQN}/16384", "out of range"),
        (f"iscsi://h/{IQN}/0/extra", "too many path components"),
        ("iscsi://h//0", "empty target name"),
        (f"iscsi://%pw@h/{IQN}/0", "empty user name"),
        (f"iscsi://u%bad%zzsecret@h/{IQN}/0", "percent-encoding"),
        (f"iscsi://h/{IQN}/0?header_digest=md5", "header_digest"),
        (f"iscsi://h/{IQN}/0?color=red", "unknown query parameter"),
        (f"iscsi://h/{IQN}/0?target_password=x", "without target_user"),
        (f"iscsi://bad_host!/{IQN}/0", "not a valid host"),
    ],
)
def test_bad_urls(url: str, fragment: str) -> None:
    with pytest.raises(URLError) as info:
        parse_url(url)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_url_error_hides_secret() -> None:
    with pytest.raises(URLError) as info:
        parse_url(f"iscsi://alice%Sup3rS3cret@h:99999/{IQN}/0")
    assert "Sup3rS3cret" not in str(info.value)
    with pytest.raises(URLError) as info:
        parse_url("http://alice%Sup3rS3cret@h/x/0")
    assert "Sup3rS3cret" not in str(info.value)
    with pytest.raises(URLError) as info:
        parse_url("iscsi://alice%Sup3r%zzS3cret@h/x/0")
    assert "Sup3r" not in str(info.value)


def test_parse_portal() -> None:
    assert parse_portal("10.0.2.15") == ("10.0.2.15", 3260)
    assert parse_portal("10.0.2.15:3261") == ("10.0.2.15", 3261)
    assert parse_portal("[::1]") == ("::1", 3260)
    assert parse_portal("[::1]:1") == ("::1", 1)


def test_send_targets_answer_parsing_and_nat() -> None:
    from iscsi_conformance.initiator.client import (
        Portal,
        parse_send_targets,
        parse_target_address,
        remap_addresses,
    )

    assert parse_target_address("10.0.2.15:3260,1") == Portal("10.0.2.15", 3260, 1)
    assert parse_target_address("[fe80::2]:3261,7") == Portal("fe80::2", 3261, 7)
    assert parse_target_address("[2001:db8::1],2") == Portal("2001:db8::1", 3260, 2)
    assert parse_target_address("storage.example.com") == Portal("storage.example.com", 3260, None)
    pairs = [
        ("TargetName", "iqn.2024-01.x:a"),
        ("TargetAddress", "10.0.2.15:3260,1"),
        ("TargetAddress", "[fe80::2]:3260,1"),
        ("TargetName", "iqn.2024-01.x:b"),
    ]
    a, b = parse_send_targets(pairs)
    assert a.name == "iqn.2024-01.x:a" and len(a.addresses) == 2 and b.addresses == ()
    # NAT: the announced guest address is kept as given, and can be mapped
    (ma, _) = remap_addresses([a, b], {("10.0.2.15", 3260): ("127.0.0.1", 13260)})
    assert ma.addresses[0] == Portal("127.0.0.1", 13260, 1)
    assert ma.addresses[1] == a.addresses[1]
    assert b.via("127.0.0.1", 13260).addresses == (Portal("127.0.0.1", 13260, None),)
