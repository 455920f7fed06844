"""A PublishResponse full of data changes, decoded into arrays in a few numpy calls.

asyncua decodes every MonitoredItemNotification into half a dozen Python objects (DataValue,
Variant, StatusCode, datetimes, an event object): most of the agent's CPU on a busy
subscription. Data changes of scalar numbers and booleans have a fixed binary layout (OPC UA
Part 6, 5.2.2.17 DataValue, 5.2.2.16 Variant): items of one layout are one `np.frombuffer`
with a structured dtype, mixed layouts are read with struct, item by item. Anything else
(status changes, events, strings, arrays, picoseconds, diagnostics, a fault, a layout or
length that does not add up) makes `decode_data_changes` answer None, and the caller hands
the same bytes to asyncua: an unusual response is slower, never wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

PUBLISH_RESPONSE = 829
"""ObjectIds.PublishResponse_Encoding_DefaultBinary."""
DATA_CHANGE_NOTIFICATION = 811
"""ObjectIds.DataChangeNotification_Encoding_DefaultBinary."""

# DataValue encoding mask bits. The picosecond bits (0x10, 0x20) are left to asyncua.
HAS_VALUE, HAS_STATUS, HAS_SOURCE_TIME, HAS_SERVER_TIME = 0x01, 0x02, 0x04, 0x08
_MASKS = HAS_VALUE | HAS_STATUS | HAS_SOURCE_TIME | HAS_SERVER_TIME

# Variant built-in type id -> numpy type of its little-endian scalar encoding (0: null).
_SCALARS: dict[int, str] = {1: "u1", 2: "i1", 3: "u1", 4: "<i2", 5: "<u2", 6: "<i4", 7: "<u4",
                            8: "<i8", 9: "<u8", 10: "<f4", 11: "<f8"}
_BOOLEAN = 1
_STRUCTS = {t: struct.Struct("<" + code) for t, code in
            zip(_SCALARS, ("?", "b", "B", "h", "H", "i", "I", "q", "Q", "f", "d"), strict=True)}
"""The same scalars for struct (numpy's type characters have platform sizes there)."""

_EPOCH_TICKS = 116_444_736_000_000_000
"""100 ns ticks from 1601-01-01 (the OPC UA DateTime epoch) to 1970-01-01."""

_Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""handles, values, has_value, status, source_ns."""

_U8, _U16, _U32, _I32, _I64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<i", "<q"))


@dataclass(frozen=True, slots=True)
class DataChanges:
    """Every data change of one publish, in the order the server sent them.

    `source_ns` is 0 where the server gave no source timestamp; `has_value` is False where
    the DataValue carried no value or a null one (a BAD sample for the agent).
    """

    subscription_id: int
    sequence_number: int
    handles: npt.NDArray[np.uint32]
    values: npt.NDArray[np.float64]
    has_value: npt.NDArray[np.bool_]
    status: npt.NDArray[np.uint32]
    source_ns: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.handles)


class _Unusual(Exception):
    """Not a response this module decodes: asyncua's decoder takes it."""


def decode_data_changes(raw: bytes | memoryview) -> DataChanges | None:
    """The data changes of a PublishResponse (its bytes from the type id on), or None when
    it holds anything but data changes of scalar numbers and booleans."""
    try:
        return _Reader(memoryview(raw)).publish_response()
    except (_Unusual, struct.error, ValueError, IndexError):
        return None


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, s: struct.Struct) -> int:
        (value,) = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return int(value)

    def expect(self, s: struct.Struct, wanted: int) -> None:
        if self.take(s) != wanted:
            raise _Unusual

    def node_id(self) -> tuple[int, int]:
        """(namespace, numeric id) of a NodeId in its three numeric encodings."""
        kind = self.take(_U8)
        if kind == 0:
            return 0, self.take(_U8)
        if kind == 1:
            return self.take(_U8), self.take(_U16)
        if kind == 2:
            return self.take(_U16), self.take(_U32)
        raise _Unusual

    def empty_array(self) -> None:
        if self.take(_I32) > 0:
            raise _Unusual

    def publish_response(self) -> DataChanges:
        if self.node_id() != (0, PUBLISH_RESPONSE):
            raise _Unusual  # a ServiceFault, or something else altogether
        # ResponseHeader: Timestamp, RequestHandle, ServiceResult, ServiceDiagnostics,
        # StringTable, AdditionalHeader (a null ExtensionObject).
        self.pos += 8 + 4
        if self.take(_U32) != 0:
            raise _Unusual  # not Good: let asyncua report it
        self.expect(_U8, 0)
        self.empty_array()
        if self.node_id() != (0, 0):
            raise _Unusual
        self.expect(_U8, 0)
        # PublishResult
        subscription_id = self.take(_U32)
        available = self.take(_I32)
        self.pos += 4 * max(available, 0)
        self.pos += 1  # MoreNotifications
        sequence_number = self.take(_U32)
        self.pos += 8  # PublishTime
        parts = [self.data_change_notification() for _ in range(max(self.take(_I32), 0))]
        results = self.take(_I32)
        self.pos += 4 * max(results, 0)
        self.empty_array()  # DiagnosticInfos
        if self.pos != len(self.data):
            raise _Unusual
        if not parts:
            raise _Unusual  # a keep-alive: asyncua's own path notes it
        fields = zip(*parts, strict=True)
        handles, values, has_value, status, source_ns = (np.concatenate(f) for f in fields)
        return DataChanges(subscription_id, sequence_number, handles, values, has_value,
                           status, source_ns)

    def data_change_notification(self) -> _Columns:
        if self.node_id() != (0, DATA_CHANGE_NOTIFICATION):
            raise _Unusual  # a status change or an event list
        self.expect(_U8, 1)  # body encoded as binary
        length = self.take(_I32)
        body = self.data[self.pos:self.pos + length]
        if len(body) != length:
            raise _Unusual
        self.pos += length
        items = _I32.unpack_from(body, 0)[0]
        if items < 0:
            raise _Unusual
        columns, end = _uniform(body, items) or _item_by_item(body, items)
        if _I32.unpack_from(body, end)[0] > 0 or end + 4 != length:
            raise _Unusual  # DiagnosticInfos present, or bytes left over
        return columns


def _layout(mask: int, variant: int) -> np.dtype:
    """The packed record of one MonitoredItemNotification with this mask and variant type."""
    if mask & ~_MASKS or (mask & HAS_VALUE and variant not in _SCALARS and variant != 0):
        raise _Unusual
    fields: list[tuple[str, str]] = [("handle", "<u4"), ("mask", "u1")]
    if mask & HAS_VALUE:
        fields.append(("variant", "u1"))
        if variant:
            fields.append(("value", _SCALARS[variant]))
    if mask & HAS_STATUS:
        fields.append(("status", "<u4"))
    if mask & HAS_SOURCE_TIME:
        fields.append(("source", "<i8"))
    if mask & HAS_SERVER_TIME:
        fields.append(("server", "<i8"))
    return np.dtype(fields)


def _uniform(body: memoryview, items: int) -> tuple[_Columns, int] | None:
    """Every item in the first item's layout: one structured view of them all; None if the
    body is not that (then item by item)."""
    if items == 0:
        return _empty(), 4
    mask = body[8]
    variant = body[9] if mask & HAS_VALUE else 0
    layout = _layout(mask, variant)
    if 4 + items * layout.itemsize + 4 != len(body):
        return None
    records = np.frombuffer(body, dtype=layout, count=items, offset=4)
    if (records["mask"] != mask).any():
        return None
    if mask & HAS_VALUE and (records["variant"] != variant).any():
        return None
    return _columns(records, mask, variant, items), 4 + items * layout.itemsize


def _columns(records: np.ndarray, mask: int, variant: int, items: int) -> _Columns:
    handles = records["handle"].astype(np.uint32)
    if mask & HAS_VALUE and variant:
        raw = records["value"]
        values = (raw != 0).astype(np.float64) if variant == _BOOLEAN else raw.astype(np.float64)
        has_value = np.ones(items, dtype=bool)
    else:
        values, has_value = np.full(items, np.nan), np.zeros(items, dtype=bool)
    status = (records["status"].astype(np.uint32) if mask & HAS_STATUS
              else np.zeros(items, dtype=np.uint32))
    source = (_ticks_to_ns(records["source"]) if mask & HAS_SOURCE_TIME
              else np.zeros(items, dtype=np.int64))
    return handles, values, has_value, status, source


def _item_by_item(body: memoryview, items: int) -> tuple[_Columns, int]:
    handles = np.empty(items, dtype=np.uint32)
    values = np.full(items, np.nan)
    has_value = np.zeros(items, dtype=bool)
    status = np.zeros(items, dtype=np.uint32)
    ticks = np.zeros(items, dtype=np.int64)  # 0: no source time (_ticks_to_ns keeps it 0)
    pos = 4
    for i in range(items):
        handles[i] = _U32.unpack_from(body, pos)[0]
        mask = body[pos + 4]
        pos += 5
        if mask & ~_MASKS:
            raise _Unusual
        if mask & HAS_VALUE:
            variant = body[pos]
            pos += 1
            if variant:
                scalar = _STRUCTS.get(variant)
                if scalar is None:
                    raise _Unusual  # a string, an array, a structure...
                number = scalar.unpack_from(body, pos)[0]
                pos += scalar.size
                values[i] = float(number != 0) if variant == _BOOLEAN else number
                has_value[i] = True
        if mask & HAS_STATUS:
            status[i] = _U32.unpack_from(body, pos)[0]
            pos += 4
        if mask & HAS_SOURCE_TIME:
            ticks[i] = _I64.unpack_from(body, pos)[0]
            pos += 8
        if mask & HAS_SERVER_TIME:
            pos += 8
    return (handles, values, has_value, status, _ticks_to_ns(ticks)), pos


def _ticks_to_ns(ticks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """OPC UA DateTime (100 ns ticks since 1601) as ns since 1970; 0 stays 0 (no time).
    Ticks far outside the epoch's reach are clipped: they are implausible either way."""
    ticks = ticks.astype(np.int64)
    ns = (np.clip(ticks, _EPOCH_TICKS - 2**62 // 100, _EPOCH_TICKS + 2**62 // 100)
          - _EPOCH_TICKS) * 100
    return np.where(ticks == 0, 0, ns).astype(np.int64)


def _empty() -> _Columns:
    return (np.zeros(0, dtype=np.uint32), np.zeros(0), np.zeros(0, dtype=bool),
            np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64))
