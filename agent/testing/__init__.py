"""Helpers for the test suite, the benchmarks and the demo, shipped as structlog ships
`structlog.testing`: real processes (`processes`: Mosquitto, plc-sim, free ports, a TCP proxy),
waiting on a condition with a deadline (`wait`), configurations for building a device's
detectors offline (`configs`), in-process fakes (`fakes`) and the benchmark machine's
description (`machine`). TLS material is in `agent.testing.tls` (it needs cryptography).
Nothing here is imported by the daemon.
"""

from agent.testing.configs import device_detector, offline_config
from agent.testing.fakes import (
    CapturingSink,
    FakePlan,
    RecordingDetector,
    ScriptedDriver,
    SettableClockSync,
)
from agent.testing.machine import describe_machine
from agent.testing.processes import (
    BrokerTls,
    Mosquitto,
    MqttCollector,
    PlcSimControl,
    TcpProxy,
    console_script,
    free_tcp_port,
    mosquitto_binary,
    mosquitto_passwd_binary,
    port_open,
    start_plc_sim,
    stop_process,
)
from agent.testing.wait import wait_until, wait_until_async

__all__ = ["BrokerTls", "CapturingSink", "FakePlan", "Mosquitto", "MqttCollector",
           "PlcSimControl", "RecordingDetector", "ScriptedDriver", "SettableClockSync", "TcpProxy",
           "console_script", "describe_machine", "device_detector", "free_tcp_port",
           "mosquitto_binary", "mosquitto_passwd_binary", "offline_config", "port_open",
           "start_plc_sim", "stop_process", "wait_until", "wait_until_async"]
