//! Leak detection through Kafka and the processor stage, on three hours of event time
//! backfilled in seconds: a saw-tooth with a 45-minute period raises nothing; a leak under a
//! 12-minute saw-tooth, whose troughs rise, and a leak exhausting the limit in 24 hours are
//! both flagged, the 24-hour one within 90 minutes, its first alert projecting the
//! exhaustion within 25 % of the truth (the time left when it fired). Over other seeds,
//! offline, see `src/evaluate/tests_projection.rs` and docs/leak-detection.md.

mod common;

use std::time::Duration;

use pulsewatch::alert::AlertKind;
use pulsewatch::evaluate::suite::Case;
use pulsewatch::evaluate::{self, EvaluateOptions};
use pulsewatch::loadgen::scenario::{FaultKind, FaultParams};
use pulsewatch::loadgen::shape::Shape;

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn case(name: &'static str, expected: bool, faults: Vec<(FaultKind, FaultParams, Duration)>) -> Case {
    Case {
        family: name,
        variant: String::new(),
        expected: expected.then_some(AlertKind::MemoryLeakSuspected),
        also_true: Vec::new(),
        leak_start: faults.iter().find(|f| f.0 == FaultKind::Leak).map_or(Duration::ZERO, |f| f.2),
        faults: faults.into_iter().map(|(k, p, start)| (k, p, start, None)).collect(),
    }
}

fn saw(period_min: u64, amplitude: f64, phase: f64) -> FaultParams {
    let shape = Shape {
        period: Some(minutes(period_min)),
        amplitude: Some(amplitude),
        phase: Some(phase),
        sigma: Some(0.01),
        ..Shape::default()
    };
    FaultParams { shape, ..FaultParams::default() }
}

fn leak(hours: u64) -> FaultParams {
    let mut p = FaultParams { exhaust: Some(minutes(hours * 60)), ..FaultParams::default() };
    p.shape.sigma = Some(0.015);
    p
}

#[test]
fn long_saw_teeth_stay_quiet_and_leaks_under_them_or_slow_ones_are_flagged() {
    let config = common::isolated_config("leak-shapes");
    let cases = vec![
        // Observed from the middle of a tooth: its first ramp is seen for 22 minutes, less
        // than a new series waits (a first tooth seen whole for longer than that cannot be
        // told from a leak's onset).
        case("long-saw-tooth", false, vec![(FaultKind::GcSawtooth, saw(45, 0.35, 0.5), Duration::ZERO)]),
        case(
            "leak-under-saw-tooth",
            true,
            vec![
                (FaultKind::GcSawtooth, saw(12, 0.25, 0.3), Duration::ZERO),
                (FaultKind::Leak, leak(6), Duration::ZERO),
            ],
        ),
        case("leak-24h", true, vec![(FaultKind::Leak, leak(24), minutes(60))]),
    ];
    let opts = EvaluateOptions {
        span: Duration::from_secs(3 * 3600),
        instances: 1,
        cases: Some(cases),
        progress: false,
        ..EvaluateOptions::default()
    };
    let report = evaluate::run(&config, &opts).unwrap();
    let by_name = |n: &str| report.cases.iter().find(|c| c.family == n).unwrap();
    let quiet = by_name("long-saw-tooth");
    assert!(quiet.pulsewatch.raised.is_empty(), "{quiet:?}");
    let under = by_name("leak-under-saw-tooth");
    assert!(under.pulsewatch.detected && !under.pulsewatch.false_alarm, "{under:?}");
    let slow = by_name("leak-24h");
    assert!(slow.pulsewatch.detected && !slow.pulsewatch.false_alarm, "{slow:?}");
    let after = slow.pulsewatch.detect_after_ms.unwrap();
    assert!(after <= 90 * 60_000, "the 24 h leak flagged after {} min", after / 60_000);
    let truth = (24 * 3_600_000 - after) as f64 / 3_600_000.0;
    let projected =
        slow.pulsewatch.first_exhaustion_hours.expect("the 24 h leak's alert projects no exhaustion");
    assert!(
        (projected - truth).abs() <= 0.25 * truth,
        "the 24 h leak flagged after {} min projects exhaustion in {projected:.1} h, truly {truth:.1} h",
        after / 60_000
    );
}
