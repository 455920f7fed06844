"""The Modbus driver: reads a device's poll groups over its line, decodes, survives bad tags.

One driver per device, for Modbus TCP, RTU on a serial line, and RTU over TCP alike:
only the line differs (`drivers/modbus/line.py`). A request the device refuses with
"illegal data address" is split into one request per tag: the tags the device does
accept go on being read (and the request is planned again without the holes it read
over), the ones it refuses are reported once in `tag_errors` and sent as BAD samples,
and are tried again every `BAD_TAG_RETRY_S`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog

from drivers.base import ReadPlan
from drivers.errors import DeviceError, DeviceUnreachable, IllegalAddress, ProtocolError
from drivers.modbus.codec import RequestDecoder
from drivers.modbus.config import ModbusDevice, ModbusTag
from drivers.modbus.line import Line, acquire_line, drop_connection, release_line
from drivers.modbus.plan import ModbusReadPlan, Request, plan_device, plan_requests
from drivers.samples import Quality, SampleBatch

log = structlog.get_logger(__name__)

BAD_TAG_RETRY_S = 600.0
"""How often a tag the device refused is tried again (a PLC program may have been changed)."""


@dataclass
class TagReading:
    """One tag's outcome in one read: for `edge-agent read`, and the batch."""

    tag: ModbusTag
    words: list[int] = field(default_factory=list)
    """Raw registers (or bits) as they arrived."""
    value: float | str | None = None
    """Scaled value (text for a string), None when unreadable."""
    error: DeviceError | None = None


@dataclass
class _GroupState:
    """What the driver learned about a poll group: requests planned around refused tags."""

    requests: tuple[Request, ...]
    bad: dict[str, IllegalAddress] = field(default_factory=dict)
    retry_at: float = 0.0


class ModbusDriver:
    """One Modbus device (satisfies drivers.base.Driver)."""

    def __init__(self, config: ModbusDevice) -> None:
        self._config = config
        self._plans = plan_device(config)
        self._groups = {plan.name: _GroupState(plan.requests) for plan in self._plans}
        self._numeric = {
            plan.name: tuple(
                t.name for r in plan.requests for t in r.tags if t.type != "string"
            )
            for plan in self._plans
        }
        self._tags = {tag.name: tag for tag in config.tags}
        self._position = {plan: {name: i for i, name in enumerate(names)}
                          for plan, names in self._numeric.items()}
        self._decoders: dict[int, tuple[Request, RequestDecoder]] = {}
        self._line: Line | None = None

    @property
    def device(self) -> str:
        return self._config.name

    @property
    def config(self) -> ModbusDevice:
        return self._config

    @property
    def plans(self) -> Sequence[ModbusReadPlan]:
        return self._plans

    @property
    def tag_errors(self) -> Mapping[str, DeviceError]:
        """Tags the device refuses to serve (read as BAD samples), by tag name."""
        return {name: err for group in self._groups.values() for name, err in group.bad.items()}

    async def connect(self) -> None:
        if self._line is None:
            self._line = acquire_line(self._config)
        await self._line.ensure_connected(self.device)

    async def close(self) -> None:
        if self._line is not None:
            release_line(self._line)
            self._line = None

    async def read(self, plan: ReadPlan) -> SampleBatch:
        if not isinstance(plan, ModbusReadPlan):
            raise TypeError(f"{self.device}: not a Modbus plan: {plan!r}")
        time_ns = time.time_ns()
        mono_ns = time.monotonic_ns()
        position = self._position[plan.name]
        values = np.full(len(position), np.nan)  # a refused tag stays NaN, hence BAD
        texts: dict[str, str] = {}
        for request, words in await self._read_words(plan.name):
            decoded = self._decoder(request).decode(words)
            for tag, value in zip(request.tags, decoded, strict=True):
                if isinstance(value, str):
                    texts[tag.name] = value
                else:
                    values[position[tag.name]] = value
        # A NaN or infinity from a float register is a garbage reading, not a value.
        quality = np.where(np.isfinite(values), Quality.GOOD, Quality.BAD).astype(np.uint8)
        return SampleBatch(
            device=self.device,
            tags=self._numeric[plan.name],
            values=values,
            quality=quality,
            time_ns=time_ns,
            mono_ns=mono_ns,
            texts=texts,
        )

    async def read_group(self, group: str) -> list[TagReading]:
        """Every tag of a poll group with its raw words, in plan order; refused tags carry
        their error (for `edge-agent read`: the poll path is `read`)."""
        readings: list[TagReading] = []
        for request, words in await self._read_words(group):
            decoded = self._decoder(request).decode(words)
            for tag, value in zip(request.tags, decoded, strict=True):
                offset = tag.address - request.address
                readings.append(TagReading(tag, words[offset : offset + tag.register_count], value))
        readings.extend(
            TagReading(self._tags[name], error=error)
            for name, error in self._groups[group].bad.items()
        )
        return readings

    async def _read_words(self, group: str) -> list[tuple[Request, list[int]]]:
        """The words of every request of the group that the device serves, splitting a request
        it refuses (the refused tags are then in the group's `bad`)."""
        state = self._groups[group]
        if state.bad and time.monotonic() >= state.retry_at:
            await self._retry_bad(group, state)
        out: list[tuple[Request, list[int]]] = []
        for request in state.requests:
            try:
                out.append((request, await self._request(request)))
            except IllegalAddress as exc:
                if len(request.tags) == 1:
                    self._refuse(state, request.tags[0], exc)
                else:
                    out.extend(await self._split(state, request))
        return out

    def _decoder(self, request: Request) -> RequestDecoder:
        # Keyed by identity: hashing a Request hashes every tag model in it (slow).
        decoder = self._decoders.get(id(request))
        if decoder is None or decoder[0] is not request:
            decoder = (request, RequestDecoder(request.tags, request.address, request.count,
                                               self._config.byte_order))
            self._decoders[id(request)] = decoder
        return decoder[1]

    async def _request(self, request: Request) -> list[int]:
        line = self._line
        if line is None:
            raise DeviceUnreachable(self.device, "not connected", address=request.describe())
        try:
            return await line.read(self.device, self._config.unit, self._config.timeout_s, request)
        except (DeviceUnreachable, ProtocolError):
            # The stream is broken or gone: the next read starts on a fresh connection.
            drop_connection(line)
            raise

    async def _split(self, state: _GroupState, request: Request) -> list[tuple[Request, list[int]]]:
        """Read a refused request tag by tag, then plan it again without what the device refused
        and without reading over holes (the hole may be what it refused)."""
        readings: list[tuple[Request, list[int]]] = []
        good: list[ModbusTag] = []
        for tag in request.tags:
            single = Request.for_tag(tag)
            try:
                words = await self._request(single)
            except IllegalAddress as refused:
                self._refuse(state, tag, refused)
                continue
            good.append(tag)
            readings.append((single, words))
        replanned = plan_requests(good, max_gap_registers=0, max_gap_bits=0) if good else ()
        state.requests = tuple(
            new for old in state.requests for new in ((old,) if old is not request else replanned)
        )
        log.info("modbus_request_split", device=self.device, request=request.describe(),
                 requests=[r.describe() for r in replanned], refused=sorted(state.bad))
        return readings

    def _refuse(self, state: _GroupState, tag: ModbusTag, exc: IllegalAddress) -> None:
        if tag.name in state.bad:
            return
        state.bad[tag.name] = IllegalAddress(
            self.device, f"tag {tag.name}: the device refuses {tag.describe_address()}: "
            f"{exc.detail}",
            code=exc.code, address=tag.describe_address(),
        )
        state.retry_at = time.monotonic() + BAD_TAG_RETRY_S
        state.requests = tuple(
            r for r in state.requests if not (len(r.tags) == 1 and r.tags[0].name == tag.name)
        )

    async def _retry_bad(self, group: str, state: _GroupState) -> None:
        """Try the refused tags again; those now served rejoin the plan."""
        plan = next(p for p in self._plans if p.name == group)
        back: list[str] = []
        for name in list(state.bad):
            tag = self._tags[name]
            try:
                await self._request(Request.for_tag(tag))
            except IllegalAddress:
                continue
            back.append(name)
            del state.bad[name]
        state.retry_at = time.monotonic() + BAD_TAG_RETRY_S
        if back:
            refused = set(state.bad)
            tags = [t for r in plan.requests for t in r.tags if t.name not in refused]
            state.requests = plan_requests(
                tags, max_gap_registers=0 if refused else self._config.max_gap_registers,
                max_gap_bits=0 if refused else self._config.max_gap_bits,
            )
            log.info("modbus_tags_served_again", device=self.device, tags=back)
