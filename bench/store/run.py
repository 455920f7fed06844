"""The store benchmark: durable writes, disk bytes, replay to a broker, and memory while a large
backlog drains, each beside a baseline measured in the same run on the same machine.

    python bench/store/run.py                  # the full run (a few minutes on 2 cores)
    python bench/store/run.py --quick          # a smoke run with tiny sizes
    make bench                                 # the full run, written to bench/results/store.md

Prints a markdown report (bench/README.md says what each number means). A benchmark, not
a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workload import GATEWAY, event_pool, events, fill_store, io_counters

import agent.events
from agent.config.models import StoreConfig
from agent.store import EventStore
from agent.store.inspect import files_of
from agent.testing import Mosquitto, describe_machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOPIC = f"default/{GATEWAY}/compressor-1/window"


@dataclass(frozen=True)
class Sizes:
    write: int
    replay: int
    backlog: int
    repeat: int


FULL = Sizes(write=100_000, replay=100_000, backlog=1_000_000, repeat=3)
QUICK = Sizes(write=2_000, replay=2_000, backlog=5_000, repeat=1)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1 and 2: durable writes and the bytes they cost ---------------------------------------


@dataclass
class Written:
    seconds: float
    events: int
    io: dict[str, int] | None
    """Difference of /proc/self/io over the run, close included."""
    file_bytes: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def per_event(self, key: str) -> float | None:
        return None if self.io is None else self.io[key] / self.events


def io_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {key: after[key] - before[key] for key in after}


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_of(path) if p.exists())


async def write_through_store(path: Path, count: int) -> tuple[Written, list[bytes]]:
    """`EventStore.put` in batches of `commit_max_events`, each awaited until committed."""
    defaults = StoreConfig()
    store = await EventStore.open(path, GATEWAY, commit_interval_s=defaults.commit_interval_s,
                                  commit_max_events=defaults.commit_max_events)
    committed = store.commit_signal()
    writer = asyncio.create_task(store.writer())
    stream = events(count, event_pool())
    before, started = io_counters(), time.perf_counter()
    while batch := list(itertools.islice(stream, defaults.commit_max_events)):
        committed.clear()
        store.put(batch)
        await committed.wait()
    seconds = time.perf_counter() - started
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    payloads = [row.payload for row in await store.read_after(0, count)]
    await store.close()
    written = Written(seconds, count, io_delta(before, io_counters()), file_bytes(path))
    return written, payloads


def write_bare(path: Path, payloads: list[bytes], batch: int) -> Written:
    """The floor: the same bytes, the same batches, the store's journal mode and
    synchronous=FULL, nothing else."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=PERSIST")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    before, started = io_counters(), time.perf_counter()
    for first in range(0, len(payloads), batch):
        rows = [(first + i + 1, p) for i, p in enumerate(payloads[first:first + batch])]
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO outbox (seq, payload) VALUES (?, ?)", rows)
        db.execute("COMMIT")
    seconds = time.perf_counter() - started
    db.close()
    return Written(seconds, len(payloads), io_delta(before, io_counters()), file_bytes(path))


@dataclass
class WriteBench:
    store: list[Written] = field(default_factory=list)
    bare: list[Written] = field(default_factory=list)
    payload_bytes: float = 0.0


def bench_writes(work: Path, sizes: Sizes) -> WriteBench:
    result = WriteBench()
    batch = StoreConfig().commit_max_events
    for run in range(sizes.repeat):
        progress(f"writes {run + 1}/{sizes.repeat}: EventStore, {sizes.write} events")
        store_path = work / f"write-store-{run}.sqlite"
        written, payloads = asyncio.run(write_through_store(store_path, sizes.write))
        result.store.append(written)
        result.payload_bytes = statistics.fmean(len(p) for p in payloads)
        progress(f"writes {run + 1}/{sizes.repeat}: bare SQLite, {len(payloads)} events")
        bare_path = work / f"write-bare-{run}.sqlite"
        result.bare.append(write_bare(bare_path, payloads, batch))
        for path in (store_path, bare_path):
            for leftover in path.parent.glob(f"{path.name}*"):
                leftover.unlink()
    return result


# --- 3 and 4: replay to a broker, memory while draining ------------------------------------


@dataclass
class Drained:
    events: int
    seconds: float
    rss_kb: dict[str, int]
    """Resident memory of the draining process: ready, 25 %, 50 %, 75 %, drained, peak."""
    max_inflight: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def drain_in_child(store: Path, broker: Mosquitto, expected: int) -> Drained:
    """drain.py in a fresh process, so that its memory is the uplink's and the store's alone."""
    child = subprocess.run(
        [sys.executable, str(HERE / "drain.py"), str(store), broker.host, str(broker.port),
         str(expected)],
        capture_output=True, text=True, check=False, timeout=3600,
    )
    if child.returncode != 0:
        raise RuntimeError(f"drain.py failed ({child.returncode}):\n{child.stderr[-3000:]}")
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    rss: dict[str, int] = {}
    for line in lines:
        if line["phase"] == "ready":
            rss["ready"] = line["rss_kb"]
            max_inflight = line["max_inflight"]
        elif line["phase"] == "draining":
            rss[f"{line['share']:.0%}"] = line["rss_kb"]
        else:
            rss["drained"] = line["rss_kb"]
            rss["peak"] = line["peak_rss_kb"]
            events_sent, seconds = line["events"], line["seconds"]
    return Drained(events_sent, seconds, rss, max_inflight)


def mosquitto_pub(broker: Mosquitto, lines: Path, count: int, max_inflight: int) -> float | None:
    """Seconds for `mosquitto_pub -l` to send every line at QoS 1 (None if not installed)."""
    binary = shutil.which("mosquitto_pub")
    if binary is None:
        return None
    started = time.perf_counter()
    with open(lines, "rb") as stdin:
        subprocess.run(
            [binary, "-h", broker.host, "-p", str(broker.port), "-t", TOPIC, "-q", "1",
             "-V", "mqttv5", "-M", str(max_inflight), "-l"],
            stdin=stdin, check=True, timeout=3600,
        )
    return time.perf_counter() - started


async def sent_payload_bytes(path: Path, sample: int = 1000) -> float:
    """Mean size of the messages the uplink sends from this store (flagged as replayed)."""
    store = await EventStore.open(path, GATEWAY)
    rows = await store.read_after(0, sample)
    await store.close()
    mark: Callable[[bytes], bytes] = getattr(agent.events, "mark_historical", lambda p: p)
    return statistics.fmean(len(mark(row.payload)) for row in rows)


def copy_store(source: Path, target: Path) -> None:
    for path in files_of(source):
        if path.exists():
            shutil.copyfile(path, target.with_name(target.name + path.name[len(source.name):]))


@dataclass
class ReplayBench:
    uplink: list[Drained] = field(default_factory=list)
    mosquitto_pub: list[float] = field(default_factory=list)
    message_bytes: int = 0
    events: int = 0
    fill_seconds: float = 0.0


def bench_replay(work: Path, sizes: Sizes, broker: Mosquitto) -> ReplayBench:
    result = ReplayBench(events=sizes.replay)
    template = work / "replay-template.sqlite"
    progress(f"replay: filling a backlog of {sizes.replay} events")
    started = time.perf_counter()
    asyncio.run(fill_store(template, sizes.replay, event_pool()))
    result.fill_seconds = time.perf_counter() - started
    result.message_bytes = round(asyncio.run(sent_payload_bytes(template)))
    lines = work / "mosquitto_pub-lines.txt"
    # mosquitto_pub -l sends each line, cut at a newline or NUL: printable bytes, same size.
    lines.write_bytes((b"x" * result.message_bytes + b"\n") * sizes.replay)
    for run in range(sizes.repeat):
        store = work / "replay.sqlite"
        copy_store(template, store)
        progress(f"replay {run + 1}/{sizes.repeat}: MqttUplink, {sizes.replay} events")
        drained = drain_in_child(store, broker, sizes.replay)
        result.uplink.append(drained)
        progress(f"replay {run + 1}/{sizes.repeat}: mosquitto_pub, {sizes.replay} messages")
        seconds = mosquitto_pub(broker, lines, sizes.replay, drained.max_inflight)
        if seconds is not None:
            result.mosquitto_pub.append(seconds)
        for leftover in work.glob("replay.sqlite*"):
            leftover.unlink()
    return result


@dataclass
class BacklogBench:
    events: int
    fill_seconds: float
    drained: Drained


def bench_backlog(work: Path, sizes: Sizes, broker: Mosquitto) -> BacklogBench:
    store = work / "backlog.sqlite"
    needed = sizes.backlog * 2_000  # payload, row and index, journal: generous
    free = shutil.disk_usage(work).free
    if free < needed:
        raise SystemExit(f"{work} has {free >> 20} MiB free; a backlog of {sizes.backlog} "
                         f"needs about {needed >> 20} MiB (use --dir or a smaller --backlog)")
    progress(f"backlog: filling {sizes.backlog} events through EventStore")
    started = time.perf_counter()
    asyncio.run(fill_store(store, sizes.backlog, event_pool()))
    fill_seconds = time.perf_counter() - started
    progress(f"backlog: draining {sizes.backlog} events through MqttUplink")
    return BacklogBench(sizes.backlog, fill_seconds, drain_in_child(store, broker, sizes.backlog))


# --- the report -----------------------------------------------------------------------------


def machine() -> str:
    return f"{describe_machine()}, SQLite {sqlite3.sqlite_version}"


def filesystem(path: Path) -> str:
    """The mount holding `path` (its type and device), from /proc/self/mounts."""
    best = ("", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) >= len(best[0]):
                best = (mount, kind, device)
    return f"{best[1]} on {best[2]}"


def revision() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "agent"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"git {head}" + (" with uncommitted changes in agent/" if dirty else "")


def mosquitto_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        from agent.testing import mosquitto_binary

        out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, check=False,
                             timeout=10).stdout
        return out.splitlines()[0].strip()
    return "mosquitto (version unknown)"


def num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, baseline: float | None) -> str:
    return "n/a" if value is None or not baseline else f"{value / baseline:.2f}"


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def report(args: argparse.Namespace, sizes: Sizes, work: Path, writes: WriteBench,
           replay: ReplayBench, backlog: BacklogBench) -> str:
    defaults = StoreConfig()
    out = [
        "# Store benchmark" + (" (quick smoke run: sizes too small to mean anything)"
                               if args.quick else ""),
        "",
        (f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {revision()}; "
         f"`{shlex.join(['python', 'bench/store/run.py', *sys.argv[1:]])}`."),
        f"Machine: {machine()}; {mosquitto_version()}.",
        f"Files in a temporary directory under {work.parent} ({filesystem(work)}).",
        (f"Medians of {sizes.repeat} runs where it says so; every ratio is to the baseline "
         "measured in the same run."),
        "",
        (f"## Durable writes: {sizes.write:,} window events of 7 tags "
         f"({writes.payload_bytes:.0f} B each), median of {sizes.repeat}"),
        "",
        ("| path | events/s | ratio | disk bytes/event (write_bytes) | write() bytes/event "
         "(wchar) | file bytes/event |"),
        "|---|---:|---:|---:|---:|---:|",
    ]
    bare_rate = statistics.median(w.rate for w in writes.bare)
    store_name = (f"`EventStore`: put, commit every {defaults.commit_max_events} events "
                  f"(commit_interval_s {defaults.commit_interval_s}), journal kept in place (PERSIST), "
                  "synchronous=FULL")
    bare_name = (f"bare SQLite: same payloads, {defaults.commit_max_events} rows per "
                 "transaction, journal kept in place (PERSIST), synchronous=FULL")
    for name, runs in ((store_name, writes.store), (bare_name, writes.bare)):
        rate = statistics.median(w.rate for w in runs)
        out.append(
            f"| {name} | {num(rate)} | {ratio(rate, bare_rate)} "
            f"| {num(median_of([w.per_event('write_bytes') for w in runs]))} "
            f"| {num(median_of([w.per_event('wchar') for w in runs]))} "
            f"| {num(statistics.median(w.file_bytes / w.events for w in runs))} |"
        )
    pub = median_of([replay.events / s for s in replay.mosquitto_pub]) \
        if replay.mosquitto_pub else None
    uplink = statistics.median(d.rate for d in replay.uplink)
    inflight = replay.uplink[0].max_inflight
    out += [
        "",
        (f"## Replay of a stored backlog to Mosquitto at QoS 1: {replay.events:,} messages of "
         f"{replay.message_bytes} B, median of {sizes.repeat}"),
        "",
        "| path | events/s | ratio |",
        "|---|---:|---:|",
        (f"| `MqttUplink` reading `EventStore` (MQTT 5, max_inflight {inflight}, "
         f"replay rate cap lifted) | {num(uplink)} | {ratio(uplink, pub)} |"),
        (f"| `mosquitto_pub -l -q 1 -V mqttv5 -M {inflight}` (payload: printable bytes of the "
         f"same size) | {num(pub)} | {'1.00' if pub else 'n/a (mosquitto_pub not installed)'} |"),
        "",
        "## Memory while a backlog drains (resident set of the draining process, MiB)",
        "",
        ("| backlog | filled in s (EventStore) | ready | 25 % | 50 % | 75 % | drained | peak "
         "(VmHWM) | drained events/s |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(replay.events, replay.fill_seconds, replay.uplink[0]),
            (backlog.events, backlog.fill_seconds, backlog.drained)]
    for count, fill, drained in rows:
        mib = [num(drained.rss_kb.get(key, 0) / 1024, 1)
               for key in ("ready", "25%", "50%", "75%", "drained", "peak")]
        out.append(f"| {count:,} | {num(fill, 1)} | " + " | ".join(mib)
                   + f" | {num(drained.rate)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke test")
    parser.add_argument("--backlog", type=int, help=f"backlog to drain (default {FULL.backlog:,})")
    parser.add_argument("--write-events", type=int, help=f"events written (default {FULL.write:,})")
    parser.add_argument("--replay-events", type=int,
                        help=f"events replayed (default {FULL.replay:,})")
    parser.add_argument("--repeat", type=int, help=f"runs of the write and replay measures "
                        f"(default {FULL.repeat})")
    parser.add_argument("--dir", type=Path, default=HERE.parent,
                        help="where the temporary stores go: a real disk, not tmpfs "
                        "(default: bench/)")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = Sizes(write=args.write_events or base.write, replay=args.replay_events or base.replay,
                  backlog=args.backlog or base.backlog, repeat=args.repeat or base.repeat)
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".store-bench-", dir=args.dir))
    started = time.perf_counter()
    try:
        writes = bench_writes(work, sizes)
        with Mosquitto() as broker:
            replay = bench_replay(work, sizes, broker)
            backlog = bench_backlog(work, sizes, broker)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(args, sizes, work, writes, replay, backlog)
    text += f"\nWhole run: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        progress(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
