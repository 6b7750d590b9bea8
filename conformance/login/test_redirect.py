"""Login.Redirect: a target configured to redirect answers the login with a redirection
status and a TargetAddress, then closes the connection (RFC 7143 11.13.5, 13.8).

Redirection needs a target configured for it: the "redirect" (temporary) and
"redirect-permanent" profiles (``harness/profiles.py``) send every login to
``REDIRECT_ADDRESS``, a loopback address nothing listens on. A target whose manifest
lacks ``login_redirect`` cannot serve them, and the tests skip saying so. The tests read
the answer and never follow it.
"""

from __future__ import annotations

import re
from typing import Any

from iscsi_conformance.harness.profiles import REDIRECT_ADDRESS
from iscsi_conformance.plugin import require, spec

ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:\d{1,5})?(,\d{1,5})?$")
STATUS = {"redirect": 0x0101, "redirect-permanent": 0x0102}  # RFC 7143 11.13.5


async def _redirected(target: Any, raw: Any, profile: str) -> Any:
    """Log in to ``profile``; 11.13.5 lets the target redirect before or after the
    security stage, so a successful security step is followed by the operational one."""
    probe = target.probe(raw, profile)
    step = await probe.security_none()
    if step.succeeded and step.response.transit:
        step = await probe.operational([])
    return probe, step


def _host_port(address: str) -> str:
    """``host[:port][,tag]`` as ``host:port`` (the port defaults to 3260, RFC 7143 13.8)."""
    where = address.split(",", 1)[0]
    if where.startswith("["):
        host, _, rest = where.partition("]")
        host += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = where.partition(":")
    return f"{host}:{port or '3260'}"


#: Why a redirection needs an answer (a failure message's end).
REDIRECT_RULE = (
    "RFC 7143 11.13.5: a target redirects with a Login Response of status class 01 that "
    "carries TargetAddress, and only then closes the connection"
)


async def _check_redirection(target: Any, profile: str) -> None:
    expected = STATUS[profile]
    async with target.raw(profile) as raw:
        probe, step = await _redirected(target, raw, profile)
        require(
            step.status == expected,
            "R7143-11.13-2",
            f"a target configured to redirect {'permanently' if expected == 0x0102 else 'temporarily'}"
            f" must answer status {expected:04x}, got "
            f"{step.missing(REDIRECT_RULE) if step.status is None else f'{step.status:04x}'}",
            sent=probe.sent,
            received=probe.received,
        )
        address = step.keys.get("TargetAddress")
        require(
            address is not None and ADDRESS.match(address) is not None,
            "R7143-13.8-1",
            f"the redirection must carry a TargetAddress of the form "
            f"domainname[:port][,portal-group-tag], got {address!r}",
            sent=probe.sent,
            received=probe.received,
        )
        assert address is not None
        require(
            "," not in address,
            "R7143-13.8-2",
            f"the redirection carries TargetAddress={address!r}: in a redirection the comma "
            "and portal group tag are omitted (RFC 7143 13.8)",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            _host_port(address) == _host_port(REDIRECT_ADDRESS),
            "R7143-11.13-2",
            f"the redirection names TargetAddress={address!r}, not the address the target "
            f"was configured to send initiators to ({REDIRECT_ADDRESS})",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Redirect.CarriesTargetAddress",
    "RFC 7143 11.13.5",
    "RFC 7143 13.8",
    requirements=["R7143-11.13-2", "R7143-13.8-1", "R7143-13.8-2"],
)
async def test_redirect_carries_target_address(target: Any) -> None:
    """A target that moved temporarily answers 0101 with the TargetAddress it was given, no tag."""
    await _check_redirection(target, "redirect")


@spec(
    "Login.Redirect.Permanent",
    "RFC 7143 11.13.5",
    "RFC 7143 13.8",
    requirements=["R7143-11.13-2", "R7143-13.8-1", "R7143-13.8-2"],
)
async def test_redirect_permanent(target: Any) -> None:
    """A target that moved permanently answers 0102 with the TargetAddress it was given, no tag."""
    await _check_redirection(target, "redirect-permanent")


@spec(
    "Login.Redirect.ClosesConnection",
    "RFC 7143 11.13.5",
    requirements=["R7143-11.13-1"],
)
async def test_redirect_closes_connection(target: Any) -> None:
    """After the redirecting Login Response the target closes the connection."""
    async with target.raw("redirect") as raw:
        probe, step = await _redirected(target, raw, "redirect")
        require(
            step.response is not None and step.response.status_class == 1,
            "R7143-11.13-2",
            f"expected a redirection (status class 1), got "
            f"{step.missing(REDIRECT_RULE) if step.status is None else f'{step.status:04x}'}",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            await raw.expect_closed(timeout=10),
            "R7143-11.13-1",
            "the connection stayed open 10 s after the redirection; with a non-zero status "
            "class the target closes it (RFC 7143 11.13.5)",
            sent=probe.sent,
            received=probe.received,
        )
