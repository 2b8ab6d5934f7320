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

/// One run of the load on topics of its own.
struct Run {
    config: pulsewatch::config::Config,
    file: std::path::PathBuf,
    group: String,
    heartbeats: String,
}

impl Run {
    fn new(test: &str, now_ms: i64) -> (Run, pulsewatch::loadgen::Manifest) {
        let config = common::prepare(test);
        let m = publish_load(&config, now_ms);
        let file = common::short_session_config(&config);
        let (group, heartbeats) = (config.kafka.name("processor"), config.kafka.name(names::HEARTBEATS));
        (Run { config, file, group, heartbeats }, m)
    }

    /// A processor instance, ready; `slot` names its transactional id, as a pod name would.
    fn start(&self, slot: Option<usize>) -> Pipeline {
        let mut p = self.spawn(slot);
        p.wait_ready(Duration::from_secs(60));
        p
    }

    /// As [`Run::start`], without waiting for it to be ready.
    fn spawn(&self, slot: Option<usize>) -> Pipeline {
        let id = slot.map(|i| format!("{}processor-{i}", self.config.kafka.topic_prefix));
        let mut env = vec![("PULSEWATCH_CONFIG", self.file.to_str().unwrap())];
        if let Some(id) = &id {
            env.push(("PULSEWATCH_PROCESSOR_TRANSACTIONAL_ID", id.as_str()));
        }
        Pipeline::spawn(&self.config, "processor", &env)
    }

    fn progress(&self) -> (i64, i64) {
        common::committed_progress(&self.config, &self.group, &self.heartbeats)
    }

    fn wait_until_done(&self) {
        eventually(Duration::from_secs(300), "every heartbeat is committed", || {
            common::committed_to_end(&self.config, &self.group, &self.heartbeats)
        });
    }
}

fn assert_same_transitions(scenario: &str, expected: &[Transition], got: &[Transition]) {
    let missing: Vec<_> = expected.iter().filter(|t| !got.contains(t)).collect();
    let extra: Vec<_> = got.iter().filter(|t| !expected.contains(t)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{scenario}: missing {missing:#?}\nextra {extra:#?}");
    assert_eq!(got.len(), expected.len(), "{scenario}: no transition twice");
}

/// The membership changes that happened while the run was under way.
fn mid_run(progress: &[(i64, i64)]) -> usize {
    progress.iter().filter(|(done, total)| *done > 0 && done < total).count()
}

#[test]
fn killed_and_rescaled_processors_decide_exactly_what_one_uninterrupted_processor_does() {
    let now_ms = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    // The reference: one processor, never interrupted.
    let (reference, m) = Run::new("eos_reference", now_ms);
    let p = reference.start(None);
    let started = std::time::Instant::now();
    reference.wait_until_done();
    let took = started.elapsed();
    p.stop();
    let expected = transitions(&reference.config, m.end_ms);
    let mut unique = expected.clone();
    unique.dedup();
    assert_eq!(unique.len(), expected.len(), "the reference has no duplicate transition");
    assert!(expected.len() >= 20, "a mixed load has alerts to compare: {expected:#?}");
    let mut rng = rand::rng();
    let mut pause =
        |from: f64, to: f64| std::thread::sleep(took.mul_f64(rand::Rng::random_range(&mut rng, from..to)));

    // The same load, with the processor killed (SIGKILL) ten times at random moments and
    // restarted under the same transactional id; each instance lives 5 to 15 % of what the
    // whole run took the reference.
    let (killed, m2) = Run::new("eos_killed", now_ms);
    assert_eq!((m2.beats_total, m2.end_ms), (m.beats_total, m.end_ms));
    let mut progress = Vec::new();
    for _ in 0..10 {
        let p = killed.start(Some(0));
        pause(0.05, 0.15);
        p.signal("KILL");
        drop(p);
        progress.push(killed.progress());
    }
    eprintln!("committed (records, of) after each kill: {progress:?}");
    assert!(mid_run(&progress) >= 5, "at least half the kills land mid-run: {progress:?}");
    let p = killed.start(Some(0));
    killed.wait_until_done();
    p.stop();
    assert_same_transitions("killed ten times", &expected, &transitions(&killed.config, m.end_ms));

    // Three instances joining and leaving: partitions move (cooperative-sticky) between them.
    // Each change comes 10 to 15 % of the reference's run time after the previous one.
    let (scaled, m3) = Run::new("eos_scaled", now_ms);
    assert_eq!(m3.beats_total, m.beats_total);
    let mut progress = Vec::new();
    let first = scaled.start(Some(0));
    pause(0.1, 0.15);
    let second = scaled.spawn(Some(1));
    progress.push(scaled.progress());
    pause(0.1, 0.15);
    let third = scaled.spawn(Some(2));
    progress.push(scaled.progress());
    pause(0.1, 0.15);
    second.stop();
    progress.push(scaled.progress());
    pause(0.1, 0.15);
    third.signal("KILL");
    drop(third);
    progress.push(scaled.progress());
    // Restarted, as a pod would be: its transactional id fences what it left open.
    let third = scaled.spawn(Some(2));
    eprintln!("committed (records, of) at each change of members: {progress:?}");
    assert!(mid_run(&progress) >= 3, "the members change while the run is under way: {progress:?}");
    scaled.wait_until_done();
    first.stop();
    third.stop();
    assert_same_transitions(
        "three instances joining and leaving",
        &expected,
        &transitions(&scaled.config, m.end_ms),
    );
}
