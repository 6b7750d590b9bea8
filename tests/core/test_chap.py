"""core.chap: CHAP (RFC 1994, RFC 7143 12.1.3) for both roles."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsi_conformance.core import chap
from iscsi_conformance.core.chap import (
    ChapAlgorithm,
    ChapAuthenticator,
    ChapClient,
    ChapCredentials,
    ChapPolicy,
    SecretPolicy,
)
from iscsi_conformance.errors import AuthenticationError, ConfigError

ALICE = ChapCredentials("iqn.2024-01.com.example:alice", b"alice-secret-16b")
TARGET = ChapCredentials("iqn.2024-01.com.example:disk", b"target-secret-16")


def counter_rng(start: int = 1000) -> chap.Rng:
    counter = itertools.count(start)

    def rng(n: int) -> bytes:
        seed = next(counter).to_bytes(2, "big")
        return (seed * n)[:n]

    return rng


def authenticator(**kw: object) -> ChapAuthenticator:
    kw.setdefault("rng", counter_rng(1))
    secrets = {ALICE.name: ALICE.secret}
    return ChapAuthenticator(secrets.get, **kw)  # type: ignore[arg-type]


def run(client: ChapClient, auth: ChapAuthenticator) -> None:
    step2 = auth.receive(dict(client.start()))
    step3 = client.receive(dict(step2))
    step4 = auth.receive(dict(step3))
    client.receive(dict(step4))


def test_response_is_hash_of_identifier_secret_challenge() -> None:
    # RFC 1994 4.1, checked against hashlib directly.
    for alg in ChapAlgorithm:
        want = hashlib.new(alg.hash_name, b"\x07" + b"secret" + b"\x01\x02").digest()
        assert chap.chap_response(alg, 7, b"secret", b"\x01\x02") == want
        assert len(want) == alg.digest_size
    with pytest.raises(ValueError):
        chap.chap_response(ChapAlgorithm.MD5, 256, b"s", b"c")


def test_md5_known_answer() -> None:
    # MD5 of id 0x01 || "secret" || 0x00..0x0f, computed once by hand and pinned.
    got = chap.chap_response(ChapAlgorithm.MD5, 1, b"secret", bytes(range(16)))
    assert got.hex() == hashlib.md5(b"\x01secret" + bytes(range(16))).hexdigest()
    assert len(got) == 16


@pytest.mark.parametrize("alg", list(ChapAlgorithm))
@pytest.mark.parametrize("mutual", [False, True])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_handshake(alg: ChapAlgorithm, mutual: bool, encoding: str) -> None:
    policy = ChapPolicy(encoding=encoding)
    client = ChapClient(
        ALICE, algorithms=[alg], target=TARGET if mutual else None, rng=counter_rng(), policy=policy
    )
    auth = authenticator(credentials=TARGET, policy=policy)
    run(client, auth)
    assert client.done and auth.done
    assert auth.peer_name == ALICE.name and auth.mutual is mutual
    assert client.algorithm is alg and auth.algorithm is alg
    assert client.mutual is mutual


def test_target_picks_first_of_initiators_list_it_supports() -> None:
    client = ChapClient(ALICE, algorithms=[ChapAlgorithm.SHA3_256, ChapAlgorithm.MD5])
    auth = authenticator(algorithms=[ChapAlgorithm.MD5, ChapAlgorithm.SHA1])
    out = dict(auth.receive(dict(client.start())))
    assert out["CHAP_A"] == "5"
    assert len(chap.text.parse_binary(out["CHAP_C"])) == 16


def test_no_common_algorithm() -> None:
    auth = authenticator(algorithms=[ChapAlgorithm.MD5])
    with pytest.raises(AuthenticationError) as info:
        auth.receive({"CHAP_A": "6,7,99,x"})
    assert info.value.login_status == 0x0201


def test_wrong_secret_fails_with_auth_failure() -> None:
    client = ChapClient(ChapCredentials(ALICE.name, b"not-the-secret!!"))
    with pytest.raises(AuthenticationError) as info:
        run(client, authenticator())
    assert info.value.login_status == 0x0201 and info.value.section == "RFC 7143 12.1.3"


def test_unknown_user() -> None:
    client = ChapClient(ChapCredentials("mallory", b"mallory-secret!!"))
    with pytest.raises(AuthenticationError, match="unknown CHAP user"):
        run(client, authenticator())


def test_wrong_length_response() -> None:
    auth = authenticator()
    auth.receive({"CHAP_A": "5"})
    with pytest.raises(AuthenticationError, match="CHAP_R is 2 bytes"):
        auth.receive({"CHAP_N": ALICE.name, "CHAP_R": "0xabcd"})


def test_reflected_challenge_is_refused() -> None:
    auth = authenticator(credentials=TARGET)
    c = dict(auth.receive({"CHAP_A": "5"}))
    resp = chap.chap_response(
        ChapAlgorithm.MD5, int(c["CHAP_I"]), ALICE.secret, chap.text.parse_binary(c["CHAP_C"])
    )
    with pytest.raises(AuthenticationError, match="reflect"):
        auth.receive(
            {
                "CHAP_N": ALICE.name,
                "CHAP_R": chap.text.format_binary(resp),
                "CHAP_I": "1",
                "CHAP_C": c["CHAP_C"],
            }
        )


def test_same_secret_in_both_directions_is_refused() -> None:
    same = ChapCredentials(TARGET.name, ALICE.secret)
    client = ChapClient(
        ALICE, target=ChapCredentials(TARGET.name, b"other-secret-123"), rng=counter_rng()
    )
    with pytest.raises(AuthenticationError, match="secrets are equal"):
        run(client, authenticator(credentials=same))
    with pytest.raises(ConfigError):
        ChapClient(ALICE, target=ChapCredentials(TARGET.name, ALICE.secret), rng=counter_rng())


def test_mutual_needs_rng_and_target_credentials() -> None:
    with pytest.raises(ConfigError):
        ChapClient(ALICE, target=TARGET)
    with pytest.raises(ConfigError):
        authenticator(require_mutual=True)


def test_mutual_required_but_not_requested() -> None:
    with pytest.raises(AuthenticationError, match="mutual CHAP is required"):
        run(ChapClient(ALICE), authenticator(credentials=TARGET, require_mutual=True))


def test_mutual_requested_but_target_cannot() -> None:
    client = ChapClient(ALICE, target=TARGET, rng=counter_rng())
    with pytest.raises(AuthenticationError, match="does not do"):
        run(client, authenticator())


def test_client_detects_bad_target_proof() -> None:
    client = ChapClient(ALICE, target=TARGET, rng=counter_rng())
    auth = authenticator(credentials=ChapCredentials(TARGET.name, b"impostor-secret!"))
    with pytest.raises(AuthenticationError, match="mutual authentication failed"):
        run(client, auth)
    client = ChapClient(ALICE, target=TARGET, rng=counter_rng())
    auth = authenticator(credentials=ChapCredentials("someone-else", TARGET.secret))
    with pytest.raises(AuthenticationError, match="CHAP_N"):
        run(client, auth)


def test_client_requires_proof_in_mutual_mode() -> None:
    client = ChapClient(ALICE, target=TARGET, rng=counter_rng())
    auth = authenticator(credentials=TARGET)
    client.receive(dict(auth.receive(dict(client.start()))))
    with pytest.raises(AuthenticationError, match="did not send"):
        client.receive({})


@pytest.mark.parametrize(
    "pairs",
    [
        {"CHAP_A": "9", "CHAP_I": "1", "CHAP_C": "0x00"},  # algorithm not offered
        {"CHAP_A": "x", "CHAP_I": "1", "CHAP_C": "0x00"},
        {"CHAP_A": "5", "CHAP_I": "256", "CHAP_C": "0x00"},  # identifier is one octet
        {"CHAP_A": "5", "CHAP_I": "z", "CHAP_C": "0x00"},
        {"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "1234"},  # decimal is not allowed
        {"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0xZZ"},
        {"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0x" + "00" * 1025},  # over 1024 bytes
        {"CHAP_N": "x", "CHAP_R": "0x00"},  # out of order
    ],
)
def test_client_refuses_bad_challenges(pairs: dict[str, str]) -> None:
    client = ChapClient(ALICE, algorithms=[ChapAlgorithm.MD5])
    client.start()
    with pytest.raises(AuthenticationError):
        client.receive(pairs)


def test_challenge_of_exactly_1024_bytes_is_answered() -> None:
    client = ChapClient(ALICE, algorithms=[ChapAlgorithm.MD5])
    client.start()
    out = dict(client.receive({"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0b" + "A" * 1364 + "AA=="}))
    assert out["CHAP_N"] == ALICE.name


def test_short_peer_challenge_policy() -> None:
    client = ChapClient(
        ALICE, algorithms=[ChapAlgorithm.MD5], policy=ChapPolicy(min_peer_challenge_length=16)
    )
    client.start()
    with pytest.raises(AuthenticationError, match="too short"):
        client.receive({"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0x0102"})


def test_short_secret_policies() -> None:
    short = ChapCredentials(ALICE.name, b"short")
    warned = ChapClient(short)
    assert warned.warnings and "96 random bits" in warned.warnings[0]
    assert not ChapClient(short, policy=ChapPolicy(short_secret=SecretPolicy.ALLOW)).warnings
    with pytest.raises(ConfigError):
        ChapClient(short, policy=ChapPolicy(short_secret=SecretPolicy.REJECT))
    with pytest.raises(ConfigError):
        ChapClient(
            ALICE,
            target=ChapCredentials("t", b"tiny"),
            rng=counter_rng(),
            policy=ChapPolicy(short_secret=SecretPolicy.REJECT),
        )
    auth = ChapAuthenticator(
        {short.name: short.secret}.get,
        rng=counter_rng(),
        policy=ChapPolicy(short_secret=SecretPolicy.REJECT),
    )
    with pytest.raises(AuthenticationError, match="shorter than the policy"):
        run(ChapClient(short, policy=ChapPolicy(short_secret=SecretPolicy.ALLOW)), auth)


def test_authenticator_refuses_out_of_order_and_repeated_keys() -> None:
    auth = authenticator()
    with pytest.raises(AuthenticationError):
        auth.receive({"CHAP_N": ALICE.name, "CHAP_R": "0x00"})
    assert auth.receive({}) == []  # nothing yet: wait
    auth.receive({"CHAP_A": "5"})
    assert auth.receive({}) == []
    with pytest.raises(AuthenticationError):
        auth.receive({"CHAP_A": "5"})
    with pytest.raises(AuthenticationError):
        authenticator().receive({"CHAP_A": ",5"})


def test_bad_rng_length_is_our_bug() -> None:
    auth = ChapAuthenticator({}.get, rng=lambda n: b"\x01")
    with pytest.raises(ValueError):
        auth.receive({"CHAP_A": "5"})


def test_secrets_never_in_repr() -> None:
    assert "alice-secret" not in repr(ALICE)
    assert "alice-secret" not in repr(ChapClient(ALICE))


@given(
    st.binary(min_size=1, max_size=64),
    st.sampled_from(list(ChapAlgorithm)),
    st.binary(min_size=1, max_size=64),
)
def test_any_challenge_verifies(secret: bytes, alg: ChapAlgorithm, challenge: bytes) -> None:
    policy = ChapPolicy(short_secret=SecretPolicy.ALLOW, challenge_length=len(challenge))
    client = ChapClient(ChapCredentials("n", secret), algorithms=[alg], policy=policy)
    auth = ChapAuthenticator(
        {"n": secret}.get, rng=lambda n: challenge[:n].ljust(n, b"\0"), policy=policy
    )
    run(client, auth)
    assert auth.done


def test_unasked_target_proof_in_one_way_chap_is_refused() -> None:
    """A target that sends CHAP_N/CHAP_R when the initiator sent no challenge gets an
    AuthenticationError (RFC 7143 12.1.3), not an internal error."""
    client = ChapClient(ALICE, rng=counter_rng())
    auth = authenticator()
    challenge = dict(auth.receive(dict(client.start())))
    client.receive(challenge)
    with pytest.raises(AuthenticationError):
        client.receive({"CHAP_N": "target", "CHAP_R": "0x" + "00" * 16})
