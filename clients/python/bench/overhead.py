"""The emitter's cost per request: the same Flask app with and without it, called through
WSGI in this process (no network, so the difference is the emitter's hooks and whatever its
background thread takes from the request's thread), in interleaved rounds.

    python clients/python/bench/overhead.py [--requests 20000] [--brokers 127.0.0.1:9092]

Prints p50 / p99 / mean of a request's time with and without the emitter, and their
difference. The emitter beats every second to a topic of its own (created and deleted when
the brokers are reachable; otherwise its beats are dropped, which costs the request nothing
either).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

from flask import Flask, jsonify
from werkzeug.test import EnvironBuilder

from pulsewatch_emitter import Emitter


def make_app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/items/<int:n>")
    def item(n: int) -> Any:
        return jsonify(id=n, double=n * 2)

    return app


def call(app: Flask, environ: dict[str, Any]) -> int:
    status: list[str] = []

    def start_response(s: str, _headers: Any, _exc: Any = None) -> None:
        status.append(s)

    started = time.perf_counter_ns()
    body = app.wsgi_app(dict(environ), start_response)
    for _ in body:
        pass
    getattr(body, "close", lambda: None)()
    elapsed = time.perf_counter_ns() - started
    assert status[0].startswith("200"), status
    return elapsed


def pct(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000, help="per variant")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    args = parser.parse_args()

    topic = f"emitter-bench-{uuid.uuid4().hex[:8]}-heartbeats"
    admin = None
    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": args.brokers, "socket.timeout.ms": 3000})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    except Exception as e:  # noqa: BLE001 - the request path does not depend on the broker
        print(f"(no topic for the beats: {e}; they are dropped)")
        admin = None

    plain, watched = make_app("plain"), make_app("watched")
    emitter = Emitter(
        "emitter-bench", brokers=args.brokers, topic=topic, interval=1.0, install_signal_handler=False
    )
    emitter.init_app(watched)
    emitter.start()
    environ = EnvironBuilder(path="/items/7", method="GET").get_environ()
    for app in (plain, watched):  # warm up
        for _ in range(500):
            call(app, environ)

    without: list[int] = []
    with_emitter: list[int] = []
    per_round = max(1, args.requests // args.rounds)
    started = time.monotonic()
    for r in range(args.rounds):
        order = (plain, watched) if r % 2 == 0 else (watched, plain)
        for app in order:
            out = without if app is plain else with_emitter
            for _ in range(per_round):
                out.append(call(app, environ))
    seconds = time.monotonic() - started
    beats = emitter.last_beat["seq"] if emitter.last_beat else 0
    emitter.stop()
    if admin is not None:
        admin.delete_topics([topic])[topic].result(10)

    print(f"{len(without)} requests per variant in {args.rounds} interleaved rounds, {seconds:.1f} s")
    print(f"emitter: {beats} beats built (1 s interval), {emitter.dropped_total} dropped")
    print(f"{'':>18} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}")
    for name, samples in (("without emitter", without), ("with emitter", with_emitter)):
        mean = statistics.fmean(samples) / 1000.0
        print(f"{name:>18} {pct(samples, 0.5):9.1f} {pct(samples, 0.99):9.1f} {mean:9.1f}")
    print(
        f"{'added':>18} {pct(with_emitter, 0.5) - pct(without, 0.5):9.1f}"
        f" {pct(with_emitter, 0.99) - pct(without, 0.99):9.1f}"
        f" {(statistics.fmean(with_emitter) - statistics.fmean(without)) / 1000.0:9.1f}"
    )


if __name__ == "__main__":
    main()
