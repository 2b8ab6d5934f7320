//! Robust trend statistics: the median, the Theil–Sen slope, the Mann–Kendall trend test
//! (with the tie correction and the normal approximation) and Hamed–Rao's correction of its
//! variance for autocorrelated series, the least-squares slope's t statistic with the
//! Student quantile it is compared to, and a least-squares line that is flat, then rises.

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

/// Hamed and Rao's (1998) correction of the Mann–Kendall variance for an autocorrelated
/// series: the factor n/n* by which the variance of S grows, from the autocorrelation of the
/// ranks of `detrended` (the series less its Theil–Sen line) at every lag, counting only the
/// lags significant at 5 %. Never below 1: a series is never judged more certain than
/// independent points would make it.
pub fn hamed_rao_factor(detrended: &[f64]) -> f64 {
    let n = detrended.len();
    if n < 4 {
        return 1.0;
    }
    let ranks = ranks(detrended);
    let mean = (n as f64 + 1.0) / 2.0;
    let centred: Vec<f64> = ranks.iter().map(|r| r - mean).collect();
    let var: f64 = centred.iter().map(|c| c * c).sum();
    if var <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let bound = 1.96 / nf.sqrt();
    let mut sum = 0.0;
    for k in 1..n - 2 {
        let rho = centred.iter().zip(&centred[k..]).map(|(a, b)| a * b).sum::<f64>() / var;
        if rho.abs() > bound {
            let m = (n - k) as f64;
            sum += m * (m - 1.0) * (m - 2.0) * rho;
        }
    }
    (1.0 + 2.0 * sum / (nf * (nf - 1.0) * (nf - 2.0))).max(1.0)
}

/// The ranks of `values` (1-based, ties averaged).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// The least-squares slope of `ys` on `xs` and its t statistic (slope over its standard
/// error; infinite when the points lie exactly on the line). `None` with fewer than three
/// points or no spread in x.
pub fn ols_t(xs: &[f64], ys: &[f64]) -> Option<(f64, f64)> {
    let n = xs.len();
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / nf, ys.iter().sum::<f64>() / nf);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / sxx;
    let sse: f64 = xs.iter().zip(ys).map(|(x, y)| (y - my - slope * (x - mx)).powi(2)).sum();
    let se = (sse / (nf - 2.0) / sxx).sqrt();
    let t = if se > 0.0 { slope / se } else { slope.signum() * f64::INFINITY };
    Some((slope, t))
}

/// The t statistic of the quadratic coefficient of a least-squares parabola through the
/// points, infinite when they lie exactly on it; `None` with fewer than five points or fewer
/// than three distinct x. The columns are made orthogonal (1, x − x̄, and x² less its parts
/// along those two), so each coefficient is a projection of its own.
pub fn quadratic_t(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 5 {
        return None;
    }
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let u: Vec<f64> = xs.iter().map(|x| x - mean(xs)).collect();
    let uu = dot(&u, &u);
    let squares: Vec<f64> = u.iter().map(|v| v * v).collect();
    let (mean_square, along_u) = (mean(&squares), dot(&squares, &u) / uu);
    let q: Vec<f64> = squares.iter().zip(&u).map(|(w, v)| w - mean_square - along_u * v).collect();
    let qq = dot(&q, &q);
    if !(uu > 0.0 && qq > 0.0) {
        return None;
    }
    let (y_mean, slope, curve) = (mean(ys), dot(&u, ys) / uu, dot(&q, ys) / qq);
    let sse: f64 = (0..n).map(|i| (ys[i] - y_mean - slope * u[i] - curve * q[i]).powi(2)).sum();
    let se = (sse / (n - 3) as f64 / qq).sqrt();
    Some(if se > 0.0 {
        curve / se
    } else if curve == 0.0 {
        0.0
    } else {
        curve.signum() * f64::INFINITY
    })
}

/// A line that is flat until `onset`, then rises: `y = level + slope × max(0, x − onset)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hinge {
    /// Index of the point where the rise begins.
    pub onset: usize,
    pub level: f64,
    pub slope: f64,
}

impl Hinge {
    pub fn at(&self, xs: &[f64], x: f64) -> f64 {
        self.level + self.slope * (x - xs[self.onset]).max(0.0)
    }
}

/// The least-squares [`Hinge`] through the points, its onset at whichever point (leaving at
/// least three after it) fits best, the slope positive. The flat part pins the level the rise
/// starts from, so a rise of few points is measured against many: its slope varies far less
/// than a line fitted to the rise alone. An onset at the first point is the plain
/// least-squares line. `None` when no onset gives a rise.
pub fn hinge(xs: &[f64], ys: &[f64]) -> Option<Hinge> {
    debug_assert_eq!(xs.len(), ys.len());
    let n = xs.len();
    let mut best: Option<(f64, Hinge)> = None;
    for onset in 0..n.saturating_sub(3) {
        // Least squares of y on u = max(0, x − x_onset), with an intercept.
        let u: Vec<f64> = xs.iter().map(|x| (x - xs[onset]).max(0.0)).collect();
        let nf = n as f64;
        let (mu, my) = (u.iter().sum::<f64>() / nf, ys.iter().sum::<f64>() / nf);
        let suu: f64 = u.iter().map(|v| (v - mu).powi(2)).sum();
        if suu <= 0.0 {
            continue;
        }
        let slope = u.iter().zip(ys).map(|(v, y)| (v - mu) * (y - my)).sum::<f64>() / suu;
        if slope <= 0.0 {
            continue;
        }
        let level = my - slope * mu;
        let sse: f64 = u.iter().zip(ys).map(|(v, y)| (y - level - slope * v).powi(2)).sum();
        // A value beyond f64's range leaves no finite fit to compare.
        if sse.is_finite() && best.is_none_or(|(b, _)| sse < b) {
            best = Some((sse, Hinge { onset, level, slope }));
        }
    }
    best.map(|(_, h)| h)
}

/// The Student t quantile with `df` degrees of freedom matching the standard normal
/// quantile `z` (Cornish–Fisher expansion, within 10 % from 3 degrees of freedom on).
pub fn student_t_quantile(z: f64, df: usize) -> f64 {
    let v = df.max(1) as f64;
    let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
    z + (z3 + z) / (4.0 * v)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * v * v * v)
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

    #[test]
    fn hamed_rao_inflates_the_variance_of_a_wandering_series_only() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let white: Vec<f64> = (0..100).map(|_| rng.random_range(-1.0..1.0)).collect();
        assert!(hamed_rao_factor(&white) < 1.6, "{}", hamed_rao_factor(&white));
        // Each point close to the last: an AR(1) with coefficient 0.9.
        let mut level = 0.0;
        let wander: Vec<f64> = (0..100)
            .map(|_| {
                level = 0.9 * level + rng.random_range(-1.0..1.0);
                level
            })
            .collect();
        assert!(hamed_rao_factor(&wander) > 3.0, "{}", hamed_rao_factor(&wander));
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn a_hinge_finds_the_onset_and_the_rise_after_it() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let xs: Vec<f64> = (0..100).map(f64::from).collect();
        // Flat at 10 until x = 70, then rising 0.5 per unit, with noise of ±1.
        let ys: Vec<f64> =
            xs.iter().map(|x| 10.0 + 0.5 * (x - 70.0).max(0.0) + rng.random_range(-1.0..1.0)).collect();
        let h = hinge(&xs, &ys).unwrap();
        assert!((65..=75).contains(&h.onset), "{h:?}");
        assert!((h.slope - 0.5).abs() < 0.05 && (h.level - 10.0).abs() < 0.5, "{h:?}");
        // A line rising from the first point: the onset is (near) the first point.
        let line: Vec<f64> = xs.iter().map(|x| 3.0 + 0.2 * x + rng.random_range(-1.0..1.0)).collect();
        let h = hinge(&xs, &line).unwrap();
        assert!(h.onset < 10 && (h.slope - 0.2).abs() < 0.02, "{h:?}");
        assert!((h.at(&xs, 99.0) - 22.8).abs() < 1.0, "{h:?}");
        // Nothing rises.
        let falling: Vec<f64> = xs.iter().map(|x| -x).collect();
        assert_eq!(hinge(&xs, &falling), None);
    }

    #[test]
    fn the_quadratic_t_tells_growth_that_slows_from_growth_that_keeps_its_pace() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let xs: Vec<f64> = (0..30).map(|x| f64::from(x) + 1_000.0).collect();
        let mut noisy = |f: &dyn Fn(f64) -> f64| -> Vec<f64> {
            xs.iter().map(|x| f(x - 1_000.0) + rng.random_range(-0.5..0.5)).collect()
        };
        // A cache warming to its cap: 20 units, time constant 15 minutes.
        let warming = noisy(&|x| 50.0 + 20.0 * (1.0 - (-x / 15.0).exp()));
        assert!(quadratic_t(&xs, &warming).unwrap() < -5.0);
        // A leak: a line; and an onset, which speeds up.
        let line = noisy(&|x| 50.0 + 0.5 * x);
        assert!(quadratic_t(&xs, &line).unwrap().abs() < 3.09);
        let onset = noisy(&|x| 50.0 + (x - 10.0).max(0.0));
        assert!(quadratic_t(&xs, &onset).unwrap() > 3.09);
        let exact: Vec<f64> = xs.iter().map(|x| 2.0 - (x - 1_010.0).powi(2)).collect();
        assert!(quadratic_t(&xs, &exact).unwrap() < -1e6);
        assert_eq!(quadratic_t(&xs[..4], &line[..4]), None);
        assert_eq!(quadratic_t(&[3.0; 6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), None);
    }

    #[test]
    fn the_least_squares_t_and_the_student_quantile() {
        let xs = [0.0, 1.0, 2.0, 3.0, 4.0];
        let (slope, t) = ols_t(&xs, &[1.0, 2.1, 2.9, 4.0, 5.0]).unwrap();
        assert!((slope - 0.99).abs() < 0.01 && t > 30.0, "{slope} {t}");
        assert!(ols_t(&xs[..2], &[1.0, 2.0]).is_none());
        // One-sided 0.1 %: 10.21 (3 df), 5.89 (5), 3.55 (20).
        for (df, want) in [(3, 10.21), (5, 5.89), (20, 3.55)] {
            let got = student_t_quantile(3.09, df);
            assert!((got - want).abs() < 0.1 * want, "{df}: {got}");
        }
    }
}
