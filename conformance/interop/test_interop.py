"""Interop: every initiator x target pairing through the drivers' common interface:
discovery, login (none, CHAP, mutual CHAP, digests) and data verified end to end.
For pairings where neither side is ours, these are the checks each peer can observe."""

from __future__ import annotations

import os
from typing import Any

import pytest

from iscsi_conformance.errors import AuthenticationError, LoginError
from iscsi_conformance.harness.profiles import capability_satisfied
from iscsi_conformance.peers.base import ChapAccount, LoginOptions
from iscsi_conformance.plugin import require, spec

BLOCK = 512


def _options(target: Any, profile: str, **kw: Any) -> LoginOptions:
    chap, mutual = target.chap_for(profile)
    return LoginOptions(chap=chap, mutual_chap=mutual, **kw)


@spec(
    "Interop.Discovery.SendTargets",
    "RFC 7143 13.3",
    pairing="all",
    role="both",
    requirements=["R7143-13.3-1"],
)
def test_discovery(initiator: Any, target: Any) -> None:
    """The initiator discovers the target by SendTargets."""
    host, port = target.endpoint().host, target.endpoint().port
    found = initiator.driver.discover(host, port)
    names = [name for name, _addr in found]
    require(
        target.endpoint().iqn in names,
        "R7143-13.3-1",
        f"{initiator.name} did not discover {target.endpoint().iqn}: {names}",
    )


@pytest.mark.parametrize("profile", ["default", "chap", "mutual"])
@spec(
    "Interop.Login.Auth",
    "RFC 7143 6.3",
    "RFC 7143 12.1.3",
    pairing="all",
    role="both",
    requirements=["R7143-6.3.3-1", "R7143-12.1.3-1"],
)
def test_login(initiator: Any, target: Any, profile: str) -> None:
    """The initiator logs in (no auth, one-way CHAP, mutual CHAP) and logs out."""
    for need in {"chap": ["chap_algorithms=5"], "mutual": ["chap_algorithms=5", "mutual_chap"]}.get(
        profile, []
    ):
        if not capability_satisfied(initiator.manifest, need):
            pytest.skip(f"{initiator.name} does not declare {need}")
    ep = target.endpoint(profile)
    session = initiator.driver.login(ep, options=_options(target, profile))
    initiator.driver.logout(session)


@spec(
    "Interop.Login.WrongSecret",
    "RFC 7143 12.1.3",
    pairing="all",
    role="target",
    requirements=["R7143-12.1.3-3"],
    needs=("initiator:chap_algorithms=5",),
)
def test_wrong_secret(initiator: Any, target: Any) -> None:
    """A wrong CHAP secret is refused, and the initiator reports it as an authentication failure."""
    ep = target.endpoint("chap")
    chap, _ = target.chap_for("chap")
    bad = LoginOptions(chap=ChapAccount(chap.user, chap.secret + "x"))
    try:
        session = initiator.driver.login(ep, options=bad)
    except AuthenticationError:
        return
    except LoginError as exc:
        require(False, "R7143-12.1.3-3", f"refused, but not as an authentication failure: {exc}")
    initiator.driver.logout(session)
    require(False, "R7143-12.1.3-3", f"{target.name} accepted {initiator.name}'s wrong CHAP secret")


@pytest.mark.parametrize("digest", ["CRC32C"])
@spec(
    "Interop.Digests.Both",
    "RFC 7143 13.1",
    pairing="all",
    role="both",
    requirements=["R7143-13.1-2", "RSBC3-5.16-1"],
    needs=(
        "initiator:header_digests=CRC32C",
        "initiator:data_digests=CRC32C",
        "header_digests=CRC32C",
        "data_digests=CRC32C",
    ),
    dataloss=True,
)
def test_digests_io(initiator: Any, target: Any, digest: str) -> None:
    """With header and data digests, data written reads back identical."""
    ep = target.endpoint()
    session = initiator.driver.login(
        ep, options=LoginOptions(header_digest=digest, data_digest=digest)
    )
    try:
        payload = os.urandom(64 * BLOCK)
        initiator.driver.write(session, target.lun, 8192, payload)
        back = initiator.driver.read(session, target.lun, 8192, 64)
        require(
            back == payload,
            "R7143-13.1-2",
            f"data differs after a digest-protected round trip ({initiator.name} x {target.name})",
        )
    finally:
        initiator.driver.logout(session)


@pytest.mark.parametrize("blocks", [1, 256, 2048])
@spec(
    "Interop.Data.WriteReadBack",
    "SBC-3 5.16",
    pairing="all",
    role="both",
    requirements=["RSBC3-5.16-1"],
    dataloss=True,
)
def test_write_read_back(initiator: Any, target: Any, blocks: int) -> None:
    """Data written through the initiator reads back identical (1 block, 128 KiB, 1 MiB)."""
    ep = target.endpoint()
    session = initiator.driver.login(ep)
    try:
        payload = os.urandom(blocks * BLOCK)
        initiator.driver.write(session, target.lun, 16384, payload)
        back = initiator.driver.read(session, target.lun, 16384, blocks)
        require(
            back == payload,
            "RSBC3-5.16-1",
            f"{blocks} blocks read back differ ({initiator.name} x {target.name})",
        )
    finally:
        initiator.driver.logout(session)
