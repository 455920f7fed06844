"""A client's security and identity, set before it connects (the driver and `browse` alike).

A server certificate is trusted only when pinned in `<pki>/trusted/` (see pki.py): asyncua
would otherwise take whatever certificate the server sends.

A user certificate (`security.user_certificate`) is the user's identity, not the
application's: asyncua keeps it in `Client.user_certificate`/`user_private_key` and sends it as
an X509IdentityToken in ActivateSession, signed with the user's key. The agent loads that pair,
and a configured application certificate and key, itself: asyncua's loaders tell PEM from DER
by the file name (only `.pem` is PEM, so a PEM `.crt` or `.key` fails to parse), and a missing
file would surface as an OSError, which reads as an unreachable device.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from drivers.errors import FilePermission, SecurityRejected
from drivers.opcua import pki
from drivers.opcua.config import OpcUaDevice

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}


async def secure(client: Client, config: OpcUaDevice, pki_dir: Path) -> None:
    """Set `config.security` on `client`; SecurityRejected says what a technician must do.

    With a policy, this asks the server for its endpoints (a connection without security),
    so network errors surface here too (OSError, TimeoutError).
    """
    sec = config.security
    if sec.username is not None:
        client.set_user(sec.username)
        password = await asyncio.to_thread(_password, config)
        if password is not None:
            client.set_password(password)
    if sec.user_certificate is not None and sec.user_private_key is not None:
        client.user_certificate, client.user_private_key = await asyncio.to_thread(
            _key_pair, config.name, sec.user_certificate, sec.user_private_key, "user_")
    if sec.policy == "None":
        return
    if sec.certificate is not None and sec.private_key is not None:
        app_cert, app_key = await asyncio.to_thread(
            _key_pair, config.name, sec.certificate, sec.private_key, "")
        # DER bytes: asyncua parses bytes as DER whatever the file was.
        cert: str | bytes = app_cert.public_bytes(serialization.Encoding.DER)
        key: str | bytes = app_key.private_bytes(serialization.Encoding.DER,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
    else:
        try:
            identity = await asyncio.to_thread(pki.ensure_client_identity, pki_dir)
        except PermissionError as exc:
            raise FilePermission(config.name, pki.permission_problem(
                pki_dir, exc, "write the gateway's certificate")) from exc
        cert, key = str(identity.cert_path), str(identity.key_path)
    try:
        await client.set_security(POLICIES[sec.policy], cert, key,
                                  mode=getattr(ua.MessageSecurityMode, sec.mode))
    except UaError as exc:
        if "No matching endpoints" in str(exc):
            raise SecurityRejected(
                config.name, f"the server offers no endpoint with policy {sec.policy} and "
                f"mode {sec.mode}; `edge-agent opcua trust {config.endpoint} ...` lists the "
                "endpoints it offers"
            ) from exc
        raise
    server_der = client.security_policy.peer_certificate
    server_cert = pki.load_certificate(server_der) if server_der else None
    try:
        trusted = server_cert is not None and pki.is_trusted(server_cert, pki_dir)
    except PermissionError as exc:
        raise FilePermission(config.name, pki.permission_problem(
            pki_dir, exc, "read the trusted certificates")) from exc
    if server_cert is None or not trusted:
        fp = pki.fingerprint(server_cert) if server_cert is not None else "(none sent)"
        raise SecurityRejected(
            config.name,
            f"the server's certificate (SHA-256 {fp}) is not trusted; check it and pin it "
            f"with `edge-agent opcua trust -c CONFIG {config.endpoint}`",
        )


def _password(config: OpcUaDevice) -> str | None:
    sec = config.security
    if sec.password is not None:
        return sec.password.get_secret_value()
    if sec.password_file is None:
        return None
    try:
        return sec.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        # The error names the file, never its content.
        raise SecurityRejected(config.name, f"cannot read security.password_file "
                               f"{sec.password_file}: {type(exc).__name__}") from exc


def _key_pair(device: str, cert_path: Path, key_path: Path,
              prefix: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The certificate and key of `security.<prefix>certificate` and `<prefix>private_key`
    (each PEM or DER, the key unencrypted), or SecurityRejected naming the file and what is
    wrong with it (never the key's content)."""
    cert_key, key_key = f"security.{prefix}certificate", f"security.{prefix}private_key"
    try:
        cert = pki.load_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SecurityRejected(device, f"cannot read {cert_key} {cert_path}: {_why(exc)}; "
                               "give a PEM or DER certificate") from exc
    try:
        key_data = key_path.read_bytes()
        if key_data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(key_data, password=None)
        else:
            key = serialization.load_der_private_key(key_data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecurityRejected(device, f"cannot read {key_key} {key_path}: {_why(exc)}; "
                               "give an unencrypted PEM or DER key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SecurityRejected(device, f"{key_key} {key_path} is not an RSA key: the OPC UA "
                               "security policies sign with RSA")
    if cert.public_key() != key.public_key():
        raise SecurityRejected(device, f"{key_key} {key_path} is not the key of {cert_key} "
                               f"{cert_path} (SHA-256 {pki.fingerprint(cert)})")
    return cert, key


def _why(exc: Exception) -> str:
    """Why a file could not be used, short; never a parser's message (it may quote the key)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not a valid PEM or DER file"
