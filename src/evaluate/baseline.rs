//! The baseline leak detector, as Prometheus users configure it: every minute,
//! `predict_linear(resource[1h], 4 * 3600) > limit` — an ordinary least-squares line through
//! the raw points of the last hour (whatever part of it the series has, as Prometheus does),
//! projected four hours ahead, firing once the projection has stayed past the resource's limit
//! for five minutes (`for: 5m`). It judges memory used against
//! `memory_limit_bytes` and db pool connections in use against `db_pool_size`: the resources
//! whose limit the heartbeat carries.

use std::collections::{BTreeMap, VecDeque};

use crate::alert::AlertKind;
use crate::heartbeat::Heartbeat;

use super::score::Detection;

/// The range the line is fitted over, ms.
pub const RANGE_MS: i64 = 3_600_000;
/// How far ahead it projects, ms.
pub const AHEAD_MS: i64 = 4 * 3_600_000;
/// How often the rule is evaluated, ms.
pub const EVERY_MS: i64 = 60_000;
/// How long the condition must hold before the alert fires (the rule's `for`), ms.
pub const FOR_MS: i64 = 5 * 60_000;

/// One raw point: (event time ms, value, limit).
type Sample = (i64, f64, f64);

/// The raw series of every instance and judged resource, fed beat by beat.
#[derive(Debug, Default)]
pub struct PredictLinear {
    series: BTreeMap<(String, String, AlertKind), Vec<Sample>>,
}

impl PredictLinear {
    pub fn observe(&mut self, b: &Heartbeat) {
        let figures = [
            (
                AlertKind::MemoryLeakSuspected,
                b.memory_used_bytes.map(|v| v as f64),
                b.memory_limit_bytes.map(|v| v as f64),
            ),
            (
                AlertKind::ConnectionLeakSuspected,
                b.db_pool_in_use.map(f64::from),
                b.db_pool_size.map(f64::from),
            ),
        ];
        for (kind, value, limit) in figures {
            if let (Some(v), Some(l)) = (value, limit.filter(|l| *l > 0.0)) {
                self.series
                    .entry((b.app_id.clone(), b.instance_id.clone(), kind))
                    .or_default()
                    .push((b.sent_at, v, l));
            }
        }
    }

    /// Every moment the rule started firing, per application and kind.
    pub fn detections(&mut self) -> Vec<Detection> {
        let mut out = Vec::new();
        for ((app_id, _, kind), samples) in &mut self.series {
            samples.sort_by_key(|s| s.0);
            for at in firing_starts(samples) {
                out.push(Detection {
                    app_id: app_id.clone(),
                    kind: *kind,
                    at_ms: at,
                    exhaustion_hours: None,
                });
            }
        }
        out.sort_by(|a, b| (a.at_ms, &a.app_id).cmp(&(b.at_ms, &b.app_id)));
        out
    }
}

/// The evaluation times at which the rule went from not firing to firing, over one series
/// sorted by time.
fn firing_starts(samples: &[Sample]) -> Vec<i64> {
    let Some(first) = samples.first() else { return Vec::new() };
    let last = samples[samples.len() - 1].0;
    let mut starts = Vec::new();
    let mut window: VecDeque<Sample> = VecDeque::new();
    let mut next = 0;
    let mut pending_since = None;
    let mut firing = false;
    let mut at = (first.0 / EVERY_MS + 1) * EVERY_MS;
    while at <= last + EVERY_MS {
        while next < samples.len() && samples[next].0 <= at {
            window.push_back(samples[next]);
            next += 1;
        }
        while window.front().is_some_and(|s| s.0 <= at - RANGE_MS) {
            window.pop_front();
        }
        let active = match (predict_linear(&window, at, AHEAD_MS), window.back()) {
            (Some(projected), Some(&(_, _, limit))) => projected > limit,
            _ => false,
        };
        if !active {
            (pending_since, firing) = (None, false);
        } else if !firing && at - *pending_since.get_or_insert(at) >= FOR_MS {
            firing = true;
            starts.push(at);
        }
        at += EVERY_MS;
    }
    starts
}

/// Prometheus' `predict_linear`: the least-squares line through the points, evaluated
/// `ahead_ms` after `at`. `None` with fewer than two points or no spread in time.
pub fn predict_linear(points: &VecDeque<Sample>, at: i64, ahead_ms: i64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    // Centred on their means, so that large epoch times and byte counts keep their precision.
    let mean_x = points.iter().map(|p| (p.0 - at) as f64).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for p in points {
        let dx = (p.0 - at) as f64 - mean_x;
        sxy += dx * (p.1 - mean_y);
        sxx += dx * dx;
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some(mean_y + slope * (ahead_ms as f64 - mean_x))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn beat(instance: &str, t: i64, memory: f64) -> Heartbeat {
        let mut b = Heartbeat::new("app", instance, 1, t);
        b.memory_used_bytes = Some(memory as i64);
        b.memory_limit_bytes = Some(1_000_000_000);
        b
    }

    #[test]
    fn predict_linear_extends_the_least_squares_line() {
        let points: VecDeque<Sample> =
            (0..10).map(|i| (T0 + i * 60_000, 100.0 + 2.0 * i as f64, 0.0)).collect();
        // At the last point the line is at 118; 4 h later 480 minutes further at 2 per minute.
        let at = T0 + 9 * 60_000;
        let p = predict_linear(&points, at, AHEAD_MS).unwrap();
        assert!((p - (118.0 + 2.0 * 240.0)).abs() < 1e-6, "{p}");
        assert!(predict_linear(&points.iter().take(1).copied().collect(), at, AHEAD_MS).is_none());
    }

    #[test]
    fn fires_once_the_projection_stays_past_the_limit_and_not_on_a_flat_series() {
        let mut b = PredictLinear::default();
        for i in 0..2_160 {
            let t = T0 + i * 5_000;
            // Flat at 40 % of the limit.
            b.observe(&beat("flat", t, 400_000_000.0));
            // From 40 % to the limit in 6 h: the 4 h projection passes the limit after 2 h,
            // and the alert fires five minutes later.
            b.observe(&beat("leak", t, 400_000_000.0 + 600_000_000.0 * (i as f64 * 5.0) / 21_600.0));
        }
        let d = b.detections();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, AlertKind::MemoryLeakSuspected);
        let passes = T0 + 7_200_000;
        assert!(d[0].at_ms > passes + FOR_MS && d[0].at_ms <= passes + FOR_MS + 2 * EVERY_MS, "{d:?}");
    }
}
