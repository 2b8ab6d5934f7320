"""What the browser tests, the fleet benchmark and the screenshots share: a `pulsewatch run`
of their own (topic prefix, PostgreSQL schema, listen address) against the stack that
scripts/stack starts, its load generator, and Debian's Chromium launched through Playwright
(never a browser Playwright would download)."""

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("PULSEWATCH_BIN") or REPO / "target" / "debug" / "pulsewatch")
BROKERS = os.environ.get("PULSEWATCH_KAFKA_BROKERS", "127.0.0.1:9092")
POSTGRES_URL = os.environ.get("PULSEWATCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:54329/pulsewatch")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "target" / "browser-artifacts"
TOKEN = "browser-test-token"

T = TypeVar("T")


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


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float, every: float = 0.25) -> T:
    """Polls `check` until it returns something truthy, or fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def stack_problems() -> list[str]:
    """What is missing to run a pulsewatch of our own; empty when nothing is."""
    problems = []
    if not BINARY.exists():
        problems.append(f"no pulsewatch binary at {BINARY} (cargo build, or set PULSEWATCH_BIN)")
    if not Path(CHROMIUM).exists():
        problems.append(f"no Chromium at {CHROMIUM} (scripts/python-env installs it)")
    if not reachable(BROKERS.split(",")[0]):
        problems.append(f"Kafka not reachable at {BROKERS} (scripts/stack up)")
    pg = urllib.parse.urlsplit(POSTGRES_URL)
    if not reachable(f"{pg.hostname or '127.0.0.1'}:{pg.port or 5432}"):
        problems.append(f"PostgreSQL not reachable at {POSTGRES_URL} (scripts/stack up)")
    return problems


@dataclass
class Pulsewatch:
    """A `pulsewatch run` with a topic prefix and a schema of its own."""

    name: str
    workdir: Path
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    env: dict[str, str] = field(default_factory=dict)
    process: Optional[subprocess.Popen[bytes]] = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"it-{self.name}-{self.uid}-"

    @property
    def schema(self) -> str:
        return f"it_{self.name}_{self.uid}"

    @property
    def url(self) -> str:
        return f"http://{self.env['PULSEWATCH_HTTP_LISTEN']}"

    @property
    def log(self) -> Path:
        return self.workdir / "pulsewatch.log"

    def command(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run([str(BINARY), *args], env=self.env, timeout=timeout, capture_output=True, text=True)
        assert done.returncode == 0, f"pulsewatch {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def start(self, stage: str = "all", **settings: str) -> None:
        """Declares the topics, migrates the schema, starts `pulsewatch run` and waits for /readyz."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # pulsewatch reads every PULSEWATCH_<SECTION>_<KEY> and refuses unknown ones: pass only its own.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWATCH_")}
        self.env.update(
            PULSEWATCH_KAFKA_BROKERS=BROKERS,
            PULSEWATCH_POSTGRES_URL=POSTGRES_URL,
            PULSEWATCH_KAFKA_TOPIC_PREFIX=self.prefix,
            PULSEWATCH_POSTGRES_SCHEMA=self.schema,
            PULSEWATCH_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
            PULSEWATCH_INGEST_LISTEN=f"127.0.0.1:{free_port()}",
            PULSEWATCH_HTTP_API_TOKENS=TOKEN,
            RUST_LOG="info,librdkafka=warn",
        )
        self.env.update(settings)
        self.command("topology", "apply")
        self.command("migrate")
        log = open(self.log, "wb")
        self.process = subprocess.Popen(
            [str(BINARY), "run", "--stage", stage], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"pulsewatch exited: {self.log.read_text()[-3000:]}")
            return http_status(f"{self.url}/readyz") == 200

        wait_for("pulsewatch run to be ready", ready, 90, every=0.5)

    def loadgen(self, *args: str) -> subprocess.Popen[bytes]:
        """Starts `pulsewatch loadgen` into this run's topics, as a child stopped with the run."""
        log = open(self.workdir / "loadgen.log", "ab")
        manifest = str(self.workdir / "manifest.json")
        child = subprocess.Popen(
            [str(BINARY), "loadgen", "--manifest", manifest, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.children.append(child)
        return child

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            conn.execute(sql)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stops the children and the run (SIGTERM, then SIGKILL), then drops the schema and topics."""
        for child in [*self.children, *([self.process] if self.process else [])]:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(40)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(10)
        if self.env:
            cleanup(self.prefix, self.schema)


def cleanup(prefix: str, schema: str) -> None:
    """Drops the schema and deletes the topics of `prefix` (best effort)."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]
    except Exception as e:  # noqa: BLE001 - cleanup must not hide the outcome
        print(f"could not drop schema {schema}: {e}", file=sys.stderr)
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": BROKERS})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        for future in admin.delete_topics(topics, operation_timeout=30).values() if topics else []:
            future.result(30)
    except Exception as e:  # noqa: BLE001
        print(f"could not delete topics of {prefix}: {e}", file=sys.stderr)


def launch_chromium(playwright: Any, args: Sequence[str] = ()) -> Any:
    """Debian's Chromium, headless, driven by Playwright."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *args])
