"""Signed messages from the fleet side: a configuration or a command for one gateway.

A message is JSON: `{"format": 1, "key": KEY_ID, "body": BODY, "sig": SIGNATURE}`, where
BODY is a JSON text kept as a string (the signature covers its exact bytes, so nothing is
canonicalized) and SIGNATURE the base64 Ed25519 signature of those bytes. The body names
its type (`config` or `command`), the gateway, a version that must grow, when it was issued
and when it expires. Opening one checks the format, the key (pinned on the gateway), the
signature, the gateway and the expiry; whether the version is newer is the receiver's
question (it holds the last one applied). `cryptography` is imported on first use only: a
gateway without remote configuration never loads it (docs/remote-config.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

FORMAT = 1
MAX_MESSAGE_BYTES = 1 << 20
"""Larger messages are refused before parsing: a configuration is a few KiB."""

MessageType = Literal["config", "command"]
RefusalReason = Literal[
    "malformed", "unknown_key", "bad_signature", "wrong_gateway", "expired", "replayed",
    "invalid_config", "forbidden_change", "apply_failed", "unknown_command",
]


class Refused(Exception):
    """A message that changes nothing: `reason` (one word, counted) and what a person reads."""

    def __init__(self, reason: RefusalReason, detail: str,
                 problems: list[str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RefusalReason = reason
        self.detail = detail
        self.problems = problems or []
        """For a configuration that fails the check: its problems, `where:line: what`."""


class KeyFileError(Exception):
    """A key file that cannot be used, with its path and why."""


@dataclass(frozen=True, slots=True)
class Signed:
    """An opened message whose signature verified for its gateway and has not expired."""

    type: MessageType
    gateway: str
    version: int
    issued_ns: int
    expires_ns: int
    key_id: str
    digest: str
    """SHA-256 of the whole message: the same message delivered twice has the same digest."""
    config: str | None = None
    """The YAML text (type `config`)."""
    command: tuple[str, ...] = ()
    """The command and its arguments (type `command`), e.g. `("relearn", "press-1")`."""


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: (private PKCS#8, public SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    return (
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
        private.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """The trusted keys by key id. Raises `KeyFileError` naming the file that is unusable."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = {}
    for path in paths:
        key = _read_pem(path, serialization.load_pem_public_key, "a PEM public key")
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path}: an Ed25519 public key is expected, "
                               f"not {type(key).__name__}")
        keys[key_id(key)] = key
    return keys


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key (`edge-fleet keys new` wrote it). Raises `KeyFileError`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _read_pem(path, lambda data: serialization.load_pem_private_key(data, password=None),
                    "an unencrypted PEM private key")
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: an Ed25519 private key is expected, "
                           f"not {type(key).__name__}")
    return key


def _read_pem(path: Path, parse: Callable[[bytes], object], what: str) -> object:
    try:
        return parse(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not {what} ({exc})") from exc


def sign(body: Mapping[str, Any], private: Ed25519PrivateKey) -> bytes:
    """The message carrying `body` (its `format` added), signed with `private`."""
    text = json.dumps({"format": FORMAT, **body}, separators=(",", ":"), ensure_ascii=False)
    signature = private.sign(text.encode())
    return json.dumps({
        "format": FORMAT, "key": key_id(private.public_key()), "body": text,
        "sig": base64.b64encode(signature).decode(),
    }, separators=(",", ":"), ensure_ascii=False).encode()


def open_signed(message: bytes, keys: Mapping[str, Ed25519PublicKey], gateway: str,
                now_ns: int) -> Signed:
    """The message's content once its key, signature, gateway and expiry are right.

    Raises `Refused`; the body is not even parsed before its signature verified.
    """
    from cryptography.exceptions import InvalidSignature

    if len(message) > MAX_MESSAGE_BYTES:
        raise Refused("malformed", f"{len(message)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        outer = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused("malformed", f"not a signed message (not JSON: {exc})") from exc
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise Refused("malformed", f"not a signed message of format {FORMAT}")
    text, kid, sig = outer.get("body"), outer.get("key"), outer.get("sig")
    if not (isinstance(text, str) and isinstance(kid, str) and isinstance(sig, str)):
        raise Refused("malformed", "body, key and sig must be strings")
    public = keys.get(kid)
    if public is None:
        raise Refused("unknown_key", f"signed with key {kid[:32]!r}, which this gateway does "
                      "not trust (remote.trusted_keys)")
    try:
        public.verify(base64.b64decode(sig, validate=True), text.encode())
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise Refused("bad_signature", f"the signature does not verify with key {kid}") from exc
    body = json.loads(text)
    signed = _content(body, kid, hashlib.sha256(message).hexdigest())
    if signed.gateway != gateway:
        raise Refused("wrong_gateway", f"for gateway {signed.gateway!r}, this is {gateway!r}")
    if signed.expires_ns <= now_ns:
        raise Refused("expired", f"expired {(now_ns - signed.expires_ns) / 1e9:.0f} s ago")
    return signed


def _content(body: Any, kid: str, digest: str) -> Signed:
    """The fields of a verified body, each of its type, or `Refused("malformed")`."""
    if not isinstance(body, dict):
        raise Refused("malformed", "the body is not a JSON object")
    kind = body.get("type")
    fields = {"gateway": str, "version": int, "issued_ns": int, "expires_ns": int}
    for name, wanted in fields.items():
        if not isinstance(body.get(name), wanted) or isinstance(body.get(name), bool):
            raise Refused("malformed", f"{name} missing or not a {wanted.__name__}")
    if kind == "config":
        config = body.get("config")
        if not isinstance(config, str):
            raise Refused("malformed", "a config message carries its YAML text in `config`")
        return Signed("config", body["gateway"], body["version"], body["issued_ns"],
                      body["expires_ns"], kid, digest, config=config)
    if kind == "command":
        command = body.get("command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(word, str) for word in command)):
            raise Refused("malformed", "a command message carries a list of words in `command`")
        return Signed("command", body["gateway"], body["version"], body["issued_ns"],
                      body["expires_ns"], kid, digest, command=tuple(command))
    raise Refused("malformed", f"unknown type {kind!r} (config or command)")
