"""CHAP for iSCSI login (RFC 1994, RFC 7143 12.1.3), both ends, sans-IO.

Theory of operation: CHAP runs inside the SecurityNegotiation stage once
``AuthMethod=CHAP`` is agreed.  The exchange (RFC 7143 12.1.3) is:

1. initiator: ``CHAP_A=<A1,A2,...>`` (algorithms it accepts, preferred first);
2. target:    ``CHAP_A=<A> CHAP_I=<I> CHAP_C=<C>`` (its pick, identifier, challenge);
3. initiator: ``CHAP_N=<N> CHAP_R=<R>``, plus ``CHAP_I`` / ``CHAP_C`` for mutual CHAP;
4. target (mutual only): ``CHAP_N=<N> CHAP_R=<R>``.

R is H(I || secret || C) (RFC 1994 4.1) with H one of MD5 (5), SHA-1 (6), SHA-256 (7),
SHA3-256 (8): the values of the IANA "PPP Authentication Algorithms" registry used
by iSCSI (7 and 8 were added after RFC 7143; Linux LIO implements all four).

:class:`ChapClient` (initiator) and :class:`ChapAuthenticator` (target) are small
state machines written as ``{(state, input): (action, next_state)}`` tables; the input
is which CHAP keys a PDU carried.  Anything outside the table, a wrong response, an
oversize or reflected challenge raises
:class:`~iscsi_conformance.errors.AuthenticationError` (login status 0x0201).
Randomness (identifiers, challenges) comes from an injected ``rng(n) -> bytes``.
Secrets never appear in a repr.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from iscsi_conformance.core import text
from iscsi_conformance.errors import AuthenticationError, ConfigError, NegotiationError

Pair = tuple[str, str]
Rng = Callable[[int], bytes]

# RFC 7143 12.1.3: C and R are large-binary-values whose binary length MUST NOT
# exceed 1024 bytes.
MAX_CHALLENGE_LENGTH = 1024
# RFC 7143 12.1.3 (from RFC 3720 8.2.1): a CHAP secret with fewer than 96 random bits
# is only acceptable under IPsec encryption; implementations must handle 128 bits.
MIN_SECRET_LENGTH = 12

CHAP_KEYS = frozenset({"CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"})


class ChapAlgorithm(enum.IntEnum):
    """CHAP_A values (IANA PPP Authentication Algorithms; RFC 7143 12.1.3)."""

    MD5 = 5
    SHA1 = 6
    SHA256 = 7
    SHA3_256 = 8

    @property
    def hash_name(self) -> str:
        """hashlib name of the digest."""
        return {5: "md5", 6: "sha1", 7: "sha256", 8: "sha3_256"}[self.value]

    @property
    def digest_size(self) -> int:
        """Length in bytes of a response (the digest output)."""
        return hashlib.new(self.hash_name).digest_size


DEFAULT_ALGORITHMS: tuple[ChapAlgorithm, ...] = (
    ChapAlgorithm.SHA3_256,
    ChapAlgorithm.SHA256,
    ChapAlgorithm.SHA1,
    ChapAlgorithm.MD5,
)


def chap_response(alg: ChapAlgorithm, ident: int, secret: bytes, challenge: bytes) -> bytes:
    """The CHAP response H(identifier || secret || challenge) (RFC 1994 4.1)."""
    if not 0 <= ident <= 255:
        raise ValueError("CHAP identifier is one octet")
    h = hashlib.new(ChapAlgorithm(alg).hash_name)
    h.update(bytes([ident]) + secret + challenge)
    return h.digest()


class SecretPolicy(enum.Enum):
    """What to do with a secret shorter than ``ChapPolicy.min_secret_length``."""

    ALLOW = "allow"
    WARN = "warn"
    REJECT = "reject"


@dataclass(frozen=True)
class ChapPolicy:
    """Local CHAP policy; the RFC leaves these to the implementation within limits.

    ``challenge_length`` is the length of challenges we issue (None: the digest length
    of the chosen algorithm, at least 16).  ``min_peer_challenge_length`` is the
    shortest challenge we answer; ``max_challenge_length`` the longest (1024, RFC 7143
    12.1.3).  ``encoding`` is how we send C and R (``hex`` 0x or ``base64`` 0b).
    """

    short_secret: SecretPolicy = SecretPolicy.WARN
    min_secret_length: int = MIN_SECRET_LENGTH
    challenge_length: int | None = None
    min_peer_challenge_length: int = 1
    max_challenge_length: int = MAX_CHALLENGE_LENGTH
    encoding: str = "hex"


@dataclass(frozen=True)
class ChapCredentials:
    """A CHAP name and its secret (the secret is kept out of the repr)."""

    name: str
    secret: bytes = field(repr=False)


def _fail(message: str) -> AuthenticationError:
    return AuthenticationError(message, section="RFC 7143 12.1.3")


def _check_secret(secret: bytes, policy: ChapPolicy, who: str, warnings: list[str]) -> bool:
    """Apply the short-secret policy; return False if the secret is refused."""
    if len(secret) >= policy.min_secret_length:
        return True
    message = (
        f"{who} CHAP secret is {len(secret)} bytes, under {policy.min_secret_length} "
        "(RFC 7143 12.1.3: fewer than 96 random bits need IPsec)"
    )
    if policy.short_secret is SecretPolicy.REJECT:
        return False
    if policy.short_secret is SecretPolicy.WARN:
        warnings.append(message)
    return True


def _parse_challenge(value: str, policy: ChapPolicy, key: str = "CHAP_C") -> bytes:
    if value[:2].lower() not in ("0x", "0b"):
        raise _fail(f"{key} must be hex (0x) or base64 (0b) encoded")
    try:
        data = text.parse_binary(value)
    except NegotiationError as exc:
        raise _fail(f"{key} is malformed: {exc.message}") from exc
    if len(data) > policy.max_challenge_length:
        raise _fail(f"{key} is {len(data)} bytes, over {policy.max_challenge_length}")
    return data


def _parse_ident(value: str) -> int:
    try:
        n = text.parse_number(value)
    except NegotiationError as exc:
        raise _fail(f"CHAP_I is malformed: {exc.message}") from exc
    if n > 255:
        raise _fail(f"CHAP_I={value} is outside 0..255")
    return n


def _classify(pairs: Mapping[str, str]) -> frozenset[str]:
    return frozenset(k for k in pairs if k in CHAP_KEYS)


def _make_challenge(alg: ChapAlgorithm, policy: ChapPolicy, rng: Rng) -> bytes:
    length = policy.challenge_length or max(16, alg.digest_size)
    challenge = rng(length)
    if len(challenge) != length:
        raise ValueError("rng returned the wrong number of bytes")
    return challenge


# Inputs of both tables: the set of CHAP keys in one PDU.
IN_NONE: frozenset[str] = frozenset()
IN_A = frozenset({"CHAP_A"})
IN_AIC = frozenset({"CHAP_A", "CHAP_I", "CHAP_C"})
IN_NR = frozenset({"CHAP_N", "CHAP_R"})
IN_NRIC = frozenset({"CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"})


class ClientState(enum.Enum):
    """Initiator CHAP states."""

    START = "start"
    WAIT_CHALLENGE = "CHAP_A sent"
    WAIT_CONFIRM = "CHAP_R sent"
    DONE = "done"


class ClientAction(enum.Enum):
    """Initiator CHAP side effects."""

    SEND_ALGORITHMS = "send CHAP_A"
    SEND_RESPONSE = "send CHAP_N/CHAP_R (and CHAP_I/CHAP_C if mutual)"
    EXPECT_NO_PROOF = "one-way: the target sends nothing more"
    VERIFY_TARGET = "mutual: check the target's CHAP_R"
    WAIT = "nothing to do"


CLIENT_TRANSITIONS: dict[tuple[ClientState, frozenset[str]], tuple[ClientAction, ClientState]] = {
    (ClientState.START, IN_NONE): (ClientAction.SEND_ALGORITHMS, ClientState.WAIT_CHALLENGE),
    (ClientState.WAIT_CHALLENGE, IN_AIC): (ClientAction.SEND_RESPONSE, ClientState.WAIT_CONFIRM),
    (ClientState.WAIT_CONFIRM, IN_NONE): (ClientAction.EXPECT_NO_PROOF, ClientState.DONE),
    (ClientState.WAIT_CONFIRM, IN_NR): (ClientAction.VERIFY_TARGET, ClientState.DONE),
}


class ChapClient:
    """Initiator side of CHAP.

    ``credentials`` is our CHAP_N and secret.  ``target`` (optional) enables mutual
    CHAP: the name and secret the target must prove.  Call :meth:`start` for step 1,
    then :meth:`receive` with each target PDU's pairs; both return pairs to send.
    """

    def __init__(
        self,
        credentials: ChapCredentials,
        *,
        algorithms: Iterable[ChapAlgorithm] = DEFAULT_ALGORITHMS,
        target: ChapCredentials | None = None,
        rng: Rng | None = None,
        policy: ChapPolicy = ChapPolicy(),
    ) -> None:
        self.credentials = credentials
        self.algorithms = tuple(ChapAlgorithm(a) for a in algorithms)
        self.target = target
        self.policy = policy
        self.state = ClientState.START
        self.warnings: list[str] = []
        self.algorithm: ChapAlgorithm | None = None
        self._rng = rng
        self._challenge = b""
        self._ident = 0
        if target is not None:
            if rng is None:
                raise ConfigError("mutual CHAP needs an rng for our challenge", field="rng")
            # RFC 7143 12.1.3: a secret used to authenticate initiators MUST NOT be
            # used to authenticate targets.
            if hmac.compare_digest(target.secret, credentials.secret):
                raise ConfigError("mutual CHAP with the same secret in both directions")
        if not _check_secret(credentials.secret, policy, "initiator", self.warnings):
            raise ConfigError("CHAP secret too short for the policy", field="secret")
        if target is not None and not _check_secret(target.secret, policy, "target", self.warnings):
            raise ConfigError("target CHAP secret too short for the policy", field="secret")

    @property
    def mutual(self) -> bool:
        """True if we authenticate the target too."""
        return self.target is not None

    @property
    def done(self) -> bool:
        """True once CHAP finished successfully."""
        return self.state is ClientState.DONE

    def start(self) -> list[Pair]:
        """Step 1: the CHAP_A offer."""
        return self.receive({})

    def receive(self, pairs: Mapping[str, str]) -> list[Pair]:
        """Consume the target's CHAP keys, return ours. Raises AuthenticationError."""
        entry = CLIENT_TRANSITIONS.get((self.state, _classify(pairs)))
        if entry is None:
            raise _fail(
                f"unexpected CHAP keys {sorted(_classify(pairs))} in state {self.state.name}"
            )
        action, next_state = entry
        out: list[Pair] = []
        if action is ClientAction.SEND_ALGORITHMS:
            out = [("CHAP_A", ",".join(str(int(a)) for a in self.algorithms))]
        elif action is ClientAction.SEND_RESPONSE:
            out = self._respond(pairs)
        elif action is ClientAction.EXPECT_NO_PROOF:
            if self.mutual:
                raise _fail("mutual CHAP: the target did not send CHAP_N/CHAP_R")
        elif action is ClientAction.VERIFY_TARGET:
            self._verify_target(pairs)
        self.state = next_state
        return out

    def _respond(self, pairs: Mapping[str, str]) -> list[Pair]:
        try:
            alg_value = text.parse_number(pairs["CHAP_A"])
        except NegotiationError as exc:
            raise _fail(f"CHAP_A={pairs['CHAP_A']!r} from the target") from exc
        if alg_value not in {int(a) for a in self.algorithms}:
            # RFC 7143 6.2.1: selecting a value not offered is a protocol error.
            raise _fail(f"target chose CHAP_A={pairs['CHAP_A']} which we did not offer")
        alg = ChapAlgorithm(alg_value)
        self.algorithm = alg
        ident = _parse_ident(pairs["CHAP_I"])
        challenge = _parse_challenge(pairs["CHAP_C"], self.policy)
        if len(challenge) < self.policy.min_peer_challenge_length:
            raise _fail(f"CHAP_C of {len(challenge)} bytes is too short for our policy")
        enc = self.policy.encoding
        resp = chap_response(alg, ident, self.credentials.secret, challenge)
        out = [("CHAP_N", self.credentials.name), ("CHAP_R", text.format_binary(resp, enc))]
        if self.target is not None:
            assert self._rng is not None
            self._ident = self._rng(1)[0]
            self._challenge = _make_challenge(alg, self.policy, self._rng)
            # RFC 7143 12.1.3: never reuse the responder's challenge for the other direction.
            if self._challenge == challenge:
                raise _fail("our random challenge equals the target's; refusing to send it")
            out += [
                ("CHAP_I", str(self._ident)),
                ("CHAP_C", text.format_binary(self._challenge, enc)),
            ]
        return out

    def _verify_target(self, pairs: Mapping[str, str]) -> None:
        if self.target is None or self.algorithm is None:
            # One-way CHAP, yet the target sent CHAP_N/CHAP_R: it answers a challenge
            # we never sent (RFC 7143 12.1.3: the proof follows the initiator's CHAP_C).
            raise _fail("the target sent CHAP_N/CHAP_R, but no target challenge was sent")
        if pairs["CHAP_N"] != self.target.name:
            raise _fail(f"target CHAP_N={pairs['CHAP_N']!r}, expected {self.target.name!r}")
        got = _parse_challenge(pairs["CHAP_R"], self.policy, "CHAP_R")
        want = chap_response(self.algorithm, self._ident, self.target.secret, self._challenge)
        if not hmac.compare_digest(got, want):
            raise _fail("the target's CHAP_R is wrong (mutual authentication failed)")


class AuthenticatorState(enum.Enum):
    """Target CHAP states."""

    WAIT_ALGORITHMS = "waiting for CHAP_A"
    WAIT_RESPONSE = "challenge sent"
    DONE = "done"


class AuthenticatorAction(enum.Enum):
    """Target CHAP side effects."""

    WAIT = "nothing yet"
    SEND_CHALLENGE = "send CHAP_A/CHAP_I/CHAP_C"
    VERIFY = "check CHAP_R"
    VERIFY_AND_PROVE = "check CHAP_R, answer the initiator's challenge"


AUTHENTICATOR_TRANSITIONS: dict[
    tuple[AuthenticatorState, frozenset[str]], tuple[AuthenticatorAction, AuthenticatorState]
] = {
    (AuthenticatorState.WAIT_ALGORITHMS, IN_NONE): (
        AuthenticatorAction.WAIT,
        AuthenticatorState.WAIT_ALGORITHMS,
    ),
    (AuthenticatorState.WAIT_ALGORITHMS, IN_A): (
        AuthenticatorAction.SEND_CHALLENGE,
        AuthenticatorState.WAIT_RESPONSE,
    ),
    (AuthenticatorState.WAIT_RESPONSE, IN_NONE): (
        AuthenticatorAction.WAIT,
        AuthenticatorState.WAIT_RESPONSE,
    ),
    (AuthenticatorState.WAIT_RESPONSE, IN_NR): (
        AuthenticatorAction.VERIFY,
        AuthenticatorState.DONE,
    ),
    (AuthenticatorState.WAIT_RESPONSE, IN_NRIC): (
        AuthenticatorAction.VERIFY_AND_PROVE,
        AuthenticatorState.DONE,
    ),
}


class ChapAuthenticator:
    """Target side of CHAP.

    ``lookup_secret(name)`` returns the secret of initiator CHAP_N ``name`` (None: no
    such user).  ``credentials`` is the target's own name and secret, needed to
    answer mutual CHAP; ``require_mutual`` refuses one-way CHAP.  ``rng`` gives the
    identifier and challenge bytes.
    """

    def __init__(
        self,
        lookup_secret: Callable[[str], bytes | None],
        *,
        rng: Rng,
        algorithms: Iterable[ChapAlgorithm] = DEFAULT_ALGORITHMS,
        credentials: ChapCredentials | None = None,
        require_mutual: bool = False,
        policy: ChapPolicy = ChapPolicy(),
    ) -> None:
        self.lookup_secret = lookup_secret
        self.algorithms = tuple(ChapAlgorithm(a) for a in algorithms)
        self.credentials = credentials
        self.require_mutual = require_mutual
        self.policy = policy
        self.state = AuthenticatorState.WAIT_ALGORITHMS
        self.warnings: list[str] = []
        self.algorithm: ChapAlgorithm | None = None
        #: CHAP_N of the authenticated initiator.
        self.peer_name: str | None = None
        self.mutual = False
        self._rng = rng
        self._ident = 0
        self._challenge = b""
        if require_mutual and credentials is None:
            raise ConfigError("mutual CHAP needs target credentials", field="credentials")

    @property
    def done(self) -> bool:
        """True once the initiator is authenticated."""
        return self.state is AuthenticatorState.DONE

    def receive(self, pairs: Mapping[str, str]) -> list[Pair]:
        """Consume the initiator's CHAP keys, return ours. Raises AuthenticationError."""
        entry = AUTHENTICATOR_TRANSITIONS.get((self.state, _classify(pairs)))
        if entry is None:
            raise _fail(
                f"unexpected CHAP keys {sorted(_classify(pairs))} in state {self.state.name}"
            )
        action, next_state = entry
        out: list[Pair] = []
        if action is AuthenticatorAction.SEND_CHALLENGE:
            out = self._challenge_pairs(pairs["CHAP_A"])
        elif action is AuthenticatorAction.VERIFY:
            if self.require_mutual:
                raise _fail("mutual CHAP is required but the initiator did not challenge us")
            self._verify(pairs)
        elif action is AuthenticatorAction.VERIFY_AND_PROVE:
            self._verify(pairs)
            out = self._prove(pairs)
        self.state = next_state
        return out

    def _challenge_pairs(self, offer: str) -> list[Pair]:
        try:
            items = text.parse_list(offer)
        except NegotiationError as exc:
            raise _fail(f"CHAP_A={offer!r} is malformed") from exc
        offered = [int(i) for i in items if i.isdigit()]  # unknown values are ignored
        chosen = next((int(a) for a in offered if a in {int(x) for x in self.algorithms}), None)
        if chosen is None:
            raise _fail(f"no CHAP algorithm in common (offered {offer})")
        alg = ChapAlgorithm(chosen)
        self.algorithm = alg
        self._ident = self._rng(1)[0]
        self._challenge = _make_challenge(alg, self.policy, self._rng)
        return [
            ("CHAP_A", str(chosen)),
            ("CHAP_I", str(self._ident)),
            ("CHAP_C", text.format_binary(self._challenge, self.policy.encoding)),
        ]

    def _verify(self, pairs: Mapping[str, str]) -> None:
        assert self.algorithm is not None
        name = pairs["CHAP_N"]
        secret = self.lookup_secret(name)
        if secret is None:
            raise _fail(f"unknown CHAP user {name!r}")
        if not _check_secret(secret, self.policy, f"initiator {name!r}", self.warnings):
            raise _fail(f"the secret of {name!r} is shorter than the policy allows")
        got = _parse_challenge(pairs["CHAP_R"], self.policy, "CHAP_R")
        if len(got) != self.algorithm.digest_size:
            raise _fail(
                f"CHAP_R is {len(got)} bytes; {self.algorithm.name} gives "
                f"{self.algorithm.digest_size}"
            )
        want = chap_response(self.algorithm, self._ident, secret, self._challenge)
        if not hmac.compare_digest(got, want):
            raise _fail(f"wrong CHAP_R for {name!r}")
        self.peer_name = name

    def _prove(self, pairs: Mapping[str, str]) -> list[Pair]:
        assert self.algorithm is not None and self.peer_name is not None
        if self.credentials is None:
            raise _fail("the initiator asked for mutual CHAP, which this target does not do")
        ident = _parse_ident(pairs["CHAP_I"])
        challenge = _parse_challenge(pairs["CHAP_C"], self.policy)
        if len(challenge) < self.policy.min_peer_challenge_length:
            raise _fail(f"CHAP_C of {len(challenge)} bytes is too short for our policy")
        # RFC 7143 12.1.3: the responder MUST refuse its own challenge reflected back.
        if challenge == self._challenge:
            raise _fail("the initiator reflected our own CHAP_C (reflection attack)")
        initiator_secret = self.lookup_secret(self.peer_name) or b""
        # RFC 7143 12.1.3: the same secret MUST NOT serve both directions.
        if hmac.compare_digest(initiator_secret, self.credentials.secret):
            raise _fail("mutual CHAP refused: the initiator and target secrets are equal")
        self.mutual = True
        resp = chap_response(self.algorithm, ident, self.credentials.secret, challenge)
        return [
            ("CHAP_N", self.credentials.name),
            ("CHAP_R", text.format_binary(resp, self.policy.encoding)),
        ]
