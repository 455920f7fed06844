"""`edge-agent check`: what a valid configuration will do, in words a technician can verify."""

from __future__ import annotations

import ipaddress

from agent.config import LoadedConfig
from agent.config.models import MqttConfig
from drivers.modbus.plan import plan_requests
from drivers.opcua.config import OpcUaDevice


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def has_password(mqtt: MqttConfig) -> bool:
    given = mqtt.password is not None and mqtt.password.get_secret_value()
    return bool(given) or mqtt.password_file is not None or mqtt.password_credential is not None


def password_source(mqtt: MqttConfig) -> str:
    """Where the password comes from, never what it is."""
    if mqtt.password_file is not None:
        return f"from file {mqtt.password_file}"
    if mqtt.password_credential is not None:
        return f"from credential {mqtt.password_credential}"
    return "set" if has_password(mqtt) else "none"


def warnings(loaded: LoadedConfig) -> list[str]:
    """Things that are valid but probably not meant."""
    mqtt = loaded.config.mqtt
    out = []
    if not mqtt.tls.enabled and not _is_local(mqtt.host):
        out.append(
            f"mqtt.tls.enabled is false towards {mqtt.host}: events and the password "
            "cross the network in clear text"
        )
    for device in loaded.config.devices:
        if isinstance(device, OpcUaDevice):
            if device.security.mode == "None" and not _is_local(_host_of(device.endpoint)):
                out.append(f"{device.name}: security mode None towards {device.endpoint}: "
                           "values and any password cross the network in clear text")
            continue
        for tag in device.tags:
            if tag.address >= 30000:
                out.append(
                    f"{device.name}.{tag.name}: address {tag.address} looks like datasheet "
                    f"notation (3xxxx/4xxxx); addresses here are zero-based, e.g. register "
                    f"{tag.address} is `address: {tag.address % 10000 - 1}` with the right table"
                )
    if mqtt.username is not None and not has_password(loaded.config.mqtt):
        out.append("mqtt.username is set without a password (password, password_file or "
                   "password_credential)")
    return out


def summary(loaded: LoadedConfig) -> list[str]:
    cfg = loaded.config
    mqtt = cfg.mqtt
    scheme = "mqtts" if mqtt.tls.enabled else "mqtt"
    password = password_source(mqtt)
    lines = [
        f"{loaded.path}: OK (sha256 {loaded.sha256[:12]})",
        f"gateway {cfg.gateway.id} at site {cfg.gateway.site}; store {cfg.store_path}",
        (
            f"mqtt {scheme}://{mqtt.host}:{mqtt.effective_port} MQTT {mqtt.version} as "
            f"{mqtt.client_id or cfg.gateway.id} (user {mqtt.username or 'none'}, "
            f"password {password})"
        ),
        f"  topics: {mqtt.topic}",
        f"aggregate windows of {cfg.aggregate.window_s:g} s",
    ]
    for device in cfg.devices:
        if isinstance(device, OpcUaDevice):
            lines += _opcua_summary(device)
            continue
        requests = plan_requests(device.tags, max_gap_registers=device.max_gap_registers)
        lines.append(
            f"device {device.name}: {device.protocol} {device.host}:{device.port} unit {device.unit}, "
            f"{len(device.tags)} tags every {device.poll_interval_s:g} s in {len(requests)} request(s)"
        )
        for request in requests:
            names = ", ".join(tag.name for tag in request.tags)
            lines.append(
                f"  read {request.table} registers {request.address}..{request.address + request.count - 1}"
                f" ({request.count}): {names}"
            )
    return lines


def _host_of(endpoint: str) -> str:
    from urllib.parse import urlparse

    return urlparse(endpoint).hostname or ""


def _opcua_summary(device: OpcUaDevice) -> list[str]:
    sec = device.security
    login = (f"user {sec.username}" if sec.username else
             "user certificate" if sec.user_certificate else "anonymous")
    head = (f"device {device.name}: opcua {device.endpoint} security {sec.policy}/{sec.mode}, "
            f"{login}, {len(device.tags)} tags")
    lines = [head]
    for tag in device.tags:
        if tag.mode == "subscribe":
            how = (f"subscribe, sampling {tag.sampling_interval_s:g} s, queue {tag.queue_size}"
                   + (f", deadband {tag.deadband.type} {tag.deadband.value:g}"
                      if tag.deadband else "")
                   + f", published every {device.publishing_interval_s:g} s")
        else:
            how = f"poll every {tag.poll_interval_s or device.poll_interval_s:g} s"
        lines.append(f"  {tag.name}: {tag.address} ({how})")
    return lines
