"""Naming: iqn., eui. and naa. initiator names accepted; malformed names refused
(RFC 7143 4.2.7, RFC 3722)."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.plugin import require, spec

#: Why any Login Request needs an answer.
ANSWER_RULE = "RFC 7143 11.13: every Login Request is answered with a Login Response"
#: Why a refused login still needs an answer.
REFUSAL_RULE = (
    "RFC 7143 11.13.5: a login the target does not accept ends with a Login Response with "
    "a non-zero status class, and only then is the connection closed"
)

GOOD = {
    "IqnWithSuffix": "iqn.2024-01.org.iscsi-conformance:naming-probe",
    "IqnWithoutSuffix": "iqn.2024-01.org.iscsi-conformance.naming-probe",
    "Eui": "eui.02004567A425678D",
    "Naa16": "naa.52004567BA64678D",
    "Naa32": "naa.62004567BA64678D0123456789ABCDEF",
}
BAD = {
    "NoPrefix": "conformance-initiator",
    "IqnBadMonth": "iqn.2024-13.org.iscsi-conformance:x",
    "IqnNoDate": "iqn.org.iscsi-conformance:x",
    "EuiShort": "eui.02004567A425",
    "EuiNotHex": "eui.02004567A425678G",
    "NaaWrongLength": "naa.52004567BA64678D01",
    "TooLong": "iqn.2024-01.org.iscsi-conformance:" + "x" * 200,
    "Empty": "",
}


def _make_good(label: str, name: str) -> Any:
    @spec(f"Naming.Initiator.Accepted.{label}", "RFC 7143 4.2.7", requirements=["R7143-4.2.7-1"])
    async def test(target: Any) -> None:
        async with target.raw() as raw:
            probe = target.probe(raw, initiator_name=name)
            await probe.to_full_feature([])
            require(
                probe.in_full_feature,
                "R7143-4.2.7-1",
                probe.steps[-1].missing(ANSWER_RULE)
                or f"the valid initiator name {name!r} was refused ({probe.steps[-1].status!r})",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"The valid name {name} logs in."
    return test


def _make_bad(label: str, name: str) -> Any:
    @spec(
        f"Naming.Initiator.Refused.{label}",
        "RFC 7143 4.2.7",
        level="INFORMATIONAL",
        requirements=["R7143-4.2.7-5"],
    )
    async def test(target: Any) -> None:
        async with target.raw() as raw:
            probe = target.probe(raw, initiator_name=name)
            await probe.to_full_feature([])
            require(
                not probe.in_full_feature,
                "R7143-4.2.7-5",
                f"the malformed initiator name {name!r} was accepted",
                sent=probe.sent,
                received=probe.received,
            )
            last = probe.steps[-1]
            require(
                last.refused and last.response.status_class == 2,
                "R7143-4.2.7-5",
                last.missing(REFUSAL_RULE)
                or f"a malformed name is the initiator's error: expected 02xx, got {last.status!r}",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"The malformed name {name[:40]!r} is refused with an initiator error."
    return test


for _label, _name in GOOD.items():
    globals()[f"test_accepts_{_label}"] = _make_good(_label, _name)
for _label, _name in BAD.items():
    globals()[f"test_refuses_{_label}"] = _make_bad(_label, _name)
