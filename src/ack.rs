//! The acknowledgement record (`io.pulsewatch.AlertAck`, `schemas/alert_ack.avsc`): an
//! operator's acknowledgement of one firing of one alert, or its withdrawal, and its Avro
//! single-object encoding on the `alert-acks` topic (key app_id).

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The acknowledgement schema, as shipped in `schemas/`.
pub const ACK_SCHEMA: &str = include_str!("../schemas/alert_ack.avsc");

static SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(ACK_SCHEMA).expect("schemas/alert_ack.avsc is a valid Avro schema"));
/// `C3 01` and the fingerprint of the schema's Parsing Canonical Form per the specification.
static HEADER: LazyLock<[u8; 10]> = LazyLock::new(|| {
    crate::codec::fingerprint::header(ACK_SCHEMA).expect("schemas/alert_ack.avsc has a canonical form")
});

/// Acknowledge, or withdraw an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AckAction {
    Ack,
    Unack,
}

impl AckAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AckAction::Ack => "ACK",
            AckAction::Unack => "UNACK",
        }
    }
}

/// One acknowledgement event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertAck {
    pub alert_id: String,
    pub app_id: String,
    /// `started_at` of the firing acknowledged, ms: the acknowledgement holds for it only.
    pub alert_started_at: i64,
    pub action: AckAction,
    pub by: String,
    pub note: Option<String>,
    /// Wall time the API accepted it, ms.
    pub at: i64,
}

#[derive(Debug, Error)]
pub enum AckCodecError {
    #[error("not an io.pulsewatch.AlertAck record: {0}")]
    Decode(String),
}

impl AlertAck {
    /// Avro single-object encoding, with the specification's fingerprint.
    pub fn encode(&self) -> Vec<u8> {
        let value = apache_avro::to_value(self)
            .and_then(|v| v.resolve(&SCHEMA))
            .expect("an acknowledgement always fits its schema");
        let datum =
            apache_avro::to_avro_datum(&SCHEMA, value).expect("an acknowledgement always fits its schema");
        let mut out = HEADER.to_vec();
        out.extend_from_slice(&datum);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<AlertAck, AckCodecError> {
        let header = bytes
            .get(..HEADER.len())
            .ok_or_else(|| AckCodecError::Decode("shorter than its header".into()))?;
        if header != &HEADER[..] {
            return Err(AckCodecError::Decode(format!("unknown single-object header {header:02x?}")));
        }
        let mut datum = &bytes[HEADER.len()..];
        let value = apache_avro::from_avro_datum(&SCHEMA, &mut datum, None)
            .map_err(|e| AckCodecError::Decode(e.to_string()))?;
        if !datum.is_empty() {
            return Err(AckCodecError::Decode(format!("{} trailing bytes", datum.len())));
        }
        apache_avro::from_value(&value).map_err(|e| AckCodecError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledgement_round_trips_and_garbage_is_refused() {
        let ack = AlertAck {
            alert_id: "a1".into(),
            app_id: "pay".into(),
            alert_started_at: 1_700_000_000_000,
            action: AckAction::Ack,
            by: "ana".into(),
            note: Some("on it".into()),
            at: 1_700_000_060_000,
        };
        let bytes = ack.encode();
        assert_eq!(&bytes[..2], [0xC3, 0x01]);
        assert_eq!(AlertAck::decode(&bytes).unwrap(), ack);
        let unack = AlertAck { action: AckAction::Unack, note: None, ..ack };
        assert_eq!(AlertAck::decode(&unack.encode()).unwrap(), unack);
        assert!(AlertAck::decode(b"{}").is_err());
        assert!(AlertAck::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
