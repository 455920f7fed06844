"""Where a benchmark ran: the head of every report, so numbers are never read apart from it."""

from __future__ import annotations

import os
from pathlib import Path


def describe_machine() -> str:
    """`2 CPUs (AMD EPYC ...), 23.5 GiB RAM, Linux 6.1, Python 3.11.7`: the head of every
    benchmark's report, so that numbers are never read apart from where they were measured."""
    import platform

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return (f"{len(os.sched_getaffinity(0))} CPUs ({cpu}), {mem_kb / 2**20:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")
