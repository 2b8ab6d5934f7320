//! The suite's randomly drawn families: each run's seed draws their parameters afresh over
//! wide ranges, so that a detector is measured on series it was not tuned on — saw-teeth of
//! any period from one minute to an hour and any height up to half the limit, dropping at
//! once or drained gradually; leaks exhausting the limit in 2 to 48 hours, alone or under a
//! saw-tooth, starting at any point that leaves two hours to see them; a wandering level; a
//! cache warming to its cap after a deploy. Memory noise is drawn from 0.5 to 3 % of the
//! limit (a Gaussian's standard deviation, per beat).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::suite::Case;
use crate::alert::AlertKind;
use crate::loadgen::scenario::{FaultKind, FaultParams};
use crate::loadgen::shape::Shape;

/// The time left after a drawn leak starts, for a detector to see it.
pub const ROOM: Duration = Duration::from_secs(2 * 3600);

/// The drawn families, in the order they are reported.
pub const FAMILIES: [&str; 6] = [
    "random-leak",
    "random-leak-under-sawtooth",
    "random-sawtooth",
    "random-drain-sawtooth",
    "random-wander",
    "random-warm-up",
];

/// `count` cases of each drawn family for a run of `span`, drawn from `seed`.
pub fn drawn(seed: u64, span: Duration, count: usize) -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_1eaf_da7a_0013);
    let mut cases = Vec::new();
    for family in FAMILIES {
        for i in 1..=count {
            let mut case = draw(family, &mut rng, span);
            case.variant = format!("{} #{i}", case.variant);
            cases.push(case);
        }
    }
    cases
}

/// One case of `family`.
fn draw(family: &'static str, rng: &mut ChaCha8Rng, span: Duration) -> Case {
    let sigma = rng.random_range(0.005..=0.03);
    match family {
        "random-leak" => leak(family, rng, span, sigma, None),
        "random-leak-under-sawtooth" => {
            let saw = sawtooth(rng, 1.0..=25.0, 0.05..=0.4, false);
            leak(family, rng, span, sigma, Some(saw))
        }
        "random-sawtooth" => {
            quiet(family, FaultKind::GcSawtooth, sawtooth(rng, 1.0..=60.0, 0.05..=0.5, false), sigma)
        }
        "random-drain-sawtooth" => {
            quiet(family, FaultKind::GcSawtooth, sawtooth(rng, 5.0..=60.0, 0.05..=0.5, true), sigma)
        }
        "random-wander" => {
            let shape = Shape {
                period: Some(minutes(rng.random_range(5.0..=30.0))),
                amplitude: Some(rng.random_range(0.01..=0.04)),
                ..Shape::default()
            };
            quiet(family, FaultKind::Wander, shape, sigma)
        }
        _ => {
            let shape = Shape {
                period: Some(minutes(rng.random_range(3.0..=20.0))),
                amplitude: Some(rng.random_range(0.1..=0.3)),
                ..Shape::default()
            };
            let mut case = quiet(family, FaultKind::StepChange, shape, sigma);
            // A deploy at any point of the run's first half: the new process's cache warms.
            let at = minutes(rng.random_range(10.0..=span.as_secs_f64() / 120.0));
            case.faults[0].2 = at;
            case.variant = format!("{} deploy={:.0}m", case.variant, at.as_secs_f64() / 60.0);
            case
        }
    }
}

fn minutes(m: f64) -> Duration {
    Duration::from_secs_f64(m * 60.0)
}

/// A saw-tooth with a period (minutes) and height drawn from the ranges, at a random phase,
/// dropping at once or (`drained`) drained over 20 to 60 % of its period.
fn sawtooth(
    rng: &mut ChaCha8Rng,
    period: std::ops::RangeInclusive<f64>,
    amplitude: std::ops::RangeInclusive<f64>,
    drained: bool,
) -> Shape {
    Shape {
        period: Some(minutes(rng.random_range(period))),
        amplitude: Some(rng.random_range(amplitude)),
        drain: drained.then(|| rng.random_range(0.2..=0.6)),
        phase: Some(rng.random_range(0.0..1.0)),
        sigma: None,
    }
}

/// A memory leak exhausting in 2 to 48 hours (drawn evenly on a log scale), starting at any
/// point that leaves [`ROOM`], under a saw-tooth if one is given.
fn leak(family: &'static str, rng: &mut ChaCha8Rng, span: Duration, sigma: f64, saw: Option<Shape>) -> Case {
    let hours = (rng.random_range(2f64.ln()..=48f64.ln())).exp();
    let latest = span.saturating_sub(ROOM).as_secs_f64() / 60.0;
    let start = minutes(rng.random_range(0.0..=latest.max(0.0)));
    let mut params = FaultParams { exhaust: Some(minutes(hours * 60.0)), ..FaultParams::default() };
    params.shape.sigma = Some(sigma);
    let mut faults = vec![(FaultKind::Leak, params, start, None)];
    let mut variant = format!("exhaust={hours:.1}h from={:.0}m", start.as_secs_f64() / 60.0);
    if let Some(mut saw) = saw {
        variant = format!("{variant} {}", describe(&saw));
        saw.sigma = Some(sigma);
        faults.push((
            FaultKind::GcSawtooth,
            FaultParams { shape: saw, ..FaultParams::default() },
            Duration::ZERO,
            None,
        ));
    }
    Case {
        family,
        variant: format!("{variant} sigma={:.1}%", sigma * 100.0),
        expected: Some(AlertKind::MemoryLeakSuspected),
        also_true: Vec::new(),
        leak_start: start,
        faults,
    }
}

/// A case that must stay quiet: `kind` shaped by `shape`, for the whole run.
fn quiet(family: &'static str, kind: FaultKind, mut shape: Shape, sigma: f64) -> Case {
    let variant = format!("{} sigma={:.1}%", describe(&shape), sigma * 100.0);
    shape.sigma = Some(sigma);
    Case {
        family,
        variant,
        expected: None,
        also_true: Vec::new(),
        leak_start: Duration::ZERO,
        faults: vec![(kind, FaultParams { shape, ..FaultParams::default() }, Duration::ZERO, None)],
    }
}

fn describe(s: &Shape) -> String {
    let mut parts = Vec::new();
    if let Some(p) = s.period {
        parts.push(format!("period={:.0}m", p.as_secs_f64() / 60.0));
    }
    if let Some(a) = s.amplitude {
        parts.push(format!("amplitude={:.0}%", a * 100.0));
    }
    if let Some(d) = s.drain {
        parts.push(format!("drain={:.0}%", d * 100.0));
    }
    parts.join(" ")
}

/// The drawn exhaustion time of a leak case, if it is one.
pub fn exhaust(case: &Case) -> Option<Duration> {
    case.faults.iter().find(|f| f.0 == FaultKind::Leak).and_then(|f| f.1.exhaust)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_seed_draws_other_cases_within_the_ranges() {
        let span = Duration::from_secs(3 * 3600);
        let a = drawn(1, span, 4);
        assert_eq!(a.len(), FAMILIES.len() * 4);
        assert_eq!(a, drawn(1, span, 4), "a seed draws the same cases");
        assert_ne!(a, drawn(2, span, 4));
        for c in &a {
            assert!(c.leak_start + ROOM <= span, "{}", c.name());
            if let Some(h) = exhaust(c) {
                assert!((2.0..=48.0).contains(&(h.as_secs_f64() / 3600.0)), "{}", c.name());
            }
            for (_, p, _, _) in &c.faults {
                assert!(p.shape.sigma.is_none_or(|s| (0.005..=0.03).contains(&s)));
                assert!(
                    p.shape
                        .period
                        .is_none_or(|d| d >= Duration::from_secs(60) && d <= Duration::from_secs(3600))
                );
                assert!(p.shape.amplitude.is_none_or(|a| a <= 0.5));
            }
        }
        let mut names: Vec<String> = a.iter().map(Case::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), a.len());
    }
}
