//! The partitions the processor owns, each with its [`Engine`] once rebuilt from
//! `app-state`; the partitions assigned and still to be rebuilt; and where each one just
//! rebuilt must be read from.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

use super::ProcessorError;
use super::batch::{Batch, Pending};
use super::transaction::TXN_TIMEOUT;
use crate::assignment::{AssignmentLog, Membership};
use crate::codec;
use crate::config::Config;
use crate::dead_letter::DeadLetter;
use crate::engine::Engine;
use crate::kafka;
use crate::metrics::METRICS;
use crate::registry::{Registry, Unavailable};
use crate::restore;
use crate::rules::CompiledRules;

/// Longest a partition's state may take to read back.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// What reading goes on with after a record.
pub enum Flow {
    Next,
    /// A partition could not be sought back: the batch may not commit.
    SeekFailed(KafkaError),
}

/// The processor's partitions and their engines.
pub struct Partitions<'a> {
    config: &'a Config,
    rules: CompiledRules,
    /// The topic whose partitions these are.
    heartbeats: String,
    /// Where their state is kept, partition for partition.
    app_state: String,
    /// False while a restore runs; true once the engines are in place.
    ready: &'a AtomicBool,
    /// One engine per partition owned and rebuilt.
    pub engines: HashMap<i32, Engine>,
    /// Partitions assigned whose engines are still to be rebuilt.
    pending: BTreeSet<i32>,
    /// Where each partition just rebuilt must be read from.
    starts: Starts,
    /// Since when the engines restored last replay the beats their states did not hold.
    replaying_since: Option<Instant>,
    /// Threads that apply a batch's records to the engines.
    engine_threads: usize,
}

impl<'a> Partitions<'a> {
    pub fn new(config: &'a Config, rules: CompiledRules, ready: &'a AtomicBool) -> Partitions<'a> {
        let topics = crate::topology::Topics::of(&config.kafka);
        Partitions {
            config,
            rules,
            heartbeats: topics.heartbeats,
            app_state: topics.app_state,
            ready,
            engines: HashMap::new(),
            pending: BTreeSet::new(),
            starts: Starts::default(),
            replaying_since: None,
            engine_threads: config.processor.engine_threads(),
        }
    }

    /// Gives the engines what the batch holds for them (see [`super::apply`]).
    pub fn apply_held(&mut self, batch: &mut Batch) {
        super::apply::apply(&mut self.engines, batch, self.engine_threads);
    }

    /// Gives the engines what the batch holds for them, ticks them at wall time `wall` and
    /// takes the records of the states they changed (see [`super::apply`]).
    pub fn apply_and_tick(&mut self, batch: &mut Batch, wall: i64) {
        super::apply::apply_and_tick(&mut self.engines, batch, self.engine_threads, wall);
        self.note_replay_done();
    }

    /// Logs once the engines restored last have replayed what their states did not hold.
    fn note_replay_done(&mut self) {
        let Some(since) = self.replaying_since else { return };
        if self.engines.values().any(Engine::is_replaying) {
            return;
        }
        self.replaying_since = None;
        let beats: u64 = self.engines.values().map(|e| e.stats.replayed).sum();
        tracing::info!(
            beats,
            seconds = since.elapsed().as_secs_f64(),
            "processor: replay after the restore done"
        );
    }

    /// Applies the membership changes the consumer reported: a revoked partition's engine and
    /// its share of the batch are dropped; an assigned one waits to be rebuilt from app-state
    /// before its first record.
    pub fn apply_membership(&mut self, log: &AssignmentLog, batch: &mut Batch) {
        for change in log.take() {
            match change {
                Membership::Revoked { partition: p, .. } => {
                    self.engines.remove(&p);
                    batch.forget(p);
                    self.pending.remove(&p);
                }
                Membership::Assigned { partition: p, .. } => {
                    if !self.engines.contains_key(&p) {
                        self.pending.insert(p);
                    }
                }
            }
        }
    }

    /// Rebuilds the engines of every partition assigned and not rebuilt yet.
    pub fn restore_pending(
        &mut self,
        consumer: &BaseConsumer<AssignmentLog>,
        batch: &mut Batch,
    ) -> Result<(), ProcessorError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // What was read before the restore reaches the engines before the pause does.
        self.apply_held(batch);
        let partitions: Vec<i32> = self.pending.iter().copied().collect();
        // No partition was read while the restore ran: its time is not silence.
        self.engines.values_mut().for_each(Engine::reading_paused);
        let restored = self.restore_engines(&partitions)?;
        self.engines.extend(restored);
        self.replaying_since = Some(Instant::now());
        self.starts.expect(consumer, &self.heartbeats, &partitions)?;
        self.pending.clear();
        // What /metrics says agrees with the restore before /readyz does.
        self.update_gauges();
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure a partition a record or an end came from has its engine, if it is still
    /// owned: it may have been assigned and not rebuilt yet, or revoked since the record
    /// was fetched (which its next owner reads; the consumer is asked only then).
    pub fn ensure(
        &mut self,
        consumer: &BaseConsumer<AssignmentLog>,
        p: i32,
        batch: &mut Batch,
    ) -> Result<(), ProcessorError> {
        if self.engines.contains_key(&p) {
            return Ok(());
        }
        let owned = consumer.assignment().is_ok_and(|a| a.find_partition(&self.heartbeats, p).is_some());
        if !self.pending.contains(&p) && owned {
            self.pending.insert(p);
        }
        if self.pending.contains(&p) { self.restore_pending(consumer, batch) } else { Ok(()) }
    }

    /// After an aborted transaction: every engine had moved past the committed offsets, so
    /// all are rebuilt from what app-state holds (the aborted records are invisible to
    /// read_committed).
    pub fn rebuild_all(
        &mut self,
        consumer: &BaseConsumer<AssignmentLog>,
        batch: &mut Batch,
    ) -> Result<(), ProcessorError> {
        self.pending.extend(self.engines.drain().map(|(p, _)| p));
        self.restore_pending(consumer, batch)
    }

    /// Feeds one record to its partition's engine, or sets it aside as a dead letter; a
    /// record of a partition no longer owned is skipped. `Err` when the Schema Registry
    /// could not give its writer schema: the record is not read.
    pub fn on_record(
        &mut self,
        consumer: &BaseConsumer<AssignmentLog>,
        msg: &BorrowedMessage<'_>,
        batch: &mut Batch,
        registry: Option<&Registry>,
        wall: i64,
    ) -> Result<Flow, Unavailable> {
        let p = msg.partition();
        if !self.engines.contains_key(&p) {
            tracing::debug!(
                partition = p,
                offset = msg.offset(),
                "processor: record of a partition no longer owned skipped"
            );
            return Ok(Flow::Next);
        }
        if let Some(start) = self.starts.below(p, msg.offset()) {
            tracing::warn!(
                partition = p,
                offset = msg.offset(),
                committed = start,
                "processor: partition started below its committed offset; seeking back to it"
            );
            METRICS.start_corrected.with_label_values(&["processor"]).inc();
            return Ok(match consumer.seek(&self.heartbeats, p, Offset::Offset(start), TXN_TIMEOUT) {
                Ok(()) => Flow::Next,
                Err(e) => Flow::SeekFailed(e),
            });
        }
        let broker_ms = msg.timestamp().to_millis();
        let payload = msg.payload().unwrap_or_default();
        let reference = broker_ms.unwrap_or(wall);
        let drift = self.config.input.max_sent_at_drift_ms;
        let decoded = Registry::decode(registry, payload, reference, drift)?;
        batch.records += 1;
        batch.arrivals.push(reference);
        if codec::avro::has_legacy_header(payload) {
            METRICS.legacy_fingerprint.with_label_values(&["heartbeat"]).inc();
        }
        match decoded {
            Ok(beat) => batch.hold(p, Pending::Beat { beat, offset: msg.offset(), broker_ms, wall }),
            Err(e) => {
                // Read again after a restore, its dead letter was written the first time.
                if !self.engines[&p].replays(msg.offset()) {
                    batch.dead_letters.push(DeadLetter::of(msg, e.code(), e.to_string()));
                }
                batch.hold(p, Pending::Skipped { offset: msg.offset(), wall });
            }
        }
        Ok(Flow::Next)
    }

    /// The partitions assigned and not rebuilt yet.
    #[cfg(test)]
    pub fn pending(&self) -> Vec<i32> {
        self.pending.iter().copied().collect()
    }

    pub fn update_gauges(&self) {
        let engines = self.engines.values();
        METRICS.tracked_apps.set(engines.clone().map(|e| e.app_count() as i64).sum());
        METRICS.tracked_instances.set(engines.clone().map(|e| e.instance_count() as i64).sum());
        METRICS.clamped_beats.set(engines.map(|e| e.clamped_beats() as i64).sum());
    }

    /// Rebuilds the engines of `partitions` from the app-state partitions of the same
    /// numbers, read to their end in one pass (read_committed). `ready` is false meanwhile.
    fn restore_engines(&self, partitions: &[i32]) -> Result<Vec<(i32, Engine)>, ProcessorError> {
        self.ready.store(false, Ordering::Relaxed);
        METRICS.restoring_partitions.set(partitions.len() as i64);
        let c = self.config;
        let restored = restore::restore_partitions(
            &c.kafka,
            &self.app_state,
            partitions,
            &c.detection,
            &self.rules,
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
}

/// Where each partition just restored must be read from: its committed offset, to which
/// its engine was rebuilt. The consumer looks the offset up by itself, but when the
/// answer is "unstable" (a transaction of the partition's previous owner still open) at a
/// bad moment, librdkafka gives up and starts from `auto.offset.reset` instead, the
/// earliest record: the engine would then take records it already holds for new ones.
#[derive(Default)]
struct Starts {
    /// The committed offset of each restored partition until its first record is read.
    committed: HashMap<i32, i64>,
}

impl Starts {
    /// Asks the committed offsets of `partitions` (once stable) after their restore.
    fn expect(
        &mut self,
        consumer: &BaseConsumer<AssignmentLog>,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(), KafkaError> {
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        for (p, committed) in kafka::stable_committed(consumer, topic, partitions, deadline)? {
            match committed {
                Some(o) => self.committed.insert(p, o),
                None => self.committed.remove(&p),
            };
        }
        Ok(())
    }

    /// The committed offset of `partition` if `offset`, the first record read of it since
    /// its restore, lies below it; otherwise the partition is read where it should be.
    fn below(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let committed = self.committed.get(&partition).copied()?;
        if offset < committed {
            return Some(committed);
        }
        self.committed.remove(&partition);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::DetectionConfig;
    use crate::rules::RuleSet;
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

    fn assigned(partition: i32) -> Membership {
        Membership::Assigned { topic: "heartbeats".into(), partition }
    }

    fn revoked(partition: i32) -> Membership {
        Membership::Revoked { topic: "heartbeats".into(), partition }
    }

    /// The partitions of a processor that owns engines for `owned`.
    fn owning<'a>(config: &'a Config, ready: &'a AtomicBool, owned: &[i32]) -> Partitions<'a> {
        let mut partitions = Partitions::new(config, config.compiled_rules().unwrap(), ready);
        partitions.engines.extend(owned.iter().map(|&p| (p, engine(p))));
        partitions
    }

    /// A batch that has read partitions 0 and 1.
    fn batch_of_two() -> Batch {
        let mut batch = Batch::default();
        for p in [0, 1] {
            batch.effects.insert(p, Vec::new());
            batch.dead_letters.push(letter(p));
        }
        batch
    }

    #[test]
    fn a_revoked_partition_loses_its_engine_and_its_share_of_the_batch_and_is_rebuilt_when_it_comes_back() {
        let (config, ready) = (Config::default(), AtomicBool::new(false));
        let log = AssignmentLog::new("processor");
        let mut partitions = owning(&config, &ready, &[0, 1]);
        let mut batch = batch_of_two();
        // Revoked, then given back within one poll (a lost session, say), and a new one.
        log.record([revoked(0), assigned(0), assigned(2)]);
        partitions.apply_membership(&log, &mut batch);
        assert_eq!(
            partitions.engines.keys().copied().collect::<Vec<_>>(),
            [1],
            "the stale engine of 0 is gone"
        );
        assert_eq!(partitions.pending(), [0, 2], "0 is rebuilt from app-state like a new one");
        assert_eq!(batch.effects.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(batch.dead_letters.iter().map(|d| d.partition).collect::<Vec<_>>(), [1]);
        assert!(log.take().is_empty(), "each change is applied once");
    }

    #[test]
    fn a_partition_assigned_and_revoked_before_its_restore_is_not_restored() {
        let (config, ready) = (Config::default(), AtomicBool::new(false));
        let log = AssignmentLog::new("processor");
        let mut partitions = owning(&config, &ready, &[1]);
        let mut batch = batch_of_two();
        log.record([assigned(3), revoked(3)]);
        partitions.apply_membership(&log, &mut batch);
        assert!(partitions.pending().is_empty());
        // An assignment of a partition that has its engine changes nothing.
        log.record([assigned(1)]);
        partitions.apply_membership(&log, &mut batch);
        assert!(partitions.pending().is_empty());
        assert_eq!(batch.effects.len(), 2, "the batch keeps what it read of owned partitions");
    }
}
