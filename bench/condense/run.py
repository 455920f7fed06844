"""The condensation benchmark: what the agent forwards for a machine, against its raw samples.

    python bench/condense/run.py                 # 30 machine minutes (90 s)
    python bench/condense/run.py --seconds 5     # a smoke run

The shipped profile `config/compressor-monitoring.yaml` (9 tags polled every 2 s, 60 s
windows, the device shared `events` with its power `aggregates`, its rules and machine)
against firmware-sim's healthy compressor, both 20 times faster than the machine (every
`_s` of the profile divided by 20, as tests/e2e/test_fault_scenarios.py does), through a
real Mosquitto. The baseline, measured in the same run: every poll the agent made, encoded
the same way as one `samples` event of the agent's own encoder (`agent.events.encode`)
holding that poll's values (what a gateway forwarding each poll would send). The forwarded
bytes are every payload of the device's events the broker delivered (the gateway's own
heartbeats left out, as in tests/e2e/test_machines.py, whose reference configuration polls
20 times a second). Prints a markdown report; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "firmware-sim"), str(ROOT / "tests" / "e2e")]

from ruamel.yaml import YAML
from support import AgentProcess, RawCollector, Received, scaled_config

from agent.detect.kernels.source import kernel_cache_dir
from agent.events import SAMPLES, Event, encode
from agent.testing import Mosquitto, start_plc_sim, stop_process

SPEED = 20.0
PROFILE = ROOT / "config" / "compressor-monitoring.yaml"
DEVICE = "compressor-1"


def agent_config(directory: Path, broker: Mosquitto, modbus_port: int) -> Path:
    profile = YAML(typ="safe").load(PROFILE)
    [device], rules, [machine] = profile["devices"], profile["detectors"], profile["machines"]
    device = {**copy.deepcopy(device), "host": "127.0.0.1", "port": modbus_port,
              "timeout_s": 0.5}
    return scaled_config(directory, broker, SPEED, gateway="gw-bench",
                         aggregate=profile["aggregate"], devices=[device], detectors=rules,
                         machines=[machine])


def poll_bytes(row: dict[str, Any], tags: list[str], seq: int) -> int:
    """One poll's values as one `samples` event, encoded as the agent encodes events."""
    values = {tag: [float(row.get(tag, 0.0))] for tag in tags}
    event = Event(SAMPLES, DEVICE, row["time_ns"],
                  {"t0_ns": row["time_ns"], "dt_ms": [0], "tags": values})
    return len(encode(event, gateway="gw-bench", seq=seq))


def measure(seconds: float) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(polls, raw bytes, forwarded bytes by kind: (events, bytes))."""
    profile = YAML(typ="safe").load(PROFILE)
    tags = [tag["name"] for tag in profile["devices"][0]["tags"]]
    with tempfile.TemporaryDirectory(prefix="condense-") as scratch, Mosquitto() as broker:
        directory = Path(scratch)
        trace = directory / "trace.jsonl"
        with open(directory / "plc-sim.log", "w") as log:
            sim, info = start_plc_sim("--scenario", "compressor", "--speed", str(SPEED),
                                      "--seed", "1", "--trace", str(trace), stderr=log)
        try:
            config = agent_config(directory, broker, int(info["port"]))
            cache = kernel_cache_dir(ROOT / ".numba-cache")
            with RawCollector(broker.host, broker.port, "lab/gw-bench/#") as cloud, \
                    AgentProcess(config, directory / "agent.log", cache) as agent:
                time.sleep(seconds)
                if agent.terminate() != 0:
                    raise SystemExit(f"the agent failed: {agent.log()[-3:]}")
                time.sleep(1.0)  # the last events of the shutdown reach the subscriber
                messages: list[Received] = cloud.snapshot()
        finally:
            stop_process(sim)
        rows = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    ours = [m for m in messages if m.fields.get("dev") == DEVICE]
    kinds: dict[str, tuple[int, int]] = {}
    for m in ours:
        count, size = kinds.get(m.fields["kind"], (0, 0))
        kinds[m.fields["kind"]] = (count + 1, size + len(m.payload))
    power = [m.fields["data"]["tags"]["active_power_w"] for m in ours
             if m.fields["kind"] == "window"]
    polls = sum(t["n"] + t["bad"] for t in power)
    raw = sum(poll_bytes(rows[min(len(rows) - 1, i * len(rows) // max(polls, 1))], tags, i + 1)
              for i in range(polls))
    return polls, raw, kinds


def report(seconds: float) -> str:
    polls, raw, kinds = measure(seconds)
    forwarded = sum(size for _, size in kinds.values())
    lines = [
        "# Condensation benchmark", "",
        (f"{platform.machine()}, Python {platform.python_version()}; `{PROFILE.relative_to(ROOT)}` "
        f"against the simulated compressor, {seconds * SPEED / 60:.0f} machine minutes "
        f"({seconds:g} s at {SPEED:g}x)."), "",
        "| what | bytes | vs the raw samples |",
        "|---|---:|---:|",
        f"| baseline: every poll as one `samples` event ({polls} polls) | {raw:,} | 1.00 |",
        (f"| forwarded: every event of the device | {forwarded:,} | "
        f"{forwarded / raw if raw else float('nan'):.3f} ({raw / max(forwarded, 1):.1f}x fewer) |"),
    ]
    for kind, (count, size) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| of which `{kind}`: {count} events, {size / count:.0f} B each | "
                     f"{size:,} | {size / raw if raw else float('nan'):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0,
                        help="wall seconds to run (x20 machine time; default 90)")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    text = report(args.seconds)
    print(text, end="")
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
