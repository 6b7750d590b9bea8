"""Login.Redirect: a target configured to redirect answers the login with status class 1
and a TargetAddress (RFC 7143 11.13.5, 13.8).

Redirection needs a target configured for it: these tests run only where a "redirect"
target profile exists (``harness/profiles.py``) and the target can serve it; otherwise
they skip with that reason.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from iscsi_conformance.harness.profiles import PROFILES
from iscsi_conformance.plugin import require, spec

PROFILE = "redirect"
ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:\d{1,5})?(,\d{1,5})?$")


def _need_profile() -> None:
    if PROFILE not in PROFILES:
        pytest.skip(f"no {PROFILE!r} target profile: redirection needs a target configured for it")


async def _redirected(target: Any, raw: Any) -> Any:
    probe = target.probe(raw, PROFILE)
    step = await probe.security_none()
    if step.succeeded and step.response.transit:
        step = await probe.operational([])
    return probe, step


@spec(
    "Login.Redirect.CarriesTargetAddress",
    "RFC 7143 11.13.5",
    "RFC 7143 13.8",
    requirements=["R7143-11.13-2", "R7143-13.8-1"],
)
async def test_redirect_carries_target_address(target: Any) -> None:
    """The redirecting Login Response has status 0101 or 0102 and a well-formed TargetAddress."""
    _need_profile()
    async with target.raw(PROFILE) as raw:
        probe, step = await _redirected(target, raw)
        require(
            step.status in (0x0101, 0x0102),
            "R7143-11.13-2",
            f"expected a redirection (0101/0102), got {step.status!r}",
            sent=probe.sent,
            received=probe.received,
        )
        address = step.keys.get("TargetAddress")
        require(
            address is not None and ADDRESS.match(address),
            "R7143-11.13-2",
            f"the redirection carries TargetAddress={address!r}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Redirect.ClosesConnection",
    "RFC 7143 11.13.5",
    requirements=["R7143-11.13-1"],
)
async def test_redirect_closes_connection(target: Any) -> None:
    """After the redirecting Login Response the target closes the connection."""
    _need_profile()
    async with target.raw(PROFILE) as raw:
        probe, step = await _redirected(target, raw)
        require(
            step.response is not None and step.response.status_class == 1,
            "R7143-11.13-2",
            f"expected a redirection, got {step.status!r}",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            await raw.expect_closed(timeout=10),
            "R7143-11.13-1",
            "the connection stayed open after the redirection",
            sent=probe.sent,
            received=probe.received,
        )
