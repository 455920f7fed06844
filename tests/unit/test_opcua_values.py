"""OPC UA values to samples: quality from the StatusCode, plausible source times, value kinds."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from drivers.opcua.values import BatchBuilder, plausible_time_ns, quality_of
from drivers.samples import Quality

GOOD, UNCERTAIN_LAST_USABLE, BAD_SENSOR, BAD_NOT_CONNECTED = 0, 0x40900000, 0x808B0000, 0x808A0000


@pytest.mark.parametrize(("code", "quality"), [
    (GOOD, Quality.GOOD), (0x00A20000, Quality.GOOD),  # Good_Clamped is still good
    (UNCERTAIN_LAST_USABLE, Quality.UNCERTAIN),
    (BAD_SENSOR, Quality.BAD), (BAD_NOT_CONNECTED, Quality.BAD), (0xC0000000, Quality.BAD),
])
def test_quality_is_the_status_codes_severity(code: int, quality: Quality) -> None:
    assert quality_of(code) == quality


RECEIVED = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
RECEIVED_NS = int(RECEIVED.timestamp()) * 1_000_000_000


@pytest.mark.parametrize(("source", "expected"), [
    (RECEIVED - timedelta(seconds=3), RECEIVED_NS - 3_000_000_000),  # a queued sample
    (RECEIVED.replace(tzinfo=None) - timedelta(milliseconds=5), RECEIVED_NS - 5_000_000),  # naive
    (RECEIVED + timedelta(seconds=1), RECEIVED_NS + 1_000_000_000),  # skew within tolerance
    (RECEIVED + timedelta(minutes=5), RECEIVED_NS),  # from the future: the PLC clock is off
    (datetime(2000, 1, 1, tzinfo=UTC), RECEIVED_NS),  # an unset PLC clock
    (datetime(1601, 1, 1, tzinfo=UTC), RECEIVED_NS),  # OPC UA's "no time"
    (None, RECEIVED_NS),
])
def test_source_time_is_used_only_when_plausible(source: datetime | None, expected: int) -> None:
    assert plausible_time_ns(source, RECEIVED_NS) == expected


def test_every_value_kind_becomes_numbers_texts_or_bad_samples() -> None:
    b = BatchBuilder("d")
    b.add("temp", 21.5, Quality.GOOD, 64)
    b.add("run", True, Quality.GOOD, 64)
    b.add("count", 7, Quality.UNCERTAIN, 64)
    b.add("hist", [1.0, 2.0, 3.0, 4.0], Quality.GOOD, 3)  # cut to max_array_length
    b.add("fw", "1.2", Quality.GOOD, 64)
    b.add("nan", math.nan, Quality.GOOD, 64)
    b.add("struct", {"a": 1}, Quality.GOOD, 64)
    b.add("gone", None, Quality.BAD, 64)
    b.add("bad_text", "x", Quality.BAD, 64)
    batch = b.build(time_ns=1, mono_ns=2)
    assert batch.tags == ("temp", "run", "count", "hist", "hist", "hist", "nan", "struct", "gone",
                          "bad_text")
    assert batch.values[:6].tolist() == [21.5, 1.0, 7.0, 1.0, 2.0, 3.0]
    assert batch.quality.tolist() == [0, 0, 1, 0, 0, 0, 2, 2, 2, 2]
    assert all(math.isnan(v) for v in batch.values[6:])
    assert batch.texts == {"fw": "1.2"}
