"""`make demo`: the simulated compressor, a local Mosquitto, the agent, and its events scrolling by.

Every port is chosen free at start, so the demo never collides with a broker or
PLC already on this machine. Ctrl-C stops all of it, the agent last-window
included: the children run in their own sessions, so the terminal's Ctrl-C
reaches only this script, which stops the agent first (its last window still
reaches tail), then tail, the simulator and the broker. Logs go to .demo/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from agent.testing import Mosquitto, console_script, start_plc_sim, stop_process

ROOT = Path(__file__).resolve().parents[1]
SPEED = 1
"""Simulated seconds per second: real time, so that energy and demand are the machine's own."""
FAULT_ONSET_S = 30.0
"""Seconds of the demo before the cooler starts fouling: alarms follow about a minute later."""


def main() -> int:
    work = ROOT / ".demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    processes: list[subprocess.Popen[str]] = []
    with Mosquitto() as broker, open(work / "plc-sim.log", "w") as sim_log, \
            open(work / "agent.log", "w") as agent_log:
        try:
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
            print(
                f"plc-sim: a screw compressor on Modbus TCP 127.0.0.1:{info['port']} "
                f"; its cooler starts fouling after {FAULT_ONSET_S:.0f} s\n"
                f"mosquitto: 127.0.0.1:{broker.port}\n"
                f"edge-agent: {config}, logs in {work / 'agent.log'}\n"
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


if __name__ == "__main__":
    raise SystemExit(main())
