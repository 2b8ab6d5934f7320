//! The processor stage: consumes `heartbeats` in consumer group `<prefix>processor`, runs
//! one [`Engine`] per assigned partition, and publishes alerts, rollups and snapshots.
//!
//! The loop works in batches: read up to `max_batch_records` or `commit_interval_ms`, then
//! publish every output of the batch and the consumed offsets in one Kafka transaction
//! (exactly-once v2: the offsets go with the consumer group's metadata, so a zombie of an
//! older generation cannot commit). Readers with `isolation.level=read_committed` see a
//! batch's alerts, rollups, state records and dead letters all or not at all.
//!
//! A batch holds what it decided per partition until its transaction. A partition revoked
//! meanwhile (by a rebalance, or lost with the group session) loses its engine and its share
//! of the batch at once, before the next record: its next owner reads those records again
//! from the committed offset, so none of it may be committed here.
//!
//! Each application's engine state goes to `app-state` (in the partition of the same number
//! as its heartbeats) in the transaction of a batch that changed it, its trend windows in a
//! record of their own when they changed; a state only its beats changed may wait (see
//! `engine::writes`), and the partition's offset is then committed no further than its first
//! beat unwritten. Before it
//! processes a newly assigned partition (also one given back after it was revoked), the
//! processor rebuilds that partition's engine from there (read_committed, to its end once no
//! transaction is pending on it): the state as of the committed offsets, to which the engine
//! applies again the beats read from there that its states do not hold. When a
//! transaction fails it is aborted, every partition goes back to its committed offset, and
//! its engine is rebuilt the same way. A producer fenced by another instance with the same
//! transactional id stops the stage without writing. Undecodable or invalid records go to
//! `heartbeats-dlq` with the reason in headers, and processing goes on. A record whose
//! writer schema the Schema Registry cannot give right now (down, slow) is no such record:
//! the batch ends before it, its partition is sought back to it, and it is read again after
//! an exponential backoff. A batch's transaction begins with its first output, once the
//! batch before it committed, so the pause holds no transaction open.
//!
//! A batch's transaction commits on a thread of its own while the next batch is read and
//! applied to the engines (which touches no producer); that batch's outputs are sent only
//! once the commit succeeded. When it failed, the batch read meanwhile is dropped with the
//! rest, as after any failed transaction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;

use crate::assignment::AssignmentLog;
use crate::backoff::Backoff;
use crate::config::{AlertEncoding, Config};
use crate::kafka;
use crate::metrics::METRICS;
use crate::readback::ReadError;
use crate::registry::{Registry, RegistryError, Unavailable};
use crate::shutdown::Shutdown;
use crate::topology::{Topics, names};

mod apply;
mod batch;
mod output;
mod partitions;
mod transaction;

use batch::{Batch, Pending};
use output::Outputs;
use partitions::{Flow, Partitions};
use transaction::{TXN_TIMEOUT, Transaction, TxnFailure};

#[derive(Debug, Error)]
pub enum ProcessorError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("registering the alert schema: {0}")]
    Registry(RegistryError),
    #[error("config key rules: {0}")]
    Rules(String),
    #[error("restoring partition state from app-state: {0}")]
    Restore(#[from] ReadError),
    #[error(
        "topic {app_state} has {has} partitions, fewer than {heartbeats} ({need}): each heartbeats partition keeps its state in the app-state partition of the same number"
    )]
    Topology { app_state: String, has: usize, heartbeats: String, need: usize },
    #[error(
        "transactional id {id} is fenced: another instance took it over, or the broker aborted a transaction left open longer than transaction.timeout.ms; stopping without writing, a restart restores the committed state ({message})"
    )]
    Fenced { id: String, message: String },
}

/// How often consumer lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(10);

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs the processor until `shutdown`; blocking. `ready` turns true once it has joined
/// its group and read its first assignment.
pub fn run(config: &Config, shutdown: &Shutdown, ready: &AtomicBool) -> Result<(), ProcessorError> {
    let mut processor = Processor::start(config, shutdown, ready)?;
    while !shutdown.is_triggered() {
        processor.step()?;
    }
    processor.finish()?;
    // Every batch ended with its transaction committed (or aborted): nothing is in flight.
    tracing::info!("processor stopped");
    Ok(())
}

/// What the processor's loop holds from one batch to the next.
struct Processor<'a> {
    config: &'a Config,
    shutdown: &'a Shutdown,
    ready: &'a AtomicBool,
    /// Consumer group `<prefix>processor` on `heartbeats`, read_committed.
    consumer: BaseConsumer<AssignmentLog>,
    /// The owned partitions and their engines.
    partitions: Partitions<'a>,
    /// What the current batch read and decided.
    batch: Batch,
    /// The transactional producer, and whether a transaction is open.
    txn: Transaction,
    /// Its `transactional.id`, named when it is fenced.
    transactional_id: String,
    outputs: Outputs,
    /// The Schema Registry, when beats may come in the Confluent wire format.
    registry: Option<Registry>,
    /// Set when the registry could not give a writer schema: the next step pauses first.
    registry_down: Option<Unavailable>,
    registry_backoff: Backoff,
    lag_checked: Instant,
    /// The batch whose transaction the committer is committing.
    in_flight: Option<InFlight>,
}

/// A batch handed to the committer: what its latency and duration are measured from.
struct InFlight {
    /// When each of its records arrived.
    arrivals: Vec<i64>,
    /// When its reading began.
    started: Instant,
}

impl InFlight {
    /// Counts the committed transaction, its records' latency and its duration.
    fn committed(self) {
        METRICS.transactions.with_label_values(&["committed"]).inc();
        let done = wall_ms();
        for t in self.arrivals {
            METRICS.record_latency_seconds.observe(((done - t).max(0) as f64) / 1000.0);
        }
        METRICS.batch_seconds.with_label_values(&["processor"]).observe(self.started.elapsed().as_secs_f64());
    }
}

impl<'a> Processor<'a> {
    /// Joins the group and initialises the transactional producer (fencing an older one
    /// with the same id).
    fn start(
        config: &'a Config,
        shutdown: &'a Shutdown,
        ready: &'a AtomicBool,
    ) -> Result<Self, ProcessorError> {
        let k = &config.kafka;
        let topics = Topics::of(k);
        let registry = Registry::from_config(&config.schema_registry);
        let alert_schema_id = alert_schema_id(config, registry.as_ref(), shutdown)?;
        let consumer: BaseConsumer<AssignmentLog> = k
            .client_config()
            .set("group.id", k.name("processor"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "50")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create_with_context(AssignmentLog::new("processor"))?;
        check_partitions(&consumer, &topics)?;
        consumer.subscribe(&[&topics.heartbeats])?;
        let transactional_id = config.processor.transactional_id(k);
        let rules = config.compiled_rules().map_err(|e| ProcessorError::Rules(e.to_string()))?;
        tracing::info!(topic = %topics.heartbeats, group = %k.name("processor"), "processor started");
        let txn = Transaction::start(k, &transactional_id, shutdown)
            .map_err(|e| fenced_or(e, &transactional_id))?;
        let processor = Processor {
            config,
            shutdown,
            ready,
            consumer,
            partitions: Partitions::new(config, rules, ready),
            batch: Batch::default(),
            txn,
            transactional_id,
            outputs: Outputs::new(topics, alert_schema_id),
            registry,
            registry_down: None,
            registry_backoff: Backoff::service(),
            lag_checked: Instant::now(),
            in_flight: None,
        };
        Ok(processor)
    }

    /// One batch: read it and apply it to the engines while the previous batch's transaction
    /// commits; once that one committed, send this one's outputs and offsets and hand its
    /// transaction to the committer. A failed commit is aborted and recovered from.
    fn step(&mut self) -> Result<(), ProcessorError> {
        if let Some(e) = self.registry_down.take() {
            if self.settle_previous()? {
                self.pause_for_registry(e);
            }
            return Ok(());
        }
        let started = Instant::now();
        self.partitions.apply_membership(self.consumer.context(), &mut self.batch);
        self.partitions.restore_pending(&self.consumer, &mut self.batch)?;
        let seek_failed = self.read_batch(started)?;
        let records = self.batch.records;
        METRICS
            .records_in
            .with_label_values(&["processor", &self.outputs.topics.heartbeats])
            .inc_by(records as u64);
        if self.lag_checked.elapsed() >= LAG_EVERY {
            kafka::record_lag(&self.consumer, "processor");
            self.lag_checked = Instant::now();
        }
        if records > 0 && self.registry_down.is_none() {
            self.registry_backoff.succeeded();
        }
        let arrivals = std::mem::take(&mut self.batch.arrivals);
        self.partitions.apply_and_tick(&mut self.batch, wall_ms());
        if !self.settle_previous()? {
            return Ok(());
        }
        let outcome = match seek_failed {
            Some(e) => Err(TxnFailure::Abort(e)),
            None => self.send_batch(),
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => self.in_flight = Some(InFlight { arrivals, started }),
            Err(TxnFailure::Fatal(e)) => return Err(self.fenced(e)),
            Err(TxnFailure::Abort(e) | TxnFailure::Reset(e)) => return self.transaction_failed(e),
        }
        self.partitions.update_gauges();
        Ok(())
    }

    /// Waits for the transaction handed to the committer. `Ok(false)`: it failed, and the
    /// processor went back to the committed offsets, dropping the batch read meanwhile.
    fn settle_previous(&mut self) -> Result<bool, ProcessorError> {
        let Some(flight) = self.in_flight.take() else { return Ok(true) };
        match self.txn.settle() {
            Ok(()) => {
                flight.committed();
                Ok(true)
            }
            Err(e) => match TxnFailure::from(e) {
                TxnFailure::Fatal(e) => Err(self.fenced(e)),
                TxnFailure::Abort(e) | TxnFailure::Reset(e) => self.transaction_failed(e).map(|()| false),
            },
        }
    }

    fn transaction_failed(&mut self, e: KafkaError) -> Result<(), ProcessorError> {
        tracing::warn!(error = %e, "processor: transaction failed; aborting and rewinding to the committed offsets");
        METRICS.transactions.with_label_values(&["aborted"]).inc();
        self.recover()
    }

    /// Ends the run: the last transaction handed to the committer commits, or is aborted (a
    /// restart reads its batch again).
    fn finish(mut self) -> Result<(), ProcessorError> {
        let Some(flight) = self.in_flight.take() else { return Ok(()) };
        match self.txn.settle() {
            Ok(()) => flight.committed(),
            Err(e) => match TxnFailure::from(e) {
                TxnFailure::Fatal(e) => return Err(self.fenced(e)),
                TxnFailure::Abort(e) | TxnFailure::Reset(e) => {
                    tracing::warn!(error = %e, "processor: the last transaction failed; aborting it");
                    self.txn.abort().ok();
                }
            },
        }
        Ok(())
    }

    /// Reads up to `max_batch_records` or until `commit_interval_ms` has passed since
    /// `started`. Returns the error of a seek that failed: the batch may not commit.
    fn read_batch(&mut self, started: Instant) -> Result<Option<KafkaError>, ProcessorError> {
        let commit_interval = Duration::from_millis(self.config.processor.commit_interval_ms);
        self.batch.records = 0;
        while self.batch.records < self.config.processor.max_batch_records {
            let left = commit_interval.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let polled = self.consumer.poll(left);
            // A rebalance is served inside the poll: before anything else, drop what was
            // revoked, and rebuild what was assigned before its first record.
            self.partitions.apply_membership(self.consumer.context(), &mut self.batch);
            let Some(polled) = polled else { break };
            let wall = wall_ms();
            match polled {
                Err(KafkaError::PartitionEOF(p)) => {
                    self.partitions.ensure(&self.consumer, p, &mut self.batch)?;
                    self.ready.store(true, Ordering::Relaxed);
                    if self.partitions.engines.contains_key(&p) {
                        self.batch.hold(p, Pending::End { wall });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "processor: consumer error"),
                Ok(msg) => {
                    self.partitions.ensure(&self.consumer, msg.partition(), &mut self.batch)?;
                    self.ready.store(true, Ordering::Relaxed);
                    let registry = self.registry.as_ref();
                    match self.partitions.on_record(&self.consumer, &msg, &mut self.batch, registry, wall) {
                        Ok(Flow::Next) => {}
                        Ok(Flow::SeekFailed(e)) => return Ok(Some(e)),
                        Err(unavailable) => {
                            // Not the record's fault: end the batch before it, and read it
                            // again after a pause.
                            self.registry_down = Some(unavailable);
                            let at = Offset::Offset(msg.offset());
                            let sought = self.consumer.seek(msg.topic(), msg.partition(), at, TXN_TIMEOUT);
                            // Going on would skip the record: start over from the committed
                            // offsets instead, as after a failed transaction.
                            return Ok(sought.err());
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Sends what the batch decided and its consumed offsets in one transaction, and hands
    /// it to the committer. `Ok(false)` when there was nothing to commit.
    fn send_batch(&mut self) -> Result<bool, TxnFailure> {
        self.send_outputs()?;
        let offsets: BTreeMap<i32, i64> = self
            .partitions
            .engines
            .iter_mut()
            .filter_map(|(p, e)| Some((*p, e.offset_to_commit()?)))
            .collect();
        if !self.txn.is_open() && offsets.is_empty() {
            return Ok(false);
        }
        self.txn.begin()?;
        if !offsets.is_empty() {
            // A session lost since the last poll: its partitions are someone else's, and
            // offsets sent under the reset generation would not be fenced.
            if self.consumer.assignment_lost() {
                return Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::State).into());
            }
            let mut tpl = TopicPartitionList::new();
            for (p, next) in &offsets {
                tpl.add_partition_offset(&self.outputs.topics.heartbeats, *p, Offset::Offset(*next))?;
            }
            // Not a member of the group (any more): the batch cannot commit.
            let group =
                self.consumer.group_metadata().ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
            self.txn.producer.send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)?;
        }
        self.txn.commit_in_background();
        Ok(true)
    }

    /// Sends what the batch decided: the changed states, the dead letters, the alerts and
    /// rollups; the transaction begins with the first of them.
    fn send_outputs(&mut self) -> Result<(), TxnFailure> {
        for (p, records) in std::mem::take(&mut self.batch.state_records) {
            for record in records {
                self.txn.begin()?;
                self.outputs.send_state(&self.txn.producer, p, &record)?;
            }
        }
        for letter in std::mem::take(&mut self.batch.dead_letters) {
            self.txn.begin()?;
            self.outputs.send_dead_letter(&self.txn.producer, &letter)?;
        }
        for effects in std::mem::take(&mut self.batch.effects).into_values() {
            if !effects.is_empty() {
                self.txn.begin()?;
                self.outputs.publish(&self.txn.producer, effects)?;
            }
        }
        Ok(())
    }

    /// After a failed transaction: abort it, go back to the committed offsets, and rebuild
    /// the engines, which had moved past them. While the broker is away this fails: retried
    /// with backoff until it works or the stage is told to stop.
    fn recover(&mut self) -> Result<(), ProcessorError> {
        self.batch.clear();
        let mut backoff = Backoff::service();
        loop {
            match self.try_recover() {
                Ok(()) => return Ok(()),
                Err(e @ ProcessorError::Fenced { .. }) => return Err(e),
                Err(e) if self.shutdown.is_triggered() => return Err(e),
                Err(e) => {
                    let delay = backoff.failed();
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "processor: recovery failed; retrying");
                    std::thread::sleep(delay);
                }
            }
        }
    }

    fn try_recover(&mut self) -> Result<(), ProcessorError> {
        if let Err(e) = self.txn.abort() {
            let e = match TxnFailure::from(e) {
                TxnFailure::Reset(e) => e,
                TxnFailure::Fatal(e) => return Err(self.fenced(e)),
                TxnFailure::Abort(e) => return Err(ProcessorError::Kafka(e)),
            };
            tracing::warn!(error = %e, "processor: the producer cannot go on; a new one takes over its transactional id");
            METRICS.transactions.with_label_values(&["producer_reset"]).inc();
            self.txn = Transaction::start(&self.config.kafka, &self.transactional_id, self.shutdown)
                .map_err(|e| fenced_or(e, &self.transactional_id))?;
        }
        self.partitions.apply_membership(self.consumer.context(), &mut self.batch);
        rewind(&self.consumer, &self.outputs.topics.heartbeats)?;
        self.partitions.rebuild_all(&self.consumer, &mut self.batch)
    }

    /// The registry could not give a writer schema: wait before reading the record again.
    fn pause_for_registry(&mut self, e: Unavailable) {
        let delay = self.registry_backoff.failed();
        tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "processor: schema registry unavailable; reading the record again after a pause");
        METRICS.registry_unavailable.with_label_values(&["processor"]).inc();
        sleep_unless_stopped(delay, self.shutdown);
    }

    fn fenced(&self, e: KafkaError) -> ProcessorError {
        fenced(e, &self.transactional_id)
    }
}

fn fenced(e: KafkaError, transactional_id: &str) -> ProcessorError {
    ProcessorError::Fenced { id: transactional_id.to_owned(), message: e.to_string() }
}

/// A transaction call that failed: fenced (or fatal), or an error to retry or report.
fn fenced_or(e: KafkaError, transactional_id: &str) -> ProcessorError {
    match TxnFailure::from(e) {
        TxnFailure::Fatal(e) => fenced(e, transactional_id),
        TxnFailure::Abort(e) | TxnFailure::Reset(e) => ProcessorError::Kafka(e),
    }
}

/// Puts every assigned partition back at its committed offset, once stable.
fn rewind(consumer: &BaseConsumer<AssignmentLog>, topic: &str) -> Result<(), KafkaError> {
    let assignment = consumer.assignment()?;
    let partitions: Vec<i32> = assignment.elements_for_topic(topic).iter().map(|e| e.partition()).collect();
    let deadline = Instant::now() + partitions::RESTORE_TIMEOUT;
    for (p, committed) in kafka::stable_committed(consumer, topic, &partitions, deadline)? {
        let to = committed.map_or(Offset::Beginning, Offset::Offset);
        consumer.seek(topic, p, to, TXN_TIMEOUT)?;
    }
    Ok(())
}

/// The id alerts are written with in the Confluent wire format: `schemas/alert.avsc`
/// registered under `<prefix>alerts-value`, waiting for a registry that is unavailable.
fn alert_schema_id(
    config: &Config,
    registry: Option<&Registry>,
    shutdown: &Shutdown,
) -> Result<Option<u32>, ProcessorError> {
    let Some(registry) = registry.filter(|_| config.alerts.encoding == AlertEncoding::Confluent) else {
        return Ok(None);
    };
    let subject = format!("{}-value", config.kafka.name(names::ALERTS));
    let mut backoff = Backoff::service();
    loop {
        match registry.register(&subject, crate::alert::ALERT_SCHEMA) {
            Ok(id) => return Ok(Some(id)),
            Err(RegistryError::Unavailable(e)) if !shutdown.is_triggered() => {
                let delay = backoff.failed();
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "processor: schema registry unavailable; registering the alert schema again after a pause");
                sleep_unless_stopped(delay, shutdown);
            }
            Err(e) => return Err(ProcessorError::Registry(e)),
        }
    }
}

/// Sleeps `delay`, or less if the stage is told to stop meanwhile.
fn sleep_unless_stopped(delay: Duration, shutdown: &Shutdown) {
    let until = Instant::now() + delay;
    while !shutdown.is_triggered() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
    }
}

/// Refuses an app-state topic with fewer partitions than heartbeats.
fn check_partitions(consumer: &BaseConsumer<AssignmentLog>, topics: &Topics) -> Result<(), ProcessorError> {
    let count = |topic: &str| -> Result<usize, KafkaError> {
        let deadline = Instant::now() + kafka::TRANSIENT_RETRY_TIMEOUT;
        let metadata =
            kafka::retrying(deadline, || consumer.fetch_metadata(Some(topic), Duration::from_secs(30)))?;
        Ok(metadata.topics().iter().map(|t| t.partitions().len()).sum())
    };
    let (need, has) = (count(&topics.heartbeats)?, count(&topics.app_state)?);
    if has < need {
        return Err(ProcessorError::Topology {
            app_state: topics.app_state.clone(),
            has,
            heartbeats: topics.heartbeats.clone(),
            need,
        });
    }
    Ok(())
}
