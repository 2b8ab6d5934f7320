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
//! Each application's whole engine state goes to `app-state` (in the partition of the same
//! number as its heartbeats) in the transaction of every batch that changed it. Before it
//! processes a newly assigned partition (also one given back after it was revoked), the
//! processor rebuilds that partition's engine from there (read_committed, to its end once no
//! transaction is pending on it): the state as of the committed offsets. When a
//! transaction fails it is aborted, every partition goes back to its committed offset, and
//! its engine is rebuilt the same way. A producer fenced by another instance with the same
//! transactional id stops the stage without writing. Undecodable or invalid records go to
//! `heartbeats-dlq` with the reason in headers, and processing goes on. A record whose
//! writer schema the Schema Registry cannot give right now (down, slow) is no such record:
//! the batch ends before it, its partition is sought back to it, and it is read again after
//! an exponential backoff. No transaction is open while records are read (it begins with
//! the batch's first output), so the pause holds no transaction open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use thiserror::Error;

use crate::app_state::STATE_HEADER;
use crate::codec;
use crate::config::{AlertEncoding, Config};
use crate::dead_letter::DeadLetter;
use crate::engine::{Effect, Engine};
use crate::kafka::{self, TrackedProducer};
use crate::metrics::METRICS;
use crate::readback::ReadError;
use crate::registry::{Backoff, Registry, RegistryError, Unavailable};
use crate::restore;
use crate::rules::CompiledRules;
use crate::shutdown::Shutdown;
use crate::topology::names;

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
        "transactional id {id} was taken over by another instance (fenced): stopping without writing ({message})"
    )]
    Fenced { id: String, message: String },
}

/// Longest wait for a transaction call (init, commit, abort, sending the offsets).
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// Backoff between attempts to recover from a failed transaction (doubling up to the max).
const RECOVERY_FIRST_DELAY: Duration = Duration::from_millis(200);
const RECOVERY_MAX_DELAY: Duration = Duration::from_secs(10);

/// What a failed Kafka call means for the transaction.
enum TxnFailure {
    /// This producer may not write any more (fenced, or a fatal producer error).
    Fatal(KafkaError),
    /// Abort the transaction, rewind, go on.
    Abort(KafkaError),
}

impl From<KafkaError> for TxnFailure {
    fn from(e: KafkaError) -> Self {
        let fatal = match &e {
            KafkaError::Transaction(rd) => rd.is_fatal(),
            other => matches!(
                other.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fatal)
            ),
        };
        if fatal { TxnFailure::Fatal(e) } else { TxnFailure::Abort(e) }
    }
}

/// A change of the partitions this instance owns, as the consumer reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Assigned(i32),
    Revoked(i32),
}

/// Remembers, in order, the partitions assigned and revoked during a poll, so that their
/// engines can be restored or dropped before the next record is processed.
#[derive(Default)]
struct RebalanceLog {
    changes: Mutex<Vec<Membership>>,
}

impl RebalanceLog {
    fn take(&self) -> Vec<Membership> {
        std::mem::take(&mut *self.changes.lock().expect("not poisoned"))
    }
}

impl ClientContext for RebalanceLog {
    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_client_error(&error, reason);
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions =
            |tpl: &TopicPartitionList| tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>();
        let mut changes = self.changes.lock().expect("not poisoned");
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?partitions(tpl), "processor: partitions assigned");
                changes.extend(partitions(tpl).into_iter().map(Membership::Assigned));
            }
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?partitions(tpl), lost, "processor: partitions revoked");
                changes.extend(partitions(tpl).into_iter().map(Membership::Revoked));
            }
            Rebalance::Error(_) => {}
        }
    }
}

/// What a batch has read and decided, held per partition until its transaction. A partition
/// revoked before then loses its share: its next owner reads those records again from the
/// committed offset, so nothing of it may be committed here.
#[derive(Default)]
struct Batch {
    /// The next offset to consume, per partition.
    offsets: BTreeMap<i32, i64>,
    effects: BTreeMap<i32, Vec<Effect>>,
    dead_letters: Vec<DeadLetter>,
}

impl Batch {
    fn effects_of(&mut self, partition: i32) -> &mut Vec<Effect> {
        self.effects.entry(partition).or_default()
    }

    fn forget(&mut self, partition: i32) {
        self.offsets.remove(&partition);
        self.effects.remove(&partition);
        self.dead_letters.retain(|d| d.partition != partition);
    }

    fn clear(&mut self) {
        *self = Batch::default();
    }
}

/// Applies the membership changes the consumer reported: a revoked partition's engine and
/// its share of the batch are dropped; an assigned one waits in `pending` for its engine to
/// be rebuilt from app-state before its first record.
fn apply_membership(
    log: &RebalanceLog,
    engines: &mut HashMap<i32, Engine>,
    batch: &mut Batch,
    pending: &mut BTreeSet<i32>,
) {
    for change in log.take() {
        match change {
            Membership::Revoked(p) => {
                engines.remove(&p);
                batch.forget(p);
                pending.remove(&p);
            }
            Membership::Assigned(p) => {
                if !engines.contains_key(&p) {
                    pending.insert(p);
                }
            }
        }
    }
}

/// How often consumer lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(10);

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The names of the stage's topics.
struct Topics {
    heartbeats: String,
    alerts: String,
    app_state: String,
    metrics: String,
    dlq: String,
    /// The registry's id of the alert schema when alerts are written in the Confluent wire
    /// format; `None`: single-object encoding.
    alert_schema_id: Option<u32>,
}

/// Runs the processor until `shutdown`; blocking. `ready` turns true once it has joined
/// its group and read its first assignment.
pub fn run(config: &Config, shutdown: &Shutdown, ready: &AtomicBool) -> Result<(), ProcessorError> {
    let k = &config.kafka;
    let topics = Topics {
        heartbeats: k.name(names::HEARTBEATS),
        alerts: k.name(names::ALERTS),
        app_state: k.name(names::APP_STATE),
        metrics: k.name(names::METRICS_1M),
        dlq: k.name(names::HEARTBEATS_DLQ),
        alert_schema_id: None,
    };
    let registry = Registry::from_config(&config.schema_registry);
    let topics = Topics { alert_schema_id: alert_schema_id(config, registry.as_ref(), shutdown)?, ..topics };
    let consumer: BaseConsumer<RebalanceLog> = k
        .client_config()
        .set("group.id", k.name("processor"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "50")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create_with_context(RebalanceLog::default())?;
    check_partitions(&consumer, &topics)?;
    consumer.subscribe(&[&topics.heartbeats])?;
    let transactional_id = config.processor.transactional_id(k);
    let producer = kafka::transactional_producer(k, &transactional_id)?;
    let fenced =
        |e: KafkaError| ProcessorError::Fenced { id: transactional_id.clone(), message: e.to_string() };
    // A transaction call that failed: fenced (or fatal), or an error to retry or report.
    let txn_error = |e: KafkaError| match TxnFailure::from(e) {
        TxnFailure::Fatal(e) => fenced(e),
        TxnFailure::Abort(e) => ProcessorError::Kafka(e),
    };
    producer.init_transactions(TXN_TIMEOUT).map_err(txn_error)?;
    let mut txn = Transaction::default();
    let rules = config.compiled_rules().map_err(|e| ProcessorError::Rules(e.to_string()))?;
    let mut engines: HashMap<i32, Engine> = HashMap::new();
    // Partitions assigned whose engines are still to be rebuilt.
    let mut pending: BTreeSet<i32> = BTreeSet::new();
    let mut batch = Batch::default();
    let commit_interval = Duration::from_millis(config.processor.commit_interval_ms);
    tracing::info!(topic = %topics.heartbeats, group = %k.name("processor"), "processor started");
    let mut lag_checked = Instant::now();

    // Rebuilds the engines of every pending partition, in one pass over app-state.
    let restore = |pending: &mut BTreeSet<i32>, engines: &mut HashMap<i32, Engine>| {
        let partitions: Vec<i32> = pending.iter().copied().collect();
        // No partition was read while the restore ran: its time is not silence.
        engines.values_mut().for_each(Engine::reading_paused);
        engines.extend(restore_engines(config, &rules, &topics, &partitions, ready)?);
        pending.clear();
        // What /metrics says agrees with the restore before /readyz does.
        update_gauges(engines);
        ready.store(true, Ordering::Relaxed);
        Ok::<(), ProcessorError>(())
    };
    let mut registry_backoff = Backoff::default();
    let mut registry_down: Option<Unavailable> = None;
    let mut seek_failed: Option<KafkaError> = None;
    while !shutdown.is_triggered() {
        if let Some(e) = registry_down.take() {
            let delay = registry_backoff.failed();
            tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "processor: schema registry unavailable; reading the record again after a pause");
            METRICS.registry_unavailable.with_label_values(&["processor"]).inc();
            sleep_unless_stopped(delay, shutdown);
            continue;
        }
        let started = Instant::now();
        apply_membership(consumer.context(), &mut engines, &mut batch, &mut pending);
        if !pending.is_empty() {
            restore(&mut pending, &mut engines)?;
        }
        let mut arrivals: Vec<i64> = Vec::new();
        let mut records = 0usize;
        while records < config.processor.max_batch_records {
            let left = commit_interval.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let polled = consumer.poll(left);
            // A rebalance is served inside the poll: before anything else, drop what was
            // revoked, and rebuild what was assigned before its first record.
            apply_membership(consumer.context(), &mut engines, &mut batch, &mut pending);
            let Some(polled) = polled else { break };
            let wall = wall_ms();
            let partition = match &polled {
                Err(KafkaError::PartitionEOF(p)) => Some(*p),
                Err(_) => None,
                Ok(msg) => Some(msg.partition()),
            };
            if let Some(p) = partition.filter(|p| !engines.contains_key(p)) {
                // Assigned and not rebuilt yet; or a record fetched before its partition was
                // revoked, which its next owner reads (asked of the consumer only then).
                if !pending.contains(&p) && owns(&consumer, &topics.heartbeats, p) {
                    pending.insert(p);
                }
                if pending.contains(&p) {
                    restore(&mut pending, &mut engines)?;
                }
            }
            match polled {
                Err(KafkaError::PartitionEOF(p)) => {
                    ready.store(true, Ordering::Relaxed);
                    if let Some(engine) = engines.get_mut(&p) {
                        engine.on_end_of_partition(wall, batch.effects_of(p));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "processor: consumer error"),
                Ok(msg) => {
                    ready.store(true, Ordering::Relaxed);
                    let p = msg.partition();
                    let Some(engine) = engines.get_mut(&p) else {
                        tracing::debug!(
                            partition = p,
                            offset = msg.offset(),
                            "processor: record of a partition no longer owned skipped"
                        );
                        continue;
                    };
                    let broker_ms = msg.timestamp().to_millis();
                    let payload = msg.payload().unwrap_or_default();
                    let reference = broker_ms.unwrap_or(wall);
                    let drift = config.input.max_sent_at_drift_ms;
                    let decoded = match Registry::decode(registry.as_ref(), payload, reference, drift) {
                        Ok(decoded) => decoded,
                        Err(e) => {
                            // Not the record's fault: end the batch before it, and read it
                            // again after a pause.
                            registry_down = Some(e);
                            let at = Offset::Offset(msg.offset());
                            if let Err(e) = consumer.seek(&topics.heartbeats, p, at, TXN_TIMEOUT) {
                                // Going on would skip the record: start over from the
                                // committed offsets instead, as after a failed transaction.
                                seek_failed = Some(e);
                            }
                            break;
                        }
                    };
                    records += 1;
                    batch.offsets.insert(p, msg.offset() + 1);
                    arrivals.push(reference);
                    if codec::avro::has_legacy_header(payload) {
                        METRICS.legacy_fingerprint.with_label_values(&["heartbeat"]).inc();
                    }
                    match decoded {
                        Ok(beat) => {
                            engine.on_record(beat, msg.offset(), broker_ms, wall, batch.effects_of(p))
                        }
                        Err(e) => batch.dead_letters.push(DeadLetter::of(&msg, e.code(), e.to_string())),
                    }
                }
            }
        }
        METRICS.records_in.with_label_values(&["processor", &topics.heartbeats]).inc_by(records as u64);
        let wall = wall_ms();
        if lag_checked.elapsed() >= LAG_EVERY {
            kafka::record_lag(&consumer, "processor");
            lag_checked = Instant::now();
        }
        if records > 0 && registry_down.is_none() {
            registry_backoff.succeeded();
        }
        let outcome = match seek_failed.take() {
            Some(e) => Err(TxnFailure::Abort(e)),
            None => finish_batch(
                &producer,
                &consumer,
                &topics,
                &mut txn,
                &mut engines,
                &mut batch,
                wall,
                shutdown,
            ),
        };
        match outcome {
            Ok(false) => {
                update_gauges(&engines);
                continue;
            }
            Ok(true) => METRICS.transactions.with_label_values(&["committed"]).inc(),
            Err(TxnFailure::Fatal(e)) => return Err(fenced(e)),
            Err(TxnFailure::Abort(e)) => {
                tracing::warn!(error = %e, "processor: transaction failed; aborting and rewinding to the committed offsets");
                METRICS.transactions.with_label_values(&["aborted"]).inc();
                batch.clear();
                // Abort, go back to the committed offsets, and rebuild the engines, which had
                // moved past them, from what app-state holds (the aborted records are
                // invisible to read_committed). While the broker is away this fails: retry
                // with backoff until it works or the stage is told to stop.
                let mut delay = RECOVERY_FIRST_DELAY;
                loop {
                    let recovered = (|| -> Result<(), ProcessorError> {
                        if txn.open {
                            abort(&producer).map_err(txn_error)?;
                            txn.open = false;
                        }
                        apply_membership(consumer.context(), &mut engines, &mut batch, &mut pending);
                        rewind(&consumer)?;
                        pending.extend(engines.drain().map(|(p, _)| p));
                        restore(&mut pending, &mut engines)
                    })();
                    match recovered {
                        Ok(()) => break,
                        Err(e @ ProcessorError::Fenced { .. }) => return Err(e),
                        Err(e) if shutdown.is_triggered() => return Err(e),
                        Err(e) => {
                            tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "processor: recovery failed; retrying");
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(RECOVERY_MAX_DELAY);
                        }
                    }
                }
                continue;
            }
        }
        let done = wall_ms();
        for t in arrivals {
            METRICS.record_latency_seconds.observe(((done - t).max(0) as f64) / 1000.0);
        }
        METRICS.batch_seconds.with_label_values(&["processor"]).observe(started.elapsed().as_secs_f64());
        update_gauges(&engines);
    }
    // Every batch ended with its transaction committed (or aborted): nothing is in flight.
    tracing::info!("processor stopped");
    Ok(())
}

/// A transaction of the processor's producer: begun lazily, on the batch's first output.
#[derive(Default)]
struct Transaction {
    open: bool,
}

impl Transaction {
    fn begin(&mut self, producer: &TrackedProducer) -> Result<(), TxnFailure> {
        if !self.open {
            producer.begin_transaction()?;
            self.open = true;
        }
        Ok(())
    }
}

/// Ends a batch: the engines' timers and snapshots, every output, then the consumed offsets,
/// committed as one transaction. `Ok(false)` when the batch had nothing to commit.
#[allow(clippy::too_many_arguments)]
fn finish_batch(
    producer: &TrackedProducer,
    consumer: &BaseConsumer<RebalanceLog>,
    topics: &Topics,
    txn: &mut Transaction,
    engines: &mut HashMap<i32, Engine>,
    batch: &mut Batch,
    wall: i64,
    shutdown: &Shutdown,
) -> Result<bool, TxnFailure> {
    let mut partitions: Vec<&mut Engine> = engines.values_mut().collect();
    partitions.sort_by_key(|e| e.partition());
    for engine in partitions {
        engine.on_tick(wall, batch.effects_of(engine.partition()));
        // Each heartbeats partition keeps its applications' state in the app-state partition
        // of the same number, whatever partitioner the producers used.
        let partition = Some(engine.partition());
        for record in engine.take_state_records() {
            txn.begin(producer)?;
            let state = OwnedHeaders::new_with_capacity(1)
                .insert(Header { key: STATE_HEADER, value: Some(&record.header) });
            kafka::send_to(
                producer,
                &topics.app_state,
                partition,
                &record.app_id,
                &record.value,
                Some(state),
            )?;
            METRICS.records_out.with_label_values(&["processor", &topics.app_state]).inc();
        }
    }
    for letter in std::mem::take(&mut batch.dead_letters) {
        txn.begin(producer)?;
        send_dead_letter(&letter, producer, topics)?;
    }
    for effects in std::mem::take(&mut batch.effects).into_values() {
        if !effects.is_empty() {
            txn.begin(producer)?;
            publish(producer, topics, effects)?;
        }
    }
    let offsets = std::mem::take(&mut batch.offsets);
    if !txn.open && offsets.is_empty() {
        return Ok(false);
    }
    txn.begin(producer)?;
    if !offsets.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &offsets {
            tpl.add_partition_offset(&topics.heartbeats, *p, Offset::Offset(*next))?;
        }
        // Not a member of the group (any more): the batch cannot commit.
        let group = consumer.group_metadata().ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
        producer.send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)?;
    }
    commit(producer, shutdown)?;
    txn.open = false;
    Ok(true)
}

/// How long one attempt to commit may block before it is resumed (so that a stop is noticed).
const COMMIT_ATTEMPT: Duration = Duration::from_secs(10);

/// Commits the open transaction. A commit that timed out — still flushing the batch's
/// records, or waiting for the coordinator (the broker away, say) — is resumed by calling
/// commit again, with backoff, not aborted: an abort would conflict with it. Other failures,
/// and a stop meanwhile, are the caller's.
fn commit(producer: &TrackedProducer, shutdown: &Shutdown) -> Result<(), KafkaError> {
    let mut delay = RECOVERY_FIRST_DELAY;
    loop {
        let result = producer.commit_transaction(COMMIT_ATTEMPT);
        let unfinished = match &result {
            Err(KafkaError::Transaction(e)) => e.is_retriable(),
            // The client flushes the enqueued records before it commits.
            Err(KafkaError::Flush(code)) => *code == RDKafkaErrorCode::OperationTimedOut,
            _ => false,
        };
        match result {
            Err(e) if unfinished && !shutdown.is_triggered() => {
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "processor: commit not finished; resuming it");
                METRICS.transactions.with_label_values(&["commit_resumed"]).inc();
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECOVERY_MAX_DELAY);
            }
            other => return other,
        }
    }
}

/// Aborts the open transaction. What it had enqueued is purged and the delivery reports
/// served first: the abort waits for them.
fn abort(producer: &TrackedProducer) -> Result<(), KafkaError> {
    producer.purge(PurgeConfig::default().queue().inflight());
    let deadline = Instant::now() + TXN_TIMEOUT;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(10));
    }
    producer.abort_transaction(TXN_TIMEOUT)
}

/// Whether `partition` of `topic` is in the consumer's assignment now.
fn owns(consumer: &BaseConsumer<RebalanceLog>, topic: &str, partition: i32) -> bool {
    consumer.assignment().is_ok_and(|a| a.find_partition(topic, partition).is_some())
}

/// Puts every assigned partition back at its committed offset.
fn rewind(consumer: &BaseConsumer<RebalanceLog>) -> Result<(), KafkaError> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed_offsets(assignment, TXN_TIMEOUT)?;
    for e in committed.elements() {
        let to = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        consumer.seek(e.topic(), e.partition(), to, TXN_TIMEOUT)?;
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
    let mut backoff = Backoff::default();
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

/// Longest a partition's state may take to read back.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// Rebuilds the engines of `partitions` from the app-state partitions of the same numbers,
/// read to their end in one pass (read_committed). `ready` is false meanwhile; the caller
/// sets it once the engines are in place.
fn restore_engines(
    config: &Config,
    rules: &CompiledRules,
    topics: &Topics,
    partitions: &[i32],
    ready: &AtomicBool,
) -> Result<Vec<(i32, Engine)>, ProcessorError> {
    ready.store(false, Ordering::Relaxed);
    METRICS.restoring_partitions.set(partitions.len() as i64);
    let restored = restore::restore_partitions(
        &config.kafka,
        &topics.app_state,
        partitions,
        &config.detection,
        rules,
        RESTORE_TIMEOUT,
    );
    METRICS.restoring_partitions.set(0);
    let restored = restored?;
    if let Some(error) = &restored.first_error {
        tracing::warn!(%error, unreadable = restored.unreadable, "processor: app-state records not restored");
    }
    tracing::info!(
        partitions = ?partitions,
        apps = restored.apps(),
        records = restored.records,
        unreadable = restored.unreadable,
        read_seconds = restored.read.as_secs_f64(),
        rebuild_seconds = restored.rebuild.as_secs_f64(),
        "processor: partition state restored"
    );
    METRICS.restored_apps.with_label_values(&[] as &[&str]).inc_by(restored.apps() as u64);
    Ok(restored.engines)
}

/// Refuses an app-state topic with fewer partitions than heartbeats.
fn check_partitions(consumer: &BaseConsumer<RebalanceLog>, topics: &Topics) -> Result<(), ProcessorError> {
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

fn update_gauges(engines: &HashMap<i32, Engine>) {
    METRICS.tracked_apps.set(engines.values().map(|e| e.app_count() as i64).sum());
    METRICS.tracked_instances.set(engines.values().map(|e| e.instance_count() as i64).sum());
    METRICS.clamped_beats.set(engines.values().map(|e| e.clamped_beats() as i64).sum());
}

fn publish(producer: &TrackedProducer, topics: &Topics, effects: Vec<Effect>) -> Result<(), KafkaError> {
    for effect in effects {
        match effect {
            Effect::Alert(a) => {
                let bytes = match topics.alert_schema_id {
                    Some(id) => a.encode_confluent(id),
                    None => a.encode(),
                };
                kafka::send(producer, &topics.alerts, &a.app_id, &bytes, None)?;
                METRICS
                    .alerts
                    .with_label_values(&[a.kind.as_str(), a.severity.as_str(), a.state.as_str()])
                    .inc();
                METRICS.records_out.with_label_values(&["processor", &topics.alerts]).inc();
                tracing::info!(app = %a.app_id, instance = a.instance_id.as_deref().unwrap_or("-"), kind = a.kind.as_str(), severity = a.severity.as_str(), state = a.state.as_str(), event_at = a.event_at, "{}", a.summary);
            }
            Effect::Rollup(r) => {
                let payload = serde_json::to_vec(&r).expect("a rollup serialises");
                kafka::send(producer, &topics.metrics, &r.app_id, &payload, None)?;
                METRICS.records_out.with_label_values(&["processor", &topics.metrics]).inc();
            }
        }
    }
    Ok(())
}

/// Sends an undecodable or invalid heartbeat's dead letter with its batch.
fn send_dead_letter(
    letter: &DeadLetter,
    producer: &TrackedProducer,
    topics: &Topics,
) -> Result<(), KafkaError> {
    letter.send(producer, &topics.dlq)?;
    METRICS.decode_errors.with_label_values(&[letter.code]).inc();
    METRICS.dlq_records.with_label_values(&[letter.code]).inc();
    tracing::debug!(
        partition = letter.partition,
        offset = letter.offset,
        code = letter.code,
        "processor: dead-lettered: {}",
        letter.message
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{DetectionConfig, RuleSet};
    use crate::trend::TrendConfig;

    fn engine(partition: i32) -> Engine {
        let c = DetectionConfig::default();
        let rules = CompiledRules::new(&RuleSet::default(), &c, &TrendConfig::default()).unwrap();
        Engine::new(partition, c, rules)
    }

    fn letter(partition: i32) -> DeadLetter {
        DeadLetter {
            topic: "heartbeats".into(),
            partition,
            offset: 7,
            timestamp: None,
            key: None,
            payload: Vec::new(),
            truncated: None,
            code: "empty",
            message: String::new(),
        }
    }

    /// A batch that has read partitions 0 and 1.
    fn batch_of_two() -> Batch {
        let mut batch = Batch::default();
        for p in [0, 1] {
            batch.offsets.insert(p, 10);
            batch.effects_of(p);
            batch.dead_letters.push(letter(p));
        }
        batch
    }

    #[test]
    fn a_revoked_partition_loses_its_engine_and_its_share_of_the_batch_and_is_rebuilt_when_it_comes_back() {
        let log = RebalanceLog::default();
        let mut engines: HashMap<i32, Engine> = [(0, engine(0)), (1, engine(1))].into();
        let mut batch = batch_of_two();
        let mut pending = BTreeSet::new();
        // Revoked, then given back within one poll (a lost session, say), and a new one.
        log.changes.lock().unwrap().extend([
            Membership::Revoked(0),
            Membership::Assigned(0),
            Membership::Assigned(2),
        ]);
        apply_membership(&log, &mut engines, &mut batch, &mut pending);
        assert_eq!(engines.keys().copied().collect::<Vec<_>>(), [1], "the stale engine of 0 is gone");
        assert_eq!(pending, BTreeSet::from([0, 2]), "0 is rebuilt from app-state like a new one");
        assert_eq!(batch.offsets.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(batch.effects.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(batch.dead_letters.iter().map(|d| d.partition).collect::<Vec<_>>(), [1]);
        assert!(log.take().is_empty(), "each change is applied once");
    }

    #[test]
    fn a_partition_assigned_and_revoked_before_its_restore_is_not_restored() {
        let log = RebalanceLog::default();
        let mut engines: HashMap<i32, Engine> = [(1, engine(1))].into();
        let mut batch = batch_of_two();
        let mut pending = BTreeSet::new();
        log.changes.lock().unwrap().extend([Membership::Assigned(3), Membership::Revoked(3)]);
        apply_membership(&log, &mut engines, &mut batch, &mut pending);
        assert!(pending.is_empty());
        // An assignment of a partition that has its engine changes nothing.
        log.changes.lock().unwrap().push(Membership::Assigned(1));
        apply_membership(&log, &mut engines, &mut batch, &mut pending);
        assert!(pending.is_empty());
        assert_eq!(batch.offsets.len(), 2, "the batch keeps what it read of owned partitions");
    }
}
