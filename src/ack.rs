//! The acknowledgement record (`io.pulsewatch.AlertAck`, `schemas/alert_ack.avsc`): an
//! operator's acknowledgement of one firing of one alert, or its withdrawal, and its Avro
//! single-object encoding on the `alert-acks` topic (key app_id).

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::record;

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
        record::encode_after(&SCHEMA, &HEADER[..], self)
    }

    pub fn decode(bytes: &[u8]) -> Result<AlertAck, AckCodecError> {
        record::decode_after(&SCHEMA, &HEADER[..], bytes).map_err(AckCodecError::Decode)
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
