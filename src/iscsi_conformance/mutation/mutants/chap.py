"""CHAP: the target's verification of the initiator and the reflection rules
(RFC 7143 12.1.3, RFC 1994). ``core.chap.ChapAuthenticator`` is the target's side alone."""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any

from iscsi_conformance.core import chap, text
from iscsi_conformance.core.chap import ChapAlgorithm, ChapAuthenticator, chap_response
from iscsi_conformance.core.login.target import SECURITY, TargetLogin
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant


def _verify_with(p: Patcher, accept: Any) -> None:
    """The target's CHAP_R check becomes ``accept(self, pairs, secret, got, want)``."""

    def make(old: Any) -> Any:
        def verify(self: ChapAuthenticator, pairs: Any) -> None:
            assert self.algorithm is not None
            name = pairs["CHAP_N"]
            secret = self.lookup_secret(name)
            try:
                got = text.parse_binary(pairs["CHAP_R"])
            except Exception:
                got = b""
            want = (
                chap_response(self.algorithm, self._ident, secret, self._challenge)
                if secret is not None
                else b""
            )
            if accept(self, pairs, secret, got, want):
                self.peer_name = name
                return
            old(self, pairs)

        return verify

    p.wrap(ChapAuthenticator, "_verify", make)


@mutant(
    "CHAP.Verify.AnyResponseAccepted",
    "chap",
    "the target accepts any CHAP_R of the right length for a known user (12.1.3, RFC 1994 4.1)",
    catches=["CHAP.WrongSecret"],
)
def any_response(p: Patcher) -> None:
    _verify_with(
        p,
        lambda self, pairs, secret, got, want: (
            secret is not None and len(got) == self.algorithm.digest_size
        ),
    )


@mutant(
    "CHAP.Verify.UnknownUserAccepted",
    "chap",
    "a CHAP_N the target does not know authenticates (12.1.3)",
    catches=["CHAP.Keys.WrongUser"],
)
def unknown_user(p: Patcher) -> None:
    _verify_with(p, lambda self, pairs, secret, got, want: secret is None)


@mutant(
    "CHAP.Verify.TruncatedResponseAccepted",
    "chap",
    "a CHAP_R shorter than the digest is accepted when it is a prefix of the right one (12.1.3)",
    catches=["CHAP.Keys.ResponseWrongLength"],
)
def truncated(p: Patcher) -> None:
    _verify_with(
        p,
        lambda self, pairs, secret, got, want: (
            bool(got) and hmac.compare_digest(got, want[: len(got)])
        ),
    )


@mutant(
    "CHAP.Verify.MalformedBinaryAccepted",
    "chap",
    "a CHAP_R without its 0x/0b prefix is read as hexadecimal (12.1.3, 6.1 binary-value)",
    catches=["CHAP.Keys.MalformedBinary"],
)
def malformed_binary(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def verify(self: ChapAuthenticator, pairs: Any) -> None:
            value = pairs.get("CHAP_R", "")
            if value and value[:2].lower() not in ("0x", "0b"):
                pairs = {**pairs, "CHAP_R": "0x" + value}
            old(self, pairs)

        return verify

    p.wrap(ChapAuthenticator, "_verify", make)


@mutant(
    "CHAP.Verify.MissingResponseAccepted",
    "chap",
    "a CHAP_N without CHAP_R ends CHAP as authenticated (12.1.3)",
    catches=["CHAP.Keys.MissingResponse"],
)
def missing_response(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def receive(self: ChapAuthenticator, pairs: Any) -> Any:
            keys = {k for k in pairs if k in chap.CHAP_KEYS}
            if self.state is chap.AuthenticatorState.WAIT_RESPONSE and keys == {"CHAP_N"}:
                self.peer_name = pairs["CHAP_N"]
                self.state = chap.AuthenticatorState.DONE
                return []
            return old(self, pairs)

        return receive

    p.wrap(ChapAuthenticator, "receive", make)


@mutant(
    "CHAP.Reflection.OwnChallengeAnswered",
    "chap",
    "the target answers its own CHAP_C reflected back by the initiator (12.1.3)",
    catches=["CHAP.Mutual.ReflectedChallenge"],
)
def reflection(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def prove(self: ChapAuthenticator, pairs: Any) -> Any:
            saved = self._challenge
            self._challenge = b"\x00mutant-never-equal"
            try:
                return old(self, pairs)
            finally:
                self._challenge = saved

        return prove

    p.wrap(ChapAuthenticator, "_prove", make)


@mutant(
    "CHAP.Reflection.SameSecretBothWays",
    "chap",
    "mutual CHAP is answered although the initiator's and the target's secrets are equal (12.1.3)",
    catches=["CHAP.Mutual"],
)
def same_secret(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def prove(self: ChapAuthenticator, pairs: Any) -> Any:
            lookup = self.lookup_secret
            self.lookup_secret = lambda n: None
            try:
                return old(self, pairs)
            finally:
                self.lookup_secret = lookup

        return prove

    p.wrap(ChapAuthenticator, "_prove", make)


@mutant(
    "CHAP.Mutual.OversizeChallengeAnswered",
    "chap",
    "the initiator's CHAP_C above 1024 bytes is answered (12.1.3: MUST NOT exceed 1024)",
    catches=["CHAP.Mutual.OversizeChallenge"],
)
def oversize(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def prove(self: ChapAuthenticator, pairs: Any) -> Any:
            saved = self.policy
            self.policy = dataclasses.replace(saved, max_challenge_length=1 << 20)
            try:
                return old(self, pairs)
            finally:
                self.policy = saved

        return prove

    p.wrap(ChapAuthenticator, "_prove", make)


@mutant(
    "CHAP.Mutual.IdentifierOutOfRangeAnswered",
    "chap",
    "a CHAP_I above 255 is taken modulo 256 and answered (RFC 1994 4.1: one octet)",
    catches=["CHAP.Mutual.ChallengeIdentifierOutOfRange"],
)
def ident_range(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def prove(self: ChapAuthenticator, pairs: Any) -> Any:
            try:
                n = text.parse_number(pairs["CHAP_I"])
                pairs = {**pairs, "CHAP_I": str(n % 256)}
            except Exception:
                pass
            return old(self, pairs)

        return prove

    p.wrap(ChapAuthenticator, "_prove", make)


@mutant(
    "CHAP.Mutual.WrongTargetResponse",
    "chap",
    "in mutual CHAP the target computes its CHAP_R with the wrong identifier (RFC 1994 4.1)",
    catches=["CHAP.Mutual"],
)
def wrong_target_response(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def prove(self: ChapAuthenticator, pairs: Any) -> Any:
            try:
                n = text.parse_number(pairs["CHAP_I"])
                pairs = {**pairs, "CHAP_I": str((n + 1) % 256)}
            except Exception:
                pass
            return old(self, pairs)

        return prove

    p.wrap(ChapAuthenticator, "_prove", make)


@mutant(
    "CHAP.Challenge.Constant",
    "chap",
    "the target sends the same identifier and challenge in every login (12.1.3: unique, unpredictable)",
    catches=["CHAP.Challenge.Fresh"],
)
def constant_challenge(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def challenge(self: ChapAuthenticator, offer: str) -> Any:
            rng = self._rng
            self._rng = lambda n: bytes([0x5A]) * n
            try:
                return old(self, offer)
            finally:
                self._rng = rng

        return challenge

    p.wrap(ChapAuthenticator, "_challenge_pairs", make)


@mutant(
    "CHAP.Challenge.Short",
    "chap",
    "the target's CHAP_C is 4 bytes (12.1.3: as long as the digest, at least 16 bytes for MD5)",
    catches=["CHAP.OneWay", "CHAP.Challenge.Fresh"],
)
def short_challenge(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def challenge(self: ChapAuthenticator, offer: str) -> Any:
            saved = self.policy
            self.policy = dataclasses.replace(saved, challenge_length=4)
            try:
                return old(self, offer)
            finally:
                self.policy = saved

        return challenge

    p.wrap(ChapAuthenticator, "_challenge_pairs", make)


@mutant(
    "CHAP.Algorithm.LastCommonChosen",
    "chap",
    "the target picks the last algorithm it shares with CHAP_A, not the initiator's first (12.1.3)",
    catches=["CHAP.Keys.AlgorithmFromList", "CHAP.Algorithms"],
)
def last_algorithm(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def challenge(self: ChapAuthenticator, offer: str) -> Any:
            items = [i for i in text.parse_list(offer) if i.isdigit()]
            return old(self, ",".join(reversed(items)) or offer)

        return challenge

    p.wrap(ChapAuthenticator, "_challenge_pairs", make)


@mutant(
    "CHAP.Algorithm.UnofferedMD5",
    "chap",
    "with no algorithm in common the target picks MD5 anyway instead of refusing (12.1.3)",
    catches=["CHAP.Keys.UnsupportedAlgorithmOnly"],
)
def unoffered(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def challenge(self: ChapAuthenticator, offer: str) -> Any:
            try:
                return old(self, offer)
            except Exception:
                saved = self.algorithms
                self.algorithms = (ChapAlgorithm.MD5,)
                try:
                    return old(self, "5")
                finally:
                    self.algorithms = saved

        return challenge

    p.wrap(ChapAuthenticator, "_challenge_pairs", make)


def _strip_request(p: Patcher, change: Any) -> None:
    def make(old: Any) -> Any:
        def negotiate(self: TargetLogin, req: Any, prior: Any) -> Any:
            return old(self, change(self, req, prior), prior)

        return negotiate

    p.wrap(TargetLogin, "_negotiate", make)


@mutant(
    "CHAP.Keys.RepeatedAccepted",
    "chap",
    "a CHAP key sent twice in one request is accepted, the last value winning (6.2)",
    catches=["CHAP.Keys.RepeatedAlgorithmKey"],
)
def repeated_chap(p: Patcher) -> None:
    import dataclasses as dc

    def change(self: TargetLogin, req: Any, prior: Any) -> Any:
        try:
            pairs = text.parse_pairs(req.data)
        except Exception:
            return req
        if req.cont or not pairs:
            return req
        seen: dict[str, str] = {}
        out = []
        for k, v in pairs:
            if k in chap.CHAP_KEYS:
                if k in seen:
                    continue
                seen[k] = v
            out.append((k, v))
        return dc.replace(req, data=text.format_pairs(out)) if len(out) != len(pairs) else req

    _strip_request(p, change)


@mutant(
    "CHAP.Stage.KeysIgnoredInOperational",
    "chap",
    "CHAP keys in the operational stage are ignored instead of failing the login (12.1.3, 6.3)",
    catches=["CHAP.Stage.ChapKeysInOperationalStage"],
)
def chap_in_operational(p: Patcher) -> None:
    import dataclasses as dc

    from iscsi_conformance.core.login.states import TARGET_STAGE

    def change(self: TargetLogin, req: Any, prior: Any) -> Any:
        if TARGET_STAGE.get(prior) is SECURITY or req.cont:
            return req
        try:
            pairs = text.parse_pairs(req.data)
        except Exception:
            return req
        kept = [(k, v) for k, v in pairs if k not in chap.CHAP_KEYS]
        return dc.replace(req, data=text.format_pairs(kept)) if len(kept) != len(pairs) else req

    _strip_request(p, change)


@mutant(
    "CHAP.Discovery.AuthIgnored",
    "chap",
    "a Discovery session skips the CHAP its configuration requires (12, 13.3)",
    catches=["CHAP.Discovery.ChapOrNone"],
)
def discovery_chap(p: Patcher) -> None:
    def post(self: TargetLogin, result: Any, req: Any) -> Any:
        if result is None and self.session_type == "Discovery" and self._auth_chap is not None:
            self._auth_chap = None
            assert self.negotiator is not None
            self.negotiator.local["AuthMethod"] = "None"
        return result

    p.after(TargetLogin, "_begin", post, result=True)
