//! A restart with a large fleet: the state of 100,000 applications comes back from the
//! compacted `app-state` topic, and `/readyz` stays false while it is rebuilt.

mod common;

use std::time::{Duration, Instant};

use common::{Pipeline, eventually, http_get};
use pulsewatch::loadgen::{self, LoadgenOptions};
use pulsewatch::topology::names;

const APPS: usize = 100_000;

#[test]
fn the_state_of_100000_apps_comes_back_after_a_restart_and_readyz_waits_for_it() {
    let config = common::prepare("restore_100k");
    let opts = LoadgenOptions {
        apps: APPS,
        instances: 1,
        backfill: Some(Duration::from_secs(20)),
        seed: 5,
        progress: false,
        ..LoadgenOptions::default()
    };
    let m = loadgen::run(&config.kafka, &opts).unwrap();
    assert_eq!(m.per_app.len(), APPS);
    let (group, heartbeats) = (config.kafka.name("processor"), config.kafka.name(names::HEARTBEATS));
    let first = Pipeline::start(&config, "processor", &[]);
    eventually(Duration::from_secs(600), "the first processor commits every heartbeat", || {
        common::committed_to_end(&config, &group, &heartbeats)
    });
    assert_eq!(first.metric("pulsewatch_tracked_apps") as usize, APPS);
    first.stop();

    // The successor reads nothing new: whatever it tracks came from app-state.
    let second = Pipeline::spawn(&config, "processor", &[]);
    let started = Instant::now();
    let mut not_ready_while_restoring = 0;
    loop {
        assert!(started.elapsed() < Duration::from_secs(600), "the state came back within 10 minutes");
        let ready = http_get(&second.http, "/readyz").map(|(code, _)| code);
        let restoring = second.metric("pulsewatch_restoring_partitions");
        let ready_after = http_get(&second.http, "/readyz").map(|(code, _)| code);
        // Two reads of /readyz around the gauge: both false while it says restoring.
        if restoring > 0.0 && ready == Some(503) && ready_after == Some(503) {
            not_ready_while_restoring += 1;
        }
        if ready_after == Some(200) && second.metric("pulsewatch_restored_apps_total") as usize >= APPS {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(not_ready_while_restoring > 0, "/readyz was seen false during the restore");
    assert_eq!(second.metric("pulsewatch_restored_apps_total") as usize, APPS);
    assert_eq!(second.metric("pulsewatch_tracked_apps") as usize, APPS);
    assert_eq!(second.metric("pulsewatch_tracked_instances") as usize, APPS);
    let log = std::fs::read_to_string(&second.log).unwrap();
    let line = log.lines().find(|l| l.contains("partition state restored")).expect("the restore is logged");
    eprintln!("restore of {APPS} apps (debug build): {line}");
    second.stop();
}
