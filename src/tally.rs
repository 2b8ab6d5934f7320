//! Counts what a heartbeat topic holds, read back to its current end: records per
//! application and instance, decode errors by code, keys that are not the app_id. The summary
//! a demo prints, and how tests check what reached Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::message::Message;

use crate::codec;
use crate::config::KafkaConfig;
use crate::readback::{ReadError, read_to_end};

/// What a topic holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub records: u64,
    pub decoded: u64,
    pub beats_per_app: BTreeMap<String, u64>,
    pub beats_per_instance: BTreeMap<(String, String), u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Records whose key is not their app_id (should stay 0).
    pub key_mismatches: u64,
    /// Partitions each application's beats were found on (one each when keys are right).
    pub partitions_per_app: BTreeMap<String, BTreeSet<i32>>,
    pub min_sent_at_ms: Option<i64>,
    pub max_sent_at_ms: Option<i64>,
}

/// Reads a heartbeat topic to its current end and counts what is there. Blocking.
pub fn tally_topic(
    kafka: &KafkaConfig,
    topic: &str,
    max_drift_ms: i64,
    timeout: Duration,
) -> Result<Tally, ReadError> {
    let mut tally = Tally::default();
    for msg in read_to_end(kafka, topic, timeout)? {
        let partition = msg.partition();
        tally.records += 1;
        let reference = msg.timestamp().to_millis().unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        match codec::decode(msg.payload().unwrap_or_default(), reference, max_drift_ms) {
            Ok(beat) => {
                tally.decoded += 1;
                if msg.key() != Some(beat.app_id.as_bytes()) {
                    tally.key_mismatches += 1;
                }
                tally.min_sent_at_ms =
                    Some(tally.min_sent_at_ms.map_or(beat.sent_at, |m| m.min(beat.sent_at)));
                tally.max_sent_at_ms =
                    Some(tally.max_sent_at_ms.map_or(beat.sent_at, |m| m.max(beat.sent_at)));
                tally.partitions_per_app.entry(beat.app_id.clone()).or_default().insert(partition);
                *tally.beats_per_app.entry(beat.app_id.clone()).or_default() += 1;
                *tally.beats_per_instance.entry((beat.app_id, beat.instance_id)).or_default() += 1;
            }
            Err(e) => *tally.errors_by_code.entry(e.code().to_owned()).or_default() += 1,
        }
    }
    Ok(tally)
}
