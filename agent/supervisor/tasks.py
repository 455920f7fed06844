"""Stopping tasks for sure.

Python 3.11's `asyncio.wait_for` can swallow a cancellation that arrives just as the
awaited future completes (CPython gh-86296, fixed in 3.12). A task caught that way goes
on running, and whoever waits for it (a shutdown, a TaskGroup) waits for ever. The store's
writer and pymodbus's requests both await through `wait_for`, so every stop here cancels,
waits briefly, and cancels again until the tasks are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_AFTER_S = 0.25


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
