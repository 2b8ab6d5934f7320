//! The live mode of the pipeline bench: a fleet beating in real time at its interval, the
//! load generator in a process of its own, the processor and the sink in this one. What it
//! costs per beat: the bytes the broker stored for `app-state` (its log segments on disk,
//! compressed as written), the CPU time of this process (processor and sink), and how far
//! each stage fell behind (records behind the end of `heartbeats`, in seconds of the fleet's
//! beats), sampled every second once the fleet has beaten once. With
//! `PULSEWATCH_BENCH_LIVE_BACKFILL_MIN` the fleet first writes that much history, so that its
//! trend windows are full, and the figures count from when the processor has caught up.
//! With `PULSEWATCH_BENCH_LIVE_RESTART=1` a processor is then started as a user starts one
//! (`pulsewatch run --stage processor`, a process of its own) on the changelog as the run
//! left it, and timed from its start to its first ready `/readyz`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pulsewatch::app_state::STATE_KINDS;
use pulsewatch::config::Config;
use pulsewatch::loadgen::manifest::Manifest;
use pulsewatch::metrics::METRICS;
use pulsewatch::shutdown::Shutdown;
use pulsewatch::topology::{Topology, names};
use pulsewatch::{kafka, processor, readback, sink, store};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{clean_up, fresh_config};

/// One live run's figures.
pub struct LiveFigures {
    apps: usize,
    interval: Duration,
    /// Minutes of history processed before the live run was measured.
    backfill: u64,
    /// Beats the processor read live.
    beats: u64,
    /// `app-state` records the processor wrote meanwhile, their bytes (key, value and
    /// header, before compression), and the bytes they added to its log segments (compressed,
    /// and net of what compaction removed meanwhile).
    state_records: u64,
    state_bytes_produced: u64,
    state_bytes: u64,
    /// The bytes produced by kind of record, in the order of [`STATE_KINDS`].
    by_kind: [u64; STATE_KINDS.len()],
    /// CPU seconds of this process from the first live beat until both stages caught up.
    cpu_secs: f64,
    /// The most each stage was behind, in seconds of beats.
    processor_lag_s: f64,
    sink_lag_s: f64,
    /// Alerts the processor wrote about the time the fleet was beating, by kind: none is
    /// expected from this healthy fleet (it falls silent at the end of the run).
    alerts: BTreeMap<String, u64>,
    /// Rows in heartbeat_event, metric_rollup_1m and application at the end.
    rows: [i64; 3],
    /// With `PULSEWATCH_BENCH_LIVE_RESTART`, a processor restarted on what the run left.
    restart: Option<Restart>,
}

/// A processor restarted after the run: from its process's start to a ready `/readyz`.
struct Restart {
    /// Seconds until ready.
    ready_s: f64,
    /// What it restored from: the bytes of `app-state`'s log segments and the records the
    /// processor wrote to it over the whole run (backfill included), before any compaction.
    state_bytes: u64,
    state_records: u64,
}

/// Bytes per beat of each kind of `app-state` record: "snapshot 175, state 233, ...".
fn by_kind(bytes: &[u64; STATE_KINDS.len()], beats: f64) -> String {
    let each = STATE_KINDS.iter().zip(bytes).map(|(kind, &b)| format!("{kind} {:.0}", b as f64 / beats));
    each.collect::<Vec<_>>().join(", ")
}

impl std::fmt::Display for LiveFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let beats = self.beats.max(1) as f64;
        write!(
            f,
            "  {:>7} apps every {:>2} s after {} min of history: {} live beats; app-state {:.0} bytes/beat produced ({}), {:.0} on disk ({:.2} records/beat); CPU {:.1} µs/beat (processor + sink); most behind: processor {:.1} s, sink {:.1} s; alerts {:?}; rows: heartbeat_event {}, metric_rollup_1m {}, application {}",
            self.apps,
            self.interval.as_secs(),
            self.backfill,
            self.beats,
            self.state_bytes_produced as f64 / beats,
            by_kind(&self.by_kind, beats),
            self.state_bytes as f64 / beats,
            self.state_records as f64 / beats,
            self.cpu_secs * 1e6 / beats,
            self.processor_lag_s,
            self.sink_lag_s,
            self.alerts,
            self.rows[0],
            self.rows[1],
            self.rows[2]
        )?;
        if let Some(r) = &self.restart {
            write!(
                f,
                "; restarted processor ready after {:.2} s ({:.1} s per million apps) on {:.0} MB of app-state ({} records written)",
                r.ready_s,
                r.ready_s * 1e6 / self.apps as f64,
                r.state_bytes as f64 / 1e6,
                r.state_records
            )?;
        }
        Ok(())
    }
}

/// Beats per second of each live run (`PULSEWATCH_BENCH_LIVE_RATE`, default 20,000): the
/// fleet is this many apps × the interval.
fn rate() -> usize {
    std::env::var("PULSEWATCH_BENCH_LIVE_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// Seconds of each live run (`PULSEWATCH_BENCH_LIVE_S`, default 60).
fn span() -> Duration {
    Duration::from_secs(
        std::env::var("PULSEWATCH_BENCH_LIVE_S").ok().and_then(|v| v.parse().ok()).unwrap_or(60),
    )
}

/// The beat intervals of the live runs, in seconds (`PULSEWATCH_BENCH_LIVE_INTERVALS`,
/// default 1,10).
fn intervals() -> Vec<u64> {
    let list = std::env::var("PULSEWATCH_BENCH_LIVE_INTERVALS").unwrap_or_else(|_| "1,10".into());
    list.split(',').map(|s| s.trim().parse().expect("PULSEWATCH_BENCH_LIVE_INTERVALS: seconds")).collect()
}

/// Runs the live fleet at each interval and prints each run's figures.
pub fn live(rt: &tokio::runtime::Runtime) {
    let figures: Vec<LiveFigures> = intervals()
        .into_iter()
        .map(|secs| {
            let interval = Duration::from_secs(secs);
            let f = run(rt, rate() * secs as usize, interval, span());
            println!("{f}");
            f
        })
        .collect();
    println!("\nlive fleets, {} s each, one instance per app:", span().as_secs());
    for f in &figures {
        println!("{f}");
    }
}

/// Minutes of history written before each live run (`PULSEWATCH_BENCH_LIVE_BACKFILL_MIN`,
/// default 0), so that the applications' trend windows are full when it is measured: the
/// figures count from the moment the processor has caught up with it.
fn backfill_minutes() -> u64 {
    std::env::var("PULSEWATCH_BENCH_LIVE_BACKFILL_MIN").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The counters a run's figures are the growth of.
#[derive(Clone, Copy, Default)]
struct Counters {
    /// Beats the processor read.
    beats: u64,
    /// `app-state` records the processor wrote, their bytes before compression, and the
    /// bytes its log segments hold.
    state_records: u64,
    state_bytes_produced: u64,
    state_bytes: u64,
    by_kind: [u64; STATE_KINDS.len()],
    /// CPU seconds of this process.
    cpu_secs: f64,
}

impl Counters {
    fn now(config: &Config) -> Counters {
        let app_state = config.kafka.name(names::APP_STATE);
        let heartbeats = config.kafka.name(names::HEARTBEATS);
        Counters {
            beats: METRICS.records_in.with_label_values(&["processor", &heartbeats]).get(),
            state_records: METRICS.records_out.with_label_values(&["processor", &app_state]).get(),
            state_bytes_produced: METRICS.bytes_out.with_label_values(&["processor", &app_state]).get(),
            state_bytes: log_bytes(&kafka_data_dir(), &app_state),
            by_kind: STATE_KINDS.map(|kind| METRICS.state_bytes_out.with_label_values(&[kind]).get()),
            cpu_secs: cpu_seconds(),
        }
    }

    fn since(self, base: Counters) -> Counters {
        Counters {
            beats: self.beats - base.beats,
            state_records: self.state_records - base.state_records,
            state_bytes_produced: self.state_bytes_produced - base.state_bytes_produced,
            state_bytes: self.state_bytes.saturating_sub(base.state_bytes),
            by_kind: std::array::from_fn(|k| self.by_kind[k] - base.by_kind[k]),
            cpu_secs: self.cpu_secs - base.cpu_secs,
        }
    }
}

fn run(rt: &tokio::runtime::Runtime, apps: usize, interval: Duration, span: Duration) -> LiveFigures {
    let config = fresh_config(rt, &Topology::builtin());
    let shutdown = Shutdown::new();
    let ready = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
    let stages = [
        {
            let (config, shutdown, ready) = (config.clone(), shutdown.clone(), ready[0].clone());
            std::thread::spawn(move || processor::run(&config, &shutdown, &ready).map_err(|e| e.to_string()))
        },
        {
            let (config, shutdown, ready) = (config.clone(), shutdown.clone(), ready[1].clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                sink::run(&config, &shutdown, &ready, &handle).map_err(|e| e.to_string())
            })
        },
    ];
    while !ready.iter().all(|r| r.load(Ordering::Relaxed)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let backfill = backfill_minutes();
    let backfilled = apps as u64 * backfill * 60 / interval.as_secs().max(1);
    let mut base = (backfill == 0).then(|| Counters::now(&config));
    let manifest = std::env::temp_dir().join("pulsewatch-bench-live.json");
    let mut loadgen = Command::new(env!("CARGO_BIN_EXE_pulsewatch"))
        .args(["loadgen", "--quiet", "--instances", "1", "--seed", "11", "--app-prefix", "live-"])
        .args(["--apps", &apps.to_string()])
        .args(["--interval", &format!("{}s", interval.as_secs())])
        .args(["--duration", &format!("{}s", span.as_secs())])
        .args(["--backfill", &format!("{backfill}m")])
        .args(["--manifest", &manifest.to_string_lossy()])
        .env("PULSEWATCH_KAFKA_TOPIC_PREFIX", &config.kafka.topic_prefix)
        .spawn()
        .expect("the pulsewatch binary runs the load generator");
    let lag = Lag::new(&config, rt, apps as f64 / interval.as_secs_f64());
    let mut live_since = Instant::now();
    let (mut processor_lag_s, mut sink_lag_s) = (0.0f64, 0.0f64);
    while loadgen.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_secs(1));
        let Behind { read: p, sink: s, .. } = lag.behind_s();
        if base.is_none() {
            // The backfill is processed: the live measurement starts.
            let beats = METRICS.records_in.with_label_values(&["processor", &lag.topic]).get();
            if beats >= backfilled && p < 1.0 {
                base = Some(Counters::now(&config));
                live_since = Instant::now();
            }
        } else if live_since.elapsed() > interval + Duration::from_secs(2) {
            (processor_lag_s, sink_lag_s) = (processor_lag_s.max(p), sink_lag_s.max(s));
        }
    }
    assert!(loadgen.wait().unwrap().success(), "the load generator failed");
    let base = base.expect("the processor caught up with the backfill before the live run ended");
    // The fleet's last beats were due before this: deadlines after it are no false alarms
    // (the stages run on until every state is written, so they fire).
    let load_end_ms = Manifest::read(&manifest).expect("the load generator's manifest").end_ms;
    // Both stages catch up with the last beats before the CPU is read, the processor's
    // states holding every beat written (its offsets committed to the end).
    let caught_up = Instant::now();
    loop {
        let Behind { read: p, committed, sink: s } = lag.behind_s();
        (processor_lag_s, sink_lag_s) = (processor_lag_s.max(p), sink_lag_s.max(s));
        if (committed, s) == (0.0, 0.0) {
            break;
        }
        assert!(caught_up.elapsed() < Duration::from_secs(300), "the stages did not catch up in 5 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    let grown = Counters::now(&config).since(base);
    shutdown.trigger();
    for stage in stages {
        stage.join().unwrap().expect("a stage stopped with an error");
    }
    let restart =
        std::env::var("PULSEWATCH_BENCH_LIVE_RESTART").is_ok_and(|v| v == "1").then(|| restart(&config));
    let figures = LiveFigures {
        apps,
        interval,
        backfill,
        beats: grown.beats,
        state_records: grown.state_records,
        state_bytes_produced: grown.state_bytes_produced,
        alerts: alerts_by_kind(&config, load_end_ms),
        state_bytes: grown.state_bytes,
        by_kind: grown.by_kind,
        cpu_secs: grown.cpu_secs,
        processor_lag_s,
        sink_lag_s,
        rows: row_counts(&config, rt),
        restart,
    };
    clean_up(&config, rt);
    figures
}

/// Starts `pulsewatch run --stage processor` on the run's topics and times it until its
/// `/readyz` answers 200: the restore of `app-state` as it stands, uncompacted or not.
fn restart(config: &Config) -> Restart {
    let app_state = config.kafka.name(names::APP_STATE);
    let state_records = METRICS.records_out.with_label_values(&["processor", &app_state]).get();
    let state_bytes = log_bytes(&kafka_data_dir(), &app_state);
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulsewatch"))
        .args(["run", "--stage", "processor"])
        .env("PULSEWATCH_KAFKA_TOPIC_PREFIX", &config.kafka.topic_prefix)
        .env("PULSEWATCH_POSTGRES_SCHEMA", &config.postgres.schema)
        .env("PULSEWATCH_HTTP_LISTEN", listen.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the pulsewatch binary runs the processor");
    while !ready(listen) {
        assert!(child.try_wait().unwrap().is_none(), "the restarted processor stopped");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the restarted processor not ready in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready_s = started.elapsed().as_secs_f64();
    // SAFETY: a signal to the child this function started and has not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "the restarted processor stopped cleanly");
    Restart { ready_s, state_bytes, state_records }
}

/// Whether `GET /readyz` at `addr` answers 200.
fn ready(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 200")
}

/// How far the processor and the sink (its `sink_offset` rows) are behind the end of
/// `heartbeats`, in seconds of beats at `rate` a second.
struct Lag<'a> {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// The query of the sink's stored offsets, on a connection kept for the run.
    database: tokio_postgres::Client,
    sink_offsets: String,
    rt: &'a tokio::runtime::Runtime,
    rate: f64,
}

/// Seconds of beats behind the end of `heartbeats`: not yet read by the processor, not yet
/// committed by it (its states hold beats unwritten for up to `detection.state_interval_ms`,
/// which a restart reads again), not yet stored by the sink.
struct Behind {
    read: f64,
    committed: f64,
    sink: f64,
}

impl<'a> Lag<'a> {
    fn new(config: &Config, rt: &'a tokio::runtime::Runtime, rate: f64) -> Lag<'a> {
        let consumer =
            kafka::committed_offsets_reader(&config.kafka, &config.kafka.name("processor")).unwrap();
        let topic = config.kafka.name(names::HEARTBEATS);
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let partitions = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let database = rt.block_on(store::connect(&config.postgres)).unwrap();
        let sink_offsets = format!(
            "SELECT partition, next_offset FROM \"{}\".sink_offset WHERE topic = $1",
            config.postgres.schema
        );
        Lag { consumer, topic, partitions, database, sink_offsets, rt, rate }
    }

    fn behind_s(&self) -> Behind {
        let timeout = Duration::from_secs(10);
        let ends: Vec<i64> = self
            .partitions
            .iter()
            .map(|&p| self.consumer.fetch_watermarks(&self.topic, p, timeout).unwrap().1)
            .collect();
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self.consumer.committed_offsets(tpl, timeout).unwrap();
        let processed: Vec<i64> = self
            .partitions
            .iter()
            .map(|&p| {
                committed.find_partition(&self.topic, p).and_then(|e| e.offset().to_raw()).unwrap_or(0).max(0)
            })
            .collect();
        let stored = self.sink_offsets();
        let behind = |done: &dyn Fn(usize) -> i64| -> f64 {
            ends.iter().enumerate().map(|(i, end)| (end - done(i)).max(0)).sum::<i64>() as f64 / self.rate
        };
        let sink = behind(&|i| stored.iter().find(|(p, _)| *p == self.partitions[i]).map_or(0, |s| s.1));
        let read = METRICS.records_in.with_label_values(&["processor", &self.topic]).get() as i64;
        let unread = (ends.iter().sum::<i64>() - read).max(0) as f64 / self.rate;
        Behind { read: unread, committed: behind(&|i| processed[i]), sink }
    }

    fn sink_offsets(&self) -> Vec<(i32, i64)> {
        let rows = self.rt.block_on(self.database.query(&self.sink_offsets, &[&self.topic])).unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

/// CPU seconds (user and system) this process has used.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The broker's data directory: `PULSEWATCH_BENCH_KAFKA_DATA`, else the local stack's
/// (`scripts/stack` keeps it in `.stack/kafka/data` of the checkout).
fn kafka_data_dir() -> PathBuf {
    std::env::var_os("PULSEWATCH_BENCH_KAFKA_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".stack/kafka/data"))
}

/// Bytes in the log segments of every partition of `topic` under `data`.
fn log_bytes(data: &Path, topic: &str) -> u64 {
    let is_partition = |name: &str| {
        name.strip_prefix(topic).and_then(|r| r.strip_prefix('-')).is_some_and(|n| n.parse::<u32>().is_ok())
    };
    let dirs =
        std::fs::read_dir(data).unwrap_or_else(|e| panic!("the broker's data at {}: {e}", data.display()));
    dirs.flatten()
        .filter(|d| is_partition(&d.file_name().to_string_lossy()))
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "log"))
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn row_counts(config: &Config, rt: &tokio::runtime::Runtime) -> [i64; 3] {
    rt.block_on(async {
        let c = store::connect(&config.postgres).await.unwrap();
        let mut rows = [0; 3];
        for (n, table) in rows.iter_mut().zip(["heartbeat_event", "metric_rollup_1m", "application"]) {
            let q = format!("SELECT count(*) FROM \"{}\".{table}", config.postgres.schema);
            *n = c.query_one(&q, &[]).await.unwrap().get(0);
        }
        rows
    })
}

/// The alerts the run wrote about the time the fleet was beating (before `until_ms`),
/// counted by kind and state.
fn alerts_by_kind(config: &Config, until_ms: i64) -> BTreeMap<String, u64> {
    let topic = config.kafka.name(names::ALERTS);
    let mut kinds = BTreeMap::new();
    for m in readback::read_to_end(&config.kafka, &topic, Duration::from_secs(120)).unwrap() {
        let alert =
            rdkafka::message::Message::payload(&m).and_then(|p| pulsewatch::alert::Alert::decode(p).ok());
        if alert.as_ref().is_some_and(|a| a.event_at >= until_ms) {
            continue;
        }
        let kind =
            alert.map_or_else(|| "undecodable".to_owned(), |a| format!("{} {:?}", a.kind.as_str(), a.state));
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}
