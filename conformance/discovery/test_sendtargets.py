"""Discovery.SendTargets: All, a named target, ACL filtering, address formats,
portal groups, and answers longer than one PDU (RFC 7143 13.3, 13.8, 11.10, 11.11 and
appendix C, "SendTargets Operation").

Every SendTargets is a Text Request, and a Text Request is answered with Text Responses
(11.11): silence or a hang-up never conforms, and an empty answer conforms only where
the RFC's answer is "no target" (a name the target does not have). Appendix C says what
the answer lists: in a Discovery session, All MUST be supported and lists every target
the initiator may access; a name lists that target only. In a Normal session SendTargets
with no value MUST be supported and lists the target the session is logged in to, and
All MUST NOT be supported.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.text import format_pairs, parse_pairs
from iscsi_conformance.errors import TransportError
from iscsi_conformance.harness.probe import NoAnswer
from iscsi_conformance.harness.profiles import OTHER_INITIATOR_NAME
from iscsi_conformance.plugin import require, spec, violation

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


#: Why a SendTargets needs an answer in a Discovery session (a failure message's end).
DISCOVERY_RULE = (
    "RFC 7143 appendix C: a target MUST support SendTargets in a Discovery session, and a "
    "Text Request is answered with a Text Response (11.11)"
)
#: Why SendTargets with no value needs an answer in a Normal session.
NORMAL_RULE = (
    "RFC 7143 appendix C: SendTargets with no value MUST be supported in a Normal session "
    "and reports the target the session is logged in to; a Text Request is answered with "
    "a Text Response (11.11)"
)


@dataclasses.dataclass
class Answer:
    """One SendTargets exchange: the text the target answered (continuations joined),
    what went each way, and what ended it when no final Text Response did."""

    pairs: list[tuple[str, str]]
    sent: list[Any]
    received: list[Any]  # with a NoAnswer in place of a missing Text Response
    gap: NoAnswer | None = None  # closed, silent or undecodable instead of an answer
    other: Any | None = None  # a PDU other than a Text Response (a Reject) that ended it

    def require_text(self, requirement: str, rule: str) -> None:
        """Fail unless Text Responses answered the request to the end (final, C=0)."""
        __tracebackhide__ = True
        if self.gap is not None:
            message = f"{self.gap.describe('Text Response')}; {rule}"
        elif self.other is not None:
            message = (
                f"the Text Request was answered with a {type(self.other).__name__}, not a "
                f"Text Response; {rule}"
            )
        else:
            return
        raise violation(requirement, message, sent=self.sent, received=self.received)


async def send_targets(raw: Any, probe: Any, value: str, *, itt: int = 0x100) -> Answer:
    """Full-feature Text Request SendTargets=value, following continuations (C bit)."""
    answer = Answer([], [], [])
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
        started = time.monotonic()
        try:
            await raw.send(req)
        except (TransportError, ConnectionError, OSError):
            pass  # already closed by the target: the recv below says so
        answer.sent.append(req)
        resp = await raw.recv(timeout=probe.timeout)
        if resp is None:
            answer.gap = NoAnswer(raw.last_outcome, time.monotonic() - started, probe.timeout)
            answer.received.append(answer.gap)
            break
        answer.received.append(resp)
        if not isinstance(resp, P.TextResponse):
            answer.other = resp
            break
        probe.expstatsn = (resp.statsn + 1) & 0xFFFFFFFF
        data += resp.data
        if resp.final and not resp.cont:
            break
        ttt = resp.ttt
        payload = b""
    answer.pairs = parse_pairs(bytes(data)) if data else []
    return answer


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


@spec("Discovery.SendTargets.All", "RFC 7143 13.3", "RFC 7143 C", requirements=["R7143-13.3-1"])
async def test_send_targets_all(target: Any) -> None:
    """SendTargets=All lists the target we can log in to, with at least one address."""
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        answer = await send_targets(raw, probe, "All")
        answer.require_text("R7143-13.3-1", DISCOVERY_RULE)
        found = _targets(answer.pairs)
        iqn = target.endpoint().iqn
        require(
            iqn in found,
            "R7143-13.3-1",
            f"{iqn} missing from SendTargets=All: {sorted(found)}",
            sent=answer.sent,
            received=answer.received,
        )
        require(
            found[iqn],
            "R7143-13.3-1",
            f"{iqn} listed without a TargetAddress",
            sent=answer.sent,
            received=answer.received,
        )


@spec("Discovery.SendTargets.AddressFormat", "RFC 7143 13.8", requirements=["R7143-13.8-1"])
async def test_target_address_format(target: Any) -> None:
    """Every TargetAddress is host[:port],tpgt with IPv6 literals in brackets."""
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        answer = await send_targets(raw, probe, "All")
        answer.require_text("R7143-13.3-1", DISCOVERY_RULE)
        sent, received = answer.sent, answer.received
        addresses = [v for k, v in answer.pairs if k == "TargetAddress"]
        require(addresses, "R7143-13.3-1", "no TargetAddress at all", sent=sent, received=received)
        bad = [a for a in addresses if not ADDRESS.match(a)]
        require(
            not bad,
            "R7143-13.8-1",
            f"malformed TargetAddress values: {bad}",
            sent=sent,
            received=received,
        )


@spec(
    "Discovery.SendTargets.AddressOfThisPortal",
    "RFC 7143 C",
    "RFC 7143 13.8",
    requirements=["R7143-13.3-1"],
)
async def test_target_address_includes_this_portal(target: Any) -> None:
    """The record of the target we reached lists the port we reached it on: a Discovery
    session returns all path information (address-port pairs and portal group tags) of
    the targets the initiator may access, so a portal that carries a login is among
    them; a record without any TargetAddress means the address of this connection.

    The port compared is the endpoint's own (the portal initiators on the target's
    network dial), not a port published for the suite. Skipped for a target whose
    manifest has ``nat_portal``: its driver knows only the forwarded port."""
    if target.manifest.supports("nat_portal"):
        pytest.skip(
            f"{target.name} sits behind NAT (nat_portal): the port it advertises is not the "
            "forwarded port the suite dials"
        )
    # The endpoint's own port is the one initiators on the target's network dial (a
    # container's portal); the suite may reach it through a published port (host_side).
    endpoint = target.endpoint()
    iqn, port = endpoint.iqn, endpoint.port
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        answer = await send_targets(raw, probe, "All")
        answer.require_text("R7143-13.3-1", DISCOVERY_RULE)
        addresses = _targets(answer.pairs).get(iqn)
        require(
            addresses is not None,
            "R7143-13.3-1",
            f"SendTargets=All did not list {iqn}, the target this initiator logs in to",
            sent=answer.sent,
            received=answer.received,
        )
        if not addresses:
            return  # no TargetAddress: the address of this connection (appendix C)
        ports = []
        for value in addresses:
            hostport = value.rsplit(",", 1)[0]
            tail = hostport.rsplit("]", 1)[-1]  # past an IPv6 literal
            ports.append(int(tail.rsplit(":", 1)[1]) if ":" in tail else 3260)
        require(
            port in ports,
            "R7143-13.3-1",
            f"the record of {iqn} lists TargetAddress {addresses}, none on port {port}, the "
            "portal this login reached: a Discovery session returns all path information "
            "(address-port pairs) of the targets the initiator may access (RFC 7143 "
            "appendix C, MUST)",
            sent=answer.sent,
            received=answer.received,
        )


@spec("Discovery.SendTargets.Named", "RFC 7143 13.3", "RFC 7143 C", requirements=["R7143-13.3-2"])
async def test_send_targets_named(target: Any) -> None:
    """SendTargets=<name> returns only that target."""
    iqn = target.endpoint().iqn
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        answer = await send_targets(raw, probe, iqn)
        answer.require_text("R7143-13.3-2", DISCOVERY_RULE)
        found = _targets(answer.pairs)
        require(
            iqn in found,
            "R7143-13.3-2",
            f"SendTargets={iqn} returned {sorted(found)}, without the named target (appendix C: "
            "a Discovery session MUST support a named value and be able to return it)",
            sent=answer.sent,
            received=answer.received,
        )
        # "only the named target, if possible" is a lower-case should in appendix C
        require(
            list(found) == [iqn],
            "R7143-13.3-2",
            f"SendTargets={iqn} also returned {sorted(set(found) - {iqn})} (appendix C: the "
            "session should, lower case, answer with the named target only)",
            sent=answer.sent,
            received=answer.received,
            level="INFORMATIONAL",
        )


@spec(
    "Discovery.SendTargets.UnknownName",
    "RFC 7143 13.3",
    "RFC 7143 C",
    requirements=["R7143-13.3-2"],
)
async def test_send_targets_unknown_name(target: Any) -> None:
    """SendTargets=<a name the target does not have> is answered, and lists no target.

    Conforms: Text Responses whose text holds no target record (an empty text is the
    answer "no such target", appendix C). Not: silence, a hang-up, a Reject PDU, any
    target listed."""
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        answer = await send_targets(raw, probe, "iqn.2024-01.org.iscsi-conformance:absent")
        answer.require_text("R7143-13.3-2", DISCOVERY_RULE)
        # no keyword forbids listing targets for a name the target does not have: appendix
        # C's "only the named target" is a lower-case should
        require(
            not _targets(answer.pairs),
            "R7143-13.3-2",
            f"an unknown name returned {_targets(answer.pairs)} (appendix C: the session "
            "should, lower case, answer with the named target only)",
            sent=answer.sent,
            received=answer.received,
            level="INFORMATIONAL",
        )


@spec(
    "Discovery.SendTargets.AclFiltering",
    "RFC 7143 13.3",
    "RFC 7143 C",
    level="INFORMATIONAL",
    requirements=["R7143-13.3-3"],
    needs=("acl_by_initiator_name",),
)
async def test_acl_hides_targets(target: Any) -> None:
    """A target restricted to another initiator is not revealed to us, but is to that initiator."""
    hidden = target.endpoint("acl").iqn
    async with target.raw() as raw:
        probe = await _discovery(target, raw)
        answer = await send_targets(raw, probe, "All")
        answer.require_text("R7143-13.3-1", DISCOVERY_RULE)
        require(
            hidden not in _targets(answer.pairs),
            "R7143-13.3-3",
            f"{hidden} revealed to an initiator outside its ACL",
            sent=answer.sent,
            received=answer.received,
        )
    async with target.raw() as raw:
        probe = await _discovery(target, raw, initiator_name=OTHER_INITIATOR_NAME)
        answer = await send_targets(raw, probe, "All")
        answer.require_text("R7143-13.3-1", DISCOVERY_RULE)
        require(
            hidden in _targets(answer.pairs),
            "R7143-13.3-1",
            f"{hidden} not listed for the initiator its ACL allows",
            sent=answer.sent,
            received=answer.received,
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
        answer = await send_targets(raw, probe, "All")
        answer.require_text("R7143-13.3-1", DISCOVERY_RULE)
        pairs, sent, received = answer.pairs, answer.sent, answer.received
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


@spec(
    "Discovery.SendTargets.InNormalSession",
    "RFC 7143 13.3",
    "RFC 7143 C",
    requirements=["R7143-13.3-2"],
)
async def test_send_targets_in_normal_session(target: Any) -> None:
    """In a Normal session SendTargets=<empty> lists the target the session is logged in to,
    and that target only.

    Conforms (appendix C: this value MUST be supported on a Normal session and MUST NOT
    return other targets): Text Responses whose text is the session's own target record.
    Not: silence, a hang-up, a Reject PDU, an empty text, any other target."""
    iqn = target.endpoint().iqn
    async with target.raw() as raw:
        probe = await target.login(raw)
        answer = await send_targets(raw, probe, "")
        answer.require_text("R7143-13.3-2", NORMAL_RULE)
        found = _targets(answer.pairs)
        require(
            list(found) == [iqn],
            "R7143-13.3-2",
            f"SendTargets= in a Normal session to {iqn} listed {sorted(found)}"
            + (f" (text {answer.pairs})" if answer.pairs and not found else "")
            + f": {NORMAL_RULE}",
            sent=answer.sent,
            received=answer.received,
        )


@spec(
    "Discovery.SendTargets.AllInNormalSession",
    "RFC 7143 13.3",
    "RFC 7143 C",
    requirements=["R7143-13.3-4"],
    level="MUST",
)
async def test_send_targets_all_in_normal_session(target: Any) -> None:
    """SendTargets=All in a Normal session is refused, or answered with the session's
    own target only: it never lists other targets.

    Appendix C: All MUST NOT be supported on an operational session. Conforms: the
    value refused in the text, SendTargets=Reject (or Irrelevant, RFC 7143 6.2); the
    Text Request refused with a Reject PDU (11.17); the session's own target record, as
    for SendTargets with no value. Not: silence, a hang-up (the target must answer a
    Text Request, 11.11), an empty text (it neither refuses the value nor answers it),
    any other target."""
    iqn = target.endpoint().iqn
    async with target.raw() as raw:
        probe = await target.login(raw)
        answer = await send_targets(raw, probe, "All")
        if isinstance(answer.other, P.Reject):
            return
        answer.require_text(
            "R7143-13.3-4",
            "RFC 7143 11.11: a Text Request is answered with a Text Response; appendix C "
            "has the target refuse All in a Normal session",
        )
        if dict(answer.pairs).get("SendTargets") in ("Reject", "Irrelevant"):
            return
        found = _targets(answer.pairs)
        require(
            found,
            "R7143-13.3-4",
            f"SendTargets=All in a Normal session was answered with {answer.pairs or 'an empty text'}: "
            "neither refused (SendTargets=Reject, RFC 7143 6.2) nor the session's own target",
            sent=answer.sent,
            received=answer.received,
        )
        require(
            set(found) == {iqn},
            "R7143-13.3-4",
            f"SendTargets=All in a Normal session to {iqn} listed {sorted(found)}: appendix C "
            "has All unsupported there, and a Normal session reports its own target only",
            sent=answer.sent,
            received=answer.received,
        )
