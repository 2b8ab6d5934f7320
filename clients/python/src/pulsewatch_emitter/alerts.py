"""Follows one application's alerts on the alerts topic and runs the handlers registered for
their kinds, each once per firing, on a background thread with a timeout."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .encoding import UnknownAlertEncoding, decode_alert

log = logging.getLogger("pulsewatch_emitter")

Alert = dict[str, Any]
Handler = Callable[[Alert], Any]


@dataclass
class Registration:
    kind: str
    handler: Handler
    state: str = "FIRING"
    timeout: float = 30.0


@dataclass
class Outcome:
    """What one handler run did: ``ok``, ``timeout`` or ``error``."""

    kind: str
    handler: str
    result: str
    alert_id: str
    seconds: float
    at: float = field(default_factory=time.time)

    def label(self) -> str:
        return f"{self.kind}:{self.handler}={self.result}"


class HandlerRunner:
    """Runs handlers off the consumer's thread; a handler that overruns its timeout is left
    to finish on its own (Python cannot stop a thread) and reported as ``timeout``."""

    def __init__(self) -> None:
        self.registrations: list[Registration] = []
        self.outcomes: list[Outcome] = []
        self.runs_total = 0
        self._lock = threading.Lock()
        self._work: queue.Queue[Optional[tuple[Registration, Alert]]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        # alert_id -> started_at of the firing already handled, per registration.
        self._handled: dict[tuple[int, str], int] = {}

    def register(self, registration: Registration) -> None:
        self.registrations.append(registration)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="pulsewatch-handlers", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._work.put(None)
            self._thread.join(timeout=2)
            self._thread = None

    def dispatch(self, alert: Alert) -> None:
        for index, reg in enumerate(self.registrations):
            if reg.kind not in (alert.get("kind"), "*") or reg.state != alert.get("state"):
                continue
            if reg.state == "FIRING":
                # Once per firing: a severity change is a new FIRING of the same alert, not a
                # new firing; a firing after a RESOLVED starts later.
                key = (index, str(alert.get("alert_id")))
                if self._handled.get(key) == alert.get("started_at"):
                    continue
                self._handled[key] = int(alert.get("started_at") or 0)
            self._work.put((reg, alert))

    def _loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            reg, alert = item
            self._run(reg, alert)

    def _run(self, reg: Registration, alert: Alert) -> None:
        name = getattr(reg.handler, "__name__", "handler")
        result: list[str] = []

        def call() -> None:
            try:
                reg.handler(alert)
                result.append("ok")
            except Exception:
                log.exception("handler %s for %s failed", name, reg.kind)
                result.append("error")

        started = time.monotonic()
        worker = threading.Thread(target=call, name=f"pulsewatch-handler-{name}", daemon=True)
        worker.start()
        worker.join(reg.timeout)
        outcome = Outcome(
            kind=str(alert.get("kind")),
            handler=name,
            result=result[0] if result else "timeout",
            alert_id=str(alert.get("alert_id")),
            seconds=time.monotonic() - started,
        )
        log.info(
            "ran %s for %s %s (%s): %s in %.3f s",
            name,
            alert.get("kind"),
            alert.get("state"),
            alert.get("alert_id"),
            outcome.result,
            outcome.seconds,
        )
        with self._lock:
            self.runs_total += 1
            self.outcomes.append(outcome)

    def take_outcomes(self) -> list[Outcome]:
        with self._lock:
            taken, self.outcomes = self.outcomes, []
        return taken


class AlertFollower:
    """A consumer of the alerts topic (read_committed) that keeps the records keyed by this
    application and, when an instance id is given, the ones about it or about the whole
    application."""

    def __init__(
        self,
        brokers: str,
        topic: str,
        app_id: str,
        instance_id: Optional[str],
        on_alert: Callable[[Alert], None],
        *,
        config: Optional[dict[str, Any]] = None,
    ) -> None:
        self.brokers = brokers
        self.topic = topic
        self.app_id = app_id
        self.instance_id = instance_id
        self.on_alert = on_alert
        self.config = config or {}
        self.firing: dict[str, Alert] = {}
        self.undecodable = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pulsewatch-alerts", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the consumer has its partitions."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def concerns_us(self, alert: Alert) -> bool:
        if alert.get("app_id") != self.app_id:
            return False
        other = alert.get("instance_id")
        return self.instance_id is None or other is None or other == self.instance_id

    def handle_record(self, key: Optional[bytes], value: Optional[bytes]) -> None:
        if key is None or key.decode(errors="replace") != self.app_id or value is None:
            return
        try:
            alert = decode_alert(value)
        except (UnknownAlertEncoding, ValueError, EOFError) as e:
            self.undecodable += 1
            log.warning("undecodable alert record: %s", e)
            return
        if not self.concerns_us(alert):
            return
        if alert.get("state") == "FIRING":
            self.firing[str(alert["alert_id"])] = alert
        else:
            self.firing.pop(str(alert["alert_id"]), None)
        self.on_alert(alert)

    def _loop(self) -> None:
        from confluent_kafka import Consumer

        conf: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            # One group per process: every process sees every alert of its application.
            "group.id": f"pulsewatch-emitter-{self.app_id}-{uuid.uuid4()}",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "client.id": "pulsewatch-emitter-alerts",
        }
        conf.update(self.config)

        def assigned(_consumer: Any, _partitions: Any) -> None:
            self._ready.set()

        consumer = Consumer(conf)
        try:
            consumer.subscribe([self.topic], on_assign=assigned)
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    log.debug("alerts consumer: %s", msg.error())
                    continue
                try:
                    self.handle_record(msg.key(), msg.value())
                except Exception:
                    log.exception("alert dispatch failed")
        finally:
            consumer.close()
