"""Cleanup helpers the handlers call: a request throttle, a garbage collection with cache
clearing, and a pool recycle."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any, Callable

log = logging.getLogger("pulsewatch_emitter")


class Throttle:
    """Answers 503 with ``Retry-After`` to a request that finds ``max_in_flight`` or more
    requests already in flight, while it is switched on (by the emitter, while one of its
    alert kinds fires)."""

    def __init__(self, max_in_flight: int, retry_after: int = 5) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self.rejected_total = 0
        self._active: set[str] = set()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._active)

    def switch_on(self, reason: str) -> None:
        with self._lock:
            if not self._active:
                log.warning("request throttle on (%s): beyond %d in flight, 503", reason, self.max_in_flight)
            self._active.add(reason)

    def switch_off(self, reason: str) -> None:
        with self._lock:
            self._active.discard(reason)
            if not self._active:
                log.info("request throttle off")

    def rejects(self, in_flight_before: int) -> bool:
        """Whether a request arriving with ``in_flight_before`` others in flight is refused."""
        if self._active and in_flight_before >= self.max_in_flight:
            self.rejected_total += 1
            return True
        return False


def collect_garbage(*caches: Any) -> Callable[[dict[str, Any]], int]:
    """A handler that clears the given caches (anything with ``clear()`` or ``cache_clear()``,
    as ``functools.lru_cache`` functions have) and runs a full garbage collection; it
    returns the number of objects collected."""

    def collect_garbage_and_clear_caches(_alert: dict[str, Any]) -> int:
        for cache in caches:
            clear = getattr(cache, "cache_clear", None) or getattr(cache, "clear", None)
            if clear is not None:
                clear()
        collected = gc.collect()
        log.info("garbage collection: %d objects collected, %d caches cleared", collected, len(caches))
        return collected

    return collect_garbage_and_clear_caches


def recycle_pool(engine: Any) -> Callable[[dict[str, Any]], None]:
    """A handler that disposes of a SQLAlchemy engine's pool: connections checked in are
    closed, checked-out ones are closed when returned, new ones are opened on demand."""

    def recycle_pool(_alert: dict[str, Any]) -> None:
        engine.dispose()
        log.info("database pool recycled")

    return recycle_pool
