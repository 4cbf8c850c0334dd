"""A per-process memo in front of the shared cache, for the hottest reads only.

A read from the shared cache (Redis in production) is a network round trip — about
150 µs with the Python client, more than the rest of a warm prompt fetch. Entries
here live for `STUDIO_HOT_MEMO_SECONDS` (default 1 s): a change made through another
web process reaches this one within that time; a change made through this process
drops its entries at once (the `forget_*` functions call `HOT.pop`).

What goes here: API token entries, permission sets, prompt bodies — all of them
also in the shared cache, which stays the source every process agrees on.
"""

import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache


class ProcessMemo:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._data: dict[str, tuple[float, Any]] = {}
        self._max = max_entries

    def get(self, key: str) -> Any:
        hit = self._data.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def set(self, key: str, value: Any) -> None:
        seconds = settings.STUDIO_HOT_MEMO_SECONDS
        if seconds <= 0:
            return
        if len(self._data) >= self._max:
            self._data.clear()
        self._data[key] = (time.monotonic() + seconds, value)

    def pop(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


HOT = ProcessMemo()


def read_through(key: str, load: Callable[[], Any], ttl: int) -> Any:
    """`key` from this process's memo, else the shared cache, else `load()` (stored in
    both; None — nothing found — is not stored). For entries whose changes drop the key
    in both places (tokens, service keys)."""
    entry = HOT.get(key)
    if entry is None:
        entry = cache.get(key)
        if entry is None:
            entry = load()
            if entry is None:
                return None
            cache.set(key, entry, ttl)
        HOT.set(key, entry)
    return entry
