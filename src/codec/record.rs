//! pulsewatch's own records (alerts, acknowledgements) as Avro, through serde: a datum
//! written after a header (single-object or Confluent prefix) and read back whole.

use apache_avro::Schema;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `header` then `value` as a datum of `schema`. A record of the project always fits its
/// own schema, so a failure is a bug.
pub fn encode_after<T: Serialize>(schema: &Schema, header: &[u8], value: &T) -> Vec<u8> {
    let value =
        apache_avro::to_value(value).and_then(|v| v.resolve(schema)).expect("a record fits its schema");
    let datum = apache_avro::to_avro_datum(schema, value).expect("a record fits its schema");
    let mut out = Vec::with_capacity(header.len() + datum.len());
    out.extend_from_slice(header);
    out.extend_from_slice(&datum);
    out
}

/// One datum of `schema`, the whole of `datum`: trailing bytes are refused.
pub fn decode_datum<T: DeserializeOwned>(schema: &Schema, mut datum: &[u8]) -> Result<T, String> {
    let value = apache_avro::from_avro_datum(schema, &mut datum, None).map_err(|e| e.to_string())?;
    if !datum.is_empty() {
        return Err(format!("{} trailing bytes", datum.len()));
    }
    apache_avro::from_value(&value).map_err(|e| e.to_string())
}

/// The datum after `header`, which must be the one `bytes` starts with.
pub fn decode_after<T: DeserializeOwned>(schema: &Schema, header: &[u8], bytes: &[u8]) -> Result<T, String> {
    let got = bytes.get(..header.len()).ok_or("shorter than its header")?;
    if got != header {
        return Err(format!("unknown single-object header {got:02x?}"));
    }
    decode_datum(schema, &bytes[header.len()..])
}
