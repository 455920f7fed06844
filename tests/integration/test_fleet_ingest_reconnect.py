"""The ingest's acknowledgements never cross connections (real Mosquitto and PostgreSQL).

Messages received on a connection that then broke wait for their batch's commit; the
broker sends them again on the next connection (same packet ids, the session resumed).
When the first batch finally commits, its handlers must not acknowledge on the new
connection: only the copies received there are acknowledged, once each. A proxy between
the ingest and the broker counts the MQTT packets of each connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.events import Event, encode
from agent.testing import Mosquitto, TcpProxy
from agent.testing.postgres import Postgres, postgres_bin_dir
from fleet.config import load_fleet_config
from fleet.ingest import Ingest

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None,
                                reason="PostgreSQL's server is not installed")

PUBLISH, PUBACK = 3, 4


class CountingProxy(TcpProxy):
    """A TCP proxy counting, per connection and direction, the MQTT packets by type (and
    the PUBACKs by packet id); `cut` breaks the current connection, new ones are accepted."""

    def __init__(self, broker_port: int) -> None:
        self.packets: defaultdict[int, dict[str, Counter[int]]] = defaultdict(
            lambda: {"up": Counter(), "down": Counter()})
        self.pubacks: defaultdict[int, Counter[int]] = defaultdict(Counter)
        self._partial: dict[tuple[int, bool], bytes] = {}
        super().__init__(broker_port)

    def passes(self, index: int, from_client: bool, data: bytes) -> bool:
        key = (index, from_client)
        self._partial[key] = self._count(self._partial.get(key, b"") + data, index,
                                         "up" if from_client else "down")
        return True

    def _count(self, buffer: bytes, index: int, way: str) -> bytes:
        """Whole packets out of `buffer` counted; what is left of a partial one returned."""
        while len(buffer) >= 2:
            length, shift, at = 0, 0, 1
            while at < len(buffer):
                byte = buffer[at]
                length |= (byte & 0x7F) << shift
                shift, at = shift + 7, at + 1
                if not byte & 0x80:
                    break
            else:
                return buffer
            if len(buffer) < at + length:
                return buffer
            kind = buffer[0] >> 4
            self.packets[index][way][kind] += 1
            if way == "up" and kind == PUBACK:
                self.pubacks[index][int.from_bytes(buffer[at:at + 2], "big")] += 1
            buffer = buffer[at + length:]
        return buffer


def publish(port: int, seqs: range) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish("lab/gw-r/m/change", encode(
        Event("change", "m", 1_796_000_000 * 10**9 + seq, {"tags": {}}), gateway="gw-r",
        seq=seq), qos=1) for seq in seqs]
    for info in infos:
        info.wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def test_a_message_of_a_broken_connection_is_not_acknowledged_on_the_next(
    tmp_path: Path,
) -> None:
    with Postgres() as pg, Mosquitto() as broker:
        proxy = CountingProxy(broker.port)
        path = tmp_path / "fleet.yaml"
        path.write_text(f"mqtt: {{host: 127.0.0.1, port: {proxy.port}, tls: false, "
                        f"client_id: ingest-r}}\ndatabase: {{dsn: \"{pg.dsn}\"}}\n"
                        "ingest: {batch_max_events: 100, batch_max_s: 0.05}\n")
        try:
            async with Ingest(load_fleet_config(path)) as ingest:
                run = asyncio.create_task(ingest.run())
                await asyncio.wait_for(ingest.subscribed.wait(), 30)
                await asyncio.to_thread(pg.stop, "immediate")  # no commit, so no PUBACK
                await asyncio.to_thread(publish, broker.port, range(1, 21))
                await until(lambda: proxy.packets[0]["down"][PUBLISH] == 20,
                            "20 messages received on the first connection")
                proxy.cut()
                await until(lambda: proxy.packets[1]["down"][PUBLISH] >= 20,
                            "the 20 sent again on the second connection")
                await asyncio.to_thread(pg.start)
                await until(lambda: (ingest.totals.stored, ingest.totals.duplicates) == (20, 20),
                            "both batches committed: 20 stored, their copies counted")
                await asyncio.to_thread(publish, broker.port, range(21, 22))  # a last one
                await until(lambda: ingest.totals.stored == 21, "the last one stored")
                await until(lambda: sum(proxy.pubacks[1].values()) >= 21,
                            "the copies and the last one acknowledged")
                run.cancel()
        finally:
            proxy.close()
    assert proxy.packets[0]["up"][PUBACK] == 0, "nothing acknowledged before the commit"
    # In order on one stream: a PUBACK of the first batch would come before the last one's.
    assert sum(proxy.pubacks[1].values()) == 21, proxy.pubacks[1]
    assert set(proxy.pubacks[1].values()) == {1}, "each packet id acknowledged once"
