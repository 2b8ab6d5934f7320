"""An example Flask + SQLAlchemy application on PostgreSQL that reports to pulsewatch, with
switches that make it misbehave the ways the alerts are about:

    POST /switch/leak?mb=50          keep 50 MB more in memory (a leak)
    POST /switch/hold?n=5            check out n pool connections and never return them
    POST /switch/release             return the held connections, forget the leaked memory
    POST /switch/slow?seconds=2      make GET / take that much longer
    POST /switch/fail?ratio=0.5      make that share of GET / fail with an exception
    GET  /                           a query; GET /items/<n> a cached lookup; POST /login a session
    GET  /debug/state                what the app holds and which handlers ran

Run it (pulsewatch's stack running):
    pip install -e "clients/python[flask,sqlalchemy,example]"
    PULSEWATCH_BROKERS=127.0.0.1:9092 python clients/python/examples/app.py

Settings (environment): APP_ID, PORT, DATABASE_URL, POOL_SIZE, POOL_TIMEOUT, THROTTLE_MAX_IN_FLIGHT,
PULSEWATCH_INTERVAL, PULSEWATCH_TOPIC, PULSEWATCH_BROKERS or PULSEWATCH_INGEST_URL, and
PULSEWATCH_DISABLED=1 to run without the emitter (the benchmark's baseline).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from functools import lru_cache
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import create_engine, text

from pulsewatch_emitter import Emitter, collect_garbage, recycle_pool

APP_ID = os.environ.get("APP_ID", "example-shop")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:54329/pulsewatch")

app = Flask(__name__)
engine = create_engine(
    DATABASE_URL,
    pool_size=int(os.environ.get("POOL_SIZE", "5")),
    max_overflow=0,
    pool_timeout=float(os.environ.get("POOL_TIMEOUT", "10")),
    pool_pre_ping=True,
)

switches: dict[str, float] = {"slow": 0.0, "fail": 0.0}
leaked: list[bytearray] = []
held: list[Any] = []
sessions: dict[str, float] = {}
handled: list[dict[str, Any]] = []
lock = threading.Lock()


@lru_cache(maxsize=10_000)
def item(n: int) -> dict[str, Any]:
    with engine.connect() as conn:
        value = conn.execute(text("SELECT :n * 2"), {"n": n}).scalar_one()
    return {"id": n, "double": value}


emitter: Emitter | None = None
if os.environ.get("PULSEWATCH_DISABLED") != "1":
    emitter = Emitter(
        APP_ID,
        topic=os.environ.get("PULSEWATCH_TOPIC", "heartbeats"),
        interval=float(os.environ.get("PULSEWATCH_INTERVAL", "5")),
        labels={"env": os.environ.get("APP_ENV", "example"), "version": "1"},
    )
    emitter.init_app(app)
    emitter.watch_engine(engine)
    emitter.sessions(lambda: len(sessions))
    emitter.throttle(int(os.environ.get("THROTTLE_MAX_IN_FLIGHT", "8")))
    clear_memory = collect_garbage(leaked, item)
    recycle = recycle_pool(engine)

    def remember(alert: dict[str, Any], action: str) -> None:
        with lock:
            handled.append({"kind": alert["kind"], "alert_id": alert["alert_id"], "action": action})

    @emitter.on("DB_POOL_SATURATED")
    def on_pool_saturated(alert: dict[str, Any]) -> None:
        recycle(alert)
        remember(alert, "pool recycled")

    @emitter.on("MEMORY_HIGH")
    @emitter.on("MEMORY_LEAK_SUSPECTED")
    def on_memory(alert: dict[str, Any]) -> None:
        clear_memory(alert)
        remember(alert, "garbage collected, caches cleared")

    @emitter.on("SESSION_LEAK_SUSPECTED")
    def on_sessions(alert: dict[str, Any]) -> None:
        cutoff = time.time() - 600
        with lock:
            for sid in [s for s, at in sessions.items() if at < cutoff]:
                del sessions[sid]
        remember(alert, "stale sessions expired")


@app.get("/")
def index() -> Any:
    if switches["slow"]:
        time.sleep(switches["slow"])
    if switches["fail"] and random.random() < switches["fail"]:
        raise RuntimeError("failing on purpose (/switch/fail)")
    with engine.connect() as conn:
        now = conn.execute(text("SELECT now()")).scalar_one()
    return jsonify(ok=True, now=now.isoformat())


@app.get("/items/<int:n>")
def get_item(n: int) -> Any:
    before = item.cache_info().hits
    result = item(n)
    if emitter is not None:
        (emitter.cache_hit if item.cache_info().hits > before else emitter.cache_miss)()
    return jsonify(result)


@app.post("/login")
def login() -> Any:
    sid = str(uuid.uuid4())
    sessions[sid] = time.time()
    return jsonify(session=sid)


@app.post("/switch/leak")
def leak() -> Any:
    mb = int(request.args.get("mb", "10"))
    leaked.append(bytearray(os.urandom(1024)) * (mb * 1024))
    return jsonify(leaked_mb=sum(len(b) for b in leaked) // 2**20)


@app.post("/switch/hold")
def hold() -> Any:
    n = int(request.args.get("n", "1"))
    for _ in range(n):
        conn = engine.connect()
        conn.execute(text("SELECT 1"))
        held.append(conn)
    return jsonify(held=len(held))


@app.post("/switch/release")
def release() -> Any:
    while held:
        held.pop().close()
    leaked.clear()
    switches.update(slow=0.0, fail=0.0)
    return jsonify(held=0)


@app.post("/switch/slow")
def slow() -> Any:
    switches["slow"] = float(request.args.get("seconds", "1"))
    return jsonify(switches)


@app.post("/switch/fail")
def fail() -> Any:
    switches["fail"] = float(request.args.get("ratio", "0.5"))
    return jsonify(switches)


@app.get("/debug/state")
def state() -> Any:
    guard = emitter.throttle_guard if emitter is not None else None
    with lock:
        ran = list(handled)
    return jsonify(
        pid=os.getpid(),
        instance_id=emitter.instance_id if emitter is not None else None,
        following=bool(emitter is not None and emitter.wait_following(0)),
        handled=ran,
        throttle=bool(guard is not None and guard.active),
        held=len(held),
        leaked_mb=sum(len(b) for b in leaked) // 2**20,
        sessions=len(sessions),
        pool_in_use=engine.pool.checkedout(),  # type: ignore[attr-defined]
    )


if emitter is not None:
    emitter.start()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
