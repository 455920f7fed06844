"""The msgpack envelope: round trip, and clear refusals of what is not an event."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.events import (
    SCHEMA_VERSION,
    DecodeError,
    Event,
    decode,
    encode,
    encode_envelope,
    mark_historical,
    store_of,
    wire_fields,
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@given(
    kind=st.text(min_size=1, max_size=12), device=st.text(max_size=12),
    time_ns=st.integers(0, 2**63 - 1), seq=st.integers(1, 2**63 - 1),
    data=st.dictionaries(st.text(max_size=8), values, max_size=5),
)
def test_round_trip(kind: str, device: str, time_ns: int, seq: int, data: dict[str, object]) -> None:
    payload = encode(Event(kind, device, time_ns, data), gateway="gw", seq=seq)
    env = decode(payload)
    assert (env.version, env.gateway, env.seq, env.kind, env.device, env.time_ns, env.data) == (
        SCHEMA_VERSION, "gw", seq, kind, device, time_ns, data)
    assert len(env.id) == 32 and not env.historical
    replayed = decode(mark_historical(payload))
    assert replayed.historical and replayed.id == env.id and replayed.data == data
    assert replayed == decode(encode_envelope(replace(env, historical=True))), \
        "the fast flag says what a decode and re-encode says"
    assert decode(mark_historical(mark_historical(payload))).historical


def test_every_event_gets_its_own_id() -> None:
    event = Event("window", "m1", 1, {})
    assert decode(encode(event, gateway="g", seq=1)).id != decode(encode(event, gateway="g", seq=1)).id


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1, 2]), "expected a map"),
        (msgpack.packb({"v": 99}), "unsupported schema version 99"),
        (msgpack.packb({"v": SCHEMA_VERSION, "gw": "g"}), "missing or malformed"),
    ],
)
def test_refuses_what_is_not_an_event(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(payload)


def test_printed_forms_use_the_wire_keys() -> None:
    """`tail --json` and `buffer export` print `wire_fields`: the payload's own keys."""
    payload = encode(Event("window", "m1", 5, {"x": 1}), gateway="gw", seq=3)
    env = decode(payload)
    assert wire_fields(env) == msgpack.unpackb(payload)
    historical = decode(mark_historical(payload))
    assert wire_fields(historical)["hist"] is True


def test_an_events_id_names_its_store_and_seq() -> None:
    env = decode(encode(Event("window", "m1", 1, {}), gateway="gw", seq=7,
                        store="0123456789abcdef"))
    assert env.id == "0123456789abcdef-7" and store_of(env.id) == "0123456789abcdef"
    assert store_of(decode(encode(Event("window", "m1", 1, {}), gateway="gw", seq=7)).id) == "", \
        "without a store, a UUID names none"
