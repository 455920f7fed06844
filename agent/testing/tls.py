"""Throw-away certificates for tests and the demo: a CA, certificates it signs, and a stranger CA.

Made with `cryptography` (a dev dependency) in a directory of the caller's choosing;
never used outside tests. EC P-256 keys: generated in milliseconds. Every certificate
carries the extensions strict X.509 verification asks for (basic constraints, key
usage, key identifiers), so a newer Python's stricter default checks accept them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, both PEM files."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class CertificateSet:
    ca_file: Path
    """The test CA: it signs `server` and `client`."""
    server: KeyPair
    """For 127.0.0.1 and localhost, signed by `ca_file`."""
    client: KeyPair
    """A client certificate (common name `gw-1`) signed by `ca_file`."""
    other_ca_file: Path
    """An unrelated CA: it signs `stranger_server` and nothing else."""
    stranger_server: KeyPair
    """For 127.0.0.1 and localhost, but signed by `other_ca_file`."""
    wrong_host_server: KeyPair
    """Signed by `ca_file`, but for `broker.invalid` only: a hostname mismatch on 127.0.0.1."""


class _Authority:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, common_name: str, *, hosts: Sequence[str] = (), client: bool = False
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()), key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_pair(
    directory: Path, name: str, issued: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> KeyPair:
    cert, key = issued
    key_file = directory / f"{name}.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return KeyPair(cert_file=_write_cert(directory / f"{name}.pem", cert), key_file=key_file)


def make_test_certificates(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")
) -> CertificateSet:
    """Write a test PKI into `directory` (created if needed) and say where each file is.

    The files are readable by everyone: a broker that drops its privileges (Mosquitto
    started as root runs as `mosquitto`) must still be able to read its key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    ca, other = _Authority("edge-agent test CA"), _Authority("unrelated test CA")
    certs = CertificateSet(
        ca_file=_write_cert(directory / "ca.pem", ca.cert),
        server=_write_pair(directory, "server", ca.issue("test broker", hosts=hosts)),
        client=_write_pair(directory, "client", ca.issue("gw-1", client=True)),
        other_ca_file=_write_cert(directory / "other-ca.pem", other.cert),
        stranger_server=_write_pair(directory, "stranger", other.issue("test broker", hosts=hosts)),
        wrong_host_server=_write_pair(
            directory, "wrong-host", ca.issue("broker.invalid", hosts=["broker.invalid"])
        ),
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    return certs
