"""Login.Keys.Obsolete: the marker keys of RFC 3720 that RFC 7143 13.25 obsoletes.

A responder may still receive them: OFMarker/IFMarker are answered Reject (SHOULD) or No
(MAY), OFMarkInt/IFMarkInt are answered Reject (MUST), and none of the four is ever
answered NotUnderstood (MUST NOT). ``Login.Keys.Obsolete.Markers`` grades the SHOULD;
this file holds the MUSTs."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.plugin import require, spec

#: Why a Login Request needs an answer at all.
ANSWER_RULE = (
    "RFC 7143 11.13 answers every Login Request with a Login Response, and 11.13.5 gives a "
    "failed login one too, with a non-zero status"
)
OBSOLETE = [
    ("OFMarker", "No"),
    ("IFMarker", "No"),
    ("OFMarkInt", "2048~8192"),
    ("IFMarkInt", "2048~8192"),
]


@spec(
    "Login.Keys.Obsolete.NeverNotUnderstood",
    "RFC 7143 13.25",
    requirements=["R7143-13.25-2", "R7143-11.13-1"],
)
async def test_obsolete_keys_never_not_understood(target: Any) -> None:
    """OFMarker=No, IFMarker=No, OFMarkInt and IFMarkInt offered in the operational
    stage: none is answered NotUnderstood, and the two MarkInt keys are answered Reject."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        s = await probe.security_none()
        require(
            s.succeeded,
            "R7143-11.13-1",
            s.missing(ANSWER_RULE) or f"AuthMethod=None refused ({s.status:#06x})",
            sent=probe.sent,
            received=probe.received,
        )
        step = await probe.step(OBSOLETE, csg=1, nsg=3, transit=True)
        require(
            step.response is not None,
            "R7143-11.13-1",
            step.missing(ANSWER_RULE),
            sent=probe.sent,
            received=probe.received,
        )
        if step.succeeded and not step.response.transit:
            await probe.operational(answering=step)
        later = probe.steps[probe.steps.index(step) :]
        answers = {k: [x.keys[k] for x in later if k in x.keys] for k, _ in OBSOLETE}
        not_understood = sorted(k for k, values in answers.items() if "NotUnderstood" in values)
        require(
            not not_understood,
            "R7143-13.25-2",
            f"{', '.join(not_understood)} answered NotUnderstood: a responder that receives an "
            "obsolete marker key MUST NOT answer it NotUnderstood (RFC 7143 13.25)",
            sent=probe.sent,
            received=probe.received,
        )
        if step.refused:
            return  # the MarkInt answers below are owed only in a login that went on
        for key in ("OFMarkInt", "IFMarkInt"):
            require(
                answers[key] and answers[key][-1] == "Reject",
                "R7143-13.25-2",
                f"{key} answered {answers[key][-1] if answers[key] else None!r}: a responder "
                "MUST answer OFMarkInt and IFMarkInt with Reject (RFC 7143 13.25)",
                sent=probe.sent,
                received=probe.received,
            )
