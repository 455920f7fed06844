"""`edge-agent tail`: subscribe to the broker and print each event decoded, one per line.

A debugging tool for technicians and tests; it runs paho's blocking loop, the
daemon's asyncio rules do not apply here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli.tail_sparkplug import SparkplugReader, format_message
from agent.events import DecodeError, Envelope, decode, wire_fields
from agent.uplink.presence import PresenceDecodeError, decode_presence, presence_fields
from agent.uplink.sparkplug.codec import PayloadError


def topic_filter(template: str, **known: str) -> str:
    """The subscription that matches every topic the template can produce."""
    fields = {name: known.get(name, "+") for name in ("site", "gateway", "device", "kind")}
    return template.format(**fields)


def format_time(time_ns: int) -> str:
    stamp = dt.datetime.fromtimestamp(time_ns / 1e9, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: Any) -> str:
    """Every digit the event carries (the shortest text that reads back as the same float):
    a technician compares a meter's 48213.95 kWh with its display, not 48214."""
    if not isinstance(value, float):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    single = np.float32(value)
    if float(single) == value:  # a float32 register: the digits it holds, not float64's
        return np.format_float_positional(single, unique=True, trim="-")
    return f"{value:.12g}"  # 677 x 0.01 is 6.77, not 6.7700000000000005


MAX_LINE = 240
"""A kind without its own rendering is cut here: one event, one readable line."""


def format_line(env: Envelope) -> str:
    """A one-line, human-readable rendering of an event."""
    head = f"{format_time(env.time_ns)} {env.gateway} #{env.seq} {env.device} {env.kind}"
    data = env.data
    render = _RENDER.get(env.kind)
    if render is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            return f"{head} {render(data)}"
    return f"{head} {_generic(data)}"


def _window(data: dict[str, Any]) -> str:
    parts, counts = [], set()
    for tag, s in data["tags"].items():
        unit = f" {s['unit']}" if s.get("unit") else ""
        if s.get("n"):
            counts.add(s["n"])
            if s.get("increase") is not None:  # a counter: its reading and what it counted
                parts.append(f"{tag}={_number(s['last'])}{unit} +{_number(s['increase'])}")
            else:
                parts.append(f"{tag}={_number(s['last'])}{unit} "
                             f"[{_number(s['min'])}..{_number(s['max'])}]")
        else:
            parts.append(f"{tag}=? [bad={s.get('bad', 0)}]")
    n = f"n={counts.pop()}: " if len(counts) == 1 else ""
    merged = f"({data['windows']} merged) " if data.get("windows") else ""
    return merged + n + "; ".join(parts)


def _change(data: dict[str, Any]) -> str:
    changes = []
    for tag, c in data["tags"].items():
        unit = f" {c['unit']}" if c.get("unit") else ""
        was = "" if c.get("previous") is None else f" (was {_number(c['previous'])})"
        changes.append(f"{tag}={_number(c['value'])}{unit}{was}")
    return "; ".join(changes)


def _state(data: dict[str, Any]) -> str:
    dwell = data.get("dwell_s")
    after = f" after {_number(round(float(dwell), 1))} s" if isinstance(dwell, int | float) else ""
    return f"{data.get('machine')}: {data.get('from') or 'start'} -> {data['to']}{after}"


def _episode(data: dict[str, Any]) -> str:
    """An anomaly or limit episode: what, how far past its threshold, and for how long."""
    band = f" band {data['band']}" if data.get("band") else ""
    text = f"{data['phase']} {data['rule']} ({data['detector']}{band})"
    if "limit" in data:
        text += (f": {data['bound']} limit {_number(data['limit'])}, at worst "
                 f"{_number(data['peak_value'])} ({_number(data['max_excess'])} past it)")
    elif data.get("score") is not None:
        text += f": score {data['score']:.3g} over {_number(data['threshold'])}"
        if data.get("peak_value") is not None:
            text += f", value {_number(data['peak_value'])} at the peak"
    tags = ", ".join(data.get("tags") or {})
    if tags:
        text += f"; {tags}"
    if data["phase"] == "end":
        text += f"; lasted {data['duration_s']:.1f} s"
        if data.get("ongoing"):
            text += (" (cut short: the machine left the rule's states)"
                     if data.get("ended_by") == "machine_state" else " (cut short: the agent "
                     "stopped)")
    return text


def _health(data: dict[str, Any]) -> str:
    if data["status"] == "up":
        return "up"
    where = f" at {data['address']}" if data.get("address") else ""
    return f"{data['status']} ({data['reason']}){where}: {data.get('detail', '')}"


def _heartbeat(data: dict[str, Any]) -> str:
    """The gateway's vital signs, the way `edge-agent status` words them."""
    devices = ", ".join(f"{name} {d['status']}" + (f" ({d['reason']})" if d.get("reason") else "")
                        for name, d in data["devices"].items())
    store, uplink, process = data["store"], data["uplink"], data["process"]
    dropped = sum((store.get("dropped") or {}).values())
    return (f"{data['reason']}: up {_number(data['uptime_s'])} s, version {data['version']}, "
            f"config {data['config_sha256'][:12]}; devices {devices or 'none'}; store "
            f"{store['depth']} waiting, last #{store['last_seq']}, {dropped} dropped; uplink "
            f"{uplink['state']}, {uplink['inflight']} in flight; "
            f"{process['cpu_s']:.1f} s CPU, {process['rss_bytes'] / 2**20:.0f} MiB")


def _quality(data: dict[str, Any]) -> str:
    return "; ".join(f"{tag}: {q.get('previous') or 'start'} -> {q['quality']}"
                     for tag, q in data["tags"].items())


def _field(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(",", ":"))
    return _number(value)


def _generic(data: dict[str, Any]) -> str:
    """Every field as key=value, nested maps as compact JSON, cut to a readable line."""
    text = " ".join(f"{k}={_field(v)}" for k, v in data.items())
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


def _hours(hours: float) -> str:
    """A time spent in a state, in the unit that reads best (reports come every minute to
    every shift)."""
    seconds = hours * 3600
    return f"{seconds:.0f} s" if seconds < 600 else f"{hours:.2f} h"


def _energy(data: dict[str, Any]) -> str:
    """A machine's energy report in one line: what a technician compares with the meter."""
    period = data["period"] + (f" {data['shift']}" if data.get("shift") else "")
    parts = [f"{data.get('machine')} {period}:"]
    if data.get("total_kwh") is not None:
        parts.append(f"{data['total_kwh']:.3f} kWh;")
    hours, kwh = data.get("hours") or {}, data.get("kwh") or {}
    states = [f"{state} {_hours(hours[state])}"
              + (f" {kwh[state]:.3f} kWh" if kwh.get(state) is not None else "")
              for state in ("off", "idle", "running", "overload") if hours.get(state)]
    parts.append(", ".join(states) + ";")
    parts.append(f"starts {data.get('starts')}")
    if data.get("peak_demand_w") is not None:
        parts.append(f"peak {data['peak_demand_w']:.0f} W")
    if "cycles" in data:
        parts.append(f"cycles {_number(data['cycles'])}")
        if data.get("kwh_per_cycle") is not None:
            parts.append(f"{data['kwh_per_cycle']:.4f} kWh/cycle")
    if data.get("unmeasured_s"):
        parts.append(f"unmeasured {data['unmeasured_s']:.0f} s")
    if data.get("counter_resets"):
        parts.append(f"resets {data['counter_resets']}")
    if not data.get("complete", True):
        parts.append("(incomplete)")
    return " ".join(parts)


_RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "window": _window, "change": _change, "state": _state, "energy": _energy,
    "anomaly": _episode, "limit": _episode, "device_health": _health, "heartbeat": _heartbeat,
    "quality": _quality,
}


def tail(
    *, host: str, port: int, topic: str, tls: bool, ca_file: str | None, username: str | None,
    password: str | None, as_json: bool, count: int | None, out: TextIO = sys.stdout,
    timeout_s: float = 10.0,
) -> int:
    seen = 0
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)

    refused = answered = False
    where = f"{host}:{port}" + (" with TLS" if tls else " without TLS")

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        nonlocal refused, answered
        answered = True
        if reason.is_failure:
            print(f"broker refused the connection: {reason}", file=sys.stderr)
            refused = True
            c.disconnect()
            return
        print(f"connected to {where}", file=sys.stderr, flush=True)
        c.subscribe(topic, qos=1)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        # Said once the broker confirmed (SUBACK): from here on nothing published is missed.
        print(f"subscribed to {topic} on {host}:{port}", file=sys.stderr, flush=True)

    sparkplug = SparkplugReader()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal seen
        if msg.topic.startswith("spBv1.0/"):
            try:
                message = sparkplug.read(msg.topic, bytes(msg.payload))
            except PayloadError as exc:
                print(f"{msg.topic}: undecodable payload ({exc})", file=sys.stderr, flush=True)
                return
            if message is None:
                return
            out.write((json.dumps(message) if as_json else format_message(message)) + "\n")
            out.flush()
            seen += 1
            if count is not None and seen >= count:
                c.disconnect()
            return
        try:
            env = decode(msg.payload)
        except DecodeError as exc:
            try:
                status = decode_presence(msg.payload)
            except PresenceDecodeError:
                print(f"{msg.topic}: undecodable payload ({exc})", file=sys.stderr, flush=True)
                return
            line = (json.dumps({"topic": msg.topic, **presence_fields(status)}) if as_json else
                    f"{format_time(status.time_ns)} {status.gateway} status {status.status} "
                    f"version={status.agent_version} config={status.config_sha256[:12]}")
            out.write(line + "\n")
            out.flush()
            return
        if as_json:
            out.write(json.dumps({"topic": msg.topic, **wire_fields(env)}) + "\n")
        else:
            out.write(format_line(env) + "\n")
        out.flush()
        seen += 1
        if count is not None and seen >= count:
            c.disconnect()

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if answered and not (count is not None and seen >= count):
            print(f"connection lost ({reason}); reconnecting", file=sys.stderr, flush=True)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.connect_timeout = timeout_s
    print(f"connecting to {where} ...", file=sys.stderr, flush=True)
    try:
        client.connect(host, port, keepalive=30)
        deadline = time.monotonic() + timeout_s
        while not answered:  # the CONNACK, or nothing: say so rather than wait in silence
            if client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS or time.monotonic() > deadline:
                print(f"no MQTT answer from {where} within {timeout_s:g} s: "
                      f"{_unanswered_hint(tls, port)}", file=sys.stderr)
                return 1
        if refused:
            return 1
        client.loop_forever(retry_first_connection=False)
    except ssl.SSLError as exc:
        print(f"TLS with the broker at {where} failed: {exc.reason or exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach the broker at {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        client.disconnect()
    return 0


def _unanswered_hint(tls: bool, port: int) -> str:
    if tls and port == 1883:
        return "1883 is the port of plain MQTT: use 8883 for TLS, or --no-tls"
    if not tls and port == 8883:
        return "8883 is the port of MQTT over TLS: leave out --no-tls"
    return ("is it an MQTT broker, and does it speak TLS as asked? (a firewall that drops "
            "packets looks the same)")
