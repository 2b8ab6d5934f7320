//! The `[detection]` section: event-time and liveness settings every application starts
//! from (per-application overrides refine the liveness ones).

use serde::{Deserialize, Serialize};

use super::RuleError;
use crate::watermark::WatermarkConfig;

/// Most UP/DOWN transition times kept per instance: the flapping rule counts them, so
/// `flap_transitions` may not ask for more.
pub const MAX_FLAP_TRANSITIONS: usize = 32;

/// How the engine decides (`[detection]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Event time a beat may arrive after newer ones and still count, ms.
    pub allowed_lateness_ms: i64,
    /// A beat stamped further than this ahead of its broker timestamp, or of the partition's
    /// frontier carried by the broker's clock, is kept out of the watermark (and counted), ms.
    pub max_skew_ms: i64,
    /// Live data (its newest event within the allowed lateness of the broker's clock) has
    /// its liveness deadlines judged this long after the broker's clock passed them, ms.
    pub append_slack_ms: i64,
    /// LATE once no beat for late_factor × interval.
    pub late_factor: f64,
    /// DOWN this long after LATE, ms; 0 means max(3 × interval, 30 s).
    pub down_grace_ms: i64,
    /// An instance DOWN this long is forgotten (its alerts resolve), ms.
    pub forget_after_ms: i64,
    /// INSTANCE_RESTARTED resolves after this long without another restart, ms.
    pub restart_quiet_ms: i64,
    /// FLAPPING once an instance makes this many UP/DOWN transitions within
    /// `flap_window_ms`; 0 turns the rule off.
    pub flap_transitions: u32,
    /// The window the transitions are counted in, and the quiet time that ends FLAPPING, ms.
    pub flap_window_ms: i64,
    /// Phi-accrual liveness: LATE once phi (from the instance's own inter-arrival times)
    /// passes this; 0 = off, LATE after late_factor x interval (per app: overrides).
    pub phi_threshold: f64,
    /// Smallest standard deviation of the inter-arrival times phi assumes, ms.
    pub phi_min_std_ms: f64,
    /// Inter-arrival times the phi estimate is weighted over.
    pub phi_window: u32,
    /// An application's snapshot (the `application` table's row) is published when what it
    /// shows changes (status, health, instance counts, open alerts, labels), and otherwise
    /// once its newest beat is this much newer than the last one published, ms; 0: at
    /// every change.
    pub snapshot_interval_ms: i64,
    /// Longest an application's state may go unwritten to `app-state` while only its beats
    /// changed it, in event time, ms: a restore replays those beats from `heartbeats`. 0:
    /// written in every transaction that changed it.
    pub state_interval_ms: i64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            allowed_lateness_ms: 5_000,
            max_skew_ms: 60_000,
            append_slack_ms: 500,
            late_factor: 2.0,
            down_grace_ms: 0,
            forget_after_ms: 24 * 3_600_000,
            restart_quiet_ms: 10 * 60_000,
            flap_transitions: 6,
            flap_window_ms: 15 * 60_000,
            phi_threshold: 0.0,
            phi_min_std_ms: 500.0,
            phi_window: 100,
            snapshot_interval_ms: 30_000,
            state_interval_ms: 30_000,
        }
    }
}

impl DetectionConfig {
    /// The first problem with these settings.
    pub fn validate(&self) -> Result<(), RuleError> {
        let bad = |k: &str, p: &str| Err(RuleError::new(format!("detection.{k}"), p));
        if !(0..=self.allowed_lateness_ms).contains(&self.append_slack_ms) {
            return bad("append_slack_ms", "must be between 0 and allowed_lateness_ms");
        }
        if self.late_factor.is_nan() || self.late_factor < 1.0 {
            return bad("late_factor", "must be at least 1");
        }
        if self.flap_transitions as usize > MAX_FLAP_TRANSITIONS {
            return bad("flap_transitions", "must be at most 32");
        }
        if self.flap_window_ms <= 0 {
            return bad("flap_window_ms", "must be positive");
        }
        if self.phi_threshold.is_nan() || !(0.0..=30.0).contains(&self.phi_threshold) {
            return bad("phi_threshold", "must be 0 (off) or up to 30");
        }
        if self.phi_min_std_ms.is_nan() || self.phi_min_std_ms <= 0.0 {
            return bad("phi_min_std_ms", "must be positive");
        }
        if self.phi_window < 2 {
            return bad("phi_window", "must be at least 2");
        }
        if self.snapshot_interval_ms < 0 {
            return bad("snapshot_interval_ms", "must be 0 (every change) or positive");
        }
        if self.state_interval_ms < 0 {
            return bad("state_interval_ms", "must be 0 (every change) or positive");
        }
        Ok(())
    }

    /// The settings of the partition's watermark.
    pub fn watermark(&self) -> WatermarkConfig {
        WatermarkConfig {
            allowed_lateness_ms: self.allowed_lateness_ms,
            max_skew_ms: self.max_skew_ms,
            append_slack_ms: self.append_slack_ms,
        }
    }
}
