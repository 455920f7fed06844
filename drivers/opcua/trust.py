"""`edge-agent opcua trust URL`: show a server's certificate and pin it once a person agreed.

Trust on first use is made an explicit act: the technician compares the fingerprint with
the one the server's own display or documentation shows before saying yes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asyncua.client.client import Client
from cryptography import x509

from drivers.opcua import pki


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    cert: x509.Certificate
    fingerprint: str
    subject: str
    not_after: str
    policies: tuple[str, ...]
    """`Policy/Mode` of every endpoint that offers this certificate."""


async def fetch_server_certificate(endpoint: str, timeout_s: float = 5.0) -> ServerCertificate:
    """The certificate the server presents on its endpoints (GetEndpoints needs no security).

    Raises OSError/TimeoutError when the server is not reachable and LookupError when it
    offers no certificate at all (only security None).
    """
    client = Client(endpoint, timeout=timeout_s)
    endpoints = await client.connect_and_get_server_endpoints()
    found: dict[bytes, list[str]] = {}
    for ep in endpoints:
        if ep.ServerCertificate:
            policy = ep.SecurityPolicyUri.rsplit("#", 1)[-1]
            found.setdefault(ep.ServerCertificate, []).append(f"{policy}/{ep.SecurityMode.name}")
    if not found:
        raise LookupError(f"{endpoint} offers no certificate (only security None)")
    der, policies = next(iter(found.items()))
    cert = pki.load_certificate(_first_certificate(der))
    return ServerCertificate(cert, pki.fingerprint(cert), cert.subject.rfc4514_string(),
                             cert.not_valid_after_utc.date().isoformat(), tuple(policies))


def _first_certificate(der: bytes) -> bytes:
    """A server may send its chain; the first DER element is its own certificate."""
    if len(der) < 4 or der[0] != 0x30 or der[1] != 0x82:
        return der
    return der[: 4 + int.from_bytes(der[2:4], "big")]


def trust(server: ServerCertificate, pki_dir: Path, confirm: Callable[[str], bool]) -> Path | None:
    """Pin `server`'s certificate if `confirm(question)` says yes; the file, or None (the
    folder when it was pinned already). Run as root, the PKI is handed over to the agent's
    user either way (`pki.hand_over`), mending one an older version left to root."""
    if pki.is_trusted(server.cert, pki_dir):
        pki.hand_over(pki_dir)
        return pki_dir / pki.TRUSTED_DIR
    if not confirm("Trust this certificate"):
        return None
    return pki.pin(server.cert, pki_dir)
