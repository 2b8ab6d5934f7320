//! PostgreSQL stopped in the middle of a run: the sink backs off, pauses, and afterwards
//! every beat and every alert transition is stored exactly once. In a test binary of its own,
//! because it stops the database every other test uses.

mod common;

use std::time::Duration;

use common::{Pipeline, eventually, query_i64, stack};
use pulsewatch::loadgen::{self, LoadgenOptions};

/// Starts PostgreSQL again when dropped, even if the test fails half-way.
struct PostgresBack;

impl Drop for PostgresBack {
    fn drop(&mut self) {
        stack("start-postgres");
    }
}

#[test]
fn a_postgres_outage_of_60_s_loses_and_duplicates_nothing() {
    let config = common::prepare("outage_pg");
    let pipeline = Pipeline::start(&config, "all", &[]);
    let kafka = config.kafka.clone();
    let load = std::thread::spawn(move || {
        let opts = LoadgenOptions {
            apps: 30,
            instances: 2,
            backfill: Some(Duration::from_secs(15 * 60)),
            duration: Some(Duration::from_secs(80)),
            faults: vec!["memory-high:3@5m+5m".parse().unwrap(), "crash:4/1@8m".parse().unwrap()],
            progress: false,
            ..LoadgenOptions::default()
        };
        loadgen::run(&kafka, &opts).unwrap()
    });
    std::thread::sleep(Duration::from_secs(8));
    {
        let _back = PostgresBack;
        stack("stop-postgres");
        std::thread::sleep(Duration::from_secs(60));
        assert!(
            pipeline.metric("pulsewatch_sink_retries_total") >= 1.0,
            "the sink noticed the outage and retried"
        );
    }
    let m = load.join().unwrap();
    let s = &config.postgres.schema;
    eventually(Duration::from_secs(120), "the sink catches up after the outage", || {
        query_i64(&config, &format!("SELECT count(*) FROM \"{s}\".heartbeat_event")) as u64 >= m.beats_total
    });
    std::thread::sleep(Duration::from_secs(2));
    let q = |sql: String| query_i64(&config, &sql);
    assert_eq!(
        q(format!("SELECT count(*) FROM \"{s}\".heartbeat_event")) as u64,
        m.beats_total,
        "nothing duplicated"
    );
    assert_eq!(
        q(format!(
            "SELECT count(*) FROM (SELECT DISTINCT app_id, instance_id, seq, sent_at FROM \"{s}\".heartbeat_event) d"
        )) as u64,
        m.beats_total
    );
    // Every alert transition published on Kafka about the load's event time is in alert_event
    // once (later ones, the fleet going silent after the load, may still be arriving).
    let end = chrono::DateTime::from_timestamp_millis(m.end_ms).unwrap().to_rfc3339();
    let published: Vec<_> = common::alerts(&config).into_iter().filter(|a| a.event_at < m.end_ms).collect();
    let stored = |distinct: bool| {
        let what = if distinct { "DISTINCT alert_id, state, severity, event_at" } else { "*" };
        q(format!("SELECT count(*) FROM (SELECT {what} FROM \"{s}\".alert_event WHERE event_at < '{end}') d"))
    };
    eventually(Duration::from_secs(60), "alert_event holds every published transition", || {
        stored(false) as usize >= published.len()
    });
    assert_eq!(stored(false) as usize, published.len());
    assert_eq!(stored(true), stored(false), "no alert transition stored twice");
    assert!(!published.is_empty(), "the memory and crash faults raised alerts");
    let took = pipeline.stop();
    assert!(took < Duration::from_secs(30), "SIGTERM took {took:?}");
}
