"""The system benchmark: the whole agent on a reference workload and a heavy one, its CPU,
memory, messages, disk writes and change latency, beside ThingsBoard IoT Gateway reading
the same Modbus devices in the same run.

    python bench/system/run.py                      # both workloads, both systems (~8 min)
    python bench/system/run.py --output FILE        # also write the markdown report there
    python bench/system/run.py --workloads reference --duration 30
    python bench/system/run.py --no-thingsboard     # the agent only
    python bench/system/run.py --quick              # a smoke run: tiny workload, agent only

Each system runs alone, one after the other, against the same simulators and the same
Mosquitto, for `--duration` seconds after it is warm; only its own process (and its
children) is measured. bench/README.md says what each number means. A benchmark, not a
test: nothing here asserts a speed or a budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from dataclasses import dataclass, field
from pathlib import Path

import measure
import thingsboard
from measure import Arrival, BrokerRecorder, Latencies, ProcessSample, StampSeen
from workload import WORKLOADS, ServerKind, Workload

from agent.testing import Mosquitto, console_script, stop_process, wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TB_VENV = ROOT / "bench" / ".cache" / "tb-venv"
GATEWAY, SITE = "bench-gw", "bench"
WINDOW_S = 10.0
BUDGET_CPU_PERCENT, BUDGET_RSS_MB = 5.0, 150.0


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
        listening = self._next("listening", timeout_s=60)
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


@dataclass
class SystemResult:
    name: str
    seconds: float = 0.0
    samples: float = 0.0
    before: ProcessSample | None = None
    after: ProcessSample | None = None
    messages: list[Arrival] = field(default_factory=list)
    latency: Latencies = field(default_factory=lambda: Latencies([], []))
    note: str = ""

    @property
    def cpu_s(self) -> float:
        assert self.before and self.after
        return self.after.cpu_s - self.before.cpu_s

    @property
    def disk_bytes(self) -> int:
        assert self.before and self.after
        return self.after.write_bytes - self.before.write_bytes


@dataclass(frozen=True)
class System:
    """How to recognise what a system publishes, and the stamps in it."""

    name: str
    publishes: Callable[[str], bool]
    stamps: Callable[[Arrival], list[StampSeen]]


AGENT = System("edge-agent", lambda topic: topic.startswith(f"{SITE}/{GATEWAY}/"),
               measure.agent_stamps)
THINGSBOARD = System(
    "ThingsBoard IoT Gateway",
    lambda topic: topic.startswith("v1/") and not topic.startswith("v1/devices/me/rpc/response"),
    measure.thingsboard_stamps,
)


def measure_span(system: System, process: subprocess.Popen[bytes], recorder: BrokerRecorder,
                 sims: list[Simulator], devices: list[str], duration_s: float,
                 warmup_s: float) -> SystemResult:
    """Waits until every device was read and published once, then `warmup_s`, then measures
    `duration_s`; the process is left running."""

    def all_devices_seen() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{system.name} exited with {process.returncode} before its "
                               "first values")
        seen = {s.device for a in recorder.matching(system.publishes) for s in system.stamps(a)}
        return seen >= set(devices)

    wait_until(all_devices_seen, timeout_s=180, what=f"a value of every device from {system.name}")
    time.sleep(warmup_s)
    result = SystemResult(system.name)
    served_before = sum(sim.samples_served() for sim in sims)
    result.before = measure.sample_process(process.pid)
    start_ns, started = time.time_ns(), time.monotonic()
    time.sleep(duration_s)
    result.after = measure.sample_process(process.pid)
    end_ns, result.seconds = time.time_ns(), time.monotonic() - started
    result.samples = sum(sim.samples_served() for sim in sims) - served_before
    if process.poll() is not None:
        raise RuntimeError(f"{system.name} exited with {process.returncode} during the span")
    result.messages = recorder.between(start_ns, end_ns, system.publishes)
    # Every message since the start, so that a value's first arrival is known for sure.
    stamps = [s for a in recorder.matching(system.publishes) for s in system.stamps(a)]
    result.latency = measure.latencies(stamps, start_ns, end_ns)
    return result


# --- the two systems ----------------------------------------------------------------------------


def agent_config(sims: list[Simulator], broker: Mosquitto, work: Path) -> Path:
    devices = "".join(sim.server.agent_devices(sim.ports) for sim in sims)
    config = work / "agent.yaml"
    config.write_text(
        f"gateway: {{id: {GATEWAY}, site: {SITE}, state_dir: {work / 'agent-state'}, clock: rtc}}\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}, tls: {{enabled: false}}}}\n"
        f"aggregate: {{window_s: {WINDOW_S}}}\n"
        f"devices:\n{devices}"
    )
    return config


def warm_numba_cache(numba_cache: Path) -> None:
    """Compile the agent's kernels into `numba_cache`, as the first start after installation
    does: every measured start is then a later start, loading them from the cache."""
    subprocess.run([sys.executable, "-c", "from agent.detect.kernels import warm_up; warm_up()"],
                   env={**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)}, check=True)


def run_agent(sims: list[Simulator], broker: Mosquitto,
              recorder: BrokerRecorder, work: Path, numba_cache: Path, duration_s: float,
              warmup_s: float) -> SystemResult:
    config = agent_config(sims, broker, work)
    with open(work / "agent.log", "w") as log:
        process = subprocess.Popen(
            [console_script("edge-agent"), "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=log,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "NUMBA_CACHE_DIR": str(numba_cache)},
        )
    try:
        return measure_span(AGENT, process, recorder, sims, device_names(sims), duration_s,
                            warmup_s)
    finally:
        stop_process(process, timeout_s=20)


def device_names(sims: list[Simulator]) -> list[str]:
    return [name for sim in sims for name in sim.server.names()]


def thingsboard_config(sims: list[Simulator], broker: Mosquitto, directory: Path) -> Path:
    if len(sims) != 1:
        raise ValueError("ThingsBoard is compared on the Modbus part of a workload only")
    connector_type, connector = sims[0].server.thingsboard_connector(sims[0].ports)
    return thingsboard.write_config(directory, broker.host, broker.port, connector_type,
                                    connector)


def run_thingsboard(sims: list[Simulator], broker: Mosquitto, recorder: BrokerRecorder,
                    work: Path, duration_s: float, warmup_s: float) -> SystemResult:
    script = thingsboard.ensure_installed(TB_VENV)
    config_dir = thingsboard_config(sims, broker, work / "tb")
    with thingsboard.SessionLimitsResponder(broker.host, broker.port):
        process = thingsboard.start(script, config_dir, work / "tb.out")
        try:
            return measure_span(THINGSBOARD, process, recorder, sims, device_names(sims),
                                duration_s, warmup_s)
        finally:
            stop_process(process, timeout_s=20)


@dataclass(frozen=True)
class PlainBroker:
    seconds: float
    published: Counter[str]


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


# --- the report --------------------------------------------------------------------------------


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def number(value: float) -> str:
    return f"{value:,.0f}"


def ms_pair(values: list[float], out_of: str = "") -> str:
    p50, p99 = measure.percentile(values, 0.5), measure.percentile(values, 0.99)
    if p50 is None or p99 is None:
        return f"n/a (n=0{out_of})"
    return f"{p50:,.0f} / {p99:,.0f} (n={len(values):,}{out_of})"


def ratio(other: float | None, agent: float | None) -> str:
    if other is None or agent is None or agent == 0:
        return "n/a"
    value = other / agent
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def rows(result: SystemResult, workload: Workload) -> list[tuple[str, str, float | None]]:
    """(measure, shown value, number for the ratio) for one system."""
    expected_samples_per_s = workload.samples_per_s
    changes_made = sum(server.devices * result.seconds / server.change_period_s
                       for server in workload.servers)
    assert result.before and result.after
    span = result.seconds
    samples = result.samples
    payload = sum(len(a.payload) for a in result.messages)
    cpu_per_k = result.cpu_s / samples * 1000 if samples else None
    return [
        (f"samples read/s (workload: {number(expected_samples_per_s)})",
         number(samples / span), samples / span),
        ("CPU s per 1,000 samples",
         "n/a" if cpu_per_k is None else f"{cpu_per_k:.4f}", cpu_per_k),
        ("CPU, % of one core", f"{100 * result.cpu_s / span:.1f}", result.cpu_s / span),
        ("peak RSS, MiB (VmHWM)", mib(result.after.peak_rss_kb), result.after.peak_rss_kb),
        ("RSS at the end of the span, MiB", mib(result.after.rss_kb), result.after.rss_kb),
        ("processes measured", str(result.after.processes), None),
        ("MQTT messages sent (per s)",
         f"{len(result.messages):,} ({len(result.messages) / span:,.1f})", len(result.messages)),
        ("MQTT payload bytes sent (per s)", f"{payload:,} ({payload / span:,.0f})", payload),
        ("bytes written to disk, `write_bytes` (per s)",
         f"{result.disk_bytes:,} ({result.disk_bytes / span:,.0f})", result.disk_bytes or None),
        ("value change -> broker, p50 / p99 ms",
         ms_pair(result.latency.change_to_broker_ms, f", about {changes_made:,.0f} changes made"),
         measure.percentile(result.latency.change_to_broker_ms, 0.5)),
        ("message's own timestamp -> broker, p50 / p99 ms",
         ms_pair(result.latency.timestamp_to_broker_ms),
         measure.percentile(result.latency.timestamp_to_broker_ms, 0.5)),
    ]


def workload_section(workload: Workload, agent: SystemResult, other: SystemResult | None,
                     tb_version: str) -> list[str]:
    agent_rows = rows(agent, workload)
    header = f"## {workload.name}: {workload.describe()}"
    kinds = Counter(a.topic.rsplit("/", 1)[-1] for a in agent.messages)
    lines = [header, ""]
    if other is None:
        lines += ["| measure | edge-agent |", "|---|---:|",
                  *(f"| {name} | {shown} |" for name, shown, _ in agent_rows)]
    else:
        other_rows = rows(other, workload)
        lines += [(f"| measure | edge-agent | ThingsBoard IoT Gateway {tb_version} | ratio "
                  "(ThingsBoard / agent) |"), "|---|---:|---:|---:|"]
        for (name, shown, value), (_, other_shown, other_value) in zip(
                agent_rows, other_rows, strict=True):
            lines.append(f"| {name} | {shown} | {other_shown} | {ratio(other_value, value)} |")
    lines += ["", "edge-agent messages by kind: "
              + ", ".join(f"{kind} {count:,}" for kind, count in sorted(kinds.items())) + "."]
    if workload.name == "reference":
        cpu_percent = 100 * agent.cpu_s / agent.seconds
        assert agent.after
        rss_mb = agent.after.peak_rss_kb * 1024 / 1e6
        lines += ["", (f"Budget (issue 8, this machine): at most {BUDGET_CPU_PERCENT:g} % of one "
                  f"core and {BUDGET_RSS_MB:g} MB RSS. Measured: {cpu_percent:.1f} % "
                  f"({'within' if cpu_percent <= BUDGET_CPU_PERCENT else 'OVER'}), "
                  f"{rss_mb:.0f} MB peak ({'within' if rss_mb <= BUDGET_RSS_MB else 'OVER'}).")]
    return lines + [""]


def plain_broker_section(plain: PlainBroker) -> list[str]:
    published = ", ".join(f"`{topic}` x{count}" for topic, count in sorted(plain.published.items()))
    telemetry = plain.published.get("v1/gateway/telemetry", 0)
    return [
        "## ThingsBoard IoT Gateway against a plain Mosquitto",
        "",
        (f"Started against the same Mosquitto with nobody answering for {plain.seconds:g} s, it "
        f"published: {published or 'nothing'} ({telemetry} telemetry messages). After "
        "connecting, its MQTT client (tb-mqtt-client's `TBDeviceMqttClient`) sends the RPC "
        "`getSessionLimits` to `v1/devices/me/rpc/request/1` and counts itself connected "
        "(`TBClient.is_connected()` is `__is_connected and client.rate_limits_received`) only "
        "once ThingsBoard has answered on `v1/devices/me/rpc/response/1`; until then it polls "
        "the devices and publishes nothing. For the side-by-side run the benchmark answers "
        "that one RPC (`thingsboard.SessionLimitsResponder`, in the benchmark's process, not "
        f"measured) with no rate limits: `{json.dumps(thingsboard.SESSION_LIMITS)}`. Nothing "
        "else of a ThingsBoard server is needed: its telemetry, connect and attribute "
        "messages are plain publishes."),
        "",
    ]


MEMORY_BASELINES = (
    ("`python -c pass`", "pass"),
    ("`import numpy`", "import numpy"),
    ("`import numba`", "import numba"),
    ("`import agent.runtime, agent.detect` (what `edge-agent run` imports)",
     "import agent.runtime, agent.detect"),
)


def memory_baselines() -> list[tuple[str, int]]:
    """Peak RSS (kB) of a fresh interpreter that only imports, for scale."""
    probe = "; import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    return [(name, int(subprocess.run([sys.executable, "-c", code + probe], capture_output=True,
                                      text=True, check=True).stdout))
            for name, code in MEMORY_BASELINES]


def memory_section(memory: list[tuple[str, int]]) -> list[str]:
    return ["## Baselines: peak RSS of an interpreter that only imports", "",
            "| process | peak RSS, MiB (VmHWM) |", "|---|---:|",
            *(f"| {name} | {mib(kb)} |" for name, kb in memory), ""]


def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return (f"Machine: {os.cpu_count()} CPUs ({cpu}), {mem_kb / 2**20:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}.")


def git_head() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


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
    if args.quick:
        args.workloads, args.duration, args.warmup = "smoke", 5.0, 1.0
        args.no_thingsboard = True
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
        warm_numba_cache(numba_cache)
        memory = memory_baselines()
        with ExitStack() as stack:
            broker = stack.enter_context(Mosquitto())
            recorder = stack.enter_context(BrokerRecorder(broker.host, broker.port))
            for workload in chosen:
                directory = work / workload.name
                directory.mkdir()
                with simulators(workload, directory) as sims:
                    progress(f"{workload.name}: edge-agent, {args.duration:g} s")
                    agent = run_agent(sims, broker, recorder, directory,
                                      numba_cache, args.duration, args.warmup)
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
                sections += workload_section(workload, agent, other, tb_version)
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
        f"every device and {args.warmup:g} s more; agent: `aggregate.window_s` {WINDOW_S:g}, "
        "the rest defaults, TLS off; every device's `stamp_ms` changes every 2 s on average "
        "(report_on_change)."),
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
