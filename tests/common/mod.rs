//! Shared helpers for the integration tests: reaching the real stack started by
//! `scripts/stack up`, and giving each test its own topics and schema.
#![allow(dead_code)]

pub mod http;
pub mod python;

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use pulsewatch::config::Config;
use pulsewatch::loadgen::{self, LoadgenOptions};
use pulsewatch::topology::names;

/// Runs `scripts/stack ACTION` (stop-kafka, start-postgres, ...) and checks it succeeded.
pub fn stack(action: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
    let status = std::process::Command::new("bash").arg(script).arg(action).status().unwrap();
    assert!(status.success(), "scripts/stack {action}: {status}");
}

/// A test's own config. Its topics and schema are removed when it is dropped after the test
/// passed, and kept after a failure, to be looked at: so the broker does not gather every
/// run's topics (each takes a directory per partition, and a broker with many thousands of
/// them starts slowly).
pub struct TestConfig(Config);

impl std::ops::Deref for TestConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

impl Drop for TestConfig {
    fn drop(&mut self) {
        let config = &self.0;
        if std::thread::panicking() {
            eprintln!(
                "kept for a look: topics {}* and schema {}",
                config.kafka.topic_prefix, config.postgres.schema
            );
            return;
        }
        let rt = runtime();
        if let Err(e) = rt
            .block_on(pulsewatch::topology::remove(&config.kafka, &pulsewatch::topology::Topology::builtin()))
        {
            eprintln!("topics {}* not removed: {e}", config.kafka.topic_prefix);
        }
        let drop_schema = format!("DROP SCHEMA IF EXISTS {} CASCADE", config.postgres.schema);
        let dropped = rt.block_on(async {
            let client = pulsewatch::store::connect(&config.postgres).await.map_err(|e| e.to_string())?;
            client.batch_execute(&drop_schema).await.map_err(|e| e.to_string())
        });
        if let Err(e) = dropped {
            eprintln!("schema {} not removed: {e}", config.postgres.schema);
        }
    }
}

/// A config pointing at the local stack, with a topic prefix and schema of this test's own.
pub fn isolated_config(test: &str) -> TestConfig {
    let mut config = Config::load(
        None,
        std::env::vars().filter(|(k, _)| {
            k.starts_with("PULSEWATCH_")
                && k != "PULSEWATCH_KAFKA_TOPIC_PREFIX"
                && k != "PULSEWATCH_POSTGRES_SCHEMA"
        }),
    )
    .expect("the PULSEWATCH_* environment is a valid config");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tag = format!("{}_{}", test.replace('-', "_"), &id[..8]);
    config.kafka.topic_prefix = format!("it-{}-", tag.replace('_', "-"));
    config.postgres.schema = format!("it_{tag}").to_lowercase();
    require_stack(&config);
    TestConfig(config)
}

/// Fails, saying how to start the stack, when Kafka or PostgreSQL cannot be reached.
pub fn require_stack(config: &Config) {
    let broker = config.kafka.brokers.split(',').next().unwrap_or_default().trim().to_owned();
    reachable("Kafka", &broker);
    let pg: tokio_postgres::Config = config.postgres.url.parse().expect("valid postgres url");
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    reachable("PostgreSQL", &format!("{host}:{port}"));
}

fn reachable(what: &str, addr: &str) {
    let ok = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        ok,
        "cannot reach {what} at {addr}: start the local stack with `scripts/stack up` \
         (or run the whole suite with `scripts/test`), or point PULSEWATCH_KAFKA_BROKERS / \
         PULSEWATCH_POSTGRES_URL at a running one"
    );
}

/// A multi-threaded runtime for tests that mix blocking Kafka calls and async code.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A `pulsewatch run` child process with this test's config; killed when dropped.
pub struct Pipeline {
    child: std::process::Child,
    pub http: String,
    /// Its stdout and stderr; removed when the test passes.
    pub log: std::path::PathBuf,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Pipeline {
    /// Starts the given stages with `extra` environment overrides and waits until ready.
    pub fn start(config: &Config, stage: &str, extra: &[(&str, &str)]) -> Pipeline {
        let mut p = Pipeline::spawn(config, stage, extra);
        p.wait_ready(Duration::from_secs(60));
        p
    }

    /// Starts the given stages with `extra` environment overrides, without waiting.
    pub fn spawn(config: &Config, stage: &str, extra: &[(&str, &str)]) -> Pipeline {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let log_path = std::env::temp_dir().join(format!("{}{stage}-{port}.log", config.kafka.topic_prefix));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pulsewatch"));
        cmd.args(["run", "--stage", stage])
            .env("PULSEWATCH_KAFKA_BROKERS", &config.kafka.brokers)
            .env("PULSEWATCH_KAFKA_TOPIC_PREFIX", &config.kafka.topic_prefix)
            .env("PULSEWATCH_POSTGRES_URL", &config.postgres.url)
            .env("PULSEWATCH_POSTGRES_SCHEMA", &config.postgres.schema)
            .env("PULSEWATCH_HTTP_LISTEN", &http)
            // Any free port, so that instances side by side do not collide; tests of the
            // ingest stage choose theirs in `extra`.
            .env("PULSEWATCH_INGEST_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info,librdkafka=warn")
            .current_dir(std::env::temp_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("pulsewatch starts");
        Pipeline { child, http, log: log_path }
    }

    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("pulsewatch exited early: {status}");
            }
            if http_get(&self.http, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("pulsewatch not ready within {within:?}");
    }

    /// The value of a metric line starting with `prefix` (summed over matching lines).
    /// Fails at once if the process has exited, rather than leaving the caller waiting.
    pub fn metric(&self, prefix: &str) -> f64 {
        let Some((_, body)) = http_get(&self.http, "/metrics") else {
            assert!(
                !self.has_exited(),
                "pulsewatch (pid {}) exited while its metrics were wanted",
                self.pid()
            );
            return 0.0;
        };
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Whether the process has ended (a zombie until it is waited for), without reaping it.
    fn has_exited(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits until the process exits on its own; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// Sends SIGTERM and waits for a clean exit; returns how long it took.
    pub fn stop(mut self) -> Duration {
        let started = std::time::Instant::now();
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "pulsewatch exited with {status} on SIGTERM");
        started.elapsed()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.print_log_tail(exited);
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl Pipeline {
    /// After a failed test: whether the process had exited, and the end of its log.
    fn print_log_tail(&self, exited: Option<std::process::ExitStatus>) {
        const LINES: usize = 80;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LINES);
        let state =
            exited.map_or("still running when the test failed".to_owned(), |s| format!("had exited: {s}"));
        eprintln!(
            "pulsewatch (pid {}) {state}; the last {} of {} lines of {}:",
            self.child.id(),
            lines.len() - from,
            lines.len(),
            self.log.display()
        );
        for line in &lines[from..] {
            eprintln!("  | {line}");
        }
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// Polls `check` until it returns true or `within` passes.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("not within {within:?}: {what}");
}

/// Every alert transition on the alerts topic (read_committed).
pub fn alerts(config: &Config) -> Vec<pulsewatch::alert::Alert> {
    use rdkafka::message::Message;
    let topic = config.kafka.name(pulsewatch::topology::names::ALERTS);
    pulsewatch::readback::read_to_end(&config.kafka, &topic, Duration::from_secs(60))
        .unwrap()
        .iter()
        .map(|m| pulsewatch::alert::Alert::decode(m.payload().unwrap()).unwrap())
        .collect()
}

/// A config file for `pulsewatch run` children giving consumers short group sessions (6 s),
/// so that a killed or paused instance's partitions move on quickly.
pub fn short_session_config(config: &Config) -> std::path::PathBuf {
    // A killed member's transaction stays open until the broker aborts it: 10 s here.
    session_config(config, 10_000)
}

/// As [`short_session_config`], with transactions the broker aborts after
/// `transaction_timeout_ms` (a producer's message timeout may not be longer: 10 s).
pub fn session_config(config: &Config, transaction_timeout_ms: u64) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("{}pulsewatch.toml", config.kafka.topic_prefix));
    let text = format!(
        "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         \"transaction.timeout.ms\" = \"{transaction_timeout_ms}\"\n\"message.timeout.ms\" = \"10000\"\n"
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// How far consumer group `group` has committed `topic`: (records committed, records in it),
/// summed over the partitions. Asks again while the broker answers with an error (it may be
/// restarting: a broker holding many topics takes a while to load its group coordinators),
/// for 180 s at most.
pub fn committed_progress(config: &Config, group: &str, topic: &str) -> (i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        match try_committed_progress(config, group, topic) {
            Ok(progress) => return progress,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("committed offsets of {group}: {e}; asking again");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    }
}

fn try_committed_progress(
    config: &Config,
    group: &str,
    topic: &str,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let consumer = pulsewatch::kafka::committed_offsets_reader(&config.kafka, group)?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut list = rdkafka::TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        list.add_partition(topic, p.id());
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    let (mut done, mut total) = (0, 0);
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        total += high - low;
        if let rdkafka::Offset::Offset(o) = e.offset() {
            done += o.clamp(low, high) - low;
        }
    }
    Ok((done, total))
}

/// Whether consumer group `group` has committed every partition of `topic` to its end.
pub fn committed_to_end(config: &Config, group: &str, topic: &str) -> bool {
    let (done, total) = committed_progress(config, group, topic);
    done >= total
}

/// Creates the topics and the schema of an isolated test.
pub fn prepare(test: &str) -> TestConfig {
    let config = isolated_config(test);
    let rt = runtime();
    rt.block_on(pulsewatch::topology::apply(&config.kafka, &pulsewatch::topology::Topology::builtin()))
        .unwrap();
    rt.block_on(async {
        let mut client = pulsewatch::store::connect(&config.postgres).await.unwrap();
        pulsewatch::store::migrate::migrate(&mut client, &config.postgres.schema).await.unwrap();
    });
    config
}

/// One query's first column, as text, of every row.
pub fn query_strings(config: &Config, sql: &str) -> Vec<String> {
    runtime().block_on(async {
        let client = pulsewatch::store::connect(&config.postgres).await.unwrap();
        client.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
    })
}

/// One query's first column as i64.
pub fn query_i64(config: &Config, sql: &str) -> i64 {
    runtime().block_on(async {
        let client = pulsewatch::store::connect(&config.postgres).await.unwrap();
        client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
    })
}

// Determinism: one load, run on topics of its own, and its alert transitions.

/// An alert transition in the terms a replay must reproduce.
pub type Transition = (String, String, String, String, i64);

/// The alert transitions (read_committed) about the load's own event time.
pub fn transitions(config: &pulsewatch::config::Config, end_ms: i64) -> Vec<Transition> {
    let mut all: Vec<Transition> = alerts(config)
        .into_iter()
        .filter(|a| a.event_at < end_ms)
        .map(|a| {
            (
                a.alert_id,
                a.kind.as_str().to_owned(),
                a.severity.as_str().to_owned(),
                a.state.as_str().to_owned(),
                a.event_at,
            )
        })
        .collect();
    all.sort();
    all
}

/// The closed minutes (read_committed) of the load's own event time, as published. The
/// load's last minute is left out: the beats close every earlier one, but that one closes
/// only once the processor has read to the end and the watermark follows the wall clock,
/// which a stopped run may or may not have committed.
pub fn rollups(config: &pulsewatch::config::Config, end_ms: i64) -> Vec<String> {
    use rdkafka::message::Message;
    let topic = config.kafka.name(names::METRICS_1M);
    let mut all: Vec<String> =
        pulsewatch::readback::read_to_end(&config.kafka, &topic, Duration::from_secs(60))
            .unwrap()
            .iter()
            .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
            .filter(|json| {
                let r: pulsewatch::metrics_1m::Rollup = serde_json::from_str(json).unwrap();
                r.minute + 2 * 60_000 <= end_ms
            })
            .collect();
    all.sort();
    all
}

/// What a run decided and stored, in the terms a replay must reproduce.
pub struct Decisions {
    pub transitions: Vec<Transition>,
    pub rollups: Vec<String>,
    /// `alert_event` rows about the load's event time, as the transitions above.
    pub stored_transitions: Vec<String>,
    /// `heartbeat_event` rows, and the distinct (app, instance, seq, sent_at) among them.
    pub beats: (i64, i64),
    /// `application` rows, on the columns that do not depend on how long the processor ran
    /// after the load's last beat (status, health, instances up and open alerts follow the
    /// wall clock once the load has ended).
    pub applications: Vec<String>,
}

/// Reads a run's decisions once its sink has stored every beat and every application's
/// final snapshot.
pub fn decisions(config: &pulsewatch::config::Config, m: &loadgen::Manifest) -> Decisions {
    let s = &config.postgres.schema;
    eventually(Duration::from_secs(300), "the sink stores every beat", || {
        query_i64(config, &format!("SELECT count(*) FROM \"{s}\".heartbeat_event")) as u64 >= m.beats_total
    });
    let settled = format!(
        "SELECT count(*) FILTER (WHERE a.last_seen = h.last OR a.status = 'STOPPED') - count(*)
         FROM (SELECT app_id, max(sent_at) AS last FROM \"{s}\".heartbeat_event GROUP BY app_id) h
         LEFT JOIN \"{s}\".application a USING (app_id)"
    );
    eventually(Duration::from_secs(120), "the sink stores every application's last snapshot", || {
        query_i64(config, &settled) == 0
    });
    let beats = (
        query_i64(config, &format!("SELECT count(*) FROM \"{s}\".heartbeat_event")),
        query_i64(
            config,
            &format!(
                "SELECT count(*) FROM (SELECT DISTINCT app_id, instance_id, seq, sent_at FROM \"{s}\".heartbeat_event) d"
            ),
        ),
    );
    let transitions = transitions(config, m.end_ms);
    let end = chrono::DateTime::from_timestamp_millis(m.end_ms).unwrap().to_rfc3339();
    let stored = format!(
        "SELECT concat_ws(' ', alert_id, kind, severity, state, (extract(epoch FROM event_at) * 1000)::bigint)
         FROM \"{s}\".alert_event WHERE event_at < '{end}' ORDER BY 1"
    );
    eventually(Duration::from_secs(120), "the sink stores every alert transition", || {
        query_strings(config, &stored).len() >= transitions.len()
    });
    let applications = query_strings(
        config,
        &format!(
            "SELECT concat_ws(' ', app_id, instances_total, last_seen, last_figures, labels)
             FROM \"{s}\".application ORDER BY app_id"
        ),
    );
    Decisions {
        transitions,
        rollups: rollups(config, m.end_ms),
        stored_transitions: query_strings(config, &stored),
        beats,
        applications,
    }
}

/// The same alert transitions, closed minutes, beats and applications as the reference,
/// none twice.
pub fn assert_same_decisions(scenario: &str, expected: &Decisions, got: &Decisions) {
    assert_same(&format!("{scenario}: alert transitions"), &expected.transitions, &got.transitions);
    assert_same(&format!("{scenario}: one-minute rollups"), &expected.rollups, &got.rollups);
    assert_same(
        &format!("{scenario}: alert_event rows"),
        &expected.stored_transitions,
        &got.stored_transitions,
    );
    assert_eq!(got.beats, expected.beats, "{scenario}: heartbeat_event rows (all, distinct)");
    assert_same(&format!("{scenario}: application rows"), &expected.applications, &got.applications);
}

fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, expected: &[T], got: &[T]) {
    let missing: Vec<_> = expected.iter().filter(|t| !got.contains(t)).collect();
    let extra: Vec<_> = got.iter().filter(|t| !expected.contains(t)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:#?}\nextra {extra:#?}");
    assert_eq!(got.len(), expected.len(), "{what}: none twice");
}

/// Publishes the same mixed-fault load (fixed seed and clock) into `config`'s topics.
pub fn publish_load(config: &pulsewatch::config::Config, now_ms: i64) -> pulsewatch::loadgen::Manifest {
    loadgen::run(&config.kafka, &load_options(now_ms, None)).unwrap()
}

/// The mixed-fault load: a 60-minute history of 100 applications, 2 instances each, sent as
/// fast as it goes or at `rate` records per second.
fn load_options(now_ms: i64, rate: Option<f64>) -> LoadgenOptions {
    LoadgenOptions {
        apps: 100,
        instances: 2,
        backfill: Some(Duration::from_secs(60 * 60)),
        mix: true,
        seed: 21,
        now_ms: Some(now_ms),
        progress: false,
        rate,
        ..LoadgenOptions::default()
    }
}

/// One run of the load on topics of its own.
pub struct Run {
    pub config: TestConfig,
    pub file: std::path::PathBuf,
    pub group: String,
    pub heartbeats: String,
}

impl Run {
    pub fn new(test: &str, now_ms: i64) -> (Run, pulsewatch::loadgen::Manifest) {
        let config = prepare(test);
        let m = publish_load(&config, now_ms);
        let file = short_session_config(&config);
        let (group, heartbeats) = (config.kafka.name("processor"), config.kafka.name(names::HEARTBEATS));
        (Run { config, file, group, heartbeats }, m)
    }

    /// A run whose load is still being written while it runs: sent at `rate` records per
    /// second by the returned thread.
    pub fn fed(test: &str, now_ms: i64, rate: f64) -> (Run, std::thread::JoinHandle<loadgen::Manifest>) {
        let config = prepare(test);
        let kafka = config.kafka.clone();
        let load =
            std::thread::spawn(move || loadgen::run(&kafka, &load_options(now_ms, Some(rate))).unwrap());
        let file = short_session_config(&config);
        let (group, heartbeats) = (config.kafka.name("processor"), config.kafka.name(names::HEARTBEATS));
        (Run { config, file, group, heartbeats }, load)
    }

    /// An instance running both stages, ready; `slot` names its processor's transactional
    /// id, as a pod name would.
    pub fn start(&self, slot: Option<usize>) -> Pipeline {
        let mut p = self.spawn(slot);
        p.wait_ready(Duration::from_secs(60));
        p
    }

    /// As [`Run::start`], without waiting for it to be ready.
    pub fn spawn(&self, slot: Option<usize>) -> Pipeline {
        let id = slot.map(|i| format!("{}processor-{i}", self.config.kafka.topic_prefix));
        let mut env = vec![("PULSEWATCH_CONFIG", self.file.to_str().unwrap())];
        if let Some(id) = &id {
            env.push(("PULSEWATCH_PROCESSOR_TRANSACTIONAL_ID", id.as_str()));
        }
        Pipeline::spawn(&self.config, "all", &env)
    }

    pub fn progress(&self) -> (i64, i64) {
        committed_progress(&self.config, &self.group, &self.heartbeats)
    }

    /// Waits until the processor has committed at least `share` of the heartbeats (see
    /// [`wait_for_committed_share`]).
    pub fn wait_for_progress(&self, share: f64) -> (i64, i64) {
        wait_for_committed_share(&self.config, &self.group, &self.heartbeats, share)
    }

    pub fn wait_until_done(&self) {
        eventually(Duration::from_secs(300), "every heartbeat is committed", || {
            committed_to_end(&self.config, &self.group, &self.heartbeats)
        });
    }
}

/// Waits until `group` has committed at least `share` of `topic`'s records, asking as often
/// as a question to the broker allows, and returns the progress it saw. Faults are placed by
/// progress, not by time, so that they land mid-run however fast the machine is.
pub fn wait_for_committed_share(config: &Config, group: &str, topic: &str, share: f64) -> (i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (done, total) = committed_progress(config, group, topic);
        if done as f64 >= share * total as f64 {
            return (done, total);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{group}: {share} of {topic} committed, got {done} of {total}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The membership changes that happened while the run was under way.
pub fn mid_run(progress: &[(i64, i64)]) -> usize {
    progress.iter().filter(|(done, total)| *done > 0 && done < total).count()
}

/// The reference: the load through one processor, never interrupted. Returns its manifest,
/// its decisions (checked free of duplicates and not empty).
pub fn reference_run(now_ms: i64) -> (loadgen::Manifest, Decisions) {
    let (reference, m) = Run::new("reference", now_ms);
    let p = reference.start(None);
    reference.wait_until_done();
    let expected = decisions(&reference.config, &m);
    p.stop();
    for (what, unique, all) in [
        ("transition", dedup(&expected.transitions), expected.transitions.len()),
        ("rollup", dedup(&expected.rollups), expected.rollups.len()),
    ] {
        assert_eq!(unique, all, "the reference has no duplicate {what}");
    }
    assert!(
        expected.transitions.len() >= 20,
        "a mixed load has alerts to compare: {:#?}",
        expected.transitions
    );
    let fired = |kind: &str| expected.transitions.iter().filter(|t| t.1 == kind && t.3 == "FIRING").count();
    for (kind, at_least) in [
        ("INSTANCE_RESTARTED", 2),
        ("FLAPPING", 2),
        ("INSTANCE_DOWN", 2),
        ("CPU_HIGH", 2),
        ("MEMORY_LEAK_SUSPECTED", 2),
    ] {
        assert!(fired(kind) >= at_least, "the load fires {kind} {at_least} times or more: {}", fired(kind));
    }
    assert!(expected.rollups.len() >= 100 * 50, "every app closes its minutes: {}", expected.rollups.len());
    assert_eq!(
        expected.beats,
        (m.beats_total as i64, m.beats_total as i64),
        "the reference stores every beat once"
    );
    assert_eq!(expected.applications.len(), m.per_app.len(), "the reference stores every application");
    assert_eq!(
        expected.stored_transitions.len(),
        expected.transitions.len(),
        "the reference stores every transition"
    );
    (m, expected)
}

fn dedup<T: Clone + PartialEq>(sorted: &[T]) -> usize {
    let mut v = sorted.to_vec();
    v.dedup();
    v.len()
}
