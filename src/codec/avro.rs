//! Avro single-object encoding of heartbeats, read and written field by field.
//!
//! The schema is `schemas/heartbeat.avsc`; its header carries the CRC-64-AVRO fingerprint of
//! the schema's Parsing Canonical Form per the specification ([`super::fingerprint`]).
//! Records with the fingerprint apache-avro 0.21 computes (written by pulsewatch before it
//! followed the specification) are still read, and counted. The datum itself is decoded here straight into a
//! [`Heartbeat`], without apache-avro's intermediate `Value` tree, so that the hot path does
//! one pass and no schema resolution; tests check both directions against apache-avro's own
//! reader and writer.

use std::sync::LazyLock;

use apache_avro::Schema;

use super::DecodeError;
use crate::heartbeat::{Heartbeat, InstanceStatus};
use crate::labels::Labels;

/// The heartbeat schema, as shipped in `schemas/`.
pub const HEARTBEAT_SCHEMA: &str = include_str!("../../schemas/heartbeat.avsc");

/// The parsed heartbeat schema.
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(HEARTBEAT_SCHEMA).expect("schemas/heartbeat.avsc is a valid Avro schema")
});

/// `C3 01` followed by the schema's fingerprint: the first ten bytes of every record written.
pub static HEADER: LazyLock<[u8; 10]> = LazyLock::new(|| {
    super::fingerprint::header(HEARTBEAT_SCHEMA).expect("schemas/heartbeat.avsc has a canonical form")
});

/// The header apache-avro's fingerprint gives the same schema: read, never written.
pub static LEGACY_HEADER: LazyLock<[u8; 10]> = LazyLock::new(|| super::fingerprint::legacy_header(&SCHEMA));

const HEADER_LEN: usize = 10;

/// Whether a record carries the header apache-avro's fingerprint gives the schema.
pub fn has_legacy_header(bytes: &[u8]) -> bool {
    bytes.get(..HEADER_LEN) == Some(&LEGACY_HEADER[..])
}

/// Decodes one single-object encoded heartbeat (no validation: see [`super::decode`]).
pub fn decode(bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(format!(
            "{} bytes, shorter than the 10-byte single-object header",
            bytes.len()
        )));
    }
    if bytes[0] != 0xC3 || bytes[1] != 0x01 {
        return Err(DecodeError::MalformedAvro(format!(
            "header starts {:02x} {:02x}, expected c3 01",
            bytes[0], bytes[1]
        )));
    }
    if bytes[..HEADER_LEN] != HEADER[..] && !has_legacy_header(bytes) {
        return Err(DecodeError::UnknownFingerprint(hex(&bytes[2..HEADER_LEN])));
    }
    decode_datum(&bytes[HEADER_LEN..])
}

/// Decodes the Avro binary datum of a heartbeat written with `schemas/heartbeat.avsc`,
/// without a header (no validation).
pub fn decode_datum(datum: &[u8]) -> Result<Heartbeat, DecodeError> {
    let mut r = DatumReader { buf: datum, pos: 0, field: "" };
    let beat = Heartbeat {
        app_id: r.field("app_id").string()?,
        instance_id: r.field("instance_id").string()?,
        seq: r.field("seq").long()?,
        sent_at: r.field("sent_at").long()?,
        interval_ms: r.field("interval_ms").int()?,
        status: r.field("status").status()?,
        memory_used_bytes: r.field("memory_used_bytes").optional(DatumReader::long)?,
        memory_limit_bytes: r.field("memory_limit_bytes").optional(DatumReader::long)?,
        cpu_ratio: r.field("cpu_ratio").optional(DatumReader::float)?,
        disk_used_ratio: r.field("disk_used_ratio").optional(DatumReader::float)?,
        db_pool_size: r.field("db_pool_size").optional(DatumReader::int)?,
        db_pool_in_use: r.field("db_pool_in_use").optional(DatumReader::int)?,
        db_pool_waiting: r.field("db_pool_waiting").optional(DatumReader::int)?,
        threads: r.field("threads").optional(DatumReader::int)?,
        open_fds: r.field("open_fds").optional(DatumReader::int)?,
        request_queue_depth: r.field("request_queue_depth").optional(DatumReader::int)?,
        sessions_active: r.field("sessions_active").optional(DatumReader::long)?,
        requests_total: r.field("requests_total").optional(DatumReader::long)?,
        errors_total: r.field("errors_total").optional(DatumReader::long)?,
        slow_requests_total: r.field("slow_requests_total").optional(DatumReader::long)?,
        cache_hits_total: r.field("cache_hits_total").optional(DatumReader::long)?,
        cache_misses_total: r.field("cache_misses_total").optional(DatumReader::long)?,
        latency_p95_ms: r.field("latency_p95_ms").optional(DatumReader::float)?,
        latency_p99_ms: r.field("latency_p99_ms").optional(DatumReader::float)?,
        db_query_p95_ms: r.field("db_query_p95_ms").optional(DatumReader::float)?,
        labels: r.field("labels").string_map()?,
    };
    if r.pos != r.buf.len() {
        return Err(DecodeError::MalformedAvro(format!(
            "{} trailing bytes after the record",
            r.buf.len() - r.pos
        )));
    }
    Ok(beat)
}

/// Encodes a heartbeat in single-object encoding.
pub fn encode(beat: &Heartbeat) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + beat.app_id.len() + beat.instance_id.len());
    encode_into(&mut out, beat);
    out
}

/// Appends a heartbeat in single-object encoding to `w`, so that one buffer serves many.
pub fn encode_into(w: &mut Vec<u8>, beat: &Heartbeat) {
    w.extend_from_slice(&HEADER[..]);
    put_string(w, &beat.app_id);
    put_string(w, &beat.instance_id);
    put_long(w, beat.seq);
    put_long(w, beat.sent_at);
    put_long(w, i64::from(beat.interval_ms));
    put_long(w, i64::from(beat.status.avro_index()));
    put_optional(w, beat.memory_used_bytes, put_long);
    put_optional(w, beat.memory_limit_bytes, put_long);
    put_optional(w, beat.cpu_ratio, put_float);
    put_optional(w, beat.disk_used_ratio, put_float);
    let put_int = |w: &mut Vec<u8>, v: i32| put_long(w, i64::from(v));
    put_optional(w, beat.db_pool_size, put_int);
    put_optional(w, beat.db_pool_in_use, put_int);
    put_optional(w, beat.db_pool_waiting, put_int);
    put_optional(w, beat.threads, put_int);
    put_optional(w, beat.open_fds, put_int);
    put_optional(w, beat.request_queue_depth, put_int);
    put_optional(w, beat.sessions_active, put_long);
    put_optional(w, beat.requests_total, put_long);
    put_optional(w, beat.errors_total, put_long);
    put_optional(w, beat.slow_requests_total, put_long);
    put_optional(w, beat.cache_hits_total, put_long);
    put_optional(w, beat.cache_misses_total, put_long);
    put_optional(w, beat.latency_p95_ms, put_float);
    put_optional(w, beat.latency_p99_ms, put_float);
    put_optional(w, beat.db_query_p95_ms, put_float);
    if !beat.labels.is_empty() {
        put_long(w, beat.labels.len() as i64);
        for (k, v) in &beat.labels {
            put_string(w, k);
            put_string(w, v);
        }
    }
    put_long(w, 0);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cursor over one Avro binary datum that remembers which field it is reading, so that
/// every error names it.
struct DatumReader<'a> {
    buf: &'a [u8],
    pos: usize,
    field: &'static str,
}

impl<'a> DatumReader<'a> {
    fn field(&mut self, name: &'static str) -> &mut Self {
        self.field = name;
        self
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated(format!("ends inside field {} at byte {}", self.field, self.pos + HEADER_LEN))
    }

    fn malformed(&self, what: impl std::fmt::Display) -> DecodeError {
        DecodeError::MalformedAvro(format!("field {}: {what}", self.field))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| self.truncated())?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    /// A zig-zag variable-length long.
    fn long(&mut self) -> Result<i64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or_else(|| self.truncated())?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(self.malformed("varint longer than 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(self.malformed("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, DecodeError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.malformed(format_args!("{v} does not fit an int")))
    }

    fn float(&mut self) -> Result<f32, DecodeError> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn length(&mut self) -> Result<usize, DecodeError> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| self.malformed(format_args!("negative length {n}")))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.length()?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.malformed(format_args!("invalid UTF-8: {e}"))),
        }
    }

    fn status(&mut self) -> Result<InstanceStatus, DecodeError> {
        let index = self.long()?;
        usize::try_from(index)
            .ok()
            .and_then(|i| InstanceStatus::SYMBOLS.get(i).copied())
            .ok_or_else(|| self.malformed(format_args!("enum index {index} is not a status")))
    }

    /// A `["null", T]` union.
    fn optional<T>(
        &mut self,
        read: fn(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(self.malformed(format_args!("union branch {other} (expected 0 for null or 1)"))),
        }
    }

    fn string_map(&mut self) -> Result<Labels, DecodeError> {
        let mut pairs = Vec::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(pairs.into_iter().collect());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.long()?;
            }
            let count = count.unsigned_abs();
            if count > self.buf.len() as u64 {
                return Err(self.truncated());
            }
            for _ in 0..count {
                let k = self.string()?;
                let v = self.string()?;
                pairs.push((k, v));
            }
        }
    }
}

fn put_long(w: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        w.push((z as u8) | 0x80);
        z >>= 7;
    }
    w.push(z as u8);
}

fn put_float(w: &mut Vec<u8>, v: f32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_string(w: &mut Vec<u8>, s: &str) {
    put_long(w, s.len() as i64);
    w.extend_from_slice(s.as_bytes());
}

fn put_optional<T>(w: &mut Vec<u8>, v: Option<T>, put: impl Fn(&mut Vec<u8>, T)) {
    match v {
        None => put_long(w, 0),
        Some(v) => {
            put_long(w, 1);
            put(w, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    #[test]
    fn round_trips_every_field() {
        let b = Heartbeat::example_full();
        assert_eq!(decode(&encode(&b)).unwrap(), b);
        let minimal = Heartbeat::new("a", "b", 0, 0);
        assert_eq!(decode(&encode(&minimal)).unwrap(), minimal);
    }

    #[test]
    fn apache_avro_reads_what_we_write() {
        let b = Heartbeat::example_full();
        let bytes = encode(&b);
        let mut datum = &bytes[HEADER_LEN..];
        let value = apache_avro::from_avro_datum(&SCHEMA, &mut datum, None).unwrap();
        let Value::Record(fields) = value else { panic!("not a record") };
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("app_id"), Value::String("checkout-api".into()));
        assert_eq!(get("sent_at"), Value::TimestampMillis(1_800_000_123_456));
        assert_eq!(get("status"), Value::Enum(2, "DEGRADED".into()));
        assert_eq!(get("requests_total"), Value::Union(1, Box::new(Value::Long(9_000_000_000))));
        assert_eq!(get("cpu_ratio"), Value::Union(1, Box::new(Value::Float(0.625))));
        assert!(datum.is_empty());
    }

    #[test]
    fn we_read_what_apache_avro_writes() {
        let mut writer = apache_avro::GenericSingleObjectWriter::new_with_capacity(&SCHEMA, 256).unwrap();
        let mut record = apache_avro::types::Record::new(&SCHEMA).unwrap();
        record.put("app_id", "billing");
        record.put("instance_id", "billing-0");
        record.put("seq", 7i64);
        record.put("sent_at", Value::TimestampMillis(1_800_000_000_000));
        record.put("interval_ms", 5_000i32);
        record.put("status", Value::Enum(3, "STOPPING".into()));
        for name in [
            "memory_used_bytes",
            "memory_limit_bytes",
            "cpu_ratio",
            "disk_used_ratio",
            "db_pool_size",
            "db_pool_in_use",
            "db_pool_waiting",
            "threads",
            "open_fds",
            "request_queue_depth",
            "sessions_active",
            "requests_total",
            "errors_total",
            "slow_requests_total",
            "cache_hits_total",
            "cache_misses_total",
            "latency_p95_ms",
            "latency_p99_ms",
            "db_query_p95_ms",
        ] {
            record.put(name, Value::Union(0, Box::new(Value::Null)));
        }
        record.put("open_fds", Value::Union(1, Box::new(Value::Int(99))));
        record.put("labels", Value::Map([("team".to_string(), Value::String("pay".into()))].into()));
        let mut bytes = Vec::new();
        writer.write_value(record.into(), &mut bytes).unwrap();
        let b = decode(&bytes).unwrap();
        assert_eq!(b.app_id, "billing");
        assert_eq!(b.status, InstanceStatus::Stopping);
        assert_eq!(b.open_fds, Some(99));
        assert_eq!(b.labels.get("team").map(String::as_str), Some("pay"));
    }

    #[test]
    fn names_the_field_where_a_record_is_truncated() {
        let bytes = encode(&Heartbeat::example_full());
        let err = decode(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(matches!(&err, DecodeError::Truncated(m) if m.contains("labels")), "{err}");
        let err = decode(&bytes[..5]).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated(_)));
    }

    #[test]
    fn rejects_an_unknown_fingerprint() {
        let mut bytes = encode(&Heartbeat::example_full());
        bytes[5] ^= 0xff;
        assert!(matches!(decode(&bytes), Err(DecodeError::UnknownFingerprint(_))));
    }

    #[test]
    fn rejects_bad_union_and_enum_indexes() {
        let mut b = Heartbeat::new("a", "b", 0, 0);
        b.status = InstanceStatus::Ok;
        let mut bytes = encode(&b);
        // app "a", instance "b", seq 0, sent_at 0, interval 5000 (2 bytes), status at index 16.
        let status_at = HEADER_LEN + 2 + 2 + 1 + 1 + 2;
        assert_eq!(bytes[status_at], 2);
        bytes[status_at] = 8;
        assert!(matches!(decode(&bytes), Err(DecodeError::MalformedAvro(m)) if m.contains("status")));
        let mut bytes = encode(&b);
        bytes[status_at + 1] = 4;
        assert!(
            matches!(decode(&bytes), Err(DecodeError::MalformedAvro(m)) if m.contains("memory_used_bytes"))
        );
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode(&Heartbeat::example_full());
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(DecodeError::MalformedAvro(m)) if m.contains("trailing")));
    }
}
