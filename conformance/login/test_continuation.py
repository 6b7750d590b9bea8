"""Login.Continuation / Login.TextLimits: key=value text split across Login Requests
with the C bit, and the format limits of the text itself (RFC 7143 6.1, 11.12.2).

A target must reassemble a text split over several Login Requests before it
interprets any of it, answering every PDU but the last with an empty Login
Response; and it must not negotiate text that breaks the format (a key name over
63 bytes, a value over 255 bytes, a pair without '=' or without its NUL).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from iscsi_conformance.core.login import OPERATIONAL, SECURITY
from iscsi_conformance.harness.probe import text_of
from iscsi_conformance.plugin import require, spec, violation

# An unknown private key: its answer (NotUnderstood) names the key the target parsed.
PROBE_KEY = "X-org.iscsi-conformance.Split"


async def _to_operational(target: Any, raw: Any) -> Any:
    probe = target.probe(raw)
    step = await probe.security_none()
    require(
        step.succeeded and step.response.transit,
        "R7143-6.3.1-2",
        step.missing(ANSWER_RULE) or f"AuthMethod=None refused ({step.status!r})",
        sent=probe.sent,
        received=probe.received,
    )
    return probe


async def _send_pieces(
    probe: Any, pieces: list[bytes], *, csg: int, nsg: int, transit_last: bool = True
) -> list[Any]:
    """Send ``pieces`` as Login Requests, C=1 on all but the last; return the steps."""
    steps = []
    for n, piece in enumerate(pieces):
        last = n == len(pieces) - 1
        request = probe.build(
            [],
            csg=csg,
            nsg=nsg,
            transit=last and transit_last,
            cont=not last,
            with_leading=False,
            data=piece,
        )
        steps.append(await probe.send(request))
        if steps[-1].refused or steps[-1].response is None:
            break
    return steps


#: Why every piece of a continued text needs an answer (RFC 7143 6.1, 11.12.2).
PIECE_RULE = "RFC 7143 6.1: a Login Request with C=1 is answered with an empty Login Response"
#: Why any Login Request needs an answer.
ANSWER_RULE = "RFC 7143 11.13: every Login Request is answered with a Login Response"


def _check_empty_answers(probe: Any, steps: list[Any]) -> None:
    """Every PDU sent with C=1 is answered by a successful, empty, T=0 Login Response."""
    last = steps[-1]
    require(
        last.response is not None,
        "R7143-6.1-3",
        last.missing(PIECE_RULE if last.request.cont else ANSWER_RULE),
        sent=probe.sent,
        received=probe.received,
    )
    for step in steps[:-1]:
        require(
            step.succeeded,
            "R7143-6.1-3",
            f"a Login Request with C=1 was refused ({step.status!r}): the target must wait "
            "for the rest of the text",
            sent=probe.sent,
            received=probe.received,
        )
        r = step.response
        require(
            not r.data and not r.transit and not r.cont,
            "R7143-6.1-3",
            f"a Login Request with C=1 must be answered by an empty Login Response (T=0, C=0); "
            f"got {len(r.data)} data bytes, T={int(r.transit)}, C={int(r.cont)}",
            sent=probe.sent,
            received=probe.received,
        )


def _split(data: bytes, *cuts: int) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@spec(
    "Login.Continuation.EmptyAnswerToContinuedRequest",
    "RFC 7143 6.1",
    "RFC 7143 11.12.2",
    requirements=["R7143-6.1-3"],
)
async def test_continued_request_gets_empty_answer(target: Any) -> None:
    """An operational-stage Login Request with C=1 (a key name cut in two) is answered
    by an empty Login Response with T=0: the target waits for the rest."""
    async with target.raw() as raw:
        probe = await _to_operational(target, raw)
        text = text_of([(PROBE_KEY, "1"), ("MaxBurstLength", "65536")])
        cut = text.index(b"MaxBurst") + 5
        steps = await _send_pieces(probe, _split(text, cut), csg=OPERATIONAL, nsg=3)
        _check_empty_answers(probe, steps)
        require(
            len(steps) == 2,
            "R7143-6.1-3",
            "the target refused the login after a Login Request with C=1",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Continuation.KeyNameReassembled",
    "RFC 7143 6.1",
    "RFC 7143 11.12.2",
    requirements=["R7143-6.1-3", "R7143-6.2-1"],
)
async def test_key_name_split_is_reassembled(target: Any) -> None:
    """A key name split across two Login Requests is answered under its whole name."""
    async with target.raw() as raw:
        probe = await _to_operational(target, raw)
        text = text_of([(PROBE_KEY, "1"), ("MaxBurstLength", "65536")])
        cut = text.index(b"Split")
        steps = await _send_pieces(probe, _split(text, cut), csg=OPERATIONAL, nsg=3)
        _check_empty_answers(probe, steps)
        last = steps[-1]
        require(
            last.succeeded,
            "R7143-6.1-3",
            f"the reassembled text made the login fail ({last.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        keys = last.keys
        require(
            keys.get(PROBE_KEY) == "NotUnderstood",
            "R7143-6.1-3",
            f"the split key was not answered under its whole name {PROBE_KEY!r}: "
            f"answered keys {sorted(keys)}",
            sent=probe.sent,
            received=probe.received,
        )
        stray = [k for k in keys if k != PROBE_KEY and PROBE_KEY.startswith(k)]
        require(
            not stray,
            "R7143-6.1-3",
            f"the target answered a fragment of the split key as a key of its own: {stray}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Continuation.ValueReassembled",
    "RFC 7143 6.1",
    "RFC 7143 13.13",
    requirements=["R7143-6.1-3", "R7143-6.2.2-1"],
)
async def test_value_split_is_reassembled(target: Any) -> None:
    """MaxBurstLength=512 cut inside its value ("51" | "2"): the answer is 512.

    A target that interprets the first piece alone sees 51 (below the minimum 512)
    and answers Reject or fails the login; min(512, anything legal) is 512."""
    async with target.raw() as raw:
        probe = await _to_operational(target, raw)
        text = text_of([("FirstBurstLength", "512"), ("MaxBurstLength", "512")])
        cut = text.index(b"MaxBurstLength=") + len("MaxBurstLength=51")
        steps = await _send_pieces(probe, _split(text, cut), csg=OPERATIONAL, nsg=3)
        _check_empty_answers(probe, steps)
        last = steps[-1]
        require(
            last.succeeded,
            "R7143-6.1-3",
            f"the reassembled MaxBurstLength=512 made the login fail ({last.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        answer = last.keys.get("MaxBurstLength")
        require(
            answer is not None and answer.isdigit() and int(answer) == 512,
            "R7143-6.1-3",
            f"MaxBurstLength=512 (split inside the value) was answered {answer!r}; "
            "the minimum of 512 and any legal value is 512",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.Continuation.SecurityStageFirstRequest",
    "RFC 7143 6.1",
    "RFC 7143 6.3",
    "RFC 7143 11.12.2",
    requirements=["R7143-6.1-3", "R7143-6.3.1-2"],
)
async def test_first_request_continued(target: Any) -> None:
    """The very first Login Request carries C=1 and only part of the leading keys
    (cut inside AuthMethod's value); the target waits, then completes the security stage."""
    async with target.raw() as raw:
        probe = target.probe(raw)
        text = text_of([*probe.leading_keys(), ("AuthMethod", "None")])
        cut = text.index(b"AuthMethod=No") + len("AuthMethod=No")
        probe.first = False
        steps = await _send_pieces(probe, _split(text, cut), csg=SECURITY, nsg=OPERATIONAL)
        _check_empty_answers(probe, steps)
        last = steps[-1]
        require(
            last.succeeded,
            "R7143-6.1-3",
            f"the reassembled first Login Request was refused ({last.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            last.keys.get("AuthMethod") == "None",
            "R7143-6.3.1-2",
            f"AuthMethod=None (split inside the value) answered {last.keys.get('AuthMethod')!r}",
            sent=probe.sent,
            received=probe.received,
        )
        step = await probe.operational([])
        require(
            probe.in_full_feature,
            "R7143-6.1-3",
            f"the login did not reach full feature phase after a continued first request ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )


@pytest.mark.parametrize("pieces", ["three", "bytewise"])
@spec(
    "Login.Continuation.ManyPieces",
    "RFC 7143 6.1",
    "RFC 7143 11.12.2",
    requirements=["R7143-6.1-3", "R7143-6.2-4"],
)
async def test_text_in_many_pieces(target: Any, pieces: str) -> None:
    """Operational keys sent in three pieces, or one byte per Login Request: every
    piece but the last gets an empty answer, and every key is answered at the end."""
    offered = [("ImmediateData", "Yes"), ("InitialR2T", "Yes"), ("MaxOutstandingR2T", "1")]
    async with target.raw() as raw:
        probe = await _to_operational(target, raw)
        text = text_of(offered)
        if pieces == "three":
            parts = _split(text, len(text) // 3, 2 * len(text) // 3)
        else:
            parts = [text[i : i + 1] for i in range(len(text))]
        steps = await _send_pieces(probe, parts, csg=OPERATIONAL, nsg=3)
        _check_empty_answers(probe, steps)
        require(
            len(steps) == len(parts),
            "R7143-6.1-3",
            f"the target gave up after {len(steps)} of {len(parts)} continued Login Requests",
            sent=probe.sent,
            received=probe.received,
        )
        last = steps[-1]
        require(
            last.succeeded,
            "R7143-6.1-3",
            f"the reassembled text made the login fail ({last.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        answered = dict(last.keys)
        if not last.response.transit:
            answered.update((await probe.operational([])).keys)
        missing = [k for k, _ in offered if k not in answered]
        require(
            not missing,
            "R7143-6.2-4",
            f"keys sent in pieces were never answered: {missing}",
            sent=probe.sent,
            received=probe.received,
        )


# --------------------------------------------------------------------------- text limits


def _require_answer(probe: Any, step: Any) -> None:
    """A malformed request is answered: refused with a Login Response with status 02xx
    (RFC 7143 11.13.5), or the key answered Reject. Silence and a hang-up are neither."""
    require(
        step.response is not None,
        "R7143-6.1-7",
        "no answer to a malformed request: it is refused with a Login Response with "
        "status 02xx (RFC 7143 11.13.5) or the key is answered Reject",
        sent=probe.sent,
        received=probe.received,
    )


async def _operational_answer(target: Any, raw: Any, data: bytes) -> tuple[Any, Any]:
    probe = await _to_operational(target, raw)
    step = await probe.send(
        probe.build([], csg=OPERATIONAL, nsg=3, transit=True, with_leading=False, data=data)
    )
    return probe, step


@spec(
    "Login.TextLimits.KeyNameAtLimit",
    ("RFC 7143", "6.1", "INFORMATIONAL", "target"),
    "RFC 7143 13.22",
    requirements=["R7143-6.1-2", "R7143-13.22-1"],
)
async def test_key_name_of_63_bytes(target: Any) -> None:
    """A private key name of exactly 63 bytes is legal: answered NotUnderstood, login goes on."""
    key = ("X-org.iscsi-conformance." + "k" * 63)[:63]
    async with target.raw() as raw:
        probe, step = await _operational_answer(target, raw, text_of([(key, "1")]))
        require(
            step.succeeded,
            "R7143-6.1-2",
            f"a 63-byte key name (the maximum) made the login fail ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            step.keys.get(key) == "NotUnderstood",
            "R7143-13.22-1",
            f"the unknown 63-byte key was answered {step.keys.get(key)!r}, expected NotUnderstood",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.TextLimits.KeyNameOverLimit",
    "RFC 7143 6.1",
    level="INFORMATIONAL",
    requirements=["R7143-6.1-2", "R7143-6.1-7"],
)
async def test_key_name_of_64_bytes(target: Any) -> None:
    """A key name of 64 bytes (limit 63) is malformed text: the login fails (02xx) or the
    key is answered Reject; it is not treated as an ordinary unknown key."""
    key = ("X-org.iscsi-conformance." + "k" * 64)[:64]
    async with target.raw() as raw:
        probe, step = await _operational_answer(target, raw, text_of([(key, "1")]))
        _require_answer(probe, step)
        if step.refused:
            require(
                step.response.status_class == 2,
                "R7143-6.1-7",
                f"expected an initiator error (02xx), got {step.status!r}",
                sent=probe.sent,
                received=probe.received,
            )
            return
        answer = step.keys.get(key)
        require(
            answer == "Reject",
            "R7143-6.1-7",
            f"a 64-byte key name (over the 63-byte limit) was answered {answer!r}: the target "
            "did not check the key-name length",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.TextLimits.ValueAtLimit",
    "RFC 7143 6.1",
    "RFC 7143 13.7",
    level="INFORMATIONAL",
    requirements=["R7143-6.1-2"],
)
async def test_value_of_255_bytes(target: Any) -> None:
    """InitiatorAlias with a value of exactly 255 bytes (the maximum) is accepted."""
    alias = "a" * 255
    async with target.raw() as raw:
        probe, step = await _operational_answer(target, raw, text_of([("InitiatorAlias", alias)]))
        require(
            step.succeeded,
            "R7143-6.1-2",
            f"InitiatorAlias of 255 bytes (the maximum) made the login fail ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            step.keys.get("InitiatorAlias") not in ("Reject", "NotUnderstood"),
            "R7143-6.1-2",
            f"a legal 255-byte InitiatorAlias was answered {step.keys.get('InitiatorAlias')!r}",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.TextLimits.ValueOverLimit",
    "RFC 7143 6.1",
    "RFC 7143 13.7",
    level="INFORMATIONAL",
    requirements=["R7143-6.1-2", "R7143-6.1-7"],
)
async def test_value_of_256_bytes(target: Any) -> None:
    """InitiatorAlias with a value of 256 bytes (limit 255) is refused: the login fails
    (02xx) or the key is answered Reject."""
    alias = "a" * 256
    async with target.raw() as raw:
        probe, step = await _operational_answer(target, raw, text_of([("InitiatorAlias", alias)]))
        _require_answer(probe, step)
        if step.refused:
            require(
                step.response.status_class == 2,
                "R7143-6.1-7",
                f"expected an initiator error (02xx), got {step.status!r}",
                sent=probe.sent,
                received=probe.received,
            )
            return
        require(
            step.keys.get("InitiatorAlias") == "Reject",
            "R7143-6.1-7",
            "a 256-byte InitiatorAlias (over the 255-byte limit) was accepted "
            f"(answer {step.keys.get('InitiatorAlias')!r}, status {step.status:#06x})",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.TextLimits.MissingNulTerminator",
    "RFC 7143 6.1",
    requirements=["R7143-6.1-1", "R7143-6.1-7"],
    level="INFORMATIONAL",
)
async def test_last_pair_without_nul(target: Any) -> None:
    """A final Login Request (C=0) whose last pair lacks its NUL delimiter is malformed:
    the login fails with an initiator error, the pair is not negotiated."""
    data = text_of([("ImmediateData", "Yes")]) + b"MaxBurstLength=65536"
    async with target.raw() as raw:
        probe, step = await _operational_answer(target, raw, data)
        _require_answer(probe, step)
        if step.refused:
            require(
                step.response.status_class == 2,
                "R7143-6.1-7",
                f"expected an initiator error (02xx), got {step.status!r}",
                sent=probe.sent,
                received=probe.received,
            )
            return
        answer = step.keys.get("MaxBurstLength")
        if answer == "Reject":
            return
        raise violation(
            "R7143-6.1-7",
            f"an unterminated MaxBurstLength=65536 was not refused (answered {answer!r}, "
            f"status {step.status:#06x})",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "Login.TextLimits.PairWithoutEquals",
    "RFC 7143 6.1",
    requirements=["R7143-6.1-1", "R7143-6.1-7"],
    level="INFORMATIONAL",
)
async def test_pair_without_equals(target: Any) -> None:
    """A text item with no '=' ("MaxBurstLength" followed by NUL) is malformed: the
    login fails with an initiator error or the item is answered Reject."""
    data = text_of([("ImmediateData", "Yes")]) + b"MaxBurstLength\x00"
    async with target.raw() as raw:
        probe, step = await _operational_answer(target, raw, data)
        _require_answer(probe, step)
        if step.refused:
            require(
                step.response.status_class == 2,
                "R7143-6.1-7",
                f"expected an initiator error (02xx), got {step.status!r}",
                sent=probe.sent,
                received=probe.received,
            )
            return
        answer = step.keys.get("MaxBurstLength")
        require(
            answer == "Reject",
            "R7143-6.1-7",
            f"a pair without '=' was not refused (answered {answer!r}, status {step.status:#06x})",
            sent=probe.sent,
            received=probe.received,
        )
