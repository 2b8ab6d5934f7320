//! The processor and sink end to end, against the real broker and database: loadgen
//! scenarios in, alerts on Kafka and rows in PostgreSQL out.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::{Pipeline, eventually, query_i64};
use pulsewatch::alert::{Alert, AlertKind, AlertState, Severity};
use pulsewatch::config::Config;
use pulsewatch::loadgen::{self, LoadgenOptions, Manifest};
use pulsewatch::topology::names;
use rdkafka::message::{Headers, Message};

const INTERVAL_MS: i64 = 5_000;

/// Waits until the processor has read `records` and the sink has stored `beats`.
fn wait_for_pipeline(p: &Pipeline, config: &Config, records: u64, beats: u64) {
    eventually(Duration::from_secs(120), "the processor reads every record", || {
        p.metric("pulsewatch_records_in_total{stage=\"processor\"") as u64 >= records
    });
    let schema = &config.postgres.schema;
    eventually(Duration::from_secs(120), "the sink stores every beat", || {
        query_i64(config, &format!("SELECT count(*) FROM \"{schema}\".heartbeat_event")) as u64 >= beats
    });
}

/// How long after a fault's start its alert may fire: the rule's `for`, plus two intervals.
fn fire_window(kind: &str) -> i64 {
    let rule_for = match kind {
        "CPU_HIGH" => 300_000,
        "DISK_HIGH" | "INSTANCE_RESTARTED" => 0,
        "INSTANCE_LATE" => 2 * INTERVAL_MS,
        "INSTANCE_DOWN" | "APP_DOWN" => 2 * INTERVAL_MS + 30_000,
        // The error rate is measured over the last minute, then must hold for one.
        "ERROR_RATE_HIGH" => 120_000,
        // Trends need minutes of points (the connection leak grows one per 10 min).
        "MEMORY_LEAK_SUSPECTED" | "SESSION_LEAK_SUSPECTED" => 30 * 60_000,
        "CONNECTION_LEAK_SUSPECTED" => 45 * 60_000,
        // Six UP/DOWN transitions of a 3-minute flap take 7.5 minutes.
        "FLAPPING" => 10 * 60_000,
        _ => 60_000,
    };
    rule_for + 2 * INTERVAL_MS
}

fn assert_fires_at_most_once_until_resolved(alerts: &[Alert]) {
    let mut open: HashMap<&str, Severity> = HashMap::new();
    for a in alerts {
        match a.state {
            AlertState::Firing => {
                if let Some(prev) = open.insert(&a.alert_id, a.severity) {
                    assert!(a.severity > prev, "{} {:?} fired twice without resolving", a.app_id, a.kind);
                }
            }
            AlertState::Resolved => {
                assert!(open.remove(a.alert_id.as_str()).is_some(), "resolved without firing: {a:?}");
            }
        }
    }
}

#[test]
fn every_scenario_yields_its_alerts_and_every_beat_lands_once() {
    let config = common::prepare("pipeline_mix");
    let pipeline = Pipeline::start(&config, "all", &[]);
    let opts = LoadgenOptions {
        apps: 20,
        instances: 2,
        backfill: Some(Duration::from_secs(40 * 60)),
        duration: Some(Duration::from_secs(10)),
        mix: true,
        seed: 5,
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    wait_for_pipeline(&pipeline, &config, m.beats_total + m.poison_total, m.beats_total);
    // Alerts about event time after the load ended are the fleet going silent: not part of it.
    let alerts: Vec<Alert> = common::alerts(&config).into_iter().filter(|a| a.event_at < m.end_ms).collect();
    assert_fires_at_most_once_until_resolved(&alerts);
    check_alerts_against_manifest(&alerts, &m);
    check_tables(&config, &m);
    check_dead_letters(&config, &m);
    let took = pipeline.stop();
    assert!(took < Duration::from_secs(30), "SIGTERM took {took:?}");
}

fn check_alerts_against_manifest(alerts: &[Alert], m: &Manifest) {
    let mut expected_apps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut leaking_apps: BTreeSet<&str> = BTreeSet::new();
    for f in &m.faults {
        // A leak kind must have fired if the run lasted long enough after the leak began.
        let kinds: Vec<&str> = f
            .expected_alerts
            .iter()
            .map(String::as_str)
            .filter(|k| !k.contains("LEAK") || f.from_ms + fire_window(k) <= m.end_ms)
            .collect();
        if f.expected_alerts.iter().any(|k| k.contains("LEAK")) {
            leaking_apps.insert(&f.app_id);
        }
        expected_apps.insert(&f.app_id, kinds.clone());
        for kind in kinds {
            let instances: Vec<Option<String>> = if kind == "APP_DOWN" {
                vec![None]
            } else {
                (0..m.instances_per_app).map(|i| Some(format!("{}-i{i}", f.app_id))).collect()
            };
            for instance in instances {
                let mine: Vec<&Alert> = alerts
                    .iter()
                    .filter(|a| a.app_id == f.app_id && a.kind.as_str() == kind && a.instance_id == instance)
                    .collect();
                let fired = mine.iter().find(|a| a.state == AlertState::Firing);
                let fired =
                    fired.unwrap_or_else(|| panic!("{} {kind} {instance:?} did not fire: {mine:#?}", f.kind));
                // A crashed instance's restart shows when it comes back.
                let anchor = match (f.kind.as_str(), kind) {
                    ("crash", "INSTANCE_RESTARTED") => f.to_ms.expect("a crash that restarts ends"),
                    _ => f.from_ms,
                };
                assert!(
                    fired.event_at >= anchor && fired.event_at <= anchor + fire_window(kind),
                    "{} {kind}: fired at {} for a fault from {}",
                    f.kind,
                    fired.event_at,
                    anchor
                );
                assert!(!fired.summary.is_empty());
                let resolves_by = match kind {
                    "INSTANCE_RESTARTED" => anchor + 10 * 60_000 + 2 * INTERVAL_MS,
                    // The minute-long error-rate window drains before it resolves.
                    "ERROR_RATE_HIGH" => f.to_ms.unwrap_or(i64::MAX).saturating_add(60_000 + 2 * INTERVAL_MS),
                    // FLAPPING ends a quiet window (15 min) after the last transition.
                    "FLAPPING" => f.to_ms.unwrap_or(i64::MAX).saturating_add(15 * 60_000 + 2 * INTERVAL_MS),
                    _ => f.to_ms.unwrap_or(i64::MAX).saturating_add(2 * INTERVAL_MS),
                };
                if resolves_by < m.end_ms {
                    let resolved = mine.iter().find(|a| a.state == AlertState::Resolved);
                    let resolved =
                        resolved.unwrap_or_else(|| panic!("{} {kind} {instance:?} never resolved", f.kind));
                    assert!(resolved.event_at <= resolves_by, "{} {kind} resolved late", f.kind);
                }
            }
        }
    }
    for a in alerts {
        let allowed = expected_apps.get(a.app_id.as_str()).cloned().unwrap_or_default();
        // A leaking app may leak more than its main resource (sessions hold memory).
        let leak_elsewhere =
            leaking_apps.contains(a.app_id.as_str()) && a.kind.as_str().ends_with("_LEAK_SUSPECTED");
        assert!(
            allowed.contains(&a.kind.as_str()) || leak_elsewhere,
            "unexpected {:?} on {} ({:?}): {}",
            a.kind,
            a.app_id,
            a.instance_id,
            a.summary
        );
    }
    let crashed: BTreeSet<&str> =
        m.faults.iter().filter(|f| f.kind == "crash").map(|f| f.app_id.as_str()).collect();
    let app_down =
        alerts.iter().filter(|a| a.kind == AlertKind::AppDown && crashed.contains(a.app_id.as_str())).count();
    assert_eq!(app_down, 2, "APP_DOWN fires and resolves once for the crashed app");
}

fn check_tables(config: &Config, m: &Manifest) {
    let s = &config.postgres.schema;
    let q = |sql: String| query_i64(config, &sql);
    assert_eq!(q(format!("SELECT count(*) FROM \"{s}\".heartbeat_event")) as u64, m.beats_total);
    assert_eq!(
        q(format!(
            "SELECT count(*) FROM (SELECT DISTINCT app_id, instance_id, seq, sent_at FROM \"{s}\".heartbeat_event) d"
        )) as u64,
        m.beats_total,
        "no beat is stored twice"
    );
    for (app, counts) in &m.per_app {
        for (instance, c) in &counts.instances {
            let n = q(format!(
                "SELECT count(*) FROM \"{s}\".heartbeat_event WHERE app_id = '{app}' AND instance_id = '{instance}'"
            ));
            assert_eq!(n as u64, c.beats, "{instance}");
        }
        // Every closed minute of the app counts exactly the beats of that minute.
        let mismatched = q(format!(
            "SELECT count(*) FROM \"{s}\".metric_rollup_1m r WHERE r.app_id = '{app}' AND r.beats <> (
                 SELECT count(*) FROM \"{s}\".heartbeat_event h WHERE h.app_id = r.app_id
                 AND h.sent_at >= r.minute AND h.sent_at < r.minute + interval '1 minute')"
        ));
        assert_eq!(mismatched, 0, "rollups of {app} add up to its beats");
        let minutes = q(format!("SELECT count(*) FROM \"{s}\".metric_rollup_1m WHERE app_id = '{app}'"));
        let with_beats = q(format!(
            "SELECT count(DISTINCT date_trunc('minute', sent_at)) FROM \"{s}\".heartbeat_event WHERE app_id = '{app}'"
        ));
        assert!(minutes >= with_beats - 2, "{app}: {minutes} closed minutes of {with_beats} with beats");
    }
    eventually(Duration::from_secs(30), "every application has a row", || {
        q(format!("SELECT count(*) FROM \"{s}\".application")) as usize == m.apps
    });
    let stopped = &m.faults.iter().find(|f| f.kind == "clean-stop").unwrap().app_id;
    assert_eq!(
        q(format!(
            "SELECT count(*) FROM \"{s}\".application WHERE app_id = '{stopped}' AND status = 'STOPPED'"
        )),
        1,
        "the cleanly stopped app is STOPPED"
    );
    let alerts_in_db = q(format!("SELECT count(*) FROM \"{s}\".alert_event"));
    assert!(alerts_in_db > 0);
}

fn check_dead_letters(config: &Config, m: &Manifest) {
    let topic = config.kafka.name(names::HEARTBEATS_DLQ);
    let dead = pulsewatch::readback::read_to_end(&config.kafka, &topic, Duration::from_secs(60)).unwrap();
    assert_eq!(dead.len() as u64, m.poison_total, "every poison record is dead-lettered, nothing else");
    for msg in &dead {
        let headers = msg.headers().expect("dead letters carry headers");
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        for h in [
            "pulsewatch.error.code",
            "pulsewatch.error.message",
            "pulsewatch.source.partition",
            "pulsewatch.source.offset",
        ] {
            assert!(names.contains(&h), "{h} missing from {names:?}");
        }
        let code = headers.iter().find(|h| h.key == "pulsewatch.error.code").and_then(|h| h.value).unwrap();
        assert_eq!(code, b"unknown_encoding");
    }
}

#[test]
fn cpu_above_90_for_4_minutes_is_quiet_for_6_it_fires_critical() {
    let config = common::prepare("pipeline_cpu");
    let pipeline = Pipeline::start(&config, "processor", &[]);
    let opts = LoadgenOptions {
        apps: 3,
        instances: 1,
        backfill: Some(Duration::from_secs(20 * 60)),
        duration: Some(Duration::from_secs(5)),
        faults: vec!["cpu-high:0@5m+4m".parse().unwrap(), "cpu-high:1@5m+6m".parse().unwrap()],
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    eventually(Duration::from_secs(60), "the processor reads every record", || {
        pipeline.metric("pulsewatch_records_in_total{stage=\"processor\"") as u64 >= m.beats_total
    });
    let alerts: Vec<Alert> = common::alerts(&config).into_iter().filter(|a| a.event_at < m.end_ms).collect();
    let cpu = |app: &str| -> Vec<&Alert> {
        alerts.iter().filter(|a| a.kind == AlertKind::CpuHigh && a.app_id == app).collect()
    };
    assert!(cpu("app-0000").is_empty(), "4 minutes: {:#?}", cpu("app-0000"));
    let six = cpu("app-0001");
    assert_eq!(six.len(), 2, "fires and resolves: {six:#?}");
    assert_eq!((six[0].severity, six[0].state), (Severity::Critical, AlertState::Firing));
    assert_eq!(six[1].state, AlertState::Resolved);
    assert!(alerts.iter().all(|a| a.kind == AlertKind::CpuHigh), "{alerts:#?}");
}

#[test]
fn a_partition_whose_applications_all_die_still_fires_app_down_once_caught_up() {
    let config = common::prepare("pipeline_all_die");
    let pipeline = Pipeline::start(&config, "processor", &[("PULSEWATCH_DETECTION_DOWN_GRACE_MS", "5000")]);
    let opts = LoadgenOptions {
        apps: 1,
        instances: 2,
        backfill: Some(Duration::from_secs(120)),
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    // Nothing more is produced: only the wall clock can move this partition's watermark.
    eventually(Duration::from_secs(60), "APP_DOWN fires on wall time", || {
        common::alerts(&config).iter().any(|a| a.kind == AlertKind::AppDown && a.state == AlertState::Firing)
    });
    let alerts = common::alerts(&config);
    let last_beat = m.per_app["app-0000"].instances.values().filter_map(|i| i.last_sent_at_ms).max().unwrap();
    let app_down = alerts.iter().find(|a| a.kind == AlertKind::AppDown).unwrap();
    assert!(
        app_down.event_at > last_beat
            && app_down.event_at <= last_beat + 2 * INTERVAL_MS + 5_000 + INTERVAL_MS
    );
    for inst in ["app-0000-i0", "app-0000-i1"] {
        assert!(
            alerts
                .iter()
                .any(|a| a.kind == AlertKind::InstanceDown && a.instance_id.as_deref() == Some(inst))
        );
    }
    drop(pipeline);
}

#[test]
fn catching_up_after_downtime_fires_no_down() {
    let config = common::prepare("pipeline_catch_up");
    // The processor is not running while ten minutes of healthy history are written; the
    // producers keep beating live while it starts and catches up.
    let kafka = config.kafka.clone();
    let load = std::thread::spawn(move || {
        let opts = LoadgenOptions {
            apps: 10,
            instances: 2,
            backfill: Some(Duration::from_secs(600)),
            duration: Some(Duration::from_secs(20)),
            progress: false,
            ..LoadgenOptions::default()
        };
        loadgen::run(&kafka, &opts).unwrap()
    });
    std::thread::sleep(Duration::from_secs(4));
    let pipeline = Pipeline::start(&config, "processor", &[]);
    let m = load.join().unwrap();
    eventually(Duration::from_secs(60), "the processor reads every record", || {
        pipeline.metric("pulsewatch_records_in_total{stage=\"processor\"") as u64 >= m.beats_total
    });
    let alerts: Vec<Alert> = common::alerts(&config).into_iter().filter(|a| a.event_at < m.end_ms).collect();
    assert!(alerts.is_empty(), "a catch-up fired {alerts:#?}");
}
