"""A bounded per-process cache of what never changes once made: a published guardrail version compiled,
a trained router version's predictor decoded. Keyed by (owner id, version), each is loaded at most once
per process while it stays cached; past the bound the oldest entry goes first. Two threads may load the
same key at once: both get a correct value, and the last one stays."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[int, int]


class VersionCache(Generic[T]):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: dict[Key, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Key) -> T | None:
        """The cached value, or None (no load)."""
        return self._items.get(key)

    def get_or_load(self, key: Key, load: Callable[[], T]) -> T:
        """The cached value, else `load()`'s, kept for the next caller."""
        found = self._items.get(key)
        if found is not None:
            return found
        value = load()
        with self._lock:
            if len(self._items) >= self.limit:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value
        return value

    def forget(self, owner_id: int) -> None:
        """Drop every version of one owner (deleted: its versions will not be asked for again)."""
        with self._lock:
            for key in [key for key in self._items if key[0] == owner_id]:
                self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
