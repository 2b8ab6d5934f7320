//! JSON heartbeats: an object with the contract's field names.
//!
//! `sent_at` is milliseconds since the Unix epoch, `status` one of the enum's symbols, the
//! optional figures may be absent or `null`. Fields the contract does not name are ignored,
//! so producers can add their own without breaking. Errors name the offending field.

use super::DecodeError;
use crate::heartbeat::Heartbeat;

/// Decodes one JSON heartbeat (no validation: see [`super::decode`]).
pub fn decode(bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
    // Most beats are well formed: the path of a bad field is only looked for when one fails.
    if let Ok(beat) = serde_json::from_slice(bytes) {
        return Ok(beat);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let beat: Heartbeat = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        classify(path, e.into_inner())
    })?;
    de.end().map_err(|e| DecodeError::MalformedJson(e.to_string()))?;
    Ok(beat)
}

/// Encodes a heartbeat as one JSON object.
pub fn encode(beat: &Heartbeat) -> Vec<u8> {
    serde_json::to_vec(beat).expect("a heartbeat always serialises")
}

fn classify(path: String, err: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Io | Category::Syntax | Category::Eof => DecodeError::MalformedJson(err.to_string()),
        Category::Data => {
            let msg = err.to_string();
            if let Some(rest) = msg.strip_prefix("missing field `") {
                let name = rest.split('`').next().unwrap_or_default();
                return DecodeError::MissingField(name.to_owned());
            }
            let field = if path == "." { "(record)".to_owned() } else { path };
            let detail = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            DecodeError::MistypedField { field, detail }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::InstanceStatus;

    #[test]
    fn round_trips_every_field() {
        let b = Heartbeat::example_full();
        assert_eq!(decode(&encode(&b)).unwrap(), b);
    }

    #[test]
    fn accepts_absent_optional_fields_and_ignores_unknown_ones() {
        let b = decode(
            br#"{"app_id":"a","instance_id":"i","seq":1,"sent_at":5,"interval_ms":1000,
                 "status":"STARTING","cpu_ratio":null,"extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(b.status, InstanceStatus::Starting);
        assert_eq!(b.cpu_ratio, None);
        assert!(b.labels.is_empty());
    }

    #[test]
    fn names_a_missing_field() {
        let err = decode(br#"{"app_id":"a","instance_id":"i","sent_at":5,"interval_ms":1000,"status":"OK"}"#)
            .unwrap_err();
        assert_eq!(err, DecodeError::MissingField("seq".into()));
    }

    #[test]
    fn names_a_mistyped_field() {
        let err = decode(
            br#"{"app_id":"a","instance_id":"i","seq":"one","sent_at":5,"interval_ms":1000,"status":"OK"}"#,
        )
        .unwrap_err();
        assert!(matches!(&err, DecodeError::MistypedField { field, .. } if field == "seq"), "{err:?}");
        let err = decode(
            br#"{"app_id":"a","instance_id":"i","seq":1,"sent_at":5,"interval_ms":1000,"status":"SLEEPING"}"#,
        )
        .unwrap_err();
        assert!(matches!(&err, DecodeError::MistypedField { field, .. } if field == "status"), "{err:?}");
        let err = decode(
            br#"{"app_id":"a","instance_id":"i","seq":1,"sent_at":5,"interval_ms":1000,"status":"OK","labels":{"k":1}}"#,
        )
        .unwrap_err();
        assert!(matches!(&err, DecodeError::MistypedField { field, .. } if field == "labels.k"), "{err:?}");
    }

    #[test]
    fn rejects_broken_json() {
        assert!(matches!(decode(br#"{"app_id":"a""#), Err(DecodeError::MalformedJson(_))));
        let mut bytes = encode(&Heartbeat::example_full());
        bytes.extend_from_slice(b" trailing");
        assert!(matches!(decode(&bytes), Err(DecodeError::MalformedJson(_))));
    }
}
