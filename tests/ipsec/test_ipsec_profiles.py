"""The SA variants as data, their VICI messages, and the run's CA (no root needed)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from iscsi_conformance.ipsec import PROFILES, SaProfile, unsupported
from iscsi_conformance.ipsec.ca import make_ca
from iscsi_conformance.ipsec.profiles import ESP_TRANSFORMS, connection


def _conn(profile: SaProfile, **kw: object) -> dict:
    args = dict(
        name="c", local="10.0.0.1", remote="10.0.0.2", local_id="10.0.0.1",
        remote_id="10.0.0.2", initiator=True,
    )  # fmt: skip
    args.update(kw)
    return connection(profile, **args)["c"]  # type: ignore[arg-type]


def test_every_transform_the_requirements_name_has_a_profile() -> None:
    assert {p.esp for p in PROFILES} == set(ESP_TRANSFORMS)
    assert {p.auth for p in PROFILES} == {"psk", "pubkey"}
    assert {p.mode for p in PROFILES} == {"tunnel", "transport"}
    assert any(p.esn for p in PROFILES)
    assert all(p.replay_window > 0 for p in PROFILES)  # anti-replay on everywhere


def test_connection_covers_only_tcp_to_the_iscsi_port() -> None:
    c = _conn(SaProfile("x"))
    child = c["children"]["iscsi"]
    assert c["version"] == 2 and c["encap"] == "yes"
    assert child["local_ts"] == ["10.0.0.1/32[tcp]"]
    assert child["remote_ts"] == ["10.0.0.2/32[tcp/3260]"]
    responder = _conn(SaProfile("x"), initiator=False, local="10.0.0.2", remote="10.0.0.1")
    assert responder["children"]["iscsi"]["local_ts"] == ["10.0.0.2/32[tcp/3260]"]
    assert child["esp_proposals"] == ["aes128gcm16"]
    assert child["replay_window"] == 64


def test_esn_and_rekey_reach_the_child() -> None:
    child = _conn(SaProfile("x", esp="AES_GCM_16_256", esn=True, rekey_time=3))["children"]["iscsi"]
    assert child["esp_proposals"] == ["aes256gcm16-esn"]
    assert (child["rekey_time"], child["life_time"]) == ("3s", "6s")


def test_certificate_profile_needs_certificates() -> None:
    with pytest.raises(ValueError, match="certificate"):
        _conn(SaProfile("x", auth="pubkey"))
    c = _conn(SaProfile("x", auth="pubkey"), cert="CERT", cacert="CA")
    assert c["local"] == {"auth": "pubkey", "id": "10.0.0.1", "certs": ["CERT"]}
    assert c["remote"]["cacerts"] == ["CA"]


def test_libipsec_limits_are_stated() -> None:
    reasons = {p.name: unsupported(p, "kernel-libipsec") for p in PROFILES}
    assert reasons["psk-gcm128-tunnel"] is None
    assert "tunnel mode only" in str(reasons["psk-gcm128-transport"])
    assert all(unsupported(p, "kernel") is None for p in PROFILES)


def test_run_ca_issues_a_host_certificate_it_signed() -> None:
    ca = make_ca()
    host = ca.issue("10.77.0.2")
    cert = x509.load_pem_x509_certificate(host.cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    key = ca_cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.77.0.2"]
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < datetime.timedelta(
        days=2
    )
    assert "PRIVATE KEY" not in repr(host) and "PRIVATE KEY" in host.key_pem
    other = make_ca("untrusted")
    with pytest.raises(ValueError):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other.cert_pem.encode()))
