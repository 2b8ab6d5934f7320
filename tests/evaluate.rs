//! `pulsewatch evaluate` against the real stack: a handful of labelled scenarios go through
//! Kafka and the processor stage; each leak raises its alert kind, each look-alike none.

mod common;

use std::time::Duration;

use pulsewatch::alert::AlertKind;
use pulsewatch::evaluate::{self, EvaluateOptions};

#[test]
fn leaks_raise_their_alert_and_look_alikes_none_beside_the_baseline() {
    let config = common::isolated_config("evaluate");
    let opts = EvaluateOptions {
        span: Duration::from_secs(90 * 60),
        families: ["memory-leak", "connection-leak", "gc-sawtooth", "step-change", "diurnal"]
            .map(String::from)
            .to_vec(),
        repeat: 1,
        progress: false,
        ..EvaluateOptions::default()
    };
    let report = evaluate::run(&config, &opts).unwrap();
    assert_eq!(report.cases.len(), 6 + 4 + 2 + 2 + 2, "{:#?}", report.cases);
    assert!(report.topic_prefix.starts_with(&format!("{}eval-", config.kafka.topic_prefix)));
    for c in &report.cases {
        let v = &c.pulsewatch;
        match c.expected {
            Some(kind) => {
                assert!(v.detected && !v.false_alarm, "{}: {v:?}", c.name);
                assert!(v.raised.contains(&kind));
                // The pace the goals set is a memory leak's (a 6 h one within 30 minutes); a
                // connection pool's integer counts in heavy noise may take longer.
                let after = v.detect_after_ms.unwrap();
                if kind == AlertKind::MemoryLeakSuspected {
                    assert!(after <= 30 * 60_000, "{}: found after {} min", c.name, after / 60_000);
                }
            }
            None => assert!(v.raised.is_empty(), "{}: {v:?}", c.name),
        }
    }
    // The baseline judged the same beats: predict_linear mistakes the saw-tooth for a leak.
    let saw = report.cases.iter().filter(|c| c.family == "gc-sawtooth");
    assert!(
        saw.clone().any(|c| c.baseline.raised.contains(&AlertKind::MemoryLeakSuspected)),
        "{:#?}",
        report.cases
    );
    let overall = &report.overall.pulsewatch;
    assert_eq!((overall.precision, overall.recall), (1.0, 1.0));
    assert!(report.goals.iter().all(|g| g.met), "{:#?}", report.goals);
    let text = report.render();
    assert!(text.contains("memory-leak exhaust=6h noise=1") && text.contains("Goals:"), "{text}");

    // The same beats fed to the engine in this process: the verdicts of the run through the
    // stack, case by case, for both detectors.
    let offline = evaluate::run(&config, &EvaluateOptions { offline: true, ..opts }).unwrap();
    assert!(offline.offline && offline.render().contains("(offline)"));
    assert_eq!(offline.beats, report.beats);
    for (ours, theirs) in report.cases.iter().zip(&offline.cases) {
        assert_eq!(ours.name, theirs.name);
        assert_eq!(ours.pulsewatch, theirs.pulsewatch, "{}", ours.name);
        assert_eq!(ours.baseline, theirs.baseline, "{}", ours.name);
    }
}
