//! loadgen → the real Kafka → read back: what the manifest says was produced is what the
//! topic holds.

mod common;

use std::time::Duration;

use pulsewatch::codec::Encoding;
use pulsewatch::config::Config;
use pulsewatch::loadgen::{self, LoadgenOptions, Manifest};
use pulsewatch::tally::{self, Tally};
use pulsewatch::topology::{self, Topology, names};

fn prepare(test: &str) -> common::TestConfig {
    let config = common::isolated_config(test);
    common::runtime().block_on(topology::apply(&config.kafka, &Topology::builtin())).unwrap();
    config
}

fn read_back(config: &Config) -> Tally {
    let topic = config.kafka.name(names::HEARTBEATS);
    tally::tally_topic(&config.kafka, &topic, config.input.max_sent_at_drift_ms, Duration::from_secs(120))
        .unwrap()
}

fn assert_matches_manifest(t: &Tally, m: &Manifest) {
    assert_eq!(t.decoded, m.beats_total, "every produced beat decodes");
    assert_eq!(t.records, m.beats_total + m.poison_total);
    for (app, counts) in &m.per_app {
        assert_eq!(t.beats_per_app.get(app), Some(&counts.beats), "beats of {app}");
        for (instance, c) in &counts.instances {
            assert_eq!(
                t.beats_per_instance.get(&(app.clone(), instance.clone())),
                Some(&c.beats),
                "{instance}"
            );
        }
    }
    assert_eq!(t.beats_per_app.len(), m.per_app.len());
    assert_eq!(t.key_mismatches, 0, "every record's key is its app_id");
    for (app, partitions) in &t.partitions_per_app {
        assert_eq!(partitions.len(), 1, "{app}'s beats are on one partition: {partitions:?}");
    }
}

#[test]
fn a_two_hour_backfill_spans_two_hours_and_matches_its_manifest() {
    let config = prepare("loadgen_backfill");
    let dir = tempdir("backfill");
    let opts = LoadgenOptions {
        apps: 20,
        instances: 2,
        backfill: Some(Duration::from_secs(2 * 3600)),
        mix: true,
        seed: 7,
        manifest: Some(dir.join("manifest.json")),
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    assert_eq!(
        Manifest::read(&dir.join("manifest.json")).unwrap(),
        m,
        "the manifest on disk is the one returned"
    );
    assert!(m.poison_total > 0, "the mix includes poison");
    assert_eq!(m.faults.len(), loadgen::mix().len().min(opts.apps), "one fault per mixed app");
    let t = read_back(&config);
    assert_matches_manifest(&t, &m);
    assert_eq!(
        t.errors_by_code.values().sum::<u64>(),
        m.poison_total,
        "poison, and only poison, is rejected"
    );
    let span = t.max_sent_at_ms.unwrap() - t.min_sent_at_ms.unwrap();
    let interval = i64::from(m.interval_ms);
    assert!(span > 2 * 3_600_000 - 2 * interval && span <= 2 * 3_600_000, "event time spans {span} ms");
    assert!(m.end_ms - t.max_sent_at_ms.unwrap() <= interval, "history ends now");
}

#[test]
fn json_with_faults_on_chosen_instances_matches_its_manifest() {
    let config = prepare("loadgen_json");
    let dir = tempdir("json");
    let opts = LoadgenOptions {
        apps: 5,
        instances: 3,
        interval: Duration::from_secs(10),
        backfill: Some(Duration::from_secs(600)),
        encoding: Encoding::Json,
        faults: vec![
            "crash:1/2@2m".parse().unwrap(),
            "clean-stop:app-0002@5m".parse().unwrap(),
            "restart:3/0@4m+10s".parse().unwrap(),
        ],
        seed: 11,
        manifest: Some(dir.join("m.json")),
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    let t = read_back(&config);
    assert_matches_manifest(&t, &m);
    assert!(t.errors_by_code.is_empty(), "{:?}", t.errors_by_code);
    // The crashed instance stopped after two minutes: 12 beats at a 10 s interval.
    let crashed = &m.per_app["app-0001"].instances["app-0001-i2"];
    assert_eq!(crashed.beats, 12);
    let healthy = &m.per_app["app-0001"].instances["app-0001-i0"];
    assert_eq!(healthy.beats, 60);
    // The restarted instance's seq started over.
    let restarted = &m.per_app["app-0003"].instances["app-0003-i0"];
    assert_eq!(restarted.beats, 60);
    assert_eq!(restarted.last_seq, 60 - 24);
    assert_eq!(
        m.faults[0].expected_alerts,
        vec!["INSTANCE_LATE", "INSTANCE_DOWN"],
        "one instance of three, never back"
    );
    assert!(m.faults[1].expected_alerts.is_empty(), "a clean stop expects no alert");
}

#[test]
fn count_stops_at_the_exact_number_of_beats() {
    let config = prepare("loadgen_count");
    let opts = LoadgenOptions {
        apps: 7,
        instances: 2,
        count: Some(1_000),
        backfill: Some(Duration::from_secs(3600)),
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    assert_eq!(m.beats_total, 1_000);
    assert_eq!(read_back(&config).decoded, 1_000);
}

#[test]
fn a_short_live_run_beats_on_the_wall_clock() {
    let config = prepare("loadgen_live");
    let opts = LoadgenOptions {
        apps: 3,
        instances: 1,
        interval: Duration::from_secs(1),
        duration: Some(Duration::from_secs(3)),
        progress: false,
        ..LoadgenOptions::default()
    };
    let started = chrono::Utc::now().timestamp_millis();
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    assert_eq!(m.beats_total, 9, "3 apps x 3 seconds at one beat per second");
    let t = read_back(&config);
    assert_matches_manifest(&t, &m);
    assert!(t.min_sent_at_ms.unwrap() >= started - 1_000);
    assert!(m.wall_seconds >= 2.0, "a live run waits for its event times ({} s)", m.wall_seconds);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pulsewatch-test-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
