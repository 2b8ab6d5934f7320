//! The `[rules]` section: the eight threshold rules and the per-application overrides
//! (`[[rules.overrides]]`, matched by app_id glob or by label).

use serde::{Deserialize, Serialize};

use super::RuleError;
use crate::alert::AlertKind;

/// One threshold rule. [`Rule::ALL`] is the order of every per-rule array: a profile's
/// thresholds, an instance's rule states, and the states as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// memory_used_bytes / memory_limit_bytes.
    Memory,
    /// cpu_ratio.
    Cpu,
    /// db_pool_in_use / db_pool_size; any waiter counts as a full pool.
    DbPool,
    /// disk_used_ratio.
    Disk,
    /// latency_p95_ms.
    LatencyP95,
    /// request_queue_depth.
    QueueDepth,
    /// errors / requests over the last minute.
    ErrorRate,
    /// db_query_p95_ms.
    DbQueryP95,
}

impl Rule {
    /// How many rules there are.
    pub const COUNT: usize = 8;

    /// Every rule, in evaluation order.
    pub const ALL: [Rule; Rule::COUNT] = [
        Rule::Memory,
        Rule::Cpu,
        Rule::DbPool,
        Rule::Disk,
        Rule::LatencyP95,
        Rule::QueueDepth,
        Rule::ErrorRate,
        Rule::DbQueryP95,
    ];

    /// The rule's place in [`Rule::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind of the alerts it raises.
    pub fn kind(self) -> AlertKind {
        match self {
            Rule::Memory => AlertKind::MemoryHigh,
            Rule::Cpu => AlertKind::CpuHigh,
            Rule::DbPool => AlertKind::DbPoolSaturated,
            Rule::Disk => AlertKind::DiskHigh,
            Rule::LatencyP95 => AlertKind::SlowResponses,
            Rule::QueueDepth => AlertKind::QueueBacklog,
            Rule::ErrorRate => AlertKind::ErrorRateHigh,
            Rule::DbQueryP95 => AlertKind::SlowQueries,
        }
    }

    /// Its key in `[rules]` and in an override.
    pub fn key(self) -> &'static str {
        match self {
            Rule::Memory => "memory",
            Rule::Cpu => "cpu",
            Rule::DbPool => "db_pool",
            Rule::Disk => "disk",
            Rule::LatencyP95 => "latency_p95_ms",
            Rule::QueueDepth => "queue_depth",
            Rule::ErrorRate => "error_rate",
            Rule::DbQueryP95 => "db_query_p95_ms",
        }
    }
}

/// One rule's levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// WARNING once the figure has stayed at or above this for `for_ms`.
    pub warning: f64,
    /// CRITICAL once the figure has stayed at or above this for `for_ms`.
    pub critical: f64,
    /// How long (event time, ms) the figure must stay above a level before it fires.
    pub for_ms: i64,
    /// Once firing, the figure must fall below this to resolve.
    pub resolve_below: f64,
}

impl Thresholds {
    /// Whether the levels are ordered (resolve_below ≤ warning ≤ critical) and `for_ms` is
    /// not negative.
    pub fn is_consistent(&self) -> bool {
        self.resolve_below <= self.warning && self.warning <= self.critical && self.for_ms >= 0
    }
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
    /// Per-application overrides, applied in order (a later match wins).
    pub overrides: Vec<RuleOverride>,
}

/// Replaces some fields of one rule's thresholds; a field left out keeps its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdsOverride {
    /// Replaces [`Thresholds::warning`].
    pub warning: Option<f64>,
    /// Replaces [`Thresholds::critical`].
    pub critical: Option<f64>,
    /// Replaces [`Thresholds::for_ms`].
    pub for_ms: Option<i64>,
    /// Replaces [`Thresholds::resolve_below`].
    pub resolve_below: Option<f64>,
}

impl ThresholdsOverride {
    /// Overwrites the fields of `t` this override sets.
    pub fn apply(&self, t: &mut Thresholds) {
        t.warning = self.warning.unwrap_or(t.warning);
        t.critical = self.critical.unwrap_or(t.critical);
        t.for_ms = self.for_ms.unwrap_or(t.for_ms);
        t.resolve_below = self.resolve_below.unwrap_or(t.resolve_below);
    }
}

/// Settings for the applications whose app_id matches `app` (a glob) and whose labels hold
/// `label` (`key=value`); either may be left out, both must match when given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleOverride {
    /// A glob the app_id must match (`batch-*`).
    pub app: Option<String>,
    /// A label the application must carry, `key=value`.
    pub label: Option<String>,
    /// Replaces `detection.late_factor`.
    pub late_factor: Option<f64>,
    /// Replaces `detection.down_grace_ms`.
    pub down_grace_ms: Option<i64>,
    /// Turns leak detection off (or on) for the matching applications.
    pub leak_detection: Option<bool>,
    /// Phi-accrual liveness for the matching applications (0 = fixed late_factor).
    pub phi_threshold: Option<f64>,
    /// Levels of the memory rule.
    pub memory: Option<ThresholdsOverride>,
    /// Levels of the CPU rule.
    pub cpu: Option<ThresholdsOverride>,
    /// Levels of the database pool rule.
    pub db_pool: Option<ThresholdsOverride>,
    /// Levels of the disk rule.
    pub disk: Option<ThresholdsOverride>,
    /// Levels of the response latency rule.
    pub latency_p95_ms: Option<ThresholdsOverride>,
    /// Levels of the request queue rule.
    pub queue_depth: Option<ThresholdsOverride>,
    /// Levels of the error rate rule.
    pub error_rate: Option<ThresholdsOverride>,
    /// Levels of the slow query rule.
    pub db_query_p95_ms: Option<ThresholdsOverride>,
}

impl RuleOverride {
    /// What this override sets of `rule`'s levels.
    pub fn thresholds(&self, rule: Rule) -> Option<ThresholdsOverride> {
        match rule {
            Rule::Memory => self.memory,
            Rule::Cpu => self.cpu,
            Rule::DbPool => self.db_pool,
            Rule::Disk => self.disk,
            Rule::LatencyP95 => self.latency_p95_ms,
            Rule::QueueDepth => self.queue_depth,
            Rule::ErrorRate => self.error_rate,
            Rule::DbQueryP95 => self.db_query_p95_ms,
        }
    }
}

const MINUTE: i64 = crate::minute::MINUTE_MS;

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
            overrides: Vec::new(),
        }
    }
}

impl RuleSet {
    /// The levels of `rule`.
    pub fn thresholds(&self, rule: Rule) -> Thresholds {
        match rule {
            Rule::Memory => self.memory,
            Rule::Cpu => self.cpu,
            Rule::DbPool => self.db_pool,
            Rule::Disk => self.disk,
            Rule::LatencyP95 => self.latency_p95_ms,
            Rule::QueueDepth => self.queue_depth,
            Rule::ErrorRate => self.error_rate,
            Rule::DbQueryP95 => self.db_query_p95_ms,
        }
    }

    /// The threshold rules in evaluation order.
    pub fn rules(&self) -> [(Rule, Thresholds); Rule::COUNT] {
        Rule::ALL.map(|rule| (rule, self.thresholds(rule)))
    }

    /// The first rule whose levels are not ordered.
    pub fn validate(&self) -> Result<(), RuleError> {
        for (rule, t) in self.rules() {
            if !t.is_consistent() {
                return Err(RuleError::new(
                    format!("rules.{}", rule.key()),
                    format!(
                        "{}: needs resolve_below <= warning <= critical and for_ms >= 0",
                        rule.kind().as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_consistent() {
        RuleSet::default().validate().unwrap();
    }

    #[test]
    fn every_rule_has_its_place_kind_and_key() {
        for (i, rule) in Rule::ALL.into_iter().enumerate() {
            assert_eq!(rule.index(), i);
            let mut set = RuleSet::default();
            let key = rule.key();
            let table = toml::Table::try_from(&set).unwrap();
            assert!(table.contains_key(key), "{key}");
            set.overrides.push(RuleOverride::default());
            assert_eq!(set.overrides[0].thresholds(rule), None);
        }
        let kinds: std::collections::BTreeSet<&str> = Rule::ALL.iter().map(|r| r.kind().as_str()).collect();
        assert_eq!(kinds.len(), Rule::COUNT);
    }
}
