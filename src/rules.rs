//! Threshold rules: a figure above its warning or critical level for a `for` duration of
//! event time fires; it resolves only below its (lower) resolve level, so it does not flap;
//! warning → critical is a new FIRING of the same alert id.
//!
//! Per-application overrides match by app_id glob or by label (`[[rules.override]]` in the
//! config). The figures themselves (ratios, rates from counter deltas) are computed by the
//! caller; a rule only sees `(event time, value)`.

use serde::{Deserialize, Serialize};

use crate::alert::{AlertKind, Severity};

/// One rule's levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
    /// How long (event time, ms) the figure must stay above a level before it fires.
    pub for_ms: i64,
    /// Once firing, the figure must fall below this to resolve.
    pub resolve_below: f64,
}

/// The threshold rules, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSet {
    /// memory_used_bytes / memory_limit_bytes.
    pub memory: Thresholds,
    /// cpu_ratio.
    pub cpu: Thresholds,
    /// db_pool_in_use / db_pool_size; any waiter counts as a full pool.
    pub db_pool: Thresholds,
    /// disk_used_ratio.
    pub disk: Thresholds,
    /// latency_p95_ms.
    pub latency_p95_ms: Thresholds,
    /// request_queue_depth.
    pub queue_depth: Thresholds,
    /// errors / requests over the last minute (from counter deltas).
    pub error_rate: Thresholds,
    /// Fewest requests in the last minute for the error rate to be judged.
    pub error_rate_min_requests: f64,
    /// db_query_p95_ms.
    pub db_query_p95_ms: Thresholds,
}

const MINUTE: i64 = 60_000;

impl Default for RuleSet {
    fn default() -> Self {
        let t = |warning, critical, for_ms, resolve_below| Thresholds {
            warning,
            critical,
            for_ms,
            resolve_below,
        };
        RuleSet {
            memory: t(0.80, 0.90, MINUTE, 0.75),
            cpu: t(0.80, 0.90, 5 * MINUTE, 0.75),
            db_pool: t(0.90, 0.95, MINUTE, 0.85),
            disk: t(0.85, 0.95, 0, 0.80),
            latency_p95_ms: t(5_000.0, 10_000.0, MINUTE, 4_000.0),
            queue_depth: t(50.0, 100.0, MINUTE, 40.0),
            error_rate: t(0.05, 0.10, MINUTE, 0.04),
            error_rate_min_requests: 20.0,
            db_query_p95_ms: t(2_000.0, 5_000.0, MINUTE, 1_500.0),
        }
    }
}

impl RuleSet {
    /// The threshold rules in evaluation order.
    pub fn rules(&self) -> [(AlertKind, Thresholds); 8] {
        [
            (AlertKind::MemoryHigh, self.memory),
            (AlertKind::CpuHigh, self.cpu),
            (AlertKind::DbPoolSaturated, self.db_pool),
            (AlertKind::DiskHigh, self.disk),
            (AlertKind::SlowResponses, self.latency_p95_ms),
            (AlertKind::QueueBacklog, self.queue_depth),
            (AlertKind::ErrorRateHigh, self.error_rate),
            (AlertKind::SlowQueries, self.db_query_p95_ms),
        ]
    }

    pub fn validate(&self) -> Result<(), String> {
        for (kind, t) in self.rules() {
            if !(t.resolve_below <= t.warning && t.warning <= t.critical) || t.for_ms < 0 {
                return Err(format!(
                    "{}: needs resolve_below <= warning <= critical and for_ms >= 0",
                    kind.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// What one evaluation of a rule decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Fires (or escalates) at this severity; `started_at` is when the condition began.
    Fire { severity: Severity, started_at: i64 },
    /// Resolves the alert that fired at `severity`.
    Resolve { severity: Severity, started_at: i64 },
}

/// The state of one rule on one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Since when the figure has been at or above warning (event time).
    pub warning_since: Option<i64>,
    /// Since when it has been at or above critical.
    pub critical_since: Option<i64>,
    /// The severity it fires at, if firing.
    pub firing: Option<Severity>,
    /// When the firing condition began.
    pub started_at: Option<i64>,
}

impl RuleState {
    /// Feeds the figure observed at event time `t`.
    pub fn observe(&mut self, t: i64, value: f64, th: &Thresholds) -> Option<Transition> {
        if value.is_nan() {
            return None;
        }
        if value >= th.critical {
            self.critical_since.get_or_insert(t);
        } else {
            self.critical_since = None;
        }
        if value >= th.warning {
            self.warning_since.get_or_insert(t);
        } else {
            self.warning_since = None;
        }
        let held = |since: Option<i64>| since.is_some_and(|s| t - s >= th.for_ms);
        match self.firing {
            Some(severity) if value < th.resolve_below => {
                let started_at = self.started_at.take().unwrap_or(t);
                self.firing = None;
                Some(Transition::Resolve { severity, started_at })
            }
            Some(Severity::Warning) if held(self.critical_since) => {
                self.firing = Some(Severity::Critical);
                Some(Transition::Fire {
                    severity: Severity::Critical,
                    started_at: self.started_at.unwrap_or(t),
                })
            }
            Some(_) => None,
            None => {
                let severity = if held(self.critical_since) {
                    Severity::Critical
                } else if held(self.warning_since) {
                    Severity::Warning
                } else {
                    return None;
                };
                let started_at = self.warning_since.or(self.critical_since).unwrap_or(t);
                self.firing = Some(severity);
                self.started_at = Some(started_at);
                Some(Transition::Fire { severity, started_at })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Thresholds =
        Thresholds { warning: 0.8, critical: 0.9, for_ms: 5 * MINUTE, resolve_below: 0.75 };

    fn feed(
        state: &mut RuleState,
        th: &Thresholds,
        from: i64,
        to: i64,
        step: i64,
        value: f64,
    ) -> Vec<(i64, Transition)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            if let Some(tr) = state.observe(t, value, th) {
                out.push((t, tr));
            }
            t += step;
        }
        out
    }

    #[test]
    fn four_minutes_above_critical_does_not_fire_six_does() {
        let mut s = RuleState::default();
        assert!(feed(&mut s, &CPU, 0, 4 * MINUTE, 5_000, 0.95).is_empty());
        assert!(feed(&mut s, &CPU, 4 * MINUTE + 5_000, 4 * MINUTE + 60_000, 5_000, 0.3).is_empty());
        let mut s = RuleState::default();
        let fired = feed(&mut s, &CPU, 0, 6 * MINUTE, 5_000, 0.95);
        assert_eq!(
            fired,
            vec![(5 * MINUTE, Transition::Fire { severity: Severity::Critical, started_at: 0 })]
        );
    }

    #[test]
    fn hysteresis_keeps_firing_until_below_the_resolve_level() {
        let mut s = RuleState::default();
        feed(&mut s, &CPU, 0, 5 * MINUTE, 5_000, 0.85);
        assert_eq!(s.firing, Some(Severity::Warning));
        assert!(
            feed(&mut s, &CPU, 5 * MINUTE + 5_000, 20 * MINUTE, 5_000, 0.77).is_empty(),
            "0.77 is above 0.75"
        );
        let resolved = feed(&mut s, &CPU, 20 * MINUTE + 5_000, 20 * MINUTE + 5_000, 5_000, 0.7);
        assert_eq!(
            resolved,
            vec![(20 * MINUTE + 5_000, Transition::Resolve { severity: Severity::Warning, started_at: 0 })]
        );
        assert_eq!(s.firing, None);
    }

    #[test]
    fn escalates_from_warning_to_critical_once() {
        let mut s = RuleState::default();
        let th = Thresholds { warning: 0.8, critical: 0.9, for_ms: MINUTE, resolve_below: 0.75 };
        let a = feed(&mut s, &th, 0, MINUTE, 5_000, 0.85);
        assert_eq!(a, vec![(MINUTE, Transition::Fire { severity: Severity::Warning, started_at: 0 })]);
        let b = feed(&mut s, &th, MINUTE + 5_000, 3 * MINUTE, 5_000, 0.95);
        assert_eq!(
            b,
            vec![(2 * MINUTE + 5_000, Transition::Fire { severity: Severity::Critical, started_at: 0 })]
        );
    }

    #[test]
    fn zero_for_fires_at_once() {
        let mut s = RuleState::default();
        let disk = RuleSet::default().disk;
        assert_eq!(
            s.observe(7, 0.96, &disk),
            Some(Transition::Fire { severity: Severity::Critical, started_at: 7 })
        );
    }

    #[test]
    fn a_dip_restarts_the_for_clock() {
        let mut s = RuleState::default();
        let th = Thresholds { warning: 0.8, critical: 0.9, for_ms: MINUTE, resolve_below: 0.75 };
        assert!(feed(&mut s, &th, 0, 50_000, 5_000, 0.85).is_empty());
        assert!(s.observe(55_000, 0.5, &th).is_none());
        assert!(feed(&mut s, &th, 60_000, 115_000, 5_000, 0.85).is_empty());
        assert!(s.observe(120_000, 0.85, &th).is_some());
    }

    #[test]
    fn defaults_are_consistent() {
        RuleSet::default().validate().unwrap();
    }
}
