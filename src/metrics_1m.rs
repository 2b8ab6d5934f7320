//! The `metrics-1m` topic's records (JSON, key app_id): one closed minute of one
//! application, as the sink stores it in `metric_rollup_1m`.

use serde::{Deserialize, Serialize};

/// One closed minute of one application, as published on `metrics-1m` (JSON) and stored in
/// `metric_rollup_1m`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    pub app_id: String,
    /// Start of the minute, ms since the epoch.
    pub minute: i64,
    pub beats: u32,
    pub instances: u32,
    pub memory_used_bytes_mean: Option<f64>,
    pub memory_used_bytes_max: Option<i64>,
    pub memory_used_ratio_max: Option<f64>,
    pub cpu_ratio_mean: Option<f64>,
    pub cpu_ratio_max: Option<f64>,
    pub disk_used_ratio_max: Option<f64>,
    pub db_pool_in_use_mean: Option<f64>,
    pub db_pool_in_use_max: Option<i32>,
    pub db_pool_waiting_max: Option<i32>,
    pub threads_mean: Option<f64>,
    pub threads_max: Option<i32>,
    pub open_fds_mean: Option<f64>,
    pub open_fds_max: Option<i32>,
    pub request_queue_depth_max: Option<i32>,
    pub sessions_active_mean: Option<f64>,
    pub sessions_active_max: Option<i64>,
    pub latency_p95_ms_mean: Option<f64>,
    pub latency_p95_ms_max: Option<f64>,
    pub latency_p99_ms_max: Option<f64>,
    pub db_query_p95_ms_max: Option<f64>,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub slow_requests_per_s: f64,
    pub error_ratio: Option<f64>,
    pub cache_hit_ratio: Option<f64>,
}
