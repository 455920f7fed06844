"""A client's security and identity, set before it connects (the driver and `browse` alike).

A server certificate is trusted only when pinned in `<pki>/trusted/` (see pki.py): asyncua
would otherwise take whatever certificate the server sends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError

from drivers.errors import SecurityRejected
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
        await client.load_client_certificate(str(sec.user_certificate))
        await client.load_private_key(sec.user_private_key)
    if sec.policy == "None":
        return
    if sec.certificate is not None and sec.private_key is not None:
        cert, key = sec.certificate, sec.private_key
    else:
        identity = await asyncio.to_thread(pki.ensure_client_identity, pki_dir)
        cert, key = identity.cert_path, identity.key_path
    try:
        await client.set_security(POLICIES[sec.policy], str(cert), str(key),
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
    if server_cert is None or not pki.is_trusted(server_cert, pki_dir):
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
