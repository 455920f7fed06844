"""A worn bearing is reported by its frequency band, over OPC UA, and a healthy machine's
spectrum raises nothing.

Two simulated compressors (`plc-sim --opcua-port 0`: the `bearing-wear` scenario, whose fault
starts at a known time, labelled in its trace, and the fault-free `compressor`), one
`edge-agent` reading each one's vibration capture (`vibration_waveform_mm_s`, 1,024 samples at
2,048 Hz) with the `band_rms` rule of `config/compressor-vibration.yaml`. The simulators run
`SPEED` times faster than the machine and the configuration's times are divided by the same
factor, as in test_fault_scenarios.py; the spectrum is the machine's own (its sample rate is
in machine time), so the bands are the configuration's as they are.

What it measures: the time from the fault's onset to the band's episode start, in machine
seconds, and the fault's severity and the overall vibration then (from the trace). The band
must report the wear before the overall vibration reaches the 4.5 mm/s of the `limits` rule
of config/compressor-monitoring.yaml: an early bearing defect shows in its band first.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
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

from agent.testing import Mosquitto, start_plc_sim, stop_process, wait_until
from plc_sim.trace import fault_periods

pytestmark = pytest.mark.e2e

PROFILE = ROOT / "config" / "compressor-vibration.yaml"
SPEED = 20.0
"""Machine seconds per wall second: a capture every 2 machine seconds is one every 0.1 s."""
ONSET_S = 200.0
"""Machine seconds of healthy operation before the wear begins (10 wall seconds): after the
agent has started (1-3 wall seconds) and the bearing band has learned on its 20 captures
(40 machine seconds, 2 wall seconds)."""
RAMP_S = 60.0
"""The simulator's ramp of the wear to full severity (`plc_sim.faults.Fault.ramp_s`)."""
OVERALL_LIMIT_MM_S = 4.5
"""The `limits` rule on the overall vibration in config/compressor-monitoring.yaml."""
HEALTHY, WORN = "compressor", "bearing-wear"
BEARING_BAND = "bearing-bpfo"
WAVEFORM = "vibration_waveform_mm_s"


@contextlib.contextmanager
def running_sims(directory: Path) -> Iterator[dict[str, Sim]]:
    """The healthy and the worn compressor, each serving OPC UA on a free port."""
    with contextlib.ExitStack() as stack:
        sims = {}
        for name in (HEALTHY, WORN):
            log = stack.enter_context(open(directory / f"{name}.log", "w"))
            trace = directory / f"{name}.trace.jsonl"
            process, info = start_plc_sim(
                "--scenario", name, "--speed", str(SPEED), "--seed", "1",
                "--fault-onset-s", str(ONSET_S), "--trace", str(trace), "--opcua-port", "0",
                stderr=log, protocol="opcua")
            stack.callback(assert_stopped, process)
            sims[name] = Sim(port=0, trace=trace, endpoint=info["endpoint"])
        yield sims


def assert_stopped(process: Any) -> None:
    assert stop_process(process) == 0


def vibration_config(tmp_path: Path, broker: Mosquitto, sims: dict[str, Sim]) -> Path:
    """The profile's device and rule once per simulator, the device named after its scenario,
    times compressed by `SPEED`. The captures' windows are shared (the profile keeps them
    on the gateway) so that the test can count the samples each device delivered."""
    profile = YAML(typ="safe").load(PROFILE)
    [device], [rule] = profile["devices"], profile["detectors"]
    devices, detectors = [], []
    for name, sim in sims.items():
        tags = [{**tag, "node": tag["node"].replace("s=compressor.", f"s={name}.")}
                for tag in device["tags"]]  # the simulator names its object after the scenario
        devices.append({**copy.deepcopy(device), "name": name, "endpoint": sim.endpoint,
                        "share": "aggregates", "tags": tags})
        detectors.append({**copy.deepcopy(rule), "device": name})
    return scaled_config(tmp_path, broker, SPEED, aggregate={"window_s": 10.0},
                         devices=devices, detectors=detectors)


def band_alarms(messages: list[Received], device: str) -> list[Received]:
    return [m for m in messages if m.device == device and m.kind == "anomaly"
            and m.data["detector"] == "band_rms"]


def samples_before(messages: list[Received], device: str, end_ns: int) -> int:
    """Good samples of the capture tag in the device's windows that ended by `end_ns`."""
    return sum(w.data["tags"][WAVEFORM]["n"] for w in messages
               if w.device == device and w.kind == "window" and w.data["end_ns"] <= end_ns
               and WAVEFORM in w.data["tags"])


def test_a_worn_bearing_is_reported_in_its_band_and_a_healthy_spectrum_raises_nothing(
    tmp_path: Path, mosquitto: Mosquitto, numba_cache: Path
) -> None:
    warm_kernel_cache(numba_cache)
    with running_sims(tmp_path) as sims, \
            RawCollector(mosquitto.host, mosquitto.port, "lab/gw-e2e/#") as cloud:
        config = vibration_config(tmp_path, mosquitto, sims)
        with AgentProcess(config, tmp_path / "agent.log", numba_cache) as agent:
            agent.wait_logged("kernels_ready")  # fails at once if the agent exits
            [period] = wait_until(lambda: fault_periods(sims[WORN].rows()),
                                  timeout_s=ONSET_S / SPEED + 30, what="the onset of the wear")
            onset_ns = period.start_ns

            def reported(messages: list[Received]) -> bool:
                return any(m.data["band"] == BEARING_BAND and m.data["phase"] == "start"
                           and m.fields["t"] >= onset_ns for m in band_alarms(messages, WORN))

            cloud.wait_for(reported, timeout_s=15.0, what="the bearing band's episode")

            def worn_through() -> bool:
                """The wear at full severity and the overall level past the limit: the
                healthy machine has run as long as the worn one needed to get there."""
                rows = [r for r in sims[WORN].rows() if r["time_ns"] >= onset_ns]
                return (any(r["fault_severity"] >= 1.0 for r in rows)
                        and any(r["vibration_mm_s"] >= OVERALL_LIMIT_MM_S for r in rows))

            wait_until(worn_through, timeout_s=RAMP_S / SPEED + 15, what="the full wear")
            assert agent.terminate() == 0
        publish_sentinel(mosquitto.host, mosquitto.port, "lab/gw-e2e/end")
        messages = cloud.wait_for(lambda ms: any(is_sentinel(m) for m in ms), timeout_s=10,
                                  what="the end marker")
        worn_rows = sims[WORN].rows()
        healthy_rows = sims[HEALTHY].rows()

    # Precondition: the bearing band learned on the healthy machine, before the onset.
    learned = samples_before(messages, WORN, onset_ns)
    print(f"{WORN}: {learned // 1024} captures before the onset")
    assert learned >= 20 * 1024, "the band had not learned its level before the wear began"

    alarms = band_alarms(messages, WORN)
    assert {m.data["band"] for m in alarms} == {BEARING_BAND}, "only the bearing's band"
    first = next(m for m in alarms if m.data["phase"] == "start")
    assert first.data["band_hz"] == [160.0, 200.0]
    assert first.data["tags"] == {WAVEFORM: first.data["tags"][WAVEFORM]}
    start_ns = first.data["start_ns"]
    assert start_ns >= onset_ns, "an alarm before the wear began"
    at_start = max((r for r in worn_rows if r["time_ns"] <= start_ns),
                   key=lambda r: r["time_ns"])
    crossed_ns = min(r["time_ns"] for r in worn_rows
                     if r["time_ns"] >= onset_ns and r["vibration_mm_s"] >= OVERALL_LIMIT_MM_S)
    # The limit is the band's floor, min_limit_rms 0.3 mm/s: max_ratio (3) x the level
    # learned on the healthy machine (the noise's share of the band, 0.3 mm/s x
    # sqrt(40 / 1024) = 0.06 mm/s) is under it.
    threshold = first.data["threshold"]
    print(f"{WORN}: band {first.data['band']} {first.data['band_hz']} Hz reported "
          f"{(start_ns - onset_ns) / 1e9 * SPEED:.0f} machine-s after the onset, at severity "
          f"{at_start['fault_severity']:.3f} (overall {at_start['vibration_mm_s']:.2f} mm/s, "
          f"state {at_start['state']}); band limit {threshold:.3f} mm/s, "
          f"{first.data['score']:.2f} mm/s at the report; the overall level reached "
          f"{OVERALL_LIMIT_MM_S} mm/s {(crossed_ns - onset_ns) / 1e9 * SPEED:.0f} machine-s "
          "after the onset")
    assert threshold == pytest.approx(0.3)
    assert first.data["score"] > threshold
    assert start_ns < crossed_ns, "the band must see the wear before the overall level does"

    span_s = (healthy_rows[-1]["time_ns"] - healthy_rows[0]["time_ns"]) / 1e9 * SPEED
    watched = samples_before(messages, HEALTHY, healthy_rows[-1]["time_ns"])
    print(f"{HEALTHY}: {span_s:.0f} machine-s, {watched // 1024} captures, "
          f"{len(band_alarms(messages, HEALTHY))} band alarms")
    assert watched >= samples_before(messages, WORN, worn_rows[-1]["time_ns"]) // 2
    assert [m.data for m in messages if m.device == HEALTHY and m.kind in ("anomaly", "limit")] \
        == [], "the healthy compressor raised alarms"
