"""Login.Keys: every RFC 7143 section 13 key, offered legally and illegally.

Cases are generated from the one key table (``core.keys.KEYS``): each key gets its
own stable test ID, so a deviation can name exactly one key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iscsi_conformance.core.keys import KEYS, ResultFunction, ValueKind
from iscsi_conformance.core.text import parse_number
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.plugin import require, spec, violation

NEGOTIATED_NUMBERS = [
    k
    for k in KEYS.values()
    if k.kind is ValueKind.NUMBER and k.result_function in (ResultFunction.MIN, ResultFunction.MAX)
]
BOOLEANS = [
    k
    for k in KEYS.values()
    if k.kind is ValueKind.BOOLEAN and k.result_function in (ResultFunction.AND, ResultFunction.OR)
]

KEY_REQ = {
    "MaxConnections": "R7143-13.2-1",
    "MaxBurstLength": "R7143-13.13-1",
    "FirstBurstLength": "R7143-13.14-1",
    "DefaultTime2Wait": "R7143-13.15-1",
    "DefaultTime2Retain": "R7143-13.16-1",
    "MaxOutstandingR2T": "R7143-13.17-1",
    "ErrorRecoveryLevel": "R7143-13.20-1",
    "iSCSIProtocolLevel": "R7143-13.24-1",
    "InitialR2T": "R7143-13.10-1",
    "ImmediateData": "R7143-13.11-1",
    "DataPDUInOrder": "R7143-13.18-1",
    "DataSequenceInOrder": "R7143-13.19-1",
}


# Keys newer than RFC 3720: a target at that level answers NotUnderstood, which the
# originator reads as level 0 (RFC 7144 4.2.1; as in Login.Keys.ProtocolLevel.Higher).
MAY_BE_UNKNOWN = frozenset({"iSCSIProtocolLevel"})


def _number(value: str) -> int | None:
    """``value`` as a number (decimal or 0x hex, RFC 7143 6.1), or None."""
    try:
        return parse_number(value)
    except (ValueError, ProtocolError):
        return None


def _section(key: Any) -> str:
    return key.section.split("/")[0].strip()


def _offer_for(key: Any) -> int:
    """A legal value that differs from the default, so the answer shows the rule."""
    assert key.min is not None and key.max is not None
    default = int(key.default) if key.default is not None else key.min
    if key.result_function is ResultFunction.MIN:
        return max(key.min, min(key.max, default // 2 if default > key.min else default))
    return min(key.max, default + 1)


#: Why a Login Request needs an answer at all (the failure message's second half).
ANSWER_RULE = (
    "RFC 7143 11.13 answers every Login Request with a Login Response, and 11.13.5 gives a "
    "failed login one too, with a non-zero status"
)
#: Why an offered key needs an answer (RFC 7143 6.2, 6.2.2).
KEY_RULE = (
    "the acceptor answers a key offered to it with the same key (RFC 7143 6.2.2: a "
    "numerical offer is always answered; 6.2: NotUnderstood when it does not know the "
    "key); only declarative keys, and boolean offers that fix the result, go unanswered"
)


def _failed(step: Any, what: str) -> str:
    """The message for a login that did not go on: what happened, and why it matters."""
    if step.response is None:
        return step.missing(ANSWER_RULE)
    if getattr(step.response, "status_class", None) is None:
        return f"{what} was answered with a {type(step.response).__name__}, not a Login Response"
    return f"{what} made the login fail (status {step.status:#06x})"


def _require_answer(probe: Any, step: Any, requirement: str) -> None:
    """The login step got a Login Response (any status); silence and a hang-up fail
    under ``requirement``, saying which (``ANSWER_RULE``)."""
    __tracebackhide__ = True
    require(
        step.response is not None,
        requirement,
        step.missing(ANSWER_RULE),
        sent=probe.sent,
        received=probe.received,
    )


async def _answer(target: Any, pairs: list[tuple[str, str]]) -> tuple[Any, Any]:
    async with target.raw() as raw:
        probe = target.probe(raw)
        s = await probe.security_none()
        if not s.succeeded:
            raise violation(
                "R7143-6.3.1-2",
                _failed(s, "AuthMethod=None, to a target that needs no authentication,"),
                sent=probe.sent,
                received=probe.received,
            )
        step = await probe.step(pairs, csg=1, nsg=3, transit=True)
        await _rest_of_stage(probe, step)
        return probe, step


async def _rest_of_stage(probe: Any, step: Any) -> None:
    """When the target answered with T=0 (it has offers of its own, or answers later:
    RFC 7143 6.2 lets an answer come in a later response of the same stage), finish the
    operational stage so that every answer the target gives is in ``probe.steps``."""
    if step.succeeded and not step.response.transit:
        await probe.operational(answering=step)


def _answer_to(probe: Any, step: Any, key: str) -> str | None:
    """The target's last answer to ``key`` from ``step`` on (None: never answered)."""
    later = probe.steps[probe.steps.index(step) :]
    values = [s.keys[key] for s in later if key in s.keys]
    return values[-1] if values else None


def _make_result_function_test(key: Any) -> Callable[..., Any]:
    req = [KEY_REQ.get(key.name, "R7143-6.2.2-1"), "R7143-6.2.2-1"]

    @spec(
        f"Login.Keys.{key.name}.ResultFunction", _section(key), "RFC 7143 6.2.2", requirements=req
    )
    async def test(target: Any) -> None:
        offer = _offer_for(key)
        probe, step = await _answer(target, [(key.name, str(offer))])
        require(
            step.succeeded,
            req[0],
            _failed(step, f"a legal {key.name}={offer}"),
            sent=probe.sent,
            received=probe.received,
        )
        value = _answer_to(probe, step, key.name)
        # Conforms: the key answered with a number by the key's rule, or NotUnderstood
        # from a target older than the key (MAY_BE_UNKNOWN). Not: no answer at all.
        require(
            value is not None,
            "R7143-6.2-4",
            f"the login went on but {key.name}={offer} was never answered: {KEY_RULE}",
            sent=probe.sent,
            received=probe.received,
        )
        if value == "NotUnderstood" and key.name in MAY_BE_UNKNOWN:
            return
        require(
            value not in ("Reject", "NotUnderstood", "Irrelevant"),
            req[0],
            f"{key.name} is a standard key; the answer {value!r} refuses a legal offer",
            sent=probe.sent,
            received=probe.received,
        )
        n = parse_number(value)
        require(
            key.min <= n <= key.max,
            req[0],
            f"answer {key.name}={n} is outside {key.min}..{key.max}",
            sent=probe.sent,
            received=probe.received,
        )
        if key.result_function is ResultFunction.MIN:
            require(
                n <= offer,
                "R7143-6.2.2-1",
                f"{key.name} uses the minimum function: answer {n} exceeds the offer {offer}",
                sent=probe.sent,
                received=probe.received,
            )
        else:
            require(
                n >= offer,
                "R7143-6.2.2-1",
                f"{key.name} uses the maximum function: answer {n} is below the offer {offer}",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"The answer to {key.name} follows its result function and range."
    return test


def _make_out_of_range_test(key: Any, value: int, label: str) -> Callable[..., Any]:
    @spec(
        f"Login.Keys.{key.name}.{label}",
        _section(key),
        "RFC 7143 6.2.2",
        requirements=["R7143-6.2.2-3", "R7143-6.2-5"],
    )
    async def test(target: Any) -> None:
        # Conforms (RFC 7143 6.2.2: an inadmissible value "MAY be answered with the
        # constant Reject", or the acceptor selects an admissible value): the key answered
        # Reject; the key answered with a value inside the key's range; the login ended
        # as the initiator's error (a Login Response with status class 02, 11.13.5);
        # NotUnderstood from a target older than the key. Not: silence, a hang-up, the
        # key left unanswered, or an answer outside the range.
        probe, step = await _answer(target, [(key.name, str(value))])
        _require_answer(probe, step, "R7143-6.2.2-3")
        if step.refused:
            require(
                step.response.status_class == 2,
                "R7143-11.13-1",
                f"an illegal {key.name} is the initiator's error: expected status class 02, got {step.status:#06x}",
                sent=probe.sent,
                received=probe.received,
            )
            return
        answer = _answer_to(probe, step, key.name)
        if answer == "Reject" or (answer == "NotUnderstood" and key.name in MAY_BE_UNKNOWN):
            return
        require(
            answer is not None,
            "R7143-6.2.2-3",
            f"{key.name}={value} (outside {key.min}..{key.max}) was never answered: {KEY_RULE}",
            sent=probe.sent,
            received=probe.received,
        )
        n = _number(answer)
        require(
            n is not None and key.min <= n <= key.max,
            "R7143-6.2.2-3",
            f"{key.name}={value} is outside {key.min}..{key.max}; the target may answer Reject or "
            f"select a value inside the range (RFC 7143 6.2.2), it answered {answer!r}",
            sent=probe.sent,
            received=probe.received,
        )

    test.__doc__ = (
        f"An out-of-range {key.name} ({value}) is answered Reject or with an admissible value."
    )
    return test


def _make_boolean_test(key: Any) -> Callable[..., Any]:
    # AND: offering No forces No; OR: offering Yes forces Yes (RFC 7143 6.2.2)
    offer = "No" if key.result_function is ResultFunction.AND else "Yes"
    req = [KEY_REQ.get(key.name, "R7143-6.2.2-2"), "R7143-6.2.2-2"]

    @spec(
        f"Login.Keys.{key.name}.ResultFunction", _section(key), "RFC 7143 6.2.2", requirements=req
    )
    async def test(target: Any) -> None:
        probe, step = await _answer(target, [(key.name, offer)])
        require(
            step.succeeded,
            req[0],
            _failed(step, f"the legal {key.name}={offer}"),
            sent=probe.sent,
            received=probe.received,
        )
        answer = _answer_to(probe, step, key.name)
        # RFC 7143 6.2.2: this offer fixes the outcome, so the answer is optional.
        require(
            answer in (None, offer),
            "R7143-6.2.2-2",
            f"{key.name} uses the {key.result_function.name} function: offered {offer}, the only "
            f"admissible answer is {offer} (or none), got {answer!r}",
            sent=probe.sent,
            received=probe.received,
        )

    test.__doc__ = (
        f"The answer to {key.name}={offer} obeys the {key.result_function.name} function."
    )
    return test


def _make_boolean_illegal_test(key: Any) -> Callable[..., Any]:
    @spec(
        f"Login.Keys.{key.name}.IllegalValue",
        _section(key),
        "RFC 7143 6.2.2",
        requirements=["R7143-6.2-5", "R7143-6.1-5"],
    )
    async def test(target: Any) -> None:
        probe, step = await _answer(target, [(key.name, "Maybe")])
        # Conforms (RFC 7143 6.2.2, as RFC 3720 5.2.2 words it: an inadmissible value
        # "MAY be answered with the constant Reject" or the acceptor "MAY select an
        # admissible value"): Reject; Yes or No, the values a boolean admits; a failed
        # login (a Login Response with a non-zero status, 11.13.5). Not: silence, a
        # hang-up, the key left unanswered ("Maybe" decides no result by itself, so the
        # boolean exception of 6.2.2 does not apply), any other answer.
        _require_answer(probe, step, "R7143-6.2-5")
        if step.refused:
            return
        answer = _answer_to(probe, step, key.name)
        require(
            answer in ("Reject", "Yes", "No"),
            "R7143-6.2-5",
            f"{key.name}=Maybe is not a boolean; expected Reject, an admissible Yes or No, or a "
            f"failed login, got {answer!r}" + ("" if answer else f"; {KEY_RULE}"),
            sent=probe.sent,
            received=probe.received,
        )

    test.__doc__ = f"{key.name}=Maybe (not a boolean) is refused or answered with Yes or No."
    return test


for _key in NEGOTIATED_NUMBERS:
    globals()[f"test_{_key.name}_result_function"] = _make_result_function_test(_key)
    if _key.max is not None:
        globals()[f"test_{_key.name}_above_maximum"] = _make_out_of_range_test(
            _key, _key.max + 1, "AboveMaximum"
        )
    if _key.min is not None and _key.min > 0:
        globals()[f"test_{_key.name}_below_minimum"] = _make_out_of_range_test(
            _key, _key.min - 1, "BelowMinimum"
        )
for _key in BOOLEANS:
    globals()[f"test_{_key.name}_result_function"] = _make_boolean_test(_key)
    globals()[f"test_{_key.name}_illegal_value"] = _make_boolean_illegal_test(_key)


# --------------------------------------------------------------------------- declarative


@spec(
    "Login.Keys.MaxRecvDataSegmentLength.BelowMinimum",
    ("RFC 7143", "13.12", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-13.12-3", "R7143-11.13-1"],
)
async def test_mrdsl_below_minimum(target: Any) -> None:
    """MaxRecvDataSegmentLength=511 is out of range and is refused.

    A robustness check (R7143-13.12-3: the key is declarative, no keyword says how an
    out-of-range declaration is answered); the request is still owed a Login Response."""
    probe, step = await _answer(target, [("MaxRecvDataSegmentLength", "511")])
    _require_answer(probe, step, "R7143-11.13-1")
    if step.refused:
        return
    require(
        step.keys.get("MaxRecvDataSegmentLength") == "Reject",
        "R7143-13.12-3",
        "MaxRecvDataSegmentLength=511 is below 512: expected Reject or a failed login",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.MaxRecvDataSegmentLength.AboveMaximum",
    ("RFC 7143", "13.12", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-13.12-3", "R7143-11.13-1"],
)
async def test_mrdsl_above_maximum(target: Any) -> None:
    """MaxRecvDataSegmentLength=2^24 is out of range and is refused.

    A robustness check (R7143-13.12-3: the key is declarative, no keyword says how an
    out-of-range declaration is answered); the request is still owed a Login Response."""
    probe, step = await _answer(target, [("MaxRecvDataSegmentLength", str(1 << 24))])
    _require_answer(probe, step, "R7143-11.13-1")
    if step.refused:
        return
    require(
        step.keys.get("MaxRecvDataSegmentLength") == "Reject",
        "R7143-13.12-3",
        "MaxRecvDataSegmentLength=16777216 is above 2^24-1: expected Reject or a failed login",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.MaxRecvDataSegmentLength.TargetDeclares",
    "RFC 7143 13.12",
    requirements=["R7143-13.12-1"],
)
async def test_mrdsl_target_declaration_in_range(target: Any) -> None:
    """The target's own MaxRecvDataSegmentLength, if declared, is within 512..2^24-1."""
    async with target.raw() as raw:
        probe = await target.login(raw, keys=[("MaxRecvDataSegmentLength", "8192")])
        value = probe.negotiated.get("MaxRecvDataSegmentLength")
        if value is None:
            return  # default 8192 applies
        n = parse_number(value)
        require(
            512 <= n <= (1 << 24) - 1,
            "R7143-13.12-1",
            f"declared MaxRecvDataSegmentLength={n} is out of range",
            sent=probe.sent,
            received=probe.received,
        )


@spec("Login.Keys.NumberEncodings.Hexadecimal", "RFC 7143 6.1", requirements=["R7143-6.1-4"])
async def test_number_in_hex(target: Any) -> None:
    """A numerical value written in hexadecimal (0x...) is understood."""
    probe, step = await _answer(target, [("MaxBurstLength", "0x10000")])
    require(
        step.succeeded,
        "R7143-6.1-4",
        _failed(step, "MaxBurstLength=0x10000 (hex)"),
        sent=probe.sent,
        received=probe.received,
    )
    answer = _answer_to(probe, step, "MaxBurstLength")
    require(
        answer is not None and answer not in ("Reject", "NotUnderstood"),
        "R7143-6.1-4",
        f"hexadecimal 0x10000 was not accepted: {answer!r}" + ("" if answer else f"; {KEY_RULE}"),
        sent=probe.sent,
        received=probe.received,
    )
    require(
        parse_number(answer) <= 0x10000,
        "R7143-6.2.2-1",
        f"MaxBurstLength answer {answer} exceeds the offer 65536",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.NumberEncodings.Base64",
    ("RFC 7143", "6.1", "INFORMATIONAL", "target"),
    "RFC 7143 6.2",
    requirements=["R7143-6.1-5", "R7143-6.2.2-1", "R7143-6.2-4", "R7143-6.2-5"],
    level="MUST",
)
async def test_number_in_base64(target: Any) -> None:
    """MaxBurstLength=0bAQAA: a numerical-value is decimal or hex only (RFC 7143 6.1; base64
    is for binary and large numerical values), so the target may refuse it (Reject or an
    initiator error) or read it as 65536; it never answers above 65536 or NotUnderstood.

    How a receiver treats a malformed value has no keyword read (R7143-6.1-5, a robustness
    check); the offer is still owed an answer (R7143-6.2-5, R7143-6.2-4)."""
    probe, step = await _answer(target, [("MaxBurstLength", "0bAQAA")])
    _require_answer(probe, step, "R7143-6.2-5")
    if step.refused:
        require(
            step.response.status_class == 2,
            "R7143-11.13-1",
            f"a malformed MaxBurstLength is the initiator's error: expected status class 02, "
            f"got {step.status!r}",
            sent=probe.sent,
            received=probe.received,
        )
        return
    answer = _answer_to(probe, step, "MaxBurstLength")
    if answer == "Reject":
        return
    require(
        answer is not None and answer != "NotUnderstood",
        "R7143-6.2-4",
        f"MaxBurstLength=0bAQAA was answered {answer!r}: neither refused nor read as a number"
        + ("" if answer else f"; {KEY_RULE}"),
        sent=probe.sent,
        received=probe.received,
    )
    require(
        parse_number(answer) <= 65536,
        "R7143-6.2.2-1",
        f"MaxBurstLength answer {answer} exceeds the offer 65536",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.FirstBurstLength.NotAboveMaxBurstLength",
    "RFC 7143 13.14",
    requirements=["R7143-13.14-1"],
)
async def test_first_burst_not_above_max_burst(target: Any) -> None:
    """Offered FirstBurstLength=65536 with MaxBurstLength=16384, the target does not agree a
    FirstBurstLength above the MaxBurstLength it answers: it lowers it, answers Reject, or
    fails the login as the initiator's error."""
    offer = [
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "16384"),
    ]
    # Conforms: a Login Response with status class 02 (11.13.5); Reject for either key;
    # FirstBurstLength=Irrelevant (the target agreed InitialR2T=Yes and ImmediateData=No,
    # 13.14); both answered, FirstBurstLength not above MaxBurstLength. Not: silence, a
    # hang-up, either key left unanswered (both are numerical offers, 6.2.2).
    probe, step = await _answer(target, offer)
    _require_answer(probe, step, "R7143-13.14-1")
    if step.refused:
        require(
            step.response.status_class == 2,
            "R7143-11.13-1",
            f"expected an initiator error (02xx), got {step.status:#06x}",
            sent=probe.sent,
            received=probe.received,
        )
        return
    first = _answer_to(probe, step, "FirstBurstLength")
    most = _answer_to(probe, step, "MaxBurstLength")
    unanswered = [
        k for k, v in (("FirstBurstLength", first), ("MaxBurstLength", most)) if v is None
    ]
    require(
        not unanswered,
        "R7143-6.2-4",
        f"the login went on but {unanswered} was never answered: {KEY_RULE}",
        sent=probe.sent,
        received=probe.received,
    )
    if "Reject" in (first, most) or first == "Irrelevant":
        return
    require(
        parse_number(first) <= parse_number(most),
        "R7143-13.14-1",
        f"the target answered FirstBurstLength={first} with MaxBurstLength={most}",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.Malformed.NumberWithLetters",
    ("RFC 7143", "6.1", "INFORMATIONAL", "target"),
    "RFC 7143 6.2.2",
    requirements=["R7143-6.1-5", "R7143-6.2-5", "R7143-6.2-4"],
)
async def test_malformed_number(target: Any) -> None:
    """MaxBurstLength=12ab34 is not a number: Reject or a failed login.

    Which of the two has no keyword read (R7143-6.1-5, a robustness check); the offer is
    owed an answer, as any inadmissible value is (R7143-6.2-5)."""
    probe, step = await _answer(target, [("MaxBurstLength", "12ab34")])
    _require_answer(probe, step, "R7143-6.2-5")
    if step.refused:
        return
    answer = _answer_to(probe, step, "MaxBurstLength")
    require(
        answer is not None and answer != "NotUnderstood",
        "R7143-6.2-4",
        f"a malformed number was answered {answer!r}" + ("" if answer else f"; {KEY_RULE}"),
        sent=probe.sent,
        received=probe.received,
    )
    require(
        answer == "Reject",
        "R7143-6.1-5",
        f"a malformed number was answered {answer!r}" + ("" if answer else f"; {KEY_RULE}"),
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.Unknown.PrivateKey",
    "RFC 7143 13.22",
    "RFC 7143 6.2",
    requirements=["R7143-13.22-1", "R7143-6.2-1"],
)
async def test_unknown_private_key(target: Any) -> None:
    """An unknown X- key is answered NotUnderstood and the login goes on."""
    probe, step = await _answer(target, [("X-org.iscsi-conformance.Probe", "1")])
    require(
        step.succeeded,
        "R7143-6.2-1",
        _failed(step, "an unknown private key"),
        sent=probe.sent,
        received=probe.received,
    )
    require(
        step.keys.get("X-org.iscsi-conformance.Probe") == "NotUnderstood",
        "R7143-6.2-1",
        f"expected X-org.iscsi-conformance.Probe=NotUnderstood, got {step.keys.get('X-org.iscsi-conformance.Probe')!r}",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.Unknown.PublicExtensionKey",
    "RFC 7143 6.2",
    requirements=["R7143-13.23-1", "R7143-6.2-1"],
)
async def test_unknown_public_extension_key(target: Any) -> None:
    """An unknown X# key is answered NotUnderstood."""
    probe, step = await _answer(target, [("X#org.iscsi-conformance.Probe", "1")])
    require(
        step.succeeded,
        "R7143-6.2-1",
        _failed(step, "an unknown X# key"),
        sent=probe.sent,
        received=probe.received,
    )
    require(
        step.keys.get("X#org.iscsi-conformance.Probe") == "NotUnderstood",
        "R7143-6.2-1",
        f"got {step.keys.get('X#org.iscsi-conformance.Probe')!r}",
        sent=probe.sent,
        received=probe.received,
    )


@spec("Login.Keys.Unknown.StandardLookingKey", "RFC 7143 6.2", requirements=["R7143-6.2-1"])
async def test_unknown_standard_key(target: Any) -> None:
    """A key that no RFC defines (not X-) is answered NotUnderstood, not a failure."""
    probe, step = await _answer(target, [("NoSuchKey", "1")])
    _require_answer(probe, step, "R7143-6.2-1")
    if step.refused:
        require(
            step.response.status_class == 2,
            "R7143-6.2-1",
            "a target that fails the login for an unknown key must say it is the initiator's error (02xx)",
            sent=probe.sent,
            received=probe.received,
        )
        return
    require(
        step.keys.get("NoSuchKey") == "NotUnderstood",
        "R7143-6.2-1",
        f"NoSuchKey must be answered NotUnderstood, got {step.keys.get('NoSuchKey')!r}",
        sent=probe.sent,
        received=probe.received,
    )


@spec("Login.Keys.Repeated.SameNegotiation", "RFC 7143 6.3", requirements=["R7143-6.2-3"])
async def test_repeated_key(target: Any) -> None:
    """The same key twice in one negotiation is a protocol error."""
    probe, step = await _answer(target, [("MaxBurstLength", "65536"), ("MaxBurstLength", "131072")])
    _require_answer(probe, step, "R7143-6.2-3")
    require(
        step.refused or step.keys.get("MaxBurstLength") == "Reject",
        "R7143-6.2-3",
        "MaxBurstLength offered twice was accepted",
        sent=probe.sent,
        received=probe.received,
    )


@spec("Login.Keys.Answers.EveryKeyAnswered", "RFC 7143 6.2", requirements=["R7143-6.2-4"])
async def test_every_offered_key_answered(target: Any) -> None:
    """Every negotiated key the initiator offers gets an answer before the login ends."""
    offered = [
        "MaxBurstLength",
        "FirstBurstLength",
        "MaxOutstandingR2T",
        "ImmediateData",
        "InitialR2T",
        "DefaultTime2Wait",
        "DefaultTime2Retain",
        "ErrorRecoveryLevel",
        "DataPDUInOrder",
        "DataSequenceInOrder",
        "MaxConnections",
    ]
    from iscsi_conformance.core.keys import defaults

    d = defaults("Normal")
    async with target.raw() as raw:
        probe = await target.login(raw, keys=[(k, d[k]) for k in offered])
        missing = [k for k in offered if k not in probe.negotiated]
        require(
            not missing,
            "R7143-6.2-4",
            f"the target never answered {missing}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Keys.Answers.ListFromOffer",
    "RFC 7143 6.2.1",
    requirements=["R7143-6.2.1-2", "R7143-6.2.1-1"],
)
async def test_list_answer_from_offer(target: Any) -> None:
    """The answer to a list-valued key is one value taken from the offered list."""
    probe, step = await _answer(
        target, [("HeaderDigest", "None,CRC32C"), ("DataDigest", "CRC32C,None")]
    )
    require(
        step.succeeded,
        "R7143-6.2.1-1",
        _failed(step, "digest lists"),
        sent=probe.sent,
        received=probe.received,
    )
    for key, offered in (("HeaderDigest", ["None", "CRC32C"]), ("DataDigest", ["CRC32C", "None"])):
        answer = _answer_to(probe, step, key)
        require(
            answer in offered,
            "R7143-6.2.1-2",
            f"{key} answer {answer!r} is not one of the offered {offered}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Keys.Obsolete.Markers",
    "RFC 7143 13.25",
    level="SHOULD",
    requirements=["R7143-13.25-1"],
)
async def test_obsolete_marker_keys(target: Any) -> None:
    """OFMarker/IFMarker offered as No never turn markers on."""
    probe, step = await _answer(target, [("OFMarker", "No"), ("IFMarker", "No")])
    require(
        step.succeeded,
        "R7143-13.25-1",
        _failed(step, "obsolete marker keys"),
        sent=probe.sent,
        received=probe.received,
    )
    for key in ("OFMarker", "IFMarker"):
        answer = step.keys.get(key)
        require(
            answer in (None, "No", "NotUnderstood", "Irrelevant", "Reject"),
            "R7143-13.25-1",
            f"{key} answered {answer!r}: markers must never be enabled",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Keys.Declarative.NodeArchitecture",
    "RFC 7143 13.26",
    requirements=["R7143-13.26-1"],
    level="MUST",
)
async def test_node_architecture_declaration(target: Any) -> None:
    """X#NodeArchitecture is declarative: the login goes on and no value is forced on us."""
    probe, step = await _answer(target, [("X#NodeArchitecture", "iscsi-conformance/0.1")])
    require(
        step.succeeded,
        "R7143-13.26-1",
        _failed(step, "X#NodeArchitecture"),
        sent=probe.sent,
        received=probe.received,
    )
    require(
        step.keys.get("X#NodeArchitecture") != "Reject",
        "R7143-13.26-1",
        "a declarative key was answered Reject",
        sent=probe.sent,
        received=probe.received,
    )


@spec("Login.Keys.ProtocolLevel.Higher", "RFC 7143 13.24", requirements=["R7143-13.24-1"])
async def test_protocol_level_higher_than_known(target: Any) -> None:
    """iSCSIProtocolLevel=31, then 30: the answer is the target's own level both times.

    The key's result function is the minimum (RFC 7143 13.24): offered a level above its
    own, a target answers its own level, whichever higher level was offered (every level
    an RFC defines so far is far below 30). Conforms: the same number twice, at most the
    offer; NotUnderstood twice from a target older than the key (RFC 7144 4.2.1 reads it
    as level 0). Not: no answer, or an echo of the offer (31, then 30)."""
    answers: list[str | None] = []
    for level in (31, 30):
        probe, step = await _answer(target, [("iSCSIProtocolLevel", str(level))])
        require(
            step.succeeded,
            "R7143-13.24-1",
            _failed(step, f"iSCSIProtocolLevel={level}"),
            sent=probe.sent,
            received=probe.received,
        )
        answer = _answer_to(probe, step, "iSCSIProtocolLevel")
        require(
            answer is not None,
            "R7143-6.2-4",
            f"the login went on but iSCSIProtocolLevel={level} was never answered: {KEY_RULE}",
            sent=probe.sent,
            received=probe.received,
        )
        if answer != "NotUnderstood":
            require(
                answer.isdigit() and int(answer) <= level,
                "R7143-13.24-1",
                f"iSCSIProtocolLevel={level} answered {answer!r}: the minimum function allows a "
                f"level of at most {level}",
                sent=probe.sent,
                received=probe.received,
            )
        answers.append(answer)
    require(
        answers[0] == answers[1],
        "R7143-13.24-1",
        f"iSCSIProtocolLevel=31 was answered {answers[0]!r}, =30 was answered {answers[1]!r}: "
        "the minimum of a higher offer and the target's own level is its own level, the "
        "same both times; the target echoes the offer instead of answering its level",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.TargetPortalGroupTag.Returned",
    "RFC 7143 6.3.1",
    "RFC 7143 13.9",
    requirements=["R7143-13.9-1"],
)
async def test_tpgt_returned(target: Any) -> None:
    """The target sends TargetPortalGroupTag (0..65535) in a Normal session's first response."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.security_none()
        require(
            step.succeeded,
            "R7143-6.3.1-2",
            "AuthMethod=None refused",
            sent=probe.sent,
            received=probe.received,
        )
        tpgt = step.keys.get("TargetPortalGroupTag")
        require(
            tpgt is not None,
            "R7143-13.9-1",
            "no TargetPortalGroupTag in the first Login Response",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            tpgt.isdigit() and 0 <= int(tpgt) <= 65535,
            "R7143-13.9-1",
            f"TargetPortalGroupTag={tpgt!r} out of range",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Keys.Discovery.IrrelevantKeys",
    "RFC 7143 6.2",
    "RFC 7143 13.2",
    requirements=["R7143-6.2-2", "R7143-6.2-4"],
)
async def test_irrelevant_key_in_discovery(target: Any) -> None:
    """MaxConnections in a Discovery session is irrelevant (RFC 7143 13.2): the login
    goes on, and the numerical offer is still answered with the same key (6.2.2), by
    Irrelevant (6.2) or by a value the Minimum function admits (1 to the offered 4).
    InitialR2T=Yes decides its OR result by itself and needs no answer."""
    async with target.raw() as raw:
        probe = target.probe(raw, session_type="Discovery", target_name=None)
        s = await probe.security_none()
        require(
            s.succeeded,
            "R7143-6.3.1-2",
            "Discovery login refused",
            sent=probe.sent,
            received=probe.received,
        )
        step = await probe.step(
            [("MaxConnections", "4"), ("InitialR2T", "Yes")], csg=1, nsg=3, transit=True
        )
        require(
            step.succeeded,
            "R7143-6.2-2",
            f"irrelevant keys made a discovery login fail ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        answer = step.keys.get("MaxConnections")
        require(
            answer is not None,
            "R7143-6.2-4",
            f"MaxConnections=4 in a Discovery login went unanswered: {KEY_RULE}",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            answer == "Irrelevant" or (answer.isdigit() and 1 <= int(answer) <= 4),
            "R7143-6.2-2",
            f"MaxConnections=4 in Discovery answered {answer!r}: expected Irrelevant, or a "
            "value from 1 to 4 (RFC 7143 13.2: Minimum)",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Keys.Answers.FirstSupportedOfOffer",
    "RFC 7143 6.2.1",
    requirements=["R7143-6.2.1-1"],
)
async def test_list_answer_first_supported(target: Any) -> None:
    """A target that accepts HeaderDigest=CRC32C alone answers CRC32C to CRC32C,None:
    the first offered value it supports, not its own first preference."""
    probe, step = await _answer(target, [("HeaderDigest", "CRC32C")])
    if not step.succeeded or _answer_to(probe, step, "HeaderDigest") != "CRC32C":
        return  # CRC32C is not supported here: the order of the offer shows nothing
    probe, step = await _answer(target, [("HeaderDigest", "CRC32C,None")])
    require(
        step.succeeded,
        "R7143-6.2.1-1",
        _failed(step, "HeaderDigest=CRC32C,None"),
        sent=probe.sent,
        received=probe.received,
    )
    answer = _answer_to(probe, step, "HeaderDigest")
    require(
        answer == "CRC32C",
        "R7143-6.2.1-1",
        f"HeaderDigest=CRC32C,None answered {answer!r}, although the target accepted CRC32C "
        "alone: the answer is the first value of the offer that the target supports",
        sent=probe.sent,
        received=probe.received,
    )


@spec(
    "Login.Keys.Answers.NoCommonValue",
    "RFC 7143 6.2.1",
    requirements=["R7143-6.2.1-2"],
)
async def test_list_no_common_value(target: Any) -> None:
    """AuthMethod=KRB5 alone, to a target that needs no authentication: the answer is
    KRB5 or Reject (or the login fails with a Login reject), never None, which was not
    offered; a hang-up or silence is no answer (11.13.5)."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        step = await probe.step([("AuthMethod", "KRB5")], csg=0, nsg=1, transit=True)
        require(
            step.response is not None,
            "R7143-6.2.1-2",
            step.missing(
                "RFC 7143 11.13.5: a login the target will not go on with ends with a Login "
                "Response carrying a non-zero status"
            ),
            sent=probe.sent,
            received=probe.received,
        )
        answer = step.keys.get("AuthMethod")
        require(
            answer in (None, "KRB5", "Reject"),
            "R7143-6.2.1-2",
            f"AuthMethod=KRB5 answered {answer!r}: a list answer is a value from the offer "
            "(None only when offered), or Reject",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Keys.ReservedConstantAsOffer",
    "RFC 7143 6.2",
    requirements=["R7143-6.2-4", "R7143-6.2-5"],
)
async def test_reserved_constant_as_offer(target: Any) -> None:
    """ImmediateData=NotUnderstood (a reserved answer constant, used as an offer) is not
    passed over in silence: the key is answered (Reject, or a value of the target's
    choosing) or the login fails."""
    probe, step = await _answer(target, [("ImmediateData", "NotUnderstood")])
    if step.refused:
        return  # the target took the misuse of a reserved constant as a protocol error
    require(
        step.succeeded,
        "R7143-6.2-4",
        _failed(step, "ImmediateData=NotUnderstood"),
        sent=probe.sent,
        received=probe.received,
    )
    answer = _answer_to(probe, step, "ImmediateData")
    require(
        answer is not None,
        "R7143-6.2-4",
        "ImmediateData=NotUnderstood was neither answered nor refused: "
        + KEY_RULE
        + "; a value the acceptor cannot take is answered Reject (6.2.2)",
        sent=probe.sent,
        received=probe.received,
    )
