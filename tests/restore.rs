//! A restart with a large fleet: the state of 100,000 applications comes back from the
//! compacted `app-state` topic, and `/readyz` stays false while it is rebuilt. And the
//! restore on its own, against records written by hand. And the memory setting that makes
//! a restore's fresh memory cheap here (`processor.transparent_huge_pages`) reaches the
//! process.

mod common;

use std::time::{Duration, Instant};

use common::{Pipeline, eventually, http_get};
use pulsewatch::loadgen::{self, LoadgenOptions};
use pulsewatch::topology::names;

const APPS: usize = 100_000;

#[test]
fn the_state_of_100000_apps_comes_back_after_a_restart_and_readyz_waits_for_it() {
    let config = common::prepare("restore_100k");
    let opts = LoadgenOptions {
        apps: APPS,
        instances: 1,
        backfill: Some(Duration::from_secs(20)),
        seed: 5,
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    assert_eq!(m.per_app.len(), APPS);
    let (group, heartbeats) = (config.kafka.name("processor"), config.kafka.name(names::HEARTBEATS));
    let first = Pipeline::start(&config, "processor", &[]);
    eventually(Duration::from_secs(600), "the first processor commits every heartbeat", || {
        common::committed_to_end(&config, &group, &heartbeats)
    });
    assert_eq!(first.metric("pulsewatch_tracked_apps") as usize, APPS);
    first.stop();

    // The successor reads nothing new: whatever it tracks came from app-state.
    let second = Pipeline::spawn(&config, "processor", &[]);
    let started = Instant::now();
    let mut not_ready_while_restoring = 0;
    loop {
        assert!(started.elapsed() < Duration::from_secs(600), "the state came back within 10 minutes");
        let ready = http_get(&second.http, "/readyz").map(|(code, _)| code);
        let restoring = second.metric("pulsewatch_restoring_partitions");
        let ready_after = http_get(&second.http, "/readyz").map(|(code, _)| code);
        // Two reads of /readyz around the gauge: both false while it says restoring.
        if restoring > 0.0 && ready == Some(503) && ready_after == Some(503) {
            not_ready_while_restoring += 1;
        }
        if ready_after == Some(200) && second.metric("pulsewatch_restored_apps_total") as usize >= APPS {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(not_ready_while_restoring > 0, "/readyz was seen false during the restore");
    assert_eq!(second.metric("pulsewatch_restored_apps_total") as usize, APPS);
    assert_eq!(second.metric("pulsewatch_tracked_apps") as usize, APPS);
    assert_eq!(second.metric("pulsewatch_tracked_instances") as usize, APPS);
    let log = std::fs::read_to_string(&second.log).unwrap();
    let line = log.lines().find(|l| l.contains("partition state restored")).expect("the restore is logged");
    eprintln!("restore of {APPS} apps (debug build): {line}");
    second.stop();
}

/// The restore function on its own, against a topic written by hand: each application's
/// newest record wins even when its records fall in different batches of a worker, every
/// requested partition gets its engine (an empty one when it has no records), an
/// application's trend windows come back from their own record, and records that cannot be
/// read back are counted with a reason instead of stopping the restore.
#[test]
fn a_restore_keeps_each_apps_newest_record_and_counts_the_unreadable() {
    use pulsewatch::app_state::{STATE_HEADER, StateRecordOut};
    use pulsewatch::engine::{AppState, Engine};
    use pulsewatch::heartbeat::Heartbeat;
    use pulsewatch::rules::{CompiledRules, DetectionConfig, RuleSet};
    use pulsewatch::trend::TrendConfig;
    use pulsewatch::{kafka, restore};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::Producer;

    let config = common::prepare("restore_records");
    let topic = config.kafka.name(names::APP_STATE);
    let producer = kafka::producer(&config.kafka).unwrap();
    let send = |partition: i32, key: &str, value: &[u8], header: Option<&[u8]>| {
        let headers =
            header.map(|h| OwnedHeaders::new().insert(Header { key: STATE_HEADER, value: Some(h) }));
        kafka::send_to(&producer, &topic, Some(partition), key, value, headers).unwrap();
    };
    // 3,000 applications on partitions 0..3, each written twice: an old state as state
    // version 6 wrote it (the snapshot with it), and later a newer one (last_seen 2) as the
    // engine writes it now, its snapshot (which restores nothing) after it. A partition's
    // 3,000 records span two worker batches.
    const STATE_APPS: usize = 3_000;
    for i in 0..STATE_APPS {
        let app_id = format!("app-{i:05}");
        let (old, new) = (
            AppState { last_seen: 1, ..AppState::default() },
            AppState { last_seen: 2, ..AppState::default() },
        );
        let v6 = StateRecordOut::combined(&old.snapshot(&app_id, 1_800_000_000_001), Some(&old));
        let state = StateRecordOut::state(&app_id, 1_800_000_000_002, 0, Some(&new));
        let snapshot = StateRecordOut::snapshot(&old.snapshot(&app_id, 1_800_000_000_002));
        for r in [&v6, &state, &snapshot] {
            let headers = OwnedHeaders::new().insert(Header { key: r.header_name, value: Some(&r.header) });
            kafka::send_to(&producer, &topic, Some((i % 3) as i32), &r.key(), &r.value, Some(headers))
                .unwrap();
        }
    }
    // On partition 1: a damaged header, a version the processor does not know yet, and a
    // version 1 record (a snapshot, no state: read, nothing to track).
    send(1, "damaged", b"{}", Some(&[3, 0xff, 0xff]));
    send(1, "future", b"{}", Some(&[99, 0]));
    let v1 = AppState::default().snapshot("snapshot-only", 1_800_000_000_000);
    send(1, "snapshot-only", &serde_json::to_vec(&v1).unwrap(), None);
    // On partition 0, an application with ten minutes of trend window, written as the engine
    // writes it: its windows record, then its state record without them.
    let engine_config = DetectionConfig::default();
    let rules = CompiledRules::new(&RuleSet::default(), &engine_config, &TrendConfig::default()).unwrap();
    let mut windowed = Engine::new(0, engine_config.clone(), rules.clone());
    let mut out = Vec::new();
    for k in 0..121 {
        let beat = Heartbeat::new("windowed", "windowed-i0", k, 1_800_000_000_000 + k * 5_000);
        windowed.on_beat(beat, k, 0, &mut out);
    }
    let state = windowed.app("windowed").unwrap();
    for r in state.records("windowed", 1_800_000_000_000) {
        let headers = OwnedHeaders::new().insert(Header { key: r.header_name, value: Some(&r.header) });
        kafka::send_to(&producer, &topic, Some(0), &r.key(), &r.value, Some(headers)).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(producer.context().failed(), 0);

    let restored = restore::restore_partitions(
        &config.kafka,
        &topic,
        &[0, 1, 2, 3],
        &engine_config,
        &rules,
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(restored.records, 3 * STATE_APPS + 3 + 3);
    assert_eq!(restored.unreadable, 2, "the damaged and the future record");
    assert!(restored.first_error.is_some());
    let partitions: Vec<i32> = restored.engines.iter().map(|(p, _)| *p).collect();
    assert_eq!(partitions, [0, 1, 2, 3]);
    for (p, engine) in &restored.engines {
        assert_eq!(engine.partition(), *p);
        let expected = match p {
            0 => STATE_APPS / 3 + 1,
            3 => 0,
            _ => STATE_APPS / 3,
        };
        assert_eq!(engine.app_count(), expected, "apps restored on partition {p}");
    }
    for i in 0..STATE_APPS {
        let app_id = format!("app-{i:05}");
        let (_, engine) = &restored.engines[i % 3];
        let app = engine.app(&app_id).unwrap_or_else(|| panic!("{app_id} restored on its partition"));
        assert_eq!(app.last_seen, 2, "{app_id}: the newest record wins");
    }
    assert_eq!(restored.apps(), STATE_APPS + 1);
    let window = |e: &Engine| e.app("windowed").unwrap().instances["windowed-i0"].trend.window.len();
    assert_eq!(window(&restored.engines[0].1), window(&windowed), "the windows come back with the state");
    assert_eq!(window(&windowed), 10);
}

/// A restore reads the state a transaction committed even while the transaction's markers
/// are still on their way: it waits until no transaction is pending on the partition, where
/// a read to the current end of the committed records would stop before that state.
#[test]
fn a_restore_waits_for_a_transaction_pending_on_the_state_partition() {
    use pulsewatch::app_state::{STATE_HEADER, StateRecordOut};
    use pulsewatch::engine::AppState;
    use pulsewatch::readback::{self, End};
    use pulsewatch::rules::{CompiledRules, DetectionConfig, RuleSet};
    use pulsewatch::trend::TrendConfig;
    use pulsewatch::{kafka, restore};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::Producer;

    let config = common::prepare("restore_pending");
    let topic = config.kafka.name(names::APP_STATE);
    let producer =
        kafka::transactional_producer(&config.kafka, &config.kafka.name("restore-pending")).unwrap();
    producer.init_transactions(Duration::from_secs(60)).unwrap();
    producer.begin_transaction().unwrap();
    let state = AppState { last_seen: 5, ..AppState::default() };
    let record = StateRecordOut::state("app-pending", 1_800_000_000_000, 0, Some(&state));
    let headers = OwnedHeaders::new().insert(Header { key: STATE_HEADER, value: Some(&record.header) });
    kafka::send_to(&producer, &topic, Some(0), "app-pending", &record.value, Some(headers)).unwrap();
    producer.flush(Duration::from_secs(60)).unwrap();

    // The transaction is open: the committed records end before its record.
    let mut current = 0;
    readback::read_partitions_each(
        &config.kafka,
        &topic,
        Some(&[0]),
        End::Current,
        Duration::from_secs(60),
        |_| current += 1,
    )
    .unwrap();
    assert_eq!(current, 0, "a read to the current end does not see the pending record");

    let kafka_config = config.kafka.clone();
    let restoring = std::thread::spawn(move || {
        let engine_config = DetectionConfig::default();
        let rules = CompiledRules::new(&RuleSet::default(), &engine_config, &TrendConfig::default()).unwrap();
        restore::restore_partitions(
            &kafka_config,
            &topic,
            &[0],
            &engine_config,
            &rules,
            Duration::from_secs(120),
        )
        .unwrap()
    });
    // The restore has asked for the partition's end before the transaction commits.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!restoring.is_finished(), "the restore waits while a transaction is pending");
    producer.commit_transaction(Duration::from_secs(60)).unwrap();
    let restored = restoring.join().unwrap();
    assert_eq!(restored.records, 1);
    let (_, engine) = &restored.engines[0];
    assert_eq!(engine.app("app-pending").map(|a| a.last_seen), Some(5), "the committed state is restored");
}

/// What the kernel reports for a process: whether transparent huge pages may back its memory
/// (`THP_enabled` in /proc/<pid>/status, the flag `prctl(PR_SET_THP_DISABLE)` sets).
fn huge_pages_allowed(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("Linux 5.0 on reports it");
    line.split_whitespace().nth(1) == Some("1")
}

#[test]
fn the_processor_runs_without_transparent_huge_pages_unless_configured() {
    let config = common::prepare("huge_pages");
    let default = Pipeline::start(&config, "processor", &[]);
    assert!(!huge_pages_allowed(default.pid()), "off by default");
    default.stop();
    let allowed =
        Pipeline::start(&config, "processor", &[("PULSEWATCH_PROCESSOR_TRANSPARENT_HUGE_PAGES", "true")]);
    assert!(huge_pages_allowed(allowed.pid()), "on when processor.transparent_huge_pages = true");
    allowed.stop();
}
