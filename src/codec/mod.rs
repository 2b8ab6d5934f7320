//! Heartbeat encodings on the wire: telling them apart per record, decoding, encoding.
//!
//! A record on `heartbeats` is one of:
//! - Avro single-object encoding: `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint
//!   of the Parsing Canonical Form of `schemas/heartbeat.avsc` as the specification defines
//!   it ([`fingerprint`]), then the Avro binary datum ([`avro`]);
//! - JSON with the contract's field names ([`json`]), told apart by its first non-blank
//!   byte `{`;
//! - the Confluent Schema Registry wire format (magic byte `0`, a schema id, the datum),
//!   decoded once the writer schema is resolved ([`confluent`], [`crate::registry`]), and
//!   refused with its own error where no registry is configured.
//!
//! Every decoded beat passes [`Heartbeat::validate`], so both encodings accept exactly the
//! same records. Every failure is a [`DecodeError`]: the input's fault, to be dead-lettered.

pub mod avro;
pub mod confluent;
pub mod fingerprint;
pub mod json;
pub mod record;

use thiserror::Error;

use crate::heartbeat::{Heartbeat, ValidationError};

/// Default for how far `sent_at` may be from the record's timestamp: 24 hours.
pub const DEFAULT_MAX_DRIFT_MS: i64 = 24 * 3_600_000;

/// The wire encodings a producer may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Avro,
    Json,
    /// The Confluent wire format, with the registry's id of `schemas/heartbeat.avsc`.
    Confluent(u32),
}

impl Encoding {
    /// The encoding's name, as the command line takes it.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Avro => "avro",
            Encoding::Json => "json",
            Encoding::Confluent(_) => "confluent",
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "avro" => Ok(Encoding::Avro),
            "json" => Ok(Encoding::Json),
            "confluent" => Err("the confluent encoding needs a schema id from the registry".into()),
            other => Err(format!("unknown encoding {other:?}: expected avro or json")),
        }
    }
}

/// Why a record could not be turned into a valid heartbeat.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("record of {0} bytes, more than the {max} allowed", max = crate::heartbeat::MAX_RECORD_BYTES)]
    TooLarge(usize),
    #[error("unknown encoding: first byte 0x{0:02x} is neither Avro single-object (C3 01) nor JSON ({{)")]
    UnknownEncoding(u8),
    #[error("Confluent Schema Registry wire format (magic byte 0), but no schema_registry.url is configured")]
    SchemaRegistryUnsupported,
    #[error("schema id {0} is unknown to the schema registry")]
    UnknownSchemaId(u32),
    #[error("writer schema unresolvable: {0}")]
    SchemaUnresolvable(String),
    #[error("truncated Avro record: {0}")]
    Truncated(String),
    #[error("unknown Avro schema fingerprint {0}: expected the io.pulsewatch.Heartbeat schema")]
    UnknownFingerprint(String),
    #[error("malformed Avro record: {0}")]
    MalformedAvro(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("missing field {0}")]
    MissingField(String),
    #[error("mistyped field {field}: {detail}")]
    MistypedField { field: String, detail: String },
    #[error("invalid heartbeat: {0}")]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    /// A short stable code for the dead-letter header `pulsewatch.error.code` and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge(_) => "record_too_large",
            DecodeError::UnknownEncoding(_) => "unknown_encoding",
            DecodeError::SchemaRegistryUnsupported => "schema_registry_unsupported",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::SchemaUnresolvable(_) => "schema_unresolvable",
            DecodeError::Truncated(_) => "truncated",
            DecodeError::UnknownFingerprint(_) => "unknown_fingerprint",
            DecodeError::MalformedAvro(_) => "malformed_avro",
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::MistypedField { .. } => "mistyped_field",
            DecodeError::Invalid(v) => v.code(),
        }
    }
}

/// Which encoding a record claims to be, from its first bytes.
pub fn sniff(bytes: &[u8]) -> Result<Encoding, DecodeError> {
    let first = *bytes.first().ok_or(DecodeError::Empty)?;
    match first {
        0xC3 => Ok(Encoding::Avro),
        0x00 => Err(DecodeError::SchemaRegistryUnsupported),
        _ => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Ok(Encoding::Json),
            Some(&b) => Err(DecodeError::UnknownEncoding(b)),
            None => Err(DecodeError::Empty),
        },
    }
}

/// Decodes one record in whichever encoding it carries, then validates it.
///
/// `reference_ms` is the record's broker timestamp (or the wall clock when it has none);
/// `sent_at` may differ from it by at most `max_drift_ms`.
pub fn decode(bytes: &[u8], reference_ms: i64, max_drift_ms: i64) -> Result<Heartbeat, DecodeError> {
    decode_with(bytes, None, reference_ms, max_drift_ms)
}

/// [`decode`], with the writer schema a record in the Confluent wire format names, as the
/// registry resolved it (see [`crate::registry::Registry::decode`]).
pub fn decode_with(
    bytes: &[u8],
    writer: Option<&confluent::WriterSchema>,
    reference_ms: i64,
    max_drift_ms: i64,
) -> Result<Heartbeat, DecodeError> {
    if bytes.len() > crate::heartbeat::MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let beat = match (bytes.first(), writer) {
        (Some(&confluent::MAGIC), Some(writer)) => confluent::decode(bytes, writer)?,
        _ => match sniff(bytes)? {
            Encoding::Avro => avro::decode(bytes)?,
            Encoding::Json => json::decode(bytes)?,
            // (sniff refuses the Confluent format: it needs the writer schema.)
            Encoding::Confluent(_) => return Err(DecodeError::SchemaRegistryUnsupported),
        },
    };
    beat.validate(reference_ms, max_drift_ms)?;
    Ok(beat)
}

/// Encodes a beat for a producer.
pub fn encode(beat: &Heartbeat, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Avro => avro::encode(beat),
        Encoding::Json => json::encode(beat),
        Encoding::Confluent(id) => confluent::encode(beat, id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_encoding() {
        assert_eq!(sniff(&[0xC3, 0x01]), Ok(Encoding::Avro));
        assert_eq!(sniff(b"  \n{\"a\":1}"), Ok(Encoding::Json));
        assert_eq!(sniff(&[0, 0, 0, 0, 1]), Err(DecodeError::SchemaRegistryUnsupported));
        assert_eq!(sniff(b""), Err(DecodeError::Empty));
        assert_eq!(sniff(b"   "), Err(DecodeError::Empty));
        assert_eq!(sniff(b"hello"), Err(DecodeError::UnknownEncoding(b'h')));
    }
}
