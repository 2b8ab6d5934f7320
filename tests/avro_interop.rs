//! Avro single-object encoding against an implementation that is not pulsewatch's own:
//! fastavro (with confluent-kafka as the outside producer and consumer), run through
//! `tests/interop/avro_peer.py` in the Python environment `scripts/python-env` makes.

mod common;

use std::time::Duration;

use common::{Pipeline, eventually, query_i64};
use pulsewatch::alert::{Alert, AlertKind, AlertState};
use pulsewatch::codec::{self, avro, fingerprint};
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::topology::names;
use rdkafka::producer::Producer;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `avro_peer.py ARGS` with `input` on its stdin; its stdout lines.
fn peer(args: &[&str], input: &str) -> Vec<String> {
    common::python::run("avro_peer.py", args, input)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn canonical_forms_and_headers_are_those_fastavro_computes() {
    for (file, ours) in [("heartbeat.avsc", *avro::HEADER), ("alert.avsc", *pulsewatch::alert::HEADER)] {
        let path = root().join("schemas").join(file);
        let theirs = peer(&["header", path.to_str().unwrap()], "");
        let schema = std::fs::read_to_string(&path).unwrap();
        assert_eq!(fingerprint::canonical_form(&schema).unwrap(), theirs[1], "{file}: canonical form");
        assert_eq!(hex(&ours), theirs[0], "{file}: the header pulsewatch writes");
    }
}

fn sample_beats() -> Vec<Heartbeat> {
    let mut full = Heartbeat::example_full();
    full.labels =
        [("env", "prod"), ("région", "eu-west-1 ✓")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    vec![full, Heartbeat::new("minimal", "m-0", 0, 1_800_000_000_000)]
}

#[test]
fn beats_fastavro_encodes_are_accepted_and_what_we_write_it_reads() {
    let beats = sample_beats();
    let input: String =
        beats.iter().map(|b| String::from_utf8(codec::json::encode(b)).unwrap() + "\n").collect();
    let records = peer(&["encode"], &input);
    for (record, beat) in records.iter().zip(&beats) {
        let bytes = unhex(record);
        assert_eq!(bytes, avro::encode(beat), "fastavro writes the bytes pulsewatch writes");
        assert_eq!(&codec::decode(&bytes, beat.sent_at, codec::DEFAULT_MAX_DRIFT_MS).unwrap(), beat);
    }
    let alert = Alert {
        alert_id: pulsewatch::alert::alert_id("shop", Some("shop-1"), AlertKind::MemoryHigh),
        app_id: "shop".into(),
        instance_id: Some("shop-1".into()),
        kind: AlertKind::MemoryHigh,
        severity: pulsewatch::alert::Severity::Critical,
        state: AlertState::Firing,
        started_at: 1_800_000_000_000,
        event_at: 1_800_000_060_000,
        emitted_at: 1_800_000_060_123,
        value: Some(0.93),
        threshold: Some(0.9),
        summary: "memory at 93 %".into(),
        evidence: [("memory_used_bytes".to_string(), "930".to_string())].into(),
        recommendations: vec!["look for a leak".into()],
        source_partition: 3,
        source_offset: 42,
    };
    let decoded = peer(&["decode-alerts"], &(hex(&alert.encode()) + "\n"));
    let theirs: serde_json::Value = serde_json::from_str(&decoded[0]).unwrap();
    assert_eq!(theirs["alert_id"], alert.alert_id.as_str());
    assert_eq!(theirs["kind"], "MEMORY_HIGH");
    assert_eq!(theirs["severity"], "CRITICAL");
    assert_eq!(theirs["event_at"], alert.event_at);
    assert_eq!(theirs["evidence"]["memory_used_bytes"], "930");
}

/// Beats of three applications over ten minutes: one steady, one at 95 % of its memory
/// limit, one whose instance restarts halfway.
fn fleet(now_ms: i64) -> Vec<Heartbeat> {
    let start = now_ms - 10 * 60_000;
    let mut beats = Vec::new();
    for i in 0..120 {
        let at = start + i * 5_000;
        for app in ["steady", "memory", "restart"] {
            let seq = if app == "restart" && i >= 60 { i - 60 } else { i };
            let mut b = Heartbeat::new(app, format!("{app}-0"), seq, at);
            b.interval_ms = 5_000;
            b.memory_limit_bytes = Some(1_000_000_000);
            b.memory_used_bytes = Some(if app == "memory" { 950_000_000 } else { 300_000_000 });
            beats.push(b);
        }
    }
    beats
}

#[test]
fn an_outside_producer_and_consumer_work_with_the_pipeline() {
    let config = common::prepare("avro-interop");
    let now = chrono::Utc::now().timestamp_millis();
    let beats = fleet(now);
    let p = Pipeline::start(&config, "all", &[]);
    let input: String =
        beats.iter().map(|b| String::from_utf8(codec::json::encode(b)).unwrap() + "\n").collect();
    let heartbeats = config.kafka.name(names::HEARTBEATS);
    peer(&["produce", "--brokers", &config.kafka.brokers, "--topic", &heartbeats], &input);
    // One beat more with the header pulsewatch wrote before it followed the specification.
    let mut legacy = avro::encode(&Heartbeat::new("legacy", "legacy-0", 0, now));
    legacy[..10].copy_from_slice(&avro::LEGACY_HEADER[..]);
    let producer = pulsewatch::kafka::producer(&config.kafka).unwrap();
    pulsewatch::kafka::send(&producer, &heartbeats, "legacy", &legacy, None).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let schema = &config.postgres.schema;
    let total = beats.len() as i64 + 1;
    eventually(Duration::from_secs(120), "the sink stores every beat", || {
        query_i64(&config, &format!("SELECT count(*) FROM \"{schema}\".heartbeat_event")) >= total
    });
    assert_eq!(query_i64(&config, &format!("SELECT count(*) FROM \"{schema}\".heartbeat_event")), total);
    assert_eq!(p.metric("pulsewatch_legacy_fingerprint_records_total{schema=\"heartbeat\""), 1.0);
    let dlq = pulsewatch::readback::read_to_end(
        &config.kafka,
        &config.kafka.name(names::HEARTBEATS_DLQ),
        Duration::from_secs(30),
    );
    assert!(dlq.unwrap().is_empty(), "no beat is dead-lettered");

    let ours = common::alerts(&config);
    let kinds: Vec<_> = ours.iter().map(|a| (a.app_id.as_str(), a.kind)).collect();
    assert!(kinds.contains(&("memory", AlertKind::MemoryHigh)), "{kinds:?}");
    assert!(kinds.contains(&("restart", AlertKind::InstanceRestarted)), "{kinds:?}");
    assert!(!kinds.iter().any(|(app, _)| *app == "steady"), "{kinds:?}");
    let count = ours.len().to_string();
    let alerts = config.kafka.name(names::ALERTS);
    let theirs =
        peer(&["read-alerts", "--brokers", &config.kafka.brokers, "--topic", &alerts, "--count", &count], "");
    let mut read: Vec<(String, String, i64)> = theirs
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["alert_id"].as_str().unwrap().into(),
                v["state"].as_str().unwrap().into(),
                v["event_at"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut written: Vec<(String, String, i64)> =
        ours.iter().map(|a| (a.alert_id.clone(), a.state.as_str().into(), a.event_at)).collect();
    read.sort();
    written.sort();
    assert_eq!(read, written, "fastavro reads every alert pulsewatch published");
    p.stop();
}
