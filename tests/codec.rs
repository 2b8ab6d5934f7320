//! Property tests of the decoders: arbitrary beats round-trip in both heartbeat encodings and
//! through an engine's `app-state` record, and arbitrary or corrupted bytes never panic a
//! decoder.

use base64::Engine as _;
use proptest::prelude::*;
use pulsewatch::app_state::STATE_VERSION;
use pulsewatch::codec::{self, DecodeError, Encoding, avro, json};
use pulsewatch::engine::{Engine, StateRecord};
use pulsewatch::heartbeat::{Heartbeat, InstanceStatus};
use pulsewatch::rules::{CompiledRules, DetectionConfig, RuleSet};
use pulsewatch::trend::TrendConfig;

fn status() -> impl Strategy<Value = InstanceStatus> {
    prop::sample::select(InstanceStatus::SYMBOLS.to_vec())
}

prop_compose! {
    fn heartbeat()(
        app_id in "\\PC{1,60}",
        instance_id in "[a-z0-9-]{1,40}",
        seq in 0i64..i64::MAX,
        sent_at in 0i64..4_000_000_000_000,
        interval_ms in 1_000i32..=86_400_000,
        status in status(),
        longs in prop::collection::vec(prop::option::of(0i64..i64::MAX), 9),
        ints in prop::collection::vec(prop::option::of(0i32..i32::MAX), 6),
        ratios in prop::collection::vec(prop::option::of(0.0f32..=1.0), 2),
        latencies in prop::collection::vec(prop::option::of(0.0f32..1e6), 3),
        labels in prop::collection::btree_map("[a-z]{1,8}", "\\PC{0,20}", 0..5),
    ) -> Heartbeat {
        let mut b = Heartbeat::new(app_id, instance_id, seq, sent_at);
        b.interval_ms = interval_ms;
        b.status = status;
        b.memory_used_bytes = longs[0];
        b.memory_limit_bytes = longs[1];
        b.sessions_active = longs[2];
        b.requests_total = longs[3];
        b.errors_total = longs[4];
        b.slow_requests_total = longs[5];
        b.cache_hits_total = longs[6];
        b.cache_misses_total = longs[7];
        b.db_pool_size = ints[0];
        b.db_pool_in_use = ints[1];
        b.db_pool_waiting = ints[2];
        b.threads = ints[3];
        b.open_fds = ints[4];
        b.request_queue_depth = ints[5];
        b.cpu_ratio = ratios[0];
        b.disk_used_ratio = ratios[1];
        b.latency_p95_ms = latencies[0];
        b.latency_p99_ms = latencies[1];
        b.db_query_p95_ms = latencies[2];
        b.labels = labels.into_iter().collect();
        b
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn avro_round_trips(b in heartbeat()) {
        let bytes = codec::encode(&b, Encoding::Avro);
        prop_assert_eq!(codec::decode(&bytes, b.sent_at, 1).unwrap(), b);
    }

    #[test]
    fn json_round_trips(b in heartbeat()) {
        let bytes = codec::encode(&b, Encoding::Json);
        prop_assert_eq!(codec::decode(&bytes, b.sent_at, 1).unwrap(), b);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&bytes, 0, i64::MAX);
        let _ = avro::decode(&bytes);
        let _ = json::decode(&bytes);
    }

    #[test]
    fn corrupted_avro_never_panics(b in heartbeat(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = avro::encode(&b);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = codec::decode(&bytes, 0, i64::MAX);
        let len = cut.index(bytes.len());
        let _ = codec::decode(&bytes[..len], 0, i64::MAX);
    }

    #[test]
    fn app_state_records_round_trip_and_corrupted_ones_never_panic(
        b in heartbeat(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let config = DetectionConfig::default();
        let rules = CompiledRules::new(&RuleSet::default(), &config, &TrendConfig::default()).unwrap();
        let mut engine = Engine::new(0, config, rules);
        let (app_id, sent_at) = (b.app_id.clone(), b.sent_at);
        engine.on_beat(b, 0, sent_at, &mut Vec::new());
        let record = engine.take_state_records().into_iter().find(|r| r.is_state()).unwrap();
        let back = StateRecord::decode(&record.value, Some(&record.header)).unwrap();
        prop_assert_eq!(&back.app_id, &app_id);
        // (Compared as JSON: the derived rule profile is not part of the state.)
        let json = |s: Option<&pulsewatch::engine::AppState>| serde_json::to_string(&s).unwrap();
        prop_assert_eq!(json(back.state.as_ref()), json(engine.app(&app_id)));
        let mut header = record.header.clone();
        for (at, value) in flips {
            let i = at.index(header.len());
            header[i] = value;
        }
        let _ = StateRecord::decode(&record.value, Some(&header));
        let _ = StateRecord::decode(&record.value, Some(&header[..cut.index(header.len())]));
        let _ = StateRecord::decode(&header, None);
    }

    #[test]
    fn avro_with_random_body_behind_a_valid_header_errs_cleanly(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = avro::HEADER.to_vec();
        bytes.extend_from_slice(&body);
        match avro::decode(&bytes) {
            Ok(_) | Err(DecodeError::Truncated(_)) | Err(DecodeError::MalformedAvro(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {other:?}"),
        }
    }
}

/// `app-state` records written at state version 3 (three applications of two instances, 65
/// minutes of beats from the load generator's simulation, one reporting neither sessions nor
/// threads), each with its state as that version wrote it in JSON.
const VERSION_3_RECORDS: &str = include_str!("fixtures/app-state-v3.json");

#[test]
fn app_state_records_of_version_3_read_back_to_the_state_they_held() {
    let fixture: Vec<serde_json::Value> = serde_json::from_str(VERSION_3_RECORDS).unwrap();
    assert_eq!(fixture.len(), 3);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut records = Vec::new();
    for r in &fixture {
        let header = b64.decode(r["header"].as_str().unwrap()).unwrap();
        assert_eq!(header[0], 3, "a record of version 3");
        let back = StateRecord::decode(r["value"].as_str().unwrap().as_bytes(), Some(&header)).unwrap();
        assert_eq!((back.version, back.app_id.as_str()), (3, r["app_id"].as_str().unwrap()));
        let state = back.state.as_ref().expect("a tracked application");
        assert_eq!(state.instances.values().map(|i| i.trend.window.len()).collect::<Vec<_>>(), [60, 60]);
        assert_eq!(serde_json::to_value(state).unwrap(), r["state"], "{}", back.app_id);
        records.push(back);
    }
    // Restored, and written again at the current version: the same state, in fewer bytes.
    let config = DetectionConfig::default();
    let rules = CompiledRules::new(&RuleSet::default(), &config, &TrendConfig::default()).unwrap();
    let engine = Engine::restore(0, config, rules, records);
    assert_eq!((engine.app_count(), engine.instance_count()), (3, 6));
    for (app_id, r) in fixture.iter().map(|r| (r["app_id"].as_str().unwrap(), r)) {
        let state = engine.app(app_id).unwrap();
        let out = pulsewatch::app_state::StateRecordOut::state(app_id, 0, 0, Some(state));
        let back = StateRecord::decode(&out.value, Some(&out.header)).unwrap();
        assert_eq!(back.version, STATE_VERSION);
        // (The restore schedules each instance's deadline anew: compared with the engine's.)
        assert_eq!(serde_json::to_value(back.state.as_ref()).unwrap(), serde_json::to_value(state).unwrap());
        let v3_bytes = b64.decode(r["header"].as_str().unwrap()).unwrap().len();
        assert!(out.header.len() * 10 < v3_bytes * 8, "{} bytes, {v3_bytes} at version 3", out.header.len());
    }
}

#[test]
fn each_bad_input_class_has_its_own_error() {
    let now = 1_800_000_000_000;
    let day = codec::DEFAULT_MAX_DRIFT_MS;
    let good = Heartbeat::new("shop", "shop-1", 1, now);
    let with = |f: &dyn Fn(&mut Heartbeat)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", avro::encode(&good)[..12].to_vec()),
        ("unknown_fingerprint", {
            let mut b = avro::encode(&good);
            b[2] ^= 1;
            b
        }),
        (
            "missing_field",
            br#"{"app_id":"a","instance_id":"i","sent_at":1,"interval_ms":1000,"status":"OK"}"#.to_vec(),
        ),
        (
            "mistyped_field",
            br#"{"app_id":"a","instance_id":"i","seq":1,"sent_at":"x","interval_ms":1000,"status":"OK"}"#
                .to_vec(),
        ),
        ("ratio_out_of_range", avro::encode(&with(&|b| b.cpu_ratio = Some(1.5)))),
        ("negative_value", json::encode(&with(&|b| b.requests_total = Some(-5)))),
        ("negative_value", avro::encode(&with(&|b| b.threads = Some(-1)))),
        ("empty_app_id", avro::encode(&with(&|b| b.app_id.clear()))),
        ("app_id_too_long", json::encode(&with(&|b| b.app_id = "x".repeat(201)))),
        ("interval_out_of_range", avro::encode(&with(&|b| b.interval_ms = 500))),
        ("interval_out_of_range", avro::encode(&with(&|b| b.interval_ms = 86_400_001))),
        ("sent_at_too_far", avro::encode(&with(&|b| b.sent_at = now - day - 1))),
        ("sent_at_too_far", json::encode(&with(&|b| b.sent_at = now + day + 1))),
        ("unknown_encoding", b"garbage".to_vec()),
        ("schema_registry_unsupported", vec![0, 0, 0, 0, 1, 2]),
        ("empty", vec![]),
        ("malformed_json", b"{\"app_id\": ".to_vec()),
    ];
    for (code, bytes) in cases {
        let err = codec::decode(&bytes, now, day).expect_err(code);
        assert_eq!(err.code(), code, "{err}");
        assert!(!err.to_string().is_empty());
    }
}
