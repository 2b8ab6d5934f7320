//! The Confluent Schema Registry wire format against the stack's registry (Apicurio) and an
//! independent producer: confluent-kafka's AvroSerializer, run through
//! `tests/interop/registry_peer.py`, with our schema and with evolved ones.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Pipeline, eventually, query_i64};
use pulsewatch::codec::{self, confluent};
use pulsewatch::config::Config;
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::topology::names;
use rdkafka::Message;
use rdkafka::producer::Producer;

/// The registry's URL, which `scripts/stack env` exports.
fn registry_url(config: &Config) -> String {
    let url = config.schema_registry.url.clone();
    assert!(
        !url.is_empty(),
        "PULSEWATCH_SCHEMA_REGISTRY_URL is not set: start the stack with `scripts/stack up` and \
         `eval \"$(scripts/stack env)\"` (or run the whole suite with `scripts/test`)"
    );
    url
}

/// Runs `registry_peer.py ARGS` with `input` on its stdin; its stdout lines.
fn peer(args: &[&str], input: &str) -> Vec<String> {
    common::python::run("registry_peer.py", args, input)
}

/// Produces `beats` with confluent-kafka's AvroSerializer and schema `variant`; the id it used.
fn produce(config: &Config, variant: &str, beats: &[Heartbeat]) -> u32 {
    let input: String =
        beats.iter().map(|b| String::from_utf8(codec::json::encode(b)).unwrap() + "\n").collect();
    let topic = config.kafka.name(names::HEARTBEATS);
    let url = registry_url(config);
    let args = [
        "produce",
        "--brokers",
        &config.kafka.brokers,
        "--topic",
        &topic,
        "--registry",
        &url,
        "--variant",
        variant,
    ];
    peer(&args, &input)[0].parse().expect("a schema id")
}

/// `count` beats of each of `apps` applications named `<prefix>-<n>`, 5 s apart, ending now.
fn beats(prefix: &str, apps: usize, count: i64) -> Vec<Heartbeat> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    for i in 0..count {
        for a in 0..apps {
            let mut b = Heartbeat::new(
                format!("{prefix}-{a}"),
                format!("{prefix}-{a}-0"),
                i,
                now - (count - i) * 5_000,
            );
            b.interval_ms = 5_000;
            b.threads = Some(40 + a as i32);
            b.memory_used_bytes = Some(100 << 20);
            b.memory_limit_bytes = Some(1 << 30);
            out.push(b);
        }
    }
    out
}

/// The tests of this file one at a time: one of them stops the registry.
static REGISTRY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the registry again when dropped, even after a failed assertion.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        common::stack("start-registry");
    }
}

fn stored(config: &Config, filter: &str) -> i64 {
    let schema = &config.postgres.schema;
    query_i64(config, &format!("SELECT count(*) FROM \"{schema}\".heartbeat_event WHERE {filter}"))
}

/// Every dead letter, with its error code.
fn dead_letters(config: &Config) -> Vec<String> {
    let dlq = config.kafka.name(names::HEARTBEATS_DLQ);
    pulsewatch::readback::read_to_end(&config.kafka, &dlq, Duration::from_secs(60))
        .unwrap()
        .iter()
        .map(|m| {
            let headers = rdkafka::message::Headers::iter(m.headers().expect("dead letters have headers"));
            headers
                .filter(|h| h.key == "pulsewatch.error.code")
                .find_map(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn beats_of_confluent_serializers_are_stored_once_whatever_the_schema_version() {
    let _one = exclusive();
    let config = common::prepare("registry");
    let url = registry_url(&config);
    let p = Pipeline::start(&config, "all", &[("PULSEWATCH_SCHEMA_REGISTRY_URL", &url)]);
    let (ours, added, dropped) = (beats("ours", 3, 20), beats("added", 3, 20), beats("dropped", 3, 20));
    let id_ours = produce(&config, "ours", &ours);
    let id_added = produce(&config, "added", &added);
    let id_dropped = produce(&config, "dropped", &dropped);
    assert!(
        id_ours != id_added && id_added != id_dropped,
        "three schemas: {id_ours} {id_added} {id_dropped}"
    );
    // A record naming a schema id the registry does not have.
    let heartbeats = config.kafka.name(names::HEARTBEATS);
    let mut unknown = confluent::prefix(0x7fff_fff0).to_vec();
    unknown.extend_from_slice(&codec::avro::encode(&beats("unknown", 1, 1)[0])[10..]);
    let producer = pulsewatch::kafka::producer(&config.kafka).unwrap();
    pulsewatch::kafka::send(&producer, &heartbeats, "unknown-0", &unknown, None).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let total = (ours.len() + added.len() + dropped.len()) as i64;
    eventually(Duration::from_secs(120), "the sink stores every beat", || stored(&config, "true") >= total);
    eventually(Duration::from_secs(60), "the unknown schema id is dead-lettered", || {
        !dead_letters(&config).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored(&config, "true"), total, "each beat exactly once");
    assert_eq!(dead_letters(&config), ["unknown_schema_id"]);
    // The dropped field reads as absent; the others keep their figures.
    assert_eq!(stored(&config, "app_id LIKE 'dropped-%' AND threads IS NULL"), dropped.len() as i64);
    assert_eq!(
        stored(&config, "app_id NOT LIKE 'dropped-%' AND threads >= 40"),
        (ours.len() + added.len()) as i64
    );
    assert_eq!(p.metric("pulsewatch_schema_registry_unavailable_total"), 0.0);
    p.stop();
}

#[test]
fn schema_register_prints_the_ids_the_registry_gives() {
    let _one = exclusive();
    let config = common::isolated_config("registry-cli");
    let url = registry_url(&config);
    let out = Command::new(env!("CARGO_BIN_EXE_pulsewatch"))
        .args(["schema", "register"])
        .env("PULSEWATCH_SCHEMA_REGISTRY_URL", &url)
        .env("PULSEWATCH_KAFKA_TOPIC_PREFIX", &config.kafka.topic_prefix)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let prefix = &config.kafka.topic_prefix;
    let registry = pulsewatch::registry::Registry::from_config(&config.schema_registry).unwrap();
    let mut ids = Vec::new();
    for (subject, schema) in [
        ("heartbeats-value", codec::avro::HEARTBEAT_SCHEMA),
        ("alerts-value", pulsewatch::alert::ALERT_SCHEMA),
    ] {
        let id = registry.register(&format!("{prefix}{subject}"), schema).unwrap();
        assert!(text.contains(&format!("{prefix}{subject}: id {id}\n")), "{text}");
        ids.push(id);
    }
    assert!(registry.writer_schema(ids[0]).unwrap().same_as_ours());
    // An alert's schema is no heartbeat's: records naming it are invalid input.
    let err = registry.writer_schema(ids[1]).unwrap_err();
    assert_eq!(err.as_decode_error().map(|e| e.code()), Some("schema_unresolvable"), "{err}");
}

#[test]
fn a_registry_that_is_down_is_waited_for_not_blamed() {
    let _one = exclusive();
    let config = common::prepare("registry-down");
    let url = registry_url(&config);
    // Written while the registry is up, read while it is down: no schema in any cache.
    let (ours, added) = (beats("ours", 4, 10), beats("added", 4, 10));
    produce(&config, "ours", &ours);
    produce(&config, "added", &added);
    common::stack("stop-registry");
    let restart = Restart;
    let p = Pipeline::start(&config, "all", &[("PULSEWATCH_SCHEMA_REGISTRY_URL", &url)]);
    // Beats in the other encodings flow meanwhile, in the same partitions.
    let plain = beats("plain", 4, 10);
    let heartbeats = config.kafka.name(names::HEARTBEATS);
    let producer = pulsewatch::kafka::producer(&config.kafka).unwrap();
    for b in &plain {
        pulsewatch::kafka::send(&producer, &heartbeats, &b.app_id, &codec::avro::encode(b), None).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_secs(20));
    let during = p.metric("pulsewatch_schema_registry_unavailable_total");
    drop(restart);
    let total = (ours.len() + added.len() + plain.len()) as i64;
    eventually(Duration::from_secs(120), "the sink stores every beat", || stored(&config, "true") >= total);
    std::thread::sleep(Duration::from_secs(2));
    assert!(during > 0.0, "the stages paused for the registry");
    assert_eq!(stored(&config, "true"), total, "each beat exactly once");
    assert!(dead_letters(&config).is_empty(), "nothing dead-lettered: {:?}", dead_letters(&config));
    p.stop();
}

#[test]
fn alerts_in_the_confluent_format_are_read_by_the_confluent_deserializer() {
    let _one = exclusive();
    let config = common::prepare("registry-alerts");
    let url = registry_url(&config);
    let env = [("PULSEWATCH_SCHEMA_REGISTRY_URL", url.as_str()), ("PULSEWATCH_ALERTS_ENCODING", "confluent")];
    let p = Pipeline::start(&config, "all", &env);
    // Two and a half minutes at 95 % of the memory limit: MEMORY_HIGH.
    let mut beats = beats("memory", 1, 30);
    for b in &mut beats {
        b.memory_used_bytes = Some(b.memory_limit_bytes.unwrap() / 100 * 95);
    }
    produce(&config, "ours", &beats);
    let schema = &config.postgres.schema;
    eventually(Duration::from_secs(120), "the sink stores an alert", || {
        query_i64(&config, &format!("SELECT count(*) FROM \"{schema}\".alert_event")) > 0
    });
    let ours = common::alerts(&config);
    assert!(ours.iter().any(|a| a.kind == pulsewatch::alert::AlertKind::MemoryHigh), "{ours:?}");
    let alerts = config.kafka.name(names::ALERTS);
    let count = ours.len().to_string();
    let args = [
        "read-alerts",
        "--brokers",
        &config.kafka.brokers,
        "--topic",
        &alerts,
        "--registry",
        &url,
        "--count",
        &count,
    ];
    let theirs = peer(&args, "");
    let registry = pulsewatch::registry::Registry::from_config(&config.schema_registry).unwrap();
    let id = registry.register(&format!("{alerts}-value"), pulsewatch::alert::ALERT_SCHEMA).unwrap();
    let mut read: Vec<(String, String, i64)> = theirs
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["schema_id"], id, "{line}");
            (
                v["alert_id"].as_str().unwrap().into(),
                v["kind"].as_str().unwrap().into(),
                v["event_at"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut written: Vec<(String, String, i64)> =
        ours.iter().map(|a| (a.alert_id.clone(), a.kind.as_str().into(), a.event_at)).collect();
    read.sort();
    written.sort();
    assert_eq!(read, written, "the Confluent deserializer reads every alert");
    p.stop();
}

#[test]
fn loadgen_writes_the_confluent_format_the_pipeline_reads() {
    let _one = exclusive();
    let config = common::prepare("registry-loadgen");
    let url = registry_url(&config);
    let manifest = std::env::temp_dir().join(format!("{}manifest.json", config.kafka.topic_prefix));
    let out = Command::new(env!("CARGO_BIN_EXE_pulsewatch"))
        .args(["loadgen", "--apps", "5", "--instances", "1", "--backfill", "5m", "--quiet"])
        .args(["--encoding", "confluent", "--manifest", manifest.to_str().unwrap()])
        .env("PULSEWATCH_SCHEMA_REGISTRY_URL", &url)
        .env("PULSEWATCH_KAFKA_BROKERS", &config.kafka.brokers)
        .env("PULSEWATCH_KAFKA_TOPIC_PREFIX", &config.kafka.topic_prefix)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: pulsewatch::loadgen::Manifest =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    std::fs::remove_file(&manifest).ok();
    assert_eq!(m.encoding, "confluent");
    assert!(m.beats_total > 0);
    let p = Pipeline::start(&config, "all", &[("PULSEWATCH_SCHEMA_REGISTRY_URL", &url)]);
    let total = m.beats_total as i64;
    eventually(Duration::from_secs(120), "the sink stores every beat", || stored(&config, "true") >= total);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored(&config, "true"), total);
    assert!(dead_letters(&config).is_empty());
    p.stop();
}
