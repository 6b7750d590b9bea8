"""Discovery.SendTargets: All, a named target, ACL filtering, address formats,
portal groups, and answers longer than one PDU (RFC 7143 13.3, 13.8, 11.10)."""

from __future__ import annotations

import re
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.text import format_pairs, parse_pairs
from iscsi_conformance.harness.profiles import OTHER_INITIATOR_NAME
from iscsi_conformance.plugin import require, spec

# domainname[:port][,tpgt], IPv6 literal in brackets (RFC 7143 13.8)
ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:\d{1,5})?,\d{1,5}$")


async def _discovery(
    target: Any, raw: Any, *, initiator_name: str | None = None, mrdsl: int | None = None
) -> Any:
    kw = {"session_type": "Discovery", "target_name": None}
    if initiator_name:
        kw["initiator_name"] = initiator_name
    probe = target.probe(raw, **kw)
    keys = [("MaxRecvDataSegmentLength", str(mrdsl))] if mrdsl else []
    await probe.to_full_feature(keys)
    require(
        probe.in_full_feature,
        "R7143-13.21-1",
        "discovery login failed",
        sent=probe.sent,
        received=probe.received,
    )
    return probe


async def send_targets(
    raw: Any, probe: Any, value: str, *, itt: int = 0x100
) -> tuple[list[tuple[str, str]], list[Any], list[Any]]:
    """Full-feature Text Request SendTargets=value, following continuations (C bit)."""
    sent, received = [], []
    data = bytearray()
    ttt = 0xFFFFFFFF
    payload = format_pairs([("SendTargets", value)])
    for _ in range(64):
        req = P.TextRequest(
            immediate=True,
            final=True,
            itt=itt,
            ttt=ttt,
            cmdsn=probe.cmdsn,
            expstatsn=probe.expstatsn,
            data=payload,
        )
        await raw.send(req)
        sent.append(req)
        resp = await raw.recv(timeout=5)
        if resp is None:
            break
        received.append(resp)
        if not isinstance(resp, P.TextResponse):
            break
        probe.expstatsn = (resp.statsn + 1) & 0xFFFFFFFF
        data += resp.data
        if resp.final and not resp.cont:
            break
        ttt = resp.ttt
        payload = b""
    return (parse_pairs(bytes(data)) if data else []), sent, received


def _targets(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for k, v in pairs:
        if k == "TargetName":
            current = v
            out.setdefault(v, [])
        elif k == "TargetAddress" and current is not None:
            out[current].append(v)
    return out


@spec("Discovery.SendTargets.All", "RFC 7143 13.3", requirements=["R7143-13.3-1"])
async def test_send_targets_all(target: Any) -> None:
    """SendTargets=All lists the target we can log in to, with at least one address."""
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        pairs, sent, received = await send_targets(raw, probe, "All")
        found = _targets(pairs)
        iqn = target.endpoint().iqn
        require(
            iqn in found,
            "R7143-13.3-1",
            f"{iqn} missing from SendTargets=All: {sorted(found)}",
            sent=sent,
            received=received,
        )
        require(
            found[iqn],
            "R7143-13.3-1",
            f"{iqn} listed without a TargetAddress",
            sent=sent,
            received=received,
        )


@spec("Discovery.SendTargets.AddressFormat", "RFC 7143 13.8", requirements=["R7143-13.8-1"])
async def test_target_address_format(target: Any) -> None:
    """Every TargetAddress is host[:port],tpgt with IPv6 literals in brackets."""
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        pairs, sent, received = await send_targets(raw, probe, "All")
        addresses = [v for k, v in pairs if k == "TargetAddress"]
        require(addresses, "R7143-13.3-1", "no TargetAddress at all", sent=sent, received=received)
        bad = [a for a in addresses if not ADDRESS.match(a)]
        require(
            not bad,
            "R7143-13.8-1",
            f"malformed TargetAddress values: {bad}",
            sent=sent,
            received=received,
        )


@spec("Discovery.SendTargets.Named", "RFC 7143 13.3", requirements=["R7143-13.3-2"])
async def test_send_targets_named(target: Any) -> None:
    """SendTargets=<name> returns only that target."""
    iqn = target.endpoint().iqn
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        pairs, sent, received = await send_targets(raw, probe, iqn)
        found = _targets(pairs)
        require(
            list(found) == [iqn],
            "R7143-13.3-2",
            f"SendTargets={iqn} returned {sorted(found)}",
            sent=sent,
            received=received,
        )


@spec("Discovery.SendTargets.UnknownName", "RFC 7143 13.3", requirements=["R7143-13.3-2"])
async def test_send_targets_unknown_name(target: Any) -> None:
    """SendTargets=<a name the target does not have> lists no target."""
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        pairs, sent, received = await send_targets(
            raw, probe, "iqn.2024-01.org.iscsi-conformance:absent"
        )
        require(
            not _targets(pairs),
            "R7143-13.3-2",
            f"an unknown name returned {_targets(pairs)}",
            sent=sent,
            received=received,
        )


@spec(
    "Discovery.SendTargets.AclFiltering",
    "RFC 7143 13.3",
    requirements=["R7143-13.3-3"],
    needs=("acl_by_initiator_name",),
)
async def test_acl_hides_targets(target: Any) -> None:
    """A target restricted to another initiator is not revealed to us, but is to that initiator."""
    hidden = target.endpoint("acl").iqn
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        pairs, sent, received = await send_targets(raw, probe, "All")
        require(
            hidden not in _targets(pairs),
            "R7143-13.3-3",
            f"{hidden} revealed to an initiator outside its ACL",
            sent=sent,
            received=received,
        )
    async with target.raw() as raw:
        probe = await _discovery(target, raw, initiator_name=OTHER_INITIATOR_NAME)
        pairs, sent, received = await send_targets(raw, probe, "All")
        require(
            hidden in _targets(pairs),
            "R7143-13.3-1",
            f"{hidden} not listed for the initiator its ACL allows",
            sent=sent,
            received=received,
        )


@spec(
    "Discovery.SendTargets.LongerThanOnePdu",
    "RFC 7143 11.11",
    "RFC 7143 13.3",
    requirements=["R7143-11.10-2", "R7143-13.12-2"],
)
async def test_long_answer_is_continued(target: Any) -> None:
    """With MaxRecvDataSegmentLength=512 no Text Response exceeds 512 bytes; longer answers continue."""
    async with target.raw() as raw:
        probe = await _discovery(target, raw, mrdsl=512)
        pairs, sent, received = await send_targets(raw, probe, "All")
        big = [r for r in received if isinstance(r, P.TextResponse) and len(r.data) > 512]
        require(
            not big,
            "R7143-13.12-2",
            f"Text Response of {len(big[0].data) if big else 0} bytes exceeds our 512",
            sent=sent,
            received=received,
        )
        require(_targets(pairs), "R7143-13.3-1", "no target listed", sent=sent, received=received)
        for r in received[:-1]:
            require(
                r.cont or not r.final,
                "R7143-11.10-2",
                "an intermediate Text Response does not say it continues",
                sent=sent,
                received=received,
            )
            require(
                r.ttt != 0xFFFFFFFF,
                "R7143-11.10-2",
                "a continued Text Response has the reserved TTT",
                sent=sent,
                received=received,
            )


@spec("Discovery.SendTargets.InNormalSession", "RFC 7143 13.3", requirements=["R7143-13.3-2"])
async def test_send_targets_in_normal_session(target: Any) -> None:
    """In a Normal session SendTargets=<empty> returns the current target only."""
    iqn = target.endpoint().iqn
    async with target.raw() as raw:
        probe = await target.login(raw)
        pairs, sent, received = await send_targets(raw, probe, "")
        found = _targets(pairs)
        require(
            list(found) in ([iqn], []),
            "R7143-13.3-2",
            f"SendTargets= in a Normal session returned {sorted(found)}",
            sent=sent,
            received=received,
        )


@spec(
    "Discovery.SendTargets.AllInNormalSession",
    "RFC 7143 13.3",
    requirements=["R7143-13.3-4"],
    level="MUST",
)
async def test_send_targets_all_in_normal_session(target: Any) -> None:
    """SendTargets=All in a Normal session does not list other targets."""
    iqn = target.endpoint().iqn
    async with target.raw() as raw:
        probe = await target.login(raw)
        pairs, sent, received = await send_targets(raw, probe, "All")
        found = _targets(pairs)
        require(
            set(found) <= {iqn},
            "R7143-13.3-4",
            f"SendTargets=All in a Normal session listed {sorted(found)}",
            sent=sent,
            received=received,
        )
