//! The alert record (`io.pulsewatch.Alert`): kinds, severities, the stable alert id, and its
//! Avro single-object encoding on the `alerts` topic.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The alert schema, as shipped in `schemas/`.
pub const ALERT_SCHEMA: &str = include_str!("../schemas/alert.avsc");

static SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(ALERT_SCHEMA).expect("schemas/alert.avsc is a valid Avro schema"));
/// `C3 01` and the fingerprint of the schema's Parsing Canonical Form per the specification.
pub static HEADER: LazyLock<[u8; 10]> = LazyLock::new(|| {
    crate::codec::fingerprint::header(ALERT_SCHEMA).expect("schemas/alert.avsc has a canonical form")
});
/// The header apache-avro's fingerprint gave the schema, on alerts written before: read only.
pub static LEGACY_HEADER: LazyLock<[u8; 10]> =
    LazyLock::new(|| crate::codec::fingerprint::legacy_header(&SCHEMA));

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    InstanceLate,
    InstanceDown,
    AppDown,
    InstanceRestarted,
    Flapping,
    MemoryHigh,
    CpuHigh,
    DbPoolSaturated,
    DiskHigh,
    SlowResponses,
    ErrorRateHigh,
    QueueBacklog,
    SlowQueries,
    MemoryLeakSuspected,
    ConnectionLeakSuspected,
    SessionLeakSuspected,
    ThreadLeakSuspected,
    FdLeakSuspected,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::InstanceLate => "INSTANCE_LATE",
            AlertKind::InstanceDown => "INSTANCE_DOWN",
            AlertKind::AppDown => "APP_DOWN",
            AlertKind::InstanceRestarted => "INSTANCE_RESTARTED",
            AlertKind::Flapping => "FLAPPING",
            AlertKind::MemoryHigh => "MEMORY_HIGH",
            AlertKind::CpuHigh => "CPU_HIGH",
            AlertKind::DbPoolSaturated => "DB_POOL_SATURATED",
            AlertKind::DiskHigh => "DISK_HIGH",
            AlertKind::SlowResponses => "SLOW_RESPONSES",
            AlertKind::ErrorRateHigh => "ERROR_RATE_HIGH",
            AlertKind::QueueBacklog => "QUEUE_BACKLOG",
            AlertKind::SlowQueries => "SLOW_QUERIES",
            AlertKind::MemoryLeakSuspected => "MEMORY_LEAK_SUSPECTED",
            AlertKind::ConnectionLeakSuspected => "CONNECTION_LEAK_SUSPECTED",
            AlertKind::SessionLeakSuspected => "SESSION_LEAK_SUSPECTED",
            AlertKind::ThreadLeakSuspected => "THREAD_LEAK_SUSPECTED",
            AlertKind::FdLeakSuspected => "FD_LEAK_SUSPECTED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "FIRING",
            AlertState::Resolved => "RESOLVED",
        }
    }
}

/// One transition of one alert. Field names are the contract of DESIGN.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub app_id: String,
    pub instance_id: Option<String>,
    pub kind: AlertKind,
    pub severity: Severity,
    pub state: AlertState,
    pub started_at: i64,
    pub event_at: i64,
    pub emitted_at: i64,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub summary: String,
    pub evidence: BTreeMap<String, String>,
    pub recommendations: Vec<String>,
    pub source_partition: i32,
    pub source_offset: i64,
}

#[derive(Debug, Error)]
pub enum AlertCodecError {
    #[error("not an io.pulsewatch.Alert record: {0}")]
    Decode(String),
}

/// The stable id of the alert about `kind` on `app_id` (and `instance_id`): the same on every
/// replay, on every processor instance.
pub fn alert_id(app_id: &str, instance_id: Option<&str>, kind: AlertKind) -> String {
    // Separators that cannot occur in UTF-8 text keep the parts apart.
    let h = fnv1a([
        app_id.as_bytes(),
        &[0xff],
        instance_id.unwrap_or("").as_bytes(),
        &[0xfe],
        kind.as_str().as_bytes(),
    ]);
    format!("{h:016x}")
}

/// FNV-1a (64 bits) over `parts` in order: stable on every replay and every machine.
pub fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.into_iter().flatten() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Alert {
    /// Avro single-object encoding, with the specification's fingerprint.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_after(&HEADER[..])
    }

    /// The Confluent Schema Registry wire format, `id` being `schemas/alert.avsc`'s.
    pub fn encode_confluent(&self, id: u32) -> Vec<u8> {
        self.encode_after(&crate::codec::confluent::prefix(id))
    }

    fn encode_after(&self, header: &[u8]) -> Vec<u8> {
        crate::codec::record::encode_after(&SCHEMA, header, self)
    }

    /// Reads an alert with either fingerprint (the specification's, or apache-avro's), or in
    /// the Confluent wire format, whose writer is pulsewatch's processor and so its schema
    /// `schemas/alert.avsc` whatever the id.
    pub fn decode(bytes: &[u8]) -> Result<Alert, AlertCodecError> {
        if bytes.first() == Some(&crate::codec::confluent::MAGIC) {
            let datum = bytes
                .get(crate::codec::confluent::PREFIX_LEN..)
                .ok_or_else(|| AlertCodecError::Decode("shorter than its Confluent prefix".into()))?;
            return decode_datum(datum);
        }
        let header = bytes
            .get(..HEADER.len())
            .ok_or_else(|| AlertCodecError::Decode("shorter than its header".into()))?;
        if header != &HEADER[..] {
            if header != &LEGACY_HEADER[..] {
                return Err(AlertCodecError::Decode(format!("unknown single-object header {header:02x?}")));
            }
            crate::metrics::METRICS.legacy_fingerprint.with_label_values(&["alert"]).inc();
        }
        decode_datum(&bytes[HEADER.len()..])
    }
}

/// An alert's Avro datum, written with `schemas/alert.avsc`.
fn decode_datum(datum: &[u8]) -> Result<Alert, AlertCodecError> {
    crate::codec::record::decode_datum(&SCHEMA, datum).map_err(AlertCodecError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_the_confluent_wire_format() {
        let alert = sample();
        let bytes = alert.encode_confluent(258);
        assert_eq!(bytes[..5], [0, 0, 0, 1, 2]);
        assert_eq!(bytes[5..], alert.encode()[10..]);
        assert_eq!(Alert::decode(&bytes).unwrap(), alert);
    }

    fn sample() -> Alert {
        Alert {
            alert_id: alert_id("shop", Some("shop-1"), AlertKind::MemoryHigh),
            app_id: "shop".into(),
            instance_id: Some("shop-1".into()),
            kind: AlertKind::MemoryHigh,
            severity: Severity::Critical,
            state: AlertState::Firing,
            started_at: 1_000,
            event_at: 61_000,
            emitted_at: 61_500,
            value: Some(0.93),
            threshold: Some(0.9),
            summary: "memory at 93% of its limit".into(),
            evidence: [("memory_used_bytes".to_string(), "930".to_string())].into(),
            recommendations: vec!["look for a leak".into()],
            source_partition: 3,
            source_offset: 42,
        }
    }

    #[test]
    fn round_trips_through_avro() {
        let a = sample();
        assert_eq!(Alert::decode(&a.encode()).unwrap(), a);
        let app_level = Alert { instance_id: None, value: None, threshold: None, ..sample() };
        assert_eq!(Alert::decode(&app_level.encode()).unwrap(), app_level);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = alert_id("shop", Some("shop-1"), AlertKind::MemoryHigh);
        assert_eq!(a, alert_id("shop", Some("shop-1"), AlertKind::MemoryHigh));
        assert_ne!(a, alert_id("shop", Some("shop-1"), AlertKind::CpuHigh));
        assert_ne!(a, alert_id("shop", None, AlertKind::MemoryHigh));
        assert_ne!(
            alert_id("ab", Some("c"), AlertKind::AppDown),
            alert_id("a", Some("bc"), AlertKind::AppDown)
        );
    }

    #[test]
    fn reads_alerts_written_with_the_legacy_fingerprint() {
        let a = sample();
        let mut old = a.encode();
        old[..10].copy_from_slice(&LEGACY_HEADER[..]);
        assert_ne!(*LEGACY_HEADER, *HEADER, "the alert schema has timestamps, so the two differ");
        assert_eq!(Alert::decode(&old).unwrap(), a);
        old[5] ^= 1;
        assert!(Alert::decode(&old).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Alert::decode(b"nope").is_err());
    }
}
