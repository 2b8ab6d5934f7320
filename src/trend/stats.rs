//! Robust trend statistics: the median, the Theil–Sen slope, and the Mann–Kendall trend test
//! (with the tie correction and the normal approximation).

/// The median of `values` (reordered in place); `None` when empty. NaNs must be filtered out
/// by the caller.
pub fn median(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    let (lower, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        Some(upper)
    } else {
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((below + upper) / 2.0)
    }
}

/// A fitted line `y = intercept + slope × x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub slope: f64,
    pub intercept: f64,
}

impl Line {
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// The Theil–Sen estimator: the median of the slopes of every pair of points with distinct
/// x, and the median of `y − slope × x` as intercept. Up to 29 % of the points may be
/// arbitrary without moving it far. `None` with fewer than two distinct x.
pub fn theil_sen(xs: &[f64], ys: &[f64]) -> Option<Line> {
    debug_assert_eq!(xs.len(), ys.len());
    let n = xs.len();
    let mut slopes = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let dx = xs[j] - xs[i];
            if dx != 0.0 {
                slopes.push((ys[j] - ys[i]) / dx);
            }
        }
    }
    let slope = median(&mut slopes)?;
    let mut residuals: Vec<f64> = xs.iter().zip(ys).map(|(x, y)| y - slope * x).collect();
    let intercept = median(&mut residuals)?;
    Some(Line { slope, intercept })
}

/// The outcome of a Mann–Kendall test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannKendall {
    /// Σ sign(y_j − y_i) over i < j: positive when later values tend to be larger.
    pub s: i64,
    pub n: usize,
    /// The standardised statistic (with continuity correction); ≈ N(0, 1) without a trend.
    pub z: f64,
}

/// Variance of S under "no trend" for `n` points without ties.
pub fn mk_variance(n: usize) -> f64 {
    let n = n as f64;
    n * (n - 1.0) * (2.0 * n + 5.0) / 18.0
}

/// Z from S and its variance, with the continuity correction.
pub fn mk_z(s: i64, variance: f64) -> f64 {
    if variance <= 0.0 || s == 0 {
        return 0.0;
    }
    let corrected = s as f64 - s.signum() as f64;
    corrected / variance.sqrt()
}

/// The sign of `b − a` as −1, 0 or 1.
pub fn sign(a: f64, b: f64) -> i64 {
    if b > a {
        1
    } else if b < a {
        -1
    } else {
        0
    }
}

/// The Mann–Kendall test of `ys` in order, with the variance corrected for tied values.
pub fn mann_kendall(ys: &[f64]) -> MannKendall {
    let n = ys.len();
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += sign(ys[i], ys[j]);
        }
    }
    let mut sorted = ys.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut run = 1usize;
    for k in 1..=sorted.len() {
        if k < sorted.len() && sorted[k] == sorted[k - 1] {
            run += 1;
        } else {
            if run > 1 {
                let t = run as f64;
                ties += t * (t - 1.0) * (2.0 * t + 5.0);
            }
            run = 1;
        }
    }
    let variance = mk_variance(n) - ties / 18.0;
    MannKendall { s, n, z: mk_z(s, variance) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn theil_sen_recovers_a_line_despite_outliers() {
        let xs: Vec<f64> = (0..30).map(f64::from).collect();
        let mut ys: Vec<f64> = xs.iter().map(|x| 5.0 + 2.0 * x).collect();
        // A quarter of the points wildly off: least squares would be pulled far away.
        for i in (0..30).step_by(4) {
            ys[i] = 1_000.0;
        }
        let line = theil_sen(&xs, &ys).unwrap();
        assert!((line.slope - 2.0).abs() < 0.2, "{line:?}");
        assert!((line.at(10.0) - 25.0).abs() < 3.0, "{line:?}");
        assert_eq!(theil_sen(&[1.0, 1.0], &[0.0, 5.0]), None);
    }

    #[test]
    fn mann_kendall_on_monotone_flat_and_alternating_series() {
        let up: Vec<f64> = (0..20).map(f64::from).collect();
        let mk = mann_kendall(&up);
        assert_eq!(mk.s, 190);
        assert!(mk.z > 5.0);
        let down: Vec<f64> = up.iter().rev().copied().collect();
        assert!(mann_kendall(&down).z < -5.0);
        let flat = vec![7.0; 20];
        let mk = mann_kendall(&flat);
        assert_eq!((mk.s, mk.z), (0, 0.0));
        let zigzag: Vec<f64> = (0..20).map(|i| if i % 2 == 0 { 1.0 } else { 2.0 }).collect();
        assert!(mann_kendall(&zigzag).z.abs() < 1.0);
    }

    #[test]
    fn the_tie_correction_shrinks_the_variance() {
        // 10 points with many ties: the corrected |z| is larger than without correction.
        let ys = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0];
        let mk = mann_kendall(&ys);
        let uncorrected = mk_z(mk.s, mk_variance(ys.len()));
        assert!(mk.z > uncorrected);
        // S = 36 concordant pairs... (45 pairs minus the 9 tied ones).
        assert_eq!(mk.s, 36);
    }
}
