"""Every injected machine fault is reported, and a healthy machine raises no alarm.

Six simulated compressors (`plc-sim --scenario ...`: five with a fault that starts at a
known time, labelled in their traces, and the fault-free `compressor`), one `edge-agent`
watching all six with the same rules: those of `config/compressor-monitoring.yaml`, the
configuration a service team ships for this compressor model. The simulators run
`SPEED` times faster than the machine; the configuration's times are divided by the same
factor, so the agent sees what it would see on the real machine, only sooner.
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from support import (
    ROOT,
    AgentProcess,
    RawCollector,
    Received,
    Sim,
    is_sentinel,
    publish_sentinel,
    scaled_config,
    warm_kernel_cache,
)

from agent.detect.learned_state import utc_ns
from agent.testing import Mosquitto, start_plc_sim, stop_process, wait_until

pytestmark = pytest.mark.e2e

PROFILE = ROOT / "config" / "compressor-monitoring.yaml"
SPEED = 20.0
"""Machine seconds per wall second: a poll every 2 machine seconds is one every 0.1 s."""
ONSET_S = 600.0
"""Machine seconds of healthy operation before each fault: after the agent has started
(1-3 wall seconds) and its rules have learned (`flow-vs-load`, the slowest, on 50 loaded
polls: 250 to 450 machine seconds, by the machine's spells of idling and standing)."""
REPORT_INTERVAL_S = 60.0
"""Machine seconds between energy reports (the profile's 15 min would not fit the test)."""
DEADLINE_AFTER_ONSET_S = 40.0
"""Wall seconds after the last onset by which every fault must have been reported (the
slowest, the overheating, takes about 110 machine seconds: 5.5 s)."""
HEALTHY = "compressor"
FAULTS = ("bearing-wear", "overheating", "clogged-filter", "stuck-sensor", "left-idling")
ALARMS = ("anomaly", "limit")


def fleet_config(tmp_path: Path, broker: Mosquitto, ports: dict[str, int]) -> Path:
    """The profile's device, rules and machine once per simulator, the device named after
    its scenario, times compressed by `SPEED`; written as JSON (which is YAML)."""
    profile = YAML(typ="safe").load(PROFILE)
    [device], rules, [machine] = profile["devices"], profile["detectors"], profile["machines"]
    machine = {**machine, "report_interval_s": REPORT_INTERVAL_S}
    devices, detectors, machines = [], [], []
    for name, port in ports.items():
        devices.append({**copy.deepcopy(device), "name": name, "host": "127.0.0.1",
                        "port": port, "timeout_s": 0.5})
        detectors += [{**copy.deepcopy(rule), "device": name} for rule in rules]
        machines.append({**machine, "name": name, "device": name})
    return scaled_config(tmp_path, broker, SPEED, aggregate=profile["aggregate"],
                         devices=devices, detectors=detectors, machines=machines)


@contextlib.contextmanager
def running_sims(directory: Path, scenarios: tuple[str, ...]) -> Iterator[dict[str, Sim]]:
    """One `plc-sim` per scenario, started in parallel so that their onsets are close."""
    logs = {name: open(directory / f"{name}.log", "w") for name in scenarios}  # noqa: SIM115

    def start(name: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        return start_plc_sim("--scenario", name, "--speed", str(SPEED), "--seed", "1",
                             "--fault-onset-s", str(ONSET_S),
                             "--trace", str(directory / f"{name}.trace.jsonl"),
                             stderr=logs[name])

    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {name: pool.submit(start, name) for name in scenarios}
    started = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for future in futures.values():
            future.result()  # raises the first failure to start
        yield {name: Sim(port=int(info["port"]), trace=directory / f"{name}.trace.jsonl")
               for name, (_, info) in started.items()}
    finally:
        codes = [stop_process(process) for process, _ in started.values()]
        for log in logs.values():
            log.close()
        assert codes == [0] * len(started)


def tags_of(message: Received) -> set[str]:
    return set(message.data.get("tags", {}))


def onset_reports(fault: str) -> Callable[[Received], bool]:
    """Whether an event reports `fault`: it names the signal the fault shows in."""
    checks: dict[str, Callable[[Received], bool]] = {
        "bearing-wear": lambda m: m.kind == "limit" and "vibration_mm_s" in tags_of(m),
        "overheating": lambda m: m.kind == "limit" and "discharge_temp_c" in tags_of(m),
        "clogged-filter": lambda m: m.kind == "anomaly" and m.data["detector"] == "pca"
        and "air_flow_m3_min" in tags_of(m),
        "stuck-sensor": lambda m: m.kind == "anomaly" and m.data["detector"] == "stuck"
        and "discharge_pressure_bar" in tags_of(m),
        "left-idling": lambda m: m.kind == "anomaly" and "machine_state" in tags_of(m),
    }
    return checks[fault]


def idled_through(message: Received) -> bool:
    """An energy report of a period the machine spent idling: never off, at least 95 % idle.
    (Over 50 healthy machine-hours of the model, reports of 60 s: never off in 650, at most
    83 % idle; with the fault, 100 % from the third on. At 80 % one healthy report of some
    3,000 passed: an e2e run of 13 healthy reports met one.)"""
    if message.kind != "energy":
        return False
    hours = message.data["hours"]
    total = sum(hours.values())
    return (message.data["complete"] and total > 0
            and hours["off"] == 0 and hours["idle"] >= 0.95 * total
            and message.data["idle_kwh"] > 0)


def test_every_injected_fault_is_reported_and_the_healthy_machine_raises_no_alarm(
    tmp_path: Path, mosquitto: Mosquitto, numba_cache: Path
) -> None:
    began = time.monotonic()
    warm_kernel_cache(numba_cache)
    with running_sims(tmp_path, (HEALTHY, *FAULTS)) as sims, \
            RawCollector(mosquitto.host, mosquitto.port, "lab/gw-e2e/#") as cloud:
        config = fleet_config(tmp_path, mosquitto, {name: sim.port for name, sim in sims.items()})
        with AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
            agent.wait_logged("kernels_ready")  # fails at once if the agent exits
            onsets = {fault: wait_until(sims[fault].fault_periods,
                                        timeout_s=ONSET_S / SPEED + 30,
                                        what=f"the onset of {fault}")[0].start_ns
                      for fault in FAULTS}
            assert all(sims[f].fault_periods()[0].fault == f for f in FAULTS)

            def reported(messages: list[Received], fault: str) -> Received | None:
                return next((m for m in messages if m.device == fault
                             and onset_reports(fault)(m) and m.fields["t"] >= onsets[fault]),
                            None)

            def all_reported(messages: list[Received]) -> bool:
                return all(reported(messages, f) for f in FAULTS) and any(
                    m.device == "left-idling" and idled_through(m)
                    and m.data["start_ns"] >= onsets["left-idling"] for m in messages) and any(
                    trend_reported(m, onsets["bearing-wear"]) for m in messages)

            last_onset_s = (max(onsets.values()) - time.time_ns()) / 1e9
            try:
                cloud.wait_for(all_reported, what="every fault reported",
                               timeout_s=max(0.0, last_onset_s) + DEADLINE_AFTER_ONSET_S)
            except TimeoutError:
                raise AssertionError(summary(cloud.snapshot(), onsets)) from None
            assert agent.terminate() == 0
        publish_sentinel(mosquitto.host, mosquitto.port, "lab/gw-e2e/end")
        messages = cloud.wait_for(lambda ms: any(is_sentinel(m) for m in ms), timeout_s=10,
                                  what="the end marker")
    wall_s = time.monotonic() - began

    check_learned_before_onsets(tmp_path / "state", onsets)
    for fault in FAULTS:
        first = reported(messages, fault)
        assert first is not None
        print(f"{fault}: {first.kind} {first.data.get('rule', '')} "
              f"detector={first.data.get('detector', '-')} "
              f"start {(first.fields['t'] - onsets[fault]) / 1e9 * SPEED:.0f} machine-s "
              f"after onset, arrived {(first.arrived_ns - onsets[fault]) / 1e9:.1f} s after")
    check_bearing_trend(messages, onsets["bearing-wear"])
    idle_report = next(m for m in messages if m.device == "left-idling" and idled_through(m)
                       and m.data["start_ns"] >= onsets["left-idling"])
    print(f"left-idling: energy report idle_kwh={idle_report.data['idle_kwh']:.3f} "
          f"hours={idle_report.data['hours']}, arrived "
          f"{(idle_report.arrived_ns - onsets['left-idling']) / 1e9:.1f} s after onset")
    print(f"wall time {wall_s:.1f} s")

    healthy_alarms = [(m.kind, m.data["rule"], m.data["phase"], m.data.get("score"),
                       m.data["start_ns"], m.data.get("tags")) for m in messages
                      if m.device == HEALTHY and m.kind in ALARMS]
    assert healthy_alarms == [], "the fault-free compressor raised alarms"
    early = [(m.device, m.kind, m.data["rule"]) for m in messages
             if m.device in onsets and m.kind in ALARMS and m.data["start_ns"] < onsets[m.device]]
    assert early == [], "alarms before the fault began"
    # Idling through a whole report is what the fault does, not what a healthy machine does.
    assert not any(idled_through(m) for m in messages if m.device == HEALTHY)


TREND_RULES = ("bearing-trend-loaded", "bearing-trend-idle")
"""The profile's z-scores of the vibration, one per state the motor runs in (`while_states`)."""


def trend_reported(message: Received, onset_ns: int) -> bool:
    return (message.device == "bearing-wear" and message.kind == "anomaly"
            and message.data["rule"] in TREND_RULES and message.data["phase"] == "start"
            and message.data["start_ns"] >= onset_ns)


def check_bearing_trend(messages: list[Received], onset_ns: int) -> None:
    """The profile's `bearing-trend-*` rules (a z-score of the vibration per state the motor
    runs in, `while_states`) report the wear too; through the healthy machine's stops and
    starts they raised nothing (the assertion on the healthy machine's alarms). Whether
    before the ISO limit depends on the states the machine passes through after the onset:
    printed here, asserted over 40 seeds offline (test_compressor_profile_offline.py)."""
    trend = next(m for m in messages if trend_reported(m, onset_ns))
    limit = next(m for m in messages if m.device == "bearing-wear" and m.kind == "limit"
                 and m.data["rule"] == "bearing-vibration" and m.data["phase"] == "start"
                 and m.data["start_ns"] >= onset_ns)
    print(f"bearing-wear: {trend.data['rule']} from "
          f"{(trend.data['start_ns'] - onset_ns) / 1e9 * SPEED:.0f} machine-s after onset, "
          f"the limit from {(limit.data['start_ns'] - onset_ns) / 1e9 * SPEED:.0f}")


def check_learned_before_onsets(state_dir: Path, onsets: dict[str, int]) -> None:
    """The precondition of the test: each device's learning rules had learned before its
    fault (else they would learn the fault as normal); the latest is `flow-vs-load`, on its
    50 loaded polls. Their `learned_at` in the learned-state file is UTC in whole seconds:
    learned at most one second after it."""
    for fault, onset in onsets.items():
        document = json.loads((state_dir / "detectors" / f"{fault}.json").read_text())
        learned = {key.split("|")[1]: utc_ns(text)
                   for key, text in document["learned_at"].items()}
        assert set(learned) >= {"flow-vs-load", "bearing-trend-loaded:vibration_mm_s",
                                "bearing-trend-idle:vibration_mm_s"}, (fault, learned)
        last_rule, latest = max(learned.items(), key=lambda item: item[1] or 0)
        assert latest is not None
        print(f"{fault}: rules learned {(onset - latest) / 1e9 * SPEED:.0f} machine-s before "
              f"the onset (the last: {last_rule})")
        assert latest + 1_000_000_000 <= onset, f"{fault}: a rule learned after the onset"


def summary(messages: list[Received], onsets: dict[str, int]) -> str:
    """What each device reported, for a failure message: alarms and energy reports, with
    their times in machine seconds from the device's onset."""
    lines = []
    for m in messages:
        if m.kind in (*ALARMS, "energy") and m.device != HEALTHY or m.kind in ALARMS:
            since = (m.fields["t"] - onsets.get(m.device, m.fields["t"])) / 1e9 * SPEED
            what = (f"{m.data.get('rule')} {m.data.get('phase')} tags={sorted(tags_of(m))}"
                    if m.kind in ALARMS else f"hours={m.data['hours']}")
            lines.append(f"{m.device} {m.kind} at {since:+.0f} machine-s: {what}")
    return "not every fault was reported:\n" + "\n".join(lines)
