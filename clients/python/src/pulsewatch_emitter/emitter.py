"""The emitter: a background thread that sends one heartbeat per interval, Flask and
SQLAlchemy hooks that only update counters on the request path, and the alert handlers."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, TypeVar

from .alerts import Alert, AlertFollower, HandlerRunner, Registration
from .figures import LatencyReservoir, ProcessFigures, percentile
from .helpers import Throttle
from .transport import HttpTransport, KafkaTransport, Transport

log = logging.getLogger("pulsewatch_emitter")

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = ("STARTING", "OK", "DEGRADED", "STOPPING")
MAX_LABELS = 64
MAX_LABEL_VALUE = 1024


def default_instance_id() -> str:
    """``POD_NAME`` (else the host name) and the process id: one instance per worker process."""
    host = os.environ.get("POD_NAME") or socket.gethostname() or "localhost"
    return f"{host}-{os.getpid()}"


def alerts_topic_for(topic: str) -> str:
    """``topic`` with its trailing ``heartbeats`` replaced by ``alerts``, so a prefix carries over."""
    if topic.endswith("heartbeats"):
        return topic[: -len("heartbeats")] + "alerts"
    return topic + "-alerts"


class Emitter:
    """Reports one application process to pulsewatch and runs handlers on its alerts.

    Kafka is used when ``brokers`` is given (or ``PULSEWATCH_BROKERS`` set), else the HTTP
    ingest endpoint at ``ingest_url`` (or ``PULSEWATCH_INGEST_URL``), with ``token`` (or
    ``PULSEWATCH_TOKEN``) as its bearer token.
    """

    def __init__(
        self,
        app_id: str,
        *,
        brokers: Optional[str] = None,
        topic: str = "heartbeats",
        alerts_topic: Optional[str] = None,
        ingest_url: Optional[str] = None,
        token: Optional[str] = None,
        interval: float = 5.0,
        instance_id: Optional[str] = None,
        labels: Optional[dict[str, str]] = None,
        encoding: str = "avro",
        queue_size: int = 100,
        slow_request_threshold: float = 5.0,
        disk_path: str = "/",
        delivery_timeout: Optional[float] = None,
        follow_alerts: bool = True,
        install_signal_handler: bool = True,
        kafka_config: Optional[dict[str, Any]] = None,
    ) -> None:
        if not app_id or len(app_id) > 200:
            raise ValueError("app_id must have 1 to 200 characters")
        if not 1.0 <= interval <= 86400.0:
            raise ValueError("interval must be between 1 s and 1 day")
        self.app_id = app_id
        self.brokers = brokers or os.environ.get("PULSEWATCH_BROKERS") or None
        self.ingest_url = ingest_url or os.environ.get("PULSEWATCH_INGEST_URL") or None
        self.token = token or os.environ.get("PULSEWATCH_TOKEN") or None
        if self.brokers is None and self.ingest_url is None:
            raise ValueError("give brokers or ingest_url (or PULSEWATCH_BROKERS / PULSEWATCH_INGEST_URL)")
        self.topic = topic
        self.alerts_topic = alerts_topic or alerts_topic_for(topic)
        self.interval = float(interval)
        self._explicit_instance_id = instance_id
        self.instance_id = instance_id or default_instance_id()
        self.labels = dict(labels or {})
        self.encoding = encoding
        self.queue_size = max(1, queue_size)
        self.slow_request_threshold = slow_request_threshold
        self.disk_path = disk_path
        self.delivery_timeout = delivery_timeout if delivery_timeout is not None else max(10.0, 2 * interval)
        self.follow_alerts = follow_alerts
        self.install_signal_handler = install_signal_handler
        self.kafka_config = dict(kafka_config or {})
        #: Set to report DEGRADED (the emitter also does while its throttle is on).
        self.degraded = False
        self.throttle_guard: Optional[Throttle] = None
        self._throttle_kinds: tuple[str, ...] = ()
        self._runner = HandlerRunner()
        self._pools: list[Any] = []
        self._sessions_fn: Optional[Callable[[], int]] = None
        self._flask = False
        self._cache_used = False
        self.last_beat: Optional[dict[str, Any]] = None
        self._reset_process_state()
        self._atexit_registered = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    # -- state that belongs to one process -----------------------------------------------

    def _reset_process_state(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[dict[str, Any]] = deque()
        self._seq = 0
        self.requests_total = 0
        self.errors_total = 0
        self.slow_requests_total = 0
        self.cache_hits_total = 0
        self.cache_misses_total = 0
        self.in_flight = 0
        self.dropped_total = 0
        self._latency = LatencyReservoir()
        self._queries = LatencyReservoir()
        self._figures: Optional[ProcessFigures] = None
        self._transport: Optional[Transport] = None
        self._follower: Optional[AlertFollower] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._started = False
        self._pid = os.getpid()
        for pool in getattr(self, "_pools", []):
            pool.queries = self._queries

    def _after_fork(self) -> None:
        was_started = self._started
        self._reset_process_state()
        if self._explicit_instance_id is None:
            self.instance_id = default_instance_id()
        if was_started:
            self.start()

    # -- what the application wires -------------------------------------------------------

    def init_app(self, app: Any) -> None:
        """Counts a Flask application's requests, errors, slow requests, latency and requests
        in flight; answers 503 while the throttle is on and the app is over its limit."""
        from flask import Response, g

        self._flask = True
        emitter = self

        def before_request() -> Optional[Any]:
            with emitter._lock:
                before = emitter.in_flight
                emitter.in_flight += 1
            g.pulsewatch = [time.perf_counter(), 0]
            guard = emitter.throttle_guard
            if guard is not None and guard.rejects(before):
                return Response(
                    "overloaded, retry later\n",
                    status=503,
                    headers={"Retry-After": str(guard.retry_after)},
                    mimetype="text/plain",
                )
            return None

        def after_request(response: Any) -> Any:
            state = g.get("pulsewatch")
            if state is not None:
                state[1] = response.status_code
            return response

        def teardown_request(exc: Optional[BaseException]) -> None:
            state = g.pop("pulsewatch", None)
            if state is None:
                return
            elapsed = time.perf_counter() - state[0]
            emitter._latency.add(elapsed * 1000.0)
            with emitter._lock:
                emitter.in_flight -= 1
                emitter.requests_total += 1
                if exc is not None or state[1] >= 500:
                    emitter.errors_total += 1
                if elapsed >= emitter.slow_request_threshold:
                    emitter.slow_requests_total += 1

        app.before_request_funcs.setdefault(None, []).insert(0, before_request)
        app.after_request(after_request)
        app.teardown_request(teardown_request)
        app.extensions["pulsewatch"] = self

    def watch_engine(self, engine: Any) -> None:
        """Reports a SQLAlchemy engine's pool (size, in use, waiting) and query p95."""
        from .sqlalchemy_watch import PoolWatch

        self._pools.append(PoolWatch(engine, self._queries))

    def sessions(self, fn: Callable[[], int]) -> Callable[[], int]:
        """The callable that counts active sessions (usable as a decorator)."""
        self._sessions_fn = fn
        return fn

    def cache_hit(self, n: int = 1) -> None:
        with self._lock:
            self._cache_used = True
            self.cache_hits_total += n

    def cache_miss(self, n: int = 1) -> None:
        with self._lock:
            self._cache_used = True
            self.cache_misses_total += n

    def on(self, kind: str, *, state: str = "FIRING", timeout: float = 30.0) -> Callable[[F], F]:
        """Registers a handler for an alert kind (``"*"`` for every kind): called with the
        alert (a dict of the Alert contract's fields) once per firing, or on each RESOLVED
        with ``state="RESOLVED"``, on a background thread, given ``timeout`` seconds."""
        if state not in ("FIRING", "RESOLVED"):
            raise ValueError("state must be FIRING or RESOLVED")

        def register(fn: F) -> F:
            self._runner.register(Registration(kind=kind, handler=fn, state=state, timeout=timeout))
            return fn

        return register

    def throttle(
        self,
        max_in_flight: int,
        *,
        kinds: tuple[str, ...] = ("DB_POOL_SATURATED", "CONNECTION_LEAK_SUSPECTED"),
        retry_after: int = 5,
    ) -> Throttle:
        """A request throttle, on while an alert of one of ``kinds`` fires for this process
        (or the whole application): requests beyond ``max_in_flight`` get 503."""
        self.throttle_guard = Throttle(max_in_flight, retry_after)
        self._throttle_kinds = kinds
        return self.throttle_guard

    @property
    def handler_runs_total(self) -> int:
        return self._runner.runs_total

    @property
    def firing(self) -> dict[str, Alert]:
        """The alerts firing for this process or application, by alert id, as followed."""
        return dict(self._follower.firing) if self._follower is not None else {}

    # -- lifecycle ------------------------------------------------------------------------

    def _drop(self, n: int) -> None:
        with self._lock:
            self.dropped_total += n

    def _make_transport(self) -> Transport:
        if self.brokers is not None:
            return KafkaTransport(
                self.brokers,
                self.topic,
                self._drop,
                encoding=self.encoding,
                delivery_timeout=self.delivery_timeout,
                config=self.kafka_config,
            )
        assert self.ingest_url is not None
        return HttpTransport(self.ingest_url, self._drop, token=self.token)

    def start(self) -> None:
        """Sends STARTING, then a beat every interval from a background thread; follows the
        application's alerts when there is something to run on them."""
        if self._started:
            return
        self._started = True
        self._stop.clear()
        self._figures = ProcessFigures(self.disk_path)
        self._transport = self._make_transport()
        self._enqueue(self.build_beat("STARTING"))
        self._send()
        self._runner.start()
        wants_alerts = self.follow_alerts and (self._runner.registrations or self.throttle_guard is not None)
        if wants_alerts and self.brokers is not None:
            self._follower = AlertFollower(
                self.brokers,
                self.alerts_topic,
                self.app_id,
                self.instance_id,
                self._on_alert,
                config={k: v for k, v in self.kafka_config.items() if k.startswith(("security.", "sasl."))},
            )
            self._follower.start()
        elif wants_alerts:
            log.warning("alert handlers need Kafka (brokers): alerts are not followed over HTTP")
        self._thread = threading.Thread(target=self._loop, name="pulsewatch-emitter", daemon=True)
        self._thread.start()
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        if self.install_signal_handler:
            self._install_sigterm()

    def wait_following(self, timeout: float = 30.0) -> bool:
        """True once the alert consumer has its partitions (alerts from then on are seen)."""
        return self._follower is not None and self._follower.wait_ready(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Sends STOPPING (a clean shutdown: no missed-beat alert) and stops the threads."""
        if not self._started or self._pid != os.getpid():
            return
        self._started = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._enqueue(self.build_beat("STOPPING"))
        self._send()
        if self._transport is not None:
            self._transport.close(timeout)
            self._transport = None
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self._runner.stop()

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if getattr(previous, "_pulsewatch", False):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            self.stop()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        on_sigterm._pulsewatch = True  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, on_sigterm)

    # -- the background thread ------------------------------------------------------------

    def _loop(self) -> None:
        next_at = time.monotonic() + self.interval
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                try:
                    self._enqueue(self.build_beat(None))
                except Exception:
                    log.exception("could not read the figures")
                self._send()
                next_at = max(next_at + self.interval, now + self.interval / 2)
            if self._transport is not None:
                try:
                    self._transport.poll()
                except Exception:
                    log.exception("transport poll failed")
            self._stop.wait(min(0.2, max(0.0, next_at - time.monotonic())))

    def _enqueue(self, beat: dict[str, Any]) -> None:
        with self._lock:
            while len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped_total += 1
            self._queue.append(beat)

    def _send(self) -> None:
        if self._transport is None:
            return
        try:
            self._transport.send(self._queue)
        except Exception:
            log.exception("could not send heartbeats")

    def _on_alert(self, alert: Alert) -> None:
        guard = self.throttle_guard
        if guard is not None and alert.get("kind") in self._throttle_kinds:
            if alert.get("state") == "FIRING":
                guard.switch_on(str(alert.get("alert_id")))
            else:
                guard.switch_off(str(alert.get("alert_id")))
        self._runner.dispatch(alert)

    def build_beat(self, status: Optional[str] = None) -> dict[str, Any]:
        """The next heartbeat, with the figures read now (``status`` None: OK or DEGRADED)."""
        if self._figures is None:
            self._figures = ProcessFigures(self.disk_path)
        guard = self.throttle_guard
        if status is None:
            status = "DEGRADED" if self.degraded or (guard is not None and guard.active) else "OK"
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        figures = self._figures.read()
        latencies = self._latency.drain()
        queries = self._queries.drain()
        pool_size: Optional[int] = None
        pool_in_use: Optional[int] = None
        pool_waiting: Optional[int] = None
        for pool in self._pools:
            size, in_use, waiting = pool.read()
            if size is not None:
                pool_size = (pool_size or 0) + size
            pool_in_use = (pool_in_use or 0) + in_use
            pool_waiting = (pool_waiting or 0) + waiting
        sessions: Optional[int] = None
        if self._sessions_fn is not None:
            try:
                sessions = max(0, int(self._sessions_fn()))
            except Exception:
                log.exception("the sessions callable failed")
        with self._lock:
            self._seq += 1
            seq = self._seq
            counters = (self.requests_total, self.errors_total, self.slow_requests_total, self.in_flight)
            cache = (self.cache_hits_total, self.cache_misses_total) if self._cache_used else (None, None)
            dropped = self.dropped_total
        labels = dict(list(self.labels.items())[: MAX_LABELS - 6])
        labels["pulsewatch.emitter"] = "python"
        if dropped:
            labels["pulsewatch.dropped_beats"] = str(dropped)
        outcomes = self._runner.take_outcomes()
        if outcomes:
            labels["pulsewatch.handlers_ran"] = ";".join(o.label() for o in outcomes)[:MAX_LABEL_VALUE]
        if self._runner.runs_total:
            labels["pulsewatch.handler_runs"] = str(self._runner.runs_total)
        if guard is not None:
            labels["pulsewatch.throttle"] = "on" if guard.active else "off"
            labels["pulsewatch.throttled_requests"] = str(guard.rejected_total)
        beat: dict[str, Any] = {
            "app_id": self.app_id,
            "instance_id": self.instance_id,
            "seq": seq,
            "sent_at": int(time.time() * 1000),
            "interval_ms": int(self.interval * 1000),
            "status": status,
            **figures,
            "db_pool_size": pool_size,
            "db_pool_in_use": pool_in_use,
            "db_pool_waiting": pool_waiting,
            "request_queue_depth": max(0, counters[3]) if self._flask else None,
            "sessions_active": sessions,
            "requests_total": counters[0] if self._flask else None,
            "errors_total": counters[1] if self._flask else None,
            "slow_requests_total": counters[2] if self._flask else None,
            "cache_hits_total": cache[0],
            "cache_misses_total": cache[1],
            "latency_p95_ms": percentile(latencies, 0.95),
            "latency_p99_ms": percentile(latencies, 0.99),
            "db_query_p95_ms": percentile(queries, 0.95),
            "labels": {k[:128]: v[:MAX_LABEL_VALUE] for k, v in labels.items()},
        }
        self.last_beat = beat
        return beat
