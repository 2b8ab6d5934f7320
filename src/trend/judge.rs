//! Judging one resource's history: is it a leak? The series is first seen at its own
//! scale ([`envelope`](super::envelope)): a series that rises and falls is judged by its
//! troughs — a leak under a saw-tooth is troughs that rise — and a rise after its last fall
//! only once it outlasts every tooth the history showed. A series without falls is judged as
//! it is: Mann–Kendall with Hamed–Rao's variance correction (a wandering, autocorrelated
//! series is not a trend), a Theil–Sen line whose rise stands above the scatter, growth in
//! both halves at comparable rates (a step or a cache warming to its cap is not a leak), net
//! of a trending workload; or, for a leak that begins in a steady process, its newest part.
//! Either way a rise must be new to its series: steeper than it rose before, and going
//! further than the level moved before. Growth too slow for the minute window is judged on the quarter-hour history.

use super::TrendConfig;
use super::envelope::{Swings, swings};
use super::history::SeriesPoint;
use super::stats::{
    Line, hamed_rao_factor, hinge, mann_kendall, median, ols_t, quadratic_t, student_t_quantile, theil_sen,
};

/// A growth judged to be real.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Growth {
    /// Theil–Sen slope of what was judged (the troughs, or the part the workload does not
    /// explain), units per minute.
    pub slope_per_min: f64,
    /// Theil–Sen slope of the raw points, units per minute.
    pub raw_slope_per_min: f64,
    /// The trend statistic of what was judged: Mann–Kendall z corrected for autocorrelation,
    /// or the t of the troughs' line.
    pub z: f64,
    /// Points judged.
    pub points: usize,
    /// Minutes the judged points span.
    pub span_minutes: f64,
    /// The value's change per unit of request rate, when a trending workload was regressed out.
    pub per_request_rate: Option<f64>,
    /// Troughs judged, when the series is a saw-tooth.
    pub troughs: Option<usize>,
    /// The current level: the judged line at the newest point (for a saw-tooth, its troughs'
    /// line plus a typical tooth: the level the peaks reach), or the newest raw values'
    /// median when the workload was regressed out.
    pub level: f64,
    /// What the time to exhaustion is projected from. Whether a growth is a leak is judged
    /// on `slope_per_min` and `level`, often over a short stretch; the projection takes the
    /// longest stretch consistent with the growth, whose slope varies far less.
    pub projection: Projection,
}

/// The rate and level a growth's time to exhaustion is projected from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Units per minute: for growth judged on the minute points, the least-squares slope of
    /// every point since the growth's onset (found by a [`hinge`] over the rise since the
    /// last fall); for a saw-tooth's troughs or the quarter-hour points, the judged slope.
    pub slope_per_min: f64,
    /// The level now: that line at the newest point (the judged level when the workload was
    /// regressed out, or for troughs and quarter-hours).
    pub level: f64,
    /// Points the slope was fitted on.
    pub points: usize,
}

/// The largest relative growth of a resource per relative growth of the request rate that a
/// rising workload is taken to explain (a connection pool in use follows traffic about 1:1;
/// memory, with its fixed base, far less).
const MAX_ELASTICITY: f64 = 1.5;

/// A fall or rise counts as a swing when larger than this many times the step noise...
const SWING_NOISE: f64 = 5.0;
/// ... and than this share of the series' range.
const SWING_RANGE: f64 = 0.25;
/// A rise after the last fall is judged once it lasts this many times the longest tooth seen.
const OUTLAST: f64 = 1.5;
/// A rise judged must be this many times steeper than any of the same length before it.
const UNLIKE_PAST: f64 = 1.5;
/// A rise judged must be this many times the range the level moved in before it.
const STAND_OUT: f64 = 2.0;
/// Fewest quarter-hour points on which slow growth is judged.
const MIN_COARSE_POINTS: usize = 8;

/// Judges a resource: its minute points (`fine`, oldest first) and the quarter-hour points
/// of the history (`coarse`). `Some` when it is growing as a leak does.
pub fn assess(fine: &[SeriesPoint], coarse: &[SeriesPoint], c: &TrendConfig) -> Option<Growth> {
    if fine.len() < c.min_points as usize {
        return None;
    }
    let fine_swings = swings_of(fine);
    let coarse_swings = (coarse.len() >= MIN_COARSE_POINTS).then(|| swings_of(coarse));
    if fine_swings.fell()
        && let Some(g) = judge_troughs(fine, &fine_swings, c)
    {
        return Some(g);
    }
    if let Some(cs) = coarse_swings.as_ref().filter(|s| s.fell())
        && let Some(g) = judge_troughs(coarse, cs, c)
    {
        return Some(g);
    }
    // Teeth may last as long as the longest rise the history showed before a fall.
    let xs = |s: &[SeriesPoint]| s.iter().map(|p| p.0).collect::<Vec<_>>();
    let longest = fine_swings.longest_rise(&xs(fine)).max(
        coarse_swings
            .as_ref()
            .map_or(0.0, |cs| cs.longest_rise(&xs(coarse)) + super::history::COARSE_MINUTES as f64),
    );
    let rising = since_last_fall(fine, &fine_swings);
    let found = judge(rising, c).or_else(|| judge_recent_onset(rising, c));
    if let Some(g) = found {
        let past = &fine[..fine.len() - g.points.min(fine.len())];
        let judged = &fine[past.len()..];
        // After a fall, a rise is a tooth until it outlasts every whole tooth seen, or takes
        // the series above every level it reached before.
        let before = &fine[..fine.len() - rising.len()];
        let highest = before.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let above = judged.iter().rev().take(5).map(|p| p.1).fold(f64::INFINITY, f64::min)
            > highest + fine_swings.threshold;
        let outlasts = longest > 0.0 && g.span_minutes >= OUTLAST * longest;
        let new_ground = !fine_swings.fell() && longest == 0.0 || outlasts || above;
        // A series younger than `young_minutes` (a new process) is not judged yet: a warm-up
        // or a wandering level turns by then.
        let age = fine[fine.len() - 1].0 - fine[0].0 + 1.0;
        let young = age < f64::from(c.young_minutes);
        let found = new_ground
            && !young
            && unlike_its_past(judged, past, c)
            && stands_out(past, &g)
            && !decelerates(judged, c);
        return found.then(|| Growth { projection: projection(rising, &g), ..g });
    }
    let fell = fine_swings.fell() || coarse_swings.as_ref().is_some_and(Swings::fell);
    if !fell && coarse.len() >= MIN_COARSE_POINTS {
        // Growth too slow for the minute window to show.
        let slow = TrendConfig { min_points: MIN_COARSE_POINTS as u32, ..c.clone() };
        return judge(coarse, &slow);
    }
    None
}

/// The projection of growth `g` found on `rising` (the points since the last fall, or all
/// of them): a least-squares hinge over every one, flat until the onset it finds, then
/// rising. The growth judged may be a short recent stretch (a leak's onset is judged on as
/// few as `min_points`), whose slope is noisy — the standard error of a least-squares slope
/// falls as n^(-3/2) — while everything since the onset, and the level before it, measure
/// the same rise. Net of the workload when `g` was judged so; `g`'s own without a rise.
fn projection(rising: &[SeriesPoint], g: &Growth) -> Projection {
    let xs: Vec<f64> = rising.iter().map(|p| p.0).collect();
    let mut ys: Vec<f64> = rising.iter().map(|p| p.1).collect();
    if let Some(per_rate) = g.per_request_rate {
        if rising.iter().any(|p| !p.2.is_finite()) {
            return g.projection;
        }
        for (y, p) in ys.iter_mut().zip(rising) {
            *y -= per_rate * p.2;
        }
    }
    let Some(h) = hinge(&xs, &ys) else { return g.projection };
    // Net of the workload, the line's level is not the resource's: keep the newest values'.
    let level = if g.per_request_rate.is_some() { g.level } else { h.at(&xs, xs[xs.len() - 1]) };
    Projection { slope_per_min: h.slope, level, points: xs.len() - h.onset }
}

/// Whether the growth of `judged` is new to the series: its least-squares slope steeper, by
/// [`UNLIKE_PAST`], than that of every stretch of as many points (or of all there are) in
/// the history before it. What the series did before — a saw-tooth's ramps, a wandering
/// level's rises — it may do again without leaking; a series with less history than
/// `min_points` before the rise is judged on the rise alone.
fn unlike_its_past(judged: &[SeriesPoint], past: &[SeriesPoint], c: &TrendConfig) -> bool {
    if past.len() < c.min_points as usize {
        return true;
    }
    let slope = |s: &[SeriesPoint]| {
        let (xs, ys): (Vec<f64>, Vec<f64>) = s.iter().map(|p| (p.0, p.1)).unzip();
        ols_t(&xs, &ys).map_or(0.0, |(slope, _)| slope)
    };
    let now = slope(judged);
    let len = judged.len().min(past.len());
    let steepest = past.windows(len).map(slope).fold(f64::NEG_INFINITY, f64::max);
    now > UNLIKE_PAST * steepest
}

/// Whether growth `g` rose by [`STAND_OUT`] times as much as the level moved before it:
/// the range of the `past` points' 5-minute means, net of the past's own rise (a leak may
/// have begun before the part judged). A wandering level rises as far as it fell or rose
/// before; a leak's onset leaves a steady level behind. Too short a past is not weighed.
fn stands_out(past: &[SeriesPoint], g: &Growth) -> bool {
    const MEAN_OF: usize = 5;
    if past.len() < MEAN_OF {
        return true;
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) = past.iter().map(|p| (p.0, p.1)).unzip();
    let drift = theil_sen(&xs, &ys).map_or(0.0, |l| l.slope.max(0.0));
    let net = |p: &SeriesPoint| p.1 - drift * (p.0 - xs[0]);
    let means = past.windows(MEAN_OF).map(|w| w.iter().map(net).sum::<f64>() / MEAN_OF as f64);
    let (lo, hi) = means.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| (lo.min(m), hi.max(m)));
    g.slope_per_min * g.span_minutes >= STAND_OUT * (hi - lo)
}

/// Whether the growth of `judged` slows as it goes: the quadratic term of a least-squares
/// fit is negative, its t beyond `significance_z`. A cache warming to its cap, or a level
/// wandering towards where it turns, decelerates; a leak keeps its pace.
fn decelerates(judged: &[SeriesPoint], c: &TrendConfig) -> bool {
    let (xs, ys): (Vec<f64>, Vec<f64>) = judged.iter().map(|p| (p.0, p.1)).unzip();
    quadratic_t(&xs, &ys).is_some_and(|t| t <= -c.significance_z)
}

/// The swings of a series' values.
fn swings_of(series: &[SeriesPoint]) -> Swings {
    let ys: Vec<f64> = series.iter().map(|p| p.1).collect();
    swings(&ys, SWING_NOISE, SWING_RANGE)
}

/// The points from the lowest one after the last fall on: the rise in progress.
fn since_last_fall<'a>(series: &'a [SeriesPoint], s: &Swings) -> &'a [SeriesPoint] {
    let Some(&peak) = s.peaks.last() else { return series };
    let low = (peak..series.len()).min_by(|&a, &b| series[a].1.total_cmp(&series[b].1)).unwrap_or(peak);
    &series[low..]
}

/// A saw-tooth judged by its troughs: at least `min_troughs` of them, on a line that rises
/// significantly (its least-squares t against Student's quantile at `significance_z`), the
/// Theil–Sen line rising too, and faster than a rising workload explains.
fn judge_troughs(series: &[SeriesPoint], s: &Swings, c: &TrendConfig) -> Option<Growth> {
    let k = s.troughs.len();
    if k < c.min_troughs as usize {
        return None;
    }
    let xs: Vec<f64> = s.troughs.iter().map(|&i| series[i].0).collect();
    let ys: Vec<f64> = s.troughs.iter().map(|&i| series[i].1).collect();
    let (_, t) = ols_t(&xs, &ys)?;
    if t < student_t_quantile(c.significance_z, k - 2) {
        return None;
    }
    let line = theil_sen(&xs, &ys)?;
    if line.slope <= 0.0 {
        return None;
    }
    let all_xs: Vec<f64> = series.iter().map(|p| p.0).collect();
    let all_ys: Vec<f64> = series.iter().map(|p| p.1).collect();
    let rps: Vec<f64> = series.iter().map(|p| p.2).collect();
    if rps.iter().all(|r| r.is_finite())
        && mann_kendall(&rps).z >= c.workload_z
        && follows_workload(&all_xs, &all_ys, &rps, line.slope)
    {
        return None;
    }
    let now = series.last()?.0;
    let level = line.at(now) + s.typical_amplitude(&all_ys);
    Some(Growth {
        slope_per_min: line.slope,
        raw_slope_per_min: raw_slope(series),
        z: t,
        points: k,
        span_minutes: xs[k - 1] - xs[0],
        per_request_rate: None,
        troughs: Some(k),
        level,
        // The troughs' line already spans every tooth the series shows.
        projection: Projection { slope_per_min: line.slope, level, points: k },
    })
}

fn raw_slope(series: &[SeriesPoint]) -> f64 {
    let xs: Vec<f64> = series.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = series.iter().map(|p| p.1).collect();
    theil_sen(&xs, &ys).map_or(0.0, |l| l.slope)
}

/// Judges one series `(minute, value, requests/s)` as it is: `Some` when it grows steadily,
/// for reasons other than its workload, and not as a single step nor a wandering.
pub fn judge(series: &[SeriesPoint], c: &TrendConfig) -> Option<Growth> {
    if series.len() < c.min_points as usize {
        return None;
    }
    let xs: Vec<f64> = series.iter().map(|p| p.0).collect();
    let mut ys: Vec<f64> = series.iter().map(|p| p.1).collect();
    let rps: Vec<f64> = series.iter().map(|p| p.2).collect();
    let rps_z = if rps.iter().all(|r| r.is_finite()) { mann_kendall(&rps).z } else { 0.0 };
    if rps_z >= c.workload_z && follows_workload(&xs, &ys, &rps, raw_slope(series)) {
        return None;
    }
    // A workload that trends clearly explains growth that follows it: regress it out.
    let mut per_request_rate = None;
    if rps_z.abs() >= c.significance_z
        && let Some(fit) = theil_sen(&rps, &ys)
    {
        for (y, r) in ys.iter_mut().zip(&rps) {
            *y -= fit.slope * r;
        }
        per_request_rate = Some(fit.slope);
    }
    let line = theil_sen(&xs, &ys)?;
    if line.slope <= 0.0 {
        return None;
    }
    let z = corrected_z(&xs, &ys, &line);
    if z < c.significance_z {
        return None;
    }
    // Signal over noise: the line's rise over the window must stand above the scatter around
    // it (a step, or a swing such as a busy pool's, leaves a wide scatter).
    let span = xs[xs.len() - 1] - xs[0];
    let residuals: Vec<f64> = xs.iter().zip(&ys).map(|(x, y)| y - line.at(*x)).collect();
    if line.slope * span < c.min_rise_to_scatter * spread(&residuals) || !persists(&xs, &ys, c) {
        return None;
    }
    let level = if per_request_rate.is_some() {
        let mut newest: Vec<f64> = series.iter().rev().take(5).map(|p| p.1).collect();
        median(&mut newest)?
    } else {
        line.at(xs[xs.len() - 1])
    };
    Some(Growth {
        slope_per_min: line.slope,
        raw_slope_per_min: raw_slope(series),
        z,
        points: xs.len(),
        span_minutes: span,
        per_request_rate,
        troughs: None,
        level,
        projection: Projection { slope_per_min: line.slope, level, points: xs.len() },
    })
}

/// The Mann–Kendall z of `ys`, its variance corrected for the autocorrelation of what is
/// left around `line` (Hamed–Rao).
fn corrected_z(xs: &[f64], ys: &[f64], line: &Line) -> f64 {
    let mk = mann_kendall(ys);
    let detrended: Vec<f64> = xs.iter().zip(ys).map(|(x, y)| y - line.at(*x)).collect();
    mk.z / hamed_rao_factor(&detrended).sqrt()
}

/// Whether a rising workload explains growth that is, relatively, no faster than
/// [`MAX_ELASTICITY`] times its own (a diurnal rise, a pool following traffic).
fn follows_workload(xs: &[f64], ys: &[f64], rps: &[f64], slope: f64) -> bool {
    let span = xs[xs.len() - 1] - xs[0];
    let relative = |slope: f64, values: &[f64]| {
        let mut v = values.to_vec();
        median(&mut v).filter(|m| *m > 0.0).map_or(f64::INFINITY, |m| slope * span / m)
    };
    let traffic = theil_sen(xs, rps).map_or(0.0, |l| relative(l.slope, rps));
    relative(slope, ys) <= MAX_ELASTICITY * traffic
}

/// Persistence: both halves grow, at comparable rates (a step grows in one half only; a
/// cache warming up grows fast, then slower and slower).
fn persists(xs: &[f64], ys: &[f64], c: &TrendConfig) -> bool {
    let half = xs.len() / 2;
    let mut slopes = [0.0; 2];
    for (slope, (hx, hy)) in slopes.iter_mut().zip([(&xs[..half], &ys[..half]), (&xs[half..], &ys[half..])]) {
        let Some(line) = theil_sen(hx, hy) else { return false };
        *slope = line.slope;
        if *slope <= 0.0 || mann_kendall(hy).z < c.significance_z / 2.0 {
            return false;
        }
    }
    slopes[0].min(slopes[1]) >= c.persistence * slopes[0].max(slopes[1])
}

/// Judges the newest part of a series whose whole failed: a leak that began in a process
/// that had been steady grows in the later points only, which the persistence test over the
/// whole refuses until the leak fills both halves. Tries the newest two thirds,
/// half, third and `min_points` of the points, longest first. The points before the part
/// judged must have grown slower than it by the persistence factor: growth that begins is a
/// leak's onset, growth that slows down (a cache warming up) is not. A workload that
/// rises is weighed within the part judged, as [`judge`] does: refusing every onset while
/// the request rate over the whole window trends let a 6 h leak go unflagged for an hour.
pub fn judge_recent_onset(series: &[SeriesPoint], c: &TrendConfig) -> Option<Growth> {
    let n = series.len();
    let mut sizes = [2 * n / 3, n / 2, n / 3, c.min_points as usize];
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let mut tried = n;
    for size in sizes {
        if size >= tried || size < c.min_points as usize {
            continue;
        }
        tried = size;
        let (before, recent) = series.split_at(n - size);
        let Some(g) = judge(recent, c) else { continue };
        if raw_slope(before) <= c.persistence * g.raw_slope_per_min {
            return Some(g);
        }
    }
    None
}

/// The distance between the 10th and the 90th percentile.
fn spread(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    at(0.9) - at(0.1)
}
