//! PostgreSQL stopped for 60 s in the middle of a run: the sink backs off and pauses, holding
//! one batch at most, the processor goes on, and afterwards PostgreSQL holds exactly what an
//! uninterrupted run stores (every beat once, every alert transition once, the same
//! applications). In a test binary of its own, because it stops the database every other
//! test uses.

mod common;

use std::time::Duration;

use common::{Run, assert_same_decisions, decisions, query_i64, stack};

/// Starts PostgreSQL again when dropped, even if the test fails half-way.
struct PostgresBack;

impl Drop for PostgresBack {
    fn drop(&mut self) {
        stack("start-postgres");
    }
}

#[test]
fn a_postgres_outage_of_60_s_changes_nothing_that_is_stored() {
    let now_ms = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    let (m, expected) = common::reference_run(now_ms);
    let (run, m2) = Run::new("outage_pg", now_ms);
    assert_eq!(m2.beats_total, m.beats_total);
    let p = run.start(Some(0));
    // A fifth of the beats stored: the sink commits its group's offsets after each write.
    common::wait_for_committed_share(&run.config, &run.config.kafka.name("sink"), &run.heartbeats, 0.2);
    let s = &run.config.postgres.schema;
    let stored = query_i64(&run.config, &format!("SELECT count(*) FROM \"{s}\".heartbeat_event"));
    assert!((stored as u64) < m.beats_total, "the database goes away mid-run: {stored} beats stored");
    {
        let _back = PostgresBack;
        stack("stop-postgres");
        // Memory stays bounded: the sink holds the one batch it failed to write, no more,
        // however much arrives meanwhile (its partitions are paused).
        let batch_rows = run.config.sink.batch_rows as f64;
        let mut held = Vec::new();
        let rss = || {
            let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap_or_default();
            status.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned).unwrap_or_default()
        };
        let rss_before = rss();
        let outage = std::time::Instant::now();
        while outage.elapsed() < Duration::from_secs(60) {
            held.push(p.metric("pulsewatch_sink_held_rows"));
            std::thread::sleep(Duration::from_secs(1));
        }
        eprintln!("resident memory: at the start of the outage {rss_before}, at its end {}", rss());
        assert!(p.metric("pulsewatch_sink_retries_total") >= 1.0, "the sink noticed the outage and retried");
        let most = held.iter().copied().fold(0.0, f64::max);
        assert!(most > 0.0, "the sink held its failed batch while it waited");
        assert!(most <= batch_rows, "the sink held {most} rows, more than one batch ({batch_rows})");
    }
    run.wait_until_done();
    let got = decisions(&run.config, &m);
    let stopped_in = p.stop();
    assert_same_decisions("PostgreSQL away for 60 s", &expected, &got);
    assert!(stopped_in < Duration::from_secs(30), "SIGTERM took {stopped_in:?}");
}
