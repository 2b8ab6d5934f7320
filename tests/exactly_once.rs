//! Exactly-once into Kafka and PostgreSQL: the processor's outputs and offsets commit in one
//! transaction, a zombie instance is fenced by its successor instead of writing, and
//! instances (both stages) killed mid-run, or rescaled while the load is still being
//! written, publish and store exactly what one uninterrupted instance does.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Pipeline, Run, assert_same_decisions, decisions, eventually, mid_run};
use pulsewatch::loadgen::{self, LoadgenOptions};
use pulsewatch::metrics_1m::Rollup;
use pulsewatch::topology::names;
use rdkafka::message::Message;

/// Beats a processor read again after a restore into states that did not hold them; and what
/// they raised again, which it dropped (none, unless a replay decided otherwise).
const REPLAYED: &str = r#"pulsewatch_replayed_total{what="beats"}"#;
const DROPPED: &str = r#"pulsewatch_replayed_total{what="dropped_effects"}"#;

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
    let rollups = pulsewatch::readback::read_to_end(
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

#[test]
fn killed_and_rescaled_processors_decide_exactly_what_one_uninterrupted_processor_does() {
    let now_ms = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    let (m, expected) = common::reference_run(now_ms);
    let mut rng = rand::rng();
    let mut between = |from: f64, to: f64| rand::Rng::random_range(&mut rng, from..to);

    // The same load, with the instance (processor and sink) killed (SIGKILL) ten times and
    // restarted under the same transactional id. The k-th kill comes once 5 + 7.5·k to
    // 10 + 7.5·k % of the heartbeats are committed, then 0 to 300 ms later, so that it finds
    // the instance anywhere in a transaction; a kill whose share an earlier instance already
    // passed finds the restarted one just after its restore.
    let (killed, m2) = Run::new("eos_killed", now_ms);
    assert_eq!((m2.beats_total, m2.end_ms), (m.beats_total, m.end_ms));
    let mut progress = Vec::new();
    for k in 0..10 {
        let p = killed.start(Some(0));
        let share = 0.05 + 0.075 * k as f64;
        killed.wait_for_progress(between(share, share + 0.05));
        std::thread::sleep(Duration::from_millis(between(0.0, 300.0) as u64));
        assert_eq!(p.metric(DROPPED), 0.0, "kill {k}: a replay decided otherwise");
        p.signal("KILL");
        drop(p);
        progress.push(killed.progress());
    }
    eprintln!("committed (records, of) after each kill: {progress:?}");
    assert!(mid_run(&progress) >= 5, "at least half the kills land mid-run: {progress:?}");
    let p = killed.start(Some(0));
    killed.wait_until_done();
    let got = decisions(&killed.config, &m);
    assert_eq!(p.metric(DROPPED), 0.0, "the last restart: a replay decided otherwise");
    p.stop();
    assert_same_decisions("killed ten times", &expected, &got);

    // Instances joining and leaving, partitions moving (cooperative-sticky) between them,
    // while the load is still being written (over about 45 s): two joining at once (the
    // second during the rebalance the first began), members that own partitions stopped
    // (SIGTERM) and killed (SIGKILL) for good, their transactions left open until the broker
    // aborts them. A change every 4 to 7 s.
    let (scaled, load) = Run::fed("eos_scaled", now_ms, m.beats_total as f64 / 45.0);
    let mut progress = Vec::new();
    let mut while_fed = 0;
    let mut next_change = |run: &Run, progress: &mut Vec<(i64, i64)>| {
        std::thread::sleep(Duration::from_secs_f64(between(4.0, 7.0)));
        while_fed += usize::from(!load.is_finished());
        progress.push(run.progress());
    };
    // Fed at about 80 times real time, a batch covers seconds of event time: states wait
    // unwritten, and a member that takes a partition over reads their beats again.
    let mut replayed = 0.0;
    let mut leaving = |p: &Pipeline| {
        replayed += p.metric(REPLAYED);
        assert_eq!(p.metric(DROPPED), 0.0, "a replay decided otherwise");
    };
    let first = scaled.start(Some(0));
    next_change(&scaled, &mut progress);
    let second = scaled.spawn(Some(1));
    let third = scaled.spawn(Some(2));
    next_change(&scaled, &mut progress);
    leaving(&second);
    second.stop();
    next_change(&scaled, &mut progress);
    let fourth = scaled.spawn(Some(3));
    next_change(&scaled, &mut progress);
    leaving(&third);
    third.signal("KILL");
    drop(third);
    next_change(&scaled, &mut progress);
    leaving(&first);
    first.stop();
    let fifth = scaled.spawn(Some(4));
    next_change(&scaled, &mut progress);
    leaving(&fourth);
    fourth.signal("KILL");
    drop(fourth);
    let sixth = scaled.spawn(Some(5));
    next_change(&scaled, &mut progress);
    eprintln!("committed (records, of) at each change of members: {progress:?}");
    assert!(mid_run(&progress) >= 5, "the members change while the run is under way: {progress:?}");
    assert!(while_fed >= 5, "the members change while the load is written: {while_fed} of 7");
    let m3 = load.join().expect("the load is written");
    assert_eq!(m3.beats_total, m.beats_total);
    scaled.wait_until_done();
    let got = decisions(&scaled.config, &m);
    leaving(&fifth);
    leaving(&sixth);
    assert!(replayed > 0.0, "members that took partitions over read beats again into their states");
    fifth.stop();
    sixth.stop();
    assert_same_decisions("instances joining, stopped and killed", &expected, &got);
}
