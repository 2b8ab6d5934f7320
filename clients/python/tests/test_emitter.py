import http.server
import json
import threading
import time

import pytest
from flask import Flask, abort
from sqlalchemy import create_engine, text
from sqlalchemy.pool import QueuePool

from pulsewatch_emitter import Emitter, alerts_topic_for
from pulsewatch_emitter.alerts import AlertFollower
from pulsewatch_emitter.encoding import encode_alert

# Nothing listens there: the transport is away.
UNREACHABLE = "127.0.0.1:1"


def make(**kwargs) -> Emitter:
    kwargs.setdefault("brokers", UNREACHABLE)
    kwargs.setdefault("install_signal_handler", False)
    kwargs.setdefault("follow_alerts", False)
    kwargs.setdefault("kafka_config", {"log_level": 0})  # no connection-refused lines
    return Emitter(kwargs.pop("app_id", "unit-app"), **kwargs)


def test_alerts_topic_keeps_the_prefix():
    assert alerts_topic_for("heartbeats") == "alerts"
    assert alerts_topic_for("it-x-heartbeats") == "it-x-alerts"
    assert make(topic="staging.heartbeats").alerts_topic == "staging.alerts"
    assert make(alerts_topic="mine").alerts_topic == "mine"


def test_environment_fills_what_is_not_given(monkeypatch):
    monkeypatch.setenv("PULSEWATCH_INGEST_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PULSEWATCH_TOKEN", "t0k")
    monkeypatch.delenv("PULSEWATCH_BROKERS", raising=False)
    e = Emitter("env-app", install_signal_handler=False)
    assert (e.brokers, e.ingest_url, e.token) == (None, "http://127.0.0.1:9", "t0k")
    monkeypatch.setenv("PULSEWATCH_BROKERS", "b:9092")
    assert Emitter("env-app").brokers == "b:9092"
    monkeypatch.delenv("PULSEWATCH_BROKERS")
    monkeypatch.delenv("PULSEWATCH_INGEST_URL")
    with pytest.raises(ValueError):
        Emitter("env-app")


def test_instance_id_from_pod_name_and_pid(monkeypatch):
    import os

    monkeypatch.setenv("POD_NAME", "web-7f9c")
    assert make().instance_id == f"web-7f9c-{os.getpid()}"
    assert make(instance_id="fixed").instance_id == "fixed"


def test_seq_status_and_labels():
    e = make(labels={"env": "test"})
    first, second = e.build_beat("STARTING"), e.build_beat()
    assert (first["seq"], second["seq"]) == (1, 2)
    assert (first["status"], second["status"]) == ("STARTING", "OK")
    assert second["labels"]["env"] == "test"
    assert second["requests_total"] is None  # no Flask app: not measured, not zero
    e.degraded = True
    assert e.build_beat()["status"] == "DEGRADED"


def test_drops_are_counted_while_the_broker_is_away_and_requests_do_not_wait():
    e = make(interval=1.0, queue_size=2, delivery_timeout=1.0)
    app = Flask("drops")
    e.init_app(app)

    @app.get("/")
    def index():
        return "ok"

    e.start()
    try:
        client = app.test_client()
        worst = 0.0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and e.dropped_total < 2:
            started = time.perf_counter()
            assert client.get("/").status_code == 200
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.01)
        assert e.dropped_total >= 2
        time.sleep(1.2)
        assert int(e.last_beat["labels"]["pulsewatch.dropped_beats"]) >= 2
        # Nothing on the request path waits for the transport.
        assert worst < 0.1
        assert e.requests_total > 10
    finally:
        e.stop(timeout=0.5)


def test_the_queue_is_bounded_and_drops_oldest_first():
    e = make(queue_size=3)
    for _ in range(5):
        e._enqueue(e.build_beat())
    assert [b["seq"] for b in e._queue] == [3, 4, 5]
    assert e.dropped_total == 2


def test_flask_counters():
    e = make(slow_request_threshold=0.05)
    app = Flask("counters")
    e.init_app(app)

    @app.get("/ok")
    def ok():
        return "ok"

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    @app.get("/503")
    def unavailable():
        abort(503)

    @app.get("/slow")
    def slow():
        time.sleep(0.06)
        return "slow"

    client = app.test_client()
    for path in ["/ok", "/ok", "/boom", "/503", "/slow", "/missing"]:
        client.get(path)
    beat = e.build_beat()
    assert beat["requests_total"] == 6
    assert beat["errors_total"] == 2
    assert beat["slow_requests_total"] == 1
    assert beat["request_queue_depth"] == 0
    assert beat["latency_p99_ms"] >= 60
    assert beat["latency_p95_ms"] <= beat["latency_p99_ms"]
    again = e.build_beat()
    assert again["requests_total"] == 6  # cumulative
    assert again["latency_p95_ms"] is None  # over the last interval only


def test_sessions_and_cache_counters():
    e = make()
    live = {"a", "b"}
    e.sessions(lambda: len(live))
    e.cache_hit()
    e.cache_hit(2)
    e.cache_miss()
    beat = e.build_beat()
    assert (beat["sessions_active"], beat["cache_hits_total"], beat["cache_misses_total"]) == (2, 3, 1)


def test_sqlalchemy_pool_gauges_and_query_time():
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=2, max_overflow=0, pool_timeout=5)
    e = make()
    e.watch_engine(engine)
    beat = e.build_beat()
    assert (beat["db_pool_size"], beat["db_pool_in_use"], beat["db_pool_waiting"]) == (2, 0, 0)
    held = [engine.connect(), engine.connect()]
    held[0].execute(text("SELECT 1"))
    waiter = threading.Thread(target=lambda: engine.connect().close())
    waiter.start()
    time.sleep(0.3)
    beat = e.build_beat()
    assert (beat["db_pool_size"], beat["db_pool_in_use"], beat["db_pool_waiting"]) == (2, 2, 1)
    assert beat["db_query_p95_ms"] is not None
    held.pop().close()
    waiter.join(5)
    beat = e.build_beat()
    assert (beat["db_pool_in_use"], beat["db_pool_waiting"]) == (1, 0)
    engine.dispose()  # a recycle: the gauges follow the new pool
    held.pop().close()
    with engine.connect():
        assert e.build_beat()["db_pool_in_use"] == 1
    assert e.build_beat()["db_pool_in_use"] == 0


def alert(state: str, started_at: int = 1000, severity: str = "WARNING", **kw) -> bytes:
    record = {
        "alert_id": "a1",
        "app_id": "unit-app",
        "instance_id": "me",
        "kind": "DB_POOL_SATURATED",
        "severity": severity,
        "state": state,
        "started_at": started_at,
        "event_at": started_at,
        "emitted_at": started_at,
        "value": 1.0,
        "threshold": 0.9,
        "summary": "s",
        "evidence": {},
        "recommendations": [],
        "source_partition": 0,
        "source_offset": 0,
    }
    record.update(kw)
    return encode_alert(record)


def test_handlers_run_once_per_firing_with_a_timeout_and_are_reported():
    e = make(instance_id="me")
    ran: list[str] = []
    release = threading.Event()

    @e.on("DB_POOL_SATURATED")
    def recycle(a):
        ran.append(a["severity"])

    @e.on("DB_POOL_SATURATED", timeout=0.2)
    def stuck(_a):
        release.wait(5)

    @e.on("DB_POOL_SATURATED", state="RESOLVED")
    def resolved(_a):
        ran.append("resolved")

    guard = e.throttle(1)
    follower = AlertFollower(UNREACHABLE, "alerts", "unit-app", "me", e._on_alert)
    e._runner.start()
    try:
        follower.handle_record(b"unit-app", alert("FIRING"))
        assert guard.active
        follower.handle_record(b"unit-app", alert("FIRING", severity="CRITICAL"))  # same firing
        follower.handle_record(b"other-app", alert("FIRING", started_at=5))  # not ours (key)
        follower.handle_record(b"unit-app", alert("FIRING", started_at=7, instance_id="not-me"))
        follower.handle_record(b"unit-app", b"\xc3\x01garbage")
        time.sleep(0.6)
        assert ran == ["WARNING"]
        follower.handle_record(b"unit-app", alert("RESOLVED"))
        assert not guard.active
        follower.handle_record(b"unit-app", alert("FIRING", started_at=2000))  # a new firing
        time.sleep(0.6)
        assert ran == ["WARNING", "resolved", "WARNING"]
        assert follower.undecodable == 1
        labels = e.build_beat()["labels"]
        assert "DB_POOL_SATURATED:recycle=ok" in labels["pulsewatch.handlers_ran"]
        assert "DB_POOL_SATURATED:stuck=timeout" in labels["pulsewatch.handlers_ran"]
        assert "pulsewatch.handlers_ran" not in e.build_beat()["labels"]  # reported once
    finally:
        release.set()
        e._runner.stop()


def test_throttle_answers_503_with_retry_after_while_on():
    e = make()
    app = Flask("throttle")
    e.init_app(app)
    guard = e.throttle(1, retry_after=7)
    gate = threading.Event()

    @app.get("/wait")
    def wait():
        gate.wait(5)
        return "done"

    @app.get("/")
    def index():
        return "ok"

    client = app.test_client()
    first = threading.Thread(target=lambda: app.test_client().get("/wait"))
    first.start()
    time.sleep(0.2)
    assert client.get("/").status_code == 200  # off: no limit
    guard.switch_on("a1")
    answer = client.get("/")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "7"
    assert e.build_beat()["status"] == "DEGRADED"
    guard.switch_off("a1")
    assert client.get("/").status_code == 200
    gate.set()
    first.join()


class Ingest(http.server.BaseHTTPRequestHandler):
    received: list = []
    status = 202

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Ingest.received.append((self.path, self.headers.get("Authorization"), body))
        self.send_response(Ingest.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"accepted": [], "rejected": []}).encode())

    def log_message(self, *args):
        pass


def test_http_transport_posts_ndjson_batches_with_the_token_and_keeps_beats_on_503():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        Ingest.received.clear()
        Ingest.status = 503
        e = Emitter("http-app", ingest_url=url, token="s3cret", install_signal_handler=False)
        e.start()
        assert len(e._queue) == 1  # 503: kept for the next round
        Ingest.status = 202
        e.stop()
        path, auth, body = Ingest.received[-1]
        assert path == "/v1/heartbeats/batch" and auth == "Bearer s3cret"
        beats = [json.loads(line) for line in body.decode().splitlines()]
        assert [(b["seq"], b["status"]) for b in beats] == [(1, "STARTING"), (2, "STOPPING")]
        assert len(e._queue) == 0
    finally:
        server.shutdown()
