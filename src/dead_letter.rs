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
}

/// A record on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, ms since the epoch.
    pub timestamp: Option<i64>,
    pub key: String,
    pub payload: Vec<u8>,
    /// Why, in a word (`store_rejected`, `outside_retention`, ...).
    pub code: &'static str,
    /// Why, in a sentence.
    pub message: String,
}

impl DeadLetter {
    /// The dead letter of `msg`, as it was.
    pub fn of(msg: &BorrowedMessage<'_>, code: &'static str, message: String) -> DeadLetter {
        DeadLetter {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key().map(String::from_utf8_lossy).unwrap_or_default().into_owned(),
            payload: msg.payload().unwrap_or_default().to_vec(),
            code,
            message,
        }
    }

    /// Where the record came from: (topic, partition, offset).
    pub fn source(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }

    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        let timestamp = self.timestamp.map(|t| t.to_string()).unwrap_or_default();
        OwnedHeaders::new()
            .insert(Header { key: headers::CODE, value: Some(self.code) })
            .insert(Header { key: headers::MESSAGE, value: Some(&self.message) })
            .insert(Header { key: headers::SOURCE_TOPIC, value: Some(&self.topic) })
            .insert(Header { key: headers::SOURCE_PARTITION, value: Some(&partition) })
            .insert(Header { key: headers::SOURCE_OFFSET, value: Some(&offset) })
            .insert(Header { key: headers::SOURCE_TIMESTAMP, value: Some(&timestamp) })
    }
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
            kafka::send(producer, &self.topic, &letter.key, &letter.payload, Some(letter.headers()))
                .map_err(send_error)?;
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
            key: "app".into(),
            payload: b"{}".to_vec(),
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
}
