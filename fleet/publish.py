"""One message to the broker at QoS 1, returning only once the broker acknowledged it.

For `edge-fleet config push` and `edge-fleet command`: a short-lived paho client (MQTT 5,
so that a broker refusing the message says so in its PUBACK instead of dropping it), the
fleet configuration's broker, TLS and login (as `edge-fleet ingest` uses them), a clean
session of its own. Not retained: a signed message is for the gateway's persistent
session, and a retained one would be handed to every later subscriber, forever.
"""

from __future__ import annotations

import secrets
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from fleet.config import FleetConfig
from fleet.ingest import tls_context

PUBLISH_TIMEOUT_S = 30.0
"""From connecting to the PUBACK at most."""


class PublishError(Exception):
    """The broker did not take the message: unreachable, refused, or no PUBACK in time."""


def publish(config: FleetConfig, topic: str, payload: bytes,
            timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
    """Publish `payload` to `topic` (QoS 1, not retained) and wait for its PUBACK.

    Raises `PublishError` saying what went wrong; when it returns, the broker has the message
    (and keeps it for the gateway's session while the gateway is away)."""
    m = config.mqtt
    deadline = time.monotonic() + timeout_s
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"edge-fleet-push-{secrets.token_hex(6)}",
                         protocol=mqtt.MQTTv5)
    if m.username is not None:
        client.username_pw_set(m.username, m.password.get_secret_value()
                               if m.password is not None else None)
    tls = tls_context(config)
    if isinstance(tls, ssl.SSLContext):
        client.tls_set_context(tls)
    client.connect_timeout = timeout_s
    connected, acknowledged = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        outcome["connect"] = code
        connected.set()

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, code: ReasonCode, _p: Any) -> None:
        outcome[f"puback-{mid}"] = code
        acknowledged.set()

    client.on_connect, client.on_publish = on_connect, on_publish
    where = f"{m.host}:{m.effective_port}"
    try:
        client.connect(m.host, m.effective_port, keepalive=30)
    except (OSError, ValueError) as exc:  # refused, no route, TLS handshake, no such name
        raise PublishError(f"cannot connect to the broker {where}: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(max(deadline - time.monotonic(), 0)):
            raise PublishError(f"the broker {where} did not answer the connection within "
                               f"{timeout_s:.0f} s")
        if outcome["connect"].is_failure:
            raise PublishError(f"the broker {where} refused the connection: "
                               f"{outcome['connect']}")
        info = client.publish(topic, payload, qos=1, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"publishing to {where} failed: {mqtt.error_string(info.rc)}")
        # The PUBACK may come before `publish` returns: the callback keeps it by message id.
        if not acknowledged.wait(max(deadline - time.monotonic(), 0)):
            raise PublishError(f"no PUBACK from {where} within {timeout_s:.0f} s: the "
                               "message may or may not have arrived")
        code = outcome[f"puback-{info.mid}"]
        if code.is_failure:
            raise PublishError(f"the broker {where} refused the message on {topic}: {code}")
    finally:
        client.disconnect()
        client.loop_stop()
