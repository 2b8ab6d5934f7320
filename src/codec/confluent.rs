//! The Confluent Schema Registry wire format: magic byte `0`, the writer schema's id (4 bytes,
//! big-endian), then the Avro binary datum written with that schema.
//!
//! The writer schema comes from a registry ([`crate::registry`]); here it is resolved against
//! ours, `schemas/heartbeat.avsc`. A writer schema whose Parsing Canonical Form equals ours
//! writes the very same bytes, so its datum takes the single-object fast path
//! ([`super::avro::decode_datum`]); any other goes through apache-avro's schema resolution
//! (fields added with defaults, optional fields dropped, promotions), and the resolved value
//! is written back in our schema and read by the same fast path, so that both paths build
//! a [`Heartbeat`] in one place.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;

use super::DecodeError;
use super::avro::{HEARTBEAT_SCHEMA, SCHEMA};
use super::fingerprint::canonical_form;
use crate::heartbeat::Heartbeat;

/// The first byte of every record in the Confluent wire format.
pub const MAGIC: u8 = 0;

/// Magic byte and schema id.
pub const PREFIX_LEN: usize = 5;

/// Writes the 5-byte prefix of a record written with schema `id`.
pub fn prefix(id: u32) -> [u8; PREFIX_LEN] {
    let b = id.to_be_bytes();
    [MAGIC, b[0], b[1], b[2], b[3]]
}

/// Encodes a heartbeat in the Confluent wire format, `id` being the registry's id of
/// `schemas/heartbeat.avsc`.
pub fn encode(beat: &Heartbeat, id: u32) -> Vec<u8> {
    let single = super::avro::encode(beat);
    let mut out = Vec::with_capacity(single.len() - 5);
    out.extend_from_slice(&prefix(id));
    // The single-object header is 10 bytes; the datum after it is the same.
    out.extend_from_slice(&single[10..]);
    out
}

/// The schema id a record in the Confluent wire format names; `None` for any other record.
pub fn schema_id(bytes: &[u8]) -> Option<Result<u32, DecodeError>> {
    if bytes.first() != Some(&MAGIC) {
        return None;
    }
    Some(match bytes.get(1..PREFIX_LEN) {
        Some(id) => Ok(u32::from_be_bytes(id.try_into().expect("four bytes"))),
        None => Err(DecodeError::Truncated(format!(
            "{} bytes, shorter than the 5-byte Confluent prefix",
            bytes.len()
        ))),
    })
}

/// A writer schema checked against ours: ready to decode the records that name it.
#[derive(Debug)]
pub struct WriterSchema {
    id: u32,
    schema: Schema,
    /// Whether it writes exactly the bytes ours does.
    same_as_ours: bool,
}

/// Why a writer schema cannot be read with ours.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("schema {id} cannot be resolved against io.pulsewatch.Heartbeat: {reason}")]
pub struct Unresolvable {
    pub id: u32,
    pub reason: String,
}

impl WriterSchema {
    /// Parses a registry's schema text and checks that our schema can read what it writes.
    pub fn resolve(id: u32, schema_json: &str) -> Result<WriterSchema, Unresolvable> {
        let fail = |reason: String| Unresolvable { id, reason };
        let schema = Schema::parse_str(schema_json).map_err(|e| fail(format!("not an Avro schema: {e}")))?;
        let ours = canonical_form(HEARTBEAT_SCHEMA).expect("schemas/heartbeat.avsc has a canonical form");
        let same_as_ours = canonical_form(schema_json).is_ok_and(|form| form == ours);
        if !same_as_ours {
            SchemaCompatibility::can_read(&schema, &SCHEMA).map_err(|e| fail(e.to_string()))?;
        }
        Ok(WriterSchema { id, schema, same_as_ours })
    }

    /// The registry's id of this schema.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether its records take the fast path.
    pub fn same_as_ours(&self) -> bool {
        self.same_as_ours
    }
}

/// Decodes one record in the Confluent wire format written with `writer` (no validation:
/// see [`super::decode_with`]).
pub fn decode(bytes: &[u8], writer: &WriterSchema) -> Result<Heartbeat, DecodeError> {
    match schema_id(bytes) {
        Some(Ok(id)) if id == writer.id => {}
        Some(Ok(id)) => {
            return Err(DecodeError::SchemaUnresolvable(format!(
                "record names schema {id}, resolved {}",
                writer.id
            )));
        }
        Some(Err(e)) => return Err(e),
        None => return Err(DecodeError::MalformedAvro("not in the Confluent wire format".into())),
    }
    let datum = &bytes[PREFIX_LEN..];
    if writer.same_as_ours {
        return super::avro::decode_datum(datum);
    }
    let mut reader = datum;
    let value = apache_avro::from_avro_datum(&writer.schema, &mut reader, Some(&SCHEMA))
        .map_err(|e| DecodeError::MalformedAvro(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError::MalformedAvro(format!("{} trailing bytes after the record", reader.len())));
    }
    let ours =
        apache_avro::to_avro_datum(&SCHEMA, value).map_err(|e| DecodeError::MalformedAvro(e.to_string()))?;
    super::avro::decode_datum(&ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evolved(extra_field: &str, drop: &str) -> String {
        let mut schema: serde_json::Value = serde_json::from_str(HEARTBEAT_SCHEMA).unwrap();
        let fields = schema["fields"].as_array_mut().unwrap();
        fields.retain(|f| f["name"] != drop);
        if !extra_field.is_empty() {
            fields.push(serde_json::from_str(extra_field).unwrap());
        }
        schema.to_string()
    }

    #[test]
    fn our_schema_takes_the_fast_path() {
        let writer = WriterSchema::resolve(7, HEARTBEAT_SCHEMA).unwrap();
        assert!(writer.same_as_ours());
        let beat = Heartbeat::example_full();
        assert_eq!(decode(&encode(&beat, 7), &writer).unwrap(), beat);
    }

    #[test]
    fn an_evolved_schema_is_resolved_against_ours() {
        let json = evolved(r#"{"name":"region_code","type":"string","default":"eu"}"#, "threads");
        let writer = WriterSchema::resolve(9, &json).unwrap();
        assert!(!writer.same_as_ours());
        let mut beat = Heartbeat::example_full();
        // Write with the evolved schema through apache-avro's own writer.
        let schema = Schema::parse_str(&json).unwrap();
        let ours = SCHEMA.clone();
        let value =
            apache_avro::from_avro_datum(&ours, &mut &super::super::avro::encode(&beat)[10..], None).unwrap();
        let apache_avro::types::Value::Record(mut fields) = value else { panic!("a record") };
        fields.retain(|(name, _)| name != "threads");
        fields.push(("region_code".into(), apache_avro::types::Value::String("us".into())));
        let datum = apache_avro::to_avro_datum(&schema, apache_avro::types::Value::Record(fields)).unwrap();
        let mut record = prefix(9).to_vec();
        record.extend_from_slice(&datum);
        beat.threads = None;
        assert_eq!(decode(&record, &writer).unwrap(), beat);
    }

    #[test]
    fn an_incompatible_schema_is_unresolvable() {
        let json = evolved("", "app_id");
        let err = WriterSchema::resolve(3, &json).unwrap_err();
        assert_eq!(err.id, 3);
        assert!(WriterSchema::resolve(4, r#"{"type":"string"}"#).is_err());
        assert!(WriterSchema::resolve(5, "not json").is_err());
    }

    #[test]
    fn reads_the_schema_id() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Some(Ok(258)));
        assert!(matches!(schema_id(&[0, 0, 1]), Some(Err(DecodeError::Truncated(_)))));
        assert_eq!(schema_id(&[0xC3, 1]), None);
    }
}
