"""Decoding of register words into numbers, for every type and byte order.

Words arrive as 16-bit integers in transmission order. The byte order says how
the value's bytes (A = most significant) were laid out over them; decoding
first undoes the order, then reads the bytes big-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from drivers.modbus.config import ByteOrder, ModbusTag, TagType

_STRUCT: dict[str, struct.Struct] = {
    "int16": struct.Struct(">h"),
    "uint16": struct.Struct(">H"),
    "int32": struct.Struct(">i"),
    "uint32": struct.Struct(">I"),
    "float32": struct.Struct(">f"),
    "int64": struct.Struct(">q"),
    "uint64": struct.Struct(">Q"),
    "float64": struct.Struct(">d"),
}


def to_big_endian_bytes(words: Sequence[int], order: ByteOrder) -> bytes:
    """Reorder transmitted words into the value's big-endian bytes (ABCD...)."""
    ordered = list(words)
    if order in ("CDAB", "DCBA"):  # low word first
        ordered.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in ordered)
    if order in ("BADC", "DCBA"):  # bytes swapped inside each word
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def decode(words: Sequence[int], type_: TagType, order: ByteOrder) -> int | float:
    """The raw number held by `words` (before scale and offset), exact: an int for integer types.

    Samples are float64, so a 64-bit integer above 2**53 loses its last digits
    when it becomes a sample; the decoding itself never does.
    """
    fmt = _STRUCT[type_]
    if len(words) * 2 != fmt.size:
        raise ValueError(f"{type_} needs {fmt.size // 2} registers, got {len(words)}")
    value: int | float = fmt.unpack(to_big_endian_bytes(words, order))[0]
    return value


def encode(value: float, type_: TagType, order: ByteOrder) -> list[int]:
    """The inverse of `decode`: words as a device with this byte order sends them.

    Used by tests and the simulators; the agent never writes to a device.
    """
    fmt = _STRUCT[type_]
    number: float | int = value if type_.startswith("float") else int(value)
    big = fmt.pack(number)
    words = [int.from_bytes(big[i : i + 2], "big") for i in range(0, len(big), 2)]
    # The reorderings are their own inverses, so applying one again encodes.
    raw = to_big_endian_bytes(words, order)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def decode_string(words: Sequence[int], order: ByteOrder) -> str:
    """ASCII text, two characters per register, trailing NULs and spaces dropped.

    Only the byte swap inside words (BADC, DCBA) applies: devices keep the characters of
    a string in reading order across registers whatever their word order for numbers.
    """
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if order in ("BADC", "DCBA"):
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw.decode("latin-1").rstrip("\x00 ")


def decode_tag(tag: ModbusTag, words: Sequence[int], device_order: ByteOrder) -> int | float | str:
    """A register tag's raw value from its words (before scale and offset); text for strings."""
    order = tag.byte_order or device_order
    if tag.type == "string":
        return decode_string(words, order)
    if tag.type == "bool":
        assert tag.bit is not None
        (word,) = words
        value = int.from_bytes(to_big_endian_bytes([word], order), "big")
        return (value >> tag.bit) & 1
    return decode(words, tag.type, order)


# Struct format letter of each numeric type, for the per-request decoder below.
_LETTER = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f",
           "int64": "q", "uint64": "Q", "float64": "d"}


class RequestDecoder:
    """Every tag of one request decoded from its words in a few struct calls: the hot path.

    The words are packed once as sent (big-endian per word) and once byte-swapped, so each byte
    order is one `unpack_from`: ABCD big-endian and DCBA little-endian on the sent bytes, BADC
    big-endian and CDAB little-endian on the swapped ones. Must equal `decode_tag`.
    """

    def __init__(self, tags: Sequence[ModbusTag], start: int, count: int, device_order: ByteOrder):
        self._tags = tuple(tags)
        self._as_sent = struct.Struct(f">{count}H")
        self._swapped = struct.Struct(f"<{count}H")
        self._device_order = device_order
        # Per tag: (struct or None for the slow path, swapped?, word offset, scale, offset).
        self._plan: list[tuple[struct.Struct | None, bool, int, float, float]] = []
        for tag in self._tags:
            word = tag.address - start
            if tag.type in _LETTER and not tag.is_bit:
                order = tag.byte_order or device_order
                endian = ">" if order in ("ABCD", "BADC") else "<"
                fmt = struct.Struct(endian + _LETTER[tag.type])
                self._plan.append((fmt, order in ("BADC", "CDAB"), word, tag.scale, tag.offset))
            else:
                self._plan.append((None, False, word, tag.scale, tag.offset))

    def decode(self, words: Sequence[int]) -> list[float | str]:
        """Scaled values (text for strings) in the order of the request's tags."""
        as_sent = self._as_sent.pack(*words)
        swapped = self._swapped.pack(*words)
        out: list[float | str] = []
        for tag, (fmt, swap, word, scale, offset) in zip(self._tags, self._plan, strict=True):
            if fmt is not None:
                out.append(float(fmt.unpack_from(swapped if swap else as_sent, 2 * word)[0])
                           * scale + offset)
            elif tag.is_bit:
                out.append(float(words[word]) * scale + offset)
            else:
                raw = decode_tag(tag, words[word : word + tag.register_count], self._device_order)
                out.append(raw if isinstance(raw, str) else float(raw) * scale + offset)
        return out
