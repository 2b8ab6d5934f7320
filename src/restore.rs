//! Rebuilding partitions' engines from the compacted `app-state` topic: the records of the
//! partitions are read to their end (read_committed) in chunks, each chunk decoded on every
//! core keeping only the newest record of each application, and each partition's engine is
//! rebuilt from those.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message, OwnedMessage};

use crate::config::KafkaConfig;
use crate::engine::{Engine, EngineConfig, STATE_HEADER, StateRecord, StateRecordError};
use crate::rules::CompiledRules;
use crate::tally::{self, TallyError};

/// The engines rebuilt and what it took.
pub struct Restored {
    pub engines: Vec<(i32, Engine)>,
    /// Records read (every version of every application).
    pub records: usize,
    /// Records that could not be read back, and the first reason.
    pub unreadable: usize,
    pub first_error: Option<StateRecordError>,
    /// Time spent reading the topic.
    pub read: Duration,
    /// Time spent decoding the records and rebuilding the engines.
    pub rebuild: Duration,
}

impl Restored {
    pub fn apps(&self) -> usize {
        self.engines.iter().map(|(_, e)| e.app_count()).sum()
    }
}

/// Records decoded at a time: the topic is read in chunks of this many, and of each
/// application only the newest record is kept, so memory holds the states, not the topic.
const CHUNK_RECORDS: usize = 20_000;

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
    let mut decoding = Duration::ZERO;
    let (mut records, mut unreadable, mut first_error) = (0, 0, None);
    // An application's records are all in one partition, in order: the last one read wins.
    let mut latest: HashMap<String, (i32, StateRecord)> = HashMap::new();
    tally::read_partitions_in_chunks(kafka, topic, Some(partitions), timeout, CHUNK_RECORDS, |chunk| {
        let began = Instant::now();
        records += chunk.len();
        for (p, r) in decode_all(&chunk) {
            match r {
                Ok(r) => {
                    latest.insert(r.app_id.clone(), (p, r));
                }
                Err(e) => {
                    unreadable += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        decoding += began.elapsed();
    })?;
    let rebuilding = Instant::now();
    let mut by_partition: BTreeMap<i32, Vec<StateRecord>> =
        partitions.iter().map(|&p| (p, Vec::new())).collect();
    for (_, (p, r)) in latest {
        by_partition.entry(p).or_default().push(r);
    }
    let engines = std::thread::scope(|scope| {
        let handles: Vec<_> = by_partition
            .into_iter()
            .map(|(p, rs)| scope.spawn(move || (p, Engine::restore(p, config.clone(), rules.clone(), rs))))
            .collect();
        handles.into_iter().map(|h| h.join().expect("a restore thread does not panic")).collect()
    });
    let rebuild = decoding + rebuilding.elapsed();
    Ok(Restored { engines, records, unreadable, first_error, read: started.elapsed() - rebuild, rebuild })
}

/// Decodes the records in order, split over the machine's cores.
fn decode_all(messages: &[OwnedMessage]) -> Vec<(i32, Result<StateRecord, StateRecordError>)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = messages.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = messages
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().map(|m| (m.partition(), decode(m))).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a decoding thread does not panic")).collect()
    })
}

/// One `app-state` record, from its state header if it has one.
fn decode(m: &OwnedMessage) -> Result<StateRecord, StateRecordError> {
    let header = m.headers().and_then(|hs| hs.iter().find(|h| h.key == STATE_HEADER)).and_then(|h| h.value);
    StateRecord::decode(m.payload().unwrap_or_default(), header)
}
