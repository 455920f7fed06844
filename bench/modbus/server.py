"""The Modbus benchmark's device: plc-sim's Modbus TCP server serving the synthetic tag map.

    python bench/modbus/server.py TAGS

Runs in a process of its own so that its CPU time is not counted in the client's. Prints
one JSON line `{"event": "listening", "port": N}` on stdout once the port is bound, and
stops when its stdin closes (the benchmark closes it; so does the benchmark's death) or
on SIGTERM.

The values never change, so the words of each run are encoded once: plc-sim re-encodes
every run of a table on each access, which for a 1,000-tag map would make the server,
not the client, the slow end of every request.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tagmap import SyntheticTag, synthetic_tags

from plc_sim.logs import configure_logging
from plc_sim.modbus_server import ModbusSimServer, ServedMachine
from plc_sim.registers import RegisterSpec, Table, WordRun


def register_map(tags: list[SyntheticTag]) -> tuple[RegisterSpec, ...]:
    # plc-sim has no int32 register type: the same two words are a uint32 of the same bits.
    return tuple(
        RegisterSpec(t.name, t.table, t.address, "uint32" if t.type == "int32" else t.type)
        for t in tags
    )


def raw_values(tags: list[SyntheticTag]) -> dict[str, float]:
    return {t.name: (int(t.value) & 0xFFFF_FFFF if t.type == "int32" else t.value) for t in tags}


class StaticMachine(ServedMachine):
    """A ServedMachine whose values never change: each run's words are encoded once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._words: dict[Table, list[tuple[WordRun, list[int]]]] = {}

    def current_words(self, table: Table) -> list[tuple[WordRun, list[int]]]:
        if table not in self._words:
            self._words[table] = super().current_words(table)
        return self._words[table]


async def serve(count: int) -> None:
    tags = synthetic_tags(count)
    values = raw_values(tags)
    machine = StaticMachine(
        scenario=f"bench-{count}-tags", register_map=register_map(tags),
        advance=lambda _s: None, raw_values=lambda: values, trace_record=dict,
    )
    server = ModbusSimServer(machine, host="127.0.0.1", port=0)
    port = await server.start()
    print(json.dumps({"event": "listening", "port": port, "tags": count}), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    eof = asyncio.ensure_future(stdin.read())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({eof, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (eof, stopped):
        task.cancel()
    await server.stop()


def main() -> int:
    configure_logging("warning")
    asyncio.run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
