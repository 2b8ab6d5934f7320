//! Request bodies into heartbeats: one beat (JSON or Avro single-object), a batch (NDJSON or
//! a JSON array), or a ping's smallest beat. Every beat passes the codec and
//! [`Heartbeat::validate`], as on `heartbeats` itself; a JSON beat without `sent_at` is
//! stamped with the server's wall clock.

use crate::codec::{self, DecodeError};
use crate::heartbeat::{Heartbeat, InstanceStatus};

/// How a beat must be judged.
#[derive(Debug, Clone, Copy)]
pub struct Judge {
    /// The wall clock, ms: stamps a missing `sent_at` and is what `sent_at` is compared with.
    pub now_ms: i64,
    /// How far `sent_at` may be from `now_ms`.
    pub max_drift_ms: i64,
}

/// A body that is not a batch at all.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("malformed JSON array: {0}")]
    MalformedArray(String),
    #[error("{count} beats, more than the {max} allowed in a batch")]
    TooMany { count: usize, max: usize },
}

impl BatchError {
    pub fn code(&self) -> &'static str {
        match self {
            BatchError::MalformedArray(_) => "malformed_json",
            BatchError::TooMany { .. } => "batch_too_large",
        }
    }
}

impl Judge {
    /// One JSON beat.
    pub fn json(&self, bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
        if bytes.len() > crate::heartbeat::MAX_RECORD_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let beat = match codec::json::decode(bytes) {
            Err(DecodeError::MissingField(f)) if f == "sent_at" => self.stamped(bytes)?,
            other => other?,
        };
        self.valid(beat)
    }

    /// One Avro single-object beat.
    pub fn avro(&self, bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
        if bytes.len() > crate::heartbeat::MAX_RECORD_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        self.valid(codec::avro::decode(bytes)?)
    }

    /// A batch, NDJSON or a JSON array: each beat's own result, in order.
    pub fn batch(&self, bytes: &[u8], max: usize) -> Result<Vec<Result<Heartbeat, DecodeError>>, BatchError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            let values: Vec<&serde_json::value::RawValue> =
                serde_json::from_slice(bytes).map_err(|e| BatchError::MalformedArray(e.to_string()))?;
            if values.len() > max {
                return Err(BatchError::TooMany { count: values.len(), max });
            }
            return Ok(values.iter().map(|v| self.json(v.get().as_bytes())).collect());
        }
        let lines: Vec<&[u8]> =
            ndjson_lines(bytes).filter(|line| line.iter().any(|b| !b.is_ascii_whitespace())).collect();
        if lines.len() > max {
            return Err(BatchError::TooMany { count: lines.len(), max });
        }
        Ok(lines.iter().map(|line| self.json(line)).collect())
    }

    /// A ping's beat: the smallest the contract allows.
    pub fn ping(
        &self,
        app_id: &str,
        instance_id: &str,
        status: InstanceStatus,
        interval_s: i64,
    ) -> Result<Heartbeat, DecodeError> {
        // The wall clock in ms, so that a cron job's next run is not taken for a restart.
        let mut beat = Heartbeat::new(app_id, instance_id, self.now_ms, self.now_ms);
        beat.status = status;
        beat.interval_ms = i32::try_from(interval_s.saturating_mul(1_000)).unwrap_or(i32::MAX);
        self.valid(beat)
    }

    /// The beat decoded again with `sent_at` set to now.
    fn stamped(&self, bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::MalformedJson(e.to_string()))?;
        if let Some(object) = value.as_object_mut() {
            object.insert("sent_at".into(), self.now_ms.into());
        }
        codec::json::decode(&serde_json::to_vec(&value).expect("a JSON value serialises"))
    }

    fn valid(&self, beat: Heartbeat) -> Result<Heartbeat, DecodeError> {
        beat.validate(self.now_ms, self.max_drift_ms)?;
        Ok(beat)
    }
}

/// A body's lines, found with memchr: a byte-by-byte split cost as much as a beat's validation.
fn ndjson_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    let mut start = 0;
    ends.map(move |end| {
        let line = &bytes[start..end];
        start = end + 1;
        line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const JUDGE: Judge = Judge { now_ms: NOW, max_drift_ms: 86_400_000 };

    #[test]
    fn a_json_beat_without_sent_at_is_stamped() {
        let beat = JUDGE
            .json(br#"{"app_id":"a","instance_id":"i","seq":1,"interval_ms":1000,"status":"OK"}"#)
            .unwrap();
        assert_eq!(beat.sent_at, NOW);
        let beat = JUDGE
            .json(br#"{"app_id":"a","instance_id":"i","seq":1,"sent_at":1800000000005,"interval_ms":1000,"status":"OK"}"#)
            .unwrap();
        assert_eq!(beat.sent_at, NOW + 5, "a given sent_at is kept");
    }

    #[test]
    fn json_and_avro_beats_are_validated() {
        let mut beat = Heartbeat::example_full();
        beat.sent_at = NOW;
        assert_eq!(JUDGE.avro(&codec::avro::encode(&beat)).unwrap(), beat);
        beat.app_id.clear();
        assert_eq!(JUDGE.json(&codec::json::encode(&beat)).unwrap_err().code(), "empty_app_id");
        assert_eq!(JUDGE.avro(b"{}").unwrap_err().code(), "truncated");
        assert_eq!(JUDGE.json(b"{\"app_id\":").unwrap_err().code(), "malformed_json");
    }

    #[test]
    fn a_batch_is_ndjson_or_an_array_judged_beat_by_beat() {
        let good = r#"{"app_id":"a","instance_id":"i","seq":1,"interval_ms":1000,"status":"OK"}"#;
        let bad = r#"{"app_id":"a","instance_id":"i","seq":-1,"interval_ms":1000,"status":"OK"}"#;
        let ndjson = format!("{good}\n\n{bad}\nnot json\n");
        let codes: Vec<_> = JUDGE
            .batch(ndjson.as_bytes(), 10)
            .unwrap()
            .iter()
            .map(|r| r.as_ref().map_or_else(|e| e.code(), |_| "ok"))
            .collect();
        assert_eq!(codes, ["ok", "negative_value", "malformed_json"]);
        let array = format!("[{good}, {bad}, 7]");
        let codes: Vec<_> = JUDGE
            .batch(array.as_bytes(), 10)
            .unwrap()
            .iter()
            .map(|r| r.as_ref().map_or_else(|e| e.code(), |_| "ok"))
            .collect();
        assert_eq!(codes, ["ok", "negative_value", "mistyped_field"]);
        assert_eq!(JUDGE.batch(array.as_bytes(), 2).unwrap_err().code(), "batch_too_large");
        assert_eq!(JUDGE.batch(b"[{", 2).unwrap_err().code(), "malformed_json");
    }

    #[test]
    fn ndjson_lines_are_split_as_a_slice_split_would() {
        for body in [&b""[..], b"\n", b"a", b"a\n", b"a\n\nb", b"\na\r\nb\n"] {
            let ours: Vec<&[u8]> = ndjson_lines(body).collect();
            let split: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
            assert_eq!(ours, split, "{body:?}");
        }
    }

    #[test]
    fn a_ping_is_the_smallest_beat() {
        let beat = JUDGE.ping("cron", "nightly", InstanceStatus::Starting, 60).unwrap();
        assert_eq!((beat.seq, beat.sent_at, beat.interval_ms), (NOW, NOW, 60_000));
        assert_eq!(
            JUDGE.ping("cron", "nightly", InstanceStatus::Ok, 0).unwrap_err().code(),
            "interval_out_of_range"
        );
    }
}
