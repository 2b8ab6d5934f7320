"""The example application against a real `pulsewatch run`: figures in heartbeat_event and
metric_rollup_1m, DB_POOL_SATURATED and its handler and throttle, SIGTERM and SIGKILL.

Tests in this file share one pulsewatch and run in order; the figures app runs under a
steady load from the first test to the last, whose closed minute is checked in the rollups.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import psutil
import pytest
from conftest import REPO, App, Pulsewatch, http_get, http_post, wait_for

from pulsewatch_emitter import Emitter

pytestmark = pytest.mark.integration

REQUEST_EVERY_S = 0.1


@pytest.fixture(scope="module")
def loaded_app(pulsewatch: Pulsewatch) -> Any:
    app = pulsewatch.start_app(f"it-figures-{pulsewatch.uid}", POOL_SIZE="5")
    stop = threading.Event()
    sent = {"n": 0}

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if i % 10 == 0:
                http_get(f"{app.url}/items/{i % 50}")
            elif i % 25 == 1:
                http_post(f"{app.url}/login")
            else:
                http_get(app.url + "/")
            sent["n"] += 1
            stop.wait(REQUEST_EVERY_S)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    yield app, sent
    stop.set()
    loader.join(5)


def beats(pw: Pulsewatch, app_id: str) -> list[dict[str, Any]]:
    rows = pw.query(
        "SELECT to_jsonb(h) FROM heartbeat_event h WHERE app_id = %s ORDER BY instance_id, seq", app_id
    )
    return [r[0] for r in rows]


def alerts(pw: Pulsewatch, app_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    rows = pw.query(
        "SELECT to_jsonb(a) FROM alert_event a WHERE app_id = %s ORDER BY event_at, kafka_offset", app_id
    )
    return [r[0] for r in rows if kind is None or r[0]["kind"] == kind]


def test_figures_reach_heartbeat_event_and_match_psutil_and_the_pool(pulsewatch: Pulsewatch, loaded_app):
    app, sent = loaded_app
    wait_for("a few beats with requests", lambda: len(beats(pulsewatch, app.app_id)) >= 4, 30)
    wait_for("the load to show", lambda: (beats(pulsewatch, app.app_id)[-1]["requests_total"] or 0) >= 20, 30)
    process = psutil.Process(app.process.pid)
    rss, threads, fds = process.memory_info().rss, process.num_threads(), process.num_fds()
    rows = beats(pulsewatch, app.app_id)
    last = rows[-1]
    assert rows[0]["status"] == "STARTING" and rows[0]["seq"] == 1
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["status"] == "OK" for r in rows[1:])
    assert last["interval_ms"] == 1000
    # Tolerances: resident memory within 15 % of psutil's reading a moment later; the
    # server's threads and fds move with the requests in flight.
    assert abs(last["memory_used_bytes"] - rss) <= 0.15 * rss
    assert last["memory_limit_bytes"] >= psutil.virtual_memory().total * 0.5
    assert abs(last["threads"] - threads) <= 4
    assert abs(last["open_fds"] - fds) <= 10
    assert 0.0 <= last["cpu_ratio"] <= 1.0
    assert 0.0 < last["disk_used_ratio"] <= 1.0
    assert last["db_pool_size"] == 5
    assert 0 <= last["db_pool_in_use"] <= 5
    assert last["db_pool_waiting"] == 0
    assert last["sessions_active"] >= 1
    assert last["requests_total"] <= sent["n"] + 200
    assert last["errors_total"] == 0
    assert last["cache_misses_total"] >= 1
    counters = [r["requests_total"] for r in rows]
    assert counters == sorted(counters), "requests_total is cumulative"
    assert any(r["latency_p95_ms"] is not None for r in rows)
    assert any(r["db_query_p95_ms"] is not None for r in rows)
    assert last["labels"]["env"] == "example"
    assert last["labels"]["pulsewatch.emitter"] == "python"


def test_pool_saturation_fires_runs_the_handler_once_and_throttles_while_it_fires(pulsewatch: Pulsewatch):
    app = pulsewatch.start_app(f"it-pool-{pulsewatch.uid}", POOL_SIZE="2", THROTTLE_MAX_IN_FLIGHT="1")
    assert http_post(app.url + "/switch/hold?n=2")[0] == 200
    started = time.monotonic()
    fired = wait_for(
        "DB_POOL_SATURATED to fire",
        lambda: [a for a in alerts(pulsewatch, app.app_id, "DB_POOL_SATURATED") if a["state"] == "FIRING"],
        120,
    )
    print(f"DB_POOL_SATURATED fired {time.monotonic() - started:.1f} s after the pool filled")
    assert fired[0]["instance_id"] is not None

    def state() -> dict[str, Any]:
        return json.loads(http_get(app.url + "/debug/state")[1])

    wait_for(
        "the handler to run and the throttle to switch on",
        lambda: state()["throttle"] and state()["handled"],
        20,
    )
    # One request in flight (slowed down); the next one is beyond the limit of 1.
    assert http_post(app.url + "/switch/slow?seconds=2")[0] == 200
    slow = threading.Thread(target=lambda: http_get(app.url + "/"))
    slow.start()
    time.sleep(0.5)
    status, _, headers = http_get(app.url + "/items/1")
    assert status == 503
    assert headers.get("Retry-After") == "5"
    slow.join(10)
    # It goes on firing (the held connections are still out): the handler ran once.
    time.sleep(3)
    handled = state()["handled"]
    assert [h["kind"] for h in handled] == ["DB_POOL_SATURATED"], handled
    wait_for(
        "the handler's run in a beat's labels",
        lambda: any(
            "DB_POOL_SATURATED:on_pool_saturated=ok" in (b["labels"].get("pulsewatch.handlers_ran") or "")
            for b in beats(pulsewatch, app.app_id)
        ),
        10,
    )
    assert any(b["status"] == "DEGRADED" for b in beats(pulsewatch, app.app_id))
    # Released: the alert resolves and the throttle stops.
    assert http_post(app.url + "/switch/release")[0] == 200
    wait_for(
        "DB_POOL_SATURATED to resolve",
        lambda: any(a["state"] == "RESOLVED" for a in alerts(pulsewatch, app.app_id, "DB_POOL_SATURATED")),
        60,
    )
    wait_for("the throttle to switch off", lambda: not state()["throttle"], 15)
    assert http_get(app.url + "/items/1")[0] == 200
    assert len(state()["handled"]) == 1
    app.process.terminate()
    app.process.wait(15)


def test_sigterm_sends_stopping_and_raises_no_alert(pulsewatch: Pulsewatch):
    app = pulsewatch.start_app(f"it-term-{pulsewatch.uid}")
    wait_for("beats", lambda: len(beats(pulsewatch, app.app_id)) >= 2, 30)
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(15) is not None
    wait_for("the STOPPING beat", lambda: beats(pulsewatch, app.app_id)[-1]["status"] == "STOPPING", 15)
    # Well past LATE (2 x 1 s) and DOWN (3 s later) had the instance not said goodbye.
    time.sleep(7)
    # (Resource alerts are the machine's own business: a nearly full disk fires DISK_HIGH.)
    liveness = {"INSTANCE_LATE", "INSTANCE_DOWN", "APP_DOWN", "INSTANCE_RESTARTED", "FLAPPING"}
    raised = [a for a in alerts(pulsewatch, app.app_id) if a["kind"] in liveness]
    assert raised == [], [(a["kind"], a["state"], a["summary"]) for a in raised]
    status = pulsewatch.query("SELECT status FROM application WHERE app_id = %s", app.app_id)
    assert status == [("STOPPED",)]


def test_sigkill_raises_instance_late_then_down(pulsewatch: Pulsewatch):
    app = pulsewatch.start_app(f"it-kill-{pulsewatch.uid}")
    wait_for("beats", lambda: len(beats(pulsewatch, app.app_id)) >= 2, 30)
    app.process.send_signal(signal.SIGKILL)
    app.process.wait(10)
    killed = time.monotonic()
    wait_for("INSTANCE_LATE", lambda: alerts(pulsewatch, app.app_id, "INSTANCE_LATE"), 20)
    late_after = time.monotonic() - killed
    wait_for("INSTANCE_DOWN", lambda: alerts(pulsewatch, app.app_id, "INSTANCE_DOWN"), 30)
    down_after = time.monotonic() - killed
    print(f"INSTANCE_LATE seen {late_after:.1f} s and INSTANCE_DOWN {down_after:.1f} s after SIGKILL")
    kinds = {a["kind"] for a in alerts(pulsewatch, app.app_id)}
    assert {"INSTANCE_LATE", "INSTANCE_DOWN"} <= kinds


def test_two_gunicorn_workers_are_two_instances_and_app_down_needs_both(pulsewatch: Pulsewatch):
    app = pulsewatch.start_app(f"it-gunicorn-{pulsewatch.uid}", gunicorn_workers=2)

    def instances() -> set[str]:
        return {b["instance_id"] for b in beats(pulsewatch, app.app_id)}

    workers = psutil.Process(app.process.pid).children()
    assert len(workers) == 2
    expected = {f"{socket.gethostname()}-{w.pid}" for w in workers}
    wait_for("a beat from each worker", lambda: expected <= instances(), 30)
    # One worker killed: its instance goes DOWN, the application does not (gunicorn starts
    # another worker, a new instance, and the other one goes on).
    victim = workers[0]
    victim.kill()
    victim_id = f"{socket.gethostname()}-{victim.pid}"
    wait_for(
        "INSTANCE_DOWN of the killed worker",
        lambda: [a for a in alerts(pulsewatch, app.app_id, "INSTANCE_DOWN") if a["instance_id"] == victim_id],
        30,
    )
    time.sleep(2)
    assert alerts(pulsewatch, app.app_id, "APP_DOWN") == []
    # Master and workers killed at once: now the application is down.
    os.killpg(app.process.pid, signal.SIGKILL)
    app.process.wait(10)
    wait_for("APP_DOWN", lambda: alerts(pulsewatch, app.app_id, "APP_DOWN"), 40)


def test_http_ingest_transport(pulsewatch: Pulsewatch):
    app_id = f"it-http-{pulsewatch.uid}"
    emitter = Emitter(
        app_id,
        ingest_url=f"http://{pulsewatch.env['PULSEWATCH_INGEST_LISTEN']}",
        interval=1.0,
        install_signal_handler=False,
    )
    emitter.start()
    try:
        wait_for("beats through the ingest", lambda: len(beats(pulsewatch, app_id)) >= 3, 30)
    finally:
        emitter.stop()
    wait_for("the STOPPING beat", lambda: beats(pulsewatch, app_id)[-1]["status"] == "STOPPING", 15)
    rows = beats(pulsewatch, app_id)
    assert rows[0]["status"] == "STARTING"
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1]["memory_used_bytes"] > 0
    assert emitter.dropped_total == 0


def test_rates_in_metric_rollup_1m_follow_the_counters(pulsewatch: Pulsewatch, loaded_app):
    app, _ = loaded_app

    def closed_minute() -> list[tuple[Any, ...]]:
        return pulsewatch.query(
            "SELECT minute, requests_per_s, beats FROM metric_rollup_1m WHERE app_id = %s AND beats >= 20"
            " ORDER BY minute",
            app.app_id,
        )

    minute, requests_per_s, _ = wait_for("a closed minute in metric_rollup_1m", closed_minute, 150, every=2)[
        0
    ]
    start_ms = minute.timestamp() * 1000
    rows = beats(pulsewatch, app.app_id)
    before = [r["requests_total"] for r in rows if _millis(r["sent_at"]) < start_ms]
    within = [r for r in rows if start_ms <= _millis(r["sent_at"]) < start_ms + 60_000]
    # The contract: the sum of the counter's deltas over the minute, per second of the minute.
    expected = (within[-1]["requests_total"] - (before[-1] if before else 0)) / 60.0
    print(f"minute {minute}: rollup {requests_per_s:.3f} requests/s, counters say {expected:.3f}")
    assert requests_per_s == pytest.approx(expected, rel=0.02)


def _request_times(url: str, seconds: float) -> list[float]:
    """Milliseconds each request to ``url`` took, ten a second for ``seconds``."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        status, _, _ = http_get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200
        time.sleep(0.1)
    return sorted(times)


def _stack(action: str) -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "stack"), action], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"scripts/stack {action}: {done.stderr[-2000:]}"


# Last in the file: it stops the broker everything else here uses.
def test_kafka_away_for_20_s_slows_no_request_and_drops_are_counted(pulsewatch: Pulsewatch):
    app = pulsewatch.start_app(f"it-away-{pulsewatch.uid}")
    before = _request_times(app.url + "/", 10)
    _stack("stop-kafka")
    try:
        during = _request_times(app.url + "/", 20)
    finally:
        _stack("start-kafka")

    def dropped_reported() -> bool:
        return any(
            int(b["labels"].get("pulsewatch.dropped_beats", "0")) > 0 for b in beats(pulsewatch, app.app_id)
        )

    try:
        wait_for("beats again, carrying the count of those dropped", dropped_reported, 180, every=2)
    except AssertionError as e:
        raise AssertionError(f"{e}; pulsewatch's log ends:\n{pulsewatch.log_tail()}") from None
    p50 = (before[len(before) // 2], during[len(during) // 2])
    p95 = (before[int(len(before) * 0.95)], during[int(len(during) * 0.95)])
    print(
        f"request ms with Kafka up / away: p50 {p50[0]:.1f} / {p50[1]:.1f}, p95 {p95[0]:.1f} / {p95[1]:.1f}"
    )
    # Nothing on the request path waits for Kafka: a generous bound against a shared machine's noise.
    assert p50[1] <= 2 * p50[0] + 5, f"p50 {p50}"
    assert p95[1] <= 3 * p95[0] + 20, f"p95 {p95}"


def _millis(value: Any) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp() * 1000


__all__ = ["App"]
