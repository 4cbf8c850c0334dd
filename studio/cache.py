"""Cache backends: a Redis one that reuses its client, and a file one with atomic counters.

Django's RedisCache builds a new `redis.Redis` for every operation, and redis-py 8
copies ~170 response callbacks into each one: about 115 µs of CPU per cache call,
more than the hot prompt fetch spends on everything else. A client per connection
pool is thread-safe (the pool hands out connections), so keep one.
"""

import fcntl
import os
import pickle
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class PooledRedisCacheClient(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            client = self._client(connection_pool=self._get_connection_pool(write))
            self._clients[index] = client
        return client


class StudioRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = PooledRedisCacheClient

    def redis_client(self) -> Any:
        """The redis-py client of the primary, for atomic scripts (gateway quotas)."""
        return self._cache.get_client(write=True)


class StudioFileBasedCache(FileBasedCache):
    """Django's file cache, with `add` and `incr` atomic across processes.

    Django's versions read, then write: two processes counting at once (API budgets,
    failed sign-ins) can both read 4 and both write 5. Here they take an exclusive lock
    on a file in the cache directory first, so every count is kept — what django-axes'
    cache handler and apps/core/ratelimit.py need on the embedded default.
    """

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the counters' lock: read-modify-write under it is atomic across
        processes. Inside, use get/set only (add and incr take the lock themselves)."""
        os.makedirs(self._dir, 0o700, exist_ok=True)
        fd = os.open(os.path.join(self._dir, "counters.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        with self.exclusive():
            return super().add(key, value, timeout, version)

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        """Add `delta`, keeping the entry's expiry (Django's incr resets it to the default
        timeout, which would let a long counting window lapse early)."""
        with self.exclusive():
            path = self._key_to_file(key, version)
            try:
                with open(path, "rb") as f:
                    expiry = pickle.load(f)
                    value = pickle.loads(zlib.decompress(f.read()))
            except (FileNotFoundError, EOFError, zlib.error, pickle.UnpicklingError):
                raise ValueError(f"Key '{key}' not found") from None
            now = time.time()
            if expiry is not None and expiry <= now:
                raise ValueError(f"Key '{key}' not found")
            value += delta
            self.set(key, value, None if expiry is None else expiry - now, version)
            return value
