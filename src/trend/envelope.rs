//! The envelope of a series that rises and falls: its swings, found at the scale the series
//! itself shows (a zig-zag filter whose reversal threshold is set by the series' own noise
//! and range), so that a saw-tooth of any period — a garbage collector every few seconds, a
//! cache flushed every hour, an eviction job draining memory gradually — is judged by its
//! troughs, and a leak under it by troughs that rise.

use super::stats::median;

/// The turning points of a series at its own scale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Swings {
    /// Indices of the troughs that followed a fall and were followed by a rise (the lowest
    /// point before the first fall counts too, once a fall came after it).
    pub troughs: Vec<usize>,
    /// Indices of the peaks that were followed by a fall.
    pub peaks: Vec<usize>,
    /// The reversal threshold used: a fall or rise smaller than this is noise.
    pub threshold: f64,
}

impl Swings {
    /// Whether the series fell at least once by more than its noise.
    pub fn fell(&self) -> bool {
        !self.peaks.is_empty()
    }

    /// The longest rise from a trough to the peak after it, in the units of `xs`: a tooth may
    /// last that long, so a rise no longer than it is no leak. Only a rise from a trough that
    /// followed a fall counts: the first rise may have begun before the series did, whatever
    /// point (noise picks it) it seems to start from.
    pub fn longest_rise(&self, xs: &[f64]) -> f64 {
        let mut longest: f64 = 0.0;
        for (k, &p) in self.peaks.iter().enumerate() {
            let start = self.troughs.iter().rev().find(|&&t| t < p);
            if let Some(&t) = start.filter(|&&t| k > 0 && self.peaks[k - 1] < t) {
                longest = longest.max(xs[p] - xs[t]);
            }
        }
        longest
    }

    /// The median height of a tooth: each peak above the trough before it.
    pub fn typical_amplitude(&self, ys: &[f64]) -> f64 {
        let mut heights: Vec<f64> = self
            .peaks
            .iter()
            .filter_map(|&p| self.troughs.iter().rev().find(|&&t| t < p).map(|&t| ys[p] - ys[t]))
            .collect();
        median(&mut heights).unwrap_or(0.0)
    }
}

/// The noise of a series from its steps: 1.4826 × the median absolute deviation of the
/// differences between neighbours (a steady slope does not count as noise).
pub fn step_noise(ys: &[f64]) -> f64 {
    let mut steps: Vec<f64> = ys.windows(2).map(|w| w[1] - w[0]).collect();
    let Some(mid) = median(&mut steps) else { return 0.0 };
    let mut dev: Vec<f64> = steps.iter().map(|s| (s - mid).abs()).collect();
    1.4826 * median(&mut dev).unwrap_or(0.0)
}

/// The swings of `ys`: a reversal counts when it exceeds both `noise_factor` × the step
/// noise and `range_share` × the series' range.
pub fn swings(ys: &[f64], noise_factor: f64, range_share: f64) -> Swings {
    let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    let range = hi - lo;
    let threshold = (noise_factor * step_noise(ys)).max(range_share * range);
    let mut out = Swings { threshold, ..Swings::default() };
    if ys.len() < 3 || threshold.is_nan() || threshold <= 0.0 {
        return out;
    }
    // Running extremes since the last turn; `up`: None until the first move of size.
    let (mut hi, mut lo) = (0, 0);
    let mut up: Option<bool> = None;
    for (i, &y) in ys.iter().enumerate().skip(1) {
        match up {
            None => {
                if y > ys[hi] {
                    hi = i;
                }
                if y < ys[lo] {
                    lo = i;
                }
                if y - ys[lo] >= threshold {
                    (up, hi) = (Some(true), i);
                } else if ys[hi] - y >= threshold {
                    out.peaks.push(hi);
                    (up, lo) = (Some(false), i);
                }
            }
            Some(true) => {
                if y >= ys[hi] {
                    hi = i;
                }
                if ys[hi] - y >= threshold {
                    if out.peaks.is_empty() {
                        // The low the first tooth rose from.
                        out.troughs.push(lo);
                    }
                    out.peaks.push(hi);
                    (up, lo) = (Some(false), i);
                }
            }
            Some(false) => {
                if y <= ys[lo] {
                    lo = i;
                }
                if y - ys[lo] >= threshold {
                    out.troughs.push(lo);
                    (up, hi) = (Some(true), i);
                }
            }
        }
    }
    out.troughs.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saw(n: usize, period: usize, amplitude: f64, floor: impl Fn(usize) -> f64) -> Vec<f64> {
        (0..n).map(|i| floor(i) + amplitude * (i % period) as f64 / period as f64).collect()
    }

    #[test]
    fn a_saw_tooth_turns_at_its_troughs_and_peaks() {
        let ys = saw(100, 20, 10.0, |_| 50.0);
        let s = swings(&ys, 5.0, 0.25);
        assert_eq!(s.peaks, vec![19, 39, 59, 79]);
        assert_eq!(s.troughs, vec![0, 20, 40, 60, 80]);
        let xs: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(s.longest_rise(&xs), 19.0);
        let first_two = swings(&ys[..45], 5.0, 0.25);
        assert_eq!(first_two.longest_rise(&xs), 19.0, "the second tooth, whole");
        assert_eq!(swings(&ys[..30], 5.0, 0.25).longest_rise(&xs), 0.0, "the first may have begun before");
        // Noise may put the first tooth's lowest point after the series' first.
        let mut noisy = ys[..30].to_vec();
        noisy[0] += 2.0;
        let first = swings(&noisy, 5.0, 0.25);
        assert_eq!(first.troughs[0], 1);
        assert_eq!(first.longest_rise(&xs), 0.0, "the first rise is not a whole tooth");
        assert!((s.typical_amplitude(&ys) - 9.5).abs() < 1e-9);
        assert!(s.fell());
    }

    #[test]
    fn a_gradual_drain_turns_too_and_a_steady_rise_does_not() {
        // Up for 20 points, drained over 10.
        let ys: Vec<f64> = (0..120)
            .map(|i| {
                let p = i % 30;
                if p < 20 { p as f64 } else { 20.0 - 2.0 * (p - 20) as f64 }
            })
            .collect();
        let s = swings(&ys, 5.0, 0.25);
        assert_eq!(s.peaks.len(), 4, "{s:?}");
        assert_eq!(s.troughs.len(), 4, "{s:?}");
        let rise: Vec<f64> = (0..60).map(|i| i as f64 + if i % 2 == 0 { 0.3 } else { -0.3 }).collect();
        let s = swings(&rise, 5.0, 0.25);
        assert!(!s.fell() && s.troughs.is_empty(), "{s:?}");
    }
}
