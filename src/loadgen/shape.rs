//! The shapes a fault can give memory beyond its defaults, for the evaluation's randomly
//! drawn cases: a saw-tooth of any period, height and drain, a wandering level, a cache
//! warming to its cap at any pace, and noise stated as a share of the limit. Pure functions
//! of the event time (and, for the wander, of the instance's seed).

use std::time::Duration;

use super::scenario::parse_duration;

/// Parameters of a shape; every one optional (the fault's default shape then holds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shape {
    /// Saw-tooth: its period; wander: its time scale; warm-up: its time constant.
    pub period: Option<Duration>,
    /// Height of a tooth, spread of the wander, or rise of the warm-up, as a share of the limit.
    pub amplitude: Option<f64>,
    /// Saw-tooth: the share of each period spent draining back to the trough (0: a sharp drop).
    pub drain: Option<f64>,
    /// Saw-tooth: where in its period it is when the fault starts (0 to 1).
    pub phase: Option<f64>,
    /// Memory's noise, a Gaussian whose standard deviation is this share of the limit
    /// (instead of ±2 % of the level times the fault's `noise`).
    pub sigma: Option<f64>,
}

impl Shape {
    /// Takes `key=value` if it is a shape's parameter: `Ok(false)` if the key is not one.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let share = |v: &str, max: f64| {
            v.parse::<f64>()
                .ok()
                .filter(|x| (0.0..=max).contains(x))
                .ok_or_else(|| format!("{key}={v:?} is not a number from 0 to {max}"))
        };
        match key {
            "period" => self.period = Some(parse_duration(value)?).filter(|d| !d.is_zero()),
            "amplitude" => self.amplitude = Some(share(value, 1.0)?),
            "drain" => self.drain = Some(share(value, 0.9)?),
            "phase" => self.phase = Some(share(value, 1.0)?),
            "sigma" => self.sigma = Some(share(value, 0.5)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A saw-tooth's height above its trough `s` seconds into the fault, as a share of the limit:
/// it climbs for the part of each period not spent draining, then falls back (at once, or
/// linearly over the drain). Defaults: a 5-minute period, 30 % of the limit, a sharp drop.
pub fn sawtooth(shape: &Shape, s: f64) -> f64 {
    let period = shape.period.map_or(300.0, |d| d.as_secs_f64());
    let amplitude = shape.amplitude.unwrap_or(0.3);
    let drain = shape.drain.unwrap_or(0.0);
    let at = (s / period + shape.phase.unwrap_or(0.0)).fract();
    let climb = 1.0 - drain;
    if at < climb { amplitude * at / climb } else { amplitude * (1.0 - (at - climb) / drain) }
}

/// A wandering level `s` seconds into the fault, as a share of the limit: no drift, each
/// minute close to the last. Smooth random knots every `period` (default 10 minutes), each
/// of spread `amplitude` (default 2 %), joined by cosine steps; drawn from `seed`.
pub fn wander(shape: &Shape, seed: u64, s: f64) -> f64 {
    let period = shape.period.map_or(600.0, |d| d.as_secs_f64());
    let amplitude = shape.amplitude.unwrap_or(0.02);
    let knot = (s / period).floor();
    let t = s / period - knot;
    let w = (1.0 - (t * std::f64::consts::PI).cos()) / 2.0;
    let at = |k: f64| gaussian(seed, k as u64);
    amplitude * (at(knot) * (1.0 - w) + at(knot + 1.0) * w)
}

/// A cache warming after its process started `lived` seconds ago, as a share of the limit:
/// it rises by `amplitude` (default 20 %), ever slower, with time constant `period` (default
/// 5 minutes).
pub fn warm_up(shape: &Shape, lived: f64) -> f64 {
    let tau = shape.period.map_or(300.0, |d| d.as_secs_f64());
    shape.amplitude.unwrap_or(0.2) * (1.0 - (-lived / tau).exp())
}

/// A standard normal number, the same for the same `seed` and `k`.
pub fn gaussian(seed: u64, k: u64) -> f64 {
    let u = |salt: u64| {
        let mut h = seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
        for _ in 0..3 {
            h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        }
        ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (-2.0 * u(1).ln()).sqrt() * (std::f64::consts::TAU * u(2)).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saw_tooth_climbs_then_drops_or_drains() {
        let sharp =
            Shape { period: Some(Duration::from_secs(1200)), amplitude: Some(0.4), ..Shape::default() };
        assert_eq!(sawtooth(&sharp, 0.0), 0.0);
        assert!((sawtooth(&sharp, 600.0) - 0.2).abs() < 1e-9);
        assert!(sawtooth(&sharp, 1199.0) > 0.39 && sawtooth(&sharp, 1200.0) < 1e-9);
        let drained = Shape { drain: Some(0.5), ..sharp };
        assert!((sawtooth(&drained, 600.0) - 0.4).abs() < 1e-9);
        assert!((sawtooth(&drained, 900.0) - 0.2).abs() < 1e-9);
        let late = Shape { phase: Some(0.5), ..sharp };
        assert!((sawtooth(&late, 0.0) - 0.2).abs() < 1e-9);
    }

    #[test]
    fn a_wander_stays_near_its_level_and_moves_smoothly() {
        let shape =
            Shape { period: Some(Duration::from_secs(600)), amplitude: Some(0.02), ..Shape::default() };
        let values: Vec<f64> = (0..2000).map(|m| wander(&shape, 7, m as f64 * 60.0)).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!(values.windows(2).all(|w| (w[1] - w[0]).abs() < 0.02), "smooth");
        assert!(values.iter().any(|v| v.abs() > 0.02), "it wanders");
    }

    #[test]
    fn parameters_parse_and_gaussians_are_standard() {
        let mut s = Shape::default();
        assert_eq!(s.set("period", "20m"), Ok(true));
        assert_eq!(s.set("exhaust", "2h"), Ok(false));
        assert!(s.set("amplitude", "2").is_err());
        assert_eq!(s.period, Some(Duration::from_secs(1200)));
        let xs: Vec<f64> = (0..10_000).map(|k| gaussian(3, k)).collect();
        let mean = xs.iter().sum::<f64>() / 1e4;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 1e4;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{mean} {var}");
        assert!((warm_up(&Shape::default(), 1e6) - 0.2).abs() < 1e-9);
    }
}
