//! Avro schema fingerprints as the specification defines them: the Parsing Canonical Form
//! of a schema and its CRC-64-AVRO (Rabin) fingerprint, which single-object encoding puts
//! after `C3 01`.
//!
//! apache-avro 0.21 keeps a logical-typed primitive as `{"type":"long"}` in its canonical
//! form (AVRO-4004), so its fingerprints differ from Java's, fastavro's and the C
//! library's for every schema with a timestamp. This module computes the form by the
//! specification's rules; [`legacy_header`] keeps apache-avro's for reading records that
//! were written with it.

use serde_json::Value;
use thiserror::Error;

/// The primitive type names: written bare in the canonical form, never namespaced.
const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The first two bytes of every single-object encoded record.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// A schema that cannot be brought into canonical form.
#[derive(Debug, Error)]
pub enum SchemaFormError {
    #[error("schema is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema has no valid type at {0}")]
    NoType(String),
}

/// The schema's Parsing Canonical Form, per the Avro specification: primitives in their
/// simple form (logical types and every other attribute stripped), full names, only the
/// attributes that matter for parsing in the order name, type, fields, symbols, items,
/// values, size, and no whitespace. A named type seen before is written as its full name.
pub fn canonical_form(schema_json: &str) -> Result<String, SchemaFormError> {
    let schema: Value = serde_json::from_str(schema_json)?;
    let mut out = String::with_capacity(schema_json.len());
    let mut seen = Vec::new();
    write_schema(&schema, "", &mut seen, &mut out)?;
    Ok(out)
}

/// CRC-64-AVRO (the Rabin fingerprint of the specification) of `bytes`.
pub fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, &b| (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize])
}

/// The ten-byte single-object header of a schema: `C3 01` and the little-endian
/// fingerprint of its Parsing Canonical Form.
pub fn header(schema_json: &str) -> Result<[u8; 10], SchemaFormError> {
    let fp = rabin(canonical_form(schema_json)?.as_bytes());
    Ok(header_of(fp))
}

/// The header apache-avro 0.21 writes for the same schema (its canonical form keeps
/// logical-typed primitives as objects): read, never written.
pub fn legacy_header(schema: &apache_avro::Schema) -> [u8; 10] {
    header_of(rabin(schema.canonical_form().as_bytes()))
}

fn header_of(fingerprint: u64) -> [u8; 10] {
    let mut h = [0u8; 10];
    h[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
    h[2..].copy_from_slice(&fingerprint.to_le_bytes());
    h
}

fn write_schema(
    schema: &Value,
    namespace: &str,
    seen: &mut Vec<String>,
    out: &mut String,
) -> Result<(), SchemaFormError> {
    match schema {
        Value::String(name) => write_reference(name, namespace, out),
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_schema(branch, namespace, seen, out)?;
            }
            out.push(']');
        }
        Value::Object(attrs) => {
            let Some(kind) = attrs.get("type") else {
                return Err(SchemaFormError::NoType(schema.to_string()));
            };
            match kind.as_str() {
                Some(p) if PRIMITIVES.contains(&p) => write_string(p, out),
                Some(t @ ("record" | "error" | "enum" | "fixed")) => {
                    write_named(t, attrs, namespace, seen, out)?
                }
                Some("array") => write_container("array", "items", attrs, namespace, seen, out)?,
                Some("map") => write_container("map", "values", attrs, namespace, seen, out)?,
                // `{"type": "Name"}` or `{"type": {...}}`: the type is the attribute's value.
                _ => write_schema(kind, namespace, seen, out)?,
            }
        }
        other => return Err(SchemaFormError::NoType(other.to_string())),
    }
    Ok(())
}

fn write_reference(name: &str, namespace: &str, out: &mut String) {
    if PRIMITIVES.contains(&name) {
        write_string(name, out);
    } else {
        write_string(&full_name(name, namespace), out);
    }
}

fn write_named(
    kind: &str,
    attrs: &serde_json::Map<String, Value>,
    namespace: &str,
    seen: &mut Vec<String>,
    out: &mut String,
) -> Result<(), SchemaFormError> {
    let name =
        attrs.get("name").and_then(Value::as_str).ok_or_else(|| SchemaFormError::NoType(kind.into()))?;
    let own_namespace = attrs.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
    let full = full_name(name, own_namespace);
    if seen.contains(&full) {
        write_string(&full, out);
        return Ok(());
    }
    seen.push(full.clone());
    let inner_namespace = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_owned();
    out.push_str("{\"name\":");
    write_string(&full, out);
    out.push_str(",\"type\":");
    write_string(if kind == "error" { "error" } else { kind }, out);
    match kind {
        "enum" => {
            out.push_str(",\"symbols\":[");
            let symbols = attrs.get("symbols").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for (i, s) in symbols.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(s.as_str().unwrap_or_default(), out);
            }
            out.push(']');
        }
        "fixed" => {
            let size = attrs.get("size").and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(",\"size\":{size}"));
        }
        _ => {
            out.push_str(",\"fields\":[");
            let fields = attrs.get("fields").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"name\":");
                write_string(field.get("name").and_then(Value::as_str).unwrap_or_default(), out);
                out.push_str(",\"type\":");
                let ty = field.get("type").ok_or_else(|| SchemaFormError::NoType(field.to_string()))?;
                write_schema(ty, &inner_namespace, seen, out)?;
                out.push('}');
            }
            out.push(']');
        }
    }
    out.push('}');
    Ok(())
}

fn write_container(
    kind: &str,
    attr: &str,
    attrs: &serde_json::Map<String, Value>,
    namespace: &str,
    seen: &mut Vec<String>,
    out: &mut String,
) -> Result<(), SchemaFormError> {
    out.push_str("{\"type\":");
    write_string(kind, out);
    out.push_str(",\"");
    out.push_str(attr);
    out.push_str("\":");
    let inner = attrs.get(attr).ok_or_else(|| SchemaFormError::NoType(format!("{kind} without {attr}")))?;
    write_schema(inner, namespace, seen, out)?;
    out.push('}');
    Ok(())
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() { name.to_owned() } else { format!("{namespace}.{name}") }
}

/// A JSON string literal with only the escapes JSON requires (quote, backslash, control
/// characters), so any `\uXXXX` of the source comes out as its UTF-8 character.
fn write_string(s: &str, out: &mut String) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_and_logical_types_take_their_simple_form() {
        assert_eq!(
            canonical_form(r#"{"type":"long","logicalType":"timestamp-millis"}"#).unwrap(),
            r#""long""#
        );
        assert_eq!(canonical_form(r#" "int" "#).unwrap(), r#""int""#);
    }

    #[test]
    fn names_are_full_attributes_stripped_and_ordered() {
        let schema = r#"{"namespace":"a.b","doc":"x","type":"record","name":"R","aliases":["Q"],
            "fields":[{"doc":"d","type":{"symbols":["X","Y"],"type":"enum","name":"E"},"name":"e","default":"X"},
                      {"name":"again","type":"E"},
                      {"name":"m","type":{"values":{"type":"array","items":"string"},"type":"map"}},
                      {"name":"f","type":{"type":"fixed","name":"c.F","size":16}},
                      {"name":"u","type":["null",{"type":"long","logicalType":"timestamp-micros"}]}]}"#;
        assert_eq!(
            canonical_form(schema).unwrap(),
            concat!(
                r#"{"name":"a.b.R","type":"record","fields":["#,
                r#"{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["X","Y"]}},"#,
                r#"{"name":"again","type":"a.b.E"},"#,
                r#"{"name":"m","type":{"type":"map","values":{"type":"array","items":"string"}}},"#,
                r#"{"name":"f","type":{"name":"c.F","type":"fixed","size":16}},"#,
                r#"{"name":"u","type":["null","long"]}]}"#
            )
        );
    }

    #[test]
    fn rabin_matches_the_specification_vectors() {
        // As fastavro prints them: the header's eight bytes, little-endian, in hex.
        let hex = |fp: u64| fp.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(rabin(br#""int""#)), "8f5c393f1ad57572");
        assert_eq!(hex(rabin(br#""string""#)), "c70345637248018f");
    }

    #[test]
    fn the_legacy_header_differs_only_for_logical_types() {
        let plain = r#"{"type":"record","name":"P","fields":[{"name":"x","type":"long"}]}"#;
        let parsed = apache_avro::Schema::parse_str(plain).unwrap();
        assert_eq!(header(plain).unwrap(), legacy_header(&parsed));
        let timed = r#"{"type":"record","name":"T","fields":[{"name":"x","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
        let parsed = apache_avro::Schema::parse_str(timed).unwrap();
        assert_ne!(header(timed).unwrap(), legacy_header(&parsed));
    }
}
