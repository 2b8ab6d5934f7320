//! Exactly-once into Kafka: the processor's outputs and offsets commit in one transaction,
//! and a zombie instance is fenced by its successor instead of writing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Pipeline, eventually};
use pulsewatch::engine::rollup::Rollup;
use pulsewatch::loadgen::{self, LoadgenOptions};
use pulsewatch::topology::names;
use rdkafka::message::Message;

#[test]
fn a_paused_processor_is_fenced_by_its_successor_and_nothing_is_written_twice() {
    let config = common::prepare("eos_fencing");
    // Short sessions, so that the successor gets the paused instance's partitions quickly.
    let file = common::short_session_config(&config);
    let id = format!("{}processor-fixed", config.kafka.topic_prefix);
    let env = [
        ("PULSEWATCH_CONFIG", file.to_str().unwrap()),
        ("PULSEWATCH_PROCESSOR_TRANSACTIONAL_ID", id.as_str()),
    ];
    let mut first = Pipeline::start(&config, "processor", &env);
    let kafka = config.kafka.clone();
    let load = std::thread::spawn(move || {
        let opts = LoadgenOptions {
            apps: 30,
            instances: 2,
            backfill: Some(Duration::from_secs(5 * 60)),
            duration: Some(Duration::from_secs(30)),
            seed: 11,
            progress: false,
            ..LoadgenOptions::default()
        };
        loadgen::run(&kafka, &opts).unwrap()
    });
    std::thread::sleep(Duration::from_secs(8));
    // The first instance hangs (a long GC pause, a frozen VM) with a transaction open...
    first.signal("STOP");
    // ...and its successor, with the same transactional id, fences it on start.
    let second = Pipeline::start(&config, "processor", &env);
    first.signal("CONT");
    let status = first.wait_exit(Duration::from_secs(90)).expect("the fenced instance exits by itself");
    assert!(!status.success(), "a fenced instance reports the failure: {status}");
    let log = std::fs::read_to_string(&first.log).unwrap();
    assert!(log.contains("fenced"), "the log says why: {log}");
    let m = load.join().unwrap();
    let group = config.kafka.name("processor");
    let heartbeats = config.kafka.name(names::HEARTBEATS);
    eventually(Duration::from_secs(120), "the successor commits every heartbeat", || {
        common::committed_to_end(&config, &group, &heartbeats)
    });
    // Every closed minute of every application is published once (read_committed): what the
    // fenced instance had in flight was aborted, not repeated.
    let rollups = pulsewatch::tally::read_to_end(
        &config.kafka,
        &config.kafka.name(names::METRICS_1M),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!rollups.is_empty());
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for msg in &rollups {
        let r: Rollup = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        *seen.entry((r.app_id, r.minute)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "rollups published twice: {twice:?}");
    assert!(
        seen.keys().map(|(app, _)| app).collect::<std::collections::BTreeSet<_>>().len() == m.per_app.len()
    );
    // A steady fleet: no alert about the load's own event time, from either instance.
    let alerts: Vec<_> = common::alerts(&config).into_iter().filter(|a| a.event_at < m.end_ms).collect();
    assert!(alerts.is_empty(), "{alerts:#?}");
    second.stop();
}

/// An alert transition in the terms a replay must reproduce.
type Transition = (String, String, String, String, i64);

/// The alert transitions (read_committed) about the load's own event time.
fn transitions(config: &pulsewatch::config::Config, end_ms: i64) -> Vec<Transition> {
    let mut all: Vec<Transition> = common::alerts(config)
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

/// Publishes the same mixed-fault load (fixed seed and clock) into `config`'s topics.
fn publish_load(config: &pulsewatch::config::Config, now_ms: i64) -> pulsewatch::loadgen::Manifest {
    let opts = LoadgenOptions {
        apps: 100,
        instances: 2,
        backfill: Some(Duration::from_secs(60 * 60)),
        mix: true,
        seed: 21,
        now_ms: Some(now_ms),
        progress: false,
        ..LoadgenOptions::default()
    };
    loadgen::run(&config.kafka, &opts).unwrap()
}

#[test]
fn killing_the_processor_ten_times_changes_no_alert_transition() {
    let now_ms = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    // The reference: one processor, never interrupted.
    let reference = common::prepare("eos_reference");
    let m = publish_load(&reference, now_ms);
    let file = common::short_session_config(&reference);
    let env = [("PULSEWATCH_CONFIG", file.to_str().unwrap())];
    let p = Pipeline::start(&reference, "processor", &env);
    let started = std::time::Instant::now();
    let (group, heartbeats) = (reference.kafka.name("processor"), reference.kafka.name(names::HEARTBEATS));
    eventually(Duration::from_secs(300), "the reference run commits every heartbeat", || {
        common::committed_to_end(&reference, &group, &heartbeats)
    });
    let took = started.elapsed();
    p.stop();
    let expected = transitions(&reference, m.end_ms);
    let mut unique = expected.clone();
    unique.dedup();
    assert_eq!(unique.len(), expected.len(), "the reference has no duplicate transition");
    assert!(expected.len() >= 20, "a mixed load has alerts to compare: {expected:#?}");

    // The same load, with the processor killed (SIGKILL) at random moments and restarted
    // under the same transactional id.
    let killed = common::prepare("eos_killed");
    let m2 = publish_load(&killed, now_ms);
    assert_eq!((m2.beats_total, m2.end_ms), (m.beats_total, m.end_ms));
    let file = common::short_session_config(&killed);
    let id = format!("{}processor-fixed", killed.kafka.topic_prefix);
    let env = [
        ("PULSEWATCH_CONFIG", file.to_str().unwrap()),
        ("PULSEWATCH_PROCESSOR_TRANSACTIONAL_ID", id.as_str()),
    ];
    let (group, heartbeats) = (killed.kafka.name("processor"), killed.kafka.name(names::HEARTBEATS));
    // Each instance lives a random 5 to 15 % of what the whole run took the reference.
    let mut rng = rand::rng();
    let mut progress = Vec::new();
    for _ in 0..10 {
        let p = Pipeline::start(&killed, "processor", &env);
        std::thread::sleep(took.mul_f64(rand::Rng::random_range(&mut rng, 0.05..0.15)));
        p.signal("KILL");
        drop(p);
        progress.push(common::committed_progress(&killed, &group, &heartbeats));
    }
    eprintln!("committed (records, of) after each kill: {progress:?}");
    let mid_run = progress.iter().filter(|(done, total)| *done > 0 && done < total).count();
    assert!(mid_run >= 5, "at least half the kills land mid-run: {progress:?}");
    let p = Pipeline::start(&killed, "processor", &env);
    eventually(Duration::from_secs(300), "the restarted processor commits every heartbeat", || {
        common::committed_to_end(&killed, &group, &heartbeats)
    });
    p.stop();
    let got = transitions(&killed, m.end_ms);
    let missing: Vec<_> = expected.iter().filter(|t| !got.contains(t)).collect();
    let extra: Vec<_> = got.iter().filter(|t| !expected.contains(t)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:#?}\nextra {extra:#?}");
    assert_eq!(got.len(), expected.len(), "no transition twice");
}
