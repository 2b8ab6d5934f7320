//! A broker restart in the middle of a run: the processor's transactions fail while the
//! broker is away; it aborts, backs off, goes back to its committed offsets and state, and
//! ends with exactly the alert transitions and rollups of an uninterrupted run. (Its own test binary:
//! stopping the broker would disturb any test running beside it.)

mod common;

use std::time::Duration;

use common::{Run, assert_same_decisions, decisions, stack};

#[test]
fn a_broker_restart_mid_run_changes_no_alert_transition() {
    let now_ms = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    let (m, expected, took) = common::reference_run(now_ms);
    let (run, m2) = Run::new("broker_restart", now_ms);
    assert_eq!(m2.beats_total, m.beats_total);
    let p = run.start(Some(0));
    std::thread::sleep(took.mul_f64(0.25));
    // Held still while the broker stops (a clean stop takes a while), so that it meets the
    // broker's absence in the middle of the run.
    p.signal("STOP");
    let before = run.progress();
    assert!(before.0 > 0 && before.0 < before.1, "the broker goes away mid-run: {before:?}");
    stack("stop-kafka");
    p.signal("CONT");
    std::thread::sleep(Duration::from_secs(5));
    stack("start-kafka");
    run.wait_until_done();
    p.stop();
    assert_same_decisions("broker restarted", &expected, &decisions(&run.config, m.end_ms));
}
