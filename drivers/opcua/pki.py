"""The gateway's OPC UA certificates: its own, made on first start, and the servers it trusts.

Layout under `<state_dir>/pki/`: `client-cert.der` and `client-key.pem` (the gateway's
application instance certificate, made once and kept: servers pin it), and `trusted/`, one
DER file per server certificate a technician pinned with `edge-agent opcua trust URL`.
Nothing is trusted implicitly: a server certificate not in `trusted/` is refused, with its
fingerprint and the command that pins it.

The folder belongs to the agent's user, who writes its certificate there: `edge-agent opcua
trust`, run as root as the guide says (and `read` or `browse` making the certificate as
root), gives what it made to the owner of the state directory (`hand_over`), as the detector state writer keeps the owner of the file it
replaces; folders are 0700, files 0600. Should the agent still be refused its own files,
`permission_problem` says so, with the command that gives them back.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto.cert_gen import generate_private_key, generate_self_signed_app_certificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

APPLICATION_URI = "urn:edge-agent:client"
"""The client's ApplicationUri; servers check that the certificate's SAN holds it."""
CERT_FILE = "client-cert.der"
KEY_FILE = "client-key.pem"
TRUSTED_DIR = "trusted"
CERT_VALID_DAYS = 3650
"""Ten years: a gateway in a cabinet should not stop talking when a certificate expires."""
_MAKING = threading.Lock()
"""Two OPC UA devices starting at once must not each write half of a certificate/key pair."""


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    cert_path: Path
    key_path: Path


def pki_dir(state_dir: Path) -> Path:
    return state_dir / "pki"


def ensure_client_identity(pki: Path) -> ClientIdentity:
    """The gateway's certificate and key, made now if absent (slow: an RSA key; call it in a
    thread). The key file is readable by its owner only."""
    with _MAKING:
        return _ensure_client_identity(pki)


def _ensure_client_identity(pki: Path) -> ClientIdentity:
    cert_path, key_path = pki / CERT_FILE, pki / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return ClientIdentity(cert_path, key_path)
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_private_key()
    hostname = socket.gethostname()
    cert = generate_self_signed_app_certificate(
        key,
        f"edge-agent@{hostname}",
        {},
        [x509.UniformResourceIdentifier(APPLICATION_URI), x509.DNSName(hostname)],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=CERT_VALID_DAYS,
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = key_path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(pem)
    tmp.replace(key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    hand_over(pki)  # made by `sudo edge-agent read` or `browse`: still the agent's
    return ClientIdentity(cert_path, key_path)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as colon-separated hex (what server UIs show)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from DER or PEM bytes."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def trusted_certificates(pki: Path) -> list[x509.Certificate]:
    """Every certificate in `trusted/`; a file that is no certificate is skipped.
    PermissionError when the folder or a file may not be read (not "nothing trusted")."""
    folder = pki / TRUSTED_DIR
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    certs = []
    for path in entries:
        if path.is_file():
            try:
                certs.append(load_certificate(path.read_bytes()))
            except ValueError:
                continue
    return certs


def is_trusted(cert: x509.Certificate, pki: Path) -> bool:
    """Pinned exactly: the same certificate, not merely the same subject or issuer."""
    wanted = fingerprint(cert)
    return any(fingerprint(known) == wanted for known in trusted_certificates(pki))


def pin(cert: x509.Certificate, pki: Path) -> Path:
    """Store `cert` in `trusted/` (named after its fingerprint), the PKI handed over to the
    agent's user; the file's path."""
    folder = pki / TRUSTED_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / (fingerprint(cert).replace(":", "").lower()[:32] + ".der")
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    tmp.replace(path)
    hand_over(pki)
    return path


def hand_over(pki: Path) -> tuple[int, int] | None:
    """Run as root: give the PKI folder and everything in it to the owner of the state
    directory (its parent), the user the agent runs as, folders 0700 and files 0600. The
    (uid, gid) given, or None when not root (what a user makes is its own)."""
    if os.geteuid() != 0:
        return None
    owner = pki.parent.stat()
    uid, gid = owner.st_uid, owner.st_gid
    for entry in (pki, *sorted(pki.rglob("*"))):
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue  # never follow a link out of the folder
        mode = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(entry, uid, gid, follow_symlinks=False)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(entry, mode)
    return uid, gid


def permission_problem(pki: Path, exc: PermissionError, doing: str) -> str:
    """What a technician reads when the agent may not use its own PKI: the file, who owns
    the folder, who the agent is, and the command that fixes it."""
    me = user_name(os.geteuid())
    where = pki if pki.exists() else pki.parent
    try:
        owner = f"; {where} belongs to {user_name(where.stat().st_uid)}"
    except OSError:
        owner = ""
    return (f"cannot {doing} {exc.filename or pki}: permission denied{owner}, the agent runs "
            f"as {me}: give the folder back with `sudo chown -R {me} {pki}` (made by "
            "`edge-agent opcua trust` as root before it handed its files over)")


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
