//! The ingest stage while the broker is stopped and started again: a beat it cannot hand to
//! Kafka within `ingest.produce_timeout_ms` is answered 503, the same beat retried once the
//! broker is back is accepted, and every beat is stored once. (Its own test binary: stopping
//! the broker would disturb any test running beside it.)

mod common;

use std::time::{Duration, Instant};

use common::http::post;
use common::{Pipeline, eventually, free_port, prepare, query_i64, stack};

fn beat(seq: i64) -> String {
    format!(
        r#"{{"app_id":"restart-ingest","instance_id":"i-0","seq":{seq},"interval_ms":5000,"status":"OK"}}"#
    )
}

#[test]
fn a_broker_away_is_answered_503_and_a_retry_after_it_returns_is_stored_once() {
    let config = prepare("ingest_broker_restart");
    let addr = format!("127.0.0.1:{}", free_port());
    let env = [("PULSEWATCH_INGEST_LISTEN", addr.as_str()), ("PULSEWATCH_INGEST_PRODUCE_TIMEOUT_MS", "3000")];
    let p = Pipeline::start(&config, "all", &env);
    assert_eq!(post(&addr, "/v1/heartbeats", beat(1).as_bytes()).status, 202);

    stack("stop-kafka");
    let started = Instant::now();
    let away = post(&addr, "/v1/heartbeats", beat(2).as_bytes());
    let took = started.elapsed();
    stack("start-kafka");
    assert_eq!((away.status, away.code()), (503, "unavailable".to_owned()), "{}", away.body);
    assert!(took < Duration::from_secs(20), "answered within the produce timeout, not held: {took:?}");

    // The client retries the refused beat until the broker takes it, as a client should.
    eventually(Duration::from_secs(120), "the retried beat accepted", || {
        post(&addr, "/v1/heartbeats", beat(2).as_bytes()).status == 202
    });
    assert_eq!(post(&addr, "/v1/heartbeats", beat(3).as_bytes()).status, 202);
    let s = &config.postgres.schema;
    let count = |seq: i64| {
        query_i64(
            &config,
            &format!(
                "SELECT count(*) FROM \"{s}\".heartbeat_event WHERE app_id = 'restart-ingest' AND seq = {seq}"
            ),
        )
    };
    eventually(Duration::from_secs(120), "every beat stored", || (1..=3).all(|seq| count(seq) >= 1));
    assert_eq!((count(1), count(2), count(3)), (1, 1, 1), "each beat stored once");
    p.stop();
}
