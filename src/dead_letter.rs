//! Dead letters: records set aside on `heartbeats-dlq` as they were, with why and where from
//! in headers, and a [`Publisher`] that sends them and waits until the broker has them.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{Producer, PurgeConfig};
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::kafka::{self, TrackedProducer};
use crate::metrics::METRICS;

/// The headers a dead letter carries.
pub mod headers {
    pub const CODE: &str = "pulsewatch.error.code";
    pub const MESSAGE: &str = "pulsewatch.error.message";
    pub const SOURCE_TOPIC: &str = "pulsewatch.source.topic";
    pub const SOURCE_PARTITION: &str = "pulsewatch.source.partition";
    pub const SOURCE_OFFSET: &str = "pulsewatch.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "pulsewatch.source.timestamp";
    /// The size of the whole payload, when the dead letter carries only its start.
    pub const TRUNCATED_FROM: &str = "pulsewatch.payload.truncated_from";
    /// The SHA-256 of the whole payload, in hex, when the dead letter carries only its start.
    pub const SHA256: &str = "pulsewatch.payload.sha256";
}

/// Most payload bytes a dead letter carries: as much as a valid record may have, so that a
/// dead letter always fits the producer's limit whatever arrived.
pub const PAYLOAD_MAX: usize = crate::heartbeat::MAX_RECORD_BYTES;

/// Most bytes of the error message in a header.
const MESSAGE_MAX: usize = 1_024;

/// A record on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, ms since the epoch.
    pub timestamp: Option<i64>,
    /// The record's key as it was: any bytes, or none.
    pub key: Option<Vec<u8>>,
    /// The record's payload, cut to [`PAYLOAD_MAX`] bytes if longer.
    pub payload: Vec<u8>,
    /// Size and SHA-256 of the whole payload, when `payload` holds only its start.
    pub truncated: Option<(usize, String)>,
    /// Why, in a word (`store_rejected`, `outside_retention`, ...).
    pub code: &'static str,
    /// Why, in a sentence (at most 1 KiB).
    pub message: String,
}

/// Where a record came from and what it held: what a dead letter is made of.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn of(msg: &'a BorrowedMessage<'_>) -> Record<'a> {
        Record {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key(),
            payload: msg.payload().unwrap_or_default(),
        }
    }
}

impl DeadLetter {
    /// The dead letter of `record`: its key as it was, its payload cut to [`PAYLOAD_MAX`].
    pub fn new(record: Record<'_>, code: &'static str, mut message: String) -> DeadLetter {
        let payload = record.payload;
        let truncated = (payload.len() > PAYLOAD_MAX).then(|| (payload.len(), sha256_hex(payload)));
        if message.len() > MESSAGE_MAX {
            let cut = (0..=MESSAGE_MAX).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        DeadLetter {
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
            key: record.key.map(<[u8]>::to_vec),
            payload: payload[..payload.len().min(PAYLOAD_MAX)].to_vec(),
            truncated,
            code,
            message,
        }
    }

    /// The dead letter of `msg`.
    pub fn of(msg: &BorrowedMessage<'_>, code: &'static str, message: String) -> DeadLetter {
        DeadLetter::new(Record::of(msg), code, message)
    }

    /// Where the record came from: (topic, partition, offset).
    pub fn source(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }

    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        let timestamp = self.timestamp.map(|t| t.to_string()).unwrap_or_default();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: headers::CODE, value: Some(self.code) })
            .insert(Header { key: headers::MESSAGE, value: Some(&self.message) })
            .insert(Header { key: headers::SOURCE_TOPIC, value: Some(&self.topic) })
            .insert(Header { key: headers::SOURCE_PARTITION, value: Some(&partition) })
            .insert(Header { key: headers::SOURCE_OFFSET, value: Some(&offset) })
            .insert(Header { key: headers::SOURCE_TIMESTAMP, value: Some(&timestamp) });
        if let Some((size, digest)) = &self.truncated {
            headers = headers
                .insert(Header { key: headers::TRUNCATED_FROM, value: Some(&size.to_string()) })
                .insert(Header { key: headers::SHA256, value: Some(digest) });
        }
        headers
    }

    /// Enqueues the letter on `dlq` with `producer` (delivery is the caller's to wait for).
    pub fn send(&self, producer: &TrackedProducer, dlq: &str) -> Result<(), KafkaError> {
        kafka::send_raw(producer, dlq, self.key.as_deref(), &self.payload, self.headers())
    }
}

/// The SHA-256 of `bytes` in lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Error)]
pub enum DeadLetterError {
    #[error("sending to {topic}: {source}")]
    Send {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("{failed} dead letter(s) not delivered to {topic}: {first}")]
    NotDelivered { topic: String, failed: u64, first: String },
}

/// How long [`Publisher::publish`] waits for the broker's acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends dead letters to one topic and waits until every one is acknowledged. Its producer
/// is created on first use (most runs never need it) and replaced after a failure, so that
/// no letter of a failed attempt is still queued when the caller tries again.
pub struct Publisher {
    kafka: KafkaConfig,
    topic: String,
    producer: Option<TrackedProducer>,
}

impl Publisher {
    pub fn new(kafka: &KafkaConfig, topic: String) -> Publisher {
        Publisher { kafka: kafka.clone(), topic, producer: None }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `letters` and returns once the broker has acknowledged them all.
    pub fn publish<'l>(
        &mut self,
        letters: impl IntoIterator<Item = &'l DeadLetter>,
    ) -> Result<(), DeadLetterError> {
        let result = self.try_publish(letters);
        if result.is_err()
            && let Some(producer) = self.producer.take()
        {
            producer.purge(PurgeConfig::default().queue().inflight());
        }
        result
    }

    fn try_publish<'l>(
        &mut self,
        letters: impl IntoIterator<Item = &'l DeadLetter>,
    ) -> Result<(), DeadLetterError> {
        let send_error = |source| DeadLetterError::Send { topic: self.topic.clone(), source };
        if self.producer.is_none() {
            self.producer = Some(kafka::producer(&self.kafka).map_err(send_error)?);
        }
        let producer = self.producer.as_ref().expect("created above");
        let mut codes = Vec::new();
        for letter in letters {
            letter.send(producer, &self.topic).map_err(send_error)?;
            codes.push(letter.code);
        }
        if codes.is_empty() {
            return Ok(());
        }
        producer.flush(FLUSH_TIMEOUT).map_err(send_error)?;
        let tracker = producer.context();
        if tracker.failed() > 0 {
            return Err(DeadLetterError::NotDelivered {
                topic: self.topic.clone(),
                failed: tracker.failed(),
                first: tracker.first_error().unwrap_or_default(),
            });
        }
        for code in codes {
            METRICS.dlq_records.with_label_values(&[code]).inc();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn headers_say_why_and_where_from() {
        let letter = DeadLetter {
            topic: "metrics-1m".into(),
            partition: 3,
            offset: 17,
            timestamp: Some(1_800_000_000_000),
            key: Some(b"app".to_vec()),
            payload: b"{}".to_vec(),
            truncated: None,
            code: "store_rejected",
            message: "metric_rollup_1m: invalid byte sequence (SQLSTATE 22021)".into(),
        };
        let headers = letter.headers();
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|h| (h.key, h.value.unwrap())).collect();
        assert_eq!(
            pairs,
            [
                (headers::CODE, &b"store_rejected"[..]),
                (headers::MESSAGE, letter.message.as_bytes()),
                (headers::SOURCE_TOPIC, b"metrics-1m"),
                (headers::SOURCE_PARTITION, b"3"),
                (headers::SOURCE_OFFSET, b"17"),
                (headers::SOURCE_TIMESTAMP, b"1800000000000"),
            ]
        );
        assert_eq!(letter.source(), ("metrics-1m", 3, 17));
    }

    #[test]
    fn a_payload_too_large_is_cut_and_named_by_size_and_digest() {
        let payload = vec![b'x'; PAYLOAD_MAX + 10];
        let record =
            Record { topic: "t", partition: 0, offset: 1, timestamp: None, key: None, payload: &payload };
        let letter = DeadLetter::new(record, "record_too_large", "é".repeat(MESSAGE_MAX));
        assert_eq!(letter.payload.len(), PAYLOAD_MAX);
        let (size, digest) = letter.truncated.clone().unwrap();
        assert_eq!((size, digest.len()), (PAYLOAD_MAX + 10, 64));
        assert!(letter.message.len() <= MESSAGE_MAX + '…'.len_utf8());
        let headers = letter.headers();
        let size_header = headers.iter().find(|h| h.key == headers::TRUNCATED_FROM).unwrap();
        assert_eq!(size_header.value, Some((PAYLOAD_MAX + 10).to_string().as_bytes()));
        assert_eq!(letter.key, None, "no key stays no key");
    }
}
