"""`edge-agent check`: what a valid configuration will do, in words a technician can verify."""

from __future__ import annotations

import ipaddress

from agent.config import LoadedConfig
from agent.config.models import MqttConfig
from drivers.modbus.config import ModbusTag, parse_register
from drivers.modbus.describe import describe_device
from drivers.opcua.config import OpcUaDevice
from drivers.valid_range import describe_range


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


def _datasheet_hint(tag: ModbusTag) -> str:
    """What `address: 40101` probably meant, when that is a valid datasheet number."""
    head = (f"address {tag.address} looks like datasheet notation (3xxxx/4xxxx), but "
            "`address` is zero-based")
    try:
        table, address = parse_register(tag.address)
    except ValueError:
        return head + f": {tag.table} register {tag.address} is read"
    if table != tag.table:
        return (head + f"; as a datasheet number, {tag.address} would be the {table} table "
                f"({table} {address}), not {tag.table}: check the table and the number")
    return head + f"; for the datasheet's number write `register: {tag.address}` (= {table} {address})"


def warnings(loaded: LoadedConfig) -> list[str]:
    """Things that are valid but probably not meant."""
    mqtt = loaded.config.mqtt
    out = []
    if not mqtt.tls.enabled and not _is_local(mqtt.host):
        out.append(
            f"mqtt.tls.enabled is false towards {mqtt.host}: events and the password "
            "cross the network in clear text"
        )
    if mqtt.tls.enabled and mqtt.effective_port == 1883:
        out.append("mqtt: TLS towards port 1883, the port of plain MQTT: brokers serve TLS on "
                   "8883 (set mqtt.port: 8883, or tls: false for a broker on this host)")
    for where in loaded.literal_secrets:
        out.append(f"{where} is written in the file: whoever reads the file reads it; give it "
                   f"as ${{NAME}} from the environment, a password_file or a "
                   f"password_credential")
    for device in loaded.config.devices:
        if isinstance(device, OpcUaDevice):
            if device.security.mode == "None" and not _is_local(_host_of(device.endpoint)):
                out.append(f"{device.name}: security mode None towards {device.endpoint}: "
                           "values and any password cross the network in clear text")
            subscribed = [t.name for t in device.tags if t.mode == "subscribe"]
            if subscribed:
                out.append(f"{device.name}: the window statistics of its subscribed tags "
                           f"({', '.join(subscribed[:3])}{', ...' if len(subscribed) > 3 else ''})"
                           " weigh each change the server sends alike, not each second: a "
                           "value that holds still counts once (`mode: poll` gives "
                           "time-weighted statistics)")
            continue
        for tag in device.tags:
            if tag.datasheet_register is None and tag.address >= 30000:
                out.append(f"{device.name}.{tag.name}: {_datasheet_hint(tag)}")
    for machine in loaded.config.machines:
        device = next(d for d in loaded.config.devices if d.name == machine.device)
        signal = next(t for t in device.tags if t.name == machine.signal_tag)
        share = signal.share or device.share
        if share in ("none", "events"):
            out.append(f"machine {machine.name}: its signal {machine.signal_tag} is shared "
                       f"`{share}`, so its energy reports stay on site"
                       + ("" if share == "events" else " (and its state changes too)"))
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
        lines.extend(describe_device(device))
    for machine in cfg.machines:
        idle, running, overload, hysteresis = machine.thresholds()
        unit = "W" if machine.power_tag is not None else "A"
        energy = (f"energy from {machine.energy_counter_tag}" if machine.energy_counter_tag
                  else "energy integrated from power" if machine.power_tag or
                  machine.line_voltage_v else "no energy (give a meter or line_voltage_v)")
        lines.append(
            f"machine {machine.name} on {machine.device}: state from {machine.signal_tag} "
            f"(idle > {idle:g} {unit}, running > {running:g} {unit}"
            + (f", overload > {overload:g} {unit}" if overload != float("inf") else "")
            + f", hysteresis {hysteresis:g} {unit}, dwell {machine.min_dwell_s:g} s); {energy}; "
            f"report every {machine.report_interval_s:g} s"
            + (f" and at shifts {', '.join(machine.shifts)} ({machine.timezone})"
               if machine.shifts else "")
        )
    lines.append(remote_summary(loaded))
    for device in cfg.devices:
        for name, rule in cfg.rules_of(device.name):
            gate = rule.gate(cfg.sole_machine_of(device.name))
            lines.append(f"rule {name} on {device.name}: {rule.kind} of {', '.join(rule.tags)}"
                         + (f", only while {gate.describe()}" if gate else ""))
    return lines


def remote_summary(loaded: LoadedConfig) -> str:
    """Whether signed configurations and commands are accepted, on which topic, from whom."""
    cfg = loaded.config
    remote = cfg.remote
    if not remote.enabled:
        return "remote configuration: off (remote.enabled: false)"
    from agent.config.signed import load_public_keys

    # The model checked the files; one key id per file.
    files = ", ".join(f"{next(iter(load_public_keys([path])))} ({path})"
                      for path in remote.trusted_keys)
    topic = remote.topic.format(site=cfg.gateway.site, gateway=cfg.gateway.id)
    return (f"remote configuration: on, signed messages on {topic} from keys {files}; "
            f"confirmed within {remote.confirm_s:g} s or rolled back; "
            + ("may restart itself for gateway, store and log" if remote.allow_restart
               else "gateway, store and log changes refused (no restart)")
            + f"; this file must stay writable by the agent: {loaded.path}")


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
        lines.append(f"  {tag.name}: {tag.address} ({how}{describe_range(tag.valid_range, tag.unit)})")
    return lines
