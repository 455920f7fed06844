"""What the running agent loads, since a Raspberry Pi's memory is shared with other work
(issue 8's budget: 150 MB): the kernels compiled ahead of time keep numba (~120 MiB) out,
a gateway with no OPC UA device never loads asyncua (~20 MiB), nor one in the envelope
format protobuf, and none paho (the uplink speaks MQTT itself). Each check runs the
agent's own start-up path (config, devices, detectors, kernels) in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

START = """
import sys
from pathlib import Path
from agent.config.loader import load_config
from agent.acquire.driver import make_driver
from agent.detect.device import make_detector
from agent.detect import kernels
from agent.detect.kernels import jit
import agent.supervisor.runtime
loaded = load_config(Path(sys.argv[1]))
for device in loaded.config.devices:
    make_driver(device, Path(sys.argv[2]))
    make_detector(loaded.config, device)
kernels.warm_up({rule.kind for rule in loaded.config.detectors})
print(jit.mode(), 'numba' in sys.modules, 'asyncua' in sys.modules,
      'google.protobuf' in sys.modules, 'paho' in sys.modules, jit.why_not_aot())
"""


def _start(config: Path, state: Path) -> list[str]:
    run = subprocess.run([sys.executable, "-c", START, str(config), str(state)], cwd=ROOT,
                         env=os.environ.copy(), capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_a_modbus_gateway_loads_neither_numba_nor_asyncua(tmp_path: Path) -> None:
    mode, numba, asyncua, protobuf, paho, *why = _start(
        ROOT / "config" / "compressor-monitoring.yaml", tmp_path)
    assert (mode, numba) == ("aot", "False"), (
        f"{' '.join(why)} -- build them: make kernels (python -m agent.detect.kernels.build)")
    assert asyncua == "False"
    assert protobuf == "False", "only mqtt.format: sparkplug needs protobuf"
    assert paho == "False", "the uplink's MQTT connection is its own (agent/uplink/connection.py)"


def test_an_opcua_device_brings_asyncua_and_still_no_numba(tmp_path: Path) -> None:
    config = tmp_path / "opcua.yaml"
    config.write_text(
        "gateway: {id: gw, state_dir: " + str(tmp_path / "state") + ", clock: rtc}\n"
        "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n"
        "devices:\n"
        "  - {name: press, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:4840',\n"
        "     tags: [{name: t, node: 'ns=2;i=1'}]}\n")
    mode, numba, asyncua, protobuf, _paho, *_ = _start(config, tmp_path)
    assert (mode, numba, asyncua, protobuf) == ("aot", "False", "True", "False")
