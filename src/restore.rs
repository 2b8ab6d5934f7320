//! Rebuilding partitions' engines from the compacted `app-state` topic. The partitions are
//! read to their settled end (read_committed, once no transaction is pending on them: the
//! state a transaction committed a moment ago is there even if its markers are still on
//! their way, as the consumed offsets committed with it are) on one thread, which copies out
//! of each record only what a restore reads (the state or windows header, or the JSON value
//! of older versions) into batches, and hands them to one decoding worker per core, a partition
//! always to the same worker. The workers decode while the reading goes on, keep only each
//! application's newest record, hand the emptied batches back to be filled again, and
//! rebuild their partitions' engines once the end is read.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::app_state::{
    PARTITION_HEADER, PartitionMark, SNAPSHOT_HEADER, STATE_HEADER, StateRecordError, WINDOWS_HEADER,
};
use crate::config::KafkaConfig;
use crate::engine::{Engine, RestoredApps, StateRecord, WindowsRecord};
use crate::readback::{self, End, ReadError};
use crate::rules::CompiledRules;
use crate::rules::DetectionConfig;

/// The engines rebuilt and what it took.
pub struct Restored {
    pub engines: Vec<(i32, Engine)>,
    /// Records read (every version of every application).
    pub records: usize,
    /// Records that could not be read back, and the first reason.
    pub unreadable: usize,
    pub first_error: Option<StateRecordError>,
    /// Time until the topic was read to its end (decoding went on meanwhile).
    pub read: Duration,
    /// Time from then until every engine was rebuilt: the decoding left, and the rebuilding.
    pub rebuild: Duration,
}

impl Restored {
    pub fn apps(&self) -> usize {
        self.engines.iter().map(|(_, e)| e.app_count()).sum()
    }
}

/// Records handed to a worker at a time.
const BATCH_RECORDS: usize = 256;

/// Batches a worker may have waiting: bounds the records held between reading and decoding.
const QUEUED_BATCHES: usize = 4;

/// Records handed to a worker at once: what a restore reads of each (the state header, or,
/// for versions 1 and 2, which have none, the JSON value), copied into one buffer. The
/// worker hands the batch back emptied and the reader fills it again, so a restore copies
/// its records into the same few buffers instead of fresh memory for each.
#[derive(Default)]
struct RecordBatch {
    bytes: Vec<u8>,
    records: Vec<RawRecord>,
}

/// Where a record lies in its batch's buffer, and what it holds.
struct RawRecord {
    partition: i32,
    end: usize,
    kind: RawKind,
}

/// What of a record a batch holds.
#[derive(Clone, Copy)]
enum RawKind {
    /// The state header (version 3 on).
    State,
    /// The windows header (version 6 on).
    Windows,
    /// A partition's mark (version 8 on).
    Mark,
    /// The JSON value (versions 1 and 2).
    Json,
}

/// A record read back: an application's state, or its windows, or the partition's mark.
enum Read {
    State(StateRecord),
    Windows(WindowsRecord),
    Mark(PartitionMark),
}

impl RecordBatch {
    /// Takes what a restore reads of a record; a snapshot record (version 7 on) restores
    /// nothing and is passed by.
    fn push(&mut self, m: &BorrowedMessage<'_>) {
        let header = |name: &str| m.headers().and_then(|hs| hs.iter().find(|h| h.key == name));
        let value = |name: &str| header(name).and_then(|h| h.value);
        let (bytes, kind) = match (value(STATE_HEADER), value(WINDOWS_HEADER)) {
            (Some(h), _) => (h, RawKind::State),
            (None, Some(h)) => (h, RawKind::Windows),
            (None, None) if header(SNAPSHOT_HEADER).is_some() => return,
            (None, None) if let Some(h) = value(PARTITION_HEADER) => (h, RawKind::Mark),
            (None, None) => (m.payload().unwrap_or_default(), RawKind::Json),
        };
        self.bytes.extend_from_slice(bytes);
        self.records.push(RawRecord { partition: m.partition(), end: self.bytes.len(), kind });
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each record's partition and what it decodes to.
    fn decode(&self) -> impl Iterator<Item = (i32, Result<Read, StateRecordError>)> + '_ {
        let mut start = 0;
        self.records.iter().map(move |r| {
            let bytes = &self.bytes[start..r.end];
            start = r.end;
            let decoded = match r.kind {
                RawKind::State => StateRecord::decode(&[], Some(bytes)).map(Read::State),
                RawKind::Windows => WindowsRecord::decode(bytes).map(Read::Windows),
                RawKind::Mark => PartitionMark::decode(bytes).map(Read::Mark),
                RawKind::Json => StateRecord::decode(bytes, None).map(Read::State),
            };
            (r.partition, decoded)
        })
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }
}

/// What one worker made of its partitions.
struct WorkerResult {
    engines: Vec<(i32, Engine)>,
    unreadable: usize,
    first_error: Option<StateRecordError>,
}

/// Rebuilds the engines of `partitions` from the partitions of `topic` with the same
/// numbers. A partition without records gets an empty engine.
pub fn restore_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    config: &DetectionConfig,
    rules: &CompiledRules,
    timeout: Duration,
) -> Result<Restored, ReadError> {
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(partitions.len().max(1));
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        // Emptied batches, back from the workers.
        let (emptied, reusable) = channel::<RecordBatch>();
        for w in 0..workers {
            let own: Vec<i32> = partitions.iter().copied().filter(|p| worker_of(*p, workers) == w).collect();
            let (tx, rx) = sync_channel::<RecordBatch>(QUEUED_BATCHES);
            senders.push(tx);
            let emptied = emptied.clone();
            let worker = std::thread::Builder::new().name(format!("restore-{w}"));
            handles.push(
                worker
                    .spawn_scoped(scope, move || work(rx, emptied, &own, config, rules))
                    .expect("a thread starts"),
            );
        }
        drop(emptied);
        let mut batches: Vec<RecordBatch> = (0..workers).map(|_| RecordBatch::default()).collect();
        let mut records = 0;
        let read =
            readback::read_partitions_each(kafka, topic, Some(partitions), End::Settled, timeout, |m| {
                records += 1;
                let w = worker_of(m.partition(), workers);
                batches[w].push(m);
                if batches[w].len() >= BATCH_RECORDS {
                    let next = reusable.try_recv().unwrap_or_default();
                    send(&senders[w], std::mem::replace(&mut batches[w], next));
                }
            });
        for (tx, batch) in senders.iter().zip(batches) {
            if !batch.is_empty() {
                send(tx, batch);
            }
        }
        drop(senders);
        let read_done = started.elapsed();
        let results: Vec<WorkerResult> =
            handles.into_iter().map(|h| h.join().expect("a restore worker does not panic")).collect();
        read?;
        let mut restored = Restored {
            engines: Vec::with_capacity(partitions.len()),
            records,
            unreadable: 0,
            first_error: None,
            read: read_done,
            rebuild: started.elapsed() - read_done,
        };
        for r in results {
            restored.engines.extend(r.engines);
            restored.unreadable += r.unreadable;
            if restored.first_error.is_none() {
                restored.first_error = r.first_error;
            }
        }
        restored.engines.sort_by_key(|(p, _)| *p);
        Ok(restored)
    })
}

/// The worker that decodes a partition's records.
fn worker_of(partition: i32, workers: usize) -> usize {
    partition.unsigned_abs() as usize % workers
}

fn send(tx: &SyncSender<RecordBatch>, batch: RecordBatch) {
    // A worker only stops early by panicking, which the join reports.
    let _ = tx.send(batch);
}

/// Decodes the records of a worker's partitions as they come, keeping each application's
/// newest, and hands each batch back emptied; then rebuilds the engines of `partitions`.
fn work(
    rx: Receiver<RecordBatch>,
    emptied: Sender<RecordBatch>,
    partitions: &[i32],
    config: &DetectionConfig,
    rules: &CompiledRules,
) -> WorkerResult {
    // An application's records are all in one partition, in order: the last one read wins.
    let mut restored: HashMap<i32, RestoredApps> =
        partitions.iter().map(|&p| (p, RestoredApps::default())).collect();
    let (mut unreadable, mut first_error) = (0, None);
    for mut batch in rx {
        for (partition, decoded) in batch.decode() {
            match decoded {
                Ok(Read::State(r)) => restored.entry(partition).or_default().add(r),
                Ok(Read::Windows(r)) => restored.entry(partition).or_default().add_windows(r),
                Ok(Read::Mark(m)) => restored.entry(partition).or_default().add_mark(m),
                Err(e) => {
                    unreadable += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        batch.clear();
        // The reader is gone once the topic is read: the batch is dropped then.
        let _ = emptied.send(batch);
    }
    let engines = restored
        .into_iter()
        .map(|(p, apps)| (p, Engine::restore_apps(p, config.clone(), rules.clone(), apps)))
        .collect();
    WorkerResult { engines, unreadable, first_error }
}
