//! Beats onto `heartbeats`: Avro single-object records keyed by app_id, through an
//! idempotent `acks=all` producer, answered only once the broker has them.
//!
//! The beats of a request are produced together and awaited together: each record carries
//! its batch and index to the delivery callback, which counts the batch down and wakes its
//! request once the broker has answered for every record, so a beat costs no channel, no
//! task wake-up and no timer of its own.
//!
//! Backpressure: at most `ingest.max_in_flight` beats wait for the broker at once; a request
//! that would pass the cap, or finds librdkafka's queue full, is refused (429) rather than
//! buffered. A beat the broker has not acknowledged within `ingest.produce_timeout_ms` fails
//! (503).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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

/// The producer of the ingest: its delivery callbacks settle [`Acks`].
pub type IngestProducer = ThreadedProducer<Deliveries>;

/// The producer's context: hands each acknowledgement to its batch.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(PublishError::Unavailable(e.to_string())),
        };
        slot.acks.settle(slot.index, outcome);
    }
}

/// One record's place: its batch and its index there.
pub struct Slot {
    acks: Arc<Acks>,
    index: usize,
}

/// Where a beat of a batch stands.
const WAITING: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

/// A batch's acknowledgements as the broker gives them.
struct Acks {
    /// Each beat's state: [`WAITING`], [`DELIVERED`] or [`FAILED`].
    states: Box<[AtomicU8]>,
    /// Why the failed ones failed, by index.
    failures: Mutex<Vec<(usize, PublishError)>>,
    /// Beats not answered yet, plus one while the batch is being enqueued.
    pending: AtomicUsize,
    /// Told when `pending` reaches zero.
    done: Notify,
}

impl Acks {
    fn new(beats: usize) -> Acks {
        Acks {
            states: (0..beats).map(|_| AtomicU8::new(WAITING)).collect(),
            failures: Mutex::default(),
            pending: AtomicUsize::new(beats + 1),
            done: Notify::new(),
        }
    }

    fn settle(&self, index: usize, outcome: Result<(), PublishError>) {
        let state = match outcome {
            Ok(()) => DELIVERED,
            Err(e) => {
                self.failures.lock().unwrap_or_else(|p| p.into_inner()).push((index, e));
                FAILED
            }
        };
        self.states[index].store(state, Ordering::Release);
        self.count_down();
    }

    fn count_down(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A permit is kept if the request is not waiting yet.
            self.done.notify_one();
        }
    }

    async fn all_answered(&self) {
        while self.pending.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }

    /// Each beat's outcome; one still waiting failed for lack of an answer within `timeout`.
    fn outcomes(&self, timeout: Duration) -> Vec<Result<(), PublishError>> {
        let mut failures = std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
        failures.sort_unstable_by_key(|(index, _)| std::cmp::Reverse(*index));
        let unanswered = || PublishError::Unavailable(format!("no acknowledgement within {timeout:?}"));
        let mut outcomes = Vec::with_capacity(self.states.len());
        for (index, state) in self.states.iter().enumerate() {
            outcomes.push(match state.load(Ordering::Acquire) {
                DELIVERED => Ok(()),
                WAITING => Err(unanswered()),
                _ => match failures.last() {
                    Some((i, _)) if *i == index => Err(failures.pop().expect("just seen").1),
                    _ => Err(unanswered()),
                },
            });
        }
        outcomes
    }
}

/// The producer, its topic and its in-flight cap.
pub struct Publisher {
    producer: IngestProducer,
    topic: String,
    in_flight: Arc<Semaphore>,
    /// The cap on `in_flight`.
    max_in_flight: usize,
    /// Longest wait for an acknowledgement; librdkafka's own message timeout is the same.
    timeout: Duration,
}

impl Publisher {
    pub fn new(
        producer: IngestProducer,
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

    /// Produces `beats` and waits for the broker's acknowledgement of each: their outcomes,
    /// in order.
    pub async fn publish(&self, beats: &[&Heartbeat]) -> Vec<Result<(), PublishError>> {
        let acks = Arc::new(Acks::new(beats.len()));
        self.enqueue(beats, &acks);
        acks.count_down();
        // A margin over librdkafka's own timeout, which reports the failure itself.
        let within = self.timeout + Duration::from_millis(500);
        let _ = tokio::time::timeout(within, acks.all_answered()).await;
        acks.outcomes(self.timeout)
    }

    /// Hands `beats` to librdkafka; one it refuses is settled at once.
    fn enqueue(&self, beats: &[&Heartbeat], acks: &Arc<Acks>) {
        // librdkafka copies the payload: one buffer serves the batch.
        let mut payload = Vec::with_capacity(256);
        for (index, beat) in beats.iter().enumerate() {
            payload.clear();
            codec::avro::encode_into(&mut payload, beat);
            let slot = Box::new(Slot { acks: acks.clone(), index });
            let record =
                BaseRecord::with_opaque_to(&self.topic, slot).key(beat.app_id.as_bytes()).payload(&payload);
            if let Err((e, _)) = self.producer.send(record) {
                acks.settle(index, Err(refused(e)));
            }
        }
    }
}

fn refused(e: KafkaError) -> PublishError {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => PublishError::Busy,
        other => PublishError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_answered_once_every_beat_is() {
        let acks = Arc::new(Acks::new(3));
        acks.settle(1, Err(PublishError::Busy));
        let waiter = tokio::spawn({
            let acks = acks.clone();
            async move { acks.all_answered().await }
        });
        acks.count_down();
        acks.settle(0, Ok(()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one beat still waits for the broker");
        acks.settle(2, Err(PublishError::Unavailable("gone".into())));
        waiter.await.unwrap();
        let outcomes = acks.outcomes(Duration::from_secs(1));
        assert_eq!(
            outcomes,
            [Ok(()), Err(PublishError::Busy), Err(PublishError::Unavailable("gone".into()))]
        );
    }

    #[test]
    fn a_beat_without_an_answer_failed() {
        let acks = Acks::new(2);
        acks.settle(0, Ok(()));
        let outcomes = acks.outcomes(Duration::from_secs(5));
        assert_eq!(outcomes[0], Ok(()));
        assert!(matches!(&outcomes[1], Err(PublishError::Unavailable(m)) if m.contains("5s")));
    }
}
