//! Rebuilding partitions' engines from the compacted `app-state` topic. The partitions are
//! read to their settled end (read_committed, once no transaction is pending on them: the
//! state a transaction committed a moment ago is there even if its markers are still on
//! their way, as the consumed offsets committed with it are) on one thread, which copies out of each record only
//! what a restore reads (the state header, or the JSON value of older versions) and hands
//! the records in batches to one decoding worker per core, a partition always to the same
//! worker. The workers decode while the reading goes on, keep only each application's
//! newest record, and rebuild their partitions' engines once the end is read.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::config::KafkaConfig;
use crate::engine::{Engine, EngineConfig, STATE_HEADER, StateRecord, StateRecordError};
use crate::rules::CompiledRules;
use crate::tally::{self, End, TallyError};

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
const BATCH_RECORDS: usize = 1_000;

/// Batches a worker may have waiting: bounds the records held between reading and decoding.
const QUEUED_BATCHES: usize = 4;

/// What a restore reads of one record: the state header, or (versions 1 and 2, which have
/// none) the JSON value.
struct RawRecord {
    partition: i32,
    bytes: Vec<u8>,
    is_header: bool,
}

impl RawRecord {
    fn of(m: &BorrowedMessage<'_>) -> RawRecord {
        let header =
            m.headers().and_then(|hs| hs.iter().find(|h| h.key == STATE_HEADER)).and_then(|h| h.value);
        let (bytes, is_header) = match header {
            Some(h) => (h, true),
            None => (m.payload().unwrap_or_default(), false),
        };
        RawRecord { partition: m.partition(), bytes: bytes.to_vec(), is_header }
    }

    fn decode(&self) -> Result<StateRecord, StateRecordError> {
        if self.is_header {
            StateRecord::decode(&[], Some(&self.bytes))
        } else {
            StateRecord::decode(&self.bytes, None)
        }
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
    config: &EngineConfig,
    rules: &CompiledRules,
    timeout: Duration,
) -> Result<Restored, TallyError> {
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(partitions.len().max(1));
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let own: Vec<i32> = partitions.iter().copied().filter(|p| worker_of(*p, workers) == w).collect();
            let (tx, rx) = sync_channel::<Vec<RawRecord>>(QUEUED_BATCHES);
            senders.push(tx);
            let worker = std::thread::Builder::new().name(format!("restore-{w}"));
            handles.push(
                worker.spawn_scoped(scope, move || work(rx, &own, config, rules)).expect("a thread starts"),
            );
        }
        let mut batches: Vec<Vec<RawRecord>> =
            (0..workers).map(|_| Vec::with_capacity(BATCH_RECORDS)).collect();
        let mut records = 0;
        let read = tally::read_partitions_each(kafka, topic, Some(partitions), End::Settled, timeout, |m| {
            records += 1;
            let w = worker_of(m.partition(), workers);
            batches[w].push(RawRecord::of(m));
            if batches[w].len() >= BATCH_RECORDS {
                send(&senders[w], std::mem::replace(&mut batches[w], Vec::with_capacity(BATCH_RECORDS)));
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

fn send(tx: &SyncSender<Vec<RawRecord>>, batch: Vec<RawRecord>) {
    // A worker only stops early by panicking, which the join reports.
    let _ = tx.send(batch);
}

/// Decodes the records of a worker's partitions as they come, keeping each application's
/// newest, then rebuilds the engines of `partitions`.
fn work(
    rx: Receiver<Vec<RawRecord>>,
    partitions: &[i32],
    config: &EngineConfig,
    rules: &CompiledRules,
) -> WorkerResult {
    // An application's records are all in one partition, in order: the last one read wins.
    let mut latest: HashMap<i32, HashMap<String, StateRecord>> =
        partitions.iter().map(|&p| (p, HashMap::new())).collect();
    let (mut unreadable, mut first_error) = (0, None);
    for batch in rx {
        for raw in batch {
            match raw.decode() {
                Ok(r) => {
                    latest.entry(raw.partition).or_default().insert(r.app_id.clone(), r);
                }
                Err(e) => {
                    unreadable += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let engines = latest
        .into_iter()
        .map(|(p, apps)| (p, Engine::restore(p, config.clone(), rules.clone(), apps.into_values())))
        .collect();
    WorkerResult { engines, unreadable, first_error }
}
