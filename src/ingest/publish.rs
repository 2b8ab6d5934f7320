//! Beats onto `heartbeats`: Avro single-object records keyed by app_id, through an
//! idempotent `acks=all` producer, answered only once the broker has them.
//!
//! Backpressure: at most `ingest.max_in_flight` beats wait for the broker at once; a request
//! that would pass the cap, or finds librdkafka's queue full, is refused (429) rather than
//! buffered. A beat the broker has not acknowledged within `ingest.produce_timeout_ms` fails
//! (503).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::codec;
use crate::heartbeat::Heartbeat;

/// Why a beat was not published.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    #[error("too many beats wait for the broker; retry shortly")]
    Busy,
    #[error("the broker did not acknowledge the beat: {0}")]
    Unavailable(String),
}

/// The producer, its topic and its in-flight cap.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    in_flight: Arc<Semaphore>,
    /// The cap on `in_flight`.
    max_in_flight: usize,
    /// Longest wait for an acknowledgement; librdkafka's own message timeout is the same.
    timeout: Duration,
}

impl Publisher {
    pub fn new(
        producer: FutureProducer,
        topic: String,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Publisher {
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        Publisher { producer, topic, in_flight, max_in_flight, timeout }
    }

    /// Waits until no beat is in flight (at most the produce timeout and a second), taking
    /// every slot so that later requests are refused (429), then flushes the producer.
    /// Whether it drained.
    pub async fn drain(&self) -> bool {
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let within = self.timeout + Duration::from_secs(1);
        let taken = tokio::time::timeout(within, self.in_flight.acquire_many(all)).await;
        let drained = match taken {
            Ok(Ok(permits)) => {
                permits.forget();
                true
            }
            _ => false,
        };
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(1))).await;
        drained && matches!(flushed, Ok(Ok(())))
    }

    /// Room for `beats` more in flight, held until the permit is dropped.
    pub fn reserve(&self, beats: usize) -> Result<OwnedSemaphorePermit, PublishError> {
        let beats = u32::try_from(beats).map_err(|_| PublishError::Busy)?;
        self.in_flight.clone().try_acquire_many_owned(beats).map_err(|_| PublishError::Busy)
    }

    /// Produces `beat` and waits for the broker's acknowledgement.
    pub async fn publish(&self, beat: &Heartbeat) -> Result<(), PublishError> {
        let payload = codec::avro::encode(beat);
        let record = FutureRecord::to(&self.topic).key(beat.app_id.as_bytes()).payload(&payload);
        let delivery = self.producer.send_result(record).map_err(|(e, _)| refused(e))?;
        // A margin over librdkafka's own timeout, which reports the failure itself.
        let waited = tokio::time::timeout(self.timeout + Duration::from_millis(500), delivery).await;
        match waited {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(PublishError::Unavailable(e.to_string())),
            Ok(Err(_)) => Err(PublishError::Unavailable("the producer went away".into())),
            Err(_) => Err(PublishError::Unavailable(format!("no acknowledgement within {:?}", self.timeout))),
        }
    }
}

fn refused(e: KafkaError) -> PublishError {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => PublishError::Busy,
        other => PublishError::Unavailable(other.to_string()),
    }
}
