"""OPC UA driver: a session with security, polled tags in Read calls, subscribed tags pushed.

asyncua's auto-reconnect stays off: the supervisor owns reconnects for every protocol, so a
lost connection ends `stream()` (or a `read`) with a DeviceError and `connect` recreates the
session, the subscription and every monitored item. The watchdog (`stream`) catches a
subscription that silently stops delivering while the session looks alive: nothing, not
even a keep-alive, for `stall_after_s` is reported (`degraded`, `subscription_stalled`) and
the subscription recreated; its next data clears the report. Should the recreated
subscriptions stay silent too (RECREATIONS_BEFORE_NEW_SESSION of them), `stream()` ends with
DeviceTimeout and the supervisor opens a new session. asyncua's own watchdog, which
recreates silently, is off so that every stall is seen. Read-only towards the PLC: Read,
Browse, TranslateBrowsePathsToNodeIds, CreateSubscription and CreateMonitoredItems only.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.base import DeviceNotice, ReadPlan
from drivers.errors import (
    DeviceError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    IllegalAddress,
    SecurityRejected,
    ValueTruncated,
)
from drivers.opcua import pki
from drivers.opcua.config import OpcUaDevice, OpcUaTag
from drivers.opcua.publish_decode import DataChanges
from drivers.opcua.publish_hook import PublishHook
from drivers.opcua.security import secure
from drivers.opcua.values import BatchBuilder, batches_of_changes, plausible_time_ns, quality_of
from drivers.samples import SampleBatch

log = structlog.get_logger(__name__)

_SESSION_LOST = frozenset({
    StatusCodes.BadSessionIdInvalid, StatusCodes.BadSessionClosed,
    StatusCodes.BadSecureChannelClosed, StatusCodes.BadConnectionClosed,
    StatusCodes.BadServerNotConnected, StatusCodes.BadShutdown,
    StatusCodes.BadCommunicationError,
})
RECREATIONS_BEFORE_NEW_SESSION = 2
"""Recreated subscriptions that each stayed silent for `stall_after_s` before the session is
given up: a server may keep a session that answers Reads but never publishes again."""
_UNKNOWN_NODE = frozenset({
    StatusCodes.BadNodeIdUnknown, StatusCodes.BadNodeIdInvalid,
    StatusCodes.BadNoMatch, StatusCodes.BadBrowseNameInvalid,
})


@dataclass(frozen=True, slots=True)
class TagValue:
    """One tag's DataValue as the server sent it, for `edge-agent read`: what a technician
    compares with the PLC's own display."""

    tag: OpcUaTag
    value: object
    """The Variant's payload: a number, a bool, a text, a list of these, or None."""
    variant: str | None
    """The Variant's type (`Double`, `Float`, `Boolean`...); None without a value."""
    status: str
    """The StatusCode's name (`Good`, `BadSensorFailure`...)."""
    source_time: datetime | None
    server_time: datetime | None
    error: DeviceError | None = None
    """The server has no such node or browse path: the tag is refused."""


@dataclass(frozen=True, slots=True)
class OpcUaReadPlan:
    """The polled tags of one period: one Read service call."""

    name: str
    interval_s: float
    tags: tuple[str, ...]


def poll_plans(config: OpcUaDevice) -> tuple[OpcUaReadPlan, ...]:
    """One plan per distinct poll period, tags in configuration order."""
    groups: dict[float, list[str]] = {}
    for tag in config.tags:
        if tag.mode == "poll":
            groups.setdefault(tag.poll_interval_s or config.poll_interval_s, []).append(tag.name)
    return tuple(OpcUaReadPlan(f"poll-{period:g}s", period, tuple(names))
                 for period, names in groups.items())


class OpcUaDriver:
    """One OPC UA server (satisfies drivers.base.StreamingDriver)."""

    def __init__(self, config: OpcUaDevice, state_dir: Path, *,
                 with_subscription: bool = True) -> None:
        """`with_subscription=False`: connect without subscribing (`edge-agent read`)."""
        self._config = config
        self._with_subscription = with_subscription
        self._pki = pki.pki_dir(state_dir)
        self._plans = poll_plans(config)
        self._tags = {tag.name: tag for tag in config.tags}
        self._subscribed = [tag for tag in config.tags if tag.mode == "subscribe"]
        self._client: Client | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._tag_errors: dict[str, DeviceError] = {}
        self._cut_logged: set[str] = set()
        """Tags whose arrays were found cut (logged once per driver, not per connection)."""
        self._subscription: Subscription | None = None
        self._handles: dict[int, OpcUaTag] = {}
        self._tag_of_handle = np.zeros(0, dtype=np.int64)
        """Client handle -> index of its tag in `_names` (-1: none), for publish_decode.py."""
        self._names = [tag.name for tag in config.tags]
        self._hook: PublishHook | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._lost_error: DeviceError | None = None
        """Why the session ended, as its first witness said (see `_on_connection_lost`)."""

    @property
    def device(self) -> str:
        return self._config.name

    @property
    def plans(self) -> Sequence[OpcUaReadPlan]:
        return self._plans

    @property
    def tag_errors(self) -> Mapping[str, DeviceError]:
        """Tags the server refuses (no such node or browse path, a monitored item it will not
        create) while the others are read, they arrive as BAD samples when polled; and tags
        whose arrays the default `max_array_length` cuts (`ValueTruncated`), read all the same."""
        return self._tag_errors

    async def connect(self) -> None:
        cfg = self._config
        # asyncua probes the server's state every `watchdog_intervall` with that timeout: a
        # slow link (a VPN over a mobile network) needs the device's timeout, not asyncua's 1 s.
        client = Client(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=cfg.timeout_s)
        client.application_uri = pki.APPLICATION_URI
        client.name = client.description = f"edge-agent {cfg.name}"
        client._stale_check_margin = math.inf  # our watchdog owns stalls (see module docstring)
        self._lost, self._lost_error = asyncio.Event(), None
        client.connection_lost_callback = self._on_connection_lost
        self._client = client
        try:
            await secure(client, cfg, self._pki)
            await client.connect()
            # Before the subscription starts the publish loop. A PublishRequest unanswered for
            # as long as the watchdog waits is lost (publish_hook.py).
            self._hook = PublishHook(client, cfg.name, cfg.stall_after_s)
            self._tag_errors = {}
            self._nodes = {}
            for tag in cfg.tags:
                node = await self._resolve(client, tag)
                if node is not None:
                    self._nodes[tag.name] = node
            if self._subscribed and self._with_subscription:
                await self._subscribe(client)
        except DeviceError:
            raise
        except Exception as exc:
            raise self._classify(exc, "connect") from exc
        log.info("opcua_connected", device=cfg.name, endpoint=cfg.endpoint,
                 policy=cfg.security.policy, mode=cfg.security.mode)

    async def close(self) -> None:
        client, self._client, self._subscription = self._client, None, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self._config.timeout_s)
        except (TimeoutError, OSError, UaError) as exc:
            log.info("opcua_disconnect_unclean", device=self.device, error=str(exc))
            client.disconnect_socket()

    async def read(self, plan: ReadPlan) -> SampleBatch:
        client = self._connected()
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Source
        names = [name for name in plan.tags if name in self._nodes]
        for name in names:
            item = ua.ReadValueId()
            item.NodeId = self._nodes[name]
            item.AttributeId = AttributeIds.Value
            params.NodesToRead.append(item)
        mono_ns, receive_ns = time.monotonic_ns(), time.time_ns()
        try:
            results = await client.uaclient.read(params) if names else []
        except Exception as exc:
            raise self._classify(exc, f"read {plan.name}") from exc
        builder = BatchBuilder(self.device)
        newest = 0
        for name, result in zip(names, results, strict=True):
            self._note_unknown_node(name, result.StatusCode)
            newest = max(newest, self._add(builder, name, result, receive_ns))
        for name in plan.tags:
            if name not in self._nodes:  # its browse path did not resolve
                builder.add(name, None, quality_of(StatusCodes.BadNoMatch), 1)
        # A Read is one instant: the newest plausible source time of its values stands for all.
        return builder.build(newest or receive_ns, mono_ns)

    async def read_values(self) -> list[TagValue]:
        """Every configured tag once, polled and subscribed alike, in configuration order:
        one Read with source and server timestamps."""
        client = self._connected()
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        tags = [tag for tag in self._config.tags if tag.name in self._nodes]
        for tag in tags:
            item = ua.ReadValueId()
            item.NodeId = self._nodes[tag.name]
            item.AttributeId = AttributeIds.Value
            params.NodesToRead.append(item)
        try:
            results = await client.uaclient.read(params) if tags else []
        except Exception as exc:
            raise self._classify(exc, "read") from exc
        read = dict(zip((tag.name for tag in tags), results, strict=True))
        values = []
        for tag in self._config.tags:
            result = read.get(tag.name)
            if result is None:  # its browse path did not resolve
                values.append(TagValue(tag, None, None, "BadNoMatch", None, None,
                                       self._tag_errors.get(tag.name)))
                continue
            self._note_unknown_node(tag.name, result.StatusCode)
            variant = result.Value
            status = result.StatusCode if result.StatusCode is not None else ua.StatusCode()
            refused = self._tag_errors.get(tag.name)
            values.append(TagValue(
                tag, variant.Value if variant is not None else None,
                variant.VariantType.name if variant is not None and variant.Value is not None
                else None, status.name, result.SourceTimestamp, result.ServerTimestamp,
                refused if isinstance(refused, IllegalAddress) else None))
        return values

    async def stream(self) -> AsyncIterator[SampleBatch | DeviceNotice]:
        """Batches of the subscription as they arrive (one per notification time), and the
        watchdog's notices; ends with a DeviceError when the connection is lost."""
        if self._subscription is None:
            await self._lost.wait()
            raise self._lost_cause()
        cfg = self._config
        check_s = min(0.5, cfg.stall_after_s / 4)
        since = time.monotonic()
        stalled = False
        fruitless = 0  # recreated subscriptions that have not been heard from
        while True:
            if self._lost.is_set():
                raise self._lost_cause()
            sub = self._subscription
            events, ended = await self._next_events(sub, check_s)
            if sub.last_publish_at is not None:  # data or a keep-alive: the publishing works
                fruitless = 0
            if events:
                for batch in self._batches(events):
                    stalled = False
                    yield batch
                continue
            if self._lost.is_set():
                continue
            last = sub.last_publish_at or since
            silent_s = time.monotonic() - last
            if ended is None and silent_s < cfg.stall_after_s:
                continue
            detail = (f"the server ended the subscription ({ended})" if ended else
                      f"nothing from the server for {cfg.stall_after_s:g} s, not even a "
                      "keep-alive")
            if fruitless >= RECREATIONS_BEFORE_NEW_SESSION:
                log.warning("opcua_session_renewed", device=self.device, detail=detail,
                            recreated=fruitless)
                raise DeviceTimeout(self.device, f"{detail}, also from {fruitless} new "
                                    "subscriptions: opening a new session")
            if not stalled:
                stalled = True
                yield DeviceNotice("degraded", "subscription_stalled",
                                   detail + "; recreating the subscription")
            log.warning("opcua_subscription_stalled", device=self.device, detail=detail,
                        silent_s=round(silent_s, 1))
            await self._resubscribe()
            fruitless += 1
            since = time.monotonic()

    # -- connection ------------------------------------------------------------------------

    async def _on_connection_lost(self, exc: Exception) -> None:
        """asyncua's supervisor saw the connection die: its liveness probe (a Read of the
        server's state every `timeout_s`) went unanswered, or the socket closed. It then
        tells every subscription `BadShutdown` itself, which is not the server's word."""
        if self._lost.is_set():
            return
        if isinstance(exc, TimeoutError):
            self._lost_error = DeviceTimeout(
                self.device, f"no answer from the server within {self._config.timeout_s:g} s "
                "(its state, read to check the connection): the server is frozen or "
                "overloaded, or the network drops packets")
        else:
            why = f" ({exc})" if str(exc) else ""
            self._lost_error = DeviceUnreachable(
                self.device, f"connection lost{why}: the server closed it, crashed or "
                "restarted, or the network broke it")
        self._lost.set()

    def _lost_cause(self) -> DeviceError:
        return self._lost_error or DeviceUnreachable(self.device, "connection lost")

    def _connected(self) -> Client:
        if self._lost.is_set():
            raise self._lost_cause()
        if self._client is None:
            raise DeviceUnreachable(self.device, "not connected")
        return self._client

    async def _resolve(self, client: Client, tag: OpcUaTag) -> ua.NodeId | None:
        """The tag's NodeId; None (and a tag error) for a browse path the server lacks."""
        if tag.node is not None:
            return ua.NodeId.from_string(tag.node)
        assert tag.browse_path is not None  # the config requires one of the two
        root = client.get_node(tag.browse_root)
        try:
            node: Node = await root.get_child(tag.browse_path.strip("/").split("/"))
        except UaStatusCodeError as exc:
            if exc.code not in _UNKNOWN_NODE:
                raise
            self._refuse(tag, "no such browse path", exc.code)
            return None
        return node.nodeid

    def _refuse(self, tag: OpcUaTag, what: str, code: int) -> None:
        name = ua.StatusCode(ua.UInt32(code)).name
        detail = f"tag {tag.name}: {what} {tag.address} ({name})"
        self._tag_errors[tag.name] = IllegalAddress(self.device, detail, code=code,
                                                    address=tag.address)
        log.warning("opcua_tag_refused", device=self.device, tag=tag.name, node=tag.address,
                    status=name)

    def _note_unknown_node(self, name: str, status: ua.StatusCode | None) -> None:
        """A polled node the server says does not exist is a refused tag until it exists."""
        code = status.value if status is not None else 0
        if code in _UNKNOWN_NODE:
            self._refuse(self._tags[name], "no such node", code)
        elif isinstance(self._tag_errors.get(name), IllegalAddress):
            del self._tag_errors[name]

    def _note_array(self, tag: OpcUaTag, length: int) -> None:
        """An array longer than the tag keeps: said once per tag (log), and while the default
        `max_array_length` cuts it, the device is `degraded` (`array_truncated`) with the
        setting that keeps it whole. A length the technician set is taken as meant."""
        if length <= tag.max_array_length:
            return
        chosen = "max_array_length" in tag.model_fields_set
        if tag.name not in self._cut_logged:
            self._cut_logged.add(tag.name)
            (log.info if chosen else log.warning)(
                "opcua_array_cut", device=self.device, tag=tag.name, length=length,
                max_array_length=tag.max_array_length)
        if not chosen and tag.name not in self._tag_errors:
            self._tag_errors[tag.name] = ValueTruncated(
                self.device, f"tag {tag.name}: arrays of {length} values, the agent keeps the "
                f"first {tag.max_array_length} (max_array_length's default): set "
                f"max_array_length: {length} on the tag to keep them all")

    # -- subscription ----------------------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        cfg = self._config
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = cfg.publishing_interval_s * 1000
        params.RequestedMaxKeepAliveCount = cfg.keepalive_count
        params.RequestedLifetimeCount = cfg.keepalive_count * 3
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        sub = await client.create_subscription(params, None, queue_maxsize=100_000)
        if self._hook is not None:
            self._hook.hook(sub)
        tags = [tag for tag in self._subscribed if tag.name in self._nodes]
        requests, self._handles = [], {}
        index = {name: i for i, name in enumerate(self._names)}
        self._tag_of_handle = np.full(len(tags) + 1, -1, dtype=np.int64)
        for handle, tag in enumerate(tags, start=1):
            requests.append(self._monitored_item(handle, tag))
            self._handles[handle] = tag
            self._tag_of_handle[handle] = index[tag.name]
        results = await sub.create_monitored_items(requests) if requests else []
        for tag, result in zip(tags, results, strict=True):
            if isinstance(result, ua.StatusCode):
                # One bad node must not cost the others their data: report, keep the rest.
                self._refuse(tag, "monitored item refused for", result.value)
        self._subscription = sub

    def _monitored_item(self, handle: int, tag: OpcUaTag) -> ua.MonitoredItemCreateRequest:
        item = ua.ReadValueId()
        item.NodeId = self._nodes[tag.name]
        item.AttributeId = AttributeIds.Value
        mparams = ua.MonitoringParameters()
        mparams.ClientHandle = handle
        mparams.SamplingInterval = tag.sampling_interval_s * 1000
        mparams.QueueSize = tag.queue_size
        mparams.DiscardOldest = True
        if tag.deadband is not None:
            dfilter = ua.DataChangeFilter()
            dfilter.Trigger = ua.DataChangeTrigger.StatusValue
            dfilter.DeadbandType = (ua.DeadbandType.Absolute if tag.deadband.type == "absolute"
                                    else ua.DeadbandType.Percent)
            dfilter.DeadbandValue = tag.deadband.value
            mparams.Filter = dfilter
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = mparams
        return request

    async def _resubscribe(self) -> None:
        """Drop the stalled subscription (best effort: the server may not answer) and make a
        new one; failing that, the connection is treated as lost."""
        client = self._connected()
        old, self._subscription = self._subscription, None
        if old is not None and self._hook is not None:
            self._hook.unhook(old)
        if old is not None:
            try:
                await asyncio.wait_for(old.delete(), self._config.timeout_s)
            except (TimeoutError, OSError, UaError) as exc:
                log.info("opcua_stalled_subscription_not_deleted", device=self.device,
                         error=str(exc))
        try:
            await self._subscribe(client)
        except Exception as exc:
            raise self._classify(exc, "recreate subscription") from exc
        log.info("opcua_subscription_recreated", device=self.device)

    async def _next_events(
        self, sub: Subscription, timeout_s: float
    ) -> tuple[list[DataChangeEvent | DataChanges], str | None]:
        """What the subscription delivered: waits up to `timeout_s` for the first, then takes
        every one already queued, so that a burst becomes few batches. Second: why the
        server ended the subscription, when it said so (None: it did not)."""
        try:
            first = await sub.next_event(timeout_s)
        except StopAsyncIteration:  # asyncua closed it (deleted, or its session lost)
            return [], "closed"
        if first is None:
            return [], None
        raw = [first]
        queue = sub._event_queue  # asyncua has no public non-blocking get
        while queue is not None and not queue.empty():
            item = queue.get_nowait()
            if item is not None:
                raw.append(item)
        events: list[DataChangeEvent | DataChanges] = []
        ended = None
        for event in raw:
            if isinstance(event, DataChangeEvent | DataChanges):
                events.append(event)
            elif isinstance(event, StatusChangeEvent):
                status = ua.StatusCode(event.notification.Status.value)
                if status.value in _SESSION_LOST and not self._lost.is_set():
                    # Only the server's own word: after a lost connection asyncua sends
                    # BadShutdown itself, and `_on_connection_lost` has told what happened.
                    self._lost_error = DeviceUnreachable(
                        self.device, f"the server ended the session ({status.name})"
                        + (": it is shutting down" if status.value == StatusCodes.BadShutdown
                           else ""))
                    self._lost.set()
                elif not status.is_good():  # e.g. BadTimeout: its lifetime ran out
                    ended = status.name
        return events, ended

    def _batches(self, events: list[DataChangeEvent | DataChanges]) -> list[SampleBatch]:
        """One batch per run of notifications that share a time (the server sampled them
        together), in arrival order; a publish decoded into arrays (publish_hook.py) makes
        its batches in a few array operations."""
        receive_ns, mono_ns = time.time_ns(), time.monotonic_ns()
        batches: list[SampleBatch] = []
        builder: BatchBuilder | None = None
        current = -1
        for event in events:
            if isinstance(event, DataChanges):
                if builder is not None and len(builder):
                    batches.append(builder.build(current, mono_ns))
                builder = None
                batches += batches_of_changes(self.device, event, self._tag_of_handle,
                                              self._names, receive_ns, mono_ns)
                continue
            handle = event.data.subscription_data.client_handle
            tag = self._handles.get(handle) if handle is not None else None
            if tag is None:
                continue
            value = event.data.monitored_item.Value
            time_ns = plausible_time_ns(value.SourceTimestamp if value else None, receive_ns)
            if builder is None or time_ns != current:
                if builder is not None and len(builder):
                    batches.append(builder.build(current, mono_ns))
                builder, current = BatchBuilder(self.device), time_ns
            self._add(builder, tag.name, value, receive_ns)
        if builder is not None and len(builder):
            batches.append(builder.build(current, mono_ns))
        return batches

    def _add(self, builder: BatchBuilder, name: str, value: ua.DataValue | None,
             receive_ns: int) -> int:
        """Add one DataValue to the batch; its plausible source time (0 when it has none)."""
        tag = self._tags[name]
        if value is None:
            builder.add(name, None, quality_of(StatusCodes.BadNoData), tag.max_array_length)
            return 0
        code = value.StatusCode.value if value.StatusCode is not None else 0
        payload = value.Value.Value if value.Value is not None else None
        if isinstance(payload, list | tuple):
            self._note_array(tag, len(payload))
        builder.add(name, payload, quality_of(code), tag.max_array_length)
        if value.SourceTimestamp is None:
            return 0
        time_ns = plausible_time_ns(value.SourceTimestamp, receive_ns)
        return 0 if time_ns == receive_ns else time_ns

    def _classify(self, exc: Exception, doing: str) -> DeviceError:
        """asyncua's exceptions as the supervisor's DeviceErrors."""
        name = self.device
        if isinstance(exc, DeviceError):
            return exc
        if self._lost_error is not None:  # the call failed because the connection had died
            return self._lost_error
        if isinstance(exc, TimeoutError):
            return DeviceTimeout(name, f"{doing}: no answer within {self._config.timeout_s} s")
        if isinstance(exc, OSError | ConnectionError):
            return DeviceUnreachable(name, f"{doing}: {self._config.endpoint}: {exc}")
        if isinstance(exc, UaStatusCodeError):
            code = exc.code
            text = f"{doing}: {ua.StatusCode(code).name}"
            if code in _SESSION_LOST:
                return DeviceUnreachable(name, text)
            if code in _UNKNOWN_NODE:
                return IllegalAddress(name, text, code=code)
            if code in (StatusCodes.BadTimeout, StatusCodes.BadRequestTimeout):
                return DeviceTimeout(name, text)
            if code in (StatusCodes.BadIdentityTokenInvalid,
                        StatusCodes.BadIdentityTokenRejected,
                        StatusCodes.BadUserAccessDenied,
                        StatusCodes.BadCertificateUntrusted,
                        StatusCodes.BadSecurityChecksFailed,
                        StatusCodes.BadSecurityPolicyRejected):
                sec = self._config.security
                if sec.user_certificate is not None and code in (
                        StatusCodes.BadUserAccessDenied, StatusCodes.BadIdentityTokenRejected):
                    return SecurityRejected(
                        name, f"{text}: the server does not accept the user certificate "
                        f"{sec.user_certificate}: have it registered as a user on the server")
                return SecurityRejected(name, f"{text}: the server refuses these credentials")
            return DeviceException(name, text, code=code)
        if isinstance(exc, UaError):
            return DeviceException(name, f"{doing}: {exc}", code=0)
        return DeviceError(name, f"{doing}: {type(exc).__name__}: {exc}")
