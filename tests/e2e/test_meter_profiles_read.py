"""A technician's check of three meters on one RS-485 bus: `edge-agent read` with profiles.

`plc-sim` serves the three profiled meters on its pty bus (units 2, 3, 4), the
configuration names each by `profile:` and unit on the same `serial_port`, and
`edge-agent read` must print, for every tag, the value in the simulator's trace.
The model is frozen (`--tick-s 3600`: no tick during the test), so the trace's
initial line is what is served.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import agent_env

from agent.testing import console_script, start_plc_sim, stop_process
from plc_sim.meter_modbus import METER_KINDS

pytestmark = pytest.mark.e2e

UNITS = {2: "sdm630", 3: "iem3000", 4: "em24"}


def printed_values(output: str) -> dict[str, dict[str, float]]:
    """device name -> tag -> printed value, from `edge-agent read`'s tables."""
    devices: dict[str, dict[str, float]] = {}
    current: dict[str, float] = {}
    for line in output.splitlines():
        header = re.match(r"^device (\S+) \(unit \d+\):$", line)
        if header:
            current = devices.setdefault(header[1], {})
            continue
        # tag, address, raw words, value, unit: columns padded apart by two spaces or more.
        cells = re.split(r"\s{2,}", line.strip())
        if line.startswith("  ") and len(cells) >= 4 and cells[0] != "tag":
            current[cells[0]] = float(cells[3])
    return devices


def read_meters(tmp_path: Path, numba_cache: Path, units: dict[int, str],
                extra: str = "") -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`edge-agent read` of profiled meters served by plc-sim on one RTU bus; and what the
    simulator served (its trace's first line)."""
    link, trace = tmp_path / "ttyRS485", tmp_path / "trace.jsonl"
    meters = [arg for unit, kind in units.items() for arg in ("--meter", f"{kind}@{unit}")]
    process, info = start_plc_sim(
        *meters, "--rtu", str(link), "--baudrate", "19200", "--tick-s", "3600",
        "--trace", str(trace),
    )
    devices = "".join(
        f"  - {{name: meter{unit}, protocol: modbus-rtu, serial_port: {link}, baudrate: 19200,"
        f" unit: {unit}, profile: {METER_KINDS[kind].profile}, timeout_s: 2{extra}}}\n"
        for unit, kind in units.items()
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"gateway: {{id: gw-e2e, site: lab, state_dir: {tmp_path / 'state'}}}\n"
        "mqtt: {host: 127.0.0.1, port: 1883, tls: {enabled: false}}\n"
        f"devices:\n{devices}"
    )
    try:
        result = subprocess.run(
            [console_script("edge-agent"), "read", "-c", str(config)],
            capture_output=True, text=True, timeout=60, env=agent_env(numba_cache), check=False,
        )
    finally:
        assert stop_process(process) == 0
    assert info["endpoints"]["modbus-rtu"]["serial_port"] == str(link)
    served: dict[str, Any] = json.loads(trace.read_text().splitlines()[0])["units"]
    return result, served


def test_edge_agent_reads_every_profiled_meter_on_one_rtu_bus(
    tmp_path: Path, numba_cache: Path
) -> None:
    result, served = read_meters(tmp_path, numba_cache, UNITS)
    assert result.returncode == 0, result.stderr
    # Every value the simulated meters serve is plausible: inside its profile's valid_range.
    assert "implausible" not in result.stderr, result.stderr
    printed = printed_values(result.stdout)
    for unit, kind in UNITS.items():
        expected = {k: v for k, v in served[str(unit)].items() if k not in ("kind", "time_ns")}
        got = printed[f"meter{unit}"]
        assert set(got) == set(expected), kind
        for name, value in expected.items():
            # float32 is printed to 7 significant digits, integers exactly.
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), (kind, name)


def test_a_wrong_byte_order_is_flagged_with_the_order_that_fits(
    tmp_path: Path, numba_cache: Path
) -> None:
    result, _ = read_meters(tmp_path, numba_cache, {2: "sdm630"}, ", byte_order: CDAB")
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert "IMPLAUSIBLY SMALL" in rows["voltage_l1_v"], result.stdout  # 230 V as 2.4e-41
    assert "OUTSIDE 0..100000" in rows["current_l2_a"], result.stdout
    assert "implausible value(s)" in result.stderr, result.stderr
    assert "with byte_order: ABCD every one of them is plausible" in result.stderr, result.stderr
