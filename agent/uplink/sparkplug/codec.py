"""Sparkplug B payloads: our metrics to the bytes of the official `sparkplug_b.proto` and back.

The generated module (`sparkplug_b_pb2`, `make sparkplug-proto`) does the wire format; here
only the value field a datatype uses is chosen (spec, Payloads: datatypes), so that the rest
of the uplink never sees a protobuf object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from google.protobuf.message import DecodeError as _ProtobufDecodeError

from agent.uplink.sparkplug import sparkplug_b_pb2 as pb

Value = bool | int | float | str | None


class DataType(IntEnum):
    """The Sparkplug B datatypes this agent sends (a subset of the spec's table)."""

    INT64 = 4
    UINT64 = 8
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13


_INT_FIELD = {1, 2, 3, 5, 6, 7}  # Int8..Int32, UInt8..UInt32: int_value (uint32)
_LONG_FIELD = {4, 8, 13}  # Int64, UInt64, DateTime (ms): long_value (uint64)
_STRING_FIELD = {12, 14, 15}  # String, Text, UUID
_U64 = 1 << 64


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric as it goes on the wire: by `name` in a birth, by `alias` in data."""

    name: str | None
    alias: int | None
    datatype: int | None
    """Always sent by this agent, in data messages too (the spec's SHOULD NOT there is for
    bytes; a decoder without the birth could not tell a value's type)."""
    value: Value
    """None is sent as `is_null` (spec: a null value is said so, not coded as -1 or 0)."""
    timestamp_ms: int | None = None
    historical: bool = False
    properties: Mapping[str, str | float] = field(default_factory=dict)
    """Sparkplug property set: `engUnit` (String), `engLow` and `engHigh` (Double)."""


@dataclass(frozen=True, slots=True)
class Payload:
    timestamp_ms: int
    seq: int | None
    """None only in NDEATH (spec: it carries no sequence number)."""
    metrics: Sequence[Metric]


class PayloadError(ValueError):
    """The bytes are not a Sparkplug B payload."""


def encode(payload: Payload) -> bytes:
    message = pb.Payload(timestamp=payload.timestamp_ms)
    if payload.seq is not None:
        message.seq = payload.seq
    for metric in payload.metrics:
        _fill(message.metrics.add(), metric)
    return message.SerializeToString()


def _fill(out: pb.Payload.Metric, metric: Metric) -> None:
    if metric.name is not None:
        out.name = metric.name
    if metric.alias is not None:
        out.alias = metric.alias
    if metric.timestamp_ms is not None:
        out.timestamp = metric.timestamp_ms
    if metric.datatype is not None:
        out.datatype = metric.datatype
    if metric.historical:
        out.is_historical = True
    for key, setting in metric.properties.items():
        out.properties.keys.append(key)
        prop = out.properties.values.add()
        if isinstance(setting, str):
            prop.type, prop.string_value = DataType.STRING, setting
        else:
            prop.type, prop.double_value = DataType.DOUBLE, float(setting)
    value, kind = metric.value, metric.datatype
    if value is None:
        out.is_null = True
    elif kind == DataType.BOOLEAN:
        out.boolean_value = bool(value)
    elif kind == DataType.DOUBLE:
        out.double_value = float(value)
    elif kind == 9:
        out.float_value = float(value)
    elif kind in _LONG_FIELD:
        out.long_value = int(value) % _U64  # Int64 as two's complement in the uint64 field
    elif kind in _INT_FIELD:
        out.int_value = int(value) % (1 << 32)
    elif kind in _STRING_FIELD:
        out.string_value = str(value)
    else:
        raise ValueError(f"metric {metric.name or metric.alias}: datatype {kind} not supported")


def decode(data: bytes) -> Payload:
    message = pb.Payload()
    try:
        message.ParseFromString(data)
    except _ProtobufDecodeError as exc:
        raise PayloadError(f"not a Sparkplug B payload: {exc}") from exc
    return Payload(
        timestamp_ms=message.timestamp,
        seq=message.seq if message.HasField("seq") else None,
        metrics=[_metric(m) for m in message.metrics],
    )


def _metric(m: pb.Payload.Metric) -> Metric:
    properties: dict[str, str | float] = {}
    for key, prop in zip(m.properties.keys, m.properties.values, strict=False):
        which = prop.WhichOneof("value")
        properties[key] = prop.string_value if which == "string_value" else prop.double_value
    return Metric(
        name=m.name if m.HasField("name") else None,
        alias=m.alias if m.HasField("alias") else None,
        datatype=m.datatype if m.HasField("datatype") else None,
        value=None if m.is_null else _value(m),
        timestamp_ms=m.timestamp if m.HasField("timestamp") else None,
        historical=m.is_historical,
        properties=properties,
    )


def _value(m: pb.Payload.Metric) -> Value:
    which = m.WhichOneof("value")
    if which is None:
        return None
    if which == "long_value":
        raw = m.long_value
        return raw - _U64 if m.datatype == DataType.INT64 and raw >= _U64 // 2 else raw
    value: Value = getattr(m, which)
    return value
