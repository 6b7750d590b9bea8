"""A certificate authority made by the run, for IKEv2 authenticated by X.509.

Theory of operation: :func:`make_ca` creates a self-signed ECDSA P-256 CA and
:meth:`RunCA.issue` one end-entity certificate per host, whose subjectAltName carries
the host's IP address (charon matches the IKE identity against it). Everything stays
in memory as PEM; the private keys are handed to charon over VICI (``load-key``) and
never written to a log, a record or a report. :func:`make_ca` with a different
``name`` gives an *untrusted* CA for the negative case.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["HostCredentials", "RunCA", "make_ca"]


@dataclasses.dataclass(frozen=True)
class HostCredentials:
    """A host's certificate and private key (PEM). ``repr`` hides the key."""

    cert_pem: str
    key_pem: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class RunCA:
    name: str
    cert_pem: str
    _key: ec.EllipticCurvePrivateKey = dataclasses.field(repr=False)

    def issue(self, ip: str, *, days: int = 1) -> HostCredentials:
        """A certificate for the host at ``ip`` (CN and subjectAltName: that address)."""
        key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return HostCredentials(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )


def make_ca(name: str = "iscsi-conformance run CA", *, days: int = 1) -> RunCA:
    """A fresh self-signed CA, valid for ``days`` (a run needs minutes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return RunCA(name, cert.public_bytes(serialization.Encoding.PEM).decode(), key)
