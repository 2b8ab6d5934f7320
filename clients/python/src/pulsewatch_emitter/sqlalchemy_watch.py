"""SQLAlchemy pool gauges from the pool's events, and query durations from cursor events."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from .figures import LatencyReservoir


class PoolWatch:
    """Connections in use (checkouts less checkins), callers blocked in checkout (inside
    ``pool.connect()`` while every connection the pool may open is out), the pool's size
    (``pool_size`` + ``max_overflow``), and each cursor execution's duration."""

    def __init__(self, engine: Any, queries: LatencyReservoir) -> None:
        from sqlalchemy import event

        self.engine = engine
        self.queries = queries
        self.in_use = 0
        self.connecting = 0
        self._lock = threading.Lock()
        self._wrapped_pool: Optional[Any] = None
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine, "after_cursor_execute", self._after_execute)
        event.listen(engine, "handle_error", self._on_error)
        event.listen(engine, "engine_disposed", self._on_dispose)
        self._wrap_connect()

    def _checkout(self, *_args: Any) -> None:
        with self._lock:
            self.in_use += 1

    def _checkin(self, *_args: Any) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - 1)

    def _before_execute(self, conn: Any, *_args: Any) -> None:
        conn.info.setdefault("pulsewatch_query_start", []).append(time.perf_counter())

    def _after_execute(self, conn: Any, *_args: Any) -> None:
        starts = conn.info.get("pulsewatch_query_start")
        if starts:
            self.queries.add((time.perf_counter() - starts.pop()) * 1000.0)

    def _on_error(self, context: Any) -> None:
        conn = getattr(context, "connection", None)
        starts = conn.info.get("pulsewatch_query_start") if conn is not None else None
        if starts:
            self.queries.add((time.perf_counter() - starts.pop()) * 1000.0)

    def _on_dispose(self, *_args: Any) -> None:
        self._wrap_connect()

    def _wrap_connect(self) -> None:
        pool = self.engine.pool
        if pool is self._wrapped_pool:
            return
        original = pool.connect
        watch = self

        def connect() -> Any:
            with watch._lock:
                watch.connecting += 1
            try:
                return original()
            finally:
                with watch._lock:
                    watch.connecting -= 1

        pool.connect = connect
        self._wrapped_pool = pool

    def size(self) -> Optional[int]:
        pool = self.engine.pool
        size = getattr(pool, "size", None)
        if not callable(size):
            return None
        total = int(size())
        overflow = getattr(pool, "_max_overflow", 0)
        if isinstance(overflow, int) and overflow > 0:
            total += overflow
        return total

    def read(self) -> tuple[Optional[int], int, int]:
        self._wrap_connect()
        size = self.size()
        with self._lock:
            in_use, connecting = self.in_use, self.connecting
        waiting = connecting if size is not None and in_use >= size else 0
        return size, in_use, waiting
