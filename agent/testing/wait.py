"""Waiting on a condition with a deadline, never sleep-and-hope: for sync and async tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class _Deadline:
    def __init__(self, timeout_s: float, what: str) -> None:
        self._at = time.monotonic() + timeout_s
        self._timeout_s, self._what = timeout_s, what

    def check(self) -> None:
        """Raise TimeoutError naming what was awaited once the deadline has passed."""
        if time.monotonic() >= self._at:
            raise TimeoutError(f"timed out after {self._timeout_s} s waiting for {self._what}")


def wait_until(
    predicate: Callable[[], T], *, timeout_s: float, what: str, interval_s: float = 0.02
) -> T:
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = _Deadline(timeout_s, what)
    while True:
        result = predicate()
        if result:
            return result
        deadline.check()
        time.sleep(interval_s)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]], *, timeout_s: float, what: str,
    interval_s: float = 0.02,
) -> T:
    """`wait_until` on the test's own event loop; `predicate` may be a coroutine function."""
    deadline = _Deadline(timeout_s, what)
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        deadline.check()
        await asyncio.sleep(interval_s)
