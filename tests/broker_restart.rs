//! A broker restart in the middle of a run: the processor's commit waits out the broker's
//! absence, or its transaction is aborted, or its partitions are taken and given back, and
//! it recovers from its committed state; the sink reconnects; and the run ends with
//! exactly what an uninterrupted run publishes and stores. (Its own test binary: stopping the
//! broker would disturb any test running beside it.)

mod common;

use std::time::Duration;

use common::{Run, assert_same_decisions, decisions, stack};

#[test]
fn a_broker_restart_mid_run_changes_nothing_published_or_stored() {
    let now_ms = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    let (m, expected) = common::reference_run(now_ms);
    let (mut run, m2) = Run::new("broker_restart", now_ms);
    // The broker keeps the transaction it finds open on its return: one open longer than
    // `transaction.timeout.ms` it aborts itself, which fences the processor (it exits, and
    // is restarted: another path, not this test's).
    run.file = common::session_config(&run.config, 120_000);
    assert_eq!(m2.beats_total, m.beats_total);
    let p = run.start(Some(0));
    run.wait_for_progress(0.2);
    // Held still while the broker stops (a clean stop takes a while), so that it meets the
    // broker's absence in the middle of the run.
    p.signal("STOP");
    let before = run.progress();
    assert!(before.0 > 0 && before.0 < before.1, "the broker goes away mid-run: {before:?}");
    stack("stop-kafka");
    p.signal("CONT");
    // Away longer than one commit attempt (10 s) and than the group session (6 s). Which
    // way the processor gets through depends on where the absence finds it: a commit in
    // flight is resumed; a transaction the group no longer accepts is aborted and the state
    // restored; or the member is dropped from the group and its partitions come back to it,
    // restored. Whichever it was, what is published and stored must not change.
    std::thread::sleep(Duration::from_secs(15));
    stack("start-kafka");
    run.wait_until_done();
    let resumed = p.metric("pulsewatch_transactions_total{outcome=\"commit_resumed\"}");
    let aborted = p.metric("pulsewatch_transactions_total{outcome=\"aborted\"}");
    let restored = p.metric("pulsewatch_restored_apps_total");
    eprintln!(
        "commits resumed: {resumed}, transactions aborted: {aborted}, applications restored: {restored}"
    );
    let got = decisions(&run.config, &m);
    p.stop();
    assert_same_decisions("broker restarted", &expected, &got);
}
