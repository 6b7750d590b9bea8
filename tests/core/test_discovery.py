"""core.discovery: SendTargets answers and TargetAddress values (RFC 7143 13.3, 13.8, C)."""

from __future__ import annotations

import pytest

from iscsi_conformance.core.discovery import (
    DiscoveredTarget,
    DiscoveryError,
    Portal,
    format_send_targets,
    format_target_address,
    parse_send_targets,
    parse_target_address,
)

TARGETS = [
    DiscoveredTarget(
        "iqn.2024-01.com.example:a",
        (Portal("192.0.2.1", 3260, 1), Portal("2001:db8::1", 3261, 2)),
    ),
    DiscoveredTarget("iqn.2024-01.com.example:b", (Portal("storage.example.com", 3260, 1),)),
    DiscoveredTarget("iqn.2024-01.com.example:c"),
]


def test_format_send_targets() -> None:
    assert format_send_targets(TARGETS) == [
        ("TargetName", "iqn.2024-01.com.example:a"),
        ("TargetAddress", "192.0.2.1:3260,1"),
        ("TargetAddress", "[2001:db8::1]:3261,2"),
        ("TargetName", "iqn.2024-01.com.example:b"),
        ("TargetAddress", "storage.example.com:3260,1"),
        ("TargetName", "iqn.2024-01.com.example:c"),
    ]


@pytest.mark.parametrize("strict", [True, False])
def test_round_trip(strict: bool) -> None:
    assert parse_send_targets(format_send_targets(TARGETS), strict=strict) == TARGETS


def test_other_keys_skipped() -> None:
    pairs = [("TargetName", "iqn.x:a"), ("TargetAlias", "disk"), ("TargetAddress", "h:1,1")]
    assert parse_send_targets(pairs) == [DiscoveredTarget("iqn.x:a", (Portal("h", 1, 1),))]


@pytest.mark.parametrize(
    ("value", "portal"),
    [
        ("10.0.2.15:3260,1", Portal("10.0.2.15", 3260, 1)),
        ("10.0.2.15,1", Portal("10.0.2.15", 3260, 1)),
        ("[fe80::2]:3261,7", Portal("fe80::2", 3261, 7)),
        ("[2001:db8::1],2", Portal("2001:db8::1", 3260, 2)),
        ("[::1]", Portal("::1", 3260, None)),
        ("[fe80::1%eth0]:3260,1", Portal("fe80::1%eth0", 3260, 1)),
        ("storage.example.com", Portal("storage.example.com", 3260, None)),
        ("h:3260,0x10", Portal("h", 3260, 16)),
    ],
)
def test_parse_target_address(value: str, portal: Portal) -> None:
    assert parse_target_address(value) == portal


@pytest.mark.parametrize(
    ("host", "port", "tpgt", "text"),
    [
        ("192.0.2.1", 3260, 1, "192.0.2.1:3260,1"),
        ("::1", 3260, None, "[::1]:3260"),
        ("2001:db8::5", 860, 65535, "[2001:db8::5]:860,65535"),
    ],
)
def test_format_target_address(host: str, port: int, tpgt: int | None, text: str) -> None:
    assert format_target_address(host, port, tpgt) == text
    assert str(Portal(host, port, tpgt)) == text
    assert parse_target_address(text) == Portal(host, port, tpgt)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no host"),
        ("::1:3260,1", "must be in brackets"),
        ("[::1:3260,1", "unterminated"),
        ("[nothex]:3260", "not an IPv6 address"),
        ("[::1]x,1", "after the IPv6 address"),
        ("host:port,1", "is not a number"),
        ("host:0,1", "out of range 1..65535"),
        ("host:70000", "out of range 1..65535"),
        ("host:3260,tag", "portal group tag 'tag'"),
        ("host:3260,70000", "out of range 0..65535"),
        ("bad host!:3260,1", "not a valid host name"),
        (":3260,1", "not a valid host name"),
    ],
)
def test_malformed_target_address(value: str, message: str) -> None:
    with pytest.raises(DiscoveryError, match=message) as info:
        parse_target_address(value)
    assert info.value.section == "RFC 7143 13.8"
    assert "RFC 7143 13.8" in str(info.value)


def test_lenient_target_address_keeps_value() -> None:
    assert parse_target_address("host:3260,tag", strict=False) == Portal(
        "host:3260,tag", 3260, None
    )
    assert parse_target_address("bad host!,5", strict=False) == Portal("bad host!", 3260, 5)
    assert parse_target_address("h:3260,70000", strict=False) == Portal("h", 3260, 70000)


def test_malformed_send_targets() -> None:
    with pytest.raises(DiscoveryError, match="before any TargetName"):
        parse_send_targets([("TargetAddress", "h:1,1")], strict=True)
    assert parse_send_targets([("TargetAddress", "h:1,1")]) == []
    with pytest.raises(DiscoveryError, match="empty TargetName"):
        parse_send_targets([("TargetName", "")], strict=True)
    with pytest.raises(DiscoveryError, match="must be in brackets"):
        parse_send_targets([("TargetName", "iqn.x:a"), ("TargetAddress", "::1,1")], strict=True)
    lenient = parse_send_targets([("TargetName", "iqn.x:a"), ("TargetAddress", "::1,1")])
    assert lenient == [DiscoveredTarget("iqn.x:a", (Portal("::1", 3260, 1),))]


def test_client_aliases() -> None:
    from iscsi_conformance.initiator import client

    assert client.DiscoveredTarget is DiscoveredTarget and client.Portal is Portal
    assert client.parse_send_targets is parse_send_targets
    assert client.parse_target_address("host:3260,tag") == Portal("host:3260,tag", 3260, None)
