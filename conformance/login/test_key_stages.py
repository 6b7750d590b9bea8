"""Login.Keys.Stages: which keys a target negotiates in which login stage (RFC 7143 12,
13: only the security keys and the Any-Stage keys are used in the security stage)."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.plugin import require, spec

#: Why any Login Request needs an answer.
ANSWER_RULE = "RFC 7143 11.13: every Login Request is answered with a Login Response"
#: Answers to a key that negotiate nothing (RFC 7143 6.2): the reserved constants.
NOT_NEGOTIATED = ("NotUnderstood", "Irrelevant", "Reject")


@spec(
    "Login.Keys.Stages.OperationalKeyInSecurityStage",
    "RFC 7143 12",
    "RFC 7143 13",
    requirements=["R7143-12-1", "R7143-11.13-1"],
)
async def test_operational_key_not_negotiated_in_security_stage(target: Any) -> None:
    """MaxBurstLength (an operational key, not Any-Stage) offered in a security-stage
    Login Request is not negotiated there: the target refuses the login, leaves the key
    out of its security-stage answer, or answers it with a reserved constant; it never
    answers it with a value while CSG is 0."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.step(
            [("AuthMethod", "None"), ("MaxBurstLength", "262144")],
            csg=0,
            nsg=1,
            transit=False,
        )
        require(
            step.response is not None,
            "R7143-11.13-1",
            step.missing(ANSWER_RULE),
            sent=probe.sent,
            received=probe.received,
        )
        if step.refused:
            return
        answer = step.keys.get("MaxBurstLength")
        require(
            step.response.csg != 0 or answer is None or answer in NOT_NEGOTIATED,
            "R7143-12-1",
            f"MaxBurstLength offered in the security stage was answered {answer!r} in a "
            "security-stage Login Response (CSG=0): only the security keys and the Any-Stage "
            "keys are used in that stage, other keys MUST NOT be (RFC 7143 12, 13)",
            sent=probe.sent,
            received=probe.received,
        )
