//! Decoding a record the sink reads, by its topic, and taking it into the batch unless
//! `sink_offset` says it is written already.

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::batch::{Batch, place};
use crate::ack::AlertAck;
use crate::alert::Alert;
use crate::app_state::{AppSnapshot, PARTITION_HEADER, STATE_HEADER, WINDOWS_HEADER};
use crate::config::Config;
use crate::heartbeat::Heartbeat;
use crate::metrics::METRICS;
use crate::metrics_1m::Rollup;
use crate::registry::{Registry, Unavailable};
use crate::topology::Topics;

/// A record decoded, before it is placed in the batch.
pub enum Decoded {
    Beat(Heartbeat),
    Alert(Alert),
    Rollup(Rollup),
    App(AppSnapshot),
    Ack(AlertAck),
    /// An application's windows record, or its state record without a snapshot
    /// (`app-state`, version 7 on): the processor's alone, nothing to store.
    EngineOnly,
}

/// Adds one consumed record to the batch (or skips it, if `sink_offset` says it is written).
/// `Err` when the schema registry could not be asked for the record's writer schema: the
/// record is left out of the batch, to be read again.
pub fn accept(
    msg: &BorrowedMessage<'_>,
    topics: &Topics,
    expected: &HashMap<(String, i32), i64>,
    batch: &mut Batch,
    config: &Config,
    registry: Option<&Registry>,
) -> Result<(), Unavailable> {
    let topic = msg.topic();
    let tp = (topic.to_owned(), msg.partition());
    let Some(&next) = expected.get(&tp) else {
        // Not seeked yet (an assignment in progress): it will be read again after the seek.
        return Ok(());
    };
    let start = batch.ranges.get(&tp).map_or(next, |r| r.1);
    if msg.offset() < start {
        return Ok(()); // already written
    }
    let decoded = decode(msg, topics, config, registry)?;
    METRICS.records_in.with_label_values(&["sink", topic]).inc();
    batch.first_at.get_or_insert_with(Instant::now);
    let range = batch.ranges.entry(tp).or_insert((next, next));
    range.1 = msg.offset() + 1;
    match decoded {
        Ok(decoded) => place(msg, decoded, batch, &config.retention),
        Err(reason) => {
            if let Some(reason) = reason {
                tracing::warn!(%topic, partition = msg.partition(), offset = msg.offset(), "sink: {reason}; skipped");
            }
            METRICS.sink_skipped.with_label_values(&[topic]).inc();
        }
    }
    Ok(())
}

/// Decodes a record by its topic; the inner `Err` says why not, if worth a warning; the
/// outer one that the schema registry could not be asked.
fn decode(
    msg: &BorrowedMessage<'_>,
    topics: &Topics,
    config: &Config,
    registry: Option<&Registry>,
) -> Result<Result<Decoded, Option<String>>, Unavailable> {
    let topic = msg.topic();
    let payload = msg.payload().unwrap_or_default();
    if topic == topics.heartbeats {
        let reference = msg.timestamp().to_millis().unwrap_or_else(|| Utc::now().timestamp_millis());
        // Invalid input is the processor's to dead-letter; the sink stores valid beats only.
        let beat = Registry::decode(registry, payload, reference, config.input.max_sent_at_drift_ms)?;
        return Ok(beat.map(Decoded::Beat).map_err(|_| None));
    }
    if topic == topics.app_state && is_engine_only(msg, payload) {
        return Ok(Ok(Decoded::EngineOnly));
    }
    Ok(decode_output(topic, payload, topics))
}

/// Whether an `app-state` record is the processor's alone: a windows record, a partition's
/// mark, or a state record with no snapshot in its value (a record before version 7 held
/// both).
fn is_engine_only(msg: &BorrowedMessage<'_>, payload: &[u8]) -> bool {
    let has = |name: &str| msg.headers().is_some_and(|hs| hs.iter().any(|h| h.key == name));
    has(WINDOWS_HEADER) || has(PARTITION_HEADER) || (payload.is_empty() && has(STATE_HEADER))
}

/// Decodes a record of one of the processor's output topics.
fn decode_output(topic: &str, payload: &[u8], topics: &Topics) -> Result<Decoded, Option<String>> {
    if topic == topics.alerts {
        Alert::decode(payload).map(Decoded::Alert).map_err(|e| Some(format!("undecodable alert: {e}")))
    } else if topic == topics.metrics {
        serde_json::from_slice(payload)
            .map(Decoded::Rollup)
            .map_err(|e| Some(format!("undecodable rollup: {e}")))
    } else if topic == topics.app_state {
        serde_json::from_slice(payload)
            .map(Decoded::App)
            .map_err(|e| Some(format!("undecodable snapshot: {e}")))
    } else if topic == topics.alert_acks {
        AlertAck::decode(payload)
            .map(Decoded::Ack)
            .map_err(|e| Some(format!("undecodable acknowledgement: {e}")))
    } else {
        Err(Some("a record of a topic the sink does not read".into()))
    }
}
