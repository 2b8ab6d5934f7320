"""Where beats go: Kafka (Avro single-object or JSON records keyed by app_id) or the HTTP
ingest endpoint (NDJSON batches). Both run on the emitter's background thread only."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections import deque
from typing import Any, Callable, Optional

from .encoding import encode_avro, encode_json

log = logging.getLogger("pulsewatch_emitter")

Beat = dict[str, Any]
DropCallback = Callable[[int], None]


class Transport:
    """Takes beats off the left of the queue as it can; what it cannot deliver it reports
    through ``on_drop``."""

    def send(self, queue: deque[Beat]) -> None:
        raise NotImplementedError

    def poll(self) -> None:
        """Serves delivery reports, if the transport has any."""

    def close(self, timeout: float) -> None:
        """Delivers what is in flight within ``timeout`` seconds; what is left is dropped."""


class KafkaTransport(Transport):
    def __init__(
        self,
        brokers: str,
        topic: str,
        on_drop: DropCallback,
        *,
        encoding: str = "avro",
        delivery_timeout: float = 10.0,
        max_in_flight: int = 100,
        config: Optional[dict[str, Any]] = None,
    ) -> None:
        from confluent_kafka import Producer

        if encoding not in ("avro", "json"):
            raise ValueError(f"encoding must be 'avro' or 'json', not {encoding!r}")
        self.topic = topic
        self.on_drop = on_drop
        self.encode = encode_avro if encoding == "avro" else encode_json
        self.max_in_flight = max_in_flight
        conf: dict[str, Any] = {
            "bootstrap.servers": brokers,
            "client.id": "pulsewatch-emitter",
            "acks": "all",
            "enable.idempotence": True,
            # The Java client's partitioner, as pulsewatch's producers use: one app, one partition.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            # A beat not delivered in this long is dropped and counted, never retried forever.
            "message.timeout.ms": max(1000, int(delivery_timeout * 1000)),
            "queue.buffering.max.messages": max(10, max_in_flight * 2),
            "socket.connection.setup.timeout.ms": max(1000, int(delivery_timeout * 1000)),
        }
        conf.update(config or {})
        self.producer = Producer(conf)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            log.warning("heartbeat not delivered: %s", err)
            self.on_drop(1)

    def send(self, queue: deque[Beat]) -> None:
        while queue and len(self.producer) < self.max_in_flight:
            beat = queue.popleft()
            try:
                self.producer.produce(
                    self.topic,
                    key=str(beat["app_id"]).encode(),
                    value=self.encode(beat),
                    on_delivery=self._delivered,
                )
            except BufferError:
                queue.appendleft(beat)
                break
        self.producer.poll(0)

    def poll(self) -> None:
        self.producer.poll(0)

    def close(self, timeout: float) -> None:
        left = self.producer.flush(timeout)
        if left:
            log.warning("%d heartbeats not delivered at shutdown", left)
            self.on_drop(left)


class HttpTransport(Transport):
    """``POST {ingest_url}/v1/heartbeats/batch`` with NDJSON; retried beats keep their seq,
    so the ingest stage does not produce them twice."""

    def __init__(
        self,
        ingest_url: str,
        on_drop: DropCallback,
        *,
        token: Optional[str] = None,
        timeout: float = 2.0,
        max_batch: int = 500,
    ) -> None:
        self.url = ingest_url.rstrip("/") + "/v1/heartbeats/batch"
        self.on_drop = on_drop
        self.token = token
        self.timeout = timeout
        self.max_batch = max_batch

    def _post(self, batch: list[Beat]) -> int:
        body = b"".join(encode_json(beat) + b"\n" for beat in batch)
        headers = {"Content-Type": "application/x-ndjson"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = int(response.status)
                payload = response.read()
        except urllib.error.HTTPError as e:
            status, payload = int(e.code), e.read()
        if status < 300 or status == 207:
            refused = _refused_count(payload)
            if refused:
                log.warning("ingest refused %d heartbeats: %s", refused, payload[:300])
                self.on_drop(refused)
        return status

    def send(self, queue: deque[Beat]) -> None:
        while queue:
            batch = list(queue)[: self.max_batch]
            try:
                status = self._post(batch)
            except (OSError, ValueError) as e:
                log.debug("ingest unreachable: %s", e)
                return
            if status in (408, 429) or status >= 500:
                return  # kept for the next round; the queue's bound drops the oldest
            for _ in batch:
                queue.popleft()
            if 400 <= status < 500:
                log.warning("ingest answered %d; %d heartbeats dropped", status, len(batch))
                self.on_drop(len(batch))

    def close(self, timeout: float) -> None:
        pass


def _refused_count(payload: bytes) -> int:
    try:
        answer = json.loads(payload or b"{}")
    except ValueError:
        return 0
    if isinstance(answer, dict):
        refused = answer.get("refused") or answer.get("rejected")
        if isinstance(refused, list):
            return len(refused)
        if isinstance(refused, int):
            return refused
    return 0
