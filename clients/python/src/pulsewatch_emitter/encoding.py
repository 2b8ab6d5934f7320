"""Avro single-object encoding (and JSON) of heartbeats, and decoding of alerts.

The single-object header is ``C3 01`` followed by the 8-byte little-endian CRC-64-AVRO
fingerprint of the schema's Parsing Canonical Form as the Avro specification defines it
(logical types stripped), which is what fastavro computes.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
MAGIC = b"\xc3\x01"


def schema_json(name: str) -> dict[str, Any]:
    """The schema file shipped with the package (``heartbeat.avsc`` or ``alert.avsc``), as JSON."""
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return loaded


def single_object_header(schema: dict[str, Any]) -> bytes:
    """``C3 01`` + the CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form."""
    form = to_parsing_canonical_form(schema)
    return MAGIC + bytes.fromhex(fingerprint(form, "CRC-64-AVRO"))


HEARTBEAT_SCHEMA_JSON = schema_json("heartbeat.avsc")
ALERT_SCHEMA_JSON = schema_json("alert.avsc")
HEARTBEAT_HEADER = single_object_header(HEARTBEAT_SCHEMA_JSON)
ALERT_HEADER = single_object_header(ALERT_SCHEMA_JSON)
_HEARTBEAT_SCHEMA = parse_schema(HEARTBEAT_SCHEMA_JSON)
_ALERT_SCHEMA = parse_schema(ALERT_SCHEMA_JSON)

HEARTBEAT_FIELDS: tuple[str, ...] = tuple(f["name"] for f in HEARTBEAT_SCHEMA_JSON["fields"])


def encode_avro(beat: dict[str, Any]) -> bytes:
    """One heartbeat (the contract's field names, ``sent_at`` in epoch milliseconds) as an
    Avro single-object record."""
    out = io.BytesIO()
    out.write(HEARTBEAT_HEADER)
    schemaless_writer(out, _HEARTBEAT_SCHEMA, beat)
    return out.getvalue()


def encode_json(beat: dict[str, Any]) -> bytes:
    """One heartbeat as JSON (``sent_at`` in epoch milliseconds; absent figures omitted)."""
    return json.dumps({k: v for k, v in beat.items() if v is not None}, separators=(",", ":")).encode()


class UnknownAlertEncoding(ValueError):
    """The record is not an alert in the single-object encoding of ``schemas/alert.avsc``."""


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def decode_alert(record: bytes) -> dict[str, Any]:
    """An alert record, after checking its header is the specification's; timestamps come
    back as epoch milliseconds."""
    if record[:10] != ALERT_HEADER:
        raise UnknownAlertEncoding(
            f"alert header {record[:10].hex()} is not the specification's {ALERT_HEADER.hex()}"
        )
    body = io.BytesIO(record[10:])
    alert = schemaless_reader(body, _ALERT_SCHEMA, None)
    if body.read():
        raise UnknownAlertEncoding("trailing bytes after the alert")
    if not isinstance(alert, dict):
        raise UnknownAlertEncoding("the alert is not a record")
    for field in ("started_at", "event_at", "emitted_at"):
        alert[field] = _millis(alert[field])
    return alert


def encode_alert(alert: dict[str, Any]) -> bytes:
    """An alert as pulsewatch writes it (for tests and replays)."""
    out = io.BytesIO()
    out.write(ALERT_HEADER)
    schemaless_writer(out, _ALERT_SCHEMA, alert)
    return out.getvalue()
