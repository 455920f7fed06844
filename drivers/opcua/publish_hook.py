"""Putting publish_decode.py under asyncua's publish loop: the one place that touches
asyncua's private parts for it.

`install` replaces two steps of one session's publish loop: the decoding
(`UaSession.publish`, an instance attribute shadowing the method; request and
acknowledgements built as asyncua builds them) and, per subscription, the callback
(`UaSession._subscription_callbacks`), which puts a `DataChanges` on the subscription's
event queue (`Subscription._deliver`, asyncua's overflow policy) and keeps
`last_publish_at` current for the stall watchdog. Whatever the fast decoder declines
(keep-alives, status changes, strings, arrays, unhooked subscriptions) goes asyncua's way.

It also gives each PublishRequest a timeout: asyncua sends one at a time and waits for its
answer without end, so one lost answer would stop every subscription of the session for
good (recreating them does not send a new request). Unanswered after `timeout_s`, the
request is given up as asyncua gives up one the server timed out (BadTimeout: the loop sends
the next at once).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.ua.uaerrors import BadTimeout, UaStructParsingError

from drivers.opcua.publish_decode import DataChanges, decode_data_changes

log = structlog.get_logger(__name__)


class PublishHook:
    """The fast path of one client's publish loop; counts what took which path."""

    def __init__(self, client: Client, device: str, timeout_s: float) -> None:
        """`timeout_s`: how long a PublishRequest may go unanswered (also its TimeoutHint):
        longer than the server's keep-alive period, or healthy silence times out."""
        self._session = client.uaclient.session
        self._device = device
        self._timeout_s = timeout_s
        self._subscriptions: dict[int, Subscription] = {}
        self.fast = 0
        """Publish responses decoded into arrays."""
        self.declined = 0
        """Responses left to asyncua's decoder (keep-alives included)."""
        self.unanswered = 0
        """PublishRequests given up after `timeout_s` without an answer."""
        self._session.publish = self._publish  # type: ignore[method-assign]

    def hook(self, subscription: Subscription) -> None:
        """Deliver this subscription's data changes as `DataChanges` from now on."""
        sid = subscription.subscription_id
        assert sid is not None, "hook a subscription once it is created"
        callbacks = self._session._subscription_callbacks
        original = callbacks[sid]
        self._subscriptions[sid] = subscription

        def on_publish(result: ua.PublishResult) -> Any:
            data = result.NotificationMessage.NotificationData
            if not (data and isinstance(data[0], DataChanges)):
                return original(result)
            subscription.last_publish_at = time.monotonic()
            subscription.last_sequence_number = data[0].sequence_number
            subscription._deliver(data[0])  # type: ignore[arg-type]
            return None

        callbacks[sid] = on_publish

    def unhook(self, subscription: Subscription) -> None:
        if subscription.subscription_id is not None:
            self._subscriptions.pop(subscription.subscription_id, None)

    async def _publish(self, acks: list[ua.SubscriptionAcknowledgement]) -> ua.PublishResponse:
        request = ua.PublishRequest()
        request.Parameters.SubscriptionAcknowledgements = acks if acks else []
        try:
            data: Buffer = await self._session._send_request(request, timeout=self._timeout_s)
        except TimeoutError as exc:
            self.unanswered += 1
            log.warning("opcua_publish_unanswered", device=self._device,
                        timeout_s=self._timeout_s, count=self.unanswered)
            raise BadTimeout from exc
        changes = decode_data_changes(bytes(data))
        if changes is None or changes.subscription_id not in self._subscriptions:
            self.declined += 1
            try:
                response: ua.PublishResponse = struct_from_binary(ua.PublishResponse, data)
            except Exception as exc:  # asyncua's loop skips such a response and goes on
                raise UaStructParsingError from exc
            return response
        self.fast += 1
        response = ua.PublishResponse()
        response.Parameters.SubscriptionId = changes.subscription_id
        response.Parameters.NotificationMessage.SequenceNumber = changes.sequence_number
        response.Parameters.NotificationMessage.NotificationData = [changes]
        return response
