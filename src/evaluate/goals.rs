//! The goals leak detection is held to, judged on one run: precision and recall, each at
//! least 0.95 and better than the baseline's; leaks flagged soon enough for their pace (one
//! exhausting within 6 hours within 30 minutes of its start, within 24 hours within 90); and
//! no alert on any look-alike that is not a leak.

use std::time::Duration;

use super::random;
use super::suite::Case;
use super::{CaseResult, FamilyResult, Goal, minutes};
use crate::alert::AlertKind;
use crate::loadgen::scenario::FaultKind;

/// The families whose cases must raise no leak alert at all.
pub const LOOK_ALIKES: [&str; 8] = [
    "gc-sawtooth",
    "workload-ramp",
    "step-change",
    "diurnal",
    "random-sawtooth",
    "random-drain-sawtooth",
    "random-wander",
    "random-warm-up",
];

/// The goals, judged on this run's cases and results; `young_minutes`, the age at which a
/// new series is first judged, tells the false alarms on a series' first rise apart.
pub fn goals(
    cases: &[Case],
    results: &[CaseResult],
    overall: &FamilyResult,
    young_minutes: u32,
) -> Vec<Goal> {
    let (p, b) = (&overall.pulsewatch, &overall.baseline);
    let mut goals = vec![
        Goal {
            goal: "precision >= 0.95 and recall >= 0.95 over the suite",
            met: p.precision >= 0.95 && p.recall >= 0.95,
            measured: format!("precision {:.2}, recall {:.2}", p.precision, p.recall),
        },
        Goal {
            goal: "precision and recall both strictly better than the baseline's",
            met: p.precision > b.precision && p.recall > b.recall,
            measured: format!(
                "precision {:.2} vs {:.2}, recall {:.2} vs {:.2}",
                p.precision, b.precision, p.recall, b.recall
            ),
        },
    ];
    for (goal, hours, within) in [
        ("a memory leak exhausting in 6 h or sooner is flagged within 30 minutes of its start", 6, 30),
        ("a memory leak exhausting in 24 h or sooner is flagged within 90 minutes of its start", 24, 90),
    ] {
        goals.extend(pace_goal(cases, results, goal, Duration::from_secs(hours * 3600), within));
    }
    let look_alikes: Vec<&CaseResult> = results.iter().filter(|r| LOOK_ALIKES.contains(&r.family)).collect();
    if !look_alikes.is_empty() {
        let alarms = look_alikes.iter().filter(|r| r.pulsewatch.false_alarm).count();
        // An alarm within a minute of the first judgement came on a new series' first rise,
        // which is all its history shows then: what a leak that began with its process shows.
        let first_judged_ms = i64::from(young_minutes + 1) * 60_000;
        let first_rise = look_alikes
            .iter()
            .filter(|r| r.pulsewatch.false_alarm_at_ms.is_some_and(|ms| ms <= first_judged_ms))
            .count();
        goals.push(Goal {
            goal: "no alert on the saw-tooth, drain, wander, warm-up, ramp, step and diurnal scenarios",
            met: alarms == 0,
            measured: format!(
                "{alarms} of {} cases raised a leak alert, {first_rise} of them within a minute of the age ({young_minutes} min) at which a new series is first judged",
                look_alikes.len()
            ),
        });
    }
    goals
}

/// Whether every memory leak (alone: not under a saw-tooth, nor reset by restarts)
/// exhausting within `horizon` was flagged within `within` minutes.
fn pace_goal(
    cases: &[Case],
    results: &[CaseResult],
    goal: &'static str,
    horizon: Duration,
    within: i64,
) -> Option<Goal> {
    let paced: Vec<&CaseResult> = cases
        .iter()
        .zip(results)
        .filter(|(c, _)| {
            c.expected == Some(AlertKind::MemoryLeakSuspected)
                && c.faults.iter().all(|f| f.0 == FaultKind::Leak)
                && random::exhaust(c).is_some_and(|e| e <= horizon)
        })
        .map(|(_, r)| r)
        .collect();
    if paced.is_empty() {
        return None;
    }
    let slowest = paced.iter().map(|r| r.pulsewatch.detect_after_ms).max().flatten();
    let found = paced.iter().filter(|r| r.pulsewatch.detected).count();
    Some(Goal {
        goal,
        met: found == paced.len() && slowest.is_some_and(|ms| ms <= within * 60_000),
        measured: match (found == paced.len(), slowest) {
            (true, Some(ms)) => format!("{} cases, slowest after {}", paced.len(), minutes(ms)),
            _ => format!("{found} of {} cases found", paced.len()),
        },
    })
}
