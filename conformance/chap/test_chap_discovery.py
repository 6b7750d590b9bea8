"""CHAP on Discovery sessions of a target that requires it (RFC 7143 6.3.2, 12.1.3).

Discovery CHAP is a setting of the whole target, so these tests run on a reference
target instance of their own (``target.dedicated(discovery_chap=True)``, capability
``dedicated_instance``): the run's shared target keeps its Discovery sessions open to
every other test. Other targets skip, their report naming the missing capability."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.plugin import require, spec

#: Why a refused login still needs an answer (a failure message's second half).
REFUSAL_RULE = (
    "RFC 7143 6.3.2: when the security negotiation fails at the target, the target MUST "
    "send the appropriate Login Response (a non-zero status class, 0201 for a failed "
    "authentication, RFC 7143 11.13.5)"
)


@spec(
    "CHAP.Discovery.RequiredRefusesNone",
    "RFC 7143 6.3.2",
    "RFC 7143 12.1.3",
    requirements=["R7143-6.3.2-2", "R7143-12.1-1"],
    needs=("chap_algorithms=5", "discovery_auth", "dedicated_instance"),
)
async def test_discovery_chap_required(target: Any) -> None:
    """On a target that requires CHAP for Discovery sessions, a Discovery login offering
    only AuthMethod=None and asking to leave the security stage fails there with a Login
    Response of non-zero status (the security negotiation failed at the target), while
    one that authenticates with CHAP reaches full feature phase."""
    with target.dedicated(discovery_chap=True) as inst:
        async with inst.raw() as raw:
            probe = inst.probe(raw, session_type="Discovery", target_name=None)
            step = await probe.step([("AuthMethod", "None")], csg=0, nsg=1, transit=True)
            require(
                step.response is not None,
                "R7143-6.3.2-2",
                step.missing(REFUSAL_RULE),
                sent=probe.sent,
                received=probe.received,
            )
            require(
                step.refused,
                "R7143-6.3.2-2",
                f"a Discovery login without authentication was accepted by a target that "
                f"requires CHAP for discovery (status {step.status!r}, AuthMethod answered "
                f"{step.keys.get('AuthMethod')!r}); {REFUSAL_RULE}",
                sent=probe.sent,
                received=probe.received,
            )
        (user, secret), _ = inst.chap_pair("default")
        async with inst.raw() as raw:
            probe = inst.probe(raw, session_type="Discovery", target_name=None)
            step = await probe.chap(user, secret, algorithms=[5])
            if step.succeeded:
                await probe.operational([])
            require(
                probe.in_full_feature,
                "R7143-12.1-1",
                f"a Discovery login authenticated by CHAP with the configured secret did not "
                f"complete (status {step.status!r})",
                sent=probe.sent,
                received=probe.received,
            )
