"""Names in the configuration: they end up in topics, events and logs, so each must be unique."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def require_unique_names(items: Sequence[N], what: str) -> Sequence[N]:
    """`items` unchanged, or ValueError naming the first name used twice."""
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"{what} name {item.name!r} is used twice")
        seen.add(item.name)
    return items
