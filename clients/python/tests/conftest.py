"""The integration tests' stack: a `pulsewatch run` of its own (topic prefix, PostgreSQL
schema, listen addresses) against the Kafka and PostgreSQL that scripts/stack starts, and the
example application started as a process of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "app.py"
BROKERS = os.environ.get("PULSEWATCH_KAFKA_BROKERS", "127.0.0.1:9092")
POSTGRES_URL = os.environ.get("PULSEWATCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:54329/pulsewatch")

# Event-time settings that keep the tests short: DOWN 3 s after LATE, a pool rule held 5 s.
TEST_CONFIG = """
[detection]
down_grace_ms = 3000

[rules.db_pool]
warning = 0.9
critical = 0.95
for_ms = 5000
resolve_below = 0.85

# Short group sessions, so that after a broker outage the group waits out the lost members
# in seconds rather than the default 45 s.
[kafka.properties]
"session.timeout.ms" = "10000"
"heartbeat.interval.ms" = "1000"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(), dict(e.headers)


def http_post(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def wait_for(what: str, check: Any, timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class Pulsewatch:
    uid: str
    prefix: str
    schema: str
    env: dict[str, str]
    workdir: Path
    process: Optional[subprocess.Popen] = None
    apps: list[subprocess.Popen] = field(default_factory=list)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            return list(conn.execute(sql, params).fetchall())

    def log_tail(self, chars: int = 4000) -> str:
        """The end of pulsewatch's log, and whether it still runs: for a failed test's message."""
        code = None if self.process is None else self.process.poll()
        text = (self.workdir / "pulsewatch.log").read_text(errors="replace")[-chars:]
        return f"(exit code {code})\n{text}" if code is not None else text

    def start_app(self, app_id: str, gunicorn_workers: int = 0, **settings: str) -> App:
        port = free_port()
        env = dict(os.environ)
        env.update(
            APP_ID=app_id,
            PORT=str(port),
            PULSEWATCH_BROKERS=BROKERS,
            PULSEWATCH_TOPIC=f"{self.prefix}heartbeats",
            PULSEWATCH_INTERVAL="1",
            # The example's pool connects to the stack's PostgreSQL, on whatever port it runs.
            DATABASE_URL="postgresql+psycopg://" + POSTGRES_URL.split("://", 1)[1],
        )
        env.pop("PULSEWATCH_INGEST_URL", None)
        env.update(settings)
        log = open(self.workdir / f"{app_id}.log", "wb")
        if gunicorn_workers:
            command = [sys.executable, "-m", "gunicorn", "-w", str(gunicorn_workers)]
            command += ["-b", f"127.0.0.1:{port}", "--chdir", str(EXAMPLE.parent), "app:app"]
        else:
            command = [sys.executable, str(EXAMPLE)]
        # A session of its own, so that the test can kill the app with all its workers.
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.apps.append(process)
        app = App(app_id, f"http://127.0.0.1:{port}", process)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{app_id} exited: {(self.workdir / f'{app_id}.log').read_text()[-2000:]}"
                )
            try:
                status, body, _ = http_get(app.url + "/debug/state", timeout=2)
            except OSError:
                return False
            return status == 200 and b'"following":true' in body.replace(b" ", b"")

        wait_for(f"{app_id} to serve and follow its alerts", ready, 40)
        return app


@dataclass
class App:
    app_id: str
    url: str
    process: subprocess.Popen


@pytest.fixture(scope="session")
def pulsewatch(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = Path(os.environ.get("PULSEWATCH_BIN") or REPO / "target" / "debug" / "pulsewatch")
    required = os.environ.get("PULSEWATCH_REQUIRE_STACK") == "1"
    pg = urllib.parse.urlsplit(POSTGRES_URL)
    postgres_hostport = f"{pg.hostname or '127.0.0.1'}:{pg.port or 5432}"
    problems = []
    if not binary.exists():
        problems.append(f"no pulsewatch binary at {binary} (set PULSEWATCH_BIN or build it)")
    if not reachable(BROKERS.split(",")[0]):
        problems.append(f"Kafka not reachable at {BROKERS} (scripts/stack up)")
    if not reachable(postgres_hostport):
        problems.append(f"PostgreSQL not reachable at {postgres_hostport} (scripts/stack up)")
    if problems:
        if required:
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))

    uid = uuid.uuid4().hex[:10]
    workdir = tmp_path_factory.mktemp("pulsewatch")
    config = workdir / "pulsewatch.toml"
    config.write_text(TEST_CONFIG)
    # pulsewatch reads every PULSEWATCH_<SECTION>_<KEY> and refuses unknown ones: pass only its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWATCH_")}
    env.update(
        PULSEWATCH_CONFIG=str(config),
        PULSEWATCH_KAFKA_BROKERS=BROKERS,
        PULSEWATCH_POSTGRES_URL=POSTGRES_URL,
        PULSEWATCH_KAFKA_TOPIC_PREFIX=f"it-emitter-{uid}-",
        PULSEWATCH_POSTGRES_SCHEMA=f"it_emitter_{uid}",
        PULSEWATCH_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
        PULSEWATCH_INGEST_LISTEN=f"127.0.0.1:{free_port()}",
    )
    pw = Pulsewatch(
        uid, env["PULSEWATCH_KAFKA_TOPIC_PREFIX"], env["PULSEWATCH_POSTGRES_SCHEMA"], env, workdir
    )
    try:
        for command in (["topology", "apply"], ["migrate"]):
            done = subprocess.run(
                [str(binary), *command], env=env, timeout=120, capture_output=True, text=True
            )
            assert done.returncode == 0, f"pulsewatch {' '.join(command)}: {done.stdout}{done.stderr}"
        log = open(workdir / "pulsewatch.log", "wb")
        pw.process = subprocess.Popen([str(binary), "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
        readyz = f"http://{env['PULSEWATCH_HTTP_LISTEN']}/readyz"

        def ready() -> bool:
            if pw.process is not None and pw.process.poll() is not None:
                raise AssertionError((workdir / "pulsewatch.log").read_text()[-3000:])
            try:
                return http_get(readyz, timeout=2)[0] == 200
            except OSError:
                return False

        wait_for("pulsewatch run to be ready", ready, 90, every=0.5)
        yield pw
    finally:
        for app in pw.apps:
            try:
                os.killpg(app.pid, signal.SIGKILL)
            except OSError:
                pass
            app.wait(10)
        if pw.process is not None and pw.process.poll() is None:
            pw.process.send_signal(signal.SIGTERM)
            try:
                pw.process.wait(40)
            except subprocess.TimeoutExpired:
                pw.process.kill()
                pw.process.wait(10)
        cleanup(pw)


def cleanup(pw: Pulsewatch) -> None:
    """Drops the test's schema and deletes its topics and consumer groups (best effort)."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{pw.schema}" CASCADE')
    except Exception as e:  # noqa: BLE001 - cleanup must not hide the test's outcome
        print(f"could not drop schema {pw.schema}: {e}", file=sys.stderr)
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": BROKERS})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(pw.prefix)]
        for future in admin.delete_topics(topics, operation_timeout=30).values() if topics else []:
            future.result(30)
        groups = [
            g.group_id
            for g in admin.list_consumer_groups().result(10).valid
            if g.group_id.startswith(pw.prefix) or pw.uid in g.group_id
        ]
        for future in admin.delete_consumer_groups(groups).values() if groups else []:
            try:
                future.result(10)
            except Exception:  # noqa: BLE001 - a group still live is left to expire
                pass
    except Exception as e:  # noqa: BLE001
        print(f"could not delete topics of {pw.prefix}: {e}", file=sys.stderr)
