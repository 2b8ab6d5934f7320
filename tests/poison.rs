//! One record must never stop pulsewatch: crafted poison and random mutations of valid beats,
//! beside healthy applications, with every compression codec Kafka offers. Each record is
//! stored or dead-lettered exactly once, with its reason; the process stays up and no
//! transaction is rewound.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Pipeline, eventually, query_i64};
use pulsewatch::codec::{self, Encoding, avro};
use pulsewatch::config::{Config, KafkaConfig};
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::kafka::{TrackedProducer, send_raw};
use pulsewatch::topology::names;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::Producer;

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// A producer compressing with `codec`, allowed records of up to 8 MB before compression.
fn producer_with(kafka: &KafkaConfig, codec: &str) -> TrackedProducer {
    let mut kafka = kafka.clone();
    kafka.properties.insert("compression.type".into(), codec.into());
    kafka.properties.insert("message.max.bytes".into(), (8 << 20).to_string());
    pulsewatch::kafka::producer(&kafka).unwrap()
}

fn send(producer: &TrackedProducer, topic: &str, key: Option<&[u8]>, payload: &[u8]) {
    send_raw(producer, topic, key, payload, OwnedHeaders::new()).unwrap();
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn json(beat: &Heartbeat) -> Vec<u8> {
    codec::encode(beat, Encoding::Json)
}

/// Avro of `beat` with the bytes of `from` in its encoding replaced by `to` (same length).
fn avro_patched(beat: &Heartbeat, from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut bytes = avro::encode(beat);
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the pattern is in the record");
    bytes[at..at + to.len()].copy_from_slice(to);
    bytes
}

/// Crafted records that must each be dead-lettered with their code.
/// What a crafted record is, its key, its payload, and the code it must be dead-lettered with.
type Poison = (&'static str, Option<Vec<u8>>, Vec<u8>, &'static str);

fn poison(now: i64) -> Vec<Poison> {
    let b = |app: &str| Heartbeat::new(app, "i-0", 1, now);
    let with_label = |k: &str, v: &str| {
        let mut x = b("labelled");
        x.labels.insert(k.into(), v.into());
        x
    };
    let nul_label_json = json(&with_label("env", "pr\0d"));
    let nul_key_avro = avro_patched(&with_label("eXv", "prod"), b"eXv", b"e\0v");
    let long_label = json(&with_label("k", &"v".repeat(5_000)));
    let mut many = b("many-labels");
    for i in 0..2_000 {
        many.labels.insert(format!("k{i}"), "v".into());
    }
    let mut inf = b("infinite");
    inf.latency_p95_ms = Some(1.5);
    let inf = avro_patched(&inf, &1.5f32.to_le_bytes(), &f32::INFINITY.to_le_bytes());
    let mut garbage = vec![b'{'];
    garbage.extend((0..900_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let mut huge = vec![b'{'];
    huge.resize(5 << 20, b' ');
    let mut ancient = Heartbeat::new("ancient", "i-0", 1, 86_400_000);
    ancient.interval_ms = 5_000;
    vec![
        ("nul in app_id, JSON", Some(b"nul-json".to_vec()), json(&b("nul\0app")), "nul_character"),
        (
            "nul in instance_id, Avro",
            Some(b"nul-avro".to_vec()),
            avro_patched(&b("nul-avro"), b"i-0", b"i\x000"),
            "nul_character",
        ),
        ("nul in a label value, JSON", Some(b"labelled-1".to_vec()), nul_label_json, "nul_character"),
        ("nul in a label key, Avro", Some(b"labelled-2".to_vec()), nul_key_avro, "nul_character"),
        ("2,000 labels", Some(b"many-labels".to_vec()), json(&many), "too_many_labels"),
        ("a 5,000-character label", Some(b"labelled-3".to_vec()), long_label, "label_too_long"),
        ("+Infinity in an Avro float", Some(b"infinite".to_vec()), inf, "not_finite"),
        ("900 KB of garbage", Some(b"garbage".to_vec()), garbage, "record_too_large"),
        ("5 MB that compresses to little", Some(b"huge".to_vec()), huge, "record_too_large"),
        ("no key, not a beat", None, b"not a beat".to_vec(), "unknown_encoding"),
        ("a key that is not UTF-8", Some(vec![0xff, 0xfe, 0x00]), b"\x01\x02".to_vec(), "unknown_encoding"),
        ("a beat of 1970", Some(b"ancient".to_vec()), avro::encode(&ancient), "sent_at_too_far"),
    ]
}

/// Beats of `apps` applications of its own per codec, each beating `beats` times.
fn healthy(now: i64, codec: &str, apps: usize, beats: i64) -> Vec<Heartbeat> {
    let mut out = Vec::new();
    for seq in 0..beats {
        for a in 0..apps {
            let mut b = Heartbeat::new(format!("{codec}-{a}"), "i-0", seq, now - (beats - seq) * 5_000);
            b.interval_ms = 5_000;
            b.memory_used_bytes = Some(100 << 20);
            b.memory_limit_bytes = Some(1 << 30);
            out.push(b);
        }
    }
    out
}

fn dead_letters(config: &Config) -> Vec<rdkafka::message::OwnedMessage> {
    let dlq = config.kafka.name(names::HEARTBEATS_DLQ);
    pulsewatch::readback::read_to_end(&config.kafka, &dlq, Duration::from_secs(60)).unwrap()
}

fn header<'a>(m: &'a rdkafka::message::OwnedMessage, key: &str) -> Option<&'a str> {
    let headers = m.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| std::str::from_utf8(v).unwrap())
}

fn stored(config: &Config) -> i64 {
    let schema = &config.postgres.schema;
    query_i64(config, &format!("SELECT count(*) FROM \"{schema}\".heartbeat_event"))
}

#[test]
fn crafted_poison_is_dead_lettered_and_every_codec_is_read() {
    let config = common::prepare("poison");
    let topic = config.kafka.name(names::HEARTBEATS);
    let p = Pipeline::start(&config, "all", &[]);
    let now = now_ms();
    let mut good = 0;
    for codec in CODECS {
        let producer = producer_with(&config.kafka, codec);
        for (i, beat) in healthy(now, codec, 4, 10).iter().enumerate() {
            let encoding = if i % 2 == 0 { Encoding::Avro } else { Encoding::Json };
            send(&producer, &topic, Some(beat.app_id.as_bytes()), &codec::encode(beat, encoding));
            good += 1;
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
    // Valid, and odd: kept verbatim, escaped wherever it is logged.
    let forged = Heartbeat::new("forged\n2030-01-01T00:00:00Z ERROR forged \u{1b}[31mred", "i-0", 1, now);
    let poison = poison(now);
    let zstd = producer_with(&config.kafka, "zstd");
    send(&zstd, &topic, Some(forged.app_id.as_bytes()), &json(&forged));
    for (_, key, payload, _) in &poison {
        send(&zstd, &topic, key.as_deref(), payload);
    }
    // Healthy beats after the poison, in the same partitions.
    for beat in healthy(now_ms(), "after", 4, 5) {
        send(&zstd, &topic, Some(beat.app_id.as_bytes()), &json(&beat));
        good += 1;
    }
    zstd.flush(Duration::from_secs(30)).unwrap();
    let total = good + 1 + poison.len() as i64;

    eventually(Duration::from_secs(120), "every beat stored and every poison dead-lettered", || {
        stored(&config) > good && dead_letters(&config).len() >= poison.len()
    });
    assert_eq!(p.metric("pulsewatch_records_in_total{stage=\"processor\""), total as f64);
    assert_eq!(stored(&config), good + 1, "every healthy beat stored once");
    let schema = &config.postgres.schema;
    let verbatim = common::query_strings(
        &config,
        &format!("SELECT app_id FROM \"{schema}\".heartbeat_event WHERE app_id LIKE 'forged%'"),
    );
    assert_eq!(verbatim, vec![forged.app_id.clone()]);
    let letters = dead_letters(&config);
    assert_eq!(letters.len(), poison.len(), "each poison dead-lettered once");
    let by_key: BTreeMap<Option<Vec<u8>>, Vec<&rdkafka::message::OwnedMessage>> =
        letters.iter().fold(BTreeMap::new(), |mut m, l| {
            m.entry(l.key().map(<[u8]>::to_vec)).or_default().push(l);
            m
        });
    for (what, key, payload, code) in &poison {
        let candidates = by_key.get(key).unwrap_or_else(|| panic!("{what}: no dead letter with its key"));
        let letter = candidates
            .iter()
            .find(|l| header(l, "pulsewatch.error.code") == Some(code))
            .unwrap_or_else(|| panic!("{what}: no dead letter with code {code}"));
        let kept = letter.payload().unwrap_or_default();
        if payload.len() > pulsewatch::heartbeat::MAX_RECORD_BYTES {
            assert_eq!(
                header(letter, "pulsewatch.payload.truncated_from"),
                Some(&*payload.len().to_string())
            );
            assert!(
                payload.starts_with(kept) && kept.len() == pulsewatch::heartbeat::MAX_RECORD_BYTES,
                "{what}"
            );
        } else {
            assert_eq!(kept, &payload[..], "{what}: the payload as it was");
        }
    }
    let partitions = common::query_strings(
        &config,
        &format!(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = '{schema}' AND tablename LIKE '%1970%'"
        ),
    );
    assert!(partitions.is_empty(), "no partition for 1970: {partitions:?}");
    assert_eq!(p.metric("pulsewatch_transactions_total{outcome=\"aborted\""), 0.0, "nothing rewound");
    p.stop();
}

/// One random mutation of a valid beat, in JSON or Avro.
fn mutate(rng: &mut impl Rng, now: i64, n: usize) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut beat = Heartbeat::example_full();
    beat.app_id = format!("fuzz-{}", n % 50);
    beat.sent_at = now;
    if rng.random_bool(0.4) {
        let mut bytes = avro::encode(&beat);
        for _ in 0..rng.random_range(1..4) {
            if bytes.len() < 4 {
                break;
            }
            let at = rng.random_range(2..bytes.len());
            match rng.random_range(0..4) {
                0 => bytes[at] = rng.random(),
                1 => bytes.truncate(at),
                2 => bytes.insert(at, rng.random_range(0..0x20)),
                _ => bytes.extend((0..rng.random_range(1..40)).map(|_| rng.random::<u8>())),
            }
        }
        return (Some(beat.app_id.into_bytes()), bytes);
    }
    let mut v: serde_json::Value = serde_json::from_slice(&json(&beat)).unwrap();
    let fields: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    let field = fields[rng.random_range(0..fields.len())].clone();
    let control: String =
        (0..rng.random_range(1..12)).map(|_| char::from(rng.random_range(0u8..0x20))).collect();
    let mut nested = None;
    v[&field] = match rng.random_range(0..7) {
        0 => serde_json::Value::String(control),
        1 => serde_json::json!([1e308, -1e-308, 9.3e18, -0.0, u64::MAX as f64][rng.random_range(0..5)]),
        2 => {
            let depth = rng.random_range(1..2_000);
            nested = Some("[".repeat(depth) + &"]".repeat(depth));
            serde_json::Value::String("NESTED".into())
        }
        3 => (0..rng.random_range(1..300))
            .map(|i| (format!("k{i}{control}"), serde_json::json!("v")))
            .collect(),
        4 => serde_json::Value::Null,
        5 => serde_json::json!(rng.random::<i64>()),
        _ => serde_json::json!({"labels": {"env": control}}),
    };
    let mut text = serde_json::to_string(&v).unwrap();
    if let Some(nested) = nested {
        text = text.replace("\"NESTED\"", &nested);
    }
    (Some(beat.app_id.into_bytes()), text.into_bytes())
}

#[test]
fn random_mutations_each_land_or_are_dead_lettered() {
    let config = common::prepare("fuzz");
    let topic = config.kafka.name(names::HEARTBEATS);
    let p = Pipeline::start(&config, "all", &[]);
    let now = now_ms();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let producer = producer_with(&config.kafka, "zstd");
    let records: Vec<_> = (0..3_000).map(|n| mutate(&mut rng, now, n)).collect();
    let valid = records
        .iter()
        .filter(|(_, payload)| codec::decode(payload, now_ms(), codec::DEFAULT_MAX_DRIFT_MS).is_ok())
        .count() as i64;
    for (key, payload) in &records {
        send(&producer, &topic, key.as_deref(), payload);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let total = records.len() as i64;
    eventually(Duration::from_secs(120), "every mutation stored or dead-lettered", || {
        stored(&config) + dead_letters(&config).len() as i64 >= total
    });
    assert!(valid > 0 && valid < total, "the mutations hold both kinds: {valid} valid of {total}");
    assert_eq!(stored(&config), valid, "every valid mutation stored once");
    assert_eq!(dead_letters(&config).len() as i64, total - valid, "every other one dead-lettered once");
    assert_eq!(p.metric("pulsewatch_transactions_total{outcome=\"aborted\""), 0.0, "nothing rewound");
    p.stop();
}
