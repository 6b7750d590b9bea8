"""Which target serves which profile (harness/profiles.py against the manifests).

A profile no third-party target can serve makes its tests skip on every real peer; these
pin down what each peer was verified to serve, so a manifest change that hides tests
shows up here (issue 10, item 6).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from iscsi_conformance.harness.profiles import PROFILES, REDIRECT_ADDRESS, Credentials
from iscsi_conformance.peers.manifest import load_peer_manifest

SERVES = {
    # profile: the targets that serve it (the reference target serves every one)
    "redirect": {"reference", "tgt"},
    "redirect-permanent": {"reference", "tgt"},
    "digest-required": {"reference", "lio"},
    "chap-md5": {"reference", "tgt", "lio"},
    "chap-sha1": {"reference", "lio"},
    "chap-sha256": {"reference", "lio"},
    "chap-sha3-256": {"reference", "lio"},
    "mutual-sha256": {"reference", "lio"},
    "datain-reverse": {"reference"},
    "erl2": {"reference"},
    "dataseq-reverse": {"reference"},
    "window-closed": {"reference"},
}


@pytest.mark.parametrize("profile", sorted(SERVES))
def test_who_serves_the_profile(profile: str) -> None:
    served = {
        name
        for name in ("reference", "tgt", "lio")
        if PROFILES[profile].servable_by(load_peer_manifest("target", name))[0]
    }
    assert served == SERVES[profile]


def test_redirect_profiles_send_initiators_to_loopback_only() -> None:
    creds = Credentials.generate()
    host, _, port = REDIRECT_ADDRESS.rpartition(":")
    assert ipaddress.ip_address(host).is_loopback and port == "3260"
    temporary = PROFILES["redirect"].build(creds)
    permanent = PROFILES["redirect-permanent"].build(creds)
    assert temporary.redirect == permanent.redirect == REDIRECT_ADDRESS
    assert (temporary.redirect_permanent, permanent.redirect_permanent) == (False, True)
    assert PROFILES["default"].build(creds).redirect is None


def test_reference_target_config_carries_the_redirect(tmp_path: Path) -> None:
    from iscsi_conformance.peers.reference_target import ReferenceTargetDriver
    from iscsi_conformance.target.config import load_config

    drv = ReferenceTargetDriver(port=3260)
    spec = PROFILES["redirect-permanent"].build(Credentials.generate())
    drv.specs[spec.iqn] = spec
    path = tmp_path / "target.toml"
    path.write_text(drv.config_text(), encoding="utf-8")
    (target,) = load_config(path).targets
    assert target.redirect is not None
    assert (target.redirect.address, target.redirect.permanent) == (REDIRECT_ADDRESS, True)
