"""MQTT 3.1.1 and 5 packets: what an edge node sends, and a reader for what a broker answers.

Out: CONNECT (will, credentials, session properties), PUBLISH at QoS 0 and 1, PUBACK,
SUBSCRIBE, PINGREQ, DISCONNECT. In: CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP and a
broker's DISCONNECT, split off a byte buffer as they arrive. Pure functions over bytes,
no I/O: the connection (`connection.py`) does the sending and the timing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
"""Normal disconnection in both versions (MQTT 5: no reason code means 0, and no will)."""

SESSION_EXPIRY_INTERVAL, SERVER_KEEP_ALIVE, REASON_STRING = 0x11, 0x13, 0x1F
RECEIVE_MAXIMUM = 0x21

_REASONS = {
    0x00: "Success", 0x04: "Disconnect with will message", 0x10: "No matching subscribers",
    0x80: "Unspecified error", 0x81: "Malformed packet", 0x82: "Protocol error",
    0x83: "Implementation specific error", 0x84: "Unsupported protocol version",
    0x85: "Client identifier not valid", 0x86: "Bad user name or password",
    0x87: "Not authorized", 0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned",
    0x8B: "Server shutting down", 0x8C: "Bad authentication method",
    0x8D: "Keep alive timeout", 0x8E: "Session taken over", 0x8F: "Topic filter invalid",
    0x90: "Topic name invalid", 0x91: "Packet identifier in use",
    0x93: "Receive maximum exceeded", 0x94: "Topic alias invalid", 0x95: "Packet too large",
    0x97: "Quota exceeded", 0x98: "Administrative action", 0x99: "Payload format invalid",
    0x9A: "Retain not supported", 0x9B: "QoS not supported", 0x9C: "Use another server",
    0x9D: "Server moved", 0x9E: "Shared subscriptions not supported",
    0x9F: "Connection rate exceeded", 0xA0: "Maximum connect time",
    0xA1: "Subscription identifiers not supported",
    0xA2: "Wildcard subscriptions not supported",
}
_V3_CONNACK = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}
"""MQTT 3.1.1 CONNACK return codes as the MQTT 5 reason codes that mean the same."""

# Property identifier -> how its value is encoded (MQTT 5, section 2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _TEXT, _PAIR = range(6)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _TEXT, 0x08: _TEXT, 0x09: _TEXT, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _TEXT, 0x13: _TWO, 0x15: _TEXT, 0x16: _TEXT, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _TEXT, 0x1C: _TEXT, 0x1F: _TEXT, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}


class ProtocolError(Exception):
    """The broker sent bytes that are not MQTT: the connection must be dropped."""


@dataclass(frozen=True)
class Reason:
    """A reason code of MQTT 5 (a 3.1.1 CONNACK code is mapped to its MQTT 5 equal)."""

    value: int

    @property
    def is_failure(self) -> bool:
        return self.value >= 0x80

    def __str__(self) -> str:
        return _REASONS.get(self.value, f"reason code 0x{self.value:02x}")


REASONS = tuple(Reason(code) for code in range(256))
"""Every reason code, made once: a replay reads thousands of PUBACKs a second."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Connack:
    session_present: bool
    reason: Reason
    properties: dict[int, int | str]


@dataclass(frozen=True)
class Message:
    """A PUBLISH from the broker."""

    topic: str
    payload: bytes
    qos: int
    mid: int


def remaining_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length < 0x4000:  # most events: two bytes, without the loop
        return bytes((length & 0x7F | 0x80, length >> 7))
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def text(value: str | bytes) -> bytes:
    """A UTF-8 string (or binary data) with its two-byte length."""
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 0xFFFF:
        raise ValueError(f"MQTT strings hold at most 65,535 bytes, not {len(raw)}")
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + remaining_length(len(body)) + body


def connect(
    client_id: str, *, v5: bool, keepalive_s: int, clean_start: bool, will: Will | None,
    username: str | None, password: str | None, session_expiry_s: int = 0,
    receive_maximum: int | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    payload = text(client_id)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        payload += (b"\x00" if v5 else b"") + text(will.topic) + text(will.payload)
    if username is not None:
        flags |= 0x80
        payload += text(username)
        if password is not None:
            flags |= 0x40
            payload += text(password)
    header = text("MQTT") + bytes((5 if v5 else 4, flags)) + struct.pack("!H", keepalive_s)
    if v5:
        props = b""
        if session_expiry_s:
            props += struct.pack("!BI", SESSION_EXPIRY_INTERVAL, session_expiry_s)
        if receive_maximum is not None:
            props += struct.pack("!BH", RECEIVE_MAXIMUM, receive_maximum)
        header += remaining_length(len(props)) + props
    return _packet(CONNECT << 4, header + payload)


def publish(topic: bytes, payload: bytes, mid: int, *, qos: int, retain: bool, v5: bool) -> bytes:
    """`topic` as `text()` made it (a sender formats each topic once); `mid` unused at QoS 0."""
    head = topic + struct.pack("!H", mid) if qos else topic
    if v5:
        head += b"\x00"  # no properties
    first = bytes((PUBLISH << 4 | qos << 1 | retain,))
    return first + remaining_length(len(head) + len(payload)) + head + payload


def as_duplicate(packet: bytes) -> bytes:
    """The same PUBLISH with its DUP flag set, to send again after a reconnect."""
    return bytes((packet[0] | 0x08,)) + packet[1:]


def puback(mid: int) -> bytes:
    return struct.pack("!BBH", PUBACK << 4, 2, mid)  # success: no reason code (both versions)


def subscribe(topic: str, qos: int, mid: int, *, v5: bool) -> bytes:
    body = struct.pack("!H", mid) + (b"\x00" if v5 else b"") + text(topic) + bytes((qos,))
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def pubacks(buffer: bytearray) -> tuple[list[tuple[int, Reason]], int]:
    """The run of PUBACKs without properties at the start of `buffer` as (packet id,
    reason), and the bytes they take: what a broker sends back during a replay, read
    without slicing a body out of the buffer for each."""
    found: list[tuple[int, Reason]] = []
    pos, size = 0, len(buffer)
    while pos + 4 <= size and buffer[pos] == 0x40:
        length = buffer[pos + 1]
        if length == 2:
            found.append((buffer[pos + 2] << 8 | buffer[pos + 3], REASONS[0]))
        elif length == 3 and pos + 5 <= size:
            found.append((buffer[pos + 2] << 8 | buffer[pos + 3], REASONS[buffer[pos + 4]]))
        else:
            break
        pos += 2 + length
    return found, pos


def split(buffer: bytearray, limit: int = 1 << 30) -> tuple[list[tuple[int, bytes]], int]:
    """The complete packets at the start of `buffer` as (first byte, body), and how many
    bytes they take (at most `limit` packets); a packet not complete yet stays for the
    next call. Raises `ProtocolError` when the first packet is malformed."""
    found: list[tuple[int, bytes]] = []
    pos, size = 0, len(buffer)
    while pos + 2 <= size and len(found) < limit:
        length, shift, index = 0, 0, pos + 1
        while True:
            if index >= size:
                return found, pos
            byte = buffer[index]
            index += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                if found:  # those before it are still good
                    return found, pos
                raise ProtocolError("remaining length longer than four bytes")
        end = index + length
        if end > size:
            break
        found.append((buffer[pos], bytes(buffer[index:end])))
        pos = end
    return found, pos


def read_connack(body: bytes, *, v5: bool) -> Connack:
    if len(body) < 2:
        raise ProtocolError("CONNACK shorter than two bytes")
    code = body[1] if v5 else _V3_CONNACK.get(body[1], 0x80 if body[1] else 0)
    properties = read_properties(body, 2)[0] if v5 and len(body) > 2 else {}
    return Connack(bool(body[0] & 1), REASONS[code], properties)


def read_ack(body: bytes) -> tuple[int, Reason]:
    """(packet id, reason) of a PUBACK; the packet id of any acknowledgement."""
    if len(body) < 2:
        raise ProtocolError("acknowledgement without a packet identifier")
    return (body[0] << 8 | body[1]), REASONS[body[2] if len(body) > 2 else 0]


def read_suback(body: bytes, *, v5: bool) -> tuple[int, Reason]:
    mid = read_ack(body)[0]
    pos = read_properties(body, 2)[1] if v5 else 2
    if pos >= len(body):
        raise ProtocolError("SUBACK without a return code")
    code = body[pos]
    return mid, REASONS[code]


def read_disconnect(body: bytes) -> Reason:
    return REASONS[body[0] if body else 0]


def read_publish(first_byte: int, body: bytes, *, v5: bool) -> Message:
    qos = first_byte >> 1 & 0x03
    if len(body) < 2:
        raise ProtocolError("PUBLISH without a topic")
    end = 2 + (body[0] << 8 | body[1])
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("PUBLISH topic is not UTF-8") from exc
    mid = 0
    if qos:
        mid = body[end] << 8 | body[end + 1] if end + 2 <= len(body) else -1
        end += 2
    if v5:
        end = read_properties(body, end)[1]
    if end > len(body) or mid < 0:
        raise ProtocolError("PUBLISH shorter than its header")
    return Message(topic, body[end:], qos, mid)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 21:
            raise ProtocolError("malformed variable byte integer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def read_properties(data: bytes, pos: int) -> tuple[dict[int, int | str], int]:
    """The MQTT 5 properties at `pos` (numbers and strings; pairs and binaries skipped), and
    where they end."""
    length, pos = _varint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError("properties longer than their packet")
    found: dict[int, int | str] = {}
    while pos < end:
        ident = data[pos]
        kind = _PROPERTY_TYPES.get(ident)
        pos += 1
        if kind is None:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        if kind == _VARINT:
            found[ident], pos = _varint(data, pos)
            continue
        if kind in (_TEXT, _PAIR):
            for _ in range(2 if kind == _PAIR else 1):
                size = data[pos] << 8 | data[pos + 1] if pos + 2 <= end else end
                value = data[pos + 2:pos + 2 + size]
                pos += 2 + size
            if kind == _TEXT:
                found[ident] = value.decode(errors="replace")
            continue
        width = {_BYTE: 1, _TWO: 2, _FOUR: 4}[kind]
        found[ident] = int.from_bytes(data[pos:pos + width], "big")
        pos += width
    if pos != end:
        raise ProtocolError("a property runs past the end of the properties")
    return found, end
