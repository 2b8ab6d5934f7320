//! Reading a topic back from its beginning to its end: the current end, or, for state that
//! must match the offsets committed with it, the settled end (no transaction pending).
//! How a restore reads `app-state`, how tools and tests check what reached Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::kafka;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("reading {topic} did not reach its end within {secs} s ({read} of {expected} records)")]
    Timeout { topic: String, secs: u64, read: u64, expected: u64 },
    #[error(
        "partition {partition} of {topic} still has a transaction pending after {secs} s (committed records end at offset {committed_end}, the log at {log_end})"
    )]
    Unsettled { topic: String, partition: i32, secs: u64, committed_end: i64, log_end: i64 },
}

/// Where a read stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The end of the committed records when the read begins (the last stable offset).
    Current,
    /// As `Current`, once no transaction is pending on the partition. A transaction reported
    /// committed a moment ago may still have its markers on their way to the partition;
    /// until they are there, the committed records end before it. A state that must be
    /// read up to the consumed offsets committed with it needs this end.
    Settled,
}

/// Reads `topic` to the end it had when the call began (read_committed) and returns its
/// records, partition by partition in offset order. Blocking.
pub fn read_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>, ReadError> {
    read_partitions_to_end(kafka, topic, None, timeout)
}

/// As [`read_to_end`], for the given partitions only (`None`: all of them).
pub fn read_partitions_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    only: Option<&[i32]>,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>, ReadError> {
    let mut out = Vec::new();
    read_partitions_in_chunks(kafka, topic, only, timeout, usize::MAX, |chunk| out.extend(chunk))?;
    out.sort_by_key(|m| (m.partition(), m.offset()));
    Ok(out)
}

/// As [`read_partitions_to_end`], handing the records to `each` in chunks of up to `chunk`
/// as they arrive (each partition's in offset order), so that the whole topic never has to
/// be held at once.
pub fn read_partitions_in_chunks(
    kafka: &KafkaConfig,
    topic: &str,
    only: Option<&[i32]>,
    timeout: Duration,
    chunk: usize,
    mut each: impl FnMut(Vec<OwnedMessage>),
) -> Result<(), ReadError> {
    let mut out = Vec::new();
    read_partitions_each(kafka, topic, only, End::Current, timeout, |msg| {
        out.push(msg.detach());
        if out.len() >= chunk {
            each(std::mem::take(&mut out));
        }
    })?;
    if !out.is_empty() {
        each(out);
    }
    Ok(())
}

/// As [`read_partitions_to_end`], up to `end`, lending each record to `each` as it arrives
/// (each partition's in offset order): the caller copies what it keeps.
pub fn read_partitions_each(
    kafka: &KafkaConfig,
    topic: &str,
    only: Option<&[i32]>,
    end: End,
    timeout: Duration,
    each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ReadError> {
    let consumer: BaseConsumer = reader_config(kafka)
        .set("group.id", kafka.name("tally"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    // The log's end, transactions pending or not, for a settled end. Made at once, so that
    // both clients connect at the same time.
    let log: Option<BaseConsumer> = match end {
        End::Current => None,
        End::Settled => Some(reader_config(kafka).set("isolation.level", "read_uncommitted").create()?),
    };
    let deadline = Instant::now() + timeout;
    let span = Span { topic, deadline, timeout };
    let (assignment, remaining, expected) = span.assignment(&consumer, log.as_ref(), only)?;
    if !remaining.is_empty() {
        consumer.assign(&assignment)?;
        span.read(&consumer, remaining, expected, each)?;
    }
    close_in_background((consumer, log));
    Ok(())
}

/// One read of a topic: its name, and when it must be done.
struct Span<'a> {
    topic: &'a str,
    deadline: Instant,
    timeout: Duration,
}

impl Span<'_> {
    /// Where the read starts and ends: the assignment of the partitions to read (`only`, or
    /// all) from their first offset, the end of each that holds records, and how many records
    /// that makes.
    fn assignment(
        &self,
        consumer: &BaseConsumer,
        log: Option<&BaseConsumer>,
        only: Option<&[i32]>,
    ) -> Result<(TopicPartitionList, BTreeMap<i32, i64>, u64), ReadError> {
        let (topic, deadline) = (self.topic, self.deadline);
        let metadata =
            kafka::retrying(deadline, || consumer.fetch_metadata(Some(topic), Duration::from_secs(30)))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .filter(|p: &Vec<i32>| !p.is_empty())
            .ok_or_else(|| ReadError::NoTopic(topic.to_owned()))?;
        let partitions = partitions.into_iter().filter(|p| only.is_none_or(|o| o.contains(p)));
        let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        let mut expected = 0u64;
        // The log's client is told the topic's leaders first: asked for a watermark while it
        // knows none, it looks them up on its own schedule (a wait growing by 100 ms a try).
        if let Some(log) = log {
            kafka::retrying(deadline, || log.fetch_metadata(Some(topic), Duration::from_secs(30)))?;
        }
        for p in partitions {
            let (low, high) = match log {
                None => kafka::retrying(deadline, || {
                    consumer.fetch_watermarks(topic, p, Duration::from_secs(30))
                })?,
                Some(log) => settled_watermarks(consumer, log, topic, p, deadline, self.timeout)?,
            };
            if high > low {
                remaining.insert(p, high);
                expected += (high - low) as u64;
                assignment.add_partition_offset(topic, p, Offset::Offset(low))?;
            }
        }
        Ok((assignment, remaining, expected))
    }

    /// Polls the assigned partitions until each `remaining` one reached its end.
    fn read(
        &self,
        consumer: &BaseConsumer,
        mut remaining: BTreeMap<i32, i64>,
        expected: u64,
        mut each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), ReadError> {
        let topic = self.topic;
        let mut read = 0u64;
        while !remaining.is_empty() {
            if Instant::now() > self.deadline {
                return Err(ReadError::Timeout {
                    topic: topic.to_owned(),
                    secs: self.timeout.as_secs(),
                    read,
                    expected,
                });
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                // Transaction markers take offsets too: a partition whose position reached the
                // end is done even if its last offset was not a record.
                let position = consumer.position()?;
                remaining.retain(|&p, &mut high| {
                    !matches!(position.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= high)
                });
                continue;
            };
            let msg = msg?;
            let partition = msg.partition();
            if remaining.get(&partition).is_some_and(|&high| msg.offset() + 1 >= high) {
                remaining.remove(&partition);
            }
            each(&msg);
            read += 1;
        }
        Ok(())
    }
}

/// The configuration of a client that reads once and is closed. A new client drops its
/// bootstrap connection once it knows the broker's id and opens another, which librdkafka
/// holds back for half of `reconnect.backoff.ms`: a short backoff keeps that wait short (see
/// `docs/benchmarks.md`); a broker that is away is still asked less and less often (the
/// backoff doubles up to `reconnect.backoff.max.ms`).
fn reader_config(kafka: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut config = kafka.client_config();
    config.set("reconnect.backoff.ms", "10");
    config
}

/// Closes Kafka clients on a thread of their own: a client's close waits for its threads to
/// stop (≈ 50 ms each here), and once the records are read nothing depends on it.
fn close_in_background(clients: impl Send + 'static) {
    // Should no thread start, the clients are closed here, as they would have been.
    let _ = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(clients));
}

/// The watermarks of a partition once no transaction is pending on it: asked again, with
/// backoff, until `consumer`'s (read_committed) end is the end of the log `log` sees.
fn settled_watermarks(
    consumer: &BaseConsumer,
    log: &BaseConsumer,
    topic: &str,
    partition: i32,
    deadline: Instant,
    timeout: Duration,
) -> Result<(i64, i64), ReadError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        let (low, committed_end) = kafka::retrying(deadline, || {
            consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))
        })?;
        let (_, log_end) =
            kafka::retrying(deadline, || log.fetch_watermarks(topic, partition, Duration::from_secs(30)))?;
        if committed_end >= log_end {
            if delay > Duration::from_millis(10) {
                tracing::info!(
                    topic,
                    partition,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "kafka: a pending transaction settled"
                );
            }
            return Ok((low, committed_end));
        }
        if Instant::now() + delay >= deadline {
            return Err(ReadError::Unsettled {
                topic: topic.to_owned(),
                partition,
                secs: timeout.as_secs(),
                committed_end,
                log_end,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}
