//! End-to-end throughput against the real stack (`scripts/stack up` first):
//!
//! 1. the load generator backfills a fleet's history into a fresh `heartbeats` topic;
//! 2. a no-op consumer reads that topic: the ceiling for anything that consumes it;
//! 3. the processor stage alone consumes it, its engines on one thread and then on one per
//!    core (`processor.engine_threads`): beats per second, and the ratio to the ceiling;
//! 4. the sink stage alone stores it and the processor's outputs, from its start until it has
//!    written every record; then a plain binary COPY of the rows it left into tables of the
//!    same columns and indexes, and the ratio of the two;
//! 5. a live run with faults measures alert latency (emitted_at − event_at) percentiles.
//!
//! Run: `cargo bench --bench pipeline` (PULSEWATCH_BENCH_APPS, default 2000 apps × 2
//! instances × 5 minutes of history). Under `cargo test` it runs a small load once.
//!
//! `cargo bench --bench pipeline -- live` runs a live fleet (see `pipeline/live.rs`) at 1 s and
//! 10 s intervals: `app-state` bytes and CPU per beat, and how far each stage fell behind.
//!
//! `cargo bench --bench pipeline -- sink` runs only the load, the processor and step 4, on a
//! narrow and a wide fleet (2,000 and 100,000 apps; PULSEWATCH_BENCH_APPS=2000,20000 chooses),
//! and prints the sink beside the plain COPY for each.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pulsewatch::alert::AlertKind;
use pulsewatch::config::Config;
use pulsewatch::loadgen::{self, LoadgenOptions};
use pulsewatch::metrics::METRICS;
use pulsewatch::shutdown::Shutdown;
use pulsewatch::topology::{self, Topology, names};
use pulsewatch::{processor, readback, sink, store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

#[path = "pipeline/live.rs"]
mod live;

/// The allocator the `pulsewatch` binary runs with (src/main.rs), so that these figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if args.iter().any(|a| a == "live") {
        live::live(&rt);
        return;
    }
    if args.iter().any(|a| a == "sink") {
        let fleets = fleet_widths().unwrap_or_else(|| vec![2_000, 100_000]);
        let figures: Vec<SinkFigures> = fleets.iter().map(|&apps| sink_beside_copy(&rt, apps)).collect();
        println!("\nsink beside a plain binary COPY of the rows it left (same run):");
        for f in &figures {
            println!("{f}");
        }
        return;
    }
    let apps = fleet_widths().map_or(if full { 2_000 } else { 50 }, |w| w[0]);
    whole_pipeline(&rt, apps, full);
}

/// `PULSEWATCH_BENCH_APPS`: one fleet width, or several separated by commas.
fn fleet_widths() -> Option<Vec<usize>> {
    let widths = std::env::var("PULSEWATCH_BENCH_APPS").ok()?;
    Some(widths.split(',').map(|w| w.trim().parse().expect("PULSEWATCH_BENCH_APPS: numbers")).collect())
}

/// The history backfilled: 5 minutes, or 25 s (five beats per instance) for a fleet wider
/// than 20,000 apps, so that a wide fleet's run stays within minutes;
/// `PULSEWATCH_BENCH_BACKFILL_S` sets it.
fn history(apps: usize) -> LoadgenOptions {
    let default = if apps > 20_000 { 25 } else { 300 };
    let secs =
        std::env::var("PULSEWATCH_BENCH_BACKFILL_S").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    LoadgenOptions {
        apps,
        instances: 2,
        backfill: Some(Duration::from_secs(secs)),
        seed: 9,
        progress: false,
        ..LoadgenOptions::default()
    }
}

/// A configuration on topics and a schema of their own, both created.
fn fresh_config(rt: &tokio::runtime::Runtime, topology: &Topology) -> Config {
    let mut config = Config::from_process(None).expect("a valid PULSEWATCH_* environment");
    let id = format!("{:08x}", rand::random::<u32>());
    config.kafka.topic_prefix = format!("bench-{id}-");
    config.postgres.schema = format!("bench_{id}");
    rt.block_on(topology::apply(&config.kafka, topology))
        .expect("Kafka reachable: start the local stack with scripts/stack up");
    rt.block_on(async {
        let mut c = store::connect(&config.postgres).await.expect("PostgreSQL reachable: scripts/stack up");
        store::migrate::migrate(&mut c, &config.postgres.schema).await.unwrap();
    });
    config
}

/// The topics of a backfill: `app-state` compacted only after an hour, so that the sink reads
/// every record the processor wrote, a fixed amount of work (the sink's progress is counted in
/// those records; cleaning them meanwhile would leave it short of the count).
fn backfill_topology() -> Topology {
    let mut topology = Topology::builtin();
    let app_state =
        topology.topics.iter_mut().find(|t| t.name == names::APP_STATE).expect("app-state declared");
    app_state.config.insert("min.compaction.lag.ms".into(), "3600000".into());
    topology
}

/// Deletes the run's topics and schema: they would only fill the broker's and the database's
/// disks.
fn clean_up(config: &Config, rt: &tokio::runtime::Runtime) {
    rt.block_on(topology::remove(&config.kafka, &Topology::builtin()))
        .expect("the bench's topics are deleted");
    rt.block_on(async {
        let c = store::connect(&config.postgres).await.unwrap();
        c.batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", config.postgres.schema)).await.unwrap();
    });
}

/// Backfills the history into the config's `heartbeats`; returns the beats.
fn load(config: &Config, opts: &LoadgenOptions) -> u64 {
    let m = loadgen::run(&config.kafka, opts).unwrap();
    println!(
        "load: {} apps x 2 instances x {} s = {} beats, produced at {:.0} beats/s",
        opts.apps,
        opts.backfill.unwrap_or_default().as_secs(),
        m.beats_total,
        m.achieved_rate
    );
    m.beats_total
}

/// The sink's time and a plain COPY's of the rows it left, on one fleet width.
struct SinkFigures {
    apps: usize,
    beats: u64,
    rows: u64,
    sink: SinkTimes,
    copy_secs: f64,
}

impl std::fmt::Display for SinkFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SinkTimes { total, starting } = self.sink;
        write!(
            f,
            "  {:>7} apps: {} beats, {} rows; sink {total:.2} s ({:.0} beats/s), {starting:.2} s of it before its first record; plain COPY {:.2} s: {:.2} of a plain COPY, {:.2} from its first record",
            self.apps,
            self.beats,
            self.rows,
            self.beats as f64 / total,
            self.copy_secs,
            self.copy_secs / total,
            self.copy_secs / (total - starting)
        )
    }
}

/// Backfills `apps`, runs the processor over it (its outputs are the sink's input too), then
/// the sink alone, then a plain COPY of the rows the sink left.
fn sink_beside_copy(rt: &tokio::runtime::Runtime, apps: usize) -> SinkFigures {
    let config = fresh_config(rt, &backfill_topology());
    let n = load(&config, &history(apps));
    let topic = config.kafka.name(names::HEARTBEATS);
    let secs = run_processor_until(&config, &|| {
        METRICS.records_in.with_label_values(&["processor", &topic]).get() >= n
    });
    println!("processor:        {:>10.0} beats/s", n as f64 / secs);
    let sink = run_sink_to_end(&config, rt);
    let (rows, copy_secs) = copy_ceiling(&config, rt);
    let figures = SinkFigures { apps, beats: n, rows, sink, copy_secs };
    println!("{figures}");
    clean_up(&config, rt);
    figures
}

/// The load, the no-op consumer, the processor, the sink beside a plain COPY, and the live
/// run's alert latency.
fn whole_pipeline(rt: &tokio::runtime::Runtime, apps: usize, full: bool) {
    let config = fresh_config(rt, &backfill_topology());

    // 1. History.
    let opts = history(apps);
    let n = load(&config, &opts);

    // 2. The ceiling: a consumer that does nothing with the records.
    let topic = config.kafka.name(names::HEARTBEATS);
    let (count, secs) = noop_consume(&config, &topic);
    assert_eq!(count, n);
    let ceiling = n as f64 / secs;
    println!("no-op consumer:   {ceiling:>10.0} records/s (ceiling)");

    // 3. The processor alone: its engines on one thread, on topics of their own with the
    // same load, then on one thread per core.
    let one = {
        let mut config = config.clone();
        config.kafka.topic_prefix = format!("{}one-", config.kafka.topic_prefix);
        config.processor.engine_threads = 1;
        rt.block_on(topology::apply(&config.kafka, &backfill_topology())).unwrap();
        assert_eq!(loadgen::run(&config.kafka, &opts).unwrap().beats_total, n);
        let topic = config.kafka.name(names::HEARTBEATS);
        let secs = run_processor_until(&config, &|| {
            METRICS.records_in.with_label_values(&["processor", &topic]).get() >= n
        });
        rt.block_on(topology::remove(&config.kafka, &Topology::builtin())).ok();
        n as f64 / secs
    };
    println!("processor, 1 engine thread:  {one:>10.0} beats/s ({:.2} of the ceiling)", one / ceiling);
    let threads = config.processor.engine_threads();
    let rate = run_processor_until(&config, &|| {
        METRICS.records_in.with_label_values(&["processor", &topic]).get() >= n
    });
    let all = n as f64 / rate;
    println!(
        "processor, {threads} engine threads: {all:>10.0} beats/s ({:.2} of the ceiling, {:.2}x one thread)",
        all / ceiling,
        all / one
    );

    // 4. The sink alone (it also stores the processor's outputs), beside a plain COPY.
    let SinkTimes { total: sink_secs, starting } = run_sink_to_end(&config, rt);
    println!(
        "sink:             {:>10.0} beats/s ({:.2} of the ceiling)",
        n as f64 / sink_secs,
        (n as f64 / sink_secs) / ceiling
    );
    let (copied, copy_secs) = copy_ceiling(&config, rt);
    println!(
        "plain COPY:       {copied} rows the sink left (raw beats, rollups, snapshots) in {copy_secs:.2} s; the sink took {sink_secs:.2} s ({starting:.2} s before its first record): {:.2} of a plain COPY, {:.2} from its first record",
        copy_secs / sink_secs,
        copy_secs / (sink_secs - starting)
    );

    // 5. Alert latency, live: disk-high (which fires on its beat) on a quarter of the fleet,
    // and an eighth that stops beating (liveness deadlines: LATE, DOWN, APP_DOWN).
    let shutdown = Shutdown::new();
    let worker = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        std::thread::spawn(move || processor::run(&config, &shutdown, &AtomicBool::new(false)).unwrap())
    };
    let live_apps = apps.min(200);
    let disk = (0..live_apps / 4).map(|i| format!("disk-high:{i}@{}s+4s", 2 + i % 8));
    let crash = (live_apps / 4..live_apps * 3 / 8).map(|i| format!("crash:{i}@{}s", 2 + i % 4));
    let faults = disk.chain(crash).map(|f| f.parse().unwrap()).collect();
    let live = LoadgenOptions {
        apps: live_apps,
        instances: 2,
        interval: Duration::from_secs(1),
        // DOWN comes 30 s after LATE: the full run outlasts it.
        duration: Some(Duration::from_secs(if full { 60 } else { 8 })),
        faults,
        seed: 10,
        progress: false,
        app_prefix: "live-".into(),
        ..LoadgenOptions::default()
    };
    let lm = loadgen::run(&config.kafka, &live).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    shutdown.trigger();
    worker.join().unwrap();
    let alerts_topic = config.kafka.name(names::ALERTS);
    let alerts: Vec<pulsewatch::alert::Alert> =
        readback::read_to_end(&config.kafka, &alerts_topic, Duration::from_secs(60))
            .unwrap()
            .iter()
            .filter_map(|m| {
                rdkafka::message::Message::payload(m).and_then(|p| pulsewatch::alert::Alert::decode(p).ok())
            })
            // Deadlines after the run's end are every app falling silent at once.
            .filter(|a| a.app_id.starts_with("live-") && a.event_at < lm.end_ms)
            .collect();
    let mut latencies = Vec::new();
    for kind in [AlertKind::DiskHigh, AlertKind::InstanceLate, AlertKind::InstanceDown, AlertKind::AppDown] {
        let mut of_kind: Vec<i64> =
            alerts.iter().filter(|a| a.kind == kind).map(|a| a.emitted_at - a.event_at).collect();
        of_kind.sort_unstable();
        let pct =
            |p: f64| of_kind.get(((of_kind.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(-1);
        println!(
            "alert latency:    {:>4} {:<14} transitions after their beat or deadline: p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
            of_kind.len(),
            kind.as_str(),
            pct(0.5),
            pct(0.95),
            pct(0.99),
            of_kind.last().copied().unwrap_or(-1)
        );
        latencies.extend(of_kind);
    }
    println!("                  ({} live beats)", lm.beats_total);
    assert!(!latencies.is_empty(), "the live faults raised alerts");
    clean_up(&config, rt);
}

/// A plain binary COPY of the rows the sink left (raw beats, rollups, snapshots) into tables
/// of the same columns and indexes: what writing those rows costs at the least. Returns the
/// rows and the seconds the COPYs in took (reading them out is not counted).
fn copy_ceiling(config: &Config, rt: &tokio::runtime::Runtime) -> (u64, f64) {
    use futures::{SinkExt, TryStreamExt};
    rt.block_on(async {
        let c = store::connect(&config.postgres).await.unwrap();
        let q = format!("\"{}\"", config.postgres.schema);
        let (mut rows, mut secs) = (0, 0.0);
        for table in ["heartbeat_event", "metric_rollup_1m", "application"] {
            let copy = format!("{q}.copy_of_{table}");
            c.batch_execute(&format!("CREATE TABLE {copy} (LIKE {q}.{table} INCLUDING ALL)")).await.unwrap();
            let out = c
                .copy_out(&format!("COPY (SELECT * FROM {q}.{table}) TO STDOUT (FORMAT binary)"))
                .await
                .unwrap();
            let chunks: Vec<_> = out.try_collect().await.unwrap();
            let started = Instant::now();
            let sink = c.copy_in(&format!("COPY {copy} FROM STDIN (FORMAT binary)")).await.unwrap();
            futures::pin_mut!(sink);
            for chunk in chunks {
                sink.send(chunk).await.unwrap();
            }
            rows += sink.as_mut().finish().await.unwrap();
            secs += started.elapsed().as_secs_f64();
        }
        (rows, secs)
    })
}

/// Reads `topic` from the beginning to its end, doing nothing with the records.
fn noop_consume(config: &Config, topic: &str) -> (u64, f64) {
    let consumer: BaseConsumer = config
        .kafka
        .client_config()
        .set("group.id", config.kafka.name("bench-noop"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut total = 0u64;
    for p in md.topics()[0].partitions() {
        let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap();
        total += (hi - lo) as u64;
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let mut count = 0u64;
    while count < total {
        if let Some(m) = consumer.poll(Duration::from_secs(5)) {
            m.unwrap();
            count += 1;
        }
    }
    (count, started.elapsed().as_secs_f64())
}

/// Runs the processor until `done`; returns the seconds it took.
fn run_processor_until(config: &Config, done: &dyn Fn() -> bool) -> f64 {
    let shutdown = Shutdown::new();
    let ready = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let worker = {
        let (config, shutdown, ready) = (config.clone(), shutdown.clone(), ready.clone());
        std::thread::spawn(move || processor::run(&config, &shutdown, &ready).unwrap())
    };
    while !done() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.trigger();
    worker.join().unwrap();
    secs
}

/// How long the sink ran, and how much of it went before its first record (joining the
/// group, reading `sink_offset`, seeking).
#[derive(Clone, Copy)]
struct SinkTimes {
    total: f64,
    starting: f64,
}

/// Runs the sink until it has read every record the load generator and the processor wrote
/// to its topics, then stops it (writing what it holds).
fn run_sink_to_end(config: &Config, rt: &tokio::runtime::Runtime) -> SinkTimes {
    let topics =
        [names::HEARTBEATS, names::ALERTS, names::APP_STATE, names::METRICS_1M].map(|t| config.kafka.name(t));
    let heartbeats = METRICS.records_in.with_label_values(&["processor", &topics[0]]).get();
    let written: Vec<u64> =
        topics[1..].iter().map(|t| METRICS.records_out.with_label_values(&["processor", t]).get()).collect();
    let expected: Vec<u64> = std::iter::once(heartbeats).chain(written).collect();
    let read = || -> Vec<u64> {
        topics.iter().map(|t| METRICS.records_in.with_label_values(&["sink", t]).get()).collect()
    };
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let worker = {
        let (config, shutdown, handle) = (config.clone(), shutdown.clone(), rt.handle().clone());
        std::thread::spawn(move || sink::run(&config, &shutdown, &AtomicBool::new(false), &handle).unwrap())
    };
    let (mut last, mut moved, mut starting) = (read(), Instant::now(), None);
    while read().iter().zip(&expected).any(|(r, e)| r < e) {
        std::thread::sleep(Duration::from_millis(10));
        if read() != last {
            (last, moved) = (read(), Instant::now());
            starting.get_or_insert(started.elapsed().as_secs_f64());
        }
        // A processor transaction aborted and retried counts its records twice.
        assert!(
            moved.elapsed() < Duration::from_secs(30),
            "sink: read {last:?} of {expected:?} records, then nothing for 30 s"
        );
    }
    shutdown.trigger();
    worker.join().unwrap();
    SinkTimes { total: started.elapsed().as_secs_f64(), starting: starting.unwrap_or_default() }
}
