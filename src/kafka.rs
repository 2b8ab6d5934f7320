//! Kafka plumbing shared by the stages and the load generator: producers (plain and
//! transactional) whose context counts deliveries, sending that waits when librdkafka's
//! queue is full, and retrying the calls that fail only for now (a partition without its
//! leader yet, a broker away).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::backoff::Backoff;
use crate::config::KafkaConfig;

/// Counts what the broker acknowledged and what it refused.
#[derive(Default)]
pub struct DeliveryTracker {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl DeliveryTracker {
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().expect("not poisoned").clone()
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().expect("not poisoned").get_or_insert_with(|| e.to_string());
            }
        }
    }
}

pub type TrackedProducer = BaseProducer<DeliveryTracker>;

/// An idempotent producer for the configured cluster, batching for throughput. Keys are
/// partitioned with murmur2, as the Java client does, so every producer agrees on where an
/// application's records go.
pub fn producer(kafka: &KafkaConfig) -> Result<TrackedProducer, KafkaError> {
    producer_config(kafka).create_with_context(DeliveryTracker::default())
}

/// A transactional producer (`transactional.id`), for outputs that commit together with the
/// consumed offsets. `init_transactions` is the caller's: it blocks, and it fences any older
/// producer with the same id.
pub fn transactional_producer(
    kafka: &KafkaConfig,
    transactional_id: &str,
) -> Result<TrackedProducer, KafkaError> {
    let mut c = producer_config(kafka);
    c.set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "60000");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c.create_with_context(DeliveryTracker::default())
}

/// An idempotent producer (`acks=all`) whose deliveries are awaited as futures, for
/// callers that answer only once the broker has a record; a record not acknowledged within
/// `message_timeout` fails.
pub fn future_producer(
    kafka: &KafkaConfig,
    message_timeout: Duration,
) -> Result<rdkafka::producer::FutureProducer, KafkaError> {
    acknowledged_producer_config(kafka, message_timeout).create()
}

/// The configuration of [`future_producer`], for a producer of another kind with the same
/// settings (the ingest bench's ceiling).
pub fn acknowledged_producer_config(kafka: &KafkaConfig, message_timeout: Duration) -> rdkafka::ClientConfig {
    let mut c = producer_config(kafka);
    // An answer waits for the batch: a short linger keeps the latency low.
    c.set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", message_timeout.as_millis().to_string());
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

fn producer_config(kafka: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut c = kafka.client_config();
    c.set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", "120000")
        .set("partitioner", "murmur2_random");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// Enqueues one record, serving delivery callbacks while librdkafka's queue is full.
pub fn send(
    producer: &TrackedProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<(), KafkaError> {
    send_to(producer, topic, None, key, payload, headers)
}

/// As [`send`], to the given partition (`None`: the partitioner's choice by key).
pub fn send_to(
    producer: &TrackedProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(payload);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    enqueue(producer, record)
}

/// As [`send`], with the key as the bytes it was (or none), as a dead letter keeps it.
pub fn send_raw(
    producer: &TrackedProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    enqueue(producer, record)
}

/// Enqueues a record, serving delivery callbacks while librdkafka's queue is full.
fn enqueue(producer: &TrackedProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Logs a client-level error, except the end-of-partition events the stages ask for
/// (`enable.partition.eof`), which librdkafka also reports as errors.
pub fn log_client_error(error: &KafkaError, reason: &str) {
    if matches!(error, KafkaError::PartitionEOF(_)) || error.to_string().contains("PartitionEOF") {
        return;
    }
    tracing::error!(error = %error, "kafka: {reason}");
}

/// Publishes, per assigned partition, how many records the consumer is behind the
/// partition's end, and reports the stage's partitions to [`crate::health::HEALTH`]. Asks the
/// broker, so call it every few seconds, not per batch.
pub fn record_lag<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    stage: &str,
) {
    use rdkafka::Offset;
    use rdkafka::consumer::Consumer;

    use crate::health::{HEALTH, PartitionObservation};
    let Ok(position) = consumer.position() else { return };
    let elements = position.elements();
    let mut observed = Vec::with_capacity(elements.len());
    for e in &elements {
        let end = match e.offset() {
            Offset::Offset(_) => {
                consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1)).ok()
            }
            _ => None,
        };
        let observation = match (e.offset(), end) {
            (Offset::Offset(at), Some((_, high))) => {
                crate::metrics::METRICS
                    .consumer_lag
                    .with_label_values(&[stage, e.topic(), &e.partition().to_string()])
                    .set((high - at).max(0));
                Some(PartitionObservation { position: at, end: high })
            }
            _ => None,
        };
        observed.push((e.topic(), e.partition(), observation));
    }
    HEALTH.observe_partitions(stage, &observed);
}

/// Errors that say "not yet" rather than "no": a topic created a moment ago whose
/// partitions have no leader yet, a broker restarting or out of reach for a while.
pub fn is_transient(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::UnknownLeaderEpoch
                | Code::FencedLeaderEpoch
                | Code::BrokerNotAvailable
                | Code::NotCoordinator
                | Code::RequestTimedOut
                | Code::OperationTimedOut
                | Code::BrokerTransportFailure
                | Code::AllBrokersDown
                // A broker shutting down answers a partition just assigned as unknown.
                | Code::UnknownPartition
                | Code::UnknownTopicOrPartition
        )
    )
}

/// A client that reads consumer group `group`'s offsets as committed so far: `read_committed`
/// (librdkafka's require_stable) would wait for the transaction in flight, which a working
/// processor has nearly all the time, or which a killed one left open.
pub fn committed_offsets_reader(kafka: &KafkaConfig, group: &str) -> Result<BaseConsumer, KafkaError> {
    kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
}

/// The committed offsets of `partitions` of `topic` in the consumer's group, once no
/// transaction holds them: a transaction still open on them (a killed member's, until the
/// broker aborts it) makes the broker answer "unstable", and the question is asked again
/// with backoff until `deadline`. `None`: nothing committed yet.
pub fn stable_committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    deadline: Instant,
) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    retrying_while(
        deadline,
        |e| is_transient(e) || is_unstable(e),
        || {
            let committed = consumer.committed_offsets(tpl.clone(), Duration::from_secs(30))?;
            committed
                .elements()
                .iter()
                .map(|e| {
                    e.error()?;
                    Ok((e.partition(), if let Offset::Offset(o) = e.offset() { Some(o) } else { None }))
                })
                .collect()
        },
    )
}

fn is_unstable(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnstableOffsetCommit)
}

/// How long the stages retry a call that keeps failing with a transient error before the
/// error is theirs to report.
pub const TRANSIENT_RETRY_TIMEOUT: Duration = Duration::from_secs(120);

/// Calls `call` until it succeeds, fails for good, or `deadline` is near, backing off from
/// 100 ms to 2 s between attempts that failed with a transient error.
pub fn retrying<T>(deadline: Instant, call: impl FnMut() -> Result<T, KafkaError>) -> Result<T, KafkaError> {
    retrying_while(deadline, is_transient, call)
}

/// As [`retrying`], with `retry` telling which errors to try again.
fn retrying_while<T>(
    deadline: Instant,
    retry: impl Fn(&KafkaError) -> bool,
    mut call: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let mut backoff = Backoff::client_call();
    loop {
        let delay = backoff.failed();
        match call() {
            Err(e) if retry(&e) && Instant::now() + delay < deadline => {
                tracing::info!(error = %e, retry_in_ms = delay.as_millis() as u64, "kafka: not ready yet; retrying");
                std::thread::sleep(delay);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_what_is_not_ready_yet_and_nothing_else() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut calls = 0;
        let ok = retrying(far, || {
            calls += 1;
            if calls < 3 {
                Err(KafkaError::MetadataFetch(RDKafkaErrorCode::NotLeaderForPartition))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(ok.unwrap(), 3, "a leaderless partition is waited for");

        assert_eq!(
            attempts_failing_with(RDKafkaErrorCode::TopicAuthorizationFailed, far),
            1,
            "a refusal is not retried"
        );
        let near = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            attempts_failing_with(RDKafkaErrorCode::LeaderNotAvailable, near),
            1,
            "no attempt past the deadline"
        );
    }

    /// How many times `retrying` calls a fetch that always fails with `code`.
    fn attempts_failing_with(code: RDKafkaErrorCode, deadline: Instant) -> usize {
        let mut calls = 0;
        let result = retrying(deadline, || -> Result<(), KafkaError> {
            calls += 1;
            Err(KafkaError::MetadataFetch(code))
        });
        assert!(result.is_err());
        calls
    }
}
