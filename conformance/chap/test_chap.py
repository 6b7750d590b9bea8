"""CHAP (RFC 1994, RFC 7143 12.1.3): each algorithm, one-way and mutual, encodings,
wrong secrets, reflection, malformed and misplaced keys."""

from __future__ import annotations

import os
from typing import Any

from iscsi_conformance.core.chap import ChapAlgorithm, chap_response
from iscsi_conformance.core.text import format_binary, parse_binary
from iscsi_conformance.harness.profiles import CHAP_ALGORITHMS
from iscsi_conformance.plugin import require, spec

ALG_LABEL = {5: "MD5", 6: "SHA1", 7: "SHA256", 8: "SHA3_256"}
#: Why a refused login still needs an answer (a failure message's second half).
REFUSAL_RULE = (
    "RFC 7143 11.13.5: a login the target does not accept ends with a Login Response with "
    "a non-zero status class (0201 for a failed authentication), and only then is the "
    "connection closed"
)
#: Why any Login Request needs an answer.
ANSWER_RULE = "RFC 7143 11.13: every Login Request is answered with a Login Response"


def _require_refusal(
    probe: Any, step: Any, requirement: str, accepted: str, *, answered: str | None = None
) -> None:
    """The login was refused the way RFC 7143 11.13.5 says: a Login Response with a
    non-zero status. Silence, a hang-up and an accepted login fail, saying which.

    ``answered`` is the requirement a missing Login Response breaks, when it is not
    ``requirement`` (a robustness check whose refusal no keyword binds)."""
    __tracebackhide__ = True
    require(
        step.response is not None,
        answered or requirement,
        step.missing(REFUSAL_RULE),
        sent=probe.sent,
        received=probe.received,
    )
    require(step.refused, requirement, accepted, sent=probe.sent, received=probe.received)


def _require_not_logged_in(probe: Any, requirement: str, what: str, why: str) -> None:
    """The login did not reach full feature phase (else ``what`` fails ``requirement``),
    and its last step was refused the way RFC 7143 11.13.5 says (else ``why`` fails
    R7143-11.13-1; silence and a hang-up fail saying which)."""
    __tracebackhide__ = True
    require(not probe.in_full_feature, requirement, what, sent=probe.sent, received=probe.received)
    _require_refusal(probe, probe.steps[-1], "R7143-11.13-1", why)


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


def _require_challenge(probe: Any, step: Any) -> dict[str, str]:
    """The target answered CHAP_A with its CHAP_I and CHAP_C (RFC 7143 12.1.3)."""
    __tracebackhide__ = True
    _require_answer(probe, step, "R7143-12.1.3-2")
    keys: dict[str, str] = step.keys
    require(
        "CHAP_I" in keys and "CHAP_C" in keys,
        "R7143-12.1.3-2",
        f"CHAP_A was answered without a challenge (status {step.status!r}, keys {sorted(keys)}): "
        "the target answers CHAP_A with CHAP_A, CHAP_I and CHAP_C (RFC 7143 12.1.3)",
        sent=probe.sent,
        received=probe.received,
    )
    return keys


def _make_oneway(alg: int, encoding: str) -> Any:
    profile = f"chap-{CHAP_ALGORITHMS[alg]}"

    @spec(
        f"CHAP.OneWay.{ALG_LABEL[alg]}.{encoding.capitalize()}",
        "RFC 7143 12.1.3",
        "RFC 1994 4.1",
        requirements=["R7143-12.1.3-1", "R7143-12.1.3-2", "R7143-12.1.3-7", "R1994-4.1-1"],
        needs=(f"chap_algorithms={alg}",),
    )
    async def test(target: Any) -> None:
        (user, secret), _ = target.chap_pair(profile)
        async with target.raw(profile) as raw:
            probe = target.probe(raw, profile)
            step = await probe.chap(user, secret, algorithms=[alg], encoding=encoding)
            require(
                step.succeeded,
                "R7143-12.1.3-1",
                f"CHAP_A={alg} with the right secret ({encoding} response) was refused "
                f"({step.status!r})",
                sent=probe.sent,
                received=probe.received,
            )
            ident = int(probe.steps[1].keys["CHAP_I"], 0)
            require(
                0 <= ident <= 255,
                "R7143-12.1.3-2",
                f"CHAP_I={ident} out of range",
                sent=probe.sent,
                received=probe.received,
            )
            challenge = parse_binary(probe.steps[1].keys["CHAP_C"])
            require(
                len(challenge) >= 1,
                "R7143-12.1.3-2",
                "empty CHAP_C",
                sent=probe.sent,
                received=probe.received,
            )
            step = await probe.operational([])
            require(
                probe.in_full_feature,
                "R7143-12.1.3-1",
                "login did not complete after CHAP",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"One-way CHAP with CHAP_A={alg} and a {encoding} CHAP_R logs in."
    return test


def _make_mutual(alg: int) -> Any:
    profile = f"mutual-{CHAP_ALGORITHMS[alg]}"

    @spec(
        f"CHAP.Mutual.{ALG_LABEL[alg]}",
        "RFC 7143 12.1.3",
        requirements=["R7143-12.1.3-1", "R7143-12.1.3-9"],
        needs=("mutual_chap", f"chap_algorithms={alg}"),
    )
    async def test(target: Any) -> None:
        chap, mutual = target.chap_pair(profile)
        async with target.raw(profile) as raw:
            probe = target.probe(raw, profile)
            step = await probe.chap(
                chap[0], chap[1], algorithms=[alg], mutual=mutual
            )  # verifies the target's CHAP_R
            require(
                step.succeeded,
                "R7143-12.1.3-1",
                f"mutual CHAP with CHAP_A={alg} failed ({step.status!r})",
                sent=probe.sent,
                received=probe.received,
            )
            require(
                "CHAP_R" in step.keys,
                "R7143-12.1.3-9",
                "the target did not answer the initiator's challenge",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"Mutual CHAP with CHAP_A={alg}: the target proves its own secret."
    return test


def _make_wrong_secret(alg: int) -> Any:
    profile = f"chap-{CHAP_ALGORITHMS[alg]}"

    @spec(
        f"CHAP.WrongSecret.{ALG_LABEL[alg]}",
        "RFC 7143 12.1.3",
        requirements=["R7143-12.1.3-3"],
        needs=(f"chap_algorithms={alg}",),
    )
    async def test(target: Any) -> None:
        (user, secret), _ = target.chap_pair(profile)
        async with target.raw(profile) as raw:
            probe = target.probe(raw, profile)
            step = await probe.chap(user, secret + "-wrong", algorithms=[alg])
            _require_refusal(
                probe, step, "R7143-12.1.3-3", "a CHAP_R computed with a wrong secret was accepted"
            )
            require(
                step.status == 0x0201,
                "R7143-12.1.3-3",
                f"expected 0201 (authentication failure), got {step.status!r}",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"A wrong secret with CHAP_A={alg} fails with 0201."
    return test


for _alg in CHAP_ALGORITHMS:
    for _enc in ("hex", "base64"):
        globals()[f"test_oneway_{ALG_LABEL[_alg]}_{_enc}"] = _make_oneway(_alg, _enc)
    globals()[f"test_mutual_{ALG_LABEL[_alg]}"] = _make_mutual(_alg)
    globals()[f"test_wrong_secret_{ALG_LABEL[_alg]}"] = _make_wrong_secret(_alg)


async def _to_challenge(
    target: Any, raw: Any, profile: str = "chap", algs: str = "5"
) -> tuple[Any, Any]:
    probe = target.probe(raw, profile)
    s1 = await probe.step([("AuthMethod", "CHAP")], csg=0, nsg=1, transit=False)
    require(
        s1.succeeded and s1.keys.get("AuthMethod") == "CHAP",
        "R7143-12.1-1",
        s1.missing(ANSWER_RULE) or f"AuthMethod=CHAP not chosen ({s1.keys.get('AuthMethod')!r})",
        sent=probe.sent,
        received=probe.received,
    )
    s2 = await probe.step([("CHAP_A", algs)], csg=0, nsg=1, transit=False)
    return probe, s2


@spec(
    "CHAP.Keys.WrongUser",
    "RFC 7143 12.1.3",
    requirements=["R7143-12.1.3-3"],
    needs=("chap_algorithms=5",),
)
async def test_wrong_user(target: Any) -> None:
    """The right secret under another CHAP_N fails with 0201."""
    (user, secret), _ = target.chap_pair("chap")
    async with target.raw("chap") as raw:
        probe = target.probe(raw, "chap")
        step = await probe.chap(user + "-other", secret)
        _require_refusal(probe, step, "R7143-12.1.3-3", "an unknown CHAP_N was accepted")


@spec(
    "CHAP.Keys.UnsupportedAlgorithmOnly",
    "RFC 7143 12.1.3",
    requirements=["R7143-12.1.3-1"],
    needs=("chap_algorithms=5",),
)
async def test_unsupported_algorithm_only(target: Any) -> None:
    """CHAP_A offering only an unknown algorithm (99) is answered Reject or fails the login."""
    async with target.raw("chap") as raw:
        probe, step = await _to_challenge(target, raw, algs="99")
        _require_answer(probe, step, "R7143-12.1.3-1")
        require(
            step.refused or step.keys.get("CHAP_A") == "Reject",
            "R7143-12.1.3-1",
            f"CHAP_A=99 answered {step.keys.get('CHAP_A')!r}",
            sent=probe.sent,
            received=probe.received,
        )
        require(
            "CHAP_C" not in step.keys,
            "R7143-12.1.3-1",
            "a challenge was sent for an unsupported algorithm",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "CHAP.Keys.AlgorithmFromList",
    "RFC 7143 12.1.3",
    "RFC 7143 6.2.1",
    requirements=["R7143-12.1.3-1", "R7143-6.2.1-1"],
    needs=("chap_algorithms=5",),
)
async def test_algorithm_chosen_from_list(target: Any) -> None:
    """CHAP_A=99,5: the target picks 5 (the only one it must support from the list)."""
    async with target.raw("chap") as raw:
        probe, step = await _to_challenge(target, raw, algs="99,5")
        _require_answer(probe, step, "R7143-6.2.1-1")
        require(
            step.keys.get("CHAP_A") == "5",
            "R7143-6.2.1-1",
            f"CHAP_A answered {step.keys.get('CHAP_A')!r}, expected 5",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "CHAP.Keys.MissingResponse",
    "RFC 7143 12.1.3",
    requirements=["R7143-12.1.3-3"],
    needs=("chap_algorithms=5",),
)
async def test_missing_chap_r(target: Any) -> None:
    """CHAP_N without CHAP_R never authenticates."""
    (user, _secret), _ = target.chap_pair("chap")
    async with target.raw("chap") as raw:
        probe, step = await _to_challenge(target, raw)
        step = await probe.step([("CHAP_N", user)], csg=0, nsg=1, transit=True)
        if step.succeeded and step.response.transit:
            step = await probe.operational([])
        _require_not_logged_in(
            probe,
            "R7143-12.1.3-3",
            "logged in without CHAP_R",
            "an authentication that cannot succeed ends with a Login Response with a "
            "non-zero status (RFC 7143 11.13.5)",
        )


@spec(
    "CHAP.Keys.ResponseWrongLength",
    "RFC 7143 12.1.3",
    requirements=["R7143-12.1.3-3"],
    needs=("chap_algorithms=5",),
)
async def test_response_wrong_length(target: Any) -> None:
    """A CHAP_R one byte short of the MD5 length fails with 0201."""
    (user, secret), _ = target.chap_pair("chap")
    async with target.raw("chap") as raw:
        probe, step = await _to_challenge(target, raw)
        k = _require_challenge(probe, step)
        good = chap_response(
            ChapAlgorithm.MD5, int(k["CHAP_I"], 0), secret.encode(), parse_binary(k["CHAP_C"])
        )
        step = await probe.step(
            [("CHAP_N", user), ("CHAP_R", format_binary(good[:-1]))], csg=0, nsg=1, transit=True
        )
        _require_refusal(probe, step, "R7143-12.1.3-3", "a truncated CHAP_R was accepted")


@spec(
    "CHAP.Keys.MalformedBinary",
    "RFC 7143 12.1.3",
    "RFC 7143 11.13.5",
    requirements=["R7143-12.1.3-3", "R7143-12.1.3-6", "R7143-11.13-1"],
    needs=("chap_algorithms=5",),
)
async def test_malformed_binary_response(target: Any) -> None:
    """CHAP_R=0xZZ (not hexadecimal) ends the login.

    No keyword says how a malformed value is treated (R7143-12.1.3-6 is a robustness
    check), but such a CHAP_R cannot match the secret, so the login fails
    (R7143-12.1.3-3); a refusal without a Login Response breaks R7143-11.13-1."""
    (user, _s), _ = target.chap_pair("chap")
    async with target.raw("chap") as raw:
        probe, _step = await _to_challenge(target, raw)
        step = await probe.step([("CHAP_N", user), ("CHAP_R", "0xZZ")], csg=0, nsg=1, transit=True)
        _require_refusal(
            probe,
            step,
            "R7143-12.1.3-3",
            "a malformed CHAP_R was accepted",
            answered="R7143-11.13-1",
        )


@spec(
    "CHAP.Keys.RepeatedAlgorithmKey",
    "RFC 7143 6.3",
    requirements=["R7143-6.2-3"],
    needs=("chap_algorithms=5",),
)
async def test_repeated_chap_a(target: Any) -> None:
    """CHAP_A sent twice in one negotiation is refused."""
    async with target.raw("chap") as raw:
        probe = target.probe(raw, "chap")
        await probe.step([("AuthMethod", "CHAP")], csg=0, nsg=1, transit=False)
        step = await probe.step([("CHAP_A", "5"), ("CHAP_A", "5")], csg=0, nsg=1, transit=False)
        _require_answer(probe, step, "R7143-6.2-3")
        require(
            step.refused or step.keys.get("CHAP_A") == "Reject",
            "R7143-6.2-3",
            "CHAP_A offered twice was accepted",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "CHAP.Stage.ChapKeysInOperationalStage",
    "RFC 7143 12.1.3",
    "RFC 7143 6.3",
    requirements=["R7143-6.3-7"],
    needs=("chap_algorithms=5",),
)
async def test_chap_in_operational_stage(target: Any) -> None:
    """Authentication keys sent in the operational stage do not authenticate."""
    async with target.raw("chap") as raw:
        probe = target.probe(raw, "chap")
        step = await probe.step([("CHAP_A", "5")], csg=1, nsg=3, transit=True)
        if step.succeeded and not step.response.transit:
            step = await probe.operational([])
        _require_not_logged_in(
            probe,
            "R7143-6.3-7",
            "full feature phase reached with CHAP keys in the operational stage",
            "the login with CHAP keys in the operational stage is not refused with a Login "
            "Response with a non-zero status (RFC 7143 11.13.5)",
        )


@spec(
    "CHAP.Stage.KeysAfterSecurityStage",
    "RFC 7143 6.2.1",
    "RFC 7143 12",
    requirements=["R7143-6.2-4", "R7143-11.13-1"],
    needs=("chap_algorithms=5",),
)
async def test_chap_keys_after_security_stage(target: Any) -> None:
    """After a completed CHAP security stage, CHAP_A=5 offered in the operational stage
    is not passed over: the target refuses the login or answers CHAP_A (with any value,
    Reject or NotUnderstood included). A login that goes on with the offer unanswered
    breaks the rule that an acceptor answers every key offered to it."""
    (user, secret), _ = target.chap_pair("chap")
    async with target.raw("chap") as raw:
        probe = target.probe(raw, "chap")
        step = await probe.chap(user, secret)
        require(
            step.succeeded and step.response.transit,
            "R7143-12.1.3-1",
            step.missing(ANSWER_RULE) or f"CHAP with the right secret failed ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        step = await probe.step([("CHAP_A", "5")], csg=1, nsg=3, transit=True)
        _require_answer(probe, step, "R7143-11.13-1")
        if step.refused:
            return
        if not step.response.transit:
            await probe.operational(answering=step)
        later = probe.steps[probe.steps.index(step) :]
        answered = [s.keys["CHAP_A"] for s in later if "CHAP_A" in s.keys]
        require(
            bool(answered) or not probe.in_full_feature,
            "R7143-6.2-4",
            "CHAP_A offered in the operational stage after CHAP went unanswered and the login "
            "reached full feature phase: an acceptor answers every key offered to it "
            "(RFC 7143 6.2.1), here at least with Reject or NotUnderstood, or fails the login",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "CHAP.Mutual.ReflectedChallenge",
    "RFC 7143 9.2.1",
    requirements=["R7143-12.1.3-4"],
    needs=("mutual_chap",),
)
async def test_reflected_challenge_refused(target: Any) -> None:
    """The initiator's mutual challenge equal to the target's own challenge is refused."""
    chap, _mutual = target.chap_pair("mutual")
    async with target.raw("mutual") as raw:
        probe, step = await _to_challenge(target, raw, "mutual")
        k = _require_challenge(probe, step)
        their = parse_binary(k["CHAP_C"])
        resp = chap_response(ChapAlgorithm.MD5, int(k["CHAP_I"], 0), chap[1].encode(), their)
        step = await probe.step(
            [
                ("CHAP_N", chap[0]),
                ("CHAP_R", format_binary(resp)),
                ("CHAP_I", "7"),
                ("CHAP_C", format_binary(their)),
            ],
            csg=0,
            nsg=1,
            transit=True,
        )
        _require_refusal(
            probe,
            step,
            "R7143-12.1.3-4",
            "the target answered its own challenge reflected back (reflection attack)",
        )


@spec(
    "CHAP.Mutual.SameSecretBothWays",
    "RFC 7143 9.2.1",
    requirements=["R7143-12.1.3-5"],
    needs=("mutual_chap", "chap_same_secret", "chap_algorithms=5"),
)
async def test_same_secret_both_ways_refused(target: Any) -> None:
    """A target given the initiator's secret as its own mutual CHAP secret refuses the
    login: the initiator's right CHAP_R is the response the target would compute itself
    for that challenge, which RFC 7143 9.2.1 makes an authentication failure."""
    (user, secret), _ = target.chap_pair("same-secret")
    async with target.raw("same-secret") as raw:
        probe, step = await _to_challenge(target, raw, "same-secret")
        k = _require_challenge(probe, step)
        resp = chap_response(
            ChapAlgorithm.MD5, int(k["CHAP_I"], 0), secret.encode(), parse_binary(k["CHAP_C"])
        )
        step = await probe.step(
            [
                ("CHAP_N", user),
                ("CHAP_R", format_binary(resp)),
                ("CHAP_I", "7"),
                ("CHAP_C", format_binary(os.urandom(16))),
            ],
            csg=0,
            nsg=1,
            transit=True,
        )
        _require_refusal(
            probe,
            step,
            "R7143-12.1.3-5",
            f"mutual CHAP went on (status {step.status!r}, keys {sorted(step.keys)}) although "
            "the target's secret is the initiator's: a CHAP_R equal to the one the receiver "
            "would compute with its own secret is an authentication failure (RFC 7143 9.2.1)",
        )


@spec(
    "CHAP.Mutual.OversizeChallenge",
    ("RFC 7143", "12.1.3", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-12.1.3-8", "R7143-11.13-1"],
    needs=("mutual_chap",),
)
async def test_oversize_challenge_refused(target: Any) -> None:
    """A mutual CHAP_C of 1025 bytes is refused.

    The 1024-byte limit binds the sender, so the refusal is a robustness check
    (R7143-12.1.3-8); silence or a hang-up without a Login Response breaks R7143-11.13-1."""
    chap, _mutual = target.chap_pair("mutual")
    async with target.raw("mutual") as raw:
        probe, step = await _to_challenge(target, raw, "mutual")
        k = _require_challenge(probe, step)
        resp = chap_response(
            ChapAlgorithm.MD5, int(k["CHAP_I"], 0), chap[1].encode(), parse_binary(k["CHAP_C"])
        )
        step = await probe.step(
            [
                ("CHAP_N", chap[0]),
                ("CHAP_R", format_binary(resp)),
                ("CHAP_I", "7"),
                ("CHAP_C", format_binary(os.urandom(1025), "base64")),
            ],
            csg=0,
            nsg=1,
            transit=True,
        )
        _require_refusal(
            probe,
            step,
            "R7143-12.1.3-8",
            "a 1025-byte challenge was answered",
            answered="R7143-11.13-1",
        )


@spec(
    "CHAP.Mutual.ChallengeIdentifierOutOfRange",
    ("RFC 7143", "12.1.3", "INFORMATIONAL", "target"),
    "RFC 7143 11.13.5",
    requirements=["R7143-12.1.3-6", "R7143-11.13-1"],
    needs=("mutual_chap",),
)
async def test_chap_i_out_of_range(target: Any) -> None:
    """The initiator's CHAP_I=256 (not an octet) ends the login.

    No keyword says what a receiver does with such an identifier, so the refusal is a
    robustness check (R7143-12.1.3-6); a missing Login Response breaks R7143-11.13-1."""
    chap, _mutual = target.chap_pair("mutual")
    async with target.raw("mutual") as raw:
        probe, step = await _to_challenge(target, raw, "mutual")
        k = _require_challenge(probe, step)
        resp = chap_response(
            ChapAlgorithm.MD5, int(k["CHAP_I"], 0), chap[1].encode(), parse_binary(k["CHAP_C"])
        )
        step = await probe.step(
            [
                ("CHAP_N", chap[0]),
                ("CHAP_R", format_binary(resp)),
                ("CHAP_I", "256"),
                ("CHAP_C", format_binary(os.urandom(16))),
            ],
            csg=0,
            nsg=1,
            transit=True,
        )
        _require_refusal(
            probe, step, "R7143-12.1.3-6", "CHAP_I=256 was accepted", answered="R7143-11.13-1"
        )


@spec(
    "CHAP.Challenge.Fresh",
    "RFC 1994 4.1",
    "RFC 7143 12.1.3",
    requirements=["R1994-4.1-2"],
    needs=("chap_algorithms=5",),
)
async def test_challenge_changes(target: Any) -> None:
    """Two logins get two different challenges (a recorded response cannot be replayed)."""
    seen = []
    for _ in range(2):
        async with target.raw("chap") as raw:
            probe, step = await _to_challenge(target, raw)
            seen.append(_require_challenge(probe, step)["CHAP_C"])
    require(
        seen[0] is not None and seen[0] != seen[1],
        "R1994-4.1-2",
        f"the same CHAP_C twice: {seen[0]!r}",
    )


@spec(
    "CHAP.Discovery.ChapOrNone",
    "RFC 7143 12.1",
    "RFC 7143 12.1.3",
    requirements=["R7143-12.1-1", "R7143-6.2.1-1"],
    needs=("chap_algorithms=5",),
)
async def test_discovery_session_chap(target: Any) -> None:
    """A Discovery session offering AuthMethod=CHAP,None completes: by CHAP with valid
    credentials, or without authentication when discovery is not protected."""
    (user, secret), _ = target.chap_pair("chap")
    async with target.raw("chap") as raw:
        probe = target.probe(raw, "chap", session_type="Discovery", target_name=None)
        step = await probe.step([("AuthMethod", "CHAP,None")], csg=0, nsg=1, transit=False)
        require(
            step.succeeded,
            "R7143-12.1-1",
            f"AuthMethod=CHAP,None refused in discovery ({step.status!r})",
            sent=probe.sent,
            received=probe.received,
        )
        method = step.keys.get("AuthMethod")
        require(
            method in ("CHAP", "None"),
            "R7143-6.2.1-1",
            f"AuthMethod answered {method!r}",
            sent=probe.sent,
            received=probe.received,
        )
        if method == "CHAP":
            s2 = await probe.step([("CHAP_A", "5")], csg=0, nsg=1, transit=False)
            k = s2.keys
            require(
                s2.succeeded and "CHAP_I" in k and "CHAP_C" in k,
                "R7143-12.1-1",
                f"the target chose AuthMethod=CHAP, then answered CHAP_A=5 with status "
                f"{s2.status!r} and keys {sorted(k)}",
                sent=probe.sent,
                received=probe.received,
            )
            resp = chap_response(
                ChapAlgorithm.MD5, int(k["CHAP_I"], 0), secret.encode(), parse_binary(k["CHAP_C"])
            )
            step = await probe.step(
                [("CHAP_N", user), ("CHAP_R", format_binary(resp))], csg=0, nsg=1, transit=True
            )
        else:
            step = await probe.step([], csg=0, nsg=1, transit=True)
        if step.succeeded:
            await probe.operational([])
        require(
            probe.in_full_feature,
            "R7143-12.1.3-1",
            "the discovery login did not complete",
            sent=probe.sent,
            received=probe.received,
        )


def _make_algorithm_or_md5(alg: int) -> Any:
    @spec(
        f"CHAP.Algorithms.{ALG_LABEL[alg]}OrMD5",
        "RFC 7143 12.1.3",
        "RFC 7143 6.2.1",
        requirements=["R7143-12.1.3-1", "R7143-6.2.1-1", "R1994-4.1-1"],
        needs=("chap_algorithms=5",),
    )
    async def test(target: Any) -> None:
        (user, secret), _ = target.chap_pair("chap")
        async with target.raw("chap") as raw:
            probe = target.probe(raw, "chap")
            step = await probe.chap(user, secret, algorithms=[alg, 5])
            chosen = probe.steps[1].keys.get("CHAP_A") if len(probe.steps) > 1 else None
            require(
                chosen in (str(alg), "5"),
                "R7143-6.2.1-1",
                f"CHAP_A={alg},5 answered {chosen!r}",
                sent=probe.sent,
                received=probe.received,
            )
            require(
                step.succeeded,
                "R7143-12.1.3-1",
                f"the target chose CHAP_A={chosen} but refused a response computed with that algorithm "
                f"({step.status!r}): the algorithm it uses is not the one it announced",
                sent=probe.sent,
                received=probe.received,
            )

    test.__doc__ = f"CHAP_A={alg},5: whichever algorithm the target picks, a response computed with it authenticates."
    return test


for _alg in (6, 7, 8):
    globals()[f"test_algorithm_{ALG_LABEL[_alg]}_or_md5"] = _make_algorithm_or_md5(_alg)


@spec(
    "CHAP.Keys.AlgorithmFirstOfTwo",
    "RFC 7143 12.1.3",
    "RFC 7143 6.2.1",
    requirements=["R7143-12.1.3-1", "R7143-6.2.1-1"],
    needs=("chap_algorithms=5", "chap_algorithms=7"),
)
async def test_algorithm_first_of_two(target: Any) -> None:
    """CHAP_A=7,5 to a target that supports both: the target picks 7, the first of the
    initiator's list it supports (a list is answered with its first supported value)."""
    async with target.raw("chap") as raw:
        probe, step = await _to_challenge(target, raw, algs="7,5")
        _require_answer(probe, step, "R7143-6.2.1-1")
        require(
            step.keys.get("CHAP_A") == "7",
            "R7143-6.2.1-1",
            f"CHAP_A=7,5 answered {step.keys.get('CHAP_A')!r}: the target supports both, so it "
            "answers the first of the initiator's list it supports, 7 (RFC 7143 6.2.1)",
            sent=probe.sent,
            received=probe.received,
        )


@spec(
    "CHAP.Keys.BinaryWithoutPrefix",
    "RFC 7143 12.1.3",
    "RFC 7143 6.1",
    requirements=["R7143-12.1.3-3", "R7143-12.1.3-6"],
    needs=("chap_algorithms=5",),
)
async def test_binary_without_prefix(target: Any) -> None:
    """The right MD5 CHAP_R written as bare hexadecimal digits, without the 0x prefix a
    binary value needs (RFC 7143 6.1), is not a CHAP response: the login fails."""
    (user, secret), _ = target.chap_pair("chap")
    async with target.raw("chap") as raw:
        probe, step = await _to_challenge(target, raw)
        keys = _require_challenge(probe, step)
        digest = chap_response(
            ChapAlgorithm(5), int(keys["CHAP_I"], 0), secret.encode(), parse_binary(keys["CHAP_C"])
        )
        step = await probe.step(
            [("CHAP_N", user), ("CHAP_R", digest.hex())], csg=0, nsg=1, transit=True
        )
        if step.succeeded and step.response.transit:
            step = await probe.operational([])
        _require_refusal(
            probe,
            step,
            "R7143-12.1.3-3",
            "a CHAP_R without its 0x prefix was accepted as the response: a binary value is "
            "0x-hexadecimal or 0b-base64 (RFC 7143 6.1), anything else does not authenticate",
        )
