"""`edge-agent buffer stats|export` on a real store file, also while the agent holds it open."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
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


_INTERRUPTED_COMMIT = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=PERSIST")
db.execute("PRAGMA cache_size=1")
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE outbox SET payload = zeroblob(length(payload))")
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_a_commit_a_crash_interrupted_is_a_clear_error_until_the_agent_starts(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash mid-commit leaves a hot journal that a read-only reader may not roll back:
    `buffer stats` says so and what to do; the agent's next start rolls it back."""
    path = tmp_path / "state" / "events.sqlite"
    store = await EventStore.open(path, "gw-1")
    store.put([Event("window", "m1", 10**18 + i, {"i": "x" * 500}) for i in range(200)])
    await store.close()
    crash = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _INTERRUPTED_COMMIT, str(path)], check=False)
    assert crash.returncode == -signal.SIGKILL
    assert main(["buffer", "stats", "-c", str(config)]) != 0
    err = capsys.readouterr().err
    assert "holds a commit that a crash or power cut interrupted" in err, err
    assert "systemctl start edge-agent" in err
    store = await EventStore.open(path, "gw-1")
    assert await store.depth() == 200
    await store.close()
    assert main(["buffer", "stats", "-c", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["depth"] == 200
