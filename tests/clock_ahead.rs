//! Producers whose clocks run ahead, beside healthy applications on the same partition,
//! backfilled and live: the healthy ones get no alert, one that falls silent still does, and
//! a replay of the same records decides the same.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Pipeline, eventually};
use pulsewatch::alert::{Alert, AlertKind};
use pulsewatch::codec::{self, Encoding};
use pulsewatch::engine::{Effect, Engine};
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::kafka::{TrackedProducer, send_to};
use pulsewatch::topology::names;
use rdkafka::message::Message;
use rdkafka::producer::Producer;

const MIN: i64 = 60_000;
const HEALTHY: [&str; 6] = ["web", "api", "worker", "cron", "auth", "search"];
/// The producers whose clocks run ahead, and by how much.
const AHEAD: [(&str, i64); 2] = [("ahead-10m", 10 * MIN), ("ahead-23h", 23 * 60 * MIN)];
/// A healthy application that stops beating when the live part starts.
const SILENT: &str = "falls-silent";

/// Everything goes to partition 0, so the clocks ahead share it with the healthy apps.
fn beat(producer: &TrackedProducer, topic: &str, app: &str, seq: i64, sent_at: i64, interval_ms: i32) {
    let mut b = Heartbeat::new(app, format!("{app}-0"), seq, sent_at);
    b.interval_ms = interval_ms;
    send_to(producer, topic, Some(0), app, &codec::encode(&b, Encoding::Avro), None).unwrap();
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Twelve minutes of history at 5 s, written at once, then `live` of beats every second.
fn publish(producer: &TrackedProducer, topic: &str, live: Duration) -> i64 {
    let live_from = now_ms();
    let mut seq = 0;
    // The last beat of history is at most 5 s before the first live one: no one is late.
    for at in (live_from - 12 * MIN..live_from).step_by(5_000) {
        seq += 1;
        for app in HEALTHY.iter().chain([&SILENT]) {
            beat(producer, topic, app, seq, at, 5_000);
        }
        for (app, ahead) in AHEAD {
            beat(producer, topic, app, seq, at + ahead, 5_000);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let until = Instant::now() + live;
    let mut last = 0;
    while Instant::now() < until {
        seq += 1;
        last = now_ms();
        for app in HEALTHY {
            beat(producer, topic, app, seq, last, 1_000);
        }
        for (app, ahead) in AHEAD {
            beat(producer, topic, app, seq, last + ahead, 1_000);
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(1_000));
    }
    last
}

/// What a fresh engine decides on the partition's records as the broker stored them.
fn replay(config: &pulsewatch::config::Config, topic: &str) -> Vec<Alert> {
    let records = pulsewatch::readback::read_to_end(&config.kafka, topic, Duration::from_secs(60)).unwrap();
    let mut engine = Engine::new(0, config.detection.clone(), config.compiled_rules().unwrap());
    let mut out = Vec::new();
    for m in records.iter().filter(|m| m.partition() == 0) {
        let broker_ms = m.timestamp().to_millis();
        let beat =
            codec::decode(m.payload().unwrap(), broker_ms.unwrap(), codec::DEFAULT_MAX_DRIFT_MS).unwrap();
        engine.on_record(beat, m.offset(), broker_ms, broker_ms.unwrap(), &mut out);
    }
    out.into_iter()
        .filter_map(|e| match e {
            Effect::Alert(a) => Some(a),
            Effect::Rollup(_) => None,
        })
        .collect()
}

type Transition = (String, AlertKind, &'static str, i64);

fn transitions(alerts: &[Alert], before: i64) -> BTreeSet<Transition> {
    alerts
        .iter()
        .filter(|a| a.event_at < before)
        .map(|a| (a.app_id.clone(), a.kind, a.state.as_str(), a.event_at))
        .collect()
}

#[test]
fn clocks_ahead_make_no_one_else_late_live_or_backfilled_and_a_replay_agrees() {
    let config = common::prepare("clock-ahead");
    let topic = config.kafka.name(names::HEARTBEATS);
    let p = Pipeline::start(&config, "processor", &[]);
    let producer = pulsewatch::kafka::producer(&config.kafka).unwrap();
    let last = publish(&producer, &topic, Duration::from_secs(20));
    // The beats of the last second are within the allowed lateness: judge what came before.
    let judged_until = last - 10_000;
    eventually(Duration::from_secs(60), "the silent app's INSTANCE_LATE is published", || {
        common::alerts(&config).iter().any(|a| a.app_id == SILENT && a.kind == AlertKind::InstanceLate)
    });
    let published = common::alerts(&config);
    let clamped = p.metric("pulsewatch_clamped_beats");
    p.stop();

    let healthy: Vec<_> = published.iter().filter(|a| a.app_id != SILENT).collect();
    assert!(healthy.is_empty(), "no alert on an application that beat all along: {healthy:#?}");
    let silent = transitions(&published, judged_until);
    assert!(
        silent.iter().any(|t| t.1 == AlertKind::InstanceLate && t.2 == "FIRING"),
        "the app that fell silent is late: {silent:?}"
    );
    assert!(clamped >= 2.0 * 140.0, "every beat of the clocks ahead is counted: {clamped}");
    assert_eq!(
        transitions(&replay(&config, &topic), judged_until),
        silent,
        "a replay of the same records decides the same"
    );
}
