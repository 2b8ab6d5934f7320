//! The heartbeat record (`io.pulsewatch.Heartbeat`) and the rules a valid one obeys.
//!
//! Decoding lives in [`crate::codec`]; this module owns the type and [`Heartbeat::validate`],
//! which both encodings share so that JSON and Avro accept exactly the same records.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::labels::Labels;

/// Longest accepted `app_id` and `instance_id`, in characters.
pub const MAX_ID_CHARS: usize = 200;
/// Most labels a beat may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in characters.
pub const MAX_LABEL_KEY_CHARS: usize = 128;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE_CHARS: usize = 1_024;
/// Largest encoded record accepted, in bytes: above any beat within the limits above (the
/// labels take at most ≈ 295 KB of UTF-8), and half the topics' 1 MB, so that whatever
/// carries a beat on (a dead letter, an application's state) stays within the producer's limit.
pub const MAX_RECORD_BYTES: usize = 512 * 1024;
/// Shortest promised interval: one second.
pub const MIN_INTERVAL_MS: i32 = 1_000;
/// Longest promised interval: one day.
pub const MAX_INTERVAL_MS: i32 = 86_400_000;

/// What the instance says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    Starting,
    Ok,
    Degraded,
    /// A clean shutdown: the instance leaves without a missed-beat alert.
    Stopping,
}

impl InstanceStatus {
    /// Symbols in Avro enum order (`schemas/heartbeat.avsc`).
    pub const SYMBOLS: [InstanceStatus; 4] =
        [InstanceStatus::Starting, InstanceStatus::Ok, InstanceStatus::Degraded, InstanceStatus::Stopping];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Starting => "STARTING",
            InstanceStatus::Ok => "OK",
            InstanceStatus::Degraded => "DEGRADED",
            InstanceStatus::Stopping => "STOPPING",
        }
    }

    /// Index of the symbol in the Avro enum.
    pub fn avro_index(self) -> i32 {
        self as i32
    }
}

/// One beat of one instance. Field names are the contract of DESIGN.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub app_id: String,
    pub instance_id: String,
    /// Per-instance counter; a reset means the instance restarted.
    pub seq: i64,
    /// Event time in milliseconds since the Unix epoch, on the producer's clock.
    pub sent_at: i64,
    /// The period the producer promises, in milliseconds.
    pub interval_ms: i32,
    pub status: InstanceStatus,
    #[serde(default)]
    pub memory_used_bytes: Option<i64>,
    #[serde(default)]
    pub memory_limit_bytes: Option<i64>,
    #[serde(default)]
    pub cpu_ratio: Option<f32>,
    #[serde(default)]
    pub disk_used_ratio: Option<f32>,
    #[serde(default)]
    pub db_pool_size: Option<i32>,
    #[serde(default)]
    pub db_pool_in_use: Option<i32>,
    #[serde(default)]
    pub db_pool_waiting: Option<i32>,
    #[serde(default)]
    pub threads: Option<i32>,
    #[serde(default)]
    pub open_fds: Option<i32>,
    #[serde(default)]
    pub request_queue_depth: Option<i32>,
    #[serde(default)]
    pub sessions_active: Option<i64>,
    #[serde(default)]
    pub requests_total: Option<i64>,
    #[serde(default)]
    pub errors_total: Option<i64>,
    #[serde(default)]
    pub slow_requests_total: Option<i64>,
    #[serde(default)]
    pub cache_hits_total: Option<i64>,
    #[serde(default)]
    pub cache_misses_total: Option<i64>,
    #[serde(default)]
    pub latency_p95_ms: Option<f32>,
    #[serde(default)]
    pub latency_p99_ms: Option<f32>,
    #[serde(default)]
    pub db_query_p95_ms: Option<f32>,
    #[serde(default)]
    pub labels: Labels,
}

/// Why a well-formed record is still not a heartbeat pulsewatch accepts.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ValidationError {
    #[error("app_id is empty")]
    EmptyAppId,
    #[error("app_id has {0} characters, more than the {MAX_ID_CHARS} allowed")]
    AppIdTooLong(usize),
    #[error("instance_id is empty")]
    EmptyInstanceId,
    #[error("instance_id has {0} characters, more than the {MAX_ID_CHARS} allowed")]
    InstanceIdTooLong(usize),
    #[error("interval_ms {0} is outside 1 s .. 1 day ({MIN_INTERVAL_MS}..={MAX_INTERVAL_MS})")]
    IntervalOutOfRange(i32),
    #[error("{field} {value} is outside 0..1")]
    RatioOutOfRange { field: &'static str, value: f32 },
    #[error("{field} is negative ({value})")]
    Negative { field: &'static str, value: f64 },
    #[error("{field} is not a number")]
    NotANumber { field: &'static str },
    #[error("{field} is infinite")]
    NotFinite { field: &'static str },
    #[error("{field} holds a NUL character, which the stores cannot keep")]
    NulCharacter { field: String },
    #[error("{0} labels, more than the {MAX_LABELS} allowed")]
    TooManyLabels(usize),
    #[error("label {key:?} has a {what} of {chars} characters, more than the {max} allowed")]
    LabelTooLong { key: String, what: &'static str, chars: usize, max: usize },
    #[error(
        "sent_at {sent_at} is {drift_ms} ms away from the reference time {reference_ms}, more than the {max_drift_ms} ms allowed"
    )]
    SentAtTooFar { sent_at: i64, reference_ms: i64, drift_ms: i64, max_drift_ms: i64 },
}

impl ValidationError {
    /// A short stable code for headers and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::EmptyAppId => "empty_app_id",
            ValidationError::AppIdTooLong(_) => "app_id_too_long",
            ValidationError::EmptyInstanceId => "empty_instance_id",
            ValidationError::InstanceIdTooLong(_) => "instance_id_too_long",
            ValidationError::IntervalOutOfRange(_) => "interval_out_of_range",
            ValidationError::RatioOutOfRange { .. } => "ratio_out_of_range",
            ValidationError::Negative { .. } => "negative_value",
            ValidationError::NotANumber { .. } => "not_a_number",
            ValidationError::NotFinite { .. } => "not_finite",
            ValidationError::NulCharacter { .. } => "nul_character",
            ValidationError::TooManyLabels(_) => "too_many_labels",
            ValidationError::LabelTooLong { .. } => "label_too_long",
            ValidationError::SentAtTooFar { .. } => "sent_at_too_far",
        }
    }
}

impl Heartbeat {
    /// Checks every rule of the contract (see "Validation" in `docs/contracts.md`).
    ///
    /// `reference_ms` is the time `sent_at` is compared with: the record's broker timestamp
    /// when there is one, otherwise the wall clock; `max_drift_ms` is how far apart they may be.
    pub fn validate(&self, reference_ms: i64, max_drift_ms: i64) -> Result<(), ValidationError> {
        let app_chars = self.app_id.chars().count();
        if app_chars == 0 {
            return Err(ValidationError::EmptyAppId);
        }
        if app_chars > MAX_ID_CHARS {
            return Err(ValidationError::AppIdTooLong(app_chars));
        }
        let instance_chars = self.instance_id.chars().count();
        if instance_chars == 0 {
            return Err(ValidationError::EmptyInstanceId);
        }
        if instance_chars > MAX_ID_CHARS {
            return Err(ValidationError::InstanceIdTooLong(instance_chars));
        }
        self.validate_strings()?;
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            return Err(ValidationError::IntervalOutOfRange(self.interval_ms));
        }
        non_negative("seq", Some(self.seq as f64))?;
        for (field, value) in [("cpu_ratio", self.cpu_ratio), ("disk_used_ratio", self.disk_used_ratio)] {
            if let Some(v) = value {
                if v.is_nan() {
                    return Err(ValidationError::NotANumber { field });
                }
                if v.is_infinite() {
                    return Err(ValidationError::NotFinite { field });
                }
                if !(0.0..=1.0).contains(&v) {
                    return Err(ValidationError::RatioOutOfRange { field, value: v });
                }
            }
        }
        for (field, value) in self.non_negative_figures() {
            non_negative(field, value)?;
        }
        let drift_ms = self.sent_at.saturating_sub(reference_ms).saturating_abs();
        if drift_ms > max_drift_ms {
            return Err(ValidationError::SentAtTooFar {
                sent_at: self.sent_at,
                reference_ms,
                drift_ms,
                max_drift_ms,
            });
        }
        Ok(())
    }

    /// No NUL in any string (PostgreSQL's text and jsonb refuse it), labels within bounds.
    fn validate_strings(&self) -> Result<(), ValidationError> {
        let nul = |field: &str| ValidationError::NulCharacter { field: field.to_owned() };
        if self.app_id.contains('\0') {
            return Err(nul("app_id"));
        }
        if self.instance_id.contains('\0') {
            return Err(nul("instance_id"));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(ValidationError::TooManyLabels(self.labels.len()));
        }
        for (key, value) in self.labels.iter() {
            if key.contains('\0') || value.contains('\0') {
                return Err(nul(&format!("labels[{:?}]", key.replace('\0', "\\0"))));
            }
            for (what, text, max) in
                [("key", key, MAX_LABEL_KEY_CHARS), ("value", value, MAX_LABEL_VALUE_CHARS)]
            {
                let chars = text.chars().count();
                if chars > max {
                    let key = key.chars().take(64).collect();
                    return Err(ValidationError::LabelTooLong { key, what, chars, max });
                }
            }
        }
        Ok(())
    }

    /// Every gauge, counter and latency that must not be negative, by field name.
    fn non_negative_figures(&self) -> [(&'static str, Option<f64>); 17] {
        let int = |v: Option<i32>| v.map(f64::from);
        let long = |v: Option<i64>| v.map(|x| x as f64);
        let float = |v: Option<f32>| v.map(f64::from);
        [
            ("memory_used_bytes", long(self.memory_used_bytes)),
            ("memory_limit_bytes", long(self.memory_limit_bytes)),
            ("db_pool_size", int(self.db_pool_size)),
            ("db_pool_in_use", int(self.db_pool_in_use)),
            ("db_pool_waiting", int(self.db_pool_waiting)),
            ("threads", int(self.threads)),
            ("open_fds", int(self.open_fds)),
            ("request_queue_depth", int(self.request_queue_depth)),
            ("sessions_active", long(self.sessions_active)),
            ("requests_total", long(self.requests_total)),
            ("errors_total", long(self.errors_total)),
            ("slow_requests_total", long(self.slow_requests_total)),
            ("cache_hits_total", long(self.cache_hits_total)),
            ("cache_misses_total", long(self.cache_misses_total)),
            ("latency_p95_ms", float(self.latency_p95_ms)),
            ("latency_p99_ms", float(self.latency_p99_ms)),
            ("db_query_p95_ms", float(self.db_query_p95_ms)),
        ]
    }

    /// A beat with every field set: for examples, tests and benches.
    pub fn example_full() -> Heartbeat {
        let mut b = Heartbeat::new("checkout-api", "checkout-api-7f9c", 42, 1_800_000_123_456);
        b.interval_ms = 10_000;
        b.status = InstanceStatus::Degraded;
        b.memory_used_bytes = Some(1_500_000_000);
        b.memory_limit_bytes = Some(2_147_483_648);
        b.cpu_ratio = Some(0.625);
        b.disk_used_ratio = Some(0.5);
        b.db_pool_size = Some(20);
        b.db_pool_in_use = Some(19);
        b.db_pool_waiting = Some(3);
        b.threads = Some(64);
        b.open_fds = Some(1_024);
        b.request_queue_depth = Some(7);
        b.sessions_active = Some(12_345);
        b.requests_total = Some(9_000_000_000);
        b.errors_total = Some(17);
        b.slow_requests_total = Some(5);
        b.cache_hits_total = Some(800);
        b.cache_misses_total = Some(200);
        b.latency_p95_ms = Some(250.5);
        b.latency_p99_ms = Some(900.25);
        b.db_query_p95_ms = Some(12.75);
        b.labels.insert("env".into(), "prod".into());
        b.labels.insert("region".into(), "eu-west-1".into());
        b
    }

    /// A minimal valid beat; the load generator and tests fill in the figures they need.
    pub fn new(app_id: impl Into<String>, instance_id: impl Into<String>, seq: i64, sent_at: i64) -> Self {
        Heartbeat {
            app_id: app_id.into(),
            instance_id: instance_id.into(),
            seq,
            sent_at,
            interval_ms: 5_000,
            status: InstanceStatus::Ok,
            memory_used_bytes: None,
            memory_limit_bytes: None,
            cpu_ratio: None,
            disk_used_ratio: None,
            db_pool_size: None,
            db_pool_in_use: None,
            db_pool_waiting: None,
            threads: None,
            open_fds: None,
            request_queue_depth: None,
            sessions_active: None,
            requests_total: None,
            errors_total: None,
            slow_requests_total: None,
            cache_hits_total: None,
            cache_misses_total: None,
            latency_p95_ms: None,
            latency_p99_ms: None,
            db_query_p95_ms: None,
            labels: Labels::new(),
        }
    }
}

fn non_negative(field: &'static str, value: Option<f64>) -> Result<(), ValidationError> {
    match value {
        Some(v) if v.is_nan() => Err(ValidationError::NotANumber { field }),
        Some(v) if v.is_infinite() => Err(ValidationError::NotFinite { field }),
        Some(v) if v < 0.0 => Err(ValidationError::Negative { field, value: v }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn beat() -> Heartbeat {
        Heartbeat::new("shop", "shop-1", 1, NOW)
    }

    #[test]
    fn accepts_a_minimal_beat() {
        assert_eq!(beat().validate(NOW, DAY), Ok(()));
    }

    #[test]
    fn rejects_empty_and_over_long_ids() {
        let mut b = beat();
        b.app_id.clear();
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::EmptyAppId));
        b.app_id = "é".repeat(201);
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::AppIdTooLong(201)));
        b.app_id = "é".repeat(200);
        assert_eq!(b.validate(NOW, DAY), Ok(()));
        b.instance_id.clear();
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::EmptyInstanceId));
    }

    #[test]
    fn rejects_nul_in_every_string() {
        let nul = |field: &str| Err(ValidationError::NulCharacter { field: field.into() });
        let mut b = beat();
        b.app_id = "sh\0op".into();
        assert_eq!(b.validate(NOW, DAY), nul("app_id"));
        let mut b = beat();
        b.instance_id = "\0".into();
        assert_eq!(b.validate(NOW, DAY), nul("instance_id"));
        let mut b = beat();
        b.labels.insert("env".into(), "pr\0d".into());
        assert_eq!(b.validate(NOW, DAY), nul("labels[\"env\"]"));
        let mut b = beat();
        b.labels.insert("e\0".into(), "prod".into());
        assert_eq!(b.validate(NOW, DAY).unwrap_err().code(), "nul_character");
        let mut b = beat();
        b.app_id = "line\nbreak \u{1b}[31m".into();
        assert_eq!(b.validate(NOW, DAY), Ok(()), "other control characters are kept verbatim");
    }

    #[test]
    fn bounds_the_labels() {
        let mut b = beat();
        for i in 0..MAX_LABELS {
            b.labels.insert(format!("k{i}"), "v".repeat(MAX_LABEL_VALUE_CHARS));
        }
        assert_eq!(b.validate(NOW, DAY), Ok(()));
        b.labels.insert("one-more".into(), String::new());
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::TooManyLabels(MAX_LABELS + 1)));
        let mut b = beat();
        b.labels.insert("k".repeat(MAX_LABEL_KEY_CHARS + 1), String::new());
        assert_eq!(b.validate(NOW, DAY).unwrap_err().code(), "label_too_long");
        let mut b = beat();
        b.labels.insert("k".into(), "é".repeat(MAX_LABEL_VALUE_CHARS + 1));
        assert_eq!(b.validate(NOW, DAY).unwrap_err().code(), "label_too_long");
    }

    #[test]
    fn rejects_infinite_figures() {
        let mut b = beat();
        b.latency_p95_ms = Some(f32::INFINITY);
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::NotFinite { field: "latency_p95_ms" }));
        let mut b = beat();
        b.cpu_ratio = Some(f32::NEG_INFINITY);
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::NotFinite { field: "cpu_ratio" }));
    }

    #[test]
    fn rejects_intervals_outside_a_second_to_a_day() {
        let mut b = beat();
        b.interval_ms = 999;
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::IntervalOutOfRange(999)));
        b.interval_ms = 86_400_001;
        assert!(matches!(b.validate(NOW, DAY), Err(ValidationError::IntervalOutOfRange(_))));
        b.interval_ms = 86_400_000;
        assert_eq!(b.validate(NOW, DAY), Ok(()));
    }

    #[test]
    fn rejects_ratios_outside_zero_to_one() {
        let mut b = beat();
        b.cpu_ratio = Some(1.01);
        assert_eq!(
            b.validate(NOW, DAY),
            Err(ValidationError::RatioOutOfRange { field: "cpu_ratio", value: 1.01 })
        );
        b.cpu_ratio = Some(f32::NAN);
        assert_eq!(b.validate(NOW, DAY), Err(ValidationError::NotANumber { field: "cpu_ratio" }));
        b.cpu_ratio = Some(1.0);
        b.disk_used_ratio = Some(-0.1);
        assert!(matches!(
            b.validate(NOW, DAY),
            Err(ValidationError::RatioOutOfRange { field: "disk_used_ratio", .. })
        ));
    }

    #[test]
    fn rejects_negative_counters_and_gauges() {
        let mut b = beat();
        b.errors_total = Some(-1);
        assert_eq!(
            b.validate(NOW, DAY),
            Err(ValidationError::Negative { field: "errors_total", value: -1.0 })
        );
        let mut b = beat();
        b.db_pool_in_use = Some(-3);
        assert!(matches!(
            b.validate(NOW, DAY),
            Err(ValidationError::Negative { field: "db_pool_in_use", .. })
        ));
        let mut b = beat();
        b.seq = -1;
        assert!(matches!(b.validate(NOW, DAY), Err(ValidationError::Negative { field: "seq", .. })));
    }

    #[test]
    fn rejects_sent_at_absurdly_far_from_the_reference() {
        let mut b = beat();
        b.sent_at = NOW - DAY - 1;
        assert!(
            matches!(b.validate(NOW, DAY), Err(ValidationError::SentAtTooFar { drift_ms, .. }) if drift_ms == DAY + 1)
        );
        b.sent_at = NOW + DAY + 1;
        assert!(matches!(b.validate(NOW, DAY), Err(ValidationError::SentAtTooFar { .. })));
        b.sent_at = NOW - DAY;
        assert_eq!(b.validate(NOW, DAY), Ok(()));
        b.sent_at = i64::MIN;
        assert!(matches!(b.validate(NOW, DAY), Err(ValidationError::SentAtTooFar { .. })));
    }
}
