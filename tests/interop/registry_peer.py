"""An outside Schema Registry producer for pulsewatch's tests: confluent-kafka's own
AvroSerializer (Confluent wire format, schema registered under <topic>-value) against the
registry of the local stack.

  registry_peer.py produce --brokers B --topic T --registry URL --variant V < beats.jsonl
      the beats (JSON, the contract's field names) produced to Kafka, keyed by app_id, each
      written with one schema; prints the schema id the serializer used. Variants:
        ours     schemas/heartbeat.avsc as shipped
        added    a field added, with a default (`build`, a string)
        dropped  an optional field dropped (`threads`)
  registry_peer.py read-alerts --brokers B --topic T --registry URL --count N > alerts.jsonl
      N alerts read with read_committed and decoded by AvroDeserializer (the writer schema
      fetched from the registry by the record's id)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "heartbeat.avsc").read_text())


def variant(name: str) -> dict[str, Any]:
    schema = copy.deepcopy(SCHEMA)
    if name == "added":
        schema["fields"].append({"name": "build", "type": "string", "default": "unknown"})
    elif name == "dropped":
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "threads"]
    elif name != "ours":
        raise SystemExit(f"unknown variant {name}")
    return schema


def beat_for(name: str, beat: dict[str, Any]) -> dict[str, Any]:
    beat = dict(beat)
    beat["sent_at"] = datetime.fromtimestamp(beat["sent_at"] / 1000, tz=timezone.utc)
    if name == "added":
        beat["build"] = "2026.12"
    elif name == "dropped":
        beat.pop("threads", None)
    return beat


def produce(args: argparse.Namespace) -> None:
    registry = SchemaRegistryClient({"url": args.registry, "timeout": 10})
    schema = variant(args.variant)
    serializer = AvroSerializer(registry, json.dumps(schema), conf={"auto.register.schemas": True})
    producer = Producer(
        {
            "bootstrap.servers": args.brokers,
            "enable.idempotence": True,
            "transactional.id": f"registry-peer-{uuid.uuid4()}",
        }
    )
    producer.init_transactions()
    producer.begin_transaction()
    context = SerializationContext(args.topic, MessageField.VALUE)
    first = None
    for line in sys.stdin:
        if not line.strip():
            continue
        beat = json.loads(line)
        record = serializer(beat_for(args.variant, beat), context)
        assert record is not None and record[0] == 0, "Confluent wire format"
        first = first if first is not None else int.from_bytes(record[1:5], "big")
        producer.produce(args.topic, key=beat["app_id"].encode(), value=record)
    producer.commit_transaction()
    print(first)


def read_alerts(args: argparse.Namespace) -> None:
    import time

    from confluent_kafka import Consumer, TopicPartition

    # A request timeout: a response the registry lost once left this waiting for ever.
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": args.registry, "timeout": 10}))
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"registry-peer-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([args.topic])
    context = SerializationContext(args.topic, MessageField.VALUE)
    read = 0
    deadline = time.monotonic() + 60
    while read < args.count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error() is not None:
            continue
        try:
            alert = deserializer(msg.value(), context)
        except httpx.TimeoutException:
            # The writer schema was not fetched in time: read the record again.
            consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
            continue
        for field in ("started_at", "event_at", "emitted_at"):
            alert[field] = int(alert[field].timestamp() * 1000)
        print(json.dumps({"schema_id": int.from_bytes(msg.value()[1:5], "big"), **alert}))
        read += 1
    consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--variant", default="ours")
    r = sub.add_parser("read-alerts")
    r.add_argument("--brokers", required=True)
    r.add_argument("--topic", required=True)
    r.add_argument("--registry", required=True)
    r.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    if args.command == "produce":
        produce(args)
    else:
        read_alerts(args)


if __name__ == "__main__":
    main()
