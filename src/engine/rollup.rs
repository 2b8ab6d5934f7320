//! One-minute event-time rollups per application: count, mean and max of each gauge, and
//! rates from counter deltas. A minute is emitted, as a [`Rollup`], when the watermark passes
//! its end.

use serde::{Deserialize, Serialize};

use super::vec_map::VecMap;
use crate::heartbeat::Heartbeat;
use crate::metrics_1m::Rollup;
use crate::minute::{MINUTE_MS, minute_of};

/// Counter increases since an instance's previous beat (a reset counts from zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Deltas {
    pub requests: f64,
    pub errors: f64,
    pub slow: f64,
    pub cache_hits: f64,
    pub cache_misses: f64,
}

/// A running mean and max.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Gauge {
    pub n: u32,
    pub sum: f64,
    pub max: f64,
}

impl Gauge {
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.max = if self.n == 0 { v } else { self.max.max(v) };
            self.sum += v;
            self.n += 1;
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }

    pub fn maximum(&self) -> Option<f64> {
        (self.n > 0).then_some(self.max)
    }
}

/// The minute being accumulated for one application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteAcc {
    pub minute: i64,
    pub beats: u32,
    /// The instances that beat in the minute, sorted and each once: a set, kept in a vector
    /// (for a few instances a fraction of a B-tree set's node), read and written as one.
    #[serde(deserialize_with = "sorted_ids")]
    pub instances: Vec<String>,
    pub memory_used_bytes: Gauge,
    pub memory_used_ratio: Gauge,
    pub cpu_ratio: Gauge,
    pub disk_used_ratio: Gauge,
    pub db_pool_in_use: Gauge,
    pub db_pool_waiting: Gauge,
    pub threads: Gauge,
    pub open_fds: Gauge,
    pub request_queue_depth: Gauge,
    pub sessions_active: Gauge,
    pub latency_p95_ms: Gauge,
    pub latency_p99_ms: Gauge,
    pub db_query_p95_ms: Gauge,
    pub deltas: Deltas,
}

/// Instance ids as persisted, made a sorted set whatever the input.
fn sorted_ids<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let mut ids = Vec::<String>::deserialize(deserializer)?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

impl MinuteAcc {
    pub fn new(minute: i64) -> MinuteAcc {
        MinuteAcc { minute, ..MinuteAcc::default() }
    }

    pub fn add(&mut self, b: &Heartbeat, d: &Deltas) {
        let int = |v: Option<i32>| v.map(f64::from);
        let long = |v: Option<i64>| v.map(|x| x as f64);
        let float = |v: Option<f32>| v.map(f64::from);
        self.beats += 1;
        if let Err(i) = self.instances.binary_search(&b.instance_id) {
            self.instances.insert(i, b.instance_id.clone());
        }
        self.memory_used_bytes.add(long(b.memory_used_bytes));
        self.memory_used_ratio.add(memory_ratio(b));
        self.cpu_ratio.add(float(b.cpu_ratio));
        self.disk_used_ratio.add(float(b.disk_used_ratio));
        self.db_pool_in_use.add(int(b.db_pool_in_use));
        self.db_pool_waiting.add(int(b.db_pool_waiting));
        self.threads.add(int(b.threads));
        self.open_fds.add(int(b.open_fds));
        self.request_queue_depth.add(int(b.request_queue_depth));
        self.sessions_active.add(long(b.sessions_active));
        self.latency_p95_ms.add(float(b.latency_p95_ms));
        self.latency_p99_ms.add(float(b.latency_p99_ms));
        self.db_query_p95_ms.add(float(b.db_query_p95_ms));
        self.deltas.requests += d.requests;
        self.deltas.errors += d.errors;
        self.deltas.slow += d.slow;
        self.deltas.cache_hits += d.cache_hits;
        self.deltas.cache_misses += d.cache_misses;
    }

    pub fn finish(&self, app_id: &str) -> Rollup {
        let per_s = |x: f64| x / (MINUTE_MS as f64 / 1000.0);
        let d = &self.deltas;
        Rollup {
            app_id: app_id.to_owned(),
            minute: self.minute,
            beats: self.beats,
            instances: self.instances.len() as u32,
            memory_used_bytes_mean: self.memory_used_bytes.mean(),
            memory_used_bytes_max: self.memory_used_bytes.maximum().map(|v| v as i64),
            memory_used_ratio_max: self.memory_used_ratio.maximum(),
            cpu_ratio_mean: self.cpu_ratio.mean(),
            cpu_ratio_max: self.cpu_ratio.maximum(),
            disk_used_ratio_max: self.disk_used_ratio.maximum(),
            db_pool_in_use_mean: self.db_pool_in_use.mean(),
            db_pool_in_use_max: self.db_pool_in_use.maximum().map(|v| v as i32),
            db_pool_waiting_max: self.db_pool_waiting.maximum().map(|v| v as i32),
            threads_mean: self.threads.mean(),
            threads_max: self.threads.maximum().map(|v| v as i32),
            open_fds_mean: self.open_fds.mean(),
            open_fds_max: self.open_fds.maximum().map(|v| v as i32),
            request_queue_depth_max: self.request_queue_depth.maximum().map(|v| v as i32),
            sessions_active_mean: self.sessions_active.mean(),
            sessions_active_max: self.sessions_active.maximum().map(|v| v as i64),
            latency_p95_ms_mean: self.latency_p95_ms.mean(),
            latency_p95_ms_max: self.latency_p95_ms.maximum(),
            latency_p99_ms_max: self.latency_p99_ms.maximum(),
            db_query_p95_ms_max: self.db_query_p95_ms.maximum(),
            requests_per_s: per_s(d.requests),
            errors_per_s: per_s(d.errors),
            slow_requests_per_s: per_s(d.slow),
            error_ratio: (d.requests > 0.0).then(|| d.errors / d.requests),
            cache_hit_ratio: (d.cache_hits + d.cache_misses > 0.0)
                .then(|| d.cache_hits / (d.cache_hits + d.cache_misses)),
        }
    }
}

/// What became of a beat offered to its minute's rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// It opened its minute (starting at this time), which must be closed later.
    Opened(i64),
    /// It joined its minute, already open.
    Added,
    /// Its minute was already emitted: it counts nowhere.
    TooLate,
}

/// Adds a beat (and its counters' `deltas`) to its minute among an application's open
/// `rollups`, unless the watermark `wm` passed that minute's end and it was emitted.
pub fn join(rollups: &mut VecMap<i64, Box<MinuteAcc>>, b: &Heartbeat, deltas: &Deltas, wm: i64) -> Joined {
    let minute = minute_of(b.sent_at);
    if minute + MINUTE_MS <= wm && !rollups.contains_key(&minute) {
        return Joined::TooLate;
    }
    let mut joined = Joined::Added;
    rollups
        .get_or_insert_with(&minute, || {
            joined = Joined::Opened(minute);
            Box::new(MinuteAcc::new(minute))
        })
        .add(b, deltas);
    joined
}

/// memory_used_bytes / memory_limit_bytes, when both are known.
pub fn memory_ratio(b: &Heartbeat) -> Option<f64> {
    match (b.memory_used_bytes, b.memory_limit_bytes) {
        (Some(used), Some(limit)) if limit > 0 => Some(used as f64 / limit as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_means_maxes_and_rates() {
        let mut acc = MinuteAcc::new(0);
        let mut a = Heartbeat::new("app", "i1", 1, 1_000);
        a.cpu_ratio = Some(0.5);
        a.memory_used_bytes = Some(50);
        a.memory_limit_bytes = Some(100);
        let mut b = Heartbeat::new("app", "i2", 1, 2_000);
        b.cpu_ratio = Some(0.25);
        acc.add(&a, &Deltas { requests: 600.0, errors: 6.0, ..Deltas::default() });
        acc.add(
            &b,
            &Deltas { requests: 600.0, errors: 0.0, cache_hits: 3.0, cache_misses: 1.0, ..Deltas::default() },
        );
        let r = acc.finish("app");
        assert_eq!(r.beats, 2);
        assert_eq!(r.instances, 2);
        assert_eq!(r.cpu_ratio_mean, Some(0.375));
        assert_eq!(r.cpu_ratio_max, Some(0.5));
        assert_eq!(r.memory_used_ratio_max, Some(0.5));
        assert_eq!(r.requests_per_s, 20.0);
        assert_eq!(r.error_ratio, Some(0.005));
        assert_eq!(r.cache_hit_ratio, Some(0.75));
        assert_eq!(r.threads_max, None);
    }
}
