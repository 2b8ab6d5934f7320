//! Scoring a detector against the labelled suite: per case, whether the right leak was found
//! and how soon, or whether a quiet case raised anything; per family and overall, precision,
//! recall and the median time to detect.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::alert::AlertKind;

use super::suite::Case;

/// A detector's leak alert starting to fire.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub app_id: String,
    pub kind: AlertKind,
    /// Event time it fired at, ms.
    pub at_ms: i64,
    /// The time to exhaustion it projected, hours (None without a limit, or for a detector
    /// that projects none).
    pub exhaustion_hours: Option<f64>,
}

/// What one detector did on one case.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CaseVerdict {
    /// The expected kind fired at or after the leak's start.
    pub detected: bool,
    /// From the leak's start to the first expected alert, ms.
    pub detect_after_ms: Option<i64>,
    /// The time to exhaustion the first expected alert projected, hours (of alerts at the
    /// same event time, the nearest: the order they are read in must not matter).
    pub first_exhaustion_hours: Option<f64>,
    /// A leak alert where none belongs: on a quiet case, before the leak started, or of a
    /// resource the case does not grow.
    pub false_alarm: bool,
    /// From the run's start to the first false alarm, ms.
    pub false_alarm_at_ms: Option<i64>,
    /// Every leak kind it raised on the case.
    pub raised: BTreeSet<AlertKind>,
}

/// Judges `detections` (of every application) on one case played by `app_id`, whose run
/// started at `run_start_ms`.
pub fn judge_case(case: &Case, app_id: &str, run_start_ms: i64, detections: &[Detection]) -> CaseVerdict {
    let leak_start = run_start_ms + case.leak_start.as_millis() as i64;
    let mut v = CaseVerdict::default();
    for d in detections.iter().filter(|d| d.app_id == app_id) {
        v.raised.insert(d.kind);
        let false_alarm = match case.expected {
            None => true,
            Some(_) if d.at_ms < leak_start => true,
            Some(kind) if d.kind == kind => {
                v.detected = true;
                let after = d.at_ms - leak_start;
                let first = v.detect_after_ms.is_none_or(|known| after < known);
                let tied = v.detect_after_ms == Some(after);
                if first || tied && nearer(d.exhaustion_hours, v.first_exhaustion_hours) {
                    v.first_exhaustion_hours = d.exhaustion_hours;
                }
                v.detect_after_ms = earliest(v.detect_after_ms, after);
                false
            }
            // Another resource the leak truly grows (sessions hold memory): no false alarm.
            Some(_) => !case.also_true.contains(&d.kind),
        };
        if false_alarm {
            v.false_alarm = true;
            v.false_alarm_at_ms = earliest(v.false_alarm_at_ms, d.at_ms - run_start_ms);
        }
    }
    v
}

/// Whether projection `a` is nearer than `b` (a projection is nearer than none).
fn nearer(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (a, b) => a.is_some() && b.is_none(),
    }
}

fn earliest(known: Option<i64>, ms: i64) -> Option<i64> {
    Some(known.map_or(ms, |k| k.min(ms)))
}

/// Counts over a set of cases.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    pub cases: usize,
    pub leaks: usize,
    pub detected: usize,
    pub false_alarms: usize,
    /// detected / (detected + false alarms); 1 when nothing was raised.
    pub precision: f64,
    /// detected / leaks; 1 when there are no leaks.
    pub recall: f64,
    /// Median time to detect over the detected leaks, ms.
    pub median_detect_ms: Option<i64>,
}

impl Scores {
    pub fn of<'a>(verdicts: impl IntoIterator<Item = (&'a Case, &'a CaseVerdict)>) -> Scores {
        let mut s = Scores::default();
        let mut times = Vec::new();
        for (case, v) in verdicts {
            s.cases += 1;
            s.leaks += usize::from(case.is_leak());
            s.detected += usize::from(v.detected);
            s.false_alarms += usize::from(v.false_alarm);
            times.extend(v.detect_after_ms);
        }
        let flagged = s.detected + s.false_alarms;
        s.precision = if flagged == 0 { 1.0 } else { s.detected as f64 / flagged as f64 };
        s.recall = if s.leaks == 0 { 1.0 } else { s.detected as f64 / s.leaks as f64 };
        times.sort_unstable();
        s.median_detect_ms = match times.len() {
            0 => None,
            n if n % 2 == 1 => Some(times[n / 2]),
            n => Some((times[n / 2 - 1] + times[n / 2]) / 2),
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::loadgen::scenario::{FaultKind, FaultParams};

    fn case(expected: Option<AlertKind>, start_min: u64) -> Case {
        Case {
            family: "f",
            variant: String::new(),
            expected,
            also_true: vec![AlertKind::SessionLeakSuspected],
            leak_start: Duration::from_secs(start_min * 60),
            faults: vec![(FaultKind::Leak, FaultParams::default(), Duration::ZERO, None)],
        }
    }

    fn d(app: &str, kind: AlertKind, at_min: i64) -> Detection {
        Detection { app_id: app.into(), kind, at_ms: at_min * 60_000, exhaustion_hours: Some(at_min as f64) }
    }

    #[test]
    fn a_case_is_detected_by_its_kind_after_its_start_and_anything_else_is_a_false_alarm() {
        let leak = case(Some(AlertKind::MemoryLeakSuspected), 10);
        let ds = [
            d("a", AlertKind::SessionLeakSuspected, 20),
            d("a", AlertKind::MemoryLeakSuspected, 35),
            d("a", AlertKind::MemoryLeakSuspected, 30),
            d("b", AlertKind::MemoryLeakSuspected, 5),
            d("c", AlertKind::MemoryLeakSuspected, 30),
            d("c", AlertKind::ThreadLeakSuspected, 40),
        ];
        let v = judge_case(&leak, "a", 0, &ds);
        assert!(v.detected && !v.false_alarm);
        assert_eq!(v.detect_after_ms, Some(20 * 60_000));
        // The projection of the first expected alert (the one at minute 30), not the later one's.
        assert_eq!(v.first_exhaustion_hours, Some(30.0));
        assert_eq!(v.raised.len(), 2);
        // Before the leak started: a false alarm.
        assert!(judge_case(&leak, "b", 0, &ds).false_alarm);
        assert!(!judge_case(&leak, "b", 0, &ds).detected);
        // A resource the leak does not grow.
        let c = judge_case(&leak, "c", 0, &ds);
        assert!(c.detected && c.false_alarm);
        // Of two alerts at the same time, the nearer projection, whatever the order.
        let tied = [
            Detection { exhaustion_hours: Some(9.0), ..d("a", AlertKind::MemoryLeakSuspected, 30) },
            Detection { exhaustion_hours: Some(7.0), ..d("a", AlertKind::MemoryLeakSuspected, 30) },
        ];
        let reversed = [tied[1].clone(), tied[0].clone()];
        assert_eq!(judge_case(&leak, "a", 0, &tied).first_exhaustion_hours, Some(7.0));
        assert_eq!(judge_case(&leak, "a", 0, &reversed).first_exhaustion_hours, Some(7.0));
        // Anything on a quiet case.
        let quiet = case(None, 0);
        assert!(judge_case(&quiet, "a", 0, &ds).false_alarm);
        assert_eq!(judge_case(&quiet, "z", 0, &ds), CaseVerdict::default());
    }

    #[test]
    fn precision_recall_and_median_count_cases() {
        let (leak, quiet) = (case(Some(AlertKind::MemoryLeakSuspected), 0), case(None, 0));
        let hit = |m: i64| CaseVerdict { detected: true, detect_after_ms: Some(m), ..CaseVerdict::default() };
        let miss = CaseVerdict::default();
        let alarm = CaseVerdict { false_alarm: true, ..CaseVerdict::default() };
        let s = Scores::of([
            (&leak, &hit(10)),
            (&leak, &hit(30)),
            (&leak, &miss),
            (&quiet, &alarm),
            (&quiet, &miss),
        ]);
        assert_eq!((s.cases, s.leaks, s.detected, s.false_alarms), (5, 3, 2, 1));
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.median_detect_ms, Some(20));
        let none = Scores::of([(&quiet, &miss)]);
        assert_eq!((none.precision, none.recall, none.median_detect_ms), (1.0, 1.0, None));
    }
}
