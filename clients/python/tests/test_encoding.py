import json
import subprocess
import sys
from pathlib import Path

import pytest

from pulsewatch_emitter import decode_alert, encode_avro, encode_json
from pulsewatch_emitter.encoding import ALERT_HEADER, HEARTBEAT_HEADER, SCHEMA_DIR, encode_alert

REPO = Path(__file__).resolve().parents[3]
AVRO_PEER = REPO / "tests" / "interop" / "avro_peer.py"

BEATS = [
    {
        "app_id": "shop",
        "instance_id": "web-1-4242",
        "seq": 7,
        "sent_at": 1_764_000_000_123,
        "interval_ms": 5000,
        "status": "OK",
        "memory_used_bytes": 123_456_789,
        "memory_limit_bytes": 2_000_000_000,
        "cpu_ratio": 0.25,
        "disk_used_ratio": 0.5,
        "db_pool_size": 10,
        "db_pool_in_use": 3,
        "db_pool_waiting": 0,
        "threads": 12,
        "open_fds": 40,
        "request_queue_depth": 2,
        "sessions_active": 17,
        "requests_total": 1000,
        "errors_total": 3,
        "slow_requests_total": 1,
        "cache_hits_total": 50,
        "cache_misses_total": 5,
        "latency_p95_ms": 12.5,
        "latency_p99_ms": 40.0,
        "db_query_p95_ms": 1.75,
        "labels": {"env": "test", "pulsewatch.dropped_beats": "3"},
    },
    {
        "app_id": "ünïcode-app",
        "instance_id": "i",
        "seq": 1,
        "sent_at": 1_764_000_000_000,
        "interval_ms": 1000,
        "status": "STARTING",
        "labels": {},
    },
]


def full(beat: dict) -> dict:
    names = [f["name"] for f in json.loads((SCHEMA_DIR / "heartbeat.avsc").read_text())["fields"]]
    return {name: beat.get(name) for name in names}


@pytest.mark.parametrize("name", ["heartbeat.avsc", "alert.avsc"])
def test_shipped_schemas_equal_the_repository_ones(name):
    repo_copy = REPO / "schemas" / name
    if not repo_copy.exists():
        pytest.skip("not inside the pulsewatch repository")
    assert json.loads((SCHEMA_DIR / name).read_text()) == json.loads(repo_copy.read_text())
    assert (SCHEMA_DIR / name).read_bytes() == repo_copy.read_bytes()


def run_peer(*args: str, stdin: str = "") -> str:
    if not AVRO_PEER.exists():
        pytest.skip("tests/interop/avro_peer.py not found")
    done = subprocess.run(
        [sys.executable, str(AVRO_PEER), *args], input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_headers_are_the_specifications():
    assert run_peer("header", str(SCHEMA_DIR / "heartbeat.avsc")).splitlines()[0] == HEARTBEAT_HEADER.hex()
    assert run_peer("header", str(SCHEMA_DIR / "alert.avsc")).splitlines()[0] == ALERT_HEADER.hex()
    assert HEARTBEAT_HEADER[:2] == b"\xc3\x01" and len(HEARTBEAT_HEADER) == 10


def test_records_are_byte_equal_to_the_avro_peer():
    lines = "".join(json.dumps(full(b)) + "\n" for b in BEATS)
    expected = run_peer("encode", stdin=lines).split()
    assert [encode_avro(full(b)).hex() for b in BEATS] == expected


def test_json_encoding_omits_absent_figures():
    decoded = json.loads(encode_json(full(BEATS[1])))
    assert decoded["sent_at"] == 1_764_000_000_000
    assert "memory_used_bytes" not in decoded
    assert decoded["labels"] == {}


ALERT = {
    "alert_id": "abc",
    "app_id": "shop",
    "instance_id": "web-1-4242",
    "kind": "DB_POOL_SATURATED",
    "severity": "CRITICAL",
    "state": "FIRING",
    "started_at": 1_764_000_000_000,
    "event_at": 1_764_000_060_000,
    "emitted_at": 1_764_000_060_400,
    "value": 1.0,
    "threshold": 0.95,
    "summary": "pool full",
    "evidence": {"db_pool_in_use": "10"},
    "recommendations": ["recycle the pool"],
    "source_partition": 3,
    "source_offset": 99,
}


def test_alerts_decode_as_the_avro_peer_does():
    record = encode_alert(ALERT)
    peer = json.loads(run_peer("decode-alerts", stdin=record.hex() + "\n"))
    mine = decode_alert(record)
    assert mine == peer
    assert mine["started_at"] == ALERT["started_at"]


def test_alerts_with_another_header_are_refused():
    record = encode_alert(ALERT)
    with pytest.raises(ValueError):
        decode_alert(b"\xc3\x01" + b"\x00" * 8 + record[10:])
    with pytest.raises(ValueError):
        decode_alert(record + b"\x00")
