//! PostgreSQL stopped for 60 s in the middle of a run: the sink backs off and pauses, the
//! processor goes on, and afterwards PostgreSQL holds exactly what an uninterrupted run
//! stores (every beat once, every alert transition once, the same applications). In a test
//! binary of its own, because it stops the database every other test uses.

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
    let (m, expected, took) = common::reference_run(now_ms);
    let (run, m2) = Run::new("outage_pg", now_ms);
    assert_eq!(m2.beats_total, m.beats_total);
    let p = run.start(Some(0));
    std::thread::sleep(took.mul_f64(0.25));
    let s = &run.config.postgres.schema;
    let stored = query_i64(&run.config, &format!("SELECT count(*) FROM \"{s}\".heartbeat_event"));
    assert!((stored as u64) < m.beats_total, "the database goes away mid-run: {stored} beats stored");
    {
        let _back = PostgresBack;
        stack("stop-postgres");
        std::thread::sleep(Duration::from_secs(60));
        assert!(p.metric("pulsewatch_sink_retries_total") >= 1.0, "the sink noticed the outage and retried");
    }
    run.wait_until_done();
    let got = decisions(&run.config, &m);
    let stopped_in = p.stop();
    assert_same_decisions("PostgreSQL away for 60 s", &expected, &got);
    assert!(stopped_in < Duration::from_secs(30), "SIGTERM took {stopped_in:?}");
}
