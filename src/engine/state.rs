//! Per-application and per-instance state, persisted in `app-state` records, and the
//! snapshot made of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::rates::RateWindow;
use super::rollup::{Deltas, MinuteAcc, memory_ratio};
use super::vec_map::VecMap;
use crate::alert::{AlertKind, Severity};
use crate::app_state::{AppSnapshot, PartitionMark, StateRecordError, StateRecordOut};
use crate::heartbeat::{Heartbeat, InstanceStatus};
use crate::labels::Labels;
use crate::rules::{MAX_FLAP_TRANSITIONS, Rule, RuleStates};
use crate::trend::{History, InstanceTrend, TrendConfig};

/// Where an instance stands on liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    Up,
    Late,
    Down,
}

/// Length of the window the error rate is measured over.
const RATE_WINDOW_MS: i64 = 60_000;

/// Most deltas kept in the window, whatever the beat rate: a producer beating far faster than
/// once a second (or repeating one timestamp) must not grow the state without bound.
const MAX_RATE_SAMPLES: usize = 120;

/// One instance of an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    /// The newest beat (by event time), without its ids and labels (see
    /// [`InstanceState::set_last`]).
    pub last: Heartbeat,
    /// Event time the liveness deadlines count from: the newest beat's `sent_at`, or the
    /// watermark when that beat arrived already behind it (late data must not make its
    /// deadline look passed).
    pub anchor: i64,
    pub liveness: Liveness,
    /// Deadline at which INSTANCE_LATE fired, while it is open.
    pub late_since: Option<i64>,
    /// Deadline at which INSTANCE_DOWN fired, while it is open.
    pub down_since: Option<i64>,
    /// The liveness deadline the timer heap holds for this instance.
    pub scheduled: Option<i64>,
    pub rules: RuleStates,
    /// (started_at, last restart) of an open INSTANCE_RESTARTED alert.
    pub restarted: Option<(i64, i64)>,
    /// Event times of recent UP/DOWN transitions.
    pub transitions: VecDeque<i64>,
    /// (event time, requests, errors) deltas within the last minute.
    pub rate_window: RateWindow,
    /// Minute points of this process and its open leak alerts.
    #[serde(default)]
    pub trend: InstanceTrend,
    /// Start of an open FLAPPING alert; while it lasts LATE, DOWN and RESTARTED are not
    /// announced (`late_since`, `down_since` stay empty).
    #[serde(default)]
    pub flapping_since: Option<i64>,
    /// The instance's inter-arrival times, for the phi-accrual mode.
    #[serde(default)]
    pub arrivals: ArrivalStats,
}

/// Mean and variance of an instance's inter-arrival times: exact over the first `window`
/// samples, then exponentially weighted with weight 1/`window`. 24 bytes, O(1) per beat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArrivalStats {
    pub n: u32,
    pub mean_ms: f64,
    pub var_ms2: f64,
}

impl ArrivalStats {
    pub fn observe(&mut self, gap_ms: f64, window: u32) {
        if gap_ms <= 0.0 {
            return;
        }
        self.n = self.n.saturating_add(1);
        let w = 1.0 / f64::from(self.n.min(window.max(1)));
        let d = gap_ms - self.mean_ms;
        self.mean_ms += w * d;
        self.var_ms2 = (1.0 - w) * (self.var_ms2 + w * d * d);
    }

    pub fn std_ms(&self) -> f64 {
        self.var_ms2.max(0.0).sqrt()
    }
}

impl InstanceState {
    pub fn new(first: Heartbeat) -> InstanceState {
        let mut instance = InstanceState {
            anchor: first.sent_at,
            last: first,
            liveness: Liveness::Up,
            late_since: None,
            down_since: None,
            scheduled: None,
            rules: RuleStates::default(),
            restarted: None,
            transitions: VecDeque::new(),
            rate_window: RateWindow::default(),
            trend: InstanceTrend::default(),
            flapping_since: None,
            arrivals: ArrivalStats::default(),
        };
        instance.drop_last_ids();
        instance
    }

    /// Keeps `b` as the newest beat, without its ids and labels: the instance's key and its
    /// application's labels hold them, and a copy in every instance would take a few
    /// allocations each.
    pub fn set_last(&mut self, b: Heartbeat) {
        self.last = b;
        self.drop_last_ids();
    }

    /// Empties the newest beat's ids and labels (empty ones allocate nothing).
    pub fn drop_last_ids(&mut self) {
        self.last.app_id = String::new();
        self.last.instance_id = String::new();
        self.last.labels = Labels::new();
    }

    /// Counter increases from the previous beat to `b`; a counter that went down was reset
    /// and counts from zero, as Prometheus' `rate` does.
    pub fn deltas_to(&self, b: &Heartbeat) -> Deltas {
        let d = |prev: Option<i64>, cur: Option<i64>| match (prev, cur) {
            (Some(p), Some(c)) if c >= p => (c - p) as f64,
            (Some(_), Some(c)) => c as f64,
            _ => 0.0,
        };
        let p = &self.last;
        Deltas {
            requests: d(p.requests_total, b.requests_total),
            errors: d(p.errors_total, b.errors_total),
            slow: d(p.slow_requests_total, b.slow_requests_total),
            cache_hits: d(p.cache_hits_total, b.cache_hits_total),
            cache_misses: d(p.cache_misses_total, b.cache_misses_total),
        }
    }

    /// Adds a beat's deltas to the rate window; returns requests per second over it.
    pub fn observe_rates(&mut self, b: &Heartbeat, d: &Deltas) -> Option<f64> {
        b.requests_total?;
        // Room is made before the new delta comes, so that a full window (one read back from
        // a state record holds exactly its deltas) does not grow its buffer.
        while self.rate_window.front().is_some_and(|(t, _, _)| *t <= b.sent_at - RATE_WINDOW_MS)
            || self.rate_window.len() >= MAX_RATE_SAMPLES
        {
            self.rate_window.pop_front();
        }
        self.rate_window.push_back((b.sent_at, d.requests, d.errors));
        let requests: f64 = self.rate_window.iter().map(|(_, r, _)| r).sum();
        Some(requests / (RATE_WINDOW_MS as f64 / 1000.0))
    }

    /// errors / requests over the last minute, if at least `min_requests` were served.
    pub fn error_rate(&self, min_requests: f64) -> Option<f64> {
        let (requests, errors) =
            self.rate_window.iter().fold((0.0, 0.0), |(r, e), (_, dr, de)| (r + dr, e + de));
        (requests >= min_requests && requests > 0.0).then(|| errors / requests)
    }

    pub fn record_transition(&mut self, t: i64) {
        self.transitions.push_back(t);
        while self.transitions.len() > MAX_FLAP_TRANSITIONS {
            self.transitions.pop_front();
        }
    }

    /// UP/DOWN transitions in the `window_ms` up to `t`.
    pub fn transitions_within(&self, t: i64, window_ms: i64) -> usize {
        self.transitions.iter().rev().take_while(|&&x| x > t - window_ms).count()
    }

    /// Every open alert of this instance: (kind, severity, started_at).
    pub fn open_alerts(&self) -> Vec<(AlertKind, Severity, i64)> {
        let mut open = Vec::new();
        if let Some(s) = self.late_since {
            open.push((AlertKind::InstanceLate, Severity::Warning, s));
        }
        if let Some(s) = self.down_since {
            open.push((AlertKind::InstanceDown, Severity::Critical, s));
        }
        if let Some((s, _)) = self.restarted {
            open.push((AlertKind::InstanceRestarted, Severity::Warning, s));
        }
        if let Some(s) = self.flapping_since {
            open.push((AlertKind::Flapping, Severity::Warning, s));
        }
        for (rule, state) in Rule::ALL.into_iter().zip(self.rules.iter()) {
            if let (Some(sev), Some(s)) = (state.firing, state.started_at()) {
                open.push((rule.kind(), sev, s));
            }
        }
        open.extend(self.trend.open_alerts());
        open
    }
}

/// One application: its instances and what is open about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppState {
    /// Boxed, so that moving an entry (an instance coming or going) moves a pointer.
    pub instances: VecMap<String, Box<InstanceState>>,
    /// Instances that left with STOPPING.
    pub stopped: BTreeSet<String>,
    /// Deadline at which APP_DOWN fired, while it is open.
    pub app_down: Option<i64>,
    /// Rollup minutes not yet closed, by minute start.
    pub rollups: VecMap<i64, Box<MinuteAcc>>,
    pub last_seen: i64,
    pub labels: Labels,
}

/// What an application's snapshot shows of it besides its newest beat: what, once changed,
/// publishes the snapshot at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    /// UP, DEGRADED, LATE, DOWN or STOPPED.
    pub status: &'static str,
    /// healthy, warning or critical.
    pub health: &'static str,
    pub instances_up: u32,
    pub instances_total: u32,
    pub open_alerts: u32,
}

impl Shown {
    /// A digest of it, to compare with the one last published.
    pub fn digest(&self) -> u64 {
        let counts = [self.instances_up, self.instances_total, self.open_alerts].map(u32::to_le_bytes);
        crate::alert::fnv1a([self.status.as_bytes(), self.health.as_bytes(), counts.as_flattened()])
    }
}

impl AppState {
    /// Its status, health, instance counts and open alerts.
    pub fn shown(&self) -> Shown {
        let total = self.instances.len();
        let up = self.instances.values().filter(|i| i.liveness == Liveness::Up).count();
        let down = self.instances.values().filter(|i| i.liveness == Liveness::Down).count();
        let degraded = self.instances.values().any(|i| i.last.status == InstanceStatus::Degraded);
        let status = if total == 0 {
            "STOPPED"
        } else if down == total {
            "DOWN"
        } else if up == 0 {
            "LATE"
        } else if up < total || degraded {
            "DEGRADED"
        } else {
            "UP"
        };
        let (mut open, mut worst) =
            (usize::from(self.app_down.is_some()), self.app_down.map(|_| Severity::Critical));
        for instance in self.instances.values() {
            for (_, severity, _) in instance.open_alerts() {
                open += 1;
                worst = worst.max(Some(severity));
            }
        }
        let health = match worst {
            Some(Severity::Critical) => "critical",
            Some(Severity::Warning) => "warning",
            None => "healthy",
        };
        Shown {
            status,
            health,
            instances_up: up as u32,
            instances_total: total as u32,
            open_alerts: open as u32,
        }
    }

    pub fn snapshot(&self, app_id: &str, updated_at_ms: i64) -> AppSnapshot {
        self.snapshot_showing(self.shown(), app_id, updated_at_ms)
    }

    /// Its snapshot, `shown` being its [`AppState::shown`] already worked out.
    pub fn snapshot_showing(&self, shown: Shown, app_id: &str, updated_at_ms: i64) -> AppSnapshot {
        let newest = self.instances.iter().max_by_key(|(id, i)| (i.last.sent_at, *id));
        let mut last_figures = BTreeMap::new();
        if let Some((_, i)) = newest {
            let b = &i.last;
            let mut put = |k: &str, v: Option<f64>| {
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    last_figures.insert(k.to_owned(), v);
                }
            };
            put("memory_used_ratio", memory_ratio(b));
            put("memory_used_bytes", b.memory_used_bytes.map(|v| v as f64));
            put("cpu_ratio", b.cpu_ratio.map(f64::from));
            put("disk_used_ratio", b.disk_used_ratio.map(f64::from));
            put("db_pool_in_use", b.db_pool_in_use.map(f64::from));
            put("db_pool_size", b.db_pool_size.map(f64::from));
            put("db_pool_waiting", b.db_pool_waiting.map(f64::from));
            put("latency_p95_ms", b.latency_p95_ms.map(f64::from));
            put("request_queue_depth", b.request_queue_depth.map(f64::from));
            put("sessions_active", b.sessions_active.map(|v| v as f64));
        }
        AppSnapshot {
            app_id: app_id.to_owned(),
            status: shown.status.to_owned(),
            health: shown.health.to_owned(),
            instances_up: shown.instances_up,
            instances_total: shown.instances_total,
            last_seen_ms: (self.last_seen > 0).then_some(self.last_seen),
            last_figures,
            open_alerts: shown.open_alerts,
            labels: self.labels.clone(),
            updated_at_ms,
        }
    }
}

impl AppState {
    /// Takes the instances' trend windows out, in instance order (to write the rest alone).
    pub fn take_windows(&mut self) -> Vec<History> {
        self.instances.iter_mut().map(|(_, i)| std::mem::take(&mut i.trend.window)).collect()
    }

    /// Puts back what [`AppState::take_windows`] took.
    pub fn put_windows(&mut self, windows: Vec<History>) {
        for ((_, instance), window) in self.instances.iter_mut().zip(windows) {
            instance.trend.window = window;
        }
    }

    /// The windows record to write: a tail — each instance's points since the base written
    /// last, `base` naming it — or, when no base holds an instance's window as it is or a
    /// tail would hold `max_tail` points of one, a new base of the windows as of the state
    /// holding beats through offset `through`, which `base` then names.
    pub fn windows_record(
        &mut self,
        app_id: &str,
        base: &mut Option<i64>,
        through: i64,
        max_tail: usize,
    ) -> StateRecordOut {
        let tails: Option<Vec<(&str, History)>> = match *base {
            Some(_) => self
                .instances
                .iter()
                .map(|(id, i)| i.trend.tail().filter(|t| t.len() < max_tail).map(|t| (id.as_str(), t)))
                .collect(),
            None => None,
        };
        if let (Some(tails), Some(base)) = (tails, *base) {
            let by_instance: Vec<(&str, &History)> = tails.iter().map(|(id, t)| (*id, t)).collect();
            return StateRecordOut::windows_tail(app_id, base, &by_instance);
        }
        let record = self.base_record(app_id, through);
        for (_, instance) in self.instances.iter_mut() {
            instance.trend.based();
        }
        *base = Some(through);
        record
    }

    /// A windows base of the application: its instances' whole windows.
    fn base_record(&self, app_id: &str, through: i64) -> StateRecordOut {
        let by_instance: Vec<(&str, &History)> =
            self.instances.iter().map(|(id, i)| (id.as_str(), &i.trend.window)).collect();
        StateRecordOut::windows(app_id, through, &by_instance)
    }

    /// The records the engine writes of this state: the windows base, the snapshot, then
    /// the state record without the windows, holding beats through offset 0 (a copy of the
    /// state is made: for tests and benches).
    pub fn records(&self, app_id: &str, updated_at_ms: i64) -> [StateRecordOut; 3] {
        let mut rest = self.clone();
        rest.take_windows();
        [
            self.base_record(app_id, 0),
            StateRecordOut::snapshot(&self.snapshot(app_id, updated_at_ms)),
            StateRecordOut::state(app_id, updated_at_ms, 0, Some(&rest)),
        ]
    }

    /// Gives the instances the windows a base holds for them, by instance id, then the
    /// points of its tail, if any, as they were added (`c`: the application's trend
    /// settings).
    pub fn put_windows_of(
        &mut self,
        base: Vec<(String, History)>,
        tail: Option<Vec<(String, History)>>,
        c: &TrendConfig,
    ) {
        for (id, window) in base {
            if let Some(instance) = self.instances.get_mut(&id) {
                instance.trend.window = window;
                instance.trend.based();
            }
        }
        for (id, points) in tail.into_iter().flatten() {
            if let Some(instance) = self.instances.get_mut(&id) {
                instance.trend.window.extend(&points, c);
            }
        }
    }
}

/// An `app-state` record as read back, with the engine state of this version.
pub type StateRecord = crate::app_state::StateRecord<AppState>;

/// A windows record as read back.
pub type WindowsRecord = crate::app_state::WindowsRecord<History>;

/// What a partition's `app-state` records restore: each application's state from its newest
/// record and its instances' windows from its newest windows base and tail, the newest
/// watermark they carry, and the partition's newest mark.
#[derive(Debug, Default)]
pub struct RestoredApps {
    pub(super) apps: HashMap<String, AppState>,
    /// The offset of the newest beat each state holds (states of version 8 on).
    pub(super) through: HashMap<String, i64>,
    pub(super) watermark: Option<i64>,
    pub(super) windows: HashMap<String, WindowsRecord>,
    pub(super) tails: HashMap<String, WindowsRecord>,
    pub(super) mark: Option<PartitionMark>,
}

impl RestoredApps {
    /// Takes a record read after the ones before it: an application's state, or (without
    /// state) its end.
    pub fn add(&mut self, r: StateRecord) {
        if r.updated_at_ms > 0 {
            self.watermark = self.watermark.max(Some(r.updated_at_ms));
        }
        match r.state {
            Some(state) => {
                // A record before version 6 holds its windows itself: a windows record read
                // before it (of a newer processor that had the partition first) is older.
                if r.version < 6 {
                    self.windows.remove(&r.app_id);
                    self.tails.remove(&r.app_id);
                }
                match r.through_offset {
                    Some(offset) => self.through.insert(r.app_id.clone(), offset),
                    None => self.through.remove(&r.app_id),
                };
                self.apps.insert(r.app_id, state);
            }
            None => {
                self.apps.remove(&r.app_id);
                self.through.remove(&r.app_id);
                self.windows.remove(&r.app_id);
                self.tails.remove(&r.app_id);
            }
        }
    }

    /// Takes a partition's mark read after the ones before it.
    pub fn add_mark(&mut self, mark: PartitionMark) {
        self.mark = Some(mark);
    }

    /// Takes a windows record, a base or a tail, read after the ones before it.
    pub fn add_windows(&mut self, r: WindowsRecord) {
        match r.tail {
            true => self.tails.insert(r.app_id.clone(), r),
            false => self.windows.insert(r.app_id.clone(), r),
        };
    }

    /// Takes a record as the engine wrote it (of this version, any kind; a snapshot
    /// restores nothing).
    pub fn add_written(&mut self, r: &StateRecordOut) -> Result<(), StateRecordError> {
        if r.is_windows() {
            self.add_windows(WindowsRecord::decode(&r.header)?);
        } else if r.is_partition() {
            self.add_mark(PartitionMark::decode(&r.header)?);
        } else if r.is_state() {
            self.add(StateRecord::decode(&r.value, Some(&r.header))?);
        }
        Ok(())
    }
}
