//! What restoring the processor's state costs.
//!
//! 1. In memory: an engine tracking a fleet (2 instances per application, 65 minutes of
//!    beats, so trend windows (60 points), rate windows and rollups are full) writes its
//!    `app-state` records; they are decoded and the engine rebuilt from them. Prints the
//!    record size, the time per application on one core, the resident memory the rebuilt
//!    engine holds per application, and the time of a second read into memory the first one
//!    touched and freed (what is left without the kernel's first-touch page faults).
//! 2. Through Kafka (the local stack): those states, copied under new app ids up to
//!    PULSEWATCH_BENCH_RESTORE_APPS applications (default 100,000), are written to a fresh
//!    `app-state` topic of 12 partitions, and all of them restored as a processor does after a
//!    restart: read to the end (read_committed), decoded on every core, engines rebuilt. The
//!    ceilings are a read of the same records that does nothing with them, and touching as
//!    much fresh memory as the restore kept (on every core); the figure is extrapolated to a
//!    million. The topic is deleted at the end.
//!
//! Run: `cargo bench --bench restore` (PULSEWATCH_BENCH_APPS, default 2000; with
//! PULSEWATCH_BENCH_RESTORE_TWICE=1 it restores through Kafka a second time, into the memory
//! the first restore freed). The bench applies `processor.transparent_huge_pages` as the
//! processor does: PULSEWATCH_PROCESSOR_TRANSPARENT_HUGE_PAGES=true measures with them.

use std::time::{Duration, Instant};

use pulsewatch::config::Config;
use pulsewatch::engine::{AppState, Effect, Engine, RestoredApps};
use pulsewatch::kafka;
use pulsewatch::loadgen::scenario::InstanceSim;
use pulsewatch::rules::{CompiledRules, DetectionConfig, RuleSet};
use pulsewatch::topology::{self, Topology, names};
use pulsewatch::trend::TrendConfig;
use pulsewatch::{readback, restore};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;

/// The allocator the `pulsewatch` binary runs with (src/main.rs), so that these figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_800_000_000_000;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let pw = Config::from_process(None).expect("a valid PULSEWATCH_* environment");
    // The processor's memory setting, as `pulsewatch run` applies it, for the whole bench.
    let huge_pages = pw.processor.transparent_huge_pages;
    pulsewatch::huge_pages::allow(huge_pages).expect("the transparent huge pages setting applies");
    let apps: usize = std::env::var("PULSEWATCH_BENCH_APPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 2_000 } else { 20 });
    let config = DetectionConfig::default();
    let rules = CompiledRules::new(&RuleSet::default(), &config, &TrendConfig::default()).unwrap();
    let mut engine = Engine::new(0, config.clone(), rules.clone());
    let mut sims: Vec<InstanceSim> = (0..apps)
        .flat_map(|a| (0..2).map(move |i| (a, i)))
        .map(|(a, i)| InstanceSim::new(1, a, i, format!("app-{a:06}"), 5_000))
        .collect();
    let mut out: Vec<Effect> = Vec::new();
    for round in 0..(65 * 12) {
        for sim in sims.iter_mut() {
            let t = T0 + round * 5_000 + sim.phase_ms;
            if let Some(b) = sim.beat(t, 5_000, &[]) {
                engine.on_beat(b, round, 0, &mut out);
            }
        }
        out.clear();
    }
    let started = Instant::now();
    let records = engine.take_state_records();
    let write = started.elapsed();
    let value: usize = records.iter().map(|r| r.value.len()).sum();
    let header: usize = records.iter().map(|r| r.header.len()).sum();
    let read_back = || {
        let started = Instant::now();
        let mut parsed = RestoredApps::default();
        for r in &records {
            parsed.add_written(r).unwrap();
        }
        let decode = started.elapsed();
        let started = Instant::now();
        let restored = Engine::restore_apps(0, config.clone(), rules.clone(), parsed);
        assert_eq!(restored.app_count(), engine.app_count());
        (restored, decode, started.elapsed())
    };
    let rss_before = resident_bytes();
    let (restored, decode, rebuild) = read_back();
    let held = resident_bytes() - rss_before;
    drop(restored);
    let (_, decode_again, rebuild_again) = read_back();
    let per_app = |d: std::time::Duration| d.as_secs_f64() * 1e6 / apps as f64;
    println!(
        "restore: {apps} apps x 2 instances; per app, {} bytes of JSON snapshot and {} of binary state (its state and windows records); transparent huge pages {}",
        value / apps,
        header / apps,
        if huge_pages { "allowed" } else { "off" }
    );
    println!("  writing the records: {:.1} us per app", per_app(write));
    println!(
        "  reading them back: {:.1} us per app ({:.1} decoding, {:.1} rebuilding the engine), {:.1} s per million apps (one core, Kafka read not included)",
        per_app(decode + rebuild),
        per_app(decode),
        per_app(rebuild),
        per_app(decode + rebuild)
    );
    println!(
        "  the restored engine holds {:.1} KB per app; reading them back again, into memory already touched: {:.1} us per app",
        held as f64 / 1e3 / apps as f64,
        per_app(decode_again + rebuild_again)
    );
    let templates: Vec<AppState> =
        records.iter().filter(|r| r.is_state()).filter_map(|r| engine.app(&r.app_id).cloned()).collect();
    let restore_apps: usize = std::env::var("PULSEWATCH_BENCH_RESTORE_APPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 100_000 } else { 2_000 });
    through_kafka(pw, &templates, restore_apps, &config, &rules);
}

/// Writes `apps` application states (copies of `templates`) to a fresh app-state topic and
/// times restoring every partition from it.
fn through_kafka(
    mut pw: Config,
    templates: &[AppState],
    apps: usize,
    config: &DetectionConfig,
    rules: &CompiledRules,
) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    pw.kafka.topic_prefix = format!("bench-{:08x}-", rand::random::<u32>());
    rt.block_on(topology::apply(&pw.kafka, &Topology::builtin()))
        .expect("Kafka reachable: start the local stack with scripts/stack up");
    let topic = pw.kafka.name(names::APP_STATE);
    let partitions: Vec<i32> = (0..12).collect();
    let producer = kafka::producer(&pw.kafka).unwrap();
    let (mut bytes, mut written) = (0usize, 0usize);
    let started = Instant::now();
    for i in 0..apps {
        let state = &templates[i % templates.len()];
        let app_id = format!("app-{i:07}");
        let partition = Some(partitions[i % partitions.len()]);
        for record in state.records(&app_id, 1_800_000_000_000) {
            bytes += record.value.len() + record.header.len();
            written += 1;
            let header =
                OwnedHeaders::new().insert(Header { key: record.header_name, value: Some(&record.header) });
            kafka::send_to(&producer, &topic, partition, &record.key(), &record.value, Some(header)).unwrap();
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    assert_eq!(producer.context().failed(), 0);
    println!(
        "restore through Kafka: {apps} apps in {} partitions, {:.0} MB of app-state, written in {:.1} s",
        partitions.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    // The ceiling: the same read, doing nothing with the records.
    let started = Instant::now();
    let mut read = 0;
    let timeout = Duration::from_secs(600);
    readback::read_partitions_in_chunks(&pw.kafka, &topic, Some(&partitions), timeout, 20_000, |c| {
        read += c.len()
    })
    .unwrap();
    let ceiling = started.elapsed();
    assert_eq!(read, written, "each app's state and windows records");
    let rss_before = resident_bytes();
    let cpu_before = cpu_seconds();
    let faults_before = minor_faults();
    let started = Instant::now();
    let restored =
        restore::restore_partitions(&pw.kafka, &topic, &partitions, config, rules, timeout).unwrap();
    let total = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let faults = minor_faults() - faults_before;
    let rss_after = resident_bytes();
    assert_eq!((restored.apps(), restored.unreadable), (apps, 0));
    let per_million = |d: Duration| d.as_secs_f64() * 1e6 / apps as f64;
    println!(
        "  reading them, doing nothing (the ceiling): {:.2} s; restoring: {:.2} s ({:.2} reading, {:.2} decoding and rebuilding), {:.2} x the ceiling",
        ceiling.as_secs_f64(),
        total.as_secs_f64(),
        restored.read.as_secs_f64(),
        restored.rebuild.as_secs_f64(),
        total.as_secs_f64() / ceiling.as_secs_f64()
    );
    println!(
        "  {:.1} s per million apps ({} cores; goal 10 s); resident memory grew by {:.0} MB, {:.1} KB per app",
        per_million(total),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        (rss_after - rss_before) as f64 / 1e6,
        (rss_after - rss_before) as f64 / 1e3 / apps as f64,
    );
    println!(
        "  CPU time of this process during the restore: {cpu:.2} s, {:.0} % of its cores; {:.1} page faults per app ({:.1} KB of fresh pages per app)",
        cpu / total.as_secs_f64() / std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
            * 100.0,
        faults as f64 / apps as f64,
        faults as f64 * 4.096 / apps as f64
    );
    // The second ceiling: touching as much fresh memory as the restore kept, on as many
    // threads as it decodes on (the kernel clears each new page; on a virtual machine the
    // host may have to back it first).
    let grown = (rss_after - rss_before).max(0) as usize;
    let touching = touch_fresh_memory(grown, std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "  touching as much fresh memory ({:.0} MB) alone, on every core: {:.2} s; the restore is {:.2} x both ceilings together",
        grown as f64 / 1e6,
        touching.as_secs_f64(),
        total.as_secs_f64() / (ceiling + touching).as_secs_f64()
    );
    if std::env::var_os("PULSEWATCH_BENCH_RESTORE_TWICE").is_some() {
        drop(restored);
        let started = Instant::now();
        restore::restore_partitions(&pw.kafka, &topic, &partitions, config, rules, timeout).unwrap();
        println!("  again, into memory the first restore freed: {:.2} s", started.elapsed().as_secs_f64());
    }
    // The topic is this run's alone: it would only fill the broker's disk and slow its start.
    rt.block_on(topology::remove(&pw.kafka, &Topology::builtin())).expect("the bench's topics are deleted");
}

/// Time to write one byte into every page of `bytes` of freshly allocated memory, split
/// among `threads` threads; the memory is freed afterwards.
fn touch_fresh_memory(bytes: usize, threads: usize) -> Duration {
    let share = bytes / threads.max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(move || {
                let mut fresh = vec![0u8; share];
                for page in fresh.chunks_mut(4096) {
                    page[0] = 1;
                }
                std::hint::black_box(&fresh);
            });
        }
    });
    started.elapsed()
}

/// The process's resident memory, in bytes.
fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// The fields of /proc/self/stat after the command name: state, ppid, pgrp, session,
/// tty_nr, tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime, ...
fn process_stat() -> Vec<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat.rsplit(')').next().unwrap_or("").split_whitespace().map(|x| x.parse().unwrap_or(0)).collect()
}

/// User and system time of the process (all its threads), in seconds.
fn cpu_seconds() -> f64 {
    let fields = process_stat();
    // utime and stime, in clock ticks (USER_HZ, 100 on Linux).
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Minor page faults of the process so far: each a fresh page the kernel had to clear.
fn minor_faults() -> i64 {
    process_stat().get(7).copied().unwrap_or(0)
}
