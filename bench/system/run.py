"""The system benchmark: the whole agent on a reference workload and a heavy one, its CPU,
memory, messages, disk writes and change latency, beside ThingsBoard IoT Gateway reading
the same Modbus devices in the same run.

    python bench/system/run.py                      # both workloads, both systems (~8 min)
    python bench/system/run.py --output FILE        # also write the markdown report there
    python bench/system/run.py --workloads reference --duration 30
    python bench/system/run.py --no-thingsboard     # the agent only
    python bench/system/run.py --quick              # a smoke run: tiny workload, agent only (~25 s)

Each system runs alone, one after the other, against the same simulators and the same
Mosquitto, for `--duration` seconds after it is warm; only its own process (and its
children) is measured. bench/README.md says what each number means. A benchmark, not a
test: nothing here asserts a speed or a budget.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import measure
import thingsboard
from measure import Arrival, BrokerRecorder, StampSeen, WindowSeen
from report import (
    OutageResult,
    PlainBroker,
    SystemResult,
    git_head,
    load_average,
    machine_line,
    memory_baselines,
    memory_section,
    plain_broker_section,
    workload_section,
)
from workload import WORKLOADS, OpcUaFleet, ServerKind, Workload

from agent.store import read_stats
from agent.testing import Mosquitto, console_script, free_tcp_port, stop_process, wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TB_VENV = ROOT / "bench" / ".cache" / "tb-venv"
GATEWAY, SITE = "bench-gw", "bench"
WINDOW_S = 10.0
QUICK_WINDOW_S = 1.0
"""`aggregate.window_s` of a quick run: its span is shorter than 10 s, and the OPC UA samples
the agent ingested are counted from its `window` events."""
QUICK_OUTAGE_COMMIT_S = 1.0
"""`store.outage_commit_interval_s` of a quick run: several commits in its short outage."""


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the simulators ---------------------------------------------------------------------------


class Simulator:
    """One simulator process (one per server kind of the workload), its ports and its count of
    samples served."""

    def __init__(self, server: ServerKind, log_path: Path) -> None:
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / server.simulator), *server.simulator_args()],
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
            )
        self.server = server
        self._lines: queue.Queue[dict[str, object]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # 20 asyncua servers take tens of seconds to start (each its own address space).
        listening = self._next("listening", timeout_s=180)
        self.ports = [int(port) for port in listening["ports"]]  # type: ignore[attr-defined]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self._lines.put(json.loads(line))

    def _next(self, event: str, timeout_s: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the simulator said no {event!r} within {timeout_s} s") from None
            if line.get("event") == event:
                return line

    def samples_served(self) -> float:
        """Modbus: tag values read by any client; OPC UA: value changes made, so far."""
        self.process.send_signal(signal.SIGUSR1)
        return float(self._next("served", timeout_s=10)["samples"])  # type: ignore[arg-type]

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)


@contextmanager
def simulators(workload: Workload, work: Path) -> Iterator[list[Simulator]]:
    started: list[Simulator] = []
    try:
        for number, server in enumerate(workload.servers):
            started.append(Simulator(server, work / f"simulator-{number}.log"))
        yield started
    finally:
        for simulator in started:
            simulator.stop()


# --- one system over one span -------------------------------------------------------------------

@dataclass(frozen=True)
class System:
    """How to recognise what a system publishes, the devices and the stamps in it, and the
    protocols it reads."""

    name: str
    publishes: Callable[[str], bool]
    stamps: Callable[[Arrival], list[StampSeen]]
    devices_in: Callable[[Arrival], list[str]]
    reads: frozenset[str]


AGENT = System("edge-agent", lambda topic: topic.startswith(f"{SITE}/{GATEWAY}/"),
               measure.agent_stamps,
               lambda a: [device] if (device := measure.agent_device(a)) else [],
               frozenset({"Modbus TCP", "OPC UA"}))
THINGSBOARD = System(
    "ThingsBoard IoT Gateway",
    lambda topic: topic.startswith("v1/") and not topic.startswith("v1/devices/me/rpc/response"),
    measure.thingsboard_stamps,
    lambda a: [device for device, _ in measure.thingsboard_values(a)],
    frozenset({"Modbus TCP", "OPC UA"}),
)


def measure_span(system: System, process: subprocess.Popen[bytes], recorder: BrokerRecorder,
                 sims: list[Simulator], devices: list[str], duration_s: float,
                 warmup_s: float) -> SystemResult:
    """Waits until every device in `devices` was read and published once, then `warmup_s`,
    then measures `duration_s`; the process is left running. Every simulator in `sims` is
    counted (what it served), whether or not the system reads it."""

    def all_devices_seen() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{system.name} exited with {process.returncode} before its "
                               "first values")
        seen = {d for a in recorder.matching(system.publishes) for d in system.devices_in(a)}
        return seen >= set(devices)

    wait_until(all_devices_seen, timeout_s=180, what=f"a value of every device from {system.name}")
    time.sleep(warmup_s)
    result = SystemResult(system.name, reads=system.reads)
    served_before = [sim.samples_served() for sim in sims]
    result.before = measure.sample_process(process.pid)
    start_ns, started = time.time_ns(), time.monotonic()
    time.sleep(duration_s)
    result.after = measure.sample_process(process.pid)
    end_ns, result.seconds = time.time_ns(), time.monotonic() - started
    for sim, before in zip(sims, served_before, strict=True):
        protocol = sim.server.protocol
        result.served[protocol] = (result.served.get(protocol, 0.0)
                                   + sim.samples_served() - before)
    if process.poll() is not None:
        raise RuntimeError(f"{system.name} exited with {process.returncode} during the span")
    result.start_ns, result.end_ns = start_ns, end_ns
    result.messages = recorder.between(start_ns, end_ns, system.publishes)
    # Every message since the start, so that a value's first arrival is known for sure.
    stamps = [s for a in recorder.matching(system.publishes) for s in system.stamps(a)]
    result.latency = measure.latencies(stamps, start_ns, end_ns)
    return result


# --- the two systems ----------------------------------------------------------------------------


def agent_config(sims: list[Simulator], host: str, port: int, work: Path, window_s: float,
                 store: str = "{}") -> Path:
    devices = "".join(sim.server.agent_devices(sim.ports) for sim in sims)
    config = work / "agent.yaml"
    config.write_text(
        f"gateway: {{id: {GATEWAY}, site: {SITE}, state_dir: {work / 'agent-state'}, clock: rtc}}\n"
        f"mqtt: {{host: {host}, port: {port}, tls: {{enabled: false}}}}\n"
        f"aggregate: {{window_s: {window_s}}}\n"
        f"store: {store}\n"
        f"devices:\n{devices}"
    )
    return config


def start_agent(config: Path, work: Path, numba_cache: Path) -> subprocess.Popen[bytes]:
    with open(work / "agent.log", "w") as log:
        return subprocess.Popen(
            [console_script("edge-agent"), "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=log,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "NUMBA_CACHE_DIR": str(numba_cache)},
        )


def warm_numba_cache(numba_cache: Path) -> subprocess.Popen[bytes]:
    """Start compiling the agent's kernels into `numba_cache`, as the first start after
    installation does: every measured start is then a later start, loading them from the
    cache. Returns the compiling process: wait for it before starting the agent."""
    return subprocess.Popen(
        [sys.executable, "-c", "from agent.detect.kernels import warm_up; warm_up()"],
        env={**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)})


def run_agent(sims: list[Simulator], broker: Mosquitto,
              recorder: BrokerRecorder, work: Path, numba_cache: Path, duration_s: float,
              warmup_s: float, window_s: float) -> SystemResult:
    process = start_agent(agent_config(sims, broker.host, broker.port, work, window_s), work,
                          numba_cache)
    try:
        result = measure_span(AGENT, process, recorder, sims, device_names(sims), duration_s,
                              warmup_s)
    finally:
        stop_process(process, timeout_s=20)
    opcua = opcua_devices(sims)
    if opcua:
        windows: list[WindowSeen] = [w for a in recorder.matching(AGENT.publishes)
                                     for w in measure.agent_windows(a)]
        result.opcua_ingested_per_s = measure.ingested_per_s(windows, opcua, result.start_ns,
                                                             result.end_ns)
    return result


def run_agent_outage(sims: list[Simulator], work: Path, numba_cache: Path, duration_s: float,
                     warmup_s: float, window_s: float, store: str) -> OutageResult:
    """The agent with nothing listening at its broker's address: everything it makes is
    stored. Measured once every device has a window stored, and `warmup_s` more."""
    work.mkdir()
    process = start_agent(agent_config(sims, "127.0.0.1", free_tcp_port(), work, window_s,
                                       store), work, numba_cache)
    database = work / "agent-state" / "events.sqlite"
    devices = device_names(sims)

    def every_device_stored() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with {process.returncode} (broker unreachable)")
        if not database.exists():
            return False
        stored = read_stats(database).by_kind.get("window", 0)
        return stored >= len(devices)

    try:
        wait_until(every_device_stored, timeout_s=180,
                   what="a window of every device stored (broker unreachable)")
        time.sleep(warmup_s)
        before, stored_before = measure.sample_process(process.pid), read_stats(database)
        started = time.monotonic()
        time.sleep(duration_s)
        after, stored_after = measure.sample_process(process.pid), read_stats(database)
        seconds = time.monotonic() - started
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with {process.returncode} during the outage")
    finally:
        stop_process(process, timeout_s=20)
    return OutageResult(seconds, after.write_bytes - before.write_bytes,
                        stored_after.bytes - stored_before.bytes,
                        stored_after.depth - stored_before.depth)


def device_names(sims: list[Simulator]) -> list[str]:
    return [name for sim in sims for name in sim.server.names()]


def thingsboard_config(sims: list[Simulator], broker: Mosquitto, directory: Path) -> Path:
    """ThingsBoard reads what the agent reads: its Modbus connector and one OPC UA connector
    per server."""
    connectors = [c for sim in sims for c in sim.server.thingsboard_connectors(sim.ports)]
    return thingsboard.write_config(directory, broker.host, broker.port, connectors)


def run_thingsboard(sims: list[Simulator], broker: Mosquitto, recorder: BrokerRecorder,
                    work: Path, duration_s: float, warmup_s: float) -> SystemResult:
    script = thingsboard.ensure_installed(TB_VENV)
    config_dir = thingsboard_config(sims, broker, work / "tb")
    with thingsboard.SessionLimitsResponder(broker.host, broker.port):
        process = thingsboard.start(script, config_dir, work / "tb.out")
        try:
            result = measure_span(THINGSBOARD, process, recorder, sims, device_names(sims),
                                  duration_s, warmup_s)
        finally:
            stop_process(process, timeout_s=20)
    opcua = opcua_devices(sims)
    if opcua:
        values = [v for a in recorder.between(result.start_ns, result.end_ns,
                                              THINGSBOARD.publishes)
                  for v in measure.thingsboard_values(a) if v[0] in opcua]
        result.opcua_ingested_per_s = sum(n for _, n in values) / result.seconds
    return result


def opcua_devices(sims: list[Simulator]) -> list[str]:
    return [name for sim in sims if isinstance(sim.server, OpcUaFleet)
            for name in sim.server.names()]


def thingsboard_on_plain_broker(sims: list[Simulator], broker: Mosquitto,
                                recorder: BrokerRecorder, work: Path,
                                seconds: float) -> PlainBroker:
    """The gateway against Mosquitto alone (nobody answers getSessionLimits): what it publishes."""
    script = thingsboard.ensure_installed(TB_VENV)
    config_dir = thingsboard_config(sims, broker, work / "tb-plain")
    start_ns = time.time_ns()
    process = thingsboard.start(script, config_dir, work / "tb-plain.out")
    try:
        time.sleep(seconds)
    finally:
        stop_process(process, timeout_s=20)
    published = Counter(a.topic for a in recorder.between(start_ns, time.time_ns(),
                                                          THINGSBOARD.publishes))
    return PlainBroker(seconds, published)

# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="reference,heavy",
                        help=f"comma-separated, of {', '.join(WORKLOADS)} (default "
                        "reference,heavy)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="measured seconds per system and workload (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after the first values before measuring (default 5)")
    parser.add_argument("--no-thingsboard", action="store_true",
                        help="the agent only (no ThingsBoard install, no comparison)")
    parser.add_argument("--plain-broker-s", type=float, default=15.0,
                        help="seconds ThingsBoard is left against a plain broker (0: skip)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the smoke workload, 5 s, agent only")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    window_s, outage_store = WINDOW_S, "{}"
    if args.quick:
        args.workloads, args.duration, args.warmup = "smoke", 5.0, 1.0
        args.no_thingsboard, window_s = True, QUICK_WINDOW_S
        outage_store = f"{{outage_commit_interval_s: {QUICK_OUTAGE_COMMIT_S}}}"
    chosen = [WORKLOADS[name] for name in args.workloads.split(",")]
    with_tb = not args.no_thingsboard

    started = time.monotonic()
    load_before = load_average()
    tb_version = ""
    if with_tb:
        thingsboard.ensure_installed(TB_VENV)
        tb_version = thingsboard.installed_version(TB_VENV)
    sections: list[str] = []
    plain: PlainBroker | None = None
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="system-bench-"))
    numba_cache = work / "numba-cache"
    try:
        # Compiling takes about 13 s: the baselines, the broker and the simulators start
        # meanwhile (nothing of them is measured before the agent runs).
        compiling = warm_numba_cache(numba_cache)
        memory = memory_baselines()
        with ExitStack() as stack:
            broker = stack.enter_context(Mosquitto())
            recorder = stack.enter_context(BrokerRecorder(broker.host, broker.port))
            for workload in chosen:
                directory = work / workload.name
                directory.mkdir()
                with simulators(workload, directory) as sims:
                    if compiling.wait() != 0:
                        raise RuntimeError("compiling the agent's kernels failed "
                                           f"({compiling.returncode})")
                    progress(f"{workload.name}: edge-agent, {args.duration:g} s")
                    agent = run_agent(sims, broker, recorder, directory,
                                      numba_cache, args.duration, args.warmup, window_s)
                    progress(f"{workload.name}: edge-agent, broker unreachable, "
                             f"{args.duration:g} s")
                    outage = run_agent_outage(sims, directory / "outage", numba_cache,
                                              args.duration, args.warmup, window_s,
                                              outage_store)
                    other = None
                    if with_tb:
                        progress(f"{workload.name}: ThingsBoard IoT Gateway, {args.duration:g} s")
                        try:
                            other = run_thingsboard(sims, broker, recorder, directory,
                                                    args.duration, args.warmup)
                        except (RuntimeError, TimeoutError) as error:
                            failures.append(f"{workload.name}: ThingsBoard IoT Gateway: {error}")
                            progress(failures[-1])
                        if plain is None and args.plain_broker_s > 0:
                            progress(f"ThingsBoard on a plain broker, {args.plain_broker_s:g} s")
                            plain = thingsboard_on_plain_broker(
                                sims, broker, recorder, directory, args.plain_broker_s)
                sections += workload_section(workload, agent, other, tb_version, outage)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    command = " ".join(["python", "bench/system/run.py", *sys.argv[1:]])
    lines = [
        "# System benchmark",
        "",
        (f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, git {git_head()}; "
        f"`{command}`."),
        machine_line(),
        (f"Load average (1, 5, 15 min) before the run: {load_before}; after: {load_average()} "
        "(the simulators and the broker run on the same cores)."),
        (f"Each system runs alone for {args.duration:g} s, measured after its first value from "
        f"every device and {args.warmup:g} s more; agent: `aggregate.window_s` {window_s:g}, "
        "the rest defaults, TLS off."),
        "",
        *sections,
        *(["## Not measured", "", *(f"- {failure}" for failure in failures), ""]
          if failures else []),
        *memory_section(memory),
        *(plain_broker_section(plain) if plain is not None else []),
        f"Whole run: {time.monotonic() - started:.0f} s.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
