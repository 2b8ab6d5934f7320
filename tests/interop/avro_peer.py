"""An outside Avro peer for pulsewatch's interoperability tests.

Encodes and decodes with fastavro and talks to Kafka with confluent-kafka, so that the
tests check pulsewatch against implementations that are not its own:

  avro_peer.py header SCHEMA.avsc
      the single-object header fastavro's fingerprint gives, and the canonical form
  avro_peer.py encode < beats.jsonl > records.hex
      each heartbeat (JSON, the contract's field names) as a single-object record, in hex
  avro_peer.py decode-alerts < records.hex > alerts.jsonl
      each alert record (hex) decoded, after checking its header is the specification's
  avro_peer.py produce --brokers B --topic T < beats.jsonl
      the beats produced to Kafka, keyed by app_id, single-object encoded
  avro_peer.py read-alerts --brokers B --topic T --count N > alerts.jsonl
      N alerts read with read_committed and decoded
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def load(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = parse_schema(json.loads((SCHEMAS / name).read_text()))
    return parsed


def header_of(schema_path: Path) -> tuple[bytes, str]:
    form = to_parsing_canonical_form(json.loads(schema_path.read_text()))
    return b"\xc3\x01" + bytes.fromhex(fingerprint(form, "CRC-64-AVRO")), form


def encode_beat(schema: dict[str, Any], header: bytes, beat: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(header)
    schemaless_writer(out, schema, beat)
    return out.getvalue()


def decode_alert(schema: dict[str, Any], header: bytes, record: bytes) -> dict[str, Any]:
    if record[:10] != header:
        raise ValueError(f"alert header {record[:10].hex()} is not the specification's {header.hex()}")
    body = io.BytesIO(record[10:])
    alert = schemaless_reader(body, schema, None)
    if body.read():
        raise ValueError("trailing bytes after the alert")
    assert isinstance(alert, dict)
    for field in ("started_at", "event_at", "emitted_at"):
        alert[field] = int(alert[field].timestamp() * 1000)
    return alert


def beats_from_stdin(schema: dict[str, Any], header: bytes) -> list[tuple[str, bytes]]:
    from datetime import datetime, timezone

    out = []
    for line in sys.stdin:
        if line.strip():
            beat = json.loads(line)
            beat["sent_at"] = datetime.fromtimestamp(beat["sent_at"] / 1000, tz=timezone.utc)
            out.append((beat["app_id"], encode_beat(schema, header, beat)))
    return out


def produce(brokers: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "enable.idempotence": True,
            "acks": "all",
            # The Java client's partitioner, as pulsewatch's producers use: one app, one partition.
            "partitioner": "murmur2_random",
        }
    )
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered)
        producer.poll(0)
    if producer.flush(30) != 0 or failures:
        raise SystemExit(f"not every beat was delivered: {failures[:3]}")


def read_alerts(brokers: str, topic: str, count: int, timeout_s: float) -> list[bytes]:
    import time

    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"avro-peer-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    records: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            records.append(msg.value())
    consumer.close()
    return records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["header", "encode", "decode-alerts", "produce", "read-alerts"])
    parser.add_argument("schema", nargs="?")
    parser.add_argument("--brokers")
    parser.add_argument("--topic")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    heartbeat_header, _ = header_of(SCHEMAS / "heartbeat.avsc")
    alert_header, _ = header_of(SCHEMAS / "alert.avsc")
    if args.command == "header":
        header, form = header_of(Path(args.schema))
        print(header.hex())
        print(form)
    elif args.command == "encode":
        for _, record in beats_from_stdin(load("heartbeat.avsc"), heartbeat_header):
            print(record.hex())
    elif args.command == "produce":
        produce(args.brokers, args.topic, beats_from_stdin(load("heartbeat.avsc"), heartbeat_header))
    else:
        if args.command == "read-alerts":
            records = read_alerts(args.brokers, args.topic, args.count, args.timeout)
        else:
            records = [bytes.fromhex(line.strip()) for line in sys.stdin if line.strip()]
        schema = load("alert.avsc")
        for record in records:
            print(json.dumps(decode_alert(schema, alert_header, record), sort_keys=True))


if __name__ == "__main__":
    main()
