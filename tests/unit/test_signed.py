"""Signed messages (agent/config/signed.py): what opens, and why each of the rest is refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from agent.config.signed import (
    KeyFileError,
    Refused,
    key_id,
    load_private_key,
    load_public_keys,
    new_key_pair,
    open_signed,
    sign,
)

NOW = 1_800_000_000_000_000_000
HOUR = 3600 * 10**9


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public = new_key_pair()
    (folder / "fleet.key").write_bytes(private)
    (folder / "fleet.pub").write_bytes(public)
    return folder / "fleet.key", folder / "fleet.pub"


def body(**changes: object) -> dict[str, object]:
    return {"type": "config", "gateway": "gw-1", "version": 3, "issued_ns": NOW,
            "expires_ns": NOW + HOUR, "config": "gateway: {id: gw-1}\n", **changes}


def test_a_signed_config_opens_with_its_content(keys: tuple[Path, Path]) -> None:
    private, public = keys
    trusted = load_public_keys([public])
    message = sign(body(), load_private_key(private))
    signed = open_signed(message, trusted, "gw-1", NOW)
    assert (signed.type, signed.gateway, signed.version) == ("config", "gw-1", 3)
    assert signed.config == "gateway: {id: gw-1}\n"
    assert signed.key_id == next(iter(trusted)) == key_id(next(iter(trusted.values())))
    assert signed.digest == open_signed(message, trusted, "gw-1", NOW).digest


def test_a_signed_command_opens_as_words(keys: tuple[Path, Path]) -> None:
    private, public = keys
    message = sign(body(type="command", command=["relearn", "press-1"], config=None),
                   load_private_key(private))
    signed = open_signed(message, load_public_keys([public]), "gw-1", NOW)
    assert (signed.type, signed.command) == ("command", ("relearn", "press-1"))


def refusal(message: bytes, public: Path, gateway: str = "gw-1", now: int = NOW) -> str:
    with pytest.raises(Refused) as caught:
        open_signed(message, load_public_keys([public]), gateway, now)
    return caught.value.reason


def test_each_bad_message_is_refused_with_its_reason(keys: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    private, public = keys
    key = load_private_key(private)
    good = sign(body(), key)
    assert refusal(b"\x00garbage", public) == "malformed"
    assert refusal(b'{"format": 1, "body": 1}', public) == "malformed"
    assert refusal(b"x" * (2 << 20), public) == "malformed"
    # Another key, not pinned on the gateway.
    other, _ = new_key_pair()
    (tmp_path / "other.key").write_bytes(other)
    assert refusal(sign(body(), load_private_key(tmp_path / "other.key")), public) == "unknown_key"
    # The body changed after signing (a later version, say), the signature kept.
    outer = json.loads(good)
    outer["body"] = outer["body"].replace('"version":3', '"version":99')
    assert refusal(json.dumps(outer).encode(), public) == "bad_signature"
    outer = json.loads(good)
    outer["sig"] = base64.b64encode(b"\x01" * 64).decode()
    assert refusal(json.dumps(outer).encode(), public) == "bad_signature"
    outer["sig"] = "not base64 !"
    assert refusal(json.dumps(outer).encode(), public) == "bad_signature"
    assert refusal(good, public, gateway="gw-2") == "wrong_gateway"
    assert refusal(good, public, now=NOW + 2 * HOUR) == "expired"
    # Signed, but not the fields a message needs.
    assert refusal(sign(body(version="3"), key), public) == "malformed"
    assert refusal(sign(body(version=True), key), public) == "malformed"
    assert refusal(sign(body(type="shell"), key), public) == "malformed"
    assert refusal(sign(body(type="command", command=[]), key), public) == "malformed"
    assert refusal(sign(body(config=None), key), public) == "malformed"


def test_unusable_key_files_are_named(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, _ = keys
    with pytest.raises(KeyFileError, match="missing.pub"):
        load_public_keys([tmp_path / "missing.pub"])
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match="junk.pub: not a PEM public key"):
        load_public_keys([tmp_path / "junk.pub"])
    with pytest.raises(KeyFileError, match="fleet.key: not a PEM public key"):
        load_public_keys([private])  # the private key given where the public one goes
