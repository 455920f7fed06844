"""`make demo`: the simulated compressor, a local Mosquitto, the agent, its events scrolling
by, and the fleet side (PostgreSQL, `edge-fleet ingest` and the fleet view in a browser).

Every port is chosen free at start, so the demo never collides with a broker or
PLC already on this machine. Ctrl-C stops all of it, the agent last-window
included: the children run in their own sessions, so the terminal's Ctrl-C
reaches only this script, which stops the agent first (its last window still
reaches tail), then tail, the simulator and the broker. Logs go to .demo/.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from agent.testing import (
    Mosquitto,
    console_script,
    free_tcp_port,
    port_open,
    start_plc_sim,
    stop_process,
    wait_until,
)
from agent.testing.postgres import Postgres, postgres_bin_dir
from fleet.auth import hash_password

ROOT = Path(__file__).resolve().parents[1]
SPEED = 1
"""Simulated seconds per second: real time, so that energy and demand are the machine's own."""
FAULT_ONSET_S = 30.0
"""Seconds of the demo before the cooler starts fouling: alarms follow about a minute later."""


FLEET_USER, FLEET_PASSWORD = "demo", "demo-password"
"""The fleet view's login in the demo (a real gateway's fleet has its own, hashed)."""


def start_fleet(stack: contextlib.ExitStack, work: Path, broker_port: int,
                processes: list[subprocess.Popen[str]]) -> str | None:
    """PostgreSQL, `edge-fleet ingest` and `edge-fleet serve`; the view's address (None
    without a PostgreSQL server on this machine)."""
    if postgres_bin_dir() is None:
        return None
    pg = stack.enter_context(Postgres())
    port = free_tcp_port()
    config = work / "fleet.yaml"
    config.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}, tls: false, client_id: demo-ingest}}\n"
        f'database: {{dsn: "{pg.dsn}"}}\n'
        f"serve: {{port: {port}, session_secret: {secrets.token_hex(32)}, "
        f'users: {{{FLEET_USER}: "{hash_password(FLEET_PASSWORD)}"}}}}\n')
    for command in ("ingest", "serve"):
        log = stack.enter_context((work / f"fleet-{command}.log").open("w"))
        processes.append(subprocess.Popen(
            [console_script("edge-fleet"), command, "-c", str(config)], stderr=log,
            stdout=subprocess.DEVNULL, text=True, start_new_session=True))
    wait_until(lambda: port_open("127.0.0.1", port) or processes[-1].poll() is not None,
               timeout_s=30, what="the fleet view listening")
    return f"http://127.0.0.1:{port}" if processes[-1].poll() is None else None


def main() -> int:
    work = ROOT / ".demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    processes: list[subprocess.Popen[str]] = []
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Mosquitto())
        sim_log = stack.enter_context(open(work / "plc-sim.log", "w"))
        agent_log = stack.enter_context(open(work / "agent.log", "w"))
        try:
            fleet = start_fleet(stack, work, broker.port, processes)
            sim, info = start_plc_sim("--scenario", "overheating", "--speed", str(SPEED),
                                      "--fault-onset-s", str(FAULT_ONSET_S * SPEED),
                                      stderr=sim_log)
            processes.append(sim)
            env = {
                **os.environ,
                "DEMO_MQTT_PORT": str(broker.port),
                "DEMO_MODBUS_PORT": str(info["port"]),
                "DEMO_STATE_DIR": str(work / "state"),
            }
            config = str(ROOT / "config" / "demo.yaml")
            agent = subprocess.Popen(
                [console_script("edge-agent"), "run", "-c", config],
                env=env, stderr=agent_log, text=True, start_new_session=True,
            )
            processes.append(agent)
            view = (f"fleet view: {fleet}/gateway/demo-gw/device/compressor-1?span=1h "
                    f"(log in as {FLEET_USER} / {FLEET_PASSWORD}): PostgreSQL fed by "
                    "`edge-fleet ingest`" if fleet else
                    "fleet view: not started (no PostgreSQL server here: `make postgresql`)")
            print(
                f"plc-sim: a screw compressor on Modbus TCP 127.0.0.1:{info['port']}; "
                f"its cooler starts fouling after {FAULT_ONSET_S:.0f} s\n"
                f"mosquitto: 127.0.0.1:{broker.port}\n"
                f"edge-agent: {config}, logs in {work / 'agent.log'}\n"
                f"{view}\n"
                "what arrives at the broker, as `edge-agent tail` shows it:\n"
                "  state    the machine going off / idle / running (from its power)\n"
                "  window   every 10 s, each tag's last value [min..max] and counter increase\n"
                "  energy   every minute, kWh and hours per state, starts, peak demand\n"
                "  anomaly  the discharge temperature leaving its learned normal, then\n"
                "  limit    passing 85 °C; heartbeat every 30 s\n"
                "Ctrl-C stops everything\n",
                flush=True,
            )
            tail = subprocess.Popen(
                [console_script("edge-agent"), "tail", "-c", config], env=env, text=True,
                start_new_session=True,
            )
            try:
                return tail.wait()
            except KeyboardInterrupt:
                # The agent first: it closes its open window and sends it while tail still prints.
                stop_process(agent)
                stop_process(tail, timeout_s=1.0)
                return 0
        finally:
            for process in reversed(processes):
                stop_process(process)
            print("demo stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
