"""ThingsBoard IoT Gateway, the side-by-side reference: its own venv, its configuration, its process.

The gateway is installed from PyPI (`thingsboard-gateway`) into `bench/.cache/tb-venv`
(gitignored), once: a later run finds it and skips the install. Its Modbus connector
installs the pymodbus it wants (a pinned 3.9.2) with pip when it first starts; that is done
here at install time instead, so that no pip run falls into the measured span.

It is configured to publish to the benchmark's Mosquitto as if that were a ThingsBoard
server (gateway API topics `v1/gateway/...`, access token as the MQTT user name, which an
anonymous Mosquitto ignores), with remote configuration, statistics, remote shell and
gRPC off, storage in memory (its default), its logs at WARNING into a file of the run
directory (pymodbus's at ERROR: see `write_config`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Self

from workload import Connector

PACKAGE = "thingsboard-gateway"
CONNECTOR_REQUIREMENTS = ("pymodbus==3.9.2", "pyserial", "pyserial-asyncio")
"""What the Modbus connector would otherwise pip-install at its first start (its
`connectors/modbus/modbus_connector.py` pins pymodbus 3.9.2)."""


def ensure_installed(venv: Path) -> Path:
    """The gateway's `thingsboard-gateway` script, installing it into `venv` if absent."""
    script = venv / "bin" / "thingsboard-gateway"
    if script.exists():
        return script
    print(f"installing {PACKAGE} into {venv} (once)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, PACKAGE, *CONNECTOR_REQUIREMENTS], check=True)
    return script


def installed_version(venv: Path) -> str:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from importlib.metadata import version; print(version('thingsboard-gateway'))"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.strip() or "unknown"


def write_config(directory: Path, host: str, port: int, connectors: list[Connector]) -> Path:
    """The gateway's configuration directory (`TB_GW_CONFIG_DIR`) for its connectors."""
    directory.mkdir(parents=True, exist_ok=True)
    main = {
        "thingsboard": {
            "host": host, "port": port, "remoteShell": False, "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600,
                           "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": 1,
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": c.type, "name": c.name, "configuration": f"{c.name}.json"}
                       for c in connectors],
    }
    logs = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain",
                              "filename": str(directory / "gateway.log")}},
        "root": {"level": "WARNING", "handlers": ["file"]},
        # pymodbus 3.9 warns that BinaryPayloadDecoder is deprecated on every decode, i.e.
        # for every tag read: left on, that warning would be most of the gateway's work.
        "loggers": {"pymodbus": {"level": "ERROR"}},
    }
    (directory / "tb_gateway.json").write_text(json.dumps(main, indent=2))
    for connector in connectors:
        (directory / f"{connector.name}.json").write_text(
            json.dumps(connector.configuration, indent=2))
    (directory / "logs.json").write_text(json.dumps(logs, indent=2))
    return directory


def start(script: Path, config_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`thingsboard-gateway` as its service unit starts it, from its configuration directory."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(script)], cwd=config_dir, stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "TB_GW_CONFIG_DIR": str(config_dir)},
        )


SESSION_LIMITS_REQUEST = "v1/devices/me/rpc/request/+"
SESSION_LIMITS = {"rateLimits": {}, "gatewayRateLimits": {}, "maxInflightMessages": 100,
                  "maxPayloadSize": 65536}
"""ThingsBoard's answer to `getSessionLimits`, with no rate limit (as for a tenant without
any): the gateway sends nothing at all until it gets an answer (see `SessionLimitsResponder`)."""


class SessionLimitsResponder:
    """Plays the one part of a ThingsBoard server the gateway cannot do without.

    After connecting, the gateway (tb-mqtt-client's `TBDeviceMqttClient`) publishes the RPC
    `{"method": "getSessionLimits"}` to `v1/devices/me/rpc/request/1` and reports itself
    connected (`TBClient.is_connected`: `rate_limits_received`) only once the answer is in
    on `v1/devices/me/rpc/response/1`; until then it polls the devices but publishes
    nothing, forever. A plain Mosquitto has nobody to answer, so this client answers that
    RPC, and only that one, with no limits.
    """

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.answered = 0
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)

        def on_connect(c: mqtt.Client, *_: object) -> None:
            c.subscribe(SESSION_LIMITS_REQUEST, qos=1)

        def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            request = json.loads(msg.payload)
            if request.get("method") == "getSessionLimits":
                request_id = msg.topic.rsplit("/", 1)[-1]
                c.publish(f"v1/devices/me/rpc/response/{request_id}",
                          json.dumps(SESSION_LIMITS), qos=1)
                self.answered += 1

        client.on_connect = on_connect
        client.on_message = on_message
        self._client = client
        self._address = (host, port)

    def __enter__(self) -> Self:
        self._client.connect(*self._address)
        self._client.loop_start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()
