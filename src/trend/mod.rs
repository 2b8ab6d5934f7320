//! Leak and trend detection per instance over a two-scale history of memory used, db pool
//! in use, sessions, threads and open fds, each beside the request rate: the last two hours
//! at one-minute resolution and the day before at a quarter-hour's ([`History`]).
//!
//! A restart starts a new history. The Mann–Kendall statistic of every minute series is
//! kept up to date incrementally (O(window) per minute); only when it hints at growth does
//! [`assess`] run the full, robust judgement ([`judge`](mod@judge)): a series that rises
//! and falls is judged by its troughs, whatever its period; autocorrelation, a trending
//! workload, steps and plateaus are allowed for; and the projected time to exhaustion
//! against the resource's limit sets the severity.

pub mod envelope;
pub mod history;
pub mod judge;
pub mod stats;
mod window;

pub use history::{COARSE_MINUTES, History, SeriesPoint};
pub use judge::{Growth, Projection, assess, judge, judge_recent_onset};
pub(crate) use window::Bytes;
pub use window::{COLUMNS, POINT_BYTES, Point, Points, RPS, Window};

use serde::{Deserialize, Serialize};

use crate::alert::{AlertKind, Severity};
use crate::heartbeat::Heartbeat;

/// How leaks are judged. Section `[trend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrendConfig {
    /// Whether leaks are looked for at all.
    pub enabled: bool,
    /// Minutes of one-minute points judged (and kept) per instance.
    pub lookback_minutes: u32,
    /// Hours of quarter-hour points kept before them (0: none).
    pub history_hours: u32,
    /// Fewest minute points before a series is judged.
    pub min_points: u32,
    /// A series (a new process) is judged once it spans this many minutes: a cache warming
    /// up or a wandering level has turned by then.
    pub young_minutes: u32,
    /// One-sided Mann–Kendall z a growth must reach (3.09 ≈ p < 0.001); each half of the
    /// window must reach half of it.
    pub significance_z: f64,
    /// Mann–Kendall z of the request rate from which a rising workload explains growth that
    /// is, relatively, no faster than 1.5 times its own (above `significance_z` the growth is
    /// judged net of a regression on the request rate instead).
    pub workload_z: f64,
    /// The slower half of the window must grow at least this fraction of the faster one's
    /// slope.
    pub persistence: f64,
    /// The rise of the fitted line over what is judged must be at least this many times the
    /// scatter around it (10th to 90th percentile of the residuals).
    pub min_rise_to_scatter: f64,
    /// CRITICAL when the projected exhaustion is nearer than this, ms.
    pub critical_horizon_ms: i64,
    /// WARNING when it is nearer than this, ms; growth that exhausts later raises nothing.
    pub warning_horizon_ms: i64,
    /// For a resource without a known limit: WARNING when it grows by this fraction of its
    /// level per day.
    pub unbounded_growth_per_day: f64,
    /// An open leak alert resolves after this many minutes in a row without evidence.
    pub resolve_after_minutes: u32,
    /// A series that rises and falls is judged on its troughs once it has at least this many.
    pub min_troughs: u32,
    /// Limits used when the heartbeat does not carry one; 0 = none (no projection).
    /// Memory, bytes.
    pub memory_limit_bytes: f64,
    /// The database pool's size, connections.
    pub db_pool_size: f64,
    /// Active sessions.
    pub sessions_limit: f64,
    /// Threads.
    pub threads_limit: f64,
    /// Open file descriptors.
    pub open_fds_limit: f64,
}

impl Default for TrendConfig {
    fn default() -> Self {
        TrendConfig {
            enabled: true,
            lookback_minutes: 120,
            history_hours: 24,
            min_points: 20,
            young_minutes: 29,
            significance_z: 3.09,
            workload_z: 1.0,
            persistence: 0.5,
            min_rise_to_scatter: 2.0,
            critical_horizon_ms: 3_600_000,
            warning_horizon_ms: 72 * 3_600_000,
            unbounded_growth_per_day: 1.0,
            resolve_after_minutes: 15,
            min_troughs: 5,
            memory_limit_bytes: 0.0,
            db_pool_size: 0.0,
            sessions_limit: 0.0,
            threads_limit: 0.0,
            open_fds_limit: 0.0,
        }
    }
}

impl TrendConfig {
    /// The first problem with these settings, naming the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, p: &str| Err((format!("trend.{k}"), p.to_owned()));
        if !(8..=1440).contains(&self.lookback_minutes) {
            return bad("lookback_minutes", "must be between 8 and 1440");
        }
        if self.history_hours > 72 {
            return bad("history_hours", "must be between 0 and 72");
        }
        if self.min_points < 8 || self.min_points > self.lookback_minutes {
            return bad("min_points", "must be at least 8 and at most lookback_minutes");
        }
        if self.young_minutes > self.lookback_minutes {
            return bad("young_minutes", "must be at most lookback_minutes");
        }
        if self.significance_z.is_nan() || self.significance_z <= 0.0 {
            return bad("significance_z", "must be positive");
        }
        if self.min_rise_to_scatter.is_nan() || self.min_rise_to_scatter < 0.0 {
            return bad("min_rise_to_scatter", "must be 0 or more");
        }
        if self.workload_z.is_nan() || self.workload_z < 0.0 {
            return bad("workload_z", "must be 0 or more");
        }
        if !(0.0..=1.0).contains(&self.persistence) {
            return bad("persistence", "must be between 0 and 1");
        }
        if self.critical_horizon_ms <= 0 || self.warning_horizon_ms < self.critical_horizon_ms {
            return bad("warning_horizon_ms", "horizons must be positive, warning >= critical");
        }
        if self.unbounded_growth_per_day.is_nan() || self.unbounded_growth_per_day <= 0.0 {
            return bad("unbounded_growth_per_day", "must be positive");
        }
        if self.min_troughs < 5 {
            return bad("min_troughs", "must be at least 5");
        }
        for (k, v) in [
            ("memory_limit_bytes", self.memory_limit_bytes),
            ("db_pool_size", self.db_pool_size),
            ("sessions_limit", self.sessions_limit),
            ("threads_limit", self.threads_limit),
            ("open_fds_limit", self.open_fds_limit),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(k, "must be 0 (none) or positive");
            }
        }
        Ok(())
    }
}

/// A resource that can leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    Memory,
    DbPool,
    Sessions,
    Threads,
    OpenFds,
}

impl Resource {
    pub const ALL: [Resource; 5] =
        [Resource::Memory, Resource::DbPool, Resource::Sessions, Resource::Threads, Resource::OpenFds];

    pub fn kind(self) -> AlertKind {
        match self {
            Resource::Memory => AlertKind::MemoryLeakSuspected,
            Resource::DbPool => AlertKind::ConnectionLeakSuspected,
            Resource::Sessions => AlertKind::SessionLeakSuspected,
            Resource::Threads => AlertKind::ThreadLeakSuspected,
            Resource::OpenFds => AlertKind::FdLeakSuspected,
        }
    }

    /// What the series measures, for explanations.
    pub fn describe(self) -> &'static str {
        match self {
            Resource::Memory => "memory used (mean per minute), bytes",
            Resource::DbPool => "db pool connections in use",
            Resource::Sessions => "active sessions",
            Resource::Threads => "threads",
            Resource::OpenFds => "open file descriptors",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The limit the resource exhausts against: the beat's own, else the configured one.
    pub fn limit(self, b: &Heartbeat, c: &TrendConfig) -> Option<f64> {
        let own = match self {
            Resource::Memory => b.memory_limit_bytes.map(|v| v as f64),
            Resource::DbPool => b.db_pool_size.map(f64::from),
            _ => None,
        };
        let configured = match self {
            Resource::Memory => c.memory_limit_bytes,
            Resource::DbPool => c.db_pool_size,
            Resource::Sessions => c.sessions_limit,
            Resource::Threads => c.threads_limit,
            Resource::OpenFds => c.open_fds_limit,
        };
        own.filter(|v| *v > 0.0).or((configured > 0.0).then_some(configured))
    }
}

/// The minute being accumulated: sums for means, requests served. (`memory_floor`, the
/// memory column's minimum, is what earlier versions judged; it still stands in for the mean
/// of a minute restored from them.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OpenMinute {
    minute: i64,
    sums: [f64; COLUMNS],
    counts: [u16; COLUMNS],
    memory_floor: f64,
}

impl OpenMinute {
    fn new(minute: i64) -> Self {
        OpenMinute { minute, memory_floor: f64::INFINITY, ..Default::default() }
    }

    fn add(&mut self, b: &Heartbeat, requests: f64) {
        let mut put = |i: usize, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                self.sums[i] += v;
                self.counts[i] = self.counts[i].saturating_add(1);
            }
        };
        put(Resource::DbPool.index(), b.db_pool_in_use.map(f64::from));
        put(Resource::Sessions.index(), b.sessions_active.map(|v| v as f64));
        put(Resource::Threads.index(), b.threads.map(f64::from));
        put(Resource::OpenFds.index(), b.open_fds.map(f64::from));
        if b.requests_total.is_some() {
            put(RPS, Some(requests));
        }
        if let Some(m) = b.memory_used_bytes {
            self.memory_floor = self.memory_floor.min(m as f64);
            self.sums[0] += m as f64;
            self.counts[0] = self.counts[0].saturating_add(1);
        }
    }

    fn close(&self) -> Point {
        let mut values = [f32::NAN; COLUMNS];
        for r in Resource::ALL.iter().skip(1) {
            let i = r.index();
            if self.counts[i] > 0 {
                values[i] = (self.sums[i] / f64::from(self.counts[i])) as f32;
            }
        }
        if self.counts[0] > 0 {
            let mean = self.sums[0] / f64::from(self.counts[0]);
            values[0] = if mean >= self.memory_floor { mean } else { self.memory_floor } as f32;
        }
        if self.counts[RPS] > 0 {
            // Requests served during the minute, per second.
            values[RPS] = (self.sums[RPS] / 60.0) as f32;
        }
        Point { minute: (self.minute / 60_000).max(0) as u32, values }
    }
}

/// What a growth means for its resource: severity and time to exhaustion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub severity: Severity,
    pub growth: Growth,
    pub limit: Option<f64>,
    /// Projected time until the limit is reached, ms (None without a limit).
    pub exhaustion_in_ms: Option<i64>,
}

/// The severity of `growth` against `limit`, or `None` if it exhausts beyond the horizon.
/// Whether it does is judged on the growth as it was found (`slope_per_min`, `level`: the
/// decision is measured as it stands); the time to exhaustion, and the severity it sets, are
/// projected from [`Growth::projection`].
pub fn verdict(growth: Growth, limit: Option<f64>, c: &TrendConfig) -> Option<Verdict> {
    match limit {
        Some(limit) => {
            if time_to(limit, growth.level, growth.slope_per_min) > c.warning_horizon_ms {
                return None;
            }
            let p = growth.projection;
            let ms = time_to(limit, p.level, p.slope_per_min);
            let severity = if ms <= c.critical_horizon_ms { Severity::Critical } else { Severity::Warning };
            Some(Verdict { severity, growth, limit: Some(limit), exhaustion_in_ms: Some(ms) })
        }
        None => {
            let per_day = growth.slope_per_min * 1440.0;
            (growth.level > 0.0 && per_day >= c.unbounded_growth_per_day * growth.level).then_some(Verdict {
                severity: Severity::Warning,
                growth,
                limit: None,
                exhaustion_in_ms: None,
            })
        }
    }
}

/// Milliseconds until `level`, growing `slope_per_min`, reaches `limit`.
fn time_to(limit: f64, level: f64, slope_per_min: f64) -> i64 {
    let left = (limit - level).max(0.0);
    (left / (slope_per_min / 60_000.0)).min(i64::MAX as f64 / 2.0) as i64
}

/// An open leak alert of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OpenLeak {
    pub severity: Severity,
    pub started_at: i64,
    /// Minutes in a row without evidence.
    pub calm_minutes: u32,
}

/// What changed for one resource when a minute closed.
#[derive(Debug, Clone, PartialEq)]
pub enum LeakChange {
    /// Firing (new, or escalated to CRITICAL).
    Fire { resource: Resource, verdict: Verdict, started_at: i64 },
    /// No evidence for long enough.
    Resolve { resource: Resource, open: OpenLeak, calm_minutes: u32 },
}

/// The trend state of one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceTrend {
    open_minute: Option<OpenMinute>,
    pub window: History,
    pub open: [Option<OpenLeak>; 5],
    /// Whether `window` changed since [`InstanceTrend::take_window_changed`] last said.
    #[serde(skip)]
    window_changed: Changed,
    /// The minute from which the window's points are not in the windows base written last;
    /// none while no base holds the window as it is (a new instance, a new process). Kept by
    /// the writer and restored from the base; not part of the state record.
    #[serde(skip)]
    tail_from: Option<u32>,
}

/// A flag that is not part of the state it sits in: equal whatever its value, never
/// persisted.
#[derive(Debug, Clone, Copy, Default)]
struct Changed(bool);

impl PartialEq for Changed {
    fn eq(&self, _: &Changed) -> bool {
        true
    }
}

impl InstanceTrend {
    /// Adds a beat (with the requests it reports since the previous one). When it opens a
    /// new minute, the previous one is closed and judged; the changes are returned.
    pub fn observe(&mut self, b: &Heartbeat, requests: f64, c: &TrendConfig, out: &mut Vec<LeakChange>) {
        let minute = crate::minute::minute_of(b.sent_at);
        match &mut self.open_minute {
            Some(open) if open.minute == minute => open.add(b, requests),
            Some(open) if open.minute > minute => {} // older than the minute being built
            _ => {
                if let Some(done) = self.open_minute.take() {
                    self.window.push(done.close(), c);
                    self.window_changed = Changed(true);
                    self.judge_all(b, c, out);
                }
                let mut open = OpenMinute::new(minute);
                open.add(b, requests);
                self.open_minute = Some(open);
            }
        }
    }

    /// Whether the window changed (a minute closed, or the series started over) since the
    /// last call.
    pub fn take_window_changed(&mut self) -> bool {
        std::mem::take(&mut self.window_changed).0
    }

    /// The window is written whole, as a base: the points after it go to tails.
    pub fn based(&mut self) {
        self.tail_from = Some(self.window.newest_minute().map_or(0, |m| m + 1));
    }

    /// The points closed since the base, as a tail; none while no base holds the window.
    pub fn tail(&self) -> Option<History> {
        self.tail_from.map(|from| self.window.since(from))
    }

    /// A new process: the series start over and open leak alerts resolve.
    pub fn restart(&mut self, out: &mut Vec<LeakChange>) {
        self.window.clear();
        self.window_changed = Changed(true);
        self.tail_from = None;
        self.open_minute = None;
        for r in Resource::ALL {
            if let Some(open) = self.open[r.index()].take() {
                out.push(LeakChange::Resolve { resource: r, open, calm_minutes: 0 });
            }
        }
    }

    fn judge_all(&mut self, b: &Heartbeat, c: &TrendConfig, out: &mut Vec<LeakChange>) {
        let t = b.sent_at;
        for r in Resource::ALL {
            let i = r.index();
            // The cheap look first: the full judgement only when the series hints at growth.
            let z = self.window.quick_z(r);
            let found = if self.window.len() >= c.min_points as usize && z >= 1.0 {
                let coarse = if c.history_hours > 0 { self.window.coarse_series(r) } else { Vec::new() };
                assess(&self.window.series(r), &coarse, c).and_then(|g| verdict(g, r.limit(b, c), c))
            } else {
                None
            };
            match (&mut self.open[i], found) {
                (None, Some(v)) => {
                    self.open[i] = Some(OpenLeak { severity: v.severity, started_at: t, calm_minutes: 0 });
                    out.push(LeakChange::Fire { resource: r, verdict: v, started_at: t });
                }
                (Some(open), Some(v)) => {
                    open.calm_minutes = 0;
                    if v.severity > open.severity {
                        open.severity = v.severity;
                        out.push(LeakChange::Fire { resource: r, verdict: v, started_at: open.started_at });
                    }
                }
                (Some(open), None) => {
                    open.calm_minutes += 1;
                    if open.calm_minutes >= c.resolve_after_minutes {
                        let open = *open;
                        self.open[i] = None;
                        out.push(LeakChange::Resolve { resource: r, open, calm_minutes: open.calm_minutes });
                    }
                }
                (None, None) => {}
            }
        }
    }

    /// The open leak alerts: (kind, severity, started_at).
    pub fn open_alerts(&self) -> impl Iterator<Item = (AlertKind, Severity, i64)> + '_ {
        Resource::ALL
            .into_iter()
            .filter_map(|r| self.open[r.index()].map(|o| (r.kind(), o.severity, o.started_at)))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_shapes;
