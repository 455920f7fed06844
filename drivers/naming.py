"""Names in the configuration: they end up in topics, events and logs, so each must be unique."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

_TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


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


def check_tag_name(name: str) -> str:
    """`name`, or ValueError: a tag name starts with a letter and holds only letters, digits,
    '_', '.' or '-' (it ends up in events, logs and `check --explain`)."""
    if not _TAG_NAME.match(name):
        raise ValueError(
            f"tag name {name!r} must start with a letter and hold only letters, "
            "digits, '_', '.' or '-'"
        )
    return name
