//! End-to-end throughput against the real stack (`scripts/stack up` first):
//!
//! 1. the load generator backfills a fleet's history into a fresh `heartbeats` topic;
//! 2. a no-op consumer reads that topic: the ceiling for anything that consumes it;
//! 3. the processor stage alone consumes it, its engines on one thread and then on one per
//!    core (`processor.engine_threads`): beats per second, and the ratio to the ceiling;
//! 4. the sink stage alone stores it: beats per second into PostgreSQL, and the ratio;
//! 5. a live run with faults measures alert latency (emitted_at − event_at) percentiles.
//!
//! Run: `cargo bench --bench pipeline` (PULSEWATCH_BENCH_APPS, default 2000 apps × 2
//! instances × 5 minutes of history). Under `cargo test` it runs a small load once.

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

/// The allocator the `pulsewatch` binary runs with (src/main.rs), so that these figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let apps: usize = std::env::var("PULSEWATCH_BENCH_APPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 2_000 } else { 50 });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = Config::from_process(None).expect("a valid PULSEWATCH_* environment");
    let id = format!("{:08x}", rand::random::<u32>());
    config.kafka.topic_prefix = format!("bench-{id}-");
    config.postgres.schema = format!("bench_{id}");
    rt.block_on(topology::apply(&config.kafka, &Topology::builtin()))
        .expect("Kafka reachable: start the local stack with scripts/stack up");
    rt.block_on(async {
        let mut c = store::connect(&config.postgres).await.expect("PostgreSQL reachable: scripts/stack up");
        store::migrate::migrate(&mut c, &config.postgres.schema).await.unwrap();
    });

    // 1. History.
    let opts = LoadgenOptions {
        apps,
        instances: 2,
        backfill: Some(Duration::from_secs(300)),
        seed: 9,
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    let n = m.beats_total;
    println!(
        "load: {apps} apps x 2 instances x 5 min = {n} beats, produced at {:.0} beats/s",
        m.achieved_rate
    );

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
        config.kafka.topic_prefix = format!("bench-{id}-one-");
        config.processor.engine_threads = 1;
        rt.block_on(topology::apply(&config.kafka, &Topology::builtin())).unwrap();
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

    // 4. The sink alone (it also stores the processor's outputs).
    let schema = config.postgres.schema.clone();
    let count_rows = || -> u64 {
        rt.block_on(async {
            let c = store::connect(&config.postgres).await.unwrap();
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM \"{schema}\".heartbeat_event"), &[])
                .await
                .unwrap()
                .get(0);
            n as u64
        })
    };
    let sink_secs = run_sink_until(&config, &rt, &|| count_rows() >= n);
    println!(
        "sink:             {:>10.0} beats/s ({:.2} of the ceiling)",
        n as f64 / sink_secs,
        (n as f64 / sink_secs) / ceiling
    );
    let (copied, copy_secs) = copy_ceiling(&config, &rt);
    println!(
        "plain COPY:       {copied} rows the sink left (raw beats, rollups, snapshots) in {copy_secs:.2} s; the sink took {sink_secs:.2} s: {:.2} of a plain COPY",
        copy_secs / sink_secs
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
    // The topics are this run's alone: they would only fill the broker's disk and slow its start.
    rt.block_on(topology::remove(&config.kafka, &Topology::builtin()))
        .expect("the bench's topics are deleted");
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

/// Runs the sink until `done`; returns the seconds it took.
fn run_sink_until(config: &Config, rt: &tokio::runtime::Runtime, done: &dyn Fn() -> bool) -> f64 {
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let worker = {
        let (config, shutdown, handle) = (config.clone(), shutdown.clone(), rt.handle().clone());
        std::thread::spawn(move || sink::run(&config, &shutdown, &AtomicBool::new(false), &handle).unwrap())
    };
    while !done() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.trigger();
    worker.join().unwrap();
    secs
}
