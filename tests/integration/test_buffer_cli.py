"""`edge-agent buffer stats|export` on a real store file, also while the agent holds it open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.events import Event
from agent.store import EventStore

CONFIG = """
gateway: {{id: gw-1, state_dir: {state}}}
mqtt: {{host: 127.0.0.1, tls: {{enabled: false}}}}
devices:
  - name: m1
    protocol: modbus-tcp
    host: 127.0.0.1
    tags: [{{name: a, address: 0, type: uint16}}]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return path


async def test_stats_and_export_while_the_store_is_open(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = await EventStore.open(tmp_path / "state" / "events.sqlite", "gw-1")
    store.put([Event("window", "m1", 10**18 + i, {"i": i}) for i in range(3)])
    store.put([Event("device_health", "m1", 10**18 + 5, {"status": "down"})])
    await store.flush()
    try:
        assert main(["buffer", "stats", "-c", str(config), "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["depth"] == 4 and stats["last_seq"] == 4
        assert stats["by_kind"] == {"window": 3, "device_health": 1}
        assert main(["buffer", "stats", "-c", str(config)]) == 0
        text = capsys.readouterr().out
        assert "events      4 waiting" in text and "window" in text

        out = tmp_path / "backlog.jsonl"
        assert main(["buffer", "export", "-c", str(config), "-o", str(out)]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["seq"] for r in lines] == [1, 2, 3, 4]
        # The wire's own keys, as the msgpack payload and `tail --json` have them.
        assert set(lines[0]) == {"topic_kind", "v", "gw", "seq", "id", "kind", "dev", "t", "data"}
        assert lines[0]["data"] == {"i": 0} and lines[3]["kind"] == "device_health"
        assert "exported 4 events" in capsys.readouterr().err
    finally:
        await store.close()


def test_no_store_yet_is_a_clear_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["buffer", "stats", "-c", str(config)]) == 1
    assert "no event store at" in capsys.readouterr().err
