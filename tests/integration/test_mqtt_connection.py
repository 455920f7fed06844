"""The MQTT connection against scripted brokers on real sockets: what a broker may do that
Mosquitto in its default configuration does not (a Receive Maximum, silence after PINGREQ,
bytes that are not MQTT, PUBACKs split across reads) and what must survive a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.testing import wait_until_async
from agent.uplink import packets
from agent.uplink.connection import MqttConnection, Settings
from agent.uplink.packets import Message, Reason, Will

CONNACK_V3 = bytes([0x20, 0x02, 0x00, 0x00])
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class Recorder:
    """A `Listener` that writes down what it is told."""

    failures: list[BaseException] = field(default_factory=list)
    connacks: list[Reason] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def will(self) -> Will | None:
        return Will("gw/status", b"offline", qos=1, retain=True)

    def connect_failed(self, exc: BaseException) -> None:
        self.failures.append(exc)

    def socket_opened(self) -> None:
        pass

    def connacked(self, reason: Reason) -> None:
        self.connacks.append(reason)

    def disconnected(self, reason: str) -> None:
        self.losses.append(reason)

    def acknowledged(self, acks: list[tuple[int, Reason]]) -> None:
        self.acks.extend(mid for mid, _ in acks)

    def message_received(self, message: Message) -> None:
        self.messages.append(message)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


def publish_mid(body: bytes) -> int:
    topic_end = 2 + struct.unpack("!H", body[:2])[0]
    mid: int = struct.unpack("!H", body[topic_end:topic_end + 2])[0]
    return mid


async def acknowledge_publishes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                seen: Callable[[int, int], Awaitable[None]]) -> None:
    """Until the connection ends: each PUBLISH told to `seen(first byte, packet id)`, then
    acknowledged."""
    while True:
        first, body = await read_packet(reader)
        if first >> 4 == packets.PUBLISH:
            await seen(first, publish_mid(body))
            writer.write(packets.puback(publish_mid(body)))


@contextlib.asynccontextmanager
async def broker(script: Script) -> AsyncIterator[int]:
    """A server on a free port that runs `script(reader, writer, connection number)`."""
    count = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await script(reader, writer, count)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def connection(port: int, recorder: Recorder, **options: Any) -> AsyncIterator[
        MqttConnection]:
    settings = dataclasses.replace(Settings(
        host="127.0.0.1", port=port, client_id="gw-1", v5=False, keepalive_s=30,
        connect_timeout_s=2.0, tls=None), **options)
    conn = MqttConnection(settings, recorder)
    conn.start()
    try:
        yield conn
    finally:
        await conn.stop()


async def test_silence_after_pingreq_drops_the_connection_and_reconnects() -> None:
    pings = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_packet(reader)  # CONNECT
        writer.write(CONNACK_V3)
        while True:
            first, _ = await read_packet(reader)
            if first == 0xC0:
                pings.append(n)  # never answered

    recorder = Recorder()
    async with broker(script) as port, connection(port, recorder, keepalive_s=1):
        await wait_until_async(lambda: len(recorder.connacks) >= 2, timeout_s=10,
                               what="a second connection after the unanswered PINGREQ")
    assert pings[0] == 1
    assert recorder.losses[0] == "no answer to PINGREQ within 1 s"


async def test_bytes_that_are_not_mqtt_drop_the_connection_which_comes_back() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_packet(reader)
        writer.write(CONNACK_V3 + (b"\x40\xff\xff\xff\xff\x7f" if n == 1 else b""))
        await reader.read()

    recorder = Recorder()
    async with broker(script) as port, connection(port, recorder):
        await wait_until_async(lambda: len(recorder.connacks) >= 2, timeout_s=10,
                               what="a reconnect after the malformed packet")
    assert recorder.losses[0] == "remaining length longer than four bytes"


async def test_the_brokers_receive_maximum_is_kept_and_the_rest_waits_its_turn() -> None:
    seen: list[int] = []
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_packet(reader)
        props = bytes([packets.RECEIVE_MAXIMUM, 0, 2])  # at most 2 unacknowledged
        writer.write(bytes([0x20, 3 + len(props), 0, 0, len(props)]) + props)

        async def held_after_two(_first: int, mid: int) -> None:
            seen.append(mid)
            if len(seen) == 2:
                await release.wait()

        await acknowledge_publishes(reader, writer, held_after_two)

    recorder = Recorder()
    async with broker(script) as port, connection(port, recorder, v5=True) as conn:
        await wait_until_async(lambda: conn.connected, timeout_s=5, what="CONNACK")
        mids = [conn.publish("gw/m1/window", b"x" * 10) for _ in range(5)]
        await wait_until_async(lambda: len(seen) == 2, timeout_s=5, what="two publishes")
        await asyncio.sleep(0.2)  # the broker says 2: nothing more may come meanwhile
        assert len(seen) == 2
        release.set()
        await wait_until_async(lambda: len(recorder.acks) == 5, timeout_s=5, what="5 PUBACKs")
    assert seen == mids and recorder.acks == mids


@pytest.mark.parametrize("resend", [True, False])
async def test_unacknowledged_publishes_go_again_flagged_dup_unless_told_not_to(
    resend: bool,
) -> None:
    second: list[tuple[int, int]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_packet(reader)
        writer.write(CONNACK_V3)
        if n == 1:  # takes three publishes, acknowledges one, then the line goes
            for index in range(3):
                _, body = await read_packet(reader)
                if index == 0:
                    writer.write(packets.puback(publish_mid(body)))
            return

        async def on_second(first: int, mid: int) -> None:
            second.append((first, mid))

        await acknowledge_publishes(reader, writer, on_second)

    recorder = Recorder()
    async with broker(script) as port, connection(port, recorder, resend=resend) as conn:
        await wait_until_async(lambda: conn.connected, timeout_s=5, what="CONNACK")
        mids = [conn.publish("gw/m1/window", bytes([i])) for i in range(3)]
        await wait_until_async(lambda: len(recorder.connacks) == 2, timeout_s=10,
                               what="the second connection")
        if resend:
            await wait_until_async(lambda: len(second) == 2, timeout_s=5, what="the resends")
            assert second == [(0x32 | 0x08, mids[1]), (0x32 | 0x08, mids[2])]
        else:
            later = conn.publish("gw/m1/window", b"new")
            await wait_until_async(lambda: second, timeout_s=5, what="the new publish")
            assert second == [(0x32, later)]
    assert recorder.acks[0] == mids[0]


async def test_packets_split_across_reads_are_put_back_together() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_packet(reader)
        writer.write(CONNACK_V3)
        _, body = await read_packet(reader)
        message = b"\x32\x11\x00\x06gw/cmd\x00\x07payload"  # QoS 1 PUBLISH, packet id 7
        for byte in packets.puback(publish_mid(body)) + message:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.005)
        assert await read_packet(reader) == (0x40, b"\x00\x07")  # acknowledged on arrival
        await reader.read()

    recorder = Recorder()
    async with broker(script) as port, connection(port, recorder) as conn:
        await wait_until_async(lambda: conn.connected, timeout_s=5, what="CONNACK")
        mid = conn.publish("gw/m1/window", b"one")
        await wait_until_async(lambda: recorder.messages, timeout_s=5, what="the message")
    assert recorder.acks == [mid]
    assert recorder.messages == [Message("gw/cmd", b"payload", 1, 7)]


async def test_a_refused_connect_is_reported_with_its_reason_and_retried() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_packet(reader)
        writer.write(bytes([0x20, 0x02, 0x00, 0x05 if n == 1 else 0x00]))  # 5: not authorized
        await reader.read()

    recorder = Recorder()
    async with broker(script) as port, connection(port, recorder):
        await wait_until_async(lambda: len(recorder.connacks) >= 2, timeout_s=10,
                               what="the retry")
    assert [str(r) for r in recorder.connacks[:2]] == ["Not authorized", "Success"]
    assert recorder.connacks[0].is_failure


def test_remaining_lengths_at_every_width_round_trip() -> None:
    for length in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152):
        packet = bytes([0x30]) + packets.remaining_length(length) + b"\x00" * length
        buffer = bytearray(packet + b"\xd0")  # and the first byte of the next packet
        found, used = packets.split(buffer)
        assert found == [(0x30, b"\x00" * length)] and used == len(packet)


def test_connack_properties_of_every_encoding_are_read_and_unknown_ones_refused() -> None:
    props = (bytes([0x21, 0, 9]) + bytes([0x13, 0, 60]) + bytes([0x27, 0, 1, 0, 0])
             + bytes([0x1F, 0, 2]) + b"no" + bytes([0x26, 0, 1]) + b"k" + b"\x00\x01v"
             + bytes([0x0B, 0x80, 0x01]))
    connack = packets.read_connack(bytes([1, 0x87, len(props)]) + props, v5=True)
    assert connack.session_present and str(connack.reason) == "Not authorized"
    assert connack.properties == {0x21: 9, 0x13: 60, 0x27: 65_536, 0x1F: "no", 0x0B: 128}
    with pytest.raises(packets.ProtocolError, match="unknown property 0x7e"):
        packets.read_connack(bytes([0, 0, 2, 0x7E, 0]), v5=True)
    with pytest.raises(packets.ProtocolError, match="longer than their packet"):
        packets.read_connack(bytes([0, 0, 9, 0x21, 0]), v5=True)


def test_a_run_of_pubacks_is_read_up_to_the_first_other_or_partial_packet() -> None:
    buffer = bytearray(b"\x40\x02\x00\x01" + b"\x40\x03\x00\x02\x10" + b"\x40\x03\x00\x03\x87"
                       + b"\x40\x04\x00\x04\x00\x00" + b"\x40\x02\x00")
    acks, used = packets.pubacks(buffer)
    assert [(mid, str(reason)) for mid, reason in acks] == [
        (1, "Success"), (2, "No matching subscribers"), (3, "Not authorized")]
    assert used == 14, "stops at the PUBACK with properties, read the slow way"
    found, used = packets.split(buffer[14:], limit=1)
    assert found == [(0x40, b"\x00\x04\x00\x00")] and used == 6
    assert packets.pubacks(bytearray(b"\x40\x02\x00")) == ([], 0), "partial: left for later"


async def test_stopped_and_started_again_it_sends_only_after_the_new_connack() -> None:
    got: list[tuple[int, int]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_packet(reader)
        if n == 2:
            await asyncio.sleep(0.3)  # the new CONNACK comes late
        writer.write(CONNACK_V3)

        async def on_connection_n(_first: int, mid: int) -> None:
            got.append((n, mid))

        await acknowledge_publishes(reader, writer, on_connection_n)

    recorder = Recorder()
    async with broker(script) as port, connection(port, recorder) as conn:
        await wait_until_async(lambda: conn.connected, timeout_s=5, what="CONNACK")
        await conn.stop()
        assert not conn.connected
        conn.start()
        mid = conn.publish("gw/m1/window", b"after the restart")
        await wait_until_async(lambda: recorder.acks, timeout_s=5, what="its PUBACK")
    assert got == [(2, mid)] and recorder.acks == [mid]
