"""publish_decode.py against asyncua's own encoder and decoder: for every PublishResponse
asyncua can write, the array decoder either declines it or reads exactly what asyncua reads,
and from there the batches are the ones the object path (BatchBuilder) makes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from unittest import mock

import numpy as np
import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.opcua import publish_decode
from drivers.opcua.publish_decode import DataChanges, decode_data_changes
from drivers.opcua.values import BatchBuilder, batches_of_changes, plausible_time_ns, quality_of

NUMERIC = {
    ua.VariantType.Boolean: st.booleans(),
    ua.VariantType.SByte: st.integers(-128, 127),
    ua.VariantType.Byte: st.integers(0, 255),
    ua.VariantType.Int16: st.integers(-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: st.integers(0, 2**16 - 1),
    ua.VariantType.Int32: st.integers(-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: st.integers(0, 2**32 - 1),
    ua.VariantType.Int64: st.integers(-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: st.integers(0, 2**64 - 1),
    ua.VariantType.Float: st.floats(width=32, allow_nan=True),
    ua.VariantType.Double: st.floats(allow_nan=True),
}
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
RECEIVE_NS = int(NOW.timestamp()) * 1_000_000_000


@st.composite
def variants(draw: st.DrawFn, numeric_only: bool) -> ua.Variant | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    kinds = list(NUMERIC)
    if not numeric_only:
        kinds.append(ua.VariantType.String)
    kind = draw(st.sampled_from(kinds))
    if kind == ua.VariantType.String:
        return ua.Variant(draw(st.text(max_size=5)), kind)
    return ua.Variant(draw(NUMERIC[kind]), kind)


times = st.one_of(st.none(), st.integers(-7200, 7200).map(lambda s: NOW + timedelta(
    seconds=s, microseconds=250_000)))
status_codes = st.sampled_from([0, 0x40000000, 0x80000000, 0x808D0000])


@st.composite
def data_values(draw: st.DrawFn, numeric_only: bool = True) -> ua.DataValue:
    value = ua.DataValue(Value=draw(variants(numeric_only)),
                         SourceTimestamp=draw(times), ServerTimestamp=draw(times))
    status = draw(st.one_of(st.none(), status_codes))
    value.StatusCode = None if status is None else ua.StatusCode(status)
    return value


def publish_response(items: list[list[tuple[int, ua.DataValue]]], seq: int = 7) -> bytes:
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = 42
    response.Parameters.NotificationMessage.SequenceNumber = seq
    response.Parameters.NotificationMessage.PublishTime = NOW
    response.Parameters.NotificationMessage.NotificationData = [
        ua.DataChangeNotification(MonitoredItems=[
            ua.MonitoredItemNotification(ClientHandle=h, Value=v) for h, v in part])
        for part in items]
    response.Parameters.AvailableSequenceNumbers = [seq]
    return bytes(struct_to_binary(response))


def _read_by_asyncua(raw: bytes) -> list[ua.MonitoredItemNotification]:
    response = struct_from_binary(ua.PublishResponse, Buffer(raw))
    return [item for part in response.Parameters.NotificationMessage.NotificationData
            for item in part.MonitoredItems]


notifications = st.lists(st.lists(st.tuples(st.integers(0, 2**32 - 1), data_values()),
                                  min_size=1, max_size=6), min_size=1, max_size=3)
uniform = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.sampled_from(list(NUMERIC)), st.just(n)))


@settings(max_examples=300, deadline=None)
@given(notifications)
def test_what_it_decodes_is_what_asyncua_decodes(items: list[list[tuple[int, ua.DataValue]]],
                                                  ) -> None:
    raw = publish_response(items)
    changes = decode_data_changes(raw)
    expected = _read_by_asyncua(raw)
    assert changes is not None, "numbers and booleans only: the array path must take it"
    assert (changes.subscription_id, changes.sequence_number) == (42, 7)
    assert len(changes) == len(expected)
    for i, item in enumerate(expected):
        assert changes.handles[i] == item.ClientHandle
        value = item.Value
        payload = value.Value.Value if value.Value is not None else None
        assert changes.has_value[i] == (payload is not None)
        if payload is not None:
            wanted = float(payload)
            got = changes.values[i]
            assert (math.isnan(got) and math.isnan(wanted)) or got == wanted
        code = value.StatusCode.value if value.StatusCode is not None else 0
        assert changes.status[i] == code
        if value.SourceTimestamp is None:
            assert changes.source_ns[i] == 0
        else:
            # asyncua rounds to microseconds; the wire holds 100 ns.
            stamp = value.SourceTimestamp.replace(tzinfo=UTC)
            assert abs(changes.source_ns[i] - round(stamp.timestamp() * 1e6) * 1000) < 1000


@settings(max_examples=100, deadline=None)
@given(uniform, st.data())
def test_one_layout_for_every_item_goes_through_one_array_view(
        layout: tuple[ua.VariantType, int], data: st.DataObject) -> None:
    kind, n = layout
    values = data.draw(st.lists(NUMERIC[kind], min_size=n, max_size=n))
    items = [(h, ua.DataValue(Value=ua.Variant(v, kind), SourceTimestamp=NOW,
                              StatusCode=ua.StatusCode(0)))
             for h, v in enumerate(values, start=1)]
    with mock.patch.object(publish_decode, "_item_by_item", side_effect=AssertionError):
        changes = decode_data_changes(publish_response([items]))
    assert changes is not None
    want = np.array([float(v) for v in values])
    assert np.array_equal(changes.values, want, equal_nan=True)
    assert changes.handles.tolist() == list(range(1, n + 1))


def test_declines_strings_arrays_picoseconds_and_status_changes() -> None:
    fine = ua.DataValue(Value=ua.Variant(1.5, ua.VariantType.Double), SourceTimestamp=NOW)
    fine.SourcePicoseconds = 500  # asyncua's field order differs from Part 6 here: leave it
    assert decode_data_changes(publish_response([[(1, fine)]])) is None
    text = ua.DataValue(Value=ua.Variant("v1.2", ua.VariantType.String))
    assert decode_data_changes(publish_response([[(1, text)]])) is None
    array = ua.DataValue(Value=ua.Variant([1.0, 2.0], ua.VariantType.Double))
    assert decode_data_changes(publish_response([[(1, array)]])) is None
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = 1
    response.Parameters.NotificationMessage.NotificationData = [
        ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout))]
    assert decode_data_changes(bytes(struct_to_binary(response))) is None


def test_a_keep_alive_is_left_to_asyncua() -> None:
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = 1
    assert decode_data_changes(bytes(struct_to_binary(response))) is None


def test_a_service_fault_is_left_to_asyncua() -> None:
    assert decode_data_changes(bytes(struct_to_binary(ua.ServiceFault()))) is None


@settings(max_examples=200, deadline=None)
@given(notifications, st.data())
def test_truncated_or_corrupted_bytes_never_raise(
        items: list[list[tuple[int, ua.DataValue]]], data: st.DataObject) -> None:
    raw = bytearray(publish_response(items))
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert decode_data_changes(bytes(raw[:cut])) is None  # a short body never adds up
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255))
    decode_data_changes(bytes(raw))  # declines or decodes; never raises


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 5), data_values()), min_size=1, max_size=6),
                min_size=1, max_size=3))
def test_batches_equal_the_object_path(items: list[list[tuple[int, ua.DataValue]]]) -> None:
    """The arrays make the batches BatchBuilder makes from asyncua's objects, grouped by
    time (asyncua's times are whole microseconds, the wire's 100 ns)."""
    handles = sorted({h for part in items for h, _ in part})[:3]  # the others are not ours
    names = ["a", "b", "c"]
    tag_of_handle = np.full(max(handles) + 1, -1, dtype=np.int64)
    for i, h in enumerate(handles):
        tag_of_handle[h] = i
    raw = publish_response(items)
    changes = decode_data_changes(raw)
    assert isinstance(changes, DataChanges)
    got = batches_of_changes("dev", changes, tag_of_handle, names, RECEIVE_NS, 5)

    expected, builder, current = [], None, -1
    ours = [i for i in _read_by_asyncua(raw) if i.ClientHandle in handles]
    at = [plausible_time_ns(i.Value.SourceTimestamp, RECEIVE_NS) // 1000 for i in ours]
    for t, item in sorted(zip(at, ours, strict=True), key=lambda pair: pair[0]):
        value = item.Value
        t *= 1000
        if builder is None or t // 1000 != current // 1000:
            if builder is not None:
                expected.append(builder.build(current, 5))
            builder, current = BatchBuilder("dev"), t
        code = value.StatusCode.value if value.StatusCode is not None else 0
        payload = value.Value.Value if value.Value is not None else None
        builder.add(names[handles.index(item.ClientHandle)], payload, quality_of(code), 1)
    if builder is not None:
        expected.append(builder.build(current, 5))
    assert [b.tags for b in got] == [b.tags for b in expected]
    for g, e in zip(got, expected, strict=True):
        assert np.array_equal(g.values, e.values, equal_nan=True)
        assert g.quality.tolist() == e.quality.tolist()
        assert abs(g.time_ns - e.time_ns) < 1000


@pytest.mark.parametrize("source_ns", [0, -1, RECEIVE_NS + 3 * 10**9, RECEIVE_NS - 7200 * 10**9])
def test_implausible_or_missing_source_times_fall_back_to_the_receive_time(
        source_ns: int) -> None:
    changes = DataChanges(1, 1, np.array([1], dtype=np.uint32), np.array([1.0]),
                          np.array([True]), np.array([0], dtype=np.uint32),
                          np.array([source_ns], dtype=np.int64))
    (batch,) = batches_of_changes("dev", changes, np.array([-1, 0]), ["a"], RECEIVE_NS, 5)
    assert batch.time_ns == RECEIVE_NS
