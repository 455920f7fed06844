"""Start-up benchmark: from `exec` of `edge-agent run` to systemd's READY=1, cold and warm.

READY=1 is what `Type=notify` waits for: the store is open, every device task and the
uplink are started. Measured over a real AF_UNIX datagram socket given as NOTIFY_SOCKET,
exactly as systemd does it: with the kernels compiled ahead of time (what `make` and the
packages install: numba is not loaded), and with numba's JIT as the fallback
(EDGE_AGENT_KERNELS=jit), its kernel cache in the state directory either empty (kernels
compile) or warm. Baselines from the same run: the bare interpreter, and importing the
agent's runtime.

    python bench/startup/run.py                 # 7 starts of each kind, report on stdout
    python bench/startup/run.py --output FILE   # also write the markdown report there

A benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.testing import Mosquitto, console_script, describe_machine, free_tcp_port

CONFIG = """
gateway: {{id: bench-gw, site: bench, state_dir: {state}, clock: rtc}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}, tls: {{enabled: false}}}}
devices:
  - name: meter
    protocol: modbus-tcp
    host: 127.0.0.1
    port: {modbus_port}
    tags:
      - {{name: power_w, table: input, address: 0, type: float32, unit: W}}
      - {{name: energy_kwh, table: input, address: 4, type: uint32, scale: 0.001, unit: kWh}}
"""


def time_to_ready(config: Path, env: dict[str, str], timeout_s: float = 120.0) -> float:
    """Seconds from starting `edge-agent run` to its READY=1 datagram; then stops it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(timeout_s)
        started = time.perf_counter()
        agent = subprocess.Popen(
            [console_script("edge-agent"), "run", "-c", str(config)],
            env={**env, "NOTIFY_SOCKET": path}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                message = sock.recv(4096).decode()
                if "READY=1" in message.splitlines():
                    return time.perf_counter() - started
        finally:
            agent.terminate()
            agent.wait(timeout=30)
            sock.close()


def time_command(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="starts of each kind (default 7)")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    python = sys.executable
    try:
        with Mosquitto() as broker:
            config = work / "config.yaml"
            state = work / "state"
            config.write_text(CONFIG.format(state=state, mqtt_port=broker.port,
                                            modbus_port=free_tcp_port()))
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            jit = {**env, "EDGE_AGENT_KERNELS": "jit"}
            cold = time_to_ready(config, jit)  # empty state directory: kernels compile
            warm = [time_to_ready(config, jit) for _ in range(args.runs)]
            aot = [time_to_ready(config, env) for _ in range(args.runs)]
            bare = [time_command([python, "-c", "pass"]) for _ in range(args.runs)]
            imports = [time_command([python, "-c", "import agent.supervisor.runtime, agent.detect"])
                       for _ in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(aot)
    rows = [
        ("`edge-agent run` to READY=1, kernels compiled ahead of time (as installed)",
         base, max(aot)),
        ("`edge-agent run` to READY=1, numba JIT fallback, warm kernel cache",
         statistics.median(warm), max(warm)),
        ("`edge-agent run` to READY=1, numba JIT fallback, empty kernel cache", cold, cold),
        ("baseline: `python -c 'import agent.supervisor.runtime, agent.detect'`",
         statistics.median(imports), max(imports)),
        ("baseline: `python -c pass`", statistics.median(bare), max(bare)),
    ]
    lines = [
        "# Start-up benchmark",
        "",
        (
            f"Machine: {describe_machine()}; "
            f"{args.runs} starts of each kind, medians; every ratio is to the first line of the "
            "same run."
        ),
        "",
        "| what | median s | max s | ratio to the first line |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {median:.2f} | {worst:.2f} | {median / base:.2f} |"
          for name, median, worst in rows),
        "",
        "Target (issue 7): READY within 3 s with a warm cache on this machine.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
