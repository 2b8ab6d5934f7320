//! The ingest stage against the real Kafka and PostgreSQL: every route with good, bad and
//! oversized input, tokens, idempotent retries, pings that stop, a full in-flight cap and
//! an unreachable broker.

mod common;

use std::time::{Duration, Instant};

use common::http::{post, request};
use common::{Pipeline, eventually, free_port, prepare, query_i64};
use pulsewatch::config::Config;
use pulsewatch::heartbeat::Heartbeat;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A JSON beat of `app`, without `sent_at` (the server stamps it).
fn beat_json(app: &str, instance: &str, seq: i64) -> String {
    format!(r#"{{"app_id":"{app}","instance_id":"{instance}","seq":{seq},"interval_ms":5000,"status":"OK"}}"#)
}

fn rows(config: &Config, app: &str) -> i64 {
    let s = &config.postgres.schema;
    query_i64(config, &format!("SELECT count(*) FROM \"{s}\".heartbeat_event WHERE app_id = '{app}'"))
}

/// Records on the test's heartbeats topic for `app`.
fn records(config: &Config, app: &str) -> usize {
    use rdkafka::message::Message;
    let topic = config.kafka.name(pulsewatch::topology::names::HEARTBEATS);
    pulsewatch::readback::read_to_end(&config.kafka, &topic, Duration::from_secs(30))
        .unwrap()
        .iter()
        .filter(|m| m.key() == Some(app.as_bytes()))
        .count()
}

/// Both stages and the ingest on a free port, with small limits; (pipeline, ingest address).
fn start_all(config: &Config, extra: &[(&str, &str)]) -> (Pipeline, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = vec![
        ("PULSEWATCH_INGEST_LISTEN", addr.as_str()),
        ("PULSEWATCH_INGEST_MAX_BATCH", "50"),
        ("PULSEWATCH_INGEST_MAX_BODY_BYTES", "1048576"),
    ];
    env.extend_from_slice(extra);
    (Pipeline::start(config, "all", &env), addr)
}

#[test]
fn single_beats_json_and_avro_are_accepted_and_bad_ones_named() {
    let config = prepare("ingest_single");
    let (pipeline, addr) = start_all(&config, &[]);
    let ok = post(&addr, "/v1/heartbeats", beat_json("single-json", "i-1", 1).as_bytes());
    assert_eq!((ok.status, ok.json()["accepted"].as_u64()), (202, Some(1)), "{}", ok.body);
    let mut beat = Heartbeat::example_full();
    (beat.app_id, beat.sent_at) = ("single-avro".into(), now_ms());
    let avro = pulsewatch::codec::avro::encode(&beat);
    let ok = request(&addr, "POST", "/v1/heartbeats", &[("Content-Type", "application/avro")], &avro);
    assert_eq!(ok.status, 202, "{}", ok.body);
    beat.seq += 1;
    let unlabelled = pulsewatch::codec::avro::encode(&beat);
    let ok = request(&addr, "POST", "/v1/heartbeats", &[], &unlabelled);
    assert_eq!(ok.status, 202, "Avro told by its marker: {}", ok.body);

    for (body, code) in [
        (&b"{\"app_id\":"[..], "malformed_json"),
        (br#"{"app_id":"a","instance_id":"i","interval_ms":5000,"status":"OK"}"#, "missing_field"),
        (br#"{"app_id":"","instance_id":"i","seq":1,"interval_ms":5000,"status":"OK"}"#, "empty_app_id"),
        (
            br#"{"app_id":"a","instance_id":"i","seq":1,"sent_at":5,"interval_ms":5000,"status":"OK"}"#,
            "sent_at_too_far",
        ),
    ] {
        let bad = post(&addr, "/v1/heartbeats", body);
        assert_eq!((bad.status, bad.code()), (400, code.to_owned()), "{}", bad.body);
        assert!(!bad.json()["message"].as_str().unwrap().is_empty());
    }
    let bad = request(&addr, "POST", "/v1/heartbeats", &[("Content-Type", "application/avro")], b"{}");
    assert_eq!((bad.status, bad.code()), (400, "truncated".to_owned()), "{}", bad.body);

    let huge = format!(r#"{{"app_id":"a","instance_id":"i","seq":1,"pad":"{}"}}"#, "x".repeat(600 * 1024));
    let too_large = post(&addr, "/v1/heartbeats", huge.as_bytes());
    assert_eq!(
        (too_large.status, too_large.code()),
        (413, "record_too_large".to_owned()),
        "{}",
        too_large.body
    );
    let over_body = post(&addr, "/v1/heartbeats", &vec![b' '; 2 * 1024 * 1024]);
    assert_eq!(over_body.status, 413, "{}", over_body.body);

    eventually(Duration::from_secs(60), "both beats stored", || {
        rows(&config, "single-json") == 1 && rows(&config, "single-avro") == 2
    });
    assert!(
        pipeline.metric("pulsewatch_ingest_requests_total{route=\"/v1/heartbeats\",status=\"202\"}") >= 2.0
    );
    assert!(pipeline.metric("pulsewatch_ingest_rejected_beats_total{code=\"missing_field\"}") >= 1.0);
    assert!(pipeline.metric("pulsewatch_ingest_request_seconds_count") >= 8.0);
}

#[test]
fn a_batch_accepts_its_valid_beats_whatever_their_neighbours() {
    let config = prepare("ingest_batch");
    let (_pipeline, addr) = start_all(&config, &[]);
    let ndjson = [
        beat_json("batch-a", "i-1", 1),
        r#"{"app_id":"batch-a","instance_id":"i-1","seq":2,"interval_ms":5,"status":"OK"}"#.to_owned(),
        beat_json("batch-a", "i-1", 3),
        "not json".to_owned(),
        beat_json("batch-a", "i-2", 1),
    ]
    .join("\n");
    let answer = post(&addr, "/v1/heartbeats/batch", ndjson.as_bytes());
    assert_eq!(answer.status, 202, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["accepted"], serde_json::json!([0, 2, 4]), "{json}");
    let rejected: Vec<(u64, String)> = json["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(rejected, [(1, "interval_out_of_range".to_owned()), (3, "malformed_json".to_owned())]);

    let array = format!("[{}, {}]", beat_json("batch-b", "i-1", 1), beat_json("batch-b", "i-1", 2));
    let answer = post(&addr, "/v1/heartbeats/batch", array.as_bytes());
    assert_eq!((answer.status, answer.json()["accepted"].clone()), (202, serde_json::json!([0, 1])));

    let all_bad = post(&addr, "/v1/heartbeats/batch", b"[1, 2]");
    assert_eq!(all_bad.status, 400, "{}", all_bad.body);
    let broken = post(&addr, "/v1/heartbeats/batch", b"[{");
    assert_eq!((broken.status, broken.code()), (400, "malformed_json".to_owned()));
    let many: Vec<String> = (0..51).map(|i| beat_json("batch-c", "i-1", i)).collect();
    let too_many = post(&addr, "/v1/heartbeats/batch", many.join("\n").as_bytes());
    assert_eq!((too_many.status, too_many.code()), (413, "batch_too_large".to_owned()), "{}", too_many.body);
    let over_body = post(&addr, "/v1/heartbeats/batch", &vec![b'\n'; 2 * 1024 * 1024]);
    assert_eq!(
        (over_body.status, over_body.code()),
        (413, "body_too_large".to_owned()),
        "{}",
        over_body.body
    );

    eventually(Duration::from_secs(60), "the valid beats stored", || {
        rows(&config, "batch-a") == 3 && rows(&config, "batch-b") == 2
    });
    assert_eq!(rows(&config, "batch-c"), 0);
}

#[test]
fn a_retried_beat_is_stored_once() {
    let config = prepare("ingest_retry");
    let (pipeline, addr) = start_all(&config, &[]);
    let beat = format!(
        r#"{{"app_id":"retry","instance_id":"i-1","seq":7,"sent_at":{},"interval_ms":5000,"status":"OK"}}"#,
        now_ms()
    );
    for _ in 0..3 {
        let answer = post(&addr, "/v1/heartbeats", beat.as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let answer = post(&addr, "/v1/heartbeats/batch", format!("{beat}\n{beat}").as_bytes());
    assert_eq!(answer.json()["duplicates"], serde_json::json!([0, 1]), "{}", answer.body);
    // Concurrent retries, as a client that timed out while the first was in flight.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, beat) = (addr.clone(), beat.replace("\"seq\":7", "\"seq\":8"));
            std::thread::spawn(move || post(&addr, "/v1/heartbeats", beat.as_bytes()).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 202);
    }
    // A new beat twice in one batch: the second waits for the first, then is a duplicate.
    let twice = beat.replace("\"seq\":7", "\"seq\":9");
    let answer = post(&addr, "/v1/heartbeats/batch", format!("{twice}\n{twice}").as_bytes());
    assert_eq!((answer.status, answer.json()["duplicates"].clone()), (202, serde_json::json!([1])));
    assert_eq!(records(&config, "retry"), 3, "produced once per seq");
    eventually(Duration::from_secs(60), "stored", || rows(&config, "retry") == 3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rows(&config, "retry"), 3, "and only once");
    assert!(pipeline.metric("pulsewatch_ingest_beats_total{outcome=\"duplicate\"}") >= 8.0);
}

#[test]
fn pings_carry_cron_jobs_and_their_silence_makes_them_late_then_down() {
    let config = prepare("ingest_ping");
    let (_pipeline, addr) = start_all(&config, &[]);
    let start = request(&addr, "POST", "/v1/ping/cron-nightly/host-1/start?interval=1", &[], b"");
    assert_eq!(start.status, 202, "{}", start.body);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let ping = request(&addr, "GET", "/v1/ping/cron-nightly/host-1?interval=1", &[], b"");
        assert_eq!(ping.status, 202, "{}", ping.body);
    }
    let unknown = request(&addr, "GET", "/v1/ping/cron-nightly/host-1/explode", &[], b"");
    assert_eq!((unknown.status, unknown.code()), (404, "unknown_action".to_owned()));
    let bad = request(&addr, "GET", "/v1/ping/cron-nightly/host-1?interval=0", &[], b"");
    assert_eq!((bad.status, bad.code()), (400, "interval_out_of_range".to_owned()));
    let bad = request(&addr, "GET", "/v1/ping/cron-nightly/host-1?interval=soon", &[], b"");
    assert_eq!((bad.status, bad.code()), (400, "bad_query".to_owned()), "{}", bad.body);
    let other = request(&addr, "POST", "/v1/ping/cron-weekly/host-1/stop", &[], b"");
    assert_eq!(other.status, 202);

    eventually(Duration::from_secs(30), "INSTANCE_LATE for the silent cron job", || {
        common::alerts(&config)
            .iter()
            .any(|a| a.app_id == "cron-nightly" && a.kind.as_str() == "INSTANCE_LATE")
    });
    // DOWN a grace of max(3 × interval, 30 s) after LATE.
    eventually(Duration::from_secs(60), "INSTANCE_DOWN for the silent cron job", || {
        common::alerts(&config)
            .iter()
            .any(|a| a.app_id == "cron-nightly" && a.kind.as_str() == "INSTANCE_DOWN")
    });
    let s = &config.postgres.schema;
    eventually(Duration::from_secs(60), "the pings stored, seq from the wall clock", || {
        query_i64(
            &config,
            &format!(
                "SELECT count(*) FROM \"{s}\".heartbeat_event WHERE app_id = 'cron-nightly' AND seq > 1700000000000"
            ),
        ) == 4
    });
    assert!(!common::alerts(&config).iter().any(|a| a.app_id == "cron-weekly"), "a stopped job is not late");
}

#[test]
fn tokens_decide_who_writes_which_app() {
    let config = prepare("ingest_tokens");
    let file = std::env::temp_dir().join(format!("{}ingest.toml", config.kafka.topic_prefix));
    std::fs::write(
        &file,
        "[[ingest.tokens]]\ntoken = \"tok-checkout\"\napps = [\"checkout-*\"]\n\
         [[ingest.tokens]]\ntoken = \"tok-all\"\napps = [\"*\"]\n",
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let env = [("PULSEWATCH_CONFIG", file.to_str().unwrap()), ("PULSEWATCH_INGEST_LISTEN", addr.as_str())];
    let pipeline = Pipeline::start(&config, "ingest", &env);
    let beat = beat_json("checkout-api", "i-1", 1);
    let with = |token: &str, body: &str| {
        let auth = format!("Bearer {token}");
        request(&addr, "POST", "/v1/heartbeats", &[("Authorization", &auth)], body.as_bytes())
    };
    let missing = post(&addr, "/v1/heartbeats", beat.as_bytes());
    assert_eq!((missing.status, missing.code()), (401, "missing_token".to_owned()));
    assert!(missing.head.contains("www-authenticate: bearer"), "{}", missing.head);
    let wrong = with("tok-checkou", &beat);
    assert_eq!((wrong.status, wrong.code()), (401, "unknown_token".to_owned()));
    assert_eq!(with("tok-checkout", &beat).status, 202);
    let billing = beat_json("billing", "i-1", 1);
    let forbidden = with("tok-checkout", &billing);
    assert_eq!((forbidden.status, forbidden.code()), (403, "app_not_allowed".to_owned()));
    assert_eq!(with("tok-all", &billing).status, 202);
    let batch = format!("{beat}\n{}", beat_json("billing", "i-2", 1));
    let answer = request(
        &addr,
        "POST",
        "/v1/heartbeats/batch",
        &[("Authorization", "Bearer tok-checkout")],
        batch.as_bytes(),
    );
    assert_eq!(answer.json()["rejected"][0]["code"], "app_not_allowed", "{}", answer.body);
    let ping =
        request(&addr, "GET", "/v1/ping/billing/i-1", &[("Authorization", "Bearer tok-checkout")], b"");
    assert_eq!(ping.status, 403);
    assert_eq!(records(&config, "checkout-api"), 1, "the retry in the batch was a duplicate");
    assert_eq!(records(&config, "billing"), 1);
    let log = std::fs::read_to_string(&pipeline.log).unwrap();
    assert!(!log.contains("tok-checkout"), "tokens stay out of the log");
    drop(pipeline);

    // Reachable from elsewhere without a token: refused at start, naming the key.
    let open = [("PULSEWATCH_INGEST_LISTEN", "0.0.0.0:0")];
    let mut exposed = Pipeline::spawn(&config, "ingest", &open);
    let status = exposed.wait_exit(Duration::from_secs(30)).expect("it exits");
    assert!(!status.success());
    let log = std::fs::read_to_string(&exposed.log).unwrap();
    assert!(log.contains("ingest.listen") && log.contains("loopback"), "{log}");
    std::fs::remove_file(&file).ok();
}

#[test]
fn a_full_queue_is_answered_429_and_an_unreachable_broker_503() {
    let config = prepare("ingest_backpressure");
    let closed = format!("127.0.0.1:{}", free_port());
    let addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("PULSEWATCH_KAFKA_BROKERS", closed.as_str()),
        ("PULSEWATCH_INGEST_LISTEN", addr.as_str()),
        ("PULSEWATCH_INGEST_MAX_IN_FLIGHT", "1"),
        ("PULSEWATCH_INGEST_MAX_BATCH", "1"),
        ("PULSEWATCH_INGEST_PRODUCE_TIMEOUT_MS", "2000"),
    ];
    let _pipeline = Pipeline::start(&config, "ingest", &env);
    let first = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let started = Instant::now();
            (post(&addr, "/v1/heartbeats", beat_json("bp", "i-1", 1).as_bytes()), started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let busy = post(&addr, "/v1/heartbeats", beat_json("bp", "i-1", 2).as_bytes());
    assert_eq!((busy.status, busy.code()), (429, "busy".to_owned()), "{}", busy.body);
    assert!(busy.head.contains("retry-after: 1"), "{}", busy.head);
    let (unavailable, took) = first.join().unwrap();
    assert_eq!(
        (unavailable.status, unavailable.code()),
        (503, "unavailable".to_owned()),
        "{}",
        unavailable.body
    );
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn the_load_generator_posts_through_the_ingest() {
    let config = prepare("ingest_loadgen");
    let (_pipeline, addr) = start_all(&config, &[]);
    let opts = pulsewatch::loadgen::LoadgenOptions {
        apps: 10,
        instances: 2,
        backfill: Some(Duration::from_secs(600)),
        progress: false,
        via: pulsewatch::loadgen::Via::Http { url: format!("http://{addr}"), token: None, batch: 50 },
        ..Default::default()
    };
    let m = pulsewatch::loadgen::run(&config.kafka, &opts).unwrap();
    assert!(m.beats_total >= 2_000, "{}", m.beats_total);
    let topic = config.kafka.name(pulsewatch::topology::names::HEARTBEATS);
    let on_topic =
        pulsewatch::readback::read_to_end(&config.kafka, &topic, Duration::from_secs(30)).unwrap().len();
    assert_eq!(on_topic as u64, m.beats_total, "every beat produced once");
    let s = &config.postgres.schema;
    eventually(Duration::from_secs(60), "every beat stored", || {
        query_i64(&config, &format!("SELECT count(*) FROM \"{s}\".heartbeat_event")) as u64 == m.beats_total
    });
}

#[test]
fn a_stop_answers_the_beats_in_flight_first() {
    let config = prepare("ingest_stop");
    let closed = format!("127.0.0.1:{}", free_port());
    let addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("PULSEWATCH_KAFKA_BROKERS", closed.as_str()),
        ("PULSEWATCH_INGEST_LISTEN", addr.as_str()),
        ("PULSEWATCH_INGEST_PRODUCE_TIMEOUT_MS", "2000"),
    ];
    let pipeline = Pipeline::start(&config, "ingest", &env);
    let in_flight = std::thread::spawn({
        let addr = addr.clone();
        move || post(&addr, "/v1/heartbeats", beat_json("stopping", "i-1", 1).as_bytes())
    });
    std::thread::sleep(Duration::from_millis(500));
    let took = pipeline.stop();
    let answer = in_flight.join().unwrap();
    assert_eq!((answer.status, answer.code()), (503, "unavailable".to_owned()), "{}", answer.body);
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "{took:?}");
}
