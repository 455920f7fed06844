"""The Modbus benchmark: the client CPU a poll of 1,000 tags costs the agent, beside a bare
pymodbus loop issuing the very same requests in the same run.

    python bench/modbus/run.py                  # 1,000 tags, 5 rounds of 100 polls per path
    python bench/modbus/run.py --quick          # a smoke run: 50 tags, 3 polls
    python bench/modbus/run.py --profile 20     # also cProfile the driver's own work (stderr)
    make bench                                  # the full run, into bench/results/modbus.md

The device is plc-sim's Modbus TCP server (bench/modbus/server.py) in a process of its
own, so that only the client's CPU is counted. Prints a markdown report (bench/README.md
says what each number means). A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import math
import os
import pstats
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymodbus
from pymodbus.client import AsyncModbusTcpClient
from tagmap import SyntheticTag, synthetic_tags

from agent.testing import describe_machine, stop_process
from drivers.modbus.config import ModbusTag, ModbusTcpDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import Request
from drivers.samples import Quality
from plc_sim.registers import float32

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Sizes:
    tags: int
    polls: int
    """Polls of every plan per measured round."""
    rounds: int
    """Rounds per path, interleaved; the report gives medians."""
    warmup: int


FULL = Sizes(tags=1000, polls=100, rounds=5, warmup=10)
QUICK = Sizes(tags=50, polls=3, rounds=1, warmup=1)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the device -----------------------------------------------------------------------------


def start_server(tags: int) -> tuple[subprocess.Popen[str], int]:
    """server.py in its own process; its port from the JSON line it prints once listening."""
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), str(tags)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()  # blocks until listening, or "" if it died
    try:
        return server, int(json.loads(line)["port"])
    except (ValueError, KeyError):
        stop_process(server)
        raise RuntimeError(f"bench/modbus/server.py did not start (exit {server.poll()})") from None


def stop_server(server: subprocess.Popen[str]) -> None:
    assert server.stdin is not None
    server.stdin.close()  # the server stops on end of input
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        stop_process(server)


def device_config(tags: list[SyntheticTag], port: int) -> ModbusTcpDevice:
    return ModbusTcpDevice(
        name="bench", protocol="modbus-tcp", host=HOST, port=port,
        tags=[ModbusTag(name=t.name, table=t.table, address=t.address, type=t.type)
              for t in tags],
    )


# --- the three paths ------------------------------------------------------------------------


Poll = Callable[[], Awaitable[None]]


def agent_poll(driver: ModbusDriver) -> Poll:
    """What the agent's device task does each poll: `read(plan)` for every plan."""
    plans = driver.plans

    async def poll() -> None:
        for plan in plans:
            await driver.read(plan)

    return poll


def bare_poll(client: AsyncModbusTcpClient, requests: list[Request]) -> Poll:
    """The baseline: the same requests through the same pymodbus client, nothing decoded."""
    calls: list[tuple[Callable[..., Awaitable[Any]], int, int]] = [
        ({"holding": client.read_holding_registers, "input": client.read_input_registers}
         [r.table], r.address, r.count)
        for r in requests
    ]

    async def poll() -> None:
        for read, address, count in calls:
            response = await read(address, count=count, device_id=1)
            if response.isError():
                raise RuntimeError(f"the server refused {address}+{count}: {response}")

    return poll


Words = dict[tuple[str, int, int], list[int]]


async def words_served(client: AsyncModbusTcpClient, requests: list[Request]) -> Words:
    """Each request's answer, by (table, address, count): hashing a Request hashes its tags."""
    out: Words = {}
    for r in requests:
        read = client.read_holding_registers if r.table == "holding" else client.read_input_registers
        out[r.table, r.address, r.count] = list(
            (await read(r.address, count=r.count, device_id=1)).registers)
    return out


def offline_driver(config: ModbusTcpDevice, words: Words) -> ModbusDriver:
    """A driver whose line is a dict of the words the server sent: `read` without I/O, so
    what it costs is the driver's own work (decode, readings, the SampleBatch)."""
    driver = ModbusDriver(config)

    async def request(request: Request) -> list[int]:
        return words[request.table, request.address, request.count]

    driver._request = request  # type: ignore[method-assign]  # the one seam below the line
    return driver


def check_decoded(driver: ModbusDriver, tags: list[SyntheticTag]) -> Poll:
    """Before anything is timed: the agent's path decodes exactly the values served."""
    expected = {t.name: float32(t.value) if t.type == "float32" else float(t.value) for t in tags}

    async def check() -> None:
        seen: dict[str, float] = {}
        for plan in driver.plans:
            batch = await driver.read(plan)
            if (batch.quality != Quality.GOOD).any():
                raise SystemExit(f"BAD samples in {plan.name}: {driver.tag_errors}")
            seen.update(zip(batch.tags, batch.values.tolist(), strict=True))
        if seen != expected:
            wrong = sorted(n for n in expected if not math.isclose(seen.get(n, math.nan), expected[n]))
            raise SystemExit(f"the driver decoded other values than served: {wrong[:10]}")

    return check


# --- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    cpu_s: float
    """process_time() over the round: this process's CPU, user and system."""
    wall_s: float
    polls: int


async def timed(poll: Poll, polls: int) -> Round:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(polls):
        await poll()
    return Round(time.process_time() - cpu, time.perf_counter() - wall, polls)


@dataclass
class Measured:
    name: str
    poll: Poll
    rounds: list[Round]

    def cpu_per_poll(self) -> float:
        return statistics.median(r.cpu_s / r.polls for r in self.rounds)

    def wall_per_poll(self) -> float:
        return statistics.median(r.wall_s / r.polls for r in self.rounds)


async def measure(sizes: Sizes, port: int, profile_top: int) -> tuple[list[Measured], dict[str, Any]]:
    tags = synthetic_tags(sizes.tags)
    config = device_config(tags, port)
    driver = ModbusDriver(config)
    await driver.connect()
    requests = [r for plan in driver.plans for r in plan.requests]
    client = AsyncModbusTcpClient(HOST, port=port, timeout=config.timeout_s, retries=0,
                                  reconnect_delay=0, name="baseline")
    if not await client.connect():
        raise SystemExit(f"the baseline client cannot connect to {HOST}:{port}")
    try:
        await check_decoded(driver, tags)()
        offline = offline_driver(config, await words_served(client, requests))
        await check_decoded(offline, tags)()
        paths = [
            Measured("agent", agent_poll(driver), []),
            Measured("baseline", bare_poll(client, requests), []),
            Measured("decode", agent_poll(offline), []),
        ]
        for path in paths:
            await timed(path.poll, sizes.warmup)
        for n in range(sizes.rounds):
            progress(f"round {n + 1}/{sizes.rounds}: {sizes.polls} polls per path")
            # Interleaved, so that a busy moment of a shared machine spreads over every path.
            for path in paths if n % 2 == 0 else paths[::-1]:
                path.rounds.append(await timed(path.poll, sizes.polls))
        if profile_top:  # the driver's own work: the I/O under it is the baseline's
            await profile(paths[2].poll, sizes.polls, profile_top)
    finally:
        client.close()
        await driver.close()
    shape = {
        "tags": len(tags),
        "requests": len(requests),
        "registers": sum(r.count for r in requests),
        "types": {kind: sum(t.type == kind for t in tags) for kind in ("float32", "uint16", "int32")},
        "tables": {table: sum(r.table == table for r in requests) for table in ("holding", "input")},
    }
    return paths, shape


async def profile(poll: Poll, polls: int, top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(polls):
        await poll()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)
    print(f"cProfile of `ModbusDriver.read` without I/O, {polls} polls, by own time:\n"
          f"{out.getvalue()}",
          file=sys.stderr)


# --- the report -----------------------------------------------------------------------------


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{describe_machine()}, pymodbus {pymodbus.__version__}; "
            f"load average at the start {load}")


def revision() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "drivers"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"git {head}" + (" with uncommitted changes in drivers/" if dirty else "")


def report(args: argparse.Namespace, sizes: Sizes, paths: list[Measured], shape: dict[str, Any],
           load: str) -> str:
    agent, baseline, decode = paths
    tags, registers = shape["tags"], shape["registers"]
    base_cpu = baseline.cpu_per_poll()
    names = {
        "agent": "agent: `ModbusDriver.read(plan)` for every plan (pymodbus, decode, SampleBatch)",
        "baseline": "baseline: bare `AsyncModbusTcpClient` loop, same requests, nothing decoded",
        "decode": "agent without I/O: `ModbusDriver.read` on words already received",
    }
    out = [
        "# Modbus benchmark" + (" (quick smoke run: sizes too small to mean anything)"
                                if args.quick else ""),
        "",
        (f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {revision()}; "
         f"`{shlex.join(['python', 'bench/modbus/run.py', *sys.argv[1:]])}`."),
        f"Machine: {load}.",
        (f"Device: plc-sim's Modbus TCP server on {HOST}, in its own process (its CPU is not "
         f"counted). {tags:,} tags ({shape['types']['float32']} float32, "
         f"{shape['types']['uint16']} uint16, {shape['types']['int32']} int32) in "
         f"{registers:,} registers, read by {shape['requests']} requests "
         f"({shape['tables']['holding']} holding, {shape['tables']['input']} input)."),
        (f"Each path polls the whole device {sizes.polls} times per round, {sizes.rounds} "
         f"round{'s' if sizes.rounds > 1 else ''} per path interleaved, after {sizes.warmup} "
         f"warm-up poll{'s' if sizes.warmup > 1 else ''}; medians over rounds. "
         "CPU is `time.process_time()` of the client process; every ratio is to the baseline "
         "of the same run."),
        "",
        ("| path | CPU ms per poll | CPU ms per 1,000 tags per poll | wall ms per poll "
         "| registers per CPU second | tags per CPU second | CPU ratio to baseline |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path in paths:
        cpu = path.cpu_per_poll()
        out.append(
            f"| {names[path.name]} | {cpu * 1e3:,.2f} | {cpu * 1e3 * 1000 / tags:,.2f} "
            f"| {path.wall_per_poll() * 1e3:,.2f} | {registers / cpu:,.0f} | {tags / cpu:,.0f} "
            f"| {cpu / base_cpu:.2f} |"
        )
    extra = agent.cpu_per_poll() - base_cpu
    out += [
        "",
        (f"Agent over baseline: {extra * 1e3:+,.2f} ms of CPU per poll "
         f"({extra * 1e6 / tags:+,.2f} µs per tag); the driver's own work without I/O: "
         f"{decode.cpu_per_poll() * 1e6 / tags:,.2f} µs per tag."),
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 tags, 3 polls: a smoke test")
    parser.add_argument("--tags", type=int, help=f"tags of the device (default {FULL.tags:,})")
    parser.add_argument("--polls", type=int, help=f"polls per path per round (default {FULL.polls})")
    parser.add_argument("--rounds", type=int, help=f"rounds per path (default {FULL.rounds})")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also cProfile the driver without I/O and print its top N functions "
                        "to stderr (not part of the timed rounds)")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = Sizes(tags=args.tags or base.tags, polls=args.polls or base.polls,
                  rounds=args.rounds or base.rounds, warmup=base.warmup)
    load = machine()  # before the server starts
    started = time.perf_counter()
    progress(f"starting the server with {sizes.tags} tags")
    server, port = start_server(sizes.tags)
    try:
        paths, shape = asyncio.run(measure(sizes, port, args.profile))
    finally:
        stop_server(server)
    text = report(args, sizes, paths, shape, load)
    text += f"\nWhole run: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        progress(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
