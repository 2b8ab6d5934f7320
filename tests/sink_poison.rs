//! One record must never stop the sink. Records that pass the codec but that PostgreSQL
//! refuses (a NUL in text or in jsonb, a status its check refuses), and a raw beat and a
//! rollup stamped in 1970, sit between healthy records on every topic the sink reads: the
//! healthy rows are stored exactly once, the others are on the dead-letter topic with their
//! codes (once each, also after a restart), no partition is made for 1970, the sink stays up
//! and its `sink_offset` reaches the end of every partition.
//!
//! The test's `heartbeats` topic keeps its producers' timestamps (CreateTime), as one made
//! before the topic took the broker's append time still does: there a beat stamped in 1970
//! with a record timestamp of 1970 is valid input, and reaches the sink.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Pipeline, eventually, query_i64};
use pulsewatch::alert::{Alert, AlertKind, AlertState, Severity};
use pulsewatch::config::Config;
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::kafka::TrackedProducer;
use pulsewatch::topology::{self, Topology, names};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, Producer};

/// A day in 1970, far outside any retention window.
const IN_1970_MS: i64 = 86_400_000 + 3_600_000;

/// Sends one record to partition 0 of `topic` (the broker timestamp `ts`, if given).
fn send(producer: &TrackedProducer, topic: &str, key: &str, payload: &[u8], ts: Option<i64>) {
    let mut record = BaseRecord::to(topic).partition(0).key(key).payload(payload);
    if let Some(ts) = ts {
        record = record.timestamp(ts);
    }
    producer.send(record).map_err(|(e, _)| e).unwrap();
}

fn beat(app: &str, instance: &str, seq: i64, sent_at: i64) -> Vec<u8> {
    pulsewatch::codec::json::encode(&Heartbeat::new(app, instance, seq, sent_at))
}

fn rollup(app: &str, minute: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "app_id": app, "minute": minute, "beats": 6, "instances": 1,
        "requests_per_s": 2.5, "errors_per_s": 0.0, "slow_requests_per_s": 0.0,
    }))
    .unwrap()
}

fn snapshot(app: &str, status: &str, label: &str, now: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "app_id": app, "status": status, "health": "healthy", "instances_up": 1, "instances_total": 1,
        "last_seen_ms": now, "last_figures": {}, "open_alerts": 0, "labels": {"team": label},
        "updated_at_ms": now,
    }))
    .unwrap()
}

fn alert(app: &str, summary: &str, now: i64) -> Vec<u8> {
    Alert {
        alert_id: pulsewatch::alert::alert_id(app, None, AlertKind::AppDown),
        app_id: app.into(),
        instance_id: None,
        kind: AlertKind::AppDown,
        severity: Severity::Critical,
        state: AlertState::Firing,
        started_at: now,
        event_at: now,
        emitted_at: now,
        value: None,
        threshold: None,
        summary: summary.into(),
        evidence: BTreeMap::new(),
        recommendations: vec!["look".into()],
        source_partition: 0,
        source_offset: 0,
    }
    .encode()
}

/// The test's topics, its heartbeats stamped by their producers, and its schema.
fn prepare() -> common::TestConfig {
    let config = common::isolated_config("sink_poison");
    let mut topics = Topology::builtin();
    let heartbeats = topics.topics.iter_mut().find(|t| t.name == names::HEARTBEATS).unwrap();
    heartbeats.config.insert("message.timestamp.type".into(), "CreateTime".into());
    let rt = common::runtime();
    rt.block_on(topology::apply(&config.kafka, &topics)).unwrap();
    rt.block_on(async {
        let mut client = pulsewatch::store::connect(&config.postgres).await.unwrap();
        pulsewatch::store::migrate::migrate(&mut client, &config.postgres.schema).await.unwrap();
    });
    config
}

/// A dead letter as the test compares it: (source topic, source offset, code).
type Letter = (String, i64, String);

/// The dead letters on the topic, and their messages.
fn dead_letters(config: &Config) -> Vec<(Letter, String)> {
    let topic = config.kafka.name(names::HEARTBEATS_DLQ);
    let records = pulsewatch::readback::read_to_end(&config.kafka, &topic, Duration::from_secs(30)).unwrap();
    let mut letters: Vec<(Letter, String)> = records
        .iter()
        .map(|m| {
            let headers = m.headers().expect("a dead letter has headers");
            let header = |key: &str| {
                let h = headers.iter().find(|h| h.key == key).unwrap_or_else(|| panic!("no header {key}"));
                String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap()
            };
            let letter = (
                header("pulsewatch.source.topic"),
                header("pulsewatch.source.offset").parse().unwrap(),
                header("pulsewatch.error.code"),
            );
            assert_eq!(header("pulsewatch.source.partition"), "0");
            (letter, header("pulsewatch.error.message"))
        })
        .collect();
    letters.sort();
    letters
}

#[test]
fn records_the_database_refuses_and_days_outside_the_retention_are_set_aside_and_the_rest_is_stored_once() {
    let config = prepare();
    let s = config.postgres.schema.clone();
    let producer = pulsewatch::kafka::producer(&config.kafka).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let minute = now / 60_000 * 60_000;
    let [heartbeats, alerts, app_state, metrics] =
        [names::HEARTBEATS, names::ALERTS, names::APP_STATE, names::METRICS_1M].map(|t| config.kafka.name(t));
    let mut expected: Vec<Letter> = Vec::new();
    let mut set_aside =
        |topic: &str, offset: i64, code: &str| expected.push((topic.into(), offset, code.into()));

    // Offsets 0 ..= 3 of partition 0 of each topic: healthy, bad, bad, healthy.
    send(&producer, &heartbeats, "pa", &beat("pa", "i1", 1, now), None);
    let nul_beat = beat("pa", "i\u{0}2", 1, now);
    send(&producer, &heartbeats, "pa", &nul_beat, None);
    send(&producer, &heartbeats, "pa", &beat("pa", "i3", 1, IN_1970_MS), Some(IN_1970_MS));
    send(&producer, &heartbeats, "pa", &beat("pa", "i1", 2, now), None);
    // The processor may refuse a NUL itself; the sink must not need it to.
    let codec_takes_nul = pulsewatch::codec::decode(&nul_beat, now, 86_400_000).is_ok();
    if codec_takes_nul {
        set_aside(&heartbeats, 1, "store_rejected");
    }
    set_aside(&heartbeats, 2, "outside_retention");

    send(&producer, &metrics, "pa", &rollup("pa", minute - 60_000), None);
    send(&producer, &metrics, "pb", &rollup("p\u{0}b", minute), None);
    send(&producer, &metrics, "pa", &rollup("pa", IN_1970_MS / 60_000 * 60_000), None);
    send(&producer, &metrics, "pa", &rollup("pa", minute), None);
    set_aside(&metrics, 1, "store_rejected");
    set_aside(&metrics, 2, "outside_retention");

    send(&producer, &app_state, "pa", &snapshot("pa", "UP", "core", now), None);
    send(&producer, &app_state, "pb", &snapshot("pb", "UP", "co\u{0}re", now), None);
    send(&producer, &app_state, "pc", &snapshot("pc", "BOGUS", "core", now), None);
    send(&producer, &app_state, "pd", &snapshot("pd", "DOWN", "core", now), None);
    set_aside(&app_state, 1, "store_rejected");
    set_aside(&app_state, 2, "store_rejected");

    send(&producer, &alerts, "pa", &alert("pa", "all instances down", now), None);
    send(&producer, &alerts, "pb", &alert("pb", "down\u{0}", now), None);
    send(&producer, &alerts, "pd", &alert("pd", "all instances down", now), None);
    set_aside(&alerts, 1, "store_rejected");
    producer.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(producer.context().failed(), 0, "{:?}", producer.context().first_error());
    expected.sort();
    let produced = [(&heartbeats, 4), (&metrics, 4), (&app_state, 4), (&alerts, 3)];

    let sink = Pipeline::start(&config, "sink", &[]);
    let group = config.kafka.name("sink");
    let committed = |topic: &str| {
        query_i64(
            &config,
            &format!(
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM \"{s}\".sink_offset
                 WHERE consumer_group = '{group}' AND topic = '{topic}'"
            ),
        )
    };
    eventually(Duration::from_secs(30), "sink_offset reaches the end of every partition", || {
        produced.iter().all(|(topic, n)| committed(topic) == *n)
    });

    let count = |sql: &str| query_i64(&config, &format!("SELECT count(*) FROM \"{s}\".{sql}"));
    assert_eq!(
        count("heartbeat_event WHERE app_id = 'pa' AND kafka_offset IN (0, 3)"),
        2,
        "the healthy beats, once each"
    );
    assert_eq!(count("heartbeat_event"), 2);
    assert_eq!(count("metric_rollup_1m WHERE app_id = 'pa'"), 2, "the healthy rollups");
    assert_eq!(count("metric_rollup_1m"), 2);
    assert_eq!(count("application WHERE app_id IN ('pa', 'pd')"), 2, "the healthy snapshots");
    assert_eq!(count("application"), 2);
    assert_eq!(count("alert_event WHERE app_id IN ('pa', 'pd')"), 2, "the healthy alerts");
    assert_eq!(count("alert_event"), 2);
    let in_1970 = query_i64(
        &config,
        &format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{s}' AND tablename LIKE '%_p1970%'"),
    );
    assert_eq!(in_1970, 0, "no partition for 1970");

    let letters = dead_letters(&config);
    let got: Vec<Letter> = letters.iter().map(|(l, _)| l.clone()).collect();
    assert_eq!(got, expected, "each bad record on the dead-letter topic once, with its code");
    for ((topic, _, code), message) in &letters {
        match code.as_str() {
            "outside_retention" => assert!(message.contains("1970-01-02"), "{topic}: {message}"),
            _ => assert!(message.contains("SQLSTATE"), "{topic}: {message}"),
        }
    }
    let rejected = sink.metric("pulsewatch_sink_rejected_records_total");
    assert_eq!(rejected as usize, expected.len(), "each counted once");

    // A restart resumes past them: the next record is stored, no dead letter is sent again.
    sink.stop();
    let sink = Pipeline::start(&config, "sink", &[]);
    send(&producer, &heartbeats, "pa", &beat("pa", "i1", 3, now + 1_000), None);
    producer.flush(Duration::from_secs(30)).unwrap();
    eventually(Duration::from_secs(20), "the restarted sink stores the next beat", || {
        count("heartbeat_event") == 3
    });
    assert_eq!(committed(&heartbeats), 5);
    let again: Vec<Letter> = dead_letters(&config).into_iter().map(|(l, _)| l).collect();
    assert_eq!(again, expected, "nothing sent again after the restart");
    sink.stop();
}
